/*
 * tinymp as a dynamic native module (py/dynruntime.mk): `tinymp.mpy`, copied to a board that runs
 * stock MicroPython firmware (`mpremote cp tinymp.mpy :`), no reflashing.
 *
 * The inference API of the firmware binding (../modtinymp.c), with the same behaviour and error
 * messages:
 *
 *   Model(data)      bytes-like (used in place, kept alive; copied once if not 4-byte aligned) or
 *                    a str path (a ROMFS file is used in place, other files are read into RAM)
 *     .input_shape, .num_classes, .inference_arena_bytes, .input_scale, .input_zero_point,
 *     .class_names
 *     .predict(x) -> int
 *     .logits(x, out=None) -> array('f')
 *   __version__
 *
 * Why a second binding file: a native module reaches MicroPython only through the native function
 * table (py/dynruntime.h), so the firmware binding's static type definitions, MP_REGISTER_MODULE,
 * formatted exceptions (mp_raise_msg_varg), nlr_push and direct array construction are not
 * available here. DUPLICATION RISK: the argument checks and messages below repeat those of
 * modtinymp.c; a change there must be made here too. tests/test_firmware_natmod.py runs the same
 * checks against both builds to catch drift.
 *
 * Limits of a native module, and how this file keeps them: no initialised writable data (.data):
 * none here or in the core; BSS only for non-static globals: the Model type and its method table,
 * filled once in mpy_init(); no libc: memcpy/memset/memmove/memcmp are provided below on top of
 * the native function table. Floats are the firmware's: single precision for ARCH=armv7emsp
 * (OpenMV Cam H7, STM32 boards), double for ARCH=x64 (the unix port). Only the inference part of
 * the core is linked (see Makefile); the Trainer is available in the firmware builds.
 */
#include <stdarg.h>

#include "py/dynruntime.h"

#include "tinymp.h"

#ifndef BYTEARRAY_TYPECODE
#define BYTEARRAY_TYPECODE 1
#endif

#define GUARD_BYTES 16
#define GUARD_FILL 0xA5

/* ---------------------------------------------------------------- libc on the function table */

void *memcpy(void *dst, const void *src, size_t n) {
    return mp_fun_table.memmove_(dst, src, n);
}

void *memmove(void *dst, const void *src, size_t n) {
    return mp_fun_table.memmove_(dst, src, n);
}

void *memset(void *s, int c, size_t n) {
    return mp_fun_table.memset_(s, c, n);
}

size_t strlen(const char *s) {
    size_t n = 0;
    while (s[n] != '\0') {
        n++;
    }
    return n;
}

