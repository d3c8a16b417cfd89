"""The PyTorch and ONNX importers (tinymp.convert.from_torch / from_onnx / convert).

Agreement tests: a small MobileNetV2-style torch model (conv-BN-ReLU6 stem with stride 2,
inverted residual blocks with expand / depthwise / project and residual adds, a stride-2 block,
adaptive average pooling, dropout, Linear), trained for a few hundred steps on colour-tinted
digits (tinymp.datasets.digits at 32x32x3) so that its argmax is not a near tie, converted with
post-training quantisation on 64 calibration images; the int8 model run by the C engine
(tinymp.Model) must predict torch's class on >= 99% of the calibration images and of the 539
test images (a disagreement must be a near tie of the float model), and its logit errors must
stay within LOGIT_P99_TOLERANCE / LOGIT_MAX_TOLERANCE of the logit range. The same model
exported with torch.onnx.export (the TorchScript exporter, dynamo=False: the new exporter needs
onnxscript) goes through from_onnx and is compared with onnxruntime the same way.

Float tests: the float tinymp graph of a model with random weights and random BatchNorm
statistics matches torch / onnxruntime to FLOAT_RTOL of the logit magnitude.

PyTorch, onnx, onnxruntime and scikit-learn (the digits) are optional: the tests that need one
are skipped without it.
"""

import io
import os
import subprocess
import sys
import time
import types
import warnings

import numpy as np
import pytest

import tinymp
from tinymp import builder
from tinymp.convert import ConversionError, convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# int8 model (64 calibration images) vs the float model, logit errors relative to the logit
# range (max - min logit over the evaluated images): the 99th percentile of |error| must stay
# below LOGIT_P99_TOLERANCE and the maximum below LOGIT_MAX_TOLERANCE (measured with torch
# 2.13.0: range 21.2, p99 0.016, max 0.11 - a test image beyond the calibration range)
LOGIT_P99_TOLERANCE = 0.04
LOGIT_MAX_TOLERANCE = 0.2
MIN_ARGMAX_AGREEMENT = 0.99
# a prediction that differs from the float model's must be a near tie: the float model's top-2
# margin is below NEAR_TIE times the logit range (measured: 0.07 / 0.22 of 21.2)
NEAR_TIE = 0.03
# tinymp float graph vs torch / onnxruntime: max |diff| <= FLOAT_RTOL * max(1, max |logit|)
FLOAT_RTOL = 1e-4
CALIB_IMAGES = 64
TRAIN_STEPS = 300
BATCH = 32


def _torch():
    return pytest.importorskip("torch", reason="PyTorch is optional (pip install torch==2.13.0)")


def _onnx():
    onnx = pytest.importorskip("onnx", reason="onnx is optional (pip install onnx onnxruntime)")
    pytest.importorskip("onnxruntime",
                        reason="onnxruntime is optional (pip install onnx onnxruntime)")
    return onnx


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------

