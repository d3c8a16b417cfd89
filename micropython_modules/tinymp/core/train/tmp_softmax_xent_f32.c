/**
 * @file tmp_softmax_xent_f32.c
 * @brief Softmax cross-entropy of float logits, numerically stable.
 *
 *     m = max_i z[i],  s = sum_i exp(z[i] - m)
 *     loss = (m - z[label]) + log(s)   (= logsumexp(z) - z[label], without rounding m + log(s))
 *     dlogits[i] = exp(z[i] - m) / s                   (i != label)
 *     dlogits[label] = -(sum of the others)            (= softmax - 1, without cancellation
 *                                                        when the label's probability is ~1)
 *
 * dlogits may be the same pointer as logits (in place); loss may be NULL. No scratch.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

tmp_status tmp_softmax_xent_f32(int32_t n, const float *logits, int32_t label, float *loss,
    float *dlogits) {
    if (logits == NULL || dlogits == NULL || n < 1 || label < 0 || label >= n) {
        return TMP_ERR_ARG;
    }
    float m = logits[0];
    for (int32_t i = 1; i < n; i++) {
        if (logits[i] > m) {
            m = logits[i];
        }
    }
    float s = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        s += expf(logits[i] - m);
    }
    if (loss != NULL) {
        *loss = (m - logits[label]) + logf(s);
    }
    const float inv_s = 1.0f / s;
    float others = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        dlogits[i] = expf(logits[i] - m) * inv_s;
        if (i != label) {
            others += dlogits[i];
        }
    }
    dlogits[label] = -others;
    return TMP_OK;
}
