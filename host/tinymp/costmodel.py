"""A cost model from emulated instruction counts to Cortex-M7 time: an estimate, never a measurement.

The bench (tinymp.bench, `make bench`) counts the instructions the engine executes as Cortex-M7
code under QEMU. QEMU models no pipeline, cache or memory wait states, so turning a count into
time needs assumptions; they are all here, and every report that shows a time says it is this
model's estimate.

Assumptions (OpenMV Cam H7, STM32H743):

- clock 480 MHz;
- cycles = instructions x CPI with CPI = 1.0. The M7 issues up to two instructions per cycle
  (the dual-MAC inner loops of the int8 kernels pair loads with SMLADs), but data in the H7's
  AXI SRAM goes through the 16 KB D-cache and misses cost several cycles; the arena of a
  128x128 model does not fit in the 128 KB DTCM. CPI 1.0 is the middle of the 0.7-1.5 range
  these effects span; the range is reported with the estimate;
- no other load on the CPU (no camera DMA contention, no interrupts).

Not calibrated against a board: nothing here was run on hardware.
"""

CLOCK_HZ = 480_000_000
CPI = 1.0
CPI_RANGE = (0.7, 1.5)

ASSUMPTIONS = {
    "name": "tinymp-m7-cpi-v1",
    "clock_hz": CLOCK_HZ,
    "cpi": CPI,
    "cpi_range": list(CPI_RANGE),
    "note": "cycles = emulated instructions x CPI; an estimate, not measured on hardware",
}

DESCRIPTION = (
    "Cost model `tinymp-m7-cpi-v1` (host/tinymp/costmodel.py): time = instructions x CPI / 480 MHz "
    "with CPI 1.0 (range 0.7-1.5: dual issue of the kernels' inner loops against D-cache misses "
    "in AXI SRAM). An estimate from emulated instruction counts, not a measurement on a board.")


def cycles(instructions, cpi=CPI):
    return instructions * cpi


def seconds(instructions, cpi=CPI, clock_hz=CLOCK_HZ):
    return cycles(instructions, cpi) / float(clock_hz)


def estimate_ms(instructions):
    """{"ms": the estimate, "ms_range": [at the low CPI, at the high CPI]} of one count."""
    return {"ms": round(1e3 * seconds(instructions), 3),
            "ms_range": [round(1e3 * seconds(instructions, c), 3) for c in CPI_RANGE]}


def estimate_step(r):
    """Estimated times of one bench configuration (a dict from bench_train.c)."""
    step = r["step"]["mean"]
    run = r.get("run_instructions", 0)
    return {
        "model": ASSUMPTIONS["name"],
        "step_ms": round(1e3 * seconds(step), 2),
        "step_ms_range": [round(1e3 * seconds(step, c), 2) for c in CPI_RANGE],
        "phases_ms": [round(1e3 * seconds(p), 3) for p in r["step"]["phases"]],
        "run_s": round(seconds(run), 2),
        "inference_ms": round(1e3 * seconds(r["inference"]), 2),
    }


def estimate_from_macs(forward_macs, backward_macs, per_mac_forward, per_mac_backward):
    """Cycles of a step from its MACs and instructions-per-MAC figures measured by the bench
    (for reports of plans that were not benched themselves)."""
    return cycles(forward_macs * per_mac_forward + backward_macs * per_mac_backward)
