"""Tests of host/tinymp/reference_train.py, the numpy training oracle of tinymp.

What is checked, and against what:

* every exact backward (conv incl. stride 2 / asymmetric padding, depthwise 3x3 and 5x5,
  pointwise, fc, add, global avgpool, ReLU / ReLU6 clamps, softmax cross-entropy) against
  central finite differences in float64, and every forward against per-element loops written
  here from docs/KERNELS.md;
* a whole small network (conv -> dw -> pw -> add -> avgpool -> fc) built directly, against
  finite differences of every parameter and of the input;
* Gradient Condensing: r = 1 equals exact backprop; the formula at r = 1 equals the exact
  gradient for 1x1 stride-1 layers; the formulas equal a slow per-patch transcription of
  ALGORITHMS.md section 1 written here; exactness on piecewise-constant signals; the cosine
  similarity of condensed vs exact gradients per layer type and r (printed: run with -s);
* the TinyTrain criterion on hand-computed numbers; APU's visiting guarantee;
* FloatNet.from_model against the int8 numpy reference engine (tinymp.reference).

The module under test is loaded by file path, so the C extension is not needed.
Run from the repository root:  python3 -m pytest tests/test_reference_train.py -q -s
"""

import importlib.util
import itertools
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HOST = ROOT / "host"
_PATH = HOST / "tinymp" / "reference_train.py"
_spec = importlib.util.spec_from_file_location("_tinymp_reference_train_under_test", _PATH)
rt = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = rt          # dataclasses look the module up while it executes
_spec.loader.exec_module(rt)


def _tinymp_package():
    """The tinymp package for builder / reference / zoo; a bare package if the C extension is
    not built (those modules are pure Python)."""
    if str(HOST) not in sys.path:
        sys.path.insert(0, str(HOST))
    try:
        import tinymp  # noqa: F401
    except ImportError:
        pkg = types.ModuleType("tinymp")
        pkg.__path__ = [str(HOST / "tinymp")]
        sys.modules["tinymp"] = pkg
    return sys.modules["tinymp"]


# =============================================================================================
# Helpers
# =============================================================================================

def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    den = max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)
    return float(np.linalg.norm(a - b) / den)


def num_grad(f, arr, eps=1e-6):
    """Central finite differences of the scalar f() w.r.t. every entry of arr (in place)."""
    g = np.zeros_like(arr, dtype=np.float64)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + eps
        fp = f()
        arr[idx] = old - eps
        fm = f()
        arr[idx] = old
        g[idx] = (fp - fm) / (2 * eps)
    return g


def cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def smooth_field(rng, shape, sigma=2.0):
    """Spatially low-pass filtered Gaussian noise (as real images / feature maps are):
    white noise blurred by a Gaussian of std ``sigma`` pixels (periodic, via FFT), zero mean,
    unit std."""
    H, W, C = shape
    n = rng.standard_normal(shape)
    fy = np.fft.fftfreq(H)[:, None]
    fx = np.fft.fftfreq(W)[None, :]
    gain = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy ** 2 + fx ** 2))
    out = np.real(np.fft.ifft2(np.fft.fft2(n, axes=(0, 1)) * gain[:, :, None], axes=(0, 1)))
    return (out - out.mean()) / out.std()


# --- slow forward loops, straight from KERNELS.md (float instead of int8) --------------------

def loop_conv(x, W, b, stride, pad):
    H, Wd, cin = x.shape
    cout, kh, kw, _ = W.shape
    sh, sw = stride
    pt, pl, pb, pr = pad
    oh = (H + pt + pb - kh) // sh + 1
    ow = (Wd + pl + pr - kw) // sw + 1
    y = np.zeros((oh, ow, cout))
    for oy in range(oh):
        for ox in range(ow):
            for o in range(cout):
                acc = b[o]
                for u in range(kh):
                    for v in range(kw):
                        iy, ix = oy * sh - pt + u, ox * sw - pl + v
                        if 0 <= iy < H and 0 <= ix < Wd:
                            acc += sum(x[iy, ix, i] * W[o, u, v, i] for i in range(cin))
                y[oy, ox, o] = acc
    return y


def loop_dw(x, W, b, stride, pad):
    H, Wd, c = x.shape
    kh, kw, _ = W.shape
    sh, sw = stride
    pt, pl, pb, pr = pad
    oh = (H + pt + pb - kh) // sh + 1
    ow = (Wd + pl + pr - kw) // sw + 1
    y = np.zeros((oh, ow, c))
    for oy in range(oh):
        for ox in range(ow):
            for ch in range(c):
                acc = b[ch]
                for u in range(kh):
                    for v in range(kw):
                        iy, ix = oy * sh - pt + u, ox * sw - pl + v
                        if 0 <= iy < H and 0 <= ix < Wd:
                            acc += x[iy, ix, ch] * W[u, v, ch]
                y[oy, ox, ch] = acc
    return y


# --- slow Gradient Condensing, transcribed from ALGORITHMS.md section 1 + the module doc ----

def slow_gc(kind, dy, x, W, stride, r, channels=None):
    """Per patch, per channel loops. kind: conv / dwconv / pwconv. Returns (dx, dW, db)."""
    H, Wd, cin = x.shape
    oh, ow, cout = dy.shape
    sh, sw = stride
    ch = list(range(cin)) if channels is None else list(channels)
    if kind == "conv":
        kh, kw = W.shape[1:3]
        wsum = [[sum(W[o, u, v, i] for u in range(kh) for v in range(kw)) for i in range(cin)]
                for o in range(cout)]
    elif kind == "pwconv":
        kh = kw = 1
        wsum = [[W[o, i] for i in range(cin)] for o in range(cout)]
    else:
        kh, kw = W.shape[:2]
        wsum = [sum(W[u, v, c] for u in range(kh) for v in range(kw)) for c in range(cin)]
    dx = np.zeros((H, Wd, cin))
    acc = np.zeros((cout, len(ch))) if kind != "dwconv" else np.zeros(len(ch))
    for py in range(math.ceil(oh / r)):
        for px in range(math.ceil(ow / r)):
            out_px = [(yy, xx) for yy in range(py * r, (py + 1) * r)
                      for xx in range(px * r, (px + 1) * r) if yy < oh and xx < ow]
            in_px = [(yy, xx) for yy in range(py * r * sh, (py + 1) * r * sh)
                     for xx in range(px * r * sw, (px + 1) * r * sw) if yy < H and xx < Wd]
            gbar = [sum(dy[yy, xx, o] for yy, xx in out_px) / len(out_px) for o in range(cout)]
            xs = [sum(x[yy, xx, i] for yy, xx in in_px) for i in range(cin)]
            if kind == "dwconv":
                for j, c in enumerate(ch):
                    acc[j] += gbar[c] * xs[c] / (sh * sw)
                for yy, xx in in_px:
                    for c in range(cin):
                        dx[yy, xx, c] = wsum[c] * gbar[c] / (sh * sw)
            else:
                for o in range(cout):
                    for j, i in enumerate(ch):
                        acc[o, j] += gbar[o] * xs[i] / (sh * sw)
                for yy, xx in in_px:
                    for i in range(cin):
                        dx[yy, xx, i] = sum(wsum[o][i] * gbar[o] for o in range(cout)) / (sh * sw)
    db = dy.sum(axis=(0, 1))
    if kind == "conv":
        dW = np.repeat(np.repeat(acc[:, None, None, :], kh, axis=1), kw, axis=2)
    elif kind == "pwconv":
        dW = acc
    else:
        dW = np.repeat(np.repeat(acc[None, None, :], kh, axis=0), kw, axis=1)
    return dx, dW, db


