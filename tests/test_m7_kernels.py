"""The Cortex-M7 DSP paths of the int8 kernels compute exactly what the portable C computes, and
the bare-metal bench runs (firmware/bench, QEMU mps2-an500).

firmware/bench/kernel_check.c runs the same seeded, randomised cases of every kernel and prints a
digest per kernel; it is built three times - for the M7 with the DSP path (run under QEMU), for
the M7 with the portable path (-DTMP_NO_DSP, under QEMU), and for the host (portable path) - and
the three printouts must be identical. The host suite (test_kernels.py) ties the portable path to
the numpy reference, so this closes the chain for the DSP path.

`make bench-kernels` prints instruction counts; this test only checks that it runs, prints a row
for every reference shape, and that two runs print the same counts (-icount is deterministic).
It asserts no figure: benchmarks report, they do not pass or fail.
"""
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build", "bench")
QEMU = ["qemu-system-arm", "-M", "mps2-an500", "-nographic", "-monitor", "null", "-serial", "null",
        "-semihosting"]

_missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm", "make") if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(
    bool(_missing),
    reason=f"{', '.join(_missing)} not installed (apt-get install gcc-arm-none-eabi "
           "libnewlib-arm-none-eabi qemu-system-arm): the Cortex-M7 kernel tests need them")

REFERENCE_ROWS = [
    ("pwconv", "1x1 16x16x48->16"),
    ("pwconv", "1x1 4x4x192->56"),
    ("dwconv", "3x3 16x16x48 s1"),
    ("dwconv", "3x3 16x16x48 s2"),
    ("dwconv", "3x3 8x8x96 s1"),
    ("conv", "3x3 64x64x3->16 s2"),
    ("fc", "1280->10"),
    ("fc", "256->100"),
    ("add", "16x16x24"),
    ("avgpool", "4x4x1280"),
]


