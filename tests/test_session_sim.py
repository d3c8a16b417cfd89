"""Sessions against the simulated board (a CPython process running tinymp_agent on a pty, reached
with pyserial): push, collect, train, evaluate, save/roll back/reset, with faults injected into
the link. Independent checks: SHA-256 of what the board holds, the engine run in this process on
the same samples, the scene images the simulated camera shows, and sample counts."""
import errno
import hashlib
import os

import numpy as np
import pytest

import tinymp
from tinymp import tinymp_agent as A
from tinymp import zoo
from tinymp.session import commands as C
from tinymp.session import dataset as D
from tinymp.session import link, report, run
from tinymp.session import protocol as P

MODELS = os.path.join(os.path.dirname(tinymp.__file__), "models")
SCENE = os.path.join(MODELS, "digits_shifted.npz")
HELD = os.path.join(MODELS, "digits_shifted_test.npz")
DEMO = zoo.demo()
DEMO_SHA = hashlib.sha256(DEMO).hexdigest()


@pytest.fixture
def sess(tmp_path):
    return C.Session(str(tmp_path / "session"))


def open_sim(sess, profile="OPENMV_H7", **kw):
    return link.open_board("sim:" + profile, sim_dir=sess.sim_dir(profile), scene=SCENE, **kw)


def flash(sess, profile="OPENMV_H7"):
    return os.path.join(sess.sim_dir(profile), "flash")


def meta_of(board):
    return C.model_meta(board.info)


def scene():
    with np.load(SCENE) as d:
        return d["x"], d["y"]


def held_out(meta, n=None):
    x, y, _ = D.load_samples(HELD, meta["input_shape"], meta["input_scale"],
                             meta["input_zero_point"], meta["num_classes"])
    return (x, y) if n is None else (x[:n], y[:n])


def pushed(sess, data=DEMO, profile="OPENMV_H7"):
    with open_sim(sess, profile) as b:
        C.push(b, data, show=False)


def one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinymp:"), err
    return err[0]


# --- info, budgets, push --------------------------------------------------------------------

def test_info_reports_the_profile(sess):
    from tinymp import boards
    prof = boards.load("OPENMV_H7")
    with open_sim(sess) as b:
        i = b.info
    assert i["simulated"] is True and i["board"] == "OPENMV_H7 (simulated)"
    assert i["arena_budget"] == prof["arena_budget_bytes"] == 262144
    assert i["model_flash"] == prof["model_flash_bytes"]
    assert i["mem_total"] == prof["sram_bytes"] and i["romfs"] is prof["romfs"]
    # the heap the camera's MicroPython starts with (PLATFORM: OpenMV firmware v5, 64 KB + 264 KB)
    assert i["mem_free"] == prof["heap_bytes"] == (64 + 264) * 1024
    assert i["clock"] == "host" and i["tinymp"] == tinymp.__version__
    assert i["camera"] is True and i["model"] is None and i["storage"] is True


def test_push_commits_and_survives_a_restart(sess):
    with open_sim(sess) as b:
        res = C.push(b, DEMO, show=False, chunk=1000)
        assert res["sha256"] == DEMO_SHA and res["bytes"] == len(DEMO)
    with open(os.path.join(flash(sess), "model.tmpm"), "rb") as f:
        assert f.read() == DEMO
    with open_sim(sess) as b:  # a new board process: the flash kept the model
        m = meta_of(b)
        assert m["sha256"] == DEMO_SHA and m["inference_arena_bytes"] == tinymp.Model(DEMO).inference_arena_bytes
        assert C.push(b, DEMO, show=False)["skipped"]
    assert not [n for n in os.listdir(flash(sess)) if n.endswith((".part", ".new", ".tmp"))]


