"""The `tinymp` command.

    tinymp info MODEL [--layers] [--json]     what a .tmpm model is and what it costs
    tinymp plan [MODEL ...] [--zoo] [--budget KB] [--json]
                                               inference arena of models (every zoo model with --zoo)
    tinymp plan MODEL --method M [--budget KB] [--r R] [--ratio X] [--storage int8|fp32] [--json]
                                               a training plan: per-layer table, memory by part
    tinymp plan MODEL --method sparse --layers I,J,... [--ratios X,Y,...] [--budget KB] [--r R]
                                               sparse: the layers to train (indices from
                                               `tinymp info MODEL --layers`), a ratio each
    tinymp plan MODEL --method tinytrain --support FILE|DIR [--budget KB]
                                               tinytrain: its selection pass over the first 32
                                               samples of FILE (.npz) or a dataset folder
    tinymp demo [--inference]                  the whole session against the simulated board:
                                               push the demo model, collect shifted digits with
                                               the simulated camera, train on the board, report
                                               (--inference: the demo model on real digits only)
    tinymp convert SOURCE -o OUT.tmpm [--calib X.npy] [--layout NCHW|NHWC] [--classes a,b,...]
                                               an int8 .tflite or an .onnx model to .tmpm
                                               (PyTorch modules: tinymp.convert.convert in Python)
    tinymp experiment [--quick] [--out DIR] [--seeds N] [--shots 5,10,20] [--tasks ...]
                      [--methods ...] [--epochs E] [--lr X] [--jobs J] [--notes FILE] [--json]
                                               the personalisation-accuracy harness: every
                                               training method of the engine on shifted and
                                               new-class digit tasks (docs/EXPERIMENT.md)
    tinymp bench [--models mbv2,mcunet,demo] [--model FILE] [--budget KB] [--quick]
                 [--out DIR] [--full-runs]
                                               every method on an emulated Cortex-M7, on the
                                               zoo models or a model file of yours
                                               (make bench builds the program first)

The personalisation session (docs/SESSION.md; the work is in tinymp.session):

    tinymp devices                             serial ports with a board, 'sim' and 'qemu'
    tinymp push MODEL [--port P]               push a model to the board
    tinymp collect --label L --count N | --from FILE [--eval]
    tinymp train [--method M] [--budget KB] [--epochs E]
    tinymp eval [--data FILE] [--pretrained|--both|--trial]
    tinymp params save|rollback|reset
    tinymp status [--json]                     what the board holds now (changes nothing)
    tinymp report [--png DIR] [--m7]           --m7: a Cortex-M7 estimate (emulated)
    tinymp session CONFIG.json                 the whole flow from one config file

--port is a serial device, 'sim' or 'sim:PROFILE' (a simulated board), 'qemu', or 'auto' (the
default: the one attached MicroPython board, else 'sim').

Errors in user input (a missing or corrupted model, a bad argument) print one line starting with
"tinymp:" and exit with status 2; nothing is written. A failure of the board or the link prints
one line and exits with status 1.
"""
import argparse
import json
import math
import os
import re
import shlex
import sys

from . import summary
# the samples a plan's selection pass reads: as many as the board's agent reads of its store
from .tinymp_agent import SUPPORT_SAMPLES


class UserError(Exception):
    """A problem with what the user asked for: printed as one line, exit status 2."""


def _load(path):
    from .session.commands import read_model  # the same checks and messages as `tinymp push`
    data, m = read_model(path)
    return m, data


