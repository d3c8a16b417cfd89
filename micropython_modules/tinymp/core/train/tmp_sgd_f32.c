/**
 * @file tmp_sgd_f32.c
 * @brief SGD step on an fp32 master copy (fp32 storage mode, TRAINING.md section 2):
 *
 *     d = g[i]  (or v[i] = momentum*v[i] + g[i] when v != NULL),   w[i] -= lr * d
 *
 * Layouts: w [n], g [n], v [n] or NULL, fp32. No scratch.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

tmp_status tmp_sgd_f32(int32_t n, float *w, const float *g, float lr, float momentum, float *v) {
    if (w == NULL || g == NULL || n < 1) {
        return TMP_ERR_ARG;
    }
    for (int32_t i = 0; i < n; i++) {
        float d = g[i];
        if (v != NULL) {
            v[i] = momentum * v[i] + d;
            d = v[i];
        }
        w[i] -= lr * d;
    }
    return TMP_OK;
}
