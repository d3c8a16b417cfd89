"""Whole models, end to end: the C engine's logits and classes equal the independent numpy
reference's, bit for bit, on the demo model and on every zoo architecture."""
import numpy as np
import pytest

import tinymp
from tinymp import reference, zoo

MODELS = {
    "demo": lambda: zoo.demo(),
    "mobilenetv2-w0.35@96": lambda: zoo.mobilenetv2(width=0.35, resolution=96),
    "mobilenetv2-w0.5@96": lambda: zoo.mobilenetv2(width=0.5, resolution=96),
    "mcunet-5fps@96": lambda: zoo.mcunet(resolution=96),
    "proxylessnas-w0.3@96": lambda: zoo.proxylessnas(width=0.3, resolution=96),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_engine_matches_reference_end_to_end(name):
    data = MODELS[name]()
    m = tinymp.Model(data)
    ref = reference.read_model(data)
    assert m.input_shape == tuple(ref.input_shape) and m.num_classes == ref.num_classes
    rng = np.random.default_rng(11)
    for _ in range(2):
        x = rng.integers(-128, 128, size=m.input_shape).astype(np.int8)
        outs = reference.run(ref, x)
        np.testing.assert_array_equal(np.asarray(m.logits(x), np.float32), reference.logits(ref, x))
        assert m.predict(x) == reference.predict(ref, x)
        # and every intermediate tensor along the way, at a few depths
        for layer in sorted({0, len(outs) // 3, 2 * len(outs) // 3, len(outs) - 2}):
            got = np.frombuffer(m._run_to(x, layer), np.int8)
            np.testing.assert_array_equal(got, outs[layer].reshape(-1), err_msg=f"layer {layer}")


def test_model_from_path_and_memoryview(tmp_path):
    data = zoo.demo()
    p = tmp_path / "demo.tmpm"
    p.write_bytes(data)
    x = bytes(range(256)) * 4
    a = tinymp.Model(str(p)).logits(x)
    b = tinymp.Model(memoryview(bytearray(data))).logits(x)
    assert list(a) == list(b) == list(reference.logits(data, np.frombuffer(x, np.int8)))
