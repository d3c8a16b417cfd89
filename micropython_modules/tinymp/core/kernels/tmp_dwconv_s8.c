/**
 * @file tmp_dwconv_s8.c
 * @brief Depthwise int8 convolution, channel multiplier 1, kh x kw, any stride and padding,
 *        optionally in place (TFLite int8 semantics).
 *
 * For every output pixel (y, x) and channel c (docs/KERNELS.md, "Convolution", dwconv):
 *
 *     iy = y*stride_h - pad_t + u,  ix = x*stride_w - pad_l + v
 *     acc = bias[c] + sum over u < kh, v < kw with (iy, ix) inside the input of
 *           (in[iy][ix][c] + input_offset) * w[u][v][c]
 *     out[y][x][c] = clamp(requant(acc, mult[c], shift[c]) + output_offset, act_min, act_max)
 *
 * Positions outside the input contribute nothing (the same as padding with the input zero point).
 *
 * Layouts (int8 unless noted): in [in.h][in.w][c], weights [kh][kw][c], bias int32 [c]
 * (NULL = zero), out [out.h][out.w][c] with out.c == in.c.
 *
 * Two modes, chosen by the pointers:
 *  - out != in (no overlap allowed): no scratch. Each output pixel is computed for blocks of
 *    DW_BLOCK channels at once with int32 accumulators on the stack, reading input and weights
 *    channel-contiguously (dwconv_mac_block(), the place where an optimised inner loop goes).
 *  - out == in (in place): when no output pixel's window reaches back to an input pixel that an
 *    earlier output pixel overwrites (stride 2 with the usual padding, or no padding:
 *    dw_direct_ok()), the out-of-place code runs on the buffer itself, without scratch
 *    (tmp_dwconv_s8_get_buffer_size() is 0). Otherwise scratch of in.h * in.w bytes (any
 *    alignment): for each channel c, the channel's input plane is first gathered into the
 *    scratch, then output channel c is computed from it. Output channel c is written only to bytes whose index is c modulo the channel
 *    count, i.e. to channel-c input slots already copied, so no input still needed is ever
 *    overwritten, for any stride and padding.
 *
 * DSP path (TMP_DSP, Cortex-M4/M7): out of place, channels in groups of 4 over the whole output
 * plane (requantisation constants hoisted once per group, weights widened once per group up to
 * 5x5 and tap by tap beyond, one word of input per tap with SXTAB16 adding the offset, 3x3
 * windows inside the input in asm, one word store of 4 outputs), the in.c % 4 remaining channels
 * by the portable code; in place with the plane (kh*kw <= 25), the same plane-by-plane algorithm
 * as below with 3x3 rows as one word load + SMLAD + SMLABB. Same scratch, same write order,
 * same results.
 *
 * Preconditions not checked (guaranteed by the model format): |bias[c]| <= 2^31 - 1 - 32640*L
 * with L = kh*kw, so the int32 accumulator cannot overflow.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "../tmp_kernels.h"
#include "tmp_dsp.h"

/** Channels accumulated together per output pixel in the out-of-place path (stack: 4*DW_BLOCK). */
#define DW_BLOCK 32

static int dw_direct_ok(const tmp_conv_params *p, const tmp_dims *id, const tmp_dims *od);

int32_t tmp_dwconv_s8_get_buffer_size(const tmp_conv_params *p, const tmp_dims *in,
    const tmp_filter_dims *f, const tmp_dims *out, int in_place) {
    (void)f;
    if (!in_place || in == NULL || in->h < 1 || in->w < 1 || (int64_t)in->h * in->w > INT32_MAX) {
        return 0;
    }
    if (p != NULL && out != NULL && dw_direct_ok(p, in, out)) {
        return 0; /* in place without the plane */
    }
    return in->h * in->w;
}

/* acc[j] += (src[j] + in_off) * w[j], j < n. Swap point for an optimised (SIMD) inner loop. */
static void dwconv_mac_block(int32_t *acc, const int8_t *src, const int8_t *w, int32_t n,
    int32_t in_off) {
    for (int32_t j = 0; j < n; j++) {
        acc[j] += ((int32_t)src[j] + in_off) * w[j];
    }
}

/* Valid kernel index range [*lo, *hi) along one axis for a window starting at input index i0. */
static void dwconv_window(int32_t i0, int32_t k, int32_t in, int32_t *lo, int32_t *hi) {
    *lo = i0 < 0 ? -i0 : 0;
    *hi = i0 + k > in ? in - i0 : k;
}

/* Whether out == in can run as out != in, without the plane. Output pixel n = y * out.w + x is
 * stored over input pixel n (the same bytes, the same channels). The out-of-place paths visit a
 * channel's output pixels in increasing n and read a whole window before storing its output, so
 * they are exact in place when no window reads an input pixel below its own n: for every (y, x),
 * the window's first pixel inside the input, flat index max(iy0, 0) * in.w + max(ix0, 0), is
 * >= n. Holds for stride 2 with a leading padding of 0 or 1 (the zoo's MobileNetV2 pads its
 * strided layers 0 before, 1 after) and for no padding; fails for stride 1 with padding. */
