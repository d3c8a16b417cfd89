"""What `tinymp push|collect|train|eval|params|status|report|session|demo` do, against a connected
`Board` (link.py) and a session folder on the PC:

    SESSION/session.json     the model last pushed, the board, what has been run
    SESSION/dataset/         the collected samples (dataset.py): what the board trains on
    SESSION/eval/            held-out samples to evaluate on (never sent to the board's store)
    SESSION/runs/            one JSON per train / eval run (events, plan, timings)
    SESSION/sim/<BOARD>/     the simulated board's flash, when --port sim

Failures raise `SessionError` (one line; `code` 2 for what the user gave, 1 for the board or the
link); the CLI prints it and exits with that status. The board's replies are not trusted: the link
checks each against what the PC reads of it (protocol.reply_problem), and the loops here check
that each reply advances the transfer; a bad reply is a `ReplyError` (a LinkError, status 1).
"""
import contextlib
import datetime
import errno
import hashlib
import json
import math
import os
import re
import struct
import time

import numpy as np

from .._files import atomic_write
from . import protocol as P
from .dataset import Dataset, DatasetError, disk_full, load_samples
from .link import BoardError, LinkError, ReplyError
from .report import BOARD, plural
from ..tinymp_agent import DEFAULT_METHOD  # what the board trains when no method is named
from ..tinymp_agent import RATIO_METHODS  # the methods whose plans pick channels by a ratio


class SessionError(Exception):
    def __init__(self, msg, code=1):
        super().__init__(msg)
        self.code = code


def user_error(msg):
    return SessionError(msg, 2)


def interrupted(msg):
    """Ctrl-C (KeyboardInterrupt) in a long command: its one line, saying what was kept, and
    the exit status 130 of any interrupted command."""
    return SessionError(msg, 130)


# a message that starts "tinymp: " (the engine's, the agent's, a link's), or holds one after ": "
_INNER_PREFIX = re.compile(r"(^|: )tinymp: ")


def embedded(msg):
    """`msg` (an exception or its text: the board's, the engine's or the link's words) as part of
    a line that has its own "tinymp:" at its start: without the inner "tinymp: " prefixes, which
    would read "tinymp: ...: tinymp: ..."."""
    return _INNER_PREFIX.sub(r"\1", str(msg))


class WordedLinkError(LinkError):
    """A failed link (status 1, no BYE) whose message, one line starting 'tinymp:', already says
    what the board may hold: the link went after the board was asked to act (commit a model,
    write ROMFS, end a training run), which it does before it replies. Callers that word a
    LinkError as 'keeps its previous model' pass this one on unchanged."""


class WriteError(SessionError):
    """A session file that could not be written (a full disk, a quota, a read-only folder, no
    permission), status 1 as a full disk in collect. The file is as it was and no .tmp is left
    (_files.atomic_write). `with_context(what)` adds what the board did that the file would
    have recorded; `fix` says what the user does about it."""

    def __init__(self, path, err, kept):
        self.path = path
        full = disk_full(err)
        self.why = "the disk is full" if full else (err.strerror or str(err))
        self.fix = "make room" if full else "make the session folder writable"
        super().__init__(f"tinymp: cannot write {path}: {self.why}; {kept}")

    def with_context(self, what):
        return SessionError(f"{self}; {what}", self.code)


class _NoBar:
    def __init__(self, *a, **kw):
        pass

    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def progress(total, desc, unit="it", enabled=True, unit_scale=False):
    """A tqdm progress bar on stderr (only on a terminal), or a silent stand-in."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=None,
                leave=False, dynamic_ncols=True)


# --- the session folder ---------------------------------------------------------------------

# What the commands read of session.json (Session.state), in the types they read it. A file
# edited by hand or written by another program may hold anything that is JSON; checked once where
# it is read, it is one line naming the field, not a traceback in whichever command reads that
# field first. Other fields, and the rest of these dicts, are let through as they are.
STATE = {
    # the model last pushed (INFO's model, its file's name and path): push compares its sha256,
    # status and the report print these, and `report --m7` reads the model file at path
    "model": P.Opt({"sha256": "str?", "name": "str?", "path": "str?", "bytes": "num?",
                    "served_from": "str?", "inference_arena_bytes": "count?"}),
    # the board it was pushed to (_board_summary): the report's board line and, without a run
    # record, its budget; the simulated board's profile (run._sim_profile)
    "board": P.Opt(BOARD),
    # log_params: the report replays it against each run's time (an entry without a time is
    # older than every run, one without an action changes nothing)
    "params_log": P.Opt(P.ListOf({"action": "str?", "time": "num?", "model_sha256": "str?"})),
}


def state_problem(state):
    """None when `state` (session.json as read) holds what the commands read of it (STATE),
    else what is wrong, in a few words."""
    if not isinstance(state, dict):
        return f"it holds {P.describe(state)}, not a JSON object"
    return P._problem(STATE, state, "")


_HELD, _BUSY, _UNLOCKED = "held", "busy", "unlocked"

# The byte of SESSION/.lock that msvcrt.locking holds. Windows refuses other processes a read of a
# locked byte, and a second command reads the holder's "pid N" line from the file's start: the
# lock is on one byte far past it (locking past the end of a file is allowed and does not grow it).
_MSVCRT_LOCK_AT = 1 << 20


def _try_lock(f):
    """Lock SESSION/.lock (f, open) for this process without waiting: _HELD, _BUSY (another
    command holds it) or _UNLOCKED (it cannot be locked: a filesystem without locks, or neither
    fcntl nor msvcrt). flock where there is fcntl (POSIX); else msvcrt.locking (Windows), which
    locks bytes from the file's position and fails at once with EACCES on a byte another
    process holds (EDEADLOCK after the retries of its waiting mode). Both go when the file
    closes."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is not None:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return _HELD
        except OSError as e:
            return _BUSY if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else _UNLOCKED
    try:
        import msvcrt
    except ImportError:
        return _UNLOCKED
    try:
        f.seek(_MSVCRT_LOCK_AT)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        return _HELD
    except OSError as e:
        return _BUSY if e.errno in (errno.EACCES, errno.EDEADLK) else _UNLOCKED  # = EDEADLOCK


def _unlock(f):
    """Release what _try_lock held. Closing the file would too, but Windows asks for an explicit
    unlock: it may release the locks of a closed file only later."""
    try:
        import fcntl
    except ImportError:
        import msvcrt
        f.seek(_MSVCRT_LOCK_AT)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def hold_folder(path):
    """Hold the session folder `path` for one command: a second command on the same folder (which
    would interleave its samples, runs and the simulated board's flash with this one's)
    stops with one line instead, naming the holder by the pid it wrote into SESSION/.lock.
    The lock is on that file (_try_lock: flock, or msvcrt.locking on Windows) and goes when
    the process ends however it ends; a folder that cannot be locked is used unlocked."""
    try:
        os.makedirs(path, exist_ok=True)
        # "a+": made when missing, never emptied before it is locked (it names the holder),
        # written at its end (the start, once emptied; the position is the lock's byte on
        # Windows); unbuffered: a pid a full disk refused is not kept to fail at the close
        f = open(os.path.join(path, ".lock"), "a+b", buffering=0)
    except OSError as e:
        # a folder the PC cannot write (read-only, no permission, full) is status 1, as any
        # session file it cannot write; a path that is no folder (a file) is the user's, 2
        cannot_write = e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC,
                                   getattr(errno, "EDQUOT", errno.ENOSPC))
        raise SessionError(f"tinymp: cannot use the session folder {path}: "
                           f"{e.strerror or e}", 1 if cannot_write else 2) from None
    with f:
        got = _try_lock(f)
        if got == _UNLOCKED:
            # a filesystem without locks (ENOLCK on some NFS mounts): go on unlocked rather
            # than report a command that is not there
            yield
            return
        if got == _BUSY:
            f.seek(0)
            who = f.read().decode(errors="replace").strip()
            raise SessionError(f"tinymp: another tinymp command ({who or 'a process'}) is "
                               f"using the session folder {path}; wait for it to "
                               "finish, or give another --session") from None
        try:
            f.truncate(0)
            f.write(f"pid {os.getpid()}\n".encode())
            f.flush()
        except OSError:
            pass  # a full disk: held all the same; a second command names no pid
        try:
            yield
        finally:
            try:
                f.truncate(0)
            except OSError:
                pass
            _unlock(f)


