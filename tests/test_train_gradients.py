"""The training engine's gradients against the independent numpy oracle (tinymp.reference_train).

The C engine runs its int8 forward pass; the oracle is fed the *dequantised int8 activations the
engine saw* (docs/TRAINING.md section 7), so clamp masks agree exactly and every difference left is
the engine's backward arithmetic. The oracle itself is checked against central finite differences
in tests/test_reference_train.py (whole networks and every layer type), which closes the chain
engine == oracle == finite differences for exact backprop (r = 1).

Covered here, on small random networks holding every layer type (strided and padded conv,
depthwise 3x3/5x5 with stride 1 and 2, pointwise, residual add, global average pool, fc, ReLU /
ReLU6 / saturation clamps):
  * exact mode (r = 1), int8 and fp32 storage: dW and db of every weighted layer;
  * input-channel selection (compact dW of the selected channels);
  * Gradient Condensing at r = 2, 3, 4, 7: the engine equals the oracle's condensed formulas, and
    the cosine similarity of condensed to exact gradients is reported per layer type and r;
  * the TinyTrain criterion: the engine's Fisher potentials and scores equal the formula on the
    oracle's gradients, the ranking follows the scores, and the greedy selection keeps exactly the
    layers that still fit the budget.
"""
import numpy as np
import pytest

import tinymp
from tinymp import reference as ref
from tinymp import reference_train as rt
from tinymp.builder import Graph, quantize_input

# ---------------------------------------------------------------------------------- models


def _w(rng, *shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _b(rng, n):
    return (rng.standard_normal(n) * 0.1).astype(np.float32)


def random_net(seed, hw=(13, 11), cin=3, classes=5):
    """A small network with every layer type; odd sizes exercise partial patches and padding."""
    rng = np.random.default_rng(seed)
    g = Graph((hw[0], hw[1], cin))
    c1 = 8
    x = g.conv(g.input, _w(rng, c1, 3, 3, cin, fan_in=9 * cin), _b(rng, c1), stride=2, padding="same",
               act="relu6")
    y = g.pwconv(x, _w(rng, 12, c1, fan_in=c1), _b(rng, 12), act="relu")
    y = g.dwconv(y, _w(rng, 3, 3, 12, fan_in=9), _b(rng, 12), stride=1, padding="same", act="relu6")
    y = g.pwconv(y, _w(rng, c1, 12, fan_in=12), _b(rng, c1))
    x = g.add(x, y)
    y = g.dwconv(x, _w(rng, 5, 5, c1, fan_in=25), _b(rng, c1), stride=2, padding="same", act="relu")
    y = g.conv(y, _w(rng, 10, 3, 3, c1, fan_in=9 * c1), _b(rng, 10), stride=1, padding="valid",
               act="relu6")
    y = g.pwconv(y, _w(rng, 16, 10, fan_in=10), _b(rng, 16), act="relu6")
    y = g.avgpool(y)
    g.fc(y, _w(rng, classes, 16, fan_in=16), _b(rng, classes))
    calib = rng.uniform(-1, 1, size=(16, hw[0], hw[1], cin)).astype(np.float32)
    return g.quantize(calib, input_range=(-1.0, 1.0)), rng


class Fixture:
    def __init__(self, seed):
        self.data, rng = random_net(seed)
        self.m = tinymp.Model(self.data)
        self.rm = ref.read_model(self.data)
        self.net = rt.FloatNet.from_model(self.rm)
        h, w, c = self.m.input_shape
        xs = rng.uniform(-1, 1, size=(6, h, w, c)).astype(np.float32)
        self.xq = quantize_input(xs, (self.m.input_scale, self.m.input_zero_point))
        self.labels = [int(v) for v in rng.integers(0, self.m.num_classes, size=6)]

    def cache(self, xb):
        """The oracle's forward cache made of the engine's dequantised int8 activations."""
        t0 = self.rm.tensors[0]
        ts = [((np.frombuffer(xb, np.int8).astype(np.float64) - t0.zero_point) * t0.scale)
              .reshape(self.net.input_shape)]
        for i in range(len(self.rm.layers)):
            t = self.rm.tensors[i + 1]
            q = np.frombuffer(self.m._run_to(xb, i), np.int8).astype(np.float64)
            ts.append(((q - t.zero_point) * t.scale).reshape(self.net._shapes()[i + 1]))
        return rt.ForwardCache(ts)


@pytest.fixture(scope="module", params=[1, 2, 3])
def fx(request):
    return Fixture(request.param)


def engine_grads(fx, plan, i_sample=0):
    """One step with lr = 0; dW (compact, oracle layout) and db per trained layer."""
    t = tinymp.Trainer(fx.m, plan, lr=0.0)
    xb = fx.xq[i_sample].tobytes()
    loss, g = t._grads(xb, fx.labels[i_sample])
    out = {}
    for i, d in g.items():
        L = fx.net.layers[i]
        db = np.frombuffer(d["db"], np.float32) if "db" in d else None
        slices = {o: np.frombuffer(v, np.float32) for o, v in d.items() if o != "db"}
        dW = None
        if slices:
            if L.kind == "dwconv":
                kh, kw = L.W.shape[:2]
                chans = plan.channels[i]
                dW = np.stack([slices[c].reshape(kh, kw) for c in chans], axis=-1)
            else:
                k = len(plan.channels[i])
                dW = np.stack([slices[o] for o in sorted(slices)])
                dW = dW.reshape((L.W.shape[0],) + L.W.shape[1:-1] + (k,))
        out[i] = (dW, db)
    return loss, out


def oracle_grads(fx, plan, r, i_sample=0):
    xb = fx.xq[i_sample].tobytes()
    trainable = list(plan.layers)
    channels = {i: plan.channels[i] for i in trainable if i in plan.channels}
    return fx.net.backward(fx.cache(xb), fx.labels[i_sample], trainable=trainable, r=r,
                           channels=channels)


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / (np.abs(b).max() + 1e-12))


