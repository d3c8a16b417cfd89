"""Flash and RAM use of a MicroPython firmware built with tinymp, and tinymp's share of it.

    python3 firmware/fw_size.py [--board NAME] [--json] build/nucleo-h743zi2/firmware.elf

(`make firmware-size BOARD=...` runs it.) It prints `arm-none-eabi-size` of the ELF, then reads the
linker map next to it (firmware.map, written by MicroPython's stm32 build):

- the memory regions of the linker script and how full each is (sections by load address for
  flash, by run address for RAM);
- tinymp's share: the bytes of every input section that comes from an object file of the tinymp
  user C module (a `tinymp/` folder in the build tree: the binding and the core), split into
  code+constants (flash), initialised data (flash and RAM) and zeroed data (RAM); and the frozen
  bytecode of tinymp's helper modules (frozen_content.o sections named after tinymp_*; the
  qstrs they share with the rest of the firmware are not counted);
- the GC heap: the main block (_heap_start.._heap_end) and any extra blocks of the split heap
  (.gc.blocks.table).

Only the standard library and the binutils of the ARM toolchain are used.
"""
import argparse
import json
import os
import re
import subprocess
import sys

CROSS = os.environ.get("CROSS_COMPILE", "arm-none-eabi-")


def run(*cmd, quiet=False):
    """A binutils command's output; `quiet`: its warnings (stderr) are not shown."""
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL if quiet else None,
                          universal_newlines=True).stdout


def missing_tool():
    """The first binutils program this script runs that is not on PATH, or None."""
    import shutil
    return next((CROSS + t for t in ("size", "objdump", "nm") if shutil.which(CROSS + t) is None),
                None)


def sections(elf):
    """[(name, size, vma, lma, flags)] from objdump -h."""
    out = run(CROSS + "objdump", "-h", "-w", elf)
    secs = []
    for line in out.splitlines():
        m = re.match(r"\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+\S+\s+(.*)$", line)
        if m:
            secs.append((m.group(1), int(m.group(2), 16), int(m.group(3), 16), int(m.group(4), 16),
                         set(f.strip() for f in m.group(5).split(","))))
    return secs


def parse_map(path):
    """(regions, inputs): regions [(name, origin, length)] from 'Memory Configuration';
    inputs [(output_section, input_section, size, object_path)] from the memory map."""
    regions, inputs = [], []
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()
    i = 0
    while i < len(lines) and not lines[i].startswith("Memory Configuration"):
        i += 1
    i += 1
    while i < len(lines) and not lines[i].startswith("Linker script and memory map"):
        m = re.match(r"^(\S+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)", lines[i])
        if m and m.group(1) != "Name" and m.group(1) != "*default*":
            regions.append((m.group(1), int(m.group(2), 16), int(m.group(3), 16)))
        i += 1
    out_sec = None
    pending = None
    for line in lines[i:]:
        m = re.match(r"^(\.\S+|/DISCARD/)(\s|$)", line)
        if m:
            out_sec = m.group(1)
            pending = None
            continue
        m = re.match(r"^ (\S+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S.*)$", line)
        if m:
            inputs.append((out_sec, m.group(1), int(m.group(3), 16), m.group(4).strip()))
            pending = None
            continue
        m = re.match(r"^ (\S+)$", line)
        if m:
            pending = m.group(1)
            continue
        m = re.match(r"^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S.*)$", line)
        if m and pending:
            inputs.append((out_sec, pending, int(m.group(2), 16), m.group(3).strip()))
        pending = None
    return regions, inputs


def symbol(elf, name):
    for line in run(CROSS + "nm", elf).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    return None


def gc_blocks(elf):
    """Extra heap blocks [(address, size)] from .gc.blocks.table, if any."""
    try:
        # quiet: a firmware without a split heap has no such section, which objdump warns of
        out = run(CROSS + "objdump", "-s", "-j", ".gc.blocks.table", elf, quiet=True)
    except subprocess.CalledProcessError:
        return []
    words = []
    for line in out.splitlines():
        m = re.match(r"^\s*[0-9a-f]+ ((?:[0-9a-f]{8} ?){1,4})", line)
        if m:
            for w in m.group(1).split():
                b = bytes.fromhex(w)
                words.append(int.from_bytes(b, "little"))
    return [(words[k], words[k + 1]) for k in range(0, len(words) - 1, 2)]


def in_region(addr, reg):
    return reg[1] <= addr < reg[1] + reg[2]


def is_tinymp_object(path):
    # the module's objects sit under BUILD/tinymp/ (USER_C_MODULES-relative paths)
    return "/tinymp/" in path.replace("\\", "/") and path.endswith(".o")


