/**
 * @file tmp_conv_dw_f32.c
 * @brief Exact (r = 1) weight gradient of one output channel of a conv / pointwise layer from
 *        the saved input channels (TRAINING.md section 3, step 4).
 *
 *     dw[u][v][j] = s_x * sum over y, x with iy = y*sh - pad_t + u, ix = x*sw - pad_l + v inside
 *                   the input of gbar[y][x][o] * (saved[iy][ix][j] + input_offset)
 *
 * Output pixels whose gbar is 0 (masked) are skipped; the sums are accumulated in fp32 in dw
 * and scaled by s_x at the end. Cost: H'*W'*kh*kw*k per output channel. No scratch.
 *
 * Layouts: saved [in.h][in.w][k] int8 (tmp_save_channels_s8; in.c is the layer's channel count,
 * >= k), gbar [H'][W'][out.c] fp32 full resolution (dy * mask), dw [kh][kw][k] fp32
 * (overwritten). p->r must be 1. A pointwise layer is f = 1x1, stride 1, no padding.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

tmp_status tmp_conv_dw_f32(const tmp_grad_conv_params *p, const tmp_dims *in_dims,
    const int8_t *saved, int32_t k, int32_t input_offset, float s_x, const tmp_filter_dims *f,
    const tmp_dims *out_dims, const float *gbar, int32_t o, float *dw) {
    if (p == NULL || saved == NULL || f == NULL || gbar == NULL || dw == NULL || p->r != 1 ||
        !tmp_tr_conv_geom_ok(p, in_dims, f->kh, f->kw, out_dims) || k < 1 || k > in_dims->c ||
        o < 0 || o >= out_dims->c || input_offset < -127 || input_offset > 128 ||
        (int64_t)in_dims->h * in_dims->w * k > INT32_MAX ||
        (int64_t)f->kh * f->kw * k > INT32_MAX) {
        return TMP_ERR_ARG;
    }
    const int32_t kw = f->kw;
    const size_t n = (size_t)f->kh * (size_t)kw * (size_t)k;
    const float off = (float)input_offset;
    for (size_t t = 0; t < n; t++) {
        dw[t] = 0.0f;
    }
    for (int32_t y = 0; y < out_dims->h; y++) {
        const int32_t iy0 = y * p->stride_h - p->pad_t;
        int32_t u_lo, u_hi;
        tmp_tr_taps(iy0, f->kh, in_dims->h, &u_lo, &u_hi);
        for (int32_t x = 0; x < out_dims->w; x++) {
            const float g = gbar[((size_t)y * (size_t)out_dims->w + (size_t)x) * (size_t)out_dims->c +
                (size_t)o];
            if (g == 0.0f) {
                continue;
            }
            const int32_t ix0 = x * p->stride_w - p->pad_l;
            int32_t v_lo, v_hi;
            tmp_tr_taps(ix0, kw, in_dims->w, &v_lo, &v_hi);
            for (int32_t u = u_lo; u < u_hi; u++) {
                for (int32_t v = v_lo; v < v_hi; v++) {
                    const int8_t *src = saved + ((size_t)(iy0 + u) * (size_t)in_dims->w +
                        (size_t)(ix0 + v)) * (size_t)k;
                    float *d = dw + ((size_t)u * (size_t)kw + (size_t)v) * (size_t)k;
                    for (int32_t j = 0; j < k; j++) {
                        d[j] += g * ((float)src[j] + off);
                    }
                }
            }
        }
    }
    for (size_t t = 0; t < n; t++) {
        dw[t] *= s_x;
    }
    return TMP_OK;
}
