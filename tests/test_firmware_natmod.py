"""tinymp.mpy, the dynamic native module (micropython_modules/tinymp/natmod): built with
`make natmod ARCH=x64|armv7emsp` and loaded next to the firmware's built-in tinymp, which it must
match call for call: the same attributes, predictions and logits (bit for bit), and the same
exceptions with the same messages for bad input (the natmod binding repeats the firmware
binding's checks; this is the test that catches the two drifting apart).

- ARCH=x64 in the unix port (`make firmware BOARD=UNIX`), imported as `tinymp_nm`;
- ARCH=armv7emsp (Cortex-M4/M7, single-precision FPU: the OpenMV Cam H7's) in the QEMU Cortex-M7
  firmware (`make firmware BOARD=QEMU_M7_FLOAT`), the .mpy handed to it through a RAM filesystem.

Needs MICROPY_DIR (a MicroPython v1.28.0 tree) and pyelftools (MicroPython's mpy_ld.py); the
armv7emsp part also arm-none-eabi-gcc, qemu-system-arm and pyserial.
"""
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPY_DIR = os.environ.get("MICROPY_DIR")
sys.path.insert(0, os.path.join(ROOT, "tests", "device"))

MPY_ARCH = {"x64": 2, "armv7emsp": 7}   # MP_NATIVE_ARCH_* of py/persistentcode.h


@pytest.fixture(scope="module")
def micropy_dir():
    if not MICROPY_DIR:
        pytest.skip("MICROPY_DIR is not set: set MICROPY_DIR=/path/to/micropython (a MicroPython "
                    "v1.28.0 source tree) to build tinymp.mpy and load it in MicroPython")
    if not os.path.isfile(os.path.join(MICROPY_DIR, "py", "dynruntime.mk")):
        pytest.fail(f"MICROPY_DIR={MICROPY_DIR} is not a MicroPython source tree")
    if importlib.util.find_spec("elftools") is None:
        pytest.skip("MicroPython's mpy_ld.py needs pyelftools (pip install pyelftools)")
    return os.path.abspath(MICROPY_DIR)


