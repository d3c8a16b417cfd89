"""ONNX importer: a float ONNX model to an int8 ``.tmpm`` model.

::

    from tinymp.convert import from_onnx
    blob = from_onnx("model.onnx", calib)        # bytes, a path or an onnx.ModelProto;
                                                 # calib float [N, C, H, W]
    g = to_graph("model.onnx", calib)            # the float tinymp.builder.Graph, unquantised

The graph is parsed with the ``onnx`` package (initializers through ``onnx.numpy_helper``),
mapped onto tinymp's layers, checked against ``onnxruntime`` on the calibration samples and
quantised on them (:meth:`tinymp.builder.Graph.quantize`). The model takes one NCHW float
input; the converted model has the resolution of the calibration samples.

Supported operators (default domain): ``Conv`` (2-D; group 1 or group = in = out channels;
``pads`` ``[x1_begin, x2_begin, x1_end, x2_end]`` = top, left, bottom, right; ``auto_pad``
NOTSET / VALID / SAME_UPPER / SAME_LOWER; strides; dilations other than 1 are rejected),
``BatchNormalization`` (inference; folded), ``Relu``, ``Clip(0, 6)`` / ``Clip(0, inf)``,
``Add`` (residual, or with a constant), ``Sub`` / ``Mul`` / ``Div`` by a scalar or per-channel
constant, ``GlobalAveragePool``, ``ReduceMean`` over H and W, ``AveragePool`` over the whole map,
``Flatten``, ``Reshape``, ``Squeeze``, ``Unsqueeze``, ``Gemm`` (``transB``, ``alpha``,
``beta``), ``MatMul`` (+ ``Add`` of the bias), ``Pad`` (constant 0, merged into the following
convolution), ``Identity``, ``Dropout``; ``Constant``, ``Shape``, ``Gather``, ``Concat``,
``Cast``, ... on constants (shape computations) are evaluated here. Anything else raises
:class:`ConversionError` naming the node and its op type with a hint.
"""

from __future__ import annotations

import math
import os

import numpy as np

from . import (FLOAT_CHECK_SAMPLES, FLOAT_TOLERANCE, ConversionError, _as_batch, _check_float,
               _err, _Net, _Op, _quantize, _real, _unsupported, quiet_numpy)
from .errors import detail, shown

__all__ = ["from_onnx", "to_graph"]

_CLIP_INF = 3.0e38       # Clip bounds at or beyond this are "no bound" (float32 max 3.4e38)
# Constants computed here (shape arithmetic: ConstantOfShape, Expand, Range, broadcasting ...)
# hold at most this many values: the sizes come from the file, and a damaged or hostile one
# must be refused before numpy allocates gigabytes for it. Real shape computations are tiny,
# and weights are read from the file, not computed.
MAX_CONST_VALUES = 1 << 22


_MAX_RANK = 64            # numpy's limit: no shape or list of axes is longer


def _ints(v, what="a shape") -> list:
    """A shape, axes or pads constant as Python ints; refused when longer than any shape can
    be (a damaged file could hand a loop here millions of values)."""
    a = np.asarray(v).reshape(-1)
    if a.size > _MAX_RANK:
        raise ValueError(f"{what} of {a.size} values (at most {_MAX_RANK})")
    return [int(x) for x in a]


def _text(v) -> str:
    """A string field of the model (protobuf gives bytes when it is not valid UTF-8)."""
    return bytes(v).decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v)


def _import_onnx():
    try:
        import onnx
        from onnx import numpy_helper  # noqa: F401
    except ImportError as e:
        raise ImportError("tinymp.convert.from_onnx needs the onnx package: pip install onnx "
                          f"onnxruntime ({e})") from e
    return onnx


@quiet_numpy
def from_onnx(model_bytes_or_path, calib, input_range=None, class_names=None,
              input_layout="NCHW", *, float_tolerance: float = FLOAT_TOLERANCE) -> bytes:
    """Convert a float ONNX model to ``.tmpm`` bytes (see the module documentation).

    ``calib``: float calibration samples [N, C, H, W] (or [N, H, W, C] with
    ``input_layout='NHWC'``; the ONNX model itself is NCHW); ``input_range``: (lo, hi) of the
    input quantisation (default: the calibration range); ``class_names``: one per output.
    """
    x = _as_batch(calib, input_layout, "calib")
    graph = _to_graph(model_bytes_or_path, x, float_tolerance, input_layout)
    return _quantize(graph, x, class_names, input_range)


@quiet_numpy
def to_graph(model_bytes_or_path, sample, input_layout="NCHW", *,
             float_tolerance: float = FLOAT_TOLERANCE):
    """The float :class:`tinymp.builder.Graph` of an ONNX model (checked against onnxruntime
    on ``sample``, which also fixes the input resolution)."""
    return _to_graph(model_bytes_or_path, _as_batch(sample, input_layout, "sample"),
                     float_tolerance, input_layout)


