"""The session folder and the commands' rules around it, against the simulated board: run
records numbered past deletions and never in place of another, with or without hard links, a
session.json of the wrong shape, one command per folder at a time (on Windows too, with a
simulated msvcrt), a file given as the folder, a bad scene file, importing a dataset into itself,
the simulated board a session was pushed to, the saved run's method on resume, --epochs with
--steps, rollback with nothing earlier, and negative numbers in exponent form on the command
line."""
import errno
import json
import multiprocessing
import os
import re
import sys
import types

import numpy as np
import pytest
import test_session_replies as R
from test_session_cli import _tree
from test_session_replies import Rig, folder_state

import tinymp
from tinymp import boards, cli
from tinymp.session import commands as C
from tinymp.session import dataset as D
from tinymp.session import link, run

MODELS = os.path.join(os.path.dirname(tinymp.__file__), "models")
SCENE = os.path.join(MODELS, "digits_shifted.npz")
DEMO = os.path.join(MODELS, "demo.tmpm")


def one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinymp:"), err
    return err[0]


def sim_board(tmp_path):
    """A simulated board (session folder tmp_path/s) holding the demo model."""
    sess = C.Session(str(tmp_path / "s"))
    b = link.open_board("sim:OPENMV_H7", sim_dir=sess.sim_dir("OPENMV_H7"), scene=SCENE)
    C.push(b, open(DEMO, "rb").read(), show=False)
    return b


def with_samples(b, tmp_path, n):
    """The scene's samples in the board model's format (x, y) and a session dataset holding
    the first n of them."""
    meta = C.model_meta(b.info)
    x, y, src = D.load_samples(SCENE, meta["input_shape"], meta["input_scale"],
                               meta["input_zero_point"], meta["num_classes"])
    ds = C.open_dataset(C.Session(str(tmp_path / "s")), meta, "sim")
    C.import_samples(ds, x[:n], y[:n], src[:n], show=False)
    return x, y, ds


@pytest.fixture(scope="module")
def ready(tmp_path_factory):
    """A session whose simulated board holds the demo model and the scene's samples."""
    s = str(tmp_path_factory.mktemp("ready") / "s")
    assert cli.main(["push", DEMO, "--port", "sim", "--session", s, "-q"]) == 0
    assert cli.main(["collect", "--from", SCENE, "--port", "sim", "--session", s, "-q"]) == 0
    return s


# --- run records ----------------------------------------------------------------------------

def test_run_records_are_numbered_after_the_highest_not_counted(tmp_path):
    s = C.Session(str(tmp_path / "s"))
    paths = [s.new_run("eval", {"n": i}) for i in range(3)]
    assert [os.path.basename(p) for p in paths] == ["eval-0001.json", "eval-0002.json",
                                                   "eval-0003.json"]
    os.remove(paths[1])
    # counting files would name the next one eval-0003 and overwrite the newest record
    nxt = s.new_run("eval", {"n": 3})
    assert os.path.basename(nxt) == "eval-0004.json"
    assert [r["n"] for r in s.runs("eval")] == [0, 2, 3]
    assert s.new_run("train", {"n": 9}).endswith("train-0001.json")  # kinds are apart
    assert not [f for f in os.listdir(s.runs_dir) if f.endswith(".tmp")]


def test_run_records_are_read_in_number_order_and_a_bad_one_is_named(tmp_path):
    s = C.Session(str(tmp_path / "s"))
    os.makedirs(s.runs_dir)
    for n in (9999, 10000, 2):  # past 9999 the name sorts before eval-9999
        with open(os.path.join(s.runs_dir, f"eval-{n:04d}.json"), "w") as f:
            json.dump({"n": n}, f)
    assert [r["n"] for r in s.runs("eval")] == [2, 9999, 10000]
    assert os.path.basename(s.new_run("eval", {"n": 0})) == "eval-10001.json"
    with open(os.path.join(s.runs_dir, "eval-0003.json"), "w") as f:
        f.write('{"n": ')  # cut short
    with pytest.raises(C.SessionError) as e:
        s.runs("eval")
    assert e.value.code == 2 and "eval-0003.json" in str(e.value)
    with open(os.path.join(s.runs_dir, "eval-0003.json"), "w") as f:
        f.write("[" * 100000 + "]" * 100000)  # JSON, nested past what json.load takes
    with pytest.raises(C.SessionError) as e:
        s.runs("eval")
    assert e.value.code == 2 and "eval-0003.json" in str(e.value)


