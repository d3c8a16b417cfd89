"""The PC side of the session protocol (docs/SESSION.md): frames and values.

Written independently of the board's `tinymp_agent` (which must stay MicroPython-only); the tests
check each side against the other. A frame is

    magic b"\\xa5T" | type u8 | flags u8 | seq u16 | length u32 | header check u16 |
    payload | CRC-32 u32

little-endian; the header check is the low 16 bits of the CRC-32 of the first 10 bytes, the final
CRC-32 covers header and payload. The payload is one value: None, bool, int (int64), float
(float64), str, bytes, list, dict with str keys.
"""
import struct
import zlib

MAGIC = b"\xa5T"
HEADER = 12
HEAD = struct.Struct("<2sBBHI")
MAX_PAYLOAD = 1 << 20  # what the PC accepts from a board

# request types (replies: type | REPLY; errors: ERROR)
INFO, BYE = 0x01, 0x02
PUSH_BEGIN, PUSH_DATA, PUSH_COMMIT, PUSH_ROMFS = 0x10, 0x11, 0x12, 0x13
SAMPLES_STATUS, SAMPLES_PUT, CAPTURE, CAPTURE_KEEP, SAMPLES_CLEAR = 0x20, 0x21, 0x22, 0x23, 0x24
TRAIN_START, TRAIN_STEPS, TRAIN_END = 0x30, 0x31, 0x32
PREDICT = 0x40
REPORT = 0x50
PARAMS_SAVE, PARAMS_ROLLBACK, PARAMS_RESET = 0x60, 0x61, 0x62
REPLY = 0x80
ERROR = 0xFF
NO_SEQ = 0xFFFF  # the seq of a frame that answers no particular request

NAMES = {v: k for k, v in dict(
    INFO=INFO, BYE=BYE, PUSH_BEGIN=PUSH_BEGIN, PUSH_DATA=PUSH_DATA, PUSH_COMMIT=PUSH_COMMIT,
    PUSH_ROMFS=PUSH_ROMFS,
    SAMPLES_STATUS=SAMPLES_STATUS, SAMPLES_PUT=SAMPLES_PUT, CAPTURE=CAPTURE,
    CAPTURE_KEEP=CAPTURE_KEEP, SAMPLES_CLEAR=SAMPLES_CLEAR, TRAIN_START=TRAIN_START,
    TRAIN_STEPS=TRAIN_STEPS, TRAIN_END=TRAIN_END, PREDICT=PREDICT, REPORT=REPORT,
    PARAMS_SAVE=PARAMS_SAVE, PARAMS_ROLLBACK=PARAMS_ROLLBACK, PARAMS_RESET=PARAMS_RESET).items()}

# the columns of a training event row (TRAIN_STEPS reply "events")
EVENT_FIELDS = ("step", "sample", "label", "pred", "loss", "forward_us", "backward_us",
                "update_us", "step_us", "step_cycles", "high_water", "cached")
# the columns an agent before version 5 sends (no "cached")
EVENT_FIELDS_4 = EVENT_FIELDS[:11]

# error codes the link layer retries (the frame was damaged on the way, not refused)
TRANSPORT_ERRORS = frozenset({"crc", "header", "too_long"})


class ProtocolError(ValueError):
    """Bytes that do not follow the protocol."""


# --- values ---------------------------------------------------------------------------------

def pack(value) -> bytes:
    out = bytearray()
    _pack(value, out)
    return bytes(out)


def _pack(v, out):
    if v is None:
        out += b"N"
    elif v is True:
        out += b"T"
    elif v is False:
        out += b"F"
    elif isinstance(v, int):
        if not -(1 << 63) <= v < (1 << 63):
            raise ProtocolError(f"integer {v} does not fit 64 bits")
        out += b"i" + struct.pack("<q", v)
    elif isinstance(v, float):
        out += b"f" + struct.pack("<d", v)
    elif isinstance(v, str):
        b = v.encode("utf-8")
        out += b"s" + struct.pack("<I", len(b)) + b
    elif isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        out += b"b" + struct.pack("<I", len(b)) + b
    elif isinstance(v, (list, tuple)):
        out += b"l" + struct.pack("<I", len(v))
        for x in v:
            _pack(x, out)
    elif isinstance(v, dict):
        out += b"d" + struct.pack("<I", len(v))
        for k, x in v.items():
            if not isinstance(k, str):
                raise ProtocolError("dict keys must be str")
            _pack(k, out)
            _pack(x, out)
    else:
        # numpy scalars and the like
        try:
            import numpy as np
            if isinstance(v, np.integer):
                return _pack(int(v), out)
            if isinstance(v, np.floating):
                return _pack(float(v), out)
        except ImportError:  # pragma: no cover
            pass
        raise ProtocolError(f"cannot send a {type(v).__name__}")


