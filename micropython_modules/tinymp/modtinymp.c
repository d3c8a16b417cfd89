/*
 * tinymp: the MicroPython binding of the portable tinymp C core (core/tinymp.h).
 *
 * This file only converts between MicroPython objects and the core's C API: argument checks,
 * the buffer protocol, exceptions and object lifetimes. Every rule about what a valid model, a
 * valid inference or a valid training step is lives in the core, the same code the PC package
 * (host/tinymp/_tinymp.c) wraps. The public API and the error messages are the PC binding's
 * (docs/API.md), so a board script runs unchanged on a PC:
 *
 *   Model(data)      data: bytes-like (bytes, bytearray, memoryview, array, any object with the
 *                    buffer protocol), used in place and kept alive by the model (copied once if
 *                    not 4-byte aligned); or a str path, read into RAM (used in place when the
 *                    file is in ROMFS, see open_model_file()).
 *     .input_shape, .num_classes, .inference_arena_bytes, .input_scale, .input_zero_point,
 *     .class_names
 *     .predict(x) -> int
 *     .logits(x, out=None) -> array('f')
 *     .plan(method='tinymp', budget=None, *, r=None, ratio=None, storage='int8', momentum=0.0,
 *           n_bias=None, layers=None, ratios=None, macs=None, support=None, cache=None,
 *           step_share=None) -> Plan
 *     ._plan() -> dict                     (test hook, as on the PC)
 *   Plan             .arena_bytes, .peak_live_bytes, .breakdown, .category_peaks, .method,
 *                    .storage, .r, .ratio, .momentum, .first, .layers, .channels,
 *                    .forward_macs, .backward_macs, .step_macs, .step_share, .describe() -> str
 *   Trainer(model, plan, lr=None, arena=None, seed=1, period=0)
 *     .step(x, y, out=None, cache=None) -> float (or `out`), .step_cached(cache, y, out=None),
 *     .predict(x), .logits(x, out=None), .fit(...), .end_period(), .reset(), .save(path),
 *     .load(path), .stats() -> dict, .high_water, .prediction, .selection, .lr (settable), .plan
 *   crc32(data, crc=0) -> int
 *   __version__
 *
 * Memory: the planner workspace, the arena (+ 16 guard bytes) and a logits scratch are taken
 * from the GC heap once, in Model(); predict() allocates nothing and logits() allocates only
 * the array it returns (nothing at all when `out` is given), so both run under
 * micropython.heap_lock(). Everything the model points at is reachable from the Model object,
 * so the GC keeps it alive for as long as the model lives; nothing needs a finaliser. Training
 * follows the same rules (see "training: Plan and Trainer" below): memory is taken in plan()
 * and Trainer(), a step allocates nothing.
 */
#include <stdarg.h> // before py/mpprint.h, which declares mp_vprintf() only then
#include <math.h>
#include <string.h>

#include "py/runtime.h"
#include "py/binary.h"
#include "py/objarray.h"
#include "py/objstr.h"
#include "py/objtuple.h"
#include "py/objtype.h"
#include "py/builtin.h"
#include "py/stream.h"
#include "py/objint.h"
#include "py/smallint.h"
#include "py/mphal.h"
#include "py/mperrno.h"
#include "py/gc.h"

#include "tinymp.h"

#if !MICROPY_PY_BUILTINS_FLOAT || !MICROPY_PY_ARRAY
#error "tinymp needs a MicroPython build with float support and the array module"
#endif

#define GUARD_BYTES 16
#define GUARD_FILL 0xA5

#if MICROPY_FLOAT_IMPL == MICROPY_FLOAT_IMPL_DOUBLE && !defined(__unix__) && !defined(__APPLE__) && !defined(_WIN32)
// The core's training loss calls expf() and logf(). Bare-metal MicroPython ports built with
// double floats (e.g. qemu MPS2_AN500, stm32 boards set to double) link only MicroPython's double
// libm (lib/libm_dbl), which has exp() and log() but no float versions: these fill the gap. Weak,
// so a C library that has them (newlib's libm) wins.
#include <math.h>
MP_WEAK float expf(float x) {
    return (float)exp((double)x);
}
MP_WEAK float logf(float x) {
    return (float)log((double)x);
}
#endif

// The unix port (MICROPY_ASYNC_KBD_INTR) raises KeyboardInterrupt from its SIGINT handler in
// whatever C code runs at that moment. A step cut there leaves the parameters, their momentum and
// the APU state half updated, so SIGINT is held while the engine changes a trainer and taken when
// that call is over (in fit(): between steps, where a board takes Ctrl-C). Other ports only
// schedule the exception, which runs at the next mp_handle_pending().
#if MICROPY_ASYNC_KBD_INTR && !defined(_WIN32)
#include <signal.h>
static void kbd_hold(bool hold) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGINT);
    sigprocmask(hold ? SIG_BLOCK : SIG_UNBLOCK, &s, NULL);
}
#define KBD_ASYNC (1)

// fit() runs many steps and Python code (progress, a cache file) between them. There SIGINT gets
// a handler that only schedules the KeyboardInterrupt, raised between steps: where fit_progress
// handles pending events, inside its catch, or in Python code the engine calls (a sample's
// __getitem__, a cache file's methods: before the next step changes anything). The port's own
// handler raises at once, so a second SIGINT landing just after a first one was caught (the
// port's handler unblocks SIGINT before it jumps) would jump past the engine's end of an epoch.
// Any handler but the default and "ignore" is replaced (a SIGINT that would end the process is
// left alone); should sigaction fail, SIGINT is held for the whole fit(). Returns what
// kbd_undefer undoes: 0 nothing, 1 the handler, 2 the hold. sigaction is process-wide: two
// threads in fit() at once may restore each other's handler (see NOTES.md).
static void kbd_schedule(int sig) {
    (void)sig;
    mp_sched_keyboard_interrupt();
}

static int kbd_defer(struct sigaction *old) {
    struct sigaction sa;
    if (sigaction(SIGINT, NULL, old) != 0) {
        kbd_hold(true);
        return 2;
    }
    if (old->sa_handler == SIG_DFL || old->sa_handler == SIG_IGN) {
        return 0;
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = kbd_schedule;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, NULL) != 0) {
        kbd_hold(true);
        return 2;
    }
    return 1;
}

static void kbd_undefer(int deferred, const struct sigaction *old) {
    if (deferred == 1) {
        sigaction(SIGINT, old, NULL);
    } else if (deferred == 2) {
        kbd_hold(false);
    }
}
#else
static inline void kbd_hold(bool hold) {
    (void)hold;
}
#define KBD_ASYNC (0)
#endif

typedef struct _tinymp_model_obj_t {
    mp_obj_base_t base;
    mp_obj_t owner;          // object whose memory holds the model (user's object, file, or copy)
    bool owner_is_copy;      // owner is our private aligned copy (its pointer never changes)
    const uint8_t *data;     // 4-byte aligned model bytes
    size_t size;             // bytes available at `data` when loaded
    tmp_model model;
    tmp_plan plan;           // its arrays live in `workspace`
    tmp_tensor input;
    size_t input_bytes;
    void *workspace;         // planner workspace (GC heap)
    uint8_t *arena;          // plan.arena_bytes + GUARD_BYTES (GC heap, >= 8-byte aligned)
    float *logits_buf;       // num_classes float32: dequantisation scratch for logits(out=...)
    mp_obj_t class_names;    // tuple of str, or None
} tinymp_model_obj_t;

/* ---------------------------------------------------------------- helpers */

static MP_NORETURN void raise_model_error(const tmp_error *err) {
    const char *msg = err->msg != NULL ? err->msg : "invalid model";
    if (err->layer >= 0) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("tinymp: layer %d (%s): %s"),
            (int)err->layer, tmp_layer_type_name(err->layer_type), msg);
    } else if (err->tensor >= 0) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("tinymp: tensor %d: %s"),
            (int)err->tensor, msg);
    } else {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("tinymp: %s"), msg);
    }
}

static MP_NORETURN void raise_status(const char *what, tmp_status st) {
    if (st == TMP_ERR_FORMAT || st == TMP_ERR_SIZE) {
        // the model's bytes were edited after loading and no longer match its validation/plan
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("tinymp: the model data changed after loading (%s: %s)"), what, tmp_status_name(st));
    }
    mp_raise_msg_varg(&mp_type_RuntimeError, MP_ERROR_TEXT("tinymp: %s failed (status %d: %s)"),
        what, (int)st, tmp_status_name(st));
}

// The format character CPython's memoryview would report (bytearray's internal code is 1).
static char format_char(const mp_buffer_info_t *bi) {
    return bi->typecode == BYTEARRAY_TYPECODE ? 'B' : (char)bi->typecode;
}

static size_t item_size(const mp_buffer_info_t *bi) {
    return mp_binary_get_size('@', bi->typecode, NULL);
}

static void fill_guard(tinymp_model_obj_t *self) {
    memset(self->arena + self->plan.arena_bytes, GUARD_FILL, GUARD_BYTES);
}

static bool guard_intact(const tinymp_model_obj_t *self) {
    const uint8_t *g = self->arena + self->plan.arena_bytes;
    for (int i = 0; i < GUARD_BYTES; i++) {
        if (g[i] != GUARD_FILL) {
            return false;
        }
    }
    return true;
}

// A bytearray (or array) that owns the model may have been resized since Model() (MicroPython,
// unlike CPython, does not lock an exported buffer): follow a move, refuse a shrink. Allocates
// nothing.
static void check_model_buffer(tinymp_model_obj_t *self) {
    if (self->owner_is_copy) {
        return;
    }
    mp_buffer_info_t bi;
    if (!mp_get_buffer(self->owner, &bi, MP_BUFFER_READ) || bi.len < self->model.size ||
        ((uintptr_t)bi.buf & 3u) != 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("tinymp: the model buffer was resized after loading"));
    }
    if ((const uint8_t *)bi.buf != self->data) {
        // The core re-validates every record it decodes against model.size, so pointing it at
        // the moved bytes is safe whatever they hold.
        self->data = (const uint8_t *)bi.buf;
        self->model.data = self->data;
    }
}

// Get the input buffer `x` (exactly H*W*C bytes of itemsize 1). Allocates nothing.
static void get_input(tinymp_model_obj_t *self, mp_obj_t x, mp_buffer_info_t *bi) {
    const tmp_dims *d = &self->input.dims;
    // str exports its UTF-8 bytes in MicroPython, but is not a bytes-like object in CPython.
    if (mp_obj_is_str(x) || !mp_get_buffer(x, bi, MP_BUFFER_READ)) {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("tinymp: input must be a bytes-like object of %d int8 values, not '%s'"),
            (int)(d->h * d->w * d->c), mp_obj_get_type_str(x));
    }
    size_t isz = item_size(bi);
    if (isz != 1) {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("tinymp: input must hold int8 bytes (itemsize 1), got items of %d bytes (format '%c')"),
            (int)isz, format_char(bi));
    }
    if (bi->len != self->input_bytes) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("tinymp: input has %u bytes, model expects H*W*C = %u (%dx%dx%d int8)"),
            (unsigned)bi->len, (unsigned)self->input_bytes, (int)d->h, (int)d->w, (int)d->c);
    }
}

// Run the whole model on `x`; returns the int8 output inside the arena. Allocates nothing.
static const int8_t *run(tinymp_model_obj_t *self, mp_obj_t x) {
    mp_buffer_info_t bi;
    get_input(self, x, &bi);
    check_model_buffer(self);
    const int8_t *out = NULL;
    tmp_status st = tmp_infer(&self->model, &self->plan, (const int8_t *)bi.buf, self->arena,
        self->plan.arena_bytes, -1, &out);
    if (!guard_intact(self)) {
        fill_guard(self);
        mp_raise_msg(&mp_type_RuntimeError, MP_ERROR_TEXT("tinymp: arena overrun (engine bug)"));
    }
    if (st != TMP_OK) {
        raise_status("inference", st);
    }
    return out;
}

// A NUL-terminated class name as str; invalid UTF-8 is decoded as CPython's
// bytes.decode('utf-8', 'replace') does (one U+FFFD per maximal invalid subpart).
static mp_obj_t decode_name(const char *s) {
    const uint8_t *p = (const uint8_t *)s;
    size_t n = strlen(s);
    size_t ascii = 0;
    while (ascii < n && p[ascii] < 0x80) {
        ascii++;
    }
    if (ascii == n) {
        return mp_obj_new_str(s, n);
    }
    vstr_t v;
    vstr_init(&v, n + 8);
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        size_t need = 0;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            vstr_add_byte(&v, c);
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        }
        size_t k = 1;
        while (k <= need && i + k < n && p[i + k] >= lo && p[i + k] <= hi) {
            k++;
            lo = 0x80;
            hi = 0xBF;
        }
        if (need > 0 && k == need + 1) {
            vstr_add_strn(&v, s + i, k);
        } else {
            vstr_add_strn(&v, "\xEF\xBF\xBD", 3);
        }
        i += k;
    }
    return mp_obj_new_str_from_utf8_vstr(&v); // valid UTF-8 by construction
}

static mp_obj_t make_class_names(const tmp_model *m) {
    if (m->num_classes == 0 || tmp_model_class_name(m, 0) == NULL) {
        return mp_const_none;
    }
    mp_obj_tuple_t *t = MP_OBJ_TO_PTR(mp_obj_new_tuple(m->num_classes, NULL));
    for (int32_t k = 0; k < (int32_t)m->num_classes; k++) {
        const char *s = tmp_model_class_name(m, k);
        t->items[k] = decode_name(s != NULL ? s : "");
    }
    return MP_OBJ_FROM_PTR(t);
}

// Point self->data at the model bytes of `obj` (a buffer exporter), copying if misaligned.
static void attach_buffer(tinymp_model_obj_t *self, mp_obj_t obj, const mp_buffer_info_t *bi) {
    self->size = bi->len;
    if (((uintptr_t)bi->buf & 3u) == 0) {
        self->owner = obj;
        self->owner_is_copy = false;
        self->data = (const uint8_t *)bi->buf;
        return;
    }
    // Misaligned (e.g. a memoryview slice): one private copy; GC blocks are >= 8-byte aligned.
    uint8_t *copy = m_new(uint8_t, bi->len > 0 ? bi->len : 1);
    memcpy(copy, bi->buf, bi->len);
    self->owner = mp_obj_new_bytearray_by_ref(bi->len, copy);
    self->owner_is_copy = true;
    self->data = copy;
}

