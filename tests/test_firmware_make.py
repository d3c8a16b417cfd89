"""The make targets of firmware/firmware.mk that need a device, ESP-IDF or OpenMV's SDK, checked
through their command lines (DRY_RUN=1 prints a command instead of running it): the build and
flash commands of NUCLEO_H743ZI2, ESP32_S3 and OPENMV_H7, and the error messages of bad requests.
Also the CMake glue of the user C module (micropython_modules/micropython.cmake), which the esp32
port includes: configured with cmake (when installed) in a stand-in project.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINYMP = os.path.join(ROOT, "micropython_modules", "tinymp")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(*args, ok=True, env=None):
    base = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "BOARD", "PORT")}
    env = dict(base, **(env or {}))
    r = subprocess.run(["make", "--no-print-directory", "-C", ROOT] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=120)
    out = r.stdout.decode()
    if ok:
        assert r.returncode == 0, out
    else:
        assert r.returncode != 0, out
    return out


def line_with(out, word):
    lines = [ln for ln in out.splitlines() if word in ln.split()[:4] or ln.startswith(word)]
    assert lines, f"no command line with {word!r} in:\n{out}"
    return shlex.split(lines[0])


def the_error(out):
    """The one line the maker reads: every line but make's own trailer is that error line."""
    lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("make")]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    assert "Traceback" not in out, out
    return lines[0]


def fake_tree(path, version=(1, 28, 0), submodules=()):
    """A stand-in MicroPython source tree: the files the Makefile reads to recognise a tree and
    its version, and the submodule folders asked for, not empty."""
    (path / "py").mkdir(parents=True)
    (path / "py" / "mkenv.mk").write_text("")
    (path / "py" / "mpconfig.h").write_text(
        "#define MICROPY_VERSION_MAJOR %d\n#define MICROPY_VERSION_MINOR %d\n"
        "#define MICROPY_VERSION_MICRO %d\n#define MICROPY_VERSION_PRERELEASE 0\n"
        "#if MICROPY_VERSION_PRERELEASE\n#endif\n" % version)
    for sub in submodules:
        (path / sub).mkdir(parents=True)
        (path / sub / "README.md").write_text("x")
    return path


# ------------------------------------------------------------------ NUCLEO-H743ZI2


def test_nucleo_build_command():
    out = make("firmware", "BOARD=NUCLEO_H743ZI2", "MICROPY_DIR=/opt/mp", "DRY_RUN=1")
    cmds = [shlex.split(ln) for ln in out.splitlines() if ln.startswith("env -u MAKEFLAGS")]
    assert len(cmds) == 2
    assert "/opt/mp/mpy-cross" in cmds[0]
    stm = cmds[1]
    assert stm[stm.index("-C") + 1] == "/opt/mp/ports/stm32"
    assert f"BOARD_DIR={ROOT}/boards/NUCLEO_H743ZI2" in stm
    assert f"USER_C_MODULES={ROOT}/micropython_modules" in stm
    assert f"BUILD={ROOT}/build/nucleo-h743zi2" in stm


@pytest.mark.parametrize("tool,expect", [
    ("pydfu", ["tools/pydfu.py", "--vid", "0x0483", "--pid", "0xDF11", "-u", "firmware.dfu"]),
    ("dfu-util", ["dfu-util", "-a", "0", "-d", "0483:DF11", "-D", "firmware.dfu", "-s", ":leave"]),
    ("st-flash", ["st-flash", "--reset", "write", "firmware.bin", "0x08000000"]),
])
def test_nucleo_flash_command(tool, expect):
    out = make("flash", "BOARD=NUCLEO_H743ZI2", "MICROPY_DIR=/opt/mp", f"FLASH_TOOL={tool}",
               "DRY_RUN=1")
    cmd = [ln for ln in out.splitlines() if ln.strip()][-1].split()
    # the tokens in this order, with the build folder's file
    pos = 0
    for tok in expect:
        hits = [i for i, c in enumerate(cmd) if c == tok or c.endswith("/" + tok)]
        hits = [i for i in hits if i >= pos]
        assert hits, f"{tok} missing or out of order in {cmd}"
        pos = hits[0]
    files = [c for c in cmd if c.endswith((".dfu", ".bin"))]
    assert files and files[0].startswith(os.path.join(ROOT, "build", "nucleo-h743zi2") + "/")
    if tool == "pydfu":
        assert cmd[1] == "/opt/mp/tools/pydfu.py"


def test_nucleo_flash_refuses_unknown_tool_and_missing_firmware(tmp_path):
    out = make("flash", "BOARD=NUCLEO_H743ZI2", "FLASH_TOOL=jtag", "DRY_RUN=1", ok=False)
    assert "FLASH_TOOL=jtag is not one of pydfu, dfu-util, st-flash" in out
    # without DRY_RUN the firmware must exist (MICROPY_DIR points at an empty folder here, so the
    # build folder of this checkout is used: only check the message when it is absent)
    if not os.path.exists(os.path.join(ROOT, "build", "nucleo-h743zi2", "firmware.dfu")):
        out = make("flash", "BOARD=NUCLEO_H743ZI2", ok=False)
        assert "make firmware BOARD=NUCLEO_H743ZI2 first" in out


# ------------------------------------------------------------------ ESP32-S3


def test_esp32_build_command_uses_the_cmake_glue():
    out = make("firmware", "BOARD=ESP32_S3", "MICROPY_DIR=/opt/mp", "DRY_RUN=1")
    cmd = [shlex.split(ln) for ln in out.splitlines() if "ports/esp32" in ln][0]
    assert cmd[cmd.index("-C") + 1] == "/opt/mp/ports/esp32"
    assert f"BOARD_DIR={ROOT}/boards/ESP32_S3" in cmd
    usermod = [c for c in cmd if c.startswith("USER_C_MODULES=")][0].split("=", 1)[1]
    assert usermod == os.path.join(ROOT, "micropython_modules", "micropython.cmake")
    assert os.path.isfile(usermod)
    assert f"BUILD={ROOT}/build/esp32-s3" in cmd


def test_esp32_build_needs_esp_idf(tmp_path):
    if shutil.which("idf.py"):
        pytest.skip("ESP-IDF is installed here: the missing-IDF message cannot be shown")
    mp = fake_tree(tmp_path / "mp", submodules=("lib/berkeley-db-1.xx", "lib/micropython-lib"))
    out = make("firmware", "BOARD=ESP32_S3", f"MICROPY_DIR={mp}", ok=False)
    assert "needs ESP-IDF" in out and "export.sh" in out


