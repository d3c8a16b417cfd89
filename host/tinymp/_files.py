"""File helpers of the CPython binding: atomic writes of saved parameters (the board binding does
the same with MicroPython's os module)."""
import os


def _path(path):
    """A file name as the board takes it: a str (or an os.PathLike of one)."""
    p = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(p, str):
        raise TypeError(f"tinymp: path must be a str or os.PathLike, not '{type(path).__name__}'")
    return p


def atomic_write(path, data):
    """Write `data` to `path` so that a crash leaves either the old file or the new one whole:
    write a temporary file next to it, flush and fsync it, then rename it over `path`."""
    path = _path(path)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable where the platform allows it
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return None
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    return None


def read_bytes(path):
    with open(_path(path), "rb") as f:
        return f.read()
