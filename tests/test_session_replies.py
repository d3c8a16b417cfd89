"""The PC does not trust the board's agent. Every reply a command reads is checked (its fields
and their types: protocol.reply_problem; the progress of the transfers that loop: commands.py),
and a bad one ends the command with one line on stderr and exit status 1 (a `ReplyError`, a
LinkError), the session closed with BYE, and nothing in the session folder lost or half-written.

The board here is the real agent in this process (`AgentPort`, no serial link, no subprocess),
with a hook that changes its replies. A command that loops without end meets `Runaway` after
LIMIT requests (and `no_hang` guards the time), so the old code fails these tests instead of
hanging them."""
import contextlib
import copy
import errno
import gc
import io
import json
import os
import sys
import threading
import time

import numpy as np
import pytest

import tinymp
from tinymp import boards, zoo
from tinymp import tinymp_agent as A
from tinymp.session import commands as C
from tinymp.session import dataset as D
from tinymp.session import link, run
from tinymp.session import protocol as P
from tinymp.session.simboard import SimSensor, board_config, sim_romfs

MODELS = os.path.join(os.path.dirname(tinymp.__file__), "models")
SCENE = os.path.join(MODELS, "digits_shifted.npz")
HELD = os.path.join(MODELS, "digits_shifted_test.npz")
DEMO = zoo.demo()
PROFILE = "OPENMV_H7"
LIMIT = 400  # requests a fake board answers before it calls the command a loop without end


class Runaway(BaseException):
    """A command kept asking without end (a BaseException: no `except Exception` of the link
    turns it into a link failure)."""


class AgentPort:
    """A pyserial-like port to the board's agent running in this process: each frame written is
    answered at once. `tamper(ftype, request, reply)` gives the reply value sent instead (replies
    only, not refusals); `fail(ftype)` true makes that write and every later one fail, as a
    link that went away; `gone(ftype)` true lets the agent run that request, then loses its
    reply and fails every later write (a link that went away while the board acted); `sent`
    lists the request types written."""

    def __init__(self, agent, tamper=None, fail=None, limit=LIMIT, gone=None):
        self.agent, self.tamper, self.fail, self.limit = agent, tamper, fail, limit
        self.gone = gone
        self.buf = bytearray()
        self.sent = []
        self.dead = False

    def write(self, data):
        ftype, seq, payload, crc = A.FrameReader(io.BytesIO(bytes(data))).read()
        self.sent.append(ftype)
        if self.limit is not None and len(self.sent) > self.limit:
            self.limit = None  # once: BYE afterwards is answered
            raise Runaway(f"{len(self.sent)} requests, the last {P.NAMES.get(ftype)}")
        if self.dead or (self.fail is not None and self.fail(ftype)):
            self.dead = True
            raise OSError(5, "Input/output error")
        out = bytes(self.agent.handle(ftype, seq, payload, crc))
        if self.gone is not None and self.gone(ftype):
            self.dead = True
            return len(data)
        if self.tamper is not None:
            (fr,) = P.Decoder().feed(out)
            if fr.type == ftype | P.REPLY:
                req = P.unpack(payload) if payload else None
                out = P.encode_frame(fr.type, fr.seq, P.pack(self.tamper(ftype, req, fr.value())))
        self.buf += out
        return len(data)

    @property
    def in_waiting(self):
        return len(self.buf)

    def read(self, n=1):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def close(self):
        pass


def open_fake(where, tamper=None, fail=None, limit=LIMIT, ports=None, gone=None):
    """A connected Board: the agent on the flash folder `where`/flash, with the profile's ROMFS
    (where/romfs0.bin), as open_board does for a simulated board. The port is appended to
    `ports`, also when the hello fails."""
    prof = boards.load(PROFILE)
    cfg = board_config(prof)
    rom = sim_romfs(prof, str(where))
    if rom is not None:
        cfg["rom_ioctl"] = rom.rom_ioctl
    port = AgentPort(A.Agent(root=os.path.join(str(where), "flash"), board=cfg), tamper, fail,
                     limit, gone)
    if ports is not None:
        ports.append(port)
    lk = link.Link(port, name="fake board", timeout=0.2, retries=1)
    info = link._hello(lk, "board")
    lk.max_payload = info.get("max_payload")
    return link.Board(lk, "sim", info)


def only(ftype, change):
    """A tamper that changes the replies to `ftype` with change(request, reply)."""
    def tamper(t, req, rep):
        return change(req, rep) if t == ftype else rep
    return tamper


def edit(rep, **kw):
    out = dict(rep)
    out.update(kw)
    return out


def no_hang(fn, seconds=60):
    """fn() in a thread: its value, or its exception; fails when it runs on (a loop without
    progress; the daemon thread is left behind) or asks the board without end (Runaway)."""
    box = {}

    def go():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e
    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s: a loop without progress"
    err = box.get("error")
    if isinstance(err, Runaway):
        pytest.fail(f"the command asked the board without end: {err}")
    if err is not None:
        raise err
    return box.get("value")


@contextlib.contextmanager
def gc_frozen():
    """The objects that exist now left out of the garbage collector's walks (gc.freeze) until the
    block ends. The board's agent calls gc.collect() before each training run and model commit (to
    make room in MicroPython's heap); here it runs in the test process, where a full collection
    walks every object the process holds: with the whole suite loaded (torch, onnx, matplotlib,
    what earlier tests keep), 0.1 s and more each, so the fuzzers, which train and push hundreds
    of times, took ten times as long in the suite as alone. The agent's collections still run,
    over what the block creates; nothing the tests check depends on which objects they walk."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def scene_checked_once(monkeypatch):
    """Each path's scene file checked once (simboard.check_scene), its answer kept. A command on a
    simulated board checks the camera's scene first (run._open), reading the whole file: ~1 ms,
    thousands of times in a fuzzer, for the package's scene, which does not change, and which the
    fake boards here never show (they have no camera). A bad file is not kept: checked again."""
    from tinymp.session import simboard
    real, seen = simboard.check_scene, {}

    def check_scene(path):
        if path not in seen:
            seen[path] = real(path)
        return seen[path]
    monkeypatch.setattr(simboard, "check_scene", check_scene)


@pytest.fixture
def fuzzing(monkeypatch):
    """What the fuzzers' thousands of commands need not redo (gc_frozen, scene_checked_once)."""
    scene_checked_once(monkeypatch)
    with gc_frozen():
        yield


def folder_state(path):
    """{relative path: bytes} of every file under path (but the empty lock file a command leaves:
    Session.lock)."""
    out = {}
    for dirpath, _, names in os.walk(path):
        for n in names:
            if n == ".lock" and dirpath == path:
                continue
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, path)] = f.read()
    return out


def check_folder(path):
    """Nothing half-written: no temporary file, every JSON file whole."""
    for name, data in folder_state(path).items():
        assert not name.endswith(".tmp"), name
        if name.endswith(".json"):
            json.loads(data)


