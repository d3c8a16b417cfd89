# tinymp_agent: the on-board side of the tinymp personalisation session (docs/SESSION.md).
#
# One self-contained file that runs unchanged under MicroPython (frozen into the firmware as
# module `tinymp_agent`, or pasted through the raw REPL) and under CPython (the simulated board,
# with the PC package's `tinymp`). It serves a binary framed protocol on the board's USB serial:
#
#     import tinymp_agent; tinymp_agent.main()
#
# Frame (all integers little-endian):
#     0  2  magic  b"\xa5T"
#     2  1  type   (requests < 0x80; reply = request | 0x80; 0xFF = error reply)
#     3  1  flags  (0)
#     4  2  seq    (a reply carries its request's seq)
#     6  4  length of the payload
#    10  2  header check: CRC-32 of bytes 0..9, low 16 bits (a corrupted length is never trusted)
#    12  n  payload: one value in the tagged encoding below
#  12+n  4  CRC-32 of bytes 0..12+n-1
#
# Values: N None, T True, F False, i int64, f float64, s str, b bytes (u32 length), l list and
# d dict (u32 count). Only the modules sys, struct, os, time, gc, micropython, hashlib, binascii,
# tinymp, tinymp_romfs (ROMFS writes) and (on a camera) sensor are used; each except struct, sys
# and os is optional.

import os
import struct
import sys

try:
    import time
except ImportError:  # pragma: no cover
    time = None
try:
    import gc
except ImportError:  # pragma: no cover
    gc = None
try:
    import binascii
except ImportError:  # pragma: no cover
    binascii = None
try:
    import hashlib
except ImportError:  # pragma: no cover
    hashlib = None

# 2: trial runs (params.try); 3: INFO params also without saved options; 4: training runs keep
# the samples' frozen-prefix features (Features) and take the prediction from the step; 5: each
# training event says whether its step started from kept features ("cached"), when TRAIN_START
# asks for it ("mark_cached": a PC before it checks rows of exactly 11 columns); 6: a run that
# names no lr trains with the engine's rate for its method, which TRAIN_START's reply says ("lr");
# 7: TRAIN_START keep_features keeps a run's features for later runs (features.kept); 8: INFO
# "features" says what features.kept holds (from its header), for `tinymp status`; 9:
# SAMPLES_STATUS says the room for more samples (free, store_bytes, record_extra); 10: frames
# (max_payload) take at least one sample of the committed model, as far as a quarter of the heap
# goes (a 128x128 RGB sample did not fit an eighth of an OpenMV H7's or an ESP32's heap); 11: a
# change of several files (a save, promotion, rollback or reset of the parameters, a model's
# commit) is journalled (JOURNAL) and finished by the next start after a reset cuts it short
AGENT_VERSION = "11"
PROTOCOL = 1
MAGIC = b"\xa5T"
HEADER = 12
DEFAULT_METHOD = "tinymp"  # what m.plan() trains without a method (docs/API.md)
TRIAL_FILES = ("params.try", "params.try.opt")  # a run trained without saving, kept for PARAMS_SAVE
JOURNAL = "files.op"  # the steps of a change of several files under way (Agent._change)
# the methods whose plans pick channels by `ratio`; the engine refuses a ratio other than 1 for the
# others (from agent 6; before, it took one and trained the same channels as without it)
RATIO_METHODS = ("tinymp", "tinytrain")


def drop_ignored_ratio(opts):
    """`opts` (a dict of plan options saved with a run) without the ratio an agent before 6 took
    and ignored for a method outside RATIO_METHODS: the plan that run trained with, which the
    engine now makes only without it. Changes `opts` and returns it."""
    if (opts.get("method") or DEFAULT_METHOD) not in RATIO_METHODS:
        opts.pop("ratio", None)
    return opts

SUPPORT_SAMPLES = 32  # the first samples of the store a plan's selection pass reads (tinytrain)
MAX_PAYLOAD = 65536  # the largest frame payload the agent ever accepts; INFO says what it takes

# request types
T_INFO = 0x01
T_BYE = 0x02
T_PUSH_BEGIN = 0x10
T_PUSH_DATA = 0x11
T_PUSH_COMMIT = 0x12
T_PUSH_ROMFS = 0x13
T_SAMPLES_STATUS = 0x20
T_SAMPLES_PUT = 0x21
T_CAPTURE = 0x22
T_CAPTURE_KEEP = 0x23
T_SAMPLES_CLEAR = 0x24
T_TRAIN_START = 0x30
T_TRAIN_STEPS = 0x31
T_TRAIN_END = 0x32
T_PREDICT = 0x40
T_REPORT = 0x50
T_PARAMS_SAVE = 0x60
T_PARAMS_ROLLBACK = 0x61
T_PARAMS_RESET = 0x62
T_ERROR = 0xFF
REPLY = 0x80

# the fields of one training event (a row of TRAIN_STEPS' "events"); "cached": the step started
# from the sample's kept features (the prefix layers skipped), so its times are not a full step's
EVENT_FIELDS = ("step", "sample", "label", "pred", "loss", "forward_us", "backward_us",
                "update_us", "step_us", "step_cycles", "high_water", "cached")


# ---------------------------------------------------------------------------------------------
# CRC-32 (IEEE 802.3, as zlib/binascii): binascii.crc32 when the firmware has it, else bitwise.

def _crc32_bitwise(data, crc=0):
    crc = crc ^ 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xEDB88320
            else:
                crc >>= 1
    return crc ^ 0xFFFFFFFF


if binascii is not None and hasattr(binascii, "crc32"):
    def crc32(data, crc=0):
        return binascii.crc32(data, crc) & 0xFFFFFFFF
else:  # pragma: no cover - exercised by tests through _crc32_bitwise
    crc32 = _crc32_bitwise


def _hex(b):
    if binascii is not None and hasattr(binascii, "hexlify"):
        return binascii.hexlify(b).decode()
    return "".join("%02x" % x for x in b)


# ---------------------------------------------------------------------------------------------
# Value encoding

class ProtocolError(Exception):
    """A frame or value that does not follow the protocol. args: (code, message, seq)."""


def encode(v, out=None):
    if out is None:
        out = bytearray()
    if v is None:
        out.extend(b"N")
    elif v is True:
        out.extend(b"T")
    elif v is False:
        out.extend(b"F")
    elif isinstance(v, int):
        out.extend(b"i")
        out.extend(struct.pack("<q", v))
    elif isinstance(v, float):
        out.extend(b"f")
        out.extend(struct.pack("<d", v))
    elif isinstance(v, str):
        s = v.encode()
        out.extend(b"s")
        out.extend(struct.pack("<I", len(s)))
        out.extend(s)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        out.extend(b"b")
        out.extend(struct.pack("<I", len(v)))
        out.extend(v)
    elif isinstance(v, (list, tuple)):
        out.extend(b"l")
        out.extend(struct.pack("<I", len(v)))
        for x in v:
            encode(x, out)
    elif isinstance(v, dict):
        out.extend(b"d")
        out.extend(struct.pack("<I", len(v)))
        for k in v:
            encode(str(k), out)
            encode(v[k], out)
    else:
        raise TypeError("cannot encode %s" % type(v))
    return out


def _dec(buf, pos, depth):
    if pos >= len(buf):
        raise ValueError("value truncated")
    tag = buf[pos]
    pos += 1
    if tag == 78:  # N
        return None, pos
    if tag == 84:  # T
        return True, pos
    if tag == 70:  # F
        return False, pos
    if tag == 105 or tag == 102:  # i f
        if pos + 8 > len(buf):
            raise ValueError("number truncated")
        v = struct.unpack_from("<q" if tag == 105 else "<d", buf, pos)[0]
        return v, pos + 8
    if pos + 4 > len(buf):
        raise ValueError("length truncated")
    n = struct.unpack_from("<I", buf, pos)[0]
    pos += 4
    if tag == 115 or tag == 98:  # s b
        if pos + n > len(buf):
            raise ValueError("string or bytes past the end")
        v = bytes(buf[pos:pos + n])
        if tag == 115:
            try:
                v = v.decode()
            except UnicodeError:
                raise ValueError("string is not UTF-8")
        return v, pos + n
    if tag == 108 or tag == 100:  # l d
        if depth >= 8:
            raise ValueError("values nested too deeply")
        if n > len(buf) - pos:  # every item takes at least one byte
            raise ValueError("count past the end")
        if tag == 108:
            v = []
            for _ in range(n):
                x, pos = _dec(buf, pos, depth + 1)
                v.append(x)
            return v, pos
        v = {}
        for _ in range(n):
            k, pos = _dec(buf, pos, depth + 1)
            if not isinstance(k, str):
                raise ValueError("dict key is not a string")
            x, pos = _dec(buf, pos, depth + 1)
            v[k] = x
        return v, pos
    raise ValueError("unknown value tag %d" % tag)


def decode(buf):
    """One value from `buf` (all of it); ValueError when malformed."""
    v, pos = _dec(buf, 0, 0)
    if pos != len(buf):
        raise ValueError("trailing bytes after the value")
    return v


# ---------------------------------------------------------------------------------------------
# Frames

def frame(ftype, seq, payload=b""):
    """The bytes of one frame."""
    n = len(payload)
    h = bytearray(MAGIC)
    h.extend(struct.pack("<BBHI", ftype, 0, seq & 0xFFFF, n))
    h.extend(struct.pack("<H", crc32(h) & 0xFFFF))
    c = crc32(payload, crc32(h))
    h.extend(payload)
    h.extend(struct.pack("<I", c))
    return h


