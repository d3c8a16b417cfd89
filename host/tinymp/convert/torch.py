"""PyTorch importer: a float ``torch.nn.Module`` to an int8 ``.tmpm`` model.

::

    from tinymp.convert import from_torch
    blob = from_torch(model, calib)              # calib: float [N, C, H, W] tensor or array
    blob = from_torch(model, calib_nhwc, input_layout='NHWC', class_names=[...],
                      input_range=(0.0, 1.0))
    g = to_graph(model, calib)                   # the float tinymp.builder.Graph, unquantised

The model is traced in eval mode with ``torch.fx.symbolic_trace`` (when that fails because the
forward pass computes with tensor shapes, e.g. TensorFlow-style 'same' padding, with
``torch.export``), every node is mapped onto tinymp's layers, the float graph is checked against
``model(calib)`` and then quantised on ``calib`` (:meth:`tinymp.builder.Graph.quantize`). The
converted model has the fixed input resolution of the calibration samples. The module's
training / eval mode is restored afterwards.

Supported (module, functional, Tensor method and ATen forms):

* ``nn.Conv2d`` / ``F.conv2d``: groups 1 (``conv``, or ``pwconv`` for 1x1 stride-1 unpadded
  kernels) or groups = in = out channels (``dwconv``); zero padding (symmetric ints, tuples,
  ``'same'``, ``'valid'``); stride 1..4; no dilation; other groups raise ConversionError;
* ``nn.BatchNorm2d`` / ``nn.BatchNorm1d`` / ``F.batch_norm`` with running statistics: folded
  into the convolution / Linear before it (eval-mode statistics), else a 1x1 depthwise layer;
* ``nn.ReLU``, ``nn.ReLU6``, ``F.relu``, ``F.relu6``, ``hardtanh(0, 6)``, ``clamp(0, 6)``,
  ``clamp(min=0)``: fused into the layer before it (else an identity 1x1 depthwise layer);
* ``+`` / ``torch.add`` / ``operator.add`` of two activations: residual ``add``; adding,
  subtracting, multiplying or dividing by a scalar or per-channel constant: folded (BN-like);
* ``nn.AdaptiveAvgPool2d(1)``, ``F.adaptive_avg_pool2d(x, 1)``, ``x.mean((2, 3))``,
  ``avg_pool2d`` with the kernel covering the whole map: global ``avgpool``;
* ``flatten`` / ``view`` / ``reshape`` / ``squeeze`` / ``unsqueeze`` (keeping the batch first):
  no-ops; a Linear after flattening a map larger than 1x1 gets its weights permuted from
  NCHW to tinymp's HWC flattening order;
* ``nn.Linear`` / ``F.linear`` / ``x @ W`` (constant W): ``fc``;
* ``nn.ZeroPad2d``, ``nn.ConstantPad2d(.., 0)``, ``F.pad`` (constant 0) feeding convolutions:
  merged into their padding (it must stay smaller than the kernel);
* ``nn.Dropout*`` / ``F.dropout*`` (eval), ``nn.Identity``, ``contiguous``, ``clone``: skipped.

Anything else raises :class:`ConversionError` naming the fx node (the module's qualified name,
or the function and the module it is called in) with a hint.
"""

from __future__ import annotations

import operator

import numpy as np

from . import (FLOAT_CHECK_SAMPLES, FLOAT_TOLERANCE, ConversionError, _as_batch, _check_float,
               _err, _Net, _Op, _quantize, _unsupported, quiet_numpy)

__all__ = ["from_torch", "to_graph"]


def _import_torch():
    try:
        import torch
        import torch.fx  # noqa: F401
    except ImportError as e:
        raise ImportError("tinymp.convert.from_torch needs PyTorch: pip install torch==2.13.0 "
                          f"({e})") from e
    return torch


