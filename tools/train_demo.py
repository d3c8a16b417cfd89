#!/usr/bin/env python3
"""Train the tinymp demo model and write host/tinymp/models/demo.tmpm (+ demo_float.npz).

How to run (from the repository root, CPU only, about a minute)::

    pip install torch==2.13.0 scikit-learn     # exactly this torch pin (CPU wheel); numpy too
    python tools/train_demo.py                 # [--epochs N] [--out-dir DIR]

It needs PyTorch 2.13.0 and scikit-learn (for the bundled UCI handwritten-digits images, see
``host/tinymp/datasets.py``; no network access), plus ``host/tinymp/builder.py`` (the float Graph
and post-training quantiser). When ``host/tinymp/reference.py`` is present it also reports the
int8 accuracy of the written model; ``tests/test_demo_model.py`` checks that accuracy.

What it does
------------
1. Loads ``tinymp.datasets.digits(32)``: 8x8 digits upsampled to 32x32x1 in [0, 1], a fixed
   stratified 70/30 split (1258 train / 539 test images).
2. Trains the MobileNetV2-style CNN below in float32 with BatchNorm after every convolution
   (Adam, cosine learning-rate decay, +-2 pixel random shifts), deterministic seeds, one thread.
3. Folds every BatchNorm (eval mode) into the weights and bias of the convolution before it and
   converts the weights to tinymp's layouts:
   conv ``[Cout][kh][kw][Cin]`` (torch ``[Cout][Cin][kh][kw]``), dwconv ``[kh][kw][C]`` (torch
   ``[C][1][kh][kw]``), pwconv ``[Cout][Cin]``, fc ``[O][n]``.
4. Builds the tinymp float ``Graph`` with those weights and checks that its float forward pass
   matches torch's on the test split.
5. Quantises it (``Graph.quantize``, per-channel int8, calibrated on the first 200 training
   images, input range (0, 1)) and writes ``demo.tmpm``; saves the folded float weights as
   ``demo_float.npz`` (keys ``<layer>.w`` / ``<layer>.b``, tinymp layouts) so the float graph can
   be rebuilt with ``build_graph(np.load(...))``.

Architecture (input 32x32x1; padding everywhere is TensorFlow 'same', reproduced in torch with an
explicit ``F.pad``, e.g. 3x3 stride 2 on 32 pads 0 top/left and 1 bottom/right)::

    stem       conv 3x3 s2 1->8 relu6                        16x16x8
    block A    pw 8->16 relu6, dw 3x3 s1 relu6, pw 16->8, + stem output
    block B    pw 8->24 relu6, dw 3x3 s2 relu6, pw 24->16    8x8x16
    block C    pw 16->48 relu6, dw 3x3 s1 relu6, pw 48->16, + block B output
    block D    pw 16->48 relu6, dw 5x5 s2 relu6, pw 48->24   4x4x24
    head       pw 24->64 relu6
    pool       global average pool                           1x1x64
    fc         64->10 (logits)

Determinism: all random state is seeded, torch runs single-threaded with deterministic algorithms
and the .npz is written with fixed zip timestamps, so re-running on the same machine with the same
software reproduces both files byte for byte. (Float rounding in torch's CPU kernels can differ
between CPU instruction sets or torch builds, so another machine may produce slightly different
weights.)
"""

import argparse
import io
import os
import sys
import time
import types
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = os.path.join(ROOT, "host")
SEED = 0
RESOLUTION = 32
NUM_CLASSES = 10
CALIB_IMAGES = 200
CLASS_NAMES = [str(i) for i in range(NUM_CLASSES)]


def import_tinymp():
    """Import the pure-python tinymp modules from host/ even when the package's __init__ (or the
    C extension it may load) is unavailable: fall back to a bare package object."""
    if HOST not in sys.path:
        sys.path.insert(0, HOST)
    try:
        import tinymp  # noqa: F401
    except Exception:
        for name in [m for m in sys.modules if m == "tinymp" or m.startswith("tinymp.")]:
            del sys.modules[name]
        pkg = types.ModuleType("tinymp")
        pkg.__path__ = [os.path.join(HOST, "tinymp")]
        sys.modules["tinymp"] = pkg
    import importlib
    datasets = importlib.import_module("tinymp.datasets")
    builder = importlib.import_module("tinymp.builder")
    try:
        reference = importlib.import_module("tinymp.reference")
    except ImportError:
        reference = None
    return datasets, builder, reference


# ------------------------------------------------------------------------------------------
# Architecture, shared by the torch model, the export and the tinymp Graph
# ------------------------------------------------------------------------------------------

