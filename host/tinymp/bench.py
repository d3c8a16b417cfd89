"""`make bench` / `tinymp bench`: every method side by side on an emulated Cortex-M7.

Runs firmware/bench/bench_train.c (built by `make bench-train-elf` into build/bench/) under QEMU's
mps2-an500 with ``-icount shift=0`` once per (model, method): instructions of inference, of
training steps and their phases, of steps that fill and use the frozen-prefix feature cache, of
the selection pass and APU period ends, and of whole personalisation runs; arena high water, peak
stack and flash. Every configuration is also run on the host build (the same core through the
Python binding, the same samples, seeds and calls) and the two are compared: the high water must be
equal and the trained logits equal to within float rounding. Writes ``results.json``,
``RESULTS.md`` and ``RESULTS.png`` and prints the headline as its last line.

Everything here is an **emulated instruction count**, not Cortex-M7 cycles; the cost model
(tinymp.costmodel) turns them into an estimate and says so.

Whole runs (N samples x E epochs) start where a board starts: from the model. A run is the
*set-up* -- `plan()` (the method's layer and channel selection and the memory plan, counted on the
M7 like everything else) and, for methods given support samples, TinyTrain's selection pass and its
own plan -- then `Trainer.fit`. The demo model's fit is executed in the emulator; for the 128x128
models it is composed from measured parts (``--full-runs`` executes them too, several minutes per
method): N steps that fill the cache + N*(E-1) steps from the cache + E period ends, each part the
mean of measured calls. tests/test_bench.py checks on the demo model that the composition equals
the executed fit to within 0.1 %.
"""
import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import costmodel, summary
from ._files import missing_dirs, remove_empty_dirs

# Peak SRAM is the arena plus the stack: the planner's arena budget leaves 4 KiB of the 256 KiB for
# the stack (the bench measures about 1.7 KB), so arena + stack stays within 256 KiB.
SRAM_TARGET = 256 * 1024
STACK_RESERVE = 4 * 1024
BUDGET = SRAM_TARGET - STACK_RESERVE
RUN_CLASSES, RUN_PER_CLASS, RUN_EPOCHS = 10, 10, 10
LR, SEED = 0.002, 1
# The M7 and host builds run the same calls; their trained logits may differ by a few int8 steps
# after a long run: GCC contracts a*b+c into the M7's VFMA (one rounding instead of two) and
# newlib's expf/logf differ from glibc's in the last bit, which now and then flips a
# stochastic-rounding decision of an int8 update. Short runs agree exactly.
LOGIT_TOLERANCE_LSB = 2.0

MODELS = {
    "mbv2": ("MobileNetV2-w0.35@128", "mobilenetv2", {"width": 0.35, "resolution": 128}),
    "mcunet": ("MCUNet@128", "mcunet", {"resolution": 128, "config": "5fps"}),
    "demo": ("demo (32x32 digits)", None, None),
}


class BenchError(Exception):
    """A clear one-line reason the bench cannot run."""


class UserModelError(BenchError):
    """A user's model (or its budget) that no method can run: the user's input, exit status 2."""


def _reason(e):
    """An engine message without its own "tinymp: " prefix (the bench adds its own)."""
    text = str(e)
    return text[len("tinymp: "):] if text.startswith("tinymp: ") else text


def repo_root():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.dirname(os.path.dirname(here))


def model_bytes(key):
    from . import zoo
    _, name, kw = MODELS[key]
    return zoo.demo() if name is None else zoo.build(name, **kw)


