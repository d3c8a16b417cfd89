"""Trainer.fit(): whole personalisation runs and the frozen-prefix feature cache (issue 7).

The references are independent of fit(): the same run written as a plain loop of Trainer.step()
calls (and end_period() after every epoch, as fit() documents), and the boundary of the frozen
prefix worked out from the model's layer table in Python.
"""
import errno
import io
import math
import os
import subprocess
import tracemalloc

import numpy as np
import pytest

import tinymp
import trainer_helpers as H

BUDGET = 256 * 1024


def logits_of(t, xs):
    return np.stack([np.frombuffer(t.logits(x).tobytes(), dtype=np.float32) for x in xs])


def samples(m, n, seed=1):
    xs = H.random_inputs(m, n, seed=seed)
    ys = [(3 * i + 1) % m.num_classes for i in range(n)]
    return xs, ys


def boundary_bytes(m, first):
    """Bytes of the tensors made before layer `first` and read at or after it (Python)."""
    lay = m._layers()
    shapes = [m.input_shape] + [l["out_shape"] for l in lay]
    reads = {}
    for i, l in enumerate(lay):
        srcs = [l["in0"]] + ([l["in1"]] if l["type"] == "add" else [])
        for src in srcs:
            reads.setdefault(src, []).append(i)
    total = 0
    for t in range(1, first + 1):
        if any(j >= first for j in reads.get(t, [])):
            total += int(np.prod(shapes[t]))
    return (total + 3) & ~3


def manual_run(m, plan, xs, ys, epochs):
    t = tinymp.Trainer(m, plan, lr=0.002, seed=5)
    losses = []
    for _ in range(epochs):
        s = 0.0
        for x, y in zip(xs, ys):
            s += t.step(x, y)
        losses.append(s / len(xs))
        t.end_period()  # as the session agent does for every method: APU layers re-select
    return t, losses


CASES = [
    ("demo", "last", {}),
    ("demo", "sparse", {"layers": [12, 15], "ratios": [0.5, 0.25]}),
    ("demo", "tinymp", {"budget": 16 * 1024}),
    ("demo", "full", {}),
    ("mbv2", "tinymp", {"budget": BUDGET}),
]


def model_of(kind):
    if kind == "demo":
        return H.demo_model()
    return H.zoo_model("mobilenetv2", {"width": 0.35, "resolution": 64})


@pytest.mark.parametrize("kind,method,opts", CASES, ids=["-".join((c[0], c[1])) for c in CASES])
def test_fit_equals_a_loop_of_steps_with_and_without_cache(kind, method, opts):
    m = model_of(kind)
    n, epochs = (12, 3) if kind == "demo" else (4, 2)
    xs, ys = samples(m, n)
    plan = m.plan(method=method, **opts)
    ref, ref_losses = manual_run(m, plan, xs, ys, epochs)
    want = logits_of(ref, xs)
    assert plan.cache_bytes == (boundary_bytes(m, plan.first) if 0 < plan.first < len(m._layers()) else 0)
    for cache in (False, True, "arena", "buffer", "file"):
        p = plan if cache != "arena" else m.plan(method=method, cache=n, **opts)
        t = tinymp.Trainer(m, p, lr=0.002, seed=5)
        c = {"arena": True, "buffer": bytearray(n * p.cache_bytes), "file": io.BytesIO()}.get(cache, cache)
        r = t.fit(xs, ys, epochs=epochs, cache=c, shuffle=False)
        assert r["steps"] == n * epochs and r["epochs"] == epochs
        # a period ends after every epoch, for every method (a `last` fit counted none)
        assert t.stats()["periods"] == ref.stats()["periods"] == epochs
        np.testing.assert_array_equal(logits_of(t, xs), want)
        assert np.allclose(r["loss"], ref_losses, rtol=1e-6, atol=1e-6)
        if cache is False or p.cache_bytes == 0:
            assert r["cached_steps"] == 0
        else:
            assert r["cached_steps"] == n * (epochs - 1)
            if cache == "arena":
                # as many samples as the budget leaves room for, the rest in the binding's buffer
                room = n if "budget" not in opts else \
                    (opts["budget"] - ((plan.arena_bytes + 3) & ~3)) // plan.cache_bytes
                k = max(0, min(n, room))
                assert p.cache_samples == k and r["cache_in_arena"] == k and r["cache_outside"] == n - k
                assert p.breakdown["cache"] == k * p.cache_bytes
                assert p.arena_bytes <= opts.get("budget", p.arena_bytes)
                if k:  # the cache region is used: the high water reaches into it
                    assert t.high_water > p.arena_bytes - k * p.cache_bytes


