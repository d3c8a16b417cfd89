/*
 * tinymp core: .tmpm reader and validator (docs/FORMAT.md).
 *
 * Every rule of the format is checked here, once in tmp_model_init() for the whole file and again
 * for one record whenever tmp_model_layer()/tmp_model_tensor() decode it, so no later code reads
 * outside the buffer or feeds a kernel values that make its arithmetic undefined.
 */
#include <math.h>
#include <string.h>

#include "tmp_model.h"

/* ---- little-endian field readers (no alignment assumptions) ---- */

static uint16_t rd16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static int32_t rdi32(const uint8_t *p) {
    uint32_t u = rd32(p);
    int32_t v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static float rdf32(const uint8_t *p) {
    uint32_t u = rd32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static tmp_status fail(tmp_error *err, int32_t layer, int32_t type, int32_t tensor, const char *msg) {
    if (err != NULL) {
        err->layer = layer;
        err->layer_type = type;
        err->tensor = tensor;
        err->msg = msg;
    }
    return TMP_ERR_FORMAT;
}

const char *tmp_layer_type_name(int32_t type) {
    switch (type) {
        case TMP_LAYER_CONV:
            return "conv";
        case TMP_LAYER_DWCONV:
            return "dwconv";
        case TMP_LAYER_PWCONV:
            return "pwconv";
        case TMP_LAYER_ADD:
            return "add";
        case TMP_LAYER_AVGPOOL:
            return "avgpool";
        case TMP_LAYER_FC:
            return "fc";
        default:
            return "unknown";
    }
}

/* CRC-32 (reflected polynomial 0xEDB88320), four bits at a time from a 16-entry table. */
uint32_t tmp_crc32(uint32_t crc, const uint8_t *p, size_t n) {
    static const uint32_t nibble[16] = {
        0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
        0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
        0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
    };
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        crc = (crc >> 4) ^ nibble[crc & 15u];
        crc = (crc >> 4) ^ nibble[crc & 15u];
    }
    return ~crc;
}

/* Does the array [off, off + bytes) lie inside the file body, 4-aligned? */
static int array_ok(const tmp_model *m, uint32_t off, uint64_t bytes) {
    if (off < TMP_HEADER_SIZE || (off & 3u) != 0 || off > m->size) {
        return 0;
    }
    return bytes <= (uint64_t)(m->size - off);
}

tmp_status tmp_model_tensor(const tmp_model *m, int32_t idx, tmp_tensor *t, tmp_error *err) {
    if (idx < 0 || idx >= (int32_t)m->num_tensors) {
        return fail(err, -1, -1, idx, "tensor index out of range");
    }
    const uint8_t *r = m->data + m->tensor_table_off + (uint32_t)idx * TMP_TENSOR_RECORD_SIZE;
    uint16_t h = rd16(r), w = rd16(r + 2), c = rd16(r + 4);
    if (h == 0 || w == 0 || c == 0) {
        return fail(err, -1, -1, idx, "zero dimension");
    }
    if ((uint64_t)h * w * c > (UINT64_C(1) << 24)) {
        return fail(err, -1, -1, idx, "more than 2^24 elements");
    }
    if (rd16(r + 6) != 0) {
        return fail(err, -1, -1, idx, "reserved flags are not zero");
    }
    float scale = rdf32(r + 8);
    if (!isfinite(scale) || !(scale > 0.0f)) {
        return fail(err, -1, -1, idx, "scale is not a finite positive number");
    }
    int32_t zp = rdi32(r + 12);
    if (zp < -128 || zp > 127) {
        return fail(err, -1, -1, idx, "zero point outside [-128, 127]");
    }
    t->dims.h = h;
    t->dims.w = w;
    t->dims.c = c;
    t->scale = scale;
    t->zero_point = zp;
    return TMP_OK;
}

/* One spatial axis of a k x k window: does `out` follow from in, k, stride and both paddings? */
static int axis_ok(int32_t in, int32_t out, int32_t k, int32_t stride, int32_t pad_a, int32_t pad_b) {
    if (k < 1 || k > 11 || stride < 1 || stride > 4 || pad_a >= k || pad_b >= k) {
        return 0;
    }
    int32_t span = in + pad_a + pad_b;
    if (span < k) {
        return 0;
    }
    return out == (span - k) / stride + 1;
}

/* Checks of the per-output-channel arrays of conv/dwconv/pwconv/fc: their bounds, and with
 * `values` each channel's bias, multiplier, shift and weight scale. */
static tmp_status channel_arrays(const tmp_model *m, int32_t idx, const uint8_t *r, int32_t cout,
    uint64_t weight_count, uint32_t reduction, int values, tmp_layer *l, tmp_error *err) {
    const int32_t type = r[0];
    uint32_t w_off = rd32(r + 20), b_off = rd32(r + 24), m_off = rd32(r + 28);
    uint32_t s_off = rd32(r + 32), ws_off = rd32(r + 36);
    uint64_t cbytes = (uint64_t)cout * 4u;
    if (!array_ok(m, w_off, weight_count)) {
        return fail(err, idx, type, -1, "weight offset beyond end of file or misaligned");
    }
    if (!array_ok(m, b_off, cbytes)) {
        return fail(err, idx, type, -1, "bias offset beyond end of file or misaligned");
    }
    if (!array_ok(m, m_off, cbytes)) {
        return fail(err, idx, type, -1, "multiplier offset beyond end of file or misaligned");
    }
    if (!array_ok(m, s_off, cbytes)) {
        return fail(err, idx, type, -1, "shift offset beyond end of file or misaligned");
    }
    if (!array_ok(m, ws_off, cbytes)) {
        return fail(err, idx, type, -1, "weight-scale offset beyond end of file or misaligned");
    }
    for (int32_t i = 0; i < 6; i++) {
        if (rdi32(r + 40 + 4 * i) != 0) {
            return fail(err, idx, type, -1, "unused params are not zero");
        }
    }
    l->weights = (const int8_t *)(const void *)(m->data + w_off);
    l->bias = (const int32_t *)(const void *)(m->data + b_off);
    l->mult = (const int32_t *)(const void *)(m->data + m_off);
    l->shift = (const int32_t *)(const void *)(m->data + s_off);
    l->wscale = (const float *)(const void *)(m->data + ws_off);
    /* |x - zp| <= 255 and |w| <= 128: the accumulator stays in int32 when |bias| <= limit.
     * Every inference and training step runs these checks on every channel, so each one is an
     * unsigned range test: bias + limit in [0, 2 * limit] (no wrap-around, limit < 2^31), shift
     * + 31 in [0, 61], and the scale's bits - 1 in [0, 0x7F7FFFFE], i.e. a positive, non-zero,
     * finite float (zeros, negatives, infinities and NaNs all fall outside). */
    const int64_t bias_limit = (int64_t)INT32_MAX - (int64_t)32640 * reduction;
    if (bias_limit < 0 && cout > 0) {
        return fail(err, idx, type, -1, "bias too large: the int32 accumulator could overflow");
    }
    const uint32_t lim = (uint32_t)bias_limit;
    for (int32_t o = 0; values && o < cout; o++) {
        if ((uint32_t)l->bias[o] + lim > 2u * lim) {
            return fail(err, idx, type, -1, "bias too large: the int32 accumulator could overflow");
        }
        if (l->mult[o] < 0) {
            return fail(err, idx, type, -1, "negative requantisation multiplier");
        }
        if ((uint32_t)l->shift[o] + 31u > 61u) {
            return fail(err, idx, type, -1, "requantisation shift outside [-31, 30]");
        }
        uint32_t bits;
        memcpy(&bits, &l->wscale[o], sizeof bits);
        if (bits - 1u > 0x7F7FFFFEu) {
            return fail(err, idx, type, -1, "weight scale is not a finite positive number");
        }
    }
    return TMP_OK;
}

static int geometry_is_zero(const uint8_t *r) {
    for (int i = 2; i <= 9; i++) {
        if (r[i] != 0) {
            return 0;
        }
    }
    return 1;
}

static int offsets_are_zero(const uint8_t *r) {
    for (int i = 0; i < 5; i++) {
        if (rd32(r + 20 + 4 * i) != 0) {
            return 0;
        }
    }
    return 1;
}

static int requant_ok(int32_t mult, int32_t shift) {
    return mult >= 0 && shift >= -31 && shift <= 30;
}

static tmp_status layer_read(const tmp_model *m, int32_t idx, int values, tmp_layer *l, tmp_error *err) {
    if (idx < 0 || idx >= (int32_t)m->num_layers) {
        return fail(err, idx, -1, -1, "layer index out of range");
    }
    const uint8_t *r = m->data + m->layer_table_off + (uint32_t)idx * TMP_LAYER_RECORD_SIZE;
    const int32_t type = r[0];
    memset(l, 0, sizeof *l);
    l->type = r[0];
    l->kh = r[2];
    l->kw = r[3];
    l->stride_h = r[4];
    l->stride_w = r[5];
    l->pad_t = r[6];
    l->pad_l = r[7];
    l->pad_b = r[8];
    l->pad_r = r[9];
    l->act_min = (int8_t)r[10];
    l->act_max = (int8_t)r[11];
    l->in0 = rd16(r + 12);
    l->in1 = rd16(r + 14);
    l->out = rd16(r + 16);
    for (int32_t i = 0; i < 6; i++) {
        l->params[i] = rdi32(r + 40 + 4 * i);
    }
    if (type < TMP_LAYER_CONV || type > TMP_LAYER_FC) {
        return fail(err, idx, type, -1, "unknown layer type");
    }
    if (r[1] != 0 || rd16(r + 18) != 0) {
        return fail(err, idx, type, -1, "reserved fields are not zero");
    }
    if (l->act_min > l->act_max) {
        return fail(err, idx, type, -1, "activation range is empty (act_min > act_max)");
    }
    if ((int32_t)l->out != idx + 1) {
        return fail(err, idx, type, -1, "output tensor must be the layer index + 1");
    }
    if (l->in0 >= l->out) {
        return fail(err, idx, type, -1, "input tensor is not produced by an earlier layer");
    }
    if (type == TMP_LAYER_ADD) {
        if (l->in1 >= l->out) {
            return fail(err, idx, type, -1, "second input tensor is not produced by an earlier layer");
        }
    } else if (l->in1 != TMP_NO_TENSOR) {
        return fail(err, idx, type, -1, "second input given to a one-input layer");
    }
    tmp_tensor tin, tout;
    if (tmp_model_tensor(m, l->in0, &tin, NULL) != TMP_OK) {
        return fail(err, idx, type, l->in0, "invalid input tensor");
    }
    if (tmp_model_tensor(m, l->out, &tout, NULL) != TMP_OK) {
        return fail(err, idx, type, l->out, "invalid output tensor");
    }
    const tmp_dims in = tin.dims, out = tout.dims;

    switch (type) {
        case TMP_LAYER_CONV:
        case TMP_LAYER_DWCONV: {
            if (!axis_ok(in.h, out.h, l->kh, l->stride_h, l->pad_t, l->pad_b) ||
                !axis_ok(in.w, out.w, l->kw, l->stride_w, l->pad_l, l->pad_r)) {
                return fail(err, idx, type, -1,
                    "kernel, stride, padding and tensor shapes are inconsistent");
            }
            uint32_t taps = (uint32_t)l->kh * l->kw;
            if (type == TMP_LAYER_DWCONV) {
                if (out.c != in.c) {
                    return fail(err, idx, type, -1, "output channels differ from input channels");
                }
                return channel_arrays(m, idx, r, out.c, (uint64_t)taps * in.c, taps, values, l, err);
            }
            if ((uint64_t)taps * in.c > 65536u) {
                return fail(err, idx, type, -1, "reduction length kh*kw*cin exceeds 65536");
            }
            return channel_arrays(m, idx, r, out.c, (uint64_t)out.c * taps * in.c, taps * (uint32_t)in.c,
                values, l, err);
        }
        case TMP_LAYER_PWCONV:
            if (l->kh != 1 || l->kw != 1 || l->stride_h != 1 || l->stride_w != 1 || l->pad_t != 0 ||
                l->pad_l != 0 || l->pad_b != 0 || l->pad_r != 0) {
                return fail(err, idx, type, -1, "pointwise layer needs a 1x1 kernel, stride 1, no padding");
            }
            if (out.h != in.h || out.w != in.w) {
                return fail(err, idx, type, -1, "output height/width differ from the input's");
            }
            return channel_arrays(m, idx, r, out.c, (uint64_t)out.c * in.c, (uint32_t)in.c, values, l, err);
        case TMP_LAYER_FC: {
            if (!geometry_is_zero(r)) {
                return fail(err, idx, type, -1, "kernel/stride/padding fields must be zero");
            }
            uint64_t n = (uint64_t)in.h * in.w * in.c;
            if (n > 65536u) {
                return fail(err, idx, type, -1, "more than 65536 inputs");
            }
            if (out.h != 1 || out.w != 1) {
                return fail(err, idx, type, -1, "output must be 1x1xC");
            }
            return channel_arrays(m, idx, r, out.c, (uint64_t)out.c * n, (uint32_t)n, values, l, err);
        }
        case TMP_LAYER_ADD: {
            tmp_tensor tin1;
            if (tmp_model_tensor(m, l->in1, &tin1, NULL) != TMP_OK) {
                return fail(err, idx, type, l->in1, "invalid second input tensor");
            }
            if (!geometry_is_zero(r) || !offsets_are_zero(r)) {
                return fail(err, idx, type, -1, "kernel/stride/padding fields and offsets must be zero");
            }
            if (tin1.dims.h != in.h || tin1.dims.w != in.w || tin1.dims.c != in.c || out.h != in.h ||
                out.w != in.w || out.c != in.c) {
                return fail(err, idx, type, -1, "inputs and output differ in shape");
            }
            for (int32_t i = 0; i < 6; i += 2) {
                if (!requant_ok(l->params[i], l->params[i + 1])) {
                    return fail(err, idx, type, -1, "requantisation multiplier or shift out of range");
                }
            }
            return TMP_OK;
        }
        case TMP_LAYER_AVGPOOL:
            if (!geometry_is_zero(r) || !offsets_are_zero(r)) {
                return fail(err, idx, type, -1, "kernel/stride/padding fields and offsets must be zero");
            }
            if ((uint64_t)in.h * in.w > (UINT64_C(1) << 23)) {
                return fail(err, idx, type, -1, "more than 2^23 input pixels");
            }
            if (out.h != 1 || out.w != 1 || out.c != in.c) {
                return fail(err, idx, type, -1, "output must be 1x1 with the input's channels");
            }
            if (!requant_ok(l->params[0], l->params[1])) {
                return fail(err, idx, type, -1, "requantisation multiplier or shift out of range");
            }
            for (int32_t i = 2; i < 6; i++) {
                if (l->params[i] != 0) {
                    return fail(err, idx, type, -1, "unused params are not zero");
                }
            }
            return TMP_OK;
        default:
            return fail(err, idx, type, -1, "unknown layer type");
    }
}

tmp_status tmp_model_layer(const tmp_model *m, int32_t idx, tmp_layer *l, tmp_error *err) {
    return layer_read(m, idx, 1, l, err);
}

tmp_status tmp_model_layer_shape(const tmp_model *m, int32_t idx, tmp_layer *l) {
    return layer_read(m, idx, 0, l, NULL);
}

static tmp_status table_ok(const tmp_model *m, uint32_t off, uint32_t count, uint32_t rec) {
    return array_ok(m, off, (uint64_t)count * rec) ? TMP_OK : TMP_ERR_FORMAT;
}

static tmp_status class_names_ok(const tmp_model *m, tmp_error *err) {
    if (m->class_names_off == 0) {
        return m->class_names_size == 0 ? TMP_OK
                                        : fail(err, -1, -1, -1, "class-name size given without an offset");
    }
    if (m->class_names_off < TMP_HEADER_SIZE || m->class_names_off > m->size ||
        m->class_names_size > m->size - m->class_names_off || m->class_names_size == 0) {
        return fail(err, -1, -1, -1, "class-name block outside the file");
    }
    const uint8_t *p = m->data + m->class_names_off;
    uint32_t zeros = 0;
    for (uint32_t i = 0; i < m->class_names_size; i++) {
        zeros += p[i] == 0;
    }
    if (zeros != m->num_classes || p[m->class_names_size - 1] != 0) {
        return fail(err, -1, -1, -1, "class-name block does not hold exactly num_classes names");
    }
    return TMP_OK;
}

tmp_status tmp_model_init(tmp_model *m, const void *data, size_t size, tmp_error *err) {
    const uint16_t endian_probe = 1;
    memset(m, 0, sizeof *m);
    if (err != NULL) {
        err->layer = err->layer_type = err->tensor = -1;
        err->msg = "";
    }
    if (data == NULL) {
        fail(err, -1, -1, -1, "model buffer is NULL");
        return TMP_ERR_ARG;
    }
    if (((uintptr_t)data & 3u) != 0) {
        fail(err, -1, -1, -1, "model buffer is not 4-byte aligned");
        return TMP_ERR_ARG;
    }
    if (*(const uint8_t *)&endian_probe != 1) {
        fail(err, -1, -1, -1, "big-endian machines are not supported");
        return TMP_ERR_ARG;
    }
    const uint8_t *d = (const uint8_t *)data;
    if (size < TMP_HEADER_SIZE) {
        return fail(err, -1, -1, -1, "file is shorter than the 64-byte header");
    }
    if (memcmp(d, "TMPM", 4) != 0) {
        return fail(err, -1, -1, -1, "not a tinymp model (bad magic, expected 'TMPM')");
    }
    if (rd16(d + 4) != TMP_FORMAT_VERSION) {
        return fail(err, -1, -1, -1, "unsupported format version (this tinymp reads version 1)");
    }
    if (rd16(d + 6) != TMP_HEADER_SIZE) {
        return fail(err, -1, -1, -1, "header size is not 64");
    }
    uint32_t total = rd32(d + 8);
    if (total < TMP_HEADER_SIZE) {
        return fail(err, -1, -1, -1, "total size is smaller than the header");
    }
    if (total > size) {
        return fail(err, -1, -1, -1, "file is truncated (shorter than the size in its header)");
    }
    if (tmp_crc32(0, d + 16, total - 16u) != rd32(d + 12)) {
        return fail(err, -1, -1, -1, "CRC-32 mismatch: the file is corrupted");
    }
    m->data = d;
    m->size = total;
    m->num_classes = rd16(d + 22);
    m->num_tensors = rd16(d + 32);
    m->num_layers = rd16(d + 34);
    m->crc = rd32(d + 12);
    m->tensor_table_off = rd32(d + 36);
    m->layer_table_off = rd32(d + 40);
    m->class_names_off = rd32(d + 44);
    m->class_names_size = rd32(d + 48);
    if (rd32(d + 52) != 0 || rd32(d + 56) != 0 || rd32(d + 60) != 0) {
        return fail(err, -1, -1, -1, "reserved header fields are not zero");
    }
    if (m->num_classes == 0) {
        return fail(err, -1, -1, -1, "model has zero classes");
    }
    if (m->num_layers == 0 || m->num_layers > TMP_MAX_LAYERS) {
        return fail(err, -1, -1, -1, "layer count outside 1..1024");
    }
    if (m->num_tensors != m->num_layers + 1) {
        return fail(err, -1, -1, -1, "tensor count is not the layer count + 1");
    }
    if (table_ok(m, m->tensor_table_off, m->num_tensors, TMP_TENSOR_RECORD_SIZE) != TMP_OK) {
        return fail(err, -1, -1, -1, "tensor table offset beyond end of file or misaligned");
    }
    if (table_ok(m, m->layer_table_off, m->num_layers, TMP_LAYER_RECORD_SIZE) != TMP_OK) {
        return fail(err, -1, -1, -1, "layer table offset beyond end of file or misaligned");
    }
    tmp_tensor t;
    for (int32_t i = 0; i < (int32_t)m->num_tensors; i++) {
        tmp_status s = tmp_model_tensor(m, i, &t, err);
        if (s != TMP_OK) {
            return s;
        }
    }
    tmp_model_input(m, &t);
    if (t.dims.h != rd16(d + 16) || t.dims.w != rd16(d + 18) || t.dims.c != rd16(d + 20) ||
        t.zero_point != rdi32(d + 28) || rdf32(d + 24) != t.scale) {
        return fail(err, -1, -1, 0, "header input shape/quantisation differ from tensor 0");
    }
    tmp_model_output(m, &t);
    if (t.dims.h != 1 || t.dims.w != 1 || t.dims.c != m->num_classes) {
        return fail(err, -1, -1, m->num_layers, "output tensor is not 1 x 1 x num_classes");
    }
    /* every tensor but the output is read by a later layer: a layer whose output nothing reads
     * would run for nothing and leave the trainer a tensor without a gradient */
    uint32_t read[(TMP_MAX_LAYERS + 32) / 32] = { 0 };
    tmp_layer l;
    for (int32_t i = 0; i < (int32_t)m->num_layers; i++) {
        tmp_status s = tmp_model_layer(m, i, &l, err);
        if (s != TMP_OK) {
            return s;
        }
        read[l.in0 / 32u] |= 1u << (l.in0 % 32u);
        if (l.in1 != TMP_NO_TENSOR) {
            read[l.in1 / 32u] |= 1u << (l.in1 % 32u);
        }
    }
    for (uint32_t t = 0; t < m->num_layers; t++) {
        if (!(read[t / 32u] & (1u << (t % 32u)))) {
            return fail(err, -1, -1, (int32_t)t, "tensor is never read by a layer (only the output may be)");
        }
    }
    return class_names_ok(m, err);
}

tmp_status tmp_model_input(const tmp_model *m, tmp_tensor *t) {
    return tmp_model_tensor(m, 0, t, NULL);
}

tmp_status tmp_model_output(const tmp_model *m, tmp_tensor *t) {
    return tmp_model_tensor(m, m->num_layers, t, NULL);
}

const char *tmp_model_class_name(const tmp_model *m, int32_t k) {
    if (m->class_names_off == 0 || k < 0 || k >= (int32_t)m->num_classes) {
        return NULL;
    }
    /* Bounded walk: the block was checked at load, but the buffer may have changed since. */
    const uint8_t *p = m->data + m->class_names_off;
    const uint32_t n = m->class_names_size;
    uint32_t start = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (p[i] == 0) {
            if (k == 0) {
                return (const char *)(p + start);
            }
            k--;
            start = i + 1;
        }
    }
    return NULL;
}
