"""The session agent's ROMFS commit: a pushed model is written into the board's ROMFS segment and
used in place from it (docs/SESSION.md).

The ROMFS writes run against simromfs.Stm32Romfs, a stand-in for the stm32 port's
`vfs.rom_ioctl` written from MicroPython's source (no board here). Independent checks: the image
against mpremote's own ROMFS builder, a parser written here from the format description in
MicroPython's extmod/vfs_rom.c, MicroPython's real `vfs.VfsRom` on the unix port (when
build/unix/micropython is built), the SHA-256 of the bytes each model was loaded from, and what
the engine computes when the flash under a loaded model changes.
"""
import hashlib
import json
import os
import struct
import subprocess
import tty

import numpy as np
import pytest

import tinymp
from tinymp import boards, zoo
from tinymp import tinymp_agent as A
from tinymp import tinymp_romfs as R
from tinymp.session import commands as C
from tinymp.session import link, run
from tinymp.session import protocol as P
from tinymp.session.simromfs import BoardReset, Stm32Romfs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT_DIR = os.path.join(ROOT, "host", "tinymp")
SESSION_DIR = os.path.join(AGENT_DIR, "session")
MICROPYTHON = os.environ.get("TINYMP_MICROPYTHON",
                             os.path.join(ROOT, "build", "unix", "micropython"))
SCENE = os.path.join(AGENT_DIR, "models", "digits_shifted.npz")

DEMO = zoo.demo()                                                     # 16,816 bytes
BIG = zoo.mobilenetv2(width=0.35, resolution=32, num_classes=10)      # 512,880 bytes
ODD = DEMO + b"\x00"  # a different model of odd length (the engine ignores trailing bytes)
KB = 1024


def sha(b):
    return hashlib.sha256(bytes(b)).hexdigest()


# --- an independent reader of ROMFS images ---------------------------------------------------

def parse_romfs(img):
    """{path: (offset, size)} of the files of a ROMFS image, by the format description at the top
    of MicroPython's extmod/vfs_rom.c: varuints, records (kind, length, payload), the filesystem
    record 0x14a6b1, directories (4), files (5) whose data is verbatim (2) or a pointer (3:
    size, offset from the start of the filesystem's payload); other kinds are skipped."""
    img = bytes(img)

    def uint(pos, end):
        v = 0
        while True:
            assert pos < end, "varuint past its record"
            b = img[pos]
            pos += 1
            v = (v << 7) | (b & 0x7F)
            if b < 0x80:
                return v, pos

    def record(pos, end):
        kind, pos = uint(pos, end)
        n, pos = uint(pos, end)
        assert kind != 0 and pos + n <= end, "damaged record"
        return kind, pos, pos + n

    kind, base, end = record(0, len(img))
    assert kind == 0x14A6B1 and end % 2 == 0  # an image has even length
    files = {}

    def data(pos, end):
        while pos < end:
            kind, p, nxt = record(pos, end)
            if kind == 2:
                return p, nxt - p
            if kind == 3:
                size, p = uint(p, nxt)
                off, p = uint(p, nxt)
                assert base + off + size <= len(img)
                return base + off, size
            pos = nxt
        raise AssertionError("a file without data")

    def walk(pos, end, prefix):
        while pos < end:
            kind, p, nxt = record(pos, end)
            if kind in (4, 5):
                n, p = uint(p, nxt)
                name = img[p:p + n].decode()
                if kind == 4:
                    walk(p + n, nxt, prefix + name + "/")
                else:
                    files[prefix + name] = data(p + n, nxt)
            pos = nxt

    walk(base, end, "/")
    return files


def agent_image(model):
    return R.head(len(model)) + model + b"\xff" * (len(model) & 1)


def mpremote_image(model, at=R.AT):
    """The same one-file image built with mpremote's VfsRomWriter (its padding record through
    the writer's own record packer), or None when no padding gives that layout."""
    from mpremote.romfs import VfsRomWriter
    pad = b"\xff" * (len(model) & 1)
    for lw in range(1, 5):
        off = at - 3 - lw
        for n in range(at):
            w = VfsRomWriter()
            w.opendir("tinymp")
            w.mkfile("model.tmpm", (len(model), off))
            w.closedir()
            w._extend(w._pack(w.ROMFS_RECORD_KIND_PADDING, b"\xff" * n))
            got = w.mkdata(model + pad)
            img = w.finalise()
            if got == off and img[at:at + len(model)] == model:
                return img
    return None