# Layer configurations: (kernel (kh, kw), stride (sh, sw), pad (t, l, b, r), input (H, W))
CONV_CFGS = [
    ((3, 3), (1, 1), (1, 1, 1, 1), (7, 6)),
    ((3, 3), (2, 2), (0, 0, 1, 1), (7, 8)),      # stride 2, TF-'same' style asymmetric
    ((3, 3), (2, 1), (1, 0, 2, 1), (8, 5)),      # asymmetric everything
    ((1, 1), (1, 1), (0, 0, 0, 0), (5, 4)),
    ((1, 1), (2, 2), (0, 0, 0, 0), (6, 5)),
    ((2, 3), (3, 2), (1, 2, 0, 1), (9, 7)),
    ((5, 5), (2, 2), (2, 1, 2, 2), (9, 9)),
]
DW_CFGS = [
    ((3, 3), (1, 1), (1, 1, 1, 1), (6, 7)),
    ((3, 3), (2, 2), (0, 0, 1, 1), (8, 7)),
    ((5, 5), (1, 1), (2, 2, 2, 2), (6, 6)),
    ((5, 5), (2, 2), (1, 1, 2, 2), (9, 8)),
    ((5, 3), (1, 2), (0, 2, 4, 0), (5, 6)),
]


# =============================================================================================
# Exact layers: forwards vs loops, backwards vs finite differences
# =============================================================================================

@pytest.mark.parametrize("cfg", CONV_CFGS)
def test_conv2d_forward_matches_loops(cfg):
    (kh, kw), stride, pad, (H, Wd) = cfg
    rng = np.random.default_rng(1)
    x = rng.standard_normal((H, Wd, 3))
    W = rng.standard_normal((4, kh, kw, 3))
    b = rng.standard_normal(4)
    y = rt.conv2d(x, W, b, stride, pad)
    assert y.shape[:2] == rt.conv_out_hw((H, Wd), (kh, kw), stride, pad)
    np.testing.assert_allclose(y, loop_conv(x, W, b, stride, pad), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cfg", DW_CFGS)
def test_depthwise_forward_matches_loops(cfg):
    (kh, kw), stride, pad, (H, Wd) = cfg
    rng = np.random.default_rng(2)
    x = rng.standard_normal((H, Wd, 4))
    W = rng.standard_normal((kh, kw, 4))
    b = rng.standard_normal(4)
    np.testing.assert_allclose(rt.depthwise(x, W, b, stride, pad),
                               loop_dw(x, W, b, stride, pad), rtol=1e-12, atol=1e-12)


def test_pointwise_fc_avgpool_add_forward():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 5))
    W = rng.standard_normal((6, 5))
    b = rng.standard_normal(6)
    y = rt.pointwise(x, W, b)
    np.testing.assert_allclose(y, loop_conv(x, W[:, None, None, :], b, (1, 1), (0,) * 4),
                               rtol=1e-12, atol=1e-12)
    Wf = rng.standard_normal((7, x.size))
    yf = rt.fc(x, Wf, b[:1].repeat(7))
    assert yf.shape == (1, 1, 7)
    # fc reads x in HWC memory order: element (h, w, c) is input index (h*W + w)*C + c
    manual = [sum(Wf[o, (h * 4 + w) * 5 + c] * x[h, w, c]
                  for h in range(3) for w in range(4) for c in range(5)) + b[0] for o in range(7)]
    np.testing.assert_allclose(yf.ravel(), manual, rtol=1e-12)
    np.testing.assert_allclose(rt.avgpool(x).ravel(), x.mean(axis=(0, 1)), rtol=1e-12)
    np.testing.assert_array_equal(rt.add(x, 2 * x), 3 * x)


def _check_backward_fd(forward, backward_out, params, rng, out_shape):
    """L = sum(R * forward()) for a fixed random R; compare analytic gradients (the arrays in
    backward_out(dy), in the order of params) with finite differences."""
    R = rng.standard_normal(out_shape)

    def loss():
        return float(np.sum(R * forward()))

    grads = backward_out(R)
    for p, g in zip(params, grads):
        ng = num_grad(loss, p)
        assert g.shape == p.shape
        assert rel_err(g, ng) < 1e-6, rel_err(g, ng)


@pytest.mark.parametrize("cfg", CONV_CFGS)
def test_conv2d_backward_fd(cfg):
    (kh, kw), stride, pad, (H, Wd) = cfg
    rng = np.random.default_rng(4)
    x = rng.standard_normal((H, Wd, 3))
    W = rng.standard_normal((2, kh, kw, 3))
    b = rng.standard_normal(2)
    oh, ow = rt.conv_out_hw((H, Wd), (kh, kw), stride, pad)
    _check_backward_fd(lambda: rt.conv2d(x, W, b, stride, pad),
                       lambda dy: rt.conv2d_backward(dy, x, W, stride, pad),
                       [x, W, b], rng, (oh, ow, 2))


@pytest.mark.parametrize("cfg", DW_CFGS)
def test_depthwise_backward_fd(cfg):
    (kh, kw), stride, pad, (H, Wd) = cfg
    rng = np.random.default_rng(5)
    x = rng.standard_normal((H, Wd, 3))
    W = rng.standard_normal((kh, kw, 3))
    b = rng.standard_normal(3)
    oh, ow = rt.conv_out_hw((H, Wd), (kh, kw), stride, pad)
    _check_backward_fd(lambda: rt.depthwise(x, W, b, stride, pad),
                       lambda dy: rt.depthwise_backward(dy, x, W, stride, pad),
                       [x, W, b], rng, (oh, ow, 3))


def test_pointwise_backward_fd():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 5))
    W = rng.standard_normal((6, 5))
    b = rng.standard_normal(6)
    _check_backward_fd(lambda: rt.pointwise(x, W, b), lambda dy: rt.pointwise_backward(dy, x, W),
                       [x, W, b], rng, (4, 3, 6))


def test_fc_backward_fd():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 4))          # fc on a non-1x1 tensor (flattened HWC)
    W = rng.standard_normal((5, 24))
    b = rng.standard_normal(5)
    _check_backward_fd(lambda: rt.fc(x, W, b), lambda dy: rt.fc_backward(dy, x, W),
                       [x, W, b], rng, (1, 1, 5))


def test_add_backward_fd():
    rng = np.random.default_rng(8)
    a = rng.standard_normal((3, 3, 2))
    c = rng.standard_normal((3, 3, 2))
    _check_backward_fd(lambda: rt.add(a, c), lambda dy: rt.add_backward(dy), [a, c], rng,
                       (3, 3, 2))


def test_avgpool_backward_fd():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 3, 4))
    _check_backward_fd(lambda: rt.avgpool(x), lambda dy: (rt.avgpool_backward(dy, x.shape),),
                       [x], rng, (1, 1, 4))


@pytest.mark.parametrize("lo,hi", [(0.0, np.inf), (0.0, 6.0), (-1.5, 0.7), (-np.inf, np.inf)])
def test_clamp_backward_fd(lo, hi):
    rng = np.random.default_rng(10)
    z = rng.uniform(-9, 9, size=(6, 5, 3))
    # keep every value at least 1e-3 away from the kinks so central differences are clean
    for k in (lo, hi):
        if np.isfinite(k):
            near = np.abs(z - k) < 1e-3
            z[near] += 2e-3
    _check_backward_fd(lambda: rt.clamp(z, lo, hi),
                       lambda dy: (rt.clamp_backward(dy, rt.clamp(z, lo, hi), lo, hi),),
                       [z], rng, z.shape)


