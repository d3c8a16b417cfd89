"""Push rate of a 500 KB model to the simulated board (make bench-push).

The model is MobileNetV2-w0.35 at 32x32 from the zoo (about 500 KB), pushed to a simulated
NUCLEO-H743ZI2 (its profile allows 768 KB of model flash) over the pty link, as `tinymp push`
does: chunked frames, each acknowledged, written and fsynced on the board, SHA-256 checked and
committed. The figure is host time on this machine for the whole push (begin, data, commit); the
issue's target is at least 200 KB/s, the rate a MicroPython USB link sustains. Not a timed test.

    .venv/bin/python tools/bench_push.py [--runs N] [--board NAME]
"""
import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "host"))

from tinymp import zoo  # noqa: E402
from tinymp.session import commands as C  # noqa: E402
from tinymp.session import link  # noqa: E402

TARGET_KBS = 200


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--board", default="NUCLEO_H743ZI2")
    ap.add_argument("--chunk", type=int, default=None,
                    help="bytes per frame (default: what the board's INFO allows, at most 32 KB)")
    args = ap.parse_args()
    data = zoo.mobilenetv2(width=0.35, resolution=32, num_classes=10)
    print(f"model: MobileNetV2-w0.35 32x32, {len(data):,} bytes; simulated board {args.board}")
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            with link.open_board("sim:" + args.board, sim_dir=os.path.join(tmp, f"run{i}")) as b:
                t0 = time.perf_counter()
                res = C.push(b, data, show=False, chunk=args.chunk)
                dt = time.perf_counter() - t0
                st = b.link.stats
                chunk = args.chunk or min((b.link.max_payload or 4096) - 64, 32768)
            rate = len(data) / dt / 1024
            rates.append(rate)
            print(f"run {i + 1}: {dt * 1000:.0f} ms, {rate:.0f} KB/s ({st['requests']} requests, "
                  f"chunks of {chunk:,} bytes, {st['retransmissions']} retransmissions), "
                  f"sha256 {res['sha256'][:12]} committed")
    best, worst = max(rates), min(rates)
    verdict = "meets" if worst >= TARGET_KBS else "BELOW"
    print(f"push rate: {worst:.0f}..{best:.0f} KB/s over {args.runs} runs ({verdict} the "
          f"{TARGET_KBS} KB/s target; host time, simulated board)")
    return 0 if worst >= TARGET_KBS else 1


if __name__ == "__main__":
    sys.exit(main())