// Open the file at `path` and attach its bytes. The file is opened with the builtin open() (the
// VFS), so the path is whatever open() accepts on this port.
static void open_model_file(tinymp_model_obj_t *self, mp_obj_t path) {
    #if MICROPY_PY_IO
    // The builtin open(): with MICROPY_PY_IO the builtins table holds it, so every port defines it.
    mp_obj_t f = mp_call_function_2(MP_OBJ_FROM_PTR(&mp_builtin_open_obj), path,
        MP_OBJ_NEW_QSTR(MP_QSTR_rb));
    mp_buffer_info_t bi;
    // A file in ROMFS (/rom, MicroPython >= 1.25) exports its bytes in place, memory-mapped
    // from flash (the same buffer `memoryview(f)` gives): use them without copying to RAM and
    // keep the file object as the owner. ROMFS files are read-only and hold no OS resource, so
    // leaving it open for the model's lifetime costs nothing. (If the file data is not 4-byte
    // aligned in the image, attach_buffer() falls back to one aligned copy.) A ROMFS file object
    // points into its image without referencing the image object: that is no concern for the
    // ROMFS partition in flash, but an image in RAM (vfs.VfsRom(bytearray), as in the tests)
    // must be kept alive by the caller while the model is used. Other files (FAT, littlefs,
    // the unix port's POSIX files) have no buffer protocol: read them whole.
    if (mp_get_buffer(f, &bi, MP_BUFFER_READ)) {
        attach_buffer(self, f, &bi);
        return;
    }
    mp_obj_t content = MP_OBJ_NULL;
    nlr_buf_t nlr;
    if (nlr_push(&nlr) == 0) {
        mp_obj_t dest[2];
        mp_load_method(f, MP_QSTR_read, dest);
        content = mp_call_method_n_kw(0, 0, dest);
        nlr_pop();
    }
    mp_stream_close(f);
    if (content == MP_OBJ_NULL) {
        nlr_jump(nlr.ret_val); // re-raise the error of read(), the file now closed
    }
    if (!mp_obj_is_type(content, &mp_type_bytes)) {
        mp_raise_TypeError(MP_ERROR_TEXT("tinymp: file read did not return bytes"));
    }
    mp_get_buffer_raise(content, &bi, MP_BUFFER_READ);
    attach_buffer(self, content, &bi);
    #else
    (void)self;
    (void)path;
    mp_raise_OSError(MP_ENOENT); // no filesystem on this port
    #endif
}

/* ---------------------------------------------------------------- construction */

static mp_obj_t tinymp_model_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *all_args) {
    enum { ARG_data };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_data, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed_args), allowed_args,
        args);
    mp_obj_t data = args[ARG_data].u_obj;

    // Not yet reachable from Python: if anything below raises, the GC reclaims it all.
    tinymp_model_obj_t *self = mp_obj_malloc(tinymp_model_obj_t, type);
    self->owner = mp_const_none;
    self->class_names = mp_const_none;

    mp_buffer_info_t bi;
    if (mp_obj_is_str(data)) {
        open_model_file(self, data);
    } else if (mp_get_buffer(data, &bi, MP_BUFFER_READ)) {
        attach_buffer(self, data, &bi);
    } else {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("tinymp: Model() expects a bytes-like object or a file path, not '%s'"),
            mp_obj_get_type_str(data));
    }

    tmp_error err;
    memset(&err, 0, sizeof err);
    err.layer = -1;
    err.layer_type = -1;
    err.tensor = -1;
    if (tmp_model_init(&self->model, self->data, self->size, &err) != TMP_OK) {
        raise_model_error(&err);
    }
    if (tmp_model_input(&self->model, &self->input) != TMP_OK) {
        mp_raise_ValueError(MP_ERROR_TEXT("tinymp: cannot decode the input tensor"));
    }
    self->input_bytes =
        (size_t)self->input.dims.h * (size_t)self->input.dims.w * (size_t)self->input.dims.c;

    // The plan's arrays point into the workspace, so it lives as long as the model.
    size_t ws_size = tmp_plan_workspace_size(&self->model);
    self->workspace = m_new(uint8_t, ws_size > 0 ? ws_size : 4);
    tmp_status st = tmp_plan_inference(&self->model, self->workspace, ws_size, &self->plan);
    if (st != TMP_OK) {
        raise_status("planner", st);
    }
    // One allocation: the arena, then the guard.
    self->arena = m_new(uint8_t, (size_t)self->plan.arena_bytes + GUARD_BYTES);
    fill_guard(self);
    self->logits_buf = m_new(float, self->model.num_classes + 1u);
    self->class_names = make_class_names(&self->model);
    return MP_OBJ_FROM_PTR(self);
}

static void tinymp_model_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    tinymp_model_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_printf(print, "<tinymp.Model input=%dx%dx%d classes=%d layers=%d arena=%u bytes>",
        (int)self->input.dims.h, (int)self->input.dims.w, (int)self->input.dims.c,
        (int)self->model.num_classes, (int)self->model.num_layers,
        (unsigned)self->plan.arena_bytes);
}

/* ---------------------------------------------------------------- methods */

// predict(x) -> int: index of the largest output (the first on ties). Allocates nothing.
static mp_obj_t tinymp_model_predict(mp_obj_t self_in, mp_obj_t x) {
    tinymp_model_obj_t *self = MP_OBJ_TO_PTR(self_in);
    const int8_t *q = run(self, x);
    return MP_OBJ_NEW_SMALL_INT(tmp_argmax_s8(q, (int32_t)self->model.num_classes));
}
static MP_DEFINE_CONST_FUN_OBJ_2(tinymp_model_predict_obj, tinymp_model_predict);

// Check `out`: a writable buffer of exactly num_classes float32 (format 'f', or raw bytes).
static void get_out(tinymp_model_obj_t *self, mp_obj_t out, mp_buffer_info_t *bi) {
    const int n = (int)self->model.num_classes;
    if (!mp_get_buffer(out, bi, MP_BUFFER_WRITE)) {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("tinymp: out must be a writable C-contiguous buffer of %d float32, not '%s'"),
            n, mp_obj_get_type_str(out));
    }
    size_t isz = item_size(bi);
    if (!((isz == 4 && bi->typecode == 'f') || isz == 1)) {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("tinymp: out must hold float32 (format 'f'), got format '%c'"),
            format_char(bi));
    }
    if (bi->len != sizeof(float) * (size_t)n) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("tinymp: out has %u bytes, expected num_classes*4 = %u (%d float32)"),
            (unsigned)bi->len, (unsigned)(sizeof(float) * (size_t)n), n);
    }
}

// logits(x, out=None) -> array('f'). With `out` it allocates nothing.
static mp_obj_t tinymp_model_logits(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_x, ARG_out };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_x, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_out, MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    tinymp_model_obj_t *self = MP_OBJ_TO_PTR(pos_args[0]);
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args - 1, pos_args + 1, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args,
        args);
    mp_obj_t out = args[ARG_out].u_obj;
    const size_t n = self->model.num_classes;

    mp_buffer_info_t ob;
    if (out != mp_const_none) {
        get_out(self, out, &ob);
        const int8_t *q = run(self, args[ARG_x].u_obj);
        tmp_dequantize_output(&self->model, q, self->logits_buf);
        memcpy(ob.buf, self->logits_buf, sizeof(float) * n); // `out` may be misaligned
        return out;
    }
    const int8_t *q = run(self, args[ARG_x].u_obj);
    // array('f') of n items, filled in place (float32 whatever the build's mp_float_t).
    mp_obj_array_t *arr = mp_obj_malloc(mp_obj_array_t, &mp_type_array);
    arr->typecode = 'f';
    arr->free = 0;
    arr->len = n;
    arr->items = m_new(float, n > 0 ? n : 1);
    tmp_dequantize_output(&self->model, q, (float *)arr->items);
    return MP_OBJ_FROM_PTR(arr);
}
static MP_DEFINE_CONST_FUN_OBJ_KW(tinymp_model_logits_obj, 1, tinymp_model_logits);

static mp_obj_t u32_list(const uint32_t *a, size_t n) {
    mp_obj_t l = mp_obj_new_list(n, NULL);
    mp_obj_list_t *lo = MP_OBJ_TO_PTR(l);
    for (size_t i = 0; i < n; i++) {
        lo->items[i] = mp_obj_new_int_from_uint(a != NULL ? a[i] : 0u);
    }
    return l;
}

// _plan() -> dict: the planner's result (test hook, same keys as on the PC).
static mp_obj_t tinymp_model_plan(mp_obj_t self_in) {
    tinymp_model_obj_t *self = MP_OBJ_TO_PTR(self_in);
    const tmp_plan *p = &self->plan;
    const size_t nl = self->model.num_layers, nt = self->model.num_tensors;
    mp_obj_t in_place = mp_obj_new_list(nl, NULL);
    mp_obj_list_t *ip = MP_OBJ_TO_PTR(in_place);
    for (size_t i = 0; i < nl; i++) {
        ip->items[i] = MP_OBJ_NEW_SMALL_INT(p->in_place != NULL ? p->in_place[i] : 0);
    }
    mp_obj_t d = mp_obj_new_dict(7);
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_arena_bytes), mp_obj_new_int_from_uint(p->arena_bytes));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_peak_live_bytes),
        mp_obj_new_int_from_uint(p->peak_live_bytes));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_activation_bytes),
        mp_obj_new_int_from_uint(p->activation_bytes));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_tensor_offset), u32_list(p->tensor_offset, nt));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_scratch_offset), u32_list(p->scratch_offset, nl));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_scratch_bytes), u32_list(p->scratch_bytes, nl));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_in_place), in_place);
    return d;
}
static MP_DEFINE_CONST_FUN_OBJ_1(tinymp_model_plan_obj, tinymp_model_plan);

/* ================================================================ training: Plan and Trainer */

/*
 * Memory and lifetimes. A Plan holds its model object and the block its arrays point into (GC
 * heap): Model.plan() plans in a workspace, then moves the tables it keeps into a small block of
 * their own (tmp_train_plan_compact) and frees the workspace. A Trainer holds its model, its plan and its arena:
 * the caller's buffer object, or one GC block taken in Trainer(). The core structs sit inside
 * these objects and point at each other and into those blocks; MicroPython's GC only follows
 * pointers to the start of a block, so each object also stores the objects / block heads
 * themselves, and nothing a Trainer uses can be freed while it is reachable. No global state:
 * any number of models, plans and trainers coexist.
 *
 * A step allocates nothing on the heap: step(x, y, out) writes the loss into `out` (one float32)
 * instead of returning a new float object (boxed on most ports), so training runs under
 * micropython.heap_lock(); predict(x) and logits(x, out=...) likewise.
 */

// An exception of `type` whose message mp_printf formats (error paths only: it allocates).
static MP_NORETURN void raise_fmt(const mp_obj_type_t *type, const char *fmt, ...) {
    vstr_t v;
    mp_print_t pr;
    vstr_init_print(&v, 64, &pr);
    va_list ap;
    va_start(ap, fmt);
    mp_vprintf(&pr, fmt, ap);
    va_end(ap);
    nlr_raise(mp_obj_new_exception_arg1(type, mp_obj_new_str_from_vstr(&v)));
}

// str(o) or repr(o) as a C string (error paths only: it allocates).
static const char *obj_text(mp_obj_t o, mp_print_kind_t kind) {
    vstr_t v;
    mp_print_t pr;
    vstr_init_print(&v, 16, &pr);
    mp_obj_print_helper(&pr, o, kind);
    return vstr_null_terminated_str(&v);
}

// Decimal text of a 64-bit value (mp_printf has no %lld on 32-bit ports).
static const char *ll_text(char buf[24], long long v) {
    char tmp[24];
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    int n = 0;
    do {
        tmp[n++] = (char)('0' + (int)(u % 10u));
        u /= 10u;
    } while (u != 0);
    int k = 0;
    if (v < 0) {
        buf[k++] = '-';
    }
    while (n > 0) {
        buf[k++] = tmp[--n];
    }
    buf[k] = '\0';
    return buf;
}

static mp_obj_t new_u64(uint64_t v) {
    return v <= (uint64_t)MP_SMALL_INT_MAX ? MP_OBJ_NEW_SMALL_INT((mp_int_t)v)
                                           : mp_obj_new_int_from_ull((unsigned long long)v);
}

// A dict that keeps insertion order (as CPython's dicts do) so printed dicts read the same on
// both bindings; its type is still dict.
static mp_obj_t new_ordered_dict(size_t n) {
    mp_obj_t d = mp_obj_new_dict(n);
    ((mp_obj_dict_t *)MP_OBJ_TO_PTR(d))->map.is_ordered = 1;
    return d;
}

static void dict_store_str(mp_obj_t d, const char *key, mp_obj_t value) {
    mp_obj_dict_store(d, mp_obj_new_str(key, strlen(key)), value);
}

// An optional integer option (None or absent -> dflt), as the PC binding's opt_long().
static long long opt_long(mp_obj_t v, const char *name, long long lo, long long hi, long long dflt) {
    if (v == MP_OBJ_NULL || v == mp_const_none) {
        return dflt;
    }
    if (!mp_obj_is_int(v) || mp_obj_is_bool(v)) {
        raise_fmt(&mp_type_TypeError, "tinymp: %s must be an int, not '%s'", name, mp_obj_get_type_str(v));
    }
    long long x = 0;
    bool ok = false;
    if (mp_obj_is_small_int(v)) {
        x = MP_OBJ_SMALL_INT_VALUE(v);
        ok = x >= lo && x <= hi;
    }
    #if MICROPY_LONGINT_IMPL != MICROPY_LONGINT_IMPL_NONE
    else if (mp_obj_int_sign(v) > 0 &&
             !mp_obj_is_true(mp_binary_op(MP_BINARY_OP_MORE, v, mp_obj_new_int_from_ll(hi)))) {
        x = mp_obj_get_ll(v);
        ok = x >= lo;
    }
    #endif
    if (!ok) {
        char a[24], b[24];
        raise_fmt(&mp_type_ValueError, "tinymp: %s must be between %s and %s, got %s", name, ll_text(a, lo),
            ll_text(b, hi), obj_text(v, PRINT_STR));
    }
    return x;
}

// An optional number option (None or absent -> dflt), as the PC binding's opt_float(); `range`
// is the interval as the PC binding prints it ("%s%g, %g]").
static mp_float_t opt_float(mp_obj_t v, const char *name, mp_float_t lo, mp_float_t hi, bool lo_open,
    mp_float_t dflt, const char *range) {
    if (v == MP_OBJ_NULL || v == mp_const_none) {
        return dflt;
    }
    if (!mp_obj_is_float(v) && !(mp_obj_is_int(v) && !mp_obj_is_bool(v))) {
        raise_fmt(&mp_type_TypeError, "tinymp: %s must be a number, not '%s'", name, mp_obj_get_type_str(v));
    }
    // the range holds for the float32 the engine gets (TMP_OPT_F32), also in a double build
    mp_float_t x = mp_obj_get_float(v);
    mp_float_t x32 = (mp_float_t)TMP_OPT_F32(x), lo32 = (mp_float_t)TMP_OPT_F32(lo), hi32 = (mp_float_t)TMP_OPT_F32(hi);
    if (!(x32 <= hi32) || !(lo_open ? x32 > lo32 : x32 >= lo32)) {
        if (x <= hi && (lo_open ? x > lo : x >= lo)) { // in range as a double: say what the engine gets
            raise_fmt(&mp_type_ValueError, "tinymp: %s must be in %s, got %s (%s as a 32-bit float)", name, range,
                obj_text(v, PRINT_REPR), obj_text(mp_obj_new_float(x32), PRINT_REPR));
        }
        raise_fmt(&mp_type_ValueError, "tinymp: %s must be in %s, got %s", name, range, obj_text(v, PRINT_REPR));
    }
    return x32;
}

// The options of plan(), Trainer() and fit(): ranges, defaults and message texts from the core's
// tables (core/tmp_options.h), which the PC binding expands too.
typedef struct {
    const char *name;
    long long lo, hi, dflt;
} int_option_t;

typedef struct {
    const char *name;
    mp_float_t lo, hi, dflt;
    bool lo_open;
    const char *text;
} float_option_t;