def test_clamp_mask_relu6_and_ties():
    z = np.array([-2.0, 0.0, 1e-12, 3.0, 6.0 - 1e-12, 6.0, 7.5])
    y = rt.clamp(z, 0.0, 6.0)
    np.testing.assert_array_equal(y, [0, 0, 1e-12, 3, 6 - 1e-12, 6, 6])
    # mask of the output: 1 strictly inside (lo, hi); exactly at lo or hi: 0 (documented tie)
    np.testing.assert_array_equal(rt.clamp_mask(y, 0.0, 6.0),
                                  [False, False, True, True, True, False, False])
    dy = np.arange(1.0, 8.0)
    np.testing.assert_array_equal(rt.clamp_backward(dy, y, 0.0, 6.0), [0, 0, 3, 4, 5, 0, 0])
    # ReLU (hi = inf): only the lower clamp
    yr = rt.clamp(z, 0.0, np.inf)
    np.testing.assert_array_equal(rt.clamp_mask(yr, 0.0, np.inf),
                                  [False, False, True, True, True, True, True])


def test_softmax_cross_entropy_fd_and_stability():
    rng = np.random.default_rng(11)
    z = rng.standard_normal(7) * 3
    loss, d = rt.softmax_cross_entropy(z, 4)
    p = np.exp(z) / np.exp(z).sum()
    assert abs(loss - (-np.log(p[4]))) < 1e-12
    ng = num_grad(lambda: rt.softmax_cross_entropy(z, 4)[0], z)
    assert rel_err(d, ng) < 1e-6
    assert abs(d.sum()) < 1e-12
    # batch form: mean loss, gradient rows / N
    Z = rng.standard_normal((3, 5))
    lab = np.array([0, 4, 2])
    L, D = rt.softmax_cross_entropy(Z, lab)
    singles = [rt.softmax_cross_entropy(Z[n], lab[n]) for n in range(3)]
    assert abs(L - np.mean([s[0] for s in singles])) < 1e-12
    np.testing.assert_allclose(D, np.stack([s[1] for s in singles]) / 3, rtol=1e-12)
    assert rel_err(D, num_grad(lambda: rt.softmax_cross_entropy(Z, lab)[0], Z)) < 1e-6
    # huge logits: no overflow, exact values
    loss, d = rt.softmax_cross_entropy(np.array([1000.0, -1000.0, 990.0]), 1)
    assert np.isfinite(loss) and abs(loss - (2000.0 + np.log1p(np.exp(-10.0)))) < 1e-9
    assert np.all(np.isfinite(d))


def test_channel_selection_is_compact_slice():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((6, 6, 5))
    ch = [4, 0, 2]
    W = rng.standard_normal((3, 3, 3, 5))
    dy = rng.standard_normal((3, 3, 3))
    full = rt.conv2d_backward(dy, x, W, (2, 2), (1, 1, 1, 1))
    sel = rt.conv2d_backward(dy, x, W, (2, 2), (1, 1, 1, 1), channels=ch)
    np.testing.assert_array_equal(sel[0], full[0])
    np.testing.assert_array_equal(sel[2], full[2])
    np.testing.assert_allclose(sel[1], full[1][..., ch], rtol=1e-13, atol=1e-13)
    Wd = rng.standard_normal((3, 3, 5))
    dyd = rng.standard_normal((6, 6, 5))
    full = rt.depthwise_backward(dyd, x, Wd, (1, 1), (1, 1, 1, 1))
    sel = rt.depthwise_backward(dyd, x, Wd, (1, 1), (1, 1, 1, 1), channels=ch)
    np.testing.assert_allclose(sel[1], full[1][..., ch], rtol=1e-13, atol=1e-13)
    Wp = rng.standard_normal((4, 5))
    dyp = rng.standard_normal((6, 6, 4))
    np.testing.assert_allclose(rt.pointwise_backward(dyp, x, Wp, ch)[1],
                               rt.pointwise_backward(dyp, x, Wp)[1][:, ch], rtol=1e-13)
    with pytest.raises(ValueError):
        rt.pointwise_backward(dyp, x, Wp, [1, 1])
    with pytest.raises(ValueError):
        rt.pointwise_backward(dyp, x, Wp, [5])


# =============================================================================================
# Whole network
# =============================================================================================

def small_net(rng, relu6=(0.0, 6.0)):
    """conv 3x3/2 (asymmetric pad) + ReLU6 -> dw 3x3 + ReLU6 -> pw (linear) -> add(conv out)
    -> avgpool -> fc.  Input 9x8x3."""
    L = rt.FloatLayer
    layers = [
        L("conv", 0, W=rng.standard_normal((4, 3, 3, 3)) * 0.6, b=rng.standard_normal(4) * 0.3,
          stride=(2, 2), pad=(0, 0, 1, 1), lo=relu6[0], hi=relu6[1]),
        L("dwconv", 1, W=rng.standard_normal((3, 3, 4)) * 0.6, b=rng.standard_normal(4) * 0.3,
          stride=(1, 1), pad=(1, 1, 1, 1), lo=relu6[0], hi=relu6[1]),
        L("pwconv", 2, W=rng.standard_normal((4, 4)) * 0.6, b=rng.standard_normal(4) * 0.3),
        L("add", 1, in1=3),
        L("avgpool", 4),
        L("fc", 5, W=rng.standard_normal((5, 4)), b=rng.standard_normal(5) * 0.3),
    ]
    return rt.FloatNet(layers, (9, 8, 3))


def test_whole_network_gradients_fd():
    rng = np.random.default_rng(13)
    net = small_net(rng)
    x = rng.standard_normal((9, 8, 3)) * 2
    label = 3
    logits, cache = net.forward(x)
    # the clamps are exercised: both ReLU6 ends are hit somewhere
    t1 = cache.tensors[1]
    assert (t1 == 0).any() and (t1 == 6).any()
    res = net.backward(cache, label, input_grad=True)
    assert set(res.grads) == {0, 1, 2, 5}

    def f():
        return net.loss(x, label)

    assert abs(res.loss - f()) < 1e-12
    for i in (0, 1, 2, 5):
        dW, db = res.grads[i]
        assert rel_err(dW, num_grad(f, net.layers[i].W)) < 1e-6, i
        assert rel_err(db, num_grad(f, net.layers[i].b)) < 1e-6, i
    assert rel_err(res.tensor_grads[0], num_grad(f, x)) < 1e-6


def test_backward_trainable_subset_and_stop():
    rng = np.random.default_rng(14)
    net = small_net(rng)
    x = rng.standard_normal((9, 8, 3))
    _, cache = net.forward(x)
    full = net.backward(cache, 1)
    part = net.backward(cache, 1, trainable={2, 5})
    assert set(part.grads) == {2, 5}
    for i in (2, 5):
        np.testing.assert_allclose(part.grads[i][0], full.grads[i][0], rtol=1e-13)
        np.testing.assert_allclose(part.grads[i][1], full.grads[i][1], rtol=1e-13)
    # gradients reach the output of the earliest trainable layer (tensor 3 of layer 2); that
    # layer's input gradient is not computed (nothing below it is trained)
    assert set(part.tensor_grads) == {3, 4, 5, 6}
    np.testing.assert_allclose(part.tensor_grads[3], full.tensor_grads[3], rtol=1e-13)
    assert {0, 1, 2} <= set(rt.FloatNet.backward(net, cache, 1, input_grad=True).tensor_grads)
    with pytest.raises(ValueError):
        net.backward(cache, 1, trainable={3})          # add has no weights
    # channel selection in the network: compact slices of the full gradient
    sel = net.backward(cache, 1, channels={0: [2], 2: [3, 1]})
    np.testing.assert_allclose(sel.grads[0][0], full.grads[0][0][..., [2]], rtol=1e-13)
    np.testing.assert_allclose(sel.grads[2][0], full.grads[2][0][:, [3, 1]], rtol=1e-13)


