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
* a seeded mutation fuzz of small valid .onnx and .tflite files (built the way
  tests/test_convert_torch_onnx.py and tests/test_convert_tflite.py build them): byte flips,
  truncation, inserted bytes, 32-bit fields set to extreme values, long varints, copied blocks,
  and edits of the model's structure (dims, attributes, indices, data types, cycles).

The command runs in this process (tinymp.cli.main) with output captured at the file-descriptor
level, so a line a native library (onnxruntime) writes to stderr counts as well. onnx,
onnxruntime, tflite and PyTorch are optional: what needs one is skipped without it.
"""
import contextlib
import copy
import math
import os
import random
import struct
import sys
import time
import tracemalloc
import warnings

import numpy as np
import pytest

import tinymp
from tinymp import cli
from tinymp.convert import ConversionError, convert

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


@contextlib.contextmanager
def traced():
    """Trace Python's and numpy's allocations in the block: the list it gives holds their peak
    in bytes once the block is left."""
    peak = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


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


# --------------------------------------------------------------------------------------------
# calibration samples and float weights
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1e30, 1e20])
def test_huge_calibration_values_name_the_layer_and_the_range(capfd, tmp_path, scale):
    # the first layer's input range is ~1e30 wide, its output (ReLU6) 6: the requantisation
    # multiplier cannot be stored. The message said 'quantize_multiplier: multiplier
    # np.float64(1.8e+27) too large (shift 91 > 30)'.
    line = refuse_onnx(capfd, tmp_path, _handmade(), _calib(scale=scale))
    assert line.startswith("tinymp: layer 'conv_same+bn+relu6' (op Conv) cannot be quantised: "
                           "its input range [")
    assert f"the calibration samples span [{_calib(scale=scale).min():.3g}, " in line
    assert "pixels / 255" in line and "shift" not in line and "np.float64" not in line


def test_an_input_range_too_wide_is_named(capfd, tmp_path):
    line = refuse_onnx(capfd, tmp_path, _handmade(), extra=["--input-range", "0", "1e30"])
    assert line.startswith("tinymp: layer 'conv_same+bn+relu6' (op Conv) cannot be quantised")
    assert "the input range given is [0, 1e+30] (input_range / --input-range)" in line


def test_calibration_values_beyond_float32(capfd, tmp_path):
    # float64 samples of 1e300 became float32 infinity with a RuntimeWarning printed first
    line = refuse_onnx(capfd, tmp_path, _handmade(), _calib(scale=1e300, dtype=np.float64))
    assert line.startswith("tinymp: calib holds values up to 1e+300, beyond float32")


def test_calibration_values_that_overflow_inside_the_model(capfd, tmp_path):
    # finite float32 samples near its maximum overflow in the first convolution: the warnings
    # of the float forward pass came first, then a message that did not say why
    line = refuse_onnx(capfd, tmp_path, _handmade(), _calib(scale=3e38))
    assert line.startswith("tinymp: the ONNX model outputs non-finite values (infinity or NaN) "
                           "on the calibration samples, which span [")
    assert "pixels / 255" in line


def test_nan_in_calibration_says_which_sample(capfd, tmp_path):
    x = _calib()
    x[3, 1, 2, 2] = np.nan
    x[5, 0, 0, 0] = -np.inf
    line = refuse_onnx(capfd, tmp_path, _handmade(), x)
    assert line == ("tinymp: calib contains 2 non-finite values (NaN or infinity), the first in "
                    "sample 3: remove or repair those samples")


def test_calibration_too_narrow_to_quantise(capfd, tmp_path):
    # every sample within 1e-8 of 0: quantised to int8 they would all be the same input, and
    # the model converted without a word
    line = refuse_onnx(capfd, tmp_path, _handmade(), _calib(scale=1e-8))
    assert line.startswith("tinymp: calib span only [")
    assert "every sample would be the same input" in line


@pytest.mark.parametrize("given,says", [
    (["--input-range", "0", "1e-9"], "tinymp: the input range [0, 1e-09] is less than 1e-6 wide"),
    ((0.0, math.inf), "tinymp convert: input_range must be two finite numbers (lo, hi) with "
                      "lo < hi, got (0, inf)"),
    ((0.0, "one"), "tinymp convert: input_range must be two numbers (lo, hi), got (0.0, 'one')"),
])
def test_an_input_range_that_cannot_quantise_is_refused(capfd, tmp_path, given, says):
    # a range narrower than 1e-6 was widened to [0, 1] without a word; infinite or text
    # bounds failed deep in the quantiser ('activation range [0.0, inf] is not finite')
    if isinstance(given, list):
        line = refuse_onnx(capfd, tmp_path, _handmade(), extra=given)
    else:
        with pytest.raises(ConversionError) as e:
            convert(_handmade().SerializeToString(), _calib(), input_range=given)
        line = str(e.value)
    assert line.startswith(says), line


@pytest.mark.parametrize("init,value,layer", [
    ("w1", np.nan, "'conv_same' (op Conv)"),
    ("wm", np.inf, "'matmul' (op MatMul)"),
    ("b1", -np.inf, "'conv_same' (op Conv)"),
])
def test_non_finite_onnx_weights_name_the_layer(capfd, tmp_path, init, value, layer):
    # said 'the ONNX model outputs non-finite values on the calibration samples'
    from onnx import numpy_helper
    model = _handmade()
    w = numpy_helper.to_array(_init(model, init)).copy()
    w.reshape(-1)[1] = value
    _set_init(model, init, w)
    line = refuse_onnx(capfd, tmp_path, model)
    assert line.startswith(f"tinymp: layer {layer} has non-finite weights or bias (NaN or "
                           "infinity)")


def test_weights_beyond_float32_once_batchnorm_is_folded(capfd, tmp_path):
    # a BatchNorm scale of 3e38 over a small variance: the folded weights are ~1e40; the float
    # check saw NaN and blamed the converter ('an operator was mapped wrongly - please report')
    model = _handmade()
    _set_init(model, "bn_s", np.full(8, 3e38, np.float32))
    _set_init(model, "bn_v", np.full(8, 1e-6, np.float32))
    line = refuse_onnx(capfd, tmp_path, model)
    assert line.startswith("tinymp: layer 'conv_same+bn+relu6' (op Conv) has weights or a bias "
                           "beyond float32")
    assert "please report" not in line


def test_non_finite_pytorch_weights_name_the_layer():
    torch = pytest.importorskip("torch", reason="PyTorch is optional")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3))
    with torch.no_grad():
        model[4].weight[1, 2] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConversionError) as e:
            convert(model, _calib())
    assert str(e.value).startswith("tinymp convert: layer '4' (op Linear) has non-finite "
                                   "weights or bias")


@pytest.mark.parametrize("pad", [10 ** 12, 3_000_000])
def test_padding_no_tensor_can_hold_is_refused_at_once(capfd, tmp_path, pad):
    # a damaged Pad gave a feature map of 8 x 6 x 10^12; the per-channel check of the Mul after
    # it compared that broadcast in full: a MemoryError traceback (a pad of 3 million was
    # carried through the graph and refused later, as an add of mismatched shapes)
    model = _handmade()
    _set_init(model, "pads", np.array([0, 0, 1, pad, 0, 0, 1, 1], np.int64))
    with traced() as peak:
        line = refuse_onnx(capfd, tmp_path, model)
    peak = peak[0]
    assert line.startswith(f"tinymp: layer 'pad' (op Pad) gives a tensor of shape ('N', 8, 6, "
                           f"{pad + 5}): tinymp tensors have 1 ... 65535 rows, columns and "
                           "channels and at most 2^24 values"), line
    assert peak < MAX_ALLOCATED, f"{peak:,} bytes allocated"


def test_a_saved_pytorch_model_is_recognised(capfd, tmp_path):
    src = tmp_path / "model.pt"
    src.write_bytes(b"PK\x03\x04" + bytes(60))       # torch.save writes a zip archive
    np.save(tmp_path / "c.npy", _calib())
    line = refused(capfd, tmp_path, [src, "--calib", tmp_path / "c.npy"], tmp_path / "o.tmpm")
    assert line.startswith(f"tinymp: '{src}' looks like a saved PyTorch model (.pt / .pth)")
    assert "tinymp.convert.convert(model, calib)" in line


# --------------------------------------------------------------------------------------------
# damaged .onnx files, one damage at a time
# --------------------------------------------------------------------------------------------

def _insert_const(model, op, inputs, feeds, extra_inits, **attrs):
    """Insert a node computing a constant from new initializers; it replaces the input
    ``feeds`` = (node name, input index) of an existing node."""
    from onnx import helper, numpy_helper
    for k, v in extra_inits.items():
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(v), k))
    model.graph.node.insert(0, helper.make_node(op, inputs, ["big"], name="big", **attrs))
    node, i = feeds
    _node(model, node).input[i] = "big"


def _damage(case):
    """The hand-written model with one damage, and the start of the expected line."""
    model = _handmade("gemm" if case == "reshape_beyond_rank" else "reducemean")
    if case == "constant_of_shape":
        _insert_const(model, "ConstantOfShape", ["shp"], ("mul", 1),
                      {"shp": np.array([1 << 31, 1 << 31], np.int64)})
        return model, "tinymp: layer 'big' (op ConstantOfShape) computes a constant of " \
                      "4,611,686,018,427,387,904 values"
    if case == "expand":
        _insert_const(model, "Expand", ["bn_b", "shp"], ("mul", 1),
                      {"shp": np.array([1 << 20, 1 << 20, 1], np.int64)})
        return model, "tinymp: layer 'big' (op Expand) computes a constant of"
    if case == "range":
        # a Range of 5 million values as a reshape target: seconds of Python loops, and a
        # message holding all five million
        _insert_const(model, "Range", ["r0", "r1", "r2"], ("mean", 1),
                      {"r0": np.array(0, np.int64), "r1": np.array(5_000_000, np.int64),
                       "r2": np.array(1, np.int64)})
        return model, "tinymp: layer 'big' (op Range) computes a constant of 5,000,000 values"
    if case == "not_utf8_op_type":
        # protobuf returns a string that is not UTF-8 as bytes: TypeError inside the converter
        data = model.SerializeToString().replace(b"Relu", b"R\xe9lu")
        return data, "tinymp: layer 'relu' (op R\ufffdlu) is not supported"
    if case == "newline_in_name":
        n = _node(model, "relu")
        n.name, n.op_type = "bad\nname", "HardSwish"
        return model, "tinymp: layer 'bad\\nname' (op HardSwish) is not supported"
    if case == "unknown_data_type":
        _init(model, "w1").data_type = 82              # KeyError traceback
        return model, "tinymp: the ONNX initializer 'w1' cannot be read, the file is damaged"
    if case == "dims_larger_than_data":
        del _init(model, "b1").dims[:]
        _init(model, "b1").dims.append(10)
        return model, "tinymp: the ONNX initializer 'b1' cannot be read, the file is damaged"
    if case == "negative_dims":
        init = _init(model, "b1")
        del init.dims[:]
        init.dims.append(-1)
        return model, "tinymp: the ONNX initializer 'b1' has the shape [-1]"
    if case == "zero_stride":
        a = next(a for a in _node(model, "conv_same").attribute if a.name == "strides")
        a.ints[0] = 0                                  # ZeroDivisionError traceback
        return model, "tinymp: layer 'conv_same' (op Conv) has strides [0, 2]"
    if case == "zero_batch":
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 0
        return model, "tinymp: the ONNX input 'x' has the shape [0, 3, 8, 8]"
    if case == "double_input":
        # onnxruntime refused the float32 samples in run(): a traceback, after a log line of
        # its own on stderr
        model.graph.input[0].type.tensor_type.elem_type = 11
        return model, "tinymp: the ONNX input 'x' holds DOUBLE values; tinymp converts models " \
                      "with a float32 input"
    if case == "negative_variance":
        _set_init(model, "bn_v", np.array([1, 1, -5, 1, 1, 1, 1, 1], np.float32))
        return model, "tinymp: layer 'bn' (op BatchNormalization) has a variance + epsilon " \
                      "that is not positive"
    if case == "reshape_beyond_rank":
        _set_init(model, "shape", np.array([0, 0, 0, 0, 0], np.int64))
        return model, "tinymp: layer 'reshape' (op Reshape) cannot be converted: ValueError: " \
                      "reshape target [0, 0, 0, 0, 0] copies dimension 4 of a 4-D input"
    if case == "complex_weights":
        from onnx import numpy_helper
        w = numpy_helper.to_array(_init(model, "wd")).astype(np.complex64)
        _set_init(model, "wd", w)
        return model, "tinymp: layer 'dw' (op Conv) has weights of type complex64"
    raise AssertionError(case)


DAMAGES = ["constant_of_shape", "expand", "range", "not_utf8_op_type",
           "newline_in_name", "unknown_data_type", "dims_larger_than_data", "negative_dims",
           "zero_stride", "zero_batch", "double_input", "negative_variance",
           "reshape_beyond_rank", "complex_weights"]


@pytest.mark.parametrize("case", DAMAGES)
def test_damaged_onnx_is_refused_in_one_line(capfd, tmp_path, case):
    model, start = _damage(case)
    t0 = time.perf_counter()
    with traced() as peak:
        line = refuse_onnx(capfd, tmp_path, model)
    peak = peak[0]
    assert line.startswith(start), line
    assert len(line) < 1000, len(line)
    assert time.perf_counter() - t0 < MAX_SECONDS
    assert peak < MAX_ALLOCATED, f"{peak:,} bytes allocated"


@pytest.mark.parametrize("case", ["not_utf8_op_type", "dims_larger_than_data"])
def test_damaged_onnx_raises_conversion_error_in_python(case):
    # the Python API promises ConversionError; these raised TypeError / ValueError
    model, start = _damage(case)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    with pytest.raises(ConversionError) as e:
        convert(data, _calib())
    assert str(e.value).startswith(start.replace("tinymp:", "tinymp convert:", 1))


def test_onnxruntime_failing_on_the_samples_is_one_line(monkeypatch):
    # an error of onnxruntime's run() escaped as a traceback
    ort = pytest.importorskip("onnxruntime")
    model = _handmade()

    def run(self, *args, **kw):
        raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : bad input\n index: 0")
    monkeypatch.setattr(ort.InferenceSession, "run", run)
    with pytest.raises(ConversionError) as e:
        convert(model.SerializeToString(), _calib())
    assert str(e.value) == ("tinymp convert: onnxruntime cannot run the model on the "
                            "calibration samples: RuntimeError: [ONNXRuntimeError] : 2 : "
                            "INVALID_ARGUMENT : bad input index: 0")


def test_onnxruntime_runs_only_the_nodes_the_output_needs(capfd, tmp_path):
    # onnxruntime runs every node of the graph, also those the output does not need, which the
    # converter skips (and never checks): an unused ConstantOfShape of 30000 x 30000 made it
    # allocate 3.6 GB; one of 2^31 x 2^31 failed the conversion of a good model
    model = _handmade()
    from onnx import helper, numpy_helper
    model.graph.initializer.append(numpy_helper.from_array(np.array([1 << 31, 1 << 31]), "s"))
    model.graph.node.append(helper.make_node("ConstantOfShape", ["s"], ["unused"], name="dead"))
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    np.save(tmp_path / "c.npy", _calib())
    status, _, err, warned = run_cli(capfd, tmp_path / "m.onnx", "-o", tmp_path / "o.tmpm",
                                     "--calib", tmp_path / "c.npy")
    assert status == 0 and not warned, err
    assert tinymp.Model((tmp_path / "o.tmpm").read_bytes()).num_classes == 5


def test_a_large_shape_constant_is_refused_before_it_is_made():
    # 4096 x 4096 zeros (64 MB): allocated, then found not to broadcast
    model = _handmade()
    _insert_const(model, "ConstantOfShape", ["shp"], ("mul", 1),
                  {"shp": np.array([4096, 4096], np.int64)})
    with traced() as peak:
        with pytest.raises(ConversionError, match="computes a constant of 16,777,216 values"):
            convert(model.SerializeToString(), _calib())
    peak = peak[0]
    assert peak < 32 << 20, f"{peak:,} bytes allocated"


# --------------------------------------------------------------------------------------------
# damaged .tflite files
# --------------------------------------------------------------------------------------------

_WRITERS = {}


def _tflite_with(fn, make="model_a"):
    """A test_convert_tflite model with its writer's tables edited by ``fn(writer, inputs,
    outputs)`` (lists it may change) just before serialisation."""
    tt = _tflite_tests()
    if make not in _WRITERS:        # the writer as the model function leaves it (built once)
        orig = tt.TFLiteWriter.finish

        def keep(self, inputs, outputs):
            _WRITERS[make] = (copy.deepcopy(self), list(inputs), list(outputs))
            return orig(self, inputs, outputs)
        tt.TFLiteWriter.finish = keep
        try:
            getattr(tt, make)()
        finally:
            tt.TFLiteWriter.finish = orig
    w, inputs, outputs = copy.deepcopy(_WRITERS[make])
    fn(w, inputs, outputs)
    return tt.TFLiteWriter.finish(w, inputs, outputs)


def refuse_tflite(capfd, tmp_path, data):
    src = tmp_path / "m.tflite"
    src.write_bytes(data)
    t0 = time.perf_counter()
    line = refused(capfd, tmp_path, [src], tmp_path / "out.tmpm")
    assert time.perf_counter() - t0 < MAX_SECONDS
    return line


def test_a_tflite_path_that_is_a_folder(capfd, tmp_path):
    # IsADirectoryError traceback, status 1
    (tmp_path / "m.tflite").mkdir()
    line = refused(capfd, tmp_path, [tmp_path / "m.tflite"], tmp_path / "o.tmpm")
    assert line == f"tinymp: '{tmp_path / 'm.tflite'}' is a folder, not a model file"


@pytest.mark.parametrize("index", [-1, 17, 2 ** 31 - 1])
def test_tflite_graph_output_out_of_range(capfd, tmp_path, index):
    # -1 picked the last tensor (Python indexing) and converted; 17 was an IndexError
    def f(w, ins, outs):
        outs[0] = index
    line = refuse_tflite(capfd, tmp_path, _tflite_with(f))
    assert line == (f"tinymp: the model's outputs refer to tensor {index}, the model has 17 "
                    "tensors; the file is damaged")


def test_tflite_op_input_out_of_range(capfd, tmp_path):
    def f(w, ins, outs):
        code, inputs, outputs, opts = w.ops[2]
        w.ops[2] = (code, [inputs[0], 99, inputs[2]], outputs, opts)
    line = refuse_tflite(capfd, tmp_path, _tflite_with(f))
    assert line == ("tinymp: op 2 (CONV_2D): its inputs refer to tensor 99, the model has 17 "
                    "tensors; the file is damaged")


def test_tflite_constant_data_shorter_than_its_shape(capfd, tmp_path):
    def f(w, ins, outs):
        b = w.tensors[8]["buffer"]                    # the 1x1 convolution's weights
        w.buffers[b] = w.buffers[b][:100]
    line = refuse_tflite(capfd, tmp_path, _tflite_with(f))
    assert line == ("tinymp: tensor 8 't8' holds 100 bytes of data, its shape [16, 1, 1, 16] of "
                    "int8 needs 256; the file is damaged")


def test_tflite_scales_that_overflow_the_multiplier(capfd, tmp_path):
    # said 'requantisation multiplier 3.9e+27 cannot be encoded (quantize_multiplier:
    # multiplier ... too large (shift 92 > 30))'
    def f(w, ins, outs):
        w.tensors[1]["scale"] = np.array([1e-30], np.float32)
    line = refuse_tflite(capfd, tmp_path, _tflite_with(f))
    assert line.startswith("tinymp: op 0 (CONV_2D): its requantisation multiplier (input scale "
                           "0.00784 x weight scale ")
    assert "/ output scale 1e-30) is " in line and "beyond the 2^30 a .tmpm model can hold" in line
    assert "shift" not in line


def test_a_long_chain_of_reshapes_converts(tmp_path):
    # 1000 RESHAPEs after the SOFTMAX: a recursion per op, RecursionError, 'the file is corrupt'
    tt = _tflite_tests()

    def f(w, ins, outs):
        last = outs[0]
        for _ in range(1000):
            t = w.act(w.shape(last), w.qp(last))
            w.op(tt.OPS.RESHAPE, [last], [t])
            last = t
        outs[0] = last
    data = _tflite_with(f)
    conv = tt.convert_tflite(data)
    assert tinymp.Model(conv.data).num_classes == 6
    assert conv.data == tt.from_tflite(tt.model_a()[0])


def test_tflite_vectors_that_overlap_are_refused_quickly(capfd, tmp_path):
    # 2000 tensors whose shapes are the same 2000-entry vector: 4 million reads of a 40 kB file
    _tflite_tests()
    import flatbuffers
    import tflite as T
    b = flatbuffers.Builder(1 << 16)
    T.TensorStartShapeVector(b, 2000)
    for _ in range(2000):
        b.PrependInt32(1)
    shape = b.EndVector()
    tensors = []
    for _ in range(2000):
        T.TensorStart(b)
        T.TensorAddShape(b, shape)
        T.TensorAddType(b, 9)
        tensors.append(T.TensorEnd(b))
    T.SubGraphStartTensorsVector(b, len(tensors))
    for t in reversed(tensors):
        b.PrependUOffsetTRelative(t)
    tv = b.EndVector()
    T.SubGraphStart(b)
    T.SubGraphAddTensors(b, tv)
    sg = T.SubGraphEnd(b)
    T.ModelStartSubgraphsVector(b, 1)
    b.PrependUOffsetTRelative(sg)
    sgv = b.EndVector()
    T.ModelStart(b)
    T.ModelAddVersion(b, 3)
    T.ModelAddSubgraphs(b, sgv)
    b.Finish(T.ModelEnd(b), file_identifier=b"TFL3")
    data = bytes(b.Output())
    assert len(data) < 64 << 10
    line = refuse_tflite(capfd, tmp_path, data)
    assert line == (f"tinymp: the TFLite file declares more dimensions than its {len(data)} "
                    "bytes can hold; the file is damaged")


# --------------------------------------------------------------------------------------------
# the mutation fuzz
# --------------------------------------------------------------------------------------------

# mutants per model: (byte-level, structural); 20 ... 50 ms each with allocation tracing,
# some 15 s in all
ONNX_MUTANTS = (80, 80)
TFLITE_MUTANTS = (70, 50)

_EXTREME32 = [0, 1, 3, 0xFF, 0xFFFF, 0x10000, 1 << 20, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE,
              0xFFFFFFFF]
_VARINTS = [b"\xff\xff\xff\xff\x0f", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            b"\x80\x80\x80\x80\x08", b"\xff\xff\x03"]


def mutate_bytes(rnd, data: bytes) -> bytes:
    """One random damage of a file: byte flips, truncation, inserted bytes, an aligned 32-bit
    field set to an extreme value (a flatbuffer offset, length or dimension), a byte replaced by
    a long varint (a protobuf length or dimension), a block copied over another."""
    d = bytearray(data)
    kind = rnd.randrange(6)
    if kind == 0:
        for _ in range(rnd.choice((1, 1, 2, 4))):
            d[rnd.randrange(len(d))] = rnd.randrange(256)
    elif kind == 1:
        del d[rnd.randrange(len(d)):]
    elif kind == 2:
        p = rnd.randrange(len(d) + 1)
        d[p:p] = bytes(rnd.randrange(256) for _ in range(rnd.choice((1, 2, 5, 10))))
    elif kind == 3:
        p = rnd.randrange(len(d) - 4) & ~3
        d[p:p + 4] = struct.pack("<I", rnd.choice(_EXTREME32))
    elif kind == 4:
        p = rnd.randrange(len(d))
        d[p:p + 1] = rnd.choice(_VARINTS)
    else:
        p, q, n = rnd.randrange(len(d)), rnd.randrange(len(d)), rnd.randrange(1, 32)
        d[p:p + n] = d[q:q + n]
    return bytes(d)


_BIG = [0, -1, -7, 1, 2, 65535, 65536, 1 << 20, 1 << 31, 1 << 62, -(1 << 62), 2 ** 63 - 1]


def mutate_onnx(rnd, model):
    """One random edit of an ONNX model's structure."""
    from onnx import helper, numpy_helper
    g = model.graph
    kind = rnd.randrange(8)
    if kind == 0:                                   # an initializer's dims
        init = rnd.choice(g.initializer)
        if init.dims:
            init.dims[rnd.randrange(len(init.dims))] = rnd.choice(_BIG)
    elif kind == 1:                                 # an attribute
        a = rnd.choice([a for n in g.node for a in n.attribute])
        if a.ints:
            a.ints[rnd.randrange(len(a.ints))] = rnd.choice(_BIG)
        elif a.type == a.INT:
            a.i = rnd.choice(_BIG)
        elif a.type == a.FLOAT:
            a.f = rnd.choice([math.nan, math.inf, -1.0, 0.0, 1e38])
    elif kind == 2:                                 # an input rewired (cycles, unknown names)
        n = rnd.choice(g.node)
        names = [o for m in g.node for o in m.output] + [i.name for i in g.initializer]
        n.input[rnd.randrange(len(n.input))] = rnd.choice(names + ["x", "", "nope"])
    elif kind == 3:                                 # a value
        init = rnd.choice(g.initializer)
        try:
            a = numpy_helper.to_array(init).copy()
        except ValueError:                          # its dims were edited before
            return
        if a.size:
            a.reshape(-1)[rnd.randrange(a.size)] = rnd.choice(
                [np.nan, np.inf, -np.inf, 1e38, 1e-45, 0.0] if a.dtype.kind == "f" else
                [0, -1, 2 ** 62, -2 ** 62, 10 ** 6])
            init.CopyFrom(numpy_helper.from_array(a, init.name))
    elif kind == 4:                                 # a data type
        rnd.choice(g.initializer).data_type = rnd.choice([0, 2, 5, 7, 8, 9, 10, 11, 16, 40, 999])
    elif kind == 5:                                 # the input's or output's dims
        v = rnd.choice([g.input[0], g.output[0]])
        dims = v.type.tensor_type.shape.dim
        dims[rnd.randrange(len(dims))].dim_value = rnd.choice(_BIG)
    elif kind == 6:                                 # an op type
        rnd.choice(g.node).op_type = rnd.choice(
            ["Expand", "ConstantOfShape", "Range", "Gather", "Concat", "Reshape", "Where", "Max",
             "Squeeze", "Unsqueeze", "Flatten", "Conv", "Add", "Mul", "Div", "Slice", "Shape",
             "Cast", "Transpose", "AveragePool", "Gemm", "MatMul", "Pad", "Clip"])
    else:                                           # a shape computation of extreme size,
        shp = np.array([rnd.choice(_BIG) for _ in range(rnd.randrange(1, 4))], np.int64)
        g.initializer.append(numpy_helper.from_array(shp, "fz_shape"))
        op = rnd.choice(["ConstantOfShape", "Expand"])
        ins = ["fz_shape"] if op == "ConstantOfShape" else ["bn_b", "fz_shape"]
        g.node.insert(0, helper.make_node(op, ins, ["fz_big"]))
        if rnd.random() < 0.7:                      # used by a node, or left unused
            target = rnd.choice([n for n in g.node if n.input and n.output[0] != "fz_big"])
            target.input[rnd.randrange(len(target.input))] = "fz_big"