class FrameReader:
    """Reads frames from a blocking byte stream. `read()` returns (type, seq, payload, crc) or
    raises ProtocolError (after consuming the bad bytes, resynchronised on the next magic) or
    EOFError when the stream ends."""

    def __init__(self, stream, max_payload=MAX_PAYLOAD):
        self.stream = stream
        self.max_payload = max_payload
        self.pending = b""  # bytes read but given back (resynchronisation)
        self.skipped = 0    # bytes dropped while looking for a magic

    def _read(self, n):
        if self.pending:
            out = self.pending[:n]
            self.pending = self.pending[n:]
        else:
            out = self._chunk(n)  # usually all n bytes at once: no copy
        while len(out) < n:
            out += self._chunk(n - len(out))
        return out

    def _chunk(self, n):
        try:
            chunk = self.stream.read(n)
        except OSError:  # e.g. EIO on a pseudo-terminal whose other side closed
            raise EOFError
        if not chunk:
            raise EOFError
        return chunk

    def read(self):
        # 1. find the magic
        b = self._read(1)
        while True:
            if b[0] == MAGIC[0]:
                b2 = self._read(1)
                if b2[0] == MAGIC[1]:
                    break
                self.skipped += 1
                b = b2
                continue
            self.skipped += 1
            b = self._read(1)
        rest = self._read(HEADER - 2)
        head = MAGIC + rest
        ftype, _flags, seq, n = struct.unpack_from("<BBHI", head, 2)
        check = struct.unpack_from("<H", head, 10)[0]
        if crc32(head[:10]) & 0xFFFF != check:
            # not a trustworthy header: look for a magic again from the byte after this one
            self.pending = head[1:] + self.pending
            raise ProtocolError("header", "corrupted frame header", None)
        if n > self.max_payload:
            # never swallow what may be the next frames: resynchronise after this header
            raise ProtocolError("too_long", "frame payload of %d bytes is over the limit of %d"
                                % (n, self.max_payload), seq)
        try:
            body = self._read(n + 4)
        except MemoryError:
            # a frame the limit allows, on a heap too full or too cut up for it: drop its bytes
            # in small pieces and say so (the agent stays up; the PC gets one clear refusal)
            left = n + 4
            while left:
                left -= len(self._read(min(left, 256)))
            raise ProtocolError("memory", "no memory for a frame of %d bytes" % n, seq)
        payload = memoryview(body)[:n]  # no copy of a large payload on a small heap
        c = crc32(payload, crc32(head))
        if c != struct.unpack_from("<I", body, n)[0]:
            raise ProtocolError("crc", "frame CRC-32 mismatch", seq)
        return ftype, seq, payload, c


# ---------------------------------------------------------------------------------------------
# Board helpers

def _ticks_us():
    if hasattr(time, "ticks_us"):
        return time.ticks_us()
    return time.perf_counter_ns() // 1000


def _ticks_diff(a, b):
    if hasattr(time, "ticks_diff"):
        return time.ticks_diff(a, b)
    return a - b


def _ticks_cpu():
    if hasattr(time, "ticks_cpu"):
        return time.ticks_cpu()
    return None


def _now():
    try:
        return int(time.time())
    except Exception:  # pragma: no cover
        return 0


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


_ENOSPC = 28  # errno of a full filesystem (POSIX, littlefs and MicroPython's FAT alike)


def _no_room(e):
    return isinstance(e, OSError) and bool(e.args) and e.args[0] == _ENOSPC


def _why(e):
    """An error in words for the PC (MicroPython's OSError prints as its bare number)."""
    if _no_room(e):
        return "no room left on the board's filesystem"
    return str(e) or type(e).__name__


def _sync(f):
    f.flush()
    fsync = getattr(os, "fsync", None)
    if fsync is not None and hasattr(f, "fileno"):
        try:
            fsync(f.fileno())
        except (OSError, ValueError):
            pass
    elif hasattr(os, "sync"):
        os.sync()


def _replace(src, dst):
    """Rename src over dst. POSIX and littlefs replace atomically; FAT refuses an existing dst, so
    there dst is removed first and `Agent._recover` finishes a rename cut short by a reset."""
    try:
        os.rename(src, dst)
    except OSError:
        _remove(dst)
        os.rename(src, dst)


def _write_file(path, data):
    """data as the file `path`, whole or not at all (a failed write leaves no temporary file)."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            _sync(f)
    except BaseException:
        _remove(tmp)
        raise
    _replace(tmp, path)


def _redo(p, steps):
    """Make the steps of a journal (Agent._change), `p` the path of a name, and remove the
    journal. Done again after a reset, each step is made only when it was not yet: an "rm" is
    always made again; an "mv" when its source is there, unless a later step, already made (its
    source gone), has made that source again (a save moves params.bin aside, then params.new
    to params.bin: after a reset, that params.bin is the new one). In every journal a name is
    made again at most once, so this tells each step's state from the files alone."""
    for i in range(len(steps)):
        t = steps[i]
        if t[0] == "rm":
            try:
                os.remove(p(t[1]))
            except OSError:
                if _exists(p(t[1])):  # not "no such file": the step failed
                    raise
            continue
        if not _exists(p(t[1])):
            continue
        if any(u[0] == "mv" and u[2] == t[1] and not _exists(p(u[1])) for u in steps[i + 1:]):
            continue  # its source is a later step's result
        _replace(p(t[1]), p(t[2]))
    _remove(p(JOURNAL))


def _sha256_file(path):
    h = hashlib.sha256()
    buf = bytearray(4096)
    mv = memoryview(buf)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
    return h.digest()


def _free_bytes(path):
    """Free bytes of the filesystem holding `path`, or None when the port cannot say."""
    statvfs = getattr(os, "statvfs", None)
    if statvfs is None:
        return None
    try:
        st = statvfs(path)
        return st[1] * st[4]  # fragment size x blocks available
    except (OSError, IndexError, TypeError):
        return None


def _romfs_module():
    """tinymp_romfs (ROMFS writes): frozen beside this module on the board, in the PC package
    for the simulated board; None where it is absent (an agent pasted through the raw REPL)."""
    try:
        import tinymp_romfs
        return tinymp_romfs
    except ImportError:
        pass
    try:
        from tinymp import tinymp_romfs
        return tinymp_romfs
    except ImportError:
        return None


def _mem_free():
    if gc is not None and hasattr(gc, "mem_free"):
        gc.collect()
        return gc.mem_free()
    return None


# features.kept: a training run's frozen-prefix features kept for later runs (TRAIN_START
# keep_features, agent 7). A header of KEPT_HEAD bytes says what they are the features of (b"TMPF",
# u32 version, u32 the plan's first trained layer, u32 bytes per sample, u32 the sample store's
# dataset id, u32 its sample bytes, u32 the CRC-32 of the engine's version, u32 the file's salt,
# the model's SHA-256 in 64 hex digits); then one record per sample in store order: u32 id, u32
# label, u32 CRC-32 of (salt, id, label, features), the features. A record that does not match the
# store or its CRC is recomputed. The salt, new with each file, keeps out bytes a file system
# leaves where a file grows past its end (FAT gives it clusters as an earlier file left them).
def _salt():
    """A u32 that differs from file to file: os.urandom where the port has it, else the clocks."""
    try:
        return struct.unpack("<I", os.urandom(4))[0]
    except (AttributeError, OSError, NotImplementedError, ValueError):
        t = _ticks_us() ^ (_ticks_cpu() or 0) * 2654435761
        return t & 0xFFFFFFFF


KEPT_FILE = "features.kept"
KEPT_MAGIC = b"TMPF"
KEPT_VERSION = 2  # 2: the salt in the records' CRCs
KEPT_HEAD = 96
KEPT_REC = 12
KEPT_SALT = 28  # the salt's offset in the header


def _gap(rec):
    """A record of features.kept that no step wrote (a run that skipped a sample leaves its
    record's bytes zero): id 0 and label 0, which sample 0 may have, with a CRC of 0, which
    its written record has only once in 2**32 times (its features are then made again)."""
    return not any(rec[:KEPT_REC])


def _same_kept(h, head):
    """Whether the kept file's header `h` is the one `head` describes (the salt aside)."""
    return len(h) == KEPT_HEAD and h[:KEPT_SALT] == head[:KEPT_SALT] and \
        h[KEPT_SALT + 4:] == head[KEPT_SALT + 4:]


