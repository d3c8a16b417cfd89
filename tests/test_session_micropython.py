"""tinymp_agent under real MicroPython: the unix port with the tinymp module
(make firmware BOARD=UNIX -> build/unix/micropython) on a pty, and the QEMU Cortex-M7 firmware
(`--port qemu`, the agent pasted through mpremote's raw REPL). Skipped when not built."""
import hashlib
import os
import subprocess
import tty

import numpy as np
import pytest

import tinymp
from tinymp import zoo
from tinymp.session import commands as C
from tinymp.session import dataset as D
from tinymp.session import link
from tinymp.session import protocol as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPYTHON = os.environ.get("TINYMP_MICROPYTHON", os.path.join(ROOT, "build", "unix", "micropython"))
AGENT_DIR = os.path.join(ROOT, "host", "tinymp")
HELD = os.path.join(AGENT_DIR, "models", "digits_shifted_test.npz")


def _has_tinymp():
    if not os.path.isfile(MICROPYTHON):
        return False
    r = subprocess.run([MICROPYTHON, "-c", "import tinymp"], capture_output=True, timeout=30)
    return r.returncode == 0


needs_mp = pytest.mark.skipif(not _has_tinymp(), reason="needs build/unix/micropython with tinymp "
                              "(make firmware BOARD=UNIX MICROPY_DIR=...)")


class MicroPythonBoard:
    """build/unix/micropython running the agent on a pty: a board without a simulator."""

    def __init__(self, root, bitwise_crc=False):
        import serial
        master, slave = os.openpty()
        tty.setraw(slave)
        code = ("import sys\nsys.path.insert(0, %r)\nimport tinymp_agent\n" % AGENT_DIR
                + ("tinymp_agent.crc32 = tinymp_agent._crc32_bitwise\n" if bitwise_crc else "")
                # ... and a heap with room for one sample's features beside the agent's reserve,
                # not for a training run's whole feature cache: it goes to a file
                + ("tinymp_agent._mem_free = lambda: tinymp_agent.Features.RESERVE + 4096\n"
                   if bitwise_crc else "")
                + "tinymp_agent.main(root=%r, board={'name': 'unix MicroPython', "
                  "'arena_budget': 262144})\n" % root)
        self.proc = subprocess.Popen([MICROPYTHON, "-X", "heapsize=8M", "-c", code],
                                     stdin=master, stdout=master, stderr=subprocess.DEVNULL)
        os.close(master)
        ser = serial.Serial(os.ttyname(slave), timeout=0.02)
        os.close(slave)
        self.port = ser

    def board(self, faults=None):
        port = link.FaultyPort(self.port, **faults) if faults else self.port
        lk = link.Link(port, "unix MicroPython", timeout=2.0,
                       alive=lambda: None if self.proc.poll() is None else "micropython exited")
        info = lk.request(P.INFO)
        lk.max_payload = info["max_payload"]
        return link.Board(lk, "serial", info, closer=lambda: self.proc.wait(5))


