"""Every file a user gives the PC side is checked: a damaged, cut short or wrong one ends the
command with one line on stderr starting 'tinymp:' and exit status 2, no traceback, and nothing in
the session folder changed. Each reader is fuzzed through the command that reads it, with mutants
of a good file from a fixed-seed generator:

    samples files     `collect --from`, `eval --data` and the `collect`/`eval` items of
                      `tinymp session` (dataset.load_samples)
    dataset folders   the session's dataset (manifest.json, samples.jsonl, the shards) through
                      collect, train, eval, report, status and the session flow (Dataset.open)
    calibration       `tinymp convert MODEL.onnx --calib FILE.npy`
    session configs   `tinymp session CONFIG` (JSON or TOML: run.load_config)
    scenes            the simulated camera's `--scene FILE.npz` (simboard.check_scene)
"""
import contextlib
import io
import json
import math
import os
import shutil
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

from test_session_replies import PROFILE, SCENE, Rig, folder_state, no_hang, one_line
from tinymp import cli
from tinymp.session import run
from tinymp.session.simboard import SimSensor

SEED = 20240607


@pytest.fixture
def rig(tmp_path, monkeypatch, capsys):
    return Rig(tmp_path, monkeypatch, capsys)


# --- helpers --------------------------------------------------------------------------------

def restore(path, state):
    """Put the folder back as folder_state saw it (after a command that was let through)."""
    for name in set(folder_state(path)) - set(state):
        os.remove(os.path.join(path, name))
    for name, data in state.items():
        p = os.path.join(path, name)
        if os.path.isdir(p):  # a mutant put a folder where the file was
            shutil.rmtree(p)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)


@contextlib.contextmanager
def memory_cap(what, problems, on=True):
    """With `on`, adds to `problems` when the block allocated more than 64 MB (a header that
    declares gigabytes must be refused from the header, not read)."""
    if not on:
        yield
        return
    tracemalloc.start()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if peak > 64 << 20:
            problems.append(f"{what}: allocated {peak:,} bytes")


def check_refusal(what, fn, folder, before, problems, memory=False, kept=None):
    """Run fn() (a command: (status, stdout, stderr lines)); a refusal must be status 2, one line
    starting 'tinymp:', no traceback and the session folder as it was; a command that is let
    through must leave kept() true (nothing lost), and is undone (restore). Whatever is wrong is
    added to `problems`. Returns the status."""
    try:
        with memory_cap(what, problems, memory):
            rc, out, err = no_hang(fn)
    except Exception as e:  # noqa: BLE001 - what these tests are about
        problems.append(f"{what}: {type(e).__name__} escaped: {str(e)[:200]}")
        restore(folder, before)
        return None
    if rc == 0:  # a mutant that is still a good file (a changed byte no one reads)
        if kept is not None and not kept():
            problems.append(f"{what}: status 0, and samples were lost")
        restore(folder, before)
        return rc
    text = out + "".join(err)
    if rc != 2 or len(err) != 1 or not err[0].startswith("tinymp:") or "Traceback" in text:
        problems.append(f"{what}: status {rc}, stderr {err[:3]}")
    if folder_state(folder) != before:
        problems.append(f"{what}: the session folder changed")
        restore(folder, before)
    return rc


def no_problems(problems, n):
    assert not problems, f"{len(problems)} of {n} runs went wrong:\n" + "\n".join(problems[:12])


def npy(a, **kw):
    b = io.BytesIO()
    np.save(b, a, **kw)
    return b.getvalue()


def npy_header(descr, shape, data=b""):
    """A .npy whose header declares an array of `descr` (numpy's dtype text) and `shape`,
    followed by `data`."""
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": descr, "fortran_order": False,
                                             "shape": shape})
    return b.getvalue() + data


def zipped(members, compressed=False):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return b.getvalue()


def byte_mutants(good, rng, cuts, flips, hot=()):
    """Truncations of `good` at `cuts` offsets (the first bytes, then spread), and `flips`
    copies with 1 to 3 bytes changed (half of them in the `hot` ranges: headers)."""
    offsets = sorted(set(list(range(0, 12)) + list(rng.integers(0, len(good), cuts))))
    for n in offsets[:cuts]:
        yield f"cut at {n}", good[:n]
    for k in range(flips):
        d = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            if hot and k % 2:
                lo, hi = hot[int(rng.integers(len(hot)))]
                i = int(rng.integers(lo, min(hi, len(d))))
            else:
                i = int(rng.integers(len(d)))
            d[i] ^= int(rng.integers(1, 256))
        yield f"flip {k}", bytes(d)



def bomb(head, n, rest=()):
    """A deflated .npz whose member x.npy is the .npy header `head` followed by `n` zero bytes
    (a few hundred KB on disk that inflate to `n`), with the members `rest` ({name: bytes})."""
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as m:
            m.write(head)
            zeros = bytes(1 << 20)
            for k in range(0, n, len(zeros)):
                m.write(zeros[:n - k])
        for name, data in rest:
            z.writestr(name, data)
    return b.getvalue()

# --- 1. samples files (load_samples) --------------------------------------------------------