# (name, kind, cin, cout, k, stride, act); kind 'conv' | 'dw' | 'pw'.  'add:<name>' entries add
# the output of layer <name> to the current tensor.
ARCH = [
    ("stem", "conv", 1, 8, 3, 2, "relu6"),
    ("a_expand", "pw", 8, 16, 1, 1, "relu6"),
    ("a_dw", "dw", 16, 16, 3, 1, "relu6"),
    ("a_project", "pw", 16, 8, 1, 1, None),
    ("add:stem",),
    ("b_expand", "pw", 8, 24, 1, 1, "relu6"),
    ("b_dw", "dw", 24, 24, 3, 2, "relu6"),
    ("b_project", "pw", 24, 16, 1, 1, None),
    ("c_expand", "pw", 16, 48, 1, 1, "relu6"),
    ("c_dw", "dw", 48, 48, 3, 1, "relu6"),
    ("c_project", "pw", 48, 16, 1, 1, None),
    ("add:b_project",),
    ("d_expand", "pw", 16, 48, 1, 1, "relu6"),
    ("d_dw", "dw", 48, 48, 5, 2, "relu6"),
    ("d_project", "pw", 48, 24, 1, 1, None),
    ("head", "pw", 24, 64, 1, 1, "relu6"),
    ("pool",),
    ("fc", "fc", 64, NUM_CLASSES, 1, 1, None),
]


