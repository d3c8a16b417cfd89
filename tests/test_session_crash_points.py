"""A reset (a power cut) at any point of a request that changes the board's flash leaves a board
that starts again, answers INFO, and has lost nothing it had acknowledged (docs/SESSION.md, the
agent's files and their atomic commits).

The board is the real agent in this process over a folder (its filesystem) and a bytearray (its
ROMFS segment, behind the stm32 stand-in). Every change the agent makes to that folder goes
through hooks put in place of `open` and `os` in the agent's module, in tinymp_romfs and in
tinymp._files (where the binding's Trainer.save writes): a file opened to be created or
truncated, each write, a rename, a remove, a mkdir. A run of a request counts them; a case then
runs it again with a `Reset` at the k-th: that change is not made (`before`), or, for a write,
half of its bytes are (`torn`). Reset is a BaseException, as a power cut runs no `except`
clause; after it every further change raises it again (the power is off), so the clean-up the
agent's `except BaseException` clauses attempt (_write_file, Store.reset/append,
_files.atomic_write) writes nothing, as on a board. Writes are unbuffered: what a completed
write() gave is on "flash", nothing else.

After the reset a new Agent on the same folder and segment (a restart; its recovery is itself cut
at each of its changes too, then started again) must answer INFO with a whole model (the old or
the new one by SHA-256), every sample acknowledged before the request with its bytes, the saved
parameters, the previous ones and the trial run each the old or the new file with its own record
(one outcome or the other for all of them, as the request's docs say), and a follow-up request of
the same kind must succeed with the right result (no stray file in its way).
"""
import errno
import hashlib
import io
import itertools
import os
import pathlib
import struct
import sys
import tempfile

import numpy as np
import pytest

import tinymp
from tinymp import _files, zoo
from tinymp import tinymp_agent as A
from tinymp import tinymp_romfs as R
from tinymp.session.simboard import SimSensor
from tinymp.session.simromfs import Stm32Romfs

SCENE = os.path.join(os.path.dirname(tinymp.__file__), "models", "digits_shifted.npz")
DEMO = zoo.demo()
ODD = DEMO + b"\x00"  # another model (another SHA-256) of the same input: the store stays
ROMFS = 128 * 1024  # the OpenMV Cam H7's segment
HEAP = 335872
NOW = 1_700_000_000


def sha(b):
    return hashlib.sha256(bytes(b)).hexdigest()


# --- the power cut -------------------------------------------------------------------------

class Reset(BaseException):
    """The power went: no except clause of the agent may handle it."""


class Power:
    """Counts the changes made to the board's folder (when `counting`), and cuts the power at
    the `at`-th (`torn`: a write gives half its bytes first)."""

    def __init__(self):
        self.root = None
        self.counting = False
        self.at = None
        self.torn = False
        self.off = False
        self.n = 0
        self.trace = []
        self.fat = False  # renames refuse an existing target, as FAT's
        self.error = False  # the at-th change fails with an I/O error instead (power stays on)

    def arm(self, at=None, torn=False, error=False):
        self.counting, self.at, self.torn, self.off, self.n, self.trace = \
            True, at, torn, False, 0, []
        self.error = error

    def disarm(self):
        self.counting, self.at, self.off = False, None, False

    def mine(self, path):
        try:
            p = os.path.abspath(os.fspath(path))
        except TypeError:
            return False
        return self.root is not None and p.startswith(self.root + os.sep)

    def change(self, kind, path):
        """Before a change of the folder: raise Reset at the chosen one; True for a torn write
        (the caller writes half, then calls cut())."""
        if self.off:
            raise Reset("power off: %s %s" % (kind, os.path.basename(path)))
        if not self.counting:
            return False
        self.n += 1
        self.trace.append("%s %s" % (kind, os.path.basename(path)))
        if self.n == self.at and self.error:
            raise OSError(errno.EIO, "I/O error at change %d: %s" % (self.n, self.trace[-1]))
        if self.n == self.at:
            if self.torn and kind == "write":
                return True
            self.cut()
        return False

    def cut(self):
        self.off = True
        raise Reset("reset at change %d: %s" % (self.n, self.trace[-1]))


