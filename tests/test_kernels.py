"""Every int8 kernel of the C engine matches the independent numpy reference bit for bit, on
randomised shapes, strides, paddings, zero points, multipliers and activation ranges."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinymp
from tinymp import reference

import kernel_models as km

SETTINGS = settings(max_examples=60, deadline=None)


def check(model_bytes, layer, rng):
    m = tinymp.Model(model_bytes)
    h, w, c = m.input_shape
    for _ in range(2):
        x = rng.integers(-128, 128, size=(h, w, c)).astype(np.int8)
        got = np.frombuffer(m._run_to(x.tobytes(), layer), dtype=np.int8)
        want = reference.run(model_bytes, x, upto=layer)[layer].reshape(-1)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        # the whole model too: logits and class
        np.testing.assert_array_equal(np.asarray(m.logits(x), dtype=np.float32),
                                      reference.logits(model_bytes, x))
        assert m.predict(x) == reference.predict(model_bytes, x)
    return m


@SETTINGS
@given(seed=km.seeds, h=st.integers(1, 12), w=st.integers(1, 12), cin=st.integers(1, 9),
       cout=st.integers(1, 9), k=st.sampled_from([1, 2, 3, 5, 7]), sh=st.integers(1, 3),
       sw=st.integers(1, 3), data=st.data())
def test_conv(seed, h, w, cin, cout, k, sh, sw, data):
    rng = np.random.default_rng(seed)
    pads = tuple(data.draw(st.integers(0, k - 1)) for _ in range(4))
    if h + pads[0] + pads[2] < k or w + pads[1] + pads[3] < k:
        pads = (k - 1,) * 4
    model, layer = km.conv_like(rng, "conv", h, w, cin, cout, k, (sh, sw), pads)
    check(model, layer, rng)


@pytest.mark.parametrize("h, w, cin, cout, k, stride, pads", [
    # blocks of patches (tmp_conv_s8.c, conv_block_pixels()): 27-byte patches, a 30-pixel block
    # cap from the layer's 3,259 bytes, so 121 output pixels are 4 blocks and a 1-pixel one;
    # padding on every side, an odd channel count (a channel paired with itself)
    (21, 21, 3, 16, 3, (2, 2), (1, 1, 1, 1)),
    (21, 21, 3, 15, 3, (2, 2), (1, 0, 1, 0)),
    # a first layer's shape: blocks of 32 pixels, zero points at the padding of all four edges
    (64, 64, 3, 16, 3, (2, 2), (1, 1, 1, 1)),
    # patches of 72 bytes (3x3x8): blocks of 14, 16x16 pixels
    (16, 16, 8, 16, 3, (1, 1), (1, 1, 1, 1)),
    # 225-byte patches on a small layer: one patch at a time
    (6, 6, 9, 5, 5, (1, 1), (2, 2, 2, 2)),
])
def test_conv_paths(h, w, cin, cout, k, stride, pads):
    rng = np.random.default_rng(h * 1000 + cout)
    model, layer = km.conv_like(rng, "conv", h, w, cin, cout, k, stride, pads)
    check(model, layer, rng)


@SETTINGS
@given(seed=km.seeds, h=st.integers(1, 14), w=st.integers(1, 14), c=st.integers(1, 12),
       k=st.sampled_from([3, 5, 7]), stride=st.sampled_from([1, 2]), prefix=st.booleans(),
       data=st.data())
def test_dwconv(seed, h, w, c, k, stride, prefix, data):
    rng = np.random.default_rng(seed)
    pads = tuple(data.draw(st.integers(0, k - 1)) for _ in range(4))
    if h + pads[0] + pads[2] < k or w + pads[1] + pads[3] < k:
        pads = (k - 1,) * 4
    model, layer = km.conv_like(rng, "dwconv", h, w, c, c, k, (stride, stride), pads, prefix_pw=prefix)
    check(model, layer, rng)


@SETTINGS
@given(seed=km.seeds, h=st.integers(1, 10), w=st.integers(1, 10), cin=st.integers(1, 40),
       cout=st.integers(1, 40))
def test_pwconv(seed, h, w, cin, cout):
    rng = np.random.default_rng(seed)
    model, layer = km.conv_like(rng, "pwconv", h, w, cin, cout, 1, (1, 1), (0, 0, 0, 0))
    check(model, layer, rng)


@SETTINGS
@given(seed=km.seeds, h=st.integers(1, 8), w=st.integers(1, 8), c=st.integers(1, 16),
       first=st.booleans())
def test_add(seed, h, w, c, first):
    rng = np.random.default_rng(seed)
    model, layer = km.add_model(rng, h, w, c, first)
    check(model, layer, rng)


@SETTINGS
@given(seed=km.seeds, h=st.integers(1, 16), w=st.integers(1, 16), c=st.integers(1, 24))
def test_avgpool(seed, h, w, c):
    rng = np.random.default_rng(seed)
    model, layer = km.avgpool_model(rng, h, w, c)
    check(model, layer, rng)


@SETTINGS
@given(seed=km.seeds, h=st.integers(1, 4), w=st.integers(1, 4), c=st.integers(1, 64))
def test_fc(seed, h, w, c):
    rng = np.random.default_rng(seed)
    model, layer = km.fc_model(rng, h, w, c)
    check(model, layer, rng)


def test_in_place_depthwise_is_used_and_exact(rng):
    """A pwconv -> dwconv chain with many channels: the planner runs the dwconv in place (its
    input dies there and one plane of scratch is smaller than a whole output), and the result
    still matches the reference exactly, for stride 1 and 2. The map is large enough (48 x 48
    x 16) that the pwconv takes no widened-input block (tmp_pwconv_s8.c keeps it off layers
    above 64 KiB), which on a small map would make the pwconv the peak instead.
    Stride 1 with padding needs one channel plane of scratch (a window reads the pixel left of
    and above its own, which an earlier output has overwritten); stride 2 and an unpadded
    stride 1 write over the input directly, with no scratch."""
    for stride, pads, scratch in ((1, (1, 1, 1, 1), 48 * 48), (2, (1, 1, 1, 1), 0),
                                  (2, (0, 0, 1, 1), 0), (1, (0, 0, 0, 0), 0)):
        model, layer = km.conv_like(rng, "dwconv", 48, 48, 16, 16, 3, (stride, stride),
                                    pads, prefix_pw=True)
        m = check(model, layer, rng)
        plan = m._plan()
        assert plan["in_place"][layer], "the dwconv was expected to run in place"
        assert plan["scratch_bytes"][layer] == scratch, (stride, pads)