def test_cache_true_takes_room_only_for_the_samples_beyond_the_arena():
    # plan(cache=K) keeps K samples' features in the arena; fit(cache=True) allocates a buffer
    # for the other N - K only (it used to allocate N * cache_bytes, the arena's share unused),
    # seen as the memory the run holds at its first step; the run trains exactly as one
    # without any cache
    m = H.demo_model()
    n, k, epochs = 12, 9, 3
    opts = {"method": "sparse", "layers": [12, 15], "ratios": [0.5, 0.25]}
    xs, ys = samples(m, n)
    ref = tinymp.Trainer(m, m.plan(**opts), lr=0.002, seed=5)
    want = ref.fit(xs, ys, epochs=epochs, cache=False)
    p = m.plan(cache=k, **opts)
    cb = p.cache_bytes
    assert p.cache_samples == k and cb >= 1024
    t = tinymp.Trainer(m, p, lr=0.002, seed=5)
    held = []

    def progress(epoch, done, loss, correct):
        if not held:
            held.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        r = t.fit(xs, ys, epochs=epochs, progress=progress)
    finally:
        tracemalloc.stop()
    assert r["cache_in_arena"] == k and r["cache_outside"] == n - k
    assert r["cached_steps"] == n * (epochs - 1)
    # the buffer of N - K samples, and less than one more sample's worth of anything else
    assert (n - k) * cb <= held[0] - start < (n - k + 1) * cb
    assert r["loss"] == want["loss"] and r["accuracy"] == want["accuracy"]
    np.testing.assert_array_equal(logits_of(t, xs), logits_of(ref, xs))


def test_cache_skips_the_prefix_macs():
    m = H.demo_model()
    xs, ys = samples(m, 8)
    p = m.plan(method="last")
    assert p.first > 0 and p.cache_bytes > 0
    a = tinymp.Trainer(m, p, lr=0.002, seed=1)
    a.fit(xs, ys, epochs=3, cache=False)
    b = tinymp.Trainer(m, p, lr=0.002, seed=1)
    b.fit(xs, ys, epochs=3)
    prefix = sum(l["fwd_macs"] for l in p._layers()[:p.first])
    fa, fb = a.stats()["forward_macs"], b.stats()["forward_macs"]
    assert prefix > 0 and fa - fb == 8 * 2 * prefix


def test_shuffled_fit_is_deterministic_and_visits_every_sample():
    m = H.demo_model()
    xs, ys = samples(m, 10)
    p = m.plan(method="last")
    seen = []
    t = tinymp.Trainer(m, p, lr=0.002, seed=9)
    r1 = t.fit(xs, ys, epochs=2, progress=lambda e, d, loss, ok: seen.append((e, d)))
    assert seen == [(e, d) for e in range(2) for d in range(1, 11)]
    t2 = tinymp.Trainer(m, p, lr=0.002, seed=9)
    r2 = t2.fit(xs, ys, epochs=2)
    assert r1["loss"] == r2["loss"]
    np.testing.assert_array_equal(logits_of(t, xs), logits_of(t2, xs))
    # shuffling changes the order: the run differs from the in-order one
    t3 = tinymp.Trainer(m, p, lr=0.002, seed=9)
    r3 = t3.fit(xs, ys, epochs=2, shuffle=False)
    assert r3["loss"] != r1["loss"]
    # the running accuracy is the share of steps whose forward pass predicted the label
    assert all(0.0 <= a <= 1.0 for a in r1["accuracy"]) and all(math.isfinite(v) for v in r1["loss"])


