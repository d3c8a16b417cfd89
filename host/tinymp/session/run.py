"""The session sub-commands of `tinymp` (argument parsing and printing; the work is in
commands.py): devices, push, collect, train, eval, params, status, report, session,
demo."""
import contextlib
import json
import os
import shutil
import sys
import time

from .. import boards, summary
from .._files import missing_dirs, remove_empty_dirs
from . import commands as C
from . import protocol as P
from .dataset import Dataset, DatasetError, check_samples
from .link import BoardError, LinkError


def _say(args, *lines):
    """A command's result line(s): printed unless --json (-q drops only the progress bars, as
    in push, train and eval)."""
    if not getattr(args, "json", False):
        for line in lines:
            print(line)


def _show(args):
    return not getattr(args, "json", False) and not getattr(args, "quiet", False)


def _session(args):
    return C.Session(args.session)


def _sim_profile(args, session):
    """The simulated board's profile: --board, else the one this session's model was pushed to
    (its flash is in SESSION/sim/PROFILE), else the default."""
    from .simboard import SIM_SUFFIX
    if getattr(args, "board", None):
        return args.board
    b = session.state.get("board") or {}
    name = b.get("board") or ""
    if b.get("simulated") and isinstance(name, str) and name.endswith(SIM_SUFFIX):
        prof = name[:-len(SIM_SUFFIX)]
        if os.path.isdir(session.sim_dir(prof)):
            return prof
    return boards.DEFAULT_SIM


@contextlib.contextmanager
def _open(args, session, scene=None, note_new_sim=True):
    """Connect to the board --port names (sim: the --board profile, its flash in the session),
    holding the session folder (Session.lock) until the command is done with it."""
    from . import link
    from .simboard import check_scene
    port = link.resolve_port(args.port)
    kw = {"timeout": args.timeout}
    new_sim = None  # the simulated board's (profile, how to choose another) for _note_new_sim
    if port == "sim" or port.startswith("sim:"):
        prof = port[4:] if port.startswith("sim:") else _sim_profile(args, session)
        asked = getattr(args, "board", None)
        if port.startswith("sim:") and asked and asked != prof:
            raise C.user_error(f"tinymp: --port {port} and --board {asked} name two boards: give "
                               "one of them")
        try:
            boards.load(prof)
        except boards.ProfileError as e:
            raise C.user_error(str(e)) from None
        if scene is None:
            scene = getattr(args, "scene", None) or default_scene()
        if scene:
            try:
                check_scene(scene)
            except ValueError as e:
                raise C.user_error(f"tinymp: bad scene file {scene}: {e}") from None
        # the note on a new simulated board says to choose another as this command chose it
        new_sim = (prof, "--port sim:" if port.startswith("sim:") else "--board ")
        port = "sim:" + prof
        kw.update(sim_dir=session.sim_dir(prof), scene=scene)
    elif port == "qemu":
        from .qemu import missing
        lacking = missing()
        if lacking:
            raise C.user_error(lacking)
    elif not os.path.exists(port):
        raise C.user_error(f"tinymp: no such port {port!r}: give a serial device (see "
                           "`tinymp devices`), 'sim' or 'qemu'")
    # the first folder of the session's path that is not there yet (None: the folder is)
    made = missing_dirs(session.path)
    fresh = made[-1] if made else None
    dropped = False
    try:
        with session.lock():
            try:
                if new_sim and note_new_sim:  # not for push and a session config: they fill it
                    _note_new_sim(session, *new_sim)
                with link.open_board(port, **kw) as board:
                    yield board
            except C.SessionError as e:
                # refused (status 2) in a folder this command made, the board closed: its empty
                # simulated board goes while the folder is held, the lock and folder after
                if fresh is not None and e.code == 2:
                    dropped = _clear_if_untouched(session.path)
                raise
    finally:
        if dropped:
            _drop_made(session.path, fresh)


def _erased(path):
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            if chunk.strip(b"\xff"):
                return False
    return True


def _clear_if_untouched(path):
    """In the session folder a refused command made (a mistyped --session must not leave a
    folder behind), held by it: remove the simulated boards started there and return True when
    the folder holds nothing but its lock and those boards, empty (no model, samples or run
    record, no flash file, a ROMFS never written: erased); else change nothing."""
    try:
        for root, dirs, files in os.walk(path):
            rel = os.path.relpath(root, path).split(os.sep)
            for f in files:
                p = os.path.join(root, f)
                if rel == ["."] and f == ".lock" or \
                        len(rel) == 2 and rel[0] == "sim" and f == "board.log":
                    continue
                if len(rel) == 2 and rel[0] == "sim" and f == "romfs0.bin" and _erased(p):
                    continue
                return False
            if not (rel == ["."] and set(dirs) <= {"sim"} or rel == ["sim"] or
                    len(rel) == 2 and rel[0] == "sim" and set(dirs) <= {"flash"} or
                    len(rel) == 3 and rel[0] == "sim" and rel[2] == "flash" and not dirs):
                return False
        if os.path.isdir(os.path.join(path, "sim")):
            shutil.rmtree(os.path.join(path, "sim"))
        return True
    except OSError:
        return False  # what is left stays: nothing is lost


def _drop_made(path, made):
    """After _clear_if_untouched, the lock released: the folder's empty lock file, the folder and
    the folders above it this command made, up to `made`. Each goes only while empty: a command
    that took the folder meanwhile wrote its pid into the lock and keeps it all."""
    try:
        lock = os.path.join(path, ".lock")
        if os.path.exists(lock) and os.path.getsize(lock) == 0:
            os.remove(lock)
    except OSError:
        return
    dirs = [os.path.abspath(path)]
    while dirs[-1] != made and os.path.dirname(dirs[-1]) != dirs[-1]:
        dirs.append(os.path.dirname(dirs[-1]))
    remove_empty_dirs(dirs)


def _note_new_sim(session, prof, choose):
    """One `note:` line on stderr when the simulated board `prof` is about to be made in a session
    that has the folders of other simulated boards: a mistyped --board (a profile that exists,
    not the one the user worked with) would otherwise start an empty board without a word, and
    the next command fail with no model on it."""
    if os.path.isdir(session.sim_dir(prof)):
        return
    root = os.path.dirname(session.sim_dir(prof))
    try:
        others = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
    except OSError:  # no sim/ folder yet: this is the session's first simulated board
        return
    if not others:
        return
    which = f"board is {others[0]}" if len(others) == 1 else f"boards are {', '.join(others)}"
    print(f"note: starting a new simulated {prof} in {session.sim_dir(prof)}, empty (no model, "
          f"no samples); this session's other simulated {which}: choose with "
          f"{choose}{others[0] if len(others) == 1 else 'NAME'}", file=sys.stderr)


def _early_samples(path):
    """check_samples of a samples file or folder the user gave, before the board is opened: a
    file that load_samples would refuse whatever the board's model is stops the command there
    (status 2), not after the board was started or reset. Returns what load_samples takes as
    `dataset`."""
    try:
        return check_samples(path)
    except DatasetError as e:
        raise C.user_error(str(e)) from None


def default_scene():
    p = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models",
                     "digits_shifted.npz")
    return p if os.path.isfile(p) else None


def _board_name(board):
    return board.info.get("board")


