/**
 * @file tmp_conv_dw_gc_f32.c
 * @brief Condensed weight gradient of one output channel of a conv / pointwise layer
 *        (TRAINING.md section 3, step 4; one output channel at a time).
 *
 *     dw[u][v][j] = sum_p gs[p] * xf[p][j]   with gs[p] = gbar[p][o] * (s_x / (sh*sw))
 *
 * for every (u, v). xf are the saved window sums in LSB units (tmp_gc_sums_s8) as floats
 * (tmp_gc_sums_f32, converted once per layer and step by the caller, not once per output
 * channel), so xf * s_x is the real window sum. Each of the k sums is dw = gs[0] * xf[0][j], then
 * dw = dw + gs[p] * xf[p][j] for p ascending, every product and sum rounded to float (VMUL, then
 * VMLA on the M7, the same C expressions elsewhere); copied to the other kh*kw - 1 taps. Cost
 * P*k per output channel. No scratch.
 *
 * On an M7 (single-precision FPU, GCC) blocks of 16 and 8 channels run in one asm loop each: the
 * sums stay in s0-s15 across the patches, xf rows come in with VLDM, the block goes out with
 * one VSTM. The rest, and every other target, is the C loop with the same operations in the
 * same order, so the result is bit-identical on every build.
 *
 * Layouts: gbar [ceil(H'/r)][ceil(W'/r)][out.c] fp32, xf [P][k] fp32, dw [kh][kw][k] fp32
 * (overwritten, not overlapping xf). A pointwise layer is f = 1x1 with stride 1.
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

/* The C form for nj_ channels (a compile-time constant after inlining: the sums live in
 * registers): dw[j] = sum_q (g[q * gstride] * scale) * x[q * k + j], np >= 1. */
DWGC_INLINE void dwgc_block(const int nj_, size_t np, const float *g, size_t gstride,
    const float *x, size_t k, float scale, float *dw) {
    float a[16];
    const float gs0 = g[0] * scale;
    TMP_TR_UNROLL
    for (int j = 0; j < nj_; j++) {
        a[j] = gs0 * x[j];
    }
    for (size_t q = 1; q < np; q++) {
        const float gs = g[q * gstride] * scale;
        const float *xq = x + q * k;
        TMP_TR_UNROLL
        for (int j = 0; j < nj_; j++) {
            a[j] = tmp_tr_mla(a[j], gs, xq[j]);
        }
    }
    TMP_TR_UNROLL
    for (int j = 0; j < nj_; j++) {
        dw[j] = a[j];
    }
}

/* channels [j, k) in C: blocks of 16 (targets without the asm), 4, then one of 3, 2 or 1 */
static void dwgc_c(size_t np, const float *g, size_t gstride, const float *x, size_t k, size_t j,
    float scale, float *dw) {
    for (; j + 16 <= k; j += 16) {
        dwgc_block(16, np, g, gstride, x + j, k, scale, dw + j);
    }
    for (; j + 4 <= k; j += 4) {
        dwgc_block(4, np, g, gstride, x + j, k, scale, dw + j);
    }
    switch (k - j) {
    case 3:
        dwgc_block(3, np, g, gstride, x + j, k, scale, dw + j);
        break;
    case 2:
        dwgc_block(2, np, g, gstride, x + j, k, scale, dw + j);
        break;
    case 1:
        dwgc_block(1, np, g, gstride, x + j, k, scale, dw + j);
        break;
    default:
        break;
    }
}

#if TMP_TR_VMLA && defined(__GNUC__)
#define DWGC_CLOBBER8 "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"
#define DWGC_CLOBBER_X "s16", "s17", "s18", "s19", "s20", "s21", "s22", "s23", "s24"
#define DWGC_OP8(op, d0, d1, d2, d3, d4, d5, d6, d7)                                              \
    op " " d0 ", s24, s16\n\t" op " " d1 ", s24, s17\n\t" op " " d2 ", s24, s18\n\t"              \
    op " " d3 ", s24, s19\n\t" op " " d4 ", s24, s20\n\t" op " " d5 ", s24, s21\n\t"              \
    op " " d6 ", s24, s22\n\t" op " " d7 ", s24, s23\n\t"