class Features:
    """The frozen-prefix features of a training run's samples (plan.cache_bytes each), kept at a
    sample's first step (Trainer.step(x, y, cache=...)) so that its later steps start from them
    (Trainer.step_cached) and skip the prefix layers and the read of the sample: the same
    parameters, losses and predictions, far fewer instructions per step. In RAM when the heap
    has room for them, else in a file beside the sample store; a sample whose features could not
    be kept (the file full or unreadable) is simply stepped from its input.

    With `head` (the kept file's header, the run keeping its features for later runs) `path` is
    features.kept: the records it holds for the store's samples are this run's from the start
    (`reused`), and the features kept during the run are written there, during the run (file) or
    by persist() after it (RAM)."""

    RESERVE = 48 * 1024  # heap left for replies and evaluation after a cache in RAM

    def __init__(self, n, size, path, stand_in=None, head=None, store=None):
        """where: "ram", "file", or None (no room for either: the run goes without). The heap's
        free bytes are measured after the bookkeeping; a board that measures none goes by
        `stand_in` (None: RAM is tried). Raises MemoryError when even the bookkeeping does not
        fit. `store`: the sample store whose first n samples these are (with `head`)."""
        self.n, self.size, self.path, self.head = n, size, path, head
        self.pre = KEPT_REC if head else 0  # bytes before a sample's features in the file
        self.base = KEPT_HEAD if head else 0
        self.kept = bytearray(n)  # 1: sample i's features are kept
        self.sid = [0] * n  # ...and its store id and label
        self.label = [0] * n
        self.new = bytearray(n) if head else None  # kept in RAM this run, not yet in the file
        self.old = bytearray(n) if head else None  # kept from the start: the file's record
        self.buf = self.f = self.tmp = None
        self.where = None
        self.full = False  # the file could not take more
        self.cached = 0  # steps that started from kept features
        self.reused = 0  # samples whose features the kept file held at the start
        self.persisted = None  # after persist(): whether the kept file holds them for later runs
        heads = None
        if head:
            heads = store.heads(n)
            if not self._kept_file_matches():
                _remove(path)  # another model, plan or store's: it only takes room
                self.salt = _salt()
                self.head = head[:KEPT_SALT] + struct.pack("<I", self.salt) + \
                    head[KEPT_SALT + 4:]
        free = _mem_free()
        if free is None:
            free = stand_in
        if free is None or free - n * size >= self.RESERVE:
            try:
                self.buf = bytearray(n * size)
                self.where = "ram"
            except MemoryError:
                pass
        if self.where is None:
            if free is not None and free - size < self.RESERVE:
                return  # not even one sample's staging buffer beside the reserve
            self.tmp = bytearray(self.pre + size)
            try:
                if head and _exists(path):
                    self.f = open(path, "r+b")
                else:
                    self.f = open(path, "w+b")
                    if head and self.f.write(self.head) != KEPT_HEAD:
                        raise OSError(_ENOSPC)
                self.where = "file"
            except OSError:
                self._close_file()
                _remove(path)
                return
        if heads:
            self._reuse(heads)

    def _kept_file_matches(self):
        """Whether the kept file is of these features; takes its salt when it is."""
        try:
            with open(self.path, "rb") as f:
                h = f.read(KEPT_HEAD)
        except OSError:
            return False
        if not _same_kept(h, self.head):
            return False
        self.head = h
        self.salt = struct.unpack_from("<I", h, KEPT_SALT)[0]
        return True

    def _crc(self, sid, label, mv):
        return crc32(mv, crc32(struct.pack("<III", self.salt, sid, label)))

    def _reuse(self, heads):
        """Mark the samples whose records the kept file holds (in RAM: read and CRC-checked
        now; in the file: checked as each is read)."""
        rec = self.pre + self.size
        have = (_size(self.path) - KEPT_HEAD) // rec if _exists(self.path) else 0
        if have <= 0:
            return
        f = self.f
        try:
            if f is None:
                f = open(self.path, "rb")
            h = bytearray(KEPT_REC)
            for i in range(min(have, self.n)):
                if heads[i] is None:
                    continue
                if f.seek(KEPT_HEAD + i * rec) != KEPT_HEAD + i * rec or f.readinto(h) != KEPT_REC:
                    break
                sid, label, crc = struct.unpack("<III", h)
                if (sid, label) != heads[i] or _gap(h):
                    continue
                if self.buf is not None:
                    mv = memoryview(self.buf)[i * self.size:(i + 1) * self.size]
                    if f.readinto(mv) != self.size or self._crc(sid, label, mv) != crc:
                        continue
                self.kept[i] = self.old[i] = 1
                self.sid[i], self.label[i] = sid, label
                self.reused += 1
        except OSError:
            pass
        finally:
            if f is not self.f:
                f.close()

    def slot(self, i):
        """Where the step of sample i writes its features (None: they are not kept)."""
        if i >= self.n:
            return None
        if self.buf is not None:
            return memoryview(self.buf)[i * self.size:(i + 1) * self.size]
        if self.f is None or self.full:
            return None
        return memoryview(self.tmp)[self.pre:]

    def keep(self, i, sid, label):
        """After the step that filled slot(i): sample i's features are kept."""
        if self.f is not None:
            at = self.base + i * (self.pre + self.size)
            if self.pre:
                struct.pack_into("<III", self.tmp, 0, sid, label,
                                 self._crc(sid, label, memoryview(self.tmp)[self.pre:]))
            try:
                # a full FAT clips a seek past its end: no slot there either
                if self.f.seek(at) != at or self.f.write(self.tmp) != len(self.tmp):
                    raise OSError(_ENOSPC)
            except OSError:
                # the filesystem is full: the features kept so far stay, the samples still to
                # come are stepped from their inputs (the run's end removes a run's own file
                # before it saves the parameters)
                self.full = True
                return
        elif self.new is not None:
            self.new[i] = 1
        self.kept[i] = 1
        self.sid[i], self.label[i] = sid, label

    def load(self, i):
        """Sample i's kept features, or None."""
        if i >= self.n or not self.kept[i]:
            return None
        if self.buf is not None:
            return memoryview(self.buf)[i * self.size:(i + 1) * self.size]
        at = self.base + i * (self.pre + self.size)
        try:
            if self.f.seek(at) == at and self.f.readinto(self.tmp) == len(self.tmp):
                mv = memoryview(self.tmp)[self.pre:]
                if not self.pre or struct.unpack_from("<III", self.tmp) == \
                        (self.sid[i], self.label[i], self._crc(self.sid[i], self.label[i], mv)):
                    return mv
        except (OSError, AttributeError):
            pass
        self.kept[i] = 0  # stepped from its input, and kept again from that step
        if self.old is not None and self.old[i]:
            self.old[i] = 0
            self.reused -= 1  # a damaged record: not one the file held after all
        return None

    def persist(self):
        """After a run that keeps its features: write those kept in RAM during the run to the
        kept file (whose earlier records stay). The file is removed when it cannot be written:
        it is only a cache, and the room is the user's. Sets and returns `persisted`."""
        self._close_file()
        ok = False
        # a file that filled the filesystem is not kept: the room is for the user's samples
        if self.head and self.where is not None and not self.full:
            try:
                if self.buf is not None:
                    self._write_new()  # the new records; all kept ones into a new file
                ok = _exists(self.path)
            except OSError:
                pass
        if not ok:
            _remove(self.path)
        self.persisted = ok
        self.buf = None
        return ok

    def _write_new(self):
        rec = bytearray(KEPT_REC)
        mode = "r+b" if _exists(self.path) and self._kept_file_matches() else "w+b"
        if mode == "w+b":
            # a new file (the earlier one gone or another's): a new salt, as any new file has
            self.salt = _salt()
            self.head = self.head[:KEPT_SALT] + struct.pack("<I", self.salt) + \
                self.head[KEPT_SALT + 4:]
            # features kept in RAM from the old file's records must be written too
            for i in range(self.n):
                if self.kept[i]:
                    self.new[i] = 1
        with open(self.path, mode) as f:
            if mode == "w+b" and f.write(self.head) != KEPT_HEAD:
                raise OSError(_ENOSPC)
            for i in range(self.n):
                if not self.new[i]:
                    continue
                mv = memoryview(self.buf)[i * self.size:(i + 1) * self.size]
                struct.pack_into("<III", rec, 0, self.sid[i], self.label[i],
                                 self._crc(self.sid[i], self.label[i], mv))
                at = KEPT_HEAD + i * (KEPT_REC + self.size)
                if f.seek(at) != at or f.write(rec) != KEPT_REC or f.write(mv) != self.size:
                    raise OSError(_ENOSPC)
            _sync(f)

    def _close_file(self):
        if self.f is not None:
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None

    def close(self):
        """The end of the run's cache: a run's own file goes; the kept file stays (its records
        are each checked when read) unless it filled the filesystem."""
        self._close_file()
        self.buf = None
        self.kept = bytearray(self.n)
        if not self.head or self.full:  # one that filled the filesystem: the room is the user's
            _remove(self.path)


class Rng:
    """xorshift32: the same sequence on every port."""

    def __init__(self, seed):
        self.s = (seed & 0xFFFFFFFF) or 0x9E3779B9

    def next(self):
        s = self.s
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        self.s = s
        return s

    def below(self, n):
        return self.next() % n


class Fail(Exception):
    """A request the board cannot carry out. args: (code, message)."""


def _need(req, key, kind=None):
    if not isinstance(req, dict) or key not in req:
        raise Fail("bad_request", "request lacks '%s'" % key)
    v = req[key]
    if kind is not None and not isinstance(v, kind):
        raise Fail("bad_request", "'%s' has the wrong type" % key)
    return v


# ---------------------------------------------------------------------------------------------
# The sample store: samples.bin = 16-byte header (b"TMPS", version, sample bytes, dataset id)
# then records of (u32 id, u16 label, u16 0, sample bytes), appended in id order. Only whole
# records count: one cut short (a full filesystem, a reset) is written over by the next append,
# in place, so the store is never copied (no room for that on a full filesystem, nor in RAM).

STORE_HEAD = 16
REC_HEAD = 8  # a stored sample's id (u32), label (u16) and a spare u16 before its bytes


class Store:
    def __init__(self, path):
        self.path = path
        self.size = 0
        self.uid = 0
        self.count = 0
        self.last_id = -1
        # a new store written whole but not yet renamed (FAT's rename removes the old file
        # first): it is the store
        try:
            if _exists(path + ".tmp"):
                if _exists(path):
                    _remove(path + ".tmp")
                else:
                    _replace(path + ".tmp", path)
        except OSError:
            pass
        self._open()

    def _open(self):
        self.size = self.uid = self.count = 0
        self.last_id = -1
        try:
            with open(self.path, "rb") as f:
                h = f.read(STORE_HEAD)
                if len(h) < STORE_HEAD or h[:4] != b"TMPS":
                    return
                _v, self.size, self.uid = struct.unpack_from("<III", h, 4)
                rec = REC_HEAD + self.size
                total = _size(self.path) - STORE_HEAD
                self.count = total // rec
                if self.count:
                    f.seek(STORE_HEAD + (self.count - 1) * rec)
                    self.last_id = struct.unpack("<I", f.read(4))[0]
        except OSError:
            pass

    def holds(self):
        return "the board holds %d samples" % self.count + \
            (" (ids 0..%d)" % self.last_id if self.count and self.last_id == self.count - 1 else "")

    def _failed(self, e, what):
        """After a write that failed (e): the store as the file holds it (what a fresh start
        reads), and for an OSError the refusal that says why, what was not written, and what the
        store holds now."""
        self._open()
        if not isinstance(e, OSError):
            return e
        if _no_room(e):
            return Fail("no_space", "no room left on the board's filesystem: %s; %s"
                        % (what, self.holds()))
        return Fail("storage", "%s: %s; %s" % (what, _why(e), self.holds()))

    def reset(self, size, uid):
        """An empty store for samples of `size` bytes of dataset `uid`, written whole (a
        temporary file renamed): when it cannot be written, the old store stays as it was."""
        try:
            _write_file(self.path, b"TMPS" + struct.pack("<III", 1, size, uid))
        except BaseException as e:
            raise self._failed(e, "the new sample store was not written")
        self._open()

    def append(self, sid, label, data):
        """One record after the last whole one, or Fail (the count and last id are then again
        what the file holds)."""
        try:
            with open(self.path, "r+b") as f:
                f.seek(STORE_HEAD + self.count * (REC_HEAD + self.size))
                f.write(struct.pack("<IHH", sid, label, 0))
                f.write(data)
                _sync(f)
        except BaseException as e:
            raise self._failed(e, "sample %d was not stored" % sid)
        self.count += 1
        self.last_id = sid

    def get(self, i, buf):
        rec = REC_HEAD + self.size
        with open(self.path, "rb") as f:
            f.seek(STORE_HEAD + i * rec)
            h = f.read(REC_HEAD)
            n = f.readinto(buf)
        if len(h) < REC_HEAD or n != self.size:
            raise Fail("io", "sample %d of the store is unreadable" % i)
        sid, label, _ = struct.unpack("<IHH", h)
        return sid, label

    def heads(self, n):
        """[(id, label)] of the first n samples (None for one that cannot be read), without
        their bytes."""
        rec = REC_HEAD + self.size
        out = [None] * n
        h = bytearray(REC_HEAD)
        try:
            with open(self.path, "rb") as f:
                for i in range(min(n, self.count)):
                    at = STORE_HEAD + i * rec
                    if f.seek(at) != at or f.readinto(h) != REC_HEAD:
                        break
                    sid, label, _ = struct.unpack("<IHH", h)
                    out[i] = (sid, label)
        except OSError:
            pass
        return out


# ---------------------------------------------------------------------------------------------
# The agent

