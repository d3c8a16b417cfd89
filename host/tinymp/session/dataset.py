"""A session's samples on the PC: one folder a person can reopen, extend and evaluate on.

    DIR/manifest.json    what the samples are: format, sample shape/dtype/quantisation, classes,
                         the board and model they were collected for, a count per class
    DIR/samples.jsonl    one line per sample, in order: {"i", "label", "t" (unix time), "board",
                         "source"}; a sample exists when its line does
    DIR/shard-NNNNN.bin  the samples' int8 bytes back to back (SHARD samples per shard), in the
                         model's input layout H x W x C

`append` writes the sample's bytes, then its line, each flushed to the disk (fsync) before it
returns: only then is the board told the sample was received. Opening a dataset changes nothing:
what a crash left half-written (bytes without a line, a line cut short) is not counted, and the
next append drops it.
"""
import errno
import json
import math
import os
import random
import time

import numpy as np

from .._arrayfiles import ArrayFileError, memory_problem, read_npz

FORMAT = "tinymp-dataset"
VERSION = 1
SHARD = 4096


class DatasetError(Exception):
    """A dataset folder that cannot be used as asked; the message is one line."""


# what to do about a manifest.json that is not one: the samples themselves are in the log and
# the shards, but their shape and quantisation are only in the manifest
_MANIFEST_DAMAGED = ("the dataset's manifest is damaged: restore manifest.json from a backup, or "
                     "move the folder away to start a new dataset")


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


def _short(v):
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _whole(v, lo, hi=None):
    return type(v) is int and v >= lo and (hi is None or v <= hi)


def _manifest_problem(m):
    """What is wrong with the values of a dataset manifest that the PC reads, or None."""
    s = m.get("sample")
    if not isinstance(s, dict):
        return f"'sample' must be an object (the samples' format), not {_short(s)}"
    shape = s.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_whole(d, 1) for d in shape)):
        return f"'sample.shape' must be 3 whole numbers > 0 (H, W, C), not {_short(shape)}"
    if s.get("dtype") != "int8":
        return f"'sample.dtype' must be \"int8\", not {_short(s.get('dtype'))}"
    scale = s.get("scale")
    if type(scale) not in (int, float) or not (math.isfinite(scale) and scale > 0):
        return f"'sample.scale' must be a number > 0, not {_short(scale)}"
    if not _whole(s.get("zero_point"), -128, 127):
        return f"'sample.zero_point' must be a whole number -128..127, not " \
               f"{_short(s.get('zero_point'))}"
    if not _whole(m.get("num_classes"), 1):
        return f"'num_classes' must be a whole number > 0, not {_short(m.get('num_classes'))}"
    if not _whole(m.get("uid"), 1, (1 << 31) - 1):  # the board keeps it in 32 bits
        return f"'uid' must be a whole number 1..{(1 << 31) - 1}, not {_short(m.get('uid'))}"
    return None


