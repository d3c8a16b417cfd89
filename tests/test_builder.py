"""Tests of the Python model-building side: tinymp.modelfile (the .tmpm writer),
tinymp.builder (float graphs + PTQ) and tinymp.zoo.

The .tmpm files are parsed here independently with `struct`, straight from docs/FORMAT.md.
Where the numpy reference engine (tinymp.reference) is available, the quantised models are
run with it and compared with the float graphs.
"""

import math
import struct
import sys
import time
import types
import zlib
from pathlib import Path

import numpy as np
import pytest

HOST = Path(__file__).resolve().parents[1] / "host"
if str(HOST) not in sys.path:
    sys.path.insert(0, str(HOST))
try:
    import tinymp  # noqa: F401
except ImportError:
    # The C extension is not built: a bare package lets the pure-Python modules import.
    _pkg = types.ModuleType("tinymp")
    _pkg.__path__ = [str(HOST / "tinymp")]
    sys.modules["tinymp"] = _pkg

from tinymp import builder, modelfile, zoo  # noqa: E402
from tinymp.builder import Graph  # noqa: E402
from tinymp.modelfile import Layer, Tensor, quantize_multiplier, write_model  # noqa: E402

try:
    from tinymp import reference as _reference
    if not hasattr(_reference, "logits"):
        _reference = None
except Exception:  # pragma: no cover - written concurrently
    _reference = None

needs_reference = pytest.mark.skipif(_reference is None,
                                     reason="tinymp.reference (logits) not available")


# --------------------------------------------------------------------------------------------
# an independent .tmpm parser (FORMAT.md)
# --------------------------------------------------------------------------------------------

TYPE_NAMES = {1: "conv", 2: "dwconv", 3: "pwconv", 4: "add", 5: "avgpool", 6: "fc"}


def parse(blob):
    b = bytes(blob)
    (magic, version, hsize, total, crc, ih, iw, ic, ncls, iscale, izp, nt, nl, toff, loff,
     coff, csize, flags) = struct.unpack_from("<4sHHIIHHHHfiHHIIIII", b, 0)
    reserved = b[56:64]
    hdr = dict(magic=magic, version=version, header_size=hsize, total_size=total, crc=crc,
               input=(ih, iw, ic), num_classes=ncls, input_scale=iscale, input_zp=izp,
               num_tensors=nt, num_layers=nl, tensor_off=toff, layer_off=loff,
               names_off=coff, names_size=csize, flags=flags, reserved=reserved)
    tensors = []
    for i in range(nt):
        h, w, c, tflags, scale, zp = struct.unpack_from("<HHHHfi", b, toff + 16 * i)
        tensors.append(dict(h=h, w=w, c=c, flags=tflags, scale=scale, zp=zp))
    layers = []
    for i in range(nl):
        f = struct.unpack_from("<10B2b4H5I6i", b, loff + 64 * i)
        layers.append(dict(type=TYPE_NAMES.get(f[0], f[0]), flags=f[1], kh=f[2], kw=f[3],
                           stride=(f[4], f[5]), pad=f[6:10], act=(f[10], f[11]), in0=f[12],
                           in1=f[13], out=f[14], reserved=f[15], weights_off=f[16],
                           bias_off=f[17], mult_off=f[18], shift_off=f[19], wscale_off=f[20],
                           params=f[21:27]))
    names = None
    if csize:
        names = [s.decode("utf-8") for s in b[coff:coff + csize].split(b"\0")[:-1]]
    return hdr, tensors, layers, names


def layer_arrays(blob, tensors, L):
    """The arrays of a conv-like layer, read at their offsets."""
    b = bytes(blob)
    ti, to = tensors[L["in0"]], tensors[L["out"]]
    n = to["c"]
    if L["type"] == "conv":
        wshape = (n, L["kh"], L["kw"], ti["c"])
    elif L["type"] == "dwconv":
        wshape = (L["kh"], L["kw"], n)
    elif L["type"] == "pwconv":
        wshape = (n, ti["c"])
    else:
        wshape = (n, ti["h"] * ti["w"] * ti["c"])
    size = int(np.prod(wshape))
    w = np.frombuffer(b, np.int8, size, L["weights_off"]).reshape(wshape)
    bias = np.frombuffer(b, "<i4", n, L["bias_off"])
    mult = np.frombuffer(b, "<i4", n, L["mult_off"])
    shift = np.frombuffer(b, "<i4", n, L["shift_off"])
    wscale = np.frombuffer(b, "<f4", n, L["wscale_off"])
    return w, bias, mult, shift, wscale


