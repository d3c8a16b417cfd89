"""Reading the .npy and .npz files a user gives (samples, calibration samples, a scene), with
every header checked before any data is read. np.load trusts a file: it allocates what the header
declares (terabytes for a damaged one), lets zipfile's errors through for a damaged .npz, and
returns one array where an archive was asked for. Here each problem is an ArrayFileError whose
message, one line without the file's name, says what is wrong; the caller names the file."""
import contextlib
import math
import os
import struct
import tokenize
import warnings
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npformat

NPY_MAGIC = b"\x93NUMPY"


class ArrayFileError(ValueError):
    """What is wrong with an array file, in words; `damaged`: it is cut short or corrupted;
    `too_large`: its arrays do not fit in memory (else it is readable but not what was asked
    for: only then does a hint about the file's format help)."""

    def __init__(self, msg, damaged=False, too_large=False):
        super().__init__(msg)
        self.damaged = damaged
        self.too_large = too_large

    @property
    def wrong_kind(self):
        """A readable file, but not the arrays asked for."""
        return not (self.damaged or self.too_large)


# what zipfile and zlib raise for a damaged archive, besides OSError
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, struct.error,
               NotImplementedError, RuntimeError, ValueError, OverflowError)


def _checked_header(f, size):
    """The dtype and shape of the array stream `f` (of `size` bytes) after checking that its
    header is one, that it holds no Python objects, and that the bytes after it are exactly those
    of the shape it declares."""
    try:
        # a damaged header is parsed as Python source: its SyntaxWarnings would be more lines
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            version = npformat.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = npformat.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = npformat.read_array_header_2_0(f)
            else:  # 3.0 only names structured fields beyond Latin-1: not an array of numbers
                raise ArrayFileError(f"it is numpy array format {version[0]}.{version[1]}, "
                                     "which tinymp does not read")
    except ArrayFileError:
        raise
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError,
            tokenize.TokenError) as e:  # numpy parses the header as Python literals
        raise ArrayFileError(f"it is not a numpy array ({_one_line(e)})", True) from None
    if dtype.hasobject:
        raise ArrayFileError("it holds Python objects (pickled data), which tinymp does not load: "
                             "save arrays of numbers")
    need = math.prod(shape) * dtype.itemsize
    have = size - f.tell()
    if need != have:
        raise ArrayFileError(f"its header declares a {dtype} array of shape {tuple(shape)} "
                             f"({need:,} bytes of data) but {have:,} bytes follow it: the file "
                             "is truncated or damaged", True)
    return dtype, tuple(shape)


def _one_line(e, most=160):
    """An exception's words on one line, cut short (numpy quotes a whole bad header)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= most else text[:most - 3] + "..."


def _read_array(f, what):
    try:
        return npformat.read_array(f, allow_pickle=False)
    except MemoryError:
        raise ArrayFileError(f"{what} is too large to load into memory", too_large=True) from None


def read_npy(path):
    """The one array of the .npy file `path`."""
    f = _open(path)
    with f:
        try:
            if f.read(4) == b"PK\x03\x04":
                names = npz_names(path)
                raise ArrayFileError("it is an .npz archive" +
                                     (f" ({', '.join(names)})" if names else "") +
                                     ", not a single array (.npy)")
            f.seek(0)
            _checked_header(f, os.fstat(f.fileno()).st_size)
            f.seek(0)
            return _read_array(f, "the array")
        except ArrayFileError:
            raise
        except (OSError, ValueError) as e:  # a read error, or a file that changed meanwhile
            raise ArrayFileError(f"it is truncated or damaged ({_one_line(e)})", True) from None


def _open(path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise ArrayFileError(f"cannot read it: {e.strerror or e}") from None


def npz_names(path):
    """The array names of the .npz archive `path`, or None when it is not a readable one."""
    try:
        with zipfile.ZipFile(path) as z:
            return [n[:-4] if n.endswith(".npy") else n for n in z.namelist()]
    except (OSError,) + _ZIP_ERRORS:
        return None


def _memory_bytes():
    """This computer's physical memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def memory_problem(heads):
    """Why arrays of these headers ({name: (dtype, shape)}) cannot be loaded (more data than this
    computer's memory), or None."""
    need = sum(math.prod(shape) * dtype.itemsize for dtype, shape in heads.values())
    have = _memory_bytes()
    if have is not None and need > have:
        return f"its arrays hold {need:,} bytes of data, more than this computer's memory " \
            f"({have:,} bytes)"
    return None


