/**
 * @file tmp_pwconv_s8.c
 * @brief Pointwise (1x1, stride 1, no padding) int8 convolution (TFLite int8 semantics).
 *
 * For every pixel p and output channel o (docs/KERNELS.md, "Convolution", pwconv):
 *
 *     acc = bias[o] + sum over i < in.c of (in[p][i] + input_offset) * w[o][i]
 *     out[p][o] = clamp(requant(acc, mult[o], shift[o]) + output_offset, act_min, act_max)
 *
 * Layouts (int8 unless noted): in [h][w][in.c], weights [out.c][in.c], bias int32 [out.c]
 * (NULL = zero), out [h][w][out.c] (out.h == in.h, out.w == in.w). `out` must not overlap `in`.
 * p->stride_h/stride_w must be 1 and p->pad_t/pad_l 0.
 *
 * Scratch: 4 * in.c bytes (4-byte aligned), all of it written by both paths, so that the painted
 * arena high water is the same on the host and the M7 (and so is the plan: one size for both).
 * The portable path widens two input pixels to int16 with the input offset already added, so
 * that each output channel is two plain int16 x int8 dot products over one weight row
 * (pwconv_dot2_s16_s8()). The DSP path (TMP_DSP, Cortex-M4/M7) widens two weight rows to int16
 * pairs in SXTB16 lane order (tmp_dsp.h), interleaved per group of 4 input channels, and computes
 * 2 pixels x 2 output channels per pass over the input channels with SMLAD, the input offset
 * folded into a per-channel constant (pwconv_dsp()).
 *
 * Preconditions not checked (guaranteed by the model format): |bias[o]| <= 2^31 - 1 - 32640*in.c,
 * so the int32 accumulator cannot overflow.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "../tmp_kernels.h"
#include "tmp_dsp.h"

int32_t tmp_pwconv_s8_get_buffer_size(const tmp_dims *in, const tmp_dims *out) {
    (void)out;
    if (in == NULL || in->c < 1 || in->c > INT32_MAX / (2 * (int32_t)sizeof(int16_t))) {
        return 0;
    }
    return 2 * in->c * (int32_t)sizeof(int16_t);
}

#if TMP_DSP
/* Rows w0 and w1 (n weights each) into buf (4 * n bytes, all written): per group of 4 weights
 * the words (w0: b0,b2), (w0: b1,b3), (w1: b0,b2), (w1: b1,b3) in SXTB16 lane order, so that the
 * inner loop reads all four with one post-incremented pointer, then the n & 3 tail weights as
 * int16 pairs (w0, w1); *s0, *s1 = the sums of the whole rows. */
static void pwconv_dsp_rows(int32_t *buf, const int8_t *w0, const int8_t *w1, int32_t n,
    int32_t *s0, int32_t *s1) {
    const int32_t ones = 0x00010001;
    int32_t a = 0, b = 0;
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const int32_t v0 = tmp_ld4(w0 + i);
        const int32_t v1 = tmp_ld4(w1 + i);
        const int32_t x02 = tmp_sxtb16(v0), x13 = tmp_sxtb16_ror8(v0);
        const int32_t y02 = tmp_sxtb16(v1), y13 = tmp_sxtb16_ror8(v1);
        buf[0] = x02;
        buf[1] = x13;
        buf[2] = y02;
        buf[3] = y13;
        buf += 4;
        a = tmp_smlad(x02, ones, a);
        a = tmp_smlad(x13, ones, a);
        b = tmp_smlad(y02, ones, b);
        b = tmp_smlad(y13, ones, b);
    }
    int16_t *t = (int16_t *)buf; /* the tail (n & 3 weights) as int16 pairs (w0, w1) */
    for (; i < n; i++, t += 2) {
        t[0] = w0[i];
        t[1] = w1[i];
        a += w0[i];
        b += w1[i];
    }
    *s0 = a;
    *s1 = b;
}

/* Output channels in pairs (outer loop), then pixels in pairs: 2 x 2 outputs per pass over the
 * input channels. Both rows of the pair are widened once into the scratch (4 words per 4 input
 * channels); each pixel's 4 input bytes are widened with SXTB16 and feed 4 SMLAD (18 instructions
 * per 16 MACs, loop control included, no register spilled on the M7 with GCC 12 -O2). The input offset is folded into a per-channel constant,
 * sum (x + off) w = sum x w + off * sum w (exact: partial sums wrap modulo 2^32 and the total
 * fits, as the format guarantees), so neither the offset nor the requantisation constants are
 * redone per pixel. */
