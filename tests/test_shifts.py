"""tinymp.shifts: every shift does what its documentation says, and is seeded."""
import numpy as np
import pytest

from tinymp import shifts


def digit_like(n=4, size=16, seed=0):
    """Images with a black border of 4 pixels and random 'ink' inside, in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, size, size), np.float32)
    x[:, 4:-4, 4:-4] = rng.random((n, size - 8, size - 8)) > 0.6
    return x


def test_shapes_dtype_and_range_are_kept():
    x = digit_like()
    for spec in ["invert", "rotate=30:5", "scale=0.8:0.1", "translate=1:-2:0.5", "stroke=1",
                 "stroke=-1", "contrast=0.5", "blur=1", "noise=0.2"]:
        for arr in (x, x[..., None], x[0]):
            out = shifts.apply(arr, spec, seed=3)
            assert out.shape == arr.shape and out.dtype == np.float32, spec
            assert out.min() >= 0.0 and out.max() <= 1.0, spec
    with pytest.raises(ValueError, match="expected images"):
        shifts.invert(np.zeros((2, 3, 4, 3)))


def test_invert_twice_is_the_identity():
    x = digit_like()
    assert np.array_equal(shifts.invert(x), 1.0 - x)
    assert np.allclose(shifts.invert(shifts.invert(x)), x, atol=1e-7)


def test_rotation_by_zero_is_the_identity_and_by_90_turns_the_grid():
    x = digit_like(size=15)
    assert np.allclose(shifts.rotate(x, 0), x, atol=1e-6)
    # a quarter turn counter-clockwise on screen is numpy's rot90 of each image
    assert np.allclose(shifts.rotate(x, 90), np.rot90(x, 1, axes=(1, 2)), atol=1e-6)
    assert np.allclose(shifts.rotate(shifts.rotate(x, 90), -90), x, atol=1e-6)
    # rotation keeps ink near the centre (inside the inscribed circle) up to resampling
    r = shifts.rotate(x, 37)
    assert abs(r.sum() - x.sum()) / x.sum() < 0.05


def test_jitter_draws_a_different_angle_per_image_from_the_generator():
    x = np.repeat(digit_like(1, size=15), 3, axis=0)
    a = shifts.rotate(x, 20, jitter=10, rng=np.random.default_rng(1))
    assert not np.allclose(a[0], a[1])
    b = shifts.rotate(x, 20, jitter=10, rng=np.random.default_rng(1))
    assert np.array_equal(a, b)


def test_scale_and_translate():
    x = digit_like(size=16)
    assert np.allclose(shifts.scale(x, 1.0), x, atol=1e-6)
    small = shifts.scale(x, 0.5)
    assert small.sum() == pytest.approx(x.sum() * 0.25, rel=0.15)  # area shrinks by factor^2
    moved = shifts.translate(x, 2, -3)
    expect = np.zeros_like(x)
    expect[:, 2:, :-3] = x[:, :-2, 3:]
    assert np.allclose(moved, expect, atol=1e-6)
    with pytest.raises(ValueError):
        shifts.scale(x, 0)


def test_dilation_adds_ink_and_erosion_removes_it():
    x = digit_like()
    thick = shifts.stroke(x, 1)
    thin = shifts.stroke(x, -1)
    assert (thick >= x).all() and thick.sum() > x.sum()
    assert (thin <= x).all() and thin.sum() < x.sum()
    dot = np.zeros((9, 9), np.float32)
    dot[4, 4] = 1
    assert shifts.stroke(dot, 1).sum() == 9 and shifts.stroke(dot, 2).sum() == 25
    assert shifts.stroke(shifts.stroke(dot, 1), -1).sum() == 1  # opening of a square block
    assert np.array_equal(shifts.stroke(x, 0), x)


def test_blur_preserves_the_mean_and_smooths():
    x = digit_like()
    for sigma in (0.5, 1.0):  # kernel radius 2, 3: less than the 4-pixel black border
        b = shifts.blur(x, sigma)
        assert b.mean() == pytest.approx(x.mean(), rel=1e-5)
        assert b.max() < x.max()
        assert np.abs(np.diff(b, axis=2)).sum() < np.abs(np.diff(x, axis=2)).sum()
    assert np.array_equal(shifts.blur(x, 0), x)
    with pytest.raises(ValueError):
        shifts.blur(x, -1)


def test_contrast():
    x = digit_like()
    assert np.allclose(shifts.contrast(x, 1.0), x)
    assert np.allclose(shifts.contrast(x, 0.0), 0.5)
    c = shifts.contrast(x, 0.5)
    assert c.min() == pytest.approx(0.25) and c.max() == pytest.approx(0.75)


def test_noise_has_the_stated_spread_and_is_seeded():
    grey = np.full((4, 32, 32), 0.5, np.float32)
    a = shifts.noise(grey, 0.1, rng=np.random.default_rng(7))
    d = a - grey
    assert abs(d.mean()) < 0.01 and d.std() == pytest.approx(0.1, rel=0.05)
    assert np.array_equal(a, shifts.noise(grey, 0.1, rng=np.random.default_rng(7)))
    assert not np.array_equal(a, shifts.noise(grey, 0.1, rng=np.random.default_rng(8)))
    assert np.array_equal(shifts.noise(grey, 0.0), grey)


def test_clutter_only_lightens_the_background():
    pytest.importorskip("sklearn")
    pytest.importorskip("PIL")
    x = digit_like(size=32)
    c = shifts.clutter(x, 0.8, rng=np.random.default_rng(2))
    assert (c >= x - 1e-7).all()
    assert np.allclose(c[x == 1.0], 1.0)  # ink stays
    assert c[x == 0].mean() > 0.05  # the ground is no longer black
    assert np.array_equal(c, shifts.clutter(x, 0.8, rng=np.random.default_rng(2)))
    assert np.array_equal(shifts.clutter(x, 0.0, rng=np.random.default_rng(2)), x)


def test_apply_composes_in_order_with_one_generator():
    x = digit_like(size=16)
    spec = "rotate=20:5,stroke=1,noise=0.05,invert"
    a = shifts.apply(x, spec, seed=11)
    assert np.array_equal(a, shifts.apply(x, spec, seed=11))  # same seed, same output
    assert not np.array_equal(a, shifts.apply(x, spec, seed=12))
    rng = np.random.default_rng(11)
    manual = shifts.invert(shifts.noise(shifts.stroke(shifts.rotate(x, 20, 5, rng=rng), 1), 0.05, rng=rng))
    assert np.array_equal(a, manual)
    assert np.array_equal(shifts.apply(x, "none"), x) and np.array_equal(shifts.apply(x, ""), x)
    # order matters: inverting before rotating fills the corners with black, after with white
    assert not np.allclose(shifts.apply(x, "invert,rotate=45"), shifts.apply(x, "rotate=45,invert"))


@pytest.mark.parametrize("spec,words", [
    ("twist=3", ["unknown shift", "twist"]),
    ("rotate", ["rotate", "takes 1 to 2"]),
    ("rotate=a", ["not a number"]),
    ("invert=1", ["invert", "takes 0"]),
    ("stroke=1.5", ["whole number"]),
])
def test_bad_specs_name_what_is_wrong(spec, words):
    with pytest.raises(ValueError) as e:
        shifts.parse(spec)
    for w in words:
        assert w in str(e.value)


def test_describe():
    assert shifts.describe("rotate=30:5,scale=0.8") == "rotated 30 deg (+-5 deg jitter), scaled x0.8"
    assert shifts.describe("none") == "no shift"
    assert "inverted" in shifts.describe("invert")
