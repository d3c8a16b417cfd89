"""Argument handling of the CPython binding (tinymp._tinymp), independent of kernel accuracy.

The models here are written byte by byte from docs/FORMAT.md by a tiny local writer, so these tests
depend on neither host/tinymp/modelfile.py nor the zoo; one extra test loads a model written by
tinymp.modelfile when that module exists.

Error policy checked here:
  - a model that is not a bytes-like object nor a path        -> TypeError
  - a path that cannot be opened                              -> the OSError of open()
                                                                 (FileNotFoundError, ...)
  - bytes that are not a valid model (incl. empty)            -> ValueError "tinymp: ..."
  - an input that is not a buffer, or whose items are not
    single bytes (e.g. float32)                               -> TypeError
  - an input buffer of the wrong size                         -> ValueError
  - `out` not a writable float32/byte buffer                  -> TypeError; wrong size -> ValueError
"""
import array
import os
import gc
import math
import pathlib
import re
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

tinymp = pytest.importorskip("tinymp", reason="tinymp C extension not built (pip install -e .)")
_tinymp = pytest.importorskip("tinymp._tinymp")

H, W, C = 4, 4, 2
NCLS = 3
IN_SCALE, IN_ZP = 0.05, -3


def _align(n, a=16):
    return (n + a - 1) // a * a


def tiny_model(class_names=None, tensor2_scale=0.1, fc_flags=0, raw_names=None, fc_bias=None,
               fc_mult=None, fc_shift=None, fc_wscale=None):
    """input 4x4x2 -> avgpool -> 1x1x2 -> fc -> 1x1x3, written per docs/FORMAT.md; the fc's
    per-channel arrays may be given (3 values each)."""
    tensors = [((H, W, C), IN_SCALE, IN_ZP), ((1, 1, C), IN_SCALE, IN_ZP), ((1, 1, NCLS), tensor2_scale, 0)]
    t_off = 64
    l_off = t_off + 16 * len(tensors)
    pos = _align(l_off + 64 * 2)
    blobs = []

    def put(b):
        nonlocal pos
        off = pos
        blobs.append((off, b))
        pos = _align(pos + len(b))
        return off

    w = put(np.array([[10, -20], [-30, 40], [5, 5]], np.int8).tobytes())
    bias = put(np.array([100, -100, 0] if fc_bias is None else fc_bias, "<i4").tobytes())
    mult = put(np.array([1 << 30] * NCLS if fc_mult is None else fc_mult, "<i4").tobytes())
    shift = put(np.array([-6] * NCLS if fc_shift is None else fc_shift, "<i4").tobytes())
    wscale = put(np.array([0.01] * NCLS, "<f4").tobytes() if fc_wscale is None else
                 struct.pack("<3I", *fc_wscale))  # fc_wscale: the floats' bit patterns
    names = raw_names
    if names is None and class_names is not None:
        names = b"".join(n.encode() + b"\0" for n in class_names)
    names_off = put(names) if names else 0
    total = pos

    buf = bytearray(total)
    for i, ((h, ww, c), s, zp) in enumerate(tensors):
        struct.pack_into("<HHHHfi", buf, t_off + 16 * i, h, ww, c, 0, s, zp)
    # avgpool: mult/shift encode s_in / (s_out * H * W) = 1/16
    struct.pack_into("<BBBBBBBBBBbbHHHHIIIII6i", buf, l_off, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                     -128, 127, 0, 0xFFFF, 1, 0, 0, 0, 0, 0, 0, 1 << 30, -3, 0, 0, 0, 0)
    struct.pack_into("<BBBBBBBBBBbbHHHHIIIII6i", buf, l_off + 64, 6, fc_flags, 0, 0, 0, 0, 0, 0, 0, 0,
                     -128, 127, 1, 0xFFFF, 2, 0, w, bias, mult, shift, wscale, 0, 0, 0, 0, 0, 0)
    for off, b in blobs:
        buf[off:off + len(b)] = b
    struct.pack_into("<4sHHII", buf, 0, b"TMPM", 1, 64, total, 0)
    struct.pack_into("<HHHHfiHHIIIII", buf, 16, H, W, C, NCLS, IN_SCALE, IN_ZP, len(tensors), 2,
                     t_off, l_off, names_off, len(names) if names else 0, 0)
    struct.pack_into("<I", buf, 12, zlib.crc32(bytes(buf[16:])))
    return bytes(buf)


@pytest.fixture(scope="module")
def data():
    return tiny_model(class_names=["cat", "dog", "bird"])


