/**
 * @file tmp_sgd_s8_stochastic.c
 * @brief SGD step on int8 weights in LSB units with stochastic rounding (QAS storage,
 *        TRAINING.md section 2).
 *
 * With W = scale * Wq, the real update W <- W - lr * d is Wq <- Wq - lr * d / scale:
 *
 *     d    = g[i]                      (v == NULL)
 *          = v[i] = momentum*v[i] + g[i]  (v != NULL: momentum buffer, updated)
 *     Wq[i] <- clamp(Wq[i] + SR(-lr * d / scale), -127, 127)
 *
 * SR(t) = floor(t) + (u < t - floor(t)) with u = (xorshift32(state) >> 8) / 2^24, one draw per
 * element (also for a skipped element, so the stream depends on n only): E[SR(t)] = t within
 * 2^-24, so updates far below one LSB survive on average. Deterministic for a given *state
 * (non-zero, advanced in place). A non-finite step leaves the weight unchanged.
 *
 * Layouts: w [n] int8 (typically one output channel's weights: one scale), g [n], v [n] or NULL.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

tmp_status tmp_sgd_s8_stochastic(int32_t n, int8_t *w, const float *g, float lr, float scale,
    float momentum, float *v, uint32_t *state) {
    if (w == NULL || g == NULL || state == NULL || *state == 0u || n < 1 || !(scale > 0.0f)) {
        return TMP_ERR_ARG;
    }
    /* the generator's state in a local: w (int8) may alias it, which would force a store and a
     * reload per element */
    uint32_t st = *state;
    for (int32_t i = 0; i < n; i++) {
        float d = g[i];
        if (v != NULL) {
            v[i] = momentum * v[i] + d;
            d = v[i];
        }
        float t = -lr * d / scale;
        if (!isfinite(t)) {
            (void)tmp_tr_xorshift32(&st);
            continue;
        }
        if (t > 512.0f) {
            t = 512.0f;
        } else if (t < -512.0f) {
            t = -512.0f;
        }
        int32_t q = (int32_t)w[i] + tmp_tr_stochastic_round_small(t, &st);
        if (q > 127) {
            q = 127;
        } else if (q < -127) {
            q = -127;
        }
        w[i] = (int8_t)q;
    }
    *state = st;
    return TMP_OK;
}