def unpack(data):
    """The value in `data` (all of it); ProtocolError when malformed."""
    mv = memoryview(bytes(data))
    value, end = _unpack(mv, 0, 0)
    if end != len(mv):
        raise ProtocolError(f"{len(mv) - end} trailing bytes after the value")
    return value


def _take(mv, pos, n):
    if n < 0 or pos + n > len(mv):
        raise ProtocolError("value truncated")
    return pos + n


def _unpack(mv, pos, depth):
    end = _take(mv, pos, 1)
    tag = chr(mv[pos])
    pos = end
    if tag == "N":
        return None, pos
    if tag == "T":
        return True, pos
    if tag == "F":
        return False, pos
    if tag in "if":
        end = _take(mv, pos, 8)
        return struct.unpack("<q" if tag == "i" else "<d", mv[pos:end])[0], end
    if tag not in "sbld":
        raise ProtocolError(f"unknown value tag {ord(tag):#04x}")
    end = _take(mv, pos, 4)
    (n,) = struct.unpack("<I", mv[pos:end])
    pos = end
    if tag in "sb":
        end = _take(mv, pos, n)
        raw = bytes(mv[pos:end])
        if tag == "b":
            return raw, end
        try:
            return raw.decode("utf-8"), end
        except UnicodeDecodeError:
            raise ProtocolError("string is not UTF-8") from None
    if depth >= 8:
        raise ProtocolError("values nested too deeply")
    if n > len(mv) - pos:
        raise ProtocolError("item count larger than the data")
    if tag == "l":
        items = []
        for _ in range(n):
            x, pos = _unpack(mv, pos, depth + 1)
            items.append(x)
        return items, pos
    d = {}
    for _ in range(n):
        k, pos = _unpack(mv, pos, depth + 1)
        if not isinstance(k, str):
            raise ProtocolError("dict key is not a string")
        d[k], pos = _unpack(mv, pos, depth + 1)
    return d, pos


# --- frames ---------------------------------------------------------------------------------

def crc32(data, start=0) -> int:
    return zlib.crc32(data, start) & 0xFFFFFFFF


def encode_frame(ftype: int, seq: int, payload: bytes = b"") -> bytes:
    head = HEAD.pack(MAGIC, ftype, 0, seq & 0xFFFF, len(payload))
    head += struct.pack("<H", crc32(head) & 0xFFFF)
    return head + payload + struct.pack("<I", crc32(payload, crc32(head)))


class Frame:
    __slots__ = ("type", "seq", "payload", "crc")

    def __init__(self, ftype, seq, payload, crc):
        self.type, self.seq, self.payload, self.crc = ftype, seq, payload, crc

    def value(self):
        return unpack(self.payload) if self.payload else None

    def __repr__(self):
        return f"Frame({NAMES.get(self.type & 0x7F, hex(self.type))}, seq={self.seq}, {len(self.payload)} B)"


class BadFrame:
    """A damaged frame the decoder skipped: `reason` is 'header', 'crc' or 'too_long'."""
    __slots__ = ("reason", "seq")

    def __init__(self, reason, seq=None):
        self.reason, self.seq = reason, seq

    def __repr__(self):
        return f"BadFrame({self.reason}, seq={self.seq})"


