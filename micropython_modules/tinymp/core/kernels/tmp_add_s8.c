/**
 * @file tmp_add_s8.c
 * @brief Element-wise int8 residual add (TFLite int8 add, input left shift 20).
 *
 * For every element k < count (docs/KERNELS.md, "Residual add"):
 *
 *     a = requant((in0[k] + input0_offset) * 2^20, input0_mult, input0_shift)
 *     b = requant((in1[k] + input1_offset) * 2^20, input1_mult, input1_shift)
 *     out[k] = clamp(sat32(requant(sat32(a + b), output_mult, output_shift) + output_offset),
 *                    act_min, act_max)
 *
 * Layouts: in0, in1, out are int8 [count] (any [h][w][c] tensor read in memory order, all three
 * of the same shape). `out` may be the same pointer as `in0` or `in1` (each element is read
 * before it is written); no other overlap is allowed.
 *
 * Scratch: none (get_buffer_size returns 0; `scratch` may be NULL).
 *
 * DSP path (TMP_DSP, Cortex-M4/M7): 4 elements per iteration (word loads, SXTAB16 for the
 * offsets, one word store), the three requantisations with their constants prepared once
 * (tmp_rq, tmp_dsp.h) - with every shift <= 0 (multipliers < 1, as the converter makes them)
 * the values stay below 2^30 and each is SMMULR plus 4 instructions (tmp_rq_small) - QADD for
 * the saturating sums, SIMD clamp.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "../tmp_kernels.h"
#include "tmp_dsp.h"

/** TFLite's int8 add pre-shifts both inputs by this many bits. */
#define ADD_LEFT_SHIFT 20

#if TMP_DSP
typedef struct {
    tmp_rq r0, r1, ro;
    int32_t out_off;
} add_dsp_ctx;

/* One element before the activation clamp, from x0 = (in0 + offset0) * 2^20 and x1 likewise.
 * small (compile-time): every shift <= 0, so |x0|, |x1| <= 255 * 2^20 and |a + b| < 2^29 stay
 * below 2^30 and tmp_rq_small applies (x passed doubled); else the general saturating path. */
__attribute__((always_inline)) static inline int32_t add_dsp_one(int32_t x0, int32_t x1,
    const add_dsp_ctx *c, const int small) {
    if (small) {
        const int32_t a = tmp_rq_small(x0 * 2, c->r0.mult, c->r0.half, c->r0.negb, c->r0.rsh);
        const int32_t b = tmp_rq_small(x1 * 2, c->r1.mult, c->r1.half, c->r1.negb, c->r1.rsh);
        const int32_t t = tmp_rq_small((a + b) * 2, c->ro.mult, c->ro.half, c->ro.negb, c->ro.rsh);
        return tmp_ssat8(tmp_qadd(t, c->out_off));
    }
    x0 = tmp_sat_shl(x0, c->r0.lsh > 0 ? c->r0.lsh : 0);
    x1 = tmp_sat_shl(x1, c->r1.lsh > 0 ? c->r1.lsh : 0);
    const int32_t a = tmp_rq_core(x0, c->r0.mult, c->r0.rsh, c->r0.mask);
    const int32_t b = tmp_rq_core(x1, c->r1.mult, c->r1.rsh, c->r1.mask);
    const int32_t s = tmp_sat_shl(tmp_qadd(a, b), c->ro.lsh > 0 ? c->ro.lsh : 0);
    return tmp_ssat8(tmp_qadd(tmp_rq_core(s, c->ro.mult, c->ro.rsh, c->ro.mask), c->out_off));
}