def _emit(args, obj):
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=2, default=str))


# --- devices --------------------------------------------------------------------------------

def cmd_devices(args):
    from . import link
    rows = []
    for dev, desc, kind in link.serial_devices():
        rows.append({"port": dev, "description": desc, "board": kind})
    rows.append({"port": "sim", "description": "simulated board (CPython process on a pty), "
                 f"profiles: {', '.join(boards.names())}", "board": "simulated"})
    from .qemu import lacks
    lack = lacks()
    rows.append({"port": "qemu", "description": "QEMU Cortex-M7: needs " + lack if lack else
                 "QEMU MPS2-AN500 Cortex-M7: " + link.qemu_firmware(),
                 "board": None if lack else "emulated"})
    default = link.resolve_port("auto")
    for r in rows:
        r["default"] = r["port"] == default
    if args.json:
        _emit(args, rows)
        return 0
    print(summary.format_table(["port", "board", "description", "default"],
                               [[r["port"], r["board"] or "-", r["description"],
                                 "yes" if r["default"] else ""] for r in rows], "llll"))
    return 0


# --- push -----------------------------------------------------------------------------------

def cmd_push(args):
    data, m = C.read_model(args.model)
    session = _session(args)
    with _open(args, session, note_new_sim=False) as board:
        C.check_fits(board, data, m)
        try:
            res = C.push(board, data, show=_show(args))
        except LinkError as e:
            raise C.push_link_error(e, _board_name(board)) from None
        info = board.info  # push() read it again after a commit or a ROMFS write
    meta = dict(info.get("model") or {})  # {bytes, error} on a board whose engine cannot load it
    meta["name"] = os.path.basename(args.model)
    meta["path"] = os.path.abspath(args.model)
    missed = C.push_not_logged(session, res)
    session.state["model"] = meta
    session.state["board"] = C._board_summary(board)
    if not res["skipped"] or missed:  # the board dropped the previous model's parameters
        C.log_params(session, "push", board)
    session.save()
    res["board"] = _board_name(board)
    if args.json:
        _emit(args, res)
    elif res["skipped"]:
        print(f"{args.model} is already the model on {res['board']} (sha256 "
              f"{res['sha256'][:12]}), {C.romfs_text(res['romfs'])}")
    else:
        rate = res["bytes"] / res["seconds"] / 1024 if res["seconds"] > 0 else float("inf")
        resumed = f", resumed at byte {res['resumed_from']:,}" if res["resumed_from"] else ""
        print(f"pushed {args.model} ({summary.kib(res['bytes'])}) to {res['board']} in "
              f"{res['seconds']:.2f} s ({rate:.0f} KB/s{resumed}); sha256 {res['sha256'][:12]}, "
              f"{C.romfs_text(res['romfs'])}")
    return 0


# --- collect --------------------------------------------------------------------------------

def _send_samples(board, ds, show, sync=None):
    """C.sync_samples (or `sync()`, which calls it); when it fails, one line that says why and
    that the dataset keeps every sample (a board with no room for them all keeps those it
    stored: the rest go later)."""
    try:
        return sync() if sync else C.sync_samples(board, ds, show=show)
    except KeyboardInterrupt:
        raise C.interrupted(f"tinymp: sending samples interrupted (Ctrl-C): all {len(ds)} samples "
                            f"are saved in {ds.path}; run collect again to resume") from None
    except (LinkError, BoardError) as e:
        msg = C.embedded(e.msg if isinstance(e, BoardError) else e)
        if C.board_full(e):
            raise C.SessionError(f"tinymp: sending samples stopped: {msg}; all {len(ds)} samples "
                                 f"are saved in {ds.path}; {C.MAKE_ROOM} and run collect again "
                                 "to send the rest") from None
        raise C.SessionError(f"tinymp: sending samples interrupted: {msg}; all {len(ds)} samples "
                             f"are saved in {ds.path}; run collect again to resume") from None


def cmd_collect(args):
    session = _session(args)
    if args.source is None and (args.label is None or args.count is None):
        raise C.user_error("tinymp: collect needs --from FILE|DIR, or --label L and --count N "
                           "(capture with the board's camera)")
    if args.count is not None and args.count < 0:
        raise C.user_error("tinymp: --count must be >= 0")
    if args.source is not None and (args.label is not None or args.count is not None):
        raise C.user_error("tinymp: collect takes samples from a file (--from) or from the "
                           "camera (--label and --count), not both: run collect once for each")
    if args.eval and args.source is None:
        # the camera's samples go to the board as they are taken: training samples only
        raise C.user_error("tinymp: --eval holds out samples from a file (--from); the camera's "
                           "captures are training samples. To hold out photos, capture them in "
                           "another session folder (--session OTHER) and import them with "
                           "`tinymp collect --from OTHER/dataset --eval`")
    source = _early_samples(args.source) if args.source is not None else None
    with _open(args, session) as board:
        meta = C.model_meta(board.info)
        name = _board_name(board)
        if args.source is not None:
            try:
                x, y, src = C.load_samples(args.source, meta["input_shape"], meta["input_scale"],
                                           meta["input_zero_point"], meta["num_classes"],
                                           dataset=source)
            except DatasetError as e:
                raise C.user_error(str(e)) from None
            ds = C.open_dataset(session, meta, name, session.eval_dir if args.eval else None)
            added = C.import_samples(ds, x, y, src, board_name=name, show=_show(args))
            both = _in_the_other_set(session, ds, src)
            if both:
                print(f"warning: {both} of these samples are also in the session's "
                      f"{'training' if args.eval else 'held-out'} set (imported from the same "
                      "file): the held-out accuracy of those is not held out", file=sys.stderr)
            sent = 0 if args.eval else _send_samples(board, ds, _show(args))
            res = {"added": added, "total": len(ds), "sent_to_board": sent, "dataset": ds.path,
                   "per_class": [int(c) for c in ds.counts()]}
            _say(args, f"{added} new samples from {args.source} ({len(y) - added} already there); "
                       f"{ds.path} holds {len(ds)}" +
                       ("" if args.eval else f"; {sent} sent to the board"))
        else:
            if not 0 <= args.label < meta["num_classes"]:
                raise C.user_error(f"tinymp: label {args.label} is out of range "
                                   f"0..{meta['num_classes'] - 1}")
            if not board.info.get("camera"):
                raise C.user_error(f"tinymp: {name} has no camera; collect with --from FILE")
            ds = C.open_dataset(session, meta, name)
            res = C.collect_capture(board, ds, args.label, args.count, show=_show(args),
                                    board_name=name)
            res["dataset"] = ds.path
            _say(args, f"captured {res['added']} samples of label {args.label} on {name}; "
                       f"{ds.path} holds {res['label_total']} of that label, {res['total']} in all")
    _emit(args, res)
    return 0


def _in_the_other_set(session, ds, sources):
    """How many of `sources` (the ids of samples just imported into `ds`, the session's training
    or held-out set) the other of the two sets holds too."""
    other = session.eval_dir if ds.path == session.dataset_dir else session.dataset_dir
    if not os.path.exists(os.path.join(other, "manifest.json")):
        return 0
    try:
        o = Dataset.open(other)
    except DatasetError:
        return 0  # the command that reads it says what is wrong with it
    theirs = o.sources() | {f"{o.uid}:{i}" for i in range(len(o))}
    return len(set(sources) & theirs)