def test_fits_in_pieces_go_on_as_one_fit(tmp_path):
    """The shuffle follows the trainer's seed and steps, not the call's epoch index: two fits of 2
    epochs, and a fit after saving and loading in between (a trainer of the same seed), equal one
    fit of 4 (losses, accuracy, parameters); an epoch's order is a permutation that differs from
    the previous epoch's."""
    m = H.demo_model()
    xs, ys = samples(m, 10)
    p = m.plan(method="tinymp")
    one = tinymp.Trainer(m, p, lr=0.002, seed=9, period=3)
    r = one.fit(xs, ys, epochs=4)
    two = tinymp.Trainer(m, p, lr=0.002, seed=9, period=3)
    a, b = two.fit(xs, ys, epochs=2), two.fit(xs, ys, epochs=2)
    assert a["loss"] + b["loss"] == r["loss"] and a["accuracy"] + b["accuracy"] == r["accuracy"]
    np.testing.assert_array_equal(logits_of(two, xs), logits_of(one, xs))
    three = tinymp.Trainer(m, p, lr=0.002, seed=9, period=3)
    three.fit(xs, ys, epochs=2)
    path = str(tmp_path / "p.tmpp")
    three.save(path)
    four = tinymp.Trainer(m, p, lr=0.002, seed=9, period=3)  # the seed orders the epochs
    assert four.load(path) is True
    assert four.fit(xs, ys, epochs=2)["loss"] == r["loss"][2:]
    np.testing.assert_array_equal(logits_of(four, xs), logits_of(one, xs))
    # the orders, seen through the samples fit() reads (first all of them in order, to check
    # them; then one per step): fit(epochs=1) three times gives three different permutations
    class Recorder(list):
        def __getitem__(self, i):
            read.append(i)
            return list.__getitem__(self, i)
    t = tinymp.Trainer(m, m.plan(method="last"), lr=0.002, seed=9)
    orders = []
    for _ in range(3):
        read = []
        t.fit(Recorder(xs), ys, epochs=1)
        assert read[:10] == list(range(10))
        orders.append(read[10:])
    assert all(sorted(o) == list(range(10)) for o in orders)
    assert orders[0] != orders[1] != orders[2] != orders[0]


@pytest.mark.parametrize("stop_epoch", [0, 1])
def test_a_stop_on_an_epochs_last_step_completes_that_epoch(stop_epoch):
    """progress() stopping the run on the last step of an epoch leaves that epoch complete: it
    counts and its APU period ends (the trainer has no period of its own), so a later fit goes on
    as one uninterrupted fit would (the reference: one fit of 4 epochs)."""
    m = H.demo_model()
    xs, ys = samples(m, 6)
    p = m.plan(method="tinymp")
    one = tinymp.Trainer(m, p, lr=0.002, seed=4)
    r = one.fit(xs, ys, epochs=4)
    assert one.stats()["periods"] == 4
    two = tinymp.Trainer(m, p, lr=0.002, seed=4)
    a = two.fit(xs, ys, epochs=4,
                progress=lambda e, done, loss, ok: e == stop_epoch and done == len(xs))
    assert a["stopped"] and a["steps"] == (stop_epoch + 1) * len(xs)
    assert a["epochs"] == stop_epoch + 1 == len(a["loss"]) == two.stats()["periods"]
    b = two.fit(xs, ys, epochs=4 - a["epochs"])
    assert a["loss"] + b["loss"] == r["loss"]
    assert two.stats()["periods"] == 4
    np.testing.assert_array_equal(logits_of(two, xs), logits_of(one, xs))
    # one step short of the epoch's end: not complete, no period ended
    three = tinymp.Trainer(m, p, lr=0.002, seed=4)
    c = three.fit(xs, ys, epochs=4, progress=lambda e, done, loss, ok: done == len(xs) - 1)
    assert (c["epochs"], c["steps"], three.stats()["periods"]) == (0, len(xs) - 1, 0)


