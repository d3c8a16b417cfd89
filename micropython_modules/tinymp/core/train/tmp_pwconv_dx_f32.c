/**
 * @file tmp_pwconv_dx_f32.c
 * @brief Input gradient of a pointwise (1x1, stride 1, no padding) convolution, any r,
 *        accumulated into dx.
 *
 * Input and output have the same h x w, hence the same r-grid, and each output patch's window
 * is the input patch at the same place, so for every grid patch p (exact at r = 1):
 *
 *     dx[p][i] += sum_o wscale[o] * w[o][i] * gbar[p][o]
 *
 * (Wsum = W for a 1x1 kernel.) Every element is computed as
 *     d = dx[p][i];  for o ascending, gbar[p][o] != 0:  d = d + (gbar[p][o] * wscale[o]) * w[o][i]
 * with each product and sum rounded to float, in this order. No scratch from the caller (the
 * blocked path keeps 288 bytes on the stack).
 *
 * Three paths compute exactly that, bit for bit:
 *  - blocked (4 or more patches): for each block of 8 input channels and chunk of 8 output
 *    channels, the int8 weights are converted to float once into a 288-byte stack buffer of rows
 *    [wscale[o], w[o][i0..i0+8)]; then tiles of 2 patches x 8 channels keep their 16 sums in
 *    registers across the chunk, one multiply-accumulate per MAC (tmp_tr_mla: VMLA, which is not
 *    fused). On the M7 the 2 x 8 tiles and the conversion are asm blocks (VLDM rows, VMLA,
 *    SXTB16 + VCVT.F32.S16); the channel remainder (in.c not a multiple of 8), an odd last patch
 *    and other targets use the same loops in C;
 *  - rows (1 to 3 patches: a weight is used at most 3 times, converting it first does not pay):
 *    8 channels of one patch in registers, weights converted in place (on the M7, 16 channels
 *    in one asm block, pwdx_row16_asm);
 *  - plain: the loop above.
 * The blocked and rows paths also add the terms of zero gradients (products +-0). That leaves
 * every sum unchanged unless a dx element is -0, subnormal or NaN (tmp_tr_zero_add_unsafe) or a
 * wscale is not finite; pwconv_dx_needs_skip() proves it first (dx all +0, as the caller zeroes
 * it, or no zero gradient at all, or a full scan of dx), and the plain loop runs otherwise.
 *
 * Layouts: weights [out.c][in.c] int8, wscale [out.c], gbar [ceil(h/r)][ceil(w/r)][out.c],
 * dx [ceil(h/r)][ceil(w/r)][in.c] fp32 (accumulated).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

#define PWDX_NP 2 /* patches per tile */
#define PWDX_NI 8 /* input channels per tile (at most) */
#define PWDX_OC 8 /* output channels per chunk of converted weights (stack: OC * (NI + 1) floats) */

#if defined(__GNUC__)
#define PWDX_INLINE __attribute__((always_inline)) static inline
#else
#define PWDX_INLINE static inline
#endif

/* The reference loop (zero gradients skipped). */
static void pwconv_dx_plain(size_t np, int32_t cin, int32_t cout, const int8_t *weights,
    const float *wscale, const float *gbar, float *dx) {
    for (size_t q = 0; q < np; q++) {
        const float *gp = gbar + q * (size_t)cout;
        float *d = dx + q * (size_t)cin;
        for (int32_t o = 0; o < cout; o++) {
            if (gp[o] == 0.0f) {
                continue;
            }
            const float g = gp[o] * wscale[o];
            const int8_t *w = weights + (size_t)o * (size_t)cin;
            for (int32_t i = 0; i < cin; i++) {
                d[i] += g * (float)w[i];
            }
        }
    }
}

/* One tile: NP patches (rows of dx/gbar `dstride`/`gstride` floats apart) x NI input channels,
 * over the `oc` output channels of a chunk: a[p][i] += (g[p][o] * ws[o]) * wf[o][i], with
 * wf rows [ws[o], w[o][i0..i0+NI)] (PWDX_ROW floats). NP and NI are compile-time constants at
 * every call (the function is inlined and its loops unrolled), so `a` lives in registers. */
#define PWDX_ROW (PWDX_NI + 1)

