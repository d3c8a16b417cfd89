"""The caller-side feature cache of the engine's personalisation run (tmp_fit_io), in C: the
program tests/fit_io_check.c is built with the whole core under the address and
undefined-behaviour sanitizers and run on the demo model. Its reference is the same fit without
any cache: with the callbacks set and `cache_end` 0 (none), a few samples, every sample, past the
last sample, and with a store that fails part way, the losses and trained logits must be those of
the reference bit for bit, and the callbacks may touch only the samples the caller said its cache
holds (cache_samples <= i < cache_end).

It also has every callback call the trainer whose fit runs it (a binding's user code can): the
calls that only read it work between steps and are refused inside a step or an APU probe, the
calls that change it are always refused (TMP_ERR_BUSY), and the run ends exactly as the same run
without those calls."""
import os
import subprocess

import train_kernels_ctypes as tkc
from tinymp import bench

HERE = os.path.dirname(os.path.abspath(__file__))


def test_fit_touches_only_the_samples_the_callers_cache_holds(tmp_path):
    exe = str(tmp_path / "fit_io_check")
    env = tkc.build_check_program(os.path.join(HERE, "fit_io_check.c"), exe)
    model = tmp_path / "demo.tmpm"
    model.write_bytes(bench.model_bytes("demo"))
    r = subprocess.run([exe, str(model), "3"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "FAIL" not in r.stdout, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 8 and all(" ok: " in l for l in lines), r.stdout
    assert [l.split(" ok: ")[1].split(",")[0] for l in lines[6:]] == ["probe 0", "probe 2"], lines
    # cache_end 0 with the callbacks set: none of them called (it meant "all samples" before)
    assert "callbacks, cache_end 0" in lines[1] and " 0 stores, 0 loads" in lines[1], lines[1]