def make_samples(m, n, seed=0):
    """n random int8 inputs with labels i % num_classes (the kernels' cost does not depend on the
    values; the run only needs labels in range)."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(m.input_shape))
    xs = [rng.integers(-128, 128, size=size, dtype=np.int8).tobytes() for _ in range(n)]
    ys = [i % m.num_classes for i in range(n)]
    return xs, ys


def _pointwise(m):
    return [i for i, l in enumerate(m._layers()) if l["type"] == "pwconv"]


def sparse_options(m, budget):
    """SparseUpdate-style: the four late pointwise layers before the head at 1/4 of their
    channels, plus 8 biases. Returns (options, budget): the given budget when the planner can fit
    the set into it (shrinking its ratios), else no budget (the set's own size) -- the caller then
    also runs tinymp at that size, so the two are compared at the same memory."""
    pw = _pointwise(m)
    layers = pw[-5:-1] if len(pw) > 4 else pw[:-1] or pw
    opts = {"layers": layers, "ratios": [0.25] * len(layers), "n_bias": 8}
    if budget is not None:
        try:
            m.plan(method="sparse", budget=budget, **opts)
            return opts, budget
        except ValueError:
            pass
    return opts, None


def exact_twin_options(m, plan):
    """Exact backprop (r = 1) over the same trained layers, channels and biases as `plan`."""
    info = plan._layers()
    lay = m._layers()
    cls = max(plan.layers)
    layers = [i for i in plan.layers if info[i]["w"] and i != cls]

    def cin(i):
        src = lay[i]["in0"]
        shape = m.input_shape if src == 0 else lay[src - 1]["out_shape"]
        return shape[2] if lay[i]["type"] != "fc" else shape[0] * shape[1] * shape[2]
    ratios = [info[i]["k"] / cin(i) for i in layers]
    n_bias = sum(1 for i in plan.layers if info[i]["b"] and i != cls)
    return {"method": "sparse", "layers": layers, "ratios": ratios, "n_bias": n_bias, "r": 1}


def configs(m, key, quick=False, budget=None, skipped=None):
    """(label, plan options, support count) of every configuration for model m (a user's model:
    `budget` given, else BUDGET). With a `skipped` list (a user's model), a configuration the
    planner refuses is left out and noted there ({"label", "why"}) instead of raising."""
    if budget is None:
        budget = BUDGET if key != "demo" else 16 * 1024
    out = []
    if quick:
        return [("last", {"method": "last"}, 0),
                ("tinymp r=4", {"method": "tinymp", "budget": budget}, 0)]

    def planned(label, make):
        try:
            return make()
        except ValueError as e:
            if skipped is None:
                raise
            skipped.append({"label": label, "why": _reason(e)})
            return None
    out.append(("full", {"method": "full"}, 0))
    out.append(("last", {"method": "last"}, 0))
    out.append(("bias", {"method": "bias"}, 0))
    sopts, sbudget = sparse_options(m, budget)
    if sbudget is not None:
        out.append(("sparse", dict(method="sparse", budget=sbudget, **sopts), 0))
    else:
        sp = planned("sparse", lambda: m.plan(method="sparse", **sopts))
        if sp is not None:
            out.append(("sparse", dict(method="sparse", **sopts), 0))
            # sparse does not fit the budget: tinymp at sparse's own size, for the same-memory run
            out.append(("tinymp r=4 @ sparse's size", {"method": "tinymp", "budget": sp.arena_bytes}, 0))
    out.append(("tinytrain", {"method": "tinytrain", "budget": budget}, 8))
    for r in (1, 2, 4):
        out.append(("tinymp r=%d" % r, {"method": "tinymp", "budget": budget, "r": r}, 0))
    p = planned("exact (tinymp r=4's set)", lambda: m.plan(method="tinymp", budget=budget))
    if p is not None:
        out.append(("exact (tinymp r=4's set)", exact_twin_options(m, p), 0))
    return out


def _args_for(opts):
    a = []
    for k, v in opts.items():
        if isinstance(v, (list, tuple)):
            v = ",".join(("%.6f" % x) if isinstance(x, float) else str(x) for x in v)
        a.append("%s=%s" % (k, v))
    return a


def find_elf(root):
    """The bench program: TINYMP_BENCH_ELF, else build/bench/bench_train.elf of the checkout this
    package runs from (an editable install) or of the current folder (a checkout where the
    package was installed with `pip install .`). None when there is none."""
    env = os.environ.get("TINYMP_BENCH_ELF")
    if env:
        return env if os.path.isfile(env) else None
    for base in (root, os.getcwd()):
        elf = os.path.join(base, "build", "bench", "bench_train.elf")
        if os.path.isfile(elf):
            return elf
    return None


def find_tools(root):
    qemu = shutil.which(os.environ.get("BENCH_QEMU", "qemu-system-arm"))
    if qemu is None:
        raise BenchError("qemu-system-arm not found (apt-get install qemu-system-arm)")
    elf = find_elf(root)
    if elf is None and os.environ.get("TINYMP_BENCH_ELF"):
        raise BenchError("TINYMP_BENCH_ELF names %s, which is not a file: `make bench-train-elf` "
                         "builds it (build/bench/bench_train.elf)" % os.environ["TINYMP_BENCH_ELF"])
    if elf is None:
        raise BenchError("the bench program build/bench/bench_train.elf is missing: run `make "
                         "bench-train-elf` in the tinymp checkout and this command there (or set "
                         "TINYMP_BENCH_ELF to the program)")
    return qemu, elf


def run_m7(qemu, elf, model_path, samples_path, opts, support, steps, cached, run, timeout=3600):
    args = ["model=" + model_path, "samples=" + samples_path, "steps=%d" % steps,
            "cached=%d" % cached, "lr=%g" % LR, "seed=%d" % SEED] + _args_for(opts)
    if support:
        args.append("support=%d" % support)
    if run:
        args += ["run_samples=%d" % run[0], "run_epochs=%d" % run[1]]
    argfile = samples_path + ".args"
    with open(argfile, "w") as f:
        f.write("\n".join(args) + "\n")
    cmd = [qemu, "-M", "mps2-an500", "-nographic", "-monitor", "null", "-serial", "null",
           "-semihosting", "-icount", "shift=0,sleep=off", "-kernel", elf, "-append", "@" + argfile]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    line = next((l for l in p.stdout.splitlines() if l.startswith('{"bench"')), None)
    if p.returncode != 0 or line is None:
        tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
        raise BenchError("the M7 bench failed for %s: %s" % (opts.get("method"), " | ".join(tail)))
    return json.loads(line)


def _plan_kwargs(opts, support, xs, ys):
    """Model.plan's arguments for a configuration: its options, and its first `support` samples
    for the selection pass."""
    kw = dict(opts)
    if support:
        kw["support"] = (xs[:support], ys[:support])
    return kw


def run_host(m, opts, support, xs, ys, steps, cached, run, apu, plan=None):
    """The same calls on the host build: returns high water and trained float logits. `plan`:
    the configuration's plan when the host build has made it already."""
    import tinymp
    if plan is None:
        plan = m.plan(**_plan_kwargs(opts, support, xs, ys))
    t = tinymp.Trainer(m, plan, lr=LR, seed=SEED)
    t.logits(xs[0])
    for i in range(steps):
        t.step(xs[i % len(xs)], ys[i % len(ys)])
    if plan.cache_bytes and cached:
        for _ in range(2):  # fill steps then cached steps: the same updates as plain steps
            for i in range(cached):
                t.step(xs[i % len(xs)], ys[i % len(ys)])
    if apu:
        t.end_period()
    if run:
        t.reset()
        t.fit(xs[:run[0]], ys[:run[0]], epochs=run[1])
    logits = [np.frombuffer(t.logits(x).tobytes(), dtype=np.float32) for x in xs[:4]]
    return {"high_water": t.high_water, "logits": logits, "arena_bytes": plan.arena_bytes,
            "table_bytes": plan.table_bytes}


# The plan options a board is given (the session's TRAIN_START) that the M7 bench takes too.
ESTIMATE_KEYS = ("method", "budget", "r", "ratio", "storage", "momentum", "n_bias", "macs",
                 "lr", "seed")


def estimate_training(model_data, options, samples, support=0, steps=3, root=None, timeout=600):
    """The emulated Cortex-M7 cost of one training configuration of one model: runs the bench
    program under QEMU with these plan options over `samples` (a list of (int8 input bytes,
    label); at least one) and returns its instruction counts per phase, the plan it made (arena,
    MACs: the caller checks that it is the plan it trained with), its peak stack, and the cost
    model's time estimate. `support` > 0 runs TinyTrain's selection pass over the first samples
    first, as a board does (support_samples in the result: how many it read). Raises BenchError
    with one line when the tools are missing or the bench fails."""
    if not samples:
        raise BenchError("no samples to run the bench on")
    qemu, elf = find_tools(root or repo_root())
    opts = {k: options[k] for k in ESTIMATE_KEYS if options.get(k) is not None}
    with tempfile.TemporaryDirectory() as wd:
        mpath = os.path.join(wd, "model.tmpm")
        spath = os.path.join(wd, "samples.bin")
        with open(mpath, "wb") as f:
            f.write(bytes(model_data))
        with open(spath, "wb") as f:
            for x, y in samples:
                f.write(bytes([int(y)]) + bytes(x))
        support = min(int(support), len(samples))
        r = run_m7(qemu, elf, mpath, spath, opts, support, steps=steps,
                   cached=steps, run=None, timeout=timeout)
    if not r.get("guard_ok", False):
        raise BenchError("the M7 bench wrote outside its arena")
    ph = r["step"]["phases"]
    instr = {"plan": setup_instructions(r), "inference": r["inference"], "forward": ph[0],
             "backward": ph[1], "update": ph[2], "step": r["step"]["mean"]}
    if "cached_step" in r:
        instr["cached_step"] = r["cached_step"]["mean"]
    if "end_period" in r:  # tinymp: the channel re-selection at the end of an APU period
        instr["end_period"] = r["end_period"]
    plan = {k: r[k] for k in ("method", "r", "arena_bytes", "forward_macs", "backward_macs",
                              "cache_bytes")}
    est = {k: costmodel.estimate_ms(v) for k, v in instr.items()}
    return {"instructions": instr, "estimate": est, "plan": plan, "high_water": r["high_water"],
            "stack_bytes": r["stack_bytes"], "peak_sram": r["high_water"] + r["stack_bytes"],
            "steps": steps, "support_samples": support, "cost_model": costmodel.ASSUMPTIONS,
            "emulator": _qemu_version(qemu)}


def setup_instructions(r):
    """Instructions a board spends before the first step: plan() and, with support samples, the
    selection pass and its plan."""
    sel = r.get("selection") or {}
    return r.get("plan_instructions", 0) + sel.get("instructions", 0) + sel.get("plan_instructions", 0)


def compose_run(r, n, epochs):
    """Instructions of a whole fit from the measured parts (see the module docstring); the run is
    this plus setup_instructions()."""
    per_fill = r.get("fill_step", r["step"])["mean"]
    per_cached = r.get("cached_step", r["step"])["mean"]
    period = r.get("end_period", 0)
    return n * per_fill + n * (epochs - 1) * per_cached + epochs * period


def compare(r, host):
    zp, scale = r["out_zero_point"], r["out_scale_e12"] / 1e12
    worst = 0.0
    for q, f in zip(r["logits"], host["logits"]):
        m7 = (np.asarray(q, dtype=np.float64) - zp) * scale
        worst = max(worst, float(np.max(np.abs(m7 - f))) / scale)
    return {"high_water_equal": r["high_water"] == host["high_water"],
            "host_high_water": host["high_water"], "logits_max_diff_lsb": round(worst, 3),
            "table_bytes_equal": r.get("table_bytes") == host["table_bytes"]}


def _host_plan(m, config, xs, ys, skipped):
    """The host build's plan of `config` (label, options, support count), or None with the
    reason in `skipped` when it does not plan it."""
    label, opts, support = config
    try:
        return m.plan(**_plan_kwargs(opts, support, xs, ys))
    except ValueError as e:
        skipped.append({"label": label, "why": _reason(e)})
        return None


def _check_budgeted(title, budget, options, skipped):
    """full, last and bias train a fixed set at their own size (baselines); the others choose
    theirs within the budget, which is the user's: UserModelError when none of `options` (the
    configurations to run, or that ran) is one of those (tinymp at sparse's size has sparse's
    budget, not the user's)."""
    if any(o.get("budget") == budget for o in options):
        return
    why = next((s["why"] for s in skipped if s["label"].startswith(("tinymp", "tinytrain"))),
               next((s["why"] for s in skipped), "-"))
    raise UserModelError("%s: no method that plans within the budget (%s bytes) could run (%s)"
                         % (title, format(budget, ","), why))


def bench_model(key, root, qemu, elf, workdir, quick=False, full_runs=False, progress=print,
                user=None, budget=None):
    """Every configuration of one model. `user` = (title, model bytes) benches a model file of
    the user's (key "file"); its run has min(classes, 10) x 10 samples."""
    import tinymp
    title, data = user if user is not None else (MODELS[key][0], model_bytes(key))
    m = tinymp.Model(data)
    n_run = min(RUN_CLASSES, m.num_classes) * RUN_PER_CLASS
    xs, ys = make_samples(m, n_run)
    if m.num_classes < RUN_CLASSES and user is None:
        raise BenchError("%s has %d classes; the run needs %d" % (title, m.num_classes, RUN_CLASSES))
    mpath = os.path.join(workdir, key + ".tmpm")
    spath = os.path.join(workdir, key + ".samples")
    with open(mpath, "wb") as f:
        f.write(data)
    with open(spath, "wb") as f:
        for x, y in zip(xs, ys):
            f.write(bytes([y]) + x)
    rows = []
    epochs = RUN_EPOCHS if not quick else 2
    n = n_run if not quick else 10
    skipped = []
    todo = configs(m, key, quick, budget, skipped if user is not None else None)
    plans = {}  # the host build's plans made up front, used again for its comparison run
    if user is not None:
        # a user's model: the host build plans every configuration first (the emulated planner
        # is the same code, and its plans are checked equal below), so what the planner refuses
        # and a budget nothing fits are known before any emulator run
        for c in todo:
            plans[c[0]] = _host_plan(m, c, xs, ys, skipped)
        todo = [c for c in todo if plans[c[0]] is not None]
    for s in skipped:
        progress("  %-26s skipped: %s" % (s["label"], s["why"]))
    if user is not None:
        _check_budgeted(title, budget, [opts for _, opts, _ in todo], skipped)
    for label, opts, support in todo:
        t0 = time.time()
        execute = key == "demo" or full_runs
        run = (n, epochs) if execute else None
        try:
            r = run_m7(qemu, elf, mpath, spath, opts, support, steps=3, cached=3, run=run)
            apu = "end_period" in r
            host = run_host(m, opts, support, xs, ys, 3, 3, run, apu, plan=plans.pop(label, None))
        except (BenchError, ValueError) as e:
            if user is None:
                raise
            # a user's model may not suit every method (e.g. no plan within the budget): the
            # others are still worth a table
            skipped.append({"label": label, "why": _reason(e)})
            progress("  %-26s skipped: %s" % (label, _reason(e)))
            continue
        r.update(label=label, options={k: v for k, v in opts.items()}, support=support)
        r["composed_run"] = compose_run(r, n, epochs)
        r["run_samples"], r["run_epochs"] = n, epochs
        r["setup_instructions"] = setup_instructions(r)
        r["run_instructions"] = r["setup_instructions"] + (
            r["run"]["instructions"] if "run" in r else r["composed_run"])
        r["run_executed"] = "run" in r
        r["host"] = compare(r, host)
        r["peak_sram"] = r["high_water"] + r["stack_bytes"]
        r["estimate"] = costmodel.estimate_step(r)
        rows.append(r)
        progress("  %-26s arena %9s B  step %13s instr  run %15s instr%s  (%.1fs)" % (
            label, format(r["arena_bytes"], ","), format(r["step"]["mean"], ","),
            format(r["run_instructions"], ","), "" if r["run_executed"] else " (composed)",
            time.time() - t0))
    if user is not None:
        _check_budgeted(title, budget, [r["options"] for r in rows], skipped)
    if not rows:
        raise UserModelError("%s: no method could run (%s)" % (title, skipped[0]["why"] if skipped else "-"))
    return {"title": title, "key": key, "model_bytes": len(data), "configs": rows,
            "run": {"samples": n, "epochs": epochs}, "skipped": skipped}


def core_flash(root):
    """Bytes of the core's code and constants for the M7 (text + data of the bench objects under
    `root`, the bench program's build folder)."""
    size = shutil.which("arm-none-eabi-size")
    objs = []
    for base in ("core", "dsp"):
        d = os.path.join(root, base)
        for dirpath, _, files in os.walk(d):
            objs += [os.path.join(dirpath, f) for f in files if f.endswith(".o")]
    if size is None or not objs:
        return None
    out = subprocess.run([size, "-t"] + sorted(objs), capture_output=True, text=True).stdout
    last = out.strip().splitlines()[-1].split()
    return int(last[0]) + int(last[1])


# The bench program takes its model, samples and arenas from the emulated board's 16 MiB PSRAM
# (firmware/bench/bench_train.c): no larger model file can be benched.
USER_MODEL_MAX = 16 << 20


def load_user_model(path):
    """The bytes of a user's .tmpm file, checked by the engine; BenchError with one line if not
    (also for what is not a regular file, e.g. a FIFO that would block or /dev/zero, which never
    ends, and for a file larger than USER_MODEL_MAX: read no further than that)."""
    import tinymp

    from ._files import read_regular
    try:
        data = read_regular(path, USER_MODEL_MAX, "a .tmpm model file",
                            "the %d MiB the emulated Cortex-M7 has for a model, its samples and "
                            "arenas" % (USER_MODEL_MAX >> 20))
    except OSError as e:
        raise BenchError("cannot read %s: %s" % (path, e.strerror or e)) from None
    except ValueError as e:
        raise BenchError(str(e)) from None
    try:
        tinymp.Model(data)
    except ValueError as e:
        raise BenchError("%s is not a usable tinymp model: %s" % (path, _reason(e))) from None
    return data


def _by_label(res, label):
    return next((c for c in res["configs"] if c["label"] == label), None)


def headline(res):
    tm = _by_label(res, "tinymp r=4")
    ex = _by_label(res, "exact (tinymp r=4's set)")
    sp = _by_label(res, "sparse")
    if tm is None or ex is None or sp is None:
        return None
    # the run at the same memory: tinymp at sparse's size when sparse does not fit the budget
    same = _by_label(res, "tinymp r=4 @ sparse's size") or tm
    bwd = ex["step"]["phases"][1] / max(1, tm["step"]["phases"][1])
    run = sp["run_instructions"] / max(1, same["run_instructions"])
    kb = tm["peak_sram"] / 1024.0
    return "%s: backward %.2fx fewer instructions than exact, run %.2fx fewer than sparse, " \
           "peak SRAM %d KB (emulated)" % (res["title"], bwd, run, round(kb))


def run_bound(res):
    """(ratio, label): the largest run ratio against `sparse` that tinymp's same-memory row could
    reach if its backward and update phases cost nothing -- its run with only its set-up, the
    forward phases of its fill steps and cached steps, and its period ends left. None without the
    rows."""
    sp = _by_label(res, "sparse")
    same = _by_label(res, "tinymp r=4 @ sparse's size") or _by_label(res, "tinymp r=4")
    if sp is None or same is None or "cached_step" not in same:
        return None
    forward_only = {"step": {"mean": same["fill_step"]["phases"][0]},
                    "fill_step": {"mean": same["fill_step"]["phases"][0]},
                    "cached_step": {"mean": same["cached_step"]["phases"][0]},
                    "end_period": same.get("end_period", 0)}
    fwd = setup_instructions(same) + compose_run(forward_only, same["run_samples"], same["run_epochs"])
    return sp["run_instructions"] / max(1, fwd), same["label"]


def write_markdown(results, path, command, notes=None):
    """RESULTS.md: the tables, headlines and definitions; `notes` (text, e.g. a hand-written
    reading kept in its own file) is appended as is, so a re-run keeps it."""
    L = []
    L.append("# Training on an emulated Cortex-M7: every method side by side\n")
    L.append("Produced by `%s` (%s). **Emulated instruction counts** (QEMU %s, mps2-an500, "
             "`-icount shift=0`; %s), not cycles measured on a board; the time column is the cost "
             "model's estimate (below).\n" % (command, results["meta"]["date"], results["meta"]["qemu"],
                                              results["meta"]["gcc"]))
    for res in results["models"]:
        ws = max((c.get("workspace_bytes", 0) for c in res["configs"]), default=0)
        L.append("\n## %s (model %s bytes; runs: %d samples x %d epochs; planning workspace %s bytes)\n" % (
            res["title"], format(res["model_bytes"], ","), res["run"]["samples"], res["run"]["epochs"],
            format(ws, ",")))
        L.append("| method | r | ratio | first | budget B | arena B | high water B | stack B | peak SRAM KB | "
                 "plan tables B | inference | plan | step | forward | backward | update | step from cache | "
                 "run | est. step ms | host |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for c in res["configs"]:
            ph = c["step"]["phases"]
            cs = c.get("cached_step", {}).get("mean")
            budget = c["options"].get("budget")
            L.append("| %s | %d | 1/%d | %d | %s | %s | %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s%s | %.1f | %s |" % (
                c["label"], c["r"], round(1e6 / max(1, c["ratio_x1e6"])), c["first"],
                format(budget, ",") if budget is not None else "own size", format(c["arena_bytes"], ","), format(c["high_water"], ","), format(c["stack_bytes"], ","),
                c["peak_sram"] / 1024.0, format(c.get("table_bytes", 0), ","), format(c["inference"], ","),
                format(c.get("setup_instructions", 0), ","), format(c["step"]["mean"], ","),
                format(ph[0], ","), format(ph[1], ","), format(ph[2], ","),
                format(cs, ",") if cs else "-", format(c["run_instructions"], ","),
                "" if c["run_executed"] else " *", c["estimate"]["step_ms"],
                "same HW, logits ±%g LSB" % c["host"]["logits_max_diff_lsb"] if c["host"]["high_water_equal"]
                else "HW differs (%d)" % c["host"]["host_high_water"]))
        h = headline(res)
        if h:
            L.append("\n**%s**\n" % h)
        b = run_bound(res)
        if b:
            L.append("Forward-pass bound: were the backward and update phases of `%s` free, its run "
                     "would be %.2fx fewer instructions than `sparse`'s (its set-up, its fill steps' and "
                     "cached steps' forward phases and its period ends alone).\n" % (b[1], b[0]))
    L.append("\nColumns: *budget*: the arena budget a method was planned within; *own size*: a "
             "method that trains a fixed set (full, last, bias, exact backprop over tinymp's set; "
             "sparse when its set does not fit the budget) planned at that set's own size, over "
             "the budget when it needs more. "
             "Instructions of one call (inference: the trainer's forward pass; step: forward "
             "with saving, loss, backward, updates; the phase split comes from a 40-instruction timer "
             "through the trainer's clock hook, so it is within ±40 per phase boundary); *step from "
             "cache*: a step whose frozen prefix comes from the feature cache; *plan*: the set-up on "
             "the board before the first step, `plan()` (layer and channel selection, memory plan) "
             "and, with support samples, the selection pass and its plan; *run*: that set-up plus a "
             "whole personalisation run with `Trainer.fit` (the cache on), executed in the emulator "
             "or, marked \\*, composed from the measured fill steps, cached steps and period ends. "
             "Peak SRAM = arena high water + peak stack; *plan tables*: what the plan keeps beside "
             "the arena for as long as the board trains (per-layer choices, channel selections, buffer "
             "offsets), not included in peak SRAM; the *planning workspace* (in each heading) is "
             "needed only while `plan()` runs and is freed before the arena is taken. *host*: the "
             "same calls on the host build: equal high water and trained logits within the stated "
             "int8 steps.\n")
    L.append("\n%s\n" % costmodel.DESCRIPTION)
    L.append("\nFlash: core code and constants %s bytes (M7, -O2, every kernel and the trainer); the "
             "model's bytes are listed per model.\n" % (format(results["meta"]["core_flash"], ",")
                                                        if results["meta"]["core_flash"] else "?"))
    if notes:
        L.append("\n" + notes.rstrip() + "\n")
    with open(path, "w") as f:
        f.write("\n".join(L))


def write_png(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(results["models"]), figsize=(6 * len(results["models"]), 4.5),
                             squeeze=False)
    for ax, res in zip(axes[0], results["models"]):
        for c in res["configs"]:
            ax.scatter(c["peak_sram"] / 1024.0, c["run_instructions"] / 1e9)
            ax.annotate(c["label"], (c["peak_sram"] / 1024.0, c["run_instructions"] / 1e9), fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("peak SRAM, KB (emulated)")
        ax.set_ylabel("whole run, 10^9 instructions (emulated)")
        ax.set_title(res["title"])
        ax.axvline(256, color="grey", lw=0.5, ls="--")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _qemu_version(qemu):
    q = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()
    return q[0].replace("QEMU emulator version ", "") if q else "?"


def _versions(qemu):
    g = shutil.which("arm-none-eabi-gcc")
    gv = subprocess.run([g, "-dumpversion"], capture_output=True, text=True).stdout.strip() if g else "?"
    return _qemu_version(qemu), "arm-none-eabi-gcc %s -O2" % gv


def main(argv=None):
    from .cli import Parser  # one-line errors, as every tinymp command's
    ap = Parser(prog="tinymp bench", description=(
        "every method on an emulated Cortex-M7 (QEMU mps2-an500): instructions, peak SRAM, stack, "
        "flash; build first with `make bench-train-elf` (make bench does both)"))
    ap.add_argument("--models", default=None,
                    help="comma-separated: mbv2, mcunet, demo (default: all three, or none "
                         "when --model is given)")
    ap.add_argument("--model", action="append", default=[], metavar="FILE",
                    help="also a .tmpm model file of your own (repeatable): every method on it, "
                         "planned within --budget")
    ap.add_argument("--budget", type=float, default=None, metavar="KB",
                    help="arena budget in KB for --model files, as `tinymp plan` and `tinymp "
                         "train` take it (default %g: 256 KB less 4 KB of stack)" % (BUDGET / 1024))
    ap.add_argument("--out", default=None, help="output directory (default: bench, or "
                                                "bench-models when --model is given)")
    ap.add_argument("--quick", action="store_true", help="two methods, short runs (the test suite's)")
    ap.add_argument("--full-runs", action="store_true",
                    help="execute every whole run in the emulator instead of composing the 128x128 ones")
    ap.add_argument("--json", action="store_true", help="print results.json alone on stdout (progress and headlines on stderr)")
    ap.add_argument("--notes", help="a Markdown file appended to RESULTS.md (the hand-written reading; "
                                    "make bench passes bench/READING.md)")
    a = ap.parse_args(argv)
    models = a.models if a.models is not None else ("" if a.model else "mbv2,mcunet,demo")
    keys = [k.strip() for k in models.split(",") if k.strip()]
    bad = [k for k in keys if k not in MODELS]
    if bad or (not keys and not a.model):
        print("tinymp: bench: unknown model %s (choose from %s)" % (",".join(bad) or "''", ", ".join(MODELS)),
              file=sys.stderr)
        return 2
    if a.budget is not None and not a.model:
        print("tinymp: bench: --budget plans the methods on --model files; the zoo models are "
              "benched at the project's own budget (give --model FILE)", file=sys.stderr)
        return 2
    if a.budget is None:
        a.budget = BUDGET / 1024
    budget = summary.budget_bytes(a.budget)
    if budget is None:
        print("tinymp: bench: --budget must be " + summary.BUDGET_KB_RULE, file=sys.stderr)
        return 2
    users = []
    for path in a.model:
        try:
            users.append((os.path.basename(path), load_user_model(path)))
        except BenchError as e:
            print("tinymp: bench: %s" % e, file=sys.stderr)
            return 2
    notes = None
    if a.notes is not None:
        from .experiment import read_notes
        try:
            notes = read_notes(a.notes)
        except ValueError as e:
            print("tinymp: bench: %s" % e, file=sys.stderr)
            return 2
    if a.out is None:
        # a user's models never overwrite the project's own bench/ results
        a.out = "bench-models" if a.model else "bench"
    root = repo_root()
    try:
        qemu, elf = find_tools(root)
    except BenchError as e:
        print("tinymp: bench: %s" % e, file=sys.stderr)
        return 1
    made = missing_dirs(a.out)
    try:  # before the run, which can take an hour: a bad --out would otherwise lose it
        os.makedirs(a.out, exist_ok=True)
        if not os.access(a.out, os.W_OK):
            raise PermissionError("not writable")
    except OSError as e:
        remove_empty_dirs(made)
        print("tinymp: bench: cannot write results to %s: %s" % (a.out, e.strerror or e), file=sys.stderr)
        return 2
    # with --json, stdout holds the JSON alone: progress, the file lines and the headlines go to
    # stderr
    say = sys.stderr if a.json else sys.stdout
    try:
        with contextlib.redirect_stdout(say):
            code, results = _run(a, keys, users, budget, root, qemu, elf, notes)
    finally:
        if not os.path.exists(os.path.join(a.out, "results.json")):
            remove_empty_dirs(made)  # nothing written: the folders this run made go
    if a.json and results is not None:
        print(json.dumps(results))
    return code


def _run(a, keys, users, budget, root, qemu, elf, notes):
    """The bench proper: (exit status, results or None)."""
    try:
        qv, gv = _versions(qemu)
        results = {"meta": {"date": time.strftime("%Y-%m-%d"), "qemu": qv, "gcc": gv,
                            "method": "QEMU -icount shift=0, CMSDK timer0 (1 tick = 40 instructions), "
                                      "edge-synchronised; emulated instruction counts",
                            "budget": BUDGET, "lr": LR, "seed": SEED,
                            "cost_model": costmodel.ASSUMPTIONS, "core_flash": core_flash(os.path.dirname(elf))},
                   "models": []}
        with tempfile.TemporaryDirectory() as wd:
            for k in keys:
                print("== %s" % MODELS[k][0], flush=True)
                results["models"].append(bench_model(k, root, qemu, elf, wd, quick=a.quick,
                                                     full_runs=a.full_runs))
            for user in users:
                print("== %s (budget %g KB = %s bytes)" % (user[0], a.budget, format(budget, ",")),
                      flush=True)
                results["models"].append(bench_model("file", root, qemu, elf, wd, quick=a.quick,
                                                     full_runs=a.full_runs, user=user,
                                                     budget=budget))
    except (BenchError, subprocess.TimeoutExpired, OSError) as e:
        print("tinymp: bench: %s" % e, file=sys.stderr)
        return (2 if isinstance(e, UserModelError) else 1), None
    from ._files import atomic_write
    try:
        atomic_write(os.path.join(a.out, "results.json"),
                     (json.dumps(results, indent=1) + "\n").encode())
    except OSError as e:
        print("tinymp: bench: cannot write %s: %s; the run's figures were not kept"
              % (os.path.join(a.out, "results.json"), e.strerror or e), file=sys.stderr)
        return 1, None
    cmd = "tinymp bench" + ("" if a.models is None else " --models " + a.models) + \
        "".join(" --model " + p for p in a.model) + \
        (" --budget %g" % a.budget if a.model and budget != BUDGET else "") + \
        (" --quick" if a.quick else "") + (" --full-runs" if a.full_runs else "")
    try:
        write_markdown(results, os.path.join(a.out, "RESULTS.md"), cmd, notes)
        png = write_png(results, os.path.join(a.out, "RESULTS.png"))
    except OSError as e:
        print("tinymp: bench: cannot write the table or chart in %s: %s; the figures are in "
              "%s/results.json" % (a.out, e.strerror or e, a.out), file=sys.stderr)
        return 1, results
    bad_host = [(r["title"], c["label"]) for r in results["models"] for c in r["configs"]
                if not c["host"]["high_water_equal"] or not c["host"]["table_bytes_equal"]
                or c["host"]["logits_max_diff_lsb"] > LOGIT_TOLERANCE_LSB]
    print("wrote %s/results.json, %s/RESULTS.md%s" % (a.out, a.out, ", %s" % png if png else
                                                     " (no PNG: pip install matplotlib)"))
    if bad_host:
        print("tinymp: bench: the M7 and host builds disagree on %s" % bad_host, file=sys.stderr)
        return 1, results
    for res in results["models"]:
        h = headline(res)
        if h and res["key"] != "mbv2":
            print(h)
    mb = next((r for r in results["models"] if r["key"] == "mbv2"), None)
    if mb is not None and headline(mb):
        print(headline(mb))
    return 0, results


if __name__ == "__main__":
    sys.exit(main())