TMP_NOINLINE static int dw_direct_ok(const tmp_conv_params *p, const tmp_dims *id, const tmp_dims *od) {
    int64_t gx = INT64_MAX; /* min over x of max(ix0, 0) - x */
    for (int32_t x = 0; x < od->w; x++) {
        const int64_t ix0 = (int64_t)x * p->stride_w - p->pad_l;
        const int64_t g = (ix0 > 0 ? ix0 : 0) - x;
        gx = g < gx ? g : gx;
    }
    for (int32_t y = 0; y < od->h; y++) {
        const int64_t iy0 = (int64_t)y * p->stride_h - p->pad_t;
        if ((iy0 > 0 ? iy0 : 0) * id->w + gx < (int64_t)y * od->w) {
            return 0;
        }
    }
    return 1;
}

/* out != in: pixel by pixel, DW_BLOCK channels at a time, channels c_begin .. ch-1. */
TMP_NOINLINE static void dwconv_out_of_place(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *id, const int8_t *in, const tmp_filter_dims *f, const int8_t *weights,
    const int32_t *bias, const tmp_dims *od, int8_t *out, int32_t c_begin) {
    const int32_t ch = id->c;
    const int32_t kw = f->kw;
    int32_t acc[DW_BLOCK];
    int8_t *dst = out;
    for (int32_t y = 0; y < od->h; y++) {
        const int32_t iy0 = y * p->stride_h - p->pad_t;
        int32_t u_lo, u_hi;
        dwconv_window(iy0, f->kh, id->h, &u_lo, &u_hi);
        for (int32_t x = 0; x < od->w; x++) {
            const int32_t ix0 = x * p->stride_w - p->pad_l;
            int32_t v_lo, v_hi;
            dwconv_window(ix0, kw, id->w, &v_lo, &v_hi);
            for (int32_t c0 = c_begin; c0 < ch; c0 += DW_BLOCK) {
                const int32_t nb = ch - c0 < DW_BLOCK ? ch - c0 : DW_BLOCK;
                for (int32_t j = 0; j < nb; j++) {
                    acc[j] = bias != NULL ? bias[c0 + j] : 0;
                }
                for (int32_t u = u_lo; u < u_hi; u++) {
                    const int32_t iy = iy0 + u;
                    for (int32_t v = v_lo; v < v_hi; v++) {
                        const int8_t *src = in + ((size_t)iy * (size_t)id->w + (size_t)(ix0 + v)) *
                            (size_t)ch + (size_t)c0;
                        const int8_t *w = weights + (size_t)(u * kw + v) * (size_t)ch + (size_t)c0;
                        dwconv_mac_block(acc, src, w, nb, p->input_offset);
                    }
                }
                for (int32_t j = 0; j < nb; j++) {
                    const int32_t c = c0 + j;
                    dst[c] = tmp_clamp_out(tmp_requant(acc[j], q->multiplier[c], q->shift[c]),
                        p->output_offset, p->act_min, p->act_max);
                }
            }
            dst += ch;
        }
    }
}

#if TMP_DSP
/** Largest kh * kw whose widened weights the DSP path keeps on the stack (8 bytes a tap); larger
 * kernels (7x7) widen each tap's weights as they go. */
#define DW_DSP_MAX_TAPS 25

/* One tap for 4 channels: x4 = 4 input bytes, widened weights (w_c0, w_c2) and (w_c1, w_c3). */
static inline void dw_tap4(int32_t x4, int32_t w02, int32_t w13, int32_t offp, int32_t *a0,
    int32_t *a1, int32_t *a2, int32_t *a3) {
    const int32_t x13 = tmp_sxtab16_ror8(offp, x4);
    const int32_t x02 = tmp_sxtab16(offp, x4);
    *a0 = tmp_smlabb(x02, w02, *a0);
    *a2 = tmp_smlatt(x02, w02, *a2);
    *a1 = tmp_smlabb(x13, w13, *a1);
    *a3 = tmp_smlatt(x13, w13, *a3);
}

/* The nu x nv taps of a window for 4 channels: the first at row (rows rs bytes apart, pixels
 * cs), its weights at w, kw taps per kernel row: widened (2 words a tap) or, with `raw`
 * (compile-time), the int8 weights themselves at w8 (taps cs bytes apart), widened tap by tap. */
__attribute__((always_inline)) static inline void dw_window4(const int8_t *row, size_t cs,
    size_t rs, const int32_t *w, const int8_t *w8, int32_t kw, int32_t nu, int32_t nv,
    int32_t offp, int32_t *a0, int32_t *a1, int32_t *a2, int32_t *a3, const int raw) {
    for (int32_t u = 0; u < nu; u++) {
        const int8_t *src = row;
        for (int32_t v = 0; v < nv; v++) {
            if (raw) {
                const int32_t w4 = tmp_ld4(w8 + (size_t)v * cs);
                dw_tap4(tmp_ld4(src), tmp_sxtb16(w4), tmp_sxtb16_ror8(w4), offp, a0, a1, a2, a3);
            } else {
                dw_tap4(tmp_ld4(src), w[2 * v], w[2 * v + 1], offp, a0, a1, a2, a3);
            }
            src += cs;
        }
        row += rs;
        if (raw) {
            w8 += (size_t)kw * cs;
        } else {
            w += 2 * kw;
        }
    }
}

/* One channel's output before the activation clamp from its 4 constants: `neg` (compile-time):
 * shift <= -1 and rc = (M, klo, khi, sh) of tmp_rq_neg; else rc = (M, rsh, mask, shift). */