def test_board_killed_mid_push_keeps_the_last_good_model(sess, capsys, monkeypatch):
    big = zoo.mobilenetv2(width=0.35, resolution=32, num_classes=10)  # 512 KB
    pushed(sess, DEMO, "NUCLEO_H743ZI2")
    holder = {}

    def kill_on_6th_chunk(n, data):
        if data[2] == P.PUSH_DATA:
            holder["chunks"] = holder.get("chunks", 0) + 1
            if holder["chunks"] == 6:
                holder["board"].sim.kill()

    real = link.open_board

    def open_with_hook(*a, **kw):
        b = real(*a, before_write=kill_on_6th_chunk, **kw)
        holder["board"] = b
        return b

    model = sess.path + "-big.tmpm"
    os.makedirs(os.path.dirname(model), exist_ok=True)
    with open(model, "wb") as f:
        f.write(big)
    monkeypatch.setattr(link, "open_board", open_with_hook)
    args = run._ns(_args(sess, "NUCLEO_H743ZI2"), model=model)
    assert run.handle_errors(run.cmd_push, args) == 1
    line = one_line(capsys)
    assert "push interrupted" in line and "keeps its previous model" in line and "killed" in line
    monkeypatch.setattr(link, "open_board", real)
    with open_sim(sess, "NUCLEO_H743ZI2") as b:
        assert meta_of(b)["sha256"] == DEMO_SHA  # the last good model
        x, y = held_out(meta_of(b), 40)
        assert C.evaluate(b, x, y, "pretrained", show=False)["accuracy"] > 0.2
        res = C.push(b, big, show=False)  # resumes where the dead board stopped
        assert res["resumed_from"] and 0 < res["resumed_from"] < len(big)
        assert res["sha256"] == hashlib.sha256(big).hexdigest()
    with open(os.path.join(flash(sess, "NUCLEO_H743ZI2"), "model.tmpm"), "rb") as f:
        assert f.read() == big


def _args(sess, profile="OPENMV_H7", **kw):
    import argparse
    d = dict(port="sim", board=profile, session=sess.path, timeout=None, json=False, quiet=True,
             scene=SCENE)
    d.update(kw)
    return argparse.Namespace(**d)


def test_model_too_big_for_the_profile(sess, capsys):
    big = zoo.mobilenetv2(width=0.35, resolution=32, num_classes=10)
    with open_sim(sess) as b:
        with pytest.raises(C.SessionError) as e:
            C.check_fits(b, big, tinymp.Model(big))
        assert e.value.code == 2 and "does not fit the 131,072 bytes of model flash" in str(e.value)
        # the board enforces it too, whatever the PC says
        with pytest.raises(link.BoardError) as e:
            b.request(P.PUSH_BEGIN, {"size": len(big), "sha256": hashlib.sha256(big).hexdigest()})
        assert e.value.code == "too_big"
    assert not os.path.exists(os.path.join(flash(sess), "model.tmpm"))


def test_bad_pushes_leave_the_previous_model(sess):
    pushed(sess)
    junk = b"not a model" * 100
    with open_sim(sess) as b:
        # a wrong SHA-256
        b.request(P.PUSH_BEGIN, {"size": len(junk), "sha256": "0" * 64})
        b.request(P.PUSH_DATA, {"offset": 0, "data": junk})
        with pytest.raises(link.BoardError) as e:
            b.request(P.PUSH_COMMIT)
        assert e.value.code == "sha256"
        # the right hash of bytes the engine refuses
        b.request(P.PUSH_BEGIN, {"size": len(junk), "sha256": hashlib.sha256(junk).hexdigest()})
        b.request(P.PUSH_DATA, {"offset": 0, "data": junk})
        with pytest.raises(link.BoardError) as e:
            b.request(P.PUSH_COMMIT)
        assert e.value.code == "bad_model" and "magic" in e.value.msg
        # commit before all bytes arrived
        b.request(P.PUSH_BEGIN, {"size": len(DEMO) + 1, "sha256": "1" * 64})
        with pytest.raises(link.BoardError) as e:
            b.request(P.PUSH_COMMIT)
        assert e.value.code == "incomplete"
        assert C.refresh_info(b)["model"]["sha256"] == DEMO_SHA


# --- samples --------------------------------------------------------------------------------

def test_capture_gives_the_scene_images_quantised(sess):
    pushed(sess)
    sx, sy = scene()
    with open_sim(sess) as b:
        meta = meta_of(b)
        ds = C.open_dataset(sess, meta, "sim")
        res = C.collect_capture(b, ds, 7, 4, show=False)
        assert res == {"added": 4, "total": 4, "label_total": 4}
        st = b.request(P.SAMPLES_STATUS)
        assert st["count"] == 4 and st["dataset"] == ds.uid
        again = C.collect_capture(b, ds, 7, 4, show=False)  # already there: nothing to do
        assert again["added"] == 0
    lut = D.quantize_lut(meta["input_scale"], meta["input_zero_point"])
    want = lut[sx[sy == 7][:4]]
    assert np.array_equal(ds.samples()[..., 0], want)
    assert list(ds.labels) == [7] * 4
    # the board's store holds the same bytes (its record layout: u32 id, u16 label, u16 0, bytes)
    with open(os.path.join(flash(sess), "samples.bin"), "rb") as f:
        raw = f.read()[A.STORE_HEAD:]
    rec = 8 + ds.sample_bytes
    assert len(raw) == 4 * rec
    for i in range(4):
        assert raw[i * rec:i * rec + 8] == bytes([i, 0, 0, 0, 7, 0, 0, 0])
        assert raw[i * rec + 8:(i + 1) * rec] == want[i].tobytes()