def make(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    r = subprocess.run(["make", "-C", ROOT] + list(args) + [f"FW_PYTHON={sys.executable}"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=1800)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, "make " + " ".join(args) + " failed:\n" + out[-4000:]
    return out


def build_natmod(micropy_dir, arch):
    make("natmod", f"ARCH={arch}", f"MICROPY_DIR={micropy_dir}")
    path = os.path.join(ROOT, "build", f"natmod-{arch}", "tinymp.mpy")
    data = open(path, "rb").read()
    # .mpy header: 'M', version 6, then sub-version (low 2 bits) and native architecture
    assert data[0:2] == b"M\x06"
    assert data[2] >> 2 == MPY_ARCH[arch]
    return data


def comparison_script():
    """A MicroPython script that runs the same calls on `fw` (built in) and `nm` (the natmod) and
    prints one line per call: SAME/DIFF and the result."""
    import make_models
    model = make_models.build_model()
    return MODEL_TEMPLATE.replace("MODEL_BYTES", repr(bytes(model)))


MODEL_TEMPLATE = r'''
import array
import tinymp as fw
import tinymp_nm as nm

MODEL = MODEL_BYTES


def res(f):
    try:
        return repr(f())
    except Exception as e:
        return "%s: %s" % (type(e).__name__, e)


def calls(mod):
    out = []
    m = mod.Model(MODEL)
    h, w, c = m.input_shape
    n = h * w * c
    out.append(res(lambda: repr(m)))
    out.append(res(lambda: (m.input_shape, m.num_classes, m.inference_arena_bytes,
                            m.input_zero_point, m.class_names)))
    out.append(res(lambda: m.input_scale))
    for seed in range(6):
        x = bytes(((i * 37 + seed * 101) * 13) & 255 for i in range(n))
        out.append(res(lambda: m.predict(x)))
        out.append(res(lambda: list(m.logits(x))))
    o = array.array("f", [0.0] * m.num_classes)
    out.append(res(lambda: (m.logits(x, out=o) is o, list(o))))
    out.append(res(lambda: list(m.logits(x, out=bytearray(4 * m.num_classes)))))
    out.append(res(lambda: list(m.logits(x=x)) == list(m.logits(x))))  # the documented name
    out.append(res(lambda: mod.Model(memoryview(bytearray(1) + bytearray(MODEL))[1:]).predict(x)))
    ba = bytearray(MODEL)
    mb = mod.Model(ba)
    out.append(res(lambda: mb.predict(x)))
    try:
        ba[100:] = b""   # shrink the buffer the model lives in
    except Exception:
        pass
    out.append(res(lambda: mb.predict(x)))
    bad = bytearray(MODEL)
    bad[len(bad) // 2] ^= 0xFF
    for f in (lambda: mod.Model(bytes(bad)), lambda: mod.Model(MODEL[:40]),
              lambda: mod.Model(MODEL[:-8]), lambda: mod.Model(123), lambda: mod.Model(None),
              lambda: m.predict(x[:-1]), lambda: m.predict("x" * n), lambda: m.predict(7),
              lambda: m.predict(array.array("h", [0] * n)), lambda: m.logits(x, out=bytearray(3)),
              lambda: m.logits(x, out=array.array("i", [0] * m.num_classes)),
              lambda: m.logits(x, out=b"\x00" * (4 * m.num_classes)), lambda: m.logits(),
              lambda: m.nope, lambda: setattr(m, "num_classes", 3)):
        out.append(res(f))
    return out


a = calls(fw)
b = calls(nm)
print("natmod is separate:", nm is not fw and nm.Model is not fw.Model)
print("version", fw.__version__ == nm.__version__)
for x, y in zip(a, b):
    print("SAME" if x == y else "DIFF", x if x == y else x + "  |  " + y)
print("calls", len(a), len(b))
'''


def check_output(out):
    lines = out.strip().splitlines()
    assert lines[0] == "natmod is separate: True", out
    assert lines[1] == "version True", out
    diffs = [ln for ln in lines if ln.startswith("DIFF")]
    assert not diffs, "\n".join(diffs)
    same = [ln for ln in lines if ln.startswith("SAME")]
    assert lines[-1] == f"calls {len(same)} {len(same)}" and len(same) >= 30, out
    # the calls did what they should: real predictions, and every bad input raised
    assert sum("Error: tinymp:" in ln for ln in same) >= 12, out
    assert any("resized after loading" in ln for ln in same), out
    return same


def test_natmod_x64_matches_the_builtin_module_in_the_unix_port(micropy_dir, tmp_path):
    data = build_natmod(micropy_dir, "x64")
    make("firmware", "BOARD=UNIX", f"MICROPY_DIR={micropy_dir}")
    (tmp_path / "tinymp_nm.mpy").write_bytes(data)
    script = tmp_path / "compare.py"
    script.write_text(comparison_script())
    r = subprocess.run([os.path.join(ROOT, "build", "unix", "micropython"), str(script)],
                       cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, out
    same = check_output(out)
    assert any("f\\xe5gel" in ln or "fågel" in ln for ln in same), "class names not decoded alike"


INJECT = r'''
import io, sys, vfs


class _MpyFile(io.IOBase):
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def ioctl(self, req, arg):
        return 0 if req == 4 else -1   # MP_STREAM_CLOSE

    def readinto(self, buf):
        n = min(len(buf), len(self.data) - self.pos)
        buf[:n] = memoryview(self.data)[self.pos:self.pos + n]
        self.pos += n
        return n


class _OneFileFS:
    def mount(self, readonly, mkfs):
        pass

    def chdir(self, path):
        pass

    def stat(self, path):
        if path == "/tinymp_nm.mpy":
            return (0,) * 10
        raise OSError(2)

    def open(self, path, mode):
        return _MpyFile(_MPY)


vfs.mount(_OneFileFS(), "/natmod")
sys.path.insert(0, "/natmod")
'''


def test_natmod_armv7emsp_matches_the_builtin_module_on_cortex_m7(micropy_dir):
    missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install gcc-arm-none-eabi "
                    "libnewlib-arm-none-eabi qemu-system-arm)")
    if importlib.util.find_spec("serial") is None:
        pytest.skip("talking to qemu needs pyserial (pip install pyserial)")
    data = build_natmod(micropy_dir, "armv7emsp")
    make("firmware", "BOARD=QEMU_M7_FLOAT", f"MICROPY_DIR={micropy_dir}")
    sys.path.insert(0, os.path.join(micropy_dir, "tools"))
    try:
        import pyboard
    finally:
        sys.path.pop(0)
    elf = os.path.join(ROOT, "build", "qemu-m7-float", "firmware.elf")
    pb = pyboard.Pyboard("execpty:qemu-system-arm -machine mps2-an500 -nographic -monitor null "
                         f"-semihosting -serial pty -kernel {elf}")
    try:
        pb.enter_raw_repl()
        pb.exec("_MPY = " + repr(data))
        pb.exec(INJECT)
        out = pb.exec(comparison_script(), timeout=600).decode("utf-8", "replace")
    finally:
        pb.close()
    check_output(out)
