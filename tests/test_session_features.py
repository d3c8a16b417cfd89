"""`tinymp train` on the board starts a sample's later steps from its frozen-prefix features.

At a sample's first step of a run the agent keeps the features the trained region reads
(Trainer.step(x, y, cache=...), plan.cache_bytes each; tinymp_agent.Features): in RAM when the
heap has room, else in a file beside the sample store. Its later steps start from them
(Trainer.step_cached) and skip the prefix layers, and every step's prediction is the one of its
own forward pass (Trainer.prediction) instead of a second inference. None of this may change the
run: the reference is the same run written here as plain Trainer.step() calls, with predict()
before each, in the board's sample order; the board's saved parameters must be byte for byte the
reference trainer's save().

The board is the real agent in this process (test_session_replies.open_fake).
"""
import errno
import io
import json
import os

import pytest

import tinymp
from tinymp import tinymp_agent as A
from tinymp.session import commands as C
from tinymp.session import dataset as D
from tinymp.session import protocol as P

from test_session_replies import DEMO, Rig, open_fake
from test_session_sim import _replica_order

OPTS = {"method": "tinymp", "lr": 0.01, "seed": 5}
EPOCHS = 3


def SHORT():
    """A heap with room for one sample's features beside the reserve, not for all 12."""
    return A.Features.RESERVE + 4096


@pytest.fixture
def rig(tmp_path, monkeypatch, capsys):
    return Rig(tmp_path, monkeypatch, capsys)


def features_file(rig):
    return os.path.join(str(rig.where), "flash", "features.bin")


def features_file_as(monkeypatch, cls):
    """The agent opens its features.bin as `cls` (an io.FileIO that misbehaves), other files as
    usual."""
    real = open

    def fake_open(path, mode="r", *a, **kw):
        if path.endswith("/features.bin"):
            return cls(path, mode.replace("b", ""))
        return real(path, mode, *a, **kw)
    monkeypatch.setattr(A, "open", fake_open, raising=False)


def reference(ds, budget, opts, steps, tmp):
    """(events as (sample, label, pred, loss), the saved parameters' bytes, the plan) of the run
    written as plain steps."""
    m = tinymp.Model(DEMO)
    plan = m.plan(method=opts["method"], budget=budget)
    tr = tinymp.Trainer(m, plan, lr=opts["lr"], seed=opts["seed"])
    xs, ys = ds.arrays()
    events = []
    for k, i in enumerate(_replica_order(len(ys), opts["seed"], steps)):
        if k > 0 and k % len(ys) == 0:
            tr.end_period()  # the agent closes an APU period at every epoch
        x = xs[i].tobytes()
        pred = tr.predict(x)
        events.append((i, int(ys[i]), pred, tr.step(x, int(ys[i]))))
    path = os.path.join(str(tmp), "reference.bin")
    tr.save(path)
    with open(path, "rb") as f:
        return events, f.read(), plan


def train_and_check(rig, where, cached, kept=None):
    """Train EPOCHS epochs on the board and check the run against plain steps; `cached`: the
    steps that should start from kept features, `kept`: how many samples' features were kept
    (the first ones stepped; all by default)."""
    ds = D.Dataset.open(rig.session.dataset_dir)
    n = len(ds)
    with open_fake(rig.where) as b:
        rec = C.train(b, ds, OPTS, epochs=EPOCHS, show=False)
        budget = b.info["arena_budget"]
    events, saved, plan = reference(ds, budget, OPTS, EPOCHS * n, rig.tmp)
    f = {k: i for i, k in enumerate(rec["fields"])}
    got = [(e[f["sample"]], e[f["label"]], e[f["pred"]], e[f["loss"]]) for e in rec["events"]]
    assert [g[:3] for g in got] == [e[:3] for e in events]
    assert [g[3] for g in got] == pytest.approx([e[3] for e in events], rel=1e-6)
    # each event says whether its step started from kept features: a sample seen before in
    # the run, whose features were kept (the first `kept` samples stepped)
    firsts = list(dict.fromkeys(e[0] for e in events))
    kept_ids = set(firsts[:n if kept is None else kept]) if where else set()
    seen, want_flags = set(), []
    for e in events:
        want_flags.append(e[0] in seen and e[0] in kept_ids)
        seen.add(e[0])
    assert [e[f["cached"]] for e in rec["events"]] == want_flags
    assert sum(want_flags) == cached
    with open(os.path.join(str(rig.where), "flash", "params.bin"), "rb") as fh:
        assert fh.read() == saved
    assert plan.cache_bytes > 0
    want = None if where is None else {"where": where, "bytes": n * plan.cache_bytes,
                                       "sample_bytes": plan.cache_bytes, "cached_steps": cached}
    assert rec["end"]["features"] == want
    assert rec["start"]["features"] == (None if want is None else dict(want, cached_steps=0))
    # the prefix layers ran once per sample whose features were kept, not once per step
    prefix = plan.forward_macs - (plan.step_macs - plan.backward_macs)
    assert rec["end"]["stats"]["forward_macs"] == EPOCHS * n * plan.forward_macs - cached * prefix
    assert not os.path.exists(features_file(rig))  # the run's end removed it
    return rec


