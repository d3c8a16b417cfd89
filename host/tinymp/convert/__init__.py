"""Model importers: PyTorch, ONNX and TFLite models to ``.tmpm``.

::

    import tinymp.convert as tc
    blob = tc.convert(torch_module, calib)          # calib float [N, C, H, W] (NCHW)
    blob = tc.convert("model.onnx", calib)          # bytes or path; ONNX is NCHW too
    blob = tc.convert("model.tflite")               # an int8 TFLite model (already quantised)

``convert(source, calib=None, class_names=None, input_range=None, **kw) -> bytes`` dispatches on
the source: a ``torch.nn.Module`` goes to :func:`from_torch`, an ONNX model (``onnx.ModelProto``,
bytes, or a path ending in ``.onnx``) to :func:`from_onnx`, a TFLite flatbuffer (bytes with
``TFL3`` at offset 4, or a path ending in ``.tflite``) to :func:`from_tflite`. Paths with another
extension are recognised by their first bytes. Extra keywords go to the chosen importer
(e.g. ``input_layout='NHWC'``, ``float_tolerance=...``).

``tinymp.convert.torch.to_graph`` and ``tinymp.convert.onnx.to_graph`` return the checked float
:class:`tinymp.builder.Graph` without quantising it.

``from_torch``, ``from_onnx`` and ``from_tflite`` are attributes of this package that are
imported on first use, and PyTorch / onnx / onnxruntime are imported only when a model of that
kind is converted: ``import tinymp.convert`` needs numpy only. Every failure to convert raises
:class:`ConversionError` (a ``ValueError``) naming the layer, its op and a hint.

PyTorch and ONNX models are float models: the importers map them onto a float
:class:`tinymp.builder.Graph` (BatchNorm folded into the convolution before it, ReLU / ReLU6
fused into the layer before it, zero padding merged into the following convolution), check that
the graph's float forward pass agrees with the source framework's on the calibration samples
(within ``FLOAT_TOLERANCE * max(1, max |output|)``, 1e-3 by default, on up to 128 samples: a
mapping bug never passes silently), then quantise with post-training quantisation
(:meth:`tinymp.builder.Graph.quantize`) on those samples.

The rest of this module is the framework-independent part shared by the PyTorch and ONNX
importers: a small intermediate graph (:class:`_Net`) in the NCHW terms of those frameworks,
its fusion passes and its lowering onto a :class:`tinymp.builder.Graph`.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import weakref
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import ConversionError, check_classes, shown

__all__ = ["convert", "ConversionError"]
_LAZY = {"from_torch": "torch", "from_onnx": "onnx", "from_tflite": "tflite"}

# Float agreement required between the source framework and the tinymp float graph:
# max |graph - source| <= FLOAT_TOLERANCE * max(1, max |source|) over the checked samples.
FLOAT_TOLERANCE = 1e-3
# at most this many calibration samples are used for that check
FLOAT_CHECK_SAMPLES = 128
# what a .tmpm tensor can hold (docs/FORMAT.md): every dimension 1 ... 65535, h*w*c <= 2^24
MAX_DIM = 0xFFFF
MAX_VALUES = 1 << 24
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        mod = importlib.import_module("." + _LAZY[name], __name__)
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------

def _looks_like_tflite(head: bytes) -> bool:
    return len(head) >= 8 and head[4:8] == b"TFL3"


def _looks_like_onnx(head: bytes) -> bool:
    # An ONNX file is a protobuf ModelProto; every exporter writes field 1 (ir_version, varint)
    # first: tag byte 0x08 followed by a small version number.
    return len(head) >= 2 and head[0] == 0x08 and 1 <= head[1] < 0x80


def _first_zip_member(head: bytes) -> str:
    """The name of the first member of the zip archive whose first bytes are `head`, from its
    local header (also there when the archive is cut short), or ''."""
    n = int.from_bytes(head[26:28], "little")
    return head[30:30 + n].decode("utf-8", "replace") if len(head) >= 30 + n else ""


def _kind_of(source) -> str:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(source, torch.nn.Module):
        return "torch"
    onnx = sys.modules.get("onnx")
    if onnx is not None and isinstance(source, onnx.ModelProto):
        return "onnx"
    ext = None
    if isinstance(source, (str, os.PathLike)):
        from .._files import check_regular
        path = os.fspath(source)
        ext = os.path.splitext(path)[1].lower()
        try:
            check_regular(path, "a model file", shown=repr(path))
            with open(path, "rb") as f:
                head = f.read(512)  # a zip's first member name too
        except ValueError as e:
            raise ConversionError(f"tinymp convert: {e}") from None
        except OSError as e:
            raise ConversionError(f"tinymp convert: cannot read {path!r}: {e}") from None
        where = repr(path)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        head = bytes(memoryview(source)[:512])
        where = "the given bytes"
    else:
        raise ConversionError(
            f"tinymp convert: cannot convert a {type(source).__name__}: expected a "
            "torch.nn.Module, an onnx.ModelProto, model bytes or a path to a .onnx / .tflite file")
    # by what the file holds, then by its name: a file named .onnx or .tflite that is something
    # else gets the words for what it is, not the optional package's
    if _looks_like_tflite(head):
        return "tflite"
    if _looks_like_onnx(head):
        return "onnx"
    if head[:4] == b"TMPM":
        raise ConversionError(
            f"tinymp convert: {where} is already a tinymp model (.tmpm): nothing to convert; "
            "`tinymp info` describes it, `tinymp push` sends it to the board")
    samples = None
    if head[:6] == b"\x93NUMPY":
        samples = "a single numpy array (.npy)"
    elif head[:4] == b"PK\x03\x04" and _first_zip_member(head).endswith(".npy"):
        # numpy.savez's members are x.npy, ...; torch.save's archive/data.pkl, ...
        samples = "a numpy .npz archive of arrays"
    if samples:
        raise ConversionError(
            f"tinymp convert: {where} is {samples}, samples rather than a model: convert takes a "
            "model (an int8 .tflite, an .onnx, or a PyTorch module in Python); labelled samples "
            "for a session go to `tinymp collect --from FILE.npz`, calibration samples to "
            "`tinymp convert MODEL --calib FILE.npy` (one array, numpy.save)")
    if head[:4] == b"PK\x03\x04" or head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04",
                                               b"\x80\x05"):
        # torch.save writes a zip archive (older versions a pickle, protocol 2 ... 5)
        raise ConversionError(
            f"tinymp convert: {where} looks like a saved PyTorch model (.pt / .pth), which "
            "holds Python objects, not a graph: load the model in Python and call "
            "tinymp.convert.convert(model, calib), or export it with torch.onnx.export and "
            "convert the .onnx file")
    if ext == ".onnx":  # the content test is a heuristic: onnx's parser has the last word
        return "onnx"
    raise ConversionError(f"tinymp convert: {where} is neither a TFLite flatbuffer ('TFL3' at "
                          "offset 4) nor an ONNX model")


def convert(source, calib=None, class_names=None, input_range=None, **kw) -> bytes:
    """Convert a PyTorch module, an ONNX model or a TFLite model to ``.tmpm`` bytes.

    ``calib`` (float calibration samples, NCHW unless ``input_layout='NHWC'``) is required for
    PyTorch and ONNX models, which are quantised here; a TFLite model is already quantised
    (``calib`` is ignored, ``input_range`` refused). See the module documentation.
    """
    kind = _kind_of(source)
    if kind == "tflite":
        try:
            from .tflite import from_tflite
        except ImportError as e:
            raise ConversionError(f"tinymp convert: the TFLite importer is not available ({e})") \
                from None
        if input_range is not None:
            raise ConversionError("tinymp convert: input_range does not apply to a TFLite model "
                                  "(it is already quantised)")
        kw.pop("input_layout", None)  # describes calib, which a quantised model does not need
        return from_tflite(source, class_names=class_names, **kw)
    if calib is None:
        if kind == "torch":  # a module: only in Python
            raise ConversionError("tinymp convert: converting a PyTorch model needs calibration "
                                  "samples: convert(model, calib) with a float batch [N, C, H, W]")
        # the same words for `tinymp convert` and for Python
        raise ConversionError("tinymp convert: converting an ONNX model needs calibration "
                              "samples, in the range the model is fed: give --calib FILE.npy, "
                              "a float array [N, C, H, W] saved with numpy.save (or [N, H, W, C] "
                              "with --layout NHWC); in Python, convert(model, calib)")
    if kind == "torch":
        from .torch import from_torch
        return from_torch(source, calib, input_range=input_range, class_names=class_names, **kw)
    from .onnx import from_onnx
    return from_onnx(source, calib, input_range=input_range, class_names=class_names, **kw)


# --------------------------------------------------------------------------------------------
# helpers shared by the importers
# --------------------------------------------------------------------------------------------

def quiet_numpy(fn):
    """Run ``fn`` with numpy's floating-point warnings off: a model or samples with huge values
    overflow float32 on the way, and every such case is checked and reported as one
    ConversionError; the warnings would only add lines of output before it."""
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        with np.errstate(all="ignore"):
            return fn(*args, **kw)
    return wrapper


def _err(name, op, what="is not supported", hint=None) -> ConversionError:
    msg = f"tinymp convert: layer '{shown(name)}' (op {shown(op)}) {what}"
    if hint:
        msg += f": {hint}"
    return ConversionError(msg)


_ACT_HINT = "tinymp supports ReLU and ReLU6 activations only; replace it with ReLU6 and fine-tune"
_DEFAULT_HINT = ("tinymp supports Conv2d (full and depthwise), BatchNorm (folded), ReLU / ReLU6, "
                 "residual add, zero padding, global average pooling, flatten, Linear and "
                 "Dropout / Identity")
_HINTS = [
    (("hardswish", "hard_swish", "silu", "swish", "gelu", "sigmoid", "hardsigmoid", "mish",
      "elu", "selu", "celu", "leaky", "prelu", "tanh", "softplus", "softsign", "rrelu",
      "logsigmoid", "thresholdedrelu"), _ACT_HINT),
    (("maxpool", "max_pool", "lppool"),
     "max pooling is not supported: use a stride-2 (depthwise) convolution instead"),
    (("avgpool", "avg_pool", "averagepool"),
     "only global average pooling (to 1x1) is supported: use a stride-2 convolution"),
    (("cat", "concat", "stack", "split", "chunk"),
     "concatenation and splitting are not supported: tinymp graphs combine branches with "
     "residual adds only"),
    (("upsample", "interpolate", "resize", "convtranspose", "conv_transpose", "pixel_shuffle"),
     "upsampling is not supported (tinymp runs classification CNNs)"),
    (("layernorm", "layer_norm", "groupnorm", "group_norm", "instancenorm", "instance_norm",
      "localresponse", "lrn", "normalize"),
     "only BatchNorm (folded into the preceding convolution) is supported"),
    (("softmax", "logsoftmax", "log_softmax"),
     "remove the final softmax: tinymp models output logits (the argmax is the same)"),
    (("transpose", "permute"),
     "layout changes are not supported: tinymp takes NCHW models (it converts to HWC itself)"),
]


def _hint_for(op: str) -> str:
    low = op.lower().replace(".", "_")
    for keys, hint in _HINTS:
        if any(k in low for k in keys):
            return hint
    return _DEFAULT_HINT


def _unsupported(name, op, hint=None) -> ConversionError:
    return _err(name, op, "is not supported", hint or _hint_for(str(op)))


def _compose_act(a: Optional[str], b: Optional[str]) -> Optional[str]:
    """Activation equivalent to ``b(a(x))`` for a, b in (None, 'relu', 'relu6')."""
    if a is None:
        return b
    if b is None:
        return a
    return "relu6" if "relu6" in (a, b) else "relu"


def _check_float(graph, x_nhwc: np.ndarray, ref: np.ndarray, tolerance: float, source: str
                 ) -> float:
    """Raise ConversionError unless Graph.forward(x) agrees with the source model's output
    ``ref`` ([N, num_classes]); returns max |diff|."""
    with np.errstate(all="ignore"):
        got = np.asarray(graph.forward(x_nhwc), dtype=np.float64).reshape(len(x_nhwc), -1)
    ref = np.asarray(ref, dtype=np.float64).reshape(len(x_nhwc), -1)
    if got.shape != ref.shape:
        raise ConversionError(f"tinymp convert: the converted graph outputs {got.shape[1]} "
                              f"values per sample, the {source} model {ref.shape[1]}")
    if not np.isfinite(ref).all():
        raise ConversionError(
            f"tinymp convert: the {source} model outputs non-finite values (infinity or NaN) "
            f"on the calibration samples, {_span(x_nhwc)}: {_SCALE_HINT}, or check the "
            "model's weights")
    if not np.isfinite(got).all():
        raise ConversionError(
            f"tinymp convert: the converted float graph overflows float32 on the calibration "
            f"samples, {_span(x_nhwc)} (the {source} model does not, but folding BatchNorm into "
            f"the weights changes where values overflow): {_SCALE_HINT}")
    diff = float(np.max(np.abs(got - ref))) if got.size else 0.0
    tol = tolerance * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
    if not (diff <= tol):
        raise ConversionError(
            f"tinymp convert: the converted float graph disagrees with the {source} model "
            f"(max |difference| of the outputs {diff:.3g}, tolerance {tol:.3g}); an operator was "
            "mapped wrongly — please report this with the model")
    return diff


_SCALE_HINT = ("give samples scaled as the model's training data was (e.g. pixels / 255 "
               "for a model trained on [0, 1], not raw 0 ... 255 values)")


def _span(x) -> str:
    return f"which span [{float(np.min(x)):.3g}, {float(np.max(x)):.3g}]"


def _as_batch(calib, layout: str, what: str) -> np.ndarray:
    """Calibration samples as float32 NCHW numpy [N, C, H, W]."""
    if layout not in ("NCHW", "NHWC"):
        raise ConversionError(f"tinymp convert: input_layout must be 'NCHW' or 'NHWC', "
                              f"got {layout!r}")
    if hasattr(calib, "detach"):          # a torch tensor, without importing torch
        calib = calib.detach().cpu().numpy()
    a = np.asarray(calib)
    if a.dtype.kind not in "iuf":
        raise ConversionError(f"tinymp convert: {what} must hold real numbers, got dtype "
                              f"{a.dtype}")
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[0] < 1 or min(a.shape) < 1:
        raise ConversionError(f"tinymp convert: {what} must be a float batch [N, C, H, W] "
                              f"({layout}), got shape {tuple(np.shape(calib))}")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        if bad.any():
            k = int(np.count_nonzero(bad))
            sample = int(np.argmax(bad.reshape(len(a), -1).any(axis=1)))
            raise ConversionError(
                f"tinymp convert: {what} contains {k} non-finite value{'s' if k > 1 else ''} "
                f"(NaN or infinity), the first in sample {sample}: remove or repair those "
                "samples")
    # wider floats (float64 samples) may hold finite values that float32 cannot
    big = max(-float(a.min()), float(a.max())) if a.dtype.kind == "f" else 0.0
    if big > _FLOAT32_MAX:
        raise ConversionError(
            f"tinymp convert: {what} holds values up to {big:.3g}, beyond float32 (at most "
            f"{_FLOAT32_MAX:.3g}): {_SCALE_HINT}")
    x = a.astype(np.float32)
    if layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def _quantize(graph, calib_nchw: np.ndarray, class_names, input_range) -> bytes:
    """Graph.quantize with the converter's error handling."""
    nc = graph.output.c
    lo, hi = float(calib_nchw.min()), float(calib_nchw.max())
    if lo == hi:
        raise ConversionError(f"tinymp convert: calib are all {lo:g}: samples "
                              "that vary are needed to fix the model's input range")
    if input_range is None and max(hi, 0.0) - min(lo, 0.0) < 1e-6:
        # builder.act_qparams widens a range this narrow to [0, 1]: every sample would become
        # the same int8 input
        raise ConversionError(
            f"tinymp convert: calib span only [{lo:.3g}, {hi:.3g}], less than 1e-6 (with 0): "
            "quantised to int8 every sample would be the same input; give samples in the range "
            "the model is fed (or the input range with input_range / --input-range)")
    if input_range is not None:
        try:
            rlo, rhi = (float(v) for v in input_range)
        except (TypeError, ValueError):
            raise ConversionError(f"tinymp convert: input_range must be two numbers (lo, hi), "
                                  f"got {input_range!r}") from None
        if not (math.isfinite(rlo) and math.isfinite(rhi) and rlo < rhi):
            raise ConversionError(f"tinymp convert: input_range must be two finite numbers "
                                  f"(lo, hi) with lo < hi, got ({rlo:g}, {rhi:g})")
        if max(rhi, 0.0) - min(rlo, 0.0) < 1e-6:
            raise ConversionError(
                f"tinymp convert: the input range [{rlo:.3g}, {rhi:.3g}] is less than 1e-6 "
                "wide (with 0): quantised to int8 every input would be the same value; give "
                "the range of the values the model is fed")
        input_range = (rlo, rhi)
    if class_names is not None:
        if isinstance(class_names, (str, bytes)):
            raise ConversionError("tinymp convert: class_names must be a list of names, not a "
                                  "single string")
        class_names = [str(c) for c in class_names]
        if len(class_names) != nc:
            raise ConversionError(f"tinymp convert: {len(class_names)} class names given, the "
                                  f"model has {nc} outputs")
    x = calib_nchw.transpose(0, 2, 3, 1)
    try:
        with np.errstate(all="ignore"):
            return graph.quantize(x, num_classes=nc, class_names=class_names,
                                  input_range=input_range)
    except ValueError as e:
        raise _quantize_error(graph, x, input_range, e) from None


