"""`tinymp experiment`: the personalisation-accuracy harness (docs/EXPERIMENT.md).

Every number comes from the C engine (the PC build of the core that runs on the board, through
``tinymp.Model`` / ``Model.plan`` / ``tinymp.Trainer``): training, inference, memory plans and
high-water marks. Python only prepares the images, orders the steps and counts.

Protocol (what the tests re-implement independently)
---------------------------------------------------
Images: scikit-learn's bundled UCI digits (``tinymp.datasets.digits(32, split, seed=0)``, the
split the demo model was pretrained with).

* A **task** is (pretrained model, shift spec, classes). ``test`` phase, seed ``s``: the whole
  ``test`` split (539 images, never used in pretraining) is shifted with
  ``shifts.apply(x, spec, seed=s)`` and quantised with the model's input parameters; then for
  every class ``c`` in 0..9 (in that order) one generator ``numpy.random.default_rng(s)`` draws
  ``permutation`` of that class's indices (in ascending order); the first ``POOL`` (20) are the
  class's support pool, the rest are the held-out test images. ``validation`` phase: the same
  with the ``train`` split, shift seed ``VAL_SEED_BASE + s``, pool then the next ``VAL_PER_CLASS``
  (30) images of each class as the validation images (these images were seen, unshifted, when the
  demo model was pretrained; the validation phase only chooses learning rates).
* **K shots**: the first K images of every class's pool, concatenated class by class (0, 1, ...).
* **Training**: ``Trainer(model, plan, lr=lr, seed=s, period=P)``; ``EPOCHS`` passes over the
  support set; pass ``e`` visits it in the order ``rng.permutation(n)`` of one generator
  ``numpy.random.default_rng([s, K])`` (drawn once per pass). APU period: one pass (before every
  pass but the first, ``end_period()``), or every P steps (``period=P``), or never, by method.
  ``tinymp-probe`` runs each pass as ``fit(that order, epochs=1, shuffle=False, probe=PROBE)``:
  the same steps, its periods ended by fit with APU's probe variant.
  ``tinytrain`` and ``tinymp-fisher`` get the K-shot support set as ``support=``.
* **Accuracy**: ``Trainer.predict`` over the held-out images after the last pass.
* **Memory**: ``plan.arena_bytes`` (the planned peak of one training step, exact) and the
  trainer's measured ``high_water``; **backward MACs** of one step: ``plan.backward_macs``.
* **Learning rate**: per method, the value of ``LR_GRID`` with the best mean validation accuracy
  over all the run's tasks (``VAL_SHOTS`` shots, validation seeds 1..``VAL_SEEDS``); ties go to
  the smaller rate. ``--lr`` fixes one rate for every method instead (no sweep).
"""

import json
import math
import os
import platform
import sys
import time
from collections import OrderedDict

import numpy as np

# the task models ship inside the package (package data), so an installed wheel runs every task
MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")

EPOCHS = 10
POOL = 20
VAL_PER_CLASS = 30
VAL_SEED_BASE = 10_000
VAL_SHOTS = 10
VAL_SEEDS = 1
SHOTS = (5, 10, 20)
SEEDS = 3
LR_GRID = (0.001, 0.002, 0.005, 0.01)
NUM_CLASSES = 10


class Task:
    def __init__(self, name, model, spec, kind, text):
        self.name, self.model, self.spec, self.kind, self.text = name, model, spec, kind, text


# kind "shift": the demo model (all ten digits) on a shifted domain; "new": a model pretrained on
# digits 0-4 (tools/train_digits_subset.py) personalised on all ten digits, 5-9 new to it
TASKS = [
    Task("invert", "demo", "invert", "shift",
         "contrast inversion: dark digits on a light ground"),
    Task("pose", "demo", "rotate=30:5,scale=0.8", "shift",
         "camera pose: rotated 30 deg (+-5) and shrunk to 0.8"),
    Task("thick", "demo", "stroke=3", "shift",
         "a thick pen: strokes dilated by 3 px (3x3 grey dilation, 3 times)"),
    Task("dim-noisy", "demo", "contrast=0.5,noise=0.15", "shift",
         "a dim, noisy sensor: contrast x0.5, Gaussian noise sigma 0.15"),
    Task("clutter", "demo", "clutter=0.8", "shift",
         "photo backgrounds: digits over patches of scikit-learn's two sample photographs"),
    Task("new-digits", "digits0to4", "none", "new",
         "new classes: a model pretrained on digits 0-4 only, personalised on all ten digits"),
]
TASK_NAMES = [t.name for t in TASKS]

MODEL_FILES = {"digits0to4": "digits0to4.tmpm"}

# the SparseUpdate-style static scheme for this architecture: the last block and the head
SPARSE = {"layers": [12, 13, 14, 15, 17], "ratios": [0.5, 1.0, 0.5, 0.5, 1.0], "n_bias": 2}
LAST_BLOCK = {"layers": [12, 13, 14, 15, 17], "ratios": [1.0] * 5, "n_bias": 2}


PROBE = 10  # samples of tinymp-probe's probe at every period end


