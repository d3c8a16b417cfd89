"""The board folders (boards/NUCLEO_H743ZI2, boards/ESP32_S3, boards/OPENMV_H7): their numbers
agree with each other, with the chips' limits and with the board profiles the PC side reads.

No MicroPython tree or toolchain is needed; tests/test_firmware_build.py builds the firmware.
"""
import csv
import io
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOARDS = os.path.join(ROOT, "boards")
KB = 1024


def read(*parts):
    with open(os.path.join(BOARDS, *parts)) as f:
        return f.read()


def profile(name):
    return json.loads(read(name, "profile.json"))


def defines(text):
    """#define NAME (value) -> {NAME: value text without the outer parentheses}."""
    out = {}
    for m in re.finditer(r"^#define\s+(\w+)\s+(.+?)\s*(?://.*)?$", text, re.M):
        v = m.group(2).strip()
        while v.startswith("(") and v.endswith(")") and v.count("(") == 1:
            v = v[1:-1].strip()
        out[m.group(1)] = v
    return out


def ld_regions(text):
    regions = {}
    for m in re.finditer(r"^\s*(\w+)\s*\([a-z]+\)\s*:\s*ORIGIN\s*=\s*(0x[0-9A-Fa-f]+),\s*LENGTH\s*=\s*(\d+)K",
                         text, re.M):
        regions[m.group(1)] = (int(m.group(2), 16), int(m.group(3)) * KB)
    return regions


# ------------------------------------------------------------------ NUCLEO-H743ZI2

NUCLEO = "NUCLEO_H743ZI2"
STM32_FILES = ["board.json", "mpconfigboard.h", "mpconfigboard.mk", "pins.csv",
               "stm32h7xx_hal_conf.h", "manifest.py", "board_init.c", "tinymp_h743zi2.ld",
               "profile.json"]


def test_nucleo_folder_has_what_the_stm32_port_needs():
    for f in STM32_FILES:
        assert os.path.isfile(os.path.join(BOARDS, NUCLEO, f)), f
    mk = read(NUCLEO, "mpconfigboard.mk")
    assert re.search(r"^MCU_SERIES = h7$", mk, re.M)
    assert re.search(r"^CMSIS_MCU = STM32H743xx$", mk, re.M)
    assert re.search(r"^LD_FILES = \$\(BOARD_DIR\)/tinymp_h743zi2.ld$", mk, re.M)
    assert re.search(r"^TEXT0_ADDR = 0x08000000$", mk, re.M)
    # single precision, as the OpenMV Cam H7 and the profile
    assert re.search(r"^MICROPY_FLOAT_IMPL = float$", mk, re.M)
    assert profile(NUCLEO)["float"] == "single"
    json.loads(read(NUCLEO, "board.json"))


def test_nucleo_flash_layout():
    """Firmware in bank 1, ROMFS and filesystem in bank 2 on 128 KB sector boundaries, nothing
    overlapping, 2 MB in all; the ROMFS partition is the profile's model flash."""
    ld = read(NUCLEO, "tinymp_h743zi2.ld")
    r = ld_regions(ld)
    flash = [r["FLASH"], r["FLASH_ROMFS"], r["FLASH_FS"]]
    assert r["FLASH"] == (0x08000000, 1024 * KB)
    end = 0x08000000
    for origin, length in flash:
        assert origin == end, "flash regions must follow each other"
        assert origin % (128 * KB) == 0 and length % (128 * KB) == 0, "not on sector boundaries"
        end = origin + length
    assert end == 0x08000000 + 2048 * KB
    assert r["FLASH_ROMFS"][0] >= 0x08100000, "ROMFS must be in bank 2 (erased while bank 1 runs)"
    prof = profile(NUCLEO)
    assert r["FLASH_ROMFS"][1] == prof["model_flash_bytes"]
    assert prof["flash_bytes"] == 2048 * KB
    assert "_micropy_hw_romfs_part0_start = ORIGIN(FLASH_ROMFS);" in ld
    assert "_micropy_hw_romfs_part0_size = LENGTH(FLASH_ROMFS);" in ld
    assert "_micropy_hw_internal_flash_storage_start = ORIGIN(FLASH_FS);" in ld
    # the vector table must open the image: the port's layout comes before our extra section
    assert ld.index("INCLUDE common_basic.ld") < ld.index(".gc.blocks.table")
    h = defines(read(NUCLEO, "mpconfigboard.h"))
    assert h["MICROPY_HW_ROMFS_ENABLE_INTERNAL_FLASH"] == "1"
    assert h["MICROPY_HW_ROMFS_ENABLE_PART0"] == "1"