def _mobilenet(torch, num_classes=10, width=(8, 8, 16, 16, 24, 48)):
    """A MobileNetV2-style network in the torchvision style (symmetric torch padding)."""
    nn = torch.nn

    def conv_bn(cin, cout, k, stride, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        return nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            self.use_res = stride == 1 and cin == cout
            layers = [conv_bn(cin, hidden, 1, 1)] if expand != 1 else []
            layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                       conv_bn(hidden, cout, 1, 1, act=False)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            if self.use_res:
                return x + self.conv(x)
            return self.conv(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            c0, c1, c2, c3, c4, c5 = width
            self.features = nn.Sequential(
                conv_bn(3, c0, 3, 2),                     # stem, stride 2: 16x16
                InvertedResidual(c0, c1, 1, 1),           # no expansion, residual
                InvertedResidual(c1, c2, 2, 4),           # stride 2: 8x8
                InvertedResidual(c2, c3, 1, 4),           # residual
                InvertedResidual(c3, c4, 2, 4),           # stride 2: 4x4
                InvertedResidual(c4, c4, 1, 4),           # residual
                conv_bn(c4, c5, 1, 1))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(c5, num_classes))

        def forward(self, x):
            x = self.pool(self.features(x))
            return self.classifier(torch.flatten(x, 1))

    return Net()


def _randomize_bn(torch, model, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.4 * torch.rand(n, generator=g) - 0.2)
    return model


def _tinted_digits(split):
    """digits at 32x32, each image tinted with a random colour: [N, 32, 32, 3] in [0, 1]."""
    pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn")
    from tinymp import datasets
    x, y = datasets.digits(32, split, seed=0)
    rng = np.random.default_rng(1 if split == "train" else 2)
    tint = rng.uniform(0.4, 1.0, size=(len(x), 1, 1, 3)).astype(np.float32)
    return np.ascontiguousarray(x * tint), y


def _nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def trained():
    """(model, calib NHWC, eval NHWC, train seconds): the MobileNetV2-style net trained for a
    few hundred steps (BN statistics are learned, not 0 / 1)."""
    torch = _torch()
    x_train, y_train = _tinted_digits("train")
    x_test, _ = _tinted_digits("test")
    torch.manual_seed(0)
    model = _randomize_bn(torch, _mobilenet(torch))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt = torch.from_numpy(_nchw(x_train))
    yt = torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # faster than several threads for this tiny network
    try:
        model.train()
        for _ in range(TRAIN_STEPS):
            idx = torch.randint(0, len(xt), (BATCH,), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        acc = float((model(torch.from_numpy(_nchw(x_test))).argmax(1).numpy() == _tinted_digits(
            "test")[1]).mean())
    assert acc > 0.8, f"training did not work (test accuracy {acc:.3f})"
    calib = x_train[:CALIB_IMAGES]
    evaluate = np.concatenate([calib, x_test])            # 64 + 539 images
    return model, calib, evaluate, seconds


def _int8_logits(blob, x_nhwc):
    m = tinymp.Model(blob)
    assert m.input_shape == x_nhwc.shape[1:]
    xq = builder.quantize_input(x_nhwc, (m.input_scale, m.input_zero_point))
    return np.array([np.asarray(m.logits(xq[i]), np.float64) for i in range(len(xq))])


def _agreement(q, ref):
    """(argmax agreement, p99 and max of |logit error| / logit range), asserting that every
    disagreement is a near tie of the float model."""
    span = float(ref.max() - ref.min())
    err = np.abs(q - ref) / span
    differ = q.argmax(1) != ref.argmax(1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    margins = (top2[:, 1] - top2[:, 0])[differ] / span
    assert np.all(margins <= NEAR_TIE), f"int8 disagrees where the float margin is {margins}"
    return 1.0 - float(differ.mean()), float(np.percentile(err, 99)), float(err.max())


def _check_agreement(q, ref, what):
    agree, p99, mx = _agreement(q, ref)
    agree_calib, _, _ = _agreement(q[:CALIB_IMAGES], ref[:CALIB_IMAGES])
    print(f"{what}: argmax agreement {agree:.4f} over {len(q)} images (calibration images "
          f"{agree_calib:.4f}); |logit error| / logit range {float(ref.max() - ref.min()):.2f}:"
          f" p99 {p99:.4f}, max {mx:.4f}")
    assert agree >= MIN_ARGMAX_AGREEMENT and agree_calib >= MIN_ARGMAX_AGREEMENT
    assert p99 <= LOGIT_P99_TOLERANCE and mx <= LOGIT_MAX_TOLERANCE


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------

def test_torch_float_graph_matches_with_random_bn():
    torch = _torch()
    from tinymp.convert.torch import to_graph
    torch.manual_seed(3)
    model = _randomize_bn(torch, _mobilenet(torch), seed=3)
    model.train()                                # the converter must switch to eval mode
    x = torch.rand(32, 3, 32, 32)
    g = to_graph(model, x)
    assert model.training                        # ... and restore the mode afterwards
    # BN folded and ReLU6 fused: stem, 2 + 3 * 4 block layers, 3 adds, head, pool, fc
    ops = [n.op for n in g.nodes[1:]]
    assert len(ops) == 1 + 2 + 3 * 4 + 3 + 1 + 2, g.summary()
    assert ops.count("add") == 3 and ops.count("dwconv") == 5 and ops[-2:] == ["avgpool", "fc"]
    assert g.nodes[1].op == "conv" and g.nodes[1].pad == (1, 1, 1, 1) and g.nodes[1].act == "relu6"
    model.eval()
    with torch.no_grad():
        ref = model(x).numpy()
    got = g.forward(x.numpy().transpose(0, 2, 3, 1))
    assert np.abs(got - ref).max() <= FLOAT_RTOL * max(1.0, np.abs(ref).max())


def test_torch_int8_agreement(trained):
    torch = _torch()
    model, calib, evaluate, train_s = trained
    t0 = time.perf_counter()
    blob = convert(model, _nchw(calib), class_names=[str(i) for i in range(10)],
                   input_range=(0.0, 1.0))
    convert_s = time.perf_counter() - t0
    with torch.no_grad():
        ref = model(torch.from_numpy(_nchw(evaluate))).numpy().astype(np.float64)
    q = _int8_logits(blob, evaluate)
    print(f"\ntorch: trained {TRAIN_STEPS} steps in {train_s:.1f} s, "
          f"converted in {convert_s:.2f} s")
    _check_agreement(q, ref, "torch vs int8")
    m = tinymp.Model(blob)
    assert m.class_names == tuple(str(i) for i in range(10)) and m.num_classes == 10
    # BN statistics were non-trivial
    bn = [mod for mod in model.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert np.mean([float(b.running_mean.abs().mean()) for b in bn]) > 0.01
    assert np.mean([float((b.running_var - 1).abs().mean()) for b in bn]) > 0.01


def test_torch_nhwc_layout_gives_the_same_model(trained):
    _torch()
    from tinymp.convert import from_torch
    model, calib, _, _ = trained
    a = from_torch(model, _nchw(calib[:16]))
    b = from_torch(model, calib[:16], input_layout="NHWC")
    assert a == b


def _construct_zoo(torch):
    """Many spellings of the supported constructs in one traceable model."""
    nn, F = torch.nn, torch.nn.functional

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn_in = nn.BatchNorm2d(3)                 # standalone BN -> 1x1 dwconv
            self.pad = nn.ZeroPad2d((0, 1, 0, 1))          # TF-'same' style, merged
            self.c1 = nn.Conv2d(3, 8, 3, 2)
            self.b1 = nn.BatchNorm2d(8)
            self.c2 = nn.Conv2d(8, 8, 3, 1, padding="same", groups=8)
            self.c3 = nn.Conv2d(8, 8, 1)
            self.c4 = nn.Conv2d(8, 12, 3, 2, padding=1)
            self.ht = nn.Hardtanh(0.0, 6.0)
            self.fc1 = nn.Linear(12 * 4 * 4, 16)           # after flattening a 4x4 map
            self.bn1d = nn.BatchNorm1d(16)
            self.fc2 = nn.Linear(16, 5)

        def forward(self, x):
            x = (x - 0.5) / 0.25                           # input normalisation
            x = self.bn_in(x)
            x = F.relu(self.b1(self.c1(self.pad(x))))
            y = torch.clamp(self.c2(x), 0, 6)
            y = self.c3(y)
            x = F.relu(torch.add(x, y))                   # add with fused ReLU
            x = self.ht(self.c4(F.pad(x, (0, 0, 0, 0))))
            x = x.view(x.size(0), -1)                      # 12 x 4 x 4 -> 192 (NCHW order)
            x = F.dropout(x, 0.5, self.training)
            x = F.relu6(self.bn1d(self.fc1(x)))
            return self.fc2(x)

    return M()


def test_torch_construct_zoo():
    torch = _torch()
    from tinymp.convert.torch import to_graph
    torch.manual_seed(5)
    model = _randomize_bn(torch, _construct_zoo(torch), seed=5).eval()
    x = torch.rand(16, 3, 16, 16)
    g = to_graph(model, x)
    ops = [n.op for n in g.nodes[1:]]
    assert ops == ["dwconv", "conv", "dwconv", "pwconv", "add", "conv", "fc", "fc"], g.summary()
    assert g.nodes[2].pad == (0, 0, 1, 1) and g.nodes[2].stride == (2, 2)   # ZeroPad2d merged
    assert g.nodes[3].pad == (1, 1, 1, 1) and g.nodes[5].act == "relu"
    assert g.nodes[7].act == "relu6"                                       # BN1d folded
    with torch.no_grad():
        ref = model(x).numpy()
    got = g.forward(x.numpy().transpose(0, 2, 3, 1))
    assert np.abs(got - ref).max() <= FLOAT_RTOL * max(1.0, np.abs(ref).max())
    blob = convert(model, x)
    assert tinymp.Model(blob).num_classes == 5


def test_torch_export_fallback_for_shape_dependent_padding():
    """tools/train_demo.py computes TF 'same' padding from x.shape: symbolic_trace fails, the
    converter falls back to torch.export and merges the F.pad into the convolutions."""
    torch = _torch()
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import train_demo
    finally:
        sys.path.pop(0)
    from tinymp.convert.torch import to_graph
    torch.manual_seed(0)
    model = _randomize_bn(torch, train_demo.build_torch_model(torch)).eval()
    x = torch.rand(8, 1, 32, 32)
    g = to_graph(model, x)
    assert [n.op for n in g.nodes[1:]].count("dwconv") == 4
    assert g.nodes[1].pad == builder.same_padding(32, 32, 3, 3, 2, 2)


@pytest.mark.parametrize("case", ["hardswish", "maxpool", "groups2", "functional_hardswish",
                                  "concat", "sigmoid_gate"])
def test_torch_unsupported_ops_name_the_node(case):
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            if case == "functional_hardswish":
                return F.hardswish(y)
            if case == "concat":
                return torch.cat([y, y], 1)
            return y * torch.sigmoid(y)

    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(3)]
    body = {
        "hardswish": [nn.Conv2d(3, 4, 3, padding=1), nn.Hardswish()],
        "maxpool": [nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2)],
        "groups2": [nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1, groups=2)],
        "functional_hardswish": [Gate()],
        "concat": [Gate()],
        "sigmoid_gate": [Gate()],
    }[case]
    model = nn.Sequential(*body, *head)
    x = torch.rand(4, 3, 8, 8)
    model(x)                                          # materialise the lazy Linear
    expect = {
        "hardswish": ["'1'", "Hardswish", "ReLU6"],
        "maxpool": ["'1'", "MaxPool2d", "stride-2"],
        "groups2": ["'1'", "groups=2", "depthwise"],
        "functional_hardswish": ["hardswish", "in module '0'", "ReLU6"],
        "concat": ["cat", "residual adds"],
        "sigmoid_gate": ["sigmoid"],
    }[case]
    with pytest.raises(ConversionError) as e:
        convert(model, x)
    msg = str(e.value)
    assert msg.startswith("tinymp convert: layer '"), msg
    for s in expect:
        assert s in msg, msg


def test_torch_padding_that_cannot_merge_is_rejected():
    torch = _torch()
    nn = torch.nn
    model = nn.Sequential(nn.ZeroPad2d(2), nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConversionError, match=r"layer '0'.*ZeroPad2d.*cannot be merged"):
        convert(model, torch.rand(2, 3, 8, 8))


def test_torch_output_must_be_logits():
    torch = _torch()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(ConversionError, match="num_classes"):
        convert(model, torch.rand(2, 3, 8, 8))


@pytest.mark.parametrize("outputs", [1, 2])
def test_one_output_is_refused_two_outputs_convert(outputs):
    # a one-logit (sigmoid) binary classifier: softmax cross-entropy over it is always 0, so it
    # would convert and never train; the same model with two outputs converts
    torch = _torch()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, outputs)).eval()
    x = torch.rand(8, 3, 8, 8)
    if outputs == 1:
        with pytest.raises(ConversionError, match="has 1 output.*at least 2 classes"):
            convert(model, x)
    else:
        assert tinymp.Model(convert(model, x)).num_classes == 2


