"""The `tinymp` command: info, plan and demo print what the engine computed, and bad input gets
one clear line and exit status 2."""
import json
import os
import shlex
import subprocess
import sys

import pytest

import tinymp
from tinymp import cli, zoo


def run(*args):
    r = subprocess.run([sys.executable, "-m", "tinymp.cli", *args], capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture
def demo_file(tmp_path):
    p = tmp_path / "demo.tmpm"
    p.write_bytes(zoo.demo())
    return str(p)


def test_info_reports_the_engine_plan(demo_file, capsys):
    assert cli.main(["info", demo_file, "--json", "--layers"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = tinymp.Model(zoo.demo())
    assert out["arena_bytes"] == m.inference_arena_bytes
    assert out["num_classes"] == 10 and out["input_shape"] == [32, 32, 1]
    assert len(out["layer_table"]) == out["layers"] == len(m._layers())
    # MACs of the first layer (3x3 conv, 1->8 channels, 16x16 output) computed by hand
    first = out["layer_table"][0]
    assert first["type"] == "conv" and first["macs"] == 16 * 16 * 8 * 3 * 3 * 1
    assert out["class_names"] == [str(d) for d in range(10)]


def test_info_text(demo_file):
    code, out, err = run("info", demo_file, "--layers")
    assert code == 0, err
    assert "RAM arena" in out and "dwconv" in out


def test_plan_json_budget(demo_file, capsys):
    assert cli.main(["plan", demo_file, "--budget", "8", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["arena_bytes"] == tinymp.Model(zoo.demo()).inference_arena_bytes
    assert row["fits"] == (row["arena_bytes"] <= 8 * 1024)


@pytest.mark.parametrize("make_bad, needle", [
    (lambda p: None, "no such model file"),
    (lambda p: p.write_bytes(b"not a model at all, clearly" * 4), "bad magic"),
    (lambda p: p.write_bytes(zoo.demo()[:1000]), "truncated"),
    (lambda p: p.write_bytes(zoo.demo()[:500] + bytes([zoo.demo()[500] ^ 0xFF]) + zoo.demo()[501:]), "CRC"),
])
def test_bad_model_file_one_line_exit_2(tmp_path, make_bad, needle):
    p = tmp_path / "bad.tmpm"
    make_bad(p)
    code, out, err = run("info", str(p))
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinymp:") and needle in lines[0], err



@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"),
                    reason="needs POSIX FIFOs and /dev/zero")
@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_model_path_that_is_not_a_file_is_refused_unread(tmp_path, kind):
    # `info`, `plan`, `push` and the session flow read models the same way: a FIFO blocked the
    # read for ever, /dev/zero was read until memory ran out (a MemoryError traceback)
    path = {"fifo": str(tmp_path / "pipe"), "device": "/dev/zero", "folder": str(tmp_path)}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    r = subprocess.run([sys.executable, "-m", "tinymp.cli", "info", path], capture_output=True,
                       text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and r.stdout == "" and len(lines) == 1, r.stderr[-2000:]
    assert lines[0] == (f"tinymp: {path} is a folder, not a model file" if kind == "folder" else
                        f"tinymp: {path} is not a regular file (a model file is expected)")


def test_a_model_file_past_the_bound_is_refused(tmp_path, monkeypatch, capsys):
    from tinymp.session import commands
    p = tmp_path / "big.tmpm"
    p.write_bytes(zoo.demo() + bytes(100))  # trailing bytes are allowed by the format
    bound = len(zoo.demo()) + 99
    monkeypatch.setattr(commands, "MODEL_FILE_MAX", bound)
    assert cli.main(["info", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tinymp: {p} is larger than {bound:,} bytes: no microcontroller holds such "
                   "a model"]
    monkeypatch.setattr(commands, "MODEL_FILE_MAX", bound + 1)
    assert cli.main(["info", str(p)]) == 0

def test_plan_needs_something(capsys):
    assert cli.main(["plan"]) == 2
    assert "give model files or --zoo" in capsys.readouterr().err


def test_demo_inference_has_no_folder(tmp_path, capsys):
    assert cli.main(["demo", "--inference", "--session", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.strip() == (
        "tinymp: demo --inference writes no folder: --session is for the session demo "
        "(`tinymp demo --session DIR`)")
    assert not os.path.exists(tmp_path / "d")


def test_demo_runs():
    code, out, err = run("demo", "--inference")
    assert code == 0, err
    acc = float(out.split("accuracy")[1].split("%")[0])
    assert acc >= 90.0
    assert "inference arena" in out


def test_plan_training_method_prints_the_plan_and_fits_the_budget():
    import tinymp
    from tinymp import zoo
    code, out, err = run("plan", zoo.DEMO_PATH, "--method", "tinymp", "--budget", "20")
    assert code == 0, err
    expected = tinymp.Model(zoo.demo()).plan(method="tinymp", budget=20 * 1024)
    assert f"arena {expected.arena_bytes:,} bytes" in out
    assert expected.arena_bytes <= 20 * 1024
    assert "W+b" in out and "APU" in out
    code, out, err = run("plan", zoo.DEMO_PATH, "--method", "tinymp", "--budget", "5", "--json")
    assert code == 2 and "does not fit a budget of 5120 bytes" in err and out == ""
    code, out, err = run("plan", zoo.DEMO_PATH, "--method", "full", "--json")
    assert code == 0
    assert json.loads(out)[0]["arena_bytes"] == tinymp.Model(zoo.demo()).plan(method="full").arena_bytes


@pytest.mark.parametrize("budget", ["nan", "inf", "-1", "0", "4194304"])
@pytest.mark.parametrize("method", [None, "tinymp"])
def test_plan_budget_outside_the_range_is_one_line(budget, method):
    code, out, err = run("plan", zoo.DEMO_PATH, "--budget", budget, *(["--method", method] if method else []))
    assert code == 2 and out == ""
    assert err.strip() == "tinymp: --budget must be a positive number of KB (1 KB = 1024 bytes), at most 4,194,303", err


def test_every_command_reads_a_budget_in_kb_the_same_way():
    from tinymp import summary
    # the engine's budget is a 32-bit byte count: the largest KB that still fits, and no further
    assert summary.budget_bytes(4194303) == 4194303 * 1024
    assert summary.budget_bytes(4194303.999) == int(4194303.999 * 1024) <= 0xFFFFFFFF
    assert summary.budget_bytes(4194304) is None
    assert summary.budget_bytes(252) == 252 * 1024
    assert summary.budget_bytes(11.71875) == 12000
    # a tiny budget is one byte (too small for any plan), never 0, which the engine reads as "none"
    assert summary.budget_bytes(1e-9) == 1
    for bad in (0, -1, float("nan"), float("inf"), True, "252", None):
        assert summary.budget_bytes(bad) is None, bad


@pytest.mark.parametrize("opts", [["--r", "2"], ["--ratio", "0.5"], ["--storage", "fp32"]])
def test_training_options_without_a_method_are_refused(demo_file, opts):
    # they only shape a training plan: without --method they would be ignored
    code, out, err = run("plan", str(demo_file), *opts)
    assert code == 2 and out == ""
    assert err.strip() == f"tinymp: {opts[0]} only applies to a training plan: add --method", err
    code, out, err = run("plan", str(demo_file), *opts, "--method", "tinymp", "--json")
    assert code == 0, err


@pytest.mark.parametrize("argv, says", [
    ([], "tinymp: the following arguments are required: command (`tinymp --help` shows the "
         "options)"),
    (["frobnicate"], "tinymp: argument command: invalid choice: 'frobnicate'"),
    (["info"], "tinymp: info: the following arguments are required: model (`tinymp info --help` "
               "shows the options)"),
    (["info", "m.tmpm", "--bad"], "tinymp: info: unrecognized arguments: --bad (`tinymp info "
                                  "--help` shows the options)"),
    (["eval", "--sesion", "s"], "tinymp: eval: unrecognized arguments: --sesion s (`tinymp eval "
                                "--help` shows the options)"),
    (["experiment", "--seeds", "abc"], "tinymp: experiment: argument --seeds: invalid int value: "
                                       "'abc' (`tinymp experiment --help` shows the options)"),
    (["plan", "--method", "nope"], "tinymp: plan: argument --method: invalid choice: 'nope'"),
    (["collect", "--count"], "tinymp: collect: argument --count: expected one argument"),
    (["bench", "--budget", "x"], "tinymp: bench: argument --budget: invalid float value: 'x' "
                                 "(`tinymp bench --help` shows the options)"),
])
def test_a_bad_command_line_is_one_line(argv, says, capsys):
    # argparse printed its whole usage first: several lines burying the one that matters
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert e.value.code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith(says), lines[0]


def _demo_layers(*types):
    """Indices of the demo model's layers of these types, read from the model itself."""
    return [i for i, l in enumerate(tinymp.Model(zoo.demo())._layers()) if l["type"] in types]


@pytest.mark.parametrize("case", ["ratios", "budget"])
def test_plan_sparse_is_the_engine_plan_of_the_listed_layers(demo_file, case, capsys):
    # `--method sparse` always failed: the command could not pass the layer list the engine needs
    m = tinymp.Model(zoo.demo())
    if case == "ratios":
        # the last three conv-like layers, listed out of order: each ratio goes with its layer
        layers = _demo_layers("conv", "dwconv", "pwconv")[-3:][::-1]
        ratios, opts, kw = [1.0, 0.5, 0.25], [], {}
    else:
        # three late pointwise layers whole, in a budget just below their own size: the planner
        # shrinks the plan to fit, the same way for the command as for Model.plan
        layers, ratios = _demo_layers("pwconv")[-4:-1], None
        kb = m.plan(method="sparse", layers=layers).arena_bytes // 1024
        opts, kw = ["--budget", str(kb)], {"budget": kb * 1024}
    expected = m.plan(method="sparse", layers=layers, ratios=ratios, **kw)
    if case == "budget":
        assert expected.arena_bytes < m.plan(method="sparse", layers=layers).arena_bytes
    argv = ["plan", demo_file, "--method", "sparse", "--layers", ",".join(map(str, layers)), *opts]
    if ratios is not None:
        argv += ["--ratios", ",".join(map(str, ratios))]
    assert cli.main(argv + ["--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["method"] == "sparse" and row["arena_bytes"] == expected.arena_bytes
    # the listed layers and the classifier, each with the channels of its ratio
    assert row["layers"] == expected.layers == sorted(layers + _demo_layers("fc")[-1:])
    assert row["channels"] == {str(i): len(c) for i, c in expected.channels.items()}
    assert (row["r"], row["ratio"], row["breakdown"]) == (expected.r, expected.ratio, expected.breakdown)
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == f"{demo_file}:\n{expected.describe()}\n"


@pytest.mark.parametrize("opts, says", [
    (["--method", "sparse"], "tinymp: method 'sparse' needs --layers: the indices of the layers to "
                             "train, comma-separated (`tinymp info {model} --layers` lists each "
                             "layer's index and type; conv, dwconv, pwconv and fc layers can be trained)"),
    (["--method", "sparse", "--ratios", "1"], "tinymp: method 'sparse' needs --layers:"),
    (["--layers", "10"], "tinymp: --layers only applies to a training plan of method sparse: add "
                         "--method sparse"),
    (["--method", "full", "--layers", "10"], "tinymp: --layers only applies to method 'sparse', "
                                             "not 'full'"),
    (["--method", "tinymp", "--layers", "10", "--ratios", "0.5"],
     "tinymp: --layers, --ratios only applies to method 'sparse', not 'tinymp'"),
    (["--method", "sparse", "--layers", ""], "tinymp: --layers needs a comma-separated list"),
    (["--method", "sparse", "--layers", "10,,14"], "tinymp: --layers '10,,14' has an empty item"),
    (["--method", "sparse", "--layers", "10,"], "tinymp: --layers '10,' has an empty item"),
    (["--method", "sparse", "--layers", "10,x"], "tinymp: --layers: 'x' is not a layer index"),
    (["--method", "sparse", "--layers", "1.5"], "tinymp: --layers: '1.5' is not a layer index"),
    (["--method", "sparse", "--layers=-1"], "tinymp: --layers: '-1' is not a layer index"),
    (["--method", "sparse", "--layers", "1_0"], "tinymp: --layers: '1_0' is not a layer index"),
    (["--method", "sparse", "--layers", "10,14,010"], "tinymp: --layers: layer 10 is given twice"),
    (["--method", "sparse", "--layers", "9" * 5000], "tinymp: --layers: 9999999999... (5000 digits) "
                                                     "is not a layer of any model"),
    (["--method", "sparse", "--layers", "10,14", "--ratios", "0.5"],
     "tinymp: --ratios gives 1 ratio for 2 layers: give one per layer of --layers"),
    (["--method", "sparse", "--layers", "10", "--ratios", "0.5,0.5"],
     "tinymp: --ratios gives 2 ratios for 1 layer"),
    (["--method", "sparse", "--layers", "10,14", "--ratios", "0.5,"], "tinymp: --ratios '0.5,' has "
                                                                      "an empty item"),
    (["--method", "sparse", "--layers", "10,14", "--ratios", "0.5,nan"],
     "tinymp: --ratios: 'nan' is not a number"),
])
def test_plan_sparse_options_refused_in_one_line(demo_file, opts, says, capsys):
    assert cli.main(["plan", demo_file, *opts]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith(says.format(model=shlex.quote(demo_file))), lines[0]


def test_plan_sparse_layers_the_engine_refuses_name_the_model(demo_file, capsys):
    n = len(tinymp.Model(zoo.demo())._layers())
    (add, *_), (pw, *_) = _demo_layers("add"), _demo_layers("pwconv")
    for opts, says in [
        (["--layers", str(add)], f"tinymp: layer {add}: sparse: a listed layer has no weights"),
        (["--layers", str(n)], f"tinymp: a sparse layer index must be between 0 and {n - 1}, got {n}"),
        (["--layers", str(pw), "--ratios", "1.5"], "tinymp: a sparse ratio must be in (0, 1], got 1.5"),
        (["--layers", str(pw), "--ratios", "0"], "tinymp: a sparse ratio must be in (0, 1], got 0"),
        (["--layers", str(pw), "--ratio", "0.5"], "tinymp: method 'sparse' takes a ratio per listed "
                                                  "layer (ratios): ratio must be 1"),
        (["--layers", str(pw), "--budget", "1"], "tinymp: method 'sparse' does not fit a budget of "
                                                 "1024 bytes"),
    ]:
        assert cli.main(["plan", demo_file, "--method", "sparse", *opts]) == 2
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert out == "" and len(lines) == 1, err
        assert lines[0].startswith(says) and lines[0].endswith(f" ({demo_file})"), lines[0]


@pytest.mark.parametrize("method, n", [("tinytrain", 40), ("tinytrain", 5), ("tinymp", 40)])
def test_plan_with_support_is_the_engine_plan_over_the_first_samples(demo_file, tmp_path, capsys,
                                                                     method, n):
    # tinytrain could not be planned from the command at all: its selection pass needs samples.
    # int8 samples are taken as they are, so the expected support is the file's own bytes
    import numpy as np
    m = tinymp.Model(zoo.demo())
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, size=(n, *m.input_shape), dtype=np.int8)
    y = rng.integers(0, m.num_classes, size=n)
    f = tmp_path / "support.npz"
    np.savez(f, x=x, y=y)
    k = min(n, 32)  # as many as the board's agent reads of its store
    expected = m.plan(method=method, support=([x[i].tobytes() for i in range(k)],
                                              [int(v) for v in y[:k]]))
    argv = ["plan", demo_file, "--method", method, "--support", str(f)]
    assert cli.main(argv + ["--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["arena_bytes"] == expected.arena_bytes and row["layers"] == expected.layers
    assert row["channels"] == {str(i): len(c) for i, c in expected.channels.items()}
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == f"{demo_file}:\n{expected.describe()}\n"
    if n > 32 and method == "tinytrain":
        # a pass over all the samples would have chosen other channels: the 33rd on did not count
        every = m.plan(method=method, support=([x[i].tobytes() for i in range(n)], [int(v) for v in y]))
        assert every.channels != expected.channels


@pytest.mark.parametrize("opts, says", [
    (["--method", "tinytrain"], "tinymp: method 'tinytrain' needs support samples for its "
                                "selection pass: give --support"),
    (["--method", "last", "--support", "s.npz"], "tinymp: --support only applies to methods "
                                                 "tinytrain and tinymp, not 'last'"),
    (["--support", "s.npz"], "tinymp: --support only applies to a training plan: add --method"),
    (["--method", "tinytrain", "--support", "missing.npz"], "tinymp: no such samples file: "
                                                            "missing.npz"),
])
def test_plan_support_refusals_are_one_line(demo_file, capsys, opts, says):
    assert cli.main(["plan", demo_file, *opts]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith(says), err


def test_plan_support_of_another_shape_names_the_model(demo_file, tmp_path, capsys):
    import numpy as np
    f = tmp_path / "s.npz"
    np.savez(f, x=np.zeros((3, 8, 8), np.uint8), y=np.zeros(3, np.int64))
    assert cli.main(["plan", demo_file, "--method", "tinytrain", "--support", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert "have shape (8, 8, 1); the model takes 32x32x1" in err and err.endswith(f", for {demo_file}")
    # a model-independent fault is said once, before any model is read, without a model's name
    assert cli.main(["plan", demo_file, "--method", "tinytrain", "--support", "missing.npz"]) == 2
    assert capsys.readouterr().err.strip() == "tinymp: no such samples file: missing.npz"


def test_an_experiment_refused_for_a_missing_package_makes_no_folder(tmp_path):
    # scikit-learn hidden: the refusal comes before --out is made (it was made, then left empty)
    out = tmp_path / "a" / "b"
    code = ("import sys; sys.modules['sklearn'] = None; from tinymp import cli; "
            f"sys.exit(cli.main(['experiment', '--quick', '--out', {str(out)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == ("tinymp: the experiment needs scikit-learn for its digits "
                                "(pip install scikit-learn)"), r.stderr
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("opt, value", [("--shots", "5,,10"), ("--methods", "last,"),
                                        ("--tasks", ",shift")])
def test_an_empty_list_item_is_refused(opt, value, tmp_path):
    # it was dropped silently: "5,,10" ran shots 5 and 10 (plan --layers refused the same)
    code, out, err = run("experiment", "--quick", opt, value, "--out", str(tmp_path / "o"))
    assert code == 2 and out == ""
    assert err.strip() == f"tinymp: {opt}: {value!r} has an empty item", err
    assert not (tmp_path / "o").exists()
