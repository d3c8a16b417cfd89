"""Small image data sets for demos and tests.

``digits`` is the "Optical Recognition of Handwritten Digits" data set of the UCI Machine Learning
Repository (E. Alpaydin and C. Kaynak, 1998): 1797 grey-level 8x8 images of the digits 0-9, each
pixel a count 0..16 of set pixels in a 4x4 block of a 32x32 bitmap. It is bundled with
scikit-learn (``sklearn.datasets.load_digits``, BSD-3-Clause licence), so loading it needs no
network access; scikit-learn is only needed when this function is called.

The images are upsampled to ``resolution x resolution`` with ``resize_bilinear`` (below, plain
numpy) and split into train and test sets with a fixed, seeded, stratified split, so the same
``seed`` always gives the same images in the same order.
"""

import numpy as np

__all__ = ["digits", "resize_bilinear"]

TRAIN_FRACTION = 0.7


def resize_bilinear(images, out_h, out_w):
    """Bilinear resize of ``images`` [N, H, W] (or [N, H, W, C]) to [N, out_h, out_w(, C)].

    Half-pixel-centre convention (OpenCV's ``INTER_LINEAR``, PyTorch's
    ``align_corners=False``, TF2 ``tf.image.resize``): output pixel ``o`` samples input coordinate
    ``(o + 0.5) * in / out - 0.5``, clamped to ``[0, in - 1]``, and interpolates linearly between the
    two nearest input pixels along each axis. No antialiasing (it is meant for upsampling).
    Returns float32.
    """
    x = np.asarray(images, dtype=np.float32)
    squeeze = x.ndim == 3
    if squeeze:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError("resize_bilinear: expected [N, H, W] or [N, H, W, C] images")
    in_h, in_w = x.shape[1], x.shape[2]

    def axis(n_in, n_out):
        src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0.0, n_in - 1)
        i0 = np.floor(src).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = (src - i0).astype(np.float32)
        return i0, i1, frac

    y0, y1, fy = axis(in_h, out_h)
    x0, x1, fx = axis(in_w, out_w)
    fy = fy[None, :, None, None]
    fx = fx[None, None, :, None]
    rows = x[:, y0] * (1.0 - fy) + x[:, y1] * fy            # [N, out_h, in_w, C]
    out = rows[:, :, x0] * (1.0 - fx) + rows[:, :, x1] * fx  # [N, out_h, out_w, C]
    out = out.astype(np.float32)
    return out[..., 0] if squeeze else out


def _stratified_split(y, seed):
    """Indices (train, test): per class, a seeded permutation, the first 70% go to train.

    Each index list is then shuffled with the same generator, so classes are interleaved.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        idx = idx[rng.permutation(len(idx))]
        n_train = int(round(TRAIN_FRACTION * len(idx)))
        train.append(idx[:n_train])
        test.append(idx[n_train:])
    train = np.concatenate(train)
    test = np.concatenate(test)
    return train[rng.permutation(len(train))], test[rng.permutation(len(test))]


def digits(resolution=32, split="train", seed=0):
    """The UCI handwritten digits (via scikit-learn) as ``(x, y)``.

    ``x`` is float32 ``[N, resolution, resolution, 1]`` (HWC, one channel) in ``[0, 1]`` (the
    original 0..16 counts divided by 16, then bilinearly resized); ``y`` is int64 ``[N]`` in 0..9.
    ``split`` is ``'train'`` (70% of every class, 1258 images), ``'test'`` (the other 30%, 539
    images) or ``'all'`` (all 1797 images in the original order). The split depends only on
    ``seed``.
    """
    if split not in ("train", "test", "all"):
        raise ValueError("digits: split must be 'train', 'test' or 'all', not %r" % (split,))
    resolution = int(resolution)
    if resolution < 1:
        raise ValueError("digits: resolution must be >= 1")
    from sklearn.datasets import load_digits  # bundled data, no download

    data = load_digits()
    images = np.asarray(data.images, dtype=np.float32) / 16.0  # [N, 8, 8] in [0, 1]
    y = np.asarray(data.target, dtype=np.int64)
    if split != "all":
        train_idx, test_idx = _stratified_split(y, seed)
        idx = train_idx if split == "train" else test_idx
        images, y = images[idx], y[idx]
    if resolution == images.shape[1] and resolution == images.shape[2]:
        x = images
    else:
        x = resize_bilinear(images, resolution, resolution)
    x = np.clip(x, 0.0, 1.0).astype(np.float32)[..., None]
    return x, y