def cmd_info(args):
    m, data = _load(args.model)
    s = summary.model_summary(m, len(data))
    if args.json:
        s["class_names"] = m.class_names
        if args.layers:
            s["layer_table"] = summary.layer_rows(m)
        print(json.dumps(s, indent=2))
        return 0
    h, w, c = s["input_shape"]
    print(f"model        {args.model}")
    print(f"input        {h}x{w}x{c} int8 (scale {m.input_scale:.6g}, zero point {m.input_zero_point})")
    names = m.class_names
    print(f"classes      {m.num_classes}" + (f": {', '.join(names)}" if names else ""))
    print(f"layers       {s['layers']}   parameters {s['params']:,}   MACs {s['macs']:,}")
    print(f"flash        {summary.kib(len(data))} (weights are read in place)")
    print(f"RAM arena    {s['arena_bytes']:,} bytes ({summary.kib(s['arena_bytes'])}) for one inference; "
          f"lower bound {s['lower_bound_bytes']:,}; {s['in_place_layers']} "
          f"layer{'' if s['in_place_layers'] == 1 else 's'} in place")
    if args.layers:
        rows = [(r["index"], r["type"], "x".join(map(str, r["in"])), "x".join(map(str, r["out"])),
                 r["kernel"], f"{r['params']:,}", f"{r['macs']:,}", "yes" if r["in_place"] else "",
                 r["scratch"] or "")
                for r in summary.layer_rows(m)]
        print()
        print(summary.format_table(["#", "type", "in", "out", "k/s", "params", "MACs", "in place", "scratch"],
                                   rows, "rllllrrlr"))
    return 0


def _zoo_entries():
    from . import zoo
    entries = [("demo", zoo.demo)]
    for name, kwargs in zoo.models():
        label = name + "".join(f" {k}={v}" for k, v in kwargs.items())
        entries.append((label, lambda name=name, kwargs=kwargs: getattr(zoo, name)(**kwargs)))
    return entries


def cmd_plan(args):
    import tinymp
    if not args.models and not args.zoo:
        raise UserError("tinymp: give model files or --zoo")
    if args.budget is not None and summary.budget_bytes(args.budget) is None:
        raise UserError("tinymp: --budget must be " + summary.BUDGET_KB_RULE)
    sparse = _sparse_options(args)  # a bad layer list is refused before any model is read
    support = _support_source(args)  # ... and a samples file that no model could take
    items = []
    for path in args.models:
        m, data = _load(path)
        items.append((path, m, data))
    if args.zoo:
        for label, build in _zoo_entries():
            data = build()
            items.append((label, tinymp.Model(data), data))
    if args.method is not None:
        return _training_plans(args, items, sparse, support)
    given = [f"--{k}" for k in ("r", "ratio", "storage") if getattr(args, k) is not None]
    if given:
        raise UserError(f"tinymp: {', '.join(given)} only applies to a training plan: add --method")
    out = []
    for label, m, data in items:
        s = summary.model_summary(m, len(data))
        s["model"] = label
        if args.budget is not None:
            s["fits"] = s["arena_bytes"] <= args.budget * 1024
        out.append(s)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    headers = ["model", "input", "params", "MACs", "flash", "arena (bytes)", "lower bound"]
    if args.budget is not None:
        headers.append(f"fits {args.budget:g} KB")
    rows = []
    for s in out:
        row = [s["model"], "x".join(map(str, s["input_shape"])), f"{s['params']:,}", f"{s['macs']:,}",
               summary.kib(s["file_bytes"]), f"{s['arena_bytes']:,}", f"{s['lower_bound_bytes']:,}"]
        if args.budget is not None:
            row.append("yes" if s["fits"] else "NO")
        rows.append(row)
    print(summary.format_table(headers, rows, "llrrrrrl"))
    print("\narena: RAM for activations and kernel scratch of one inference, as planned by the engine "
          "(weights stay in flash)")
    return 0


_LAYER_INDEX = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _items(text, what, example):
    """The comma-separated items of --layers / --ratios; an empty one (`10,,14`, `10,`) is refused
    rather than skipped, so a slip in a list never plans other layers than the user meant."""
    if not text.strip():
        raise UserError(f"tinymp: --{what} needs a comma-separated list, e.g. --{what} {example}")
    items = [t.strip() for t in text.split(",")]
    if "" in items:
        raise UserError(f"tinymp: --{what} {text!r} has an empty item: give values separated by "
                        f"commas, e.g. --{what} {example}")
    return items


