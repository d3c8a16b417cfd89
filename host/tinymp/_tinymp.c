/*
 * tinymp._tinymp: the CPython binding of the portable tinymp C core.
 *
 * This file only converts between Python objects and the core's C API (core/tinymp.h); every
 * rule about what a valid model or a valid inference is lives in the core, which is the same
 * code that runs on the board. The public API mirrors the MicroPython module exactly, so an
 * on-board script runs unchanged on a PC; the underscore methods are PC-only test hooks.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <string.h>

#include "tinymp.h"

#define GUARD_BYTES 16
#define GUARD_FILL 0xA5
#define PROBE_FILL 0x5A

PyDoc_STRVAR(module_doc,
"tinymp._tinymp: on-device CNN personalisation engine (C core, CPython binding).\n"
"\n"
"The same portable C core runs on the microcontroller (MicroPython module `tinymp`) and here;\n"
"the API below is identical on both, so board scripts run unchanged on a PC.\n"
"\n"
"Model(data)\n"
"    Load and validate a .tmpm model (docs/FORMAT.md) and plan its inference arena.\n"
"    data: a bytes-like object (bytes, bytearray, memoryview, any C-contiguous buffer), used in\n"
"    place and kept alive by the model (copied once if not 4-byte aligned); or a file path\n"
"    (str or os.PathLike), read into memory. A malformed model raises ValueError\n"
"    ('tinymp: layer 12 (dwconv): ...'); a missing file raises the OSError of open()\n"
"    (FileNotFoundError); anything else raises TypeError.\n"
"\n"
"  Read-only attributes:\n"
"    input_shape            (H, W, C) of the int8 input\n"
"    num_classes            number of output classes\n"
"    inference_arena_bytes  bytes of RAM one inference uses (the planned arena)\n"
"    input_scale            float: real value = (q - input_zero_point) * input_scale\n"
"    input_zero_point       int\n"
"    class_names            tuple of str, or None when the model has none\n"
"\n"
"  Methods:\n"
"    predict(x) -> int\n"
"        Index of the largest output (the first on ties).\n"
"    logits(x, out=None) -> array('f')\n"
"        The num_classes dequantised outputs. `out`, when given, must be a writable buffer of\n"
"        exactly num_classes float32 (num_classes*4 bytes); it is filled and returned.\n"
"    x: a C-contiguous buffer of exactly H*W*C int8 bytes (bytes, bytearray, array('b'),\n"
"    numpy int8/uint8); a buffer of another size raises ValueError, a non-buffer or a buffer\n"
"    whose items are not bytes (e.g. float32) raises TypeError.\n"
"\n"
"__version__: version of the C core.\n"
"\n"
"PC-only test hooks (not on the board): Model._run_to(x, layer) -> bytes,\n"
"Model._probe(x) -> (high_water, guard_intact), Model._plan() -> dict, Model._layers() -> list.\n");

typedef struct {
    PyObject_HEAD
    PyObject *owner;       /* object whose memory holds the model (user's object or private copy) */
    Py_buffer view;        /* exported buffer of `owner`, valid when has_view */
    int has_view;
    int ready;             /* 1 once fully initialised; 0 after tp_clear */
    const uint8_t *data;   /* 4-byte aligned model bytes */
    size_t size;
    tmp_model model;
    tmp_plan plan;
    tmp_tensor input;
    size_t input_bytes;
    void *workspace;       /* planner workspace (PyMem) */
    uint8_t *arena;        /* plan.arena_bytes + GUARD_BYTES (PyMem, >= 8-byte aligned) */
    float *logits_buf;     /* num_classes floats, aligned scratch for dequantisation */
    PyObject *class_names; /* tuple of str, or Py_None */
} ModelObject;

static PyTypeObject Model_Type;
static PyObject *array_type; /* array.array */

/* ---------------------------------------------------------------- helpers */

static void set_model_error(const tmp_error *err) {
    const char *msg = err->msg != NULL ? err->msg : "invalid model";
    if (err->layer >= 0) {
        PyErr_Format(PyExc_ValueError, "tinymp: layer %d (%s): %s", (int)err->layer,
            tmp_layer_type_name(err->layer_type), msg);
    } else if (err->tensor >= 0) {
        PyErr_Format(PyExc_ValueError, "tinymp: tensor %d: %s", (int)err->tensor, msg);
    } else {
        PyErr_Format(PyExc_ValueError, "tinymp: %s", msg);
    }
}

static int check_ready(ModelObject *self) {
    if (!self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "tinymp: model is not initialised");
        return -1;
    }
    return 0;
}

static void fill_guard(ModelObject *self) {
    memset(self->arena + self->plan.arena_bytes, GUARD_FILL, GUARD_BYTES);
}

static int guard_intact(const ModelObject *self) {
    const uint8_t *g = self->arena + self->plan.arena_bytes;
    for (int i = 0; i < GUARD_BYTES; i++) {
        if (g[i] != GUARD_FILL) {
            return 0;
        }
    }
    return 1;
}

/* Get the input buffer `x` (itemsize 1, exactly H*W*C bytes; strided views are copied). */
static int get_input(ModelObject *self, PyObject *x, Py_buffer *v) {
    const tmp_dims *d = &self->input.dims;
    if (!PyObject_CheckBuffer(x)) {
        PyErr_Format(PyExc_TypeError,
            "tinymp: input must be a bytes-like object of %d int8 values, not '%.200s'",
            (int)(d->h * d->w * d->c), Py_TYPE(x)->tp_name);
        return -1;
    }
    if (PyObject_GetBuffer(x, v, PyBUF_FULL_RO) < 0) {
        return -1;
    }
    if (v->itemsize == 1 && !PyBuffer_IsContiguous(v, 'C')) {
        /* A strided view (e.g. a numpy slice) is copied once into a contiguous bytes object. */
        PyObject *copy = PyBytes_FromStringAndSize(NULL, v->len);
        if (copy == NULL || PyBuffer_ToContiguous(PyBytes_AS_STRING(copy), v, v->len, 'C') < 0) {
            Py_XDECREF(copy);
            PyBuffer_Release(v);
            return -1;
        }
        PyBuffer_Release(v);
        int r = PyObject_GetBuffer(copy, v, PyBUF_FULL_RO); /* v keeps the copy alive */
        Py_DECREF(copy);
        if (r < 0) {
            return -1;
        }
    }
    if (v->itemsize != 1) {
        PyErr_Format(PyExc_TypeError,
            "tinymp: input must hold int8 bytes (itemsize 1), got items of %zd bytes (format '%s')",
            v->itemsize, v->format != NULL ? v->format : "B");
        PyBuffer_Release(v);
        return -1;
    }
    if ((size_t)v->len != self->input_bytes) {
        PyErr_Format(PyExc_ValueError,
            "tinymp: input has %zd bytes, model expects H*W*C = %zu (%dx%dx%d int8)", v->len,
            self->input_bytes, (int)d->h, (int)d->w, (int)d->c);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

/* Run layers 0..last_layer (-1: all) on `x`. On success *out points into the arena. */
static int run(ModelObject *self, PyObject *x, int32_t last_layer, const int8_t **out) {
    Py_buffer v;
    if (check_ready(self) < 0 || get_input(self, x, &v) < 0) {
        return -1;
    }
    tmp_status st = tmp_infer(&self->model, &self->plan, (const int8_t *)v.buf, self->arena,
        self->plan.arena_bytes, last_layer, out);
    PyBuffer_Release(&v);
    if (!guard_intact(self)) {
        fill_guard(self);
        PyErr_SetString(PyExc_RuntimeError, "tinymp: arena overrun (engine bug)");
        return -1;
    }
    if (st == TMP_ERR_FORMAT || st == TMP_ERR_SIZE) {
        /* the model's bytes were edited after loading and no longer match its validation/plan */
        PyErr_Format(PyExc_ValueError, "tinymp: the model data changed after loading (inference: %s)",
            tmp_status_name(st));
        return -1;
    }
    if (st != TMP_OK) {
        PyErr_Format(PyExc_RuntimeError, "tinymp: inference failed (status %d: %s)", (int)st,
            tmp_status_name(st));
        return -1;
    }
    return 0;
}

/* Read the file at `path` (str / os.PathLike) into a bytes object. */
static PyObject *read_file(PyObject *path) {
    PyObject *io = PyImport_ImportModule("io");
    if (io == NULL) {
        return NULL;
    }
    PyObject *f = PyObject_CallMethod(io, "open", "Os", path, "rb");
    Py_DECREF(io);
    if (f == NULL) {
        return NULL;
    }
    PyObject *content = PyObject_CallMethod(f, "read", NULL);
    PyObject *r = PyObject_CallMethod(f, "close", NULL);
    Py_DECREF(f);
    if (r == NULL) {
        Py_XDECREF(content);
        return NULL;
    }
    Py_DECREF(r);
    if (content != NULL && !PyBytes_Check(content)) {
        Py_DECREF(content);
        PyErr_SetString(PyExc_TypeError, "tinymp: file read did not return bytes");
        return NULL;
    }
    return content;
}

/* Point self->data at the model bytes of `obj` (a buffer exporter), copying if misaligned. */
static int attach_buffer(ModelObject *self, PyObject *obj) {
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_C_CONTIGUOUS) < 0) {
        if (PyErr_ExceptionMatches(PyExc_ValueError) || PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear(); /* e.g. a strided numpy view: the engine reads the model in place */
            PyErr_Format(PyExc_ValueError, "tinymp: the model must be one contiguous buffer (bytes, "
                "bytearray, a contiguous array), not a strided '%.200s'", Py_TYPE(obj)->tp_name);
        }
        return -1;
    }
    self->has_view = 1;
    Py_INCREF(obj);
    self->owner = obj;
    self->size = (size_t)self->view.len;
    if (((uintptr_t)self->view.buf & 3u) == 0) {
        self->data = (const uint8_t *)self->view.buf;
        return 0;
    }
    /* Misaligned: one private copy at a 4-byte aligned offset inside a bytes object. */
    PyObject *copy = PyBytes_FromStringAndSize(NULL, self->view.len + 3);
    if (copy == NULL) {
        return -1;
    }
    char *base = PyBytes_AS_STRING(copy);
    size_t off = (size_t)(-(uintptr_t)base & 3u);
    memset(base, 0, (size_t)self->view.len + 3);
    memcpy(base + off, self->view.buf, (size_t)self->view.len);
    PyBuffer_Release(&self->view);
    self->has_view = 0;
    Py_SETREF(self->owner, copy);
    self->data = (const uint8_t *)(base + off);
    return 0;
}

static PyObject *make_class_names(const tmp_model *m) {
    if (m->num_classes == 0 || tmp_model_class_name(m, 0) == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *t = PyTuple_New(m->num_classes);
    if (t == NULL) {
        return NULL;
    }
    for (int32_t k = 0; k < (int32_t)m->num_classes; k++) {
        const char *s = tmp_model_class_name(m, k);
        PyObject *name = PyUnicode_DecodeUTF8(s != NULL ? s : "", s != NULL ? (Py_ssize_t)strlen(s) : 0,
            "replace");
        if (name == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, k, name);
    }
    return t;
}

/* ---------------------------------------------------------------- type slots */

static int Model_traverse(ModelObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->owner);
    Py_VISIT(self->class_names);
    return 0;
}

static int Model_clear(ModelObject *self) {
    self->ready = 0;
    self->data = NULL;
    if (self->has_view) {
        self->has_view = 0;
        PyBuffer_Release(&self->view);
    }
    Py_CLEAR(self->owner);
    Py_CLEAR(self->class_names);
    return 0;
}

static void Model_dealloc(ModelObject *self) {
    PyObject_GC_UnTrack(self);
    Model_clear(self);
    PyMem_Free(self->workspace);
    PyMem_Free(self->arena);
    PyMem_Free(self->logits_buf);
    self->workspace = NULL;
    self->arena = NULL;
    self->logits_buf = NULL;
    PyObject_GC_Del(self);
}

