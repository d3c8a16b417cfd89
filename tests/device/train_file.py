# tinymp on the board: Trainer.save(path) / load(path) through the VFS. save() writes path + '.tmp'
# and renames it over path; load() checks the whole file (version, model, plan, CRC) before it
# changes anything, so a corrupted or foreign file raises ValueError and the trainer keeps its
# parameters. Where no writable filesystem is mounted (the qemu port) the script mounts a small
# filesystem written in Python (vfs.mount) and uses that: the output is the same everywhere.
# save() and load() go through a 512-byte buffer, never the whole file: on MicroPython, with the
# port's own filesystem, the heap grows by less than the file's size.
try:
    import tinymp

    tinymp.Trainer
except (ImportError, AttributeError):
    print("SKIP")
    raise SystemExit

import gc
import os
import sys

# BEGIN MODEL (written by make_models.py)
MODEL = (
    b'TMPM\x01\x00@\x00\xa0\x05\x00\x00\x04\x93\xe2t\x08\x00\x08\x00\x03\x00\x04\x00\x81\x80'
    b'\x00<\xff\xff\xff\xff\x07\x00\x06\x00@\x00\x00\x00\xb0\x00\x00\x00\x80\x05\x00\x00\x14'
    b'\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x08\x00\x08\x00\x03\x00\x00'
    b'\x00\x81\x80\x00<\xff\xff\xff\xff\x04\x00\x04\x00\x08\x00\x00\x00.\x7fL<\x80\xff\xff\xff'
    b'\x04\x00\x04\x00\x08\x00\x00\x00\xd18"<\x80\xff\xff\xff\x04\x00\x04\x00\x08\x00\x00\x00\t'
    b'\xa3\x7f<\xfd\xff\xff\xff\x04\x00\x04\x00\x08\x00\x00\x00\xf8\xdb\x9e<\xe5\xff\xff\xff'
    b'\x01\x00\x01\x00\x08\x00\x00\x00\xfe\x9f\xa1;\xce\xff\xff\xff\x01\x00\x01\x00\x04\x00\x00'
    b'\x00\xc4\x95\xf4;\xd1\xff\xff\xff\x01\x00\x03\x03\x02\x02\x00\x00\x01\x01\x80\x7f\x00\x00'
    b'\xff\xff\x01\x00\x00\x000\x02\x00\x00\x10\x03\x00\x000\x03\x00\x00P\x03\x00\x00p\x03\x00'
    b'\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00'
    b'\x00\x00\x00\x02\x00\x03\x03\x01\x01\x01\x01\x01\x01\x80\x7f\x01\x00\xff\xff\x02\x00\x00'
    b'\x00\x90\x03\x00\x00\xe0\x03\x00\x00\x00\x04\x00\x00 \x04\x00\x00@\x04\x00\x00\x00\x00'
    b'\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00'
    b'\x03\x00\x01\x01\x01\x01\x00\x00\x00\x00\x80\x7f\x02\x00\xff\xff\x03\x00\x00\x00`\x04\x00'
    b'\x00\xa0\x04\x00\x00\xc0\x04\x00\x00\xe0\x04\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00'
    b'\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00'
    b'\x00\x00\x00\x00\x00\x00\x00\x80\x7f\x01\x00\x03\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00'
    b'\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\xc6df\xff\xff\xff\xff'
    b'\x00\x00\x00@\x00\x00\x00\x00k0\xfdf\xed\xff\xff\xff\x05\x00\x00\x00\x00\x00\x00\x00\x00'
    b'\x00\x80\x7f\x04\x00\xff\xff\x05\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00'
    b'\x00\x00\x00\x00\x00\x00\x00\x00\x00\xa8F\xcf}\xfe\xff\xff\xff\x00\x00\x00\x00\x00\x00'
    b'\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80\x7f'
    b'\x05\x00\xff\xff\x06\x00\x00\x00 \x05\x00\x00@\x05\x00\x00P\x05\x00\x00`\x05\x00\x00p\x05'
    b'\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00'
    b'\x00\x00\x00\x00+\x1f\xd5\xb1\xf6PY=\x17kR\xf1\xb9\xe8\xe4.\x81\xf3p\xc2\xcd\xfa\xa1\xf7'
    b"\xff\x00\xbe\xe7,\xd0%,\x9f\xd4,!\x0c\xe8\x07\x7f\xf1'\xe4\xf3,\xc1\xf0\xd7\xc6\x0cT\x0f"
    b'\xe6\x9e\x1b\x07\xeb\x1d5\xc9\x14\x1c\x136\x15\xe2\x7f\x052B\x1d\xc4\xc7\xe9\x01\xd2\xe1'
    b'\xf1\xf0\x06\x02\xfe\xe3\xd9\xa7;\t\x11\xb0#\xfc-\xe0.C\xf8\xf2\xed\x06\x7f\xfe\x1e\xbb'
    b'\x94\x07\xfb9\x94\x14\xabU%\xd1#+\x06K/\xfc\xeb$\xe2\x81\xee\xac1\x05\x1c9\xfe\xff\x16t'
    b'\xf6\xec\x08/\xf2\xef4\x7fT\x96\xfcT\xc1\x0f.\xbd\xac\xcfS\xf8\x0f\xd8\xfe\x85\xe5\x15'
    b'\x9d\x00\xf6(\x81\xf9\x10\xfb\x10\xc4Y2\x12<\xee2\xccN1\xd5\xd6\x1f\x017\x00\n\xfe\x03'
    b"\xdb\xc7'\x14\x98\xe2G\x00\xb7\x14\xc4\xe7T\x90\x15`\x147\x81\xdb\xcc\xb6\xf3\xf1+\xcb"
    b'\x00\xd7\x1a\x00\x00\x00\x00\x00\x00\x00\x00\x96\x07\x00\x00\x07\xff\xff\xff\xa4\xfb\xff'
    b'\xff\x83\xef\xff\xff)\x04\x00\x00j\xf1\xff\xffP\x08\x00\x00o\x02\x00\x00\x06L\xcdS\x18O'
    b'\xbaR\x06\x01\xd8S\xc5J\xe8xK\xd8\xbcs\xd8\xf4eZ\xe6O\xe8r\x877\\T\xf8\xff\xff\xff\xf8'
    b'\xff\xff\xff\xf9\xff\xff\xff\xf8\xff\xff\xff\xf8\xff\xff\xff\xf8\xff\xff\xff\xf8\xff\xff'
    b'\xff\xf8\xff\xff\xff\x92\\\x85;\xf5\xa6\x83;\x9cm\x05<.i\xc0;\x0f/\xb8;\xe3\xdb\x8f;\xd6'
    b'\xdc\xb6;\x03@\x86;\x84#\xec\x1eC\x1c\x1b\x18\xcf\xcc\xfd\xffd\x93\xbf2\xf6<\x06\xce\x81'
    b'\xabA\xc5-?\xedl\xda\x81\t\xff+\x81\xec\x810\xd1\x7f\xff\x19L^\xd4In\x1d\xeb\xcaY\xf0\xb9'
    b'\x95j\xb5\xeb\xc8\xfe\xde\x1e0_-\x81\x7f\xb1\x81\xd1\\?\xcf<\x00\x00\x00\x00\x00\x00\x00'
    b'\x00~\xfe\xff\xff\xfc\xf7\xff\xff`\xfe\xff\xff\xe7\xfe\xff\xff\xfb\x06\x00\x00\xcf\x04'
    b'\x00\x00k\x02\x00\x00_\x00\x00\x00m|\xd4@\xdbN\xd9\x7f@M%c\xd6\xeeEH\x86\xe8RspC\\d\xb5'
    b'\xb1IN\xbetlC\xfa\xff\xff\xff\xf9\xff\xff\xff\xfa\xff\xff\xff\xfa\xff\xff\xff\xf9\xff\xff'
    b'\xff\xf9\xff\xff\xff\xfa\xff\xff\xff\xfa\xff\xff\xff:\xb6\xcd;\x9a\xd6\xca;\xa4L\x1d<dT'
    b'\xe5;\x7f\xf7\xb6;\xff9\x9f;3j\xf8;\x11\xf1\xd5;\x81\x9db7 j\xb2\xe1\x06\xf6\x19+\xb4r'
    b'\x9d\x7f\x8f\xe1\xed\xad\xfe\xd5\x7f\xf3}\xe9J\xd3\xe8\x7f\xe3\xa4=\x18\xf9\x81B\xc7\xb0#'
    b'\x7fA\xfb~\x06v$BM?\xdd\xfb\x81.\xbd\xdf\xdd\x81\xee+ L\xfb\xdd!\x06\x00\x00\x0e\xfd\xff'
    b'\xff\xb1\xf9\xff\xff\xde\x00\x00\x00\xe6\xf9\xff\xff}\x05\x00\x00\x7f\xfc\xff\xff \xfa'
    b'\xff\xff\xf7g@V\xba\xd3\x9a`8mYF\x0e\xc3h@L\xb6Zu\xe5=\x8eC\xac\xacHv\x9a\xd9\xc7Z\xf9'
    b'\xff\xff\xff\xf8\xff\xff\xff\xf9\xff\xff\xff\xf8\xff\xff\xff\xf8\xff\xff\xff\xf8\xff\xff'
    b'\xff\xf8\xff\xff\xff\xf9\xff\xff\xffT\xeb\x07<\xfc;\x98;.\xb8\xdd;\x83\xffJ;\xb3\xee\xb8;'
    b'#\xeaT;\xb1e\xba;o\x0e\x0f<\x02\xc6\x7fr\xc52\xb5T- ,\xb4\xe8\x81\x86\x16\x7fk\xa4\xcd'
    b'\xc1\xa05lS\xae\xf0e\x7f1A\xf4\xc1\x11\x00\x00P\xf8\xff\xff\xf6\xd3\xff\xff\xfe\xf1\xff'
    b'\xff\xbf\xf4\x1a^u\r#\x7f\xad\xab\x8dW\xbc\x9a\xa2L\xf8\xff\xff\xff\xf8\xff\xff\xff\xf8'
    b'\xff\xff\xff\xf9\xff\xff\xff\x8ah\x8e;\x0be\xc0;S~\x84;,\xf1\xe7;cat\x00dog\x00f\xc3\xa5g'
    b'el\x00fish\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00'
)
# END MODEL