@quiet_numpy
def from_torch(module, calib, input_range=None, class_names=None, input_layout="NCHW", *,
               float_tolerance: float = FLOAT_TOLERANCE) -> bytes:
    """Convert a float PyTorch model to ``.tmpm`` bytes (see the module documentation).

    ``calib``: float calibration samples [N, C, H, W] (or [N, H, W, C] with
    ``input_layout='NHWC'``), a tensor or an array, in the value range the model is fed;
    ``input_range``: (lo, hi) of the input quantisation (default: the calibration range);
    ``class_names``: one per output. ``float_tolerance``: the float graph must match torch
    within ``float_tolerance * max(1, max |logit|)``.
    """
    x = _as_batch(calib, input_layout, "calib")
    graph = _to_graph(module, x, float_tolerance, ("calib", input_layout))
    return _quantize(graph, x, class_names, input_range)


@quiet_numpy
def to_graph(module, sample, input_layout="NCHW", *, float_tolerance: float = FLOAT_TOLERANCE):
    """The float :class:`tinymp.builder.Graph` of a PyTorch model (checked against torch on
    ``sample``, which also fixes the input resolution)."""
    return _to_graph(module, _as_batch(sample, input_layout, "sample"), float_tolerance,
                     ("sample", input_layout))


def _to_graph(module, x: np.ndarray, tolerance: float, given=("calib", "NCHW")):
    """``given``: (the argument's name, its layout), for the message when the model cannot run
    on the samples."""
    torch = _import_torch()
    if not isinstance(module, torch.nn.Module):
        raise ConversionError(f"tinymp convert: from_torch needs a torch.nn.Module, got "
                              f"{type(module).__name__}")
    was_training = module.training
    module.eval()
    try:
        p = next(iter(module.parameters()), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        device = p.device if p is not None else torch.device("cpu")
        xt = torch.from_numpy(x).to(device=device, dtype=dtype)
        # a batch of two: reshapes that touch the batch dimension are told apart
        example = xt[:2] if len(xt) >= 2 else torch.cat([xt[:1], xt[:1]])
        with torch.no_grad():
            gm = _trace(torch, module, example)
            values = _record(torch, gm, example, given, x.shape)
            conv = _Converter(torch, gm, values, x.shape[1:])
            out = conv.run()
            graph = conv.net.build(out)
            xs = xt[:FLOAT_CHECK_SAMPLES]
            ref = []
            for s in range(0, len(xs), 64):
                y = module(xs[s:s + 64])
                if isinstance(y, (tuple, list)) and len(y) == 1:
                    y = y[0]
                if not isinstance(y, torch.Tensor):
                    raise ConversionError("tinymp convert: the model must return one tensor "
                                          f"(logits), got {type(y).__name__}")
                ref.append(y.detach().to("cpu", torch.float64).reshape(len(y), -1).numpy())
        _check_float(graph, x[:FLOAT_CHECK_SAMPLES].transpose(0, 2, 3, 1), np.concatenate(ref),
                     tolerance, "PyTorch")
        return graph
    finally:
        module.train(was_training)


def _trace(torch, module, example):
    fx = torch.fx
    if isinstance(module, fx.GraphModule):
        return module
    try:
        return fx.symbolic_trace(module)
    except Exception as e:          # e.g. a TraceError: control flow on shapes
        fx_error = e
    try:
        return torch.export.export(module, (example,), strict=False).module()
    except Exception as e:
        raise ConversionError(
            "tinymp convert: cannot trace the PyTorch model: torch.fx.symbolic_trace failed "
            f"({type(fx_error).__name__}: {fx_error}) and so did torch.export "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); the forward "
            "pass must not branch on tensor values") from None


def _record(torch, gm, example, given, shape):
    """Run the traced graph once and keep every node's value (shapes, constants)."""
    values = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            values[n] = r
            return r

    try:
        Recorder(gm).run(example)
    except ConversionError:
        raise
    except Exception as e:
        # PyTorch's message (first line: the rest is a graph dump) and what the model was given;
        # the usual cause is samples of another shape or layout than the model takes
        first = (str(e).strip().splitlines() or [""])[0]
        name, layout = given
        other = "NHWC" if layout == "NCHW" else "NCHW"
        raise ConversionError(
            f"tinymp convert: the model cannot run on {name} ({type(e).__name__}: {first}); "
            f"{name} was read as {layout}, i.e. [N, C, H, W] = {list(shape)} -- check its "
            f"channels and size, or give input_layout='{other}' if it is {other}") from None
    return values


