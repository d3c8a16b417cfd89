"""The session commands as a new user meets them, against the simulated board: what `report`
says of a run's budget and learning rate and before any run, the methods `train` offers, the
exit status and the words of a refusal. Expected figures come from the user's own arguments and
from the board's INFO (`tinymp status --json`), not from the report."""
import hashlib
import json
import os
import re
import shutil

import numpy as np
import pytest

import tinymp
from tinymp import cli
from test_session_report import tm

MODELS = os.path.join(os.path.dirname(tinymp.__file__), "models")
DEMO = os.path.join(MODELS, "demo.tmpm")
HELD = os.path.join(MODELS, "digits_shifted_test.npz")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SESSION_METHODS = "none, last, bias, tinytrain, full, tinymp"


def sim(capsys, s, *args):
    code, out, err = tm(capsys, *args, "--port", "sim", "--session", s)
    assert code == 0, err
    return out, err


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinymp:"), err
    return lines[0]


def report(capsys, s, *args):
    """(the report as JSON, the report as text)"""
    code, js, err = tm(capsys, "report", "--session", s, "--json", *args)
    assert code == 0, err
    code, text, err = tm(capsys, "report", "--session", s, *args)
    assert code == 0, err
    return json.loads(js), text


def line(text, head):
    (found,) = [ln for ln in text.splitlines() if ln.startswith(head)]
    return found


