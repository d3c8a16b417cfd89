# tinymp_romfs: the session agent's copy of the committed model in the board's ROMFS segment,
# used in place from the memory-mapped flash (docs/SESSION.md, "Models in ROMFS").
#
# Runs unchanged under MicroPython (frozen into the firmware beside tinymp_agent, which imports
# it when present) and CPython (the simulated board). Only sys, os and optionally hashlib,
# binascii, gc and vfs are used. The flash is reached through a `rom_ioctl` function:
# `vfs.rom_ioctl` of MicroPython (only its stm32 port writes), or a stand-in on the simulated
# board (tinymp/session/simromfs.py):
#
#     rom_ioctl(1) = number of segments; (2, id) = the segment's memory; (3, id, n) = erase for
#     n bytes, returns the write granularity; (4, id, offset, buf) = program; (5, id) = done.
#     A negative int is an error number.
#
# The image holds one file, tinymp/model.tmpm, whose data starts AT bytes into the image (and so
# into the flash):
#
#     d2 cd 31 <n>                      the filesystem record (kind 0x14a6b1), payload n bytes
#       04 <n> 06 "tinymp"              a directory holding
#         05 <n> 0a "model.tmpm"        a file whose data is
#           03 <n> <size> <offset>      `size` bytes at `offset` of the filesystem's payload
#       01 <n> ff ff ...                padding up to the data
#       02 <n> <model> [ff]             the data (and a pad byte when size is odd: an image has
#                                       an even length)
#
# Numbers are ROMFS varuints: 7 bits a byte, most significant first, high bit set on all but the
# last byte; a leading 0x80 byte widens one without changing its value.
#
# The record file (romfs.rec, beside the committed model) is one line: "writing <segment>
# <sha256>" from before the first byte of flash changes until the image was read back, then
# "ok <segment> <sha256> <bytes> <at>". Only "ok" with the committed model's SHA-256 (and the
# segment's bytes hashing to it) lets the agent use ROMFS.

import os
import sys

try:
    import hashlib
except ImportError:  # pragma: no cover
    hashlib = None
try:
    import binascii
except ImportError:  # pragma: no cover
    binascii = None
try:
    import gc
except ImportError:  # pragma: no cover
    gc = None

DIR = b"tinymp"
FILE = b"model.tmpm"
AT = 64        # where the model starts in the image: flash-word and 16-byte aligned
ALIGN = 32     # the smallest write unit used: the STM32H7's 256-bit flash word
CHUNK = 2048   # bytes per flash write: the RAM a ROMFS write takes besides the 64-byte head
EINVAL = 22


# ---------------------------------------------------------------------------------------------
# The image

def _vu(v, width=1):
    out = [v & 0x7F]
    v >>= 7
    while v:
        out.insert(0, 0x80 | (v & 0x7F))
        v >>= 7
    while len(out) < width:
        out.insert(0, 0x80)
    return bytes(out)


def _rec(kind, payload):
    return _vu(kind) + _vu(len(payload)) + payload


def _round_up(n, a):
    return (n + a - 1) // a * a


def image_bytes(size, at=AT):
    """Length of the image holding a `size`-byte model at byte `at`."""
    return at + size + (size & 1)


def head(size, at=AT):
    """The first `at` bytes of the image holding a `size`-byte model at byte `at` (`at` even);
    the model's bytes, then 0xFF when `size` is odd, complete the image. ValueError when `at`
    leaves too little room for the records. Varuints are as short as the layout allows."""
    m = size + (size & 1)
    data = _vu(2) + _vu(m)
    for lw in range(1, 6):  # bytes of the filesystem record's length
        off = at - 3 - lw   # the data's offset in the filesystem's payload
        if off < 0 or len(_vu(off + m)) > lw:
            continue
        entries = _rec(4, _vu(len(DIR)) + DIR +
                       _rec(5, _vu(len(FILE)) + FILE + _rec(3, _vu(size) + _vu(off))))
        gap = off - len(entries) - len(data)  # what the padding record must take
        for w in range(1, 6):
            n = gap - 1 - w
            if n >= 0 and len(_vu(n)) <= w:
                return (b"\xd2\xcd\x31" + _vu(off + m, lw) + entries + _vu(1) + _vu(n, w) +
                        b"\xff" * n + data)
        break
    raise ValueError("no room for a ROMFS head of %d bytes" % at)


