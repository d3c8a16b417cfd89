"""A serial port that is not a board running MicroPython: the command fails with one line on
stderr, within its --timeout, and mpremote (which prints what it read when the raw REPL does not
come) puts nothing on stdout, where --json output goes."""
import os
import select
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("mpremote", reason="needs mpremote")
pytestmark = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")

TIMEOUT = 1.0
# mpremote's own wait for the raw REPL is 10 s (and a pty was read without any limit): a command
# given --timeout 1 must be done well before that, with room for a slow machine's start-up
WITHIN = 6.0


class Pty:
    """A pseudo-terminal whose far end is this test: `silent` answers nothing, `chatty` prints
    a line every 50 ms whatever it is sent (a board running some other program)."""

    def __init__(self, mode):
        self.master, self.slave = os.openpty()
        self.device = os.ttyname(self.slave)
        self.mode = mode
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.05)
            if r:
                try:
                    os.read(self.master, 4096)  # what the PC sends: drained, never answered
                except OSError:
                    return
            if self.mode == "chatty":
                try:
                    os.write(self.master, b"Turning the LED ON!\r\n")
                except OSError:
                    return

    def close(self):
        self.stop.set()
        self.thread.join()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture(params=["silent", "chatty"])
def pty(request):
    p = Pty(request.param)
    yield p
    p.close()


@pytest.mark.parametrize("json", [False, True])
def test_a_port_that_is_not_a_board_fails_in_one_line_on_stderr(tmp_path, pty, json):
    args = [sys.executable, "-m", "tinymp.cli", "status", "--port", pty.device,
            "--timeout", str(TIMEOUT), "--session", str(tmp_path / "s")] + \
        (["--json"] if json else [])
    t = time.monotonic()
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tinymp status --port {pty.device} ({pty.mode}) did not end in 30 s")
    took = time.monotonic() - t
    assert r.returncode != 0
    assert r.stdout == "", r.stdout  # mpremote's `b''` or `b'Turning...'` stays off stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    msg = lines[0]
    assert msg.startswith(f"tinymp: could not start the agent on {pty.device}: "), msg
    assert "MicroPython board" in msg and "tinymp devices" in msg
    if pty.mode == "silent":
        assert "nothing answered" in msg, msg
    else:
        assert "it answered b'Turning the LED ON!" in msg, msg
    assert took < WITHIN, f"took {took:.1f} s with --timeout {TIMEOUT:g}"


def test_start_agent_keeps_mpremote_prints_off_stdout(capsys):
    # the same through the library: what mpremote prints before it raises goes into the error
    from mpremote.transport import TransportError

    from tinymp.session import link

    class Printing:
        serial = None

        def enter_raw_repl(self, soft_reset=True, timeout_overall=10):
            self.waited = timeout_overall
            print(b"\x00garbage")
            raise TransportError("could not enter raw repl")

    t = Printing()
    with pytest.raises(link.AgentStartError) as e:
        link.start_agent(t, timeout=2.5)
    assert capsys.readouterr().out == ""
    assert str(e.value) == "could not enter raw repl (it answered b'\\x00garbage')"
    assert t.waited == 2.5


def test_start_agent_with_an_mpremote_that_takes_no_limit():
    # mpremote before 1.25 has no timeout_overall: it is not passed, and the port mpremote reads
    # during the raw REPL's prompts is given back afterwards (the link then uses it)
    from tinymp.session import link

    class Old:
        def __init__(self):
            self.serial = object.__new__(type("Port", (), {}))
            self.sent = []

        def enter_raw_repl(self, soft_reset=True):
            self.during = self.serial

        def exec(self, code):
            return b"TMA1"

        def exec_raw_no_follow(self, code):
            self.sent.append(code)

    t = Old()
    port = t.serial
    assert link.start_agent(t, timeout=0.2) is False
    assert t.serial is port and t.during is not port and t.sent
    assert port.timeout == link.RAW_REPL_LEAST
