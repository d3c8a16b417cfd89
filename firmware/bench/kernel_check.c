/*
 * kernel_check: the same seeded, randomised cases of every int8 forward kernel (and of the
 * training kernels with a Cortex-M path: the backward pass's clamp mask, the int8 weight
 * update's stochastic rounding, the pointwise input gradient and the conv / pointwise weight
 * gradient), built twice -
 * for the Cortex-M7 (the kernels' DSP path, run under QEMU) and for the host (the portable C
 * path) - printing one digest per kernel of every output byte and status. The two printouts must
 * be identical (tests/test_m7_kernels.py, `make kernel-check`).
 *
 * Cases cover odd and even channel counts, tails of 1-3 channels, odd pixel counts, strides,
 * paddings, kernel sizes, in-place depthwise, zero and extreme multipliers, shifts of both signs
 * (left shifts saturate), offsets and activation ranges at their limits, and biases at the
 * format's bound. Every call gets scratch of exactly get_buffer_size() bytes filled with junk;
 * guard bytes after the output and the scratch, and the input, are checked to be untouched.
 *
 * Portable C99 + stdio only: the same file compiles with the host compiler.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "tmp_kernels.h"
#include "train/tmp_train_kernels.h"

#define CASES_PER_KERNEL 300
#define GUARD 16
#define GUARD_BYTE 0xA5

static uint32_t g_rng;

static uint32_t rnd(void) {
    uint32_t x = g_rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    g_rng = x;
    return x;
}

/* uniform in [lo, hi] */
static int32_t rr(int32_t lo, int32_t hi) {
    return lo + (int32_t)(rnd() % (uint32_t)(hi - lo + 1));
}

static int chance(int percent) {
    return (int32_t)(rnd() % 100u) < percent;
}

static void fill(int8_t *p, int32_t n) {
    /* mostly uniform, sometimes all-extreme, so that saturations happen */
    const int mode = rr(0, 9);
    for (int32_t i = 0; i < n; i++) {
        int32_t v = (int32_t)(rnd() >> 24) - 128;
        if (mode == 0) {
            v = (rnd() & 1u) ? 127 : -128;
        } else if (mode == 1) {
            v = 127;
        } else if (mode == 2) {
            v = -128;
        }
        p[i] = (int8_t)v;
    }
}

/* ---- digest (FNV-1a, 32 bits) ---- */
static uint32_t g_hash;
static int g_errors;

static void hash_bytes(const void *p, size_t n) {
    const uint8_t *b = (const uint8_t *)p;
    for (size_t i = 0; i < n; i++) {
        g_hash = (g_hash ^ b[i]) * 16777619u;
    }
}

static void hash_i32(int32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    hash_bytes(b, 4);
}

/* floats by value, every NaN as one (x86 and Arm make different NaNs for inf - inf) */
static void hash_f32(const float *p, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        const float f = isnan(p[i]) ? NAN : p[i];
        hash_bytes(&f, sizeof f);
    }
}

/* ---- buffers ---- */
#define IN_MAX 65536
#define W_MAX 65536
#define OUT_MAX 65536
#define SCRATCH_MAX 65536
#define CH_MAX 2048

static int8_t g_in[IN_MAX + GUARD];
static int8_t g_in_copy[IN_MAX];
static int8_t g_in2[IN_MAX];
static int8_t g_w[W_MAX];
static int8_t g_out[OUT_MAX + GUARD];
static int32_t g_scratch[(SCRATCH_MAX + GUARD) / 4];
static int32_t g_bias[CH_MAX];
static int32_t g_mult[CH_MAX];
static int32_t g_shift[CH_MAX];

static void quant(int32_t n, int32_t reduction) {
    /* the model format bounds the bias so that the accumulator cannot overflow */
    const int64_t bmax64 = (int64_t)INT32_MAX - (int64_t)32640 * reduction;
    const int32_t bmax = bmax64 > 0 ? (int32_t)bmax64 : 0;
    const int mode = rr(0, 5);
    for (int32_t i = 0; i < n; i++) {
        int32_t m;
        int32_t s;
        switch (mode) {
        case 0: /* anything valid */
            m = (int32_t)(rnd() >> 1);
            s = rr(-31, 30);
            break;
        case 1: /* multipliers above 1: left shifts, saturation */
            m = (int32_t)(0x40000000u | (rnd() >> 2));
            s = rr(0, 12);
            break;
        case 2: /* extremes */
            m = chance(30) ? 0 : chance(50) ? INT32_MAX : 0x40000000;
            s = chance(50) ? -31 : chance(50) ? 30 : rr(-31, 30);
            break;
        default: /* realistic: M in [2^30, 2^31), m in 2^-12 .. 2^-4 */
            m = (int32_t)(0x40000000u | (rnd() >> 2));
            s = rr(-12, -4);
            break;
        }
        g_mult[i] = m;
        g_shift[i] = s;
        if (chance(10)) {
            g_bias[i] = chance(50) ? bmax : -bmax;
        } else {
            g_bias[i] = rr(-40000, 40000);
        }
    }
}

