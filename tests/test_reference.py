"""Tests of host/tinymp/reference.py, the independent numpy oracle of the tinymp engine.

Every check compares the vectorised numpy reference with a second formulation written
separately in this file from docs/KERNELS.md and docs/FORMAT.md: slow pure-Python big-int
requantisation, per-output-element loops for the kernels, hand-computed cases, and a small
.tmpm writer.  The C extension ``tinymp._tinymp`` is never imported: the module under test is
loaded by file path, so this file works whether or not ``host/tinymp/__init__.py`` exists.

Run from the repository root:  PYTHONPATH=host python3 -m pytest tests/test_reference.py -q
"""

import importlib.util
import math
import struct
import sys
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

_PATH = Path(__file__).resolve().parents[1] / "host" / "tinymp" / "reference.py"
_spec = importlib.util.spec_from_file_location("_tinymp_reference_under_test", _PATH)
ref = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ref          # dataclasses look the module up while it executes
_spec.loader.exec_module(ref)

I32_MIN = -(2 ** 31)
I32_MAX = 2 ** 31 - 1
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# =============================================================================================
# Pure-Python big-int requantisation, transcribed from KERNELS.md
# =============================================================================================

def py_sat32(v):
    return min(max(v, I32_MIN), I32_MAX)


def py_srdhm(a, b):
    if a == b == I32_MIN:
        return I32_MAX
    p = a * b
    nudge = 2 ** 30 if p >= 0 else 1 - 2 ** 30
    n = p + nudge
    q = abs(n) // 2 ** 31                       # C division truncates toward zero
    return q if n >= 0 else -q


def py_rdpot(x, e):
    assert 0 < e <= 31
    mask = 2 ** e - 1
    rem = x & mask                              # Python ints: infinite two's complement
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > threshold else 0)


def py_requant(x, M, s):
    assert I32_MIN <= x <= I32_MAX and 0 <= M <= I32_MAX and -31 <= s <= 30
    if s > 0:
        x = py_sat32(x * 2 ** s)
    t = py_srdhm(x, M)
    if s < 0:
        t = py_rdpot(t, -s)
    return t


# Mathematical characterisations (a third formulation, used to check the transcription):
# srdhm(a, b) = a*b / 2^31 rounded to nearest, ties toward +infinity;
# rdpot(x, e) = x / 2^e rounded to nearest, ties away from zero.
def math_srdhm(a, b):
    return math.floor(Fraction(a * b, 2 ** 31) + Fraction(1, 2))


def math_rdpot(x, e):
    f = Fraction(x, 2 ** e)
    r = math.floor(abs(f) + Fraction(1, 2))
    return r if f >= 0 else -r


EDGE_X = [I32_MIN, I32_MIN + 1, -(2 ** 30) - 1, -(2 ** 30), -3 * 2 ** 20, -65537, -255, -3, -2,
          -1, 0, 1, 2, 3, 255, 65535, 2 ** 30, 2 ** 30 + 1, I32_MAX - 1, I32_MAX]
EDGE_M = [0, 1, 2, 3, 2 ** 29, 2 ** 30 - 1, 2 ** 30, 2 ** 30 + 1, 1518500250, I32_MAX - 1, I32_MAX]
EDGE_S = [-31, -30, -17, -2, -1, 0, 1, 2, 15, 29, 30]

int32s = st.one_of(st.sampled_from(EDGE_X), st.integers(I32_MIN, I32_MAX),
                   st.integers(-70000, 70000))
mults = st.one_of(st.sampled_from(EDGE_M), st.integers(0, I32_MAX))
shifts = st.integers(-31, 30)


# =============================================================================================
# Requantisation
# =============================================================================================

def test_srdhm_rdpot_hand_values():
    h = 2 ** 30                                 # M = 2^30 means "times 0.5"
    assert int(ref.srdhm(3, h)) == 2            # 1.5  -> 2
    assert int(ref.srdhm(-3, h)) == -1          # -1.5 -> -1 (gemmlowp ties go toward +inf)
    assert int(ref.srdhm(-1, h)) == 0           # -0.5 -> 0
    assert int(ref.srdhm(1, h)) == 1            # 0.5  -> 1
    assert int(ref.srdhm(-5, h)) == -2          # -2.5 -> -2
    assert int(ref.srdhm(I32_MIN, I32_MIN)) == I32_MAX
    assert int(ref.srdhm(I32_MIN, I32_MAX)) == -I32_MAX
    assert int(ref.rdpot(3, 1)) == 2            # 1.5  -> 2 (away from zero)
    assert int(ref.rdpot(-3, 1)) == -2          # -1.5 -> -2
    assert int(ref.rdpot(-5, 2)) == -1          # -1.25
    assert int(ref.rdpot(-6, 2)) == -2          # -1.5
    assert int(ref.rdpot(-2, 2)) == -1          # -0.5
    assert int(ref.rdpot(I32_MIN, 31)) == -1
    assert int(ref.rdpot(I32_MAX, 31)) == 1
    assert int(ref.requant(I32_MIN, 0, 0)) == 0
    assert int(ref.requant(I32_MAX, I32_MAX, 30)) == py_srdhm(I32_MAX, I32_MAX)   # saturated
    assert int(ref.requant(I32_MIN, I32_MAX, 5)) == py_srdhm(I32_MIN, I32_MAX)
    assert int(ref.requant(-15, h, 0)) == -7    # -7.5 -> -7
    assert int(ref.requant(-15, h, -1)) == -4   # srdhm -> -7, rdpot(-7, 1) = -3.5 -> -4


@SETTINGS
@given(int32s, int32s)
def test_srdhm_matches_bigint_and_math(a, b):
    expect = py_srdhm(a, b)
    assert int(ref.srdhm(a, b)) == expect
    if not a == b == I32_MIN:
        assert expect == math_srdhm(a, b)


@SETTINGS
@given(int32s, st.integers(1, 31))
def test_rdpot_matches_bigint_and_math(x, e):
    expect = py_rdpot(x, e)
    assert int(ref.rdpot(x, e)) == expect == math_rdpot(x, e)


@SETTINGS
@given(int32s, mults, shifts)
def test_requant_scalar(x, M, s):
    assert int(ref.requant(x, M, s)) == py_requant(x, M, s)


