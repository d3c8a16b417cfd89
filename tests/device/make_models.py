"""Regenerate the small models embedded in the device test scripts (tests/device/*.py).

MicroPython's run-tests.py copies a test script alone to the target, so each script carries its
model as a bytes literal between the lines ``# BEGIN MODEL`` and ``# END MODEL``. This script
(CPython, PC package and numpy) builds that model with tinymp.builder and rewrites the literal
in every script that has the markers:

    python tests/device/make_models.py           # rewrite the literals
    python tests/device/make_models.py --check   # exit 1 if a literal differs from the model

After a change of the model (or of the quantiser), regenerate the .py.exp files from CPython:
    python tests/device/<name>.py > tests/device/<name>.py.exp
except for the scripts marked ``# device-only`` on their first line (CPython prints SKIP for
them): take theirs from a MicroPython build (`make firmware BOARD=UNIX`, then
`build/unix/micropython tests/device/<name>.py`), and check it by reading it.

It is not a device test: on MicroPython it prints SKIP (run-tests.py is also told to skip it).
"""
import sys

if sys.implementation.name != "cpython":
    print("SKIP")
    raise SystemExit

import os

HERE = os.path.dirname(os.path.abspath(__file__))
HOST = os.path.join(os.path.dirname(os.path.dirname(HERE)), "host")
if HOST not in sys.path:
    sys.path.insert(0, HOST)

BEGIN = "# BEGIN MODEL"
END = "# END MODEL"
CLASS_NAMES = ("cat", "dog", "f\u00e5gel", "fish")  # one non-ASCII name: UTF-8 round trip


def build_model() -> bytes:
    """8x8x3 input; every layer type once: conv/2, dwconv, pwconv, add, avgpool, fc (4 classes).

    Seeded random weights, PTQ on a seeded calibration batch: about 1 KB.
    """
    import numpy as np
    from tinymp.builder import Graph

    rng = np.random.default_rng(20240601)

    def w(*shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def b(n):
        return (rng.standard_normal(n) * 0.1).astype(np.float32)

    g = Graph(input_shape=(8, 8, 3))
    x = g.conv(g.input, w(8, 3, 3, 3, fan_in=27), b(8), stride=2, padding="same", act="relu6")
    y = g.dwconv(x, w(3, 3, 8, fan_in=9), b(8), act="relu6")
    y = g.pwconv(y, w(8, 8, fan_in=8), b(8))
    y = g.add(x, y)
    y = g.avgpool(y)
    g.fc(y, w(4, 8, fan_in=8), b(4))
    calib = rng.uniform(-1.0, 1.0, size=(16, 8, 8, 3)).astype(np.float32)
    return g.quantize(calib, class_names=CLASS_NAMES, input_range=(-1.0, 1.0))


def literal(data: bytes, width: int = 96) -> str:
    """``MODEL = (b'...' ...)`` in lines of at most about `width` characters."""
    lines = ["MODEL = ("]
    cur = b""
    for i in range(len(data)):
        nxt = cur + data[i:i + 1]
        if len(repr(nxt)) + 4 > width:
            lines.append("    " + repr(cur))
            nxt = data[i:i + 1]
        cur = nxt
    if cur:
        lines.append("    " + repr(cur))
    lines.append(")")
    return "\n".join(lines)


def scripts():
    for name in sorted(os.listdir(HERE)):
        path = os.path.join(HERE, name)
        if name.endswith(".py") and name != os.path.basename(__file__):
            with open(path, encoding="utf-8") as f:
                if BEGIN in f.read():
                    yield path


def rewrite(text: str, lit: str) -> str:
    head, rest = text.split(BEGIN, 1)
    marker_line, _ = rest.split("\n", 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + marker_line + "\n" + lit + "\n" + END + tail


def main(argv) -> int:
    check = "--check" in argv
    data = build_model()
    lit = literal(data)
    stale = []
    for path in scripts():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = rewrite(text, lit)
        if new != text:
            stale.append(path)
            if not check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
    verb = "differ from the generator" if check else "rewritten"
    print("model: %d bytes; %s: %s" % (len(data), verb,
                                       ", ".join(os.path.basename(p) for p in stale) or "none"))
    return 1 if (check and stale) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
