"""tinymp inside MicroPython: build the firmware and run tests/device on it with run-tests.py.

Needs a MicroPython v1.28 source tree named by the environment variable MICROPY_DIR (no network
here: nothing is cloned by the tests). For each target this runs

    make firmware-test BOARD=<target> MICROPY_DIR=$MICROPY_DIR FW_PYTHON=<this python>

(firmware/firmware.mk): it builds the port with the tinymp user C module, then MicroPython's
tests/run-tests.py runs every tests/device/*.py on it against the committed .py.exp — the same
files tests/test_device_scripts.py checks the PC package against.

Targets: UNIX (double), UNIX_FLOAT (float32, as the OpenMV Cam H7), QEMU_M7 and QEMU_M7_FLOAT
(MPS2_AN500 Cortex-M7 under qemu-system-arm; need arm-none-eabi-gcc, qemu-system-arm and
pyserial for run-tests.py's serial link).
"""
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE = os.path.join(ROOT, "tests", "device")
MICROPY_DIR = os.environ.get("MICROPY_DIR")

# scripts that may skip on a target, and why
MAY_SKIP = {
    "QEMU_M7": {"model_file.py", "train_fit_file.py"},  # no writable filesystem on the qemu port
    "QEMU_M7_FLOAT": {"model_file.py", "train_fit_file.py"},
}

TARGETS = ["UNIX", "UNIX_FLOAT", "QEMU_M7", "QEMU_M7_FLOAT"]
# build/<dir> of each target (firmware/firmware.mk); run-tests.py writes its results there
RESULT_DIRS = {"UNIX": "unix", "UNIX_FLOAT": "unix-float", "QEMU_M7": "qemu-m7",
               "QEMU_M7_FLOAT": "qemu-m7-float"}


def _device_tests():
    return sorted(os.path.basename(p)[:-len(".exp")]
                  for p in glob.glob(os.path.join(DEVICE, "*.py.exp")))


@pytest.fixture(scope="module")
def micropy_dir():
    if not MICROPY_DIR:
        pytest.skip("MICROPY_DIR is not set: set MICROPY_DIR=/path/to/micropython (a MicroPython "
                    "v1.28.0 source tree) to build the firmware with tinymp and run tests/device "
                    "on it")
    if not os.path.isfile(os.path.join(MICROPY_DIR, "py", "mkenv.mk")):
        pytest.fail(f"MICROPY_DIR={MICROPY_DIR} is not a MicroPython source tree (no py/mkenv.mk)")
    if shutil.which("make") is None or shutil.which("gcc") is None:
        pytest.skip("make and gcc are needed to build MicroPython")
    return os.path.abspath(MICROPY_DIR)


@pytest.mark.parametrize("board", TARGETS)
def test_device_scripts_on_micropython(board, micropy_dir):
    if board.startswith("QEMU"):
        missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(t) is None]
        if missing:
            pytest.skip(f"BOARD={board} needs {', '.join(missing)} "
                        "(apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")
        if importlib.util.find_spec("serial") is None:
            pytest.skip(f"BOARD={board}: run-tests.py talks to qemu through pyserial "
                        "(pip install pyserial)")
    cmd = ["make", "-C", ROOT, "firmware-test", f"BOARD={board}", f"MICROPY_DIR={micropy_dir}",
           f"FW_PYTHON={sys.executable}"]
    results_json = os.path.join(ROOT, "build", RESULT_DIRS[board], "test-results", "_results.json")
    if os.path.exists(results_json):
        os.remove(results_json)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1800)
    log = r.stdout.decode("utf-8", "replace")
    errors = [ln for ln in log.splitlines() if re.search(r"error|FAIL|Traceback", ln)][:20]
    tail = "\n".join(errors + ["..."] + log.splitlines()[-40:])
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{tail}"

    # run-tests.py runs the unix tests in parallel, so its "pass NAME" lines can interleave on a
    # pipe: read the per-test results from the file it writes (-r DIR), else from the log
    results = {}
    if os.path.exists(results_json):
        with open(results_json, encoding="utf-8") as f:
            for path, status, _reason in json.load(f)["results"]:
                results[os.path.basename(path)] = {"pass": "pass", "skip": "skip"}.get(status, "FAIL")
    else:
        for line in log.splitlines():
            m = re.match(r"^(pass|skip|FAIL)\s+(\S+)", line)
            if m:
                results[os.path.basename(m.group(2))] = m.group(1)
    expected = _device_tests()
    assert expected
    for name in expected:
        assert name in results, f"{name} was not run on {board}:\n{tail}"
        if results[name] == "skip":
            assert name in MAY_SKIP.get(board, set()), f"{name} skipped on {board}:\n{tail}"
        else:
            assert results[name] == "pass", f"{name}: {results[name]} on {board}:\n{tail}"
