/**
 * @file tmp_conv_dx_f32.c
 * @brief Input gradient of a standard convolution: exact (r = 1) or condensed (r >= 2),
 *        accumulated into dx (TRAINING.md section 3, step 3).
 *
 * r = 1, the transposed convolution (gbar = dy * mask at full resolution):
 *
 *     dx[iy][ix][i] += sum over y, x, o, u, v with iy = y*sh - pad_t + u, ix = x*sw - pad_l + v
 *                      inside the input of gbar[y][x][o] * wscale[o] * w[o][u][v][i]
 *
 * computed output pixel by output pixel; output channels whose gbar is 0 (masked) are skipped.
 * Cost: the forward MACs at most. No scratch.
 *
 * r >= 2, Gradient Condensing: dx is constant over each output patch's input window, which is
 * the set of input-grid patches q = (qy, qx), qy in [py*sh, (py+1)*sh), qx in [px*sw, (px+1)*sw)
 * (clipped to the input grid; see tmp_train_kernels.h):
 *
 *     dx[q][i] += sum_o Wsum[o][i] * gbar[p][o] / (sh*sw),  Wsum[o][i] = wscale[o] *
 *                 sum_{u,v} w[o][u][v][i]
 *
 * One output channel at a time: the row Wsum[o][.] / (sh*sw) is summed from the int8 weights
 * (exactly, in int32) into the scratch (in.c floats), then added, times gbar[p][o], to every
 * input-grid patch of every output patch's window. Cost: out.c * (kh*kw*in.c + P*sh*sw*in.c).
 *
 * Layouts: weights [out.c][kh][kw][in.c] int8, wscale [out.c], gbar [ceil(H'/r)][ceil(W'/r)][out.c],
 * dx [ceil(H/r)][ceil(W/r)][in.c] fp32 (accumulated).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

int32_t tmp_conv_dx_f32_get_buffer_size(const tmp_grad_conv_params *p, const tmp_dims *in_dims,
    const tmp_filter_dims *f, const tmp_dims *out_dims) {
    (void)f;
    (void)out_dims;
    if (p == NULL || in_dims == NULL || p->r < 2 || in_dims->c < 1 ||
        in_dims->c > INT32_MAX / (int32_t)sizeof(float)) {
        return 0;
    }
    return in_dims->c * (int32_t)sizeof(float);
}

/* r = 1: scatter each output pixel's gradient through the kernel taps. */
static void conv_dx_exact(const tmp_grad_conv_params *p, const tmp_dims *id,
    const tmp_filter_dims *f, const int8_t *weights, const float *wscale, const tmp_dims *od,
    const float *gbar, float *dx) {
    const int32_t cin = id->c;
    const int32_t cout = od->c;
    const size_t tap_stride = (size_t)cin;
    const size_t o_stride = (size_t)f->kh * (size_t)f->kw * (size_t)cin;
    for (int32_t y = 0; y < od->h; y++) {
        const int32_t iy0 = y * p->stride_h - p->pad_t;
        int32_t u_lo, u_hi;
        tmp_tr_taps(iy0, f->kh, id->h, &u_lo, &u_hi);
        for (int32_t x = 0; x < od->w; x++) {
            const int32_t ix0 = x * p->stride_w - p->pad_l;
            int32_t v_lo, v_hi;
            tmp_tr_taps(ix0, f->kw, id->w, &v_lo, &v_hi);
            const float *gp = gbar + ((size_t)y * (size_t)od->w + (size_t)x) * (size_t)cout;
            for (int32_t o = 0; o < cout; o++) {
                if (gp[o] == 0.0f) {
                    continue;
                }
                const float g = gp[o] * wscale[o];
                const int8_t *wo = weights + (size_t)o * o_stride;
                for (int32_t u = u_lo; u < u_hi; u++) {
                    for (int32_t v = v_lo; v < v_hi; v++) {
                        const int8_t *w = wo + ((size_t)u * (size_t)f->kw + (size_t)v) * tap_stride;
                        float *d = dx + ((size_t)(iy0 + u) * (size_t)id->w + (size_t)(ix0 + v)) *
                            (size_t)cin;
                        for (int32_t i = 0; i < cin; i++) {
                            d[i] += g * (float)w[i];
                        }
                    }
                }
            }
        }
    }
}

