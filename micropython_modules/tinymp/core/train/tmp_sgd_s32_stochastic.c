/**
 * @file tmp_sgd_s32_stochastic.c
 * @brief SGD step on int32 biases in units of s_x * wscale[o] with stochastic rounding
 *        (QAS storage, TRAINING.md section 2).
 *
 *     d    = g[o]  (or v[o] = momentum*v[o] + g[o] when v != NULL)
 *     b[o] <- sat32(b[o] + SR(-lr * d / (s_x * wscale[o])))
 *
 * SR as in tmp_sgd_s8_stochastic (one xorshift32 draw per element from *state, non-zero).
 * A non-finite step leaves the bias unchanged.
 *
 * Layouts: b [n] int32, g [n], wscale [n] (the scales of the same output channels), v [n] or NULL.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

tmp_status tmp_sgd_s32_stochastic(int32_t n, int32_t *b, const float *g, float lr, float s_x,
    const float *wscale, float momentum, float *v, uint32_t *state) {
    if (b == NULL || g == NULL || wscale == NULL || state == NULL || *state == 0u || n < 1 ||
        !(s_x > 0.0f)) {
        return TMP_ERR_ARG;
    }
    uint32_t st = *state; /* a local: b may alias it (see tmp_sgd_s8_stochastic) */
    for (int32_t i = 0; i < n; i++) {
        float d = g[i];
        if (v != NULL) {
            v[i] = momentum * v[i] + d;
            d = v[i];
        }
        float t = -lr * d / (s_x * wscale[i]);
        if (!isfinite(t)) {
            (void)tmp_tr_xorshift32(&st);
            continue;
        }
        /* |step| > 2^32 saturates anyway */
        if (t > 4294967296.0f) {
            t = 4294967296.0f;
        } else if (t < -4294967296.0f) {
            t = -4294967296.0f;
        }
        b[i] = tmp_sat32((int64_t)b[i] + tmp_tr_stochastic_round(t, &st));
    }
    *state = st;
    return TMP_OK;
}
