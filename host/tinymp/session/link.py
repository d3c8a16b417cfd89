"""The serial link to a board running `tinymp_agent`: requests with retries, and opening a port.

`Link.request(type, value)` sends one request frame and returns the decoded reply value. Damaged
or lost frames in either direction are retransmitted (the agent answers a retransmission with its
cached reply, never by running the request twice); a refusal by the board raises `BoardError`;
a link that stays silent through every retry, or a board that goes away, raises `LinkError`; a
reply without what the PC reads of it (protocol.reply_problem: a field missing or of another
type) raises `ReplyError`, a LinkError of a link that works.

`open_board(port, ...)` gives a connected `Board`: `sim` starts the simulated board (a CPython
process on a pseudo-terminal, see simboard.py), `qemu` the QEMU Cortex-M7 firmware, anything else
is a serial device where mpremote's transport enters the raw REPL and starts the agent.
"""
import os
import random
import time

from . import protocol as P


# seconds a write to the board may block: a board that stopped reading is a failed link
WRITE_TIMEOUT = 10.0

class LinkError(Exception):
    """The link failed: no answer, or the board went away. The message is one line."""


class ReplyError(LinkError):
    """The board answered, but not as the protocol says: a reply without a field the PC reads, a
    field of another type, a transfer that does not advance. The link itself works (the session
    still says BYE); its agent misbehaves. The message is one line, and names the request."""


class BoardError(Exception):
    """The board refused a request. `code` is the agent's error code, `msg` its message."""

    def __init__(self, code, msg):
        super().__init__(msg)
        self.code, self.msg = code, msg


class Link:
    """Request/reply over a pyserial-like port (write, read, in_waiting)."""

    def __init__(self, port, name="board", timeout=2.0, retries=8, alive=None, max_payload=None):
        self.port = port
        self.name = name
        self.timeout = timeout
        self.retries = retries
        self.alive = alive  # callable -> None while the board lives, else a reason string
        self.dec = P.Decoder()
        self.queue = []
        self.seq = random.randrange(0, 0xFFFF)
        self.max_payload = max_payload
        self.stats = {"requests": 0, "retransmissions": 0, "bad_frames": 0, "stale": 0,
                      "bytes_out": 0, "bytes_in": 0}
        self.failed = False  # a LinkError said the link itself failed: no BYE then

    def _failed(self, msg):
        self.failed = True
        return LinkError(msg)

    def agent_error(self, what):
        """ReplyError "NAME: the board's agent WHAT" (what names the request)."""
        return ReplyError(f"{self.name}: the board's agent {what}")

    def _next_seq(self):
        self.seq = (self.seq + 1) % 0xFFFF  # 0xFFFF is NO_SEQ
        return self.seq

    def _write(self, data):
        try:
            self.port.write(data)
            if hasattr(self.port, "flush"):
                self.port.flush()
        except Exception as e:  # serial.SerialException, OSError
            raise self._failed(self._gone(f"cannot write to the link ({e})")) from None
        self.stats["bytes_out"] += len(data)

    def _gone(self, fallback):
        why = self.alive() if self.alive else None
        if why:
            return f"{self.name}: {why}"
        noise = bytes(self.dec.noise).decode("utf-8", "replace").strip()
        tail = noise.splitlines()[-1] if noise else ""
        if "Error" in tail or "Traceback" in noise:
            return f"{self.name}: the board printed: {tail}"
        return f"{self.name}: {fallback}"

    def _event(self, deadline):
        """The next frame or BadFrame, or None at the deadline."""
        while not self.queue:
            if time.monotonic() >= deadline:
                return None
            try:
                n = self.port.in_waiting
                data = self.port.read(n if n else 1)
            except Exception as e:
                raise self._failed(self._gone(f"the link closed ({e})")) from None
            if data:
                self.stats["bytes_in"] += len(data)
                self.queue.extend(self.dec.feed(data))
            elif self.alive is not None:
                why = self.alive()
                if why:
                    raise self._failed(f"{self.name}: {why}")
        return self.queue.pop(0)

    def request(self, ftype, value=None, timeout=None, retries=None, check=True):
        """The reply's value; with `check`, ReplyError unless it has what the PC reads of it."""
        payload = P.pack(value) if value is not None else b""
        seq = self._next_seq()
        data = P.encode_frame(ftype, seq, payload)
        timeout = self.timeout if timeout is None else timeout
        retries = self.retries if retries is None else retries
        self.stats["requests"] += 1
        for attempt in range(retries + 1):
            if attempt:
                self.stats["retransmissions"] += 1
            self._write(data)
            deadline = time.monotonic() + timeout
            while True:
                ev = self._event(deadline)
                if ev is None:
                    break  # lost: send again
                if isinstance(ev, P.BadFrame):
                    self.stats["bad_frames"] += 1
                    if ev.seq in (None, seq):
                        break  # possibly our reply, damaged: ask again
                    continue
                if ev.seq != seq:
                    self.stats["stale"] += 1
                    continue  # a late answer to an earlier (re)transmission
                try:
                    value = ev.value()
                except P.ProtocolError:
                    self.stats["bad_frames"] += 1
                    break
                if ev.type == P.ERROR:
                    code = value.get("code") if isinstance(value, dict) else None
                    msg = value.get("msg") if isinstance(value, dict) else repr(value)
                    if code in P.TRANSPORT_ERRORS:
                        break  # the board saw our request damaged
                    raise BoardError(code, msg)
                if ev.type != (ftype | P.REPLY):
                    self.stats["bad_frames"] += 1
                    continue
                problem = P.reply_problem(ftype, value) if check else None
                if problem:  # the agent would send the same again: no retry
                    raise self.agent_error(f"sent a bad {P.NAMES.get(ftype, hex(ftype))} reply: "
                                           f"{problem}")
                return value
            # the board answered nothing usable for seq
            if self.alive is not None:
                why = self.alive()
                if why:
                    raise self._failed(f"{self.name}: {why}")
        raise self._failed(self._gone(f"no answer to {P.NAMES.get(ftype, hex(ftype))} after "
                                   f"{retries + 1} tries ({timeout:g} s each)"))

    def close(self):
        try:
            self.port.close()
        except Exception:
            pass


