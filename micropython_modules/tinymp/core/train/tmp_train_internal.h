/*
 * tinymp core: helpers shared by the training kernels (internal; not part of the API).
 * Static inline functions only: no data, no state.
 */
#ifndef TMP_TRAIN_INTERNAL_H
#define TMP_TRAIN_INTERNAL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../kernels/tmp_dsp.h"
#include "../tmp_common.h"
#include "tmp_train_kernels.h"

/** Largest GC patch size a uint8 count mask can hold (15*15 = 225 <= 255). */
#define TMP_TRAIN_MAX_COUNT_R 15

/** ceil(a / b) for b >= 1 (the same value as (a + b - 1) / b in 64 bits, for every a), with
 *  32-bit divisions only: a 64-bit one is a library call of ~100 instructions on a Cortex-M. */
static inline int32_t tmp_tr_ceil_div(int32_t a, int32_t b) {
    return a > 0 ? (a - 1) / b + 1 : (a + b - 1) / b;
}

/**
 * acc + a * b, the product rounded before the addition (not fused), i.e. exactly the C
 * expression as the core compiles it (-std=c99: no contraction into an fma). With a
 * single-precision VFP/FPv4/FPv5 unit this is one VMLA.F32, which the architecture defines as
 * FPAdd(acc, FPMul(a, b)) with both roundings, so the result is bit-identical (GCC does not emit
 * VMLA by itself). -DTMP_NO_VMLA forces the C expression (to compare both on the M7).
 */
#if defined(__GNUC__) && defined(__ARM_FP) && (__ARM_FP & 4) && !defined(TMP_NO_VMLA)
#define TMP_TR_VMLA 1
static inline float tmp_tr_mla(float acc, float a, float b) {
    __asm__("vmla.f32 %0, %1, %2" : "+t"(acc) : "t"(a), "t"(b));
    return acc;
}
#else
#define TMP_TR_VMLA 0
static inline float tmp_tr_mla(float acc, float a, float b) {
    return acc + a * b;
}
#endif

/** Fully unroll the next loop (its bound is a compile-time constant after inlining): GCC's -O2
 *  does not, and an unrolled register tile is the point of the blocked kernels. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 8
#define TMP_TR_UNROLL _Pragma("GCC unroll 32")
#define TMP_TR_UNROLL4 _Pragma("GCC unroll 4") /* by 4, for a loop of any trip count */
#else
#define TMP_TR_UNROLL
#define TMP_TR_UNROLL4
#endif

/** (float)p[0] for a 4-byte aligned p (one VLDR of the pair p[0..1] and a VCVT.F32.S16 of its
 *  low half on the M7: two instructions instead of LDRSH, VMOV, VCVT). Exact either way. */
static inline float tmp_tr_s16_lo(const int16_t *p) {
#if TMP_TR_VMLA && defined(__GNUC__)
    float f;
    memcpy(&f, __builtin_assume_aligned(p, 4), sizeof f);
    __asm__("vcvt.f32.s16 %0, %0, #0" : "+t"(f));
    return f;
#else
    return (float)p[0];
#endif
}

/* One step of the row kernels below: d[0..7] += a[0..7] * b[0..7] (VMLA each), a and b
 * post-incremented by 8 floats, d by 8 after the store. */
#define TMP_TR_VMLA8_STEP                                                                         \
    "vldm     %[d], {s0-s7}\n\t"                                                                  \
    "vldmia   %[a]!, {s8-s15}\n\t"                                                                \
    "vldmia   %[b]!, {s16-s23}\n\t"                                                               \
    "vmla.f32 s0, s8, s16\n\t"                                                                    \
    "vmla.f32 s1, s9, s17\n\t"                                                                    \
    "vmla.f32 s2, s10, s18\n\t"                                                                   \
    "vmla.f32 s3, s11, s19\n\t"                                                                   \
    "vmla.f32 s4, s12, s20\n\t"                                                                   \
    "vmla.f32 s5, s13, s21\n\t"                                                                   \
    "vmla.f32 s6, s14, s22\n\t"                                                                   \
    "vmla.f32 s7, s15, s23\n\t"                                                                   \
    "vstmia   %[d]!, {s0-s7}\n\t"