class Session:
    def __init__(self, path):
        self.path = os.path.abspath(path)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise user_error(f"tinymp: {path} is a file, not a session folder: give a folder "
                             "with --session (it is made when missing)")
        self.state_path = os.path.join(self.path, "session.json")
        self.state = {}
        if os.path.exists(self.state_path):
            try:
                with open(self.state_path, encoding="utf-8") as f:  # as _write_json writes it
                    self.state = json.load(f)
            except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested too deep
                raise user_error(f"tinymp: cannot read {self.state_path}: {e}; correct it, or "
                                 "move it out of the session folder (the next `tinymp push` "
                                 "writes a new one)") from None
            problem = state_problem(self.state)
            if problem:
                # refused here, before any command reads it or writes anything: the file stays
                # as the user has it (not rewritten without what tinymp could not read)
                raise user_error(f"tinymp: {self.state_path} is damaged: {problem}; correct it, "
                                 "or move it out of the session folder (the next `tinymp push` "
                                 "writes a new one)")

    @property
    def dataset_dir(self):
        return os.path.join(self.path, "dataset")

    @property
    def eval_dir(self):
        return os.path.join(self.path, "eval")

    @property
    def runs_dir(self):
        return os.path.join(self.path, "runs")

    def sim_dir(self, profile):
        return os.path.join(self.path, "sim", profile)

    def save(self):
        """Write session.json whole or not at all; WriteError names it when it cannot be."""
        try:
            os.makedirs(self.path, exist_ok=True)
            _write_json(self.state_path, self.state, indent=1)
        except OSError as e:
            raise WriteError(self.state_path, e, "it is as it was") from None

    def lock(self):
        """Hold the session folder for one command (hold_folder)."""
        return hold_folder(self.path)

    def _run_numbers(self, kind):
        out = {}
        if os.path.isdir(self.runs_dir):
            for name in os.listdir(self.runs_dir):
                m = re.fullmatch(re.escape(kind) + r"-(\d+)\.json", name)
                if m:
                    out[int(m.group(1))] = name
        return out

    def new_run(self, kind, record):
        """Write a run record as runs/KIND-NNNN.json, numbered after the highest one there (a
        deleted record never makes a new one overwrite another); the file appears whole, and
        never in place of another record.

        The record is written whole to a .tmp, then named with os.link, which fails rather than
        replaces when the name is taken. Where the filesystem has no hard links (FAT and exFAT
        USB sticks, some network shares: EPERM, ENOTSUP, ENOSYS, ...) it is renamed with
        os.replace to a name found free just before. That relies on Session.lock: the commands
        that record runs (train, eval, the session flow) hold the folder, so no other tinymp
        command takes the name between the check and the rename (a folder that cannot be locked
        runs unlocked, and two commands at once there could race for it). Not a reservation of
        the name with O_EXCL, then a rename over it: the empty file under the record's name
        meanwhile, or left by a crash, is a damaged record to `tinymp report`, which reads the
        runs without the lock."""
        n = max(self._run_numbers(kind), default=0) + 1
        path = os.path.join(self.runs_dir, f"{kind}-{n:04d}.json")
        tmp = os.path.join(self.runs_dir, f".{kind}-{os.getpid()}.tmp")
        try:
            os.makedirs(self.runs_dir, exist_ok=True)
            _write_json(tmp, record)  # nothing left behind when it fails
        except OSError as e:
            raise WriteError(path, e, "no run record written") from None
        links = True
        try:
            while True:
                path = os.path.join(self.runs_dir, f"{kind}-{n:04d}.json")
                if links:
                    try:
                        os.link(tmp, path)  # fails, rather than replaces, when the name is taken
                        return path
                    except FileExistsError:
                        n += 1
                    except OSError:
                        links = False  # no hard links here: the same name, the other way
                # asked of the filesystem, not of the listing: a dangling link, or on FAT a name
                # that differs only in case, is taken too
                elif os.path.lexists(path):
                    n += 1
                else:
                    os.replace(tmp, path)
                    return path
        except OSError as e:
            raise WriteError(path, e, "no run record written") from None
        finally:
            # gone once renamed; one that cannot be removed is a hidden .tmp, not a record
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def runs(self, kind, skip_damaged=False):
        """The run records of `kind`, oldest first (by number); SessionError names a record
        that cannot be read (with skip_damaged, it is left out)."""
        out = []
        for n, name in sorted(self._run_numbers(kind).items()):
            path = os.path.join(self.runs_dir, name)
            try:
                with open(path) as f:
                    rec = json.load(f)
            except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested too deep
                if skip_damaged:
                    continue
                raise user_error(f"tinymp: cannot read the run record {path}: {e}; move it out "
                                 "of the runs folder") from None
            if not isinstance(rec, dict):
                if skip_damaged:
                    continue
                raise user_error(f"tinymp: {path} is not a run record; move it out of the runs "
                                 "folder")
            rec["file"] = name
            out.append(rec)
        return out


def log_params(session, action, board, reply=None):
    """Note in session.json what changed the board's saved parameters after the fact (`params
    save|rollback|reset`, a push of a new model, which removes them): run records keep what the
    board said when the run ended, and the report replays this log to say where they are now."""
    entry = {"action": action, "time": time.time(),
             "model_sha256": (board.info.get("model") or {}).get("sha256")}
    if reply and reply.get("from"):
        entry["from"] = reply["from"]
    # not setdefault: the log may be null (STATE lets it be, as the report reads it)
    session.state["params_log"] = (session.state.get("params_log") or []) + [entry]
    try:
        session.save()
    except WriteError as e:
        name = board.info.get("board") or "the board"
        if action == "push":
            what = (f"{name} holds the new model, which the session does not record: {e.fix} "
                    "and run push again to record it (it sends nothing)")
        else:
            what = (f"{name} did `params {action}`, which the session does not record (the "
                    f"report may say its runs' parameters are where they were): {e.fix}")
        raise e.with_context(what) from None


def push_not_logged(session, res):
    """Whether a push that found its model already on the board (`res` of push()) must still be
    logged: the session records another model, so the push that put this one there was not
    recorded (its session.json could not be written, or it was made from another folder) and
    the board dropped the recorded model's parameters since."""
    before = (session.state.get("model") or {}).get("sha256")
    return bool(res["skipped"] and before and before != res["sha256"])


