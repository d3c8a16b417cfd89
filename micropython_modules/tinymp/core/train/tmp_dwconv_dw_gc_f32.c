/**
 * @file tmp_dwconv_dw_gc_f32.c
 * @brief Condensed weight gradient of one depthwise channel (TRAINING.md section 3, step 4).
 *
 *     dw[u][v] = s_x / (sh*sw) * sum_p gbar[p][c] * xs[p][j]     for every (u, v)
 *
 * where j is the position of channel c in the selection the forward saved xs for
 * (channels[j] == c): acc = 0; acc = acc + gbar[p][c] * xs[p][j] for p ascending (each product
 * and sum rounded to float); dw = acc * (s_x / (sh*sw)). Patches with gbar 0 are not skipped:
 * their products are +-0, and adding +-0 to an accumulator that starts at +0 never changes it,
 * so the result is the one of the loop that skips them, bit for bit. No scratch.
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

/* sum_q g[q * gs] * x[q * xst] (np >= 1), x of the element type selected by is16 / al (al: int16
 * pairs 4-byte aligned, so the two-instruction conversion). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline float dwdwgc_sum(const int is16, const int al, size_t np, const float *g, size_t gs,
    const void *xs, size_t xst) {
    const int16_t *x16 = (const int16_t *)xs;
    const int32_t *x32 = (const int32_t *)xs;
    float acc = 0.0f;
    TMP_TR_UNROLL4
    for (size_t q = 0; q < np; q++) {
        const float x = is16 ? (al ? tmp_tr_s16_lo(x16) : (float)*x16) : (float)*x32;
        acc = tmp_tr_mla(acc, *g, x);
        g += gs;
        x16 += xst;
        x32 += xst;
    }
    return acc;
}

tmp_status tmp_dwconv_dw_gc_f32(const tmp_grad_conv_params *p, const tmp_dims *out_dims,
    const float *gbar, int32_t c, tmp_xs_type type, const void *xs, int32_t k, int32_t j,
    float s_x, const tmp_filter_dims *f, float *dw) {
    if (p == NULL || gbar == NULL || xs == NULL || f == NULL || dw == NULL ||
        !tmp_tr_dims_ok(out_dims) || !tmp_tr_r_ok(p->r) || p->stride_h < 1 || p->stride_w < 1 ||
        c < 0 || c >= out_dims->c || j < 0 || j >= k || k > out_dims->c || f->kh < 1 ||
        f->kw < 1 || (int64_t)f->kh * f->kw > INT32_MAX ||
        tmp_tr_gc_patches(p->r, out_dims, k, type) < 0) {
        return TMP_ERR_ARG;
    }
    const size_t np = (size_t)tmp_tr_gc_patches(p->r, out_dims, k, type);
    const size_t ks = (size_t)k;
    const float *g = gbar + c;
    float acc;
    if (type == TMP_XS_S32) {
        acc = dwdwgc_sum(0, 0, np, g, (size_t)out_dims->c, (const int32_t *)xs + j, ks);
    } else if (((uintptr_t)((const int16_t *)xs + j) & 3u) == 0 && (k & 1) == 0) {
        acc = dwdwgc_sum(1, 1, np, g, (size_t)out_dims->c, (const int16_t *)xs + j, ks);
    } else {
        acc = dwdwgc_sum(1, 0, np, g, (size_t)out_dims->c, (const int16_t *)xs + j, ks);
    }
    acc *= s_x / ((float)p->stride_h * (float)p->stride_w);
    const int32_t taps = f->kh * f->kw;
    for (int32_t t = 0; t < taps; t++) {
        dw[t] = acc;
    }
    return TMP_OK;
}