def cosine(a, b):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    return float(a @ b / (na * nb))


# ---------------------------------------------------------------------------------- exact


@pytest.mark.parametrize("storage", ["int8", "fp32"])
def test_exact_gradients_of_every_layer_match_the_oracle(fx, storage):
    plan = fx.m.plan(method="full", storage=storage)
    weighted = set(fx.net.weighted_layers())
    assert set(plan.layers) == weighted
    kinds = set()
    for s in range(3):
        loss, eng = engine_grads(fx, plan, s)
        res = oracle_grads(fx, plan, 1, s)
        assert loss == pytest.approx(res.loss, rel=1e-5, abs=1e-6)
        for i in weighted:
            dW, db = res.grads[i]
            e_dW, e_db = eng[i]
            assert rel(e_db, db) < 1e-4, (i, fx.net.layers[i].kind)
            assert rel(e_dW, dW) < 1e-4, (i, fx.net.layers[i].kind)
            kinds.add(fx.net.layers[i].kind)
    assert kinds == {"conv", "dwconv", "pwconv", "fc"}


def test_exact_gradients_with_channel_selection(fx):
    """sparse at r = 1 with ratio 1/2: the compact dW of the selected input channels."""
    layers = [i for i in fx.net.weighted_layers() if fx.net.layers[i].kind != "fc"]
    plan = fx.m.plan(method="sparse", layers=layers, ratios=[0.5] * len(layers))
    for i in layers:
        cin = fx.net.layers[i].W.shape[-1]
        assert len(plan.channels[i]) == -(-cin // 2)
    _, eng = engine_grads(fx, plan)
    res = oracle_grads(fx, plan, 1)
    for i in layers:
        assert rel(eng[i][0], res.grads[i][0]) < 1e-4


def test_gradient_reaches_only_the_backward_region(fx):
    """method 'last': only the classifier trains; nothing upstream is touched."""
    plan = fx.m.plan(method="last")
    cls = fx.net.weighted_layers()[-1]
    assert plan.layers == [cls]
    _, eng = engine_grads(fx, plan)
    assert set(eng) == {cls}
    res = oracle_grads(fx, plan, 1)
    assert rel(eng[cls][0], res.grads[cls][0]) < 1e-5
    assert rel(eng[cls][1], res.grads[cls][1]) < 1e-5


# ---------------------------------------------------------------------------------- condensed

R_VALUES = [1, 2, 3, 4, 7]


def condensed_similarity(fx):
    """{(layer, r): [cosine of condensed vs exact dW per sample]}, checking on the way that the
    engine equals the oracle's condensed formulas."""
    out = {}
    layers = [i for i in fx.net.weighted_layers()]
    for r in R_VALUES:
        plan = fx.m.plan(method="tinymp", r=r, ratio=1.0, n_bias=-1)
        assert plan.r == r and set(plan.layers) == set(layers)
        for s in range(2):
            _, eng = engine_grads(fx, plan, s)
            cond = oracle_grads(fx, plan, r, s)
            exact = oracle_grads(fx, plan, 1, s)
            for i in layers:
                kind = fx.net.layers[i].kind
                # the engine computes the documented condensed formulas
                assert rel(eng[i][0], cond.grads[i][0]) < 1e-4, (kind, r, i)
                # the bias gradient is exact given the (condensed) gradient reaching the layer
                assert rel(eng[i][1], cond.grads[i][1]) < 1e-4, (kind, r, i)
                out.setdefault((i, r), []).append(cosine(eng[i][0], exact.grads[i][0]))
    return out


def test_condensed_gradients_match_formulas_and_report_similarity(fx, capsys):
    """docs/TRAINING.md section 3, "How condensed gradients depend on r": equal to the exact
    gradient at r = 1 (and at every r for fc, whose input is 1 x 1); an approximation for
    r >= 2; and once every window of the layer and of the layers after it covers its whole
    input, a larger r changes nothing (one patch per map), so the similarity saturates."""
    sims = condensed_similarity(fx)
    shapes = fx.net._shapes()
    kinds = {i: fx.net.layers[i].kind for i in fx.net.weighted_layers()}
    with capsys.disabled():
        print("\ncosine(condensed dW, exact dW) per layer, mean over samples:")
        for i, kind in kinds.items():
            row = "  ".join("r=%d %.3f" % (r, np.mean(sims[(i, r)])) for r in R_VALUES)
            print("  layer %2d %-7s in %-10s %s" % (i, kind, "x".join(map(str, shapes[fx.net.layers[i].in0])), row))
    for i, kind in kinds.items():
        assert min(sims[(i, 1)]) > 1 - 1e-5, "r = 1 is exact backprop"
        if kind == "fc":
            assert all(min(sims[(i, r)]) > 1 - 1e-4 for r in R_VALUES)
    assert any(np.mean(sims[(i, 2)]) < 1 - 1e-3 for i, k in kinds.items() if k != "fc"), \
        "r = 2 is an approximation"

    def covered(i, r):
        # every layer from i on sees its whole input in one window: r * stride >= H, W
        for j in range(i, len(fx.net.layers)):
            L = fx.net.layers[j]
            h, w, _ = shapes[L.in0]
            s = L.stride if L.kind in ("conv", "dwconv") else (1, 1)
            if h > r * s[0] or w > r * s[1]:
                return False
        return True

    saturated = 0
    for i in kinds:
        for r1, r2 in zip(R_VALUES[1:], R_VALUES[2:]):
            if covered(i, r1):
                np.testing.assert_allclose(sims[(i, r1)], sims[(i, r2)], atol=1e-6)
                saturated += 1
    assert saturated > 0


# ---------------------------------------------------------------------------------- TinyTrain


def test_tinytrain_potentials_and_scores_follow_the_formula(fx):
    n = 4
    support = ([fx.xq[i].tobytes() for i in range(n)], fx.labels[:n])
    r = 2
    plan = fx.m.plan(method="tinytrain", support=support, r=r, ratio=0.5)
    info = plan._layers()
    # the oracle: Delta from the engine's activations and the oracle's condensed gradients of
    # every sample's own loss, over the layers of the selection pass (all of them here)
    per_layer_a, per_layer_g = {}, {}
    everything = fx.net.weighted_layers()
    for s in range(n):
        xb = fx.xq[s].tobytes()
        cache = fx.cache(xb)
        res = fx.net.backward(cache, fx.labels[s], trainable=everything, r=r, input_grad=False)
        for i in range(len(fx.net.layers)):
            if i + 1 in res.tensor_grads:
                per_layer_a.setdefault(i, []).append(cache.tensors[i + 1])
                per_layer_g.setdefault(i, []).append(res.tensor_grads[i + 1])
    convs = [i for i in everything if fx.net.layers[i].kind != "fc"]
    P = {i: rt.layer_potential(rt.fisher_channel_potential(np.stack(per_layer_a[i]),
                                                           np.stack(per_layer_g[i])))
         for i in convs}
    for i in convs:
        assert info[i]["potential"] == pytest.approx(P[i], rel=2e-3, abs=1e-9), i
    wc = [fx.net.layer_weight_count(i) for i in convs]
    macs = [info[i]["fwd_macs"] for i in convs]
    assert macs == [fx.net.layer_macs(i) for i in convs]
    scores = rt.tinytrain_scores([P[i] for i in convs], wc, macs)
    eng_scores = [info[i]["score"] for i in convs]
    np.testing.assert_allclose(eng_scores, scores, rtol=2e-3)
    # without a budget every candidate is kept; the classifier always trains
    assert set(plan.layers) == set(everything)


def test_tinytrain_greedy_keeps_exactly_the_layers_that_fit(fx):
    n = 3
    support = ([fx.xq[i].tobytes() for i in range(n)], fx.labels[:n])
    free = fx.m.plan(method="tinytrain", support=support, r=2, ratio=0.5)
    convs = [i for i in fx.net.weighted_layers() if fx.net.layers[i].kind != "fc"]
    cls = fx.net.weighted_layers()[-1]
    base = fx.m.plan(method="last").arena_bytes
    budget = (base + free.arena_bytes) // 2
    plan = fx.m.plan(method="tinytrain", support=support, r=2, ratio=0.5, budget=budget)
    assert plan.arena_bytes <= budget
    # the candidates are the layers the selection pass covered within the same budget (it runs
    # on the device too); they are walked by descending score
    info = plan._layers()
    cands = [i for i in convs if info[i]["score"] > 0]
    assert cands, "the selection pass covers some layers"
    ranking = [cands[j] for j in rt.rank_layers([info[i]["score"] for i in cands])]
    # replay the greedy walk with the same table built by method 'sparse'
    chosen = []
    for c in ranking:
        trial = fx.m.plan(method="sparse", layers=chosen + [c], ratios=[0.5] * (len(chosen) + 1),
                          r=2)
        if trial.arena_bytes <= budget:
            chosen.append(c)
    assert set(plan.layers) == set(chosen) | {cls}
    assert 0 < len(chosen) < len(cands), "the budget must make the greedy walk choose"
