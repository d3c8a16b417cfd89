"""A save of trained parameters on the board that cannot be written changes nothing it keeps.

The agent writes the new parameters and their record whole (params.new, params.new.opt) before
it moves the saved ones aside, so a full filesystem leaves the saved parameters saved and their
rollback as it was (or, when only dropping the rollback makes room, exactly what a save leaves);
the run is recorded and `tinymp train` fails with one line. A reset cut into the save at any
point leaves either the old state or the new one (`Agent._recover`).

The board is the real agent in this process (test_session_replies.Rig); a full filesystem is a
trainer whose save() raises ENOSPC, as the board's binding and CPython's file writes do."""
import errno
import json
import os

import pytest

from tinymp import tinymp_agent as A
from tinymp.session import protocol as P

from test_session_replies import Rig, folder_state, open_fake

PARAMS = ("params.bin", "params.opt", "params.prev", "params.prev.opt")


@pytest.fixture
def rig(tmp_path, monkeypatch, capsys):
    return Rig(tmp_path, monkeypatch, capsys)


class NoRoom:
    """A trainer whose save() to a name `full(name, calls)` picks raises ENOSPC (a full
    filesystem), writing nothing; everything else is the trainer's."""

    def __init__(self, tr, full, calls):
        self._tr, self._full, self._calls = tr, full, calls

    def __getattr__(self, name):
        return getattr(self._tr, name)

    def save(self, path):
        name = os.path.basename(path)
        self._calls.append(name)
        if self._full(name, self._calls):
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._tr.save(path)


def no_room(monkeypatch, full):
    calls = []
    make = A.Agent._make_trainer

    def wrapped(self, opts):
        plan, tr, h0, h1 = make(self, opts)
        return plan, NoRoom(tr, full, calls), h0, h1
    monkeypatch.setattr(A.Agent, "_make_trainer", wrapped)
    return calls


def flash(rig):
    return str(rig.where / "flash")


def params_files(rig):
    return {k: v for k, v in folder_state(flash(rig)).items() if k.startswith("params")}


def two_saved_runs(rig):
    """The board with saved parameters (seed 2) and earlier ones for a rollback (seed 1)."""
    for seed in (1, 2):
        rc, out, err = rig.cli("train", method="last", steps=3, seed=seed)
        assert rc == 0, err
    files = params_files(rig)
    assert set(PARAMS) <= set(files) and files["params.bin"] != files["params.prev"]
    return files


def record_seed(data):
    return A.decode(data)["options"]["seed"]


def test_a_save_with_no_room_keeps_the_saved_parameters_and_the_rollback(rig, monkeypatch):
    before = two_saved_runs(rig)
    # no room even once the rollback's parameters are gone: nothing may change
    calls = no_room(monkeypatch, lambda name, calls: True)
    rc, out, err = rig.cli("train", method="last", steps=3, seed=3, json=False)
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("error: the board could not save this run's "
                                               "parameters: "), err
    assert "no room left on the board's filesystem" in err[0] and "keeps its last saved parameters" in err[0]
    assert "parameters NOT saved: the board could not write them" in out
    # it tried, dropped the rollback to make room, tried again
    assert calls == ["params.new", "params.new"]
    after = params_files(rig)
    assert {k: after.get(k) for k in ("params.bin", "params.opt")} == \
        {k: before[k] for k in ("params.bin", "params.opt")}
    assert "params.prev" not in after and "params.prev.opt" not in after
    assert not [k for k in after if ".new" in k or k.endswith(".tmp")], sorted(after)
    # the board says the same: the seed-2 run is the saved one
    with open_fake(rig.where) as b:
        p = b.info["params"]
        assert p["saved"] and not p["previous"] and p["options"]["seed"] == 2
    # the run is recorded, with why it was not saved; the report says so
    runs = sorted(os.listdir(rig.session.runs_dir))
    with open(os.path.join(rig.session.runs_dir, runs[-1])) as f:
        rec = json.load(f)
    assert rec["end"]["saved"] is False and "no room left" in rec["end"]["save_error"]
    rc, out, err = rig.cli("report", json=False)
    assert rc == 0, err
    assert "the board could not write them" in out


def test_a_save_that_fits_once_the_rollback_goes_is_a_save(rig, monkeypatch):
    before = two_saved_runs(rig)
    calls = no_room(monkeypatch, lambda name, calls: len(calls) == 1)
    rc, out, err = rig.cli("train", method="last", steps=3, seed=3)
    assert rc == 0, err
    assert json.loads(out)["saved"] is True and calls == ["params.new", "params.new"]
    after = params_files(rig)
    # what any save leaves: the new parameters saved, the ones saved until now for a rollback
    assert after["params.prev"] == before["params.bin"]
    assert after["params.prev.opt"] == before["params.opt"]
    assert record_seed(after["params.opt"]) == 3 and after["params.bin"] != before["params.bin"]
    assert sorted(after) == sorted(PARAMS)