def test_requant_vectorised_random_and_edges():
    rng = np.random.default_rng(1234)
    n = 20000
    x = rng.integers(I32_MIN, I32_MAX, n, endpoint=True)
    x[: n // 4] = rng.integers(-100000, 100000, n // 4)
    M = rng.integers(0, I32_MAX, n, endpoint=True)
    s = rng.integers(-31, 30, n, endpoint=True)
    # sprinkle edge values in all three
    for arr, edges in ((x, EDGE_X), (M, EDGE_M), (s, EDGE_S)):
        idx = rng.integers(0, n, n // 5)
        arr[idx] = rng.choice(edges, idx.size)
    got = ref.requant(x, M, s)
    assert got.dtype == np.int64 and got.shape == (n,)
    expect = [py_requant(int(a), int(b), int(c)) for a, b, c in zip(x, M, s)]
    assert got.tolist() == expect
    # every combination of edge values
    gx, gM, gs = np.meshgrid(EDGE_X, EDGE_M, EDGE_S, indexing="ij")
    got = ref.requant(gx, gM, gs)
    for idx in np.ndindex(gx.shape):
        assert int(got[idx]) == py_requant(int(gx[idx]), int(gM[idx]), int(gs[idx])), idx


def test_requant_broadcasts_per_channel_and_accepts_int32_arrays():
    acc = np.arange(-600, 600, 7, dtype=np.int32)[:171].reshape(-1, 3)
    M = np.array([2 ** 30, 1518500250, I32_MAX], dtype=np.int32)
    s = np.array([0, -3, 2], dtype=np.int32)
    got = ref.requant(acc, M, s)
    for (r, c), v in np.ndenumerate(acc):
        assert int(got[r, c]) == py_requant(int(v), int(M[c]), int(s[c]))


def test_requant_rejects_out_of_range_arguments():
    with pytest.raises(AssertionError):
        ref.requant(2 ** 31, 1, 0)
    with pytest.raises(ValueError):
        ref.requant(1, -1, 0)
    with pytest.raises(ValueError):
        ref.requant(1, 1, 31)
    with pytest.raises(ValueError):
        ref.requant(1, 1, -32)


# =============================================================================================
# quantize_multiplier
# =============================================================================================

def test_quantize_multiplier_known_values():
    assert ref.quantize_multiplier(0.0) == (0, 0)
    assert ref.quantize_multiplier(0.5) == (2 ** 30, 0)
    assert ref.quantize_multiplier(1.0) == (2 ** 30, 1)
    assert ref.quantize_multiplier(0.25) == (2 ** 30, -1)
    assert ref.quantize_multiplier(0.75) == (3 * 2 ** 29, 0)
    # q*2^31 = 2^30 + 0.5 exactly: half away from zero gives 2^30 + 1 (half-even would not)
    assert ref.quantize_multiplier(0.5 + 2.0 ** -32) == (2 ** 30 + 1, 0)
    # q*2^31 = 2^31 - 0.25 rounds to 2^31: renormalised to M = 2^30, e + 1
    assert ref.quantize_multiplier(1.0 - 2.0 ** -33) == (2 ** 30, 1)
    # smallest and below-smallest encodable shifts
    assert ref.quantize_multiplier(2.0 ** -32) == (2 ** 30, -31)
    assert ref.quantize_multiplier(2.0 ** -33) == (0, 0)
    assert ref.quantize_multiplier(1e-30) == (0, 0)
    assert ref.quantize_multiplier(2.0 ** 29) == (2 ** 30, 30)
    with pytest.raises(ValueError):
        ref.quantize_multiplier(2.0 ** 30)      # shift 31 is outside the format
    with pytest.raises(ValueError):
        ref.quantize_multiplier(-0.5)
    with pytest.raises(ValueError):
        ref.quantize_multiplier(float("nan"))


@SETTINGS
@given(st.one_of(st.floats(min_value=2.0 ** -32, max_value=2.0 ** 29.9),
                 st.floats(min_value=1e-6, max_value=2.0)))
def test_quantize_multiplier_round_trip(m):
    M, s = ref.quantize_multiplier(m)
    assert 2 ** 30 <= M <= I32_MAX and -31 <= s <= 30
    approx = Fraction(M) * Fraction(2) ** (s - 31)
    assert abs(approx - Fraction(m)) <= Fraction(m) * Fraction(1, 2 ** 31)
    # and requant then multiplies by about m
    x = 12345
    if abs(x * m) < 2 ** 30:
        assert abs(int(ref.requant(x, M, s)) - x * m) <= 1 + abs(x * m) * 2.0 ** -30


# =============================================================================================
# Kernel loop references (per output element, straight from KERNELS.md)
# =============================================================================================

def out_stage(acc, M, s, zp_out, lo, hi):
    return min(max(py_sat32(py_requant(acc, M, s) + zp_out), lo), hi)


def loop_conv(x, w, bias, mult, shift, zp_in, zp_out, stride, pad, act):
    H, W, Cin = x.shape
    Cout, kh, kw, _ = w.shape
    sh, sw = stride
    pt, pl, pb, pr = pad
    oh = (H + pt + pb - kh) // sh + 1
    ow = (W + pl + pr - kw) // sw + 1
    out = np.zeros((oh, ow, Cout), dtype=np.int8)
    for y in range(oh):
        for xx in range(ow):
            for o in range(Cout):
                acc = int(bias[o])
                for u in range(kh):
                    for v in range(kw):
                        iy = y * sh - pt + u
                        ix = xx * sw - pl + v
                        if 0 <= iy < H and 0 <= ix < W:
                            for i in range(Cin):
                                acc += (int(x[iy, ix, i]) - zp_in) * int(w[o, u, v, i])
                assert I32_MIN <= acc <= I32_MAX
                out[y, xx, o] = out_stage(acc, int(mult[o]), int(shift[o]), zp_out, *act)
    return out


def loop_dwconv(x, w, bias, mult, shift, zp_in, zp_out, stride, pad, act):
    H, W, C = x.shape
    kh, kw, _ = w.shape
    sh, sw = stride
    pt, pl, pb, pr = pad
    oh = (H + pt + pb - kh) // sh + 1
    ow = (W + pl + pr - kw) // sw + 1
    out = np.zeros((oh, ow, C), dtype=np.int8)
    for y in range(oh):
        for xx in range(ow):
            for o in range(C):
                acc = int(bias[o])
                for u in range(kh):
                    for v in range(kw):
                        iy = y * sh - pt + u
                        ix = xx * sw - pl + v
                        if 0 <= iy < H and 0 <= ix < W:
                            acc += (int(x[iy, ix, o]) - zp_in) * int(w[u, v, o])
                out[y, xx, o] = out_stage(acc, int(mult[o]), int(shift[o]), zp_out, *act)
    return out


def loop_pwconv(x, w, bias, mult, shift, zp_in, zp_out, act):
    H, W, Cin = x.shape
    Cout = w.shape[0]
    out = np.zeros((H, W, Cout), dtype=np.int8)
    for y in range(H):
        for xx in range(W):
            for o in range(Cout):
                acc = int(bias[o]) + sum((int(x[y, xx, i]) - zp_in) * int(w[o, i])
                                         for i in range(Cin))
                out[y, xx, o] = out_stage(acc, int(mult[o]), int(shift[o]), zp_out, *act)
    return out


def loop_fc(x, w, bias, mult, shift, zp_in, zp_out, act):
    vec = [int(v) for v in x.flatten(order="C")]
    O = w.shape[0]
    out = np.zeros((1, 1, O), dtype=np.int8)
    for o in range(O):
        acc = int(bias[o]) + sum((v - zp_in) * int(w[o, i]) for i, v in enumerate(vec))
        out[0, 0, o] = out_stage(acc, int(mult[o]), int(shift[o]), zp_out, *act)
    return out


def loop_add(x0, x1, params, zp0, zp1, zp_out, act):
    M0, s0, M1, s1, Mo, so = (int(p) for p in params)
    out = np.zeros(x0.shape, dtype=np.int8)
    for idx in np.ndindex(x0.shape):
        a = py_requant((int(x0[idx]) - zp0) * 2 ** 20, M0, s0)
        b = py_requant((int(x1[idx]) - zp1) * 2 ** 20, M1, s1)
        r = py_sat32(py_requant(py_sat32(a + b), Mo, so) + zp_out)
        out[idx] = min(max(r, act[0]), act[1])
    return out


def loop_avgpool(x, M, s, zp_in, zp_out, act):
    H, W, C = x.shape
    out = np.zeros((1, 1, C), dtype=np.int8)
    for c in range(C):
        acc = sum(int(x[y, xx, c]) - zp_in for y in range(H) for xx in range(W))
        out[0, 0, c] = out_stage(acc, M, s, zp_out, *act)
    return out


# ---------------------------------------------------------------------------------------------
# random operands
# ---------------------------------------------------------------------------------------------

def rand_int8(rng, shape, extreme):
    if extreme:
        return rng.choice(np.array([-128, 127, -127, 0], dtype=np.int8), size=shape)
    return rng.integers(-128, 127, size=shape, endpoint=True).astype(np.int8)


def rand_requant(rng, n, L):
    """Per-channel (M, s): mostly scaled so that outputs land in int8, some arbitrary."""
    typical = int(max(1, round(math.log2(math.sqrt(L) * 128 * 100))))
    M = rng.integers(2 ** 30, I32_MAX, n, endpoint=True)
    s = rng.integers(-min(31, typical + 4), -max(0, typical - 9), n, endpoint=True)
    wild = rng.random(n) < 0.2
    M[wild] = rng.integers(0, I32_MAX, int(wild.sum()), endpoint=True)
    s[wild] = rng.integers(-31, 30, int(wild.sum()), endpoint=True)
    M[rng.random(n) < 0.05] = 0
    return M.astype(np.int32), s.astype(np.int32)


def rand_bias(rng, n, L):
    bound = I32_MAX - 32640 * L
    b = rng.integers(-40000, 40000, n, endpoint=True)
    big = rng.random(n) < 0.15
    b[big] = rng.choice([-bound, bound, -bound // 3, bound // 2], int(big.sum()))
    return b.astype(np.int32)


def rand_act(rng, zp_out):
    r = rng.random()
    if r < 0.4:
        return (-128, 127)
    if r < 0.6:
        return (zp_out, 127)                    # ReLU
    lo, hi = sorted(int(v) for v in rng.integers(-128, 127, 2, endpoint=True))
    return (lo, hi)


def rand_zp(rng, extreme):
    return int(rng.choice([-128, 127])) if extreme else int(rng.integers(-128, 127, endpoint=True))


@st.composite
def conv_geometry(draw, max_k=3, max_stride=3, max_hw=6):
    kh = draw(st.integers(1, max_k))
    kw = draw(st.integers(1, max_k))
    sh = draw(st.integers(1, max_stride))
    sw = draw(st.integers(1, max_stride))
    pt, pb = draw(st.integers(0, kh - 1)), draw(st.integers(0, kh - 1))
    pl, pr = draw(st.integers(0, kw - 1)), draw(st.integers(0, kw - 1))
    H = draw(st.integers(max(1, kh - pt - pb), max_hw))
    W = draw(st.integers(max(1, kw - pl - pr), max_hw))
    return dict(kh=kh, kw=kw, stride=(sh, sw), pad=(pt, pl, pb, pr), H=H, W=W)


seeds = st.integers(0, 2 ** 32 - 1)


def conv_operands(seed, g, cin, cout, extreme, depthwise=False):
    rng = np.random.default_rng(seed)
    x = rand_int8(rng, (g["H"], g["W"], cin), extreme)
    if depthwise:
        w = rand_int8(rng, (g["kh"], g["kw"], cin), extreme)
        L = g["kh"] * g["kw"]
    else:
        w = rand_int8(rng, (cout, g["kh"], g["kw"], cin), extreme)
        L = g["kh"] * g["kw"] * cin
    n = cin if depthwise else cout
    bias = rand_bias(rng, n, L)
    mult, shift = rand_requant(rng, n, L)
    zp_in, zp_out = rand_zp(rng, extreme), rand_zp(rng, False)
    return x, w, bias, mult, shift, zp_in, zp_out, rand_act(rng, zp_out)


# ---------------------------------------------------------------------------------------------
# kernel tests
# ---------------------------------------------------------------------------------------------

@SETTINGS
@given(conv_geometry(), st.integers(1, 3), st.integers(1, 4), st.booleans(), seeds)
def test_conv_matches_loop(g, cin, cout, extreme, seed):
    x, w, bias, mult, shift, zi, zo, act = conv_operands(seed, g, cin, cout, extreme)
    got = ref.conv(x, w, bias, mult, shift, zi, zo, stride=g["stride"], pad=g["pad"], act=act)
    expect = loop_conv(x, w, bias, mult, shift, zi, zo, g["stride"], g["pad"], act)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, expect)


@SETTINGS
@given(conv_geometry(), st.integers(1, 4), st.booleans(), seeds)
def test_dwconv_matches_loop(g, c, extreme, seed):
    x, w, bias, mult, shift, zi, zo, act = conv_operands(seed, g, c, c, extreme, depthwise=True)
    got = ref.dwconv(x, w, bias, mult, shift, zi, zo, stride=g["stride"], pad=g["pad"], act=act)
    expect = loop_dwconv(x, w, bias, mult, shift, zi, zo, g["stride"], g["pad"], act)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, expect)


# Explicit geometries that must be covered whatever hypothesis draws:
# (H, W, kh, kw, stride, pad=(t, l, b, r))
FIXED_GEOMETRIES = [
    (5, 5, 3, 3, (2, 2), (1, 1, 1, 1)),       # "same"-ish, stride 2
    (6, 6, 3, 3, (2, 2), (0, 0, 1, 1)),       # TF "SAME" stride 2 on even input: pad bottom/right
    (4, 7, 3, 2, (1, 2), (2, 0, 0, 1)),       # asymmetric everything
    (7, 5, 5, 5, (3, 1), (4, 2, 1, 3)),       # big pads, mixed strides
    (1, 1, 3, 3, (1, 1), (1, 1, 1, 1)),       # 1x1 input, all taps but centre are padding
    (3, 3, 1, 1, (2, 2), (0, 0, 0, 0)),       # 1x1 kernel, stride 2
    (2, 9, 2, 4, (4, 4), (1, 3, 0, 0)),       # stride 4
]


@pytest.mark.parametrize("geom", FIXED_GEOMETRIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_and_dwconv_fixed_geometries(geom, seed):
    H, W, kh, kw, stride, pad = geom
    g = dict(H=H, W=W, kh=kh, kw=kw, stride=stride, pad=pad)
    x, w, bias, mult, shift, zi, zo, act = conv_operands(seed, g, 3, 2, seed == 2)
    np.testing.assert_array_equal(
        ref.conv(x, w, bias, mult, shift, zi, zo, stride, pad, act),
        loop_conv(x, w, bias, mult, shift, zi, zo, stride, pad, act))
    x, w, bias, mult, shift, zi, zo, act = conv_operands(seed, g, 3, 3, seed == 2, True)
    np.testing.assert_array_equal(
        ref.dwconv(x, w, bias, mult, shift, zi, zo, stride, pad, act),
        loop_dwconv(x, w, bias, mult, shift, zi, zo, stride, pad, act))


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.integers(1, 4),
       st.booleans(), seeds)
def test_pwconv_matches_loop(H, W, cin, cout, extreme, seed):
    rng = np.random.default_rng(seed)
    x = rand_int8(rng, (H, W, cin), extreme)
    w = rand_int8(rng, (cout, cin), extreme)
    bias = rand_bias(rng, cout, cin)
    mult, shift = rand_requant(rng, cout, cin)
    zi, zo = rand_zp(rng, extreme), rand_zp(rng, False)
    act = rand_act(rng, zo)
    got = ref.pwconv(x, w, bias, mult, shift, zi, zo, act)
    np.testing.assert_array_equal(got, loop_pwconv(x, w, bias, mult, shift, zi, zo, act))
    # pwconv is conv with a 1x1 kernel
    np.testing.assert_array_equal(
        got, ref.conv(x, w.reshape(cout, 1, 1, cin), bias, mult, shift, zi, zo, act=act))


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 5),
       st.booleans(), seeds)
