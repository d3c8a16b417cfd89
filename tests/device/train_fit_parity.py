# tinymp on the board and on the PC: Trainer.fit() calls the caller's Python (the sequences'
# items, a cache file's methods) in the same order and with the same objects, and reads what that
# Python gives back by the same rules, so side effects, results and the exception raised agree.
# Each section below was a difference between the two bindings.
try:
    import tinymp

    tinymp.Trainer.fit
except (ImportError, AttributeError):
    print("SKIP")
    raise SystemExit

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
p = m.plan("last")


def trained(t, r):
    return r["loss"], r["accuracy"], [list(t.logits(x)) for x in xs]


ref_t = tinymp.Trainer(m, p, lr=0.05, seed=7)
ref = trained(ref_t, ref_t.fit(xs, ys, epochs=3, cache=False))


# ---- xs[i] is fetched before ys[i] everywhere (the check of every sample before the first step,
# the steps, an APU probe): the board used to fetch ys[i] first, so the items' side effects came in
# another order and, when both raised, the other exception reached the caller
class Logged:
    def __init__(self, name, items, log, fail=None):
        self.name, self.items, self.log, self.fail = name, items, log, fail

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        self.log.append(self.name + str(i))
        if self.fail is not None and i == 2:
            raise self.fail
        return self.items[i]


log = []
t = tinymp.Trainer(m, p, lr=0.05, seed=7)
t.fit(Logged("x", xs, log), Logged("y", ys, log), epochs=1, cache=False, shuffle=False)
print("check", log[:4], "steps", log[12:16])
log = []
t = tinymp.Trainer(m, m.plan("tinymp"), seed=7)
t.fit(Logged("x", xs, log), Logged("y", ys, log), epochs=1, cache=False, shuffle=False, probe=2)
print("probe", log[24:])


class ErrX(Exception):
    pass


class ErrY(Exception):
    pass


log = []
t = tinymp.Trainer(m, p, lr=0.05, seed=7)
try:
    t.fit(Logged("x", xs, log, ErrX("x")), Logged("y", ys, log, ErrY("y")), epochs=1)
    print("no error")
except Exception as e:
    print("both raise:", type(e).__name__, log[-2:], "steps", t.stats()["steps"])


# ---- a cache file's write and readinto get memoryview objects on both (the PC passed bytes and
# bytearrays), each over a buffer of the binding's own, never the arena: a view cannot change
# size, so a short slice assignment into it raises the view's own ValueError on both
class MemFile:
    def __init__(self, wret=None, rret=None, after=0, short=False):
        self.buf, self.pos, self.got = bytearray(), 0, []
        self.wret, self.rret, self.after, self.short, self.reads = wret, rret, after, short, 0

    def seek(self, pos):
        self.pos = pos

    def write(self, b):
        self.got.append("write " + type(b).__name__)
        end = self.pos + len(b)
        if len(self.buf) < end:
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[self.pos:end] = b
        self.pos = end
        return len(b) if self.wret is None else self.wret(len(b))

    def readinto(self, mv):
        self.got.append("readinto " + type(mv).__name__)
        self.reads += 1
        k = len(mv)
        if self.short and self.reads > self.after:
            mv[:k] = self.buf[self.pos:self.pos + k - 1]  # a view does not change size: raises
        else:
            mv[:] = self.buf[self.pos:self.pos + k]
        self.pos += k
        if self.rret is None or self.reads <= self.after:
            return k
        return self.rret(k)


f = MemFile()
t = tinymp.Trainer(m, p, lr=0.05, seed=7)
r = t.fit(xs, ys, epochs=3, cache=f)
got = []
for g in f.got:
    if g not in got:
        got.append(g)
print("file methods get", got, trained(t, r) == ref, r["cached_steps"])
for after in (0, 2):  # in the try before the first step, in a step
    t = tinymp.Trainer(m, p, lr=0.05, seed=7)
    try:
        t.fit(xs, ys, epochs=3, cache=MemFile(short=True, after=after))
        print("no error")
    except ValueError as e:  # the view's own error, not tinymp's
        print("a short slice assignment into the view raises", type(e).__name__,
              str(e).startswith("tinymp"), "steps", t.stats()["steps"])


