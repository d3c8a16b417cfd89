"""Independent numpy training oracle of tinymp: float layer gradients, Gradient Condensing,
the TinyTrain criterion and Alternant Partial Update (APU) selection.

This module is written from the math of ``shared/design/ALGORITHMS.md`` (sections 1, 2, 3) and
the layer set / layouts of ``docs/FORMAT.md`` and ``docs/KERNELS.md`` only, never from the C
engine.  The C training engine is tested against it, so it favours being obviously correct over
being fast: every function is a plain function of numpy arrays, loops are explicit where that is
clearer, and the computation is carried out in float64 unless float32 inputs are given.

Conventions
-----------
* One sample, activations ``[H][W][C]`` (HWC), exactly as the engine stores them.  Where a batch
  is natural (softmax cross-entropy, the Fisher potential) a leading sample axis ``N`` is taken.
* Weight layouts (FORMAT.md): conv ``W[Cout][kh][kw][Cin]``, depthwise ``W[kh][kw][C]``,
  pointwise ``W[Cout][Cin]``, fc ``W[O][n]`` with ``n = H*W*C`` of the HWC-flattened input.
* ``stride = (sh, sw)``; ``pad = (top, left, bottom, right)`` (the order of a .tmpm layer record).
  Output size ``H' = (H + top + bottom - kh) // sh + 1`` (floor), likewise ``W'``.  Padding
  contributes zeros.

API
---
Exact float layers (forward, and backward returning ``(dx, dW, db)``)::

    conv2d(x, W, b=None, stride=(1, 1), pad=(0, 0, 0, 0))                  -> y [H', W', Cout]
    conv2d_backward(dy, x, W, stride=(1, 1), pad=(0, 0, 0, 0), channels=None) -> dx, dW, db
    depthwise(x, W, b=None, stride, pad) / depthwise_backward(dy, x, W, stride, pad, channels)
    pointwise(x, W, b=None)            / pointwise_backward(dy, x, W, channels)
    fc(x, W, b=None) -> y [1, 1, O]    / fc_backward(dy, x, W, channels)
    add(a, b)                          / add_backward(dy)             -> (da, db)  (= dy, dy)
    avgpool(x) -> [1, 1, C]            / avgpool_backward(dy, x_shape) -> dx
    clamp(z, lo, hi); clamp_mask(y, lo, hi); clamp_backward(dy, y, lo, hi)
    softmax_cross_entropy(logits, label) -> (loss, dlogits)
    conv_out_hw(in_hw, kernel_hw, stride, pad) -> (H', W')

Gradient Condensing (ALGORITHMS.md section 1)::

    gc_patches(in_hw, out_hw, stride, r)          -> [GCPatch]   patch/window geometry
    gc_input_sums(x, out_hw, stride, r, channels=None) -> xs [P, k]   (what the forward saves)
    gc_weight_sum(W, kind)                         -> Wsum  ([Cout, Cin], or [C] for depthwise)
    gc_patch_means(dy, r)                          -> gbar [P, Cout]
    gc_backward_from_saved(dy, xs, Wsum, in_shape, stride, r, kernel_hw, kind, channels=None)
                                                   -> dx, dW, db   (the formulas, any r)
    conv2d_backward_gc_formula(dy, x, W, stride, pad, r, channels=None)   -> dx, dW, db
    depthwise_backward_gc_formula(...), pointwise_backward_gc_formula(dy, x, W, r, channels)
    conv2d_backward_condensed(...), depthwise_backward_condensed(...),
    pointwise_backward_condensed(...)   # r == 1: the exact backward; r > 1: the formula
    input_channel_importance(dW, kind) -> I[c] = ||dW[..., c]||^2 over the input-channel slice

Whole network over a .tmpm model's float view::

    FloatLayer(kind, in0, in1=None, W=None, b=None, stride=(1, 1), pad=(0, 0, 0, 0),
               lo=-inf, hi=+inf)
    FloatNet(layers, input_shape)                 # layer i writes tensor i + 1, tensor 0 = input
    FloatNet.from_model(model_bytes, dtype=np.float64)
    net.forward(x) -> (logits [num_classes], ForwardCache)
    net.backward(cache, label, trainable=None, r=1, channels=None, input_grad=False)
        -> BackwardResult(loss, dlogits, grads {layer: (dW, db)}, tensor_grads {tensor: dL/dt})
    net.weighted_layers(); net.layer_weight_count(i); net.layer_macs(i)
    net.fisher_potentials(samples, labels, layers=None, r=1) -> {layer: Delta[Cout]}

TinyTrain criterion (section 3)::

    fisher_channel_potential(a, g)  -> Delta[C] = 1/(2N) sum_n (sum_d a[n,d,c] g[n,d,c])^2
    layer_potential(delta)          -> P = sum_c Delta[c]
    tinytrain_scores(P, weight_counts, macs) -> s_i
    rank_layers(scores)             -> positions, best first
    greedy_select_layers(scores, mem_cost, mac_cost, mem_budget, mac_budget) -> positions
    topk_channels(delta, k)         -> sorted channel indices

APU (section 2)::

    channel_count(ratio, C) -> k = ceil(ratio * C);  apu_window(ratio) -> m = ceil(1 / ratio)
    apu_select(ibar, age, ratio, history=(), tau=0.1) -> (selection, new_age)
    smooth_importance(ibar, I, beta=0.9) -> beta * ibar + (1 - beta) * I (I where ibar is 0)

Design decisions fixed here (where ALGORITHMS.md leaves a choice)
----------------------------------------------------------------
1. **Clamp (ReLU / ReLU6 / int8 saturation) backward.**  ``y = clamp(z, lo, hi)``; the gradient
   passes where the clamp was not active, ``lo < z < hi``, which is the same as
   ``lo < y < hi`` -- so the mask is computed from the full-resolution *output* ``y``, the
   1-bit mask the engine stores.  **Ties: at exactly ``y == lo`` or ``y == hi`` the gradient is
   zero** (an int8 output equal to ``act_min``/``act_max`` is treated as clamped).
2. **Gradient Condensing geometry.**  Output positions are tiled in ``r x r`` patches,
   ``PH = ceil(H'/r)`` by ``PW = ceil(W'/r)``, patch ``p = py * PW + px`` (row-major); border
   patches are partial (they hold the output pixels that exist).  The **input window** of patch
   ``(py, px)`` is input rows ``[py*r*sh, (py+1)*r*sh) ∩ [0, H)`` and columns
   ``[px*r*sw, (px+1)*r*sw) ∩ [0, W)`` -- in input coordinates, padding ignored, so a window
   may be partial or even empty at the bottom/right border.  Then
   ``xs[p, i] = sum over the window of x[., ., i]`` (0 for an empty window),
   ``Wsum[o, i] = sum_{u,v} W[o, u, v, i]``, ``gbar[p, o] = mean of dy[., ., o] over the output
   pixels of patch p`` (divided by the number of pixels that exist), ``db = sum dy`` (exact),
   ``dW[o, u, v, i] = sum_p gbar[p, o] * xs[p, i] / (sh*sw)`` for every ``(u, v)``,
   ``dx[window of p, i] = sum_o Wsum[o, i] * gbar[p, o] / (sh*sw)`` (constant over the window);
   input pixels in no window get ``dx = 0``.  Depthwise:
   ``dW[u, v, c] = sum_p gbar[p, c] * xs[p, c] / (sh*sw)``, ``dx = Wsum[c] * gbar[p, c] / (sh*sw)``.
   Windows of distinct patches never overlap, so "constant over the window" is well defined.
3. **r = 1 is exact.**  ``*_backward_condensed(..., r=1)`` *calls* the exact backward.  The
   ``*_gc_formula`` functions apply the formulas for any ``r`` (including 1); for a 1x1,
   stride-1 conv at ``r = 1`` the formula equals the exact gradient (tested).
4. **Input-channel selection** (``channels``): a list of distinct input-channel indices, kept
   in the order given (pass them sorted to match an engine that stores them ascending).  The
   returned ``dW`` holds **only the selected channels, compacted** along the input-channel axis
   (conv ``[Cout, kh, kw, k]``, depthwise ``[kh, kw, k]``, pointwise/fc ``[Cout, k]``), entry
   ``j`` belonging to ``channels[j]`` -- the engine's gradient buffer.  ``db`` and ``dx`` are
   always full (``dx`` does not depend on the selection; the condensed ``dx`` uses ``Wsum``
   over all input channels).  ``channels=None`` means all, in order.
5. **Float view of a .tmpm model** (``FloatNet.from_model``): ``W = q * wscale[o]`` (per output
   channel; depthwise: per channel), ``b = q_b * s_in * wscale[o]`` with ``s_in`` the scale of
   the layer's input tensor, every layer (add and avgpool included) followed by the clamp
   ``[lo, hi] = [(act_min - zp_out) * s_out, (act_max - zp_out) * s_out]``, always, also when
   ``act_min = -128`` / ``act_max = 127``: such a limit is the int8 saturation of the engine,
   and it cannot be told apart from a real ReLU bound (a ReLU output whose zero point is -128
   has ``act_min = -128``), so the float view saturates where the engine does and its masks
   are those the engine can compute from its int8 outputs.  Intermediate results are not
   re-quantised.
6. **Whole-network condensing.**  ``r`` (an int, or a dict ``{layer: r}``, missing = 1) applies
   to every conv / dwconv / pwconv layer the gradient flows through, frozen or trainable (their
   ``dx`` is condensed too); fc, add, avgpool and the clamps are always exact.  The gradient is
   propagated down to the earliest trainable layer only (to tensor 0 with ``input_grad``).
7. **Fisher potential.**  ``a`` is a layer's post-activation output tensor and ``g = dL/da``
   its gradient (before the clamp mask), for each sample's own loss; the spatial positions
   ``d`` are all ``H'*W'`` pixels.  ``|W_i|`` is the number of weights of layer ``i`` (biases
   excluded) and ``MAC_i`` its forward multiply-accumulates; callers may pass any other cost
   measure.  Greedy selection walks the ranking and **adds every layer that still fits both
   budgets, skipping (not stopping at) one that does not**.  Top-k channels by ``Delta``: ties
   broken by lower index.  For APU's *input*-channel selection of layer ``l``, apply the
   potential to ``l``'s input tensor (the output of the layer that produced it).
8. **APU exclusion and channels not yet measured.**  As ALGORITHMS.md says, the channels
   selected in the previous period are excluded when ``rho < 1``; when fewer than ``k``
   channels remain eligible (``rho > 1/2``), all eligible ones are taken and the rest is
   **filled from the excluded channels by score** (ties: lower index).  ALGORITHMS.md's
   "so every channel is visited within ceil(1/rho) periods" does not follow from that rule
   (a channel may wait behind better-scored ones), and excluding the last ``m - 1`` periods
   instead (the reading before session 42) made the choice a fixed rotation whenever
   ``k * m == C``: the importances decided nothing.  Here a channel **never measured**
   (``ibar == 0``) ranks before every measured one (ties: lower index), so the first
   ``m = ceil(1/rho)`` periods visit every channel (``ceil(C / k) <= m``) whatever the
   scores; after that, ``TopK(ibar * (1 + tau * age))`` decides.  A waiting channel's score
   grows by ``tau * ibar`` per period (its ibar is carried), so one measured far below the
   others waits very long, in effect for good (a measured 0 for good).  ``rho = 1`` selects every channel.  Ages: a selected channel's age
   becomes 0, every other channel's age grows by 1 (``age`` = periods since last selected;
   start from zeros).
9. **The smoothed importance starts at the first measurement.**  ``Ibar <- beta * Ibar +
   (1 - beta) * I`` from ``Ibar = 0`` would rank a channel by how often it was measured
   (after n measurements of the same ``I``, ``(1 - beta^n) * I``); a channel's first
   measurement is taken as it is, later ones are smoothed.  A measured channel whose
   importance is still 0 (no gradient reached it) gets the smallest normal float32,
   ``2**-126``, so that it counts as measured and ranks below every channel with a gradient.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    # exact layers
    "conv_out_hw", "conv2d", "conv2d_backward", "depthwise", "depthwise_backward",
    "pointwise", "pointwise_backward", "fc", "fc_backward", "add", "add_backward",
    "avgpool", "avgpool_backward", "clamp", "clamp_mask", "clamp_backward",
    "softmax_cross_entropy",
    # gradient condensing
    "GCPatch", "gc_patches", "gc_input_sums", "gc_weight_sum", "gc_patch_means",
    "gc_backward_from_saved", "conv2d_backward_gc_formula", "depthwise_backward_gc_formula",
    "pointwise_backward_gc_formula", "conv2d_backward_condensed",
    "depthwise_backward_condensed", "pointwise_backward_condensed", "input_channel_importance",
    # network
    "FloatLayer", "FloatNet", "ForwardCache", "BackwardResult",
    # TinyTrain
    "fisher_channel_potential", "layer_potential", "tinytrain_scores", "rank_layers",
    "greedy_select_layers", "topk_channels",
    # APU
    "channel_count", "apu_window", "apu_select", "smooth_importance",
]

Stride = Tuple[int, int]
Pad = Tuple[int, int, int, int]
WEIGHTED_KINDS = ("conv", "dwconv", "pwconv", "fc")
CONV_KINDS = ("conv", "dwconv", "pwconv")


# =============================================================================================
# Small helpers
# =============================================================================================

def _float_dtype(*arrays) -> np.dtype:
    """float64 unless every floating input is float32 (integers promote to float64)."""
    return np.result_type(*[np.asarray(a).dtype for a in arrays], np.float32)


def _f(a, dt) -> np.ndarray:
    return np.asarray(a, dtype=dt)


def _stride(stride) -> Stride:
    if np.isscalar(stride):
        stride = (stride, stride)
    sh, sw = (int(s) for s in stride)
    if sh < 1 or sw < 1:
        raise ValueError(f"stride must be >= 1, got {stride!r}")
    return sh, sw


def _pad(pad) -> Pad:
    p = tuple(int(v) for v in pad)
    if len(p) != 4 or min(p) < 0:
        raise ValueError(f"pad must be 4 non-negative ints (top, left, bottom, right), got {pad!r}")
    return p  # type: ignore[return-value]


def _channels(channels, c: int) -> np.ndarray:
    """Selected input-channel indices as an int array (None -> all, in order)."""
    if channels is None:
        return np.arange(c)
    ch = np.asarray(channels, dtype=np.int64).reshape(-1)
    if ch.size and (ch.min() < 0 or ch.max() >= c):
        raise ValueError(f"channel index outside 0..{c - 1}")
    if np.unique(ch).size != ch.size:
        raise ValueError("channel indices must be distinct")
    return ch


def _check_r(r) -> int:
    if int(r) != r or r < 1:
        raise ValueError(f"patch size r must be an integer >= 1, got {r!r}")
    return int(r)


def conv_out_hw(in_hw, kernel_hw, stride, pad) -> Tuple[int, int]:
    """(H', W') = ((H + t + b - kh) // sh + 1, (W + l + r - kw) // sw + 1)."""
    H, W = (int(v) for v in in_hw)
    kh, kw = (int(v) for v in kernel_hw)
    sh, sw = _stride(stride)
    pt, pl, pb, pr = _pad(pad)
    if H + pt + pb < kh or W + pl + pr < kw:
        raise ValueError("kernel larger than the padded input")
    return (H + pt + pb - kh) // sh + 1, (W + pl + pr - kw) // sw + 1


def _padded(x: np.ndarray, pad: Pad) -> np.ndarray:
    pt, pl, pb, pr = pad
    H, W, C = x.shape
    xp = np.zeros((H + pt + pb, W + pl + pr, C), dtype=x.dtype)
    xp[pt:pt + H, pl:pl + W, :] = x
    return xp


def _tap(u: int, v: int, oh: int, ow: int, sh: int, sw: int):
    """Index of the padded-input pixels under kernel tap (u, v) for all output pixels:
    padded row u + oy*sh, column v + ox*sw."""
    return (slice(u, u + sh * (oh - 1) + 1, sh), slice(v, v + sw * (ow - 1) + 1, sw))


# =============================================================================================
# Exact float layers
# =============================================================================================
#
# conv:  y[oy, ox, o] = b[o] + sum_{u, v, i} xp[oy*sh + u, ox*sw + v, i] * W[o, u, v, i]
#        with xp the zero-padded input (xp[pt + iy, pl + ix] = x[iy, ix]).
#   dW[o, u, v, i] = sum_{oy, ox} dy[oy, ox, o] * xp[oy*sh + u, ox*sw + v, i]
#   dxp[oy*sh + u, ox*sw + v, i] += sum_o dy[oy, ox, o] * W[o, u, v, i];  dx = dxp[interior]
#   db[o] = sum_{oy, ox} dy[oy, ox, o]

def conv2d(x, W, b=None, stride=(1, 1), pad=(0, 0, 0, 0)) -> np.ndarray:
    """Standard convolution, x [H, W, Cin], W [Cout, kh, kw, Cin] -> [H', W', Cout] (before
    any clamp)."""
    dt = _float_dtype(x, W)
    x, W = _f(x, dt), _f(W, dt)
    cout, kh, kw, cin = W.shape
    if x.ndim != 3 or x.shape[2] != cin:
        raise ValueError(f"conv2d: input {x.shape} does not match weights {W.shape}")
    sh, sw = _stride(stride)
    pad = _pad(pad)
    oh, ow = conv_out_hw(x.shape[:2], (kh, kw), (sh, sw), pad)
    xp = _padded(x, pad)
    y = np.zeros((oh, ow, cout), dtype=dt)
    for u in range(kh):
        for v in range(kw):
            y += xp[_tap(u, v, oh, ow, sh, sw)] @ W[:, u, v, :].T
    if b is not None:
        y += _f(b, dt).reshape(cout)
    return y


def conv2d_backward(dy, x, W, stride=(1, 1), pad=(0, 0, 0, 0), channels=None):
    """Exact conv backward. Returns (dx [H, W, Cin], dW [Cout, kh, kw, k], db [Cout]);
    dW holds the selected input channels only (all by default), see the module doc."""
    dt = _float_dtype(dy, x, W)
    dy, x, W = _f(dy, dt), _f(x, dt), _f(W, dt)
    cout, kh, kw, cin = W.shape
    sh, sw = _stride(stride)
    pad = _pad(pad)
    oh, ow = conv_out_hw(x.shape[:2], (kh, kw), (sh, sw), pad)
    if dy.shape != (oh, ow, cout):
        raise ValueError(f"conv2d_backward: dy {dy.shape} != output shape {(oh, ow, cout)}")
    ch = _channels(channels, cin)
    xp = _padded(x, pad)
    dxp = np.zeros_like(xp)
    dW = np.zeros((cout, kh, kw, ch.size), dtype=dt)
    dy2 = dy.reshape(oh * ow, cout)
    for u in range(kh):
        for v in range(kw):
            idx = _tap(u, v, oh, ow, sh, sw)
            xt = xp[idx].reshape(oh * ow, cin)
            dW[:, u, v, :] = dy2.T @ xt[:, ch]
            dxp[idx] += (dy2 @ W[:, u, v, :]).reshape(oh, ow, cin)
    pt, pl, _, _ = pad
    H, Wd, _ = x.shape
    dx = dxp[pt:pt + H, pl:pl + Wd, :].copy()
    db = dy.sum(axis=(0, 1))
    return dx, dW, db


def depthwise(x, W, b=None, stride=(1, 1), pad=(0, 0, 0, 0)) -> np.ndarray:
    """Depthwise convolution, x [H, W, C], W [kh, kw, C] -> [H', W', C]:
    y[oy, ox, c] = b[c] + sum_{u, v} xp[oy*sh + u, ox*sw + v, c] * W[u, v, c]."""
    dt = _float_dtype(x, W)
    x, W = _f(x, dt), _f(W, dt)
    kh, kw, c = W.shape
    if x.ndim != 3 or x.shape[2] != c:
        raise ValueError(f"depthwise: input {x.shape} does not match weights {W.shape}")
    sh, sw = _stride(stride)
    pad = _pad(pad)
    oh, ow = conv_out_hw(x.shape[:2], (kh, kw), (sh, sw), pad)
    xp = _padded(x, pad)
    y = np.zeros((oh, ow, c), dtype=dt)
    for u in range(kh):
        for v in range(kw):
            y += xp[_tap(u, v, oh, ow, sh, sw)] * W[u, v, :]
    if b is not None:
        y += _f(b, dt).reshape(c)
    return y


def depthwise_backward(dy, x, W, stride=(1, 1), pad=(0, 0, 0, 0), channels=None):
    """Exact depthwise backward: (dx [H, W, C], dW [kh, kw, k], db [C])."""
    dt = _float_dtype(dy, x, W)
    dy, x, W = _f(dy, dt), _f(x, dt), _f(W, dt)
    kh, kw, c = W.shape
    sh, sw = _stride(stride)
    pad = _pad(pad)
    oh, ow = conv_out_hw(x.shape[:2], (kh, kw), (sh, sw), pad)
    if dy.shape != (oh, ow, c):
        raise ValueError(f"depthwise_backward: dy {dy.shape} != output shape {(oh, ow, c)}")
    ch = _channels(channels, c)
    xp = _padded(x, pad)
    dxp = np.zeros_like(xp)
    dW = np.zeros((kh, kw, ch.size), dtype=dt)
    for u in range(kh):
        for v in range(kw):
            idx = _tap(u, v, oh, ow, sh, sw)
            dW[u, v, :] = (dy[:, :, ch] * xp[idx][:, :, ch]).sum(axis=(0, 1))
            dxp[idx] += dy * W[u, v, :]
    pt, pl, _, _ = pad
    H, Wd, _ = x.shape
    return dxp[pt:pt + H, pl:pl + Wd, :].copy(), dW, dy.sum(axis=(0, 1))


def pointwise(x, W, b=None) -> np.ndarray:
    """1x1 stride-1 convolution, W [Cout, Cin]: y[h, w, o] = b[o] + sum_i x[h, w, i] W[o, i]."""
    dt = _float_dtype(x, W)
    x, W = _f(x, dt), _f(W, dt)
    if x.ndim != 3 or W.ndim != 2 or x.shape[2] != W.shape[1]:
        raise ValueError(f"pointwise: input {x.shape} does not match weights {W.shape}")
    y = x @ W.T
    if b is not None:
        y = y + _f(b, dt).reshape(W.shape[0])
    return y


def pointwise_backward(dy, x, W, channels=None):
    """Exact pointwise backward: (dx [H, W, Cin], dW [Cout, k], db [Cout])."""
    dt = _float_dtype(dy, x, W)
    dy, x, W = _f(dy, dt), _f(x, dt), _f(W, dt)
    cout, cin = W.shape
    ch = _channels(channels, cin)
    dy2 = dy.reshape(-1, cout)
    x2 = x.reshape(-1, cin)
    return (dy2 @ W).reshape(x.shape), dy2.T @ x2[:, ch], dy2.sum(axis=0)


def fc(x, W, b=None) -> np.ndarray:
    """Fully connected over x flattened in HWC memory order; W [O, n] -> y [1, 1, O]."""
    dt = _float_dtype(x, W)
    x, W = _f(x, dt).reshape(-1), _f(W, dt)
    if W.ndim != 2 or W.shape[1] != x.size:
        raise ValueError(f"fc: {x.size} inputs do not match weights {W.shape}")
    y = W @ x
    if b is not None:
        y = y + _f(b, dt).reshape(W.shape[0])
    return y.reshape(1, 1, -1)


def fc_backward(dy, x, W, channels=None):
    """Exact fc backward: (dx shaped like x, dW [O, k] over the selected inputs, db [O])."""
    dt = _float_dtype(dy, x, W)
    x = _f(x, dt)
    W = _f(W, dt)
    dy = _f(dy, dt).reshape(W.shape[0])
    x1 = x.reshape(-1)
    ch = _channels(channels, x1.size)
    return (W.T @ dy).reshape(x.shape), np.outer(dy, x1[ch]), dy.copy()


def add(a, b) -> np.ndarray:
    """Residual add (same shapes)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"add: shapes {a.shape} and {b.shape} differ")
    return a + b


def add_backward(dy):
    """d(a + b): dy passes unchanged to both branches."""
    dy = np.asarray(dy)
    return dy.copy(), dy.copy()


def avgpool(x) -> np.ndarray:
    """Global average pool, [H, W, C] -> [1, 1, C] (mean over the H*W pixels)."""
    x = np.asarray(x)
    dt = _float_dtype(x)
    return x.astype(dt).mean(axis=(0, 1)).reshape(1, 1, -1)


def avgpool_backward(dy, x_shape) -> np.ndarray:
    """dx[h, w, c] = dy[c] / (H*W)."""
    H, W, C = (int(v) for v in x_shape)
    dy = np.asarray(dy)
    dt = _float_dtype(dy)
    g = dy.astype(dt).reshape(C) / (H * W)
    return np.broadcast_to(g, (H, W, C)).copy()


def clamp(z, lo=-np.inf, hi=np.inf) -> np.ndarray:
    """y = min(max(z, lo), hi): ReLU is clamp(z, 0, inf), ReLU6 clamp(z, 0, 6)."""
    return np.minimum(np.maximum(np.asarray(z), lo), hi)


def clamp_mask(y, lo=-np.inf, hi=np.inf) -> np.ndarray:
    """Boolean gradient mask from the clamp's OUTPUT y: True where lo < y < hi (the clamp was not
    active).  Ties at exactly lo or hi are False (gradient zero)."""
    y = np.asarray(y)
    return (y > lo) & (y < hi)


def clamp_backward(dy, y, lo=-np.inf, hi=np.inf) -> np.ndarray:
    """dz = dy * clamp_mask(y, lo, hi) (y = the clamp's output)."""
    dy = np.asarray(dy)
    return np.where(clamp_mask(y, lo, hi), dy, np.zeros((), dtype=dy.dtype)).astype(
        _float_dtype(dy))


def softmax_cross_entropy(logits, label):
    """Numerically stable softmax cross-entropy.

    ``logits`` [K] with an int ``label`` -> (loss, dlogits [K]):
    loss = logsumexp(z) - z[label], dlogits = softmax(z) - onehot(label).
    ``logits`` [N, K] with ``label`` [N] -> the mean loss over N and its gradient (each row / N).
    """
    z = np.asarray(logits)
    dt = _float_dtype(z)
    z = z.astype(dt)
    single = z.ndim == 1
    z2 = z.reshape(1, -1) if single else z
    lab = np.asarray(label, dtype=np.int64).reshape(-1)
    n, k = z2.shape
    if lab.size != n or lab.min() < 0 or lab.max() >= k:
        raise ValueError("softmax_cross_entropy: bad label(s)")
    m = z2.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(z2 - m).sum(axis=1, keepdims=True))
    losses = lse[:, 0] - z2[np.arange(n), lab]
    d = np.exp(z2 - lse)
    d[np.arange(n), lab] -= 1.0
    if single:
        return float(losses[0]), d.reshape(-1)
    return float(losses.mean()), d / n