PWDX_INLINE void pwdx_tile(const int np_, const int ni_, float *d, size_t dstride,
    const float *g, size_t gstride, const float *wf, int32_t oc) {
    float a[PWDX_NP][PWDX_NI];
    const float *gq[PWDX_NP];
    TMP_TR_UNROLL
    for (int p = 0; p < np_; p++) {
        gq[p] = g + (size_t)p * gstride;
        TMP_TR_UNROLL
        for (int i = 0; i < ni_; i++) {
            a[p][i] = d[(size_t)p * dstride + (size_t)i];
        }
    }
    for (int32_t o = 0; o < oc; o++) {
        const float *w = wf + (size_t)o * PWDX_ROW;
        float gv[PWDX_NP];
        TMP_TR_UNROLL
        for (int p = 0; p < np_; p++) {
            gv[p] = *gq[p]++ * w[0];
        }
        TMP_TR_UNROLL
        for (int i = 0; i < ni_; i++) {
            const float wv = w[1 + i];
            TMP_TR_UNROLL
            for (int p = 0; p < np_; p++) {
                a[p][i] = tmp_tr_mla(a[p][i], gv[p], wv);
            }
        }
    }
    TMP_TR_UNROLL
    for (int p = 0; p < np_; p++) {
        TMP_TR_UNROLL
        for (int i = 0; i < ni_; i++) {
            d[(size_t)p * dstride + (size_t)i] = a[p][i];
        }
    }
}

#if TMP_TR_VMLA && defined(__GNUC__)
/* pwdx_tile(2, 8, ...) for `pairs` consecutive pairs of patches, as one asm block: the 16
 * accumulators, the 9-float weight row (one VLDM) and the two patch gradients stay in s0-s26;
 * per output channel 3 loads, 2 VMUL, 16 VMLA, 2 loop instructions. The same operations in the
 * same order as the C tile. d: dx row of the first patch at the block's first channel (rows
 * dstride bytes apart), g: gbar row of the first patch at the chunk's first output channel
 * (rows gstride bytes apart), wf .. wf_end: the chunk's converted weight rows. */
static inline void pwdx_pairs_2x8_asm(float *d, const float *g, size_t pairs, size_t dstride,
    size_t gstride, const float *wf, const float *wf_end) {
    const float *d_end = (const float *)((const char *)d + 2u * pairs * dstride);
    float *d1;
    const float *w, *g0, *g1;
    __asm__ volatile(
        "2:\n\t"
        "add      %[d1], %[d], %[ds]\n\t"
        "vldm     %[d], {s0-s7}\n\t"
        "vldm     %[d1], {s8-s15}\n\t"
        "mov      %[g0], %[g]\n\t"
        "add      %[g1], %[g], %[gs]\n\t"
        "mov      %[w], %[wf]\n\t"
        "1:\n\t"
        "vldmia   %[w]!, {s16-s24}\n\t"
        "vldmia   %[g0]!, {s25}\n\t"
        "vldmia   %[g1]!, {s26}\n\t"
        "vmul.f32 s25, s25, s16\n\t"
        "vmul.f32 s26, s26, s16\n\t"
        "vmla.f32 s0, s25, s17\n\t"
        "vmla.f32 s8, s26, s17\n\t"
        "vmla.f32 s1, s25, s18\n\t"
        "vmla.f32 s9, s26, s18\n\t"
        "vmla.f32 s2, s25, s19\n\t"
        "vmla.f32 s10, s26, s19\n\t"
        "vmla.f32 s3, s25, s20\n\t"
        "vmla.f32 s11, s26, s20\n\t"
        "vmla.f32 s4, s25, s21\n\t"
        "vmla.f32 s12, s26, s21\n\t"
        "vmla.f32 s5, s25, s22\n\t"
        "vmla.f32 s13, s26, s22\n\t"
        "vmla.f32 s6, s25, s23\n\t"
        "vmla.f32 s14, s26, s23\n\t"
        "vmla.f32 s7, s25, s24\n\t"
        "vmla.f32 s15, s26, s24\n\t"
        "cmp      %[w], %[wend]\n\t"
        "bne      1b\n\t"
        "vstm     %[d], {s0-s7}\n\t"
        "vstm     %[d1], {s8-s15}\n\t"
        "add      %[d], %[d], %[ds], lsl #1\n\t"
        "add      %[g], %[g], %[gs], lsl #1\n\t"
        "cmp      %[d], %[dend]\n\t"
        "bne      2b"
        : [d] "+r"(d), [g] "+r"(g), [d1] "=&r"(d1), [w] "=&r"(w), [g0] "=&r"(g0),
          [g1] "=&r"(g1)
        : [ds] "r"(dstride), [gs] "r"(gstride), [wf] "r"(wf), [wend] "r"(wf_end),
          [dend] "r"(d_end)
        : "cc", "memory", "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10",
          "s11", "s12", "s13", "s14", "s15", "s16", "s17", "s18", "s19", "s20", "s21", "s22",
          "s23", "s24", "s25", "s26");
}

