"""`tinymp report` against the simulated board, after the commands a person runs. Expected
figures are computed here from the run and eval records the commands wrote (the board's own
events and predictions), not read off the report."""
import json
import os
import re

import numpy as np
import pytest

import tinymp
from tinymp import cli

MODELS = os.path.join(os.path.dirname(tinymp.__file__), "models")
DEMO = os.path.join(MODELS, "demo.tmpm")
OTHER = os.path.join(MODELS, "digits0to4.tmpm")  # another model with the same input and classes
SCENE = os.path.join(MODELS, "digits_shifted.npz")
HELD = os.path.join(MODELS, "digits_shifted_test.npz")


def tm(capsys, *args):
    """`tinymp ARGS` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def sim(capsys, s, *args):
    code, out, err = tm(capsys, *args, "--port", "sim", "--session", s)
    assert code == 0, err
    return out


def sim_json(capsys, s, *args):
    return json.loads(sim(capsys, s, *args, "--json"))


def report(capsys, s):
    """(the report as JSON, the report as text)"""
    code, js, err = tm(capsys, "report", "--session", s, "--json")
    assert code == 0, err
    code, text, err = tm(capsys, "report", "--session", s)
    assert code == 0, err
    return json.loads(js), text


def line(text, head):
    (found,) = [ln for ln in text.splitlines() if ln.startswith(head)]
    return found


def run_record(s, name):
    with open(os.path.join(s, "runs", name)) as f:
        return json.load(f)


def rec_name(path):
    """A record's name: eval --json gives its path, the report its name."""
    return os.path.basename(path)


def pct(x):
    return f"{x * 100:.1f}%"


# --- before -> after: the trained model, the run's own parameters, the same samples --------------

def test_accuracy_pairs_only_evals_of_the_trained_model_on_the_same_samples(tmp_path, capsys):
    s = str(tmp_path / "s")
    sim(capsys, s, "push", DEMO, "-q")
    sim(capsys, s, "collect", "--from", SCENE, "-q")
    sim(capsys, s, "collect", "--from", HELD, "--eval", "-q")
    (pre,) = sim_json(capsys, s, "eval", "--pretrained")
    sim(capsys, s, "train", "--epochs", "1", "--lr", "0.002", "-q")
    (post,) = sim_json(capsys, s, "eval")
    assert (pre["params"], post["params"]) == ("pretrained", "personalised")
    # a later eval of the same parameters on other samples, which have no pretrained eval
    d = np.load(HELD)
    few = str(tmp_path / "few.npz")
    np.savez(few, x=d["x"][:30], y=d["y"][:30])
    (other_data,) = sim_json(capsys, s, "eval", "--data", few)
    assert other_data["n"] == 30

    rep, text = report(capsys, s)
    ab, aa = rep["accuracy_before"], rep["accuracy_after"]
    assert (ab["file"], aa["file"]) == (rec_name(pre["file"]), rec_name(post["file"]))
    assert ab["n"] == aa["n"] == 339 and ab["data_sha256"] == aa["data_sha256"]
    acc = line(text, "accuracy   ")
    assert f"before {pct(pre['accuracy'])}" in acc and f"after {pct(post['accuracy'])}" in acc
    assert "on 339 samples" in acc

    # eval records from before they kept their samples' SHA-256 pair by source and count
    for name in os.listdir(os.path.join(s, "runs")):
        if name.startswith("eval-"):
            rec = run_record(s, name)
            del rec["data_sha256"]
            with open(os.path.join(s, "runs", name), "w") as f:
                json.dump(rec, f)
    old, _ = report(capsys, s)
    assert (old["accuracy_before"]["file"], old["accuracy_after"]["file"]) == \
        (rec_name(pre["file"]), rec_name(post["file"]))

    # a new model: its own pretrained eval never stands beside the trained model's figure
    sim(capsys, s, "push", OTHER, "-q")
    (other_pre,) = sim_json(capsys, s, "eval", "--pretrained")
    rep, text = report(capsys, s)
    assert (rep["accuracy_before"]["file"], rep["accuracy_after"]["file"]) == \
        (rec_name(pre["file"]), rec_name(post["file"]))
    assert "not of the model last pushed" in text
    # and the push removed the trained parameters from the board
    assert rep["train"]["params"]["state"] == "gone"
    assert "a new model was pushed since" in line(text, "training   ")

    # the new model trained, not evaluated since: "-", not the other model's figure
    sim(capsys, s, "train", "--steps", "20", "-q")
    rep, text = report(capsys, s)
    assert rep["accuracy_after"] is None
    assert rep["accuracy_before"]["file"] == rec_name(other_pre["file"])
    assert "no eval of the latest training run" in rep["accuracy_missing"]["after"]
    acc = line(text, "accuracy   ")
    assert f"before {pct(other_pre['accuracy'])}" in acc
    assert "after - (no eval of the latest training run's parameters" in acc
    assert pct(post["accuracy"]) not in acc
    assert "not of the model last pushed" not in text


