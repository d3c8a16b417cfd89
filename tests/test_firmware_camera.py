"""firmware/modules/tinymp_camera.py (frozen into the firmware) and the camera examples in
firmware/examples/.

- Preprocess against an independent numpy formulation (centre crop with the model's aspect,
  nearest-neighbour sampling, channel expansion, luminance) and its quantisation table against
  the PC package's quantiser (tinymp.builder.quantize_input), for grayscale, RGB565 and RGB888
  frames and 1- and 3-channel models;
- SampleStore round trips, counts and refusals; find();
- under MicroPython (MICROPY_DIR set) the viper-compiled loop gives the same bytes, in the unix
  port (x64) and in the QEMU Cortex-M7 firmware (Thumb-2, single precision);
- the three examples run end to end under CPython with a stand-in `sensor` module and the PC
  package: capture samples of two classes, personalise (tinymp.Trainer), then live predictions
  with the parameters restored from the file, as after a reset.
"""
import importlib
import os
import subprocess
import sys
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = os.path.join(ROOT, "firmware", "modules")
EXAMPLES = os.path.join(ROOT, "firmware", "examples")
sys.path.insert(0, MODULES)

import tinymp_camera as tc  # noqa: E402


class FakeModel:
    def __init__(self, h, w, c, scale=1 / 255, zp=-128, num_classes=3):
        self.input_shape = (h, w, c)
        self.input_scale = scale
        self.input_zero_point = zp
        self.num_classes = num_classes


def reference(frame_u8, bpp, fw, fh, h, w, c, scale, zp):
    """numpy: (fh, fw, 3) 8-bit RGB image (or (fh, fw) gray) -> (h, w, c) int8."""
    if bpp == 1:
        rgb = np.repeat(frame_u8.reshape(fh, fw, 1), 3, axis=2).astype(np.int64)
    elif bpp == 2:
        v = frame_u8.view("<u2").reshape(fh, fw).astype(np.int64)
        r5, g6, b5 = (v >> 11) & 31, (v >> 5) & 63, v & 31
        rgb = np.stack([(r5 << 3) | (r5 >> 2),
                        (g6 << 2) | (g6 >> 4), (b5 << 3) | (b5 >> 2)], axis=2)
    else:
        rgb = frame_u8.reshape(fh, fw, 3).astype(np.int64)
    # crop: the largest centred w:h region
    if fw * h >= fh * w:
        ch, cw = fh, fh * w // h
    else:
        cw, ch = fw, fw * h // w
    y0, x0 = (fh - ch) // 2, (fw - cw) // 2
    ys = y0 + ((2 * np.arange(h) + 1) * ch) // (2 * h)
    xs = x0 + ((2 * np.arange(w) + 1) * cw) // (2 * w)
    pix = rgb[ys][:, xs]                                    # (h, w, 3) 0..255
    if c == 1:
        vals = pix[:, :, :1] if bpp == 1 else \
            ((pix[:, :, 0] * 77 + pix[:, :, 1] * 150 + pix[:, :, 2] * 29) >> 8)[:, :, None]
    else:
        vals = pix
    from tinymp.builder import quantize_input
    return quantize_input(vals / 255.0, (scale, zp))


@pytest.mark.parametrize("bpp", [1, 2, 3])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("fw,fh,h,w", [(160, 120, 32, 32), (20, 10, 4, 6), (7, 13, 5, 3),
                                       (96, 96, 96, 96), (64, 48, 40, 40)])
def test_preprocess_matches_numpy(bpp, c, fw, fh, h, w, rng):
    scale = float(np.float32(rng.uniform(0.002, 0.03)))
    zp = int(rng.integers(-128, 20))
    frame = rng.integers(0, 256, fh * fw * bpp, dtype=np.uint8)
    prep = tc.Preprocess(FakeModel(h, w, c, scale, zp))
    got = np.frombuffer(bytes(prep.convert(frame.tobytes(), fw, fh)), np.int8).reshape(h, w, c)
    want = reference(frame, bpp, fw, fh, h, w, c, scale, zp)
    np.testing.assert_array_equal(got, want)


