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