# --- where the parameters are after params save / rollback / reset -------------------------------

def test_params_save_of_a_trial_run_shows_in_the_report(tmp_path, capsys):
    s = str(tmp_path / "s")
    sim(capsys, s, "push", DEMO, "-q")
    sim(capsys, s, "collect", "--from", HELD, "-q")
    sim(capsys, s, "train", "--no-save", "--steps", "20", "-q")
    unsaved, text = report(capsys, s)
    assert "parameters not saved" in line(text, "training   ")
    (trial,) = sim_json(capsys, s, "eval", "--trial")
    assert trial["params"] == "trial"

    sim(capsys, s, "params", "save")
    rep, text = report(capsys, s)
    train = line(text, "training   ")
    assert "parameters saved by `tinymp params save`" in train and "not saved" not in train
    assert rep["train"]["saved"] and rep["train"]["params"]["state"] == "saved"
    assert unsaved["train"]["params"]["state"] == "trial" and not unsaved["train"]["saved"]
    # the trial eval measured this run's parameters, which are now the saved ones
    assert rep["accuracy_after"]["file"] == rec_name(trial["file"])
    assert "(trial run)" in line(text, "accuracy   ")
    (post,) = sim_json(capsys, s, "eval")
    assert post["params"] == "personalised" and post["accuracy"] == trial["accuracy"]
    rep, _ = report(capsys, s)
    assert rep["accuracy_after"]["file"] == rec_name(post["file"])


def test_params_rollback_and_reset_leave_the_report_true(tmp_path, capsys):
    s = str(tmp_path / "s")
    sim(capsys, s, "push", DEMO, "-q")
    sim(capsys, s, "collect", "--from", HELD, "-q")
    sim(capsys, s, "train", "--steps", "30", "-q")
    sim(capsys, s, "train", "--steps", "30", "-q")  # the first run's parameters: the previous
    (mine,) = sim_json(capsys, s, "eval")
    sim(capsys, s, "params", "rollback")
    rep, text = report(capsys, s)
    assert "replaced by `tinymp params rollback`: no longer on the board" in \
        line(text, "training   ")
    assert rep["train"]["params"]["state"] == "gone" and rep["train"]["saved"]
    # an eval now measures the first run's parameters: not the latest run's "after"
    (earlier,) = sim_json(capsys, s, "eval")
    assert earlier["params"] == "personalised"
    rep, _ = report(capsys, s)
    assert rep["accuracy_after"]["file"] == rec_name(mine["file"])

    # a reset sets a run's parameters aside, and a rollback brings them back
    sim(capsys, s, "train", "--steps", "30", "-q")
    sim(capsys, s, "params", "reset")
    rep, text = report(capsys, s)
    assert "set aside by `tinymp params reset`" in line(text, "training   ")
    assert rep["train"]["params"]["state"] == "previous"
    (during,) = sim_json(capsys, s, "eval")
    assert during["params"] == "pretrained"  # the board holds no personalised parameters
    rep, text = report(capsys, s)
    assert rep["accuracy_after"] is None
    assert rep["accuracy_before"]["file"] == rec_name(during["file"])
    sim(capsys, s, "params", "rollback")
    (back,) = sim_json(capsys, s, "eval")
    rep, text = report(capsys, s)
    assert "brought back by `tinymp params rollback`" in line(text, "training   ")
    assert rep["train"]["params"]["state"] == "saved"
    assert rep["accuracy_after"]["file"] == rec_name(back["file"])


# --- a session trained for one epoch (--png, running accuracy) -----------------------------------

