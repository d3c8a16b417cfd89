"""Board profiles: `boards/<NAME>/profile.json` (SRAM and arena budget, flash for models, clock,
camera, ROMFS). The simulated board enforces the chosen profile's budgets and simulates its ROMFS
segment.

A normal install carries them as package data, `tinymp/board_profiles/<NAME>/profile.json` (copied
there by setup.py); an editable install reads the repository's `boards/` folder beside `host/`.
$TINYMP_BOARDS may name another folder of profiles, searched first.
"""
import json
import os

DEFAULT_SIM = "OPENMV_H7"

KEYS = {
    "name": str, "description": str, "cpu": str, "cpu_hz": int, "float": str, "sram_bytes": int,
    "arena_budget_bytes": int, "flash_bytes": int, "model_flash_bytes": int, "romfs": bool,
    "camera": bool, "notes": str,
}

# Optional keys and their defaults (from the profile): the size of the ROMFS segment the session
# agent writes models into (default: the model flash, when the board has ROMFS), and whether the
# agent can write it through `vfs.rom_ioctl` (MicroPython's stm32 port can; esp32's segment is a
# partition object the agent does not write), and the MicroPython heap the board starts with, in
# which the binding takes its training arena (default: the arena budget; the simulated board gives
# it as INFO's mem_free, the free heap by which the agent places a run's feature cache).
OPTIONAL = {"romfs_bytes": int, "romfs_write": bool, "heap_bytes": int}


class ProfileError(ValueError):
    """A missing or malformed board profile."""


def _dirs():
    here = os.path.dirname(os.path.abspath(__file__))
    dirs = [os.path.join(here, "board_profiles"),                    # package data (setup.py)
            os.path.join(os.path.dirname(os.path.dirname(here)), "boards")]  # repository
    extra = os.environ.get("TINYMP_BOARDS")
    if extra:
        dirs.insert(0, extra)
    return [d for d in dirs if os.path.isdir(d)]


def names():
    """Names of every board with a profile, sorted."""
    found = set()
    for d in _dirs():
        for n in os.listdir(d):
            if os.path.isfile(os.path.join(d, n, "profile.json")):
                found.add(n)
    return sorted(found)


def load(name):
    """The profile of board `name` as a dict (keys as in KEYS); ProfileError naming what is
    wrong."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ProfileError(f"tinymp: bad board name {name!r}")
    for d in _dirs():
        path = os.path.join(d, name, "profile.json")
        if os.path.isfile(path):
            break
    else:
        raise ProfileError(f"tinymp: no board profile {name!r}; known boards: {', '.join(names())}")
    try:
        with open(path) as f:
            prof = json.load(f)
    except (OSError, ValueError) as e:
        raise ProfileError(f"tinymp: cannot read board profile {path}: {e}") from None
    if not isinstance(prof, dict):
        raise ProfileError(f"tinymp: board profile {path} is not a JSON object")
    for key, kind in KEYS.items():
        if key not in prof:
            raise ProfileError(f"tinymp: board profile {path} lacks '{key}'")
        v = prof[key]
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise ProfileError(f"tinymp: board profile {path}: '{key}' must be {kind.__name__}")
        if kind is int and v < 0:
            raise ProfileError(f"tinymp: board profile {path}: '{key}' must be >= 0")
    if prof["name"] != name:
        raise ProfileError(f"tinymp: board profile {path} names itself {prof['name']!r}")
    for key, kind in OPTIONAL.items():
        v = prof.get(key)
        if v is not None and (not isinstance(v, kind) or (kind is int and isinstance(v, bool))):
            raise ProfileError(f"tinymp: board profile {path}: '{key}' must be {kind.__name__}")
    romfs = prof["romfs"]
    prof.setdefault("romfs_bytes", prof["model_flash_bytes"] if romfs else 0)
    prof.setdefault("romfs_write", romfs)
    prof.setdefault("heap_bytes", prof["arena_budget_bytes"])
    if prof["heap_bytes"] < prof["arena_budget_bytes"]:
        raise ProfileError(f"tinymp: board profile {path}: 'heap_bytes' is smaller than "
                           "'arena_budget_bytes' (the training arena is taken from the heap)")
    if romfs and prof["romfs_bytes"] < 1:
        raise ProfileError(f"tinymp: board profile {path}: 'romfs_bytes' must be > 0 when "
                           "'romfs' is true")
    if not romfs and (prof["romfs_bytes"] or prof["romfs_write"]):
        raise ProfileError(f"tinymp: board profile {path}: 'romfs_bytes' and 'romfs_write' need "
                           "'romfs': true")
    if prof["flash_bytes"] and prof["romfs_bytes"] > prof["flash_bytes"]:
        raise ProfileError(f"tinymp: board profile {path}: 'romfs_bytes' is larger than "
                           "'flash_bytes'")
    return prof
