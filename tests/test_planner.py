"""The inference planner: the arena it reports is exactly what inference touches, no two
tensors alive at the same time share a byte, and the result is close to the lower bound."""
import numpy as np
import pytest

import tinymp
from tinymp import reference

import kernel_models as km


def zoo_models():
    from tinymp import zoo
    return [
        ("demo", zoo.demo()),
        ("mobilenetv2-w0.35@96", zoo.mobilenetv2(width=0.35, resolution=96)),
        ("mcunet@96", zoo.mcunet(resolution=96)),
        ("proxylessnas-w0.3@96", zoo.proxylessnas(width=0.3, resolution=96)),
    ]


@pytest.fixture(scope="module")
def models():
    return zoo_models()


def buffers(model_bytes, plan):
    """Independent view of the plan: (start, end, first_layer, last_layer) per arena buffer,
    from the reference parser's tensor shapes and the plan's offsets."""
    ref = reference.read_model(model_bytes)
    n_layers = len(ref.layers)
    last = {t: t - 1 for t in range(n_layers + 1)}
    for i, l in enumerate(ref.layers):
        for t in (l.in0, l.in1):
            if t is not None and t != 0xFFFF:
                last[t] = max(last[t], i)
    last[n_layers] = n_layers
    bufs = []
    for t in range(1, n_layers + 1):
        tt = ref.tensors[t]
        size = tt.h * tt.w * tt.c
        bufs.append(("tensor", t, plan["tensor_offset"][t], size, t - 1, last[t]))
    for i in range(n_layers):
        if plan["scratch_bytes"][i]:
            bufs.append(("scratch", i, plan["scratch_offset"][i], plan["scratch_bytes"][i], i, i))
    return ref, bufs


def check_plan(model_bytes):
    m = tinymp.Model(model_bytes)
    plan = m._plan()
    assert plan["arena_bytes"] == m.inference_arena_bytes
    ref, bufs = buffers(model_bytes, plan)
    in_place = plan["in_place"]
    for kind, idx, off, size, first, last in bufs:
        assert off % 4 == 0
        assert off + size <= plan["arena_bytes"], (kind, idx)
    for a in range(len(bufs)):
        for b in range(a + 1, len(bufs)):
            ka, ia, oa, sa, fa, la = bufs[a]
            kb, ib, ob, sb, fb, lb = bufs[b]
            if not (fa <= lb and fb <= la) or not (oa < ob + sb and ob < oa + sa):
                continue
            # the only allowed sharing: a layer's output over the input it consumes in place
            pair = {(ka, ia), (kb, ib)}
            ok = False
            for i, l in enumerate(ref.layers):
                if in_place[i] and ("tensor", i + 1) in pair:
                    victim = l.in1 if in_place[i] == 2 else l.in0
                    if ("tensor", victim) in pair:
                        ok = True
            assert ok, f"{bufs[a]} and {bufs[b]} overlap while both alive"
    assert plan["arena_bytes"] >= plan["peak_live_bytes"]  # no placement beats the live bytes
    return m, plan


def test_zoo_plans_are_sound_and_touch_exactly_the_arena(models):
    for name, data in models:
        m, plan = check_plan(data)
        rng = np.random.default_rng(0)
        x = rng.integers(-128, 128, size=m.input_shape).astype(np.int8).tobytes()
        high, guard_ok = m._probe(x)
        assert guard_ok, f"{name}: guard bytes past the arena were written"
        assert high <= plan["arena_bytes"]
        assert high >= 0.95 * plan["arena_bytes"], f"{name}: plan not tight ({high} of {plan['arena_bytes']})"
        # greedy placement stays close to the lower bound of simultaneously live bytes
        assert plan["arena_bytes"] <= 1.25 * plan["peak_live_bytes"], name
        print(f"{name}: arena {plan['arena_bytes']} B, lower bound {plan['peak_live_bytes']} B, "
              f"high water {high} B")


def test_in_place_depthwise_lowers_mobilenet_arena(models):
    data = dict(models)["mobilenetv2-w0.35@96"]
    m = tinymp.Model(data)
    plan = m._plan()
    layers = m._layers()
    dw_in_place = [i for i, l in enumerate(layers) if l["type"] == "dwconv" and plan["in_place"][i]]
    assert dw_in_place, "no depthwise layer was run in place"


@pytest.mark.parametrize("seed", range(40))
def test_random_chains_plan_soundly(seed):
    rng = np.random.default_rng(seed)
    kind = ["conv", "dwconv", "pwconv"][seed % 3]
    model, _ = km.conv_like(rng, kind, int(rng.integers(3, 12)), int(rng.integers(3, 12)),
                            int(rng.integers(1, 10)), int(rng.integers(1, 10)), 3, (1 + seed % 2, 1),
                            (1, 1, 1, 1), prefix_pw=bool(seed % 2))
    m, plan = check_plan(model)
    high, guard_ok = m._probe(bytes(int(np.prod(m.input_shape))))
    assert guard_ok and high <= plan["arena_bytes"]


@pytest.mark.parametrize("method", ["none", "last", "bias", "full", "sparse"])
def test_a_ratio_is_refused_by_methods_that_do_not_pick_channels_by_it(method):
    # their plans train every channel of their layers (sparse: each listed layer's own ratio):
    # a ratio below 1 was reported as the plan's while the same channels were trained
    from tinymp import zoo
    m = tinymp.Model(zoo.demo())
    kw = {"layers": [12, 13], "ratios": [0.5, 1.0]} if method == "sparse" else {}
    with pytest.raises(ValueError, match="ratio must be 1"):
        m.plan(method=method, ratio=0.5, **kw)
    p, q = m.plan(method=method, ratio=1, **kw), m.plan(method=method, **kw)
    assert p.ratio == q.ratio == 1.0 and p.channels == q.channels and p.arena_bytes == q.arena_bytes
    if method == "sparse":  # the per-layer ratio sets the channels: half of layer 12's inputs
        assert len(p.channels[12]) * 2 == len(m.plan(method="sparse", layers=[12]).channels[12])


def test_a_ratio_sets_the_channels_of_tinymp_and_tinytrain():
    from tinymp import zoo
    m = tinymp.Model(zoo.demo())
    support = ([bytes(32 * 32)] * 2, [0, 1])
    for method, kw in (("tinymp", {}), ("tinytrain", {"support": support})):
        half, quarter = m.plan(method=method, ratio=0.5, **kw), m.plan(method=method, ratio=0.25, **kw)
        assert half.ratio == 0.5
        assert sum(map(len, half.channels.values())) > sum(map(len, quarter.channels.values()))