def test_network_condensed_r1_is_exact_and_r2_is_not():
    rng = np.random.default_rng(15)
    net = small_net(rng)
    x = rng.standard_normal((9, 8, 3))
    _, cache = net.forward(x)
    exact = net.backward(cache, 0)
    r1 = net.backward(cache, 0, r=1)
    r1d = net.backward(cache, 0, r={0: 1, 1: 1})
    r2 = net.backward(cache, 0, r=2)
    for i in exact.grads:
        np.testing.assert_array_equal(r1.grads[i][0], exact.grads[i][0])
        np.testing.assert_array_equal(r1d.grads[i][0], exact.grads[i][0])
    # fc and its input gradient are exact under condensing; the convs are not
    np.testing.assert_allclose(r2.grads[5][0], exact.grads[5][0], rtol=1e-13)
    assert rel_err(r2.grads[0][0], exact.grads[0][0]) > 1e-3
    # biases: the layer above the first condensed layer sees the exact gradient
    np.testing.assert_allclose(r2.grads[2][1], exact.grads[2][1], rtol=1e-13)


# =============================================================================================
# Gradient Condensing
# =============================================================================================

@pytest.mark.parametrize("r", [1, 2, 3, 4, 7])
def test_gc_patch_geometry(r):
    H, Wd, oh, ow, s = 11, 9, 5, 4, (2, 2)
    patches = rt.gc_patches((H, Wd), (oh, ow), s, r)
    assert len(patches) == math.ceil(oh / r) * math.ceil(ow / r)
    seen_out = np.zeros((oh, ow), dtype=int)
    seen_in = np.zeros((H, Wd), dtype=int)
    for p in patches:
        assert p.index == p.py * math.ceil(ow / r) + p.px
        seen_out[p.oy0:p.oy1, p.ox0:p.ox1] += 1
        seen_in[p.iy0:p.iy1, p.ix0:p.ix1] += 1
        assert (p.iy0, p.ix0) == (min(p.py * r * 2, H), min(p.px * r * 2, Wd))
    assert (seen_out == 1).all()              # the patches tile the output exactly
    assert seen_in.max() <= 1                 # windows never overlap
    # covered input = rows [0, min(H, ceil(oh/r)*r*sh)) x cols likewise
    rows = min(H, math.ceil(oh / r) * r * 2)
    cols = min(Wd, math.ceil(ow / r) * r * 2)
    assert seen_in[:rows, :cols].all() and seen_in[rows:, :].sum() == 0
    assert seen_in[:, cols:].sum() == 0


@pytest.mark.parametrize("kind,cfg", [("conv", c) for c in CONV_CFGS] +
                         [("dwconv", c) for c in DW_CFGS])
def test_condensed_r1_equals_exact(kind, cfg):
    (kh, kw), stride, pad, (H, Wd) = cfg
    rng = np.random.default_rng(16)
    x = rng.standard_normal((H, Wd, 3))
    oh, ow = rt.conv_out_hw((H, Wd), (kh, kw), stride, pad)
    if kind == "conv":
        W = rng.standard_normal((2, kh, kw, 3))
        dy = rng.standard_normal((oh, ow, 2))
        a = rt.conv2d_backward_condensed(dy, x, W, stride, pad, r=1, channels=[2, 0])
        b = rt.conv2d_backward(dy, x, W, stride, pad, channels=[2, 0])
    else:
        W = rng.standard_normal((kh, kw, 3))
        dy = rng.standard_normal((oh, ow, 3))
        a = rt.depthwise_backward_condensed(dy, x, W, stride, pad, r=1, channels=[1])
        b = rt.depthwise_backward(dy, x, W, stride, pad, channels=[1])
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_pointwise_condensed_r1_and_formula_r1_equal_exact():
    rng = np.random.default_rng(17)
    x = rng.standard_normal((5, 7, 4))
    W = rng.standard_normal((3, 4))
    dy = rng.standard_normal((5, 7, 3))
    exact = rt.pointwise_backward(dy, x, W, channels=[3, 1])
    for got in (rt.pointwise_backward_condensed(dy, x, W, r=1, channels=[3, 1]),
                rt.pointwise_backward_gc_formula(dy, x, W, r=1, channels=[3, 1])):
        for u, v in zip(got, exact):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)


def test_gc_formula_r1_exact_for_1x1_stride1_conv_and_depthwise():
    """ALGORITHMS.md: the formula is exact for a 1x1 stride-1 conv at r = 1."""
    rng = np.random.default_rng(18)
    x = rng.standard_normal((6, 5, 4))
    W = rng.standard_normal((3, 1, 1, 4))
    dy = rng.standard_normal((6, 5, 3))
    got = rt.conv2d_backward_gc_formula(dy, x, W, (1, 1), (0,) * 4, r=1)
    for u, v in zip(got, rt.conv2d_backward(dy, x, W, (1, 1), (0,) * 4)):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
    Wd = rng.standard_normal((1, 1, 4))
    dyd = rng.standard_normal((6, 5, 4))
    got = rt.depthwise_backward_gc_formula(dyd, x, Wd, (1, 1), (0,) * 4, r=1)
    for u, v in zip(got, rt.depthwise_backward(dyd, x, Wd, (1, 1), (0,) * 4)):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
    # ... and is NOT exact for a 3x3 kernel at r = 1 (hence the exact path there)
    W3 = rng.standard_normal((3, 3, 3, 4))
    dy3 = rng.standard_normal((6, 5, 3))
    f = rt.conv2d_backward_gc_formula(dy3, x, W3, (1, 1), (1, 1, 1, 1), r=1)
    e = rt.conv2d_backward(dy3, x, W3, (1, 1), (1, 1, 1, 1))
    assert rel_err(f[1], e[1]) > 1e-2


