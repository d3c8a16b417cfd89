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


def check_regular(path, what, shown=None):
    """os.stat(path) of a file a user named, when it is a regular file: a FIFO would block a read
    for ever and /dev/zero never ends. ValueError, one line naming it (as `shown`, else `path`):
    a folder or another kind of file ("... not `what`"). OSError is the caller's to word."""
    import stat
    st = os.stat(path)
    shown = path if shown is None else shown
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{shown} is a folder, not {what}")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{shown} is not a regular file ({what} is expected)")
    return st


def missing_dirs(path):
    """The folders of `path` that do not exist yet, deepest first (what a makedirs would make)."""
    out, p = [], os.path.abspath(path)
    while not os.path.lexists(p) and os.path.dirname(p) != p:
        out.append(p)
        p = os.path.dirname(p)
    return out


def remove_empty_dirs(dirs):
    """Remove the folders `dirs` (deepest first) while they are empty; stop at the first that
    is not."""
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            return


def read_regular(path, most, what, too_large):
    """The bytes of a file a user named, read only when it is a regular file of at most `most`
    bytes (check_regular). ValueError, one line naming `path`: a folder or another kind of file
    ("... not `what`"), or a larger file ("is larger than `too_large`"). OSError (no such file,
    no permission) is the caller's to word."""
    st = check_regular(path, what)
    if st.st_size > most:
        raise ValueError(f"{path} is larger than {too_large}")
    # in pieces: read(most + 1) would allocate `most` bytes up front; and a file that grew since
    # the stat is caught here
    pieces, n = [], 0
    with open(path, "rb") as f:
        while True:
            piece = f.read(min(1 << 20, most + 1 - n))
            if not piece:
                return b"".join(pieces)
            pieces.append(piece)
            n += len(piece)
            if n > most:
                raise ValueError(f"{path} is larger than {too_large}")
