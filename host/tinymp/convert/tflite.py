"""TFLite int8 importer: a per-channel-quantised int8 ``.tflite`` classifier -> ``.tmpm`` bytes.

OpenMV users arrive with int8 ``.tflite`` models (often from Edge Impulse). This module reads the
flatbuffer with the ``tflite`` package (generated accessors of the TFLite schema; ``pip install
tflite flatbuffers``) and maps the graph, op by op, onto the six layer types of docs/FORMAT.md,
computing every requantisation constant exactly as TFLite's kernels compute theirs, so that the
converted model gives the same int8 results as TFLite's integer kernels (see "Agreement"
below for the exact statement).

API
---
::

    from_tflite(model, class_names=None) -> bytes            # .tmpm
    convert_tflite(model, class_names=None) -> TFLiteConversion
        .data         the .tmpm bytes
        .tensor_map   tinymp tensor i -> index of the TFLite tensor holding the same int8 values
        .notes        what was dropped / folded / approximated, one string each

``model`` is the flatbuffer (bytes-like) or a path. Errors raise
:class:`tinymp.convert.errors.ConversionError` naming the op index, its opcode name and a hint::

    tinymp convert: op 3 (MAX_POOL_2D) is not supported: tinymp has no max pooling; ...

Operator mapping
----------------
=====================  ======================================================================
TFLite                 tinymp
=====================  ======================================================================
CONV_2D                ``conv``; ``pwconv`` when 1x1, stride 1 and no padding. Weights OHWI =
                       ``[Cout][kh][kw][Cin]``. Dilation != 1 and grouped convs are rejected.
DEPTHWISE_CONV_2D      ``dwconv`` (channel multiplier 1 only); weights ``[1][kh][kw][C]`` ->
                       ``[kh][kw][C]``.
FULLY_CONNECTED        ``fc``; per-tensor weight scales are broadcast to per-channel arrays.
                       TFLite flattens a ``[1, H, W, C]`` input in HWC order, as tinymp does.
ADD                    ``add`` (same shapes only, no broadcasting), TFLite's multipliers with
                       the 20-bit left shift.
MEAN over H, W         ``avgpool`` (global); also ``AVERAGE_POOL_2D`` whose window covers the
                       whole input. Constants below.
RESHAPE, SQUEEZE       no-ops (aliases) when they only change how the same bytes are viewed on
                       the way to FULLY_CONNECTED or to the output (e.g. dropping 1-dims).
PAD, PADV2             folded into the padding of the CONV_2D / DEPTHWISE_CONV_2D they feed
                       (Keras' ZeroPadding2D before a stride-2 convolution).
RELU, RELU6,           standalone activations with equal input and output quantisation are
RELU_N1_TO_1           folded into the clamp of the layer that produces their input.
SOFTMAX (at the end)   dropped: tinymp returns the logits that feed the softmax (the argmax
                       is the same, the values are pre-softmax).
QUANTIZE, DEQUANTIZE   only at the graph edges: a float (or uint8) input followed by QUANTIZE
                       takes the quantised tensor as the tinymp input (feed tinymp int8 values
                       with its scale / zero point); QUANTIZE / DEQUANTIZE on the way to the
                       output are dropped (tinymp reports the int8 logits dequantised).
=====================  ======================================================================

Anything else is rejected, never skipped. Fused activations NONE / RELU / RELU6 / RELU_N1_TO_1
give ``act_min / act_max`` exactly as TFLite's ``CalculateActivationRangeQuantized`` (float32
``f / scale``, rounded half away from zero, clamped to int8); TANH / SIGN_BIT are rejected.
Padding SAME / VALID is TFLite's ``ComputePaddingHeightWidth``: ``total = max((out - 1) * stride
+ k - in, 0)``, ``top = total // 2``, ``bottom = total - top`` (likewise left / right).

Quantisation constants
----------------------
* conv / dwconv / pwconv / fc: per output channel ``QuantizeMultiplier(double(s_in) *
  double(s_w[o]) / double(s_out))`` (TFLite's ``PopulateConvolutionQuantizationParams`` and
  ``GetQuantizedConvolutionMultipler``); per-tensor weight scales are broadcast; bias int32 as
  stored (zeros when absent).
* add: ``twice_max = 2 * max(s0, s1)``, ``m0 = s0 / twice_max``, ``m1 = s1 / twice_max``,
  ``mo = twice_max / (2^20 * s_out)`` in double, as TFLite's int8 ADD.
* MEAN -> avgpool: TFLite's own MEAN constants (``reference_ops::QuantizedMeanOrSum``):
  ``(M0, s0) = QuantizeMultiplier(s_in / s_out)``, ``shift = min(floor(log2 P), 32, 31 + s0)``,
  ``M = (M0 << shift) / P``, ``s = s0 - shift``. Its kernel then computes
  ``MultiplyByQuantizedMultiplier(sum(x - zp_in), M, s) + zp_out``, which is tinymp's avgpool:
  bit-exact. (A different encoding of the real multiplier ``s_in / (s_out * P)`` than
  ``QuantizeMultiplier`` of it; any ``M`` in ``[0, 2^31 - 1]`` is valid .tmpm.)
* AVERAGE_POOL_2D -> avgpool (TFLite needs equal input / output quantisation and computes
  ``round_half_away(sum(x) / P)``): ``s = 0, M = round(2^31 / P)``, a single rounding of
  ``sum(x - zp) / P``; exact when ``P`` is odd, and when it is even only exact ties
  (``sum / P = k + 1/2``) may round 1 LSB differently (see ``_pool_multiplier``).

Agreement with the TFLite interpreter (tests/test_convert_tflite.py)
------------------------------------------------------------------
Against TFLite's reference kernels (``OpResolverType.BUILTIN_REF``), given the same input
tensor, conv / dwconv / pwconv / add / MEAN are bit-exact. FULLY_CONNECTED is the exception:
TFLite's *desktop reference* FC rounds ``acc * s_in * s_w / s_out`` in double, while tinymp (like
TFLite's integer FC path and TFLite Micro) applies the integer multiplier with
MultiplyByQuantizedMultiplier's double rounding; they differ by 1 LSB on ~0.5 % of outputs.
TFLite's optimised x86 kernels round some 1x1-conv / FC gemm paths and the keep_dims MEAN
differently again (1 LSB per layer), so against them deep models drift by a few LSB -- exactly
as far as TFLite's optimised kernels drift from its own reference kernels.

SOFTMAX at the end is dropped: tinymp's ``logits`` are the pre-softmax values and its
``predict`` their argmax (the same class as the softmax's argmax).

What ``.tmpm`` cannot express (rejected with a hint): uint8 / int16 / float activations inside
the graph, per-channel activation quantisation, dilation, depth multiplier > 1, broadcasting adds,
requantising QUANTIZE / RESHAPE / RELU ops, pooling windows other than global, reshapes that
change the spatial layout, batch > 1, more than one input or output, max pooling, concatenation,
multiplication, hard-swish, sigmoid and every other op not listed above.
"""

from __future__ import annotations

import heapq
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..modelfile import Layer, Tensor, quantize_multiplier, write_model
from .errors import ConversionError, check_classes, detail, shown