# os.link on a filesystem without hard links (FAT, exFAT, some network shares)
NO_LINKS = {"EPERM": errno.EPERM, "ENOTSUP": errno.ENOTSUP}


def naming(monkeypatch, no_links=None):
    """Spies on how run records get their names: [(call, src, dst)] of os.link (failing with
    errno `no_links`, as such a filesystem does) and of os.replace onto a record's name."""
    calls = []
    real_link, real_replace = os.link, os.replace

    def link_(src, dst, *a, **kw):
        calls.append(("link", src, dst))
        if no_links is not None:
            raise OSError(no_links, os.strerror(no_links))
        return real_link(src, dst, *a, **kw)

    def replace(src, dst, *a, **kw):
        if re.fullmatch(r"(train|eval)-\d+\.json", os.path.basename(dst)):
            calls.append(("replace", src, dst))
        return real_replace(src, dst, *a, **kw)
    monkeypatch.setattr(os, "link", link_)
    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.parametrize("no_links", [None] + list(NO_LINKS.values()),
                         ids=["hard-links"] + list(NO_LINKS))
def test_run_records_never_replace_one_with_or_without_hard_links(tmp_path, monkeypatch,
                                                                  no_links):
    # without hard links os.link failed and no run was recorded (a WriteError); with or without,
    # a record appears whole, numbered past the highest, never in place of another
    calls = naming(monkeypatch, no_links)
    s = C.Session(str(tmp_path / "s"))
    paths = [s.new_run("eval", {"n": i}) for i in range(3)]
    assert [os.path.basename(p) for p in paths] == ["eval-0001.json", "eval-0002.json",
                                                   "eval-0003.json"]
    os.remove(paths[1])
    assert os.path.basename(s.new_run("eval", {"n": 3})) == "eval-0004.json"
    # names taken after the listing was read (as by another writer; the folder lock keeps
    # tinymp's own out) and a dangling link: passed over, never written through
    monkeypatch.setattr(s, "_run_numbers", lambda kind: {})
    taken = folder_state(s.runs_dir)
    os.symlink("nowhere", os.path.join(s.runs_dir, "eval-0002.json"))
    assert os.path.basename(s.new_run("eval", {"n": 5})) == "eval-0005.json"
    for name, data in taken.items():
        with open(os.path.join(s.runs_dir, name), "rb") as f:
            assert f.read() == data, name
    assert os.readlink(os.path.join(s.runs_dir, "eval-0002.json")) == "nowhere"
    os.remove(os.path.join(s.runs_dir, "eval-0002.json"))
    monkeypatch.undo()
    assert [r["n"] for r in s.runs("eval")] == [0, 2, 3, 5]
    assert not [f for f in os.listdir(s.runs_dir) if f.endswith(".tmp")]
    named = [(how, os.path.basename(dst)) for how, _, dst in calls]
    if no_links is None:  # the hard link names every record
        assert named == [("link", f"eval-{n:04d}.json") for n in (1, 2, 3, 4, 1, 2, 3, 4, 5)]
    else:  # each name is tried with a link first, then renamed to once found free
        assert [x for x in named if x[0] == "replace"] == [
            ("replace", f"eval-{n:04d}.json") for n in (1, 2, 3, 4, 5)]
        # a rename that fails too (a read-only stick) is the usual one line, nothing left
        naming(monkeypatch, no_links)
        before = folder_state(s.runs_dir)

        def read_only(src, dst, *a, **kw):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        monkeypatch.setattr(os, "replace", read_only)
        with pytest.raises(C.WriteError) as e:
            s.new_run("eval", {"n": 6})
        monkeypatch.undo()
        assert str(e.value) == (f"tinymp: cannot write {s.runs_dir}{os.sep}eval-0006.json: "
                                "Read-only file system; no run record written")
        assert folder_state(s.runs_dir) == before