static void act_range(int32_t *lo, int32_t *hi) {
    if (chance(40)) {
        *lo = -128;
        *hi = 127;
    } else {
        int32_t a = rr(-128, 127);
        int32_t b = rr(-128, 127);
        *lo = a < b ? a : b;
        *hi = a < b ? b : a;
    }
}

static int32_t in_offset(void) {
    return chance(20) ? (chance(50) ? -127 : 128) : rr(-127, 128);
}

static int32_t out_offset(void) {
    return chance(20) ? (chance(50) ? -128 : 127) : rr(-128, 127);
}

static void prepare_call(int32_t out_len, int32_t scratch_len) {
    memset(g_out, 0x11, (size_t)out_len);
    memset(g_out + out_len, GUARD_BYTE, GUARD);
    uint8_t *s = (uint8_t *)g_scratch;
    for (int32_t i = 0; i < scratch_len; i++) {
        s[i] = (uint8_t)rnd();
    }
    memset(s + scratch_len, GUARD_BYTE, GUARD);
}

static void finish_call(const char *what, int case_no, tmp_status st, int32_t out_len,
    int32_t scratch_len, const int8_t *in, const int8_t *in_copy, int32_t in_len) {
    hash_i32((int32_t)st);
    hash_bytes(g_out, (size_t)out_len);
    const uint8_t *s = (const uint8_t *)g_scratch;
    for (int32_t i = 0; i < GUARD; i++) {
        if ((uint8_t)g_out[out_len + i] != GUARD_BYTE || s[scratch_len + i] != GUARD_BYTE) {
            printf("error: %s case %d wrote past its output or scratch\n", what, case_no);
            g_errors++;
            break;
        }
    }
    if (in != NULL && memcmp(in, in_copy, (size_t)in_len) != 0) {
        printf("error: %s case %d modified its input\n", what, case_no);
        g_errors++;
    }
}

/* one axis: in, k, stride -> pad and out with the format's constraints (conv_axis_ok) */
static void axis(int32_t in_max, int32_t k, int32_t stride, int32_t *in, int32_t *out, int32_t *pad) {
    for (;;) {
        const int32_t i = rr(1, in_max);
        const int32_t pt = rr(0, k - 1);
        const int32_t pb = rr(0, k - 1);
        if (i + pt + pb < k) {
            continue;
        }
        const int32_t o = (i + pt + pb - k) / stride + 1;
        if ((int64_t)(o - 1) * stride - pt > i - 1 || (int64_t)o * stride - pt + k - 1 < i) {
            continue;
        }
        *in = i;
        *out = o;
        *pad = pt;
        return;
    }
}

static const int32_t ksizes[] = {1, 2, 3, 3, 3, 5, 7};

/* depthwise: 1 for any shape, 2 for shapes aimed at the DSP path's 3x3 asm runs (3x3, every
 * shift <= -1, longer rows), with near misses (kw 5 or kh 5, one channel's shift >= 0) */