def mutate_tflite(rnd, w, ins, outs):
    """One random edit of a TFLiteWriter's tables (see test_convert_tflite.TFLiteWriter)."""
    nt = len(w.tensors)
    big = [0, -1, -2, 1, 2, 65535, 65536, 1 << 20, 2 ** 31 - 1, -2 ** 31]
    kind = rnd.randrange(7)
    t = rnd.choice(w.tensors)
    if kind == 0 and t["shape"]:                    # a dimension
        t["shape"][rnd.randrange(len(t["shape"]))] = rnd.choice(big)
    elif kind == 1:                                 # the rank
        if t["shape"] and rnd.random() < 0.5:
            t["shape"].pop()
        else:
            t["shape"].append(rnd.choice(big))
    elif kind == 2:                                 # the type
        t["type"] = rnd.choice([0, 1, 2, 3, 4, 7, 9, 10, 17, 99])
    elif kind == 3 and t["scale"] is not None:      # quantisation
        t["scale"] = t["scale"].copy()
        t["scale"][rnd.randrange(t["scale"].size)] = rnd.choice(
            [0.0, np.nan, np.inf, 1e-45, 1e38, -1.0, 1e-30])
        t["zp"] = t["zp"].copy()
        t["zp"][rnd.randrange(t["zp"].size)] = rnd.choice([-129, 128, 2 ** 40, 5, 0])
        t["qdim"] = rnd.choice([0, 3, 4, 2 ** 31 - 1])
    elif kind == 4:                                 # a buffer index or its data
        if rnd.random() < 0.5:
            t["buffer"] = rnd.choice([0, len(w.buffers), 2 ** 31 - 1,
                                      rnd.randrange(len(w.buffers))])
        else:
            k = rnd.randrange(1, len(w.buffers))
            data = w.buffers[k]
            w.buffers[k] = data[:rnd.randrange(len(data) + 1)] + bytes(rnd.randrange(3) * 8)
    elif kind == 5:                                 # an op's input / output / code index
        j = rnd.randrange(len(w.ops))
        code, inputs, outputs, opts = w.ops[j]
        inputs, outputs = list(inputs), list(outputs)
        value = rnd.choice([-2, -1, nt, 2 ** 31 - 1, rnd.randrange(nt)] + outputs)
        if inputs and rnd.random() < 0.7:
            inputs[rnd.randrange(len(inputs))] = value
        else:
            outputs[rnd.randrange(len(outputs))] = value
        if rnd.random() < 0.1:
            code = rnd.choice([len(w.codes), 2 ** 31 - 1, -1])
        w.ops[j] = (code, inputs, outputs, opts)
    else:                                           # the graph's inputs / outputs
        lst = rnd.choice([ins, outs])
        lst[0] = rnd.choice([-1, nt, 2 ** 31 - 1, rnd.randrange(nt)])
        if rnd.random() < 0.3:
            lst.append(rnd.randrange(nt))


