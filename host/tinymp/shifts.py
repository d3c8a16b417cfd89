"""Seeded, documented domain shifts of grey-level images (numpy only).

Each shift maps float images in ``[0, 1]`` (``[N, H, W]`` or ``[N, H, W, 1]``; one image ``[H, W]``
also works) to new float32 images of the same shape in ``[0, 1]``. They model what a person's own
camera and handwriting add to the images a model was pretrained on:

``rotate(x, degrees, jitter=0)``
    rotation about the image centre by ``degrees`` (counter-clockwise on screen) plus a per-image
    uniform jitter in ``[-jitter, +jitter]``; bilinear resampling, black (0) outside the source.
``scale(x, factor, jitter=0)``
    zoom about the centre by ``factor`` (< 1 shrinks) times a per-image factor uniform in
    ``[1 - jitter, 1 + jitter]``; bilinear, black outside.
``translate(x, dy, dx, jitter=0)``
    shift by ``(dy, dx)`` pixels (down, right) plus a per-image uniform jitter in pixels; bilinear.
``stroke(x, width)``
    stroke width: ``width`` > 0 dilates the ink ``width`` times with a 3x3 grey-level maximum
    filter (thicker strokes), ``width`` < 0 erodes ``-width`` times with a 3x3 minimum (thinner);
    outside the image counts as background (0).
``invert(x)``
    contrast inversion ``1 - x`` (white ink on black becomes black ink on white).
``contrast(x, factor)``
    contrast around mid-grey: ``0.5 + factor * (x - 0.5)``, clipped (``factor`` < 1 washes out).
``blur(x, sigma)``
    Gaussian blur with standard deviation ``sigma`` pixels (separable, kernel radius
    ``ceil(3 sigma)``, weights normalised to sum 1, reflect padding): it preserves the mean of an
    image whose ink lies more than a radius away from the border.
``noise(x, sigma)``
    additive Gaussian pixel noise of standard deviation ``sigma``, then clipped to ``[0, 1]``.
``clutter(x, strength)``
    a textured background: every image is laid over a random ``H x W`` patch (grey levels, random
    position and 2x-4x downsampling) of the two photographs scikit-learn ships
    (``sklearn.datasets.load_sample_images``: "china" and "flower", real images bundled in the
    package, no download; needs Pillow to decode them): ``x + (1 - x) * strength * patch``.

Randomness comes only from the ``rng`` (a ``numpy.random.Generator``) passed to each function, or
from the seed given to ``apply``: the same seed always gives the same output, on any machine
with the same numpy. Shifts compose left to right:

    apply(x, "rotate=30:5,scale=0.8,invert", seed=1)

is ``invert(scale(rotate(x, 30, jitter=5), 0.8))``, with one generator seeded by ``seed`` drawn
from in that order. ``parse(spec)`` checks a spec and returns its steps; ``describe(spec)`` is a
one-line English description of it. A spec item is ``name`` or ``name=a:b:...`` (the numbers are
the function's arguments in order, e.g. ``rotate=30:5`` is 30 degrees with 5 degrees of jitter,
``translate=2:-2`` is 2 down and 2 left). ``"none"`` (or an empty spec) is the identity.
"""

import math

import numpy as np

__all__ = ["rotate", "scale", "translate", "warp", "stroke", "invert", "contrast", "blur",
           "noise", "clutter", "parse", "apply", "describe", "SHIFTS"]


# ------------------------------------------------------------------------------ array helpers

def _as_batch(x):
    """(float64 array [N, H, W], function that restores the caller's shape as float32)."""
    a = np.asarray(x, dtype=np.float64)
    shape = a.shape
    if a.ndim == 2:
        b = a[None]
    elif a.ndim == 3:
        b = a
    elif a.ndim == 4 and a.shape[3] == 1:
        b = a[..., 0]
    else:
        raise ValueError("shifts: expected images [H, W], [N, H, W] or [N, H, W, 1], got shape %s"
                         % (shape,))

    def back(out):
        return np.clip(out, 0.0, 1.0).astype(np.float32).reshape(shape)

    return b, back


def _rng(rng):
    return rng if rng is not None else np.random.default_rng(0)


def _jitter(rng, n, amount):
    if not amount:
        return np.zeros(n)
    return _rng(rng).uniform(-amount, amount, size=n)


# ------------------------------------------------------------------------------ geometry

def warp(img, angle=0.0, factor=1.0, dy=0.0, dx=0.0):
    """One image [H, W] rotated by ``angle`` degrees about its centre, scaled by ``factor`` and
    moved by ``(dy, dx)`` pixels; bilinear, 0 outside. The output pixel at (y, x) samples the
    source at the inverse transform of (y, x)."""
    img = np.asarray(img, dtype=np.float64)
    h, w = img.shape
    th = math.radians(angle)
    c, s = math.cos(th), math.sin(th)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                         indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    u, v = xx - cx - dx, yy - cy - dy
    # screen coordinates have y down: a counter-clockwise rotation on screen maps source (u, v)
    # to (c u + s v, -s u + c v); invert it
    sx = (c * u - s * v) / factor + cx
    sy = (s * u + c * v) / factor + cy
    x0 = np.floor(sx).astype(np.int64)
    y0 = np.floor(sy).astype(np.int64)
    fx, fy = sx - x0, sy - y0

    def at(yi, xi):
        ok = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        return img[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)] * ok

    return (at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x0 + 1) * fx * (1 - fy)
            + at(y0 + 1, x0) * (1 - fx) * fy + at(y0 + 1, x0 + 1) * fx * fy)