@needs_mp
@pytest.mark.parametrize("bitwise_crc", [False, True])
def test_agent_on_micropython(tmp_path, bitwise_crc):
    data = zoo.demo()
    mp = MicroPythonBoard(str(tmp_path / "flash"), bitwise_crc)
    with mp.board(faults={"flip": 0.05, "dup": 0.05, "drop": 0.03, "seed": 4}) as b:
        assert b.info["implementation"] == "micropython" and b.info["firmware"] == "1.28.0"
        assert b.info["crc"] == ("bitwise" if bitwise_crc else "binascii")
        res = C.push(b, data, show=False, chunk=4000)
        assert res["sha256"] == hashlib.sha256(data).hexdigest()  # hashed by MicroPython
        meta = C.model_meta(b.info)
        assert meta["inference_arena_bytes"] == tinymp.Model(data).inference_arena_bytes
        x, y, src = D.load_samples(HELD, meta["input_shape"], meta["input_scale"],
                                   meta["input_zero_point"], meta["num_classes"])
        x, y = x[:60], y[:60]
        ev = C.evaluate(b, x, y, "pretrained", show=False, num_classes=10)
        ds = C.open_dataset(C.Session(str(tmp_path / "s")), meta, "mp")
        C.import_samples(ds, x[:20], y[:20], src[:20], show=False)
        assert C.sync_samples(b, ds, show=False) == 20
        trainer = b.info["trainer"]
        rec = None
        if trainer:
            rec = C.train(b, ds, {"method": "tinymp", "lr": 0.002, "seed": 5}, steps=30,
                          show=False)
            ev_after = C.evaluate(b, x, y, "personalised", show=False, num_classes=10)
            # a trial run on MicroPython's filesystem: kept aside, measured, then saved
            trial = C.train(b, ds, {"method": "tinymp", "lr": 0.002, "seed": 6}, steps=5,
                            save=False, show=False)
            assert trial["end"]["trial"] is True
            assert (tmp_path / "flash" / "params.try").exists()
            kept = (tmp_path / "flash" / "params.bin").read_bytes()
            assert C.evaluate(b, x[:8], y[:8], "trial", show=False, num_classes=10)["params"] == "trial"
            assert b.request(P.PARAMS_SAVE) == {"saved": True, "from": "trial"}
            assert not (tmp_path / "flash" / "params.try").exists()
            assert (tmp_path / "flash" / "params.prev").read_bytes() == kept
    with open(tmp_path / "flash" / "model.tmpm", "rb") as f:
        assert f.read() == data
    m = tinymp.Model(data)
    here = np.array([m.predict(v.tobytes()) for v in x])
    assert ev["accuracy"] == pytest.approx(float((here == y).mean()))
    with open(tmp_path / "flash" / "samples.bin", "rb") as f:
        raw = f.read()[16:]
    assert len(raw) == 20 * (8 + 1024) and raw[8:8 + 1024] == x[0].tobytes()
    if not trainer:
        pytest.skip("this MicroPython build has no tinymp.Trainer yet: training not run")
    # the same training with the PC build of the engine, in the board's sample order
    from test_session_sim import _replica_order
    plan = m.plan(method="tinymp", budget=262144)
    tr = tinymp.Trainer(m, plan, lr=0.002, seed=5)
    f = {k: i for i, k in enumerate(rec["fields"])}
    for k, (e, i) in enumerate(zip(rec["events"], _replica_order(20, 5, 30))):
        if k > 0 and k % 20 == 0:
            tr.end_period()  # the agent closes an APU period at every epoch
        assert e[f["sample"]] == i
        assert e[f["pred"]] == tr.predict(x[i].tobytes())
        assert e[f["loss"]] == pytest.approx(tr.step(x[i].tobytes(), int(y[i])), rel=1e-5)
    assert rec["end"]["plan"]["arena_bytes"] == plan.arena_bytes
    # steps 21-30 came round to samples a second time: from their kept features, in RAM or (the
    # bitwise-CRC board, whose heap is made to look short) in a file on MicroPython's filesystem
    assert rec["end"]["features"] == {"where": "file" if bitwise_crc else "ram",
                                      "bytes": 20 * plan.cache_bytes,
                                      "sample_bytes": plan.cache_bytes, "cached_steps": 10}
    # and each event says so: the first 20 steps from the inputs, the last 10 from the features
    assert [e[f["cached"]] for e in rec["events"]] == [False] * 20 + [True] * 10
    assert not (tmp_path / "flash" / "features.bin").exists()
    assert rec["end"]["clock"] == "board"  # measured with time.ticks_us on this "board"
    assert all(e[f["step_us"]] > 0 and e[f["step_cycles"]] is not None for e in rec["events"])
    here = np.array([tr.predict(v.tobytes()) for v in x])
    assert ev_after["params"] == "personalised"
    assert ev_after["accuracy"] == pytest.approx(float((here == y).mean()))