class FaultyPort:
    """Wraps a port and damages what the PC sends, frame by frame (one write = one frame):
    `flip`, `drop`, `dup` are probabilities; `before_write(n, data)` is called before the n-th
    write (from 1) and may kill a board, raise, ... Used by the tests and by --faults."""

    def __init__(self, port, flip=0.0, drop=0.0, dup=0.0, seed=0, before_write=None):
        self.port = port
        self.flip, self.drop, self.dup = flip, drop, dup
        self.rng = random.Random(seed)
        self.before_write = before_write
        self.writes = 0
        self.injected = {"flip": 0, "drop": 0, "dup": 0}

    def write(self, data):
        self.writes += 1
        if self.before_write is not None:
            self.before_write(self.writes, bytes(data))
        r = self.rng.random()
        if r < self.drop:
            self.injected["drop"] += 1
            return len(data)
        data = bytearray(data)
        if r < self.drop + self.flip:
            self.injected["flip"] += 1
            i = self.rng.randrange(len(data) * 8)
            data[i // 8] ^= 1 << (i % 8)
        self.port.write(bytes(data))
        if self.rng.random() < self.dup:
            self.injected["dup"] += 1
            self.port.write(bytes(data))
        return len(data)

    def __getattr__(self, name):
        return getattr(self.port, name)


# --- boards ---------------------------------------------------------------------------------

class Board:
    """A connected board: `link`, `info` (the agent's INFO reply), `kind` ('sim', 'qemu',
    'serial'), `sim` (the SimBoard when simulated). Use as a context manager."""

    def __init__(self, link, kind, info, closer=None, sim=None, port_name=None):
        self.link, self.kind, self.info = link, kind, info
        self.closer, self.sim, self.port_name = closer, sim, port_name

    @property
    def simulated(self):
        return bool(self.info.get("simulated")) or self.kind == "sim"

    def request(self, *a, **kw):
        return self.link.request(*a, **kw)

    def close(self, bye=True):
        if bye and not getattr(self.link, "failed", False):
            try:
                self.link.request(P.BYE, timeout=1.0, retries=1)
            except (LinkError, BoardError):
                pass
        self.link.close()
        if self.closer:
            self.closer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # say BYE after an error too (a refused request, Ctrl-C): the agent, which ignores Ctrl-C,
        # would otherwise keep the board's REPL and the next command could not start; not when the
        # link itself failed (BYE could only time out; also when a command turned that LinkError
        # into its own message: the link remembers), but after a bad reply (ReplyError)
        self.close(bye=exc[0] is None or not issubclass(exc[0], LinkError)
                   or issubclass(exc[0], ReplyError))


MICROPYTHON_USB_IDS = {
    (0xF055, None): "MicroPython (pyboard and others)",
    (0x1209, 0xABD1): "OpenMV Cam",
    (0x37C5, None): "OpenMV Cam",
    (0x2E8A, None): "Raspberry Pi RP2",
    (0x303A, None): "Espressif ESP32-S3 (USB)",
    (0x0483, 0x374B): "ST-LINK (NUCLEO board)",
    (0x0483, 0x374E): "ST-LINK (NUCLEO board)",
    (0x0483, 0x5740): "STM32 virtual COM port",
}


def _usb_kind(vid, pid):
    if vid is None:
        return None
    return MICROPYTHON_USB_IDS.get((vid, pid)) or MICROPYTHON_USB_IDS.get((vid, None))


def serial_devices():
    """[(device, description, likely board kind or None)] of this PC's serial ports."""
    try:
        from serial.tools import list_ports
    except ImportError:  # pragma: no cover
        return []
    out = []
    for p in sorted(list_ports.comports(), key=lambda p: p.device):
        out.append((p.device, p.description or "", _usb_kind(p.vid, p.pid)))
    return out


def qemu_firmware():
    """Path of the QEMU Cortex-M7 firmware (make firmware BOARD=QEMU_M7), or None."""
    env = os.environ.get("TINYMP_QEMU_FIRMWARE")
    if env:
        return env if os.path.isfile(env) else None
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(os.path.dirname(here)))
    for cand in (os.path.join(root, "build", "qemu-m7", "firmware.elf"),
                 os.path.join(os.getcwd(), "build", "qemu-m7", "firmware.elf")):
        if os.path.isfile(cand):
            return cand
    return None