#define DWGC_LO(op) DWGC_OP8(op, "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7")
#define DWGC_HI(op) DWGC_OP8(op, "s8", "s9", "s10", "s11", "s12", "s13", "s14", "s15")

/* The C form for nb blocks of 16 channels at one patch: dw[j] = gs * x[j], j < 16 * nb. */
static void dwgc16_p1_asm(size_t nb, const float *x, float gs, float *dw) {
    __asm__ volatile(
        "vmov.f32 s24, %[gs]\n\t"
        "1:\n\t"
        "vldmia   %[x]!, {s16-s23}\n\t"
        DWGC_LO("vmul.f32")
        "vldmia   %[x]!, {s16-s23}\n\t"
        DWGC_HI("vmul.f32")
        "vstmia   %[dw]!, {s0-s15}\n\t"
        "subs     %[nb], %[nb], #1\n\t"
        "bne      1b"
        : [nb] "+r"(nb), [x] "+r"(x), [dw] "+r"(dw)
        : [gs] "t"(gs)
        : "cc", "memory", DWGC_CLOBBER8, "s8", "s9", "s10", "s11", "s12", "s13", "s14", "s15",
          DWGC_CLOBBER_X);
}

/* gs = g * scale in s24 */
#define DWGC_SCALE "vmul.f32 s24, s24, %[sc]\n\t"

/* The C form for nb blocks of 16 channels and np >= 2 patches: each block's 16 sums in s0-s15
 * across the patches (gs in s24). gstep and xskip are byte steps: to the next patch's gradient,
 * and from the end of a patch's 16 sums to the next patch's; xback takes x from the end of a
 * block's last patch back to the next block's first. */
#define DWGC16_BODY                                                                           \
    "0:\n\t"                                                                                      \
    "mov      %[gp], %[g]\n\t"                                                                    \
    "sub      %[n], %[np], #1\n\t"                                                                \
    "vldr     s24, [%[gp]]\n\t"                                                                   \
    DWGC_SCALE                                                                                    \
    "vldmia   %[x]!, {s16-s23}\n\t"                                                               \
    DWGC_LO("vmul.f32")                                                                           \
    "vldmia   %[x]!, {s16-s23}\n\t"                                                               \
    DWGC_HI("vmul.f32")                                                                           \
    "1:\n\t"                                                                                      \
    "add      %[gp], %[gp], %[gstep]\n\t"                                                         \
    "add      %[x], %[x], %[xskip]\n\t"                                                           \
    "vldr     s24, [%[gp]]\n\t"                                                                   \
    DWGC_SCALE                                                                                    \
    "vldmia   %[x]!, {s16-s23}\n\t"                                                               \
    DWGC_LO("vmla.f32")                                                                           \
    "vldmia   %[x]!, {s16-s23}\n\t"                                                               \
    DWGC_HI("vmla.f32")                                                                           \
    "subs     %[n], %[n], #1\n\t"                                                                 \
    "bne      1b\n\t"                                                                             \
    "vstmia   %[dw]!, {s0-s15}\n\t"                                                               \
    "sub      %[x], %[x], %[xback]\n\t"                                                           \
    "subs     %[nb], %[nb], #1\n\t"                                                               \
    "bne      0b"
#define DWGC16_OPERANDS                                                                           \
    : [nb] "+r"(nb), [x] "+r"(x), [dw] "+r"(dw), [n] "=&r"(n), [gp] "=&r"(gp)                    \
    : [np] "r"(np), [g] "r"(g), [gstep] "r"(gstep), [xskip] "r"(xskip), [xback] "r"(xback),       \
      [sc] "t"(scale)                                                                             \
    : "cc", "memory", DWGC_CLOBBER8, "s8", "s9", "s10", "s11", "s12", "s13", "s14", "s15",       \
      DWGC_CLOBBER_X