class Method:
    def __init__(self, name, plan, apu="epoch", support=False, text="", probe=None):
        self.name, self.plan, self.apu, self.support, self.text = name, plan, apu, support, text
        self.probe = probe  # passes run by fit(probe=...): samples probed at every period end


METHODS = [
    Method("none", {"method": "none"}, text="the pretrained model"),
    Method("last", {"method": "last"}, text="classifier only"),
    Method("bias", {"method": "bias"}, text="every bias + classifier (TinyTL-style)"),
    Method("sparse", dict(SPARSE, method="sparse"),
           text="static: layers 12-15 at ratios 1/2,1,1/2,1/2 (largest |W| channels), last 2 "
                "biases, classifier (SparseUpdate-style)"),
    Method("tinytrain", {"method": "tinytrain"}, support=True,
           text="Fisher selection on the support set, then static; r = 1, ratio 1/4"),
    Method("full", {"method": "full"}, text="every weight and bias, exact backprop"),
    Method("tinymp-r1", {"method": "tinymp", "r": 1}, text="tinymp, exact gradients (r = 1)"),
    Method("tinymp-r2", {"method": "tinymp", "r": 2}, text="tinymp, r = 2"),
    Method("tinymp", {"method": "tinymp"},
           text="tinymp defaults: r = 4, ratio 1/4, APU period = one pass, channels by |W|"),
    Method("tinymp-nolimit", {"method": "tinymp", "step_share": float("inf")},
           text="tinymp defaults without the region limit (step_share = inf: every candidate "
                "that fits, however early the backward region starts)"),
    Method("tinymp-fisher", {"method": "tinymp"}, support=True,
           text="tinymp defaults with the Fisher initial selection (support set)"),
    Method("tinymp-p10", {"method": "tinymp"}, apu=10,
           text="tinymp defaults, APU period = 10 steps"),
    Method("tinymp-probe", {"method": "tinymp"}, probe=PROBE,
           text="tinymp defaults, APU's probe variant: at every period end the channels not "
                "updated are measured on %d of the support samples (fit(probe=%d))" % (PROBE, PROBE)),
    Method("tinymp-norot", {"method": "tinymp"}, apu=None,
           text="tinymp defaults, APU never re-selects (fixed channels)"),
    Method("tinymp-half", {"method": "tinymp", "ratio": 0.5}, text="tinymp, ratio 1/2"),
    Method("tinymp-all", {"method": "tinymp", "ratio": 1.0},
           text="tinymp, ratio 1 (every channel, no partial update)"),
    # two controls that separate the region from the gradient: the last block and the head only
    # (layers 12-17, every channel), exact and condensed at r = 4
    Method("lastblock", dict(LAST_BLOCK, method="sparse"),
           text="control: layers 12-15 + classifier, every channel, exact (r = 1), last 2 biases"),
    Method("lastblock-r4", dict(LAST_BLOCK, method="sparse", r=4),
           text="control: the same layers condensed at r = 4"),
]
METHOD_NAMES = [m.name for m in METHODS]
HEADLINE = "tinymp"

QUICK = {"tasks": ["invert"], "shots": [5], "seeds": 2, "methods": ["none", "last", "full", "tinymp"],
         "lr": 0.002, "epochs": 5}


class ExperimentError(Exception):
    """Bad options or missing inputs: one line for the user."""


NOTES_MAX = 1 << 20  # bytes of a --notes reading (the project's own are a few thousand)


