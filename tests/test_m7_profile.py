"""tinymp.m7profile: per-function instruction profile of a training call on the emulated M7.

The log parser is checked on a hand-written QEMU log; the whole tool on the demo model, where its
total (counted block by block from QEMU's execution log) must agree with the training bench's
timer-based count of the same call, an independent measurement.
"""
import os
import shutil
import subprocess
import sys

import pytest

from tinymp import bench, m7profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SYMS = [(0x100, "run_step_cached"), (0x120, "tmp_trainer_step_cached"), (0x200, "kernel"),
        (0x300, "bench_run_timed"), (0x340, "other")]


def _block(addr, n):
    return ["IN: x"] + ["0x%08x:  bf00      nop" % (addr + 2 * i) for i in range(n)] + [""]


def _trace(pc):
    return "Trace 0: 0x7f0000001000 [00000000/%08x/00000000/ff020000] x" % pc


def test_profile_lines_counts_only_inside_the_call():
    log = (_block(0x300, 3) + _block(0x100, 4) + _block(0x120, 5) + _block(0x200, 7) +
           _block(0x110, 2) + _block(0x340, 9))
    run = [_trace(0x300), _trace(0x340),                                     # outside: ignored
           _trace(0x100), _trace(0x120), _trace(0x200), _trace(0x200), _trace(0x110),
           _trace(0x300), _trace(0x340),                                     # back in the harness
           _trace(0x100), _trace(0x120), _trace(0x200), _trace(0x110), _trace(0x300)]
    prof, calls = m7profile.profile_lines(log + run, SYMS, "run_step_cached")
    assert calls == 2
    # per call: wrapper 4 + 2 (its return block), trainer 5, kernel 7 (twice in the first call)
    assert prof == {"run_step_cached": 12, "tmp_trainer_step_cached": 10, "kernel": 21}


def test_profile_lines_needs_the_symbols():
    with pytest.raises(bench.BenchError):
        m7profile.profile_lines([], [(0x100, "main")], "run_step_cached")


_missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm", "make") if shutil.which(t) is None]


@pytest.mark.skipif(bool(_missing), reason="%s not installed: the M7 bench needs them" % ", ".join(_missing))
def test_profile_total_equals_the_bench_count(tmp_path):
    r = subprocess.run(["make", "-s", "-C", ROOT, "bench-train-elf"], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    prof, calls = m7profile.run("demo", "tinymp r=4", "cached", progress=lambda s: None)
    assert calls == 2
    total = sum(prof.values())
    assert prof["tmp_trainer_step_cached"] > 0 and prof["tmp_pwconv_s8"] > 0
    # the bench's own count of the same calls (timer, harness offset removed)
    import tinymp
    m = tinymp.Model(bench.model_bytes("demo"))
    (opts,) = [o for lab, o, _ in bench.configs(m, "demo") if lab == "tinymp r=4"]
    xs, ys = bench.make_samples(m, 2)
    mp, sp = tmp_path / "m.tmpm", tmp_path / "m.samples"
    mp.write_bytes(bench.model_bytes("demo"))
    sp.write_bytes(b"".join(bytes([y]) + x for x, y in zip(xs, ys)))
    qemu, elf = bench.find_tools(ROOT)
    res = bench.run_m7(qemu, elf, str(mp), str(sp), opts, 0, steps=0, cached=2, run=None)
    want = res["cached_step"]["mean"]
    # the profile counts a block again when QEMU restarts it for a device access (the timer reads
    # of the trainer's phase clock), so it may run a little high, never low
    assert want <= total <= want * 1.01, (total, want)
    # plan(): the planner's own code, counted on the M7 (its set-up of a run)
    prof, calls = m7profile.run("demo", "tinymp r=4", "plan", progress=lambda s: None)
    assert calls == 1 and prof["tmp_place"] > 0 and "tmp_pwconv_s8" not in prof
    plan = sum(prof.values())
    assert res["plan_instructions"] <= plan <= res["plan_instructions"] * 1.01, (plan, res["plan_instructions"])


def test_cli_rejects_bad_arguments():
    p = subprocess.run([sys.executable, "-m", "tinymp.m7profile", "--top", "0"], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 2 and "--top" in p.stderr
    p = subprocess.run([sys.executable, "-m", "tinymp.m7profile", "--model", "nope"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "invalid choice" in p.stderr
