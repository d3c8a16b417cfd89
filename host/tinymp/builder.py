"""Float CNN graphs and post-training quantisation (PTQ) into ``.tmpm`` models.

A :class:`Graph` is a small float32 network made of the six layer types of the engine
(docs/FORMAT.md): ``conv``, ``dwconv``, ``pwconv``, ``add``, ``avgpool`` (global) and ``fc``,
each with an optional fused ReLU / ReLU6. It runs a numpy forward pass (NHWC batches) and
quantises itself, from a calibration batch, into the int8 scheme of docs/KERNELS.md.

Example::

    g = Graph(input_shape=(32, 32, 3))
    x = g.conv(g.input, w1, b1, stride=2, padding='same', act='relu6')   # w1 [Cout][kh][kw][Cin]
    y = g.dwconv(x, w2, b2, act='relu6')                                 # w2 [kh][kw][C]
    y = g.pwconv(y, w3, b3)                                              # w3 [Cout][Cin]
    y = g.add(x, y)                                                      # same shapes
    y = g.avgpool(y)                                                     # -> 1 x 1 x C
    y = g.fc(y, w4, b4)                                                  # w4 [O][n], n = H*W*C
    logits = g.forward(batch)                    # float32 [N, num_classes]
    blob = g.quantize(calib, input_range=(-1, 1))                        # .tmpm bytes

API
---
``Graph(input_shape)``; ``g.input``; ``g.nodes``; ``g.output``; ``g.conv/dwconv/pwconv/add/
avgpool/fc`` (each returns a :class:`Node`); ``g.forward(x, all_nodes=False)``;
``g.calibrate(calib)`` -> per-node (min, max); ``g.to_layers(calib, ...)`` -> (tensors, layers)
for :func:`tinymp.modelfile.write_model`; ``g.quantize(calib, num_classes=None,
class_names=None, input_range=None)`` -> bytes; ``g.num_params()``; ``g.summary()``.
Module functions: ``quantize_input(x, model_or_qparams)`` -> int8, ``same_padding(...)``,
``act_qparams(lo, hi)``, ``quantize_weights(w, channel_axis)``.

Node order is layer order: node ``i`` (``i >= 1``) becomes layer ``i - 1`` and tensor ``i``;
node 0 is the input. Every op creates a new node whose inputs already exist, so the order is
always valid; the last node created is the model output and must be ``1 x 1 x num_classes``.

PTQ (what :meth:`Graph.quantize` does):

* activations: per-tensor asymmetric int8 from the calibration min/max (range widened to
  include 0): ``scale = (max - min) / 255``, ``zp = clip(round(-128 - min / scale))``;
  the input from the calibration batch or ``input_range``. A tensor that is constant 0 on the
  whole batch gets the range [0, 1].
* weights: symmetric per output channel, ``scale = max|w| / 127``,
  ``q = clip(round(w / scale), -127, 127)``. An all-zero channel gets the median scale of the
  layer's other channels (1.0 if every channel is zero), so the scale stays finite and > 0 and
  on the same order as its neighbours (useful when the channel is later trained).
* bias: ``round(b / (s_in * s_w[o]))`` clipped to the FORMAT.md bound
  ``2^31 - 1 - 32640 * L``; multipliers ``quantize_multiplier(s_in * s_w[o] / s_out)``.
  All of these use the float32 values that are stored in the file.
* fused activation: ReLU -> ``act_min = zp_out``; ReLU6 -> also
  ``act_max = min(127, zp_out + round(6 / s_out))``.
* ``add``: TFLite multipliers (KERNELS.md); ``avgpool``: ``s_in / (s_out * H * W)``.

Rounding is half away from zero everywhere (as std::round / TFLite).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .modelfile import (Layer, Tensor, quantize_multiplier, read_header, write_model,
                        HEADER_SIZE)

__all__ = [
    "Graph", "Node", "quantize_input", "same_padding", "act_qparams", "quantize_weights",
    "OPS", "ACTS",
]

OPS = ("input", "conv", "dwconv", "pwconv", "add", "avgpool", "fc")
ACTS = (None, "relu", "relu6")
INT32_MAX = (1 << 31) - 1


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _round_away(x):
    """Round half away from zero (numpy, elementwise)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _round_away_int(v: float) -> int:
    return int(_round_away(float(v)))