class Rig:
    """A board folder holding the demo model, a session with 12 samples in its dataset, 24
    held-out samples in a file, and the CLI commands run against fake boards (`tamper`)."""

    def __init__(self, tmp, monkeypatch, capsys):
        self.tmp, self.capsys = tmp, capsys
        self.where = tmp / "board"
        self.where.mkdir()
        self.session = C.Session(str(tmp / "session"))
        self.tamper = self.fail = self.gone = None
        self.ports = []
        with open_fake(self.where) as b:
            C.push(b, DEMO, show=False)
            self.meta = C.model_meta(b.info)
            x, y, src = D.load_samples(SCENE, *self._fmt())
            ds = C.open_dataset(self.session, self.meta, b.info["board"])
            C.import_samples(ds, x[:12], y[:12], src[:12], show=False)
        x, y, _ = D.load_samples(HELD, *self._fmt())
        self.held = str(tmp / "held.npz")
        np.savez(self.held, x=x[:24], y=y[:24])
        self.model = str(tmp / "demo.tmpm")
        with open(self.model, "wb") as f:
            f.write(DEMO)
        monkeypatch.setattr(link, "open_board", self._open)

    def _fmt(self):
        m = self.meta
        return m["input_shape"], m["input_scale"], m["input_zero_point"], m["num_classes"]

    def _open(self, *a, **kw):
        # only the last board is kept (`port`): each one holds its agent, model and ROMFS mapping,
        # thousands of them in a fuzzer, which every gc.collect() of the agent walked again
        del self.ports[:]
        return open_fake(self.where, self.tamper, self.fail, ports=self.ports, gone=self.gone)

    @property
    def port(self):
        """The port of the board the last command opened."""
        return self.ports[-1]

    def args(self, **kw):
        import argparse
        d = dict(port="sim", board=PROFILE, session=self.session.path, timeout=None, json=True,
                 quiet=True, scene=None)
        d.update(kw)
        return argparse.Namespace(**d)

    def cli(self, name, **kw):
        """Run `tinymp NAME` (handle_errors): (exit status, stdout, stderr lines)."""
        defaults = {
            "push": dict(model=self.model),
            "collect": dict(source=None, label=None, count=None, eval=False),
            "train": dict(method="tinymp", budget=None, epochs=None, steps=3, lr=0.01, seed=1,
                          r=None, ratio=None, storage=None, momentum=None, period=None,
                          fresh=False, no_save=False, keep_features=False),
            "eval": dict(data=self.held, pretrained=False, both=False, trial=False,
                         confusion=False),
            "params": dict(action="save"),
            "status": dict(),
            "report": dict(png=None, m7=False),
        }[name]
        args = self.args(**dict(defaults, **kw))
        self.capsys.readouterr()
        rc = no_hang(lambda: run.handle_errors(getattr(run, "cmd_" + name), args))
        out, err = self.capsys.readouterr()
        return rc, out, err.strip().splitlines()


@pytest.fixture
def rig(tmp_path, monkeypatch, capsys):
    return Rig(tmp_path, monkeypatch, capsys)


def one_line(lines):
    assert len(lines) == 1 and lines[0].startswith("tinymp:"), lines
    return lines[0]


# --- 1. loops without progress --------------------------------------------------------------

@pytest.mark.parametrize("change,says", [
    (lambda req, rep: {"offset": req["offset"]},
     "fake board: the board's agent did not advance past offset 0 of PUSH_DATA (it replied "
     "offset 0)"),
    (lambda req, rep: {"offset": 0 if req["offset"] else rep["offset"]},
     "fake board: the board's agent did not advance past offset 1024 of PUSH_DATA (it replied "
     "offset 0)"),
    (lambda req, rep: {"offset": len(DEMO) + 5},
     f"fake board: the board's agent replied offset {len(DEMO) + 5} to PUSH_DATA, past the "
     f"model's {len(DEMO)} bytes"),
], ids=["stays", "goes-back", "past-the-end"])
def test_push_data_that_does_not_advance_stops(tmp_path, change, says):
    with open_fake(tmp_path, only(P.PUSH_DATA, change)) as b:
        with pytest.raises(link.LinkError) as e:
            no_hang(lambda: C.push(b, DEMO, show=False, chunk=1024))
        assert str(e.value) == says
        assert b.link.port.sent.count(P.PUSH_DATA) <= 2
    # the board never got a commit: it holds no model
    with open_fake(tmp_path) as b:
        assert b.info["model"] is None


@pytest.mark.parametrize("change,says", [
    (lambda req, rep: edit(rep, pred=b""),
     "fake board: the board's agent answered PREDICT of 4 samples with 0 predictions"),
    (lambda req, rep: edit(rep, pred=rep["pred"] + b"\x01"),
     "fake board: the board's agent answered PREDICT of 4 samples with 5 predictions"),
    (lambda req, rep: edit(rep, pred=bytes([200]) * len(rep["pred"])),
     "fake board: the board's agent predicted class 200 in its PREDICT reply; the model has "
     "10 classes"),
], ids=["none", "one-too-many", "no-such-class"])
def test_predict_replies_of_the_wrong_size_stop(rig, change, says):
    x, y, _ = D.load_samples(rig.held, *rig._fmt())
    with open_fake(rig.where, only(P.PREDICT, change)) as b:
        with pytest.raises(link.LinkError) as e:
            no_hang(lambda: C.evaluate(b, x, y, "pretrained", show=False, num_classes=10,
                                       session=rig.session))
        assert str(e.value) == says
    assert not os.path.exists(rig.session.runs_dir)  # no eval run recorded


@pytest.mark.parametrize("cut,says", [
    (lambda x, y: (x[:3], y[:5]), "3 samples and 5 labels: give one label per sample"),
    (lambda x, y: (x[:5], y[:3]), "5 samples and 3 labels: give one label per sample"),
    (lambda x, y: (x[:0], y[:0]), "no samples to evaluate on"),
    (lambda x, y: (x[:4], y[:4, None]), "the labels must be a list of N integers, got shape "
                                        "(4, 1)"),
    (lambda x, y: (x[:4], y[:4] + 0.5), "the labels must be integers, got float64"),
    (lambda x, y: (x[:4], y[:4] * 0 + 10), "label 10 is not a class of the model (0..9)"),
    (lambda x, y: (x[:4], y[:4] * 0 - 1), "label -1 is not a class of the model (0..9)"),
    (lambda x, y: (x[:4, :16], y[:4]), "samples of shape [16, 32, 1]; the board's model takes "
                                       "[32, 32, 1]"),
    (lambda x, y: (x[0, 0, 0], y[:1]), "the samples must be an array of samples [N, H, W, C], "
                                       "got shape (1,)"),
], ids=["fewer-samples", "fewer-labels", "none", "2-d-labels", "float-labels", "past-the-classes",
        "negative", "other-shape", "1-d-samples"])