#define INT_ROW(name, lo, hi, dflt) {#name, (lo), (hi), (dflt)},
#define FLOAT_ROW(name, lo, hi, lo_open, dflt, text) {#name, (mp_float_t)(lo), (mp_float_t)(hi), (mp_float_t)(dflt), (lo_open), text},
static const int_option_t int_options[TMP_N_INT_OPTIONS] = {TMP_INT_OPTIONS(INT_ROW)};
static const float_option_t float_options[TMP_N_FLOAT_OPTIONS] = {TMP_FLOAT_OPTIONS(FLOAT_ROW)};
#undef INT_ROW
#undef FLOAT_ROW

static long long opt_ranged_long(mp_obj_t v, int i) {
    const int_option_t *o = &int_options[i];
    return opt_long(v, o->name, o->lo, o->hi, o->dflt);
}

static mp_float_t opt_ranged_float(mp_obj_t v, int i) {
    const float_option_t *o = &float_options[i];
    return opt_float(v, o->name, o->lo, o->hi, o->lo_open, o->dflt, o->text);
}

// Items of a sequence argument: a tuple or list in place, any other iterable as a new list;
// not iterable -> TypeError(msg) (CPython's PySequence_Fast()).
static void get_sequence(mp_obj_t o, const char *msg, size_t *n, mp_obj_t **items) {
    if (!mp_obj_is_type(o, &mp_type_tuple) && !mp_obj_is_type(o, &mp_type_list)) {
        nlr_buf_t nlr;
        if (nlr_push(&nlr) == 0) {
            o = mp_call_function_1(MP_OBJ_FROM_PTR(&mp_type_list), o);
            nlr_pop();
        } else {
            if (mp_obj_is_subclass_fast(MP_OBJ_FROM_PTR(((mp_obj_base_t *)nlr.ret_val)->type),
                    MP_OBJ_FROM_PTR(&mp_type_TypeError))) {
                raise_fmt(&mp_type_TypeError, "%s", msg);
            }
            nlr_jump(nlr.ret_val);
        }
    }
    mp_obj_get_array(o, n, items);
}

static const char *storage_name(int32_t s) {
    return s == TMP_STORAGE_FP32 ? "fp32" : "int8";
}

/* ---------------------------------------------------------------- Plan */

typedef struct _tinymp_plan_obj_t {
    mp_obj_base_t base;
    mp_obj_t model;          // the tinymp_model_obj_t it was made for
    uint8_t *workspace;      // head of the GC block the plan's arrays point into (the planning
    size_t workspace_size;   // workspace while planning, then the compact tables)
    uint8_t *sel_ws;         // during Model.plan(support=...): the selection pass's workspace
    size_t sel_ws_size;
    uint8_t *sel_arena;      // and arena (released before plan() returns)
    size_t sel_arena_size;
    tmp_train_plan plan;
} tinymp_plan_obj_t;

extern const mp_obj_type_t tinymp_type_model;
extern const mp_obj_type_t tinymp_type_plan;

// A class label: an int (not a bool) in [0, num_classes); `what` names it in messages ("label",
// "support label"). Allocates nothing: its errors are raised with mp_raise_msg_varg(), which
// works under heap_lock() too (from the emergency exception buffer), so a bad label is a
// ValueError there as well.
static int32_t parse_label(tinymp_model_obj_t *model, mp_obj_t y, const char *what) {
    if (!mp_obj_is_int(y) || mp_obj_is_bool(y)) {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("tinymp: %s must be an int, not '%s'"), what,
            mp_obj_get_type_str(y));
    }
    const mp_int_t nc = (mp_int_t)model->model.num_classes;
    mp_int_t v = mp_obj_is_small_int(y) ? MP_OBJ_SMALL_INT_VALUE(y) : -1;
    if (v >= 0 && v < nc) {
        return (int32_t)v;
    }
    if (mp_obj_is_small_int(y) && v >= INT32_MIN && v <= INT32_MAX) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("tinymp: %s %d is outside [0, %d)"), what, (int)v,
            (int)nc);
    }
    // a label that %d cannot print: format it as str() does (this allocates)
    raise_fmt(&mp_type_ValueError, "tinymp: %s %s is outside [0, %d)", what, obj_text(y, PRINT_STR), (int)nc);
}

// A scratch planner workspace for the budget messages below (freed by the caller).
static uint8_t *scratch_workspace(tinymp_model_obj_t *model, size_t *size) {
    *size = tmp_train_workspace_size(&model->model);
    if (*size == 0) {
        *size = 4;
    }
    return m_new_maybe(uint8_t, *size);
}

// The smallest budget of these options, the selection pass included (tmp_train_min_budget);
// 0 when it cannot tell.
static uint32_t min_budget_with_selection(tinymp_model_obj_t *model, const tmp_train_options *o,
    tmp_train_error *err) {
    size_t wsz;
    uint8_t *ws = scratch_workspace(model, &wsz);
    if (ws == NULL) {
        return 0;
    }
    memset(err, 0, sizeof *err);
    tmp_status st = tmp_train_min_budget(&model->model, o, 1, ws, wsz, err);
    m_del(uint8_t, ws, wsz);
    return st == TMP_OK ? err->min_budget : 0;
}

// The TinyTrain selection pass over support = (samples, labels), in a temporary workspace and
// arena (held by `po` meanwhile). On return `t` holds the Fisher sums the planner reads.
static void run_selection(tinymp_model_obj_t *model, tinymp_plan_obj_t *po, const tmp_train_options *o,
    mp_obj_t support, tmp_trainer *t, tmp_train_plan *fp) {
    if (!mp_obj_is_type(support, &mp_type_tuple) || MP_OBJ_SMALL_INT_VALUE(mp_obj_len(support)) != 2) {
        mp_raise_TypeError(MP_ERROR_TEXT("tinymp: support must be a tuple (samples, labels)"));
    }
    size_t n, nl;
    mp_obj_t *sup, *samples, *labels;
    mp_obj_tuple_get(support, &n, &sup);
    get_sequence(sup[0], "tinymp: support samples must be a sequence", &n, &samples);
    get_sequence(sup[1], "tinymp: support labels must be a sequence", &nl, &labels);
    if (n == 0 || n != nl) {
        raise_fmt(&mp_type_ValueError, "tinymp: support needs as many labels as samples and at least one "
            "(got %u samples, %u labels)", (unsigned)n, (unsigned)nl);
    }
    tmp_train_options fo = tmp_train_selection_options(o);
    po->sel_ws_size = tmp_train_workspace_size(&model->model);
    po->sel_ws = m_new(uint8_t, po->sel_ws_size > 0 ? po->sel_ws_size : 4);
    tmp_train_error err;
    memset(&err, 0, sizeof err);
    tmp_status st = tmp_train_plan_make(&model->model, &fo, po->sel_ws, po->sel_ws_size, fp, &err);
    if (st == TMP_ERR_SIZE && err.min_budget != 0) {
        // the smallest budget that holds both the selection pass and the smallest training table
        tmp_train_error all;
        uint32_t need = min_budget_with_selection(model, o, &all);
        if (need == 0) {
            all = err;
            need = err.min_budget;
        }
        raise_fmt(&mp_type_ValueError, "tinymp: method '%s' does not fit a budget of %u bytes: its smallest setting "
            "needs %u bytes (largest part: %s, %u bytes), its selection pass included", tmp_method_name(o->method),
            (unsigned)o->budget, (unsigned)need, tmp_category_name(all.largest_cat), (unsigned)all.largest_bytes);
    }
    if (st != TMP_OK) {
        raise_fmt(&mp_type_ValueError, "tinymp: selection pass: %s", err.msg != NULL ? err.msg : tmp_status_name(st));
    }
    po->sel_arena_size = fp->arena_bytes > 0 ? fp->arena_bytes : 4u;
    po->sel_arena = m_new(uint8_t, po->sel_arena_size);
    if (tmp_trainer_init(t, &model->model, fp, po->sel_arena, fp->arena_bytes, 0.0f, 1u) != TMP_OK) {
        mp_raise_msg(&mp_type_RuntimeError, MP_ERROR_TEXT("tinymp: cannot start the selection pass"));
    }
    for (size_t i = 0; i < n; i++) {
        int32_t y = parse_label(model, labels[i], "support label");
        mp_buffer_info_t bi;
        get_input(model, samples[i], &bi);
        st = tmp_trainer_step(t, (const int8_t *)bi.buf, (int32_t)y, NULL);
        if (st != TMP_OK) {
            raise_fmt(&mp_type_ValueError, "tinymp: the model data changed after loading (selection: %s)",
                tmp_status_name(st));
        }
    }
}

// Model.plan(method='tinymp', budget=None, *, r=None, ratio=None, storage='int8', momentum=0.0,
//            n_bias=None, layers=None, ratios=None, macs=None, support=None, cache=None,
//            step_share=None) -> Plan
static mp_obj_t tinymp_model_train_plan(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_method, ARG_budget, ARG_r, ARG_ratio, ARG_storage, ARG_momentum, ARG_n_bias, ARG_layers,
           ARG_ratios, ARG_macs, ARG_support, ARG_cache, ARG_step_share };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_method, MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_budget, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_r, MP_ARG_OBJ | MP_ARG_KW_ONLY, {.u_obj = mp_const_none} },
        { MP_QSTR_ratio, MP_ARG_OBJ | MP_ARG_KW_ONLY, {.u_obj = mp_const_none} },
        { MP_QSTR_storage, MP_ARG_OBJ | MP_ARG_KW_ONLY, {.u_obj = mp_const_none} },
        { MP_QSTR_momentum, MP_ARG_OBJ | MP_ARG_KW_ONLY, {.u_obj = mp_const_none} },
        { MP_QSTR_n_bias, MP_ARG_OBJ | MP_ARG_KW_ONLY, {.u_obj = mp_const_none} },
        { MP_QSTR_layers, MP_ARG_OBJ | MP_ARG_KW_ONLY, {.u_obj = mp_const_none} },
        { MP_QSTR_ratios, MP_ARG_OBJ | MP_ARG_KW_ONLY, {.u_obj = mp_const_none} },
        { MP_QSTR_macs, MP_ARG_OBJ | MP_ARG_KW_ONLY, {.u_obj = mp_const_none} },
        { MP_QSTR_support, MP_ARG_OBJ | MP_ARG_KW_ONLY, {.u_obj = mp_const_none} },
        { MP_QSTR_cache, MP_ARG_OBJ | MP_ARG_KW_ONLY, {.u_obj = mp_const_none} },
        { MP_QSTR_step_share, MP_ARG_OBJ | MP_ARG_KW_ONLY, {.u_obj = mp_const_none} },
    };
    tinymp_model_obj_t *self = MP_OBJ_TO_PTR(pos_args[0]);
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args - 1, pos_args + 1, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);

    const char *method = "tinymp";
    if (args[ARG_method].u_obj != MP_OBJ_NULL) {
        if (!mp_obj_is_str(args[ARG_method].u_obj)) {
            raise_fmt(&mp_type_TypeError, "tinymp: method must be a str, not '%s'",
                mp_obj_get_type_str(args[ARG_method].u_obj));
        }
        method = mp_obj_str_get_str(args[ARG_method].u_obj);
    }
    int32_t mi = tmp_method_from_name(method);
    if (mi < 0) {
        raise_fmt(&mp_type_ValueError,
            "tinymp: unknown method '%s' (none, last, bias, sparse, tinytrain, full, tinymp)", method);
    }
    tmp_train_options o = tmp_train_options_default(mi);
    o.budget = (uint32_t)opt_ranged_long(args[ARG_budget].u_obj, TMP_IOPT_budget);
    o.r = (int32_t)opt_ranged_long(args[ARG_r].u_obj, TMP_IOPT_r);
    o.ratio = (float)opt_ranged_float(args[ARG_ratio].u_obj, TMP_FOPT_ratio);
    o.momentum = (float)opt_ranged_float(args[ARG_momentum].u_obj, TMP_FOPT_momentum);
    o.n_bias = (int32_t)opt_ranged_long(args[ARG_n_bias].u_obj, TMP_IOPT_n_bias);
    o.mac_budget = (uint64_t)opt_ranged_long(args[ARG_macs].u_obj, TMP_IOPT_macs);
    o.cache_samples = (uint32_t)opt_ranged_long(args[ARG_cache].u_obj, TMP_IOPT_cache);
    mp_float_t share = opt_ranged_float(args[ARG_step_share].u_obj, TMP_FOPT_step_share);
    o.step_share = share >= 8 ? 8.0f : (float)share;
    mp_obj_t storage = args[ARG_storage].u_obj;
    if (storage != mp_const_none) {
        const char *sname = mp_obj_is_str(storage) ? mp_obj_str_get_str(storage) : NULL;
        if (sname == NULL || (strcmp(sname, "int8") != 0 && strcmp(sname, "fp32") != 0)) {
            mp_raise_ValueError(MP_ERROR_TEXT("tinymp: storage must be 'int8' or 'fp32'"));
        }
        o.storage = strcmp(sname, "fp32") == 0 ? TMP_STORAGE_FP32 : TMP_STORAGE_INT8;
    }
    mp_obj_t layers = args[ARG_layers].u_obj, ratios = args[ARG_ratios].u_obj;
    uint16_t *lay = NULL;
    float *rat = NULL;
    size_t n_lay = 0;
    if (layers != mp_const_none) {
        if (mi != TMP_METHOD_SPARSE) {
            mp_raise_ValueError(MP_ERROR_TEXT("tinymp: layers= is for method 'sparse'"));
        }
        mp_obj_t *items;
        get_sequence(layers, "tinymp: layers must be a sequence of layer indices", &n_lay, &items);
        lay = m_new(uint16_t, n_lay + 1);
        rat = m_new(float, n_lay + 1);
        for (size_t j = 0; j < n_lay; j++) {
            lay[j] = (uint16_t)opt_long(items[j], "a sparse layer index", 0, (long long)self->model.num_layers - 1, 0);
            rat[j] = 1.0f;
        }
        if (ratios != mp_const_none) {
            size_t nr;
            get_sequence(ratios, "tinymp: ratios must be a sequence of numbers", &nr, &items);
            if (nr != n_lay) {
                raise_fmt(&mp_type_ValueError, "tinymp: %u layers but %u ratios", (unsigned)n_lay, (unsigned)nr);
            }
            for (size_t j = 0; j < n_lay; j++) {
                rat[j] = (float)opt_float(items[j], "a sparse ratio", float_options[TMP_FOPT_ratio].lo,
                    float_options[TMP_FOPT_ratio].hi, float_options[TMP_FOPT_ratio].lo_open, 1,
                    float_options[TMP_FOPT_ratio].text);
            }
        }
        o.n_layers = (int32_t)n_lay;
        o.layers = lay;
        o.ratios = rat;
    } else if (mi == TMP_METHOD_SPARSE) {
        mp_raise_ValueError(MP_ERROR_TEXT("tinymp: method 'sparse' needs layers=[...] (and optionally ratios=[...])"));
    } else if (ratios != mp_const_none) {
        mp_raise_ValueError(MP_ERROR_TEXT("tinymp: ratios= is for method 'sparse' (use ratio=)"));
    }
    check_model_buffer(self);

    // The Plan object first: it holds every block allocated below, so the GC sees them.
    tinymp_plan_obj_t *po = mp_obj_malloc(tinymp_plan_obj_t, &tinymp_type_plan);
    po->model = MP_OBJ_FROM_PTR(self);
    po->workspace = NULL;
    po->sel_ws = NULL;
    po->sel_arena = NULL;
    tmp_trainer fisher;
    tmp_train_plan fplan;
    mp_obj_t support = args[ARG_support].u_obj;
    if (support != mp_const_none) {
        if (mi != TMP_METHOD_TINYTRAIN && mi != TMP_METHOD_TINYMP) {
            mp_raise_ValueError(MP_ERROR_TEXT("tinymp: support= is for methods 'tinytrain' and 'tinymp'"));
        }
        run_selection(self, po, &o, support, &fisher, &fplan);
        o.fisher = &fisher;
    } else if (mi == TMP_METHOD_TINYTRAIN) {
        mp_raise_ValueError(MP_ERROR_TEXT("tinymp: method 'tinytrain' needs support=(samples, labels) for its selection pass"));
    }
    po->workspace_size = tmp_train_workspace_size(&self->model);
    po->workspace = m_new(uint8_t, po->workspace_size > 0 ? po->workspace_size : 4);
    tmp_train_error err;
    memset(&err, 0, sizeof err);
    tmp_status st = tmp_train_plan_make(&self->model, &o, po->workspace, po->workspace_size, &po->plan, &err);
    // the selection pass and the option arrays are no longer needed
    if (po->sel_ws != NULL) {
        m_del(uint8_t, po->sel_ws, po->sel_ws_size > 0 ? po->sel_ws_size : 4);
        m_del(uint8_t, po->sel_arena, po->sel_arena_size);
        po->sel_ws = NULL;
        po->sel_arena = NULL;
    }
    if (lay != NULL) {
        m_del(uint16_t, lay, n_lay + 1);
        m_del(float, rat, n_lay + 1);
    }
    if (st == TMP_ERR_SIZE && err.min_budget != 0) {
        if (o.budget != 0 && err.min_budget > o.budget) {
            uint32_t need = err.min_budget;
            if (o.fisher != NULL) {
                // passing `need` back must fit the selection pass as well
                tmp_train_error all;
                uint32_t both = min_budget_with_selection(self, &o, &all);
                need = both > need ? both : need;
            }
            raise_fmt(&mp_type_ValueError,
                "tinymp: method '%s' does not fit a budget of %u bytes: its smallest setting needs %u bytes "
                "(largest part: %s, %u bytes)", method, (unsigned)o.budget, (unsigned)need,
                tmp_category_name(err.largest_cat), (unsigned)err.largest_bytes);
        }
        char a[24], b[24];
        raise_fmt(&mp_type_ValueError,
            "tinymp: method '%s' exceeds the backward MAC budget of %s even at its smallest setting (%s MACs)",
            method, ll_text(a, (long long)o.mac_budget), ll_text(b, (long long)po->plan.backward_macs));
    }
    if (st == TMP_ERR_FORMAT) {
        mp_raise_ValueError(MP_ERROR_TEXT("tinymp: the model data changed after loading (planning)"));
    }
    if (st != TMP_OK) {
        if (err.msg != NULL && err.layer >= 0) {
            raise_fmt(&mp_type_ValueError, "tinymp: layer %d: %s", (int)err.layer, err.msg);
        }
        raise_fmt(&mp_type_ValueError, "tinymp: %s", err.msg != NULL ? err.msg : tmp_status_name(st));
    }
    // Keep only the tables training and reporting read (a few KB) and free the planning
    // workspace (tens of KB), so the arena has that room.
    size_t csz = tmp_train_plan_compact_size(&po->plan);
    uint8_t *tables = m_new(uint8_t, csz > 0 ? csz : 4);
    if (tmp_train_plan_compact(&po->plan, tables, csz > 0 ? csz : 4) != TMP_OK) {
        mp_raise_msg(&mp_type_RuntimeError, MP_ERROR_TEXT("tinymp: could not compact the plan's tables"));
    }
    m_del(uint8_t, po->workspace, po->workspace_size > 0 ? po->workspace_size : 4);
    po->workspace = tables;
    po->workspace_size = csz;
    return MP_OBJ_FROM_PTR(po);
}
static MP_DEFINE_CONST_FUN_OBJ_KW(tinymp_model_train_plan_obj, 1, tinymp_model_train_plan);

