"""Bad input to the model converters, through `tinymp convert` and tinymp.convert.convert.

The project's rule for input from outside (model files, calibration samples, arguments): it is
either converted, or refused with exit status 2 and ONE line on stderr that starts 'tinymp:'
(ConversionError, 'tinymp convert:' from Python) -- no traceback, no warning lines, no output
file left behind, no allocation or run time driven by a damaged size or count in the file.

* calibration samples: huge values, values beyond float32, NaN / infinity, a range too narrow
  to quantise; weights that are NaN, infinite, or overflow float32 once BatchNorm is folded;
* damaged .onnx files: unreadable initializers, sizes that would make numpy allocate
  gigabytes (padding, ConstantOfShape / Expand / Range), zero strides, zero dimensions,
  names that are not UTF-8 or hold a newline, graphs onnxruntime refuses to run;
* damaged .tflite files: tensor indices out of range, constant data shorter than its shape,
  inconsistent quantisation scales, vectors that overlap, long chains of ops;

The command runs in this process (tinymp.cli.main) with output captured at the file-descriptor
level, so a line a native library (onnxruntime) writes to stderr counts as well. onnx,
onnxruntime, tflite and PyTorch are optional: what needs one is skipped without it.
"""
import os
import sys
import warnings

import numpy as np
import pytest

from tinymp import cli
from tinymp.convert import ConversionError

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

MAX_SECONDS = 2.0            # per conversion
MAX_ALLOCATED = 64 << 20     # bytes numpy / Python may allocate for one refused model


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _onnx():
    onnx = pytest.importorskip("onnx", reason="onnx is optional (pip install onnx onnxruntime)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is optional")
    return onnx


def _tflite_tests():
    pytest.importorskip("tflite", reason="the TFLite importer needs `pip install tflite`")
    pytest.importorskip("flatbuffers", reason="the TFLite importer needs flatbuffers")
    pytest.importorskip("ai_edge_litert.interpreter", reason="test_convert_tflite needs it")
    import test_convert_tflite
    return test_convert_tflite


def _handmade(variant="reducemean"):
    """The hand-written ONNX model of tests/test_convert_torch_onnx.py (a ModelProto)."""
    onnx = _onnx()
    import test_convert_torch_onnx
    return test_convert_torch_onnx._handmade_onnx(onnx, variant)


def _calib(n=8, scale=1.0, dtype=np.float32):
    return (np.random.default_rng(0).random((n, 3, 8, 8)) * scale).astype(dtype)


def run_cli(capfd, *args):
    """`tinymp convert ARGS` in this process: (status, stdout, stderr lines, warnings)."""
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = cli.main(["convert", *map(str, args)])
    out, err = capfd.readouterr()
    return status, out, err.splitlines(), [f"{w.category.__name__}: {w.message}" for w in caught]


def refused(capfd, tmp_path, args, out):
    """Run the command, check it was refused by the rule; returns its one line."""
    status, stdout, err, warned = run_cli(capfd, *args, "-o", out)
    assert status == 2, (status, err)
    assert len(err) == 1 and err[0].startswith("tinymp:"), err
    assert not warned, warned
    assert not os.path.exists(out)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    return err[0]


def refuse_onnx(capfd, tmp_path, model, calib=None, extra=()):
    """Write ``model`` (a ModelProto or bytes) and ``calib``, run the command, expect a refusal;
    returns the line."""
    src = tmp_path / "m.onnx"
    src.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    np.save(tmp_path / "c.npy", _calib() if calib is None else calib)
    return refused(capfd, tmp_path, [src, "--calib", tmp_path / "c.npy", *extra],
                   tmp_path / "out.tmpm")


def _init(model, name):
    return next(i for i in model.graph.initializer if i.name == name)


def _set_init(model, name, value):
    from onnx import numpy_helper
    _init(model, name).CopyFrom(numpy_helper.from_array(np.asarray(value), name))


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


# --------------------------------------------------------------------------------------------
# ConversionError
# --------------------------------------------------------------------------------------------

def test_a_conversion_error_is_always_one_line():
    # whatever reaches the message (a node name, onnxruntime's multi-line, coloured text)
    e = ConversionError("tinymp convert: layer 'a\nb' failed:\n  \x1b[1;31mError\x1b[m\rin\x00x")
    assert str(e) == "tinymp convert: layer 'a b' failed: Error in\\x00x"
    assert isinstance(e, ValueError)
