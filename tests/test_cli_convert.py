"""`tinymp convert` on the command line: .tflite and .onnx files in, a validated .tmpm out, and
bad input refused with one line and nothing written."""
import os
import subprocess
import sys

import numpy as np
import pytest

import tinymp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def run(*args):
    r = subprocess.run([sys.executable, "-m", "tinymp.cli", "convert", *args],
                       capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


def test_convert_tflite_file(tmp_path):
    pytest.importorskip("tflite", reason="needs the tflite package")
    pytest.importorskip("ai_edge_litert.interpreter", reason="needs ai-edge-litert")
    import test_convert_tflite as t
    src = tmp_path / "a.tflite"
    src.write_bytes(t.model_a()[0])  # (flatbuffer, logits tensor index)
    out = tmp_path / "a.tmpm"
    code, stdout, err = run(str(src), "-o", str(out), "--classes", ",".join(f"c{i}" for i in range(6)))
    assert code == 0, err
    m = tinymp.Model(out.read_bytes())
    assert f"wrote {out}" in stdout and str(m.inference_arena_bytes) in stdout.replace(",", "")
    assert m.class_names == tuple(f"c{i}" for i in range(6))


def test_convert_onnx_file_with_calibration(tmp_path):
    onnx = pytest.importorskip("onnx", reason="needs the onnx package")
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    import test_convert_torch_onnx as t
    model = t._handmade_onnx(onnx, "reducemean")
    src = tmp_path / "m.onnx"
    src.write_bytes(model.SerializeToString())
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).random((16, 3, 8, 8), dtype=np.float32))
    out = tmp_path / "m.tmpm"
    code, stdout, err = run(str(src), "-o", str(out), "--calib", str(calib))
    assert code == 0, err
    assert tinymp.Model(out.read_bytes()).input_shape == (8, 8, 3)


@pytest.mark.parametrize("case", ["missing", "garbage", "bad-calib", "onnx-without-calib"])
def test_convert_bad_input_one_line_nothing_written(tmp_path, case):
    out = tmp_path / "out.tmpm"
    args = []
    if case == "missing":
        args = [str(tmp_path / "nope.onnx"), "-o", str(out)]
    elif case == "garbage":
        src = tmp_path / "x.onnx"
        src.write_bytes(b"\x00garbage" * 10)
        args = [str(src), "-o", str(out), "--calib", str(tmp_path / "c.npy")]
        np.save(tmp_path / "c.npy", np.zeros((2, 3, 8, 8), np.float32))
    elif case == "bad-calib":
        src = tmp_path / "x.onnx"
        src.write_bytes(b"\x00garbage")
        (tmp_path / "c.npy").write_bytes(b"not numpy")
        args = [str(src), "-o", str(out), "--calib", str(tmp_path / "c.npy")]
    else:
        onnx = pytest.importorskip("onnx", reason="needs the onnx package")
        import test_convert_torch_onnx as t
        src = tmp_path / "m.onnx"
        src.write_bytes(t._handmade_onnx(onnx, "reducemean").SerializeToString())
        args = [str(src), "-o", str(out)]
    code, stdout, err = run(*args)
    assert code == 2, (stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinymp"), err
    assert not out.exists() and not list(tmp_path.glob("out.tmpm.tmp-*"))
