"""Plain numpy reference implementation of the tinymp int8 inference engine.

This module is an INDEPENDENT reference, written only from ``docs/FORMAT.md`` (the ``.tmpm``
model format) and ``docs/KERNELS.md`` (the exact integer semantics of every kernel), without
looking at the C engine.  The test suite uses it as an oracle to check the C engine bit-exactly,
so it favours being obviously correct over being fast:

* all integer arithmetic is carried out in numpy int64 (or Python ints), and the places where
  KERNELS.md says a value fits in int32 are asserted;
* the .tmpm parser checks the CRC and the main structural rules of FORMAT.md and raises
  ``ValueError`` on a violation (it is a test oracle, not an exhaustive guard).

API
---
Requantisation (vectorised over numpy arrays, broadcasting ``x``, ``M``, ``s``)::

    sat32(v)                       -> int64 array
    srdhm(a, b)                    -> int64 array   # SaturatingRoundingDoublingHighMul
    rdpot(x, e)                    -> int64 array   # RoundingDivideByPOT, 0 < e <= 31
    requant(x, M, s)               -> int64 array
    quantize_multiplier(real)      -> (M, s)        # TFLite QuantizeMultiplier

Kernels (int8 HWC arrays in, int8 arrays out)::

    conv(x, w, bias, mult, shift, zp_in, zp_out, stride=(1, 1), pad=(0, 0, 0, 0), act=(-128, 127))
    dwconv(x, w, bias, mult, shift, zp_in, zp_out, stride=(1, 1), pad=(0, 0, 0, 0), act=(-128, 127))
    pwconv(x, w, bias, mult, shift, zp_in, zp_out, act=(-128, 127))
    fc(x, w, bias, mult, shift, zp_in, zp_out, act=(-128, 127))          # -> shape (1, 1, O)
    add(x0, x1, params6, zp0, zp1, zp_out, act=(-128, 127))
    avgpool(x, M, s, zp_in, zp_out, act=(-128, 127))                    # -> shape (1, 1, C)

    pad = (pad_t, pad_l, pad_b, pad_r) (the order of the .tmpm layer record); stride = (sh, sw).
    Weight layouts: conv [Cout][kh][kw][Cin], dwconv [kh][kw][C], pwconv [Cout][Cin], fc [O][n].

Model::

    read_model(data) -> RefModel                 # data: a .tmpm file's bytes or its file name
    run(model, x, upto=None) -> list of int8 arrays (index i = output tensor of layer i)
    logits(model, x) -> float32 array of num_classes
    predict(model, x) -> int
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "INT32_MIN", "INT32_MAX", "sat32", "srdhm", "rdpot", "requant", "quantize_multiplier",
    "conv", "dwconv", "pwconv", "fc", "add", "avgpool",
    "RefTensor", "RefLayer", "RefModel", "read_model", "run", "logits", "predict",
    "LAYER_TYPES",
]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1

# --------------------------------------------------------------------------------------------
# Requantisation (KERNELS.md, "Requantisation")
# --------------------------------------------------------------------------------------------


def _i64(a) -> np.ndarray:
    """Exact conversion to an int64 array (refuses floats and out-of-range Python ints)."""
    arr = np.asarray(a)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    if arr.dtype == object:                     # e.g. Python ints: converted exactly or refused
        return np.array([int(v) for v in arr.reshape(-1).tolist()],
                        dtype=np.int64).reshape(arr.shape)
    raise TypeError(f"integer array expected, got dtype {arr.dtype}")


def _assert_int32(a: np.ndarray, what: str) -> None:
    if a.size and (a.min() < INT32_MIN or a.max() > INT32_MAX):
        raise AssertionError(f"{what} does not fit in int32")


def sat32(v) -> np.ndarray:
    """clamp(v, -2^31, 2^31 - 1)."""
    return np.clip(_i64(v), INT32_MIN, INT32_MAX)


def srdhm(a, b) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul of int32 values (gemmlowp), vectorised.

    p = a*b exactly (fits int64), nudge = 2^30 if p >= 0 else 1 - 2^30,
    result = (p + nudge) / 2^31 with C truncating division (toward zero).
    """
    a, b = np.broadcast_arrays(_i64(a), _i64(b))
    _assert_int32(a, "srdhm operand a")
    _assert_int32(b, "srdhm operand b")
    p = a * b                                   # |p| <= 2^62: exact in int64
    nudge = np.where(p >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    n = p + nudge
    # Truncating division by 2^31: shift the magnitude, then restore the sign.
    # (numpy // and >> both floor, which differs from C for negative odd quotients.)
    q = np.where(n >= 0, n >> 31, -((-n) >> 31))
    q = np.where((a == INT32_MIN) & (b == INT32_MIN), np.int64(INT32_MAX), q)
    _assert_int32(q, "srdhm result")
    return q.astype(np.int64)


def rdpot(x, e) -> np.ndarray:
    """RoundingDivideByPOT(x, e) for 0 < e <= 31, vectorised (arithmetic shifts)."""
    x, e = np.broadcast_arrays(_i64(x), _i64(e))
    if e.size and (e.min() < 1 or e.max() > 31):
        raise ValueError("rdpot exponent must be in 1..31")
    mask = (np.int64(1) << e) - 1
    rem = x & mask                              # two's-complement AND on int64
    threshold = (mask >> 1) + (x < 0).astype(np.int64)
    return (x >> e) + (rem > threshold).astype(np.int64)


def requant(x, M, s) -> np.ndarray:
    """x * M * 2^(s - 31), rounded exactly as KERNELS.md; broadcasts x, M and s.

    x must be int32 valued, 0 <= M <= 2^31 - 1, -31 <= s <= 30.
    """
    x, M, s = np.broadcast_arrays(_i64(x), _i64(M), _i64(s))
    _assert_int32(x, "requant input")
    if M.size and (M.min() < 0 or M.max() > INT32_MAX):
        raise ValueError("requant multiplier must be in [0, 2^31 - 1]")
    if s.size and (s.min() < -31 or s.max() > 30):
        raise ValueError("requant shift must be in [-31, 30]")
    left = np.where(s > 0, s, 0)
    x = np.where(s > 0, sat32(x * (np.int64(1) << left)), x)   # |x*2^s| <= 2^61: exact
    t = srdhm(x, M)
    e = np.where(s < 0, -s, 1)                   # dummy exponent 1 where unused
    t = np.where(s < 0, rdpot(t, e), t)
    return t.astype(np.int64)


def _round_half_away(v: float) -> int:
    """std::round for a finite non-negative or negative double, exactly."""
    if v >= 0:
        f = math.floor(v)
        return int(f) + (1 if v - f >= 0.5 else 0)   # v - f is exact for doubles
    return -_round_half_away(-v)


def quantize_multiplier(real: float) -> Tuple[int, int]:
    """Encode a real multiplier m >= 0 as (M, s) the way TFLite's QuantizeMultiplier does.

    m = q * 2^e, q in [0.5, 1) (frexp); M = round(q * 2^31) (half away from zero);
    if M == 2^31: M = 2^30, e += 1; s = e; if s < -31: M = 0, s = 0.  m == 0 gives (0, 0).
    Raises ValueError for negative / non-finite m and for m whose shift would exceed 30
    (outside the format's range).
    """
    m = float(real)
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"multiplier must be finite and >= 0, got {real!r}")
    if m == 0.0:
        return 0, 0
    q, e = math.frexp(m)
    M = _round_half_away(q * float(1 << 31))    # q * 2^31 is exact in binary64
    if M == (1 << 31):
        M = 1 << 30
        e += 1
    s = e
    if s < -31:
        return 0, 0
    if s > 30:
        raise ValueError(f"multiplier {real!r} too large: shift {s} > 30")
    return int(M), int(s)