class HookedFile:
    """A file opened for writing: unbuffered, each write() one change."""

    def __init__(self, power, path, mode):
        self.power, self.path = power, path
        self.text = "b" not in mode
        self.raw = open(path, mode.replace("t", "").replace("b", "") + "b", buffering=0)

    def write(self, data):
        b = data.encode() if self.text else bytes(data)
        if not b:
            return 0
        if self.power.mine(self.path) and self.power.change("write", self.path):
            self.raw.write(b[:len(b) // 2])
            self.power.cut()
        n = self.raw.write(b)
        return len(data) if self.text else n

    def __getattr__(self, name):  # read, readinto, seek, tell, fileno, flush, close, ...
        return getattr(self.raw, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.raw.close()
        return False


class HookedOs:
    """`os` with its changes of the folder counted (one that changes nothing is not a change)."""

    def __init__(self, power):
        self._power = power

    def __getattr__(self, name):
        return getattr(os, name)

    def _change(self, kind, path, exists=True):
        if self._power.mine(path) and os.path.lexists(path) == exists:
            self._power.change(kind, path)

    def rename(self, src, dst):
        if self._power.fat and self._power.mine(dst) and os.path.lexists(dst):
            raise OSError(errno.EEXIST, "FAT renames onto no file", dst)  # and changes nothing
        self._change("rename", src)
        return os.rename(src, dst)

    def replace(self, src, dst):
        self._change("rename", src)
        return os.replace(src, dst)

    def remove(self, path):
        self._change("remove", path)
        return os.remove(path)

    unlink = remove

    def mkdir(self, path, *a):
        self._change("mkdir", path, exists=False)
        return os.mkdir(path, *a)

    def rmdir(self, path):
        self._change("rmdir", path)
        return os.rmdir(path)


def hooked_open(power):
    def _open(path, mode="r", *a, **kw):
        if not any(c in mode for c in "wax+") or not power.mine(path):
            return open(path, mode, *a, **kw)
        # creating or truncating a file is a change; opening one to write in place is not
        if "w" in mode or "x" in mode or not os.path.exists(path):
            power.change("open", path)
        return HookedFile(power, path, mode)
    return _open


@pytest.fixture
def power(monkeypatch, tmp_path):
    p = Power()
    hooks(monkeypatch, p, tmp_path)
    return p


def hooks(mp, p, tmp_path):
    o, op = HookedOs(p), hooked_open(p)
    for mod in (A, R, _files):
        mp.setattr(mod, "os", o)
        mp.setattr(mod, "open", op, raising=False)
    mp.setattr(A, "_now", lambda: NOW)  # records the same from run to run
    mp.setattr(A, "_salt", lambda: 0x5A17)  # features.kept the same from run to run
    state = tmp_path / "camera"
    state.mkdir()
    mp.setitem(sys.modules, "sensor", SimSensor(SCENE, str(state)))


# --- the board -----------------------------------------------------------------------------

class Refused(Exception):
    """An error reply: args (code, msg)."""


_seq = itertools.count(1)


class Board:
    """The agent over a folder and a ROMFS segment that outlive it (a reset, a restart)."""

    def __init__(self, tmp_path, power, heap=HEAP):
        self.root = str(tmp_path / "flash")
        power.root = os.path.abspath(self.root)
        self.flash = bytearray(b"\xff" * ROMFS)
        self.heap = heap
        self.agent = None

    def start(self):
        cfg = {"name": "crash board", "simulated": True, "arena_budget": 262144,
               "model_flash": 131072, "mem_free": self.heap, "romfs": True, "camera": True,
               "clock": "host", "rom_ioctl": Stm32Romfs(self.flash).rom_ioctl}
        self.agent = A.Agent(self.root, cfg)
        return self.agent

    def __call__(self, ftype, value=None):
        """One request through the agent's handle() (its except clauses included)."""
        payload = bytes(A.encode(value)) if value is not None else b""
        _, seq, pl, crc = A.FrameReader(io.BytesIO(bytes(A.frame(ftype, next(_seq) & 0x7FFF,
                                                                  payload)))).read()
        out = self.agent.handle(ftype, seq, pl, crc)
        t, _, pl, _ = A.FrameReader(io.BytesIO(bytes(out))).read()
        v = A.decode(pl) if len(pl) else None
        if t == A.T_ERROR:
            raise Refused(v["code"], v["msg"])
        assert t == ftype | A.REPLY
        return v

    def files(self):
        out = {}
        for n in sorted(os.listdir(self.root)):
            with open(os.path.join(self.root, n), "rb") as f:
                out[n] = f.read()
        return out

    def put_files(self, files, flash):
        for n in os.listdir(self.root):
            os.remove(os.path.join(self.root, n))
        for n, v in files.items():
            with open(os.path.join(self.root, n), "wb") as f:
                f.write(v)
        self.flash[:] = flash

    # requests of several frames
    def push(self, model, chunk=4000):
        off = self(A.T_PUSH_BEGIN, {"size": len(model), "sha256": sha(model)})["offset"]
        while off < len(model):
            off = self(A.T_PUSH_DATA, {"offset": off, "data": model[off:off + chunk]})["offset"]
        return self(A.T_PUSH_COMMIT, {})

    def train(self, seed, save=True, keep=False, fresh=False, steps=12):
        r = self(A.T_TRAIN_START, {"method": "tinymp", "lr": 0.01, "seed": seed, "steps": steps,
                                   "run": "run-%d" % seed, "keep_features": keep,
                                   "fresh": fresh})
        self(A.T_TRAIN_STEPS, {"n": steps})
        end = self(A.T_TRAIN_END, {"save": save})
        assert end["saved" if save else "trial"] is True, end
        return r, end


SIZE = 32 * 32  # the demo model's input: 32 x 32 x 1 int8
_rng = np.random.default_rng(47)
DATA = _rng.integers(-128, 128, SIZE * 9, dtype=np.int8).tobytes()
LABELS = [3, 1, 4, 1, 5, 9, 2, 6, 5]
UID, UID2 = 7, 8


def put(b, first, n, uid=UID):
    return b(A.T_SAMPLES_PUT, {"dataset": uid, "first": first, "labels": LABELS[first:first + n],
                               "data": DATA[first * SIZE:(first + n) * SIZE]})


def base(b):
    """The demo model (also in ROMFS), 6 samples, saved parameters (seed 2) with earlier ones for
    a rollback (seed 1), a trial run (seed 3), the features kept by those runs."""
    b.start()
    b.push(DEMO)
    put(b, 0, 6)
    b.train(1, keep=True)
    b.train(2, keep=True)
    b.train(3, save=False, keep=True)
    f = b.files()
    assert {"params.bin", "params.prev", "params.try", "features.kept", "train.rep"} <= set(f)


# --- what the board holds, read from its files -----------------------------------------------

def samples(files):
    """(dataset id, [(id, label, bytes)] of the whole records) of samples.bin, read here from
    the format (docs/SESSION.md), or (None, []) without one."""
    d = files.get("samples.bin")
    if d is None or len(d) < A.STORE_HEAD:
        return None, []
    assert d[:4] == b"TMPS"
    _v, size, uid = struct.unpack_from("<III", d, 4)
    rec = 8 + size
    out = []
    for at in range(16, len(d) - rec + 1, rec):
        sid, label, _ = struct.unpack_from("<IHH", d, at)
        out.append((sid, label, d[at + 8:at + rec]))
    return uid, out


def pair(files, a, b):
    return files.get(a), files.get(b)


def holding(files):
    """What the board holds: model, saved parameters and record, previous ones, trial (a
    params.try without its record is no trial: the agent never reads it, and the next trial or
    save removes it)."""
    m = files.get("model.tmpm")
    trial = pair(files, "params.try", "params.try.opt")
    return {"model": sha(m) if m is not None else None,
            "saved": pair(files, "params.bin", "params.opt"),
            "prev": pair(files, "params.prev", "params.prev.opt"),
            "trial": (None, None) if trial[1] is None else trial}


def seed_of(p):
    """The run (seed) a (parameters, record) pair is, for messages."""
    if p == (None, None):
        return "none"
    try:
        rec = "seed %s" % A.decode(p[1])["options"]["seed"]
    except Exception:  # noqa: BLE001
        rec = "no record" if p[1] is None else "bad record"
    return "%s params / %s" % ("no" if p[0] is None else "%s..." % sha(p[0])[:8], rec)


def describe(h):
    return "; ".join("%s: %s" % (k, h[k][:8] if k == "model" and h[k] else seed_of(h[k])
                                 if k != "model" else "none") for k in h)


# --- the requests --------------------------------------------------------------------------
# each: prepare (power on, not counted), act (the request(s) cut), follow (a request of the same
# kind after the restart, and its check), and the outcomes allowed besides old and new.

def trial_may_go(old, new):
    """A trial run replaces the earlier one: a reset may leave neither (docs: `--no-save`)."""
    return [dict(old, trial=(None, None))]


class Scenario:
    heap = HEAP
    extra = staticmethod(lambda old, new: [])

    def prepare(self, b):
        pass

    def follow(self, b, found):
        pass


class PushModel(Scenario):
    """PUSH_BEGIN, PUSH_DATA (4000-byte chunks), PUSH_COMMIT of another model, its ROMFS copy."""

    def act(self, b):
        b.push(ODD)

    def follow(self, b, found):
        # as `tinymp push` does: nothing is sent when the board holds the model
        if b(A.T_INFO)["model"]["sha256"] != sha(ODD):
            assert b.push(ODD)["sha256"] == sha(ODD)
        i = b(A.T_INFO)
        assert i["model"]["sha256"] == sha(ODD) and "error" not in i["model"]
        assert i["params"] is None and i["trial"] is None, (i["params"], i["trial"])


class PutSamples(Scenario):
    """SAMPLES_PUT of samples 6..8 after the store's 6."""

    def act(self, b):
        put(b, 6, 3)

    def follow(self, b, found):
        r = put(b, 6, 3)
        assert r == {"count": 9, "last_id": 8}
        assert samples(b.files()) == (UID, [(i, LABELS[i], DATA[i * SIZE:(i + 1) * SIZE])
                                            for i in range(9)])


class PutOtherDataset(Scenario):
    """SAMPLES_PUT of another dataset's samples: a new store, written whole then renamed."""

    def act(self, b):
        put(b, 0, 3, uid=UID2)

    def follow(self, b, found):
        r = put(b, 0, 3, uid=UID2)
        assert r == {"count": 3, "last_id": 2}
        assert samples(b.files()) == (UID2, [(i, LABELS[i], DATA[i * SIZE:(i + 1) * SIZE])
                                             for i in range(3)])


class CaptureKeep(Scenario):
    """CAPTURE (not cut: it writes nothing on the board), then CAPTURE_KEEP."""

    def prepare(self, b):
        b(A.T_CAPTURE, {"label": 4, "id": 6, "dataset": UID})

    def act(self, b):
        assert b(A.T_CAPTURE_KEEP, {"id": 6}) == {"count": 7, "last_id": 6}

    def follow(self, b, found):
        n = len(samples(b.files())[1])
        x = b(A.T_CAPTURE, {"label": 2, "id": n, "dataset": UID})["data"]
        assert b(A.T_CAPTURE_KEEP, {"id": n}) == {"count": n + 1, "last_id": n}
        assert samples(b.files())[1][-1] == (n, 2, x)


class ClearSamples(Scenario):
    """SAMPLES_CLEAR (the features kept of those samples go too)."""

    def act(self, b):
        assert b(A.T_SAMPLES_CLEAR) == {"count": 0}

    def follow(self, b, found):
        assert b(A.T_SAMPLES_CLEAR) == {"count": 0}
        assert put(b, 0, 2) == {"count": 2, "last_id": 1}


class TrainEndSave(Scenario):
    """TRAIN_END with save (the run: seed 4, from the saved parameters, no kept features)."""

    def prepare(self, b):
        b(A.T_TRAIN_START, {"method": "tinymp", "lr": 0.01, "seed": 4, "steps": 12,
                            "run": "run-4"})
        b(A.T_TRAIN_STEPS, {"n": 12})

    def act(self, b):
        assert b(A.T_TRAIN_END, {"save": True})["saved"] is True

    def follow(self, b, found):
        b.train(5, fresh=True)
        h = holding(b.files())
        assert h["saved"] == FRESH[5] and h["prev"] == found["saved"] and \
            h["trial"] == (None, None)
        assert b(A.T_REPORT)["train"]["saved"] is True


class TrainEndTrial(TrainEndSave):
    """TRAIN_END without save: the run kept as the trial (params.try)."""
    extra = staticmethod(trial_may_go)

    def act(self, b):
        assert b(A.T_TRAIN_END, {"save": False})["trial"] is True

    def follow(self, b, found):
        b.train(5, save=False, fresh=True)
        h = holding(b.files())
        assert h["trial"] == FRESH_TRIAL[5]
        assert (h["saved"], h["prev"]) == (found["saved"], found["prev"])
        assert b(A.T_PREDICT, {"data": DATA[:2 * SIZE], "params": "trial"})["params"] == "trial"


class TrainKeep(Scenario):
    """TRAIN_START with keep_features, TRAIN_STEPS, TRAIN_END with save, on a board that kept
    no features yet: kept in RAM during the run, features.kept written after the save."""
    where, reused = "ram", 0

    def prepare(self, b):
        os.remove(os.path.join(b.root, A.KEPT_FILE))

    def act(self, b):
        r, end = b.train(4, keep=True)
        assert r["features"]["where"] == self.where and end["features"]["kept"] is True
        assert r["features"]["reused"] == self.reused

    def follow(self, b, found):
        # whatever features.kept a reset left, a run that uses it trains as one without it
        r, end = b.train(5, keep=True, fresh=True)
        assert r["features"]["where"] == self.where and end["features"]["kept"] is True
        saved = holding(b.files())["saved"]
        assert saved[0] == FRESH[5][0] and A.decode(saved[1])["options"]["seed"] == 5
        i = b(A.T_INFO)["features"]
        assert i["current"] and i["samples"] == 6, i


class TrainKeepFile(TrainKeep):
    """The same with a heap too small for the features in RAM, on a board whose features.kept
    holds the first 3 samples' records: the other 3 written into it during the run."""
    where, reused = "file", 3
    heap = 16540 + A.Features.RESERVE + 2 * 3072  # the run's arena, the reserve, two samples

    def prepare(self, b):
        with open(os.path.join(b.root, A.KEPT_FILE), "r+b") as f:
            f.truncate(A.KEPT_HEAD + 3 * (A.KEPT_REC + 3072))


class ByeKeep(TrainKeep):
    """A run with keep_features, its features in RAM, that the PC leaves without TRAIN_END
    (BYE, then what serve() does at its end): they are written to features.kept; nothing else
    changes."""

    def prepare(self, b):
        TrainKeep.prepare(self, b)
        r = b(A.T_TRAIN_START, {"method": "tinymp", "lr": 0.01, "seed": 4, "steps": 12,
                                "run": "run-4", "keep_features": True})
        assert r["features"]["where"] == "ram"
        b(A.T_TRAIN_STEPS, {"n": 12})

    def act(self, b):
        assert b(A.T_BYE) == {"ok": True}
        b.agent._end_features(keep=True)  # serve()'s finally


class ParamsSave(Scenario):
    """PARAMS_SAVE: the trial run becomes the saved parameters."""

    def act(self, b):
        assert b(A.T_PARAMS_SAVE) == {"saved": True, "from": "trial"}

    def follow(self, b, found):
        b.train(5, save=False, fresh=True)
        assert b(A.T_PARAMS_SAVE)["from"] == "trial"
        h = holding(b.files())
        assert h["saved"] == FRESH_TRIAL_SAVED[5] and h["prev"] == found["saved"]


class ParamsRollback(Scenario):
    """PARAMS_ROLLBACK: the previous parameters (seed 1) come back."""

    def act(self, b):
        assert b(A.T_PARAMS_ROLLBACK) == {"restored": True}

    def follow(self, b, found):
        b.train(5, fresh=True)
        assert b(A.T_PARAMS_ROLLBACK) == {"restored": True}
        assert holding(b.files())["saved"] == found["saved"]


class ParamsReset(Scenario):
    """PARAMS_RESET: back to the pretrained weights, the saved ones kept for a rollback."""

    def act(self, b):
        assert b(A.T_PARAMS_RESET)["reset"] is True

    def follow(self, b, found):
        b.train(5, fresh=True)
        assert b(A.T_PARAMS_RESET) == {"reset": True, "can_roll_back": True}
        h = holding(b.files())
        assert h["saved"] == (None, None) and h["prev"] == FRESH[5]


SCENARIOS = {
    "push": PushModel(), "samples_put": PutSamples(), "samples_put_other": PutOtherDataset(),
    "capture_keep": CaptureKeep(), "samples_clear": ClearSamples(),
    "train_end_save": TrainEndSave(), "train_end_trial": TrainEndTrial(),
    "train_keep_ram": TrainKeep(), "train_keep_file": TrainKeepFile(), "bye_keep": ByeKeep(),
    "params_save": ParamsSave(), "params_rollback": ParamsRollback(),
    "params_reset": ParamsReset(),
}

FRESH, FRESH_TRIAL, FRESH_TRIAL_SAVED = {}, {}, {}


# --- references: each request run whole, its changes counted --------------------------------

_REF = {}


def reference(name, tmp, fat=False):
    """(files and flash before the request, after it, the changes it makes) of a scenario (on a
    filesystem whose renames replace a file, or on FAT's)."""
    if (name, fat) in _REF:
        return _REF[name, fat]
    sc = SCENARIOS[name]
    p = Power()
    p.fat = fat
    tmp.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        hooks(mp, p, tmp)
        b = Board(tmp, p, sc.heap)
        base(b)
        old = (b.files(), bytes(b.flash))
        if not FRESH:
            fresh_runs(b, old)
        sc.prepare(b)
        p.arm()
        sc.act(b)
        trace = p.trace
        p.disarm()
        new = (b.files(), bytes(b.flash))
    _REF[name, fat] = (old, new, trace)
    return _REF[name, fat]


def fresh_runs(b, old):
    """The saved parameters (and record) of the follow-ups' fresh run of seed 5, saved, as a
    trial, and as a trial then PARAMS_SAVE: the same on any board holding these samples."""
    b.train(5, fresh=True)
    FRESH[5] = holding(b.files())["saved"]
    b.train(5, save=False, fresh=True)
    FRESH_TRIAL[5] = holding(b.files())["trial"]
    b(A.T_PARAMS_SAVE)
    FRESH_TRIAL_SAVED[5] = holding(b.files())["saved"]
    b.put_files(*old)
    b.start()


def cases():
    out = []
    for name, fat in itertools.product(SCENARIOS, (False, True)):
        with tempfile.TemporaryDirectory() as d:
            _, _, trace = reference(name, pathlib.Path(d), fat)
        for k, what in enumerate(trace, 1):
            for torn in ((False, True) if what.startswith("write") else (False,)):
                cid = "%s%s-%02d%s-%s" % ("fat-" if fat else "", name, k, "torn" if torn else "",
                                          what.replace(" ", "-"))
                out.append(pytest.param(name, k, torn, fat, id=cid))
    return out


# --- the check -----------------------------------------------------------------------------

def samples_ok(found, old, new):
    if found == old:
        return True
    uid, recs = found
    nuid, nrecs = new
    if uid != nuid or recs != nrecs[:len(recs)]:
        return False
    # the store grew: every sample of the old one is still there
    return uid != old[0] or recs[:len(old[1])] == old[1]


def restarted(b, name, old, new, what):
    """Checks of a board started again after the reset; returns what it holds."""
    b.start()
    info = b(A.T_INFO)
    files = b.files()
    h = holding(files)
    sc = SCENARIOS[name]
    ho, hn = holding(old[0]), holding(new[0])
    allowed = [ho, hn] + sc.extra(ho, hn)
    problem = None
    if h not in allowed:  # said after the other checks and the follow-up request
        problem = "%s: the restart found %s; before: %s; after: %s" % (
            what, describe(h), describe(ho), describe(hn))
    # the model: whole, the one INFO names, and the one ROMFS serves when it does
    m = info["model"]
    assert m is not None and "error" not in m, (what, m)
    assert m["sha256"] == h["model"] == sha(files["model.tmpm"])
    if m["served_from"] == "romfs":
        assert bytes(b.flash[64:64 + m["bytes"]]) == files["model.tmpm"]
    # samples: those acknowledged before, with their bytes (or the request's new store)
    s = samples(files)
    assert samples_ok(s, samples(old[0]), samples(new[0])), (what, s[0], len(s[1]))
    assert info["samples"]["count"] == len(s[1])
    # INFO says what the files hold
    assert (info["params"] or {}).get("saved", False) == (h["saved"][0] is not None)
    assert (info["trial"] is not None) == (h["trial"] != (None, None))
    # the saved parameters and the trial load with their records
    if s[1]:
        rec = A.decode(h["saved"][1]) if h["saved"][1] is not None else {}
        mine = h["saved"][0] is not None and rec.get("model") == h["model"]
        got = b(A.T_PREDICT, {"data": DATA[:2 * SIZE], "params": "personalised"})
        assert got["params"] == ("personalised" if mine else "pretrained"), what
        if info["trial"] is not None and info["trial"].get("model") == h["model"]:
            b(A.T_PREDICT, {"data": DATA[:2 * SIZE], "params": "trial"})
    return h, problem


@pytest.mark.parametrize("name, k, torn, fat", cases())
def test_a_reset_at_any_change_leaves_a_board_that_recovers(tmp_path, power, name, k, torn, fat):
    old, new, trace = reference(name, tmp_path / "ref", fat)
    power.fat = fat
    sc = SCENARIOS[name]
    b = Board(tmp_path, power, sc.heap)
    os.mkdir(b.root)
    b.put_files(*old)
    b.start()
    sc.prepare(b)
    power.arm(at=k, torn=torn)
    with pytest.raises(Reset):
        sc.act(b)
    assert power.trace[-1] == trace[k - 1]  # the same change as in the reference run
    power.disarm()
    cut = (b.files(), bytes(b.flash))
    # the restart's own recovery counted
    power.arm()
    b.start()
    recovery = power.trace
    power.disarm()
    b.put_files(*cut)
    at = "reset at %s%s" % (trace[k - 1], " (torn)" if torn else "")
    found, problem = restarted(b, name, old, new, at)
    problems = [problem] if problem else []
    try:
        sc.follow(b, found)
    except AssertionError as e:
        problems.append("%s: the follow-up request: %s" % (at, e))
    # the restart's recovery cut at each of its changes, then the board started again
    for j in range(1, len(recovery) + 1):
        for torn2 in ((False, True) if recovery[j - 1].startswith("write") else (False,)):
            b.put_files(*cut)
            power.arm(at=j, torn=torn2)
            with pytest.raises(Reset):
                b.start()
            power.disarm()
            _, problem = restarted(b, name, old, new, "%s, then at %s%s of the recovery" % (
                at, recovery[j - 1], " (torn)" if torn2 else ""))
            if problem:
                problems.append(problem)
    assert not problems, "\n".join(problems)


def journal(steps):
    """A journal as the agent writes it: its steps."""
    return A.encode(steps)


MV = ["mv", "params.bin", "params.prev"]


@pytest.mark.parametrize("journal", [
    b"", b"\x00", b"\x00garbage", journal({"steps": [MV]}), journal([]), journal(MV),
    journal([["mv", "params.bin", "../params.prev"]]), journal([["mv", "..", "params.prev"]]),
    journal([["mv", "params.bin", "x/params.prev"]]), journal([["mv", "params.bin", ""]]),
    journal([["cp", "params.bin", "params.prev"]]), journal([["rm"]]), journal([[]]),
    journal([["rm", 5]]), journal([MV + ["x"]]), journal([MV])[:-1],
], ids=lambda j: j[:24].hex())
def test_a_damaged_journal_is_dropped_and_changes_nothing(tmp_path, journal):
    # only a damaged flash leaves one (it is written whole, then renamed): the board starts, with
    # its files as they are, and no step of it runs (a name with a folder in it stays outside)
    root = tmp_path / "flash"
    root.mkdir()
    files = {"params.bin": b"OLD", "params.opt": A.encode({"options": {"seed": 1}}),
             A.JOURNAL: journal, A.JOURNAL + ".tmp": b"half"}
    for n, v in files.items():
        (root / n).write_bytes(v)
    A.Agent(root=str(root), board={})
    assert {p.name: p.read_bytes() for p in root.iterdir()} == \
        {"params.bin": b"OLD", "params.opt": files["params.opt"]}
    assert not (tmp_path / "params.prev").exists()


def _saved_pair(root):
    files = {"params.bin": b"RUN2", "params.opt": A.encode({"options": {"seed": 2}}),
             "params.prev": b"RUN1", "params.prev.opt": A.encode({"options": {"seed": 1}})}
    for n, v in files.items():
        (root / n).write_bytes(v)
    return files


def _files_in(root):
    return {p.name: p.read_bytes() for p in root.iterdir()}


def test_no_room_for_the_journal_changes_nothing(tmp_path, monkeypatch):
    # a full filesystem: the journal is the change's only new file; without room for it the
    # request is refused and the files stay as they were (it was a mix, or an agent that could
    # not start, when a journal rewrite needed a second file)
    root = tmp_path / "flash"
    root.mkdir()
    before = _saved_pair(root)
    a = A.Agent(root=str(root), board={})
    write = A._write_file

    def full(path, data):
        if path.endswith(A.JOURNAL):
            raise OSError(errno.ENOSPC, "no room")
        return write(path, data)
    monkeypatch.setattr(A, "_write_file", full)
    for req in (a.do_params_rollback, a.do_params_reset):
        with pytest.raises(A.Fail) as e:
            req({})
        assert e.value.args[0] == "storage" and "nothing changed" in e.value.args[1]
        assert _files_in(root) == before


def test_a_step_that_fails_is_finished_at_the_next_change_or_start(tmp_path, monkeypatch):
    root = tmp_path / "flash"
    root.mkdir()
    before = _saved_pair(root)
    replace, broken = A._replace, [True]

    def flaky(src, dst):  # the second rename of the rollback fails while `broken`
        if broken[0] and src.endswith("params.prev.opt"):
            raise OSError(errno.EIO, "I/O error")
        return replace(src, dst)
    monkeypatch.setattr(A, "_replace", flaky)
    a = A.Agent(root=str(root), board={})
    with pytest.raises(A.Fail) as e:
        a.do_params_rollback({})
    assert e.value.args[0] == "storage" and "finishes the change" in e.value.args[1]
    assert (root / A.JOURNAL).exists()
    # a start that still cannot finish it: the board starts, the journal stays, and the next
    # change is refused before it changes anything
    A.Agent(root=str(root), board={})
    assert (root / A.JOURNAL).exists()
    with pytest.raises(A.Fail) as e:
        A.Agent(root=str(root), board={}).do_params_reset({})
    assert "earlier change" in e.value.args[1] and (root / "params.bin").exists()
    # once it can: the rollback is finished (the earlier parameters with their own record)
    broken[0] = False
    A.Agent(root=str(root), board={})
    assert _files_in(root) == {"params.bin": before["params.prev"],
                               "params.opt": before["params.prev.opt"]}


class _FullOnce:
    """A trainer whose first save finds the filesystem full."""

    def __init__(self):
        self.calls = 0

    def save(self, path):
        self.calls += 1
        if self.calls == 1:
            raise OSError(errno.ENOSPC, "no room")
        with open(path, "wb") as f:
            f.write(b"RUN3")


def test_a_save_making_room_never_leaves_the_previous_parameters_under_no_record(tmp_path,
                                                                                  monkeypatch):
    # a reset between the two removals that make room: params.prev without its options, which a
    # rollback then brought back under the saved parameters' record (seed 2 for RUN1's seed 1)
    root = tmp_path / "flash"
    root.mkdir()
    before = _saved_pair(root)
    a = A.Agent(root=str(root), board={})
    a.trainer = _FullOnce()
    remove = A._remove

    def cut(path):  # the power goes after the first removal that makes room
        remove(path)
        if os.path.basename(path).startswith("params.prev"):
            raise Reset("after the first removal")
    monkeypatch.setattr(A, "_remove", cut)
    with pytest.raises(Reset):
        a._save_params({"seed": 3})
    monkeypatch.setattr(A, "_remove", remove)
    b = A.Agent(root=str(root), board={})
    try:
        b.do_params_rollback({})
    except A.Fail as e:  # nothing to roll back to: the earlier parameters went first
        assert e.args[0] == "nothing"
    got = _files_in(root)
    assert (got["params.bin"], got["params.opt"]) in \
        ((before["params.bin"], before["params.opt"]),
         (before["params.prev"], before["params.prev.opt"]))


def io_cases():
    out = []
    for name in SCENARIOS:
        with tempfile.TemporaryDirectory() as d:
            _, _, trace = reference(name, pathlib.Path(d))
        out += [pytest.param(name, k, id="%s-%02d-%s" % (name, k, what.replace(" ", "-")))
                for k, what in enumerate(trace, 1)]
    return out


@pytest.mark.parametrize("name, k", io_cases())
def test_an_io_error_at_any_change_leaves_a_board_that_serves_on(tmp_path, power, name, k):
    # an error (not a reset) at any change: the request may be refused, then the same agent,
    # not started again, must hold the files as before or after it at its next request (a
    # change left part way is finished first) and serve the follow-up as a fresh board would
    old, new, trace = reference(name, tmp_path / "ref")
    sc = SCENARIOS[name]
    b = Board(tmp_path, power, sc.heap)
    os.mkdir(b.root)
    b.put_files(*old)
    b.start()
    sc.prepare(b)
    power.arm(at=k, error=True)
    try:
        sc.act(b)
    except (Refused, AssertionError):  # refused, or a reply the act did not expect
        pass
    power.disarm()
    b(A.T_SAMPLES_STATUS)
    files = b.files()
    assert A.JOURNAL not in files and A.JOURNAL + ".tmp" not in files
    h = holding(files)
    ho, hn = holding(old[0]), holding(new[0])
    assert h in [ho, hn] + sc.extra(ho, hn), (trace[k - 1], describe(h))
    assert samples_ok(samples(files), samples(old[0]), samples(new[0]))
    sc.follow(b, h)