def test_evaluate_refuses_samples_and_labels_that_do_not_fit(rig, cut, says):
    # evaluate() moves on by the predictions of each batch: with fewer samples than labels it sent
    # empty batches for ever; the others broke later (numpy errors, a ReplyError blaming the board)
    x, y, _ = D.load_samples(rig.held, *rig._fmt())
    xc, yc = cut(x, y)
    with open_fake(rig.where) as b:
        with pytest.raises(C.SessionError) as e:
            no_hang(lambda: C.evaluate(b, xc, yc, "pretrained", show=False,
                                       session=rig.session))
        assert P.PREDICT not in b.link.port.sent
    assert e.value.code == 2 and str(e.value) == "tinymp: evaluate: " + says
    assert not os.path.exists(rig.session.runs_dir)  # nothing recorded


def test_eval_of_an_empty_samples_file_is_one_line(rig):
    x, y, _ = D.load_samples(rig.held, *rig._fmt())
    empty = str(rig.tmp / "empty.npz")
    np.savez(empty, x=x[:0], y=y[:0])
    rc, out, err = rig.cli("eval", data=empty)
    assert rc == 2 and out == "" and \
        one_line(err) == f"tinymp: {empty} holds no samples ('x' has shape (0, 32, 32, 1))"
    assert not os.path.exists(rig.session.runs_dir)


@pytest.mark.parametrize("change,says", [
    (lambda req, rep: edit(rep, last_id=req["first"] - 1),
     "fake board: the board's agent did not advance past sample 0 of SAMPLES_PUT (it replied "
     "last_id -1)"),
    (lambda req, rep: edit(rep, last_id=req["first"] + len(req["labels"]) + 3),
     "fake board: the board's agent replied last_id 15 to SAMPLES_PUT of samples 0..11"),
], ids=["stays", "ahead"])
def test_samples_put_that_does_not_advance_stops(rig, change, says):
    ds = D.Dataset.open(rig.session.dataset_dir)
    with open_fake(rig.where, only(P.SAMPLES_PUT, change)) as b:
        with pytest.raises(link.LinkError) as e:
            no_hang(lambda: C.sync_samples(b, ds, show=False))
        assert str(e.value) == says


# --- 2. malformed replies, and 3. the session closed cleanly, nothing lost ------------------

def _plan_x(req, rep):
    return edit(rep, plan="x")


CASES = [
    # (command, its options, the request whose reply is bad, change, what the line says)
    ("push", {}, P.PUSH_DATA, lambda req, rep: {"offset": req["offset"]},
     "did not advance past offset 0 of PUSH_DATA"),
    ("eval", {}, P.PREDICT, lambda req, rep: edit(rep, pred=b""),
     "answered PREDICT of 4 samples with 0 predictions"),
    ("eval", {}, P.PREDICT, lambda req, rep: edit(rep, us="12"),
     "bad PREDICT reply: 'us' is a str ('12'), not a finite number"),
    ("collect", {"source": "HELD"}, P.SAMPLES_PUT,
     lambda req, rep: edit(rep, last_id=req["first"] - 1), "did not advance past sample 0"),
    ("train", {}, P.SAMPLES_STATUS, lambda req, rep: edit(rep, last_id="none"),
     "bad SAMPLES_STATUS reply: 'last_id' is a str ('none'), not an integer >= -1"),
    ("train", {}, P.TRAIN_START, _plan_x, "bad TRAIN_START reply: 'plan' is a str ('x'), "
     "not a dict"),
    ("train", {}, P.TRAIN_STEPS, lambda req, rep: edit(rep, events=[]),
     "answered TRAIN_STEPS n=1 with 0 events, after 0 of 3 steps"),  # once a short run
    ("train", {}, P.TRAIN_STEPS, lambda req, rep: edit(rep, events=rep["events"] * 2),
     "answered TRAIN_STEPS n=1 with 2 events, after 0 of 3 steps"),
    ("train", {}, P.TRAIN_STEPS, lambda req, rep: edit(rep, events=[e[:3] for e in rep["events"]]),
     "bad TRAIN_STEPS reply: 'events[0]' is a list of 3 items, not 11"),
    ("train", {}, P.TRAIN_STEPS, lambda req, rep: edit(rep, events=[[str(v) for v in e]
                                                                     for e in rep["events"]]),
     "bad TRAIN_STEPS reply: 'events[0][0]' is a str ('0'), not an integer >= 0"),
    ("train", {}, P.TRAIN_END, _plan_x, "bad TRAIN_END reply: 'plan' is a str ('x'), not a "
     "dict; the board may have saved this run's parameters"),
    ("train", {}, P.TRAIN_END, lambda req, rep: edit(rep, heap_end="lots"),
     "bad TRAIN_END reply: 'heap_end' is a str ('lots'), not a finite number"),
    ("train", {}, P.INFO, lambda req, rep: edit(rep, max_payload="big"),
     "bad INFO reply: 'max_payload' is a str ('big'), not an integer >= 1"),
    ("eval", {}, P.INFO, lambda req, rep: edit(rep, model=edit(rep["model"], num_classes="10")),
     "bad INFO reply: 'model.num_classes' is a str ('10'), not an integer >= 1"),
    ("eval", {}, P.INFO, lambda req, rep: edit(rep, model=edit(rep["model"], input_shape=[32, 32])),
     "bad INFO reply: 'model.input_shape' is a list of 2 items, not 3"),
    ("collect", {"source": "HELD"}, P.INFO, lambda req, rep: edit(rep, model={}),
     "bad INFO reply: 'model.sha256' is missing"),
    ("push", {}, P.INFO, lambda req, rep: ["not", "a", "dict"],
     "bad INFO reply: the reply is a list of 3 items, not a dict"),
    # what `tinymp status` reads of the saved parameters', the trial run's and the samples' records
    ("status", {}, P.INFO, lambda req, rep: edit(rep, params=edit(rep["params"] or {},
                                                                   options={"steps": "200"})),
     "bad INFO reply: 'params.options.steps' is a str ('200'), not an integer >= 0"),
    ("status", {}, P.INFO, lambda req, rep: edit(rep, params={"saved": "yes"}),
     "bad INFO reply: 'params.saved' is a str ('yes'), not true or false"),
    ("status", {}, P.INFO, lambda req, rep: edit(rep, trial={"model": "x", "time": "noon"}),
     "bad INFO reply: 'trial.time' is a str ('noon'), not a finite number"),
    ("status", {}, P.INFO, lambda req, rep: edit(rep, trial=[1]),
     "bad INFO reply: 'trial' is a list of 1 item, not a dict"),
    ("status", {}, P.INFO, lambda req, rep: edit(rep, samples=edit(rep["samples"], count=-1)),
     "bad INFO reply: 'samples.count' is an int (-1), not an integer >= 0"),
]


@pytest.mark.parametrize("name,opts,ftype,change,says", CASES,
                         ids=[f"{c[0]}-{P.NAMES[c[2]]}-{i}" for i, c in enumerate(CASES)])
