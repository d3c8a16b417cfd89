/**
 * @file tmp_pwconv_s8.c
 * @brief Pointwise (1x1, stride 1, no padding) int8 convolution (TFLite int8 semantics).
 *
 * For every pixel p and output channel o (docs/KERNELS.md, "Convolution", pwconv):
 *
 *     acc = bias[o] + sum over i < in.c of (in[p][i] + input_offset) * w[o][i]
 *     out[p][o] = clamp(requant(acc, mult[o], shift[o]) + output_offset, act_min, act_max)
 *
 * Layouts (int8 unless noted): in [h][w][in.c], weights [out.c][in.c], bias int32 [out.c]
 * (NULL = zero), out [h][w][out.c] (out.h == in.h, out.w == in.w). `out` must not overlap `in`.
 * p->stride_h/stride_w must be 1 and p->pad_t/pad_l 0.
 *
 * Scratch (tmp_pwconv_s8_get_buffer_size(), 4-byte aligned): 4 * in.c bytes for two weight rows
 * (or two input pixels), then, on layers with small maps, a block of up to 64 input pixels
 * widened to int16 (pw_xblock_pixels(): 2 bytes per pixel and input channel in groups of 4, at
 * most 4 KiB and a quarter of the layer's input + output, none where those exceed 64 KiB). Both
 * paths write all of it, so that the painted arena high water is the same on the host and the M7
 * (and so is the plan: one size for both).
 *
 * The portable path widens two input pixels to int16 with the input offset already added, so
 * that each output channel is two plain int16 x int8 dot products over one weight row
 * (pwconv_dot2_s16_s8()); it zeroes the block it does not use. The DSP path (TMP_DSP,
 * Cortex-M4/M7) widens two weight rows to int16 pairs in SXTB16 lane order (tmp_dsp.h),
 * interleaved per group of 4 input channels, and computes 2 pixels x 2 output channels per pass
 * over the input channels with SMLAD, the input offset folded into a per-channel constant. With a
 * block, the input pixels are widened once per block as well, the input offset added there (so
 * the rows need no sums), and every output-channel pair reads them (pwconv_dsp_wide(): 13
 * instructions per 16 MACs); without one, each pixel pair is widened
 * in the loop (pwconv_dsp(): 18). The tile's requantisation is one asm block in the usual case
 * (both shifts negative). Layers with 8, 16 or 24 input channels (the large early maps of
 * MobileNetV2 and MCUNet), where that per-tile work outweighs the few MACs, take neither: their
 * whole pixel loop is one asm block per output-channel pair (pwconv_dsp_small(); it leaves the
 * block unused and zeroes it).
 *
 * Preconditions not checked (guaranteed by the model format): |bias[o]| <= 2^31 - 1 - 32640*in.c,
 * so the int32 accumulator cannot overflow.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "../tmp_kernels.h"
#include "tmp_dsp.h"

/* Pixels per block of the DSP path's widened input (an even number; 0: no block, each pixel
 * pair is widened on the fly). A block is widened once and then read by every output-channel
 * pair, so it pays when it holds all the pixels (the weights are widened once per block) or at
 * least 8 of them. It takes 2 bytes per input channel (in groups of 4) and pixel, and is kept
 * where it is unlikely to raise a plan's peak: only on layers whose input and output together are
 * at most PW_XBLOCK_LAYER bytes (a CNN's peak is at its large maps), at most a quarter of those
 * bytes (tiny models: none), PW_XBLOCK_BYTES and PW_XBLOCK_PIX pixels. The same function on
 * every build: the scratch size, and so the plan, does not depend on the path. */
#define PW_XBLOCK_PIX 64
#define PW_XBLOCK_BYTES 4096
#define PW_XBLOCK_LAYER 65536
static int32_t pw_xblock_pixels(const tmp_dims *in, const tmp_dims *out) {
    if (in->h < 1 || in->w < 1 || in->c < 4 || out->c < 1 ||
        (int64_t)in->h * in->w * ((int64_t)in->c + out->c) > PW_XBLOCK_LAYER) {
        return 0;
    }
    /* from here every product fits in 32 bits (no 64-bit division: natmod has no libgcc) */
    const int32_t g4 = in->c & ~3;
    const int32_t npix = in->h * in->w;
    const int32_t layer = npix * (in->c + out->c);
    const int32_t cap = layer / 4 < PW_XBLOCK_BYTES ? layer / 4 : PW_XBLOCK_BYTES;
    const int32_t all = npix + (npix & 1);
    int32_t b = all < PW_XBLOCK_PIX ? all : PW_XBLOCK_PIX;
    if (2 * b * g4 > cap) {
        b = (cap / (2 * g4)) & ~1;
    }
    return (b == all || b >= 8) ? b : 0;
}