static tinymp_model_obj_t *plan_model(const tinymp_plan_obj_t *self) {
    return MP_OBJ_TO_PTR(self->model);
}

static mp_obj_t channel_list(const uint16_t *ch, int32_t k) {
    mp_obj_t l = mp_obj_new_list((size_t)k, NULL);
    mp_obj_list_t *lo = MP_OBJ_TO_PTR(l);
    for (int32_t j = 0; j < k; j++) {
        lo->items[j] = MP_OBJ_NEW_SMALL_INT(ch != NULL ? ch[j] : j); // NULL: every channel
    }
    return l;
}

static mp_obj_t category_dict(const uint32_t *v) {
    mp_obj_t d = new_ordered_dict(TMP_CAT_COUNT);
    for (int32_t k = 0; k < TMP_CAT_COUNT; k++) {
        dict_store_str(d, tmp_category_name(k), mp_obj_new_int_from_uint(v[k]));
    }
    return d;
}

// describe() -> str: a per-layer table.
static mp_obj_t tinymp_plan_describe(mp_obj_t self_in) {
    tinymp_plan_obj_t *self = MP_OBJ_TO_PTR(self_in);
    const tmp_model *m = &plan_model(self)->model;
    size_t n = tmp_train_plan_describe(m, &self->plan, NULL, 0);
    vstr_t v;
    vstr_init_len(&v, n + 1);
    tmp_train_plan_describe(m, &self->plan, v.buf, n + 1);
    v.len = n;
    return mp_obj_new_str_from_vstr(&v);
}
static MP_DEFINE_CONST_FUN_OBJ_1(tinymp_plan_describe_obj, tinymp_plan_describe);

static void tinymp_plan_attr(mp_obj_t self_in, qstr attr, mp_obj_t *dest) {
    if (dest[0] != MP_OBJ_NULL) {
        return; // read-only: the runtime raises AttributeError
    }
    tinymp_plan_obj_t *self = MP_OBJ_TO_PTR(self_in);
    const tmp_train_plan *p = &self->plan;
    switch (attr) {
        case MP_QSTR_arena_bytes:
            dest[0] = mp_obj_new_int_from_uint(p->arena_bytes);
            break;
        case MP_QSTR_peak_live_bytes:
            dest[0] = mp_obj_new_int_from_uint(p->peak_live_bytes);
            break;
        case MP_QSTR_cache_bytes:
            dest[0] = mp_obj_new_int_from_uint(p->cache_bytes);
            break;
        case MP_QSTR_cache_samples:
            dest[0] = mp_obj_new_int_from_uint(p->cache_samples);
            break;
        case MP_QSTR_table_bytes:
            dest[0] = mp_obj_new_int_from_uint(p->table_bytes);
            break;
        case MP_QSTR_breakdown:
            dest[0] = category_dict(p->breakdown);
            break;
        case MP_QSTR_category_peaks:
            dest[0] = category_dict(p->category_peak);
            break;
        case MP_QSTR_method: {
            const char *s = tmp_method_name(p->method);
            dest[0] = mp_obj_new_str(s, strlen(s));
            break;
        }
        case MP_QSTR_storage: {
            const char *s = storage_name(p->storage);
            dest[0] = mp_obj_new_str(s, strlen(s));
            break;
        }
        case MP_QSTR_r:
            dest[0] = mp_obj_new_int(p->r);
            break;
        case MP_QSTR_ratio:
            dest[0] = mp_obj_new_float((mp_float_t)p->ratio);
            break;
        case MP_QSTR_momentum:
            dest[0] = mp_obj_new_float((mp_float_t)p->momentum);
            break;
        case MP_QSTR_first:
            dest[0] = mp_obj_new_int(p->first);
            break;
        case MP_QSTR_forward_macs:
            dest[0] = new_u64(p->forward_macs);
            break;
        case MP_QSTR_backward_macs:
            dest[0] = new_u64(p->backward_macs);
            break;
        case MP_QSTR_step_macs:
            dest[0] = new_u64(p->step_macs);
            break;
        case MP_QSTR_step_share:
            dest[0] = p->step_share == 0.0f ? mp_const_none : mp_obj_new_float((mp_float_t)p->step_share);
            break;
        case MP_QSTR_layers: {
            mp_obj_t l = mp_obj_new_list(0, NULL);
            for (int32_t i = 0; i < p->num_layers; i++) {
                if (p->flags[i] & (TMP_TL_W | TMP_TL_B)) {
                    mp_obj_list_append(l, MP_OBJ_NEW_SMALL_INT(i));
                }
            }
            dest[0] = l;
            break;
        }
        case MP_QSTR_channels: {
            mp_obj_t d = new_ordered_dict(4);
            for (int32_t i = 0; i < p->num_layers; i++) {
                if (p->flags[i] & TMP_TL_W) {
                    mp_obj_dict_store(d, MP_OBJ_NEW_SMALL_INT(i), channel_list(p->channels + p->chan_off[i], p->k[i]));
                }
            }
            dest[0] = d;
            break;
        }
        default:
            dest[1] = MP_OBJ_SENTINEL; // continue the lookup in locals_dict
            break;
    }
}

static void tinymp_plan_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    tinymp_plan_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_printf(print, "<tinymp.Plan method=%s r=%d arena=%u bytes>", tmp_method_name(self->plan.method),
        (int)self->plan.r, (unsigned)self->plan.arena_bytes);
}

static const mp_rom_map_elem_t tinymp_plan_locals_dict_table[] = {
    { MP_ROM_QSTR(MP_QSTR_describe), MP_ROM_PTR(&tinymp_plan_describe_obj) },
};
static MP_DEFINE_CONST_DICT(tinymp_plan_locals_dict, tinymp_plan_locals_dict_table);

MP_DEFINE_CONST_OBJ_TYPE(
    tinymp_type_plan,
    MP_QSTR_Plan,
    MP_TYPE_FLAG_NONE,
    print, tinymp_plan_print,
    attr, tinymp_plan_attr,
    locals_dict, &tinymp_plan_locals_dict
    );

/* ---------------------------------------------------------------- Trainer */

typedef struct _tinymp_trainer_obj_t {
    mp_obj_base_t base;
    mp_obj_t model;          // tinymp_model_obj_t
    mp_obj_t plan;           // tinymp_plan_obj_t
    mp_obj_t arena_owner;    // the caller's buffer object, or None
    uint8_t *own_arena;      // head of our GC block (arena + guard), or NULL
    size_t arena_skip;       // bytes skipped at the start of the caller's buffer (4-byte alignment)
    uint8_t *arena;
    size_t arena_size;
    float *logits_buf;       // num_classes float32 (dequantisation scratch)
    tmp_trainer t;
} tinymp_trainer_obj_t;

static uint32_t clock_us(void *ctx) {
    (void)ctx;
    return (uint32_t)mp_hal_ticks_us();
}

static tinymp_model_obj_t *trainer_model(const tinymp_trainer_obj_t *self) {
    return MP_OBJ_TO_PTR(self->model);
}

static tinymp_plan_obj_t *trainer_plan(const tinymp_trainer_obj_t *self) {
    return MP_OBJ_TO_PTR(self->plan);
}

static bool trainer_guard_intact(const tinymp_trainer_obj_t *self) {
    if (self->own_arena == NULL) {
        return true;
    }
    const uint8_t *g = self->own_arena + trainer_plan(self)->plan.arena_bytes;
    for (int i = 0; i < GUARD_BYTES; i++) {
        if (g[i] != GUARD_FILL) {
            return false;
        }
    }
    return true;
}

// Before every use: the model's buffer (check_model_buffer) and a caller's arena buffer may have
// been resized since Trainer() (MicroPython does not lock exported buffers). A moved arena is
// followed when its contents keep their alignment; a shrunk one is refused. Allocates nothing.
static void trainer_check(tinymp_trainer_obj_t *self) {
    check_model_buffer(trainer_model(self));
    if (self->own_arena != NULL) {
        return;
    }
    mp_buffer_info_t bi;
    const size_t need = trainer_plan(self)->plan.arena_bytes;
    if (!mp_get_buffer(self->arena_owner, &bi, MP_BUFFER_WRITE) || bi.len < self->arena_skip + need ||
        (((uintptr_t)bi.buf + self->arena_skip) & 3u) != 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("tinymp: the arena buffer was resized after Trainer()"));
    }
    uint8_t *a = (uint8_t *)bi.buf + self->arena_skip;
    if (a != self->arena) {
        self->arena = a;
        self->arena_size = bi.len - self->arena_skip;
        self->t.arena = a;
    }
}

// A call on a trainer from inside its own fit() (one of fit's callbacks: xs[i], ys[i], progress,
// a cache file's methods): refused by the engine (tmp_trainer_usable) with this error.
static MP_NORETURN void busy_error(const char *what) {
    mp_raise_msg_varg(&mp_type_RuntimeError, MP_ERROR_TEXT("tinymp: %s refused: this trainer's fit() is running "
        "(between steps its callbacks may only read the trainer -- predict(), logits(), save(), selection, stats() "
        "-- and set lr; inside a step or an APU probe, only stats())"), what);
}

// The engine's rule, asked before a call does work of its own (reads a file, a sample).
static void trainer_usable(tinymp_trainer_obj_t *self, int changes, const char *what) {
    if (tmp_trainer_usable(&self->t, changes) != TMP_OK) {
        busy_error(what);
    }
}

// Map a core status of a trainer call to an exception (and check the guard of our arena).
static void trainer_status(tinymp_trainer_obj_t *self, tmp_status st, const char *what) {
    if (!trainer_guard_intact(self)) {
        memset(self->own_arena + trainer_plan(self)->plan.arena_bytes, GUARD_FILL, GUARD_BYTES);
        mp_raise_msg(&mp_type_RuntimeError, MP_ERROR_TEXT("tinymp: arena overrun (engine bug)"));
    }
    if (st == TMP_OK) {
        return;
    }
    if (st == TMP_ERR_BUSY) {
        busy_error(what);
    }
    if (st == TMP_ERR_FORMAT || st == TMP_ERR_SIZE) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("tinymp: the model data changed after loading (%s: %s)"),
            what, tmp_status_name(st));
    }
    if (st == TMP_ERR_ARG && self->own_arena == NULL) {
        // the arguments were checked before the call: what the engine refused is the training
        // state it keeps in the caller's arena
        mp_raise_msg_varg(&mp_type_RuntimeError, MP_ERROR_TEXT("tinymp: %s failed: the training state in the arena is "
            "not valid (the arena buffer given to Trainer() was written to); reset() goes back to the pretrained parameters"), what);
    }
    mp_raise_msg_varg(&mp_type_RuntimeError, MP_ERROR_TEXT("tinymp: %s failed (%s)"), what, tmp_status_name(st));
}

