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


def _onnx_pair(onnx, tmp_path):
    """Two exports named model.onnx in folders A and B with different weights, each keeping its
    weights beside it in model.onnx.data (as PyTorch's exporter does), and B's inline bytes."""
    import test_convert_torch_onnx as t
    inline = {}
    for name, seed in (("A", 1), ("B", 2)):
        model = t._handmade_onnx(onnx, "reducemean")
        rng = np.random.default_rng(seed)
        for init in model.graph.initializer:  # other weights per folder
            if init.name in ("w1", "wd", "wm"):
                a = onnx.numpy_helper.to_array(init)
                init.CopyFrom(onnx.numpy_helper.from_array(
                    rng.normal(0, 0.5, a.shape).astype(np.float32), init.name))
        inline[name] = model.SerializeToString()
        d = tmp_path / name
        d.mkdir()
        onnx.save_model(model, str(d / "model.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    return inline


def test_onnx_weights_in_a_separate_file_come_from_the_models_folder(tmp_path):
    onnx = pytest.importorskip("onnx", reason="needs the onnx package")
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    from tinymp.convert import ConversionError, convert
    inline = _onnx_pair(onnx, tmp_path)
    x = np.random.default_rng(0).random((16, 3, 8, 8), dtype=np.float32)
    np.save(tmp_path / "calib.npy", x)
    want = convert(inline["B"], x)          # the same model with its weights inside
    assert want != convert(inline["A"], x)
    # run from A's folder, convert B: B's weights, not those of the model.onnx.data beside us
    r = subprocess.run([sys.executable, "-m", "tinymp.cli", "convert", "../B/model.onnx", "-o",
                        "../B.tmpm", "--calib", "../calib.npy"], capture_output=True, text=True,
                       cwd=str(tmp_path / "A"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "B.tmpm").read_bytes() == want
    # bytes cannot say where their weights are: one clear error
    with pytest.raises(ConversionError, match="separate file .*model.onnx.data.*path of the .onnx"):
        convert((tmp_path / "B" / "model.onnx").read_bytes(), x)
    # the weights file missing: one line, nothing written
    (tmp_path / "B" / "model.onnx.data").unlink()
    code, _, err = run(str(tmp_path / "B" / "model.onnx"), "-o", str(tmp_path / "C.tmpm"),
                       "--calib", str(tmp_path / "calib.npy"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "model.onnx.data" in err, err
    assert not (tmp_path / "C.tmpm").exists()


def test_onnx_with_a_fixed_batch_and_a_remainder_of_samples(tmp_path):
    onnx = pytest.importorskip("onnx", reason="needs the onnx package")
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    import test_convert_torch_onnx as t
    model = t._handmade_onnx(onnx, "reducemean")
    for v in (model.graph.input[0], model.graph.output[0]):
        v.type.tensor_type.shape.dim[0].dim_value = 4       # a batch of 4, fixed
    src = tmp_path / "b4.onnx"
    src.write_bytes(model.SerializeToString())
    np.save(tmp_path / "c10.npy", np.random.default_rng(0).random((10, 3, 8, 8), dtype=np.float32))
    code, _, err = run(str(src), "-o", str(tmp_path / "b4.tmpm"), "--calib", str(tmp_path / "c10.npy"))
    assert code == 0, err
    assert tinymp.Model((tmp_path / "b4.tmpm").read_bytes()).num_classes == 5


@pytest.mark.parametrize("case", ["npz", "same-file", "constant", "bool", "complex"])
def test_calibration_and_output_mistakes_are_one_line(tmp_path, case):
    onnx = pytest.importorskip("onnx", reason="needs the onnx package")
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    import test_convert_torch_onnx as t
    src = tmp_path / "m.onnx"
    src.write_bytes(t._handmade_onnx(onnx, "reducemean").SerializeToString())
    good = np.random.default_rng(0).random((8, 3, 8, 8), dtype=np.float32)
    out = tmp_path / "out.tmpm"
    calib = tmp_path / "c.npy"
    needle = {"npz": "is an .npz archive (x)", "same-file": "is the source model",
              "constant": "are all 0.5", "bool": "must hold real numbers, got dtype bool",
              "complex": "must hold real numbers, got dtype complex64"}[case]
    if case == "npz":
        calib = tmp_path / "c.npz"
        np.savez(calib, x=good)
    else:
        np.save(calib, {"same-file": good, "constant": np.full_like(good, 0.5), "bool": good > 0.5,
                        "complex": good.astype(np.complex64)}[case])
    if case == "same-file":
        out = src
    before = src.read_bytes()
    code, _, err = run(str(src), "-o", str(out), "--calib", str(calib))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert src.read_bytes() == before
    assert case == "same-file" or not out.exists()


def test_tflite_with_calibration_samples_converts(tmp_path):
    # calib (and its layout) are not needed for a quantised model: accepted and ignored
    pytest.importorskip("tflite", reason="needs the tflite package")
    pytest.importorskip("ai_edge_litert.interpreter", reason="needs ai-edge-litert")
    import test_convert_tflite as t
    src = tmp_path / "a.tflite"
    src.write_bytes(t.model_a()[0])
    np.save(tmp_path / "c.npy", np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32))
    code, _, err = run(str(src), "-o", str(tmp_path / "a.tmpm"), "--calib", str(tmp_path / "c.npy"))
    assert code == 0, err
    assert "--calib is not needed and is ignored" in err    # said, not silent
    code, _, err = run(str(src), "-o", str(tmp_path / "b.tmpm"))
    assert (tmp_path / "a.tmpm").read_bytes() == (tmp_path / "b.tmpm").read_bytes()


def test_class_names_as_one_string_is_refused():
    onnx = pytest.importorskip("onnx", reason="needs the onnx package")
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    import test_convert_torch_onnx as t
    from tinymp.convert import ConversionError, convert
    x = np.random.default_rng(0).random((8, 3, 8, 8), dtype=np.float32)
    with pytest.raises(ConversionError, match="list of names, not a single string"):
        convert(t._handmade_onnx(onnx, "reducemean").SerializeToString(), x, class_names="abcde")


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-1.0, 1.0)])
def test_input_range_fixes_the_input_quantisation(tmp_path, lo, hi):
    # calibration samples that never reach the ends of the range the model is fed: with
    # --input-range, int8 -128 and 127 stand for lo and hi (real = (q - zero_point) * scale)
    onnx = pytest.importorskip("onnx", reason="needs the onnx package")
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    from tinymp import reference
    import test_convert_torch_onnx as t
    src = tmp_path / "m.onnx"
    src.write_bytes(t._handmade_onnx(onnx, "reducemean").SerializeToString())
    calib = tmp_path / "calib.npy"
    x = np.random.default_rng(0).uniform(lo + 0.2, hi - 0.2, (16, 3, 8, 8)).astype(np.float32)
    np.save(calib, x)
    inputs = {}
    for given in (True, False):
        out = tmp_path / f"{given}.tmpm"
        extra = ["--input-range", repr(lo), repr(hi)] if given else []
        code, stdout, err = run(str(src), "-o", str(out), "--calib", str(calib), *extra)
        assert code == 0, err
        inputs[given] = reference.read_model(out.read_bytes()).tensors[0]
    t0 = inputs[True]
    assert abs((-128 - t0.zero_point) * t0.scale - lo) <= t0.scale
    assert abs((127 - t0.zero_point) * t0.scale - hi) <= t0.scale
    # without it the calibration samples' narrower range is used
    assert inputs[False].scale < t0.scale * 0.8


@pytest.mark.parametrize("rng", [["1", "0"], ["nan", "1"], ["0", "inf"], ["2", "2"]])
def test_a_bad_input_range_is_one_line(tmp_path, rng):
    out = tmp_path / "out.tmpm"
    src = tmp_path / "m.onnx"
    src.write_bytes(b"\x00")
    code, stdout, err = run(str(src), "-o", str(out), "--input-range", *rng)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--input-range must be two finite numbers LO HI with LO < HI" in lines[0]
    assert not out.exists()


def test_input_range_is_refused_for_an_int8_tflite(tmp_path):
    src = tmp_path / "m.tflite"
    src.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)
    code, stdout, err = run(str(src), "-o", str(tmp_path / "o.tmpm"), "--input-range", "0", "1")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "input_range does not apply to a TFLite model" in lines[0], err