def test_fc_matches_loop(H, W, C, O, extreme, seed):
    rng = np.random.default_rng(seed)
    x = rand_int8(rng, (H, W, C), extreme)
    n = H * W * C
    w = rand_int8(rng, (O, n), extreme)
    bias = rand_bias(rng, O, n)
    mult, shift = rand_requant(rng, O, n)
    zi, zo = rand_zp(rng, extreme), rand_zp(rng, False)
    act = rand_act(rng, zo)
    got = ref.fc(x, w, bias, mult, shift, zi, zo, act)
    assert got.shape == (1, 1, O) and got.dtype == np.int8
    np.testing.assert_array_equal(got, loop_fc(x, w, bias, mult, shift, zi, zo, act))
    # flat input gives the same
    np.testing.assert_array_equal(got, ref.fc(x.reshape(-1), w, bias, mult, shift, zi, zo, act))


def add_params(rng, wild):
    if wild:
        p = []
        for _ in range(3):
            p += [int(rng.integers(0, I32_MAX, endpoint=True)), int(rng.integers(-31, 30,
                                                                                  endpoint=True))]
        return p
    s0, s1, so = (float(v) for v in rng.uniform(0.005, 0.2, 3))
    twice_max = 2 * max(s0, s1)
    p = []
    for m in (s0 / twice_max, s1 / twice_max, twice_max / (2 ** 20 * so)):
        p += list(ref.quantize_multiplier(m))
    return p


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.booleans(), st.booleans(),
       seeds)