#if TMP_TR_VMLA && defined(__GNUC__)
/* For r < rows: d[r*n + i] += a[i] * b[r*n + i] (VMLA), i < n, for n >= 8 a multiple of 8 and
 * rows >= 1: one asm block for all rows, two steps of 8 per loop iteration. */
static inline void tmp_tr_vmla8_asm(float *d, const float *a, const float *b, int32_t n, size_t rows) {
    float *dd = d;
    const float *aa, *bb = b;
    size_t left = rows;
    const float *e16 = a + (n & ~(int32_t)15), *e8 = a + n;
    __asm__ volatile(
        "0:\n\t"
        "mov      %[a], %[a0]\n\t"
        "cmp      %[a], %[e16]\n\t"
        "beq      2f\n\t"
        "1:\n\t"
        TMP_TR_VMLA8_STEP
        TMP_TR_VMLA8_STEP
        "cmp      %[a], %[e16]\n\t"
        "bne      1b\n\t"
        "2:\n\t"
        "cmp      %[a], %[e8]\n\t"
        "beq      3f\n\t"
        TMP_TR_VMLA8_STEP
        "3:\n\t"
        "subs     %[left], %[left], #1\n\t"
        "bne      0b"
        : [d] "+r"(dd), [b] "+r"(bb), [a] "=&r"(aa), [left] "+r"(left)
        : [a0] "r"(a), [e16] "r"(e16), [e8] "r"(e8)
        : "cc", "memory", "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11",
          "s12", "s13", "s14", "s15", "s16", "s17", "s18", "s19", "s20", "s21", "s22", "s23");
}
#endif

/**
 * d[i] = d[i] + a[i] * b[i] for i < n (each product and sum rounded: tmp_tr_mla). On the M7 the
 * whole multiples of 8 in the asm block (three VLDM, eight VMLA, one VSTM per 8 elements; d, a,
 * b 4-byte aligned, as float arrays are), the remainder and other targets in C.
 */
static inline void tmp_tr_vmla_rows(float *d, const float *a, const float *b, int32_t n) {
    int32_t i = 0;
#if TMP_TR_VMLA && defined(__GNUC__)
    if (n >= 8) {
        /* one row: the loop of tmp_tr_vmla8_asm without its per-row set-up (3 instructions a
         * call, which the many short rows of a strided dwconv_dx would feel) */
        float *dd = d;
        const float *aa = a, *bb = b;
        const float *e16 = a + (n & ~(int32_t)15), *e8 = a + (n & ~(int32_t)7);
        __asm__ volatile(
            "cmp      %[a], %[e16]\n\t"
            "beq      2f\n\t"
            "1:\n\t"
            TMP_TR_VMLA8_STEP
            TMP_TR_VMLA8_STEP
            "cmp      %[a], %[e16]\n\t"
            "bne      1b\n\t"
            "2:\n\t"
            "cmp      %[a], %[e8]\n\t"
            "beq      3f\n\t"
            TMP_TR_VMLA8_STEP
            "3:"
            : [d] "+r"(dd), [a] "+r"(aa), [b] "+r"(bb)
            : [e16] "r"(e16), [e8] "r"(e8)
            : "cc", "memory", "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10",
              "s11", "s12", "s13", "s14", "s15", "s16", "s17", "s18", "s19", "s20", "s21", "s22",
              "s23");
        i = n & ~(int32_t)7;
    }
#endif
    for (; i < n; i++) {
        d[i] = tmp_tr_mla(d[i], a[i], b[i]);
    }
}

/**
 * tmp_tr_vmla_rows(d + r*n, a, b + r*n, n) for r < rows: d and b are `rows` consecutive rows of
 * n floats, a one row reused (on the M7 with n a multiple of 8, one asm block for all rows).
 */