@pytest.fixture(scope="module")
def model(data):
    return tinymp.Model(data)


@pytest.fixture
def x():
    return ((np.arange(H * W * C) * 37) % 256 - 128).astype(np.int8).tobytes()


# ------------------------------------------------------------------ module


def test_module_surface():
    assert tinymp.Model is _tinymp.Model
    assert re.fullmatch(r"\d+\.\d+\.\d+", tinymp.__version__)
    assert tinymp.__version__ == _tinymp.__version__
    doc = _tinymp.__doc__
    for name in ("Model(data)", "input_shape", "num_classes", "inference_arena_bytes", "input_scale",
                 "input_zero_point", "class_names", "predict(x)", "logits(x, out=None)"):
        assert name in doc


def test_model_not_subclassable():
    with pytest.raises(TypeError):
        type("Sub", (tinymp.Model,), {})


# ------------------------------------------------------------------ Model(data)


@pytest.mark.parametrize("bad", [1, None, 2.5, [0] * 64, object()])
def test_model_bad_type(bad):
    with pytest.raises(TypeError, match="^tinymp: Model"):
        tinymp.Model(bad)


def test_model_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        tinymp.Model(str(tmp_path / "missing.tmpm"))
    with pytest.raises(FileNotFoundError):
        tinymp.Model(tmp_path / "missing.tmpm")


def test_model_directory_is_oserror(tmp_path):
    with pytest.raises(OSError):
        tinymp.Model(str(tmp_path))


@pytest.mark.parametrize("bad", [b"", bytearray(), b"\0" * 10, b"TMPM" + b"\0" * 200, b"\xff" * 64])
def test_model_invalid_bytes(bad):
    with pytest.raises(ValueError, match="^tinymp: "):
        tinymp.Model(bad)


def test_model_bad_crc(data):
    bad = bytearray(data)
    bad[-1] ^= 1 if bad[-1] else 0x40  # last byte is a class name terminator or padding
    bad[200] ^= 0x01
    with pytest.raises(ValueError, match="^tinymp: "):
        tinymp.Model(bytes(bad))


def test_model_with_a_dead_layer_is_refused():
    # the demo's first add (layer 4) reads tensor 1 where it read tensor 4: layer 3's output is
    # never read. Such a model used to load, infer and plan, and then fail to train with a
    # message saying the data had changed; the loader refuses it, as the reference reader and
    # the writer do (tests/test_reference.py, tests/test_builder.py)
    from tinymp import modelfile, reference, zoo
    data = zoo.demo()
    lt = struct.unpack_from("<I", data, 40)[0]
    assert struct.unpack_from("<BB", data, lt + 64 * 4)[0] == 4          # an add
    assert struct.unpack_from("<H", data, lt + 64 * 4 + 12)[0] == 4      # its in0
    bad = bytearray(data)
    struct.pack_into("<H", bad, lt + 64 * 4 + 12, 1)
    bad = modelfile.fix_crc(bytes(bad))
    with pytest.raises(ValueError, match=r"^tinymp: .*tensor 4.*never read by a layer"):
        tinymp.Model(bad)
    with pytest.raises(ValueError, match="tensor 4: never read"):
        reference.read_model(bad)


def test_model_layer_error_names_layer():
    with pytest.raises(ValueError, match=r"^tinymp: layer 1 \(fc\): "):
        tinymp.Model(tiny_model(fc_flags=1))


# The per-channel arrays' limits (docs/FORMAT.md), at and just past each bound. The fc reads 2
# input channels, so |bias| <= 2^31 - 1 - 32640 * 2.
_BIAS_LIMIT = 2**31 - 1 - 32640 * 2
_OK_BITS = struct.unpack("<I", struct.pack("<f", 0.01))[0]


@pytest.mark.parametrize("kw", [
    dict(fc_bias=[_BIAS_LIMIT, -_BIAS_LIMIT, 0]),
    dict(fc_mult=[0, 2**31 - 1, 1]),
    dict(fc_shift=[-31, 30, 0]),
    # the smallest subnormal, the largest finite float, an ordinary scale
    dict(fc_wscale=[0x00000001, 0x7F7FFFFF, _OK_BITS]),
])
def test_model_channel_arrays_at_their_bounds_load(kw):
    tinymp.Model(tiny_model(**kw))