def test_a_bad_reply_is_one_line_status_1_bye_and_nothing_lost(rig, name, opts, ftype, change,
                                                                 says):
    opts = {k: (rig.held if v == "HELD" else v) for k, v in opts.items()}
    if name == "push":  # a board without the model, so that the push sends it
        rig.where = rig.tmp / "blank"
        rig.where.mkdir()
    before = folder_state(rig.session.path)
    rig.tamper = only(ftype, change)
    rc, out, err = rig.cli(name, **opts)
    line = one_line(err)
    assert rc == 1 and says in line, line
    assert out == ""
    # the link works: the session said goodbye, and the board took it
    assert rig.port.sent[-1] == P.BYE and not rig.port.agent.running
    check_folder(rig.session.path)
    after = folder_state(rig.session.path)
    if name == "collect":  # the imported samples are kept on the PC, none lost
        for k, v in before.items():
            if k.startswith("dataset") and "manifest" not in k:
                assert after[k].startswith(v), k
        assert len(D.Dataset.open(rig.session.dataset_dir)) == (12 if ftype == P.INFO else 36)
        before = {k: v for k, v in before.items() if not k.startswith("dataset")}
        after = {k: v for k, v in after.items() if not k.startswith(("dataset", "eval"))}
    assert after == before  # no run recorded, session.json as it was
    # and the same board, answering properly, serves the next command
    rig.tamper = None
    rc, out, err = rig.cli(name, **opts)
    assert rc == 0, err


def test_params_save_with_a_bad_reply(rig):
    rc, _, err = rig.cli("train", no_save=True)
    assert rc == 0, err
    rig.tamper = only(P.PARAMS_SAVE, lambda req, rep: "saved")
    rc, out, err = rig.cli("params", action="save", json=False)
    line = one_line(err)
    assert rc == 1 and "bad PARAMS_SAVE reply: the reply is a str ('saved'), not a dict" in line
    assert rig.port.sent[-1] == P.BYE


def test_a_capture_of_the_wrong_size_is_not_stored(rig, monkeypatch):
    monkeypatch.setitem(sys.modules, "sensor", SimSensor(SCENE, str(rig.where)))
    rig.tamper = only(P.CAPTURE, lambda req, rep: edit(rep, data=rep["data"][:-1]))
    before = folder_state(rig.session.path)
    rc, _, err = rig.cli("collect", label=3, count=5)
    line = one_line(err)
    assert rc == 1 and "bad CAPTURE reply: 'data' holds 1023 bytes; a sample of the model is " \
        "1024" in line and "collect interrupted" in line and "none lost" in line, line
    assert P.CAPTURE_KEEP not in rig.port.sent and rig.port.sent[-1] == P.BYE
    ds = D.Dataset.open(rig.session.dataset_dir)
    assert len(ds) == 12  # nothing stored of the bad sample
    check_folder(rig.session.path)
    assert {k: v for k, v in folder_state(rig.session.path).items() if "manifest" not in k} == \
        {k: v for k, v in before.items() if "manifest" not in k}


def test_a_link_that_fails_during_a_command_gets_no_bye(rig):
    # a failed link is closed without BYE (it could only time out), also when the command turns
    # the LinkError into its own message; a bad reply (above) is not a failed link
    rig.fail = lambda t: t == P.TRAIN_STEPS
    rc, _, err = rig.cli("train")
    line = one_line(err)
    assert rc == 1 and "training interrupted" in line and "cannot write to the link" in line
    sent = rig.port.sent
    assert sent[-1] == P.TRAIN_STEPS and P.BYE not in sent


def _board_info(rig):
    with open_fake(rig.where) as b:
        return b.info


def test_a_link_lost_at_the_commit_says_the_model_on_the_board_is_not_known(rig):
    # the board commits, then the link goes before its reply: the line said "keeps its previous
    # model", while the board held the new one
    rig.where = rig.tmp / "blank"
    rig.where.mkdir()
    rig.gone = lambda t: t == P.PUSH_COMMIT
    rc, out, err = rig.cli("push")
    line = one_line(err)
    assert rc == 1 and out == ""
    assert "push interrupted at the commit" in line and "cannot write to the link" in line
    sha = C.hashlib.sha256(DEMO).hexdigest()
    assert "whether OPENMV_H7 (simulated) committed the model is not known: `tinymp status` " \
        f"shows the model it holds (this one is sha256 {sha[:12]}); run push again" in line, line
    assert "keeps its previous model" not in line
    assert P.BYE not in rig.port.sent  # a failed link: no BYE
    assert _board_info(rig)["model"]["sha256"] == sha
    # what the line says to run finds it there: status names it, and the session does not
    # record it yet; push again sends nothing and records it
    rig.gone = None
    rc, out, err = rig.cli("status")
    assert rc == 0, err
    st = json.loads(out)
    assert st["model"]["sha256"] == sha and st["model"]["session_model"] is False
    assert st["session_model"] is None
    rc, out, err = rig.cli("push")
    assert rc == 0 and json.loads(out)["skipped"], err
    rc, out, err = rig.cli("status", json=False)
    assert rc == 0 and f"model       demo.tmpm, sha256 {sha[:12]}, {len(DEMO):,} bytes" in out
    assert "the model this session last pushed" in out


def test_a_link_lost_before_the_commit_keeps_the_previous_model(rig):
    rig.where = rig.tmp / "blank"
    rig.where.mkdir()
    rig.gone = lambda t: t == P.PUSH_DATA
    rc, _, err = rig.cli("push")
    line = one_line(err)
    assert rc == 1 and "push interrupted" in line and "keeps its previous model; run push " \
        "again to resume" in line and "not known" not in line, line
    assert _board_info(rig)["model"] is None


def test_a_link_lost_during_the_romfs_write_says_its_outcome_is_not_known(rig):
    # the board's ROMFS copy changed behind its back: push sends PUSH_ROMFS to write it again
    with open(rig.where / "romfs0.bin", "r+b") as f:
        f.seek(64 + 100)
        v = f.read(1)[0]
        f.seek(64 + 100)
        f.write(bytes([v ^ 0xFF]))
    assert _board_info(rig)["romfs_state"]["retry"]
    rig.gone = lambda t: t == P.PUSH_ROMFS
    rc, _, err = rig.cli("push")
    line = one_line(err)
    assert rc == 1 and "writing the model into ROMFS" in line
    assert "holds the model on its filesystem; whether the ROMFS write finished is not known: " \
        "`tinymp status` shows where the board uses the model from; run push again" in line, line
    assert "keeps its previous model" not in line
    rig.gone = None
    # the board finished the write before its reply was lost: status says it serves the model
    # from ROMFS
    rc, out, err = rig.cli("status")
    assert rc == 0 and json.loads(out)["model"]["served_from"] == "romfs", err
    rc, out, err = rig.cli("push")
    assert rc == 0, err
    res = json.loads(out)
    assert res["skipped"] and res["romfs"]["in_place"]