int32_t tmp_pwconv_s8_get_buffer_size(const tmp_dims *in, const tmp_dims *out) {
    if (in == NULL || out == NULL || in->c < 1 ||
        in->c > INT32_MAX / (2 * (int32_t)sizeof(int16_t)) - PW_XBLOCK_BYTES || in->h < 1 ||
        in->w < 1) {
        return 0;
    }
    /* the weight rows (both paths), then the widened input block */
    return 2 * in->c * (int32_t)sizeof(int16_t) + 2 * pw_xblock_pixels(in, out) * (in->c & ~3);
}

#if TMP_DSP
/* Rows w0 and w1 (n weights each) into buf (4 * n bytes, all written): per group of 4 weights
 * the words (w0: b0,b2), (w0: b1,b3), (w1: b0,b2), (w1: b1,b3) in SXTB16 lane order, so that the
 * inner loop reads all four with one post-incremented pointer, then the n & 3 tail weights as
 * int16 pairs (w0, w1). *s0, *s1 = the sums of the whole rows (all != 0), or of their tails only
 * (all == 0: for the widened-input block, whose pixels carry the input offset themselves). One
 * asm loop per group: two loads, four SXTB16, one STM (9 instructions per 8 weights, 13 with the
 * sums; GCC's code took 17). */
#define PW_ROWS_GROUP /* one group of both rows: r4, r5 = w0's lanes, r6, r8 = w1's, stored */ \
    "ldr      r4, [%[p0]], #4\n\t" \
    "ldr      r6, [%[p1]], #4\n\t" \
    "sxtb16   r5, r4, ror #8\n\t" \
    "sxtb16   r4, r4\n\t" \
    "sxtb16   r8, r6, ror #8\n\t" \
    "sxtb16   r6, r6\n\t" \
    "stmia    %[d]!, {r4, r5, r6, r8}\n\t"
static void pwconv_dsp_rows(int32_t *buf, const int8_t *w0, const int8_t *w1, int32_t n, int all,
    int32_t *s0, int32_t *s1) {
    int32_t a = 0, b = 0;
    const int32_t ng = n >> 2;
    if (ng > 0) {
        const int8_t *end = w0 + 4 * ng;
        if (all) {
            __asm__ volatile(
                "1:\n\t"
                PW_ROWS_GROUP
                "smlad    %[a], r4, %[ones], %[a]\n\t"
                "smlad    %[a], r5, %[ones], %[a]\n\t"
                "smlad    %[b], r6, %[ones], %[b]\n\t"
                "smlad    %[b], r8, %[ones], %[b]\n\t"
                "cmp      %[p0], %[e]\n\t"
                "bne      1b"
                : [p0] "+r"(w0), [p1] "+r"(w1), [d] "+r"(buf), [a] "+r"(a), [b] "+r"(b)
                : [e] "r"(end), [ones] "r"(0x00010001)
                : "cc", "memory", "r4", "r5", "r6", "r8");
        } else {
            __asm__ volatile(
                "1:\n\t"
                PW_ROWS_GROUP
                "cmp      %[p0], %[e]\n\t"
                "bne      1b"
                : [p0] "+r"(w0), [p1] "+r"(w1), [d] "+r"(buf)
                : [e] "r"(end)
                : "cc", "memory", "r4", "r5", "r6", "r8");
        }
    }
    int16_t *t = (int16_t *)buf; /* the tail (n & 3 weights) as int16 pairs (w0, w1) */
    for (int32_t i = 0; i < (n & 3); i++, t += 2) {
        t[0] = w0[i];
        t[1] = w1[i];
        a += w0[i];
        b += w1[i];
    }
    *s0 = a;
    *s1 = b;
}

/* The constants of one output-channel pair (o, o1): the folded bias + offset terms and the
 * requantisation, as pw_out_neg_asm() reads them (both shifts <= -1, the usual case) or for
 * tmp_rq_apply() (any shifts). */
typedef struct {
    int32_t c0, c1;
    union {
        /* neg: m0, klo0, khi0, sh0, m1, klo1, khi1, sh1, output offset, the clamp bounds as 4
         * int8 lanes (tmp_pack8x4) */
        int32_t kq[11];
        struct {
            tmp_rq r0, r1;
        } any; /* !neg */
    } u;
    int neg;
} pw_pair;

#if defined(__GNUC__)
#define PW_INLINE __attribute__((always_inline)) static inline
#else
#define PW_INLINE static inline
#endif

/* Widens rows o and o1 into wbuf and prepares the pair's constants. The input offset is folded
 * into a per-channel constant, sum (x + off) w = sum x w + off * sum w (exact: partial sums wrap
 * modulo 2^32 and the total fits, as the format guarantees), so neither the offset nor the
 * requantisation constants are redone per pixel. With xoff the widened inputs already carry the
 * offset (the input block) and only the tail's inputs, read as bytes, need it here. */