/* The weight rows of an 8-channel block, [wscale[o], (float)w[o][0..8)] for `oc` output
 * channels (oc >= 1), as one asm block: two word loads, SXTB16 with the four rotations put each
 * byte sign-extended in the low half of a register, VMOV pairs, VCVT.F32.S16 (exact). */
static inline void pwdx_rows8_asm(const int8_t *w, size_t wstride, const float *ws, float *wf,
    int32_t oc) {
    uint32_t a, b, t0, t1;
    __asm__ volatile(
        "1:\n\t"
        "ldr      %[a], [%[w]]\n\t"
        "ldr      %[b], [%[w], #4]\n\t"
        "add      %[w], %[w], %[wst]\n\t"
        "vldmia   %[ws]!, {s0}\n\t"
        "sxtb16   %[t0], %[a]\n\t"
        "sxtb16   %[t1], %[a], ror #8\n\t"
        "vmov     s1, s2, %[t0], %[t1]\n\t"
        "sxtb16   %[t0], %[a], ror #16\n\t"
        "sxtb16   %[t1], %[a], ror #24\n\t"
        "vmov     s3, s4, %[t0], %[t1]\n\t"
        "sxtb16   %[t0], %[b]\n\t"
        "sxtb16   %[t1], %[b], ror #8\n\t"
        "vmov     s5, s6, %[t0], %[t1]\n\t"
        "sxtb16   %[t0], %[b], ror #16\n\t"
        "sxtb16   %[t1], %[b], ror #24\n\t"
        "vmov     s7, s8, %[t0], %[t1]\n\t"
        "vcvt.f32.s16 s1, s1, #0\n\t"
        "vcvt.f32.s16 s2, s2, #0\n\t"
        "vcvt.f32.s16 s3, s3, #0\n\t"
        "vcvt.f32.s16 s4, s4, #0\n\t"
        "vcvt.f32.s16 s5, s5, #0\n\t"
        "vcvt.f32.s16 s6, s6, #0\n\t"
        "vcvt.f32.s16 s7, s7, #0\n\t"
        "vcvt.f32.s16 s8, s8, #0\n\t"
        "vstmia   %[wf]!, {s0-s8}\n\t"
        "subs     %[n], %[n], #1\n\t"
        "bne      1b"
        : [w] "+r"(w), [ws] "+r"(ws), [wf] "+r"(wf), [n] "+r"(oc), [a] "=&r"(a), [b] "=&r"(b),
          [t0] "=&r"(t0), [t1] "=&r"(t1)
        : [wst] "r"(wstride)
        : "cc", "memory", "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8");
}

/* half of pwdx_row16_asm: the 8 weights in words %[wa], %[wb] converted into s17-s24, then
 * accumulated into a0..a7 with the gradient product in s16 */