class RamFile:
    def __init__(self, fs, path, mode):
        self.fs, self.path, self.mode, self.pos = fs, path, mode, 0
        if "w" in mode:
            if path.count("/") > 1:
                raise OSError(2)  # no directories
            fs.files[path] = b""
        elif path not in fs.files:
            raise OSError(2)

    def write(self, data):
        self.fs.files[self.path] += bytes(data)
        return len(data)

    def read(self, n=-1):
        d = self.fs.files[self.path]
        r = d[self.pos:] if n < 0 else d[self.pos:self.pos + n]
        self.pos += len(r)
        return r

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass


class RamFS:
    # the VFS methods that open(), os.rename() and os.remove() call
    def __init__(self):
        self.files = {}

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def open(self, path, mode):
        return RamFile(self, path, mode)

    def rename(self, old, new):
        if old not in self.files:
            raise OSError(2)
        self.files[new] = self.files.pop(old)

    def remove(self, path):
        if path not in self.files:
            raise OSError(2)
        del self.files[path]

    def stat(self, path):
        if path not in self.files:
            raise OSError(2)
        return (0x8000, 0, 0, 0, 0, 0, len(self.files[path]), 0, 0, 0)


def writable_dir():
    # a directory where a file can be written, renamed and removed
    try:
        from time import ticks_us as clock
    except ImportError:
        from time import perf_counter_ns as clock
    name = "/tinymp_train_file_%d_%d" % (clock() & 0xFFFFFF, id(RamFS) & 0xFFFF)
    for d in ("/tmp", "."):
        try:
            with open(d + name, "wb") as f:
                f.write(b"x")
            os.rename(d + name, d + name + "2")
            os.remove(d + name + "2")
            return d + name
        except OSError:
            pass
    try:
        import vfs

        vfs.mount(RamFS(), "/ram")
        return "/ram" + name
    except (ImportError, OSError):
        return None