def check_file(blob):
    """Structural checks of FORMAT.md on a written file; returns the parse."""
    hdr, tensors, layers, names = parse(blob)
    assert hdr["magic"] == b"TMPM" and hdr["version"] == 1 and hdr["header_size"] == 64
    assert hdr["total_size"] == len(blob)
    assert hdr["crc"] == zlib.crc32(bytes(blob)[16:hdr["total_size"]]) & 0xFFFFFFFF
    assert hdr["flags"] == 0 and hdr["reserved"] == bytes(8)
    assert hdr["tensor_off"] % 4 == 0 and hdr["layer_off"] % 4 == 0
    assert hdr["num_tensors"] == hdr["num_layers"] + 1
    t0 = tensors[0]
    assert hdr["input"] == (t0["h"], t0["w"], t0["c"])
    assert hdr["input_scale"] == t0["scale"] and hdr["input_zp"] == t0["zp"]
    last = tensors[-1]
    assert (last["h"], last["w"], last["c"]) == (1, 1, hdr["num_classes"])
    for t in tensors:
        assert t["flags"] == 0 and math.isfinite(t["scale"]) and t["scale"] > 0
        assert -128 <= t["zp"] <= 127
    total = hdr["total_size"]
    for i, L in enumerate(layers):
        assert L["out"] == i + 1 and L["flags"] == 0 and L["reserved"] == 0
        assert L["in0"] <= i
        assert L["act"][0] <= L["act"][1]
        if L["type"] == "add":
            assert L["in1"] <= i
        else:
            assert L["in1"] == 0xFFFF
        for key in ("weights_off", "bias_off", "mult_off", "shift_off", "wscale_off"):
            off = L[key]
            if L["type"] in ("add", "avgpool"):
                assert off == 0
            else:
                assert off % 16 == 0 and 64 <= off < total
        if L["type"] in ("conv", "dwconv", "pwconv", "fc"):
            w, bias, mult, shift, wscale = layer_arrays(blob, tensors, L)
            assert (mult >= 0).all() and ((shift >= -31) & (shift <= 30)).all()
            assert np.isfinite(wscale).all() and (wscale > 0).all()
    if hdr["names_size"]:
        assert hdr["names_off"] >= 64
        assert hdr["names_off"] + hdr["names_size"] <= total
        assert bytes(blob)[hdr["names_off"] + hdr["names_size"] - 1] == 0
    return hdr, tensors, layers, names


# --------------------------------------------------------------------------------------------
# modelfile: quantize_multiplier
# --------------------------------------------------------------------------------------------

def test_quantize_multiplier_doc_cases():
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    assert quantize_multiplier(0.75) == (3 << 29, 0)
    assert quantize_multiplier(0.25) == (1 << 30, -1)
    # M rounds up to 2^31: becomes 2^30 with the exponent one higher
    assert quantize_multiplier(1.0 - 2.0 ** -40) == (1 << 30, 1)
    # round half away from zero (q * 2^31 = 2^30 + 0.5 exactly)
    assert quantize_multiplier((2.0 ** 30 + 0.5) / 2.0 ** 31) == ((1 << 30) + 1, 0)
    assert quantize_multiplier((2.0 ** 30 + 1.5) / 2.0 ** 31) == ((1 << 30) + 2, 0)
    # shift range: e = -31 is kept, below becomes (0, 0)
    assert quantize_multiplier(2.0 ** -32) == (1 << 30, -31)
    assert quantize_multiplier(2.0 ** -33) == (0, 0)
    assert quantize_multiplier(1e-30) == (0, 0)
    assert quantize_multiplier(2.0 ** 29) == (1 << 30, 30)
    for bad in (-0.1, float("nan"), float("inf"), 2.0 ** 30):
        with pytest.raises(ValueError):
            quantize_multiplier(bad)
    # a numpy scalar is named as a number, not as its repr ("np.float64(...)")
    with pytest.raises(ValueError, match=r"^quantize_multiplier: multiplier 1e\+30 too large "
                                         r"\(shift 100 > 30\)$"):
        quantize_multiplier(np.float64(1e30))


def test_quantize_multiplier_accuracy():
    rng = np.random.default_rng(1)
    for m in np.exp(rng.uniform(-20, 5, 500)):
        M, s = quantize_multiplier(float(m))
        assert (1 << 30) <= M <= (1 << 31) - 1
        assert abs(M * 2.0 ** (s - 31) - m) <= m * 2.0 ** -31 * 1.0001


@needs_reference
def test_quantize_multiplier_matches_reference():
    rng = np.random.default_rng(2)
    for m in list(np.exp(rng.uniform(-30, 5, 300))) + [0.0, 0.5, 1.0 - 2.0 ** -40]:
        assert quantize_multiplier(float(m)) == _reference.quantize_multiplier(float(m))


# --------------------------------------------------------------------------------------------
# modelfile: writer
# --------------------------------------------------------------------------------------------

def _arrays(rng, n, wshape):
    return dict(weights=rng.integers(-127, 128, wshape).astype(np.int8),
                bias=rng.integers(-1000, 1000, n).astype(np.int32),
                mult=rng.integers(1 << 30, 1 << 31, n).astype(np.int32),
                shift=rng.integers(-10, 1, n).astype(np.int32),
                wscale=rng.uniform(0.001, 0.1, n).astype(np.float32))


def small_model(rng=None):
    """A hand-made 8-layer model using every layer type, fc on a map and on a vector, and an add
    at each end: (tensors, layers). Every tensor but the output is read (a FORMAT.md rule)."""
    rng = rng or np.random.default_rng(0)
    tensors = [Tensor(8, 8, 3, 0.02, -3), Tensor(4, 4, 8, 0.05, -128), Tensor(4, 4, 8, 0.04, 5),
               Tensor(4, 4, 8, 0.03, -2), Tensor(4, 4, 8, 0.06, 0), Tensor(1, 1, 8, 0.02, 1),
               Tensor(1, 1, 5, 0.1, 7), Tensor(1, 1, 5, 0.1, 7), Tensor(1, 1, 5, 0.2, -4)]
    layers = [
        Layer("conv", 0, kh=3, kw=3, stride_h=2, stride_w=2, pad=(0, 0, 1, 1), act_min=-128,
              **_arrays(rng, 8, (8, 3, 3, 3))),
        Layer("dwconv", 1, kh=3, kw=3, stride_h=1, stride_w=1, pad=(1, 1, 1, 1), act_min=5,
              act_max=100, **_arrays(rng, 8, (3, 3, 8))),
        Layer("pwconv", 2, **_arrays(rng, 8, (8, 8))),
        Layer("add", 1, 3, params=(1 << 30, -1, 1 << 30, -2, 1 << 30, -18)),
        Layer("avgpool", 4, params=(1 << 30, -4, 0, 0, 0, 0)),
        Layer("fc", 5, **_arrays(rng, 5, (5, 8))),
        Layer("fc", 4, **_arrays(rng, 5, (5, 128))),
        Layer("add", 6, 7, params=(1 << 30, -1, 1 << 30, -1, 1 << 30, -1)),
    ]
    return tensors, layers