def test_a_converted_model_the_engine_refuses_is_one_line_and_nothing_written(tmp_path,
                                                                                monkeypatch,
                                                                                capsys):
    # a converter fault (here: a model cut short on its way out) must not be a traceback
    from tinymp import convert as conv
    real = conv.convert
    monkeypatch.setattr(conv, "convert", lambda *a, **kw: real(*a, **kw)[:-16])
    out = tmp_path / "m.tmpm"
    pytest.importorskip("tflite", reason="needs the tflite package")
    import test_convert_tflite as t
    from tinymp import cli
    src = tmp_path / "m.tflite"
    src.write_bytes(t.model_a()[0])
    assert cli.main(["convert", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinymp: the engine refuses the converted model ("), err
    assert "please report it" in err[0] and not out.exists()


def _refused_one_line(tmp_path, *args):
    out = tmp_path / "out.tmpm"
    code, stdout, err = run(*map(str, args), "-o", str(out))
    assert code == 2, (stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinymp: "), err
    assert not out.exists() and not list(tmp_path.glob("out.tmpm.tmp-*"))
    return lines[0]


@pytest.mark.parametrize("case", ["npz", "compressed", "cut short", "npy", "shipped scene"])
def test_a_samples_file_is_not_taken_for_a_model(tmp_path, case):
    # an .npz is a zip archive, as torch.save writes: it was called a saved PyTorch model
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), np.arange(20) % 3
    src = tmp_path / ("s.npy" if case == "npy" else "s.npz")
    if case == "npz":
        np.savez(src, x=x, y=y)
    elif case == "compressed":
        np.savez_compressed(src, x=x, y=y)
    elif case == "cut short":
        np.savez(tmp_path / "whole.npz", x=x, y=y)
        whole = (tmp_path / "whole.npz").read_bytes()
        src.write_bytes(whole[:len(whole) // 2])
    elif case == "npy":
        np.save(src, x.astype(np.float32) / 255)
    else:
        src = os.path.join(os.path.dirname(tinymp.__file__), "models", "digits_shifted.npz")
    line = _refused_one_line(tmp_path, src)
    kind = "a single numpy array (.npy)" if case == "npy" else "a numpy .npz archive"
    assert line.startswith(f"tinymp: '{src}' is {kind}"), line
    assert "samples rather than a model" in line and "PyTorch model (.pt" not in line
    assert "tinymp collect --from FILE.npz" in line and "--calib FILE.npy" in line


def test_a_torch_save_archive_is_still_a_saved_pytorch_model(tmp_path):
    import zipfile
    src = tmp_path / "model.pt"
    with zipfile.ZipFile(src, "w") as z:  # the members torch.save writes
        z.writestr("model/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("model/version", b"3\n")
    line = _refused_one_line(tmp_path, src)
    assert line.startswith(f"tinymp: '{src}' looks like a saved PyTorch model (.pt / .pth)"), line


def test_onnx_without_calibration_names_the_option(tmp_path):
    onnx = pytest.importorskip("onnx", reason="needs the onnx package")
    import test_convert_torch_onnx as t
    src = tmp_path / "m.onnx"
    src.write_bytes(t._handmade_onnx(onnx, "reducemean").SerializeToString())
    line = _refused_one_line(tmp_path, src)
    assert line.startswith("tinymp: converting an ONNX model needs calibration samples"), line
    assert "give --calib FILE.npy" in line and "--layout NHWC" in line


@pytest.mark.parametrize("given, layout", [("NHWC", "NCHW"), ("NCHW", "NHWC"), ("other", "NCHW"),
                                           ("other", "NHWC")])
def test_calibration_samples_in_the_other_layout_say_which_option(tmp_path, given, layout):
    # samples saved [N, H, W, C] and given without --layout: the error said "calib must be NCHW"
    onnx = pytest.importorskip("onnx", reason="needs the onnx package")
    import test_convert_torch_onnx as t
    model = t._handmade_onnx(onnx, "reducemean")
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    c, h, w = dims
    src = tmp_path / "m.onnx"
    src.write_bytes(model.SerializeToString())
    shape = {"NHWC": (8, h, w, c), "NCHW": (8, c, h, w), "other": (8, c + 2, h, w)}[given]
    calib = tmp_path / "c.npy"
    np.save(calib, np.random.default_rng(0).random(shape, dtype=np.float32))
    line = _refused_one_line(tmp_path, src, "--calib", calib, *(
        ["--layout", "NHWC"] if layout == "NHWC" else []))
    assert f"(read as {layout}" in line, line
    if given == "NHWC":
        assert "they fit as NHWC" in line and "give --layout NHWC" in line, line
    elif given == "NCHW":
        assert "they fit as NCHW" in line and "leave out --layout NHWC" in line, line
    else:
        assert f"the model takes [N, C, H, W] = [N, {c}, {h}, {w}], or [N, {h}, {w}, {c}] with " \
            "--layout NHWC" in line, line
    if given in ("NHWC", "NCHW"):  # and as the error says, the file converts
        pytest.importorskip("onnxruntime", reason="needs onnxruntime")
        out = tmp_path / "ok.tmpm"
        code, _, err = run(str(src), "-o", str(out), "--calib", str(calib),
                           *(["--layout", "NHWC"] if given == "NHWC" else []))
        assert code == 0 and out.exists(), err


def test_a_missing_tflite_package_is_not_called_a_corrupt_file(tmp_path, monkeypatch, capsys):
    # any .tflite, sound or not, needs the optional package first: say that, not "corrupt"
    from tinymp import cli
    from tinymp.convert import tflite as T

    def missing():
        raise ImportError("tinymp.convert.tflite needs the 'tflite' and 'flatbuffers' packages "
                          "(pip install tflite flatbuffers)")
    monkeypatch.setattr(T, "_import_tflite", missing)
    src = tmp_path / "m.tflite"
    src.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    out = tmp_path / "m.tmpm"
    assert cli.main(["convert", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinymp: converting this TFLite model needs an optional package") and \
        "'tflite' and 'flatbuffers'" in err and err.endswith("pip install 'tinymp[tflite]'") \
        and "corrupt" not in err, err
    assert not out.exists()


def test_a_fifo_is_refused_not_read(tmp_path, capsys):
    # a FIFO with no writer would block the read for ever (info and plan refuse it the same way)
    from tinymp import cli
    fifo = tmp_path / "m.tmpm"
    os.mkfifo(fifo)
    out = tmp_path / "out.tmpm"
    assert cli.main(["convert", str(fifo), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tinymp: {str(fifo)!r} is not a regular file (a model file is expected)", err
    assert not out.exists()


@pytest.mark.parametrize("name, content, words", [
    ("demo.onnx", "tmpm", "is already a tinymp model (.tmpm): nothing to convert"),
    ("demo.tflite", "tmpm", "is already a tinymp model (.tmpm): nothing to convert"),
    ("s.tflite", "npy", "is a single numpy array (.npy), samples rather than a model"),
    ("s.onnx", "npy", "is a single numpy array (.npy), samples rather than a model"),
    ("junk.tflite", "junk", "is neither a TFLite flatbuffer ('TFL3' at offset 4) nor an ONNX model"),
])
def test_a_file_is_judged_by_what_it_holds_before_its_name(tmp_path, capsys, name, content, words):
    # the walkthrough's renamed files got "needs an optional package" (the name's converter)
    from tinymp import cli, zoo
    src = tmp_path / name
    if content == "tmpm":
        src.write_bytes(zoo.demo())
    elif content == "npy":
        with open(src, "wb") as f:
            np.save(f, np.zeros((2, 3, 8, 8), np.float32))
    else:
        src.write_bytes(b"\x00" * 64)
    out = tmp_path / "out.tmpm"
    assert cli.main(["convert", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tinymp: {str(src)!r} {words}"), err
    assert len(err.splitlines()) == 1 and not out.exists()