def test_cache_under_a_budget_takes_what_fits():
    m = H.demo_model()
    base = m.plan(method="last")
    for extra in (0, 1, 5):
        budget = base.arena_bytes + extra * base.cache_bytes + 2
        p = m.plan(method="last", cache=100, budget=budget)
        assert p.cache_samples == extra and p.arena_bytes <= budget
        assert p.arena_bytes - base.arena_bytes in (extra * base.cache_bytes, extra * base.cache_bytes + 2)


def test_a_cache_larger_than_an_arena_can_hold_takes_what_fits():
    # without a budget the arena is capped at 2^31 - 1 bytes: a larger request keeps as many
    # samples as fit below the cap (it used to keep none, silently)
    m = H.demo_model()
    base = m.plan()
    start = (base.arena_bytes + 3) // 4 * 4
    most = (2 ** 31 - 1 - start) // base.cache_bytes
    for n in (most, most + 1, 2 ** 32 - 1):
        p = m.plan(cache=n)
        assert p.cache_samples == most and p.arena_bytes == start + most * base.cache_bytes
    assert m.plan(cache=most - 1).cache_samples == most - 1


@pytest.mark.parametrize("args,kw,exc", [
    (lambda xs, ys: (xs, ys[:-1]), {}, ValueError),
    (lambda xs, ys: (xs[:-1] + [b"\x00" * 5], ys), {}, ValueError),
    (lambda xs, ys: (xs, ys[:-1] + [99]), {}, ValueError),
    (lambda xs, ys: (xs, ys), {"epochs": 0}, ValueError),
    (lambda xs, ys: (xs, ys), {"cache": bytearray(3)}, ValueError),
    (lambda xs, ys: (xs, ys), {"cache": "a path"}, TypeError),
    (lambda xs, ys: (xs, ys), {"progress": 3}, TypeError),
    (lambda xs, ys: (b"abc", [1]), {}, TypeError),
    (lambda xs, ys: ([], []), {}, ValueError),
])
def test_bad_input_changes_nothing(args, kw, exc):
    m = H.demo_model()
    xs, ys = samples(m, 6)
    t = tinymp.Trainer(m, m.plan(method="last"), lr=0.01, seed=1)
    before = logits_of(t, xs)
    kw = dict(kw)
    kw.setdefault("epochs", 2)
    with pytest.raises(exc, match="tinymp: "):
        t.fit(*args(list(xs), list(ys)), **kw)
    np.testing.assert_array_equal(logits_of(t, xs), before)
    assert t.stats()["steps"] == 0


class _ReadsFiles:
    """A sequence whose items come from somewhere that can fail (a file): item 2 raises `err`."""

    def __init__(self, items, err):
        self.items, self.err = items, err

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        if i == 2:
            raise self.err
        return self.items[i]


class _MyError(Exception):
    pass


class _MyValueError(ValueError):
    pass


@pytest.mark.parametrize("err", [OSError(5, "Input/output error"), _MyError("mine"),
                                 _MyValueError("tinymp: looks like ours"), IndexError("gone")],
                         ids=["oserror", "own-class", "valueerror-subclass", "indexerror"])
@pytest.mark.parametrize("which", ["xs", "ys"])
def test_an_items_own_exception_propagates_unchanged(err, which):
    # the check before the first step re-raises what the sequence raised, as it is (the board
    # does the same: it used to build an exception of the caller's class there and crash, and
    # the PC turned OSError(5) into OSError('tinymp: fit() sample 2: ...'), errno lost)
    m = H.demo_model()
    xs, ys = samples(m, 6)
    t = tinymp.Trainer(m, m.plan(method="last"), lr=0.01, seed=1)
    before = logits_of(t, xs)
    args = (_ReadsFiles(xs, err), ys) if which == "xs" else (xs, _ReadsFiles(ys, err))
    with pytest.raises(type(err)) as info:
        t.fit(*args, epochs=2)
    assert info.value is err and info.value.args == err.args
    if isinstance(err, OSError):
        assert info.value.errno == 5
    np.testing.assert_array_equal(logits_of(t, xs), before)
    assert t.stats()["steps"] == 0