def test_writer_roundtrip():
    tensors, layers = small_model()
    names = ["zero", "one", "deux", "drei", "четыре"]
    blob = write_model(tensors, layers, 5, class_names=names)
    assert isinstance(blob, bytes)
    hdr, pt, pl, pnames = check_file(blob)
    assert len(blob) % 16 == 0
    assert hdr["input"] == (8, 8, 3) and hdr["num_classes"] == 5
    assert hdr["num_layers"] == 8 and hdr["num_tensors"] == 9
    assert hdr["tensor_off"] == 64 and hdr["layer_off"] == 64 + 16 * 9
    assert hdr["input_scale"] == np.float32(0.02) and hdr["input_zp"] == -3
    assert pnames == names
    assert hdr["names_size"] == len("\0".join(names).encode("utf-8")) + 1
    for t, p in zip(tensors, pt):
        assert (p["h"], p["w"], p["c"], p["zp"]) == (t.h, t.w, t.c, t.zero_point)
        assert p["scale"] == np.float32(t.scale)
    codes = [L["type"] for L in pl]
    assert codes == ["conv", "dwconv", "pwconv", "add", "avgpool", "fc", "fc", "add"]
    assert pl[0]["pad"] == (0, 0, 1, 1) and pl[0]["stride"] == (2, 2)
    assert (pl[0]["kh"], pl[0]["kw"]) == (3, 3)
    assert (pl[2]["kh"], pl[2]["kw"], pl[2]["stride"]) == (1, 1, (1, 1))   # pwconv filled in
    assert pl[1]["act"] == (5, 100)
    assert (pl[3]["in0"], pl[3]["in1"]) == (1, 3) and pl[3]["params"] == (1 << 30, -1, 1 << 30, -2, 1 << 30, -18)
    assert pl[4]["params"] == (1 << 30, -4, 0, 0, 0, 0)
    assert pl[6]["in0"] == 4 and (pl[7]["in0"], pl[7]["in1"]) == (6, 7)
    for L, P in zip(layers, pl):
        if L.weights is None:
            continue
        w, bias, mult, shift, wscale = layer_arrays(blob, pt, P)
        np.testing.assert_array_equal(w, L.weights)
        np.testing.assert_array_equal(bias, L.bias)
        np.testing.assert_array_equal(mult, L.mult)
        np.testing.assert_array_equal(shift, L.shift)
        np.testing.assert_array_equal(wscale, L.wscale)
    # arrays do not overlap
    spans = sorted((P[k], P[k] + n) for P, L in zip(pl, layers) if L.weights is not None
                   for k, n in (("weights_off", L.weights.size), ("bias_off", 4 * L.bias.size),
                                ("mult_off", 4 * L.mult.size), ("shift_off", 4 * L.shift.size),
                                ("wscale_off", 4 * L.wscale.size)))
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        assert a1 <= b0
    assert spans[0][0] >= hdr["layer_off"] + 64 * 8
    # deterministic
    assert write_model(tensors, layers, 5, class_names=names) == blob


def test_writer_no_class_names():
    tensors, layers = small_model()
    blob = write_model(tensors, layers, 5)
    hdr, *_ = check_file(blob)
    assert hdr["names_off"] == 0 and hdr["names_size"] == 0


@needs_reference
def test_writer_output_read_by_reference():
    tensors, layers = small_model()
    blob = write_model(tensors, layers, 5, class_names=list("abcde"))
    m = _reference.read_model(blob)
    x = np.random.default_rng(3).integers(-128, 128, (8, 8, 3)).astype(np.int8)
    assert _reference.logits(m, x).shape == (5,)


def _broken(mutate):
    tensors, layers = small_model()
    mutate(tensors, layers)
    return tensors, layers