# --- train ----------------------------------------------------------------------------------

def _train_options(args):
    o = {"method": args.method, "lr": args.lr, "seed": args.seed, "r": args.r,
         "ratio": args.ratio, "storage": args.storage, "momentum": args.momentum,
         "period": args.period, "fresh": args.fresh or None,
         "keep_features": args.keep_features or None}
    if args.budget is not None:
        o["budget"] = summary.budget_bytes(args.budget)
        if o["budget"] is None:
            raise C.user_error("tinymp: --budget must be " + summary.BUDGET_KB_RULE)
    C.check_train_options(dict(o, steps=args.steps, epochs=args.epochs))
    return o


def cmd_train(args):
    session = _session(args)
    opts = _train_options(args)
    with _open(args, session) as board:
        meta = C.model_meta(board.info)
        ds = C.open_dataset(session, meta, _board_name(board))
        try:
            run = C.train(board, ds, opts, steps=args.steps, epochs=args.epochs,
                          save=not args.no_save, show=_show(args), session=session)
        except C.WordedLinkError:
            raise  # the link went at TRAIN_END: it says what is not known
        except (LinkError, BoardError) as e:
            msg = C.embedded(e.msg if isinstance(e, BoardError) else e)
            if C.board_full(e):  # the dataset's samples go to the board before training
                raise C.SessionError(f"tinymp: cannot train: {msg}; the dataset's {len(ds)} "
                                     f"samples are all kept in {ds.path}; {C.MAKE_ROOM} and "
                                     "train again; the board keeps its last saved "
                                     "parameters") from None
            raise C.SessionError(f"tinymp: training interrupted: {msg}; the board keeps its last "
                                 "saved parameters") from None
    from . import report
    t = report.train_summary(run)
    if t.get("resume_error"):  # on stderr, in text and JSON mode alike
        print(f"warning: started from the pretrained model, not from the saved run: "
              f"{t['resume_error']}. Train with the saved run's options to go on from it; "
              + ("this trial run leaves the saved run as it is" if args.no_save else
                 "once this run has saved, `tinymp params rollback` brings the saved run back"),
              file=sys.stderr)
    elif t.get("resumed") and t.get("resumed_state") is False:
        print("note: went on from the saved run's parameters; its training state (momentum, "
              "channel selection) does not fit this run's options (another --ratio, --momentum "
              "switched on or off) or was not saved (older firmware), so that starts afresh",
              file=sys.stderr)
    fe = t.get("features") or {}
    if opts.get("keep_features") and fe.get("kept") is None:
        print("note: no features were kept for later runs: the plan trains from the model's "
              "first layer (no frozen prefix), or the board had no room for even one sample's "
              "features, or cannot tell its model apart (no hashlib)", file=sys.stderr)
    lr0 = t.get("lr") if t.get("lr") is not None else opts.get("lr")
    if lr0 == 0:  # allowed (a run that only measures), but rarely what was meant
        print("warning: the learning rate was 0: the run changed no parameter" +
              (", so the board's saved parameters are the ones it started from" if t["saved"]
               else ""), file=sys.stderr)
    stalled = t.get("stalled_steps")
    if stalled:  # on stderr, in text and JSON mode alike
        lr = t.get("lr")
        print(f"warning: {stalled} of {t['steps']} steps trained nothing: the model's outputs sat "
              "at their int8 limits, where no gradient passes; a high learning rate drives them "
              "there. Try a smaller --lr" + (f" (this run: {lr:g})" if lr else "") +
              " with --fresh.", file=sys.stderr)
    # asked to save, or (--no-save) to keep a trial run, the board could not: the run is
    # recorded, the command fails (status 1)
    status = 1 if t.get("save_error") or t.get("trial_error") else 0
    if t.get("save_error"):  # on stderr, in text and JSON mode alike
        print(f"error: the board could not save this run's parameters: {t['save_error']}; it "
              "keeps its last saved parameters. The run is recorded; make room on the board's "
              "filesystem and train again", file=sys.stderr)
    elif status:
        print(f"error: the board could not keep this run as a trial run: {t['trial_error']}; "
              "it keeps its last saved parameters. The run is recorded; make room on the "
              "board's filesystem and train again", file=sys.stderr)
    if args.json:
        _emit(args, t)
        return status
    print(f"trained {report.plural(t['steps'], 'step')} on {_board_name(board)}: running accuracy "
          f"{report.accuracy_change(t)}, loss {t['final_loss']:.3f}; arena "
          f"{report._num(t['arena_bytes'])} bytes planned, "
          f"{report._num(t['high_water'])} touched; "
          + ("parameters saved on the board" if t["saved"] else _unsaved_text(t)))
    if report.features_text(t):
        print(f"feature cache: {report.features_text(t)}")
    print(f"log: {run.get('file')}")
    if t["clock"] == "host":
        print(f"times: {report.SIM_NOTE}")
    return status


def _unsaved_text(t):
    if t.get("save_error"):
        return (f"parameters NOT saved: the board could not write them ({t['save_error']}); "
                "it keeps its last saved parameters")
    if t.get("trial"):
        return ("parameters NOT saved, kept as a trial run: `tinymp eval --trial` measures them, "
                "`tinymp params save` keeps them")
    if t.get("trial_error"):
        return (f"parameters NOT saved, and not kept as a trial run ({t['trial_error']}); the "
                "board keeps its last saved parameters")
    return "parameters NOT saved"


# --- eval -----------------------------------------------------------------------------------

def cmd_eval(args):
    session = _session(args)
    data = _early_samples(args.data) if args.data else None
    with _open(args, session) as board:
        meta = C.model_meta(board.info)
        x, y, what = C.eval_data(session, meta, args.data, dataset=data)
        if args.trial:
            C.need_agent(board, 2, "trial runs (`train --no-save` then `eval --trial`)")
        kinds = ["pretrained", "personalised"] if args.both else \
            ["pretrained" if args.pretrained else "trial" if args.trial else "personalised"]
        out = []
        for k in kinds:
            try:
                rec = C.evaluate(board, x, y, params=k, show=_show(args),
                                 num_classes=meta["num_classes"], session=session, source=what)
            except BoardError as e:
                if e.code == "nothing":
                    raise C.user_error("tinymp: eval --trial: the board holds no trial run: "
                                       "`tinymp train --no-save` makes one (a saved run, "
                                       "`params save`, `rollback`, `reset` or a new model "
                                       "drops it)") from None
                raise
            out.append(rec)
    if args.json:
        _emit(args, [{k: r[k] for k in ("accuracy", "n", "params", "confusion", "source", "file")}
                     for r in out])
        return 0
    for r in out:
        note = ": the board holds no personalised ones" \
            if r["asked"] == "personalised" and r["params"] == "pretrained" else ""
        print(f"accuracy {r['accuracy'] * 100:.1f}% ({r['params']} parameters{note}) on {r['n']} "
              f"samples of {what}")
        if args.confusion:
            nc = len(r["confusion"])
            print(summary.format_table(["true\\pred"] + [str(i) for i in range(nc)],
                                       [[str(i)] + [str(v) for v in row]
                                        for i, row in enumerate(r["confusion"])], "r" * (nc + 1)))
    return 0


