/*
 * tinymp core: reading and validating a .tmpm model (docs/FORMAT.md) in place.
 *
 * tmp_model_init() checks the whole file once (header, CRC, every tensor and layer record, every
 * array's bounds and the accumulator bounds of every bias). The engine keeps only a pointer to the
 * caller's buffer; layer and tensor records are decoded on demand by tmp_model_layer() /
 * tmp_model_tensor(), which re-validate the record they decode, so even a buffer modified after
 * loading is never read out of bounds.
 */
#ifndef TMP_MODEL_H
#define TMP_MODEL_H

#include "tmp_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TMP_FORMAT_VERSION 1
#define TMP_HEADER_SIZE 64
#define TMP_TENSOR_RECORD_SIZE 16
#define TMP_LAYER_RECORD_SIZE 64
#define TMP_MAX_LAYERS 1024
#define TMP_NO_TENSOR 0xFFFF

typedef enum {
    TMP_LAYER_CONV = 1,
    TMP_LAYER_DWCONV = 2,
    TMP_LAYER_PWCONV = 3,
    TMP_LAYER_ADD = 4,
    TMP_LAYER_AVGPOOL = 5,
    TMP_LAYER_FC = 6,
} tmp_layer_type;

/** Where a validation error was found. `msg` is a string literal (never NULL after an error). */
typedef struct {
    int32_t layer;      /**< layer index, or -1 */
    int32_t layer_type; /**< raw type byte of that layer, or -1 */
    int32_t tensor;     /**< tensor index, or -1 */
    const char *msg;
} tmp_error;

/** A validated model; holds only a pointer to the caller's buffer. */
typedef struct {
    const uint8_t *data;
    uint32_t size; /**< total_size from the header */
    uint32_t crc;  /**< the header's CRC-32 of the file: identifies the model */
    uint16_t num_tensors;
    uint16_t num_layers;
    uint16_t num_classes;
    uint32_t tensor_table_off;
    uint32_t layer_table_off;
    uint32_t class_names_off;
    uint32_t class_names_size;
} tmp_model;

/** A decoded activation tensor record. */
typedef struct {
    tmp_dims dims;
    float scale;
    int32_t zero_point;
} tmp_tensor;

/** A decoded layer record, with array pointers into the model buffer (NULL when absent). */
typedef struct {
    uint8_t type;
    uint8_t kh, kw, stride_h, stride_w, pad_t, pad_l, pad_b, pad_r;
    int8_t act_min, act_max;
    uint16_t in0, in1, out;
    const int8_t *weights;
    const int32_t *bias;
    const int32_t *mult;
    const int32_t *shift;
    const float *wscale;
    int32_t params[6];
} tmp_layer;

/* The kernel parameters of a conv, dwconv or pwconv layer from its record and its tensors (the
 * planner takes the geometry from it, inference all of it). */
static inline tmp_conv_params tmp_layer_conv_params(const tmp_layer *l, const tmp_tensor *in,
    const tmp_tensor *out) {
    tmp_conv_params p;
    p.input_offset = -in->zero_point;
    p.output_offset = out->zero_point;
    p.stride_h = l->stride_h;
    p.stride_w = l->stride_w;
    p.pad_t = l->pad_t;
    p.pad_l = l->pad_l;
    p.act_min = l->act_min;
    p.act_max = l->act_max;
    return p;
}

/** Name of a layer type ("conv", "dwconv", ...), "unknown" for anything else. */
const char *tmp_layer_type_name(int32_t type);

/** CRC-32 (IEEE, as zlib) of `n` bytes, continuing from `crc` (start with 0). */
uint32_t tmp_crc32(uint32_t crc, const uint8_t *p, size_t n);

/**
 * Validate `size` bytes at `data` (4-byte aligned) as a .tmpm model and fill `m`.
 * On error returns TMP_ERR_FORMAT (or TMP_ERR_ARG for a NULL/misaligned buffer) and fills `err`.
 */
tmp_status tmp_model_init(tmp_model *m, const void *data, size_t size, tmp_error *err);

/** Decode and validate tensor `idx`. `err` may be NULL. */
tmp_status tmp_model_tensor(const tmp_model *m, int32_t idx, tmp_tensor *t, tmp_error *err);

/** Decode and validate layer `idx` (its record, arrays and shapes). `err` may be NULL. */
tmp_status tmp_model_layer(const tmp_model *m, int32_t idx, tmp_layer *l, tmp_error *err);

/**
 * tmp_model_layer() without the per-channel value checks (bias bound, requantisation multiplier
 * and shift, weight scale of every output channel); the record, the shapes and the bounds of
 * every array are checked as there. For code that uses only a layer's geometry, such as the
 * planners, which read each layer many times: anything that computes with the layer's
 * parameters uses tmp_model_layer().
 */
tmp_status tmp_model_layer_shape(const tmp_model *m, int32_t idx, tmp_layer *l);

/** Input dims/quantisation (tensor 0) and the output tensor (that of the last layer). */
tmp_status tmp_model_input(const tmp_model *m, tmp_tensor *t);
tmp_status tmp_model_output(const tmp_model *m, tmp_tensor *t);

/** Class name `k` (NUL-terminated, UTF-8) or NULL when the model has none. */
const char *tmp_model_class_name(const tmp_model *m, int32_t k);

#ifdef __cplusplus
}
#endif

#endif /* TMP_MODEL_H */