class Dataset:
    def __init__(self, path, manifest):
        self.path = path
        self.manifest = manifest
        s = manifest["sample"]
        self.shape = tuple(s["shape"])
        self.sample_bytes = math.prod(self.shape)  # not np.prod: a damaged shape must not wrap
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
        cls.check_new(path)
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
    def check_new(path):
        """DatasetError when `path`, which has no manifest.json, holds samples all the same: a
        new manifest would adopt them with another shape, and the next append cut them."""
        for name in ("samples.jsonl", "shard-00000.bin"):
            p = os.path.join(path, name)
            if os.path.isdir(p) or (os.path.isfile(p) and os.path.getsize(p)):
                raise DatasetError(f"tinymp: {path} holds samples ({name}) but no manifest.json: "
                                   "restore the manifest, or move the folder away to start a new "
                                   "dataset")

    @classmethod
    def open(cls, path):
        """The dataset folder `path`, checked; opening it writes nothing."""
        mpath = os.path.join(path, "manifest.json")
        try:
            with open(mpath, encoding="utf-8") as f:
                manifest = json.load(f)
        except FileNotFoundError:
            raise DatasetError(f"tinymp: {path} is not a dataset folder (no manifest.json): give "
                               "an .npz of samples or a dataset folder tinymp made (a session's "
                               "dataset or eval folder)") from None
        except OSError as e:
            raise DatasetError(f"tinymp: cannot read {mpath}: {e.strerror or e}; make it a file "
                               "this user can read") from None
        except (ValueError, RecursionError) as e:  # not JSON: cut short, edited, overwritten
            why = "too deeply nested" if isinstance(e, RecursionError) else e
            raise DatasetError(f"tinymp: cannot read {mpath}: {why}; {_MANIFEST_DAMAGED}") \
                from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DatasetError(f"tinymp: {mpath} is not a tinymp dataset manifest (no 'format': "
                               f"\"{FORMAT}\"): give a dataset folder tinymp made, or restore "
                               "this one's manifest.json from a backup")
        if manifest.get("version") != VERSION:
            raise DatasetError(f"tinymp: {mpath} has version {manifest.get('version')!r}, "
                               f"this tinymp reads {VERSION}")
        problem = _manifest_problem(manifest)
        if problem:
            raise DatasetError(f"tinymp: {mpath}: {problem}; repair that value (the samples "
                               "themselves are in samples.jsonl and the shard files)")
        return cls(path, manifest)

    @classmethod
    def open_or_create(cls, path, **kw):
        if os.path.exists(os.path.join(path, "manifest.json")):
            ds = cls.open(path)
            ds.check_compatible(kw["shape"], kw["num_classes"], kw["scale"], kw["zero_point"])
            return ds
        return cls.create(path, **kw)

    def check_compatible(self, shape, num_classes, scale=None, zero_point=None,
                         hint="use another --session"):
        """The samples suit a model of this input and classes; with `scale` and `zero_point`,
        also its input quantisation (the stored samples are int8 in the model's terms). `hint`
        ends the message: what to do (the session's own dataset: another session folder)."""
        if tuple(shape) != self.shape or num_classes != self.num_classes:
            raise DatasetError(
                f"tinymp: dataset {self.path} holds {'x'.join(map(str, self.shape))} samples of "
                f"{self.num_classes} classes; the model takes {'x'.join(map(str, shape))} and "
                f"{num_classes} classes ({hint})")
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
                f"{float(np.float32(scale))!r} and {int(zero_point)} ({hint})")

    def _shard_path(self, k):
        return os.path.join(self.path, f"shard-{k:05d}.bin")

    def _load(self):
        """Read the sample log and check that the shards hold its samples. Nothing is written: a
        line an interrupted append cut short, and the sample's bytes before it, are left for the
        next append to drop."""
        log = os.path.join(self.path, "samples.jsonl")
        try:
            with open(log, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            if os.path.exists(self._shard_path(0)):
                raise DatasetError(f"tinymp: dataset {self.path} is damaged: samples.jsonl (the "
                                   "list of its samples) is missing; restore it, or move the "
                                   "folder away to start a new dataset") from None
            raw = b""
        except OSError as e:
            raise DatasetError(f"tinymp: cannot read {log}: {e.strerror or e}") from None
        recs = []
        *lines, tail = raw.split(b"\n")   # tail: "" or the line an interrupted append cut short
        for n, line in enumerate(lines):
            if not self._next_record(line, recs):
                # a whole line that is not the next record is damage (an edit, another program),
                # not a torn append: say where, and change nothing (the samples after it stay)
                raise DatasetError(f"tinymp: dataset {self.path} is damaged: line {n + 1} of "
                                   f"samples.jsonl is not sample record {len(recs)} "
                                   f"({line[:60].decode('utf-8', 'replace')!r}); nothing was "
                                   "changed: repair or remove that line")
        # a whole last record without its newline (an editor drops it) is kept, not cut
        self._log_newline = bool(tail) and self._next_record(tail, recs)
        self._log_end = len(raw) if self._log_newline else len(raw) - len(tail)
        n = len(recs)
        k = 0
        while True:
            p = self._shard_path(k)
            first, last = k * SHARD, min(n, (k + 1) * SHARD) - 1
            want = max(0, last - first + 1) * self.sample_bytes
            # what an interrupted append leaves: the bytes of one sample more, in the shard of
            # the next sample; more than that is not a crash's leftover, and the next append
            # would cut it
            most = want + (self.sample_bytes if k == n // SHARD else 0)
            if not os.path.exists(p):
                if want:
                    raise DatasetError(f"tinymp: dataset {self.path} is damaged: {p} (samples "
                                       f"{first}..{last}) is missing; restore it, or move the "
                                       "folder away to start a new dataset")
                break
            have = os.path.getsize(p) if os.path.isfile(p) else -1
            if have < 0:
                raise DatasetError(f"tinymp: dataset {self.path} is damaged: {p} is not a file")
            if have < want or have > most:
                size = "x".join(map(str, self.shape))
                raise DatasetError(
                    f"tinymp: dataset {self.path} is damaged: {p} holds {have:,} bytes, "
                    f"{'less' if have < want else 'more'} than the {want:,} of the "
                    f"{max(0, last - first + 1)} samples samples.jsonl names for it ({size} int8 "
                    "each, as manifest.json says); restore the file that is wrong, or move the "
                    "folder away to start a new dataset")
            k += 1
        self.records = recs

    def _next_record(self, line, recs):
        """Append the log line `line` to `recs` when it is the next sample record."""
        try:
            r = json.loads(line)
        except (ValueError, RecursionError):
            return False
        ok = isinstance(r, dict) and type(r.get("i")) is int and r["i"] == len(recs) and \
            type(r.get("label")) is int and 0 <= r["label"] < self.num_classes and \
            isinstance(r.get("source"), (str, type(None)))  # a set holds the sources
        if ok:
            recs.append(r)
        return ok

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
        return self._read(k, j, 1)

    def _read(self, k, j, n):
        """n samples' bytes from shard k, from its sample j; DatasetError when they are not
        there (the shard changed since the dataset was opened)."""
        p = self._shard_path(k)
        try:
            with open(p, "rb") as f:
                f.seek(j * self.sample_bytes)
                data = f.read(n * self.sample_bytes)
        except OSError as e:
            raise DatasetError(f"tinymp: cannot read the samples of dataset {self.path}: {p}: "
                               f"{e.strerror or e}") from None
        if len(data) != n * self.sample_bytes:
            raise DatasetError(f"tinymp: dataset {self.path} is damaged: {p} ends before sample "
                               f"{k * SHARD + j + n - 1}")
        return data

    def samples(self, start=0, stop=None):
        """int8 array [n, H, W, C] of samples start..stop-1."""
        stop = len(self) if stop is None else min(stop, len(self))
        parts = []
        i = start
        while i < stop:
            k, j = divmod(i, SHARD)
            n = min(stop - i, SHARD - j)
            parts.append(np.frombuffer(self._read(k, j, n), dtype=np.int8))
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
        if self._log_newline:
            line = b"\n" + line
        elif os.path.getsize(log) != self._log_end:
            with open(log, "r+b") as f:  # a line an interrupted append cut short
                f.truncate(self._log_end)
        log_size = self._log_end
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
        self._log_end += len(line)
        self._log_newline = False
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

def _x_head(heads):
    """The dtype and shape of an .npz's `x`, [N, H, W] taken as [N, H, W, 1]."""
    xt, xs = heads["x"]
    return xt, xs + (1,) if len(xs) == 3 else xs


def _check_sample_kinds(path, heads):
    """What _check_sample_arrays refuses that does not depend on the model: labels that are not
    one integer per sample, no samples, samples of a type load_samples does not take. An `x` of
    no dimensions is left to the shape check (which names the model's input)."""
    (xt, xs), (yt, ys) = _x_head(heads), heads["y"]
    if not xs:
        return
    if len(ys) != 1 or ys[0] != xs[0]:
        raise DatasetError(f"tinymp: {path}: 'y' must hold one label per sample "
                           f"({xs[0]} samples, labels of shape {ys})")
    if not xs[0]:
        raise DatasetError(f"tinymp: {path} holds no samples ('x' has shape {xs})")
    if not np.issubdtype(yt, np.integer):
        raise DatasetError(f"tinymp: {path}: labels must be integers, not {yt}")
    if not (xt in (np.uint8, np.int8) or np.issubdtype(xt, np.floating)):
        raise DatasetError(f"tinymp: {path}: samples must be uint8, int8 or float, not {xt}")


def _check_sample_arrays(path, heads, shape):
    """Refuse, from the headers of an .npz's arrays alone ({name: (dtype, shape)}), samples the
    model cannot take: so no data of a wrong file is read (it may declare gigabytes)."""
    _, xs = _x_head(heads)
    h, w, c = shape
    if len(xs) != 4 or xs[1:] != (h, w, c):
        raise DatasetError(f"tinymp: samples in {path} have shape {xs[1:]}; the model "
                           f"takes {h}x{w}x{c} (H x W x C)")
    _check_sample_kinds(path, heads)


def _check_labels(path, y, num_classes=None):
    """Refuse a label of `y` that is no class: a negative one first, then, given `num_classes`
    (which check_samples does not know), one past the last class."""
    neg = np.flatnonzero(y < 0)
    if len(neg):
        i = int(neg[0])
        raise DatasetError(f"tinymp: {path}: label {int(y[i])} of sample {i} is negative: labels "
                           "number the classes from 0")
    past = np.flatnonzero(y >= num_classes) if num_classes is not None else ()
    if len(past):
        i = int(past[0])
        raise DatasetError(f"tinymp: {path}: label {int(y[i])} of sample {i} is out of range "
                           f"0..{num_classes - 1}")


class _Floats:
    """Whether float samples are all finite, and their least and greatest value: given the
    samples whole (load_samples) or piece by piece (check_samples streams them); samples of
    another type are not looked at. `check` refuses what load_samples does not take."""

    def __init__(self):
        self.finite, self.lo, self.hi = True, math.inf, -math.inf

    def __call__(self, x):
        if not (self.finite and np.issubdtype(x.dtype, np.floating) and x.size):
            return
        if not np.all(np.isfinite(x)):
            self.finite = False
            return
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))

    def check(self, path):
        if not self.finite:
            raise DatasetError(f"tinymp: {path}: samples hold NaN or infinity")
        # float samples mean 0..1, bounds included and no tolerance: u8 / 255 lands in it
        # exactly, and anything else (0..255 pixels, -1..1, standardised) would be clipped into
        # a few int8 values without a word
        if self.lo < 0 or self.hi > 1:
            raise DatasetError(
                f"tinymp: {path}: float samples must be in [0, 1], these range "
                f"{self.lo:g}..{self.hi:g}; divide 0..255 pixels by 255, or give uint8 pixels "
                "(0..255) or int8 samples already quantised for the model")


