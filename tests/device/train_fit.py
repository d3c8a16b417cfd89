# tinymp on the board: a whole personalisation run with Trainer.fit() and the frozen-prefix
# feature cache. The same run with the cache off, in the arena, in a caller's buffer and in a
# file-like object gives the same losses and the same trained outputs; bad input changes nothing.
# Runs unchanged on MicroPython (run-tests.py, with train_fit.py.exp) and CPython.
try:
    import tinymp

    tinymp.Trainer.fit
except (ImportError, AttributeError):
    print("SKIP")
    raise SystemExit

try:
    from io import BytesIO
except ImportError:
    BytesIO = None

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

m = tinymp.Model(MODEL)
n = 8 * 8 * 3
xs = [bytes(((i * 37 + k * 101) & 0xFF) for i in range(n)) for k in range(6)]
ys = [1, 2, 3, 0, 2, 1]


def run(method, cache, plan_cache=0, **kw):
    p = m.plan(method, cache=plan_cache, **kw)
    t = tinymp.Trainer(m, p, lr=0.05, seed=7)
    r = t.fit(xs, ys, epochs=4, cache=cache)
    outs = [list(t.logits(x)) for x in xs]
    return p, t, r, outs


for method, kw in (("last", {}), ("sparse", {"layers": [2], "ratios": [0.5]}), ("full", {})):
    p0, t0, r0, o0 = run(method, False, **kw)
    print(method, "first", p0.first, "cache_bytes", p0.cache_bytes, "steps", r0["steps"],
          "epochs", r0["epochs"], "cached", r0["cached_steps"])
    print("  loss went down:", r0["loss"][-1] < r0["loss"][0], "accuracy entries", len(r0["accuracy"]))
    variants = [("arena", True, 6), ("buffer", bytearray(len(xs) * p0.cache_bytes), 0),
                ("heap", True, 0), ("arena+heap", True, 3)]
    if BytesIO is not None:
        variants.append(("file", BytesIO(), 0))
    for name, cache, pc in variants:
        if p0.cache_bytes == 0 and not isinstance(cache, bool):
            continue
        p, t, r, o = run(method, cache, pc, **kw)
        print("  %s: same losses %s, same outputs %s, cached %d, in arena %d, outside %d, arena +%d" % (
            name, r["loss"] == r0["loss"], o == o0, r["cached_steps"], r["cache_in_arena"],
            r["cache_outside"], p.arena_bytes - p0.arena_bytes))

# cache=True with plan(cache=3) and 6 samples: the binding's buffer takes room for the 3 samples
# the arena does not hold, not for all 6 (what the run holds at its first step: gc.mem_alloc()
# on MicroPython, tracemalloc on CPython)
import gc

try:
    from gc import mem_alloc

    def trace(on):
        gc.collect()
except ImportError:
    import tracemalloc

    def mem_alloc():
        return tracemalloc.get_traced_memory()[0]

    def trace(on):
        (tracemalloc.start if on else tracemalloc.stop)()

p = m.plan("sparse", layers=[2], ratios=[0.5], cache=3)
t = tinymp.Trainer(m, p, lr=0.05, seed=7)
held = []


def first_step(*a):
    if not held:
        held.append(mem_alloc() - start)


trace(True)
start = mem_alloc()
r = t.fit(xs, ys, epochs=4, progress=first_step)
trace(False)
print("heap buffer for the samples beyond the arena's:", r["cache_in_arena"], r["cache_outside"],
      3 * p.cache_bytes <= held[0] < 5 * p.cache_bytes, r["loss"] == run("sparse", False, layers=[2], ratios=[0.5])[2]["loss"])

# a plan's cache region is counted in its breakdown and in arena_bytes
p = m.plan("last", cache=4)
print("cache region", p.cache_samples, p.breakdown["cache"] == 4 * p.cache_bytes,
      p.arena_bytes >= 4 * p.cache_bytes)