@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A session trained one epoch over the 339 held-out digits."""
    s = str(tmp_path_factory.mktemp("epoch") / "s")
    for args in (["push", DEMO], ["collect", "--from", HELD], ["train", "--epochs", "1"]):
        assert cli.main(args + ["--port", "sim", "--session", s, "-q"]) == 0
    return s


# --- --png ---------------------------------------------------------------------------------------

def test_png_on_a_file_is_one_line_and_status_2(one_epoch, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    for bad in (f, f / "plots"):
        code, out, err = tm(capsys, "report", "--session", one_epoch, "--png", str(bad))
        lines = err.strip().splitlines()
        assert code == 2 and out == "", err
        assert len(lines) == 1 and lines[0].startswith("tinymp:") and str(f) in lines[0], err
    assert f.read_text() == "keep me" and os.listdir(tmp_path) == ["notes.txt"]
    code, out, err = tm(capsys, "report", "--session", one_epoch, "--png", str(tmp_path / "png"))
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "png")) == ["memory.png", "training.png"]


# --- running accuracy: a first and a last window that share no step ------------------------------

def _hits(events, fields):
    f = {k: i for i, k in enumerate(fields)}
    return [e[f["pred"]] == e[f["label"]] for e in events]


def test_one_epoch_compares_windows_that_share_no_step(one_epoch, capsys, monkeypatch):
    (name,) = [n for n in os.listdir(os.path.join(one_epoch, "runs")) if n.startswith("train-")]
    run = run_record(one_epoch, name)
    hits = _hits(run["events"], run["fields"])
    assert len(hits) == 339
    rep, text = report(capsys, one_epoch)
    t = rep["train"]
    w = t.get("accuracy_window")  # steps in each window
    assert w is not None and 1 <= w and 2 * w <= len(hits)  # disjoint first and last windows
    first, last = sum(hits[:w]) / w, sum(hits[-w:]) / w
    assert t["first_running_accuracy"] == pytest.approx(first)
    assert t["final_running_accuracy"] == pytest.approx(last)
    assert f"running accuracy {pct(first)} -> {pct(last)} (first and last {w} steps)" in \
        line(text, "training   ")

    # the plot's moving window is the same, and its legend says so
    import matplotlib.figure
    legends = []
    save = matplotlib.figure.Figure.savefig

    def keep_legend(fig, *a, **kw):
        for ax in fig.axes:
            if ax.get_legend():
                legends.extend(x.get_text() for x in ax.get_legend().get_texts())
        return save(fig, *a, **kw)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep_legend)
    png = os.path.join(os.path.dirname(one_epoch), "png")
    assert cli.main(["report", "--session", one_epoch, "--png", png]) == 0
    assert f"running accuracy (last {w})" in legends and f"loss (mean of {w})" in legends


def test_a_one_step_run_shows_only_its_final_accuracy(tmp_path, capsys):
    s = str(tmp_path / "s")
    sim(capsys, s, "push", DEMO, "-q")
    sim(capsys, s, "collect", "--from", HELD, "-q")
    out = sim(capsys, s, "train", "--steps", "1")
    run = run_record(s, "train-0001.json")
    (hit,) = _hits(run["events"], run["fields"])
    one = pct(float(hit))
    assert re.search(rf"running accuracy {re.escape(one)}, loss", out), out
    rep, text = report(capsys, s)
    assert rep["train"]["first_running_accuracy"] is None
    assert rep["train"]["final_running_accuracy"] == float(hit)
    train = line(text, "training   ")
    assert f"running accuracy {one} (last 1 step)" in train and "->" not in train


# --- damaged run records: named, never a traceback -----------------------------------------------

ODD = [None, -1, 2.5, True, float("nan"), "x", {}, [], [1, 2, 3]]
# where the plots read a train record (the --png runs are slow: only these places get them)
PLOTTED = (("events",), ("fields",), ("start", "plan"), ("end", "plan"), ("end", "high_water"),
           ("board", "arena_budget"))
PLOT_ODD = ("dropped", "None", "'x'")  # and only these mutants there


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A session with a pretrained eval, a 12-step train run and an eval of it."""
    base = tmp_path_factory.mktemp("recorded")
    s = str(base / "s")
    d = np.load(HELD)
    few = str(base / "few.npz")
    np.savez(few, x=d["x"][:20], y=d["y"][:20])
    for args in (["push", DEMO], ["collect", "--from", few], ["collect", "--from", few, "--eval"],
                 ["eval", "--pretrained"], ["train", "--steps", "12"], ["eval"]):
        assert cli.main(args + ["--port", "sim", "--session", s, "-q"]) == 0
    assert sorted(os.listdir(os.path.join(s, "runs"))) == ["eval-0001.json", "eval-0002.json",
                                                          "train-0001.json"]
    return s


def _record_places(v, at=()):
    """Every place of a record: its dicts' keys, the items of its lists (the first only of a list
    longer than 3: the events are alike), nested."""
    if isinstance(v, dict):
        for k, x in v.items():
            yield at + (k,)
            yield from _record_places(x, at + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v[:1] if len(v) > 3 else v):
            yield at + (i,)
            yield from _record_places(x, at + (i,))