@pytest.mark.parametrize("save", [True, False], ids=["save", "no-save"])
def test_a_link_lost_at_the_end_of_training_says_what_is_not_known(rig, save):
    # the board saves (or keeps the trial run), then the link goes before its reply: the line
    # said "the board keeps its last saved parameters", while it held this run's
    rig.gone = lambda t: t == P.TRAIN_END
    t0 = int(time.time())
    rc, out, err = rig.cli("train", no_save=not save, method="last", steps=4)
    line = one_line(err)
    assert rc == 1 and out == "" and "training interrupted at its end" in line
    assert "keeps its last saved parameters" not in line
    # the options and the run's name the line gives are the run's: the ones the test gave, and
    # the name the board keeps with what it saved (below)
    this = "method last, 4 steps (lr 0.01, seed 1)"
    run_name = line.split(f"this one is {this}, run ")[1].split(";")[0]
    if save:
        assert "whether the board saved this run's parameters is not known" in line, line
        assert "`tinymp status` names the run of the saved parameters; this one is " \
            f"{this}, run {run_name}; no run recorded" in line, line
        assert "rollback" not in line
    else:
        assert "whether the board kept this run as the trial run is not known" in line, line
        assert "`tinymp status` names the trial run it holds, if any; this one is " \
            f"{this}, run {run_name}; no run recorded" in line, line
    assert "no run recorded" in line and not os.path.exists(rig.session.runs_dir)
    assert P.BYE not in rig.port.sent
    info = _board_info(rig)
    if save:
        assert info["params"]["saved"]  # it had saved them
    else:
        assert info["trial"] is not None and not (info["params"] or {}).get("saved")
    # status answers it: the record of this run, ended after the test started it
    rig.gone = None
    rc, out, err = rig.cli("status")
    assert rc == 0, err
    st = json.loads(out)
    rec = st["params" if save else "trial"]
    assert rec["method"] == "last" and rec["steps"] == 4 and rec["time"] >= t0
    assert rec["run"] == run_name and rec["run_file"] is None
    assert st["params"]["saved"] is save and (st["trial"] is None) is save
    rc, out, err = rig.cli("status", json=False)
    assert rc == 0 and f"{'parameters  saved: ' if save else 'trial run   '}{this}, run ended " \
        in out, out
    assert f", run {run_name}, which this session folder does not record" in out, out


class FakeTransport:
    """mpremote's SerialTransport with the agent already running behind `serial` (an AgentPort,
    or any pyserial-like port); records whether it was closed."""
    made = []

    def __init__(self, port):
        self.serial = port
        self.closed = False
        FakeTransport.made.append(self)

    def enter_raw_repl(self, soft_reset=True):
        pass

    def exec(self, code):
        return b"TMA1"  # the frozen agent is there

    def exec_raw_no_follow(self, code):
        pass

    def exit_raw_repl(self):
        pass

    def close(self):
        self.closed = True


class SilentPort:
    """A port where nothing answers."""
    timeout = write_timeout = None
    in_waiting = 0

    def write(self, data):
        return len(data)

    def read(self, n=1):
        return b""


@pytest.mark.parametrize("case", ["silent", "gone", "bad-info", "interrupted"])
def test_a_serial_board_whose_hello_fails_releases_the_port(tmp_path, monkeypatch, case):
    # open_serial closed mpremote's transport when the agent would not start, but not when the
    # first INFO failed: the port stayed open in this process
    import mpremote.transport_serial
    dev = tmp_path / "ttyACM9"
    dev.write_text("")

    def agent(**kw):
        return AgentPort(A.Agent(root=str(tmp_path / "flash"), board=board_config(
            boards.load(PROFILE))), **kw)
    port = {"silent": lambda: SilentPort(),
            "gone": lambda: agent(fail=lambda t: True),
            "bad-info": lambda: agent(tamper=only(P.INFO, lambda req, rep: edit(rep, protocol=2))),
            "interrupted": lambda: agent(tamper=only(P.INFO, _interrupt))}[case]()
    FakeTransport.made = []
    monkeypatch.setattr(mpremote.transport_serial, "SerialTransport",
                        lambda device, baudrate=115200: FakeTransport(port))
    want = KeyboardInterrupt if case == "interrupted" else link.LinkError
    with pytest.raises(want) as e:
        no_hang(lambda: link.open_serial(str(dev), timeout=0.05))
    (t,) = FakeTransport.made
    assert t.closed
    if want is link.LinkError:
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(str(dev)) and {
            "silent": "no answer to INFO after 9 tries (0.05 s each) (is the tinymp agent "
                      "running on the board?)",
            "gone": "cannot write to the link",
            "bad-info": "the agent speaks protocol 2, this tinymp speaks 1"}[case] in msg, msg
    # and a board that answers is opened, its port closed with it
    monkeypatch.setattr(mpremote.transport_serial, "SerialTransport",
                        lambda device, baudrate=115200: FakeTransport(agent()))
    with link.open_serial(str(dev), timeout=0.05) as b:
        assert b.info["protocol"] == 1 and not FakeTransport.made[-1].closed
    assert FakeTransport.made[-1].closed


def test_a_qemu_board_whose_hello_fails_releases_the_pty(monkeypatch):
    import subprocess

    import mpremote.transport_serial
    from tinymp.session import qemu

    class Proc:
        killed = False
        stdout = io.BytesIO(b"char device redirected to /dev/pts/77 (label serial0)\n")

        def kill(self):
            self.killed = True

        def wait(self):
            return -9

        def poll(self):
            return -9 if self.killed else None
    proc = Proc()
    monkeypatch.setattr(qemu, "qemu_firmware", lambda: "firmware.elf")
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **kw: proc)
    FakeTransport.made = []
    monkeypatch.setattr(mpremote.transport_serial, "SerialTransport",
                        lambda device, baudrate=115200: FakeTransport(SilentPort()))
    with pytest.raises(link.LinkError) as e:
        no_hang(lambda: qemu.start_qemu(timeout=0.05))
    assert "no answer to INFO" in str(e.value)
    (t,) = FakeTransport.made
    assert t.closed and proc.killed


def _interrupt(req, rep):
    raise KeyboardInterrupt


def test_reply_fields_the_json_files_cannot_hold_are_written_whole(rig):
    # values the PC does not read go into the run record as they came; bytes among them once
    # stopped json.dump half-way through runs/train-0001.json.tmp (a traceback)
    rig.tamper = only(P.TRAIN_END, lambda req, rep: edit(rep, stats=edit(rep["stats"],
                                                                          blob=b"\x01\xff")))
    rc, _, err = rig.cli("train")
    assert rc == 0, err
    check_folder(rig.session.path)
    (rec,) = rig.session.runs("train")
    assert rec["end"]["stats"]["blob"] == "01ff"


# --- a session file that cannot be written (a full disk, ...): one line, nothing lost ---------

FULL = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk is full",
        errno.EROFS: "Read-only file system", errno.EACCES: "Permission denied"}


def fix(code):
    return "make room" if code in (errno.ENOSPC, errno.EDQUOT) else \
        "make the session folder writable"


def fail_writes_in(monkeypatch, folder, code=errno.ENOSPC):
    """Writes of files under `folder` fail with `code` where a full disk shows (the fsync of the
    .tmp, when the data leaves the page cache); other files (the board's flash) are written."""
    real = os.fsync

    def fsync(fd):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if name.startswith(str(folder) + os.sep) and name.endswith(".tmp"):
            raise OSError(code, os.strerror(code))
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return lambda: monkeypatch.setattr(os, "fsync", real)  # room again