# with a budget, only as many samples as fit
p1 = m.plan("last")
p = m.plan("last", cache=100, budget=p1.arena_bytes + 2 * p1.cache_bytes + 3)
print("cache under a budget", p.cache_samples, p.arena_bytes <= p1.arena_bytes + 2 * p1.cache_bytes + 3)

# bad input: one error, nothing trained
p = m.plan("last")
t = tinymp.Trainer(m, p, lr=0.05, seed=7)
before = [list(t.logits(x)) for x in xs]
for args, kw in ((( xs, ys[:-1]), {}), ((xs[:-1] + [b"x"], ys[:-1] + [0]), {}),
                 ((xs, ys[:-1] + [99]), {}), ((xs, ys), {"epochs": 0}), ((xs, ys), {"epochs": 100001}),
                 ((xs, ys), {"cache": bytearray(3)}), ((xs, ys), {"cache": 5}),
                 ((xs, ys), {"progress": 3})):
    try:
        t.fit(*args, epochs=kw.get("epochs", 2), **dict((k, v) for k, v in kw.items() if k != "epochs"))
        print("no error")
    except (ValueError, TypeError) as e:
        print(type(e).__name__)
print("unchanged", [list(t.logits(x)) for x in xs] == before, t.stats()["steps"])

# progress: called after every step; a true return value stops the run
seen = []


def progress(epoch, done, loss, correct):
    seen.append((epoch, done))
    return epoch == 1 and done == 2


r = t.fit(xs, ys, epochs=3, progress=progress)
print("stopped", r["stopped"], r["steps"], r["epochs"], seen[-1], len(seen))

# a stop on an epoch's last step completes the epoch (counted, its APU period ended), whether
# progress returns True there or raises (as Ctrl-C does): the same trainer, as one fit of 2
class Stop(Exception):
    pass


def last_of_first(epoch, done, loss, correct):
    return epoch == 0 and done == len(xs)


def raise_at_end(epoch, done, loss, correct):
    if epoch == 0 and done == len(xs):
        raise Stop()


pt = m.plan("tinymp")
one = tinymp.Trainer(m, pt, seed=5)
one.fit(xs, ys, epochs=2)
ta = tinymp.Trainer(m, pt, seed=5)
ra = ta.fit(xs, ys, epochs=3, progress=last_of_first)
tb = tinymp.Trainer(m, pt, seed=5)
try:
    tb.fit(xs, ys, epochs=3, progress=raise_at_end)
    print("no raise")
except Stop:
    pass
print("epoch end stop", ra["epochs"], ta.stats()["periods"], tb.stats()["periods"], tb.stats()["steps"])
ta.fit(xs, ys, epochs=1)
tb.fit(xs, ys, epochs=1)
print("as one fit", [list(ta.logits(x)) for x in xs] == [list(one.logits(x)) for x in xs] ==
      [list(tb.logits(x)) for x in xs], ta.stats()["periods"] == tb.stats()["periods"] == 2)

# stalled steps: at a far too high learning rate the logits end up at their int8 limits, where
# the clamp mask stops the whole gradient; fit() and stats() count such steps
t = tinymp.Trainer(m, m.plan("last"), lr=50.0, seed=7)
a = t.fit(xs, ys, epochs=2)
b = t.fit(xs, ys, epochs=2)
print("stalled", a["stalled_steps"] + b["stalled_steps"] == t.stats()["stalled_steps"],
      b["stalled_steps"] == b["steps"], b["loss"][0] == b["loss"][-1])
ok = tinymp.Trainer(m, m.plan("last"), lr=0.05, seed=7).fit(xs, ys, epochs=2)
print("not stalled", ok["stalled_steps"])

# Python that runs inside fit() -- a progress callback, a sequence's __getitem__, a cache file's
# methods -- may resize the arena, the model's buffer or the cache buffer. MicroPython lets a
# bytearray grow while the engine uses it (the binding follows the moved buffer between steps);
# CPython refuses while the buffer is exported (BufferError). Either way the run must train
# exactly as an undisturbed one.
import gc