def test_board_killed_mid_collect_loses_no_acknowledged_sample(sess, capsys, monkeypatch):
    """The board dies after sending its 6th snapshot, before it hears that the PC kept it."""
    pushed(sess)
    keeps = []
    holder = {}

    def hook(n, data):
        if data[2] == P.CAPTURE_KEEP:
            keeps.append(n)
            if len(keeps) == 6:
                holder["board"].sim.kill()

    real = link.open_board

    def open_with_hook(*a, **kw):
        b = real(*a, before_write=hook, **kw)
        holder["board"] = b
        return b

    monkeypatch.setattr(link, "open_board", open_with_hook)
    args = _args(sess, source=None, label=2, count=12, eval=False)
    assert run.handle_errors(run.cmd_collect, args) == 1
    line = one_line(capsys)
    assert "collect interrupted" in line and "6 new samples saved" in line and "resume" in line
    ds = D.Dataset.open(sess.dataset_dir)
    # 5 acknowledged by the board, and the 6th, saved before the board was to be told
    assert len(ds) == 6
    monkeypatch.setattr(link, "open_board", real)
    assert run.handle_errors(run.cmd_collect, args) == 0  # resumes
    ds = D.Dataset.open(sess.dataset_dir)
    assert len(ds) == 12 and list(ds.labels) == [2] * 12
    sx, sy = scene()
    lut = D.quantize_lut(ds.manifest["sample"]["scale"], ds.manifest["sample"]["zero_point"])
    assert np.array_equal(ds.samples()[..., 0], lut[sx[sy == 2]][:12])
    with open_sim(sess) as b:
        assert b.request(P.SAMPLES_STATUS)["count"] == 12  # the 6th reached the board by sync


def test_full_disk_on_the_pc_mid_collect(sess, capsys, monkeypatch):
    pushed(sess)
    calls = {"n": 0}
    real_write = D._write_all

    def write_until_full(f, data):
        calls["n"] += 1
        if calls["n"] == 8:  # the 4th sample's bytes (2 writes per sample; 1 for the manifest)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(f, data)

    monkeypatch.setattr(D, "_write_all", write_until_full)
    args = _args(sess, source=None, label=4, count=10, eval=False)
    assert run.handle_errors(run.cmd_collect, args) == 1
    line = one_line(capsys)
    assert "the disk is full" in line and "none lost" in line
    monkeypatch.setattr(D, "_write_all", real_write)
    ds = D.Dataset.open(sess.dataset_dir)
    n = len(ds)
    assert n == 3 and os.path.getsize(os.path.join(ds.path, "shard-00000.bin")) == n * ds.sample_bytes
    with open_sim(sess) as b:
        assert b.request(P.SAMPLES_STATUS)["count"] == n  # the board was told only of these
    assert run.handle_errors(run.cmd_collect, args) == 0
    assert len(D.Dataset.open(sess.dataset_dir)) == 10


def _import(sess, b, n):
    """The scene's samples in the board model's format, the first n imported into the session's
    dataset: (the model's meta, the dataset)."""
    meta = meta_of(b)
    x, y, src = D.load_samples(SCENE, meta["input_shape"], meta["input_scale"],
                               meta["input_zero_point"], meta["num_classes"])
    ds = C.open_dataset(sess, meta, "sim")
    C.import_samples(ds, x[:n], y[:n], src[:n], show=False)
    return meta, ds


def test_the_board_refuses_bad_trainer_options_as_a_user_error(sess):
    """Values the CLI checks up front, sent straight to the agent: the Trainer's ValueError is a
    refused request (exit 2), not a board failure, and the board trains afterwards."""
    pushed(sess)
    with open_sim(sess) as b:
        meta, ds = _import(sess, b, 10)
        for opts in ({"lr": 1e9}, {"seed": -1}, {"period": -1}):
            with pytest.raises(C.SessionError) as e:
                C.train(b, ds, dict(method="last", **opts), steps=2, show=False)
            assert e.value.code == 2 and "cannot start training" in str(e.value), opts
        assert len(C.train(b, ds, {"method": "last"}, steps=2, show=False)["events"]) == 2


