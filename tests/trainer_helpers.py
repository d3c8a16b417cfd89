"""Helpers of tests/test_trainer.py: cached models and data, guarded arenas, and an independent
replay of Alternant Partial Update (APU) on the gradients the engine reports.

Everything is cached per process: the zoo models take a few tenths of a second each to build, the
digits a little more to load and quantise.
"""
import functools
import math

import numpy as np

import tinymp
import tinymp.zoo
from tinymp import reference_train as rt
from tinymp.builder import quantize_input

WEIGHTED = ("conv", "dwconv", "pwconv", "fc")
GUARD_PAD = 64
GUARD_FILL = 0x5A  # differs from the engine's arena paint (0xA5)


# ------------------------------------------------------------------------------ models

def zoo_entries():
    """(test id, builder name, kwargs) for every entry of tinymp.zoo.models()."""
    out = []
    for name, kw in tinymp.zoo.models():
        kid = name + "-" + "-".join("%s=%s" % (k, kw[k]) for k in sorted(kw))
        out.append((kid, name, dict(kw)))
    return out


@functools.lru_cache(maxsize=None)
def _zoo_bytes(name, items):
    return tinymp.zoo.build(name, **dict(items))


def zoo_model(name, kw):
    """A fresh tinymp.Model over cached zoo bytes."""
    return tinymp.Model(_zoo_bytes(name, tuple(sorted(kw.items()))))


@functools.lru_cache(maxsize=None)
def demo_bytes():
    return tinymp.zoo.demo()


@functools.lru_cache(maxsize=None)
def demo_model():
    """One shared demo Model (read-only use: plans and trainers hold it, nothing changes it)."""
    return tinymp.Model(demo_bytes())


def layer_types(m):
    return [l["type"] for l in m._layers()]


def weighted_layers(m):
    return [i for i, t in enumerate(layer_types(m)) if t in WEIGHTED]


def unweighted_layers(m):
    return [i for i, t in enumerate(layer_types(m)) if t not in WEIGHTED]


def random_inputs(m, n, seed=0):
    rng = np.random.default_rng(seed)
    size = int(np.prod(m.input_shape))
    return [rng.integers(-128, 128, size=size, dtype=np.int8).tobytes() for _ in range(n)]


# ------------------------------------------------------------------------------ data

@functools.lru_cache(maxsize=None)
def _digits(split):
    from tinymp.datasets import digits
    return digits(32, split)


def shift(x, kind):
    """Deterministic domain shifts of [N, H, W, 1] images in [0, 1]."""
    if kind == "none":
        return x
    if kind == "invert":
        return 1.0 - x
    if kind == "translate":  # 6 pixels right and 4 down, zero fill
        out = np.zeros_like(x)
        out[:, 4:, 6:, :] = x[:, :-4, :-6, :]
        return out
    raise ValueError(kind)


@functools.lru_cache(maxsize=None)
def digits_q(split, kind="none"):
    """(list of int8 input bytes for the demo model, list of int labels)."""
    m = demo_model()
    x, y = _digits(split)
    xs = shift(x, kind)
    qp = (m.input_scale, m.input_zero_point)
    return [quantize_input(a, qp).tobytes() for a in xs], [int(v) for v in y]


def accuracy(predict, xs, ys):
    return float(np.mean([predict(x) == y for x, y in zip(xs, ys)]))


# ------------------------------------------------------------------------------ arenas

def buffer_address(buf):
    return np.frombuffer(buf, dtype=np.uint8).ctypes.data


def guarded_arena(plan, pad=GUARD_PAD, misalign=0):
    """A caller arena of plan.arena_bytes + pad bytes (plus `misalign` leading bytes) filled with
    GUARD_FILL. Returns (the object to pass as arena=, the backing bytearray, start offset of the
    part the Trainer uses inside the bytearray)."""
    backing = bytearray([GUARD_FILL]) * (plan.arena_bytes + pad + misalign)
    obj = memoryview(backing)[misalign:] if misalign else backing
    addr = buffer_address(backing) + misalign
    skip = (4 - addr % 4) % 4  # the Trainer uses the 4-byte aligned part of the buffer
    return obj, backing, misalign + skip


