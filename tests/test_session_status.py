"""`tinymp status` against the simulated board: what the board holds (its model, saved
parameters, trial run, samples) as a session goes on — push, collect, train, train --no-save,
params save, rollback, reset — each checked against what the test itself knows (the SHA-256 of
the file it pushed, the options it trained with, the samples file it sent, the clock around the
run); and that status changes nothing, in the session folder or on the board."""
import datetime
import hashlib
import json
import os
import re
import time

import numpy as np
import pytest

import tinymp
from tinymp import boards, cli
from tinymp import tinymp_agent as A
from tinymp.session import commands as C

MODELS = os.path.join(os.path.dirname(tinymp.__file__), "models")
HELD = os.path.join(MODELS, "digits_shifted_test.npz")
DEMO = os.path.join(MODELS, "demo.tmpm")
OTHER = os.path.join(MODELS, "digits0to4.tmpm")
PROFILE = "OPENMV_H7"


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def files(path, skip=("board.log",)):
    """{relative path: bytes} of every file under `path` (the simulated board's log, which its
    process appends to on every start, and the lock file every command holds, aside)."""
    out = {}
    for root, _, names in os.walk(path):
        for n in names:
            if n in skip or n == ".lock":
                continue
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, path)] = f.read()
    return out


class Sess:
    """A session folder on the simulated board, and the CLI run on it (cli.main, in-process)."""

    def __init__(self, path, capsys):
        self.path, self.capsys = str(path), capsys

    def run(self, *argv):
        self.capsys.readouterr()
        rc = cli.main([*argv, "--port", "sim", "--session", self.path])
        out, err = self.capsys.readouterr()
        return rc, out, err

    def ok(self, *argv):
        rc, out, err = self.run(*argv, "-q")
        assert rc == 0, err
        return out

    def status(self):
        """(the --json object, the text lines), each checked to change nothing: session.json,
        the runs folder and the simulated board's flash and ROMFS stay byte for byte. (A board
        never started before is made, as any command makes it: its empty flash and ROMFS.)"""
        fresh = not os.path.exists(os.path.join(self.path, "sim"))
        before = files(self.path)
        free0 = self._free()
        rc, out, err = self.run("status", "--json")
        free1 = self._free()
        assert rc == 0 and err == "", err
        st = json.loads(out)
        made = files(self.path)
        assert {k: made[k] for k in before} == before
        assert not set(made) - set(before) or \
            fresh and all(k.startswith(os.path.join("sim", PROFILE, "")) for k in made)
        rc, text, err = self.run("status")
        assert rc == 0 and err == "", err
        assert files(self.path) == made
        lines = text.splitlines()
        assert [ln[:12] for ln in lines] == ["board       ", "model       ", "parameters  ",
                                             "trial run   ", "samples     ",
                                             "features    "], text
        text = dict((ln[:12].strip(), ln[12:]) for ln in lines)
        self._check_room(st, text, free0, free1)
        return st, text

    def _free(self):
        """Free bytes of the filesystem that holds the simulated board's flash (the PC's)."""
        at = self.flash
        while not os.path.exists(at):
            at = os.path.dirname(at)
        v = os.statvfs(at)
        return v.f_frsize * v.f_bavail

    @property
    def flash(self):
        return os.path.join(self.path, "sim", PROFILE, "flash")

    def _check_room(self, st, text, free0, free1):
        """The room for more samples (agent 9) against this PC's own free bytes, read around the
        --json call (other processes change them: within 1 %), and the text line's figure; the
        line's room part is then dropped from `text` for the tests' exact comparisons."""
        s, m = st["samples"], st["model"]
        tail = re.search(r"; the board's filesystem has room for about ([\d,]+) samples "
                         r"\(this PC's disk\)(, ([\d,]+) of them for the dataset's samples the "
                         r"next collect or train sends first)?$", text["samples"])
        if s is None or m is None or "error" in m:
            assert tail is None and (s is None or s["room"] is None), text
            return
        # the dataset's samples train would send first: those the board's store lacks of it
        # (None: no dataset this session can read)
        n = s["session_samples"]
        assert s["to_send"] == (None if n is None else n - s["count"] if s["session_dataset"]
                                else n), s
        assert (tail.group(3) or "0").replace(",", "") == str(s["to_send"] or 0), text
        each = int(np.prod(m["input_shape"])) + A.REC_HEAD
        store = os.path.join(self.flash, "samples.bin")
        mine = os.path.getsize(store) if os.path.exists(store) else 0
        lo, hi = min(free0, free1) // each, (max(free0, free1) + mine) // each
        assert lo * 0.99 <= s["room"] <= hi * 1.01, (s["room"], lo, hi)
        assert tail is not None, text
        assert abs(int(tail.group(1).replace(",", "")) - s["room"]) <= s["room"] * 0.01
        text["samples"] = text["samples"][:tail.start()]