# --------------------------------------------------------------------------------------------
# Kernels (KERNELS.md)
# --------------------------------------------------------------------------------------------


def _act(act) -> Tuple[int, int]:
    lo, hi = int(act[0]), int(act[1])
    if not (-128 <= lo <= hi <= 127):
        raise ValueError(f"bad activation range {act!r}")
    return lo, hi


def _int8_input(x, ndim: Optional[int] = None) -> np.ndarray:
    x = _i64(x)
    if x.size and (x.min() < -128 or x.max() > 127):
        raise ValueError("int8 input out of range")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"expected a {ndim}-d input, got shape {x.shape}")
    return x


def _output_stage(acc: np.ndarray, mult, shift, zp_out: int, act) -> np.ndarray:
    """clamp(sat32(requant(acc, mult, shift) + zp_out), act_min, act_max) as int8."""
    lo, hi = _act(act)
    r = requant(acc, mult, shift)
    r = sat32(r + np.int64(zp_out))
    return np.clip(r, lo, hi).astype(np.int8)


def _per_channel(a, n: int, what: str) -> np.ndarray:
    a = _i64(a).reshape(-1)
    if a.shape[0] != n:
        raise ValueError(f"{what}: expected {n} values, got {a.shape[0]}")
    return a


def _padded_centered(x: np.ndarray, zp_in: int, pad) -> np.ndarray:
    """(x - zp_in) surrounded by zeros: zero in the centred domain == padding with zp_in."""
    pt, pl, pb, pr = (int(p) for p in pad)
    if min(pt, pl, pb, pr) < 0:
        raise ValueError("negative padding")
    H, W, C = x.shape
    xp = np.zeros((H + pt + pb, W + pl + pr, C), dtype=np.int64)
    xp[pt:pt + H, pl:pl + W, :] = x - np.int64(zp_in)
    return xp