def _json_default(v):
    """What json cannot write, as it can: bytes as hex (a reply may hold some where the PC reads
    nothing, and the run record keeps the reply), numpy numbers as numbers, else the str."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return str(v)


def _write_json(path, obj, indent=None):
    """Write `obj` to `path` whole or not at all: the text is made before the file is touched (a
    value json cannot write once stopped json.dump half-way through the .tmp), then written
    atomically (_files.atomic_write: a .tmp, fsync, rename; a failure leaves no .tmp)."""
    atomic_write(path, json.dumps(obj, indent=indent, default=_json_default).encode())


def model_meta(info):
    """The board's model (from INFO, checked by the link), or SessionError when it has none (a
    user error, status 2: the user pushes one)."""
    m = info.get("model")
    if not m:
        raise user_error("tinymp: the board has no model: run `tinymp push MODEL` first")
    if m.get("error") is not None:
        raise SessionError(f"tinymp: the model on the board is unusable: {m['error']}")
    return m


def slow_timeout(board):
    """Seconds to wait for a request whose duration is not known yet (commit, plan, first
    training step): the host runs the simulated board fast; a real board may take long."""
    return 4 * board.link.timeout if board.simulated else max(board.link.timeout, 60.0)


def agent_at_least(board, version):
    """Whether the board's agent (INFO's "agent") is `version` or later."""
    try:
        return int(board.info.get("agent")) >= version
    except (TypeError, ValueError):
        return False


def need_agent(board, version, what):
    """Refuse (status 2) what the board's agent is too old for: an older firmware's frozen agent
    would do something else with the request, not fail."""
    v = board.info.get("agent")
    if not agent_at_least(board, version):
        raise user_error(f"tinymp: {what} needs the board's agent version {version} or later; "
                         f"this board runs version {v} (flash a newer firmware)")


def refresh_info(board):
    board.info = board.request(P.INFO)
    if board.info.get("max_payload"):  # agent 10 takes larger frames once a model needs them
        board.link.max_payload = board.info["max_payload"]
    return board.info


def frame_room(board, sample_bytes, extra, what):
    """The board's largest frame payload, after refusing (status 2, before anything is sent)
    samples of which not even one fits a frame with `extra` bytes of request around it: the
    board would drop every such frame as too long, which the PC cannot tell from a damaged
    link."""
    maxp = board.link.max_payload or 4096
    if sample_bytes + extra > maxp:
        why = ("it takes one sample as far as a quarter of the heap its agent started with "
               "goes, at most 64 KB" if agent_at_least(board, 10) else
               f"its agent, version {board.info.get('agent')}, takes an eighth of the heap it "
               "started with; one of version 10 or later (a newer firmware) takes one sample as "
               "far as a quarter of it goes")
        raise user_error(f"tinymp: cannot {what}: one sample of the model is {sample_bytes:,} "
                         f"bytes, more than the board takes in one frame ({maxp - extra:,} "
                         f"bytes: {why})")
    return maxp


# --- push -----------------------------------------------------------------------------------

# the largest model file the commands read: far beyond any board's flash (the OpenMV Cam H7 has
# 2 MB), only a bound on what a mistaken path makes the PC read
MODEL_FILE_MAX = 256 << 20


def read_model(path):
    """(bytes, tinymp.Model) of a model file; SessionError(2) naming what is wrong."""
    import tinymp
    from .._files import read_regular
    if not os.path.exists(path):
        raise user_error(f"tinymp: no such model file: {path}")
    try:
        data = read_regular(path, MODEL_FILE_MAX, "a model file",
                            f"{MODEL_FILE_MAX:,} bytes: no microcontroller holds such a model")
    except OSError as e:
        raise user_error(f"tinymp: cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise user_error(f"tinymp: {e}") from None
    try:
        return data, tinymp.Model(data)
    except ValueError as e:
        fix = "; copy or convert the model again" if any(
            w in str(e) for w in ("truncated", "CRC-32")) else ""
        raise user_error(f"{e} (in {path}){fix}") from None


def check_fits(board, data, m):
    """Refuse before sending a byte what the board could not hold or run."""
    info = board.info
    name = info.get("board", "the board")
    limit = info.get("model_flash")
    if limit is not None and len(data) > limit:
        raise user_error(f"tinymp: the model ({len(data):,} bytes) does not fit the "
                         f"{limit:,} bytes of model flash of {name}")
    budget = info.get("arena_budget")
    if budget is not None and m.inference_arena_bytes > budget:
        raise user_error(f"tinymp: the model needs {m.inference_arena_bytes:,} bytes of RAM for "
                         f"one inference; {name} has {budget:,} bytes for the arena")


def push(board, data, show=True, chunk=None):
    """Send a model and commit it. Returns {sha256, bytes, seconds, resumed_from, skipped,
    romfs}; `romfs` says whether the board also holds it in ROMFS (romfs_text)."""
    sha = hashlib.sha256(data).hexdigest()
    cur = (board.info.get("model") or {}).get("sha256")
    if cur == sha:
        return {"sha256": sha, "bytes": len(data), "seconds": 0.0, "resumed_from": None,
                "skipped": True, "romfs": finish_romfs(board)}
    maxp = board.link.max_payload or 4096
    chunk = chunk or max(256, min(maxp - 64, 32768))
    name = board.info.get("board") or "the board"
    t0 = time.perf_counter()
    try:
        rep = board.request(P.PUSH_BEGIN, {"size": len(data), "sha256": sha})
    except BoardError as e:
        raise SessionError(f"tinymp: the board refused the model: {embedded(e.msg)}",
                           2 if e.code in ("too_big", "no_space") else 1) from None
    except KeyboardInterrupt:
        raise interrupted(f"tinymp: push interrupted (Ctrl-C) as it began: {name} keeps its "
                          "previous model; run push again") from None
    off = rep["offset"]
    if off > len(data):
        raise board.link.agent_error(f"replied offset {off} to PUSH_BEGIN, past the model's "
                                     f"{len(data)} bytes")
    start = off
    bar = progress(len(data), "push", "B", show, unit_scale=True)
    bar.update(off)
    mv = memoryview(data)
    try:
        while off < len(data):
            n = min(chunk, len(data) - off)
            rep = board.request(P.PUSH_DATA, {"offset": off, "data": mv[off:off + n]})
            new = rep["offset"]
            # each reply must move on, or this loop would send the same chunk for ever
            if new > len(data):
                raise board.link.agent_error(f"replied offset {new} to PUSH_DATA, past the "
                                             f"model's {len(data)} bytes")
            if new <= off:
                raise board.link.agent_error(f"did not advance past offset {off} of PUSH_DATA "
                                             f"(it replied offset {new})")
            bar.update(new - off)
            off = new
    except KeyboardInterrupt:
        # the board holds what it acknowledged and resumes from there; it commits nothing yet
        raise interrupted(f"tinymp: push interrupted (Ctrl-C) with at least {off:,} of "
                          f"{len(data):,} bytes on the board: {name} keeps its previous model; "
                          "run push again to resume") from None
    finally:
        bar.close()
    try:
        rep = board.request(P.PUSH_COMMIT, timeout=slow_timeout(board))
        if rep["sha256"] != sha or rep["bytes"] != len(data):
            raise board.link.agent_error(
                f"replied to PUSH_COMMIT with {rep['bytes']} bytes of sha256 "
                f"{rep['sha256'][:12]}; the model sent is {len(data)} bytes of {sha[:12]}")
    except BoardError as e:
        raise SessionError(f"tinymp: the board did not commit the model: {embedded(e.msg)}",
                           2 if e.code in ("too_big", "bad_model") else 1) from None
    except LinkError as e:
        # the commit was asked for, and the board commits before it replies: a reply that is bad,
        # or lost with the link, leaves either model on the board (not "its previous model")
        bad = isinstance(e, ReplyError)  # the link works: a SessionError, and BYE
        raise (SessionError if bad else WordedLinkError)(
            f"tinymp: push {'stopped' if bad else 'interrupted'} at the commit: {embedded(e)}; "
            f"{_commit_unknown(name, sha)}") from None
    except KeyboardInterrupt:  # as the lost link: the request may have reached the board
        raise interrupted(f"tinymp: push interrupted (Ctrl-C) at the commit: "
                          f"{_commit_unknown(name, sha)}") from None
    dt = time.perf_counter() - t0
    again = "run push again to see where the board uses it from (it sends nothing)"
    try:
        refresh_info(board)
    except LinkError as e:
        raise (SessionError if isinstance(e, ReplyError) else WordedLinkError)(
            f"tinymp: push: {name} committed the model (sha256 {sha[:12]}), then: {embedded(e)}; "
            f"{again}") from None
    except KeyboardInterrupt:
        raise interrupted(f"tinymp: push interrupted (Ctrl-C) after {name} committed the model "
                          f"(sha256 {sha[:12]}): {again}") from None
    return {"sha256": rep["sha256"], "bytes": rep["bytes"], "seconds": dt,
            "resumed_from": start or None, "skipped": False, "romfs": rep.get("romfs")}


# what INFO's romfs_state "state" means, when the model is not in ROMFS
ROMFS_STATES = {
    "absent": "not present",
    "unwritable": "present, not writable by the agent on this board",
    "empty": "not written yet; run push again",
    "stale": "holds an earlier model; run push again",
    "interrupted": "a write was cut short; run push again",
    "failed": "the last write failed; run push again",
    "too_big": "the model does not fit the ROMFS segment",
    "foreign": "the segment holds other files, left as they are",
}


def _commit_unknown(name, sha):
    """What a push whose PUSH_COMMIT went unanswered says of the model on the board."""
    return (f"whether {name} committed the model is not known: `tinymp status` shows the model "
            f"it holds (this one is sha256 {sha[:12]}); run push again, which sends nothing when "
            "the board holds it, and else resumes the push")


def _romfs_unknown(board):
    """What a push whose PUSH_ROMFS went unanswered says of the board's ROMFS copy."""
    name = board.info.get("board") or "the board"
    return (f"{name} holds the model on its filesystem; whether the ROMFS write finished is not "
            "known: `tinymp status` shows where the board uses the model from; run push again, "
            "which finishes the write if it is not done")


