"""Low-level writer of the ``.tmpm`` model format (docs/FORMAT.md, version 1).

This module knows nothing about floats, graphs or quantisation: it serialises an already
quantised model, given as a list of activation tensors and a list of layers, into the binary
layout of FORMAT.md, and (unless told not to) checks every rule of that page first.

API
---
::

    LAYER_TYPES                    # {'conv': 1, 'dwconv': 2, 'pwconv': 3, 'add': 4, 'avgpool': 5, 'fc': 6}
    Tensor(h, w, c, scale, zero_point)
    Layer(type, in0, in1=None, kh=0, kw=0, stride_h=0, stride_w=0, pad=(t, l, b, r),
          act_min=-128, act_max=127, weights=None, bias=None, mult=None, shift=None,
          wscale=None, params=(0,) * 6, out=None)
    write_model(tensors, layers, num_classes, class_names=None, validate=True) -> bytes
    validate_model(tensors, layers, num_classes, class_names=None)   # raises ValueError
    quantize_multiplier(real) -> (M, s)                               # TFLite QuantizeMultiplier
    fix_crc(data) -> bytes          # recompute total_size-range CRC after patching bytes (tests)
    read_header(data) -> dict       # the 64-byte header as a dict (no validation)

Layer ``i`` writes tensor ``i + 1`` (``Layer.out`` may override this only with
``validate=False``, to produce deliberately broken files). Arrays are written in the order
weights, bias, mult, shift, wscale of each layer, each at a 16-byte aligned offset, then the
class-name block; ``total_size`` is rounded up to a multiple of 16.

With ``validate=False`` nothing is checked: integer fields are wrapped to their width
(two's complement), arrays are cast (``astype``, unsafe) to the documented dtype and written
whatever their shape, so that tests can produce files that a reader must reject.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "LAYER_TYPES", "LAYER_NAMES", "Tensor", "Layer", "write_model", "validate_model",
    "quantize_multiplier", "fix_crc", "read_header", "HEADER_SIZE", "TENSOR_RECORD_SIZE",
    "LAYER_RECORD_SIZE", "ARRAY_ALIGN", "MAGIC", "VERSION",
]

MAGIC = b"TMPM"
VERSION = 1
HEADER_SIZE = 64
TENSOR_RECORD_SIZE = 16
LAYER_RECORD_SIZE = 64
ARRAY_ALIGN = 16
NO_INPUT = 0xFFFF

LAYER_TYPES: Dict[str, int] = {
    "conv": 1, "dwconv": 2, "pwconv": 3, "add": 4, "avgpool": 5, "fc": 6,
}
LAYER_NAMES: Dict[int, str] = {v: k for k, v in LAYER_TYPES.items()}

# struct layouts (little-endian, no padding)
_HEADER = struct.Struct("<4sHHII HHHH fi HH IIII I 8s")
_TENSOR = struct.Struct("<HHHHfi")
_LAYER = struct.Struct("<10B2b4H5I6i")
assert _HEADER.size == HEADER_SIZE
assert _TENSOR.size == TENSOR_RECORD_SIZE
assert _LAYER.size == LAYER_RECORD_SIZE

INT32_MAX = (1 << 31) - 1
_CONV_TYPES = ("conv", "dwconv", "pwconv", "fc")
_ACC_PER_TERM = 32640          # |x - zp| <= 255 times |w| <= 128


@dataclass
class Tensor:
    """One int8 activation tensor, layout [H][W][C]."""
    h: int
    w: int
    c: int
    scale: float
    zero_point: int

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (int(self.h), int(self.w), int(self.c))


@dataclass
class Layer:
    """One layer record. ``pad`` is (top, left, bottom, right).

    Arrays (numpy): ``weights`` int8 in the FORMAT.md layout of the type; ``bias``, ``mult``,
    ``shift`` int32 and ``wscale`` float32, one per output channel. ``params`` holds the six
    int32 per-type scalars (add, avgpool). ``out`` is normally left None (= index + 1).
    """
    type: str
    in0: int
    in1: Optional[int] = None
    kh: int = 0
    kw: int = 0
    stride_h: int = 0
    stride_w: int = 0
    pad: Tuple[int, int, int, int] = (0, 0, 0, 0)
    act_min: int = -128
    act_max: int = 127
    weights: Optional[np.ndarray] = None
    bias: Optional[np.ndarray] = None
    mult: Optional[np.ndarray] = None
    shift: Optional[np.ndarray] = None
    wscale: Optional[np.ndarray] = None
    params: Tuple[int, ...] = (0, 0, 0, 0, 0, 0)
    out: Optional[int] = None


# --------------------------------------------------------------------------------------------
# Requantisation multiplier (KERNELS.md, "Requantisation")
# --------------------------------------------------------------------------------------------

def _round_half_away(v: float) -> int:
    """Round a finite double to the nearest integer, halves away from zero (std::round)."""
    if v < 0:
        return -_round_half_away(-v)
    f = math.floor(v)
    return int(f) + (1 if v - f >= 0.5 else 0)


def quantize_multiplier(real: float) -> Tuple[int, int]:
    """Encode a real multiplier ``m >= 0`` as ``(M, s)`` with ``m ~= M * 2^(s - 31)``.

    Exactly TFLite's QuantizeMultiplier as KERNELS.md states it: ``m = q * 2^e`` with
    ``q in [0.5, 1)`` (frexp), ``M = round(q * 2^31)`` (half away from zero); if ``M == 2^31``
    then ``M = 2^30, e += 1``; ``s = e``; if ``s < -31`` then ``(0, 0)``; ``m == 0`` gives
    ``(0, 0)``. Raises ValueError for a negative or non-finite ``m`` and when ``s > 30`` (the
    format cannot store it).
    """
    m = float(real)
    if not math.isfinite(m) or m < 0.0:
        raise ValueError(f"quantize_multiplier: multiplier must be finite and >= 0, got {m!r}")
    if m == 0.0:
        return 0, 0
    q, e = math.frexp(m)
    M = _round_half_away(q * 2147483648.0)    # exact: scaling by a power of two
    if M == (1 << 31):
        M = 1 << 30
        e += 1
    if e < -31:
        return 0, 0
    if e > 30:
        raise ValueError(f"quantize_multiplier: multiplier {m:.6g} too large (shift {e} > 30)")
    return int(M), int(e)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _lname(i: int, layer: Layer) -> str:
    return f"layer {i} ({layer.type})"


def _check_array(where: str, name: str, a, dtype, shape) -> None:
    if a is None:
        raise ValueError(f"{where}: {name} array missing")
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{where}: {name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != np.dtype(dtype):
        raise ValueError(f"{where}: {name} must have dtype {np.dtype(dtype).name}, got {a.dtype}")
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{where}: {name} has shape {tuple(a.shape)}, expected {tuple(shape)}")


def _conv_out(n: int, pa: int, pb: int, k: int, s: int) -> int:
    return (n + pa + pb - k) // s + 1


def validate_model(tensors: Sequence[Tensor], layers: Sequence[Layer], num_classes: int,
                   class_names: Optional[Sequence[str]] = None) -> None:
    """Check every rule of FORMAT.md that the inputs of write_model can break.

    Raises ValueError naming the tensor or layer and the rule.
    """
    nl = len(layers)
    if not 1 <= nl <= 1024:
        raise ValueError(f"model: {nl} layers, must be 1 ... 1024")
    if len(tensors) != nl + 1:
        raise ValueError(f"model: {len(tensors)} tensors for {nl} layers, must be num_layers + 1")
    if not _is_int(num_classes) or not 1 <= num_classes <= 0xFFFF:
        raise ValueError(f"model: num_classes {num_classes!r} must be an integer in 1 ... 65535")

    for i, t in enumerate(tensors):
        where = f"tensor {i}"
        for name in ("h", "w", "c"):
            v = getattr(t, name)
            if not _is_int(v) or not 1 <= v <= 0xFFFF:
                raise ValueError(f"{where}: {name} = {v!r} must be an integer in 1 ... 65535")
        if t.h * t.w * t.c > (1 << 24):
            raise ValueError(f"{where}: h*w*c = {t.h * t.w * t.c} exceeds 2^24")
        s32 = float(np.float32(t.scale)) if np.isfinite(t.scale) else float("nan")
        if not (math.isfinite(s32) and s32 > 0.0):
            raise ValueError(f"{where}: scale {t.scale!r} must be finite and > 0 as float32")
        if not _is_int(t.zero_point) or not -128 <= t.zero_point <= 127:
            raise ValueError(f"{where}: zero_point {t.zero_point!r} must be in -128 ... 127")

    last = tensors[-1]
    if (last.h, last.w, last.c) != (1, 1, num_classes):
        raise ValueError(f"tensor {nl}: the model output must be 1 x 1 x num_classes "
                         f"(1 x 1 x {num_classes}), got {last.h} x {last.w} x {last.c}")

    if class_names is not None:
        if len(class_names) != num_classes:
            raise ValueError(f"class names: {len(class_names)} names for {num_classes} classes")
        for k, nm in enumerate(class_names):
            if not isinstance(nm, str):
                raise ValueError(f"class names: name {k} is not a str")
            if "\0" in nm:
                raise ValueError(f"class names: name {k} contains a zero byte")

    for i, L in enumerate(layers):
        _validate_layer(i, L, tensors)
    read = {L.in0 for L in layers} | {L.in1 for L in layers if L.type == "add"}
    for t in range(nl):
        if t not in read:
            raise ValueError(f"tensor {t}: never read by a layer (only the output may be); "
                             "a layer whose output nothing uses must be removed")


def _validate_layer(i: int, L: Layer, tensors: Sequence[Tensor]) -> None:
    where = _lname(i, L)
    if L.type not in LAYER_TYPES:
        raise ValueError(f"layer {i}: unknown type {L.type!r} (known: {', '.join(LAYER_TYPES)})")
    if L.out is not None and L.out != i + 1:
        raise ValueError(f"{where}: out must be layer index + 1 = {i + 1}, got {L.out}")
    if not _is_int(L.in0) or not 0 <= L.in0 <= i:
        raise ValueError(f"{where}: in0 = {L.in0!r} must be a tensor index < {i + 1}")
    if L.type == "add":
        if L.in1 is None or not _is_int(L.in1) or not 0 <= L.in1 <= i:
            raise ValueError(f"{where}: in1 = {L.in1!r} must be a tensor index < {i + 1}")
    elif L.in1 is not None:
        raise ValueError(f"{where}: in1 must be None (0xFFFF) except for add")
    for nm in ("act_min", "act_max"):
        v = getattr(L, nm)
        if not _is_int(v) or not -128 <= v <= 127:
            raise ValueError(f"{where}: {nm} = {v!r} must be in -128 ... 127")
    if L.act_min > L.act_max:
        raise ValueError(f"{where}: act_min {L.act_min} > act_max {L.act_max}")
    pad = tuple(L.pad)
    if len(pad) != 4 or not all(_is_int(p) and 0 <= p <= 255 for p in pad):
        raise ValueError(f"{where}: pad {L.pad!r} must be 4 integers in 0 ... 255 (t, l, b, r)")
    for nm in ("kh", "kw", "stride_h", "stride_w"):
        v = getattr(L, nm)
        if not _is_int(v) or not 0 <= v <= 255:
            raise ValueError(f"{where}: {nm} = {v!r} must be an integer in 0 ... 255")
    params = tuple(L.params)
    if len(params) != 6 or not all(_is_int(p) for p in params):
        raise ValueError(f"{where}: params must be 6 integers")
    if not all(-(1 << 31) <= p <= INT32_MAX for p in params):
        raise ValueError(f"{where}: params {params} must fit int32")

    ti = tensors[L.in0]
    to = tensors[i + 1]
    pt, pl, pb, pr = pad
    arrays = ("weights", "bias", "mult", "shift", "wscale")

    if L.type in ("conv", "dwconv", "pwconv"):
        if L.type == "pwconv":
            if (L.kh, L.kw, L.stride_h, L.stride_w) != (1, 1, 1, 1) or pad != (0, 0, 0, 0):
                raise ValueError(f"{where}: pwconv needs kh = kw = 1, stride 1 and no padding")
        if not (1 <= L.kh <= 11 and 1 <= L.kw <= 11):
            raise ValueError(f"{where}: kernel {L.kh}x{L.kw} outside 1 ... 11")
        if not (1 <= L.stride_h <= 4 and 1 <= L.stride_w <= 4):
            raise ValueError(f"{where}: stride {L.stride_h}x{L.stride_w} outside 1 ... 4")
        if not (pt < L.kh and pb < L.kh and pl < L.kw and pr < L.kw):
            raise ValueError(f"{where}: padding {pad} must be smaller than the kernel "
                             f"{L.kh}x{L.kw}")
        if ti.h + pt + pb < L.kh or ti.w + pl + pr < L.kw:
            raise ValueError(f"{where}: kernel {L.kh}x{L.kw} larger than the padded input")
        oh = _conv_out(ti.h, pt, pb, L.kh, L.stride_h)
        ow = _conv_out(ti.w, pl, pr, L.kw, L.stride_w)
        if (to.h, to.w) != (oh, ow):
            raise ValueError(f"{where}: output tensor {i + 1} is {to.h}x{to.w}, the convolution "
                             f"of a {ti.h}x{ti.w} input gives {oh}x{ow}")
        if params != (0,) * 6:
            raise ValueError(f"{where}: params must be zero")
        if L.type == "conv":
            red = L.kh * L.kw * ti.c
            if red > 65536:
                raise ValueError(f"{where}: kh*kw*in.c = {red} exceeds 65536")
            wshape = (to.c, L.kh, L.kw, ti.c)
        elif L.type == "dwconv":
            if to.c != ti.c:
                raise ValueError(f"{where}: out.c {to.c} must equal in.c {ti.c} "
                                 f"(channel multiplier 1)")
            red = L.kh * L.kw
            wshape = (L.kh, L.kw, ti.c)
        else:
            if ti.c > 65536:
                raise ValueError(f"{where}: in.c = {ti.c} exceeds 65536")
            red = ti.c
            wshape = (to.c, ti.c)
    elif L.type == "fc":
        if (L.kh, L.kw, L.stride_h, L.stride_w) != (0, 0, 0, 0) or pad != (0, 0, 0, 0):
            raise ValueError(f"{where}: kh, kw, stride and padding must be 0")
        if (to.h, to.w) != (1, 1):
            raise ValueError(f"{where}: output tensor {i + 1} must be 1 x 1 x out.c")
        red = ti.h * ti.w * ti.c
        if red > 65536:
            raise ValueError(f"{where}: n = in.h*in.w*in.c = {red} exceeds 65536")
        if params != (0,) * 6:
            raise ValueError(f"{where}: params must be zero")
        wshape = (to.c, red)
    else:  # add, avgpool
        if (L.kh, L.kw, L.stride_h, L.stride_w) != (0, 0, 0, 0) or pad != (0, 0, 0, 0):
            raise ValueError(f"{where}: kh, kw, stride and padding must be 0")
        for nm in arrays:
            if getattr(L, nm) is not None:
                raise ValueError(f"{where}: {L.type} has no {nm} array")
        if L.type == "add":
            t1 = tensors[L.in1]
            if not (ti.shape == t1.shape == to.shape):
                raise ValueError(f"{where}: in0 {ti.shape}, in1 {t1.shape} and out {to.shape} "
                                 f"must have the same h, w, c")
            pairs = [(params[0], params[1]), (params[2], params[3]), (params[4], params[5])]
        else:
            if (to.h, to.w, to.c) != (1, 1, ti.c):
                raise ValueError(f"{where}: global average pool output must be 1 x 1 x {ti.c}, "
                                 f"got {to.h} x {to.w} x {to.c}")
            if ti.h * ti.w > (1 << 23):
                raise ValueError(f"{where}: in.h*in.w = {ti.h * ti.w} exceeds 2^23")
            if params[2:] != (0, 0, 0, 0):
                raise ValueError(f"{where}: params[2:6] must be zero")
            pairs = [(params[0], params[1])]
        for M, s in pairs:
            if not 0 <= M <= INT32_MAX:
                raise ValueError(f"{where}: multiplier {M} outside 0 ... 2^31-1")
            if not -31 <= s <= 30:
                raise ValueError(f"{where}: shift {s} outside -31 ... 30")
        return

    # conv, dwconv, pwconv, fc: arrays
    _check_array(where, "weights", L.weights, np.int8, wshape)
    n = to.c
    _check_array(where, "bias", L.bias, np.int32, (n,))
    _check_array(where, "mult", L.mult, np.int32, (n,))
    _check_array(where, "shift", L.shift, np.int32, (n,))
    _check_array(where, "wscale", L.wscale, np.float32, (n,))
    if (L.mult < 0).any():
        raise ValueError(f"{where}: multipliers must be in 0 ... 2^31-1 (non-negative)")
    if ((L.shift < -31) | (L.shift > 30)).any():
        raise ValueError(f"{where}: shifts must be in -31 ... 30")
    if not np.isfinite(L.wscale).all():
        raise ValueError(f"{where}: weight scales must be finite")
    bound = INT32_MAX - _ACC_PER_TERM * red
    if bound < 0:
        raise ValueError(f"{where}: reduction length {red} too long for the int32 accumulator")
    if (np.abs(L.bias.astype(np.int64)) > bound).any():
        raise ValueError(f"{where}: |bias| must be <= 2^31 - 1 - 32640*{red} = {bound}")


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------

def _align(n: int, a: int = ARRAY_ALIGN) -> int:
    return (n + a - 1) // a * a


def _wrap(v: int, bits: int, signed: bool) -> int:
    v = int(v) & ((1 << bits) - 1)
    if signed and v >= 1 << (bits - 1):
        v -= 1 << bits
    return v


def _array_bytes(a, dtype) -> bytes:
    arr = np.asarray(a)
    if arr.dtype != np.dtype(dtype):
        arr = arr.astype(dtype, casting="unsafe")
    return np.ascontiguousarray(arr).astype(np.dtype(dtype).newbyteorder("<"),
                                            copy=False).tobytes()


def write_model(tensors: Sequence[Tensor], layers: Sequence[Layer], num_classes: int,
                class_names: Optional[Sequence[str]] = None, validate: bool = True) -> bytes:
    """Serialise a quantised model into ``.tmpm`` bytes (FORMAT.md version 1).

    ``tensors[0]`` is the input, layer ``i`` writes ``tensors[i + 1]``. With ``validate``
    (the default) every FORMAT.md rule is checked first and a ValueError names the offending
    tensor or layer; with ``validate=False`` whatever is given is written (see module doc).
    """
    layers = [_normalise(L) for L in layers]
    if validate:
        validate_model(tensors, layers, num_classes, class_names)

    nt, nl = len(tensors), len(layers)
    tensor_off = HEADER_SIZE
    layer_off = tensor_off + nt * TENSOR_RECORD_SIZE      # multiple of 16
    pos = layer_off + nl * LAYER_RECORD_SIZE

    blobs: List[Tuple[int, bytes]] = []

    def place(data: bytes) -> int:
        nonlocal pos
        off = _align(pos)
        blobs.append((off, data))
        pos = off + len(data)
        return off

    offsets = []
    for L in layers:
        offs = []
        for nm, dt in (("weights", np.int8), ("bias", np.int32), ("mult", np.int32),
                       ("shift", np.int32), ("wscale", np.float32)):
            a = getattr(L, nm)
            offs.append(0 if a is None else place(_array_bytes(a, dt)))
        offsets.append(offs)

    names_off = names_size = 0
    if class_names is not None:
        block = b"".join(str(nm).encode("utf-8") + b"\0" for nm in class_names)
        names_size = len(block)
        if names_size:
            names_off = place(block)
    total = _align(pos)

    buf = bytearray(total)
    t0 = tensors[0] if nt else Tensor(0, 0, 0, 0.0, 0)
    _HEADER.pack_into(
        buf, 0, MAGIC, VERSION, HEADER_SIZE, total, 0,
        _wrap(t0.h, 16, False), _wrap(t0.w, 16, False), _wrap(t0.c, 16, False),
        _wrap(num_classes, 16, False),
        float(np.float32(t0.scale)), _wrap(t0.zero_point, 32, True),
        _wrap(nt, 16, False), _wrap(nl, 16, False),
        tensor_off, layer_off, names_off, names_size, 0, bytes(8))

    for i, t in enumerate(tensors):
        _TENSOR.pack_into(buf, tensor_off + i * TENSOR_RECORD_SIZE,
                          _wrap(t.h, 16, False), _wrap(t.w, 16, False), _wrap(t.c, 16, False),
                          0, float(np.float32(t.scale)), _wrap(t.zero_point, 32, True))

    for i, (L, offs) in enumerate(zip(layers, offsets)):
        code = LAYER_TYPES.get(L.type, L.type if _is_int(L.type) else 0)
        pt, pl, pb, pr = (tuple(L.pad) + (0, 0, 0, 0))[:4]
        params = (tuple(L.params) + (0,) * 6)[:6]
        _LAYER.pack_into(
            buf, layer_off + i * LAYER_RECORD_SIZE,
            _wrap(code, 8, False), 0,
            _wrap(L.kh, 8, False), _wrap(L.kw, 8, False),
            _wrap(L.stride_h, 8, False), _wrap(L.stride_w, 8, False),
            _wrap(pt, 8, False), _wrap(pl, 8, False), _wrap(pb, 8, False), _wrap(pr, 8, False),
            _wrap(L.act_min, 8, True), _wrap(L.act_max, 8, True),
            _wrap(L.in0, 16, False), NO_INPUT if L.in1 is None else _wrap(L.in1, 16, False),
            _wrap(i + 1 if L.out is None else L.out, 16, False), 0,
            *offs,
            *(_wrap(p, 32, True) for p in params))

    for off, data in blobs:
        buf[off:off + len(data)] = data

    crc = zlib.crc32(bytes(buf[16:total])) & 0xFFFFFFFF
    struct.pack_into("<I", buf, 12, crc)
    return bytes(buf)


def _normalise(L: Layer) -> Layer:
    """pwconv records always carry kh = kw = stride = 1; fill them in when left at 0."""
    if L.type == "pwconv" and (L.kh, L.kw, L.stride_h, L.stride_w) == (0, 0, 0, 0):
        return Layer(**{**L.__dict__, "kh": 1, "kw": 1, "stride_h": 1, "stride_w": 1})
    return L


# --------------------------------------------------------------------------------------------
# Small helpers for tests and tools
# --------------------------------------------------------------------------------------------

def read_header(data) -> dict:
    """Decode the 64-byte header (no validation)."""
    (magic, version, header_size, total_size, crc, ih, iw, ic, num_classes, in_scale, in_zp,
     num_tensors, num_layers, toff, loff, coff, csize, flags, reserved) = \
        _HEADER.unpack_from(bytes(data[:HEADER_SIZE]))
    return dict(magic=magic, version=version, header_size=header_size, total_size=total_size,
                crc32=crc, input_h=ih, input_w=iw, input_c=ic, num_classes=num_classes,
                input_scale=in_scale, input_zero_point=in_zp, num_tensors=num_tensors,
                num_layers=num_layers, tensor_table_off=toff, layer_table_off=loff,
                class_names_off=coff, class_names_size=csize, flags=flags, reserved=reserved)


def fix_crc(data) -> bytes:
    """Recompute the CRC field over [16, total_size) (after a test patched some bytes)."""
    buf = bytearray(data)
    total = struct.unpack_from("<I", buf, 8)[0]
    total = min(total, len(buf))
    struct.pack_into("<I", buf, 12, zlib.crc32(bytes(buf[16:total])) & 0xFFFFFFFF)
    return bytes(buf)