def guard_report(backing, start, arena_bytes):
    """Bytes outside [start, start + arena_bytes) that no longer hold GUARD_FILL."""
    b = np.frombuffer(bytes(backing), dtype=np.uint8)
    outside = np.concatenate([b[:start], b[start + arena_bytes:]])
    return int(np.count_nonzero(outside != GUARD_FILL))


def painted_high_water(backing, start, arena_bytes, paint=0xA5):
    """Independent recomputation of high_water from the arena bytes (docs: highest byte that no
    longer holds the engine's paint, + 1)."""
    b = np.frombuffer(bytes(backing[start:start + arena_bytes]), dtype=np.uint8)
    nz = np.flatnonzero(b != paint)
    return int(nz[-1]) + 1 if nz.size else 0


# ------------------------------------------------------------------------------ APU replay

class ApuReplay:
    """Replays APU from the engine's per-step weight-gradient slices (Trainer._grads).

    The engine keeps, per APU layer: the smoothed importance Ibar (float32), the importance
    accumulated over the current period I[c] = sum of dW[..., c]^2 over the period's steps,
    and ages. Conventions (docs/TRAINING.md section 6, reference_train decisions 8 and 9): the
    plan's initial selection is period 0's selection (ages 0, the channels excluded for the next
    period); at the end of a period only the channels selected in it get Ibar <- 0.9 Ibar +
    0.1 I (Ibar <- I at a channel's first measurement; 2**-126 for a measured 0), then the
    oracle's apu_select picks the next selection.

    The sums are replayed in float32 in the engine's order (output channel by output channel,
    then slice element by slice element), so I and Ibar are bit-identical to the engine's; the
    oracle's apu_select then scores in float64, so a differing selection is accepted only when
    it is a float tie (scores equal to 1e-5 relative) -- counted in `ties`.
    """

    BETA = np.float32(0.9)
    TAU = 0.1

    def __init__(self, model, plan, initial):
        self.ratio = plan.ratio
        self.m = rt.apu_window(self.ratio)
        info = plan._layers()
        mlayers = model._layers()
        self.layers = [i for i, d in enumerate(info) if d["apu"]]
        self.geom = {}
        self.ibar, self.iacc, self.age, self.history = {}, {}, {}, {}
        for i in self.layers:
            l = mlayers[i]
            k = info[i]["k"]
            cin = self._cin(model, i)
            self.geom[i] = (l["type"], l["kh"] * l["kw"] if l["type"] in ("conv", "dwconv") else 1, k, cin)
            self.ibar[i] = np.zeros(cin, np.float32)
            self.iacc[i] = np.zeros(cin, np.float32)
            self.age[i] = np.zeros(cin, np.float64)
            self.history[i] = [list(initial[i])]
        self.ties = 0
        self.periods = 0
        self.sensitive = 0  # selections that depended on the importances
        self._rng = np.random.default_rng(0)

    @staticmethod
    def _cin(model, i):
        layers = model._layers()
        shapes = {0: tuple(model.input_shape)}
        for l in layers:
            shapes[l["out"]] = tuple(l["out_shape"])
        l = layers[i]
        shp = shapes[l["in0"]]
        return int(np.prod(shp)) if l["type"] == "fc" else int(shp[2])

    def current(self, i):
        return self.history[i][-1]

    def accumulate(self, grads):
        """Add one step's slices (the dict of Trainer._grads) to the period's importances."""
        for i in self.layers:
            kind, taps, k, cin = self.geom[i]
            ch = np.asarray(self.current(i), dtype=np.int64)
            acc = self.iacc[i]
            slices = grads[i]
            for o, raw in slices.items():
                if o == "db":
                    continue
                dw = np.frombuffer(raw, dtype=np.float32)
                sq = dw * dw  # float32 products, as the engine
                if kind == "dwconv":
                    for e in range(sq.size):  # one channel, tap by tap
                        acc[o] = np.float32(acc[o] + sq[e])
                elif kind == "conv":
                    for uv in range(taps):
                        acc[ch] = acc[ch] + sq[uv * k:(uv + 1) * k]
                else:
                    acc[ch] = acc[ch] + sq

    def end_period(self):
        """Returns {layer: expected selection (sorted list)} and advances the replay."""
        out = {}
        for i in self.layers:
            sel = np.asarray(self.current(i), dtype=np.int64)
            ib = self.ibar[i]
            new = np.where(ib[sel] == 0, self.iacc[i][sel],
                           self.BETA * ib[sel] + (np.float32(1.0) - self.BETA) * self.iacc[i][sel])
            ib[sel] = np.where(new > 0, new, np.float32(rt.MEASURED_ZERO)).astype(np.float32)
            self.iacc[i][:] = 0
            expected, _ = rt.apu_select(ib.astype(np.float64), self.age[i], self.ratio,
                                        history=self.history[i], tau=self.TAU)
            out[i] = [int(c) for c in expected]
            # would other values of the importances known so far have chosen differently? (if
            # not, the choice was forced by the exclusion of the previous period and the index
            # order among the channels never measured, and agreeing with the oracle shows little)
            other = np.where(ib > 0, self._rng.random(ib.size) + 1.0, 0.0)
            alt, _ = rt.apu_select(other, self.age[i], self.ratio, history=self.history[i], tau=self.TAU)
            if [int(c) for c in alt] != out[i]:
                self.sensitive += 1
        self.periods += 1
        return out

    def score(self, i):
        return self.ibar[i].astype(np.float64) * (1.0 + self.TAU * self.age[i])

    def accept(self, i, expected, engine):
        """Compare the engine's selection with the oracle's; accept float ties; advance ages and
        history with the engine's selection. Returns None when they agree, else a message."""
        msg = None
        if list(engine) != list(expected):
            sc = self.score(i)
            only_e = sorted(set(engine) - set(expected))
            only_o = sorted(set(expected) - set(engine))
            worst_engine = min(sc[c] for c in only_e)
            best_other = max(sc[c] for c in only_o)
            # never-measured channels (Ibar 0) rank before every measured one, whatever the
            # scores: a choice across that line is never a float tie
            measured = {bool(self.ibar[i][c] != 0) for c in only_e + only_o}
            tie = len(measured) == 1 and math.isclose(worst_engine, best_other, rel_tol=1e-5,
                                                      abs_tol=1e-30)
            if tie:
                self.ties += 1
            else:
                msg = ("layer %d period %d: engine selected %s, oracle %s (scores engine-only %s, "
                       "oracle-only %s)" % (i, self.periods, engine, expected,
                                            [float(sc[c]) for c in only_e],
                                            [float(sc[c]) for c in only_o]))
        chosen = np.zeros(self.age[i].size, dtype=bool)
        chosen[list(engine)] = True
        self.age[i] = np.where(chosen, 0.0, self.age[i] + 1.0)
        self.history[i].append(list(engine))
        return msg


def first_window_misses(selections, m, cin):
    """The channels the first m selections (the plan's and the next m - 1) leave out."""
    seen = set()
    for sel in selections[:m]:
        seen.update(sel)
    return sorted(set(range(cin)) - seen)


def repeats(selections, k, cin):
    """Periods whose selection shares a channel with the previous one although 2k <= cin (the
    previous period's channels are excluded, and enough others are eligible)."""
    if 2 * k > cin:
        return []
    return [p for p in range(1, len(selections)) if set(selections[p]) & set(selections[p - 1])]


def windows_cover(selections, m, cin):
    """Windows of m consecutive selections that miss a channel: [(start, missing channels)]."""
    bad = []
    for s in range(0, len(selections) - m + 1):
        seen = set()
        for sel in selections[s:s + m]:
            seen.update(sel)
        missing = sorted(set(range(cin)) - seen)
        if missing:
            bad.append((s, missing))
    return bad