@pytest.mark.parametrize("shape,layout", [((8, 1, 8, 8), "NCHW"), ((8, 8, 8, 3), "NCHW"),
                                          ((8, 3, 8, 8), "NHWC")])
def test_calibration_the_model_cannot_take_is_one_line(shape, layout):
    # samples with the wrong channel count, or in the other layout: one line that says how the
    # samples were read, not PyTorch's graph dump
    torch = _torch()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    with pytest.raises(ConversionError) as e:
        convert(model, torch.rand(*shape), input_layout=layout)
    msg = str(e.value)
    assert "\n" not in msg and "expected input" in msg and "channels" in msg, msg
    nchw = list(shape) if layout == "NCHW" else [shape[0], shape[3], shape[1], shape[2]]
    assert f"read as {layout}, i.e. [N, C, H, W] = {nchw}" in msg, msg
    assert "input_layout='%s'" % ("NHWC" if layout == "NCHW" else "NCHW") in msg


def test_float_check_catches_a_mapping_bug(monkeypatch):
    """A wrong mapping (here: spatially flipped kernels) must not pass silently."""
    torch = _torch()
    import tinymp.convert as tc
    orig = tc._Net._lower

    def buggy(self, g, op, node):
        if op.kind == "conv" and op.w.shape[2] > 1:
            op.w = op.w[:, :, ::-1, :].copy()
        return orig(self, g, op, node)

    monkeypatch.setattr(tc._Net, "_lower", buggy)
    torch.manual_seed(1)
    model = _randomize_bn(torch, _mobilenet(torch)).eval()
    with pytest.raises(ConversionError, match="disagrees with the PyTorch model"):
        convert(model, torch.rand(8, 3, 32, 32))


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------