__all__ = ["from_tflite", "convert_tflite", "TFLiteConversion"]

INT32_MAX = (1 << 31) - 1
_ACC_PER_TERM = 32640

# TensorType values of the TFLite schema
_FLOAT32, _INT32, _UINT8, _INT64, _INT16, _INT8 = 0, 2, 3, 4, 7, 9
_TYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string",
               6: "bool", 7: "int16", 9: "int8", 10: "float64", 15: "uint32", 16: "uint16",
               17: "int4", 18: "bfloat16"}
# ActivationFunctionType
_ACT_NAMES = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}

_HINTS = {
    "MAX_POOL_2D": "tinymp has no max pooling; replace it with a stride-2 convolution, or with "
                   "a global average pool before the classifier",
    "HARD_SWISH": "replace hard-swish with ReLU6 (e.g. MobileNetV3 -> MobileNetV2)",
    "LOGISTIC": "sigmoid / squeeze-and-excitation blocks are not supported",
    "MUL": "elementwise multiplication (squeeze-and-excitation, attention) is not supported",
    "CONCATENATION": "tinymp has no concatenation; use a single-branch or residual (ADD) network",
    "SUB": "only ADD of two equally shaped tensors is supported",
    "TANH": "use ReLU / ReLU6 activations",
    "LEAKY_RELU": "use ReLU / ReLU6 activations",
    "PRELU": "use ReLU / ReLU6 activations",
    "RESIZE_BILINEAR": "resize the image before the model (e.g. with OpenMV's image API)",
    "RESIZE_NEAREST_NEIGHBOR": "resize the image before the model",
    "TRANSPOSE": "tinymp activations are HWC; transposes cannot be expressed",
    "STRIDED_SLICE": "slicing cannot be expressed",
    "CUSTOM": "custom operators cannot be converted",
}
_DEFAULT_HINT = ("tinymp supports CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, global "
                 "MEAN / AVERAGE_POOL_2D, RESHAPE / SQUEEZE, PAD, RELU / RELU6, and SOFTMAX / "
                 "QUANTIZE / DEQUANTIZE at the graph edges")


def _import_tflite():
    try:
        import tflite  # noqa: F401  (the PyPI package with the generated schema accessors)
        from tflite.utils import BUILTIN_OPCODE2NAME  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("tinymp.convert.tflite needs the 'tflite' and 'flatbuffers' packages "
                          "(pip install tflite flatbuffers)") from e
    return tflite


# --------------------------------------------------------------------------------------------
# Parsed flatbuffer
# --------------------------------------------------------------------------------------------

@dataclass
class _T:
    """One TFLite tensor."""
    index: int
    name: str
    type: int
    shape: Tuple[int, ...]
    data: Optional[np.ndarray]           # raw bytes (uint8) of a constant tensor, else None
    scales: Optional[np.ndarray]         # float32, None when not quantised
    zero_points: Optional[np.ndarray]    # int64
    qdim: int

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.type, f"type {self.type}")

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def values(self, dtype) -> np.ndarray:
        need = self.size * np.dtype(dtype).itemsize
        if self.data is None or self.data.size != need:
            have = 0 if self.data is None else self.data.size
            raise ConversionError(
                f"tinymp convert: tensor {self.index} '{shown(self.name)}' holds {have} bytes of "
                f"data, its shape {list(self.shape)} of {self.type_name} needs {need}; the file "
                "is damaged")
        return np.frombuffer(self.data.tobytes(), dtype=dtype).reshape(self.shape)


@dataclass
class _Op:
    index: int
    code: int
    name: str
    inputs: List[int]
    outputs: List[int]
    raw: object                          # the tflite.Operator accessor


@dataclass
class TFLiteConversion:
    """Result of :func:`convert_tflite`."""
    data: bytes
    tensor_map: List[int]
    notes: List[str] = field(default_factory=list)


def _load(model) -> bytes:
    if isinstance(model, (str, os.PathLike)):
        try:
            with open(model, "rb") as f:
                return f.read()
        except OSError as e:        # a folder, no permission, a vanished file
            raise ConversionError(f"tinymp convert: cannot read {shown(os.fspath(model))!r}: "
                                  f"{e.strerror or e}") from None
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    raise TypeError(f"from_tflite: expected bytes or a path, got {type(model).__name__}")


def _parse(buf: bytes):
    tfl = _import_tflite()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ConversionError("tinymp convert: not a TFLite flatbuffer (file identifier 'TFL3' "
                              "missing)")
    try:
        return _parse_fb(tfl, buf)
    except ConversionError:
        raise
    except Exception as e:   # a corrupt flatbuffer fails inside the generated accessors
        raise ConversionError(f"tinymp convert: cannot read the TFLite flatbuffer, the file is "
                              f"damaged or truncated ({detail(e, 200)})") from e


class _Budget:
    """Counts the vector entries the parser reads. In a well-formed flatbuffer every entry has
    bytes of its own (4 or more here), so a file of n bytes has fewer than n of them; damaged
    lengths or offsets that make vectors overlap must not make the parser loop for hours."""

    def __init__(self, size: int):
        self.size = size
        self.left = size + 1024

    def __call__(self, n: int, what: str) -> int:
        n = int(n)
        self.left -= n
        if n < 0 or self.left < 0:
            raise ConversionError(f"tinymp convert: the TFLite file declares more {what} than "
                                  f"its {self.size} bytes can hold; the file is damaged")
        return n