def test_another_write_error_drops_nothing(rig, monkeypatch):
    before = two_saved_runs(rig)

    class Broken(NoRoom):
        def save(self, path):
            self._calls.append(os.path.basename(path))
            raise OSError(errno.EIO, "Input/output error")
    calls = []
    make = A.Agent._make_trainer
    monkeypatch.setattr(A.Agent, "_make_trainer", lambda self, o: (
        lambda p, tr, h0, h1: (p, Broken(tr, None, calls), h0, h1))(*make(self, o)))
    rc, out, err = rig.cli("train", method="last", steps=3, seed=3)
    assert rc == 1 and "Input/output error" in err[0] and "dropped" not in err[0]
    assert json.loads(out)["saved"] is False
    assert calls == ["params.new"] and params_files(rig) == before


def test_a_record_that_does_not_fit_leaves_no_new_parameters(rig, monkeypatch):
    before = two_saved_runs(rig)
    real = A._write_file

    def write(path, data):
        if path.endswith("params.new.opt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)
    monkeypatch.setattr(A, "_write_file", write)
    rc, out, err = rig.cli("train", method="last", steps=3, seed=3)
    assert rc == 1 and "no room left on the board's filesystem" in err[0]
    after = params_files(rig)
    assert {k: after.get(k) for k in ("params.bin", "params.opt")} == \
        {k: before[k] for k in ("params.bin", "params.opt")}
    assert not [k for k in after if ".new" in k or k.endswith(".tmp")], sorted(after)


def test_params_save_from_ram_with_no_room_is_one_line(rig, monkeypatch):
    before = two_saved_runs(rig)
    # the trial run cannot be kept, so the run stays in the agent's RAM; its save finds no room
    calls = no_room(monkeypatch, lambda name, calls: True)
    with open_fake(rig.where) as b:
        from tinymp.session import commands as C, dataset as D
        ds = D.Dataset.open(rig.session.dataset_dir)
        run = C.train(b, ds, {"method": "last", "lr": 0.01, "seed": 3}, steps=3, save=False,
                      show=False)
        assert run["end"]["trial"] is False and "no room left" in run["end"]["trial_error"]
        from tinymp.session import link
        with pytest.raises(link.BoardError) as e:
            b.request(P.PARAMS_SAVE)
        assert e.value.code == "storage" and "the saved ones are as they were" in e.value.msg
    assert calls == ["params.try", "params.new", "params.new"]
    after = params_files(rig)
    assert after["params.bin"] == before["params.bin"]


def test_a_trial_run_the_board_cannot_keep_fails_the_command(rig, monkeypatch):
    # `train --no-save` with no room for params.try said "not kept as a trial run" and exited 0,
    # where a saved run that cannot be written exits 1
    before = two_saved_runs(rig)
    no_room(monkeypatch, lambda name, calls: True)
    rc, out, err = rig.cli("train", method="last", steps=3, seed=3, no_save=True, json=False)
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("error: the board could not keep this run as a "
                                               "trial run: no room left"), err
    assert "parameters NOT saved, and not kept as a trial run" in out
    assert params_files(rig) == before


# --- a reset cut into the save ----------------------------------------------------------------

def _save_steps(root):
    """The file states a save passes through, as (what was done, files): from before it to
    after, one rename or write at a time (after the new files are written whole)."""
    j = lambda n: os.path.join(root, n)  # noqa: E731
    steps = []

    def snap(what):
        steps.append((what, {n: open(j(n), "rb").read() for n in sorted(os.listdir(root))
                             if n.startswith("params")}))
    snap("before")
    A._write_file(j("params.new"), b"NEW")
    snap("parameters written")
    A._write_file(j("params.new.opt"), A.encode({"options": {"seed": 9}}))
    snap("record written")
    if os.path.exists(j("params.bin")):  # a first save has nothing to shelve
        A._replace(j("params.bin"), j("params.prev"))
        snap("saved ones shelved")
        A._replace(j("params.opt"), j("params.prev.opt"))
        snap("their record shelved")
    A._replace(j("params.new"), j("params.bin"))
    snap("new parameters in place")
    A._replace(j("params.new.opt"), j("params.opt"))
    snap("new record in place")
    return steps


@pytest.mark.parametrize("first_save", [False, True], ids=["second-save", "first-save"])
def test_a_save_cut_short_by_a_reset_leaves_the_old_state_or_the_new(tmp_path, first_save):
    root = str(tmp_path / "flash")
    os.mkdir(root)
    if not first_save:
        for n, v in (("params.bin", b"OLD"), ("params.opt", A.encode({"options": {"seed": 1}})),
                     ("params.prev", b"OLDER"),
                     ("params.prev.opt", A.encode({"options": {"seed": 0}}))):
            with open(os.path.join(root, n), "wb") as f:
                f.write(v)
    steps = _save_steps(root)
    old, new = steps[0][1], steps[-1][1]
    assert new["params.bin"] == b"NEW" and "params.new" not in new
    for what, files in steps:
        for n in os.listdir(root):
            os.remove(os.path.join(root, n))
        for n, v in files.items():
            with open(os.path.join(root, n), "wb") as f:
                f.write(v)
        A.Agent(root=root, board={})  # a board that starts again recovers in its constructor
        got = {n: open(os.path.join(root, n), "rb").read() for n in os.listdir(root)
               if n.startswith("params")}
        # before the new files are whole nothing changed; once they are, the save finishes
        # (a first save has nothing to keep: its whole files are finished at once)
        whole = what not in ("before", "parameters written")
        want = new if whole and (first_save or what != "record written") else old
        assert got == want, what