@pytest.mark.parametrize("no_links", list(NO_LINKS.values()), ids=list(NO_LINKS))
def test_commands_record_their_runs_without_hard_links_holding_the_folder(
        tmp_path, monkeypatch, capsys, no_links):
    # train, eval and the session flow: each record is renamed to a name found free while the
    # command holds the session folder, which is what makes the free name stay free
    import fcntl
    rig = Rig(tmp_path, monkeypatch, capsys)
    calls = naming(monkeypatch, no_links)
    held = []
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        if os.path.dirname(dst) == rig.session.runs_dir and dst.endswith(".json"):
            with open(os.path.join(rig.session.path, ".lock")) as f:
                try:  # another open file: refused while the command holds its own
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held.append(False)
                    fcntl.flock(f, fcntl.LOCK_UN)
                except BlockingIOError:
                    held.append(True)
        return real_replace(src, dst, *a, **kw)
    monkeypatch.setattr(os, "replace", replace)
    rc, out, err = rig.cli("train")
    assert rc == 0 and json.loads(out)["steps"] == 3, err
    rc, out, err = rig.cli("eval", both=True)
    assert rc == 0 and len(json.loads(out)) == 2, err
    cfg = tmp_path / "flow.json"
    cfg.write_text(json.dumps({"model": rig.model, "port": "sim", "session": rig.session.path,
                               "eval": rig.held, "train": {"steps": 2}, "plots": False}))
    rig.capsys.readouterr()
    assert R.no_hang(lambda: run.handle_errors(run.cmd_session, rig.args(config=str(cfg),
                                                                          m7=False))) == 0
    rep = json.loads(rig.capsys.readouterr().out)
    assert rep["train"]["file"] == "train-0002.json"
    assert rep["accuracy_after"]["file"] == "eval-0004.json"
    assert sorted(os.listdir(rig.session.runs_dir)) == [
        "eval-0001.json", "eval-0002.json", "eval-0003.json", "eval-0004.json",
        "train-0001.json", "train-0002.json"]
    assert [len(t["events"]) for t in rig.session.runs("train")] == [3, 2]  # whole
    assert held == [True] * 6 and len([c for c in calls if c[0] == "link"]) == 6


