/**
 * @file tmp_fc_s8.c
 * @brief Fully connected int8 layer (TFLite int8 semantics).
 *
 * The input is read as a vector of n values in memory order (an [h][w][c] tensor with
 * n = h*w*c). For every output o < out_features (docs/KERNELS.md, "Fully connected"):
 *
 *     acc = bias[o] + sum over i < n of (in[i] + input_offset) * w[o][i]
 *     out[o] = clamp(requant(acc, mult[o], shift[o]) + output_offset, act_min, act_max)
 *
 * Layouts (int8 unless noted): in [n], weights [out_features][n], bias int32 [out_features]
 * (NULL = zero), out [out_features]. `out` must not overlap `in`.
 *
 * Scratch: none (get_buffer_size returns 0; `scratch` may be NULL). n can be large (up to 65536
 * in the model format), so the input is not widened into a buffer; the input offset is added in
 * the inner loop (fc_dot_s8()). The DSP path (TMP_DSP, Cortex-M4/M7) computes 3 outputs per pass
 * over the input (2 for the remainder, 1 only when there is a single output), expanding 4 inputs
 * at a time with SXTAB16
 * (which adds the input offset to two lanes at once) and the weights with SXTB16, SMLAD.
 *
 * Preconditions not checked (guaranteed by the model format): |bias[o]| <= 2^31 - 1 - 32640*n,
 * so the int32 accumulator cannot overflow.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "../tmp_kernels.h"
#include "tmp_dsp.h"

int32_t tmp_fc_s8_get_buffer_size(int32_t n, int32_t out_features) {
    (void)n;
    (void)out_features;
    return 0;
}

#if TMP_DSP
/* 4 inputs (x4) against the next 4 weights of rows o (w0), o+1 (w0 + n), o+2 (w2) */
__attribute__((always_inline)) static inline void fc_dsp_group4(int32_t x4, int32_t offp,
    const int8_t **w0, const int8_t **w2, size_t sn, int32_t *a0, int32_t *a1, int32_t *a2,
    const int no) {
    const int32_t x02 = tmp_sxtab16(offp, x4);
    const int32_t x13 = tmp_sxtab16_ror8(offp, x4);
    int32_t wv;
    if (no >= 2) {
        wv = tmp_ld4(*w0 + sn);
        *a1 = tmp_smlad(x02, tmp_sxtb16(wv), *a1);
        *a1 = tmp_smlad(x13, tmp_sxtb16_ror8(wv), *a1);
    }
    if (no >= 3) {
        wv = tmp_ld4(*w2);
        *w2 += 4;
        *a2 = tmp_smlad(x02, tmp_sxtb16(wv), *a2);
        *a2 = tmp_smlad(x13, tmp_sxtb16_ror8(wv), *a2);
    }
    wv = tmp_ld4(*w0);
    *w0 += 4;
    *a0 = tmp_smlad(x02, tmp_sxtb16(wv), *a0);
    *a0 = tmp_smlad(x13, tmp_sxtb16_ror8(wv), *a0);
}

#if defined(__OPTIMIZE__)
/* The 3-output inner loop, 8 inputs per iteration, as one asm block: 13 values stay in registers
 * (C code spills two of them each iteration). Same arithmetic as fc_dsp_group4 twice. */