@pytest.fixture
def sess(tmp_path, capsys):
    return Sess(tmp_path / "s", capsys)


def test_status_follows_a_session(sess):
    prof = boards.load(PROFILE)
    # a fresh board: nothing on it
    st, text = sess.status()
    assert set(st) == {"board", "session", "model", "session_model", "params", "trial", "samples",
                       "features"}
    assert st["board"]["name"] == f"{PROFILE} (simulated)" and st["board"]["simulated"]
    assert st["board"]["arena_budget"] == prof["arena_budget_bytes"]
    assert st["board"]["agent"] == A.AGENT_VERSION
    assert st["session"] == os.path.abspath(sess.path)
    assert st["model"] is None and st["session_model"] is None
    assert st["params"]["saved"] is False and st["params"]["previous"] is False
    assert st["trial"] is None
    assert st["samples"]["count"] == 0 and st["samples"]["session_samples"] is None
    assert text["board"].startswith(f"{PROFILE} (simulated): ")
    assert f"arena budget {prof['arena_budget_bytes']:,} B" in text["board"]
    assert text["model"] == "none: `tinymp push MODEL` sends one"
    assert text["parameters"] == "none"
    assert text["trial run"] == "none"
    assert text["samples"] == "none on the board; this session folder holds no dataset"
    assert st["features"] is None  # test_session_features_kept checks a board that keeps some
    assert text["features"].startswith("none kept: `tinymp train --keep-features` keeps ")
    assert not os.path.exists(os.path.join(sess.path, "session.json"))

    # after a push: the model of the file pushed, named as the session recorded it
    sess.ok("push", DEMO)
    sha = sha256_of(DEMO)
    st, text = sess.status()
    m = st["model"]
    assert m["sha256"] == sha and m["bytes"] == os.path.getsize(DEMO)
    assert m["name"] == "demo.tmpm" and m["session_model"] is True
    assert st["session_model"] == {"name": "demo.tmpm", "sha256": sha}
    assert m["served_from"] == "romfs"  # the profile has a writable ROMFS that holds it
    assert text["model"] == (f"demo.tmpm, sha256 {sha[:12]}, {os.path.getsize(DEMO):,} bytes, "
                             "served from ROMFS (in place); the model this session last pushed")
    assert text["parameters"] == ("none: the pretrained weights; no earlier ones kept for "
                                  "`tinymp params rollback`")

    # after collect: the samples of the file sent, the session dataset's
    sess.ok("collect", "--from", HELD)
    n = len(np.load(HELD)["y"])
    st, text = sess.status()
    s = st["samples"]
    assert s["count"] == s["session_samples"] == n and s["last_id"] == n - 1
    assert s["session_dataset"] is True and s["bytes"] == int(np.prod(tinymp.Model(DEMO).input_shape))
    assert text["samples"] == (f"{n:,} on the board ({s['bytes']:,} B each), of this session's "
                               f"dataset, which holds {n:,}")

    # after train (saved): the run's method and options, ended while it ran (the simulated
    # board's clock is this PC's)
    t0 = time.time()
    sess.ok("train", "--method", "last", "--steps", "7", "--lr", "0.005", "--seed", "3")
    t1 = time.time()
    st, text = sess.status()
    p = st["params"]
    assert p["saved"] is True and p["method"] == "last" and p["steps"] == 7
    assert p["options"]["lr"] == 0.005 and p["options"]["seed"] == 3
    assert p["model_sha256"] == sha and p["for_model"] is True
    assert int(t0) <= p["time"] <= t1
    assert p["previous"] is False and st["trial"] is None
    local = datetime.datetime.fromtimestamp(p["time"]).strftime("%Y-%m-%d %H:%M:%S")
    # the run record they came from, found by the run's name the board keeps with them
    first = sorted(os.listdir(os.path.join(sess.path, "runs")))[-1]
    with open(os.path.join(sess.path, "runs", first)) as f:
        assert json.load(f)["options"]["run"] == p["run"]
    assert p["run_file"] == first and len(p["run"]) == 12
    # a run record status cannot read (the report names it) only goes unmatched
    for junk in ("[" * 100000, "{", '{"options": 3}', "[]"):
        with open(os.path.join(sess.path, "runs", "train-0099.json"), "w") as f:
            f.write(junk)
        assert sess.status()[0]["params"]["run_file"] == first
    os.remove(os.path.join(sess.path, "runs", "train-0099.json"))
    assert text["parameters"] == (f"saved: method last, 7 steps (lr 0.005, seed 3), run ended "
                                  f"{local} (this PC's clock), recorded in runs/{first}; no "
                                  "earlier ones kept for `tinymp params rollback`")
    saved_first = p["time"]

    # after train --no-save: the trial run beside the saved parameters, which stay
    t0 = time.time()
    sess.ok("train", "--no-save", "--method", "full", "--steps", "5", "--lr", "0.001")
    st, text = sess.status()
    t = st["trial"]
    assert t["method"] == "full" and t["steps"] == 5 and t["options"]["lr"] == 0.001
    assert int(t0) <= t["time"] <= time.time() and t["for_model"] is True
    assert (st["params"]["method"], st["params"]["steps"], st["params"]["time"]) == \
        ("last", 7, saved_first)
    assert text["trial run"].startswith("method full, 5 steps (lr 0.001, seed 1), run ended ")
    trial_file = sorted(os.listdir(os.path.join(sess.path, "runs")))[-1]
    assert trial_file != first and t["run_file"] == trial_file != st["params"]["run_file"]
    assert f", recorded in runs/{trial_file}: " in text["trial run"]
    assert text["trial run"].endswith(": `tinymp eval --trial` measures it, `tinymp params "
                                      "save` keeps it")

    # params save: the trial becomes the saved parameters, the earlier ones kept for a rollback
    sess.ok("params", "save")
    st, text = sess.status()
    assert (st["params"]["method"], st["params"]["steps"]) == ("full", 5)
    assert st["params"]["previous"] is True and st["trial"] is None
    assert text["parameters"].endswith("; earlier ones kept: `tinymp params rollback` brings "
                                       "them back")

    # rollback: the first run's parameters again, with its record
    sess.ok("params", "rollback")
    st, text = sess.status()
    p = st["params"]
    assert (p["method"], p["steps"], p["time"], p["previous"]) == ("last", 7, saved_first, False)
    assert p["run_file"] == first
    # a record this folder no longer holds: the run is named, and said not to be recorded
    os.rename(os.path.join(sess.path, "runs", first), os.path.join(sess.path, first))
    st, text = sess.status()
    assert st["params"]["run_file"] is None and st["params"]["run"] == p["run"]
    assert f", run {p['run']}, which this session folder does not record; " in text["parameters"]
    os.rename(os.path.join(sess.path, first), os.path.join(sess.path, "runs", first))

    # reset: the pretrained weights, and the board says a rollback can bring them back
    sess.ok("params", "reset")
    st, text = sess.status()
    assert st["params"]["saved"] is False and st["params"]["previous"] is True
    assert text["parameters"] == ("none: the pretrained weights; earlier ones kept: `tinymp "
                                  "params rollback` brings them back")
    assert st["model"]["sha256"] == sha and st["samples"]["count"] == n