class Decoder:
    """Incremental frame decoder: `feed(bytes)` returns the frames and damaged frames completed by
    those bytes. Bytes outside frames (a board's REPL text, a traceback) are kept in `noise`
    (the last 4 KB) so a failure can show what the board printed."""

    def __init__(self, max_payload=MAX_PAYLOAD):
        self.buf = bytearray()
        self.max_payload = max_payload
        self.noise = bytearray()

    def _drop(self, n):
        self.noise += self.buf[:n]
        del self.noise[:-4096]
        del self.buf[:n]

    def feed(self, data):
        self.buf += data
        out = []
        while True:
            i = self.buf.find(MAGIC)
            if i < 0:
                # keep a trailing first magic byte: the second may come next
                self._drop(len(self.buf) - (1 if self.buf[-1:] == MAGIC[:1] else 0))
                return out
            if i:
                self._drop(i)
            if len(self.buf) < HEADER:
                return out
            _, ftype, _flags, seq, n = HEAD.unpack_from(self.buf, 0)
            (check,) = struct.unpack_from("<H", self.buf, 10)
            if crc32(bytes(self.buf[:10])) & 0xFFFF != check:
                self._drop(1)
                out.append(BadFrame("header"))
                continue
            if n > self.max_payload:
                self._drop(1)
                out.append(BadFrame("too_long", seq))
                continue
            total = HEADER + n + 4
            if len(self.buf) < total:
                return out
            raw = bytes(self.buf[:total])
            del self.buf[:total]
            c = crc32(raw[HEADER:HEADER + n], crc32(raw[:HEADER]))
            if c != struct.unpack_from("<I", raw, HEADER + n)[0]:
                out.append(BadFrame("crc", seq))
                # a damaged frame may hide the start of the next one: rescan its bytes
                self.buf[:0] = raw[1:]
                self.noise += raw[:1]
                continue
            out.append(Frame(ftype, seq, raw[HEADER:HEADER + n], c))


# --- replies: what the PC reads of each -----------------------------------------------------
#
# The PC does not trust the board's agent: `reply_problem(type, value)` checks a reply against
# what the PC reads of it, before any command uses it. A spec is one of
#   a kind name: "int" (not a bool), "count" (an int >= 0), "pos" (an int >= 1), "id" (an int
#       >= -1), "num" (a finite int or float: sizes and times, which the report rounds), "loss"
#       (any number: a training that diverged has NaN losses), "scale" (a finite number > 0),
#       "str", "bool", "bytes", "dict", "list", "any"; with a trailing "?" the key may be absent
#       or None;
#   {key: spec}: a dict holding at least those keys (others are let through as they are);
#   Opt(spec): absent or None, or spec; ListOf(spec, n): a list (of n items) of spec;
#   Row(spec, ..., least=k, more=False): a list of these items, of which the first k (all, by
#       default) are required and the others checked when present; with more=True, items past
#       them are let through unchecked (a newer agent's columns);
#   DictOf(spec): a dict of any keys whose values are spec; Either(spec, ...): the first spec
#   that fits (the last one's problem is reported).
# Only what the PC reads is required; the agent may send more (a newer agent, more fields).

class Opt:
    def __init__(self, spec):
        self.spec = spec


class ListOf:
    def __init__(self, spec, n=None):
        self.spec, self.n = spec, n


class Row:
    def __init__(self, *specs, least=None, more=False):
        self.specs, self.more = specs, more
        self.least = len(specs) if least is None else least


class DictOf:
    def __init__(self, spec):
        self.spec = spec


class Either:
    def __init__(self, *specs):
        self.specs = specs


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v):
    return _number(v) and abs(v) < float("inf")  # NaN fails the comparison too