/* r >= 2: one output channel at a time through the Wsum row in `ws`. */
static void conv_dx_condensed(const tmp_grad_conv_params *p, const tmp_dims *id,
    const tmp_filter_dims *f, const int8_t *weights, const float *wscale, const tmp_dims *od,
    const float *gbar, float *dx, float *ws) {
    const int32_t r = p->r;
    const int32_t cin = id->c;
    const int32_t cout = od->c;
    const int32_t taps = f->kh * f->kw;
    const int32_t ph = tmp_tr_ceil_div(od->h, r);
    const int32_t pw = tmp_tr_ceil_div(od->w, r);
    const int32_t qh = tmp_tr_ceil_div(id->h, r);
    const int32_t qw = tmp_tr_ceil_div(id->w, r);
    const float inv_s2 = 1.0f / ((float)p->stride_h * (float)p->stride_w);
    for (int32_t o = 0; o < cout; o++) {
        const int8_t *wo = weights + (size_t)o * (size_t)taps * (size_t)cin;
        const float scale = wscale[o] * inv_s2;
        for (int32_t i = 0; i < cin; i++) {
            int32_t s = 0;
            for (int32_t t = 0; t < taps; t++) {
                s += wo[(size_t)t * (size_t)cin + (size_t)i];
            }
            ws[i] = (float)s * scale;
        }
        for (int32_t py = 0; py < ph; py++) {
            int32_t qy0, qy1;
            tmp_tr_window_cells(py, p->stride_h, qh, &qy0, &qy1);
            for (int32_t px = 0; px < pw; px++) {
                const float g = gbar[((size_t)py * (size_t)pw + (size_t)px) * (size_t)cout + (size_t)o];
                if (g == 0.0f) {
                    continue;
                }
                int32_t qx0, qx1;
                tmp_tr_window_cells(px, p->stride_w, qw, &qx0, &qx1);
                /* the window's cells of one grid row are consecutive in dx: one run of
                 * (qx1 - qx0) * cin floats, ws repeating every cin */
                const int32_t run = (qx1 - qx0) * cin;
                for (int32_t qy = qy0; qy < qy1; qy++) {
                    float *d = dx + ((size_t)qy * (size_t)qw + (size_t)qx0) * (size_t)cin;
                    for (int32_t e = 0, i = 0; e < run; e++) {
                        d[e] = tmp_tr_mla(d[e], g, ws[i]);
                        i = i + 1 == cin ? 0 : i + 1;
                    }
                }
            }
        }
    }
}

tmp_status tmp_conv_dx_f32(const tmp_grad_conv_params *p, const tmp_dims *in_dims,
    const tmp_filter_dims *f, const int8_t *weights, const float *wscale,
    const tmp_dims *out_dims, const float *gbar, float *dx, void *scratch) {
    if (p == NULL || f == NULL || weights == NULL || wscale == NULL || gbar == NULL ||
        dx == NULL || !tmp_tr_conv_geom_ok(p, in_dims, f->kh, f->kw, out_dims) ||
        (int64_t)f->kh * f->kw * in_dims->c > INT32_MAX ||
        (int64_t)f->kh * f->kw * in_dims->c * out_dims->c > INT32_MAX ||
        (p->r >= 2 && scratch == NULL)) {
        return TMP_ERR_ARG;
    }
    if (p->r == 1) {
        conv_dx_exact(p, in_dims, f, weights, wscale, out_dims, gbar, dx);
    } else {
        conv_dx_condensed(p, in_dims, f, weights, wscale, out_dims, gbar, dx, (float *)scratch);
    }
    return TMP_OK;
}