def test_add_matches_loop(H, W, C, extreme, wild, seed):
    rng = np.random.default_rng(seed)
    x0 = rand_int8(rng, (H, W, C), extreme)
    x1 = rand_int8(rng, (H, W, C), extreme)
    params = add_params(rng, wild)
    z0, z1, zo = rand_zp(rng, extreme), rand_zp(rng, extreme), rand_zp(rng, False)
    act = rand_act(rng, zo)
    got = ref.add(x0, x1, params, z0, z1, zo, act)
    assert got.shape == (H, W, C) and got.dtype == np.int8
    np.testing.assert_array_equal(got, loop_add(x0, x1, params, z0, z1, zo, act))


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 4), st.booleans(), st.booleans(),
       seeds)
def test_avgpool_matches_loop(H, W, C, extreme, wild, seed):
    rng = np.random.default_rng(seed)
    x = rand_int8(rng, (H, W, C), extreme)
    zi, zo = rand_zp(rng, extreme), rand_zp(rng, False)
    if wild:
        M, s = int(rng.integers(0, I32_MAX, endpoint=True)), int(rng.integers(-31, 30,
                                                                             endpoint=True))
    else:
        s_in, s_out = (float(v) for v in rng.uniform(0.01, 0.1, 2))
        M, s = ref.quantize_multiplier(s_in / (s_out * H * W))
    act = rand_act(rng, zo)
    got = ref.avgpool(x, M, s, zi, zo, act)
    assert got.shape == (1, 1, C) and got.dtype == np.int8
    np.testing.assert_array_equal(got, loop_avgpool(x, M, s, zi, zo, act))


def test_avgpool_largest_accumulator():
    # 2^23 pixels is the format's limit; use a tall thin input of all -128 with zp 127
    x = np.full((1 << 12, 1 << 11, 1), -128, dtype=np.int8)
    M, s = ref.quantize_multiplier(1.0 / x.shape[0] / x.shape[1])
    got = ref.avgpool(x, M, s, 127, 0)
    assert int(got[0, 0, 0]) == -128            # mean -255 clamps
    assert int(ref.requant(-255 * (1 << 23), M, s)) == -255


# ---------------------------------------------------------------------------------------------
# hand-computed cases
# ---------------------------------------------------------------------------------------------

