/**
 * @file tmp_fc_dw_f32.c
 * @brief Fully connected weight gradient of one output o (one row of dW = dy x^T):
 *
 *     dw[j] = dy_o * (in[channels[j]] + input_offset) * s_x,   j < k  (channels NULL: all)
 *
 * Layouts: in [n] int8 (the saved fc input), dw [k] fp32 (overwritten). No scratch.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

tmp_status tmp_fc_dw_f32(int32_t n, const int8_t *in, int32_t input_offset, float s_x,
    const uint16_t *channels, int32_t k, float dy_o, float *dw) {
    if (in == NULL || dw == NULL || n < 1 || input_offset < -127 || input_offset > 128 ||
        !tmp_tr_channels_ok(channels, k, n)) {
        return TMP_ERR_ARG;
    }
    const float g = dy_o * s_x;
    const float off = (float)input_offset;
    for (int32_t j = 0; j < k; j++) {
        const int32_t i = channels == NULL ? j : (int32_t)channels[j];
        dw[j] = g * ((float)in[i] + off);
    }
    return TMP_OK;
}
