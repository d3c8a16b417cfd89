/*
 * tinymp: the MicroPython binding of the portable tinymp C core (core/tinymp.h).
 *
 * This file only converts between MicroPython objects and the core's C API: argument checks,
 * the buffer protocol, exceptions and object lifetimes. Every rule about what a valid model or
 * a valid inference is lives in the core, the same code the PC package (host/tinymp/_tinymp.c)
 * wraps. The public API and the error messages are the PC binding's, so a board script runs
 * unchanged on a PC:
 *
 *   Model(data)      data: bytes-like (bytes, bytearray, memoryview, array, any object with the
 *                    buffer protocol), used in place and kept alive by the model (copied once if
 *                    not 4-byte aligned); or a str path, read into RAM (used in place when the
 *                    file is in ROMFS, see open_model_file()).
 *     .input_shape, .num_classes, .inference_arena_bytes, .input_scale, .input_zero_point,
 *     .class_names
 *     .predict(x) -> int
 *     .logits(x, out=None) -> array('f')
 *     ._plan() -> dict                     (test hook, as on the PC)
 *   __version__
 *
 * Memory: the planner workspace, the arena (+ 16 guard bytes) and a logits scratch are taken
 * from the GC heap once, in Model(); predict() allocates nothing and logits() allocates only
 * the array it returns (nothing at all when `out` is given), so both run under
 * micropython.heap_lock(). Everything the model points at is reachable from the Model object,
 * so the GC keeps it alive for as long as the model lives; nothing needs a finaliser.
 */
#include <string.h>

#include "py/runtime.h"
#include "py/binary.h"
#include "py/objarray.h"
#include "py/objstr.h"
#include "py/builtin.h"
#include "py/stream.h"

#include "tinymp.h"

#if !MICROPY_PY_BUILTINS_FLOAT || !MICROPY_PY_ARRAY
#error "tinymp needs a MicroPython build with float support and the array module"
#endif

#define GUARD_BYTES 16
#define GUARD_FILL 0xA5

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
static MP_DEFINE_CONST_FUN_OBJ_KW(tinymp_model_logits_obj, 2, tinymp_model_logits);

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

/* ---------------------------------------------------------------- attributes */

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
    { MP_ROM_QSTR(MP_QSTR___version__), MP_ROM_PTR(&tinymp_version_obj) },
};
static MP_DEFINE_CONST_DICT(tinymp_module_globals, tinymp_module_globals_table);

const mp_obj_module_t tinymp_user_cmodule = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&tinymp_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_tinymp, tinymp_user_cmodule);
