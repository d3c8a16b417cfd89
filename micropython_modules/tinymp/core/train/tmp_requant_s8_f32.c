/**
 * @file tmp_requant_s8_f32.c
 * @brief Re-quantise an fp32 master row (real units) to the int8 copy the forward pass reads:
 *
 *     q[i] = clamp(round(w[i] / scale), -127, 127)   (round half away from zero; NaN -> 0)
 *
 * Layouts: w [n] fp32 (one output channel: one scale), q [n] int8. No scratch.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

tmp_status tmp_requant_s8_f32(int32_t n, const float *w, float scale, int8_t *q) {
    if (w == NULL || q == NULL || n < 1 || !(scale > 0.0f)) {
        return TMP_ERR_ARG;
    }
    for (int32_t i = 0; i < n; i++) {
        q[i] = (int8_t)tmp_tr_round_clamp(w[i] / scale, -127.0f, 127.0f);
    }
    return TMP_OK;
}
