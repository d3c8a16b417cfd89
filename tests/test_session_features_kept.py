"""`tinymp train --keep-features`: a run keeps its samples' frozen-prefix features on the board
(features.kept) and a later run with the option starts every sample it holds from them, from its
first step (tinymp_agent.Features with a header, agent 7).

None of this may change a run: the reference is the run written as plain Trainer.step() calls
from the pretrained weights (test_session_features.reference), and the board's saved parameters
must be byte for byte the reference trainer's save(). The board is the real agent in this
process.
"""
import errno
import io
import zlib
import json
import os
import struct
import types

import pytest

from tinymp import tinymp_agent as A
from tinymp.session import commands as C
from tinymp.session import dataset as D
from tinymp.session import protocol as P

from test_session_features import OPTS, SHORT, reference
from test_session_replies import Rig, open_fake

KEEP = dict(OPTS, keep_features=True)


@pytest.fixture
def rig(tmp_path, monkeypatch, capsys):
    return Rig(tmp_path, monkeypatch, capsys)


def kept_file(rig):
    return os.path.join(str(rig.where), "flash", A.KEPT_FILE)


def run_file(rig):
    return os.path.join(str(rig.where), "flash", "features.bin")


def train(rig, opts, epochs):
    ds = D.Dataset.open(rig.session.dataset_dir)
    with open_fake(rig.where) as b:
        rec = C.train(b, ds, opts, epochs=epochs, show=False)
        budget = b.info["arena_budget"]
    return ds, budget, rec


def check_run(rig, opts, epochs, reused, where, damaged=0):
    """Train `epochs` epochs from the pretrained weights and check the run against plain steps:
    its events, its saved parameters, which steps started from kept features (a sample's first
    step when the kept file held it, `reused` of them, `damaged` more were damaged; every later
    one) and how many prefix passes it saved."""
    ds, budget, rec = train(rig, dict(opts, fresh=True), epochs)
    n = len(ds)
    events, saved, plan = reference(ds, budget, opts, epochs * n, rig.tmp)
    f = {k: i for i, k in enumerate(rec["fields"])}
    got = [(e[f["sample"]], e[f["label"]], e[f["pred"]], e[f["loss"]]) for e in rec["events"]]
    assert [g[:3] for g in got] == [e[:3] for e in events]
    assert [g[3] for g in got] == pytest.approx([e[3] for e in events], rel=1e-6)
    with open(os.path.join(str(rig.where), "flash", "params.bin"), "rb") as fh:
        assert fh.read() == saved
    fe = rec["end"]["features"]
    assert fe["where"] == where and fe["reused"] == reused and fe["kept"] is True
    # at the start: the records that match the store (in RAM their CRCs are checked then, in a
    # file as each is read: a damaged one is found at its sample's first step)
    assert rec["start"]["features"]["reused"] == (reused + damaged if where == "file" else reused)
    flags = [e[f["cached"]] for e in rec["events"]]
    # every step after a sample's first one, and the first ones of the samples the file held
    assert sum(flags[:n]) == reused and all(flags[n:])
    cached = sum(flags)
    assert fe["cached_steps"] == cached
    prefix = plan.forward_macs - (plan.step_macs - plan.backward_macs)
    assert rec["end"]["stats"]["forward_macs"] == epochs * n * plan.forward_macs - cached * prefix
    # the file holds every sample's features for the next run, and no run's own file is left
    assert os.path.getsize(kept_file(rig)) == A.KEPT_HEAD + n * (A.KEPT_REC + plan.cache_bytes)
    assert not os.path.exists(run_file(rig))
    return rec, plan


@pytest.mark.parametrize("where", ["ram", "file"])
def test_a_later_run_starts_every_sample_from_the_kept_features(rig, monkeypatch, where):
    if where == "file":
        monkeypatch.setattr(A, "_mem_free", SHORT)
    check_run(rig, KEEP, 2, 0, where)
    rec, plan = check_run(rig, KEEP, 2, 12, where)
    assert rec["end"]["features"]["cached_steps"] == 24  # not one prefix pass in the run


def test_one_epoch_keeps_them_when_asked(rig):
    # without the option one epoch keeps nothing (test_session_features); with it, the run fills
    # the file and the next one-epoch run skips the prefix at every step
    check_run(rig, KEEP, 1, 0, "ram")
    rec, _ = check_run(rig, KEEP, 1, 12, "ram")
    assert rec["end"]["features"]["cached_steps"] == 12