@pytest.mark.parametrize("bad,exc,text", [
    (None, TypeError, "input must be a bytes-like object"),
    (b"\x00" * 5, ValueError, "input has 5 bytes"),
])
def test_the_bindings_own_sample_errors_name_the_sample(bad, exc, text):
    m = H.demo_model()
    xs, ys = samples(m, 6)
    t = tinymp.Trainer(m, m.plan(method="last"), lr=0.01, seed=1)
    with pytest.raises(exc) as info:
        t.fit(xs[:4] + [bad] + xs[5:], ys, epochs=2)
    assert type(info.value) is exc
    assert str(info.value).startswith("tinymp: fit() sample 4: " + text)
    assert t.stats()["steps"] == 0


@pytest.mark.parametrize("held", [b"", b"\x00" * 4096, b"\xa5" * 4096], ids=["empty", "zeros", "a5"])
@pytest.mark.parametrize("mode", ["wb", "rb", "ab", "a+b"])
def test_a_cache_file_not_read_and_written_in_place_trains_nothing(mode, held, tmp_path):
    # 'wb' (an easy slip for 'w+b') trained a whole epoch and then failed on the first read back;
    # 'rb' failed after one step; 'a+b' (every write appends) trained on the wrong features, in
    # silence. The file is now tried before the first step, whatever it held before.
    m = H.demo_model()
    xs, ys = samples(m, 6)
    t = tinymp.Trainer(m, m.plan(method="last"), lr=0.01, seed=1)
    before = logits_of(t, xs)
    path = tmp_path / "cache.bin"
    path.write_bytes(held)
    with open(path, mode) as f:
        with pytest.raises(ValueError, match=r"^tinymp: fit\(\) cache file must be opened 'w\+b' or 'r\+b' "
                                             r"\(read and written in place\)$"):
            t.fit(xs, ys, epochs=3, cache=f)
    assert t.stats()["steps"] == 0
    np.testing.assert_array_equal(logits_of(t, xs), before)


@pytest.mark.parametrize("mode", ["w+b", "r+b"])
def test_a_cache_file_open_for_both_trains_as_without_a_cache(mode, tmp_path):
    m = H.demo_model()
    xs, ys = samples(m, 6)
    p = m.plan(method="last")
    ref = tinymp.Trainer(m, p, lr=0.01, seed=1)
    want = ref.fit(xs, ys, epochs=3, cache=False)
    t = tinymp.Trainer(m, p, lr=0.01, seed=1)
    path = tmp_path / "cache.bin"
    path.write_bytes(b"")
    with open(path, mode) as f:
        r = t.fit(xs, ys, epochs=3, cache=f)
    assert r["loss"] == want["loss"] and r["cache_outside"] == 6 and r["cached_steps"] == 12
    np.testing.assert_array_equal(logits_of(t, xs), logits_of(ref, xs))


def test_a_text_cache_file_is_refused(tmp_path):
    m = H.demo_model()
    xs, ys = samples(m, 6)
    t = tinymp.Trainer(m, m.plan(method="last"), lr=0.01, seed=1)
    with open(tmp_path / "cache.txt", "w+") as f:
        with pytest.raises(TypeError, match="a writable buffer or a binary file"):
            t.fit(xs, ys, epochs=3, cache=f)
    assert t.stats()["steps"] == 0


class _FailingFile(io.BytesIO):
    def __init__(self, err, on="write"):
        super().__init__()
        self.err, self.on = err, on

    def write(self, b):
        if self.on == "write":
            raise self.err
        return super().write(b)

    def readinto(self, b):
        if self.on == "readinto":
            raise self.err
        return super().readinto(b)