#define PWDX_ROW16_HALF(wa, wb, a0, a1, a2, a3, a4, a5, a6, a7)                                  \
    "sxtb16   %[t0], %[" wa "]\n\t"                                                            \
    "sxtb16   %[t1], %[" wa "], ror #8\n\t"                                                    \
    "vmov     s17, s18, %[t0], %[t1]\n\t"                                                       \
    "sxtb16   %[t0], %[" wa "], ror #16\n\t"                                                   \
    "sxtb16   %[t1], %[" wa "], ror #24\n\t"                                                   \
    "vmov     s19, s20, %[t0], %[t1]\n\t"                                                       \
    "sxtb16   %[t0], %[" wb "]\n\t"                                                            \
    "sxtb16   %[t1], %[" wb "], ror #8\n\t"                                                    \
    "vmov     s21, s22, %[t0], %[t1]\n\t"                                                       \
    "sxtb16   %[t0], %[" wb "], ror #16\n\t"                                                   \
    "sxtb16   %[t1], %[" wb "], ror #24\n\t"                                                   \
    "vmov     s23, s24, %[t0], %[t1]\n\t"                                                       \
    "vcvt.f32.s16 s17, s17, #0\n\t"                                                            \
    "vcvt.f32.s16 s18, s18, #0\n\t"                                                            \
    "vcvt.f32.s16 s19, s19, #0\n\t"                                                            \
    "vcvt.f32.s16 s20, s20, #0\n\t"                                                            \
    "vcvt.f32.s16 s21, s21, #0\n\t"                                                            \
    "vcvt.f32.s16 s22, s22, #0\n\t"                                                            \
    "vcvt.f32.s16 s23, s23, #0\n\t"                                                            \
    "vcvt.f32.s16 s24, s24, #0\n\t"                                                            \
    "vmla.f32 " a0 ", s16, s17\n\t"                                                            \
    "vmla.f32 " a1 ", s16, s18\n\t"                                                            \
    "vmla.f32 " a2 ", s16, s19\n\t"                                                            \
    "vmla.f32 " a3 ", s16, s20\n\t"                                                            \
    "vmla.f32 " a4 ", s16, s21\n\t"                                                            \
    "vmla.f32 " a5 ", s16, s22\n\t"                                                            \
    "vmla.f32 " a6 ", s16, s23\n\t"                                                            \
    "vmla.f32 " a7 ", s16, s24\n\t"

/* pwdx_row(16, ...) for one patch as one asm block: dx[i0 .. i0+16) in s0-s15 across all
 * `cout` output channels; per output channel g = gbar[o] * wscale[o] (s16), 16 weights read
 * with four LDR (rows need not be aligned), put in the low halves with SXTB16 and its
 * rotations, moved in pairs and converted exactly (VCVT.F32.S16) in two halves of 8 (s17-s24),
 * then 16 VMLA: 66 instructions per 16 MACs instead of about 80. The same operations in the same
 * order as the C row. cout >= 1 (tmp_dims_ok), which the count-down loop relies on. */
static inline void pwdx_row16_asm(const int8_t *w, size_t cin, const float *ws, const float *gp,
    float *d, int32_t cout) {
    uint32_t a, b, c, e, t0, t1;
    __asm__ volatile(
        "vldm     %[d], {s0-s15}\n\t"
        "1:\n\t"
        "vldmia   %[gp]!, {s16}\n\t"
        "vldmia   %[ws]!, {s17}\n\t"
        "ldr      %[a], [%[w]]\n\t"
        "ldr      %[b], [%[w], #4]\n\t"
        "ldr      %[c], [%[w], #8]\n\t"
        "ldr      %[e], [%[w], #12]\n\t"
        "add      %[w], %[w], %[cin]\n\t"
        "vmul.f32 s16, s16, s17\n\t"
        PWDX_ROW16_HALF("a", "b", "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7")
        PWDX_ROW16_HALF("c", "e", "s8", "s9", "s10", "s11", "s12", "s13", "s14", "s15")
        "subs     %[n], %[n], #1\n\t"
        "bne      1b\n\t"
        "vstm     %[d], {s0-s15}"
        : [w] "+r"(w), [ws] "+r"(ws), [gp] "+r"(gp), [n] "+r"(cout), [a] "=&r"(a), [b] "=&r"(b),
          [c] "=&r"(c), [e] "=&r"(e), [t0] "=&r"(t0), [t1] "=&r"(t1)
        : [d] "r"(d), [cin] "r"(cin)
        : "cc", "memory", "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10",
          "s11", "s12", "s13", "s14", "s15", "s16", "s17", "s18", "s19", "s20", "s21", "s22",
          "s23", "s24");
}
#define PWDX_ASM 1
#else
#define PWDX_ASM 0
#endif