def test_a_file_given_as_the_session_folder_is_one_line(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    for argv in (["push", DEMO, "--port", "sim", "--session", str(f)],
                 ["report", "--session", str(f)]):
        assert cli.main(argv) == 2
        assert "is a file, not a session folder" in one_line(capsys)
    assert f.read_text() == "mine"


# --- one command per session folder ---------------------------------------------------------

def test_a_second_command_on_a_busy_session_folder_stops(ready, capsys):
    before = _tree(ready)
    with C.Session(ready).lock():  # another command holds the folder
        assert cli.main(["eval", "--port", "sim", "--session", ready]) == 1
        line = one_line(capsys)
        assert "another tinymp command" in line and f"pid {os.getpid()}" in line
    assert _tree(ready) == before
    # once it is done, the folder is free again
    assert cli.main(["eval", "--port", "sim", "--session", ready, "--json"]) == 0
    capsys.readouterr()


def test_the_demo_does_not_empty_a_folder_another_command_holds(tmp_path, capsys, monkeypatch):
    # `tinymp demo` empties its folder before it runs; it once did so without the lock, under a
    # `tinymp train --session` still using that folder
    d = tmp_path / "tinymp-demo"
    (d / "runs").mkdir(parents=True)
    (d / ".tinymp-demo").write_text("")
    (d / "runs" / "train-0001.json").write_text("{}")
    (d / "session.json").write_text("{}")
    before = folder_state(str(d))
    with C.Session(str(d)).lock():
        assert cli.main(["demo", "--session", str(d), "-q"]) == 1
        line = one_line(capsys)
        assert "another tinymp command" in line and f"pid {os.getpid()}" in line
    assert folder_state(str(d)) == before
    # free again: emptied (but its marker), then the flow; stopped here, not run
    seen = []

    def flow(cfg, args, out):
        seen.append(sorted(os.listdir(d)))
        raise C.user_error("tinymp: stop here")
    monkeypatch.setattr(run, "run_session", flow)
    assert cli.main(["demo", "--session", str(d), "-q"]) == 2
    capsys.readouterr()
    assert seen == [[".lock", ".tinymp-demo"]]


# --- the simulated camera's scene -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["garbage", "nokeys", "float", "flat", "labels"])
def test_a_bad_scene_file_is_the_users_error(tmp_path, kind, capsys):
    bad = tmp_path / "scene.npz"
    x = np.zeros((4, 8, 8), np.uint8)
    if kind == "garbage":
        bad.write_bytes(b"PK\x03\x04 not a zip")
    elif kind == "nokeys":
        np.savez(bad, images=x)
    elif kind == "float":
        np.savez(bad, x=x.astype(np.float32), y=np.zeros(4, int))
    elif kind == "flat":
        np.savez(bad, x=x.reshape(4, 64), y=np.zeros(4, int))
    else:
        np.savez(bad, x=x, y=np.zeros(3, int))
    s = tmp_path / "s"
    code = cli.main(["collect", "--label", "0", "--count", "1", "--scene", str(bad),
                     "--port", "sim", "--session", str(s)])
    assert code == 2  # was 1: the simulated board failed to start, reported as a link failure
    assert f"bad scene file {bad}" in one_line(capsys)
    assert not s.exists()


# --- importing samples ----------------------------------------------------------------------

def test_importing_the_sessions_own_dataset_adds_nothing(ready, tmp_path, capsys):
    ds_dir = os.path.join(ready, "dataset")
    n = len(D.Dataset.open(ds_dir))
    assert cli.main(["collect", "--from", ds_dir, "--port", "sim", "--session", ready,
                     "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["added"], res["total"]) == (0, n)
    # a copy of it (another folder, the same samples) adds nothing either: its samples keep
    # the ids of the file they came from
    other = C.Session(str(tmp_path / "other"))
    with link.open_board("sim:OPENMV_H7", sim_dir=other.sim_dir("OPENMV_H7"), scene=SCENE) as b:
        C.push(b, open(DEMO, "rb").read(), show=False)
        meta = C.model_meta(b.info)
    x, y, src = D.load_samples(ds_dir, meta["input_shape"], meta["input_scale"],
                               meta["input_zero_point"], meta["num_classes"])
    ods = C.open_dataset(other, meta, "sim")
    assert C.import_samples(ods, x, y, src, show=False) == n
    x2, y2, src2 = D.load_samples(SCENE, meta["input_shape"], meta["input_scale"],
                                  meta["input_zero_point"], meta["num_classes"])
    assert C.import_samples(ods, x2, y2, src2, show=False) == 0
    assert len(ods) == n
    # and the same sample twice in one import is added once
    ods2 = C.open_dataset(C.Session(str(tmp_path / "third")), meta, "sim")
    assert C.import_samples(ods2, x2[:3].repeat(2, 0), y2[:3].repeat(2), src2[:3] * 2,
                            show=False) == 3


# --- the simulated board the session was pushed to ------------------------------------------

def test_the_session_keeps_its_simulated_board(tmp_path, capsys):
    other = next(p for p in boards.names() if p != boards.DEFAULT_SIM
                 and boards.load(p)["model_flash_bytes"] >= os.path.getsize(DEMO))
    s = str(tmp_path / "s")
    assert cli.main(["push", DEMO, "--port", "sim", "--board", other, "--session", s, "-q"]) == 0
    capsys.readouterr()
    # no --board: the board the model went to, not the default's empty flash
    assert cli.main(["eval", "--port", "sim", "--session", s, "--data", SCENE, "--pretrained",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["n"] == 200
    assert not os.path.exists(os.path.join(s, "sim", boards.DEFAULT_SIM))
    # --board still picks another one (whose flash holds no model)
    assert cli.main(["eval", "--port", "sim", "--board", boards.DEFAULT_SIM, "--session", s,
                     "--data", SCENE]) != 0
    assert "model" in capsys.readouterr().err


# --- resuming a saved run -------------------------------------------------------------------

def test_a_saved_run_goes_on_only_with_its_method(tmp_path):
    with sim_board(tmp_path) as b:
        x, y, ds = with_samples(b, tmp_path, 8)
        first = C.train(b, ds, {"method": "tinymp"}, steps=3, show=False)
        assert not first["start"]["resumed"]
        # no method is the default one: the same run, which goes on (was: a silent fresh start)
        again = C.train(b, ds, {}, steps=3, show=False)
        assert again["start"]["resumed"] and again["start"]["resume_error"] is None
        # another method does not go on, and says why
        other = C.train(b, ds, {"method": "last"}, steps=3, show=False)
        st = other["start"]
        assert not st["resumed"]
        assert st["resume_error"] == "it was trained with method tinymp, this run is last"


def test_train_warns_when_another_method_starts_afresh(ready, capsys):
    assert cli.main(["train", "--port", "sim", "--session", ready, "--steps", "3", "-q",
                     "--method", "bias"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--port", "sim", "--session", ready, "--steps", "3", "-q"]) == 0
    warn = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "method bias, this run is tinymp" in warn[0]


# --- command-line rules ---------------------------------------------------------------------

def test_epochs_and_steps_together_are_refused(ready, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--port", "sim", "--session", ready, "--steps", "3", "--epochs", "2"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": DEMO, "train": {"steps": 3, "epochs": 2}}))
    before = _tree(ready)
    assert cli.main(["session", str(cfg), "--port", "sim", "--session", ready]) == 2
    assert "train.steps or" in one_line(capsys)
    assert _tree(ready) == before


def test_rollback_with_nothing_earlier_is_the_users_error(tmp_path, capsys):
    s = str(tmp_path / "s")
    assert cli.main(["push", DEMO, "--port", "sim", "--session", s, "-q"]) == 0
    assert cli.main(["params", "rollback", "--port", "sim", "--session", s]) == 2
    assert "no earlier parameters to roll back to" in one_line(capsys)


def test_negative_numbers_in_exponent_form_are_numbers():
    pn = cli._plain_negatives
    assert pn(["--input-range", "-1e0", "1"]) == ["--input-range", "-1", "1"]
    for tok in ("-1.5e-3", "-.5E2", "-2e+1", "-7.25e-300"):
        out = pn([tok])[0]
        assert "e" not in out.lower() and float(out) == float(tok)
    # what is not such a number is left alone
    assert pn(["-1", "-x", "-1e", "a-1e5", "-1e999999"]) == ["-1", "-x", "-1e", "a-1e5",
                                                             "-1e999999"]
    # and the converter's parser reads the rewritten pair as the range
    args = cli.build_parser().parse_args(pn(["convert", "m.onnx", "-o", "o.tmpm",
                                             "--input-range", "-1e0", "1e0"]))
    assert args.input_range == [-1.0, 1.0]


def test_rollback_and_reset_bring_back_the_parameters_with_their_options(tmp_path):
    # a run of another method, then rollback: the board must use the earlier run's options to
    # make the trainer its parameters belong to (was: the newer run's, so they did not load)
    with sim_board(tmp_path) as b:
        x, y, ds = with_samples(b, tmp_path, 20)
        C.train(b, ds, {"method": "last", "lr": 0.05}, steps=20, show=False)
        first = C.evaluate(b, x, y, show=False)
        C.train(b, ds, {"method": "bias", "lr": 0.05}, steps=20, show=False)
        assert C.evaluate(b, x, y, show=False)["params"] == "personalised"
        b.request(C.P.PARAMS_ROLLBACK)
        back = C.evaluate(b, x, y, show=False)
        assert back["params"] == "personalised"
        assert back["accuracy"] == first["accuracy"]
        assert back["confusion"] == first["confusion"]
        # a new train of the first run's method goes on from it, with no warning
        again = C.train(b, ds, {"method": "last", "lr": 0.05}, steps=2, show=False)
        assert again["start"]["resumed"] and again["start"]["resume_error"] is None
        # reset shelves them with their options; rollback brings both back
        b.request(C.P.PARAMS_RESET)
        assert C.evaluate(b, x, y, show=False)["params"] == "pretrained"
        b.request(C.P.PARAMS_ROLLBACK)
        assert C.evaluate(b, x, y, show=False)["params"] == "personalised"
        assert C.train(b, ds, {"method": "last"}, steps=1, show=False)["start"]["resumed"]


def test_a_folder_that_cannot_be_locked_is_used_unlocked(tmp_path, monkeypatch):
    # e.g. an NFS mount without locks (ENOLCK): not "another command", which is not there
    import errno
    import fcntl

    def no_locks(f, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = []
    with C.Session(str(tmp_path / "s")).lock():
        ran.append(True)
    assert ran == [True]


class LockFile:
    """The session's lock file, open as usual, with methods a test replaces."""

    def __init__(self, f):
        self.f = f

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


def test_a_full_disk_does_not_stop_the_lock(tmp_path, monkeypatch):
    # the pid written into SESSION/.lock once met a full disk with a traceback; the lock holds
    # all the same (the pid only names the holder to a second command)
    import builtins
    import errno

    class Full(LockFile):
        def write(self, data):
            return len(data)  # buffered: the disk is found full at the flush

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    real = builtins.open
    monkeypatch.setattr(C, "open", lambda *a, **kw: Full(real(*a, **kw)), raising=False)
    s = C.Session(str(tmp_path / "s"))
    ran = []
    with s.lock():
        ran.append(True)
        with pytest.raises(C.SessionError) as e:  # held: a second command stops
            with C.Session(s.path).lock():
                pass
        assert "another tinymp command (a process)" in str(e.value)
    assert ran == [True]
    monkeypatch.undo()
    with s.lock():  # released
        pass


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_does_not_fail_the_command_when_it_ends(tmp_path, monkeypatch):
    # a pid a full disk refused was kept in the file's buffer and written again when the lock
    # file closed after the command, which then ended with a traceback. /dev/full refuses every
    # write as a full disk does; being a device it cannot be truncated, which a file can
    import builtins

    class OnDevFull(LockFile):
        def truncate(self, size=None):
            return 0

    real = builtins.open
    monkeypatch.setattr(C, "open", lambda path, *a, **kw: OnDevFull(real("/dev/full", *a, **kw)),
                        raising=False)
    ran = []
    with C.Session(str(tmp_path / "s")).lock():
        ran.append(True)
    assert ran == [True]


# --- the folder lock on Windows (msvcrt.locking), simulated ------------------------------------

class FakeMsvcrt(types.ModuleType):
    """msvcrt.locking as Windows documents it, for the tests here (no Windows machine runs
    them): lock or unlock nbytes from the fd's position, which it does not move; LK_NBLCK
    fails at once with EACCES on a byte another process holds; the lock goes when the file
    closes or the process ends. Taken with POSIX byte-range locks (the real fcntl.lockf),
    which are per process, and which closing any of the process's fds of the file drops: the
    other holder must be another process. `calls` records (mode, position, nbytes)."""
    LK_UNLCK, LK_LOCK, LK_NBLCK, LK_RLCK, LK_NBRLCK = range(5)

    def __init__(self, fcntl):
        super().__init__("msvcrt")
        self.fcntl = fcntl
        self.calls = []

    def locking(self, fd, mode, nbytes):
        at = os.lseek(fd, 0, os.SEEK_CUR)
        self.calls.append((mode, at, nbytes))
        op = {self.LK_NBLCK: self.fcntl.LOCK_EX | self.fcntl.LOCK_NB,
              self.LK_UNLCK: self.fcntl.LOCK_UN}[mode]
        try:
            self.fcntl.lockf(fd, op, nbytes, at, os.SEEK_SET)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise OSError(errno.EACCES, "Permission denied") from None
            raise


@pytest.fixture
def windows(monkeypatch):
    """Session.lock as on Windows: no fcntl, and msvcrt's locking (FakeMsvcrt)."""
    fake = FakeMsvcrt(pytest.importorskip("fcntl"))
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    return fake


def _hold_folder(path, held, release):
    with C.Session(path).lock():
        held.set()
        release.wait(60)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_windows_a_second_command_on_a_busy_session_folder_stops(ready, windows, capsys):
    # another process holds the folder (a forked child, with FakeMsvcrt too; was: no lock at
    # all on Windows)
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_folder, args=(ready, held, release))
    holder.start()
    try:
        assert held.wait(30)
        before = _tree(ready)
        assert cli.main(["eval", "--port", "sim", "--session", ready]) == 1
        # the holder's pid, read while it holds the lock: the lock's byte is not the pid's
        assert one_line(capsys) == (
            f"tinymp: another tinymp command (pid {holder.pid}) is using the session folder "
            f"{ready}; wait for it to finish, or give another --session")
        assert _tree(ready) == before
    finally:
        release.set()
        holder.join(30)
    assert holder.exitcode == 0
    # once it is done, the folder is free again
    assert cli.main(["eval", "--port", "sim", "--session", ready, "--json"]) == 0
    capsys.readouterr()


def test_windows_the_lock_is_one_byte_past_the_pid(tmp_path, windows):
    s = C.Session(str(tmp_path / "s"))
    lock = os.path.join(s.path, ".lock")
    with s.lock():
        pid = f"pid {os.getpid()}\n".encode()
        with open(lock, "rb") as f:
            assert f.read() == pid
        [(mode, at, n)] = windows.calls
        # far past the pid: Windows refuses another process's read of a locked byte, and a
        # read of the pid asks for more bytes than the file holds
        assert mode == windows.LK_NBLCK and n == 1 and at == C._MSVCRT_LOCK_AT >= 1 << 16
    # unlocked where it was locked, and no pid left to name
    assert windows.calls == [(windows.LK_NBLCK, at, 1), (windows.LK_UNLCK, at, 1)]
    assert os.path.getsize(lock) == 0


@pytest.mark.parametrize("no_lock", ["refused", "no msvcrt"])
def test_windows_a_folder_that_cannot_be_locked_is_used_unlocked(tmp_path, windows, monkeypatch,
                                                                 no_lock):
    # a share that refuses locks (an error other than EACCES), or no msvcrt at all
    def refused(fd, mode, nbytes):
        raise OSError(errno.EINVAL, "Invalid argument")
    if no_lock == "refused":
        monkeypatch.setattr(windows, "locking", refused)
    else:
        monkeypatch.setitem(sys.modules, "msvcrt", None)
    ran = []
    with C.Session(str(tmp_path / "s")).lock():
        ran.append(True)
    assert ran == [True]


# --- a session.json of the wrong shape --------------------------------------------------------

@pytest.fixture
def rig(tmp_path, monkeypatch, capsys):
    return Rig(tmp_path, monkeypatch, capsys)


def _damaged(path):
    """The start and end of the line that refuses a session.json of the wrong shape."""
    return (f"tinymp: {path} is damaged: ",
            "; correct it, or move it out of the session folder (the next `tinymp push` writes "
            "a new one)")


def test_a_session_json_of_the_wrong_shape_is_one_line(rig):
    # valid JSON of another shape broke report, push and status with a traceback (an int where a
    # dict was read, a params_log entry that is not one, a time that is a string)
    path = rig.session.state_path
    head, tail = _damaged(path)
    for text, what in (("[1]", "it holds a list of 1 item, not a JSON object"),
                       ("5", "it holds an int (5), not a JSON object"),
                       ('{"model": 5}', "'model' is an int (5), not a dict"),
                       ('{"params_log": {}}', "'params_log' is a dict, not a list"),
                       ('{"board": []}', "'board' is a list of 0 items, not a dict"),
                       ('{"params_log": [3]}', "'params_log[0]' is an int (3), not a dict"),
                       ('{"params_log": [{"action": "save", "time": "noon"}]}',
                        "'params_log[0].time' is a str ('noon'), not a finite number"),
                       ('{"model": {"path": 3}}', "'model.path' is an int (3), not a string"),
                       ("[" * 100000 + "]" * 100000, None),  # json.load: RecursionError
                       ('{"model": ', None)):  # not JSON
        with open(path, "w") as f:
            f.write(text)
        before = folder_state(rig.session.path)
        for name in ("report", "push", "status", "train", "eval", "params"):
            rc, out, err = rig.cli(name)
            line = R.one_line(err)
            assert rc == 2 and out == "", (text[:20], name, err)
            if what is None:
                assert line.startswith(f"tinymp: cannot read {path}: "), line
                assert line.endswith(tail), line  # what to do, as for a file of another shape
            else:
                assert line == head + what + tail, line
            assert folder_state(rig.session.path) == before  # nothing written, nothing rewritten
    # what the code lets be null or absent, and fields it does not read, are used as they are
    for text in ('{"model": null, "board": null, "params_log": null}', '{"future": [1]}',
                 '{"params_log": [{"action": "push"}, {"time": 5}, {"note": 1}]}'):
        with open(path, "w") as f:
            f.write(text)
        for name in ("report", "status", "params", "push"):
            rc, out, err = rig.cli(name, action="reset") if name == "params" else rig.cli(name)
            assert rc == 0, (text, name, err)
    with open(path) as f:
        state = json.load(f)
    assert state["params_log"][-1]["action"] == "reset" and state["model"]["sha256"]


@pytest.fixture
def fuzzing(monkeypatch):
    """test_session_replies' `fuzzing`: what the fuzzer's thousands of commands need not redo."""
    R.scene_checked_once(monkeypatch)
    with R.gc_frozen():
        yield


def test_fuzz_session_json(rig, monkeypatch, fuzzing):
    # a real session.json (a push, a trial run saved by `params save`, a reset: a model, a board,
    # a params_log), each of its places dropped or of another type (test_session_replies'
    # mutants): every command that reads it works, or stops with one line and the session folder
    # byte for byte as it was; never a traceback
    from tinymp import bench
    from tinymp.session import simboard

    def no_emulator(*a, **kw):  # report --m7 reads the session up to the emulator run
        raise bench.BenchError("no emulator in this test")
    monkeypatch.setattr(bench, "estimate_training", no_emulator)
    d = np.load(rig.held)
    few = str(rig.tmp / "few.npz")
    np.savez(few, x=d["x"][:4], y=d["y"][:4])
    for name, opts in (("push", {}), ("train", {"no_save": True}), ("params", {"action": "save"}),
                       ("eval", {}), ("params", {"action": "reset"})):
        rc, _, err = rig.cli(name, **opts)
        assert rc == 0, (name, err)
    path = rig.session.state_path
    with open(path, "rb") as f:
        clean = f.read()
    sample = json.loads(clean)
    assert [e["action"] for e in sample["params_log"]] == ["save", "reset"]
    assert sample["board"]["board"].endswith(simboard.SIM_SUFFIX)
    # the commands below run without --board: the simulated board's profile is then the one
    # session.json names, when the session holds its flash folder (run._sim_profile)
    os.makedirs(rig.session.sim_dir(R.PROFILE))
    clean_runs = set(os.listdir(rig.session.runs_dir))
    head, tail = _damaged(path)
    # the readers first; push last, as it writes a new session.json (params reset adds to it)
    commands = [("report", {}), ("report", {"json": False}),
                ("report", {"json": False, "m7": True}), ("status", {"json": False}),
                ("status", {}), ("eval", {"data": few}), ("train", {"steps": 1}),
                ("params", {"action": "reset"}), ("push", {})]
    n = refused = worked = 0
    for what, mutate, _ in R._mutants(sample):
        try:
            text = json.dumps(mutate(sample))
        except TypeError:
            continue  # bytes: not JSON, a session.json cannot hold them
        with open(path, "w") as f:
            f.write(text)
        n += 1
        lines = []
        for name, opts in commands:
            before = folder_state(rig.session.path)
            try:
                rc, out, err = rig.cli(name, board=None, **opts)
            except Exception as e:  # noqa: BLE001 - what the test is about
                pytest.fail(f"session.json {what}: `{name}` raised {type(e).__name__}: {e}")
            if rc == 0:
                if opts.get("json", True):
                    json.loads(out)
                lines.append(None)
                continue
            line = R.one_line(err)
            assert rc in (1, 2), (what, name, err)
            assert folder_state(rig.session.path) == before, (what, name, line)
            if line.startswith(head):
                assert rc == 2 and line.endswith(tail), line
            lines.append(line)
        if lines[0] and lines[0].startswith(head):
            # refused by every command alike: the file is checked where it is read
            assert lines == lines[:1] * len(commands), (what, lines)
            refused += 1
        else:
            assert not any(x and x.startswith(head) for x in lines), (what, lines)
            worked += 1
        with open(path, "wb") as f:
            f.write(clean)
        for f in set(os.listdir(rig.session.runs_dir)) - clean_runs:
            os.remove(os.path.join(rig.session.runs_dir, f))
    print(f"{n} mutants: {refused} refused, {worked} used")
    assert refused > 100 and worked > 100, (refused, worked)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_session_folder_the_pc_cannot_write_is_status_1(tmp_path, capsys, monkeypatch, code):
    # as any session file the PC cannot write (docs/SESSION.md): it was status 2, the user's
    # error, which a file given as the folder still is (above). Root writes through modes, so
    # the lock file's open is made to fail as a read-only mount makes it.
    real = open

    def ro_open(path, *a, **kw):
        if str(path).endswith(".lock"):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(C, "open", ro_open, raising=False)
    s = str(tmp_path / "s")
    assert cli.main(["status", "--port", "sim", "--session", s]) == 1
    assert one_line(capsys) == f"tinymp: cannot use the session folder {s}: {os.strerror(code)}"