static void check_conv(int depthwise) {
    const char *what = depthwise == 2 ? "dwconv3" : depthwise ? "dwconv" : "conv";
    for (int n = 0; n < CASES_PER_KERNEL; n++) {
        tmp_conv_params p;
        tmp_filter_dims f;
        tmp_dims id, od;
        f.kh = ksizes[rr(0, 6)];
        f.kw = chance(70) ? f.kh : ksizes[rr(0, 6)];
        p.stride_h = rr(1, 3);
        p.stride_w = chance(70) ? p.stride_h : rr(1, 3);
        if (depthwise == 2) {
            f.kh = chance(90) ? 3 : 5;
            f.kw = chance(90) ? 3 : 5;
            p.stride_h = chance(20) ? 3 : rr(1, 2);
            p.stride_w = chance(80) ? p.stride_h : rr(1, 3);
        }
        const int big = depthwise == 2 ? chance(50) : chance(15);
        axis(big ? 24 : 12, f.kh, p.stride_h, &id.h, &od.h, &p.pad_t);
        axis(big ? 24 : 12, f.kw, p.stride_w, &id.w, &od.w, &p.pad_l);
        if (depthwise) {
            id.c = chance(50) ? rr(1, 12) : 4 * rr(1, 16) + (chance(30) ? rr(1, 3) : 0);
            od.c = id.c;
        } else {
            id.c = chance(30) ? rr(1, 4) : rr(1, 24);
            od.c = rr(1, 20);
        }
        p.input_offset = in_offset();
        p.output_offset = out_offset();
        act_range(&p.act_min, &p.act_max);
        const int32_t in_len = id.h * id.w * id.c;
        const int32_t out_len = od.h * od.w * od.c;
        const int32_t wlen = depthwise ? f.kh * f.kw * id.c : od.c * f.kh * f.kw * id.c;
        const int in_place = depthwise && od.h * od.w <= id.h * id.w && chance(depthwise == 2 ? 10 : 40);
        if (in_len > IN_MAX || out_len > OUT_MAX || wlen > W_MAX) {
            n--;
            continue;
        }
        fill(g_in, in_len);
        fill(g_w, wlen);
        quant(od.c, depthwise ? f.kh * f.kw : f.kh * f.kw * id.c);
        if (depthwise == 2) {
            for (int32_t c = 0; c < od.c; c++) {
                g_shift[c] = rr(-31, -1);
            }
            if (chance(15)) {
                g_shift[rr(0, od.c - 1)] = rr(0, 4);
            }
        }
        tmp_per_channel_quant q = {g_mult, g_shift};
        const int32_t *bias = chance(10) ? NULL : g_bias;
        tmp_status st;
        int32_t scratch_len;
        if (depthwise) {
            scratch_len = tmp_dwconv_s8_get_buffer_size(&p, &id, &f, &od, in_place);
            prepare_call(in_place ? in_len : out_len, scratch_len);
            if (in_place) {
                memcpy(g_out, g_in, (size_t)in_len);
                memset(g_out + in_len, GUARD_BYTE, GUARD);
                st = tmp_dwconv_s8(&p, &q, &id, g_out, &f, g_w, bias, &od, g_out,
                    scratch_len ? (void *)g_scratch : NULL);
            } else {
                memcpy(g_in_copy, g_in, (size_t)in_len);
                st = tmp_dwconv_s8(&p, &q, &id, g_in, &f, g_w, bias, &od, g_out,
                    scratch_len ? (void *)g_scratch : NULL);
            }
            /* in place, bytes past out_len of the input buffer are the input's: digest them too */
            finish_call(what, n, st, in_place ? in_len : out_len, scratch_len,
                in_place ? NULL : g_in, g_in_copy, in_len);
        } else {
            scratch_len = tmp_conv_s8_get_buffer_size(&id, &f, &od);
            prepare_call(out_len, scratch_len);
            memcpy(g_in_copy, g_in, (size_t)in_len);
            st = tmp_conv_s8(&p, &q, &id, g_in, &f, g_w, bias, &od, g_out, g_scratch);
            finish_call(what, n, st, out_len, scratch_len, g_in, g_in_copy, in_len);
        }
        if (st != TMP_OK) {
            printf("error: %s case %d returned %d\n", what, n, (int)st);
            g_errors++;
        }
    }
}

/* small: shapes aimed at the DSP path's small-input tiles (in.c 8, 16 or 24, even pixel and
 * output-channel counts, every shift <= -1), with near misses (other channel counts, odd
 * counts, one channel's shift >= 0) that must take the other paths */
