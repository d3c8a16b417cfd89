"""`tinymp experiment`: the quick run through the CLI, checked against independent computations.

The protocol (docs/EXPERIMENT.md, tinymp/experiment.py's module text) is re-implemented here
from its description: the held-out images, the support set, the step order. A configuration is
re-trained with tinymp.Trainer directly and must give the JSON's accuracy exactly; the pretrained
model's accuracy comes from the numpy reference (tinymp.reference), not the engine; memory
figures come from separate Model.plan calls.
"""
import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

import tinymp  # noqa: E402
from tinymp import cli, experiment as ex, reference, shifts, zoo  # noqa: E402
from tinymp.builder import quantize_input  # noqa: E402
from tinymp.datasets import digits  # noqa: E402

QUICK = ex.QUICK


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `tinymp experiment --quick --json` through the CLI's main(), output captured."""
    out = tmp_path_factory.mktemp("quick")
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        rc = cli.main(["experiment", "--quick", "--out", str(out), "--json"])
    assert rc == 0, se.getvalue()
    printed = json.loads(so.getvalue())
    with open(out / "results.json") as f:
        saved = json.load(f)
    return out, printed, saved, se.getvalue()


# ------------------------------------------------------------------------------ independent protocol

def held_out(spec, seed, model_bytes):
    """The test phase of docs/EXPERIMENT.md, from its text: (pools per class, held-out x, y)."""
    x, y = digits(32, "test", seed=0)
    xs = shifts.apply(x, spec, seed=seed)
    q = quantize_input(xs, model_bytes)
    rng = np.random.default_rng(seed)
    pools, hx, hy = [], [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        pools.append([q[i].tobytes() for i in idx[:20]])
        hx.extend(q[i] for i in idx[20:])
        hy.extend(int(y[i]) for i in idx[20:])
    return pools, hx, hy


def test_quick_writes_the_table_json_and_plot(quick):
    out, printed, saved, err = quick
    assert (out / "RESULTS.md").is_file() and (out / "results.json").is_file()
    pytest.importorskip("matplotlib")
    png = (out / "accuracy_memory.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert printed == saved
    assert "test: 8/8 runs" in err  # progress lines on stderr


def test_quick_covers_what_it_says(quick):
    _, res, _, _ = quick
    runs = res["runs"]
    assert {r["method"] for r in runs} == set(QUICK["methods"])
    assert {r["task"] for r in runs} == set(QUICK["tasks"])
    assert {r["shots"] for r in runs} == set(QUICK["shots"])
    assert {r["seed"] for r in runs} == set(range(1, QUICK["seeds"] + 1))
    assert len(runs) == len(QUICK["methods"]) * QUICK["seeds"] * len(QUICK["shots"])
    for r in runs:
        assert r["lr"] == QUICK["lr"] and r["epochs"] == QUICK["epochs"] and r["finite"]
        assert r["steps"] == QUICK["epochs"] * 10 * r["shots"]
        assert r["evaluated"] == 539 - 200 and r["accuracy"] == r["correct"] / r["evaluated"]
    assert res["command"] == "tinymp experiment --quick --out %s" % res["command"].split("--out ")[1]


def test_summary_is_the_mean_and_std_of_the_runs(quick):
    _, res, _, _ = quick
    per = res["summary"]["per_task"]["invert"]
    for m in QUICK["methods"]:
        accs = [100 * r["accuracy"] for r in res["runs"] if r["method"] == m]
        mean, std = per[m]["acc"]["5"]
        assert mean == pytest.approx(np.mean(accs)) and std == pytest.approx(np.std(accs, ddof=1))


def test_none_equals_the_pretrained_model_by_the_numpy_reference(quick):
    _, res, _, _ = quick
    data = zoo.demo()
    rm = reference.read_model(data)
    for seed in (1, 2):
        _, hx, hy = held_out("invert", seed, data)
        pred = np.array([int(np.argmax(reference.logits(rm, x))) for x in hx])
        acc = float(np.mean(pred == np.array(hy)))
        run = [r for r in res["runs"] if r["method"] == "none" and r["seed"] == seed][0]
        assert run["accuracy"] == acc
        assert res["pretrained"]["invert"][seed - 1] == acc


def test_one_configuration_retrained_independently_gives_the_same_accuracy(quick):
    _, res, _, _ = quick
    run = [r for r in res["runs"] if r["method"] == "tinymp" and r["seed"] == 2][0]
    data = zoo.demo()
    m = tinymp.Model(data)
    pools, hx, hy = held_out("invert", 2, data)
    k = run["shots"]
    sx = [s for p in pools for s in p[:k]]
    sy = [c for c in range(10) for _ in range(k)]
    plan = m.plan(method="tinymp")
    t = tinymp.Trainer(m, plan, lr=run["lr"], seed=2)
    order = np.random.default_rng([2, k])
    for e in range(run["epochs"]):
        if e:
            t.end_period()  # APU period = one pass
        for i in order.permutation(len(sx)):
            t.step(sx[i], sy[i])
    correct = sum(t.predict(x) == y for x, y in zip(hx, hy))
    assert correct == run["correct"]
    assert t.stats()["periods"] == run["periods"] == run["epochs"] - 1


def test_memory_and_macs_are_the_planners(quick):
    _, res, _, _ = quick
    m = tinymp.Model(zoo.demo())
    for r in res["runs"]:
        p = m.plan(method=r["method"])
        assert r["arena_bytes"] == p.arena_bytes
        assert r["backward_macs"] == p.backward_macs
        assert 0 < r["high_water"] <= p.arena_bytes
    per = res["summary"]["per_task"]["invert"]
    assert per["full"]["arena_bytes"] == m.plan(method="full").arena_bytes
    for meth in QUICK["methods"]:
        p = m.plan(method=meth)
        assert per[meth]["breakdown"] == dict(p.breakdown, forward_macs=p.forward_macs)
    v = res["verdict"]
    assert v["memory_fraction_of_full"] == pytest.approx(
        m.plan(method="tinymp").arena_bytes / m.plan(method="full").arena_bytes)


def test_markdown_holds_the_command_and_the_table(quick):
    out, res, _, _ = quick
    md = (out / "RESULTS.md").read_text()
    assert res["command"] in md
    per = res["summary"]["per_task"]["invert"]
    for m in QUICK["methods"]:
        mean, std = per[m]["acc"]["5"]
        assert "%.1f ± %.1f" % (mean, std) in md
        assert "{:,}".format(per[m]["arena_bytes"]) in md
    assert "The criterion is **%s**" % ("met" if res["verdict"]["met"] else "not met") in md


def test_cli_entry_point_in_a_subprocess(tmp_path):
    """The plain (non-JSON) output of the installed command, a fixed lr, no sweep."""
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "tinymp.cli", "experiment", "--tasks", "pose", "--methods",
           "none,last", "--shots", "2", "--seeds", "1", "--epochs", "1", "--lr", "0.005",
           "--out", str(tmp_path / "o")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "task pose" in p.stdout and "wrote %s" % (tmp_path / "o" / "RESULTS.md") in p.stdout
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["method"] for r in res["runs"]] == ["none", "last"]
    assert res["verdict"] is None  # no tinymp/full in the run: no criterion


def test_worker_processes_give_the_same_results():
    kw = dict(tasks=["thick"], methods=["last", "tinymp-r2"], shots=[2], seeds=2, epochs=1,
              lr=0.005, diagnostics=False, log=lambda *a: None)
    a = ex.run(jobs=1, **kw)
    b = ex.run(jobs=2, **kw)
    strip = ("train_seconds", "eval_seconds")
    assert [{k: v for k, v in r.items() if k not in strip} for r in a["runs"]] == \
           [{k: v for k, v in r.items() if k not in strip} for r in b["runs"]]


def test_learning_rate_choice_uses_validation_and_breaks_ties_low():
    runs = [{"method": "a", "lr": 0.01, "accuracy": 0.5}, {"method": "a", "lr": 0.002, "accuracy": 0.5},
            {"method": "a", "lr": 0.005, "accuracy": 0.4}, {"method": "b", "lr": 0.001, "accuracy": 0.2},
            {"method": "b", "lr": 0.005, "accuracy": 0.3}, {"method": "b", "lr": 0.005, "accuracy": 0.5}]
    lrs, table = ex.choose_lrs(runs, ["a", "b"])
    assert lrs == {"a": 0.002, "b": 0.005} and table["b"][0.005] == pytest.approx(0.4)


def test_validation_images_come_from_the_training_split():
    task = ex.task_by_name("invert")
    pools, hx, hy = ex.task_data(task, 1, "validation")
    assert len(hx) == 10 * ex.VAL_PER_CLASS and sorted(set(hy)) == list(range(10))
    test_pools, tx, _ = ex.task_data(task, 1, "test")
    assert not set(hx) & set(tx) and not set(sum(pools, [])) & set(sum(test_pools, []))
    r = ex.run_one("invert", "last", 2, 1, 0.005, 1, "validation")
    assert r["evaluated"] == 300 and r["phase"] == "validation"


def test_task_models_ship_as_package_data():
    """An installed wheel holds only the package and its package data: every task model must be
    inside host/tinymp/models and matched by pyproject's package-data globs."""
    import fnmatch
    import tomllib
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        globs = tomllib.load(f)["tool"]["setuptools"]["package-data"]["tinymp"]
    pkg = os.path.dirname(os.path.abspath(tinymp.__file__))
    assert os.path.samefile(ex.MODELS_DIR, os.path.join(pkg, "models"))
    for name, fname in ex.MODEL_FILES.items():
        assert os.path.isfile(os.path.join(pkg, "models", fname)), name
        assert any(fnmatch.fnmatch("models/" + fname, g) for g in globs), (fname, globs)
    for t in ex.TASKS:
        assert t.model == "demo" or t.model in ex.MODEL_FILES, t.name


def test_new_class_model_knows_only_digits_0_to_4():
    m = ex.model("digits0to4")
    x, y = digits(32, "test", seed=0)
    q = quantize_input(x, (m.input_scale, m.input_zero_point))
    pred = np.array([m.predict(a.tobytes()) for a in q])
    old = y < 5
    assert np.mean(pred[old] == y[old]) > 0.95
    assert np.mean(pred[~old] == y[~old]) < 0.05  # the new digits' outputs start untrained


@pytest.mark.parametrize("argv,words", [
    (["--seeds", "0"], ["--seeds", "got 0"]),
    (["--shots", "0"], ["--shots", "between 1 and 20"]),
    (["--shots", "5,25"], ["--shots", "got 25"]),
    (["--shots", "5,x"], ["--shots", "whole numbers"]),
    (["--tasks", "invert,sideways"], ["unknown task", "sideways"]),
    (["--methods", "full,magic"], ["unknown method", "magic"]),
    (["--methods", "full,full"], ["must not repeat"]),
    (["--lr", "0"], ["--lr", "(0, 1]"]),
    (["--lr", "2"], ["--lr"]),
    (["--epochs", "0"], ["--epochs"]),
    (["--jobs", "0"], ["--jobs"]),
    (["--jobs", "65"], ["--jobs", "between 1 and 64"]),
    (["--notes", "/nonexistent/notes.md"], ["--notes", "/nonexistent/notes.md"]),
    (["--notes", "BINARY"], ["--notes", "not UTF-8 text"]),
])
def test_bad_arguments_give_one_line_and_status_2(tmp_path, capsys, argv, words):
    out = tmp_path / "never"
    if "BINARY" in argv:
        (tmp_path / "calib.npy").write_bytes(b"\x93NUMPY\x01\x00\xff\xfe")
        argv = [str(tmp_path / "calib.npy") if a == "BINARY" else a for a in argv]
    rc = cli.main(["experiment", "--out", str(out)] + argv)
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinymp:"), err
    for w in words:
        assert w in lines[0]
    assert not out.exists()  # nothing written


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert cli.main(["experiment", "--quick", "--out", str(f)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_list_runs_nothing(capsys):
    assert cli.main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ex.TASK_NAMES + ex.METHOD_NAMES:
        assert name in out


@pytest.mark.parametrize("edit, kept", [("## Reading\n\nnew\n", "\nnew\n"),
                                        ("x" * ((1 << 20) + 1), "\nold\n")])
def test_notes_edited_during_the_run_are_the_ones_written(tmp_path, monkeypatch, edit, kept):
    """--notes is checked at the start (a bad path fails before minutes of work) and read again
    at the end, so a reading edited while the run goes on is the one RESULTS.md gets; one spoiled
    meanwhile (here: past the size bound) leaves the first reading."""
    from tinymp import cli, experiment
    notes = tmp_path / "READING.md"
    notes.write_text("## Reading\n\nold\n")
    real_run = experiment.run

    def run_and_edit(**kw):
        res = real_run(**kw)
        notes.write_text(edit)
        return res
    monkeypatch.setattr(experiment, "run", run_and_edit)
    out = tmp_path / "out"
    assert cli.main(["experiment", "--quick", "--tasks", "invert", "--methods", "none", "--seeds", "1",
                     "--out", str(out), "--notes", str(notes)]) == 0
    text = (out / "RESULTS.md").read_text()
    others = {"\nnew\n", "\nold\n", "xxxx"} - {kept}
    assert kept in text and not any(w in text for w in others), text[-300:]


@pytest.mark.parametrize("kind", ["fifo", "device", "long", "empty-path"])
def test_notes_that_are_not_a_reading_stop_before_the_run(tmp_path, capsys, monkeypatch, kind):
    """--notes is read whole into RESULTS.md: a FIFO would block the read for ever, /dev/zero
    never ends (the read took memory without bound, then died with MemoryError), a file far past
    any hand-written reading is not one. Each is one line, status 2, before the run and --out."""
    if kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs here")
        path = str(tmp_path / "pipe")
        os.mkfifo(path)
        words = [f"--notes {path} is not a regular file (a Markdown file is expected)"]
    elif kind == "device":
        if not os.path.exists("/dev/zero"):
            pytest.skip("no /dev/zero here")
        path = "/dev/zero"
        words = ["--notes /dev/zero is not a regular file"]
    elif kind == "long":
        path = str(tmp_path / "READING.md")
        with open(path, "w") as f:
            f.write("## Reading\n" + "x" * (1 << 20))
        words = [f"--notes {path} is larger than 1 MiB (a hand-written reading"]
    else:
        path = ""
        words = ["cannot read --notes : No such file or directory"]
    monkeypatch.setattr(ex, "run", lambda **kw: pytest.fail("the run started"))
    out = tmp_path / "never"
    rc = cli.main(["experiment", "--quick", "--out", str(out), "--notes", path])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("tinymp:"), err
    for w in words:
        assert w in lines[0], lines[0]
    assert not out.exists()




def test_probe_method_runs_the_same_steps_as_the_step_loop(monkeypatch):
    """tinymp-probe trains each pass with fit(order, epochs=1, shuffle=False, probe=...): with
    probe=0 that is exactly the step loop of `tinymp` (the same steps, the periods ended after
    each pass instead of before the next, which changes no parameter), so the accuracy and the
    final loss agree; with the probe the run trains and differs only through its selections."""
    import copy
    base = ex.run_one("invert", "tinymp", 2, 1, 0.005, 3)
    zero = copy.copy(ex.method_by_name("tinymp-probe"))
    zero.probe = 0
    monkeypatch.setattr(ex, "method_by_name", lambda name: zero if name == "tinymp-probe" else
                        next(m for m in ex.METHODS if m.name == name))
    same = ex.run_one("invert", "tinymp-probe", 2, 1, 0.005, 3)
    assert same["correct"] == base["correct"]
    assert same["final_loss"] == pytest.approx(base["final_loss"], rel=1e-9)
    assert same["periods"] == base["periods"] + 1  # fit also ends the last pass's period
    monkeypatch.undo()
    probe = ex.run_one("invert", "tinymp-probe", 2, 1, 0.005, 3)
    assert probe["finite"] and probe["periods"] == 3 and probe["steps"] == base["steps"]