def test_conv_hand_computed():
    # input 2x2x1 = [[1, 2], [3, 4]], zp_in = 1, so the centred input is [[0, 1], [2, 3]]
    # kernel 2x2 = [[1, -2], [3, 4]], bias 7, M = 2^30, s = 0 (i.e. x 0.5), zp_out = -3
    x = np.array([[1, 2], [3, 4]], dtype=np.int8).reshape(2, 2, 1)
    w = np.array([[1, -2], [3, 4]], dtype=np.int8).reshape(1, 2, 2, 1)
    half = dict(mult=[2 ** 30], shift=[0], zp_in=1, zp_out=-3)

    # no padding: acc = 7 + 0*1 + 1*(-2) + 2*3 + 3*4 = 23; 23 * 0.5 = 11.5 -> 12; + (-3) = 9
    out = ref.conv(x, w, [7], **half)
    assert out.shape == (1, 1, 1) and out.tolist() == [[[9]]]

    # bias -31: acc = -15; -7.5 rounds toward +inf (srdhm) -> -7; -7 - 3 = -10
    assert ref.conv(x, w, [-31], **half).tolist() == [[[-10]]]

    # pad top 1 and left 1: out 2x2, iy = y - 1 + u, ix = x - 1 + v
    #   (0,0): only tap (1,1) on centred input (0,0):   7 + 0*4             = 7  -> 3.5 -> 4 -> 1
    #   (0,1): taps (1,0),(1,1) on inputs (0,0),(0,1):  7 + 0*3 + 1*4       = 11 -> 5.5 -> 6 -> 3
    #   (1,0): taps (0,1),(1,1) on inputs (0,0),(1,0):  7 + 0*(-2) + 2*4    = 15 -> 7.5 -> 8 -> 5
    #   (1,1): all four taps                                                 = 23 -> 12       -> 9
    out = ref.conv(x, w, [7], pad=(1, 1, 0, 0), **half)
    assert out[:, :, 0].tolist() == [[1, 3], [5, 9]]

    # same with a ReLU-like clamp [2, 6]: [[2, 3], [5, 6]]
    out = ref.conv(x, w, [7], pad=(1, 1, 0, 0), act=(2, 6), **half)
    assert out[:, :, 0].tolist() == [[2, 3], [5, 6]]

    # shift -1 (x 0.25): 23 -> srdhm 12 -> rdpot(12, 1) = 6 -> 3;
    # -15 -> srdhm -7 -> rdpot(-7, 1) = -3.5 -> -4 (away from zero) -> -7
    q = dict(half, shift=[-1])
    assert ref.conv(x, w, [7], **q).tolist() == [[[3]]]
    assert ref.conv(x, w, [-31], **q).tolist() == [[[-7]]]

    # stride 2 with pad (1, 1, 1, 1): out = (2 + 2 - 2) // 2 + 1 = 2 on each axis;
    # output (0,0) sees only input (0,0) (tap (1,1)), output (1,1) sees only input (1,1) (tap (0,0))
    #   (0,0): 7 + 0*4    = 7  -> 4 -> 1      (0,1): iy=-1+u, ix=1+v: tap (1,0) on (0,1): 7+1*3=10 -> 5 -> 2
    #   (1,0): iy=1+u, ix=-1+v: tap (0,1) on (1,0): 7 + 2*(-2) = 3 -> 1.5 -> 2 -> -1
    #   (1,1): tap (0,0) on (1,1): 7 + 3*1 = 10 -> 5 -> 2
    out = ref.conv(x, w, [7], stride=(2, 2), pad=(1, 1, 1, 1), **half)
    assert out[:, :, 0].tolist() == [[1, 2], [-1, 2]]


def test_kernels_hand_computed_small():
    # dwconv 1x1 kernel per channel: channel 0 weight 2, channel 1 weight -1, zp_in 0, x 0.5
    x = np.array([[[10, -10]]], dtype=np.int8)
    out = ref.dwconv(x, np.array([[[2, -1]]], dtype=np.int8), [0, 1], [2 ** 30] * 2, [0, 0], 0, 0)
    assert out.tolist() == [[[10, 6]]]          # 20*0.5 = 10; (10 + 1)*0.5 = 5.5 -> 6
    # avgpool of [1, 2, 3, 4] (zp 0) with multiplier 1/4 -> 10/4 = 2.5 -> 3
    x = np.array([1, 2, 3, 4], dtype=np.int8).reshape(2, 2, 1)
    M, s = ref.quantize_multiplier(0.25)
    assert ref.avgpool(x, M, s, 0, 0).tolist() == [[[3]]]
    # add: input multipliers 0.5 (M 2^30, s 0), output multiplier 0.5 * 2^-20 (s -20):
    # a = 6 * 2^20 * 0.5 = 3 * 2^20, b = 2 * 2^20 * 0.5 = 2^20, a + b = 2^22,
    # requant(2^22, 2^30, -20) = 2^21 / 2^20 = 2, + zp_out 1 = 3
    p = [2 ** 30, 0, 2 ** 30, 0, 2 ** 30, -20]
    assert ref.add(np.int8([[[6]]]), np.int8([[[2]]]), p, 0, 0, 1).tolist() == [[[3]]]
    # in general out = (x0 - zp0 + x1 - zp1) / 4 rounded, ties away from zero (rdpot):
    # 6 + 0 -> 1.5 -> 2 -> 3;  -6 + 0 -> -1.5 -> -2 -> -1;  6 - 1 with zp0 = 1 -> 1.0 -> 1 -> 2;
    # -6 - 1 -> -1.75 -> -2 -> -1
    x0 = np.int8([6, -6, 6, -6]).reshape(1, 4, 1)
    x1 = np.int8([0, 0, -1, -1]).reshape(1, 4, 1)
    assert ref.add(x0, x1, p, 0, 0, 1).reshape(-1).tolist() == [3, -1, 2, -1]
    assert ref.add(x0, x1, p, 1, 0, 1).reshape(-1).tolist() == [2, -1, 2, -1]
    # (with zp0 = 1: 5/4 -> 1 -> 2; -7/4 -> -2 -> -1; 4/4 -> 2; -8/4 = -2 -> -1)


def test_add_saturation_is_observable():
    # x0 = x1 = -128 with zero points 127: (x - zp) * 2^20 = -255 * 2^20; with M = 2^31 - 1,
    # s = 30 the pre-shift saturates to -2^31, and srdhm(-2^31, 2^31 - 1) = -(2^31 - 1).
    # a + b = -2^32 + 2 saturates to -2^31 (not -2^31 + 1!).  Output multiplier
    # M = 63 * 2^25, s = -26 (m = 63/128 * 2^-25): srdhm(-2^31, M) = -63 * 2^25 exactly,
    # rdpot(., 26) = -31.5 -> -32 (away from zero).  Had a + b been -2^31 + 1, srdhm would give
    # -63 * 2^25 + 1 and rdpot -31.
    x = np.int8([[[-128]]])
    p = [I32_MAX, 30, I32_MAX, 30, 63 * 2 ** 25, -26]
    assert int(ref.requant(-255 * 2 ** 20, I32_MAX, 30)) == -I32_MAX
    assert ref.add(x, x, p, 127, 127, 0).tolist() == [[[-32]]]
    assert int(ref.requant(I32_MIN + 1, 63 * 2 ** 25, -26)) == -31


def test_accumulator_overflow_is_asserted():
    x = np.full((1, 1, 2), 127, dtype=np.int8)
    w = np.full((1, 1, 1, 2), 127, dtype=np.int8)
    with pytest.raises(AssertionError):
        ref.conv(x, w, [I32_MAX], [1], [0], -128, 0)


def test_kernel_argument_errors():
    x = np.zeros((2, 2, 1), dtype=np.int8)
    with pytest.raises(ValueError):             # kernel larger than the input
        ref.conv(x, np.zeros((1, 3, 3, 1), np.int8), [0], [1], [0], 0, 0)
    with pytest.raises(ValueError):             # channel mismatch
        ref.conv(x, np.zeros((1, 1, 1, 2), np.int8), [0], [1], [0], 0, 0)
    with pytest.raises(ValueError):             # act_min > act_max
        ref.pwconv(x, np.zeros((1, 1), np.int8), [0], [1], [0], 0, 0, act=(5, 4))


# =============================================================================================
# .tmpm writer (from FORMAT.md) and model-level tests
# =============================================================================================

TYPE_IDS = {"conv": 1, "dwconv": 2, "pwconv": 3, "add": 4, "avgpool": 5, "fc": 6}