static void check_pwconv_cases(int small) {
    for (int n = 0; n < CASES_PER_KERNEL; n++) {
        tmp_conv_params p = {0, 0, 1, 1, 0, 0, -128, 127};
        tmp_dims id, od;
        id.h = rr(1, 9);
        id.w = rr(1, 9);
        id.c = chance(50) ? rr(1, 12) : rr(1, 80);
        od.h = id.h;
        od.w = id.w;
        od.c = chance(30) ? rr(1, 5) : rr(1, 64);
        if (small) {
            static const int32_t ics[] = {8, 16, 24, 8, 16, 24, 4, 12, 20, 28};
            id.c = ics[rr(0, 9)];
            if (chance(85) && (id.h * id.w) % 2 != 0) {
                id.w = id.w < 9 ? id.w + 1 : id.w - 1;
                od.w = id.w;
            }
            od.c = 2 * rr(1, 40) - (chance(15) ? 1 : 0);
        }
        p.input_offset = in_offset();
        p.output_offset = out_offset();
        act_range(&p.act_min, &p.act_max);
        const int32_t in_len = id.h * id.w * id.c;
        const int32_t out_len = od.h * od.w * od.c;
        fill(g_in, in_len);
        fill(g_w, od.c * id.c);
        quant(od.c, id.c);
        if (small) {
            /* realistic requantisation (shifts -12 .. -4), all channels */
            for (int32_t i = 0; i < od.c; i++) {
                g_mult[i] = (int32_t)(0x40000000u | (rnd() >> 2));
                g_shift[i] = chance(20) ? -1 : rr(-12, -2);
            }
            if (chance(10)) {
                g_shift[rr(0, od.c - 1)] = rr(0, 2);
            }
        }
        tmp_per_channel_quant q = {g_mult, g_shift};
        const int32_t *bias = chance(10) ? NULL : g_bias;
        const int32_t scratch_len = tmp_pwconv_s8_get_buffer_size(&id, &od);
        prepare_call(out_len, scratch_len);
        memcpy(g_in_copy, g_in, (size_t)in_len);
        tmp_status st = tmp_pwconv_s8(&p, &q, &id, g_in, g_w, bias, &od, g_out, g_scratch);
        finish_call("pwconv", n, st, out_len, scratch_len, g_in, g_in_copy, in_len);
        if (st != TMP_OK) {
            printf("error: pwconv case %d returned %d\n", n, (int)st);
            g_errors++;
        }
    }
}

static void check_pwconv(void) {
    check_pwconv_cases(0);
}

static void check_pwconv_small(void) {
    check_pwconv_cases(1);
}

static void check_fc(void) {
    for (int n = 0; n < CASES_PER_KERNEL; n++) {
        tmp_fc_params p;
        const int32_t len = chance(50) ? rr(1, 40) : rr(1, 1300);
        const int32_t outs = chance(30) ? rr(1, 5) : rr(1, 40);
        if (len * outs + 3 > W_MAX) {
            n--;
            continue;
        }
        p.input_offset = in_offset();
        p.output_offset = out_offset();
        act_range(&p.act_min, &p.act_max);
        /* odd start addresses too: the input and weights need no alignment */
        int8_t *in = g_in + rr(0, 3);
        const int8_t *w = g_w + rr(0, 3);
        fill(in, len);
        fill(g_w, len * outs + 3);
        quant(outs, len);
        tmp_per_channel_quant q = {g_mult, g_shift};
        const int32_t *bias = chance(10) ? NULL : g_bias;
        prepare_call(outs, 0);
        memcpy(g_in_copy, in, (size_t)len);
        tmp_status st = tmp_fc_s8(&p, &q, len, in, w, bias, outs, g_out, NULL);
        finish_call("fc", n, st, outs, 0, in, g_in_copy, len);
        if (st != TMP_OK) {
            printf("error: fc case %d returned %d\n", n, (int)st);
            g_errors++;
        }
    }
}

static void check_add(void) {
    for (int n = 0; n < CASES_PER_KERNEL; n++) {
        tmp_add_params p;
        const int32_t count = chance(50) ? rr(1, 20) : rr(1, 3000);
        p.input0_offset = in_offset();
        p.input1_offset = in_offset();
        p.output_offset = out_offset();
        act_range(&p.act_min, &p.act_max);
        /* as the converter makes them (multipliers <= 1 for the inputs), or anything valid */
        if (chance(60)) {
            p.input0_mult = (int32_t)(0x40000000u | (rnd() >> 2));
            p.input0_shift = rr(-3, 0);
            p.input1_mult = (int32_t)(0x40000000u | (rnd() >> 2));
            p.input1_shift = rr(-3, 0);
            p.output_mult = (int32_t)(0x40000000u | (rnd() >> 2));
            p.output_shift = rr(-22, -14);
        } else {
            p.input0_mult = (int32_t)(rnd() >> 1);
            p.input0_shift = rr(-31, 30);
            p.input1_mult = (int32_t)(rnd() >> 1);
            p.input1_shift = rr(-31, 30);
            p.output_mult = (int32_t)(rnd() >> 1);
            p.output_shift = rr(-31, 30);
        }
        fill(g_in, count);
        fill(g_in2, count);
        const int alias = rr(0, 2); /* 0: separate output, 1: out == in0, 2: out == in1 */
        prepare_call(count, 0);
        tmp_status st;
        if (alias == 0) {
            st = tmp_add_s8(&p, count, g_in, g_in2, g_out, NULL);
        } else if (alias == 1) {
            memcpy(g_out, g_in, (size_t)count);
            st = tmp_add_s8(&p, count, g_out, g_in2, g_out, NULL);
        } else {
            memcpy(g_out, g_in2, (size_t)count);
            st = tmp_add_s8(&p, count, g_in, g_out, g_out, NULL);
        }
        finish_call("add", n, st, count, 0, NULL, NULL, 0);
        if (st != TMP_OK) {
            printf("error: add case %d returned %d\n", n, (int)st);
            g_errors++;
        }
    }
}