static void pwconv_dsp(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *in_dims, const int8_t *in, const int8_t *weights, const int32_t *bias,
    const tmp_dims *out_dims, int8_t *out, int32_t *wbuf) {
    const int32_t ic = in_dims->c;
    const int32_t oc = out_dims->c;
    const int32_t npix = in_dims->h * in_dims->w;
    const int32_t ng = ic >> 2;
    const int32_t tail = ic & 3;
    const int32_t in_off = p->input_offset;
    const int32_t out_off = p->output_offset;
    const uint32_t lo4 = tmp_pack8x4(p->act_min);
    const uint32_t hi4 = tmp_pack8x4(p->act_max);
    for (int32_t o = 0; o < oc; o += 2) {
        /* an odd last channel is paired with itself and stored once */
        const int32_t o1 = o + 1 < oc ? o + 1 : o;
        const int8_t *w0 = weights + (size_t)o * (size_t)ic;
        const int8_t *w1 = weights + (size_t)o1 * (size_t)ic;
        int32_t sw0, sw1;
        pwconv_dsp_rows(wbuf, w0, w1, ic, &sw0, &sw1);
        const int32_t c0 = (int32_t)((uint32_t)(bias != NULL ? bias[o] : 0) +
            (uint32_t)in_off * (uint32_t)sw0);
        const int32_t c1 = (int32_t)((uint32_t)(bias != NULL ? bias[o1] : 0) +
            (uint32_t)in_off * (uint32_t)sw1);
        const int32_t m0 = q->multiplier[o], s0 = q->shift[o];
        const int32_t m1 = q->multiplier[o1], s1 = q->shift[o1];
        const int neg = s0 <= -1 && s1 <= -1;
        int32_t klo0 = 0, khi0 = 0, sh0 = 0, klo1 = 0, khi1 = 0, sh1 = 0;
        if (neg) {
            tmp_rq_prep_neg(s0, &klo0, &khi0, &sh0);
            tmp_rq_prep_neg(s1, &klo1, &khi1, &sh1);
        }
        const tmp_rq r0 = tmp_rq_prep(m0, s0);
        const tmp_rq r1 = tmp_rq_prep(m1, s1);
        const int16_t *wt = (const int16_t *)(wbuf + 4 * ng);
        for (int32_t n = 0; n < npix; n += 2) {
            /* an odd last pixel is paired with itself (same result twice, same place) */
            const int8_t *xa = in + (size_t)n * (size_t)ic;
            const int8_t *xb = n + 1 < npix ? xa + ic : xa;
            int8_t *dst_a = out + (size_t)n * (size_t)oc + (size_t)o;
            int8_t *dst_b = n + 1 < npix ? dst_a + oc : dst_a;
            int32_t a0 = c0, a1 = c1, b0 = c0, b1 = c1;
            const int32_t *wx = wbuf;
            for (int32_t g = ng; g > 0; g--) {
                int32_t u02, u13, v02, v13;
                wx = tmp_ld2w(wx, &u02, &u13);
                const int32_t va = tmp_ld4(xa);
                xa += 4;
                const int32_t xa02 = tmp_sxtb16(va);
                const int32_t xa13 = tmp_sxtb16_ror8(va);
                a0 = tmp_smlad(xa02, u02, a0);
                a0 = tmp_smlad(xa13, u13, a0);
                wx = tmp_ld2w(wx, &v02, &v13);
                a1 = tmp_smlad(xa02, v02, a1);
                a1 = tmp_smlad(xa13, v13, a1);
                const int32_t vb = tmp_ld4(xb);
                xb += 4;
                const int32_t xb02 = tmp_sxtb16(vb);
                const int32_t xb13 = tmp_sxtb16_ror8(vb);
                b0 = tmp_smlad(xb02, u02, b0);
                b0 = tmp_smlad(xb13, u13, b0);
                b1 = tmp_smlad(xb02, v02, b1);
                b1 = tmp_smlad(xb13, v13, b1);
            }
            for (int32_t t = 0; t < tail; t++) {
                a0 = tmp_smlabb(xa[t], wt[2 * t], a0);
                b0 = tmp_smlabb(xb[t], wt[2 * t], b0);
                a1 = tmp_smlabb(xa[t], wt[2 * t + 1], a1);
                b1 = tmp_smlabb(xb[t], wt[2 * t + 1], b1);
            }
            int32_t ta0, ta1, tb0, tb1;
            if (neg) { /* the usual case: one 64-bit step each */
                ta0 = tmp_rq_neg(a0, m0, klo0, khi0, sh0);
                tb0 = tmp_rq_neg(b0, m0, klo0, khi0, sh0);
                ta1 = tmp_rq_neg(a1, m1, klo1, khi1, sh1);
                tb1 = tmp_rq_neg(b1, m1, klo1, khi1, sh1);
            } else {
                ta0 = tmp_rq_apply(a0, r0);
                tb0 = tmp_rq_apply(b0, r0);
                ta1 = tmp_rq_apply(a1, r1);
                tb1 = tmp_rq_apply(b1, r1);
            }
            /* lanes: a[o], a[o1], b[o], b[o1] */
            const uint32_t v = tmp_clamp8x4(tmp_pack4(tmp_ssat8(tmp_qadd(ta0, out_off)),
                tmp_ssat8(tmp_qadd(ta1, out_off)), tmp_ssat8(tmp_qadd(tb0, out_off)),
                tmp_ssat8(tmp_qadd(tb1, out_off))), lo4, hi4);
            if (o1 != o) {
                const uint16_t va16 = (uint16_t)v;
                const uint16_t vb16 = (uint16_t)(v >> 16);
                memcpy(dst_a, &va16, 2);
                memcpy(dst_b, &vb16, 2);
            } else {
                dst_a[0] = (int8_t)v;
                dst_b[0] = (int8_t)(v >> 16);
            }
        }
    }
}
#else
/* *sa = sum a[i] * w[i], *sb = sum b[i] * w[i], i < n. */
static void pwconv_dot2_s16_s8(const int16_t *a, const int16_t *b, const int8_t *w, int32_t n,
    int32_t *sa, int32_t *sb) {
    int32_t x = 0, y = 0;
    int32_t i = 0;
    for (; i + 2 <= n; i += 2) {
        x += (int32_t)a[i] * w[i] + (int32_t)a[i + 1] * w[i + 1];
        y += (int32_t)b[i] * w[i] + (int32_t)b[i + 1] * w[i + 1];
    }
    for (; i < n; i++) {
        x += (int32_t)a[i] * w[i];
        y += (int32_t)b[i] * w[i];
    }
    *sa = x;
    *sb = y;
}
#endif