PW_INLINE void pw_pair_prep(pw_pair *k, const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const int8_t *weights, const int32_t *bias, int32_t ic, int32_t o, int32_t o1, int32_t *wbuf,
    int xoff) {
    int32_t sw0, sw1;
    pwconv_dsp_rows(wbuf, weights + (size_t)o * (size_t)ic, weights + (size_t)o1 * (size_t)ic,
        ic, !xoff, &sw0, &sw1);
    const uint32_t in_off = (uint32_t)p->input_offset;
    k->c0 = (int32_t)((uint32_t)(bias != NULL ? bias[o] : 0) + in_off * (uint32_t)sw0);
    k->c1 = (int32_t)((uint32_t)(bias != NULL ? bias[o1] : 0) + in_off * (uint32_t)sw1);
    const int32_t s0 = q->shift[o], s1 = q->shift[o1];
    k->neg = s0 <= -1 && s1 <= -1;
    if (k->neg) {
        k->u.kq[0] = q->multiplier[o];
        tmp_rq_prep_neg(s0, &k->u.kq[1], &k->u.kq[2], &k->u.kq[3]);
        k->u.kq[4] = q->multiplier[o1];
        tmp_rq_prep_neg(s1, &k->u.kq[5], &k->u.kq[6], &k->u.kq[7]);
        k->u.kq[8] = p->output_offset;
        k->u.kq[9] = (int32_t)tmp_pack8x4(p->act_min);
        k->u.kq[10] = (int32_t)tmp_pack8x4(p->act_max);
    } else {
        k->u.any.r0 = tmp_rq_prep(q->multiplier[o], s0);
        k->u.any.r1 = tmp_rq_prep(q->multiplier[o1], s1);
    }
}

/* tmp_rq_neg of (a0, b0) with channel o's constants and of (a1, b1) with o1's, then + output
 * offset (QADD), SSAT to int8, packed as lanes a0, a1, b0, b1 and clamped to the activation
 * range: the end of pw_tile_end() in the neg case, as one asm block (41 instructions; GCC kept
 * the constants on the stack and reloaded them several times). kq as in pw_pair. */
static inline uint32_t pw_out_neg_asm(int32_t a0, int32_t a1, int32_t b0, int32_t b1,
    const int32_t *kq) {
    uint32_t v;
    __asm__(
        "ldmia    %[k], {r4, r5, r6, r8}\n\t"
        TMP_ASM_RQ_NEG("%[a0]")
        TMP_ASM_RQ_NEG("%[b0]")
        "ldrd     r4, r5, [%[k], #16]\n\t"
        "ldrd     r6, r8, [%[k], #24]\n\t"
        TMP_ASM_RQ_NEG("%[a1]")
        TMP_ASM_RQ_NEG("%[b1]")
        "ldrd     r4, r5, [%[k], #32]\n\t"
        "ldr      r6, [%[k], #40]\n\t"
        "qadd     %[a0], %[a0], r4\n\t"
        "qadd     %[a1], %[a1], r4\n\t"
        "qadd     %[b0], %[b0], r4\n\t"
        "qadd     %[b1], %[b1], r4\n\t"
        "ssat     %[a0], #8, %[a0]\n\t"
        "ssat     %[a1], #8, %[a1]\n\t"
        "ssat     %[b0], #8, %[b0]\n\t"
        "ssat     %[b1], #8, %[b1]\n\t"
        "uxtb     %[v], %[a0]\n\t"
        "bfi      %[v], %[a1], #8, #8\n\t"
        "bfi      %[v], %[b0], #16, #8\n\t"
        "bfi      %[v], %[b1], #24, #8\n\t"
        "ssub8    r9, %[v], r5\n\t"
        "sel      %[v], %[v], r5\n\t"
        "ssub8    r9, %[v], r6\n\t"
        "sel      %[v], r6, %[v]"
        : [v] "=&r"(v), [a0] "+&r"(a0), [a1] "+&r"(a1), [b0] "+&r"(b0), [b1] "+&r"(b1)
        : [k] "r"(kq), "m"(*(const int32_t(*)[11])kq)
        : "cc", "r4", "r5", "r6", "r8", "r9", "r10");
    return v;
}

static uint32_t pw_out_any(const pw_pair *k, int32_t a0, int32_t a1, int32_t b0, int32_t b1,
    int32_t out_off, uint32_t lo4, uint32_t hi4);

/* The input-channel tail (in.c & 3, weights as int16 pairs after the groups), requantisation,
 * clamping and the stores of one 2 x 2 tile: outputs (pixel a, o), (a, o1), (b, o), (b, o1). */
PW_INLINE void pw_tile_end(const pw_pair *k, int32_t a0, int32_t a1, int32_t b0, int32_t b1,
    const int8_t *xa, const int8_t *xb, const int16_t *wt, int32_t tail, int32_t out_off,
    uint32_t lo4, uint32_t hi4, int8_t *dst_a, int8_t *dst_b, int two) {
    for (int32_t t = 0; t < tail; t++) {
        a0 = tmp_smlabb(xa[t], wt[2 * t], a0);
        b0 = tmp_smlabb(xb[t], wt[2 * t], b0);
        a1 = tmp_smlabb(xa[t], wt[2 * t + 1], a1);
        b1 = tmp_smlabb(xb[t], wt[2 * t + 1], b1);
    }
    uint32_t v;
    if (k->neg) { /* the usual case */
        v = pw_out_neg_asm(a0, a1, b0, b1, k->u.kq);
    } else {
        v = pw_out_any(k, a0, a1, b0, b1, out_off, lo4, hi4);
    }
    if (two) {
        const uint16_t va16 = (uint16_t)v;
        const uint16_t vb16 = (uint16_t)(v >> 16);
        memcpy(dst_a, &va16, 2);
        memcpy(dst_b, &vb16, 2);
    } else {
        dst_a[0] = (int8_t)v;
        dst_b[0] = (int8_t)(v >> 16);
    }
}