@pytest.mark.parametrize("code", list(FULL), ids=[errno.errorcode[c] for c in FULL])
def test_a_run_record_that_cannot_be_written_is_one_line(rig, monkeypatch, code):
    rc, _, err = rig.cli("train")  # a first run, recorded
    assert rc == 0, err
    before = folder_state(rig.session.path)
    room = fail_writes_in(monkeypatch, rig.session.path, code)
    rc, out, err = rig.cli("train")
    line = one_line(err)
    path = os.path.join(rig.session.runs_dir, "train-0002.json")
    assert rc == 1 and out == ""
    assert line == (f"tinymp: cannot write {path}: {FULL[code]}; no run record written; the "
                    "board saved this run's parameters, but the run is not recorded (the report "
                    f"does not show it): {fix(code)} before training again"), line
    assert rig.port.sent[-1] == P.BYE  # the board is fine: said goodbye
    check_folder(rig.session.path)
    assert folder_state(rig.session.path) == before  # nothing half-written, nothing lost
    assert _board_info(rig)["params"]["saved"]
    rc, out, err = rig.cli("eval")
    line = one_line(err)
    assert rc == 1 and line.startswith(f"tinymp: cannot write "
                                       f"{os.path.join(rig.session.runs_dir, 'eval-0001.json')}: "
                                       f"{FULL[code]}; no run record written; accuracy "), line
    assert line.endswith(f"% (personalised parameters) on 24 samples, not recorded: {fix(code)} "
                         "and run eval again to record it"), line
    assert folder_state(rig.session.path) == before
    room()
    assert rig.cli("eval")[0] == 0  # with room again


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS],
                         ids=[errno.errorcode[c] for c in (errno.ENOSPC, errno.EROFS)])
def test_a_session_json_that_cannot_be_written_is_one_line_and_kept(rig, monkeypatch, code):
    rc, out, err = rig.cli("push")  # the board holds it: the session records the model
    assert rc == 0 and json.loads(out)["skipped"], err
    rc, _, err = rig.cli("train")
    assert rc == 0, err
    rc, _, err = rig.cli("params", action="reset")  # session.json: its log of one reset
    assert rc == 0, err
    with open(rig.session.state_path, "rb") as f:
        kept = f.read()
    before = folder_state(rig.session.path)
    room = fail_writes_in(monkeypatch, rig.session.path, code)
    rc, out, err = rig.cli("params", action="rollback")
    line = one_line(err)
    assert rc == 1 and out == "" and line == (
        f"tinymp: cannot write {rig.session.state_path}: {FULL[code]}; it is as it was; "
        "OPENMV_H7 (simulated) did `params rollback`, which the session does not record (the "
        f"report may say its runs' parameters are where they were): {fix(code)}"), line
    with open(rig.session.state_path, "rb") as f:
        assert f.read() == kept  # the previous session.json, whole
    check_folder(rig.session.path)
    assert folder_state(rig.session.path) == before
    # a push: the board holds the new model; pushed again with room, the session records it,
    # and the push in its log (the board dropped the earlier model's parameters)
    other = os.path.join(MODELS, "digits0to4.tmpm")
    rc, out, err = rig.cli("push", model=other)
    line = one_line(err)
    assert rc == 1 and line == (
        f"tinymp: cannot write {rig.session.state_path}: {FULL[code]}; it is as it was; "
        f"OPENMV_H7 (simulated) holds the new model, which the session does not record: "
        f"{fix(code)} and run push again to record it (it sends nothing)"), line
    assert folder_state(rig.session.path) == before
    assert _board_info(rig)["model"]["sha256"] == C.hashlib.sha256(
        open(other, "rb").read()).hexdigest()
    room()
    rc, out, err = rig.cli("push", model=other)
    assert rc == 0 and json.loads(out)["skipped"], err
    with open(rig.session.state_path) as f:
        state = json.load(f)
    assert state["model"]["name"] == "digits0to4.tmpm"
    assert [e["action"] for e in state["params_log"]] == ["reset", "push"]


# --- fuzz: every field of the INFO, TRAIN_* and PREDICT replies, dropped or of another type --

# values of another type or range; a place that holds a number, a bool or nothing may well hold
# the first few (None: not reported), a place the PC reads never the GARBAGE ones
GARBAGE = ["x", b"\x00", {}, [1, 2, 3]]
ODD = [None, -1, 2.5, True, float("nan")] + GARBAGE


def _places(v, at=()):
    """The places of a reply value: its dicts' keys, the items of its lists (the first of a long
    one: the events of a TRAIN_STEPS reply are alike), nested."""
    if isinstance(v, dict):
        for k, x in v.items():
            yield at + (k,)
            yield from _places(x, at + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v[:1] if len(v) > 16 or at == ("events",) else v):
            yield at + (i,)
            yield from _places(x, at + (i,))


def _mutants(sample):
    """(description, function of a reply value giving the mutant, strict) for every place of
    `sample`: dropped, and replaced by each ODD value; the whole reply replaced too. A strict
    mutant must be refused or change nothing the commands report."""
    for odd in ODD:
        yield f"reply = {odd!r}", (lambda odd: lambda v: odd)(odd), True
    for place in _places(sample):
        def setter(place, odd=None, drop=False):
            def f(v):
                v = copy.deepcopy(v)
                cur = v
                for k in place[:-1]:
                    try:
                        cur = cur[k]
                    except (KeyError, IndexError, TypeError):
                        return v  # not in this reply (e.g. a later, shorter one)
                try:
                    if drop:
                        del cur[place[-1]]
                    else:
                        cur[place[-1]] = odd
                except (KeyError, IndexError, TypeError):
                    pass
                return v
            return f
        yield f"drop {place}", setter(place, drop=True), False
        for odd in ODD:
            yield f"{place} = {odd!r}", setter(place, odd), any(odd is g for g in GARBAGE)


def _samples(rig):
    """A clean run's replies, one of each type (the last)."""
    seen = {}

    def record(t, req, rep):
        seen[t] = copy.deepcopy(rep)
        return rep
    rig.tamper = record
    assert rig.cli("train")[0] == 0
    assert rig.cli("eval")[0] == 0
    rig.tamper = None
    return seen