int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *p = a, *q = b;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != q[i]) {
            return p[i] < q[i] ? -1 : 1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- the Model object */

typedef struct _tinymp_model_obj_t {
    mp_obj_base_t base;
    mp_obj_t owner;          // object whose memory holds the model (user's object, file, or copy)
    bool owner_is_copy;      // owner is our private aligned copy
    const uint8_t *data;     // 4-byte aligned model bytes
    size_t size;
    tmp_model model;
    tmp_plan plan;           // its arrays live in `workspace`
    tmp_tensor input;
    size_t input_bytes;
    void *workspace;
    uint8_t *arena;          // plan.arena_bytes + GUARD_BYTES
    float *logits_buf;       // num_classes float32
    mp_obj_t class_names;    // tuple of str, or None
} tinymp_model_obj_t;

// Filled in mpy_init() (BSS; a native module cannot have static initialised objects of these).
mp_obj_full_type_t tinymp_type_model;
mp_map_elem_t tinymp_model_locals_table[2];
static MP_DEFINE_CONST_DICT(tinymp_model_locals_dict, tinymp_model_locals_table);

/* ---------------------------------------------------------------- formatted exceptions */

typedef struct {
    char *buf;
    size_t len;
    size_t cap;
} msg_buf_t;

static void msg_strn(void *data, const char *str, size_t len) {
    msg_buf_t *mb = data;
    while (len > 0 && mb->len + 1 < mb->cap) {
        mb->buf[mb->len++] = *str++;
        len--;
    }
}

// mp_raise_msg_varg() is not in the native function table: format with mp_vprintf into a stack
// buffer, then raise type(str).
static MP_NORETURN void raise_fmt(const mp_obj_type_t *type, const char *fmt, ...) {
    char text[200];
    msg_buf_t mb = { text, 0, sizeof text };
    mp_print_t pr = { &mb, msg_strn };
    va_list ap;
    va_start(ap, fmt);
    mp_vprintf(&pr, fmt, ap);
    va_end(ap);
    nlr_raise(mp_obj_new_exception_arg1(type, mp_obj_new_str(text, mb.len)));
}

static MP_NORETURN void raise_model_error(const tmp_error *err) {
    const char *msg = err->msg != NULL ? err->msg : "invalid model";
    if (err->layer >= 0) {
        raise_fmt(&mp_type_ValueError, "tinymp: layer %d (%s): %s", (int)err->layer,
            tmp_layer_type_name(err->layer_type), msg);
    } else if (err->tensor >= 0) {
        raise_fmt(&mp_type_ValueError, "tinymp: tensor %d: %s", (int)err->tensor, msg);
    }
    raise_fmt(&mp_type_ValueError, "tinymp: %s", msg);
}

static MP_NORETURN void raise_status(const char *what, tmp_status st) {
    if (st == TMP_ERR_FORMAT || st == TMP_ERR_SIZE) {
        raise_fmt(&mp_type_ValueError, "tinymp: the model data changed after loading (%s: %s)",
            what, tmp_status_name(st));
    }
    raise_fmt(&mp_type_RuntimeError, "tinymp: %s failed (status %d: %s)", what, (int)st,
        tmp_status_name(st));
}

/* ---------------------------------------------------------------- helpers */

// The type name for messages (mp_obj_get_type_str is not in the native table; %q prints it).
static qstr type_name(mp_obj_t o) {
    return (qstr)mp_obj_get_type(o)->name;
}

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

// Follow a bytearray that moved since Model(); refuse one that shrank. Allocates nothing.
static void check_model_buffer(tinymp_model_obj_t *self) {
    if (self->owner_is_copy) {
        return;
    }
    mp_buffer_info_t bi;
    if (!mp_get_buffer(self->owner, &bi, MP_BUFFER_READ) || bi.len < self->model.size ||
        ((uintptr_t)bi.buf & 3u) != 0) {
        mp_raise_ValueError("tinymp: the model buffer was resized after loading");
    }
    if ((const uint8_t *)bi.buf != self->data) {
        self->data = (const uint8_t *)bi.buf;
        self->model.data = self->data;
    }
}

static void get_input(tinymp_model_obj_t *self, mp_obj_t x, mp_buffer_info_t *bi) {
    const tmp_dims *d = &self->input.dims;
    if (mp_obj_is_str(x) || !mp_get_buffer(x, bi, MP_BUFFER_READ)) {
        raise_fmt(&mp_type_TypeError,
            "tinymp: input must be a bytes-like object of %d int8 values, not '%q'",
            (int)(d->h * d->w * d->c), type_name(x));
    }
    size_t isz = item_size(bi);
    if (isz != 1) {
        raise_fmt(&mp_type_TypeError,
            "tinymp: input must hold int8 bytes (itemsize 1), got items of %d bytes (format '%c')",
            (int)isz, format_char(bi));
    }
    if (bi->len != self->input_bytes) {
        raise_fmt(&mp_type_ValueError,
            "tinymp: input has %u bytes, model expects H*W*C = %u (%dx%dx%d int8)",
            (unsigned)bi->len, (unsigned)self->input_bytes, (int)d->h, (int)d->w, (int)d->c);
    }
}

static const int8_t *run(tinymp_model_obj_t *self, mp_obj_t x) {
    mp_buffer_info_t bi;
    get_input(self, x, &bi);
    check_model_buffer(self);
    const int8_t *out = NULL;
    tmp_status st = tmp_infer(&self->model, &self->plan, (const int8_t *)bi.buf, self->arena,
        self->plan.arena_bytes, -1, &out);
    if (!guard_intact(self)) {
        fill_guard(self);
        mp_raise_msg(&mp_type_RuntimeError, "tinymp: arena overrun (engine bug)");
    }
    if (st != TMP_OK) {
        raise_status("inference", st);
    }
    return out;
}

// A class name as str; invalid UTF-8 becomes U+FFFD per maximal invalid subpart, as CPython's
// bytes.decode('utf-8', 'replace') does.
static mp_obj_t decode_name(const char *s) {
    const uint8_t *p = (const uint8_t *)s;
    size_t n = strlen(s);
    uint8_t *out = m_new(uint8_t, 3 * n + 1);
    size_t o = 0, i = 0;
    while (i < n) {
        uint8_t c = p[i];
        size_t need = 0;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            out[o++] = c;
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
            memcpy(out + o, p + i, k);
            o += k;
        } else {
            out[o++] = 0xEF;
            out[o++] = 0xBF;
            out[o++] = 0xBD;
        }
        i += k;
    }
    mp_obj_t str = mp_obj_new_str((const char *)out, o);
    m_free(out);
    return str;
}