static void dwgc16_asm(size_t nb, size_t np, const float *g, size_t gstep, const float *x,
    size_t xskip, size_t xback, float scale, float *dw) {
    size_t n;
    const float *gp;
    __asm__ volatile(DWGC16_BODY DWGC16_OPERANDS);
}

/* The same for 8 channels (s0-s7) and np >= 1 patches. */
#define DWGC8_BODY                                                                            \
    "vldr     s24, [%[g]]\n\t"                                                                    \
    DWGC_SCALE                                                                                    \
    "vldmia   %[x]!, {s16-s23}\n\t"                                                               \
    DWGC_LO("vmul.f32")                                                                           \
    "subs     %[n], %[n], #1\n\t"                                                                 \
    "beq      2f\n\t"                                                                             \
    "1:\n\t"                                                                                      \
    "add      %[g], %[g], %[gstep]\n\t"                                                           \
    "add      %[x], %[x], %[xskip]\n\t"                                                           \
    "vldr     s24, [%[g]]\n\t"                                                                    \
    DWGC_SCALE                                                                                    \
    "vldmia   %[x]!, {s16-s23}\n\t"                                                               \
    DWGC_LO("vmla.f32")                                                                           \
    "subs     %[n], %[n], #1\n\t"                                                                 \
    "bne      1b\n\t"                                                                             \
    "2:\n\t"                                                                                      \
    "vstmia   %[dw], {s0-s7}"
#define DWGC8_OPERANDS                                                                            \
    : [n] "+r"(np), [g] "+r"(g), [x] "+r"(x)                                                      \
    : [gstep] "r"(gstep), [xskip] "r"(xskip), [sc] "t"(scale), [dw] "r"(dw)                       \
    : "cc", "memory", DWGC_CLOBBER8, DWGC_CLOBBER_X

static void dwgc8_asm(size_t np, const float *g, size_t gstep, const float *x, size_t xskip,
    float scale, float *dw) {
    __asm__ volatile(DWGC8_BODY DWGC8_OPERANDS);
}
#endif

tmp_status tmp_conv_dw_gc_f32(const tmp_grad_conv_params *p, const tmp_dims *out_dims,
    const float *gbar, int32_t o, const float *xf, int32_t k, float s_x,
    const tmp_filter_dims *f, float *dw) {
    if (p == NULL || gbar == NULL || xf == NULL || f == NULL || dw == NULL ||
        !tmp_tr_dims_ok(out_dims) || !tmp_tr_r_ok(p->r) || p->stride_h < 1 || p->stride_w < 1 ||
        o < 0 || o >= out_dims->c || f->kh < 1 || f->kw < 1 ||
        tmp_tr_gc_patches(p->r, out_dims, k, TMP_XS_S32) < 0 || /* [P][k] 4-byte elements */
        (int64_t)f->kh * f->kw * k > INT32_MAX) {
        return TMP_ERR_ARG;
    }
    const size_t cout = (size_t)out_dims->c, kk = (size_t)k;
    const size_t np = (size_t)tmp_tr_gc_patches(p->r, out_dims, k, TMP_XS_S32);
    const float scale = s_x / ((float)p->stride_h * (float)p->stride_w);
    const float *g = gbar + o;
    size_t j = 0;
#if TMP_TR_VMLA && defined(__GNUC__)
    const size_t nb = kk / 16u;
    if (nb > 0 && np == 1) {
        dwgc16_p1_asm(nb, xf, g[0] * scale, dw);
    } else if (nb > 0) {
        dwgc16_asm(nb, np, g, 4u * cout, xf, 4u * (kk - 16u), 4u * (np - 1u) * kk, scale, dw);
    }
    j = 16u * nb;
    if (kk - j >= 8) {
        dwgc8_asm(np, g, 4u * cout, xf + j, 4u * (kk - 8u), scale, dw + j);
        j += 8;
    }
#endif
    if (j < kk) {
        dwgc_c(np, g, cout, xf, kk, j, scale, dw);
    }
    const int32_t taps = f->kh * f->kw;
    for (int32_t t = 1; t < taps; t++) {
        memcpy(dw + (size_t)t * kk, dw, kk * sizeof(float));
    }
    return TMP_OK;
}