def _out_size(n: int, pad_a: int, pad_b: int, k: int, stride: int) -> int:
    span = n + pad_a + pad_b - k
    if stride < 1 or span < 0:
        raise ValueError("kernel larger than the padded input, or stride < 1")
    return span // stride + 1


def _window(xp: np.ndarray, u: int, v: int, oh: int, ow: int, sh: int, sw: int) -> np.ndarray:
    """Rows u, u+sh, ..., cols v, v+sw, ... of the padded input: the input under tap (u, v)."""
    return xp[u:u + sh * (oh - 1) + 1:sh, v:v + sw * (ow - 1) + 1:sw, :]


def conv(x, w, bias, mult, shift, zp_in, zp_out, stride=(1, 1), pad=(0, 0, 0, 0),
         act=(-128, 127)) -> np.ndarray:
    """Standard convolution; x [H][W][Cin], w [Cout][kh][kw][Cin] -> out [oh][ow][Cout]."""
    x = _int8_input(x, 3)
    w = _i64(w)
    if w.ndim != 4 or w.shape[3] != x.shape[2]:
        raise ValueError(f"conv weights shape {w.shape} does not match input {x.shape}")
    cout, kh, kw, _ = w.shape
    sh, sw = int(stride[0]), int(stride[1])
    pt, pl, pb, pr = (int(p) for p in pad)
    H, W, _ = x.shape
    oh = _out_size(H, pt, pb, kh, sh)
    ow = _out_size(W, pl, pr, kw, sw)
    xp = _padded_centered(x, zp_in, pad)
    acc = np.broadcast_to(_per_channel(bias, cout, "bias"), (oh, ow, cout)).copy()
    for u in range(kh):
        for v in range(kw):
            acc += _window(xp, u, v, oh, ow, sh, sw) @ w[:, u, v, :].T
    _assert_int32(acc, "conv accumulator")
    return _output_stage(acc, _per_channel(mult, cout, "mult"),
                         _per_channel(shift, cout, "shift"), zp_out, act)


def dwconv(x, w, bias, mult, shift, zp_in, zp_out, stride=(1, 1), pad=(0, 0, 0, 0),
           act=(-128, 127)) -> np.ndarray:
    """Depthwise convolution (multiplier 1); x [H][W][C], w [kh][kw][C] -> out [oh][ow][C]."""
    x = _int8_input(x, 3)
    w = _i64(w)
    if w.ndim != 3 or w.shape[2] != x.shape[2]:
        raise ValueError(f"dwconv weights shape {w.shape} does not match input {x.shape}")
    kh, kw, c = w.shape
    sh, sw = int(stride[0]), int(stride[1])
    pt, pl, pb, pr = (int(p) for p in pad)
    H, W, _ = x.shape
    oh = _out_size(H, pt, pb, kh, sh)
    ow = _out_size(W, pl, pr, kw, sw)
    xp = _padded_centered(x, zp_in, pad)
    acc = np.broadcast_to(_per_channel(bias, c, "bias"), (oh, ow, c)).copy()
    for u in range(kh):
        for v in range(kw):
            acc += _window(xp, u, v, oh, ow, sh, sw) * w[u, v, :]
    _assert_int32(acc, "dwconv accumulator")
    return _output_stage(acc, _per_channel(mult, c, "mult"),
                         _per_channel(shift, c, "shift"), zp_out, act)