// Trainer(model, plan, lr=None, arena=None, seed=1, period=0)
static mp_obj_t tinymp_trainer_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *all_args) {
    enum { ARG_model, ARG_plan, ARG_lr, ARG_arena, ARG_seed, ARG_period };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_model, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_plan, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_lr, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_arena, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_seed, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_period, MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mp_obj_t model = args[ARG_model].u_obj, plan = args[ARG_plan].u_obj, arena = args[ARG_arena].u_obj;
    if (!mp_obj_is_type(model, &tinymp_type_model)) {
        raise_fmt(&mp_type_TypeError, "tinymp: Trainer() needs a tinymp.Model, not '%s'", mp_obj_get_type_str(model));
    }
    if (!mp_obj_is_type(plan, &tinymp_type_plan)) {
        raise_fmt(&mp_type_TypeError, "tinymp: Trainer() needs a tinymp.Plan (from model.plan()), not '%s'",
            mp_obj_get_type_str(plan));
    }
    tinymp_model_obj_t *m = MP_OBJ_TO_PTR(model);
    tinymp_plan_obj_t *p = MP_OBJ_TO_PTR(plan);
    if (p->model != model) {
        mp_raise_ValueError(MP_ERROR_TEXT("tinymp: this plan was made for another model"));
    }
    float lr = (float)opt_ranged_float(args[ARG_lr].u_obj, TMP_FOPT_lr);
    if (lr < 0.0f) { // None: the plan's method's own rate
        lr = tmp_method_lr(p->plan.method);
    }
    uint32_t seed = (uint32_t)opt_ranged_long(args[ARG_seed].u_obj, TMP_IOPT_seed);
    uint32_t period = (uint32_t)opt_ranged_long(args[ARG_period].u_obj, TMP_IOPT_period);

    // Not yet reachable from Python: if anything below raises, the GC reclaims it all.
    tinymp_trainer_obj_t *self = mp_obj_malloc(tinymp_trainer_obj_t, type);
    self->model = model;
    self->plan = plan;
    self->arena_owner = mp_const_none;
    self->own_arena = NULL;
    self->arena_skip = 0;
    self->logits_buf = NULL;
    memset(&self->t, 0, sizeof self->t);
    const uint32_t need = p->plan.arena_bytes;
    if (arena != mp_const_none) {
        mp_buffer_info_t bi;
        if (!mp_get_buffer(arena, &bi, MP_BUFFER_WRITE)) {
            raise_fmt(&mp_type_TypeError, "tinymp: arena must be a writable contiguous buffer (e.g. bytearray), "
                "not '%s'", mp_obj_get_type_str(arena));
        }
        size_t skip = (size_t)((4u - ((uintptr_t)bi.buf & 3u)) & 3u); // use the 4-byte aligned part
        if (bi.len < skip + need) {
            if (skip != 0) {
                raise_fmt(&mp_type_MemoryError, "tinymp: the arena has %u bytes, %u after 4-byte alignment; the "
                    "plan needs %u", (unsigned)bi.len, (unsigned)(bi.len > skip ? bi.len - skip : 0), (unsigned)need);
            }
            raise_fmt(&mp_type_MemoryError, "tinymp: the arena has %u bytes, the plan needs %u", (unsigned)bi.len,
                (unsigned)need);
        }
        self->arena_owner = arena;
        self->arena_skip = skip;
        self->arena = (uint8_t *)bi.buf + skip;
        self->arena_size = bi.len - skip;
    } else {
        // one GC block: the arena, then the guard (GC blocks are >= 8-byte aligned)
        self->own_arena = m_new_maybe(uint8_t, (size_t)need + GUARD_BYTES);
        if (self->own_arena == NULL) {
            raise_fmt(&mp_type_MemoryError, "tinymp: cannot allocate a training arena of %u bytes", (unsigned)need);
        }
        memset(self->own_arena + need, GUARD_FILL, GUARD_BYTES);
        self->arena = self->own_arena;
        self->arena_size = need;
    }
    self->logits_buf = m_new(float, m->model.num_classes + 1u);
    check_model_buffer(m);
    tmp_status st = tmp_trainer_init(&self->t, &m->model, &p->plan, self->arena, self->arena_size, lr, seed);
    if (st != TMP_OK) {
        if (st == TMP_ERR_SIZE) {
            raise_fmt(&mp_type_MemoryError, "tinymp: the arena is smaller than the plan's %u bytes", (unsigned)need);
        }
        raise_fmt(&mp_type_ValueError, "tinymp: cannot start the trainer (%s)", tmp_status_name(st));
    }
    self->t.period = period;
    self->t.clock = clock_us;
    return MP_OBJ_FROM_PTR(self);
}

// A step's `cache`: a buffer of exactly plan.cache_bytes (writable for step(), which fills it;
// readable for step_cached()).
static void get_step_cache(tinymp_trainer_obj_t *self, mp_obj_t cache, bool writable, mp_buffer_info_t *cb) {
    const uint32_t need = trainer_plan(self)->plan.cache_bytes;
    if (need == 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("tinymp: this plan has nothing to cache (plan.cache_bytes is 0: "
            "it trains from the first layer on, or a trained layer reads the input)"));
    }
    // str exports its UTF-8 bytes in MicroPython, but is not a bytes-like object in CPython
    if (mp_obj_is_str(cache) || !mp_get_buffer(cache, cb, writable ? MP_BUFFER_WRITE : MP_BUFFER_READ)) {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("tinymp: cache must be a %sC-contiguous buffer of plan.cache_bytes bytes, not '%s'"),
            writable ? "writable " : "", mp_obj_get_type_str(cache));
    }
    if (cb->len != need) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("tinymp: cache has %u bytes, expected plan.cache_bytes = %u"),
            (unsigned)cb->len, (unsigned)need);
    }
}

// step(x, y, out=None, cache=None) and step_cached(cache, y, out=None) -> float: one SGD step on a
// sample, or on the frozen-prefix features that step(..., cache=) kept of it; returns the loss.
// With `out` (a writable buffer of one float32, e.g. array('f', [0.0])) the loss is stored in
// out[0] and `out` is returned: then nothing is allocated (micropython.heap_lock()).
static mp_obj_t trainer_step_any(tinymp_trainer_obj_t *self, mp_obj_t x, mp_obj_t y, mp_obj_t out, mp_obj_t cache,
    bool from_cache) {
    trainer_usable(self, 1, "training step");
    mp_buffer_info_t ob, xb, cb;
    if (out != mp_const_none) {
        if (!mp_get_buffer(out, &ob, MP_BUFFER_WRITE)) {
            mp_raise_msg_varg(&mp_type_TypeError,
                MP_ERROR_TEXT("tinymp: out must be a writable C-contiguous buffer of 1 float32, not '%s'"),
                mp_obj_get_type_str(out));
        }
        size_t isz = item_size(&ob);
        if (!((isz == 4 && ob.typecode == 'f') || isz == 1)) {
            mp_raise_msg_varg(&mp_type_TypeError,
                MP_ERROR_TEXT("tinymp: out must hold float32 (format 'f'), got format '%c'"), format_char(&ob));
        }
        if (ob.len != sizeof(float)) {
            mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("tinymp: out has %u bytes, expected 4 (1 float32)"),
                (unsigned)ob.len);
        }
    }
    int32_t label = parse_label(trainer_model(self), y, "label");
    if (!from_cache) {
        get_input(trainer_model(self), x, &xb);
    }
    // step_cached() needs its buffer (None is refused); step() keeps features only when asked
    if (from_cache || cache != mp_const_none) {
        get_step_cache(self, cache, !from_cache, &cb);
    }
    trainer_check(self);
    #if MICROPY_ENABLE_GC && MICROPY_OBJ_REPR != MICROPY_OBJ_REPR_C && MICROPY_OBJ_REPR != MICROPY_OBJ_REPR_D
    // Floats are boxed on this port: returning the loss allocates. Under heap_lock() fail before
    // the step rather than after it has changed the parameters.
    if (out == mp_const_none && gc_is_locked()) {
        mp_raise_msg_varg(&mp_type_MemoryError,
            MP_ERROR_TEXT("tinymp: %s() returns a new float, which the locked heap cannot hold: pass out=array('f', [0.0])"),
            from_cache ? "step_cached" : "step");
    }
    #endif
    float loss = 0.0f;
    tmp_status st;
    kbd_hold(true);
    if (from_cache) {
        st = tmp_trainer_step_cached(&self->t, (const int8_t *)cb.buf, label, &loss);
    } else if (cache != mp_const_none) {
        st = tmp_trainer_step_fill(&self->t, (const int8_t *)xb.buf, label, (int8_t *)cb.buf, &loss);
    } else {
        st = tmp_trainer_step(&self->t, (const int8_t *)xb.buf, label, &loss);
    }
    kbd_hold(false);
    trainer_status(self, st, "training step");
    if (out != mp_const_none) {
        memcpy(ob.buf, &loss, sizeof loss); // `out` may be misaligned
        return out;
    }
    return mp_obj_new_float((mp_float_t)loss);
}

static mp_obj_t tinymp_trainer_step(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_x, ARG_y, ARG_out, ARG_cache };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_x, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_y, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_out, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_cache, MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args - 1, pos_args + 1, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    return trainer_step_any(MP_OBJ_TO_PTR(pos_args[0]), args[ARG_x].u_obj, args[ARG_y].u_obj, args[ARG_out].u_obj,
        args[ARG_cache].u_obj, false);
}
static MP_DEFINE_CONST_FUN_OBJ_KW(tinymp_trainer_step_obj, 1, tinymp_trainer_step);

static mp_obj_t tinymp_trainer_step_cached(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_cache, ARG_y, ARG_out };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_cache, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_y, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_out, MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args - 1, pos_args + 1, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    return trainer_step_any(MP_OBJ_TO_PTR(pos_args[0]), mp_const_none, args[ARG_y].u_obj, args[ARG_out].u_obj,
        args[ARG_cache].u_obj, true);
}
static MP_DEFINE_CONST_FUN_OBJ_KW(tinymp_trainer_step_cached_obj, 1, tinymp_trainer_step_cached);

// Inference with the trained parameters; returns the int8 output inside the arena.
static const int8_t *trainer_forward(tinymp_trainer_obj_t *self, mp_obj_t x) {
    mp_buffer_info_t bi;
    get_input(trainer_model(self), x, &bi);
    trainer_check(self);
    const int8_t *out = NULL;
    tmp_status st = tmp_trainer_forward(&self->t, (const int8_t *)bi.buf, &out);
    trainer_status(self, st, "inference");
    return out;
}

// predict(x) -> int. Allocates nothing.
static mp_obj_t tinymp_trainer_predict(mp_obj_t self_in, mp_obj_t x) {
    tinymp_trainer_obj_t *self = MP_OBJ_TO_PTR(self_in);
    const int8_t *q = trainer_forward(self, x);
    return MP_OBJ_NEW_SMALL_INT(tmp_argmax_s8(q, (int32_t)trainer_model(self)->model.num_classes));
}
static MP_DEFINE_CONST_FUN_OBJ_2(tinymp_trainer_predict_obj, tinymp_trainer_predict);

// logits(x, out=None) -> array('f'). With `out` it allocates nothing.
static mp_obj_t tinymp_trainer_logits(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_x, ARG_out };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_x, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_out, MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    tinymp_trainer_obj_t *self = MP_OBJ_TO_PTR(pos_args[0]);
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args - 1, pos_args + 1, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    tinymp_model_obj_t *m = trainer_model(self);
    mp_obj_t out = args[ARG_out].u_obj;
    const size_t n = m->model.num_classes;
    mp_buffer_info_t ob;
    if (out != mp_const_none) {
        get_out(m, out, &ob);
    }
    const int8_t *q = trainer_forward(self, args[ARG_x].u_obj);
    tmp_dequantize_output(&m->model, q, self->logits_buf);
    if (out != mp_const_none) {
        memcpy(ob.buf, self->logits_buf, sizeof(float) * n);
        return out;
    }
    mp_obj_array_t *arr = mp_obj_malloc(mp_obj_array_t, &mp_type_array);
    arr->typecode = 'f';
    arr->free = 0;
    arr->len = n;
    arr->items = m_new(float, n > 0 ? n : 1);
    memcpy(arr->items, self->logits_buf, sizeof(float) * n);
    return MP_OBJ_FROM_PTR(arr);
}
static MP_DEFINE_CONST_FUN_OBJ_KW(tinymp_trainer_logits_obj, 1, tinymp_trainer_logits);