def test_in_ram(rig):
    n = 12
    train_and_check(rig, "ram", (EPOCHS - 1) * n)


def test_in_a_file_when_the_heap_has_no_room(rig, monkeypatch):
    monkeypatch.setattr(A, "_mem_free", SHORT)
    n = 12
    train_and_check(rig, "file", (EPOCHS - 1) * n)


def test_the_same_run_without_them(rig, monkeypatch):
    monkeypatch.setattr(A.Agent, "_features", lambda self, plan, tr, steps, keep=False: None)
    train_and_check(rig, None, 0)


@pytest.mark.parametrize("spare, where", [(0, "ram"), (-1, "file")])
def test_a_board_that_measures_no_heap_goes_by_its_profile(rig, monkeypatch, spare, where):
    # the simulated board has no gc.mem_free: its profile's heap (heap_bytes, INFO's mem_free)
    # less the run's arena decides, as a real board's heap would; a cache that leaves 48 KB
    # beside it in RAM, one byte more in a file. The profile is a copy of the board's with
    # another heap, found first through $TINYMP_BOARDS
    import test_session_replies as R
    prof = R.boards.load(R.PROFILE)
    plan = tinymp.Model(DEMO).plan(method=OPTS["method"], budget=prof["arena_budget_bytes"])
    heap = plan.arena_bytes + 12 * plan.cache_bytes + A.Features.RESERVE + spare
    # a profile's arena budget is within its heap: the budget is the run's arena here (the plan
    # under it the same), so that the budget alone would put the cache nowhere
    budget = plan.arena_bytes
    again = tinymp.Model(DEMO).plan(method=OPTS["method"], budget=budget)
    assert (again.arena_bytes, again.cache_bytes) == (plan.arena_bytes, plan.cache_bytes)
    folder = rig.tmp / "profiles"
    os.makedirs(folder / R.PROFILE)
    (folder / R.PROFILE / "profile.json").write_text(
        json.dumps(dict(prof, heap_bytes=heap, arena_budget_bytes=budget)))
    monkeypatch.setenv("TINYMP_BOARDS", str(folder))
    assert R.board_config(R.boards.load(R.PROFILE))["mem_free"] == heap
    assert A._mem_free() is None  # CPython: no heap figure of its own
    train_and_check(rig, where, (EPOCHS - 1) * 12)


def test_no_room_for_even_one_sample_goes_without(rig, monkeypatch):
    monkeypatch.setattr(A, "_mem_free", lambda: A.Features.RESERVE)
    train_and_check(rig, None, 0)


def test_one_epoch_keeps_none(rig):
    ds = D.Dataset.open(rig.session.dataset_dir)
    with open_fake(rig.where) as b:
        rec = C.train(b, ds, OPTS, epochs=1, show=False)
    assert rec["start"]["features"] is None and rec["end"]["features"] is None


def test_a_filesystem_that_fills_up_keeps_what_it_took(rig, monkeypatch):
    """The file takes 5 samples' features, then the filesystem is full: those 5 start from them
    in later epochs, the others are stepped from their inputs, the run is the same."""
    monkeypatch.setattr(A, "_mem_free", SHORT)

    class Filling(io.FileIO):
        writes = 0

        def write(self, b):
            Filling.writes += 1
            if Filling.writes > 5:
                raise OSError(errno.ENOSPC, "No space left on device")
            return io.FileIO.write(self, b)
    features_file_as(monkeypatch, Filling)
    train_and_check(rig, "file", (EPOCHS - 1) * 5, kept=5)


