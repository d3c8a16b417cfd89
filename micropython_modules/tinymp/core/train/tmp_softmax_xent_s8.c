/**
 * @file tmp_softmax_xent_s8.c
 * @brief Softmax cross-entropy of int8 logits, dequantised as z[i] = (q[i] - zero_point) * scale
 *        (docs/KERNELS.md, "Dequantised output"), then tmp_softmax_xent_f32 in place in dlogits.
 *
 * Layouts: logits [n] int8, dlogits [n] fp32. No scratch.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

tmp_status tmp_softmax_xent_s8(int32_t n, const int8_t *logits, int32_t zero_point, float scale,
    int32_t label, float *loss, float *dlogits) {
    if (logits == NULL || dlogits == NULL || n < 1 || label < 0 || label >= n ||
        zero_point < -128 || zero_point > 127) {
        return TMP_ERR_ARG;
    }
    for (int32_t i = 0; i < n; i++) {
        dlogits[i] = (float)((int32_t)logits[i] - zero_point) * scale;
    }
    return tmp_softmax_xent_f32(n, dlogits, label, loss, dlogits);
}
