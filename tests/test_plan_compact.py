"""The compact plan (tmp_train_plan_compact) against the planner's own dense plan, in C: the
program tests/plan_compact_check.c is built with the whole core under the address and
undefined-behaviour sanitizers and run on the demo model, MCUNet and MobileNetV2. For every
method it compares every table entry, array, channel selection and describe() line of the two
plans, then trains one trainer on each (plain steps, APU period ends, feature-cache fill and
cached steps) and requires equal losses and arenas bit for bit, with the planning workspace
poisoned before the compact plan's trainer runs. The bindings keep only the compact tables:
their size is what Plan.table_bytes reports."""
import os

import pytest

import train_kernels_ctypes as tkc
from tinymp import bench

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    out = tmp_path_factory.mktemp("compact")
    exe = str(out / "plan_compact_check")
    env = tkc.build_check_program(os.path.join(HERE, "plan_compact_check.c"), exe)
    return out, exe, env


@pytest.mark.parametrize("key,steps", [("demo", 12), ("mcunet", 2), ("mbv2", 2)])
def test_compact_plan_reads_and_trains_as_the_dense_plan(checker, key, steps):
    text = tkc.run_check_on_model(checker, key, steps, timeout=1200)
    lines = [l for l in text.splitlines() if not l.startswith(" ")]
    assert len(lines) == 9, text
    ok = [l for l in lines if " ok: " in l]
    # every method plans on these models (no budget is given)
    assert len(ok) == 9, text
    for l in ok:
        ws = int(l.split("workspace ")[1].split(" B")[0])
        tables = int(l.split("tables ")[1].split(" B")[0])
        assert 0 < tables < ws, l


def test_bindings_keep_only_the_compact_tables():
    import tinymp
    m = tinymp.Model(bench.model_bytes("demo"))
    for kw in (dict(method="tinymp"), dict(method="last"), dict(method="full", r=1)):
        p = m.plan(**kw)
        # the tables are a small part of the planning workspace, and training works on them
        assert 0 < p.table_bytes < 8000, (kw, p.table_bytes)
        t = tinymp.Trainer(m, p, lr=0.01)
        xs, ys = bench.make_samples(m, 3)
        for x, y in zip(xs, ys):
            t.step(x, y)