def pwconv(x, w, bias, mult, shift, zp_in, zp_out, act=(-128, 127)) -> np.ndarray:
    """Pointwise (1x1, stride 1, no padding) convolution; w [Cout][Cin]."""
    x = _int8_input(x, 3)
    w = _i64(w)
    if w.ndim != 2 or w.shape[1] != x.shape[2]:
        raise ValueError(f"pwconv weights shape {w.shape} does not match input {x.shape}")
    cout = w.shape[0]
    acc = (x - np.int64(zp_in)) @ w.T + _per_channel(bias, cout, "bias")
    _assert_int32(acc, "pwconv accumulator")
    return _output_stage(acc, _per_channel(mult, cout, "mult"),
                         _per_channel(shift, cout, "shift"), zp_out, act)


def fc(x, w, bias, mult, shift, zp_in, zp_out, act=(-128, 127)) -> np.ndarray:
    """Fully connected over x.reshape(-1) (memory order); w [O][n] -> out shape (1, 1, O)."""
    x = _int8_input(x).reshape(-1)
    w = _i64(w)
    if w.ndim != 2 or w.shape[1] != x.shape[0]:
        raise ValueError(f"fc weights shape {w.shape} does not match input of {x.shape[0]} values")
    o = w.shape[0]
    acc = w @ (x - np.int64(zp_in)) + _per_channel(bias, o, "bias")
    _assert_int32(acc, "fc accumulator")
    out = _output_stage(acc, _per_channel(mult, o, "mult"),
                        _per_channel(shift, o, "shift"), zp_out, act)
    return out.reshape(1, 1, o)


def add(x0, x1, params6, zp0, zp1, zp_out, act=(-128, 127)) -> np.ndarray:
    """Residual add with params [M0, s0, M1, s1, Mo, so]; inputs pre-shifted by 2^20."""
    x0 = _int8_input(x0)
    x1 = _int8_input(x1)
    if x0.shape != x1.shape:
        raise ValueError(f"add input shapes differ: {x0.shape} vs {x1.shape}")
    p = [int(v) for v in params6]
    if len(p) != 6:
        raise ValueError("add needs 6 params")
    M0, s0, M1, s1, Mo, so = p
    lo, hi = _act(act)
    a = requant((x0 - np.int64(zp0)) * np.int64(1 << 20), M0, s0)
    b = requant((x1 - np.int64(zp1)) * np.int64(1 << 20), M1, s1)
    r = requant(sat32(a + b), Mo, so)
    r = sat32(r + np.int64(zp_out))
    return np.clip(r, lo, hi).astype(np.int8)


def avgpool(x, M, s, zp_in, zp_out, act=(-128, 127)) -> np.ndarray:
    """Global average pool as a requantised per-channel sum; x [H][W][C] -> out (1, 1, C)."""
    x = _int8_input(x, 3)
    c = x.shape[2]
    acc = (x - np.int64(zp_in)).sum(axis=(0, 1))
    _assert_int32(acc, "avgpool accumulator")
    lo, hi = _act(act)
    r = sat32(requant(acc, int(M), int(s)) + np.int64(zp_out))
    return np.clip(r, lo, hi).astype(np.int8).reshape(1, 1, c)


# --------------------------------------------------------------------------------------------
# .tmpm parser (FORMAT.md)
# --------------------------------------------------------------------------------------------

LAYER_TYPES = {1: "conv", 2: "dwconv", 3: "pwconv", 4: "add", 5: "avgpool", 6: "fc"}
_HEADER = struct.Struct("<4sHHII HHHH fi HH IIIII 8s")
_TENSOR = struct.Struct("<HHHHfi")
_LAYER = struct.Struct("<BBBBBBBBBBbbHHHHIIIII6i")
assert _HEADER.size == 64 and _TENSOR.size == 16 and _LAYER.size == 64
_NO_INPUT = 0xFFFF


@dataclass
class RefTensor:
    h: int
    w: int
    c: int
    scale: float          # the f32 value, as a Python float (exact)
    zero_point: int

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self.h, self.w, self.c)