def _load(onnx, src):
    if isinstance(src, onnx.ModelProto):
        return src, src.SerializeToString()
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    elif isinstance(src, (str, os.PathLike)):
        try:
            with open(src, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ConversionError(f"tinymp convert: cannot read {os.fspath(src)!r}: "
                                  f"{e.strerror or e}") \
                from None
    else:
        raise ConversionError(f"tinymp convert: from_onnx needs ONNX bytes, a path or an "
                              f"onnx.ModelProto, got {type(src).__name__}")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:
        raise ConversionError(f"tinymp convert: not a valid ONNX model ({detail(e)})") from None
    if len(model.graph.node) == 0:
        raise ConversionError("tinymp convert: the ONNX model has no nodes (not an ONNX model?)")
    external = _external_files(onnx, model)
    if external:
        # the weights are in files beside the .onnx (PyTorch's exporter writes NAME.onnx.data):
        # read them from the model's own folder, never from the current directory
        if not isinstance(src, (str, os.PathLike)):
            raise ConversionError(
                f"tinymp convert: the ONNX model keeps its weights in a separate file "
                f"({', '.join(external)}); give the path of the .onnx file so that they are read "
                "from its folder")
        folder = os.path.dirname(os.path.abspath(os.fspath(src)))
        try:
            from onnx.external_data_helper import load_external_data_for_model
            load_external_data_for_model(model, folder)
        except Exception as e:
            raise ConversionError(
                f"tinymp convert: cannot read the weights of {os.fspath(src)!r} from "
                f"{', '.join(external)} in {folder}: {detail(e)}") from None
        data = model.SerializeToString()
    return model, data


def _external_files(onnx, model):
    """Names of the files that hold tensors of ``model`` outside it (sorted; empty: none)."""
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                tensors.append(a.t)
            tensors.extend(a.tensors)
    files = set()
    for t in tensors:
        if t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL:
            where = {e.key: e.value for e in t.external_data}
            files.add(where.get("location", "?"))
    return sorted(files)


def _to_graph(src, x: np.ndarray, tolerance: float, layout="NCHW"):
    """``x``: the samples as NCHW, given in ``layout`` (for the message when they do not fit)."""
    onnx = _import_onnx()
    model, data = _load(onnx, src)
    conv = _Converter(onnx, model, x.shape[1:], layout)
    out = conv.run()
    graph = conv.net.build(out)
    ref = _run_onnxruntime(conv.pruned(data), conv.input_name, conv.input_batch,
                           x[:FLOAT_CHECK_SAMPLES])
    # a model with a fixed batch runs only whole batches: compare the samples it ran
    _check_float(graph, x[:len(ref)].transpose(0, 2, 3, 1), ref, tolerance, "ONNX")
    return graph


def _run_onnxruntime(data: bytes, input_name: str, batch, x: np.ndarray) -> np.ndarray:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("tinymp.convert.from_onnx needs onnxruntime to check the converted "
                          f"model: pip install onnxruntime ({e})") from e
    opts = ort.SessionOptions()
    opts.log_severity_level = 4        # fatal only: its errors become our one-line message
    run_opts = ort.RunOptions()
    run_opts.log_severity_level = 4
    try:
        sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ConversionError(f"tinymp convert: onnxruntime cannot load the model: {detail(e)}") \
            from None
    step = batch if isinstance(batch, int) and batch > 0 else 64
    outs = []
    for s in range(0, len(x), step):
        xb = x[s:s + step]
        if len(xb) < step and isinstance(batch, int) and batch > 0:
            break
        try:
            y = sess.run(None, {input_name: xb}, run_opts)[0]
        except Exception as e:
            raise ConversionError(f"tinymp convert: onnxruntime cannot run the model on the "
                                  f"calibration samples: {detail(e)}") from None
        y = np.asarray(y)
        if y.dtype.kind not in "biuf" or y.size % len(xb):
            raise ConversionError(f"tinymp convert: the ONNX model outputs a {y.dtype} tensor "
                                  f"of shape {y.shape} for {len(xb)} samples")
        outs.append(y.astype(np.float64).reshape(len(xb), -1))
    if not outs:
        raise ConversionError(f"tinymp convert: the ONNX model has a fixed batch of {batch}, "
                              f"more than the {len(x)} calibration samples")
    return np.concatenate(outs)


def _broadcast_shape(*shapes):
    """numpy's broadcasting of the shapes, computed on the numbers (no array is made)."""
    shapes = [tuple(int(d) for d in s) for s in shapes]
    nd = max((len(s) for s in shapes), default=0)
    out = []
    for ds in zip(*((1,) * (nd - len(s)) + s for s in shapes)):
        big = {d for d in ds if d != 1}
        if len(big) > 1:
            raise ValueError(f"shapes {shapes} do not broadcast")
        out.append(big.pop() if big else 1)
    return out


def _layout_hint(model_chw, chw, layout) -> str:
    """What to do when samples read in `layout` as C x H x W = `chw` do not fit the model's
    input `model_chw` (None: left open); the same words for `tinymp convert` and for Python."""
    c, h, w = chw
    # the same array read in the other layout: [N, a, b, c] is C=a, H=b, W=c as NCHW and
    # H=a, W=b, C=c as NHWC
    other = "NHWC" if layout == "NCHW" else "NCHW"
    alt = (w, c, h) if layout == "NCHW" else (h, w, c)
    mc, mh, mw = ("?" if d is None else d for d in model_chw)
    if all(m is None or m == a for m, a in zip(model_chw, alt)):
        if other == "NHWC":
            return ("(read as NCHW, [N, C, H, W]); they fit as NHWC, [N, H, W, C]: give "
                    "--layout NHWC (input_layout='NHWC' in Python)")
        return ("(read as NHWC, [N, H, W, C]); they fit as NCHW, [N, C, H, W]: leave out "
                "--layout NHWC (input_layout='NCHW' in Python)")
    return (f"(read as {layout}); the model takes [N, C, H, W] = [N, {mc}, {mh}, {mw}], or "
            f"[N, {mh}, {mw}, {mc}] with --layout NHWC (input_layout='NHWC' in Python)")


class _Converter:
    def __init__(self, onnx, model, input_chw, layout="NCHW"):
        from onnx import numpy_helper
        self.onnx = onnx
        self.nh = numpy_helper
        self.model = model
        self.graph = model.graph
        self.opset = 1
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                self.opset = imp.version
        self.consts = {}
        for init in self.graph.initializer:
            self.consts[init.name] = self._initializer(init)
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ConversionError(f"tinymp convert: the ONNX model has {len(inputs)} inputs "
                                  f"({', '.join(shown(i.name) for i in inputs)}); tinymp models "
                                  "take one image")
        inp = inputs[0]
        self.input_name = inp.name
        elem = inp.type.tensor_type.elem_type
        if elem != onnx.TensorProto.FLOAT:
            try:
                elem = onnx.TensorProto.DataType.Name(elem)
            except ValueError:
                pass
            raise ConversionError(f"tinymp convert: the ONNX input '{shown(inp.name)}' holds "
                                  f"{elem} values; tinymp converts models with a float32 input "
                                  "(export the model in float32)")
        dims = []
        for d in inp.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else None)
        if len(dims) != 4:
            raise ConversionError(f"tinymp convert: the ONNX input '{shown(inp.name)}' has rank "
                                  f"{len(dims)}; expected an NCHW image batch")
        if any(d is not None and d < 1 for d in dims):
            raise ConversionError(f"tinymp convert: the ONNX input '{shown(inp.name)}' has the "
                                  f"shape {['?' if d is None else d for d in dims]}; every "
                                  "dimension must be at least 1 (or left open)")
        for got, want, what in zip(dims[1:], input_chw, ("channels", "height", "width")):
            if got is not None and got != want:
                raise ConversionError(f"tinymp convert: the ONNX input '{shown(inp.name)}' has "
                                      f"{got} {what} but the calibration samples have {want} "
                                      f"{_layout_hint(dims[1:], input_chw, layout)}")
        self.input_batch = dims[0]
        self.net = _Net(input_chw, name=inp.name)
        self.vals = {inp.name: self.net.input}
        self.secondary = {}      # secondary outputs (Dropout mask, ...): must stay unused

    def pruned(self, data: bytes) -> bytes:
        """The model (serialised as ``data``) with only the nodes its output depends on, for
        onnxruntime: it runs every node of a graph, and the others were neither converted nor
        checked here (an unused ConstantOfShape of 30000 x 30000 made it allocate 3.6 GB)."""
        if len(self.needed) == len(self.graph.node):
            return data
        model = self.onnx.ModelProto()
        model.CopyFrom(self.model)
        del model.graph.node[:]
        model.graph.node.extend(n for k, n in enumerate(self.graph.node) if k in self.needed)
        return model.SerializeToString()

    # -- helpers --------------------------------------------------------------------------

    def _initializer(self, init):
        """An initializer's values; a damaged one (data that does not fill its dims, an unknown
        data type, negative dims) is refused naming it."""
        where = f"tinymp convert: the ONNX initializer '{shown(init.name)}'"
        dims = [int(d) for d in init.dims]
        if any(d < 0 for d in dims):
            raise ConversionError(f"{where} has the shape {dims}; dimensions cannot be negative")
        if math.prod(dims) > (1 << 31):
            raise ConversionError(f"{where} declares {math.prod(dims):,} values")
        try:
            return self.nh.to_array(init)
        except Exception as e:
            raise ConversionError(f"{where} cannot be read, the file is damaged "
                                  f"({detail(e)})") from None

    def _attrs(self, node):
        return {_text(a.name): self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def _where(self, node):
        name = node.name or (node.output[0] if node.output else "?")
        return _text(name), _text(node.op_type)

    def _act_in(self, node, i=0):
        name, op = self._where(node)
        v = self.vals.get(node.input[i]) if i < len(node.input) else None
        if not isinstance(v, _Op):
            raise _err(name, op, f"has a constant or missing data input {i}")
        return v

    def _const_in(self, node, i, default=None, required=False):
        if i >= len(node.input) or node.input[i] == "":
            if required:
                name, op = self._where(node)
                raise _err(name, op, f"is missing input {i}")
            return default
        nm = node.input[i]
        if nm in self.consts:
            return self.consts[nm]
        name, op = self._where(node)
        if nm in self.secondary:
            raise _err(*self.secondary[nm], f"has its secondary output '{shown(nm)}' used by "
                       f"'{shown(name)}' ({shown(op)})",
                       "only the main output of this operator is supported")
        if nm in self.vals:
            raise _err(name, op, f"has an activation as input {i} ('{shown(nm)}') where a "
                       "constant (weights, shape) is expected")
        raise _err(name, op, f"uses an unknown value '{shown(nm)}'")

    def _arg(self, node, i):
        nm = node.input[i]
        if nm in self.vals:
            return self.vals[nm]
        return self._const_in(node, i, required=True)

    # -- main loop ------------------------------------------------------------------------

    def run(self) -> _Op:
        out_names = [o.name for o in self.graph.output]
        if len(out_names) != 1:
            raise ConversionError(f"tinymp convert: the ONNX model has {len(out_names)} "
                                  "outputs; tinymp models have one (the logits)")
        nodes = list(self.graph.node)
        producer = {o: k for k, node in enumerate(nodes) for o in node.output if o}
        needed, stack = set(), [out_names[0]]
        while stack:                      # only the nodes the output depends on
            k = producer.get(stack.pop())
            if k is not None and k not in needed:
                needed.add(k)
                stack.extend(i for i in nodes[k].input if i)
        self.needed = needed
        for k, node in enumerate(nodes):
            if k not in needed:
                continue
            name, op = self._where(node)
            if node.domain not in ("", "ai.onnx"):
                raise _unsupported(name, f"{_text(node.domain)}.{op}")
            acts = [i for i in node.input if i in self.vals]
            try:
                if op == "Shape" and acts:
                    self._shape(node)
                    continue
                if not acts:
                    self._const_node(node)
                    continue
                handler = getattr(self, "_op_" + op, None)
                if handler is None:
                    raise _unsupported(name, op)
                res = handler(node, self._attrs(node))
            except ConversionError:
                raise
            except Exception as e:      # a damaged attribute or shape, whatever it breaks
                raise _err(name, op, f"cannot be converted: {detail(e)}") from None
            self.vals[node.output[0]] = res
            for extra in node.output[1:]:
                if extra:
                    self.secondary[extra] = (name, op)
        out = out_names[0]
        if out in self.secondary:
            raise _err(*self.secondary[out], "has its secondary output as the model output")
        if out not in self.vals:
            raise ConversionError(f"tinymp convert: the ONNX output '{shown(out)}' does not "
                                  "depend on the input")
        return self.vals[out]

    # -- constants ------------------------------------------------------------------------

    def _shape(self, node):
        x = self.vals[node.input[0]]
        shape = np.array((1,) + x.shape, dtype=np.int64)
        a = self._attrs(node)
        start, end = a.get("start", 0), a.get("end", None)
        self.consts[node.output[0]] = shape[start:end]

    def _const_node(self, node):
        """Evaluate a node whose inputs are all constants (shape arithmetic, weight prep)."""
        name, op = self._where(node)
        a = self._attrs(node)
        ins = [self._const_in(node, i) for i in range(len(node.input))]
        t = op
        try:
            n = self._planned_size(t, a, ins)
            if n > MAX_CONST_VALUES:
                raise self._too_large(name, op, n)
            if t == "Constant":
                if "value" in a:
                    r = self.nh.to_array(a["value"])
                elif "value_float" in a or "value_int" in a:
                    r = np.array(a.get("value_float", a.get("value_int")))
                elif "value_floats" in a or "value_ints" in a:
                    r = np.array(a.get("value_floats", a.get("value_ints")))
                else:
                    raise _unsupported(name, op + " (sparse or string value)")
            elif t in ("Identity", "Dropout"):
                r = ins[0]
            elif t == "Cast":
                r = ins[0].astype(self.onnx.helper.tensor_dtype_to_np_dtype(a["to"]))
            elif t == "Gather":
                r = np.take(ins[0], ins[1].astype(np.int64), axis=a.get("axis", 0))
            elif t == "Unsqueeze":
                axes = _ints(a.get("axes") if "axes" in a else ins[1], "axes")
                r = ins[0]
                nd = r.ndim + len(axes)
                for ax in sorted(v % nd for v in axes):
                    r = np.expand_dims(r, ax)
            elif t == "Squeeze":
                axes = a.get("axes") if "axes" in a else (ins[1] if len(ins) > 1 else None)
                r = np.squeeze(ins[0], axis=None if axes is None else
                               tuple(_ints(axes, "axes")))
            elif t == "Concat":
                r = np.concatenate([np.atleast_1d(v) for v in ins], axis=a["axis"])
            elif t == "Reshape":
                r = ins[0].reshape(self._reshape_target(ins[0].shape, ins[1],
                                                        a.get("allowzero", 0)))
            elif t == "Transpose":
                r = np.transpose(ins[0], a.get("perm"))
            elif t in ("Add", "Sub", "Mul", "Div"):
                f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}.get(t)
                if t == "Div":
                    r = (ins[0] // ins[1] if np.issubdtype(ins[0].dtype, np.integer)
                         else ins[0] / ins[1])
                else:
                    r = f(ins[0], ins[1])
            elif t in ("Neg", "Sqrt", "Reciprocal"):
                r = {"Neg": np.negative, "Sqrt": np.sqrt, "Reciprocal": np.reciprocal}[t](ins[0])
            elif t == "Shape":
                r = np.array(np.shape(ins[0]), dtype=np.int64)[a.get("start", 0):a.get("end")]
            elif t == "Size":
                r = np.array(np.size(ins[0]), dtype=np.int64)
            elif t == "Expand":
                r = ins[0] * np.ones(tuple(_ints(ins[1])), dtype=ins[0].dtype)
            elif t == "Range":
                r = np.arange(ins[0].item(), ins[1].item(), ins[2].item(), dtype=ins[0].dtype)
            elif t in ("Floor", "Ceil", "Abs"):
                r = {"Floor": np.floor, "Ceil": np.ceil, "Abs": np.abs}[t](ins[0])
            elif t in ("Max", "Min"):
                r = (np.maximum if t == "Max" else np.minimum).reduce(np.broadcast_arrays(*ins))
            elif t == "Equal":
                r = np.equal(ins[0], ins[1])
            elif t == "Where":
                r = np.where(ins[0], ins[1], ins[2])
            elif t == "Slice":
                r = self._slice(node, a, ins)
            elif t == "ConstantOfShape":
                v = self.nh.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
                r = np.full(tuple(_ints(ins[0])), v.reshape(-1)[0], dtype=v.dtype)
            else:
                raise _unsupported(name, op)
        except ConversionError:
            raise
        except Exception as e:
            raise _err(name, op, f"cannot be evaluated on constants: {detail(e)}") from None
        r = np.asarray(r)
        if r.size > MAX_CONST_VALUES:
            raise self._too_large(name, op, r.size)
        self.consts[node.output[0]] = r

    @staticmethod
    def _too_large(name, op, n):
        return _err(name, op, f"computes a constant of {n:,} values",
                    f"tinymp evaluates shape computations of at most {MAX_CONST_VALUES:,} "
                    "values; the model's shape constants are damaged")

    @staticmethod
    def _planned_size(t, a, ins) -> int:
        """How many values constant op ``t`` is about to compute, for the ops whose result can
        be far larger than their inputs (0 for the others); raises ValueError for a shape that
        cannot be."""
        def dims(v):
            d = _ints(v)
            if any(s < 0 for s in d):
                raise ValueError(f"negative dimension in {d}")
            return d

        if t == "ConstantOfShape":
            return math.prod(dims(ins[0]))
        if t == "Expand":
            return math.prod(_broadcast_shape(np.shape(ins[0]), dims(ins[1])))
        if t == "Range":
            start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in ins[:3])
            if delta == 0 or not all(map(math.isfinite, (start, limit, delta))):
                raise ValueError(f"Range({start:g}, {limit:g}, {delta:g})")
            return max(0, math.ceil((limit - start) / delta))
        if t in ("Add", "Sub", "Mul", "Div", "Equal", "Where", "Max", "Min"):
            return math.prod(_broadcast_shape(*(np.shape(v) for v in ins if v is not None)))
        if t == "Gather" and len(ins) > 1 and np.ndim(ins[0]) > 0:
            d = np.shape(ins[0])
            axis = int(a.get("axis", 0)) % len(d)
            return math.prod(d[:axis] + d[axis + 1:]) * int(np.size(ins[1]))
        if t == "Concat":
            return sum(int(np.size(v)) for v in ins if v is not None)
        return 0

    def _slice(self, node, a, ins):
        data = ins[0]
        if self.opset < 10:
            starts, ends, axes = a["starts"], a["ends"], a.get("axes")
            steps = None
        else:
            starts, ends = ins[1], ins[2]
            axes = ins[3] if len(ins) > 3 and ins[3] is not None else None
            steps = ins[4] if len(ins) > 4 and ins[4] is not None else None
        starts, ends = _ints(starts, "starts"), _ints(ends, "ends")
        axes = list(range(len(starts))) if axes is None else _ints(axes, "axes")
        steps = [1] * len(starts) if steps is None else _ints(steps, "steps")
        idx = [slice(None)] * data.ndim
        for s, e, ax, st in zip(starts, ends, axes, steps):
            idx[ax] = slice(int(s), int(e), st)
        return data[tuple(idx)]

    @staticmethod
    def _reshape_target(in_shape, target, allowzero=0):
        target = _ints(target, "a reshape target")
        out = []
        for i, v in enumerate(target):
            if v == 0 and not allowzero:
                if i >= len(in_shape):
                    raise ValueError(f"reshape target {target} copies dimension {i} of a "
                                     f"{len(in_shape)}-D input")
                v = in_shape[i]
            if v < -1:
                raise ValueError(f"reshape target {target} has a negative dimension")
            out.append(v)
        if out.count(-1) > 1:
            raise ValueError(f"reshape target {target} has more than one -1")
        total = math.prod(int(v) for v in in_shape)
        if -1 in out:
            known = math.prod(v for v in out if v != -1)
            if known == 0 or total % known:
                raise ValueError(f"cannot reshape {tuple(in_shape)} to {target}")
            out[out.index(-1)] = total // known
        if math.prod(out) != total:
            raise ValueError(f"cannot reshape {tuple(in_shape)} to {target}")
        return tuple(out)

    # -- operators ------------------------------------------------------------------------

    def _op_Conv(self, node, a):
        name, op = self._where(node)
        x = self._act_in(node)
        w = _real(self._const_in(node, 1, required=True), "weights", name, op)
        b = self._const_in(node, 2)
        if w.ndim != 4:
            raise _err(name, op, f"has weights of shape {w.shape}", "only 2-D convolutions "
                       "(weights [out, in, kh, kw]) are supported")
        kh, kw = w.shape[2:]
        if "kernel_shape" in a and tuple(a["kernel_shape"]) != (kh, kw):
            raise _err(name, op, f"has kernel_shape {a['kernel_shape']} but weights {w.shape}")
        strides = tuple(_ints(a.get("strides", (1, 1)), "strides"))
        if len(strides) != 2 or min(strides) < 1:
            raise _err(name, op, f"has strides {list(strides)}", "expected two strides >= 1")
        dil = tuple(a.get("dilations", (1, 1)))
        if dil != (1, 1):
            raise _err(name, op, f"has dilations {list(dil)}", "dilated convolutions are not "
                       "supported")
        auto = _text(a.get("auto_pad", b"NOTSET"))
        if auto == "NOTSET":
            p = tuple(_ints(a.get("pads", (0, 0, 0, 0)), "pads"))
            if len(p) != 4:
                raise _err(name, op, f"has pads {list(p)}")
            pad = (p[0], p[1], p[2], p[3])         # x1_begin, x2_begin, x1_end, x2_end
        elif auto == "VALID":
            pad = (0, 0, 0, 0)
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            pad = []
            for n, k, s in ((x.shape[1], kh, strides[0]), (x.shape[2], kw, strides[1])):
                total = max((-(-n // s) - 1) * s + k - n, 0)
                small, big = total // 2, total - total // 2
                pad.append((small, big) if auto == "SAME_UPPER" else (big, small))
            pad = (pad[0][0], pad[1][0], pad[0][1], pad[1][1])
        else:
            raise _err(name, op, f"has auto_pad {shown(auto)!r}")
        return self.net.conv(x, w, b, strides, pad, a.get("group", 1), name, op)

    def _op_BatchNormalization(self, node, a):
        name, op = self._where(node)
        x = self._act_in(node)
        if a.get("training_mode", 0):
            raise _err(name, op, "is in training mode", "export the model in eval mode")
        scale, bias, mean, var = (_real(self._const_in(node, i, required=True), what, name, op)
                                  for i, what in enumerate(("a scale", "a bias", "a mean",
                                                            "a variance"), 1))
        var = var + float(a.get("epsilon", 1e-5))
        if not (var > 0).all():
            raise _err(name, op, "has a variance + epsilon that is not positive",
                       "the model file is damaged")
        s = scale / np.sqrt(var)
        return self.net.affine(x, s, bias - mean * s, name, op)

    def _op_Relu(self, node, a):
        name, op = self._where(node)
        return self.net.act(self._act_in(node), "relu", name, op)

    def _op_Clip(self, node, a):
        name, op = self._where(node)
        x = self._act_in(node)
        if self.opset < 11:
            lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
        else:
            lo = self._const_in(node, 1, -np.inf)
            hi = self._const_in(node, 2, np.inf)
        lo, hi = float(np.asarray(lo).reshape(-1)[0]), float(np.asarray(hi).reshape(-1)[0])
        if lo == 0.0 and hi == 6.0:
            return self.net.act(x, "relu6", name, op)
        if lo == 0.0 and hi >= _CLIP_INF:
            return self.net.act(x, "relu", name, op)
        raise _err(name, op, f"clips to [{lo:g}, {hi:g}]", "only Clip(0, 6) (ReLU6) and "
                   "Clip(0, inf) (ReLU) are supported")

    def _binary(self, kind, node):
        name, op = self._where(node)
        a, b = self._arg(node, 0), self._arg(node, 1)
        if not isinstance(a, _Op) and isinstance(b, _Op) and kind in ("add", "mul"):
            a, b = b, a
        if isinstance(a, _Op) and not isinstance(b, _Op):
            b = self._unbatch(_real(b, "a constant", name, op), a, name, op)
        elif isinstance(b, _Op) and not isinstance(a, _Op):
            a = self._unbatch(_real(a, "a constant", name, op), b, name, op)
        return self.net.binary(kind, a, b, name, op)

    @staticmethod
    def _unbatch(c, x, name, op):
        """An ONNX constant broadcast against [1, *x.shape]: as a constant without batch."""
        full = (1,) + x.shape
        if c.ndim > len(full):
            raise _err(name, op, f"has a constant of shape {c.shape}")
        if c.ndim == len(full):
            if c.shape[0] != 1:
                raise _err(name, op, f"has a constant of shape {c.shape} with a batch")
            c = c[0]
        return c

    def _op_Add(self, node, a):
        return self._binary("add", node)

    def _op_Sub(self, node, a):
        return self._binary("sub", node)

    def _op_Mul(self, node, a):
        return self._binary("mul", node)

    def _op_Div(self, node, a):
        return self._binary("div", node)

    def _op_GlobalAveragePool(self, node, a):
        name, op = self._where(node)
        return self.net.gap(self._act_in(node), True, name, op)

    def _op_ReduceMean(self, node, a):
        name, op = self._where(node)
        x = self._act_in(node)
        if self.opset >= 18:
            axes = self._const_in(node, 1)
        else:
            axes = a.get("axes")
        if axes is None or len(np.asarray(axes).reshape(-1)) == 0:
            raise _err(name, op, "reduces over all dimensions",
                       "only the mean over H and W (axes [2, 3]) is supported")
        axes = sorted(v % 4 for v in _ints(axes, "axes"))
        if not x.is_map or axes != [2, 3]:
            raise _err(name, op, f"reduces over axes {axes}",
                       "only the mean over H and W (axes [2, 3]) is supported")
        return self.net.gap(x, bool(a.get("keepdims", 1)), name, op)

    def _op_AveragePool(self, node, a):
        name, op = self._where(node)
        x = self._act_in(node)
        k = tuple(a.get("kernel_shape", ()))
        pads = tuple(a.get("pads", (0, 0, 0, 0)))
        auto = _text(a.get("auto_pad", b"NOTSET"))
        if x.is_map and k == x.shape[1:] and not any(pads) and auto in ("NOTSET", "VALID"):
            return self.net.gap(x, True, name, op)
        raise _unsupported(name, op, "only global average pooling (kernel = the whole map, "
                                     "no padding) is supported")

    def _op_Flatten(self, node, a):
        name, op = self._where(node)
        x = self._act_in(node)
        if a.get("axis", 1) != 1:
            raise _err(name, op, f"flattens from axis {a.get('axis')}",
                       "only Flatten(axis=1) keeps the batch dimension")
        return self.net.reshape(x, (int(np.prod(x.shape)),), name, op)

    def _op_Reshape(self, node, a):
        name, op = self._where(node)
        x = self._act_in(node)
        target = _ints(self._const_in(node, 1, required=True), "a reshape target")
        if self.input_batch is not None and self.input_batch > 1 and target[:1] == [self.input_batch]:
            # an export with a fixed batch B spells it out ([B, -1]); tinymp's batch is 1
            target[0] = 1
        out = self._reshape_target((1,) + x.shape, target, a.get("allowzero", 0))
        if out[0] != 1:
            raise _err(name, op, f"reshapes {['N'] + list(x.shape)} to {list(out)}",
                       "the batch dimension must stay first")
        return self.net.reshape(x, out[1:], name, op)

    def _op_Squeeze(self, node, a):
        name, op = self._where(node)
        x = self._act_in(node)
        axes = a.get("axes") if self.opset < 13 else self._const_in(node, 1)
        full = (1,) + x.shape
        if axes is None:
            raise _err(name, op, "squeezes every unit dimension, the batch too",
                       "give the axes (e.g. [2, 3])")
        axes = {v % len(full) for v in _ints(axes, "axes")}
        if 0 in axes or any(full[ax] != 1 for ax in axes):
            raise _err(name, op, f"squeezes axes {sorted(axes)} of {['N'] + list(x.shape)}")
        return self.net.reshape(x, tuple(s for i, s in enumerate(full) if i not in axes)[1:],
                                name, op)

    def _op_Unsqueeze(self, node, a):
        name, op = self._where(node)
        x = self._act_in(node)
        axes = a.get("axes") if self.opset < 13 else self._const_in(node, 1, required=True)
        shape = list((1,) + x.shape)
        axes = _ints(axes, "axes")
        nd = len(shape) + len(axes)
        for ax in sorted(v % nd for v in axes):
            if ax == 0:
                raise _err(name, op, "adds a dimension before the batch")
            shape.insert(ax, 1)
        return self.net.reshape(x, tuple(shape[1:]), name, op)

    def _op_Gemm(self, node, a):
        name, op = self._where(node)
        x = self._act_in(node)
        if a.get("transA", 0):
            raise _err(name, op, "has transA=1", "the activation must be the first, "
                       "untransposed operand")
        w = _real(self._const_in(node, 1, required=True), "weights", name, op)
        if w.ndim != 2:
            raise _err(name, op, f"has {w.ndim}-D weights")
        w = (w if a.get("transB", 0) else w.T) * float(a.get("alpha", 1.0))
        c = self._const_in(node, 2)
        b = None
        if c is not None:
            b = np.broadcast_to(_real(c, "a bias", name, op) * float(a.get("beta", 1.0)),
                                (1, w.shape[0])).reshape(-1)
        return self.net.linear(x, w, b, name, op)

    def _op_MatMul(self, node, a):
        name, op = self._where(node)
        x = self._act_in(node)
        w = _real(self._const_in(node, 1, required=True), "weights", name, op)
        if w.ndim != 2:
            raise _err(name, op, f"multiplies by a {w.ndim}-D constant")
        return self.net.linear(x, w.T, None, name, op)

    def _op_Pad(self, node, a):
        name, op = self._where(node)
        x = self._act_in(node)
        mode = _text(a.get("mode", b"constant"))
        if mode != "constant":
            raise _err(name, op, f"pads in mode {shown(mode)!r}", "only zero padding is supported")
        if self.opset < 11:
            pads, value, axes = a.get("pads"), a.get("value", 0.0), None
        else:
            pads = self._const_in(node, 1, required=True)
            value = self._const_in(node, 2, 0.0)
            axes = self._const_in(node, 3)
        value = float(np.asarray(value).reshape(-1)[0]) if np.asarray(value).size else 0.0
        if value != 0.0:
            raise _err(name, op, f"pads with the value {value}", "only zero padding is "
                       "supported")
        pads = _ints(pads, "pads")
        if axes is None:
            axes = list(range(len(pads) // 2))
        axes = [v % 4 for v in _ints(axes, "axes")]
        begin = dict(zip(axes, pads[:len(axes)]))
        end = dict(zip(axes, pads[len(axes):]))
        if any(begin.get(d, 0) or end.get(d, 0) for d in (0, 1)):
            raise _err(name, op, f"pads the batch or channel dimension ({pads})",
                       "only spatial zero padding is supported")
        return self.net.pad(x, (begin.get(2, 0), begin.get(3, 0), end.get(2, 0),
                                end.get(3, 0)), name, op)

    def _op_Identity(self, node, a):
        return self._act_in(node)

    def _op_Dropout(self, node, a):
        name, op = self._where(node)
        if len(node.input) > 2 and node.input[2]:
            mode = self._const_in(node, 2)
            if mode is not None and bool(np.asarray(mode).reshape(-1)[0]):
                raise _err(name, op, "is dropout in training mode")
        return self._act_in(node)
