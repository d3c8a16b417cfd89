"""A session's samples on the PC: one folder a person can reopen, extend and evaluate on.

    DIR/manifest.json    what the samples are: format, sample shape/dtype/quantisation, classes,
                         the board and model they were collected for, a count per class
    DIR/samples.jsonl    one line per sample, in order: {"i", "label", "t" (unix time), "board",
                         "source"}; a sample exists when its line does
    DIR/shard-NNNNN.bin  the samples' int8 bytes back to back (SHARD samples per shard), in the
                         model's input layout H x W x C

`append` writes the sample's bytes, then its line, each flushed to the disk (fsync) before it
returns: only then is the board told the sample was received. Reopening drops what a crash left
half-written (bytes without a line, a line cut short).
"""
import errno
import json
import os
import random
import time

import numpy as np

from .._arrayfiles import ArrayFileError, read_npz

FORMAT = "tinymp-dataset"
VERSION = 1
SHARD = 4096


class DatasetError(Exception):
    """A dataset folder that cannot be used as asked; the message is one line."""


def _write_all(f, data):
    """Every byte written to the disk goes through here (the tests inject a full disk)."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def _atomic_json(path, obj):
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            _write_all(f, json.dumps(obj, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def quantize_lut(scale, zero_point):
    """uint8 pixel (0..255 meaning 0..1) -> int8 model input: the board agent's table for camera
    frames, round(v / 255 / scale) + zero_point, halves away from zero, clamped."""
    out = np.empty(256, dtype=np.int8)
    for v in range(256):
        q = int(v / 255.0 / scale + 0.5) + zero_point  # half away from zero, as the engine
        out[v] = -128 if q < -128 else 127 if q > 127 else q
    return out


class Dataset:
    def __init__(self, path, manifest):
        self.path = path
        self.manifest = manifest
        s = manifest["sample"]
        self.shape = tuple(s["shape"])
        self.sample_bytes = int(np.prod(self.shape))
        self.num_classes = manifest["num_classes"]
        self.uid = manifest["uid"]
        self.records = []
        self._load()

    # --- opening
    @classmethod
    def create(cls, path, shape, scale, zero_point, num_classes, class_names=None, board=None,
               model_sha256=None, note=None):
        if os.path.exists(os.path.join(path, "manifest.json")):
            raise DatasetError(f"tinymp: {path} already holds a dataset")
        os.makedirs(path, exist_ok=True)
        manifest = {
            "format": FORMAT, "version": VERSION,
            "uid": random.SystemRandom().randrange(1, 1 << 31),
            "created": time.time(),
            "sample": {"shape": [int(d) for d in shape], "dtype": "int8", "layout": "HWC",
                       "scale": float(scale), "zero_point": int(zero_point),
                       "bytes": int(np.prod(shape))},
            "num_classes": int(num_classes),
            "class_names": list(class_names) if class_names else None,
            "board": board, "model_sha256": model_sha256, "note": note,
            "shard_samples": SHARD, "count": 0, "per_class": [0] * int(num_classes),
        }
        _atomic_json(os.path.join(path, "manifest.json"), manifest)
        open(os.path.join(path, "samples.jsonl"), "ab").close()
        return cls(path, manifest)

    @staticmethod
    def peek(path):
        """(uid, samples) of the dataset folder `path`, read without opening it (open() drops what
        an interrupted append left, and a reader must change nothing), or (None, None) when it
        is not one. A torn last line is not counted."""
        try:
            with open(os.path.join(path, "manifest.json")) as f:
                uid = json.load(f).get("uid")
            with open(os.path.join(path, "samples.jsonl"), "rb") as f:
                n = f.read().count(b"\n")
        except (OSError, ValueError, AttributeError):
            return None, None
        return uid, n

    @classmethod
    def open(cls, path):
        mpath = os.path.join(path, "manifest.json")
        try:
            with open(mpath) as f:
                manifest = json.load(f)
        except FileNotFoundError:
            raise DatasetError(f"tinymp: {path} is not a dataset folder (no manifest.json): give "
                               "an .npz of samples or a dataset folder tinymp made (a session's "
                               "dataset or eval folder)") from None
        except (OSError, ValueError) as e:
            raise DatasetError(f"tinymp: cannot read {mpath}: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DatasetError(f"tinymp: {mpath} is not a tinymp dataset manifest")
        if manifest.get("version") != VERSION:
            raise DatasetError(f"tinymp: {mpath} has version {manifest.get('version')}, "
                               f"this tinymp reads {VERSION}")
        try:
            shape = manifest["sample"]["shape"]
            assert len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)
            assert manifest["sample"]["dtype"] == "int8"
            assert isinstance(manifest["num_classes"], int) and manifest["num_classes"] > 0
            assert isinstance(manifest["uid"], int)
        except (KeyError, TypeError, AssertionError):
            raise DatasetError(f"tinymp: {mpath}: malformed sample format") from None
        return cls(path, manifest)

    @classmethod
    def open_or_create(cls, path, **kw):
        if os.path.exists(os.path.join(path, "manifest.json")):
            ds = cls.open(path)
            ds.check_compatible(kw["shape"], kw["num_classes"], kw["scale"], kw["zero_point"])
            return ds
        return cls.create(path, **kw)

    def check_compatible(self, shape, num_classes, scale=None, zero_point=None):
        """The samples suit a model of this input and classes; with `scale` and `zero_point`,
        also its input quantisation (the stored samples are int8 in the model's terms)."""
        if tuple(shape) != self.shape or num_classes != self.num_classes:
            raise DatasetError(
                f"tinymp: dataset {self.path} holds {'x'.join(map(str, self.shape))} samples of "
                f"{self.num_classes} classes; the model takes {'x'.join(map(str, shape))} and "
                f"{num_classes} classes (use another --session)")
        s = self.manifest["sample"]
        try:
            have = float(s.get("scale"))
        except (TypeError, ValueError):
            have = float("nan")
        # a board prints its floats with fewer digits than a float32 needs: equal to 1e-5
        if scale is not None and (not np.isclose(have, scale, rtol=1e-5, atol=0)
                                  or s.get("zero_point") != int(zero_point)):
            raise DatasetError(
                f"tinymp: dataset {self.path} holds samples quantised with input scale "
                f"{s.get('scale')!r} and zero point {s.get('zero_point')!r}; the model takes "
                f"{float(np.float32(scale))!r} and {int(zero_point)} (use another --session)")

    def _shard_path(self, k):
        return os.path.join(self.path, f"shard-{k:05d}.bin")

    def _load(self):
        """Read the sample log; drop what an interrupted append left behind."""
        log = os.path.join(self.path, "samples.jsonl")
        try:
            with open(log, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raw = b""
        recs = []
        *lines, tail = raw.split(b"\n")   # tail: "" or the line an interrupted append cut short
        for n, line in enumerate(lines):
            try:
                r = json.loads(line)
                ok = isinstance(r, dict) and r.get("i") == len(recs) and \
                    isinstance(r.get("label"), int) and 0 <= r["label"] < self.num_classes
            except ValueError:
                ok = False
            if not ok:
                # a whole line that is not the next record is damage (an edit, another program),
                # not a torn append: say where, and change nothing (the samples after it stay)
                raise DatasetError(f"tinymp: dataset {self.path} is damaged: line {n + 1} of "
                                   f"samples.jsonl is not sample record {len(recs)} "
                                   f"({line[:60].decode('utf-8', 'replace')!r}); nothing was "
                                   "changed: repair or remove that line")
            recs.append(r)
        if tail:
            with open(log, "r+b") as f:
                f.truncate(len(raw) - len(tail))
        # shards: whole samples only, as many as the log names
        n = len(recs)
        k = 0
        while True:
            p = self._shard_path(k)
            want = max(0, min(SHARD, n - k * SHARD)) * self.sample_bytes
            if not os.path.exists(p):
                if want:
                    raise DatasetError(f"tinymp: dataset {self.path} is damaged: {p} is missing")
                break
            have = os.path.getsize(p)
            if have < want:
                raise DatasetError(f"tinymp: dataset {self.path} is damaged: {p} is shorter "
                                   "than its samples")
            if have > want:
                with open(p, "r+b") as f:
                    f.truncate(want)
            k += 1
        self.records = recs

    # --- reading
    def __len__(self):
        return len(self.records)

    @property
    def labels(self):
        return np.array([r["label"] for r in self.records], dtype=np.int64)

    def counts(self):
        return np.bincount(self.labels, minlength=self.num_classes)

    def sample(self, i):
        if not 0 <= i < len(self.records):
            raise IndexError(i)
        k, j = divmod(i, SHARD)
        with open(self._shard_path(k), "rb") as f:
            f.seek(j * self.sample_bytes)
            return f.read(self.sample_bytes)

    def samples(self, start=0, stop=None):
        """int8 array [n, H, W, C] of samples start..stop-1."""
        stop = len(self) if stop is None else min(stop, len(self))
        parts = []
        i = start
        while i < stop:
            k, j = divmod(i, SHARD)
            n = min(stop - i, SHARD - j)
            with open(self._shard_path(k), "rb") as f:
                f.seek(j * self.sample_bytes)
                parts.append(np.frombuffer(f.read(n * self.sample_bytes), dtype=np.int8))
            i += n
        flat = np.concatenate(parts) if parts else np.zeros(0, np.int8)
        return flat.reshape((-1,) + self.shape)

    def arrays(self):
        return self.samples(), self.labels

    def sources(self):
        return {r.get("source") for r in self.records}

    # --- writing
    def append(self, data, label, source=None, board=None, t=None):
        """Store one sample durably; return its index. OSError (a full disk, ...) leaves the
        dataset as it was."""
        data = bytes(data)
        if len(data) != self.sample_bytes:
            raise DatasetError(f"tinymp: a sample must be {self.sample_bytes} bytes "
                               f"({'x'.join(map(str, self.shape))} int8), not {len(data)}")
        if not isinstance(label, (int, np.integer)) or not 0 <= int(label) < self.num_classes:
            raise DatasetError(f"tinymp: label {label} is out of range 0..{self.num_classes - 1}")
        i = len(self.records)
        k, j = divmod(i, SHARD)
        shard = self._shard_path(k)
        log = os.path.join(self.path, "samples.jsonl")
        rec = {"i": i, "label": int(label), "t": round(time.time() if t is None else t, 3),
               "board": board, "source": source}
        line = (json.dumps(rec, separators=(",", ":")) + "\n").encode()
        log_size = os.path.getsize(log)
        try:
            with open(shard, "ab") as f:
                if f.tell() != j * self.sample_bytes:
                    f.truncate(j * self.sample_bytes)
                _write_all(f, data)
            with open(log, "ab") as f:
                _write_all(f, line)
        except OSError:
            # undo: the sample does not exist unless both writes made it
            for p, size in ((log, log_size), (shard, j * self.sample_bytes)):
                try:
                    with open(p, "r+b") as f:
                        f.truncate(size)
                except OSError:
                    pass
            raise
        self.records.append(rec)
        return i

    def write_manifest(self):
        """Refresh the summary in manifest.json (count per class); the log stays the truth."""
        self.manifest["count"] = len(self)
        self.manifest["per_class"] = [int(c) for c in self.counts()]
        self.manifest["updated"] = time.time()
        _atomic_json(os.path.join(self.path, "manifest.json"), self.manifest)


def disk_full(e):
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


# --- samples from files ---------------------------------------------------------------------

def load_samples(path, shape, scale, zero_point, num_classes):
    """Labelled samples from an .npz (arrays `x`, `y`) or a dataset folder, as (int8 [N, H, W, C],
    int64 [N], source ids). `x` may be uint8 pixels (0..255), floats in [0, 1] or int8 already
    quantised; [N, H, W] is taken as one channel. DatasetError names what is wrong."""
    if os.path.isdir(path):
        ds = Dataset.open(path)
        ds.check_compatible(shape, num_classes, scale, zero_point)
        if not len(ds):
            raise DatasetError(f"tinymp: the dataset {path} holds no samples")
        x, y = ds.arrays()
        # a sample imported from a file keeps that file's id, so that importing the file and a
        # dataset made from it adds it once; a captured one is named by this dataset
        ids = [r.get("source") if r.get("source") not in (None, "capture") else f"{ds.uid}:{i}"
               for i, r in enumerate(ds.records)]
        return x, y, ids
    if not os.path.exists(path):
        raise DatasetError(f"tinymp: no such samples file: {path}")
    if not os.path.isfile(path):  # a fifo or a device: reading it could wait for ever
        raise DatasetError(f"tinymp: {path} is not a file or a dataset folder")
    try:
        arrays = read_npz(path, ("x", "y"))
    except ArrayFileError as e:
        hint = "" if e.damaged else ("; give an .npz of samples x and labels y, as "
                                     "numpy.savez(FILE, x=..., y=...) writes, or a dataset folder")
        raise DatasetError(f"tinymp: cannot read samples from {path}: {e}{hint}") from None
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 3:
        x = x[..., None]
    h, w, c = shape
    if x.ndim != 4 or tuple(x.shape[1:]) != (h, w, c):
        raise DatasetError(f"tinymp: samples in {path} have shape {tuple(x.shape[1:])}; the model "
                           f"takes {h}x{w}x{c} (H x W x C)")
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetError(f"tinymp: {path}: 'y' must hold one label per sample "
                           f"({len(x)} samples, labels of shape {y.shape})")
    if not len(x):
        raise DatasetError(f"tinymp: {path} holds no samples ('x' has shape {x.shape})")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"tinymp: {path}: labels must be integers, not {y.dtype}")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(bad):
        raise DatasetError(f"tinymp: {path}: label {int(y[bad[0]])} of sample {int(bad[0])} is out "
                           f"of range 0..{num_classes - 1}")
    if x.dtype == np.uint8:
        q = quantize_lut(scale, zero_point)[x]
    elif x.dtype == np.int8:
        q = x
    elif np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise DatasetError(f"tinymp: {path}: samples hold NaN or infinity")
        from ..builder import quantize_input
        q = quantize_input(x, (scale, zero_point))
    else:
        raise DatasetError(f"tinymp: {path}: samples must be uint8, int8 or float, not {x.dtype}")
    import hashlib
    try:
        with open(path, "rb") as f:
            tag = hashlib.sha256(f.read()).hexdigest()[:12]
    except OSError as e:  # gone or changed since it was read
        raise DatasetError(f"tinymp: cannot read samples from {path}: {e.strerror or e}") from None
    name = os.path.basename(path)
    return (np.ascontiguousarray(q), y.astype(np.int64),
            [f"{name}@{tag}:{i}" for i in range(len(y))])