/* All patches (np >= 1) for input channels [i0, i0 + ni) and output channels [o0, o0 + oc). */
PWDX_INLINE void pwdx_block(const int ni_, size_t np, int32_t cin, int32_t cout, int32_t i0,
    int32_t o0, int32_t oc, const float *wf, const float *gbar, float *dx) {
    size_t q = 0;
#if PWDX_ASM
    if (ni_ == 8 && np >= 2) {
        q = np & ~(size_t)1;
        pwdx_pairs_2x8_asm(dx + i0, gbar + o0, np / 2u, (size_t)cin * sizeof(float),
            (size_t)cout * sizeof(float), wf, wf + (size_t)oc * PWDX_ROW);
    }
#endif
    for (; q + PWDX_NP <= np; q += PWDX_NP) {
        pwdx_tile(PWDX_NP, ni_, dx + q * (size_t)cin + (size_t)i0, (size_t)cin,
            gbar + q * (size_t)cout + (size_t)o0, (size_t)cout, wf, oc);
    }
    for (; q < np; q++) {
        pwdx_tile(1, ni_, dx + q * (size_t)cin + (size_t)i0, (size_t)cin,
            gbar + q * (size_t)cout + (size_t)o0, (size_t)cout, wf, oc);
    }
}

/* Patches in tiles of PWDX_NP (np >= 2): the weights of each (input block, output chunk)
 * converted once into `wf`, then used by every tile. */
static void pwconv_dx_blocked(size_t np, int32_t cin, int32_t cout, const int8_t *weights,
    const float *wscale, const float *gbar, float *dx) {
    float wf[PWDX_OC * PWDX_ROW];
    int32_t i0 = 0;
    while (i0 < cin) {
        const int32_t left = cin - i0;
        const int32_t ni = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
        for (int32_t o0 = 0; o0 < cout; o0 += PWDX_OC) {
            const int32_t oc = cout - o0 < PWDX_OC ? cout - o0 : PWDX_OC;
#if PWDX_ASM
            if (ni == 8) {
                pwdx_rows8_asm(weights + (size_t)o0 * (size_t)cin + (size_t)i0, (size_t)cin,
                    wscale + o0, wf, oc);
            } else
#endif
            {
                for (int32_t o = 0; o < oc; o++) {
                    const int8_t *w = weights + (size_t)(o0 + o) * (size_t)cin + (size_t)i0;
                    float *row = wf + (size_t)o * PWDX_ROW;
                    row[0] = wscale[o0 + o];
                    for (int32_t i = 0; i < ni; i++) {
                        row[1 + i] = (float)w[i];
                    }
                }
            }
            switch (ni) {
            case 8:
                pwdx_block(8, np, cin, cout, i0, o0, oc, wf, gbar, dx);
                break;
            case 4:
                pwdx_block(4, np, cin, cout, i0, o0, oc, wf, gbar, dx);
                break;
            case 2:
                pwdx_block(2, np, cin, cout, i0, o0, oc, wf, gbar, dx);
                break;
            default:
                pwdx_block(1, np, cin, cout, i0, o0, oc, wf, gbar, dx);
                break;
            }
        }
        i0 += ni;
    }
}

/* Fewer patches than a tile (every weight is used at most 3 times: converting it into a buffer
 * first does not pay): per patch, 8 input channels in registers, weights converted in place. */
PWDX_INLINE void pwdx_row(const int ni_, int32_t cin, int32_t cout, const int8_t *weights,
    const float *wscale, const float *gp, float *d) {
    float a[8];
    TMP_TR_UNROLL
    for (int i = 0; i < ni_; i++) {
        a[i] = d[i];
    }
    const int8_t *w = weights;
    for (int32_t o = 0; o < cout; o++) {
        const float g = gp[o] * wscale[o];
        TMP_TR_UNROLL
        for (int i = 0; i < ni_; i++) {
            a[i] = tmp_tr_mla(a[i], g, (float)w[i]);
        }
        w += cin;
    }
    TMP_TR_UNROLL
    for (int i = 0; i < ni_; i++) {
        d[i] = a[i];
    }
}

/* out of line: its asm block's registers would otherwise enlarge the blocked path's frame */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void pwconv_dx_rows(size_t np, int32_t cin, int32_t cout, const int8_t *weights,
    const float *wscale, const float *gbar, float *dx) {
    for (size_t q = 0; q < np; q++) {
        const float *gp = gbar + q * (size_t)cout;
        float *d = dx + q * (size_t)cin;
        int32_t i0 = 0;
#if PWDX_ASM
        for (; i0 + 16 <= cin; i0 += 16) {
            pwdx_row16_asm(weights + i0, (size_t)cin, wscale, gp, d + i0, cout);
        }
#endif
        for (; i0 + 8 <= cin; i0 += 8) {
            pwdx_row(8, cin, cout, weights + i0, wscale, gp, d + i0);
        }
        for (; i0 < cin; i0++) {
            pwdx_row(1, cin, cout, weights + i0, wscale, gp, d + i0);
        }
    }
}