__attribute__((always_inline)) static inline int32_t dw_rq(int32_t acc, const int32_t *rc,
    int32_t out_off, const int neg) {
    const int32_t t = neg ? tmp_rq_neg(acc, rc[0], rc[1], rc[2], rc[3]) :
                            tmp_rq_apply_v(acc, rc[0], rc[1], rc[2], rc[3]);
    return tmp_ssat8(tmp_qadd(t, out_off));
}

/* Requantise 4 channels' accumulators, clamp, store one word. */
__attribute__((always_inline)) static inline void dw_store4(int8_t *dst, int32_t a0, int32_t a1,
    int32_t a2, int32_t a3, const int32_t (*rc)[4], int32_t out_off, uint32_t lo4, uint32_t hi4,
    const int neg) {
    const uint32_t v = tmp_pack4(dw_rq(a0, rc[0], out_off, neg), dw_rq(a1, rc[1], out_off, neg),
        dw_rq(a2, rc[2], out_off, neg), dw_rq(a3, rc[3], out_off, neg));
    tmp_st4(dst, (int32_t)tmp_clamp8x4(v, lo4, hi4));
}

/* out != in, channels c0 .. c0+3: every output pixel of these 4 channels, one int32 word of
 * input per tap (SXTAB16 adds the input offset to two lanes at once), weights expanded once,
 * 3x3 windows inside the input unrolled. `neg` (compile-time): every shift of the 4 channels is
 * <= -1, so the requantisation is the single-step tmp_rq_neg. */
__attribute__((always_inline)) static inline void dwconv_dsp_group4_k(const tmp_conv_params *p,
    const tmp_per_channel_quant *q, const tmp_dims *id, const int8_t *in, const tmp_filter_dims *f,
    const int8_t *weights, const int32_t *bias, const tmp_dims *od, int8_t *out, int32_t c0,
    int32_t *wx, const int neg, const int raw) {
    const int32_t ch = id->c;
    const int32_t kh = f->kh;
    const int32_t kw = f->kw;
    const int32_t sw = p->stride_w;
    /* the group's weights at w8; widened into wx unless `raw` (compile-time; wx is NULL then) */
    const int8_t *w8 = weights + c0;
    for (int32_t t = 0; !raw && t < kh * kw; t++) {
        const int32_t w4 = tmp_ld4(w8 + (size_t)t * (size_t)ch);
        wx[2 * t] = tmp_sxtb16(w4);
        wx[2 * t + 1] = tmp_sxtb16_ror8(w4);
    }
    int32_t rc[4][4];
    int32_t b[4];
    for (int32_t j = 0; j < 4; j++) {
        const tmp_rq r = tmp_rq_prep(q->multiplier[c0 + j], q->shift[c0 + j]);
        rc[j][0] = r.mult;
        rc[j][1] = neg ? r.klo : r.rsh;
        rc[j][2] = neg ? r.khi : r.mask;
        rc[j][3] = neg ? r.sh : r.lsh;
        b[j] = bias != NULL ? bias[c0 + j] : 0;
    }
    const int32_t offp = tmp_pack16x2(p->input_offset);
    const int32_t out_off = p->output_offset;
    const uint32_t lo4 = tmp_pack8x4(p->act_min);
    const uint32_t hi4 = tmp_pack8x4(p->act_max);
    const size_t cs = (size_t)ch;
    const size_t rs = (size_t)id->w * cs;
    /* output columns whose window lies inside the input: [xa, xb) */
    const int32_t xa = (p->pad_l + sw - 1) / sw;
    const int32_t xb_raw = (id->w - kw + p->pad_l) / sw + 1;
    const int32_t xb = id->w >= kw ? (xb_raw < od->w ? xb_raw : od->w) : 0;
    const int fast3 = !raw && kh == 3 && kw == 3;
    int8_t *dst = out + c0;
    for (int32_t y = 0; y < od->h; y++) {
        const int32_t iy0 = y * p->stride_h - p->pad_t;
        int32_t u_lo, u_hi;
        dwconv_window(iy0, kh, id->h, &u_lo, &u_hi);
        const int fast_row = fast3 && u_lo == 0 && u_hi == 3;
        for (int32_t x = 0; x < od->w; x++) {
            const int32_t ix0 = x * sw - p->pad_l;
            int32_t a0 = b[0], a1 = b[1], a2 = b[2], a3 = b[3];
            if (fast_row && x >= xa && x < xb) {
                const int8_t *s0 = in + (size_t)iy0 * rs + (size_t)ix0 * cs + (size_t)c0;
                const int8_t *s1 = s0 + rs;
                const int8_t *s2 = s1 + rs;
                dw_tap4(tmp_ld4(s0), wx[0], wx[1], offp, &a0, &a1, &a2, &a3);
                dw_tap4(tmp_ld4(s0 + cs), wx[2], wx[3], offp, &a0, &a1, &a2, &a3);
                dw_tap4(tmp_ld4(s0 + 2 * cs), wx[4], wx[5], offp, &a0, &a1, &a2, &a3);
                dw_tap4(tmp_ld4(s1), wx[6], wx[7], offp, &a0, &a1, &a2, &a3);
                dw_tap4(tmp_ld4(s1 + cs), wx[8], wx[9], offp, &a0, &a1, &a2, &a3);
                dw_tap4(tmp_ld4(s1 + 2 * cs), wx[10], wx[11], offp, &a0, &a1, &a2, &a3);
                dw_tap4(tmp_ld4(s2), wx[12], wx[13], offp, &a0, &a1, &a2, &a3);
                dw_tap4(tmp_ld4(s2 + cs), wx[14], wx[15], offp, &a0, &a1, &a2, &a3);
                dw_tap4(tmp_ld4(s2 + 2 * cs), wx[16], wx[17], offp, &a0, &a1, &a2, &a3);
            } else {
                int32_t v_lo, v_hi;
                dwconv_window(ix0, kw, id->w, &v_lo, &v_hi);
                const int32_t t0 = u_lo * kw + v_lo;
                dw_window4(in + (size_t)(iy0 + u_lo) * rs + (size_t)(ix0 + v_lo) * cs + (size_t)c0,
                    cs, rs, raw ? NULL : wx + 2 * t0, w8 + (size_t)t0 * cs, kw, u_hi - u_lo,
                    v_hi - v_lo, offp, &a0, &a1, &a2, &a3, raw);
            }
            dw_store4(dst, a0, a1, a2, a3, (const int32_t(*)[4])rc, out_off, lo4, hi4, neg);
            dst += ch;
        }
    }
}