class _HeadersChecked(Exception):
    """Stops read_npz when check_samples, from the headers, leaves a file's data to load_samples
    (before any of it is read)."""


def _read_samples_file(path, check, stream=None):
    """read_npz of the arrays x and y of the samples file `path`, `check` judging their headers,
    the arrays of `stream` streamed (read_npz); DatasetError saying what is wrong."""
    if not os.path.exists(path):
        raise DatasetError(f"tinymp: no such samples file: {path}")
    if not os.path.isfile(path):  # a fifo or a device: reading it could wait for ever
        raise DatasetError(f"tinymp: {path} is not a file or a dataset folder")
    try:
        return read_npz(path, ("x", "y"), check, stream)
    except ArrayFileError as e:
        hint = "; copy the file again, or save the samples again with numpy.savez(FILE, x=..., " \
            "y=...)" if e.damaged else "" if not e.wrong_kind else (
                "; give an .npz of samples x and labels y, as numpy.savez(FILE, x=..., y=...) "
                "writes, or a dataset folder")
        raise DatasetError(f"tinymp: cannot read samples from {path}: {e}{hint}") from None


def _has_samples(ds):
    if not len(ds):
        raise DatasetError(f"tinymp: the dataset {ds.path} holds no samples")


def check_samples(path):
    """What load_samples checks of `path` that needs no model, so that a command refuses a bad
    file before it opens the board: it exists; a folder is a dataset (Dataset.open) with samples;
    a file is an .npz whose arrays x and y have sound headers, one integer label per sample and
    samples of a type load_samples takes, then, from its data, that no member is damaged, no
    label is negative and float samples are finite and in [0, 1]. The labels are read whole, the
    samples streamed (the file may be of a shape the model does not take). A file whose arrays
    would not fit in memory is not read: load_samples refuses it for its shape or its size, as
    the model says. What needs the model (the samples' shape, a label past the classes) is left
    to load_samples. DatasetError as load_samples says it. Returns the folder's Dataset, for
    load_samples' `dataset` (so it is not read twice), or None for a file."""
    if os.path.isdir(path):
        ds = Dataset.open(path)
        _has_samples(ds)
        return ds

    def check(heads):
        _check_sample_kinds(path, heads)
        if not _x_head(heads)[1] or memory_problem(heads):
            # x of no dimensions is refused by the shape check, and arrays too large by it or
            # by their size: which one, the model says
            raise _HeadersChecked
    floats = _Floats()
    try:
        y = _read_samples_file(path, check, {"x": floats})["y"]
    except _HeadersChecked:
        return None
    _check_labels(path, y)
    floats.check(path)
    return None