def test_quant_table_is_the_pc_quantiser():
    from tinymp.builder import quantize_input
    # a model's input_scale is a float32 (docs/FORMAT.md), as the PC quantiser assumes
    for scale, zp in [(1 / 255, -128), (0.0123, 3), (0.5, 0), (0.001, -128), (1 / 127.5, 0)]:
        scale = float(np.float32(scale))
        lut = tc.quant_table(scale, zp)
        want = quantize_input(np.arange(256) / 255.0, (scale, zp)).astype(np.uint8)
        assert bytes(lut) == want.tobytes(), (scale, zp)
    with pytest.raises(ValueError):
        tc.quant_table(0.0, 0)


def test_preprocess_image_object_out_buffer_and_refusals():
    class Img:
        def __init__(self, w, h, data):
            self._w, self._h, self._d = w, h, data

        def width(self):
            return self._w

        def height(self):
            return self._h

        def bytearray(self):
            return self._d

    prep = tc.Preprocess(FakeModel(4, 4, 1))
    frame = bytearray(range(64))
    x = prep(Img(8, 8, frame))
    assert x is prep.buf and len(x) == 16
    out = bytearray(16)
    assert prep(Img(8, 8, frame), out) is out and out == x
    with pytest.raises(ValueError, match="not grayscale, RGB565 or RGB888"):
        prep.convert(bytes(10), 3, 3)
    with pytest.raises(ValueError, match="out must have 16 bytes"):
        prep.convert(frame, 8, 8, bytearray(5))
    with pytest.raises(ValueError, match="input channels"):
        tc.Preprocess(FakeModel(4, 4, 2))


def test_sample_store(tmp_path):
    m = FakeModel(2, 3, 1, num_classes=3)
    path = str(tmp_path / "s.bin")
    st = tc.SampleStore(path, m)
    assert len(st) == 0 and list(st) == [] and st.counts(3) == [0, 0, 0]
    samples = [(bytes([i] * 6), i % 3) for i in range(7)]
    for x, y in samples:
        st.append(x, y)
    again = tc.SampleStore(path)                      # size read from the header
    assert again.sample_bytes == 6 and len(again) == 7
    assert [(bytes(x), y) for x, y in again] == samples
    assert again.counts(3) == [3, 2, 2]
    raw = open(path, "rb").read()
    assert raw[:8] == b"TMPS\x06\x00\x00\x00" and len(raw) == 8 + 7 * 7
    with pytest.raises(ValueError, match="expected 6"):
        st.append(b"123", 0)
    with pytest.raises(ValueError, match="label"):
        st.append(bytes(6), 256)
    with pytest.raises(ValueError, match="the model takes 12"):
        tc.SampleStore(path, FakeModel(2, 6, 1))
    open(str(tmp_path / "junk"), "wb").write(b"nope1234")
    with pytest.raises(ValueError, match="not a sample file"):
        tc.SampleStore(str(tmp_path / "junk"))
    assert [(bytes(again.read(i)[0]), again.read(i)[1]) for i in range(7)] == samples
    with pytest.raises(IndexError):
        again.read(7)
    st.clear()
    assert len(st) == 0


def test_order_is_a_seeded_permutation():
    for n in (0, 1, 2, 7, 100):
        for seed in (0, 1, 2, 12345):
            o = tc.order(n, seed)
            assert sorted(o) == list(range(n))
            assert o == tc.order(n, seed)
    assert tc.order(100, 1) != tc.order(100, 2) and tc.order(100, 1) != list(range(100))


def test_find(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tc, "DIRS", ("/nonexistent-rom", str(tmp_path / "sd"), ""))
    with pytest.raises(OSError, match="model.tmpm not found"):
        tc.find("model.tmpm")
    assert tc.find("new.bin", write=True) == "new.bin"     # the current directory
    (tmp_path / "sd").mkdir()
    assert tc.find("new.bin", write=True) == str(tmp_path / "sd" / "new.bin")
    (tmp_path / "model.tmpm").write_bytes(b"x")
    assert tc.find("model.tmpm") == "model.tmpm"


# ------------------------------------------------------------------ under MicroPython

MICROPY_DIR = os.environ.get("MICROPY_DIR")

MP_IMPORT = r"""
import sys
sys.path.insert(0, MODULES)
from tinymp_camera import *
"""

MP_BODY = r"""
print("viper", VIPER)


class M:
    def __init__(self, h, w, c):
        self.input_shape = (h, w, c)
        self.input_scale = 0.0078125      # exact in float32: the float build agrees bit for bit
        self.input_zero_point = -7


for bpp in (1, 2, 3):
    for c in (1, 3):
        p = Preprocess(M(5, 7, c))
        frame = bytes((i * 29 + 11) & 255 for i in range(23 * 17 * bpp))
        print(bpp, c, bytes(p.convert(frame, 23, 17)).hex())
"""