def finish_romfs(board):
    """For a model the board already has: the ROMFS part of a push. When the board says an
    earlier ROMFS write was cut short (or never ran), write it now (PUSH_ROMFS)."""
    st = board.info.get("romfs_state")
    if st is None:
        return {"present": bool(board.info.get("romfs")), "in_place": False,
                "state": "unwritable" if board.info.get("romfs") else "absent", "warning": None}
    if st.get("retry"):
        try:
            rep = board.request(P.PUSH_ROMFS, timeout=slow_timeout(board))
            refresh_info(board)
        except BoardError as e:
            raise SessionError("tinymp: the board did not write the model into ROMFS: "
                               f"{embedded(e.msg)}")
        except LinkError as e:
            # the model is committed (this is a model the board holds); the board writes ROMFS
            # before it replies, so how far that write got is not known
            raise (SessionError if isinstance(e, ReplyError) else WordedLinkError)(
                f"tinymp: push: writing the model into ROMFS: {embedded(e)}; "
                f"{_romfs_unknown(board)}") from None
        except KeyboardInterrupt:
            raise interrupted("tinymp: push interrupted (Ctrl-C) while the board wrote the model "
                              f"into ROMFS: {_romfs_unknown(board)}") from None
        return rep
    return {"present": True, "in_place": bool(st.get("serving")), "state": st.get("state"),
            "warning": st.get("note"), "segment_bytes": st.get("bytes")}


def romfs_text(r):
    """One clause: where the committed model is used from, ROMFS (in place) or the filesystem,
    and why not ROMFS."""
    if not r or not r.get("present"):
        return "committed to the filesystem (ROMFS: not present)"
    if r.get("in_place"):
        return "committed to ROMFS (in place)"
    if r.get("warning"):
        return f"committed to the filesystem (warning: {r['warning']})"
    why = ROMFS_STATES.get(r.get("state"), r.get("state") or "not used")
    return f"committed to the filesystem (ROMFS: {why})"


def romfs_board_text(info):
    """The board's ROMFS in a few words, for the board line."""
    st = info.get("romfs_state")
    if st:
        return f"ROMFS {st['bytes']:,} B"
    return "ROMFS (not writable by the agent)" if info.get("romfs") else "no ROMFS"


def push_link_error(e, board_name="the board"):
    """The line of a push stopped before its commit was asked for (push() words the failures of
    the commit and of the ROMFS write itself, WordedLinkError: after those the board may hold the
    new model)."""
    if isinstance(e, WordedLinkError):
        return e
    if isinstance(e, ReplyError):  # before the commit; sending again would meet the same agent
        return SessionError(f"tinymp: push stopped: {embedded(e)}; {board_name} keeps its "
                            "previous model")
    return SessionError(f"tinymp: push interrupted: {embedded(e)}; {board_name} keeps its "
                        "previous model; run push again to resume")


# --- samples --------------------------------------------------------------------------------

def open_dataset(session, meta, board_name, path=None):
    path = path or session.dataset_dir
    try:
        return Dataset.open_or_create(
            path, shape=meta["input_shape"], scale=meta["input_scale"],
            zero_point=meta["input_zero_point"], num_classes=meta["num_classes"],
            class_names=meta.get("class_names"), board=board_name,
            model_sha256=meta.get("sha256"))
    except DatasetError as e:
        raise user_error(str(e)) from None


def _store_plan(st, uid, sample_bytes, n):
    """From a SAMPLES_STATUS reply (or INFO's samples): (whether the board's store starts again
    for a dataset `uid` of `n` samples of `sample_bytes` (uid None: one not made yet), how many
    of its samples the store holds)."""
    have = st["last_id"] + 1
    again = uid is None or st["dataset"] != uid or st.get("bytes") != sample_bytes or have > n
    return again, 0 if again else have


def room_for(st, sample_bytes, again=False):
    """(how many more samples of `sample_bytes` the board's filesystem has room for, the bytes
    counted in words), from its SAMPLES_STATUS reply or INFO's samples (agent 9 on; (None, None)
    when the board does not say): its free bytes, plus what a new store frees when one replaces
    it (`again`), over the bytes a stored sample takes. An estimate from above (a filesystem
    keeps some blocks for itself): more than this surely does not fit."""
    if st.get("free") is None or st.get("record_extra") is None:
        return None, None
    freed = (st.get("store_bytes") or 0) if again else 0
    words = f"{st['free']:,} bytes free" + \
        (f" and {freed:,} once the board's samples of another dataset go" if freed else "")
    return (st["free"] + freed) // (sample_bytes + st["record_extra"]), words


class NoRoom(BoardError):
    """The board said it has no room for the samples a command would store, before any was sent
    or captured (`board_full` takes it as the board's own no_space)."""

    def __init__(self, msg, room, counted, sending):
        super().__init__("no_space", msg)
        self.room, self.counted, self.sending = room, counted, sending