@pytest.mark.parametrize("mutate, message", [
    (lambda t, l: setattr(l[0], "weights", l[0].weights[:, :, :, :2]), "shape"),
    (lambda t, l: setattr(l[0], "weights", l[0].weights.astype(np.int16)), "dtype"),
    (lambda t, l: setattr(l[2], "bias", l[2].bias.astype(np.int64)), "dtype"),
    (lambda t, l: setattr(l[1], "wscale", l[1].wscale[:4]), "shape"),
    (lambda t, l: setattr(l[0], "weights", None), "missing"),
    (lambda t, l: setattr(l[2], "in0", 3), "in0"),
    (lambda t, l: setattr(l[3], "in1", None), "in1"),
    (lambda t, l: setattr(l[2], "in1", 1), "in1"),
    (lambda t, l: setattr(l[1], "act_min", 101), "act_min"),
    (lambda t, l: setattr(l[1], "act_max", 128), "act_max"),
    (lambda t, l: setattr(l[0], "stride_h", 1), "output tensor"),
    (lambda t, l: setattr(l[0], "pad", (3, 0, 0, 0)), "padding"),
    (lambda t, l: setattr(l[0], "kh", 12), "kernel"),
    (lambda t, l: setattr(l[0], "stride_w", 5), "stride"),
    (lambda t, l: setattr(l[2], "shift", np.full(8, 31, np.int32)), "shift"),
    (lambda t, l: setattr(l[2], "mult", np.full(8, -1, np.int32)), "multiplier"),
    (lambda t, l: setattr(l[5], "bias", np.full(5, (1 << 31) - 1, np.int32)), "bias"),
    (lambda t, l: setattr(l[3], "params", (1 << 30, 31, 0, 0, 0, 0)), "shift"),
    (lambda t, l: setattr(l[4], "params", (1 << 30, -4, 1, 0, 0, 0)), "params"),
    (lambda t, l: setattr(l[3], "weights", np.zeros(4, np.int8)), "no weights"),
    (lambda t, l: setattr(l[0], "type", "maxpool"), "unknown type"),
    (lambda t, l: setattr(l[0], "out", 2), "out"),
    (lambda t, l: setattr(t[3], "scale", 0.0), "scale"),
    (lambda t, l: setattr(t[3], "scale", 1e-50), "scale"),
    (lambda t, l: setattr(t[3], "zero_point", 128), "zero_point"),
    (lambda t, l: setattr(t[3], "c", 7), None),
    (lambda t, l: setattr(t[5], "h", 2), "avg"),
    (lambda t, l: setattr(t[8], "c", 6), "num_classes"),
    (lambda t, l: setattr(l[7], "in1", 6), "tensor 7: never read"),
    (lambda t, l: l.pop(), "tensors"),
])
def test_writer_validation(mutate, message):
    tensors, layers = _broken(mutate)
    with pytest.raises(ValueError) as e:
        write_model(tensors, layers, 5)
    if message:
        assert message in str(e.value)


def test_writer_validation_misc():
    tensors, layers = small_model()
    with pytest.raises(ValueError, match="names"):
        write_model(tensors, layers, 5, class_names=["a", "b"])
    with pytest.raises(ValueError, match="zero byte"):
        write_model(tensors, layers, 5, class_names=["a", "b", "c", "d", "e\0"])
    with pytest.raises(ValueError, match="num_classes"):
        write_model(tensors, layers, 0)
    with pytest.raises(ValueError, match="layers"):
        write_model(tensors[:1], [], 5)


def test_writer_validate_false_writes_broken_files():
    tensors, layers = small_model()
    layers[1].act_min, layers[1].act_max = 100, -100              # act_min > act_max
    layers[0].weights = layers[0].weights[:4]                      # too few weights
    layers[2].in0 = 6                                              # forward reference
    layers[3].out = 9                                              # wrong out index
    tensors[2].zero_point = 300                                    # wraps in the i32 field
    with pytest.raises(ValueError):
        write_model(tensors, layers, 5)
    blob = write_model(tensors, layers, 5, validate=False)
    hdr, pt, pl, _ = parse(blob)
    assert hdr["total_size"] == len(blob)
    assert hdr["crc"] == zlib.crc32(blob[16:]) & 0xFFFFFFFF
    assert pl[1]["act"] == (100, -100)
    assert pl[2]["in0"] == 6 and pl[3]["out"] == 9
    assert pt[2]["zp"] == 300
    assert pl[1]["weights_off"] - pl[0]["weights_off"] >= 4 * 3 * 3 * 3
    # patch a byte, fix the CRC
    bad = bytearray(blob)
    bad[hdr["layer_off"] + 1] = 7                                  # layer 0 flags
    fixed = modelfile.fix_crc(bad)
    assert struct.unpack_from("<I", fixed, 12)[0] == zlib.crc32(bytes(bad[16:])) & 0xFFFFFFFF
    if _reference is not None:
        with pytest.raises(ValueError):
            _reference.read_model(blob)


def test_layer_types_and_header_helper():
    assert modelfile.LAYER_TYPES == {"conv": 1, "dwconv": 2, "pwconv": 3, "add": 4,
                                     "avgpool": 5, "fc": 6}
    tensors, layers = small_model()
    blob = write_model(tensors, layers, 5)
    h = modelfile.read_header(blob)
    assert h["magic"] == b"TMPM" and h["num_layers"] == 8 and h["total_size"] == len(blob)


# --------------------------------------------------------------------------------------------
# builder: float forward
# --------------------------------------------------------------------------------------------

def test_same_padding():
    sp = builder.same_padding
    assert sp(128, 128, 3, 3, 2, 2) == (0, 0, 1, 1)
    assert sp(127, 127, 3, 3, 2, 2) == (1, 1, 1, 1)
    assert sp(144, 144, 7, 7, 2, 2) == (2, 2, 3, 3)
    assert sp(9, 9, 3, 3, 1, 1) == (1, 1, 1, 1)
    assert sp(9, 8, 5, 1, 1, 1) == (2, 0, 2, 0)
    assert sp(5, 5, 1, 1, 2, 2) == (0, 0, 0, 0)
    assert sp(4, 4, 3, 3, 2, 2) == (0, 0, 1, 1)