def build_tmpm(tensors, layers, class_names=None, tail=b""):
    """tensors: [(h, w, c, scale, zp)]; layers: dicts (see make_model). Returns bytes."""
    nt, nl = len(tensors), len(layers)
    tt_off = 64
    lt_off = tt_off + 16 * nt
    cursor = lt_off + 64 * nl
    body = bytearray(cursor)

    def place(blob):
        nonlocal cursor
        cursor = (cursor + 15) & ~15
        off = cursor
        body.extend(bytes(off - len(body)))
        body.extend(blob)
        cursor = len(body)
        return off

    for i, (h, w, c, scale, zp) in enumerate(tensors):
        struct.pack_into("<HHHHfi", body, tt_off + 16 * i, h, w, c, 0, scale, zp)
    for i, L in enumerate(layers):
        offs = [0] * 5
        if L.get("weights") is not None:
            offs = [place(np.asarray(L["weights"], np.int8).tobytes()),
                    place(np.asarray(L["bias"], "<i4").tobytes()),
                    place(np.asarray(L["mult"], "<i4").tobytes()),
                    place(np.asarray(L["shift"], "<i4").tobytes()),
                    place(np.asarray(L.get("wscale", np.ones(len(L["bias"]))), "<f4").tobytes())]
        pt, pl, pb, pr = L.get("pad", (0, 0, 0, 0))
        sh, sw = L.get("stride", (0, 0))
        lo, hi = L.get("act", (-128, 127))
        struct.pack_into("<BBBBBBBBBBbbHHHHIIIII6i", body, lt_off + 64 * i,
                         TYPE_IDS[L["type"]], 0, L.get("kh", 0), L.get("kw", 0), sh, sw,
                         pt, pl, pb, pr, lo, hi, L["in0"], L.get("in1", 0xFFFF), i + 1, 0,
                         *offs, *L.get("params", [0] * 6))
    cn_off = cn_size = 0
    if class_names is not None:
        blob = b"".join(n.encode() + b"\0" for n in class_names)
        cn_off, cn_size = place(blob), len(blob)
    total = len(body)
    h0, w0, c0, s0, z0 = tensors[0]
    struct.pack_into("<4sHHII HHHH fi HH IIIII 8s", body, 0, b"TMPM", 1, 64, total, 0,
                     h0, w0, c0, tensors[-1][2], s0, z0, nt, nl, tt_off, lt_off,
                     cn_off, cn_size, 0, bytes(8))
    return fix_crc(bytes(body)) + tail


def fix_crc(data):
    total = struct.unpack_from("<I", data, 8)[0]
    b = bytearray(data)
    struct.pack_into("<I", b, 12, zlib.crc32(bytes(b[16:total])) & 0xFFFFFFFF)
    return bytes(b)


def make_model(seed=0, class_names=("cat", "dog", "bird")):
    """6x6x2 -> conv3x3/s2/pad1 (3x3x4) -> dwconv3x3 pad1 -> pwconv -> add(t1, t3)
    -> avgpool -> fc(3).  Returns (bytes, tensors, layers)."""
    rng = np.random.default_rng(seed)
    tensors = [(6, 6, 2, 0.05, -3), (3, 3, 4, 0.11, 5), (3, 3, 4, 0.07, -20),
               (3, 3, 4, 0.09, 0), (3, 3, 4, 0.13, -1), (1, 1, 4, 0.04, 2), (1, 1, 3, 0.2, 10)]

    def wlayer(typ, wshape, n, L, in0, **kw):
        d = dict(type=typ, in0=in0, weights=rng.integers(-128, 127, wshape, endpoint=True),
                 bias=rng.integers(-3000, 3000, n), wscale=rng.uniform(0.001, 0.01, n))
        M, s = rand_requant(rng, n, L)
        d["mult"], d["shift"] = M, s
        d.update(kw)
        return d

    zp = [t[4] for t in tensors]
    layers = [
        wlayer("conv", (4, 3, 3, 2), 4, 18, 0, kh=3, kw=3, stride=(2, 2), pad=(1, 1, 1, 1),
               act=(zp[1], 127)),
        wlayer("dwconv", (3, 3, 4), 4, 9, 1, kh=3, kw=3, stride=(1, 1), pad=(1, 1, 1, 1),
               act=(zp[2], 100)),
        wlayer("pwconv", (4, 4), 4, 4, 2, kh=1, kw=1, stride=(1, 1)),
        dict(type="add", in0=1, in1=3, params=add_params(rng, False), act=(zp[4], 127)),
        dict(type="avgpool", in0=4, params=list(ref.quantize_multiplier(0.13 / (0.04 * 9)))
             + [0] * 4),
        wlayer("fc", (3, 4), 3, 4, 5),
    ]
    data = build_tmpm(tensors, layers, None if class_names is None else list(class_names))
    return data, tensors, layers


def loop_run(tensors, layers, x):
    """Chain the loop references over a make_model() description."""
    ts = [x.reshape(tensors[0][:3])]
    for i, L in enumerate(layers):
        zi, zo = tensors[L["in0"]][4], tensors[i + 1][4]
        act = L.get("act", (-128, 127))
        a = ts[L["in0"]]
        t = L["type"]
        if t == "conv":
            y = loop_conv(a, L["weights"], L["bias"], L["mult"], L["shift"], zi, zo,
                          L["stride"], L["pad"], act)
        elif t == "dwconv":
            y = loop_dwconv(a, L["weights"], L["bias"], L["mult"], L["shift"], zi, zo,
                            L["stride"], L["pad"], act)
        elif t == "pwconv":
            y = loop_pwconv(a, L["weights"], L["bias"], L["mult"], L["shift"], zi, zo, act)
        elif t == "fc":
            y = loop_fc(a, L["weights"], L["bias"], L["mult"], L["shift"], zi, zo, act)
        elif t == "add":
            y = loop_add(a, ts[L["in1"]], L["params"], zi, tensors[L["in1"]][4], zo, act)
        else:
            y = loop_avgpool(a, L["params"][0], L["params"][1], zi, zo, act)
        ts.append(y)
    return ts[1:]


def test_read_model_fields():
    data, tensors, layers = make_model()
    m = ref.read_model(data)
    assert m.num_classes == 3 and m.class_names == ["cat", "dog", "bird"]
    assert m.input_shape == (6, 6, 2)
    assert m.input_scale == np.float32(0.05) and m.input_zero_point == -3
    assert [(t.h, t.w, t.c, t.zero_point) for t in m.tensors] == [t[:3] + (t[4],)
                                                                  for t in tensors]
    assert [t.scale for t in m.tensors] == [float(np.float32(t[3])) for t in tensors]
    assert [L.type_name for L in m.layers] == ["conv", "dwconv", "pwconv", "add", "avgpool",
                                               "fc"]
    c = m.layers[0]
    assert (c.kh, c.kw, c.stride, c.pads, c.in0, c.in1, c.out) == (3, 3, (2, 2), (1, 1, 1, 1),
                                                                   0, None, 1)
    assert c.weights.shape == (4, 3, 3, 2) and c.weights.dtype == np.int8
    np.testing.assert_array_equal(c.weights, layers[0]["weights"])
    np.testing.assert_array_equal(c.bias, layers[0]["bias"])
    np.testing.assert_array_equal(c.mult, layers[0]["mult"])
    np.testing.assert_array_equal(c.shift, layers[0]["shift"])
    np.testing.assert_array_equal(c.wscale, np.float32(layers[0]["wscale"]))
    assert m.layers[1].weights.shape == (3, 3, 4)
    assert m.layers[2].weights.shape == (4, 4)
    assert m.layers[5].weights.shape == (3, 4)
    a = m.layers[3]
    assert (a.in0, a.in1, a.weights, a.params) == (1, 3, None, tuple(layers[3]["params"]))
    assert m.layers[4].params == tuple(layers[4]["params"])
    # trailing bytes after total_size are ignored; bytearray / memoryview accepted
    assert ref.read_model(data + b"junk").num_classes == 3
    assert ref.read_model(memoryview(bytearray(data))).num_classes == 3
    # no class names
    assert ref.read_model(make_model(class_names=None)[0]).class_names is None