@dataclass
class RefLayer:
    index: int
    type: int             # 1..6
    type_name: str        # "conv", "dwconv", "pwconv", "add", "avgpool", "fc"
    kh: int
    kw: int
    stride: Tuple[int, int]              # (stride_h, stride_w)
    pads: Tuple[int, int, int, int]      # (pad_t, pad_l, pad_b, pad_r), record order
    act_min: int
    act_max: int
    in0: int
    in1: Optional[int]    # None unless type == add (0xFFFF in the file)
    out: int
    weights: Optional[np.ndarray] = None  # int8: conv [O][kh][kw][I], dwconv [kh][kw][C],
    #                                       pwconv [O][I], fc [O][n]
    bias: Optional[np.ndarray] = None     # int32 [O]
    mult: Optional[np.ndarray] = None     # int32 [O]
    shift: Optional[np.ndarray] = None    # int32 [O]
    wscale: Optional[np.ndarray] = None   # float32 [O]
    params: Tuple[int, ...] = (0, 0, 0, 0, 0, 0)

    @property
    def act(self) -> Tuple[int, int]:
        return (self.act_min, self.act_max)


@dataclass
class RefModel:
    tensors: List[RefTensor]
    layers: List[RefLayer]
    num_classes: int
    class_names: Optional[List[str]]
    input_shape: Tuple[int, int, int]
    input_scale: float
    input_zero_point: int
    total_size: int = 0
    raw: bytes = field(default=b"", repr=False)


def _fail(msg: str):
    raise ValueError("tinymp: " + msg)


def _model_bytes(data) -> bytes:
    """The bytes of a model given as bytes-like or, as tinymp.Model takes it, as a file name."""
    import os
    import stat
    if isinstance(data, (str, os.PathLike)):
        # this module stands alone (the tests load it without the package): its own check that
        # the name is a file, so a folder or a FIFO is refused rather than read
        if not stat.S_ISREG(os.stat(data).st_mode):
            raise ValueError(f"tinymp: {os.fspath(data)} is not a .tmpm model file")
        with open(data, "rb") as f:
            return f.read()
    try:
        return bytes(memoryview(data))
    except TypeError:
        raise TypeError("tinymp: a model is a .tmpm file's bytes or its file name, not "
                        f"'{type(data).__name__}'") from None