/* The 3x3 path for 4 channels whose shifts are all <= -1: the run of output pixels of one row
 * whose windows lie inside the input, as one asm block (dw3_run). Everything it reads sits at
 * fixed offsets from one base register, so that its 13 registers hold the 4 accumulators, the
 * pointers and the temporaries and nothing is spilled. The input offset is folded into the
 * bias: with all 9 taps inside, sum (x + off) * w = sum x * w + off * sum w, so a tap is one
 * word load, two SXTB16 and 4 SMLAxy (the int32 sums wrap, and the true accumulator fits:
 * the same value as the C tile's, bit for bit). Requantisation, clamp and store as
 * dw_store4() with `neg`. Per pixel of 4 channels (36 MACs): 72 instructions for the taps, 28
 * for the requantisation, about 35 for the rest. */
typedef struct {
    int32_t w[18];         /* per tap t = 3u + v: (w_c0, w_c2), (w_c1, w_c3), as wx */
    int32_t b[4];          /* bias + input_offset * (sum of the channel's 9 weights) */
    int32_t rq[4][4];      /* per channel: M, klo, khi, sh (tmp_rq_neg) */
    int32_t out_off;
    uint32_t lo4, hi4;
    int32_t cs;            /* bytes from one pixel to the next: the channel count */
    int32_t rs;            /* bytes from one input row to the next */
    int32_t step;          /* bytes from one window to the next: stride_w * cs */
    const int8_t *end;     /* the first window past the run */
} dw3_k;
/* the offsets the asm below uses */
typedef char dw3_layout_check[(offsetof(dw3_k, b) == 72 && offsetof(dw3_k, rq) == 88 &&
    offsetof(dw3_k, out_off) == 152 && offsetof(dw3_k, cs) == 164 &&
    offsetof(dw3_k, end) == 176) ? 1 : -1];

/* tap T at ADDR: accumulators %[a0] (channel 0), r11 (1), r12 (2), lr (3) */
#define DW3_TAP(T, ADDR) \
    "ldr      r4, " ADDR "\n\t" \
    "ldrd     r9, r10, [%[k], #(" #T "*8)]\n\t" \
    "sxtb16   r5, r4, ror #8\n\t" \
    "sxtb16   r4, r4\n\t" \
    "smlabb   %[a0], r4, r9, %[a0]\n\t" \
    "smlatt   r12, r4, r9, r12\n\t" \
    "smlabb   r11, r5, r10, r11\n\t" \
    "smlatt   lr, r5, r10, lr\n\t"

/* channel J's requantisation of accumulator X: its constants into r4-r6, r8, then tmp_rq_neg */
#define DW3_RQ(J, X) \
    "ldrd     r4, r5, [%[k], #(88+16*" #J ")]\n\t" \
    "ldrd     r6, r8, [%[k], #(96+16*" #J ")]\n\t" \
    TMP_ASM_RQ_NEG(X)