static inline void tmp_tr_vmla_rows_rep(float *d, const float *a, const float *b, int32_t n,
    size_t rows) {
#if TMP_TR_VMLA && defined(__GNUC__)
    if (rows > 0 && n >= 8 && (n & 7) == 0) {
        tmp_tr_vmla8_asm(d, a, b, n, rows);
        return;
    }
#endif
    for (size_t r = 0; r < rows; r++) {
        tmp_tr_vmla_rows(d + r * (size_t)n, a, b + r * (size_t)n, n);
    }
}

/** Bit pattern of a float. */
static inline uint32_t tmp_tr_fbits(float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return b;
}

/**
 * 1 when adding a product that is +-0 to the accumulator x might change its bits: x is -0
 * (-0 + +0 = +0), a subnormal (flushed when the FPU runs flush-to-zero) or a NaN (payload
 * rules); 0 for +0, normal numbers and infinities, for which x + (+-0) == x bit for bit. A
 * kernel that skips the terms of a zero gradient may instead add them (a product of a +-0 and a
 * finite value is +-0) when none of its accumulators is such an x: it starts with none, and a
 * sum x + y is -0 only when x and y are -0 (round to nearest), so it never creates one.
 */
static inline int tmp_tr_zero_add_unsafe(float x) {
    const uint32_t b = tmp_tr_fbits(x);
    return (b << 1) > 0xFF000000u || ((b & 0x7F800000u) == 0 && b != 0);
}

/** 1 when x is finite (not an infinity, not a NaN). */
static inline int tmp_tr_finite(float x) {
    return (tmp_tr_fbits(x) & 0x7F800000u) != 0x7F800000u;
}

/** Patch count P = ceil(h/r) * ceil(w/r) of the output dims d (validated: tmp_tr_dims_ok) for a
 *  valid r, when an xs tensor [P][k] of `type` is valid (k >= 1, type TMP_XS_S16 or TMP_XS_S32,
 *  size <= INT32_MAX: the conditions of tmp_gc_sums_size() >= 0); -1 otherwise. */
static inline int32_t tmp_tr_gc_patches(int32_t r, const tmp_dims *d, int32_t k, tmp_xs_type type) {
    if (k < 1 || (type != TMP_XS_S16 && type != TMP_XS_S32)) {
        return -1;
    }
    const int32_t np = tmp_tr_ceil_div(d->h, r) * tmp_tr_ceil_div(d->w, r); /* <= h * w */
    return (int64_t)np * k * (int64_t)type > INT32_MAX ? -1 : np;
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
    const float frac = t - fl; /* 0 for |t| >= 2^23 (t is an integer); a tiny negative t rounds */
    const uint32_t u = tmp_tr_xorshift32(state) >> 8; /* uniform in [0, 2^24) */
    /* through int32 when it fits: one FPU conversion instead of a library call (the M7 has no
     * float -> int64 instruction); the same value */
    const int64_t base = (fl >= -2147483648.0f && fl < 2147483648.0f) ? (int64_t)(int32_t)fl : (int64_t)fl;
    return base + (((float)u < frac * 16777216.0f) ? 1 : 0);
}

/** 2^23: the int8 update's fixed point (tmp_tr_sgd_s8_one). */
#define TMP_TR_SR_ONE 8388608.0f

/** The int8 update's step factor: k = (-lr / scale) * 2^23, once per row (one scale). */
static inline float tmp_tr_sgd_s8_factor(float lr, float scale) {
    return (-lr / scale) * TMP_TR_SR_ONE;
}