def test_a_model_by_file_name(tmp_path):
    # as tinymp.Model takes it: a file name (str or os.PathLike) reads that file
    data = make_model(3)[0]
    path = tmp_path / "m.tmpm"
    path.write_bytes(data)
    x = np.arange(-36, 36, dtype=np.int8)
    assert ref.read_model(path).raw == ref.read_model(str(path)).raw == data
    np.testing.assert_array_equal(ref.logits(str(path), x), ref.logits(data, x))
    assert ref.predict(path, x) == ref.predict(data, x)
    with pytest.raises(ValueError, match="is not a .tmpm model file"):
        ref.read_model(tmp_path)
    with pytest.raises(TypeError, match="its file name, not 'int'"):
        ref.read_model(3)
    with pytest.raises(FileNotFoundError):
        ref.read_model(tmp_path / "none.tmpm")


def test_an_input_as_bytes_like_the_board_takes_it():
    # Model.predict/logits take the input as an int8 buffer (bytes, bytearray, memoryview,
    # array('b')); the reference reads the same buffers as int8, and agrees with the C engine
    import array
    import tinymp
    data = make_model(3)[0]
    x = np.arange(-36, 36, dtype=np.int8)
    raw = x.tobytes()
    want = ref.logits(data, x)
    for given in (raw, bytearray(raw), memoryview(raw), array.array("b", raw)):
        np.testing.assert_array_equal(ref.logits(data, given), want)
        assert ref.predict(data, given) == ref.predict(data, x)
    np.testing.assert_array_equal(np.array(tinymp.Model(data).logits(raw), np.float32), want)
    with pytest.raises(ValueError, match="input has 71 values"):
        ref.logits(data, raw[:-1])
    with pytest.raises(TypeError, match="int8 input expected"):
        ref.logits(data, "a string")



def test_a_buffer_input_is_read_as_model_reads_it():
    # Model.logits reads any buffer of one-byte items as raw int8 bytes and refuses wider items
    # with a TypeError naming the item size: so does the reference (it used to read an
    # array('B') by value, refusing bytes >= 0x80 as out of int8, and a view of array('h') as its
    # raw bytes). numpy arrays and lists are still read by value.
    import array
    import tinymp
    data = make_model(3)[0]
    model = tinymp.Model(data)
    x = np.arange(-36, 36, dtype=np.int8)
    raw = x.tobytes()
    want = ref.logits(data, x)
    wide = array.array("h", raw[:36])
    strided = memoryview(bytes(v for b in raw for v in (b, 0)))[::2]  # the binding copies it
    for given in (array.array("B", raw), strided, memoryview(raw).cast("B", (8, 9))):
        np.testing.assert_array_equal(ref.logits(data, given), want)
        np.testing.assert_array_equal(np.array(model.logits(given), np.float32), want)
        assert ref.predict(data, given) == model.predict(given) == ref.predict(data, x)
    for given in (wide, memoryview(wide)):
        with pytest.raises(TypeError) as engine:
            model.logits(given)
        with pytest.raises(TypeError) as reference:
            ref.logits(data, given)
        assert str(reference.value) == str(engine.value)
        assert "itemsize 1" in str(reference.value)
        with pytest.raises(TypeError, match="itemsize 1"):
            ref.predict(data, given)
    # by value: an int8 array, an uint8 array of int8 values, a list
    np.testing.assert_array_equal(ref.logits(data, x.astype(np.int16)), want)
    np.testing.assert_array_equal(ref.logits(data, x.tolist()), want)
    with pytest.raises(ValueError, match="outside int8"):
        ref.logits(data, x.view(np.uint8))

@pytest.mark.parametrize("seed", range(6))
def test_run_matches_loop_chain(seed):
    data, tensors, layers = make_model(seed)
    m = ref.read_model(data)
    rng = np.random.default_rng(100 + seed)
    x = rand_int8(rng, (6, 6, 2), seed == 5)
    outs = ref.run(data, x)
    expect = loop_run(tensors, layers, x)
    assert len(outs) == 6
    for i, (a, b) in enumerate(zip(outs, expect)):
        assert a.dtype == np.int8 and a.shape == tensors[i + 1][:3], i
        np.testing.assert_array_equal(a, b, err_msg=f"layer {i}")
    # flat input, RefModel input and upto
    flat = ref.run(m, x.reshape(-1))
    for a, b in zip(flat, outs):
        np.testing.assert_array_equal(a, b)
    part = ref.run(m, x, upto=2)
    assert len(part) == 3
    for a, b in zip(part, outs):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        ref.run(m, x, upto=6)
    # logits and predict
    q = outs[-1].reshape(-1)
    lg = ref.logits(data, x)
    assert lg.dtype == np.float32 and lg.shape == (3,)
    np.testing.assert_array_equal(lg, (q.astype(np.float32) - np.float32(10)) * np.float32(0.2))
    p = ref.predict(m, x)
    assert p == int(np.argmax(q)) and q[p] == q.max() and all(q[:p] < q[p])


def test_predict_first_on_ties():
    # single fc layer with zero weights: all outputs equal bias-driven values; make 1 and 2 tie
    tensors = [(1, 1, 2, 0.1, 0), (1, 1, 4, 0.1, 0)]
    layers = [dict(type="fc", in0=0, weights=np.zeros((4, 2)), bias=[-10, 20, 20, 5],
                   mult=[2 ** 30] * 4, shift=[1] * 4)]
    data = build_tmpm(tensors, layers)
    assert ref.run(data, np.int8([0, 0]))[-1].reshape(-1).tolist() == [-10, 20, 20, 5]
    assert ref.predict(data, np.int8([0, 0])) == 1


# ---- rejections ---------------------------------------------------------------------------

def patch(data, off, fmt, *values, crc=True):
    b = bytearray(data)
    struct.pack_into(fmt, b, off, *values)
    return fix_crc(bytes(b)) if crc else bytes(b)


def _layer_off(data, i):
    return struct.unpack_from("<I", data, 40)[0] + 64 * i


def _tensor_off(data, i):
    return struct.unpack_from("<I", data, 36)[0] + 16 * i


GOOD = make_model()[0]