SIZES = [1, 2, 3, 67, 68, 127, 128, 4095, 16816, 16817, 16383, 16384, 16385, 100001, 512880,
         786368]


@pytest.mark.parametrize("size", SIZES)
def test_image_layout_read_independently(size):
    model = bytes((i * 7 + 3) & 0xFF for i in range(size))
    img = agent_image(model)
    assert len(img) == R.image_bytes(size) == R.AT + size + (size & 1)
    files = parse_romfs(img)
    assert files == {"/tinymp/model.tmpm": (R.AT, size)}
    assert img[R.AT:R.AT + size] == model
    assert R.names(img) == [b"tinymp"] and R.names(b"\xff" * 64) is None
    assert R.names(b"\xd2\xcd\x31\x00") == []


@pytest.mark.parametrize("size", SIZES)
def test_image_equals_mpremotes(size):
    from mpremote.romfs import VfsRomWriter
    if not hasattr(VfsRomWriter, "_pack") or not hasattr(VfsRomWriter, "_extend"):
        pytest.skip("this mpremote's VfsRomWriter has no _pack/_extend to add a padding record")
    model = bytes((i * 7 + 3) & 0xFF for i in range(size))
    assert mpremote_image(model) == agent_image(model)
    if size in (67, 68):
        # the filesystem's length widened to two bytes (0x80 0x7f) puts the data at 64; mpremote
        # widens it the same way to make the image's length even
        assert agent_image(model)[3:5] == b"\x80\x7f"


def test_head_needs_room():
    with pytest.raises(ValueError):
        R.head(1000, at=32)


def _has_micropython():
    return os.path.isfile(MICROPYTHON) and subprocess.run(
        [MICROPYTHON, "-c", "import vfs, tinymp; vfs.VfsRom"], capture_output=True,
        timeout=30).returncode == 0


needs_mp = pytest.mark.skipif(not _has_micropython(), reason="needs build/unix/micropython with "
                              "tinymp and vfs.VfsRom (make firmware BOARD=UNIX MICROPY_DIR=...)")