/**
 * One weight of tmp_sgd_s8_stochastic (TRAINING.md section 2) in 2^-23 LSB fixed point, with one
 * draw from *st and k = tmp_tr_sgd_s8_factor(lr, scale):
 *     T = d * k rounded to the nearest integer (ties to even), saturated to int32; 0 when d * k
 *         is not finite (NaN or infinite)
 *     v = xorshift32(*st) >> 9                      (uniform in [0, 2^23))
 *     w <- clamp(w + floor(sat32(T + v) / 2^23), -127, 127)
 * so the weight moves by floor(t) + 1 with probability frac(t) for the step t = T / 2^23 (within
 * 2^-24 of -lr * d / scale): unbiased, and steps far below one LSB survive on average. A
 * non-finite step moves nothing (the draw is still made; w is only clamped, like every stepped
 * weight): every stepped weight ends in [-127, 127].
 *
 * The saturations cannot change a result: T is exact while |t| < 256, and from |t| >= 255 on the
 * clamped weight is +-127 whatever w in [-128, 127] and the draw are. The Cortex-M path
 * (TMP_DSP_FP) is one asm block of 14 instructions (x + (x - x) is x, or NaN for a non-finite
 * x, which VCVTR turns into 0; QADD; SSAT with -128 moved to -127) that
 * gives the same result for every input; kernel-check's sgd and sgd_round batches compare the two
 * on the M7. It assumes the FPU's default round-to-nearest mode, as all of the core's float code
 * does.
 */
static inline int32_t tmp_tr_sgd_s8_one(int32_t w, float d, float k, uint32_t *st) {
    float x = d * k;
#if TMP_DSP_FP
    int32_t q;
    uint32_t s = *st, v;
    float z;
    __asm__(
        "vsub.f32 %[z], %[x], %[x]\n\t"         /* 0, or NaN for a non-finite x */
        "vadd.f32 %[x], %[x], %[z]\n\t"
        "vcvtr.s32.f32 %[x], %[x]\n\t"          /* T, saturated, NaN -> 0 */
        "eor %[s], %[s], %[s], lsl #13\n\t"     /* xorshift32 */
        "eor %[s], %[s], %[s], lsr #17\n\t"
        "eor %[s], %[s], %[s], lsl #5\n\t"
        "vmov %[q], %[x]\n\t"
        "lsr %[v], %[s], #9\n\t"
        "qadd %[q], %[q], %[v]\n\t"             /* sat32(T + v) */
        "add %[q], %[w], %[q], asr #23\n\t"
        "ssat %[q], #8, %[q]\n\t"
        "cmn %[q], #128\n\t"
        "it eq\n\t"
        "mvneq %[q], #126\n\t"
        : [q] "=&r"(q), [s] "+r"(s), [v] "=&r"(v), [x] "+t"(x), [z] "=&t"(z)
        : [w] "r"(w)
        : "cc");
    *st = s;
    return q;
#else
    const uint32_t v = tmp_tr_xorshift32(st) >> 9;
    int64_t T;
    if (!(x - x == 0.0f)) {
        T = 0; /* NaN or infinite */
    } else if (x >= 2147483648.0f) {
        T = INT32_MAX;
    } else if (x > -2147483648.0f) {
        /* the nearest integer, ties to even: the float addition of 2^23 rounds there (below
         * 2^23 in magnitude; above, x is a whole number already); no libm call */
        const float r = x >= 8388608.0f || x <= -8388608.0f ? x
            : (x >= 0.0f ? (x + 8388608.0f) - 8388608.0f : (x - 8388608.0f) + 8388608.0f);
        T = (int64_t)r;
    } else {
        T = INT32_MIN;
    }
    T += v; /* no int32 saturation in 64 bits: it changes nothing once |t| >= 255 clamps */
    /* floor(T / 2^23) without shifting a negative value */
    const int32_t fl = (int32_t)((T + 256 * 8388608LL) / 8388608LL) - 256;
    const int32_t q = w + fl;
    return q > 127 ? 127 : (q < -127 ? -127 : q);
#endif
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
    const float r = roundf(t);
    return (r >= -2147483648.0f && r < 2147483648.0f) ? (int64_t)(int32_t)r : (int64_t)r;
}

#endif /* TMP_TRAIN_INTERNAL_H */