def _samples_mutants(rig, rng):
    """(description, bytes or a callable making a folder) of samples files, from the rig's good
    held-out file."""
    with open(rig.held, "rb") as f:
        good = f.read()
    with np.load(rig.held) as d:
        x, y = d["x"], d["y"]
    xb, yb = npy(x), npy(y)
    # the .npy headers inside the archive, and its central directory at the end
    hot = [(0, 200), (good.find(b"\x93NUMPY", 100) - 40, good.find(b"\x93NUMPY", 100) + 128),
           (len(good) - 250, len(good))]
    yield from byte_mutants(good, rng, 40, 90, hot)
    packed = zipped({"x.npy": xb, "y.npy": yb}, compressed=True)
    yield from ((f"deflated {w}", m) for w, m in byte_mutants(packed, rng, 10, 30))
    u8 = x.view(np.uint8)
    crafted = {
        "empty file": b"",
        "random bytes": rng.bytes(3000),
        "a zip's signature, then garbage": b"PK\x03\x04garbage",
        "a .npy of the samples": xb,
        "numpy's signature, then garbage": b"\x93NUMPY\x01\x00garbage",
        "only x": zipped({"x.npy": xb}),
        "only y": zipped({"y.npy": yb}),
        "other members": zipped({"a.npy": xb, "b.npy": yb}),
        "x is text": zipped({"x.npy": b"hello, world", "y.npy": yb}),
        "x in a folder": zipped({"data/x.npy": xb, "data/y.npy": yb}),
        "x of objects": zipped({"x.npy": npy(np.array([{}, 1], dtype=object),
                                             allow_pickle=True), "y.npy": yb}),
        "y of objects": zipped({"x.npy": xb, "y.npy": npy(np.array([None] * len(y)),
                                                          allow_pickle=True)}),
        "x complex": zipped({"x.npy": npy(x.astype(np.complex64)), "y.npy": yb}),
        "x bool": zipped({"x.npy": npy(x > 0), "y.npy": yb}),
        "x int16": zipped({"x.npy": npy(x.astype(np.int16)), "y.npy": yb}),
        "x text": zipped({"x.npy": npy(x.astype("U1")), "y.npy": yb}),
        "x structured": zipped({"x.npy": npy(u8.astype([("a", "u1")])), "y.npy": yb}),
        "x dates": zipped({"x.npy": npy(x.astype("datetime64[s]")), "y.npy": yb}),
        "x NaN": zipped({"x.npy": npy(np.full(x.shape, np.nan, np.float32)), "y.npy": yb}),
        "x 2-D": zipped({"x.npy": npy(x.reshape(len(x), -1)), "y.npy": yb}),
        "x 5-D": zipped({"x.npy": npy(x[..., None]), "y.npy": yb}),
        "x other size": zipped({"x.npy": npy(x[:, :16]), "y.npy": yb}),
        "x 3 channels": zipped({"x.npy": npy(np.repeat(x, 3, axis=3)), "y.npy": yb}),
        "x a number": zipped({"x.npy": npy(np.int8(3)), "y.npy": yb}),
        "y float": zipped({"x.npy": xb, "y.npy": npy(y + 0.5)}),
        "y bool": zipped({"x.npy": xb, "y.npy": npy(y > 3)}),
        "y text": zipped({"x.npy": xb, "y.npy": npy(y.astype("U2"))}),
        "y 2-D": zipped({"x.npy": xb, "y.npy": npy(y[:, None])}),
        "y short": zipped({"x.npy": xb, "y.npy": npy(y[:-1])}),
        "y a number": zipped({"x.npy": xb, "y.npy": npy(np.int64(1))}),
        "y past the classes": zipped({"x.npy": xb, "y.npy": npy(y * 0 + 10)}),
        "y negative": zipped({"x.npy": xb, "y.npy": npy(y * 0 - 1)}),
        "y huge": zipped({"x.npy": xb, "y.npy": npy(y.astype(np.uint64) + 2 ** 63)}),
        "no samples": zipped({"x.npy": npy(x[:0]), "y.npy": npy(y[:0])}),
        "x declares 4 GB": zipped({"x.npy": npy_header("|u1", (4_000_000, 32, 32, 1),
                                                       xb[-100:]), "y.npy": yb}),
        "x declares 8 TB": zipped({"x.npy": npy_header("<f8", (10 ** 9, 32, 32, 1),
                                                       xb[-100:]), "y.npy": yb}),
        "y declares 80 GB": zipped({"x.npy": xb, "y.npy": npy_header("<i8", (10 ** 10,),
                                                                     yb[-64:])}),
        "x declares a negative size": zipped({"x.npy": npy_header("|u1", (-1, 32, 32, 1),
                                                                  xb[-100:]), "y.npy": yb}),
        "x declares 4 G strings": zipped({"x.npy": npy_header("<U1000000000", (24, 32, 32, 1)),
                                          "y.npy": yb}),
        "x longer than its header": zipped({"x.npy": npy(x[:12]) + xb[-12288:], "y.npy": yb}),
    }
    yield from crafted.items()

    def empty_folder(p):
        os.makedirs(p)

    def some_files(p):
        os.makedirs(p)
        with open(os.path.join(p, "notes.txt"), "w") as f:
            f.write("not a dataset")

    yield "an empty folder", empty_folder
    yield "a folder of other files", some_files


def _write_mutant(tmp, k, data):
    p = str(tmp / f"m{k}.npz")
    if callable(data):
        data(p)
    else:
        with open(p, "wb") as f:
            f.write(data)
    return p


def test_fuzz_samples_files(rig):
    # collect --from, collect --from --eval and eval --data read the file after the board is
    # opened, the session flow before it: each refuses a bad file the same way
    rng = np.random.default_rng(SEED)
    folder = rig.session.path
    before = folder_state(folder)
    tmp = rig.tmp / "mutants"
    tmp.mkdir()
    cfg = str(rig.tmp / "flow.json")
    n = refused = 0
    problems = []
    for k, (what, data) in enumerate(_samples_mutants(rig, rng)):
        p = _write_mutant(tmp, k, data)
        with open(cfg, "w") as f:
            json.dump({"model": rig.model, "port": "sim", "board": PROFILE, "session": folder,
                       "collect": [{"from": p}], "eval": p, "train": {"steps": 1},
                       "plots": False}, f)
        runs = [("collect", lambda: rig.cli("collect", source=p)),
                ("eval", lambda: rig.cli("eval", data=p))]
        if k % 4 == 0 or not what.startswith(("cut", "flip", "deflated")):
            runs.append(("collect --eval", lambda: rig.cli("collect", source=p, eval=True)))
            runs.append(("session", lambda: _flow(rig, cfg)))
        for name, fn in runs:
            rc = check_refusal(f"{what}: {name}", fn, folder, before, problems,
                               memory="declares" in what)
            n += 1
            refused += rc != 0
    no_problems(problems, n)
    assert n > 400 and refused > 0.9 * n, (n, refused)