def naive_conv(x, w, b, stride, pad):
    n, h, wd, c = x.shape
    cout, kh, kw, _ = w.shape
    pt, pl, pb, pr = pad
    oh = (h + pt + pb - kh) // stride[0] + 1
    ow = (wd + pl + pr - kw) // stride[1] + 1
    y = np.zeros((n, oh, ow, cout))
    for yy in range(oh):
        for xx in range(ow):
            for u in range(kh):
                for v in range(kw):
                    iy, ix = yy * stride[0] - pt + u, xx * stride[1] - pl + v
                    if 0 <= iy < h and 0 <= ix < wd:
                        y[:, yy, xx, :] += x[:, iy, ix, :] @ w[:, u, v, :].T
    return y + b


@pytest.mark.parametrize("hw, k, stride, padding", [
    ((9, 9), 3, 1, "same"), ((10, 7), 3, 2, "same"), ((11, 11), 5, 2, "valid"),
    ((8, 8), 7, 1, "same"), ((12, 9), 3, 3, (1, 0, 2, 1)), ((6, 6), 1, 2, "same"),
])
def test_conv_and_dwconv_forward(hw, k, stride, padding):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, hw[0], hw[1], 4)).astype(np.float32)
    w = rng.normal(size=(5, k, k, 4)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    g = Graph((hw[0], hw[1], 4))
    node = g.conv(g.input, w, b, stride=stride, padding=padding)
    ref = naive_conv(x, w, b, (stride, stride), node.pad)
    out = g.forward(x, all_nodes=True)[1]
    assert out.shape == ref.shape == (3,) + node.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    # depthwise == conv with a diagonal weight tensor
    wd = rng.normal(size=(k, k, 4)).astype(np.float32)
    bd = rng.normal(size=4).astype(np.float32)
    g2 = Graph((hw[0], hw[1], 4))
    d = g2.dwconv(g2.input, wd, bd, stride=stride, padding=padding)
    wfull = np.zeros((4, k, k, 4), np.float32)
    for ch in range(4):
        wfull[ch, :, :, ch] = wd[:, :, ch]
    ref2 = naive_conv(x, wfull, bd, (stride, stride), d.pad)
    np.testing.assert_allclose(g2.forward(x, all_nodes=True)[1], ref2, rtol=1e-4, atol=1e-4)


def test_other_ops_forward():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 4, 6)).astype(np.float32) * 4
    g = Graph((3, 4, 6))
    wp, bp = rng.normal(size=(6, 6)), rng.normal(size=6)
    p = g.pwconv(g.input, wp, bp, act="relu6")
    a = g.add(g.input, p, act="relu")
    m = g.avgpool(a)
    wf, bf = rng.normal(size=(3, 3 * 4 * 6)), rng.normal(size=3)
    g.fc(a, wf, bf)                    # fc on a non-1x1 input: HWC flatten order
    vals = g.forward(x, all_nodes=True)
    assert len(vals) == 5 and vals[0] is not None
    ref_p = np.clip(x @ wp.T + bp, 0, 6)
    np.testing.assert_allclose(vals[1], ref_p, rtol=1e-5, atol=1e-5)
    ref_a = np.maximum(x + ref_p, 0)
    np.testing.assert_allclose(vals[2], ref_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vals[3], ref_a.mean(axis=(1, 2), keepdims=True), rtol=1e-5,
                               atol=1e-5)
    ref_f = ref_a.reshape(2, -1) @ wf.T + bf
    np.testing.assert_allclose(vals[4].reshape(2, 3), ref_f, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g.forward(x), ref_f, rtol=1e-4, atol=1e-4)
    assert m.shape == (1, 1, 6)
    assert g.num_params() == 36 + 6 + 3 * 72 + 3


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3", None])
def test_zoo_seed_is_checked(seed):
    # numpy's own words ("expected non-negative integer") did not say which argument
    for build in (lambda: zoo.mcunet(resolution=32, seed=seed),
                  lambda: zoo.mobilenetv2(resolution=32, seed=seed),
                  lambda: zoo.calibration_batch(32, seed=seed)):
        with pytest.raises(ValueError, match=r"^seed must be an integer >= 0, got "):
            build()


def test_graph_errors():
    g = Graph((8, 8, 3))
    with pytest.raises(ValueError):
        g.conv(g.input, np.zeros((4, 3, 3, 2)))              # Cin mismatch
    with pytest.raises(ValueError):
        g.dwconv(g.input, np.zeros((3, 3, 4)))
    with pytest.raises(ValueError):
        g.pwconv(g.input, np.zeros((4, 2)))
    with pytest.raises(ValueError):
        g.conv(g.input, np.zeros((4, 3, 3, 3)), act="tanh")
    with pytest.raises(ValueError):
        g.conv(g.input, np.zeros((4, 3, 3, 3)), stride=5)
    with pytest.raises(ValueError):
        g.conv(g.input, np.zeros((4, 3, 3, 3)), padding=(3, 0, 0, 0))
    with pytest.raises(ValueError):
        g.conv(g.input, np.zeros((4, 3, 3, 3)), np.zeros(5))
    c = g.conv(g.input, np.zeros((4, 3, 3, 3)), stride=2)
    with pytest.raises(ValueError):
        g.add(g.input, c)
    with pytest.raises(ValueError):
        g.fc(c, np.zeros((2, 10)))
    with pytest.raises(ValueError):
        g.forward(np.zeros((1, 8, 8, 4)))
    with pytest.raises(ValueError):
        g.quantize(np.zeros((1, 8, 8, 3)))                  # output not 1x1
    with pytest.raises(ValueError):
        Graph((8, 8)).input