@pytest.mark.parametrize("err,on,mode_error", [
    (OSError(errno.EBADF, "Bad file descriptor"), "readinto", True),
    (OSError(errno.EBADF), "readinto", True),  # MicroPython's OSError(errno), as a script raises it
    (OSError(errno.EACCES, "Permission denied"), "write", True),  # a FAT file opened 'rb'
    (OSError(errno.ENOSPC, "No space left on device"), "write", False),
    (_MyError("mine"), "write", False),
], ids=["ebadf", "ebadf-one-arg", "eacces", "enospc", "own-class"])
def test_a_cache_file_that_fails_its_try_trains_nothing(err, on, mode_error):
    # the file's way of saying it is not open for this becomes the one ValueError; anything else
    # (a full disk, the object's own exception) propagates unchanged, before the first step
    m = H.demo_model()
    xs, ys = samples(m, 6)
    t = tinymp.Trainer(m, m.plan(method="last"), lr=0.01, seed=1)
    before = logits_of(t, xs)
    with pytest.raises(Exception) as info:
        t.fit(xs, ys, epochs=3, cache=_FailingFile(err, on))
    if mode_error:
        assert type(info.value) is ValueError and "must be opened 'w+b' or 'r+b'" in str(info.value)
    else:
        assert info.value is err
    assert t.stats()["steps"] == 0
    np.testing.assert_array_equal(logits_of(t, xs), before)


def test_a_cache_file_is_not_tried_when_it_will_not_be_used(tmp_path):
    # one epoch (or every sample in the arena): nothing goes to the file, so it is left alone
    m = H.demo_model()
    xs, ys = samples(m, 6)
    path = tmp_path / "cache.bin"
    path.write_bytes(b"keep")
    for epochs, plan in ((1, m.plan(method="last")), (3, m.plan(method="last", cache=6))):
        t = tinymp.Trainer(m, plan, lr=0.01, seed=1)
        with open(path, "rb") as f:
            r = t.fit(xs, ys, epochs=epochs, cache=f)
        assert r["steps"] == 6 * epochs and r["cache_outside"] == 0
    assert path.read_bytes() == b"keep"


def test_progress_exception_propagates_after_whole_steps():
    m = H.demo_model()
    xs, ys = samples(m, 6)
    t = tinymp.Trainer(m, m.plan(method="last"), lr=0.01, seed=1)

    def boom(e, d, loss, ok):
        if d == 3:
            raise KeyError("stop here")
    with pytest.raises(KeyError):
        t.fit(xs, ys, epochs=2, progress=boom)
    assert t.stats()["steps"] == 3


def test_a_long_run_stopped_early_reserves_nothing_per_epoch():
    # the per-epoch figures are kept as epochs end (docs/API.md), as on the board: the PC used
    # to reserve 16 bytes per epoch up front, 1.6 MB for epochs=100000, before the first step
    m = H.demo_model()
    xs, ys = samples(m, 4)
    t = tinymp.Trainer(m, m.plan(method="last"), lr=0.01, seed=1)
    ref = tinymp.Trainer(m, m.plan(method="last"), lr=0.01, seed=1)
    want = ref.fit(xs, ys, epochs=2, cache=False)
    held = []

    def progress(epoch, done, loss, correct):
        held.append(tracemalloc.get_traced_memory()[0])
        return epoch == 1 and done == 2
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        r = t.fit(xs, ys, epochs=100000, cache=False, progress=progress)
    finally:
        tracemalloc.stop()
    assert r["steps"] == 6 and r["epochs"] == 1 and r["stopped"]
    assert max(held) - start < 100000 // 10, max(held) - start
    # the figures: epoch 0's whole, epoch 1's two steps, as the uninterrupted run's first
    assert r["loss"][0] == want["loss"][0] and r["accuracy"][0] == want["accuracy"][0]
    assert len(r["loss"]) == len(r["accuracy"]) == 2