/* windows at src, src + step, ... before k->end (at least one), outputs at dst, dst + cs, ... */
static TMP_NOINLINE void dw3_run(const dw3_k *k, const int8_t *src, int8_t *dst) {
    int32_t a0;
    __asm__ volatile(
        "1:\n\t"
        "ldrd     %[a0], r11, [%[k], #72]\n\t"
        "ldrd     r12, lr, [%[k], #80]\n\t"
        "ldrd     r6, r8, [%[k], #164]\n\t"
        "add      r8, r8, %[src]\n\t"
        DW3_TAP(0, "[%[src]]") DW3_TAP(1, "[%[src], r6]") DW3_TAP(2, "[%[src], r6, lsl #1]")
        DW3_TAP(3, "[r8]") DW3_TAP(4, "[r8, r6]") DW3_TAP(5, "[r8, r6, lsl #1]")
        "ldr      r9, [%[k], #168]\n\t"
        "add      r8, r8, r9\n\t"
        DW3_TAP(6, "[r8]") DW3_TAP(7, "[r8, r6]") DW3_TAP(8, "[r8, r6, lsl #1]")
        DW3_RQ(0, "%[a0]") DW3_RQ(1, "r11") DW3_RQ(2, "r12") DW3_RQ(3, "lr")
        "ldrd     r4, r5, [%[k], #152]\n\t"
        "ldr      r6, [%[k], #160]\n\t"
        "qadd     %[a0], %[a0], r4\n\t"
        "qadd     r11, r11, r4\n\t"
        "qadd     r12, r12, r4\n\t"
        "qadd     lr, lr, r4\n\t"
        "ssat     %[a0], #8, %[a0]\n\t"
        "ssat     r11, #8, r11\n\t"
        "ssat     r12, #8, r12\n\t"
        "ssat     lr, #8, lr\n\t"
        "uxtb     r8, %[a0]\n\t"
        "bfi      r8, r11, #8, #8\n\t"
        "bfi      r8, r12, #16, #8\n\t"
        "bfi      r8, lr, #24, #8\n\t"
        "ssub8    r9, r8, r5\n\t"
        "sel      r8, r8, r5\n\t"
        "ssub8    r9, r8, r6\n\t"
        "sel      r8, r6, r8\n\t"
        "ldr      r6, [%[k], #164]\n\t"
        "str      r8, [%[dst]]\n\t"
        "add      %[dst], %[dst], r6\n\t"
        "ldrd     r9, r10, [%[k], #172]\n\t"
        "add      %[src], %[src], r9\n\t"
        "cmp      %[src], r10\n\t"
        "bne      1b"
        : [src] "+r"(src), [dst] "+r"(dst), [a0] "=&r"(a0)
        : [k] "r"(k), "m"(*k)
        : "cc", "memory", "r4", "r5", "r6", "r8", "r9", "r10", "r11", "r12", "lr");
    (void)a0;
}

/* out != in, 3x3, channels c0 .. c0+3 with every shift <= -1: dwconv_dsp_group4_k's outputs
 * (neg), a row's run of windows inside the input through dw3_run() in one call, the windows over
 * the border through dw_tap4() as there (with the unfolded bias). A padded copy of a border
 * window through dw3_run() was tried and measured slower (copying the words and switching the
 * geometry cost more than the C taps). */
__attribute__((noinline)) static void dwconv_dsp_group4_neg3(const tmp_conv_params *p,
    const tmp_per_channel_quant *q, const tmp_dims *id, const int8_t *in, const int8_t *weights,
    const int32_t *bias, const tmp_dims *od, int8_t *out, int32_t c0) {
    const int32_t ch = id->c;
    const int32_t sw = p->stride_w;
    const int32_t in_off = p->input_offset;
    dw3_k k;
    int32_t b[4];
    for (int32_t j = 0; j < 4; j++) {
        b[j] = bias != NULL ? bias[c0 + j] : 0;
        int32_t wsum = 0;
        for (int32_t t = 0; t < 9; t++) {
            wsum += weights[(size_t)t * (size_t)ch + (size_t)(c0 + j)];
        }
        /* |in_off * wsum| <= 128 * 1152: the sum in uint32 wraps like the asm's */
        k.b[j] = (int32_t)((uint32_t)b[j] + (uint32_t)(in_off * wsum));
        const tmp_rq r = tmp_rq_prep(q->multiplier[c0 + j], q->shift[c0 + j]);
        k.rq[j][0] = r.mult;
        k.rq[j][1] = r.klo;
        k.rq[j][2] = r.khi;
        k.rq[j][3] = r.sh;
    }
    for (int32_t t = 0; t < 9; t++) {
        const int32_t w4 = tmp_ld4(weights + (size_t)t * (size_t)ch + (size_t)c0);
        k.w[2 * t] = tmp_sxtb16(w4);
        k.w[2 * t + 1] = tmp_sxtb16_ror8(w4);
    }
    k.out_off = p->output_offset;
    k.lo4 = tmp_pack8x4(p->act_min);
    k.hi4 = tmp_pack8x4(p->act_max);
    const size_t cs = (size_t)ch;
    const size_t rs = (size_t)id->w * cs;
    k.cs = ch;
    k.rs = (int32_t)rs;
    k.step = sw * ch;
    const int32_t offp = tmp_pack16x2(in_off);
    /* output columns whose window lies inside the input: [xa, xb) */
    const int32_t xa = (p->pad_l + sw - 1) / sw;
    const int32_t xb_raw = (id->w - 3 + p->pad_l) / sw + 1;
    const int32_t xb = id->w >= 3 ? (xb_raw < od->w ? xb_raw : od->w) : 0;
    int8_t *dst = out + c0;
    for (int32_t y = 0; y < od->h; y++) {
        const int32_t iy0 = y * p->stride_h - p->pad_t;
        int32_t u_lo, u_hi;
        dwconv_window(iy0, 3, id->h, &u_lo, &u_hi);
        const int inside_row = u_lo == 0 && u_hi == 3;
        for (int32_t x = 0; x < od->w; x++) {
            const int32_t ix0 = x * sw - p->pad_l;
            if (inside_row && x >= xa && x < xb) {
                const int8_t *src = in + (size_t)iy0 * rs + (size_t)ix0 * cs + (size_t)c0;
                const int32_t n = xb - x;
                k.end = src + (size_t)n * (size_t)k.step;
                dw3_run(&k, src, dst);
                dst += (size_t)n * cs;
                x += n - 1;
                continue;
            }
            int32_t a0 = b[0], a1 = b[1], a2 = b[2], a3 = b[3];
            int32_t v_lo, v_hi;
            dwconv_window(ix0, 3, id->w, &v_lo, &v_hi);
            dw_window4(in + (size_t)(iy0 + u_lo) * rs + (size_t)(ix0 + v_lo) * cs + (size_t)c0, cs,
                rs, k.w + 2 * (u_lo * 3 + v_lo), NULL, 3, u_hi - u_lo, v_hi - v_lo, offp, &a0, &a1,
                &a2, &a3, 0);
            dw_store4(dst, a0, a1, a2, a3, (const int32_t(*)[4])k.rq, k.out_off, k.lo4, k.hi4, 1);
            dst += ch;
        }
    }
}

