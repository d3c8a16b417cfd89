"""The board's sample store (samples.bin) when its filesystem is full, and after a reset mid-write.

samples.bin is a 16-byte header then fixed-size records (tinymp_agent.Store). Whatever cuts a
write short (no room, a reset), the store keeps every whole record, counts only those, and writes
the next record over a torn one in place (never a copy of the store, which a full filesystem has
no room for); the agent's count and last id are what a fresh start reads from the file; the
refusal says there is no room and how many samples the board holds; the PC says so in one line
and keeps the dataset it sent from. A new store (another dataset) is written whole or not at all;
a clear that cannot remove the store says so.

The board is the real agent in this process (test_session_replies); a full filesystem is
`Disk`: the agent's file writes under its folder write what fits in the room left, then raise
ENOSPC, as MicroPython's FAT and littlefs writes do (tests/test_session_micropython.py runs the
same on MicroPython's own filesystems)."""
import errno
import io
import json
import os
import struct
import sys

import numpy as np
import pytest

from tinymp import tinymp_agent as A
from tinymp.session import dataset as D
from tinymp.session import commands as C
from tinymp.session import link
from tinymp.session import protocol as P
from tinymp.session.simboard import SimSensor

from test_session_replies import SCENE, Rig, check_folder, folder_state, one_line, open_fake

SAMPLE = 1024  # the demo model's input: 32 x 32 x 1 int8
REC = 8 + SAMPLE


@pytest.fixture
def rig(tmp_path, monkeypatch, capsys):
    return Rig(tmp_path, monkeypatch, capsys)


def flash(rig):
    return str(rig.where / "flash")


def store_path(rig):
    return os.path.join(flash(rig), "samples.bin")


def _used(root):
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(root) for n in ns)


class Disk:
    """The board's folder `root` as a filesystem with `room` bytes free: a write under it that
    would grow its files past that writes the bytes that fit, then raises ENOSPC. `cut(n)`: the
    next write writes n bytes at most, then raises ENOSPC, whatever the room."""

    def __init__(self, monkeypatch, root, room):
        self.root = root
        self.cap = _used(root) + room
        self.cut_at = None
        disk = self

        class File(io.FileIO):
            def write(self, b):
                b = bytes(b)
                size = os.fstat(self.fileno()).st_size
                pos = size if "a" in self.mode else self.tell()
                fits = max(0, disk.cap - _used(disk.root) + size - pos)
                if disk.cut_at is not None:
                    fits, disk.cut_at = min(fits, disk.cut_at), None
                if len(b) > fits:
                    if fits:
                        io.FileIO.write(self, b[:fits])
                    raise OSError(errno.ENOSPC, "No space left on device")
                return io.FileIO.write(self, b)

        real = open

        def fake_open(path, mode="r", *a, **kw):
            if "b" in mode and set(mode) & set("wa+") and \
                    os.path.abspath(path).startswith(os.path.abspath(root) + os.sep):
                return File(path, mode.replace("b", ""))
            return real(path, mode, *a, **kw)
        monkeypatch.setattr(A, "open", fake_open, raising=False)

    def room(self, n):
        self.cap = _used(self.root) + n

    def cut(self, n):
        self.cut_at = n


def records(path):
    """(header fields, [(id, label, sample bytes)] of the whole records, bytes of a torn tail)."""
    with open(path, "rb") as f:
        raw = f.read()
    head = struct.unpack_from("<4sIII", raw)
    body = raw[16:]
    n = len(body) // REC
    recs = []
    for k in range(n):
        sid, lab, _ = struct.unpack_from("<IHH", body, k * REC)
        recs.append((sid, lab, body[k * REC + 8:(k + 1) * REC]))
    return head, recs, len(body) - n * REC


def fresh_status(rig):
    """What a board that starts again reads from its store."""
    with open_fake(rig.where) as b:
        return b.request(P.SAMPLES_STATUS)


def the_dataset(rig):
    return D.Dataset.open(rig.session.dataset_dir)


def put(b, ds, first, n):
    return b.request(P.SAMPLES_PUT, {"dataset": ds.uid, "first": first,
                                     "labels": [int(v) for v in ds.labels[first:first + n]],
                                     "data": ds.samples(first, first + n).tobytes()})