static inline void fc_dsp_loop3(const int8_t **px, const int8_t *x_end, const int8_t **pw0,
    const int8_t **pw2, size_t sn, int32_t offp, int32_t *a0, int32_t *a1, int32_t *a2) {
    const int8_t *x = *px;
    const int8_t *w0 = *pw0;
    const int8_t *w2 = *pw2;
    int32_t r0 = *a0, r1 = *a1, r2 = *a2;
    int32_t x4, x13, wa, wb;
    __asm__ volatile(
        "1:\n\t"
        "ldr     %[x4], [%[x]], #4\n\t"
        "ldr     %[wa], [%[w0], %[n]]\n\t"
        "sxtab16 %[x13], %[offp], %[x4], ror #8\n\t"
        "sxtab16 %[x4], %[offp], %[x4]\n\t"
        "sxtb16  %[wb], %[wa]\n\t"
        "sxtb16  %[wa], %[wa], ror #8\n\t"
        "smlad   %[r1], %[x4], %[wb], %[r1]\n\t"
        "smlad   %[r1], %[x13], %[wa], %[r1]\n\t"
        "ldr     %[wa], [%[w2]], #4\n\t"
        "sxtb16  %[wb], %[wa]\n\t"
        "sxtb16  %[wa], %[wa], ror #8\n\t"
        "smlad   %[r2], %[x4], %[wb], %[r2]\n\t"
        "smlad   %[r2], %[x13], %[wa], %[r2]\n\t"
        "ldr     %[wa], [%[w0]], #4\n\t"
        "sxtb16  %[wb], %[wa]\n\t"
        "sxtb16  %[wa], %[wa], ror #8\n\t"
        "smlad   %[r0], %[x4], %[wb], %[r0]\n\t"
        "smlad   %[r0], %[x13], %[wa], %[r0]\n\t"
        "ldr     %[x4], [%[x]], #4\n\t"
        "ldr     %[wa], [%[w0], %[n]]\n\t"
        "sxtab16 %[x13], %[offp], %[x4], ror #8\n\t"
        "sxtab16 %[x4], %[offp], %[x4]\n\t"
        "sxtb16  %[wb], %[wa]\n\t"
        "sxtb16  %[wa], %[wa], ror #8\n\t"
        "smlad   %[r1], %[x4], %[wb], %[r1]\n\t"
        "smlad   %[r1], %[x13], %[wa], %[r1]\n\t"
        "ldr     %[wa], [%[w2]], #4\n\t"
        "sxtb16  %[wb], %[wa]\n\t"
        "sxtb16  %[wa], %[wa], ror #8\n\t"
        "smlad   %[r2], %[x4], %[wb], %[r2]\n\t"
        "smlad   %[r2], %[x13], %[wa], %[r2]\n\t"
        "ldr     %[wa], [%[w0]], #4\n\t"
        "sxtb16  %[wb], %[wa]\n\t"
        "sxtb16  %[wa], %[wa], ror #8\n\t"
        "smlad   %[r0], %[x4], %[wb], %[r0]\n\t"
        "smlad   %[r0], %[x13], %[wa], %[r0]\n\t"
        "cmp     %[x], %[end]\n\t"
        "bne     1b"
        : [x] "+r"(x), [w0] "+r"(w0), [w2] "+r"(w2), [r0] "+r"(r0), [r1] "+r"(r1),
          [r2] "+r"(r2), [x4] "=&r"(x4), [x13] "=&r"(x13), [wa] "=&r"(wa), [wb] "=&r"(wb)
        : [n] "r"(sn), [offp] "r"(offp), [end] "r"(x_end)
        : "cc", "memory");
    *px = x;
    *pw0 = w0;
    *pw2 = w2;
    *a0 = r0;
    *a1 = r1;
    *a2 = r2;
}
#endif