@pytest.mark.parametrize("r", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("kind,cfg", [("conv", CONV_CFGS[1]), ("conv", CONV_CFGS[2]),
                                      ("conv", CONV_CFGS[5]), ("dwconv", DW_CFGS[1]),
                                      ("dwconv", DW_CFGS[3]), ("dwconv", DW_CFGS[4]),
                                      ("pwconv", ((1, 1), (1, 1), (0,) * 4, (7, 5)))])
def test_gc_formula_matches_slow_transcription(kind, cfg, r):
    (kh, kw), stride, pad, (H, Wd) = cfg
    rng = np.random.default_rng(19)
    cin = 3
    x = rng.standard_normal((H, Wd, cin))
    oh, ow = rt.conv_out_hw((H, Wd), (kh, kw), stride, pad)
    ch = [2, 0]
    if kind == "conv":
        W = rng.standard_normal((2, kh, kw, cin))
        dy = rng.standard_normal((oh, ow, 2))
        got = rt.conv2d_backward_gc_formula(dy, x, W, stride, pad, r, ch)
    elif kind == "dwconv":
        W = rng.standard_normal((kh, kw, cin))
        dy = rng.standard_normal((oh, ow, cin))
        got = rt.depthwise_backward_gc_formula(dy, x, W, stride, pad, r, ch)
    else:
        W = rng.standard_normal((2, cin))
        dy = rng.standard_normal((oh, ow, 2))
        got = rt.pointwise_backward_gc_formula(dy, x, W, r, ch)
    want = slow_gc(kind, dy, x, W, stride, r, ch)
    for u, v in zip(got, want):
        assert u.shape == v.shape
        np.testing.assert_allclose(u, v, rtol=1e-11, atol=1e-12)
    if r > 1:
        cond = {"conv": lambda: rt.conv2d_backward_condensed(dy, x, W, stride, pad, r, ch),
                "dwconv": lambda: rt.depthwise_backward_condensed(dy, x, W, stride, pad, r, ch),
                "pwconv": lambda: rt.pointwise_backward_condensed(dy, x, W, r, ch)}[kind]()
        for u, v in zip(cond, got):
            np.testing.assert_array_equal(u, v)


def test_gc_uncovered_and_empty_windows_get_zero():
    # valid 3x3 conv: output 4x4 of a 6x6 input; r=2 windows cover rows/cols 0..3 only
    rng = np.random.default_rng(20)
    x = rng.standard_normal((6, 6, 2))
    W = rng.standard_normal((2, 3, 3, 2))
    dy = rng.standard_normal((4, 4, 2))
    dx, _, _ = rt.conv2d_backward_gc_formula(dy, x, W, (1, 1), (0,) * 4, r=2)
    assert np.all(dx[4:, :, :] == 0) and np.all(dx[:, 4:, :] == 0)
    assert np.all(dx[:4, :4, :] != 0)
    # padding larger than the input needs: H=1, kh=3, pad 2+2 -> H'=3; r=1 windows [1,2), [2,3)
    # are empty (xs = 0) and only the first window receives a gradient
    x1 = rng.standard_normal((1, 1, 2))
    W1 = rng.standard_normal((2, 3, 3, 2))
    dy1 = rng.standard_normal((3, 3, 2))
    xs = rt.gc_input_sums(x1, (3, 3), (1, 1), 1)
    assert xs.shape == (9, 2) and np.all(xs[1:] == 0)
    np.testing.assert_allclose(xs[0], x1[0, 0])
    dx1, dW1, _ = rt.conv2d_backward_gc_formula(dy1, x1, W1, (1, 1), (2, 2, 2, 2), r=1)
    np.testing.assert_allclose(dx1[0, 0], dy1[0, 0] @ W1.sum(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(dW1[:, 1, 2, :], np.outer(dy1[0, 0], x1[0, 0]), rtol=1e-12)


@pytest.mark.parametrize("r", [2, 3, 4])
def test_gc_exact_on_piecewise_constant_signals(r):
    """For 1x1 layers the formulas are exact when x is constant on each input window (dW)
    or dy is constant on each output patch (dx), also on partial border patches; for a
    1x1 stride-2 conv with H = 2H', window sums of dx are conserved."""
    rng = np.random.default_rng(21)
    oh, ow = 2 * r + 1, r + 2                              # partial border patches
    blocks = rng.standard_normal((math.ceil(oh / r), math.ceil(ow / r), 3))
    xpc = np.repeat(np.repeat(blocks, r, 0), r, 1)[:oh, :ow]
    W = rng.standard_normal((2, 3))
    dy = rng.standard_normal((oh, ow, 2))
    np.testing.assert_allclose(rt.pointwise_backward_gc_formula(dy, xpc, W, r)[1],
                               rt.pointwise_backward(dy, xpc, W)[1], rtol=1e-12)
    dblocks = rng.standard_normal((math.ceil(oh / r), math.ceil(ow / r), 2))
    dypc = np.repeat(np.repeat(dblocks, r, 0), r, 1)[:oh, :ow]
    x = rng.standard_normal((oh, ow, 3))
    np.testing.assert_allclose(rt.pointwise_backward_gc_formula(dypc, x, W, r)[0],
                               rt.pointwise_backward(dypc, x, W)[0], rtol=1e-12)
    # depthwise 1x1: same statements per channel
    Wd = rng.standard_normal((1, 1, 3))
    dyd = rng.standard_normal((oh, ow, 3))
    np.testing.assert_allclose(rt.depthwise_backward_gc_formula(dyd, xpc, Wd, (1, 1), (0,) * 4,
                                                                r)[1],
                               rt.depthwise_backward(dyd, xpc, Wd, (1, 1), (0,) * 4)[1],
                               rtol=1e-12)
    # 1x1 conv, stride 2, H = 2 * H': x constant on each 2r x 2r window -> dW exact;
    # dy constant on patches -> dx summed over each window equals the exact sum
    H2, W2 = 2 * 2 * r, 2 * 2 * r
    xb = rng.standard_normal((2, 2, 3))
    x2 = np.repeat(np.repeat(xb, 2 * r, 0), 2 * r, 1)
    Wc = rng.standard_normal((2, 1, 1, 3))
    dyb = rng.standard_normal((2, 2, 2))
    dy2 = np.repeat(np.repeat(dyb, r, 0), r, 1)
    f = rt.conv2d_backward_gc_formula(dy2, x2, Wc, (2, 2), (0,) * 4, r)
    e = rt.conv2d_backward(dy2, x2, Wc, (2, 2), (0,) * 4)
    np.testing.assert_allclose(f[1], e[1], rtol=1e-12)
    for py, px in itertools.product(range(2), range(2)):
        win = (slice(py * 2 * r, (py + 1) * 2 * r), slice(px * 2 * r, (px + 1) * 2 * r))
        np.testing.assert_allclose(f[0][win].sum(axis=(0, 1)), e[0][win].sum(axis=(0, 1)),
                                   rtol=1e-12)
    assert H2 == 2 * dy2.shape[0] and W2 == 2 * dy2.shape[1]


def test_gc_from_saved_accepts_engine_style_integer_sums():
    """The engine saves xs as int32 sums of (x_q - zp) and scales them by s_x: the formulas
    are linear in xs, so feeding s_x * int_sums equals the formula on the dequantised input."""
    rng = np.random.default_rng(22)
    zp, s = -5, 0.037
    xq = rng.integers(-128, 128, size=(8, 8, 4))
    x = (xq - zp) * s
    W = rng.standard_normal((3, 3, 3, 4))
    dy = rng.standard_normal((4, 4, 3))
    ch = [0, 3]
    int_sums = rt.gc_input_sums(xq - zp, (4, 4), (2, 2), 2, ch)
    assert np.all(int_sums == np.round(int_sums))
    got = rt.gc_backward_from_saved(dy, s * int_sums, rt.gc_weight_sum(W, "conv"), x.shape,
                                    (2, 2), 2, (3, 3), "conv", ch)
    want = rt.conv2d_backward_gc_formula(dy, x, W, (2, 2), (1, 1, 1, 1), 2, ch)
    for u, v in zip(got, want):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)


# --- the r-dependence: cosine similarity of condensed vs exact gradients ---------------------

COS_LAYERS = {
    # name: (kind, kernel, stride, pad)         on a 28x28x8 input, 8 output channels
    "conv3x3 s1": ("conv", 3, 1, (1, 1, 1, 1)),
    "conv3x3 s2": ("conv", 3, 2, (0, 0, 1, 1)),
    "dw3x3 s1": ("dwconv", 3, 1, (1, 1, 1, 1)),
    "dw5x5 s2": ("dwconv", 5, 2, (1, 1, 2, 2)),
    "pw": ("pwconv", 1, 1, (0, 0, 0, 0)),
}
COS_RS = (1, 2, 4, 7)
COS_SEEDS = range(8)


def _cos_table():
    table = {}
    H, C = 28, 8
    for name, (kind, k, s, pad) in COS_LAYERS.items():
        for r in COS_RS:
            cw, cx = [], []
            for seed in COS_SEEDS:
                rng = np.random.default_rng(1000 + seed)
                x = smooth_field(rng, (H, H, C))
                oh, ow = rt.conv_out_hw((H, H), (k, k), s, pad)
                dy = smooth_field(rng, (oh, ow, C))
                if kind == "conv":
                    W = rng.standard_normal((C, k, k, C))
                    e = rt.conv2d_backward(dy, x, W, s, pad)
                    c = rt.conv2d_backward_condensed(dy, x, W, s, pad, r)
                elif kind == "dwconv":
                    W = rng.standard_normal((k, k, C))
                    e = rt.depthwise_backward(dy, x, W, s, pad)
                    c = rt.depthwise_backward_condensed(dy, x, W, s, pad, r)
                else:
                    W = rng.standard_normal((C, C))
                    e = rt.pointwise_backward(dy, x, W)
                    c = rt.pointwise_backward_condensed(dy, x, W, r)
                np.testing.assert_array_equal(c[2], e[2])          # bias: always exact
                cw.append(cosine(c[1], e[1]))
                cx.append(cosine(c[0], e[0]))
            table[name, r] = (float(np.mean(cw)), float(np.mean(cx)))
    return table


@pytest.fixture(scope="module")
def cos_table():
    return _cos_table()


def test_cosine_similarity_vs_r(cos_table):
    """Smooth (Gaussian-blurred, sigma 2 px, zero-mean) x and dy, 28x28x8, mean of 8 seeds.

    Measured (dW / dx cosine):
                    r=1          r=2          r=4          r=7
      conv3x3 s1  1.000/1.000  0.947/0.861  0.939/0.780  0.817/0.624
      conv3x3 s2  1.000/1.000  0.966/0.457  0.922/0.419  0.695/0.338
      dw3x3 s1    1.000/1.000  0.944/0.864  0.938/0.782  0.835/0.625
      dw5x5 s2    1.000/1.000  0.892/0.424  0.868/0.389  0.728/0.292
      pw          1.000/1.000  1.000/0.967  0.986/0.855  0.839/0.651
    The stride-2 dx is poor at every r > 1: the exact dx of a stride-2 layer is a
    checkerboard (input pixels under 1, 2 or 4 taps) that a window-constant value cannot
    follow. Bounds below leave a margin of about 0.05 under the measured values.
    """
    print("\ncosine similarity condensed vs exact (dW / dx), smooth inputs, mean of "
          f"{len(COS_SEEDS)} seeds")
    print("              " + "".join(f"{'r=' + str(r):>14s}" for r in COS_RS))
    for name in COS_LAYERS:
        cells = [f"  {cos_table[name, r][0]:.3f}/{cos_table[name, r][1]:.3f}" for r in COS_RS]
        print(f"  {name:11s} " + "".join(cells))
    for name in COS_LAYERS:
        assert cos_table[name, 1] == pytest.approx((1.0, 1.0), abs=1e-12)
        # non-increasing in r, for dW and for dx
        for a, b in zip(COS_RS, COS_RS[1:]):
            assert cos_table[name, b][0] <= cos_table[name, a][0] + 1e-9, (name, a, b)
            assert cos_table[name, b][1] <= cos_table[name, a][1] + 1e-9, (name, a, b)
    assert cos_table["pw", 2][0] > 0.97
    assert cos_table["pw", 2][1] > 0.92
    for name in ("conv3x3 s1", "conv3x3 s2", "dw3x3 s1"):
        assert cos_table[name, 2][0] > 0.9
    assert cos_table["dw5x5 s2", 2][0] > 0.82
    for name in ("conv3x3 s1", "dw3x3 s1"):
        assert cos_table[name, 2][1] > 0.82
    for name in ("conv3x3 s2", "dw5x5 s2"):
        assert cos_table[name, 2][1] > 0.35


def test_cosine_white_noise_is_worse_than_smooth(cos_table):
    """The approximation relies on spatial smoothness: white-noise inputs give a clearly
    lower dW cosine for pointwise at r = 4 than smooth ones."""
    rng = np.random.default_rng(3000)
    x = rng.standard_normal((28, 28, 8))
    dy = rng.standard_normal((28, 28, 8))
    W = rng.standard_normal((8, 8))
    c = cosine(rt.pointwise_backward_condensed(dy, x, W, 4)[1], rt.pointwise_backward(dy, x, W)[1])
    assert c < cos_table["pw", 4][0] - 0.3


def test_input_channel_importance():
    dW = np.arange(24.0).reshape(2, 3, 1, 4)
    np.testing.assert_allclose(rt.input_channel_importance(dW, "conv"),
                               (dW ** 2).sum(axis=(0, 1, 2)))
    np.testing.assert_allclose(rt.input_channel_importance(np.array([[1.0, 2.0], [3.0, 4.0]]),
                                                           "pwconv"), [10.0, 20.0])


# =============================================================================================
# TinyTrain criterion
# =============================================================================================

def test_fisher_potential_hand_case():
    # N = 2 samples, D = 2 positions, C = 2 channels; a[n, d, c], g[n, d, c]:
    #   n=0: a = [[1, 2], [3, 0]], g = [[ 1, 1], [ 2, 5]]
    #   n=1: a = [[0, 1], [2, 2]], g = [[ 4, -1], [1, 0.5]]
    # per sample sum_d a*g:  n=0: c0 = 1*1 + 3*2 = 7,  c1 = 2*1 + 0*5 = 2
    #                        n=1: c0 = 0*4 + 2*1 = 2,  c1 = 1*(-1) + 2*0.5 = 0
    # Delta = 1/(2N) sum_n (.)^2 = 1/4 * [49 + 4, 4 + 0] = [13.25, 1.0];  P = 14.25
    a = np.array([[[1, 2], [3, 0]], [[0, 1], [2, 2]]], dtype=float)
    g = np.array([[[1, 1], [2, 5]], [[4, -1], [1, 0.5]]], dtype=float)
    delta = rt.fisher_channel_potential(a, g)
    np.testing.assert_allclose(delta, [13.25, 1.0])
    assert rt.layer_potential(delta) == pytest.approx(14.25)
    # spatial axes may be 2-d: [N, H, W, C] gives the same numbers
    np.testing.assert_allclose(rt.fisher_channel_potential(a.reshape(2, 1, 2, 2),
                                                           g.reshape(2, 1, 2, 2)), delta)
    np.testing.assert_array_equal(rt.topk_channels(delta, 1), [0])


def test_tinytrain_scores_ranking_and_greedy_hand_case():
    # three layers: P = [4, 3, 1], |W| = [100, 50, 10], MAC = [1000, 4000, 500]
    # |W|/max = [1, .5, .1], MAC/max = [.25, 1, .125]
    # s = [4/(1*.25), 3/(.5*1), 1/(.1*.125)] = [16, 6, 80]  -> ranking [2, 0, 1]
    s = rt.tinytrain_scores([4, 3, 1], [100, 50, 10], [1000, 4000, 500])
    np.testing.assert_allclose(s, [16, 6, 80])
    assert rt.rank_layers(s) == [2, 0, 1]
    # memory costs [60, 30, 20], MAC costs [1000, 4000, 500]
    # budget mem 85, MAC 5000: take 2 (20, 500); 0 fits (80, 1500); 1 would need 110 > 85: skip
    assert rt.greedy_select_layers(s, [60, 30, 20], [1000, 4000, 500], 85, 5000) == [2, 0]
    # memory 60: 2 (20); 0 needs 80 > 60: skipped; 1 (50, 4500) fits -> [2, 1]
    assert rt.greedy_select_layers(s, [60, 30, 20], [1000, 4000, 500], 60, 5000) == [2, 1]
    # MAC budget 1200: 2 (500); 0 (1500) > 1200 skip; 1 (4500) skip -> [2]
    assert rt.greedy_select_layers(s, [60, 30, 20], [1000, 4000, 500], 1000, 1200) == [2]
    assert rt.greedy_select_layers(s, [60, 30, 20], [1000, 4000, 500], 10, 10 ** 9) == []
    # ties in the ranking: lower position first; top-k ties: lower index
    assert rt.rank_layers([1.0, 2.0, 1.0]) == [1, 0, 2]
    np.testing.assert_array_equal(rt.topk_channels([0.5, 3, 0.5, 3, 1], 3), [1, 3, 4])
    np.testing.assert_array_equal(rt.topk_channels([2, 1, 2, 1], 3), [0, 1, 2])


def test_network_fisher_potentials_match_manual():
    rng = np.random.default_rng(23)
    net = small_net(rng)
    xs = [rng.standard_normal((9, 8, 3)) for _ in range(3)]
    ys = [0, 4, 2]
    got = net.fisher_potentials(xs, ys, layers=[1, 2])
    per = {1: [], 2: []}
    for x, y in zip(xs, ys):
        _, cache = net.forward(x)
        res = net.backward(cache, y)
        for i in (1, 2):
            # a = output tensor of layer i, g = dL/da (tensor gradient, before the clamp mask)
            per[i].append((cache.tensors[i + 1] * res.tensor_grads[i + 1]).sum(axis=(0, 1)))
    for i in (1, 2):
        np.testing.assert_allclose(got[i], (np.array(per[i]) ** 2).sum(axis=0) / (2 * 3),
                                   rtol=1e-12)
    assert net.layer_weight_count(0) == 4 * 3 * 3 * 3
    assert net.layer_macs(0) == 4 * 4 * 4 * 27          # out 4x4x4, 27 MACs each
    assert net.layer_macs(1) == 4 * 4 * 4 * 9
    assert net.layer_macs(2) == 4 * 4 * 16
    assert net.layer_macs(5) == 20 and net.layer_macs(3) == 0


# =============================================================================================
# APU
# =============================================================================================

def test_channel_count_and_window():
    assert [rt.channel_count(r, 24) for r in (1 / 8, 1 / 4, 1 / 2, 1)] == [3, 6, 12, 24]
    assert rt.channel_count(1 / 8, 10) == 2 and rt.channel_count(0.1, 30) == 3
    assert rt.channel_count(1 / 3, 3) == 1
    assert [rt.apu_window(r) for r in (1 / 8, 1 / 4, 1 / 2, 1, 0.75)] == [8, 4, 2, 1, 2]
    with pytest.raises(ValueError):
        rt.channel_count(0, 4)


def test_apu_select_hand_case():
    ibar = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 0.5])
    age = np.array([0.0, 10.0, 0.0, 0.0, 1.0, 0.0])
    # scores with tau = 0.1: [5, 2, 4, 2, 3.3, 0.5]
    sel, new_age = rt.apu_select(ibar, age, 1 / 2, history=[], tau=0.1)
    np.testing.assert_array_equal(sel, [0, 2, 4])
    np.testing.assert_array_equal(new_age, [0, 11, 0, 1, 0, 1])
    # rho = 1/2: the previous period's channels are excluded
    sel2, _ = rt.apu_select(ibar, new_age, 1 / 2, history=[sel])
    np.testing.assert_array_equal(sel2, [1, 3, 5])
    # rho = 3/4 (k = 5): 3 eligible, filled with the 2 best-scored excluded ones
    sel3, _ = rt.apu_select(ibar, np.zeros(6), 0.75, history=[[0, 2, 4]])
    np.testing.assert_array_equal(sel3, [0, 1, 2, 3, 5])
    # rho = 1/4 (k = 2): only the previous period is excluded (3), older ones are not
    sel4, _ = rt.apu_select(ibar, np.zeros(6), 0.25, history=[[1], [0, 2], [4], [3]])
    np.testing.assert_array_equal(sel4, [0, 2])
    # channels never measured (ibar 0) come before every measured one, lower index first
    sel6, _ = rt.apu_select([5.0, 0.0, 4.0, 0.0, 0.0, 9.0], np.zeros(6), 1 / 3, history=[[5]])
    np.testing.assert_array_equal(sel6, [1, 3])
    sel7, _ = rt.apu_select([5.0, 0.0, 4.0, 1.0, 2.0, 9.0], np.zeros(6), 1 / 3, history=[[1]])
    np.testing.assert_array_equal(sel7, [0, 5])       # 1 excluded: the two best measured
    # rho = 1: everything, ages all reset
    sel5, age5 = rt.apu_select(ibar, age, 1.0, history=[[0]])
    np.testing.assert_array_equal(sel5, np.arange(6))
    assert np.all(age5 == 0)