static mp_obj_t make_class_names(const tmp_model *m) {
    if (m->num_classes == 0 || tmp_model_class_name(m, 0) == NULL) {
        return mp_const_none;
    }
    mp_obj_t items[m->num_classes];
    for (int32_t k = 0; k < (int32_t)m->num_classes; k++) {
        const char *s = tmp_model_class_name(m, k);
        items[k] = decode_name(s != NULL ? s : "");
    }
    return mp_obj_new_tuple(m->num_classes, items);
}

static void attach_buffer(tinymp_model_obj_t *self, mp_obj_t obj, const mp_buffer_info_t *bi) {
    self->size = bi->len;
    if (((uintptr_t)bi->buf & 3u) == 0) {
        self->owner = obj;
        self->owner_is_copy = false;
        self->data = (const uint8_t *)bi->buf;
        return;
    }
    uint8_t *copy = m_new(uint8_t, bi->len > 0 ? bi->len : 1);
    memcpy(copy, bi->buf, bi->len);
    self->owner = mp_obj_new_bytearray_by_ref(bi->len, copy);
    self->owner_is_copy = true;
    self->data = copy;
}

// open(path, 'rb'): a ROMFS file exports its bytes in place (memory-mapped flash) and is kept as
// the owner; any other file is read whole and closed. (Unlike the firmware binding, a failing
// read() leaves the file to the garbage collector: nlr_push is not in the native table.)
static void open_model_file(tinymp_model_obj_t *self, mp_obj_t path) {
    mp_obj_t args[2] = { path, MP_OBJ_NEW_QSTR(MP_QSTR_rb) };
    mp_obj_t f = mp_call_function_n_kw(mp_load_global(MP_QSTR_open), 2, 0, args);
    mp_buffer_info_t bi;
    if (mp_get_buffer(f, &bi, MP_BUFFER_READ)) {
        attach_buffer(self, f, &bi);
        return;
    }
    mp_obj_t content = mp_call_function_n_kw(mp_load_attr(f, MP_QSTR_read), 0, 0, NULL);
    mp_call_function_n_kw(mp_load_attr(f, MP_QSTR_close), 0, 0, NULL);
    if (!mp_get_buffer(content, &bi, MP_BUFFER_READ) || mp_obj_is_str(content)) {
        mp_raise_TypeError("tinymp: file read did not return bytes");
    }
    attach_buffer(self, content, &bi);
}

/* ---------------------------------------------------------------- construction */