# --------------------------------------------------------------------------------------------
# builder: PTQ
# --------------------------------------------------------------------------------------------

def random_graph(seed, res=16, classes=6):
    """A small zoo-like graph: stem, two inverted residual blocks, head."""
    rng = np.random.default_rng(seed)

    def he(shape, fan, relu=True):
        return rng.normal(0, math.sqrt((2 if relu else 1) / fan), shape)

    g = Graph((res, res, 3))
    x = g.conv(g.input, he((8, 3, 3, 3), 27), rng.normal(0, .05, 8), stride=2, act="relu6")
    for cout, stride in ((8, 1), (12, 2)):
        cin = x.shape[2]
        h = g.pwconv(x, he((cin * 4, cin), cin), rng.normal(0, .05, cin * 4), act="relu6")
        h = g.dwconv(h, he((3, 3, cin * 4), 9), rng.normal(0, .05, cin * 4), stride=stride,
                     act="relu6")
        h = g.pwconv(h, he((cout, cin * 4), cin * 4, False), rng.normal(0, .05, cout))
        x = g.add(x, h) if (stride == 1 and cin == cout) else h
    x = g.pwconv(x, he((32, x.shape[2]), x.shape[2]), rng.normal(0, .05, 32), act="relu")
    x = g.avgpool(x)
    g.fc(x, he((classes, 32), 32, False), rng.normal(0, .05, classes))
    return g


def test_ptq_file_contents():
    g = random_graph(0)
    calib = np.random.default_rng(10).uniform(-1, 1, (16, 16, 16, 3)).astype(np.float32)
    blob = g.quantize(calib, class_names=[f"c{i}" for i in range(6)])
    hdr, tensors, layers, names = check_file(blob)
    assert names == [f"c{i}" for i in range(6)]
    assert hdr["num_layers"] == len(g.nodes) - 1
    assert [L["type"] for L in layers] == [n.op for n in g.nodes[1:]]
    stats = g.calibrate(calib)
    for node, t, (lo, hi) in zip(g.nodes, tensors, stats):
        assert (t["h"], t["w"], t["c"]) == node.shape
        lo, hi = min(lo, 0), max(hi, 0)
        assert t["scale"] == pytest.approx((hi - lo) / 255, rel=1e-6)
        # zero is exactly representable, the range is covered
        assert t["zp"] == int(np.clip(np.floor(-128 - lo / t["scale"] + 0.5), -128, 127))
    for node, L in zip(g.nodes[1:], layers):
        to = tensors[L["out"]]
        if node.act == "relu6":
            assert L["act"] == (to["zp"], min(127, to["zp"] + round(6 / to["scale"])))
        elif node.act == "relu":
            assert L["act"] == (to["zp"], 127)
        else:
            assert L["act"] == (-128, 127)
        if node.op in ("add", "avgpool"):
            continue
        assert L["pad"] == node.pad if node.op in ("conv", "dwconv") else True
        w, bias, mult, shift, wscale = layer_arrays(blob, tensors, L)
        axis = 2 if node.op == "dwconv" else 0
        wf = np.moveaxis(node.w, axis, 0).reshape(node.shape[2], -1)
        wq = np.moveaxis(w, axis, 0).reshape(node.shape[2], -1)
        np.testing.assert_allclose(wscale, np.abs(wf).max(1) / 127, rtol=1e-6)
        assert (np.abs(wq).max(1) == 127).all()
        np.testing.assert_allclose(wq * wscale[:, None], wf, atol=wscale.max() * 0.5 + 1e-7)
        s_in = tensors[L["in0"]]["scale"]
        np.testing.assert_allclose(bias, node.b / (s_in * wscale.astype(np.float64)), atol=0.51)
        real = mult * 2.0 ** (shift.astype(np.float64) - 31)
        np.testing.assert_allclose(real, s_in * wscale.astype(np.float64) / to["scale"],
                                   rtol=1e-8)
    add = layers[[n.op for n in g.nodes[1:]].index("add")]
    s0, s1 = tensors[add["in0"]]["scale"], tensors[add["in1"]]["scale"]
    so = tensors[add["out"]]["scale"]
    tm = 2 * max(s0, s1)
    expect = []
    for m in (s0 / tm, s1 / tm, tm / (2 ** 20 * so)):
        expect += list(quantize_multiplier(m))
    assert add["params"] == tuple(expect)
    pool_i = [n.op for n in g.nodes[1:]].index("avgpool")
    pool, pin = layers[pool_i], g.nodes[g.nodes[pool_i + 1].inputs[0]]
    assert pool["params"] == quantize_multiplier(
        tensors[pool["in0"]]["scale"] / (tensors[pool["out"]]["scale"] * pin.shape[0] *
                                         pin.shape[1])) + (0, 0, 0, 0)


