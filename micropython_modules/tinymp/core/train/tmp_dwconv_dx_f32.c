/**
 * @file tmp_dwconv_dx_f32.c
 * @brief Input gradient of a depthwise convolution (channel multiplier 1): exact (r = 1) or
 *        condensed (r >= 2), accumulated into dx.
 *
 * r = 1:   dx[iy][ix][c] += sum over y, x, u, v with iy = y*sh - pad_t + u, ix = x*sw - pad_l + v
 *                           inside the input of gbar[y][x][c] * wscale[c] * w[u][v][c]
 *          (no scratch).
 * r >= 2:  dx[q][c] += Wsum[c] * gbar[p][c] / (sh*sw) for every input-grid patch q of the window
 *          of output patch p, Wsum[c] = wscale[c] * sum_{u,v} w[u][v][c]; the row
 *          Wsum[.] / (sh*sw) is computed first into the scratch (c floats).
 *
 * Layouts: weights [kh][kw][c] int8, wscale [c], gbar [ceil(H'/r)][ceil(W'/r)][c],
 * dx [ceil(H/r)][ceil(W/r)][c] fp32 (accumulated); out.c == in.c.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

int32_t tmp_dwconv_dx_f32_get_buffer_size(const tmp_grad_conv_params *p, const tmp_dims *in_dims,
    const tmp_filter_dims *f, const tmp_dims *out_dims) {
    (void)f;
    (void)out_dims;
    if (p == NULL || in_dims == NULL || p->r < 2 || in_dims->c < 1 ||
        in_dims->c > INT32_MAX / (int32_t)sizeof(float)) {
        return 0;
    }
    return in_dims->c * (int32_t)sizeof(float);
}

static void dwconv_dx_exact(const tmp_grad_conv_params *p, const tmp_dims *id,
    const tmp_filter_dims *f, const int8_t *weights, const float *wscale, const tmp_dims *od,
    const float *gbar, float *dx) {
    const int32_t c = id->c;
    for (int32_t y = 0; y < od->h; y++) {
        const int32_t iy0 = y * p->stride_h - p->pad_t;
        int32_t u_lo, u_hi;
        tmp_tr_taps(iy0, f->kh, id->h, &u_lo, &u_hi);
        for (int32_t x = 0; x < od->w; x++) {
            const int32_t ix0 = x * p->stride_w - p->pad_l;
            int32_t v_lo, v_hi;
            tmp_tr_taps(ix0, f->kw, id->w, &v_lo, &v_hi);
            const float *gp = gbar + ((size_t)y * (size_t)od->w + (size_t)x) * (size_t)c;
            for (int32_t u = u_lo; u < u_hi; u++) {
                for (int32_t v = v_lo; v < v_hi; v++) {
                    const int8_t *w = weights + ((size_t)u * (size_t)f->kw + (size_t)v) * (size_t)c;
                    float *d = dx + ((size_t)(iy0 + u) * (size_t)id->w + (size_t)(ix0 + v)) * (size_t)c;
                    for (int32_t ch = 0; ch < c; ch++) {
                        d[ch] += gp[ch] * wscale[ch] * (float)w[ch];
                    }
                }
            }
        }
    }
}

static void dwconv_dx_condensed(const tmp_grad_conv_params *p, const tmp_dims *id,
    const tmp_filter_dims *f, const int8_t *weights, const float *wscale, const tmp_dims *od,
    const float *gbar, float *dx, float *ws) {
    const int32_t r = p->r;
    const int32_t c = id->c;
    const int32_t taps = f->kh * f->kw;
    const int32_t ph = tmp_tr_ceil_div(od->h, r);
    const int32_t pw = tmp_tr_ceil_div(od->w, r);
    const int32_t qh = tmp_tr_ceil_div(id->h, r);
    const int32_t qw = tmp_tr_ceil_div(id->w, r);
    const float inv_s2 = 1.0f / ((float)p->stride_h * (float)p->stride_w);
    for (int32_t ch = 0; ch < c; ch++) {
        int32_t s = 0;
        for (int32_t t = 0; t < taps; t++) {
            s += weights[(size_t)t * (size_t)c + (size_t)ch];
        }
        ws[ch] = (float)s * (wscale[ch] * inv_s2);
    }
    for (int32_t py = 0; py < ph; py++) {
        int32_t qy0, qy1;
        tmp_tr_window_cells(py, p->stride_h, qh, &qy0, &qy1);
        for (int32_t px = 0; px < pw; px++) {
            int32_t qx0, qx1;
            tmp_tr_window_cells(px, p->stride_w, qw, &qx0, &qx1);
            const float *gp = gbar + ((size_t)py * (size_t)pw + (size_t)px) * (size_t)c;
            for (int32_t qy = qy0; qy < qy1; qy++) {
                for (int32_t qx = qx0; qx < qx1; qx++) {
                    float *d = dx + ((size_t)qy * (size_t)qw + (size_t)qx) * (size_t)c;
                    for (int32_t ch = 0; ch < c; ch++) {
                        d[ch] += ws[ch] * gp[ch];
                    }
                }
            }
        }
    }
}

tmp_status tmp_dwconv_dx_f32(const tmp_grad_conv_params *p, const tmp_dims *in_dims,
    const tmp_filter_dims *f, const int8_t *weights, const float *wscale,
    const tmp_dims *out_dims, const float *gbar, float *dx, void *scratch) {
    if (p == NULL || f == NULL || weights == NULL || wscale == NULL || gbar == NULL ||
        dx == NULL || !tmp_tr_conv_geom_ok(p, in_dims, f->kh, f->kw, out_dims) ||
        out_dims->c != in_dims->c || (int64_t)f->kh * f->kw * in_dims->c > INT32_MAX ||
        (p->r >= 2 && scratch == NULL)) {
        return TMP_ERR_ARG;
    }
    if (p->r == 1) {
        dwconv_dx_exact(p, in_dims, f, weights, wscale, out_dims, gbar, dx);
    } else {
        dwconv_dx_condensed(p, in_dims, f, weights, wscale, out_dims, gbar, dx, (float *)scratch);
    }
    return TMP_OK;
}