def _run_apu(C, ratio, periods, rng, initial=None, scores=None):
    """APU from a reset: the plan's selection (`initial`, else the first k), then `periods`
    periods; each period's measured importance is random and heavy-tailed unless `scores`
    (fixed) is given. Returns the selections (the initial one first) and the final ages."""
    k = rt.channel_count(ratio, C)
    sel = np.array(sorted(initial if initial is not None else range(k)))
    ibar, age = np.zeros(C), np.zeros(C)
    history = [sel]
    for _ in range(periods):
        I = scores if scores is not None else rng.exponential(size=C) ** 4
        ibar[sel] = rt.smooth_importance(ibar[sel], np.asarray(I)[sel], beta=0.9)
        sel, age = rt.apu_select(ibar, age, ratio, history, tau=0.1)
        history.append(sel)
    return history, age


@pytest.mark.parametrize("ratio", [1 / 8, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 1])
@pytest.mark.parametrize("C", [1, 3, 5, 8, 13, 24, 40])
def test_apu_first_periods_visit_every_channel(ratio, C):
    """Whatever the importances and the plan's initial channels, the first m = ceil(1/rho)
    periods visit every channel (never-measured channels first: ceil(C / k) <= m); no channel is
    selected twice running while 2k <= C; ages are the periods since the last selection."""
    rng = np.random.default_rng([C, int(100 * ratio)])
    k, m = rt.channel_count(ratio, C), rt.apu_window(ratio)
    for trial in range(30):
        initial = rng.choice(C, size=k, replace=False)
        history, age = _run_apu(C, ratio, 4 * m + 5, rng, initial=initial)
        assert all(len(s) == k and len(set(s.tolist())) == k for s in history)
        first = set().union(*[set(s.tolist()) for s in history[:m]])
        assert first == set(range(C)), (trial, sorted(set(range(C)) - first))
        if 2 * k <= C:
            for a, b in zip(history, history[1:]):
                assert not set(a.tolist()) & set(b.tolist())
        for c in range(C):
            last = max(t for t, s in enumerate(history) if c in s)
            assert age[c] == len(history) - 1 - last