def test_a_file_that_cannot_be_read_back_costs_only_time(rig, monkeypatch):
    monkeypatch.setattr(A, "_mem_free", SHORT)

    class Forgetful(io.FileIO):
        def readinto(self, b):
            return 0  # as a read that comes back short
    features_file_as(monkeypatch, Forgetful)
    train_and_check(rig, "file", 0, kept=0)


def test_samples_sent_during_a_run_drop_the_features(rig, monkeypatch):
    monkeypatch.setattr(A, "_mem_free", SHORT)  # in a file, to see it go
    ds = D.Dataset.open(rig.session.dataset_dir)
    with open_fake(rig.where) as b:
        C.sync_samples(b, ds, False)
        start = b.request(P.TRAIN_START, dict(OPTS, steps=36))
        assert start["features"]["where"] == "file"
        assert len(b.request(P.TRAIN_STEPS, {"n": 14})["events"]) == 14
        assert os.path.exists(features_file(rig))
        # the same sample again: nothing is stored, and still the features go (the store was
        # written to)
        b.request(P.SAMPLES_PUT, {"dataset": ds.uid, "first": 0, "labels": [int(ds.labels[0])],
                                  "data": ds.samples(0, 1).tobytes()})
        assert not os.path.exists(features_file(rig))
        assert len(b.request(P.TRAIN_STEPS, {"n": 22})["events"]) == 22
        end = b.request(P.TRAIN_END, {"save": False})
    assert end["features"] is None and end["stats"]["steps"] == 36
    assert not os.path.exists(features_file(rig))


def test_train_and_report_say_how_many_steps_skipped_the_prefix(rig):
    rc, out, err = rig.cli("train", steps=None, epochs=3)
    assert rc == 0, err
    fe = json.loads(out)["features"]
    assert fe["where"] == "ram" and fe["cached_steps"] == 24 and fe["bytes"] == 12 * fe["sample_bytes"]
    rc, out, err = rig.cli("train", steps=None, epochs=3, json=False)
    assert rc == 0, err
    line = [ln for ln in out.splitlines() if ln.startswith("feature cache:")]
    assert line == [f"feature cache: 24 of 36 steps started from the samples' kept frozen-prefix "
                    f"features ({fe['bytes'] / 1024:.1f} KB in RAM)"], out
    rc, out, err = rig.cli("report", json=False)
    assert rc == 0, err
    row = [ln for ln in out.splitlines() if ln.startswith("feature cache")]
    assert len(row) == 1 and f"{fe['bytes']:,}" in row[0] and "in RAM: 24 of 36 steps" in row[0], out


def latency_rows(out):
    """The latency table's rows of a text report: {name: [cells after it]}."""
    lines = out.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("latency per step"))
    rows = {}
    for ln in lines[at + 2:]:
        if not ln.strip() or ln.startswith("times:"):
            break
        cells = [c for c in ln.split("  ") if c.strip()]
        rows[cells[0].strip()] = [c.strip() for c in cells[1:]]
    return rows


def test_the_report_shows_steps_from_the_input_and_from_kept_features_apart(rig):
    rc, out, err = rig.cli("train", steps=None, epochs=3)
    assert rc == 0, err
    rc, out, err = rig.cli("report")
    assert rc == 0, err
    t = json.loads(out)["train"]
    by = t["latency_by_start"]
    assert sorted(by) == ["features", "input"]
    assert by["input"]["steps"] == 12 and by["features"]["steps"] == 24
    run = rig.session.runs("train")[-1]
    f = {k: i for i, k in enumerate(run["fields"])}
    for kind, cached in (("input", False), ("features", True)):
        times = sorted(e[f["step_us"]] for e in run["events"] if e[f["cached"]] == cached)
        s = by[kind]["latency_us"]["step"]
        assert (s["n"], s["min"], s["max"]) == (len(times), times[0], times[-1])
        assert s["mean"] == pytest.approx(sum(times) / len(times))
    # all steps together, as before
    assert t["latency_us"]["step"]["n"] == 36
    rc, out, err = rig.cli("report", json=False)
    assert rc == 0, err
    rows = latency_rows(out)
    assert rows["whole step, from the input"][0] == "12", out
    assert rows["whole step, from kept features"][0] == "24", out
    assert {"forward, from the input", "forward, from kept features", "backward, from the input",
            "update, from kept features"} <= set(rows), out