def read_notes(path):
    """The text of a --notes file (a hand-written Markdown reading appended to RESULTS.md; `tinymp
    bench` takes one too). ValueError with one line, without the command's prefix, when it is not
    one: missing or unreadable, not a regular file (a FIFO would block, /dev/zero never ends),
    larger than NOTES_MAX bytes, not UTF-8."""
    from ._files import read_regular
    try:
        data = read_regular(path, NOTES_MAX, "a Markdown file",
                            f"{NOTES_MAX >> 20} MiB (a hand-written reading in Markdown is "
                            "expected)")
        # as a text-mode read would: Windows' line ends become "\n" in RESULTS.md
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except OSError as e:
        raise ValueError(f"cannot read --notes {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"--notes {path} is not UTF-8 text (a Markdown file is expected)") from None
    except ValueError as e:
        raise ValueError(f"--notes {e}") from None


def task_by_name(name):
    for t in TASKS:
        if t.name == name:
            return t
    raise ExperimentError("tinymp: unknown task %r (known: %s)" % (name, ", ".join(TASK_NAMES)))


def method_by_name(name):
    for m in METHODS:
        if m.name == name:
            return m
    raise ExperimentError("tinymp: unknown method %r (known: %s)" % (name, ", ".join(METHOD_NAMES)))


# ------------------------------------------------------------------------------ models and data

_CACHE = {}


def model_bytes(name):
    key = ("bytes", name)
    if key not in _CACHE:
        if name == "demo":
            from . import zoo
            _CACHE[key] = zoo.demo()
        else:
            path = os.path.join(MODELS_DIR, MODEL_FILES[name])
            if not os.path.exists(path):
                raise ExperimentError("tinymp: the model %s is missing (%s); it ships with the "
                                      "package (reinstall tinymp) and is made by the repository's "
                                      "tools/train_digits_subset.py" % (name, path))
            with open(path, "rb") as f:
                _CACHE[key] = f.read()
    return _CACHE[key]


def model(name):
    import tinymp
    key = ("model", name)
    if key not in _CACHE:
        _CACHE[key] = tinymp.Model(model_bytes(name))
    return _CACHE[key]


def split_pools(y, seed, extra=None):
    """Per class (0..9): (pool indices, held-out indices) as the module text says. With `extra`,
    only the `extra` images after the pool are held out (validation)."""
    rng = np.random.default_rng(seed)
    pools, held = [], []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        pools.append(idx[:POOL])
        held.append(idx[POOL:] if extra is None else idx[POOL:POOL + extra])
    return pools, np.concatenate(held)


def task_data(task, seed, phase="test"):
    """(pools: per class list of int8 sample bytes, held-out x list, held-out y list)."""
    key = ("data", task.name, seed, phase)
    if key in _CACHE:
        return _CACHE[key]
    from . import shifts
    from .builder import quantize_input
    from .datasets import digits
    m = model(task.model)
    if phase == "test":
        x, y = digits(32, "test", seed=0)
        shift_seed, extra = seed, None
    else:
        x, y = digits(32, "train", seed=0)
        shift_seed, extra = VAL_SEED_BASE + seed, VAL_PER_CLASS
    xs = shifts.apply(x, task.spec, seed=shift_seed)
    q = quantize_input(xs, (m.input_scale, m.input_zero_point))
    samples = [a.tobytes() for a in q]
    pools, held = split_pools(y, seed, extra)
    out = ([[samples[i] for i in p] for p in pools], [samples[i] for i in held],
           [int(y[i]) for i in held])
    _CACHE[key] = out
    return out


def support_set(pools, shots):
    xs, ys = [], []
    for c, p in enumerate(pools):
        xs.extend(p[:shots])
        ys.extend([c] * shots)
    return xs, ys


# ------------------------------------------------------------------------------ one run

def run_one(task_name, method_name, shots, seed, lr, epochs, phase="test"):
    """Train one configuration from the pretrained weights and evaluate it. Returns a dict."""
    import tinymp
    task, meth = task_by_name(task_name), method_by_name(method_name)
    m = model(task.model)
    pools, hx, hy = task_data(task, seed, phase)
    sx, sy = support_set(pools, shots)
    kw = dict(meth.plan)
    if meth.support:
        kw["support"] = (sx, sy)
    t0 = time.perf_counter()
    plan = m.plan(**kw)
    period = meth.apu if isinstance(meth.apu, int) else 0
    tr = tinymp.Trainer(m, plan, lr=lr, seed=seed, period=period)
    order = np.random.default_rng([seed, shots])
    losses = []
    for e in range(epochs):
        perm = order.permutation(len(sx))
        if meth.probe is not None:
            # the same steps as the loop below, one fit() per pass in this order: fit ends the
            # pass's period with the probe (after the last pass too, which changes only the
            # selection, not the parameters the evaluation uses)
            r = tr.fit([sx[i] for i in perm], [sy[i] for i in perm], epochs=1, shuffle=False,
                       probe=meth.probe)
            losses.append(r["loss"][0])
            continue
        if e and meth.apu == "epoch":
            tr.end_period()
        total = 0.0
        for i in perm:
            total += tr.step(sx[i], sy[i])
        losses.append(total / len(sx))
    t1 = time.perf_counter()
    correct = sum(tr.predict(x) == y for x, y in zip(hx, hy))
    acc = correct / len(hy)
    return {
        "phase": phase, "task": task_name, "method": method_name, "shots": shots, "seed": seed,
        "lr": lr, "epochs": epochs, "steps": epochs * len(sx), "accuracy": acc,
        "correct": int(correct), "evaluated": len(hy),
        "arena_bytes": plan.arena_bytes, "high_water": tr.high_water,
        "backward_macs": plan.backward_macs, "r": plan.r, "ratio": plan.ratio,
        "trained_layers": len(plan.layers), "periods": tr.stats()["periods"],
        "final_loss": round(losses[-1], 5) if losses else None,
        "finite": all(math.isfinite(v) for v in losses),
        "train_seconds": round(t1 - t0, 3), "eval_seconds": round(time.perf_counter() - t1, 3),
    }


def _run_job(job):
    return run_one(*job)


# ------------------------------------------------------------------------------ diagnostics

def gradient_cosines(task_name, seed=1, shots=10, rs=(2, 4)):
    """Cosine of the condensed weight gradient (r in rs) with the exact one (r = 1), per layer,
    summed over the K-shot support set, at the pretrained weights (tinymp plans at ratio 1 without
    the region limit, so every candidate layer's every channel is compared). Uses the PC binding's
    gradient hook (Trainer._grads)."""
    import tinymp
    task = task_by_name(task_name)
    m = model(task.model)
    pools, _, _ = task_data(task, seed, "test")
    sx, sy = support_set(pools, shots)

    def summed(r):
        plan = m.plan(method="tinymp", r=r, ratio=1.0, step_share=float("inf"))
        tr = tinymp.Trainer(m, plan, lr=0.0, seed=seed)
        acc = {}
        for x, y in zip(sx, sy):
            _, g = tr._grads(x, y)
            for i, d in g.items():
                v = np.concatenate([np.frombuffer(d[o], np.float32) for o in sorted(k for k in d if k != "db")]
                                   or [np.zeros(0, np.float32)]).astype(np.float64)
                acc[i] = acc.get(i, 0) + v
        return acc

    exact = summed(1)
    layers = m._layers()
    rows = []
    cond = {r: summed(r) for r in rs}
    for i in sorted(exact):
        e = exact[i]
        if not np.size(e):
            continue
        row = {"layer": i, "type": layers[i]["type"],
               "in_map": _in_map(m, layers, i), "out_map": "%dx%d" % tuple(layers[i]["out_shape"][:2])}
        for r in rs:
            c = cond[r].get(i)
            ok = c is not None and np.size(c) == np.size(e)
            row["cos_r%d" % r] = _cos(c, e) if ok else None
        rows.append(row)
    return rows


def _in_map(m, layers, i):
    t = layers[i]["in0"]
    shp = tuple(m.input_shape) if t == 0 else tuple(layers[t - 1]["out_shape"])
    return "%dx%d" % shp[:2]


def _cos(a, b):
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


# ------------------------------------------------------------------------------ the run

def _progress(msg, stream=None):
    stream = stream or sys.stderr
    print(msg, file=stream, flush=True)


def _map(jobs, n_jobs, label, log):
    """Run jobs (in a process pool when n_jobs > 1); print progress lines; results in job order."""
    results = [None] * len(jobs)
    t0 = time.perf_counter()
    every = max(1, len(jobs) // 20)
    done = 0

    def report(k):
        el = time.perf_counter() - t0
        eta = el / k * (len(jobs) - k)
        log("  %s: %d/%d runs, %.0f s elapsed, about %.0f s left" % (label, k, len(jobs), el, eta))

    if n_jobs <= 1 or len(jobs) <= 1:
        for k, job in enumerate(jobs):
            results[k] = run_one(*job)
            done += 1
            if done % every == 0 or done == len(jobs):
                report(done)
        return results
    import multiprocessing
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(n_jobs) as pool:
        for k, res in pool.imap_unordered(_indexed, list(enumerate(jobs)), chunksize=1):
            results[k] = res
            done += 1
            if done % every == 0 or done == len(jobs):
                report(done)
    return results


def _indexed(item):
    k, job = item
    return k, run_one(*job)


def choose_lrs(val_runs, methods):
    """Per method: the LR_GRID value with the best mean validation accuracy (ties: smaller)."""
    out, table = {}, {}
    for meth in methods:
        rows = [r for r in val_runs if r["method"] == meth]
        by_lr = {}
        for r in rows:
            by_lr.setdefault(r["lr"], []).append(r["accuracy"])
        means = {lr: float(np.mean(v)) for lr, v in by_lr.items()}
        table[meth] = means
        if means:
            best = max(means.values())
            out[meth] = min(lr for lr, v in means.items() if v >= best - 1e-12)
    return out, table


def run(tasks=None, methods=None, shots=SHOTS, seeds=SEEDS, epochs=EPOCHS, lr=None, jobs=1,
        log=_progress, diagnostics=True):
    """The whole experiment; returns the results dict (see docs/EXPERIMENT.md)."""
    tasks = [task_by_name(t) for t in (tasks or TASK_NAMES)]
    methods = [method_by_name(m) for m in (methods or METHOD_NAMES)]
    for t in tasks:
        model_bytes(t.model)  # a missing model file fails before any work
    t_start = time.perf_counter()
    cpu_start = _cpu_seconds()
    val_runs, val_table = [], {}
    if lr is None:
        grid_methods = [m.name for m in methods if m.name != "none"]
        jobs_v = [(t.name, mn, VAL_SHOTS, s, g, epochs, "validation")
                  for t in tasks for mn in grid_methods for g in LR_GRID
                  for s in range(1, VAL_SEEDS + 1)]
        log("learning rates: %d validation runs (%d methods x %d rates x %d tasks, %d shots)"
            % (len(jobs_v), len(grid_methods), len(LR_GRID), len(tasks), VAL_SHOTS))
        val_runs = _map(jobs_v, jobs, "validation", log)
        lrs, val_table = choose_lrs(val_runs, grid_methods)
        lrs["none"] = LR_GRID[0]
        log("chosen: " + ", ".join("%s %g" % (m.name, lrs[m.name]) for m in methods))
    else:
        lrs = {m.name: lr for m in methods}
    jobs_t = [(t.name, m.name, k, s, lrs[m.name], epochs, "test")
              for t in tasks for m in methods for k in shots for s in range(1, seeds + 1)]
    log("test: %d runs (%d tasks x %d methods x %d shot counts x %d seeds, %d passes each)"
        % (len(jobs_t), len(tasks), len(methods), len(shots), seeds, epochs))
    runs = _map(jobs_t, jobs, "test", log)
    diag = []
    if diagnostics:
        for t in tasks:
            if t.model == "demo":
                diag = {"task": t.name, "seed": 1, "shots": 10, "rows": gradient_cosines(t.name)}
                break
    wall = time.perf_counter() - t_start
    cpu = _cpu_seconds() - cpu_start
    res = OrderedDict()
    res["settings"] = {
        "tasks": [{"name": t.name, "model": t.model, "spec": t.spec, "kind": t.kind, "text": t.text}
                  for t in tasks],
        "methods": [{"name": m.name, "plan": m.plan, "apu": m.apu, "support": m.support,
                     "text": m.text} for m in methods],
        "shots": list(shots), "seeds": seeds, "epochs": epochs, "pool": POOL,
        "lr": lr, "lr_grid": list(LR_GRID) if lr is None else None, "lrs": lrs,
        "val_shots": VAL_SHOTS, "val_seeds": VAL_SEEDS, "val_per_class": VAL_PER_CLASS,
        "jobs": jobs,
    }
    res["machine"] = {"python": platform.python_version(), "platform": platform.platform(),
                      "processor": platform.machine(), "cpus": os.cpu_count()}
    res["wall_seconds"] = round(wall, 1)
    res["cpu_seconds"] = round(cpu, 1)
    res["pretrained"] = {t.name: _pretrained(t, seeds) for t in tasks}
    res["validation"] = {"table": {m: {str(k): v for k, v in d.items()} for m, d in val_table.items()},
                         "runs": val_runs}
    res["runs"] = runs
    res["summary"] = summarise(runs, tasks, methods, shots, seeds)
    res["verdict"] = verdict(res["summary"], tasks, shots)
    res["diagnostics"] = diag
    return res


def _cpu_seconds():
    """User + system CPU time of this process and its finished children (the worker pool)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _pretrained(task, seeds):
    """The pretrained model's accuracy on each seed's held-out images (Model.predict)."""
    m = model(task.model)
    out = []
    for s in range(1, seeds + 1):
        _, hx, hy = task_data(task, s, "test")
        out.append(sum(m.predict(x) == y for x, y in zip(hx, hy)) / len(hy))
    return out


# ------------------------------------------------------------------------------ summaries

def _ms(values):
    v = np.asarray(values, dtype=np.float64) * 100.0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _breakdown(model_name, meth, run):
    """plan.breakdown of a run's plan (re-planned: the same options give the same plan; with a
    support set, the run's own support set)."""
    kw = dict(meth.plan)
    if meth.support:
        pools, _, _ = task_data(task_by_name(run["task"]), run["seed"], run["phase"])
        kw["support"] = support_set(pools, run["shots"])
    p = model(model_name).plan(**kw)
    out = dict(p.breakdown)
    out["forward_macs"] = p.forward_macs
    return out


def summarise(runs, tasks, methods, shots, seeds):
    """Per (task, method, shots): mean and std of accuracy (percent) over seeds; per (task,
    method): memory and MACs (the largest over the runs); the shifted-domain average per seed."""
    idx = {(r["task"], r["method"], r["shots"], r["seed"]): r for r in runs}
    per = {}
    for t in tasks:
        for m in methods:
            rs = [r for r in runs if r["task"] == t.name and r["method"] == m.name]
            if not rs:
                continue
            d = {"arena_bytes": max(r["arena_bytes"] for r in rs),
                 "final_loss": float(np.mean([r["final_loss"] for r in rs])),
                 "high_water": max(r["high_water"] for r in rs),
                 "backward_macs": max(r["backward_macs"] for r in rs),
                 "lr": rs[0]["lr"], "acc": {}}
            big = max(rs, key=lambda r: r["arena_bytes"])
            d["breakdown"] = _breakdown(t.model, m, big)
            for k in shots:
                vals = [idx[(t.name, m.name, k, s)]["accuracy"] for s in range(1, seeds + 1)
                        if (t.name, m.name, k, s) in idx]
                d["acc"][str(k)] = _ms(vals)
            per.setdefault(t.name, {})[m.name] = d
    shifted = [t.name for t in tasks if t.kind == "shift"]
    avg = {}
    if shifted:
        for m in methods:
            avg[m.name] = {}
            for k in list(shots) + ["all"]:
                ks = list(shots) if k == "all" else [k]
                per_seed = []
                for s in range(1, seeds + 1):
                    vals = [idx[(t, m.name, kk, s)]["accuracy"] for t in shifted for kk in ks
                            if (t, m.name, kk, s) in idx]
                    if vals:
                        per_seed.append(float(np.mean(vals)))
                avg[m.name][str(k)] = _ms(per_seed) if per_seed else None
            losses = [r["final_loss"] for r in runs if r["method"] == m.name and r["task"] in shifted]
            avg[m.name]["final_loss"] = float(np.mean(losses)) if losses else None
    return {"per_task": per, "shifted_average": avg, "shifted_tasks": shifted}


def verdict(summary, tasks, shots):
    """The issue's criterion on the shifted domains: tinymp (r = 4, default APU) within 1 point
    of full and well above last, at a fraction of full's memory."""
    per, avg = summary["per_task"], summary["shifted_average"]
    shifted = summary["shifted_tasks"]
    need = (HEADLINE, "full", "last")
    if not shifted or any(n not in avg for n in need):
        return None
    rows = []
    for k in [str(s) for s in shots] + ["all"]:
        a = {n: avg[n][k][0] for n in need}
        rows.append({"shots": k, "tinymp": a[HEADLINE], "full": a["full"], "last": a["last"],
                     "gap_to_full": a[HEADLINE] - a["full"], "gain_over_last": a[HEADLINE] - a["last"]})
    per_task = []
    for t in shifted:
        for k in [str(s) for s in shots]:
            g = per[t][HEADLINE]["acc"][k][0] - per[t]["full"]["acc"][k][0]
            per_task.append({"task": t, "shots": k, "gap_to_full": g})
    t0 = shifted[0]
    mem_t, mem_f = per[t0][HEADLINE]["arena_bytes"], per[t0]["full"]["arena_bytes"]
    mac_t, mac_f = per[t0][HEADLINE]["backward_macs"], per[t0]["full"]["backward_macs"]
    within = all(abs(r["gap_to_full"]) <= 1.0 or r["gap_to_full"] > 0 for r in rows)
    above = all(r["gain_over_last"] >= 5.0 for r in rows)
    return {"rows": rows, "per_task": per_task, "within_1_point_of_full": within,
            "well_above_last": above, "memory_fraction_of_full": mem_t / mem_f,
            "arena_tinymp": mem_t, "arena_full": mem_f, "backward_macs_tinymp": mac_t,
            "backward_macs_full": mac_f, "met": within and above}


# ------------------------------------------------------------------------------ Markdown

def _pm(ms):
    return "—" if ms is None else "%.1f ± %.1f" % tuple(ms)


def markdown(res, command, notes=None):
    s = res["settings"]
    summ = res["summary"]
    per, avg = summ["per_task"], summ["shifted_average"]
    tasks, methods = s["tasks"], s["methods"]
    shots = s["shots"]
    L = []
    L.append("# Personalisation accuracy: every method in the tinymp engine\n")
    L.append("Produced by `tinymp experiment` (host/tinymp/experiment.py; protocol in "
             "docs/EXPERIMENT.md). Every accuracy, memory and MAC figure is the C engine's "
             "(PC build of the core that runs on the board).\n")
    L.append("Command:\n\n```sh\n%s\n```\n" % command)
    m = res["machine"]
    L.append("Wall time %.0f s (%.1f min) on %s, %s CPUs, %d worker process(es), %.0f s of CPU "
             "time in all; Python %s.\n"
             % (res["wall_seconds"], res["wall_seconds"] / 60, m["processor"], m["cpus"], s["jobs"],
                res.get("cpu_seconds", 0), m["python"]))
    L.append("Protocol: %d seeds; %s shots per class from a pool of %d per class; %d passes over "
             "the support set; accuracy on the held-out images of the shifted test split (about "
             "34 per class, never used in pretraining nor personalisation); mean ± std over seeds "
             "in percent. Learning rate: %s.\n"
             % (s["seeds"], "/".join(map(str, shots)), s["pool"], s["epochs"],
                ("fixed at %g for every method" % s["lr"]) if s["lr"] is not None else
                ("per method, the best of %s on a validation split (%d shots, pretraining's "
                 "training images under the same shift), never on the test images"
                 % (", ".join("%g" % v for v in s["lr_grid"]), s["val_shots"]))))
    L.append("## Tasks\n")
    L.append("| task | model | shift (`tinymp.shifts` spec) | what | pretrained accuracy |")
    L.append("|---|---|---|---|---|")
    for t in tasks:
        pa = res["pretrained"][t["name"]]
        L.append("| %s | %s | `%s` | %s | %s |" % (t["name"], t["model"], t["spec"], t["text"],
                                                   _pm(_ms(pa))))
    L.append("")
    if summ["shifted_tasks"] and avg:
        L.append("## Shifted domains: average over %s\n" % ", ".join(summ["shifted_tasks"]))
        L.append(_main_table(res, avg, shots))
        v = res["verdict"]
        if v:
            L.append(_verdict_text(v))
    for t in tasks:
        if t["name"] not in per:
            continue
        L.append("## Task %s: %s\n" % (t["name"], t["text"]))
        L.append(_task_table(res, per[t["name"]], shots))
    if res["validation"]["table"]:
        L.append("## Learning-rate choice (validation accuracy, %, mean over tasks)\n")
        grid = s["lr_grid"]
        L.append("| method | " + " | ".join("lr %g" % g for g in grid) + " | chosen |")
        L.append("|---|" + "---:|" * len(grid) + "---:|")
        for mn, d in res["validation"]["table"].items():
            cells = []
            for g in grid:
                v = d.get(str(g))
                cells.append("—" if v is None else "%.1f" % (100 * v))
            L.append("| %s | %s | %g |" % (mn, " | ".join(cells), s["lrs"][mn]))
        L.append("")
    if res["diagnostics"]:
        d = res["diagnostics"]
        L.append("## Why r = 4 loses accuracy here: condensed vs exact gradients\n")
        L.append("Cosine between the weight gradient of Gradient Condensing and the exact one "
                 "(r = 1), summed over the %d-shot support set of task %s (seed %d) at the "
                 "pretrained weights, every channel of every candidate layer (tinymp plans at "
                 "ratio 1, no region limit). 1 = same direction.\n"
                 % (d["shots"], d["task"], d["seed"]))
        L.append("| layer | type | input map | output map | cos r=2 | cos r=4 |")
        L.append("|---:|---|---|---|---:|---:|")
        for r in d["rows"]:
            L.append("| %d | %s | %s | %s | %s | %s |" % (
                r["layer"], r["type"], r["in_map"], r["out_map"],
                "—" if r.get("cos_r2") is None else "%.2f" % r["cos_r2"],
                "—" if r.get("cos_r4") is None else "%.2f" % r["cos_r4"]))
        L.append("")
    if notes:
        L.append(notes.rstrip() + "\n")
    L.append("## Files\n")
    L.append("`results.json` beside this file holds every run (task, method, shots, seed, lr, "
             "accuracy, arena bytes, high water, backward MACs, loss, times), the validation runs "
             "and the settings; `accuracy_memory.png` plots accuracy against peak training SRAM.\n")
    return "\n".join(L)


def _fmt_int(v):
    return "{:,}".format(int(v))


def _main_table(res, avg, shots):
    per = res["summary"]["per_task"]
    first = res["summary"]["shifted_tasks"][0]
    full_mem = per[first].get("full", {}).get("arena_bytes")
    hdr = ["method"] + ["%s-shot" % k for k in shots] + ["peak SRAM (B)", "of full",
                                                          "high water (B)", "bwd MACs/step", "lr",
                                                          "train loss"]
    out = ["| " + " | ".join(hdr) + " |", "|---|" + "---:|" * (len(hdr) - 1)]
    for mn, d in avg.items():
        p = per[first][mn]
        frac = "%.0f %%" % (100.0 * p["arena_bytes"] / full_mem) if full_mem else "—"
        cells = [("**%s**" % mn) if mn == HEADLINE else mn] + [_pm(d[str(k)]) for k in shots]
        cells += [_fmt_int(p["arena_bytes"]), frac, _fmt_int(p["high_water"]),
                  _fmt_int(p["backward_macs"]), "%g" % p["lr"],
                  "—" if d.get("final_loss") is None else "%.2f" % d["final_loss"]]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append("Train loss: the mean cross-entropy over the last pass on the support set (how well "
               "the method fits the samples it trains on), averaged over domains, shots and seeds. "
               "Memory and MACs: the planner's exact peak of one training step (`plan.arena_bytes`, "
               "everything: activations, saved tensors, gradients, trainable parameters in RAM, "
               "scratch), the largest measured high water, `plan.backward_macs` of one step; "
               "for the demo model (the %s task; methods with a support-set selection: the "
               "largest over the runs).\n" % first)
    return "\n".join(out)


def _task_table(res, d, shots):
    hdr = ["method"] + ["%s-shot" % k for k in shots] + ["peak SRAM (B)", "high water (B)",
                                                          "bwd MACs/step"]
    out = ["| " + " | ".join(hdr) + " |", "|---|" + "---:|" * (len(hdr) - 1)]
    for mn, p in d.items():
        cells = [mn] + [_pm(tuple(p["acc"][str(k)])) for k in shots]
        cells += [_fmt_int(p["arena_bytes"]), _fmt_int(p["high_water"]), _fmt_int(p["backward_macs"])]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def _verdict_text(v):
    L = ["**Criterion** (issue 6): `tinymp` (r = 4, default APU) within 1 point of `full` and "
         "well above `last` on the shifted domains, at a fraction of `full`'s memory.\n"]
    L.append("| shots | tinymp | full | last | tinymp − full | tinymp − last |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for r in v["rows"]:
        L.append("| %s | %.1f | %.1f | %.1f | %+.1f | %+.1f |" % (
            r["shots"], r["tinymp"], r["full"], r["last"], r["gap_to_full"], r["gain_over_last"]))
    L.append("")
    gaps = ", ".join("%s %s-shot %+.1f" % (p["task"], p["shots"], p["gap_to_full"])
                     for p in v["per_task"])
    L.append("Memory: tinymp plans %s B per training step, %.0f %% of full's %s B; backward MACs "
             "%s vs %s per step (%.1fx fewer).\n" % (
                 _fmt_int(v["arena_tinymp"]), 100 * v["memory_fraction_of_full"],
                 _fmt_int(v["arena_full"]), _fmt_int(v["backward_macs_tinymp"]),
                 _fmt_int(v["backward_macs_full"]),
                 v["backward_macs_full"] / max(1, v["backward_macs_tinymp"])))
    L.append("Result: within 1 point of full: **%s**; well above last (>= 5 points): **%s**. "
             "The criterion is **%s**.\n" % (
                 "yes" if v["within_1_point_of_full"] else "no",
                 "yes" if v["well_above_last"] else "no",
                 "met" if v["met"] else "not met"))
    L.append("Per task, tinymp − full (points): %s.\n" % gaps)
    return "\n".join(L)


# ------------------------------------------------------------------------------ plot

VARIANTS = ("tinymp-fisher", "tinymp-p10", "tinymp-probe", "tinymp-norot", "tinymp-half",
            "tinymp-all", "lastblock-r4")


def plot(res, path):
    """Left: accuracy (shifted-domain average, or the only task) against peak training SRAM for
    the methods; right: tinymp's variants beside tinymp, full and last at every shot count.
    Returns False (and writes nothing) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    summ = res["summary"]
    shots = res["settings"]["shots"]
    per = summ["per_task"]
    if summ["shifted_tasks"]:
        first = summ["shifted_tasks"][0]
        acc = {mn: {k: tuple(summ["shifted_average"][mn][str(k)]) for k in shots}
               for mn in summ["shifted_average"]}
        title = "shifted domains (%s): mean over domains, ± std over seeds" % ", ".join(summ["shifted_tasks"])
    else:
        first = next(iter(per))
        acc = {mn: {k: tuple(d["acc"][str(k)]) for k in shots} for mn, d in per[first].items()}
        title = "task %s: mean ± std over seeds" % first
    main = [mn for mn in acc if mn not in VARIANTS]
    variants = [mn for mn in acc if mn in VARIANTS]
    fig, axes = plt.subplots(1, 2 if variants else 1, figsize=(13 if variants else 9, 5.8), dpi=110,
                             gridspec_kw={"width_ratios": [3, 2]} if variants else None)
    ax = axes[0] if variants else axes
    markers = "os^Dv<>p"
    for j, k in enumerate(shots):
        xs = [per[first][mn]["arena_bytes"] / 1024.0 for mn in main]
        ax.errorbar(xs, [acc[mn][k][0] for mn in main], yerr=[acc[mn][k][1] for mn in main],
                    fmt=markers[j % len(markers)], capsize=3, label="%d shots per class" % k, alpha=0.85)
    # labels at the largest shot count, nudged apart when points are close
    k_last = shots[-1]
    placed = []
    for mn in sorted(main, key=lambda n: acc[n][k_last][0]):
        x = per[first][mn]["arena_bytes"] / 1024.0
        y = acc[mn][k_last][0]
        ly = y
        for px, py in placed:
            if abs(px - x) < 6 and abs(py - ly) < 2.2:
                ly = py + 2.2
        placed.append((x, ly))
        ax.annotate(mn, (x, y), xytext=(x + 0.8, ly + 0.6), fontsize=8,
                    fontweight="bold" if mn == HEADLINE else "normal",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "alpha": 0.5} if ly != y else None)
    ax.set_xlabel("peak training SRAM of one step, KB (plan.arena_bytes, %s model)"
                  % res["settings"]["tasks"][0]["model"])
    ax.set_ylabel("accuracy on held-out images, %")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if variants:
        bx = axes[1]
        names = [n for n in ("last", "full", HEADLINE) if n in acc] + variants
        width = 0.8 / len(shots)
        for j, k in enumerate(shots):
            ys = np.arange(len(names)) + (j - (len(shots) - 1) / 2) * width
            bx.barh(ys, [acc[n][k][0] for n in names], height=width, xerr=[acc[n][k][1] for n in names],
                    label="%d shots" % k, alpha=0.85, error_kw={"lw": 0.6})
        bx.set_yticks(np.arange(len(names)))
        bx.set_yticklabels(["%s (%.1f KB)" % (n, per[first][n]["arena_bytes"] / 1024.0) for n in names],
                           fontsize=8)
        bx.invert_yaxis()
        bx.set_xlabel("accuracy, %")
        bx.set_title("tinymp's choices (r = 4) beside last and full", fontsize=9)
        bx.grid(True, axis="x", alpha=0.3)
        bx.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------ writing

def write_outputs(res, out_dir, command, notes=None, log=_progress):
    """RESULTS.md, results.json and accuracy_memory.png in out_dir. Returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    res = dict(res)
    res["command"] = command
    jpath = os.path.join(out_dir, "results.json")
    _write(jpath, dump_json(res))
    paths["json"] = jpath
    mpath = os.path.join(out_dir, "RESULTS.md")
    _write(mpath, markdown(res, command, notes))
    paths["markdown"] = mpath
    ppath = os.path.join(out_dir, "accuracy_memory.png")
    if plot(res, ppath + ".tmp.png"):
        os.replace(ppath + ".tmp.png", ppath)
        paths["png"] = ppath
    else:
        log("note: matplotlib is not installed, so no accuracy_memory.png "
            "(pip install 'tinymp[plot]')")
    return paths


def dump_json(res):
    """The results as JSON text: settings and summaries indented, one line per run."""
    def runs_text(runs, indent):
        pad = " " * indent
        if not runs:
            return "[]"
        return "[\n" + ",\n".join(pad + " " + json.dumps(r, separators=(",", ":")) for r in runs) + "\n" + pad + "]"

    parts = []
    for k, v in res.items():
        if k == "runs":
            text = runs_text(v, 1)
        elif k == "validation":
            text = ('{\n  "table": %s,\n  "runs": %s\n }'
                    % (json.dumps(v["table"], separators=(",", ":")), runs_text(v["runs"], 2)))
        else:
            text = json.dumps(v, indent=1).replace("\n", "\n ")
        parts.append(" %s: %s" % (json.dumps(k), text))
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
