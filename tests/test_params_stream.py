"""Saved parameters written and read in pieces, in C: the program tests/params_stream_check.c is
built with the whole core under the address and undefined-behaviour sanitizers and run on the
demo model and on a small model whose trainable layers have odd channel counts (padded
selection records). The board's Trainer.save / load go through these calls with a 512-byte buffer, so
they never hold the whole blob (as large as the trained parameters). The reference is the
program's own reading of the format (docs/TRAINING.md): the save and the piecewise writer, at
every piece size, must write its bytes; on thousands of damaged blobs the one-buffer load and the
piecewise reader must give its verdict and message, the reader never touching the arena in its
checking pass. A trainer that loads the blob goes on exactly as the saved one (equal losses and
blobs after five more steps). A version-1 blob, a blob of the same method saved with other
momentum or ratio, and one whose momentum or selection records are missing or resized load the
parameters alone: the training state becomes a fresh trainer's, the counters go on."""
import os
import subprocess

import pytest

import train_kernels_ctypes as tkc
from tinymp import bench

HERE = os.path.dirname(os.path.abspath(__file__))


def odd_model():
    """pwconv 5->5, pwconv 5->7, average pool, fc 7->3 (random weights that train): every
    trainable layer has an odd input channel count, so a selection record's ages and exclusion
    counts end in padding bytes (the demo's layers have multiples of 4)."""
    import numpy as np
    import kernel_models as km
    data, _ = km.conv_like(np.random.default_rng(0), "pwconv", 6, 6, 5, 7, 1, (1, 1), (0, 0, 0, 0),
                           prefix_pw=True)
    return data


@pytest.mark.parametrize("which", ["demo", "odd channels"])
def test_params_in_pieces_agree_with_the_whole_blob(tmp_path, which):
    exe = str(tmp_path / "params_stream_check")
    env = tkc.build_check_program(os.path.join(HERE, "params_stream_check.c"), exe)
    model = tmp_path / "model.tmpm"
    model.write_bytes(bench.model_bytes("demo") if which == "demo" else odd_model())
    r = subprocess.run([exe, str(model), "6"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "FAIL" not in r.stdout, r.stdout + r.stderr
    ok = [l for l in r.stdout.splitlines() if " ok: " in l]
    # nine option sets, then two plans from the TinyTrain selection pass (tinytrain's own and
    # tinymp's from support samples)
    assert len(ok) == 11, r.stdout
    assert ok[-2].startswith("tinytrain ") and ok[-1].startswith("tinymp r=4 support "), r.stdout
    for l in ok:
        # every configuration had damaged copies that loaded (a value edit in int8 weights, say)
        # and many that did not, and loads of the parameters without the training state (blobs
        # of other momentum or ratio, a version-1 blob, state records left out or resized)
        loaded = int(l.split(" of them loaded")[0].split(", ")[-1])
        fresh = int(l.split(" loads without the training state")[0].split(", ")[-1])
        assert 0 < loaded < 1000 and fresh > 0, l
        # every padding byte of the selection records was set once: ages and exclusion counts
        # end in padding only with odd channel counts
        if which == "odd channels" and " 0 selection records" not in l:
            assert int(l.split(" padding bytes")[0].split(", ")[-1]) >= 10, l