def report(elf, board):
    mapfile = elf[:-len(".elf")] + ".map"
    size_out = run(CROSS + "size", elf)
    secs = sections(elf)
    regions, inputs = parse_map(mapfile) if os.path.isfile(mapfile) else ([], [])
    loaded = [s for s in secs if "ALLOC" in s[4]]

    use = []
    for reg in regions:
        used = 0
        for name, size, vma, lma, flags in loaded:
            if name in (".heap", ".stack"):
                continue                # link-time minimum-size checks, not allocations
            if "LOAD" in flags and in_region(lma, reg) and lma != vma:
                used += size            # initialised data stored in flash, copied to RAM
            elif in_region(vma, reg):
                used += size
        if used:
            use.append({"region": reg[0], "origin": reg[1], "length": reg[2], "used": used})

    out_info = {s[0]: s for s in secs}
    tiny = {"code_rodata": 0, "data": 0, "bss": 0, "objects": set(), "frozen": 0}
    for out_sec, in_sec, size, obj in inputs:
        if out_sec is None or out_sec == "/DISCARD/" or out_sec not in out_info:
            continue
        flags = out_info[out_sec][4]
        if "ALLOC" not in flags:
            continue
        if is_tinymp_object(obj):
            tiny["objects"].add(obj)
            if "LOAD" not in flags:
                tiny["bss"] += size
            elif out_info[out_sec][2] != out_info[out_sec][3]:
                tiny["data"] += size
            else:
                tiny["code_rodata"] += size
        elif obj.endswith("frozen_content.o") and "tinymp_" in in_sec:
            tiny["frozen"] += size
    text_total = sum(s[1] for s in loaded if "LOAD" in s[4])

    heap_start, heap_end = symbol(elf, "_heap_start"), symbol(elf, "_heap_end")
    heap = {"main": (heap_end - heap_start) if heap_start is not None and heap_end else None,
            "extra": gc_blocks(elf)}
    return {
        "board": board, "elf": elf, "size": size_out, "regions": use,
        "tinymp": {"flash": tiny["code_rodata"] + tiny["data"] + tiny["frozen"],
                   "code_rodata": tiny["code_rodata"], "data": tiny["data"], "bss": tiny["bss"],
                   "frozen_helpers": tiny["frozen"], "objects": len(tiny["objects"]),
                   "object_names": sorted(os.path.basename(o) for o in tiny["objects"])},
        "flash_image": text_total, "heap": heap,
    }


def kb(n):
    return "%.1f KB" % (n / 1024)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("elf")
    ap.add_argument("--board", default="")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    tool = missing_tool()
    if tool:
        print("error: firmware-size needs %s (apt-get install binutils-arm-none-eabi, which "
              "gcc-arm-none-eabi brings)" % tool, file=sys.stderr)
        return 1
    r = report(a.elf, a.board)
    if a.json:
        r = dict(r)
        print(json.dumps(r, indent=1))
        return 0
    t = r["tinymp"]
    print("%s firmware: %s" % (r["board"] or "MicroPython", os.path.relpath(a.elf)))
    print()
    print("arm-none-eabi-size:")
    # the ELF named as on the line above (make passes an absolute path)
    print(r["size"].rstrip().replace(a.elf, os.path.relpath(a.elf)))
    print()
    print("memory regions (linker script)        used        size    use   (.text/.data/.bss...)")
    for u in r["regions"]:
        print("  %-14s 0x%08x  %12s  %10s  %5.1f%%" % (u["region"], u["origin"], "{:,}".format(u["used"]),
                                                  kb(u["length"]), 100.0 * u["used"] / u["length"]))
    h = r["heap"]
    if h["main"] is not None:
        extra = " + ".join(kb(s) for _, s in h["extra"])
        print("GC heap: main block %s%s (largest single allocation < %s)"
              % (kb(h["main"]), (" + " + extra) if extra else "", kb(max([h["main"]] + [s for _, s in h["extra"]]))))
    print()
    if t["objects"] == 0:
        print("tinymp's share: no tinymp object in the map file (built without USER_C_MODULES?)")
    else:
        print("tinymp's share (%d object files of the user C module, from the linker map):" % t["objects"])
        print("  flash %s bytes = %s of the %s firmware image: code+constants %s, initialised data %s,"
              % ("{:,}".format(t["flash"]), "%.1f%%" % (100.0 * t["flash"] / r["flash_image"]),
                 kb(r["flash_image"]), "{:,}".format(t["code_rodata"]), "{:,}".format(t["data"])))
        print("        frozen helper bytecode %s" % "{:,}".format(t["frozen_helpers"]))
        print("  RAM   %s bytes of static data (.data + .bss); models, plans and arenas are "
              "allocated on the GC heap at run time" % "{:,}".format(t["data"] + t["bss"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