static void check_avgpool(void) {
    for (int n = 0; n < CASES_PER_KERNEL; n++) {
        tmp_avgpool_params p;
        tmp_dims id;
        if (chance(20)) { /* many pixels: long sums */
            id.h = rr(10, 40);
            id.w = rr(10, 40);
            id.c = rr(1, 24);
        } else {
            id.h = rr(1, 9);
            id.w = rr(1, 9);
            id.c = chance(50) ? rr(1, 12) : rr(1, 300);
        }
        p.input_offset = in_offset();
        p.output_offset = out_offset();
        act_range(&p.act_min, &p.act_max);
        p.mult = chance(70) ? (int32_t)(0x40000000u | (rnd() >> 2)) : (int32_t)(rnd() >> 1);
        p.shift = chance(70) ? rr(-12, 0) : rr(-31, 30);
        const int32_t in_len = id.h * id.w * id.c;
        fill(g_in, in_len);
        const int32_t scratch_len = tmp_avgpool_s8_get_buffer_size(&id);
        prepare_call(id.c, scratch_len);
        memcpy(g_in_copy, g_in, (size_t)in_len);
        tmp_status st = tmp_avgpool_s8(&p, &id, g_in, g_out, g_scratch);
        finish_call("avgpool", n, st, id.c, scratch_len, g_in, g_in_copy, in_len);
        if (st != TMP_OK) {
            printf("error: avgpool case %d returned %d\n", n, (int)st);
            g_errors++;
        }
    }
}

/* the clamp mask of the backward pass (core/train/tmp_mask_s8.c: its DSP path on the M7), bits
 * and per-patch counts, with limits inside, at and beyond the int8 range */
static void check_mask(void) {
    for (int n = 0; n < CASES_PER_KERNEL; n++) {
        tmp_dims d;
        d.h = rr(1, 12);
        d.w = rr(1, 12);
        d.c = chance(50) ? rr(1, 9) : rr(1, 70);
        const int32_t r = chance(40) ? rr(1, 2) : rr(1, 15); /* counts: r <= 15 */
        const tmp_mask_kind kind = chance(10) ? TMP_MASK_NONE : tmp_mask_kind_for(r);
        int32_t lo, hi;
        act_range(&lo, &hi);
        if (chance(10)) {
            lo = chance(50) ? -1000 : 127;
        }
        if (chance(10)) {
            hi = chance(50) ? 1000 : -128;
        }
        if (lo > hi) {
            hi = lo;
        }
        const int32_t in_len = d.h * d.w * d.c;
        const int32_t out_len = tmp_mask_s8_size(&d, r, kind);
        fill(g_in, in_len);
        prepare_call(out_len, 0);
        memcpy(g_in_copy, g_in, (size_t)in_len);
        const tmp_status st = tmp_mask_s8(&d, g_in, lo, hi, r, kind, (uint8_t *)g_out);
        finish_call("mask", n, st, out_len, 0, g_in, g_in_copy, in_len);
        if (st != TMP_OK) {
            printf("error: mask case %d returned %d\n", n, (int)st);
            g_errors++;
        }
    }
}

/* a float for the update's gradients: mostly ordinary, sometimes the values its rounding path
 * treats specially (NaN, infinities, huge, tiny, exact integers, steps around +-255 and +-256
 * LSB, where the clamp and the fixed point's int32 saturate, and at +-512) */
