"""The device test scripts (tests/device/*.py) under CPython with the PC package.

Each script is also run on MicroPython (unix, unix float32, qemu Cortex-M7) by
tests/test_micropython.py through MicroPython's run-tests.py, against the same committed
``.py.exp``. Here the PC package must print exactly that output too: the two bindings expose one
API with the same results and the same error messages. A script whose first line starts with
``# device-only`` needs a MicroPython feature (e.g. ROMFS): under CPython it must print SKIP.
"""
import glob
import os
import subprocess
import sys

import pytest

pytest.importorskip("tinymp", reason="tinymp C extension not built (pip install -e .)")

HERE = os.path.dirname(os.path.abspath(__file__))
DEVICE = os.path.join(HERE, "device")
SCRIPTS = sorted(glob.glob(os.path.join(DEVICE, "*.py")))
TESTS = [p for p in SCRIPTS if os.path.exists(p + ".exp")]


def test_every_script_has_expected_output():
    missing = [os.path.basename(p) for p in SCRIPTS
               if p not in TESTS and os.path.basename(p) != "make_models.py"]
    assert not missing, f"device scripts without a committed .py.exp: {missing}"
    assert TESTS


@pytest.mark.parametrize("script", TESTS, ids=[os.path.basename(p) for p in TESTS])
def test_device_script_under_cpython(script, tmp_path):
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    # run from an unrelated directory, as run-tests.py does: the script must be self-contained
    r = subprocess.run([sys.executable, script], cwd=tmp_path, env=env, capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr.decode("utf-8", "replace")
    with open(script + ".exp", "rb") as f:
        expected = f.read()
    got = r.stdout.replace(b"\r\n", b"\n")
    with open(script, encoding="utf-8") as f:
        device_only = f.readline().startswith("# device-only")
    if device_only:
        # needs a MicroPython feature (e.g. ROMFS); its .py.exp is the output on MicroPython
        assert got == b"SKIP\n", got.decode("utf-8", "replace")
        pytest.skip("device-only script (MicroPython feature); runs in tests/test_micropython.py")
    assert got != b"SKIP\n", "the script skipped: tinymp did not import"
    assert got.decode("utf-8") == expected.decode("utf-8")


def test_embedded_models_match_the_generator():
    """The literals in the scripts are what make_models.py builds (regenerate with it)."""
    pytest.importorskip("numpy")
    r = subprocess.run([sys.executable, os.path.join(DEVICE, "make_models.py"), "--check"],
                       capture_output=True, timeout=300)
    assert r.returncode == 0, (
        (r.stdout + r.stderr).decode("utf-8", "replace")
        + "\nrun `python tests/device/make_models.py`, then regenerate each .py.exp with"
        " `python tests/device/NAME.py > tests/device/NAME.py.exp`")


def test_every_public_name_is_documented():
    """api_surface.py prints the public names of the module, a Model, a Plan and a Trainer (the
    same on MicroPython: its .py.exp is shared); each is in docs/API.md, as `name` or .name."""
    import ast
    import re
    with open(os.path.join(DEVICE, "api_surface.py.exp"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    with open(os.path.join(os.path.dirname(HERE), "docs", "API.md"), encoding="utf-8") as f:
        doc = f.read()
    names = [(kind, n) for kind, rest in (ln.split(" ", 1) for ln in lines)
             for n in ast.literal_eval(rest)]
    assert [k for k, _ in names if k == "Trainer"], lines
    missing = [f"{k}.{n}" for k, n in names if not re.search(r"[`.]%s\b" % re.escape(n), doc)]
    assert not missing, f"public names not in docs/API.md: {missing}"
