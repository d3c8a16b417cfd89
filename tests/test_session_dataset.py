"""The PC's dataset folder: durable appends, recovery from what a crash leaves, shards, and the
checks on samples imported from files (against tinymp.builder's quantiser)."""
import errno
import json
import os

import numpy as np
import pytest

from tinymp.builder import quantize_input
from tinymp.session import dataset as D

SHAPE = (4, 4, 1)
SCALE, ZP = 1 / 255, -128


def make(tmp_path, name="ds"):
    return D.Dataset.create(str(tmp_path / name), shape=SHAPE, scale=SCALE, zero_point=ZP,
                            num_classes=3, board="test board", model_sha256="ab" * 32)


def sample(i):
    return bytes((i + k) % 256 for k in range(16))


def test_append_reopen_and_manifest(tmp_path):
    ds = make(tmp_path)
    for i in range(7):
        assert ds.append(sample(i), i % 3, source=f"s{i}", board="b") == i
    ds.write_manifest()
    again = D.Dataset.open(ds.path)
    assert len(again) == 7 and list(again.labels) == [0, 1, 2, 0, 1, 2, 0]
    assert again.sample(5) == sample(5)
    x, y = again.arrays()
    assert x.shape == (7, 4, 4, 1) and x.dtype == np.int8
    assert x[3].tobytes() == sample(3)
    with open(os.path.join(ds.path, "manifest.json")) as f:
        man = json.load(f)
    assert man["count"] == 7 and man["per_class"] == [3, 2, 2] and man["board"] == "test board"
    assert man["sample"] == {"shape": [4, 4, 1], "dtype": "int8", "layout": "HWC",
                             "scale": SCALE, "zero_point": ZP, "bytes": 16}
    lines = open(os.path.join(ds.path, "samples.jsonl")).read().splitlines()
    rec = json.loads(lines[2])
    assert rec["i"] == 2 and rec["label"] == 2 and rec["board"] == "b" and rec["t"] > 0


def test_shards_roll_over(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "SHARD", 3)
    ds = make(tmp_path)
    for i in range(8):
        ds.append(sample(i), 1)
    assert sorted(f for f in os.listdir(ds.path) if f.startswith("shard")) == \
        ["shard-00000.bin", "shard-00001.bin", "shard-00002.bin"]
    again = D.Dataset.open(ds.path)
    assert [again.sample(i) for i in range(8)] == [sample(i) for i in range(8)]
    assert again.samples(2, 7).tobytes() == b"".join(sample(i) for i in range(2, 7))


def test_a_crash_mid_append_is_undone_on_reopen(tmp_path):
    ds = make(tmp_path)
    for i in range(3):
        ds.append(sample(i), 0)
    # what a crash can leave: the 4th sample's bytes without its line, and half a line
    with open(os.path.join(ds.path, "shard-00000.bin"), "ab") as f:
        f.write(sample(3)[:9])
    with open(os.path.join(ds.path, "samples.jsonl"), "ab") as f:
        f.write(b'{"i": 3, "lab')
    shard, log = (os.path.join(ds.path, n) for n in ("shard-00000.bin", "samples.jsonl"))
    left = os.path.getsize(shard), os.path.getsize(log)
    again = D.Dataset.open(ds.path)
    assert len(again) == 3
    # opening writes nothing (eval and `collect --from` read other folders); the append drops it
    assert (os.path.getsize(shard), os.path.getsize(log)) == left
    assert again.append(sample(9), 2) == 3 and D.Dataset.open(ds.path).sample(3) == sample(9)
    assert os.path.getsize(shard) == 4 * 16
    assert [json.loads(s)["i"] for s in open(log, "rb").read().splitlines()] == [0, 1, 2, 3]


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    # an editor that drops the file's last newline must not cost the last sample
    ds = make(tmp_path)
    for i in range(3):
        ds.append(sample(i), i)
    log = os.path.join(ds.path, "samples.jsonl")
    with open(log, "rb") as f:
        raw = f.read()
    with open(log, "wb") as f:
        f.write(raw.rstrip(b"\n"))
    again = D.Dataset.open(ds.path)
    assert len(again) == 3 and again.sample(2) == sample(2)
    assert again.append(sample(7), 1) == 3
    assert [r["i"] for r in D.Dataset.open(ds.path).records] == [0, 1, 2, 3]
    assert open(log, "rb").read().startswith(raw)