def test_the_features_on_file_are_the_engines(rig):
    """Each record is the sample's id, label, CRC-32 and the features Trainer.step(cache=...)
    writes for it, checked against the host build's own step."""
    import tinymp
    check_run(rig, KEEP, 1, 0, "ram")
    ds = D.Dataset.open(rig.session.dataset_dir)
    xs, ys = ds.arrays()
    m = tinymp.Model(open(rig.model, "rb").read())
    with open_fake(rig.where) as b:
        budget = b.info["arena_budget"]
    plan = m.plan(method="tinymp", budget=budget)
    with open(kept_file(rig), "rb") as f:
        data = f.read()
    assert data[:4] == b"TMPF"
    first, size = struct.unpack_from("<II", data, 8)
    assert (first, size) == (plan.first, plan.cache_bytes)
    rec = A.KEPT_REC + size
    for i in range(len(ys)):
        tr = tinymp.Trainer(m, plan, lr=0.01)
        buf = bytearray(size)
        tr.step(xs[i].tobytes(), int(ys[i]), cache=buf)
        sid, label, crc = struct.unpack_from("<III", data, A.KEPT_HEAD + i * rec)
        at = A.KEPT_HEAD + i * rec + A.KEPT_REC
        assert (sid, label) == (i, int(ys[i]))
        assert data[at:at + size] == bytes(buf)
        # the CRC covers the file's salt, the id and the label too
        salt = struct.unpack_from("<I", data, 28)[0]
        assert crc == zlib.crc32(buf, zlib.crc32(struct.pack("<III", salt, i, int(ys[i]))))


@pytest.mark.parametrize("where", ["ram", "file"])
def test_a_damaged_record_is_recomputed_and_rewritten(rig, monkeypatch, where):
    if where == "file":
        monkeypatch.setattr(A, "_mem_free", SHORT)
    _, plan = check_run(rig, KEEP, 1, 0, where)
    rec = A.KEPT_REC + plan.cache_bytes
    with open(kept_file(rig), "r+b") as f:
        f.seek(A.KEPT_HEAD + 3 * rec + A.KEPT_REC + 5)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x40]))
    # sample 3 is stepped from its input (the same run), and its record written again
    check_run(rig, KEEP, 2, 11, where, damaged=1)
    check_run(rig, KEEP, 1, 12, where)


def test_samples_added_later_are_computed_and_added(rig):
    check_run(rig, KEEP, 1, 0, "ram")
    from test_session_replies import SCENE
    x, y, src = D.load_samples(SCENE, *rig._fmt())
    ds = D.Dataset.open(rig.session.dataset_dir)
    C.import_samples(ds, x[12:16], y[12:16], src[12:16], show=False)
    check_run(rig, KEEP, 2, 12, "ram")  # 16 samples now, 12 of them from the file
    check_run(rig, KEEP, 1, 16, "ram")


@pytest.mark.parametrize("change", ["no option", "another plan", "another model",
                                    "samples cleared"])
def test_what_makes_them_go(rig, change):
    check_run(rig, KEEP, 1, 0, "ram")
    assert os.path.exists(kept_file(rig))
    if change == "no option":
        _, _, rec = train(rig, OPTS, 2)
        assert "reused" not in rec["end"]["features"]
        assert not os.path.exists(kept_file(rig))  # a run that keeps none frees the room
    elif change == "another plan":
        # features at another layer: the file is not this plan's, and is written anew
        last = dict(KEEP, method="last", fresh=True)
        _, _, rec = train(rig, last, 1)
        assert rec["start"]["features"]["reused"] == 0 and rec["end"]["features"]["kept"]
        _, _, rec = train(rig, last, 1)
        assert rec["end"]["features"]["reused"] == 12
        # and back: tinymp's were replaced
        _, _, rec = train(rig, dict(KEEP, fresh=True), 1)
        assert rec["end"]["features"]["reused"] == 0
    elif change == "another model":
        other = os.path.join(os.path.dirname(A.__file__), "models", "digits0to4.tmpm")
        with open_fake(rig.where) as b:
            C.push(b, open(other, "rb").read(), show=False)
        assert not os.path.exists(kept_file(rig))
    else:
        with open_fake(rig.where) as b:
            b.request(P.SAMPLES_CLEAR)
        assert not os.path.exists(kept_file(rig))


