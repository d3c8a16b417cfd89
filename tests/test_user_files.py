"""Every file a user gives the PC side is checked: a damaged, cut short or wrong one ends the
command with one line on stderr starting 'tinymp:' and exit status 2, no traceback, and nothing in
the session folder changed. Each reader is fuzzed through the command that reads it, with mutants
of a good file from a fixed-seed generator:

    samples files     `collect --from`, `eval --data` and the `collect`/`eval` items of
                      `tinymp session` (dataset.load_samples)
"""
import io
import json
import os
import tracemalloc
import zipfile

import numpy as np
import pytest

from test_session_replies import PROFILE, folder_state, no_hang, one_line, rig  # noqa: F401
from tinymp.session import run

SEED = 20240607


# --- helpers --------------------------------------------------------------------------------

def restore(path, state):
    """Put the folder back as folder_state saw it (after a command that was let through)."""
    for name in set(folder_state(path)) - set(state):
        os.remove(os.path.join(path, name))
    for name, data in state.items():
        p = os.path.join(path, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)


def check_refusal(what, fn, folder, before, problems, memory=False):
    """Run fn() (a command: (status, stdout, stderr lines)); a refusal must be status 2, one line
    starting 'tinymp:', no traceback and the session folder as it was; a command that is let
    through is undone (restore). Whatever is wrong is added to `problems`. Returns the status."""
    if memory:
        tracemalloc.start()
    try:
        rc, out, err = no_hang(fn)
    except Exception as e:  # noqa: BLE001 - what these tests are about
        problems.append(f"{what}: {type(e).__name__} escaped: {str(e)[:200]}")
        restore(folder, before)
        return None
    finally:
        if memory:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            if peak > 64 << 20:
                problems.append(f"{what}: allocated {peak:,} bytes")
    if rc == 0:  # a mutant that is still a good file (a changed byte no one reads)
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