def _parse_fb(tfl, buf: bytes):
    from tflite.utils import BUILTIN_OPCODE2NAME
    count = _Budget(len(buf))
    m = tfl.Model.GetRootAs(buf, 0)
    nsub = m.SubgraphsLength()
    if nsub < 1:
        raise ConversionError("tinymp convert: the TFLite model has no subgraph")
    sg = m.Subgraphs(0)

    opnames = []
    for j in range(count(m.OperatorCodesLength(), "operator codes")):
        oc = m.OperatorCodes(j)
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        name = BUILTIN_OPCODE2NAME.get(code, f"BUILTIN_{code}")
        if name == "CUSTOM":
            cc = oc.CustomCode()
            name = f"CUSTOM({cc.decode('utf-8', 'replace') if cc else '?'})"
        opnames.append((code, name))

    tensors: List[_T] = []
    nbuf = m.BuffersLength()
    for j in range(count(sg.TensorsLength(), "tensors")):
        t = sg.Tensors(j)
        name = t.Name()
        name = name.decode("utf-8", "replace") if name else f"t{j}"
        shape = tuple(int(t.Shape(k)) for k in range(count(t.ShapeLength(), "dimensions")))
        if any(d < 0 for d in shape):
            raise ConversionError(f"tinymp convert: tensor {j} '{shown(name)}' has the shape "
                                  f"{list(shape)}; dimensions cannot be negative")
        data = None
        bi = int(t.Buffer())
        if bi >= nbuf and bi != 0:
            raise ConversionError(f"tinymp convert: tensor {j} '{shown(name)}' refers to buffer "
                                  f"{bi}, the model has {nbuf}; the file is damaged")
        if 0 < bi:
            b = m.Buffers(bi)
            off = int(b.Offset()) if hasattr(b, "Offset") else 0
            if off > 1:                       # large models keep their data outside the table
                size = int(b.Size())
                if off + size > len(buf):
                    raise ConversionError(f"tinymp convert: buffer {bi} lies at bytes {off} ... "
                                          f"{off + size} of a {len(buf)}-byte file; the file is "
                                          "damaged or truncated")
                data = np.frombuffer(buf, np.uint8, size, off)
            elif b.DataLength() > 0:
                data = b.DataAsNumpy()
        scales = zps = None
        qdim = 0
        q = t.Quantization()
        if q is not None and q.ScaleLength() > 0:
            scales = np.array([q.Scale(k) for k in range(count(q.ScaleLength(), "scales"))],
                              np.float32)
            zps = np.array([q.ZeroPoint(k)
                            for k in range(count(q.ZeroPointLength(), "zero points"))], np.int64)
            if zps.size == 0:
                zps = np.zeros(scales.size, np.int64)
            qdim = int(q.QuantizedDimension())
        tensors.append(_T(j, name, int(t.Type()), shape, data, scales, zps, qdim))

    nt = len(tensors)

    def indices(vec, n, what, optional=False):
        out = [int(vec(k)) for k in range(count(n, what))]
        for i in out:
            if not (0 <= i < nt or (optional and i == -1)):
                raise ValueError(f"{what} refer to tensor {i}, the model has {nt} tensors")
        return out

    ops: List[_Op] = []
    for j in range(count(sg.OperatorsLength(), "operators")):
        o = sg.Operators(j)
        k = int(o.OpcodeIndex())
        if not 0 <= k < len(opnames):
            raise ConversionError(f"tinymp convert: op {j} has operator code {k}, the model has "
                                  f"{len(opnames)}; the file is damaged")
        code, name = opnames[k]
        try:
            op_ins = indices(o.Inputs, o.InputsLength(), "inputs", optional=True)
            op_outs = indices(o.Outputs, o.OutputsLength(), "outputs")
        except ValueError as e:
            raise ConversionError(f"tinymp convert: op {j} ({name}): its {e}; the file is "
                                  "damaged") from None
        ops.append(_Op(j, code, name, op_ins, op_outs, o))
    try:
        ins = indices(sg.Inputs, sg.InputsLength(), "inputs")
        outs = indices(sg.Outputs, sg.OutputsLength(), "outputs")
    except ValueError as e:
        raise ConversionError(f"tinymp convert: the model's {e}; the file is damaged") from None
    return tfl, tensors, ops, ins, outs, nsub


def _options(tfl, op: _Op, cls_name: str):
    tab = op.raw.BuiltinOptions()
    if tab is None:
        return None
    o = getattr(tfl, cls_name)()
    o.Init(tab.Bytes, tab.Pos)
    return o


# --------------------------------------------------------------------------------------------
# TFLite arithmetic helpers
# --------------------------------------------------------------------------------------------

def _round_half_away_f32(v) -> int:
    """std::round of a float32 value (TfLiteRound)."""
    v = float(v)
    if not math.isfinite(v):
        return int(math.copysign(1 << 40, v))
    f = math.floor(abs(v) + 0.5)
    return int(math.copysign(f, v))


def _act_range(act: int, scale: float, zp: int) -> Tuple[int, int]:
    """CalculateActivationRangeQuantized for int8 (float32 ``f / scale``)."""
    s = np.float32(scale)

    def quantize(f: float) -> int:
        with np.errstate(over="ignore"):
            return int(zp) + _round_half_away_f32(np.float32(f) / s)

    lo, hi = -128, 127
    if act == 1:       # RELU
        return max(lo, quantize(0.0)), hi
    if act == 3:       # RELU6
        return max(lo, quantize(0.0)), min(hi, quantize(6.0))
    if act == 2:       # RELU_N1_TO_1
        return max(lo, quantize(-1.0)), min(hi, quantize(1.0))
    return lo, hi


def _same_pad(n: int, k: int, s: int, out: int) -> Tuple[int, int]:
    """TFLite ComputePaddingWithOffset (dilation 1): (before, after)."""
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _out_size(padding: int, n: int, k: int, s: int) -> int:
    """TFLite ComputeOutSize (dilation 1); padding 0 = SAME, 1 = VALID."""
    if padding == 0:
        return (n + s - 1) // s
    return (n + s - k) // s


def _mean_multiplier(base: Tuple[int, int], n: int) -> Tuple[int, int]:
    """(M, s) of TFLite's int8 MEAN (reference_ops::QuantizedMeanOrSum).

    ``base`` is QuantizeMultiplier(s_in / s_out); TFLite folds ``1 / n`` into it as
    ``shift = min(floor(log2 n), 32, 31 + s0)``, ``M = (M0 << shift) / n`` (truncating),
    ``s = s0 - shift``, then applies MultiplyByQuantizedMultiplier to ``sum(x - zp_in)``:
    exactly tinymp's avgpool with these constants.
    """
    M0, s0 = base
    shift = min(n.bit_length() - 1, 32, 31 + s0)
    return (M0 << shift) // n, s0 - shift


