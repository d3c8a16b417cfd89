/*
 * tinymp core: helpers shared by the training kernels (internal; not part of the API).
 * Static inline functions only: no data, no state.
 */
#ifndef TMP_TRAIN_INTERNAL_H
#define TMP_TRAIN_INTERNAL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "../tmp_common.h"
#include "tmp_train_kernels.h"

/** Largest GC patch size a uint8 count mask can hold (15*15 = 225 <= 255). */
#define TMP_TRAIN_MAX_COUNT_R 15

/** ceil(a / b) for a >= 0, b >= 1. */
static inline int32_t tmp_tr_ceil_div(int32_t a, int32_t b) {
    return (int32_t)(((int64_t)a + b - 1) / b);
}

/** h, w, c >= 1 and h*w*c fits in int32. */
static inline int tmp_tr_dims_ok(const tmp_dims *d) {
    return d != NULL && tmp_dims_ok(d);
}

/** Patch size usable on dims d: 1 <= r and the grid cell count fits. */
static inline int tmp_tr_r_ok(int32_t r) {
    return r >= 1 && r <= 0x7fff;
}

/** The conv-family backward params and geometry are consistent (kh x kw filter). */
static inline int tmp_tr_conv_geom_ok(const tmp_grad_conv_params *p, const tmp_dims *in,
    int32_t kh, int32_t kw, const tmp_dims *out) {
    return p != NULL && tmp_tr_r_ok(p->r) && tmp_tr_dims_ok(in) && tmp_tr_dims_ok(out) &&
        tmp_conv_axis_ok(in->h, out->h, kh, p->stride_h, p->pad_t) &&
        tmp_conv_axis_ok(in->w, out->w, kw, p->stride_w, p->pad_l) &&
        (int64_t)kh * kw <= INT32_MAX / 256;
}

/** Valid kernel index range [*lo, *hi) along one axis for a window starting at input index i0. */
static inline void tmp_tr_taps(int32_t i0, int32_t k, int32_t in, int32_t *lo, int32_t *hi) {
    *lo = i0 < 0 ? -i0 : 0;
    *hi = i0 + k > in ? in - i0 : k;
}

/** Range [*lo, *hi) of input-grid patches in the window of output patch index pi along one
 *  axis: [pi*stride, (pi+1)*stride) clipped to the grid of `cells` patches (maybe empty). */
static inline void tmp_tr_window_cells(int32_t pi, int32_t stride, int32_t cells, int32_t *lo,
    int32_t *hi) {
    int64_t a = (int64_t)pi * stride;
    int64_t b = a + stride;
    *lo = (int32_t)(a < cells ? a : cells);
    *hi = (int32_t)(b < cells ? b : cells);
}

/** Channel list valid for c channels: k in [1, c]; channels NULL means all (k == c);
 *  otherwise every index < c (distinctness is the caller's contract). */
static inline int tmp_tr_channels_ok(const uint16_t *channels, int32_t k, int32_t c) {
    if (k < 1 || k > c) {
        return 0;
    }
    if (channels == NULL) {
        return k == c;
    }
    for (int32_t j = 0; j < k; j++) {
        if ((int32_t)channels[j] >= c) {
            return 0;
        }
    }
    return 1;
}

/** xs[idx] as float, of element type t. */
static inline float tmp_tr_xs_at(tmp_xs_type t, const void *xs, size_t idx) {
    if (t == TMP_XS_S16) {
        return (float)((const int16_t *)xs)[idx];
    }
    return (float)((const int32_t *)xs)[idx];
}

/** One xorshift32 step (Marsaglia 13, 17, 5) on a non-zero state; returns the new state. */
static inline uint32_t tmp_tr_xorshift32(uint32_t *state) {
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return x;
}

/**
 * Stochastic rounding of a finite t, |t| < 2^31 assumed clamped by the caller: floor(t) + 1
 * with probability t - floor(t), one xorshift32 draw (24 bits).
 */
static inline int64_t tmp_tr_stochastic_round(float t, uint32_t *state) {
    const float fl = floorf(t);
    const float frac = t - fl; /* exact for |t| < 2^24; 0 beyond, where t is an integer */
    const uint32_t u = tmp_tr_xorshift32(state) >> 8; /* uniform in [0, 2^24) */
    return (int64_t)fl + (((float)u < frac * 16777216.0f) ? 1 : 0);
}

/** The same for |t| <= 2^23 (int8 weights: no 64-bit conversion on the FPU). */
static inline int32_t tmp_tr_stochastic_round_small(float t, uint32_t *state) {
    const float fl = floorf(t);
    const float frac = t - fl;
    const uint32_t u = tmp_tr_xorshift32(state) >> 8;
    return (int32_t)fl + (((float)u < frac * 16777216.0f) ? 1 : 0);
}

/** round half away from zero of a float, clamped to [lo, hi] (NaN -> 0). */
static inline int64_t tmp_tr_round_clamp(float t, float lo, float hi) {
    if (!(t == t)) {
        return 0;
    }
    if (t < lo) {
        t = lo;
    }
    if (t > hi) {
        t = hi;
    }
    return (int64_t)roundf(t);
}

#endif /* TMP_TRAIN_INTERNAL_H */
