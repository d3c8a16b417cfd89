/**
 * @file tmp_conv_dw_gc_f32.c
 * @brief Condensed weight gradient of one output channel of a conv / pointwise layer
 *        (TRAINING.md section 3, step 4; one output channel at a time).
 *
 *     dw[u][v][j] = s_x / (sh*sw) * sum_p gbar[p][o] * xs[p][j]     for every (u, v)
 *
 * xs are the saved window sums in LSB units (tmp_gc_sums_s8), so xs * s_x is the real window
 * sum. Each of the k sums is acc = 0; acc = acc + gbar[p][o] * xs[p][j] for p ascending (each
 * product and sum rounded to float), then dw = acc * (s_x / (sh*sw)); copied to the other
 * kh*kw - 1 taps. The sums run in blocks of up to 16 channels held in registers (tmp_tr_mla:
 * VMLA on the M7). Patches with gbar 0 are not skipped: their products are +-0 (xs is finite),
 * and adding +-0 to an accumulator that starts at +0 never changes it (a sum is -0 only when
 * both terms are), so the result is the one of the loop that skips them, bit for bit.
 * Cost P*k per output channel. No scratch.
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

#if defined(__GNUC__)
#define DWGC_INLINE __attribute__((always_inline)) static inline
#else
#define DWGC_INLINE static inline
#endif

/* dw[j] = sum_q g[q * gstride] * x[q * k + j] (np >= 1) for j < nj_ (a compile-time constant after
 * inlining: the accumulators live in registers). T is int16_t or int32_t (is16). */
/* x[j] as float: is16 selects int16 (x16) or int32 (x32); al: x16 is 4-byte aligned, so an even
 * j takes the two-instruction path */
#define DWGC_X(j) (is16 ? (al && ((j) & 1) == 0 ? tmp_tr_s16_lo(x16 + (j)) : (float)x16[j]) \
                        : (float)x32[j])

DWGC_INLINE void dwgc_block(const int nj_, const int is16, const int al, size_t np,
    const float *g, size_t gstride, const void *xs, size_t k, float scale, float *dw) {
    float a[16];
    const int16_t *x16 = (const int16_t *)xs;
    const int32_t *x32 = (const int32_t *)xs;
    /* the first patch peeled: a = +0 + g * x (written so, not as a zero fill, which GCC would
     * turn into a memset of a memory array) */
    const float g0 = *g;
    TMP_TR_UNROLL
    for (int j = 0; j < nj_; j++) {
        a[j] = tmp_tr_mla(0.0f, g0, DWGC_X(j));
    }
    for (size_t q = 1; q < np; q++) {
        g += gstride;
        x16 += k;
        x32 += k;
        const float gv = *g;
        TMP_TR_UNROLL
        for (int j = 0; j < nj_; j++) {
            a[j] = tmp_tr_mla(a[j], gv, DWGC_X(j));
        }
    }
    TMP_TR_UNROLL
    for (int j = 0; j < nj_; j++) {
        dw[j] = a[j] * scale;
    }
}

/* Blocks of 16, then 8 (int16 aligned, the usual case), 4, then 3 or 2 (int16) or single
 * channels: fewer copies of the code for the rare int32 sums and misaligned int16 ones. */
DWGC_INLINE void dwgc_sums(const int is16, const int al, size_t np, const float *g,
    size_t gstride, const void *xs, int32_t k, float scale, float *dw) {
    const size_t es = is16 ? sizeof(int16_t) : sizeof(int32_t);
    const int full = is16 && al;
    const char *x = (const char *)xs;
    int32_t j = 0;
    for (; j + 16 <= k; j += 16) {
        dwgc_block(16, is16, al, np, g, gstride, x + (size_t)j * es, (size_t)k, scale, dw + j);
    }
    if (full && k - j >= 8) {
        dwgc_block(8, is16, al, np, g, gstride, x + (size_t)j * es, (size_t)k, scale, dw + j);
        j += 8;
    }
    for (; j + 4 <= k; j += 4) {
        dwgc_block(4, is16, al, np, g, gstride, x + (size_t)j * es, (size_t)k, scale, dw + j);
    }
    x += (size_t)j * es;
    if (is16 && k - j == 3) { /* (these two are shared by both int16 cases: al = 0) */
        dwgc_block(3, is16, 0, np, g, gstride, x, (size_t)k, scale, dw + j);
    } else if (is16 && k - j == 2) {
        dwgc_block(2, is16, 0, np, g, gstride, x, (size_t)k, scale, dw + j);
    } else {
        for (; j < k; j++, x += es) {
            dwgc_block(1, is16, 0, np, g, gstride, x, (size_t)k, scale, dw + j);
        }
    }
}

tmp_status tmp_conv_dw_gc_f32(const tmp_grad_conv_params *p, const tmp_dims *out_dims,
    const float *gbar, int32_t o, tmp_xs_type type, const void *xs, int32_t k, float s_x,
    const tmp_filter_dims *f, float *dw) {
    if (p == NULL || gbar == NULL || xs == NULL || f == NULL || dw == NULL ||
        !tmp_tr_dims_ok(out_dims) || !tmp_tr_r_ok(p->r) || p->stride_h < 1 || p->stride_w < 1 ||
        o < 0 || o >= out_dims->c || f->kh < 1 || f->kw < 1 ||
        tmp_tr_gc_patches(p->r, out_dims, k, type) < 0 ||
        (int64_t)f->kh * f->kw * k > INT32_MAX) {
        return TMP_ERR_ARG;
    }
    const int32_t cout = out_dims->c;
    const size_t np = (size_t)tmp_tr_gc_patches(p->r, out_dims, k, type);
    const float scale = s_x / ((float)p->stride_h * (float)p->stride_w);
    if (type == TMP_XS_S32) {
        dwgc_sums(0, 0, np, gbar + o, (size_t)cout, xs, k, scale, dw);
    } else if (((uintptr_t)xs & 3u) == 0 && (k & 1) == 0) {
        dwgc_sums(1, 1, np, gbar + o, (size_t)cout, xs, k, scale, dw); /* rows 4-byte aligned */
    } else {
        dwgc_sums(1, 0, np, gbar + o, (size_t)cout, xs, k, scale, dw);
    }
    const int32_t taps = f->kh * f->kw;
    for (int32_t t = 1; t < taps; t++) {
        memcpy(dw + (size_t)t * (size_t)k, dw, (size_t)k * sizeof(float));
    }
    return TMP_OK;
}