class _Fuzz:
    """Runs mutants through the command and collects what breaks the rule."""

    def __init__(self, capfd, tmp_path, ext, calib=None):
        self.capfd, self.tmp = capfd, tmp_path
        self.src, self.out = tmp_path / f"m{ext}", tmp_path / "out.tmpm"
        self.args = [self.src, "-o", self.out]
        if calib is not None:
            np.save(tmp_path / "c.npy", calib)
            self.args += ["--calib", tmp_path / "c.npy"]
        self.problems, self.outcomes = [], {0: 0, 2: 0}

    def run(self, what, data):
        self.src.write_bytes(data)
        if self.out.exists():
            self.out.unlink()
        t0 = time.perf_counter()
        with traced() as peak:
            try:
                status, stdout, err, warned = run_cli(self.capfd, *self.args)
            except BaseException as e:   # noqa: BLE001 - an escaping exception is what we look for
                status, err, warned = f"{type(e).__name__}: {str(e)[:150]}", [], []
        peak = peak[0]
        seconds = time.perf_counter() - t0
        bad = []
        if status == 0:
            try:
                tinymp.Model(self.out.read_bytes())
            except Exception as e:   # noqa: BLE001
                bad.append(f"wrote a model the engine refuses: {e}")
        elif status == 2:
            if len(err) != 1 or not err[0].startswith("tinymp:"):
                bad.append(f"stderr {err[:3]}")
            if self.out.exists() or [p for p in os.listdir(self.tmp) if ".tmp-" in p]:
                bad.append("left a file behind")
        else:
            bad.append(f"status {status}")
        if any("Traceback" in line for line in err):
            bad.append("traceback")
        if warned:
            bad.append(f"warnings {warned[:2]}")
        if seconds > MAX_SECONDS:
            bad.append(f"took {seconds:.1f} s")
        if peak > MAX_ALLOCATED:
            bad.append(f"allocated {peak:,} bytes")
        if bad:
            self.problems.append(f"{what}: {'; '.join(bad)} | {err[:1]}")
        if status in self.outcomes:
            self.outcomes[status] += 1

    def check(self, n):
        assert not self.problems, (f"{len(self.problems)} of {n} mutants broke the rule:\n"
                                   + "\n".join(self.problems[:15]))


