"""Where a training call's instructions go on the emulated Cortex-M7: a per-function profile.

`python -m tinymp.m7profile --model mcunet --config "tinymp r=4" --call cached` runs the training
bench (firmware/bench/bench_train.c, built by `make bench-train-elf`) for one configuration of
`tinymp bench` under QEMU with translation-block logging (``-d in_asm,exec,nochain``), and counts
the guest instructions of every block executed inside the chosen call, per function (the ELF's
symbols). The counted call is the bench's wrapper of `tmp_trainer_forward`, `tmp_trainer_step`,
`tmp_trainer_step_fill`, `tmp_trainer_step_cached` or `tmp_train_plan_make` (``--call plan``, the
configuration's own plan; with support samples also the selection pass's plan); the figure is
the mean over its calls.

Its total is an independent count of what `tinymp bench` measures with the timer (tests check that
the two agree within 1 %). It runs a little high: QEMU restarts a block that reads a device (the
timer behind the trainer's phase clock) and the log shows it twice (+0.25 % on the demo model's
cached step). Emulated instruction counts, not Cortex-M7 cycles. The logging makes QEMU slow: a
cached step of a 128x128 model takes several minutes (the whole program runs, logged).
"""
import argparse
import bisect
import collections
import os
import re
import subprocess
import sys
import tempfile

from . import bench

CALLS = {"forward": "run_forward", "step": "run_step", "fill": "run_step_fill",
         "cached": "run_step_cached", "plan": "run_plan"}
CALLER = "bench_run_timed"  # the harness routine that calls the wrappers (bench_timer.S)
_TRACE = re.compile(r"\[[0-9a-f]+/([0-9a-f]+)/")


def _symbols(elf):
    """Sorted [(address, name)] of the ELF's code symbols (Thumb bit cleared)."""
    out = subprocess.run(["arm-none-eabi-nm", "-n", "--defined-only", elf], capture_output=True,
                         text=True, check=True).stdout
    syms = []
    for line in out.splitlines():
        p = line.split()
        if len(p) == 3 and p[1] in "tT" and not p[2].startswith("$"):
            syms.append((int(p[0], 16) & ~1, p[2]))
    syms.sort()
    return syms


def profile_lines(lines, syms, call):
    """Instructions per function inside the calls of wrapper `call`, from QEMU's log lines.
    Returns (Counter name -> instructions summed over the calls, number of calls)."""
    starts = [a for a, _ in syms]
    names = [n for _, n in syms]
    where = {n: i for i, n in enumerate(names)}
    if call not in where or CALLER not in where:
        raise bench.BenchError("the bench ELF lacks the symbols %s / %s" % (call, CALLER))
    entry = starts[where[call]]
    i = where[CALLER]
    stop = (starts[i], starts[i + 1] if i + 1 < len(starts) else 1 << 32)
    size = {}  # block start -> guest instructions
    cur = None
    prof = collections.Counter()
    active, calls = False, 0
    for line in lines:
        if line.startswith("IN:"):
            cur = None
        elif line.startswith("0x") and line[10:11] == ":":
            a = int(line[:10], 16)
            if cur is None:
                cur = a
                size[a] = 0
            size[cur] += 1
        elif line.startswith("Trace"):
            cur = None
            m = _TRACE.search(line)
            if m is None:
                continue
            pc = int(m.group(1), 16)
            if not active:
                if pc == entry:
                    active, calls = True, calls + 1
                else:
                    continue
            elif stop[0] <= pc < stop[1]:
                active = False
                continue
            k = bisect.bisect_right(starts, pc) - 1
            prof[names[k] if k >= 0 else "?"] += size.get(pc, 0)
    return prof, calls


def run(key, label, call, root=None, n_calls=2, progress=print):
    """Profile `call` ("forward", "step", "fill", "cached", "plan") of configuration `label` of
    `tinymp bench` on model `key`. Returns (Counter name -> instructions per call, calls)."""
    import tinymp
    root = root or bench.repo_root()
    qemu, elf = bench.find_tools(root)
    data = bench.model_bytes(key)
    m = tinymp.Model(data)
    found = [(o, s) for lab, o, s in bench.configs(m, key) if lab == label]
    if not found:
        raise bench.BenchError("no configuration %r for %s (have: %s)" % (
            label, key, ", ".join(lab for lab, _, _ in bench.configs(m, key))))
    opts, support = found[0]
    xs, ys = bench.make_samples(m, max(n_calls, support, 1))
    with tempfile.TemporaryDirectory() as work:
        mpath, spath = os.path.join(work, "m.tmpm"), os.path.join(work, "m.samples")
        with open(mpath, "wb") as f:
            f.write(data)
        with open(spath, "wb") as f:
            for x, y in zip(xs, ys):
                f.write(bytes([y]) + x)
        steps = n_calls if call == "step" else 0
        cached = n_calls if call in ("fill", "cached") else 0
        args = ["model=" + mpath, "samples=" + spath, "steps=%d" % steps, "cached=%d" % cached,
                "lr=%g" % bench.LR, "seed=%d" % bench.SEED] + bench._args_for(opts)
        if support:
            args.append("support=%d" % support)
        argfile = os.path.join(work, "args")
        with open(argfile, "w") as f:
            f.write("\n".join(args) + "\n")
        cmd = [qemu, "-M", "mps2-an500", "-nographic", "-monitor", "null", "-serial", "null",
               "-semihosting", "-icount", "shift=0,sleep=off", "-kernel", elf, "-append",
               "@" + argfile, "-d", "in_asm,exec,nochain", "-D", "/dev/stderr"]
        progress("profiling %s / %s / %s call (QEMU with block logging: slow)" % (key, label, call))
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             errors="replace", bufsize=1 << 20)
        prof, calls = profile_lines(p.stderr, _symbols(elf), CALLS[call])
        if p.wait() != 0:
            raise bench.BenchError("QEMU failed (exit %d) for %s / %s" % (p.returncode, key, label))
    if calls == 0:
        raise bench.BenchError("no %s call ran (does %s use the feature cache?)" % (call, label))
    return collections.Counter({k: v // calls for k, v in prof.items()}), calls


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tinymp.m7profile", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo", choices=sorted(bench.MODELS))
    ap.add_argument("--config", default="tinymp r=4", help="a configuration label of `tinymp bench`")
    ap.add_argument("--call", default="cached", choices=sorted(CALLS))
    ap.add_argument("--top", type=int, default=25, help="functions to list (default 25)")
    a = ap.parse_args(argv)
    if a.top < 1:
        ap.error("--top must be at least 1")
    try:
        prof, calls = run(a.model, a.config, a.call, progress=lambda s: print(s, file=sys.stderr))
    except bench.BenchError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    total = sum(prof.values())
    print("%s / %s / %s: %s instructions per call (mean of %d calls; emulated)" % (
        a.model, a.config, a.call, format(total, ","), calls))
    for name, n in prof.most_common(a.top):
        print("%14s %5.1f%%  %s" % (format(n, ","), 100.0 * n / max(1, total), name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