// end_period(): close an APU period (re-select the channels).
static mp_obj_t tinymp_trainer_end_period(mp_obj_t self_in) {
    tinymp_trainer_obj_t *self = MP_OBJ_TO_PTR(self_in);
    trainer_check(self);
    kbd_hold(true);
    tmp_status st = tmp_trainer_end_period(&self->t);
    kbd_hold(false);
    trainer_status(self, st, "end of period");
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(tinymp_trainer_end_period_obj, tinymp_trainer_end_period);

// reset(): back to the pretrained parameters and the plan's initial selection.
static mp_obj_t tinymp_trainer_reset(mp_obj_t self_in) {
    tinymp_trainer_obj_t *self = MP_OBJ_TO_PTR(self_in);
    trainer_check(self);
    kbd_hold(true);
    tmp_status st = tmp_trainer_reset(&self->t);
    kbd_hold(false);
    trainer_status(self, st, "reset");
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(tinymp_trainer_reset_obj, tinymp_trainer_reset);

/* Files, through the VFS: the builtin open() and the os module, called as from Python, so any
 * filesystem this port mounts works (FAT, littlefs, the unix port's files, a VFS written in
 * Python). Only plain method calls are used on the file objects. */

static void check_path(mp_obj_t path) {
    if (!mp_obj_is_str(path)) {
        raise_fmt(&mp_type_TypeError, "tinymp: path must be a str, not '%s'", mp_obj_get_type_str(path));
    }
}

#if MICROPY_PY_IO
static mp_obj_t call_method(mp_obj_t obj, qstr name, size_t n_args, const mp_obj_t *a) {
    mp_obj_t dest[2 + 2];
    mp_load_method(obj, name, dest);
    for (size_t i = 0; i < n_args; i++) {
        dest[2 + i] = a[i];
    }
    return mp_call_method_n_kw(n_args, 0, dest);
}

static mp_obj_t os_call(qstr fn, size_t n_args, const mp_obj_t *a) {
    mp_obj_t os = mp_import_name(MP_QSTR_os, mp_const_none, MP_OBJ_NEW_SMALL_INT(0));
    return mp_call_function_n_kw(mp_load_attr(os, fn), n_args, 0, a);
}

// Saved parameters go to and come from files through a buffer of this many bytes: the blob, as
// large as the trained parameters, is never held whole on the heap beside the arena.
#define PARAMS_PIECE 512

// Write the trainer's parameters to `path` so that a crash leaves either the old file or the new
// one whole: write path + '.tmp' piece by piece, close it, then os.rename() it over `path` (each
// VFS's rename replaces an existing file). On any error the temporary file is removed and the
// error raised.
static void params_write_file(tinymp_trainer_obj_t *self, mp_obj_t path) {
    // never a file a load would refuse, over a good one: the arena's state is checked first
    trainer_check(self);
    trainer_status(self, tmp_trainer_check_state(&self->t), "save");
    mp_obj_t tmp = mp_binary_op(MP_BINARY_OP_ADD, path, mp_obj_new_str(".tmp", 4));
    // write() gets a memoryview of a heap block, which Python can neither resize nor free (a
    // VFS must copy what it keeps, as from any caller that reuses its buffer)
    uint8_t *piece = m_new(uint8_t, PARAMS_PIECE);
    mp_obj_t whole = mp_obj_new_memoryview('B', PARAMS_PIECE, piece);
    // volatile: read after an nlr_jump out of the block that changes it
    mp_obj_t volatile f = mp_call_function_2(MP_OBJ_FROM_PTR(&mp_builtin_open_obj), tmp, MP_OBJ_NEW_QSTR(MP_QSTR_wb));
    nlr_buf_t nlr;
    if (nlr_push(&nlr) == 0) {
        tmp_params_writer w = { 0u, 0u };
        for (;;) {
            uint32_t k = 0;
            trainer_check(self); // Python ran: the arena may have moved, the model changed
            if (tmp_trainer_params_write(&self->t, &w, piece, PARAMS_PIECE, &k) != TMP_OK) {
                mp_raise_msg(&mp_type_RuntimeError, MP_ERROR_TEXT("tinymp: cannot serialise the parameters"));
            }
            if (k == 0) {
                break;
            }
            mp_obj_t buf = k == PARAMS_PIECE ? whole : mp_obj_new_memoryview('B', k, piece);
            mp_obj_t r = call_method(f, MP_QSTR_write, 1, &buf);
            if (r != mp_const_none && mp_obj_get_int(r) != (mp_int_t)k) {
                mp_raise_OSError(MP_ENOSPC); // a short write: the medium is full
            }
        }
        mp_obj_t fo = f;
        f = MP_OBJ_NULL;
        call_method(fo, MP_QSTR_close, 0, NULL);
        mp_obj_t ab[2] = { tmp, path };
        os_call(MP_QSTR_rename, 2, ab);
        nlr_pop();
    } else {
        nlr_buf_t nlr2;
        if (nlr_push(&nlr2) == 0) {
            if (f != MP_OBJ_NULL) {
                call_method(f, MP_QSTR_close, 0, NULL);
            }
            nlr_pop();
        }
        if (nlr_push(&nlr2) == 0) {
            os_call(MP_QSTR_remove, 1, &tmp);
            nlr_pop();
        }
        nlr_jump(nlr.ret_val);
    }
}

// One pass over the file at `path` through the piecewise reader (copy: 0 checks, 1 loads). A
// file that exports its bytes (a ROMFS file) is read in place; others in pieces, with readinto()
// (into a memoryview, which Python cannot resize) where the file has it, else read(). Errors of
// the file raise, the file closed. The trainer is checked after every call into Python.
// *state_loaded: whether the file's training state was (or, checking, would be) taken.
static tmp_status params_read_file(tinymp_trainer_obj_t *self, mp_obj_t path, int copy, uint8_t *piece,
    const char **msg, int *state_loaded) {
    tmp_params_reader r;
    tmp_trainer_params_begin(&self->t, &r, copy);
    mp_obj_t f = mp_call_function_2(MP_OBJ_FROM_PTR(&mp_builtin_open_obj), path, MP_OBJ_NEW_QSTR(MP_QSTR_rb));
    nlr_buf_t nlr;
    if (nlr_push(&nlr) == 0) {
        mp_buffer_info_t bi;
        if (mp_get_buffer(f, &bi, MP_BUFFER_READ)) {
            trainer_check(self);
            tmp_trainer_params_feed(&self->t, &r, (const uint8_t *)bi.buf, (uint32_t)bi.len);
        } else {
            mp_obj_t into[3];
            mp_load_method_maybe(f, MP_QSTR_readinto, into);
            mp_obj_t view = mp_obj_new_memoryview('B' | MP_OBJ_ARRAY_TYPECODE_FLAG_RW, PARAMS_PIECE, piece);
            for (;;) {
                mp_obj_t got;
                if (into[0] != MP_OBJ_NULL) {
                    mp_obj_t call[3] = { into[0], into[1], view };
                    got = mp_call_method_n_kw(1, 0, call);
                    bi.buf = piece;
                    bi.len = got == mp_const_none ? 0 : (size_t)mp_obj_get_int(got);
                    if (bi.len > PARAMS_PIECE) {
                        mp_raise_OSError(MP_EIO);
                    }
                } else {
                    mp_obj_t n = MP_OBJ_NEW_SMALL_INT(PARAMS_PIECE);
                    got = call_method(f, MP_QSTR_read, 1, &n);
                    if (mp_obj_is_str(got) || !mp_get_buffer(got, &bi, MP_BUFFER_READ)) {
                        mp_raise_TypeError(MP_ERROR_TEXT("tinymp: file read did not return bytes"));
                    }
                }
                if (bi.len == 0) {
                    break;
                }
                trainer_check(self);
                tmp_trainer_params_feed(&self->t, &r, (const uint8_t *)bi.buf, (uint32_t)bi.len);
            }
        }
        nlr_pop();
    } else {
        nlr_buf_t nlr2;
        if (nlr_push(&nlr2) == 0) {
            call_method(f, MP_QSTR_close, 0, NULL);
            nlr_pop();
        }
        nlr_jump(nlr.ret_val);
    }
    call_method(f, MP_QSTR_close, 0, NULL);
    trainer_check(self);
    tmp_status st = tmp_trainer_params_end(&self->t, &r, msg);
    *state_loaded = r.state_loaded;
    return st;
}
#endif

// save(path): the personalised parameters (versioned, CRC-checked), written atomically.
static mp_obj_t tinymp_trainer_save(mp_obj_t self_in, mp_obj_t path) {
    tinymp_trainer_obj_t *self = MP_OBJ_TO_PTR(self_in);
    trainer_usable(self, 0, "save");
    check_path(path);
    trainer_check(self);
    #if MICROPY_PY_IO
    params_write_file(self, path);
    #else
    mp_raise_OSError(MP_EROFS); // no filesystem on this port
    #endif
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_2(tinymp_trainer_save_obj, tinymp_trainer_save);

// Back to the pretrained parameters after a failed copying pass, unless the trainer itself is
// no longer usable (its model or arena changed: then that is what later calls report).
static void params_reset_after_failure(tinymp_trainer_obj_t *self) {
    nlr_buf_t nlr;
    if (nlr_push(&nlr) == 0) {
        trainer_check(self);
        kbd_hold(true);
        tmp_trainer_reset(&self->t);
        kbd_hold(false);
        nlr_pop();
    }
}

// load(path): parameters saved by save() for this plan. The file is read twice: a first pass
// checks all of it (a file that is not such a blob -- corrupt, truncated, another model or plan
// -- raises ValueError and changes nothing), a second copies it in. Should the second pass fail
// (a read error, or bytes that no longer pass the checks), the trainer goes back to the
// pretrained parameters before the error is raised, so it is never left half loaded.
// Returns True when the file's training state came too (same plan), False when only the
// parameters did (a version-1 file, or one saved with other momentum or ratio: the trainer
// starts a new run's state on them).
static mp_obj_t tinymp_trainer_load(mp_obj_t self_in, mp_obj_t path) {
    tinymp_trainer_obj_t *self = MP_OBJ_TO_PTR(self_in);
    trainer_usable(self, 1, "load()");
    check_path(path);
    #if MICROPY_PY_IO
    trainer_check(self);
    uint8_t *piece = m_new(uint8_t, PARAMS_PIECE);
    const char *msg = NULL;
    int state = 0;
    tmp_status st = params_read_file(self, path, 0, piece, &msg, &state);
    if (st == TMP_OK) {
        nlr_buf_t nlr;
        if (nlr_push(&nlr) == 0) {
            st = params_read_file(self, path, 1, piece, &msg, &state);
            nlr_pop();
        } else {
            params_reset_after_failure(self);
            nlr_jump(nlr.ret_val);
        }
        if (st != TMP_OK) {
            params_reset_after_failure(self);
        }
    }
    if (st == TMP_ERR_BUSY) {
        busy_error("load()");
    }
    if (st != TMP_OK) {
        raise_fmt(&mp_type_ValueError, "tinymp: cannot load %s: %s", obj_text(path, PRINT_REPR),
            msg != NULL ? msg : tmp_status_name(st));
    }
    return mp_obj_new_bool(state);
    #else
    (void)self;
    mp_raise_OSError(MP_ENOENT); // no filesystem on this port
    #endif
}
static MP_DEFINE_CONST_FUN_OBJ_2(tinymp_trainer_load_obj, tinymp_trainer_load);

// stats() -> dict: counters of the steps so far (times in microseconds of mp_hal_ticks_us()).
static mp_obj_t tinymp_trainer_stats(mp_obj_t self_in) {
    tinymp_trainer_obj_t *self = MP_OBJ_TO_PTR(self_in);
    const tmp_trainer *t = &self->t;
    mp_obj_t d = new_ordered_dict(11);
    dict_store_str(d, "steps", mp_obj_new_int_from_uint(t->steps));
    dict_store_str(d, "stalled_steps", mp_obj_new_int_from_uint(t->stalled_steps));
    dict_store_str(d, "periods", mp_obj_new_int_from_uint(t->periods));
    dict_store_str(d, "forward_macs", new_u64(t->macs[TMP_PHASE_FORWARD]));
    dict_store_str(d, "backward_macs", new_u64(t->macs[TMP_PHASE_BACKWARD]));
    dict_store_str(d, "forward_us", new_u64(t->ticks[TMP_PHASE_FORWARD]));
    dict_store_str(d, "backward_us", new_u64(t->ticks[TMP_PHASE_BACKWARD]));
    dict_store_str(d, "update_us", new_u64(t->ticks[TMP_PHASE_UPDATE]));
    dict_store_str(d, "high_water", mp_obj_new_int_from_uint(tmp_trainer_high_water(t)));
    dict_store_str(d, "arena_bytes", mp_obj_new_int_from_uint(trainer_plan(self)->plan.arena_bytes));
    dict_store_str(d, "clock", MP_OBJ_NEW_QSTR(MP_QSTR_ticks_us));
    return d;
}
static MP_DEFINE_CONST_FUN_OBJ_1(tinymp_trainer_stats_obj, tinymp_trainer_stats);

static mp_obj_t trainer_selection(tinymp_trainer_obj_t *self) {
    trainer_check(self);
    trainer_status(self, tmp_trainer_check_state(&self->t), "selection");
    mp_obj_t d = new_ordered_dict(4);
    const int32_t nl = trainer_plan(self)->plan.num_layers;
    for (int32_t i = 0; i < nl; i++) {
        const uint16_t *ch = NULL;
        int32_t k = tmp_trainer_channels(&self->t, i, &ch);
        if (k != 0) {
            mp_obj_dict_store(d, MP_OBJ_NEW_SMALL_INT(i), channel_list(ch, k));
        }
    }
    return d;
}

static void tinymp_trainer_attr(mp_obj_t self_in, qstr attr, mp_obj_t *dest) {
    tinymp_trainer_obj_t *self = MP_OBJ_TO_PTR(self_in);
    if (dest[0] != MP_OBJ_NULL) {
        // store (dest[1] = value) or delete (dest[1] = NULL): only lr is writable
        if (attr == MP_QSTR_lr) {
            if (dest[1] == MP_OBJ_NULL) {
                mp_raise_msg(&mp_type_AttributeError, MP_ERROR_TEXT("tinymp: cannot delete lr"));
            }
            trainer_usable(self, 0, "setting lr");
            if (dest[1] == mp_const_none) { // opt_float() would read None as "the default"
                mp_raise_TypeError(MP_ERROR_TEXT("tinymp: lr must be a number, not 'NoneType'"));
            }
            self->t.lr = (float)opt_ranged_float(dest[1], TMP_FOPT_lr);
            dest[0] = MP_OBJ_NULL; // done
        }
        return;
    }
    switch (attr) {
        case MP_QSTR_high_water:
            dest[0] = mp_obj_new_int_from_uint(tmp_trainer_high_water(&self->t));
            break;
        case MP_QSTR_prediction:
            trainer_check(self);
            dest[0] = MP_OBJ_NEW_SMALL_INT(self->t.last_pred);
            break;
        case MP_QSTR_selection:
            dest[0] = trainer_selection(self);
            break;
        case MP_QSTR_lr:
            dest[0] = mp_obj_new_float((mp_float_t)self->t.lr);
            break;
        case MP_QSTR_plan:
            dest[0] = self->plan;
            break;
        default:
            dest[1] = MP_OBJ_SENTINEL; // continue the lookup in locals_dict
            break;
    }
}


// ---- fit(): a whole personalisation run in the core (tmp_trainer_fit)
//
// Python runs inside the core's loop: the sequences' __getitem__, the progress callback, the
// scheduler and a cache file's methods. Any of them may resize the model's or the arena's
// bytearray, or the cache buffer. Between steps (after a sample is fetched, after progress) a
// moved arena or model is followed as step() follows it; inside a step (a cache file's methods)
// the step's pointers cannot follow, so a move there stops the run; a caller's cache buffer is
// looked up again before every copy. A sample's own buffer needs no such check: a step reads it
// only before its first cache-file call (the planner caches nothing when a layer at or after the
// first trainable one reads the input itself, and a step from the cache does not read it at all).

typedef struct {
    tinymp_trainer_obj_t *self;
    mp_obj_t xs, ys, file, progress;
    mp_obj_t cache_obj;      // a caller's cache buffer, or MP_OBJ_NULL
    uint8_t *own_cache;      // our heap buffer for the samples the arena does not hold, or NULL
    uint32_t base;           // own_cache holds sample i at (i - base) * cache_bytes (base: the
                             // arena's samples); a caller's buffer or file at i * cache_bytes
    uint32_t cache_bytes;
    uint32_t n;
    mp_obj_t pending;        // an exception a cache file or progress raised: the run stops after that step
    mp_obj_t losses, accs;   // per-epoch means, appended as each epoch ends
    uint32_t epoch, correct, count;
    mp_float_t loss_sum;
    uint8_t *io_buf;         // a cache file reads and writes this heap block, never the arena
    uint32_t probe_offset;   // where fit_probe_file tries a cache file
} fit_ctx;

// Sample i for the engine and fit()'s first check: an exception of the sequence or the sample
// (its own, a Ctrl-C scheduled in its Python code) is kept in f->pending for fit() to raise, and
// the caller gets NULL, so the engine never jumps out of the middle of an APU probe (docs/TRAINING.md section 6), whose channel marks must be
// cleared. trainer_check's error (a resized arena or model) is not caught: it jumps past the
// engine, which must not touch that arena again. An earlier exception (progress raised on an
// epoch's last step) stays the one fit() raises; the probe of that epoch's end still runs.
static const int8_t *fit_sample(void *ctx, uint32_t i, int32_t *label) {
    fit_ctx *f = (fit_ctx *)ctx;
    mp_obj_t idx = MP_OBJ_NEW_SMALL_INT(i);
    mp_obj_t volatile x = MP_OBJ_NULL, y = MP_OBJ_NULL;
    const int8_t *volatile got = NULL;
    nlr_buf_t nlr;
    if (nlr_push(&nlr) == 0) {
        // xs[i] before ys[i], as the PC binding fetches them: the items' side effects come in the
        // same order, and when both would raise, the exception fit() raises is xs[i]'s on both
        x = mp_obj_subscr(f->xs, idx, MP_OBJ_SENTINEL);
        y = mp_obj_subscr(f->ys, idx, MP_OBJ_SENTINEL);
        nlr_pop();
    } else if (f->pending == MP_OBJ_NULL) {
        f->pending = MP_OBJ_FROM_PTR(nlr.ret_val);
    }
    trainer_check(f->self); // Python ran: follow a moved arena or model before the step
    if (x == MP_OBJ_NULL || y == MP_OBJ_NULL) {
        return NULL;
    }
    if (nlr_push(&nlr) == 0) {
        *label = parse_label(trainer_model(f->self), y, "label");
        mp_buffer_info_t bi;
        get_input(trainer_model(f->self), x, &bi);
        got = (const int8_t *)bi.buf; // the sequence keeps the object alive
        nlr_pop();
    } else if (f->pending == MP_OBJ_NULL) {
        f->pending = MP_OBJ_FROM_PTR(nlr.ret_val);
    }
    return got;
}

// Inside a step, after a cache file's method ran: the step's pointers into the arena and the
// model are fixed, so a resized buffer stops the run.
static void fit_check_unmoved(fit_ctx *f) {
    tinymp_trainer_obj_t *self = f->self;
    const uint8_t *arena = self->arena, *model = trainer_model(self)->data;
    trainer_check(self);
    if (self->arena != arena || trainer_model(self)->data != model) {
        mp_raise_ValueError(MP_ERROR_TEXT("tinymp: the arena or model buffer was resized during a fit() step"));
    }
}

// The caller's cache buffer as it is now (looked up before every copy: Python may have resized it).
static uint8_t *fit_cache_buffer(fit_ctx *f) {
    if (f->own_cache != NULL) {
        return f->own_cache;
    }
    mp_buffer_info_t cb;
    if (!mp_get_buffer(f->cache_obj, &cb, MP_BUFFER_WRITE) || (uint64_t)cb.len < (uint64_t)f->n * f->cache_bytes) {
        mp_raise_ValueError(MP_ERROR_TEXT("tinymp: the cache buffer was resized during fit()"));
    }
    return (uint8_t *)cb.buf;
}

static void fit_seek(fit_ctx *f, uint32_t i, uint32_t offset) {
    mp_obj_t dest[3];
    mp_load_method(f->file, MP_QSTR_seek, dest);
    dest[2] = mp_obj_new_int_from_ull((unsigned long long)i * f->cache_bytes + offset);
    mp_call_method_n_kw(1, 0, dest);
}

// Did a cache file's write/readinto return the count n? Only an int equal to n counts: None, a
// bool, a float, a str, an int subclass, a negative or a huge int (which mp_obj_get_int would
// refuse with OverflowError) is "fewer bytes", the one rule both bindings apply (fit_count_is in
// the PC binding), so no value the method returns raises an error of its own here.
static bool fit_count_is(mp_obj_t r, uint32_t n) {
    // n fits a small int (no allocation) unless a sample's features are gigabytes; mp_obj_equal
    // compares a big int without converting it
    return mp_obj_is_int(r) && mp_obj_equal(r, mp_obj_new_int_from_uint(n));
}

static int fit_store(void *ctx, uint32_t i, uint32_t offset, const int8_t *src, uint32_t n) {
    fit_ctx *f = (fit_ctx *)ctx;
    if (f->file == MP_OBJ_NULL) {
        memcpy(fit_cache_buffer(f) + (size_t)(i - f->base) * f->cache_bytes + offset, src, n);
        return 0;
    }
    if (f->pending != MP_OBJ_NULL) {
        return -1;
    }
    // a file that fails to store: this sample is not cached; one that raises: the run stops
    // after this step (which still trains) and fit() raises it, as the PC binding does
    bool stored = false;
    nlr_buf_t nlr;
    if (nlr_push(&nlr) == 0) {
        fit_seek(f, i, offset);
        mp_obj_t dest[3];
        mp_load_method(f->file, MP_QSTR_write, dest);
        memcpy(f->io_buf, src, n);
        dest[2] = mp_obj_new_memoryview('B', n, f->io_buf);
        mp_obj_t r = mp_call_method_n_kw(1, 0, dest);
        stored = fit_count_is(r, n); // anything but n: a short write, the file is off for the run
        nlr_pop();
    } else {
        f->pending = MP_OBJ_FROM_PTR(nlr.ret_val);
    }
    fit_check_unmoved(f);
    return stored ? 0 : -1;
}

static int fit_load(void *ctx, uint32_t i, uint32_t offset, int8_t *dst, uint32_t n) {
    fit_ctx *f = (fit_ctx *)ctx;
    if (f->file == MP_OBJ_NULL) {
        memcpy(dst, fit_cache_buffer(f) + (size_t)(i - f->base) * f->cache_bytes + offset, n);
        return 0;
    }
    fit_seek(f, i, offset);
    mp_obj_t dest[3];
    mp_load_method(f->file, MP_QSTR_readinto, dest);
    dest[2] = mp_obj_new_memoryview('B' | MP_OBJ_ARRAY_TYPECODE_FLAG_RW, n, f->io_buf);
    mp_obj_t r = mp_call_method_n_kw(1, 0, dest);
    fit_check_unmoved(f);
    if (!fit_count_is(r, n)) {
        mp_raise_msg(&mp_type_OSError, MP_ERROR_TEXT("tinymp: the feature cache file returned fewer bytes than were stored"));
    }
    memcpy(dst, f->io_buf, n);
    return 0;
}

// A cache file is tried before the first step (every input is), where fit() would first store:
// one sample's worth of zeros written (and flushed) and read back, then of 0xA5. A file that
// cannot be read and written in place raises one ValueError that says so, and nothing trains: one
// not open for both ('rb', 'wb': an OSError EBADF on the unix port and littlefs, EACCES on FAT; on
// the PC io.UnsupportedOperation), one that cannot seek (ESPIPE), one whose writes go elsewhere
// ('a+b': every write appends, so at least one of the two reads finds other bytes, whatever the
// file held before). Any other exception (a full disk, the file object's own) propagates
// unchanged. A write that stores less is no error (those samples are just not cached, as in
// fit_store).
#define FIT_PROBE_BYTE 0xA5u

// write or readinto io_buf at the probe's place: whether it returned the count cache_bytes
// (fit_count_is). A write is followed by flush() when the file has one: a buffered file
// (CPython's) would otherwise give the bytes back from its buffer, wherever its writes really go.
static bool fit_probe_call(fit_ctx *f, qstr method, byte typecode) {
    fit_seek(f, 0, f->probe_offset);
    mp_obj_t dest[3];
    mp_load_method(f->file, method, dest);
    dest[2] = mp_obj_new_memoryview(typecode, f->cache_bytes, f->io_buf);
    mp_obj_t r = mp_call_method_n_kw(1, 0, dest);
    if (method == MP_QSTR_write) {
        mp_load_method_maybe(f->file, MP_QSTR_flush, dest);
        if (dest[0] != MP_OBJ_NULL) {
            mp_call_method_n_kw(0, 0, dest);
        }
    }
    return fit_count_is(r, f->cache_bytes);
}

static void fit_probe_file(fit_ctx *f) {
    const mp_int_t n = (mp_int_t)f->cache_bytes;
    bool volatile bad = false; // volatile: set between nlr_push and a jump back to it
    nlr_buf_t nlr;
    if (nlr_push(&nlr) == 0) {
        bool stored = true;
        for (unsigned pattern = 0; pattern <= FIT_PROBE_BYTE && stored && !bad; pattern += FIT_PROBE_BYTE) {
            memset(f->io_buf, (int)pattern, (size_t)n);
            stored = fit_probe_call(f, MP_QSTR_write, 'B');
            if (stored) {
                memset(f->io_buf, (int)(pattern ^ 0xFFu), (size_t)n);
                bad = !fit_probe_call(f, MP_QSTR_readinto, 'B' | MP_OBJ_ARRAY_TYPECODE_FLAG_RW);
                for (mp_int_t k = 0; k < n && !bad; k++) {
                    bad = f->io_buf[k] != pattern;
                }
            }
        }
        nlr_pop();
    } else {
        mp_obj_t e = MP_OBJ_FROM_PTR(nlr.ret_val);
        if (mp_obj_is_subclass_fast(MP_OBJ_FROM_PTR(mp_obj_get_type(e)), MP_OBJ_FROM_PTR(&mp_type_OSError))) {
            mp_obj_t v = mp_obj_exception_get_value(e);
            bad = v == MP_OBJ_NEW_SMALL_INT(MP_EBADF) || v == MP_OBJ_NEW_SMALL_INT(MP_EACCES) ||
                v == MP_OBJ_NEW_SMALL_INT(MP_ESPIPE);
        }
        if (!bad) {
            nlr_jump(nlr.ret_val);
        }
    }
    if (bad) {
        mp_raise_ValueError(MP_ERROR_TEXT("tinymp: fit() cache file must be opened 'w+b' or 'r+b' (read and written in place)"));
    }
}

// The mean loss and accuracy of the epoch that just ended, appended to the result's lists.
static void fit_close_epoch(fit_ctx *f) {
    if (f->count != 0) {
        mp_obj_list_append(f->losses, mp_obj_new_float(f->loss_sum / (mp_float_t)f->count));
        mp_obj_list_append(f->accs, mp_obj_new_float((mp_float_t)f->correct / (mp_float_t)f->count));
    }
    f->loss_sum = 0;
    f->correct = 0;
    f->count = 0;
}

static int fit_progress(void *ctx, uint32_t epoch, uint32_t done, float loss, int correct) {
    fit_ctx *f = (fit_ctx *)ctx;
    if (epoch != f->epoch) {
        fit_close_epoch(f);
        f->epoch = epoch;
    }
    f->loss_sum += (mp_float_t)loss;
    f->correct += correct ? 1u : 0u;
    f->count++;
    if (f->pending != MP_OBJ_NULL) {
        return 1;
    }
    int volatile stop = 0; // volatile: set between nlr_push and a jump back to it
    // What raises here (progress, Ctrl-C) stops the run after this step and is raised when the
    // engine has returned, as on the PC: the engine first finishes the epoch if this step was its
    // last (counts it, ends its period), so the trainer is that of a run stopped by progress here.
    nlr_buf_t nlr;
    if (nlr_push(&nlr) == 0) {
        if (f->progress != mp_const_none) {
            mp_obj_t a[4] = { mp_obj_new_int_from_uint(epoch), mp_obj_new_int_from_uint(done),
                              mp_obj_new_float((mp_float_t)loss), mp_obj_new_bool(correct) };
            stop = mp_obj_is_true(mp_call_function_n_kw(f->progress, 4, 0, a)) ? 1 : 0;
        }
        // a long fit() stays interruptible (Ctrl-C, KeyboardInterrupt), between steps: on a board
        // and, with fit's SIGINT handler (kbd_defer), on the unix port
        mp_handle_pending(true);
        nlr_pop();
    } else {
        f->pending = MP_OBJ_FROM_PTR(nlr.ret_val);
        stop = 1;
    }
    // Python ran: follow a moved arena or model before the engine goes on. Its error (a resized
    // buffer) is not caught: it jumps past the engine, which must not touch that arena again.
    trainer_check(f->self);
    return stop;
}

// Can the heap give `bytes` now? (a block is taken and given back)
static int fit_heap_has(uint64_t bytes) {
    if (bytes > SIZE_MAX / 2) {
        return 0;
    }
    uint8_t *b = m_new_maybe(uint8_t, (size_t)bytes);
    if (b == NULL) {
        return 0;
    }
    m_del(uint8_t, b, (size_t)bytes);
    return 1;
}

// cache=True: a heap buffer for the `want` samples the arena does not hold, or, when the heap
// cannot give that and TMP_FIT_HEAP_RESERVE more, for as many of them as it can (tmp_fit_cache_count,
// the rule both bindings share; each failed try collects the heap once). *count: the samples it
// holds; NULL when none.
static uint8_t *fit_own_cache(uint32_t want, uint32_t cache_bytes, uint32_t *count) {
    const uint32_t lo = tmp_fit_cache_count(want, cache_bytes, TMP_FIT_HEAP_RESERVE, fit_heap_has);
    uint8_t *b = lo != 0 ? m_new_maybe(uint8_t, (size_t)lo * cache_bytes) : NULL;
    *count = b != NULL ? lo : 0u;
    return b;
}

// Can an object of type t be subscripted (o[i])? A native type by its subscr slot; a class of
// Python code always has that slot (instance_subscr, which fails at the call when nothing defines
// __getitem__), so by a __getitem__ of its own or of a base's, native bases by their slot.
static bool fit_type_subscriptable(const mp_obj_type_t *t) {
    if (!mp_obj_is_instance_type(t)) {
        return MP_OBJ_TYPE_HAS_SLOT(t, subscr);
    }
    if (MP_OBJ_TYPE_HAS_SLOT(t, locals_dict) && mp_map_lookup(&MP_OBJ_TYPE_GET_SLOT(t, locals_dict)->map,
        MP_OBJ_NEW_QSTR(MP_QSTR___getitem__), MP_MAP_LOOKUP) != NULL) {
        return true;
    }
    if (!MP_OBJ_TYPE_HAS_SLOT(t, parent)) {
        return false;
    }
    const void *parent = MP_OBJ_TYPE_GET_SLOT(t, parent);
    #if MICROPY_MULTIPLE_INHERITANCE
    if (((const mp_obj_base_t *)parent)->type == &mp_type_tuple) {
        const mp_obj_tuple_t *bases = parent;
        for (size_t k = 0; k < bases->len; k++) {
            if (fit_type_subscriptable(MP_OBJ_TO_PTR(bases->items[k]))) {
                return true;
            }
        }
        return false;
    }
    #endif
    return fit_type_subscriptable(parent);
}

// Is o a sequence for fit()'s xs and ys? What the PC binding asks of them (CPython's
// PySequence_Check): it can be subscripted and is no dict. A dict (an OrderedDict, a subclass of
// either) indexed by int keys would train here and be refused there; a set or a generator would
// fail at its first item with this runtime's own message. Runs no Python code.
static bool fit_is_sequence(mp_obj_t o) {
    const mp_obj_type_t *t = mp_obj_get_type(o);
    return !mp_obj_is_subclass_fast(MP_OBJ_FROM_PTR(t), MP_OBJ_FROM_PTR(&mp_type_dict)) &&
        fit_type_subscriptable(t);
}

// fit(xs, ys, epochs=1, cache=True, shuffle=True, progress=None, probe=0) -> dict: a personalisation run.
// cache: True (the arena's cache region, then a heap buffer for as many of the other samples as
// the heap has room for), False, a writable buffer of len(xs) * plan.cache_bytes, or a file
// opened 'w+b' (seek/write/readinto).
static mp_obj_t tinymp_trainer_fit(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_xs, ARG_ys, ARG_epochs, ARG_cache, ARG_shuffle, ARG_progress, ARG_probe };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_xs, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_ys, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_epochs, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_cache, MP_ARG_OBJ, {.u_obj = mp_const_true} },
        { MP_QSTR_shuffle, MP_ARG_BOOL, {.u_bool = true} },
        { MP_QSTR_progress, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_probe, MP_ARG_OBJ, {.u_obj = mp_const_none} },
    };
    tinymp_trainer_obj_t *self = MP_OBJ_TO_PTR(pos_args[0]);
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args - 1, pos_args + 1, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    trainer_check(self);
    trainer_usable(self, 1, "fit()");
    uint32_t epochs = (uint32_t)opt_ranged_long(args[ARG_epochs].u_obj, TMP_IOPT_epochs);
    const uint32_t probe = (uint32_t)opt_ranged_long(args[ARG_probe].u_obj, TMP_IOPT_probe);
    mp_obj_t progress = args[ARG_progress].u_obj;
    if (progress != mp_const_none && !mp_obj_is_callable(progress)) {
        mp_raise_TypeError(MP_ERROR_TEXT("tinymp: progress must be callable or None"));
    }
    mp_obj_t xs = args[ARG_xs].u_obj, ys = args[ARG_ys].u_obj;
    mp_obj_t n_obj = MP_OBJ_NULL, ny_obj = MP_OBJ_NULL;
    if (!mp_obj_is_str_or_bytes(xs) && fit_is_sequence(xs) && fit_is_sequence(ys)) {
        n_obj = mp_obj_len_maybe(xs);
        ny_obj = mp_obj_len_maybe(ys);
    }
    if (n_obj == MP_OBJ_NULL || ny_obj == MP_OBJ_NULL) {
        mp_raise_TypeError(MP_ERROR_TEXT("tinymp: fit() takes a sequence of inputs and a sequence of labels"));
    }
    mp_int_t n = mp_obj_get_int(n_obj), ny = mp_obj_get_int(ny_obj);
    if (n != ny) {
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("tinymp: %d inputs but %d labels"), (int)n, (int)ny);
    }
    if (n <= 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("tinymp: fit() needs at least one sample"));
    }
    const tmp_train_plan *p = &trainer_plan(self)->plan;
    fit_ctx f = { self, xs, ys, MP_OBJ_NULL, progress, MP_OBJ_NULL, NULL, 0, p->cache_bytes, (uint32_t)n,
                  MP_OBJ_NULL, MP_OBJ_NULL, MP_OBJ_NULL, 0, 0, 0, 0, NULL, 0 };
    // every sample is checked before the first step: bad input changes nothing. Our own error
    // about a sample (a TypeError or ValueError "tinymp: ...") is raised again naming the sample,
    // as the PC binding does; any other exception (the sequence's own, an OSError of a file it
    // reads) propagates unchanged: an exception of the caller's class is never built here
    for (mp_int_t i = 0; i < n; i++) {
        int32_t label;
        if (fit_sample(&f, (uint32_t)i, &label) == NULL) {
            mp_obj_t e = f.pending;
            const mp_obj_type_t *et = mp_obj_get_type(e);
            mp_obj_t v = mp_obj_exception_get_value(e);
            if ((et != &mp_type_TypeError && et != &mp_type_ValueError) || !mp_obj_is_str(v) ||
                strncmp(mp_obj_str_get_str(v), "tinymp: ", 8) != 0) {
                nlr_raise(e);
            }
            mp_raise_msg_varg(et, MP_ERROR_TEXT("tinymp: fit() sample %d: %s"), (int)i, mp_obj_str_get_str(v) + 8);
        }
    }
    uint32_t flags = args[ARG_shuffle].u_bool ? 0u : TMP_FIT_NO_SHUFFLE;
    tmp_fit_io io = { fit_sample, NULL, NULL, fit_progress, &f, 0, probe };
    mp_obj_t cache = args[ARG_cache].u_obj;
    const uint64_t need = (uint64_t)n * p->cache_bytes;
    uint32_t own_count = 0;
    if (cache == mp_const_false || cache == mp_const_none) {
        flags |= TMP_FIT_NO_CACHE;
    } else if (cache == mp_const_true) {
        if (p->cache_bytes != 0 && (uint32_t)n > p->cache_samples && epochs > 1) {
            // room for the samples beyond the arena's, as many as the heap has: the rest (all of
            // them when it has none) run the prefix again
            f.own_cache = fit_own_cache((uint32_t)n - p->cache_samples, p->cache_bytes, &own_count);
            f.base = p->cache_samples;
            io.cache_end = p->cache_samples + own_count;
        }
    } else {
        mp_buffer_info_t cb;
        if (mp_get_buffer(cache, &cb, MP_BUFFER_WRITE)) {
            if ((uint64_t)cb.len < need) {
                mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("tinymp: the cache buffer has %u bytes; "
                    "%d samples need %u (plan.cache_bytes = %u per sample)"), (unsigned)cb.len, (int)n,
                    (unsigned)need, (unsigned)p->cache_bytes);
            }
            f.cache_obj = cache;
            io.cache_end = (uint32_t)n;
        } else {
            // a text file: CPython's has no readinto (refused just below there); MicroPython's
            // has, so it is refused by its type, and both say the same
            const qstr type_name = mp_obj_get_type(cache)->name;
            bool ok = type_name != MP_QSTR_TextIOWrapper && type_name != MP_QSTR_StringIO;
            static const qstr file_methods[] = { MP_QSTR_seek, MP_QSTR_write, MP_QSTR_readinto };
            for (size_t k = 0; k < MP_ARRAY_SIZE(file_methods) && ok; k++) {
                mp_obj_t dest[2];
                mp_load_method_maybe(cache, file_methods[k], dest);
                ok = dest[0] != MP_OBJ_NULL;
            }
            if (!ok) {
                mp_raise_TypeError(MP_ERROR_TEXT("tinymp: cache must be True, False, a writable buffer or a binary file"));
            }
            f.file = cache;
            io.cache_end = (uint32_t)n;
            // the file's methods get views of this block (its start: a kept slice keeps it
            // alive), never of the arena, which a kept view would outlive
            f.io_buf = m_new(uint8_t, p->cache_bytes != 0 ? p->cache_bytes : 1);
            if (p->cache_bytes != 0 && (uint32_t)n > p->cache_samples && epochs > 1) {
                f.probe_offset = p->cache_samples * p->cache_bytes; // where the first store would go
                fit_probe_file(&f);
            }
        }
    }
    if (f.own_cache != NULL || f.cache_obj != MP_OBJ_NULL || f.file != MP_OBJ_NULL) {
        io.cache_store = fit_store;
        io.cache_load = fit_load;
    }
    f.losses = mp_obj_new_list(0, NULL);
    f.accs = mp_obj_new_list(0, NULL);
    tmp_fit_stats st;
    tmp_status s;
    nlr_buf_t nlr;
    #if KBD_ASYNC
    // SIGINT only schedules a KeyboardInterrupt while the engine runs (kbd_defer); fit_progress
    // raises it between steps
    struct sigaction old_sigint;
    const int deferred = kbd_defer(&old_sigint);
    #endif
    if (nlr_push(&nlr) == 0) {
        s = tmp_trainer_fit(&self->t, (uint32_t)n, epochs, flags, &io, &st);
        nlr_pop();
        #if KBD_ASYNC
        kbd_undefer(deferred, &old_sigint);
        #endif
    } else {
        // the engine was left by a jump (a cache file's error, a resized arena or cache buffer,
        // no heap for a view): the trainer must not stay marked busy
        tmp_trainer_unwind(&self->t);
        #if KBD_ASYNC
        kbd_undefer(deferred, &old_sigint);
        #endif
        nlr_jump(nlr.ret_val);
    }
    if (f.own_cache != NULL) { // given back now, not at the next collection
        m_del(uint8_t, f.own_cache, (size_t)own_count * p->cache_bytes);
        f.own_cache = NULL;
    }
    if (f.pending != MP_OBJ_NULL) {
        nlr_raise(f.pending);
    }
    // a Ctrl-C after the last step (in the run's last period end) is fit()'s own, with the
    // trainer whole, not the caller's next statement's (which may be past its `except`)
    mp_handle_pending(true);
    trainer_status(self, s, "fit");
    fit_close_epoch(&f);
    mp_obj_t d = new_ordered_dict(10);
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_epochs), mp_obj_new_int_from_uint(st.epochs));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_steps), mp_obj_new_int_from_uint(st.steps));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_loss), f.losses);
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_accuracy), f.accs);
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_cached_steps), mp_obj_new_int_from_uint(st.cached_steps));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_cache_in_arena), mp_obj_new_int_from_uint(st.in_arena));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_cache_outside), mp_obj_new_int_from_uint(st.outside));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_cache_bytes), mp_obj_new_int_from_uint(p->cache_bytes));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_stopped), mp_obj_new_bool(st.stopped));
    mp_obj_dict_store(d, MP_OBJ_NEW_QSTR(MP_QSTR_stalled_steps), mp_obj_new_int_from_uint(st.stalled));
    return d;
}
static MP_DEFINE_CONST_FUN_OBJ_KW(tinymp_trainer_fit_obj, 1, tinymp_trainer_fit);

