"""The training bench on the emulated Cortex-M7 (firmware/bench/bench_train.c, tinymp.bench).

The small version of `make bench`: the demo model with two methods, short runs. Checks what the
bench must guarantee, not its figures: the M7 build and the host build agree (equal arena high
water, equal trained logits within the stated tolerance), two runs give identical instruction
counts, the composed whole-run figure equals the executed run, the phases add up to the step, a
cached step skips the prefix, and the outputs (JSON, Markdown, headline) are written. No figure is
asserted against a target: benchmarks report, they do not pass or fail.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm", "make") if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(
    bool(_missing),
    reason=f"{', '.join(_missing)} not installed (apt-get install gcc-arm-none-eabi "
           "libnewlib-arm-none-eabi qemu-system-arm): the Cortex-M7 bench needs them")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    r = subprocess.run(["make", "-s", "-C", ROOT, "bench-train-elf"], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    outs = []
    for k in range(2):
        out = tmp_path_factory.mktemp("bench%d" % k)
        notes = out / "READING.md"
        notes.write_text("## Reading\n\nwritten by hand %d\n" % k)
        p = subprocess.run([sys.executable, "-m", "tinymp.bench", "--quick", "--models", "demo",
                            "--out", str(out), "--notes", str(notes)], capture_output=True, text=True,
                           timeout=900, cwd=ROOT)
        assert p.returncode == 0, p.stdout + p.stderr
        outs.append((out, p.stdout))
    return outs


def configs(out):
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    (model,) = res["models"]
    return res, model["configs"]


def test_m7_and_host_builds_agree(quick):
    _, cs = configs(quick[0][0])
    assert [c["label"] for c in cs] == ["last", "tinymp r=4"]
    for c in cs:
        assert c["guard_ok"]
        assert c["host"]["high_water_equal"], c["host"]
        # the board keeps the compact tables, the same bytes as the host build's plan
        assert c["host"]["table_bytes_equal"], c["host"]
        assert 0 < c["table_bytes"] < c["workspace_bytes"]
        assert c["host"]["logits_max_diff_lsb"] <= 2.0
        assert 0 < c["high_water"] <= c["arena_bytes"]


def test_two_runs_count_the_same_instructions(quick):
    (a, _), (b, _) = quick
    _, ca = configs(a)
    _, cb = configs(b)
    for x, y in zip(ca, cb):
        for key in ("inference", "plan_instructions", "step", "fill_step", "cached_step", "run",
                    "end_period", "stack_bytes"):
            assert x.get(key) == y.get(key), key


def test_parts_add_up(quick):
    _, cs = configs(quick[0][0])
    for c in cs:
        st = c["step"]
        # the phases come from a 40-instruction timer: within a few ticks of the exact total
        assert abs(sum(st["phases"]) - st["mean"]) <= 40 * 8 + 0.01 * st["mean"]
        assert c["run_executed"]
        run = c["run"]
        assert run["steps"] == c["run_samples"] * c["run_epochs"]
        # the whole fit equals the sum of its measured parts (fit's loop costs next to nothing)
        assert abs(c["composed_run"] - run["instructions"]) <= 0.001 * run["instructions"]
        # a run starts from the model: plan() is counted and belongs to it
        assert c["plan_instructions"] > 0 and c["setup_instructions"] == c["plan_instructions"]
        assert c["run_instructions"] == c["setup_instructions"] + run["instructions"]
        if c["cache_bytes"]:
            assert run["cached_steps"] == c["run_samples"] * (c["run_epochs"] - 1)
            # a step from the cache skips the prefix: its forward phase is smaller
            assert c["cached_step"]["phases"][0] < c["fill_step"]["phases"][0]
            assert c["cached_step"]["mean"] < c["step"]["mean"]


def test_outputs_and_headline(quick):
    out, stdout = quick[0]
    text = open(os.path.join(out, "RESULTS.md")).read()
    assert "Emulated instruction counts" in text and "tinymp-m7-cpi-v1" in text
    # the hand-written reading (--notes) closes the file, as given
    assert text.endswith("\n## Reading\n\nwritten by hand 0\n")
    res, cs = configs(out)
    assert res["meta"]["cost_model"]["name"] == "tinymp-m7-cpi-v1"
    # the table says which budget each method was planned within: `last` is a baseline at its
    # own size; tinymp's is the demo's 16 KB, and its arena is within it
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    head = [x.strip() for x in lines[0].strip("|").split("|")]
    rows = {r[0]: dict(zip(head, r)) for r in
            ([x.strip() for x in ln.strip("|").split("|")] for ln in lines[1:])}
    assert rows["last"]["budget B"] == "own size"
    assert rows["tinymp r=4"]["budget B"] == "16,384" == format(cs[1]["options"]["budget"], ",")
    assert int(rows["tinymp r=4"]["arena B"].replace(",", "")) == cs[1]["arena_bytes"] <= 16384
    assert stdout.strip().splitlines()[-1].startswith("wrote ")  # --quick has no exact twin: no headline


def test_bad_arguments_fail_cleanly(tmp_path):
    p = subprocess.run([sys.executable, "-m", "tinymp.bench", "--models", "nosuch", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and "unknown model nosuch" in p.stderr
    assert not os.listdir(tmp_path)
    p = subprocess.run([sys.executable, "-m", "tinymp.bench", "--notes", str(tmp_path / "none.md"), "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and "cannot read --notes" in p.stderr
    assert not os.listdir(tmp_path)


def test_tinymp_command_runs_the_bench(tmp_path):
    p = subprocess.run([sys.executable, "-m", "tinymp.cli", "bench", "--models", "nosuch", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and "unknown model nosuch" in p.stderr
    h = subprocess.run([sys.executable, "-m", "tinymp.cli", "bench", "--help"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert h.returncode == 0 and "--full-runs" in h.stdout