@pytest.mark.parametrize("kw, msg", [
    (dict(fc_bias=[0, _BIAS_LIMIT + 1, 0]), "bias too large"),
    (dict(fc_bias=[0, 0, -_BIAS_LIMIT - 1]), "bias too large"),
    (dict(fc_bias=[2**31 - 1, 0, 0]), "bias too large"),
    (dict(fc_bias=[-2**31, 0, 0]), "bias too large"),
    (dict(fc_mult=[1, -1, 1]), "negative requantisation multiplier"),
    (dict(fc_mult=[1, 1, -2**31]), "negative requantisation multiplier"),
    (dict(fc_shift=[0, -32, 0]), r"shift outside \[-31, 30\]"),
    (dict(fc_shift=[0, 0, 31]), r"shift outside \[-31, 30\]"),
    (dict(fc_shift=[2**31 - 1, 0, 0]), r"shift outside \[-31, 30\]"),
    (dict(fc_shift=[-2**31, 0, 0]), r"shift outside \[-31, 30\]"),
] + [(dict(fc_wscale=[_OK_BITS, bits, _OK_BITS]), "weight scale") for bits in (
    0x00000000,  # +0
    0x80000000,  # -0
    0x80000001,  # the smallest negative subnormal
    0xBF800000,  # -1
    0x7F800000,  # +inf
    0xFF800000,  # -inf
    0x7FC00000,  # NaN
    0x7F800001,  # a signalling NaN
)])
def test_model_channel_arrays_past_their_bounds_are_one_clear_error(kw, msg):
    with pytest.raises(ValueError, match=r"^tinymp: layer 1 \(fc\): .*" + msg):
        tinymp.Model(tiny_model(**kw))


def test_model_tensor_error_names_tensor():
    with pytest.raises(ValueError, match=r"^tinymp: tensor 2: "):
        tinymp.Model(tiny_model(tensor2_scale=0.0))


def test_model_from_path(tmp_path, data, model, x):
    p = tmp_path / "m.tmpm"
    p.write_bytes(data)
    for arg in (str(p), p, pathlib.PurePath(str(p))):
        m = tinymp.Model(arg)
        assert m.input_shape == model.input_shape
        assert m.predict(x) == model.predict(x)


def test_model_buffer_kinds(data, model, x):
    ref = model.logits(x)
    for buf in (bytearray(data), memoryview(data), array.array("b", data), np.frombuffer(data, np.uint8),
                data + b"\0" * 7):  # trailing bytes beyond total_size are ignored
        m = tinymp.Model(buf)
        assert m.logits(x) == ref


@pytest.mark.parametrize("offset", [1, 2, 3, 5])
def test_model_misaligned_buffer_is_copied(data, model, x, offset):
    raw = bytearray(offset) + bytearray(data)
    view = memoryview(raw)[offset:]
    m = tinymp.Model(view)
    assert m.logits(x) == model.logits(x)
    raw[:] = b"\0" * len(raw)  # the model owns an aligned private copy
    assert m.logits(x) == model.logits(x)


def test_model_holds_buffer_in_place(data, x):
    raw = bytearray(data)
    m = tinymp.Model(raw)
    with pytest.raises(BufferError):  # exported in place: cannot be resized while the model lives
        raw.extend(b"\0")
    del m
    gc.collect()
    raw.extend(b"\0")


def test_model_keeps_buffer_alive(data, model, x):
    m = tinymp.Model(bytearray(data))
    gc.collect()
    assert m.logits(x) == model.logits(x)


def test_model_keyword_argument(data):
    assert tinymp.Model(data=data).num_classes == NCLS


# ------------------------------------------------------------------ attributes


def test_attributes(model):
    assert model.input_shape == (H, W, C)
    assert model.num_classes == NCLS
    assert isinstance(model.inference_arena_bytes, int) and model.inference_arena_bytes > 0
    assert model.input_scale == pytest.approx(IN_SCALE)
    assert isinstance(model.input_zero_point, int) and model.input_zero_point == IN_ZP
    assert model.class_names == ("cat", "dog", "bird")
    assert "tinymp.Model" in repr(model)


def test_attributes_read_only(model):
    for name in ("input_shape", "num_classes", "inference_arena_bytes", "input_scale",
                 "input_zero_point", "class_names"):
        with pytest.raises(AttributeError):
            setattr(model, name, 1)


def test_class_names_absent():
    assert tinymp.Model(tiny_model()).class_names is None


def test_class_names_bad_utf8_replaced():
    m = tinymp.Model(tiny_model(raw_names=b"a\0\xff\xfeb\0c\0"))
    assert m.class_names == ("a", "\ufffd\ufffdb", "c")