static void tinymp_trainer_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    tinymp_trainer_obj_t *self = MP_OBJ_TO_PTR(self_in);
    mp_printf(print, "<tinymp.Trainer method=%s steps=%u arena=%u bytes>",
        tmp_method_name(trainer_plan(self)->plan.method), (unsigned)self->t.steps,
        (unsigned)trainer_plan(self)->plan.arena_bytes);
}

static const mp_rom_map_elem_t tinymp_trainer_locals_dict_table[] = {
    { MP_ROM_QSTR(MP_QSTR_step), MP_ROM_PTR(&tinymp_trainer_step_obj) },
    { MP_ROM_QSTR(MP_QSTR_step_cached), MP_ROM_PTR(&tinymp_trainer_step_cached_obj) },
    { MP_ROM_QSTR(MP_QSTR_predict), MP_ROM_PTR(&tinymp_trainer_predict_obj) },
    { MP_ROM_QSTR(MP_QSTR_fit), MP_ROM_PTR(&tinymp_trainer_fit_obj) },
    { MP_ROM_QSTR(MP_QSTR_logits), MP_ROM_PTR(&tinymp_trainer_logits_obj) },
    { MP_ROM_QSTR(MP_QSTR_end_period), MP_ROM_PTR(&tinymp_trainer_end_period_obj) },
    { MP_ROM_QSTR(MP_QSTR_reset), MP_ROM_PTR(&tinymp_trainer_reset_obj) },
    { MP_ROM_QSTR(MP_QSTR_save), MP_ROM_PTR(&tinymp_trainer_save_obj) },
    { MP_ROM_QSTR(MP_QSTR_load), MP_ROM_PTR(&tinymp_trainer_load_obj) },
    { MP_ROM_QSTR(MP_QSTR_stats), MP_ROM_PTR(&tinymp_trainer_stats_obj) },
};
static MP_DEFINE_CONST_DICT(tinymp_trainer_locals_dict, tinymp_trainer_locals_dict_table);

