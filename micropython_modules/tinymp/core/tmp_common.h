/*
 * tinymp core: shared types, status codes and the integer requantisation helpers.
 *
 * The core is portable C99 with no allocation and no mutable global state. It includes only
 * <stdint.h>, <stddef.h>, <string.h> and <math.h>. Every buffer is passed in by the caller.
 */
#ifndef TMP_COMMON_H
#define TMP_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Status codes returned by every core function. */
typedef enum {
    TMP_OK = 0,
    TMP_ERR_ARG = -1,    /**< invalid argument (NULL pointer, bad dims, unsupported params) */
    TMP_ERR_FORMAT = -2, /**< malformed model data */
    TMP_ERR_SIZE = -3,   /**< a caller buffer is too small */
    TMP_ERR_BUSY = -4,   /**< a trainer called from inside its own fit, step or probe (a callback) */
} tmp_status;

/** A short English description of a status ("invalid argument", ...), for error messages. */
static inline const char *tmp_status_name(tmp_status st) {
    switch (st) {
        case TMP_OK:
            return "ok";
        case TMP_ERR_ARG:
            return "invalid argument";
        case TMP_ERR_FORMAT:
            return "malformed model data";
        case TMP_ERR_SIZE:
            return "buffer too small";
        case TMP_ERR_BUSY:
            return "trainer busy";
    }
    return "unknown status";
}

/** Activation tensor dimensions, layout [H][W][C] (channels fastest), batch 1. */
typedef struct {
    int32_t h;
    int32_t w;
    int32_t c;
} tmp_dims;

/** Kernel height/width of a convolution filter. */
typedef struct {
    int32_t kh;
    int32_t kw;
} tmp_filter_dims;

/** Parameters of conv / dwconv / pwconv. pwconv requires stride 1 and no padding. */
typedef struct {
    int32_t input_offset;  /**< -(input zero point), in [-127, 128] */
    int32_t output_offset; /**< output zero point, in [-128, 127] */
    int32_t stride_h;
    int32_t stride_w;
    int32_t pad_t; /**< zero-point padding rows above the input */
    int32_t pad_l; /**< zero-point padding columns left of the input */
    int32_t act_min; /**< clamp of the int8 output, in [-128, 127] */
    int32_t act_max;
} tmp_conv_params;

/** Per-output-channel requantisation: out = requant(acc, multiplier[o], shift[o]). */
typedef struct {
    const int32_t *multiplier;
    const int32_t *shift;
} tmp_per_channel_quant;

/** Parameters of the fully connected kernel. */
typedef struct {
    int32_t input_offset;
    int32_t output_offset;
    int32_t act_min;
    int32_t act_max;
} tmp_fc_params;

/** Parameters of the residual add (TFLite int8 semantics, left shift 20). */
typedef struct {
    int32_t input0_offset; /**< -(zero point of input 0) */
    int32_t input1_offset; /**< -(zero point of input 1) */
    int32_t input0_mult;
    int32_t input0_shift;
    int32_t input1_mult;
    int32_t input1_shift;
    int32_t output_mult;
    int32_t output_shift;
    int32_t output_offset;
    int32_t act_min;
    int32_t act_max;
} tmp_add_params;

/** Parameters of the global average pool (a requantised per-channel sum). */
typedef struct {
    int32_t input_offset;
    int32_t output_offset;
    int32_t mult; /**< encodes s_in / (s_out * H * W) */
    int32_t shift;
    int32_t act_min;
    int32_t act_max;
} tmp_avgpool_params;

/* ---- argument checks shared by the kernels (forward and backward) ---- */

/** One spatial axis of a k-tap window: exactly the shapes out = (in + pad + pad_end - k) / stride
 * + 1 (floor) for some 0 <= pad, pad_end < k, as docs/FORMAT.md allows: the last window starts
 * inside the input, and one more window would need padding at the end. */
static inline int tmp_conv_axis_ok(int32_t in, int32_t out, int32_t k, int32_t stride, int32_t pad) {
    if (in < 1 || out < 1 || k < 1 || stride < 1 || pad < 0 || pad >= k ||
        (int64_t)in + k > INT32_MAX || (int64_t)out * stride > INT32_MAX) {
        return 0;
    }
    if ((int64_t)(out - 1) * stride - pad > (int64_t)in - 1) {
        return 0;
    }
    if ((int64_t)out * stride - pad + k - 1 < (int64_t)in) {
        return 0;
    }
    return 1;
}

/** Dimensions are positive and their product fits int32. */
static inline int tmp_dims_ok(const tmp_dims *d) {
    return d->h >= 1 && d->w >= 1 && d->c >= 1 && (int64_t)d->h * d->w * d->c <= INT32_MAX;
}

/** Every per-channel multiplier is non-negative and every shift in [-31, 30]. */
static inline int tmp_quant_ok(const tmp_per_channel_quant *q, int32_t n) {
    for (int32_t o = 0; o < n; o++) {
        if (q->multiplier[o] < 0 || q->shift[o] < -31 || q->shift[o] > 30) {
            return 0;
        }
    }
    return 1;
}

/* ---- requantisation (docs/KERNELS.md), shared by all kernels ---- */

static inline int32_t tmp_sat32(int64_t v) {
    if (v > INT32_MAX) {
        return INT32_MAX;
    }
    if (v < INT32_MIN) {
        return INT32_MIN;
    }
    return (int32_t)v;
}

/** Saturating rounding doubling high multiply (gemmlowp). */
static inline int32_t tmp_srdhm(int32_t a, int32_t b) {
    if (a == INT32_MIN && b == INT32_MIN) {
        return INT32_MAX;
    }
    int64_t p = (int64_t)a * (int64_t)b;
    int64_t nudge = p >= 0 ? (INT64_C(1) << 30) : (INT64_C(1) - (INT64_C(1) << 30));
    return (int32_t)((p + nudge) / (INT64_C(1) << 31));
}

/** Rounding divide by 2^e, 0 < e <= 31, round half away from zero. */
static inline int32_t tmp_rdpot(int32_t x, int32_t e) {
    const int32_t mask = (int32_t)((UINT32_C(1) << e) - 1u);
    const int32_t rem = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> e) + (rem > threshold ? 1 : 0);
}

/** requant(x, M, s) of docs/KERNELS.md: x * M * 2^(s-31), rounded. M >= 0, -31 <= s <= 30. */
static inline int32_t tmp_requant(int32_t x, int32_t mult, int32_t shift) {
    if (shift > 0) {
        x = tmp_sat32((int64_t)x * (INT64_C(1) << shift));
    }
    int32_t t = tmp_srdhm(x, mult);
    if (shift < 0) {
        t = tmp_rdpot(t, -shift);
    }
    return t;
}

/** Final step of every kernel: add the output zero point and clamp to the activation range. */
static inline int8_t tmp_clamp_out(int32_t v, int32_t offset, int32_t act_min, int32_t act_max) {
    int32_t r = tmp_sat32((int64_t)v + offset);
    if (r < act_min) {
        r = act_min;
    }
    if (r > act_max) {
        r = act_max;
    }
    return (int8_t)r;
}

#ifdef __cplusplus
}
#endif

#endif /* TMP_COMMON_H */
