# tinymp_camera: camera frames to tinymp model inputs, and labelled samples on the filesystem.
#
# Frozen into the tinymp firmware (firmware/manifest.py); with stock firmware and tinymp.mpy,
# copy this file to the board too. Runs unchanged under MicroPython and CPython.
#
#   import tinymp, tinymp_camera
#   m = tinymp.Model(tinymp_camera.find("model.tmpm"))
#   sensor = tinymp_camera.start_sensor(m)   # OpenMV camera set up for the model's channels
#   prep = tinymp_camera.Preprocess(m)       # buffers allocated once
#   x = prep(img)                            # camera image -> H*W*C int8 bytes for m / a Trainer
#   store = tinymp_camera.SampleStore(tinymp_camera.find("samples.bin", write=True), m)
#   store.append(x, label); len(store); store.counts(m.num_classes)
#   for x, y in store: ...                   # x is one reused buffer
#   for i in tinymp_camera.order(len(store), seed=epoch): x, y = store.read(i)   # shuffled
#
# Preprocess: the largest centred region of the frame with the model's aspect ratio, sampled
# nearest-neighbour to the model's H x W, each 8-bit channel value v mapped to the model's int8
# input as clamp(round((v / 255) / input_scale) + input_zero_point, -128, 127) (real inputs in
# [0, 1], the convention of tinymp's zoo and demo models). The frame is an OpenMV image
# (GRAYSCALE or RGB565: anything with width(), height() and bytearray()), or a buffer given to
# convert(buf, w, h) with 1 (grayscale), 2 (RGB565, little-endian as in OpenMV's frame buffer)
# or 3 (RGB888) bytes per pixel. A 3-channel model gets R, G, B (grayscale is replicated); a
# 1-channel model gets grayscale (RGB as (77 R + 150 G + 29 B) >> 8).
#
# Speed: the pixel loop is compiled with MicroPython's viper emitter when the firmware has one
# (stm32, esp32, unix), otherwise it runs as plain Python. Converting allocates nothing once the
# frame size is known.

import os

try:
    from array import array
except ImportError:  # pragma: no cover
    from uarray import array

_LOOP = """
def _convert(src, dst, tab, lut):
    s = ptr8(src)
    d = ptr8(dst)
    t = ptr32(tab)
    l = ptr8(lut)
    bpp = int(t[0])
    W = int(t[1])
    H = int(t[2])
    C = int(t[3])
    o = 0
    oy = 0
    while oy < H:
        row = int(t[4 + W + oy])
        ox = 0
        while ox < W:
            p = row + int(t[4 + ox])
            r = 0
            g = 0
            b = 0
            if bpp == 1:
                r = int(s[p])
                g = r
                b = r
            elif bpp == 2:
                v = int(s[2 * p]) | (int(s[2 * p + 1]) << 8)
                r = (v >> 11) & 31
                g = (v >> 5) & 63
                b = v & 31
                r = (r << 3) | (r >> 2)
                g = (g << 2) | (g >> 4)
                b = (b << 3) | (b >> 2)
            else:
                r = int(s[3 * p])
                g = int(s[3 * p + 1])
                b = int(s[3 * p + 2])
            if C == 1:
                if bpp == 1:
                    d[o] = l[r]
                else:
                    d[o] = l[(r * 77 + g * 150 + b * 29) >> 8]
                o += 1
            else:
                d[o] = l[r]
                d[o + 1] = l[g]
                d[o + 2] = l[b]
                o += 3
            ox += 1
        oy += 1
"""


def _identity(x):
    return x


def _compile_loop():
    # viper where the firmware has a native emitter; plain Python otherwise (and under CPython,
    # where ptr8/ptr32 are the identity: indexing bytes/bytearray/array gives ints already).
    try:
        ns = {}
        exec("import micropython\n@micropython.viper" + _LOOP, ns)
        return ns["_convert"], True
    except Exception:
        ns = {"ptr8": _identity, "ptr32": _identity}
        exec(_LOOP, ns)
        return ns["_convert"], False


_convert, VIPER = _compile_loop()


