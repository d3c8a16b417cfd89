"""Fuzz driver, run in a subprocess against a build of the engine with AddressSanitizer and
UndefinedBehaviorSanitizer (see test_fuzz.py). Any sanitizer report aborts the process; any
exception other than ValueError is printed and makes the exit status non-zero.

usage: python fuzz_driver.py SEED ITERATIONS MODEL_FILE...
"""
import os
import random
import struct
import sys
import tempfile
import zlib

import tinymp


def fix_crc(b):
    total = struct.unpack_from("<I", b, 8)[0]
    if 16 <= total <= len(b):
        struct.pack_into("<I", b, 12, zlib.crc32(bytes(b[16:total])))
    return b


def mutate(rnd, seed_model):
    b = bytearray(seed_model)
    kind = rnd.randrange(7)
    if kind == 0:  # truncate
        b = b[: rnd.randrange(len(b))]
    elif kind == 1:  # flip bits anywhere, CRC left stale
        for _ in range(rnd.randint(1, 8)):
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
    elif kind in (2, 3):  # structured: header/table bytes, CRC repaired so the checks go deeper
        n_tensors, n_layers = struct.unpack_from("<HH", b, 32)
        t_off, l_off = struct.unpack_from("<II", b, 36)
        regions = [(0, 64), (t_off, t_off + 16 * n_tensors), (l_off, l_off + 64 * n_layers)]
        lo, hi = rnd.choice(regions)
        hi = min(hi, len(b))
        for _ in range(rnd.randint(1, 4)):
            if hi > lo:
                i = rnd.randrange(lo, hi)
                b[i] = rnd.choice([0, 1, 0x7F, 0x80, 0xFF, rnd.randrange(256)])
        fix_crc(b)
    elif kind == 4:  # random 32-bit field in the tables, CRC repaired
        i = rnd.randrange(16, max(17, min(len(b), 4096)) - 4) & ~3
        struct.pack_into("<I", b, i, rnd.choice([0, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000,
                                                 rnd.randrange(1 << 32), len(b), len(b) - 1]))
        fix_crc(b)
    elif kind == 5:  # anywhere in the body (weights, multipliers, shifts), CRC repaired
        for _ in range(rnd.randint(1, 16)):
            i = rnd.randrange(16, len(b))
            b[i] = rnd.randrange(256)
        fix_crc(b)
    else:  # random garbage of random length, sometimes with a valid-looking header
        b = bytearray(rnd.randbytes(rnd.randrange(0, 256)))
        if len(b) >= 16 and rnd.random() < 0.5:
            b[0:4] = b"TMPM"
            struct.pack_into("<HHI", b, 4, 1, 64, len(b))
            fix_crc(b)
    return bytes(b)


METHODS = ["last", "bias", "full", "tinymp", "sparse"]


def exercise_training(rnd, data, n, tmpdir):
    """Plan, train, save, mutate the saved parameters and load them back; then edit the model's
    bytes under a live trainer. Only ValueError is acceptable."""
    buf = bytearray(data)
    m = tinymp.Model(buf)
    method = rnd.choice(METHODS)
    kw = {"r": rnd.choice([1, 2, 3, 4, 7]) if method != "full" else 1,
          "storage": rnd.choice(["int8", "fp32"])}
    if method == "sparse":
        weighted = [i for i, l in enumerate(m._layers()) if l["type"] in ("conv", "dwconv", "pwconv")]
        if not weighted:
            return
        kw["layers"] = [rnd.choice(weighted)]
        kw["ratios"] = [rnd.choice([0.125, 0.5, 1.0])]
    try:
        plan = m.plan(method=method, **kw)
    except ValueError:
        return
    t = tinymp.Trainer(m, plan, lr=rnd.choice([0.0, 0.01, 1.0, 1e3]), period=rnd.choice([0, 1, 3]))
    for _ in range(2):
        t.step(rnd.randbytes(n), rnd.randrange(m.num_classes))
    assert t.high_water <= plan.arena_bytes
    path = os.path.join(tmpdir, "p.bin")
    t.save(path)
    blob = bytearray(open(path, "rb").read())
    for _ in range(rnd.randint(1, 4)):
        what = rnd.randrange(3)
        if what == 0 and len(blob) > 1:
            blob = blob[: rnd.randrange(len(blob))]
        elif what == 1 and blob:
            blob[rnd.randrange(len(blob))] ^= 1 << rnd.randrange(8)
        else:  # a body byte changed and the trailing CRC repaired: the checks must go deeper
            if len(blob) > 36:
                blob[rnd.randrange(32, len(blob) - 4)] = rnd.randrange(256)
                struct.pack_into("<I", blob, len(blob) - 4, zlib.crc32(bytes(blob[:-4])))
    with open(path, "wb") as f:
        f.write(blob)
    try:
        t.load(path)
    except ValueError:
        pass
    t.predict(rnd.randbytes(n))
    for _ in range(rnd.randint(1, 6)):
        buf[rnd.randrange(16, len(buf))] = rnd.randrange(256)
    try:
        t.step(rnd.randbytes(n), rnd.randrange(m.num_classes))
        t.predict(rnd.randbytes(n))
    except ValueError:
        pass


def main():
    seed, iterations = int(sys.argv[1]), int(sys.argv[2])
    seeds = [open(p, "rb").read() for p in sys.argv[3:]]
    rnd = random.Random(seed)
    tmpdir = tempfile.mkdtemp()
    loaded = rejected = edited_ok = edited_rejected = trained = 0
    for it in range(iterations):
        data = mutate(rnd, rnd.choice(seeds))
        try:
            m = tinymp.Model(data)
        except ValueError:
            rejected += 1
            continue
        except Exception as e:  # noqa: BLE001 - the point is to catch anything else
            print(f"iteration {it}: {type(e).__name__}: {e}")
            sys.exit(1)
        loaded += 1
        n = m.input_shape[0] * m.input_shape[1] * m.input_shape[2]
        m.predict(bytes(n))
        m.logits(rnd.randbytes(n))
        # a model used in place from a bytearray that the caller edits after loading:
        # the engine re-validates what it decodes and checks the plan still holds
        buf = bytearray(data)
        m = tinymp.Model(buf)
        for _ in range(rnd.randint(1, 6)):
            i = rnd.randrange(16, len(buf))
            buf[i] = rnd.randrange(256)
        try:
            m.predict(bytes(n))
            edited_ok += 1
        except ValueError:
            edited_rejected += 1
        except Exception as e:  # noqa: BLE001
            print(f"iteration {it} (edited after load): {type(e).__name__}: {e}")
            sys.exit(1)
        if rnd.random() < 0.6:
            try:
                exercise_training(rnd, data, n, tmpdir)
                trained += 1
            except Exception as e:  # noqa: BLE001
                print(f"iteration {it} (training): {type(e).__name__}: {e}")
                sys.exit(1)
    print(f"fuzz: {iterations} inputs, {rejected} rejected with ValueError, {loaded} loaded and ran; "
          f"edited after loading: {edited_ok} ran, {edited_rejected} rejected with ValueError; "
          f"{trained} trained (plan, steps, save, mutated load, edits under a trainer)")


if __name__ == "__main__":
    main()