try:
    BufferError
except NameError:  # MicroPython has none: its bytearrays resize whoever uses them
    class BufferError(Exception):
        pass


def trained(t, r):
    return r["loss"], r["accuracy"], [list(t.logits(x)) for x in xs]


def grow(buf, times=[0]):
    # a few grows, each followed by allocations that take the space behind the buffer and any
    # block it left: small enough for a board's heap
    times[0] += 1
    if times[0] % 3 == 0:
        try:
            buf.extend(bytes(256))
        except BufferError:
            pass
        gc.collect()
        junk = [bytearray(b"\xa5" * 128) for _ in range(16)]
        return junk is None


def reference(model=m):
    t = tinymp.Trainer(model, model.plan("last"), lr=0.05, seed=7)
    return trained(t, t.fit(xs, ys, epochs=3, cache=False))


ref = reference()
p = m.plan("last")
arena = bytearray(p.arena_bytes)
t = tinymp.Trainer(m, p, lr=0.05, seed=7, arena=arena)
print("arena grown by progress", trained(t, t.fit(xs, ys, epochs=3, progress=lambda *a: grow(arena))) == ref)


class Growing:
    def __init__(self, items, buf):
        self.items, self.buf = items, buf

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        grow(self.buf)
        return self.items[i]


arena = bytearray(p.arena_bytes)
t = tinymp.Trainer(m, p, lr=0.05, seed=7, arena=arena)
print("arena grown by __getitem__", trained(t, t.fit(Growing(xs, arena), ys, epochs=3)) == ref)

mb = bytearray(MODEL)
mm = tinymp.Model(mb)
t = tinymp.Trainer(mm, mm.plan("last"), lr=0.05, seed=7)
print("model grown by progress", trained(t, t.fit(xs, ys, epochs=3, progress=lambda *a: grow(mb))) == ref)

cb = bytearray(len(xs) * p.cache_bytes)
t = tinymp.Trainer(m, p, lr=0.05, seed=7)
r = t.fit(xs, ys, epochs=3, cache=cb, progress=lambda *a: grow(cb))
print("cache grown by progress", trained(t, r) == ref, r["cache_outside"], r["cached_steps"])


refused = []