static mp_obj_t tinymp_model_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *all_args) {
    mp_arg_check_num(n_args, n_kw, 1, 1, false);
    mp_obj_t data = all_args[0];

    tinymp_model_obj_t *self = mp_obj_malloc(tinymp_model_obj_t, type);
    self->owner = mp_const_none;
    self->class_names = mp_const_none;

    mp_buffer_info_t bi;
    if (mp_obj_is_str(data)) {
        open_model_file(self, data);
    } else if (mp_get_buffer(data, &bi, MP_BUFFER_READ)) {
        attach_buffer(self, data, &bi);
    } else {
        raise_fmt(&mp_type_TypeError,
            "tinymp: Model() expects a bytes-like object or a file path, not '%q'",
            type_name(data));
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
        mp_raise_ValueError("tinymp: cannot decode the input tensor");
    }
    self->input_bytes =
        (size_t)self->input.dims.h * (size_t)self->input.dims.w * (size_t)self->input.dims.c;

    size_t ws_size = tmp_plan_workspace_size(&self->model);
    self->workspace = m_new(uint8_t, ws_size > 0 ? ws_size : 4);
    tmp_status st = tmp_plan_inference(&self->model, self->workspace, ws_size, &self->plan);
    if (st != TMP_OK) {
        raise_status("planner", st);
    }
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

static mp_obj_t tinymp_model_predict(mp_obj_t self_in, mp_obj_t x) {
    tinymp_model_obj_t *self = MP_OBJ_TO_PTR(self_in);
    const int8_t *q = run(self, x);
    return mp_obj_new_int(tmp_argmax_s8(q, (int32_t)self->model.num_classes));
}
static MP_DEFINE_CONST_FUN_OBJ_2(tinymp_model_predict_obj, tinymp_model_predict);

static void get_out(tinymp_model_obj_t *self, mp_obj_t out, mp_buffer_info_t *bi) {
    const int n = (int)self->model.num_classes;
    if (!mp_get_buffer(out, bi, MP_BUFFER_WRITE)) {
        raise_fmt(&mp_type_TypeError,
            "tinymp: out must be a writable C-contiguous buffer of %d float32, not '%q'",
            n, type_name(out));
    }
    size_t isz = item_size(bi);
    if (!((isz == 4 && bi->typecode == 'f') || isz == 1)) {
        raise_fmt(&mp_type_TypeError, "tinymp: out must hold float32 (format 'f'), got format '%c'",
            format_char(bi));
    }
    if (bi->len != sizeof(float) * (size_t)n) {
        raise_fmt(&mp_type_ValueError,
            "tinymp: out has %u bytes, expected num_classes*4 = %u (%d float32)",
            (unsigned)bi->len, (unsigned)(sizeof(float) * (size_t)n), n);
    }
}

// logits(x, out=None) -> array('f'). With `out` it allocates nothing.
static mp_obj_t tinymp_model_logits(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_x, ARG_out };
    // Not static: in a native module qstrs are looked up at load time, not constants.
    const mp_arg_t allowed_args[] = {
        { MP_QSTR_x, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_out, MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
    };
    tinymp_model_obj_t *self = MP_OBJ_TO_PTR(pos_args[0]);
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args - 1, pos_args + 1, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args,
        args);
    mp_obj_t out = args[ARG_out].u_obj;
    const size_t n = self->model.num_classes;

    if (out != MP_OBJ_NULL && out != mp_const_none) {
        mp_buffer_info_t ob;
        get_out(self, out, &ob);
        const int8_t *q = run(self, args[ARG_x].u_obj);
        tmp_dequantize_output(&self->model, q, self->logits_buf);
        memcpy(ob.buf, self->logits_buf, sizeof(float) * n);
        return out;
    }
    const int8_t *q = run(self, args[ARG_x].u_obj);
    tmp_dequantize_output(&self->model, q, self->logits_buf);
    // array('f', bytearray) copies the raw bytes in MicroPython: n float32 items.
    mp_obj_t mod = mp_import_name(MP_QSTR_array, mp_const_none, MP_OBJ_NEW_SMALL_INT(0));
    mp_obj_t cargs[2] = {
        MP_OBJ_NEW_QSTR(MP_QSTR_f),
        mp_obj_new_bytearray_by_ref(sizeof(float) * n, self->logits_buf),
    };
    return mp_call_function_n_kw(mp_load_attr(mod, MP_QSTR_array), 2, 0, cargs);
}
static MP_DEFINE_CONST_FUN_OBJ_KW(tinymp_model_logits_obj, 1, tinymp_model_logits);

