"""What the user gives a session command is judged before the board is opened, as far as it can
be without the board's model: a missing, unreadable or corrupt samples file (its headers, and its
data: damaged bytes, NaN or floats outside [0, 1], negative labels), a folder that is not a
dataset, a bad scene or model file stops the command with the one line (status 2) the check
after the board gave, and the simulated board is not started (a real one would be soft-reset).
And a simulated board of another profile than the session's, made for the first time, is said on
stderr (a mistyped --board would otherwise start an empty board without a word)."""
import io
import json
import os
import shutil
import struct
import zipfile
import zlib

import numpy as np
import pytest

import tinymp
from tinymp import boards, cli
from tinymp.session import dataset as D
from test_session_report import tm

MODELS = os.path.join(os.path.dirname(tinymp.__file__), "models")
DEMO = os.path.join(MODELS, "demo.tmpm")
HELD = os.path.join(MODELS, "digits_shifted_test.npz")
BOARD = boards.DEFAULT_SIM
OTHER = "NUCLEO_H743ZI2"
UP = b" up, flash "  # the line a simulated board writes to its board.log when it starts


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinymp:"), err
    return lines[0]


def starts(session):
    """{profile: times its simulated board started} of a session folder, from the boards' logs."""
    root = os.path.join(session, "sim")
    out = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        try:
            with open(os.path.join(root, name, "board.log"), "rb") as f:
                out[name] = f.read().count(UP)
        except FileNotFoundError:
            out[name] = 0
    return out


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A session whose simulated board holds the demo model, and the demo model's input format
    (the late check's arguments)."""
    s = str(tmp_path_factory.mktemp("early") / "s")
    assert cli.main(["push", DEMO, "--port", "sim", "--session", s, "-q"]) == 0
    m = tinymp.Model(open(DEMO, "rb").read())
    return s, (m.input_shape, m.input_scale, m.input_zero_point, m.num_classes)


@pytest.fixture(scope="module")
def bad(tmp_path_factory, pushed):
    """{what: path} of samples inputs that no model takes (an empty dataset is of the model's
    format, so that it has one thing wrong)."""
    d = tmp_path_factory.mktemp("bad")
    with open(HELD, "rb") as f:
        good = f.read()
    with np.load(HELD) as a:
        x, y = a["x"], a["y"]
    (d / "cut.npz").write_bytes(good[:len(good) // 2])  # a copy cut short
    (d / "text.npz").write_bytes(b"x,y\n1,2\n")
    np.save(d / "one.npy", x)
    np.savez(d / "short_y.npz", x=x, y=y[:-1])
    np.savez(d / "none.npz", x=x[:0], y=y[:0])
    np.savez(d / "float_y.npz", x=x, y=y + 0.5)
    os.mkdir(d / "plain")
    (d / "plain" / "notes.txt").write_text("not a dataset")
    D.Dataset.create(str(d / "empty_ds"), *pushed[1])
    os.mkdir(d / "damaged_ds")
    (d / "damaged_ds" / "manifest.json").write_text('{"format": "tinymp-dataset", ')
    return {"missing": str(d / "missing.npz"), "cut": str(d / "cut.npz"),
            "text": str(d / "text.npz"), "npy": str(d / "one.npy"),
            "short y": str(d / "short_y.npz"), "no samples": str(d / "none.npz"),
            "float labels": str(d / "float_y.npz"), "not a dataset": str(d / "plain"),
            "empty dataset": str(d / "empty_ds"), "damaged manifest": str(d / "damaged_ds")}


def late_line(path, fmt):
    """The line the check after the board gives for `path`: load_samples against the model."""
    with pytest.raises(D.DatasetError) as e:
        D.load_samples(path, *fmt)
    return str(e.value)


CMDS = [["collect", "--from"], ["collect", "--eval", "--from"], ["eval", "--data"],
        ["eval", "--both", "--data"]]


@pytest.mark.parametrize("cmd", CMDS)
def test_a_bad_samples_input_is_refused_before_the_board_starts(pushed, bad, cmd, capsys):
    s, fmt = pushed
    for what, path in bad.items():
        before = starts(s)
        code, out, err = tm(capsys, *cmd, path, "--port", "sim", "--session", s)
        assert code == 2 and one_line(err) == late_line(path, fmt), (what, err)
        assert out == "" and starts(s) == before, what


# --- faults in the samples' data: found by reading it, still before the board ---------------

def npy(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def member_data(blob, name):
    """(start, end) of the bytes zip member `name` keeps in the archive `blob` (its local header
    read here: zipfile gives where that header starts and the member's stored size)."""
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        info = z.getinfo(name)
    at = info.header_offset
    assert blob[at:at + 4] == b"PK\x03\x04"
    n, extra = struct.unpack_from("<HH", blob, at + 26)
    start = at + 30 + n + extra
    return start, start + info.compress_size


def flipped(x, y, name, where):
    """numpy.savez of x and y (members stored, not deflated), one byte of member `name`'s array
    data changed (`where`: how far into its data, 0..1): its CRC no longer matches."""
    b = io.BytesIO()
    np.savez(b, x=x, y=y)
    blob = bytearray(b.getvalue())
    start, _ = member_data(bytes(blob), name)
    a = x if name == "x.npy" else y
    head = len(npy(a)) - a.nbytes  # the .npy header before the array's data
    i = start + head + min(int(where * a.nbytes), a.nbytes - 1)
    blob[i] ^= 0x5A
    return bytes(blob)


def deflated(x, y, stream):
    """An .npz whose member x.npy says it is deflated, with x's .npy size and CRC, and holds the
    raw deflate `stream`; the archive around it is whole."""
    xb = npy(x)
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as z:
        z.writestr("x.npy", stream)
        z.writestr("y.npy", npy(y))
    blob = bytearray(b.getvalue())
    # x.npy's local header starts the archive, its central directory entry starts the directory
    # (whose offset the end record, the archive's last 22 bytes, gives)
    assert blob[:4] == b"PK\x03\x04" and blob[-22:-18] == b"PK\x05\x06"
    cd = struct.unpack_from("<I", blob, len(blob) - 6)[0]
    assert blob[cd:cd + 4] == b"PK\x01\x02"
    for at, method, crc, size in ((0, 8, 14, 22), (cd, 10, 16, 24)):
        struct.pack_into("<H", blob, at + method, zipfile.ZIP_DEFLATED)
        struct.pack_into("<I", blob, at + crc, zlib.crc32(xb))
        struct.pack_into("<I", blob, at + size, len(xb))
    return bytes(blob)


def deflate_cut(x, y):
    """x.npy deflated, only the first half of its stream kept."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = c.compress(npy(x)) + c.flush()
    return deflated(x, y, stream[:len(stream) // 2])


def deflate_bad_block(x, y):
    """x.npy's first half deflated, then a block of the reserved type 3 (byte 0x07: last block,
    type 3) where the second half's would start: zlib stops there."""
    xb = npy(x)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = c.compress(xb[:len(xb) // 2]) + c.flush(zlib.Z_FULL_FLUSH)  # ends on a byte
    return deflated(x, y, stream + b"\x07")


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """{what: (path, words its line holds)} of samples files with sound headers whose data no
    model takes, made here with numpy, zipfile and zlib from the held-out digits."""
    d = tmp_path_factory.mktemp("faulty")
    with np.load(HELD) as a:
        x, y = a["x"], a["y"]
    f = x.astype(np.float32) / 255
    out = {}

    def put(what, data, says):
        p = d / (what.replace(" ", "_").replace("'", "") + ".npz")
        if isinstance(data, dict):
            np.savez(p, **data)
        else:
            p.write_bytes(data)
        out[what] = (str(p), says)
    put("a changed byte in x's data", flipped(x, y, "x.npy", 0.6),
        "its member x.npy is damaged (Bad CRC-32")
    put("a changed byte in the last of x's data", flipped(x, y, "x.npy", 1), "Bad CRC-32")
    # zipfile reads 4 KB of a member at its first read (the header): a change in the labels
    # beyond it is found by reading them, in a file of more of them than the held-out 339
    x4, y4 = np.concatenate([x] * 4), np.concatenate([y] * 4)
    assert y4.nbytes > 8192
    put("a changed byte in y's data", flipped(x4, y4, "y.npy", 0.9),
        "its member y.npy is damaged (Bad CRC-32")
    put("a bad block in x's deflate stream", deflate_bad_block(x, y),
        "its member x.npy is damaged (Error -3 while decompressing data: invalid block type)")
    put("x's deflate stream cut short", deflate_cut(x, y), "its member x.npy is damaged (")
    nan, inf = f.copy(), f.copy()
    nan[-1, -1, -1] = np.nan
    inf[3, 0, 0] = -np.inf
    put("a NaN sample value", dict(x=nan, y=y), "samples hold NaN or infinity")
    put("an infinite sample value", dict(x=inf, y=y), "samples hold NaN or infinity")
    put("0..255 floats", dict(x=x.astype(np.float32), y=y), "float samples must be in [0, 1], "
        f"these range {x.min():g}..{x.max():g}")
    neg = y.copy()
    neg[7] = -1
    put("a negative label", dict(x=x, y=neg), "label -1 of sample 7 is negative")
    return out


@pytest.mark.parametrize("what", ["a changed byte in x's data",
                                  "a changed byte in the last of x's data",
                                  "a changed byte in y's data",
                                  "a bad block in x's deflate stream",
                                  "x's deflate stream cut short",
                                  "a NaN sample value", "an infinite sample value",
                                  "0..255 floats", "a negative label"])
def test_bad_sample_data_is_refused_before_the_board_starts(pushed, faulty, what, capsys):
    # found by reading the file's data (the labels whole, the samples in pieces) before the
    # board is opened, with the line the check after the board gives
    s, fmt = pushed
    path, says = faulty[what]
    late = late_line(path, fmt)
    assert late.startswith("tinymp: ") and says in late, late
    for cmd in CMDS:
        before = starts(s)
        code, out, err = tm(capsys, *cmd, path, "--port", "sim", "--session", s)
        assert code == 2 and one_line(err) == late, (cmd, err)
        assert out == "" and starts(s) == before, cmd


def test_good_float_samples_are_read_before_and_imported_after_the_board_starts(pushed, tmp_path,
                                                                                capsys):
    # floats over all of [0, 1], both ends included, pass the early check and are imported
    s0, fmt = pushed
    s = str(tmp_path / "s")
    shutil.copytree(s0, s)
    with np.load(HELD) as a:
        x, y = a["x"], a["y"]
    f = x.astype(np.float32) / 255
    f[0, 0, 0], f[0, 0, 1] = 0.0, 1.0
    p = str(tmp_path / "floats.npz")
    np.savez_compressed(p, x=f, y=y)
    before = starts(s)
    code, out, err = tm(capsys, "collect", "--eval", "--from", p, "--port", "sim", "--session", s,
                        "-q")
    assert code == 0, err
    assert starts(s)[BOARD] == before[BOARD] + 1
    assert len(D.Dataset.open(os.path.join(s, "eval"))) == len(y)


def test_a_new_session_folder_is_not_made_for_a_bad_input(tmp_path, bad, capsys):
    # before the fix the folder, its lock and an empty simulated board were made, and the line
    # was that the board holds no model
    s = str(tmp_path / "new")
    for args in (["collect", "--from", bad["missing"]], ["collect", "--from", bad["cut"]],
                 ["eval", "--data", bad["not a dataset"]],
                 ["collect", "--label", "0", "--count", "1", "--scene", bad["text"]],
                 ["push", str(tmp_path / "missing.tmpm")]):
        code, _, err = tm(capsys, *args, "--port", "sim", "--session", s)
        assert code == 2, (args, err)
        one_line(err)
        assert not os.path.exists(s), args


def test_scene_model_and_config_files_are_refused_before_the_board_starts(pushed, bad, tmp_path,
                                                                          capsys):
    s, _ = pushed
    cfg = tmp_path / "flow.json"
    cfg.write_text(json.dumps({"model": DEMO, "port": "sim", "session": s,
                               "collect": [{"from": bad["cut"]}], "plots": False}))
    for args, says in (
            (["collect", "--label", "0", "--count", "1", "--scene", bad["cut"]],
             f"tinymp: bad scene file {bad['cut']}: "),
            (["push", bad["text"]], "tinymp: "),
            (["push", bad["missing"]], f"tinymp: no such model file: {bad['missing']}"),
            (["session", str(cfg)], f"tinymp: cannot read samples from {bad['cut']}: ")):
        before = starts(s)
        code, _, err = tm(capsys, *args, "--port", "sim", "--session", s)
        assert code == 2 and one_line(err).startswith(says), (args, err)
        assert starts(s) == before, args


def test_what_needs_the_model_is_still_refused_after_the_board_starts(pushed, tmp_path, capsys):
    # the samples' shape and a label past the classes are the board's model's: the board is
    # asked, then the file refused with the line it always had
    s, fmt = pushed
    with np.load(HELD) as a:
        x, y = a["x"], a["y"]
    for name, arrays in (("shape.npz", dict(x=x[:, :4], y=y)),
                         ("labels.npz", dict(x=x, y=y * 0 + fmt[3]))):
        p = str(tmp_path / name)
        np.savez(p, **arrays)
        before = starts(s)
        code, _, err = tm(capsys, "collect", "--from", p, "--port", "sim", "--session", s)
        assert code == 2 and one_line(err) == late_line(p, fmt), err
        assert starts(s)[BOARD] == before[BOARD] + 1


def test_a_dataset_folder_is_read_once(pushed, tmp_path, monkeypatch, capsys):
    # checked before the board is opened, imported after: the folder is opened (its sample log
    # read) once
    s0, fmt = pushed
    s = str(tmp_path / "s")
    shutil.copytree(s0, s)
    shape, scale, zp, nc = fmt
    ds = D.Dataset.create(str(tmp_path / "src"), shape, scale, zp, nc)
    q, labels, _ = D.load_samples(HELD, *fmt)
    for i in range(12):
        ds.append(q[i], int(labels[i]), source=f"held:{i}")
    opened = []
    load = D.Dataset._load

    def counting(self):
        if os.path.abspath(self.path) == os.path.abspath(ds.path):
            opened.append(self.path)
        return load(self)
    monkeypatch.setattr(D.Dataset, "_load", counting)
    for args in (["collect", "--eval", "--from", ds.path], ["eval", "--data", ds.path]):
        opened.clear()
        code, out, err = tm(capsys, *args, "--port", "sim", "--session", s, "--json", "-q")
        assert code == 0, err
        assert len(opened) == 1, (args, opened)
    assert json.loads(out)[0]["n"] == 12


# --- a simulated board made for the first time next to the session's others ------------------

def test_a_new_simulated_board_beside_the_sessions_is_said_on_stderr(pushed, tmp_path, capsys):
    s0, _ = pushed
    s = str(tmp_path / "s")
    shutil.copytree(s0, s)
    # the mistyped --board: status is fine (JSON on stdout), the note says what happened
    code, out, err = tm(capsys, "status", "--port", "sim", "--board", OTHER, "--session", s,
                        "--json")
    assert code == 0 and json.loads(out)["model"] is None
    lines = err.strip().splitlines()
    assert lines == [f"note: starting a new simulated {OTHER} in "
                     f"{os.path.join(s, 'sim', OTHER)}, empty (no model, no samples); this "
                     f"session's other simulated board is {BOARD}: choose with --board {BOARD}"]
    # once made, it is one of the session's boards: no note again
    code, out, err = tm(capsys, "status", "--port", "sim", "--board", OTHER, "--session", s,
                        "--json")
    assert code == 0 and err == ""
    # a third: both others named; chosen with --port sim:PROFILE, the note says that way
    code, out, err = tm(capsys, "eval", "--port", "sim:ESP32_S3", "--session", s, "--data", HELD)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and "no model" in lines[1], err
    assert lines[0].startswith("note: starting a new simulated ESP32_S3 in ")
    assert lines[0].endswith(f"this session's other simulated boards are {OTHER}, {BOARD}: "
                             "choose with --port sim:NAME"), lines[0]
    # the session's own board: no note
    code, out, err = tm(capsys, "status", "--port", "sim", "--session", s, "--json")
    assert code == 0 and err == "" and json.loads(out)["model"] is not None


def test_the_first_simulated_board_of_a_session_is_not_noted(tmp_path, capsys):
    s = str(tmp_path / "s")
    code, _, err = tm(capsys, "status", "--port", "sim", "--board", OTHER, "--session", s)
    assert code == 0 and err == ""


def test_push_to_a_new_simulated_board_is_not_noted(pushed, tmp_path, capsys):
    # push fills the board it starts: the user chose it on purpose, nothing is empty after it
    s0, _ = pushed
    s = str(tmp_path / "s")
    shutil.copytree(s0, s)
    code, out, err = tm(capsys, "push", DEMO, "--port", "sim", "--board", OTHER, "--session", s,
                        "-q")
    assert code == 0 and "note:" not in err, err
    assert os.path.isdir(os.path.join(s, "sim", OTHER))
