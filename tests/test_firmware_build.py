"""`make firmware BOARD=NUCLEO_H743ZI2`: MicroPython's stm32 port with the board folder
boards/NUCLEO_H743ZI2 and tinymp builds, and the image is laid out as the board folder says.

Checks on the built ELF: the vector table opens flash at 0x08000000, the firmware fits its 1 MB
region, the ROMFS partition symbols are the linker script's, the split heap's extra blocks are
in the table main.c reads, the tinymp module (binding and core) and the frozen helpers are in,
the DFU file targets 0x08000000; and `make firmware-size` reports tinymp's share.

Needs MICROPY_DIR (MicroPython v1.28.0 with the submodules lib/stm32lib, lib/tinyusb and
lib/micropython-lib) and arm-none-eabi-gcc. A device is not needed (tests/test_firmware_make.py
checks the flash command).
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPY_DIR = os.environ.get("MICROPY_DIR")
BUILD = os.path.join(ROOT, "build", "nucleo-h743zi2")
SUBMODULES = ("lib/stm32lib", "lib/tinyusb", "lib/micropython-lib")


@pytest.fixture(scope="module")
def nucleo():
    if not MICROPY_DIR:
        pytest.skip("MICROPY_DIR is not set: set MICROPY_DIR=/path/to/micropython (MicroPython "
                    "v1.28.0 with lib/stm32lib, lib/tinyusb, lib/micropython-lib) to build the "
                    "NUCLEO-H743ZI2 firmware")
    missing = [s for s in SUBMODULES if not os.listdir(os.path.join(MICROPY_DIR, s))] \
        if all(os.path.isdir(os.path.join(MICROPY_DIR, s)) for s in SUBMODULES) else list(SUBMODULES)
    if missing:
        pytest.skip(f"MICROPY_DIR lacks the submodules {' '.join(missing)} the stm32 port needs "
                    f"(git -C {MICROPY_DIR} submodule update --init {' '.join(missing)})")
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("needs arm-none-eabi-gcc (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)")
    # as in a maker's shell: Python writes __pycache__ folders unless told not to
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "PYTHONDONTWRITEBYTECODE")}
    before = tree_files(MICROPY_DIR)
    r = subprocess.run(["make", "-C", ROOT, "firmware", "BOARD=NUCLEO_H743ZI2",
                        f"MICROPY_DIR={MICROPY_DIR}", f"FW_PYTHON={sys.executable}"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=3600)
    log = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, log[-5000:]
    TREE_CHANGES.update(changed=sorted(set(tree_files(MICROPY_DIR).items()) - set(before.items())))
    return os.path.join(BUILD, "firmware.elf")


TREE_CHANGES = {}


def tree_files(top):
    """{path: mtime} of every file and folder of a MicroPython tree but its .git."""
    out = {}
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if not (d == top and x == ".git")]
        for name in dirs + files:
            p = os.path.join(d, name)
            out[os.path.relpath(p, top)] = os.lstat(p).st_mtime_ns
    return out


def test_micropython_dir_is_left_as_it_was(nucleo):
    """The build writes only under build/: not mpy-cross/build nor __pycache__ in MICROPY_DIR
    (which may be shared, or not the maker's to write)."""
    assert TREE_CHANGES["changed"] == [], "the build wrote into MICROPY_DIR: %s" % (
        [p for p, _ in TREE_CHANGES["changed"]][:20])


def tool(name, *args):
    return subprocess.run(["arm-none-eabi-" + name] + list(args), check=True,
                          stdout=subprocess.PIPE).stdout.decode()


def symbols(elf):
    out = {}
    for line in tool("nm", elf).splitlines():
        p = line.split()
        if len(p) == 3:
            out[p[2]] = int(p[0], 16)
    return out


def sections(elf):
    out = {}
    for line in tool("objdump", "-h", "-w", elf).splitlines():
        p = line.split()
        if len(p) >= 7 and p[0].isdigit():
            out[p[1]] = {"size": int(p[2], 16), "vma": int(p[3], 16), "lma": int(p[4], 16)}
    return out


def test_image_layout(nucleo):
    secs = sections(nucleo)
    assert secs[".isr_vector"]["lma"] == 0x08000000
    flash_end = max(s["lma"] + s["size"] for s in secs.values() if 0x08000000 <= s["lma"] < 0x08200000)
    assert flash_end <= 0x08100000, "firmware overflows bank 1 into the ROMFS partition"
    sym = symbols(nucleo)
    assert sym["_micropy_hw_romfs_part0_start"] == 0x08100000
    assert sym["_micropy_hw_romfs_part0_size"] == 768 * 1024
    assert sym["_micropy_hw_internal_flash_storage_start"] == 0x081C0000
    assert sym["_micropy_hw_internal_flash_storage_end"] == 0x08200000
    assert 0x24000000 <= sym["_heap_start"] < sym["_heap_end"] <= 0x24080000
    # the main heap block holds the profile's training arena
    prof = json.load(open(os.path.join(ROOT, "boards", "NUCLEO_H743ZI2", "profile.json")))
    assert sym["_heap_end"] - sym["_heap_start"] > prof["arena_budget_bytes"] + 64 * 1024
    # the split heap's extra blocks, as main.c reads them: {address, size} words
    table = tool("objdump", "-s", "-j", ".gc.blocks.table", nucleo)
    words = []
    for line in table.splitlines()[4:]:
        words += [int.from_bytes(bytes.fromhex(w), "little") for w in line.split()[1:5]
                  if len(w) == 8]
    assert words == [0x30000000, 288 * 1024, 0x38000000, 64 * 1024]


def test_tinymp_and_the_helpers_are_in(nucleo):
    sym = symbols(nucleo)
    for name in ("tinymp_user_cmodule", "tmp_model_init", "tmp_plan_inference", "tmp_infer"):
        assert name in sym, name
    data = open(nucleo, "rb").read()
    for module in (b"tinymp_camera", b"tinymp_agent"):
        assert module in data, module
    assert b"NUCLEO-H743ZI2 (tinymp)" in data


def test_dfu_file(nucleo):
    dfu = open(os.path.join(BUILD, "firmware.dfu"), "rb").read()
    binary = open(os.path.join(BUILD, "firmware.bin"), "rb").read()
    # DfuSe file: "DfuSe" prefix ... suffix with the USB ids and the "UFD" signature
    assert dfu[:5] == b"DfuSe" and dfu[-8:-5] == b"UFD"
    assert int.from_bytes(dfu[-12:-10], "little") == 0x0483
    # DfuSe: prefix (11), target prefix (274), then element address and size
    addr = int.from_bytes(dfu[11 + 274:11 + 278], "little")
    size = int.from_bytes(dfu[11 + 278:11 + 282], "little")
    # MicroPython's tools/dfu.py pads each image with zeros to a multiple of 8 bytes
    padded = binary + bytes(-len(binary) % 8)
    assert addr == 0x08000000 and size == len(padded)
    assert dfu[11 + 282:11 + 282 + size] == padded


def test_firmware_size_report(nucleo):
    r = subprocess.run(["make", "--no-print-directory", "-C", ROOT, "firmware-size",
                        "BOARD=NUCLEO_H743ZI2", f"FW_PYTHON={sys.executable}"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    out = r.stdout.decode()
    assert r.returncode == 0, out
    assert "arm-none-eabi-size:" in out and "text" in out and "tinymp's share" in out
    # the ELF as the README shows it: relative to the checkout, as on the report's first line
    size_row = out.splitlines()[out.splitlines().index("arm-none-eabi-size:") + 2].split()
    assert size_row[-1] == "build/nucleo-h743zi2/firmware.elf", out
    sys.path.insert(0, os.path.join(ROOT, "firmware"))
    try:
        import fw_size
    finally:
        sys.path.pop(0)
    rep = fw_size.report(nucleo, "NUCLEO_H743ZI2")
    t = rep["tinymp"]
    # every core object and the binding are counted; code lies between the core alone and all
    core = [f for d, _, fs in os.walk(os.path.join(ROOT, "micropython_modules", "tinymp", "core"))
            for f in fs if f.endswith(".c")]
    objs = set(t["object_names"])
    assert "modtinymp.o" in objs and len(objs) >= len(core) // 2, objs
    assert {"tmp_model.o", "tmp_infer.o", "tmp_conv_s8.o"} <= objs
    assert 20_000 < t["code_rodata"] < rep["flash_image"] // 2
    assert t["data"] + t["bss"] < 256, "the core has no static state"
    assert t["frozen_helpers"] > 1000
    flash = [u for u in rep["regions"] if u["region"] == "FLASH"][0]
    assert flash["used"] == rep["flash_image"] and flash["used"] < flash["length"]