@pytest.mark.parametrize("bad", [b'{"i": 1, "label" 0}', b'{"i": 7, "label": 0}', b'{"i": 1, "label": 9}'])
def test_a_damaged_line_in_the_middle_is_refused_and_nothing_is_dropped(tmp_path, bad):
    # only a torn last line is an interrupted append; a whole bad line before good ones is
    # damage, and the samples after it must not be cut off (they were, silently, by any command)
    ds = make(tmp_path)
    for i in range(5):
        ds.append(sample(i), i % 3)
    log = os.path.join(ds.path, "samples.jsonl")
    lines = open(log, "rb").read().split(b"\n")
    lines[1] = bad
    damaged = b"\n".join(lines)
    with open(log, "wb") as f:
        f.write(damaged)
    shard = open(os.path.join(ds.path, "shard-00000.bin"), "rb").read()
    with pytest.raises(D.DatasetError, match="line 2 of samples.jsonl is not sample record 1"):
        D.Dataset.open(ds.path)
    assert open(log, "rb").read() == damaged
    assert open(os.path.join(ds.path, "shard-00000.bin"), "rb").read() == shard


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_full_disk_leaves_the_dataset_as_it_was(tmp_path, monkeypatch, fail_at):
    ds = make(tmp_path)
    ds.append(sample(0), 0)
    calls = {"n": 0}
    real = D._write_all

    def writer(f, data):
        calls["n"] += 1
        if calls["n"] == fail_at:  # 1: the sample's bytes, 2: its line
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(D, "_write_all", writer)
    with pytest.raises(OSError) as e:
        ds.append(sample(1), 1)
    assert D.disk_full(e.value)
    assert len(ds) == 1
    assert os.path.getsize(os.path.join(ds.path, "shard-00000.bin")) == 16
    assert len(open(os.path.join(ds.path, "samples.jsonl")).read().splitlines()) == 1
    monkeypatch.setattr(D, "_write_all", real)
    assert len(D.Dataset.open(ds.path)) == 1


def test_refusals(tmp_path):
    ds = make(tmp_path)
    with pytest.raises(D.DatasetError, match="must be 16 bytes"):
        ds.append(b"short", 0)
    with pytest.raises(D.DatasetError, match="out of range 0..2"):
        ds.append(sample(0), 3)
    with pytest.raises(D.DatasetError, match="already holds a dataset"):
        make(tmp_path)
    with pytest.raises(D.DatasetError, match="not a dataset folder"):
        D.Dataset.open(str(tmp_path))
    with pytest.raises(D.DatasetError, match="holds 4x4x1 samples of 3 classes"):
        ds.check_compatible((32, 32, 1), 10)
    man = os.path.join(ds.path, "manifest.json")
    with open(man) as f:
        m = json.load(f)
    m["version"] = 99
    with open(man, "w") as f:
        json.dump(m, f)
    with pytest.raises(D.DatasetError, match="has version 99"):
        D.Dataset.open(ds.path)
    # a shard shorter than its samples is damage, not something to paper over
    ds2 = make(tmp_path, "two")
    ds2.append(sample(0), 0)
    with open(os.path.join(ds2.path, "shard-00000.bin"), "r+b") as f:
        f.truncate(5)
    with pytest.raises(D.DatasetError, match="damaged"):
        D.Dataset.open(ds2.path)


def test_load_samples_quantises_like_the_builder(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(6, 4, 4), dtype=np.uint8)
    y = np.array([0, 1, 2, 2, 1, 0])
    scale, zp = 0.0123, -7
    np.savez(tmp_path / "u8.npz", x=u8, y=y)
    np.savez(tmp_path / "f.npz", x=u8.astype(np.float32)[..., None] / 255, y=y)
    np.savez(tmp_path / "i8.npz", x=(u8.astype(np.int16) - 128).astype(np.int8), y=y)
    xq, yq, src = D.load_samples(str(tmp_path / "u8.npz"), SHAPE, scale, zp, 3)
    want = quantize_input(u8.astype(np.float64)[..., None] / 255.0, (scale, zp))
    assert np.array_equal(xq, want) and list(yq) == list(y)
    # each sample is named by the file's name and content (its SHA-256), and its index
    import hashlib
    tag = hashlib.sha256((tmp_path / "u8.npz").read_bytes()).hexdigest()[:12]
    assert src == [f"u8.npz@{tag}:{i}" for i in range(6)]
    xf, _, _ = D.load_samples(str(tmp_path / "f.npz"), SHAPE, scale, zp, 3)
    assert np.array_equal(xf, quantize_input(u8.astype(np.float32)[..., None] / 255, (scale, zp)))
    xi, _, _ = D.load_samples(str(tmp_path / "i8.npz"), SHAPE, scale, zp, 3)
    assert np.array_equal(xi[..., 0], (u8.astype(np.int16) - 128).astype(np.int8))
    lut = D.quantize_lut(scale, zp)
    assert np.array_equal(lut[u8][..., None], want)