def test_apu_importance_decides_and_age_brings_channels_back():
    """After the first periods, fixed importances decide: the more important a channel, the more
    often it is updated; with importances within a factor 8 the least important still comes
    back, again and again (its age term grows until it outscores the others)."""
    C, ratio = 8, 1 / 4
    scores = np.array([8.0, 1.0, 6.0, 2.0, 4.0, 1.5, 3.0, 5.0])
    history, _ = _run_apu(C, ratio, 200, None, scores=scores)
    counts = np.array([sum(c in s for s in history[4:]) for c in range(C)])
    order = np.argsort(-scores, kind="stable")
    assert list(counts[order]) == sorted(counts, reverse=True), counts
    assert counts[0] > 2 * counts[1] > 0, counts
    assert counts.min() >= 3, counts
    # the rotation before session 42 (the last m - 1 periods excluded) updated every channel
    # equally often whatever its importance
    assert len(set(counts.tolist())) > 1


def test_apu_channels_far_below_the_others_wait_for_good():
    """The other side of the carried scores (docs/TRAINING.md section 6): a channel measured at 0
    is never selected again while others had a gradient, and one 5,000 times below those it
    competes with waits beyond 200 periods (its score grows by tau * ibar per period)."""
    scores = np.array([0.0, 1e-3, 5.0, 6.0, 7.0, 8.0, 1e6, 9.0])
    history, _ = _run_apu(8, 1 / 4, 200, None, scores=scores)
    counts = [sum(c in s for s in history[4:]) for c in range(8)]
    assert counts[0] == 0 and counts[1] == 0, counts
    assert all(counts[c] > 0 for c in range(2, 8)), counts