def test_prediction_is_the_steps_own_and_goes_with_reset_and_load(tmp_path):
    """Trainer.prediction: predict() just before the step, for every step of a run with APU
    periods ending inside steps; -1 before any step and after reset() or load()."""
    m = model_of("demo")
    xs, ys = samples(m, 6)
    t = tinymp.Trainer(m, m.plan(method="tinymp", budget=16 * 1024), lr=0.01, seed=3, period=4)
    assert t.prediction == -1
    for k in range(15):
        x, y = xs[k % 6], ys[k % 6]
        want = t.predict(x)
        t.step(x, y)
        assert t.prediction == want, k
    path = str(tmp_path / "p.bin")
    t.save(path)
    t.reset()
    assert t.prediction == -1
    t.step(xs[0], ys[0])
    assert t.prediction >= 0
    t.load(path)
    assert t.prediction == -1


# ---- on MicroPython: fit(cache=True) when the heap cannot hold every sample's features
#
# These run build/unix/micropython (and build/unix-float/micropython) with tinymp, as
# tests/test_sigint.py does (make firmware BOARD=UNIX MICROPY_DIR=..., which
# tests/test_micropython.py runs), and are skipped without it.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "host", "tinymp", "models", "demo.tmpm")
FIT_HEAP_RESERVE = 2048  # what the buffer of cache=True leaves free for the run (docs/API.md)

# Fills the heap but for one hole of HOLE bytes, then runs fit(cache=True): the binding's buffer
# must come out of that hole. The reference is the same run without any cache.
HEAP_SCRIPT = r'''
import gc, sys, tinymp
m = tinymp.Model(open(sys.argv[1], "rb").read())
N, K, E, HOLE = int(sys.argv[2]), int(sys.argv[3]), 3, int(sys.argv[4])
opts = {"method": "sparse", "layers": [12, 15], "ratios": [0.5, 0.25]}
h, w, c = m.input_shape
xs = [bytes(((i * 37 + k * 11) & 0xFF) for i in range(h * w * c)) for k in range(N)]
ys = [k % m.num_classes for k in range(N)]
t0 = tinymp.Trainer(m, m.plan(**opts), lr=0.002, seed=5)
r0 = t0.fit(xs, ys, epochs=E, cache=False)
out0 = [list(t0.logits(x)) for x in xs]
p = m.plan(cache=K, **opts)
t = tinymp.Trainer(m, p, lr=0.002, seed=5)
junk = [None] * 4096
gc.collect()
hole = bytearray(HOLE)
j = 0
size = 1 << 16
while size >= 16:
    try:
        junk[j] = bytearray(size)
        j += 1
    except MemoryError:
        size //= 2
hole = None
r = t.fit(xs, ys, epochs=E)
junk = None
gc.collect()
out = [list(t.logits(x)) for x in xs]
print(p.cache_bytes, p.cache_samples, r["cache_in_arena"], r["cache_outside"], r["cached_steps"],
      r["loss"] == r0["loss"], r["accuracy"] == r0["accuracy"], out == out0)
'''


def _micropythons():
    found = []
    for sub in ("unix", "unix-float"):
        exe = os.path.join(ROOT, "build", sub, "micropython")
        if os.path.isfile(exe) and subprocess.run([exe, "-c", "import tinymp; tinymp.Trainer.fit"],
                                                  capture_output=True, timeout=30).returncode == 0:
            found.append(exe)
    return found


@pytest.mark.parametrize("exe", _micropythons() or [None],
                         ids=lambda e: "none" if e is None else os.path.basename(os.path.dirname(e)))