def assert_board_holds_the_dataset(rig, ds, n):
    head, recs, _ = records(store_path(rig))
    assert head == (b"TMPS", 1, SAMPLE, ds.uid)
    assert len(recs) == n
    x, y = ds.samples(0, n), ds.labels[:n]
    for k, (sid, lab, data) in enumerate(recs):
        assert (sid, lab, data) == (k, int(y[k]), x[k].tobytes()), k


def collect_stopped_line(ds, held):
    """The PC's one line when a full board stored `held` of the dataset's 36 samples."""
    return (f"tinymp: sending samples stopped: no room left on the board's filesystem: sample "
            f"{held} was not stored; the board holds {held} samples (ids 0..{held - 1}); all 36 "
            f"samples are saved in {ds.path}; make room on the board's filesystem and run "
            f"collect again to send the rest")


def assert_holds_nothing(rig, b):
    """The board says it holds no samples, and no store file (nor a half-written one) is left."""
    st = b.request(P.SAMPLES_STATUS)
    assert (st["count"], st["last_id"], st["dataset"]) == (0, -1, 0)
    assert not [n for n in os.listdir(flash(rig)) if n.startswith("samples")]


# --- a batch of samples that does not fit -----------------------------------------------------

def test_a_batch_cut_short_by_no_room_keeps_the_whole_samples_and_says_how_many(rig, monkeypatch):
    ds = the_dataset(rig)
    with open_fake(rig.where) as b:
        assert put(b, ds, 0, 2)["count"] == 2
        disk = Disk(monkeypatch, flash(rig), 3 * REC + REC // 2)  # 3 1/2 records
        with pytest.raises(link.BoardError) as e:
            put(b, ds, 2, 8)
        assert e.value.code == "no_space", e.value
        assert e.value.msg == ("no room left on the board's filesystem: sample 5 was not "
                               "stored; the board holds 5 samples (ids 0..4)"), e.value.msg
        # the agent's count is the file's: what a board that starts again reads
        st = b.request(P.SAMPLES_STATUS)
        assert (st["count"], st["last_id"]) == (5, 4)
        assert fresh_status(rig) == st
        _, recs, torn = records(store_path(rig))
        assert len(recs) == 5 and torn == REC // 2  # the half record that fitted
        # room again: the PC sends from where the board stopped, over the torn record
        disk.room(10 * REC)
        assert put(b, ds, 5, 5) == {"count": 10, "last_id": 9}
    assert os.path.getsize(store_path(rig)) == 16 + 10 * REC
    assert_board_holds_the_dataset(rig, ds, 10)


def test_collect_on_a_full_board_is_one_line_and_keeps_everything(rig, monkeypatch):
    Disk(monkeypatch, flash(rig), 16 + 20 * REC + 300)
    before = folder_state(rig.session.dataset_dir)
    rc, out, err = rig.cli("collect", source=rig.held)
    line = one_line(err)
    assert rc == 1 and out == ""
    ds = the_dataset(rig)
    assert len(ds) == 36
    assert line == collect_stopped_line(ds, 20), line
    # the dataset's samples are there as they were, the new ones after them
    check_folder(rig.session.path)
    after = folder_state(rig.session.dataset_dir)
    for name, data in before.items():
        if "manifest" not in name:
            assert after[name][:len(data)] == data, name
    assert_board_holds_the_dataset(rig, ds, 20)
    st = fresh_status(rig)
    assert (st["count"], st["last_id"], st["dataset"]) == (20, 19, ds.uid)
    # with room, collect again sends the rest
    Disk(monkeypatch, flash(rig), 100 * REC)
    rc, out, err = rig.cli("collect", source=rig.held)
    assert rc == 0, err
    assert os.path.getsize(store_path(rig)) == 16 + 36 * REC
    assert_board_holds_the_dataset(rig, the_dataset(rig), 36)


def test_session_flow_on_a_full_board_is_one_line(rig, monkeypatch):
    from tinymp.session import run
    Disk(monkeypatch, flash(rig), 16 + 5 * REC)
    cfg = rig.tmp / "flow.json"
    cfg.write_text(json.dumps({"model": rig.model, "port": "sim", "session": rig.session.path,
                               "collect": [{"from": rig.held}], "train": {"steps": 3},
                               "plots": False}))
    rig.capsys.readouterr()
    rc = run.handle_errors(run.cmd_session, rig.args(config=str(cfg), m7=False))
    out, err = rig.capsys.readouterr()
    line = one_line(err.strip().splitlines())
    assert rc == 1 and out == ""
    ds = the_dataset(rig)
    assert len(ds) == 36
    assert line == collect_stopped_line(ds, 5), line
    assert_board_holds_the_dataset(rig, ds, 5)
    assert not os.path.exists(rig.session.runs_dir) or not os.listdir(rig.session.runs_dir)


def test_train_on_a_board_with_no_room_for_the_samples_is_one_line(rig, monkeypatch):
    # train sends the dataset's samples first: the board's refusal, in one line, nothing trained
    Disk(monkeypatch, flash(rig), 16 + 7 * REC)
    before = folder_state(rig.session.path)
    rc, out, err = rig.cli("train", steps=3)
    line = one_line(err)
    assert rc == 1 and out == ""
    assert line == ("tinymp: cannot train: no room left on the board's filesystem: sample 7 was "
                    "not stored; the board holds 7 samples (ids 0..6); the dataset's 12 samples "
                    f"are all kept in {rig.session.dataset_dir}; make room on the board's "
                    "filesystem and train again; the board keeps its last saved parameters"), line
    assert folder_state(rig.session.path) == before
    assert_board_holds_the_dataset(rig, the_dataset(rig), 7)
    assert not [n for n in os.listdir(flash(rig)) if n.startswith("params")]


def test_a_capture_the_board_has_no_room_for_is_kept_on_the_pc(rig, monkeypatch):
    monkeypatch.setitem(sys.modules, "sensor", SimSensor(SCENE, str(rig.where)))
    disk = Disk(monkeypatch, flash(rig), 16 + 14 * REC + 100)
    rc, out, err = rig.cli("collect", label=3, count=50)
    line = one_line(err)
    assert rc == 1
    ds = the_dataset(rig)
    # the dataset's 12 samples, 2 captures kept by the board, a third saved on the PC only
    assert len(ds) == 15
    assert line == ("tinymp: collect stopped: no room left on the board's filesystem: sample 14 "
                    "was not stored; the board holds 14 samples (ids 0..13); 3 new samples saved "
                    f"(15 in {ds.path}), none lost; make room on the board's filesystem and run "
                    "collect again to send the rest"), line
    assert_board_holds_the_dataset(rig, ds, 14)
    st = fresh_status(rig)
    assert (st["count"], st["last_id"]) == (14, 13)
    disk.room(100 * REC)
    rc, out, err = rig.cli("collect", label=3, count=int(ds.counts()[3]) + 2)
    assert rc == 0, err
    ds = the_dataset(rig)
    assert len(ds) == 17
    assert_board_holds_the_dataset(rig, ds, 17)



def test_a_capture_that_meets_a_full_board_while_sending_the_dataset_is_one_line(rig, monkeypatch):
    # capture first sends the dataset's samples the board lacks: no room there stops it the same
    monkeypatch.setitem(sys.modules, "sensor", SimSensor(SCENE, str(rig.where)))
    Disk(monkeypatch, flash(rig), 16 + 7 * REC)
    before = folder_state(rig.session.path)
    rc, out, err = rig.cli("collect", label=3, count=50)
    assert rc == 1 and one_line(err) == (
        "tinymp: collect stopped: no room left on the board's filesystem: sample 7 was not "
        f"stored; the board holds 7 samples (ids 0..6); 0 new samples saved (12 in "
        f"{rig.session.dataset_dir}), none lost; make room on the board's filesystem and run "
        "collect again to send the rest"), err
    assert folder_state(rig.session.path) == before
    assert_board_holds_the_dataset(rig, the_dataset(rig), 7)

# --- the room the board says it has (SAMPLES_STATUS, agent 9) ----------------------------------

def says_room(monkeypatch, disk):
    """The agent's statvfs reads the Disk's room (the host's own free bytes otherwise)."""
    monkeypatch.setattr(A, "_free_bytes", lambda path: disk.cap - _used(disk.root))


def test_samples_status_says_the_room_for_more_samples(rig, monkeypatch):
    ds = the_dataset(rig)
    with open_fake(rig.where) as b:
        put(b, ds, 0, 3)
        says_room(monkeypatch, Disk(monkeypatch, flash(rig), 5000))
        st = b.request(P.SAMPLES_STATUS)
    assert (st["free"], st["store_bytes"], st["record_extra"]) == (5000, 16 + 3 * REC, 8)
    assert os.path.getsize(store_path(rig)) == st["store_bytes"]


@pytest.mark.parametrize("stored, records", [(0, 20), (5, 20), (0, 10)])
def test_status_says_what_of_the_room_the_dataset_would_take(rig, monkeypatch, stored, records):
    # the session's dataset holds 12 samples; `stored` of them are on the board already: train
    # would send the rest first, out of the room status reports
    ds = the_dataset(rig)
    if stored:
        with open_fake(rig.where) as b:
            put(b, ds, 0, stored)
    says_room(monkeypatch, Disk(monkeypatch, flash(rig), records * REC))
    rc, out, err = rig.cli("status")
    assert rc == 0, err
    s = json.loads(out)["samples"]
    assert (s["room"], s["to_send"]) == (records, 12 - stored)
    rc, out, err = rig.cli("status", json=False)
    assert rc == 0, err
    line = [ln for ln in out.splitlines() if ln.startswith("samples")][0]
    # (a simulated board's filesystem is this PC's disk, here the test's Disk)
    room = f"the board's filesystem has room for about {records} samples (this PC's disk)"
    assert line.endswith(f"; {room}, {12 - stored} of them for the dataset's samples the next "
                         "collect or train sends first" if records >= 12 - stored else
                         f"; {room}: too few for the 12 dataset samples the next collect or "
                         "train sends first (make room on the board's filesystem)"), line


def test_a_capture_count_the_board_has_no_room_for_is_refused_up_front(rig, monkeypatch):
    monkeypatch.setitem(sys.modules, "sensor", SimSensor(SCENE, str(rig.where)))
    says_room(monkeypatch, Disk(monkeypatch, flash(rig), 20 * REC + 300))
    before = folder_state(rig.session.path)
    board_before = folder_state(flash(rig))
    ds = the_dataset(rig)
    need = 50 - int(ds.counts()[3])
    rc, out, err = rig.cli("collect", label=3, count=50)
    assert rc == 2 and out == ""
    # 12 dataset samples to send + `need` captures > 20 records' room
    assert one_line(err) == (
        f"tinymp: --count 50 needs {need} more samples of label 3 (and the 12 the board lacks "
        f"of the dataset) on the board, whose filesystem has room for about 20 "
        f"({20 * REC + 300:,} bytes free): give a smaller --count or make room on the board's "
        "filesystem; nothing was sent or captured"), err
    assert folder_state(rig.session.path) == before
    assert folder_state(flash(rig)) == board_before  # no store made, no sample sent


def test_a_config_capture_item_is_checked_whole_before_its_first_capture(rig, monkeypatch):
    # `tinymp session`'s collect item with several labels: the room for all its captures is
    # checked before the first, not label by label (which captured the first labels, then
    # stopped part way); a label given twice is counted once
    from tinymp.session import run
    from tinymp.session.simboard import SimSensor
    from test_session_replies import PROFILE
    monkeypatch.setitem(sys.modules, "sensor", SimSensor(SCENE, str(rig.where)))
    ds = the_dataset(rig)
    count = int(ds.counts()[1:4].max()) + 3
    need = sum(count - int(v) for v in ds.counts()[1:4])
    # room for the dataset's 12 and one label's captures, not the three labels'
    says_room(monkeypatch, Disk(monkeypatch, flash(rig), 16 + (12 + need - 2) * REC))
    cfg = rig.tmp / "c.json"
    cfg.write_text(json.dumps({"model": rig.model, "port": "sim", "board": PROFILE,
                               "session": rig.session.path, "plots": False,
                               "collect": [{"label": [1, 2, 1, 3], "count": count}],
                               "train": {"steps": 1}}))
    before = folder_state(rig.session.path)
    board_before = folder_state(flash(rig))
    rig.capsys.readouterr()
    rc = run.handle_errors(run.cmd_session, rig.args(config=str(cfg), m7=False, json=False))
    out, err = rig.capsys.readouterr()
    assert rc == 2, err
    assert one_line(err.strip().splitlines()) == (
        f"tinymp: the config's collect item (count {count}) needs {need} more samples of labels "
        f"1, 2, 3 (and the 12 the board lacks of the dataset) on the board, whose filesystem "
        f"has room for about {12 + need - 2} ({16 + (12 + need - 2) * REC:,} bytes free): give "
        "a smaller count or make room on the board's filesystem; nothing was sent or captured")
    assert the_dataset(rig).counts().tolist() == ds.counts().tolist()  # nothing captured
    assert folder_state(flash(rig)) == board_before
    assert {k: v for k, v in folder_state(rig.session.path).items() if k in before} == before


def test_a_capture_count_that_just_fits_is_taken(rig, monkeypatch):
    monkeypatch.setitem(sys.modules, "sensor", SimSensor(SCENE, str(rig.where)))
    ds = the_dataset(rig)
    count = int(ds.counts()[3]) + 4
    # the store's header, the 12 samples to send and the 4 captures: exactly that room
    says_room(monkeypatch, Disk(monkeypatch, flash(rig), 16 + 16 * REC))
    rc, out, err = rig.cli("collect", label=3, count=count)
    assert rc == 0, err
    assert_board_holds_the_dataset(rig, the_dataset(rig), 16)


@pytest.mark.parametrize("cmd", ["collect", "train"])
def test_samples_the_board_has_no_room_for_are_not_sent(rig, monkeypatch, cmd):
    says_room(monkeypatch, Disk(monkeypatch, flash(rig), 10 * REC))
    before = folder_state(flash(rig))
    if cmd == "collect":
        rc, out, err = rig.cli("collect", source=rig.held)  # 36 samples in all
        n, tail = 36, (f"all 36 samples are saved in {rig.session.dataset_dir}; make room on the "
                       "board's filesystem and run collect again to send the rest")
        head = "tinymp: sending samples stopped"
    else:
        rc, out, err = rig.cli("train", steps=3)
        n, tail = 12, (f"the dataset's 12 samples are all kept in {rig.session.dataset_dir}; "
                       "make room on the board's filesystem and train again; the board keeps "
                       "its last saved parameters")
        head = "tinymp: cannot train"
    assert rc == 1 and out == ""
    assert one_line(err) == (f"{head}: the board's filesystem has room for about 10 more "
                             f"samples ({10 * REC:,} bytes free), not the {n} to send; nothing "
                             f"was sent; {tail}"), err
    assert folder_state(flash(rig)) == before


@pytest.mark.parametrize("free_records, fits", [(8, True), (1, False)])
def test_the_store_of_other_samples_counts_as_room(rig, monkeypatch, free_records, fits):
    ds = the_dataset(rig)
    with open_fake(rig.where) as b:  # 10 samples of another dataset on the board
        b.request(P.SAMPLES_PUT, {"dataset": ds.uid + 1, "first": 0, "labels": [1] * 10,
                                  "data": bytes(10 * SAMPLE)})
    # the free records, and 10 more once that store goes: room for the dataset's 12 or not
    says_room(monkeypatch, Disk(monkeypatch, flash(rig), free_records * REC + 100))
    with open_fake(rig.where) as b:
        assert C.room_for(b.request(P.SAMPLES_STATUS), SAMPLE, again=True)[0] == free_records + 10
    two = str(rig.tmp / "two.npz")  # two new samples: 14 to send
    with np.load(rig.held) as f:
        np.savez(two, x=f["x"][:2], y=f["y"][:2])
    rc, out, err = rig.cli("collect", source=two)
    if fits:
        assert rc == 0, err
        assert_board_holds_the_dataset(rig, the_dataset(rig), 14)
    else:
        assert rc == 1 and (f"room for about 11 more samples ({REC + 100:,} bytes free and "
                            f"{16 + 10 * REC:,} once the board's samples of another dataset go)"
                            ) in one_line(err), err
        st = fresh_status(rig)
        assert (st["dataset"], st["count"]) == (ds.uid + 1, 10)  # the old store is as it was


# --- a record torn by a reset -------------------------------------------------------------------

@pytest.mark.parametrize("torn", [3, 8, 600, REC - 1])
def test_a_torn_record_is_not_counted_and_is_written_over_in_place(rig, monkeypatch, torn):
    ds = the_dataset(rig)
    with open_fake(rig.where) as b:
        put(b, ds, 0, 6)
    # a reset while sample 6 was written: part of its record is in the file
    with open(store_path(rig), "ab") as f:
        f.write(struct.pack("<IHH", 6, int(ds.labels[6]), 0)[:torn] + b"\x55" * max(0, torn - 8))
    # room for that record and a little, not for a copy of the store
    Disk(monkeypatch, flash(rig), REC - torn + 64)
    with open_fake(rig.where) as b:
        st = b.request(P.SAMPLES_STATUS)
        assert (st["count"], st["last_id"]) == (6, 5) and b.info["samples"]["count"] == 6
        assert put(b, ds, 6, 1) == {"count": 7, "last_id": 6}
    assert os.path.getsize(store_path(rig)) == 16 + 7 * REC
    assert_board_holds_the_dataset(rig, ds, 7)
    assert not [n for n in os.listdir(flash(rig)) if n.endswith(".tmp")]


def test_training_reads_only_the_whole_records(rig):
    ds = the_dataset(rig)
    with open_fake(rig.where) as b:
        put(b, ds, 0, 12)
    with open(store_path(rig), "ab") as f:
        f.write(b"\x07" * 500)  # a torn thirteenth record
    rc, out, err = rig.cli("train", steps=24)
    assert rc == 0, err
    (name,) = os.listdir(rig.session.runs_dir)
    with open(os.path.join(rig.session.runs_dir, name)) as f:
        rec = json.load(f)
    col = rec["fields"].index("sample")
    assert rec["start"]["samples"] == 12
    assert sorted(e[col] for e in rec["events"]) == sorted(list(range(12)) * 2)
    head, recs, torn = records(store_path(rig))
    assert len(recs) == 12 and torn == 500  # training writes nothing to the store


# --- a new store, and a clear ---------------------------------------------------------------------

def test_a_new_store_with_no_room_leaves_no_file(rig, monkeypatch):
    ds = the_dataset(rig)
    Disk(monkeypatch, flash(rig), 0)
    with open_fake(rig.where) as b:
        with pytest.raises(link.BoardError) as e:
            put(b, ds, 0, 2)
        assert e.value.code == "no_space"
        assert e.value.msg == ("no room left on the board's filesystem: the new sample store "
                               "was not written; the board holds 0 samples"), e.value.msg
        assert_holds_nothing(rig, b)


def test_a_new_store_cut_short_keeps_the_old_one(rig, monkeypatch):
    ds = the_dataset(rig)
    with open_fake(rig.where) as b:
        put(b, ds, 0, 4)
    with open(store_path(rig), "rb") as f:
        old = f.read()
    disk = Disk(monkeypatch, flash(rig), 10 * REC)
    with open_fake(rig.where) as b:
        disk.cut(8)  # the new store's header is cut short
        with pytest.raises(link.BoardError) as e:
            b.request(P.SAMPLES_PUT, {"dataset": ds.uid + 1, "first": 0,
                                      "labels": [1], "data": bytes(SAMPLE)})
        assert e.value.code == "no_space" and "the new sample store was not written; the " \
            "board holds 4 samples (ids 0..3)" in e.value.msg, e.value.msg
        st = b.request(P.SAMPLES_STATUS)
        assert (st["count"], st["last_id"], st["dataset"]) == (4, 3, ds.uid)
        # and the old store takes more of its samples
        assert put(b, ds, 4, 1) == {"count": 5, "last_id": 4}
    with open(store_path(rig), "rb") as f:
        assert f.read()[:len(old)] == old
    assert fresh_status(rig)["count"] == 5
    assert not [n for n in os.listdir(flash(rig)) if n.endswith(".tmp")]


def test_a_new_store_renamed_halfway_is_finished_at_the_next_start(rig):
    ds = the_dataset(rig)
    with open_fake(rig.where) as b:
        put(b, ds, 0, 3)
    # FAT: a store written whole as samples.bin.tmp, the old samples.bin removed, then a reset
    # before the rename
    os.rename(store_path(rig), store_path(rig) + ".tmp")
    st = fresh_status(rig)
    assert (st["count"], st["last_id"], st["dataset"]) == (3, 2, ds.uid)
    assert_board_holds_the_dataset(rig, ds, 3)
    # one cut short beside the store it was to replace: the store stays, the rest goes
    with open(store_path(rig) + ".tmp", "wb") as f:
        f.write(b"TMPS\x01\x00")
    st = fresh_status(rig)
    assert (st["count"], st["last_id"], st["dataset"]) == (3, 2, ds.uid)
    assert not os.path.exists(store_path(rig) + ".tmp")


def test_a_clear_that_cannot_remove_the_store_says_so(rig, monkeypatch):
    ds = the_dataset(rig)
    with open_fake(rig.where) as b:
        put(b, ds, 0, 4)
        real = os.remove

        def remove(path, *a, **kw):
            if os.path.basename(str(path)) == "samples.bin":
                raise OSError(errno.ENOSPC, "No space left on device")  # a full littlefs
            return real(path, *a, **kw)
        monkeypatch.setattr(os, "remove", remove)
        with pytest.raises(link.BoardError) as e:
            b.request(P.SAMPLES_CLEAR)
        assert e.value.code == "storage" and e.value.msg == (
            "the samples could not be removed: no room left on the board's filesystem; the "
            "board holds 4 samples (ids 0..3)"), e.value.msg
        st = b.request(P.SAMPLES_STATUS)
        assert (st["count"], st["last_id"]) == (4, 3)
        monkeypatch.setattr(os, "remove", real)
        # a new store whose write failed and whose clean-up failed too is not taken for the store
        with open(store_path(rig) + ".tmp", "wb") as f:
            f.write(b"TMPS" + struct.pack("<III", 1, SAMPLE, ds.uid + 1))
        assert b.request(P.SAMPLES_CLEAR) == {"count": 0}
        assert_holds_nothing(rig, b)


def test_a_full_board_clears_its_store(rig, monkeypatch):
    ds = the_dataset(rig)
    with open_fake(rig.where) as b:
        put(b, ds, 0, 4)
    Disk(monkeypatch, flash(rig), 0)
    with open_fake(rig.where) as b:
        # a filesystem with no room is a writable one, not "no writable filesystem"
        assert b.info["storage"] is True
        assert b.request(P.SAMPLES_CLEAR) == {"count": 0}
        assert b.request(P.SAMPLES_STATUS)["count"] == 0
        # the room the store had holds a new one
        assert put(b, ds, 0, 4) == {"count": 4, "last_id": 3}
    assert_board_holds_the_dataset(rig, ds, 4)


def test_a_capture_count_already_met_is_not_blamed_when_the_dataset_does_not_fit(rig, monkeypatch):
    # label 3's count is met: no capture to make smaller, the dataset's own samples do not fit
    monkeypatch.setitem(sys.modules, "sensor", SimSensor(SCENE, str(rig.where)))
    says_room(monkeypatch, Disk(monkeypatch, flash(rig), 5 * REC))
    have = int(the_dataset(rig).counts()[3])
    rc, out, err = rig.cli("collect", label=3, count=have)
    assert rc == 1
    line = one_line(err)
    assert line.startswith("tinymp: collect stopped: the board's filesystem has room for about 5 "
                           "more samples") and "--count" not in line, line


def test_an_agent_that_does_not_say_its_room_is_not_refused(rig, monkeypatch):
    # an agent before 9 sends no free/record_extra: nothing is refused up front, and the board's
    # own no_space still stops a send that does not fit
    def older(req_type, req, rep):
        if req_type in (P.SAMPLES_STATUS, P.INFO):
            s = rep if req_type == P.SAMPLES_STATUS else rep.get("samples")
            for k in ("free", "store_bytes", "record_extra"):
                s.pop(k, None)
        return rep
    rig.tamper = older
    says_room(monkeypatch, Disk(monkeypatch, flash(rig), 16 + 7 * REC))  # agent 9 would refuse
    rc, out, err = rig.cli("train", steps=3)
    assert rc == 1 and "sample 7 was not stored" in one_line(err), err