def _flow(rig, cfg):
    args = rig.args(config=cfg, m7=False)
    rig.capsys.readouterr()
    rc = run.handle_errors(run.cmd_session, args)
    out, err = rig.capsys.readouterr()
    return rc, out, err.strip().splitlines()


def test_a_zip_bomb_is_refused_from_its_headers(rig, monkeypatch):
    # a small archive that inflates to 100 MB: of a shape the model does not take, it is refused
    # from the headers without inflating (allocating) anything; of the right shape but more than
    # this computer's memory (made 50 MB here), refused the same way
    from tinymp import _arrayfiles
    (h, w, c), _, _, _ = rig._fmt()
    folder = rig.session.path
    before = folder_state(folder)
    count = (100 << 20) // (h * w * c)
    n = count * h * w * c
    y = npy(np.zeros(count, np.int64))
    cases = [("wrong.npz", bomb(npy_header("|u1", (count, h * w * c)), n, [("y.npy", y)]),
              f"tinymp: samples in {rig.tmp / 'wrong.npz'} have shape ({h * w * c},); the model "
              f"takes {h}x{w}x{c} (H x W x C)"),
             ("big.npz", bomb(npy_header("|u1", (count, h, w, c)), n, [("y.npy", y)]),
              f"tinymp: cannot read samples from {rig.tmp / 'big.npz'}: its arrays hold "
              f"{n + 8 * count:,} bytes of data, more than this computer's memory "
              f"({50 << 20:,} bytes)")]
    assert all(len(data) < 2 << 20 for _, data, _ in cases)
    monkeypatch.setattr(_arrayfiles, "_memory_bytes", lambda: 50 << 20)
    problems = []
    for name, data, says in cases:
        p = rig.tmp / name
        p.write_bytes(data)
        for cmd, fn in [("collect", lambda: rig.cli("collect", source=str(p))),
                        ("eval", lambda: rig.cli("eval", data=str(p)))]:
            check_refusal(f"{name}: {cmd}", fn, folder, before, problems, memory=True)
            rc, out, err = fn()
            assert one_line(err) == says, (name, cmd, err)
    no_problems(problems, 2 * len(cases))

def test_samples_file_messages(rig):
    # what the user reads for the usual mistakes
    tmp = rig.tmp
    with np.load(rig.held) as d:
        x, y = d["x"], d["y"]
    cases = {
        "cut.npz": (b"PK\x03\x04garbage", "it is a zip archive that is truncated or damaged"),
        "noise.npz": (bytes(range(256)) * 4, "it is not an .npz archive (a zip of .npy arrays)"),
        "one.npy": (npy(x), "it is a single numpy array (.npy), not an .npz archive; give an "
                            ".npz of samples x and labels y, as numpy.savez(FILE, x=..., y=...) "
                            "writes, or a dataset folder"),
        "nolabels.npz": (zipped({"x.npy": npy(x)}), "it holds no array 'y' (it holds 'x')"),
        "pickled.npz": (zipped({"x.npy": npy(np.array([{}], dtype=object), allow_pickle=True),
                                "y.npy": npy(y)}), "array 'x': it holds Python objects"),
        "huge.npz": (zipped({"x.npy": npy_header("|u1", (4_000_000, 32, 32, 1)),
                             "y.npy": npy(y)}),
                     "array 'x': its header declares a uint8 array of shape (4000000, 32, 32, 1) "
                     "(4,096,000,000 bytes of data) but 0 bytes follow it: the file is truncated "
                     "or damaged"),
    }
    for name, (data, says) in cases.items():
        p = tmp / name
        p.write_bytes(data)
        rc, out, err = rig.cli("collect", source=str(p))
        assert rc == 2 and one_line(err).startswith(f"tinymp: cannot read samples from {p}: "), err
        assert says in err[0], (name, err)
    os.mkdir(tmp / "plain")
    rc, out, err = rig.cli("eval", data=str(tmp / "plain"))
    assert rc == 2 and one_line(err) == f"tinymp: {tmp / 'plain'} is not a dataset folder (no " \
        "manifest.json): give an .npz of samples or a dataset folder tinymp made (a session's " \
        "dataset or eval folder)"


# --- 2. dataset folders (Dataset.open) ------------------------------------------------------

ODD = [None, True, False, 0, -1, 1, 16, 2 ** 31, 2 ** 64, 1.5, math.nan, "text", [], {}, [32, 32]]
FOLDER = object()  # a folder where the file was


def _places(v, at=()):
    """The places of a JSON value: its keys and its lists' items (the first of a long list)."""
    if isinstance(v, dict):
        for k, x in v.items():
            yield at + (k,)
            yield from _places(x, at + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v[:1] if len(v) > 3 else v):
            yield at + (i,)
            yield from _places(x, at + (i,))


def _set(v, place, odd, drop=False):
    import copy
    v = copy.deepcopy(v)
    cur = v
    for k in place[:-1]:
        cur = cur[k]
    if drop:
        del cur[place[-1]]
    else:
        cur[place[-1]] = odd
    return v


