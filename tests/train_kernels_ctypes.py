"""ctypes bindings of the core's fp32 training kernels (core/train/tmp_train_kernels.h), for
tests: build a shared library from every core .c file, load it, and call the kernels with numpy
arrays.

    lib_path = build_library(outdir, sanitize=False)
    tk = TrainKernels(lib_path)
    xs = tk.gc_sums(x, zp, out_hw, stride, r, channels, np.int16)

Zero points are passed as zero points here (the kernels take input_offset = -zp). Every wrapper
raises KernelError(status) when a kernel does not return TMP_OK. Scratch buffers are allocated
at exactly the size *_get_buffer_size() asks for, so a sanitizer build catches overruns.
"""
import ctypes as C
import glob
import os
import subprocess

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "micropython_modules", "tinymp", "core")
SOURCES = sorted(glob.glob(os.path.join(CORE, "**", "*.c"), recursive=True))
TRAIN_SOURCES = sorted(glob.glob(os.path.join(CORE, "train", "*.c")))
CFLAGS = ["-shared", "-fPIC", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O1"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
            "-g"]

TMP_OK = 0
TMP_ERR_ARG = -1
XS_TYPES = {np.dtype(np.int16): 2, np.dtype(np.int32): 4}
MASK_NONE, MASK_BITS, MASK_COUNTS = 0, 1, 2


