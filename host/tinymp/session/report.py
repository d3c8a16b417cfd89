"""The session report: accuracy before and after, memory (plan, breakdown, high water, heap,
flash) and latency per phase, as a table, a dict (--json) and PNG plots.

Times from a simulated board are the host CPU's and every output says so; times from a real
board are its `time.ticks_us` / `time.ticks_cpu` readings. With `m7=True` (`tinymp report --m7`)
the report adds a Cortex-M7 estimate: the session's model and training options run through the
bench program on the emulated Cortex-M7 (tinymp.bench.estimate_training), whose instruction
counts the cost model (tinymp.costmodel) turns into times. It is labelled an estimate
everywhere, and it is shown only when the emulator made the same plan as the board.
"""
import hashlib
import os
import re
import shlex
import subprocess
import textwrap

from .. import summary
from ..tinymp_agent import drop_ignored_ratio
from . import protocol as P

# the estimate runs the bench over the session's first ESTIMATE_SAMPLES samples (or more, when the
# board's plan read more for its selection pass)
ESTIMATE_SAMPLES = 32
# runs recorded before boards reported support_samples: the agent's TinyTrain pass read this many
LEGACY_SUPPORT = 32
SIM_NOTE = "simulated board, host CPU times, not measured on the board"
# the learning rate of a run whose options name none, recorded from a board whose TRAIN_START
# reply does not say it (agent 5 and before: tinymp_agent's opts.get("lr", 0.01)); from agent 6
# the reply holds the rate the trainer took, the engine's own for the method (docs/API.md)
LEGACY_LR = 0.01


def run_lr(run):
    """The learning rate a recorded run trained with: the one its options gave, else the one the
    board's TRAIN_START reply said the trainer took (float32, shown to 7 digits), else, for a
    board that did not say, its agent's default; None for a record without options or reply."""
    opts = run.get("options")
    if isinstance(opts, dict) and opts.get("lr") is not None:
        return opts["lr"]
    said = (run.get("start") or {}).get("lr")
    if said is not None:
        return float("%.7g" % said)
    return None if opts is None else LEGACY_LR


# --- what the report reads of a run record (commands.train / commands.evaluate) --------------
# Records are the board's replies as they came (TRAIN_START's in "start", TRAIN_END's in "end",
# the TRAIN_STEPS events), checked with the protocol's specs; records written before the PC
# checked replies, or edited by hand, may hold anything, and the report says which one.

# the board summary a record keeps (commands._board_summary): the fields the report reads
BOARD = {"board": "str?", "model_sha256": "str?", "arena_budget": "count?",
         "model_bytes": "count?", "inference_arena_bytes": "count?", "model_served_from": "str?"}
# the event columns the report and the plots read
EVENT_COLUMNS = ("step", "label", "pred", "loss", "forward_us", "backward_us", "update_us",
                 "step_us", "step_cycles")
_EVENT_KINDS = dict(zip(P.EVENT_FIELDS, P.REPLIES[P.TRAIN_STEPS]["events"].spec.specs))
TRAIN_RECORD = {
    "time": "num?", "samples": "count?", "dataset": "str?",
    "options": P.Opt({"method": "str?", "lr": "num?", "budget": "count?", "period": "count?"}),
    "fields": P.ListOf("str"),
    "start": P.REPLIES[P.TRAIN_START], "end": P.Opt(P.REPLIES[P.TRAIN_END]),
    "board": P.Opt(BOARD),
}
EVAL_RECORD = {
    "time": "num?", "n": "count?", "accuracy": "num?", "params": "str?", "source": "str?",
    "data_sha256": "str?", "predict_us_per_sample": "num?", "board": P.Opt(BOARD),
}


def record_problem(kind, rec):
    """None when a run record of `kind` ('train', 'eval') holds what the report reads of it, in
    the types it reads, else what is wrong, in a few words."""
    problem = P._problem(TRAIN_RECORD if kind == "train" else EVAL_RECORD, rec, "")
    if problem or kind != "train":
        return problem
    fields = rec["fields"]
    missing = [c for c in EVENT_COLUMNS if c not in fields]
    if missing:
        return f"'fields' lacks {', '.join(repr(c) for c in missing)}"
    row = P.Row(*[_EVENT_KINDS.get(name, "any") for name in fields])
    return P._problem({"events": P.ListOf(row)}, rec, "")


def _stats(values):
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    n = len(vals)
    mid = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2
    return {"mean": sum(vals) / n, "median": mid, "min": vals[0], "max": vals[-1], "n": n}


PHASES = ("forward", "backward", "update", "step")