def _json_mutants(good, rng, cuts=10, flips=10, per_place=len(ODD)):
    """(description, bytes) of a JSON object: each place dropped and set to `per_place` of the
    ODD values, the whole replaced, cut short, bytes changed, not UTF-8, nested past Python's
    limit."""
    for place in _places(good):
        yield f"drop {place}", json.dumps(_set(good, place, None, True)).encode()
        for i in sorted(rng.choice(len(ODD), per_place, replace=False)):
            yield f"{place} = {ODD[i]!r}", json.dumps(_set(good, place, ODD[i])).encode()
    for odd in ODD + ["", 7]:
        yield f"= {odd!r}", json.dumps(odd).encode()
    text = json.dumps(good, indent=1).encode()
    yield from byte_mutants(text, rng, cuts, flips)
    yield "not UTF-8", text.replace(b'"', b'"\xff', 1)
    yield "nested too deep", b"[" * 100000 + b"]" * 100000
    yield "a NUL byte", b"\0" + text


def _dataset_mutants(ds_dir, rng):
    """(description, {file of the dataset folder: bytes, None (removed) or FOLDER})."""
    def read(name):
        with open(os.path.join(ds_dir, name), "rb") as f:
            return f.read()
    manifest, log, shard = read("manifest.json"), read("samples.jsonl"), read("shard-00000.bin")
    for what, data in _json_mutants(json.loads(manifest), rng, per_place=6):
        yield f"manifest {what}", {"manifest.json": data}
    yield "manifest missing", {"manifest.json": None}
    yield "manifest a folder", {"manifest.json": FOLDER}
    lines = log.splitlines(keepends=True)
    rec = json.loads(lines[5])
    for what, data in _json_mutants(rec, rng, cuts=4, flips=4, per_place=8):
        if b"\n" not in data:  # one line: a whole record of another shape
            yield f"record 5 {what}", {"samples.jsonl": b"".join(lines[:5]) + data + b"\n" +
                                       b"".join(lines[6:])}
    for what, data in byte_mutants(log, rng, 12, 12):
        yield f"samples.jsonl {what}", {"samples.jsonl": data}
    extra = json.dumps({"i": 12, "label": 0, "t": 1, "board": None, "source": None}).encode()
    yield "a record without its sample", {"samples.jsonl": log + extra + b"\n"}
    yield "the log without its last newline", {"samples.jsonl": log[:-1]}
    yield "samples.jsonl missing", {"samples.jsonl": None}
    yield "samples.jsonl empty", {"samples.jsonl": b""}
    yield "samples.jsonl a folder", {"samples.jsonl": FOLDER}
    yield "manifest and samples.jsonl missing", {"manifest.json": None, "samples.jsonl": None}
    for n in (0, 1, 1023, 1024, 6000, len(shard) - 1):
        yield f"shard cut at {n}", {"shard-00000.bin": shard[:n]}
    for n in (1, 1023, 1024, 5000):
        yield f"shard {n} bytes long", {"shard-00000.bin": shard + rng.bytes(n)}
    yield "shard missing", {"shard-00000.bin": None}
    yield "shard a folder", {"shard-00000.bin": FOLDER}
    yield "a stray second shard", {"shard-00001.bin": rng.bytes(3000)}


def _apply(ds_dir, changes):
    for name, data in changes.items():
        p = os.path.join(ds_dir, name)
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)
        if data is FOLDER:
            os.mkdir(p)
        elif data is not None:
            with open(p, "wb") as f:
                f.write(data)