@pytest.mark.parametrize("variant", ["reducemean", "gemm"])
def test_fuzz_onnx(capfd, tmp_path, variant):
    onnx = _onnx()
    good = _handmade(variant)
    data = good.SerializeToString()
    fuzz = _Fuzz(capfd, tmp_path, ".onnx", _calib(4))
    rnd = random.Random(f"onnx-{variant}")
    for k in range(ONNX_MUTANTS[0]):
        fuzz.run(f"bytes {k}", mutate_bytes(rnd, data))
    for k in range(ONNX_MUTANTS[1]):
        model = onnx.ModelProto()
        model.CopyFrom(good)
        for _ in range(rnd.choice((1, 1, 2))):
            mutate_onnx(rnd, model)
        fuzz.run(f"edit {k}", model.SerializeToString())
    fuzz.check(sum(ONNX_MUTANTS))
    assert min(fuzz.outcomes.values()) >= 5, fuzz.outcomes    # both outcomes occur


@pytest.mark.parametrize("make", ["model_a", "model_b", "model_c"])
def test_fuzz_tflite(capfd, tmp_path, make):
    tt = _tflite_tests()
    good = getattr(tt, make)()
    good = good[0] if isinstance(good, tuple) else good
    fuzz = _Fuzz(capfd, tmp_path, ".tflite")
    rnd = random.Random(f"tflite-{make}")
    for k in range(TFLITE_MUTANTS[0]):
        fuzz.run(f"bytes {k}", mutate_bytes(rnd, good))
    for k in range(TFLITE_MUTANTS[1]):
        def edit(w, ins, outs):
            for _ in range(rnd.choice((1, 1, 2))):
                mutate_tflite(rnd, w, ins, outs)
        try:
            data = _tflite_with(edit, make)
        except (struct.error, ValueError, TypeError, IndexError, OverflowError):
            continue                                # an edit the writer itself cannot write
        fuzz.run(f"edit {k}", data)
    fuzz.check(sum(TFLITE_MUTANTS))
    assert min(fuzz.outcomes.values()) >= 5, fuzz.outcomes