/* The outputs of a tile for any shifts (!k->neg), packed and clamped as pw_out_neg_asm() does. */
static uint32_t pw_out_any(const pw_pair *k, int32_t a0, int32_t a1, int32_t b0, int32_t b1,
    int32_t out_off, uint32_t lo4, uint32_t hi4) {
    /* lanes: a[o], a[o1], b[o], b[o1] */
    return tmp_clamp8x4(tmp_pack4(tmp_ssat8(tmp_qadd(tmp_rq_apply(a0, k->u.any.r0), out_off)),
        tmp_ssat8(tmp_qadd(tmp_rq_apply(a1, k->u.any.r1), out_off)),
        tmp_ssat8(tmp_qadd(tmp_rq_apply(b0, k->u.any.r0), out_off)),
        tmp_ssat8(tmp_qadd(tmp_rq_apply(b1, k->u.any.r1), out_off))), lo4, hi4);
}

/* The small-input path (in.c = 8, 16 or 24, both shifts negative, two distinct channels): the
 * pixel-pair loop of one output-channel pair as one asm block, groups unrolled, so that nothing
 * is spilled. It reads everything at fixed offsets from one base register: the pair's pw_pair
 * (c0, c1, kq first), oc, the end of the input, and the widened rows as pwconv_dsp_rows() writes
 * them. Outputs are the C tile's bit for bit: the same SMLAD sums (integer, any order), then
 * pw_out_neg_asm()'s requantisation and clamp. Per 2 x 2 tile: 16 instructions per group of 4
 * input channels, 42 for the requantisation, 12 for the set-up, stores and loop (in.c = 8: 2.69
 * instructions per MAC in `make bench-kernels`, against 4.25 for the C tile, whose pointers and
 * constants GCC keeps on the stack there). */
#define PWS_MAX_G 6
typedef struct {
    pw_pair k;
    int32_t oc;
    const int8_t *xend;         /* the input past the last pixel pair */
    int32_t w[4 * PWS_MAX_G];   /* the pair's widened rows */
} pw_small;
/* the asm below reads c0, c1 at offsets 0, 4 and kq at 8 .. 48 */
typedef char pws_layout_check[(offsetof(pw_small, k.c1) == 4 && offsetof(pw_small, k.u.kq) == 8) ?
    1 : -1];

/* Group J of 4 input channels (IC of them): xa's and xb's 4 bytes widened, 8 SMLAD with the
 * rows' group J (u02, u13 for channel o, v02, v13 for o1). Accumulators: %[a0] (pixel a, o),
 * r11 (a, o1), r12 (b, o), lr (b, o1). */
#define PWS_GROUP(J, IC) \
    "ldr      r4, [%[xa], #(" #J "*4)]\n\t" \
    "ldr      r6, [%[xa], #(" #IC "+" #J "*4)]\n\t" \
    "sxtb16   r5, r4\n\t" \
    "sxtb16   r4, r4, ror #8\n\t" \
    "sxtb16   r8, r6\n\t" \
    "sxtb16   r6, r6, ror #8\n\t" \
    "ldrd     r9, r10, [%[k], #(%c[wo]+" #J "*16)]\n\t" \
    "smlad    %[a0], r5, r9, %[a0]\n\t" \
    "smlad    %[a0], r4, r10, %[a0]\n\t" \
    "smlad    r12, r8, r9, r12\n\t" \
    "smlad    r12, r6, r10, r12\n\t" \
    "ldrd     r9, r10, [%[k], #(%c[wo]+8+" #J "*16)]\n\t" \
    "smlad    r11, r5, r9, r11\n\t" \
    "smlad    r11, r4, r10, r11\n\t" \
    "smlad    lr, r8, r9, lr\n\t" \
    "smlad    lr, r6, r10, lr\n\t"