class _Runs:
    """The agent's training runs, evaluation and saved parameters (Agent's requests from
    _read_opt on): a class of its own only so that a board compiling the pasted agent piece by
    piece (link.agent_chunks) never holds the whole Agent's source and parse tree at once."""

    def _read_opt(self):
        try:
            with open(self._p("params.opt"), "rb") as f:
                v = decode(f.read())
        except (OSError, ValueError):
            return None
        if not isinstance(v, dict):
            return None
        v["saved"] = _exists(self._p("params.bin"))
        v["previous"] = _exists(self._p("params.prev"))
        return v

    def _read_trial(self):
        """The kept trial run's record (model, options, time), or None: a run trained without
        saving (TRAIN_END save=False) that PARAMS_SAVE can still keep."""
        if not _exists(self._p("params.try")):
            return None
        try:
            with open(self._p("params.try.opt"), "rb") as f:
                v = decode(f.read())
        except (OSError, ValueError):
            return None
        return v if isinstance(v, dict) else None

    def _drop_trial(self):
        self.trial = None
        # the options first: options without parameters mean a promotion cut short (_recover)
        _remove(self._p("params.try.opt"))
        _remove(self._p("params.try"))

    def _plan_options(self, opts, saved=False):
        """The plan() options of a TRAIN_START request, or (saved) of the options kept with saved
        parameters: a run saved by an agent before 6 may name a ratio for a method that took and
        ignored it, which the engine now refuses; its plan is the one without it."""
        kw = {}
        for k in ("method", "budget", "r", "ratio", "storage", "momentum", "n_bias", "macs"):
            if opts.get(k) is not None:
                kw[k] = opts[k]
        if saved:
            drop_ignored_ratio(kw)
        budget = self._budget()
        if budget is not None:
            kw["budget"] = min(kw.get("budget", budget), budget)
        return kw

    def _support(self, m, n=SUPPORT_SAMPLES):
        size = self._sample_bytes(m)
        xs, ys = [], []
        buf = bytearray(size)
        for i in range(min(n, self.store.count)):
            _, lab = self.store.get(i, buf)
            xs.append(bytes(buf))
            ys.append(lab)
        return xs, ys

    def _make_trainer(self, opts, saved=False):
        self._need_engine()
        if not hasattr(self.tinymp, "Trainer"):
            raise Fail("no_trainer", "this tinymp has no Trainer (training engine not built)")
        m = self._load_model()
        kw = self._plan_options(opts, saved)
        self.support_used = 0
        if kw.get("method") == "tinytrain" or (opts.get("support") and self.store.count):
            kw["support"] = self._support(m)
            self.support_used = len(kw["support"][0])
        heap0 = _mem_free()
        try:
            plan = m.plan(**kw)
        except ValueError as e:
            raise Fail("budget", "no training plan: %s" % e)
        try:
            arena = bytearray(plan.arena_bytes)
        except MemoryError:
            raise Fail("memory", "cannot allocate the %d-byte training arena" % plan.arena_bytes)
        try:
            # no lr: the engine's rate for the plan's method (agent 6; before, always 0.01)
            tr = self.tinymp.Trainer(m, plan, lr=opts.get("lr"), arena=arena,
                                     seed=opts.get("seed", 1), period=opts.get("period", 0))
        except ValueError as e:  # an option out of range: what was asked for, not the board
            raise Fail("bad_request", "cannot start training: %s" % e)
        except MemoryError as e:
            raise Fail("trainer", "cannot start training: %s" % e)
        heap1 = _mem_free()
        return plan, tr, heap0, heap1

    def _plan_dict(self, plan):
        d = {}
        for k in ("arena_bytes", "method", "r", "ratio", "storage", "forward_macs",
                  "backward_macs", "table_bytes"):
            v = getattr(plan, k, None)
            if isinstance(v, (int, float, str)) or v is None:
                d[k] = v
        bd = getattr(plan, "breakdown", None)
        if isinstance(bd, dict):
            d["breakdown"] = dict(bd)
        lay = getattr(plan, "layers", None)
        if lay is not None:
            d["layers"] = [int(x) for x in lay]
        return d

    def do_train_start(self, req):
        opts = req if isinstance(req, dict) else {}
        if self.store.count == 0:
            raise Fail("no_samples", "the board holds no samples: collect some first")
        self._end_features(keep=True)  # an unfinished run's kept features are this one's too
        self.trainer = self.train = self.trial = None
        self.trainer_unsaved = False
        if gc is not None:
            gc.collect()
        plan, tr, heap0, heap1 = self._make_trainer(opts)
        resumed, resumed_state, resume_error = False, False, None
        saved = self._read_opt()
        if not opts.get("fresh") and saved and saved.get("saved") and \
                saved.get("model") == self._model_sha():
            # an unnamed method is the engine's default: the same run as one that names it
            o = saved.get("options")
            was = (o.get("method") if isinstance(o, dict) else None) or DEFAULT_METHOD
            now = opts.get("method") or DEFAULT_METHOD
            if was != now:
                resume_error = "it was trained with method %s, this run is %s" % (was, now)
            else:
                try:
                    # False: another ratio, momentum on / off, or an old file: parameters only
                    resumed_state = bool(tr.load(self._p("params.bin")))
                    resumed = True
                except (ValueError, OSError) as e:
                    # e.g. another storage or budget: other trained layers
                    resume_error = str(e)
        steps = _need(opts, "steps", int)
        if steps < 0:
            raise Fail("bad_request", "steps must be >= 0")
        self.trainer = tr
        self.trainer_opts = opts
        self.trainer_unsaved = True
        self.train = {"plan": plan, "opts": opts, "done": 0, "total": steps,
                      "rng": Rng(opts.get("seed", 1)), "order": [], "heap0": heap0,
                      "heap1": heap1, "buf": bytearray(self._sample_bytes(self.model)),
                      "stats": self._stats(tr), "stats0": self._stats(tr),
                      "features": self._features(plan, tr, steps,
                                                 bool(opts.get("keep_features")))}
        self.report = None
        # support_samples: how many of the first samples the plan's selection pass read (the
        # host's Cortex-M7 estimate replays the same ones); lr: the rate the run trains with
        return {"plan": self._plan_dict(plan), "lr": tr.lr,
                "resumed": resumed, "resumed_state": resumed_state,
                "resume_error": resume_error,
                "heap_before": heap0,
                "heap_after": heap1, "samples": self.store.count, "steps": steps,
                "support_samples": self.support_used, "features": self._features_dict()}

    def _features(self, plan, tr, steps, keep=False):
        """The run's feature cache (Features), or None: the plan has no frozen prefix to skip,
        no sample comes round twice (and the run does not keep them for later runs), or the
        engine cannot step from features. `keep` (TRAIN_START keep_features): features.kept
        supplies the features it holds for this plan and store and takes this run's."""
        _remove(self._p("features.bin"))  # one a reset left behind
        size = getattr(plan, "cache_bytes", 0)
        n = self.store.count
        head = self._kept_head(getattr(plan, "first", None), plan.cache_bytes) if keep else None
        if head is None:
            _remove(self._p(KEPT_FILE))  # a run that keeps none frees their room
        if not size or not hasattr(tr, "step_cached") or (steps <= n and head is None):
            return None
        # for a board that measures no heap (the simulated one): INFO's stand-in for its free
        # heap (the profile's heap, in which a board takes the arena), less this run's arena
        stand_in = self.board.get("mem_free")
        if stand_in is not None:
            stand_in = max(0, stand_in - getattr(plan, "arena_bytes", 0))
        try:
            f = Features(n, size, self._p(KEPT_FILE if head else "features.bin"), stand_in,
                         head, self.store)
        except MemoryError:  # the run goes without: slower, the same result
            return None
        return f if f.where else None

    def _kept_head(self, first, cache_bytes):
        """The header of features.kept for the features at layer `first` (cache_bytes each) of
        the store's samples, or None when they cannot be told apart from others' (no model hash,
        no first layer)."""
        sha = self._model_sha()
        if sha is None or not isinstance(first, int) or len(sha) != 64:
            return None
        version = getattr(self.tinymp, "__version__", None) or ""
        return KEPT_MAGIC + struct.pack(
            "<7I", KEPT_VERSION, first, cache_bytes, self.store.uid, self.store.size,
            crc32(version.encode()), 0) + sha.encode()

    def _features_dict(self):
        f = self.train and self.train.get("features")
        if f is None:
            return None
        d = {"where": f.where, "bytes": f.n * f.size, "sample_bytes": f.size,
             "cached_steps": f.cached}
        if f.head:
            # agent 7: how many samples' features a run kept earlier supplied, and (at the end)
            # whether this run's are kept for later runs
            d["reused"] = f.reused
            d["kept"] = f.persisted
        return d

    def _end_features(self, drop_kept=False, keep=False):
        """Drop the run's feature cache (its own file too): at the run's end, before a new run,
        and whenever the sample store changes under it. The features kept for later runs stay,
        unless `drop_kept` (another model, or a store emptied). `keep`: a run that keeps its
        features and ends without TRAIN_END (the PC left, or started another run) writes the
        ones it holds in RAM to the kept file too: they are the pretrained prefix's, whatever
        became of the run."""
        f = self.train and self.train.get("features")
        if f is not None:
            if keep and f.head and not drop_kept:
                f.persist()
            else:
                f.close()
            self.train["features"] = None
        if drop_kept:
            _remove(self._p(KEPT_FILE))

    def _stats(self, tr):
        try:
            s = tr.stats()
        except Exception:  # pragma: no cover
            return {}
        return s if isinstance(s, dict) else {}

    def _next_index(self, t):
        if not t["order"]:
            # a new epoch over the samples: the default APU period is one epoch (docs/TRAINING.md)
            if t.get("epochs", 0) > 0 and not t["opts"].get("period") and self.trainer is not None:
                self.trainer.end_period()
            t["epochs"] = t.get("epochs", 0) + 1
            n = self.store.count
            order = list(range(n))
            rng = t["rng"]
            for i in range(n - 1, 0, -1):
                j = rng.below(i + 1)
                order[i], order[j] = order[j], order[i]
            t["order"] = order
        return t["order"].pop()

    def do_train_steps(self, req):
        t = self.train
        if t is None or self.trainer is None:
            raise Fail("state", "no training run: send TRAIN_START first")
        n = _need(req, "n", int)
        tr = self.trainer
        track = t["opts"].get("track_accuracy", True)
        mark = t["opts"].get("mark_cached", False)
        events = []
        buf = t["buf"]
        # the step's own forward pass says what the parameters before it predict (an engine
        # before Trainer.prediction: a separate inference)
        own = hasattr(tr, "prediction")
        feats = t.get("features")
        while n > 0 and t["done"] < t["total"]:
            i = self._next_index(t)
            kept = feats.load(i) if feats is not None else None
            slot = None
            if kept is not None:
                sid, label = feats.sid[i], feats.label[i]
            else:
                sid, label = self.store.get(i, buf)
                slot = feats.slot(i) if feats is not None else None
            pred = tr.predict(buf) if track and not own else -1
            before = t["stats"]
            c0 = _ticks_cpu()
            t0 = _ticks_us()
            if kept is not None:
                loss = tr.step_cached(kept, label)
            elif slot is not None:
                loss = tr.step(buf, label, cache=slot)
            else:
                loss = tr.step(buf, label)
            t1 = _ticks_us()
            c1 = _ticks_cpu()
            if kept is not None:
                feats.cached += 1
            elif slot is not None:
                feats.keep(i, sid, label)
            if track and own:
                pred = tr.prediction
            s = self._stats(tr)
            t["stats"] = s
            cyc = None
            if c0 is not None and c1 is not None:
                cyc = _ticks_diff(c1, c0) if hasattr(time, "ticks_diff") else c1 - c0
            row = [t["done"], sid, label, pred, float(loss),
                   s.get("forward_us", 0) - before.get("forward_us", 0),
                   s.get("backward_us", 0) - before.get("backward_us", 0),
                   s.get("update_us", 0) - before.get("update_us", 0),
                   _ticks_diff(t1, t0), cyc, tr.high_water]
            if mark:
                row.append(kept is not None)
            events.append(row)
            t["done"] += 1
            n -= 1
        return {"events": events, "done": t["done"], "total": t["total"]}

    def _opt_record(self, opts):
        o = {}
        for k in opts:
            if k not in ("support",):
                o[k] = opts[k]
        return encode({"model": self._model_sha(), "options": o, "time": _now()})

    def _change(self, steps):
        """Change several files as one: `steps` (("mv", src, dst) renames src over dst, ("rm",
        name) removes; names in the root) are written to the journal, done in order, and the
        journal removed. A reset anywhere leaves the journal, and the next start (or request)
        finishes the change (_redo), so the board holds the files as before it or as after it,
        never a mix. The journal is the change's only new file and is written once.
        OSError when it cannot be written (no room): nothing changed. Fail when a step fails
        (the journal stays: the change is finished before the next request, or at the next
        start); the RAM state is then dropped, to be read again from the files."""
        if not steps:
            return
        self._pending_change()
        steps = [list(t) for t in steps]
        try:
            _write_file(self._p(JOURNAL), encode(steps))
        except OSError:
            _remove(self._p(JOURNAL) + ".tmp")  # not renamed: no change to finish later
            _remove(self._p(JOURNAL))
            raise
        try:
            _redo(self._p, steps)
        except OSError as e:
            self._forget()
            raise Fail("storage", "the board could not finish changing its files (%s); it "
                       "finishes the change before its next request, or when it starts again"
                       % _why(e))

    def _forget(self):
        """After files changed under it: the model, trainer, run and trial in RAM are read again
        from the files when next needed."""
        self.model = self.trainer = self.train = self.trial = None
        self.trainer_unsaved = False
        self.model_sha = None
        self.push = None

    def _pending_change(self):
        """A change an error left part way (its journal is still there) is finished now, the
        RAM state dropped; Fail when it still cannot be."""
        if not _exists(self._p(JOURNAL)):
            return
        try:
            self._finish_change()
        except OSError as e:
            raise Fail("storage", "the board could not finish an earlier change of its files "
                       "(%s); nothing else changed: make room on its filesystem, or check it"
                       % _why(e))
        self._forget()

    def _finish_change(self):
        """At the start: a change (_change) a reset cut short is finished. A temporary journal
        is one whose rename did not happen: its change never started, and it is dropped. A
        journal that does not decode to steps (only a damaged flash leaves one) is dropped; one
        that cannot be read (OSError) stays, as does one whose steps fail."""
        path = self._p(JOURNAL)
        _remove(path + ".tmp")
        if not _exists(path):
            return
        with open(path, "rb") as f:
            data = f.read()
        try:
            steps = decode(data)
            ok = isinstance(steps, list) and 0 < len(steps) and all(
                isinstance(t, list) and len(t) == (3 if t[0] == "mv" else 2) and
                t[0] in ("mv", "rm") and all(isinstance(n, str) and n and "/" not in n and
                                             n not in (".", "..") for n in t[1:])
                for t in steps)
        except (ValueError, KeyError, TypeError, IndexError):
            ok = False
        if ok:
            _redo(self._p, steps)
        else:
            _remove(path)

    def _change_or_fail(self, steps):
        """_change, its journal's OSError (no room) a Fail saying nothing changed."""
        try:
            self._change(steps)
        except OSError as e:
            raise Fail("storage", "the board has no room to record the change of its files "
                       "(%s); nothing changed" % _why(e))

    def _drop_trial_steps(self):
        # the options first: options without parameters mean a promotion cut short (_recover,
        # of a board whose agent had no journal)
        return [("rm", "params.try.opt"), ("rm", "params.try")]

    def _shelve_steps(self):
        """The steps by which the saved parameters become the previous ones (rollback), their
        options with them: params.opt always describes params.bin, params.prev.opt params.prev."""
        if not _exists(self._p("params.bin")):
            return []
        return [("mv", "params.bin", "params.prev"),
                ("mv", "params.opt", "params.prev.opt") if _exists(self._p("params.opt"))
                else ("rm", "params.prev.opt")]

    def _write_new_params(self, opts):
        """The trainer's parameters and their record as params.new and params.new.opt (each
        written whole: a temporary file renamed), touching no other file. OSError when they do
        not fit; then neither is left behind."""
        try:
            self.trainer.save(self._p("params.new"))
            _write_file(self._p("params.new.opt"), self._opt_record(opts))
        except (OSError, ValueError):
            _remove(self._p("params.new"))
            _remove(self._p("params.new.opt"))
            raise

    def _save_params(self, opts):
        """The trainer's parameters become the saved ones, the saved ones the previous (rollback).
        Nothing changes until the new file and its record are written whole (params.new*), so a
        write that fails leaves the saved parameters saved: the reason is returned (None when
        saved). With no room for a third copy, the previous parameters, which a save drops
        anyway, are dropped first and the write tried again."""
        try:
            self._write_new_params(opts)
        except (OSError, ValueError) as e:
            if not (_no_room(e) and _exists(self._p("params.prev"))):
                return _why(e)
            # a save ends with the previous parameters gone: make their room first (the
            # parameters first: options without them are dropped by the shelving)
            _remove(self._p("params.prev"))
            _remove(self._p("params.prev.opt"))
            try:
                self._write_new_params(opts)
            except (OSError, ValueError) as e2:
                return _why(e2) + ("; the earlier parameters (for a rollback) were dropped to "
                                   "make room, and still they did not fit")
        # a trial belongs to the saved parameters it started from: once they change, it goes
        try:
            self._change(self._drop_trial_steps() + self._shelve_steps() +
                         [("mv", "params.new", "params.bin"),
                          ("mv", "params.new.opt", "params.opt")])
        except OSError as e:  # no room for the journal: nothing changed
            _remove(self._p("params.new"))
            _remove(self._p("params.new.opt"))
            return _why(e)
        self.trial = None
        return None

    def _keep_trial(self, opts):
        """Keep the trainer's parameters as the trial run (params.try), which PARAMS_SAVE can
        make the saved ones later. Returns None, or why they could not be kept (e.g. no room);
        the saved parameters are never touched."""
        self._drop_trial()
        try:
            self.trainer.save(self._p("params.try"))
            _write_file(self._p("params.try.opt"), self._opt_record(opts))
        except (OSError, ValueError) as e:
            self._drop_trial()
            return _why(e)
        return None

    def do_train_end(self, req):
        t = self.train
        if t is None or self.trainer is None:
            raise Fail("state", "no training run")
        tr = self.trainer
        # this run's counts: a resumed trainer's counters go on from the saved file's (u32s
        # that wrap, so the difference is taken modulo 2^32)
        stats, start = self._stats(tr), t.get("stats0") or {}
        for k in ("steps", "stalled_steps", "periods"):
            if isinstance(stats.get(k), int) and isinstance(start.get(k), int):
                stats[k] = (stats[k] - start[k]) % 0x100000000
        feats = t.get("features")
        keeping = feats is not None and bool(feats.head)
        features = self._features_dict()
        if keeping:
            feats._close_file()  # the kept file stays; features kept in RAM follow the save
        else:
            self._end_features()  # before a save: its file takes room the parameters may need
        rep = {"plan": self._plan_dict(t["plan"]), "stats": stats, "features": features,
               "high_water": tr.high_water, "steps": t["done"],
               "heap_before": t["heap0"], "heap_after": t["heap1"], "heap_end": _mem_free(),
               "clock": self.board.get("clock", "board"), "saved": False}
        save = isinstance(req, dict) and req.get("save", True)
        made_room = False
        for attempt in (0, 1):
            if save:
                why = self._save_params(t["opts"])
            else:
                why = self._keep_trial(t["opts"])
            if why is None or not keeping or attempt or not _exists(feats.path):
                break
            # the parameters come before the features kept for later runs: their room first
            _remove(feats.path)
            made_room = True
        if save:
            self.trainer_unsaved = why is not None
            rep["saved"] = why is None
            if why is not None:
                rep["save_error"] = why
        else:
            rep["trial"] = why is None
            if why is None:
                self.trial = tr  # the trial's parameters, already in RAM
            else:
                rep["trial_error"] = why
        if keeping:
            if why is None and not made_room:
                feats.persist()
            else:  # the filesystem had no room for the parameters: none for features either
                feats.persisted = False
                _remove(feats.path)
            rep["features"] = self._features_dict()
            self._end_features()
        self.report = rep
        try:
            _write_file(self._p("train.rep"), encode(rep))
        except OSError:
            pass
        self.train = None
        return rep

    def _trainer_for_eval(self):
        if self.trainer is not None:
            # a run of this connection that was not saved is the trial, not the saved parameters
            return self.trainer, "trial" if self.trainer_unsaved else "personalised"
        saved = self._read_opt()
        if not saved or not saved.get("saved") or saved.get("model") != self._model_sha():
            return None, "pretrained"
        opts = saved.get("options") or {}
        self.trial = None  # one training arena at a time
        plan, tr, _, _ = self._make_trainer(opts, saved=True)
        try:
            tr.load(self._p("params.bin"))
        except (ValueError, OSError) as e:
            raise Fail("params", "the saved parameters do not load: %s" % e)
        self.trainer = tr
        self.trainer_opts = opts
        return tr, "personalised"

    def _trainer_for_trial(self):
        trial = self._read_trial()
        if trial is None or trial.get("model") != self._model_sha():
            raise Fail("nothing", "no trial run on the board (train with save off first)")
        if self.trial is None:
            if not self.trainer_unsaved:  # one training arena at a time; keep an unsaved run
                self.trainer = None
            if gc is not None:
                gc.collect()
            plan, tr, _, _ = self._make_trainer(trial.get("options") or {}, saved=True)
            try:
                tr.load(self._p("params.try"))
            except (ValueError, OSError) as e:
                raise Fail("params", "the trial run's parameters do not load: %s" % e)
            self.trial = tr
        return self.trial

    def do_predict(self, req):
        m = self._load_model()
        size = self._sample_bytes(m)
        data = _need(req, "data", bytes)
        if len(data) % size:
            raise Fail("bad_shape", "%d bytes is not a whole number of %d-byte samples"
                       % (len(data), size))
        use = req.get("params", "personalised")
        if use not in ("pretrained", "personalised", "trial"):
            raise Fail("bad_request", "params must be pretrained, personalised or trial")
        runner, used = m, "pretrained"
        if use == "trial":
            runner, used = self._trainer_for_trial(), "trial"
        elif use != "pretrained":
            tr, used = self._trainer_for_eval()
            if tr is not None:
                runner = tr
        mv = memoryview(data)
        preds = bytearray(len(data) // size)
        t0 = _ticks_us()
        for k in range(len(preds)):
            preds[k] = runner.predict(mv[k * size:(k + 1) * size])
        return {"pred": bytes(preds), "params": used, "us": _ticks_diff(_ticks_us(), t0)}

    def do_report(self, req):
        rep = self.report
        if rep is None:
            try:
                with open(self._p("train.rep"), "rb") as f:
                    rep = decode(f.read())
            except (OSError, ValueError):
                rep = None
        return {"train": rep, "params": self._read_opt(), "mem_free": _mem_free(),
                "heap_at_start": self.heap0, "model_bytes": _size(self._p("model.tmpm")),
                "clock": self.board.get("clock", "board")}

    def do_params_save(self, req):
        trial = self._read_trial()
        if trial is not None and trial.get("model") == self._model_sha():
            # the trial becomes the saved parameters; the saved ones the previous (rollback)
            self._end_features()
            self.trainer = self.train = self.trial = None
            self.trainer_unsaved = False
            self._change_or_fail(self._shelve_steps() + [("mv", "params.try", "params.bin"),
                                                         ("mv", "params.try.opt", "params.opt")])
            return {"saved": True, "from": "trial"}
        if self.trainer is not None and self.trainer_unsaved:
            # a run of this connection whose trial could not be kept (e.g. no room); a feature
            # cache file would take room the parameters may need
            self._end_features()
            why = self._save_params(self.trainer_opts or {})
            if why is not None:
                raise Fail("storage", "the parameters could not be written: %s; the saved ones "
                           "are as they were" % why)
            self.trainer_unsaved = False
            return {"saved": True, "from": "ram"}
        raise Fail("state", "no unsaved trained parameters: no trial run on the board and none "
                            "in RAM")

    def do_params_rollback(self, req):
        if not _exists(self._p("params.prev")):
            raise Fail("nothing", "no earlier parameters to roll back to")
        # the trial goes: it started from the parameters that were saved until now; their own
        # options come back with them (a params.prev from an older agent has none: the current
        # ones stay)
        self.trial = None
        self._change_or_fail(self._drop_trial_steps() + [("mv", "params.prev", "params.bin")] +
                             ([("mv", "params.prev.opt", "params.opt")]
                              if _exists(self._p("params.prev.opt")) else []))
        self._end_features()
        self.trainer = self.train = None
        self.trainer_unsaved = False
        return {"restored": True}

    def do_params_reset(self, req):
        prev = self._p("params.prev")
        self._change_or_fail(self._drop_trial_steps() + self._shelve_steps())
        if self.trainer is not None:
            self.trainer.reset()
        self.trial = None
        self._end_features()
        self.trainer = self.train = None
        self.trainer_unsaved = False
        return {"reset": True, "can_roll_back": _exists(prev)}


class Agent(_Runs):
    def __init__(self, root=None, board=None):
        try:
            import tinymp
        except ImportError:
            tinymp = None
        self.tinymp = tinymp
        self.board = board or {}
        if root is None:
            root = self.board.get("root") or self._default_root()
        self.root = root
        try:
            os.mkdir(root)
        except OSError:
            pass
        self.store = Store(self._p("samples.bin"))
        self.model = None        # tinymp.Model of the committed model (loaded on demand)
        self.model_from = None   # where self.model reads its bytes: "romfs" or "filesystem"
        self.model_data = None
        self.model_sha = None
        self.trainer = None
        self.trainer_unsaved = False  # self.trainer holds a run that was not saved
        self.trial = None        # a Trainer with the kept trial run loaded (for PREDICT)
        self.support_used = 0
        self.trainer_opts = None
        self.push = None
        self.train = None        # state of the current training run
        self.pending = None      # a captured sample waiting for the PC's "kept"
        self.sensor = None
        self.last = None         # (seq, crc, reply bytes) of the last request served
        self.report = None
        self.heap0 = _mem_free()
        self.running = True
        self.max_payload = None
        self._frame_limit(0)
        self.storage = self._probe_storage()
        if self.storage:
            self._recover()
        self.rom = None          # tinymp_romfs.Store: the board's ROMFS segment, when writable
        romfs = _romfs_module() if self.storage else None
        if romfs is not None:
            self.rom = romfs.open_store(self.board, self._p("romfs.rec"))

    # --- files
    def _default_root(self):
        for base in ("/sd", "/flash"):
            if _exists(base):
                return base + "/tinymp"
        return "tinymp"

    def _p(self, name):
        return self.root + "/" + name

    def _probe_storage(self):
        probe = self._p("probe.tmp")
        try:
            with open(probe, "wb") as f:
                f.write(b"1")
            os.remove(probe)
            return True
        except OSError as e:
            # a full filesystem is a writable one (a store to clear, parameters to drop)
            _remove(probe)
            return _no_room(e)

    def _need_storage(self):
        if not self.storage:
            raise Fail("no_storage", "this board has no writable filesystem for models and "
                       "samples")

    def _recover(self):
        # a training run's feature cache that a reset or a lost link left behind (it only
        # takes room: a run starts a new one)
        _remove(self._p("features.bin"))
        # a change of several files cut short: finished (when an error stops that, the journal
        # stays for the next change, and the rules below, which would read its files as cut
        # short, wait too). What follows finishes what agents before 11, which had no journal,
        # left cut short
        try:
            self._finish_change()
        except OSError:
            return
        # a commit cut short between removing the old model and renaming the new one (FAT)
        new, cur = self._p("model.new"), self._p("model.tmpm")
        if _exists(new):
            _replace(new, cur)
        for name in ("params.bin", "params.opt", "params.try", "params.try.opt",
                     "params.prev.opt", "params.new", "params.new.opt"):
            p = self._p(name)
            if _exists(p + ".tmp") and not _exists(p):
                _remove(p + ".tmp")
        # a trial's promotion (PARAMS_SAVE) cut short after its parameters became params.bin:
        # its options follow them (a trial is written parameters first, dropped options first)
        if _exists(self._p("params.try.opt")) and not _exists(self._p("params.try")):
            _replace(self._p("params.try.opt"), self._p("params.opt"))
        # saved parameters shelved before their options: these follow them
        if _exists(self._p("params.opt")) and not _exists(self._p("params.bin")) and \
                _exists(self._p("params.prev")):
            _replace(self._p("params.opt"), self._p("params.prev.opt"))
        # a save (_save_params) cut short: written whole (both params.new files) with the saved
        # parameters shelved, it is finished; otherwise the new files go and nothing changed
        new, new_opt = self._p("params.new"), self._p("params.new.opt")
        if _exists(new) and _exists(new_opt) and not _exists(self._p("params.bin")):
            # (from agent 11 only a first save whose journal was not written yet: its trial
            # goes as the save's would)
            self._drop_trial()
            _replace(new, self._p("params.bin"))
        if _exists(new_opt) and not _exists(new) and _exists(self._p("params.bin")) and \
                not _exists(self._p("params.opt")):
            _replace(new_opt, self._p("params.opt"))
        _remove(new)
        _remove(new_opt)

    # --- engine
    def _need_engine(self):
        if self.tinymp is None:
            raise Fail("no_engine", "this firmware has no tinymp module")

    def _load_model(self):
        self._need_engine()
        if self.model is None:
            path = self._p("model.tmpm")
            if not _exists(path):
                raise Fail("no_model", "no model on the board: push one first")
            # the committed model is the file; ROMFS serves it in place when it holds a copy
            # whose bytes were read back and match the file's SHA-256
            rom = self.rom.copy(self._model_sha()) if self.rom is not None else None
            if rom is not None:
                try:
                    self.model = self.tinymp.Model(rom)
                    self.model_from = "romfs"
                except (ValueError, OSError):
                    self.model = None
            if self.model is None:
                try:
                    self.model = self.tinymp.Model(path)
                    self.model_from = "filesystem"
                except (ValueError, OSError) as e:
                    raise Fail("bad_model", "the model on the board does not load: %s" % e)
        return self.model

    def _model_sha(self):
        if self.model_sha is None and _exists(self._p("model.tmpm")):
            if hashlib is not None:
                self.model_sha = _hex(_sha256_file(self._p("model.tmpm")))
        return self.model_sha

    def _sample_bytes(self, m):
        h, w, c = m.input_shape
        return h * w * c

    def _frame_limit(self, sample):
        """The largest frame payload taken (INFO's max_payload): an eighth of the heap the
        agent started with, between 1 KB and MAX_PAYLOAD, and at least one sample of `sample`
        bytes (the committed model's) with 1 KB for the request around it, as far as a quarter
        of that heap goes: SAMPLES_PUT and PREDICT send whole samples, and one of a 128x128 RGB
        model is 48 KB."""
        free = self.board.get("mem_free", self.heap0)
        if free is None:
            self.max_payload = MAX_PAYLOAD
            return
        n = (free // 8) & ~1023
        if sample:
            n = max(n, min(free // 4, (sample + 2047) & ~1023))
        # never lower while the agent runs: a PC that read a higher limit (a PC before agent 10
        # reads it once, at the hello) may send frames of that size after a smaller model's push
        self.max_payload = max(self.max_payload or 0, 1024, min(MAX_PAYLOAD, n))

    def _budget(self):
        b = self.board.get("arena_budget")
        if b is None:
            free = _mem_free()
            b = max(0, free - 32768) if free is not None else None
        return b

    # --- ROMFS: the committed model's copy in the board's ROMFS segment (tinymp_romfs)
    def _romfs_present(self):
        romfs = self.rom is not None or self.board.get("romfs")
        return _exists("/rom") if romfs is None else bool(romfs)

    def _romfs_commit(self, sha, size):
        """After the filesystem commit: the copy in ROMFS, which may fail on its own (the
        reply's warning) and then leaves the filesystem serving the model."""
        if self.rom is None:  # none, or one the agent cannot map or reach
            present = self._romfs_present()
            return {"present": present, "written": False, "in_place": False,
                    "state": "unwritable" if present else "absent", "warning": None,
                    "image_bytes": None, "segment_bytes": None}
        self._end_features()
        self.model = self.trainer = self.train = self.trial = None  # nothing may read the segment meanwhile
        if gc is not None:
            gc.collect()
        return self.rom.commit(sha, size, self._p("model.tmpm"))

    # --- requests
    def do_info(self, req):
        model = None
        if _exists(self._p("model.tmpm")):
            try:
                m = self._load_model()
                h, w, c = m.input_shape
                self._frame_limit(h * w * c)
                model = {"bytes": _size(self._p("model.tmpm")), "sha256": self._model_sha(),
                         "input_shape": [h, w, c], "num_classes": m.num_classes,
                         "class_names": m.class_names, "input_scale": m.input_scale,
                         "input_zero_point": m.input_zero_point,
                         "inference_arena_bytes": m.inference_arena_bytes,
                         "served_from": self.model_from}
            except Fail as e:
                model = {"bytes": _size(self._p("model.tmpm")), "error": e.args[1]}
        impl = sys.implementation
        uname = getattr(os, "uname", None)
        machine = getattr(impl, "_machine", None)
        if uname is not None:
            try:
                machine = uname().machine
            except Exception:
                pass
        b = self.board
        rom_state = None
        if self.rom is not None:
            rom_state = self.rom.state(_size(self._p("model.tmpm")),
                                       self.model is not None and self.model_from == "romfs")
        params = self._read_opt()
        if params is None and (_exists(self._p("params.bin")) or _exists(self._p("params.prev"))):
            # no options record: e.g. after PARAMS_RESET, which shelves them with the parameters;
            # whether parameters are kept (a rollback) is still worth saying
            params = {"saved": _exists(self._p("params.bin")),
                      "previous": _exists(self._p("params.prev"))}
        return {
            "agent": AGENT_VERSION, "protocol": PROTOCOL,
            "board": b.get("name") or machine or sys.platform,
            "simulated": bool(b.get("simulated")),
            "implementation": impl.name,
            "firmware": ".".join(str(x) for x in impl.version[:3]),
            "platform": sys.platform,
            "tinymp": getattr(self.tinymp, "__version__", None) if self.tinymp else None,
            "trainer": self.tinymp is not None and hasattr(self.tinymp, "Trainer"),
            "mem_free": b.get("mem_free", _mem_free()),
            "mem_total": b.get("mem_total"),
            "arena_budget": self._budget(),
            "model_flash": b.get("model_flash"),
            "romfs": self._romfs_present(),
            "romfs_state": rom_state,
            "camera": self._has_camera(),
            "clock": b.get("clock", "board"),
            "crc": "binascii" if crc32 is not _crc32_bitwise else "bitwise",
            "max_payload": self.max_payload,
            "root": self.root,
            "storage": self.storage,
            "model": model,
            "samples": self.do_samples_status(None),
            "params": params,
            "trial": self._read_trial(),
            "features": self._kept_info(),
        }

    def _kept_info(self):
        """INFO "features" (agent 8): what features.kept holds, from its header and size alone
        (its records' CRCs are checked when a run reads them), or None when there is none."""
        p = self._p(KEPT_FILE)
        if not _exists(p):
            return None
        size = max(0, _size(p))
        h = b""
        try:
            with open(p, "rb") as f:
                h = f.read(KEPT_HEAD)
        except OSError:
            pass
        if len(h) != KEPT_HEAD or h[:4] != KEPT_MAGIC:
            return {"bytes": size, "samples": 0, "current": False}
        first, each = struct.unpack_from("<II", h, 8)
        # current: of this model, this sample store and this engine (the header a run at
        # layer `first` would write); a later run with keep_features whose plan starts there
        # starts its samples from them
        want = self._kept_head(first, each)
        current = want is not None and _same_kept(h, want)
        n = (size - KEPT_HEAD) // (KEPT_REC + each) if each else 0
        if current and n:
            n = self._kept_records(p, min(n, self.store.count), each)
        return {"bytes": size, "samples": n, "first": first, "sample_bytes": each,
                "current": current}

    def _kept_records(self, path, n, each):
        """How many of the first n records of features.kept are the store's samples' (their id
        and label; a run that did not step every sample leaves gaps; CRCs are checked when a
        run reads them)."""
        heads = self.store.heads(n)
        h = bytearray(KEPT_REC)
        found = 0
        try:
            with open(path, "rb") as f:
                for i in range(n):
                    at = KEPT_HEAD + i * (KEPT_REC + each)
                    if heads[i] is None or f.seek(at) != at or f.readinto(h) != KEPT_REC:
                        continue
                    if struct.unpack_from("<II", h) == heads[i] and not _gap(h):
                        found += 1
        except OSError:
            pass
        return found

    def do_bye(self, req):
        self.running = False
        f = self.train and self.train.get("features")
        if not (f is not None and f.head and f.where == "ram"):
            self._end_features()
        # else serve() writes them once this reply is sent: that can take seconds of flash
        # writes, longer than the PC waits for the reply to BYE
        return {"ok": True}

    # push: PUSH_BEGIN {size, sha256} -> {offset}; PUSH_DATA {offset, data} -> {offset};
    # PUSH_COMMIT {} -> {sha256, bytes}
    @staticmethod
    def _part_name(sha):
        return "push-" + sha[:16] + ".part"

    def _part(self, sha):
        return self._p(self._part_name(sha))

    def do_push_begin(self, req):
        size = _need(req, "size", int)
        sha = _need(req, "sha256", str)
        self._need_storage()
        if hashlib is None or not hasattr(hashlib, "sha256"):
            raise Fail("no_sha256", "this firmware has no hashlib.sha256")
        if len(sha) != 64:
            raise Fail("bad_request", "sha256 must be 64 hex digits")
        limit = self.board.get("model_flash")
        if limit is not None and size > limit:
            raise Fail("too_big", "model of %d bytes is larger than the %d bytes of model flash "
                       "on this board" % (size, limit))
        if size < 1:
            raise Fail("bad_request", "empty model")
        # one push at a time: drop other partial pushes
        keep = self._part_name(sha)
        for name in os.listdir(self.root):
            if name.startswith("push-") and name != keep:
                _remove(self._p(name))
        if sha != self._model_sha():
            # another model: the features kept for later runs are not its (its commit drops
            # them anyway), and their room may be needed for it
            self._end_features(drop_kept=True)
        part = self._part(sha)
        have = _size(part)
        if have < 0 or have > size:
            with open(part, "wb") as f:
                _sync(f)
            have = 0
        free = _free_bytes(self.root)
        if free is not None and size - have > free:
            raise Fail("no_space", "the model (%d bytes) needs %d more bytes on the board's "
                       "filesystem, which has %d free (a model is committed there first, even "
                       "on a board with ROMFS)" % (size, size - have, free))
        self.push = {"size": size, "sha": sha, "part": part, "offset": have}
        return {"offset": have, "resumed": have > 0}

    def do_push_data(self, req):
        p = self.push
        if not p:
            raise Fail("state", "no push in progress")
        off = _need(req, "offset", int)
        data = _need(req, "data", bytes)
        if off != p["offset"]:
            # a retransmission of data already written, or a gap: say where we are
            return {"offset": p["offset"]}
        if off + len(data) > p["size"]:
            raise Fail("bad_request", "data past the declared model size")
        with open(p["part"], "ab") as f:
            f.write(data)
            _sync(f)
        p["offset"] = off + len(data)
        return {"offset": p["offset"]}

    def do_push_commit(self, req):
        p = self.push
        if not p:
            raise Fail("state", "no push in progress")
        if _size(p["part"]) != p["size"]:
            raise Fail("incomplete", "the model is incomplete: %d of %d bytes"
                       % (max(0, _size(p["part"])), p["size"]))
        got = _hex(_sha256_file(p["part"]))
        if got != p["sha"]:
            _remove(p["part"])
            self.push = None
            raise Fail("sha256", "SHA-256 of the received model does not match; push again")
        if self.tinymp is not None:
            try:
                m = self.tinymp.Model(p["part"])
            except (ValueError, OSError) as e:
                _remove(p["part"])
                self.push = None
                raise Fail("bad_model", "the engine refuses the model: %s" % e)
            budget = self._budget()
            if budget is not None and m.inference_arena_bytes > budget:
                _remove(p["part"])
                self.push = None
                raise Fail("too_big", "the model needs %d bytes of RAM for one inference; this "
                           "board has %d" % (m.inference_arena_bytes, budget))
            sample = self._sample_bytes(m)
            m = None
        else:
            sample = 0
        # commit: the previous model stays in place until this rename
        self._end_features(drop_kept=True)  # features of the model going
        self.model = self.trainer = self.train = self.trial = None
        if gc is not None:
            gc.collect()
        # the model, and the personalised parameters of the previous one gone, as one change
        part = self._part_name(p["sha"])
        self._change_or_fail([("mv", part, "model.new"), ("mv", "model.new", "model.tmpm")] +
                             self._drop_trial_steps() +
                             [("rm", n) for n in ("params.bin", "params.prev", "params.opt",
                                                  "params.prev.opt", "train.rep")])
        self.model_sha = p["sha"]
        self.push = None
        self._frame_limit(sample)  # the PC reads it again from INFO
        # the model is committed; a copy in ROMFS is an addition that may fail on its own
        rom = self._romfs_commit(p["sha"], p["size"])
        return {"sha256": self.model_sha, "bytes": p["size"], "romfs": rom}

    def do_push_romfs(self, req):
        """Write the committed model into ROMFS (PUSH_COMMIT does; this finishes one that a
        reset or a failure cut short). The reply is PUSH_COMMIT's "romfs"."""
        self._need_storage()
        size = _size(self._p("model.tmpm"))
        if size < 0:
            raise Fail("no_model", "no model on the board: push one first")
        sha = self._model_sha()
        if sha is None:
            raise Fail("no_sha256", "this firmware has no hashlib.sha256")
        return self._romfs_commit(sha, size)

    # samples
    def do_samples_status(self, req):
        # from agent 9 also the room for more, so that the PC refuses what cannot fit before it
        # sends or captures any: the filesystem's free bytes (None when the port cannot say),
        # what a store for other samples frees (this store and the features kept of its
        # samples: SAMPLES_CLEAR removes both) and what each stored sample takes beside its bytes
        st = self.store
        freed = max(0, _size(st.path)) + max(0, _size(self._p(KEPT_FILE)))
        return {"count": st.count, "last_id": st.last_id, "dataset": st.uid, "bytes": st.size,
                "free": _free_bytes(self.root) if self.storage else None,
                "store_bytes": freed, "record_extra": REC_HEAD}

    def _store_for(self, uid):
        self._need_storage()
        m = self._load_model()
        size = self._sample_bytes(m)
        if self.store.uid != uid or self.store.size != size:
            self._end_features(drop_kept=True)  # features of the samples going
            self.store.reset(size, uid)
        return m, size

    def _check_label(self, m, label):
        if not isinstance(label, int) or label < 0 or label >= m.num_classes:
            raise Fail("bad_label", "label %r is out of range 0..%d" % (label, m.num_classes - 1))

    def do_samples_put(self, req):
        self._end_features()  # a run's kept features must match the store
        uid = _need(req, "dataset", int)
        first = _need(req, "first", int)
        labels = _need(req, "labels", list)
        data = _need(req, "data", bytes)
        m, size = self._store_for(uid)
        if len(data) != size * len(labels):
            raise Fail("bad_shape", "%d bytes for %d samples of %d bytes"
                       % (len(data), len(labels), size))
        for lab in labels:
            self._check_label(m, lab)
        mv = memoryview(data)
        for k in range(len(labels)):
            sid = first + k
            if sid <= self.store.last_id:
                continue  # already stored (a retransmission)
            if sid != self.store.last_id + 1:
                raise Fail("gap", "sample %d after %d" % (sid, self.store.last_id))
            self._append(sid, labels[k], mv[k * size:(k + 1) * size])
        return {"count": self.store.count, "last_id": self.store.last_id}

    def _append(self, sid, label, data):
        """Store a sample; a filesystem with no room for it gives up the features kept for
        later runs first (a cache: the room is the user's)."""
        try:
            self.store.append(sid, label, data)
        except Fail as e:
            if e.args[0] != "no_space" or not _exists(self._p(KEPT_FILE)):
                raise
            _remove(self._p(KEPT_FILE))
            self.store.append(sid, label, data)

    def do_samples_clear(self, req):
        # a run's kept features must match the store; those kept for later runs go with it
        self._end_features(drop_kept=True)
        _remove(self.store.path + ".tmp")  # not to be taken for the store by Store()
        try:
            os.remove(self.store.path)
        except OSError as e:
            self.store._open()
            if self.store.count or _exists(self.store.path):
                raise Fail("storage", "the samples could not be removed: %s; %s"
                           % (_why(e), self.store.holds()))
        self.store = Store(self.store.path)
        return {"count": self.store.count}

    def _has_camera(self):
        if self.board.get("camera") is False:
            return False
        try:
            import sensor  # noqa: F401
            return True
        except ImportError:
            return False

    def _camera(self):
        if self.sensor is None:
            try:
                import sensor
            except ImportError:
                raise Fail("no_camera", "this board has no camera (no sensor module)")
            m = self._load_model()
            c = m.input_shape[2]
            sensor.reset()
            sensor.set_pixformat(sensor.GRAYSCALE if c == 1 else sensor.RGB565)
            sensor.set_framesize(sensor.QQVGA)
            if hasattr(sensor, "skip_frames"):
                sensor.skip_frames(time=500)
            self.sensor = sensor
        return self.sensor

    def _frame_to_input(self, img, m):
        """A camera frame -> the model's int8 input: centre square crop, box-average resize to
        H x W, quantised with the model's input scale and zero point (pixel 0..255 -> 0..1)."""
        h, w, c = m.input_shape
        fw, fh = img.width(), img.height()
        raw = img.bytearray()
        gray = len(raw) == fw * fh
        side = min(fw, fh)
        x0, y0 = (fw - side) // 2, (fh - side) // 2
        scale, zp = m.input_scale, m.input_zero_point
        lut = []
        for v in range(256):
            q = int(v / 255.0 / scale + 0.5) + zp  # round half away from zero (v >= 0)
            lut.append(-128 if q < -128 else 127 if q > 127 else q)
        out = bytearray(h * w * c)
        k = 0
        for oy in range(h):
            ya, yb = y0 + oy * side // h, y0 + max((oy + 1) * side // h, oy * side // h + 1)
            for ox in range(w):
                xa, xb = x0 + ox * side // w, x0 + max((ox + 1) * side // w, ox * side // w + 1)
                acc = [0, 0, 0]
                n = 0
                for yy in range(ya, yb):
                    row = yy * fw
                    for xx in range(xa, xb):
                        if gray:
                            v = raw[row + xx]
                            acc[0] += v
                        else:  # RGB565, big-endian
                            i = 2 * (row + xx)
                            p = (raw[i] << 8) | raw[i + 1]
                            acc[0] += ((p >> 11) & 31) * 255 // 31
                            acc[1] += ((p >> 5) & 63) * 255 // 63
                            acc[2] += (p & 31) * 255 // 31
                        n += 1
                if c == 1:
                    if not gray:
                        acc[0] = (acc[0] * 77 + acc[1] * 150 + acc[2] * 29) >> 8
                    out[k] = lut[(acc[0] + n // 2) // n] & 0xFF
                    k += 1
                else:
                    for ch in range(c):
                        v = acc[0] if gray else acc[ch]
                        out[k] = lut[(v + n // 2) // n] & 0xFF
                        k += 1
        return out

    def do_capture(self, req):
        label = _need(req, "label", int)
        sid = _need(req, "id", int)
        uid = _need(req, "dataset", int)
        m, size = self._store_for(uid)
        self._check_label(m, label)
        cam = self._camera()
        t0 = _ticks_us()
        img = cam.snapshot()
        x = self._frame_to_input(img, m)
        self.pending = (sid, label, x)
        return {"id": sid, "label": label, "data": bytes(x),
                "capture_us": _ticks_diff(_ticks_us(), t0)}

    def do_capture_keep(self, req):
        self._end_features()  # a run's kept features must match the store
        sid = _need(req, "id", int)
        if sid <= self.store.last_id:
            return {"count": self.store.count, "last_id": self.store.last_id}
        if self.pending is None or self.pending[0] != sid:
            raise Fail("state", "no captured sample %d waiting" % sid)
        if sid != self.store.last_id + 1:
            raise Fail("gap", "sample %d after %d" % (sid, self.store.last_id))
        _, label, x = self.pending
        self._append(sid, label, x)
        self.pending = None
        return {"count": self.store.count, "last_id": self.store.last_id}

    # training
    HANDLERS = {
        T_INFO: "do_info", T_BYE: "do_bye",
        T_PUSH_BEGIN: "do_push_begin", T_PUSH_DATA: "do_push_data",
        T_PUSH_COMMIT: "do_push_commit", T_PUSH_ROMFS: "do_push_romfs",
        T_SAMPLES_STATUS: "do_samples_status", T_SAMPLES_PUT: "do_samples_put",
        T_CAPTURE: "do_capture", T_CAPTURE_KEEP: "do_capture_keep",
        T_SAMPLES_CLEAR: "do_samples_clear",
        T_TRAIN_START: "do_train_start", T_TRAIN_STEPS: "do_train_steps",
        T_TRAIN_END: "do_train_end", T_PREDICT: "do_predict", T_REPORT: "do_report",
        T_PARAMS_SAVE: "do_params_save", T_PARAMS_ROLLBACK: "do_params_rollback",
        T_PARAMS_RESET: "do_params_reset",
    }

    def handle(self, ftype, seq, payload, crc):
        """The reply frame (bytes) to one request frame."""
        if ftype != T_INFO and self.last is not None and self.last[0] == seq and \
                self.last[1] == crc:
            return self.last[2]  # a retransmission: the same reply, not a second execution
        name = self.HANDLERS.get(ftype)
        if name is None:
            if ftype & REPLY:
                return self.error(seq, "unexpected", "the board got a reply-type frame 0x%02x"
                                  % ftype)
            return self.error(seq, "unknown_type", "unknown request type 0x%02x" % ftype)
        try:
            req = decode(payload) if len(payload) else None
        except ValueError as e:
            return self.error(seq, "bad_payload", "undecodable request: %s" % e)
        try:
            if ftype != T_INFO and ftype != T_BYE and self.storage:
                # a change of its files an error left part way is finished first: no request
                # reads or changes them half changed (INFO says what is there, as it is)
                self._pending_change()
            rep = getattr(self, name)(req)
            out = frame(ftype | REPLY, seq, encode(rep))
        except Fail as e:
            out = self.error(seq, e.args[0], e.args[1])
        except MemoryError:
            out = self.error(seq, "memory", "out of memory on the board")
        except Exception as e:  # noqa: BLE001 - the link must survive any failure
            out = self.error(seq, "internal", "%s: %s" % (type(e).__name__, e))
        self.last = (seq, crc, out)
        return out

    def error(self, seq, code, msg):
        return frame(T_ERROR, 0xFFFF if seq is None else seq, encode({"code": code, "msg": msg}))


def serve(inp, out, agent):
    """Serve requests until BYE or the end of the input stream."""
    reader = FrameReader(inp, agent.max_payload)
    try:
        while agent.running:
            try:
                reader.max_payload = agent.max_payload  # INFO and PUSH_COMMIT may raise it
                ftype, seq, payload, crc = reader.read()
                rep = agent.handle(ftype, seq, payload, crc)
            except EOFError:
                break
            except ProtocolError as e:
                rep = agent.error(e.args[2], e.args[0], e.args[1])
            out.write(rep)
            if hasattr(out, "flush"):
                out.flush()
    finally:
        # a run cut short by the PC leaving: its own file goes, the features it keeps for later
        # runs are written
        agent._end_features(keep=True)


def main(inp=None, out=None, root=None, board=None):
    """Run the agent on this board's console (USB serial) until the PC says goodbye."""
    try:
        import micropython
    except ImportError:
        micropython = None
    if inp is None:
        inp = sys.stdin.buffer
    if out is None:
        out = sys.stdout.buffer
    if micropython is not None and hasattr(micropython, "kbd_intr"):
        micropython.kbd_intr(-1)  # a 0x03 byte in a frame is data, not Ctrl-C
    try:
        agent = Agent(root, board)
        out.write(frame(T_INFO | REPLY, 0xFFFF, encode({"hello": AGENT_VERSION})))
        if hasattr(out, "flush"):
            out.flush()
        serve(inp, out, agent)
    finally:
        if micropython is not None and hasattr(micropython, "kbd_intr"):
            micropython.kbd_intr(3)
