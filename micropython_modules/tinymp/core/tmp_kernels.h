/*
 * tinymp core: int8 forward kernels, CMSIS-NN style.
 *
 * One public kernel per file in kernels/. Every kernel:
 *   - takes const pointers to small dims/params structs, the output last before the scratch;
 *   - never allocates: scratch comes from the caller, sized by the matching *_get_buffer_size()
 *     (0 means the kernel needs none and `scratch` may be NULL);
 *   - returns TMP_OK, or TMP_ERR_ARG for arguments it does not support;
 *   - implements exactly the integer semantics of docs/KERNELS.md.
 * Activations are int8 [H][W][C]. Weights are int8 with zero point 0; bias int32 (may be NULL,
 * meaning zero).
 */
#ifndef TMP_KERNELS_H
#define TMP_KERNELS_H

#include "tmp_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Standard convolution, kh x kw, any stride and padding.
 * @param in      [in->h][in->w][in->c]
 * @param weights [out->c][f->kh][f->kw][in->c]
 * @param bias    [out->c] or NULL
 * @param out     [out->h][out->w][out->c]; must not overlap `in`
 */
int32_t tmp_conv_s8_get_buffer_size(const tmp_dims *in, const tmp_filter_dims *f, const tmp_dims *out);
tmp_status tmp_conv_s8(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *in_dims, const int8_t *in,
    const tmp_filter_dims *f, const int8_t *weights, const int32_t *bias,
    const tmp_dims *out_dims, int8_t *out, void *scratch);

/**
 * Depthwise convolution, channel multiplier 1 (out->c == in->c), kh x kw (3, 5, 7 typical),
 * any stride and padding.
 * @param weights [f->kh][f->kw][c]
 * @param out     may be the same pointer as `in` (in-place): then the scratch must hold
 *                tmp_dwconv_s8_get_buffer_size(p, ..., 1) bytes: one input channel plane, or
 *                none (scratch may be NULL) when the geometry lets the output overwrite the
 *                input directly (no padding, or stride >= 2 with the usual padding; p's strides
 *                and paddings decide, p == NULL counts as not); out may not otherwise overlap in.
 */
int32_t tmp_dwconv_s8_get_buffer_size(const tmp_conv_params *p, const tmp_dims *in,
    const tmp_filter_dims *f, const tmp_dims *out, int in_place);
tmp_status tmp_dwconv_s8(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *in_dims, const int8_t *in,
    const tmp_filter_dims *f, const int8_t *weights, const int32_t *bias,
    const tmp_dims *out_dims, int8_t *out, void *scratch);

/**
 * Pointwise (1x1, stride 1, no padding) convolution. p->stride_* must be 1, p->pad_* 0.
 * @param weights [out->c][in->c]
 */
int32_t tmp_pwconv_s8_get_buffer_size(const tmp_dims *in, const tmp_dims *out);
tmp_status tmp_pwconv_s8(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *in_dims, const int8_t *in,
    const int8_t *weights, const int32_t *bias,
    const tmp_dims *out_dims, int8_t *out, void *scratch);

/**
 * Fully connected: out[o] from the n = in->h*in->w*in->c input values in memory order.
 * @param weights [out_features][n]
 */
int32_t tmp_fc_s8_get_buffer_size(int32_t n, int32_t out_features);
tmp_status tmp_fc_s8(const tmp_fc_params *p, const tmp_per_channel_quant *q,
    int32_t n, const int8_t *in, const int8_t *weights, const int32_t *bias,
    int32_t out_features, int8_t *out, void *scratch);

/** Element-wise residual add of `count` values. out may alias in0 or in1. */
int32_t tmp_add_s8_get_buffer_size(int32_t count);
tmp_status tmp_add_s8(const tmp_add_params *p, int32_t count,
    const int8_t *in0, const int8_t *in1, int8_t *out, void *scratch);

/** Global average pool: [h][w][c] -> [c]. Scratch: int32 per channel (4-byte aligned). */
int32_t tmp_avgpool_s8_get_buffer_size(const tmp_dims *in);
tmp_status tmp_avgpool_s8(const tmp_avgpool_params *p, const tmp_dims *in_dims, const int8_t *in,
    int8_t *out, void *scratch);

#ifdef __cplusplus
}
#endif

#endif /* TMP_KERNELS_H */