static float sgd_value(float lr, float scale) {
    const float unit = scale / lr; /* g = -unit * t gives a step of t LSB */
    switch (rr(0, 19)) {
        case 0:
            return NAN;
        case 1:
            return chance(50) ? INFINITY : -INFINITY;
        case 2:
            return (chance(50) ? 1.0f : -1.0f) * 3.0e38f;
        case 3:
            return (chance(50) ? 1e-30f : -1e-30f) * (float)rr(1, 1000);
        case 4:
            return -unit * (float)rr(-600, 600); /* a whole number of LSB */
        case 5:
            return -unit * (chance(50) ? 512.0f : -512.0f) * (chance(50) ? 1.0f : 1.0000001f);
        case 7:
            return -unit * (chance(50) ? 1.0f : -1.0f) * (254.0f + (float)rr(0, 16) * 0.125f);
        case 6:
            return -unit * ((float)rr(-1000, 1000) * 1e-6f); /* tiny steps, both signs */
        default: {
            const float m = (float)((int32_t)(rnd() >> 8) - (1 << 23)) / (float)(1 << 23);
            return -unit * m * (chance(70) ? 2.0f : 300.0f);
        }
    }
}

/* the int8 weight update (core/train/tmp_sgd_s8_stochastic.c: one asm block per weight on the
 * M7): every variant - a row with and without momentum, by index and by stride, with and without
 * the APU sums - on weights including -128 and 127; digests the weights, the generator's state
 * and the sums */
static void check_sgd(void) {
    float *g = (float *)(void *)g_scratch;
    float *v = g + 1024;
    float *sq = v + 1024; /* by index: one sum per weight position (the trainer's per channel) */
    uint16_t *idx = (uint16_t *)(void *)(sq + 6144);
    for (int n = 0; n < CASES_PER_KERNEL; n++) {
        const int32_t len = rr(1, 600);
        const float lr = chance(10) ? 1e-6f : (float)rr(1, 1000) * 1e-4f;
        const float scale = chance(10) ? 1e-7f : (float)rr(1, 1000) * 1e-5f;
        uint32_t state = rnd() | 1u;
        const int variant = rr(0, 5);
        const int32_t stride = rr(1, 9);
        fill(g_w, len * stride);
        for (int32_t i = 0; i < len; i++) {
            g[i] = sgd_value(lr, scale);
            v[i] = chance(90) ? sgd_value(lr, scale) * 0.5f : 0.0f;
            idx[i] = (uint16_t)(i * stride);
        }
        for (int32_t i = 0; i < len * stride; i++) {
            sq[i] = (float)rr(0, 100) * 0.25f;
        }
        for (int32_t i = len - 1; i > 0; i--) { /* a permutation: distinct indices */
            const int32_t j = rr(0, i);
            const uint16_t t = idx[i];
            idx[i] = idx[j];
            idx[j] = t;
        }
        tmp_status st;
        if (variant == 0) {
            st = tmp_sgd_s8_stochastic(len, g_w, g, lr, scale, 0.0f, NULL, &state);
        } else if (variant == 1) {
            st = tmp_sgd_s8_stochastic(len, g_w, g, lr, scale, 0.9f, v, &state);
        } else {
            const int by_index = variant & 1, sums = variant >= 4;
            st = tmp_sgd_s8_stochastic_at(len, g_w, by_index ? idx : NULL, stride, g, lr, scale,
                sums ? sq : NULL, &state);
        }
        hash_i32((int32_t)st);
        hash_i32((int32_t)state);
        hash_bytes(g_w, (size_t)(len * stride));
        hash_f32(sq, len * stride);
        hash_f32(v, len);
        if (st != TMP_OK) {
            printf("error: sgd case %d returned %d\n", n, (int)st);
            g_errors++;
        }
        const int32_t step = variant < 2 ? 1 : stride; /* the weights this call stepped */
        for (int32_t i = 0; i < len; i++) {
            if (g_w[i * step] == -128) { /* every stepped weight ends in [-127, 127] */
                printf("error: sgd case %d left -128 at %ld\n", n, (long)(i * step));
                g_errors++;
                break;
            }
        }
    }
}

/* the state whose xorshift32 step gives y: each of the three steps undone in turn */
static uint32_t xorshift32_undo(uint32_t y) {
    uint32_t x = y;
    for (int i = 0; i < 7; i++) { /* x ^= x << 5 */
        x = y ^ (x << 5);
    }
    y = x;
    for (int i = 0; i < 2; i++) { /* x ^= x >> 17 */
        x = y ^ (x >> 17);
    }
    y = x;
    for (int i = 0; i < 3; i++) { /* x ^= x << 13 */
        x = y ^ (x << 13);
    }
    return x;
}