/* ---------------------------------------------------------------- attributes */

static void tinymp_model_attr(mp_obj_t self_in, qstr attr, mp_obj_t *dest) {
    if (dest[0] != MP_OBJ_NULL) {
        return; // store/delete: the runtime raises AttributeError
    }
    tinymp_model_obj_t *self = MP_OBJ_TO_PTR(self_in);
    if (attr == MP_QSTR_input_shape) {
        mp_obj_t t[3] = {
            mp_obj_new_int(self->input.dims.h),
            mp_obj_new_int(self->input.dims.w),
            mp_obj_new_int(self->input.dims.c),
        };
        dest[0] = mp_obj_new_tuple(3, t);
    } else if (attr == MP_QSTR_num_classes) {
        dest[0] = mp_obj_new_int(self->model.num_classes);
    } else if (attr == MP_QSTR_inference_arena_bytes) {
        dest[0] = mp_obj_new_int_from_uint(self->plan.arena_bytes);
    } else if (attr == MP_QSTR_input_scale) {
        dest[0] = mp_obj_new_float((mp_float_t)self->input.scale);
    } else if (attr == MP_QSTR_input_zero_point) {
        dest[0] = mp_obj_new_int(self->input.zero_point);
    } else if (attr == MP_QSTR_class_names) {
        dest[0] = self->class_names;
    } else {
        dest[1] = MP_OBJ_SENTINEL; // continue the lookup in the locals dict
    }
}

/* ---------------------------------------------------------------- module */

mp_obj_t mpy_init(mp_obj_fun_bc_t *self, size_t n_args, size_t n_kw, mp_obj_t *args) {
    MP_DYNRUNTIME_INIT_ENTRY

    tinymp_type_model.base.type = (void *)&mp_type_type;
    tinymp_type_model.flags = MP_TYPE_FLAG_NONE;
    tinymp_type_model.name = MP_QSTR_Model;
    MP_OBJ_TYPE_SET_SLOT(&tinymp_type_model, make_new, tinymp_model_make_new, 0);
    MP_OBJ_TYPE_SET_SLOT(&tinymp_type_model, print, tinymp_model_print, 1);
    MP_OBJ_TYPE_SET_SLOT(&tinymp_type_model, attr, tinymp_model_attr, 2);
    tinymp_model_locals_table[0] = (mp_map_elem_t){ MP_OBJ_NEW_QSTR(MP_QSTR_predict),
                                                    MP_OBJ_FROM_PTR(&tinymp_model_predict_obj) };
    tinymp_model_locals_table[1] = (mp_map_elem_t){ MP_OBJ_NEW_QSTR(MP_QSTR_logits),
                                                    MP_OBJ_FROM_PTR(&tinymp_model_logits_obj) };
    MP_OBJ_TYPE_SET_SLOT(&tinymp_type_model, locals_dict, (void *)&tinymp_model_locals_dict, 3);

    mp_store_global(MP_QSTR_Model, MP_OBJ_FROM_PTR(&tinymp_type_model));
    mp_store_global(MP_QSTR___version__, mp_obj_new_str(TINYMP_VERSION, sizeof(TINYMP_VERSION) - 1));

    MP_DYNRUNTIME_INIT_EXIT
}