def test_import_and_sync_resume(sess):
    pushed(sess)
    with open_sim(sess) as b:
        meta = meta_of(b)
        x, y, src = D.load_samples(SCENE, meta["input_shape"], meta["input_scale"],
                                   meta["input_zero_point"], meta["num_classes"])
        ds = C.open_dataset(sess, meta, "sim")
        assert C.import_samples(ds, x[:50], y[:50], src[:50], show=False) == 50
        assert C.import_samples(ds, x, y, src, show=False) == len(y) - 50  # no duplicates
        assert C.sync_samples(b, ds, show=False) == len(y)
        assert C.sync_samples(b, ds, show=False) == 0
        # samples of the wrong dataset on the board are replaced, not mixed
        other = D.Dataset.create(sess.path + "-other", shape=meta["input_shape"],
                                 scale=meta["input_scale"], zero_point=meta["input_zero_point"],
                                 num_classes=10)
        other.append(x[0].tobytes(), int(y[0]))
        assert C.sync_samples(b, other, show=False) == 1
        assert b.request(P.SAMPLES_STATUS)["count"] == 1
        with pytest.raises(link.BoardError) as e:
            b.request(P.SAMPLES_PUT, {"dataset": other.uid, "first": 1, "labels": [10],
                                      "data": x[0].tobytes()})
        assert e.value.code == "bad_label"
        with pytest.raises(link.BoardError) as e:
            b.request(P.SAMPLES_PUT, {"dataset": other.uid, "first": 1, "labels": [1],
                                      "data": x[0].tobytes()[:-1]})
        assert e.value.code == "bad_shape"


# --- faults on the link ---------------------------------------------------------------------

def _session_run(sess, faults=None, board_faults=None, timeout=None):
    kw = dict(faults=faults, board_faults=board_faults, timeout=timeout)
    with open_sim(sess, **kw) as b:
        C.push(b, DEMO, show=False, chunk=2048)
        meta, ds = _import(sess, b, 40)
        C.collect_capture(b, ds, 3, int(ds.counts()[3]) + 3, show=False)
        rec = C.train(b, ds, {"method": "tinymp", "lr": 0.002, "seed": 3}, steps=40, show=False)
        xe, ye = held_out(meta, 60)
        ev = C.evaluate(b, xe, ye, "personalised", show=False)
        stats = dict(b.link.stats)
        injected = getattr(b.link.port, "injected", None)
    return rec, ev, stats, injected, ds


