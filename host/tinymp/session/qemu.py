"""`--port qemu`: the QEMU Cortex-M7 firmware (make firmware BOARD=QEMU_M7) as the board.

QEMU's MPS2-AN500 machine gets its UART on a pseudo-terminal; mpremote's transport enters the
raw REPL there and pastes the agent (this firmware does not freeze it), exactly as with a board on
USB. The QEMU board has no filesystem, so it answers INFO and PREDICT-free requests but refuses
to store a model; its times are instruction counts of an emulator, not hardware measurements.
"""
import re
import shutil
import subprocess

from .link import (Board, FaultyPort, Link, LinkError, _close_transport, _hello, qemu_firmware,
                   start_agent)


def lacks():
    """What --port qemu lacks on this machine (the firmware or QEMU itself), as the words after
    "needs", or None."""
    if qemu_firmware() is None:
        return ("the QEMU firmware: make firmware BOARD=QEMU_M7 "
                "(build/qemu-m7/firmware.elf, or TINYMP_QEMU_FIRMWARE=PATH)")
    if shutil.which("qemu-system-arm") is None:
        return "qemu-system-arm (apt-get install qemu-system-arm)"
    return None


def missing():
    """lacks() as the line to print, or None: the commands refuse the port with it before they
    hold the session folder."""
    lack = lacks()
    return None if lack is None else "tinymp: --port qemu needs " + lack


def start_qemu(timeout=None, faults=None, before_write=None):
    fw = qemu_firmware()
    if fw is None:
        raise LinkError(missing())
    try:
        from mpremote.transport_serial import SerialTransport
    except ImportError:  # pragma: no cover
        raise LinkError("tinymp: --port qemu needs mpremote (pip install mpremote)") from None
    try:
        proc = subprocess.Popen(["qemu-system-arm", "-machine", "mps2-an500", "-nographic",
                                 "-monitor", "null", "-semihosting", "-serial", "pty",
                                 "-kernel", fw], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except FileNotFoundError:
        raise LinkError("tinymp: --port qemu needs qemu-system-arm (apt-get install "
                        "qemu-system-arm)") from None
    line = proc.stdout.readline().decode(errors="replace")
    m = re.search(r"(/dev/pts/\d+)", line)
    if not m:
        proc.kill()
        raise LinkError(f"tinymp: QEMU did not open a serial pty ({line.strip()!r})")
    dev = m.group(1)

    def why_dead():
        rc = proc.poll()
        return None if rc is None else f"QEMU exited (status {rc})"

    t = None
    try:
        t = SerialTransport(dev, baudrate=115200)
        start_agent(t, soft_reset=False)
        ser = t.serial
        ser.timeout = 0.02
        raw = FaultyPort(ser, before_write=before_write, **(faults or {})) \
            if (faults or before_write) else ser
        link = Link(raw, name="QEMU Cortex-M7", timeout=timeout or 5.0, alive=why_dead)
        info = _hello(link, "QEMU board")
        link.max_payload = info.get("max_payload")
    except BaseException as e:
        if t is not None:
            _close_transport(t)  # the pty's PC end: kept open by this process otherwise
        proc.kill()
        proc.wait()
        if isinstance(e, LinkError) or not isinstance(e, Exception):
            raise
        raise LinkError(f"tinymp: could not start the agent in QEMU: {e}") from None

    def closer():
        try:
            t.close()
        except Exception:
            pass
        proc.kill()
        proc.wait()
    return Board(link, "qemu", info, closer=closer, port_name="qemu")