def contents(path):
    """{file: sha256} of a session folder, without the lock and the simulated board's log (which
    every connection writes to)."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), path)
            if f not in (".lock", "board.log"):
                with open(os.path.join(root, f), "rb") as fh:
                    out[rel] = hashlib.sha256(fh.read()).hexdigest()
    return out


def board_budget(capsys, s):
    """The board's arena budget, from its INFO."""
    out, _ = sim(capsys, s, "status", "--json")
    return json.loads(out)["board"]["arena_budget"]


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A session whose simulated board holds the demo model and 20 of the held-out digits."""
    base = tmp_path_factory.mktemp("pushed")
    d = np.load(HELD)
    few = str(base / "few.npz")
    np.savez(few, x=d["x"][:20], y=d["y"][:20])
    s = str(base / "s")
    for args in (["push", DEMO], ["collect", "--from", few]):
        assert cli.main(args + ["--port", "sim", "--session", s, "-q"]) == 0
    return s


@pytest.fixture
def session(pushed, tmp_path):
    """A copy of `pushed` (its simulated board's flash included) for one test to change."""
    s = str(tmp_path / "s")
    shutil.copytree(pushed, s)
    return s


# --- the budget: the run's, or the board's, and which -------------------------------------------

def test_report_shows_the_runs_budget_and_says_whose(session, capsys):
    board = board_budget(capsys, session)
    sim(capsys, session, "train", "--budget", "12", "--steps", "1", "-q")
    rep, text = report(capsys, session)
    row = line(text, "training arena (planned)")
    assert row.rstrip().endswith(f"run's budget {12 * 1024:,}"), row
    assert f"{board:,}" not in row
    assert (rep["train"]["budget"], rep["train"]["budget_from"]) == (12 * 1024, "run")
    assert rep["train"]["options"]["budget"] == 12 * 1024  # kept as it was

    sim(capsys, session, "train", "--fresh", "--steps", "1", "-q")  # no --budget
    rep, text = report(capsys, session)
    row = line(text, "training arena (planned)")
    assert row.rstrip().endswith(f"board's budget {board:,}"), row
    assert (rep["train"]["budget"], rep["train"]["budget_from"]) == (board, "board")

    # a run recorded before the PC refused budgets above the board's: the board planned within
    # its own, and the report says so
    path = os.path.join(session, "runs", "train-0002.json")
    with open(path) as f:
        rec = json.load(f)
    rec["options"]["budget"] = board + 1024
    with open(path, "w") as f:
        json.dump(rec, f)
    rep, text = report(capsys, session)
    row = line(text, "training arena (planned)")
    assert row.rstrip().endswith(f"board's budget {board:,} (the run asked {board + 1024:,})"), row
    assert (rep["train"]["budget"], rep["train"]["budget_from"]) == (board, "board")


def test_a_budget_above_the_boards_is_refused_before_anything_is_sent(session, capsys):
    board = board_budget(capsys, session)
    assert board % 1024 == 0
    kb = board // 1024
    before = contents(session)
    code, out, err = tm(capsys, "train", "--budget", str(kb + 1), "--port", "sim",
                        "--session", session)
    msg = one_line(err)
    assert code == 2 and out == ""
    assert f"{kb + 1:,} KB" in msg and f"{kb:,} KB" in msg and f"{board:,} bytes" in msg, msg
    assert contents(session) == before  # no run, no samples sent, no parameters
    # the board's own budget is a budget the user may give
    sim(capsys, session, "train", "--budget", str(kb), "--steps", "1", "-q")
    with open(os.path.join(session, "runs", "train-0001.json")) as f:
        assert json.load(f)["options"]["budget"] == board


# --- methods: 'sparse' needs a layer list, which a session cannot give ----------------------------

def test_sparse_is_refused_up_front_naming_the_methods_a_session_trains(session, tmp_path,
                                                                         capsys):
    before = contents(session)
    code, _, err = tm(capsys, "train", "--method", "sparse", "--port", "sim",
                      "--session", session)
    msg = one_line(err)
    assert code == 2 and "'sparse'" in msg and SESSION_METHODS in msg, msg
    assert msg.count("tinymp:") == 1, msg
    assert contents(session) == before

    # a session config's train.method: refused before the board is touched or a file written
    cfg = tmp_path / "cfg.json"
    fresh = tmp_path / "fresh"
    cfg.write_text(json.dumps({"model": DEMO, "port": "sim", "session": str(fresh),
                               "collect": [{"from": HELD}],
                               "train": {"method": "sparse", "steps": 1}, "plots": False}))
    code, _, err = tm(capsys, "session", str(cfg))
    msg = one_line(err)
    assert code == 2 and "train.method" in msg and SESSION_METHODS in msg, msg
    assert not fresh.exists()


def test_train_and_report_help_offer_what_works_and_explain_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert "sparse" not in out
    for opt in ("--method", "--lr", "--seed", "--momentum", "--storage", "--period"):
        assert re.search(rf"^\s+{opt}\b.*\n?.*default", out, re.M), (opt, out)
    with pytest.raises(SystemExit):
        cli.main(["report", "--help"])
    out = capsys.readouterr().out
    assert re.search(r"^\s+--session SESSION\s+\S", out, re.M), out


def test_a_config_budget_above_the_boards_is_refused_before_the_push(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    fresh = tmp_path / "fresh"
    cfg.write_text(json.dumps({"model": DEMO, "port": "sim", "session": str(fresh),
                               "collect": [{"from": HELD}],
                               "train": {"budget_kb": 100000, "steps": 1}, "plots": False}))
    code, out, err = tm(capsys, "session", str(cfg))
    msg = one_line(err)
    assert code == 2 and "100,000 KB" in msg, msg
    assert "push" not in out  # the board line only: nothing pushed, collected or trained
    assert not os.path.exists(os.path.join(fresh, "runs"))


# --- one "tinymp:" a line, and the board's words, not its paths ---------------------------------

def test_board_and_engine_messages_are_embedded_without_their_prefix(session, tmp_path, capsys):
    # the board's plan refuses the budget: the engine's message inside the PC's line
    code, _, err = tm(capsys, "train", "--budget", "1", "--steps", "1", "--port", "sim",
                      "--session", session)
    msg = one_line(err)
    assert code == 2 and "does not fit" in msg and msg.count("tinymp:") == 1, msg

    # the saved run (int8 storage) cannot be loaded into an fp32 run: a warning, in the user's
    # words (the simulated board's flash is in the session folder: no path of it either)
    sim(capsys, session, "train", "--steps", "1", "-q")
    _, err = sim(capsys, session, "train", "--steps", "1", "--storage", "fp32", "-q")
    (warn,) = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert "started from the pretrained model" in warn
    assert "the board's saved parameters" in warn, warn
    assert "tinymp:" not in warn and "params.bin" not in warn and session not in warn, warn

    # bench: a file that is no model
    bad = tmp_path / "rand.tmpm"
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    code, _, err = tm(capsys, "bench", "--model", str(bad))
    msg = one_line(err)
    assert code == 2 and "not a usable tinymp model" in msg and msg.count("tinymp:") == 1, msg


# --- no model on the board: the user pushes one (status 2) ---------------------------------------

def test_commands_before_a_push_are_usage_errors_that_say_to_push(tmp_path, capsys):
    empty = str(tmp_path / "empty")
    for args in (["train"], ["eval"], ["collect", "--from", HELD]):
        code, _, err = tm(capsys, *args, "--port", "sim", "--session", empty)
        msg = one_line(err)
        assert code == 2 and "`tinymp push MODEL` first" in msg, (args, msg)


# --- the report's words ----------------------------------------------------------------------------

def _depth(text):
    """The deepest nesting of parentheses in `text`."""
    d = most = 0
    for c in text:
        d += (c == "(") - (c == ")")
        most = max(most, d)
    return most


def test_report_of_one_step_in_singular_without_nested_parentheses(session, capsys):
    sim(capsys, session, "train", "--steps", "1", "-q")
    _, text = report(capsys, session)
    train = line(text, "training   ")
    assert "method tinymp, 1 step over 20 samples," in train, train
    for ln in text.splitlines():
        assert _depth(ln) <= 1, ln


def _config(tmp_path, n, train):
    """(a session config on the simulated board that imports the first n held-out digits and
    trains with `train`, its session folder)"""
    d = np.load(HELD)
    few = str(tmp_path / "few.npz")
    np.savez(few, x=d["x"][:n], y=d["y"][:n])
    s = str(tmp_path / "s")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": DEMO, "port": "sim", "session": s,
                               "collect": [{"from": few}], "train": train, "plots": False}))
    return cfg, s


