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
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "../tmp_kernels.h"

/** TFLite's int8 add pre-shifts both inputs by this many bits. */
#define ADD_LEFT_SHIFT 20

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
    return TMP_OK;
}