def test_a_board_that_does_not_say_which_steps_were_cached_gets_one_table(rig):
    # an agent before version 5 sends 11 columns: accepted, recorded as such, one table
    def as_agent_4(t, req, rep):
        if t == P.TRAIN_STEPS:
            rep = dict(rep, events=[e[:len(P.EVENT_FIELDS_4)] for e in rep["events"]])
        return rep
    rig.tamper = as_agent_4
    rc, out, err = rig.cli("train", steps=None, epochs=3)
    assert rc == 0, err
    rig.tamper = None
    run = rig.session.runs("train")[-1]
    assert run["fields"] == list(P.EVENT_FIELDS_4)
    assert {len(e) for e in run["events"]} == {11}
    rc, out, err = rig.cli("report")
    assert rc == 0, err
    t = json.loads(out)["train"]
    assert t["latency_by_start"] is None and t["latency_us"]["step"]["n"] == 36
    rc, out, err = rig.cli("report", json=False)
    assert rc == 0, err
    rows = latency_rows(out)
    assert "whole step" in rows and not any("kept features" in k for k in rows), out


def test_an_older_pc_gets_the_rows_it_checks(rig):
    # a PC before agent 5 checks rows of exactly 11 columns and does not ask for "cached": an
    # agent-5 firmware still trains for it
    ds = D.Dataset.open(rig.session.dataset_dir)
    with open_fake(rig.where) as b:
        C.sync_samples(b, ds, False)
        b.request(P.TRAIN_START, dict(OPTS, steps=24))
        rep = b.request(P.TRAIN_STEPS, {"n": 24})
        b.request(P.TRAIN_END, {"save": False})
    old = P.REPLIES[P.TRAIN_STEPS]["events"].spec.specs[:len(P.EVENT_FIELDS_4)]
    assert P._problem({"events": P.ListOf(P.Row(*old))}, rep, "") is None
    assert {len(e) for e in rep["events"]} == {11}


def test_a_newer_boards_extra_columns_are_let_through_and_not_kept(rig):
    def with_more(t, req, rep):
        if t == P.TRAIN_STEPS:
            rep = dict(rep, events=[e + ["new", 7] for e in rep["events"]])
        return rep
    rig.tamper = with_more
    rc, out, err = rig.cli("train", steps=None, epochs=2)
    assert rc == 0, err
    run = rig.session.runs("train")[-1]
    assert run["fields"] == list(P.EVENT_FIELDS)
    assert {len(e) for e in run["events"]} == {len(P.EVENT_FIELDS)}
    # a "cached" that is not a bool is a bad reply
    assert P.reply_problem(P.TRAIN_STEPS, {"events": [run["events"][0][:11] + [1]]}) == \
        "'events[0][11]' is an int (1), not true or false"
    assert P.reply_problem(P.TRAIN_STEPS, {"events": [run["events"][0][:10]]}) == \
        "'events[0]' is a list of 10 items, not 11 or more"


def test_a_run_the_pc_leaves_or_a_reset_cuts_short_leaves_no_file(rig, monkeypatch):
    monkeypatch.setattr(A, "_mem_free", SHORT)
    ds = D.Dataset.open(rig.session.dataset_dir)
    with open_fake(rig.where) as b:
        C.sync_samples(b, ds, False)
        b.request(P.TRAIN_START, dict(OPTS, steps=36))
        b.request(P.TRAIN_STEPS, {"n": 14})
        assert os.path.getsize(features_file(rig)) > 0
    # the PC said goodbye in the middle of the run: the file takes no room after it
    assert not os.path.exists(features_file(rig))
    # one that a reset left behind goes when the agent starts
    with open(features_file(rig), "wb") as f:
        f.write(b"\x01" * 1000)
    with open_fake(rig.where) as b:
        assert not os.path.exists(features_file(rig))
        assert b.request(P.SAMPLES_STATUS)["count"] == 12