def test_smooth_importance():
    np.testing.assert_allclose(rt.smooth_importance([1.0, 2.0], [3.0, 0.0], beta=0.9),
                               [0.9 + 0.3, 1.8])
    # the first measurement is taken as it is; a measured 0 becomes the smallest normal float32
    np.testing.assert_array_equal(rt.smooth_importance([0.0, 0.0, 1.0], [3.0, 0.0, 0.0], beta=0.9),
                                  [3.0, 2.0 ** -126, 0.9])
    assert np.float32(2.0 ** -126) > 0 and np.float32(2.0 ** -126) == np.finfo(np.float32).tiny


def _small_int8_model(seed=0):
    """conv 3x3/2 + ReLU6 -> dw 3x3 + ReLU6 -> pw (linear) -> add -> avgpool -> fc, 16x16x3,
    PTQ with tinymp.builder; returns (model bytes, builder graph)."""
    _tinymp_package()
    from tinymp.builder import Graph
    rng = np.random.default_rng(seed)
    g = Graph((16, 16, 3))
    c = g.conv(g.input, rng.standard_normal((8, 3, 3, 3)) * np.sqrt(2 / 27),
               rng.standard_normal(8) * 0.05, stride=2, padding="same", act="relu6")
    d = g.dwconv(c, rng.standard_normal((3, 3, 8)) * np.sqrt(2 / 9),
                 rng.standard_normal(8) * 0.05, act="relu6")
    p = g.pwconv(d, rng.standard_normal((8, 8)) * np.sqrt(1 / 8), rng.standard_normal(8) * 0.05)
    a = g.add(c, p)
    v = g.avgpool(a)
    g.fc(v, rng.standard_normal((6, 8)) * np.sqrt(1 / 8) * 3, rng.standard_normal(6) * 0.05)
    calib = rng.uniform(-1, 1, size=(16, 16, 16, 3)).astype(np.float32)
    return g.quantize(calib, input_range=(-1.0, 1.0)), g


def _load_builder_reference():
    try:
        _tinymp_package()
        from tinymp import builder, reference  # noqa: F401
        return builder, reference
    except Exception as e:  # pragma: no cover - depends on the tree
        pytest.skip(f"tinymp.builder / tinymp.reference not importable: {e}")


def _compare_float_int8(model, n_inputs, seed, builder, reference):
    net = rt.FloatNet.from_model(model)
    m = reference.read_model(model)
    rng = np.random.default_rng(seed)
    agree, errs = 0, []
    for _ in range(n_inputs):
        xr = rng.uniform(-1, 1, size=m.input_shape)
        xq = builder.quantize_input(xr, model)
        xf = (xq.astype(np.float64) - m.input_zero_point) * m.input_scale
        lf, _ = net.forward(xf)
        lq = reference.logits(m, xq).astype(np.float64)
        errs.append(np.linalg.norm(lf - lq) / max(np.linalg.norm(lq), 1e-12))
        agree += int(np.argmax(lf) == np.argmax(lq))
    return agree, float(np.median(errs)), net, m


def test_float_net_from_model_matches_int8_reference():
    builder, reference = _load_builder_reference()
    model, _ = _small_int8_model()
    agree, med_err, net, m = _compare_float_int8(model, 40, 5, builder, reference)
    print(f"\nsmall model: float view vs int8 reference: argmax agreement {agree}/40, "
          f"median relative logit error {med_err:.3f}")
    assert agree >= 34
    assert med_err < 0.15
    # the float view's parameters are exactly the dequantised ones
    L0 = m.layers[0]
    np.testing.assert_allclose(net.layers[0].W,
                               L0.weights * L0.wscale.astype(np.float64)[:, None, None, None])
    np.testing.assert_allclose(net.layers[0].b, L0.bias * m.tensors[0].scale
                               * L0.wscale.astype(np.float64))
    L1 = m.layers[1]
    np.testing.assert_allclose(net.layers[1].W, L1.weights * L1.wscale.astype(np.float64))
    t1 = m.tensors[1]
    assert net.layers[0].lo == (L0.act_min - t1.zero_point) * t1.scale
    assert net.layers[0].lo == pytest.approx(0.0, abs=1e-12)     # ReLU: act_min = zp_out
    # ReLU6: act_max = min(127, zp_out + round(6 / s_out)) -> hi <= 6 (+ rounding)
    assert net.layers[0].hi == (L0.act_max - t1.zero_point) * t1.scale
    assert net.layers[0].hi <= 6.0 + t1.scale
    # a linear layer (act [-128, 127]) keeps the int8 saturation as its clamp
    t3 = m.tensors[3]
    assert (m.layers[2].act_min, m.layers[2].act_max) == (-128, 127)
    assert net.layers[2].lo == (-128 - t3.zero_point) * t3.scale
    assert net.layers[2].hi == (127 - t3.zero_point) * t3.scale


def test_float_net_from_model_gradients_fd():
    _load_builder_reference()
    model, _ = _small_int8_model(seed=1)
    net = rt.FloatNet.from_model(model)
    rng = np.random.default_rng(24)
    x = rng.uniform(-1, 1, size=net.input_shape)
    label = 2
    _, cache = net.forward(x)
    res = net.backward(cache, label, trainable={1, 2, 5})
    f = lambda: net.loss(x, label)        # noqa: E731
    for i in (1, 2, 5):
        assert rel_err(res.grads[i][0], num_grad(f, net.layers[i].W)) < 1e-6, i
        assert rel_err(res.grads[i][1], num_grad(f, net.layers[i].b)) < 1e-6, i


def test_float_net_from_zoo_model():
    builder, reference = _load_builder_reference()
    try:
        from tinymp import zoo
    except Exception as e:  # pragma: no cover
        pytest.skip(f"tinymp.zoo not importable: {e}")
    model = zoo.mcunet(resolution=32, num_classes=10, seed=0, config="10fps")
    agree, med_err, net, _ = _compare_float_int8(model, 6, 7, builder, reference)
    print(f"\nmcunet-10fps @32: float view vs int8 reference: argmax agreement {agree}/6, "
          f"median relative logit error {med_err:.3f}")
    assert agree >= 4
    # backward over the whole zoo network runs, exact and condensed, with channel selection
    x = np.random.default_rng(8).uniform(-1, 1, size=net.input_shape)
    _, cache = net.forward(x)
    w = net.weighted_layers()
    last_convs = [i for i in w if net.layers[i].kind != "fc"][-3:]
    exact = net.backward(cache, 3, trainable=set(last_convs) | {w[-1]})
    cond = net.backward(cache, 3, trainable=set(last_convs) | {w[-1]}, r=2,
                        channels={last_convs[0]: [0, 1]})
    assert np.isfinite(exact.loss) and exact.loss == cond.loss
    np.testing.assert_allclose(cond.grads[w[-1]][0], exact.grads[w[-1]][0], rtol=1e-12)
    assert cond.grads[last_convs[0]][0].shape[-1] == 2
