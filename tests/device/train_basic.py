# tinymp on the board: training. Plans of several methods (the planner's integers are the same on
# every build), a few SGD epochs with each (the loss goes down), the arena's high-water mark within
# the plan, a caller's arena, reset(), lr, APU periods. Runs unchanged on MicroPython
# (run-tests.py, with train_basic.py.exp) and CPython; only integers, booleans and short rounded
# values are printed, so float32 and double builds print the same.
try:
    import tinymp

    tinymp.Trainer
except (ImportError, AttributeError):
    print("SKIP")
    raise SystemExit

import gc

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
xs = [bytes(((i * 37 + k * 101) & 0xFF) for i in range(n)) for k in range(4)]
ys = [1, 2, 3, 0]


def epochs(t, count):
    # mean loss per epoch over the four samples
    means = []
    for _ in range(count):
        s = 0.0
        for x, y in zip(xs, ys):
            s += t.step(x, y)
        means.append(s / len(xs))
    return means


def show_plan(p):
    print("plan", p.method, "storage", p.storage, "r", p.r, "ratio", p.ratio,
          "momentum", round(p.momentum, 3))
    print("  arena", p.arena_bytes, "peak_live", p.peak_live_bytes, "first", p.first,
          "layers", p.layers)
    print("  breakdown", p.breakdown)
    print("  category_peaks", p.category_peaks)
    print("  channels", p.channels)
    print("  macs", p.forward_macs, p.backward_macs, "step", p.step_macs, "share", p.step_share)
    print("  sums", sum(p.breakdown.values()) == p.peak_live_bytes,
          p.peak_live_bytes <= p.arena_bytes, "tables", p.table_bytes)


def train(p, **kw):
    t = tinymp.Trainer(m, p, **kw)
    print("  trainer", type(t).__name__, t.plan is p, "high_water", t.high_water)
    ep = epochs(t, 6)
    st = t.stats()
    print("  loss went down:", ep[-1] < ep[0] - 0.03, "first epoch ~", round(ep[0], 1))
    print("  steps", st["steps"], "periods", st["periods"], "macs", st["forward_macs"],
          st["backward_macs"])
    print("  high_water", t.high_water, "<= arena:", 0 < t.high_water <= p.arena_bytes,
          st["high_water"] == t.high_water, st["arena_bytes"] == p.arena_bytes)
    print("  times", [k for k in ("forward_us", "backward_us", "update_us") if st[k] >= 0],
          "clock", type(st["clock"]).__name__, "keys", sorted(st))
    return t


print("predict before", [m.predict(x) for x in xs])

# the classifier only
p = m.plan("last")
show_plan(p)
train(p, lr=0.05)

# every weight and bias, exact gradients; fp32 master copies with momentum
p = m.plan("full")
show_plan(p)
train(p, lr=0.05)
p = m.plan("full", storage="fp32", momentum=0.9)
show_plan(p)
t = train(p, lr=0.01)
print("  trained predict", [t.predict(x) for x in xs])

# a given layer list with channel ratios
p = m.plan("sparse", layers=[0, 2], ratios=[0.5, 1])
show_plan(p)
train(p, lr=0.05)

# TinyTrain: layers and channels from the Fisher criterion over a support set
p = m.plan("tinytrain", support=(xs, ys))
show_plan(p)
train(p, lr=0.05)

# tinymp: Gradient Condensing (r=4), a quarter of the channels, re-selected every period (APU).
# The plan keeps only its compact tables on the heap: the planning workspace is freed before
# plan() returns (measured where the GC can say, i.e. on MicroPython).
p = None
if hasattr(gc, "mem_alloc"):
    gc.collect()
    before = gc.mem_alloc()
    p = m.plan()
    gc.collect()
    kept = gc.mem_alloc() - before
    print("  plan keeps its tables only:", p.table_bytes <= kept < p.table_bytes + 512)
else:
    p = m.plan()
    print("  plan keeps its tables only:", True)
show_plan(p)
print(p.describe())
# the region limit lifted: the first layer joins (a cached step then costs more than the limit)
q = m.plan(step_share=float("inf"))
print("  no limit: first", q.first, "layers", q.layers, "share", q.step_share,
      "step", q.step_macs, q.step_macs > p.step_share * q.forward_macs)
t = train(p, lr=0.1, period=4)
k = dict((layer, len(ch)) for layer, ch in t.selection.items())
print("  selection sizes", k)
seen = dict((layer, set(ch)) for layer, ch in t.selection.items())
changed = True
for _ in range(3):
    before = t.selection
    t.end_period()
    after = t.selection
    changed = changed and before != after and dict((l, len(c)) for l, c in after.items()) == k
    for layer, ch in after.items():
        seen[layer].update(ch)
print("  end_period", t.stats()["periods"], "re-selects:", changed)
print("  channels visited", dict((l, len(s)) for l, s in seen.items()))
p2 = m.plan("tinymp", support=(xs, ys), budget=p.arena_bytes)
print("  with support", p2.arena_bytes <= p.arena_bytes, p2.layers)

# a caller's arena: its 4-byte aligned part is used (here from an odd offset)
p = m.plan("full")
buf = bytearray(p.arena_bytes + 4)
view = memoryview(buf)[1:]
t1 = tinymp.Trainer(m, p, lr=0.05, seed=7)
t2 = tinymp.Trainer(m, p, lr=0.05, seed=7, arena=view)
same = True
for x, y in zip(xs, ys):
    same = same and t1.step(x, y) == t2.step(x, y)
print("caller arena", same, "untouched head", buf[1:4] == b"\x00\x00\x00",
      "high_water", t2.high_water, t2.high_water == t1.high_water)

# reset(): back to the pretrained parameters; lr can be changed between steps
pre = [list(m.logits(x)) for x in xs]
print("trained differs", [list(t1.logits(x)) for x in xs] != pre)
t1.reset()
print("reset", [list(t1.logits(x)) for x in xs] == pre, "steps kept", t1.stats()["steps"])
t1.lr = 0.02
print("lr", round(t1.lr, 4))
t1.step(xs[0], 1)
print("steps", t1.stats()["steps"])

# no lr: the plan's method's own rate (the same on the board and on the PC)
print("default lr", [(k, round(tinymp.Trainer(m, m.plan(k)).lr, 4))
                     for k in ("none", "last", "bias", "full", "tinymp")])

# 'none' trains nothing: the loss stays the same
p = m.plan("none")
t = tinymp.Trainer(m, p)
a = t.step(xs[0], 1)
b = t.step(xs[0], 1)
print("none", p.layers, p.backward_macs, a == b, t.predict(xs[2]) == m.predict(xs[2]))

# several trainers of one model coexist; each keeps its own state
ta = tinymp.Trainer(m, m.plan("last"), lr=0.1)
tb = tinymp.Trainer(m, m.plan("last"), lr=0.1)
for _ in range(3):
    ta.step(xs[0], 1)
print("independent", list(tb.logits(xs[0])) == list(m.logits(xs[0])),
      list(ta.logits(xs[0])) != list(m.logits(xs[0])))
gc.collect()
print("repr", repr(ta).split(" ")[0], repr(ta.plan).split(" ")[0])