REJECT_CASES = {
    "short": lambda d: d[:40],
    "magic": lambda d: patch(d, 0, "4s", b"TMPX"),
    "version": lambda d: patch(d, 4, "<H", 2),
    "header_size": lambda d: patch(d, 6, "<H", 60),
    "total_size_beyond_buffer": lambda d: patch(d, 8, "<I", len(d) + 4),
    "crc": lambda d: patch(d, 12, "<I", 0x12345678, crc=False),
    "crc_body_flip": lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:],
    "input_shape_mismatch": lambda d: patch(d, 16, "<H", 7),
    "input_scale_mismatch": lambda d: patch(d, 24, "<f", 0.5),
    "input_zp_mismatch": lambda d: patch(d, 28, "<i", 4),
    "num_tensors": lambda d: patch(d, 32, "<H", 8),
    "num_layers_zero": lambda d: patch(d, 32, "<HH", 1, 0),
    "table_misaligned": lambda d: patch(d, 40, "<I", struct.unpack_from("<I", d, 40)[0] + 2),
    "header_flags": lambda d: patch(d, 52, "<I", 1),
    "header_reserved": lambda d: patch(d, 60, "<B", 1),
    "num_classes_mismatch": lambda d: patch(d, 22, "<H", 4),
    "tensor_zero_dim": lambda d: patch(d, _tensor_off(d, 2), "<H", 0),
    "tensor_flags": lambda d: patch(d, _tensor_off(d, 2) + 6, "<H", 1),
    "tensor_scale_zero": lambda d: patch(d, _tensor_off(d, 2) + 8, "<f", 0.0),
    "tensor_scale_nan": lambda d: patch(d, _tensor_off(d, 2) + 8, "<f", float("nan")),
    "tensor_zp_range": lambda d: patch(d, _tensor_off(d, 2) + 12, "<i", 128),
    "layer_type": lambda d: patch(d, _layer_off(d, 1), "<B", 7),
    "layer_flags": lambda d: patch(d, _layer_off(d, 1) + 1, "<B", 1),
    "conv_kernel_12": lambda d: patch(d, _layer_off(d, 0) + 2, "<B", 12),
    "conv_stride_5": lambda d: patch(d, _layer_off(d, 0) + 4, "<B", 5),
    "conv_pad_ge_kernel": lambda d: patch(d, _layer_off(d, 0) + 6, "<B", 3),
    "conv_out_size": lambda d: patch(d, _layer_off(d, 0) + 4, "<B", 1),
    "pwconv_kernel": lambda d: patch(d, _layer_off(d, 2) + 2, "<B", 3),
    "act_order": lambda d: patch(d, _layer_off(d, 1) + 10, "<bb", 10, 9),
    "in0_forward": lambda d: patch(d, _layer_off(d, 1) + 12, "<H", 2),
    "in1_on_conv": lambda d: patch(d, _layer_off(d, 1) + 14, "<H", 0),
    "add_in1_missing": lambda d: patch(d, _layer_off(d, 3) + 14, "<H", 0xFFFF),
    "add_shape": lambda d: patch(d, _layer_off(d, 3) + 14, "<H", 0),
    "out_index": lambda d: patch(d, _layer_off(d, 2) + 16, "<H", 2),
    "layer_reserved": lambda d: patch(d, _layer_off(d, 2) + 18, "<H", 1),
    "weights_misaligned": lambda d: patch(d, _layer_off(d, 0) + 20, "<I",
                                          struct.unpack_from("<I", d, _layer_off(d, 0) + 20)[0]
                                          + 2),
    "weights_beyond_end": lambda d: patch(d, _layer_off(d, 5) + 20, "<I", len(d) - 4),
    "bias_in_header": lambda d: patch(d, _layer_off(d, 5) + 24, "<I", 0),
    "add_has_array": lambda d: patch(d, _layer_off(d, 3) + 20, "<I", 64),
    "conv_params": lambda d: patch(d, _layer_off(d, 0) + 40, "<i", 1),
    "avgpool_params_tail": lambda d: patch(d, _layer_off(d, 4) + 48, "<i", 1),
    "add_mult_negative": lambda d: patch(d, _layer_off(d, 3) + 40, "<i", -1),
    "add_shift_31": lambda d: patch(d, _layer_off(d, 3) + 44, "<i", 31),
    "avgpool_shift_low": lambda d: patch(d, _layer_off(d, 4) + 44, "<i", -32),
    "class_names_count": lambda d: patch(d, 48, "<I", struct.unpack_from("<I", d, 48)[0] - 5),
    "class_names_half": lambda d: patch(d, 44, "<I", 0),
    "tensor_never_read": lambda d: patch(d, _layer_off(d, 3) + 14, "<H", 1),
}


def _array_patch(d, layer, field_off, index, fmt, value):
    off = struct.unpack_from("<I", d, _layer_off(d, layer) + field_off)[0]
    return patch(d, off + index * struct.calcsize(fmt), fmt, value)


REJECT_CASES.update({
    "conv_mult_negative": lambda d: _array_patch(d, 0, 28, 1, "<i", -5),
    "conv_shift_31": lambda d: _array_patch(d, 0, 32, 2, "<i", 31),
    "fc_shift_minus_32": lambda d: _array_patch(d, 5, 32, 0, "<i", -32),
    "conv_bias_bound": lambda d: _array_patch(d, 0, 24, 3, "<i", I32_MAX - 32640 * 18 + 1),
    "fc_bias_bound_neg": lambda d: _array_patch(d, 5, 24, 0, "<i", -(I32_MAX - 32640 * 4 + 1)),
})


def test_a_tensor_nothing_reads_is_refused():
    # the add reads tensor 1 twice: the pointwise layer's output (tensor 3) is dead; inference
    # could skip it, but the trainer would find no gradient for it
    bad = patch(GOOD, _layer_off(GOOD, 3) + 14, "<H", 1)
    with pytest.raises(ValueError, match="tensor 3: never read"):
        ref.read_model(bad)
    # the engine's loader: tests/test_binding.py (test_model_with_a_dead_layer_is_refused)
    # the writer's rule: tests/test_builder.py (test_writer_validation, "never read")


@pytest.mark.parametrize("case", sorted(REJECT_CASES))
def test_read_model_rejects(case):
    bad = REJECT_CASES[case](GOOD)
    with pytest.raises(ValueError):
        ref.read_model(bad)


def test_version_message_names_both_versions():
    with pytest.raises(ValueError, match=r"(?s)(?=.*\b2\b)(?=.*\b1\b)"):
        ref.read_model(patch(GOOD, 4, "<H", 2))


def test_bias_at_bound_is_accepted():
    ok = _array_patch(GOOD, 0, 24, 3, "<i", I32_MAX - 32640 * 18)
    ok = _array_patch(ok, 5, 24, 0, "<i", -(I32_MAX - 32640 * 4))
    m = ref.read_model(ok)
    assert int(m.layers[0].bias[3]) == I32_MAX - 32640 * 18
    # and the worst case then still fits the accumulator
    ref.run(m, np.full((6, 6, 2), 127, np.int8))