def tf_same_pad(n, k, s):
    """TensorFlow 'same' padding along one axis: (before, after)."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def build_torch_model(torch):
    nn = torch.nn
    F = torch.nn.functional

    class ConvBN(nn.Module):
        def __init__(self, kind, cin, cout, k, stride, act):
            super().__init__()
            groups = cin if kind == "dw" else 1
            self.k, self.stride, self.act = k, stride, act
            self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=0, groups=groups, bias=False)
            self.bn = nn.BatchNorm2d(cout)

        def forward(self, x):
            if self.k > 1:
                pt, pb = tf_same_pad(x.shape[2], self.k, self.stride)
                pl, pr = tf_same_pad(x.shape[3], self.k, self.stride)
                x = F.pad(x, (pl, pr, pt, pb))
            x = self.bn(self.conv(x))
            if self.act == "relu6":
                x = F.relu6(x)
            elif self.act == "relu":
                x = F.relu(x)
            return x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleDict()
            for spec in ARCH:
                if len(spec) == 1:
                    continue
                name, kind, cin, cout, k, stride, act = spec
                if kind == "fc":
                    self.layers[name] = nn.Linear(cin, cout)
                else:
                    self.layers[name] = ConvBN(kind, cin, cout, k, stride, act)

        def forward(self, x):  # x: NCHW
            outs = {}
            for spec in ARCH:
                name = spec[0]
                if name.startswith("add:"):
                    x = x + outs[name[4:]]
                elif name == "pool":
                    x = x.mean(dim=(2, 3))
                else:
                    x = self.layers[name](x)
                    outs[name] = x
            return x

    return Net()


def export_weights(model):
    """Fold eval-mode BatchNorm into the convolutions; weights in tinymp layouts (float32)."""
    weights = {}
    for spec in ARCH:
        if len(spec) == 1:
            continue
        name, kind = spec[0], spec[1]
        mod = model.layers[name]
        if kind == "fc":
            w = mod.weight.detach().double().numpy()            # [O][n]
            b = mod.bias.detach().double().numpy()
        else:
            bn = mod.bn
            gamma = bn.weight.detach().double().numpy()
            beta = bn.bias.detach().double().numpy()
            mean = bn.running_mean.detach().double().numpy()
            var = bn.running_var.detach().double().numpy()
            factor = gamma / np.sqrt(var + bn.eps)
            wt = mod.conv.weight.detach().double().numpy() * factor[:, None, None, None]
            b = beta - mean * factor
            if kind == "conv":
                w = wt.transpose(0, 2, 3, 1)                      # [Cout][kh][kw][Cin]
            elif kind == "dw":
                w = wt[:, 0].transpose(1, 2, 0)                   # [kh][kw][C]
            else:
                w = wt[:, :, 0, 0]                                # [Cout][Cin]
        weights[name + ".w"] = np.ascontiguousarray(w, dtype=np.float32)
        weights[name + ".b"] = np.ascontiguousarray(b, dtype=np.float32)
    return weights


def build_graph(builder, weights):
    """The tinymp float Graph of ARCH with the given (folded) weights."""
    g = builder.Graph(input_shape=(RESOLUTION, RESOLUTION, 1))
    x = g.input
    outs = {}
    for spec in ARCH:
        name = spec[0]
        if name.startswith("add:"):
            x = g.add(x, outs[name[4:]])
            continue
        if name == "pool":
            x = g.avgpool(x)
            continue
        _, kind, _, _, _, stride, act = spec
        w, b = weights[name + ".w"], weights[name + ".b"]
        if kind == "conv":
            x = g.conv(x, w, b, stride=stride, padding="same", act=act)
        elif kind == "dw":
            x = g.dwconv(x, w, b, stride=stride, padding="same", act=act)
        elif kind == "pw":
            x = g.pwconv(x, w, b, act=act)
        else:
            x = g.fc(x, w, b, act=act)
        outs[name] = x
    return g


def save_npz(path, arrays):
    """np.savez_compressed, but with fixed zip timestamps and order so the bytes are reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            arr_buf = io.BytesIO()
            np.lib.format.write_array(arr_buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, arr_buf.getvalue())
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def train(torch, x_train, y_train, epochs, batch_size=32, lr=3e-3, max_shift=2):
    F = torch.nn.functional
    torch.manual_seed(SEED)
    model = build_torch_model(torch)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(x_train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs,
                                                steps_per_epoch=steps_per_epoch)
    gen = torch.Generator().manual_seed(SEED)
    xt = torch.from_numpy(x_train.transpose(0, 3, 1, 2).copy())   # NHWC -> NCHW
    yt = torch.from_numpy(y_train)
    n = len(xt)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total_loss, correct = 0.0, 0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            xb, yb = xt[idx], yt[idx]
            if max_shift:
                # random translation by up to max_shift pixels (zero fill), one per batch element
                s = max_shift
                padded = F.pad(xb, (s, s, s, s))
                offs = torch.randint(0, 2 * s + 1, (len(idx), 2), generator=gen)
                xb = torch.stack([padded[j, :, oy:oy + RESOLUTION, ox:ox + RESOLUTION]
                                  for j, (oy, ox) in enumerate(offs.tolist())])
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        if epoch == 0 or (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            print("  epoch %2d  loss %.4f  train acc %.4f" % (epoch + 1, total_loss / n, correct / n))
    model.eval()
    return model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--out-dir", default=os.path.join(HOST, "tinymp", "models"))
    args = ap.parse_args(argv)

    import torch
    if not torch.__version__.startswith("2.13.0"):
        print("warning: written for torch 2.13.0, running %s" % torch.__version__)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    np.random.seed(SEED)

    datasets, builder, reference = import_tinymp()
    x_train, y_train = datasets.digits(RESOLUTION, "train", seed=SEED)
    x_test, y_test = datasets.digits(RESOLUTION, "test", seed=SEED)
    print("digits: %d train, %d test images of %s" % (len(x_train), len(x_test), x_train.shape[1:]))

    t0 = time.time()
    model = train(torch, x_train, y_train, args.epochs)
    print("trained in %.1f s" % (time.time() - t0))

    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test.transpose(0, 3, 1, 2).copy())).numpy()
    torch_acc = float((torch_logits.argmax(1) == y_test).mean())
    print("float accuracy (torch, test):  %.4f" % torch_acc)

    weights = export_weights(model)
    g = build_graph(builder, weights)
    graph_logits = np.asarray(g.forward(x_test), dtype=np.float64)
    diff = float(np.abs(graph_logits - torch_logits).max())
    graph_acc = float((graph_logits.argmax(1) == y_test).mean())
    print("float accuracy (Graph, test):  %.4f   max |Graph - torch| logit diff %.2e"
          % (graph_acc, diff))
    if diff > 1e-3:
        raise SystemExit("Graph float forward disagrees with torch (max diff %g)" % diff)

    model_bytes = g.quantize(x_train[:CALIB_IMAGES], num_classes=NUM_CLASSES,
                             class_names=CLASS_NAMES, input_range=(0.0, 1.0))
    os.makedirs(args.out_dir, exist_ok=True)
    tmpm_path = os.path.join(args.out_dir, "demo.tmpm")
    npz_path = os.path.join(args.out_dir, "demo_float.npz")
    with open(tmpm_path, "wb") as f:
        f.write(model_bytes)
    save_npz(npz_path, weights)
    print("wrote %s (%d bytes), %s (%d bytes)"
          % (tmpm_path, len(model_bytes), npz_path, os.path.getsize(npz_path)))

    if reference is not None:
        m = reference.read_model(model_bytes)
        # int8 input = clamp(round(x / input_scale) + input_zero_point, -128, 127), rounding half
        # away from zero (builder.quantize_input)
        xq = builder.quantize_input(x_test, model_bytes)
        pred = np.array([reference.predict(m, xq[i]) for i in range(len(xq))])
        print("int8 accuracy (reference, test): %.4f" % float((pred == y_test).mean()))
    else:
        print("int8 accuracy: tinymp.reference not available; checked by tests/test_demo_model.py")


if __name__ == "__main__":
    main()