def test_a_header_of_another_model_is_not_taken(rig, monkeypatch):
    check_run(rig, KEEP, 1, 0, "ram")
    monkeypatch.setattr(A.Agent, "_model_sha", lambda self: "ab" * 32)
    _, _, rec = train(rig, dict(KEEP, fresh=True), 1)
    assert rec["end"]["features"]["reused"] == 0


@pytest.mark.parametrize("where", ["ram", "file"])
def test_the_parameters_come_first_on_a_full_filesystem(rig, monkeypatch, where):
    """A save that finds no room while the kept file is there: the file goes, the save is tried
    again and succeeds; the run's features are not kept (in RAM: not written after the save
    either, into the room the parameters needed)."""
    if where == "file":
        monkeypatch.setattr(A, "_mem_free", SHORT)  # in the file during the run
    check_run(rig, KEEP, 1, 0, where)
    real = A.Agent._save_params

    def needs_room(self, opts):
        if os.path.exists(kept_file(rig)):
            return "no room left on the board's filesystem"
        return real(self, opts)
    monkeypatch.setattr(A.Agent, "_save_params", needs_room)
    _, _, rec = train(rig, dict(KEEP, fresh=True), 2)
    assert rec["end"]["saved"] and rec["end"]["features"]["kept"] is False
    assert not os.path.exists(kept_file(rig))


def test_features_that_do_not_fit_after_the_run_are_dropped(rig, monkeypatch):
    def no_room(self):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(A.Features, "_write_new", no_room)
    _, _, rec = train(rig, dict(KEEP, fresh=True), 2)
    assert rec["end"]["saved"] and rec["end"]["features"]["kept"] is False
    assert not os.path.exists(kept_file(rig))


def test_an_agent_before_7_is_refused_before_anything_is_sent(rig):
    def as_agent_6(t, req, rep):
        if t == P.INFO:
            rep = dict(rep, agent="6")
        return rep
    rig.tamper = as_agent_6
    rc, out, err = rig.cli("train", keep_features=True)
    assert rc == 2
    assert err == ["tinymp: keeping the samples' features between runs (--keep-features) needs "
                   "the board's agent version 7 or later; this board runs version 6 (flash a "
                   "newer firmware)"]


def test_train_and_report_say_what_was_kept(rig):
    rc, out, err = rig.cli("train", steps=None, epochs=2, keep_features=True, json=False)
    assert rc == 0, err
    line = [ln for ln in out.splitlines() if ln.startswith("feature cache:")]
    assert len(line) == 1 and line[0].endswith(
        "; none from an earlier run; kept on the board for later runs"), out
    rc, out, err = rig.cli("train", steps=None, epochs=2, keep_features=True)
    assert rc == 0, err
    fe = json.loads(out)["features"]
    assert fe["reused"] == 12 and fe["kept"] is True and fe["cached_steps"] == 24
    rc, out, err = rig.cli("report", json=False)
    assert rc == 0, err
    row = [ln for ln in out.splitlines() if ln.startswith("feature cache")]
    assert len(row) == 1 and "24 of 24 steps skipped the prefix; the features of 12 samples " \
        "from an earlier run; kept on the board for later runs" in row[0], out


def test_a_session_config_can_ask_for_it(rig, tmp_path):
    from tinymp.session import run
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": rig.model, "train": {"keep_features": "yes"}}))
    with pytest.raises(C.SessionError) as e:
        run.load_config(str(cfg))
    assert "train.keep_features must be true or false" in str(e.value)


def test_records_of_other_samples_are_not_taken(rig):
    """Records 0 and 1 swapped (each whole, its CRC right): neither is sample 0's or 1's, so
    both samples are stepped from their inputs, and their records written again."""
    _, plan = check_run(rig, KEEP, 1, 0, "ram")
    rec = A.KEPT_REC + plan.cache_bytes
    with open(kept_file(rig), "r+b") as f:
        f.seek(A.KEPT_HEAD)
        two = f.read(2 * rec)
        f.seek(A.KEPT_HEAD)
        f.write(two[rec:] + two[:rec])
    check_run(rig, KEEP, 1, 10, "ram")
    check_run(rig, KEEP, 1, 12, "ram")