def _vu_at(mem, pos, end):
    v = 0
    while True:
        if pos >= end:
            raise ValueError("damaged ROMFS image")
        b = mem[pos]
        pos += 1
        v = (v << 7) | (b & 0x7F)
        if not b & 0x80:
            return v, pos


def names(mem):
    """The names (bytes) at the top of the ROMFS image at the start of `mem`: [] for an empty
    image, None when `mem` holds no image (erased flash). ValueError when it is damaged."""
    end = len(mem)
    if end < 4 or mem[0] != 0xD2 or mem[1] != 0xCD or mem[2] != 0x31:
        return None
    _, pos = _vu_at(mem, 0, end)
    n, pos = _vu_at(mem, pos, end)
    if pos + n > end:
        raise ValueError("damaged ROMFS image")
    end = pos + n
    out = []
    while pos < end:
        kind, pos = _vu_at(mem, pos, end)
        n, pos = _vu_at(mem, pos, end)
        nxt = pos + n
        if kind == 0 or nxt > end:
            raise ValueError("damaged ROMFS image")
        if kind == 4 or kind == 5:  # a directory or a file
            k, p = _vu_at(mem, pos, nxt)
            out.append(bytes(mem[p:p + k]))
        pos = nxt
    return out


# ---------------------------------------------------------------------------------------------
# The segment and the store

def _hex(b):
    if binascii is not None and hasattr(binascii, "hexlify"):
        return binascii.hexlify(b).decode()
    return "".join("%02x" % x for x in b)


def _sha256(buf):
    h = hashlib.sha256()
    h.update(buf)
    return _hex(h.digest())


def _write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        fsync = getattr(os, "fsync", None)
        if fsync is not None and hasattr(f, "fileno"):
            fsync(f.fileno())
        elif hasattr(os, "sync"):
            os.sync()
    try:
        os.rename(tmp, path)
    except OSError:  # FAT: no rename over a file (a reset between the two: no record, no ROMFS)
        try:
            os.remove(path)
        except OSError:
            pass
        os.rename(tmp, path)


class Refused(Exception):
    """ROMFS is not written. args: (state, message)."""


class Segment:
    """One ROMFS segment reached through `ioctl` (see the top of this file)."""

    def __init__(self, ioctl, sid=0, mount=None):
        n = ioctl(1)
        if not isinstance(n, int) or not 0 <= sid < n:
            raise OSError("no ROMFS segment %d" % sid)
        seg = ioctl(2, sid)
        if isinstance(seg, int):
            raise OSError("ROMFS segment %d: error %d" % (sid, seg))
        self.mem = memoryview(seg)  # TypeError where the segment is not memory-mapped (esp32)
        self.ioctl = ioctl
        self.id = sid
        self.size = len(self.mem)
        self.mount_point = mount  # where MicroPython mounts it (/rom): remounted after a write

    def call(self, *args):
        r = self.ioctl(*args)
        if isinstance(r, int) and r < 0:
            raise OSError(-r)
        return r

    def _vfs(self):
        if not self.mount_point or sys.implementation.name != "micropython":
            return None
        try:
            import vfs
            return vfs
        except ImportError:  # pragma: no cover
            return None

    def unmount(self):
        v = self._vfs()
        if v is not None:
            try:
                v.umount(self.mount_point)
            except OSError:
                pass

    def mount(self):
        v = self._vfs()
        if v is not None:
            try:
                v.mount(v.VfsRom(self.mem), self.mount_point)
            except Exception:  # noqa: BLE001 - /rom is for the user; the agent does not need it
                pass