class _Tuple:
    """A tuple-valued node (e.g. ATen's batch norm) of which element 0 is the activation."""

    def __init__(self, first):
        self.first = first


# --------------------------------------------------------------------------------------------
# node mapping
# --------------------------------------------------------------------------------------------

def _function_table(torch):
    """{function: (key, parameter names)} for call_function nodes of python-level functions."""
    F = torch.nn.functional

    def resolve(name):
        mod, _, attr = name.rpartition(".")
        return getattr({"F": F, "operator": operator, "": torch}[mod], attr, None)

    io, ioa = ["input", "other"], ["input", "other", "alpha"]
    spec = [
        ("relu", ["input", "inplace"], "F.relu F.relu_ relu relu_"),
        ("relu6", ["input", "inplace"], "F.relu6"),
        ("hardtanh", ["input", "min_val", "max_val", "inplace"], "F.hardtanh F.hardtanh_"),
        ("clamp", ["input", "min", "max"], "clamp clip clamp_min"),
        ("add", io, "operator.add operator.iadd"), ("add", ioa, "add"),
        ("sub", io, "operator.sub operator.isub"), ("sub", ioa, "sub subtract"),
        ("mul", io, "operator.mul operator.imul mul multiply"),
        ("div", io, "operator.truediv operator.itruediv div true_divide"),
        ("reshape", ["input"], "flatten reshape squeeze unsqueeze"),
        ("mean", ["input", "dim", "keepdim"], "mean"),
        ("adaptive_avg_pool", ["input", "output_size"], "F.adaptive_avg_pool2d"),
        ("avg_pool", ["input", "kernel_size", "stride", "padding", "ceil_mode",
                      "count_include_pad", "divisor_override"], "F.avg_pool2d"),
        ("pad", ["input", "pad", "mode", "value"], "F.pad"),
        ("pad", ["input", "pad", "value"], "constant_pad_nd"),
        ("dropout", ["input", "p", "training", "inplace"],
         "F.dropout F.dropout1d F.dropout2d F.dropout3d F.alpha_dropout F.feature_alpha_dropout"),
        ("dropout", ["input", "p", "train"], "dropout"),
        ("conv2d", ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
         "F.conv2d conv2d"),
        ("linear", ["input", "weight", "bias"], "F.linear"),
        ("matmul", io, "matmul operator.matmul mm"),
        ("batch_norm", ["input", "running_mean", "running_var", "weight", "bias", "training",
                        "momentum", "eps"], "F.batch_norm"),
        ("batch_norm", ["input", "weight", "bias", "running_mean", "running_var", "training",
                        "momentum", "eps"], "batch_norm"),
        ("getitem", ["input", "index"], "operator.getitem"),
        ("identity", ["input"], "clone detach"),
    ]
    table = {}
    for key, params, names in spec:
        for name in names.split():
            f = resolve(name)
            if f is not None:           # absent from this torch version
                table[f] = (key, params)
    return table


_METHODS = {
    "relu": ("relu", ["input"]), "relu_": ("relu", ["input"]),
    "clamp": ("clamp", ["input", "min", "max"]), "clamp_": ("clamp", ["input", "min", "max"]),
    "clip": ("clamp", ["input", "min", "max"]), "clip_": ("clamp", ["input", "min", "max"]),
    "clamp_min": ("clamp", ["input", "min"]), "clamp_min_": ("clamp", ["input", "min"]),
    "add": ("add", ["input", "other", "alpha"]), "add_": ("add", ["input", "other", "alpha"]),
    "sub": ("sub", ["input", "other", "alpha"]), "sub_": ("sub", ["input", "other", "alpha"]),
    "mul": ("mul", ["input", "other"]), "mul_": ("mul", ["input", "other"]),
    "div": ("div", ["input", "other"]), "div_": ("div", ["input", "other"]),
    "view": ("reshape", ["input"]), "reshape": ("reshape", ["input"]),
    "flatten": ("reshape", ["input"]), "squeeze": ("reshape", ["input"]),
    "unsqueeze": ("reshape", ["input"]), "view_as": ("reshape", ["input"]),
    "reshape_as": ("reshape", ["input"]), "squeeze_": ("reshape", ["input"]),
    "unsqueeze_": ("reshape", ["input"]),
    "mean": ("mean", ["input", "dim", "keepdim"]),
    "contiguous": ("identity", ["input"]), "clone": ("identity", ["input"]),
    "detach": ("identity", ["input"]), "float": ("identity", ["input"]),
    "to": ("identity", ["input"]), "type_as": ("identity", ["input"]),
    "cpu": ("identity", ["input"]),
    "matmul": ("matmul", ["input", "other"]), "mm": ("matmul", ["input", "other"]),
}