def same_padding(in_h: int, in_w: int, kh: int, kw: int, sh: int, sw: int
                 ) -> Tuple[int, int, int, int]:
    """TensorFlow 'SAME' padding as (top, left, bottom, right)."""
    def one(n, k, s):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        return total // 2, total - total // 2
    t, b = one(in_h, kh, sh)
    l, r = one(in_w, kw, sw)
    return (t, l, b, r)


def act_qparams(lo: float, hi: float) -> Tuple[float, int]:
    """Asymmetric int8 (scale, zero_point) for a real range, widened to include 0.

    The scale is returned as the float32 value that will be stored.
    """
    lo = min(float(lo), 0.0)
    hi = max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"activation range [{lo}, {hi}] is not finite")
    if hi - lo < 1e-6:          # constant-zero tensor: any scale works, pick [0, 1]
        hi = lo + 1.0
    scale = float(np.float32((hi - lo) / 255.0))
    zp = int(np.clip(_round_away_int(-128.0 - lo / scale), -128, 127))
    return scale, zp


def quantize_weights(w: np.ndarray, channel_axis: int) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8 weights. Returns (int8 weights, float32 scales)."""
    w = np.asarray(w, dtype=np.float64)
    axis = channel_axis % w.ndim
    red = tuple(a for a in range(w.ndim) if a != axis)
    amax = np.max(np.abs(w), axis=red) if red else np.abs(w)
    scale = amax / 127.0
    zero = ~(scale > 0)
    if zero.any():
        fill = float(np.median(scale[~zero])) if (~zero).any() else 1.0
        scale = np.where(zero, fill, scale)
    scale32 = scale.astype(np.float32)
    if not (np.isfinite(scale32).all() and (scale32 > 0).all()):
        raise ValueError("weight scale underflows float32 (weights too small)")
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(_round_away(w / scale32.astype(np.float64).reshape(shape)), -127, 127)
    return q.astype(np.int8), scale32


def quantize_input(x, model_or_qparams) -> np.ndarray:
    """Quantise real input values with the model's input (scale, zero_point).

    ``model_or_qparams`` is .tmpm bytes (the header is read) or a ``(scale, zero_point)``
    pair. Returns ``clamp(round(x / scale) + zp, -128, 127)`` as int8 (same shape as x).
    ValueError for a value that is not finite, a scale that is not finite and > 0 as float32,
    or a zero point that is not an integer in -128..127.
    """
    if isinstance(model_or_qparams, (bytes, bytearray, memoryview)):
        if len(model_or_qparams) < HEADER_SIZE:
            raise ValueError("model bytes shorter than the header")
        hdr = read_header(model_or_qparams)
        scale, zp = hdr["input_scale"], hdr["input_zero_point"]
    else:
        scale, zp = model_or_qparams
    scale = float(np.float32(scale))
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"the input scale must be a finite number > 0 (as float32), got {scale!r}")
    if isinstance(zp, (bool, np.bool_)) or not isinstance(zp, (int, np.integer)) \
            or not -128 <= zp <= 127:
        raise ValueError(f"the input zero point must be an integer in -128..127, got {zp!r}")
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("the input values must be finite (a NaN or an infinity has no int8 value)")
    q = _round_away(x / scale) + int(zp)
    return np.clip(q, -128, 127).astype(np.int8)


def _act_fn(y: np.ndarray, act: Optional[str]) -> np.ndarray:
    if act is None:
        return y
    if act == "relu":
        return np.maximum(y, 0, out=y)
    if act == "relu6":
        return np.clip(y, 0, 6, out=y)
    raise ValueError(f"unknown activation {act!r}")


# --------------------------------------------------------------------------------------------
# graph
# --------------------------------------------------------------------------------------------

class Node:
    """A node of a :class:`Graph`: its op, inputs (node indices), output shape (h, w, c) and
    float parameters. ``index`` is both its position in ``graph.nodes`` and its tensor index.
    """
    __slots__ = ("graph", "index", "op", "inputs", "shape", "w", "b", "stride", "pad", "act",
                 "kernel")

    def __init__(self, graph, index, op, inputs, shape, w=None, b=None, stride=(0, 0),
                 pad=(0, 0, 0, 0), act=None, kernel=(0, 0)):
        self.graph = graph
        self.index = index
        self.op = op
        self.inputs = tuple(inputs)
        self.shape = tuple(int(s) for s in shape)
        self.w = w
        self.b = b
        self.stride = tuple(stride)
        self.pad = tuple(pad)
        self.act = act
        self.kernel = tuple(kernel)

    @property
    def h(self):
        return self.shape[0]

    @property
    def width(self):
        return self.shape[1]

    @property
    def c(self):
        return self.shape[2]

    def __repr__(self):
        extra = ""
        if self.op in ("conv", "dwconv"):
            extra = f" k={self.kernel} s={self.stride} pad={self.pad}"
        if self.act:
            extra += f" act={self.act}"
        return f"<Node {self.index} {self.op} in={list(self.inputs)} out={self.shape}{extra}>"


class Graph:
    """A float32 CNN built node by node (see the module documentation)."""

    def __init__(self, input_shape: Sequence[int]):
        if len(input_shape) != 3 or not all(int(s) >= 1 for s in input_shape):
            raise ValueError(f"input_shape must be (H, W, C) with positive sizes, "
                             f"got {input_shape!r}")
        self.nodes: List[Node] = [Node(self, 0, "input", (), tuple(int(s) for s in input_shape))]

    # -- construction --------------------------------------------------------------------

    @property
    def input(self) -> Node:
        return self.nodes[0]

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return self.nodes[0].shape

    def _node(self, x) -> Node:
        if isinstance(x, Node):
            if x.graph is not self:
                raise ValueError("node belongs to another graph")
            return x
        if isinstance(x, (int, np.integer)) and 0 <= int(x) < len(self.nodes):
            return self.nodes[int(x)]
        raise ValueError(f"not a node of this graph: {x!r}")

    def _add(self, op, inputs, shape, **kw) -> Node:
        n = Node(self, len(self.nodes), op, [i.index for i in inputs], shape, **kw)
        self.nodes.append(n)
        return n

    @staticmethod
    def _bias(b, n, where):
        if b is None:
            return np.zeros(n, np.float32)
        b = np.asarray(b, dtype=np.float32).reshape(-1)
        if b.shape != (n,):
            raise ValueError(f"{where}: bias has {b.size} values, expected {n}")
        return b

    @staticmethod
    def _check_act(act, where):
        if act not in ACTS:
            raise ValueError(f"{where}: act must be None, 'relu' or 'relu6', got {act!r}")

    @staticmethod
    def _stride(stride):
        if isinstance(stride, (tuple, list)):
            sh, sw = (int(s) for s in stride)
        else:
            sh = sw = int(stride)
        return sh, sw

    def _spatial(self, where, x, kh, kw, stride, padding):
        sh, sw = self._stride(stride)
        if not (1 <= sh <= 4 and 1 <= sw <= 4):
            raise ValueError(f"{where}: stride {stride!r} outside 1 ... 4")
        if not (1 <= kh <= 11 and 1 <= kw <= 11):
            raise ValueError(f"{where}: kernel {kh}x{kw} outside 1 ... 11")
        if isinstance(padding, str):
            if padding == "same":
                pad = same_padding(x.h, x.width, kh, kw, sh, sw)
            elif padding == "valid":
                pad = (0, 0, 0, 0)
            else:
                raise ValueError(f"{where}: padding must be 'same', 'valid' or (t, l, b, r)")
        else:
            pad = tuple(int(p) for p in padding)
            if len(pad) != 4 or min(pad) < 0:
                raise ValueError(f"{where}: padding must be 'same', 'valid' or (t, l, b, r)")
        pt, pl, pb, pr = pad
        if not (pt < kh and pb < kh and pl < kw and pr < kw):
            raise ValueError(f"{where}: padding {pad} must be smaller than the kernel")
        if x.h + pt + pb < kh or x.width + pl + pr < kw:
            raise ValueError(f"{where}: kernel {kh}x{kw} larger than the padded input "
                             f"{x.h}x{x.width}")
        oh = (x.h + pt + pb - kh) // sh + 1
        ow = (x.width + pl + pr - kw) // sw + 1
        return (sh, sw), pad, oh, ow

    def conv(self, x, w, b=None, stride=1, padding="same", act=None) -> Node:
        """Full convolution; ``w`` float [Cout][kh][kw][Cin]."""
        x = self._node(x)
        w = np.asarray(w, dtype=np.float32)
        where = f"conv (node {len(self.nodes)})"
        if w.ndim != 4 or w.shape[3] != x.c:
            raise ValueError(f"{where}: weights {w.shape} must be [Cout][kh][kw][{x.c}]")
        self._check_act(act, where)
        cout, kh, kw, _ = w.shape
        if kh * kw * x.c > 65536:
            raise ValueError(f"{where}: kh*kw*Cin = {kh * kw * x.c} exceeds 65536")
        stride, pad, oh, ow = self._spatial(where, x, kh, kw, stride, padding)
        return self._add("conv", [x], (oh, ow, cout), w=w, b=self._bias(b, cout, where),
                         stride=stride, pad=pad, act=act, kernel=(kh, kw))

    def dwconv(self, x, w, b=None, stride=1, padding="same", act=None) -> Node:
        """Depthwise convolution (channel multiplier 1); ``w`` float [kh][kw][C]."""
        x = self._node(x)
        w = np.asarray(w, dtype=np.float32)
        where = f"dwconv (node {len(self.nodes)})"
        if w.ndim != 3 or w.shape[2] != x.c:
            raise ValueError(f"{where}: weights {w.shape} must be [kh][kw][{x.c}]")
        self._check_act(act, where)
        kh, kw, c = w.shape
        stride, pad, oh, ow = self._spatial(where, x, kh, kw, stride, padding)
        return self._add("dwconv", [x], (oh, ow, c), w=w, b=self._bias(b, c, where),
                         stride=stride, pad=pad, act=act, kernel=(kh, kw))

    def pwconv(self, x, w, b=None, act=None) -> Node:
        """1x1 convolution; ``w`` float [Cout][Cin]."""
        x = self._node(x)
        w = np.asarray(w, dtype=np.float32)
        where = f"pwconv (node {len(self.nodes)})"
        if w.ndim != 2 or w.shape[1] != x.c:
            raise ValueError(f"{where}: weights {w.shape} must be [Cout][{x.c}]")
        if x.c > 65536:
            raise ValueError(f"{where}: Cin = {x.c} exceeds 65536")
        self._check_act(act, where)
        cout = w.shape[0]
        return self._add("pwconv", [x], (x.h, x.width, cout), w=w, b=self._bias(b, cout, where),
                         stride=(1, 1), act=act, kernel=(1, 1))

    def add(self, a, b, act=None) -> Node:
        """Elementwise sum of two nodes of the same shape."""
        a, b = self._node(a), self._node(b)
        where = f"add (node {len(self.nodes)})"
        if a.shape != b.shape:
            raise ValueError(f"{where}: shapes {a.shape} and {b.shape} differ")
        self._check_act(act, where)
        return self._add("add", [a, b], a.shape, act=act)

    def avgpool(self, x, act=None) -> Node:
        """Global average pool -> 1 x 1 x C."""
        x = self._node(x)
        where = f"avgpool (node {len(self.nodes)})"
        if x.h * x.width > (1 << 23):
            raise ValueError(f"{where}: H*W exceeds 2^23")
        self._check_act(act, where)
        return self._add("avgpool", [x], (1, 1, x.c), act=act)

    def fc(self, x, w, b=None, act=None) -> Node:
        """Fully connected on the HWC-flattened input; ``w`` float [O][n], n = H*W*C."""
        x = self._node(x)
        w = np.asarray(w, dtype=np.float32)
        n = x.h * x.width * x.c
        where = f"fc (node {len(self.nodes)})"
        if w.ndim != 2 or w.shape[1] != n:
            raise ValueError(f"{where}: weights {w.shape} must be [O][{n}]")
        if n > 65536:
            raise ValueError(f"{where}: n = {n} exceeds 65536")
        self._check_act(act, where)
        o = w.shape[0]
        return self._add("fc", [x], (1, 1, o), w=w, b=self._bias(b, o, where), act=act)

    # -- inspection ----------------------------------------------------------------------

    def num_params(self) -> int:
        return int(sum((n.w.size if n.w is not None else 0) + (n.b.size if n.b is not None else 0)
                       for n in self.nodes))

    def summary(self) -> str:
        lines = [f"Graph input {self.input_shape}, {len(self.nodes) - 1} layers, "
                 f"{self.num_params()} parameters"]
        lines += ["  " + repr(n) for n in self.nodes[1:]]
        return "\n".join(lines)

    # -- float forward -------------------------------------------------------------------

    def _eval(self, node: Node, vals) -> np.ndarray:
        op = node.op
        x = vals[node.inputs[0]]
        if op == "conv":
            y = _conv_forward(x, node.w, node.stride, node.pad, node.shape)
        elif op == "dwconv":
            y = _dwconv_forward(x, node.w, node.stride, node.pad, node.shape)
        elif op == "pwconv":
            n, h, w, c = x.shape
            y = (x.reshape(-1, c) @ node.w.T).reshape(n, h, w, -1)
        elif op == "add":
            y = x + vals[node.inputs[1]]
        elif op == "avgpool":
            y = x.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(np.float32)
        elif op == "fc":
            y = (x.reshape(x.shape[0], -1) @ node.w.T).reshape(x.shape[0], 1, 1, -1)
        else:  # pragma: no cover
            raise ValueError(f"unknown op {op}")
        if node.b is not None:
            y += node.b
        return _act_fn(y, node.act)

    def _check_batch(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"input batch must be [N, {', '.join(map(str, self.input_shape))}], "
                             f"got {x.shape}")
        return x

    def _last_use(self) -> List[int]:
        last = list(range(len(self.nodes)))
        for n in self.nodes:
            for i in n.inputs:
                last[i] = max(last[i], n.index)
        return last

    def _run(self, x, keep_all: bool, visit=None):
        vals = {0: x}
        out = [x] if keep_all else None
        if visit is not None:
            visit(0, x)
        last = self._last_use()
        for node in self.nodes[1:]:
            y = self._eval(node, vals)
            vals[node.index] = y
            if visit is not None:
                visit(node.index, y)
            if keep_all:
                out.append(y)
            else:
                for i in set(node.inputs):
                    if last[i] <= node.index:
                        vals.pop(i, None)
        return out if keep_all else vals[len(self.nodes) - 1]

    def forward(self, x, all_nodes: bool = False):
        """Float forward of a batch ``x`` float32 [N, H, W, C].

        Returns the output as [N, out_c] (the final 1 x 1 x C node flattened; for another
        final shape [N, h, w, c]), or with ``all_nodes`` the list of every node's value
        ([N, h, w, c] each, index = node index, element 0 = the input).
        """
        if len(self.nodes) < 2:
            raise ValueError("graph has no layers")
        x = self._check_batch(x)
        if all_nodes:
            return self._run(x, keep_all=True)
        y = self._run(x, keep_all=False)
        if y.shape[1:3] == (1, 1):
            return y.reshape(y.shape[0], -1)
        return y

    def calibrate(self, calib, batch_size: int = 16) -> List[Tuple[float, float]]:
        """(min, max) of every node's value over the calibration batch (node 0 = input)."""
        calib = self._check_batch(calib)
        lo = [math.inf] * len(self.nodes)
        hi = [-math.inf] * len(self.nodes)

        def visit(i, v):
            lo[i] = min(lo[i], float(v.min()))
            hi[i] = max(hi[i], float(v.max()))

        for s in range(0, calib.shape[0], max(1, int(batch_size))):
            self._run(calib[s:s + batch_size], keep_all=False, visit=visit)
        for i in range(len(self.nodes)):
            if not (math.isfinite(lo[i]) and math.isfinite(hi[i])):
                raise ValueError(f"node {i} ({self.nodes[i].op}): non-finite values in "
                                 f"calibration")
        return list(zip(lo, hi))

    # -- quantisation --------------------------------------------------------------------

    def to_layers(self, calib, num_classes: Optional[int] = None,
                  input_range: Optional[Tuple[float, float]] = None
                  ) -> Tuple[List[Tensor], List[Layer]]:
        """Post-training quantisation: the (tensors, layers) of :func:`write_model`."""
        if len(self.nodes) < 2:
            raise ValueError("graph has no layers")
        out = self.output
        if out.shape[:2] != (1, 1):
            raise ValueError(f"the last node must be 1 x 1 x num_classes, got {out.shape}")
        if num_classes is not None and int(num_classes) != out.c:
            raise ValueError(f"num_classes {num_classes} != output channels {out.c}")
        stats = self.calibrate(calib)
        if input_range is not None:
            lo, hi = (float(v) for v in input_range)
            if not lo < hi:
                raise ValueError(f"input_range {input_range!r} must be (lo, hi) with lo < hi")
            stats[0] = (lo, hi)
        qp = [act_qparams(lo, hi) for lo, hi in stats]
        tensors = [Tensor(n.h, n.width, n.c, qp[n.index][0], qp[n.index][1]) for n in self.nodes]
        layers = [self._quant_layer(n, qp) for n in self.nodes[1:]]
        return tensors, layers

    def quantize(self, calib, num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None,
                 input_range: Optional[Tuple[float, float]] = None) -> bytes:
        """Quantise to a ``.tmpm`` model (bytes). See the module documentation."""
        tensors, layers = self.to_layers(calib, num_classes, input_range)
        nc = self.output.c
        if class_names is not None:
            class_names = [str(c) for c in class_names]
        return write_model(tensors, layers, nc, class_names)

    def _quant_layer(self, node: Node, qp) -> Layer:
        s_in, zp_in = qp[node.inputs[0]]
        s_out, zp_out = qp[node.index]
        act_min, act_max = -128, 127
        if node.act in ("relu", "relu6"):
            act_min = zp_out
            if node.act == "relu6":
                act_max = int(min(127, zp_out + _round_away_int(6.0 / s_out)))
            act_max = max(act_max, act_min)
        where = f"node {node.index} ({node.op})"
        common = dict(in0=node.inputs[0], act_min=int(act_min), act_max=int(act_max))

        if node.op == "add":
            s1, _ = qp[node.inputs[1]]
            twice_max = 2.0 * max(s_in, s1)
            ms = [s_in / twice_max, s1 / twice_max, twice_max / ((1 << 20) * s_out)]
            params = []
            for m in ms:
                params.extend(self._qm(m, where))
            return Layer("add", in1=node.inputs[1], params=tuple(params), **common)
        if node.op == "avgpool":
            x = self.nodes[node.inputs[0]]
            M, s = self._qm(s_in / (s_out * x.h * x.width), where)
            return Layer("avgpool", params=(M, s, 0, 0, 0, 0), **common)

        x = self.nodes[node.inputs[0]]
        if node.op == "conv":
            wq, ws = quantize_weights(node.w, 0)
            red = node.kernel[0] * node.kernel[1] * x.c
        elif node.op == "dwconv":
            wq, ws = quantize_weights(node.w, 2)
            red = node.kernel[0] * node.kernel[1]
        elif node.op == "pwconv":
            wq, ws = quantize_weights(node.w, 0)
            red = x.c
        else:  # fc
            wq, ws = quantize_weights(node.w, 0)
            red = x.h * x.width * x.c
        acc_scale = s_in * ws.astype(np.float64)
        bound = INT32_MAX - 32640 * red
        bias = np.clip(_round_away(node.b.astype(np.float64) / acc_scale), -bound, bound)
        mult = np.empty(len(ws), np.int32)
        shift = np.empty(len(ws), np.int32)
        for o, a in enumerate(acc_scale):
            mult[o], shift[o] = self._qm(a / s_out, where)
        kw = {}
        if node.op in ("conv", "dwconv"):
            kw = dict(kh=node.kernel[0], kw=node.kernel[1], stride_h=node.stride[0],
                      stride_w=node.stride[1], pad=node.pad)
        elif node.op == "pwconv":
            kw = dict(kh=1, kw=1, stride_h=1, stride_w=1)
        return Layer(node.op, weights=wq, bias=bias.astype(np.int32), mult=mult, shift=shift,
                     wscale=ws, **kw, **common)

    @staticmethod
    def _qm(m: float, where: str) -> Tuple[int, int]:
        try:
            return quantize_multiplier(m)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