def _export(torch, model, x, **kw):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"],
                          output_names=["logits"], **kw)
    return buf.getvalue()


def _ort(data, x_nchw):
    import onnxruntime as ort
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x_nchw[i:i + 1]})[0]
                           for i in range(len(x_nchw))]).astype(np.float64)


def test_onnx_int8_agreement(trained, tmp_path):
    torch = _torch()
    _onnx()
    model, calib, evaluate, _ = trained
    data = _export(torch, model, torch.from_numpy(_nchw(calib[:1])))
    path = tmp_path / "net.onnx"
    path.write_bytes(data)
    t0 = time.perf_counter()
    blob = convert(str(path), _nchw(calib), input_range=(0.0, 1.0))
    convert_s = time.perf_counter() - t0
    assert convert(data, _nchw(calib), input_range=(0.0, 1.0)) == blob      # bytes too
    ref = _ort(data, _nchw(evaluate))
    q = _int8_logits(blob, evaluate)
    print(f"\nonnx: converted in {convert_s:.2f} s")
    _check_agreement(q, ref, "onnxruntime vs int8")
    # the same int8 model as the direct PyTorch conversion, up to float rounding
    blob_t = convert(model, _nchw(calib), input_range=(0.0, 1.0))
    qt = _int8_logits(blob_t, evaluate)
    assert float((qt.argmax(1) == q.argmax(1)).mean()) >= MIN_ARGMAX_AGREEMENT