def _cpython_lines(tmp_path):
    (tmp_path / "cp.py").write_text(MP_IMPORT.replace("MODULES", repr(MODULES)) + MP_BODY)
    cp = subprocess.run([sys.executable, str(tmp_path / "cp.py")],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    lines = cp.stdout.decode().splitlines()
    assert lines[0] == "viper False", cp.stdout.decode()
    assert len(lines) == 7
    return lines


def _make(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    r = subprocess.run(["make", "-C", ROOT] + list(args) + [f"MICROPY_DIR={MICROPY_DIR}"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=1800)
    assert r.returncode == 0, r.stdout.decode()[-3000:]


def test_viper_loop_in_the_unix_port_gives_the_same_bytes(tmp_path):
    if not MICROPY_DIR:
        pytest.skip("MICROPY_DIR is not set: set MICROPY_DIR=/path/to/micropython (v1.28.0) to "
                    "run tinymp_camera in the unix port")
    _make("firmware", "BOARD=UNIX")
    (tmp_path / "mp.py").write_text(MP_IMPORT.replace("MODULES", repr(MODULES)) + MP_BODY)
    mp = subprocess.run([os.path.join(ROOT, "build", "unix", "micropython"), str(tmp_path / "mp.py")],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    lines = mp.stdout.decode().splitlines()
    assert lines[0] == "viper True", mp.stdout.decode()
    assert lines[1:] == _cpython_lines(tmp_path)[1:]


def test_viper_loop_on_cortex_m7_gives_the_same_bytes(tmp_path):
    """The Thumb-2 viper emitter (QEMU Cortex-M7, single-precision build) against CPython."""
    if not MICROPY_DIR:
        pytest.skip("MICROPY_DIR is not set: set MICROPY_DIR=/path/to/micropython (v1.28.0) to "
                    "run tinymp_camera in the QEMU Cortex-M7 firmware")
    import shutil
    if shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("needs qemu-system-arm and arm-none-eabi-gcc")
    pytest.importorskip("serial", reason="talking to qemu needs pyserial")
    _make("firmware", "BOARD=QEMU_M7_FLOAT")
    sys.path.insert(0, os.path.join(MICROPY_DIR, "tools"))
    try:
        import pyboard
    finally:
        sys.path.pop(0)
    elf = os.path.join(ROOT, "build", "qemu-m7-float", "firmware.elf")
    pb = pyboard.Pyboard("execpty:qemu-system-arm -machine mps2-an500 -nographic -monitor null "
                         f"-semihosting -serial pty -kernel {elf}")
    try:
        pb.enter_raw_repl()
        pb.exec(open(os.path.join(MODULES, "tinymp_camera.py")).read())   # no filesystem there
        out = pb.exec(MP_BODY, timeout=120).decode()
    finally:
        pb.close()
    lines = out.splitlines()
    assert lines[0] == "viper True", out
    assert lines[1:] == _cpython_lines(tmp_path)[1:]


# ------------------------------------------------------------------ the examples, end to end


def fake_sensor(frames):
    """A stand-in for OpenMV's `sensor` module: snapshot() returns the next frame."""
    class Image:
        def __init__(self, w, h, data):
            self.w, self.h, self.data = w, h, data
            self.drawn = []

        def width(self):
            return self.w

        def height(self):
            return self.h

        def bytearray(self):
            return self.data

        def draw_string(self, x, y, text, **kw):
            self.drawn.append(text)

    mod = types.ModuleType("sensor")
    mod.GRAYSCALE, mod.RGB565, mod.QQVGA, mod.QVGA = 1, 2, 10, 11
    mod.log = []
    mod.reset = lambda: mod.log.append("reset")
    mod.set_pixformat = lambda f: mod.log.append(("pixformat", f))
    mod.set_framesize = lambda f: mod.log.append(("framesize", f))
    mod.skip_frames = lambda **kw: mod.log.append("skip")
    it = iter(frames)

    def snapshot():
        w, h, data = next(it)
        img = Image(w, h, data)
        mod.last = img
        return img

    mod.snapshot = snapshot
    return mod


def run_example(name, monkeypatch, sensor, **kw):
    monkeypatch.setitem(sys.modules, "sensor", sensor)
    monkeypatch.syspath_prepend(EXAMPLES)
    mod = importlib.import_module(name)
    try:
        return mod.main(**kw)
    finally:
        sys.modules.pop(name, None)


def test_examples_capture_personalise_and_restore(tmp_path, monkeypatch):
    tinymp = pytest.importorskip("tinymp")
    if not all(hasattr(tinymp, n) for n in ("Trainer", "Plan")) or \
            not hasattr(tinymp.Model, "plan"):
        pytest.skip("the PC package has no training API yet (tinymp.Trainer, Model.plan)")
    import tinymp.zoo
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tc, "DIRS", ("",))
    monkeypatch.setattr("time.sleep", lambda s: None)
    (tmp_path / "model.tmpm").write_bytes(tinymp.zoo.demo())
    model = tinymp.Model(str(tmp_path / "model.tmpm"))
    assert model.input_shape[2] == 1
    # two "objects": a bright square on the left or on the right of a 160x120 gray frame
    rng = np.random.default_rng(5)

    def frame(label):
        img = rng.integers(0, 40, (120, 160), dtype=np.uint8)
        x0 = 45 if label == 0 else 85
        img[40:80, x0:x0 + 30] = 230
        return (160, 120, bytearray(img.tobytes()))

    for label in (0, 1):
        sensor = fake_sensor([frame(label) for _ in range(12)])
        run_example("1_capture", monkeypatch, sensor, label=label, count=12, interval_ms=0,
                    clear=(label == 0))
        assert ("pixformat", sensor.GRAYSCALE) in sensor.log
    store = tc.SampleStore("tinymp_samples.bin", model)
    assert store.counts(model.num_classes)[:2] == [12, 12] and len(store) == 24

    trainer = run_example("2_personalise", monkeypatch, fake_sensor([]))  # the example's own 5 epochs
    assert os.path.isfile("tinymp_personal.bin")
    acc = sum(trainer.predict(x) == y for x, y in store) / len(store)
    assert acc >= 0.9, acc

    # "after a reset": a new process state; example 3 restores the file and predicts
    frames = [frame(k % 2) for k in range(8)]
    sensor = fake_sensor(frames)
    shown = []
    real_snapshot = sensor.snapshot

    def snap():
        img = real_snapshot()
        shown.append(img)
        return img

    sensor.snapshot = snap
    run_example("3_live", monkeypatch, sensor, frames=8)
    labels = [img.drawn[-1] for img in shown]
    names = model.class_names or [str(k) for k in range(model.num_classes)]
    assert labels == [names[k % 2] for k in range(8)], labels


@pytest.mark.parametrize("example", ["2_personalise", "3_live"])
def test_examples_that_train_say_so_on_the_native_module(tmp_path, monkeypatch, example):
    # tinymp.mpy on stock firmware has Model but no Trainer (and no Model.plan): one clear error
    # before anything is read, not an AttributeError part way
    native = types.ModuleType("tinymp")
    native.Model = lambda path: pytest.fail("the model was opened")
    monkeypatch.setitem(sys.modules, "tinymp", native)
    with pytest.raises(RuntimeError, match=r"^this example trains on the camera, which needs the "
                       r"tinymp firmware \(README: make firmware BOARD=OPENMV_H7, then make "
                       r"flash\); tinymp.mpy on stock firmware runs inference only$"):
        run_example(example, monkeypatch, fake_sensor([]))


def test_examples_compile_for_micropython():
    """Every example and the helper module use only syntax MicroPython compiles (checked by
    mpy-cross when MICROPY_DIR is set, by CPython's compiler always)."""
    files = [os.path.join(EXAMPLES, f) for f in sorted(os.listdir(EXAMPLES)) if f.endswith(".py")]
    files.append(os.path.join(MODULES, "tinymp_camera.py"))
    assert len(files) == 4
    for f in files:
        compile(open(f).read(), f, "exec")
    # mpy-cross as `make firmware` builds it (under build/), else where MicroPython's own make puts it
    crosses = [os.path.join(ROOT, "build", "mpy-cross", "mpy-cross"),
               os.path.join(MICROPY_DIR or "", "mpy-cross", "build", "mpy-cross")]
    cross = next((c for c in crosses if os.path.isfile(c)), None)
    if MICROPY_DIR and cross:
        for f in files:
            r = subprocess.run([cross, "-o", os.devnull, f], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
            assert r.returncode == 0, (f, r.stdout.decode())