def _sparse_options(args):
    """The engine's `layers` and `ratios` options (docs/API.md) from --layers / --ratios, which
    only method 'sparse' takes: {} for the other methods and for an inference plan."""
    given = [f"--{k}" for k in ("layers", "ratios") if getattr(args, k) is not None]
    if args.method is None:
        if given:
            raise UserError(f"tinymp: {', '.join(given)} only applies to a training plan of method "
                            "sparse: add --method sparse")
        return {}
    if args.method != "sparse":
        if given:
            # the engine refuses them too, but one model at a time and in its own words
            raise UserError(f"tinymp: {', '.join(given)} only applies to method 'sparse', not "
                            f"'{args.method}'")
        return {}
    if args.layers is None:
        model = shlex.quote(args.models[0]) if len(args.models) == 1 and not args.zoo else "MODEL"
        raise UserError("tinymp: method 'sparse' needs --layers: the indices of the layers to train, "
                        f"comma-separated (`tinymp info {model} --layers` lists each layer's index "
                        "and type; conv, dwconv, pwconv and fc layers can be trained)")
    layers, seen = [], set()
    for t in _items(args.layers, "layers", "10,14,15"):
        if not _LAYER_INDEX.fullmatch(t):
            raise UserError(f"tinymp: --layers: {t!r} is not a layer index (a whole number, the # "
                            "column of `tinymp info MODEL --layers`)")
        digits = t.lstrip("0") or "0"
        if len(digits) > 6:
            # past any model (docs/FORMAT.md: at most 1024 layers), and past what int() reads
            # when it has thousands of digits; the engine names the model's own range otherwise
            shown = digits if len(digits) <= 20 else f"{digits[:10]}... ({len(digits)} digits)"
            raise UserError(f"tinymp: --layers: {shown} is not a layer of any model (a model has "
                            "at most 1024 layers)")
        if int(digits) in seen:
            raise UserError(f"tinymp: --layers: layer {int(digits)} is given twice")
        seen.add(int(digits))
        layers.append(int(digits))
    out = {"layers": layers}
    if args.ratios is not None:
        ratios = []
        for t in _items(args.ratios, "ratios", "0.25,0.5,1"):
            if not _DECIMAL.fullmatch(t):
                raise UserError(f"tinymp: --ratios: {t!r} is not a number (a ratio in (0, 1])")
            ratios.append(float(t))
        if len(ratios) != len(layers):
            n, k = len(ratios), len(layers)
            raise UserError(f"tinymp: --ratios gives {n} ratio{'' if n == 1 else 's'} for {k} "
                            f"layer{'' if k == 1 else 's'}: give one per layer of --layers, in the "
                            "same order")
        out["ratios"] = ratios
    return out


def _support_source(args):
    """--support checked as far as it can be without a model (check_samples: it exists, it is an
    .npz of x and y or a dataset folder with samples); what load_samples takes as `dataset`."""
    if args.support is None:
        return None
    if args.method is None:
        raise UserError("tinymp: --support only applies to a training plan: add --method")
    if args.method not in ("tinytrain", "tinymp"):
        raise UserError(f"tinymp: --support only applies to methods tinytrain and tinymp, not "
                        f"'{args.method}'")
    from .session.dataset import DatasetError, check_samples
    try:
        return check_samples(args.support)
    except DatasetError as e:
        raise UserError(str(e)) from None


def _support(path, dataset, m, label):
    """The selection pass's samples for model `m` from --support (an .npz of x and y, or a
    dataset folder, read and checked as `tinymp collect --from` reads them): the first
    SUPPORT_SAMPLES, as (inputs, labels) for Model.plan(support=...)."""
    from .session.dataset import DatasetError, load_samples
    h, w, c = m.input_shape
    try:
        x, y, _ = load_samples(path, (h, w, c), m.input_scale, m.input_zero_point, m.num_classes,
                               dataset=dataset)
    except DatasetError as e:  # what does not suit this model: named, as engine errors are
        raise UserError(f"{e}, for {label}") from None
    n = min(len(y), SUPPORT_SAMPLES)
    return [x[i].tobytes() for i in range(n)], [int(v) for v in y[:n]]