def _latency(f, ev, simulated):
    """Per-phase time statistics of the events `ev` (columns `f`), and the CPU cycles'."""
    col = lambda name: [e[f[name]] for e in ev]  # noqa: E731
    return {"steps": len(ev),
            "latency_us": {ph: _stats(col(ph + "_us")) for ph in PHASES},
            "step_cycles": _stats(col("step_cycles")) if not simulated else None}


def _latency_by_start(f, ev, simulated):
    if "cached" not in f:
        return None
    out = {}
    for kind, cached in (("input", False), ("features", True)):
        part = [e for e in ev if bool(e[f["cached"]]) == cached]
        if part:
            out[kind] = _latency(f, part, simulated)
    return out


def accuracy_window(run):
    """Steps averaged for the first and last running accuracy (and the final loss): an epoch
    (at least 10 steps), but at most half of the run, so that the two never share a step and
    "X -> Y" compares the start with the end; the whole run when it has one step."""
    n = len(run["events"])
    if n < 2:
        return n
    return max(1, min(max(10, run.get("samples") or 10), n // 2))


def accuracy_change(t):
    """"first -> last" running accuracy of a train summary, or only the last for a run too short
    for two windows."""
    if t.get("first_running_accuracy") is None:
        return _pct(t.get("final_running_accuracy"))
    return f"{_pct(t['first_running_accuracy'])} -> {_pct(t['final_running_accuracy'])}"


# the board's files named in its messages ("cannot load '/flash/tinymp/params.bin': ..."), in the
# words the user knows them by: the path is the board's (or the simulated board's flash folder)
BOARD_FILES = {"params.bin": "the board's saved parameters", "params.try": "the board's trial run"}
_BOARD_FILE = re.compile(r"""(['"])[^'"]*?\b(%s)\1""" % "|".join(re.escape(k) for k in BOARD_FILES))


def board_words(msg):
    """A board's message (why a run did not resume, save or keep its trial) as part of a line of
    the PC: without its inner "tinymp: " prefixes, and the board's parameter files by what they
    hold, not by their path on the board. None stays None."""
    if msg is None:
        return None
    from .commands import embedded
    return _BOARD_FILE.sub(lambda m: BOARD_FILES[m.group(2)], embedded(msg))


def train_summary(run):
    """Figures of one train run record (commands.train)."""
    f = {name: i for i, name in enumerate(run["fields"])}
    ev = run["events"]
    end = run.get("end") or {}
    plan = end.get("plan") or run["start"].get("plan") or {}
    board = run.get("board") or {}
    simulated = bool(board.get("simulated"))
    window = accuracy_window(run)
    tail = ev[-window:] if window else []
    head = ev[:window] if len(ev) >= 2 else []  # one step: no first window to compare with
    lat = _latency(f, ev, simulated)
    opts = run.get("options")
    budget, budget_from = run_budget(opts, board.get("arena_budget"))
    return {
        "steps": len(ev),
        "samples": run.get("samples"),
        "options": opts,
        # the learning rate the run trained with: its options', else the one the board said it
        # took, else an older agent's default (None: a record without options)
        "lr": run_lr(run),
        # the arena budget the board planned within (bytes) and whose it was: "run" (the run's
        # own, --budget or a session config's budget_kb), "board" (the board's arena budget: no
        # budget given, or one above it, which the agent caps) or None (not recorded)
        "budget": budget,
        "budget_from": budget_from,
        "plan": plan,
        "resumed": run["start"].get("resumed"),
        # whether the saved training state (momentum, selections, period) came with the
        # parameters (False: saved with other momentum or ratio; None: an older board)
        "resumed_state": run["start"].get("resumed_state"),
        # why the saved run could not be continued (None: it was, or there was none)
        "resume_error": board_words(run["start"].get("resume_error")),
        # None: a run recorded before boards reported it
        "support_samples": run["start"].get("support_samples"),
        "final_loss": sum(e[f["loss"]] for e in tail) / len(tail) if tail else None,
        "final_running_accuracy": (sum(1 for e in tail if e[f["pred"]] == e[f["label"]]) / len(tail)
                                   if tail and tail[0][f["pred"]] >= 0 else None),
        "first_running_accuracy": (sum(1 for e in head if e[f["pred"]] == e[f["label"]])
                                   / len(head) if head and head[0][f["pred"]] >= 0 else None),
        # steps in each of the first and last windows (and the plot's moving window)
        "accuracy_window": window,
        "latency_us": lat["latency_us"],
        "step_cycles": lat["step_cycles"],
        # the same, apart for the steps from the input and those from kept features (which skip
        # the prefix layers): {"input": ..., "features": ...}, each with its "steps"; None for a
        # run whose board did not say (an agent before version 5)
        "latency_by_start": _latency_by_start(f, ev, simulated),
        "clock": "host" if simulated else "board",
        "timing_note": SIM_NOTE if simulated else "measured on the board (time.ticks_us, "
                                                  "time.ticks_cpu)",
        "arena_bytes": plan.get("arena_bytes"),
        "breakdown": plan.get("breakdown"),
        # the plan's own tables, kept beside the arena (None: a board that does not report them)
        "table_bytes": plan.get("table_bytes"),
        "high_water": end.get("high_water"),
        "heap_before": end.get("heap_before"),
        "heap_after": end.get("heap_after"),
        "heap_end": end.get("heap_end"),
        "saved": end.get("saved"),
        # why a run asked to save was not (its parameters could not be written; the saved ones
        # stay as they were)
        "save_error": board_words(end.get("save_error")),
        # an unsaved run kept on the board as the trial (`tinymp params save` keeps it; None: a
        # saved run, or a board whose agent has no trial runs) and why it could not be kept
        "trial": end.get("trial"),
        "trial_error": board_words(end.get("trial_error")),
        # steps whose gradient the logits' int8 limits stopped whole (None: a board that does
        # not report it)
        "stalled_steps": (end.get("stats") or {}).get("stalled_steps"),
        # the frozen-prefix features the board kept ({where, bytes, sample_bytes, cached_steps};
        # None: none kept, or a board before agent 4)
        "features": end.get("features"),
    }


def run_budget(opts, board_budget):
    """(bytes, "run" | "board" | None): the arena budget a run with options `opts` was planned
    within on a board of `board_budget` bytes; the agent plans within the smaller of the two."""
    asked = (opts or {}).get("budget")
    if asked is not None and (board_budget is None or asked <= board_budget):
        return asked, "run"
    if board_budget is not None:
        return board_budget, "board"
    return None, None


def plural(n, word):
    """'1 step', '2 steps', '1,024 samples' ('-' for a count not recorded)."""
    if n is None:
        return f"- {word}s"
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def command(cmd, session_path=None):
    """`cmd` for this session: with --session, unless it is the default one in the current
    folder."""
    if session_path:
        here = os.path.abspath("tinymp-session")
        if os.path.abspath(session_path) != here:
            try:
                rel = os.path.relpath(session_path)
            except ValueError:  # Windows: another drive than the current folder's
                rel = ".."
            cmd += " --session " + shlex.quote(session_path if rel.startswith("..") else rel)
    return cmd


def no_train_text(session_path):
    """Why a report has no training part, and what to run."""
    cmd = command("tinymp train", session_path)
    return f"no training run recorded in this session: run `{cmd}` first"


def features_text(t):
    """How many of a train summary's steps started from kept features, or None."""
    fe = t.get("features")
    if not fe:
        return None
    where = "in RAM" if fe.get("where") == "ram" else "in a file on the board"
    text = (f"{fe.get('cached_steps')} of {plural(t['steps'], 'step')} started from the "
            f"samples' kept frozen-prefix features ({summary.kib(fe.get('bytes') or 0)} {where})")
    return text + kept_text(fe)


def kept_text(fe):
    """What a run that keeps its features for later runs (--keep-features) took from earlier
    runs and left for later ones; "" for a run that keeps none."""
    if fe.get("reused") is None and fe.get("kept") is None:
        return ""
    n = fe.get("reused") or 0
    out = f"; the features of {plural(n, 'sample')} from an earlier run" if n else \
        "; none from an earlier run"
    if fe.get("kept"):
        return out + "; kept on the board for later runs"
    if fe.get("kept") is False:
        return out + "; NOT kept for later runs (the board's filesystem did not take them)"
    return out


def m7_estimate(session, rep, train_run):
    """The Cortex-M7 estimate of the session's latest training configuration, or
    {"error": reason} (one line) when it cannot be made."""
    from .. import bench
    from .dataset import Dataset, DatasetError

    t = rep.get("train")
    if not t or not train_run:
        return {"error": "the session has no training run to estimate"}
    model = rep.get("model") or {}
    board = train_run.get("board") or {}
    path = model.get("path")
    want = board.get("model_sha256") or model.get("sha256")
    if not path:
        return {"error": "the session does not record the model file"}
    from .._files import read_regular
    from .commands import MODEL_FILE_MAX
    try:
        data = read_regular(path, MODEL_FILE_MAX, "a model file", f"{MODEL_FILE_MAX:,} bytes")
    except OSError as e:
        return {"error": f"cannot read the model file {path}: {e.strerror or e}"}
    except ValueError as e:
        return {"error": str(e)}
    if want and hashlib.sha256(data).hexdigest() != want:
        return {"error": f"{path} is no longer the model the board trained (sha256 differs)"}
    # a run recorded before agent 6 may name a ratio its method took and ignored
    opts = drop_ignored_ratio(dict(train_run.get("options") or {}))
    try:
        # the session folder's own dataset (it may have moved since the run recorded its path)
        where = session.dataset_dir
        if not os.path.isdir(where) and train_run.get("dataset"):
            where = train_run["dataset"]
        ds = Dataset.open(where)
        # the board reports how many of its first samples its plan's selection pass read; runs
        # recorded before it did: its TinyTrain pass read up to LEGACY_SUPPORT
        support = t.get("support_samples")
        if support is None:
            support = min(len(ds), LEGACY_SUPPORT) if opts.get("method") == "tinytrain" else 0
        if support > len(ds):
            return {"error": f"the board's plan read {support} samples; the session's dataset "
                             f"holds {len(ds)}"}
        n = max(support, min(len(ds), ESTIMATE_SAMPLES))
        samples = [(ds.sample(i), int(ds.labels[i])) for i in range(n)]
    except (DatasetError, OSError, IndexError) as e:
        why = str(e).removeprefix("tinymp: ")
        return {"error": f"cannot read the session's samples: {why}"}
    if not samples:
        return {"error": "the session's dataset holds no samples"}
    budget = board.get("arena_budget")  # the board plans within its budget, as the agent does
    if budget is not None:
        opts["budget"] = min(opts.get("budget", budget), budget)
    try:
        est = bench.estimate_training(data, opts, samples, support=support)
    except bench.BenchError as e:
        return {"error": str(e)}
    except (OSError, ValueError, subprocess.SubprocessError) as e:  # cannot start, timeout, bad output
        return {"error": f"the emulator run failed: {e}"}
    plan = t.get("plan") or {}
    diff = [k for k in ("arena_bytes", "forward_macs", "backward_macs")
            if plan.get(k) is not None and plan.get(k) != est["plan"][k]]
    if diff:
        k = diff[0]
        return {"error": f"the emulated plan differs from the board's ({k} {est['plan'][k]:,} "
                         f"against {plan[k]:,}), so no estimate is shown"}
    return est


def _model_of(rec):
    """SHA-256 of the model a train or eval record was made with (its board summary; None: not
    recorded)."""
    return (rec.get("board") or {}).get("model_sha256")


def _same_data(a, b):
    """Whether two eval records saw the same samples: by their SHA-256 when both record it, else
    (records written before they did) by source and count."""
    if a.get("data_sha256") and b.get("data_sha256"):
        return a["data_sha256"] == b["data_sha256"]
    return (a.get("source"), a.get("n")) == (b.get("source"), b.get("n"))


# where a run's parameters go on each later board change of the session's log
# (commands.log_params), as the agent moves its files; pairs not listed leave them in place
_PARAMS_NEXT = {
    ("saved", "rollback"): "gone",      # the previous parameters are written over them
    ("saved", "reset"): "previous",     # set aside: a rollback brings them back
    ("previous", "rollback"): "saved",
    ("trial", "save"): "saved",
    ("trial", "rollback"): "gone",      # a trial goes with the saved parameters it started from
    ("trial", "reset"): "gone",
}


def params_timeline(run, log):
    """[(time, state, command)] of a train run's parameters from its end on: `saved` (the board's
    saved parameters), `trial` (kept as the trial run), `unsaved` (neither), `previous` (set aside
    by a reset) or `gone`; command: the log's action that moved them there (None at the end)."""
    end = run.get("end") or {}
    state = "saved" if end.get("saved") else "trial" if end.get("trial") else "unsaved"
    t0 = run.get("time") or 0
    out = [(t0, state, None)]
    sha = _model_of(run)
    for e in sorted(log, key=lambda e: e.get("time") or 0):
        if (e.get("time") or 0) <= t0:
            continue
        act = e.get("action")
        other = sha and e.get("model_sha256") and e["model_sha256"] != sha
        if act == "push" or other:  # a new model: the board removed all of the old one's
            new, act = ("gone" if state != "unsaved" else state), "push"
        else:
            new = _PARAMS_NEXT.get((state, act), state)
        if new != state:
            state = new
            out.append((e.get("time") or 0, state, act))
    return out


def params_status(run, log):
    """Where a train run's parameters are now: {state, by (the command that put them there, None:
    the run itself), saved (saved on the board, at the run's end or later), text}."""
    line = params_timeline(run, log)
    _, state, by = line[-1]
    saved = any(s == "saved" for _, s, _ in line)  # now, or before a reset, rollback or push
    cmd = f"`tinymp params {by}`" if by in ("save", "rollback", "reset") else None
    end = run.get("end") or {}
    if state == "saved":
        text = ("parameters saved" if not cmd else f"parameters saved by {cmd}" if by == "save"
                else f"parameters saved (brought back by {cmd})")
    elif state == "previous":
        text = (f"parameters saved, then set aside by {cmd} (`tinymp params rollback` brings "
                "them back)")
    elif state == "trial":
        text = "parameters not saved, kept as a trial run (`tinymp params save` keeps them)"
    elif state == "unsaved":
        text = "parameters not saved" + (
            f" (the board could not write them: {end['save_error']})" if end.get("save_error")
            else f" (not kept as a trial run: {end['trial_error']})" if end.get("trial_error")
            else "")
    elif by == "push":
        text = "parameters no longer on the board: a new model was pushed since"
    elif saved:
        text = f"parameters saved, then replaced by {cmd}: no longer on the board"
    else:
        text = f"parameters not saved; the trial run was dropped by {cmd}"
    return {"state": state, "by": by, "saved": saved, "text": text}


def _eval_fields(e):
    out = {k: e.get(k) for k in ("accuracy", "n", "params", "source", "file",
                                 "predict_us_per_sample", "data_sha256")}
    out["model_sha256"] = _model_of(e)
    return out


def pair_evals(evals, run, sha, log):
    """(before, after, missing) for the accuracy line: `after` is the latest eval of the run's
    own parameters (the saved ones while they were this run's, or its trial run) on the run's
    model, preferring one that has a pretrained eval of that model on the same samples, which is
    `before`; `missing` says why either is None. Without a train run `after` is a personalised
    eval of `sha`."""
    mine = [e for e in evals if _model_of(e) == sha]  # records without one pair only alike
    if run is not None:
        line = params_timeline(run, log)

        def of_run(e):
            when = e.get("time") or 0
            if when <= line[0][0]:
                return False  # before the run: older parameters
            state = [st for t, st, _ in line if t < when][-1]
            return (e.get("params") == "personalised" and state == "saved") or \
                (e.get("params") == "trial" and state in ("trial", "unsaved"))
        after = [e for e in mine if of_run(e)]
    else:
        after = [e for e in mine if e.get("params") == "personalised"]
    before = [e for e in mine if e.get("params") == "pretrained"]
    if after:
        # the latest after-eval with a pretrained one on the same samples, else the latest
        paired = [a for a in after if any(_same_data(b, a) for b in before)]
        after = paired or after
        before = [e for e in before if _same_data(e, after[-1])]
    missing = {"before": None, "after": None}
    if not after:
        hint = ""
        if run is not None:
            state = params_timeline(run, log)[-1][1]
            hint = {"saved": ": `tinymp eval`", "trial": ": `tinymp eval --trial`"}.get(state, "")
        missing["after"] = ("no eval of the latest training run's parameters" if run is not None
                            else "no eval with personalised parameters") + hint
    if not before:
        missing["before"] = ("no pretrained eval on the same samples" if after else
                             f"no pretrained eval of this model, sha256 {(sha or '?')[:12]}")
    return (_eval_fields(before[-1]) if before else None,
            _eval_fields(after[-1]) if after else None, missing)


def checked_runs(session, kind):
    """session.runs(kind), each holding what the report reads; SessionError (one line, status
    2, as for a record that is not JSON) names the first that does not."""
    from .commands import user_error
    runs = session.runs(kind)
    for rec in runs:
        problem = record_problem(kind, rec)
        if problem:
            path = os.path.join(session.runs_dir, rec["file"])
            raise user_error(f"tinymp: the run record {path} is damaged: {problem}; move it out "
                             "of the runs folder")
    return runs


def build(session, m7=False):
    """The report of a session folder: its latest train run, the evals that measure that run's
    model (and parameters) and, with m7, the Cortex-M7 estimate of its training configuration."""
    trains = checked_runs(session, "train")
    evals = checked_runs(session, "eval")
    st = session.state
    log = st.get("params_log") or []
    rep = {"session": session.path, "model": st.get("model"), "board": st.get("board")}
    run = trains[-1] if trains else None
    sha = (st.get("model") or {}).get("sha256")
    if run:
        rep["train"] = train_summary(run)
        rep["train"]["file"] = run.get("file")
        rep["board"] = run.get("board") or rep["board"]
        # the run's model, which a later push may have replaced
        sha = rep["train"]["model_sha256"] = _model_of(run)
        # where its parameters are now (`params save`, `rollback`, ... after the run)
        rep["train"]["params"] = params_status(run, log)
        rep["train"]["saved"] = rep["train"]["params"]["saved"]
    else:
        # what the report lacks and what to run: its text says it (with --m7 too), --png refuses
        rep["train_missing"] = no_train_text(session.path)
    if run or evals:
        (rep["accuracy_before"], rep["accuracy_after"],
         rep["accuracy_missing"]) = pair_evals(evals, run, sha, log)
    else:
        rep["accuracy_before"] = rep["accuracy_after"] = None
        rep["accuracy_missing"] = {"before": None, "after": None}
    b = rep.get("board") or {}
    rep["simulated"] = bool(b.get("simulated"))
    rep["timing_note"] = SIM_NOTE if rep["simulated"] else "measured on the board"
    if m7:
        rep["m7_estimate"] = m7_estimate(session, rep, run)
    return rep


def _pct(x):
    return "-" if x is None else f"{x * 100:.1f}%"


def _num(x):
    return "-" if x is None else f"{int(round(x)):,}"


def format_text(rep):
    lines = []
    b = rep.get("board") or {}
    m = rep.get("model") or {}
    sim = rep.get("simulated")
    lines.append(f"board      {b.get('board', '?')}" + (f"  ({SIM_NOTE})" if sim else ""))
    if m:
        src = {"romfs": ", in ROMFS (used in place)",
               "filesystem": ", on the filesystem (read into RAM)"}.get(m.get("served_from"), "")
        lines.append(f"model      {m.get('name', '?')}: {summary.kib(m.get('bytes') or 0)} of "
                     f"flash{src}, inference arena {_num(m.get('inference_arena_bytes'))} bytes, "
                     f"sha256 {(m.get('sha256') or '')[:12]}")
    t = rep.get("train")
    trained = (t or {}).get("model_sha256")
    if m and trained and m.get("sha256") and trained != m["sha256"]:
        lines.append(f"note       the training and accuracy below are of an earlier model (sha256 "
                     f"{trained[:12]}), not of the model last pushed")
        b = rep.get("board") or {}  # the run's board summary: the model it trained
        m = {"bytes": b.get("model_bytes"), "served_from": b.get("model_served_from"),
             "inference_arena_bytes": b.get("inference_arena_bytes")}
    lines += _accuracy_lines(rep)
    if t:
        o = t.get("options") or {}
        p = t.get("plan") or {}
        loss = "-" if t["final_loss"] is None else f"{t['final_loss']:.3f}"
        w = t.get("accuracy_window")
        span = ("" if t["final_running_accuracy"] is None or not w else
                f" (first and last {plural(w, 'step')})" if t["first_running_accuracy"] is not None
                else f" (last {plural(w, 'step')})")
        status = (t.get("params") or {}).get("text") or \
            ("parameters saved" if t.get("saved") else "parameters not saved")
        lr = t.get("lr")
        lr = "-" if lr is None else f"{lr:g}" + ("" if "lr" in o else " (the default)")
        lines.append(f"training   method {p.get('method', o.get('method'))}, "
                     f"{plural(t['steps'], 'step')} over {plural(t['samples'], 'sample')}, "
                     f"lr {lr}; running accuracy "
                     f"{accuracy_change(t)}{span}, final loss {loss}; {status}")
        lines.append("")
        rows = []
        rows.append(["training arena (planned)", _num(t["arena_bytes"]), budget_text(t)])
        for k, v in (t.get("breakdown") or {}).items():
            rows.append([f"  {k}", _num(v), "at the peak step"])
        hw = t.get("high_water")
        share = f"{hw / t['arena_bytes'] * 100:.0f}% of the plan" if hw and t["arena_bytes"] else ""
        rows.append(["arena high water (touched)", _num(hw), share])
        if t.get("table_bytes") is not None:
            rows.append(["plan tables", _num(t["table_bytes"]), "kept beside the arena"])
        fe = t.get("features")
        if fe:
            rows.append(["feature cache", _num(fe.get("bytes")),
                         f"{'in RAM' if fe.get('where') == 'ram' else 'in a file'}: "
                         f"{fe.get('cached_steps')} of {plural(t['steps'], 'step')} skipped "
                         "the prefix" + kept_text(fe)])
        if m:
            rows.append(["inference arena", _num(m.get("inference_arena_bytes")), ""])
            if m.get("served_from") == "filesystem":
                rows.append(["model (in RAM)", _num(m.get("bytes")),
                             "read from the filesystem: no ROMFS copy"])
            else:
                rows.append(["model flash", _num(m.get("bytes")), "weights read in place"])
        if t.get("heap_before") is not None:
            note = "simulated: the profile's heap" if sim else "gc.mem_free()"
            rows.append(["heap free before / after Trainer",
                         f"{_num(t['heap_before'])} / {_num(t['heap_after'])}", note])
        lines.append(summary.format_table(["memory", "bytes", ""], rows, "lrl"))
        lines.append("")
        head = "latency per step, us" + (" (host CPU, simulated board)" if sim else " (board)")
        by = t.get("latency_by_start") or {}
        if len(by) == 2:
            # a step from kept features skips the prefix layers: the two kinds apart, as their
            # times differ by that much and the first epoch's steps would be the max of every phase
            rows = []
            for kind, name in (("input", "from the input"), ("features", "from kept features")):
                rows += _latency_rows(by[kind], f", {name}", by[kind]["steps"])
            lines.append(summary.format_table([head, "steps", "mean", "median", "max"], rows,
                                              "lrrrr"))
        else:
            rows = _latency_rows(t, "", None)
            lines.append(summary.format_table([head, "mean", "median", "max"], rows, "lrrr"))
        if sim:
            lines.append(f"times: {SIM_NOTE}")
    elif rep.get("train_missing"):
        lines.append(f"training   {rep['train_missing']}")
    lines += _m7_lines(rep)
    return "\n".join(lines)


def budget_text(t):
    """The budget column of the training arena: the run's budget, or the board's, and which."""
    budget, whose = t.get("budget"), t.get("budget_from")
    if budget is None:
        return ""
    if whose == "run":
        return f"run's budget {_num(budget)}"
    asked = (t.get("options") or {}).get("budget")
    return f"board's budget {_num(budget)}" + (f" (the run asked {_num(asked)})" if asked else "")


def _latency_rows(lat, suffix, steps):
    """Rows of the latency table for one set of steps (`steps`: a column of its count)."""
    rows = []
    sets = [((ph if ph != "step" else "whole step") + suffix, lat["latency_us"].get(ph))
            for ph in PHASES]
    sets.append(("step (CPU cycles)" + suffix, lat.get("step_cycles")))
    for name, s in sets:
        if s:
            rows.append([name] + ([_num(steps)] if steps is not None else [])
                        + [_num(s["mean"]), _num(s["median"]), _num(s["max"])])
    return rows


def _accuracy_lines(rep):
    """The accuracy line: before -> after on the same samples, "-" and why for a missing side."""
    ab, aa = rep.get("accuracy_before"), rep.get("accuracy_after")
    why = rep.get("accuracy_missing") or {}
    if not (ab or aa):
        if not (why.get("before") or why.get("after")):
            return []  # nothing trained or evaluated yet
        return [f"accuracy   before -  ->  after -: {why['after']}; {why['before']}"]
    before = f"{_pct(ab['accuracy'])} (pretrained)" if ab else f"- ({why.get('before')})"
    after = f"- ({why.get('after')})"
    if aa:
        used = "trial run" if aa["params"] == "trial" else aa["params"]
        after = f"{_pct(aa['accuracy'])} ({used})"
    src = (aa or ab).get("source")
    return [f"accuracy   before {before}  ->  after {after}, on {plural((aa or ab)['n'], 'sample')}"
            + (f" of {src}" if src else "")]


def m7_hint(session_path=None):
    """The line that says how to get the Cortex-M7 estimate of this session: the command names
    the session folder unless it is the default one in the current folder."""
    cmd = command("tinymp report --m7", session_path)
    return (f"Cortex-M7 estimate: run `{cmd}` (emulated; needs qemu-system-arm, "
            "`make bench-train-elf`)")


def _m7_lines(rep):
    est = rep.get("m7_estimate")
    if not rep.get("train"):
        return []  # the training line says what to run first
    if est is None:
        return [m7_hint(rep.get("session"))]
    if "error" in est:
        return ["", f"Cortex-M7 estimate: not available: {est['error']}"]
    ins, ms = est["instructions"], est["estimate"]
    period = ((rep["train"].get("options") or {}).get("period") or 0)
    rows = []
    for k, name in (("plan", "plan() (and the selection pass, if any)"), ("inference", "inference"),
                    ("forward", "forward"), ("backward", "backward"),
                    ("update", "update"), ("step", "whole step"),
                    ("cached_step", "step from the feature cache"),
                    ("end_period", f"APU period end (every {plural(period, 'step')})" if period else
                     "APU period end (once per epoch)")):
        if k in ins:
            lo, hi = ms[k]["ms_range"]
            rows.append([name, _num(ins[k]), f"{ms[k]['ms']:.2f}", f"{lo:.2f}-{hi:.2f}"])
    cm = est["cost_model"]
    head = "Cortex-M7 estimate (emulated)"
    lines = ["", summary.format_table(
        [head, "instructions", "ms", f"ms at CPI {cm['cpi_range'][0]}-{cm['cpi_range'][1]}"],
        rows, "lrrr")]
    note = (f"estimate: the board's model and plan on an emulated Cortex-M7 (QEMU "
            f"{est['emulator']}, mean of {plural(est['steps'], 'step')}), time = instructions x "
            f"CPI {cm['cpi']} / {cm['clock_hz'] / 1e6:.0f} MHz (cost model {cm['name']}); not "
            f"measured on a board. Emulated arena high water {_num(est['high_water'])} B + "
            f"stack {_num(est['stack_bytes'])} B.")
    lines += textwrap.wrap(note, 100, subsequent_indent="  ")
    return lines


def plots(rep, train_run, outdir):
    """loss/accuracy curves and a memory breakdown as PNGs in outdir; returns their paths.
    Needs matplotlib (pip install 'tinymp[plot]'). A report with no training run has nothing to
    plot: a user error (one line, status 2) before the folder is made."""
    if not (train_run and rep.get("train")):
        from .commands import user_error
        why = rep.get("train_missing") or no_train_text(rep.get("session"))
        raise user_error(f"tinymp: no plots to write: {why}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(outdir, exist_ok=True)
    paths = []
    t = rep.get("train")
    if train_run and t:
        f = {name: i for i, name in enumerate(train_run["fields"])}
        ev = train_run["events"]
        steps = [e[f["step"]] for e in ev]
        loss = [e[f["loss"]] for e in ev]
        w = max(1, accuracy_window(train_run))  # the summary's windows, labelled below
        smooth, acc = [], []
        for i in range(len(ev)):
            part = ev[max(0, i - w + 1):i + 1]
            smooth.append(sum(e[f["loss"]] for e in part) / len(part))
            acc.append(sum(1 for e in part if e[f["pred"]] == e[f["label"]]) / len(part) * 100)
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, loss, color="0.8", lw=0.8, label="loss per step")
        ax.plot(steps, smooth, color="C0", label=f"loss (mean of {w})")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy loss")
        ax2 = ax.twinx()
        ax2.plot(steps, acc, color="C1", label=f"running accuracy (last {w})")
        ax2.set_ylabel("running accuracy, %")
        ax2.set_ylim(0, 100)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="center right", fontsize=8)
        ab, aa = rep.get("accuracy_before"), rep.get("accuracy_after")
        title = f"on-board training ({(t.get('plan') or {}).get('method', '')})"
        if ab and aa:
            title += f": held-out accuracy {_pct(ab['accuracy'])} -> {_pct(aa['accuracy'])}"
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        p = os.path.join(outdir, "training.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    if t and t.get("breakdown"):
        bd = {k: v for k, v in t["breakdown"].items() if v}
        fig, ax = plt.subplots(figsize=(8, 2.6))
        left = 0
        for i, (k, v) in enumerate(bd.items()):
            ax.barh([0], [v / 1024], left=left / 1024, color=f"C{i}", label=f"{k}: {v:,} B")
            left += v
        if t.get("high_water"):
            ax.axvline(t["high_water"] / 1024, color="k", ls="--", lw=1,
                       label=f"high water: {t['high_water']:,} B")
        budget = t.get("budget")
        if budget:
            whose = "run's" if t.get("budget_from") == "run" else "board's"
            ax.axvline(budget / 1024, color="r", lw=1.5, label=f"{whose} budget: {budget:,} B")
        ax.set_yticks([])
        ax.set_xlabel("KB of the training arena (live bytes at the peak step)")
        ax.set_xlim(0, max(left, budget or 0) / 1024 * 1.05)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.set_title(f"training memory: planned arena {_num(t['arena_bytes'])} B "
                     f"({(t.get('plan') or {}).get('method', '')})", fontsize=10)
        fig.tight_layout()
        p = os.path.join(outdir, "memory.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