/* the instances in separate frames (the stack peak is one of them, not all); kernels of more
 * than DW_DSP_MAX_TAPS taps without the widened copy */
__attribute__((noinline)) static void dwconv_dsp_group4_neg(const tmp_conv_params *p,
    const tmp_per_channel_quant *q, const tmp_dims *id, const int8_t *in, const tmp_filter_dims *f,
    const int8_t *weights, const int32_t *bias, const tmp_dims *od, int8_t *out, int32_t c0) {
    int32_t wx[2 * DW_DSP_MAX_TAPS]; /* per tap: (w_c0, w_c2), (w_c1, w_c3) */
    dwconv_dsp_group4_k(p, q, id, in, f, weights, bias, od, out, c0, wx, 1, 0);
}

__attribute__((noinline)) static void dwconv_dsp_group4_any(const tmp_conv_params *p,
    const tmp_per_channel_quant *q, const tmp_dims *id, const int8_t *in, const tmp_filter_dims *f,
    const int8_t *weights, const int32_t *bias, const tmp_dims *od, int8_t *out, int32_t c0) {
    int32_t wx[2 * DW_DSP_MAX_TAPS];
    dwconv_dsp_group4_k(p, q, id, in, f, weights, bias, od, out, c0, wx, 0, 0);
}

__attribute__((noinline)) static void dwconv_dsp_group4_big_neg(const tmp_conv_params *p,
    const tmp_per_channel_quant *q, const tmp_dims *id, const int8_t *in, const tmp_filter_dims *f,
    const int8_t *weights, const int32_t *bias, const tmp_dims *od, int8_t *out, int32_t c0) {
    dwconv_dsp_group4_k(p, q, id, in, f, weights, bias, od, out, c0, NULL, 1, 1);
}

__attribute__((noinline)) static void dwconv_dsp_group4_big_any(const tmp_conv_params *p,
    const tmp_per_channel_quant *q, const tmp_dims *id, const int8_t *in, const tmp_filter_dims *f,
    const int8_t *weights, const int32_t *bias, const tmp_dims *od, int8_t *out, int32_t c0) {
    dwconv_dsp_group4_k(p, q, id, in, f, weights, bias, od, out, c0, NULL, 0, 1);
}

static void dwconv_dsp_group4(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *id, const int8_t *in, const tmp_filter_dims *f, const int8_t *weights,
    const int32_t *bias, const tmp_dims *od, int8_t *out, int32_t c0) {
    const int32_t *s = q->shift + c0;
    const int neg = s[0] <= -1 && s[1] <= -1 && s[2] <= -1 && s[3] <= -1;
    if (f->kh * f->kw > DW_DSP_MAX_TAPS) {
        (neg ? dwconv_dsp_group4_big_neg : dwconv_dsp_group4_big_any)(p, q, id, in, f, weights, bias,
            od, out, c0);
    } else if (neg && f->kh == 3 && f->kw == 3) {
        dwconv_dsp_group4_neg3(p, q, id, in, weights, bias, od, out, c0);
    } else {
        (neg ? dwconv_dsp_group4_neg : dwconv_dsp_group4_any)(p, q, id, in, f, weights, bias, od,
            out, c0);
    }
}
#endif

/* out == in: channel by channel through one input plane in `plane` (in.h * in.w bytes). */
TMP_NOINLINE static void dwconv_in_place(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *id, const int8_t *in, const tmp_filter_dims *f, const int8_t *weights,
    const int32_t *bias, const tmp_dims *od, int8_t *out, int8_t *plane) {
    const int32_t ch = id->c;
    const int32_t iw = id->w;
    const int32_t kw = f->kw;
    const int32_t plane_len = id->h * id->w;
    for (int32_t c = 0; c < ch; c++) {
        /* gather channel c (read through `in` only here, before any write to channel c) */
        const int8_t *src = in + c;
        for (int32_t i = 0; i < plane_len; i++) {
            plane[i] = *src;
            src += ch;
        }
        const int32_t b = bias != NULL ? bias[c] : 0;
        const int32_t mult = q->multiplier[c];
        const int32_t shift = q->shift[c];
        int8_t *dst = out + c;
        for (int32_t y = 0; y < od->h; y++) {
            const int32_t iy0 = y * p->stride_h - p->pad_t;
            int32_t u_lo, u_hi;
            dwconv_window(iy0, f->kh, id->h, &u_lo, &u_hi);
            for (int32_t x = 0; x < od->w; x++) {
                const int32_t ix0 = x * p->stride_w - p->pad_l;
                int32_t v_lo, v_hi;
                dwconv_window(ix0, kw, iw, &v_lo, &v_hi);
                int32_t acc = b;
                const int32_t nv = v_hi - v_lo;
                for (int32_t u = u_lo; u < u_hi; u++) {
                    const int8_t *row = plane + (iy0 + u) * iw + (ix0 + v_lo);
                    const int8_t *w = weights + (size_t)(u * kw + v_lo) * (size_t)ch + (size_t)c;
                    for (int32_t j = 0; j < nv; j++) {
                        acc += ((int32_t)row[j] + p->input_offset) * w[(size_t)j * (size_t)ch];
                    }
                }
                *dst = tmp_clamp_out(tmp_requant(acc, mult, shift), p->output_offset, p->act_min,
                    p->act_max);
                dst += ch;
            }
        }
    }
}