/* 1 when some v[e] (e < n) is +-0 (or, for FZ units, subnormal: compares equal to 0): the
 * exponent field is 0, i.e. (bits & 0x7F800000) - 2^23 borrows into bit 31. */
static int any_zero(const float *v, size_t n) {
    uint32_t acc = 0;
    size_t e = 0;
    for (; e + 4 <= n; e += 4) {
        acc |= ((tmp_tr_fbits(v[e]) & 0x7F800000u) - 0x00800000u) |
            ((tmp_tr_fbits(v[e + 1]) & 0x7F800000u) - 0x00800000u) |
            ((tmp_tr_fbits(v[e + 2]) & 0x7F800000u) - 0x00800000u) |
            ((tmp_tr_fbits(v[e + 3]) & 0x7F800000u) - 0x00800000u);
    }
    for (; e < n; e++) {
        acc |= (tmp_tr_fbits(v[e]) & 0x7F800000u) - 0x00800000u;
    }
    return (acc >> 31) != 0;
}

/* 1 when every v[e] (e < n) is +0 (the usual dx: zeroed by the caller, first consumer). */
static int all_plus_zero(const float *v, size_t n) {
    uint32_t acc = 0;
    size_t e = 0;
    for (; e + 4 <= n; e += 4) {
        acc |= tmp_tr_fbits(v[e]) | tmp_tr_fbits(v[e + 1]) | tmp_tr_fbits(v[e + 2]) |
            tmp_tr_fbits(v[e + 3]);
    }
    for (; e < n; e++) {
        acc |= tmp_tr_fbits(v[e]);
    }
    return acc == 0;
}

/* 1 when adding the +-0 terms of zero gradients instead of skipping them may change a result:
 * some gradient is zero, and some wscale is not finite or some dx element is -0, subnormal or
 * NaN. The cheap scans run first. */
static int pwconv_dx_needs_skip(size_t np, int32_t cin, int32_t cout, const float *wscale,
    const float *gbar, const float *dx) {
    const size_t nd = np * (size_t)cin, ng = np * (size_t)cout;
    int w_ok = 1;
    for (int32_t o = 0; o < cout; o++) {
        w_ok &= tmp_tr_finite(wscale[o]);
    }
    /* either proof suffices: dx all +0 (and wscale finite), or no zero gradient (nothing is
     * skipped); the shorter scan first */
    if (nd <= ng && w_ok && all_plus_zero(dx, nd)) {
        return 0;
    }
    if (!any_zero(gbar, ng)) {
        return 0;
    }
    if (nd > ng && w_ok && all_plus_zero(dx, nd)) {
        return 0;
    }
    if (!w_ok) {
        return 1;
    }
    for (size_t e = 0; e < nd; e++) {
        if (tmp_tr_zero_add_unsafe(dx[e])) {
            return 1;
        }
    }
    return 0;
}

tmp_status tmp_pwconv_dx_f32(int32_t r, const tmp_dims *in_dims, const int8_t *weights,
    const float *wscale, const tmp_dims *out_dims, const float *gbar, float *dx) {
    if (weights == NULL || wscale == NULL || gbar == NULL || dx == NULL || !tmp_tr_r_ok(r) ||
        !tmp_tr_dims_ok(in_dims) || !tmp_tr_dims_ok(out_dims) || in_dims->h != out_dims->h ||
        in_dims->w != out_dims->w || (int64_t)in_dims->c * out_dims->c > INT32_MAX) {
        return TMP_ERR_ARG;
    }
    const int32_t cin = in_dims->c;
    const int32_t cout = out_dims->c;
    const size_t np = (size_t)tmp_tr_ceil_div(in_dims->h, r) * (size_t)tmp_tr_ceil_div(in_dims->w, r);
    if (pwconv_dx_needs_skip(np, cin, cout, wscale, gbar, dx)) {
        pwconv_dx_plain(np, cin, cout, weights, wscale, gbar, dx);
    } else if (np < 4) {
        pwconv_dx_rows(np, cin, cout, weights, wscale, gbar, dx);
    } else {
        pwconv_dx_blocked(np, cin, cout, weights, wscale, gbar, dx);
    }
    return TMP_OK;
}