@needs_mp
def test_images_mount_with_micropythons_vfsrom(tmp_path):
    paths, want = [], []
    for model in (DEMO[:1], DEMO[:67], ODD, DEMO):  # 67: a widened varuint in the head
        p = tmp_path / f"img{len(model)}.romfs"
        p.write_bytes(agent_image(model))
        paths.append(str(p))
        want.append([["tinymp"], ["model.tmpm"], len(model), sha(model), R.AT])
    code = """
import os, vfs, hashlib, binascii, uctypes
out = []
for p in %r:
    with open(p, 'rb') as f:
        img = bytearray(f.read())
    vfs.mount(vfs.VfsRom(img), '/r')
    with open('/r/tinymp/model.tmpm', 'rb') as f:
        mv = memoryview(f)  # a ROMFS file's bytes, in place in the image
        data = f.read()
        where = uctypes.addressof(mv) - uctypes.addressof(img)
    out.append([os.listdir('/r'), os.listdir('/r/tinymp'), len(data),
                binascii.hexlify(hashlib.sha256(data).digest()).decode(), where])
    vfs.umount('/r')
print(repr(out))
""" % (paths,)
    r = subprocess.run([MICROPYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert eval(r.stdout.strip()) == want


# --- the agent in this process, with the stand-in flash ---------------------------------------

class EngineSpy:
    """tinymp, recording for every Model() what it was given (a path or a buffer) and the SHA-256
    of those bytes."""

    def __init__(self):
        self.loads = []

    def __getattr__(self, name):
        return getattr(tinymp, name)

    def Model(self, src):
        if isinstance(src, str):
            with open(src, "rb") as f:
                self.loads.append(("path", sha(f.read())))
        else:
            self.loads.append(("buffer", sha(src)))
        return tinymp.Model(src)


class Board:
    """An agent over a folder (its filesystem) and a flash segment that outlive it."""

    def __init__(self, tmp_path, segment=768 * KB, romfs=True, writable=True):
        self.root = str(tmp_path / "flash")
        self.flash = bytearray(b"\xff" * segment) if romfs else None
        self.writable = writable
        self.rom = None
        self.agent = None

    def start(self, crash=None):
        """A (re)started board: a new agent over the same files and flash."""
        cfg = {"name": "test board", "arena_budget": 4 << 20}
        if self.flash is not None:
            self.rom = Stm32Romfs(self.flash, writable=self.writable, crash=crash)
            cfg["rom_ioctl"] = self.rom.rom_ioctl
            cfg["romfs"] = True
        self.agent = A.Agent(self.root, cfg)
        self.agent.tinymp = self.spy = EngineSpy()
        return self.agent

    def push(self, data, chunk=4000):
        a = self.agent
        h = sha(data)
        off = a.do_push_begin({"size": len(data), "sha256": h})["offset"]
        while off < len(data):
            off = a.do_push_data({"offset": off, "data": data[off:off + chunk]})["offset"]
        return a.do_push_commit({})

    def info(self):
        return self.agent.do_info(None)

    def loaded(self):
        """(path|buffer, SHA-256) of the bytes the board's model was last loaded from."""
        self.agent._load_model()
        return self.spy.loads[-1]

    def record(self):
        with open(os.path.join(self.root, "romfs.rec")) as f:
            return f.read().split()


def arrays_region(model):
    """[start, end) of the model's arrays (weights, biases, requantisation), after its tables."""
    num_layers, = struct.unpack_from("<H", model, 34)
    layer_table, = struct.unpack_from("<I", model, 40)
    total, = struct.unpack_from("<I", model, 8)
    return layer_table + 64 * num_layers, total


def test_push_commits_to_romfs_and_the_model_is_used_in_place(tmp_path):
    b = Board(tmp_path)
    b.start()
    rep = b.push(DEMO)
    r = rep["romfs"]
    assert rep["sha256"] == sha(DEMO)
    assert r["present"] and r["written"] and r["in_place"] and r["warning"] is None
    assert r["image_bytes"] == R.AT + len(DEMO) and r["segment_bytes"] == 768 * KB
    # the flash holds the image: one file, the model, 64 bytes in
    assert parse_romfs(b.flash) == {"/tinymp/model.tmpm": (64, len(DEMO))}
    assert bytes(b.flash[64:64 + len(DEMO)]) == DEMO
    i = b.info()
    assert i["romfs"] is True and i["model"]["served_from"] == "romfs"
    assert i["romfs_state"] == {"segment": 0, "bytes": 768 * KB, "serving": True, "note": None,
                                "state": "model", "retry": False}
    assert b.loaded() == ("buffer", sha(DEMO))
    assert b.record() == ["ok", "0", sha(DEMO), str(len(DEMO)), "64"]
    # the filesystem copy stays: the fallback
    with open(os.path.join(b.root, "model.tmpm"), "rb") as f:
        assert f.read() == DEMO
    # in place: the engine reads the flash (zero the arrays there: the logits change, or the
    # engine notices that its model's bytes changed; a copy would notice nothing)
    m = b.agent._load_model()
    x = bytes(range(256)) * 4
    before = list(m.logits(x))
    lo, hi = arrays_region(DEMO)
    b.flash[64 + lo:64 + hi] = bytes(hi - lo)
    try:
        changed = list(m.logits(x)) != before
    except ValueError as e:
        changed = "changed after loading" in str(e)
    assert changed
    b.flash[64 + lo:64 + hi] = DEMO[lo:hi]
    assert list(m.logits(x)) == before == list(tinymp.Model(DEMO).logits(x))
    # how the flash was written: one erase, aligned writes of at most 2 KB, the head last
    log = b.rom.log
    assert log[0] == (3, 0, 128 * KB) and log[-2:] == [(4, 32, 32), (4, 0, 32)]
    assert all(op == 4 and off % 32 == 0 and n <= 2048 for op, off, n in log[1:])


def test_a_restarted_board_serves_from_romfs_after_checking_it(tmp_path):
    b = Board(tmp_path)
    b.start()
    b.push(DEMO)
    b.start()
    assert b.loaded() == ("buffer", sha(DEMO))
    assert b.info()["model"]["served_from"] == "romfs"
    # ROMFS changed behind the agent's back (a byte of the model): the filesystem serves
    b.flash[64 + 100] ^= 0xFF
    b.start()
    assert b.loaded() == ("path", sha(DEMO))
    assert b.info()["romfs_state"]["state"] == "stale" and b.info()["romfs_state"]["retry"]
    # PUSH_ROMFS writes it again
    r = b.agent.do_push_romfs(None)
    assert r["written"] and r["in_place"]
    assert b.loaded() == ("buffer", sha(DEMO))


def test_a_second_model_replaces_the_first_and_the_same_one_is_not_rewritten(tmp_path):
    b = Board(tmp_path)
    b.start()
    b.push(DEMO)
    r = b.push(BIG)["romfs"]
    assert r["written"] and r["image_bytes"] == 64 + len(BIG)
    assert b.loaded() == ("buffer", sha(BIG))
    assert parse_romfs(b.flash) == {"/tinymp/model.tmpm": (64, len(BIG))}
    # a model of odd length: one pad byte after it
    b.push(ODD)
    assert b.loaded() == ("buffer", sha(ODD)) and b.flash[64 + len(ODD)] == 0xFF
    assert parse_romfs(b.flash) == {"/tinymp/model.tmpm": (64, len(ODD))}
    # committing the model ROMFS already holds writes no flash
    n = len(b.rom.log)
    r = b.push(ODD)["romfs"]
    assert r["in_place"] and not r["written"] and len(b.rom.log) == n


# every stage of the ROMFS write: (rom_ioctl op, its n-th call, how), op 3 erase, 4 program,
# 5 complete. Pushing BIG over DEMO: 1 erase (4 sectors), 251 data writes, then the head in two
# writes (bytes 32-63, then 0-31 with the magic).
DATA_WRITES = -(-len(BIG) // 2048)
STAGES = {
    "marked, before the erase": (3, 1, "before"),
    "mid-erase": (3, 1, "torn"),
    "after the erase": (3, 1, "after"),
    "before the first write": (4, 1, "before"),
    "mid-write (torn)": (4, DATA_WRITES // 2, "torn"),
    "after the last data write": (4, DATA_WRITES, "after"),
    "mid-head, before the magic": (4, DATA_WRITES + 1, "after"),
    "writing the magic (torn)": (4, DATA_WRITES + 2, "torn"),
    "after the head, before the record": (5, 1, "before"),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_reset_during_the_romfs_write_leaves_the_committed_model(tmp_path, stage):
    b = Board(tmp_path)
    b.start()
    b.push(DEMO)
    b.start(crash=STAGES[stage])
    with pytest.raises(BoardReset):
        b.push(BIG)
    b.start()  # after the reset: the filesystem's new model, never a half-written image
    i = b.info()
    assert i["model"]["sha256"] == sha(BIG) and i["model"]["served_from"] == "filesystem"
    assert b.loaded() == ("path", sha(BIG))
    assert i["romfs_state"]["state"] == "interrupted" and i["romfs_state"]["retry"]
    assert b.record() == ["writing", "0", sha(BIG)]
    # the flash holds no image, the old one (reset before the erase) or the whole new one (reset
    # before the record): never a damaged one, which MicroPython would mount at /rom
    names = R.names(b.flash)
    assert names == ([b"tinymp"] if stage.startswith(("marked", "after the head")) else None)
    # push again (PUSH_ROMFS) finishes it
    r = b.agent.do_push_romfs(None)
    assert r["written"] and r["in_place"]
    assert b.loaded() == ("buffer", sha(BIG))
    b.start()
    assert b.loaded() == ("buffer", sha(BIG))


def test_a_reset_between_the_commit_and_the_romfs_write_never_serves_the_old_model(tmp_path,
                                                                                  monkeypatch):
    b = Board(tmp_path)
    b.start()
    b.push(DEMO)

    def reset(*a):
        raise BoardReset("reset right after the filesystem commit")
    monkeypatch.setattr(A.Agent, "_romfs_commit", reset)
    b.start()
    with pytest.raises(BoardReset):
        b.push(BIG)
    monkeypatch.undo()
    b.start()
    # ROMFS still holds DEMO, read back fine, and its record says so: BIG is the committed model
    assert b.record()[:3] == ["ok", "0", sha(DEMO)] and R.names(b.flash) == [b"tinymp"]
    assert b.loaded() == ("path", sha(BIG))
    assert b.info()["romfs_state"]["state"] == "stale"


def test_a_model_too_big_for_the_segment_stays_on_the_filesystem(tmp_path):
    b = Board(tmp_path, segment=16 * KB)
    b.start()
    rep = b.push(DEMO)
    r = rep["romfs"]
    assert rep["sha256"] == sha(DEMO) and not r["written"] and not r["in_place"]
    assert r["state"] == "too_big"
    assert r["warning"] == ("the model's ROMFS image (16880 bytes) does not fit the 16384-byte "
                            "ROMFS segment")
    assert b.loaded() == ("path", sha(DEMO))
    st = b.info()["romfs_state"]
    assert st["state"] == "too_big" and not st["retry"] and not st["serving"]
    assert b.rom.log == [] and b.flash == b"\xff" * (16 * KB)


def test_a_board_without_romfs_behaves_as_before(tmp_path):
    b = Board(tmp_path, romfs=False)
    b.start()
    rep = b.push(DEMO)
    assert rep["romfs"]["present"] is False and rep["romfs"]["state"] == "absent"
    i = b.info()
    assert i["romfs"] is False and i["romfs_state"] is None
    assert i["model"]["served_from"] == "filesystem"
    assert b.loaded() == ("path", sha(DEMO))
    assert sorted(os.listdir(b.root)) == ["model.tmpm"]


def test_romfs_holding_other_files_is_left_alone(tmp_path):
    from mpremote.romfs import VfsRomWriter
    w = VfsRomWriter()
    w.opendir("lib")
    w.mkfile("mine.py", b"print('mine')\n")
    w.closedir()
    img = w.finalise()
    b = Board(tmp_path, segment=128 * KB)
    b.flash[:len(img)] = img
    b.start()
    r = b.push(DEMO)["romfs"]
    assert r["state"] == "foreign" and "holds other files (lib)" in r["warning"]
    assert bytes(b.flash[:len(img)]) == img and b.rom.log == []
    assert b.loaded() == ("path", sha(DEMO))
    assert b.info()["romfs_state"]["state"] == "foreign"
    assert not os.path.exists(os.path.join(b.root, "romfs.rec"))


def test_an_empty_romfs_is_written(tmp_path):
    b = Board(tmp_path, segment=128 * KB)
    b.flash[:4] = b"\xd2\xcd\x31\x00"  # what `mpremote romfs deploy` of an empty folder leaves
    b.start()
    assert b.push(DEMO)["romfs"]["in_place"]


def test_a_port_that_cannot_write_romfs(tmp_path):
    b = Board(tmp_path, segment=128 * KB, writable=False)
    b.start()
    r = b.push(DEMO)["romfs"]
    assert r["state"] == "unwritable" and "WRITE_PREPARE: EINVAL" in r["warning"]
    assert not os.path.exists(os.path.join(b.root, "romfs.rec"))  # marked, then put back
    assert b.loaded() == ("path", sha(DEMO))
    assert not b.info()["romfs_state"]["retry"]


def test_a_flash_error_mid_write_is_a_warning(tmp_path):
    b = Board(tmp_path)
    b.start()
    b.push(DEMO)
    b.start()
    real = b.rom._write
    calls = []

    def failing(offset, buf):
        calls.append(offset)
        return -5 if len(calls) == 3 else real(offset, buf)
    b.rom._write = failing
    r = b.push(BIG)["romfs"]
    assert r["state"] == "failed" and r["warning"] == "the ROMFS write failed: OSError: 5"
    assert b.loaded() == ("path", sha(BIG))
    assert b.info()["romfs_state"]["state"] == "interrupted"
    b.rom._write = real
    assert b.agent.do_push_romfs(None)["in_place"]
    assert b.loaded() == ("buffer", sha(BIG))


def test_a_model_larger_than_the_free_filesystem_is_refused(tmp_path, monkeypatch):
    b = Board(tmp_path)
    b.start()
    monkeypatch.setattr(A, "_free_bytes", lambda path: 10000)
    with pytest.raises(A.Fail) as e:
        b.push(DEMO)
    assert e.value.args[0] == "no_space" and "16816 bytes" in e.value.args[1]
    monkeypatch.undo()
    assert b.push(DEMO)["romfs"]["in_place"]


def test_the_fake_follows_the_stm32_port():
    """The stand-in's answers as ports/stm32/vfs_rom_ioctl.c and flash.c give them."""
    mem = bytearray(b"\x00" * (256 * KB))
    f = Stm32Romfs(mem)
    assert f.rom_ioctl(1) == 1 and f.rom_ioctl(2, 1) == -22 and f.rom_ioctl(2) == -22
    assert len(f.rom_ioctl(2, 0)) == 256 * KB
    assert f.rom_ioctl(3, 0, 256 * KB + 1) == -22
    assert f.rom_ioctl(3, 0, 1) == 16 and mem[:128 * KB] == b"\xff" * (128 * KB)
    assert mem[128 * KB] == 0  # whole sectors, only those holding the range
    assert f.rom_ioctl(4, 0, 16, b"x" * 32) == -5  # not on a 32-byte flash word
    assert f.rom_ioctl(4, 0, 0, b"abcdefg") == 0  # 7 bytes: one word written, the rest 0xff
    assert mem[:32] == b"abcd" + b"\xff" * 28
    assert f.rom_ioctl(4, 0, 0, b"z" * 32) == -5  # the word is programmed already
    assert f.rom_ioctl(4, 0, 256 * KB - 16, b"z" * 32) == -22  # past the segment
    assert f.rom_ioctl(5, 0) == -22  # no WRITE_COMPLETE on stm32
    assert f.rom_ioctl(6, 0) == -22


# --- the simulated board (a process on a pty) ------------------------------------------------

@pytest.fixture
def sess(tmp_path):
    return C.Session(str(tmp_path / "session"))


def open_sim(sess, profile="NUCLEO_H743ZI2", **kw):
    return link.open_board("sim:" + profile, sim_dir=sess.sim_dir(profile), scene=SCENE, **kw)


def sim_image(sess, profile="NUCLEO_H743ZI2"):
    with open(os.path.join(sess.sim_dir(profile), "romfs0.bin"), "rb") as f:
        return f.read()


def test_simulated_board_commits_to_its_romfs(sess, capsys):
    with open_sim(sess) as b:
        st = b.info["romfs_state"]
        assert b.info["romfs"] and st["bytes"] == boards.load("NUCLEO_H743ZI2")["romfs_bytes"]
        assert st["state"] == "empty" and not st["retry"]  # no model yet
        res = C.push(b, DEMO, show=False)
        assert res["romfs"]["in_place"] and C.romfs_text(res["romfs"]) == \
            "committed to ROMFS (in place)"
        assert b.info["model"]["served_from"] == "romfs"
    img = sim_image(sess)
    assert len(img) == 768 * KB and parse_romfs(img) == {"/tinymp/model.tmpm": (64, len(DEMO))}
    assert sha(img[64:64 + len(DEMO)]) == sha(DEMO)
    with open_sim(sess) as b:  # a new process: the flash (a mapped file) kept the image
        assert b.info["model"]["served_from"] == "romfs"
        res = C.push(b, DEMO, show=False)
        assert res["skipped"] and res["romfs"]["in_place"]
    # the CLI says where the model went
    args = _args(sess, model=_model_file(sess, BIG))
    assert run.handle_errors(run.cmd_push, args) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith("committed to ROMFS (in place)"), out


def _args(sess, profile="NUCLEO_H743ZI2", **kw):
    import argparse
    d = dict(port="sim", board=profile, session=sess.path, timeout=None, json=False, quiet=True,
             scene=SCENE)
    d.update(kw)
    return argparse.Namespace(**d)


def _model_file(sess, data, name="m.tmpm"):
    p = os.path.join(os.path.dirname(sess.path), name)
    with open(p, "wb") as f:
        f.write(data)
    return p


@pytest.mark.parametrize("crash", [(3, 1, "torn"), (4, 100, "torn"), (5, 1, "before")])
def test_simulated_board_killed_mid_romfs_write(sess, crash):
    with open_sim(sess) as b:
        C.push(b, DEMO, show=False)
    with pytest.raises(link.LinkError):
        with open_sim(sess, board_faults={"romfs_crash": list(crash)}) as b:
            C.push(b, BIG, show=False)
    assert b.sim.why_dead() == "the simulated board process was killed (SIGKILL)"
    with open_sim(sess) as b:
        m = b.info["model"]
        assert m["sha256"] == sha(BIG) and m["served_from"] == "filesystem"
        assert b.info["romfs_state"]["state"] == "interrupted"
        res = C.push(b, BIG, show=False)  # push again: finishes the ROMFS write
        assert res["skipped"] and res["romfs"]["in_place"]
        assert b.info["model"]["served_from"] == "romfs"
    assert parse_romfs(sim_image(sess)) == {"/tinymp/model.tmpm": (64, len(BIG))}


def test_simulated_board_model_too_big_for_romfs(sess, capsys, monkeypatch, tmp_path):
    prof = dict(boards.load("NUCLEO_H743ZI2"))
    prof.update(name="SMALL_ROMFS", romfs_bytes=256 * KB)
    d = tmp_path / "profiles" / "SMALL_ROMFS"
    d.mkdir(parents=True)
    (d / "profile.json").write_text(json.dumps(prof))
    monkeypatch.setenv("TINYMP_BOARDS", str(tmp_path / "profiles"))
    args = _args(sess, "SMALL_ROMFS", model=_model_file(sess, BIG))
    assert run.handle_errors(run.cmd_push, args) == 0
    out = capsys.readouterr().out.strip()
    assert out.endswith("committed to the filesystem (warning: the model's ROMFS image (512944 "
                        "bytes) does not fit the 262144-byte ROMFS segment)"), out
    with open_sim(sess, "SMALL_ROMFS") as b:
        assert b.info["model"]["sha256"] == sha(BIG)
        assert b.info["model"]["served_from"] == "filesystem"
        assert b.info["romfs_state"]["state"] == "too_big"


@pytest.mark.parametrize("profile", ["QEMU_M7", "ESP32_S3"])
def test_simulated_boards_whose_romfs_the_agent_cannot_write(sess, capsys, profile):
    args = _args(sess, profile, model=_model_file(sess, DEMO))
    assert run.handle_errors(run.cmd_push, args) == 0
    out = capsys.readouterr().out.strip()
    if profile == "QEMU_M7":
        assert out.endswith("committed to the filesystem (ROMFS: not present)"), out
    else:
        assert out.endswith("committed to the filesystem (warning: this port does not write its "
                            "ROMFS segment (rom_ioctl WRITE_PREPARE: EINVAL))"), out
    with open_sim(sess, profile) as b:
        assert b.info["model"]["served_from"] == "filesystem"


def test_profiles_romfs_fields(tmp_path, monkeypatch):
    for name in boards.names():
        p = boards.load(name)
        assert (p["romfs_bytes"] > 0) == p["romfs"] and (not p["romfs_write"] or p["romfs"])
    assert boards.load("NUCLEO_H743ZI2")["romfs_bytes"] == 768 * KB  # the linker script's
    base = dict(boards.load("OPENMV_H7"))
    for k in ("romfs_bytes", "romfs_write"):
        base.pop(k)
    # without a heap figure the heap is the arena budget (what INFO's mem_free was before)
    nb = {k: v for k, v in base.items() if k != "heap_bytes"}
    monkeypatch.setenv("TINYMP_BOARDS", str(tmp_path))
    os.makedirs(tmp_path / "NOHEAP")
    (tmp_path / "NOHEAP" / "profile.json").write_text(json.dumps(dict(nb, name="NOHEAP")))
    assert boards.load("NOHEAP")["heap_bytes"] == base["arena_budget_bytes"]
    cases = [({}, None), ({"romfs_bytes": "1"}, "'romfs_bytes' must be int"),
             ({"romfs_write": 1}, "'romfs_write' must be bool"),
             ({"romfs": False, "romfs_bytes": 4096}, "need 'romfs': true"),
             ({"romfs_bytes": 0}, "must be > 0"),
             ({"romfs_bytes": 4 << 20}, "larger than 'flash_bytes'"),
             ({"heap_bytes": base["arena_budget_bytes"] - 1}, "'heap_bytes' is smaller than"),
             ({"heap_bytes": -1}, "'heap_bytes' is smaller than"),
             ({"heap_bytes": 1.5}, "'heap_bytes' must be int"),
             ({"heap_bytes": True}, "'heap_bytes' must be int")]
    monkeypatch.setenv("TINYMP_BOARDS", str(tmp_path))
    for k, (change, err) in enumerate(cases):
        name = f"B{k}"
        prof = dict(base, name=name, **change)
        os.makedirs(tmp_path / name)
        (tmp_path / name / "profile.json").write_text(json.dumps(prof))
        if err is None:
            got = boards.load(name)  # the defaults: the model flash, writable
            assert got["romfs_bytes"] == base["model_flash_bytes"] and got["romfs_write"] is True
            assert got["heap_bytes"] == base["heap_bytes"]
        else:
            with pytest.raises(boards.ProfileError, match=err.replace("(", r"\(")):
                boards.load(name)


# --- the agent under MicroPython (unix port), the stand-in flash handed to it ----------------

class MicroPythonRomfsBoard:
    """build/unix/micropython running the agent with simromfs.Stm32Romfs as its rom_ioctl over
    a bytearray kept in a file between runs (a board's flash across resets), remounting /rom with
    MicroPython's own vfs.VfsRom. After BYE the script reads /rom/tinymp/model.tmpm and writes
    its SHA-256 to `check`."""

    def __init__(self, root, seg_file, check, size=768 * KB, crash=None):
        import serial
        code = """
import sys
sys.path.insert(0, %r)
sys.path.insert(0, %r)
import os, hashlib, binascii, tinymp_agent, simromfs
try:
    with open(%r, 'rb') as f:
        mem = bytearray(f.read())
except OSError:
    mem = bytearray(b'\\xff' * %d)
rom = simromfs.Stm32Romfs(mem, crash=%r)
reset = False
try:
    tinymp_agent.main(root=%r, board={'name': 'unix MicroPython', 'arena_budget': 1048576,
                                      'rom_ioctl': rom.rom_ioctl, 'romfs_mount': '/rom'})
except simromfs.BoardReset:
    reset = True
with open(%r, 'wb') as f:
    f.write(mem)
if reset:
    sys.exit(3)
with open('/rom/tinymp/model.tmpm', 'rb') as f:
    h = binascii.hexlify(hashlib.sha256(f.read()).digest()).decode()
with open(%r, 'w') as f:
    f.write(' '.join([h] + os.listdir('/rom')))
""" % (AGENT_DIR, SESSION_DIR, seg_file, size, crash, root, seg_file, check)
        master, slave = os.openpty()
        tty.setraw(slave)
        self.proc = subprocess.Popen([MICROPYTHON, "-X", "heapsize=16M", "-c", code],
                                     stdin=master, stdout=master, stderr=subprocess.DEVNULL)
        os.close(master)
        self.port = serial.Serial(os.ttyname(slave), timeout=0.02)
        os.close(slave)

    def board(self):
        lk = link.Link(self.port, "unix MicroPython", timeout=5.0,
                       alive=lambda: None if self.proc.poll() is None else "micropython exited")
        info = lk.request(P.INFO)
        lk.max_payload = info["max_payload"]
        return link.Board(lk, "serial", info, closer=lambda: self.proc.wait(10))


@needs_mp
def test_agent_writes_romfs_under_micropython(tmp_path):
    root, seg, check = str(tmp_path / "flash"), str(tmp_path / "seg.bin"), str(tmp_path / "check")
    mp = MicroPythonRomfsBoard(root, seg, check)
    with mp.board() as b:
        assert b.info["implementation"] == "micropython"
        res = C.push(b, DEMO, show=False, chunk=4000)
        assert res["romfs"]["in_place"], res["romfs"]
        assert b.info["model"]["served_from"] == "romfs"
        assert b.info["model"]["sha256"] == sha(DEMO)
    with open(check) as f:
        assert f.read().split() == [sha(DEMO), "tinymp"]  # read through MicroPython's VfsRom
    with open(seg, "rb") as f:
        assert parse_romfs(f.read()) == {"/tinymp/model.tmpm": (64, len(DEMO))}
    # a reset mid-write under MicroPython: the filesystem's model, then push again to finish
    mp = MicroPythonRomfsBoard(root, seg, check, crash=(4, 50, "torn"))
    with pytest.raises(link.LinkError):
        with mp.board() as b:
            C.push(b, BIG, show=False, chunk=4000)
    assert mp.proc.wait(10) == 3  # the simulated reset, the flash saved
    mp = MicroPythonRomfsBoard(root, seg, check)
    with mp.board() as b:
        m = b.info["model"]
        assert m["sha256"] == sha(BIG) and m["served_from"] == "filesystem"
        res = C.push(b, BIG, show=False)
        assert res["skipped"] and res["romfs"]["in_place"]
        assert b.info["model"]["served_from"] == "romfs"
        x = np.random.default_rng(0).integers(-128, 128, (4, 32, 32, 3), dtype=np.int8)
        ev = C.evaluate(b, x, np.zeros(4, dtype=np.int64), "pretrained", show=False,
                        num_classes=10)
    here = tinymp.Model(BIG)  # the board's predictions, from ROMFS, are the engine's here
    preds = [here.predict(v.tobytes()) for v in x]
    assert ev["confusion"][0] == np.bincount(preds, minlength=10).tolist()
    with open(check) as f:
        assert f.read().split() == [sha(BIG), "tinymp"]