def test_status_tells_another_model_from_the_session_one(sess):
    # the session records the model it last pushed; a board holding another (a push whose
    # session.json was not written, here the earlier session.json put back) is named as such
    sess.ok("push", DEMO)
    with open(os.path.join(sess.path, "session.json"), "rb") as f:
        first = f.read()
    sess.ok("push", OTHER)
    st, text = sess.status()
    assert st["model"]["sha256"] == sha256_of(OTHER) and st["model"]["name"] == "digits0to4.tmpm"
    with open(os.path.join(sess.path, "session.json"), "wb") as f:
        f.write(first)
    st, text = sess.status()
    assert st["model"]["sha256"] == sha256_of(OTHER)
    assert st["model"]["session_model"] is False and st["model"]["name"] is None
    assert st["session_model"]["sha256"] == sha256_of(DEMO)
    assert text["model"].startswith(f"sha256 {sha256_of(OTHER)[:12]}, "
                                    f"{os.path.getsize(OTHER):,} bytes, ")
    assert text["model"].endswith(f"; not the model this session last pushed (demo.tmpm, sha256 "
                                  f"{sha256_of(DEMO)[:12]})")


def test_status_without_a_board_is_one_line(sess):
    sess.capsys.readouterr()
    rc = cli.main(["status", "--port", "/dev/ttyNOPE9", "--session", sess.path])
    out, err = sess.capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and len(lines) == 1
    assert lines[0].startswith("tinymp: no such port '/dev/ttyNOPE9'")
    assert not os.path.exists(os.path.join(sess.path, "session.json"))