# --------------------------------------------------------------------------------------------
# float kernels
# --------------------------------------------------------------------------------------------

def _pad(x, pad):
    pt, pl, pb, pr = pad
    if pt == pl == pb == pr == 0:
        return x
    return np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))


def _conv_forward(x, w, stride, pad, oshape):
    """im2col convolution, in batch chunks of bounded memory."""
    n = x.shape[0]
    cout, kh, kw, cin = w.shape
    oh, ow, _ = oshape
    sh, sw = stride
    wm = w.reshape(cout, -1).T                       # [kh*kw*cin, cout]
    per_image = oh * ow * kh * kw * cin * 4
    chunk = max(1, min(n, (64 << 20) // max(per_image, 1)))
    out = np.empty((n, oh, ow, cout), np.float32)
    for s in range(0, n, chunk):
        xp = _pad(x[s:s + chunk], pad)
        m = xp.shape[0]
        cols = np.empty((m, oh, ow, kh, kw, cin), np.float32)
        for u in range(kh):
            for v in range(kw):
                cols[:, :, :, u, v, :] = xp[:, u:u + sh * (oh - 1) + 1:sh,
                                            v:v + sw * (ow - 1) + 1:sw, :]
        out[s:s + m] = (cols.reshape(-1, kh * kw * cin) @ wm).reshape(m, oh, ow, cout)
    return out


def _dwconv_forward(x, w, stride, pad, oshape):
    kh, kw, c = w.shape
    oh, ow, _ = oshape
    sh, sw = stride
    xp = _pad(x, pad)
    acc = np.zeros((x.shape[0], oh, ow, c), np.float32)
    for u in range(kh):
        for v in range(kw):
            acc += xp[:, u:u + sh * (oh - 1) + 1:sh, v:v + sw * (ow - 1) + 1:sw, :] * w[u, v]
    return acc