def test_ptq_input_range_zero_channel_and_bias_clip():
    rng = np.random.default_rng(6)
    g = Graph((4, 4, 2))
    w = rng.normal(size=(3, 3, 3, 2)).astype(np.float32)
    w[1] = 0                                             # an all-zero output channel
    b = np.array([0.1, 0.2, 1e9], np.float32)            # absurd bias: must be clipped
    x = g.conv(g.input, w, b, act="relu")
    x = g.avgpool(x)
    g.fc(x, rng.normal(size=(2, 3)), None)
    calib = rng.uniform(-1, 1, (4, 4, 4, 2)).astype(np.float32)
    blob = g.quantize(calib, input_range=(-2.0, 2.0))
    hdr, tensors, layers, _ = check_file(blob)
    assert hdr["input_scale"] == pytest.approx(4 / 255, rel=1e-6)
    assert hdr["input_zp"] in (-1, 0)
    w8, bias, mult, shift, wscale = layer_arrays(blob, tensors, layers[0])
    assert (w8[1] == 0).all()
    assert np.isfinite(wscale).all() and (wscale > 0).all()
    assert abs(int(bias[2])) == (1 << 31) - 1 - 32640 * 3 * 3 * 2
    with pytest.raises(ValueError):
        g.quantize(calib, input_range=(1.0, -1.0))
    with pytest.raises(ValueError):
        g.quantize(calib, num_classes=3)


def test_quantize_input():
    x = np.array([-10.0, -1.0, -0.5, 0.0, 0.5, 1.0, 10.0])
    q = builder.quantize_input(x, (0.5, 3))
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, [-17, 1, 2, 3, 4, 5, 23])
    np.testing.assert_array_equal(builder.quantize_input([1000.0, -1000.0], (0.5, 3)),
                                  [127, -128])
    g = random_graph(1)
    calib = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
    blob = g.quantize(calib, input_range=(-1, 1))
    h = modelfile.read_header(blob)
    q = builder.quantize_input(calib, blob)
    assert q.shape == calib.shape
    np.testing.assert_array_equal(q, builder.quantize_input(calib, (h["input_scale"],
                                                                   h["input_zero_point"])))



@pytest.mark.parametrize("x, qp, words", [
    ([0.5, float("nan")], (0.5, 3), "must be finite"),
    ([0.5, float("inf")], (0.5, 3), "must be finite"),
    ([0.5], (0.0, 3), "scale must be a finite number > 0"),
    ([0.5], (-0.5, 3), "scale must be a finite number > 0"),
    ([0.5], (float("nan"), 3), "scale must be a finite number > 0"),
    ([0.5], (1e-50, 3), "scale must be a finite number > 0"),  # 0 as float32
    ([0.5], (0.5, 500), "zero point must be an integer in -128..127"),
    ([0.5], (0.5, 1.5), "zero point must be an integer in -128..127"),
    ([0.5], (0.5, True), "zero point must be an integer in -128..127"),
])
def test_quantize_input_refuses_what_has_no_int8_value(x, qp, words):
    # each of these gave an array of 0s or 127s (a numpy warning at most) before
    with pytest.raises(ValueError, match=words):
        builder.quantize_input(x, qp)


def _cosines(f, q):
    return (f * q).sum(1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(q, axis=1) + 1e-12)


@needs_reference
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ptq_matches_float_graph(seed):
    g = random_graph(seed)
    calib = np.random.default_rng(100 + seed).uniform(-1, 1, (16, 16, 16, 3)).astype(np.float32)
    blob = g.quantize(calib)
    model = _reference.read_model(blob)
    f = g.forward(calib)
    q = np.stack([_reference.logits(model, xi) for xi in builder.quantize_input(calib, blob)])
    cos = _cosines(f, q)
    assert cos.min() > 0.95, cos
    assert (f.argmax(1) == q.argmax(1)).mean() >= 0.75


# --------------------------------------------------------------------------------------------
# zoo
# --------------------------------------------------------------------------------------------

def test_make_divisible():
    md = zoo.make_divisible
    assert [md(c * 0.35) for c in (32, 16, 24, 32, 64, 96, 160, 320)] == \
        [16, 8, 8, 16, 24, 32, 56, 112]
    assert [md(c * 0.5) for c in (32, 16, 24, 32, 64, 96, 160, 320)] == \
        [16, 8, 16, 16, 32, 48, 80, 160]
    assert md(1280 * 1.4) == 1792


def _chain(tensors):
    return [(t["h"], t["w"], t["c"]) for t in tensors]


def test_zoo_mobilenetv2_035_128():
    t0 = time.time()
    blob = zoo.mobilenetv2(width=0.35, resolution=128, num_classes=10, seed=0)
    print(f"\nmobilenetv2(0.35, 128): {len(blob)} bytes in {time.time() - t0:.2f} s")
    hdr, tensors, layers, _ = check_file(blob)
    shapes = _chain(tensors)
    assert hdr["input"] == (128, 128, 3) and hdr["num_classes"] == 10
    assert layers[0]["type"] == "conv" and layers[0]["stride"] == (2, 2)
    assert shapes[1] == (64, 64, 16)
    # 1 stem + 2 (t=1 block) + 16 * 3 + 10 adds + last conv + avgpool + fc
    assert len(layers) == 64
    assert sum(L["type"] == "add" for L in layers) == 10
    assert layers[-2]["type"] == "avgpool" and layers[-1]["type"] == "fc"
    assert shapes[layers[-2]["in0"]] == (4, 4, 1280)
    assert shapes[-1] == (1, 1, 10)
    outs = [shapes[i + 1][2] for i, L in enumerate(layers) if L["type"] == "pwconv"]
    assert sorted(set(outs)) == [8, 16, 24, 32, 48, 56, 96, 112, 144, 192, 336, 1280]
    g = zoo.mobilenetv2_graph(0.35, 128)
    assert 350_000 < g.num_params() < 450_000
    assert g.num_params() < len(blob) < 1.4 * g.num_params()