@pytest.mark.parametrize("what, x", [
    ("0..255 pixels as floats", lambda u8: u8.astype(np.float32)),
    ("-1..1", lambda u8: u8.astype(np.float32) / 127.5 - 1),
    ("just above 1", lambda u8: u8.astype(np.float64) / 255 + 1e-3),
], ids=["0..255", "-1..1", "above 1"])
def test_load_samples_refuses_floats_outside_0_1(tmp_path, what, x):
    # clipping them into the model's int8 range would store a few distinct values per sample
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, size=(5, 4, 4), dtype=np.uint8)
    u8[0, 0, 0], u8[0, 0, 1] = 0, 255
    xs = x(u8)
    p = str(tmp_path / "f.npz")
    np.savez(p, x=xs, y=np.array([0, 1, 2, 0, 1]))
    with pytest.raises(D.DatasetError) as e:
        D.load_samples(p, SHAPE, SCALE, ZP, 3)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"tinymp: {p}: ")
    assert f"{float(xs.min()):g}..{float(xs.max()):g}" in msg and "[0, 1]" in msg
    assert "divide 0..255 pixels by 255" in msg and "uint8" in msg


def test_load_samples_takes_floats_at_both_ends_of_0_1(tmp_path):
    x = np.zeros((2, 4, 4), np.float32)
    x[1] = 1.0
    p = str(tmp_path / "ends.npz")
    np.savez(p, x=x, y=np.array([0, 1]))
    xq, _, _ = D.load_samples(p, SHAPE, SCALE, ZP, 3)
    assert np.array_equal(xq, quantize_input(x[..., None], (SCALE, ZP)))


@pytest.mark.parametrize("text", ['{"format": ', "[" * 100000 + "]" * 100000, "\x00\x01"],
                         ids=["cut short", "too deeply nested", "binary"])
def test_a_manifest_that_is_not_json_says_what_to_do(tmp_path, text):
    ds = make(tmp_path)
    ds.append(sample(0), 0)
    man = os.path.join(ds.path, "manifest.json")
    with open(man, "w") as f:
        f.write(text)
    before = {n: open(os.path.join(ds.path, n), "rb").read() for n in os.listdir(ds.path)}
    with pytest.raises(D.DatasetError) as e:
        D.Dataset.open(ds.path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"tinymp: cannot read {man}: "), msg
    assert msg.endswith("restore manifest.json from a backup, or move the folder away to start "
                        "a new dataset"), msg
    assert {n: open(os.path.join(ds.path, n), "rb").read() for n in os.listdir(ds.path)} == before


def test_another_programs_manifest_says_what_to_do(tmp_path):
    os.makedirs(tmp_path / "other")
    man = tmp_path / "other" / "manifest.json"
    man.write_text('{"name": "photos"}')
    with pytest.raises(D.DatasetError) as e:
        D.Dataset.open(str(tmp_path / "other"))
    assert str(e.value).startswith(f"tinymp: {man} is not a tinymp dataset manifest")
    assert "give a dataset folder tinymp made" in str(e.value)


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_a_damaged_samples_file_says_what_to_do(tmp_path, cut):
    whole = tmp_path / "whole.npz"
    np.savez(whole, x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, 1, 2]))
    data = whole.read_bytes()
    p = tmp_path / "cut.npz"
    p.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(D.DatasetError) as e:
        D.load_samples(str(p), SHAPE, SCALE, ZP, 3)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"tinymp: cannot read samples from {p}: "), msg
    assert "truncated or damaged" in msg or "is damaged" in msg, msg
    assert msg.endswith("copy the file again, or save the samples again with "
                        "numpy.savez(FILE, x=..., y=...)"), msg


# --- check_samples reads the data in pieces ---------------------------------------------------

def late_line(path, num_classes=3):
    with pytest.raises(D.DatasetError) as e:
        D.load_samples(path, SHAPE, SCALE, ZP, num_classes)
    return str(e.value)