#define PWS_TILES(GROUPS) \
    __asm__ volatile( \
        "1:\n\t" \
        "ldrd     %[a0], r11, [%[k]]\n\t" \
        "mov      r12, %[a0]\n\t" \
        "mov      lr, r11\n\t" \
        GROUPS \
        "ldrd     r4, r5, [%[k], #8]\n\t" \
        "ldrd     r6, r8, [%[k], #16]\n\t" \
        TMP_ASM_RQ_NEG("%[a0]") TMP_ASM_RQ_NEG("r12") \
        "ldrd     r4, r5, [%[k], #24]\n\t" \
        "ldrd     r6, r8, [%[k], #32]\n\t" \
        TMP_ASM_RQ_NEG("r11") TMP_ASM_RQ_NEG("lr") \
        "ldrd     r4, r5, [%[k], #40]\n\t" \
        "ldr      r6, [%[k], #48]\n\t" \
        "qadd     %[a0], %[a0], r4\n\t" \
        "qadd     r11, r11, r4\n\t" \
        "qadd     r12, r12, r4\n\t" \
        "qadd     lr, lr, r4\n\t" \
        "ssat     %[a0], #8, %[a0]\n\t" \
        "ssat     r11, #8, r11\n\t" \
        "ssat     r12, #8, r12\n\t" \
        "ssat     lr, #8, lr\n\t" \
        "uxtb     r8, %[a0]\n\t" \
        "bfi      r8, r11, #8, #8\n\t" \
        "bfi      r8, r12, #16, #8\n\t" \
        "bfi      r8, lr, #24, #8\n\t" \
        "ssub8    r9, r8, r5\n\t" \
        "sel      r8, r8, r5\n\t" \
        "ssub8    r9, r8, r6\n\t" \
        "sel      r8, r6, r8\n\t" \
        "ldr      r9, [%[k], %[oco]]\n\t" \
        "strh     r8, [%[d]]\n\t" \
        "lsrs     r8, r8, #16\n\t" \
        "strh     r8, [%[d], r9]\n\t" \
        "add      %[d], %[d], r9, lsl #1\n\t" \
        "add      %[xa], %[xa], %[step]\n\t" \
        "ldr      r9, [%[k], %[xeo]]\n\t" \
        "cmp      %[xa], r9\n\t" \
        "bne      1b" \
        : [xa] "+r"(xa), [d] "+r"(dst), [a0] "=&r"(a0) \
        : [k] "r"(s), [step] "I"(PWS_STEP), [wo] "i"(offsetof(pw_small, w)), \
          [oco] "i"(offsetof(pw_small, oc)), [xeo] "i"(offsetof(pw_small, xend)), "m"(*s) \
        : "cc", "memory", "r4", "r5", "r6", "r8", "r9", "r10", "r11", "r12", "lr")

/* The outputs (pixels 0 .. 2 * floor(npix / 2) - 1) x (o, o + 1) of a layer with in.c = 4 * ng,
 * ng in {2, 4, 6}: tiles of 2 pixels x 2 channels, s prepared. */
static TMP_NOINLINE void pw_small_tiles(const pw_small *s, int32_t ng, const int8_t *xa,
    int8_t *dst) {
    int32_t a0;
    switch (ng) {
    case 2:
#define PWS_STEP 16
        PWS_TILES(PWS_GROUP(0, 8) PWS_GROUP(1, 8));
#undef PWS_STEP
        break;
    case 4:
#define PWS_STEP 32
        PWS_TILES(PWS_GROUP(0, 16) PWS_GROUP(1, 16) PWS_GROUP(2, 16) PWS_GROUP(3, 16));
#undef PWS_STEP
        break;
    default:
#define PWS_STEP 48
        PWS_TILES(PWS_GROUP(0, 24) PWS_GROUP(1, 24) PWS_GROUP(2, 24) PWS_GROUP(3, 24)
            PWS_GROUP(4, 24) PWS_GROUP(5, 24));
#undef PWS_STEP
        break;
    }
    (void)a0;
}

/* 1 when the small-input path takes the layer: in.c = 8, 16 or 24, an even number of pixels and
 * of output channels, every shift <= -1 (then every tile is a pair of distinct channels and two
 * distinct pixels, and the requantisation is pw_out_neg_asm()'s). */
static int pw_small_ok(const tmp_per_channel_quant *q, int32_t ic, int32_t oc, int32_t npix) {
    if (!(ic == 8 || ic == 16 || ic == 24) || (npix & 1) != 0 || (oc & 1) != 0) {
        return 0;
    }
    for (int32_t o = 0; o < oc; o++) {
        if (q->shift[o] > -1) {
            return 0;
        }
    }
    return 1;
}

/* The layer through pw_small_tiles(), one output-channel pair at a time (pw_small_ok()). The
 * rows are widened into the scratch as on the other paths (so that it is all written), then
 * copied next to the constants. */
static TMP_NOINLINE void pwconv_dsp_small(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *in_dims, const int8_t *in, const int8_t *weights, const int32_t *bias,
    const tmp_dims *out_dims, int8_t *out, int32_t *wbuf) {
    const int32_t ic = in_dims->c;
    const int32_t oc = out_dims->c;
    const int32_t ng = ic >> 2;
    pw_small s;
    s.oc = oc;
    s.xend = in + (size_t)(in_dims->h * in_dims->w) * (size_t)ic;
    for (int32_t o = 0; o < oc; o += 2) {
        pw_pair_prep(&s.k, p, q, weights, bias, ic, o, o + 1, wbuf, 0);
        memcpy(s.w, wbuf, 16u * (size_t)ng);
        pw_small_tiles(&s, ng, in, out + o);
    }
}