@pytest.mark.parametrize("width, res, first, last", [
    (0.35, 96, (48, 48, 16), (3, 3, 1280)), (0.35, 144, (72, 72, 16), (5, 5, 1280)),
    (0.5, 128, (64, 64, 16), (4, 4, 1280)), (1.0, 64, (32, 32, 32), (2, 2, 1280)),
])
def test_zoo_mobilenetv2_shapes(width, res, first, last):
    g = zoo.mobilenetv2_graph(width, res)
    shapes = [n.shape for n in g.nodes]
    assert shapes[1] == first
    assert shapes[g.nodes[-2].inputs[0]] == last
    assert zoo.mobilenetv2_graph(width, res, last_channels=0).nodes[-3].op == "pwconv"


def test_zoo_mcunet():
    blob = zoo.mcunet(resolution=128, num_classes=10, seed=0)
    hdr, tensors, layers, _ = check_file(blob)
    shapes = _chain(tensors)
    stem, blocks = zoo.MCUNET_CONFIGS["5fps"]
    assert stem == 16 and len(blocks) == 14
    assert shapes[1] == (64, 64, 16)
    n_res = sum(1 for i, (k, e, c, s) in enumerate(blocks)
                if s == 1 and c == (blocks[i - 1][2] if i else stem))
    n_layers = 1 + sum(2 if e == 1 else 3 for k, e, c, s in blocks) + n_res + 2
    assert len(layers) == n_layers == 51
    assert shapes[layers[-2]["in0"]] == (4, 4, 160)
    kernels = [L["kh"] for L in layers if L["type"] == "dwconv"]
    assert kernels == [k for k, e, c, s in blocks]
    for cfg in zoo.MCUNET_CONFIGS:
        g = zoo.mcunet_graph(64, config=cfg)
        assert g.output.shape == (1, 1, 10)
    assert zoo.mcunet_graph(64, config="mcunet-in3").num_params() == \
        zoo.mcunet_graph(64, config="320kb").num_params()
    with pytest.raises(ValueError):
        zoo.mcunet_graph(64, config="nope")


def test_zoo_proxylessnas_reproduces_published_w03():
    stem, blocks, last = zoo.proxylessnas_blocks(0.3)
    assert stem == 16 and last == 384
    assert [c for k, e, c, s in blocks] == \
        [8, 16, 16, 16, 16, 16, 16, 24, 24, 24, 24, 32, 32, 32, 32, 64, 64, 64, 64, 96]
    stem, blocks, last = zoo.proxylessnas_blocks(0.25)
    assert stem == 8 and last == 320
    assert sorted(set(c for k, e, c, s in blocks)) == [8, 16, 24, 48, 80]
    _, blocks_md, _ = zoo.proxylessnas_blocks(0.3, rounding="make_divisible")
    assert blocks_md[-2][2] == 56
    blob = zoo.proxylessnas(width=0.3, resolution=128)
    hdr, tensors, layers, _ = check_file(blob)
    shapes = _chain(tensors)
    assert shapes[1] == (64, 64, 16)
    assert shapes[layers[-2]["in0"]] == (4, 4, 384)
    assert len(layers) == 76


def test_zoo_deterministic_and_seeded():
    a = zoo.mcunet(resolution=64, seed=1)
    assert a == zoo.mcunet(resolution=64, seed=1)
    assert a != zoo.mcunet(resolution=64, seed=2)
    assert len(a) == len(zoo.mcunet(resolution=64, seed=2))


def test_zoo_models_registry():
    entries = zoo.models()
    names = {n for n, _ in entries}
    assert names == {"mobilenetv2", "mcunet", "proxylessnas"}
    assert ("mobilenetv2", {"width": 0.35, "resolution": 128}) in entries
    for name, kw in entries:
        assert callable(getattr(zoo, name)) and callable(getattr(zoo, name + "_graph"))
    with pytest.raises(ValueError):
        zoo.build("resnet50")


@pytest.mark.parametrize("name, kw", zoo.models())
def test_zoo_models_build(name, kw):
    t0 = time.time()
    blob = zoo.build(name, **kw)
    hdr, tensors, layers, _ = check_file(blob)
    g = getattr(zoo, name + "_graph")(**kw)
    print(f"\n{name} {kw}: {len(layers)} layers, {g.num_params()} params, {len(blob)} bytes, "
          f"{time.time() - t0:.2f} s")
    assert hdr["input"] == (kw["resolution"], kw["resolution"], 3)
    assert g.num_params() < len(blob) < 1.4 * g.num_params()
    # activations are sane: no tensor was constant on the calibration batch
    stats = g.calibrate(zoo.calibration_batch(kw["resolution"]))
    assert all(hi - lo > 1e-3 for lo, hi in stats)


@needs_reference
@pytest.mark.parametrize("name, kw", [
    ("mobilenetv2", dict(width=0.35, resolution=64)),
    ("mcunet", dict(resolution=64)),
    ("proxylessnas", dict(width=0.3, resolution=64)),
])
def test_zoo_quantised_matches_float(name, kw):
    g = getattr(zoo, name + "_graph")(**kw)
    blob = zoo.quantize_graph(g)
    model = _reference.read_model(blob)
    x = np.random.default_rng(7).uniform(-1, 1, (8, 64, 64, 3)).astype(np.float32)
    f = g.forward(x)
    q = np.stack([_reference.logits(model, xi) for xi in builder.quantize_input(x, blob)])
    assert _cosines(f, q).min() > 0.95
    assert (f.argmax(1) == q.argmax(1)).mean() >= 0.75
