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

static PyMethodDef Model_methods[] = {
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

/* ---------------------------------------------------------------- module */

static struct PyModuleDef tinymp_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tinymp._tinymp",
    .m_doc = module_doc,
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__tinymp(void) {
    if (PyType_Ready(&Model_Type) < 0) {
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
    if (PyModule_AddStringConstant(m, "__version__", TINYMP_VERSION) < 0 ||
        PyModule_AddStringConstant(m, "ENGINE", "c") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
