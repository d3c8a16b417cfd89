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
 *          Wsum[.] / (sh*sw) is computed first into the scratch (c floats). The windows of
 *          distinct output patches are disjoint, so each dx element gets exactly one
 *          d + ws * g per call (tmp_tr_vmla_rows: VLDM/VMLA rows on the M7).
 *
 * Layouts: weights [kh][kw][c] int8, wscale [c], gbar [ceil(H'/r)][ceil(W'/r)][c],
 * dx [ceil(H/r)][ceil(W/r)][c] fp32 (accumulated); out.c == in.c.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../kernels/tmp_dsp.h"
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

#if TMP_DSP
/* o[e] = (float)sum_e * (sc[e] * inv) for the 8 channel sums held as int16 lanes: a02 = (ch0,
 * ch2), a13 = (ch1, ch3), a46 = (ch4, ch6), a57 = (ch5, ch7). */
static inline void ws8(int32_t a02, int32_t a13, int32_t a46, int32_t a57, const float *sc,
    float inv, float *o) {
#if TMP_TR_VMLA && defined(__GNUC__)
    /* VCVT.F32.S16 converts the low half of a register: the even lanes directly, the odd ones
     * after an ASR; the same two roundings per channel as the C below */
    __asm__ volatile(
        "vmov     s0, s1, %[a02], %[a13]\n\t"
        "asr      %[a02], %[a02], #16\n\t"
        "asr      %[a13], %[a13], #16\n\t"
        "vmov     s2, s3, %[a02], %[a13]\n\t"
        "vmov     s4, s5, %[a46], %[a57]\n\t"
        "asr      %[a46], %[a46], #16\n\t"
        "asr      %[a57], %[a57], #16\n\t"
        "vmov     s6, s7, %[a46], %[a57]\n\t"
        "vldm     %[sc], {s8-s15}\n\t"
        "vcvt.f32.s16 s0, s0, #0\n\t"
        "vcvt.f32.s16 s1, s1, #0\n\t"
        "vcvt.f32.s16 s2, s2, #0\n\t"
        "vcvt.f32.s16 s3, s3, #0\n\t"
        "vcvt.f32.s16 s4, s4, #0\n\t"
        "vcvt.f32.s16 s5, s5, #0\n\t"
        "vcvt.f32.s16 s6, s6, #0\n\t"
        "vcvt.f32.s16 s7, s7, #0\n\t"
        "vmul.f32 s8, s8, %[inv]\n\t"
        "vmul.f32 s9, s9, %[inv]\n\t"
        "vmul.f32 s10, s10, %[inv]\n\t"
        "vmul.f32 s11, s11, %[inv]\n\t"
        "vmul.f32 s12, s12, %[inv]\n\t"
        "vmul.f32 s13, s13, %[inv]\n\t"
        "vmul.f32 s14, s14, %[inv]\n\t"
        "vmul.f32 s15, s15, %[inv]\n\t"
        "vmul.f32 s0, s0, s8\n\t"
        "vmul.f32 s1, s1, s9\n\t"
        "vmul.f32 s2, s2, s10\n\t"
        "vmul.f32 s3, s3, s11\n\t"
        "vmul.f32 s4, s4, s12\n\t"
        "vmul.f32 s5, s5, s13\n\t"
        "vmul.f32 s6, s6, s14\n\t"
        "vmul.f32 s7, s7, s15\n\t"
        "vstm     %[o], {s0-s7}"
        : [a02] "+r"(a02), [a13] "+r"(a13), [a46] "+r"(a46), [a57] "+r"(a57)
        : [sc] "r"(sc), [o] "r"(o), [inv] "t"(inv)
        : "memory", "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11",
          "s12", "s13", "s14", "s15");
#else
    o[0] = (float)(int16_t)a02 * (sc[0] * inv);
    o[1] = (float)(int16_t)a13 * (sc[1] * inv);
    o[2] = (float)(a02 >> 16) * (sc[2] * inv);
    o[3] = (float)(a13 >> 16) * (sc[3] * inv);
    o[4] = (float)(int16_t)a46 * (sc[4] * inv);
    o[5] = (float)(int16_t)a57 * (sc[5] * inv);
    o[6] = (float)(a46 >> 16) * (sc[6] * inv);
    o[7] = (float)(a57 >> 16) * (sc[7] * inv);
#endif
}
#endif

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
    /* Wsum, exactly in integers (the same values, in any order), then one float product each */
    int32_t ch = 0;
#if TMP_DSP
    if (taps <= 255) { /* |sum| <= 255 * 128 fits the int16 lanes of SXTAB16 */
        for (; ch + 8 <= c; ch += 8) {
            int32_t a02 = 0, a13 = 0, a46 = 0, a57 = 0; /* lanes (ch, ch+2), (ch+1, ch+3), ... */
            const int8_t *w = weights + ch;
            TMP_TR_UNROLL4
            for (int32_t t = 0; t < taps; t++) {
                const int32_t v0 = tmp_ld4(w), v1 = tmp_ld4(w + 4);
                a02 = tmp_sxtab16(a02, v0);
                a13 = tmp_sxtab16_ror8(a13, v0);
                a46 = tmp_sxtab16(a46, v1);
                a57 = tmp_sxtab16_ror8(a57, v1);
                w += c;
            }
            ws8(a02, a13, a46, a57, wscale + ch, inv_s2, ws + ch);
        }
    }
#endif
    for (; ch + 4 <= c; ch += 4) {
        int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        const int8_t *w = weights + ch;
        for (int32_t t = 0; t < taps; t++) {
            s0 += w[0];
            s1 += w[1];
            s2 += w[2];
            s3 += w[3];
            w += c;
        }
        ws[ch] = (float)s0 * (wscale[ch] * inv_s2);
        ws[ch + 1] = (float)s1 * (wscale[ch + 1] * inv_s2);
        ws[ch + 2] = (float)s2 * (wscale[ch + 2] * inv_s2);
        ws[ch + 3] = (float)s3 * (wscale[ch + 3] * inv_s2);
    }
    for (; ch < c; ch++) {
        int32_t s = 0;
        for (int32_t t = 0; t < taps; t++) {
            s += weights[(size_t)t * (size_t)c + (size_t)ch];
        }
        ws[ch] = (float)s * (wscale[ch] * inv_s2);
    }
    /* every input-grid patch lies in at most one output patch's window: one d + ws * g each */
    if (p->stride_h == 1 && p->stride_w == 1) {
        /* the window of output patch (py, px) is input patch (py, px), if inside the grid */
        const int32_t ny = ph < qh ? ph : qh, nx = pw < qw ? pw : qw;
        if (pw == qw) { /* the rows of both grids are consecutive */
            tmp_tr_vmla_rows_rep(dx, ws, gbar, c, (size_t)ny * (size_t)nx);
            return;
        }
        for (int32_t py = 0; py < ny; py++) {
            const float *gp = gbar + (size_t)py * (size_t)pw * (size_t)c;
            float *d = dx + (size_t)py * (size_t)qw * (size_t)c;
            for (int32_t px = 0; px < nx; px++) {
                tmp_tr_vmla_rows(d, ws, gp, c);
                gp += c;
                d += c;
            }
        }
        return;
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
                    tmp_tr_vmla_rows(dx + ((size_t)qy * (size_t)qw + (size_t)qx) * (size_t)c, ws,
                        gp, c);
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