/* Output channels in pairs (outer loop), then pixels in pairs: 2 x 2 outputs per pass over the
 * input channels. Both rows of the pair are widened once into the scratch (4 words per 4 input
 * channels); each pixel's 4 input bytes are widened with SXTB16 and feed 4 SMLAD (18 instructions
 * per 16 MACs, loop control included, no register spilled on the M7 with GCC 12 -O2). Used when
 * the widened input block does not fit (pw_xblock_pixels() == 0). */
static TMP_NOINLINE void pwconv_dsp(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *in_dims, const int8_t *in, const int8_t *weights, const int32_t *bias,
    const tmp_dims *out_dims, int8_t *out, int32_t *wbuf) {
    const int32_t ic = in_dims->c;
    const int32_t oc = out_dims->c;
    const int32_t npix = in_dims->h * in_dims->w;
    const int32_t ng = ic >> 2;
    const int32_t tail = ic & 3;
    const int32_t out_off = p->output_offset;
    const uint32_t lo4 = tmp_pack8x4(p->act_min);
    const uint32_t hi4 = tmp_pack8x4(p->act_max);
    for (int32_t o = 0; o < oc; o += 2) {
        /* an odd last channel is paired with itself and stored once */
        const int32_t o1 = o + 1 < oc ? o + 1 : o;
        pw_pair k;
        pw_pair_prep(&k, p, q, weights, bias, ic, o, o1, wbuf, 0);
        const int16_t *wt = (const int16_t *)(wbuf + 4 * ng);
        for (int32_t n = 0; n < npix; n += 2) {
            /* an odd last pixel is paired with itself (same result twice, same place) */
            const int8_t *xa = in + (size_t)n * (size_t)ic;
            const int8_t *xb = n + 1 < npix ? xa + ic : xa;
            int8_t *dst_a = out + (size_t)n * (size_t)oc + (size_t)o;
            int8_t *dst_b = n + 1 < npix ? dst_a + oc : dst_a;
            int32_t a0 = k.c0, a1 = k.c1, b0 = k.c0, b1 = k.c1;
            const int32_t *wx = wbuf;
            for (int32_t g = ng; g > 0; g--) {
                int32_t u02, u13, v02, v13;
                wx = tmp_ld2w(wx, &u02, &u13);
                const int32_t va = tmp_ld4(xa);
                xa += 4;
                const int32_t xa02 = tmp_sxtb16(va);
                const int32_t xa13 = tmp_sxtb16_ror8(va);
                a0 = tmp_smlad(xa02, u02, a0);
                a0 = tmp_smlad(xa13, u13, a0);
                wx = tmp_ld2w(wx, &v02, &v13);
                a1 = tmp_smlad(xa02, v02, a1);
                a1 = tmp_smlad(xa13, v13, a1);
                const int32_t vb = tmp_ld4(xb);
                xb += 4;
                const int32_t xb02 = tmp_sxtb16(vb);
                const int32_t xb13 = tmp_sxtb16_ror8(vb);
                b0 = tmp_smlad(xb02, u02, b0);
                b0 = tmp_smlad(xb13, u13, b0);
                b1 = tmp_smlad(xb02, v02, b1);
                b1 = tmp_smlad(xb13, v13, b1);
            }
            pw_tile_end(&k, a0, a1, b0, b1, xa, xb, wt, tail, out_off, lo4, hi4, dst_a, dst_b,
                o1 != o);
        }
    }
}

/* a0 += xa . u, a1 += xa . v, b0 += xb . u, b1 += xb . v over the groups of 4 input channels,
 * x: the pixel pair's widened groups [xa02, xa13, xb02, xb13], w: the channel pair's
 * [u02, u13, v02, v13], x_end: x past its last group (at least one group). 13 instructions per
 * 16 MACs: one LDM, two LDRD, 8 SMLAD, the loop test. */
PW_INLINE void pw_dot_2x2_wide(const int32_t *x, const int32_t *x_end, const int32_t *w,
    int32_t *a0, int32_t *a1, int32_t *b0, int32_t *b1) {
    int32_t ra0 = *a0, ra1 = *a1, rb0 = *b0, rb1 = *b1;
    __asm__ volatile(
        "1:\n\t"
        "ldmia    %[x]!, {r4, r5, r6, r8}\n\t"
        "ldrd     r9, r10, [%[w]], #8\n\t"
        "smlad    %[a0], r4, r9, %[a0]\n\t"
        "smlad    %[a0], r5, r10, %[a0]\n\t"
        "smlad    %[b0], r6, r9, %[b0]\n\t"
        "smlad    %[b0], r8, r10, %[b0]\n\t"
        "ldrd     r9, r10, [%[w]], #8\n\t"
        "smlad    %[a1], r4, r9, %[a1]\n\t"
        "smlad    %[a1], r5, r10, %[a1]\n\t"
        "smlad    %[b1], r6, r9, %[b1]\n\t"
        "smlad    %[b1], r8, r10, %[b1]\n\t"
        "cmp      %[x], %[xe]\n\t"
        "bne      1b"
        : [x] "+r"(x), [w] "+r"(w), [a0] "+r"(ra0), [a1] "+r"(ra1), [b0] "+r"(rb0),
          [b1] "+r"(rb1)
        : [xe] "r"(x_end)
        : "cc", "memory", "r4", "r5", "r6", "r8", "r9", "r10");
    *a0 = ra0;
    *a1 = ra1;
    *b0 = rb0;
    *b1 = rb1;
}