def _fuzz(rig, ftype, commands):
    """Each mutant of ftype's reply, given on every reply of that type, through `commands`:
    each ends with one line and status 1 or 2, or with status 0 and a well-formed result (a
    strict mutant: that of a clean run); no other exception, nothing half-written."""
    sample = _samples(rig)[ftype]
    clean = []
    for name, opts in commands:
        rc, out, err = rig.cli(name, **opts)
        assert rc == 0, err
        clean.append(_result(name, out))
    n = bad = 0
    first = commands[0]
    keep = set(os.listdir(rig.session.runs_dir))
    for what, mutate, strict in _mutants(sample):
        rig.tamper = (lambda mutate: lambda t, req, rep: mutate(rep) if t == ftype else rep)(mutate)
        refused = False
        for (name, opts), want in zip(commands, clean):
            try:
                rc, out, err = rig.cli(name, **opts)
            except Exception as e:  # noqa: BLE001 - what the test is about
                pytest.fail(f"{P.NAMES[ftype]} {what}: `{name}` raised {type(e).__name__}: {e}")
            n += 1
            if rc == 0:
                got = _result(name, out)
                assert got == want or not strict, (P.NAMES[ftype], what, name)
            else:
                # 1: a bad reply; 2: a well-formed one that disagrees with the user's files
                # (a model input of another shape than the samples'), which the PC cannot tell
                bad += 1
                refused = True
                assert rc in (1, 2), (P.NAMES[ftype], what, name, err)
                one_line(err)
            check_folder(rig.session.path)
        rig.tamper = None
        if refused:  # the board, answering properly again, serves the next command
            rc, out, err = rig.cli(first[0], **first[1])
            assert rc == 0 and _result(first[0], out) == clean[0], (what, err)
        for f in set(os.listdir(rig.session.runs_dir)) - keep:  # checked; not read again
            os.remove(os.path.join(rig.session.runs_dir, f))
    assert bad
    return n


def _result(name, out):
    """What a command's --json output says that a reply's unread fields must not change (None:
    its text output, which holds the host's times)."""
    if not out.lstrip().startswith(("{", "[")):
        return None
    v = json.loads(out)
    if name == "eval":
        return [(r["accuracy"], r["n"], r["confusion"]) for r in v]
    if name == "train":
        return v["steps"], v["final_loss"], v["final_running_accuracy"]
    if name == "collect":
        return v["total"], v["per_class"]
    if name == "report":
        return v["train"]["steps"] if v.get("train") else None
    if name == "status":  # it shows the board's values as they come: its shape, not its figures
        return sorted(v), sorted(v["board"]), sorted(v["params"])
    return v.get("sha256")


def test_fuzz_info_replies(rig, fuzzing):
    # eval --pretrained: a mutant that makes push send the model again drops the personalised
    # parameters (a new model), which would change their accuracy
    assert _fuzz(rig, P.INFO, [("push", {}), ("eval", {"pretrained": True}),
                               ("collect", {"source": rig.held, "eval": True}),
                               ("push", {"json": False}), ("status", {}),
                               ("status", {"json": False})]) > 1000


def test_a_session_config_reads_only_what_info_must_hold(rig):
    # the board line of `tinymp session` indexed INFO's implementation, firmware and tinymp
    # version, which the table does not require (KeyError); a bad field stops the flow before the
    # push, the session folder as it was
    cfg = rig.tmp / "session.json"
    cfg.write_text(json.dumps({"model": rig.model, "port": "sim", "session": rig.session.path,
                               "collect": [{"from": rig.held}], "eval": rig.held,
                               "train": {"steps": 3}, "plots": False}))
    args = rig.args(config=str(cfg), m7=False)

    def drop(req, rep):
        return {k: v for k, v in rep.items() if k not in ("implementation", "firmware", "tinymp")}
    rig.tamper = only(P.INFO, drop)
    rig.capsys.readouterr()
    assert no_hang(lambda: run.handle_errors(run.cmd_session, args)) == 0
    rep = json.loads(rig.capsys.readouterr().out)
    assert rep["train"]["steps"] == 3 and rep["accuracy_after"]["n"] == 24
    before = folder_state(rig.session.path)
    rig.tamper = only(P.INFO, lambda req, rep: edit(rep, romfs_state=edit(rep["romfs_state"],
                                                                          bytes="64K")))
    assert no_hang(lambda: run.handle_errors(run.cmd_session, args)) == 1
    line = one_line(rig.capsys.readouterr().err.strip().splitlines())
    assert "bad INFO reply: 'romfs_state.bytes' is a str ('64K'), not an integer >= 0" in line
    assert folder_state(rig.session.path) == before


def test_fuzz_predict_replies(rig, fuzzing):
    assert _fuzz(rig, P.PREDICT, [("eval", {})]) >= 39


@pytest.mark.parametrize("ftype", [P.TRAIN_START, P.TRAIN_STEPS, P.TRAIN_END],
                         ids=["TRAIN_START", "TRAIN_STEPS", "TRAIN_END"])
def test_fuzz_train_replies(rig, ftype, fuzzing):
    # train --fresh: every run starts from the pretrained model, so a clean run's figures are the
    # same each time; the report reads the run records back, and prints them
    assert _fuzz(rig, ftype, [("train", {"fresh": True}), ("report", {}),
                              ("report", {"json": False})]) > 100


def test_the_checks_pass_what_the_agent_sends(rig, monkeypatch):
    # every reply the table names, as the agent sends it in a whole session, passes; a type the
    # table does not name is not checked
    monkeypatch.setitem(sys.modules, "sensor", SimSensor(SCENE, str(rig.where)))
    seen = {}

    def record(t, req, rep):
        seen.setdefault(t, []).append(copy.deepcopy(rep))
        return rep
    rig.tamper = record
    rig.where = rig.tmp / "blank"
    rig.where.mkdir()
    for name, opts in (("push", {}), ("collect", {"source": rig.held}),
                       ("collect", {"label": 3, "count": 5}), ("train", {}),
                       ("train", {"no_save": True}),
                       ("eval", {"trial": True}), ("params", {"action": "save"}),
                       ("params", {"action": "rollback"}), ("params", {"action": "reset"}),
                       ("status", {})):  # its INFO: after a reset, params without options
        rc, _, err = rig.cli(name, **opts)
        assert rc == 0, (name, err)
    assert set(P.REPLIES) - {P.PUSH_ROMFS} <= set(seen)
    assert seen[P.INFO][-1]["params"] == {"saved": False, "previous": True}
    for t, reps in seen.items():
        for rep in reps:
            assert P.reply_problem(t, rep) is None, (P.NAMES[t], rep)
    assert P.reply_problem(P.PUSH_BEGIN, {"offset": True}) == \
        "'offset' is a bool (True), not an integer >= 0"
    assert P.reply_problem(0x7E, "anything") is None and P.reply_problem(P.BYE, None) is None


def ctrl_c_at(ftype, nth=1):
    """A `fail` hook: Ctrl-C (KeyboardInterrupt) as the nth request of type `ftype` is written,
    once; the requests after it (BYE) go through."""
    seen = [0]

    def fail(t):
        if t == ftype:
            seen[0] += 1
            if seen[0] == nth:
                raise KeyboardInterrupt
        return False
    return fail