static PyObject *Model_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"data", NULL};
    PyObject *data;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Model", kwlist, &data)) {
        return NULL;
    }
    ModelObject *self = PyObject_GC_New(ModelObject, type);
    if (self == NULL) {
        return NULL;
    }
    /* Zero everything after the object header so dealloc is safe on any early failure. */
    memset((char *)self + sizeof(PyObject), 0, sizeof(ModelObject) - sizeof(PyObject));
    PyObject_GC_Track(self);

    if (PyObject_CheckBuffer(data)) {
        if (attach_buffer(self, data) < 0) {
            goto fail;
        }
    } else if (PyUnicode_Check(data) || PyObject_HasAttrString(data, "__fspath__")) {
        PyObject *content = read_file(data);
        if (content == NULL) {
            goto fail;
        }
        int r = attach_buffer(self, content);
        Py_DECREF(content);
        if (r < 0) {
            goto fail;
        }
    } else {
        PyErr_Format(PyExc_TypeError,
            "tinymp: Model() expects a bytes-like object or a file path, not '%.200s'",
            Py_TYPE(data)->tp_name);
        goto fail;
    }

    tmp_error err;
    memset(&err, 0, sizeof err);
    err.layer = -1;
    err.layer_type = -1;
    err.tensor = -1;
    if (tmp_model_init(&self->model, self->data, self->size, &err) != TMP_OK) {
        set_model_error(&err);
        goto fail;
    }
    if (tmp_model_input(&self->model, &self->input) != TMP_OK) {
        PyErr_SetString(PyExc_ValueError, "tinymp: cannot decode the input tensor");
        goto fail;
    }
    self->input_bytes =
        (size_t)self->input.dims.h * (size_t)self->input.dims.w * (size_t)self->input.dims.c;

    size_t ws_size = tmp_plan_workspace_size(&self->model);
    self->workspace = PyMem_Malloc(ws_size > 0 ? ws_size : 1);
    if (self->workspace == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    tmp_status st = tmp_plan_inference(&self->model, self->workspace, ws_size, &self->plan);
    if (st != TMP_OK) {
        PyErr_Format(PyExc_RuntimeError, "tinymp: planner failed (status %d: %s)", (int)st,
            tmp_status_name(st));
        goto fail;
    }

    /* One allocation: the arena, then the guard. PyMem_Malloc is >= 8-byte aligned. */
    self->arena = (uint8_t *)PyMem_Malloc((size_t)self->plan.arena_bytes + GUARD_BYTES);
    if (self->arena == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    fill_guard(self);

    self->logits_buf = (float *)PyMem_Malloc(sizeof(float) * (self->model.num_classes + 1u));
    if (self->logits_buf == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    self->class_names = make_class_names(&self->model);
    if (self->class_names == NULL) {
        goto fail;
    }
    self->ready = 1;
    return (PyObject *)self;

fail:
    Py_DECREF(self);
    return NULL;
}

static PyObject *Model_repr(ModelObject *self) {
    if (!self->ready) {
        return PyUnicode_FromString("<tinymp.Model (uninitialised)>");
    }
    return PyUnicode_FromFormat("<tinymp.Model input=%dx%dx%d classes=%d layers=%d arena=%lu bytes>",
        (int)self->input.dims.h, (int)self->input.dims.w, (int)self->input.dims.c,
        (int)self->model.num_classes, (int)self->model.num_layers,
        (unsigned long)self->plan.arena_bytes);
}

/* ---------------------------------------------------------------- public methods */

PyDoc_STRVAR(predict_doc,
"predict(x) -> int\n\nRun one inference on x (H*W*C int8 bytes); index of the largest output.");

static PyObject *Model_predict(ModelObject *self, PyObject *x) {
    const int8_t *out = NULL;
    if (run(self, x, -1, &out) < 0) {
        return NULL;
    }
    return PyLong_FromLong((long)tmp_argmax_s8(out, (int32_t)self->model.num_classes));
}

PyDoc_STRVAR(logits_doc,
"logits(x, out=None) -> array('f')\n\nRun one inference on x; the num_classes dequantised\n"
"outputs. If out (a writable buffer of num_classes float32) is given, fill and return it.");

/* Get `out` as a writable C-contiguous buffer of num_classes float32. */
static int get_out(ModelObject *self, PyObject *out, Py_buffer *v) {
    const size_t want = sizeof(float) * self->model.num_classes;
    const int n = (int)self->model.num_classes;
    if (!PyObject_CheckBuffer(out) ||
        PyObject_GetBuffer(out, v, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        /* exporters refuse a read-only or strided buffer with BufferError or ValueError */
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_BufferError) &&
            !PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_ValueError)) {
            return -1;
        }
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
            "tinymp: out must be a writable C-contiguous buffer of %d float32, not '%.200s'", n,
            Py_TYPE(out)->tp_name);
        return -1;
    }
    const char *fmt = v->format != NULL ? v->format : "B";
    size_t fl = strlen(fmt);
    int is_f32 = v->itemsize == 4 && fl >= 1 && fmt[fl - 1] == 'f' && fmt[0] != '>' && fmt[0] != '!';
    if (!(is_f32 || v->itemsize == 1)) {
        PyErr_Format(PyExc_TypeError,
            "tinymp: out must hold float32 (format 'f'), got format '%s'", fmt);
        PyBuffer_Release(v);
        return -1;
    }
    if ((size_t)v->len != want) {
        PyErr_Format(PyExc_ValueError,
            "tinymp: out has %zd bytes, expected num_classes*4 = %zu (%d float32)", v->len, want, n);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

static PyObject *Model_logits(ModelObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "out", NULL};
    PyObject *x, *out = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:logits", kwlist, &x, &out)) {
        return NULL;
    }
    if (check_ready(self) < 0) {
        return NULL;
    }
    const size_t nbytes = sizeof(float) * self->model.num_classes;
    Py_buffer ov;
    int have_out = out != Py_None;
    if (have_out && get_out(self, out, &ov) < 0) {
        return NULL;
    }
    const int8_t *q = NULL;
    if (run(self, x, -1, &q) < 0) {
        if (have_out) {
            PyBuffer_Release(&ov);
        }
        return NULL;
    }
    tmp_dequantize_output(&self->model, q, self->logits_buf);
    if (have_out) {
        memcpy(ov.buf, self->logits_buf, nbytes); /* `out` may be misaligned: copy bytes */
        PyBuffer_Release(&ov);
        Py_INCREF(out);
        return out;
    }
    PyObject *raw = PyBytes_FromStringAndSize((const char *)self->logits_buf, (Py_ssize_t)nbytes);
    if (raw == NULL) {
        return NULL;
    }
    PyObject *arr = PyObject_CallFunction(array_type, "sO", "f", raw);
    Py_DECREF(raw);
    return arr;
}

/* ---------------------------------------------------------------- test hooks */

PyDoc_STRVAR(run_to_doc,
"_run_to(x, layer) -> bytes\n\n(test hook) Run layers 0..layer; the int8 output tensor of layer.");

static PyObject *Model_run_to(ModelObject *self, PyObject *args) {
    PyObject *x;
    int layer;
    if (!PyArg_ParseTuple(args, "Oi:_run_to", &x, &layer)) {
        return NULL;
    }
    if (check_ready(self) < 0) {
        return NULL;
    }
    if (layer < 0 || layer >= (int)self->model.num_layers) {
        PyErr_Format(PyExc_ValueError, "tinymp: layer %d out of range (model has %d layers)", layer,
            (int)self->model.num_layers);
        return NULL;
    }
    tmp_tensor t;
    tmp_error err;
    memset(&err, 0, sizeof err);
    err.layer = err.layer_type = err.tensor = -1;
    if (tmp_model_tensor(&self->model, layer + 1, &t, &err) != TMP_OK) {
        set_model_error(&err);
        return NULL;
    }
    const int8_t *out = NULL;
    if (run(self, x, layer, &out) < 0) {
        return NULL;
    }
    size_t n = (size_t)t.dims.h * (size_t)t.dims.w * (size_t)t.dims.c;
    return PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)n);
}

PyDoc_STRVAR(probe_doc,
"_probe(x) -> (high_water, guard_intact)\n\n(test hook) Fill the arena with 0x5A, run one\n"
"inference; one past the highest arena byte written, and whether the guard bytes are intact.");

static PyObject *Model_probe(ModelObject *self, PyObject *x) {
    if (check_ready(self) < 0) {
        return NULL;
    }
    Py_buffer v;
    if (get_input(self, x, &v) < 0) {
        return NULL;
    }
    const uint32_t n = self->plan.arena_bytes;
    memset(self->arena, PROBE_FILL, n);
    fill_guard(self);
    const int8_t *out = NULL;
    tmp_status st =
        tmp_infer(&self->model, &self->plan, (const int8_t *)v.buf, self->arena, n, -1, &out);
    PyBuffer_Release(&v);
    int intact = guard_intact(self);
    fill_guard(self);
    if (st != TMP_OK) {
        PyErr_Format(PyExc_RuntimeError, "tinymp: inference failed (status %d: %s)", (int)st,
            tmp_status_name(st));
        return NULL;
    }
    uint32_t hw = n;
    while (hw > 0 && self->arena[hw - 1] == PROBE_FILL) {
        hw--;
    }
    return Py_BuildValue("(kO)", (unsigned long)hw, intact ? Py_True : Py_False);
}

static PyObject *u32_list(const uint32_t *a, Py_ssize_t n) {
    PyObject *l = PyList_New(n);
    if (l == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLong(a != NULL ? (unsigned long)a[i] : 0ul);
        if (v == NULL) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, i, v);
    }
    return l;
}

static int dict_steal(PyObject *d, const char *key, PyObject *v) {
    if (v == NULL) {
        return -1;
    }
    int r = PyDict_SetItemString(d, key, v);
    Py_DECREF(v);
    return r;
}

PyDoc_STRVAR(plan_doc, "_plan() -> dict\n\n(test hook) The planner's result.");