# the most of an array's data read_npz holds at once when it streams the array
CHUNK_BYTES = 4 << 20


def _stream_array(m, size, each):
    """Pass the data of the .npy stream `m` (of `size` bytes, header included) to `each` as 1-D
    arrays of its dtype of at most CHUNK_BYTES, in the file's order (a Fortran-ordered array's
    too), reading it to its end: a zip member's CRC is checked there. `each` records what it
    finds: an error it raised would be taken for damage."""
    dtype, shape = _checked_header(m, size)
    left = math.prod(shape) * dtype.itemsize
    step = max(1, CHUNK_BYTES // max(1, dtype.itemsize)) * dtype.itemsize
    while left:
        n = min(step, left)
        data = m.read(n)
        if len(data) != n:  # zipfile checks a member's length and CRC itself: not expected
            raise EOFError(f"its data ends {left - len(data):,} bytes short of its header's size")
        each(np.frombuffer(data, dtype))
        left -= n


@contextlib.contextmanager
def _zip_errors(where):
    """zipfile's and zlib's errors as one ArrayFileError naming `where()` (the member being
    read, or the archive)."""
    try:
        yield
    except ArrayFileError:
        raise
    except (OSError,) + _ZIP_ERRORS as e:
        raise ArrayFileError(f"{where()} is damaged ({_one_line(e)})", True) from None


def read_npz(path, names, check=None, stream=None):
    """{name: array} of the arrays `names` of the .npz archive `path` (as numpy.savez writes
    them: members NAME.npy); the archive's other members are not read.

    Every array's header is checked before any data is read, then `check({name: (dtype,
    shape)})`, when given, may refuse what the caller cannot use: its exception passes through
    unchanged. So an array of the wrong shape is never inflated, nor one that could not fit in
    this computer's memory (a small archive can declare gigabytes of compressed zeros).

    `stream`: {name: each} of arrays of `names` that are not held, but read piece by piece, each
    piece passed to `each` (see _stream_array), so that a caller can check data it loads later
    without holding it; such an array is not in the result. It counts against this computer's
    memory all the same: what could not be loaded is refused before it is streamed."""
    stream = stream or {}
    member = None

    def where():
        return f"its member {member}" if member else "the archive"
    f = _open(path)
    with f:
        with _zip_errors(where):
            if f.read(len(NPY_MAGIC)) == NPY_MAGIC:
                raise ArrayFileError("it is a single numpy array (.npy), not an .npz archive")
            f.seek(0)
            zipped = f.read(4) == b"PK\x03\x04"
            f.seek(0)
            try:
                z = zipfile.ZipFile(f)
            except (OSError,) + _ZIP_ERRORS as e:
                if zipped:
                    raise ArrayFileError(f"it is a zip archive that is truncated or damaged "
                                         f"({_one_line(e)})", True) from None
                raise ArrayFileError(f"it is not an .npz archive (a zip of .npy arrays): "
                                     f"{_one_line(e)}") from None
        with z:
            with _zip_errors(where):
                held = z.namelist()
                found = {}
                for n in names:
                    for m in (n + ".npy", n):
                        if m in held:
                            found[n] = m
                            break
                missing = [n for n in names if n not in found]
                if missing:
                    have = ", ".join(repr(h[:-4] if h.endswith(".npy") else h)
                                     for h in held[:8]) or "nothing"
                    raise ArrayFileError(
                        f"it holds no array {' or '.join(repr(n) for n in missing)} (it holds "
                        f"{have}{', ...' if len(held) > 8 else ''})")
                heads = {}
                for n in names:
                    member = found[n]
                    info = z.getinfo(member)
                    with z.open(info) as m:
                        try:
                            heads[n] = _checked_header(m, info.file_size)
                        except ArrayFileError as e:
                            raise ArrayFileError(f"array '{n}': {e}", e.damaged) from None
                member = None
            if check is not None:
                check(heads)
            problem = memory_problem(heads)
            if problem:
                raise ArrayFileError(problem, too_large=True)
            out = {}
            with _zip_errors(where):
                for n in names:
                    member = found[n]
                    with z.open(member) as m:
                        if n in stream:
                            _stream_array(m, z.getinfo(member).file_size, stream[n])
                        else:
                            out[n] = _read_array(m, f"array '{n}'")
            return out