@pytest.mark.parametrize("method", ["tinymp", "full"])
def test_a_run_without_lr_reports_the_rate_it_trained_with(tmp_path, capsys, method):
    # the method's own rate: the one `tinymp experiment` chose for it (its results, not the
    # engine's table); full diverges at tinymp's 0.01
    with open(os.path.join(ROOT, "experiments", "results.json")) as f:
        rate = json.load(f)["settings"]["lrs"][method]
    cfg, s = _config(tmp_path, 20, {"steps": 6, "seed": 1, "method": method})
    code, _, err = tm(capsys, "session", str(cfg), "-q")
    assert code == 0, err
    rep, text = report(capsys, s)
    assert f"lr {rate:g} (the default);" in line(text, "training   ")
    assert rep["train"]["lr"] == rate

    # the rate it trained with is that one: the same run with --lr of it makes the same steps,
    # one with another rate does not
    def losses(name):
        with open(os.path.join(s, "runs", name)) as f:
            rec = json.load(f)
        i = rec["fields"].index("loss")
        return [e[i] for e in rec["events"]]
    for lr in (rate, 0.05):
        sim(capsys, s, "train", "--method", method, "--fresh", "--steps", "6", "--seed", "1",
            "--lr", str(lr), "-q")
    assert losses("train-0002.json") == losses("train-0001.json")
    assert losses("train-0003.json") != losses("train-0001.json")
    rep, text = report(capsys, s)
    assert "lr 0.05;" in line(text, "training   ") and rep["train"]["lr"] == 0.05


def test_train_help_gives_the_engines_rate_of_each_method():
    sub = next(a for a in cli.build_parser()._actions if hasattr(a, "choices") and
               isinstance(a.choices, dict))
    help_lr = next(a.help for a in sub.choices["train"]._actions if "--lr" in a.option_strings)
    named = dict(re.findall(r"(\w+) ([0-9.]+)[,)]", help_lr.split("chose:")[1]))
    assert set(named) == {"tinymp", "last", "bias", "tinytrain", "full"}, help_lr
    with open(DEMO, "rb") as f:
        m = tinymp.Model(f.read())
    h, w, c = m.input_shape
    for method, rate in named.items():
        kw = {"support": ([bytes(h * w * c)] * 2, [0, 1])} if method == "tinytrain" else {}
        assert tinymp.Trainer(m, m.plan(method=method, **kw)).lr == pytest.approx(float(rate)), method


# --- a report before any training run --------------------------------------------------------------

def test_report_before_training_says_what_to_run(session, tmp_path, capsys):
    rep, text = report(capsys, session)
    train = line(text, "training   ")
    assert "no training run recorded" in train and "`tinymp train --session " in train, text
    assert "no training run recorded" in rep["train_missing"]

    png = tmp_path / "png"
    code, out, err = tm(capsys, "report", "--session", session, "--png", str(png))
    msg = one_line(err)
    assert code == 2 and out == "" and "tinymp train" in msg, msg
    assert not png.exists()

    # --m7 has nothing to estimate: the same line says so (test_report_m7: no estimate line)
    code, out, err = tm(capsys, "report", "--session", session, "--m7")
    assert code == 0, err
    assert "no training run recorded" in line(out, "training   ")


# --- --help --------------------------------------------------------------------------------------