# --- params ---------------------------------------------------------------------------------

def cmd_params(args):
    session = _session(args)
    req = {"save": P.PARAMS_SAVE, "rollback": P.PARAMS_ROLLBACK, "reset": P.PARAMS_RESET}[args.action]
    with _open(args, session) as board:
        C.model_meta(board.info)  # a board without a model has no parameters of it either
        if args.action == "save":
            C.need_agent(board, 2, "`params save` of a trial run")
        try:
            rep = board.request(req)
        except BoardError as e:
            if args.action == "save" and e.code == "state":
                raise C.user_error("tinymp: save: nothing unsaved to save: `tinymp train` saves "
                                   "its result itself; `tinymp train --no-save` keeps a trial "
                                   "run that `params save` can save later") from None
            # nothing to roll back to: the request does not fit the board's state (status 2,
            # as `save` with nothing unsaved)
            code = 2 if e.code in ("nothing", "state") else 1
            raise C.SessionError(f"tinymp: {args.action}: {C.embedded(e.msg)}", code) from None
        C.log_params(session, args.action, board, rep)
    if args.json:
        _emit(args, rep)
    else:
        print({"save": "the trial run is now the board's saved parameters (rollback brings the "
                       "earlier ones back)" if rep.get("from") == "trial" else
                       "personalised parameters saved on the board",
               "rollback": "the board's personalised parameters are back to their previous "
                           "saved version",
               "reset": "the board is back to the pretrained weights " + (
                   "(`params rollback` undoes this)" if rep.get("can_roll_back") else
                   "(it kept no earlier parameters: there is nothing to roll back to)")}
              [args.action])
    return 0


# --- status ---------------------------------------------------------------------------------

def cmd_status(args):
    """What the board holds now: its INFO (asked at the hello, nothing more), set against the
    session folder; changes nothing on the board or in the folder."""
    session = _session(args)
    with _open(args, session) as board:
        st = C.board_status(board, session)
    if args.json:
        _emit(args, st)
        return 0
    for line in status_lines(st):
        print(line)
    return 0


def _b(n):
    return "-" if n is None else f"{n:,} B"


def status_lines(st):
    """`tinymp status` in text: one line each for the board, its model, its saved parameters,
    its trial run, its samples and the features kept for later runs."""
    from .simboard import SIM_SUFFIX
    b, m, pushed = st["board"], st["model"], st["session_model"]
    name = b["name"] or "the board"
    sim = b["simulated"] and not str(name).endswith(SIM_SUFFIX)
    out = [f"board       {name}{' (simulated)' if sim else ''}: {b['implementation'] or '?'} "
           f"{b['firmware'] or '?'}, tinymp {b['tinymp'] or '-'}, agent {b['agent'] or '?'}; "
           f"memory free {_b(b['mem_free'])}"
           + (" (the profile's)" if b["simulated"] else "")
           + f", arena budget {_b(b['arena_budget'])}"]
    if pushed is None:
        mine = "this session folder records no pushed model"
    else:
        mine = f"{pushed['name'] or 'a model'}, sha256 {pushed['sha256'][:12]}"
    if m is None:
        out.append("model       none: `tinymp push MODEL` sends one"
                   + (f" (this session last pushed {mine})" if pushed else ""))
    elif m.get("error") is not None:
        size = "a model" if m["bytes"] is None else f"a model of {m['bytes']:,} bytes"
        out.append(f"model       {size} the board cannot use: {m['error']}")
    else:
        out.append(f"model       {m['name'] + ', ' if m['name'] else ''}sha256 {m['sha256'][:12]}, "
                   f"{m['bytes']:,} bytes, {_served(m, b)}; "
                   + ("the model this session last pushed" if m["session_model"] else
                      f"not the model this session last pushed ({mine})" if pushed else mine))
    p = st["params"]
    back = {True: "earlier ones kept: `tinymp params rollback` brings them back",
            False: "no earlier ones kept for `tinymp params rollback`",
            None: f"whether earlier ones are kept for `tinymp params rollback` this board's "
                  f"agent (version {b['agent']}) does not say"}[p["previous"]]
    if p["saved"]:
        # without the options that rebuild their plan, eval and train do not load them
        what = "saved without their options record: eval and train use the pretrained " \
            "weights" if p["options"] is None else \
            f"saved: {C.options_text(p['options'])}, run ended {p['ended']}{_run_name(p)}"
        if p["for_model"] is False:
            what += " (trained on another model: eval uses the pretrained weights)"
        out.append(f"parameters  {what}; {back}")
    elif m is None:
        out.append("parameters  none" + ("" if p["previous"] is False else f"; {back}"))
    else:
        out.append(f"parameters  none: the pretrained weights; {back}")
    t = st["trial"]
    if t is None:
        out.append("trial run   none")
    else:
        what = "options not recorded" if t["options"] is None else \
            f"{C.options_text(t['options'])}, run ended {t['ended']}{_run_name(t)}"
        out.append(f"trial run   {what}: " +
                   ("trained on another model, not usable" if t["for_model"] is False else
                    "`tinymp eval --trial` measures it, `tinymp params save` keeps it"))
    s = st["samples"]
    if s is None:
        out.append("samples     not reported by this board's agent")
    else:
        n = s["session_samples"]
        held = f"this session's dataset holds {n:,}" if n is not None else \
            f"this session's dataset cannot be used: {s['dataset_problem']}" \
            if s.get("dataset_problem") else "this session folder holds no dataset"
        # the board's free room in samples of the model (agent 9): a simulated board's
        # filesystem is this PC's disk
        fits, send = s.get("room"), s.get("to_send") or 0
        room = "" if fits is None else \
            f"; the board's filesystem has room for about {fits:,} samples" + \
            (" (this PC's disk)" if b["simulated"] else "") + \
            ("" if not send else f", {send:,} of them for the dataset's samples the next "
             "collect or train sends first" if send <= fits else f": too few for the {send:,} "
             "dataset samples the next collect or train sends first (make room on the board's "
             "filesystem)")
        if not s["count"]:
            out.append(f"samples     none on the board; {held}{room}")
        elif s["session_dataset"]:
            out.append(f"samples     {s['count']:,} on the board ({_b(s['bytes'])} each), of this "
                       f"session's dataset, which holds {n:,}"
                       + ("; train sends the rest" if n > s["count"] else "") + room)
        else:
            out.append(f"samples     {s['count']:,} on the board ({_b(s['bytes'])} each); {held}"
                       + ("; they are another dataset's: collect or train replaces them"
                          if n is not None else "") + room)
    out.append("features    " + _kept_text(st["features"], b["agent"]))
    return out


def _kept_text(f, agent):
    """The features a `train --keep-features` run kept on the board, for status."""
    try:
        says = int(agent) >= 8
    except (TypeError, ValueError):
        says = False
    if f is None:
        return "none kept: `tinymp train --keep-features` keeps the samples' features for " \
            "later runs" if says else f"whether any are kept this board's agent (version " \
            f"{agent}) does not say"
    if not f["current"]:
        return f"a file of {f['bytes']:,} B of another model, samples or engine: not used; " \
            "the next `train --keep-features` replaces it, a run without the option removes it"
    n = f["samples"]
    return f"of {n:,} sample{'s' if n != 1 else ''} ({f['bytes']:,} B on the board), kept " \
        f"by a run with --keep-features that trained from layer {f['first']}: a later one " \
        "with the same plan starts them from these"