def test_status_holds_the_session_folder_as_the_other_commands(sess):
    # it opens the board, which one command at a time may do: a busy folder stops it
    sess.ok("push", DEMO)
    before = files(sess.path)
    with C.Session(sess.path).lock():
        rc, out, err = sess.run("status")
    lines = err.strip().splitlines()
    assert rc == 1 and out == "" and len(lines) == 1
    assert "another tinymp command" in lines[0] and f"pid {os.getpid()}" in lines[0]
    assert files(sess.path) == before


def test_a_malformed_params_record_on_the_board_is_one_line(sess):
    # the agent sends the saved options as it finds them in params.opt: one whose steps is a
    # string is a bad INFO reply, one line naming the field, status 1, nothing written
    sess.ok("push", DEMO)
    sess.ok("collect", "--from", HELD)
    sess.ok("train", "--steps", "3")
    flash = os.path.join(sess.path, "sim", PROFILE, "flash")
    opt = os.path.join(flash, "params.opt")
    with open(opt, "rb") as f:
        good = f.read()
    rec = A.decode(good)
    rec["options"]["steps"] = "3"
    with open(opt, "wb") as f:
        f.write(A.encode(rec))
    before = files(sess.path)
    for argv in (["status"], ["status", "--json"]):
        rc, out, err = sess.run(*argv)
        lines = err.strip().splitlines()
        assert rc == 1 and out == "" and len(lines) == 1, err
        assert lines[0].startswith("tinymp: simulated board OPENMV_H7: the board's agent sent a "
                                   "bad INFO reply: 'params.options.steps' is a str ('3'), not an "
                                   "integer >= 0"), lines[0]
    assert files(sess.path) == before
    with open(opt, "wb") as f:
        f.write(good)
    st, _ = sess.status()
    assert st["params"]["steps"] == 3