def resolve_port(port):
    """'auto' -> the one attached MicroPython board, else 'sim'."""
    if port not in (None, "", "auto"):
        return port
    boards = [d for d, _, kind in serial_devices() if kind]
    return boards[0] if len(boards) == 1 else "sim"


def _hello(link, kind):
    try:
        info = link.request(P.INFO, check=False)
    except LinkError as e:
        raise LinkError(f"{e} (is the tinymp agent running on the {kind}?)") from None
    if isinstance(info, dict) and info.get("protocol") != 1:
        raise LinkError(f"{link.name}: the agent speaks protocol {info.get('protocol')!r}, "
                        "this tinymp speaks 1")
    problem = P.reply_problem(P.INFO, info)
    if problem:
        # it answers: send it back to the REPL, which it holds until BYE (a serial board could
        # not start the next command before a reset)
        try:
            link.request(P.BYE, timeout=1.0, retries=1)
        except (LinkError, BoardError):
            pass
        raise link.agent_error(f"sent a bad INFO reply: {problem}")
    return info


def open_board(port="auto", profile=None, sim_dir=None, timeout=None, faults=None,
               board_faults=None, scene=None, before_write=None):
    """Connect to a board and say hello. `faults` (dict for FaultyPort) damages what the PC
    sends; `board_faults` (dict) makes the simulated board damage what it sends."""
    import serial  # pyserial: the same code path for real and simulated boards

    port = resolve_port(port)
    if port == "sim" or port.startswith("sim:"):
        from .simboard import SimBoard
        prof = port[4:] if port.startswith("sim:") else profile
        sim = SimBoard(profile=prof, sim_dir=sim_dir, scene=scene, faults=board_faults)
        path = sim.start()
        try:
            ser = serial.Serial(path, baudrate=115200, timeout=0.02, write_timeout=WRITE_TIMEOUT,
                                exclusive=True)
            sim.release_slave()
            raw = ser
            if faults or before_write:
                raw = FaultyPort(ser, before_write=before_write, **(faults or {}))
            link = Link(raw, name=f"simulated board {sim.profile['name']}",
                        timeout=timeout or 1.0, alive=sim.why_dead)
            info = _hello(link, "simulated board")
        except BaseException:
            sim.kill()
            raise
        link.max_payload = info.get("max_payload")
        return Board(link, "sim", info, closer=sim.close, sim=sim, port_name="sim")
    if port == "qemu":
        from .qemu import start_qemu
        return start_qemu(timeout=timeout, faults=faults, before_write=before_write)
    return open_serial(port, timeout=timeout, faults=faults, before_write=before_write)