def test_onnx_unfolded_batchnorm_and_random_stats():
    """Exported without constant folding, the ONNX graph keeps BatchNormalization nodes."""
    torch = _torch()
    onnx = _onnx()
    from tinymp.convert.onnx import to_graph
    torch.manual_seed(4)
    model = _randomize_bn(torch, _mobilenet(torch), seed=4).eval()
    x = torch.rand(16, 3, 32, 32)
    data = _export(torch, model, x[:1], do_constant_folding=False,
                   dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    assert "BatchNormalization" in {n.op_type for n in onnx.load_from_string(data).graph.node}
    g = to_graph(data, x.numpy())
    assert len(g.nodes) - 1 == 1 + 2 + 3 * 4 + 3 + 1 + 2
    ref = _ort(data, x.numpy())
    got = g.forward(x.numpy().transpose(0, 2, 3, 1))
    assert np.abs(got - ref).max() <= FLOAT_RTOL * max(1.0, np.abs(ref).max())


def test_onnx_export_of_shape_dependent_padding():
    torch = _torch()
    _onnx()
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import train_demo
    finally:
        sys.path.pop(0)
    from tinymp.convert.onnx import to_graph
    torch.manual_seed(0)
    model = _randomize_bn(torch, train_demo.build_torch_model(torch)).eval()
    x = torch.rand(8, 1, 32, 32)
    g = to_graph(_export(torch, model, x[:1]), x.numpy())      # Shape/Gather/Pad chains
    assert g.nodes[1].pad == builder.same_padding(32, 32, 3, 3, 2, 2)


@pytest.mark.parametrize("which", ["mobilenet", "train_demo", "constructs", "flatten_batch2"])
def test_onnx_from_the_dynamo_exporter(which):
    """torch.onnx.export's default (torch.export-based) exporter, which needs onnxscript.
    flatten_batch2: exported with a batch of 2, which the exporter fixes, and spells out in the
    Flatten's Reshape target ([2, 256]); 7 samples are not a whole number of such batches."""
    torch = _torch()
    _onnx()
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    from tinymp.convert.onnx import to_graph
    torch.manual_seed(6)
    if which == "mobilenet":
        model, x = _mobilenet(torch), torch.rand(8, 3, 32, 32)
    elif which == "constructs":
        model, x = _construct_zoo(torch), torch.rand(8, 3, 16, 16)
    elif which == "flatten_batch2":
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3))
        x = torch.rand(7, 3, 8, 8)
    else:
        sys.path.insert(0, os.path.join(ROOT, "tools"))
        try:
            import train_demo
        finally:
            sys.path.pop(0)
        model, x = train_demo.build_torch_model(torch), torch.rand(8, 1, 32, 32)
    model = _randomize_bn(torch, model, seed=6).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (x[:2 if which == "flatten_batch2" else 1],),
                                 dynamo=True, verbose=False)
    data = prog.model_proto.SerializeToString()
    if which == "flatten_batch2":
        dims = prog.model_proto.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_value == 2 and "Reshape" in {n.op_type for n in prog.model_proto.graph.node}
    g = to_graph(data, x.numpy())                   # checked against onnxruntime inside
    with torch.no_grad():
        ref = model(x).numpy()
    got = g.forward(x.numpy().transpose(0, 2, 3, 1))
    assert np.abs(got - ref).max() <= FLOAT_RTOL * max(1.0, np.abs(ref).max())