/* The tiles of one output-channel pair over one block of np pixels (np >= 1) starting at pixel
 * n0: xbuf holds the block's widened pixel pairs, wbuf the pair's widened rows (k prepared).
 * Running pointers; out of line so that the compiler allocates its registers on its own. */
static TMP_NOINLINE void pw_wide_tiles(const pw_pair *k, const tmp_conv_params *p,
    const int8_t *in, int32_t ic, int8_t *out, int32_t oc, const int32_t *xbuf,
    const int32_t *wbuf, int32_t n0, int32_t np, int32_t o, int two) {
    const int32_t ng = ic >> 2;
    const int32_t tail = ic & 3;
    const int16_t *wt = (const int16_t *)(wbuf + 4 * ng);
    const size_t pair_words = 4u * (size_t)ng;
    const int32_t out_off = p->output_offset;
    const uint32_t lo4 = tmp_pack8x4(p->act_min);
    const uint32_t hi4 = tmp_pack8x4(p->act_max);
    const int8_t *xa = in + (size_t)n0 * (size_t)ic + 4 * (size_t)ng; /* the tail's inputs */
    int8_t *dst = out + (size_t)n0 * (size_t)oc + (size_t)o;
    const int32_t *xp = xbuf;
    for (int32_t left = np; left > 0; left -= 2) {
        /* an odd last pixel is paired with itself (same result twice, same place) */
        const int32_t step_x = left > 1 ? ic : 0;
        const int32_t step_d = left > 1 ? oc : 0;
        int32_t a0 = k->c0, a1 = k->c1, b0 = k->c0, b1 = k->c1;
        pw_dot_2x2_wide(xp, xp + pair_words, wbuf, &a0, &a1, &b0, &b1);
        xp += pair_words;
        pw_tile_end(k, a0, a1, b0, b1, xa, xa + step_x, wt, tail, out_off, lo4, hi4, dst,
            dst + step_d, two);
        xa += 2 * (size_t)ic;
        dst += 2 * (size_t)oc;
    }
}

/* The same outputs with the input widened too: pixels in blocks of nb (pw_xblock_pixels()),
 * each block widened once into xbuf as pixel pairs [xa02, xa13, xb02, xb13] per group of 4
 * input channels, the input offset added (SXTAB16), then read by every output-channel pair (13 instructions per 16 MACs instead
 * of 18). The first block holds nb pixels or all of them (nb is even, the last odd pixel is
 * paired with itself), so it writes all of xbuf. */
static TMP_NOINLINE void pwconv_dsp_wide(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *in_dims, const int8_t *in, const int8_t *weights, const int32_t *bias,
    const tmp_dims *out_dims, int8_t *out, int32_t *wbuf, int32_t *xbuf, int32_t nb) {
    const int32_t ic = in_dims->c;
    const int32_t oc = out_dims->c;
    const int32_t npix = in_dims->h * in_dims->w;
    const int32_t ng = ic >> 2;
    const int32_t off2 = tmp_pack16x2(p->input_offset); /* |x + offset| <= 255 */
    for (int32_t n0 = 0; n0 < npix; n0 += nb) {
        const int32_t left = npix - n0;
        const int32_t np = left < nb ? left : nb; /* pixels in this block */
        int32_t *xw = xbuf;
        for (int32_t j = 0; j < np; j += 2) {
            const int8_t *xa = in + (size_t)(n0 + j) * (size_t)ic;
            const int8_t *xb = j + 1 < np ? xa + ic : xa;
            for (int32_t g = 0; g < ng; g++) {
                const int32_t va = tmp_ld4(xa + 4 * g);
                const int32_t vb = tmp_ld4(xb + 4 * g);
                xw[0] = tmp_sxtab16(off2, va);
                xw[1] = tmp_sxtab16_ror8(off2, va);
                xw[2] = tmp_sxtab16(off2, vb);
                xw[3] = tmp_sxtab16_ror8(off2, vb);
                xw += 4;
            }
        }
        for (int32_t o = 0; o < oc; o += 2) {
            const int32_t o1 = o + 1 < oc ? o + 1 : o;
            pw_pair k;
            pw_pair_prep(&k, p, q, weights, bias, ic, o, o1, wbuf, 1);
            pw_wide_tiles(&k, p, in, ic, out, oc, xbuf, wbuf, n0, np, o, o1 != o);
        }
    }
}
#else
/* *sa = sum a[i] * w[i], *sb = sum b[i] * w[i], i < n. */
static void pwconv_dot2_s16_s8(const int16_t *a, const int16_t *b, const int8_t *w, int32_t n,
    int32_t *sa, int32_t *sb) {
    int32_t x = 0, y = 0;
    int32_t i = 0;
    for (; i + 2 <= n; i += 2) {
        x += (int32_t)a[i] * w[i] + (int32_t)a[i + 1] * w[i + 1];
        y += (int32_t)b[i] * w[i] + (int32_t)b[i + 1] * w[i + 1];
    }
    for (; i < n; i++) {
        x += (int32_t)a[i] * w[i];
        y += (int32_t)b[i] * w[i];
    }
    *sa = x;
    *sb = y;
}
#endif