def _agent_source():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(here, "tinymp_agent.py"), "rb") as f:
        return f.read()


def agent_chunks(source=None, most=8192):
    """The agent's source cut between top-level statements into pieces of about `most` bytes
    (a statement longer than that, such as the Agent class, is one piece). The raw REPL compiles
    each piece on its own into the same globals, so a board needs the heap for the largest
    piece's parse tree, not the whole module's: QEMU's 140 KB heap could not compile the module
    at once."""
    import ast
    src = _agent_source() if source is None else source
    lines = src.splitlines(True)
    starts = [min([n.lineno] + [d.lineno for d in getattr(n, "decorator_list", [])]) - 1
              for n in ast.parse(src).body]
    starts = [0] + starts[1:] + [len(lines)]
    pieces, cur = [], b""
    for a, b in zip(starts, starts[1:]):
        part = b"".join(lines[a:b])
        if cur and len(cur) + len(part) > most:
            pieces.append(cur)
            cur = b""
        cur += part
    if cur:
        pieces.append(cur)
    return pieces


# seconds to wait for each of the raw REPL's prompts when the command gives no --timeout
# (mpremote's own default); a shorter --timeout than RAW_REPL_LEAST is raised to it: a board's
# soft reset runs its boot.py
RAW_REPL_WAIT = 10.0
RAW_REPL_LEAST = 1.0


def start_agent(transport, soft_reset=True, timeout=None):
    """Through mpremote's transport: enter the raw REPL and start the agent (the frozen
    `tinymp_agent` when the firmware has it, else the PC's copy pasted in). Returns whether the
    agent was pasted.

    `timeout` (seconds, at least RAW_REPL_LEAST; RAW_REPL_WAIT when None) bounds each wait for the
    raw REPL's prompts, where this mpremote takes a limit (`timeout_overall`, mpremote 1.25 on;
    older ones wait 10 s after each byte), and each read of the port. mpremote prints what it read
    to stdout when the prompt does not come (a line like `b''`): that is kept from the terminal
    (it would spoil --json) and said in the exception instead."""
    import contextlib
    import inspect
    import io

    wait = RAW_REPL_WAIT if timeout is None else max(float(timeout), RAW_REPL_LEAST)
    try:  # a pty is read byte by byte, blocking: with pyserial's default (None), for ever
        transport.serial.timeout = wait
    except Exception:  # a port that takes no timeout
        pass
    try:
        limited = "timeout_overall" in inspect.signature(transport.enter_raw_repl).parameters
    except (TypeError, ValueError):
        limited = False
    heard = io.StringIO()
    port = transport.serial
    try:
        with contextlib.redirect_stdout(heard):
            # mpremote looks at its limit only when no byte came: a port that never stops
            # talking (a program printing, read from a pty) would hold it for ever
            transport.serial = _Deadline(port, wait)
            try:
                if limited:
                    transport.enter_raw_repl(soft_reset=soft_reset, timeout_overall=wait)
                else:
                    transport.enter_raw_repl(soft_reset=soft_reset)
            finally:
                transport.serial = port
            probe = transport.exec("try:\n import tinymp_agent\n print('TMA1')\n"
                                   "except ImportError:\n print('TMA0')\n")
            if b"TMA1" in probe:
                transport.exec_raw_no_follow("import tinymp_agent\ntinymp_agent.main()\n")
                return False
            for piece in agent_chunks():
                transport.exec(piece)  # raises TransportExecError with the board's traceback
            transport.exec_raw_no_follow(b"main()\n")
            return True
    except Exception as e:
        said = heard.getvalue().strip().splitlines()
        if not said:
            raise
        last = said[-1]
        if last in ("b''", 'b""'):
            what = f"nothing answered in {wait:g} s" if limited else "nothing answered"
        else:
            what = f"it answered {last if len(last) <= 60 else last[:57] + '...'}"
        raise AgentStartError(f"{e} ({what})") from None