_ATEN = {
    "conv2d": "conv2d", "convolution": "convolution", "batch_norm": "batch_norm",
    "_native_batch_norm_legit_no_training": "batch_norm_tuple",
    "relu": "relu", "relu6": "relu6", "hardtanh": "hardtanh", "clamp": "clamp", "clip": "clamp",
    "clamp_min": "clamp", "add": "add", "sub": "sub", "mul": "mul", "div": "div",
    "mean": "mean", "adaptive_avg_pool2d": "adaptive_avg_pool",
    "_adaptive_avg_pool2d": "adaptive_avg_pool", "avg_pool2d": "avg_pool",
    "view": "reshape", "reshape": "reshape", "_unsafe_view": "reshape", "flatten": "reshape",
    "squeeze": "reshape", "unsqueeze": "reshape",
    "linear": "linear", "addmm": "addmm", "mm": "matmul", "matmul": "matmul",
    "pad": "pad", "constant_pad_nd": "pad",
    "dropout": "dropout", "feature_dropout": "dropout", "alpha_dropout": "dropout",
    "feature_alpha_dropout": "dropout",
    "clone": "identity", "contiguous": "identity", "alias": "identity", "detach": "identity",
    "_to_copy": "identity", "to": "identity", "lift_fresh_copy": "identity",
}


def _pair(v, what="value"):
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return int(v[0]), int(v[0])
        if len(v) != 2:
            raise ValueError(f"{what} {v!r} is not a pair")
        return int(v[0]), int(v[1])
    return int(v), int(v)


