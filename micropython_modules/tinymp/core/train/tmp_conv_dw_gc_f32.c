/**
 * @file tmp_conv_dw_gc_f32.c
 * @brief Condensed weight gradient of one output channel of a conv / pointwise layer
 *        (TRAINING.md section 3, step 4; one output channel at a time).
 *
 *     dw[u][v][j] = s_x / (sh*sw) * sum_p gbar[p][o] * xs[p][j]     for every (u, v)
 *
 * xs are the saved window sums in LSB units (tmp_gc_sums_s8), so xs * s_x is the real window
 * sum. The k sums are accumulated into dw[0][0][.] (patches with gbar 0 skipped), scaled, then
 * copied to the other kh*kw - 1 taps. Cost P*k per output channel. No scratch.
 *
 * Layouts: gbar [ceil(H'/r)][ceil(W'/r)][out.c] fp32, xs [P][k] int16/int32, dw [kh][kw][k] fp32
 * (overwritten). A pointwise layer is f = 1x1 with stride 1.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

tmp_status tmp_conv_dw_gc_f32(const tmp_grad_conv_params *p, const tmp_dims *out_dims,
    const float *gbar, int32_t o, tmp_xs_type type, const void *xs, int32_t k, float s_x,
    const tmp_filter_dims *f, float *dw) {
    if (p == NULL || gbar == NULL || xs == NULL || f == NULL || dw == NULL ||
        !tmp_tr_dims_ok(out_dims) || !tmp_tr_r_ok(p->r) || p->stride_h < 1 || p->stride_w < 1 ||
        o < 0 || o >= out_dims->c || f->kh < 1 || f->kw < 1 ||
        tmp_gc_sums_size(p->r, out_dims, k, type) < 0 ||
        (int64_t)f->kh * f->kw * k > INT32_MAX) {
        return TMP_ERR_ARG;
    }
    const int32_t cout = out_dims->c;
    const size_t np = (size_t)tmp_tr_ceil_div(out_dims->h, p->r) *
        (size_t)tmp_tr_ceil_div(out_dims->w, p->r);
    for (int32_t j = 0; j < k; j++) {
        dw[j] = 0.0f;
    }
    for (size_t q = 0; q < np; q++) {
        const float g = gbar[q * (size_t)cout + (size_t)o];
        if (g == 0.0f) {
            continue;
        }
        const size_t row = q * (size_t)k;
        if (type == TMP_XS_S16) {
            const int16_t *x = (const int16_t *)xs + row;
            for (int32_t j = 0; j < k; j++) {
                dw[j] += g * (float)x[j];
            }
        } else {
            const int32_t *x = (const int32_t *)xs + row;
            for (int32_t j = 0; j < k; j++) {
                dw[j] += g * (float)x[j];
            }
        }
    }
    const float scale = s_x / ((float)p->stride_h * (float)p->stride_w);
    for (int32_t j = 0; j < k; j++) {
        dw[j] *= scale;
    }
    const int32_t taps = f->kh * f->kw;
    for (int32_t t = 1; t < taps; t++) {
        memcpy(dw + (size_t)t * (size_t)k, dw, (size_t)k * sizeof(float));
    }
    return TMP_OK;
}