def test_an_older_agent_that_says_less(sess):
    # an agent before version 3 sends no params after a reset, and one before 2 no trial: status
    # says what it does not know rather than "none kept"
    class Board:
        simulated, port_name = True, "sim"
        info = {"agent": "2", "board": "X (simulated)", "simulated": True, "model": None,
                "params": None}
    st = C.board_status(Board, C.Session(sess.path))
    assert st["params"]["previous"] is None and st["samples"] is None and st["trial"] is None
    from tinymp.session import run
    lines = run.status_lines(st)
    assert lines[2] == ("parameters  none; whether earlier ones are kept for `tinymp params "
                        "rollback` this board's agent (version 2) does not say")
    assert lines[4] == "samples     not reported by this board's agent"
    assert lines[5] == ("features    whether any are kept this board's agent (version 2) does "
                        "not say")
    assert not os.path.exists(sess.path)


@pytest.mark.parametrize("t,simulated,says", [
    (None, False, (None, "at a time not recorded")),
    (1_800_000_000, False, ("2027-01-15T08:00:00Z", "2027-01-15 08:00:00 UTC (the board's clock)")),
    # MicroPython's embedded ports count from 2000-01-01
    (1_800_000_000 - C.EPOCH_2000, False,
     ("2027-01-15T08:00:00Z", "2027-01-15 08:00:00 UTC (the board's clock)")),
    # a clock never set: seconds since power-up, or the RTC's default date (2015)
    (5000, False, (None, "at a time the board's clock does not tell (it reads 5000 s, not a "
                         "date)")),
    (1_420_070_400 - C.EPOCH_2000, False, (None, "at a time the board's clock does not tell (it "
                                                "reads 473385600 s, not a date)")),
    (float("inf"), True, (None, "at a time not recorded")),
])
def test_clock_text(t, simulated, says):
    assert C.clock_text(t, simulated, now=1_900_000_000) == says


def test_a_malformed_params_record_leaves_the_other_commands_working(sess):
    # only status reads the records: push, eval and `params reset` (which clears the record)
    # still take a board whose params.opt is damaged, and status works again after the reset
    sess.ok("push", DEMO)
    sess.ok("collect", "--from", HELD)
    sess.ok("train", "--steps", "3")
    opt = os.path.join(sess.path, "sim", PROFILE, "flash", "params.opt")
    with open(opt, "rb") as f:
        rec = A.decode(f.read())
    rec["options"]["steps"] = "3"
    with open(opt, "wb") as f:
        f.write(A.encode(rec))
    assert sess.run("status")[0] == 1
    sess.ok("push", DEMO)
    sess.ok("eval", "--data", HELD)
    sess.ok("params", "reset")
    st, _ = sess.status()
    assert st["params"]["saved"] is False and st["params"]["previous"] is True


def test_a_run_that_cannot_go_on_from_the_saved_one_says_what_becomes_of_it(sess):
    # a run with another method starts from the pretrained weights: a saved run warns that a
    # rollback brings the earlier one back, a trial run that the saved one stays as it is
    sess.ok("push", DEMO)
    sess.ok("collect", "--from", HELD)
    sess.ok("train", "--method", "tinymp", "--steps", "3")
    rc, _, err = sess.run("train", "--no-save", "--method", "last", "--steps", "2", "-q")
    assert rc == 0 and "warning: started from the pretrained model, not from the saved run: " \
        "it was trained with method tinymp, this run is last" in err, err
    assert err.rstrip().endswith("this trial run leaves the saved run as it is"), err
    assert sess.status()[0]["params"]["method"] == "tinymp"
    rc, _, err = sess.run("train", "--method", "last", "--steps", "2", "-q")
    assert rc == 0 and err.rstrip().endswith(
        "once this run has saved, `tinymp params rollback` brings the saved run back"), err
    assert sess.status()[0]["params"]["previous"] is True