def rotate(x, degrees, jitter=0.0, rng=None):
    """Rotate every image by ``degrees`` (+ uniform per-image jitter) about its centre."""
    b, back = _as_batch(x)
    ang = degrees + _jitter(rng, len(b), jitter)
    return back(np.stack([warp(im, angle=a) for im, a in zip(b, ang)]) if len(b) else b)


def scale(x, factor, jitter=0.0, rng=None):
    """Zoom every image by ``factor`` (times a uniform per-image factor in [1-jitter, 1+jitter])."""
    if factor <= 0:
        raise ValueError("shifts: scale factor must be > 0, got %r" % (factor,))
    if not 0 <= jitter < 1:
        raise ValueError("shifts: scale jitter must be in [0, 1), got %r" % (jitter,))
    b, back = _as_batch(x)
    f = factor * (1.0 + _jitter(rng, len(b), jitter))
    return back(np.stack([warp(im, factor=k) for im, k in zip(b, f)]) if len(b) else b)


def translate(x, dy, dx, jitter=0.0, rng=None):
    """Move every image by (dy, dx) pixels (+ uniform per-image jitter on each axis)."""
    b, back = _as_batch(x)
    jy = _jitter(rng, len(b), jitter)
    jx = _jitter(rng, len(b), jitter)
    return back(np.stack([warp(im, dy=dy + a, dx=dx + c) for im, a, c in zip(b, jy, jx)])
                if len(b) else b)


# ------------------------------------------------------------------------------ strokes, grey levels

def _filter3(b, op, fill):
    p = np.pad(b, ((0, 0), (1, 1), (1, 1)), mode="constant", constant_values=fill)
    h, w = b.shape[1], b.shape[2]
    out = p[:, 0:h, 0:w]
    for dy in range(3):
        for dx in range(3):
            out = op(out, p[:, dy:dy + h, dx:dx + w])
    return out


def stroke(x, width):
    """Thicker (``width`` > 0: 3x3 grey dilation, ``width`` times) or thinner (< 0: erosion)
    strokes."""
    width = int(width)
    b, back = _as_batch(x)
    for _ in range(abs(width)):
        b = _filter3(b, np.maximum, 0.0) if width > 0 else _filter3(b, np.minimum, 0.0)
    return back(b)


def invert(x):
    """Contrast inversion: 1 - x."""
    b, back = _as_batch(x)
    return back(1.0 - b)


def contrast(x, factor):
    """0.5 + factor * (x - 0.5), clipped to [0, 1]."""
    b, back = _as_batch(x)
    return back(0.5 + factor * (b - 0.5))