BASE = writable_dir()
if BASE is None:
    print("SKIP")
    raise SystemExit
PATH = BASE + ".params"
OTHER = BASE + "_other.params"
BIG = BASE + "_fp32.params"


def exists(p):
    try:
        with open(p, "rb") as f:
            pass
        return True
    except OSError:
        return False


def read(p):
    with open(p, "rb") as f:
        return f.read()


def write(p, data):
    with open(p, "wb") as f:
        f.write(data)


def show(label, fn, *args):
    try:
        r = fn(*args)
        print(label, "-> no error", r)
    except ValueError as e:
        # the message names the file: print it with a fixed name
        print(label, "-> ValueError", str(e).replace(repr(args[0]), "'FILE'"))
    except OSError:
        print(label, "-> OSError")
    except Exception as e:
        print(label, "->", type(e).__name__, e)


m = tinymp.Model(MODEL)
n = 8 * 8 * 3
xs = [bytes(((i * 37 + k * 101) & 0xFF) for i in range(n)) for k in range(4)]
ys = [1, 2, 3, 0]


def logits(t):
    return [list(t.logits(x)) for x in xs]


try:
    p = m.plan("tinymp")
    t = tinymp.Trainer(m, p, lr=0.1, period=2)
    pre = logits(t)
    for i in range(12):
        t.step(xs[i % 4], ys[i % 4])
    trained = logits(t)
    print("trained differs", trained != pre, "selection moved", t.selection != p.channels)

    # save: the file appears whole, no temporary file is left
    show("save", t.save, PATH)
    saved_sel = t.selection
    blob = read(PATH)
    print("saved", len(blob) > 16, "no .tmp left", not exists(PATH + ".tmp"))
    t.save(PATH)  # replaces the file
    print("same bytes again", read(PATH) == blob)

    # load into a fresh trainer of the same plan: the trained parameters and selection
    t2 = tinymp.Trainer(m, p, lr=0.1, period=2)
    print("fresh is pretrained", logits(t2) == pre)
    show("load", t2.load, PATH)
    # the training state too: the saved selection, and the run goes on as the saved one's would
    print("loaded", logits(t2) == trained, "selection", t2.selection == t.selection,
          "steps", t2.stats()["steps"] == t.stats()["steps"] == 12)
    for i in range(6):
        t.step(xs[i % 4], ys[i % 4])
        t2.step(xs[i % 4], ys[i % 4])
    print("goes on alike", logits(t2) == logits(t), "selection", t2.selection == t.selection,
          t.selection != p.channels)
    t.reset()
    print("reset", logits(t) == pre)
    print("reloaded", t.load(PATH), logits(t) == trained)
    # the same method with momentum: the parameters load, the training state starts afresh
    pm = m.plan("tinymp", momentum=0.5)
    tm = tinymp.Trainer(m, pm, lr=0.1, period=2)
    print("with momentum", tm.load(PATH), logits(tm) == trained, "plan's selection", tm.selection == pm.channels)
    tm.step(xs[0], ys[0])
    print("and trains", logits(tm) != trained)
    del tm

    # a caller's arena written to: save() refuses before it opens anything, so the good file
    # stays, and selection says so too (they read the same state)
    buf = bytearray(p.arena_bytes)
    tw = tinymp.Trainer(m, p, lr=0.1, period=2, arena=buf)
    print("loads into a caller's arena", tw.load(PATH), logits(tw) == trained)
    buf[:] = bytes((i * 131 + 7) & 0xFF for i in range(len(buf)))
    show("save over a good file", tw.save, PATH)
    show("selection", lambda: tw.selection)
    print("the good file stays", read(PATH) == blob, "no .tmp", not exists(PATH + ".tmp"))
    tw.reset()
    show("save after reset", tw.save, PATH + "2")
    print("reset's file loads", t2.load(PATH + "2"), logits(t2) == pre)
    os.remove(PATH + "2")
    del tw, buf
    print("reloaded again", t2.load(PATH), logits(t2) == trained)

    # corrupted / truncated / empty / foreign files: ValueError, nothing changes
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0x40
    write(OTHER, bad)
    show("bit flip", t.load, OTHER)
    write(OTHER, blob[:-3])
    show("truncated", t.load, OTHER)
    write(OTHER, blob[:8])
    show("header only", t.load, OTHER)
    write(OTHER, b"")
    show("empty", t.load, OTHER)
    write(OTHER, MODEL)
    show("a model file", t.load, OTHER)
    tf = tinymp.Trainer(m, m.plan("full"))
    tf.save(OTHER)
    show("another plan", t.load, OTHER)
    show("into another plan", tf.load, PATH)
    other_model = tinymp.Model(bytes(MODEL))
    to = tinymp.Trainer(other_model, other_model.plan("tinymp"))
    show("same plan of an identical model", to.load, PATH)
    print("unchanged", logits(t) == trained, t.selection == saved_sel)
    t.step(xs[0], ys[0])
    print("still trains", logits(t) != trained)

    # the heap while saving and loading: less than the file, so never a copy of it (where the GC
    # can say, and the file system is the port's own, not the Python one mounted above)
    tb = tinymp.Trainer(m, m.plan("full", storage="fp32"), lr=0.1)
    tb.step(xs[0], ys[0])
    tb.save(BIG)
    size = len(read(BIG))
    small = True
    if hasattr(gc, "mem_alloc") and not BIG.startswith("/ram"):
        gc.collect()
        a = gc.mem_alloc()
        tb.save(BIG)
        grew_save = gc.mem_alloc() - a
        gc.collect()
        a = gc.mem_alloc()
        tb.load(BIG)
        grew_load = gc.mem_alloc() - a
        small = grew_save < size and grew_load < size
        if not small:
            print("heap grew by", grew_save, "and", grew_load, "for a file of", size)
    print("fp32 file > 1 KB", size > 1024, "saved and loaded in pieces", small)

    # on the board load() reads the file twice, to check it and then to copy it in: should the
    # second read fail or differ, the trainer goes back to the pretrained parameters rather than
    # stay half loaded (the PC reads the file once, so there is nothing to show there)
    if sys.implementation.name == "micropython":
        import vfs

        class TwoReadFS(RamFS):
            # the first open for reading sees `first`, later ones `then` (None: an I/O error)
            def __init__(self, first, then):
                RamFS.__init__(self)
                self.reads = [first, then]

            def open(self, path, mode):
                if "r" in mode:
                    data = self.reads[0] if len(self.reads) == 1 else self.reads.pop(0)
                    if data is None:
                        raise OSError(5)
                    self.files[path] = data
                return RamFile(self, path, mode)

        flipped = bytearray(blob)
        flipped[len(flipped) // 2] ^= 0x40
        twice = []
        for then in (bytes(flipped), None):
            t.load(PATH)
            vfs.mount(TwoReadFS(blob, then), "/tinymp_two")
            try:
                t.load("/tinymp_two/p.params")
                r = "no error"
            except ValueError:
                r = "ValueError"
            except OSError:
                r = "OSError"
            finally:
                vfs.umount("/tinymp_two")
            twice.append((r, logits(t) == pre))
    else:
        twice = [("ValueError", True), ("OSError", True)]
    print("second read differs, fails -> (error, pretrained):", twice)

    # files that are not there, and a path that is not a str
    show("missing", t.load, BASE + "_missing.params")
    show("no such dir", t.save, BASE + "_no_dir/x.params")
    for v in (5, None):
        try:
            t.save(v)
            print("save", v, "-> no error")
        except TypeError:
            print("save", v, "-> TypeError")
    print("no stray files", not exists(BASE + "_no_dir/x.params.tmp"))
finally:
    for q in (PATH, OTHER, BIG, PATH + ".tmp", OTHER + ".tmp", BIG + ".tmp"):
        try:
            os.remove(q)
        except OSError:
            pass
