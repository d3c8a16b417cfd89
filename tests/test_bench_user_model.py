"""`tinymp bench --model FILE`: every method on a model of the user's, on the emulated Cortex-M7.

Checks that the user's file and budget are what is benched (the emulated plans are the host
build's plans for that budget), that a method that cannot be planned within the budget is
skipped with its reason while the others are still benched, and that a bad file or budget is one
line and exit status 2 before anything runs. No figure is asserted against a target.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

import tinymp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "host", "tinymp", "models", "demo.tmpm")
_missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm", "make") if shutil.which(t) is None]
needs_tools = pytest.mark.skipif(
    bool(_missing), reason=f"{', '.join(_missing)} not installed: the Cortex-M7 bench needs them")


def bench(*args, cwd=None):
    r = subprocess.run([sys.executable, "-m", "tinymp.bench", *args], capture_output=True,
                       text=True, timeout=900, cwd=cwd or ROOT)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture(scope="module")
def elf():
    r = subprocess.run(["make", "-s", "-C", ROOT, "bench-train-elf"], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_tools
def test_the_users_model_within_the_users_budget(elf, tmp_path):
    mine = tmp_path / "mine.tmpm"
    shutil.copy(DEMO, mine)
    m = tinymp.Model(mine.read_bytes())
    # `last`'s own size: too small for any tinymp plan (the host build refuses it too), so
    # tinymp is skipped and `last` (planned without a budget) is benched
    small = m.plan(method="last").arena_bytes
    with pytest.raises(ValueError):
        m.plan(method="tinymp", budget=small)
    for budget, expect in ((12000, ["last", "tinymp r=4"]), (small, ["last"])):
        out = tmp_path / str(budget)
        code, stdout, err = bench("--quick", "--model", str(mine), "--budget", str(budget),
                                  "--out", str(out))
        assert code == 0, err
        res = json.loads((out / "results.json").read_text())
        (model,) = res["models"]
        assert model["title"] == "mine.tmpm" and model["key"] == "file"
        assert [c["label"] for c in model["configs"]] == expect
        for c in model["configs"]:
            opts = dict(c["options"])
            assert opts.get("budget", budget) == budget
            p = m.plan(**opts)
            assert c["arena_bytes"] == p.arena_bytes <= (budget if "budget" in opts else p.arena_bytes)
            assert c["host"]["high_water_equal"]
        if expect == ["last"]:
            (sk,) = model["skipped"]
            assert sk["label"] == "tinymp r=4" and "budget" in sk["why"]
            assert "tinymp r=4" in stdout and "skipped" in stdout
        md = (out / "RESULTS.md").read_text()
        assert "## mine.tmpm" in md and "--model" in md


@pytest.mark.parametrize("args,needle", [
    (["--model", "no-such-file.tmpm"], "cannot read no-such-file.tmpm"),
    (["--model", "README.md"], "README.md is not a usable tinymp model"),
    (["--model", DEMO, "--budget", "0"], "--budget must be a positive number of bytes"),
    (["--models", "nosuch"], "unknown model nosuch"),
])
def test_bad_input_is_one_line_before_anything_runs(args, needle, tmp_path):
    code, out, err = bench(*args, "--out", str(tmp_path / "out"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinymp bench:") and needle in lines[0], err
    assert not (tmp_path / "out").exists()