@needs_mp
@pytest.mark.parametrize("bitwise_crc", [False, True])
def test_features_kept_between_runs_on_micropython(tmp_path, bitwise_crc):
    """--keep-features on MicroPython (in RAM, then written after the run; or, on the board
    whose heap looks short, in features.kept during it): the second run starts every step from
    the first run's features and trains exactly as the first did from the inputs."""
    data = zoo.demo()
    mp = MicroPythonBoard(str(tmp_path / "flash"), bitwise_crc)
    opts = {"method": "tinymp", "lr": 0.002, "seed": 5, "keep_features": True, "fresh": True}
    with mp.board() as b:
        C.push(b, data, show=False)
        meta = C.model_meta(b.info)
        x, y, src = D.load_samples(HELD, meta["input_shape"], meta["input_scale"],
                                   meta["input_zero_point"], meta["num_classes"])
        ds = C.open_dataset(C.Session(str(tmp_path / "s")), meta, "mp")
        C.import_samples(ds, x[:10], y[:10], src[:10], show=False)
        runs = [C.train(b, ds, opts, steps=20, show=False) for _ in range(2)]
    plan = tinymp.Model(data).plan(method="tinymp", budget=262144)
    where = "file" if bitwise_crc else "ram"
    f = {k: i for i, k in enumerate(runs[0]["fields"])}
    cols = [f[k] for k in ("sample", "label", "pred", "loss")]
    assert [[e[c] for c in cols] for e in runs[1]["events"]] == \
        [[e[c] for c in cols] for e in runs[0]["events"]]
    assert [e[f["cached"]] for e in runs[0]["events"]] == [False] * 10 + [True] * 10
    assert [e[f["cached"]] for e in runs[1]["events"]] == [True] * 20
    for r, reused in zip(runs, (0, 10)):
        assert r["end"]["features"] == {"where": where, "bytes": 10 * plan.cache_bytes,
                                        "sample_bytes": plan.cache_bytes,
                                        "cached_steps": 20 - 10 + reused, "reused": reused,
                                        "kept": True}
    kept = (tmp_path / "flash" / "features.kept").read_bytes()
    assert len(kept) == 96 + 10 * (12 + plan.cache_bytes)
    assert not (tmp_path / "flash" / "features.bin").exists()
    # and `tinymp status` reads what the file holds from MicroPython's INFO (agent 8)
    with MicroPythonBoard(str(tmp_path / "flash"), bitwise_crc).board() as b:
        st = C.board_status(b, C.Session(str(tmp_path / "s")))
    assert st["features"] == {"bytes": len(kept), "samples": 10, "first": plan.first,
                              "sample_bytes": plan.cache_bytes, "current": True}


# The agent on a RAM disk of MicroPython's own filesystems (FAT, whose rename refuses an existing
# name, and littlefs), filled so that a save of trained parameters, or samples, find no room: the
# binding's write and the agent's meet a real "no space" from the filesystem, not a stand-in.
RAM_DISK = r"""
import os, sys, vfs
sys.path.insert(0, AGENT_DIR)
import tinymp_agent as A


class RAM:
    def __init__(self, n):
        self.data = bytearray(n * 512)
        self.n = n

    def readblocks(self, b, buf, off=0):
        a = b * 512 + off
        buf[:] = self.data[a:a + len(buf)]

    def writeblocks(self, b, buf, off=None):
        a = b * 512 + (off or 0)
        self.data[a:a + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return 512
        if op == 6:
            return 0


dev = RAM(512)
FS.mkfs(dev)
vfs.mount(FS(dev), "/ram")
root = "/ram/t"
ag = A.Agent(root=root, board={"name": "ram", "arena_budget": 262144})
A._write_file(root + "/model.tmpm", open(MODEL, "rb").read())
m = ag._load_model()
size = ag._sample_bytes(m)


def sample(k):
    return bytes(((i * 31 + k * 7) & 0xFF) for i in range(size))


def read(name):
    try:
        with open(root + "/" + name, "rb") as f:
            return f.read()
    except OSError:
        return None


def free():
    st = os.statvfs("/ram")
    return st[0] * st[4]


def fill(leave):
    # ballast so that about `leave` bytes stay free
    A._remove("/ram/ballast")
    n = free() - leave
    with open("/ram/ballast", "wb") as f:
        while n > 0:
            k = min(n, 512)
            f.write(bytes(k))
            n -= k
"""

FULL_DISK = RAM_DISK + r"""
ag.store.reset(size, 7)
for k in range(6):
    ag.store.append(k, k % m.num_classes, sample(k))


def run(seed):
    ag.do_train_start({"method": "full", "steps": 3, "seed": seed, "lr": 0.01})
    ag.do_train_steps({"n": 3})
    return ag.do_train_end({"save": True})


def names():
    return sorted(n for n in os.listdir(root) if n.startswith("params"))


def seed_of(name):
    return A.decode(read(name))["options"]["seed"]


run(1)
run(2)
P = len(read("params.bin"))
bin2, opt2 = read("params.bin"), read("params.opt")
# room for one copy once the rollback's goes: the save drops it and goes through
fill(P // 2)
r = run(3)
print("fits-once-dropped", r["saved"], r.get("save_error"), read("params.prev") == bin2,
      seed_of("params.opt"), seed_of("params.prev.opt"), names())
# no rollback to drop and no room: the saved parameters stay, whole
ag.do_params_rollback({})
bin2, opt2 = read("params.bin"), read("params.opt")
fill(P // 2)
r = run(4)
print("no-room", r["saved"], r.get("save_error") == "no room left on the board's filesystem",
      read("params.bin") == bin2, read("params.opt") == opt2, names())
# a board that starts again finds the same files
A.Agent(root=root, board={"name": "ram"})
print("restart", read("params.bin") == bin2, names())
"""