/* outputs o .. o+no-1 (no = 1, 2 or 3, a compile-time constant) */
__attribute__((always_inline)) static inline void fc_dsp_pass(const tmp_fc_params *p,
    const tmp_per_channel_quant *q, int32_t n, const int8_t *in, const int8_t *w,
    const int32_t *bias, int32_t o, int8_t *out, const int no) {
    const int32_t offp = tmp_pack16x2(p->input_offset);
    const size_t sn = (size_t)n;
    const int8_t *w0 = w; /* rows o, o+1 at w0, w0 + n */
    const int8_t *w2 = w + 2 * sn;
    int32_t a0 = 0, a1 = 0, a2 = 0;
    const int8_t *x = in;
    /* 8 inputs per iteration (two groups of 4), then at most one group of 4, then 0..3 */
    const int8_t *x_end8 = in + (n & ~(int32_t)7);
#if defined(__OPTIMIZE__)
    if (no == 3 && x != x_end8) {
        fc_dsp_loop3(&x, x_end8, &w0, &w2, sn, offp, &a0, &a1, &a2);
    }
#endif
    while (x != x_end8) {
        fc_dsp_group4(tmp_ld4(x), offp, &w0, &w2, sn, &a0, &a1, &a2, no);
        fc_dsp_group4(tmp_ld4(x + 4), offp, &w0, &w2, sn, &a0, &a1, &a2, no);
        x += 8;
    }
    if (n & 4) {
        fc_dsp_group4(tmp_ld4(x), offp, &w0, &w2, sn, &a0, &a1, &a2, no);
        x += 4;
    }
    for (int32_t t = 0; t < (n & 3); t++) {
        const int32_t xv = x[t] + p->input_offset;
        a0 = tmp_smlabb(xv, w0[t], a0);
        if (no >= 2) {
            a1 = tmp_smlabb(xv, w0[sn + (size_t)t], a1);
        }
        if (no >= 3) {
            a2 = tmp_smlabb(xv, w2[t], a2);
        }
    }
    int32_t acc[3] = {a0, a1, a2};
    for (int j = 0; j < no; j++) {
        const int32_t b = bias != NULL ? bias[o + j] : 0;
        out[o + j] = tmp_rq_out((int32_t)((uint32_t)acc[j] + (uint32_t)b),
            tmp_rq_prep(q->multiplier[o + j], q->shift[o + j]), p->output_offset, p->act_min,
            p->act_max);
    }
}
#else
/* sum (x[i] + x_off) * w[i], i < n. */
static int32_t fc_dot_s8(const int8_t *x, const int8_t *w, int32_t n, int32_t x_off) {
    int32_t acc = 0;
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        acc += ((int32_t)x[i] + x_off) * w[i] + ((int32_t)x[i + 1] + x_off) * w[i + 1] +
            ((int32_t)x[i + 2] + x_off) * w[i + 2] + ((int32_t)x[i + 3] + x_off) * w[i + 3];
    }
    for (; i < n; i++) {
        acc += ((int32_t)x[i] + x_off) * w[i];
    }
    return acc;
}
#endif

tmp_status tmp_fc_s8(const tmp_fc_params *p, const tmp_per_channel_quant *q,
    int32_t n, const int8_t *in, const int8_t *weights, const int32_t *bias,
    int32_t out_features, int8_t *out, void *scratch) {
    (void)scratch;
    if (p == NULL || q == NULL || q->multiplier == NULL || q->shift == NULL || in == NULL ||
        weights == NULL || out == NULL || n < 1 || out_features < 1 ||
        p->input_offset < -127 || p->input_offset > 128 ||
        p->output_offset < -128 || p->output_offset > 127 ||
        p->act_min < -128 || p->act_max > 127 || p->act_min > p->act_max) {
        return TMP_ERR_ARG;
    }
    const int32_t *mult = q->multiplier;
    const int32_t *shift = q->shift;
    for (int32_t o = 0; o < out_features; o++) {
        if (mult[o] < 0 || shift[o] < -31 || shift[o] > 30) {
            return TMP_ERR_ARG;
        }
    }

#if TMP_DSP
    /* passes of 3, then of 2 (a remainder of 1 after a pass of 3 becomes 2 + 2) */
    const int32_t rem = out_features % 3;
    const int32_t n3 = out_features - (rem == 1 && out_features > 1 ? 4 : rem);
    int32_t o = 0;
    for (; o < n3; o += 3) {
        fc_dsp_pass(p, q, n, in, weights + (size_t)o * (size_t)n, bias, o, out, 3);
    }
    for (; o + 2 <= out_features; o += 2) {
        fc_dsp_pass(p, q, n, in, weights + (size_t)o * (size_t)n, bias, o, out, 2);
    }
    if (o < out_features) {
        fc_dsp_pass(p, q, n, in, weights + (size_t)o * (size_t)n, bias, o, out, 1);
    }
#else
    const int8_t *w = weights;
    for (int32_t o = 0; o < out_features; o++) {
        int32_t acc = fc_dot_s8(in, w, n, p->input_offset);
        if (bias != NULL) {
            acc += bias[o];
        }
        out[o] = tmp_clamp_out(tmp_requant(acc, mult[o], shift[o]), p->output_offset, p->act_min,
            p->act_max);
        w += n;
    }
#endif
    return TMP_OK;
}