# builder.Graph -> {node index: (source layer name, source op)}, filled by _Net.build
_SOURCE_NAMES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _node_ranges(graph, x) -> List[List[float]]:
    """[lo, hi] of every node's float values over the samples x (NHWC)."""
    ranges = [[math.inf, -math.inf] for _ in graph.nodes]
    with np.errstate(all="ignore"):
        for s in range(0, len(x), 16):
            for r, v in zip(ranges, graph.forward(x[s:s + 16], all_nodes=True)):
                if v.size and not np.isfinite(v).all():
                    r[:] = [math.nan, math.nan]
                elif v.size and not math.isnan(r[0]):
                    r[0] = min(r[0], float(v.min()))
                    r[1] = max(r[1], float(v.max()))
    return ranges


def _quantize_error(graph, x, input_range, e) -> ConversionError:
    """Say which layer cannot be quantised and what in the input causes it, in place of
    builder's 'node 3 (conv): multiplier ... too large (shift 67 > 30)'."""
    from ..builder import act_qparams, quantize_weights
    from ..modelfile import quantize_multiplier
    fallback = ConversionError(f"tinymp convert: quantisation failed: {e}")
    names = _SOURCE_NAMES.get(graph, {})

    def err(n, what, hint):
        name, op = names.get(n.index, (f"node {n.index}", n.op))
        return _err(name, op, what, hint)

    try:
        ranges = _node_ranges(graph, x)
    except Exception:               # pragma: no cover - the forward pass ran before
        return fallback
    given = f"the calibration samples span [{float(x.min()):.3g}, {float(x.max()):.3g}]"
    hint = f"{given}; {_SCALE_HINT}"
    for n in graph.nodes[1:]:
        if math.isnan(ranges[n.index][0]):
            return err(n, "produces values beyond float32 (infinity or NaN) on the calibration "
                       "samples", hint)
    if input_range is not None:
        ranges[0] = [float(v) for v in input_range]
        given = f"the input range given is [{ranges[0][0]:.3g}, {ranges[0][1]:.3g}]"
        hint = (f"{given} (input_range / --input-range); give the range of the values the "
                "model is fed")
    try:
        qp = [act_qparams(lo, hi) for lo, hi in ranges]
    except ValueError:              # pragma: no cover - the ranges are finite here
        return fallback
    for n in graph.nodes[1:]:
        s_in, s_out = qp[n.inputs[0]][0], qp[n.index][0]
        weights = ""
        if n.op in ("conv", "dwconv", "pwconv", "fc"):
            wmax = float(np.max(np.abs(n.w))) if n.w.size else 0.0
            try:
                _, ws = quantize_weights(n.w, 2 if n.op == "dwconv" else 0)
            except ValueError:
                return err(n, f"has weights too small to quantise (the largest |w| is "
                           f"{wmax:.3g}: their int8 scale underflows float32)",
                           "check the model's weights")
            m = s_in * float(np.max(ws)) / s_out
            weights = f" with weights up to |w| = {wmax:.3g}"
        elif n.op == "add":
            m = 2.0 * max(s_in, qp[n.inputs[1]][0]) / ((1 << 20) * s_out)
        elif n.op == "avgpool":
            src = graph.nodes[n.inputs[0]]
            m = s_in / (s_out * src.h * src.width)
        else:                       # pragma: no cover
            continue
        try:
            quantize_multiplier(m)
        except ValueError:
            (lo_i, hi_i), (lo_o, hi_o) = ranges[n.inputs[0]], ranges[n.index]
            return err(n, f"cannot be quantised: its input range [{lo_i:.3g}, {hi_i:.3g}]"
                       f"{weights} against its output range [{lo_o:.3g}, {hi_o:.3g}] needs a "
                       f"requantisation multiplier of {m:.3g}, beyond the 2^30 a .tmpm model "
                       "can hold", hint)
    return fallback