def _record_mutants(rec):
    """(description, place, mutant record): the whole record replaced, and every place dropped
    or replaced by each ODD value."""
    for odd in ODD:
        yield f"record = {odd!r}", (), odd
    for place in _record_places(rec):
        for odd in ["drop"] + ODD:
            m = json.loads(json.dumps(rec))
            cur = m
            for k in place[:-1]:
                cur = cur[k]
            if odd == "drop":
                del cur[place[-1]]
            else:
                cur[place[-1]] = odd
            yield f"{place} {'dropped' if odd == 'drop' else '= ' + repr(odd)}", place, m


def test_a_damaged_run_record_is_named_never_a_traceback(recorded, tmp_path, capsys, monkeypatch):
    # records written by older code from bad board replies (a field missing, of another type)
    # parsed as JSON and then broke the report with a traceback
    import shutil

    from tinymp import bench
    s = str(tmp_path / "s")
    shutil.copytree(recorded, s)

    def no_emulator(*a, **kw):  # --m7 reads the record up to the emulator run, not that run
        raise bench.BenchError("no emulator in this test")
    monkeypatch.setattr(bench, "estimate_training", no_emulator)
    import matplotlib.figure
    save = matplotlib.figure.Figure.savefig
    # the figures are drawn whole, only small (time)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, p, dpi=None, **kw: save(fig, p, dpi=8, **kw))
    from tinymp.session import run
    png = str(tmp_path / "png")

    def report_cmd(*extra):
        """`tinymp report --session s EXTRA` without the parser: (exit status, stdout, stderr)"""
        import argparse
        args = argparse.Namespace(session=s, json="--json" in extra, m7="--m7" in extra,
                                  png=png if "--png" in extra else None)
        capsys.readouterr()
        code = run.handle_errors(run.cmd_report, args)
        cap = capsys.readouterr()
        return code, cap.out, cap.err
    # the same as the command line's
    assert report_cmd("--json")[:2] == tm(capsys, "report", "--session", s, "--json")[:2]
    seen = {0: 0, 2: 0}
    for name in ("train-0001.json", "eval-0001.json", "eval-0002.json"):
        path = os.path.join(s, "runs", name)
        with open(path) as f:
            clean = f.read()
        for what, place, rec in _record_mutants(json.loads(clean)):
            with open(path, "w") as f:
                json.dump(rec, f)
            runs = [["--json"], []]
            if name.startswith("train"):
                runs.append(["--m7"])
                if (place[:2] in PLOTTED or place[:1] in PLOTTED or not place) and \
                        what.endswith(PLOT_ODD):
                    runs.append(["--png"])
            for extra in runs:
                try:
                    code, out, err = report_cmd(*extra)
                except Exception as e:  # noqa: BLE001 - what the test is about
                    pytest.fail(f"{name} {what}: report {extra} raised {type(e).__name__}: {e}")
                assert code in (0, 2), (name, what, extra, err)
                seen[code] += 1
                if code == 2:
                    lines = err.strip().splitlines()
                    assert out == "" and len(lines) == 1, (name, what, extra, err)
                    # "... is damaged: what", or "... is not a run record" (not a dict)
                    assert lines[0].startswith((f"tinymp: the run record {path} is damaged: ",
                                                f"tinymp: {path} is not a run record")) \
                        and lines[0].endswith("; move it out of the runs folder"), lines
                elif extra == ["--json"]:
                    json.loads(out)
                else:
                    assert out.startswith("board "), (name, what, extra, out)
        with open(path, "w") as f:
            f.write(clean)
    assert seen[0] > 500 and seen[2] > 500, seen


def test_a_damaged_run_record_says_what_is_wrong_and_the_rest_is_reported(recorded, tmp_path,
                                                                          capsys):
    import shutil
    s = str(tmp_path / "s")
    shutil.copytree(recorded, s)
    path = os.path.join(s, "runs", "train-0001.json")
    rec = run_record(s, "train-0001.json")
    rec["end"]["plan"] = "x"
    with open(path, "w") as f:
        json.dump(rec, f)
    code, out, err = tm(capsys, "report", "--session", s)
    assert code == 2 and out == ""
    assert err == (f"tinymp: the run record {path} is damaged: 'end.plan' is a str ('x'), not a "
                   "dict; move it out of the runs folder\n")
    rec["end"]["plan"] = None
    rec["events"][3] = rec["events"][3][:5]
    with open(path, "w") as f:
        json.dump(rec, f)
    code, out, err = tm(capsys, "report", "--session", s)
    assert code == 2 and "is damaged: 'events[3]' is a list of 5 items, not 12;" in err, err
    # moved out, as the line says: the evals are reported
    os.rename(path, str(tmp_path / "train-0001.json"))
    rep, text = report(capsys, s)
    assert "train" not in rep and rep["accuracy_after"]["file"] == "eval-0002.json"