def test_nucleo_ram_layout():
    """The STM32H743's SRAM: DTCM 128K, AXI 512K, SRAM1-3 288K, SRAM4 64K; the heap's main block
    (AXI) can hold the profile's training arena, with room for .data/.bss and the stack."""
    ld = read(NUCLEO, "tinymp_h743zi2.ld")
    r = ld_regions(ld)
    assert r["DTCM"] == (0x20000000, 128 * KB)
    assert r["RAM"] == (0x24000000, 512 * KB)
    assert r["SRAM_D2"] == (0x30000000, 288 * KB)
    assert r["SRAM4"] == (0x38000000, 64 * KB)
    total = sum(v[1] for k, v in r.items() if not k.startswith("FLASH"))
    prof = profile(NUCLEO)
    assert total == 992 * KB and prof["sram_bytes"] >= total
    assert prof["arena_budget_bytes"] <= 512 * KB - 64 * KB
    assert "LONG(ORIGIN(SRAM_D2));" in ld and "LONG(ORIGIN(SRAM4));" in ld
    assert defines(read(NUCLEO, "mpconfigboard.h"))["MICROPY_GC_SPLIT_HEAP"] == "1"


def test_nucleo_clocks():
    """PLL1 gives the profile's CPU clock, PLL3 48 MHz for USB; inputs and VCOs in the ranges of
    RM0433 (input range constant matching the input frequency, wide VCO 192-836 MHz)."""
    h = defines(read(NUCLEO, "mpconfigboard.h"))
    hse = int(defines(read(NUCLEO, "stm32h7xx_hal_conf.h"))["HSE_VALUE"])
    ranges = {"0": (1e6, 2e6), "1": (2e6, 4e6), "2": (4e6, 8e6), "3": (8e6, 16e6)}

    def pll(prefix, vci_name):
        m, n = int(h[prefix + "M"]), int(h[prefix + "N"])
        ref = hse / m
        lo, hi = ranges[re.search(r"RANGE_(\d)", h[vci_name]).group(1)]
        assert lo <= ref <= hi, f"{prefix}: {ref} Hz outside its input range {h[vci_name]}"
        vco = ref * n
        assert 192e6 <= vco <= 836e6, f"{prefix}: VCO {vco}"
        return vco

    vco1 = pll("MICROPY_HW_CLK_PLL", "MICROPY_HW_CLK_PLLVCI")
    assert vco1 / int(h["MICROPY_HW_CLK_PLLP"]) == profile(NUCLEO)["cpu_hz"] == 400e6
    assert vco1 / int(h["MICROPY_HW_CLK_PLLQ"]) <= 200e6
    vco3 = pll("MICROPY_HW_CLK_PLL3", "MICROPY_HW_CLK_PLL3VCI")
    assert vco3 / int(h["MICROPY_HW_CLK_PLL3Q"]) == 48e6