MP_DEFINE_CONST_OBJ_TYPE(
    tinymp_type_trainer,
    MP_QSTR_Trainer,
    MP_TYPE_FLAG_NONE,
    make_new, tinymp_trainer_make_new,
    print, tinymp_trainer_print,
    attr, tinymp_trainer_attr,
    locals_dict, &tinymp_trainer_locals_dict
    );

/* ---------------------------------------------------------------- crc32 */

// crc32(data, crc=0) -> int: CRC-32 (IEEE, as zlib.crc32 / binascii.crc32), continuing from crc.
static mp_obj_t tinymp_crc32(size_t n_args, const mp_obj_t *args) {
    mp_buffer_info_t bi;
    if (mp_obj_is_str(args[0]) || !mp_get_buffer(args[0], &bi, MP_BUFFER_READ)) {
        raise_fmt(&mp_type_TypeError, "tinymp: crc32() needs a bytes-like object, not '%s'",
            mp_obj_get_type_str(args[0]));
    }
    uint32_t crc = n_args > 1 ? (uint32_t)mp_obj_get_int_truncated(args[1]) : 0u;
    return mp_obj_new_int_from_uint(tmp_crc32(crc, (const uint8_t *)bi.buf, bi.len));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(tinymp_crc32_obj, 1, 2, tinymp_crc32);

/* ================================================================ Model: attributes and type */

// Read-only attributes; methods are found in the locals dict.
static void tinymp_model_attr(mp_obj_t self_in, qstr attr, mp_obj_t *dest) {
    if (dest[0] != MP_OBJ_NULL) {
        return; // store/delete: leave dest untouched, the runtime raises AttributeError
    }
    tinymp_model_obj_t *self = MP_OBJ_TO_PTR(self_in);
    switch (attr) {
        case MP_QSTR_input_shape: {
            mp_obj_t t[3] = {
                MP_OBJ_NEW_SMALL_INT(self->input.dims.h),
                MP_OBJ_NEW_SMALL_INT(self->input.dims.w),
                MP_OBJ_NEW_SMALL_INT(self->input.dims.c),
            };
            dest[0] = mp_obj_new_tuple(3, t);
            break;
        }
        case MP_QSTR_num_classes:
            dest[0] = MP_OBJ_NEW_SMALL_INT(self->model.num_classes);
            break;
        case MP_QSTR_inference_arena_bytes:
            dest[0] = mp_obj_new_int_from_uint(self->plan.arena_bytes);
            break;
        case MP_QSTR_input_scale:
            dest[0] = mp_obj_new_float((mp_float_t)self->input.scale);
            break;
        case MP_QSTR_input_zero_point:
            dest[0] = mp_obj_new_int(self->input.zero_point);
            break;
        case MP_QSTR_class_names:
            dest[0] = self->class_names;
            break;
        default:
            dest[1] = MP_OBJ_SENTINEL; // continue the lookup in locals_dict
            break;
    }
}

static const mp_rom_map_elem_t tinymp_model_locals_dict_table[] = {
    { MP_ROM_QSTR(MP_QSTR_plan), MP_ROM_PTR(&tinymp_model_train_plan_obj) },
    { MP_ROM_QSTR(MP_QSTR_predict), MP_ROM_PTR(&tinymp_model_predict_obj) },
    { MP_ROM_QSTR(MP_QSTR_logits), MP_ROM_PTR(&tinymp_model_logits_obj) },
    { MP_ROM_QSTR(MP_QSTR__plan), MP_ROM_PTR(&tinymp_model_plan_obj) },
};
static MP_DEFINE_CONST_DICT(tinymp_model_locals_dict, tinymp_model_locals_dict_table);

MP_DEFINE_CONST_OBJ_TYPE(
    tinymp_type_model,
    MP_QSTR_Model,
    MP_TYPE_FLAG_NONE,
    make_new, tinymp_model_make_new,
    print, tinymp_model_print,
    attr, tinymp_model_attr,
    locals_dict, &tinymp_model_locals_dict
    );

/* ---------------------------------------------------------------- module */

static const MP_DEFINE_STR_OBJ(tinymp_version_obj, TINYMP_VERSION);

static const mp_rom_map_elem_t tinymp_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_tinymp) },
    { MP_ROM_QSTR(MP_QSTR_Model), MP_ROM_PTR(&tinymp_type_model) },
    { MP_ROM_QSTR(MP_QSTR_Plan), MP_ROM_PTR(&tinymp_type_plan) },
    { MP_ROM_QSTR(MP_QSTR_Trainer), MP_ROM_PTR(&tinymp_type_trainer) },
    { MP_ROM_QSTR(MP_QSTR_crc32), MP_ROM_PTR(&tinymp_crc32_obj) },
    { MP_ROM_QSTR(MP_QSTR___version__), MP_ROM_PTR(&tinymp_version_obj) },
};
static MP_DEFINE_CONST_DICT(tinymp_module_globals, tinymp_module_globals_table);

const mp_obj_module_t tinymp_user_cmodule = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&tinymp_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_tinymp, tinymp_user_cmodule);
