"""The core's buffer placement (core/tmp_place.c), shared by the inference and training planners,
against a brute-force reading of its specification (tmp_place.h): buffers in decreasing size, then
earlier first step, then lower index; each at the lowest offset where it overlaps no buffer
already placed that is alive at some same step; size 0 means no buffer (offset 0).

The reference tries every candidate offset (0 and the end of every conflicting buffer) in
increasing order and checks the overlap directly, so it shares nothing with the C code's sweep
or sort. The planners call this function for every layout they try (docs/PLANNER.md)."""
import ctypes as C

import numpy as np
import pytest

import train_kernels_ctypes as tkc


class Buf(C.Structure):
    _fields_ = [("size", C.c_uint32), ("offset", C.c_uint32), ("first", C.c_int32),
                ("last", C.c_int32)]


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    src = [s for s in tkc.SOURCES if s.endswith("tmp_place.c")]
    lib = C.CDLL(tkc.build_library(tmp_path_factory.mktemp("place"), sources=src))
    fn = lib.tmp_place
    fn.restype = C.c_uint64
    fn.argtypes = [C.POINTER(Buf), C.c_int32, C.POINTER(C.c_uint16), C.POINTER(C.c_uint16)]

    def run(bufs):
        n = len(bufs)
        arr = (Buf * max(n, 1))(*[Buf(s, 12345, f, l) for s, f, l in bufs])
        order = (C.c_uint16 * max(n, 1))()
        placed = (C.c_uint16 * max(n, 1))()
        arena = fn(arr, n, order, placed)
        return arena, [arr[i].offset for i in range(n)]
    return run


def reference(bufs):
    order = sorted((i for i, b in enumerate(bufs) if b[0] > 0),
                   key=lambda i: (-bufs[i][0], bufs[i][1], i))
    offsets = [0] * len(bufs)
    done = []
    for i in order:
        size, first, last = bufs[i]
        conflicts = [j for j in done if bufs[j][1] <= last and first <= bufs[j][2]]
        for cand in sorted({0} | {offsets[j] + bufs[j][0] for j in conflicts}):
            if all(cand + size <= offsets[j] or offsets[j] + bufs[j][0] <= cand
                   for j in conflicts):
                offsets[i] = cand
                break
        done.append(i)
    arena = max((offsets[i] + bufs[i][0] for i in done), default=0)
    return arena, offsets


def random_bufs(rng, n, steps, sizes):
    out = []
    for _ in range(n):
        first = int(rng.integers(0, steps))
        last = int(rng.integers(first, steps))
        out.append((int(rng.choice(sizes)), first, last))
    return out


@pytest.mark.parametrize("seed", range(60))
def test_placement_matches_the_specification(place, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 120))
    steps = int(rng.integers(1, 40))
    # few distinct sizes and steps, so that ties in size and first step are common; zeros too
    sizes = [0] + [4 * int(v) for v in rng.integers(1, 64, size=int(rng.integers(1, 6)))]
    bufs = random_bufs(rng, n, steps, sizes)
    assert place(bufs) == reference(bufs)


def test_planner_sized_tables(place):
    """Tables as large as a 64-layer model's training plan (over a thousand entries, most of them
    empty), with lifetimes spanning the whole step, one step, or a few."""
    rng = np.random.default_rng(7)
    for _ in range(3):
        bufs = []
        for _ in range(1100):
            kind = rng.integers(0, 4)
            if kind == 0:
                bufs.append((0, 0, 0))
            elif kind == 1:
                bufs.append((4 * int(rng.integers(1, 400)), 0, 127))
            else:
                f = int(rng.integers(0, 128))
                bufs.append((4 * int(rng.integers(1, 5000)), f, min(127, f + int(rng.integers(0, 6)))))
        assert place(bufs) == reference(bufs)


def test_no_buffers(place):
    assert place([]) == (0, [])
    assert place([(0, 0, 3), (0, 1, 1)]) == (0, [0, 0])