def _run_name(r):
    """Which run a saved or trial run is: its record in this session, or its name."""
    if r["run_file"] is not None:
        return f", recorded in runs/{r['run_file']}"
    if r["run"] is not None:
        return f", run {r['run']}, which this session folder does not record"
    return ""


def _served(m, b):
    """Where the board uses its model from, and why not ROMFS when it could."""
    if m["served_from"] == "romfs":
        return "served from ROMFS (in place)"
    if m["served_from"] is None:
        return "served from where the agent does not say"
    rs = b["romfs_state"]
    if rs is None:
        return "served from the " + m["served_from"] + \
            (" (ROMFS: present, not writable by the agent)" if b["romfs"] else "")
    why = rs.get("note") or C.ROMFS_STATES.get(rs.get("state"), rs.get("state") or "not used")
    return f"served from the {m['served_from']} (ROMFS: {why})"


# --- report ---------------------------------------------------------------------------------

def cmd_report(args):
    from . import report
    session = _session(args)
    if not os.path.exists(session.state_path) and not session.runs("train"):
        raise C.user_error(f"tinymp: {session.path} holds no session (push, collect, train first)")
    if args.png and os.path.exists(args.png) and not os.path.isdir(args.png):
        # found before any work; the file is left as it is
        raise C.user_error(f"tinymp: --png {args.png} is a file, not a folder: give a folder "
                           "for the plots")
    rep = report.build(session, m7=args.m7)
    pngs = []
    if args.png:
        trains = report.checked_runs(session, "train")
        try:
            pngs = report.plots(rep, trains[-1] if trains else None, args.png)
        except ImportError:
            raise C.user_error("tinymp: plots need matplotlib (pip install 'tinymp[plot]')") from None
        except OSError as e:  # no permission, a parent that is a file, a full disk
            raise C.user_error(f"tinymp: cannot write the plots in {args.png}: "
                               f"{e.strerror or e}") from None
    rep["plots"] = pngs
    if args.json:
        _emit(args, rep)
        return 0
    print(report.format_text(rep))
    for p in pngs:
        print(f"plot: {p}")
    return 0


# --- session (one config file) and demo -----------------------------------------------------

CONFIG_KEYS = {"model", "port", "board", "session", "collect", "eval", "train", "plots", "scene"}


