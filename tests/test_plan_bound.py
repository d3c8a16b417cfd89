"""The training planner turns down a table whose arena cannot fit the budget before placing it
(arena_lower_bound in tmp_train_plan.c: the live bytes of every step, less what an in-place
choice could save there). tests/plan_bound_check.c, built with the core under the address and
undefined-behaviour sanitizers, checks on the demo model, MCUNet and MobileNetV2 that the bound
never exceeds the placed arena of a random table under random in-place choices, and that every
method over a sweep of budgets (the smallest that fits, either side of it, up to eight times it,
and budgets equal to the arenas it placed) plans exactly as the planner does without the bound:
status, error, and every plan field.
Planning on the board is where it pays: see the *plan* column of bench/RESULTS.md."""
import os
import re

import pytest

import train_kernels_ctypes as tkc

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    out = tmp_path_factory.mktemp("bound")
    exe = str(out / "plan_bound_check")
    env = tkc.build_check_program(os.path.join(HERE, "plan_bound_check.c"), exe,
                                  includes=["tmp_train_plan.c"])
    return out, exe, env


@pytest.mark.parametrize("key,tables", [("demo", 300), ("mcunet", 40), ("mbv2", 40)])
def test_bound_holds_and_changes_no_plan(checker, key, tables):
    text = tkc.run_check_on_model(checker, key, tables, timeout=1800)
    b = re.search(r"bounds: (\d+) tables, (\d+) placements, bound/arena mean ([\d.]+), lowest ([\d.]+)",
                  text)
    assert b and int(b.group(1)) == tables and int(b.group(2)) == 6 * tables, text
    # a bound far below the arena would never turn a table down
    assert 0.5 < float(b.group(3)) <= 1.0, text
    p = re.search(r"plans: (\d+) planned both ways \((\d+) fit their budget\), all the same; "
                  r"placements (\d+) without the bound, (\d+) with it", text)
    assert p, text
    planned, fitted, without, with_bound = map(int, p.groups())
    assert planned > 100 and 0 < fitted < planned, text
    # the point of the bound: fewer placements for the same plans
    assert with_bound < without, text