def test_nucleo_pins_exist_and_are_named():
    """Every pin the board definition uses is a real STM32H743ZI pin (ports A-G, 0-15 on the
    LQFP144) listed in pins.csv, and the names board_init.c uses are defined there."""
    rows = list(csv.reader(io.StringIO(read(NUCLEO, "pins.csv"))))
    names = {r[0]: r[1] for r in rows if r}
    for cpu in names.values():
        assert re.fullmatch(r"P[A-G](1[0-5]|[0-9])", cpu), cpu
    used = set(re.findall(r"\bpin_([A-G]\d+)\b", read(NUCLEO, "mpconfigboard.h")))
    listed = {c[1:] for c in names.values()}
    assert used and used <= listed, used - listed
    for name in re.findall(r"pyb_pin_(\w+)", read(NUCLEO, "board_init.c")):
        assert name in names
    assert names["LED_GREEN"] == "PB0" and names["LED_YELLOW"] == "PE1" and names["LED_RED"] == "PB14"
    assert names["SW"] == "PC13" and names["USB_DM"] == "PA11" and names["USB_DP"] == "PA12"


def test_board_manifests_freeze_the_helpers():
    for board in ("NUCLEO_H743ZI2", "ESP32_S3", "OPENMV_H7"):
        text = read(board, "manifest.py")
        assert 'include("../../firmware/manifest.py")' in text, board
    fw = open(os.path.join(ROOT, "firmware", "manifest.py")).read()
    assert 'module("tinymp_camera.py", base_path="modules")' in fw
    assert os.path.isfile(os.path.join(ROOT, "firmware", "modules", "tinymp_camera.py"))
    assert 'module("tinymp_agent.py", base_path=_AGENT_DIR)' in fw
    # OpenMV's own manifest is included from the OpenMV tree, not copied here
    assert "boards/OPENMV4/manifest.py" in read("OPENMV_H7", "manifest.py")


# ------------------------------------------------------------------ ESP32-S3

ESP = "ESP32_S3"


def partitions():
    rows = []
    for line in read(ESP, "partitions-8MiB-romfs.csv").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            f = [c.strip() for c in line.split(",")]
            rows.append({"name": f[0], "type": f[1], "subtype": f[2], "offset": int(f[3], 16),
                         "size": int(f[4], 16)})
    return rows


def test_esp32_folder_has_what_the_esp32_port_needs():
    for f in ("mpconfigboard.cmake", "mpconfigboard.h", "sdkconfig.board", "manifest.py",
              "partitions-8MiB-romfs.csv", "board.json", "profile.json"):
        assert os.path.isfile(os.path.join(BOARDS, ESP, f)), f
    cm = read(ESP, "mpconfigboard.cmake")
    assert "set(IDF_TARGET esp32s3)" in cm
    # the sdkconfig fragment names the partition table by absolute path at configure time
    assert 'partitions-8MiB-romfs.csv' in cm and "${MICROPY_BOARD_DIR}" in cm
    assert cm.index("boards/sdkconfig.spiram_sx") < cm.index("boards/sdkconfig.spiram_oct")
    assert defines(read(ESP, "mpconfigboard.h"))["MICROPY_VFS_ROM"] == "1"
    assert "CONFIG_ESPTOOLPY_FLASHSIZE_8MB=y" in read(ESP, "sdkconfig.board")
    json.loads(read(ESP, "board.json"))


def test_esp32_partition_table():
    """nvs, phy_init, the app and a "romfs" partition (subtype 0x8f, what MicroPython's esp32
    port mounts at /rom) of the profile's model flash; aligned, not overlapping, in 8 MB, leaving
    flash after them for the filesystem MicroPython creates there."""
    rows = partitions()
    by = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows] == ["nvs", "phy_init", "factory", "romfs"]
    end = 0x9000
    for r in rows:
        assert r["offset"] >= end, r
        assert r["offset"] % 0x1000 == 0 and r["size"] % 0x1000 == 0, r
        end = r["offset"] + r["size"]
    assert by["factory"]["type"] == "app" and by["factory"]["offset"] % 0x10000 == 0
    assert by["factory"]["size"] >= 2816 * KB   # MicroPython + BLE + tinymp with room to grow
    assert by["romfs"]["type"] == "data" and int(by["romfs"]["subtype"], 16) == 0x8F
    prof = profile(ESP)
    assert by["romfs"]["size"] == prof["model_flash_bytes"]
    assert end < prof["flash_bytes"] == 8 * 1024 * KB
