"""The core's fp32 training kernels (core/train/) against the numpy oracle
host/tinymp/reference_train.py, through ctypes on a shared library built from every core .c file.

Exact kernels (r = 1) must match the oracle's exact backward, condensed ones (r >= 2) its GC
formulas (gc_backward_from_saved / *_gc_formula), to a relative error < 1e-4 in fp32 (max abs
error / max abs value over a layer's whole dx / dW / db); savers and masks exactly. Random small layers: r in {1, 2, 3, 4},
strides 1 and 2, asymmetric padding, partial border patches, selected channel subsets.
With TINYMP_TRAIN_SANITIZE=1 the library is built with AddressSanitizer + UBSan
(test_under_sanitizers runs this file that way in a subprocess).
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train_kernels_ctypes as tkc  # noqa: E402

ROOT = os.path.dirname(HERE)
SANITIZED = os.environ.get("TINYMP_TRAIN_SANITIZE") == "1"
TOL = 1e-4
MAX_ERR = {}  # kernel -> largest relative error seen (printed at the end with -s)


def _load_oracle():
    path = os.path.join(ROOT, "host", "tinymp", "reference_train.py")
    spec = importlib.util.spec_from_file_location("_reference_train_for_kernels", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


rt = _load_oracle()


@pytest.fixture(scope="module")
def tk(tmp_path_factory):
    # every core file, warning-free together; the sanitized run only needs the training kernels
    path = tkc.build_library(tmp_path_factory.mktemp("train_kernels"), sanitize=SANITIZED,
                             sources=tkc.TRAIN_SOURCES if SANITIZED else None)
    yield tkc.TrainKernels(path)
    if MAX_ERR:
        print("\nmax relative errors:", {k: float("%.3g" % v) for k, v in sorted(MAX_ERR.items())})


def close(name, got, want, tol=TOL, floor=1e-30):
    """max |got - want| / max(max |want|, floor) < tol; records the error per kernel."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert np.all(np.isfinite(got)), name
    scale = max(float(np.abs(want).max(initial=0.0)), floor)
    err = float(np.abs(got - want).max(initial=0.0)) / scale
    MAX_ERR[name] = max(MAX_ERR.get(name, 0.0), err)
    assert err < tol, f"{name}: relative error {err:.3g}"


# ---------------------------------------------------------------------------------------------
# random layers
# ---------------------------------------------------------------------------------------------

def rand_pads(rng, kh, kw):
    return tuple(int(rng.integers(0, k)) for k in (kh, kw, kh, kw))   # (top, left, bottom, right)


def make_layer(rng, kind, h, w, cin, cout, k, stride, pads=None, nsel=None):
    """A random int8 layer with its float view and a random input."""
    kh = kw = 1 if kind == "pwconv" else k
    if kind == "pwconv":
        stride, pads = (1, 1), (0, 0, 0, 0)
    if pads is None:
        pads = rand_pads(rng, kh, kw)
    pt, pl, pb, pr = pads
    if h + pt + pb < kh or w + pl + pr < kw:
        pads = (kh - 1, kw - 1, kh - 1, kw - 1)
    if kind == "conv":
        Wq = rng.integers(-127, 128, size=(cout, kh, kw, cin)).astype(np.int8)
        wscale = rng.uniform(0.002, 0.02, size=cout).astype(np.float32)
        W = Wq.astype(np.float64) * wscale.astype(np.float64)[:, None, None, None]
    elif kind == "dwconv":
        cout = cin
        Wq = rng.integers(-127, 128, size=(kh, kw, cin)).astype(np.int8)
        wscale = rng.uniform(0.002, 0.02, size=cin).astype(np.float32)
        W = Wq.astype(np.float64) * wscale.astype(np.float64)[None, None, :]
    else:
        Wq = rng.integers(-127, 128, size=(cout, cin)).astype(np.int8)
        wscale = rng.uniform(0.002, 0.02, size=cout).astype(np.float32)
        W = Wq.astype(np.float64) * wscale.astype(np.float64)[:, None]
    oh, ow = rt.conv_out_hw((h, w), (kh, kw), stride, pads)
    zp = int(rng.integers(-128, 128))
    s_x = np.float32(rng.uniform(0.01, 0.1))
    x = rng.integers(-128, 128, size=(h, w, cin)).astype(np.int8)
    x_real = (x.astype(np.float64) - zp) * float(s_x)
    nsel = cin if nsel is None else nsel
    channels = None if nsel == cin else np.sort(rng.choice(cin, size=nsel, replace=False))
    return dict(kind=kind, Wq=Wq, wscale=wscale, W=W, kh=kh, kw=kw, stride=tuple(stride),
                pads=tuple(pads), in_shape=(h, w, cin), out_shape=(oh, ow, cout), zp=zp, s_x=s_x,
                x=x, x_real=x_real, channels=channels)


def expand(gridmap, hw, r):
    """A map on the r-grid -> full resolution (each pixel takes its patch's value)."""
    h, w = hw
    return np.repeat(np.repeat(gridmap, r, axis=0), r, axis=1)[:h, :w]


def to_grid(full, r):
    """Full resolution -> the r-grid, reading each patch's top-left pixel; asserts the map is
    constant over every patch."""
    g = full[::r, ::r]
    np.testing.assert_allclose(expand(g, full.shape[:2], r), full, rtol=1e-12, atol=1e-300)
    return g


def rand_grad(rng, shape, zero_frac=0.2):
    g = rng.standard_normal(size=shape).astype(np.float32)
    g[rng.random(size=shape) < zero_frac] = 0.0
    return g


GEOMS = [  # (kind, h, w, cin, cout, k, stride)
    ("conv", 9, 7, 5, 6, 3, (1, 1)),
    ("conv", 11, 10, 4, 3, 3, (2, 2)),
    ("conv", 8, 9, 3, 4, 5, (2, 1)),
    ("conv", 7, 7, 6, 5, 1, (2, 2)),
    ("conv", 10, 13, 3, 7, 2, (1, 2)),
    ("dwconv", 10, 9, 6, 6, 3, (1, 1)),
    ("dwconv", 13, 11, 5, 5, 3, (2, 2)),
    ("dwconv", 9, 12, 4, 4, 5, (2, 1)),
    ("dwconv", 8, 8, 7, 7, 7, (1, 1)),
    ("pwconv", 9, 7, 8, 5, 1, (1, 1)),
    ("pwconv", 5, 11, 3, 9, 1, (1, 1)),
]


