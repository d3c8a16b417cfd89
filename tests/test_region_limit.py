"""The region limit of the layer selection (`step_share`, docs/TRAINING.md section 5).

With the feature cache, every epoch after the first runs the forward pass only from the first
layer of the backward region on. A candidate layer far earlier than the others opens the region
there, and every cached step then pays for the whole stretch in between. tinymp therefore adds a
candidate that moves the region earlier only while a step from the cache (forward MACs over the
region plus backward MACs) stays within `step_share` of an inference (default 1/4).

The MACs are checked against a count made here from the layers' shapes, the admissions against
the limit's definition, and the executed cost against the trainer's own counters.
"""
import math

import numpy as np
import pytest

tinymp = pytest.importorskip("tinymp")
from tinymp import bench  # noqa: E402


def fwd_macs(m, layer):
    """MACs of one layer's forward pass, from the shapes alone."""
    src = layer["in0"]
    ih, iw, ic = m.input_shape if src == 0 else m._layers()[src - 1]["out_shape"]
    oh, ow, oc = layer["out_shape"]
    t = layer["type"]
    if t == "conv":
        return oh * ow * oc * layer["kh"] * layer["kw"] * ic
    if t == "dwconv":
        return oh * ow * oc * layer["kh"] * layer["kw"]
    if t == "pwconv":
        return oh * ow * oc * ic
    if t == "fc":
        return ih * iw * ic * oc
    return 0


@pytest.fixture(scope="module")
def models():
    return {k: tinymp.Model(bench.model_bytes(k)) for k in ("demo", "mbv2", "mcunet")}


def base_first(m, n_bias=2):
    """Where the classifier and the biases of the last n_bias conv-like layers open the region."""
    lay = m._layers()
    convs = [i for i, l in enumerate(lay) if l["type"] in ("conv", "dwconv", "pwconv")]
    cls = max(i for i, l in enumerate(lay) if l["type"] in ("conv", "dwconv", "pwconv", "fc"))
    return min([cls] + [i for i in convs if i != cls][-n_bias:])


BUDGETS = {"demo": [12000, 14000, 16384, 30000, None],
           "mbv2": [252 * 1024, 300 * 1024, 348096, None],
           "mcunet": [200 * 1024, 252 * 1024, 342488, None]}
CASES = [(k, b) for k, bs in BUDGETS.items() for b in bs]


@pytest.mark.parametrize("key,budget", CASES, ids=["%s-%s" % c for c in CASES])
def test_step_macs_is_the_region_forward_plus_backward(models, key, budget):
    m = models[key]
    p = m.plan(method="tinymp", budget=budget)
    lay = m._layers()
    fwd = [fwd_macs(m, l) for l in lay]
    assert p.forward_macs == sum(fwd)
    assert p.step_macs == sum(fwd[p.first:]) + p.backward_macs


@pytest.mark.parametrize("key,budget", CASES, ids=["%s-%s" % c for c in CASES])
def test_tinymp_keeps_a_cached_step_within_the_share(models, key, budget):
    m = models[key]
    p = m.plan(method="tinymp", budget=budget)
    assert p.step_share == pytest.approx(0.25)
    if p.first < base_first(m):
        assert p.step_macs <= 0.25 * p.forward_macs
    if budget is not None:
        assert p.arena_bytes <= budget
    # every trained layer lies in the region and the classifier is trained
    assert all(i >= p.first for i in p.layers)


@pytest.mark.parametrize("share", [0.1, 0.5, 1.0])
def test_an_explicit_share_bounds_the_step(models, share):
    m = models["mbv2"]
    p = m.plan(method="tinymp", budget=348096, step_share=share)
    assert p.step_share == pytest.approx(share)
    if p.first < base_first(m):
        assert p.step_macs <= share * p.forward_macs


def test_a_larger_share_never_starts_the_region_later(models):
    m = models["mbv2"]
    firsts = [m.plan(method="tinymp", budget=348096, step_share=s).first for s in (0.1, 0.25, 0.5, 1.0)]
    assert firsts == sorted(firsts, reverse=True)


def test_the_stray_early_layer_is_gone(models):
    """MobileNetV2 at the SparseUpdate set's size: without the limit the greedy admits layer 10
    (2 channels) and the region starts there; with it, every trained layer is in the last
    stages, and the limit lifted gives the old choice back."""
    m = models["mbv2"]
    limited = m.plan(method="tinymp", budget=348096)
    assert min(limited.layers) >= 50
    free = m.plan(method="tinymp", budget=348096, step_share=math.inf)
    assert free.step_share is None
    assert free.first <= 22 and 10 in free.layers
    assert free.step_macs > 2 * limited.step_macs


def test_other_methods_have_no_limit(models):
    m = models["demo"]
    for method in ("last", "bias", "full"):
        assert m.plan(method=method).step_share is None
    p = m.plan(method="sparse", layers=[6, 14], ratios=[0.5, 0.5])
    assert p.step_share is None and p.first == 6
    # nor do they take one: it would be reported as theirs and change nothing
    for method, kw in (("last", {}), ("bias", {}), ("full", {}), ("none", {}),
                       ("sparse", {"layers": [6, 14]})):
        with pytest.raises(ValueError, match=r"^tinymp: step_share limits the layer selection of "
                           r"methods tinymp and tinytrain; methods none, last, bias, sparse and "
                           r"full select no layers$"):
            m.plan(method=method, step_share=0.5, **kw)
    # the limit is tinymp's default, and an option of both selecting methods
    sup = [bytes(np.zeros(32 * 32, np.int8))] * 2
    assert m.plan(method="tinytrain", support=(sup, [0, 1])).step_share is None
    assert m.plan(method="tinytrain", support=(sup, [0, 1]), step_share=0.2).step_share == \
        pytest.approx(0.2)


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-1, ValueError), (float("nan"), ValueError),
                                     ("1/4", TypeError), (True, TypeError)])
def test_bad_step_share_is_one_clear_error(models, bad, exc):
    with pytest.raises(exc, match="step_share"):
        models["demo"].plan(method="tinymp", step_share=bad)


def test_a_cached_step_runs_what_the_plan_says(models):
    """The trainer's own counters: an epoch from the cache runs step_macs - backward_macs
    forward MACs per sample, and the default plan's epochs cost less than those of a wider one."""
    m = models["demo"]
    rng = np.random.default_rng(0)
    xs = [rng.integers(-128, 128, 32 * 32, dtype=np.int8).tobytes() for _ in range(6)]
    ys = [i % 10 for i in range(6)]
    fwd = {}
    for share in (None, 1.0):
        p = m.plan(method="tinymp", step_share=share, cache=6)
        assert p.cache_samples == 6
        one, two = tinymp.Trainer(m, p, lr=0.001, seed=0), tinymp.Trainer(m, p, lr=0.001, seed=0)
        assert one.fit(xs, ys, epochs=1)["cached_steps"] == 0
        assert two.fit(xs, ys, epochs=2)["cached_steps"] == 6
        per_step, rest = divmod(two.stats()["forward_macs"] - one.stats()["forward_macs"], 6)
        assert rest == 0
        assert per_step == p.step_macs - p.backward_macs
        fwd[share] = per_step
    assert fwd[None] < fwd[1.0]