def _gauss_kernel(sigma):
    r = max(1, int(math.ceil(3.0 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum(), r


def blur(x, sigma):
    """Gaussian blur, standard deviation ``sigma`` pixels (0: identity)."""
    if sigma < 0:
        raise ValueError("shifts: blur sigma must be >= 0, got %r" % (sigma,))
    b, back = _as_batch(x)
    if sigma == 0:
        return back(b)
    k, r = _gauss_kernel(sigma)
    h, w = b.shape[1], b.shape[2]
    if r >= min(h, w):
        raise ValueError("shifts: blur sigma %g too large for %dx%d images" % (sigma, h, w))
    p = np.pad(b, ((0, 0), (r, r), (0, 0)), mode="reflect")
    b = sum(k[i] * p[:, i:i + h, :] for i in range(2 * r + 1))
    p = np.pad(b, ((0, 0), (0, 0), (r, r)), mode="reflect")
    b = sum(k[i] * p[:, :, i:i + w] for i in range(2 * r + 1))
    return back(b)


def noise(x, sigma, rng=None):
    """Additive Gaussian noise of standard deviation ``sigma``, clipped to [0, 1]."""
    if sigma < 0:
        raise ValueError("shifts: noise sigma must be >= 0, got %r" % (sigma,))
    b, back = _as_batch(x)
    return back(b + _rng(rng).normal(0.0, sigma, size=b.shape))


_PHOTOS = []


def _photos():
    """The two photographs bundled with scikit-learn, as float grey levels in [0, 1]."""
    if not _PHOTOS:
        try:
            from sklearn.datasets import load_sample_images
            imgs = load_sample_images().images
        except ImportError as e:
            raise ImportError("shifts: clutter needs scikit-learn and Pillow for the photographs "
                              "scikit-learn ships (pip install scikit-learn pillow): %s" % e) from None
        for im in imgs:
            g = np.asarray(im, dtype=np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
            _PHOTOS.append(g)
    return _PHOTOS


def clutter(x, strength=0.5, rng=None):
    """Lay every image over a random patch of a real photograph (see the module text)."""
    if not 0 <= strength <= 1:
        raise ValueError("shifts: clutter strength must be in [0, 1], got %r" % (strength,))
    b, back = _as_batch(x)
    rng = _rng(rng)
    photos = _photos()
    n, h, w = b.shape
    out = np.empty_like(b)
    for i in range(n):
        ph = photos[int(rng.integers(len(photos)))]
        step = int(rng.integers(2, 5))  # 2x..4x downsampling: textures at several scales
        y0 = int(rng.integers(0, ph.shape[0] - h * step + 1))
        x0 = int(rng.integers(0, ph.shape[1] - w * step + 1))
        patch = ph[y0:y0 + h * step, x0:x0 + w * step].reshape(h, step, w, step).mean(axis=(1, 3))
        out[i] = b[i] + (1.0 - b[i]) * strength * patch
    return back(out)


# ------------------------------------------------------------------------------ specs

# name -> (function, number of required args, number of optional args, uses rng, description)
SHIFTS = {
    "rotate": (rotate, 1, 1, True, "rotated {0:g} deg{1}"),
    "scale": (scale, 1, 1, True, "scaled x{0:g}{1}"),
    "translate": (translate, 2, 1, True, "moved ({0:g}, {1:g}) px{2}"),
    "stroke": (stroke, 1, 0, False, "strokes {0:+d} px (3x3 dilation/erosion)"),
    "invert": (invert, 0, 0, False, "contrast inverted"),
    "contrast": (contrast, 1, 0, False, "contrast x{0:g}"),
    "blur": (blur, 1, 0, False, "Gaussian blur sigma {0:g} px"),
    "noise": (noise, 1, 0, True, "Gaussian noise sigma {0:g}"),
    "clutter": (clutter, 0, 1, True, "on photo backgrounds (strength {0:g})"),
}
_DEFAULTS = {"clutter": (0.5,)}


def parse(spec):
    """Check a spec string (see the module text); returns [(name, (args...)), ...].

    Raises ValueError naming the bad item."""
    if spec is None:
        return []
    if not isinstance(spec, str):
        raise TypeError("shifts: a spec is a string like 'rotate=30:5,invert'")
    steps = []
    for item in [s.strip() for s in spec.split(",")]:
        if not item or item == "none":
            continue
        name, _, argtext = item.partition("=")
        name = name.strip()
        if name not in SHIFTS:
            raise ValueError("shifts: unknown shift %r in %r (known: %s)"
                             % (name, spec, ", ".join(sorted(SHIFTS))))
        _, nreq, nopt, _, _ = SHIFTS[name]
        args = []
        if argtext.strip():
            for a in argtext.split(":"):
                try:
                    args.append(float(a))
                except ValueError:
                    raise ValueError("shifts: %r: %r is not a number" % (item, a)) from None
        if not nreq <= len(args) <= nreq + nopt:
            want = "%d" % nreq if not nopt else "%d to %d" % (nreq, nreq + nopt)
            raise ValueError("shifts: %r takes %s numbers, got %d" % (name, want, len(args)))
        if not args and name in _DEFAULTS:
            args = list(_DEFAULTS[name])
        if name == "stroke":
            if args[0] != int(args[0]):
                raise ValueError("shifts: stroke width must be a whole number, got %g" % args[0])
            args[0] = int(args[0])
        steps.append((name, tuple(args)))
    return steps


def apply(x, spec, seed=0):
    """Apply the shifts of ``spec`` in order, drawing randomness from one generator seeded with
    ``seed``. Returns float32 images of x's shape in [0, 1]."""
    steps = parse(spec)
    rng = np.random.default_rng(seed)
    b, back = _as_batch(x)
    out = back(b)
    for name, args in steps:
        fn, _, _, uses_rng, _ = SHIFTS[name]
        out = fn(out, *args, rng=rng) if uses_rng else fn(out, *args)
    return out


def describe(spec):
    """One line of English for a spec, e.g. 'rotated 30 deg (+-5), scaled x0.8'."""
    parts = []
    for name, args in parse(spec):
        _, nreq, nopt, _, text = SHIFTS[name]
        if name in ("rotate", "scale", "translate"):
            j = args[nreq] if len(args) > nreq else 0
            unit = {"rotate": " deg", "scale": "", "translate": " px"}[name]
            jtxt = " (+-%g%s jitter)" % (j, unit if name != "scale" else "") if j else ""
            if name == "scale" and j:
                jtxt = " (x[%g, %g] jitter)" % (1 - j, 1 + j)
            parts.append(text.format(*(list(args[:nreq]) + [jtxt])))
        else:
            parts.append(text.format(*args))
    return ", ".join(parts) if parts else "no shift"
