"""Make the demo's shifted digits: host/tinymp/models/digits_shifted.npz (the scene the simulated
camera sees, and what `tinymp demo` collects) and digits_shifted_test.npz (held out, to evaluate).

Source: the test split of tinymp.datasets.digits (scikit-learn's bundled UCI handwritten digits,
never seen by the demo model's training), 32x32. The shift is what a person's own camera adds:
every digit is rotated by ANGLE degrees (plus or minus JITTER), shrunk to SCALE and moved by
SHIFT pixels (bilinear resampling, numpy only), then stored as uint8 grey levels. Deterministic:
a fixed seed, no network. Run from the repository root:

    .venv/bin/python tools/make_demo_scene.py [--check]

--check regenerates in memory and compares with the committed files.
"""
import io
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "host"))

from tinymp.datasets import digits  # noqa: E402

ANGLE, JITTER, SCALE, SHIFT = 30.0, 5.0, 0.8, (2.0, -2.0)
PER_CLASS = 20  # personal samples per class in the scene; the rest is held out
SEED = 5
OUT = os.path.join(ROOT, "host", "tinymp", "models")


def warp(img, angle, scale, shift):
    """Rotate by `angle` degrees about the centre, scale, translate by shift=(dy, dx); bilinear,
    zero outside. img: float [H, W]."""
    h, w = img.shape
    th = np.deg2rad(angle)
    c, s = np.cos(th), np.sin(th)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                         indexing="ij")
    cy, cx = (h - 1) / 2, (w - 1) / 2
    u, v = xx - cx - shift[1], yy - cy - shift[0]
    sx = (c * u + s * v) / scale + cx
    sy = (-s * u + c * v) / scale + cy
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, sy - y0

    def at(yi, xi):
        ok = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        return img[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)] * ok

    return (at(y0, x0) * (1 - fx) * (1 - fy) + at(y0, x0 + 1) * fx * (1 - fy)
            + at(y0 + 1, x0) * (1 - fx) * fy + at(y0 + 1, x0 + 1) * fx * fy)


def make():
    x, y = digits(split="test")
    rng = np.random.default_rng(SEED)
    imgs = np.empty((len(y), 32, 32), dtype=np.uint8)
    for i in range(len(y)):
        a = ANGLE + rng.uniform(-JITTER, JITTER)
        out = warp(x[i, :, :, 0].astype(np.float64), a, SCALE, SHIFT)
        imgs[i] = np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
    personal = np.concatenate([np.flatnonzero(y == c)[:PER_CLASS] for c in range(10)])
    personal = personal[rng.permutation(len(personal))]
    held = np.setdiff1d(np.arange(len(y)), personal)
    return ({"x": imgs[personal], "y": y[personal].astype(np.int64)},
            {"x": imgs[held], "y": y[held].astype(np.int64)})


def npz_bytes(arrays):
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def main():
    scene, test = make()
    files = {"digits_shifted.npz": scene, "digits_shifted_test.npz": test}
    if "--check" in sys.argv:
        for name, arrays in files.items():
            with np.load(os.path.join(OUT, name)) as d:
                for k, v in arrays.items():
                    if not np.array_equal(d[k], v):
                        sys.exit(f"{name}: {k} differs from what this script makes")
        print("digits_shifted*.npz: identical to what this script makes")
        return
    for name, arrays in files.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(npz_bytes(arrays))
        print(f"wrote {name}: {len(arrays['y'])} images")


if __name__ == "__main__":
    main()
