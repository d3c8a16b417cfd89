"""The core is portable C99: warning-free on the host and for Cortex-M7, no allocator, no
MicroPython header, only the allowed libc headers, no mutable static state."""
import glob
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "micropython_modules", "tinymp", "core")
SOURCES = sorted(glob.glob(os.path.join(CORE, "**", "*.c"), recursive=True))
HEADERS = sorted(glob.glob(os.path.join(CORE, "**", "*.h"), recursive=True))
WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
M7 = ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard"]
ALLOWED_INCLUDES = {"stdint.h", "stddef.h", "string.h", "math.h"}


def compile_all(cc, flags, outdir):
    objs = []
    for src in SOURCES:
        obj = os.path.join(outdir, os.path.basename(src) + ".o")
        r = subprocess.run([cc, *WARN, "-O2", *flags, "-I", CORE, "-c", src, "-o", obj],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{cc} failed on {src}:\n{r.stderr}"
        objs.append(obj)
    return objs


def test_sources_present():
    names = {os.path.basename(s) for s in SOURCES}
    for kernel in ("conv", "dwconv", "pwconv", "fc", "add", "avgpool"):
        assert f"tmp_{kernel}_s8.c" in names


def test_only_allowed_includes():
    for path in SOURCES + HEADERS:
        text = open(path).read()
        for inc in re.findall(r'#\s*include\s*<([^>]+)>', text):
            assert inc in ALLOWED_INCLUDES, f"{path} includes <{inc}>"
        assert "py/" not in "".join(re.findall(r'#\s*include\s*"([^"]+)"', text)), path
        assert not re.search(r'\b(malloc|calloc|realloc|free)\s*\(', text), f"{path} allocates"


def test_no_mutable_static_state(tmp_path):
    objs = compile_all("gcc", [], str(tmp_path))
    # writable data sections must be empty: no .data/.bss symbols
    out = subprocess.run(["nm", *objs], capture_output=True, text=True, check=True).stdout
    writable = [l for l in out.splitlines() if re.match(r"^[0-9a-f]+ [bBdDcC] ", l)]
    assert writable == [], writable


def test_host_build_warning_free_and_no_allocator(tmp_path):
    objs = compile_all("gcc", [], str(tmp_path))
    undefined = subprocess.run(["nm", "-u", *objs], capture_output=True, text=True, check=True).stdout
    syms = set(re.findall(r"\bU (\w+)", undefined))
    assert not syms & {"malloc", "calloc", "realloc", "free"}, syms


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                    reason="arm-none-eabi-gcc not installed (apt-get install gcc-arm-none-eabi)")
def test_cortex_m7_build_warning_free(tmp_path):
    objs = compile_all("arm-none-eabi-gcc", M7, str(tmp_path))
    out = subprocess.run(["arm-none-eabi-size", "-t", *objs], capture_output=True, text=True, check=True)
    total = out.stdout.strip().splitlines()[-1].split()
    text_bytes = int(total[0])
    print(f"core .text for Cortex-M7: {text_bytes} bytes")
    assert text_bytes > 0
    undefined = subprocess.run(["arm-none-eabi-nm", "-u", *objs], capture_output=True, text=True).stdout
    assert not set(re.findall(r"\bU (\w+)", undefined)) & {"malloc", "calloc", "realloc", "free"}