def _training_plans(args, items, sparse, support=None):
    """tinymp plan --method: the training plan of each model (Model.plan, docs/API.md); `sparse`
    holds the layer list of method 'sparse' (_sparse_options)."""
    if args.method == "tinytrain" and args.support is None:
        raise UserError("tinymp: method 'tinytrain' needs support samples for its selection pass: "
                        "give --support FILE.npz or a dataset folder (its first "
                        f"{SUPPORT_SAMPLES} samples, as the board takes its sample store's)")
    kw = {"method": args.method, "storage": args.storage or "int8", **sparse}
    if args.budget is not None:
        kw["budget"] = summary.budget_bytes(args.budget)
    if args.r is not None:
        kw["r"] = args.r
    if args.ratio is not None:
        kw["ratio"] = args.ratio
    out = []
    for label, m, _ in items:
        if args.support is not None:
            kw["support"] = _support(args.support, support, m, label)
        try:
            p = m.plan(**kw)
        except ValueError as e:
            raise UserError(f"{e} ({label})") from None
        out.append((label, p))
    if args.json:
        print(json.dumps([{"model": label, "method": p.method, "r": p.r, "ratio": p.ratio,
                           "storage": p.storage, "arena_bytes": p.arena_bytes,
                           "breakdown": p.breakdown, "layers": p.layers,
                           # input channels trained per layer with weights (a sparse plan's ratios)
                           "channels": {str(i): len(c) for i, c in sorted(p.channels.items())},
                           "forward_macs": p.forward_macs, "backward_macs": p.backward_macs}
                          for label, p in out], indent=2))
        return 0
    for label, p in out:
        print(f"{label}:")
        print(p.describe())
    return 0


def cmd_demo(args):
    if not args.inference:
        from .session import run
        return run.cmd_demo(args)
    if args.session is not None:
        raise UserError("tinymp: demo --inference writes no folder: --session is for the session "
                        "demo (`tinymp demo --session DIR`)")
    return cmd_demo_inference(args)


def cmd_demo_inference(args):
    import numpy as np

    import tinymp
    from . import zoo
    from .builder import quantize_input
    try:
        from .datasets import digits
        x, y = digits(split="test")
    except ImportError:
        raise UserError("tinymp: the demo needs scikit-learn for its digits data "
                        "(pip install scikit-learn)") from None
    data = zoo.demo()
    m = tinymp.Model(data)
    q = quantize_input(x, (m.input_scale, m.input_zero_point))
    preds = np.array([m.predict(img) for img in q])
    acc = float((preds == y).mean())
    s = summary.model_summary(m, len(data))
    h, w, c = m.input_shape
    if args.json:
        print(json.dumps({"model": s, "accuracy": acc, "n": int(len(y)),
                          "examples": [[int(t), int(p)] for t, p in zip(y[:12], preds[:12])]},
                         indent=2))
        return 0
    print("tinymp demo: a small MobileNetV2-style CNN trained on scikit-learn's handwritten digits,")
    print("run by the tinymp C engine (PC build of the same core that runs on the board).\n")
    print(f"model      {h}x{w}x{c} int8 input, {m.num_classes} classes, {s['layers']} layers, "
          f"{s['params']:,} parameters, {s['macs']:,} MACs per image")
    print(f"accuracy   {acc * 100:.1f}% on {len(y)} held-out digit images")
    shown = " ".join(f"{int(t)}->{int(p)}" for t, p in zip(y[:12], preds[:12]))
    print(f"examples   true->predicted: {shown}")
    print(f"flash      {summary.kib(len(data))} of weights, read in place")
    print(f"RAM        {s['arena_bytes']:,} bytes of inference arena (lower bound {s['lower_bound_bytes']:,}), "
          f"{s['in_place_layers']} layer{'' if s['in_place_layers'] == 1 else 's'} in place")
    print("\nThe whole personalisation session against a simulated board: tinymp demo")
    return 0