def run_on_a_ram_disk(tmp_path, fs, body):
    """Run the script `body` under the unix MicroPython with AGENT_DIR, MODEL and FS (the
    filesystem class `fs` of module vfs) defined: (the process, {first word: rest} of each line
    it printed)."""
    script = tmp_path / "script.py"
    script.write_text("AGENT_DIR = %r\nMODEL = %r\nimport vfs\nFS = vfs.%s\n" % (
        AGENT_DIR, os.path.join(AGENT_DIR, "models", "demo.tmpm"), fs) + body)
    r = subprocess.run([MICROPYTHON, "-X", "heapsize=8M", str(script)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r, {ln.split()[0]: ln.split(None, 1)[1] for ln in r.stdout.splitlines()}

@needs_mp
@pytest.mark.parametrize("fs", ["VfsFat", "VfsLfs2"])
def test_a_save_with_no_room_on_micropython_filesystems(tmp_path, fs):
    r, lines = run_on_a_ram_disk(tmp_path, fs, FULL_DISK)
    four = "['params.bin', 'params.opt', 'params.prev', 'params.prev.opt']"
    two = "['params.bin', 'params.opt']"
    assert lines["fits-once-dropped"] == f"True None True 3 2 {four}", r.stdout
    assert lines["no-room"] == f"False True True True {two}", r.stdout
    assert lines["restart"] == f"True {two}", r.stdout


# The sample store on the same RAM disks: filled by SAMPLES_PUT until there is no room, with a
# record torn by a reset and the room left for one record only (the store is written in place,
# never copied), on a board that starts full (it clears its store and takes a new one).
FULL_STORE = RAM_DISK + r"""
REC = 8 + size


def put(first, n, uid=7):
    return ag.do_samples_put({"dataset": uid, "first": first,
                              "labels": [k % m.num_classes for k in range(first, first + n)],
                              "data": b"".join(sample(k) for k in range(first, first + n))})


def attempt(first, n, uid=7):
    # the count the put leaves, or the refusal's code (or another exception's name)
    try:
        return put(first, n, uid)["count"]
    except A.Fail as e:
        return e.args[0]
    except Exception as e:
        return type(e).__name__


def whole():
    # the store as a board that starts again reads it: count, last id, whole records right,
    # bytes of a torn record
    s = A.Store(root + "/samples.bin")
    buf = bytearray(size)
    ok = all(s.get(k, buf) == (k, k % m.num_classes) and bytes(buf) == sample(k)
             for k in range(s.count))
    raw = read("samples.bin")
    return s.count, s.last_id, ok, None if raw is None else len(raw) - 16 - s.count * REC


def fill_up():
    # ballast until the filesystem refuses more (each piece synced: littlefs keeps what a sync
    # committed)
    A._remove("/ram/ballast")
    try:
        with open("/ram/ballast", "wb") as f:
            while True:
                f.write(bytes(512))
                f.flush()
    except OSError as e:
        if e.args[0] != 28:
            raise


fill(40 * REC)
# the room the agent says it has (agent 9), set against what the filesystem then takes
st0, free0 = ag.do_samples_status(None), free()
room0 = st0["free"] // (size + st0["record_extra"])
n, why = 0, None
while why is None:
    try:
        n = put(n, 8)["last_id"] + 1
    except Exception as e:
        why = e.args if isinstance(e, A.Fail) else (type(e).__name__, str(e))
held = ag.store.count
print("full", why[0], why[1] == "no room left on the board's filesystem: sample %d was not "
      "stored; the board holds %d samples (ids 0..%d)" % (held, held, held - 1),
      20 < held < 60, whole()[:3] == (held, held - 1, True), ag.store.last_id == held - 1)
print("room", st0["free"] == free0, st0["store_bytes"], st0["record_extra"] == REC - size,
      room0 - held)
# room again: the rest goes on after the whole records (on FAT, over the part of the record
# that did not fit: a torn record)
A._remove("/ram/ballast")
print("resumed", attempt(held, 3) == held + 3, whole() == (held + 3, held + 2, True, 0))
# a record torn by a reset, and room for about one record more: written over in place
with open(root + "/samples.bin", "ab") as f:
    f.write(bytes(500))
A._write_file("/ram/spare", bytes(REC + 1024))
fill_up()
os.remove("/ram/spare")
ag = A.Agent(root=root, board={"name": "ram"})
print("torn", ag.store.count == held + 3, attempt(held + 3, 1) == held + 4,
      whole() == (held + 4, held + 3, True, 0))
# a board that starts with no room at all: still a board with storage, whose store clears
fill_up()
ag = A.Agent(root=root, board={"name": "ram"})
print("start-full", ag.storage, ag.store.count == held + 4)
print("clear", ag.do_samples_clear({}), read("samples.bin"), ag.store.count)
fill_up()
new = attempt(0, 1, uid=8)
print("new-store", "stored" if new == 1 else new, whole()[:2] == (ag.store.count, ag.store.last_id),
      sorted(n for n in os.listdir(root) if n.endswith(".tmp")))
"""


@needs_mp
@pytest.mark.parametrize("fs", ["VfsFat", "VfsLfs2"])
def test_samples_with_no_room_on_micropython_filesystems(tmp_path, fs):
    r, lines = run_on_a_ram_disk(tmp_path, fs, FULL_STORE)
    assert lines["full"] == "no_space True True True True", r.stdout
    # SAMPLES_STATUS's room (agent 9): the filesystem's own free bytes, no store yet; its
    # estimate is from above (the PC never refuses samples that would fit) and close
    same, store, extra, over = lines["room"].split()
    assert (same, store, extra) == ("True", "0", "True"), r.stdout
    assert 0 <= int(over) <= 2, r.stdout
    assert lines["resumed"] == "True True", r.stdout
    assert lines["torn"] == "True True True", r.stdout
    assert lines["start-full"] == "True True", r.stdout
    assert lines["clear"] == "{'count': 0} None 0", r.stdout
    # a 16-byte header fits or not (littlefs keeps it in its metadata); either way nothing torn
    assert lines["new-store"] in ("stored True []", "no_space True []"), r.stdout


# Features kept between runs on the same RAM disks, nearly full: a store cleared and filled again
# with other samples of the same labels, a run of one step whose record makes the new file grow
# past its end, and a run after it that must take that record only and train as without the file
# (test_session_features_kept has the case of a file grown over an earlier file's records).
KEPT_DISK = RAM_DISK + r"""
N = 8
LEAVE = 8192


def put(base):
    return ag.do_samples_put({"dataset": 7, "first": 0, "labels": [k % 3 for k in range(N)],
                              "data": b"".join(sample(base + k) for k in range(N))})


def run(steps, keep=True):
    opts = {"method": "tinymp", "steps": steps, "seed": 3, "lr": 0.01, "fresh": True}
    if keep:
        opts["keep_features"] = True
    start = ag.do_train_start(opts)
    losses = [e[4] for e in ag.do_train_steps({"n": steps})["events"]]
    end = ag.do_train_end({"save": True})
    return start["features"], end["features"], losses


put(0)
a = run(N)
print("first", a[1]["reused"], a[1]["kept"], len(read("features.kept")))
fill(LEAVE)
ag.do_samples_clear({})
put(100)
b = run(1)
print("one-step", b[1]["kept"], len(read("features.kept")))
c = run(2 * N)
d = run(2 * N, keep=False)
print("again", c[0]["reused"], c[2] == d[2], read("features.kept") is None)
"""


@needs_mp
@pytest.mark.parametrize("fs", ["VfsFat", "VfsLfs2"])
def test_kept_features_on_micropython_filesystems(tmp_path, fs):
    r, lines = run_on_a_ram_disk(tmp_path, fs, KEPT_DISK)
    rec = 12 + tinymp.Model(zoo.demo()).plan(method="tinymp", budget=262144).cache_bytes
    assert lines["first"] == f"0 True {96 + 8 * rec}", r.stdout
    # one record written, at its sample's place: the file grew past its end to get there
    kept, length = lines["one-step"].split()
    assert kept == "True" and int(length) > 96 + rec, r.stdout
    # only that one record is taken; the run trains as it does without the file, and a run
    # without the option removes the file
    assert lines["again"] == "1 True True", r.stdout


@pytest.mark.skipif(link.qemu_firmware() is None or not os.path.exists("/usr/bin/qemu-system-arm"),
                    reason="needs the QEMU firmware (make firmware BOARD=QEMU_M7) and qemu-system-arm")
def test_agent_pasted_into_qemu_cortex_m7():
    with link.open_board("qemu") as b:
        i = b.info
        assert i["implementation"] == "micropython" and "Cortex-M7" in i["board"]
        assert i["max_payload"] <= 16384  # sized from the emulated board's free heap
        assert b.request(P.SAMPLES_STATUS)["count"] == 0
        if not i["storage"]:
            with pytest.raises(link.BoardError) as e:
                b.request(P.PUSH_BEGIN, {"size": 100, "sha256": "0" * 64})
            assert e.value.code == "no_storage"