__attribute__((always_inline)) static inline void add_dsp_k(const tmp_add_params *p, int32_t count,
    const int8_t *in0, const int8_t *in1, int8_t *out, const int small) {
    add_dsp_ctx c;
    c.r0 = tmp_rq_prep(p->input0_mult, p->input0_shift);
    c.r1 = tmp_rq_prep(p->input1_mult, p->input1_shift);
    c.ro = tmp_rq_prep(p->output_mult, p->output_shift);
    c.out_off = p->output_offset;
    const int32_t off0 = tmp_pack16x2(p->input0_offset);
    const int32_t off1 = tmp_pack16x2(p->input1_offset);
    const uint32_t lo4 = tmp_pack8x4(p->act_min);
    const uint32_t hi4 = tmp_pack8x4(p->act_max);
    int32_t k = 0;
    for (; k + 4 <= count; k += 4) {
        /* (v + offset) pairs in int16 lanes; v * 2^20 of a lane: low lane << 20, high lane
         * (lane << 16) << 4 (|v + offset| <= 255, so no bit is lost) */
        const int32_t w0 = tmp_ld4(in0 + k);
        const int32_t w1 = tmp_ld4(in1 + k);
        const int32_t a02 = tmp_sxtab16(off0, w0);
        const int32_t a13 = tmp_sxtab16_ror8(off0, w0);
        const int32_t b02 = tmp_sxtab16(off1, w1);
        const int32_t b13 = tmp_sxtab16_ror8(off1, w1);
        const int32_t r0 = add_dsp_one((int32_t)((uint32_t)a02 << 20), (int32_t)((uint32_t)b02 << 20),
            &c, small);
        const int32_t r1 = add_dsp_one((int32_t)((uint32_t)a13 << 20), (int32_t)((uint32_t)b13 << 20),
            &c, small);
        const int32_t r2 = add_dsp_one((int32_t)(((uint32_t)a02 & 0xFFFF0000u) << 4),
            (int32_t)(((uint32_t)b02 & 0xFFFF0000u) << 4), &c, small);
        const int32_t r3 = add_dsp_one((int32_t)(((uint32_t)a13 & 0xFFFF0000u) << 4),
            (int32_t)(((uint32_t)b13 & 0xFFFF0000u) << 4), &c, small);
        tmp_st4(out + k, (int32_t)tmp_clamp8x4(tmp_pack4(r0, r1, r2, r3), lo4, hi4));
    }
    for (; k < count; k++) {
        const int32_t r = add_dsp_one((in0[k] + p->input0_offset) * (INT32_C(1) << ADD_LEFT_SHIFT),
            (in1[k] + p->input1_offset) * (INT32_C(1) << ADD_LEFT_SHIFT), &c, small);
        out[k] = (int8_t)tmp_clamp8x4((uint32_t)r & 0xFFu, lo4, hi4);
    }
}
#endif

int32_t tmp_add_s8_get_buffer_size(int32_t count) {
    (void)count;
    return 0;
}

static int add_quant_ok(int32_t mult, int32_t shift) {
    return mult >= 0 && shift >= -31 && shift <= 30;
}

tmp_status tmp_add_s8(const tmp_add_params *p, int32_t count,
    const int8_t *in0, const int8_t *in1, int8_t *out, void *scratch) {
    (void)scratch;
    if (p == NULL || in0 == NULL || in1 == NULL || out == NULL || count < 1 ||
        p->input0_offset < -127 || p->input0_offset > 128 ||
        p->input1_offset < -127 || p->input1_offset > 128 ||
        p->output_offset < -128 || p->output_offset > 127 ||
        p->act_min < -128 || p->act_max > 127 || p->act_min > p->act_max ||
        !add_quant_ok(p->input0_mult, p->input0_shift) ||
        !add_quant_ok(p->input1_mult, p->input1_shift) ||
        !add_quant_ok(p->output_mult, p->output_shift)) {
        return TMP_ERR_ARG;
    }
#if TMP_DSP
    /* out may alias in0 or in1: every element is read before it is written (same index) */
    if (p->input0_shift <= 0 && p->input1_shift <= 0 && p->output_shift <= 0) {
        add_dsp_k(p, count, in0, in1, out, 1);
    } else {
        add_dsp_k(p, count, in0, in1, out, 0);
    }
#else
    /* |x + offset| <= 255, so (x + offset) * 2^20 fits in int32. */
    const int32_t scale = INT32_C(1) << ADD_LEFT_SHIFT;
    for (int32_t k = 0; k < count; k++) {
        const int32_t x0 = ((int32_t)in0[k] + p->input0_offset) * scale;
        const int32_t x1 = ((int32_t)in1[k] + p->input1_offset) * scale;
        const int32_t a = tmp_requant(x0, p->input0_mult, p->input0_shift);
        const int32_t b = tmp_requant(x1, p->input1_mult, p->input1_shift);
        const int32_t s = tmp_sat32((int64_t)a + b);
        out[k] = tmp_clamp_out(tmp_requant(s, p->output_mult, p->output_shift), p->output_offset,
            p->act_min, p->act_max);
    }
#endif
    return TMP_OK;
}