def load_samples(path, shape, scale, zero_point, num_classes, dataset=None):
    """Labelled samples from an .npz (arrays `x`, `y`) or a dataset folder, as (int8 [N, H, W, C],
    int64 [N], source ids). `x` may be uint8 pixels (0..255), floats in [0, 1] (others are refused,
    not clipped) or int8 already quantised; [N, H, W] is taken as one channel. `dataset`: the
    folder `path` as check_samples opened it. DatasetError names what is wrong."""
    if dataset is not None or os.path.isdir(path):
        ds = dataset if dataset is not None else Dataset.open(path)
        ds.check_compatible(shape, num_classes, scale, zero_point,
                            hint="it was collected for another model")
        _has_samples(ds)
        x, y = ds.arrays()
        # a sample imported from a file keeps that file's id, so that importing the file and a
        # dataset made from it adds it once; a captured one is named by this dataset
        ids = [r.get("source") if r.get("source") not in (None, "capture") else f"{ds.uid}:{i}"
               for i, r in enumerate(ds.records)]
        return x, y, ids
    arrays = _read_samples_file(path, lambda heads: _check_sample_arrays(path, heads, shape))
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 3:
        x = x[..., None]
    _check_labels(path, y, num_classes)
    if x.dtype == np.uint8:
        q = quantize_lut(scale, zero_point)[x]
    elif x.dtype == np.int8:
        q = x
    else:  # a float: the only other kind _check_sample_arrays lets through
        floats = _Floats()
        floats(x)
        floats.check(path)
        from ..builder import quantize_input
        q = quantize_input(x, (scale, zero_point))
    import hashlib
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:  # in pieces: the file may be larger than its arrays' room
            for piece in iter(lambda: f.read(1 << 20), b""):
                h.update(piece)
        tag = h.hexdigest()[:12]
    except OSError as e:  # gone or changed since it was read
        raise DatasetError(f"tinymp: cannot read samples from {path}: {e.strerror or e}") from None
    name = os.path.basename(path)
    return (np.ascontiguousarray(q), y.astype(np.int64),
            [f"{name}@{tag}:{i}" for i in range(len(y))])