def test_a_plan_without_a_prefix_keeps_none_and_says_so(rig):
    rc, out, err = rig.cli("train", method="bias", lr=0.001, keep_features=True)
    assert rc == 0, err
    assert json.loads(out)["features"] is None
    assert err == ["note: no features were kept for later runs: the plan trains from the model's "
                   "first layer (no frozen prefix), or the board had no room for even one "
                   "sample's features, or cannot tell its model apart (no hashlib)"]
    assert not os.path.exists(kept_file(rig))


def test_an_earlier_files_records_in_a_grown_file_are_not_taken(rig):
    """A file grown past its end to reach a record (a run that stepped one sample) may hold, on
    FAT, what an earlier file left in the clusters it gets: whole records with their CRCs right
    for that file. Here they are put there by hand, with other features than this store's: they
    must not pass (the CRC covers each file's own salt)."""
    _, plan = check_run(rig, KEEP, 1, 0, "ram")
    rec = A.KEPT_REC + plan.cache_bytes
    with open(kept_file(rig), "rb") as f:
        old = f.read()
    salt = struct.unpack_from("<I", old, A.KEPT_SALT)[0]
    # the earlier file's records, of other features (as if of other samples), CRCs right for it
    foreign = []
    for i in range(12):
        at = A.KEPT_HEAD + i * rec
        sid, label, _ = struct.unpack_from("<III", old, at)
        feats = bytes(b ^ 0x11 for b in old[at + A.KEPT_REC:at + rec])
        # the CRC as the agent wrote it in that file (test_the_features_on_file_are_the_engines
        # checks the agent's CRC against zlib's)
        crc = A.Features._crc(types.SimpleNamespace(salt=salt), sid, label, feats)
        foreign.append(struct.pack("<III", sid, label, crc) + feats)
    os.remove(kept_file(rig))
    # a run of one step: a new file, with its one record at its sample's place
    ds = D.Dataset.open(rig.session.dataset_dir)
    with open_fake(rig.where) as b:
        C.train(b, ds, dict(KEEP, fresh=True), steps=1, show=False)
    with open(kept_file(rig), "rb") as f:
        new = bytearray(f.read())
    assert struct.unpack_from("<I", new, A.KEPT_SALT)[0] != salt
    one = [i for i in range(12) if len(new) >= A.KEPT_HEAD + (i + 1) * rec and
           any(new[A.KEPT_HEAD + i * rec:A.KEPT_HEAD + (i + 1) * rec])]
    assert len(one) == 1
    new.extend(bytes(A.KEPT_HEAD + 12 * rec - len(new)))
    for i in range(12):
        if i != one[0]:
            new[A.KEPT_HEAD + i * rec:A.KEPT_HEAD + (i + 1) * rec] = foreign[i]
    with open(kept_file(rig), "wb") as f:
        f.write(new)
    # only the run's own record is taken; the run trains as plain steps do
    check_run(rig, KEEP, 2, 1, "ram")


def test_a_file_that_filled_the_filesystem_goes_when_the_pc_leaves(rig, monkeypatch):
    monkeypatch.setattr(A, "_mem_free", SHORT)  # in the file during the run

    class Filling(io.FileIO):
        writes = 0

        def write(self, b):
            Filling.writes += 1
            if Filling.writes > 4:  # the header and 3 records
                raise OSError(errno.ENOSPC, "No space left on device")
            return io.FileIO.write(self, b)
    real = open

    def fake_open(path, mode="r", *a, **kw):
        if path.endswith("/" + A.KEPT_FILE) and "+" in mode:
            return Filling(path, mode.replace("b", ""))
        return real(path, mode, *a, **kw)
    monkeypatch.setattr(A, "open", fake_open, raising=False)
    ds = D.Dataset.open(rig.session.dataset_dir)
    with open_fake(rig.where) as b:
        C.sync_samples(b, ds, False)
        b.request(P.TRAIN_START, dict(KEEP, steps=24))
        b.request(P.TRAIN_STEPS, {"n": 14})
        assert os.path.exists(kept_file(rig))
    # the PC left in the middle of the run: a file that filled the filesystem takes no room
    assert not os.path.exists(kept_file(rig))