# ---- what write and readinto return counts only when it is an int equal to the bytes given;
# anything else (None, a bool, a float, a str, a negative or huge int) is a short write, which
# turns the file off for the run, or a short read: an OSError in a step, the ValueError of a file
# not open for reading and writing in the try before the first step. The board raised
# OverflowError for 2**70 and TypeError for a float or a str from readinto.
class Odd:  # what __index__ would make an int: still not an int
    def __index__(self):
        return 1


class Count(int):  # an int subclass (as bool is): not an int either
    pass


# returned values that are not the count; 2**70 and n + 2**64 do not fit a machine word
odd = (("None", lambda k: None), ("str", lambda k: str(k)), ("float", lambda k: float(k)),
       ("True", lambda k: True), ("negative", lambda k: -k), ("2**70", lambda k: 2 ** 70),
       ("n+2**64", lambda k: k + 2 ** 64), ("n-1", lambda k: k - 1), ("__index__", lambda k: Odd()),
       ("int subclass", lambda k: Count(k)))
for name, ret in odd:
    t = tinymp.Trainer(m, p, lr=0.05, seed=7)
    r = t.fit(xs, ys, epochs=3, cache=MemFile(wret=ret))
    line = ["write", name, "-> short write:", trained(t, r) == ref, r["cache_outside"], r["cached_steps"]]
    for after, where in ((0, "try"), (2, "step")):
        t = tinymp.Trainer(m, p, lr=0.05, seed=7)
        try:
            t.fit(xs, ys, epochs=3, cache=MemFile(rret=ret, after=after))
            line.append("readinto in %s: no error" % where)
        except (OSError, ValueError) as e:
            line.append("readinto in %s: %s %s steps %d" % (where, type(e).__name__, e, t.stats()["steps"]))
    print(*line)


class MyErr(Exception):
    pass


def boom(k):
    raise err


for after in (0, 2):  # an exception of the method's own propagates unchanged
    err = MyErr("mine")
    t = tinymp.Trainer(m, p, lr=0.05, seed=7)
    try:
        t.fit(xs, ys, epochs=3, cache=MemFile(rret=boom, after=after))
        print("no error")
    except Exception as e:
        print("readinto raises:", type(e).__name__, e is err, "steps", t.stats()["steps"])


# ---- xs and ys must be sequences: a dict (an OrderedDict, a subclass) indexed by int keys
# trained on the board and was refused on the PC, a set failed there with MicroPython's own
# "'set' object isn't subscriptable"; both now refuse them, and any object that cannot be
# subscripted, with one TypeError before anything is fetched
try:
    from collections import OrderedDict
except ImportError:
    OrderedDict = None


fetched = []


class Dict(dict):  # even with a __getitem__ of its own
    def __getitem__(self, i):
        fetched.append(i)
        return xs[i]


class LenOnly:
    def __len__(self):
        return len(xs)


class GetOnly:  # subscriptable, no __len__: the PC said CPython's "has no len()"
    def __getitem__(self, i):
        return xs[i]


def mapping(cls):
    d = cls()
    for i in range(len(xs)):
        d[i] = xs[i]
    return d


cases = [("dict xs", mapping(dict), ys), ("dict ys", xs, dict((i, y) for i, y in enumerate(ys))),
         ("dict subclass", mapping(Dict), ys), ("OrderedDict", mapping(OrderedDict) if OrderedDict else None, ys),
         ("set", xs, set(ys)), ("no __getitem__", LenOnly(), ys), ("no __len__", GetOnly(), ys),
         ("generator", (x for x in xs), ys)]
for name, a, b in cases:
    t = tinymp.Trainer(m, p, lr=0.05, seed=7)
    if a is None:  # no OrderedDict on this port: what it would print
        print(name, "-> TypeError tinymp: fit() takes a sequence of inputs and a sequence of labels steps 0")
        continue
    try:
        t.fit(a, b, epochs=1)
        print(name, "-> trained")
    except TypeError as e:
        print(name, "-> TypeError", e, "steps", t.stats()["steps"])
print("items fetched from the dict subclass", fetched)
# what still is a sequence
r = tinymp.Trainer(m, p, lr=0.05, seed=7).fit(tuple(xs[:4]), range(4), epochs=1)
print("tuple and range", r["steps"])
