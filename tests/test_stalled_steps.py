"""Stalled steps: a step whose loss has a gradient at the logits that the last layer's clamp mask
stops whole (every logit that should move sits at its int8 limit), so nothing trains. Too high a
learning rate drives a model there and it stays: the trainer counts such steps
(`stats()["stalled_steps"]`, `fit()["stalled_steps"]`) so that tools can say so.

The expectation per step is worked out here from the step's own logits (the trainer's forward
pass, which the step repeats before it changes anything) and the mask rule of
reference_train.py (a gradient passes where act_min < y < act_max), not from the counter."""
import numpy as np
import pytest

import tinymp
from tinymp import reference, zoo


@pytest.fixture(scope="module")
def demo():
    data = zoo.demo()
    m = tinymp.Model(data)
    ref = reference.read_model(data)
    last = ref.layers[-1]
    out = ref.tensors[last.out]
    limits = (last.act_min, last.act_max, float(out.scale), int(out.zero_point))
    rng = np.random.default_rng(3)
    n = 40
    xs = [rng.integers(-128, 128, size=int(np.prod(m.input_shape)), dtype=np.int8).tobytes()
          for _ in range(n)]
    ys = [i % m.num_classes for i in range(n)]
    return m, xs, ys, limits


def expected_stall(z, label, limits):
    """1 / 0 when the rule decides it for any float rounding, None when it hinges on whether a
    softmax probability rounds to exactly 1 (the label's logit alone at the top). z: the
    dequantised logits, (q - zero_point) * scale."""
    lo, hi, scale, zp = limits
    q = [int(round(v / scale)) + zp for v in z]
    assert all(-128 <= v <= 127 for v in q)
    top = max(q)
    label_not_alone_on_top = q[label] < top or q.count(top) > 1  # then p[label] <= 1/2
    passes = [lo < v < hi for v in q]
    if label_not_alone_on_top and not any(passes):
        return 1  # the label's gradient p - 1 <= -1/2 is non-zero and nothing passes
    if label_not_alone_on_top and passes[label]:
        return 0  # that non-zero gradient passes
    return None


@pytest.mark.parametrize("method,lr", [("last", 1.0), ("tinymp", 1.0), ("full", 0.05),
                                       ("tinymp", 0.01)])
def test_stalled_steps_follow_the_mask_rule(demo, method, lr):
    m, xs, ys, limits = demo
    p = m.plan(method=method, budget=None if method == "full" else 16 * 1024)
    t = tinymp.Trainer(m, p, lr=lr, seed=1)
    seen = {0: 0, 1: 0}
    for epoch in range(4):
        for x, y in zip(xs, ys):
            q = t.logits(x)
            before = t.stats()["stalled_steps"]
            t.step(x, y)
            got = t.stats()["stalled_steps"] - before
            want = expected_stall(q, y, limits)
            if want is not None:
                assert got == want, (epoch, list(q), y)
                seen[want] += 1
            else:
                assert got in (0, 1)
    assert t.stats()["steps"] == 4 * len(xs)
    if lr >= 0.05:  # these rates drive the logits to their limits on this model
        assert seen[1] > 0, seen
    else:
        assert seen[1] == 0 and seen[0] > 0, seen


def test_fit_counts_its_own_stalled_steps(demo):
    m, xs, ys, limits = demo
    p = m.plan(method="last")
    t = tinymp.Trainer(m, p, lr=1.0, seed=1)
    first = t.fit(xs, ys, epochs=2)
    second = t.fit(xs, ys, epochs=3)
    assert first["stalled_steps"] + second["stalled_steps"] == t.stats()["stalled_steps"]
    # stuck: once the logits sit at their limits no step moves them back
    assert second["stalled_steps"] == second["steps"] == 3 * len(xs)
    assert second["loss"][0] == second["loss"][-1]
    ok = tinymp.Trainer(m, p, lr=0.01, seed=1).fit(xs, ys, epochs=2)
    assert ok["stalled_steps"] == 0