def test_samples_that_need_the_room_get_it(rig, monkeypatch):
    """A sample the filesystem has no room for while the kept file is there: the file goes and
    the sample is stored."""
    check_run(rig, KEEP, 1, 0, "ram")
    real = A.Store.append

    def needs_room(self, sid, label, data):
        if os.path.exists(kept_file(rig)):
            raise A.Fail("no_space", "no room left on the board's filesystem")
        return real(self, sid, label, data)
    monkeypatch.setattr(A.Store, "append", needs_room)
    from test_session_replies import SCENE
    x, y, src = D.load_samples(SCENE, *rig._fmt())
    ds = D.Dataset.open(rig.session.dataset_dir)
    C.import_samples(ds, x[12:14], y[12:14], src[12:14], show=False)
    with open_fake(rig.where) as b:
        assert C.sync_samples(b, ds, False) == 2
        assert b.request(P.SAMPLES_STATUS)["count"] == 14
    assert not os.path.exists(kept_file(rig))


def test_a_push_of_another_model_drops_them_before_it_is_committed(rig):
    check_run(rig, KEEP, 1, 0, "ram")
    other = os.path.join(os.path.dirname(A.__file__), "models", "digits0to4.tmpm")
    import hashlib
    data = open(other, "rb").read()
    with open_fake(rig.where) as b:
        # the same model again: nothing to drop
        b.request(P.PUSH_BEGIN, {"size": len(rig_model(rig)), "sha256":
                                 hashlib.sha256(rig_model(rig)).hexdigest()})
        assert os.path.exists(kept_file(rig))
        b.request(P.PUSH_BEGIN, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        assert not os.path.exists(kept_file(rig))  # the push may need the room


def rig_model(rig):
    with open(rig.model, "rb") as f:
        return f.read()


def test_a_train_end_without_options_keeps_a_trial(rig):
    # as before agent 7: a TRAIN_END that says nothing saves nothing
    ds = D.Dataset.open(rig.session.dataset_dir)
    with open_fake(rig.where) as b:
        C.sync_samples(b, ds, False)
        b.request(P.TRAIN_START, dict(KEEP, steps=12))
        b.request(P.TRAIN_STEPS, {"n": 12})
        end = b.request(P.TRAIN_END)
    assert end["saved"] is False and end["trial"] is True and end["features"]["kept"] is True
    assert not os.path.exists(os.path.join(str(rig.where), "flash", "params.bin"))


def test_a_file_gone_during_a_run_in_ram_is_written_whole_after_it(rig):
    """Features taken from the file into RAM at the start, and the file gone before the run's
    end: the new file holds them all, not only the ones the run computed."""
    _, plan = check_run(rig, KEEP, 1, 0, "ram")
    ds = D.Dataset.open(rig.session.dataset_dir)
    with open_fake(rig.where) as b:
        C.sync_samples(b, ds, False)
        start = b.request(P.TRAIN_START, dict(KEEP, steps=6, fresh=True))
        assert start["features"]["reused"] == 12
        os.remove(kept_file(rig))
        b.request(P.TRAIN_STEPS, {"n": 6})
        end = b.request(P.TRAIN_END, {"save": True})
    assert end["features"]["kept"] is True
    assert os.path.getsize(kept_file(rig)) == A.KEPT_HEAD + 12 * (A.KEPT_REC + plan.cache_bytes)
    check_run(rig, KEEP, 1, 12, "ram")


def status(rig):
    from tinymp.session import run
    with open_fake(rig.where) as b:
        st = C.board_status(b, rig.session)
    return st["features"], run.status_lines(st)[-1]


def test_status_says_what_the_board_keeps(rig):
    """`tinymp status` (INFO "features", agent 8): the kept file's size on the board, how many
    samples it holds, the layer and bytes per sample of the plan that kept them, checked against
    the file and the host engine's plan; a file of another engine or a damaged one is said to be
    unused; none after a run without the option."""
    f, line = status(rig)
    assert f is None and line == ("features    none kept: `tinymp train --keep-features` keeps "
                                  "the samples' features for later runs")
    _, plan = check_run(rig, KEEP, 1, 0, "ram")
    size = os.path.getsize(kept_file(rig))
    f, line = status(rig)
    assert f == {"bytes": size, "samples": 12, "first": plan.first,
                 "sample_bytes": plan.cache_bytes, "current": True}
    assert line == (f"features    of 12 samples ({size:,} B on the board), kept by a run with "
                    f"--keep-features that trained from layer {plan.first}: a later one with "
                    "the same plan starts them from these")
    with open(kept_file(rig), "rb") as fh:
        head = fh.read()
    # another engine's features (its version's CRC in the header): not used, and said so
    with open(kept_file(rig), "r+b") as fh:
        fh.seek(24)
        fh.write(struct.pack("<I", zlib.crc32(b"0.0.0")))
    f, line = status(rig)
    assert f["current"] is False and f["samples"] == 12 and f["bytes"] == size
    assert line.startswith(f"features    a file of {size:,} B of another model, samples or "
                           "engine: not used")
    _, _, rec = train(rig, dict(KEEP, fresh=True), 1)
    assert rec["end"]["features"]["reused"] == 0  # status was right: the run did not use them
    # a damaged header
    with open(kept_file(rig), "wb") as fh:
        fh.write(b"TMPX" + head[4:50])
    f, _ = status(rig)
    assert f == {"bytes": 50, "samples": 0, "current": False}
    # a run without the option removes them; status says none
    train(rig, OPTS, 1)
    assert status(rig)[0] is None


def test_status_of_an_agent_before_8(rig):
    from tinymp.session import run
    with open_fake(rig.where) as b:
        st = C.board_status(b, rig.session)
    st["board"]["agent"] = "7"
    assert run.status_lines(st)[-1] == ("features    whether any are kept this board's agent "
                                        "(version 7) does not say")


@pytest.mark.parametrize("how", ["bye", "end of input", "another run"])
def test_a_run_in_ram_the_pc_leaves_keeps_the_features_it_computed(rig, how):
    """A run in RAM that ends without TRAIN_END (the PC says goodbye, its input ends, or it
    starts another run) writes the features of the samples it stepped to the kept file: the
    next run starts those from them, and trains as plain steps do."""
    ds = D.Dataset.open(rig.session.dataset_dir)
    b = open_fake(rig.where)
    C.sync_samples(b, ds, False)
    start = b.request(P.TRAIN_START, dict(KEEP, steps=24, fresh=True))
    assert start["features"]["where"] == "ram" and start["features"]["reused"] == 0
    events = b.request(P.TRAIN_STEPS, {"n": 9})["events"]
    stepped = len({e[0] for e in events})  # the first epoch's order: 9 distinct samples
    assert stepped == 9 and not os.path.exists(kept_file(rig))
    if how == "another run":
        start = b.request(P.TRAIN_START, dict(KEEP, steps=24, fresh=True))
        assert start["features"]["reused"] == stepped
    agent = b.link.port.agent
    if how == "end of input":
        A.serve(io.BytesIO(b""), io.BytesIO(), agent)
        b.close(bye=False)
    else:
        b.close()
        if how == "bye":
            # BYE is answered before the features are written (serve's loop ends after it)
            assert not os.path.exists(kept_file(rig))
            A.serve(io.BytesIO(b""), io.BytesIO(), agent)
    # status counts the records the file holds, not its slots (the run left gaps)
    f, _ = status(rig)
    assert f["samples"] == stepped and f["current"]
    check_run(rig, KEEP, 1, stepped, "ram")


@pytest.mark.parametrize("where", ["ram", "file"])
def test_a_gap_is_not_counted_for_a_sample_of_id_0_and_label_0(rig, monkeypatch, where):
    """A record no step wrote is zero: the id 0 and label 0 that the first sample of a store
    may have. Neither status nor a run in a file (which checks CRCs only as it reads) may count
    it as that sample's features (status said one sample more than the next run used)."""
    if where == "file":
        monkeypatch.setattr(A, "_mem_free", SHORT)
    _, plan = check_run(rig, KEEP, 1, 0, where)
    rec = A.KEPT_REC + plan.cache_bytes
    with open(kept_file(rig), "r+b") as f:  # sample 0's record as a run that skipped it leaves it
        f.seek(A.KEPT_HEAD)
        f.write(bytes(rec))
    heads = A.Store.heads
    monkeypatch.setattr(A.Store, "heads", lambda self, n: [(0, 0)] + heads(self, n)[1:])
    f, _ = status(rig)
    assert f["samples"] == 11 and f["current"]
    ds = D.Dataset.open(rig.session.dataset_dir)
    with open_fake(rig.where) as b:
        C.sync_samples(b, ds, False)
        start = b.request(P.TRAIN_START, dict(KEEP, steps=12, fresh=True))
    assert start["features"]["reused"] == 11