@pytest.fixture
def pieces(monkeypatch):
    """The sizes in bytes of the pieces of samples check_samples looks at, read in pieces of at
    most 1001 bytes (rounded down to whole values by the reader)."""
    from tinymp import _arrayfiles
    monkeypatch.setattr(_arrayfiles, "CHUNK_BYTES", 1001)
    seen = []
    look = D._Floats.__call__

    def spy(self, x):
        seen.append(x.nbytes)
        return look(self, x)
    monkeypatch.setattr(D._Floats, "__call__", spy)
    return seen


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8])
def test_check_samples_streams_a_file_of_many_pieces(tmp_path, pieces, dtype):
    from test_session_early_input import flipped
    rng = np.random.default_rng(2)
    n = 1000
    x = rng.integers(0, 100, size=(n, 4, 4)).astype(dtype)
    if x.dtype.kind == "f":
        x /= 100
    y = np.arange(n) % 3
    good = str(tmp_path / "good.npz")
    np.savez(good, x=x, y=y)
    assert D.check_samples(good) is None
    per = 1001 // x.itemsize * x.itemsize
    assert sum(pieces) == x.nbytes and len(pieces) == -(-x.nbytes // per) > 5
    assert max(pieces) == per and pieces[-1] == x.nbytes - (len(pieces) - 1) * per
    # a fault in the last piece, as load_samples says it
    cases = {"crc.npz": (flipped(x, y, "x.npy", 1), "its member x.npy is damaged (Bad CRC-32")}
    if x.dtype.kind == "f":
        nan, wide = x.copy(), x.copy()
        nan[-1, -1, -1] = np.nan
        wide[0, 0, 0], wide[-1, -1, -1] = -0.25, 1.5  # the least in the first piece
        cases["nan.npz"] = (dict(x=nan, y=y), "samples hold NaN or infinity")
        cases["wide.npz"] = (dict(x=wide, y=y), "float samples must be in [0, 1], these range "
                                                "-0.25..1.5; divide")
    for name, (data, says) in cases.items():
        p = tmp_path / name
        if isinstance(data, dict):
            np.savez(p, **data)
        else:
            p.write_bytes(data)
        late = late_line(str(p))
        assert says in late, late
        pieces.clear()
        with pytest.raises(D.DatasetError) as e:
            D.check_samples(str(p))
        assert str(e.value) == late and len(pieces) > 5, name


def test_check_samples_holds_a_few_pieces_of_a_large_file(tmp_path):
    # 64 MB of float samples (as the default pieces of 4 MB), checked holding a fraction of it
    import tracemalloc
    x = np.full((16384, 32, 32), 0.5, np.float32)
    x[-1, -1, -1] = 2.0
    p = str(tmp_path / "large.npz")
    np.savez(p, x=x, y=np.zeros(len(x), np.int64))
    del x
    tracemalloc.start()
    try:
        with pytest.raises(D.DatasetError) as e:
            D.check_samples(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "these range 0.5..2" in str(e.value)
    assert peak < 16 << 20, f"{peak:,} bytes"


def test_a_file_too_large_for_memory_is_left_to_load_samples_unread(tmp_path, monkeypatch,
                                                                    pieces):
    # whether it is refused for its shape or its size depends on the model: not read here
    from tinymp import _arrayfiles
    x = np.full((200, 4, 4), np.nan, np.float32)
    p = str(tmp_path / "big.npz")
    np.savez(p, x=x, y=np.zeros(200, np.int64))
    monkeypatch.setattr(_arrayfiles, "_memory_bytes", lambda: 10_000)
    assert D.check_samples(p) is None and pieces == []
    assert "more than this computer's memory (10,000 bytes)" in late_line(p)


def test_labels_negative_or_past_the_classes_are_refused(tmp_path):
    # check_samples knows no classes: a negative label is refused with the words load_samples
    # gives, one past the classes left to load_samples
    x = np.zeros((5, 4, 4), np.uint8)
    for y, says, early in (([0, 1, 5, -2, 2], "label -2 of sample 3 is negative: labels number "
                            "the classes from 0", True),
                           ([0, 1, 3, 2, 2], "label 3 of sample 2 is out of range 0..2", False)):
        p = str(tmp_path / "y.npz")
        np.savez(p, x=x, y=np.array(y))
        late = late_line(p)
        assert late == f"tinymp: {p}: {says}"
        if early:
            with pytest.raises(D.DatasetError) as e:
                D.check_samples(p)
            assert str(e.value) == late
        else:
            assert D.check_samples(p) is None