def quant_table(scale, zero_point):
    """256 bytes: the int8 input (as a byte) of each 8-bit channel value v, i.e.
    clamp(round((v / 255) / scale) + zero_point, -128, 127); halves round away from zero."""
    if not scale > 0:
        raise ValueError("tinymp_camera: input_scale must be > 0, got %r" % (scale,))
    lut = bytearray(256)
    for v in range(256):
        t = (v / 255) / scale
        q = int(t + 0.5) if t >= 0 else -int(-t + 0.5)
        q += zero_point
        if q < -128:
            q = -128
        elif q > 127:
            q = 127
        lut[v] = q & 0xFF
    return lut


class Preprocess:
    """Camera frame -> the model's int8 input (see the module comment)."""

    def __init__(self, model):
        h, w, c = model.input_shape
        if c not in (1, 3):
            raise ValueError("tinymp_camera: models with %d input channels are not supported" % c)
        self.shape = (h, w, c)
        self.lut = quant_table(model.input_scale, model.input_zero_point)
        self.buf = bytearray(h * w * c)
        self._tab = None
        self._key = None

    def _table(self, fw, fh, bpp):
        # [bpp, W, H, C, x offset of each output column..., pixel index of each output row...]
        h, w, c = self.shape
        if fw * h >= fh * w:        # frame wider than the model: full height, centred columns
            ch = fh
            cw = (fh * w) // h
        else:
            cw = fw
            ch = (fw * h) // w
        if cw < 1 or ch < 1:
            raise ValueError("tinymp_camera: frame %dx%d is too small" % (fw, fh))
        x0 = (fw - cw) // 2
        y0 = (fh - ch) // 2
        tab = array("I", [0] * (4 + w + h))
        tab[0], tab[1], tab[2], tab[3] = bpp, w, h, c
        for ox in range(w):
            tab[4 + ox] = x0 + ((2 * ox + 1) * cw) // (2 * w)
        for oy in range(h):
            tab[4 + w + oy] = (y0 + ((2 * oy + 1) * ch) // (2 * h)) * fw
        return tab

    def convert(self, buf, width, height, out=None):
        """Convert a frame buffer of width x height pixels (1, 2 or 3 bytes each)."""
        if width < 1 or height < 1:
            raise ValueError("tinymp_camera: bad frame size %dx%d" % (width, height))
        n = len(buf)
        bpp = n // (width * height)
        if bpp not in (1, 2, 3) or bpp * width * height != n:
            raise ValueError("tinymp_camera: a %dx%d frame of %d bytes is not grayscale, RGB565 "
                             "or RGB888" % (width, height, n))
        key = (width, height, bpp)
        if key != self._key:
            self._tab = self._table(width, height, bpp)
            self._key = key
        dst = self.buf if out is None else out
        if len(dst) != len(self.buf):
            raise ValueError("tinymp_camera: out must have %d bytes" % len(self.buf))
        _convert(buf, dst, self._tab, self.lut)
        return dst

    def __call__(self, img, out=None):
        """Convert an OpenMV image (GRAYSCALE or RGB565)."""
        return self.convert(img.bytearray(), img.width(), img.height(), out)


def start_sensor(model, framesize="QQVGA", skip_ms=1000):
    """Reset and set up OpenMV's camera for `model`: GRAYSCALE frames for a 1-channel model,
    RGB565 for a 3-channel one, at `framesize` (a name of the sensor module, e.g. "QQVGA" for
    160x120, "QVGA" for 320x240); waits `skip_ms` for the exposure to settle. Returns the sensor
    module."""
    import sensor

    sensor.reset()
    sensor.set_pixformat(sensor.GRAYSCALE if model.input_shape[2] == 1 else sensor.RGB565)
    sensor.set_framesize(getattr(sensor, framesize))
    sensor.skip_frames(time=skip_ms)
    return sensor


def order(n, seed=1):
    """0..n-1 shuffled (Fisher-Yates with a small linear congruential generator: the same order
    for the same seed on every port, no `random` module needed). Train on samples in a new order
    each epoch: in capture order (all of one class, then the next) SGD forgets the earlier
    classes."""
    idx = list(range(n))
    s = (seed & 0x7FFFFFFF) or 1
    for i in range(n - 1, 0, -1):
        s = (s * 1103515245 + 12345) & 0x7FFFFFFF
        j = s % (i + 1)
        idx[i], idx[j] = idx[j], idx[i]
    return idx


def need_training(tinymp):
    """Raise one clear error when `tinymp` cannot train: the native module tinymp.mpy (stock
    firmware) runs inference only; Model.plan and Trainer come with the tinymp firmware."""
    if not hasattr(tinymp, "Trainer"):
        raise RuntimeError("this example trains on the camera, which needs the tinymp firmware "
                           "(README: make firmware BOARD=OPENMV_H7, then make flash); "
                           "tinymp.mpy on stock firmware runs inference only")


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


# Where files live: ROMFS (read-only, models used in place), then the SD card, the internal
# flash filesystem (OpenMV: /flash, stm32: /flash, esp32: /) and the current directory.
DIRS = ("/rom", "/sdcard", "/flash", "")


def find(name, write=False):
    """The path of `name` in the first of DIRS that has it; with write=True, the path in the
    first writable directory (not /rom) where it is or may be created."""
    dirs = [d for d in DIRS if not (write and d == "/rom")]
    for d in dirs:
        p = d + "/" + name if d else name
        if _exists(p):
            return p
    if write:
        for d in dirs:
            if d == "" or _exists(d):
                return d + "/" + name if d else name
    raise OSError("tinymp_camera: %s not found in %s" % (name, ", ".join(d or "." for d in dirs)))


class SampleStore:
    """Labelled int8 samples appended to one file: a header b"TMPS" + uint32 sample size
    (little-endian), then per sample one label byte and the sample bytes."""

    MAGIC = b"TMPS"

    def __init__(self, path, model=None, sample_bytes=None):
        if model is not None:
            h, w, c = model.input_shape
            sample_bytes = h * w * c
        if _exists(path):
            with open(path, "rb") as f:
                hdr = f.read(8)
            if len(hdr) != 8 or hdr[:4] != self.MAGIC:
                raise ValueError("tinymp_camera: %s is not a sample file" % path)
            size = hdr[4] | (hdr[5] << 8) | (hdr[6] << 16) | (hdr[7] << 24)
            if sample_bytes is not None and size != sample_bytes:
                raise ValueError("tinymp_camera: %s holds samples of %d bytes, the model takes %d"
                                 % (path, size, sample_bytes))
            sample_bytes = size
        elif sample_bytes is None:
            raise ValueError("tinymp_camera: give a model or sample_bytes for a new sample file")
        self.path = path
        self.sample_bytes = sample_bytes
        self.buf = bytearray(sample_bytes)

    def _header(self):
        n = self.sample_bytes
        return self.MAGIC + bytes((n & 255, (n >> 8) & 255, (n >> 16) & 255, (n >> 24) & 255))

    def append(self, x, label):
        if len(x) != self.sample_bytes:
            raise ValueError("tinymp_camera: sample has %d bytes, expected %d"
                             % (len(x), self.sample_bytes))
        if not 0 <= label < 256:
            raise ValueError("tinymp_camera: label must be in 0..255, got %r" % (label,))
        new = not _exists(self.path)
        with open(self.path, "ab") as f:
            if new:
                f.write(self._header())
            f.write(bytes((label,)))
            f.write(x)

    def clear(self):
        with open(self.path, "wb") as f:
            f.write(self._header())

    def __len__(self):
        if not _exists(self.path):
            return 0
        return (os.stat(self.path)[6] - 8) // (1 + self.sample_bytes)

    def read(self, i):
        """Sample i as (x, label); x is the store's one buffer, overwritten by the next read."""
        n = len(self)
        if not 0 <= i < n:
            raise IndexError("tinymp_camera: sample %d of %d" % (i, n))
        lab = bytearray(1)
        with open(self.path, "rb") as f:
            f.seek(8 + i * (1 + self.sample_bytes))
            f.readinto(lab)
            f.readinto(self.buf)
        return self.buf, lab[0]

    def __iter__(self):
        # Yields (x, label); x is the store's one buffer, overwritten by the next sample.
        if not _exists(self.path):
            return
        lab = bytearray(1)
        with open(self.path, "rb") as f:
            f.read(8)
            while f.readinto(lab) == 1:
                if f.readinto(self.buf) != self.sample_bytes:
                    break
                yield self.buf, lab[0]

    def counts(self, num_classes):
        """Samples per label, as a list of num_classes ints."""
        c = [0] * num_classes
        for _, y in self:
            if y < num_classes:
                c[y] += 1
        return c