def _write_atomically(path, data):
    """Write to a temporary file beside `path`, then rename: a failure leaves nothing half-written."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"tinymp: cannot write {path}: {e.strerror or e}") from None


def cmd_convert(args):
    import tinymp
    from . import convert as conv
    if not os.path.exists(args.source):
        raise UserError(f"tinymp: no such model file: {args.source}")
    if os.path.exists(args.output) and os.path.samefile(args.source, args.output):
        raise UserError(f"tinymp: the output {args.output} is the source model; name another file")
    calib = None
    if args.calib is not None:
        from ._arrayfiles import ArrayFileError, read_npy
        if os.path.exists(args.calib) and not os.path.isfile(args.calib):
            raise UserError(f"tinymp: the calibration samples {args.calib} are not a file: give "
                            "an .npy of samples (numpy.save)")
        try:
            calib = read_npy(args.calib)
        except ArrayFileError as e:
            raise UserError(f"tinymp: cannot read calibration samples {args.calib}: {e}" +
                            ("" if not e.wrong_kind else "; save the calibration samples as one array "
                             "with numpy.save (.npy)")) from None
        if calib.ndim != 4 or calib.shape[0] < 1:
            raise UserError(f"tinymp: calibration samples must be a 4-D array [N, ...], got shape {calib.shape}")
    names = [n.strip() for n in args.classes.split(",")] if args.classes else None
    kw = {}
    if calib is not None:
        kw["input_layout"] = args.layout
    if args.input_range is not None:
        lo, hi = args.input_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise UserError(f"tinymp: --input-range must be two finite numbers LO HI with LO < HI, "
                            f"got {lo:g} {hi:g}")
        kw["input_range"] = (lo, hi)
    kind = None
    try:
        kind = conv._kind_of(args.source)
        if calib is not None and kind == "tflite":
            print(f"tinymp: note: {args.source} is already quantised: --calib is not needed and "
                  "is ignored", file=sys.stderr)
        data = conv.convert(args.source, calib=calib, class_names=names, **kw)
    except conv.ConversionError as e:
        # the converter's words start 'tinymp convert:'; the command's errors start 'tinymp:'
        raise UserError("tinymp: " + str(e).removeprefix("tinymp convert: ")) from None
    except ImportError as e:
        name = {"tflite": "TFLite ", "onnx": "ONNX "}.get(kind, "")
        extra = f"'tinymp[{kind}]'" if name else "'tinymp[tflite]' or 'tinymp[onnx]'"
        raise UserError(f"tinymp: converting this {name}model needs an optional package "
                        f"({e.name or e}); pip install {extra}") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"tinymp: {' '.join(str(e).split())}") from None
    try:
        m = tinymp.Model(data)  # the engine validates what it will run
    except ValueError as e:  # nothing written: a converter fault, not the user's
        raise UserError(f"tinymp: the engine refuses the converted model ({e}); nothing was "
                        "written; this is a fault of the converter: please report it with the "
                        "model") from None
    _write_atomically(args.output, data)
    s = summary.model_summary(m, len(data))
    h, w, c = m.input_shape
    print(f"wrote {args.output}: {h}x{w}x{c} int8 input, {m.num_classes} classes, {s['layers']} layers, "
          f"{s['params']:,} parameters, {summary.kib(len(data))}, inference arena {s['arena_bytes']:,} bytes")
    return 0


def _csv(text, what, conv=str):
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"tinymp: --{what} needs a comma-separated list")
    if len(items) != len(text.split(",")):  # "5,,10" or a trailing comma: a value left out?
        raise UserError(f"tinymp: --{what}: {text!r} has an empty item")
    try:
        return [conv(t) for t in items]
    except ValueError:
        raise UserError(f"tinymp: --{what}: {text!r} is not a list of whole numbers") from None


def _experiment_command(args):
    """The canonical command line of an experiment run (recorded in RESULTS.md)."""
    parts = ["tinymp", "experiment"]
    if args.quick:
        parts.append("--quick")
    for opt in ("out", "seeds", "shots", "tasks", "methods", "epochs", "lr", "jobs", "notes"):
        v = getattr(args, opt)
        if v is not None:
            parts += [f"--{opt}", str(v)]
    return " ".join(parts)


def cmd_experiment(args):
    from . import experiment as ex
    if args.list:
        print("tasks:")
        for t in ex.TASKS:
            print(f"  {t.name:12s} {t.model:11s} {t.spec:26s} {t.text}")
        print("methods:")
        for m in ex.METHODS:
            print(f"  {m.name:14s} {m.text}")
        return 0
    q = ex.QUICK if args.quick else {}
    tasks = _csv(args.tasks, "tasks") if args.tasks is not None else q.get("tasks", ex.TASK_NAMES)
    methods = _csv(args.methods, "methods") if args.methods is not None else q.get("methods", ex.METHOD_NAMES)
    shots = _csv(args.shots, "shots", int) if args.shots is not None else q.get("shots", list(ex.SHOTS))
    seeds = args.seeds if args.seeds is not None else q.get("seeds", ex.SEEDS)
    epochs = args.epochs if args.epochs is not None else q.get("epochs", ex.EPOCHS)
    lr = args.lr if args.lr is not None else q.get("lr")
    jobs = args.jobs if args.jobs is not None else (1 if args.quick else min(4, os.cpu_count() or 1))
    try:
        for t in tasks:
            ex.task_by_name(t)
        for m in methods:
            ex.method_by_name(m)
    except ex.ExperimentError as e:
        raise UserError(str(e)) from None
    if len(set(tasks)) != len(tasks) or len(set(methods)) != len(methods) or len(set(shots)) != len(shots):
        raise UserError("tinymp: --tasks, --methods and --shots must not repeat a value")
    bad = [k for k in shots if not 1 <= k <= ex.POOL]
    if bad:
        raise UserError(f"tinymp: --shots must be between 1 and {ex.POOL} per class, got {bad[0]}")
    if not 1 <= seeds <= 100:
        raise UserError(f"tinymp: --seeds must be between 1 and 100, got {seeds}")
    if not 1 <= epochs <= 1000:
        raise UserError(f"tinymp: --epochs must be between 1 and 1000, got {epochs}")
    if lr is not None and not 0 < lr <= 1:
        raise UserError(f"tinymp: --lr must be in (0, 1], got {lr:g}")
    if not 1 <= jobs <= 64:
        raise UserError(f"tinymp: --jobs must be between 1 and 64, got {jobs}")
    out = args.out or os.path.join("build", "experiment")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"tinymp: --out {out} exists and is not a directory")
    notes = None
    if args.notes is not None:
        try:
            notes = ex.read_notes(args.notes)
        except ValueError as e:
            raise UserError(f"tinymp: {e}") from None
    if "clutter" in tasks:
        try:
            import PIL  # noqa: F401  (scikit-learn decodes its sample photographs with Pillow)
        except ImportError:
            raise UserError("tinymp: task 'clutter' needs Pillow (pip install pillow)") from None
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise UserError("tinymp: the experiment needs scikit-learn for its digits "
                        "(pip install scikit-learn)") from None
    try:  # after the checks above: a refused run makes no folder
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"tinymp: cannot create {out}: {e.strerror or e}") from None
    command = _experiment_command(args)
    print(f"{command}: {len(tasks)} task(s), {len(methods)} method(s), shots {shots}, "
          f"{seeds} seed(s), {epochs} passes, {jobs} worker(s)", file=sys.stderr, flush=True)
    try:
        res = ex.run(tasks=tasks, methods=methods, shots=shots, seeds=seeds, epochs=epochs, lr=lr,
                     jobs=jobs)
        if args.notes is not None:
            # read again: the reading may have been edited while the run went on (minutes)
            try:
                notes = ex.read_notes(args.notes)
            except ValueError:
                pass  # keep the copy read at the start
        paths = ex.write_outputs(res, out, command, notes)
    except ex.ExperimentError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"tinymp: cannot write the results in {out}: {e.strerror or e}") from None
    if args.json:
        res["command"] = command
        print(json.dumps(res, indent=1))
        return 0
    summ = res["summary"]
    print(f"wall time {res['wall_seconds']:.0f} s")
    for t in tasks:
        d = summ["per_task"][t]
        rows = []
        for mn, p in d.items():
            rows.append([mn] + [f"{p['acc'][str(k)][0]:.1f} ± {p['acc'][str(k)][1]:.1f}" for k in shots]
                        + [f"{p['arena_bytes']:,}", f"{p['backward_macs']:,}"])
        print(f"\ntask {t} (accuracy %, mean ± std over {seeds} seeds)")
        print(summary.format_table(["method"] + [f"{k}-shot" for k in shots] + ["arena B", "bwd MACs"],
                                   rows, "l" + "r" * (len(shots) + 2)))
    v = res["verdict"]
    if v:
        r = v["rows"][-1]
        print(f"\nshifted domains: tinymp {r['tinymp']:.1f} %, full {r['full']:.1f} %, last {r['last']:.1f} % "
              f"(all shot counts); tinymp at {100 * v['memory_fraction_of_full']:.0f} % of full's memory; "
              f"criterion {'met' if v['met'] else 'not met'}")
    print()
    for k in ("markdown", "json", "png"):
        if k in paths:
            print(f"wrote {paths[k]}")
    return 0


class Parser(argparse.ArgumentParser):
    """argparse's parser whose errors (an unknown option, a missing or badly typed value) are
    one line starting 'tinymp:' and status 2, like every other refusal of the tool; argparse
    prints the whole usage before its message, several lines that bury it."""

    def error(self, message):
        cmd = self.prog.split(None, 1)[1] if " " in self.prog else ""
        print(f"tinymp: {cmd + ': ' if cmd else ''}{' '.join(message.split())} "
              f"(`{self.prog} --help` shows the options)", file=sys.stderr)
        raise SystemExit(2)


def build_parser():
    p = Parser(prog="tinymp", description="tinymp: on-device CNN personalisation "
                                "for microcontrollers (PC tools)")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe a .tmpm model and what it costs")
    info.add_argument("model", help="the .tmpm model file (`tinymp convert` makes one)")
    info.add_argument("--layers", action="store_true", help="per-layer table")
    info.add_argument("--json", action="store_true",
                      help="machine-readable output: one JSON object (with --layers, the table too)")
    info.set_defaults(func=cmd_info)
    plan = sub.add_parser("plan", help="inference arena of models, or a training plan")
    plan.add_argument("models", nargs="*")
    plan.add_argument("--zoo", action="store_true", help="every zoo model")
    plan.add_argument("--budget", type=float, help="RAM budget in KB: say whether each model fits "
                      "(with --method: the budget the training plan must fit)")
    plan.add_argument("--method", choices=["none", "last", "bias", "sparse", "tinytrain", "full", "tinymp"],
                      help="plan training instead of inference (sparse needs --layers, tinytrain "
                           "--support)")
    plan.add_argument("--support", metavar="FILE|DIR",
                      help="with --method tinytrain (which needs it) or tinymp: labelled samples "
                           "(.npz of x and y, or a dataset folder) whose first "
                           f"{SUPPORT_SAMPLES} the selection pass reads")
    plan.add_argument("--layers", metavar="I,J,...",
                      help="with --method sparse: the indices of the layers whose weights are "
                           "trained, comma-separated (the # column of `tinymp info MODEL --layers`); "
                           "the classifier is trained as well")
    plan.add_argument("--ratios", metavar="X,Y,...",
                      help="with --layers: the fraction of input channels trained in each listed "
                           "layer, one per layer, each in (0, 1] (default 1)")
    plan.add_argument("--r", type=int, help="Gradient Condensing patch size (1 = exact)")
    plan.add_argument("--ratio", type=float, help="fraction of input channels updated per period "
                      "(tinymp, tinytrain; sparse takes --ratios)")
    plan.add_argument("--storage", choices=["int8", "fp32"], default=None,
                      help="how trained weights are kept (with --method; default int8)")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(func=cmd_plan)
    conv = sub.add_parser("convert", help="convert an int8 .tflite or an .onnx model to .tmpm")
    conv.add_argument("source", help="model file: .tflite (int8) or .onnx (float, needs --calib)")
    conv.add_argument("-o", "--output", required=True, help="the .tmpm file to write")
    conv.add_argument("--calib", help=".npy float array of calibration samples [N, C, H, W] (or NHWC)")
    conv.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW", help="layout of --calib")
    conv.add_argument("--classes", help="comma-separated class names")
    conv.add_argument("--input-range", nargs=2, type=float, metavar=("LO", "HI"),
                      help="the real input range that int8 -128 ... 127 maps onto (widened to "
                           "include 0), e.g. 0 1 for a model fed pixels / 255; default: the "
                           "range of --calib. ONNX only (an int8 .tflite fixes its own)")
    conv.set_defaults(func=cmd_convert)
    exp = sub.add_parser("experiment", help="personalisation accuracy of every training method "
                         "(the C engine on shifted and new-class digits)")
    exp.add_argument("--quick", action="store_true", help="a small task (one shift, 5 shots, 2 seeds, "
                     "4 methods, one lr): seconds")
    exp.add_argument("--out", help="directory for RESULTS.md, results.json, accuracy_memory.png "
                     "(default build/experiment)")
    exp.add_argument("--seeds", type=int, help="seeds per configuration (default 3; --quick 2)")
    exp.add_argument("--shots", help="shots per class, comma-separated, each 1-20 (default 5,10,20)")
    exp.add_argument("--tasks", help="comma-separated task names (default all; --list shows them)")
    exp.add_argument("--methods", help="comma-separated method names (default all)")
    exp.add_argument("--epochs", type=int, help="passes over the support set (default 10)")
    exp.add_argument("--lr", type=float, help="one learning rate for every method (default: each "
                     "method's best on a validation split)")
    exp.add_argument("--jobs", type=int, help="worker processes (default: up to 4 CPUs; --quick 1)")
    exp.add_argument("--notes", help="a Markdown file appended to RESULTS.md (the reading)")
    exp.add_argument("--json", action="store_true", help="print every result as JSON on stdout")
    exp.add_argument("--list", action="store_true", help="list the tasks and methods, run nothing")
    exp.set_defaults(func=cmd_experiment)
    # `tinymp bench ...` is handed whole to tinymp.bench.main (its own options; see main())
    sub.add_parser("bench", help="every method on an emulated Cortex-M7 (QEMU): instructions, peak "
                   "SRAM, stack, flash; `tinymp bench --help` (needs `make bench-train-elf` first)")
    from .session import run
    run.add_parsers(sub)
    sub.choices["demo"].set_defaults(func=cmd_demo)
    return p


def _version():
    import tinymp
    return f"tinymp {tinymp.__version__} (Python {sys.version.split()[0]})"


def main(argv=None):
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        # the reader went away (`tinymp plan --zoo | head -1`): stop quietly, as a shell tool
        # does, and keep Python from reporting the pipe again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


# a negative number in exponent form, which argparse would take for an option ("-1e0")
_NEG_EXP = re.compile(r"-(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _plain_negatives(argv):
    """argparse reads a token that starts with '-' as an option unless it looks like -1 or -1.5,
    so `--input-range -1e0 1` failed; such tokens are spelled out as plain decimals (the same
    float: both are the same decimal number). No option of this tool looks like a number."""
    from decimal import Decimal
    # beyond 1e±400 a double is 0 or infinite anyway: left alone, not spelled out in full
    return [format(Decimal(a), "f") if _NEG_EXP.fullmatch(a) and
            abs(Decimal(a).adjusted()) <= 400 else a for a in argv]


def _main(argv):
    argv = _plain_negatives(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from . import bench
        return bench.main(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # refused by the command's own parser, whose line points at its own --help
        subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subs.choices[args.command].error("unrecognized arguments: " + " ".join(extra))
    from .session import run
    try:
        return run.handle_errors(args.func, args)
    except UserError as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