def open_store(board, record_path):
    """The ROMFS store of this board (None without a ROMFS segment the agent can map). `board`
    may give "rom_ioctl" (a stand-in; None: no ROMFS), "romfs_segment" (default 0) and
    "romfs_mount"; under MicroPython the default is vfs.rom_ioctl, segment 0 mounted at /rom."""
    ioctl = board.get("rom_ioctl")
    mount = board.get("romfs_mount")
    sid = board.get("romfs_segment", 0)
    if "rom_ioctl" not in board and sys.implementation.name == "micropython":
        try:
            import vfs
            ioctl = getattr(vfs, "rom_ioctl", None)
        except ImportError:
            ioctl = None
        if mount is None and sid == 0:
            mount = "/rom"  # where MicroPython mounts segment 0 at boot
    if ioctl is None or hashlib is None:
        return None
    try:
        return Store(Segment(ioctl, sid, mount), record_path)
    except (OSError, TypeError, ValueError):
        return None


class Store:
    """The committed model's copy in one ROMFS segment, and its record file."""

    def __init__(self, seg, record_path):
        self.seg = seg
        self.path = record_path
        self.verified = None  # the SHA-256 whose copy was read back and matched, this run
        self.problem = None   # (state, message) of this run's last failed write

    def record(self):
        """("ok", sha, bytes, at) or ("writing", sha) for this segment, or None."""
        try:
            with open(self.path) as f:
                w = f.read().split()
        except OSError:
            return None
        try:
            if len(w) == 5 and w[0] == "ok" and int(w[1]) == self.seg.id:
                return ("ok", w[2], int(w[3]), int(w[4]))
            if len(w) == 3 and w[0] == "writing" and int(w[1]) == self.seg.id:
                return ("writing", w[2])
        except ValueError:
            pass
        return None

    def copy(self, sha):
        """A memoryview of the model in ROMFS when the record says ROMFS holds `sha` (hex) and
        the segment's bytes match it (read back and hashed once per run), else None."""
        s = self.seg
        rec = self.record()
        if sha is None or rec is None or rec[0] != "ok" or rec[1] != sha:
            return None
        n, at = rec[2], rec[3]
        if n < 1 or at < 0 or image_bytes(n, at) > s.size:
            return None
        if self.verified != sha:
            try:
                h = head(n, at)
            except ValueError:
                return None
            if bytes(s.mem[:at]) != h or _sha256(s.mem[at:at + n]) != sha:
                return None  # the segment was rewritten since (mpremote romfs deploy, ...)
            self.verified = sha
        return s.mem[at:at + n]

    def state(self, size, serving):
        """What ROMFS holds, for INFO: `size` is the committed model's (-1: none), `serving`
        whether the agent's model is read from ROMFS."""
        s = self.seg
        st = {"segment": s.id, "bytes": s.size, "serving": serving, "note": None}
        rec = self.record()
        if serving:
            state = "model"
        elif rec is not None and rec[0] == "writing":
            state = "interrupted"
        elif size > 0 and image_bytes(size) > s.size:
            state = "too_big"
        elif self.problem is not None:
            state, st["note"] = self.problem
        else:
            try:
                held = names(s.mem)
            except ValueError:
                held = [b"?"]
            if not held:
                state = "empty"
            elif held == [DIR]:
                state = "stale"  # an image of the agent's, with another model
            else:
                state = "foreign"
        st["state"] = state
        # worth another try (PUSH_ROMFS): nothing makes the write impossible
        st["retry"] = size > 0 and state in ("empty", "stale", "interrupted", "failed")
        return st

    def commit(self, sha, size, model_path):
        """Write the committed model (the file at `model_path`, `size` bytes, SHA-256 `sha`)
        into ROMFS. Nothing may read the segment meanwhile (the agent drops its model first).
        Returns {present, written, in_place, state, warning, image_bytes, segment_bytes};
        raises only what ends the program (a board reset in the tests: a BaseException)."""
        out = {"present": True, "written": False, "in_place": False, "state": None,
               "warning": None, "image_bytes": None, "segment_bytes": self.seg.size}
        try:
            out["image_bytes"], out["written"] = self._write(sha, size, model_path)
            out["in_place"] = True
            out["state"] = "model"
            self.problem = None
        except Refused as e:
            self.problem = (e.args[0], e.args[1])
        except Exception as e:  # noqa: BLE001 - the committed model must survive any failure
            self.problem = ("failed", "the ROMFS write failed: %s: %s" % (type(e).__name__, e))
        if self.problem is not None:
            out["state"], out["warning"] = self.problem
        return out

    def _too_big(self, need):
        return Refused("too_big", "the model's ROMFS image (%d bytes) does not fit the %d-byte "
                       "ROMFS segment" % (need, self.seg.size))

    def _write(self, sha, size, model_path):
        """(image bytes, whether flash was written). Refused when ROMFS must not or cannot be
        written; OSError when the flash refuses."""
        s = self.seg
        if self.copy(sha) is not None:
            return image_bytes(size), False  # already there, read back and matched
        need = image_bytes(size)
        if need > s.size:
            raise self._too_big(need)
        rec = self.record()
        if rec is None or rec[0] != "writing":
            # erase only flash that holds nothing, an empty ROMFS or one of the agent's images
            try:
                held = names(s.mem)
            except ValueError:
                held = [b"(a damaged image)"]
            if held and held != [DIR]:
                raise Refused("foreign", "the ROMFS segment holds other files (%s), left as they "
                              "are" % ", ".join(n.decode() for n in held[:4]))
        # 1. mark ROMFS as holding no model before the first byte of flash changes
        _write_atomic(self.path, "writing %d %s\n" % (s.id, sha))
        self.verified = None
        s.unmount()
        # 2. erase (the port says its write granularity: 16 on stm32, whose H7 programs 32)
        try:
            g = s.call(3, s.id, need)
        except OSError as e:
            if e.args[0] != EINVAL:
                raise
            # EINVAL: a port without ROMFS writes (or a bad length); no flash was touched
            if rec is not None and rec[0] == "ok":
                _write_atomic(self.path, "ok %d %s %d %d\n" % (s.id, rec[1], rec[2], rec[3]))
            else:
                os.remove(self.path)
            s.mount()
            raise Refused("unwritable", "this port does not write its ROMFS segment "
                          "(rom_ioctl WRITE_PREPARE: EINVAL)")
        align = ALIGN
        if isinstance(g, int) and g > align:
            align = g
        at = _round_up(AT, align)
        if at != AT:
            need = image_bytes(size, at)
            if need > s.size:
                raise self._too_big(need)
            s.call(3, s.id, need)
        # 3. the model, streamed from the file in aligned chunks (the last padded with 0xFF)
        chunk = _round_up(CHUNK, align)
        buf = bytearray(chunk)
        mv = memoryview(buf)
        done = 0
        with open(model_path, "rb") as f:
            while done < size:
                want = min(chunk, size - done)
                got = 0
                while got < want:
                    k = f.readinto(mv[got:want])
                    if not k:
                        raise Refused("failed", "the ROMFS write stopped: the model file ended "
                                      "at %d of its %d bytes" % (done + got, size))
                    got += k
                k = _round_up(want, align)
                for i in range(want, k):
                    buf[i] = 0xFF
                s.call(4, s.id, at + done, mv[:k])
                done += want
        buf = mv = None
        if gc is not None:
            gc.collect()
        # 4. read the model back through the mapping (every byte read is one programmed: CPU
        # stores, which a write-through data cache sees, unlike the erase)
        if _sha256(s.mem[at:at + size]) != sha:
            raise Refused("failed", "the model read back from ROMFS does not match its SHA-256")
        # 5. the head last, its first flash word (the magic) after the rest: until that word is
        # programmed the segment holds no ROMFS image at all, not even a damaged one
        h = head(size, at)
        if at > align:
            s.call(4, s.id, align, h[align:])
        s.call(4, s.id, 0, h[:align])
        if bytes(s.mem[:at]) != h:
            raise Refused("failed", "the ROMFS image head read back from flash differs")
        s.ioctl(5, s.id)  # WRITE_COMPLETE: stm32 does not implement it (-EINVAL), others may
        # 6. the record: from here on the model is served from ROMFS
        _write_atomic(self.path, "ok %d %s %d %d\n" % (s.id, sha, size, at))
        self.verified = sha
        s.mount()
        return need, True