/* the update's rounding decision at its edge (tmp_tr_sgd_s8_one): with lr = scale = 1 the step
 * in 2^-23 LSB is x = -g * 2^23, exact; x is a whole number or a tie (n + 1/2, rounded to even),
 * and the state is chosen so that the call's draw v (the next state >> 9) is one below, at or one
 * above the point where T + v reaches the next multiple of 2^23. Checked against the rule written
 * out here (floor((T + v) / 2^23), T = round half to even of x), not only by the digest. */
static void check_sgd_round(void) {
    for (int n = 0; n < CASES_PER_KERNEL * 4; n++) {
        /* x = half / 2 with |half| < 2^24: exact in a float, and so is x / 2^23 */
        const int32_t half = (int32_t)(rnd() % (1u << 25)) - (1 << 24);
        const float x = (float)half * 0.5f;
        int32_t big = half >> 1; /* floor(x) */
        if ((half & 1) && (big & 1)) {
            big++; /* a tie goes to the even neighbour */
        }
        const int32_t frac = big & ((1 << 23) - 1);
        const int32_t flip = (1 << 23) - frac; /* the smallest draw that rounds up */
        for (int d = -1; d <= 1; d++) {
            const int32_t v = flip + d;
            if (v < 0 || v >= (1 << 23)) {
                continue;
            }
            const uint32_t next = ((uint32_t)v << 9) | (rnd() & 511u) | 1u;
            const uint32_t state = xorshift32_undo(next);
            int8_t w = (int8_t)rr(-100, 100);
            /* floor((big + v) / 2^23) without shifting a negative value */
            const int32_t up = (int32_t)(((int64_t)big + v + (256LL << 23)) >> 23) - 256;
            int32_t want = w + up;
            want = want > 127 ? 127 : (want < -127 ? -127 : want);
            const float g = -x / 8388608.0f;
            uint32_t st = state;
            const tmp_status r = tmp_sgd_s8_stochastic(1, &w, &g, 1.0f, 1.0f, 0.0f, NULL, &st);
            hash_i32((int32_t)r);
            hash_i32((int32_t)w);
            if (r != TMP_OK || st != next || w != want) {
                printf("error: sgd_round case %d (x %ld/2, v %ld): %d, want %ld\n", n,
                    (long)half, (long)v, (int)w, (long)want);
                g_errors++;
            }
        }
    }
}

/* the pointwise input gradient (core/train/tmp_pwconv_dx_f32.c: asm tiles and rows on the M7),
 * fp32: every path (1-3 patches: rows, 4 or more: blocked, zero gradients with a dx that needs
 * them skipped: plain), channel counts around the blocks of 8 and 16 */
static void check_pwconv_dx(void) {
    float *wscale = (float *)(void *)g_scratch;
    float *gbar = wscale + 512;
    float *dx = gbar + 4096;
    for (int n = 0; n < CASES_PER_KERNEL; n++) {
        const int32_t r = rr(1, 4);
        tmp_dims d;
        d.h = rr(1, 8);
        d.w = rr(1, 8);
        d.c = chance(50) ? 16 * rr(1, 4) + rr(-1, 1) : rr(1, 70);
        tmp_dims o = d;
        o.c = chance(30) ? rr(1, 3) : rr(1, 60);
        const int32_t np = ((d.h + r - 1) / r) * ((d.w + r - 1) / r);
        fill(g_w, d.c * o.c);
        for (int32_t i = 0; i < o.c; i++) {
            wscale[i] = (float)rr(1, 1000) * 1e-4f;
        }
        const int zeros = chance(30);
        for (int32_t i = 0; i < np * o.c; i++) {
            gbar[i] = zeros && chance(30) ? 0.0f : (float)((int32_t)(rnd() >> 8) - (1 << 23)) * 1e-7f;
        }
        const int dx_kind = rr(0, 2); /* +0 (the trainer's usual), random, random with a -0 */
        for (int32_t i = 0; i < np * d.c; i++) {
            dx[i] = dx_kind == 0 ? 0.0f : (float)((int32_t)(rnd() >> 16) - 32768) * 1e-5f;
        }
        if (dx_kind == 2) {
            dx[rr(0, np * d.c - 1)] = -0.0f;
        }
        const tmp_status st = tmp_pwconv_dx_f32(r, &d, g_w, wscale, &o, gbar, dx);
        hash_i32((int32_t)st);
        hash_f32(dx, np * d.c);
        if (st != TMP_OK) {
            printf("error: pwconv_dx case %d returned %d\n", n, (int)st);
            g_errors++;
        }
    }
}