def read_model(data) -> RefModel:
    """Parse and validate a .tmpm model (bytes-like, or a file name). Raises ValueError on a
    rule violation."""
    buf = _model_bytes(data)
    if len(buf) < 64:
        _fail(f"file too short for a header ({len(buf)} bytes)")
    (magic, version, header_size, total_size, crc, in_h, in_w, in_c, num_classes,
     input_scale, input_zp, num_tensors, num_layers, tt_off, lt_off, cn_off, cn_size,
     flags, reserved) = _HEADER.unpack_from(buf, 0)
    if magic != b"TMPM":
        _fail(f"bad magic {magic!r}")
    if version != 1:
        _fail(f"unsupported version {version} (this reader knows version 1)")
    if header_size != 64:
        _fail(f"header_size {header_size} != 64")
    if total_size < 64 or total_size > len(buf):
        _fail(f"total_size {total_size} outside [64, buffer length {len(buf)}]")
    actual_crc = zlib.crc32(buf[16:total_size]) & 0xFFFFFFFF
    if actual_crc != crc:
        _fail(f"CRC mismatch (stored {crc:#010x}, computed {actual_crc:#010x})")
    if flags != 0:
        _fail("header flags must be 0")
    if reserved != bytes(8):
        _fail("header reserved bytes must be 0")
    if not 1 <= num_layers <= 1024:
        _fail(f"num_layers {num_layers} outside 1..1024")
    if num_tensors != num_layers + 1:
        _fail(f"num_tensors {num_tensors} != num_layers + 1")
    if num_classes < 1:
        _fail("num_classes must be >= 1")

    def check_range(off: int, size: int, what: str, align: bool = True) -> None:
        if align and off % 4:
            _fail(f"{what}: offset {off} not 4-aligned")
        if off < 64 or off + size > total_size:
            _fail(f"{what}: [{off}, {off + size}) outside [64, total_size={total_size})")

    check_range(tt_off, 16 * num_tensors, "tensor table")
    check_range(lt_off, 64 * num_layers, "layer table")

    # ---- tensors
    tensors: List[RefTensor] = []
    for i in range(num_tensors):
        h, w, c, tflags, scale, zp = _TENSOR.unpack_from(buf, tt_off + 16 * i)
        if h < 1 or w < 1 or c < 1:
            _fail(f"tensor {i}: dimensions must be >= 1")
        if tflags != 0:
            _fail(f"tensor {i}: flags must be 0")
        if not (math.isfinite(scale) and scale > 0):
            _fail(f"tensor {i}: scale must be finite and > 0")
        if not -128 <= zp <= 127:
            _fail(f"tensor {i}: zero point {zp} outside -128..127")
        if h * w * c > (1 << 24):
            _fail(f"tensor {i}: h*w*c > 2^24")
        tensors.append(RefTensor(h, w, c, scale, zp))
    t0 = tensors[0]
    if (in_h, in_w, in_c) != t0.shape:
        _fail("header input shape differs from tensor 0")
    if input_scale != t0.scale:
        _fail("header input_scale differs from tensor 0")
    if input_zp != t0.zero_point:
        _fail("header input_zero_point differs from tensor 0")
    if tensors[-1].shape != (1, 1, num_classes):
        _fail(f"output tensor is {tensors[-1].shape}, expected (1, 1, {num_classes})")

    # ---- layers
    def arr(off: int, count: int, dtype: str, what: str) -> np.ndarray:
        itemsize = np.dtype(dtype).itemsize
        check_range(off, count * itemsize, what)
        return np.frombuffer(buf, dtype=dtype, count=count, offset=off).copy()

    layers: List[RefLayer] = []
    for i in range(num_layers):
        (ltype, lflags, kh, kw, sh, sw, pt, pl, pb, pr, amin, amax, in0, in1, out, lres,
         w_off, b_off, m_off, s_off, ws_off, *params) = _LAYER.unpack_from(buf, lt_off + 64 * i)
        name = LAYER_TYPES.get(ltype)
        if name is None:
            _fail(f"layer {i}: unknown type {ltype}")
        where = f"layer {i} ({name})"
        if lflags != 0:
            _fail(f"{where}: flags must be 0")
        if lres != 0:
            _fail(f"{where}: reserved field must be 0")
        if amin > amax:
            _fail(f"{where}: act_min > act_max")
        if out != i + 1:
            _fail(f"{where}: out must be {i + 1}, got {out}")
        if in0 >= out:
            _fail(f"{where}: input tensor {in0} not written before output {out}")
        if ltype == 4:
            if in1 == _NO_INPUT or in1 >= out:
                _fail(f"{where}: second input {in1} not written before output {out}")
        elif in1 != _NO_INPUT:
            _fail(f"{where}: in1 must be 0xFFFF")
        ti, to = tensors[in0], tensors[out]
        layer = RefLayer(index=i, type=ltype, type_name=name, kh=kh, kw=kw, stride=(sh, sw),
                         pads=(pt, pl, pb, pr), act_min=amin, act_max=amax, in0=in0,
                         in1=(in1 if ltype == 4 else None), out=out, params=tuple(params))

        def check_mult_shift(mult, shift) -> None:
            mult = np.asarray(mult, dtype=np.int64)
            shift = np.asarray(shift, dtype=np.int64)
            if mult.size and (mult.min() < 0 or mult.max() > INT32_MAX):
                _fail(f"{where}: multiplier outside [0, 2^31 - 1]")
            if shift.size and (shift.min() < -31 or shift.max() > 30):
                _fail(f"{where}: shift outside [-31, 30]")

        if ltype in (1, 2, 3, 6):
            if any(params):
                _fail(f"{where}: params must be 0")
            if ltype in (1, 2):
                if not (1 <= kh <= 11 and 1 <= kw <= 11):
                    _fail(f"{where}: kernel size outside 1..11")
                if not (1 <= sh <= 4 and 1 <= sw <= 4):
                    _fail(f"{where}: stride outside 1..4")
                if not (pt < kh and pb < kh and pl < kw and pr < kw):
                    _fail(f"{where}: padding must be smaller than the kernel")
                if ti.h + pt + pb < kh or ti.w + pl + pr < kw:
                    _fail(f"{where}: kernel larger than the padded input")
                if (to.h, to.w) != ((ti.h + pt + pb - kh) // sh + 1,
                                    (ti.w + pl + pr - kw) // sw + 1):
                    _fail(f"{where}: output size mismatch")
                if ltype == 1:
                    L = kh * kw * ti.c
                    if L > 65536:
                        _fail(f"{where}: kh*kw*in.c > 65536")
                    wshape: Tuple[int, ...] = (to.c, kh, kw, ti.c)
                else:
                    if to.c != ti.c:
                        _fail(f"{where}: out.c != in.c")
                    L = kh * kw
                    wshape = (kh, kw, ti.c)
            elif ltype == 3:
                if (kh, kw, sh, sw, pt, pl, pb, pr) != (1, 1, 1, 1, 0, 0, 0, 0):
                    _fail(f"{where}: needs kh = kw = 1, stride 1, no padding")
                if (to.h, to.w) != (ti.h, ti.w):
                    _fail(f"{where}: output size mismatch")
                if ti.c > 65536:
                    _fail(f"{where}: in.c > 65536")
                L = ti.c
                wshape = (to.c, ti.c)
            else:  # fc
                if (kh, kw, sh, sw, pt, pl, pb, pr) != (0,) * 8:
                    _fail(f"{where}: kernel, stride and padding must be 0")
                if (to.h, to.w) != (1, 1):
                    _fail(f"{where}: output must be 1 x 1 x c")
                L = ti.h * ti.w * ti.c
                if L > 65536:
                    _fail(f"{where}: n > 65536")
                wshape = (to.c, L)
            n_out = to.c
            layer.weights = arr(w_off, int(np.prod(wshape)), "i1", f"{where}: weights"
                                ).reshape(wshape)
            layer.bias = arr(b_off, n_out, "<i4", f"{where}: bias")
            layer.mult = arr(m_off, n_out, "<i4", f"{where}: multipliers")
            layer.shift = arr(s_off, n_out, "<i4", f"{where}: shifts")
            layer.wscale = arr(ws_off, n_out, "<f4", f"{where}: weight scales")
            check_mult_shift(layer.mult, layer.shift)
            bound = INT32_MAX - 32640 * L
            if np.abs(layer.bias.astype(np.int64)).max() > bound:
                _fail(f"{where}: |bias| > 2^31 - 1 - 32640*{L}")
        else:  # add, avgpool
            if (kh, kw, sh, sw, pt, pl, pb, pr) != (0,) * 8:
                _fail(f"{where}: kernel, stride and padding must be 0")
            if (w_off, b_off, m_off, s_off, ws_off) != (0,) * 5:
                _fail(f"{where}: array offsets must be 0")
            if ltype == 4:
                if not (ti.shape == tensors[in1].shape == to.shape):
                    _fail(f"{where}: inputs and output must have the same shape")
                check_mult_shift(params[0::2], params[1::2])
            else:
                if to.shape != (1, 1, ti.c):
                    _fail(f"{where}: output must be 1 x 1 x in.c")
                if ti.h * ti.w > (1 << 23):
                    _fail(f"{where}: in.h*in.w > 2^23")
                if any(params[2:]):
                    _fail(f"{where}: params[2..5] must be 0")
                check_mult_shift(params[0:1], params[1:2])
        layers.append(layer)

    # every tensor but the output is read by a layer (a layer whose output nothing reads is dead)
    read = {L.in0 for L in layers} | {L.in1 for L in layers if L.in1 is not None}
    for t in range(num_layers):
        if t not in read:
            _fail(f"tensor {t}: never read by a layer (only the output may be)")

    # ---- class names
    class_names: Optional[List[str]] = None
    if cn_off == 0 and cn_size == 0:
        pass
    elif cn_off == 0 or cn_size == 0:
        _fail("class_names_off and class_names_size must both be 0 or both non-zero")
    else:
        check_range(cn_off, cn_size, "class names", align=False)
        block = buf[cn_off:cn_off + cn_size]
        if block[-1:] != b"\0":
            _fail("class names: block must end with a zero byte")
        parts = block[:-1].split(b"\0")
        if len(parts) != num_classes:
            _fail(f"class names: {len(parts)} names for {num_classes} classes")
        try:
            class_names = [p.decode("utf-8") for p in parts]
        except UnicodeDecodeError:
            _fail("class names: invalid UTF-8")

    return RefModel(tensors=tensors, layers=layers, num_classes=num_classes,
                    class_names=class_names, input_shape=(in_h, in_w, in_c),
                    input_scale=input_scale, input_zero_point=input_zp,
                    total_size=total_size, raw=buf[:total_size])


# --------------------------------------------------------------------------------------------
# Running a model
# --------------------------------------------------------------------------------------------


def _as_model(model: Union[RefModel, bytes, bytearray, memoryview, str]) -> RefModel:
    return model if isinstance(model, RefModel) else read_model(model)


def run_layer(model: RefModel, layer: RefLayer, tensors: Sequence[np.ndarray]) -> np.ndarray:
    """Output of one layer, given the list of tensors computed so far (tensor 0 = input)."""
    ti = model.tensors[layer.in0]
    to = model.tensors[layer.out]
    x = tensors[layer.in0]
    act = layer.act
    if layer.type_name == "conv":
        y = conv(x, layer.weights, layer.bias, layer.mult, layer.shift, ti.zero_point,
                 to.zero_point, layer.stride, layer.pads, act)
    elif layer.type_name == "dwconv":
        y = dwconv(x, layer.weights, layer.bias, layer.mult, layer.shift, ti.zero_point,
                   to.zero_point, layer.stride, layer.pads, act)
    elif layer.type_name == "pwconv":
        y = pwconv(x, layer.weights, layer.bias, layer.mult, layer.shift, ti.zero_point,
                   to.zero_point, act)
    elif layer.type_name == "fc":
        y = fc(x, layer.weights, layer.bias, layer.mult, layer.shift, ti.zero_point,
               to.zero_point, act)
    elif layer.type_name == "add":
        t1 = model.tensors[layer.in1]
        y = add(x, tensors[layer.in1], layer.params, ti.zero_point, t1.zero_point,
                to.zero_point, act)
    elif layer.type_name == "avgpool":
        y = avgpool(x, layer.params[0], layer.params[1], ti.zero_point, to.zero_point, act)
    else:  # pragma: no cover - read_model rejects unknown types
        raise ValueError(f"unknown layer type {layer.type}")
    if y.shape != to.shape:
        raise AssertionError(f"layer {layer.index}: output shape {y.shape} != {to.shape}")
    return y


def _raw_int8(x) -> Optional[np.ndarray]:
    """The bytes of a non-numpy buffer (bytes, bytearray, memoryview, array.array, ...) as int8,
    read as Model.predict/logits read an input (get_input in the bindings): raw bytes whatever its
    format when its items are one byte each (array('B', [200]) is the int8 -56), refused with
    Model's own TypeError when they are not (a memoryview of array('h')); None for what is no
    buffer, or a numpy array or scalar, which are read by value."""
    if isinstance(x, (np.ndarray, np.generic)):
        return None
    try:
        view = memoryview(x)
    except TypeError:
        return None
    with view:
        if view.itemsize != 1:
            raise TypeError("tinymp: input must hold int8 bytes (itemsize 1), got items of "
                            f"{view.itemsize} bytes (format '{view.format}')")
        # tobytes(): C order, so a strided view reads as the binding's contiguous copy of it
        return np.frombuffer(view.tobytes(), dtype=np.int8)


def _input_array(model: RefModel, x) -> np.ndarray:
    raw = _raw_int8(x)
    arr = raw if raw is not None else np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"int8 input expected, got dtype {arr.dtype}")
    if arr.size != int(np.prod(model.input_shape)):
        raise ValueError(f"input has {arr.size} values, model expects {model.input_shape}")
    if arr.size and (arr.min() < -128 or arr.max() > 127):
        raise ValueError("input values outside int8")
    return arr.astype(np.int8).reshape(model.input_shape)