#if TMP_DSP
typedef struct {
    int32_t w02[3]; /* per kernel row u: (w[u][0], w[u][2]) */
    int32_t w1[3];  /* w[u][1] */
    int32_t offp;
    int32_t bias;
    tmp_rq r;
    int32_t out_off, act_min, act_max;
} dw_ip_chan;

/* n consecutive output pixels of one channel whose 3x3 windows lie inside the plane (and whose
 * 4-byte row loads too): row = top-left input of the first window, step = stride_w. */
__attribute__((noinline)) static void dw_ip_run3(const int8_t *row, int32_t iw, int32_t step,
    int32_t n, int8_t *dst, int32_t ch, const dw_ip_chan *k) {
    /* locals: the int8 stores below may alias anything, *k would be reloaded every pixel */
    const int32_t offp = k->offp;
    const int32_t w02a = k->w02[0], w02b = k->w02[1], w02c = k->w02[2];
    const int32_t w1a = k->w1[0], w1b = k->w1[1], w1c = k->w1[2];
    const int32_t bias = k->bias;
    const int32_t mult = k->r.mult, rsh = k->r.rsh, mask = k->r.mask, lsh = k->r.lsh;
    const int32_t klo = k->r.klo, khi = k->r.khi, sh = k->r.sh;
    const int neg = lsh <= -1;
    const int32_t out_off = k->out_off;
    const uint32_t lo4 = tmp_pack8x4(k->act_min);
    const uint32_t hi4 = tmp_pack8x4(k->act_max);
    const size_t cs = (size_t)ch;
    for (; n > 0; n--) {
        const int32_t xa = tmp_ld4(row);
        const int32_t xb = tmp_ld4(row + iw);
        const int32_t xc = tmp_ld4(row + 2 * iw);
        int32_t acc = tmp_smlad(tmp_sxtab16(offp, xa), w02a, bias);
        acc = tmp_smlabb(tmp_sxtab16_ror8(offp, xa), w1a, acc);
        acc = tmp_smlad(tmp_sxtab16(offp, xb), w02b, acc);
        acc = tmp_smlabb(tmp_sxtab16_ror8(offp, xb), w1b, acc);
        acc = tmp_smlad(tmp_sxtab16(offp, xc), w02c, acc);
        acc = tmp_smlabb(tmp_sxtab16_ror8(offp, xc), w1c, acc);
        const int32_t t = neg ? tmp_rq_neg(acc, mult, klo, khi, sh) :
                                tmp_rq_apply_v(acc, mult, rsh, mask, lsh);
        const int32_t v = tmp_ssat8(tmp_qadd(t, out_off));
        *dst = (int8_t)tmp_clamp8x4((uint32_t)v & 0xFFu, lo4, hi4);
        dst += cs;
        row += step;
    }
}

/* out == in on the DSP path: as dwconv_in_place (one channel plane gathered at a time, same
 * write order), with the channel's weights and requantisation constants hoisted, and 3x3
 * windows inside the plane as 3 x (one word load, SXTAB16 x2, SMLAD, SMLABB). */