tmp_status tmp_pwconv_s8(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *in_dims, const int8_t *in,
    const int8_t *weights, const int32_t *bias,
    const tmp_dims *out_dims, int8_t *out, void *scratch) {
    if (p == NULL || q == NULL || q->multiplier == NULL || q->shift == NULL || in_dims == NULL ||
        in == NULL || weights == NULL || out_dims == NULL || out == NULL || scratch == NULL ||
        ((uintptr_t)scratch & 3u) != 0) {
        return TMP_ERR_ARG;
    }
    if (!tmp_dims_ok(in_dims) || !tmp_dims_ok(out_dims) ||
        out_dims->h != in_dims->h || out_dims->w != in_dims->w ||
        in_dims->c > INT32_MAX / (2 * (int32_t)sizeof(int16_t)) ||
        p->stride_h != 1 || p->stride_w != 1 || p->pad_t != 0 || p->pad_l != 0 ||
        p->input_offset < -127 || p->input_offset > 128 ||
        p->output_offset < -128 || p->output_offset > 127 ||
        p->act_min < -128 || p->act_max > 127 || p->act_min > p->act_max) {
        return TMP_ERR_ARG;
    }
    const int32_t ic = in_dims->c;
    const int32_t oc = out_dims->c;
    const int32_t *mult = q->multiplier;
    const int32_t *shift = q->shift;
    for (int32_t o = 0; o < oc; o++) {
        if (mult[o] < 0 || shift[o] < -31 || shift[o] > 30) {
            return TMP_ERR_ARG;
        }
    }

#if TMP_DSP
    (void)ic;
    pwconv_dsp(p, q, in_dims, in, weights, bias, out_dims, out, (int32_t *)scratch);
#else
    /* pixels in pairs (an odd last one paired with itself), both widened into the scratch */
    int16_t *pa = (int16_t *)scratch;
    int16_t *pb = pa + ic;
    const int32_t npix = in_dims->h * in_dims->w;
    for (int32_t n = 0; n < npix; n += 2) {
        const int8_t *xa = in + (size_t)n * (size_t)ic;
        const int8_t *xb = n + 1 < npix ? xa + ic : xa;
        int8_t *da = out + (size_t)n * (size_t)oc;
        int8_t *db = n + 1 < npix ? da + oc : da;
        for (int32_t i = 0; i < ic; i++) {
            pa[i] = (int16_t)(xa[i] + p->input_offset);
            pb[i] = (int16_t)(xb[i] + p->input_offset);
        }
        const int8_t *w = weights;
        for (int32_t o = 0; o < oc; o++) {
            int32_t acc_a, acc_b;
            pwconv_dot2_s16_s8(pa, pb, w, ic, &acc_a, &acc_b);
            if (bias != NULL) {
                acc_a += bias[o];
                acc_b += bias[o];
            }
            db[o] = tmp_clamp_out(tmp_requant(acc_b, mult[o], shift[o]), p->output_offset,
                p->act_min, p->act_max);
            da[o] = tmp_clamp_out(tmp_requant(acc_a, mult[o], shift[o]), p->output_offset,
                p->act_min, p->act_max);
            w += ic;
        }
    }
#endif
    return TMP_OK;
}