def test_fuzz_dataset_folders(rig):
    # collect appends to the dataset (it opens it to write), train sends it, eval reads it (as
    # the session's or as --data), the session flow checks it before the board; status and
    # report name it. A refused command changes nothing; one let through keeps every sample the
    # mutant's log still names in whole, and all but the last of the shard's
    assert rig.cli("train")[0] == 0  # a run for report to read
    rng = np.random.default_rng(SEED + 1)
    folder = rig.session.path
    ds_dir = rig.session.dataset_dir
    clean = folder_state(folder)
    cfg = str(rig.tmp / "flow.json")
    with open(cfg, "w") as f:
        json.dump({"model": rig.model, "port": "sim", "board": PROFILE, "session": folder,
                   "collect": [{"from": rig.held}], "train": {"steps": 1}, "plots": False}, f)
    others = [("train", lambda: rig.cli("train")),
              ("eval", lambda: rig.cli("eval", data=None)),
              ("eval --data DATASET", lambda: rig.cli("eval", data=ds_dir)),
              ("status", lambda: rig.cli("status")),
              ("report", lambda: rig.cli("report")),
              ("session", lambda: _flow(rig, cfg))]
    n = refused = 0
    problems = []
    for k, (what, changes) in enumerate(_dataset_mutants(ds_dir, rng)):
        _apply(ds_dir, changes)
        before = folder_state(folder)
        log = before.get("dataset/samples.jsonl", b"")
        whole = min(12, log.count(b"\n"))
        # an interrupted append leaves at most one sample's bytes past the log's samples: only
        # those may go
        shard = before.get("dataset/shard-00000.bin", b"")
        shard = shard[:max(whole, len(shard) // 1024 - 1) * 1024]

        def kept():
            now = folder_state(folder)
            return now.get("dataset/shard-00000.bin", b"").startswith(shard) and \
                now.get("dataset/samples.jsonl", b"").startswith(
                    b"".join(log.splitlines(keepends=True)[:whole]))
        for name, fn in [("collect", lambda: rig.cli("collect", source=rig.held)),
                         others[k % len(others)]]:
            rc = check_refusal(f"{what}: {name}", fn, folder, before, problems, kept=kept)
            n += 1
            refused += rc != 0
        restore(folder, clean)
    no_problems(problems, n)
    assert n > 400 and refused > n / 3, (n, refused)


def test_dataset_folder_messages(rig):
    # what the user reads, and that nothing was changed: a manifest that says another sample
    # size made opening the folder cut every shard to that size before the model was compared
    folder = rig.session.path
    ds_dir = rig.session.dataset_dir
    man = os.path.join(ds_dir, "manifest.json")
    clean = folder_state(folder)
    with open(man) as f:
        good = json.load(f)
    cases = [
        ({"manifest.json": json.dumps(_set(good, ("sample", "shape"), [16, 32, 1])).encode()},
         "collect", f"tinymp: dataset {ds_dir} is damaged: {ds_dir}/shard-00000.bin holds 12,288 "
                    "bytes, more than the 6,144 of the 12 samples samples.jsonl names for it "
                    "(16x32x1 int8 each, as manifest.json says); restore the file that is wrong, "
                    "or move the folder away to start a new dataset"),
        ({"manifest.json": json.dumps(_set(good, ("sample", "shape"), [32, 32, 3])).encode()},
         "eval", f"tinymp: dataset {ds_dir} is damaged: {ds_dir}/shard-00000.bin holds 12,288 "
                 "bytes, less than the 36,864 of the 12 samples samples.jsonl names for it "
                 "(32x32x3 int8 each, as manifest.json says); restore the file that is wrong, "
                 "or move the folder away to start a new dataset"),
        ({"manifest.json": json.dumps(_set(good, ("num_classes",), 20)).encode()},
         "collect", f"tinymp: dataset {ds_dir} holds 32x32x1 samples of 20 classes; the model "
                    "takes 32x32x1 and 10 classes (use another --session)"),
        ({"manifest.json": json.dumps(_set(good, ("uid",), -1)).encode()},
         "collect", f"tinymp: {man}: 'uid' must be a whole number 1..2147483647, not -1; repair "
                    "that value (the samples themselves are in samples.jsonl and the shard files)"),
        ({"manifest.json": json.dumps(_set(good, ("sample", "scale"), "1/255")).encode()},
         "train", f"tinymp: {man}: 'sample.scale' must be a number > 0, not '1/255'; repair that "
                  "value (the samples themselves are in samples.jsonl and the shard files)"),
        ({"manifest.json": None}, "collect",
         f"tinymp: {ds_dir} holds samples (samples.jsonl) but no manifest.json: restore the "
         "manifest, or move the folder away to start a new dataset"),
        ({"samples.jsonl": b""}, "eval",
         f"tinymp: dataset {ds_dir} is damaged: {ds_dir}/shard-00000.bin holds 12,288 bytes, more "
         "than the 0 of the 0 samples samples.jsonl names for it (32x32x1 int8 each, as "
         "manifest.json says); restore the file that is wrong, or move the folder away to start "
         "a new dataset"),
        ({"shard-00000.bin": b"\0" * 5000}, "train",
         f"tinymp: dataset {ds_dir} is damaged: {ds_dir}/shard-00000.bin holds 5,000 bytes, less "
         "than the 12,288 of the 12 samples samples.jsonl names for it (32x32x1 int8 each, as "
         "manifest.json says); restore the file that is wrong, or move the folder away to start "
         "a new dataset"),
        ({"samples.jsonl": None}, "collect",
         f"tinymp: dataset {ds_dir} is damaged: samples.jsonl (the list of its samples) is "
         "missing; restore it, or move the folder away to start a new dataset"),
    ]
    # the session flow finds them before the push too
    orphans = [says for changes, _, says in cases if changes == {"manifest.json": None}]
    cases.append(({"manifest.json": None}, "session", orphans[0]))
    cfg = str(rig.tmp / "flow.json")
    with open(cfg, "w") as f:
        json.dump({"model": rig.model, "session": folder, "collect": [{"from": rig.held}],
                   "eval": rig.held, "plots": False}, f)
    for changes, name, says in cases:
        _apply(ds_dir, changes)
        before = folder_state(folder)
        if name == "session":
            rc, out, err = _flow(rig, cfg)
        else:
            rc, out, err = rig.cli(name, **({"data": None} if name == "eval" else
                                            {"source": rig.held} if name == "collect" else {}))
        assert rc == 2 and one_line(err) == says, (changes.keys(), err)
        assert folder_state(folder) == before
        restore(folder, clean)
    # the held-out set as well (the flow imports its 'eval' file there)
    os.makedirs(rig.session.eval_dir)
    _apply(rig.session.eval_dir, {"manifest.json": json.dumps(
        _set(good, ("sample", "zero_point"), 0)).encode()})
    before = folder_state(folder)
    rc, out, err = _flow(rig, cfg)
    assert rc == 2 and one_line(err) == f"tinymp: dataset {rig.session.eval_dir} holds samples " \
        "quantised with input scale 0.003921568859368563 and zero point 0; the model takes " \
        "0.003921568859368563 and -128 (use another --session)", err
    assert folder_state(folder) == before


def test_a_torn_last_line_is_dropped_by_the_next_append_only(rig):
    # what a crash leaves (a line cut short, its sample's bytes) is not counted; readers (eval)
    # leave it, the next collect replaces it
    ds_dir = rig.session.dataset_dir
    log = os.path.join(ds_dir, "samples.jsonl")
    with open(log, "rb") as f:
        raw = f.read()
    with open(log, "wb") as f:
        f.write(raw[:-20])
    before = folder_state(ds_dir)
    rc, out, err = rig.cli("eval", data=ds_dir)
    assert rc == 0 and json.loads(out)[0]["n"] == 11, err
    assert folder_state(ds_dir) == before
    rc, out, err = rig.cli("collect", source=rig.held)
    assert rc == 0 and json.loads(out)["total"] == 11 + 24, err
    with open(log, "rb") as f:
        assert f.read().startswith(raw[:raw.rindex(b"\n", 0, len(raw) - 1) + 1])


# --- 3. calibration samples (tinymp convert --calib) ----------------------------------------

def _onnx_model(tmp):
    """A small float ONNX model, or (without onnx and onnxruntime) a file that only stands for
    one: the samples are read and checked before the model is, so each bad file is refused the
    same way, and a good one then meets the missing package (one line too)."""
    try:
        import onnx
        import onnxruntime  # noqa: F401
        import test_convert_torch_onnx as t
        data = t._handmade_onnx(onnx, "reducemean").SerializeToString()
    except ImportError:
        data = b"an onnx model"
    p = tmp / "m.onnx"
    p.write_bytes(data)
    return str(p)


def _calib_mutants(rng):
    good = rng.random((8, 3, 8, 8), dtype=np.float32)
    gb = npy(good)
    yield from byte_mutants(gb, rng, 30, 70, hot=[(0, 128)])
    crafted = {
        "empty file": b"",
        "random bytes": rng.bytes(2000),
        "a zip's signature, then garbage": b"PK\x03\x04garbage",
        "an .npz": zipped({"x.npy": gb}),
        "an .npz cut short": zipped({"x.npy": gb})[:300],
        "objects": npy(np.array([{}, 1], dtype=object), allow_pickle=True),
        "complex": npy(good.astype(np.complex64)),
        "bool": npy(good > 0.5),
        "text": npy(good.astype("U3")),
        "structured": npy(np.zeros(8, [("a", "<f4"), ("b", "<f4")])),
        "dates": npy(np.zeros((8, 3, 8, 8), "datetime64[s]")),
        "NaN": npy(np.where(good > 0.5, np.nan, good)),
        "infinite": npy(np.where(good > 0.5, np.inf, good)),
        "no samples": npy(good[:0]),
        "3-D": npy(good[0]),
        "2-D": npy(good.reshape(8, -1)),
        "a number": npy(np.float32(1)),
        "a channel of 0": npy(good[:, :0]),
        "other channels": npy(good[:, :2]),
        "declares 8 TB": npy_header("<f8", (10 ** 9, 3, 8, 128), gb[-500:]),
        "declares 4 GB": npy_header("<f4", (1 << 20, 3, 8, 40), gb[-500:]),
        "declares a negative size": npy_header("<f4", (-8, 3, 8, 8), gb[128:]),
        "format 3.0": b"\x93NUMPY\x03\x00" + gb[8:],
        "format 9.9": b"\x93NUMPY\x09\x09" + gb[8:],
        "big-endian": npy(good.astype(">f4")),
        "float16": npy(good.astype(np.float16)),
        "uint8 pixels": npy((good * 255).astype(np.uint8)),
        "Fortran order": npy(np.asfortranarray(good)),
        "longer than its header": gb + b"\0" * 64,
    }
    yield from crafted.items()


def test_fuzz_calibration_files(tmp_path, capsys):
    rng = np.random.default_rng(SEED + 2)
    src = _onnx_model(tmp_path)
    model = open(src, "rb").read()
    out = tmp_path / "out.tmpm"
    problems = []
    n = refused = 0
    for k, (what, data) in enumerate(_calib_mutants(rng)):
        calib = tmp_path / f"c{k}.npy"
        calib.write_bytes(data)
        capsys.readouterr()
        memory = "declares" in what
        try:
            with memory_cap(what, problems, memory):
                rc = cli.main(["convert", src, "-o", str(out), "--calib", str(calib)])
        except Exception as e:  # noqa: BLE001 - what the test is about
            problems.append(f"{what}: {type(e).__name__} escaped: {str(e)[:200]}")
            continue
        o, e = capsys.readouterr()
        err = e.strip().splitlines()
        n += 1
        if rc == 0:
            out.unlink()
            continue
        refused += 1
        if rc != 2 or len(err) != 1 or not err[0].startswith("tinymp:") or "Traceback" in o + e:
            problems.append(f"{what}: status {rc}, stderr {err[:3]}")
        if out.exists() or list(tmp_path.glob("out.tmpm.tmp-*")):
            problems.append(f"{what}: refused, and an output was written")
        assert open(src, "rb").read() == model
    no_problems(problems, n)
    assert n > 120 and refused > n / 2, (n, refused)


def test_calibration_file_messages(tmp_path, capsys):
    src = _onnx_model(tmp_path)
    cases = {
        "cut.npy": (b"PK\x03\x04garbage", "cannot read calibration samples {p}: it is an .npz "
                                          "archive, not a single array (.npy); save the "
                                          "calibration samples as one array with numpy.save "
                                          "(.npy)"),
        "short.npy": (npy(np.zeros((8, 3, 8, 8), np.float32))[:-4],
                      "cannot read calibration samples {p}: its header declares a float32 array "
                      "of shape (8, 3, 8, 8) (6,144 bytes of data) but 6,140 bytes follow it: the "
                      "file is truncated or damaged"),
        "pickled.npy": (npy(np.array([{}], dtype=object), allow_pickle=True),
                        "cannot read calibration samples {p}: it holds Python objects (pickled "
                        "data), which tinymp does not load: save arrays of numbers; save the "
                        "calibration samples as one array with numpy.save (.npy)"),
        "bool.npy": (npy(np.zeros((8, 3, 8, 8), bool)),
                     "calib must hold real numbers, got dtype bool"),
    }
    for name, (data, says) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        capsys.readouterr()
        rc = cli.main(["convert", src, "-o", str(tmp_path / "o.tmpm"), "--calib", str(p)])
        err = one_line(capsys.readouterr().err.strip().splitlines())
        if name == "bool.npy" and src and open(src, "rb").read() == b"an onnx model":
            continue  # without onnx the model's package is missed first
        assert rc == 2 and err == "tinymp: " + says.format(p=p), err


# --- 4. session configs (tinymp session CONFIG) ---------------------------------------------

CONFIG_ODD = [None, True, 0, -1, 1.5, math.nan, "text", "", [], {}, [1, 2], {"a": 1}]


def _toml(v, at=""):
    """A config as TOML (tomllib reads, nothing here writes it): scalars, lists and tables."""
    def value(x):
        if isinstance(x, bool):
            return "true" if x else "false"
        if isinstance(x, float) and math.isnan(x):
            return "nan"
        if isinstance(x, (int, float)):
            return repr(x)
        if isinstance(x, str):
            return json.dumps(x)
        if isinstance(x, list):
            return "[" + ", ".join(value(i) for i in x) + "]"
        return "{" + ", ".join(f"{json.dumps(k)} = {value(i)}" for k, i in x.items()) + "}"
    lines = [f"{json.dumps(k)} = {value(x)}" for k, x in v.items()
             if x is not None and not isinstance(x, dict)]
    for k, x in v.items():
        if isinstance(x, dict):
            lines.append(f"[{json.dumps(k)}]")
            lines += [f"{json.dumps(kk)} = {value(xx)}" for kk, xx in x.items() if xx is not None]
    return ("\n".join(lines) + "\n").encode()


# what each place of the good config may hold (None: null, the default); another type must be
# refused, with one line and nothing written
CONFIG_TYPES = {
    ("model",): (str,), ("port",): (str, None), ("board",): (str, None),
    ("session",): (str, None), ("eval",): (str, None), ("collect",): (list, None),
    ("collect", 0): (dict,), ("collect", 0, "from"): (str,), ("collect", 1): (dict,),
    ("collect", 1, "label"): (int, list), ("collect", 1, "label", 0): (int,),
    ("collect", 1, "label", 1): (int,), ("collect", 1, "count"): (int,),
    ("train",): (dict, None), ("train", "steps"): (int, None), ("train", "lr"): (float, int, None),
    ("train", "method"): (str, None), ("train", "save"): (bool, None), ("plots",): (bool, None),
}
REQUIRED = {("model",), ("collect", 0, "from"), ("collect", 1, "label"), ("collect", 1, "count")}


def _wrong(place, v):
    types = CONFIG_TYPES[place]
    if v is None:
        return None not in types
    if isinstance(v, bool):
        return bool not in types
    if isinstance(v, float) and math.isnan(v):
        return True
    return not isinstance(v, tuple(t for t in types if t is not None and t is not bool))


def _config_mutants(good, rng):
    """(description, file name, bytes, strict) of configs: each key of a good config dropped or
    given each odd value, unknown keys at each level, then bytes that are not JSON or TOML. A
    strict one must be refused."""
    for place in _places(good):
        yield (f"drop {place}", "c.json", json.dumps(_set(good, place, None, True)).encode(),
               place in REQUIRED)
        for odd in CONFIG_ODD:
            yield (f"{place} = {odd!r}", "c.json", json.dumps(_set(good, place, odd)).encode(),
                   _wrong(place, odd))
    for where in [(), ("train",), ("collect", 0), ("collect", 1)]:
        v = _set(good, where + ("colour",), "blue") if where else dict(good, colour="blue")
        yield f"unknown key at {where}", "c.json", json.dumps(v).encode(), True
    yield ("collect item with both", "c.json",
           json.dumps(_set(good, ("collect", 0, "label"), 3)).encode(), True)
    for odd in CONFIG_ODD:
        yield f"config = {odd!r}", "c.json", json.dumps(odd).encode(), odd != {}
    text = json.dumps(good, indent=1).encode()
    for what, data in byte_mutants(text, rng, 12, 20):
        yield f"json {what}", "c.json", data, False
    toml = _toml(good)
    for what, data in byte_mutants(toml, rng, 12, 20):
        yield f"toml {what}", "c.toml", data, False
    for place in [("train", "steps"), ("plots",), ("collect",), ("model",)]:
        for odd in ("text", 1.5, [], {"a": 1}):
            yield (f"toml {place} = {odd!r}", "c.toml", _toml(_set(good, place, odd)),
                   _wrong(place, odd))
    for what, data in [("not UTF-8", text.replace(b'"', b'"\xff', 1)),
                       ("latin-1 text", text.replace(PROFILE.encode(), b"\xd6PENMV")),
                       ("nested too deep", b'{"train": ' + b"[" * 100000 + b"]" * 100000 + b"}"),
                       ("a NUL byte", b"\0" + text), ("empty", b""), ("TOML", toml)]:
        yield f"JSON {what}", "c.json", data, True
    for what, data in [("not UTF-8", toml.replace(b'"', b'"\xff', 1)),
                       ("nested too deep", b"a = " + b"[" * 100000 + b"]" * 100000 + b"\n"),
                       ("JSON", text)]:
        yield f"TOML {what}", "c.toml", data, True


def test_fuzz_session_configs(rig, monkeypatch):
    # a board with a camera (the simulated one's), for the config's capture item
    monkeypatch.setitem(sys.modules, "sensor", SimSensor(SCENE, str(rig.where)))
    folder = rig.session.path
    before = folder_state(folder)
    cfg_dir = rig.tmp / "configs"
    cfg_dir.mkdir()
    good = {"model": rig.model, "port": "sim", "board": PROFILE, "session": folder,
            "collect": [{"from": rig.held}, {"label": [1, 2], "count": 1}], "eval": rig.held,
            "train": {"steps": 1, "lr": 0.01, "method": "tinymp", "save": True},
            "plots": False}
    rng = np.random.default_rng(SEED + 3)
    problems = []
    n = refused = 0
    for k, (what, name, data, strict) in enumerate(_config_mutants(good, rng)):
        p = cfg_dir / f"{k}-{name}"
        p.write_bytes(data)
        rc = check_refusal(what, lambda: _flow(rig, str(p)), folder, before, problems)
        if strict and rc == 0:
            problems.append(f"{what}: let through")
        n += 1
        refused += rc != 0
        if rc and folder_state(cfg_dir) != {p.name: data}:
            problems.append(f"{what}: refused, and the config's folder changed")
        shutil.rmtree(cfg_dir)  # a config let through may have made its session there
        cfg_dir.mkdir()
    no_problems(problems, n)
    assert n > 300 and refused > n / 2, (n, refused)


def test_session_config_messages(rig):
    folder = rig.session.path
    before = folder_state(folder)
    good = {"model": rig.model, "port": "sim", "board": PROFILE, "session": folder,
            "collect": [{"from": rig.held}], "train": {"steps": 1}, "plots": False}
    cfg = rig.tmp / "c.json"
    cases = [
        (b"\xef\xbb\xbf" + json.dumps(dict(good, plots="no")).encode(),
         f"tinymp: {cfg}: 'plots' must be true/false, not a string"),
        (json.dumps(_set(good, ("collect", 0, "lable"), 3)).encode(),
         f"tinymp: {cfg}: collect item 1 must be {{\"from\": FILE}} or {{\"label\": L, \"count\": "
         "N} (unknown keys lable)"),
        (json.dumps(_set(good, ("collect", 0), {"from": rig.held, "label": 1,
                                                 "count": 2})).encode(),
         f"tinymp: {cfg}: collect item 1 must be {{\"from\": FILE}} or {{\"label\": L, \"count\": "
         "N}, not keys count, from, label"),
        (json.dumps(dict(good, collect=[{"label": [1, "2"], "count": 3}])).encode(),
         f"tinymp: {cfg}: collect item 1: 'label' must be a class number or a list of them, not "
         "[1, \"2\"]"),
        (json.dumps(dict(good, train=[])).encode(),
         f"tinymp: {cfg}: 'train' must be an object, not a list"),
        (json.dumps(dict(good, model=None)).encode(),
         f"tinymp: {cfg}: 'model' must be a string, not null"),
        (b'{"model": "\xff.tmpm"}', f"tinymp: {cfg} is not UTF-8 text (byte 11); save it as UTF-8"),
        (b"[" * 100000, f"tinymp: {cfg} is nested too deeply to be a session config"),
        (b'{"model": m.tmpm}', f"tinymp: {cfg} is not valid JSON: Expecting value: line 1 "
                               "column 11 (char 10)"),
        (b'model = "m.tmpm"\n[train]\nsteps = \n', None),
        # the simulated board here has no camera: found before the push, not after it
        (json.dumps(dict(good, collect=[{"from": rig.held}, {"label": 1, "count": 2}])).encode(),
         "tinymp: OPENMV_H7 (simulated) has no camera, which the config's collect items with "
         "'label' and 'count' capture with; collect with 'from' (a samples file) instead"),
    ]
    for data, says in cases:
        p = cfg if says else cfg.with_suffix(".toml")
        p.write_bytes(data)
        rc, out, err = _flow(rig, str(p))
        assert rc == 2 and one_line(err) == (says or f"tinymp: {p} is not valid TOML: Invalid "
                                             "value (at line 3, column 9)"), err
        assert folder_state(folder) == before
    # a BOM (Windows' Notepad writes one) before TOML too: the file is read, its mistake named
    p = cfg.with_suffix(".toml")
    p.write_bytes(b"\xef\xbb\xbf" + f'model = {json.dumps(rig.model)}\nplots = "no"\n'.encode())
    rc, out, err = _flow(rig, str(p))
    assert rc == 2 and one_line(err) == f"tinymp: {p}: 'plots' must be true/false, not a string", \
        err
    assert folder_state(folder) == before


# --- 5. scenes of the simulated camera (--scene) --------------------------------------------

def test_fuzz_scene_files(rig):
    # status and collect check the scene before the simulated board starts; a good one lets
    # status through, and collect meets the camera this test's board lacks (one line too)
    rng = np.random.default_rng(SEED + 4)
    folder = rig.session.path
    before = folder_state(folder)
    x = rng.integers(0, 256, (6, 24, 24), dtype=np.uint8)
    y = np.arange(6)
    good = zipped({"x.npy": npy(x), "y.npy": npy(y)})
    mutants = list(byte_mutants(good, rng, 20, 40, hot=[(0, 200), (len(good) - 250, len(good))]))
    mutants += [("empty", b""), ("a .npy", npy(x)), ("cut zip", b"PK\x03\x04garbage"),
                ("objects", zipped({"x.npy": npy(np.array([{}], dtype=object),
                                                 allow_pickle=True), "y.npy": npy(y)})),
                ("declares 4 GB", zipped({"x.npy": npy_header("|u1", (1 << 22, 32, 32)),
                                          "y.npy": npy(y)})),
                ("declares 100 MB of floats, in a zip bomb",
                 bomb(npy_header("<f4", (25600, 32, 32)), 100 << 20,
                      [("y.npy", npy(np.zeros(25600, int)))])),
                ("no images", zipped({"x.npy": npy(x[:0]), "y.npy": npy(y[:0])})),
                ("float images", zipped({"x.npy": npy(x / 255), "y.npy": npy(y)}))]
    problems = []
    n = 0
    for k, (what, data) in enumerate(mutants):
        p = rig.tmp / f"scene{k}.npz"
        p.write_bytes(data)
        for name, fn in [("status", lambda: rig.cli("status", scene=str(p))),
                         ("collect", lambda: rig.cli("collect", label=0, count=1,
                                                     scene=str(p)))]:
            check_refusal(f"{what}: {name}", fn, folder, before, problems,
                          memory="declares" in what)
            n += 1
    no_problems(problems, n)
    rig.tmp.joinpath("s.npz").write_bytes(npy(x))
    rc, out, err = rig.cli("status", scene=str(rig.tmp / "s.npz"))
    assert rc == 2 and one_line(err) == f"tinymp: bad scene file {rig.tmp / 's.npz'}: it is a " \
        "single numpy array (.npy), not an .npz archive; it must hold arrays 'x' (uint8 images " \
        "[N, H, W]) and 'y' (labels)"

