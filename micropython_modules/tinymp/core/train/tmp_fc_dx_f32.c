/**
 * @file tmp_fc_dx_f32.c
 * @brief Fully connected input gradient, accumulated: dx[i] += sum_o wscale[o] * w[o][i] * dy[o].
 *
 * Exact. Outputs whose dy is 0 are skipped. The fc bias gradient is dy itself (no kernel).
 * dx is full resolution in the input's memory order; it is a patch-constant gradient map (any r)
 * only when the fc input is 1 x 1 x n, the usual case after the global average pool.
 *
 * Layouts: weights [out_features][n] int8, wscale [out_features], dy [out_features],
 * dx [n] fp32 (accumulated). No scratch.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

tmp_status tmp_fc_dx_f32(int32_t n, int32_t out_features, const int8_t *weights,
    const float *wscale, const float *dy, float *dx) {
    if (weights == NULL || wscale == NULL || dy == NULL || dx == NULL || n < 1 ||
        out_features < 1 || (int64_t)n * out_features > INT32_MAX) {
        return TMP_ERR_ARG;
    }
    for (int32_t o = 0; o < out_features; o++) {
        if (dy[o] == 0.0f) {
            continue;
        }
        const float g = dy[o] * wscale[o];
        const int8_t *w = weights + (size_t)o * (size_t)n;
        for (int32_t i = 0; i < n; i++) {
            dx[i] += g * (float)w[i];
        }
    }
    return TMP_OK;
}
