"""The simulated board: a CPython process running the same `tinymp_agent` with the PC package's
engine, attached through a pseudo-terminal, so the PC talks to it with pyserial exactly as it
talks to a board's USB serial port.

It enforces the chosen board profile (boards/<NAME>/profile.json): a model larger than the
profile's model flash is refused, and the inference arena and every training plan must fit the
profile's arena budget. Its "flash" is a folder (`<sim_dir>/flash`) that outlives the process, as
a board's flash outlives a reset; its times are host CPU times and are labelled so.

A profile with ROMFS gets a ROMFS segment of `romfs_bytes`: the file `<sim_dir>/romfs0.bin`,
memory-mapped (so the agent uses a model in it in place, and it outlives the process), written
through a stand-in for the stm32 port's `vfs.rom_ioctl` (simromfs.py; read-only when the profile
says `romfs_write: false`).

When the profile has a camera, the process gets a simulated `sensor` module whose snapshots are
images of a "scene" (an .npz of uint8 images `x` [N, H, W] and labels `y`), shown 3x enlarged; the
PC side says which label is in front of the camera (`SimBoard.show`), as a person would hold up
an object of the class being collected.

    python -m tinymp.session.simboard --profile OPENMV_H7 --dir DIR [--scene S.npz] [--faults JSON]
runs the board on its standard input and output (the PC side starts it on a pty). --faults holds
FaultyWriter's arguments and "romfs_crash": [op, n, how] (simromfs.Stm32Romfs: the process kills
itself at that flash operation, as a board reset there).
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import tty

from .. import boards

SIM_SUFFIX = " (simulated)"  # a simulated board's name: its profile's name and this
SCALE = 3  # simulated camera frames: scene images enlarged SCALE times


class SimBoard:
    """Start, watch and stop a simulated board process."""

    def __init__(self, profile=None, sim_dir=None, scene=None, faults=None):
        self.profile = boards.load(profile or boards.DEFAULT_SIM)
        if sim_dir is None:
            sim_dir = os.path.join(os.getcwd(), "tinymp-session", "sim", self.profile["name"])
        self.dir = os.path.abspath(sim_dir)
        self.scene = os.path.abspath(scene) if scene else None
        self.faults = faults
        self.proc = None
        self.slave = None
        self.log = None

    @property
    def romfs_path(self):
        """The file holding the simulated ROMFS segment (when the profile has ROMFS)."""
        return romfs_file(self.dir)

    def start(self):
        """Spawn the board on a new pseudo-terminal; return the path of the PC's end."""
        os.makedirs(self.dir, exist_ok=True)
        master, slave = os.openpty()
        # raw before anything is written: no echo, no line editing, 8 bits through
        tty.setraw(slave)
        self.slave = slave
        cmd = [sys.executable, "-m", "tinymp.session.simboard", "--profile", self.profile["name"],
               "--dir", self.dir]
        if self.scene:
            cmd += ["--scene", self.scene]
        if self.faults:
            cmd += ["--faults", json.dumps(self.faults)]
        self.log = open(os.path.join(self.dir, "board.log"), "ab")
        env = dict(os.environ)
        host = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = host + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            self.proc = subprocess.Popen(cmd, stdin=master, stdout=master, stderr=self.log,
                                         close_fds=True, env=env, start_new_session=True)
        finally:
            os.close(master)
        return os.ttyname(slave)

    def release_slave(self):
        """After the PC has opened the pty itself: drop the extra handle kept since start."""
        if self.slave is not None:
            os.close(self.slave)
            self.slave = None

    def why_dead(self):
        """None while the process runs, else why it is gone (one line)."""
        if self.proc is None:
            return "the simulated board was never started"
        rc = self.proc.poll()
        if rc is None:
            return None
        if rc < 0:
            try:
                sig = signal.Signals(-rc).name
            except ValueError:
                sig = str(-rc)
            return f"the simulated board process was killed ({sig})"
        return f"the simulated board process ended (exit status {rc}; see {self.dir}/board.log)"

    def show(self, label):
        """What the simulated camera sees next: an image of class `label` from the scene."""
        path = os.path.join(self.dir, "scene.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"label": int(label)}, f)
        os.replace(tmp, path)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._cleanup()

    def close(self, wait=2.0):
        if self.proc is not None:
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._cleanup()

    def _cleanup(self):
        self.release_slave()
        if self.log is not None:
            self.log.close()
            self.log = None


# --- the board process ----------------------------------------------------------------------

class SimImage:
    """The part of OpenMV's image.Image the agent uses."""

    def __init__(self, w, h, data):
        self._w, self._h, self._data = w, h, data

    def width(self):
        return self._w

    def height(self):
        return self._h

    def bytearray(self):
        return self._data


def check_scene(path):
    """The images and labels of a scene file (uint8 x [N, H, W], integer y [N]); ValueError
    saying what is wrong. The PC checks a scene with this before it starts the simulated board,
    so that a bad file is the user's error, not a board that failed to start."""
    import numpy as np

    from .._arrayfiles import ArrayFileError, read_npz
    if not os.path.isfile(path):
        raise ValueError("no such file")

    def check(heads):  # from the headers alone: a wrong file's data is never read; read_npz
        # passes this ValueError through as it is
        (xt, xs), (yt, ys) = heads["x"], heads["y"]
        if xt != np.uint8 or len(xs) != 3 or 0 in xs:
            raise ValueError(f"'x' must be uint8 images [N, H, W], not {xt} {list(xs)}")
        if not np.issubdtype(yt, np.integer) or ys != xs[:1]:
            raise ValueError(f"'y' must be one integer label per image, not {yt} {list(ys)}")
    try:
        arrays = read_npz(path, ("x", "y"), check)
    except ArrayFileError as e:  # headers checked before any data is read
        raise ValueError(f"{e}" + ("" if not e.wrong_kind else "; it must hold arrays 'x' (uint8 "
                                   "images [N, H, W]) and 'y' (labels)")) from None
    x, y = arrays["x"], arrays["y"]
    return x, y.astype(int)


class SimSensor:
    """A stand-in for OpenMV's `sensor` module: grayscale snapshots of the scene."""
    GRAYSCALE, RGB565 = 1, 2
    QQVGA, QVGA = 1, 2

    def __init__(self, scene, state_dir):
        import numpy as np
        self.x, self.y = check_scene(scene)
        self.state_dir = state_dir
        self.np = np

    def reset(self):
        pass

    def set_pixformat(self, fmt):
        if fmt != self.GRAYSCALE:
            raise ValueError("the simulated camera is grayscale")

    def set_framesize(self, size):
        pass

    def skip_frames(self, time=0, n=0):
        pass

    def snapshot(self):
        np = self.np
        try:
            with open(os.path.join(self.state_dir, "scene.json")) as f:
                label = int(json.load(f)["label"])
        except (OSError, ValueError, KeyError):
            label = None
        pos_path = os.path.join(self.state_dir, "scene.pos.json")
        try:
            with open(pos_path) as f:
                pos = json.load(f)
        except (OSError, ValueError):
            pos = {}
        idx = np.flatnonzero(self.y == label) if label is not None else np.arange(len(self.y))
        if len(idx) == 0:
            idx = np.arange(len(self.y))
        key = str(label)
        k = int(pos.get(key, 0))
        img = self.x[idx[k % len(idx)]]
        pos[key] = k + 1
        tmp = pos_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(pos, f)
        os.replace(tmp, pos_path)
        big = np.kron(img, np.ones((SCALE, SCALE), dtype=np.uint8))
        h, w = big.shape
        return SimImage(w, h, bytearray(big.tobytes()))


class FaultyWriter:
    """Damages what the board sends, one frame (one write) at a time."""

    def __init__(self, out, flip=0.0, drop=0.0, dup=0.0, seed=0):
        self.out = out
        self.flip, self.drop, self.dup = flip, drop, dup
        self.rng = random.Random(seed)

    def write(self, data):
        r = self.rng.random()
        if r < self.drop:
            return len(data)
        data = bytearray(data)
        if r < self.drop + self.flip:
            i = self.rng.randrange(len(data) * 8)
            data[i // 8] ^= 1 << (i % 8)
        self.out.write(data)
        if self.rng.random() < self.dup:
            self.out.write(data)
        return len(data)

    def flush(self):
        self.out.flush()


def romfs_file(sim_dir, segment=0):
    return os.path.join(sim_dir, f"romfs{segment}.bin")


def romfs_memory(path, size):
    """The simulated ROMFS segment: `size` bytes of the file at `path` (created erased, 0xFF),
    memory-mapped, so what the agent writes outlives the process as flash outlives a reset."""
    import mmap
    if not os.path.exists(path) or os.path.getsize(path) != size:
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(b"\xff" * size)
        os.replace(tmp, path)
    with open(path, "r+b") as f:
        return mmap.mmap(f.fileno(), size)  # the mapping keeps its own handle


def sim_romfs(profile, sim_dir, crash=None):
    """The stand-in for vfs.rom_ioctl of a profile with ROMFS (None without)."""
    from .simromfs import Stm32Romfs
    if not profile["romfs"]:
        return None
    mem = romfs_memory(romfs_file(sim_dir), profile["romfs_bytes"])

    def reset():  # a board reset in the middle of a flash operation
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    return Stm32Romfs(mem, writable=profile["romfs_write"],
                      crash=tuple(crash) if crash else None, on_crash=reset)


def board_config(profile):
    p = profile
    return {
        "name": p["name"] + SIM_SUFFIX,
        "simulated": True,
        "arena_budget": p["arena_budget_bytes"],
        "model_flash": p["model_flash_bytes"],
        "mem_total": p["sram_bytes"],
        "mem_free": p["heap_bytes"],  # measures none: the profile's heap stands for it
        "romfs": p["romfs"],
        "camera": p["camera"],
        "clock": "host",
        "cpu": p["cpu"],
        "cpu_hz": p["cpu_hz"],
    }


def run(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tinymp.session.simboard")
    ap.add_argument("--profile", default=boards.DEFAULT_SIM)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--scene")
    ap.add_argument("--faults")
    args = ap.parse_args(argv)
    profile = boards.load(args.profile)
    if args.scene and profile["camera"]:
        sys.modules["sensor"] = SimSensor(args.scene, args.dir)
    from .. import tinymp_agent

    inp = os.fdopen(0, "rb", buffering=0)
    out = os.fdopen(1, "wb")
    faults = json.loads(args.faults) if args.faults else {}
    crash = faults.pop("romfs_crash", None)
    if faults:
        out = FaultyWriter(out, **faults)
    root = os.path.join(args.dir, "flash")
    os.makedirs(root, exist_ok=True)
    cfg = board_config(profile)
    rom = sim_romfs(profile, args.dir, crash)
    if rom is not None:
        cfg["rom_ioctl"] = rom.rom_ioctl
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} simulated board {profile['name']} up, flash {root}",
          file=sys.stderr, flush=True)
    tinymp_agent.main(inp, out, root=root, board=cfg)


if __name__ == "__main__":
    run()
