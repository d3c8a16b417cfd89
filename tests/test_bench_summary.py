"""The bench's summary arithmetic (tinymp.bench: headline, run_bound, compose_run) on hand-built
rows, so it is checked without QEMU: each expected figure is worked out here from its definition
in the issue (backward: exact's backward phase over tinymp's; run: sparse's run over tinymp's at
the same memory; bound: sparse's run over tinymp's forward phases alone)."""
import pytest

pytest.importorskip("tinymp")
from tinymp import bench  # noqa: E402


def row(label, fill, cached, period=0, n=100, epochs=10, peak=250 * 1024):
    """A bench row with fill/cached steps given as (forward, backward, update) phases."""
    r = {"label": label, "step": {"mean": sum(fill), "phases": list(fill)},
         "fill_step": {"mean": sum(fill), "phases": list(fill)},
         "cached_step": {"mean": sum(cached), "phases": list(cached)},
         "run_samples": n, "run_epochs": epochs, "peak_sram": peak}
    if period:
        r["end_period"] = period
    r["run_instructions"] = bench.compose_run(r, n, epochs)
    return r


def test_compose_run_is_first_epoch_plus_cached_epochs_plus_period_ends():
    r = row("x", (60, 7, 3), (8, 7, 3), period=5, n=4, epochs=3)
    # 4 fill steps, 4 * 2 cached steps, 3 period ends
    assert r["run_instructions"] == 4 * 70 + 8 * 18 + 3 * 5


def test_headline_and_bound_at_sparse_size():
    res = {"title": "M", "configs": [
        row("sparse", (600, 200, 30), (90, 200, 30)),
        row("tinymp r=4 @ sparse's size", (600, 10, 20), (80, 10, 20), period=50),
        row("tinymp r=4", (600, 8, 9), (50, 8, 9), peak=200 * 1024),
        row("exact (tinymp r=4's set)", (600, 40, 9), (50, 40, 9)),
    ]}
    sparse_run = 100 * 830 + 900 * 320
    same_run = 100 * 630 + 900 * 110 + 10 * 50
    assert bench.headline(res) == (
        "M: backward %.2fx fewer instructions than exact, run %.2fx fewer than sparse, "
        "peak SRAM 200 KB (emulated)" % (40 / 8, sparse_run / same_run))
    ratio, label = bench.run_bound(res)
    assert label == "tinymp r=4 @ sparse's size"
    assert ratio == pytest.approx(sparse_run / (100 * 600 + 900 * 80 + 10 * 50))
    # the bound is never below the measured run ratio: backward and update only add
    assert ratio >= sparse_run / same_run


def test_bound_uses_tinymp_when_sparse_fits_and_is_none_without_rows():
    res = {"title": "M", "configs": [row("sparse", (600, 200, 30), (90, 200, 30)),
                                     row("tinymp r=4", (600, 8, 9), (50, 8, 9))]}
    ratio, label = bench.run_bound(res)
    assert label == "tinymp r=4"
    assert ratio == pytest.approx((100 * 830 + 900 * 320) / (100 * 600 + 900 * 50))
    assert bench.run_bound({"title": "M", "configs": [row("tinymp r=4", (1, 1, 1), (1, 1, 1))]}) is None
    assert bench.headline(res) is None  # no exact twin