class _Converter:
    def __init__(self, torch, gm, values, input_chw):
        self.torch = torch
        self.gm = gm
        self.values = values
        self.net = _Net(input_chw)
        self.vals = {}                       # fx node -> _Op | _Tuple
        self.modules = dict(gm.named_modules())
        self.funcs = _function_table(torch)

    # -- naming ---------------------------------------------------------------------------

    def _where(self, n):
        """(layer name, op description) of an fx node, for error messages."""
        if n.op == "call_module":
            mod = self.modules.get(n.target)
            return str(n.target), type(mod).__name__
        stack = n.meta.get("nn_module_stack") or {}
        path = ""
        if stack:
            last = list(stack.values())[-1]
            path = last[0] if isinstance(last, tuple) else str(last)
        if n.op == "call_method":
            op = f"Tensor.{n.target}"
        else:
            op = self._qualname(n.target)
        if path:
            op += f" in module '{path}'"
        return n.name, op

    def _qualname(self, target):
        if isinstance(target, self.torch._ops.OpOverload):
            return str(target)
        try:
            from torch.fx.node import _get_qualified_name
            return _get_qualified_name(target)
        except Exception:
            return getattr(target, "__name__", repr(target))

    # -- values ---------------------------------------------------------------------------

    def _const(self, v):
        """A constant argument as python / numpy (tensors as float64 arrays)."""
        torch = self.torch
        if isinstance(v, torch.fx.Node):
            if v in self.vals:
                raise ValueError("activation")
            v = self.values.get(v)
        if isinstance(v, torch.Tensor):
            return v.detach().to("cpu", torch.float64).numpy()
        if isinstance(v, (list, tuple)):
            return type(v)(self._const(i) for i in v)
        return v

    def _arg(self, v):
        """An activation (_Op) or a constant."""
        if isinstance(v, self.torch.fx.Node) and v in self.vals:
            val = self.vals[v]
            return val
        return self._const(v)

    def _depends(self, n) -> bool:
        return any(i in self.vals for i in n.all_input_nodes)

    # -- main loop ------------------------------------------------------------------------

    def run(self) -> _Op:
        torch = self.torch
        graph = self.gm.graph
        nodes = list(graph.nodes)
        out_node = next(n for n in reversed(nodes) if n.op == "output")
        needed = set()
        stack = [out_node]
        while stack:
            n = stack.pop()
            if n in needed:
                continue
            needed.add(n)
            stack.extend(n.all_input_nodes)
        seen_input = False
        for n in nodes:
            if n not in needed:
                continue
            if n.op == "placeholder":
                if seen_input:
                    raise ConversionError(f"tinymp convert: the model has more than one input "
                                          f"('{n.target}'); tinymp models take one image")
                seen_input = True
                self.vals[n] = self.net.input
                continue
            if n.op == "output":
                res = n.args[0]
                while isinstance(res, (tuple, list)) and len(res) == 1:
                    res = res[0]
                if not (isinstance(res, torch.fx.Node) and isinstance(self.vals.get(res), _Op)):
                    raise ConversionError("tinymp convert: the model must return one tensor "
                                          "(the logits) computed from its input")
                return self.vals[res]
            if n.op == "get_attr" or not self._depends(n):
                continue                                    # a constant
            v = self.values.get(n)
            if not (isinstance(v, torch.Tensor) or
                    (isinstance(v, (tuple, list)) and v and isinstance(v[0], torch.Tensor))):
                continue                                    # x.size(0), x.shape, ...
            if isinstance(v, torch.Tensor) and not v.is_floating_point():
                name, op = self._where(n)
                raise _err(name, op, f"produces a {v.dtype} tensor",
                           "tinymp models compute on float activations only")
            try:
                self.vals[n] = self._convert(n)
            except ConversionError:
                raise
            except (ValueError, TypeError) as e:
                name, op = self._where(n)
                raise _err(name, op, f"cannot be converted: {e}") from None
        raise ConversionError("tinymp convert: the traced graph has no output")  # pragma: no cover

    def _convert(self, n):
        torch = self.torch
        name, op = self._where(n)
        if n.op == "call_module":
            return self._module(n, self.modules[n.target], name, op)
        if n.op == "call_method":
            key, names = _METHODS.get(n.target, (None, None))
        else:
            target = n.target
            if isinstance(target, torch._ops.OpOverload):
                sname = target._schema.name.split("::")[-1]
                base = sname[:-1] if sname.endswith("_") and not sname.startswith("_") else sname
                key = _ATEN.get(base)
                names = [("input" if a.name == "self" else a.name)
                         for a in target._schema.arguments]
            else:
                key, names = self.funcs.get(target, (None, None))
        if key is None:
            raise _unsupported(name, op)
        b = dict(zip(names, n.args))
        b.update(n.kwargs)
        return getattr(self, "_h_" + key)(n, b, name, op)

    def _x(self, b, name, op, key="input"):
        x = self._arg(b.get(key))
        if isinstance(x, _Tuple):
            raise _err(name, op, "takes a tuple as input")
        if not isinstance(x, _Op):
            raise _err(name, op, "has a constant as its data input")
        return x

    def _out_shape(self, n):
        return tuple(self.values[n].shape)

    # -- modules --------------------------------------------------------------------------

    def _module(self, n, mod, name, op):
        nn = self.torch.nn
        x = self._x({"input": n.args[0] if n.args else n.kwargs.get("input")}, name, op)
        if len(n.args) + len(n.kwargs) != 1:
            raise _err(name, op, "is called with more than one argument")
        w = lambda t: None if t is None else t.detach().to("cpu", self.torch.float64).numpy()
        if isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros":
                raise _err(name, op, f"uses padding_mode={mod.padding_mode!r}",
                           "only zero padding is supported")
            return self._conv(x, w(mod.weight), w(mod.bias), mod.stride, mod.padding,
                              mod.dilation, mod.groups, name, op)
        if isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
            if mod.running_mean is None or mod.running_var is None:
                raise _err(name, op, "has no running statistics (track_running_stats=False)",
                           "tinymp folds BatchNorm with its eval-mode running statistics")
            return self._bn(x, w(mod.running_mean), w(mod.running_var), w(mod.weight),
                            w(mod.bias), mod.eps, name, op)
        if isinstance(mod, nn.ReLU):
            return self.net.act(x, "relu", name, op)
        if isinstance(mod, nn.Hardtanh):              # includes nn.ReLU6
            return self._hardtanh(x, mod.min_val, mod.max_val, name, op)
        if isinstance(mod, nn.Linear):
            return self.net.linear(x, w(mod.weight), w(mod.bias), name, op)
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            return self._adaptive(n, x, name, op)
        if isinstance(mod, nn.AvgPool2d):
            return self._avg_pool(n, x, mod.kernel_size, mod.stride, mod.padding, name, op)
        if isinstance(mod, (nn.Flatten, nn.Unflatten)):
            return self._reshape(n, x, name, op)
        if isinstance(mod, (nn.Identity, nn.modules.dropout._DropoutNd)):
            return x
        if isinstance(mod, nn.ConstantPad2d):         # includes nn.ZeroPad2d
            return self._pad(x, mod.padding, "constant", mod.value, name, op)
        raise _unsupported(name, op)

    # -- handlers -------------------------------------------------------------------------

    def _conv(self, x, weight, bias, stride, padding, dilation, groups, name, op):
        if not isinstance(weight, np.ndarray):
            raise _err(name, op, "has non-constant weights", "weights must be parameters or "
                       "constants of the model")
        kh, kw = weight.shape[2:] if weight.ndim == 4 else (1, 1)
        dh, dw = _pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding == "valid":
                pad = (0, 0, 0, 0)
            elif padding == "same":
                th, tw = dh * (kh - 1), dw * (kw - 1)
                pad = (th // 2, tw // 2, th - th // 2, tw - tw // 2)
            else:
                raise _err(name, op, f"has padding {padding!r}")
        else:
            ph, pw = _pair(padding, "padding")
            pad = (ph, pw, ph, pw)
        return self.net.conv(x, weight, bias, _pair(stride, "stride"), pad, groups, name, op,
                             dilation=(dh, dw))

    def _bn(self, x, mean, var, weight, bias, eps, name, op):
        if mean is None or var is None:
            raise _err(name, op, "has no running statistics",
                       "tinymp folds BatchNorm with its eval-mode running statistics")
        scale = 1.0 / np.sqrt(np.asarray(var, np.float64) + float(eps))
        if weight is not None:
            scale = scale * weight
        shift = -np.asarray(mean, np.float64) * scale
        if bias is not None:
            shift = shift + bias
        return self.net.affine(x, scale, shift, name, op)

    def _hardtanh(self, x, lo, hi, name, op):
        lo, hi = float(lo), float(hi)
        if lo == 0.0 and hi == 6.0:
            return self.net.act(x, "relu6", name, op)
        raise _err(name, op, f"clamps to [{lo:g}, {hi:g}]",
                   "only ReLU (clamp(min=0)) and ReLU6 (clamp(0, 6), hardtanh(0, 6)) are "
                   "supported")

    def _scalar(self, v, name, op):
        v = self._arg(v)
        if isinstance(v, _Op):
            raise _err(name, op, "has an activation where a constant is expected")
        if v is None:
            return None
        a = np.asarray(v, dtype=np.float64)
        if a.size != 1:
            raise _err(name, op, f"has a non-scalar bound of shape {a.shape}")
        return float(a.reshape(-1)[0])

    def _adaptive(self, n, x, name, op):
        out = self._out_shape(n)
        if len(out) == 4 and out[2:] == (1, 1):
            return self.net.gap(x, True, name, op)
        if len(out) == 4 and x.is_map and out[1:] == x.shape:
            return x
        raise _err(name, op, f"pools to {out[2:]}", "only global average pooling (output "
                   "size 1) is supported")

    def _avg_pool(self, n, x, kernel, stride, padding, name, op):
        if not x.is_map:
            raise _err(name, op, "is applied to a vector")
        kh, kw = _pair(kernel, "kernel_size")
        ph, pw = _pair(padding if padding is not None else 0, "padding")
        out = self._out_shape(n)
        if (kh, kw) == x.shape[1:] and (ph, pw) == (0, 0) and out[2:] == (1, 1):
            return self.net.gap(x, True, name, op)
        if (kh, kw) == (1, 1) and out[1:] == x.shape:
            return x
        raise _unsupported(name, op, "only global average pooling (kernel = the whole feature "
                                     "map, no padding) is supported: use "
                                     "nn.AdaptiveAvgPool2d(1) or a stride-2 convolution")

    def _reshape(self, n, x, name, op):
        out = self._out_shape(n)
        batch = len(self.values[self._first_input(n)])
        if not out or out[0] != batch:
            raise _err(name, op, f"reshapes to {out} and so mixes the batch dimension",
                       "keep the batch first, e.g. torch.flatten(x, 1) or x.view(x.size(0), -1)")
        return self.net.reshape(x, out[1:], name, op)

    def _first_input(self, n):
        for a in n.all_input_nodes:
            if a in self.vals:
                return a
        raise ValueError("no activation input")  # pragma: no cover

    def _pad(self, x, pads, mode, value, name, op):
        if mode not in (None, "constant"):
            raise _err(name, op, f"pads in mode {mode!r}", "only zero padding is supported")
        if value not in (None, 0, 0.0):
            raise _err(name, op, f"pads with the value {value}", "only zero padding is "
                       "supported")
        pads = [int(p) for p in pads]
        if len(pads) % 2 or not 2 <= len(pads) <= 8:
            raise _err(name, op, f"has padding {pads}")
        if any(pads[4:]):
            raise _err(name, op, f"pads the channel or batch dimension ({pads})",
                       "only spatial zero padding is supported")
        l, r = pads[0], pads[1]
        t, bo = (pads[2], pads[3]) if len(pads) >= 4 else (0, 0)
        return self.net.pad(x, (t, l, bo, r), name, op)

    def _h_relu(self, n, b, name, op):
        return self.net.act(self._x(b, name, op), "relu", name, op)

    def _h_relu6(self, n, b, name, op):
        return self.net.act(self._x(b, name, op), "relu6", name, op)

    def _h_hardtanh(self, n, b, name, op):
        x = self._x(b, name, op)
        return self._hardtanh(x, self._scalar(b.get("min_val", -1.0), name, op),
                              self._scalar(b.get("max_val", 1.0), name, op), name, op)

    def _h_clamp(self, n, b, name, op):
        x = self._x(b, name, op)
        lo = self._scalar(b.get("min"), name, op)
        hi = self._scalar(b.get("max"), name, op)
        if lo == 0.0 and hi is None:
            return self.net.act(x, "relu", name, op)
        if lo == 0.0 and hi == 6.0:
            return self.net.act(x, "relu6", name, op)
        raise _err(name, op, f"clamps to [{lo}, {hi}]", "only clamp(min=0) (ReLU) and "
                   "clamp(0, 6) (ReLU6) are supported")

    def _binary(self, kind, b, name, op):
        a, c = self._arg(b.get("input")), self._arg(b.get("other"))
        if isinstance(a, _Tuple) or isinstance(c, _Tuple):
            raise _err(name, op, "takes a tuple as input")
        alpha = self._scalar(b.get("alpha", 1.0), name, op)
        if b.get("rounding_mode") is not None:
            raise _err(name, op, f"divides with rounding_mode={b['rounding_mode']!r}")
        return self.net.binary(kind, a, c, name, op, alpha=alpha)

    def _h_add(self, n, b, name, op):
        return self._binary("add", b, name, op)

    def _h_sub(self, n, b, name, op):
        return self._binary("sub", b, name, op)

    def _h_mul(self, n, b, name, op):
        return self._binary("mul", b, name, op)

    def _h_div(self, n, b, name, op):
        return self._binary("div", b, name, op)

    def _h_reshape(self, n, b, name, op):
        return self._reshape(n, self._x(b, name, op), name, op)

    def _h_mean(self, n, b, name, op):
        x = self._x(b, name, op)
        dims = b.get("dim")
        if not x.is_map or dims is None:
            raise _err(name, op, "averages over other dimensions than H and W",
                       "only the global average over H and W (dims (2, 3)) is supported")
        dims = [dims] if isinstance(dims, int) else list(dims)
        if sorted(d % 4 for d in dims) != [2, 3]:
            raise _err(name, op, f"averages over dims {dims}",
                       "only the global average over H and W (dims (2, 3)) is supported")
        return self.net.gap(x, bool(b.get("keepdim", False)), name, op)

    def _h_adaptive_avg_pool(self, n, b, name, op):
        return self._adaptive(n, self._x(b, name, op), name, op)

    def _h_avg_pool(self, n, b, name, op):
        x = self._x(b, name, op)
        if b.get("ceil_mode") or b.get("divisor_override"):
            raise _unsupported(name, op)
        return self._avg_pool(n, x, self._const(b.get("kernel_size")),
                              self._const(b.get("stride")), self._const(b.get("padding", 0)),
                              name, op)

    def _h_pad(self, n, b, name, op):
        x = self._x(b, name, op)
        return self._pad(x, self._const(b.get("pad")), b.get("mode", "constant"),
                         self._scalar(b.get("value"), name, op), name, op)

    def _h_dropout(self, n, b, name, op):
        x = self._x(b, name, op)
        if b.get("training", b.get("train", False)):
            raise _err(name, op, "is dropout in training mode", "call it with "
                       "training=self.training (the model is converted in eval mode)")
        return x

    def _h_identity(self, n, b, name, op):
        return self._x(b, name, op)

    def _h_conv2d(self, n, b, name, op):
        x = self._x(b, name, op)
        return self._conv(x, self._const(b.get("weight")), self._const(b.get("bias")),
                          self._const(b.get("stride", 1)), self._const(b.get("padding", 0)),
                          self._const(b.get("dilation", 1)), self._const(b.get("groups", 1)),
                          name, op)

    def _h_convolution(self, n, b, name, op):
        if b.get("transposed"):
            raise _unsupported(name, op, "transposed convolutions are not supported")
        return self._h_conv2d(n, b, name, op)

    def _h_linear(self, n, b, name, op):
        x = self._x(b, name, op)
        return self.net.linear(x, self._const(b.get("weight")), self._const(b.get("bias")),
                               name, op)

    def _h_matmul(self, n, b, name, op):
        x = self._x(b, name, op)
        w = self._arg(b.get("other"))
        if isinstance(w, _Op):
            raise _err(name, op, "multiplies two activations", "only products with constant "
                       "weights (Linear) are supported")
        w = np.asarray(w, np.float64)
        if w.ndim != 2:
            raise _err(name, op, f"multiplies by a {w.ndim}-D constant")
        return self.net.linear(x, w.T, None, name, op)

    def _h_addmm(self, n, b, name, op):
        x = self._x(b, name, op, key="mat1")
        w = self._arg(b.get("mat2"))
        bias = self._arg(b.get("input"))
        if isinstance(w, _Op) or isinstance(bias, _Op):
            raise _err(name, op, "has activations as weights or bias")
        alpha = self._scalar(b.get("alpha", 1.0), name, op)
        beta = self._scalar(b.get("beta", 1.0), name, op)
        return self.net.linear(x, np.asarray(w, np.float64).T * alpha,
                               np.asarray(bias, np.float64) * beta, name, op)

    def _h_batch_norm(self, n, b, name, op):
        x = self._x(b, name, op)
        if b.get("training", False):
            raise _err(name, op, "is batch norm in training mode",
                       "the model is converted with its eval-mode running statistics")
        return self._bn(x, self._const(b.get("running_mean")), self._const(b.get("running_var")),
                        self._const(b.get("weight")), self._const(b.get("bias")),
                        self._scalar(b.get("eps", 1e-5), name, op), name, op)

    def _h_batch_norm_tuple(self, n, b, name, op):
        return _Tuple(self._h_batch_norm(n, b, name, op))

    def _h_getitem(self, n, b, name, op):
        c = self._arg(b.get("input"))
        idx = b.get("index")
        if isinstance(c, _Tuple) and idx == 0:
            return c.first
        raise _err(name, op, "indexes or slices an activation",
                   "slicing / indexing activations is not supported")