class _Deadline:
    """The port, silent from `seconds` after the last write on: mpremote's reads then come back
    empty, and it gives up at its own limit. (It writes before each wait but the last, which
    waits for a soft reset's boot.py with the one before it.)"""

    def __init__(self, port, seconds):
        self._port = port
        self._seconds = seconds
        self._end = time.monotonic() + seconds

    def write(self, data):
        n = self._port.write(data)
        self._end = time.monotonic() + self._seconds
        return n

    def _over(self):
        return time.monotonic() >= self._end

    def read(self, n=1):
        return b"" if self._over() else self._port.read(n)

    def inWaiting(self):  # noqa: N802 (pyserial's name, which mpremote calls)
        return 0 if self._over() else self._port.inWaiting()

    @property
    def in_waiting(self):
        return 0 if self._over() else self._port.in_waiting

    def __getattr__(self, name):
        return getattr(self._port, name)


class AgentStartError(Exception):
    """mpremote could not start the agent; the message is one line and says what it read."""


def open_serial(device, timeout=None, faults=None, before_write=None):
    try:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport
    except ImportError:  # pragma: no cover
        raise LinkError("tinymp: talking to a board needs mpremote (pip install mpremote)") from None
    if not os.path.exists(device) and not device.upper().startswith("COM"):
        raise LinkError(f"tinymp: no such port {device!r}: give a serial device (see "
                        "`tinymp devices`), 'sim' or 'qemu'")
    try:
        t = SerialTransport(device, baudrate=115200)
    except (TransportError, OSError) as e:
        raise LinkError(f"tinymp: cannot open {device}: {e}") from None
    try:
        start_agent(t, timeout=timeout)
    except Exception as e:
        _close_transport(t)
        raise LinkError(f"tinymp: could not start the agent on {device}: {e}; is it a "
                        "MicroPython board (see `tinymp devices`)? If an earlier command was cut "
                        "off, the agent may still hold the board: reset it") from None
    try:
        ser = t.serial
        ser.timeout = 0.02
        ser.write_timeout = WRITE_TIMEOUT  # a board that stops reading must not block a write
        raw = FaultyPort(ser, before_write=before_write, **(faults or {})) \
            if (faults or before_write) else ser
        link = Link(raw, name=device, timeout=timeout or 5.0)
        info = _hello(link, "board")
        link.max_payload = info.get("max_payload")
    except BaseException:
        # no Board to close it: release the port here (a silent agent, a bad INFO reply, Ctrl-C),
        # or this process keeps it open and the next open of it fails (exclusive)
        _close_transport(t)
        raise

    def closer():
        try:
            t.exit_raw_repl()
        except Exception:
            pass
        _close_transport(t)
    return Board(link, "serial", info, closer=closer, port_name=device)


def _close_transport(t):
    try:
        t.close()
    except Exception:
        pass