/* the conv / pointwise weight gradient (core/train/tmp_conv_dw_gc_f32.c: asm blocks of 16 and 8
 * channels on the M7), fp32, from window sums converted by tmp_gc_sums_f32 (int16 and int32):
 * k around the blocks, 1 to 20 patches, zero and -0 gradients, 1x1 and 3x3 taps, strides 1-2 */
static void check_conv_dw_gc(void) {
    float *gbar = (float *)(void *)g_scratch; /* [P][cout], P * cout <= 20 * 8 */
    float *xf = gbar + 256;                    /* [P][k], P * k <= 20 * 70 */
    float *dw = xf + 1536;                     /* [taps][k] */
    int32_t *xs = (int32_t *)(void *)(dw + 9 * 70);
    for (int n = 0; n < CASES_PER_KERNEL; n++) {
        const int32_t r = rr(1, 4);
        tmp_dims o;
        o.h = rr(1, 9);
        o.w = rr(1, 9);
        o.c = rr(1, 8);
        const int32_t np = ((o.h + r - 1) / r) * ((o.w + r - 1) / r);
        if (np > 20) {
            o.h = r; /* keep P * k within the buffers */
        }
        const int32_t P = ((o.h + r - 1) / r) * ((o.w + r - 1) / r);
        const int32_t kk = chance(50) ? 8 * rr(1, 8) + rr(-1, 1) : rr(1, 70); /* 1..70 */
        const int is16 = chance(50);
        for (int32_t i = 0; i < P * kk; i++) {
            const int32_t v = (int32_t)(rnd() % 8001u) - 4000;
            if (is16) {
                ((int16_t *)(void *)xs)[i] = (int16_t)v;
            } else {
                xs[i] = v * rr(1, 3);
            }
        }
        const int zeros = chance(30);
        for (int32_t i = 0; i < P * o.c; i++) {
            gbar[i] = zeros && chance(30) ? (chance(50) ? 0.0f : -0.0f)
                                          : (float)((int32_t)(rnd() >> 8) - (1 << 23)) * 1e-7f;
        }
        const int32_t taps = chance(70) ? 1 : 3;
        const tmp_grad_conv_params gp = {r, rr(1, 2), rr(1, 2), 0, 0};
        const tmp_filter_dims fd = {taps, taps};
        const float s_x = (float)rr(1, 1000) * 1e-4f;
        tmp_status st = tmp_gc_sums_f32(is16 ? TMP_XS_S16 : TMP_XS_S32, xs, P * kk, xf);
        hash_i32((int32_t)st);
        hash_f32(xf, P * kk);
        for (int32_t oc = 0; oc < o.c && st == TMP_OK; oc++) {
            st = tmp_conv_dw_gc_f32(&gp, &o, gbar, oc, xf, kk, s_x, &fd, dw);
            hash_i32((int32_t)st);
            hash_f32(dw, taps * taps * kk);
        }
        if (st != TMP_OK) {
            printf("error: conv_dw_gc case %d returned %d\n", n, (int)st);
            g_errors++;
        }
    }
}

typedef struct {
    const char *name;
    void (*run)(void);
} check;

static void run_conv(void) {
    check_conv(0);
}

static void run_dwconv(void) {
    check_conv(1);
}

static void run_dwconv3(void) {
    check_conv(2);
}

static const check checks[] = {
    {"conv", run_conv},
    {"dwconv", run_dwconv},
    {"pwconv", check_pwconv},
    {"pwconv_small", check_pwconv_small},
    {"fc", check_fc},
    {"add", check_add},
    {"avgpool", check_avgpool},
    {"mask", check_mask},
    {"sgd", check_sgd},
    {"pwconv_dx", check_pwconv_dx},
    {"conv_dw_gc", check_conv_dw_gc},
    {"dwconv3", run_dwconv3},
    {"sgd_round", check_sgd_round},
};

int main(void) {
    uint32_t all = 2166136261u;
    for (size_t k = 0; k < sizeof checks / sizeof checks[0]; k++) {
        g_rng = 0x9E3779B9u ^ (uint32_t)(k * 0x85EBCA6Bu);
        g_hash = 2166136261u;
        checks[k].run();
        printf("%-8s %d cases  digest %08lx\n", checks[k].name, CASES_PER_KERNEL,
            (unsigned long)g_hash);
        all = (all ^ g_hash) * 16777619u;
    }
    printf("all kernels: digest %08lx, %d errors\n", (unsigned long)all, g_errors);
    fflush(stdout);
    return g_errors != 0;
}
