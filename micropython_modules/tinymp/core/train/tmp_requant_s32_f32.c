/**
 * @file tmp_requant_s32_f32.c
 * @brief Re-quantise fp32 master biases (real units) to int32 in units of s_x * wscale[o]:
 *
 *     b[o] = sat32(round(bias[o] / (s_x * wscale[o])))   (round half away from zero; NaN -> 0)
 *
 * Layouts: bias [n] fp32, wscale [n], b [n] int32. No scratch.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

tmp_status tmp_requant_s32_f32(int32_t n, const float *bias, float s_x, const float *wscale,
    int32_t *b) {
    if (bias == NULL || wscale == NULL || b == NULL || n < 1 || !(s_x > 0.0f)) {
        return TMP_ERR_ARG;
    }
    for (int32_t i = 0; i < n; i++) {
        const float t = bias[i] / (s_x * wscale[i]);
        b[i] = tmp_sat32(tmp_tr_round_clamp(t, -2147483648.0f, 2147483648.0f));
    }
    return TMP_OK;
}
