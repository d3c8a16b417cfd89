/**
 * @file tmp_fc_s8.c
 * @brief Fully connected int8 layer (TFLite int8 semantics).
 *
 * The input is read as a vector of n values in memory order (an [h][w][c] tensor with
 * n = h*w*c). For every output o < out_features (docs/KERNELS.md, "Fully connected"):
 *
 *     acc = bias[o] + sum over i < n of (in[i] + input_offset) * w[o][i]
 *     out[o] = clamp(requant(acc, mult[o], shift[o]) + output_offset, act_min, act_max)
 *
 * Layouts (int8 unless noted): in [n], weights [out_features][n], bias int32 [out_features]
 * (NULL = zero), out [out_features]. `out` must not overlap `in`.
 *
 * Scratch: none (get_buffer_size returns 0; `scratch` may be NULL). n can be large (up to 65536
 * in the model format), so the input is not widened into a buffer; the input offset is added in
 * the inner loop (fc_dot_s8(), the place where an optimised inner loop goes).
 *
 * Preconditions not checked (guaranteed by the model format): |bias[o]| <= 2^31 - 1 - 32640*n,
 * so the int32 accumulator cannot overflow.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "../tmp_kernels.h"

int32_t tmp_fc_s8_get_buffer_size(int32_t n, int32_t out_features) {
    (void)n;
    (void)out_features;
    return 0;
}

/* sum (x[i] + x_off) * w[i], i < n. Swap point for an optimised (SIMD) inner loop. */
static int32_t fc_dot_s8(const int8_t *x, const int8_t *w, int32_t n, int32_t x_off) {
    int32_t acc = 0;
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        acc += ((int32_t)x[i] + x_off) * w[i] + ((int32_t)x[i + 1] + x_off) * w[i + 1] +
            ((int32_t)x[i + 2] + x_off) * w[i + 2] + ((int32_t)x[i + 3] + x_off) * w[i + 3];
    }
    for (; i < n; i++) {
        acc += ((int32_t)x[i] + x_off) * w[i];
    }
    return acc;
}

tmp_status tmp_fc_s8(const tmp_fc_params *p, const tmp_per_channel_quant *q,
    int32_t n, const int8_t *in, const int8_t *weights, const int32_t *bias,
    int32_t out_features, int8_t *out, void *scratch) {
    (void)scratch;
    if (p == NULL || q == NULL || q->multiplier == NULL || q->shift == NULL || in == NULL ||
        weights == NULL || out == NULL || n < 1 || out_features < 1 ||
        p->input_offset < -127 || p->input_offset > 128 ||
        p->output_offset < -128 || p->output_offset > 127 ||
        p->act_min < -128 || p->act_max > 127 || p->act_min > p->act_max) {
        return TMP_ERR_ARG;
    }
    const int32_t *mult = q->multiplier;
    const int32_t *shift = q->shift;
    for (int32_t o = 0; o < out_features; o++) {
        if (mult[o] < 0 || shift[o] < -31 || shift[o] > 30) {
            return TMP_ERR_ARG;
        }
    }

    const int8_t *w = weights;
    for (int32_t o = 0; o < out_features; o++) {
        int32_t acc = fc_dot_s8(in, w, n, p->input_offset);
        if (bias != NULL) {
            acc += bias[o];
        }
        out[o] = tmp_clamp_out(tmp_requant(acc, mult[o], shift[o]), p->output_offset, p->act_min,
            p->act_max);
        w += n;
    }
    return TMP_OK;
}