tmp_status tmp_pwconv_s8(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *in_dims, const int8_t *in,
    const int8_t *weights, const int32_t *bias,
    const tmp_dims *out_dims, int8_t *out, void *scratch) {
    if (p == NULL || q == NULL || q->multiplier == NULL || q->shift == NULL || in_dims == NULL ||
        in == NULL || weights == NULL || out_dims == NULL || out == NULL || scratch == NULL ||
        ((uintptr_t)scratch & 3u) != 0) {
        return TMP_ERR_ARG;
    }
    if (!tmp_dims_ok(in_dims) || !tmp_dims_ok(out_dims) ||
        out_dims->h != in_dims->h || out_dims->w != in_dims->w ||
        in_dims->c > INT32_MAX / (2 * (int32_t)sizeof(int16_t)) - PW_XBLOCK_BYTES ||
        p->stride_h != 1 || p->stride_w != 1 || p->pad_t != 0 || p->pad_l != 0 ||
        p->input_offset < -127 || p->input_offset > 128 ||
        p->output_offset < -128 || p->output_offset > 127 ||
        p->act_min < -128 || p->act_max > 127 || p->act_min > p->act_max) {
        return TMP_ERR_ARG;
    }
    const int32_t ic = in_dims->c;
    const int32_t oc = out_dims->c;
    const int32_t *mult = q->multiplier;
    const int32_t *shift = q->shift;
    for (int32_t o = 0; o < oc; o++) {
        if (mult[o] < 0 || shift[o] < -31 || shift[o] > 30) {
            return TMP_ERR_ARG;
        }
    }

    const int32_t nb = pw_xblock_pixels(in_dims, out_dims);
#if TMP_DSP
    if (pw_small_ok(q, ic, oc, in_dims->h * in_dims->w)) {
        /* the block (if any) is not used: written all the same (the painted high water) */
        memset((int32_t *)scratch + ic, 0, 2u * (size_t)nb * (size_t)(ic & ~3));
        pwconv_dsp_small(p, q, in_dims, in, weights, bias, out_dims, out, (int32_t *)scratch);
    } else if (nb > 0) {
        pwconv_dsp_wide(p, q, in_dims, in, weights, bias, out_dims, out, (int32_t *)scratch,
            (int32_t *)scratch + ic, nb);
    } else {
        pwconv_dsp(p, q, in_dims, in, weights, bias, out_dims, out, (int32_t *)scratch);
    }
#else
    /* the widened input block is the DSP path's; written here too (the painted high water) */
    memset((int32_t *)scratch + ic, 0, 2u * (size_t)nb * (size_t)(ic & ~3));
    /* pixels in pairs (an odd last one paired with itself), both widened into the scratch */
    int16_t *pa = (int16_t *)scratch;
    int16_t *pb = pa + ic;
    const int32_t npix = in_dims->h * in_dims->w;
    for (int32_t n = 0; n < npix; n += 2) {
        const int8_t *xa = in + (size_t)n * (size_t)ic;
        const int8_t *xb = n + 1 < npix ? xa + ic : xa;
        int8_t *da = out + (size_t)n * (size_t)oc;
        int8_t *db = n + 1 < npix ? da + oc : da;
        for (int32_t i = 0; i < ic; i++) {
            pa[i] = (int16_t)(xa[i] + p->input_offset);
            pb[i] = (int16_t)(xb[i] + p->input_offset);
        }
        const int8_t *w = weights;
        for (int32_t o = 0; o < oc; o++) {
            int32_t acc_a, acc_b;
            pwconv_dot2_s16_s8(pa, pb, w, ic, &acc_a, &acc_b);
            if (bias != NULL) {
                acc_a += bias[o];
                acc_b += bias[o];
            }
            db[o] = tmp_clamp_out(tmp_requant(acc_b, mult[o], shift[o]), p->output_offset,
                p->act_min, p->act_max);
            da[o] = tmp_clamp_out(tmp_requant(acc_a, mult[o], shift[o]), p->output_offset,
                p->act_min, p->act_max);
            w += ic;
        }
    }
#endif
    return TMP_OK;
}