def _pool_multiplier(n: int) -> Tuple[int, int]:
    """(M, s) for AVERAGE_POOL_2D over n pixels with equal input / output quantisation.

    TFLite computes ``round_half_away(sum(x) / n)``. ``s = 0, M = round(2^31 / n)`` makes
    tinymp's requant a single rounding of ``sum(x - zp) * M / 2^31``, which is within
    ``255 * n * 2^-32`` of ``sum(x - zp) / n``: below the ``1 / (2n)`` distance of any non-tie
    quotient to a rounding boundary while ``n < 2900``, so only exact ties (even ``n``) can
    round differently. Larger pools fall back to QuantizeMultiplier(1 / n).
    """
    if 2 <= n < 2900:
        return ((1 << 31) + n // 2) // n, 0
    return quantize_multiplier(1.0 / n)


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------

@dataclass
class _Val:
    """What a TFLite activation tensor is on the tinymp side."""
    tid: int                             # the tinymp tensor holding its bytes
    view: Tuple[int, ...]                # its TFLite shape
    pad: Tuple[int, int, int, int] = (0, 0, 0, 0)   # pending PAD (t, l, b, r) to fold
    pad_op: Optional[int] = None


class _Converter:
    def __init__(self, buf: bytes, class_names):
        (self.tfl, self.T, self.ops, self.ins, self.outs, nsub) = _parse(buf)
        self.class_names = class_names
        self.notes: List[str] = []
        self.tensors: List[Tensor] = []
        self.layers: List[Layer] = []
        self.tmap: List[int] = []
        self.handled = set()                 # ops consumed by setup_input (input QUANTIZE)
        self.val: Dict[int, _Val] = {}
        self.producer: Dict[int, int] = {}
        self.consumers: Dict[int, List[int]] = {}
        self.tail_memo: Dict[int, bool] = {}     # is_tail's answers
        for op in self.ops:
            for t in op.outputs:
                self.producer[t] = op.index
            for t in op.inputs:
                if t >= 0:
                    self.consumers.setdefault(t, []).append(op.index)
        if nsub > 1:
            self.notes.append(f"the model has {nsub} subgraphs; only subgraph 0 is converted")

    # -- messages ------------------------------------------------------------------------

    def err(self, op: _Op, msg: str, hint: str = "") -> ConversionError:
        text = f"tinymp convert: op {op.index} ({op.name}): {msg}"
        if hint:
            text += f"; {hint}"
        return ConversionError(text)

    def unsupported(self, op: _Op) -> ConversionError:
        base = op.name.split("(")[0]
        hint = _HINTS.get(base, _DEFAULT_HINT)
        return ConversionError(f"tinymp convert: op {op.index} ({op.name}) is not supported: "
                               f"{hint}")

    # -- tensor checks -------------------------------------------------------------------

    def act_tensor(self, op: _Op, ti: int, what: str) -> _T:
        """An int8 per-tensor-quantised activation tensor."""
        t = self.T[ti]
        if t.type != _INT8:
            raise self.err(op, f"{what} tensor {ti} '{shown(t.name)}' is {t.type_name}",
                           "tinymp runs int8 models only: convert with full-integer int8 "
                           "quantisation (not uint8, int16 or float)")
        if t.scales is None:
            raise self.err(op, f"{what} tensor {ti} '{shown(t.name)}' has no quantisation "
                               "parameters")
        if t.scales.size != 1:
            raise self.err(op, f"{what} tensor {ti} '{shown(t.name)}' is quantised per channel",
                           "activations must have one scale and zero point")
        s = float(t.scales[0])
        zp = int(t.zero_points[0]) if t.zero_points.size else 0
        if not (math.isfinite(s) and s > 0):
            raise self.err(op, f"{what} tensor {ti} '{shown(t.name)}' has scale {s}")
        if not -128 <= zp <= 127:
            raise self.err(op, f"{what} tensor {ti} '{shown(t.name)}' has zero point {zp}")
        return t

    @staticmethod
    def qp(t: _T) -> Tuple[float, int]:
        return float(t.scales[0]), int(t.zero_points[0]) if t.zero_points.size else 0

    def input_val(self, op: _Op, k: int, allow_pad: bool = False) -> _Val:
        if k >= len(op.inputs) or op.inputs[k] < 0:
            raise self.err(op, f"input {k} is missing")
        ti = op.inputs[k]
        v = self.val.get(ti)
        if v is None:
            t = self.T[ti]
            if t.data is not None:
                raise self.err(op, f"input {k} (tensor {ti} '{shown(t.name)}') is a constant",
                               "tinymp layers take constants only as weights and biases")
            raise self.err(op, f"input {k} (tensor {ti} '{shown(t.name)}') is not produced by a "
                               f"supported op")
        if v.pad_op is not None and not allow_pad:
            pop = self.ops[v.pad_op]
            raise self.err(op, f"its input comes from op {pop.index} ({pop.name})",
                           "only a PAD that feeds CONV_2D / DEPTHWISE_CONV_2D can be folded")
        return v

    def spatial_input(self, op: _Op, k: int = 0, allow_pad: bool = False):
        """Input k as an NHWC tensor: (val, tinymp Tensor, (h, w, c) as TFLite sees it)."""
        v = self.input_val(op, k, allow_pad)
        t = self.tensors[v.tid]
        if len(v.view) != 4 or v.view[0] != 1:
            raise self.err(op, f"input {k} has shape {list(v.view)}",
                           "expected a 4-D NHWC tensor with batch 1")
        pt, pl, pb, pr = v.pad
        if (t.h + pt + pb, t.w + pl + pr, t.c) != tuple(v.view[1:]):
            raise self.err(op, f"input {k} has shape {list(v.view)} but holds the "
                               f"{t.h}x{t.w}x{t.c} tensor of an earlier layer",
                           "RESHAPEs that change the spatial layout cannot be expressed")
        return v, t, tuple(v.view[1:])

    def weights(self, op: _Op, k: int, ndim: int, qdim: int, nout: int, what: str):
        """Constant int8 weights and their per-output-channel float32 scales."""
        if k >= len(op.inputs) or op.inputs[k] < 0:
            raise self.err(op, f"{what} missing")
        t = self.T[op.inputs[k]]
        if t.data is None:
            raise self.err(op, f"{what} (tensor {t.index} '{shown(t.name)}') are not constant",
                           "tinymp needs constant weights")
        if t.type != _INT8:
            raise self.err(op, f"{what} (tensor {t.index} '{shown(t.name)}') are {t.type_name}",
                           "weights must be int8 (full-integer quantisation; not float16, "
                           "int4 or dynamic-range models)")
        if len(t.shape) != ndim:
            raise self.err(op, f"{what} have shape {list(t.shape)}, expected {ndim} dimensions")
        if t.scales is None:
            raise self.err(op, f"{what} are not quantised")
        if t.zero_points.size and (t.zero_points != 0).any():
            raise self.err(op, f"{what} have non-zero zero points",
                           "weights must be quantised symmetrically")
        if t.scales.size == 1:
            scales = np.full(nout, t.scales[0], np.float32)
        elif t.scales.size == nout and t.qdim == qdim:
            scales = t.scales.astype(np.float32)
        else:
            raise self.err(op, f"{what} have {t.scales.size} scales along dimension {t.qdim}",
                           f"expected per-tensor or per-channel scales along dimension {qdim} "
                           f"({nout} channels)")
        if not (np.isfinite(scales).all() and (scales > 0).all()):
            raise self.err(op, f"{what} have a non-positive or non-finite scale")
        return t.values(np.int8), scales

    def bias(self, op: _Op, k: int, nout: int) -> np.ndarray:
        if k >= len(op.inputs) or op.inputs[k] < 0:
            return np.zeros(nout, np.int32)
        t = self.T[op.inputs[k]]
        if t.data is None:
            raise self.err(op, f"bias (tensor {t.index}) is not a constant")
        if t.type != _INT32:
            raise self.err(op, f"bias (tensor {t.index}) is {t.type_name}, expected int32")
        if t.size != nout:
            raise self.err(op, f"bias has {t.size} values for {nout} output channels")
        return t.values(np.int32).reshape(nout).copy()

    def out_tensor(self, op: _Op, k: int = 0) -> _T:
        if k >= len(op.outputs):
            raise self.err(op, f"output {k} missing")
        return self.act_tensor(op, op.outputs[k], "output")

    def fused_act(self, op: _Op, act: int, out: _T) -> Tuple[int, int]:
        if act not in (0, 1, 2, 3):
            raise self.err(op, f"fused activation {_ACT_NAMES.get(act, act)} is not supported",
                           "use NONE, RELU, RELU6 or RELU_N1_TO_1")
        return _act_range(act, *self.qp(out))

    def multipliers(self, op: _Op, s_in: float, wscales: np.ndarray, s_out: float):
        mult = np.empty(wscales.size, np.int32)
        shift = np.empty(wscales.size, np.int32)
        for o, sw in enumerate(wscales):
            real = float(s_in) * float(sw) / float(s_out)
            mult[o], shift[o] = self.qm(
                op, real, f"input scale {float(s_in):.3g} x weight scale {float(sw):.3g} "
                          f"(channel {o}) / output scale {float(s_out):.3g}")
        return mult, shift

    def qm(self, op: _Op, real: float, what: str = "") -> Tuple[int, int]:
        try:
            return quantize_multiplier(real)
        except ValueError:
            made = f" ({what})" if what else ""
            raise self.err(op, f"its requantisation multiplier{made} is {real:.3g}, beyond the "
                               "2^30 a .tmpm model can hold",
                           "the model's quantisation scales are inconsistent (a damaged file, or "
                           "a converter that calibrated on values far outside the model's range)"
                           ) from None

    def check_bias(self, op: _Op, bias: np.ndarray, red: int) -> None:
        bound = INT32_MAX - _ACC_PER_TERM * red
        if bound < 0 or (np.abs(bias.astype(np.int64)) > bound).any():
            raise self.err(op, f"a bias exceeds the accumulator bound 2^31 - 1 - 32640*{red}",
                           "the .tmpm format bounds |bias| so the int32 accumulator cannot "
                           "overflow")

    # -- emitting ------------------------------------------------------------------------

    def emit(self, op: _Op, layer: Layer, out: _T, shape3) -> None:
        s, zp = self.qp(out)
        h, w, c = (int(v) for v in shape3)
        self.tensors.append(Tensor(h, w, c, s, zp))
        self.layers.append(layer)
        self.tmap.append(out.index)
        self.val[out.index] = _Val(len(self.tensors) - 1, tuple(out.shape))

    def alias(self, op: _Op, src: _Val, out_index: int) -> None:
        self.val[out_index] = _Val(src.tid, tuple(self.T[out_index].shape), src.pad, src.pad_op)

    # -- graph-level ---------------------------------------------------------------------

    def is_tail(self, ti: int) -> bool:
        """True when tensor ti reaches the graph output only through ops that may be dropped.

        Iterative (a file may hold a chain of thousands of RESHAPEs: no recursion limit) and
        memoised; a tensor met again while its own answer is pending (a cycle) is not a tail.
        """
        memo = self.tail_memo
        pending = set()
        stack = [ti]
        while stack:
            t = stack[-1]
            if t in memo:
                stack.pop()
                continue
            pending.add(t)
            if t in self.outs or not self.consumers.get(t):
                memo[t] = t in self.outs and not self.consumers.get(t)
                continue
            answer, todo = True, []
            for j in self.consumers[t]:
                op = self.ops[j]
                if (op.name not in ("SOFTMAX", "DEQUANTIZE", "QUANTIZE", "RESHAPE", "SQUEEZE")
                        or op.inputs[0] != t):
                    answer = False
                    break
                for o in op.outputs:
                    if o in memo:
                        answer = answer and memo[o]
                    elif o in pending:
                        answer = False
                    else:
                        todo.append(o)
            if answer and todo:
                stack.extend(todo)
            else:
                memo[t] = answer
        return memo[ti]

    def order(self, out_t: int) -> List[_Op]:
        """The ops the output depends on, in a topological order (stored order when valid)."""
        needed = set()
        stack = [out_t]
        seen_t = set()
        while stack:
            t = stack.pop()
            if t in seen_t:
                continue
            seen_t.add(t)
            j = self.producer.get(t)
            if j is None or j in needed:
                continue
            needed.add(j)
            stack.extend(x for x in self.ops[j].inputs if x >= 0)
        for op in self.ops:
            if op.index not in needed:
                raise self.err(op, "does not contribute to the model output",
                               "tinymp models have one output; remove the unused branch")
        deps = {j: {self.producer[t] for t in self.ops[j].inputs
                    if t >= 0 and t in self.producer} for j in needed}
        users: Dict[int, List[int]] = {}
        for j, ds in deps.items():
            for d in ds:
                users.setdefault(d, []).append(j)
        indeg = {j: len(ds) for j, ds in deps.items()}
        heap = [j for j, n in indeg.items() if n == 0]
        heapq.heapify(heap)
        out = []
        while heap:
            j = heapq.heappop(heap)
            out.append(self.ops[j])
            for u in users.get(j, []):
                indeg[u] -= 1
                if indeg[u] == 0:
                    heapq.heappush(heap, u)
        if len(out) != len(needed):
            raise ConversionError("tinymp convert: the TFLite graph has a cycle")
        return out

    def run(self) -> TFLiteConversion:
        if len(self.ins) != 1:
            raise ConversionError(f"tinymp convert: the model has {len(self.ins)} inputs; "
                                  f"tinymp models have one image input")
        if len(self.outs) != 1:
            raise ConversionError(f"tinymp convert: the model has {len(self.outs)} outputs; "
                                  f"tinymp models have one classifier output")
        gi, go = self.ins[0], self.outs[0]
        ops = self.order(go)
        self.setup_input(gi)

        for op in ops:
            if op.index in self.handled:
                continue
            handler = getattr(self, "op_" + op.name, None)
            if handler is None:
                raise self.unsupported(op)
            handler(op)

        if go not in self.val:
            raise ConversionError(f"tinymp convert: the model output (tensor {go} "
                                  f"'{shown(self.T[go].name)}') is not computed by a supported op")
        v = self.val[go]
        if not self.layers:
            raise ConversionError("tinymp convert: the model has no layer to convert")
        if v.tid != len(self.tensors) - 1:
            raise ConversionError("tinymp convert: the model output is not the last layer's "
                                  "output")
        last = self.tensors[-1]
        if (last.h, last.w) != (1, 1):
            raise ConversionError(f"tinymp convert: the model output is {last.h} x {last.w} x "
                                  f"{last.c}; tinymp models end in a 1 x 1 x num_classes "
                                  f"classifier output (add a global pool / FULLY_CONNECTED)")
        num_classes = last.c
        check_classes(num_classes)
        names = None
        if self.class_names is not None:
            if isinstance(self.class_names, (str, bytes)):
                raise ConversionError("tinymp convert: class_names must be a list of names, not "
                                      "a single string")
            names = [str(c) for c in self.class_names]
            if len(names) != num_classes:
                raise ConversionError(f"tinymp convert: {len(names)} class names for "
                                      f"{num_classes} classes")
        try:
            data = write_model(self.tensors, self.layers, num_classes, names)
        except ValueError as e:
            raise ConversionError(f"tinymp convert: the converted model breaks a .tmpm rule: "
                                  f"{e}") from e
        return TFLiteConversion(data, list(self.tmap), self.notes)

    # -- input ---------------------------------------------------------------------------

    def setup_input(self, gi: int) -> None:
        t = self.T[gi]
        src = gi
        if t.type != _INT8:
            cons = self.consumers.get(gi, [])
            if (t.type in (_FLOAT32, _UINT8) and len(cons) == 1
                    and self.ops[cons[0]].name == "QUANTIZE"):
                qop = self.ops[cons[0]]
                src = qop.outputs[0]
                qt = self.T[src]
                if qt.type != _INT8:
                    raise self.err(qop, f"quantises the input to {qt.type_name}",
                                   "tinymp runs int8 models only")
                self.handled.add(qop.index)
                self.notes.append(f"op {qop.index} (QUANTIZE): the {t.type_name} input is "
                                  f"quantised first; the tinymp input is its int8 output "
                                  f"(scale {float(qt.scales[0]) if qt.scales is not None else '?'}"
                                  f", zero point "
                                  f"{int(qt.zero_points[0]) if qt.zero_points is not None else '?'})")
                t = qt
            else:
                raise ConversionError(f"tinymp convert: the model input (tensor {gi} "
                                      f"'{shown(t.name)}') is {t.type_name}; tinymp needs an int8 "
                                      f"input (or a float input whose only consumer is QUANTIZE)")
        dummy = _Op(-1, -1, "INPUT", [], [], None)
        self.act_tensor(dummy, src, "model input")
        if len(t.shape) != 4:
            raise ConversionError(f"tinymp convert: the model input has shape {list(t.shape)}; "
                                  f"tinymp needs a rank-4 NHWC image input")
        if t.shape[0] != 1:
            raise ConversionError(f"tinymp convert: the model input has batch {t.shape[0]}; "
                                  f"tinymp runs batch 1")
        s, zp = self.qp(t)
        self.tensors.append(Tensor(int(t.shape[1]), int(t.shape[2]), int(t.shape[3]), s, zp))
        self.tmap.append(src)
        self.val[src] = _Val(0, tuple(t.shape))

    # -- op handlers ---------------------------------------------------------------------

    def _conv_common(self, op: _Op, opts_cls: str):
        o = _options(self.tfl, op, opts_cls)
        if o is None:
            raise self.err(op, "options missing")
        if o.DilationHFactor() != 1 or o.DilationWFactor() != 1:
            raise self.err(op, f"dilation {o.DilationHFactor()}x{o.DilationWFactor()}",
                           "tinymp convolutions have dilation 1")
        return o

    def _spatial(self, op: _Op, o, v: _Val, view, kh: int, kw: int, out: _T, cout: int):
        sh, sw = int(o.StrideH()), int(o.StrideW())
        ih, iw, _ = view
        if sh < 1 or sw < 1:
            raise self.err(op, f"stride {sh}x{sw}")
        padding = int(o.Padding())
        oh, ow = _out_size(padding, ih, kh, sh), _out_size(padding, iw, kw, sw)
        if tuple(out.shape) != (1, oh, ow, cout):
            raise self.err(op, f"output shape {list(out.shape)} does not match the "
                               f"convolution's [1, {oh}, {ow}, {cout}]")
        pt, pb = _same_pad(ih, kh, sh, oh)
        pl, pr = _same_pad(iw, kw, sw, ow)
        t0, l0, b0, r0 = v.pad
        pad = (pt + t0, pl + l0, pb + b0, pr + r0)
        if not (1 <= kh <= 11 and 1 <= kw <= 11):
            raise self.err(op, f"kernel {kh}x{kw}", "tinymp kernels are 1x1 ... 11x11")
        if not (1 <= sh <= 4 and 1 <= sw <= 4):
            raise self.err(op, f"stride {sh}x{sw}", "tinymp strides are 1 ... 4")
        if not (pad[0] < kh and pad[2] < kh and pad[1] < kw and pad[3] < kw):
            raise self.err(op, f"padding (t, l, b, r) = {pad} (including folded PADs) is not "
                               f"smaller than the {kh}x{kw} kernel",
                           "the .tmpm format needs padding < kernel size")
        return (sh, sw), pad, (oh, ow)

    def op_CONV_2D(self, op: _Op) -> None:
        o = self._conv_common(op, "Conv2DOptions")
        v, tin, view = self.spatial_input(op, 0, allow_pad=True)
        xin = self.act_tensor(op, op.inputs[0], "input")
        out = self.out_tensor(op)
        wt = self.T[op.inputs[1]] if len(op.inputs) > 1 and op.inputs[1] >= 0 else None
        if wt is None or len(wt.shape) != 4:
            raise self.err(op, "filter must be a 4-D OHWI tensor")
        cout, kh, kw, cin = wt.shape
        if cin != view[2]:
            raise self.err(op, f"filter has {cin} input channels for a {view[2]}-channel input",
                           "grouped convolutions are not supported")
        w, ws = self.weights(op, 1, 4, 0, cout, "filter weights")
        bias = self.bias(op, 2, cout)
        stride, pad, (oh, ow) = self._spatial(op, o, v, view, kh, kw, out, cout)
        s_in, _ = self.qp(xin)
        s_out, _ = self.qp(out)
        mult, shift = self.multipliers(op, s_in, ws, s_out)
        amin, amax = self.fused_act(op, int(o.FusedActivationFunction()), out)
        common = dict(in0=v.tid, act_min=amin, act_max=amax, bias=bias, mult=mult,
                      shift=shift, wscale=ws)
        if (kh, kw) == (1, 1) and stride == (1, 1) and pad == (0, 0, 0, 0):
            self.check_bias(op, bias, cin)
            layer = Layer("pwconv", kh=1, kw=1, stride_h=1, stride_w=1,
                          weights=np.ascontiguousarray(w.reshape(cout, cin)), **common)
        else:
            if kh * kw * cin > 65536:
                raise self.err(op, f"kh*kw*Cin = {kh * kw * cin} exceeds 65536")
            self.check_bias(op, bias, kh * kw * cin)
            layer = Layer("conv", kh=kh, kw=kw, stride_h=stride[0], stride_w=stride[1],
                          pad=pad, weights=np.ascontiguousarray(w), **common)
        self.emit(op, layer, out, (oh, ow, cout))

    def op_DEPTHWISE_CONV_2D(self, op: _Op) -> None:
        o = self._conv_common(op, "DepthwiseConv2DOptions")
        v, tin, view = self.spatial_input(op, 0, allow_pad=True)
        xin = self.act_tensor(op, op.inputs[0], "input")
        out = self.out_tensor(op)
        wt = self.T[op.inputs[1]] if len(op.inputs) > 1 and op.inputs[1] >= 0 else None
        if wt is None or len(wt.shape) != 4 or wt.shape[0] != 1:
            raise self.err(op, "filter must be a [1, kh, kw, C] tensor")
        _, kh, kw, cout = wt.shape
        c = view[2]
        if cout != c:
            raise self.err(op, f"depth multiplier {cout // c if c else '?'} ({c} -> {cout} "
                               f"channels)", "tinymp depthwise convolutions have multiplier 1")
        w, ws = self.weights(op, 1, 4, 3, c, "filter weights")
        bias = self.bias(op, 2, c)
        stride, pad, (oh, ow) = self._spatial(op, o, v, view, kh, kw, out, c)
        s_in, _ = self.qp(xin)
        s_out, _ = self.qp(out)
        mult, shift = self.multipliers(op, s_in, ws, s_out)
        amin, amax = self.fused_act(op, int(o.FusedActivationFunction()), out)
        self.check_bias(op, bias, kh * kw)
        layer = Layer("dwconv", in0=v.tid, kh=kh, kw=kw, stride_h=stride[0],
                      stride_w=stride[1], pad=pad, act_min=amin, act_max=amax,
                      weights=np.ascontiguousarray(w[0]), bias=bias, mult=mult, shift=shift,
                      wscale=ws)
        self.emit(op, layer, out, (oh, ow, c))

    def op_FULLY_CONNECTED(self, op: _Op) -> None:
        o = _options(self.tfl, op, "FullyConnectedOptions")
        v = self.input_val(op, 0)
        xin = self.act_tensor(op, op.inputs[0], "input")
        out = self.out_tensor(op)
        tin = self.tensors[v.tid]
        n_hold = tin.h * tin.w * tin.c
        wt = self.T[op.inputs[1]] if len(op.inputs) > 1 and op.inputs[1] >= 0 else None
        if wt is None or len(wt.shape) != 2:
            raise self.err(op, "weights must be a 2-D [out, in] tensor")
        nout, n = wt.shape
        if o is not None and int(o.WeightsFormat()) != 0:
            raise self.err(op, "shuffled weights format", "use the DEFAULT weights format")
        if xin.size != n or n != n_hold:
            raise self.err(op, f"input of {xin.size} values ({n_hold} in the tinymp tensor) "
                               f"for {n} weights per output",
                           "tinymp's fc runs batch 1 on the whole flattened input")
        if out.size != nout:
            raise self.err(op, f"output has {out.size} values for {nout} outputs")
        if n > 65536:
            raise self.err(op, f"{n} inputs exceed 65536")
        w, ws = self.weights(op, 1, 2, 0, nout, "weights")
        bias = self.bias(op, 2, nout)
        s_in, _ = self.qp(xin)
        s_out, _ = self.qp(out)
        mult, shift = self.multipliers(op, s_in, ws, s_out)
        act = int(o.FusedActivationFunction()) if o is not None else 0
        amin, amax = self.fused_act(op, act, out)
        self.check_bias(op, bias, n)
        layer = Layer("fc", in0=v.tid, act_min=amin, act_max=amax,
                      weights=np.ascontiguousarray(w), bias=bias, mult=mult, shift=shift,
                      wscale=ws)
        self.emit(op, layer, out, (1, 1, nout))

    def op_ADD(self, op: _Op) -> None:
        if len(op.inputs) != 2:
            raise self.err(op, f"{len(op.inputs)} inputs")
        v0, t0, view0 = self.spatial_input(op, 0)
        v1, t1, view1 = self.spatial_input(op, 1)
        x0 = self.act_tensor(op, op.inputs[0], "input 0")
        x1 = self.act_tensor(op, op.inputs[1], "input 1")
        out = self.out_tensor(op)
        if view0 != view1 or tuple(out.shape[1:]) != view0 or len(out.shape) != 4:
            raise self.err(op, f"inputs have shapes {list(v0.view)} and {list(v1.view)} "
                               f"(output {list(out.shape)})",
                           "tinymp's add needs two equally shaped inputs (no broadcasting)")
        o = _options(self.tfl, op, "AddOptions")
        act = int(o.FusedActivationFunction()) if o is not None else 0
        amin, amax = self.fused_act(op, act, out)
        s0, _ = self.qp(x0)
        s1, _ = self.qp(x1)
        so, _ = self.qp(out)
        twice_max = 2.0 * max(s0, s1)
        params = []
        for real in (s0 / twice_max, s1 / twice_max, twice_max / ((1 << 20) * so)):
            params.extend(self.qm(op, real, f"2 x max(input scales {s0:.3g}, {s1:.3g}) / "
                                            f"(2^20 x output scale {so:.3g})"))
        layer = Layer("add", in0=v0.tid, in1=v1.tid, act_min=amin, act_max=amax,
                      params=tuple(int(p) for p in params))
        self.emit(op, layer, out, view0)

    def _avgpool(self, op: _Op, v: _Val, view, out: _T, act: int, M: int, s: int,
                 what: str) -> None:
        h, w, c = view
        if h * w > (1 << 23):
            raise self.err(op, f"{h}x{w} input exceeds 2^23 pixels")
        amin, amax = self.fused_act(op, act, out)
        layer = Layer("avgpool", in0=v.tid, act_min=amin, act_max=amax,
                      params=(int(M), int(s), 0, 0, 0, 0))
        self.notes.append(f"op {op.index} ({op.name}) -> avgpool: {what}")
        self.emit(op, layer, out, (1, 1, c))

    def op_MEAN(self, op: _Op) -> None:
        v, tin, view = self.spatial_input(op, 0)
        xin = self.act_tensor(op, op.inputs[0], "input")
        out = self.out_tensor(op)
        at = self.T[op.inputs[1]] if len(op.inputs) > 1 else None
        if at is None or at.data is None or at.type not in (_INT32, _INT64):
            raise self.err(op, "the axis must be a constant int32 tensor")
        axes = sorted({int(a) % 4 for a in at.values(np.int32 if at.type == _INT32 else
                                                     np.int64).reshape(-1)})
        if axes != [1, 2]:
            raise self.err(op, f"reduces over axes {axes}",
                           "only a global mean over height and width (axes 1, 2) is supported")
        c = view[2]
        if out.size != c:
            raise self.err(op, f"output shape {list(out.shape)} for {c} channels")
        s_in, s_out = float(self.qp(xin)[0]), float(self.qp(out)[0])
        M, sh = _mean_multiplier(self.qm(op, s_in / s_out, f"input scale {s_in:.3g} / output "
                                                           f"scale {s_out:.3g}"),
                                 view[0] * view[1])
        self._avgpool(op, v, view, out, 0, M, sh,
                      "global mean over H, W with TFLite's MEAN multiplier (bit-exact with "
                      "TFLite's reference MEAN kernel)")

    def op_AVERAGE_POOL_2D(self, op: _Op) -> None:
        o = _options(self.tfl, op, "Pool2DOptions")
        v, tin, view = self.spatial_input(op, 0)
        xin = self.act_tensor(op, op.inputs[0], "input")
        out = self.out_tensor(op)
        h, w, c = view
        fh, fw = int(o.FilterHeight()), int(o.FilterWidth())
        sh, sw = int(o.StrideH()), int(o.StrideW())
        padding = int(o.Padding())
        oh, ow = _out_size(padding, h, fh, max(sh, 1)), _out_size(padding, w, fw, max(sw, 1))
        total_pad = sum(_same_pad(h, fh, max(sh, 1), oh)) + sum(_same_pad(w, fw, max(sw, 1), ow))
        if (fh, fw) != (h, w) or (oh, ow) != (1, 1) or total_pad != 0:
            raise self.err(op, f"{fh}x{fw} window over a {h}x{w} input",
                           "only average pooling over the whole input (global) is supported")
        if self.qp(xin) != self.qp(out):
            raise self.err(op, "input and output quantisation differ",
                           "TFLite's int8 AVERAGE_POOL_2D needs equal quantisation")
        if out.size != c:
            raise self.err(op, f"output shape {list(out.shape)} for {c} channels")
        M, sh = _pool_multiplier(h * w)
        self._avgpool(op, v, view, out, int(o.FusedActivationFunction()), M, sh,
                      "average pool over the whole input (exact when H*W is odd; ties of "
                      "sum/(H*W) may round 1 LSB differently when it is even)")

    def _same_quant(self, op: _Op, a: int, b: int) -> bool:
        ta, tb = self.T[a], self.T[b]
        if ta.type != tb.type:
            return False
        if ta.scales is None or tb.scales is None:
            return ta.scales is None and tb.scales is None
        return (np.array_equal(ta.scales, tb.scales)
                and np.array_equal(ta.zero_points, tb.zero_points))

    def _reshape(self, op: _Op) -> None:
        v = self.input_val(op, 0)
        out_i = op.outputs[0]
        if self.T[out_i].size != self.T[op.inputs[0]].size:
            raise self.err(op, "changes the number of elements")
        if not self._same_quant(op, op.inputs[0], out_i):
            raise self.err(op, "input and output quantisation differ",
                           "a requantising reshape cannot be expressed")
        self.alias(op, v, out_i)

    op_RESHAPE = _reshape
    op_SQUEEZE = _reshape

    def op_SOFTMAX(self, op: _Op) -> None:
        v = self.input_val(op, 0)
        if not all(self.is_tail(o) for o in op.outputs):
            raise self.err(op, "is not at the end of the graph",
                           "SOFTMAX is only supported as the last op (it is dropped; tinymp "
                           "returns logits)")
        self.notes.append(f"op {op.index} (SOFTMAX) dropped: tinymp returns the logits that "
                          f"feed it (same argmax)")
        self.alias(op, v, op.outputs[0])

    def op_DEQUANTIZE(self, op: _Op) -> None:
        v = self.input_val(op, 0)
        if not all(self.is_tail(o) for o in op.outputs):
            raise self.err(op, "is inside the graph",
                           "float layers are not supported; DEQUANTIZE may only feed the output")
        self.notes.append(f"op {op.index} (DEQUANTIZE) dropped: tinymp reports the int8 output "
                          f"dequantised")
        self.alias(op, v, op.outputs[0])

    def op_QUANTIZE(self, op: _Op) -> None:
        v = self.input_val(op, 0)
        if all(self.is_tail(o) for o in op.outputs):
            self.notes.append(f"op {op.index} (QUANTIZE) at the output dropped: tinymp reports "
                              f"the int8 values before it, dequantised")
            self.alias(op, v, op.outputs[0])
            return
        if self._same_quant(op, op.inputs[0], op.outputs[0]):
            self.alias(op, v, op.outputs[0])
            return
        raise self.err(op, "requantises inside the graph",
                       "QUANTIZE is only supported on the model input or output")

    def _pad(self, op: _Op) -> None:
        v, tin, view = self.spatial_input(op, 0, allow_pad=True)
        xin = self.act_tensor(op, op.inputs[0], "input")
        out_i = op.outputs[0]
        out = self.out_tensor(op)
        pt_ = self.T[op.inputs[1]] if len(op.inputs) > 1 else None
        if pt_ is None or pt_.data is None or pt_.type not in (_INT32, _INT64):
            raise self.err(op, "paddings must be a constant int32 tensor")
        p = pt_.values(np.int32 if pt_.type == _INT32 else np.int64).reshape(-1, 2)
        if p.shape != (4, 2) or p[0].any() or p[3].any() or (p < 0).any():
            raise self.err(op, f"paddings {p.tolist()}",
                           "only non-negative spatial padding of an NHWC tensor can be folded")
        if not self._same_quant(op, op.inputs[0], out_i):
            raise self.err(op, "input and output quantisation differ")
        _, zp = self.qp(xin)
        if op.name == "PADV2" and len(op.inputs) > 2 and op.inputs[2] >= 0:
            ct = self.T[op.inputs[2]]
            if ct.data is None or ct.type != _INT8 or int(ct.values(np.int8).reshape(-1)[0]) != zp:
                raise self.err(op, "pads with a value other than the zero point",
                               "only zero padding can be folded into a convolution")
        for j in self.consumers.get(out_i, []):
            if self.ops[j].name not in ("CONV_2D", "DEPTHWISE_CONV_2D") or \
                    self.ops[j].inputs[0] != out_i:
                raise self.err(op, f"feeds op {j} ({self.ops[j].name})",
                               "only a PAD that feeds CONV_2D / DEPTHWISE_CONV_2D can be folded")
        if out_i in self.outs:
            raise self.err(op, "is the model output")
        t0, l0, b0, r0 = v.pad
        pad = (t0 + int(p[1, 0]), l0 + int(p[2, 0]), b0 + int(p[1, 1]), r0 + int(p[2, 1]))
        self.val[out_i] = _Val(v.tid, tuple(out.shape), pad, op.index)
        self.notes.append(f"op {op.index} ({op.name}) folded into the padding of the "
                          f"convolution it feeds")

    op_PAD = _pad
    op_PADV2 = _pad

    def _relu(self, op: _Op) -> None:
        v = self.input_val(op, 0)
        ti, to = op.inputs[0], op.outputs[0]
        self.act_tensor(op, ti, "input")
        out = self.out_tensor(op)
        prod = self.producer.get(ti)
        if (v.tid == 0 or prod is None or self.ops[prod].name not in
                ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MEAN",
                 "AVERAGE_POOL_2D") or len(self.consumers.get(ti, [])) != 1 or ti in self.outs):
            raise self.err(op, "standalone activation that cannot be fused",
                           "it must directly follow a CONV_2D / DEPTHWISE_CONV_2D / "
                           "FULLY_CONNECTED / ADD / pool whose output has no other use")
        if not self._same_quant(op, ti, to):
            raise self.err(op, "input and output quantisation differ",
                           "a requantising activation cannot be fused")
        act = {"RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}[op.name]
        lo, hi = _act_range(act, *self.qp(out))
        L = self.layers[v.tid - 1]
        nlo, nhi = max(L.act_min, lo), min(L.act_max, hi)
        if nlo > nhi:
            raise self.err(op, "its clamp and the previous layer's do not overlap")
        L.act_min, L.act_max = int(nlo), int(nhi)
        self.tmap[v.tid] = to
        self.val[to] = _Val(v.tid, tuple(out.shape))
        self.notes.append(f"op {op.index} ({op.name}) fused into the layer that produces its input")

    op_RELU = _relu
    op_RELU6 = _relu
    op_RELU_N1_TO_1 = _relu


def convert_tflite(model: Union[bytes, bytearray, memoryview, str, os.PathLike],
                   class_names: Optional[Sequence[str]] = None) -> TFLiteConversion:
    """Convert an int8 TFLite classifier; returns the .tmpm bytes, the tensor map and notes."""
    buf = _load(model)
    try:
        with np.errstate(all="ignore"):     # every overflow that matters is checked
            return _Converter(buf, class_names).run()
    except (ConversionError, ImportError):
        raise  # an optional package missing is not a corrupt file (the CLI says which)
    except Exception as e:
        # the flatbuffer accessors read lazily: a corrupt offset or length surfaces in whichever
        # op handler reads it first (IndexError, struct.error, numpy's ValueError, ...)
        raise ConversionError(f"tinymp convert: cannot read the TFLite model; the file is "
                              f"corrupt ({detail(e, 200)})") from e


def from_tflite(model: Union[bytes, bytearray, memoryview, str, os.PathLike],
                class_names: Optional[Sequence[str]] = None) -> bytes:
    """Convert an int8 per-channel-quantised ``.tflite`` classifier to ``.tmpm`` bytes.

    ``model`` is the flatbuffer or a path to it; ``class_names`` (optional) are stored in the
    file. Raises :class:`~tinymp.convert.errors.ConversionError` for anything ``.tmpm`` cannot
    express (see the module documentation).
    """
    return convert_tflite(model, class_names).data