@pytest.mark.parametrize("damage", ["manifest", "sample log", "no manifest"])
def test_status_says_the_session_dataset_is_damaged_as_train_does(sess, damage):
    # status read the dataset without checking it: a damaged manifest was "no dataset", a
    # damaged line of the sample log a sample more ("train sends the rest")
    sess.ok("push", DEMO)
    sess.ok("collect", "--from", HELD)
    ds = os.path.join(sess.path, "dataset")
    if damage == "manifest":
        with open(os.path.join(ds, "manifest.json"), "w") as f:
            f.write('{"format": ')
    elif damage == "no manifest":
        os.remove(os.path.join(ds, "manifest.json"))
    else:
        with open(os.path.join(ds, "samples.jsonl"), "a") as f:
            f.write('{"not": "a sample"}\n')
    problem = says_what_train_says(sess)
    assert ("samples.jsonl" if damage == "sample log" else "manifest.json") in problem


def says_what_train_says(sess):
    """train refuses the session's dataset (status 2); status reports that line as the
    dataset's problem, with HELD's samples on the board. Returns the problem."""
    rc, _, err = sess.run("train", "--steps", "1")
    assert rc == 2, err
    problem = err.strip().removeprefix("tinymp: ")
    st, text = sess.status()
    s = st["samples"]
    assert s["dataset_problem"] == problem
    assert s["session_samples"] is None and s["session_dataset"] is None and s["to_send"] is None
    n = len(np.load(HELD)["y"])
    assert text["samples"] == (f"{n:,} on the board ({s['bytes']:,} B each); this session's "
                               f"dataset cannot be used: {problem}")
    return problem


def rgb_model():
    """A small model of 8x8 RGB inputs and 10 classes."""
    from tinymp import builder
    rng = np.random.default_rng(3)
    g = builder.Graph((8, 8, 3))
    x = g.conv(g.input, rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8), stride=2,
               act="relu")
    g.fc(x, rng.normal(0, 0.1, (10, 4 * 4 * 8)), rng.normal(0, 0.1, 10))
    return g.quantize(rng.random((16, 8, 8, 3), dtype=np.float32))


def test_status_says_the_session_dataset_does_not_suit_the_boards_model(sess, tmp_path):
    # a model of another input pushed after the samples were collected: status said the dataset
    # was the board's samples and fine ("train sends the rest"), train then refused it
    sess.ok("push", DEMO)
    sess.ok("collect", "--from", HELD)
    rgb = tmp_path / "rgb.tmpm"
    rgb.write_bytes(rgb_model())
    sess.ok("push", str(rgb))
    problem = says_what_train_says(sess)
    assert "32x32x1 samples" in problem and "takes 8x8x3" in problem, problem


def test_a_run_at_learning_rate_0_warns(sess):
    sess.ok("push", DEMO)
    sess.ok("collect", "--from", HELD)
    rc, _, err = sess.run("train", "--lr", "0", "--steps", "4", "-q")
    assert rc == 0 and err.strip() == ("warning: the learning rate was 0: the run changed no "
                                       "parameter, so the board's saved parameters are the ones "
                                       "it started from"), err
    # and it did not change them: eval of the saved parameters equals the pretrained model's
    m = tinymp.Model(DEMO)
    rc, out, err = sess.run("eval", "--data", HELD, "--json")
    assert rc == 0, err
    (ev,) = json.loads(out)
    assert ev["params"] == "personalised"
    from tinymp.session import dataset as D
    q, y, _ = D.load_samples(HELD, m.input_shape, m.input_scale, m.input_zero_point,
                             m.num_classes)
    here = np.array([m.predict(v.tobytes()) for v in q])
    assert ev["accuracy"] == pytest.approx(float((here == y).mean()))
    rc, _, err = sess.run("train", "--no-save", "--lr", "0.002", "--steps", "2", "-q")
    assert rc == 0 and "learning rate was 0" not in err