def test_micropython_cache_true_takes_what_the_heap_has(exe, tmp_path):
    if exe is None:
        pytest.skip("needs build/unix/micropython with tinymp (make firmware BOARD=UNIX MICROPY_DIR=...)")
    script = tmp_path / "heap.py"
    script.write_text(HEAP_SCRIPT)
    n, k, cb = 12, 2, 1024
    # room for 4.5 samples beyond the reserve: 4 of the 10 samples the arena does not hold
    hole = FIT_HEAP_RESERVE + 4 * cb + cb // 2
    r = subprocess.run([exe, "-X", "heapsize=512k", str(script), DEMO, str(n), str(k), str(hole)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    got = r.stdout.split()
    assert got[:3] == [str(cb), str(k), str(k)], got
    outside, cached = int(got[3]), int(got[4])
    # as many as the hole holds (the board used to ask for all 12 samples' room at once, and
    # got none), not all of them, and the run trains exactly as one without the cache
    assert (hole - FIT_HEAP_RESERVE) // cb <= outside < n - k
    assert cached == (k + outside) * 2
    assert got[5:] == ["True", "True", "True"]


def test_progress_can_checkpoint_but_not_change_the_trainer(tmp_path):
    """A save() from progress is a checkpoint of the steps so far: the file a loop of step()
    calls saves at the same point. A call that changes the trainer is refused (load() before it
    reads its file) and the run goes on as without it."""
    m = H.demo_model()
    xs, ys = samples(m, 6)
    plan = m.plan(method="tinymp", budget=16 * 1024)
    ck = tmp_path / "ck.tmps"
    got = []

    def progress(epoch, done, loss, correct):
        if (epoch, done) == (1, 4):
            t.save(str(ck))
            for call in (lambda: t.load(str(tmp_path / "absent.tmps")), lambda: t.step(xs[0], ys[0]),
                         lambda: t.fit(xs, ys), t.reset, t.end_period):
                with pytest.raises(RuntimeError, match="refused: this trainer's fit\\(\\) is running") as e:
                    call()
                got.append(str(e.value).split(" refused")[0])

    t = tinymp.Trainer(m, plan, lr=0.002, seed=5)
    t.fit(xs, ys, epochs=3, shuffle=False, progress=progress)
    assert got == ["tinymp: load()", "tinymp: training step", "tinymp: fit()", "tinymp: reset", "tinymp: end of period"]
    ref, _ = manual_run(m, plan, xs, ys, 1)
    for x, y in zip(xs[:4], ys[:4]):
        ref.step(x, y)
    ref.save(str(tmp_path / "ref.tmps"))
    assert ck.read_bytes() == (tmp_path / "ref.tmps").read_bytes()
    undisturbed, _ = manual_run(m, plan, xs, ys, 3)
    np.testing.assert_array_equal(logits_of(t, xs), logits_of(undisturbed, xs))
    t.step(xs[0], ys[0])  # usable once fit() returned


def test_a_save_from_inside_a_probe_is_refused_and_writes_nothing(tmp_path):
    """During an APU probe the selections are probe groups: a save() from the items the probe
    fetches would write them, so it is refused before any file is opened; fit() raises that error
    after ending the period as without the probe, and the trainer saves once fit() returned."""
    m = H.demo_model()
    xs, ys = samples(m, 6)
    plan = m.plan(method="tinymp", budget=16 * 1024)
    path = tmp_path / "inside.tmps"
    calls = []

    class Saving:
        def __len__(self):
            return len(xs)

        def __getitem__(self, i):
            calls.append(i)
            if len(calls) > 2 * len(xs):  # the check before the run, the epoch, then the probe
                t.save(str(path))
            return xs[i]

    t = tinymp.Trainer(m, plan, lr=0.002, seed=5)
    with pytest.raises(RuntimeError, match="^tinymp: save refused: this trainer's fit\\(\\) is running"):
        t.fit(Saving(), ys, epochs=1, probe=2)
    assert not path.exists() and not list(tmp_path.iterdir())
    assert t.stats()["steps"] == len(xs) and t.stats()["periods"] == 1
    carry = tinymp.Trainer(m, plan, lr=0.002, seed=5)
    carry.fit(xs, ys, epochs=1)  # the period ended as without the probe
    assert t.selection == carry.selection
    t.save(str(path))
    assert path.exists()