static PyObject *Model_plan(ModelObject *self, PyObject *Py_UNUSED(ignored)) {
    if (check_ready(self) < 0) {
        return NULL;
    }
    const tmp_plan *p = &self->plan;
    const Py_ssize_t nl = (Py_ssize_t)self->model.num_layers;
    const Py_ssize_t nt = (Py_ssize_t)self->model.num_tensors;
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    PyObject *in_place = PyList_New(nl);
    if (in_place == NULL) {
        Py_DECREF(d);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nl; i++) {
        /* 0: not in place; 1: output over in0; 2: output over in1 */
        PyObject *v = PyLong_FromLong(p->in_place != NULL ? (long)p->in_place[i] : 0L);
        if (v == NULL) {
            Py_DECREF(in_place);
            Py_DECREF(d);
            return NULL;
        }
        PyList_SET_ITEM(in_place, i, v);
    }
    if (dict_steal(d, "arena_bytes", PyLong_FromUnsignedLong(p->arena_bytes)) < 0 ||
        dict_steal(d, "peak_live_bytes", PyLong_FromUnsignedLong(p->peak_live_bytes)) < 0 ||
        dict_steal(d, "activation_bytes", PyLong_FromUnsignedLong(p->activation_bytes)) < 0 ||
        dict_steal(d, "tensor_offset", u32_list(p->tensor_offset, nt)) < 0 ||
        dict_steal(d, "scratch_offset", u32_list(p->scratch_offset, nl)) < 0 ||
        dict_steal(d, "scratch_bytes", u32_list(p->scratch_bytes, nl)) < 0 ||
        dict_steal(d, "in_place", in_place) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

PyDoc_STRVAR(layers_doc,
"_layers() -> list of dict\n\n(test hook) Every layer record as decoded by the core: type, in0,\n"
"in1 (None when absent), out, kh, kw, stride (h, w), pads (t, l, b, r), act (min, max),\n"
"params (6 ints), out_shape (h, w, c).");

static PyObject *layer_dict(const tmp_model *m, int32_t i) {
    tmp_layer l;
    tmp_tensor t;
    tmp_error err;
    memset(&err, 0, sizeof err);
    err.layer = err.layer_type = err.tensor = -1;
    if (tmp_model_layer(m, i, &l, &err) != TMP_OK || tmp_model_tensor(m, i + 1, &t, &err) != TMP_OK) {
        set_model_error(&err);
        return NULL;
    }
    PyObject *in1;
    if (l.in1 == TMP_NO_TENSOR) {
        in1 = Py_None;
        Py_INCREF(in1);
    } else {
        in1 = PyLong_FromLong(l.in1);
    }
    if (in1 == NULL) {
        return NULL;
    }
    return Py_BuildValue("{s:s,s:i,s:i,s:N,s:i,s:i,s:i,s:(ii),s:(iiii),s:(ii),s:(iiiiii),s:(iii)}",
        "type", tmp_layer_type_name(l.type),
        "type_id", (int)l.type,
        "in0", (int)l.in0,
        "in1", in1,
        "out", (int)l.out,
        "kh", (int)l.kh,
        "kw", (int)l.kw,
        "stride", (int)l.stride_h, (int)l.stride_w,
        "pads", (int)l.pad_t, (int)l.pad_l, (int)l.pad_b, (int)l.pad_r,
        "act", (int)l.act_min, (int)l.act_max,
        "params", (int)l.params[0], (int)l.params[1], (int)l.params[2], (int)l.params[3],
        (int)l.params[4], (int)l.params[5],
        "out_shape", (int)t.dims.h, (int)t.dims.w, (int)t.dims.c);
}

static PyObject *Model_layers(ModelObject *self, PyObject *Py_UNUSED(ignored)) {
    if (check_ready(self) < 0) {
        return NULL;
    }
    const Py_ssize_t nl = (Py_ssize_t)self->model.num_layers;
    PyObject *list = PyList_New(nl);
    if (list == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nl; i++) {
        PyObject *d = layer_dict(&self->model, (int32_t)i);
        if (d == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, d);
    }
    return list;
}

/* ---------------------------------------------------------------- attributes */

static PyObject *Model_get_input_shape(ModelObject *self, void *Py_UNUSED(c)) {
    if (check_ready(self) < 0) {
        return NULL;
    }
    return Py_BuildValue("(iii)", (int)self->input.dims.h, (int)self->input.dims.w,
        (int)self->input.dims.c);
}

static PyObject *Model_get_num_classes(ModelObject *self, void *Py_UNUSED(c)) {
    if (check_ready(self) < 0) {
        return NULL;
    }
    return PyLong_FromLong((long)self->model.num_classes);
}

static PyObject *Model_get_arena_bytes(ModelObject *self, void *Py_UNUSED(c)) {
    if (check_ready(self) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong((unsigned long)self->plan.arena_bytes);
}

static PyObject *Model_get_input_scale(ModelObject *self, void *Py_UNUSED(c)) {
    if (check_ready(self) < 0) {
        return NULL;
    }
    return PyFloat_FromDouble((double)self->input.scale);
}

static PyObject *Model_get_input_zero_point(ModelObject *self, void *Py_UNUSED(c)) {
    if (check_ready(self) < 0) {
        return NULL;
    }
    return PyLong_FromLong((long)self->input.zero_point);
}

static PyObject *Model_get_class_names(ModelObject *self, void *Py_UNUSED(c)) {
    if (check_ready(self) < 0) {
        return NULL;
    }
    Py_INCREF(self->class_names);
    return self->class_names;
}

static PyGetSetDef Model_getset[] = {
    {"input_shape", (getter)Model_get_input_shape, NULL, "(H, W, C) of the int8 input", NULL},
    {"num_classes", (getter)Model_get_num_classes, NULL, "number of output classes", NULL},
    {"inference_arena_bytes", (getter)Model_get_arena_bytes, NULL,
        "bytes of RAM one inference uses (the planned arena)", NULL},
    {"input_scale", (getter)Model_get_input_scale, NULL, "scale of the input quantisation", NULL},
    {"input_zero_point", (getter)Model_get_input_zero_point, NULL,
        "zero point of the input quantisation", NULL},
    {"class_names", (getter)Model_get_class_names, NULL, "tuple of str, or None", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *Model_train_plan(ModelObject *self, PyObject *args, PyObject *kwds);
PyDoc_STRVAR(model_plan_short_doc,
"plan(method='tinymp', budget=None, *, r=None, ratio=None, storage='int8', momentum=0.0,\n"
"     n_bias=None, layers=None, ratios=None, macs=None, support=None, cache=None,\n"
"     step_share=None) -> Plan\n\n"
"A training plan (docs/API.md).");

static PyMethodDef Model_methods[] = {
    {"plan", (PyCFunction)(void (*)(void))Model_train_plan, METH_VARARGS | METH_KEYWORDS, model_plan_short_doc},
    {"predict", (PyCFunction)Model_predict, METH_O, predict_doc},
    {"logits", (PyCFunction)(void (*)(void))Model_logits, METH_VARARGS | METH_KEYWORDS, logits_doc},
    {"_run_to", (PyCFunction)Model_run_to, METH_VARARGS, run_to_doc},
    {"_probe", (PyCFunction)Model_probe, METH_O, probe_doc},
    {"_plan", (PyCFunction)Model_plan, METH_NOARGS, plan_doc},
    {"_layers", (PyCFunction)Model_layers, METH_NOARGS, layers_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Model_doc,
"Model(data)\n\nA validated .tmpm model with its planned inference arena. data: a bytes-like\n"
"object (used in place) or a file path. See the module docstring for the API.");

static PyTypeObject Model_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tinymp.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_itemsize = 0,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_repr = (reprfunc)Model_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = Model_doc,
    .tp_traverse = (traverseproc)Model_traverse,
    .tp_clear = (inquiry)Model_clear,
    .tp_methods = Model_methods,
    .tp_getset = Model_getset,
    .tp_new = Model_new,
};

/* ================================================================ training: Plan and Trainer */

/* A training plan: the core's tmp_train_plan, its workspace, and the model it belongs to. */
typedef struct {
    PyObject_HEAD
    ModelObject *model;
    void *workspace;
    tmp_train_plan plan;
} PlanObject;

static PyTypeObject Plan_Type;

static const char *storage_name(int32_t s) {
    return s == TMP_STORAGE_FP32 ? "fp32" : "int8";
}

/* An int or an integer-like object (numpy.int64 ...), never a bool, as a long long; `overflow`
 * is set (-1 / +1) for one beyond long long. `name` names it in the TypeError. */
static int int_value(PyObject *v, const char *name, long long *x, int *overflow) {
    if (PyBool_Check(v) || !PyIndex_Check(v)) {
        PyErr_Format(PyExc_TypeError, "tinymp: %s must be an int, not '%.200s'", name, Py_TYPE(v)->tp_name);
        return -1;
    }
    PyObject *iv = PyNumber_Index(v);
    if (iv == NULL) {
        return -1;
    }
    *overflow = 0;
    *x = PyLong_AsLongLongAndOverflow(iv, overflow);
    Py_DECREF(iv);
    return *x == -1 && PyErr_Occurred() ? -1 : 0;
}

/* Parse an optional non-negative integer keyword (None -> dflt). */
static int opt_long(PyObject *v, const char *name, long long lo, long long hi, long long dflt, long long *out) {
    if (v == NULL || v == Py_None) {
        *out = dflt;
        return 0;
    }
    int overflow = 0;
    long long x;
    if (int_value(v, name, &x, &overflow) < 0) {
        return -1;
    }
    if (overflow != 0) {
        x = overflow < 0 ? lo - 1 : hi + 1;
    }
    if (x < lo || x > hi) {
        PyErr_Format(PyExc_ValueError, "tinymp: %s must be between %lld and %lld, got %S", name, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int opt_float(PyObject *v, const char *name, double lo, double hi, int lo_open, double dflt, double *out) {
    if (v == NULL || v == Py_None) {
        *out = dflt;
        return 0;
    }
    /* a real number: float, int or anything with __float__ / __index__ (numpy.float32 ...) */
    PyNumberMethods *nm = Py_TYPE(v)->tp_as_number;
    if (PyBool_Check(v) || !(PyFloat_Check(v) || PyIndex_Check(v) || (nm != NULL && nm->nb_float != NULL))) {
        PyErr_Format(PyExc_TypeError, "tinymp: %s must be a number, not '%.200s'", name, Py_TYPE(v)->tp_name);
        return -1;
    }
    double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return -1;
        }
        PyErr_Clear(); /* an int beyond any double: an infinity, as MicroPython reads it */
        int neg = PyObject_RichCompareBool(v, Py_False, Py_LT); /* False == 0 */
        if (neg < 0) {
            return -1;
        }
        x = neg ? -INFINITY : INFINITY;
    }
    /* the range holds for the float32 the engine gets (TMP_OPT_F32), not only for the double */
    double x32 = (double)TMP_OPT_F32(x), lo32 = (double)TMP_OPT_F32(lo), hi32 = (double)TMP_OPT_F32(hi);
    if (!(x32 <= hi32) || !(lo_open ? x32 > lo32 : x32 >= lo32)) {
        /* PyErr_Format has no %g: format the bounds here */
        char range[96];
        PyOS_snprintf(range, sizeof range, "%s%g, %g]", lo_open ? "(" : "[", lo, hi);
        if (x <= hi && (lo_open ? x > lo : x >= lo)) { /* in range as a double: say what the engine gets */
            PyObject *f = PyFloat_FromDouble(x32);
            if (f != NULL) {
                PyErr_Format(PyExc_ValueError, "tinymp: %s must be in %s, got %R (%R as a 32-bit float)", name,
                    range, v, f);
                Py_DECREF(f);
            }
            return -1;
        }
        PyErr_Format(PyExc_ValueError, "tinymp: %s must be in %s, got %R", name, range, v);
        return -1;
    }
    *out = x32;
    return 0;
}

/* The options of plan(), Trainer() and fit() are checked against the core's tables
 * (core/tmp_options.h), which the board's binding expands too; _option_ranges() hands them to the
 * PC tool (tinymp.session.commands), which refuses a bad value before any board is involved. */
typedef struct {
    const char *name;
    long long lo, hi, dflt;
} int_option;

typedef struct {
    const char *name;
    double lo, hi;
    int lo_open;
    double dflt;
} float_option;

#define INT_ROW(name, lo, hi, dflt) {#name, (lo), (hi), (dflt)},
#define FLOAT_ROW(name, lo, hi, lo_open, dflt, text) {#name, (lo), (hi), (lo_open), (dflt)},
static const int_option INT_OPTIONS[TMP_N_INT_OPTIONS] = {TMP_INT_OPTIONS(INT_ROW)};
static const float_option FLOAT_OPTIONS[TMP_N_FLOAT_OPTIONS] = {TMP_FLOAT_OPTIONS(FLOAT_ROW)};
#undef INT_ROW
#undef FLOAT_ROW

/* An option of the tables (TMP_IOPT_x, TMP_FOPT_x): None or absent -> its default. */
static int opt_ranged_long(PyObject *v, int i, long long *out) {
    const int_option *o = &INT_OPTIONS[i];
    return opt_long(v, o->name, o->lo, o->hi, o->dflt, out);
}

static int opt_ranged_float(PyObject *v, int i, double *out) {
    const float_option *o = &FLOAT_OPTIONS[i];
    return opt_float(v, o->name, o->lo, o->hi, o->lo_open, o->dflt, out);
}

static PyObject *mod_option_ranges(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    PyObject *d = PyDict_New();
    for (int i = 0; d != NULL && i < TMP_N_INT_OPTIONS + TMP_N_FLOAT_OPTIONS; i++) {
        PyObject *t;
        const char *name;
        if (i < TMP_N_INT_OPTIONS) {
            const int_option *o = &INT_OPTIONS[i];
            name = o->name;
            t = Py_BuildValue("(sLLO)", "int", o->lo, o->hi, Py_False);
        } else {
            const float_option *o = &FLOAT_OPTIONS[i - TMP_N_INT_OPTIONS];
            name = o->name;
            t = Py_BuildValue("(sddO)", "float", o->lo, o->hi, o->lo_open ? Py_True : Py_False);
        }
        if (t == NULL || PyDict_SetItemString(d, name, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(t);
    }
    return d;
}

/* _method_lr(name): the rate a Trainer of this method takes when given no lr (the core's
 * tmp_method_lr), for the PC tool, which sends it to a board whose agent predates it. */
static PyObject *mod_method_lr(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    if (name == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "tinymp: method must be a str");
        }
        return NULL;
    }
    int32_t method = tmp_method_from_name(name);
    if (method < 0) {
        PyErr_Format(PyExc_ValueError, "tinymp: unknown method '%s'", name);
        return NULL;
    }
    return PyFloat_FromDouble((double)tmp_method_lr(method));
}

/* The core's clock for per-phase times: microseconds from a monotonic clock. */
#include <time.h>
static uint32_t clock_us(void *ctx) {
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u);
}

/* A class label: an int (or an object with __index__, e.g. numpy.int64), not a bool, in
 * [0, num_classes). `what` names it in messages ("label", "support label"). */
static int parse_label(ModelObject *model, PyObject *y, const char *what, int32_t *label) {
    const int n = (int)model->model.num_classes;
    int overflow = 0;
    long long v;
    if (int_value(y, what, &v, &overflow) < 0) {
        return -1;
    }
    if (overflow != 0 || v < 0 || v >= n) {
        PyErr_Format(PyExc_ValueError, "tinymp: %s %S is outside [0, %d)", what, y, n);
        return -1;
    }
    *label = (int32_t)v;
    return 0;
}

/* The smallest budget of these options, the selection pass included (tmp_train_min_budget);
 * 0 when it cannot tell. */
static uint32_t min_budget_with_selection(ModelObject *model, const tmp_train_options *o, tmp_train_error *err) {
    size_t wsz = tmp_train_workspace_size(&model->model);
    void *ws = PyMem_Malloc(wsz);
    if (ws == NULL) {
        return 0;
    }
    tmp_status st = tmp_train_min_budget(&model->model, o, 1, ws, wsz, err);
    PyMem_Free(ws);
    return st == TMP_OK ? err->min_budget : 0;
}

/* Run the TinyTrain selection pass over support = (samples, labels). On success *ws, *arena hold
 * the pass's memory (the caller frees them after planning) and t is ready to be read. */
static int run_selection(ModelObject *model, const tmp_train_options *o, PyObject *support, tmp_trainer *t,
    void **ws, uint8_t **arena, tmp_train_plan *fp) {
    PyObject *samples = NULL, *labels = NULL;
    if (!PyTuple_Check(support) || PyTuple_GET_SIZE(support) != 2) {
        PyErr_SetString(PyExc_TypeError, "tinymp: support must be a tuple (samples, labels)");
        return -1;
    }
    samples = PySequence_Fast(PyTuple_GET_ITEM(support, 0), "tinymp: support samples must be a sequence");
    if (samples == NULL) {
        return -1;
    }
    labels = PySequence_Fast(PyTuple_GET_ITEM(support, 1), "tinymp: support labels must be a sequence");
    if (labels == NULL) {
        Py_DECREF(samples);
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(samples);
    int rc = -1;
    if (n == 0 || n != PySequence_Fast_GET_SIZE(labels)) {
        PyErr_Format(PyExc_ValueError, "tinymp: support needs as many labels as samples and at least one "
            "(got %zd samples, %zd labels)", n, PySequence_Fast_GET_SIZE(labels));
        goto done;
    }
    tmp_train_options fo = tmp_train_selection_options(o);
    size_t wsz = tmp_train_workspace_size(&model->model);
    *ws = PyMem_Malloc(wsz);
    if (*ws == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    tmp_train_error err;
    tmp_status st = tmp_train_plan_make(&model->model, &fo, *ws, wsz, fp, &err);
    if (st == TMP_ERR_SIZE && err.min_budget != 0) {
        /* the smallest budget that holds both the selection pass and the smallest training table */
        tmp_train_error all;
        uint32_t need = min_budget_with_selection(model, o, &all);
        if (need == 0) {
            all = err;
            need = err.min_budget;
        }
        PyErr_Format(PyExc_ValueError, "tinymp: method '%s' does not fit a budget of %lu bytes: its smallest setting "
            "needs %lu bytes (largest part: %s, %lu bytes), its selection pass included", tmp_method_name(o->method),
            (unsigned long)o->budget, (unsigned long)need, tmp_category_name(all.largest_cat),
            (unsigned long)all.largest_bytes);
        goto done;
    }
    if (st != TMP_OK) {
        PyErr_Format(PyExc_ValueError, "tinymp: selection pass: %s", err.msg != NULL ? err.msg : tmp_status_name(st));
        goto done;
    }
    *arena = (uint8_t *)PyMem_Malloc(fp->arena_bytes > 0 ? fp->arena_bytes : 4u);
    if (*arena == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (tmp_trainer_init(t, &model->model, fp, *arena, fp->arena_bytes, 0.0f, 1u) != TMP_OK) {
        PyErr_SetString(PyExc_RuntimeError, "tinymp: cannot start the selection pass");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer v;
        int32_t y;
        if (parse_label(model, PySequence_Fast_GET_ITEM(labels, i), "support label", &y) < 0) {
            goto done;
        }
        if (get_input(model, PySequence_Fast_GET_ITEM(samples, i), &v) < 0) {
            goto done;
        }
        st = tmp_trainer_step(t, (const int8_t *)v.buf, (int32_t)y, NULL);
        PyBuffer_Release(&v);
        if (st != TMP_OK) {
            PyErr_Format(PyExc_ValueError, "tinymp: the model data changed after loading (selection: %s)",
                tmp_status_name(st));
            goto done;
        }
    }
    rc = 0;
done:
    Py_XDECREF(samples);
    Py_XDECREF(labels);
    return rc;
}

static PyObject *Model_train_plan(ModelObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"method", "budget", "r", "ratio", "storage", "momentum", "n_bias", "layers",
        "ratios", "macs", "support", "cache", "step_share", NULL};
    const char *method = "tinymp";
    PyObject *budget = NULL, *r = NULL, *ratio = NULL, *storage = NULL, *momentum = NULL, *n_bias = NULL;
    PyObject *layers = NULL, *ratios = NULL, *macs = NULL, *support = NULL, *cache = NULL, *step_share = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|sO$OOOOOOOOOOO:plan", kwlist, &method, &budget, &r, &ratio,
            &storage, &momentum, &n_bias, &layers, &ratios, &macs, &support, &cache, &step_share)) {
        return NULL;
    }
    if (check_ready(self) < 0) {
        return NULL;
    }
    int32_t mi = tmp_method_from_name(method);
    if (mi < 0) {
        PyErr_Format(PyExc_ValueError,
            "tinymp: unknown method '%s' (none, last, bias, sparse, tinytrain, full, tinymp)", method);
        return NULL;
    }
    tmp_train_options o = tmp_train_options_default(mi);
    long long v;
    double d;
    if (opt_ranged_long(budget, TMP_IOPT_budget, &v) < 0) {
        return NULL;
    }
    o.budget = (uint32_t)v;
    if (opt_ranged_long(r, TMP_IOPT_r, &v) < 0) {
        return NULL;
    }
    o.r = (int32_t)v;
    if (opt_ranged_float(ratio, TMP_FOPT_ratio, &d) < 0) {
        return NULL;
    }
    o.ratio = (float)d;
    if (opt_ranged_float(momentum, TMP_FOPT_momentum, &d) < 0) {
        return NULL;
    }
    o.momentum = (float)d;
    if (opt_ranged_long(n_bias, TMP_IOPT_n_bias, &v) < 0) {
        return NULL;
    }
    o.n_bias = (int32_t)v;
    if (opt_ranged_long(macs, TMP_IOPT_macs, &v) < 0) {
        return NULL;
    }
    o.mac_budget = (uint64_t)v;
    if (opt_ranged_float(step_share, TMP_FOPT_step_share, &d) < 0) {
        return NULL;
    }
    o.step_share = d >= 8.0 ? 8.0f : (float)d;
    if (opt_ranged_long(cache, TMP_IOPT_cache, &v) < 0) {
        return NULL;
    }
    o.cache_samples = (uint32_t)v;
    if (storage != NULL && storage != Py_None) {
        const char *sname = PyUnicode_Check(storage) ? PyUnicode_AsUTF8(storage) : NULL;
        if (sname == NULL || (strcmp(sname, "int8") != 0 && strcmp(sname, "fp32") != 0)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "tinymp: storage must be 'int8' or 'fp32'");
            return NULL;
        }
        o.storage = strcmp(sname, "fp32") == 0 ? TMP_STORAGE_FP32 : TMP_STORAGE_INT8;
    }
    uint16_t *lay = NULL;
    float *rat = NULL;
    PyObject *result = NULL;
    void *fws = NULL;
    uint8_t *farena = NULL;
    tmp_trainer fisher;
    tmp_train_plan fplan;
    PlanObject *po = NULL;
    if (layers != NULL && layers != Py_None) {
        if (mi != TMP_METHOD_SPARSE) {
            PyErr_SetString(PyExc_ValueError, "tinymp: layers= is for method 'sparse'");
            return NULL;
        }
        PyObject *ls = PySequence_Fast(layers, "tinymp: layers must be a sequence of layer indices");
        if (ls == NULL) {
            return NULL;
        }
        Py_ssize_t n = PySequence_Fast_GET_SIZE(ls);
        lay = (uint16_t *)PyMem_Malloc(sizeof(uint16_t) * (size_t)(n + 1));
        rat = (float *)PyMem_Malloc(sizeof(float) * (size_t)(n + 1));
        if (lay == NULL || rat == NULL) {
            Py_DECREF(ls);
            PyErr_NoMemory();
            goto out;
        }
        for (Py_ssize_t j = 0; j < n; j++) {
            if (opt_long(PySequence_Fast_GET_ITEM(ls, j), "a sparse layer index", 0,
                    (long long)self->model.num_layers - 1, 0, &v) < 0) {
                Py_DECREF(ls);
                goto out;
            }
            lay[j] = (uint16_t)v;
            rat[j] = 1.0f;
        }
        Py_DECREF(ls);
        if (ratios != NULL && ratios != Py_None) {
            PyObject *rs = PySequence_Fast(ratios, "tinymp: ratios must be a sequence of numbers");
            if (rs == NULL) {
                goto out;
            }
            if (PySequence_Fast_GET_SIZE(rs) != n) {
                Py_DECREF(rs);
                PyErr_Format(PyExc_ValueError, "tinymp: %zd layers but %zd ratios", n, PySequence_Fast_GET_SIZE(rs));
                goto out;
            }
            for (Py_ssize_t j = 0; j < n; j++) {
                if (opt_float(PySequence_Fast_GET_ITEM(rs, j), "a sparse ratio", FLOAT_OPTIONS[TMP_FOPT_ratio].lo,
                        FLOAT_OPTIONS[TMP_FOPT_ratio].hi, FLOAT_OPTIONS[TMP_FOPT_ratio].lo_open, 1.0, &d) < 0) {
                    Py_DECREF(rs);
                    goto out;
                }
                rat[j] = (float)d;
            }
            Py_DECREF(rs);
        }
        o.n_layers = (int32_t)n;
        o.layers = lay;
        o.ratios = rat;
    } else if (mi == TMP_METHOD_SPARSE) {
        PyErr_SetString(PyExc_ValueError, "tinymp: method 'sparse' needs layers=[...] (and optionally ratios=[...])");
        return NULL;
    } else if (ratios != NULL && ratios != Py_None) {
        PyErr_SetString(PyExc_ValueError, "tinymp: ratios= is for method 'sparse' (use ratio=)");
        return NULL;
    }
    if (support != NULL && support != Py_None) {
        if (mi != TMP_METHOD_TINYTRAIN && mi != TMP_METHOD_TINYMP) {
            PyErr_SetString(PyExc_ValueError, "tinymp: support= is for methods 'tinytrain' and 'tinymp'");
            goto out;
        }
        if (run_selection(self, &o, support, &fisher, &fws, &farena, &fplan) < 0) {
            goto out;
        }
        o.fisher = &fisher;
    } else if (mi == TMP_METHOD_TINYTRAIN) {
        PyErr_SetString(PyExc_ValueError,
            "tinymp: method 'tinytrain' needs support=(samples, labels) for its selection pass");
        goto out;
    }
    po = PyObject_GC_New(PlanObject, &Plan_Type);
    if (po == NULL) {
        goto out;
    }
    po->workspace = NULL;
    Py_INCREF(self);
    po->model = self;
    PyObject_GC_Track(po);
    size_t wsz = tmp_train_workspace_size(&self->model);
    po->workspace = PyMem_Malloc(wsz);
    if (po->workspace == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    tmp_train_error err;
    tmp_status st = tmp_train_plan_make(&self->model, &o, po->workspace, wsz, &po->plan, &err);
    if (st == TMP_ERR_SIZE && err.min_budget != 0) {
        if (o.budget != 0 && err.min_budget > o.budget) {
            uint32_t need = err.min_budget;
            if (o.fisher != NULL) {
                /* passing `need` back must fit the selection pass as well */
                tmp_train_error all;
                uint32_t both = min_budget_with_selection(self, &o, &all);
                need = both > need ? both : need;
            }
            PyErr_Format(PyExc_ValueError,
                "tinymp: method '%s' does not fit a budget of %lu bytes: its smallest setting needs %lu bytes "
                "(largest part: %s, %lu bytes)", method, (unsigned long)o.budget, (unsigned long)need,
                tmp_category_name(err.largest_cat), (unsigned long)err.largest_bytes);
        } else {
            PyErr_Format(PyExc_ValueError,
                "tinymp: method '%s' exceeds the backward MAC budget of %llu even at its smallest setting "
                "(%llu MACs)", method, (unsigned long long)o.mac_budget,
                (unsigned long long)po->plan.backward_macs);
        }
        goto out;
    }
    if (st == TMP_ERR_FORMAT) {
        PyErr_SetString(PyExc_ValueError, "tinymp: the model data changed after loading (planning)");
        goto out;
    }
    if (st != TMP_OK) {
        if (err.msg != NULL && err.layer >= 0) {
            PyErr_Format(PyExc_ValueError, "tinymp: layer %d: %s", (int)err.layer, err.msg);
        } else {
            PyErr_Format(PyExc_ValueError, "tinymp: %s", err.msg != NULL ? err.msg : tmp_status_name(st));
        }
        goto out;
    }
    /* keep only the tables training and reporting read; the planning workspace goes */
    size_t csz = tmp_train_plan_compact_size(&po->plan);
    void *tables = PyMem_Malloc(csz > 0 ? csz : 1);
    if (tables == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    if (tmp_train_plan_compact(&po->plan, tables, csz) != TMP_OK) {
        PyMem_Free(tables);
        PyErr_SetString(PyExc_RuntimeError, "tinymp: could not compact the plan's tables");
        goto out;
    }
    PyMem_Free(po->workspace);
    po->workspace = tables;
    result = (PyObject *)po;
    po = NULL;
out:
    Py_XDECREF(po);
    PyMem_Free(lay);
    PyMem_Free(rat);
    PyMem_Free(fws);
    PyMem_Free(farena);
    return result;
}

static int Plan_traverse(PlanObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->model);
    return 0;
}

static int Plan_clear(PlanObject *self) {
    Py_CLEAR(self->model);
    return 0;
}

static void Plan_dealloc(PlanObject *self) {
    PyObject_GC_UnTrack(self);
    Plan_clear(self);
    PyMem_Free(self->workspace);
    PyObject_GC_Del(self);
}

static PyObject *Plan_get_arena_bytes(PlanObject *self, void *c) {
    (void)c;
    return PyLong_FromUnsignedLong(self->plan.arena_bytes);
}

static PyObject *Plan_get_cache_bytes(PlanObject *self, void *c) {
    (void)c;
    return PyLong_FromUnsignedLong(self->plan.cache_bytes);
}

static PyObject *Plan_get_table_bytes(PlanObject *self, void *c) {
    (void)c;
    return PyLong_FromUnsignedLong(self->plan.table_bytes);
}

static PyObject *Plan_get_cache_samples(PlanObject *self, void *c) {
    (void)c;
    return PyLong_FromUnsignedLong(self->plan.cache_samples);
}

static PyObject *Plan_get_peak_live_bytes(PlanObject *self, void *c) {
    (void)c;
    return PyLong_FromUnsignedLong(self->plan.peak_live_bytes);
}

static PyObject *Plan_get_breakdown(PlanObject *self, void *c) {
    (void)c;
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    for (int32_t k = 0; k < TMP_CAT_COUNT; k++) {
        if (dict_steal(d, tmp_category_name(k), PyLong_FromUnsignedLong(self->plan.breakdown[k])) < 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

static PyObject *Plan_get_category_peaks(PlanObject *self, void *c) {
    (void)c;
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    for (int32_t k = 0; k < TMP_CAT_COUNT; k++) {
        if (dict_steal(d, tmp_category_name(k), PyLong_FromUnsignedLong(self->plan.category_peak[k])) < 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

static PyObject *Plan_get_method(PlanObject *self, void *c) {
    (void)c;
    return PyUnicode_FromString(tmp_method_name(self->plan.method));
}

static PyObject *Plan_get_storage(PlanObject *self, void *c) {
    (void)c;
    return PyUnicode_FromString(storage_name(self->plan.storage));
}

static PyObject *Plan_get_r(PlanObject *self, void *c) {
    (void)c;
    return PyLong_FromLong(self->plan.r);
}

static PyObject *Plan_get_ratio(PlanObject *self, void *c) {
    (void)c;
    return PyFloat_FromDouble((double)self->plan.ratio);
}

static PyObject *Plan_get_momentum(PlanObject *self, void *c) {
    (void)c;
    return PyFloat_FromDouble((double)self->plan.momentum);
}

static PyObject *Plan_get_first(PlanObject *self, void *c) {
    (void)c;
    return PyLong_FromLong(self->plan.first);
}

static PyObject *Plan_get_forward_macs(PlanObject *self, void *c) {
    (void)c;
    return PyLong_FromUnsignedLongLong(self->plan.forward_macs);
}

static PyObject *Plan_get_backward_macs(PlanObject *self, void *c) {
    (void)c;
    return PyLong_FromUnsignedLongLong(self->plan.backward_macs);
}

static PyObject *Plan_get_step_macs(PlanObject *self, void *c) {
    (void)c;
    return PyLong_FromUnsignedLongLong(self->plan.step_macs);
}

static PyObject *Plan_get_step_share(PlanObject *self, void *c) {
    (void)c;
    if (self->plan.step_share == 0.0f) {
        Py_RETURN_NONE;
    }
    return PyFloat_FromDouble((double)self->plan.step_share);
}

static PyObject *Plan_get_layers(PlanObject *self, void *c) {
    (void)c;
    PyObject *l = PyList_New(0);
    if (l == NULL) {
        return NULL;
    }
    for (int32_t i = 0; i < self->plan.num_layers; i++) {
        if (self->plan.flags[i] & (TMP_TL_W | TMP_TL_B)) {
            PyObject *v = PyLong_FromLong(i);
            if (v == NULL || PyList_Append(l, v) < 0) {
                Py_XDECREF(v);
                Py_DECREF(l);
                return NULL;
            }
            Py_DECREF(v);
        }
    }
    return l;
}

static PyObject *channel_list(const uint16_t *ch, int32_t k) {
    PyObject *l = PyList_New(k);
    if (l == NULL) {
        return NULL;
    }
    for (int32_t j = 0; j < k; j++) {
        PyObject *v = PyLong_FromLong(ch != NULL ? ch[j] : j); /* NULL: every channel */
        if (v == NULL) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, j, v);
    }
    return l;
}

static PyObject *Plan_get_channels(PlanObject *self, void *c) {
    (void)c;
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    for (int32_t i = 0; i < self->plan.num_layers; i++) {
        if (!(self->plan.flags[i] & TMP_TL_W)) {
            continue;
        }
        PyObject *key = PyLong_FromLong(i);
        PyObject *val = channel_list(self->plan.channels + self->plan.chan_off[i], self->plan.k[i]);
        if (key == NULL || val == NULL || PyDict_SetItem(d, key, val) < 0) {
            Py_XDECREF(key);
            Py_XDECREF(val);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(key);
        Py_DECREF(val);
    }
    return d;
}

static PyObject *Plan_describe(PlanObject *self, PyObject *Py_UNUSED(ignored)) {
    size_t n = tmp_train_plan_describe(&self->model->model, &self->plan, NULL, 0);
    char *buf = (char *)PyMem_Malloc(n + 1);
    if (buf == NULL) {
        return PyErr_NoMemory();
    }
    tmp_train_plan_describe(&self->model->model, &self->plan, buf, n + 1);
    PyObject *s = PyUnicode_FromStringAndSize(buf, (Py_ssize_t)n);
    PyMem_Free(buf);
    return s;
}

PyDoc_STRVAR(plan_layers_doc,
"_layers() -> list of dict\n\n(test hook) Per layer: flags (region, w, b, dx, apu), k, r, fwd/bwd MACs,\n"
"potential and score (TinyTrain), and the bytes of each of its buffers.");

static PyObject *Plan_layer_info(PlanObject *self, PyObject *Py_UNUSED(ignored)) {
    static const char *const bnames[TMP_LB_COUNT] = {"fscratch", "saved", "mask", "asum", "dw", "db",
        "bscratch", "w", "b", "wm", "bm", "vw", "vb", "sel", "fish"};
    const tmp_train_plan *p = &self->plan;
    PyObject *l = PyList_New(p->num_layers);
    if (l == NULL) {
        return NULL;
    }
    for (int32_t i = 0; i < p->num_layers; i++) {
        const uint8_t f = p->flags[i];
        PyObject *bytes = PyDict_New();
        PyObject *d = Py_BuildValue("{s:O,s:O,s:O,s:O,s:O,s:O,s:i,s:k,s:k,s:d,s:d,s:i}", "region",
            (f & TMP_TL_REGION) ? Py_True : Py_False, "w", (f & TMP_TL_W) ? Py_True : Py_False, "b",
            (f & TMP_TL_B) ? Py_True : Py_False, "dx", (f & TMP_TL_DX) ? Py_True : Py_False, "apu",
            (f & TMP_TL_APU) ? Py_True : Py_False, "candidate", (f & TMP_TL_CANDIDATE) ? Py_True : Py_False,
            "k", (int)p->k[i], "fwd_macs", (unsigned long)p->fwd_macs[i], "bwd_macs",
            (unsigned long)p->bwd_macs[i], "potential", (double)p->potential[i], "score", (double)p->score[i],
            "in_place", (int)p->in_place[i]);
        if (d == NULL || bytes == NULL) {
            Py_XDECREF(d);
            Py_XDECREF(bytes);
            Py_DECREF(l);
            return NULL;
        }
        for (int b = 0; b < TMP_LB_COUNT; b++) {
            const tmp_buf *bb = tmp_train_plan_buf(p, b * p->num_layers + i);
            if (dict_steal(bytes, bnames[b], Py_BuildValue("(kkii)", (unsigned long)bb->size,
                    (unsigned long)bb->offset, (int)bb->first, (int)bb->last)) < 0) {
                Py_DECREF(d);
                Py_DECREF(bytes);
                Py_DECREF(l);
                return NULL;
            }
        }
        if (dict_steal(d, "buffers", bytes) < 0) {
            Py_DECREF(d);
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, i, d);
    }
    return l;
}

PyDoc_STRVAR(plan_tensors_doc,
"_tensors() -> list of dict\n\n(test hook) Per tensor: activation (size, offset, first, last) and\n"
"gradient map (size, offset, first, last) buffers, act_offset, grad_birth.");

static PyObject *Plan_tensor_info(PlanObject *self, PyObject *Py_UNUSED(ignored)) {
    const tmp_train_plan *p = &self->plan;
    PyObject *l = PyList_New(p->num_tensors);
    if (l == NULL) {
        return NULL;
    }
    for (int32_t t = 0; t < p->num_tensors; t++) {
        const tmp_buf *a = tmp_train_plan_buf(p, TMP_LB_COUNT * p->num_layers + t);
        const tmp_buf *g = tmp_train_plan_buf(p, TMP_LB_COUNT * p->num_layers + p->num_tensors + t);
        PyObject *d = Py_BuildValue("{s:(kkii),s:(kkii),s:k,s:i}", "act", (unsigned long)a->size,
            (unsigned long)a->offset, (int)a->first, (int)a->last, "grad", (unsigned long)g->size,
            (unsigned long)g->offset, (int)g->first, (int)g->last, "act_offset", (unsigned long)p->act_offset[t],
            "grad_birth", (int)p->grad_birth[t]);
        if (d == NULL) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, t, d);
    }
    return l;
}

static PyObject *Plan_repr(PlanObject *self) {
    return PyUnicode_FromFormat("<tinymp.Plan method=%s r=%d arena=%lu bytes>", tmp_method_name(self->plan.method),
        (int)self->plan.r, (unsigned long)self->plan.arena_bytes);
}

static PyGetSetDef Plan_getset[] = {
    {"arena_bytes", (getter)Plan_get_arena_bytes, NULL, "exact arena bytes of one training step", NULL},
    {"cache_bytes", (getter)Plan_get_cache_bytes, NULL,
        "bytes of one sample's frozen-prefix features (0: nothing to cache)", NULL},
    {"cache_samples", (getter)Plan_get_cache_samples, NULL, "samples whose features the arena holds", NULL},
    {"table_bytes", (getter)Plan_get_table_bytes, NULL,
        "bytes of the plan's own tables, kept beside the arena while the plan lives", NULL},
    {"peak_live_bytes", (getter)Plan_get_peak_live_bytes, NULL, "largest sum of live bytes (lower bound)", NULL},
    {"breakdown", (getter)Plan_get_breakdown, NULL, "live bytes per part at the peak step", NULL},
    {"category_peaks", (getter)Plan_get_category_peaks, NULL, "each part's own peak over the step", NULL},
    {"method", (getter)Plan_get_method, NULL, "the method", NULL},
    {"storage", (getter)Plan_get_storage, NULL, "'int8' or 'fp32'", NULL},
    {"r", (getter)Plan_get_r, NULL, "Gradient Condensing patch size", NULL},
    {"ratio", (getter)Plan_get_ratio, NULL, "channel ratio", NULL},
    {"momentum", (getter)Plan_get_momentum, NULL, "SGD momentum", NULL},
    {"first", (getter)Plan_get_first, NULL, "first layer of the backward region", NULL},
    {"layers", (getter)Plan_get_layers, NULL, "trainable layer indices", NULL},
    {"channels", (getter)Plan_get_channels, NULL, "dict layer -> initial input channels", NULL},
    {"forward_macs", (getter)Plan_get_forward_macs, NULL, "forward MACs of one step", NULL},
    {"backward_macs", (getter)Plan_get_backward_macs, NULL, "backward MACs of one step", NULL},
    {"step_macs", (getter)Plan_get_step_macs, NULL,
        "MACs of a step whose frozen prefix comes from the feature cache (forward over the region + backward)", NULL},
    {"step_share", (getter)Plan_get_step_share, NULL,
        "the region limit the selection used, as a share of forward_macs (None: no limit)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Plan_methods[] = {
    {"describe", (PyCFunction)Plan_describe, METH_NOARGS, "describe() -> str: a per-layer table"},
    {"_layers", (PyCFunction)Plan_layer_info, METH_NOARGS, plan_layers_doc},
    {"_tensors", (PyCFunction)Plan_tensor_info, METH_NOARGS, plan_tensors_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Plan_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tinymp.Plan",
    .tp_basicsize = sizeof(PlanObject),
    .tp_dealloc = (destructor)Plan_dealloc,
    .tp_repr = (reprfunc)Plan_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A training plan; made by Model.plan(...).",
    .tp_traverse = (traverseproc)Plan_traverse,
    .tp_clear = (inquiry)Plan_clear,
    .tp_methods = Plan_methods,
    .tp_getset = Plan_getset,
};

/* ---------------------------------------------------------------- Trainer */

typedef struct {
    PyObject_HEAD
    ModelObject *model;
    PlanObject *plan;
    PyObject *arena_owner; /* the caller's buffer object, or NULL */
    Py_buffer arena_view;
    int has_view;
    uint8_t *own_arena;    /* PyMem arena + guard when the Trainer allocated it */
    uint8_t *arena;
    size_t arena_size;
    tmp_trainer t;
    float *logits_buf;
    PyObject *grads;       /* dict filled by the gradient hook (test hook), or NULL */
    int ready;
} TrainerObject;

static PyTypeObject Trainer_Type;

static int Trainer_check(TrainerObject *self) {
    if (!self->ready || self->model == NULL || !self->model->ready) {
        PyErr_SetString(PyExc_RuntimeError, "tinymp: trainer is not initialised");
        return -1;
    }
    return 0;
}

static int trainer_guard_intact(TrainerObject *self) {
    if (self->own_arena == NULL) {
        return 1;
    }
    const uint8_t *g = self->own_arena + self->plan->plan.arena_bytes;
    for (int i = 0; i < GUARD_BYTES; i++) {
        if (g[i] != GUARD_FILL) {
            return 0;
        }
    }
    return 1;
}

static PyObject *Trainer_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"model", "plan", "lr", "arena", "seed", "period", NULL};
    PyObject *model, *plan, *arena = Py_None, *lr_o = NULL, *seed_o = NULL, *period_o = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|OOOO:Trainer", kwlist, &model, &plan, &lr_o, &arena, &seed_o,
            &period_o)) {
        return NULL;
    }
    if (!PyObject_TypeCheck(model, &Model_Type)) {
        PyErr_Format(PyExc_TypeError, "tinymp: Trainer() needs a tinymp.Model, not '%.200s'", Py_TYPE(model)->tp_name);
        return NULL;
    }
    if (!PyObject_TypeCheck(plan, &Plan_Type)) {
        PyErr_Format(PyExc_TypeError, "tinymp: Trainer() needs a tinymp.Plan (from model.plan()), not '%.200s'",
            Py_TYPE(plan)->tp_name);
        return NULL;
    }
    ModelObject *m = (ModelObject *)model;
    PlanObject *p = (PlanObject *)plan;
    if (check_ready(m) < 0) {
        return NULL;
    }
    if (p->model != m) {
        PyErr_SetString(PyExc_ValueError, "tinymp: this plan was made for another model");
        return NULL;
    }
    double lr;
    long long seed, period;
    if (opt_ranged_float(lr_o, TMP_FOPT_lr, &lr) < 0 || opt_ranged_long(seed_o, TMP_IOPT_seed, &seed) < 0 ||
        opt_ranged_long(period_o, TMP_IOPT_period, &period) < 0) {
        return NULL;
    }
    if (lr < 0.0) { /* None: the plan's method's own rate */
        lr = tmp_method_lr(p->plan.method);
    }
    TrainerObject *self = PyObject_GC_New(TrainerObject, type);
    if (self == NULL) {
        return NULL;
    }
    memset((char *)self + sizeof(PyObject), 0, sizeof(TrainerObject) - sizeof(PyObject));
    PyObject_GC_Track(self);
    Py_INCREF(m);
    self->model = m;
    Py_INCREF(p);
    self->plan = p;
    const uint32_t need = p->plan.arena_bytes;
    if (arena != Py_None) {
        if (PyObject_GetBuffer(arena, &self->arena_view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "tinymp: arena must be a writable contiguous buffer (e.g. bytearray), "
                "not '%.200s'", Py_TYPE(arena)->tp_name);
            goto fail;
        }
        self->has_view = 1;
        Py_INCREF(arena);
        self->arena_owner = arena;
        uintptr_t a = (uintptr_t)self->arena_view.buf;
        size_t skip = (size_t)((4u - (a & 3u)) & 3u); /* use the 4-byte aligned part */
        if ((size_t)self->arena_view.len < skip + need) {
            if (skip != 0) {
                PyErr_Format(PyExc_MemoryError, "tinymp: the arena has %zd bytes, %zd after 4-byte alignment; "
                    "the plan needs %lu", self->arena_view.len,
                    self->arena_view.len > (Py_ssize_t)skip ? self->arena_view.len - (Py_ssize_t)skip : (Py_ssize_t)0,
                    (unsigned long)need);
            } else {
                PyErr_Format(PyExc_MemoryError, "tinymp: the arena has %zd bytes, the plan needs %lu",
                    self->arena_view.len, (unsigned long)need);
            }
            goto fail;
        }
        self->arena = (uint8_t *)self->arena_view.buf + skip;
        self->arena_size = (size_t)self->arena_view.len - skip;
    } else {
        self->own_arena = (uint8_t *)PyMem_Malloc((size_t)need + GUARD_BYTES);
        if (self->own_arena == NULL) {
            PyErr_Format(PyExc_MemoryError, "tinymp: cannot allocate a training arena of %lu bytes", (unsigned long)need);
            goto fail;
        }
        memset(self->own_arena + need, GUARD_FILL, GUARD_BYTES);
        self->arena = self->own_arena;
        self->arena_size = need;
    }
    self->logits_buf = (float *)PyMem_Malloc(sizeof(float) * (m->model.num_classes + 1u));
    if (self->logits_buf == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    tmp_status st = tmp_trainer_init(&self->t, &m->model, &p->plan, self->arena, self->arena_size, (float)lr,
        (uint32_t)seed);
    if (st != TMP_OK) {
        if (st == TMP_ERR_SIZE) {
            PyErr_Format(PyExc_MemoryError, "tinymp: the arena is smaller than the plan's %lu bytes", (unsigned long)need);
        } else {
            PyErr_Format(PyExc_ValueError, "tinymp: cannot start the trainer (%s)", tmp_status_name(st));
        }
        goto fail;
    }
    self->t.period = (uint32_t)period;
    self->t.clock = clock_us;
    self->ready = 1;
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static int Trainer_traverse(TrainerObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->model);
    Py_VISIT(self->plan);
    Py_VISIT(self->arena_owner);
    Py_VISIT(self->grads);
    return 0;
}

static int Trainer_clear(TrainerObject *self) {
    self->ready = 0;
    if (self->has_view) {
        self->has_view = 0;
        PyBuffer_Release(&self->arena_view);
    }
    Py_CLEAR(self->arena_owner);
    Py_CLEAR(self->grads);
    Py_CLEAR(self->plan);
    Py_CLEAR(self->model);
    return 0;
}

static void Trainer_dealloc(TrainerObject *self) {
    PyObject_GC_UnTrack(self);
    Trainer_clear(self);
    PyMem_Free(self->own_arena);
    PyMem_Free(self->logits_buf);
    PyObject_GC_Del(self);
}

/* A call on a trainer from inside its own fit() (one of fit's callbacks: xs[i], ys[i], progress,
 * a cache file's methods): refused by the engine (tmp_trainer_usable) with this error. */
static void busy_error(const char *what) {
    PyErr_Format(PyExc_RuntimeError, "tinymp: %s refused: this trainer's fit() is running (between steps its "
        "callbacks may only read the trainer -- predict(), logits(), save(), selection, stats() -- and set lr; "
        "inside a step or an APU probe, only stats())", what);
}

/* The engine's rule, asked before a call does work of its own (reads a file, a sample). */
static int trainer_usable(TrainerObject *self, int changes, const char *what) {
    if (tmp_trainer_usable(&self->t, changes) != TMP_OK) {
        busy_error(what);
        return -1;
    }
    return 0;
}

/* Map a core status of a step to an exception. */
static int step_error(TrainerObject *self, tmp_status st, const char *what) {
    if (!trainer_guard_intact(self)) {
        PyErr_SetString(PyExc_RuntimeError, "tinymp: arena overrun (engine bug)");
        return -1;
    }
    if (st == TMP_OK) {
        return 0;
    }
    if (st == TMP_ERR_BUSY) {
        busy_error(what);
        return -1;
    }
    if (st == TMP_ERR_FORMAT || st == TMP_ERR_SIZE) {
        PyErr_Format(PyExc_ValueError, "tinymp: the model data changed after loading (%s: %s)", what,
            tmp_status_name(st));
    } else if (st == TMP_ERR_ARG && self->own_arena == NULL) {
        /* the arguments were checked before the call: what the engine refused is the training
         * state it keeps in the caller's arena */
        PyErr_Format(PyExc_RuntimeError, "tinymp: %s failed: the training state in the arena is not "
            "valid (the arena buffer given to Trainer() was written to); reset() goes back to the "
            "pretrained parameters", what);
    } else {
        PyErr_Format(PyExc_RuntimeError, "tinymp: %s failed (%s)", what, tmp_status_name(st));
    }
    return -1;
}

static int get_label(TrainerObject *self, PyObject *y, int32_t *label) {
    return parse_label(self->model, y, "label", label);
}

/* `out` of step(): a writable buffer of exactly one float32 (array('f', [0.0]), bytearray(4)). */
static int get_loss_out(PyObject *out, Py_buffer *v) {
    if (!PyObject_CheckBuffer(out) ||
        PyObject_GetBuffer(out, v, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_BufferError) &&
            !PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_ValueError)) {
            return -1;
        }
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
            "tinymp: out must be a writable C-contiguous buffer of 1 float32, not '%.200s'", Py_TYPE(out)->tp_name);
        return -1;
    }
    const char *fmt = v->format != NULL ? v->format : "B";
    size_t fl = strlen(fmt);
    int is_f32 = v->itemsize == 4 && fl >= 1 && fmt[fl - 1] == 'f' && fmt[0] != '>' && fmt[0] != '!';
    if (!(is_f32 || v->itemsize == 1)) {
        PyErr_Format(PyExc_TypeError, "tinymp: out must hold float32 (format 'f'), got format '%s'", fmt);
        PyBuffer_Release(v);
        return -1;
    }
    if (v->len != (Py_ssize_t)sizeof(float)) {
        PyErr_Format(PyExc_ValueError, "tinymp: out has %zd bytes, expected 4 (1 float32)", v->len);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

/* A step's `cache`: a buffer of exactly plan.cache_bytes (writable for step(), which fills it;
 * readable for step_cached()). */
static int get_step_cache(TrainerObject *self, PyObject *cache, int writable, Py_buffer *v) {
    const uint32_t need = self->plan->plan.cache_bytes;
    if (need == 0) {
        PyErr_SetString(PyExc_ValueError, "tinymp: this plan has nothing to cache (plan.cache_bytes is 0: "
            "it trains from the first layer on, or a trained layer reads the input)");
        return -1;
    }
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (!PyObject_CheckBuffer(cache) || PyObject_GetBuffer(cache, v, flags) < 0) {
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_BufferError) &&
            !PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_ValueError)) {
            return -1;
        }
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "tinymp: cache must be a %sC-contiguous buffer of plan.cache_bytes "
            "bytes, not '%.200s'", writable ? "writable " : "", Py_TYPE(cache)->tp_name);
        return -1;
    }
    if (v->len != (Py_ssize_t)need) {
        PyErr_Format(PyExc_ValueError, "tinymp: cache has %zd bytes, expected plan.cache_bytes = %u",
            v->len, (unsigned)need);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

/* step(x, y, out=None, cache=None) and step_cached(cache, y, out=None): one training step on a
 * sample or on the frozen-prefix features step(..., cache=) kept of it. With `out` the loss is
 * stored in out[0] and `out` is returned (as logits(x, out=...)): nothing is allocated, which the
 * board needs under heap_lock(). */
static PyObject *trainer_step_any(TrainerObject *self, PyObject *x, PyObject *y, PyObject *out,
    PyObject *cache, int from_cache) {
    if (Trainer_check(self) < 0 || trainer_usable(self, 1, "training step") < 0) {
        return NULL;
    }
    Py_buffer ov, cv, v;
    int have_out = 0, have_cache = 0, have_x = 0;
    int32_t label;
    if (out != Py_None) {
        if (get_loss_out(out, &ov) < 0) {
            goto fail;
        }
        have_out = 1;
    }
    if (get_label(self, y, &label) < 0) {
        goto fail;
    }
    if (!from_cache) {
        if (get_input(self->model, x, &v) < 0) {
            goto fail;
        }
        have_x = 1;
    }
    /* step_cached() needs its buffer (None is refused); step() keeps features only when asked */
    if (from_cache || cache != Py_None) {
        if (get_step_cache(self, cache, !from_cache, &cv) < 0) {
            goto fail;
        }
        have_cache = 1;
    }
    float loss = 0.0f;
    tmp_status st;
    if (from_cache) {
        st = tmp_trainer_step_cached(&self->t, (const int8_t *)cv.buf, label, &loss);
    } else if (have_cache) {
        st = tmp_trainer_step_fill(&self->t, (const int8_t *)v.buf, label, (int8_t *)cv.buf, &loss);
    } else {
        st = tmp_trainer_step(&self->t, (const int8_t *)v.buf, label, &loss);
    }
    if (have_x) {
        PyBuffer_Release(&v);
        have_x = 0;
    }
    if (have_cache) {
        PyBuffer_Release(&cv);
        have_cache = 0;
    }
    if (step_error(self, st, "training step") < 0) {
        goto fail;
    }
    if (have_out) {
        memcpy(ov.buf, &loss, sizeof loss); /* `out` may be misaligned */
        PyBuffer_Release(&ov);
        Py_INCREF(out);
        return out;
    }
    return PyFloat_FromDouble((double)loss);
fail:
    if (have_out) {
        PyBuffer_Release(&ov);
    }
    if (have_cache) {
        PyBuffer_Release(&cv);
    }
    if (have_x) {
        PyBuffer_Release(&v);
    }
    return NULL;
}

static PyObject *Trainer_step(TrainerObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "y", "out", "cache", NULL};
    PyObject *x, *y, *out = Py_None, *cache = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|OO:step", kwlist, &x, &y, &out, &cache)) {
        return NULL;
    }
    return trainer_step_any(self, x, y, out, cache, 0);
}

static PyObject *Trainer_step_cached(TrainerObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"cache", "y", "out", NULL};
    PyObject *cache, *y, *out = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O:step_cached", kwlist, &cache, &y, &out)) {
        return NULL;
    }
    return trainer_step_any(self, NULL, y, out, cache, 1);
}

static int trainer_forward(TrainerObject *self, PyObject *x, const int8_t **out) {
    Py_buffer v;
    if (Trainer_check(self) < 0 || get_input(self->model, x, &v) < 0) {
        return -1;
    }
    tmp_status st = tmp_trainer_forward(&self->t, (const int8_t *)v.buf, out);
    PyBuffer_Release(&v);
    return step_error(self, st, "inference");
}

static PyObject *Trainer_predict(TrainerObject *self, PyObject *x) {
    const int8_t *out;
    if (trainer_forward(self, x, &out) < 0) {
        return NULL;
    }
    return PyLong_FromLong((long)tmp_argmax_s8(out, (int32_t)self->model->model.num_classes));
}

static PyObject *Trainer_logits(TrainerObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"x", "out", NULL};
    PyObject *x, *out = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:logits", kwlist, &x, &out) || Trainer_check(self) < 0) {
        return NULL;
    }
    Py_buffer ov;
    int have_out = out != Py_None;
    if (have_out && get_out(self->model, out, &ov) < 0) {
        return NULL;
    }
    const int8_t *q;
    if (trainer_forward(self, x, &q) < 0) {
        if (have_out) {
            PyBuffer_Release(&ov);
        }
        return NULL;
    }
    const int n = (int)self->model->model.num_classes;
    tmp_dequantize_output(&self->model->model, q, self->logits_buf);
    if (have_out) {
        memcpy(ov.buf, self->logits_buf, sizeof(float) * (size_t)n);
        PyBuffer_Release(&ov);
        Py_INCREF(out);
        return out;
    }
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)self->logits_buf, (Py_ssize_t)(sizeof(float) * n));
    if (bytes == NULL) {
        return NULL;
    }
    PyObject *arr = PyObject_CallFunction(array_type, "sO", "f", bytes);
    Py_DECREF(bytes);
    return arr;
}