def shrink(buf):
    try:
        buf[len(buf) // 2:] = b""
    except BufferError:  # CPython: an exported buffer cannot shrink
        refused.append(True)


cb = bytearray(len(xs) * p.cache_bytes)
t = tinymp.Trainer(m, p, lr=0.05, seed=7)
try:
    t.fit(xs, ys, epochs=3, cache=cb, progress=lambda *a: shrink(cb))
    print("cache shrunk ->", "refused" if refused else "no error")
except ValueError as e:  # MicroPython: the binding looks the buffer up before every copy
    print("cache shrunk ->", "refused" if "resized during fit()" in str(e) else e)


# a feature cache file: one that stores nothing (write() returns None) caches nothing and
# changes nothing; one that raises stops the run after that step, and fit() raises it. Before the
# first step the file is tried (one sample's bytes written and read back): one that raises there
# trains nothing -- a file not open for reading and writing (as MicroPython's own files say it:
# OSError EBADF on the unix port, EACCES on FAT) with one ValueError, anything else unchanged
class FileErr(Exception):
    pass


class MemFile:
    def __init__(self, mode):
        self.mode, self.buf, self.pos, self.writes = mode, bytearray(), 0, 0

    def seek(self, pos):
        self.pos = pos

    def write(self, b):
        self.writes += 1
        if self.mode == "full" or (self.mode == "fills" and self.writes > 3):
            raise OSError(28)
        if self.mode == "rb":
            raise OSError(13)
        if self.mode == "mine":
            raise FileErr("my file")
        end = self.pos + len(b)
        if len(self.buf) < end:
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[self.pos:end] = b
        self.pos = end
        return None if self.mode == "none" else len(b)

    def readinto(self, mv):
        if self.mode == "wb":
            raise OSError(9)
        n = len(mv)
        mv[:] = self.buf[self.pos:self.pos + n]
        self.pos += n
        return n


for mode in ("ok", "none", "full", "fills", "wb", "rb", "mine"):
    t = tinymp.Trainer(m, p, lr=0.05, seed=7)
    try:
        r = t.fit(xs, ys, epochs=3, cache=MemFile(mode))
        print("file", mode, trained(t, r) == ref, r["cache_outside"], r["cached_steps"])
    except OSError as e:
        print("file", mode, "->", type(e).__name__, e.args[0] == 28, "steps", t.stats()["steps"])
    except (ValueError, FileErr) as e:
        print("file", mode, "->", type(e).__name__, e, "steps", t.stats()["steps"])
try:
    from io import StringIO
except ImportError:
    StringIO = None
if StringIO is not None:  # a text file: refused on both (CPython's has no readinto)
    try:
        tinymp.Trainer(m, p, lr=0.05, seed=7).fit(xs, ys, epochs=3, cache=StringIO())
        print("no error")
    except TypeError as e:
        print("text file ->", e)
else:
    print("text file -> tinymp: cache must be True, False, a writable buffer or a binary file")


# the buffers a cache file is handed are its own: views it keeps past the call and writes
# through later touch neither the arena nor the training (they were views of the arena)
class Keeper(MemFile):
    def __init__(self):
        MemFile.__init__(self, "ok")
        self.kept = []

    def readinto(self, mv):
        n = MemFile.readinto(self, mv)
        self.kept.append(mv[1:])
        return n


arena = bytearray(p.arena_bytes)
t = tinymp.Trainer(m, p, lr=0.05, seed=7, arena=arena)
f = Keeper()
r = t.fit(xs, ys, epochs=3, cache=f)
before = trained(t, r)
snap = bytes(arena)
for v in f.kept:
    v[:] = b"\x5a" * len(v)
print("views kept by a cache file", len(f.kept) > 0, bytes(arena) == snap, trained(t, r) == before == ref)


class ReadOnly:
    def readinto(self, mv):
        return 0


try:
    t.fit(xs, ys, epochs=2, cache=ReadOnly())
except TypeError as e:
    print("file without seek/write ->", e)

# the documented parameter names work as keywords, on both bindings
t = tinymp.Trainer(m, p, lr=0.05, seed=7)
print("keywords", type(t.step(x=xs[0], y=ys[0])).__name__, type(t.step(xs[0], y=ys[0])).__name__,
      list(m.logits(x=xs[1])) == list(m.logits(xs[1])), list(t.logits(x=xs[1])) == list(t.logits(xs[1])),
      t.fit(xs=xs, ys=ys)["steps"])
r = t.fit(xs, ys)
print("result keys", list(r))
try:
    t.fit(xs, ys[:2] + [99] + ys[3:])
except ValueError as e:
    print("bad sample ->", e)
try:
    t.fit(xs[:5] + [None], ys)
except TypeError as e:
    print("bad sample ->", e)


# an exception the sequences raise for an item in the check before the first step propagates
# unchanged (the same object: its class, args and errno), whatever its class; only the binding's
# own errors about a sample (above) name the sample
class MyErr(Exception):
    pass


class BadValue(ValueError):
    pass


class Raising:
    def __init__(self, items, err):
        self.items, self.err = items, err

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        if i == 3:
            raise self.err
        return self.items[i]


for err, which in ((MyErr("mine"), "xs"), (BadValue("tinymp: not ours"), "xs"), (OSError(5), "xs"),
                   (MyErr("label"), "ys")):
    t = tinymp.Trainer(m, p, lr=0.05, seed=7)
    try:
        if which == "xs":
            t.fit(Raising(xs, err), ys, epochs=2)
        else:
            t.fit(xs, Raising(ys, err), epochs=2)
        print("no error")
    except Exception as e:
        print("item of", which, "raises", type(e).__name__, e is err, e.args, "steps", t.stats()["steps"])

# a long run stopped early by progress reserves nothing per epoch it never reaches
r = t.fit(xs, ys, epochs=100000, progress=lambda e, d, l, c: e == 1 and d == 2)
print("long run stopped", r["steps"], r["epochs"], len(r["loss"]), len(r["accuracy"]))

# One step at a time, as the session agent trains: step(x, y, cache=buf) trains on a sample and
# keeps its frozen-prefix features in buf; step_cached(buf, y) trains on the sample from them,
# skipping the prefix. Losses, predictions and trained outputs are those of plain steps, and
# `prediction` (the class the step's forward pass gave, before its update) is what predict()
# says just before the step.
for method, kw in (("last", {}), ("sparse", {"layers": [2], "ratios": [0.5]})):
    p = m.plan(method, **kw)
    a = tinymp.Trainer(m, p, lr=0.05, seed=7)
    b = tinymp.Trainer(m, p, lr=0.05, seed=7)
    bufs = [bytearray(p.cache_bytes) for _ in xs]
    same_loss = same_pred = True
    print(method, "prediction before any step", a.prediction)
    for e in range(3):
        for i in range(len(xs)):
            want = b.predict(xs[i])
            lb = b.step(xs[i], ys[i])
            la = a.step(xs[i], ys[i], cache=bufs[i]) if e == 0 else a.step_cached(bufs[i], ys[i])
            same_loss = same_loss and la == lb
            same_pred = same_pred and a.prediction == want and b.prediction == want
        a.end_period()
        b.end_period()
    print("  same losses", same_loss, "same predictions", same_pred, "same outputs",
          [list(a.logits(x)) for x in xs] == [list(b.logits(x)) for x in xs])
    prefix = p.forward_macs - (p.step_macs - p.backward_macs)
    print("  prefix skipped in the cached steps",
          b.stats()["forward_macs"] - a.stats()["forward_macs"] == 2 * len(xs) * prefix, prefix > 0)
    o = bytearray(4)
    print("  out=", a.step_cached(bufs[0], ys[0], out=o) is o, a.step(xs[1], ys[1], o, bufs[1]) is o)

# bad input: one error each, nothing trained
p = m.plan("last")
t = tinymp.Trainer(m, p, lr=0.05, seed=7)
good = bytearray(p.cache_bytes)
t.step(xs[0], ys[0], cache=good)
before = [list(t.logits(x)) for x in xs]
for call in (lambda: t.step_cached(bytearray(p.cache_bytes - 1), 1),
             lambda: t.step_cached(good, 99),
             lambda: t.step(xs[0], 1, cache=bytes(p.cache_bytes)),
             lambda: t.step(xs[0], 1, cache=bytearray(p.cache_bytes + 1)),
             lambda: t.step(xs[0], 1, cache=5),
             lambda: t.step_cached(None, 1),
             lambda: t.step_cached("x" * p.cache_bytes, 1),
             # several bad arguments: the same first error on both bindings
             lambda: t.step(xs[0], 99, cache=bytearray(1)),
             lambda: t.step(b"ab", 1, cache=bytearray(1)),
             lambda: t.step_cached(bytearray(1), 99),
             lambda: tinymp.Trainer(m, m.plan("full")).step_cached(bytearray(4), 1)):
    try:
        call()
        print("no error")
    except (ValueError, TypeError) as e:
        print(type(e).__name__, e)
print("unchanged", [list(t.logits(x)) for x in xs] == before, t.stats()["steps"])

# `prediction` belongs to the parameters that made it: none after reset() (nor load())
want = t.predict(xs[2])
t.step(xs[2], ys[2])
print("prediction after a step", t.prediction == want)
t.reset()
print("after reset", t.prediction)

# APU's probe variant (fit(probe=k)): the channels a period did not update are measured on k of
# the samples at every period end. The same run with and without the cache and in pieces; it
# updates nothing itself (the first epoch's losses are those of the carry variant); bad values
# are refused; a sequence that raises during a probe leaves a whole trainer (k channels each).
pt = m.plan("tinymp", cache=6)


def probe_run(cache, epochs, pieces=1, **kw):
    t = tinymp.Trainer(m, pt, lr=0.05, seed=3, **kw)
    losses = []
    for _ in range(pieces):
        losses += t.fit(xs, ys, epochs=epochs, cache=cache, probe=3)["loss"]
    return t, losses


t0, l0 = probe_run(False, 3)
t1, l1 = probe_run(True, 3)
t2, l2 = probe_run(False, 1, pieces=3)
carry = tinymp.Trainer(m, pt, lr=0.05, seed=3)
lc = carry.fit(xs, ys, epochs=3)["loss"]
print("probe: same run cached and in pieces", l0 == l1 == l2, t0.selection == t1.selection == t2.selection,
      [list(t0.logits(x)) for x in xs] == [list(t1.logits(x)) for x in xs])
print("probe: first epoch as carry", l0[0] == lc[0], "steps", t0.stats()["steps"], "periods", t0.stats()["periods"])
print("probe: selection", sorted(t0.selection.items()))
tp, lp = probe_run(False, 2, period=4)
print("probe: step periods", tp.stats()["periods"], len(lp))
for bad in (-1, 2 ** 32, 1.5, "3"):
    try:
        tinymp.Trainer(m, pt).fit(xs, ys, probe=bad)
        print("no error")
    except (ValueError, TypeError) as e:
        print("probe=%r" % (bad,), type(e).__name__)


class Flaky:
    def __init__(self, items, fail_at):
        self.items, self.calls, self.fail_at = items, 0, fail_at

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        self.calls += 1
        if self.calls == self.fail_at:
            raise Stop()
        return self.items[i]


# 6 checks, 6 steps, the probe's 3 checks (accesses 13-15), then its samples (16-18): a failure
# in either part ends the period without the probe, and fit() raises it
for fail_at in (14, 17):
    tf = tinymp.Trainer(m, pt, lr=0.05, seed=3)
    try:
        tf.fit(Flaky(xs, fail_at), ys, epochs=1, probe=3)
        print("no raise")
    except Stop:
        ks = dict((i, len(c)) for i, c in tf.selection.items())
        print("raised inside a probe (access %d): periods" % fail_at, tf.stats()["periods"], "steps",
              tf.stats()["steps"], "selections whole", all(c == sorted(set(c)) for c in tf.selection.values()),
              ks == dict((i, len(c)) for i, c in pt.channels.items()))
        tf.fit(xs, ys, epochs=1, probe=3)
        print("  and trains on", tf.stats()["periods"], all(len(c) == ks[i] for i, c in tf.selection.items()))

# progress raising on an epoch's last step: that epoch's period end still probes, and the
# exception raised is progress's own: the trainer is that of a one-epoch run
ts = tinymp.Trainer(m, pt, lr=0.05, seed=3)
try:
    ts.fit(xs, ys, epochs=3, progress=raise_at_end, probe=3)
    print("no raise")
except Stop:
    t1e = tinymp.Trainer(m, pt, lr=0.05, seed=3)
    t1e.fit(xs, ys, epochs=1, probe=3)
    print("probe at a stopped epoch's end", ts.stats()["periods"], ts.selection == t1e.selection)

# Calls on a trainer from inside its own fit(): between steps (progress, xs[i]) the calls that only
# read it work and leave the run as it would have been; a call that would change it is refused
# with one RuntimeError; inside a step (a cache file's methods) or an APU probe (its xs[i]) every
# call is refused. The trainer is usable once fit() returns, however the run ended.
def refused(f):
    try:
        f()
        return "ran"
    except RuntimeError as e:
        return "refused" if "refused: this trainer's fit() is running" in str(e) else str(e)


tq = tinymp.Trainer(m, p, lr=0.05, seed=7)
seen = []
cb = bytearray(p.cache_bytes)


def reads_and_changes(epoch, done, loss, correct):
    seen.append((tq.predict(xs[0]), list(tq.logits(xs[1])), tq.stats()["steps"], len(tq.selection)))
    tq.lr = tq.lr  # a schedule may set it here
    if epoch == 0 and done == 1:
        seen.append([refused(f) for f in (lambda: tq.step(xs[0], ys[0]), lambda: tq.step(xs[0], ys[0], cache=cb),
                                          lambda: tq.step_cached(cb, ys[0]), lambda: tq.fit(xs, ys),
                                          lambda: tq.end_period(), lambda: tq.reset(),
                                          lambda: tq.load("no such file"), lambda: tq.step(None, None))])


r = tq.fit(xs, ys, epochs=3, progress=reads_and_changes)
reads = [s for s in seen if isinstance(s, tuple)]
print("calls from progress: changes", seen[1], "reads", len(reads), "run as without them",
      trained(tq, r) == ref, "steps", tq.stats()["steps"], [s[2] for s in reads[:3]])


class Peeking:  # its items call predict() on the trainer, an error propagates
    def __init__(self, t):
        self.t, self.ran = t, 0

    def __len__(self):
        return len(xs)

    def __getitem__(self, i):
        self.t.predict(xs[i])
        self.ran += 1
        return xs[i]


# 6 items checked before the first step, 6 steps, then the probe's first item raises
for probe in (0, 3):
    tq = tinymp.Trainer(m, pt, lr=0.05, seed=3)
    seq = Peeking(tq)
    try:
        tq.fit(seq, ys, epochs=1, probe=probe)
        print("xs[i] calls predict, probe %d: ran" % probe, seq.ran)
    except RuntimeError as e:
        print("xs[i] calls predict, probe %d: ran" % probe, seq.ran, "then", "refused" in str(e), "; after it",
              refused(lambda: tq.predict(xs[0])),
              "and fit()", refused(lambda: tq.fit(xs, ys)), "; steps", tq.stats()["steps"], "periods", tq.stats()["periods"])


class Poking(MemFile):
    def __init__(self, t, at):
        MemFile.__init__(self, "ok")
        self.t, self.at, self.got = t, at, []

    def calls(self):  # predict, selection, setting lr (to what it is), the plain figures
        t = self.t
        self.got.append(tuple(refused(f) for f in (lambda: t.predict(xs[0]), lambda: t.selection,
                                                   lambda: setattr(t, "lr", t.lr),
                                                   lambda: t.stats()["steps"] + t.high_water)))

    def write(self, b):
        if self.at == "write":
            self.calls()
        return MemFile.write(self, b)

    def readinto(self, mv):
        if self.at == "readinto":
            self.calls()
        self.reads = getattr(self, "reads", 0) + 1
        if self.at == "readinto, uncaught" and self.reads > 2:
            self.t.predict(xs[0])  # not in the try before the first step (its 2 reads)
        return MemFile.readinto(self, mv)


for at in ("write", "readinto"):
    tq = tinymp.Trainer(m, p, lr=0.05, seed=7)
    f = Poking(tq, at)
    r = tq.fit(xs, ys, epochs=3, cache=f)
    # its first two calls are in the try before the first step, the others inside steps
    print("a cache file's", at, "calls the trainer:", f.got[:2], sorted(set(f.got[2:])), "run as without it",
          trained(tq, r) == ref)
    tq.step(xs[0], ys[0])
    print("  a step after it:", tq.stats()["steps"])
# the refusal raised inside a step (the board's engine is left by a jump there)
tq = tinymp.Trainer(m, p, lr=0.05, seed=7)
try:
    tq.fit(xs, ys, epochs=3, cache=Poking(tq, "readinto, uncaught"))
    print("no raise")
except RuntimeError as e:
    print("a cache file's readinto raises the refusal:", "refused" in str(e), "steps", tq.stats()["steps"])
    tq.step(xs[0], ys[0])
    print("  a step after it:", tq.stats()["steps"], refused(lambda: tq.fit(xs, ys, epochs=2)))