def test_esp32_flash_command():
    out = make("flash", "BOARD=ESP32_S3", "PORT=/dev/ttyACM0", "DRY_RUN=1", "FW_PYTHON=python3")
    cmd = shlex.split([ln for ln in out.splitlines() if "esptool" in ln][-1])
    assert cmd[:3] == ["python3", "-m", "esptool"]
    assert cmd[cmd.index("--chip") + 1] == "esp32s3"
    assert cmd[cmd.index("--port") + 1] == "/dev/ttyACM0"
    assert cmd[cmd.index("--baud") + 1] == "460800"
    # esptool 4's spelling (ESP-IDF 5.5 ships 4; 5 takes it too, with a deprecation warning)
    i = cmd.index("write_flash")
    assert cmd[i + 1] == "0"   # the merged image (bootloader, partition table, app) at offset 0
    assert cmd[i + 2] == os.path.join(ROOT, "build", "esp32-s3", "firmware.bin")


def test_esp32_flash_command_is_accepted_by_esptool():
    """esptool's own argument parser takes the command (it then fails to open the missing port)."""
    try:
        import esptool  # noqa: F401
    except ImportError:
        pytest.skip("esptool is not installed (pip install esptool)")
    import sys
    out = make("flash", "BOARD=ESP32_S3", "PORT=/nonexistent/tty", "DRY_RUN=1",
               f"FW_PYTHON={sys.executable}")
    cmd = shlex.split([ln for ln in out.splitlines() if "esptool" in ln][-1])
    fw = cmd[-1]
    r = subprocess.run(cmd[:-1] + [os.devnull if not os.path.exists(fw) else fw],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    text = r.stdout.decode()
    assert r.returncode != 0
    assert "usage:" not in text.lower() or "error: argument" not in text.lower(), text
    assert re.search(r"nonexistent|could not open|No such file|port", text, re.I), text


def test_esp32_flash_needs_a_port():
    out = make("flash", "BOARD=ESP32_S3", "DRY_RUN=1", ok=False)
    assert "needs PORT=" in out


# ------------------------------------------------------------------ OpenMV Cam H7


def test_openmv_build_commands():
    out = make("firmware", "BOARD=OPENMV_H7", "OPENMV_DIR=/opt/openmv", "DRY_RUN=1")
    lines = out.splitlines()
    sdk = [ln for ln in lines if ln.endswith(" sdk")]
    assert sdk and "-C /opt/openmv" in sdk[0]
    link = shlex.split([ln for ln in lines if ln.startswith("ln ")][0])
    assert link == ["ln", "-sfn", TINYMP, "/opt/openmv/tinymp"]
    build = shlex.split([ln for ln in lines if "TARGET=OPENMV4" in ln][0])
    assert build[build.index("-C") + 1] == "/opt/openmv"
    assert f"FROZEN_MANIFEST={ROOT}/boards/OPENMV_H7/manifest.py" in build
    cp = shlex.split([ln for ln in lines if ln.startswith("cp ")][0])
    assert "/opt/openmv/build/OPENMV4/bin/firmware.bin" in cp
    assert cp[-1] == os.path.join(ROOT, "build", "openmv-h7") + "/"
    # order: SDK, link, mpy-cross, firmware, copy
    order = [lines.index(x) for x in (sdk[0], [ln for ln in lines if ln.startswith("ln ")][0],
                                      [ln for ln in lines if "mpy-cross" in ln][0],
                                      [ln for ln in lines if "TARGET=OPENMV4" in ln][0],
                                      [ln for ln in lines if ln.startswith("cp ")][0])]
    assert order == sorted(order)


def test_openmv_pinned_version_and_module_glue():
    mk = open(os.path.join(ROOT, "firmware", "openmv.mk")).read()
    assert re.search(r"^OPENMV_VERSION \?= v\d+\.\d+\.\d+$", mk, re.M)
    # OpenMV builds USER_C_MODULES=<its top folder>: it includes <top>/*/micropython.mk
    assert os.path.isfile(os.path.join(TINYMP, "micropython.mk"))


def usermod_cflags(tmp_path, env_cflags=None, *args):
    """CFLAGS_USERMOD as micropython.mk sets it, read by a make that includes it the way
    MicroPython's py/py.mk does (USERMOD_DIR set), with CFLAGS in the environment as OpenMV's
    top-level make exports them to MicroPython's."""
    probe = tmp_path / "probe.mk"
    probe.write_text("USERMOD_DIR := /mod/tinymp\ninclude %s\n"
                     "$(info CFLAGS_USERMOD=$(CFLAGS_USERMOD))\nall: ;\n"
                     % os.path.join(TINYMP, "micropython.mk"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "CFLAGS")}
    if env_cflags is not None:
        env["CFLAGS"] = env_cflags
    r = subprocess.run(["make", "--no-print-directory", "-s", "-f", str(probe), *args],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("CFLAGS_USERMOD=")][0]
    return line.split("=", 1)[1].split()


def test_usermod_adds_only_the_core_include_whatever_the_fpu(tmp_path):
    # the core picks its code paths from the compiler's own macros (core/kernels/tmp_dsp.h), so
    # the module adds no flag of its own for OpenMV's H7 (FPU=fpv5-sp-d16, exported in CFLAGS),
    # MicroPython's H7 (fpv5-d16), a Cortex-M4F or the unix port
    for flags in ("-mthumb -mcpu=cortex-m7 -mtune=cortex-m7 -mfpu=fpv5-sp-d16 -mfloat-abi=hard",
                  "-mfpu=fpv5-d16", "-mthumb -mcpu=cortex-m4 -mfpu=fpv4-sp-d16 -mfloat-abi=hard",
                  "-O2", None):
        assert usermod_cflags(tmp_path, flags) == ["-I/mod/tinymp/core"], flags


def test_openmv_flash_says_what_to_do(tmp_path):
    built = tmp_path / "openmv-h7" / "firmware.bin"
    # nothing built: that is what it says (not steps that name a file that is not there)
    err = the_error(make("flash", "BOARD=OPENMV_H7", f"BUILD={tmp_path}", ok=False))
    assert err == f"error: {built} not found: make firmware BOARD=OPENMV_H7 first"
    built.parent.mkdir()
    built.write_bytes(b"x")
    out = make("flash", "BOARD=OPENMV_H7", f"BUILD={tmp_path}")
    assert "Tools > Run Bootloader" in out and str(built) in out
    out = make("flash", "BOARD=OPENMV_H7", "DRY_RUN=1")
    assert "Tools > Run Bootloader" in out
    assert os.path.join(ROOT, "build", "openmv-h7", "firmware.bin") in out
    out = make("flash", "BOARD=OPENMV_H7", "FLASH_TOOL=dfu-util", "DRY_RUN=1")
    cmd = shlex.split(out.strip().splitlines()[-1])
    assert cmd[:5] == ["dfu-util", "-a", "0", "-d", "0483:df11"]
    assert cmd[cmd.index("-s") + 1] == "0x08040000:leave"


# ------------------------------------------------------------------ errors


def test_unknown_board_and_nothing_to_flash():
    out = make("firmware", "BOARD=ARDUINO_UNO", ok=False)
    assert "unknown BOARD=ARDUINO_UNO" in out and "NUCLEO_H743ZI2" in out
    out = make("flash", "BOARD=UNIX", ok=False)
    assert "nothing to flash" in out


def test_user_tree_without_submodules_is_named(tmp_path):
    mp = fake_tree(tmp_path / "mp")
    out = make("firmware", "BOARD=NUCLEO_H743ZI2", f"MICROPY_DIR={mp}", ok=False)
    assert "lib/stm32lib lib/tinyusb lib/micropython-lib" in out
    assert f"git -C {mp} submodule update --init" in out


# ------------------------------------------------------------------ CMake glue


CMAKE_PROJECT = """
cmake_minimum_required(VERSION 3.12)
project(glue C)
add_library(usermod INTERFACE)
include(${GLUE})
get_target_property(SRC usermod_tinymp INTERFACE_SOURCES)
get_target_property(INC usermod_tinymp INTERFACE_INCLUDE_DIRECTORIES)
get_target_property(LINKED usermod INTERFACE_LINK_LIBRARIES)
file(WRITE ${CMAKE_BINARY_DIR}/sources.txt "${SRC}")
file(WRITE ${CMAKE_BINARY_DIR}/includes.txt "${INC}")
file(WRITE ${CMAKE_BINARY_DIR}/linked.txt "${LINKED}")
"""


def test_cmake_glue_lists_the_binding_and_every_core_file(tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    (tmp_path / "CMakeLists.txt").write_text(CMAKE_PROJECT)
    glue = os.path.join(ROOT, "micropython_modules", "micropython.cmake")
    r = subprocess.run(["cmake", "-S", str(tmp_path), "-B", str(tmp_path / "b"), f"-DGLUE={glue}"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert r.returncode == 0, r.stdout.decode()
    srcs = set((tmp_path / "b" / "sources.txt").read_text().split(";"))
    core = set()
    for d, _, files in os.walk(os.path.join(TINYMP, "core")):
        core |= {os.path.join(d, f) for f in files if f.endswith(".c")}
    assert core and core <= srcs, core - srcs
    assert os.path.join(TINYMP, "modtinymp.c") in srcs
    assert not any("natmod" in s for s in srcs), "the natmod binding must not enter the firmware"
    assert os.path.join(TINYMP, "core") in (tmp_path / "b" / "includes.txt").read_text().split(";")
    assert "usermod_tinymp" in (tmp_path / "b" / "linked.txt").read_text()


ESP_SCRIPT = """
set(MICROPY_BOARD_DIR "${BOARD_DIR}")
set(CMAKE_BINARY_DIR "${OUT}")
include("${BOARD_DIR}/mpconfigboard.cmake")
file(WRITE "${OUT}/defaults.txt" "${SDKCONFIG_DEFAULTS}")
file(WRITE "${OUT}/manifest.txt" "${MICROPY_FROZEN_MANIFEST}")
file(WRITE "${OUT}/target.txt" "${IDF_TARGET}")
"""


def test_esp32_board_cmake_and_the_sdkconfig_it_makes(tmp_path):
    """Run boards/ESP32_S3/mpconfigboard.cmake as the esp32 port's CMakeLists does (cmake -P), then
    concatenate its sdkconfig defaults in order, as the port does before ESP-IDF reads them (the
    last setting of a key wins): the result selects our partition table, 8 MB flash, octal PSRAM,
    240 MHz. The port's own fragments are read from MICROPY_DIR when it is set."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    board = os.path.join(ROOT, "boards", "ESP32_S3")
    script = tmp_path / "board.cmake"
    script.write_text(ESP_SCRIPT)
    r = subprocess.run(["cmake", f"-DBOARD_DIR={board}", f"-DOUT={tmp_path}", "-P", str(script)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode == 0, r.stdout.decode()
    assert (tmp_path / "target.txt").read_text() == "esp32s3"
    assert (tmp_path / "manifest.txt").read_text() == os.path.join(board, "manifest.py")
    defaults = (tmp_path / "defaults.txt").read_text().split(";")
    frag = (tmp_path / "sdkconfig.tinymp_partitions").read_text()
    csv_path = os.path.join(board, "partitions-8MiB-romfs.csv")
    assert f'CONFIG_PARTITION_TABLE_CUSTOM_FILENAME="{csv_path}"' in frag
    assert defaults[-1] == str(tmp_path / "sdkconfig.tinymp_partitions")
    port = os.path.join(os.environ["MICROPY_DIR"], "ports", "esp32") if os.environ.get("MICROPY_DIR") else None
    settings = {}
    for d in defaults:
        path = d if os.path.isabs(d) else (os.path.join(port, d) if port else None)
        if path is None:
            continue
        assert os.path.isfile(path), f"{d} does not exist"
        for line in open(path).read().splitlines():
            if line.startswith("CONFIG_") and "=" in line:
                k, v = line.split("=", 1)
                settings[k] = v
    assert settings["CONFIG_PARTITION_TABLE_CUSTOM_FILENAME"] == f'"{csv_path}"'
    assert settings["CONFIG_ESPTOOLPY_FLASHSIZE_8MB"] == "y"
    if port:
        assert settings["CONFIG_ESPTOOLPY_FLASHSIZE_4MB"] == ""
        assert settings["CONFIG_SPIRAM_MODE_OCT"] == "y" and settings["CONFIG_SPIRAM_MODE_QUAD"] == ""
        assert settings["CONFIG_ESP_DEFAULT_CPU_FREQ_MHZ"] == "240"
        assert settings["CONFIG_SPIRAM"] == "y"


# ------------------------------------------------------------------ a maker's failure paths
#
# What a maker meets when something is missing: one line starting with "error:" that names the
# fix (make's own "make: *** [...] Error 1" trailer aside), never a traceback or a tool's usage.



# MicroPython's Makefiles, played by stand-ins that do what the real ones do with what they are
# given: build into BUILD (default: a folder inside the tree), run a Python tool of the tree (which
# leaves a __pycache__ beside it unless PYTHONDONTWRITEBYTECODE is set) and note which mpy-cross
# the build would use.
STANDIN_MPY_CROSS = """BUILD ?= build
all:
\tmkdir -p $(BUILD) && echo mpy-cross > $(BUILD)/mpy-cross
"""
STANDIN_PORT = """TOP := $(abspath ../..)
BUILD ?= build-standard
all:
\tmkdir -p $(BUILD)
\tpython3 -c "import sys; sys.path.insert(0, '$(TOP)/py'); import maketool"
\techo "mpy-cross=$${MICROPY_MPYCROSS:-$(TOP)/mpy-cross/build/mpy-cross}" > $(BUILD)/micropython
"""


def standin_tree(path, version=(1, 28, 0)):
    mp = fake_tree(path, version)
    (mp / "py" / "maketool.py").write_text("X = 1\n")
    (mp / "mpy-cross").mkdir()
    (mp / "mpy-cross" / "Makefile").write_text(STANDIN_MPY_CROSS)
    (mp / "ports" / "unix").mkdir(parents=True)
    (mp / "ports" / "unix" / "Makefile").write_text(STANDIN_PORT)
    return mp


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path)
                  for d, dirs, fs in os.walk(path) for f in fs + dirs)


def test_build_writes_nothing_into_micropython_dir(tmp_path):
    """A maker's tree (perhaps shared, or not theirs to write) stays as it was: mpy-cross and the
    firmware go under BUILD, MicroPython's Python tools write no __pycache__ there, and the port
    uses that mpy-cross."""
    if shutil.which("gcc") is None:
        pytest.skip("the firmware target needs the host's gcc")
    mp = standin_tree(tmp_path / "mp")
    before = files_under(mp)
    build = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    r = subprocess.run(["make", "--no-print-directory", "-C", ROOT, "firmware", "BOARD=UNIX",
                        f"MICROPY_DIR={mp}", f"BUILD={build}"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
                       env={k: v for k, v in env.items() if k not in ("MAKEFLAGS", "MFLAGS")})
    out = r.stdout.decode()
    assert r.returncode == 0, out
    assert files_under(mp) == before, "written into MICROPY_DIR: %s" % (
        sorted(set(files_under(mp)) - set(before)))
    assert (build / "mpy-cross" / "mpy-cross").is_file()
    assert (build / "unix" / "micropython").read_text().strip() == \
        f"mpy-cross={build}/mpy-cross/mpy-cross"
    assert f"firmware BOARD=UNIX: {build}/unix/micropython" in out


def test_build_dir_moves_every_output(tmp_path):
    out = make("firmware", "BOARD=NUCLEO_H743ZI2", "MICROPY_DIR=/opt/mp", "DRY_RUN=1",
               f"BUILD={tmp_path}")
    cmds = [shlex.split(ln) for ln in out.splitlines() if ln.startswith("env ")]
    assert [c for c in cmds[0] if c.startswith("BUILD=")] == [f"BUILD={tmp_path}/mpy-cross"]
    assert f"BUILD={tmp_path}/nucleo-h743zi2" in cmds[1]
    assert f"MICROPY_MPYCROSS={tmp_path}/mpy-cross/mpy-cross" in cmds[1]
    out = make("flash", "BOARD=NUCLEO_H743ZI2", "FLASH_TOOL=dfu-util", "DRY_RUN=1",
               f"BUILD={tmp_path}")
    assert f"{tmp_path}/nucleo-h743zi2/firmware.dfu" in out
    out = make("-n", "natmod", "ARCH=x64", "MICROPY_DIR=/opt/mp", f"BUILD={tmp_path}")
    assert f"{tmp_path}/natmod-x64/tinymp.mpy" in out


def test_micropython_dir_that_is_not_a_tree(tmp_path):
    for where in (tmp_path / "nothing-here", tmp_path):
        err = the_error(make("firmware", "BOARD=UNIX", f"MICROPY_DIR={where}", ok=False))
        assert f"MICROPY_DIR={where} is not a MicroPython source tree" in err
        assert "v1.28.0" in err


def test_micropython_dir_of_another_version_is_refused(tmp_path):
    mp = standin_tree(tmp_path / "mp", version=(1, 22, 2))
    err = the_error(make("firmware", "BOARD=UNIX", f"MICROPY_DIR={mp}", f"BUILD={tmp_path}/out",
                         ok=False))
    assert f"MICROPY_DIR={mp} is MicroPython 1.22.2" in err
    assert f"git -C {mp} checkout v1.28.0" in err and "MICROPY_VERSION_CHECK=0" in err
    assert not (tmp_path / "out").exists(), "nothing is built from the wrong tree"
    # a pre-release of the pinned version is another version too
    pre = fake_tree(tmp_path / "pre")
    (pre / "py" / "mpconfig.h").write_text(
        (pre / "py" / "mpconfig.h").read_text().replace("PRERELEASE 0", "PRERELEASE 1"))
    assert "is MicroPython 1.28.0-preview" in the_error(
        make("firmware", "BOARD=UNIX", f"MICROPY_DIR={pre}", ok=False))
    # the maker may insist
    if shutil.which("gcc"):
        out = make("firmware", "BOARD=UNIX", f"MICROPY_DIR={mp}", f"BUILD={tmp_path}/out",
                   "MICROPY_VERSION_CHECK=0")
        assert f"firmware BOARD=UNIX: {tmp_path}/out/unix/micropython" in out


def test_micropython_dir_of_the_pinned_version_is_accepted():
    mp = os.environ.get("MICROPY_DIR")
    if not mp:
        pytest.skip("MICROPY_DIR is not set: the version check is tried on stand-in trees only")
    out = make("micropython-tree", f"MICROPY_DIR={mp}")
    assert "error" not in out


def test_missing_submodules_are_one_line(tmp_path):
    mp = fake_tree(tmp_path / "mp", submodules=("lib/tinyusb",))
    err = the_error(make("firmware", "BOARD=NUCLEO_H743ZI2", f"MICROPY_DIR={mp}", ok=False))
    assert err.endswith(f"git -C {mp} submodule update --init lib/stm32lib lib/micropython-lib")


def path_without(tmp_path, prefix):
    """A PATH with every program of this one but those whose names start with prefix."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            src = os.path.join(d, name)
            if not name.startswith(prefix) and not (bin_dir / name).exists() \
                    and os.access(src, os.X_OK) and os.path.isfile(src):
                (bin_dir / name).symlink_to(src)
    return str(bin_dir)


@pytest.mark.parametrize("board", ["NUCLEO_H743ZI2", "QEMU_M7"])
def test_missing_cross_compiler_is_named_first(tmp_path, board):
    """No arm-none-eabi-gcc: said before anything else is tried (a clone of MicroPython would
    take minutes only to fail at the first compile)."""
    path = path_without(tmp_path, "arm-none-eabi-")
    err = the_error(make("firmware", f"BOARD={board}", f"MICROPY_DIR={tmp_path}/no-tree",
                         ok=False, env={"PATH": path}))
    assert err == (f"error: BOARD={board} needs arm-none-eabi-gcc "
                   "(apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)")


@pytest.mark.parametrize("board", ["QEMU_M7", "QEMU_M7_FLOAT"])
def test_firmware_test_names_what_it_needs_before_the_build(tmp_path, board):
    # run-tests.py reaches a qemu board through qemu-system-arm and pyboard.py (pyserial): both
    # were tracebacks after a whole build
    path = path_without(tmp_path, "qemu-system-arm")
    err = the_error(make("firmware-test", f"BOARD={board}", f"MICROPY_DIR={tmp_path}/no-tree",
                         ok=False, env={"PATH": path}))
    assert err == (f"error: firmware-test BOARD={board} needs qemu-system-arm (apt-get install "
                   "qemu-system-arm)")
    fake = tmp_path / "bin" / "qemu-system-arm"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    noserial = tmp_path / "py"  # a Python without pyserial
    noserial.write_text("#!/bin/sh\nexit 1\n")
    noserial.chmod(0o755)
    err = the_error(make("firmware-test", f"BOARD={board}", f"MICROPY_DIR={tmp_path}/no-tree",
                         f"FW_PYTHON={noserial}", ok=False, env={"PATH": path}))
    assert err == (f"error: firmware-test BOARD={board} needs pyserial for MicroPython's "
                   f"run-tests.py: {noserial} -m pip install pyserial (or make venv)")


def test_firmware_size_names_a_missing_tool_and_a_board_it_cannot_size(tmp_path):
    err = the_error(make("firmware-size", "BOARD=UNIX", ok=False))
    assert err == ("error: firmware-size reports on a Cortex-M firmware (BOARD=NUCLEO_H743ZI2, "
                   "OPENMV_H7, QEMU_M7, QEMU_M7_FLOAT); BOARD=UNIX is a program for this "
                   "computer")
    err = the_error(make("firmware-size", "BOARD=ESP32_S3", ok=False))
    assert "ESP-IDF's idf.py size" in err, err
    elf = tmp_path / "qemu-m7" / "firmware.elf"
    elf.parent.mkdir()
    elf.write_bytes(b"\x7fELF")
    path = path_without(tmp_path, "arm-none-eabi-")
    err = the_error(make("firmware-size", "BOARD=QEMU_M7", f"BUILD={tmp_path}", ok=False,
                         env={"PATH": path}))
    assert err == ("error: firmware-size needs arm-none-eabi-size (apt-get install "
                   "binutils-arm-none-eabi, which gcc-arm-none-eabi brings)")


def test_cross_compiler_without_its_c_library(tmp_path):
    """Debian's gcc-arm-none-eabi without libnewlib-arm-none-eabi: no <string.h> for the ports."""
    path = path_without(tmp_path, "arm-none-eabi-")
    fake = tmp_path / "bin" / "arm-none-eabi-gcc"
    fake.write_text("#!/bin/sh\necho 'fatal error: string.h: No such file or directory' >&2\nexit 1\n")
    fake.chmod(0o755)
    err = the_error(make("firmware", "BOARD=NUCLEO_H743ZI2", f"MICROPY_DIR={tmp_path}/no-tree",
                         ok=False, env={"PATH": path}))
    assert "apt-get install libnewlib-arm-none-eabi" in err


def test_esp_idf_missing_is_one_line(tmp_path):
    if shutil.which("idf.py"):
        pytest.skip("ESP-IDF is installed here: the missing-IDF message cannot be shown")
    err = the_error(make("firmware", "BOARD=ESP32_S3", f"MICROPY_DIR={tmp_path}/no-tree",
                         ok=False))
    assert "needs ESP-IDF v5.5.1" in err and "export.sh" in err


# make flash: the built image in BUILD, the flashing tools played by stand-ins.

FAKE_PYDFU = "import sys\nprint('pydfu ran:', ' '.join(sys.argv[1:]))\n"
FAKE_USB_CORE = """import os
class NoBackendError(ValueError):
    pass
class USBError(IOError):
    pass
class Device:
    bus, address = 1, 99
def find(find_all=False, **kw):
    mode = os.environ["FAKE_USB"]
    if mode == "nobackend":
        raise NoBackendError("No backend available")
    return [Device() for _ in range({"none": 0, "one": 1, "two": 2}[mode])]
"""


def flash_setup(tmp_path, pyusb=True):
    """BUILD with a built NUCLEO image, a MicroPython tree with tools/pydfu.py, and on
    PYTHONPATH a stand-in pyusb whose find() answers as FAKE_USB says (or an uninstalled one)."""
    build = tmp_path / "out" / "nucleo-h743zi2"
    build.mkdir(parents=True)
    (build / "firmware.dfu").write_bytes(b"DfuSe")
    (build / "firmware.bin").write_bytes(b"\0" * 8)
    mp = fake_tree(tmp_path / "mp")
    (mp / "tools").mkdir()
    (mp / "tools" / "pydfu.py").write_text(FAKE_PYDFU)
    usb = tmp_path / "site" / "usb"
    usb.mkdir(parents=True)
    if pyusb:
        (usb / "__init__.py").write_text("")
        (usb / "core.py").write_text(FAKE_USB_CORE)
    else:
        (usb / "__init__.py").write_text("raise ImportError('No module named usb')\n")
    args = ["flash", "BOARD=NUCLEO_H743ZI2", f"BUILD={tmp_path}/out", f"MICROPY_DIR={mp}",
            f"FW_PYTHON={sys.executable}"]
    return args, {"PYTHONPATH": str(tmp_path / "site")}


def test_flash_pydfu_without_pyusb(tmp_path):
    args, env = flash_setup(tmp_path, pyusb=False)
    err = the_error(make(*args, ok=False, env=env))
    assert err == (f"error: FLASH_TOOL=pydfu needs pyusb: {sys.executable} -m pip install pyusb "
                   "(or FLASH_TOOL=dfu-util)")


@pytest.mark.parametrize("mode,expect", [
    ("nobackend", "pyusb finds no libusb: apt-get install libusb-1.0-0"),
    ("none", "no board in DFU mode on USB (0483:df11). The board must be in its DFU bootloader"),
    ("two", "2 boards in DFU mode on USB (0483:df11): leave only the one to flash plugged in"),
])
def test_flash_pydfu_without_one_board(tmp_path, mode, expect):
    args, env = flash_setup(tmp_path)
    err = the_error(make(*args, ok=False, env=dict(env, FAKE_USB=mode)))
    assert expect in err
    if mode == "none":
        assert "machine.bootloader()" in err and "CN13" in err


def test_flash_pydfu_with_the_board_there(tmp_path):
    args, env = flash_setup(tmp_path)
    out = make(*args, env=dict(env, FAKE_USB="one"))
    assert f"pydfu ran: --vid 0x0483 --pid 0xDF11 -u {tmp_path}/out/nucleo-h743zi2/firmware.dfu" in out


def test_flash_pydfu_without_micropython_tree(tmp_path):
    args, env = flash_setup(tmp_path)
    args = [a for a in args if not a.startswith("MICROPY_DIR=")] + [f"MICROPY_DIR={tmp_path}/gone"]
    err = the_error(make(*args, ok=False, env=dict(env, FAKE_USB="one")))
    assert f"{tmp_path}/gone/tools/pydfu.py not found" in err and "FLASH_TOOL=dfu-util" in err


def test_flash_dfu_util(tmp_path):
    args, env = flash_setup(tmp_path)
    err = the_error(make(*args, "FLASH_TOOL=dfu-util", f"DFU_UTIL={tmp_path}/no/dfu-util",
                         ok=False))
    assert "needs" in err and "apt-get install dfu-util" in err
    tool = tmp_path / "dfu-util"
    tool.write_text('#!/bin/sh\nif [ "$1" = -l ]; then cat "$0.list"; else echo "dfu-util ran: $*"; fi\n')
    tool.chmod(0o755)
    (tmp_path / "dfu-util.list").write_text("dfu-util 0.11\n")
    err = the_error(make(*args, "FLASH_TOOL=dfu-util", f"DFU_UTIL={tool}", ok=False))
    assert err.startswith("error: no board in DFU mode on USB (0483:DF11)") and "BOOT0" in err
    (tmp_path / "dfu-util.list").write_text(
        'Found DFU: [0483:df11] ver=0200, devnum=7, cfg=1, intf=0, path="1-2", alt=0, '
        'name="@Internal Flash  /0x08000000/16*128Kg", serial="200364500000"\n')
    out = make(*args, "FLASH_TOOL=dfu-util", f"DFU_UTIL={tool}")
    assert f"dfu-util ran: -a 0 -d 0483:DF11 -D {tmp_path}/out/nucleo-h743zi2/firmware.dfu" in out


def test_flash_st_flash_missing(tmp_path):
    args, env = flash_setup(tmp_path)
    err = the_error(make(*args, "FLASH_TOOL=st-flash", f"ST_FLASH={tmp_path}/no/st-flash",
                         ok=False))
    assert "apt-get install stlink-tools" in err


def test_flash_esp32_port_and_esptool(tmp_path):
    build = tmp_path / "out" / "esp32-s3"
    build.mkdir(parents=True)
    (build / "firmware.bin").write_bytes(b"\xe9")
    args = ["flash", "BOARD=ESP32_S3", f"BUILD={tmp_path}/out", f"FW_PYTHON={sys.executable}"]
    err = the_error(make(*args, f"PORT={tmp_path}/ttyACM9", ok=False))
    assert f"PORT={tmp_path}/ttyACM9 does not exist" in err
    (tmp_path / "ttyACM9").write_text("")
    site = tmp_path / "site" / "esptool"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("raise ImportError('No module named esptool')\n")
    err = the_error(make(*args, f"PORT={tmp_path}/ttyACM9", ok=False,
                         env={"PYTHONPATH": str(tmp_path / "site")}))
    assert err == f"error: flashing BOARD=ESP32_S3 needs esptool: {sys.executable} -m pip install esptool"


def test_flash_without_a_board_to_flash():
    err = the_error(make("flash", ok=False))
    assert "nothing to flash" in err and "BOARD=NUCLEO_H743ZI2" in err


def test_tools_run_with_the_project_virtualenv(tmp_path):
    """pydfu, esptool, mpy_ld.py and run-tests.py need packages that `make venv` installs (the
    README: `.venv/bin/pip install pyusb`): with a virtualenv there, they run with its Python."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    out = make("flash", "BOARD=NUCLEO_H743ZI2", "MICROPY_DIR=/opt/mp", "DRY_RUN=1", f"VENV={venv}")
    assert shlex.split(out.strip().splitlines()[-1])[0] == f"{venv}/bin/python"
    out = make("flash", "BOARD=NUCLEO_H743ZI2", "MICROPY_DIR=/opt/mp", "DRY_RUN=1",
               f"VENV={tmp_path}/none")
    assert shlex.split(out.strip().splitlines()[-1])[0] == "python3"


def test_help_lists_the_firmware_targets():
    out = make("help")
    for target in ("make firmware BOARD=", "make firmware-test", "make firmware-size",
                   "make flash BOARD=", "make natmod ARCH=", "make venv"):
        assert target in out, target
    for board in ("UNIX", "UNIX_FLOAT", "QEMU_M7", "QEMU_M7_FLOAT", "NUCLEO_H743ZI2", "OPENMV_H7",
                  "ESP32_S3"):
        assert board in out.split(), board


def test_natmod_names_what_is_missing_before_any_clone(tmp_path):
    """make natmod: the cross compiler, then pyelftools, each in one line and before the
    MicroPython tree is looked for (or cloned)."""
    path = path_without(tmp_path, "arm-none-eabi-")
    err = the_error(make("natmod", "ARCH=armv7emsp", f"MICROPY_DIR={tmp_path}/no-tree", ok=False,
                         env={"PATH": path}))
    assert err == "error: ARCH=armv7emsp needs arm-none-eabi-gcc (apt-get install gcc-arm-none-eabi)"
    site = tmp_path / "site" / "elftools"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("raise ImportError('No module named elftools')\n")
    err = the_error(make("natmod", "ARCH=x64", f"MICROPY_DIR={tmp_path}/no-tree",
                         f"FW_PYTHON={sys.executable}", ok=False,
                         env={"PYTHONPATH": str(tmp_path / "site")}))
    assert err == (f"error: MicroPython's mpy_ld.py needs pyelftools: {sys.executable} -m pip "
                   "install pyelftools")


def clean_env():
    """This environment without the variables the make files read (a suite run with MICROPY_DIR
    set would otherwise build with that tree)."""
    return {k: v for k, v in os.environ.items()
            if k not in ("MAKEFLAGS", "MFLAGS", "BOARD", "PORT", "MICROPY_DIR", "OPENMV_DIR",
                         "BUILD")}


def copy_make_files(to):
    """The make files of this checkout in `to`: make run there cannot touch this checkout."""
    to.mkdir(parents=True, exist_ok=True)
    shutil.copy(os.path.join(ROOT, "Makefile"), to)
    for d, _, names in os.walk(os.path.join(ROOT, "firmware")):
        for n in names:
            if n.endswith(".mk"):
                rel = os.path.relpath(os.path.join(d, n), ROOT)
                (to / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(os.path.join(ROOT, rel), to / rel)


@pytest.mark.parametrize("where,args", [
    ("tinymp copy", ["BOARD=UNIX"]),            # would clone MicroPython into build/micropython
    ("tinymp copy", ["BOARD=OPENMV_H7"]),       # would clone OpenMV into build/openmv
    ("tinymp", ["BOARD=UNIX", "MICROPY_DIR={tmp}/my mp"]),
    ("tinymp", ["BOARD=UNIX", "BUILD={tmp}/out dir"]),
    ("tinymp", ["BOARD=OPENMV_H7", "OPENMV_DIR={tmp}/my openmv"]),
])
@pytest.mark.parametrize("target", ["firmware", "natmod", "flash", "firmware-size"])
def test_a_path_with_a_space_is_refused_before_anything_runs(tmp_path, where, args, target):
    # make splits a path at its spaces: a failed clone's clean-up in "tinymp copy" removed the
    # folder "tinymp" next to it (the part before the space). Refused, one line, nothing touched.
    tree = tmp_path / where
    copy_make_files(tree)
    for d in ("tinymp", "my", "out"):  # the folders named by the parts before a space
        (tmp_path / d).mkdir(exist_ok=True)
        (tmp_path / d / "keep").write_text("mine")
    args = [a.format(tmp=tmp_path) for a in args]
    spaced = str(tree) if where != "tinymp" else args[-1].split("=", 1)[1]
    if target == "natmod":
        args = [a for a in args if not a.startswith("BOARD=")] + ["ARCH=x64"]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    env = clean_env()
    r = subprocess.run(["make", "--no-print-directory", "-C", str(tree), target, *args],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=60)
    out = r.stdout.decode()
    assert r.returncode != 0, out
    if any(a.startswith("BUILD=") for a in args):
        # the top-level Makefile's own rules name BUILD: make stops as it reads it
        (err,) = [ln for ln in out.splitlines() if "***" in ln]
        assert err.startswith("Makefile:") and err.endswith(".  Stop."), out
    else:
        err = the_error(out)
    assert "a path with a space in it" in err and "use a path without spaces" in err, err
    assert spaced in err, err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    for d in ("tinymp", "my", "out"):
        assert (tmp_path / d / "keep").read_text() == "mine"


@pytest.mark.parametrize("board,folder,what", [
    ("UNIX", "build/micropython", "a MicroPython source tree (no py/mkenv.mk"),
    ("OPENMV_H7", "build/openmv", "an OpenMV checkout with boards/OPENMV4"),
])
def test_a_clone_folder_that_is_not_one_is_named_not_cloned_over(tmp_path, board, folder, what):
    # a clone cut short (or a folder of the user's) where the Makefile clones: said, and left
    # as it is (a failed clone into it removed it)
    copy_make_files(tmp_path)
    (tmp_path / folder).mkdir(parents=True)
    (tmp_path / folder / "mine").write_text("x")
    env = clean_env()
    r = subprocess.run(["make", "--no-print-directory", "-C", str(tmp_path), "firmware",
                        f"BOARD={board}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       env=env, timeout=60)
    out = r.stdout.decode()
    assert r.returncode != 0
    err = the_error(out)
    assert err.startswith(f"error: {folder} is there but is not {what}") and \
        f"remove it (rm -rf {folder})" in err, err
    assert (tmp_path / folder / "mine").read_text() == "x"


def test_an_openmv_clone_without_the_target_board_is_not_called_broken(tmp_path):
    copy_make_files(tmp_path)
    (tmp_path / "build" / "openmv").mkdir(parents=True)
    (tmp_path / "build" / "openmv" / "Makefile").write_text("all:\n")
    r = subprocess.run(["make", "--no-print-directory", "-C", str(tmp_path), "firmware",
                        "BOARD=OPENMV_H7", "OPENMV_TARGET=NOSUCH"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, env=clean_env(), timeout=60)
    assert r.returncode != 0
    assert the_error(r.stdout.decode()).startswith(
        "error: build/openmv has no boards/NOSUCH: OPENMV_TARGET names a board of OpenMV ")
    assert (tmp_path / "build" / "openmv" / "Makefile").exists()


def test_clean_keeps_the_venv_and_the_micropython_clone(tmp_path):
    # in a copy of the make files: clean must not touch this checkout's build or .venv
    copy_make_files(tmp_path)
    kept = ["build/micropython/py/mpconfig.h", "build/openmv/Makefile", ".venv/bin/python"]
    gone = ["build/unix/micropython", "build/bench/bench_train.elf", "build/core.o",
            "tinymp.egg-info/PKG-INFO"]
    for f in kept + gone:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x")

    def run(target):
        r = subprocess.run(["make", "--no-print-directory", "-C", str(tmp_path), target],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        assert r.returncode == 0, r.stdout.decode()
    run("clean")
    assert [f for f in kept if not (tmp_path / f).exists()] == []
    assert [f for f in gone if (tmp_path / f).exists()] == []
    run("distclean")
    assert not (tmp_path / "build").exists() and not (tmp_path / ".venv").exists()
    run("clean")  # nothing left to clean: still fine


# ------------------------------------------------------------------ how make is called


def test_make_from_another_folder_says_where_it_runs(tmp_path):
    # `make -f tinymp/Makefile` from elsewhere could not find the make files it includes (make's
    # own "No such file" line); now one line naming the command that works
    r = subprocess.run(["make", "--no-print-directory", "-f", os.path.join(ROOT, "Makefile"),
                        "help"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       env=clean_env(), timeout=60)
    out = r.stdout.decode()
    assert r.returncode != 0, out
    (line,) = [ln for ln in out.splitlines() if ln.strip()]
    assert line.endswith(f"*** make runs in the tinymp checkout, whose files these make files "
                         f"name: make -C {ROOT} help.  Stop."), out
    # -f naming the Makefile in the checkout itself is fine
    r = subprocess.run(["make", "--no-print-directory", "-f", "./Makefile", "help"], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=clean_env(),
                       timeout=60)
    assert r.returncode == 0 and b"make test" in r.stdout, r.stdout


def test_a_relative_micropython_dir_is_named_with_the_folder_it_resolved_to(tmp_path):
    # under make -C, a relative MICROPY_DIR is taken from the checkout, not from where the
    # maker typed it: the error shows which folder that was
    rel = os.path.relpath(tmp_path / "no-tree", ROOT)
    err = the_error(make("firmware", "BOARD=UNIX", f"MICROPY_DIR={rel}", ok=False))
    assert err.startswith(f"error: MICROPY_DIR={rel} (that is {tmp_path}/no-tree) is not a "
                          "MicroPython source tree"), err
    old = standin_tree(tmp_path / "old", version=(1, 22, 2))
    rel = os.path.relpath(old, ROOT)
    err = the_error(make("firmware", "BOARD=UNIX", f"MICROPY_DIR={rel}",
                         f"BUILD={tmp_path}/out", ok=False))
    assert err.startswith(f"error: MICROPY_DIR={rel} (that is {old}) is MicroPython 1.22.2"), err
    # an absolute path is named once
    err = the_error(make("firmware", "BOARD=UNIX", f"MICROPY_DIR={old}", ok=False))
    assert err.startswith(f"error: MICROPY_DIR={old} is MicroPython"), err


def test_dry_run_does_not_say_built(tmp_path):
    out = make("firmware", "BOARD=ESP32_S3", "MICROPY_DIR=/opt/mp", "DRY_RUN=1",
               f"BUILD={tmp_path}")
    assert out.splitlines()[-1] == \
        f"firmware BOARD=ESP32_S3: {tmp_path}/esp32-s3/firmware.bin (DRY_RUN: not built)"


def test_size_names_a_missing_cross_compiler(tmp_path):
    path = path_without(tmp_path, "arm-none-eabi-")
    err = the_error(make("size", f"BUILD={tmp_path}/out", ok=False, env={"PATH": path}))
    assert err == ("error: the Cortex-M7 build needs arm-none-eabi-gcc (apt-get install "
                   "gcc-arm-none-eabi libnewlib-arm-none-eabi)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["bench-kernels", "kernel-check"])
def test_bench_names_a_missing_cross_compiler_and_its_c_library(tmp_path, target):
    # the same check as make size's (arm_cc_check): the compiler, then newlib's headers
    path = path_without(tmp_path, "arm-none-eabi-")
    err = the_error(make(target, f"BUILD={tmp_path}/out", ok=False, env={"PATH": path}))
    assert err == ("error: make bench needs arm-none-eabi-gcc (apt-get install "
                   "gcc-arm-none-eabi libnewlib-arm-none-eabi)")
    fake = tmp_path / "bin" / "arm-none-eabi-gcc"  # a compiler without its C library
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    err = the_error(make(target, f"BUILD={tmp_path}/out", ok=False, env={"PATH": path}))
    assert err == ("error: make bench needs arm-none-eabi-gcc's C library (apt-get install "
                   "libnewlib-arm-none-eabi)")
    assert not (tmp_path / "out").exists()


def test_firmware_test_checks_its_tools_before_the_build_under_make_j(tmp_path):
    if shutil.which("gcc") is None or shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("the QEMU_M7 firmware target needs gcc and arm-none-eabi-gcc")
    mp = standin_tree(tmp_path / "mp")
    path = path_without(tmp_path, "qemu-system-arm")
    fake = tmp_path / "bin" / "qemu-system-arm"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    slow = tmp_path / "py"  # a Python without pyserial that takes its time to say so: under -j
    slow.write_text("#!/bin/sh\nsleep 2\nexit 1\n")  # the build must wait for it all the same
    slow.chmod(0o755)
    err = the_error(make("-j4", "firmware-test", "BOARD=QEMU_M7", f"MICROPY_DIR={mp}",
                         f"BUILD={tmp_path}/out", f"FW_PYTHON={slow}", ok=False,
                         env={"PATH": path}))
    assert err.startswith("error: firmware-test BOARD=QEMU_M7 needs pyserial"), err
    assert not (tmp_path / "out" / "mpy-cross").exists(), "the build ran beside the check"


def test_firmware_test_under_dry_run_prints_its_command(tmp_path):
    # DRY_RUN prints the commands of firmware-test as of firmware (it ran the tests for real)
    out = make("firmware-test", "BOARD=UNIX", "MICROPY_DIR=/opt/mp", "DRY_RUN=1",
               f"BUILD={tmp_path}")
    last = out.splitlines()[-1]
    assert last.startswith("cd /opt/mp/tests && ") and "run-tests.py" in last, out
    assert not (tmp_path / "unix").exists()
