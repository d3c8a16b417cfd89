"""`tinymp bench --model FILE`: every method on a model of the user's, on the emulated Cortex-M7.

Checks that the user's file and budget are what is benched (the emulated plans are the host
build's plans for that budget), that a method that cannot be planned within the budget is
skipped with its reason while the others are still benched, and that a bad file or budget is one
line and exit status 2 before anything runs. No figure is asserted against a target.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

import tinymp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "host", "tinymp", "models", "demo.tmpm")
_missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm", "make") if shutil.which(t) is None]
needs_tools = pytest.mark.skipif(
    bool(_missing), reason=f"{', '.join(_missing)} not installed: the Cortex-M7 bench needs them")


def bench(*args, cwd=None):
    r = subprocess.run([sys.executable, "-m", "tinymp.bench", *args], capture_output=True,
                       text=True, timeout=900, cwd=cwd or ROOT)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture(scope="module")
def elf():
    r = subprocess.run(["make", "-s", "-C", ROOT, "bench-train-elf"], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_tools
def test_the_users_model_within_the_users_budget(elf, tmp_path):
    mine = tmp_path / "mine.tmpm"
    shutil.copy(DEMO, mine)
    m = tinymp.Model(mine.read_bytes())
    # `last`'s own size: too small for any tinymp plan (the host build refuses it too), so
    # tinymp is skipped and `last` (planned without a budget) is benched
    small = m.plan(method="last").arena_bytes
    with pytest.raises(ValueError):
        m.plan(method="tinymp", budget=small)
    for budget, expect in ((12000, ["last", "tinymp r=4"]), (small, ["last"])):
        out = tmp_path / str(budget)
        # --budget is in KB, as plan and train take it; these byte counts are exact in KB
        code, stdout, err = bench("--quick", "--model", str(mine), "--budget", repr(budget / 1024),
                                  "--out", str(out))
        if expect == ["last"]:
            # `last` is a baseline at its own size: with no method that plans within the budget
            # benched, the budget is what failed (status 2), and nothing is written
            assert code == 2, err
            last = err.strip().splitlines()[-1]
            assert last.startswith(f"tinymp: bench: mine.tmpm: no method that plans within the "
                                   f"budget ({budget:,} bytes) could run ("), err
            # the host planner's words (it plans every configuration before the emulator runs)
            assert f"smallest setting needs {m_smallest(m, budget)} bytes" in last, err
            assert "tinymp r=4" in stdout and "skipped" in stdout
            assert not out.exists()
            continue
        assert code == 0, err
        res = json.loads((out / "results.json").read_text())
        (model,) = res["models"]
        assert model["title"] == "mine.tmpm" and model["key"] == "file"
        assert [c["label"] for c in model["configs"]] == expect
        for c in model["configs"]:
            opts = dict(c["options"])
            assert opts.get("budget", budget) == budget
            p = m.plan(**opts)
            assert c["arena_bytes"] == p.arena_bytes <= (budget if "budget" in opts else p.arena_bytes)
            assert c["host"]["high_water_equal"]
        md = (out / "RESULTS.md").read_text()
        assert "## mine.tmpm" in md and "--model" in md


def m_smallest(m, budget):
    """The bytes the host planner says a tinymp plan needs at least (it does not fit `budget`)."""
    import re
    try:
        m.plan(method="tinymp", budget=budget)
    except ValueError as e:
        return int(re.search(r"smallest setting needs (\d+) bytes", str(e)).group(1))
    raise AssertionError("it fits")


@needs_tools
def test_json_is_alone_on_stdout(elf, tmp_path):
    code, stdout, err = bench("--quick", "--models", "demo", "--json", "--out", str(tmp_path / "o"))
    assert code == 0, err
    res = json.loads(stdout)  # the whole of stdout: progress and headlines went to stderr
    assert res == json.loads((tmp_path / "o" / "results.json").read_text())
    assert "== demo" in err and any(ln.startswith("wrote ") for ln in err.splitlines())


@needs_tools
def test_the_bench_program_from_another_folder(elf, tmp_path):
    # a `pip install .` copy cannot see the checkout: the program in the current folder's
    # build/bench, or TINYMP_BENCH_ELF
    r = subprocess.run([sys.executable, "-m", "tinymp.bench", "--quick", "--models", "demo",
                        "--out", "o"], capture_output=True, text=True, timeout=900,
                       cwd=str(tmp_path),
                       env=dict(os.environ, TINYMP_BENCH_ELF=os.path.join(
                           ROOT, "build", "bench", "bench_train.elf")))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "results.json").exists()


def test_a_missing_bench_program_says_how_and_writes_nothing(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tinymp.bench", "--quick", "--models", "demo",
                        "--out", str(tmp_path / "a" / "b")], capture_output=True, text=True,
                       timeout=120, cwd=str(tmp_path),
                       env=dict(os.environ, TINYMP_BENCH_ELF=str(tmp_path / "none.elf"),
                                BENCH_QEMU=sys.executable))
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"tinymp: bench: TINYMP_BENCH_ELF names {tmp_path / 'none.elf'}, which is not a file: "
        "`make bench-train-elf` builds it (build/bench/bench_train.elf)"), r.stderr
    assert os.listdir(tmp_path) == []


def _support_samples(m):
    from tinymp import bench as B
    return B.make_samples(m, 8)


@pytest.mark.parametrize("quick", [True, False])
def test_a_budget_nothing_fits_is_refused_before_any_emulator_run(quick, tmp_path):
    # the host build plans every configuration first: with a budget no budgeted method fits,
    # the emulator (here a stand-in that notes each start) is never started, in the full bench
    # (whose baselines take minutes each on a large model) as in --quick
    m = tinymp.Model(DEMO)
    small = 4096  # below every method's smallest plan (the host planner says so below)
    qemu = tmp_path / "qemu"
    started = tmp_path / "started"
    qemu.write_text("#!/bin/sh\n[ \"$1\" = --version ] && exit 0\necho \"$@\" >> '%s'\n"
                    "exit 1\n" % started)
    qemu.chmod(0o755)
    elf = tmp_path / "bench.elf"
    elf.write_bytes(b"\x7fELF")
    r = subprocess.run([sys.executable, "-m", "tinymp.bench", *(["--quick"] if quick else []),
                        "--model", DEMO, "--budget", repr(small / 1024), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=300,
                       cwd=str(tmp_path), env=dict(os.environ, TINYMP_BENCH_ELF=str(elf),
                                                   BENCH_QEMU=str(qemu)))
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tinymp: bench: demo.tmpm: no method that plans within the budget "
                           f"({small:,} bytes) could run ("), r.stderr
    assert "smallest setting needs" in last, last
    with pytest.raises(ValueError, match="smallest setting needs"):
        m.plan("tinytrain", small, support=_support_samples(m))
    assert not started.exists()
    assert not (tmp_path / "o").exists()
    skipped = [ln.split()[0:2] for ln in r.stdout.splitlines() if "skipped:" in ln]
    assert ["tinymp", "r=4"] in skipped and (quick or ["tinytrain", "skipped:"] in skipped)


@pytest.mark.parametrize("args,needle", [
    (["--budget", "64"], "--budget plans the methods on --model files"),
    (["--model", "no-such-file.tmpm"], "cannot read no-such-file.tmpm"),
    (["--model", "README.md"], "README.md is not a usable tinymp model"),
    (["--model", DEMO, "--budget", "0"], "--budget must be a positive number of KB"),
    (["--model", DEMO, "--budget", "nan"], "--budget must be a positive number of KB"),
    (["--models", "nosuch"], "unknown model nosuch"),
])
def test_bad_input_is_one_line_before_anything_runs(args, needle, tmp_path):
    code, out, err = bench(*args, "--out", str(tmp_path / "out"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinymp: bench:") and needle in lines[0], err
    assert not (tmp_path / "out").exists()


def _one_line(code, err, needle):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinymp: bench:") and needle in lines[0], err


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"),
                    reason="needs POSIX FIFOs and /dev/zero")
@pytest.mark.parametrize("what", ["--model", "--notes"])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_file_that_is_not_a_regular_one_is_refused_unread(what, kind, tmp_path):
    # a FIFO would block the read for ever, /dev/zero never ends (the whole read took memory
    # without bound, then died with MemoryError): both are refused before they are read
    if kind == "fifo":
        path = str(tmp_path / "pipe")
        os.mkfifo(path)
    else:
        path = "/dev/zero"
    args = ["--model", path] if what == "--model" else ["--model", DEMO, "--notes", path]
    code, out, err = bench(*args, "--out", str(tmp_path / "out"))
    _one_line(code, err, f"{what + ' ' if what == '--notes' else ''}{path} is not a regular file")
    assert not (tmp_path / "out").exists()


def test_a_model_file_larger_than_the_emulated_board_is_refused(tmp_path):
    big = tmp_path / "big.tmpm"
    with open(big, "wb") as f:  # the demo model, then zeros up to one byte past 16 MiB
        with open(DEMO, "rb") as d:
            f.write(d.read())
        f.truncate((16 << 20) + 1)
    code, out, err = bench("--model", str(big), "--out", str(tmp_path / "out"))
    _one_line(code, err, f"{big} is larger than the 16 MiB the emulated Cortex-M7 has")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("notes,needle", [
    ("", "cannot read --notes : No such file or directory"),
    ("BINARY", "is not UTF-8 text"),
    ("LONG", "is larger than 1 MiB (a hand-written reading"),
])
def test_a_bad_notes_file_is_one_line(notes, needle, tmp_path):
    # an empty --notes was taken for no notes at all; a reading past the cap is not one
    if notes == "BINARY":
        notes = str(tmp_path / "notes.md")
        open(notes, "wb").write(b"## Reading\n\xff\xfe\n")
    elif notes == "LONG":
        notes = str(tmp_path / "notes.md")
        open(notes, "w").write("x" * (1 << 20) + "\n")
    code, out, err = bench("--model", DEMO, "--notes", notes, "--out", str(tmp_path / "out"))
    _one_line(code, err, needle)
    assert not (tmp_path / "out").exists()


def _conv_flatten_fc(path):
    """A model ending conv -> fc on a 4x4 map: the planner trains through such an fc only at
    r = 1, so the condensed tinymp plans are refused and the other methods are not."""
    import numpy as np
    from tinymp import builder
    rng = np.random.default_rng(3)
    g = builder.Graph((8, 8, 3))
    x = g.conv(g.input, rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8), stride=2, act="relu")
    g.fc(x, rng.normal(0, 0.1, (10, 4 * 4 * 8)), rng.normal(0, 0.1, 10))
    path.write_bytes(g.quantize(rng.random((16, 8, 8, 3), dtype=np.float32)))
    m = tinymp.Model(path.read_bytes())
    with pytest.raises(ValueError):
        m.plan(method="tinymp", r=4)
    m.plan(method="tinymp", r=1)
    return m


@needs_tools
def test_a_method_the_planner_refuses_is_skipped_not_fatal(elf, tmp_path):
    mine = tmp_path / "flat.tmpm"
    _conv_flatten_fc(mine)
    out = tmp_path / "out"
    code, stdout, err = bench("--model", str(mine), "--out", str(out), cwd=str(tmp_path))
    assert code == 0, err
    (model,) = json.loads((out / "results.json").read_text())["models"]
    ran = [c["label"] for c in model["configs"]]
    skipped = {s["label"]: s["why"] for s in model["skipped"]}
    assert "tinymp r=4" in skipped and "tinymp r=1" in ran and "last" in ran
    assert not set(ran) & set(skipped)
    # the engine's own prefix is not doubled behind the bench's
    assert not any(w.startswith("tinymp:") for w in skipped.values()), skipped


def test_results_of_a_users_model_never_land_in_the_projects_bench_folder(tmp_path, monkeypatch):
    from tinymp import bench as B
    seen = {}

    def fake_run(a, *rest):  # stop right where the bench would start
        seen["out"] = a.out
        seen["out_exists"] = os.path.isdir(os.path.join(str(tmp_path), "bench-models"))
        return 1, None
    monkeypatch.setattr(B, "find_tools", lambda root: ("qemu", "elf"))
    monkeypatch.setattr(B, "_run", fake_run)
    monkeypatch.chdir(tmp_path)
    assert B.main(["--model", DEMO]) == 1
    assert seen == {"out": "bench-models", "out_exists": True}
    # and a run that wrote nothing takes the folder it made away again
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case", ["file", "huge-budget"])
def test_a_bad_out_or_budget_stops_before_the_run(case, tmp_path):
    args = ["--model", DEMO]
    if case == "file":
        f = tmp_path / "taken"
        f.write_text("mine")
        args += ["--out", str(f)]
        needle = "cannot write results to"
    else:
        args += ["--budget", str(2 ** 22), "--out", str(tmp_path / "o")]
        needle = "--budget must be a positive number of KB (1 KB = 1024 bytes), at most 4,194,303"
    code, out, err = bench(*args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert "==" not in out  # nothing was benched
    if case == "file":
        assert (tmp_path / "taken").read_text() == "mine"


def test_the_host_plans_each_configuration_once(tmp_path, monkeypatch):
    # the plans made up front (the budget check before any emulator run) are the ones the host
    # build's comparison run trains with: planned once, not again (tinytrain's includes its
    # selection pass over the support samples)
    from tinymp import bench as B
    m = tinymp.Model(DEMO)
    given = []

    def fake_host(m_, opts, support, xs, ys, steps, cached, run, apu, plan=None):
        given.append((dict(opts), support, plan))
        raise ValueError("stopped here by the test")

    made = []
    real_kwargs = B._plan_kwargs
    monkeypatch.setattr(B, "_plan_kwargs", lambda *a: made.append(a[0]) or real_kwargs(*a))
    monkeypatch.setattr(B, "run_m7", lambda *a, **kw: {})
    monkeypatch.setattr(B, "run_host", fake_host)
    budget = 12000
    with pytest.raises(B.UserModelError):  # nothing ran to the end: the test stopped each one
        B.bench_model("file", ROOT, "qemu", "elf", str(tmp_path), quick=False,
                      progress=lambda *a: None, user=("mine.tmpm", open(DEMO, "rb").read()),
                      budget=budget)
    labels = [c[0] for c in B.configs(m, "file", budget=budget, skipped=[])]
    assert len(given) == len(labels) == len(made) >= 8, (given, labels)
    xs, ys = B.make_samples(m, min(B.RUN_CLASSES, m.num_classes) * B.RUN_PER_CLASS)
    for opts, support, plan in given:
        assert plan is not None, opts
        again = m.plan(**dict(opts, **({"support": (xs[:support], ys[:support])} if support else {})))
        assert (plan.arena_bytes, plan.table_bytes) == (again.arena_bytes, again.table_bytes), opts