_KINDS = {
    "int": (_int, "an integer"),
    "count": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "pos": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "id": (lambda v: _int(v) and v >= -1, "an integer >= -1"),
    "num": (_finite, "a finite number"),
    "loss": (_number, "a number"),
    "scale": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "bytes": (lambda v: isinstance(v, bytes), "bytes"),
    "dict": (lambda v: isinstance(v, dict), "a dict"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "any": (lambda v: True, "anything"),
}


def describe(v):
    """A value in a few words, for an error line."""
    if v is None or isinstance(v, bool):
        return repr(v) if v is None else f"a bool ({v})"
    if isinstance(v, int):
        return f"an int ({v})"
    if isinstance(v, float):
        return f"a float ({v!r})"
    if isinstance(v, str):
        return f"a str ({v if len(v) <= 20 else v[:20] + '...'!r})"
    if isinstance(v, bytes):
        return f"{len(v)} bytes"
    if isinstance(v, list):
        return f"a list of {len(v)} item{'s' if len(v) != 1 else ''}"
    if isinstance(v, dict):
        return "a dict"
    return type(v).__name__


def _where(path):
    return f"'{path}'" if path else "the reply"


def _problem(spec, v, path):
    if isinstance(spec, str) and spec.endswith("?"):
        spec = Opt(spec[:-1])
    if isinstance(spec, Opt):
        return None if v is None else _problem(spec.spec, v, path)
    if isinstance(spec, str):
        ok, what = _KINDS[spec]
        return None if ok(v) else f"{_where(path)} is {describe(v)}, not {what}"
    if isinstance(spec, dict):
        if not isinstance(v, dict):
            return f"{_where(path)} is {describe(v)}, not a dict"
        for k, sub in spec.items():
            at = f"{path}.{k}" if path else k
            if k not in v:
                if isinstance(sub, Opt) or (isinstance(sub, str) and sub.endswith("?")):
                    continue
                return f"'{at}' is missing"
            p = _problem(sub, v[k], at)
            if p:
                return p
        return None
    if isinstance(spec, DictOf):
        if not isinstance(v, dict):
            return f"{_where(path)} is {describe(v)}, not a dict"
        for k, x in v.items():
            p = _problem(spec.spec, x, f"{path}.{k}" if path else k)
            if p:
                return p
        return None
    if isinstance(spec, (ListOf, Row)):
        if isinstance(spec, ListOf):
            lo = hi = spec.n
        else:
            lo, hi = spec.least, None if spec.more else len(spec.specs)
        n = (None if lo is None else f"{lo}" if lo == hi else f"{lo} or more" if hi is None
             else f"{lo} to {hi}")
        if not isinstance(v, list):
            want = "a list" if n is None else f"a list of {n}"
            return f"{_where(path)} is {describe(v)}, not {want}"
        if lo is not None and not (lo <= len(v) and (hi is None or len(v) <= hi)):
            return f"{_where(path)} is {describe(v)}, not {n}"
        for i, x in enumerate(v if isinstance(spec, ListOf) else v[:len(spec.specs)]):
            p = _problem(spec.spec if isinstance(spec, ListOf) else spec.specs[i], x,
                         f"{path}[{i}]")
            if p:
                return p
        return None
    if isinstance(spec, Either):
        for s in spec.specs:
            p = _problem(s, v, path)
            if p is None:
                return None
        return p
    raise TypeError(f"not a reply spec: {spec!r}")  # pragma: no cover


# a training plan (TRAIN_START, TRAIN_END): what the report and the Cortex-M7 estimate read
PLAN = {"arena_bytes": "count?", "method": "str?", "forward_macs": "count?",
        "backward_macs": "count?", "table_bytes": "count?", "breakdown": Opt(DictOf("num?"))}
# PUSH_COMMIT's and PUSH_ROMFS's "romfs" (commands.romfs_text)
ROMFS = {"present": "bool?", "in_place": "bool?", "state": "str?", "warning": "str?"}
# TRAIN_START's and TRAIN_END's "features": the run's feature cache (None: none kept)
FEATURES = {"where": "str?", "bytes": "count?", "sample_bytes": "count?", "cached_steps": "count?",
            # a run that keeps its features for later runs (agent 7): how many samples' features
            # an earlier run had kept, and whether this run's are kept (TRAIN_END)
            "reused": "count?", "kept": "bool?"}
# the training options a saved or trial run's record keeps (INFO "params" and "trial": the options
# TRAIN_START was sent), as `tinymp status` shows them (commands.options_text)
RUN_OPTIONS = {"method": "str?", "steps": "count?", "lr": "num?", "seed": "int?",
               "budget": "count?", "r": "count?", "ratio": "num?", "storage": "str?",
               "momentum": "num?", "period": "count?", "fresh": "bool?", "run": "str?",
               "keep_features": "bool?"}
# a run's record: the model it trained, its options, the board's clock when it ended
RUN_RECORD = {"model": "str?", "options": Opt(RUN_OPTIONS), "time": "num?"}

REPLIES = {
    INFO: {
        "protocol": "int", "agent": "any?", "board": "str?", "simulated": "bool?",
        "implementation": "str?", "firmware": "str?", "tinymp": "str?", "clock": "str?",
        "mem_free": "num?", "mem_total": "num?", "arena_budget": "count?",
        "model_flash": "count?", "max_payload": "pos?", "romfs": "bool?", "camera": "bool?",
        "romfs_state": Opt({"bytes": "count", "retry": "bool?", "serving": "bool?",
                            "state": "str?", "note": "str?"}),
        # None (no model), a model that does not load (its error), or the model's description
        "model": Opt(Either(
            {"error": "str", "bytes": "int?"},
            {"sha256": "str", "bytes": "count", "input_shape": ListOf("pos", 3),
             "num_classes": "pos", "class_names": Opt(ListOf("str")), "input_scale": "scale",
             "input_zero_point": "int", "inference_arena_bytes": "count?",
             "served_from": "str?"})),
    },
    PUSH_BEGIN: {"offset": "count"},
    PUSH_DATA: {"offset": "count"},
    PUSH_COMMIT: {"sha256": "str", "bytes": "count", "romfs": Opt(ROMFS)},
    PUSH_ROMFS: ROMFS,
    # free, store_bytes, record_extra: the room for more samples (agent 9; older agents: None)
    SAMPLES_STATUS: {"last_id": "id", "dataset": "any", "bytes": "any", "free": "count?",
                     "store_bytes": "count?", "record_extra": "count?"},
    SAMPLES_PUT: {"last_id": "id"},
    CAPTURE: {"data": "bytes"},
    TRAIN_START: {"plan": Opt(PLAN), "lr": "num?", "resumed": "bool?", "resumed_state": "bool?",
                  "resume_error": "str?", "support_samples": "count?", "features": Opt(FEATURES)},
    # a row of EVENT_FIELDS: the report reads every column (times: None when not measured);
    # agent 4 sends no "cached", and a newer one may send columns after it
    TRAIN_STEPS: {"events": ListOf(Row("count", "int", "int", "int", "loss", "num?", "num?",
                                       "num?", "num?", "num?", "num?", "bool",
                                       least=len(EVENT_FIELDS_4), more=True))},
    TRAIN_END: {"plan": Opt(PLAN), "stats": Opt({"stalled_steps": "count?"}),
                "high_water": "num?", "heap_before": "num?", "heap_after": "num?",
                "heap_end": "num?", "saved": "bool?", "save_error": "str?", "trial": "bool?",
                "trial_error": "str?", "features": Opt(FEATURES)},
    PREDICT: {"pred": "bytes", "params": "str", "us": "num"},
    PARAMS_SAVE: {"from": "str?"},
    PARAMS_ROLLBACK: {},
    PARAMS_RESET: {},
}
assert len(EVENT_FIELDS) == len(REPLIES[TRAIN_STEPS]["events"].spec.specs)


# What `tinymp status` reads of INFO besides REPLIES[INFO] (an older agent sends no params or
# trial: None). Checked by status only: a board whose records are damaged must still take the
# commands that replace them (push, train, params reset).
STATUS_INFO = {
    "samples": Opt({"count": "count", "last_id": "id", "dataset": "any", "bytes": "count?",
                    "free": "count?", "store_bytes": "count?", "record_extra": "count?"}),
    # the saved parameters' record, "saved" (params.bin is there) and "previous" (params.prev, for
    # a rollback); from agent 3 also without a record, then only those two
    "params": Opt(dict(RUN_RECORD, saved="bool?", previous="bool?")),
    "trial": Opt(RUN_RECORD),
    # what features.kept holds (agent 8; None: no file, or an older agent): its bytes, the samples
    # it has records for, the plan's first trained layer and bytes per sample of the run that
    # kept them, and whether they are of the board's model, samples and engine ("current")
    "features": Opt({"bytes": "count", "samples": "count", "first": "count?",
                     "sample_bytes": "count?", "current": "bool"}),
}


def status_problem(info):
    """None when INFO has what `tinymp status` reads, else what is wrong, in a few words."""
    return _problem(STATUS_INFO, info, "")


def reply_problem(ftype, value):
    """None when `value` has what the PC reads of a reply to request `ftype` (a request the
    table does not name is not checked), else what is wrong, in a few words."""
    spec = REPLIES.get(ftype)
    return None if spec is None else _problem(spec, value, "")