def build_check_program(source, exe, cc="gcc", includes=()):
    """Compile a C test program (tests/..._check.c) with the whole core under the address and
    undefined-behaviour sanitizers into exe; returns the environment to run it in. `includes`:
    core files (relative to the core folder) the program #includes itself, so not linked."""
    # the compiler and the program must not run under a sanitizer runtime preloaded here
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    skip = {os.path.join(CORE, f) for f in includes}
    sources = [s for s in SOURCES if s not in skip]
    assert len(sources) == len(SOURCES) - len(skip), "no such core file among " + ", ".join(includes)
    r = subprocess.run([cc, *CFLAGS[2:], *SANITIZE, "-I", CORE, source, *sources, "-lm", "-o", exe],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError("building %s failed:\n%s" % (os.path.basename(source), r.stderr))
    return env


def run_check_on_model(checker, key, arg, timeout):
    """Run a check program from build_check_program (checker = (folder, exe, env)) on the bench
    model `key` ('demo', 'mcunet', 'mbv2') with its second argument; asserts that it passed and
    returns its stdout."""
    from tinymp import bench
    out, exe, env = checker
    path = os.path.join(str(out), key + ".tmpm")
    with open(path, "wb") as f:
        f.write(bench.model_bytes(key))
    r = subprocess.run([exe, path, str(arg)], capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0 and "FAIL" not in r.stdout, r.stdout + r.stderr
    return r.stdout


def build_library(outdir, sanitize=False, cc="gcc", sources=None):
    """Compile core .c files (default: every one; the training kernels need only train/) into
    one shared library in outdir, one compiler process per file in parallel; returns its path."""
    sources = SOURCES if sources is None else list(sources)
    flags = [*CFLAGS[1:], *(SANITIZE if sanitize else []), "-I", CORE]
    tag = "_san" if sanitize else ""
    # the compiler must not run under a sanitizer runtime preloaded into this process
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    objs, procs = [], []
    for i, src in enumerate(sources):
        obj = os.path.join(str(outdir), "%d_%s%s.o" % (i, os.path.basename(src)[:-2], tag))
        objs.append(obj)
        procs.append((src, subprocess.Popen([cc, *flags, "-c", src, "-o", obj],
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True, env=env)))
    errors = []
    for src, p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            errors.append(f"{src}:\n{err}")
    if errors:
        raise RuntimeError("building the core failed:\n" + "\n".join(errors))
    out = os.path.join(str(outdir), "libtinymp_train%s.so" % tag)
    cmd = [cc, "-shared", *(SANITIZE if sanitize else []), *objs, "-o", out, "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError("linking the core failed:\n" + " ".join(cmd) + "\n" + r.stderr)
    return out


class KernelError(RuntimeError):
    def __init__(self, name, status):
        super().__init__(f"{name} returned {status}")
        self.status = status


class Dims(C.Structure):
    _fields_ = [("h", C.c_int32), ("w", C.c_int32), ("c", C.c_int32)]


class FilterDims(C.Structure):
    _fields_ = [("kh", C.c_int32), ("kw", C.c_int32)]


class GradConvParams(C.Structure):
    _fields_ = [("r", C.c_int32), ("stride_h", C.c_int32), ("stride_w", C.c_int32),
                ("pad_t", C.c_int32), ("pad_l", C.c_int32)]


P = C.c_void_p
I32 = C.c_int32
F32 = C.c_float
PDIMS = C.POINTER(Dims)
PFD = C.POINTER(FilterDims)
PGP = C.POINTER(GradConvParams)

SIGNATURES = {
    "tmp_gc_xs_type": (I32, [I32, I32, I32]),
    "tmp_gc_sums_size": (I32, [I32, PDIMS, I32, I32]),
    "tmp_gc_sums_s8": (I32, [PGP, PDIMS, P, I32, PDIMS, P, I32, I32, P]),
    "tmp_save_channels_s8": (I32, [PDIMS, P, P, I32, P]),
    "tmp_mask_kind_for": (I32, [I32]),
    "tmp_mask_s8_size": (I32, [PDIMS, I32, I32]),
    "tmp_mask_s8": (I32, [PDIMS, P, I32, I32, I32, I32, P]),
    "tmp_grad_gbar_f32": (I32, [PDIMS, I32, P, I32, P, P, P]),
    "tmp_conv_dx_f32_get_buffer_size": (I32, [PGP, PDIMS, PFD, PDIMS]),
    "tmp_conv_dx_f32": (I32, [PGP, PDIMS, PFD, P, P, PDIMS, P, P, P]),
    "tmp_dwconv_dx_f32_get_buffer_size": (I32, [PGP, PDIMS, PFD, PDIMS]),
    "tmp_dwconv_dx_f32": (I32, [PGP, PDIMS, PFD, P, P, PDIMS, P, P, P]),
    "tmp_pwconv_dx_f32": (I32, [I32, PDIMS, P, P, PDIMS, P, P]),
    "tmp_conv_dw_gc_f32": (I32, [PGP, PDIMS, P, I32, P, I32, F32, PFD, P]),
    "tmp_gc_sums_f32": (I32, [I32, P, I32, P]),
    "tmp_conv_dw_f32": (I32, [PGP, PDIMS, P, I32, I32, F32, PFD, PDIMS, P, I32, P]),
    "tmp_dwconv_dw_gc_f32": (I32, [PGP, PDIMS, P, I32, I32, P, I32, I32, F32, PFD, P]),
    "tmp_dwconv_dw_f32": (I32, [PGP, PDIMS, P, I32, I32, I32, F32, PFD, PDIMS, P, I32, P]),
    "tmp_fc_dx_f32": (I32, [I32, I32, P, P, P, P]),
    "tmp_fc_dw_f32": (I32, [I32, P, I32, F32, P, I32, F32, P]),
    "tmp_avgpool_dx_f32": (I32, [PDIMS, I32, P, P]),
    "tmp_softmax_xent_f32": (I32, [I32, P, I32, P, P]),
    "tmp_softmax_xent_s8": (I32, [I32, P, I32, F32, I32, P, P]),
    "tmp_sgd_s8_stochastic": (I32, [I32, P, P, F32, F32, F32, P, P]),
    "tmp_sgd_s8_stochastic_at": (I32, [I32, P, P, I32, P, F32, F32, P, P]),
    "tmp_sgd_s32_stochastic": (I32, [I32, P, P, F32, F32, P, F32, P, P]),
    "tmp_sgd_f32": (I32, [I32, P, P, F32, F32, P]),
    "tmp_requant_s8_f32": (I32, [I32, P, F32, P]),
    "tmp_requant_s32_f32": (I32, [I32, P, F32, P, P]),
}


def _ptr(a):
    return None if a is None else a.ctypes.data_as(C.c_void_p)


def _arr(a, dtype):
    return np.ascontiguousarray(np.asarray(a), dtype=dtype)


def _dims(shape):
    h, w, c = (int(v) for v in shape)
    return Dims(h, w, c)


def _gp(r=1, stride=(1, 1), pad_tl=(0, 0)):
    return GradConvParams(int(r), int(stride[0]), int(stride[1]), int(pad_tl[0]), int(pad_tl[1]))


def _channels(channels, c):
    if channels is None:
        return None, c
    ch = _arr(channels, np.uint16).reshape(-1)
    return ch, int(ch.size)


def grid(hw, r):
    """(ceil(H/r), ceil(W/r))."""
    return -(-int(hw[0]) // r), -(-int(hw[1]) // r)


class TrainKernels:
    def __init__(self, path):
        self.lib = C.CDLL(path)
        for name, (res, args) in SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.restype = res
            fn.argtypes = args

    def _call(self, name, *args):
        st = getattr(self.lib, name)(*args)
        if st != TMP_OK:
            raise KernelError(name, st)

    # -- savers ----------------------------------------------------------------------------

    def xs_type(self, r, stride):
        return {2: np.int16, 4: np.int32}[self.lib.tmp_gc_xs_type(r, stride[0], stride[1])]

    def gc_sums_size(self, r, out_hw, k, dtype):
        d = Dims(int(out_hw[0]), int(out_hw[1]), 1)
        return self.lib.tmp_gc_sums_size(r, C.byref(d), k, XS_TYPES[np.dtype(dtype)])

    def gc_sums(self, x, zp, out_hw, stride, r, channels=None, dtype=np.int32):
        x = _arr(x, np.int8)
        ch, k = _channels(channels, x.shape[2])
        ph, pw = grid(out_hw, r)
        xs = np.zeros((ph * pw, k), dtype=dtype)
        od = Dims(int(out_hw[0]), int(out_hw[1]), 1)
        self._call("tmp_gc_sums_s8", C.byref(_gp(r, stride)), C.byref(_dims(x.shape)), _ptr(x),
                   -int(zp), C.byref(od), _ptr(ch), k, XS_TYPES[np.dtype(dtype)], _ptr(xs))
        return xs

    def save_channels(self, x, channels=None):
        x = _arr(x, np.int8)
        ch, k = _channels(channels, x.shape[2])
        out = np.zeros(x.shape[:2] + (k,), dtype=np.int8)
        self._call("tmp_save_channels_s8", C.byref(_dims(x.shape)), _ptr(x), _ptr(ch), k, _ptr(out))
        return out

    def mask_kind_for(self, r):
        return self.lib.tmp_mask_kind_for(r)

    def mask_size(self, shape, r, kind):
        return self.lib.tmp_mask_s8_size(C.byref(_dims(shape)), r, kind)

    def mask(self, y, act_min, act_max, r, kind):
        y = _arr(y, np.int8)
        size = self.mask_size(y.shape, r, kind)
        if size < 0:
            raise KernelError("tmp_mask_s8_size", size)
        m = np.full(size, 0xAA, dtype=np.uint8) if size else None
        self._call("tmp_mask_s8", C.byref(_dims(y.shape)), _ptr(y), act_min, act_max, r, kind,
                   _ptr(m))
        return m if m is not None else np.zeros(0, np.uint8)

    # -- backward --------------------------------------------------------------------------

    def gbar(self, g, out_shape, r, kind=MASK_NONE, mask=None, db=None, in_place=False):
        g = _arr(g, np.float32).copy()
        m = None if mask is None or kind == MASK_NONE else _arr(mask, np.uint8)
        out = g if in_place else np.full_like(g, np.nan)
        dbv = None if db is None else _arr(db, np.float32).copy()
        self._call("tmp_grad_gbar_f32", C.byref(_dims(out_shape)), r, _ptr(g), kind, _ptr(m),
                   _ptr(out), _ptr(dbv))
        return out, dbv

    def _scratch(self, getsize, *args):
        n = getsize(*args)
        assert n >= 0
        return np.zeros(n, dtype=np.uint8) if n else None

    def conv_dx(self, gbar, in_shape, Wq, wscale, out_shape, stride=(1, 1), pad_tl=(0, 0), r=1,
                dx=None, kind="conv"):
        """kind 'conv' (Wq [Cout, kh, kw, Cin]) or 'dwconv' (Wq [kh, kw, C])."""
        Wq = _arr(Wq, np.int8)
        kh, kw = (Wq.shape[1:3] if kind == "conv" else Wq.shape[0:2])
        gp, idims, odims, fd = _gp(r, stride, pad_tl), _dims(in_shape), _dims(out_shape), \
            FilterDims(kh, kw)
        qh, qw = grid(in_shape[:2], r)
        dxv = np.zeros((qh, qw, in_shape[2]), np.float32) if dx is None else _arr(dx, np.float32).copy()
        gb = _arr(gbar, np.float32)
        ws = _arr(wscale, np.float32)
        name = "tmp_conv_dx_f32" if kind == "conv" else "tmp_dwconv_dx_f32"
        scratch = self._scratch(getattr(self.lib, name + "_get_buffer_size"), C.byref(gp),
                                C.byref(idims), C.byref(fd), C.byref(odims))
        self._call(name, C.byref(gp), C.byref(idims), C.byref(fd), _ptr(Wq), _ptr(ws),
                   C.byref(odims), _ptr(gb), _ptr(dxv), _ptr(scratch))
        return dxv

    def pwconv_dx(self, gbar, in_shape, Wq, wscale, r=1, dx=None):
        Wq = _arr(Wq, np.int8)
        out_shape = (in_shape[0], in_shape[1], Wq.shape[0])
        qh, qw = grid(in_shape[:2], r)
        dxv = np.zeros((qh, qw, in_shape[2]), np.float32) if dx is None else _arr(dx, np.float32).copy()
        self._call("tmp_pwconv_dx_f32", r, C.byref(_dims(in_shape)), _ptr(Wq),
                   _ptr(_arr(wscale, np.float32)), C.byref(_dims(out_shape)),
                   _ptr(_arr(gbar, np.float32)), _ptr(dxv))
        return dxv

    def gc_sums_f32(self, xs):
        """The window sums as float32, converted by the core (tmp_gc_sums_f32)."""
        xs = np.ascontiguousarray(xs)
        xf = np.full(xs.shape, np.nan, np.float32)
        self._call("tmp_gc_sums_f32", XS_TYPES[xs.dtype], _ptr(xs), xs.size, _ptr(xf))
        return xf

    def conv_dw_gc(self, gbar, out_shape, o, xs, s_x, kernel_hw, stride=(1, 1), r=2):
        """dW of output channel o from int window sums xs [P][k] (converted by the core, as the
        trainer does) or from float32 sums given directly."""
        xs = np.ascontiguousarray(xs)
        xf = xs if xs.dtype == np.float32 else self.gc_sums_f32(xs)
        k = xs.shape[1]
        dw = np.full((kernel_hw[0], kernel_hw[1], k), np.nan, np.float32)
        self._call("tmp_conv_dw_gc_f32", C.byref(_gp(r, stride)), C.byref(_dims(out_shape)),
                   _ptr(_arr(gbar, np.float32)), o, _ptr(xf), k, s_x,
                   C.byref(FilterDims(*kernel_hw)), _ptr(dw))
        return dw

    def conv_dw(self, saved, in_shape, zp, s_x, kernel_hw, out_shape, gbar, o, stride=(1, 1),
                pad_tl=(0, 0), r=1):
        saved = _arr(saved, np.int8)
        k = saved.shape[2]
        dw = np.full((kernel_hw[0], kernel_hw[1], k), np.nan, np.float32)
        self._call("tmp_conv_dw_f32", C.byref(_gp(r, stride, pad_tl)), C.byref(_dims(in_shape)),
                   _ptr(saved), k, -int(zp), s_x, C.byref(FilterDims(*kernel_hw)),
                   C.byref(_dims(out_shape)), _ptr(_arr(gbar, np.float32)), o, _ptr(dw))
        return dw

    def dwconv_dw_gc(self, gbar, out_shape, c, xs, j, s_x, kernel_hw, stride=(1, 1), r=2):
        xs = np.ascontiguousarray(xs)
        dw = np.full(tuple(kernel_hw), np.nan, np.float32)
        self._call("tmp_dwconv_dw_gc_f32", C.byref(_gp(r, stride)), C.byref(_dims(out_shape)),
                   _ptr(_arr(gbar, np.float32)), c, XS_TYPES[xs.dtype], _ptr(xs), xs.shape[1], j,
                   s_x, C.byref(FilterDims(*kernel_hw)), _ptr(dw))
        return dw

    def dwconv_dw(self, saved, in_shape, j, zp, s_x, kernel_hw, out_shape, gbar, c,
                  stride=(1, 1), pad_tl=(0, 0), r=1):
        saved = _arr(saved, np.int8)
        dw = np.full(tuple(kernel_hw), np.nan, np.float32)
        self._call("tmp_dwconv_dw_f32", C.byref(_gp(r, stride, pad_tl)), C.byref(_dims(in_shape)),
                   _ptr(saved), saved.shape[2], j, -int(zp), s_x, C.byref(FilterDims(*kernel_hw)),
                   C.byref(_dims(out_shape)), _ptr(_arr(gbar, np.float32)), c, _ptr(dw))
        return dw

    def fc_dx(self, Wq, wscale, dy, dx=None):
        Wq = _arr(Wq, np.int8)
        o, n = Wq.shape
        dxv = np.zeros(n, np.float32) if dx is None else _arr(dx, np.float32).copy()
        self._call("tmp_fc_dx_f32", n, o, _ptr(Wq), _ptr(_arr(wscale, np.float32)),
                   _ptr(_arr(dy, np.float32)), _ptr(dxv))
        return dxv

    def fc_dw(self, x, zp, s_x, dy_o, channels=None):
        x = _arr(x, np.int8).reshape(-1)
        ch, k = _channels(channels, x.size)
        dw = np.full(k, np.nan, np.float32)
        self._call("tmp_fc_dw_f32", x.size, _ptr(x), -int(zp), s_x, _ptr(ch), k, dy_o, _ptr(dw))
        return dw

    def avgpool_dx(self, in_shape, r, dy, dx=None):
        qh, qw = grid(in_shape[:2], r)
        dxv = np.zeros((qh, qw, in_shape[2]), np.float32) if dx is None else _arr(dx, np.float32).copy()
        self._call("tmp_avgpool_dx_f32", C.byref(_dims(in_shape)), r, _ptr(_arr(dy, np.float32)),
                   _ptr(dxv))
        return dxv

    def softmax_xent(self, logits, label, in_place=False):
        z = _arr(logits, np.float32).copy()
        d = z if in_place else np.full_like(z, np.nan)
        loss = np.zeros(1, np.float32)
        self._call("tmp_softmax_xent_f32", z.size, _ptr(z), label, _ptr(loss), _ptr(d))
        return float(loss[0]), d

    def softmax_xent_s8(self, q, zp, scale, label):
        q = _arr(q, np.int8)
        d = np.full(q.size, np.nan, np.float32)
        loss = np.zeros(1, np.float32)
        self._call("tmp_softmax_xent_s8", q.size, _ptr(q), zp, scale, label, _ptr(loss), _ptr(d))
        return float(loss[0]), d

    # -- updates ---------------------------------------------------------------------------

    def sgd_s8(self, w, g, lr, scale, state, momentum=0.0, v=None):
        """Returns (new w, new state, new v)."""
        w = _arr(w, np.int8).copy()
        vv = None if v is None else _arr(v, np.float32).copy()
        st = C.c_uint32(state)
        self._call("tmp_sgd_s8_stochastic", w.size, _ptr(w), _ptr(_arr(g, np.float32)), lr, scale,
                   momentum, _ptr(vv), C.cast(C.pointer(st), C.c_void_p))
        return w, st.value, vv

    def sgd_s8_at(self, w, idx, stride, g, lr, scale, state, sq=None):
        """The in-place variant: element i is w[idx[i]] (idx not None) or w[i * stride]; sq (float32
        array or None) gets the squared gradients added. Returns (new w, new state, new sq)."""
        w = _arr(w, np.int8).copy()
        ix = None if idx is None else _arr(idx, np.uint16)
        g = _arr(g, np.float32)
        sqa = None if sq is None else _arr(sq, np.float32).copy()
        st = C.c_uint32(state)
        self._call("tmp_sgd_s8_stochastic_at", g.size, _ptr(w), _ptr(ix), stride, _ptr(g), lr, scale,
                   _ptr(sqa), C.cast(C.pointer(st), C.c_void_p))
        return w, st.value, sqa

    def sgd_s32(self, b, g, lr, s_x, wscale, state, momentum=0.0, v=None):
        b = _arr(b, np.int32).copy()
        vv = None if v is None else _arr(v, np.float32).copy()
        st = C.c_uint32(state)
        self._call("tmp_sgd_s32_stochastic", b.size, _ptr(b), _ptr(_arr(g, np.float32)), lr, s_x,
                   _ptr(_arr(wscale, np.float32)), momentum, _ptr(vv),
                   C.cast(C.pointer(st), C.c_void_p))
        return b, st.value, vv

    def sgd_f32(self, w, g, lr, momentum=0.0, v=None):
        w = _arr(w, np.float32).copy()
        vv = None if v is None else _arr(v, np.float32).copy()
        self._call("tmp_sgd_f32", w.size, _ptr(w), _ptr(_arr(g, np.float32)), lr, momentum, _ptr(vv))
        return w, vv

    def requant_s8(self, w, scale):
        w = _arr(w, np.float32)
        q = np.zeros(w.size, np.int8)
        self._call("tmp_requant_s8_f32", w.size, _ptr(w), scale, _ptr(q))
        return q

    def requant_s32(self, bias, s_x, wscale):
        bias = _arr(bias, np.float32)
        b = np.zeros(bias.size, np.int32)
        self._call("tmp_requant_s32_f32", bias.size, _ptr(bias), s_x,
                   _ptr(_arr(wscale, np.float32)), _ptr(b))
        return b