def _handmade_onnx(onnx, variant):
    """An ONNX graph written by hand: ops the torch exporter does not emit."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(7)
    f32 = lambda *s: rng.normal(0, 0.5, size=s).astype(np.float32)   # noqa: E731
    inits = {
        "w1": f32(8, 3, 3, 3), "b1": f32(8),
        "bn_s": (0.5 + rng.random(8)).astype(np.float32), "bn_b": f32(8),
        "bn_m": f32(8), "bn_v": (0.5 + rng.random(8)).astype(np.float32),
        "zero": np.array(0, np.float32), "six": np.array(6, np.float32),
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        "wd": f32(8, 1, 3, 3), "scale": (0.5 + rng.random((1, 8, 1, 1))).astype(np.float32),
        "axes": np.array([2, 3], np.int64),
        "wm": f32(8, 5), "bm": f32(5),
        "wg": f32(8 * 4 * 4, 5), "shape": np.array([0, -1], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv_same", strides=[2, 2],
                         auto_pad="SAME_UPPER"),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"],
                         name="bn", epsilon=1e-3),
        helper.make_node("Clip", ["bn", "zero", "six"], ["r1"], name="relu6"),
        helper.make_node("Pad", ["r1", "pads"], ["p"], name="pad"),
        helper.make_node("Conv", ["p", "wd"], ["c2"], name="dw", group=8, kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu"),
        helper.make_node("Mul", ["r2", "scale"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "r1"], ["a"], name="residual"),
    ]
    if variant == "reducemean":
        nodes += [
            helper.make_node("ReduceMean", ["a", "axes"], ["gap"], name="mean", keepdims=0),
            helper.make_node("MatMul", ["gap", "wm"], ["mm"], name="matmul"),
            helper.make_node("Add", ["mm", "bm"], ["y"], name="bias"),
        ]
        opset = 18
        unused = ("wg", "shape")
    else:                                             # flatten a 4x4 map, Gemm (transB=0)
        nodes += [
            helper.make_node("Reshape", ["a", "shape"], ["flat"], name="reshape"),
            helper.make_node("Gemm", ["flat", "wg", "bm"], ["y"], name="gemm", alpha=0.5,
                             beta=2.0),
        ]
        opset = 13
        unused = ("axes", "wm")
    graph = helper.make_graph(
        nodes, "handmade", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                          ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items() if k not in unused])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("variant", ["reducemean", "gemm"])
def test_onnx_handmade_graph(variant):
    onnx = _onnx()
    from tinymp.convert.onnx import to_graph
    model = _handmade_onnx(onnx, variant)
    x = np.random.default_rng(0).random((16, 3, 8, 8), dtype=np.float32)
    g = to_graph(model, x)
    ops = [n.op for n in g.nodes[1:]]
    # SAME_UPPER conv+BN+ReLU6, merged pad into the dw conv, Mul as a 1x1 dwconv, add, head
    assert ops[:4] == ["conv", "dwconv", "dwconv", "add"], g.summary()
    assert g.nodes[1].pad == builder.same_padding(8, 8, 3, 3, 2, 2) and g.nodes[1].act == "relu6"
    assert g.nodes[2].pad == (1, 1, 1, 1) and g.nodes[2].act == "relu"
    assert ops[4:] == (["avgpool", "fc"] if variant == "reducemean" else ["fc"])
    data = model.SerializeToString()
    import onnxruntime as ort
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = g.forward(x.transpose(0, 2, 3, 1))
    assert np.abs(got - ref).max() <= FLOAT_RTOL * max(1.0, np.abs(ref).max())
    blob = convert(data, x)
    assert tinymp.Model(blob).num_classes == 5


@pytest.mark.parametrize("case", ["hardswish", "maxpool", "groups2"])
def test_onnx_unsupported_ops_name_the_node(case):
    torch = _torch()
    _onnx()
    nn = torch.nn
    body = {
        "hardswish": [nn.Conv2d(3, 4, 3, padding=1), nn.Hardswish()],
        "maxpool": [nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2)],
        "groups2": [nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1, groups=2)],
    }[case]
    model = nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(2, 3, 8, 8)
    data = _export(torch, model, x[:1])
    expect = {"hardswish": ["(op HardSwish)", "ReLU6"], "maxpool": ["(op MaxPool)", "stride-2"],
              "groups2": ["(op Conv)", "groups=2", "depthwise"]}[case]
    with pytest.raises(ConversionError) as e:
        convert(data, x.numpy())
    msg = str(e.value)
    assert msg.startswith("tinymp convert: layer '/1/"), msg
    for s in expect:
        assert s in msg, msg


def test_onnx_dilation_rejected():
    _onnx()
    from onnx import TensorProto, helper, numpy_helper
    w = np.ones((4, 3, 3, 3), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="dilated", dilations=[2, 2])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(ConversionError, match=r"layer 'dilated' \(op Conv\) has dilations"):
        convert(model, np.zeros((1, 3, 8, 8), np.float32))


# --------------------------------------------------------------------------------------------
# dispatch and optional imports
# --------------------------------------------------------------------------------------------

def test_import_does_not_load_frameworks():
    code = ("import sys, tinymp.convert, tinymp.convert.torch, tinymp.convert.onnx; "
            "heavy = {'torch', 'onnx', 'onnxruntime', 'tensorflow'} & set(sys.modules); "
            "assert not heavy, heavy; "
            "assert callable(tinymp.convert.from_torch) and callable(tinymp.convert.from_onnx); "
            "assert not {'torch', 'onnx'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_convert_dispatches_tflite_lazily(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("tinymp.convert.tflite")
    fake.from_tflite = lambda src, class_names=None, **kw: calls.append((src, class_names)) or b"ok"
    monkeypatch.setitem(sys.modules, "tinymp.convert.tflite", fake)
    blob = b"\x1c\x00\x00\x00TFL3" + bytes(32)
    assert convert(blob, class_names=["a"]) == b"ok"
    p = tmp_path / "m.bin"
    p.write_bytes(blob)                               # no extension: sniffed
    assert convert(str(p)) == b"ok"
    p2 = tmp_path / "m.tflite"
    p2.write_bytes(blob)                              # by its content, whatever its name
    assert convert(p2) == b"ok"
    assert calls[0] == (blob, ["a"]) and len(calls) == 3
    p3 = tmp_path / "n.tflite"
    p3.write_bytes(b"whatever")                       # a name is not a TFLite flatbuffer
    with pytest.raises(ConversionError, match="neither a TFLite flatbuffer"):
        convert(p3)
    assert len(calls) == 3
    import tinymp.convert as tc
    assert tc.from_tflite is fake.from_tflite


def test_convert_rejects_unknown_sources():
    with pytest.raises(ConversionError, match="neither a TFLite"):
        convert(b"\x00\x01garbage", np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ConversionError, match="cannot convert a list"):
        convert([1, 2, 3])
    with pytest.raises(ConversionError, match="calibration samples"):
        convert(b"\x08\x07rest of an onnx file")


def test_class_names_must_match():
    torch = _torch()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten())
    with pytest.raises(ConversionError, match="3 class names"):
        convert(model, torch.rand(2, 3, 8, 8), class_names=["a", "b", "c"])