def sync_samples(board, ds, show=True, then=0):
    """Make the board's sample store hold every sample of `ds` (resumes where it stopped).
    Returns how many were sent. `then`: how many more the caller stores after these (captures);
    when the board says it has no room for them all, nothing is sent: NoRoom."""
    st = board.request(P.SAMPLES_STATUS)
    again, have = _store_plan(st, ds.uid, ds.sample_bytes, len(ds))
    todo = len(ds) - have
    room, counted = room_for(st, ds.sample_bytes, again)
    if room is not None and todo + then > room:
        raise NoRoom(f"the board's filesystem has room for about {plural(room, 'more sample')} "
                     f"({counted}), not the {todo:,} to send; nothing was sent",
                     room, counted, todo)
    if again:
        board.request(P.SAMPLES_CLEAR)
    if todo <= 0:
        return 0
    maxp = frame_room(board, ds.sample_bytes, 128 + 9, "send the samples")
    per = max(1, min(64, (maxp - 128) // (ds.sample_bytes + 9)))  # 9: a label's encoding
    bar = progress(todo, "send samples", "sample", show)
    labels = ds.labels
    i = have
    while i < len(ds):
        n = min(per, len(ds) - i)
        x = ds.samples(i, i + n)
        rep = board.request(P.SAMPLES_PUT, {"dataset": ds.uid, "first": i,
                                            "labels": [int(v) for v in labels[i:i + n]],
                                            "data": x.tobytes()})
        done = rep["last_id"] + 1
        # each reply must move on, or this loop would send the same samples for ever
        if done <= i:
            bar.close()
            raise board.link.agent_error(f"did not advance past sample {i} of SAMPLES_PUT (it "
                                         f"replied last_id {rep['last_id']})")
        if done > i + n:
            bar.close()
            raise board.link.agent_error(f"replied last_id {rep['last_id']} to SAMPLES_PUT of "
                                         f"samples {i}..{i + n - 1}")
        bar.update(done - i)
        i = done
    bar.close()
    return todo


def board_full(e):
    """True for the board's refusal of a sample it has no room to store (SAMPLES_PUT,
    CAPTURE_KEEP: error no_space, whose message says how many samples the board holds)."""
    return isinstance(e, BoardError) and e.code == "no_space"


MAKE_ROOM = "make room on the board's filesystem"


def _check_label(ds, label):
    if not 0 <= label < ds.num_classes:
        raise user_error(f"tinymp: label {label} is out of range 0..{ds.num_classes - 1}")


def capture_need(ds, labels, count):
    """How many captures make `ds` hold `count` samples of each of `labels`."""
    for lab in labels:
        _check_label(ds, lab)
    have = ds.counts()
    return sum(max(0, count - int(have[lab])) for lab in labels)


def sync_for_captures(board, ds, need, asked, of_what, knob, show=True):
    """sync_samples before `need` captures: when the board has clearly no room for them and the
    dataset's samples it lacks, nothing is sent or captured and the user is told that `asked`
    (e.g. "--count 50") needs them (`of_what`: "of label 3"), and to give a smaller `knob`."""
    try:
        sync_samples(board, ds, show, then=need)
    except NoRoom as e:
        if not need:
            raise  # the dataset's own samples do not fit: as when they are sent
        raise user_error(
            f"tinymp: {asked} needs {plural(need, 'more sample')} {of_what} "
            + (f"(and the {e.sending} the board lacks of the dataset) " if e.sending else "")
            + f"on the board, whose filesystem has room for about {e.room:,} ({e.counted}): "
            f"give a smaller {knob} or make room on the board's filesystem; nothing was sent "
            "or captured") from None


def check_sim_camera(board, shape):
    """Refuse (status 2) captures on the simulated board for a model of `shape` whose inputs are
    not grayscale: its scene is grayscale images, and the agent's RGB565 request would fail at
    every capture."""
    if board.sim is not None and shape and shape[2] != 1:
        raise user_error(f"tinymp: the simulated board's camera gives grayscale frames and the "
                         f"model takes {shape[2]} channels ({'x'.join(map(str, shape))}); "
                         "collect with --from FILE")


def collect_capture(board, ds, label, count, show=True, board_name=None, synced=False):
    """Capture with the board's camera until `ds` holds `count` samples of `label`. Each sample is
    on the PC's disk before the board is told to keep it. Returns {"added", "total"}. `synced`:
    the caller made the board's store hold the dataset and checked the room for these captures
    (sync_for_captures)."""
    _check_label(ds, label)
    if not board.info.get("camera"):
        raise user_error(f"tinymp: {board.info.get('board')} has no camera; collect with --from FILE")
    check_sim_camera(board, (board.info.get("model") or {}).get("input_shape"))
    added = 0
    bar = None
    try:
        todo = max(0, count - int(ds.counts()[label]))
        if not synced:
            sync_for_captures(board, ds, todo, f"--count {count}", f"of label {label}",
                              "--count", show)
        bar = progress(todo, f"capture label {label}", "sample", show)
        for _ in range(todo):
            i = len(ds)
            if board.sim is not None:
                board.sim.show(label)
            rep = board.request(P.CAPTURE, {"label": label, "id": i, "dataset": ds.uid})
            if len(rep["data"]) != ds.sample_bytes:
                raise board.link.agent_error(
                    f"sent a bad CAPTURE reply: 'data' holds {len(rep['data'])} bytes; a sample "
                    f"of the model is {ds.sample_bytes}")
            try:
                ds.append(rep["data"], label, source="capture", board=board_name)
                added += 1
            except OSError as e:
                why = "the disk is full" if disk_full(e) else (e.strerror or str(e))
                raise SessionError(
                    f"tinymp: cannot save sample {i} in {ds.path}: {why}; "
                    f"{plural(added, 'new sample')} saved ({len(ds)} in all), none lost; make room "
                    "and run collect again to resume") from None
            board.request(P.CAPTURE_KEEP, {"id": i})
            bar.update()
    except KeyboardInterrupt:
        raise interrupted(f"tinymp: collect interrupted (Ctrl-C): {plural(added, 'new sample')} "
                          f"saved ({len(ds)} in {ds.path}), none lost; run collect again to "
                          "resume") from None
    except (LinkError, BoardError) as e:
        msg = embedded(e.msg if isinstance(e, BoardError) else e)
        kept = f"{plural(added, 'new sample')} saved ({len(ds)} in {ds.path}), none lost"
        if board_full(e):
            raise SessionError(f"tinymp: collect stopped: {msg}; {kept}; {MAKE_ROOM} and run "
                               "collect again to send the rest") from None
        raise SessionError(f"tinymp: collect interrupted: {msg}; {kept}; run collect again to "
                           "resume") from None
    finally:
        if bar is not None:
            bar.close()
        if added:
            _manifest(ds)
    return {"added": added, "total": len(ds), "label_total": int(ds.counts()[label])}


def _manifest(ds):
    try:
        ds.write_manifest()
    except OSError:
        pass  # the log is the truth; the summary is refreshed next time


def import_samples(ds, x, y, sources, board_name=None, show=True):
    """Append samples not already in `ds` (by source id). Returns how many were added."""
    # its own samples count as there: `collect --from SESSION/dataset` adds nothing
    seen = ds.sources() | {f"{ds.uid}:{i}" for i in range(len(ds))}
    bar = progress(len(y), "save samples", "sample", show)
    added = 0
    try:
        for xi, yi, src in zip(x, y, sources):
            if src not in seen:
                try:
                    ds.append(xi.tobytes(), int(yi), source=src, board=board_name)
                except OSError as e:
                    why = "the disk is full" if disk_full(e) else (e.strerror or str(e))
                    raise SessionError(
                        f"tinymp: cannot save a sample in {ds.path}: {why}; "
                        f"{plural(added, 'new sample')} saved ({len(ds)} in all), none lost; "
                        "make room and run collect again to resume") from None
                seen.add(src)
                added += 1
            bar.update()
    finally:
        bar.close()
        _manifest(ds)
    return added


# --- train ----------------------------------------------------------------------------------

# the options the board plans with (the agent's _plan_options passes these to plan()), then the
# trainer's and the run's
PLAN_KEYS = ("method", "budget", "r", "ratio", "storage", "momentum", "n_bias", "macs")
TRAIN_KEYS = PLAN_KEYS + ("lr", "seed", "period", "fresh", "track_accuracy", "keep_features")
# the methods a session trains: the engine's (docs/API.md) but 'sparse', whose plan needs a list
# of layers (layers=[...]) that neither the command line nor a session config can give
TRAIN_METHODS = ("none", "last", "bias", "tinytrain", "full", "tinymp")

# What the board's `plan()` and `Trainer()` accept, from the PC build of the binding (its checks
# read the same table; the board's are the same, tests/device/train_errors.py), checked here as
# well so that a bad value stops before anything is sent or written; steps and epochs are this
# tool's own: {name: (kind, low, high, low excluded)}
def _train_ranges():
    from tinymp import _tinymp
    kinds = {"int": int, "float": float}
    out = {k: (kinds[kind], lo, hi, lo_open)
           for k, (kind, lo, hi, lo_open) in _tinymp._option_ranges().items() if k in TRAIN_KEYS}
    out["steps"] = (int, 1, 1 << 31, False)
    out["epochs"] = (int, 1, 1 << 20, False)
    return out


def check_train_options(opts, name=lambda k: "--" + k.replace("_", "-")):
    """Raise a user error (exit 2) for the first training option (TRAIN_KEYS, steps, epochs) of
    the wrong type or out of the board's range; None values are the defaults. `name` spells an
    option as the user wrote it."""
    ranges = _train_ranges()
    if opts.get("steps") is not None and opts.get("epochs") is not None:
        a, b = name("steps"), name("epochs")
        where, _, a = a.rpartition(": ")  # a config's "FILE: train.steps": FILE said once
        b = b[len(where) + 2:] if where and b.startswith(where + ": ") else b
        raise user_error(f"tinymp: {where + ': ' if where else ''}give {a} or {b}, not both")
    method = opts.get("method") or DEFAULT_METHOD
    ratio = opts.get("ratio")
    if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and ratio != 1 and \
            method in TRAIN_METHODS and method not in RATIO_METHODS:
        # the board's planner refuses it too, but after the samples went to the board
        raise user_error(f"tinymp: {name('ratio')} is for methods {' and '.join(RATIO_METHODS)}: "
                         f"method {method} trains every channel of its layers")
    for k, v in opts.items():
        if v is None:
            continue
        if k == "method":
            if v == "sparse":
                raise user_error(f"tinymp: {name(k)}: a session cannot train method 'sparse', "
                                 "which needs a list of layers (m.plan(method='sparse', layers="
                                 "[...]) in Python); give one of " + ", ".join(TRAIN_METHODS))
            if v not in TRAIN_METHODS:
                raise user_error(f"tinymp: {name(k)} must be one of {', '.join(TRAIN_METHODS)}, "
                                 f"got {v!r}")
        elif k == "storage":
            if v not in ("int8", "fp32"):
                raise user_error(f"tinymp: {name(k)} must be 'int8' or 'fp32', got {v!r}")
        elif k in ("fresh", "track_accuracy", "save", "keep_features"):
            if not isinstance(v, bool):
                raise user_error(f"tinymp: {name(k)} must be true or false, got {v!r}")
        elif k in ranges:
            kind, lo, hi, open_lo = ranges[k]
            ok_type = isinstance(v, int) if kind is int else isinstance(v, (int, float))
            if isinstance(v, bool) or not ok_type:
                raise user_error(f"tinymp: {name(k)} must be {'an integer' if kind is int else 'a number'}"
                                 f", got {v!r}")
            # a number is checked as the float32 the board's engine gets (1e-50 is its 0)
            x, lo32, hi32 = (v, lo, hi) if kind is int else map(_float32, (v, lo, hi))
            if not ((lo32 < x if open_lo else lo32 <= x) and x <= hi32):  # NaN fails both
                span = f"{lo}, {hi}" if kind is int else f"{lo:g}, {hi:g}"
                what = f"{'(' if open_lo else '['}{span}]"
                in64 = (lo < v if open_lo else lo <= v) and v <= hi  # then the float32 is not
                as32 = f" ({x!r} as a 32-bit float)" if kind is float and in64 else ""
                raise user_error(f"tinymp: {name(k)} must be in {what}, got {v!r}{as32}")


_FLT_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]


def _float32(v):
    """The float32 nearest `v`, an infinity beyond its largest finite value, as the bindings'
    TMP_OPT_F32 (a value just above FLT_MAX is an infinity there, where rounding would give
    FLT_MAX)."""
    try:
        x = float(v)
    except OverflowError:  # an int beyond any double
        return math.inf if v > 0 else -math.inf
    if x > _FLT_MAX or x < -_FLT_MAX:
        return math.copysign(math.inf, x)
    return struct.unpack("f", struct.pack("f", x))[0]


def check_budget(board, budget):
    """Refuse (status 2) a training budget (bytes; None: the board's) above the board's arena
    budget, before anything is sent: the board would plan within its own budget instead, which
    is not the run the user asked for."""
    limit = board.info.get("arena_budget")
    if budget is None or limit is None or budget <= limit:
        return
    name = board.info.get("board") or "the board"
    raise user_error(f"tinymp: a training budget of {budget / 1024:,.10g} KB ({budget:,} bytes) is "
                     f"more than the {limit / 1024:,.10g} KB ({limit:,} bytes) arena budget of "
                     f"{name}: give at most {limit / 1024:,.10g} KB, or no budget to plan within "
                     "the board's")


def train(board, ds, options, steps=None, epochs=None, save=True, show=True, session=None):
    """Train on the board over its sample store (synced from `ds` first). Returns the run record
    (options, plan, events, report)."""
    check_budget(board, options.get("budget"))
    if options.get("keep_features"):
        # an older agent ignores the option: the run would keep nothing, silently
        need_agent(board, 7, "keeping the samples' features between runs (--keep-features)")
    try:
        sync_samples(board, ds, show)
    except KeyboardInterrupt:
        raise interrupted(f"tinymp: training interrupted (Ctrl-C) while the dataset's samples "
                          f"were sent: all {len(ds)} are saved in {ds.path}; the board keeps "
                          "its last saved parameters; no run recorded") from None
    n = len(ds)
    if n == 0:
        raise user_error("tinymp: no samples to train on: run `tinymp collect` first")
    if steps is None:
        steps = (epochs or 1) * n
    opts = {k: v for k, v in options.items() if k in TRAIN_KEYS and v is not None}
    if "lr" not in opts and not agent_at_least(board, 6):
        # an agent before 6 trains at 0.01 when no rate is named, whatever the method: name the
        # method's own, as this tool's engine has it (the run's record names it as given)
        from .. import _tinymp
        opts["lr"] = float("%.7g" % _tinymp._method_lr(opts.get("method") or DEFAULT_METHOD))
    opts["steps"] = int(steps)
    # the run's name: the board keeps it in the record of the parameters it saves (or keeps as
    # the trial), so `tinymp status` finds the run record they came from, even when the link
    # went before the run was recorded (an agent ignores options it does not plan with)
    opts["run"] = os.urandom(6).hex()
    # each event says whether its step started from kept features (agent 5; older ones ignore it)
    opts["mark_cached"] = True
    events = []
    bars = []
    try:
        start = _train_steps(board, opts, steps, n, events, bars, show)
    except KeyboardInterrupt:
        for bar in bars:
            bar.close()
        raise interrupted(f"tinymp: training interrupted (Ctrl-C) after "
                          f"{plural(len(events), 'step')} of {steps:,}: the board keeps its last "
                          "saved parameters; no run recorded") from None
    try:
        end = board.request(P.TRAIN_END, {"save": bool(save)}, timeout=slow_timeout(board))
    except KeyboardInterrupt:
        raise interrupted(f"tinymp: training interrupted (Ctrl-C) at its end: "
                          f"{_end_unknown(opts, save)}; no run recorded: train again to record "
                          "one") from None
    except ReplyError as e:
        # the board ended the run before it replied: not "keeps its last saved parameters"
        kept = ("saved this run's parameters (`tinymp params rollback` brings the earlier ones "
                "back)" if save else "kept this run as the trial run")
        raise SessionError(f"tinymp: training ended with a bad reply: {embedded(e)}; the board "
                           f"may have {kept}; no run recorded") from None
    except LinkError as e:
        # the link failed with TRAIN_END asked for: the board may have ended the run (it saves
        # before it replies) or never got the request, so neither "kept" nor "saved" is known;
        # and no rollback advice, which would undo the earlier parameters if it did not save
        raise WordedLinkError(f"tinymp: training interrupted at its end: {embedded(e)}; "
                              f"{_end_unknown(opts, save)}; no run recorded: train again to "
                              "record one") from None
    # the columns this board's agent sent (before agent 5: no "cached"); a newer agent's extra
    # columns are not kept, as the record could not name them
    width = min([len(P.EVENT_FIELDS)] + [len(e) for e in events])
    events = [e[:width] for e in events]
    rec = {"kind": "train", "time": time.time(), "options": opts, "start": start,
           "fields": list(P.EVENT_FIELDS[:width]), "events": events, "end": end,
           "board": _board_summary(board), "dataset": ds.path, "samples": n}
    if session is not None:
        try:
            rec["file"] = session.new_run("train", rec)
        except WriteError as e:
            kept = ("the board saved this run's parameters" if end.get("saved") else
                    "the board kept this run as the trial run, its saved parameters as they were"
                    if end.get("trial") else "the board keeps its last saved parameters")
            raise e.with_context(f"{kept}, but the run is not recorded (the report does not "
                                 f"show it): {e.fix} before training again") from None
    return rec


def _train_steps(board, opts, steps, n, events, bars, show):
    """TRAIN_START, then TRAIN_STEPS until `steps` events are in `events` (the progress bar in
    `bars`, for the caller to close when Ctrl-C stops this). Returns TRAIN_START's reply."""
    try:
        start = board.request(P.TRAIN_START, opts, timeout=slow_timeout(board))
    except BoardError as e:
        code = 2 if e.code in ("budget", "bad_request") else 1
        raise SessionError(f"tinymp: the board cannot train: {embedded(e.msg)}", code) from None
    bar = progress(steps, "train", "step", show)
    bars.append(bar)
    per_step = None
    k = 1
    window = max(10, min(n, 100))
    while len(events) < steps:
        t0 = time.perf_counter()
        # a lost frame costs one timeout: keep it near the expected duration
        wait = slow_timeout(board) if per_step is None else board.link.timeout + 3 * per_step * k
        rep = board.request(P.TRAIN_STEPS, {"n": k}, timeout=wait)
        dt = time.perf_counter() - t0
        got = rep["events"]
        # the board runs the steps asked for, at most the `steps` TRAIN_START announced: fewer
        # (none) before that would leave a short run, more a run of steps not asked for
        want = min(k, steps - len(events))
        if not got or len(got) > want:
            bar.close()
            raise board.link.agent_error(f"answered TRAIN_STEPS n={k} with {len(got)} events, "
                                         f"after {len(events)} of {steps} steps")
        events.extend(got)
        per_step = dt / len(got)
        k = int(max(1, min(64, 0.2 / max(per_step, 1e-6))))
        last = events[-window:]
        acc = sum(1 for e in last if e[3] == e[2]) / len(last)
        loss = sum(e[4] for e in last) / len(last)
        bar.update(len(got))
        bar.set_postfix_str(f"loss {loss:.3f} acc {acc * 100:.0f}%")
    bar.close()
    return start


def _end_unknown(opts, save):
    """What is known of a run whose TRAIN_END was asked for and not answered: the board may have
    ended it (it saves before it replies) or never got the request. `tinymp status` shows the
    record the board keeps of its saved (trial) run, its options and the board's clock when it
    ended, to set against this run's."""
    run = f"{options_text(opts)}, run {opts['run']}"
    if save:
        return ("whether the board saved this run's parameters is not known (it saves before it "
                "replies): `tinymp status` names the run of the saved parameters; this one is "
                f"{run}")
    return ("whether the board kept this run as the trial run is not known (it keeps it before "
            "it replies); its saved parameters are as they were: `tinymp status` names the "
            f"trial run it holds, if any; this one is {run}")


def _board_summary(board):
    i = board.info
    keys = ("board", "simulated", "implementation", "firmware", "tinymp", "clock", "arena_budget",
            "mem_free", "mem_total", "model_flash", "romfs", "romfs_state", "camera")
    out = {k: i.get(k) for k in keys}
    m = i.get("model") or {}
    out["model_bytes"] = m.get("bytes")
    out["model_served_from"] = m.get("served_from")
    out["model_sha256"] = m.get("sha256")
    out["inference_arena_bytes"] = m.get("inference_arena_bytes")
    return out


# --- evaluate -------------------------------------------------------------------------------

def evaluate(board, x, y, params="personalised", show=True, num_classes=None, stage=None,
             session=None, source=None):
    """Predictions of the board on samples x (int8 [N, H, W, C]) against labels y (N integers,
    classes of the model). Samples and labels that do not fit each other or the board's model
    are a user error (SessionError, status 2) before anything is sent."""
    x, y = _check_eval_arrays(x, y, board.info.get("model") or {}, num_classes)
    size = int(np.prod(x.shape[1:]))
    maxp = frame_room(board, size, 64, "evaluate")
    most = max(1, min(128, (maxp - 64) // size))
    preds = []
    used = None
    us = 0
    per_sample = None
    bar = progress(len(y), f"evaluate ({params})", "sample", show)
    classes = num_classes or (board.info.get("model") or {}).get("num_classes")
    i = 0
    while i < len(y):
        # the first batch is small and measures the board; then batches of about 0.2 s
        per = min(most, 4 if per_sample is None else max(1, int(0.2 / max(per_sample, 1e-6))))
        wait = slow_timeout(board) if per_sample is None else \
            board.link.timeout + 3 * per_sample * per
        t0 = time.perf_counter()
        batch = x[i:i + per]
        rep = board.request(P.PREDICT, {"data": batch.tobytes(), "params": params},
                            timeout=wait)
        n = len(rep["pred"])
        # one prediction per sample sent, each a class of the model: no other count moves this
        # loop on (none would repeat the batch for ever)
        if n != len(batch):
            bar.close()
            raise board.link.agent_error(f"answered PREDICT of {len(batch)} samples with {n} "
                                         "predictions")
        if classes and max(rep["pred"]) >= classes:
            bar.close()
            raise board.link.agent_error(f"predicted class {max(rep['pred'])} in its PREDICT "
                                         f"reply; the model has {classes} classes")
        per_sample = (time.perf_counter() - t0) / max(1, n)
        preds.extend(rep["pred"])
        used = rep["params"]
        us += rep["us"]
        bar.update(n)
        i += n
    bar.close()
    preds = np.array(preds, dtype=np.int64)
    nc = num_classes or int(max(y.max(), preds.max()) + 1)
    conf = np.zeros((nc, nc), dtype=np.int64)
    np.add.at(conf, (y, preds), 1)
    rec = {"kind": "eval", "time": time.time(), "n": int(len(y)),
           "accuracy": float((preds == y).mean()) if len(y) else 0.0,
           "params": used, "asked": params, "stage": stage, "confusion": conf.tolist(),
           "predict_us_per_sample": us / max(1, len(y)), "source": source,
           "data_sha256": data_sha256(x, y), "board": _board_summary(board)}
    if session is not None:
        try:
            rec["file"] = session.new_run("eval", rec)
        except WriteError as e:
            raise e.with_context(f"accuracy {rec['accuracy'] * 100:.1f}% ({used} parameters) on "
                                 f"{rec['n']} samples, not recorded: {e.fix} and run eval "
                                 "again to record it") from None
    return rec


def _check_eval_arrays(x, y, meta, num_classes=None):
    """(x as contiguous int8, y as int64) after checking them: the loop of evaluate() moves on by
    the predictions of each batch, so fewer samples than labels sent empty batches for ever, and
    a label past the classes or a sample of another size broke it later with no clear line."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2:
        raise user_error(f"tinymp: evaluate: the samples must be an array of samples [N, H, W, "
                         f"C], got shape {x.shape}")
    if y.ndim != 1:
        raise user_error(f"tinymp: evaluate: the labels must be a list of N integers, got shape "
                         f"{y.shape}")
    if len(x) != len(y):
        raise user_error(f"tinymp: evaluate: {len(x)} samples and {len(y)} labels: give one "
                         "label per sample")
    if not len(y):
        raise user_error("tinymp: evaluate: no samples to evaluate on")
    if not np.issubdtype(y.dtype, np.integer):
        raise user_error(f"tinymp: evaluate: the labels must be integers, got {y.dtype}")
    y = y.astype(np.int64)
    classes = num_classes or meta.get("num_classes")
    if y.min() < 0 or (classes and y.max() >= classes):
        bad = int(y.min() if y.min() < 0 else y.max())
        raise user_error(f"tinymp: evaluate: label {bad} is not a class of the model"
                         + (f" (0..{classes - 1})" if classes else ""))
    shape = meta.get("input_shape")
    if shape and int(np.prod(x.shape[1:])) != int(np.prod(shape)):
        raise user_error(f"tinymp: evaluate: samples of shape {list(x.shape[1:])}; the board's "
                         f"model takes {list(shape)}")
    return np.ascontiguousarray(x, dtype=np.int8), y


def data_sha256(x, y):
    """SHA-256 of samples and labels: the report pairs a before and an after eval only when they
    saw the same samples (a source's name says nothing of what it held then)."""
    h = hashlib.sha256(np.ascontiguousarray(x, dtype=np.int8).tobytes())
    h.update(np.asarray(y, dtype="<i8").tobytes())
    return h.hexdigest()


def eval_data(session, meta, path=None, dataset=None):
    """(x, y, description) to evaluate on: `path` (a dataset folder or .npz; `dataset`: that
    folder as check_samples opened it), else the session's eval/ folder, else its dataset/ (then
    it is training accuracy, and says so)."""
    shape, nc = meta["input_shape"], meta["num_classes"]
    if path:
        try:
            x, y, _ = load_samples(path, shape, meta["input_scale"], meta["input_zero_point"], nc,
                                   dataset=dataset)
        except DatasetError as e:
            raise user_error(str(e)) from None
        return x, y, path
    for d, what in ((session.eval_dir, "held-out samples"), (session.dataset_dir, "training samples")):
        if os.path.exists(os.path.join(d, "manifest.json")):
            try:
                ds = Dataset.open(d)
                ds.check_compatible(shape, nc, meta["input_scale"], meta["input_zero_point"])
            except DatasetError as e:
                raise user_error(str(e)) from None
            if len(ds):
                x, y = ds.arrays()
                return x, y, f"{d} ({what})"
    raise user_error("tinymp: nothing to evaluate on: give --data FILE.npz|DIR, or collect "
                     "with --eval first")


# --- status ---------------------------------------------------------------------------------

# A run record's time is the board's clock (time.time()) when the run ended: CPython and
# MicroPython's unix port count it from 1970, its embedded ports from 2000-01-01, and a board
# whose clock was never set from its power-up (or its RTC's default date). It is shown as a date
# only when it is one, from either epoch, between CLOCK_SET and about now.
EPOCH_2000 = 946684800
CLOCK_SET = 1500000000  # 2017-07-14


def clock_text(t, simulated, now=None):
    """(ISO-8601 UTC or None, words) of the time `t` a record on the board was written: the
    simulated board's clock is this PC's; a board's is shown as a date only when it is one."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        return None, "at a time not recorded"
    now = time.time() if now is None else now
    for off in (0,) if simulated else (0, EPOCH_2000):
        if not simulated and not CLOCK_SET <= t + off <= now + 2 * 86400:
            continue
        try:
            when = datetime.datetime.fromtimestamp(t + off, datetime.timezone.utc)
        except (OverflowError, OSError, ValueError):
            break
        iso = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        if simulated:
            return iso, when.astimezone().strftime("%Y-%m-%d %H:%M:%S") + " (this PC's clock)"
        return iso, when.strftime("%Y-%m-%d %H:%M:%S") + " UTC (the board's clock)"
    return None, f"at a time the board's clock does not tell (it reads {t:.0f} s, not a date)"


def options_text(o):
    """A run record's options in a few words: 'method tinymp, 200 steps (lr 0.01, seed 1)'."""
    out = f"method {o.get('method') or DEFAULT_METHOD + ' (the default)'}"
    if o.get("steps") is not None:
        out += f", {o['steps']:,} step{'s' if o['steps'] != 1 else ''}"
    extra = []
    for k in ("lr", "seed", "budget", "r", "ratio", "storage", "momentum", "period"):
        v = o.get(k)
        if v is None:
            continue
        extra.append(f"budget {v:,} B" if k == "budget" else
                     f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}")
    if o.get("fresh"):
        extra.append("started from the pretrained weights")
    return out + (f" ({', '.join(extra)})" if extra else "")


def _run_status(rec, sha, simulated, records):
    """A saved or trial run's record from INFO (checked: protocol.RUN_RECORD), for status;
    `records`: the session's train run records by their run name (commands.train)."""
    o = rec.get("options")
    iso, when = clock_text(rec.get("time"), simulated)
    run = o.get("run") if o is not None else None
    return {"options": o, "method": (o.get("method") or DEFAULT_METHOD) if o is not None else None,
            "steps": o.get("steps") if o is not None else None,
            "model_sha256": rec.get("model"),
            "for_model": None if rec.get("model") is None or sha is None else rec["model"] == sha,
            "time": rec.get("time"), "ended_utc": iso, "ended": when,
            # the run's name (None: trained from a tinymp that gave none) and its record here
            "run": run, "run_file": records.get(run) if run is not None else None}


def _train_records(session):
    """{run name: run record file} of the session's train runs; status reads them only to name
    the runs, so a record it cannot read (which `report` names) is left out."""
    out = {}
    for rec in session.runs("train", skip_damaged=True):
        o = rec.get("options")
        run = o.get("run") if isinstance(o, dict) else None
        if isinstance(run, str):
            out[run] = rec["file"]
    return out


def _session_dataset(path, model=None):
    """(uid, samples, None) of the session's dataset folder, as collect and train open it (its
    manifest and sample log checked, not the samples' bytes) and, given the board's `model` (INFO's
    model), check it against that model; (None, None, None) when the folder holds none; (None,
    None, what is wrong) when collect and train would refuse it."""
    try:
        if not os.path.exists(os.path.join(path, "manifest.json")):
            Dataset.check_new(path)  # what collect says of a folder it would start afresh
            return None, None, None
        ds = Dataset.open(path)
        if model is not None:
            ds.check_compatible(model["input_shape"], model["num_classes"],
                                model["input_scale"], model["input_zero_point"])
    except DatasetError as e:
        return None, None, str(e).removeprefix("tinymp: ")
    return ds.uid, len(ds), None


def board_status(board, session):
    """What the board holds now, from its INFO (the hello's, checked by the link: nothing more is
    asked), set against what the session folder recorded: the model it last pushed (session.json)
    and its dataset. Reads only; `tinymp status` prints it."""
    i = board.info
    problem = P.status_problem(i)
    if problem:  # only status reads these: the other commands still work (and can replace them)
        raise board.link.agent_error(f"sent a bad INFO reply: {problem}")
    sim = board.simulated
    try:
        agent = int(i.get("agent"))
    except (TypeError, ValueError):
        agent = None
    rec = session.state.get("model") or {}  # its shape checked by Session (STATE)
    pushed = {"name": rec.get("name"), "sha256": rec["sha256"]} \
        if isinstance(rec.get("sha256"), str) else None
    m = i.get("model")
    model = sha = None
    if m is not None and m.get("error") is not None:
        model = {"error": m["error"], "bytes": m.get("bytes"), "session_model": None}
    elif m is not None:
        sha = m["sha256"]
        here = pushed is not None and pushed["sha256"] == sha
        model = {"sha256": sha, "bytes": m["bytes"], "served_from": m.get("served_from"),
                 "input_shape": m["input_shape"], "num_classes": m["num_classes"],
                 "name": pushed["name"] if here else None, "session_model": here}
    p = i.get("params") or {}
    saved = bool(p.get("saved"))
    records = _train_records(session)
    params = dict(_run_status(p, sha, sim, records) if saved else
                  {k: None for k in ("options", "method", "steps", "model_sha256", "for_model",
                                     "time", "ended_utc", "ended", "run", "run_file")},
                  saved=saved)
    # earlier parameters kept for a rollback: an agent before 3 sends no params after a reset
    params["previous"] = p.get("previous") if "previous" in p else \
        (False if agent is not None and agent >= 3 else None)
    t = i.get("trial")
    s = i.get("samples")
    samples = None
    if s is not None:
        usable = model is not None and "error" not in model
        uid, n, damaged = _session_dataset(session.dataset_dir, m if usable else None)
        each = int(np.prod(m["input_shape"])) if usable else None
        again, have = _store_plan(s, uid, each, n or 0) if each is not None else (None, 0)
        samples = {"count": s["count"], "last_id": s["last_id"], "dataset": s["dataset"],
                   "bytes": s.get("bytes"),
                   # how many of the model's samples its free room holds (None: the board does
                   # not say), with the room of a store collect or train would replace
                   "room": None if each is None else room_for(s, each, again)[0],
                   # the dataset's samples the next collect or train sends first (the room's
                   # first call; None: no model or no readable dataset)
                   "to_send": max(0, n - have) if each is not None and n is not None
                   else None,
                   # the board's samples are the session dataset's (by its id)
                   "session_dataset": None if uid is None or not s["count"] else
                   s["dataset"] == uid, "session_samples": n,
                   # what the command that reads the dataset would say of it (None: sound)
                   "dataset_problem": damaged}
    return {
        "board": {"name": i.get("board"), "simulated": sim, "port": board.port_name,
                  "implementation": i.get("implementation"), "firmware": i.get("firmware"),
                  "tinymp": i.get("tinymp"), "agent": i.get("agent"),
                  "mem_free": i.get("mem_free"), "arena_budget": i.get("arena_budget"),
                  "romfs": i.get("romfs"), "romfs_state": i.get("romfs_state")},
        "session": session.path,
        "model": model,
        "session_model": pushed,
        "params": params,
        "trial": None if t is None else _run_status(t, sha, sim, records),
        "samples": samples,
        # features.kept (train --keep-features): None when the board has none or its agent
        # (before 8) does not say, which "agent" tells apart
        "features": i.get("features"),
    }