# ---------------------------------------------------------------------------------------------
# savers and masks: exact
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("r", [1, 2, 3, 4])
@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (2, 1)])
def test_gc_sums_exact(tk, rng, r, stride):
    for _ in range(3):
        L = make_layer(rng, "conv", int(rng.integers(3, 15)), int(rng.integers(3, 15)),
                       int(rng.integers(1, 9)), 2, int(rng.integers(1, 4)), stride)
        cin = L["in_shape"][2]
        for channels in (None, np.sort(rng.choice(cin, size=max(1, cin // 2), replace=False))):
            want = rt.gc_input_sums(L["x"].astype(np.int64) - L["zp"], L["out_shape"][:2], stride,
                                    r, channels)
            for dtype in (np.int16, np.int32):
                if dtype == np.int16 and tk.xs_type(r, stride) != np.int16:
                    with pytest.raises(tkc.KernelError) as e:
                        tk.gc_sums(L["x"], L["zp"], L["out_shape"][:2], stride, r, channels, dtype)
                    assert e.value.status == tkc.TMP_ERR_ARG
                    continue
                got = tk.gc_sums(L["x"], L["zp"], L["out_shape"][:2], stride, r, channels, dtype)
                np.testing.assert_array_equal(got.astype(np.int64), want.astype(np.int64))


def test_gc_sums_int16_extremes(tk):
    # r*s = 8 x 16 window: 128 pixels * 255 = 32640 < 32768, the largest int16 case
    r, stride = 4, (2, 4)
    assert tk.xs_type(r, stride) == np.int16
    assert tk.xs_type(4, (3, 3)) == np.int32 and tk.xs_type(7, (2, 2)) == np.int32
    for val, zp in ((127, -128), (-128, 127)):
        x = np.full((16, 32, 3), val, np.int8)
        xs = tk.gc_sums(x, zp, (2, 2), stride, r, None, np.int16)
        np.testing.assert_array_equal(xs, np.full((1, 3), 128 * (val - zp)))


def test_gc_sums_size(tk):
    assert tk.gc_sums_size(3, (7, 5), 4, np.int16) == 3 * 2 * 4 * 2
    assert tk.gc_sums_size(1, (7, 5), 4, np.int32) == 7 * 5 * 4 * 4


def test_save_channels(tk, rng):
    x = rng.integers(-128, 128, size=(5, 6, 9)).astype(np.int8)
    np.testing.assert_array_equal(tk.save_channels(x), x)
    ch = np.array([0, 3, 4, 8])
    np.testing.assert_array_equal(tk.save_channels(x, ch), x[:, :, ch])
    with pytest.raises(tkc.KernelError):
        tk.save_channels(x, [9])


@pytest.mark.parametrize("shape", [(5, 7, 3), (8, 8, 1), (6, 3, 11), (1, 1, 5)])
def test_mask_bits_and_counts(tk, rng, shape):
    y = rng.integers(-128, 128, size=shape).astype(np.int8)
    y.flat[:4] = [-128, 127, 0, 6]
    for amin, amax in ((-128, 127), (-20, 127), (-128, 30), (0, 6), (5, 5)):
        passing = (y.astype(np.int32) > amin) & (y.astype(np.int32) < amax)
        bits = tk.mask(y, amin, amax, 1, tkc.MASK_BITS)
        np.testing.assert_array_equal(bits, np.packbits(passing.reshape(-1), bitorder="little"))
        for r in (1, 2, 3, 4, 7, 15):
            cnt = tk.mask(y, amin, amax, r, tkc.MASK_COUNTS)
            ph, pw = tkc.grid(shape[:2], r)
            want = np.zeros((ph, pw, shape[2]), np.int64)
            for py in range(ph):
                for px in range(pw):
                    want[py, px] = passing[py * r:(py + 1) * r, px * r:(px + 1) * r].sum(axis=(0, 1))
            np.testing.assert_array_equal(cnt.reshape(ph, pw, shape[2]), want)
    assert tk.mask(y, 0, 6, 2, tkc.MASK_NONE).size == 0
    with pytest.raises(tkc.KernelError):
        tk.mask(y, 0, 6, 16, tkc.MASK_COUNTS)


def test_mask_kind_for(tk):
    assert [tk.mask_kind_for(r) for r in (1, 2, 3, 4, 7)] == [tkc.MASK_BITS] * 2 + [tkc.MASK_COUNTS] * 3
    # counts are fewer bytes than r^2 bits from r = 3 on
    assert tk.mask_size((12, 12, 8), 3, tkc.MASK_COUNTS) < tk.mask_size((12, 12, 8), 3, tkc.MASK_BITS)
    assert tk.mask_size((12, 12, 8), 2, tkc.MASK_COUNTS) > tk.mask_size((12, 12, 8), 2, tkc.MASK_BITS)


# ---------------------------------------------------------------------------------------------
# gbar: G * density, db
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("r", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("kind", [tkc.MASK_NONE, tkc.MASK_BITS, tkc.MASK_COUNTS])
def test_gbar(tk, rng, r, kind):
    for shape in ((9, 7, 5), (4, 11, 3), (1, 1, 6)):
        y = rng.integers(-128, 128, size=shape).astype(np.int8)
        amin, amax = -30, 90
        passing = (y > amin) & (y < amax)
        ph, pw = tkc.grid(shape[:2], r)
        G = rand_grad(rng, (ph, pw, shape[2]))
        mask = tk.mask(y, amin, amax, r, kind) if kind != tkc.MASK_NONE else None
        dy = expand(G.astype(np.float64), shape[:2], r)
        if kind != tkc.MASK_NONE:
            dy = dy * passing
        want_gbar = rt.gc_patch_means(dy, r).reshape(ph, pw, shape[2])
        db0 = rng.standard_normal(shape[2]).astype(np.float32)
        for in_place in (False, True):
            gbar, db = tk.gbar(G, shape, r, kind, mask, db=db0, in_place=in_place)
            close("gbar", gbar, want_gbar)
            close("gbar_db", db - db0.astype(np.float64), dy.sum(axis=(0, 1)))
        gbar, db = tk.gbar(G, shape, r, kind, mask)
        assert db is None
        close("gbar", gbar, want_gbar)


# ---------------------------------------------------------------------------------------------
# conv-family backward, kernel by kernel against the oracle
# ---------------------------------------------------------------------------------------------

def run_layer_backward(tk, rng, L, r):
    """Feed random gradients through the C kernels of L at patch size r and compare each result
    with the oracle: dx (accumulated onto a random dx), dW of every output channel (selected
    input channels), and the chain mask -> gbar -> db."""
    kind, stride, pads = L["kind"], L["stride"], L["pads"]
    h, w, cin = L["in_shape"]
    oh, ow, cout = L["out_shape"]
    kh, kw = L["kh"], L["kw"]
    pad_tl = pads[:2]
    ch = L["channels"]
    ch_list = np.arange(cin) if ch is None else ch
    # the layer's int8 output -> clamp mask; a random gradient map G on the output's r-grid
    y = rng.integers(-128, 128, size=(oh, ow, cout)).astype(np.int8)
    amin, amax = int(rng.integers(-128, -60)), int(rng.integers(40, 128))
    mkind = tk.mask_kind_for(r)
    mask = tk.mask(y, amin, amax, r, mkind)
    ph, pw = tkc.grid((oh, ow), r)
    G = rand_grad(rng, (ph, pw, cout), zero_frac=0.1)
    dy = expand(G.astype(np.float64), (oh, ow), r) * ((y > amin) & (y < amax))
    db0 = np.zeros(cout, np.float32)
    gbar, db = tk.gbar(G, (oh, ow, cout), r, mkind, mask, db=db0)
    close("db", db, dy.sum(axis=(0, 1)))

    # oracle
    if r == 1:
        if kind == "conv":
            want_dx, want_dW, _ = rt.conv2d_backward(dy, L["x_real"], L["W"], stride, pads, ch)
        elif kind == "dwconv":
            want_dx, want_dW, _ = rt.depthwise_backward(dy, L["x_real"], L["W"], stride, pads, ch)
        else:
            want_dx, want_dW, _ = rt.pointwise_backward(dy, L["x_real"], L["W"], ch)
    else:
        xs_real = rt.gc_input_sums(L["x_real"], (oh, ow), stride, r, ch)
        want_dx, want_dW, _ = rt.gc_backward_from_saved(
            dy, xs_real, rt.gc_weight_sum(L["W"], kind), L["in_shape"], stride, r, (kh, kw), kind, ch)
    want_dx = to_grid(want_dx, r)

    # dx, accumulated onto a random map
    qh, qw = tkc.grid((h, w), r)
    dx0 = rng.standard_normal((qh, qw, cin)).astype(np.float32)
    if kind == "pwconv":
        got_dx = tk.pwconv_dx(gbar, L["in_shape"], L["Wq"], L["wscale"], r, dx=dx0)
    else:
        got_dx = tk.conv_dx(gbar, L["in_shape"], L["Wq"], L["wscale"], L["out_shape"], stride,
                            pad_tl, r, dx=dx0, kind=kind)
    tag = f"{kind}_{'exact' if r == 1 else 'gc'}"
    close(tag + "_dx", got_dx - dx0.astype(np.float64), want_dx)

    # dW, one output channel at a time, from what the forward saves
    fk = (kh, kw)
    if r == 1:
        saved = tk.save_channels(L["x"], ch)
        if kind == "dwconv":
            got = np.stack([tk.dwconv_dw(saved, L["in_shape"], j, L["zp"], L["s_x"], fk,
                                         L["out_shape"], gbar, int(c), stride, pad_tl)
                            for j, c in enumerate(ch_list)], axis=-1)
            close(tag + "_dW", got, want_dW)
        else:
            got = np.stack([tk.conv_dw(saved, L["in_shape"], L["zp"], L["s_x"], fk, L["out_shape"],
                                       gbar, o, stride, pad_tl) for o in range(cout)])
            close(tag + "_dW", got if kind == "conv" else got[:, 0, 0, :], want_dW)
    else:
        # the smallest type allowed (int16 for every r <= 4, s <= 2) or int32, both valid
        xs_dtype = tk.xs_type(r, stride) if rng.random() < 0.5 else np.int32
        xs = tk.gc_sums(L["x"], L["zp"], (oh, ow), stride, r, ch, xs_dtype)
        if kind == "dwconv":
            got = np.stack([tk.dwconv_dw_gc(gbar, L["out_shape"], int(c), xs, j, L["s_x"], fk,
                                            stride, r) for j, c in enumerate(ch_list)], axis=-1)
            close(tag + "_dW", got, want_dW)
        else:
            got = np.stack([tk.conv_dw_gc(gbar, L["out_shape"], o, xs, L["s_x"], fk, stride, r)
                            for o in range(cout)])
            close(tag + "_dW", got if kind == "conv" else got[:, 0, 0, :], want_dW)


@pytest.mark.parametrize("r", [1, 2, 3, 4])
@pytest.mark.parametrize("geom", GEOMS, ids=lambda g: f"{g[0]}-{g[1]}x{g[2]}x{g[3]}-k{g[5]}-s{g[6][0]}{g[6][1]}")
def test_layer_backward(tk, rng, geom, r):
    kind, h, w, cin, cout, k, stride = geom
    for nsel in (cin, max(1, cin // 2)):
        L = make_layer(rng, kind, h, w, cin, cout, k, stride, nsel=nsel)
        run_layer_backward(tk, rng, L, r)


def test_layer_backward_random(tk, rng):
    for _ in range(40):
        kind = ["conv", "dwconv", "pwconv"][int(rng.integers(0, 3))]
        k = int(rng.integers(1, 6))
        stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        cin = int(rng.integers(1, 8))
        L = make_layer(rng, kind, int(rng.integers(1, 14)), int(rng.integers(1, 14)), cin,
                       int(rng.integers(1, 8)), k, stride, nsel=int(rng.integers(1, cin + 1)))
        run_layer_backward(tk, rng, L, int(rng.integers(1, 5)))


@pytest.mark.parametrize("r", [1, 2, 3, 4])
def test_two_layer_chain(tk, rng, r):
    """conv (stride 2, clamp) -> dwconv (stride 1, clamp): the dwconv's dx on the r-grid of the
    shared tensor is the conv's G; compare the conv's dx and dW with the oracle run at full
    resolution through both layers (condensed formulas at r >= 2, exact at r = 1)."""
    A = make_layer(rng, "conv", 13, 11, 3, 5, 3, (2, 2), pads=(1, 0, 1, 1), nsel=2)
    ah, aw, ac = A["out_shape"]
    B = make_layer(rng, "dwconv", ah, aw, ac, ac, 3, (1, 1), pads=(1, 2, 1, 0))
    B["x"] = rng.integers(-128, 128, size=(ah, aw, ac)).astype(np.int8)      # A's int8 output
    yb = rng.integers(-128, 128, size=B["out_shape"]).astype(np.int8)
    lo, hi = -100, 100
    pa, pb = (B["x"] > lo) & (B["x"] < hi), (yb > lo) & (yb < hi)
    Gb = rand_grad(rng, tkc.grid(B["out_shape"][:2], r) + (ac,))
    kind = tk.mask_kind_for(r)
    # C: B's backward, then A's from B's dx
    gb, _ = tk.gbar(Gb, B["out_shape"], r, kind, tk.mask(yb, lo, hi, r, kind))
    Ga = tk.conv_dx(gb, B["in_shape"], B["Wq"], B["wscale"], B["out_shape"], B["stride"],
                    B["pads"][:2], r, kind="dwconv")
    ga, db = tk.gbar(Ga, A["out_shape"], r, kind, tk.mask(B["x"], lo, hi, r, kind), db=np.zeros(ac))
    dxa = tk.conv_dx(ga, A["in_shape"], A["Wq"], A["wscale"], A["out_shape"], A["stride"],
                     A["pads"][:2], r)
    # oracle at full resolution
    dyb = expand(Gb.astype(np.float64), B["out_shape"][:2], r) * pb
    xb_real = (B["x"].astype(np.float64) - B["zp"]) * float(B["s_x"])
    dxb = rt.depthwise_backward_condensed(dyb, xb_real, B["W"], B["stride"], B["pads"], r)[0]
    dya = dxb * pa
    want = rt.conv2d_backward_condensed(dya, A["x_real"], A["W"], A["stride"], A["pads"], r,
                                        A["channels"])
    close("chain_dx", dxa, to_grid(want[0], r))
    close("chain_db", db, want[2])
    if r == 1:
        saved = tk.save_channels(A["x"], A["channels"])
        got = np.stack([tk.conv_dw(saved, A["in_shape"], A["zp"], A["s_x"], (3, 3), A["out_shape"],
                                   ga, o, A["stride"], A["pads"][:2]) for o in range(ac)])
    else:
        xs = tk.gc_sums(A["x"], A["zp"], (ah, aw), A["stride"], r, A["channels"], np.int32)
        got = np.stack([tk.conv_dw_gc(ga, A["out_shape"], o, xs, A["s_x"], (3, 3), A["stride"], r)
                        for o in range(ac)])
    close("chain_dW", got, want[1])


def test_condensed_geometry_partial_and_empty_windows(tk, rng):
    """A 3x3 stride-2 conv without padding whose last output patch's input window is partial and
    where input rows beyond every window get no gradient; r = 3."""
    L = make_layer(rng, "conv", 12, 9, 3, 4, 3, (2, 2), pads=(0, 0, 0, 0))
    assert L["out_shape"][:2] == (5, 4)
    run_layer_backward(tk, rng, L, 3)
    # window rows of patch 1: [6, 12) -> input grid rows 2, 3 (both in the grid of 4 rows)
    gbar = np.ones((2, 2, 4), np.float32)
    dx = tk.conv_dx(gbar, L["in_shape"], L["Wq"], L["wscale"], L["out_shape"], (2, 2), (0, 0), 3)
    assert dx.shape == (4, 3, 3) and np.all(dx != 0)   # every input-grid cell is in a window
    L = make_layer(rng, "conv", 9, 9, 2, 2, 5, (1, 1), pads=(0, 0, 0, 0))   # out 5x5, r = 4
    gbar = np.ones((2, 2, 2), np.float32)
    dx = tk.conv_dx(gbar, L["in_shape"], L["Wq"], L["wscale"], L["out_shape"], (1, 1), (0, 0), 4)
    # windows cover input rows [0, 8): input grid rows 0, 1; row 2 (pixel 8) is in no window
    assert np.all(dx[2] == 0) and np.all(dx[:, 2] == 0) and np.any(dx[:2, :2] != 0)


def test_conv_dw_gc_bits_follow_the_documented_order(tk, rng):
    """tmp_conv_dw_gc_f32 bit for bit as numpy's float32 arithmetic computes the documented
    order (each operation rounded to float32): gs = gbar * (s_x / (sh*sw)), dw = gs[0] * x[0],
    then dw = dw + gs[p] * x[p] for p ascending. k around the M7's blocks of 16 and 8 and the C
    remainders, 1 to 12 patches, -0 and 0 gradients, int16 and int32 sums."""
    for k in (1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 24, 31, 32, 40, 51):
        for oh, ow, r, stride in ((4, 4, 4, (1, 1)), (8, 8, 4, (1, 1)), (5, 7, 2, (2, 1)),
                                  (6, 8, 2, (2, 2)), (3, 3, 1, (1, 1))):
            P = -(-oh // r) * -(-ow // r)
            cout = 3
            gbar = rand_grad(rng, (-(-oh // r), -(-ow // r), cout))
            gbar[0, 0, 0] = -0.0
            dt = np.int16 if rng.random() < 0.5 else np.int32
            xs = rng.integers(-4000, 4001, size=(P, k)).astype(dt)
            xf = tk.gc_sums_f32(xs)
            assert xf.dtype == np.float32 and np.array_equal(xf, xs.astype(np.float32))
            s_x = np.float32(rng.uniform(0.001, 0.1))
            sc = np.float32(s_x / (np.float32(stride[0]) * np.float32(stride[1])))
            for o in range(cout):
                gs = gbar.reshape(P, cout)[:, o] * sc
                want = gs[0] * xf[0]
                for p in range(1, P):
                    want = want + gs[p] * xf[p]
                got = tk.conv_dw_gc(gbar, (oh, ow, cout), o, xs, float(s_x), (3, 3), stride, r)
                assert got.dtype == np.float32
                for t in range(9):
                    assert np.array_equal(got.reshape(9, k)[t].view(np.uint32),
                                          want.view(np.uint32)), (k, oh, ow, r, o, t)


def test_conv_dw_gc_and_sums_f32_reject_bad_arguments(tk):
    xs = np.zeros((1, 4), np.int16)
    xf = np.zeros((1, 4), np.float32)
    lib = tk.lib
    assert lib.tmp_gc_sums_f32(3, tkc._ptr(xs), 4, tkc._ptr(xf)) != 0      # no such type
    assert lib.tmp_gc_sums_f32(2, tkc._ptr(xs), -1, tkc._ptr(xf)) != 0     # negative count
    assert lib.tmp_gc_sums_f32(2, None, 4, tkc._ptr(xf)) != 0
    with pytest.raises(tkc.KernelError):
        tk.conv_dw_gc(np.zeros((1, 1, 2), np.float32), (4, 4, 2), 2, xs, 0.1, (1, 1), r=4)  # o >= cout


def test_pwconv_formula_at_r1_equals_exact(tk, rng):
    """At r = 1 the condensed formula (xs sums of single pixels) is exact for a pointwise layer."""
    L = make_layer(rng, "pwconv", 6, 5, 7, 4, 1, (1, 1), nsel=3)
    gbar = rand_grad(rng, L["out_shape"])
    xs = tk.gc_sums(L["x"], L["zp"], (6, 5), (1, 1), 1, L["channels"], np.int16)
    saved = tk.save_channels(L["x"], L["channels"])
    for o in range(4):
        a = tk.conv_dw_gc(gbar, L["out_shape"], o, xs, L["s_x"], (1, 1), (1, 1), 1)
        b = tk.conv_dw(saved, L["in_shape"], L["zp"], L["s_x"], (1, 1), L["out_shape"], gbar, o)
        close("pw_gc_r1_vs_exact", a, b, 1e-5)


# ---------------------------------------------------------------------------------------------
# fc, avgpool, loss
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,o", [(1, 1), (16, 10), (37, 5)])
def test_fc(tk, rng, n, o):
    Wq = rng.integers(-127, 128, size=(o, n)).astype(np.int8)
    wscale = rng.uniform(0.002, 0.02, size=o).astype(np.float32)
    W = Wq.astype(np.float64) * wscale.astype(np.float64)[:, None]
    x = rng.integers(-128, 128, size=n).astype(np.int8)
    zp = int(rng.integers(-128, 128))
    s_x = np.float32(0.05)
    x_real = (x.astype(np.float64) - zp) * float(s_x)
    dy = rng.standard_normal(o).astype(np.float32)
    ch = None if n < 4 else np.sort(rng.choice(n, size=n // 3, replace=False))
    want_dx, want_dW, want_db = rt.fc_backward(dy, x_real, W, ch)
    dx0 = rng.standard_normal(n).astype(np.float32)
    close("fc_dx", tk.fc_dx(Wq, wscale, dy, dx=dx0) - dx0.astype(np.float64), want_dx)
    close("fc_dW", np.stack([tk.fc_dw(x, zp, s_x, float(dy[oo]), ch) for oo in range(o)]), want_dW)
    np.testing.assert_array_equal(want_db, dy)


@pytest.mark.parametrize("r", [1, 2, 3, 4])
def test_avgpool_dx(tk, rng, r):
    for shape in ((7, 5, 3), (1, 1, 4), (8, 8, 6)):
        dy = rng.standard_normal(shape[2]).astype(np.float32)
        want = to_grid(rt.avgpool_backward(dy, shape), r)
        ph, pw = tkc.grid(shape[:2], r)
        # the previous contents of dx (accumulation), at the scale of the result
        dx0 = (rng.standard_normal((ph, pw, shape[2])) / (shape[0] * shape[1])).astype(np.float32)
        close("avgpool_dx", tk.avgpool_dx(shape, r, dy, dx0) - dx0.astype(np.float64), want)


def test_softmax_xent(tk, rng):
    for n in (1, 2, 10, 100):
        for scale in (1.0, 30.0):
            z = (rng.standard_normal(n) * scale).astype(np.float32)
            label = int(rng.integers(0, n))
            want_loss, want_d = rt.softmax_cross_entropy(z.astype(np.float64), label)
            for in_place in (False, True):
                loss, d = tk.softmax_xent(z, label, in_place)
                assert abs(loss - want_loss) <= 1e-5 * max(1.0, abs(want_loss))
                # probabilities: their natural scale is 1 (the oracle's own p - 1 cancels to 0
                # when p ~ 1, where the kernel keeps -(sum of the others))
                close("softmax_dlogits", d, want_d, 1e-5, floor=1.0)
    # stable with huge logits
    loss, d = tk.softmax_xent(np.array([1000.0, -1000.0, 999.0], np.float32), 2)
    assert np.isfinite(loss) and abs(loss - np.log1p(np.e)) < 1e-5 and np.all(np.isfinite(d))
    # a confident right answer: dlogits tiny but exact in relative terms, not 0
    loss, d = tk.softmax_xent(np.array([40.0, 0.0], np.float32), 0)
    assert abs(d[1] - np.exp(-40.0)) < 1e-6 * np.exp(-40.0) and d[0] == -d[1] and loss >= 0
    # int8 logits
    q = rng.integers(-128, 128, size=12).astype(np.int8)
    zp, s = 5, np.float32(0.125)
    z = (q.astype(np.float32) - zp) * s
    want_loss, want_d = rt.softmax_cross_entropy(z.astype(np.float64), 3)
    loss, d = tk.softmax_xent_s8(q, zp, s, 3)
    assert abs(loss - want_loss) <= 1e-5 * max(1.0, abs(want_loss))
    close("softmax_dlogits", d, want_d, 1e-5, floor=1.0)
    with pytest.raises(tkc.KernelError):
        tk.softmax_xent(z, 12)


# ---------------------------------------------------------------------------------------------
# updates
# ---------------------------------------------------------------------------------------------

def xorshift32(x):
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    return x


def sr_model(w, t, state, lo, hi):
    """Python model of the stochastic rounding of tmp_sgd_*_stochastic (float32 steps t)."""
    out = []
    for wi, ti in zip(w, t):
        state = xorshift32(state)
        ti = np.float32(ti)
        if not np.isfinite(ti):  # a non-finite step moves nothing (the draw is still made)
            out.append(min(max(int(wi), lo), hi))
            continue
        fl = np.floor(ti)
        frac = np.float32(ti - fl)
        up = np.float32(state >> 8) < np.float32(frac * np.float32(16777216.0))
        out.append(min(max(int(wi) + int(fl) + int(up), lo), hi))
    return np.array(out), state


def sr8_model(w, g, lr, scale, state):
    """Python model of the int8 update's rounding (tmp_sgd_s8_stochastic, TRAINING.md section 2):
    the step in 2^-23 LSB, x = g * k with k = (-lr / scale) * 2^23 in float32, rounded to the
    nearest integer T (ties to even; 0 when x is not finite; saturated to int32); the weight moves
    by floor((T + v) / 2^23), the sum saturated to int32, v = the next xorshift32 state >> 9."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        k = np.float32(np.float32(-np.float32(lr) / np.float32(scale)) * np.float32(2.0 ** 23))
        out = []
        for wi, gi in zip(w, g):
            state = xorshift32(state)
            x = np.float32(np.float32(gi) * k)
            if not np.isfinite(x):
                big = 0
            elif x >= 2.0 ** 31:
                big = 2 ** 31 - 1
            elif x <= -2.0 ** 31:
                big = -2 ** 31
            else:
                big = int(np.rint(np.float64(x)))
            big = min(big + (state >> 9), 2 ** 31 - 1)
            out.append(min(max(int(wi) + (big >> 23), -127), 127))
    return np.array(out), state


def test_sgd_s8_stochastic_exact_model_and_determinism(tk, rng):
    n = 300
    w = rng.integers(-127, 128, size=n).astype(np.int8)
    g = (rng.standard_normal(n) * 3).astype(np.float32)
    lr, scale = np.float32(0.01), np.float32(0.004)
    seed = 0x12345678
    got, st, _ = tk.sgd_s8(w, g, lr, scale, seed)
    want, wst = sr8_model(w, g, lr, scale, seed)
    np.testing.assert_array_equal(got, want)
    assert st == wst
    again, st2, _ = tk.sgd_s8(w, g, lr, scale, seed)
    np.testing.assert_array_equal(again, got)
    assert st2 == st
    other, _, _ = tk.sgd_s8(w, g, lr, scale, seed + 1)
    assert np.any(other != got)
    # each result is floor or ceil of the real update, within the 2^-24 of the fixed point
    t = (-lr * g.astype(np.float64)) / scale
    real = w.astype(np.float64) + t
    ok = (got >= np.clip(np.floor(real - 2.0 ** -22), -127, 127)) & \
        (got <= np.clip(np.ceil(real + 2.0 ** -22), -127, 127))
    assert ok.all()
    with pytest.raises(tkc.KernelError):
        tk.sgd_s8(w, g, lr, scale, 0)


@pytest.mark.parametrize("geometry", ["index", "stride", "contiguous"])
def test_sgd_s8_stochastic_at_in_place(tk, rng, geometry):
    """The in-place variant gives, element for element, the rounding model's result for the
    elements it addresses (the same draws in the same order) and leaves every other byte alone;
    steps past the clamp and non-finite ones included."""
    n, size = 57, 600
    base = rng.integers(-127, 128, size=size).astype(np.int8)
    if geometry == "index":
        idx, stride = rng.choice(size, n, replace=False).astype(np.uint16), 0
        pos = idx.astype(np.int64)
    else:
        idx, stride = None, (7 if geometry == "stride" else 1)
        pos = np.arange(n) * stride + 3
    g = (rng.standard_normal(n) * 3).astype(np.float32)
    g[5], g[9], g[11], g[20] = np.inf, np.nan, 1e6, -1e6
    lr, scale = np.float32(0.01), np.float32(0.004)
    seed = 0x9E3779B9
    w0 = base if idx is not None else base[3:]
    sq0 = rng.uniform(0, 1, size=size).astype(np.float32)
    got, st, sq = tk.sgd_s8_at(w0, idx, stride, g, lr, scale, seed, sq=sq0)
    if idx is None:
        got = np.concatenate([base[:3], got])
    want_vals, wst = sr8_model(base[pos], g, lr, scale, seed)
    want = base.copy()
    want[pos] = want_vals
    np.testing.assert_array_equal(got, want)
    assert st == wst
    # the same as the row kernel on the gathered elements
    row, rst, _ = tk.sgd_s8(base[pos], g, lr, scale, seed)
    np.testing.assert_array_equal(got[pos], row)
    assert rst == st
    # the squared gradients: per element at its index, or one running sum in element order
    want_sq = sq0.copy()
    if idx is not None:
        for x, d in zip(idx, g):
            want_sq[x] = np.float32(want_sq[x] + np.float32(d * d))
    else:
        for d in g:
            want_sq[0] = np.float32(want_sq[0] + np.float32(d * d))
    np.testing.assert_array_equal(sq, want_sq)
    # without sums: the same weights
    plain, pst, _ = tk.sgd_s8_at(w0, idx, stride, g, lr, scale, seed)
    np.testing.assert_array_equal(plain, got if idx is not None else got[3:])
    assert pst == st
    with pytest.raises(tkc.KernelError):
        tk.sgd_s8_at(base, None, 0, g, lr, scale, seed)


def test_sgd_s8_rounding_edges_against_the_model(tk, rng):
    """The fixed point's edges, checked against sr8_model: with lr = scale = 1 the step is
    t = -g and t * 2^23 = x exactly; ties of x half-way between integers (to even), steps
    around +-255 / +-256 LSB where the int32 sums saturate, huge and non-finite steps, on
    weights at both ends; with momentum, the step uses v = 0.9 v + g."""
    two23 = 2.0 ** 23
    ts = [0.0, 0.5 / two23, 1.5 / two23, 2.5 / two23, -0.5 / two23, -1.5 / two23,
          1.0 - 0.5 / two23, -1.0 + 0.5 / two23, 3 + 0.5 / two23, -3 - 0.5 / two23,
          254.5, 254.999, 255.0, 255.5, 256.0, 256.5, 300.0, 511.0, 1e10, 3e38,
          -254.5, -254.999, -255.0, -255.5, -256.0, -256.5, -300.0, -1e10, -3e38,
          np.inf, -np.inf, np.nan]
    g = -np.array(ts, np.float32)
    for w0 in (-128, -127, -1, 0, 1, 126, 127):
        w = np.full(g.size, w0, np.int8)
        for seed in (1, 0xFFFFFFFF, int(rng.integers(1, 2 ** 32))):
            got, st, _ = tk.sgd_s8(w, g, 1.0, 1.0, seed)
            want, wst = sr8_model(w, g, 1.0, 1.0, seed)
            np.testing.assert_array_equal(got, want, err_msg="w %d seed %d" % (w0, seed))
            assert st == wst
    # the same against random scales and rates, gradients of every size
    for _ in range(20):
        n = 200
        w = rng.integers(-128, 128, size=n).astype(np.int8)
        g = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, size=n)).astype(np.float32)
        lr = np.float32(10.0 ** rng.uniform(-6, 0))
        scale = np.float32(10.0 ** rng.uniform(-7, -1))
        seed = int(rng.integers(1, 2 ** 32))
        got, st, _ = tk.sgd_s8(w, g, lr, scale, seed)
        want, wst = sr8_model(w, g, lr, scale, seed)
        np.testing.assert_array_equal(got, want)
        assert st == wst
        v = rng.standard_normal(n).astype(np.float32)
        got, st, v1 = tk.sgd_s8(w, g, lr, scale, seed, momentum=0.9, v=v.copy())
        vw = (np.float32(0.9) * v + g).astype(np.float32)
        want, wst = sr8_model(w, vw, lr, scale, seed)
        np.testing.assert_array_equal(v1, vw)
        np.testing.assert_array_equal(got, want)
        assert st == wst


def xorshift32_inverse(y):
    """The state whose xorshift32 step gives y (each of the three steps undone in turn)."""
    def undo_left(y, s):
        x = y
        for _ in range(32 // s + 1):
            x = y ^ ((x << s) & 0xFFFFFFFF)
        return x

    def undo_right(y, s):
        x = y
        for _ in range(32 // s + 1):
            x = y ^ (x >> s)
        return x
    return undo_left(undo_right(undo_left(y, 5), 17), 13)


def test_sgd_s8_rounding_decision_at_the_draw(tk, rng):
    """The rounding decision where it flips: the state is chosen so that the call's draw v
    (the next state >> 9) is one below, at and one above the point where T + v reaches the next
    multiple of 2^23, T being x rounded half to even (Python's round); x = t * 2^23 exact with
    lr = scale = 1. Checked against the rule written out here, not against sr8_model."""
    assert xorshift32(xorshift32_inverse(0x80000001)) == 0x80000001
    two23 = 2 ** 23
    for x in (0.5, 1.5, 2.5, -0.5, -1.5, 3.25, -3.75, 1234567.5, -1234566.5, 8388607.5,
              -8388607.5, 8388608.0 * 3 + 4, 2.0 ** 30 + 128, -(2.0 ** 30) - 384):
        big = round(x)  # half to even
        frac = big % two23
        flip = two23 - frac  # the smallest v that rounds up (2^23: never)
        for v in (flip - 1, flip, flip + 1):
            if not 0 <= v < two23:
                continue
            state = xorshift32_inverse((v << 9) | int(rng.integers(1, 512)))
            g = np.array([-x / two23], np.float32)
            assert float(g[0]) * -two23 == x
            for w0 in (-100, 0, 100):
                got, _, _ = tk.sgd_s8(np.array([w0], np.int8), g, 1.0, 1.0, state)
                want = min(max(w0 + (big + v) // two23, -127), 127)
                assert int(got[0]) == want, (x, v, w0)


@pytest.mark.parametrize("step", [0.01, 0.3, 0.5, -0.77, 2.25, -3.9])
def test_sgd_s8_stochastic_unbiased(tk, step):
    n = 40000
    w = np.zeros(n, np.int8)
    scale = np.float32(0.01)
    lr = np.float32(0.1)
    g = np.full(n, -step * float(scale) / float(lr), np.float32)
    t = float((-lr * g[0]) / scale)
    got, _, _ = tk.sgd_s8(w, g, lr, scale, 2463534242)
    frac = t - np.floor(t)
    sigma = np.sqrt(max(frac * (1 - frac), 1e-12) / n)
    assert abs(got.astype(np.float64).mean() - t) < 5 * sigma + 1e-6
    assert set(np.unique(got)) <= {int(np.floor(t)), int(np.floor(t)) + 1}


def test_sgd_s8_clamp_momentum_and_repeated_small_updates(tk, rng):
    # clamp to [-127, 127]
    w = np.array([127, -127, 120, -120], np.int8)
    g = np.array([-100, 100, -100, 100], np.float32)
    got, _, _ = tk.sgd_s8(w, g, 1.0, 1.0, 7)
    np.testing.assert_array_equal(got, [127, -127, 127, -127])
    # momentum: v <- mu v + g, step uses v
    v = rng.standard_normal(5).astype(np.float32)
    g = rng.standard_normal(5).astype(np.float32)
    _, _, v1 = tk.sgd_s8(np.zeros(5, np.int8), g, 0.1, 0.01, 99, momentum=0.9, v=v)
    np.testing.assert_array_equal(v1, np.float32(0.9) * v + g)
    # 1000 updates of 0.05 LSB each on one weight: about 50 LSB in total
    w = np.zeros(64, np.int8)
    state = 1
    for _ in range(1000):
        w, state, _ = tk.sgd_s8(w, np.full(64, -0.05, np.float32), 1.0, 1.0, state)
    assert abs(w.astype(np.float64).mean() - 50.0) < 5 * np.sqrt(1000 * 0.05 * 0.95 / 64) + 0.5


def test_sgd_s32_stochastic(tk, rng):
    n = 200
    b = rng.integers(-10**6, 10**6, size=n).astype(np.int32)
    g = rng.standard_normal(n).astype(np.float32)
    wscale = rng.uniform(0.002, 0.02, size=n).astype(np.float32)
    lr, s_x = np.float32(0.05), np.float32(0.03)
    t = (-lr * g) / (s_x * wscale)
    got, st, _ = tk.sgd_s32(b, g, lr, s_x, wscale, 42)
    want, wst = sr_model(b, t, 42, -2**31, 2**31 - 1)
    np.testing.assert_array_equal(got, want)
    assert st == wst
    # saturation
    b = np.array([2**31 - 10, -2**31 + 10], np.int32)
    got, _, _ = tk.sgd_s32(b, np.array([-1e9, 1e9], np.float32), 1.0, 1.0, np.ones(2, np.float32), 3)
    np.testing.assert_array_equal(got, [2**31 - 1, -2**31])
    # steps beyond the int32 range (the kernel's 64-bit path) that the sum brings back in range,
    # and steps past its +-2^32 clamp
    b = np.array([-2**31 + 5, 2**31 - 7, 0, -2**31 + 1], np.int32)
    g = np.array([-3e9, 3e9, -1e12, 2.5e9 + 0.5], np.float32)
    got, st, _ = tk.sgd_s32(b, g, 1.0, 1.0, np.ones(4, np.float32), 11)
    t = np.clip(-g, -2.0**32, 2.0**32)
    want, wst = sr_model(b, t, 11, -2**31, 2**31 - 1)
    np.testing.assert_array_equal(got, want)
    assert got[0] == -2**31 + 5 + 3 * 10**9 and got[1] == 2**31 - 7 - 3 * 10**9
    assert st == wst
    # unbiased
    n = 40000
    got, _, _ = tk.sgd_s32(np.zeros(n, np.int32), np.full(n, -0.37, np.float32), 1.0, 1.0,
                           np.ones(n, np.float32), 5)
    assert abs(got.mean() - 0.37) < 5 * np.sqrt(0.37 * 0.63 / n)


def test_sgd_f32_and_requant(tk, rng):
    w = rng.standard_normal(50).astype(np.float32)
    g = rng.standard_normal(50).astype(np.float32)
    lr = np.float32(0.1)
    got, _ = tk.sgd_f32(w, g, lr)
    np.testing.assert_allclose(got, w - lr * g, rtol=1e-6, atol=1e-7)
    v = rng.standard_normal(50).astype(np.float32)
    got, v1 = tk.sgd_f32(w, g, lr, 0.9, v)
    vv = np.float32(0.9) * v + g
    np.testing.assert_allclose(v1, vv, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, w - lr * vv, rtol=1e-6, atol=1e-7)

    def round_away(t):
        t = t.astype(np.float64)
        return np.trunc(t + np.copysign(0.5, t))

    scale = np.float32(0.5)
    w = np.concatenate([rng.standard_normal(100).astype(np.float32) * 40,
                        np.array([1.25, -1.25, 0.75, -0.75, 0.2, 100.0, -100.0, np.nan], np.float32)])
    want = np.clip(np.nan_to_num(round_away(w / scale)), -127, 127)
    np.testing.assert_array_equal(tk.requant_s8(w, scale), want)
    assert list(tk.requant_s8(np.array([1.25, -1.25], np.float32), scale)) == [3, -3]
    bias = (rng.standard_normal(20) * 3).astype(np.float32)
    wscale = rng.uniform(0.002, 0.02, size=20).astype(np.float32)
    s_x = np.float32(0.05)
    want = round_away(bias / (s_x * wscale))
    np.testing.assert_array_equal(tk.requant_s32(bias, s_x, wscale), want)
    big = tk.requant_s32(np.array([1e30, -1e30], np.float32), 1.0, np.ones(2, np.float32))
    np.testing.assert_array_equal(big, [2**31 - 1, -2**31])


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------

def test_rejects_bad_arguments(tk, rng):
    L = make_layer(rng, "conv", 8, 8, 3, 4, 3, (1, 1), pads=(1, 1, 1, 1))
    gbar = np.zeros((8, 8, 4), np.float32)
    saved = tk.save_channels(L["x"])

    def status(fn, *a, **k):
        with pytest.raises(tkc.KernelError) as e:
            fn(*a, **k)
        return e.value.status

    # exact dW needs r == 1
    assert status(tk.conv_dw, saved, L["in_shape"], 0, 0.1, (3, 3), L["out_shape"], gbar, 0,
                  r=2) == tkc.TMP_ERR_ARG
    # output channel out of range
    assert status(tk.conv_dw, saved, L["in_shape"], 0, 0.1, (3, 3), L["out_shape"], gbar, 4) \
        == tkc.TMP_ERR_ARG
    # output dims inconsistent with the geometry
    assert status(tk.conv_dx, gbar, L["in_shape"], L["Wq"], L["wscale"], (9, 8, 4)) == tkc.TMP_ERR_ARG
    # padding >= kernel
    assert status(tk.conv_dx, gbar, L["in_shape"], L["Wq"], L["wscale"], L["out_shape"],
                  pad_tl=(3, 1)) == tkc.TMP_ERR_ARG
    # counts mask beyond r = 15
    assert status(tk.gbar, np.zeros((1, 1, 4), np.float32), (8, 8, 4), 16, tkc.MASK_COUNTS,
                  np.zeros(4, np.uint8)) == tkc.TMP_ERR_ARG
    # int16 sums where they could overflow
    assert status(tk.gc_sums, L["x"], 0, (8, 8), (3, 3), 4, None, np.int16) == tkc.TMP_ERR_ARG
    # channel index out of range
    assert status(tk.gc_sums, L["x"], 0, (8, 8), (1, 1), 2, [3], np.int32) == tkc.TMP_ERR_ARG
    assert status(tk.softmax_xent, np.zeros(3, np.float32), -1) == tkc.TMP_ERR_ARG


# ---------------------------------------------------------------------------------------------
# the same tests under AddressSanitizer + UBSan
# ---------------------------------------------------------------------------------------------

def _libasan():
    r = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = r.stdout.strip()
    return path if r.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.skipif(SANITIZED, reason="already the sanitized run")
@pytest.mark.skipif(_libasan() is None, reason="gcc's libasan not available")
def test_under_sanitizers(tmp_path):
    env = dict(os.environ, TINYMP_TRAIN_SANITIZE="1", LD_PRELOAD=_libasan(),
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-x", "-p", "no:cacheprovider",
                        os.path.abspath(__file__)],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


def test_sgd_s8_every_stepped_weight_ends_in_range(tk):
    """-128 is a valid int8 weight in a model file, but no stepped weight stays there: a zero
    step, a non-finite one (which moves nothing) and a negative one all end at -127."""
    w = np.array([-128, -128, -128, -128, -128], np.int8)
    g = np.array([0.0, np.nan, np.inf, -np.inf, 1.0], np.float32)
    got, st, _ = tk.sgd_s8(w, g, 0.01, 0.004, 99)
    np.testing.assert_array_equal(got, [-127] * 5)
    want, wst = sr8_model(w, g, 0.01, 0.004, 99)
    np.testing.assert_array_equal(got, want)
    assert st == wst
