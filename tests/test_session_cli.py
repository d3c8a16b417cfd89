"""The session commands of `tinymp` against the simulated board: the whole demo (accuracy after >
before), a session from a config file, report/--json/--png, devices, and bad user input: one
clear line, a non-zero exit, nothing half-written."""
import json
import math
import re
import shutil
import os
import subprocess
import sys

import numpy as np
import pytest

import tinymp
from tinymp import cli, zoo
from tinymp.session import commands as C
from tinymp.session import dataset as D

MODELS = os.path.join(os.path.dirname(tinymp.__file__), "models")
SCENE = os.path.join(MODELS, "digits_shifted.npz")
HELD = os.path.join(MODELS, "digits_shifted_test.npz")
DEMO = os.path.join(MODELS, "demo.tmpm")


def tinymp_cmd(*args, cwd=None):
    r = subprocess.run([sys.executable, "-m", "tinymp.cli", *args], capture_output=True,
                       text=True, cwd=cwd, timeout=300)
    return r.returncode, r.stdout, r.stderr


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinymp:"), err
    return lines[0]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`tinymp demo` once, as a person runs it (text); its session folder for the checks."""
    folder = tmp_path_factory.mktemp("demo") / "demo"
    code, out, err = tinymp_cmd("demo", "--session", str(folder))
    assert code == 0, err
    return folder, out


def test_demo_personalises_the_model(demo_run):
    folder, out = demo_run
    for needle in ("evaluate   before:", "evaluate   after:", "latency per step", "memory",
                   "host CPU", "plot:"):
        assert needle in out, needle
    code, js, err = tinymp_cmd("report", "--session", str(folder), "--json")
    assert code == 0, err
    rep = json.loads(js)
    before, after = rep["accuracy_before"], rep["accuracy_after"]
    assert before["params"] == "pretrained" and after["params"] == "personalised"
    assert before["n"] == after["n"] == 339
    assert after["accuracy"] > before["accuracy"] + 0.1
    assert f"after {after['accuracy'] * 100:.1f}%" in out
    t = rep["train"]
    assert t["clock"] == "host" and "simulated board, host CPU times" in t["timing_note"]
    assert t["high_water"] <= t["arena_bytes"] <= 262144
    assert sum(t["breakdown"].values()) <= t["arena_bytes"]
    # the plan's tables, as the board's Plan reports them: the same plan made here has them
    with open(DEMO, "rb") as f:
        m = tinymp.Model(f.read())
    o = t["options"]
    here = m.plan(o["method"], budget=rep["board"]["arena_budget"])
    assert (here.arena_bytes, here.table_bytes) == (t["arena_bytes"], t["table_bytes"])
    assert "plan tables" in out and f"{t['table_bytes']:,}" in out
    assert t["heap_before"] is None  # the simulated board measures no heap: none is shown
    assert rep["simulated"] and rep["board"]["board"] == "OPENMV_H7 (simulated)"
    plots = sorted(os.listdir(folder / "plots"))
    assert plots == ["memory.png", "training.png"]
    assert all(os.path.getsize(folder / "plots" / p) > 5000 for p in plots)
    ds = D.Dataset.open(str(folder / "dataset"))
    assert len(ds) == 200 and list(ds.counts()) == [20] * 10
    assert {r["source"] for r in ds.records} == {"capture"}


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_quotes_the_demo_as_it_prints(demo_run):
    """README's "What `make demo` prints" block: its accuracy lines, its feature cache row and
    the latency table's header are the demo's own (the PC build's figures are the same on every
    run; the times are not, and the tables' spacing follows their widths)."""
    _, out = demo_run
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    quoted = [ln for ln in readme.splitlines()
              if ln.startswith(("train      600 steps", "evaluate   after:", "feature cache   ",
                                "latency per step, us", "plan tables   ",
                                "arena high water", "training arena (planned)"))]
    assert len(quoted) == 7, quoted
    words = lambda text: " ".join(text.split())  # noqa: E731
    for ln in quoted:
        assert words(ln) in [words(o) for o in out.splitlines()], ln


def test_readme_plan_table_is_what_plan_prints(capsys):
    assert cli.main(["plan", "--zoo"]) == 0
    printed = capsys.readouterr().out.splitlines()
    with open(os.path.join(ROOT, "README.md")) as f:
        block = f.read().split("`make plan` prints", 1)[1].split("```", 2)[1].strip().splitlines()
    assert len(block) >= 9 and all(ln.rstrip() in (p.rstrip() for p in printed) for ln in block)


def test_demo_folder_rules(demo_run, tmp_path):
    # the demo folder is replaced on a second run (--json prints the report); another folder is
    # never touched
    folder, _ = demo_run
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    code, out, err = tinymp_cmd("demo", "--session", str(other))
    assert code == 2 and "is not a demo folder" in one_line(err)
    assert sorted(os.listdir(other)) == ["keep.txt"]


def test_demo_inference_only():
    code, out, err = tinymp_cmd("demo", "--inference")
    assert code == 0, err
    assert "inference arena" in out
    acc, n = re.search(r"accuracy +([0-9.]+)% on (\d+) held-out", out).groups()
    # --json gives the same figures as data
    code, out, err = tinymp_cmd("demo", "--inference", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert f"{rep['accuracy'] * 100:.1f}" == acc and rep["n"] == int(n)
    assert rep["model"]["arena_bytes"] == tinymp.Model(zoo.demo()).inference_arena_bytes


def test_demo_folder_that_cannot_be_made_is_one_line(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    code, out, err = tinymp_cmd("demo", "--session", str(f / "sub"))
    assert code == 2 and "cannot make the demo folder" in one_line(err)
    assert f.read_text() == "x"


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "soon"])
def test_a_timeout_must_be_positive_seconds(value):
    for cmd in (["demo"], ["push", DEMO, "--port", "sim"]):
        code, out, err = tinymp_cmd(*cmd, "--timeout", value)
        assert code == 2 and "--timeout: must be a positive number of seconds" in err, err


def test_step_by_step_commands(tmp_path):
    s = str(tmp_path / "s")
    code, out, err = tinymp_cmd("push", DEMO, "--port", "sim", "--session", s, "--json")
    assert code == 0, err
    assert json.loads(out)["bytes"] == os.path.getsize(DEMO)
    code, out, err = tinymp_cmd("collect", "--from", SCENE, "--port", "sim", "--session", s, "-q")
    assert code == 0, err
    # -q drops the progress bars, not the result line (as in push, train and eval)
    n = len(np.load(SCENE)["y"])
    assert out == (f"{n} new samples from {SCENE} (0 already there); "
                   f"{os.path.join(os.path.abspath(s), 'dataset')} holds {n}; {n} sent to the "
                   "board\n"), out
    code, out, err = tinymp_cmd("collect", "--from", HELD, "--eval", "--port", "sim",
                                "--session", s, "--json")
    assert code == 0, err
    assert json.loads(out)["total"] == len(np.load(HELD)["y"])
    code, out, err = tinymp_cmd("train", "--port", "sim", "--session", s, "--epochs", "2",
                                "--lr", "0.002", "--json")
    assert code == 0, err
    t = json.loads(out)
    assert t["steps"] == 400 and t["saved"]
    assert t["stalled_steps"] == 0 and "warning" not in err
    code, out, err = tinymp_cmd("eval", "--both", "--port", "sim", "--session", s, "--json")
    assert code == 0, err
    pre, post = json.loads(out)
    assert pre["params"] == "pretrained" and post["params"] == "personalised"
    assert post["accuracy"] > pre["accuracy"]
    code, out, err = tinymp_cmd("report", "--session", s, "--png", str(tmp_path / "png"), "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["accuracy_after"]["accuracy"] == post["accuracy"]
    assert sorted(os.listdir(tmp_path / "png")) == ["memory.png", "training.png"]
    code, out, err = tinymp_cmd("params", "reset", "--port", "sim", "--session", s)
    assert code == 0, err
    code, out, err = tinymp_cmd("eval", "--port", "sim", "--session", s, "--json")
    assert json.loads(out)[0]["accuracy"] == pre["accuracy"]


def test_session_from_a_config_file(tmp_path):
    cfg = {"model": DEMO, "port": "sim", "board": "NUCLEO_H743ZI2", "session": "sess",
           "collect": [{"from": SCENE}], "eval": HELD,
           "train": {"method": "full", "epochs": 1, "lr": 0.001, "budget_kb": 128},
           "plots": False}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    code, out, err = tinymp_cmd("session", str(path), "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["board"]["board"] == "NUCLEO_H743ZI2 (simulated)"
    assert rep["train"]["arena_bytes"] <= 128 * 1024
    assert rep["accuracy_after"]["accuracy"] > rep["accuracy_before"]["accuracy"]
    assert os.path.isdir(tmp_path / "sess" / "sim" / "NUCLEO_H743ZI2" / "flash")


def test_devices_lists_sim_and_qemu():
    code, out, err = tinymp_cmd("devices", "--json")
    assert code == 0, err
    rows = json.loads(out)
    ports = [r["port"] for r in rows]
    assert "sim" in ports and "qemu" in ports
    assert sum(r["default"] for r in rows) == 1


# --- bad input ------------------------------------------------------------------------------

def test_train_says_when_steps_trained_nothing(tmp_path, capsys):
    # a far too high learning rate drives the logits to their int8 limits, where the clamp mask
    # passes no gradient: the run finishes, and says so on stderr (text and JSON alike)
    s = str(tmp_path / "s")
    assert cli.main(["push", DEMO, "--port", "sim", "--session", s, "-q"]) == 0
    assert cli.main(["collect", "--from", SCENE, "--port", "sim", "--session", s, "-q"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--port", "sim", "--session", s, "--epochs", "2", "--lr", "50",
                     "--fresh", "--json"]) == 0
    cap = capsys.readouterr()
    t = json.loads(cap.out)
    assert 0 < t["stalled_steps"] <= t["steps"] == 400
    warn = [ln for ln in cap.err.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and f"{t['stalled_steps']} of 400 steps" in warn[0]
    assert "--lr" in warn[0] and "this run: 50" in warn[0]
    assert cli.main(["train", "--port", "sim", "--session", s, "--epochs", "1", "--lr", "0.002",
                     "--fresh"]) == 0
    cap = capsys.readouterr()
    assert "warning" not in cap.err and "trained 200 steps" in cap.out


def test_train_says_when_the_saved_run_cannot_go_on(tmp_path, capsys):
    # another momentum: the saved parameters go on with a new training state, which a note says;
    # another storage: the saved file is another plan's, the run starts from the pretrained
    # model, and a warning says so (both on stderr)
    s = str(tmp_path / "s")
    assert cli.main(["push", DEMO, "--port", "sim", "--session", s, "-q"]) == 0
    assert cli.main(["collect", "--from", SCENE, "--port", "sim", "--session", s, "-q"]) == 0
    assert cli.main(["train", "--port", "sim", "--session", s, "--steps", "5", "-q"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--port", "sim", "--session", s, "--steps", "5"]) == 0
    assert "warning" not in capsys.readouterr().err  # the same options: it goes on
    assert cli.main(["train", "--port", "sim", "--session", s, "--steps", "5", "--momentum", "0.9"]) == 0
    err = capsys.readouterr().err
    note = [ln for ln in err.splitlines() if ln.startswith("note:")]
    assert "warning" not in err and len(note) == 1 and "parameters" in note[0] and "momentum" in note[0]
    assert cli.main(["train", "--port", "sim", "--session", s, "--steps", "5", "--storage", "fp32"]) == 0
    err = capsys.readouterr().err
    warn = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert "note:" not in err
    assert len(warn) == 1 and "not from the saved run" in warn[0] and "storage" in warn[0]


def _tree(path):
    out = []
    for root, _, files in os.walk(path):
        for f in files:
            out.append(os.path.relpath(os.path.join(root, f), path))
    return sorted(out)


@pytest.fixture(scope="module")
def ready(tmp_path_factory):
    """A session whose simulated board holds the demo model and a few samples."""
    s = str(tmp_path_factory.mktemp("ready") / "s")
    assert cli.main(["push", DEMO, "--port", "sim", "--session", s, "-q"]) == 0
    return s


def test_missing_and_invalid_model_files(tmp_path, ready, capsys):
    bad = tmp_path / "bad.tmpm"
    bad.write_bytes(zoo.demo()[:3000])
    before = _tree(ready)
    for path, needle in ((str(tmp_path / "none.tmpm"), "no such model file"),
                         (str(bad), f"truncated (shorter than the size in its header) (in {bad}); "
                                    "copy or convert the model again"),
                         (str(tmp_path), "is a folder")):
        assert cli.main(["push", path, "--port", "sim", "--session", ready]) == 2
        assert needle in one_line(capsys.readouterr().err)
    assert _tree(ready) == before


def test_model_too_big_for_the_board(tmp_path, ready, capsys):
    big = tmp_path / "big.tmpm"
    big.write_bytes(zoo.mobilenetv2(width=0.35, resolution=32, num_classes=10))
    flash = os.path.join(ready, "sim", "OPENMV_H7", "flash")
    before = _tree(flash)
    assert cli.main(["push", str(big), "--port", "sim", "--session", ready]) == 2
    line = one_line(capsys.readouterr().err)
    assert "does not fit the 131,072 bytes of model flash of OPENMV_H7 (simulated)" in line
    assert _tree(flash) == before


def test_unknown_port_and_board(ready, capsys):
    assert cli.main(["push", DEMO, "--port", "/dev/ttyNOPE9", "--session", ready]) == 2
    assert "no such port '/dev/ttyNOPE9'" in one_line(capsys.readouterr().err)
    assert cli.main(["push", DEMO, "--port", "sim", "--board", "PDP11", "--session", ready]) == 2
    assert "no board profile 'PDP11'" in one_line(capsys.readouterr().err)
    before = _tree(ready)
    assert cli.main(["status", "--port", "sim:OPENMV_H7", "--board", "NUCLEO_H743ZI2",
                     "--session", ready]) == 2
    assert one_line(capsys.readouterr().err) == (
        "tinymp: --port sim:OPENMV_H7 and --board NUCLEO_H743ZI2 name two boards: give one of "
        "them")
    assert _tree(ready) == before
    assert cli.main(["status", "--port", "sim:OPENMV_H7", "--board", "OPENMV_H7",
                     "--session", ready, "--json"]) == 0
    capsys.readouterr()


def test_bad_samples(tmp_path, ready, capsys):
    ds_dir = os.path.join(ready, "dataset")
    before = _tree(ready)
    x = np.zeros((5, 32, 32), np.uint8)
    cases = {
        "labels.npz": (dict(x=x, y=np.array([0, 1, 2, 3, 10])), "label 10 of sample 4 is out of range 0..9"),
        "shape.npz": (dict(x=np.zeros((5, 28, 28), np.uint8), y=np.zeros(5, int)), "have shape (28, 28, 1)"),
        "count.npz": (dict(x=x, y=np.zeros(4, int)), "one label per sample"),
        "float_labels.npz": (dict(x=x, y=np.zeros(5)), "labels must be integers"),
        "nokeys.npz": (dict(images=x), "holds no array 'x' or 'y' (it holds 'images')"),
        "nan.npz": (dict(x=np.full((5, 32, 32), np.nan, np.float32), y=np.zeros(5, int)), "NaN"),
    }
    for name, (arrays, needle) in cases.items():
        p = tmp_path / name
        np.savez(p, **arrays)
        assert cli.main(["collect", "--from", str(p), "--port", "sim", "--session", ready]) == 2
        assert needle in one_line(capsys.readouterr().err), name
    (tmp_path / "junk.npz").write_bytes(b"not numpy")
    assert cli.main(["collect", "--from", str(tmp_path / "junk.npz"), "--port", "sim",
                     "--session", ready]) == 2
    assert "cannot read samples" in one_line(capsys.readouterr().err)
    assert cli.main(["collect", "--from", str(tmp_path / "none.npz"), "--port", "sim",
                     "--session", ready]) == 2
    assert "no such samples file" in one_line(capsys.readouterr().err)
    assert cli.main(["collect", "--label", "12", "--count", "3", "--port", "sim",
                     "--session", ready]) == 2
    assert "label 12 is out of range 0..9" in one_line(capsys.readouterr().err)
    assert cli.main(["collect", "--port", "sim", "--session", ready]) == 2
    assert "--label L and --count N" in one_line(capsys.readouterr().err)
    assert _tree(ready) == before  # nothing written: not even an empty dataset
    assert not os.path.exists(ds_dir) or len(D.Dataset.open(ds_dir)) == 0


def test_collect_from_a_file_or_the_camera_not_both(tmp_path, ready, capsys):
    # `--from` with `--label/--count` once dropped the capture, and `--eval` with a capture put
    # the photos into the training set; both are one line now, nothing written
    before = _tree(ready)
    for extra, needle in ((["--from", SCENE, "--label", "3", "--count", "2"], "not both"),
                          (["--from", SCENE, "--count", "2"], "not both"),
                          (["--eval", "--label", "3", "--count", "2"],
                           "--eval holds out samples from a file")):
        assert cli.main(["collect", *extra, "--port", "sim", "--session", ready]) == 2
        assert needle in one_line(capsys.readouterr().err)
    assert _tree(ready) == before
    # what the line advises: photos captured in another session, held out here
    other = str(tmp_path / "other")
    assert cli.main(["push", DEMO, "--port", "sim", "--session", other, "-q"]) == 0
    assert cli.main(["collect", "--label", "3", "--count", "4", "--port", "sim",
                     "--session", other, "-q"]) == 0
    here = str(tmp_path / "here")
    assert cli.main(["push", DEMO, "--port", "sim", "--session", here, "-q"]) == 0
    capsys.readouterr()
    assert cli.main(["collect", "--from", os.path.join(other, "dataset"), "--eval", "--port",
                     "sim", "--session", here, "--json", "-q"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["added"] == 4 and got["sent_to_board"] == 0 and got["per_class"][3] == 4
    held = D.Dataset.open(os.path.join(here, "eval"))
    theirs = D.Dataset.open(os.path.join(other, "dataset"))
    assert (held.samples() == theirs.samples()).all() and list(held.labels) == [3] * 4
    assert not os.path.exists(os.path.join(here, "dataset"))


def test_samples_held_out_and_trained_on_are_called_so(tmp_path, capsys):
    # the same file imported into both sets: its samples' held-out accuracy is not held out
    s = str(tmp_path / "s")
    assert cli.main(["push", DEMO, "--port", "sim", "--session", s, "-q"]) == 0
    assert cli.main(["collect", "--from", HELD, "--port", "sim", "--session", s, "-q"]) == 0
    capsys.readouterr()
    n = len(np.load(HELD)["y"])
    assert cli.main(["collect", "--from", HELD, "--eval", "--port", "sim", "--session", s,
                     "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {n} of these samples are also in the session's training set "
                   "(imported from the same file): the held-out accuracy of those is not held "
                   "out"]
    # ... and the other way round: the held-out set imported into the training set
    assert cli.main(["collect", "--from", os.path.join(s, "eval"), "--port", "sim",
                     "--session", s, "-q"]) == 0
    assert f"warning: {n} of these samples are also in the session's held-out set" in \
        capsys.readouterr().err
    # a file of other samples: no warning
    t = str(tmp_path / "t")
    assert cli.main(["push", DEMO, "--port", "sim", "--session", t, "-q"]) == 0
    assert cli.main(["collect", "--from", SCENE, "--port", "sim", "--session", t, "-q"]) == 0
    assert cli.main(["collect", "--from", HELD, "--eval", "--port", "sim", "--session", t,
                     "-q"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_params_reset_says_whether_rollback_can_undo_it(tmp_path, capsys):
    s = str(tmp_path / "s")
    # no model on the board: no parameters of it either; nothing written
    assert cli.main(["params", "reset", "--port", "sim", "--session", s]) != 0
    assert "the board has no model" in one_line(capsys.readouterr().err)
    assert not os.path.exists(os.path.join(s, "session.json"))
    assert cli.main(["push", DEMO, "--port", "sim", "--session", s, "-q"]) == 0
    capsys.readouterr()
    # nothing saved: the reset keeps nothing that rollback could bring back
    assert cli.main(["params", "reset", "--port", "sim", "--session", s]) == 0
    assert capsys.readouterr().out.strip() == ("the board is back to the pretrained weights (it "
                                               "kept no earlier parameters: there is nothing to "
                                               "roll back to)")
    assert cli.main(["params", "rollback", "--port", "sim", "--session", s]) == 2
    assert "no earlier parameters to roll back to" in one_line(capsys.readouterr().err)
    # a trained run saved: reset, then rollback brings it back
    assert cli.main(["collect", "--from", HELD, "--port", "sim", "--session", s, "-q"]) == 0
    assert cli.main(["train", "--steps", "3", "--port", "sim", "--session", s, "-q"]) == 0
    capsys.readouterr()
    assert cli.main(["params", "reset", "--port", "sim", "--session", s]) == 0
    assert capsys.readouterr().out.strip() == ("the board is back to the pretrained weights "
                                               "(`params rollback` undoes this)")
    assert cli.main(["params", "rollback", "--port", "sim", "--session", s]) == 0
    capsys.readouterr()


def test_options_are_checked_as_the_bindings_float32():
    # the bindings' TMP_OPT_F32: a value within float32's range is the float32 nearest it
    # (numpy's conversion), anything beyond the largest finite float32 is an infinity, also the
    # doubles just above it that rounding to nearest would bring back to FLT_MAX
    flt_max = float(np.finfo(np.float32).max)
    for v in (0.25, 1e-50, -1e-50, 1e-40, 0.9990001, flt_max, -flt_max, 1e38, 3):
        assert C._float32(v) == float(np.float32(v)), v
    above = np.nextafter(flt_max, math.inf)
    assert float(np.float32(above)) == flt_max  # rounding would keep it finite
    assert C._float32(above) == math.inf and C._float32(-above) == -math.inf
    assert C._float32(1e300) == math.inf and C._float32(2 ** 2000) == math.inf
    assert C._float32(-2 ** 2000) == -math.inf and math.isnan(C._float32(math.nan))


def test_bad_train_and_eval_requests(tmp_path, ready, capsys):
    assert cli.main(["train", "--port", "sim", "--session", ready]) == 2
    assert "no samples to train on" in one_line(capsys.readouterr().err)
    assert cli.main(["train", "--budget", "-3", "--port", "sim", "--session", ready]) == 2
    assert "--budget must be a positive" in one_line(capsys.readouterr().err)
    # values out of the board's range stop before the board is asked (the board's own check,
    # the same ranges, is test_session_sim's): one line, status 2, nothing written
    before = _tree(ready)
    for argv, needle in ((["--lr", "nan"], "--lr must be in [0, 1e+06], got nan"),
                         (["--lr", "1e9"], "--lr must be in [0, 1e+06]"),
                         (["--lr", "-0.5"], "--lr must be in [0, 1e+06], got -0.5"),
                         (["--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
                         (["--period", "-1"], "--period must be in [0,"),
                         (["--r", "16"], "--r must be in [1, 15], got 16"),
                         (["--ratio", "0"], "--ratio must be in (0, 1]"),
                         # the board's engine would get 0 (float32), which is no ratio
                         (["--ratio", "1e-50"],
                          "--ratio must be in (0, 1], got 1e-50 (0.0 as a 32-bit float)"),
                         (["--momentum", "1"], "--momentum must be in [0, 0.999]"),
                         (["--steps", "0"], "--steps must be in [1,"),
                         (["--epochs", "0"], "--epochs must be in [1,")):
        assert cli.main(["train", *argv, "--port", "sim", "--session", ready]) == 2, argv
        assert needle in one_line(capsys.readouterr().err), argv
    assert _tree(ready) == before
    assert cli.main(["eval", "--port", "sim", "--session", ready]) == 2
    assert "nothing to evaluate on" in one_line(capsys.readouterr().err)
    empty = str(tmp_path / "empty")
    assert cli.main(["eval", "--port", "sim", "--session", empty]) == 2
    assert "the board has no model" in one_line(capsys.readouterr().err)
    assert cli.main(["report", "--session", empty]) == 2
    assert "holds no session" in one_line(capsys.readouterr().err)


def test_bad_session_configs(tmp_path, capsys):
    for cfg, needle in (({"port": "sim"}, "names no model"),
                        ({"model": DEMO, "colect": []}, "unknown keys colect"),
                        ({"model": DEMO, "collect": [{"count": 3}]},
                         'collect item 1 must be {"from": FILE} or {"label": L, "count": N}'),
                        ({"model": DEMO, "train": {"epoch": 3}}, "unknown train options epoch"),
                        ({"model": "nope.tmpm", "session": "s"}, "no such model file"),
                        ({"model": 5}, "'model' must be a string, not a number"),
                        ({"model": DEMO, "port": 5}, "'port' must be a string, not a number"),
                        ({"model": DEMO, "collect": [{"from": 5}]},
                         "'from' must be the path of a samples")):
        p = tmp_path / "c.json"
        p.write_text(json.dumps(cfg))
        assert cli.main(["session", str(p)]) == 2
        assert needle in one_line(capsys.readouterr().err)
    assert cli.main(["session", str(tmp_path)]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"tinymp: {tmp_path} is a folder, not a session config: give the config file (JSON, "
        "or TOML; docs/SESSION.md shows one)")
    (tmp_path / "c.json").write_text("{nope")
    assert cli.main(["session", str(tmp_path / "c.json")]) == 2
    assert "is not valid JSON" in one_line(capsys.readouterr().err)
    # train values, samples files whose content is wrong (for training or for evaluation), and
    # a flow with nothing to train on: refused before the board is started or the session
    # folder written
    collect = [{"from": HELD}]
    np.savez(tmp_path / "labels.npz", x=np.zeros((2, 32, 32), np.uint8), y=np.array([0, 10]))
    np.savez(tmp_path / "shape.npz", x=np.zeros((2, 28, 28), np.uint8), y=np.zeros(2, int))
    (tmp_path / "junk.npz").write_bytes(b"not numpy")
    for cfg, needle in (({"collect": [{"from": str(tmp_path / "labels.npz")}]},
                         "label 10 of sample 1 is out of range 0..9"),
                        ({"collect": collect + [{"from": str(tmp_path / "junk.npz")}]},
                         "cannot read samples"),
                        ({"collect": collect, "eval": str(tmp_path / "shape.npz")},
                         "have shape (28, 28, 1)"),
                        ({"collect": collect, "eval": str(tmp_path / "none.npz")},
                         "no such samples file")):
        p = tmp_path / "c.json"
        p.write_text(json.dumps(dict(cfg, model=DEMO, port="sim", session="s")))
        assert cli.main(["session", str(p)]) == 2, cfg
        assert needle in one_line(capsys.readouterr().err), cfg
    for cfg, needle in (({"train": {"lr": -1}, "collect": collect}, "train.lr must be in [0, 1e+06]"),
                        ({"train": {"ratio": 0}, "collect": collect}, "train.ratio must be in (0, 1]"),
                        ({"train": {"seed": "x"}, "collect": collect}, "train.seed must be an integer"),
                        ({"train": {"method": "fast"}, "collect": collect}, "train.method must be one of"),
                        ({"train": {"fresh": 1}, "collect": collect}, "train.fresh must be true or false"),
                        ({"train": {"budget_kb": 0}, "collect": collect}, "train.budget_kb must be a positive"),
                        # the host's engine: the demo model's smallest tinymp plan needs more
                        ({"train": {"budget_kb": 1}, "collect": collect},
                         "train.budget_kb 1 fits no training plan of demo.tmpm (method 'tinymp' "
                         "does not fit a budget of 1024 bytes"),
                        ({"train": {"budget_kb": 1, "method": "last"}, "collect": collect},
                         "(method 'last' does not fit"),
                        # a budget in bytes is checked the same way
                        ({"train": {"budget": 200}, "collect": collect},
                         "train.budget 200 (bytes) fits no training plan of demo.tmpm (method "
                         "'tinymp' does not fit a budget of 200 bytes"),
                        ({"train": {"steps": 5, "epochs": 1}, "collect": collect},
                         "c.json: give train.steps or train.epochs, not both"),
                        ({"collect": [{"label": 12, "count": 3}]}, "collect label 12 is not a class"),
                        ({"collect": [{"label": [1, "a"], "count": 3}]},
                         "'label' must be a class number or a list of them, not [1, \"a\"]"),
                        ({"collect": [{"label": 1, "count": "x"}]},
                         "'count' must be a whole number >= 0 (samples per class), not \"x\""),
                        ({}, "nothing to train on")):
        p = tmp_path / "c.json"
        p.write_text(json.dumps(dict(cfg, model=DEMO, port="sim", session="s")))
        assert cli.main(["session", str(p)]) == 2, cfg
        assert needle in one_line(capsys.readouterr().err), cfg
    assert not os.path.exists(tmp_path / "s")
    # a session whose samples were quantised for another model's input: refused before the
    # push that would replace the board's model and its saved parameters
    m = tinymp.Model(zoo.demo())
    D.Dataset.create(str(tmp_path / "s2" / "dataset"), shape=m.input_shape,
                     scale=m.input_scale * 2, zero_point=m.input_zero_point,
                     num_classes=m.num_classes)
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"model": DEMO, "port": "sim", "session": "s2", "collect": collect}))
    assert cli.main(["session", str(p)]) == 2
    assert "holds samples quantised with input scale" in one_line(capsys.readouterr().err)
    assert os.listdir(tmp_path / "s2") == ["dataset"]      # no board was started


def test_the_pc_plans_with_the_options_the_board_plans_with():
    # the session's up-front plan takes C.PLAN_KEYS; the agent's plan() gets exactly these
    from tinymp import tinymp_agent as A
    agent = A.Agent.__new__(A.Agent)
    agent.board = {}
    opts = {k: 1 for k in C.TRAIN_KEYS}
    assert tuple(agent._plan_options(opts)) == C.PLAN_KEYS


def test_a_config_budget_is_planned_with_every_plan_option(tmp_path, capsys):
    # the up-front check planned without n_bias and macs, which make the board's plan smaller:
    # a budget between the two plans was refused although the board fits it
    m = tinymp.Model(zoo.demo())
    with pytest.raises(ValueError) as e:
        m.plan(method="tinymp", budget=1)
    least = int(re.search(r"needs (\d+) bytes", str(e.value)).group(1))  # without n_bias
    budget = least - 8
    with pytest.raises(ValueError):
        m.plan(method="tinymp", budget=budget)
    assert m.plan(method="tinymp", budget=budget, n_bias=0).arena_bytes <= budget
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"model": DEMO, "port": "sim", "session": "s", "plots": False,
                             "collect": [{"from": HELD}],
                             "train": {"n_bias": 0, "budget_kb": budget / 1024, "steps": 2}}))
    assert cli.main(["session", str(p), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["steps"] == 2


def test_a_trial_run_from_the_command_line(tmp_path, capsys):
    # train --no-save keeps the run aside; a later command measures it and saves it
    s = str(tmp_path / "s")
    assert cli.main(["push", DEMO, "--port", "sim", "--session", s, "-q"]) == 0
    assert cli.main(["collect", "--from", HELD, "--port", "sim", "--session", s, "-q"]) == 0
    capsys.readouterr()
    before = _tree(s)
    assert cli.main(["params", "save", "--port", "sim", "--session", s]) == 2
    line = one_line(capsys.readouterr().err)
    assert "nothing unsaved to save" in line and "--no-save" in line
    assert cli.main(["eval", "--trial", "--port", "sim", "--session", s, "-q"]) == 2
    assert "holds no trial run" in one_line(capsys.readouterr().err)
    assert _tree(s) == before
    assert cli.main(["train", "--no-save", "--method", "full", "--lr", "0.001", "--port", "sim",
                     "--session", s, "-q"]) == 0
    out = capsys.readouterr().out
    assert "NOT saved, kept as a trial run" in out and "tinymp eval --trial" in out
    accuracy = lambda text: re.search(r"accuracy ([\d.]+)% \((\w+) parameters", text).groups()  # noqa: E731
    assert cli.main(["eval", "--port", "sim", "--session", s, "-q"]) == 0
    assert accuracy(capsys.readouterr().out)[1] == "pretrained"  # nothing saved yet
    assert cli.main(["eval", "--trial", "--port", "sim", "--session", s, "-q"]) == 0
    acc, used = accuracy(capsys.readouterr().out)
    assert used == "trial"
    assert cli.main(["params", "save", "--port", "sim", "--session", s]) == 0
    assert "the trial run is now the board's saved parameters" in capsys.readouterr().out
    assert cli.main(["eval", "--port", "sim", "--session", s, "-q"]) == 0
    assert accuracy(capsys.readouterr().out) == (acc, "personalised")


def test_the_pre_check_refuses_exactly_what_the_binding_refuses():
    # the PC tool's ranges come from the binding's table; here each bound is tried against the
    # binding's own plan() / Trainer() (the board's binding holds the same, tests/device)
    m = tinymp.Model(DEMO)
    p = m.plan("last")

    def binding_takes(k, v):
        try:
            if k in ("lr", "seed", "period"):
                tinymp.Trainer(m, p, **{k: v})
            else:
                m.plan("tinymp", **{k: v})
        except ValueError as e:
            return "must be" not in str(e)  # a range refusal, not e.g. a budget too small
        return True

    def cli_takes(k, v):
        try:
            C.check_train_options({k: v})
        except C.SessionError as e:
            assert e.code == 2
            return False
        return True

    ranges = tinymp._tinymp._option_ranges()
    checked = 0
    for k in C.TRAIN_KEYS:
        if k not in ranges:
            continue
        kind, lo, hi, lo_open = ranges[k]
        step = 1 if kind == "int" else max(abs(hi), 1) * 1e-6
        below = lo - (0 if lo_open else (1 if kind == "int" else 1e-6))
        for v in (lo, hi, below, hi + step):
            assert cli_takes(k, v) == binding_takes(k, v), (k, v)
        assert not cli_takes(k, below) and not cli_takes(k, hi + step), k
        checked += 1
    assert checked == 9  # budget r ratio momentum n_bias macs lr seed period


def test_an_older_agent_is_refused_what_it_would_misread():
    # a frozen agent of version 1 reads params="trial" as "personalised": refuse, do not ask
    class Old:
        info = {"agent": "1"}
    with pytest.raises(C.SessionError) as e:
        C.need_agent(Old, 2, "trial runs")
    assert e.value.code == 2 and "version 2 or later; this board runs version 1" in str(e.value)
    Old.info = {"agent": "2"}
    C.need_agent(Old, 2, "trial runs")
    Old.info = {}
    with pytest.raises(C.SessionError):
        C.need_agent(Old, 2, "trial runs")


def test_model_paths_that_are_folders_and_closed_pipes(tmp_path):
    for cmd in ("info", "plan", "push"):
        code, _, err = tinymp_cmd(cmd, str(tmp_path), *(["--port", "sim", "--session", str(tmp_path / "s")]
                                                         if cmd == "push" else []))
        assert code == 2 and "is a folder, not a model file" in one_line(err), cmd
    # the reader of a pipe is gone before the output comes (`tinymp plan --zoo | head -1` once
    # head has its line): no traceback, the status of a closed pipe
    for argv in (["plan", "--zoo"], ["info", DEMO, "--layers"]):
        p = subprocess.Popen([sys.executable, "-m", "tinymp.cli", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        p.stdout.close()
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) == 141 and err == "", err
    code, out, _ = tinymp_cmd("--version")
    assert code == 0 and out.startswith(f"tinymp {tinymp.__version__} ")


def test_the_command_line_wins_over_the_config(tmp_path, capsys):
    # --session, --port and --board given on the command line are taken over the config's;
    # without them the config's are (they were the config's either way)
    cfg = {"model": DEMO, "port": "auto", "board": "OPENMV_H7", "session": "cfg-s",
           "collect": [{"from": HELD}], "train": {"method": "last", "steps": 2}}
    p = tmp_path / "c.json"
    p.write_text(json.dumps(cfg))
    cli_s = tmp_path / "cli-s"
    assert cli.main(["session", str(p), "--session", str(cli_s), "--port", "sim",
                     "--board", "NUCLEO_H743ZI2", "--json"]) == 0, capsys.readouterr().err
    assert not (tmp_path / "cfg-s").exists()
    assert os.listdir(cli_s / "sim") == ["NUCLEO_H743ZI2"]
    capsys.readouterr()
    cfg["port"] = "sim"
    p.write_text(json.dumps(cfg))
    assert cli.main(["session", str(p), "--json"]) == 0, capsys.readouterr().err
    assert os.listdir(tmp_path / "cfg-s" / "sim") == ["OPENMV_H7"]
    # a --port that names its board is not set against the config's board, and a --board
    # against the config's sim:PROFILE port takes the simulated board it names
    for argv, profile in ((["--port", "sim:QEMU_M7"], "QEMU_M7"), (["--board", "UNIX"], "UNIX")):
        if profile == "UNIX":
            cfg["port"] = "sim:OPENMV_H7"
            p.write_text(json.dumps(cfg))
        assert cli.main(["session", str(p), "--json", *argv]) == 0, capsys.readouterr().err
        assert profile in os.listdir(tmp_path / "cfg-s" / "sim")
    capsys.readouterr()


def test_a_failed_command_leaves_no_new_session_folder(tmp_path, capsys):
    """A mistyped --session: the command fails (the new folder's simulated board has no model)
    and the folders it made for the session are gone; a folder that was there stays, and so
    does a new one that holds anything a command wrote."""
    new = tmp_path / "a" / "b" / "typo"
    for cmd in (["eval"], ["train", "--steps", "1"], ["collect", "--label", "0", "--count", "1"]):
        assert cli.main([*cmd, "--port", "sim", "--session", str(new)]) == 2
        assert "the board has no model" in capsys.readouterr().err
        assert os.listdir(tmp_path) == []
    (tmp_path / "there").mkdir()
    assert cli.main(["eval", "--port", "sim", "--session", str(tmp_path / "there")]) == 2
    assert sorted(os.listdir(tmp_path / "there")) == [".lock", "sim"]
    # a status that succeeds makes the folder and its board, as documented
    assert cli.main(["status", "--port", "sim", "--session", str(new), "--json"]) == 0
    assert sorted(os.listdir(new)) == [".lock", "sim"]


@pytest.mark.parametrize("written", ["flash file", "romfs", "dataset", "log only"])
def test_only_an_untouched_new_folder_is_dropped(tmp_path, written):
    from tinymp.session import run
    made = tmp_path / "new"
    path = made / "s"
    board = path / "sim" / "OPENMV_H7"
    (board / "flash").mkdir(parents=True)
    (path / ".lock").write_bytes(b"")
    (board / "board.log").write_text("up\n")
    rom = bytearray(b"\xff" * 200000)
    if written == "romfs":
        rom[150000] = 0
    (board / "romfs0.bin").write_bytes(bytes(rom))
    if written == "flash file":
        (board / "flash" / "push-ab.part").write_bytes(b"x")
    elif written == "dataset":
        (path / "dataset").mkdir()
    before = sorted(os.path.relpath(os.path.join(r, f), path)
                    for r, ds, fs in os.walk(path) for f in fs + ds)
    cleared = run._clear_if_untouched(str(path))
    assert cleared == (written == "log only")
    if cleared:  # the lock released: the lock file, the folder and the one made above it
        assert os.listdir(path) == [".lock"]
        run._drop_made(str(path), str(made))
        assert not os.path.exists(made) and os.path.exists(tmp_path)
    else:  # nothing changed
        assert sorted(os.path.relpath(os.path.join(r, f), path)
                      for r, ds, fs in os.walk(path) for f in fs + ds) == before


def test_a_folder_another_command_took_meanwhile_stays(tmp_path):
    # after the lock is released, a command that took the folder wrote its pid into the lock
    from tinymp.session import run
    made = tmp_path / "s"
    made.mkdir()
    (made / ".lock").write_bytes(b"pid 1\n")
    run._drop_made(str(made), str(made))
    assert os.listdir(made) == [".lock"]


@pytest.mark.parametrize("cmd", [("status",), ("push", DEMO), ("train", "--steps", "1")])
def test_qemu_port_without_its_firmware_is_refused_up_front(tmp_path, cmd):
    # the QEMU firmware is something to build, as a serial port is something to plug in: a user
    # error (status 2) before the session folder is made, like a mistyped serial device
    env = dict(os.environ, TINYMP_QEMU_FIRMWARE=str(tmp_path / "none.elf"))
    sess = tmp_path / "new" / "sess"
    r = subprocess.run([sys.executable, "-m", "tinymp.cli", *cmd, "--port", "qemu",
                        "--session", str(sess)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert "needs the QEMU firmware: make firmware BOARD=QEMU_M7" in one_line(r.stderr)
    assert not (tmp_path / "new").exists()


def empty_bin(tmp_path):
    """A folder for PATH with no program in it (qemu-system-arm may sit next to python)."""
    d = tmp_path / "empty-bin"
    d.mkdir(exist_ok=True)
    return d


def test_qemu_port_without_qemu_is_refused_up_front(tmp_path):
    fw = tmp_path / "firmware.elf"
    fw.write_bytes(b"\x7fELF")
    # a PATH without qemu-system-arm (the command runs this Python by its full path)
    env = dict(os.environ, TINYMP_QEMU_FIRMWARE=str(fw), PATH=str(empty_bin(tmp_path)))
    r = subprocess.run([sys.executable, "-m", "tinymp.cli", "status", "--port", "qemu",
                        "--session", str(tmp_path / "s")], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "needs qemu-system-arm" in one_line(r.stderr)
    assert not (tmp_path / "s").exists()


def test_devices_says_what_qemu_lacks(tmp_path):
    # `tinymp devices` offers the qemu port only when `--port qemu` would start: the firmware
    # and qemu-system-arm both present; otherwise its row says what is missing
    fw = tmp_path / "firmware.elf"
    fw.write_bytes(b"\x7fELF")
    cases = [(dict(TINYMP_QEMU_FIRMWARE=str(tmp_path / "none.elf")), "needs the QEMU firmware"),
             (dict(TINYMP_QEMU_FIRMWARE=str(fw), PATH=str(empty_bin(tmp_path))),
              "needs qemu-system-arm")]
    if shutil.which("qemu-system-arm"):
        cases.append((dict(TINYMP_QEMU_FIRMWARE=str(fw)), None))
    for extra, words in cases:
        r = subprocess.run([sys.executable, "-m", "tinymp.cli", "devices", "--json"],
                           capture_output=True, text=True, env=dict(os.environ, **extra),
                           timeout=120)
        assert r.returncode == 0, r.stderr
        row = [x for x in json.loads(r.stdout) if x["port"] == "qemu"][0]
        if words is None:
            assert row["board"] == "emulated" and row["description"].endswith(str(fw))
        else:
            assert row["board"] is None and words in row["description"], row


def test_a_flow_whose_trial_run_the_board_cannot_keep_fails(tmp_path, capsys, monkeypatch):
    # "save": false and no room for the trial on the board: the flow said nothing and exited 0,
    # where `train --no-save` exits 1
    from tinymp.session import run
    monkeypatch.setattr(run, "load_config", lambda path: {})
    monkeypatch.setattr(run, "run_session", lambda cfg, args, out: {
        "save_error": None, "trial_error": "no room left on the board's filesystem"})
    monkeypatch.setattr(run, "_emit", lambda args, rep: None)
    import argparse
    assert run.cmd_session(argparse.Namespace(config="c.json", json=True)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: the board could not keep the run as a trial run: no room left on the "
                   "board's filesystem; it keeps its last saved parameters; make room on the "
                   "board's filesystem and run the flow again"]


def test_a_flow_capturing_for_an_rgb_model_on_the_simulated_camera_is_refused_first(tmp_path,
                                                                                   capsys):
    # refused at the capture, after the push and the other collect items had run
    from test_session_sim import _small_model
    model = tmp_path / "rgb.tmpm"
    model.write_bytes(_small_model(16, 3))
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"model": str(model), "port": "sim", "session": "s", "plots": False,
                             "collect": [{"label": 1, "count": 2}], "train": {"steps": 2}}))
    assert cli.main(["session", str(p)]) == 2
    assert one_line(capsys.readouterr().err) == (
        "tinymp: the simulated board's camera gives grayscale frames and the model takes 3 "
        "channels (16x16x3); collect with --from FILE")
    flash = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "s") for f in fs]
    assert not [f for f in flash if f.endswith("model.tmpm")], flash
