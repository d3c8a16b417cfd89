#!/usr/bin/env python3
"""Train the "old classes" model of the accuracy harness's new-classes task and write
host/tinymp/models/digits0to4.tmpm (package data, so an installed tinymp runs the task).

How to run (from the repository root, CPU only, about half a minute)::

    pip install torch==2.13.0 scikit-learn     # the same pin as tools/train_demo.py
    python tools/train_digits_subset.py        # [--classes 0,1,2,3,4] [--epochs N] [--out-dir DIR]

The model is the demo model's architecture (tools/train_demo.py: ARCH, the same training recipe,
seeds, BatchNorm folding and post-training quantisation) trained only on the digits of
``--classes`` (default 0-4) of the demo's training split (``tinymp.datasets.digits(32, 'train',
seed=0)``). Its classifier keeps 10 outputs, one per digit, so the harness can personalise it on
the held-out digits: after training, the rows of the classifier that belong to the held-out
digits are set to zero weights and zero bias (a fresh, untrained output whose logit is 0 for
every input) -- what a person adding a class to a deployed model would start from. Those logits
then sit inside the int8 output range, so their gradients are not masked by saturation.

Only this script needs PyTorch; the harness (tinymp experiment) reads the committed .tmpm.
Deterministic on one machine type, as tools/train_demo.py.
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import train_demo as td  # noqa: E402  (ARCH, training, export, Graph; same recipe)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", default="0,1,2,3,4", help="digits the model is trained on")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "host", "tinymp", "models"))
    ap.add_argument("--name", default=None, help="file stem (default digits<first>to<last>)")
    args = ap.parse_args(argv)
    keep = sorted({int(c) for c in args.classes.split(",")})
    if not keep or keep[0] < 0 or keep[-1] >= td.NUM_CLASSES or len(keep) == td.NUM_CLASSES:
        raise SystemExit("--classes: a proper subset of 0..9")
    stem = args.name or "digits%dto%d" % (keep[0], keep[-1])

    import torch
    if not torch.__version__.startswith("2.13.0"):
        print("warning: written for torch 2.13.0, running %s" % torch.__version__)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    np.random.seed(td.SEED)

    datasets, builder, reference = td.import_tinymp()
    x_train, y_train = datasets.digits(td.RESOLUTION, "train", seed=td.SEED)
    x_test, y_test = datasets.digits(td.RESOLUTION, "test", seed=td.SEED)
    sel = np.isin(y_train, keep)
    x_old, y_old = x_train[sel], y_train[sel]
    print("digits %s: %d training images" % (",".join(map(str, keep)), len(y_old)))

    t0 = time.time()
    model = td.train(torch, x_old, y_old, args.epochs)
    print("trained in %.1f s" % (time.time() - t0))

    weights = td.export_weights(model)
    new = [c for c in range(td.NUM_CLASSES) if c not in keep]
    weights["fc.w"][new, :] = 0.0  # fresh outputs for the held-out digits
    weights["fc.b"][new] = 0.0
    g = td.build_graph(builder, weights)
    calib = x_old[:td.CALIB_IMAGES]
    model_bytes = g.quantize(calib, num_classes=td.NUM_CLASSES, class_names=td.CLASS_NAMES,
                             input_range=(0.0, 1.0))
    os.makedirs(args.out_dir, exist_ok=True)
    tmpm = os.path.join(args.out_dir, stem + ".tmpm")
    with open(tmpm, "wb") as f:
        f.write(model_bytes)
    print("wrote %s (%d bytes)" % (tmpm, len(model_bytes)))

    if reference is not None:
        m = reference.read_model(model_bytes)
        xq = builder.quantize_input(x_test, model_bytes)
        pred = np.array([reference.predict(m, xq[i]) for i in range(len(xq))])
        old = np.isin(y_test, keep)
        print("int8 accuracy (reference, test split): trained digits %.4f, all digits %.4f"
              % (float((pred[old] == y_test[old]).mean()), float((pred == y_test).mean())))


if __name__ == "__main__":
    main()
