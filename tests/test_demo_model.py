"""The committed demo model (host/tinymp/models/demo.tmpm, made by tools/train_demo.py) and the
digits data set it was trained on (tinymp.datasets.digits, needs scikit-learn)."""

import importlib
import os
import struct
import sys
import types
import zlib

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = os.path.join(ROOT, "host")
MODELS = os.path.join(HOST, "tinymp", "models")
DEMO = os.path.join(MODELS, "demo.tmpm")
DEMO_FLOAT = os.path.join(MODELS, "demo_float.npz")

MIN_INT8_ACCURACY = 0.90


def _tinymp_module(name):
    """Import tinymp.<name>; if the package itself cannot be imported (e.g. its C extension is
    not built), load the pure-python module from host/tinymp through a bare package object."""
    if HOST not in sys.path:
        sys.path.append(HOST)
    try:
        import tinymp  # noqa: F401
    except Exception:
        if "tinymp" not in sys.modules:
            pkg = types.ModuleType("tinymp")
            pkg.__path__ = [os.path.join(HOST, "tinymp")]
            sys.modules["tinymp"] = pkg
    return importlib.import_module("tinymp." + name)


@pytest.fixture(scope="module")
def demo_bytes():
    with open(DEMO, "rb") as f:
        return f.read()


def test_demo_header(demo_bytes):
    data = demo_bytes
    assert len(data) >= 64
    magic, version, header_size, total_size, crc = struct.unpack_from("<4sHHII", data, 0)
    assert magic == b"TMPM"
    assert version == 1
    assert header_size == 64
    assert total_size == len(data)
    assert crc == zlib.crc32(data[16:total_size]) & 0xFFFFFFFF
    h, w, c, num_classes = struct.unpack_from("<4H", data, 16)
    assert (h, w, c) == (32, 32, 1)
    assert num_classes == 10
    scale, zp = struct.unpack_from("<fi", data, 24)
    assert scale > 0 and -128 <= zp <= 127
    num_tensors, num_layers = struct.unpack_from("<HH", data, 32)
    assert num_tensors == num_layers + 1
    names_off, names_size = struct.unpack_from("<II", data, 44)
    names = data[names_off:names_off + names_size]
    assert names.split(b"\0")[:-1] == [str(i).encode() for i in range(10)]
    assert len(data) <= 64 * 1024  # a small demo


def test_demo_float_weights():
    with np.load(DEMO_FLOAT) as z:
        assert z["stem.w"].shape == (8, 3, 3, 1)
        assert z["fc.w"].shape == (10, 64)
        assert all(z[k].dtype == np.float32 for k in z.files)


def test_digits_dataset():
    pytest.importorskip("sklearn")
    datasets = _tinymp_module("datasets")
    sizes = {}
    for split in ("train", "test", "all"):
        x, y = datasets.digits(32, split)
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.ndim == 4 and x.shape[1:] == (32, 32, 1) and x.shape[0] == y.shape[0]
        assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.9
        assert set(np.unique(y)) == set(range(10))
        sizes[split] = len(y)
    assert sizes["train"] + sizes["test"] == sizes["all"] == 1797
    assert abs(sizes["train"] / sizes["all"] - 0.7) < 0.01
    # deterministic, and a different seed gives a different split
    a, ya = datasets.digits(32, "test", seed=0)
    b, yb = datasets.digits(32, "test", seed=0)
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    c, _ = datasets.digits(32, "test", seed=1)
    assert not np.array_equal(a, c)
    x8, _ = datasets.digits(8, "all")
    assert x8.shape == (1797, 8, 8, 1)


def test_resize_bilinear_constant_and_corners():
    datasets = _tinymp_module("datasets")
    img = np.full((1, 8, 8), 0.25, np.float32)
    assert np.allclose(datasets.resize_bilinear(img, 32, 32), 0.25)
    ramp = np.arange(8, dtype=np.float32)[None, None, :].repeat(8, axis=1)  # [1, 8, 8]
    up = datasets.resize_bilinear(ramp, 32, 32)
    assert up.shape == (1, 32, 32)
    assert up[0, 0, 0] == 0.0 and up[0, 0, -1] == 7.0
    assert np.all(np.diff(up[0, 0]) >= 0)


def test_demo_int8_accuracy(demo_bytes):
    pytest.importorskip("sklearn")
    try:
        reference = _tinymp_module("reference")
    except ImportError:
        pytest.skip("tinymp.reference not available")
    datasets = _tinymp_module("datasets")
    model = reference.read_model(demo_bytes)
    x, y = datasets.digits(32, "test")
    v = x.astype(np.float64) / np.float32(model.input_scale)
    v = np.sign(v) * np.floor(np.abs(v) + 0.5)          # round half away from zero
    xq = np.clip(v + model.input_zero_point, -128, 127).astype(np.int8)
    pred = np.array([reference.predict(model, xq[i]) for i in range(len(xq))])
    acc = float((pred == y).mean())
    assert acc >= MIN_INT8_ACCURACY, "int8 accuracy %.4f" % acc