# --------------------------------------------------------------------------------------------
# intermediate graph
# --------------------------------------------------------------------------------------------

class _Op:
    """A value of the source model (the op that produces it).

    ``shape`` leaves out the batch: ``(C, H, W)`` for a feature map, ``(n,)`` for a vector.
    ``src`` is the ``(C, H, W)`` feature map that holds the data in tinymp (a vector is the
    NCHW flattening of ``src``; for a map ``src == shape``).
    kinds: input, conv, linear, affine (per-channel x*scale+shift), act, pad, add, gap (global
    average pool), view (reshape; no data movement).
    """

    def __init__(self, kind, inputs, shape, name, optype, src=None, **attrs):
        self.kind = kind
        self.inputs = list(inputs)
        self.shape = tuple(int(s) for s in shape)
        self.name = name
        self.optype = optype
        self.act = None
        self.src = tuple(src) if src is not None else (
            self.shape if len(self.shape) == 3 else (self.shape[0], 1, 1))
        self.__dict__.update(attrs)

    @property
    def is_map(self):
        return len(self.shape) == 3

    def __repr__(self):
        return f"<_Op {self.kind} {self.name!r} {self.shape}>"


def _real(v, what, name, optype) -> np.ndarray:
    """A constant of the model as float64, refusing what is not real numbers (complex, text)
    instead of warning about it or failing inside numpy."""
    a = np.asarray(v)
    if a.dtype.kind in "cSUOMm":
        raise _err(name, optype, f"has {what} of type {a.dtype}", "expected real numbers")
    try:
        with np.errstate(all="ignore"):
            return a.astype(np.float64)
    except (TypeError, ValueError):
        raise _err(name, optype, f"has {what} of type {a.dtype}", "expected real numbers") \
            from None


