/**
 * @file tmp_dwconv_dw_gc_f32.c
 * @brief Condensed weight gradient of one depthwise channel (TRAINING.md section 3, step 4).
 *
 *     dw[u][v] = s_x / (sh*sw) * sum_p gbar[p][c] * xs[p][j]     for every (u, v)
 *
 * where j is the position of channel c in the selection the forward saved xs for
 * (channels[j] == c). No scratch.
 *
 * Layouts: gbar [ceil(H'/r)][ceil(W'/r)][out.c] fp32, xs [P][k] int16/int32 (tmp_gc_sums_s8),
 * dw [kh][kw] fp32 (overwritten).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

tmp_status tmp_dwconv_dw_gc_f32(const tmp_grad_conv_params *p, const tmp_dims *out_dims,
    const float *gbar, int32_t c, tmp_xs_type type, const void *xs, int32_t k, int32_t j,
    float s_x, const tmp_filter_dims *f, float *dw) {
    if (p == NULL || gbar == NULL || xs == NULL || f == NULL || dw == NULL ||
        !tmp_tr_dims_ok(out_dims) || !tmp_tr_r_ok(p->r) || p->stride_h < 1 || p->stride_w < 1 ||
        c < 0 || c >= out_dims->c || j < 0 || j >= k || k > out_dims->c || f->kh < 1 ||
        f->kw < 1 || (int64_t)f->kh * f->kw > INT32_MAX ||
        tmp_gc_sums_size(p->r, out_dims, k, type) < 0) {
        return TMP_ERR_ARG;
    }
    const size_t np = (size_t)tmp_tr_ceil_div(out_dims->h, p->r) *
        (size_t)tmp_tr_ceil_div(out_dims->w, p->r);
    float acc = 0.0f;
    for (size_t q = 0; q < np; q++) {
        const float g = gbar[q * (size_t)out_dims->c + (size_t)c];
        if (g != 0.0f) {
            acc += g * tmp_tr_xs_at(type, xs, q * (size_t)k + (size_t)j);
        }
    }
    acc *= s_x / ((float)p->stride_h * (float)p->stride_w);
    const int32_t taps = f->kh * f->kw;
    for (int32_t t = 0; t < taps; t++) {
        dw[t] = acc;
    }
    return TMP_OK;
}