# ------------------------------------------------------------------ inputs


def test_predict_input_kinds(model, x):
    p = model.predict(x)
    assert isinstance(p, int) and 0 <= p < NCLS
    a = np.frombuffer(x, np.int8)
    for xi in (bytearray(x), memoryview(x), array.array("b", x), array.array("B", x), a, a.view(np.uint8),
               a.reshape(H, W, C)):
        assert model.predict(xi) == p


@pytest.mark.parametrize("n", [0, 1, H * W * C - 1, H * W * C + 1])
def test_input_wrong_size(model, n):
    msg = re.escape(f"tinymp: input has {n} bytes, model expects H*W*C = {H * W * C} ({H}x{W}x{C} int8)")
    for call in (model.predict, model.logits, model._probe, lambda v: model._run_to(v, 0)):
        with pytest.raises(ValueError, match=msg):
            call(bytes(n))


@pytest.mark.parametrize("bad", [None, 1, "x" * (H * W * C), [0] * (H * W * C), 2.0])
def test_input_not_a_buffer(model, bad):
    for call in (model.predict, model.logits, model._probe, lambda v: model._run_to(v, 0)):
        with pytest.raises(TypeError):
            call(bad)


def test_input_not_bytes_items(model):
    # same byte count as the input, but float32 / int16 items: refused rather than reinterpreted
    with pytest.raises(TypeError):
        model.predict(np.zeros(H * W * C // 4, np.float32))
    with pytest.raises(TypeError):
        model.predict(array.array("h", [0] * (H * W * C // 2)))


def test_input_non_contiguous_is_copied(model):
    rng = np.random.default_rng(3)
    wide = rng.integers(-128, 128, size=(H, W * 2, C)).astype(np.int8)
    strided = wide[:, ::2, :]
    assert not strided.flags["C_CONTIGUOUS"]
    assert list(model.logits(strided)) == list(model.logits(np.ascontiguousarray(strided)))
    with pytest.raises(TypeError):  # a strided float view is still refused, not reinterpreted
        model.predict(np.zeros((H, W * 2, C), np.float32)[:, ::2, :])


# ------------------------------------------------------------------ logits / out


def test_logits_returns_float_array(model, x):
    out = model.logits(x)
    assert isinstance(out, array.array) and out.typecode == "f" and len(out) == NCLS
    assert model.predict(x) == max(range(NCLS), key=lambda k: (out[k], -k))


def test_logits_out_buffers(model, x):
    ref = model.logits(x)
    a = array.array("f", [7.0] * NCLS)
    assert model.logits(x, a) is a and a == ref
    n = np.full(NCLS, 7.0, np.float32)
    assert model.logits(x, out=n) is n
    assert n.tolist() == ref.tolist()
    raw = bytearray(1 + 4 * NCLS)  # misaligned byte view
    mv = memoryview(raw)[1:]
    assert model.logits(x, mv) is mv
    assert array.array("f", bytes(mv)) == ref


@pytest.mark.parametrize("n", [0, NCLS - 1, NCLS + 1])
def test_logits_out_wrong_size(model, x, n):
    with pytest.raises(ValueError, match=re.escape(f"tinymp: out has {4 * n} bytes")):
        model.logits(x, array.array("f", [0.0] * n))


@pytest.mark.parametrize("bad", [bytes(4 * NCLS), 5, "abc", np.zeros(NCLS, np.int32), np.zeros(NCLS, ">f4"),
                                 np.zeros(NCLS, np.float64)])
def test_logits_out_bad_kind(model, x, bad):
    with pytest.raises(TypeError, match="^tinymp: out must"):
        model.logits(x, bad)


def test_logits_out_read_only_numpy(model, x):
    a = np.zeros(NCLS, np.float32)
    a.flags.writeable = False
    with pytest.raises(TypeError):
        model.logits(x, a)


# ------------------------------------------------------------------ test hooks


def test_run_to(model, x):
    layers = model._layers()
    assert len(layers) == 2
    for i, layer in enumerate(layers):
        out = model._run_to(x, i)
        h, w, c = layer["out_shape"]
        assert isinstance(out, bytes) and len(out) == h * w * c
    last = np.frombuffer(model._run_to(x, len(layers) - 1), np.int8)
    assert int(np.argmax(last)) == model.predict(x)


@pytest.mark.parametrize("layer", [-1, 2, 1000])
def test_run_to_out_of_range(model, x, layer):
    with pytest.raises(ValueError, match="^tinymp: layer"):
        model._run_to(x, layer)


def test_probe(model, x):
    hw, intact = model._probe(x)
    assert intact is True
    assert isinstance(hw, int) and 0 < hw <= model.inference_arena_bytes
    assert model.predict(x) == model.predict(x)  # the arena stays usable after probing


def test_plan(model):
    p = model._plan()
    assert p["arena_bytes"] == model.inference_arena_bytes
    for k in ("peak_live_bytes", "activation_bytes"):
        assert isinstance(p[k], int)
    assert len(p["tensor_offset"]) == 3
    for k in ("scratch_offset", "scratch_bytes", "in_place"):
        assert len(p[k]) == 2
    assert all(v in (0, 1, 2) for v in p["in_place"])


def test_layers(model):
    layers = model._layers()
    assert [d["type"] for d in layers] == ["avgpool", "fc"]
    assert [d["in0"] for d in layers] == [0, 1]
    assert [d["in1"] for d in layers] == [None, None]
    assert [d["out"] for d in layers] == [1, 2]
    assert layers[1]["out_shape"] == (1, 1, NCLS)
    assert layers[0]["act"] == (-128, 127)
    assert set(layers[0]) >= {"kh", "kw", "stride", "pads", "params"}


# ------------------------------------------------------------------ resources


def test_no_leak(data, x):
    def churn():
        for _ in range(200):
            m = tinymp.Model(bytearray(data))
            m.predict(x)
            m.logits(x)
            m._run_to(x, 0)
            m._plan()
            m._layers()
            try:
                m.predict(b"")
            except ValueError:
                pass
        gc.collect()

    churn()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        churn()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024


# ------------------------------------------------------------------ the project's writer


def test_model_from_modelfile_writer(model, x):
    """The same tiny model written by tinymp.modelfile loads and runs like the local writer's."""
    modelfile = pytest.importorskip("tinymp.modelfile", reason="host/tinymp/modelfile.py not written yet")
    T, L = modelfile.Tensor, modelfile.Layer
    tensors = [T(H, W, C, IN_SCALE, IN_ZP), T(1, 1, C, IN_SCALE, IN_ZP), T(1, 1, NCLS, 0.1, 0)]
    layers = [
        L("avgpool", 0, params=(1 << 30, -3, 0, 0, 0, 0)),
        L("fc", 1, weights=np.array([[10, -20], [-30, 40], [5, 5]], np.int8),
          bias=np.array([100, -100, 0], np.int32), mult=np.full(NCLS, 1 << 30, np.int32),
          shift=np.full(NCLS, -6, np.int32), wscale=np.full(NCLS, 0.01, np.float32)),
    ]
    m = tinymp.Model(modelfile.write_model(tensors, layers, NCLS, class_names=["cat", "dog", "bird"]))
    assert m.class_names == model.class_names
    assert m.input_shape == model.input_shape
    assert m.logits(x) == model.logits(x)
    assert m._layers() == model._layers()


def test_numpy_numbers_are_options_like_python_numbers(tmp_path):
    # a value computed with numpy (np.int64, np.float32) is taken as the int or float it holds
    from tinymp import zoo
    m = tinymp.Model(zoo.demo())
    a = m.plan(method="tinymp", budget=np.int64(20000), ratio=np.float32(0.5), r=np.int32(2))
    b = m.plan(method="tinymp", budget=20000, ratio=float(np.float32(0.5)), r=2)
    assert (a.arena_bytes, a.layers, a.describe()) == (b.arena_bytes, b.layers, b.describe())
    t = tinymp.Trainer(m, a, lr=np.float32(0.01), seed=np.int64(5))
    assert t.lr == float(np.float32(0.01))
    t.lr = np.float64(0.02)
    assert t.lr == float(np.float32(0.02))     # kept as float32, as every lr
    for bad in (True, np.bool_(True), "2", 2.0):
        with pytest.raises(TypeError, match="^tinymp: r must be an int"):
            m.plan(method="tinymp", r=bad)
    with pytest.raises(TypeError, match="^tinymp: ratio must be a number"):
        m.plan(method="tinymp", ratio="0.5")


@pytest.mark.parametrize("kw,exc,pattern", [
    ({"ratio": 10 ** 400}, ValueError, r"^tinymp: ratio must be in"),
    ({"ratio": -10 ** 400}, ValueError, r"^tinymp: ratio must be in"),
    ({"r": 10 ** 30}, ValueError, r"^tinymp: r must be between"),
    ({"budget": -10 ** 30}, ValueError, r"^tinymp: budget must be between"),
])
def test_huge_option_values_are_out_of_range_not_overflow(kw, exc, pattern):
    from tinymp import zoo
    with pytest.raises(exc, match=pattern):
        tinymp.Model(zoo.demo()).plan(method="tinymp", **kw)


def test_an_int_beyond_any_double_is_an_infinity_as_on_micropython():
    # MicroPython reads 2**2000 as a float infinity: step_share's range (0, inf] takes it there,
    # and so does the PC (it was refused as NaN); the plan is the one of step_share=inf
    from tinymp import zoo
    m = tinymp.Model(zoo.demo())
    a, b = m.plan(method="tinymp", step_share=2 ** 2000), m.plan(method="tinymp", step_share=math.inf)
    assert (a.describe(), a.arena_bytes, a.layers) == (b.describe(), b.arena_bytes, b.layers)
    with pytest.raises(ValueError, match=r"^tinymp: step_share must be in \(0, inf\], got -1"):
        m.plan(method="tinymp", step_share=-2 ** 2000)


def test_number_options_are_checked_as_the_float32_the_engine_gets():
    # the engine computes in float32: a value in range as a double but not as the float32 it
    # becomes (numpy's conversion is the reference) is refused, and says so; one that becomes a
    # float32 in range is taken as that float32
    from tinymp import zoo
    m = tinymp.Model(zoo.demo())
    assert np.float32(1e-50) == 0 and np.float32(0.9990001) > np.float32(0.999)
    assert np.float32(1 + 1e-9) == 1 and np.float32(1.0001) > 1
    for kw, name in (({"ratio": 1e-50}, "ratio"), ({"step_share": 1e-50}, "step_share")):
        as32 = repr(float(np.float32(next(iter(kw.values())))))
        with pytest.raises(ValueError, match=rf"^tinymp: {name} must be in .*, got "
                           rf"{re.escape(repr(next(iter(kw.values()))))} \({re.escape(as32)} as a "
                           r"32-bit float\)$"):
            m.plan(method="tinymp", **kw)
    with pytest.raises(ValueError, match=r"^tinymp: a sparse ratio must be in \(0, 1\], got 1e-50 "
                       r"\(0.0 as a 32-bit float\)$"):
        m.plan(method="sparse", layers=[12], ratios=[1e-50])
    # full's ratio of 1e-50 was taken as 0, "the method's own", and passed the ratio-1 rule
    with pytest.raises(ValueError, match="^tinymp: ratio must be in"):
        m.plan(method="full", ratio=1e-50)
    # the bounds are float32 too: momentum 0.999 is its own upper bound, 1 + 1e-9 is ratio 1
    assert m.plan(method="tinymp", momentum=0.999).momentum == float(np.float32(0.999))
    assert m.plan(method="tinymp", ratio=1 + 1e-9).ratio == 1.0
    with pytest.raises(ValueError, match=r"^tinymp: momentum must be in \[0, 0.999\], got 0.9990001$"):
        m.plan(method="tinymp", momentum=0.9990001)
    with pytest.raises(ValueError, match=r"^tinymp: ratio must be in \(0, 1\], got 1.0001$"):
        m.plan(method="tinymp", ratio=1.0001)
    assert m.plan(method="tinymp", ratio=1e-40).ratio == float(np.float32(1e-40)) > 0


def test_a_strided_model_buffer_and_a_bytes_path_are_tinymp_errors(tmp_path):
    from tinymp import zoo
    data = np.repeat(np.frombuffer(zoo.demo(), np.uint8), 2)[::2]   # the model, strided
    with pytest.raises(ValueError, match="^tinymp: the model must be one contiguous buffer"):
        tinymp.Model(data)
    assert tinymp.Model(np.ascontiguousarray(data)).num_classes == 10
    m = tinymp.Model(zoo.demo())
    t = tinymp.Trainer(m, m.plan(method="last"))
    for bad in (str(tmp_path / "p.tmpp").encode(), 3):
        with pytest.raises(TypeError, match="^tinymp: path must be a str or os.PathLike"):
            t.save(bad)
        with pytest.raises(TypeError, match="^tinymp: path must be a str or os.PathLike"):
            t.load(bad)
    assert os.listdir(tmp_path) == []
    t.save(tmp_path / "p.tmpp")
    assert t.load(str(tmp_path / "p.tmpp")) is True