def _kind(v):
    """A value's type in the config's own words."""
    return {type(None): "null", bool: "true/false", int: "a number", float: "a number",
            str: "a string", list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def _whole_number(v):
    return isinstance(v, int) and not isinstance(v, bool)


def load_config(path):
    """The session config `path` (JSON, or TOML by its .toml name), with every value checked and
    relative paths made the file's; a user error (one line) names the first thing wrong."""
    if os.path.isdir(path):
        raise C.user_error(f"tinymp: {path} is a folder, not a session config: give the config "
                           "file (JSON, or TOML; docs/SESSION.md shows one)")
    if not os.path.isfile(path):
        raise C.user_error(f"tinymp: no such session config: {path}")
    toml = path.endswith(".toml")
    try:
        if toml:
            import tomllib
        # -sig: a byte-order mark, which some editors write, is dropped (JSON and TOML allow none)
        with open(path, encoding="utf-8-sig") as f:
            cfg = tomllib.loads(f.read()) if toml else json.load(f)
    except ImportError:
        raise C.user_error("tinymp: TOML configs need Python 3.11; use JSON") from None
    except OSError as e:
        raise C.user_error(f"tinymp: cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise C.user_error(f"tinymp: {path} is not UTF-8 text (byte {e.start}); save it as "
                           "UTF-8") from None
    except RecursionError:
        raise C.user_error(f"tinymp: {path} is nested too deeply to be a session config") from None
    except ValueError as e:  # json.JSONDecodeError, tomllib.TOMLDecodeError
        raise C.user_error(f"tinymp: {path} is not valid {'TOML' if toml else 'JSON'}: "
                           f"{' '.join(str(e).split())}") from None

    def bad(what):
        return C.user_error(f"tinymp: {path}: {what}")
    if not isinstance(cfg, dict):
        raise bad(f"it must hold an object of settings, not {_kind(cfg)}")
    unknown = set(cfg) - CONFIG_KEYS
    if unknown:
        raise bad(f"unknown keys {', '.join(sorted(map(str, unknown)))} (known: "
                  f"{', '.join(sorted(CONFIG_KEYS))})")
    if "model" not in cfg:
        raise bad("it names no model ('model': the .tmpm file)")
    for key in ("model", "scene", "session", "port", "board", "eval"):
        v = cfg.get(key)
        if v is None and key != "model":
            continue
        if not isinstance(v, str):
            raise bad(f"'{key}' must be a string, not {_kind(v)}")
        if not v and key not in ("port", "board"):  # "" would be the config's own folder
            raise bad(f"'{key}' must be a path, not empty")
    for key in ("collect", "train", "plots"):
        want = {"collect": list, "train": dict, "plots": bool}[key]
        if cfg.get(key) is not None and not isinstance(cfg[key], want):
            raise bad(f"'{key}' must be {_kind(want())}, not {_kind(cfg[key])}")
    base = os.path.dirname(os.path.abspath(path))
    rel = lambda p: p if p is None or os.path.isabs(p) else os.path.join(base, p)  # noqa: E731
    cfg["model"] = rel(cfg["model"])
    cfg["scene"] = rel(cfg.get("scene"))
    cfg["eval"] = rel(cfg.get("eval"))
    if cfg.get("session") is not None:
        cfg["session"] = rel(cfg["session"])
    for i, c in enumerate(cfg.get("collect") or []):
        where = f"collect item {i + 1}"
        if not isinstance(c, dict) or set(c) not in ({"from"}, {"label", "count"}):
            extra = sorted(map(str, set(c) - {"from", "label", "count"})) \
                if isinstance(c, dict) else []
            raise bad(f"{where} must be {{\"from\": FILE}} or {{\"label\": L, \"count\": N}}" +
                      (f", not {_kind(c)}" if not isinstance(c, dict) else
                       f" (unknown keys {', '.join(extra)})" if extra else
                       f", not keys {', '.join(sorted(map(str, c))) or 'none'}"))
        if "from" in c:
            if not isinstance(c["from"], str) or not c["from"]:
                raise bad(f"{where}: 'from' must be the path of a samples file or folder, not "
                          f"{_kind(c['from']) if c['from'] != '' else 'empty'}")
            c["from"] = rel(c["from"])
            continue
        labels = c["label"] if isinstance(c["label"], list) else [c["label"]]
        if not labels or not all(_whole_number(v) for v in labels):
            raise bad(f"{where}: 'label' must be a class number or a list of them, not "
                      f"{json.dumps(c['label']) if labels else 'an empty list'}")
        if not _whole_number(c["count"]) or c["count"] < 0:
            raise bad(f"{where}: 'count' must be a whole number >= 0 (samples per class), not "
                      f"{json.dumps(c['count'])}")
    tr = cfg.get("train") or {}
    allowed = set(C.TRAIN_KEYS) | {"epochs", "steps", "budget_kb", "save"}
    unknown = set(tr) - allowed
    if unknown:
        raise bad(f"unknown train options {', '.join(sorted(map(str, unknown)))} (known: "
                  f"{', '.join(sorted(allowed))})")
    # every value now, before the board is touched or anything is written
    kb = tr.get("budget_kb")
    if kb is not None and summary.budget_bytes(kb) is None:
        raise bad(f"train.budget_kb must be {summary.BUDGET_KB_RULE}, got {kb!r}")
    C.check_train_options({k: v for k, v in tr.items() if k != "budget_kb"},
                          name=lambda k: f"{path}: train.{k}")
    return cfg


def run_session(cfg, args, out=print):
    """The whole flow: push, collect, evaluate, train, evaluate, report."""
    from . import report
    show = _show(args)
    # the command line's --session, --port and --board over the config's
    session = C.Session(getattr(args, "session", None) or cfg.get("session") or "tinymp-session")
    data, m = C.read_model(cfg["model"])
    tr = dict(cfg.get("train") or {})
    kb = tr.pop("budget_kb", None)
    if kb is not None:
        tr["budget"] = summary.budget_bytes(kb)
    # options, or a budget, no plan of the model takes: found now (the host's engine plans as the
    # board's does), not after the push, the collect and the first evaluation. TinyTrain's plan
    # depends on the samples, so it is left to the board
    if tr.get("method") != "tinytrain" and not tr.get("support"):
        given = {k: tr[k] for k in C.PLAN_KEYS if tr.get(k) is not None}
        name = os.path.basename(cfg["model"])
        try:
            m.plan(**{k: v for k, v in given.items() if k != "budget"})
        except ValueError as e:
            raise C.user_error(f"tinymp: the config's train options make no training plan of "
                               f"{name}: {C.embedded(e)}") from None
        if given.get("budget") is not None:  # budget_kb, or budget in bytes
            said = f"train.budget_kb {kb:g}" if kb is not None else \
                f"train.budget {given['budget']:,} (bytes)"
            try:
                m.plan(**given)
            except ValueError as e:
                raise C.user_error(f"tinymp: the config's {said} fits no training plan of "
                                   f"{name} ({C.embedded(e)}); raise it or choose another "
                                   "method") from None
    epochs, steps = tr.pop("epochs", None), tr.pop("steps", None)
    save = tr.pop("save", True)
    eval_src = cfg.get("eval")
    # read every samples file now, against the model file's input and classes, so that a bad
    # file stops the flow before the board is touched or anything is written
    loaded = {}
    for src in [c["from"] for c in cfg.get("collect") or [] if "from" in c] + \
            ([eval_src] if eval_src else []):
        if src not in loaded:
            try:
                loaded[src] = C.load_samples(src, m.input_shape, m.input_scale,
                                             m.input_zero_point, m.num_classes)
            except DatasetError as e:
                raise C.user_error(str(e)) from None
    # the session's samples and the collect items must suit this model: found now, not after the
    # push (which replaces the board's model and its saved parameters)
    for d in [session.dataset_dir] + ([session.eval_dir] if eval_src else []):
        try:
            if os.path.exists(os.path.join(d, "manifest.json")):
                Dataset.open(d).check_compatible(
                    m.input_shape, m.num_classes, m.input_scale, m.input_zero_point)
            else:
                Dataset.check_new(d)
        except DatasetError as e:
            raise C.user_error(str(e)) from None
    for c in cfg.get("collect") or []:
        if "label" in c:
            labels = c["label"] if isinstance(c["label"], list) else [c["label"]]
            for lab in labels:
                if isinstance(lab, bool) or not isinstance(lab, int) or \
                        not 0 <= lab < m.num_classes:
                    raise C.user_error(f"tinymp: collect label {lab!r} is not a class of the "
                                       f"model (0..{m.num_classes - 1})")
            n = c["count"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise C.user_error(f"tinymp: collect count {n!r} must be a whole number >= 0 "
                                   "(samples per class)")
    if not cfg.get("collect") and not _dataset_size(session.dataset_dir):
        raise C.user_error(f"tinymp: nothing to train on: the config collects no samples and "
                           f"{session.path} holds none; add a 'collect' item")
    ns = _ns(args, **_port_and_board(args, cfg),
             scene=cfg.get("scene"))
    t_all = time.perf_counter()
    with _open(ns, session, scene=cfg.get("scene"), note_new_sim=False) as board:
        name = _board_name(board)
        i = board.info
        out(f"board      {name}: {i.get('implementation')} {i.get('firmware')}, tinymp "
            f"{i.get('tinymp')}, "
            f"arena budget {report._num(i.get('arena_budget'))} B, model flash "
            f"{report._num(i.get('model_flash'))} B, {C.romfs_board_text(i)}, camera "
            f"{'yes' if i.get('camera') else 'no'}" + (" [simulated]" if board.simulated else ""))
        if not i.get("camera") and any("label" in c for c in cfg.get("collect") or []):
            # found now, not after the push and the other collect items
            raise C.user_error(f"tinymp: {name} has no camera, which the config's collect items "
                               "with 'label' and 'count' capture with; collect with 'from' (a "
                               "samples file) instead")
        if any("label" in c for c in cfg.get("collect") or []):
            C.check_sim_camera(board, m.input_shape)  # also before the push
        C.check_fits(board, data, m)
        C.check_budget(board, tr.get("budget"))  # before the push, not at the train step
        try:
            res = C.push(board, data, show=show)
        except LinkError as e:
            raise C.push_link_error(e, name) from None
        rate = res["bytes"] / res["seconds"] / 1024 if res["seconds"] else 0
        out(f"push       {os.path.basename(cfg['model'])}: {res['bytes']:,} bytes"
            + (" (already on the board), " if res["skipped"] else
               f" in {res['seconds']:.2f} s ({rate:.0f} KB/s), SHA-256 checked, ")
            + C.romfs_text(res["romfs"]))
        info = board.info  # push() read it again after a commit or a ROMFS write
        meta = dict(C.model_meta(info))
        meta["name"] = os.path.basename(cfg["model"])
        meta["path"] = cfg["model"]
        missed = C.push_not_logged(session, res)
        session.state.update({"model": meta, "board": C._board_summary(board)})
        if not res["skipped"] or missed:  # the board dropped the previous model's parameters
            C.log_params(session, "push", board)
        session.save()
        ds = C.open_dataset(session, meta, name)
        for c in cfg.get("collect") or []:
            if "from" in c:
                x, y, src = loaded[c["from"]]
                added = C.import_samples(ds, x, y, src, board_name=name, show=show)
                out(f"collect    {added} samples from {os.path.basename(c['from'])}")
            else:
                # each label once, in the config's order (a repeated one needs no more captures)
                labels = list(dict.fromkeys(int(v) for v in (
                    c["label"] if isinstance(c["label"], list) else [c["label"]])))
                t0 = time.perf_counter()
                added = 0
                # the room for the whole item, before its first capture
                need = C.capture_need(ds, labels, int(c["count"]))
                _send_samples(board, ds, show, lambda: C.sync_for_captures(
                    board, ds, need, f"the config's collect item (count {int(c['count'])})",
                    f"of {'label' if len(labels) == 1 else 'labels'} "
                    f"{', '.join(map(str, labels))}", "count", show))
                for lab in labels:
                    added += C.collect_capture(board, ds, lab, int(c["count"]), show=show,
                                               board_name=name, synced=True)["added"]
                out(f"collect    {added} samples captured with the board's camera "
                    f"({'simulated, ' if board.simulated else ''}{time.perf_counter() - t0:.1f} s); "
                    f"dataset {ds.path}: {len(ds)} samples, per class "
                    f"{' '.join(str(int(v)) for v in ds.counts())}")
        _send_samples(board, ds, show)
        if eval_src:
            xe, ye, srce = loaded[eval_src]
            eds = C.open_dataset(session, meta, name, session.eval_dir)
            C.import_samples(eds, xe, ye, srce, board_name=name, show=show)
        x, y, what = C.eval_data(session, meta, None)
        before = C.evaluate(board, x, y, "pretrained", show, meta["num_classes"], "before",
                            session, what)
        out(f"evaluate   before: {before['accuracy'] * 100:.1f}% (pretrained weights) on "
            f"{before['n']} samples of {what}")
        run = C.train(board, ds, tr, steps=steps, epochs=epochs, save=save, show=show,
                      session=session)
        t = report.train_summary(run)
        out(f"train      {t['steps']} steps of method {t['plan'].get('method')} on the board: "
            f"running accuracy {report.accuracy_change(t)}"
            + (", parameters saved" if t["saved"] else
               f", parameters NOT saved: the board could not write them ({t['save_error']})"
               if t.get("save_error") else
               ", parameters kept as a trial run (not saved)" if t.get("trial") else
               f", parameters NOT saved, and not kept as a trial run ({t['trial_error']})"
               if t.get("trial_error") else ""))
        save_error = t.get("save_error")
        trial_error = None if save_error else t.get("trial_error")
        after = C.evaluate(board, x, y, "personalised", show, meta["num_classes"], "after",
                           session, what)
        out(f"evaluate   after:  {after['accuracy'] * 100:.1f}% ({after['params']} weights) on "
            f"{after['n']} samples")
    rep = report.build(session, m7=bool(getattr(args, "m7", False)))
    pngs = []
    if cfg.get("plots", True):
        try:
            pngs = report.plots(rep, run, os.path.join(session.path, "plots"))
        except ImportError:
            out("(no plots: pip install 'tinymp[plot]' for PNGs)")
        except OSError as e:  # the flow's results stay: only the plots are missing
            out(f"(no plots: cannot write them in {os.path.join(session.path, 'plots')}: "
                f"{e.strerror or e})")
    rep["plots"] = pngs
    rep["seconds"] = time.perf_counter() - t_all
    rep["save_error"] = save_error
    rep["trial_error"] = trial_error
    return rep


def _dataset_size(path):
    """Samples in the dataset folder at `path`: 0 when there is none, -1 when it cannot be read
    (the flow then says why)."""
    if not os.path.exists(os.path.join(path, "manifest.json")):
        return 0
    try:
        return len(Dataset.open(path))
    except DatasetError:
        return -1


def _port_and_board(args, cfg):
    """The session flow's port and board: the command line's over the config's. A --port given
    drops the config's board too, which went with the config's port (a sim:PROFILE port names
    its own); a --board given makes a config's sim:PROFILE port plain sim."""
    port, board = getattr(args, "port", None), getattr(args, "board", None)
    if port:
        return {"port": port, "board": board}
    port = cfg.get("port") or "auto"
    if board and port.startswith("sim:"):
        port = "sim"
    return {"port": port, "board": board or cfg.get("board")}


def _ns(args, **kw):
    import argparse
    d = dict(vars(args))
    d.update(kw)
    d.setdefault("timeout", None)
    return argparse.Namespace(**d)


def cmd_session(args):
    from . import report
    cfg = load_config(args.config)
    out = (lambda *a: None) if args.json else print
    rep = run_session(cfg, args, out)
    # the train step asked to save (or, "save": false, to keep a trial run) and the board could
    # not: the flow's results stand, it fails
    status = 1 if rep.get("save_error") or rep.get("trial_error") else 0
    if rep.get("save_error"):
        print(f"error: the board could not save the trained parameters: {rep['save_error']}; it "
              "keeps its last saved parameters; make room on the board's filesystem and run "
              "the flow again", file=sys.stderr)
    elif status:
        print(f"error: the board could not keep the run as a trial run: {rep['trial_error']}; "
              "it keeps its last saved parameters; make room on the board's filesystem and run "
              "the flow again", file=sys.stderr)
    if args.json:
        _emit(args, rep)
        return status
    print()
    print(report.format_text(rep))
    for p in rep["plots"]:
        print(f"plot: {p}")
    return status


def demo_config(session_dir):
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
    return {
        "model": os.path.join(here, "demo.tmpm"),
        "port": "sim", "board": boards.DEFAULT_SIM, "session": session_dir,
        "scene": os.path.join(here, "digits_shifted.npz"),
        "collect": [{"label": list(range(10)), "count": DEMO_PER_CLASS}],
        "eval": os.path.join(here, "digits_shifted_test.npz"),
        "train": dict(DEMO_TRAIN),
        "plots": True,
    }


DEMO_PER_CLASS = 20
DEMO_TRAIN = {"method": "tinymp", "epochs": 3, "lr": 0.01, "seed": 1}  # lr: the experiment's validated rate for tinymp


def cmd_demo(args):
    from . import report
    session_dir = os.path.abspath(args.session or "tinymp-demo")
    marker = os.path.join(session_dir, ".tinymp-demo")
    if os.path.exists(session_dir):
        if not os.path.exists(marker):
            raise C.user_error(f"tinymp: {session_dir} exists and is not a demo folder; give "
                               "another --session")
    try:
        os.makedirs(session_dir, exist_ok=True)
    except OSError as e:
        raise C.user_error(f"tinymp: cannot make the demo folder {session_dir}: "
                           f"{e.strerror or e}") from None
    # emptied while held: another command still using the folder (a `tinymp train --session`
    # on the demo's folder) stops this one instead of losing it
    with C.hold_folder(session_dir):
        try:
            for name in os.listdir(session_dir):
                if name in (".lock", ".tinymp-demo"):
                    continue
                p = os.path.join(session_dir, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                else:
                    os.remove(p)
            open(marker, "w").close()
        except OSError as e:
            raise C.user_error(f"tinymp: cannot make the demo folder {session_dir}: "
                               f"{e.strerror or e}") from None
    cfg = demo_config(session_dir)
    out = (lambda *a: None) if args.json else print
    out("tinymp demo: personalise the shipped digits model on a simulated OpenMV Cam H7.")
    out("The camera sees digits rotated, shrunk and shifted (a 'shifted' copy of scikit-learn's")
    out(f"digits, shipped with tinymp); {DEMO_PER_CLASS} photos per digit are taken with the "
        "simulated camera and the board trains on them.\n")
    rep = run_session(cfg, _ns(args, session=None), out)  # the folder made above: cfg's
    if args.json:
        _emit(args, rep)
        return 0
    print()
    print(report.format_text(rep))
    for p in rep["plots"]:
        print(f"plot: {p}")
    ab, aa = rep["accuracy_before"], rep["accuracy_after"]
    print(f"\ndone in {rep['seconds']:.1f} s: accuracy {ab['accuracy'] * 100:.1f}% -> "
          f"{aa['accuracy'] * 100:.1f}% on {aa['n']} held-out shifted digits; session folder "
          f"{session_dir}")
    return 0


# --- parsers --------------------------------------------------------------------------------

def _seconds(text):
    """argparse type of --timeout: a positive, finite number of seconds."""
    import argparse
    import math
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return v


def _board_args(p, json_flag=True, config=False):
    """The options of a command that opens the board; `config` (tinymp session): their defaults
    are None, so that the config's port, board and session are taken where the command line
    gives none (run_session), and the command line's where it does."""
    p.add_argument("--port", default=None if config else "auto",
                   help="serial device, 'sim' or 'sim:PROFILE' (simulated board), 'qemu', or "
                        "'auto' (default: the one attached MicroPython board, else 'sim')")
    p.add_argument("--board", default=None,
                   help="board profile of the simulated board (default: the one this session's "
                        f"model was pushed to, else {boards.DEFAULT_SIM})")
    p.add_argument("--session", default=None if config else "tinymp-session",
                   help="session folder (dataset, runs, simulated board); default ./tinymp-session"
                        + (" (the config's 'session', when it has one)" if config else ""))
    p.add_argument("--timeout", type=_seconds, default=None, help="seconds per try of a request")
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_parsers(sub):
    p = sub.add_parser("devices", help="serial ports with a board, the simulated board and QEMU")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("push", help="push a model to the board (chunked, resumable, SHA-256 "
                                    "checked, committed atomically)")
    p.add_argument("model")
    _board_args(p)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("collect", help="collect labelled samples: capture with the board's "
                                       "camera, or import from a file")
    p.add_argument("--from", dest="source", help=".npz with x (samples) and y (labels), or a "
                                                 "dataset folder")
    p.add_argument("--label", type=int, help="class being shown to the camera")
    p.add_argument("--count", type=int, help="capture until the dataset holds this many "
                                             "samples of --label")
    p.add_argument("--eval", action="store_true", help="put imported samples in the held-out "
                                                       "set (not trained on)")
    p.add_argument("--scene", help="simulated camera: .npz of uint8 images x and labels y")
    _board_args(p)
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("train", help="train on the board over the collected samples")
    # no choices: check_train_options refuses another method, 'sparse' with why
    p.add_argument("--method", default="tinymp", metavar="{" + ",".join(C.TRAIN_METHODS) + "}",
                   help="what the board trains (default: tinymp; docs/TRAINING.md)")
    p.add_argument("--budget", type=float, help="KB of RAM the training step may use "
                                                "(default: the board's)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, help="passes over the samples (default 1)")
    g.add_argument("--steps", type=int, help="number of steps (instead of --epochs)")
    p.add_argument("--lr", type=float, help="learning rate (default: the method's own, which "
                                            "`tinymp experiment` chose: tinymp 0.01, last 0.01, "
                                            "bias 0.005, tinytrain 0.005, full 0.002)")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of the sample order and the rounding of int8 updates (default 1)")
    p.add_argument("--r", type=int, help="Gradient Condensing patch size, 1 = exact (default: 4 "
                                         "for tinymp, else 1)")
    p.add_argument("--ratio", type=float, help="fraction of channels updated per period, for "
                                               "tinymp and tinytrain (default 1/4); the other "
                                               "methods train every channel")
    p.add_argument("--storage", choices=["int8", "fp32"],
                   help="trained weights as int8 (default) or fp32 master copies")
    p.add_argument("--momentum", type=float, help="SGD momentum, 0 to 0.999 (default 0: none)")
    p.add_argument("--period", type=int,
                   help="APU period in steps (default 0: a period ends after each pass over the "
                        "samples)")
    p.add_argument("--fresh", action="store_true", help="start from the pretrained weights")
    p.add_argument("--keep-features", action="store_true",
                   help="keep the samples' frozen-prefix features in a file on the board, so that "
                   "later runs with this option skip the prefix layers for them from their first "
                   "step (a run without it removes the file)")
    p.add_argument("--no-save", action="store_true",
                   help="a trial run: the board keeps its saved parameters and keeps this "
                        "run aside, for `eval --trial` and `params save`")
    _board_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="accuracy of the board's model on samples")
    p.add_argument("--data", help=".npz or dataset folder (default: the session's eval/ set)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pretrained", action="store_true", help="the pretrained weights")
    g.add_argument("--both", action="store_true", help="pretrained and personalised")
    g.add_argument("--trial", action="store_true",
                   help="the trial run kept by `train --no-save` (not saved yet)")
    p.add_argument("--confusion", action="store_true", help="print the confusion matrix")
    _board_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("params", help="save, roll back or reset the personalised parameters")
    p.add_argument("action", choices=["save", "rollback", "reset"])
    _board_args(p)
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("status", help="what the board holds now: its model, saved parameters, "
                                      "trial run and samples (changes nothing)")
    _board_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="accuracy, memory and latency of the session")
    p.add_argument("--session", default="tinymp-session",
                   help="session folder to report on; default ./tinymp-session")
    p.add_argument("--png", metavar="DIR", help="write loss/accuracy and memory plots there")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _m7_arg(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("session", help="the whole flow from one config file (JSON or TOML)")
    p.add_argument("config")
    _board_args(p, config=True)
    _m7_arg(p)
    p.set_defaults(func=cmd_session)

    p = sub.add_parser("demo", help="the whole session against the simulated board with the "
                                    "shipped demo model and shifted digits")
    p.add_argument("--session", default=None, help="folder for the demo (default ./tinymp-demo, "
                                                   "replaced)")
    p.add_argument("--inference", action="store_true",
                   help="only run the demo model on real digits and show its memory plan")
    p.add_argument("--json", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--timeout", type=_seconds, default=None, help="seconds per try of a request")
    _m7_arg(p)
    p.set_defaults(func=cmd_demo, port="sim", board=boards.DEFAULT_SIM)


def _m7_arg(p):
    p.add_argument("--m7", action="store_true",
                   help="add a Cortex-M7 estimate: the training configuration on an emulated "
                        "Cortex-M7 (needs qemu-system-arm and `make bench-train-elf`), times from "
                        "the cost model; an estimate, not a measurement")


def handle_errors(func, args):
    """Run a sub-command; map its failures to one line on stderr and an exit status."""
    try:
        return func(args)
    except C.SessionError as e:
        print(e, file=sys.stderr)
        return e.code
    except boards.ProfileError as e:
        print(e, file=sys.stderr)
        return 2
    except DatasetError as e:
        print(e, file=sys.stderr)
        return 2
    except LinkError as e:
        msg = str(e)
        print(msg if msg.startswith("tinymp:") else f"tinymp: {msg}", file=sys.stderr)
        return 1
    except BoardError as e:
        print(f"tinymp: the board refused: {C.embedded(e.msg)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tinymp: interrupted", file=sys.stderr)
        return 130