def test_ctrl_c_in_a_capture_says_what_was_kept(rig, monkeypatch):
    # it printed only "tinymp: interrupted" (status 130): the samples were kept, the line did
    # not say so, nor that collect resumes
    monkeypatch.setitem(sys.modules, "sensor", SimSensor(SCENE, str(rig.where)))
    rig.fail = ctrl_c_at(P.CAPTURE, 4)
    rc, _, err = rig.cli("collect", label=3, count=5)
    ds = D.Dataset.open(rig.session.dataset_dir)
    assert rc == 130 and len(ds) == 15
    assert one_line(err) == (f"tinymp: collect interrupted (Ctrl-C): 3 new samples saved (15 in "
                             f"{ds.path}), none lost; run collect again to resume")
    assert rig.port.sent[-1] == P.BYE
    rig.fail = None
    rc, _, err = rig.cli("collect", label=3, count=5)  # goes on: 2 more, all 17 on the board
    assert rc == 0 and len(D.Dataset.open(rig.session.dataset_dir)) == 17
    with open_fake(rig.where) as b:
        assert b.request(P.SAMPLES_STATUS)["count"] == 17


def test_ctrl_c_while_samples_are_sent_says_they_are_kept(rig):
    rig.fail = ctrl_c_at(P.SAMPLES_PUT)
    rc, _, err = rig.cli("collect", source=rig.held)
    ds = D.Dataset.open(rig.session.dataset_dir)
    assert rc == 130 and len(ds) == 36
    assert one_line(err) == (f"tinymp: sending samples interrupted (Ctrl-C): all 36 samples are "
                             f"saved in {ds.path}; run collect again to resume")


@pytest.mark.parametrize("where", ["sync", "steps", "end"])
def test_ctrl_c_in_training_says_what_the_board_keeps(rig, where):
    before = folder_state(os.path.join(str(rig.where), "flash"))
    rig.fail = ctrl_c_at({"sync": P.SAMPLES_PUT, "steps": P.TRAIN_STEPS,
                          "end": P.TRAIN_END}[where], 2 if where == "steps" else 1)
    rc, _, err = rig.cli("train", steps=40, json=False)
    line = one_line(err)
    runs = rig.session.runs_dir
    assert rc == 130 and not (os.path.isdir(runs) and os.listdir(runs))  # no run recorded
    if where == "sync":
        assert line == (f"tinymp: training interrupted (Ctrl-C) while the dataset's samples were "
                        f"sent: all 12 are saved in {rig.session.dataset_dir}; the board keeps "
                        "its last saved parameters; no run recorded")
    elif where == "steps":
        # the first TRAIN_STEPS asks for one step; the Ctrl-C is at the second request
        assert line == ("tinymp: training interrupted (Ctrl-C) after 1 step of 40: the board "
                        "keeps its last saved parameters; no run recorded")
    else:
        assert line.startswith("tinymp: training interrupted (Ctrl-C) at its end: whether the "
                               "board saved this run's parameters is not known") and \
            line.endswith("no run recorded: train again to record one")
    if where != "end":  # no parameters written
        after = folder_state(os.path.join(str(rig.where), "flash"))
        assert {k: v for k, v in after.items() if k.startswith("params")} == \
            {k: v for k, v in before.items() if k.startswith("params")}


def _blank_board(rig):
    rig.where = rig.tmp / "blank"
    rig.where.mkdir()


@pytest.mark.parametrize("where", ["begin", "data", "commit", "info", "romfs"])
def test_ctrl_c_in_a_push_says_what_the_board_holds(rig, monkeypatch, where):
    # it printed only "tinymp: interrupted": not whether the board kept its model, committed the
    # new one or how to go on
    sha = C.hashlib.sha256(DEMO).hexdigest()
    name = "OPENMV_H7 (simulated)"
    push = C.push
    monkeypatch.setattr(C, "push", lambda *a, **kw: push(*a, chunk=4096, **kw))
    if where == "romfs":  # the board holds the model; its ROMFS copy changed behind its back
        with open(rig.where / "romfs0.bin", "r+b") as f:
            f.seek(64 + 100)
            v = f.read(1)[0]
            f.seek(64 + 100)
            f.write(bytes([v ^ 0xFF]))
    else:
        _blank_board(rig)
    rig.fail = ctrl_c_at({"begin": P.PUSH_BEGIN, "data": P.PUSH_DATA, "commit": P.PUSH_COMMIT,
                          "info": P.INFO, "romfs": P.PUSH_ROMFS}[where],
                         {"data": 3, "info": 2}.get(where, 1))
    rc, out, err = rig.cli("push")
    line = one_line(err)
    assert rc == 130 and out == ""
    assert rig.port.sent[-1] == P.BYE
    recorded = C.Session(rig.session.path).state.get("model")
    assert recorded is None or where == "romfs", recorded  # the session records no push
    check_folder(rig.session.path)
    held = _board_info(rig)["model"]
    committed = {"begin": False, "data": False, "commit": False, "info": True, "romfs": True}
    assert (held is not None and held["sha256"] == sha) == committed[where], held
    if where == "begin":
        assert line == (f"tinymp: push interrupted (Ctrl-C) as it began: {name} keeps its "
                        "previous model; run push again")
    elif where == "data":  # two 4 KB chunks were acknowledged before the third was sent
        assert line == (f"tinymp: push interrupted (Ctrl-C) with at least 8,192 of "
                        f"{len(DEMO):,} bytes on the board: {name} keeps its previous model; "
                        "run push again to resume")
    elif where == "commit":  # the same as a link lost at the commit: either model may be there
        assert line == (f"tinymp: push interrupted (Ctrl-C) at the commit: whether {name} "
                        "committed the model is not known: `tinymp status` shows the model it "
                        f"holds (this one is sha256 {sha[:12]}); run push again, which sends "
                        "nothing when the board holds it, and else resumes the push")
    elif where == "info":
        assert line == (f"tinymp: push interrupted (Ctrl-C) after {name} committed the model "
                        f"(sha256 {sha[:12]}): run push again to see where the board uses it "
                        "from (it sends nothing)")
    else:
        assert line == (f"tinymp: push interrupted (Ctrl-C) while the board wrote the model into "
                        f"ROMFS: {name} holds the model on its filesystem; whether the ROMFS "
                        "write finished is not known: `tinymp status` shows where the board uses "
                        "the model from; run push again, which finishes the write if it is not "
                        "done")
    # what the line says to run does it: push again resumes, or sends nothing
    rig.fail = None
    rc, out, err = rig.cli("push")
    assert rc == 0, err
    res = json.loads(out)
    assert res["skipped"] == committed[where]
    assert res["resumed_from"] == {"data": 8192, "commit": len(DEMO)}.get(where)
    assert _board_info(rig)["model"]["sha256"] == sha
    assert C.Session(rig.session.path).state["model"]["sha256"] == sha


def test_push_asks_info_once_after_the_commit(rig):
    # cmd_push asked INFO again after push() had: a Ctrl-C there printed only "tinymp:
    # interrupted" while the board held the new model and session.json did not record it
    _blank_board(rig)
    rc, out, err = rig.cli("push")
    assert rc == 0, err
    assert rig.port.sent.count(P.INFO) == 2  # when the board is opened, and after the commit
    meta = C.Session(rig.session.path).state["model"]
    assert meta["sha256"] == C.hashlib.sha256(DEMO).hexdigest() and meta["bytes"] == len(DEMO)