# =============================================================================================
# Gradient Condensing (ALGORITHMS.md section 1; geometry: module doc, decision 2)
# =============================================================================================

@dataclass(frozen=True)
class GCPatch:
    """Patch p = py * PW + px: output rows [oy0, oy1), columns [ox0, ox1); input window rows
    [iy0, iy1), columns [ix0, ix1) (possibly empty: iy0 == iy1 or ix0 == ix1)."""
    index: int
    py: int
    px: int
    oy0: int
    oy1: int
    ox0: int
    ox1: int
    iy0: int
    iy1: int
    ix0: int
    ix1: int

    @property
    def n_out(self) -> int:
        return (self.oy1 - self.oy0) * (self.ox1 - self.ox0)

    @property
    def n_in(self) -> int:
        return (self.iy1 - self.iy0) * (self.ix1 - self.ix0)


def gc_patches(in_hw, out_hw, stride, r) -> List[GCPatch]:
    """The ceil(H'/r) x ceil(W'/r) patches, row-major, with their input windows."""
    H, W = (int(v) for v in in_hw)
    oh, ow = (int(v) for v in out_hw)
    sh, sw = _stride(stride)
    r = _check_r(r)
    PH, PW = -(-oh // r), -(-ow // r)
    out = []
    for py in range(PH):
        for px in range(PW):
            oy0, ox0 = py * r, px * r
            oy1, ox1 = min(oy0 + r, oh), min(ox0 + r, ow)
            iy0, iy1 = min(py * r * sh, H), min((py + 1) * r * sh, H)
            ix0, ix1 = min(px * r * sw, W), min((px + 1) * r * sw, W)
            out.append(GCPatch(py * PW + px, py, px, oy0, oy1, ox0, ox1, iy0, iy1, ix0, ix1))
    return out


def gc_input_sums(x, out_hw, stride, r, channels=None) -> np.ndarray:
    """Forward-side saved tensor: xs[p, j] = sum over the input window of patch p of
    x[., ., channels[j]] (0 for an empty window).  Shape [P, k]."""
    x = np.asarray(x)
    dt = _float_dtype(x)
    x = x.astype(dt)
    ch = _channels(channels, x.shape[2])
    patches = gc_patches(x.shape[:2], out_hw, stride, r)
    xs = np.zeros((len(patches), ch.size), dtype=dt)
    for p in patches:
        xs[p.index] = x[p.iy0:p.iy1, p.ix0:p.ix1, :][:, :, ch].sum(axis=(0, 1))
    return xs


def gc_weight_sum(W, kind: str) -> np.ndarray:
    """Wsum: conv W[o, u, v, i] -> [Cout, Cin] summed over (u, v); pointwise: W itself;
    depthwise W[u, v, c] -> [C]."""
    W = np.asarray(W)
    W = W.astype(_float_dtype(W))
    if kind == "conv":
        return W.sum(axis=(1, 2))
    if kind == "pwconv":
        return W.copy()
    if kind == "dwconv":
        return W.sum(axis=(0, 1))
    raise ValueError(f"gc_weight_sum: unknown kind {kind!r}")


def gc_patch_means(dy, r) -> np.ndarray:
    """gbar[p, o] = mean of dy[., ., o] over the output pixels of patch p.  Shape [P, Cout]."""
    dy = np.asarray(dy)
    dy = dy.astype(_float_dtype(dy))
    oh, ow, c = dy.shape
    # the input geometry does not matter for the output tiling: use a dummy one
    patches = gc_patches((oh, ow), (oh, ow), (1, 1), r)
    g = np.zeros((len(patches), c), dtype=dy.dtype)
    for p in patches:
        g[p.index] = dy[p.oy0:p.oy1, p.ox0:p.ox1, :].mean(axis=(0, 1))
    return g


def gc_backward_from_saved(dy, xs, Wsum, in_shape, stride, r, kernel_hw, kind,
                           channels=None):
    """The condensed backward from the saved tensors alone (what the engine has).

    dy [H', W', Cout]; xs [P, k] (from gc_input_sums with the same ``channels``);
    Wsum from gc_weight_sum; in_shape (H, W, Cin); kind 'conv', 'pwconv' or 'dwconv'.
    Returns (dx [H, W, Cin], dW, db) with dW of the compact shape of module-doc decision 4.
    """
    dy = np.asarray(dy)
    dt = _float_dtype(dy, xs, Wsum)
    dy, xs, Wsum = _f(dy, dt), _f(xs, dt), _f(Wsum, dt)
    H, W, cin = (int(v) for v in in_shape)
    oh, ow, cout = dy.shape
    sh, sw = _stride(stride)
    kh, kw = (int(v) for v in kernel_hw)
    ch = _channels(channels, cin)
    patches = gc_patches((H, W), (oh, ow), (sh, sw), r)
    if xs.shape != (len(patches), ch.size):
        raise ValueError(f"xs has shape {xs.shape}, expected {(len(patches), ch.size)}")
    gbar = gc_patch_means(dy, r)                       # [P, Cout]
    s2 = float(sh * sw)
    db = dy.sum(axis=(0, 1))
    dx = np.zeros((H, W, cin), dtype=dt)
    if kind in ("conv", "pwconv"):
        if Wsum.shape != (cout, cin):
            raise ValueError(f"Wsum has shape {Wsum.shape}, expected {(cout, cin)}")
        g = gbar.T @ xs / s2                           # [Cout, k] = sum_p gbar[p,o] xs[p,j] / s^2
        if kind == "pwconv":
            if (kh, kw, sh, sw) != (1, 1, 1, 1):
                raise ValueError("pwconv is 1x1 stride 1")
            dW = g
        else:
            dW = np.broadcast_to(g[:, None, None, :], (cout, kh, kw, ch.size)).copy()
        for p in patches:
            dx[p.iy0:p.iy1, p.ix0:p.ix1, :] = (gbar[p.index] @ Wsum) / s2
    elif kind == "dwconv":
        if cout != cin or Wsum.shape != (cin,):
            raise ValueError(f"depthwise: Wsum {Wsum.shape}, dy {dy.shape}, in_shape {in_shape}")
        g = (gbar[:, ch] * xs).sum(axis=0) / s2        # [k]
        dW = np.broadcast_to(g, (kh, kw, ch.size)).copy()
        for p in patches:
            dx[p.iy0:p.iy1, p.ix0:p.ix1, :] = Wsum * gbar[p.index] / s2
    else:
        raise ValueError(f"gc_backward_from_saved: unknown kind {kind!r}")
    return dx, dW, db


def conv2d_backward_gc_formula(dy, x, W, stride=(1, 1), pad=(0, 0, 0, 0), r=2, channels=None):
    """Condensed conv backward by the formulas, for any r (r = 1 included; exact only for a
    1x1 stride-1 conv).  ``pad`` only sets the output size (the windows ignore it)."""
    W = np.asarray(W)
    cout, kh, kw, cin = W.shape
    x = np.asarray(x)
    oh, ow = conv_out_hw(x.shape[:2], (kh, kw), stride, pad)
    xs = gc_input_sums(x, (oh, ow), stride, r, channels)
    return gc_backward_from_saved(dy, xs, gc_weight_sum(W, "conv"), x.shape, stride, r,
                                  (kh, kw), "conv", channels)


def depthwise_backward_gc_formula(dy, x, W, stride=(1, 1), pad=(0, 0, 0, 0), r=2,
                                  channels=None):
    """Condensed depthwise backward by the formulas, for any r."""
    W = np.asarray(W)
    kh, kw, c = W.shape
    x = np.asarray(x)
    oh, ow = conv_out_hw(x.shape[:2], (kh, kw), stride, pad)
    xs = gc_input_sums(x, (oh, ow), stride, r, channels)
    return gc_backward_from_saved(dy, xs, gc_weight_sum(W, "dwconv"), x.shape, stride, r,
                                  (kh, kw), "dwconv", channels)


def pointwise_backward_gc_formula(dy, x, W, r=2, channels=None):
    """Condensed pointwise backward by the formulas, for any r (exact at r = 1)."""
    x = np.asarray(x)
    xs = gc_input_sums(x, x.shape[:2], (1, 1), r, channels)
    return gc_backward_from_saved(dy, xs, gc_weight_sum(W, "pwconv"), x.shape, (1, 1), r,
                                  (1, 1), "pwconv", channels)


def conv2d_backward_condensed(dy, x, W, stride=(1, 1), pad=(0, 0, 0, 0), r=2, channels=None):
    """What the engine computes for a conv: exact backward at r = 1, the formulas for r > 1."""
    if _check_r(r) == 1:
        return conv2d_backward(dy, x, W, stride, pad, channels)
    return conv2d_backward_gc_formula(dy, x, W, stride, pad, r, channels)


def depthwise_backward_condensed(dy, x, W, stride=(1, 1), pad=(0, 0, 0, 0), r=2,
                                 channels=None):
    """Depthwise: exact backward at r = 1, the formulas for r > 1."""
    if _check_r(r) == 1:
        return depthwise_backward(dy, x, W, stride, pad, channels)
    return depthwise_backward_gc_formula(dy, x, W, stride, pad, r, channels)


def pointwise_backward_condensed(dy, x, W, r=2, channels=None):
    """Pointwise: exact backward at r = 1 (where the formula is exact too), formulas for r > 1."""
    if _check_r(r) == 1:
        return pointwise_backward(dy, x, W, channels)
    return pointwise_backward_gc_formula(dy, x, W, r, channels)


def input_channel_importance(dW, kind: str) -> np.ndarray:
    """APU importance I[c] = ||dW[:, c]||^2: the sum of squares of the weight gradient over
    everything but the input-channel axis (last axis for conv [O,kh,kw,I], depthwise [kh,kw,C],
    pointwise/fc [O,I])."""
    dW = np.asarray(dW)
    dW = dW.astype(_float_dtype(dW))
    if kind not in WEIGHTED_KINDS:
        raise ValueError(f"input_channel_importance: unknown kind {kind!r}")
    return (dW * dW).reshape(-1, dW.shape[-1]).sum(axis=0)


# =============================================================================================
# Whole network
# =============================================================================================

@dataclass
class FloatLayer:
    """One float layer: ``kind`` in conv/dwconv/pwconv/fc/add/avgpool, input tensor ``in0``
    (and ``in1`` for add), float weights/bias in the FORMAT.md layouts, and the fused clamp
    [lo, hi] applied to its output (±inf = none)."""
    kind: str
    in0: int
    in1: Optional[int] = None
    W: Optional[np.ndarray] = None
    b: Optional[np.ndarray] = None
    stride: Stride = (1, 1)
    pad: Pad = (0, 0, 0, 0)
    lo: float = -np.inf
    hi: float = np.inf


@dataclass
class ForwardCache:
    """tensors[0] = the input, tensors[i + 1] = the (post-clamp) output of layer i."""
    tensors: List[np.ndarray]


@dataclass
class BackwardResult:
    loss: float
    dlogits: np.ndarray
    grads: Dict[int, Tuple[np.ndarray, np.ndarray]]        # layer -> (dW, db)
    tensor_grads: Dict[int, np.ndarray] = field(default_factory=dict)   # tensor -> dL/dt


def _load_reference_module():
    """tinymp.reference, imported normally when this file is part of the package, else by path
    (so that this module works without the C extension)."""
    try:
        from . import reference  # type: ignore
        return reference
    except ImportError:
        pass
    name = "_tinymp_reference_for_reference_train"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().with_name("reference.py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod                 # dataclasses look the module up while it executes
    spec.loader.exec_module(mod)
    return mod


class FloatNet:
    """A float network in .tmpm order: layer i reads tensors in0 (and in1) < i + 1 and writes
    tensor i + 1; tensor 0 is the input; the last tensor is the 1 x 1 x K logits."""

    def __init__(self, layers: Sequence[FloatLayer], input_shape):
        self.layers = list(layers)
        self.input_shape = tuple(int(v) for v in input_shape)
        for i, L in enumerate(self.layers):
            if L.kind not in WEIGHTED_KINDS + ("add", "avgpool"):
                raise ValueError(f"layer {i}: unknown kind {L.kind!r}")
            if not 0 <= L.in0 <= i or (L.kind == "add" and not 0 <= L.in1 <= i):
                raise ValueError(f"layer {i}: inputs must be earlier tensors")

    # -- construction from a .tmpm model ---------------------------------------------------

    @classmethod
    def from_model(cls, model, dtype=np.float64) -> "FloatNet":
        """The float view of an int8 .tmpm model (bytes, or a tinymp.reference.RefModel)."""
        ref = _load_reference_module()
        # a parsed model (duck-typed: tinymp.reference may be loaded under several names) or bytes
        m = model if hasattr(model, "layers") and hasattr(model, "tensors") \
            else ref.read_model(model)
        layers = []
        for L in m.layers:
            ti, to = m.tensors[L.in0], m.tensors[L.out]
            s_out, zp_out = float(to.scale), int(to.zero_point)
            lo = (L.act_min - zp_out) * s_out
            hi = (L.act_max - zp_out) * s_out
            W = b = None
            if L.type_name in WEIGHTED_KINDS:
                ws = np.asarray(L.wscale, dtype=np.float64)
                q = np.asarray(L.weights, dtype=np.float64)
                if L.type_name == "conv":
                    W = q * ws[:, None, None, None]
                elif L.type_name == "dwconv":
                    W = q * ws[None, None, :]
                else:                                   # pwconv, fc: [O][n]
                    W = q * ws[:, None]
                b = np.asarray(L.bias, dtype=np.float64) * float(ti.scale) * ws
                W, b = W.astype(dtype), b.astype(dtype)
            stride = tuple(L.stride) if L.type_name in CONV_KINDS else (1, 1)
            layers.append(FloatLayer(kind=L.type_name, in0=L.in0, in1=L.in1, W=W, b=b,
                                     stride=stride, pad=tuple(L.pads), lo=lo, hi=hi))
        return cls(layers, m.input_shape)

    # -- bookkeeping -----------------------------------------------------------------------

    def weighted_layers(self) -> List[int]:
        return [i for i, L in enumerate(self.layers) if L.kind in WEIGHTED_KINDS]

    def layer_weight_count(self, i: int) -> int:
        """|W_i|: number of weights (biases excluded)."""
        L = self.layers[i]
        return 0 if L.W is None else int(L.W.size)

    def _shapes(self) -> List[Tuple[int, int, int]]:
        shapes = [self.input_shape]
        for L in self.layers:
            h, w, c = shapes[L.in0]
            if L.kind == "conv":
                cout, kh, kw, _ = L.W.shape
                shapes.append(conv_out_hw((h, w), (kh, kw), L.stride, L.pad) + (cout,))
            elif L.kind == "dwconv":
                kh, kw, _ = L.W.shape
                shapes.append(conv_out_hw((h, w), (kh, kw), L.stride, L.pad) + (c,))
            elif L.kind == "pwconv":
                shapes.append((h, w, L.W.shape[0]))
            elif L.kind == "fc":
                shapes.append((1, 1, L.W.shape[0]))
            elif L.kind == "add":
                shapes.append((h, w, c))
            else:
                shapes.append((1, 1, c))
        return shapes

    def layer_macs(self, i: int) -> int:
        """Forward multiply-accumulates of layer i (0 for add / avgpool)."""
        L = self.layers[i]
        shapes = self._shapes()
        oh, ow, oc = shapes[i + 1]
        if L.kind == "conv":
            _, kh, kw, cin = L.W.shape
            return oh * ow * oc * kh * kw * cin
        if L.kind == "dwconv":
            kh, kw, _ = L.W.shape
            return oh * ow * oc * kh * kw
        if L.kind in ("pwconv", "fc"):
            return oh * ow * L.W.size
        return 0

    # -- forward ---------------------------------------------------------------------------

    def _layer_forward(self, L: FloatLayer, t: List[np.ndarray]) -> np.ndarray:
        x = t[L.in0]
        if L.kind == "conv":
            z = conv2d(x, L.W, L.b, L.stride, L.pad)
        elif L.kind == "dwconv":
            z = depthwise(x, L.W, L.b, L.stride, L.pad)
        elif L.kind == "pwconv":
            z = pointwise(x, L.W, L.b)
        elif L.kind == "fc":
            z = fc(x, L.W, L.b)
        elif L.kind == "add":
            z = add(x, t[L.in1])
        else:
            z = avgpool(x)
        return clamp(z, L.lo, L.hi)

    def forward(self, x, dtype=None):
        """Float forward.  Returns (logits [K], ForwardCache)."""
        x = np.asarray(x)
        if dtype is None:
            dtype = np.float64 if x.dtype.kind != "f" else _float_dtype(x)
        x = x.astype(dtype).reshape(self.input_shape)
        t = [x]
        for L in self.layers:
            t.append(self._layer_forward(L, t))
        return t[-1].reshape(-1).copy(), ForwardCache(t)

    # -- backward --------------------------------------------------------------------------

    def backward(self, cache: ForwardCache, label: int, trainable: Optional[Iterable[int]] = None,
                 r: Union[int, Dict[int, int]] = 1,
                 channels: Optional[Dict[int, Sequence[int]]] = None,
                 input_grad: bool = False) -> BackwardResult:
        """Softmax cross-entropy of the cached logits and its gradients.

        trainable: layer indices whose (dW, db) are returned (default: every weighted layer);
        the gradient is propagated down to the earliest trainable layer (to tensor 0 as well
        with ``input_grad``).  r: patch size for every conv/dwconv/pwconv on the path, or a
        dict {layer: r} (missing = 1 = exact).  channels: {layer: input-channel indices} of
        the compact dW (missing = all).  Exact backprop when r = 1 everywhere.
        """
        T = cache.tensors
        n = len(self.layers)
        loss, dlog = softmax_cross_entropy(T[-1].reshape(-1), label)
        weighted = set(self.weighted_layers())
        train = weighted if trainable is None else set(int(i) for i in trainable)
        if not train <= weighted:
            raise ValueError(f"trainable layers {sorted(train - weighted)} have no weights")
        stop = 0 if input_grad else (min(train) if train else n)
        channels = channels or {}

        def r_of(i):
            return _check_r(r.get(i, 1) if isinstance(r, dict) else r)

        def needs_grad(t):
            return (t == 0 and input_grad) or (t >= 1 and t - 1 >= stop)

        tg: Dict[int, np.ndarray] = {n: dlog.reshape(T[n].shape)}
        grads: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

        def accumulate(t, g):
            if needs_grad(t):
                tg[t] = tg[t] + g if t in tg else g

        for i in range(n - 1, stop - 1, -1):
            L = self.layers[i]
            if i + 1 not in tg:
                continue                                   # the loss does not depend on it
            gz = clamp_backward(tg[i + 1], T[i + 1], L.lo, L.hi)
            x = T[L.in0]
            ch = channels.get(i)
            if L.kind == "conv":
                dx, dW, db = conv2d_backward_condensed(gz, x, L.W, L.stride, L.pad, r_of(i), ch)
            elif L.kind == "dwconv":
                dx, dW, db = depthwise_backward_condensed(gz, x, L.W, L.stride, L.pad,
                                                          r_of(i), ch)
            elif L.kind == "pwconv":
                dx, dW, db = pointwise_backward_condensed(gz, x, L.W, r_of(i), ch)
            elif L.kind == "fc":
                dx, dW, db = fc_backward(gz, x, L.W, ch)
            elif L.kind == "add":
                da, dbr = add_backward(gz)
                accumulate(L.in0, da)
                accumulate(L.in1, dbr)
                continue
            else:
                dx = avgpool_backward(gz, x.shape)
                accumulate(L.in0, dx)
                continue
            if i in train:
                grads[i] = (dW, db)
            accumulate(L.in0, dx)
        return BackwardResult(loss, dlog, grads, tg)

    def loss(self, x, label) -> float:
        logits, _ = self.forward(x)
        return softmax_cross_entropy(logits, label)[0]

    # -- TinyTrain -------------------------------------------------------------------------

    def fisher_potentials(self, samples, labels, layers: Optional[Iterable[int]] = None,
                          r: Union[int, Dict[int, int]] = 1) -> Dict[int, np.ndarray]:
        """Delta[o] of every layer in ``layers`` (default: the weighted layers) over the N
        samples: a = the layer's output tensor, g = dL_n/da for each sample's own loss."""
        layers = sorted(self.weighted_layers() if layers is None else set(layers))
        acts = {i: [] for i in layers}
        gs = {i: [] for i in layers}
        for x, y in zip(samples, labels):
            _, cache = self.forward(x)
            res = self.backward(cache, int(y), trainable=layers, r=r)
            for i in layers:
                acts[i].append(cache.tensors[i + 1])
                gs[i].append(res.tensor_grads[i + 1])
        return {i: fisher_channel_potential(np.stack(acts[i]), np.stack(gs[i])) for i in layers}


# =============================================================================================
# TinyTrain criterion (ALGORITHMS.md section 3)
# =============================================================================================

def fisher_channel_potential(a, g) -> np.ndarray:
    """Delta[c] = 1/(2N) * sum_n ( sum_d a[n, d, c] * g[n, d, c] )^2.

    a, g: [N, *spatial, C] (axis 0 = samples, last axis = channels, all axes between are the
    D spatial positions).  Returns Delta [C]."""
    a, g = np.asarray(a), np.asarray(g)
    dt = _float_dtype(a, g)
    a, g = a.astype(dt), g.astype(dt)
    if a.shape != g.shape or a.ndim < 2:
        raise ValueError(f"fisher_channel_potential: shapes {a.shape} and {g.shape}")
    N, C = a.shape[0], a.shape[-1]
    per_sample = (a * g).reshape(N, -1, C).sum(axis=1)          # [N, C]
    return (per_sample ** 2).sum(axis=0) / (2.0 * N)


def layer_potential(delta) -> float:
    """P_i = sum_o Delta_o."""
    return float(np.sum(delta))


def tinytrain_scores(potentials, weight_counts, macs) -> np.ndarray:
    """s_i = P_i / ( (|W_i| / max_l |W_l|) * (MAC_i / max_l MAC_l) ), per candidate layer."""
    P = np.asarray(potentials, dtype=np.float64)
    Wc = np.asarray(weight_counts, dtype=np.float64)
    M = np.asarray(macs, dtype=np.float64)
    if not (P.shape == Wc.shape == M.shape) or P.ndim != 1:
        raise ValueError("tinytrain_scores: potentials, weight_counts and macs must be 1-d, "
                         "same length")
    if (Wc <= 0).any() or (M <= 0).any():
        raise ValueError("tinytrain_scores: costs must be > 0")
    return P / ((Wc / Wc.max()) * (M / M.max()))


def rank_layers(scores) -> List[int]:
    """Positions sorted by descending score; equal scores: lower position first."""
    s = np.asarray(scores, dtype=np.float64)
    return [int(i) for i in sorted(range(s.size), key=lambda i: (-s[i], i))]


def greedy_select_layers(scores, mem_cost, mac_cost, mem_budget, mac_budget) -> List[int]:
    """Walk the layers by descending score; add a layer when the running memory and MAC totals
    stay within both budgets, else skip it and go on.  Returns positions in selection order."""
    chosen, mem, mac = [], 0.0, 0.0
    for i in rank_layers(scores):
        if mem + mem_cost[i] <= mem_budget and mac + mac_cost[i] <= mac_budget:
            chosen.append(i)
            mem += mem_cost[i]
            mac += mac_cost[i]
    return chosen


def topk_channels(delta, k: int) -> np.ndarray:
    """The k channels with the largest Delta (ties: lower index), returned sorted ascending."""
    d = np.asarray(delta, dtype=np.float64)
    k = int(k)
    if not 0 <= k <= d.size:
        raise ValueError(f"topk_channels: k = {k} outside 0..{d.size}")
    order = sorted(range(d.size), key=lambda c: (-d[c], c))
    return np.array(sorted(order[:k]), dtype=np.int64)


# =============================================================================================
# Alternant Partial Update (ALGORITHMS.md section 2; module doc, decision 8)
# =============================================================================================

def _ratio(ratio) -> Fraction:
    q = Fraction(ratio).limit_denominator(1 << 20) if not isinstance(ratio, Fraction) else ratio
    if not 0 < q <= 1:
        raise ValueError(f"channel ratio must be in (0, 1], got {ratio!r}")
    return q


# the importance of a channel measured without a gradient (decision 9): float32's smallest normal
MEASURED_ZERO = 2.0 ** -126


def channel_count(ratio, C: int) -> int:
    """k = ceil(ratio * C) (ratio taken as an exact fraction: 1/8, 0.25, ...)."""
    return int(math.ceil(_ratio(ratio) * int(C)))


def apu_window(ratio) -> int:
    """m = ceil(1 / ratio): the first m periods visit every channel (decision 8)."""
    return int(math.ceil(1 / _ratio(ratio)))


def apu_select(ibar, age, ratio, history: Sequence[Sequence[int]] = (), tau: float = 0.1):
    """One APU period's channel selection (a pure function; decision 8).

    ibar: smoothed importance [C] (0: never measured); age [C] (periods since last selected);
    ratio rho; history: the previous periods' selections, oldest first (only the last one is
    used).  score = ibar * (1 + tau * age); k = ceil(rho * C).  rho = 1: every channel.
    rho < 1: the channels never measured first, then the best-scored, among those not
    selected in the previous period; if fewer than k are eligible, all of them plus the
    best-scored excluded ones (ties: lower index).  Returns (selection: sorted int array,
    new_age) with new_age = 0 for the selected channels and age + 1 for the others.
    """
    ibar = np.asarray(ibar, dtype=np.float64).reshape(-1)
    age = np.asarray(age, dtype=np.float64).reshape(-1)
    C = ibar.size
    if age.size != C:
        raise ValueError("apu_select: ibar and age sizes differ")
    k = channel_count(ratio, C)
    score = ibar * (1.0 + tau * age)
    order = sorted(range(C), key=lambda c: (bool(ibar[c] != 0), -score[c], c))
    if k >= C:
        sel = list(range(C))
    else:
        recent = list(history)[-1:]
        excluded = set(int(c) for s in recent for c in s)
        eligible = [c for c in order if c not in excluded]
        sel = eligible[:k]
        if len(sel) < k:
            sel += [c for c in order if c in excluded][:k - len(sel)]
    sel_arr = np.array(sorted(sel), dtype=np.int64)
    chosen = np.zeros(C, dtype=bool)
    chosen[sel_arr] = True
    new_age = np.where(chosen, 0.0, age + 1.0)
    return sel_arr, new_age


def smooth_importance(ibar, I, beta: float = 0.9) -> np.ndarray:
    """Ibar <- beta * Ibar + (1 - beta) * I, and Ibar <- I where Ibar is 0 (the first
    measurement); a result of 0 becomes 2**-126 (measured, no gradient; decision 9)."""
    ibar = np.asarray(ibar, dtype=np.float64)
    I = np.asarray(I, dtype=np.float64)
    out = np.where(ibar == 0, I, beta * ibar + (1.0 - beta) * I)
    return np.where(out > 0, out, MEASURED_ZERO)