def test_info_help_explains_its_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["info", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for arg in ("model", "--json", "--layers"):
        assert re.search(rf"^\s+{re.escape(arg)}\s+\S", out, re.M), (arg, out)


@pytest.mark.parametrize("agent, sent", [("5", True), ("6", False)])
def test_a_board_before_agent_6_is_sent_the_methods_own_rate(monkeypatch, agent, sent):
    # an agent before 6 trains at 0.01 when no lr is named, whatever the method; the PC names
    # the method's own rate (the experiment's choice for it) to such a board, and leaves a newer
    # agent to take it itself
    from tinymp.session import commands as C
    from tinymp.session import protocol as P
    from tinymp.session.link import BoardError
    with open(os.path.join(ROOT, "experiments", "results.json")) as f:
        rate = json.load(f)["settings"]["lrs"]["full"]
    asked = []

    class Board:
        info = {"agent": agent}
        simulated = True
        link = type("L", (), {"timeout": 1.0})()

        def request(self, kind, payload=None, timeout=None):
            asked.append((kind, dict(payload)))
            raise BoardError("bad_request", "stop here")

    monkeypatch.setattr(C, "sync_samples", lambda board, ds, show: None)
    ds = type("D", (), {"__len__": lambda self: 4})()
    for opts in ({"method": "full"}, {"method": "full", "lr": 0.05}):
        with pytest.raises(C.SessionError):
            C.train(Board(), ds, opts, steps=1, show=False)
        kind, payload = asked.pop()
        assert kind == P.TRAIN_START
        if "lr" in opts:
            assert payload["lr"] == 0.05  # a rate the user named goes as named
        elif sent:
            assert payload["lr"] == rate
        else:
            assert "lr" not in payload


def test_a_ratio_for_a_method_that_trains_every_channel_is_refused_before_the_board(tmp_path, capsys):
    s = str(tmp_path / "s")
    code, out, err = tm(capsys, "train", "--method", "bias", "--ratio", "0.5", "--port", "sim",
                        "--session", s)
    assert code == 2 and out == ""
    assert one_line(err) == "tinymp: --ratio is for methods tinymp and tinytrain: method bias " \
                            "trains every channel of its layers"
    assert not os.path.exists(s)  # no board was started, no folder made
    # the engine refuses it too (the board's planner), and takes ratio 1
    with open(DEMO, "rb") as f:
        m = tinymp.Model(f.read())
    with pytest.raises(ValueError, match="ratio must be 1"):
        m.plan(method="bias", ratio=0.5)
    assert m.plan(method="bias", ratio=1).channels == m.plan(method="bias").channels


def test_parameters_saved_with_a_ratio_an_older_agent_ignored_still_evaluate(session, capsys):
    # an agent before 6 took --ratio 0.5 with method bias (and trained every channel): the
    # options it saved with the parameters name that ratio, which the engine now refuses
    from tinymp import tinymp_agent as A
    sim(capsys, session, "train", "--method", "bias", "--steps", "3", "-q")
    before = json.loads(sim(capsys, session, "eval", "--json")[0])
    (opt,) = [os.path.join(d, "params.opt") for d, _, files in os.walk(session)
              if "params.opt" in files]
    with open(opt, "rb") as f:
        saved = A.decode(f.read())
    saved["options"]["ratio"] = 0.5
    with open(opt, "wb") as f:
        f.write(A.encode(saved))
    after = json.loads(sim(capsys, session, "eval", "--json")[0])

    def seen(results):  # what the parameters did (not the times)
        return [(r["params"], r["accuracy"], r["confusion"]) for r in results]
    assert seen(after) == seen(before)  # the same parameters, through the same plan


def test_the_agents_ratio_methods_are_the_engines():
    # the PC refuses --ratio, and the agent drops an old record's ratio, by RATIO_METHODS: the
    # methods whose plans the engine lets a ratio change
    from tinymp import tinymp_agent as A
    with open(DEMO, "rb") as f:
        m = tinymp.Model(f.read())
    support = ([bytes(32 * 32)] * 2, [0, 1])
    for method in ("none", "last", "bias", "sparse", "tinytrain", "full", "tinymp"):
        kw = {"support": support} if method == "tinytrain" else \
            {"layers": [12]} if method == "sparse" else {}
        try:
            m.plan(method=method, ratio=0.5, **kw)
            takes = True
        except ValueError:
            takes = False
        assert takes == (method in A.RATIO_METHODS), method


def test_a_config_whose_options_make_no_plan_is_refused_before_the_push(tmp_path, capsys):
    cfg, s = _config(tmp_path, 8, {"steps": 2, "method": "full", "r": 2})
    code, out, err = tm(capsys, "session", str(cfg), "-q")
    assert code == 2 and one_line(err) == "tinymp: the config's train options make no training " \
        "plan of demo.tmpm: method 'full' is exact backprop: r must be 1"
    assert not os.path.exists(os.path.join(s, "sim"))  # no board started, nothing pushed