TMP_NOINLINE static void dwconv_dsp_in_place(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *id, const int8_t *in, const tmp_filter_dims *f, const int8_t *weights,
    const int32_t *bias, const tmp_dims *od, int8_t *out, int8_t *plane) {
    const int32_t ch = id->c;
    const int32_t ih = id->h;
    const int32_t iw = id->w;
    const int32_t kh = f->kh;
    const int32_t kw = f->kw;
    const int32_t sw = p->stride_w;
    const int32_t plane_len = ih * iw;
    const int32_t in_off = p->input_offset;
    const int32_t offp = tmp_pack16x2(in_off);
    const int fast3 = kh == 3 && kw == 3;
    /* output columns whose 3-wide window lies inside the input: [xa, xb) */
    const int32_t xa = (p->pad_l + sw - 1) / sw;
    const int32_t xb_raw = (iw - kw + p->pad_l) / sw + 1;
    const int32_t xb = iw >= kw ? (xb_raw < od->w ? xb_raw : od->w) : 0;
    for (int32_t c = 0; c < ch; c++) {
        const int8_t *src = in + c;
        for (int32_t i = 0; i < plane_len; i++) {
            plane[i] = *src;
            src += ch;
        }
        int32_t wc[DW_DSP_MAX_TAPS];
        for (int32_t t = 0; t < kh * kw; t++) {
            wc[t] = weights[(size_t)t * (size_t)ch + (size_t)c];
        }
        int32_t w02[3] = {0, 0, 0};
        if (fast3) {
            for (int32_t u = 0; u < 3; u++) {
                w02[u] = (int32_t)(((uint32_t)wc[3 * u] & 0xFFFFu) | ((uint32_t)wc[3 * u + 2] << 16));
            }
        }
        const int32_t b = bias != NULL ? bias[c] : 0;
        const tmp_rq r = tmp_rq_prep(q->multiplier[c], q->shift[c]);
        dw_ip_chan k;
        k.w02[0] = w02[0];
        k.w02[1] = w02[1];
        k.w02[2] = w02[2];
        k.w1[0] = wc[1];
        k.w1[1] = wc[4];
        k.w1[2] = wc[7];
        k.offp = offp;
        k.bias = b;
        k.r = r;
        k.out_off = p->output_offset;
        k.act_min = p->act_min;
        k.act_max = p->act_max;
        int8_t *dst = out + c;
        for (int32_t y = 0; y < od->h; y++) {
            const int32_t iy0 = y * p->stride_h - p->pad_t;
            int32_t u_lo, u_hi;
            dwconv_window(iy0, kh, ih, &u_lo, &u_hi);
            /* fast: whole 3x3 window inside, and the 4-byte loads stay inside the plane */
            int32_t x_end_fast = xb;
            if (fast3 && u_lo == 0 && u_hi == 3 && (iy0 + 3) * iw >= plane_len) {
                /* last plane row: the 4th byte of the bottom row must exist */
                const int32_t lim = (iw - 4 + p->pad_l) / sw + 1; /* ix0 + 3 <= iw - 1 */
                x_end_fast = iw >= 4 ? (lim < xb ? lim : xb) : 0;
            }
            const int fast_row = fast3 && u_lo == 0 && u_hi == 3;
            for (int32_t x = 0; x < od->w; x++) {
                const int32_t ix0 = x * sw - p->pad_l;
                int32_t acc = b;
                if (fast_row && x >= xa && x < x_end_fast) {
                    /* the run of fast pixels of this row, in one call */
                    const int32_t nrun = x_end_fast - x;
                    dw_ip_run3(plane + iy0 * iw + ix0, iw, sw, nrun, dst, ch, &k);
                    dst += (size_t)nrun * (size_t)ch;
                    x += nrun - 1;
                    continue;
                } else {
                    int32_t v_lo, v_hi;
                    dwconv_window(ix0, kw, iw, &v_lo, &v_hi);
                    for (int32_t u = u_lo; u < u_hi; u++) {
                        const int8_t *row = plane + (iy0 + u) * iw + ix0;
                        const int32_t *wu = wc + u * kw;
                        for (int32_t v = v_lo; v < v_hi; v++) {
                            acc = tmp_smlabb(row[v] + in_off, wu[v], acc);
                        }
                    }
                }
                *dst = tmp_rq_out(acc, r, p->output_offset, p->act_min, p->act_max);
                dst += ch;
            }
        }
    }
}
#endif

tmp_status tmp_dwconv_s8(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *in_dims, const int8_t *in,
    const tmp_filter_dims *f, const int8_t *weights, const int32_t *bias,
    const tmp_dims *out_dims, int8_t *out, void *scratch) {
    if (p == NULL || q == NULL || q->multiplier == NULL || q->shift == NULL || in_dims == NULL ||
        in == NULL || f == NULL || weights == NULL || out_dims == NULL || out == NULL) {
        return TMP_ERR_ARG;
    }
    const int in_place = (const int8_t *)out == in;
    if (!tmp_dims_ok(in_dims) ||
        !tmp_dims_ok(out_dims) || out_dims->c != in_dims->c ||
        !tmp_conv_axis_ok(in_dims->h, out_dims->h, f->kh, p->stride_h, p->pad_t) ||
        !tmp_conv_axis_ok(in_dims->w, out_dims->w, f->kw, p->stride_w, p->pad_l) ||
        (int64_t)f->kh * f->kw * in_dims->c > INT32_MAX ||
        p->input_offset < -127 || p->input_offset > 128 ||
        p->output_offset < -128 || p->output_offset > 127 ||
        p->act_min < -128 || p->act_max > 127 || p->act_min > p->act_max ||
        !tmp_quant_ok(q, in_dims->c)) {
        return TMP_ERR_ARG;
    }
    if (in_place && !dw_direct_ok(p, in_dims, out_dims)) {
        if (scratch == NULL) {
            return TMP_ERR_ARG;
        }
#if TMP_DSP
        if (f->kh * f->kw <= DW_DSP_MAX_TAPS) {
            dwconv_dsp_in_place(p, q, in_dims, in, f, weights, bias, out_dims, out,
                (int8_t *)scratch);
            return TMP_OK;
        }
#endif
        dwconv_in_place(p, q, in_dims, in, f, weights, bias, out_dims, out, (int8_t *)scratch);
    } else {
        int32_t c_begin = 0;
#if TMP_DSP
        c_begin = in_dims->c & ~(int32_t)3;
        for (int32_t c0 = 0; c0 < c_begin; c0 += 4) {
            dwconv_dsp_group4(p, q, in_dims, in, f, weights, bias, out_dims, out, c0);
        }
#endif
        if (c_begin < in_dims->c) {
            dwconv_out_of_place(p, q, in_dims, in, f, weights, bias, out_dims, out, c_begin);
        }
    }
    return TMP_OK;
}