def _finite(name, optype, what, *arrays) -> None:
    for a in arrays:
        if a is not None and not np.isfinite(a).all():
            raise _err(name, optype, f"has non-finite {what} (NaN or infinity)",
                       "the model file is damaged, or its training diverged")


def _vec(v, n, what, name, optype):
    a = _real(v, what, name, optype)
    try:
        return np.broadcast_to(a.reshape(-1) if a.size == n else a, (n,)).astype(np.float64)
    except ValueError:
        raise _err(name, optype, f"has a {what} of shape {a.shape}, expected {n} values") \
            from None


class _Net:
    """The intermediate graph the PyTorch and ONNX front ends build (NCHW terms, no batch).

    Every method takes ``name`` / ``optype`` for error messages and returns the new value. Ops
    must be created in a topological order (inputs first). :meth:`build` fuses and lowers it.
    """

    def __init__(self, input_chw: Sequence[int], name="input"):
        self.ops: List[_Op] = []
        self.input = self._new("input", [], tuple(input_chw), name, "input")

    def _new(self, kind, inputs, shape, name, optype, **attrs) -> _Op:
        op = _Op(kind, inputs, shape, name, optype, **attrs)
        # refuse what no .tmpm tensor can hold as soon as it appears, before anything is
        # computed with it (a damaged padding or shape must not make numpy allocate gigabytes)
        n = math.prod(op.shape)
        if (min(op.shape + op.src) < 1 or max(op.src) > MAX_DIM or n > MAX_VALUES
                or math.prod(op.src) != n):
            limits = (f"tinymp tensors have 1 ... {MAX_DIM} rows, columns and channels and at "
                      f"most 2^24 values")
            if kind == "input":
                raise ConversionError(f"tinymp convert: the calibration samples are "
                                      f"{' x '.join(map(str, op.shape))} (C x H x W) images; "
                                      f"{limits}")
            raise _err(name, optype, f"gives a tensor of shape {('N',) + op.shape}", limits)
        op.index = len(self.ops)
        self.ops.append(op)
        return op

    @staticmethod
    def _need_map(x, name, optype):
        if not isinstance(x, _Op):
            raise _err(name, optype, "has a constant as its data input",
                       "only weights may be constant")
        if not x.is_map:
            raise _err(name, optype, f"gets a {len(x.shape) + 1}-D tensor {('N',) + x.shape}",
                       "expected an [N, C, H, W] feature map")
        return x

    # -- ops ------------------------------------------------------------------------------

    def conv(self, x, w, b, stride, pad, groups, name, optype, dilation=(1, 1)) -> _Op:
        """w float [Cout, Cin/groups, kh, kw] (torch / ONNX layout); pad (t, l, b, r)."""
        x = self._need_map(x, name, optype)
        w = _real(w, "weights", name, optype)
        if w.ndim != 4:
            raise _err(name, optype, f"has weights of shape {w.shape}", "only 2-D convolutions "
                       "(Conv2d, weights [out, in, kh, kw]) are supported")
        cout, cin_g, kh, kw = w.shape
        c, h, wd = x.shape
        groups = int(groups)
        dil = tuple(int(d) for d in (dilation if isinstance(dilation, (list, tuple))
                                     else (dilation, dilation)))
        if dil != (1, 1) and (kh, kw) != (1, 1):
            raise _err(name, optype, f"has dilation {dil}", "dilated convolutions are not "
                       "supported")
        if groups == 1:
            if cin_g != c:
                raise _err(name, optype, f"has weights for {cin_g} input channels, its input "
                           f"has {c}")
            depthwise = False
        elif groups == c and cout == c and cin_g == 1:
            depthwise = True
        else:
            raise _err(name, optype, f"(groups={groups}, {c} -> {cout} channels) is not "
                       "supported", "tinymp has full convolutions (groups=1) and depthwise "
                       "ones (groups = in channels = out channels); replace the grouped "
                       "convolution")
        b = np.zeros(cout) if b is None else _vec(b, cout, "bias", name, optype)
        _finite(name, optype, "weights or bias", w, b)
        stride = tuple(stride) if isinstance(stride, (list, tuple)) else (stride, stride)
        if len(stride) != 2:
            raise _err(name, optype, f"has strides {list(stride)}", "expected 2 strides")
        sh, sw = (int(s) for s in stride)
        pad = tuple(int(p) for p in pad)
        if len(pad) != 4 or min(pad) < 0:
            raise _err(name, optype, f"has padding {pad}", "padding must be non-negative")
        if min(sh, sw) < 1:
            raise _err(name, optype, f"has stride {(sh, sw)}")
        t, l, bo, r = pad
        oh = (h + t + bo - kh) // sh + 1
        ow = (wd + l + r - kw) // sw + 1
        if h + t + bo < kh or wd + l + r < kw:
            raise _err(name, optype, f"has a {kh}x{kw} kernel larger than its padded input "
                       f"{h + t + bo}x{wd + l + r}")
        return self._new("conv", [x], (cout, oh, ow), name, optype, w=w, b=b, stride=(sh, sw),
                         pad=pad, depthwise=depthwise)

    def linear(self, x, w, b, name, optype) -> _Op:
        """y = x @ w.T + b; x a vector [n], w [O, n]."""
        if not isinstance(x, _Op):
            raise _err(name, optype, "has a constant as its data input")
        if x.is_map:
            raise _err(name, optype, f"is applied to a 4-D tensor {('N',) + x.shape}",
                       "flatten the feature map first (torch.flatten(x, 1) / nn.Flatten)")
        w = _real(w, "weights", name, optype)
        if w.ndim != 2 or w.shape[1] != x.shape[0]:
            raise _err(name, optype, f"has weights {w.shape} for an input of {x.shape[0]} "
                       "features")
        o = w.shape[0]
        b = np.zeros(o) if b is None else _vec(b, o, "bias", name, optype)
        _finite(name, optype, "weights or bias", w, b)
        return self._new("linear", [x], (o,), name, optype, w=w, b=b)

    def affine(self, x, scale, shift, name, optype) -> _Op:
        """Per-channel (per-feature for vectors) x * scale + shift (BatchNorm, constant ops)."""
        if not isinstance(x, _Op):
            raise _err(name, optype, "has a constant as its data input")
        n = x.shape[0]
        scale = _vec(scale, n, "scale", name, optype)
        shift = _vec(shift, n, "shift", name, optype)
        if not (np.isfinite(scale).all() and np.isfinite(shift).all()):
            raise _err(name, optype, "has non-finite parameters")
        return self._new("affine", [x], x.shape, name, optype, src=x.src, scale=scale,
                         shift=shift)

    def act(self, x, kind, name, optype) -> _Op:
        if not isinstance(x, _Op):
            raise _err(name, optype, "has a constant as its data input")
        assert kind in ("relu", "relu6")
        op = self._new("act", [x], x.shape, name, optype, src=x.src)
        op.act = kind
        return op

    def pad(self, x, pad, name, optype) -> _Op:
        """Zero padding (t, l, b, r) of a feature map."""
        x = self._need_map(x, name, optype)
        pad = tuple(int(p) for p in pad)
        if min(pad) < 0:
            raise _err(name, optype, f"has negative padding {pad}", "cropping is not supported")
        if pad == (0, 0, 0, 0):
            return x
        c, h, w = x.shape
        return self._new("pad", [x], (c, h + pad[0] + pad[2], w + pad[1] + pad[3]), name,
                         optype, pad=pad)

    def add(self, a, b, name, optype) -> _Op:
        if a.shape != b.shape:
            raise _err(name, optype, f"adds tensors of shapes {('N',) + a.shape} and "
                       f"{('N',) + b.shape}", "broadcasting adds are not supported; both "
                       "inputs of a residual add must have the same shape")
        if a.src != b.src:
            raise _err(name, optype, "adds vectors flattened from differently shaped maps")
        return self._new("add", [a, b], a.shape, name, optype, src=a.src)

    def gap(self, x, keepdims, name, optype) -> _Op:
        """Global average pool: [C, H, W] -> [C, 1, 1] (keepdims) or [C]."""
        x = self._need_map(x, name, optype)
        c = x.shape[0]
        if x.shape[1:] == (1, 1):
            g = x
        else:
            g = self._new("gap", [x], (c, 1, 1), name, optype)
        return g if keepdims else self.reshape(g, (c,), name, optype)

    def reshape(self, x, shape, name, optype) -> _Op:
        """Reshape (flatten, unflatten, squeeze ...) without the batch dimension."""
        if not isinstance(x, _Op):
            raise _err(name, optype, "has a constant as its data input")
        shape = tuple(int(s) for s in shape)
        if shape == x.shape:
            return x
        n = int(np.prod(x.shape))
        if shape == (n,):
            return self._new("view", [x], shape, name, optype, src=x.src)
        if shape == x.src:          # back to the feature map it was flattened from
            return self._new("view", [x], shape, name, optype, src=x.src)
        raise _err(name, optype, f"reshapes {('N',) + x.shape} to {('N',) + shape}",
                   "only flattening ([N, C, H, W] -> [N, C*H*W]) and adding / removing 1x1 "
                   "spatial dimensions are supported (the batch dimension must stay first)")

    def binary(self, kind, a, b, name, optype, alpha=1.0) -> _Op:
        """Elementwise add / sub / mul / div of two values, or of a value and a constant
        (which must be a scalar or per-channel; it becomes an affine op)."""
        ia, ib = isinstance(a, _Op), isinstance(b, _Op)
        if ia and ib:
            if kind == "add" and alpha == 1:
                return self.add(a, b, name, optype)
            if kind == "sub" and alpha == 1:
                raise _err(name, optype, "subtracts two activations", "only residual adds of "
                           "two activations are supported")
            raise _err(name, optype, f"combines two activations ({kind})",
                       "elementwise products of activations (e.g. squeeze-and-excitation or "
                       "gating) are not supported; only residual adds are")
        if not (ia or ib):
            raise _err(name, optype, "has no activation input")
        x, c = (a, b) if ia else (b, a)
        c = self._per_channel(x, c, name, optype)
        alpha = float(alpha)
        if kind == "add":
            scale, shift = (1.0, alpha * c) if ia else (alpha, c)
        elif kind == "sub":
            scale, shift = (1.0, -alpha * c) if ia else (-alpha, c)
        elif kind == "mul":
            scale, shift = c, 0.0
        elif kind == "div":
            if not ia:
                raise _err(name, optype, "divides a constant by an activation")
            if np.any(c == 0):
                raise _err(name, optype, "divides by zero")
            scale, shift = 1.0 / c, 0.0
        else:  # pragma: no cover
            raise AssertionError(kind)
        return self.affine(x, scale, shift, name, optype)

    @staticmethod
    def _per_channel(x, c, name, optype) -> np.ndarray:
        c = _real(c, "a constant", name, optype)
        _finite(name, optype, "constant", c)
        full, given = (1,) + x.shape, c.shape
        if c.ndim > len(full):
            raise _err(name, optype, f"has a constant of shape {given}")
        # the constant with full's rank; its checks run on its own values, never on the
        # constant broadcast to the activation's shape (which may be large)
        c = c.reshape((1,) * (len(full) - c.ndim) + c.shape)
        if any(k not in (1, n) for k, n in zip(c.shape, full)):
            raise _err(name, optype, f"has a constant of shape {given} that does not "
                       f"broadcast to {('N',) + x.shape}")
        if x.is_map:
            if not (c == c[:, :, :1, :1]).all():
                raise _err(name, optype, "has a constant that varies over H and W",
                           "only scalar or per-channel constants are supported")
            return np.broadcast_to(c[0, :, 0, 0], (x.shape[0],)).copy()
        return np.broadcast_to(c[0], x.shape).copy()

    # -- fusion and lowering ----------------------------------------------------------------

    def _reachable(self, out: _Op) -> List[_Op]:
        seen = {out.index}
        stack = [out]
        while stack:
            op = stack.pop()
            for i in op.inputs:
                if i.index not in seen:
                    seen.add(i.index)
                    stack.append(i)
        return [op for op in self.ops if op.index in seen]

    @staticmethod
    def _uses(ops) -> Dict[int, int]:
        uses = {op.index: 0 for op in ops}
        for op in ops:
            for i in op.inputs:
                uses[i.index] = uses.get(i.index, 0) + 1
        return uses

    @staticmethod
    def _take_over(op: _Op, p: _Op, name_sep="+"):
        """op (sole user of p) becomes a copy of p (keeping its own index and shape)."""
        keep = dict(index=op.index, name=f"{p.name}{name_sep}{op.name}", shape=op.shape,
                    src=op.src)
        attrs = dict(p.__dict__)
        attrs.update(keep)
        attrs["inputs"] = list(p.inputs)
        op.__dict__.clear()
        op.__dict__.update(attrs)

    def _fuse(self, out: _Op) -> None:
        ops = self._reachable(out)
        uses = self._uses(ops)
        for op in ops:
            if op.kind == "conv" and op.inputs[0].kind == "pad":
                p = op.inputs[0]
                kh, kw = op.w.shape[2:]
                merged = tuple(a + b for a, b in zip(op.pad, p.pad))
                if merged[0] < kh and merged[2] < kh and merged[1] < kw and merged[3] < kw:
                    op.pad = merged
                    op.inputs = [p.inputs[0]]
                    uses[p.index] -= 1
                    uses[p.inputs[0].index] += 1
                    op.name = f"{p.name}+{op.name}"
            elif op.kind == "affine":
                self._fuse_affine(op, uses)
            elif op.kind == "act":
                self._fuse_act(op, uses)

    def _fuse_affine(self, op, uses):
        p = op.inputs[0]
        via_view = None
        if p.kind == "view" and uses[p.index] == 1 and p.src[1:] == (1, 1):
            via_view, p = p, p.inputs[0]
        if uses[p.index] != 1 or p.act is not None:
            return
        s, t = op.scale, op.shift
        if p.kind == "conv":
            w = p.w * s[:, None, None, None]
            b = p.b * s + t
        elif p.kind == "linear":
            w = p.w * s[:, None]
            b = p.b * s + t
        elif p.kind == "affine":
            w = p.scale * s
            b = p.shift * s + t
        else:
            return
        if via_view is not None:
            # p (single user: the view) absorbs the affine; op becomes the view
            if p.kind == "affine":
                p.scale, p.shift = w, b
            else:
                p.w, p.b = w, b
            p.name = f"{p.name}+{op.name}"
            op.kind, op.inputs = "view", [p]
            del op.scale, op.shift
            uses[via_view.index] = 0
            return
        self._take_over(op, p)
        if p.kind == "affine":
            op.scale, op.shift = w, b
        else:
            op.w, op.b = w, b
        uses[p.index] = 0

    def _fuse_act(self, op, uses):
        p = op.inputs[0]
        via_view = None
        if p.kind == "view" and uses[p.index] == 1:
            via_view, p = p, p.inputs[0]
        if uses[p.index] != 1 or p.kind not in ("conv", "linear", "affine", "add", "gap", "act"):
            return
        if via_view is not None:
            p.act = _compose_act(p.act, op.act)
            p.name = f"{p.name}+{op.name}"
            op.kind, op.inputs, op.act = "view", [p], None
            uses[via_view.index] = 0
            return
        act = _compose_act(p.act, op.act)
        self._take_over(op, p)
        op.act = act
        uses[p.index] = 0

    def build(self, out: _Op):
        """Fuse and lower onto a :class:`tinymp.builder.Graph` whose output is ``out``."""
        from .. import builder
        if not isinstance(out, _Op) or out is self.input:
            raise ConversionError("tinymp convert: the model output does not depend on its "
                                  "input through any layer")
        if out.src[1:] != (1, 1) or out.shape not in ((out.src[0],), out.src):
            raise _err(out.name, out.optype, f"produces the model output with shape "
                       f"{('N',) + out.shape}", "a tinymp model ends in [N, num_classes] logits "
                       "(e.g. global average pool, flatten and Linear)")
        check_classes(out.src[0])
        self._fuse(out)
        c, h, w = self.input.shape
        g = builder.Graph(input_shape=(h, w, c))
        node = {}
        names = {}
        for op in self._reachable(out):
            try:
                node[op.index] = self._lower(g, op, node)
            except ValueError as e:
                if isinstance(e, ConversionError):
                    raise
                raise _err(op.name, op.optype, f"cannot be mapped onto tinymp: {e}") from None
            names.setdefault(node[op.index].index, (op.name, op.optype))
        _SOURCE_NAMES[g] = names
        if len(g.nodes) < 2:
            raise ConversionError("tinymp convert: the model has no layers that tinymp runs")
        if node[out.index] is not g.output:    # pragma: no cover - reachability guarantees it
            raise ConversionError("tinymp convert: internal error: output is not the last layer")
        return g

    @staticmethod
    def _float32(op, *arrays):
        """The arrays as float32, refusing values float32 cannot hold (folding a BatchNorm
        with a tiny variance, or a huge constant factor, can multiply weights past 3.4e38)."""
        out = []
        for a in arrays:
            with np.errstate(all="ignore"):
                a32 = np.asarray(a).astype(np.float32)
            if not np.isfinite(a32).all():
                big = float(np.max(np.abs(np.asarray(a, np.float64))))
                raise _err(op.name, op.optype, f"has weights or a bias beyond float32 (up to "
                           f"{big:.3g}) once BatchNorm and constant factors are folded in",
                           "check the model's weights and BatchNorm statistics")
            out.append(a32)
        return out

    def _lower(self, g, op, node):
        if op.kind == "input":
            return g.input
        x = node[op.inputs[0].index]
        if op.kind == "view":
            return x
        if op.kind == "conv":
            w, b = self._float32(op, op.w, op.b)
            kh, kw = w.shape[2:]
            if op.depthwise:
                return g.dwconv(x, w[:, 0].transpose(1, 2, 0), b, stride=op.stride,
                                padding=op.pad, act=op.act)
            if (kh, kw) == (1, 1) and op.stride == (1, 1) and op.pad == (0, 0, 0, 0):
                return g.pwconv(x, w[:, :, 0, 0], b, act=op.act)
            return g.conv(x, w.transpose(0, 2, 3, 1), b, stride=op.stride, padding=op.pad,
                          act=op.act)
        if op.kind == "linear":
            c, h, wd = op.inputs[0].src
            w = op.w
            if h * wd > 1:   # NCHW flattening -> tinymp's HWC flattening
                w = w.reshape(w.shape[0], c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
            w, b = self._float32(op, w, op.b)
            return g.fc(x, w, b, act=op.act)
        if op.kind in ("affine", "act"):
            c, h, wd = op.src
            if op.kind == "affine":
                if op.is_map or (h, wd) == (1, 1):
                    scale, shift = op.scale, op.shift
                else:
                    per = op.scale.reshape(c, h * wd), op.shift.reshape(c, h * wd)
                    if not all(np.all(a == a[:, :1]) for a in per):
                        raise _err(op.name, op.optype, "scales a flattened feature map "
                                   "element by element", "apply it before flattening")
                    scale, shift = per[0][:, 0], per[1][:, 0]
            else:
                scale, shift = np.ones(c), np.zeros(c)
            # a standalone per-channel affine / activation: a 1x1 depthwise convolution
            scale, shift = self._float32(op, scale, shift)
            return g.dwconv(x, scale.reshape(1, 1, c), shift, stride=1, padding="valid",
                            act=op.act)
        if op.kind == "add":
            return g.add(x, node[op.inputs[1].index], act=op.act)
        if op.kind == "gap":
            return g.avgpool(x, act=op.act)
        if op.kind == "pad":
            raise _err(op.name, op.optype, "is zero padding that cannot be merged into a "
                       "following convolution", "tinymp has no padding layer; padding must "
                       "feed convolutions only and stay smaller than their kernel")
        raise AssertionError(op.kind)  # pragma: no cover