static PyObject *Trainer_end_period(TrainerObject *self, PyObject *Py_UNUSED(ignored)) {
    if (Trainer_check(self) < 0) {
        return NULL;
    }
    if (step_error(self, tmp_trainer_end_period(&self->t), "end of period") < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Trainer_reset(TrainerObject *self, PyObject *Py_UNUSED(ignored)) {
    if (Trainer_check(self) < 0) {
        return NULL;
    }
    if (step_error(self, tmp_trainer_reset(&self->t), "reset") < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *call_files(const char *fn, PyObject *a, PyObject *b) {
    PyObject *mod = PyImport_ImportModule("tinymp._files");
    if (mod == NULL) {
        return NULL;
    }
    PyObject *r = b != NULL ? PyObject_CallMethod(mod, fn, "OO", a, b) : PyObject_CallMethod(mod, fn, "O", a);
    Py_DECREF(mod);
    return r;
}

static PyObject *Trainer_save(TrainerObject *self, PyObject *path) {
    if (Trainer_check(self) < 0 || trainer_usable(self, 0, "save") < 0) {
        return NULL;
    }
    uint32_t n = tmp_trainer_params_size(&self->t);
    PyObject *bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (bytes == NULL) {
        return NULL;
    }
    /* the engine checks the arena's state first (tmp_trainer_check_state), so a file a load
     * would refuse never replaces a good one: its refusal is the state error */
    if (step_error(self, tmp_trainer_params_save(&self->t, (uint8_t *)PyBytes_AS_STRING(bytes), n), "save") < 0) {
        Py_DECREF(bytes);
        return NULL;
    }
    PyObject *r = call_files("atomic_write", path, bytes);
    Py_DECREF(bytes);
    return r;
}

static PyObject *Trainer_load(TrainerObject *self, PyObject *path) {
    if (Trainer_check(self) < 0 || trainer_usable(self, 1, "load()") < 0) {
        return NULL;
    }
    PyObject *data = call_files("read_bytes", path, NULL);
    if (data == NULL) {
        return NULL;
    }
    const char *msg = NULL;
    int state = 0;
    tmp_status st = tmp_trainer_params_load(&self->t, (const uint8_t *)PyBytes_AS_STRING(data),
        (uint32_t)PyBytes_GET_SIZE(data), &msg, &state);
    Py_DECREF(data);
    if (st == TMP_ERR_BUSY) {
        busy_error("load()");
        return NULL;
    }
    if (st != TMP_OK) {
        PyErr_Format(PyExc_ValueError, "tinymp: cannot load %R: %s", path, msg != NULL ? msg : tmp_status_name(st));
        return NULL;
    }
    return PyBool_FromLong(state);
}

static PyObject *Trainer_stats(TrainerObject *self, PyObject *Py_UNUSED(ignored)) {
    if (Trainer_check(self) < 0) {
        return NULL;
    }
    const tmp_trainer *t = &self->t;
    return Py_BuildValue("{s:k,s:k,s:k,s:K,s:K,s:K,s:K,s:K,s:k,s:k,s:s}", "steps", (unsigned long)t->steps,
        "stalled_steps", (unsigned long)t->stalled_steps, "periods", (unsigned long)t->periods,
        "forward_macs", (unsigned long long)t->macs[TMP_PHASE_FORWARD], "backward_macs",
        (unsigned long long)t->macs[TMP_PHASE_BACKWARD], "forward_us", (unsigned long long)t->ticks[TMP_PHASE_FORWARD],
        "backward_us", (unsigned long long)t->ticks[TMP_PHASE_BACKWARD], "update_us",
        (unsigned long long)t->ticks[TMP_PHASE_UPDATE], "high_water", (unsigned long)tmp_trainer_high_water(t),
        "arena_bytes", (unsigned long)self->plan->plan.arena_bytes, "clock", "host");
}

static PyObject *Trainer_get_high_water(TrainerObject *self, void *c) {
    (void)c;
    if (Trainer_check(self) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(tmp_trainer_high_water(&self->t));
}

static PyObject *Trainer_get_selection(TrainerObject *self, void *c) {
    (void)c;
    if (Trainer_check(self) < 0 || step_error(self, tmp_trainer_check_state(&self->t), "selection") < 0) {
        return NULL;
    }
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    for (int32_t i = 0; i < self->plan->plan.num_layers; i++) {
        const uint16_t *ch = NULL;
        int32_t k = tmp_trainer_channels(&self->t, i, &ch);
        if (k == 0) {
            continue;
        }
        PyObject *key = PyLong_FromLong(i);
        PyObject *val = channel_list(ch, k);
        if (key == NULL || val == NULL || PyDict_SetItem(d, key, val) < 0) {
            Py_XDECREF(key);
            Py_XDECREF(val);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(key);
        Py_DECREF(val);
    }
    return d;
}

/* The gradient hook of _grads(): dict layer -> {o: bytes of float32 slice, "db": bytes}. */
static void grad_hook(void *ctx, int32_t layer, int32_t o, const float *dw, int32_t n, const float *db, int32_t nb) {
    TrainerObject *self = (TrainerObject *)ctx;
    if (self->grads == NULL || PyErr_Occurred()) {
        return;
    }
    PyObject *key = PyLong_FromLong(layer);
    if (key == NULL) {
        return;
    }
    PyObject *ld = PyDict_GetItemWithError(self->grads, key);
    if (ld == NULL && !PyErr_Occurred()) {
        ld = PyDict_New();
        if (ld == NULL || PyDict_SetItem(self->grads, key, ld) < 0) {
            Py_XDECREF(ld);
            Py_DECREF(key);
            return;
        }
        Py_DECREF(ld);
    }
    Py_DECREF(key);
    if (ld == NULL) {
        return;
    }
    if (dw != NULL) {
        PyObject *k2 = PyLong_FromLong(o);
        PyObject *b = PyBytes_FromStringAndSize((const char *)dw, (Py_ssize_t)(sizeof(float) * (size_t)n));
        if (k2 != NULL && b != NULL) {
            PyDict_SetItem(ld, k2, b);
        }
        Py_XDECREF(k2);
        Py_XDECREF(b);
    } else if (db != NULL) {
        dict_steal(ld, "db", PyBytes_FromStringAndSize((const char *)db, (Py_ssize_t)(sizeof(float) * (size_t)nb)));
    }
}

PyDoc_STRVAR(grads_doc,
"_grads(x, y, apply=False) -> (loss, dict)\n\n(test hook) One step whose weight-gradient slices are\n"
"captured: dict layer -> {o: float32 bytes of dW slice o, 'db': float32 bytes}. Unless apply, lr is\n"
"0 for the step (nothing changes but the stochastic-rounding state and momentum).");

static PyObject *Trainer_grads(TrainerObject *self, PyObject *args) {
    PyObject *x, *y;
    int apply = 0;
    if (!PyArg_ParseTuple(args, "OO|p:_grads", &x, &y, &apply) || Trainer_check(self) < 0 ||
        trainer_usable(self, 1, "training step") < 0) {
        return NULL;
    }
    int32_t label;
    Py_buffer v;
    if (get_label(self, y, &label) < 0 || get_input(self->model, x, &v) < 0) {
        return NULL;
    }
    self->grads = PyDict_New();
    if (self->grads == NULL) {
        PyBuffer_Release(&v);
        return NULL;
    }
    float lr = self->t.lr;
    if (!apply) {
        self->t.lr = 0.0f;
    }
    self->t.hook = grad_hook;
    self->t.hook_ctx = self;
    float loss = 0.0f;
    tmp_status st = tmp_trainer_step(&self->t, (const int8_t *)v.buf, label, &loss);
    self->t.hook = NULL;
    self->t.lr = lr;
    PyBuffer_Release(&v);
    PyObject *g = self->grads;
    self->grads = NULL;
    if (PyErr_Occurred() || step_error(self, st, "training step") < 0) {
        Py_DECREF(g);
        return NULL;
    }
    PyObject *r = Py_BuildValue("(dO)", (double)loss, g);
    Py_DECREF(g);
    return r;
}

static PyObject *Trainer_get_prediction(TrainerObject *self, void *c) {
    (void)c;
    if (Trainer_check(self) < 0) {
        return NULL;
    }
    return PyLong_FromLong((long)self->t.last_pred);
}

static PyObject *Trainer_get_lr(TrainerObject *self, void *c) {
    (void)c;
    return PyFloat_FromDouble((double)self->t.lr);
}

static int Trainer_set_lr(TrainerObject *self, PyObject *v, void *c) {
    (void)c;
    double lr;
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "tinymp: cannot delete lr");
        return -1;
    }
    if (trainer_usable(self, 0, "setting lr") < 0) {
        return -1;
    }
    if (v == Py_None) { /* opt_float() would read None as "the default" */
        PyErr_SetString(PyExc_TypeError, "tinymp: lr must be a number, not 'NoneType'");
        return -1;
    }
    if (opt_ranged_float(v, TMP_FOPT_lr, &lr) < 0) {
        return -1;
    }
    self->t.lr = (float)lr;
    return 0;
}

static PyObject *Trainer_get_plan(TrainerObject *self, void *c) {
    (void)c;
    Py_INCREF(self->plan);
    return (PyObject *)self->plan;
}


/* ---- fit(): a whole personalisation run in the core (tmp_trainer_fit) */

typedef struct {
    TrainerObject *self;
    PyObject *xs, *ys;
    Py_buffer cur;          /* the current sample's input */
    int has_cur;
    Py_buffer cache;        /* a caller's buffer cache (sample i at i * cache_bytes) */
    int has_cache;
    uint8_t *own;           /* cache=True: our buffer for the samples the arena does not hold, */
    uint32_t base;          /* sample i at (i - base) * cache_bytes (base: the arena's samples) */
    PyObject *file;         /* a file-like cache (seek/write/readinto) */
    PyObject *progress;
    uint32_t cache_bytes;
    PyObject *losses, *accs; /* per epoch, appended as epochs end: nothing reserved up front */
    double loss_sum;         /* the current epoch's so far */
    uint32_t correct, count, epoch;
    int error;              /* a Python exception is pending */
} fit_ctx;

static const int8_t *fit_sample(void *ctx, uint32_t i, int32_t *label) {
    fit_ctx *f = (fit_ctx *)ctx;
    if (f->has_cur) {
        PyBuffer_Release(&f->cur);
        f->has_cur = 0;
    }
    /* an exception already set (progress raised on an epoch's last step, whose period end still
     * probes) is put aside while Python runs, and stays the one fit() raises */
    PyObject *et = NULL, *ev = NULL, *tb = NULL;
    const int held = f->error && PyErr_Occurred() != NULL;
    if (held) {
        PyErr_Fetch(&et, &ev, &tb);
    }
    PyObject *x = PySequence_GetItem(f->xs, (Py_ssize_t)i);
    PyObject *y = x != NULL ? PySequence_GetItem(f->ys, (Py_ssize_t)i) : NULL;
    int ok = y != NULL && get_label(f->self, y, label) == 0 && get_input(f->self->model, x, &f->cur) == 0;
    Py_XDECREF(x);
    Py_XDECREF(y);
    if (held) {
        PyErr_Clear(); /* a second error: the first is raised */
        PyErr_Restore(et, ev, tb);
    }
    if (!ok) {
        f->error = 1;
        return NULL;
    }
    f->has_cur = 1;
    return (const int8_t *)f->cur.buf;
}

static int fit_file_seek(fit_ctx *f, uint32_t i, uint32_t offset) {
    PyObject *r = PyObject_CallMethod(f->file, "seek", "K",
        (unsigned long long)i * f->cache_bytes + offset);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* Did a cache file's write/readinto return the count n? Only an int equal to n counts: None, a
 * bool, a float, a str, an int subclass, a negative or a huge int is "fewer bytes", the one rule
 * both bindings apply (fit_count_is in modtinymp.c, where MicroPython's int check excludes bool
 * and subclasses as PyLong_CheckExact does), so no value the method returns raises an error of its
 * own here. */
static int fit_count_is(PyObject *r, uint32_t n) {
    if (!PyLong_CheckExact(r)) {
        return 0;
    }
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(r, &overflow); /* an exact int: cannot fail */
    return overflow == 0 && v == (long long)n;
}

/* A memoryview over a new buffer of n bytes (a copy of src, read-only, for write; writable, for
 * readinto, with *owner the bytearray it views), as the board hands a cache file views of a heap
 * block of its own: never a view of engine memory, which a slice the file keeps would outlive
 * (it could write into a freed arena); this call's buffer lives as long as any view of it. */
static PyObject *fit_file_view(const int8_t *src, uint32_t n, PyObject **owner) {
    PyObject *b = src != NULL ? PyBytes_FromStringAndSize((const char *)src, (Py_ssize_t)n)
                              : PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)n);
    PyObject *v = b != NULL ? PyMemoryView_FromObject(b) : NULL;
    if (v != NULL && owner != NULL) {
        *owner = b;
    } else {
        Py_XDECREF(b);
    }
    return v;
}

static int fit_store(void *ctx, uint32_t i, uint32_t offset, const int8_t *src, uint32_t n) {
    fit_ctx *f = (fit_ctx *)ctx;
    if (f->own != NULL) {
        memcpy(f->own + (size_t)(i - f->base) * f->cache_bytes + offset, src, n);
        return 0;
    }
    if (f->has_cache) {
        memcpy((uint8_t *)f->cache.buf + (size_t)i * f->cache_bytes + offset, src, n);
        return 0;
    }
    if (fit_file_seek(f, i, offset) < 0) {
        f->error = 1;
        return -1;
    }
    /* a file that stores less (or returns anything but n, fit_count_is): this sample is not
     * cached and the core stores nothing more in the file; one that raises: the run stops after
     * this step (fit_progress) and fit() raises it, as on the board */
    PyObject *view = fit_file_view(src, n, NULL);
    PyObject *r = view != NULL ? PyObject_CallMethod(f->file, "write", "O", view) : NULL;
    Py_XDECREF(view);
    if (r == NULL) {
        f->error = 1;
        return -1;
    }
    const int ok = fit_count_is(r, n);
    Py_DECREF(r);
    return ok ? 0 : -1;
}

static int fit_load(void *ctx, uint32_t i, uint32_t offset, int8_t *dst, uint32_t n) {
    fit_ctx *f = (fit_ctx *)ctx;
    if (f->own != NULL) {
        memcpy(dst, f->own + (size_t)(i - f->base) * f->cache_bytes + offset, n);
        return 0;
    }
    if (f->has_cache) {
        memcpy(dst, (const uint8_t *)f->cache.buf + (size_t)i * f->cache_bytes + offset, n);
        return 0;
    }
    if (fit_file_seek(f, i, offset) < 0) {
        f->error = 1;
        return -1;
    }
    /* the file reads into a view of a bytearray of its own, never into the arena (fit_file_view);
     * a view cannot change size, so `m[:k] = shorter` raises in the file as on the board. The
     * size check stays: a file may release the view and resize the bytearray (m.obj) */
    PyObject *buf = NULL;
    PyObject *view = fit_file_view(NULL, n, &buf);
    PyObject *r = view != NULL ? PyObject_CallMethod(f->file, "readinto", "O", view) : NULL;
    Py_XDECREF(view);
    int ok = r != NULL && fit_count_is(r, n) && PyByteArray_GET_SIZE(buf) == (Py_ssize_t)n;
    if (ok) {
        memcpy(dst, PyByteArray_AS_STRING(buf), n);
    }
    Py_XDECREF(buf);
    if (r != NULL && !ok) {
        PyErr_SetString(PyExc_OSError, "tinymp: the feature cache file returned fewer bytes than were stored");
    }
    Py_XDECREF(r);
    if (!ok) {
        f->error = 1;
        return -1;
    }
    return 0;
}

/* Is the pending exception a file's way of saying it is not open for this or cannot seek
 * (io.UnsupportedOperation, or an OSError EBADF, EACCES or ESPIPE as MicroPython's filesystems
 * raise)? */
static int fit_file_mode_error(void) {
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyErr_NormalizeException(&et, &ev, &tb);
    int mode = 0;
    if (ev != NULL && PyErr_GivenExceptionMatches(et, PyExc_OSError)) {
        PyObject *io = PyImport_ImportModule("io");
        PyObject *uo = io != NULL ? PyObject_GetAttrString(io, "UnsupportedOperation") : NULL;
        mode = uo != NULL && PyObject_IsInstance(ev, uo) == 1;
        Py_XDECREF(uo);
        Py_XDECREF(io);
        PyObject *no = mode ? NULL : PyObject_GetAttrString(ev, "errno");
        if (no == Py_None) {
            /* MicroPython's OSError(errno): one argument, which CPython does not take as errno */
            PyObject *args = PyObject_GetAttrString(ev, "args");
            if (args != NULL && PyTuple_Check(args) && PyTuple_GET_SIZE(args) == 1) {
                PyObject *a0 = PyTuple_GET_ITEM(args, 0);
                Py_INCREF(a0);
                Py_DECREF(no);
                no = a0;
            }
            Py_XDECREF(args);
        }
        if (no != NULL && PyLong_Check(no)) {
            const long v = PyLong_AsLong(no);
            mode = v == EBADF || v == EACCES || v == ESPIPE;
        }
        Py_XDECREF(no);
        PyErr_Clear();
    }
    PyErr_Restore(et, ev, tb);
    return mode;
}

/* A cache file is tried before the first step (every input is), where fit() would first store:
 * one sample's worth of zeros written (and flushed) and read back, then of 0xA5 -- as on the board
 * (modtinymp.c, fit_probe_file). A file that cannot be read and written in place raises one
 * ValueError that says so, and nothing trains: one not open for both ('rb', 'wb'), one that cannot
 * seek, one whose writes go elsewhere ('a+b': every write appends, so at least one of the two
 * reads finds other bytes, whatever the file held before). Any other exception (a full disk, the
 * file object's own) propagates unchanged. A write that stores less is no error (those samples
 * are just not cached, as in fit_store). */
#define FIT_PROBE_BYTE 0xA5

/* One call of the file's `method` at the probe's place on a view of a buffer of its own
 * (fit_file_view, as fit_store and fit_load): a write of n bytes of `pattern`, or a readinto
 * (into bytes that are not the pattern) whose bytes are copied to io (n bytes). 1: it returned the
 * count n (fit_count_is); 0: anything else; -1: it raised (pending). A write is followed by
 * flush() when the file has one: a buffered file would otherwise give the bytes back from its
 * buffer, wherever its writes really go ('a+b'). */
static int fit_probe_call(fit_ctx *f, uint32_t offset, const char *method, unsigned pattern, uint8_t *io) {
    const uint32_t n = f->cache_bytes;
    if (fit_file_seek(f, 0, offset) < 0) {
        return -1;
    }
    const int write = strcmp(method, "write") == 0;
    PyObject *buf = NULL;
    if (write) {
        memset(io, (int)pattern, n);
    }
    PyObject *view = fit_file_view(write ? (const int8_t *)io : NULL, n, write ? NULL : &buf);
    if (buf != NULL) {
        memset(PyByteArray_AS_STRING(buf), (int)(pattern ^ 0xFFu), n);
    }
    PyObject *r = view != NULL ? PyObject_CallMethod(f->file, method, "O", view) : NULL;
    Py_XDECREF(view);
    if (r != NULL && write && PyObject_HasAttrString(f->file, "flush")) {
        PyObject *fr = PyObject_CallMethod(f->file, "flush", NULL);
        if (fr == NULL) {
            Py_CLEAR(r);
        }
        Py_XDECREF(fr);
    }
    int ok = r == NULL ? -1 : fit_count_is(r, n);
    if (ok == 1 && buf != NULL) {
        /* the file may have let go of the view and resized its bytearray (m.obj): not read back */
        ok = PyByteArray_GET_SIZE(buf) == (Py_ssize_t)n;
        if (ok) {
            memcpy(io, PyByteArray_AS_STRING(buf), n);
        }
    }
    Py_XDECREF(buf);
    Py_XDECREF(r);
    return ok;
}

static int fit_probe_file(fit_ctx *f, uint32_t offset) {
    const uint32_t n = f->cache_bytes;
    uint8_t *io = PyMem_Malloc(n);
    if (io == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int bad = 0, stored = 1, r = 0;
    for (unsigned pattern = 0; pattern <= FIT_PROBE_BYTE && stored && !bad; pattern += FIT_PROBE_BYTE) {
        r = fit_probe_call(f, offset, "write", pattern, io);
        stored = r == 1;
        if (stored) {
            r = fit_probe_call(f, offset, "readinto", pattern, io);
            bad = r != 1;
            for (uint32_t k = 0; k < n && !bad; k++) {
                bad = io[k] != pattern;
            }
        }
    }
    PyMem_Free(io);
    if (r == -1 && !fit_file_mode_error()) {
        return -1; /* its own exception, unchanged */
    }
    if (r == -1 || bad) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "tinymp: fit() cache file must be opened 'w+b' or 'r+b' (read and written in place)");
        return -1;
    }
    return 0;
}

/* The mean loss and accuracy of the epoch that just ended, appended to the result's lists;
 * -1 with MemoryError. */
static int fit_close_epoch(fit_ctx *f) {
    int bad = 0;
    if (f->count != 0) {
        PyObject *a = PyFloat_FromDouble(f->loss_sum / f->count);
        PyObject *b = PyFloat_FromDouble((double)f->correct / f->count);
        bad = a == NULL || b == NULL || PyList_Append(f->losses, a) < 0 || PyList_Append(f->accs, b) < 0;
        Py_XDECREF(a);
        Py_XDECREF(b);
    }
    f->loss_sum = 0.0;
    f->correct = 0;
    f->count = 0;
    return bad ? -1 : 0;
}

static int fit_progress(void *ctx, uint32_t epoch, uint32_t done, float loss, int correct) {
    fit_ctx *f = (fit_ctx *)ctx;
    if (epoch != f->epoch) {
        f->epoch = epoch;
        if (fit_close_epoch(f) < 0) {
            f->error = 1;
            return 1;
        }
    }
    f->loss_sum += (double)loss;
    f->correct += correct ? 1u : 0u;
    f->count++;
    if (f->error) {
        return 1; /* a cache file raised during this step: stop, fit() raises it */
    }
    int stop = 0;
    if (f->progress != NULL && f->progress != Py_None) {
        PyObject *r = PyObject_CallFunction(f->progress, "IIdO", epoch, done, (double)loss,
            correct ? Py_True : Py_False);
        if (r == NULL) {
            f->error = 1;
            return 1;
        }
        stop = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (stop < 0) {
            f->error = 1;
            return 1;
        }
    }
    /* Ctrl-C stops a long fit() between steps, as on the board (it raises KeyboardInterrupt) */
    if (PyErr_CheckSignals() < 0) {
        f->error = 1;
        return 1;
    }
    return stop;
}


/* Can the heap give `bytes` now? (a block is taken and given back) */
static int fit_heap_has(uint64_t bytes) {
    if (bytes > (uint64_t)PY_SSIZE_T_MAX / 2) {
        return 0;
    }
    void *b = PyMem_Malloc((size_t)bytes);
    PyMem_Free(b);
    return b != NULL;
}

/* cache=True: a buffer for the `want` samples the arena does not hold, or, when the heap cannot
 * give that and TMP_FIT_HEAP_RESERVE more, for as many of them as it can -- the rule both bindings
 * take from the core (tmp_fit_cache_count); a PC seldom runs short. *count: the samples it
 * holds; NULL when none. */
static uint8_t *fit_own_cache(uint32_t want, uint32_t cache_bytes, uint32_t *count) {
    const uint32_t lo = tmp_fit_cache_count(want, cache_bytes, TMP_FIT_HEAP_RESERVE, fit_heap_has);
    uint8_t *b = lo != 0 ? (uint8_t *)PyMem_Malloc((size_t)lo * cache_bytes) : NULL;
    *count = b != NULL ? lo : 0u;
    return b;
}

/* Has o a length (a __len__, of a class or a native type)? One without is no sequence for fit(),
 * as on the board (mp_obj_len_maybe); a __len__ that raises or returns no int still fails with
 * the runtime's own error. Runs no Python code. */
static int fit_has_len(PyObject *o) {
    const PySequenceMethods *s = Py_TYPE(o)->tp_as_sequence;
    const PyMappingMethods *m = Py_TYPE(o)->tp_as_mapping;
    return (s != NULL && s->sq_length != NULL) || (m != NULL && m->mp_length != NULL);
}

/* fit(xs, ys, epochs=1, cache=True, shuffle=True, progress=None, probe=0) -> dict */
static PyObject *Trainer_fit(TrainerObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"xs", "ys", "epochs", "cache", "shuffle", "progress", "probe", NULL};
    PyObject *xs, *ys, *epochs_o = NULL, *cache = Py_True, *progress = Py_None, *probe_o = NULL;
    int shuffle = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|OOpOO:fit", kwlist, &xs, &ys, &epochs_o, &cache, &shuffle,
            &progress, &probe_o) || Trainer_check(self) < 0 || trainer_usable(self, 1, "fit()") < 0) {
        return NULL;
    }
    long long ep, probe;
    if (opt_ranged_long(epochs_o, TMP_IOPT_epochs, &ep) < 0 || opt_ranged_long(probe_o, TMP_IOPT_probe, &probe) < 0) {
        return NULL;
    }
    if (progress != Py_None && !PyCallable_Check(progress)) {
        PyErr_SetString(PyExc_TypeError, "tinymp: progress must be callable or None");
        return NULL;
    }
    if (!PySequence_Check(xs) || !PySequence_Check(ys) || PyUnicode_Check(xs) || PyBytes_Check(xs) ||
            !fit_has_len(xs) || !fit_has_len(ys)) {
        PyErr_SetString(PyExc_TypeError, "tinymp: fit() takes a sequence of inputs and a sequence of labels");
        return NULL;
    }
    Py_ssize_t n = PySequence_Size(xs), ny = PySequence_Size(ys);
    if (n < 0 || ny < 0) {
        return NULL;
    }
    if (n != ny) {
        PyErr_Format(PyExc_ValueError, "tinymp: %zd inputs but %zd labels", n, ny);
        return NULL;
    }
    if (n == 0 || n > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "tinymp: fit() needs at least one sample");
        return NULL;
    }
    fit_ctx f;
    memset(&f, 0, sizeof f);
    f.self = self;
    f.xs = xs;
    f.ys = ys;
    f.progress = progress;
    const tmp_train_plan *p = &self->plan->plan;
    f.cache_bytes = p->cache_bytes;
    /* every sample is checked before the first step: bad input changes nothing. Our own error
     * about a sample (a TypeError or ValueError "tinymp: ...") is raised again naming the sample,
     * as on the board; any other exception (the sequence's own, an OSError of a file it reads)
     * propagates unchanged, errno and class included */
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t label;
        if (fit_sample(&f, (uint32_t)i, &label) == NULL) {
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            PyErr_NormalizeException(&et, &ev, &tb);
            PyObject *msg = NULL;
            const char *text = NULL;
            if ((et == PyExc_TypeError || et == PyExc_ValueError) && ev != NULL) {
                msg = PyObject_Str(ev);
                text = msg != NULL ? PyUnicode_AsUTF8(msg) : NULL;
                PyErr_Clear();
            }
            if (text != NULL && strncmp(text, "tinymp: ", 8) == 0) {
                PyErr_Format(et, "tinymp: fit() sample %zd: %s", i, text + 8);
                Py_XDECREF(et);
                Py_XDECREF(ev);
                Py_XDECREF(tb);
            } else {
                PyErr_Restore(et, ev, tb);
            }
            Py_XDECREF(msg);
            goto fail;
        }
    }
    uint32_t flags = shuffle ? 0u : TMP_FIT_NO_SHUFFLE;
    tmp_fit_io io = { fit_sample, NULL, NULL, fit_progress, &f, 0, (uint32_t)probe };
    int want_outside = p->cache_bytes != 0 && (uint32_t)n > p->cache_samples && ep > 1;
    if (cache == Py_False || cache == Py_None) {
        flags |= TMP_FIT_NO_CACHE;
    } else if (cache == Py_True) {
        if (want_outside) {
            /* room for the samples beyond the arena's, as many as the heap has (as on the board):
             * the rest run the prefix again */
            uint32_t count = 0;
            f.own = fit_own_cache((uint32_t)n - p->cache_samples, p->cache_bytes, &count);
            f.base = p->cache_samples;
            io.cache_end = p->cache_samples + count;
        }
    } else if (PyObject_CheckBuffer(cache)) {
        if (PyObject_GetBuffer(cache, &f.cache, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError, "tinymp: cache must be True, False, a writable buffer or a binary file");
            goto fail;
        }
        f.has_cache = 1;
        io.cache_end = (uint32_t)n;
        if (f.cache.len < (Py_ssize_t)n * (Py_ssize_t)p->cache_bytes) {
            PyErr_Format(PyExc_ValueError, "tinymp: the cache buffer has %zd bytes; %zd samples need %zd "
                "(plan.cache_bytes = %u per sample)", f.cache.len, n, n * (Py_ssize_t)p->cache_bytes,
                (unsigned)p->cache_bytes);
            goto fail;
        }
    } else if (PyObject_HasAttrString(cache, "readinto") && PyObject_HasAttrString(cache, "write") &&
               PyObject_HasAttrString(cache, "seek")) {
        f.file = cache;
        io.cache_end = (uint32_t)n;
        if (want_outside && fit_probe_file(&f, p->cache_samples * p->cache_bytes) < 0) { /* where the first store would go */
            goto fail;
        }
    } else {
        PyErr_SetString(PyExc_TypeError, "tinymp: cache must be True, False, a writable buffer or a binary file");
        goto fail;
    }
    if (f.own != NULL || f.has_cache || f.file != NULL) {
        io.cache_store = fit_store;
        io.cache_load = fit_load;
    }
    f.losses = PyList_New(0);
    f.accs = PyList_New(0);
    if (f.losses == NULL || f.accs == NULL) {
        goto fail;
    }
    tmp_fit_stats st;
    tmp_status s = tmp_trainer_fit(&self->t, (uint32_t)n, (uint32_t)ep, flags, &io, &st);
    /* a Ctrl-C after the last step (in the run's last period end) is fit()'s own, as on the board */
    if (f.error || PyErr_CheckSignals() < 0) {
        goto fail;
    }
    if (step_error(self, s, "fit") < 0) {
        goto fail;
    }
    if (fit_close_epoch(&f) < 0) {
        goto fail;
    }
    PyObject *result = Py_BuildValue("{s:I,s:I,s:O,s:O,s:I,s:I,s:I,s:I,s:O,s:I}", "epochs", st.epochs, "steps",
        st.steps, "loss", f.losses, "accuracy", f.accs, "cached_steps", st.cached_steps, "cache_in_arena",
        st.in_arena, "cache_outside", st.outside, "cache_bytes", p->cache_bytes, "stopped",
        st.stopped ? Py_True : Py_False, "stalled_steps", st.stalled);
    if (f.has_cur) {
        PyBuffer_Release(&f.cur);
    }
    if (f.has_cache) {
        PyBuffer_Release(&f.cache);
    }
    PyMem_Free(f.own);
    Py_XDECREF(f.losses);
    Py_XDECREF(f.accs);
    return result;