def make(*targets):
    r = subprocess.run(["make", "-s", "-C", ROOT, *targets], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"make {' '.join(targets)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def run(cmd, timeout=300):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def kernel_check_outputs():
    make("build/bench/kernel_check.elf", "build/bench/kernel_check_portable.elf",
         "build/bench/kernel_check_host")
    return {
        "m7-dsp": run(QEMU + ["-kernel", os.path.join(BUILD, "kernel_check.elf")]),
        "m7-portable": run(QEMU + ["-kernel", os.path.join(BUILD, "kernel_check_portable.elf")]),
        "host": run([os.path.join(BUILD, "kernel_check_host")]),
    }


def digests(text):
    return dict(re.findall(r"^(\w+)\s+\d+ cases\s+digest ([0-9a-f]{8})$", text, re.M))


def test_kernel_check_runs_every_kernel_without_errors(kernel_check_outputs):
    for name, out in kernel_check_outputs.items():
        assert set(digests(out)) == {"conv", "dwconv", "pwconv", "pwconv_small", "fc", "add",
                                     "avgpool", "mask", "sgd", "pwconv_dx", "conv_dw_gc", "dwconv3",
                                     "sgd_round"}, (name, out)
        assert re.search(r"^all kernels: digest [0-9a-f]{8}, 0 errors$", out, re.M), (name, out)


def test_dsp_path_matches_portable_path_bit_for_bit(kernel_check_outputs):
    host = digests(kernel_check_outputs["host"])
    for name in ("m7-dsp", "m7-portable"):
        got = digests(kernel_check_outputs[name])
        differing = sorted(k for k in host if got.get(k) != host[k])
        assert not differing, f"{name} differs from the host's portable kernels on: {differing}"
    assert kernel_check_outputs["m7-dsp"] == kernel_check_outputs["host"]


def test_the_m7_build_really_takes_the_dsp_path():
    """The DSP objects contain SMLAD, the portable ones do not (else the comparison is moot)."""
    make("build/bench/kernel_check.elf", "build/bench/kernel_check_portable.elf")
    objdump = shutil.which("arm-none-eabi-objdump")
    if objdump is None:
        pytest.skip("arm-none-eabi-objdump not installed")
    for kernel in ("conv", "pwconv", "dwconv", "fc"):
        dsp = run([objdump, "-d", os.path.join(BUILD, "dsp", f"tmp_{kernel}_s8.o")])
        port = run([objdump, "-d", os.path.join(BUILD, "portable", f"tmp_{kernel}_s8.o")])
        assert "smla" in dsp, kernel
        assert "smlad" not in port, kernel
    # the clamp mask (a training kernel, linked from source): SSUB8/SEL on the DSP path only
    for elf, want in (("kernel_check.elf", True), ("kernel_check_portable.elf", False)):
        text = run([objdump, "-d", os.path.join(BUILD, elf)])
        body = text.split("<tmp_mask_s8>:", 1)[1].split("\n\n", 1)[0]
        assert ("ssub8" in body) == want, elf
        # the int8 weight update's asm block (round-to-nearest conversion, QADD, SSAT clamp,
        # FPv4 instructions only), with no division left in the loop
        body = text.split("<tmp_sgd_s8_stochastic_at>:", 1)[1].split("\n\n", 1)[0]
        assert ("vcvtr.s32.f32" in body and "qadd" in body and "ssat" in body) == want, elf
        assert body.count("vdiv.f32") <= 1, elf


def parse_tables(text):
    """rows (kernel, shape) -> instructions, per table, in order."""
    tables = []
    for line in text.splitlines():
        if line.startswith("int8 forward kernels"):
            tables.append({})
            continue
        m = re.match(r"^(\w+)\s+(.+?)\s+(\d+) (MAC|elem)\s+(\d+)\s+(\d+\.\d\d)\s", line)
        if m and tables:
            tables[-1][(m.group(1), m.group(2))] = int(m.group(5))
    return tables


def test_bench_kernels_runs_and_is_deterministic():
    first = make("bench-kernels")
    second = make("bench-kernels")
    assert "method: QEMU -icount shift=0" in first, first
    tables = parse_tables(first)
    assert len(tables) == 2, first  # DSP path, then portable C path
    for table in tables:
        for row in REFERENCE_ROWS:
            assert row in table, f"no row for {row}:\n{first}"
            assert table[row] > 0
    assert first == second, "two runs of make bench-kernels printed different counts"
    print(first)


def test_bench_kernels_reports_the_backward_target_from_its_rows():
    """The fp32 condensed backward suites (r = 4, r = 2): every kernel the trainer runs has rows,
    and each TARGET summary equals the figure recomputed here from the table's own rows
    (total instructions / total MACs per kernel; PASS exactly when that is <= 2.00)."""
    text = make("bench-kernels")
    for r in (4, 2):
        block = text.split("fp32 condensed backward kernels (core/train, GC r = %d)" % r)[1]
        block = block.split("TARGET (issue 7)")[0], block.split("TARGET (issue 7)")[1]
        rows = {}
        for line in block[0].splitlines():
            m = re.match(r"^(\w+)\s+(.+?)\s+(\d+) (MAC|elem)\s+(\d+)\s+(\d+\.\d\d)\s", line)
            if m:
                k = rows.setdefault(m.group(1), [0, 0, m.group(4)])
                k[0] += int(m.group(5))
                k[1] += int(m.group(3))
        assert {"pwconv_dx", "conv_dw_gc", "dwconv_dx", "dwconv_dw_gc", "grad_gbar"} <= set(rows), block[0]
        summary = block[1].split("\n\n")[0]
        for kernel, (instr, work, unit) in rows.items():
            if unit != "MAC":
                continue
            m = re.search(r"^\s+%s\s+\d+ of\s+\d+ shapes <= 2.00; MAC-weighted over its shapes "
                          r"(\d+\.\d\d)\s+(PASS|FAIL)$" % kernel, summary, re.M)
            assert m, (kernel, summary)
            assert float(m.group(1)) == pytest.approx(instr / work, abs=0.006)
            assert m.group(2) == ("PASS" if instr <= 2.0 * work else "FAIL")
