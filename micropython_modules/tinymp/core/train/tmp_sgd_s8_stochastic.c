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
 * SR(t) rounds t to floor(t) or floor(t) + 1, up with probability t - floor(t), in 2^-23 LSB
 * fixed point: t * 2^23 = d * k with k = (-lr / scale) * 2^23 (one float product per element, so
 * no division), rounded to an integer T; one 23-bit draw v = xorshift32(state) >> 9 per element
 * (also for a skipped element, so the stream depends on n only), and the weight moves by
 * floor((T + v) / 2^23) (tmp_tr_sgd_s8_one in tmp_train_internal.h, the exact rule). E[SR(t)] = t
 * within 2^-24, so updates far below one LSB survive on average. Deterministic for a given *state
 * (non-zero, advanced in place). A non-finite step moves nothing (the weight is only clamped to
 * [-127, 127] like every stepped weight). The M7 build runs each element as one asm block with
 * the same results.
 *
 * Layouts: w [n] int8 (typically one output channel's weights: one scale), g [n], v [n] or NULL.
 *
 * tmp_sgd_s8_stochastic_at: the same step without momentum on weights left where they are, so
 * the trainer need not gather a slice and scatter it back: element i is w[idx[i]] (idx != NULL)
 * or w[i * stride]. The same draws in the same order, so the same results as gathering the
 * elements into a row, calling tmp_sgd_s8_stochastic, and scattering them. It can also add the
 * squared gradients to the caller's sums on the way (APU importance, sq).
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
    const float k = tmp_tr_sgd_s8_factor(lr, scale);
    for (int32_t i = 0; i < n; i++) {
        float d = g[i];
        if (v != NULL) {
            v[i] = momentum * v[i] + d;
            d = v[i];
        }
        w[i] = (int8_t)tmp_tr_sgd_s8_one(w[i], d, k, &st);
    }
    *state = st;
    return TMP_OK;
}

tmp_status tmp_sgd_s8_stochastic_at(int32_t n, int8_t *w, const uint16_t *idx, int32_t stride,
    const float *g, float lr, float scale, float *sq, uint32_t *state) {
    if (w == NULL || g == NULL || state == NULL || *state == 0u || n < 1 || !(scale > 0.0f) ||
        (idx == NULL && stride < 1)) {
        return TMP_ERR_ARG;
    }
    uint32_t st = *state;
    const float k = tmp_tr_sgd_s8_factor(lr, scale);
    const float *const end = g + n; /* loops that end on a pointer: one compare per element */
    if (idx != NULL && sq != NULL) {
        for (; g < end; g++, idx++) {
            const uint32_t x = *idx;
            const float d = *g;
            sq[x] = tmp_tr_mla(sq[x], d, d);
            w[x] = (int8_t)tmp_tr_sgd_s8_one(w[x], d, k, &st);
        }
    } else if (idx != NULL) {
        for (; g < end; g++, idx++) {
            int8_t *p = w + *idx;
            *p = (int8_t)tmp_tr_sgd_s8_one(*p, *g, k, &st);
        }
    } else if (sq != NULL) {
        float a = *sq;
        int8_t *p = w;
        for (int32_t i = 0; i < n; i++) {
            a = tmp_tr_mla(a, g[i], g[i]);
            *p = (int8_t)tmp_tr_sgd_s8_one(*p, g[i], k, &st);
            p += stride;
        }
        *sq = a;
    } else {
        int8_t *p = w;
        for (int32_t i = 0; i < n; i++) {
            *p = (int8_t)tmp_tr_sgd_s8_one(*p, g[i], k, &st);
            p += stride;
        }
    }
    *state = st;
    return TMP_OK;
}