def run(model, x, upto: Optional[int] = None) -> List[np.ndarray]:
    """Run the layers in order; returns the int8 output tensor of each layer (shape h, w, c).

    Element i is the output of layer i (tensor i + 1). With ``upto``, stops after layer
    ``upto`` (inclusive), returning ``upto + 1`` arrays.
    """
    m = _as_model(model)
    n = len(m.layers)
    last = n - 1 if upto is None else int(upto)
    if not 0 <= last < n:
        raise ValueError(f"upto={upto} outside 0..{n - 1}")
    tensors: List[np.ndarray] = [_input_array(m, x)]
    for layer in m.layers[:last + 1]:
        tensors.append(run_layer(m, layer, tensors))
    return tensors[1:]


def logits(model, x) -> np.ndarray:
    """Dequantised model output (q - zp) * scale, computed in float32, shape (num_classes,)."""
    m = _as_model(model)
    q = run(m, x)[-1].reshape(-1)
    t = m.tensors[-1]
    return (q.astype(np.int32) - np.int32(t.zero_point)).astype(np.float32) * np.float32(t.scale)


def predict(model, x) -> int:
    """Index of the largest int8 output (the first one on ties)."""
    m = _as_model(model)
    return int(np.argmax(run(m, x)[-1].reshape(-1)))