def test_a_session_through_a_damaged_link_gives_the_clean_result(tmp_path):
    clean = C.Session(str(tmp_path / "clean"))
    noisy = C.Session(str(tmp_path / "noisy"))
    rec0, ev0, st0, _, ds0 = _session_run(clean)
    assert st0["retransmissions"] == 0
    faults = {"flip": 0.06, "drop": 0.05, "dup": 0.06, "seed": 11}
    rec1, ev1, st1, injected, ds1 = _session_run(
        noisy, faults=faults, board_faults={"flip": 0.06, "drop": 0.05, "dup": 0.06, "seed": 12},
        timeout=0.25)
    assert all(v > 0 for v in injected.values()), injected
    assert st1["retransmissions"] > 0 and st1["bad_frames"] > 0
    # duplicated requests ran once: the same training, step for step, and the same predictions
    assert [e[:5] for e in rec1["events"]] == [e[:5] for e in rec0["events"]]
    assert ev1["confusion"] == ev0["confusion"]
    assert len(ds1) == len(ds0) == 43
    with open(os.path.join(flash(noisy), "model.tmpm"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == DEMO_SHA
    with open(os.path.join(flash(noisy), "samples.bin"), "rb") as f1, \
            open(os.path.join(flash(clean), "samples.bin"), "rb") as f0:
        assert f1.read()[16:] == f0.read()[16:]  # the same samples, none twice


def test_a_silent_board_is_one_clear_error(sess):
    with open_sim(sess, timeout=0.2) as b:
        b.link.retries = 2
        b.link.port = link.FaultyPort(b.link.port, drop=1.0)  # every request lost
        with pytest.raises(link.LinkError) as e:
            b.request(P.SAMPLES_STATUS)
        assert "no answer to SAMPLES_STATUS after 3 tries" in str(e.value)
        b.link.port = b.link.port.port
        assert b.request(P.SAMPLES_STATUS)["count"] == 0  # the link recovers


def test_unknown_and_unexpected_frames_get_error_replies(sess):
    with open_sim(sess) as b:
        for ftype, code in ((0x3F, "unknown_type"), (0x85, "unexpected")):
            with pytest.raises(link.BoardError) as e:
                b.request(ftype)
            assert e.value.code == code
        with pytest.raises(link.BoardError) as e:
            b.request(P.PUSH_DATA, {"offset": 0})
        assert e.value.code == "state"
        # a payload that is not a value
        seq = b.link._next_seq()
        b.link._write(P.encode_frame(P.SAMPLES_STATUS, seq, b"\x07garbage"))
        import time
        deadline = time.monotonic() + 2
        ev = b.link._event(deadline)
        while ev is not None and getattr(ev, "seq", None) != seq:
            ev = b.link._event(deadline)
        assert ev.type == P.ERROR and ev.value()["code"] == "bad_payload"
        assert b.request(P.SAMPLES_STATUS)["count"] == 0


# --- training -------------------------------------------------------------------------------

def _replica_order(n, seed, steps):
    """The board's sample order (xorshift32 Fisher-Yates per epoch, popped from the end)."""
    rng = A.Rng(seed)
    out, order = [], []
    while len(out) < steps:
        if not order:
            order = list(range(n))
            for i in range(n - 1, 0, -1):
                j = rng.below(i + 1)
                order[i], order[j] = order[j], order[i]
        out.append(order.pop())
    return out


def test_training_on_the_board_matches_the_engine_here(sess):
    pushed(sess)
    opts = {"method": "tinymp", "lr": 0.002, "seed": 5}
    with open_sim(sess) as b:
        meta, ds = _import(sess, b, 60)
        rec = C.train(b, ds, opts, epochs=2, show=False, session=sess)
        xe, ye = held_out(meta, 120)
        after = C.evaluate(b, xe, ye, "personalised", show=False)
        base = C.evaluate(b, xe, ye, "pretrained", show=False)
    # the same training in this process, on the samples read back from the PC's dataset
    m = tinymp.Model(DEMO)
    plan = m.plan(method="tinymp", budget=262144)
    tr = tinymp.Trainer(m, plan, lr=0.002, seed=5)
    xs, ys = ds.arrays()
    order = _replica_order(len(ys), 5, 120)
    f = {k: i for i, k in enumerate(rec["fields"])}
    assert len(rec["events"]) == 120
    for k, (ev, i) in enumerate(zip(rec["events"], order)):
        if k > 0 and k % len(ys) == 0:
            tr.end_period()  # the agent closes an APU period at every epoch
        assert ev[f["sample"]] == i and ev[f["label"]] == ys[i]
        assert ev[f["pred"]] == tr.predict(xs[i].tobytes())
        assert ev[f["loss"]] == pytest.approx(tr.step(xs[i].tobytes(), int(ys[i])), rel=1e-6)
        assert ev[f["high_water"]] <= plan.arena_bytes
    here = np.array([tr.predict(v.tobytes()) for v in xe])
    assert after["accuracy"] == pytest.approx(float((here == ye).mean()))
    assert base["accuracy"] == pytest.approx(float((np.array([m.predict(v.tobytes()) for v in xe])
                                                    == ye).mean()))
    end = rec["end"]
    assert end["saved"] and end["plan"]["arena_bytes"] == plan.arena_bytes
    assert end["plan"]["breakdown"] == dict(plan.breakdown)
    assert end["high_water"] <= plan.arena_bytes <= 262144
    assert end["stats"]["steps"] == 120 and end["clock"] == "host"


def test_a_second_run_goes_on_from_the_saved_training_state(sess):
    """A second `train` with the same method resumes: the board loads the saved file, which holds
    the APU state and counters too. The second run's report counts its own steps only."""
    pushed(sess)
    with open_sim(sess) as b:
        meta, ds = _import(sess, b, 30)
        opts = {"method": "tinymp", "lr": 0.002, "seed": 3, "period": 7}
        one = C.train(b, ds, opts, steps=25, show=False)
        two = C.train(b, ds, opts, steps=10, show=False)
    assert not one["start"]["resumed"] and two["start"]["resumed"]
    s1, s2 = one["end"]["stats"], two["end"]["stats"]
    assert (s1["steps"], s1["periods"]) == (25, 3)
    # the saved period position (25 = 3 x 7 + 4) carries over: 4 + 10 steps end 2 periods
    assert (s2["steps"], s2["periods"]) == (10, 2)
    assert 0 <= s2["stalled_steps"] <= 10
    assert two["start"]["resumed_state"] and report.train_summary(two)["resumed_state"]
    # other momentum: the parameters go on, the training state starts afresh (tests of the
    # trainer check what that means)
    with open_sim(sess) as b:
        three = C.train(b, ds, dict(opts, momentum=0.9), steps=3, show=False)
    s3 = report.train_summary(three)
    assert three["start"]["resumed"] and s3["resumed_state"] is False and s3["resume_error"] is None
    # other storage: the file holds other arrays, so the run starts from the pretrained model
    with open_sim(sess) as b:
        four = C.train(b, ds, dict(opts, storage="fp32"), steps=3, show=False)
    assert not four["start"]["resumed"]
    assert "storage" in report.train_summary(four)["resume_error"]


def test_save_rollback_reset(sess):
    pushed(sess)
    with open_sim(sess) as b:
        meta, ds = _import(sess, b, 80)
        xe, ye = held_out(meta, 80)
        pre = C.evaluate(b, xe, ye, "personalised", show=False)
        assert pre["params"] == "pretrained"  # nothing trained yet
        C.train(b, ds, {"method": "full", "lr": 0.001, "seed": 1}, epochs=1, show=False)
        one = C.evaluate(b, xe, ye, "personalised", show=False)
        C.train(b, ds, {"method": "full", "lr": 0.001, "seed": 2}, epochs=1, show=False)
        two = C.evaluate(b, xe, ye, "personalised", show=False)
        assert one["confusion"] != two["confusion"] != pre["confusion"]
    with open_sim(sess) as b:  # a reset board loads its saved parameters
        assert C.evaluate(b, xe, ye, "personalised", show=False)["confusion"] == two["confusion"]
        b.request(P.PARAMS_ROLLBACK)
        assert C.evaluate(b, xe, ye, "personalised", show=False)["confusion"] == one["confusion"]
        b.request(P.PARAMS_RESET)
        r = C.evaluate(b, xe, ye, "personalised", show=False)
        assert r["params"] == "pretrained" and r["confusion"] == pre["confusion"]
        b.request(P.PARAMS_ROLLBACK)  # undoes the reset
        assert C.evaluate(b, xe, ye, "personalised", show=False)["confusion"] == one["confusion"]
        with pytest.raises(link.BoardError) as e:
            b.request(P.PARAMS_ROLLBACK)
        assert e.value.code == "nothing"


def test_a_trial_run_is_kept_aside_until_saved(sess):
    """`train --no-save` keeps the run as a trial (params.try) next to the saved parameters: a
    later connection (each command starts the agent afresh) evaluates it and PARAMS_SAVE makes
    it the saved one; anything that changes the saved parameters drops it."""
    pushed(sess)
    fl = flash(sess)
    with open_sim(sess) as b:
        meta, ds = _import(sess, b, 80)
        xe, ye = held_out(meta, 80)
        pre = C.evaluate(b, xe, ye, "pretrained", show=False)
        C.train(b, ds, {"method": "full", "lr": 0.001, "seed": 1}, epochs=1, show=False)
        one = C.evaluate(b, xe, ye, "personalised", show=False)
    saved = open(os.path.join(fl, "params.bin"), "rb").read()
    with open_sim(sess) as b:
        with pytest.raises(link.BoardError) as e:  # none yet
            C.evaluate(b, xe, ye, "trial", show=False)
        assert e.value.code == "nothing"
        run = C.train(b, ds, {"method": "full", "lr": 0.001, "seed": 2}, epochs=1, save=False,
                      show=False)
        assert run["end"]["saved"] is False and run["end"]["trial"] is True
        assert report.train_summary(run)["trial"] is True
        ram = C.evaluate(b, xe, ye, "trial", show=False)
    assert ram["params"] == "trial"
    assert ram["confusion"] != one["confusion"] and ram["confusion"] != pre["confusion"]
    assert open(os.path.join(fl, "params.bin"), "rb").read() == saved
    assert b.info["trial"] is None  # INFO was read before the run
    with open_sim(sess) as b:  # a fresh agent: the trial from its file, the saved run untouched
        assert b.info["trial"]["options"]["seed"] == 2
        assert C.evaluate(b, xe, ye, "personalised", show=False)["confusion"] == one["confusion"]
        assert C.evaluate(b, xe, ye, "trial", show=False)["confusion"] == ram["confusion"]
    with open_sim(sess) as b:
        assert b.request(P.PARAMS_SAVE) == {"saved": True, "from": "trial"}
        assert C.evaluate(b, xe, ye, "personalised", show=False)["confusion"] == ram["confusion"]
        with pytest.raises(link.BoardError) as e:  # promoted: no trial left
            b.request(P.PARAMS_SAVE)
        assert e.value.code == "state"
        b.request(P.PARAMS_ROLLBACK)  # the run saved before the trial
        assert C.evaluate(b, xe, ye, "personalised", show=False)["confusion"] == one["confusion"]
    assert not os.path.exists(os.path.join(fl, "params.try"))
    # a saved run, a reset and a rollback each drop the trial (it started from what was saved)
    for drop in ("train", P.PARAMS_RESET, P.PARAMS_ROLLBACK):
        with open_sim(sess) as b:
            C.train(b, ds, {"method": "full", "lr": 0.001, "seed": 3}, steps=5, save=False,
                    show=False)
            assert os.path.exists(os.path.join(fl, "params.try"))
            if drop == "train":
                C.train(b, ds, {"method": "full", "lr": 0.001, "seed": 4}, steps=5, show=False)
            else:
                b.request(drop)
            with pytest.raises(link.BoardError) as e:
                C.evaluate(b, xe, ye, "trial", show=False)
            assert e.value.code == "nothing", drop
        assert not os.path.exists(os.path.join(fl, "params.try")), drop
    # a PARAMS_SAVE cut short by a reset after the trial's parameters moved: the next agent
    # finishes it (the options follow the parameters they belong to)
    with open_sim(sess) as b:
        C.train(b, ds, {"method": "full", "lr": 0.001, "seed": 7}, steps=5, save=False,
                show=False)
        cut = C.evaluate(b, xe, ye, "trial", show=False)
    os.replace(os.path.join(fl, "params.bin"), os.path.join(fl, "params.prev"))
    os.replace(os.path.join(fl, "params.try"), os.path.join(fl, "params.bin"))
    with open_sim(sess) as b:
        assert b.info["params"]["options"]["seed"] == 7 and b.info["trial"] is None
        assert C.evaluate(b, xe, ye, "personalised", show=False)["confusion"] == cut["confusion"]
    assert not os.path.exists(os.path.join(fl, "params.try.opt"))
    # no room for the trial (here: the name of the file it is written to first is taken): the
    # run is reported, nothing else changes
    os.mkdir(os.path.join(fl, "params.try.tmp"))
    saved = open(os.path.join(fl, "params.bin"), "rb").read()
    with open_sim(sess) as b:
        run = C.train(b, ds, {"method": "full", "lr": 0.001, "seed": 5}, steps=5, save=False,
                      show=False)
        assert run["end"]["trial"] is False and run["end"]["trial_error"]
        # this connection still holds the run in RAM, and can save it from there
        assert b.request(P.PARAMS_SAVE) == {"saved": True, "from": "ram"}
    assert open(os.path.join(fl, "params.prev"), "rb").read() == saved


def test_training_budget_is_the_profiles(sess):
    pushed(sess)
    with open_sim(sess) as b:
        meta, ds = _import(sess, b, 10)
        # asking for more than the board has: the PC refuses it before anything is sent
        with pytest.raises(C.SessionError) as e:
            C.train(b, ds, {"method": "full", "budget": 10 << 20}, steps=2, show=False,
                    save=False)
        assert e.value.code == 2 and "262,144 bytes" in str(e.value)
        # and the board, asked directly, plans within its own budget
        C.sync_samples(b, ds, show=False)
        start = b.request(P.TRAIN_START, {"method": "full", "budget": 10 << 20, "steps": 2})
        assert start["plan"]["arena_bytes"] <= 262144
        with pytest.raises(C.SessionError) as e:
            C.train(b, ds, {"method": "full", "budget": 4096}, steps=2, show=False)
        assert e.value.code == 2 and "budget" in str(e.value)
        with pytest.raises(link.BoardError) as e:
            b.request(P.TRAIN_STEPS, {"n": 1})
        assert e.value.code == "state"


class _RecordingLink:
    def __init__(self):
        self.sent, self.closed = [], False

    def request(self, kind, *a, **kw):
        self.sent.append(kind)
        return {}

    def close(self):
        self.closed = True


@pytest.mark.parametrize("exc,bye", [(None, True), (link.BoardError(3, "no model"), True),
                                     (KeyboardInterrupt(), True), (C.user_error("bad"), True),
                                     (link.LinkError("gone"), False)])
def test_a_command_that_fails_still_says_bye(exc, bye):
    # the agent ignores Ctrl-C: without BYE it keeps the board's REPL after a refused request or
    # an interruption, and the next command cannot start it (a real board until reset); only a
    # failed link is closed without BYE, which could only time out there
    lk = _RecordingLink()
    try:
        with link.Board(lk, "serial", {}):
            if exc is not None:
                raise exc
    except BaseException as e:
        assert e is exc
    assert (lk.sent == [P.BYE]) == bye and lk.closed


def test_a_board_that_stops_reading_fails_the_write(sess, monkeypatch):
    # writes have a deadline (they had none: a stalled board hung tinymp forever on a large frame)
    with open_sim(sess) as b:
        assert b.link.port.write_timeout == link.WRITE_TIMEOUT

        class Stalled:
            def write(self, data):
                import serial
                raise serial.SerialTimeoutException("Write timeout")

            def close(self):
                pass
        real = b.link.port
        b.link.port = Stalled()
        with pytest.raises(link.LinkError, match="cannot write to the link"):
            b.request(P.INFO)
        b.link.port = real


def _small_model(size, channels):
    """A model of size x size x channels inputs (conv stride 2, average pool, fc; a few KB)."""
    from tinymp import builder
    rng = np.random.default_rng(5)
    g = builder.Graph((size, size, channels))
    x = g.conv(g.input, rng.normal(0, 0.3, (4, 3, 3, channels)), rng.normal(0, 0.1, 4),
               stride=2, act="relu")
    g.fc(g.avgpool(x), rng.normal(0, 0.5, (10, 4)), rng.normal(0, 0.1, 10))
    return g.quantize(rng.random((8, size, size, channels), dtype=np.float32))


def test_the_simulated_camera_refuses_an_rgb_model_before_a_capture(sess):
    # its scene is grayscale: every capture failed as a board error ("collect interrupted:
    # ValueError: ...; run collect again to resume"), status 1
    pushed(sess, _small_model(16, 3))
    with open_sim(sess) as b:
        ds = C.open_dataset(sess, meta_of(b), "sim")
        with pytest.raises(C.SessionError) as e:
            C.collect_capture(b, ds, 1, 3, show=False)
        assert e.value.code == 2 and "camera gives grayscale frames and the model takes 3 " \
            "channels (16x16x3); collect with --from FILE" in str(e.value)
        assert b.request(P.SAMPLES_STATUS)["count"] == 0 and len(ds) == 0


def test_a_sample_larger_than_an_eighth_of_the_heap_goes_in_a_frame_of_its_own(sess):
    """One 128x128 RGB sample (48 KB) is more than an eighth of the OpenMV H7's heap (40 KB
    frames), so every SAMPLES_PUT and PREDICT was dropped as too long and taken for link damage.
    From agent 10 a board takes one sample of its model per frame as far as a quarter of its
    heap goes; a PC facing a board that does not is refused up front, status 2."""
    with open_sim(sess) as b:
        free = b.info["mem_free"]
        assert b.info["max_payload"] == (free // 8) & ~1023 < 128 * 128 * 3  # no model yet
        C.push(b, _small_model(128, 3), show=False)
        assert b.link.max_payload == b.info["max_payload"] == 49 * 1024 <= free // 4
        meta = meta_of(b)
        rng = np.random.default_rng(0)
        x = rng.integers(-128, 128, (3, 128, 128, 3), dtype=np.int8)
        y = np.array([1, 2, 3])
        ds = C.open_dataset(sess, meta, "sim")
        C.import_samples(ds, x, y, [f"s{i}" for i in range(3)], show=False)
        assert C.sync_samples(b, ds, show=False) == 3
        with open(os.path.join(flash(sess), "samples.bin"), "rb") as f:
            raw = f.read()[A.STORE_HEAD:]
        rec = 8 + 128 * 128 * 3
        assert [raw[i * rec + 8:(i + 1) * rec] for i in range(3)] == [s.tobytes() for s in x]
        m = tinymp.Model(_small_model(128, 3))
        got = C.evaluate(b, x, y, params="pretrained", show=False, num_classes=10)
        want = np.zeros((10, 10), dtype=int)
        for s, label in zip(x, y):
            want[label, m.predict(s.tobytes())] += 1
        assert got["n"] == 3 and got["confusion"] == want.tolist()
        # a board whose frames are smaller than one sample: one clear refusal, nothing sent
        b.link.max_payload = 40 * 1024
        with pytest.raises(C.SessionError) as e:
            C.evaluate(b, x, y, params="pretrained", show=False)
        assert e.value.code == 2 and "one sample of the model is 49,152 bytes, more than the " \
            "board takes in one frame" in str(e.value)
    with open_sim(sess) as b:  # a new connection: INFO says the same limit
        assert b.info["max_payload"] == 49 * 1024
        # a model of smaller samples does not lower it while the agent runs: a PC before agent
        # 10 reads the limit once, at the hello, and goes on sending frames of that size
        C.push(b, DEMO, show=False)
        assert b.info["max_payload"] == 49 * 1024