fail:
    if (f.has_cur) {
        PyBuffer_Release(&f.cur);
    }
    if (f.has_cache) {
        PyBuffer_Release(&f.cache);
    }
    PyMem_Free(f.own);
    Py_XDECREF(f.losses);
    Py_XDECREF(f.accs);
    return NULL;
}

static PyGetSetDef Trainer_getset[] = {
    {"high_water", (getter)Trainer_get_high_water, NULL, "arena bytes actually touched so far", NULL},
    {"prediction", (getter)Trainer_get_prediction, NULL,
        "the class the last step's forward pass predicted (before its update); -1 before a step", NULL},
    {"selection", (getter)Trainer_get_selection, NULL, "dict layer -> input channels updated this period", NULL},
    {"lr", (getter)Trainer_get_lr, (setter)Trainer_set_lr, "learning rate", NULL},
    {"plan", (getter)Trainer_get_plan, NULL, "the plan", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Trainer_methods[] = {
    {"step", (PyCFunction)(void (*)(void))Trainer_step, METH_VARARGS | METH_KEYWORDS,
        "step(x, y, out=None, cache=None) -> loss: one SGD step (with out, a buffer of one float32: the\n"
        "loss is stored in out[0] and out is returned; nothing is allocated). With cache, a writable\n"
        "buffer of plan.cache_bytes, the sample's frozen-prefix features are kept in it"},
    {"step_cached", (PyCFunction)(void (*)(void))Trainer_step_cached, METH_VARARGS | METH_KEYWORDS,
        "step_cached(cache, y, out=None) -> loss: the step on a sample from the features that\n"
        "step(x, y, cache=cache) kept of it (the frozen prefix is skipped; identical result)"},
    {"predict", (PyCFunction)Trainer_predict, METH_O, "predict(x) -> int, with the trained parameters"},
    {"fit", (PyCFunction)(void (*)(void))Trainer_fit, METH_VARARGS | METH_KEYWORDS,
        "fit(xs, ys, epochs=1, cache=True, shuffle=True, progress=None, probe=0) -> dict: a personalisation run\n"
        "(epochs over the samples; the frozen prefix runs once per sample when the plan has one).\n"
        "cache: True (the arena's cache region, then a buffer), False, a writable buffer of\n"
        "len(xs) * plan.cache_bytes, or a binary file (seek/write/readinto). progress(epoch, done,\n"
        "loss, correct) is called after every step; a true return value stops the run. probe: APU's\n"
        "probe variant, the channels a period did not update measured on this many samples."},
    {"logits", (PyCFunction)(void (*)(void))Trainer_logits, METH_VARARGS | METH_KEYWORDS,
        "logits(x, out=None) -> array('f'), with the trained parameters"},
    {"end_period", (PyCFunction)Trainer_end_period, METH_NOARGS, "close an APU period: re-select channels"},
    {"reset", (PyCFunction)Trainer_reset, METH_NOARGS, "back to the pretrained parameters"},
    {"save", (PyCFunction)Trainer_save, METH_O, "save(path): the personalised parameters, atomically"},
    {"load", (PyCFunction)Trainer_load, METH_O, "load(path): parameters saved by save() for this plan"},
    {"stats", (PyCFunction)Trainer_stats, METH_NOARGS, "stats() -> dict of counters"},
    {"_grads", (PyCFunction)Trainer_grads, METH_VARARGS, grads_doc},
    {NULL, NULL, 0, NULL},
};

static PyObject *Trainer_repr(TrainerObject *self) {
    if (!self->ready) {
        return PyUnicode_FromString("<tinymp.Trainer (uninitialised)>");
    }
    return PyUnicode_FromFormat("<tinymp.Trainer method=%s steps=%lu arena=%lu bytes>",
        tmp_method_name(self->plan->plan.method), (unsigned long)self->t.steps,
        (unsigned long)self->plan->plan.arena_bytes);
}

static PyTypeObject Trainer_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tinymp.Trainer",
    .tp_basicsize = sizeof(TrainerObject),
    .tp_dealloc = (destructor)Trainer_dealloc,
    .tp_repr = (reprfunc)Trainer_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Trainer(model, plan, lr=None, arena=None, seed=1, period=0): on-device training (docs/API.md).",
    .tp_traverse = (traverseproc)Trainer_traverse,
    .tp_clear = (inquiry)Trainer_clear,
    .tp_methods = Trainer_methods,
    .tp_getset = Trainer_getset,
    .tp_new = Trainer_new,
};

/* ---------------------------------------------------------------- crc32 */

static PyObject *mod_crc32(PyObject *mod, PyObject *args) {
    (void)mod;
    Py_buffer v;
    unsigned long crc = 0;
    if (!PyArg_ParseTuple(args, "y*|k:crc32", &v, &crc)) {
        return NULL;
    }
    uint32_t r = tmp_crc32((uint32_t)crc, (const uint8_t *)v.buf, (size_t)v.len);
    PyBuffer_Release(&v);
    return PyLong_FromUnsignedLong(r);
}

static PyMethodDef module_methods[] = {
    {"crc32", (PyCFunction)mod_crc32, METH_VARARGS, "crc32(data, crc=0) -> int: CRC-32 (as zlib)"},
    {"_option_ranges", (PyCFunction)mod_option_ranges, METH_NOARGS,
     "_option_ranges() -> {name: (kind, low, high, low excluded)}: the ranges plan() and Trainer() "
     "accept (PC only)"},
    {"_method_lr", (PyCFunction)mod_method_lr, METH_O,
     "_method_lr(method) -> float: the rate a Trainer of this method takes when given no lr (PC only)"},
    {NULL, NULL, 0, NULL},
};

/* ---------------------------------------------------------------- module */

static struct PyModuleDef tinymp_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tinymp._tinymp",
    .m_doc = module_doc,
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__tinymp(void) {
    if (PyType_Ready(&Model_Type) < 0 || PyType_Ready(&Plan_Type) < 0 || PyType_Ready(&Trainer_Type) < 0) {
        return NULL;
    }
    if (array_type == NULL) {
        PyObject *array_mod = PyImport_ImportModule("array");
        if (array_mod == NULL) {
            return NULL;
        }
        array_type = PyObject_GetAttrString(array_mod, "array");
        Py_DECREF(array_mod);
        if (array_type == NULL) {
            return NULL;
        }
    }
    PyObject *m = PyModule_Create(&tinymp_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&Model_Type);
    if (PyModule_AddObject(m, "Model", (PyObject *)&Model_Type) < 0) {
        Py_DECREF(&Model_Type);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&Plan_Type);
    Py_INCREF(&Trainer_Type);
    if (PyModule_AddObject(m, "Plan", (PyObject *)&Plan_Type) < 0 ||
        PyModule_AddObject(m, "Trainer", (PyObject *)&Trainer_Type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddStringConstant(m, "__version__", TINYMP_VERSION) < 0 ||
        PyModule_AddStringConstant(m, "ENGINE", "c") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
