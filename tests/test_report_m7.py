"""`tinymp report --m7`: the Cortex-M7 estimate of a session's training configuration.

The session's model and training options run through the bench program on the emulated
Cortex-M7 (tinymp.bench.estimate_training) and the cost model turns the counts into times. What
is checked: the emulator makes the same plan as the board did (the simulated board runs the host
build, so this compares two builds of the engine) and touches the same arena high water; the
phases add up to the step; the times are the cost model's arithmetic and are labelled an
estimate; and every way it can fail (no emulator, a changed model file, a different plan, a
session without training) gives one line in the report instead of an error. No figure is
asserted against a target.
"""
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tinymp import costmodel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm", "make") if shutil.which(t) is None]
needs_tools = pytest.mark.skipif(
    bool(_missing), reason=f"{', '.join(_missing)} not installed: the Cortex-M7 estimate needs them")


def tinymp_cmd(*args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run([sys.executable, "-m", "tinymp.cli", *args], capture_output=True,
                       text=True, timeout=600, cwd=ROOT, env=e)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture(scope="module")
def demo_session(tmp_path_factory):
    """`tinymp demo --m7 --json` once: a trained session folder and its report."""
    if not _missing:
        r = subprocess.run(["make", "-s", "-C", ROOT, "bench-train-elf"], capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
    folder = tmp_path_factory.mktemp("m7") / "demo"
    code, out, err = tinymp_cmd("demo", "--session", str(folder), "--json", "--m7")
    assert code == 0, err
    return folder, json.loads(out)


@pytest.fixture
def session_copy(demo_session, tmp_path):
    folder = tmp_path / "demo"
    shutil.copytree(demo_session[0], folder)
    return folder


@needs_tools
def test_estimate_is_the_boards_plan_on_the_emulated_m7(demo_session):
    _, rep = demo_session
    est, t = rep["m7_estimate"], rep["train"]
    assert "error" not in est, est
    for k in ("arena_bytes", "forward_macs", "backward_macs"):
        assert est["plan"][k] == t["plan"][k], k
    assert est["plan"]["method"] == t["plan"]["method"] and est["plan"]["r"] == t["plan"]["r"]
    # the M7 build touches exactly the arena the host build (the simulated board) touched
    assert est["high_water"] == t["high_water"]
    ins = est["instructions"]
    # phases come from a 40-instruction timer, and a step's bookkeeping outside them (model
    # checks) is small: the same bound as tests/test_bench.py
    assert abs(ins["forward"] + ins["backward"] + ins["update"] - ins["step"]) <= \
        40 * 8 + 0.01 * ins["step"]
    assert 0 < ins["backward"] < ins["forward"] and ins["inference"] <= ins["forward"]
    # the demo trains with tinymp, whose APU re-selects channels at each period end: that call is
    # measured too (a method without APU has no such row: test_every_plan_option...)
    assert est["plan"]["method"] == "tinymp" and ins["end_period"] > 0
    # and so is plan(), which the board runs before its first step
    assert ins["plan"] > 0
    for k, v in ins.items():
        e = est["estimate"][k]
        assert e["ms"] == pytest.approx(v / 480e3, abs=1e-3)
        assert e["ms_range"] == pytest.approx([v * c / 480e3 for c in costmodel.CPI_RANGE], abs=1e-3)
    assert est["cost_model"]["name"] == costmodel.ASSUMPTIONS["name"]


@needs_tools
def test_text_report_labels_the_estimate(session_copy):
    code, out, err = tinymp_cmd("report", "--session", str(session_copy), "--m7")
    assert code == 0, err
    assert "Cortex-M7 estimate (emulated)" in out
    flat = " ".join(out.split())  # the note is wrapped
    assert "not measured on a board" in flat and "cost model tinymp-m7-cpi-v1" in flat
    for row in ("plan()", "inference", "forward", "backward", "update", "whole step",
                "APU period end (once per epoch)"):
        assert any(line.startswith(row) for line in out.splitlines()), row
    # without --m7 the report says how to get one and runs nothing; the command it names works
    # as printed (from this folder, the session being elsewhere)
    code, out, err = tinymp_cmd("report", "--session", str(session_copy))
    assert code == 0, err
    assert "tinymp report --m7" in out and "Cortex-M7 estimate (emulated)" not in out
    hinted = shlex.split(re.search(r"run `(tinymp report --m7[^`]*)`", out).group(1))
    code, out, err = tinymp_cmd(*hinted[1:])
    assert code == 0, err
    assert "Cortex-M7 estimate (emulated)" in out


def _report(folder, env=None):
    code, out, err = tinymp_cmd("report", "--session", str(folder), "--m7", "--json", env=env)
    assert code == 0, err
    return json.loads(out)["m7_estimate"]


def test_missing_emulator_is_one_line(session_copy):
    est = _report(session_copy, env={"BENCH_QEMU": "no-such-qemu-here"})
    assert est == {"error": "qemu-system-arm not found (apt-get install qemu-system-arm)"}
    code, out, err = tinymp_cmd("report", "--session", str(session_copy), "--m7",
                                env={"BENCH_QEMU": "no-such-qemu-here"})
    assert code == 0 and err == ""
    assert "Cortex-M7 estimate: not available: qemu-system-arm not found" in out


def _state(folder):
    with open(folder / "session.json") as f:
        return json.load(f)


def test_changed_model_file_is_refused(session_copy, tmp_path):
    st = _state(session_copy)
    other = tmp_path / "other.tmpm"
    data = bytearray(open(st["model"]["path"], "rb").read())
    data[-1] ^= 1
    other.write_bytes(bytes(data))
    st["model"]["path"] = str(other)
    (session_copy / "session.json").write_text(json.dumps(st))
    assert hashlib.sha256(bytes(data)).hexdigest() != st["model"]["sha256"]
    est = _report(session_copy)
    assert "no longer the model the board trained" in est["error"]
    st["model"]["path"] = str(tmp_path / "gone.tmpm")
    (session_copy / "session.json").write_text(json.dumps(st))
    assert "cannot read the model file" in _report(session_copy)["error"]


@needs_tools
def test_a_different_plan_shows_no_estimate(session_copy):
    (run,) = [p for p in os.listdir(session_copy / "runs") if p.startswith("train-")]
    path = session_copy / "runs" / run
    rec = json.loads(path.read_text())
    rec["start"]["plan"]["arena_bytes"] += 4
    rec["end"]["plan"]["arena_bytes"] += 4
    path.write_text(json.dumps(rec))
    est = _report(session_copy)
    assert est["error"].startswith("the emulated plan differs from the board's (arena_bytes")


@needs_tools
def test_a_moved_session_uses_its_own_samples(session_copy):
    # the run recorded the dataset's absolute path; a session folder that was moved (here: a
    # copy whose record points elsewhere) still finds its samples
    (run,) = [p for p in os.listdir(session_copy / "runs") if p.startswith("train-")]
    path = session_copy / "runs" / run
    rec = json.loads(path.read_text())
    rec["dataset"] = str(session_copy / "gone" / "dataset")
    path.write_text(json.dumps(rec))
    assert "error" not in _report(session_copy)
    shutil.rmtree(session_copy / "dataset")
    est = _report(session_copy)
    assert est["error"].startswith("cannot read the session's samples: ") and "tinymp:" not in est["error"]


def test_a_session_without_training(tmp_path):
    # a session that only pushed a model: the report has no training, so no estimate line either
    folder = tmp_path / "s"
    code, _, err = tinymp_cmd("push", os.path.join(ROOT, "host", "tinymp", "models", "demo.tmpm"),
                              "--port", "sim", "--session", str(folder))
    assert code == 0, err
    code, out, err = tinymp_cmd("report", "--session", str(folder), "--m7", "--json")
    assert code == 0, err
    assert json.loads(out)["m7_estimate"] == {"error": "the session has no training run to estimate"}
    code, out, err = tinymp_cmd("report", "--session", str(folder), "--m7")
    assert code == 0 and "Cortex-M7" not in out


@needs_tools
@pytest.mark.parametrize("opts", [
    {"method": "tinymp", "momentum": 0.9, "storage": "fp32"},
    {"method": "tinymp", "macs": 10000, "r": 2, "ratio": 0.5},
    {"method": "last", "n_bias": 3},
])
def test_every_plan_option_reaches_the_emulator(demo_session, opts):
    # the M7 build plans what the host build plans for the same options (momentum and the MAC
    # budget included: the bench program takes every option a board is given). Each of these
    # options changes the demo's plan (momentum + fp32: 53,548 bytes instead of 16,540; the MAC
    # budget: 9,728 backward MACs instead of 17,504), so an option dropped on the way would show.
    import numpy as np

    import tinymp
    from tinymp import bench
    data = open(os.path.join(ROOT, "host", "tinymp", "models", "demo.tmpm"), "rb").read()
    m = tinymp.Model(data)
    rng = np.random.default_rng(0)
    samples = [(rng.integers(-128, 128, 32 * 32, dtype=np.int8).tobytes(), i % 10) for i in range(4)]
    est = bench.estimate_training(data, dict(opts, budget=65536), samples)
    p = m.plan(budget=65536, **opts)
    assert (est["plan"]["arena_bytes"], est["plan"]["forward_macs"], est["plan"]["backward_macs"]) == \
        (p.arena_bytes, p.forward_macs, p.backward_macs)
    assert est["high_water"] <= p.arena_bytes
    # the APU period end is measured for tinymp only
    assert ("end_period" in est["instructions"]) == (opts["method"] == "tinymp")


@needs_tools
def test_a_tinytrain_run_replays_the_boards_support_samples(session_copy):
    # TinyTrain's plan depends on the samples its selection pass read on the board; the board
    # reports how many (support_samples) and the estimate replays the same ones, so the emulated
    # plan is the board's. A run recorded before boards reported it falls back to their old rule.
    code, _, err = tinymp_cmd("train", "--port", "sim", "--session", str(session_copy),
                              "--method", "tinytrain", "--steps", "3")
    assert code == 0, err
    runs = sorted(p for p in os.listdir(session_copy / "runs") if p.startswith("train-"))
    path = session_copy / "runs" / runs[-1]
    rec = json.loads(path.read_text())
    assert rec["options"]["method"] == "tinytrain"
    from tinymp.session.dataset import Dataset
    n = len(Dataset.open(str(session_copy / "dataset")))
    assert rec["start"]["support_samples"] == min(32, n) > 0
    est = _report(session_copy)
    assert "error" not in est, est
    assert est["plan"]["arena_bytes"] == rec["start"]["plan"]["arena_bytes"]
    assert est["support_samples"] == rec["start"]["support_samples"]
    # a board that read fewer samples: the estimate reads as many
    rec["start"]["support_samples"] = 2
    path.write_text(json.dumps(rec))
    assert _report(session_copy)["support_samples"] == 2
    # a legacy record (no support_samples): the old rule, 32 samples for tinytrain
    del rec["start"]["support_samples"]
    path.write_text(json.dumps(rec))
    assert _report(session_copy)["support_samples"] == min(32, n)
    rec["start"]["support_samples"] = n + 1
    path.write_text(json.dumps(rec))
    assert _report(session_copy)["error"] == (f"the board's plan read {n + 1} samples; the "
                                              f"session's dataset holds {n}")
