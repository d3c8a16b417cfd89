/**
 * @file tmp_conv_s8.c
 * @brief Standard int8 convolution, kh x kw, any stride and padding (TFLite int8 semantics).
 *
 * For every output pixel (y, x) and output channel o (docs/KERNELS.md, "Convolution"):
 *
 *     iy = y*stride_h - pad_t + u,  ix = x*stride_w - pad_l + v
 *     acc = bias[o] + sum over u < kh, v < kw, i < in.c with (iy, ix) inside the input of
 *           (in[iy][ix][i] + input_offset) * w[o][u][v][i]
 *     out[y][x][o] = clamp(requant(acc, mult[o], shift[o]) + output_offset, act_min, act_max)
 *
 * Positions outside the input contribute nothing (the same as padding with the input zero point).
 *
 * Layouts (int8 unless noted): in [in.h][in.w][in.c], weights [out.c][kh][kw][in.c],
 * bias int32 [out.c] (NULL = zero), out [out.h][out.w][out.c]. `out` must not overlap `in`.
 *
 * Two paths, chosen from the shapes alone (conv_block_pixels(), the same on every build, so the
 * scratch size and the plan do not depend on the build):
 *  - patch blocks (short patches on layers that are not tiny, conv_block_pixels(); the usual
 *    case: a first layer's 3x3x3 patch is 27 bytes): the int8 im2col patches of a block of up to
 *    CONV_BLOCK_PIX consecutive output pixels, with the input zero point at padding positions,
 *    are a 1 x nb x (kh*kw*in.c) map, and the convolution of the block is the pointwise
 *    convolution of that map with the same weights, bias and requantisation (tmp_pwconv_s8):
 *    a zero-point byte x gives x + input_offset = 0, so padding still contributes nothing. The
 *    pointwise kernel's DSP path then widens each weight pair once per block, not once per
 *    pixel. Scratch: the block, then the pointwise kernel's scratch;
 *  - one patch at a time (long patches): the im2col patch of one output pixel as int16 in the
 *    weights' [kh][kw][in.c] order, with the input offset already added and 0 at padding
 *    positions, so that each output channel is one plain int16 x int8 dot product
 *    (conv_dot_s16_s8()). The DSP path (TMP_DSP, Cortex-M4/M7) then reorders each group of 4
 *    patch values to the SXTB16 lane order (p0,p2)(p1,p3) (tmp_dsp.h) and computes 2 output
 *    channels per pass over the patch with SMLAD. Scratch: 2 * kh * kw * in.c bytes.
 *
 * Preconditions not checked (guaranteed by the model format): |bias[o]| <= 2^31 - 1 - 32640*L
 * with L = kh*kw*in.c, so the int32 accumulator cannot overflow.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "../tmp_kernels.h"
#include "tmp_dsp.h"

/* Patch length kh*kw*in.c, or -1 when invalid or its int16 buffer would not fit an int32 size. */
static int32_t conv_patch_len(const tmp_dims *in, const tmp_filter_dims *f) {
    if (in->c < 1 || f->kh < 1 || f->kw < 1) {
        return -1;
    }
    int64_t len = (int64_t)f->kh * f->kw * in->c;
    if (len > INT32_MAX / (int32_t)sizeof(int16_t)) {
        return -1;
    }
    return (int32_t)len;
}

/* Output pixels per block of the patch-block path, or 0 for the one-patch path: blocks of
 * CONV_BLOCK_PIX pixels or as many as fit in CONV_BLOCK_BYTES and in a quarter of the layer's
 * input and output bytes (so the block never dominates a small layer's memory: a CNN's peak is
 * at its large maps), at least CONV_BLOCK_MIN pixels (fewer would widen the weights too often
 * for too few pixels) unless that is every pixel. A function of the shapes only, the same on
 * every build. */
#define CONV_BLOCK_PIX 32
#define CONV_BLOCK_BYTES 1024
#define CONV_BLOCK_MIN 8
static int32_t conv_block_pixels(int32_t len, const tmp_dims *in, const tmp_dims *out) {
    if (len < 1 || in->h < 1 || in->w < 1 || in->c < 1 || out->h < 1 || out->w < 1 ||
        out->c < 1 || (int64_t)out->h * out->w > INT32_MAX) {
        return 0;
    }
    /* 32-bit divisions only (natmod links no libgcc); the layer's bytes only matter below 4 KiB */
    const int32_t npix = out->h * out->w;
    const int64_t layer = (int64_t)in->h * in->w * in->c + (int64_t)npix * out->c;
    const int32_t cap = layer < 4 * CONV_BLOCK_BYTES ? (int32_t)layer / 4 : CONV_BLOCK_BYTES;
    int32_t b = cap / len;
    if (b > CONV_BLOCK_PIX) {
        b = CONV_BLOCK_PIX;
    }
    if (b >= npix) {
        return npix;
    }
    return b >= CONV_BLOCK_MIN ? b : 0;
}

/* The pointwise kernel's scratch for a block of n pixels of patches of len bytes. */
static int32_t conv_block_pw_bytes(int32_t n, int32_t len, int32_t oc) {
    const tmp_dims bi = { 1, n, len }, bo = { 1, n, oc };
    return tmp_pwconv_s8_get_buffer_size(&bi, &bo);
}

/* Bytes of the block itself (4-byte aligned, so the pointwise scratch after it is too). */
static int32_t conv_block_bytes(int32_t nb, int32_t len) {
    return (nb * len + 3) & ~3;
}

int32_t tmp_conv_s8_get_buffer_size(const tmp_dims *in, const tmp_filter_dims *f, const tmp_dims *out) {
    if (in == NULL || f == NULL || out == NULL) {
        return 0;
    }
    int32_t len = conv_patch_len(in, f);
    if (len < 0) {
        return 0;
    }
    const int32_t nb = conv_block_pixels(len, in, out);
    if (nb == 0) {
        return len * (int32_t)sizeof(int16_t);
    }
    /* the pointwise scratch of a whole block or of the last, shorter one, whichever is larger */
    int32_t pw = conv_block_pw_bytes(nb, len, out->c);
    const int32_t last = (out->h * out->w) % nb; /* fits: nb > 0 */
    if (last > 0 && conv_block_pw_bytes(last, len, out->c) > pw) {
        pw = conv_block_pw_bytes(last, len, out->c);
    }
    return pw > 0 ? conv_block_bytes(nb, len) + pw : 0;
}

#if !TMP_DSP
/* sum a[i] * b[i], i < n. */
static int32_t conv_dot_s16_s8(const int16_t *a, const int8_t *b, int32_t n) {
    int32_t acc = 0;
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        acc += (int32_t)a[i] * b[i] + (int32_t)a[i + 1] * b[i + 1] + (int32_t)a[i + 2] * b[i + 2] +
            (int32_t)a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) {
        acc += (int32_t)a[i] * b[i];
    }
    return acc;
}
#endif

/* dst[i] = src[i] + in_off, i < n */
static void conv_copy_s16(int16_t *dst, const int8_t *src, int32_t n, int32_t in_off) {
    int32_t i = 0;
#if TMP_DSP
    const int32_t offp = tmp_pack16x2(in_off);
    for (; i + 4 <= n; i += 4) {
        const int32_t x4 = tmp_ld4(src + i);
        const uint32_t a = (uint32_t)tmp_sxtab16(offp, x4);      /* (x0, x2) */
        const uint32_t b = (uint32_t)tmp_sxtab16_ror8(offp, x4); /* (x1, x3) */
        tmp_st4(dst + i, (int32_t)((a & 0xFFFFu) | (b << 16)));
        tmp_st4(dst + i + 2, (int32_t)((b & 0xFFFF0000u) | (a >> 16)));
    }
#endif
    for (; i < n; i++) {
        dst[i] = (int16_t)(src[i] + in_off);
    }
}

/* dst[i] = src[i], i < n: words (a memcpy of 4 bytes, which compilers turn into one load and
 * one store where unaligned access is allowed), then bytes. Inline: a patch row is a few bytes,
 * and a library memcpy call costs more than the copy. */
static inline void conv_copy_s8(int8_t *dst, const int8_t *src, int32_t n) {
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint32_t v;
        memcpy(&v, src + i, 4);
        memcpy(dst + i, &v, 4);
    }
    for (; i < n; i++) {
        dst[i] = src[i];
    }
}

/* The int8 [kh][kw][ic] patch whose top-left input position is (iy0, ix0), zp at padding. */
static void conv_im2col_s8(int8_t *col, const int8_t *in, const tmp_dims *d, int32_t iy0,
    int32_t ix0, int32_t kh, int32_t kw, int8_t zp) {
    const int32_t ic = d->c;
    const int32_t v_lo = ix0 < 0 ? -ix0 : 0;
    const int32_t v_hi = ix0 + kw > d->w ? d->w - ix0 : kw;
    const int32_t row_len = kw * ic;
    for (int32_t u = 0; u < kh; u++) {
        const int32_t iy = iy0 + u;
        if (iy < 0 || iy >= d->h || v_lo >= v_hi) {
            memset(col, zp, (size_t)row_len);
        } else {
            const int8_t *src = in + ((size_t)iy * (size_t)d->w + (size_t)(ix0 + v_lo)) * (size_t)ic;
            const int32_t n = (v_hi - v_lo) * ic;
            if (v_lo > 0) {
                memset(col, zp, (size_t)(v_lo * ic));
            }
            conv_copy_s8(col + v_lo * ic, src, n);
            if (v_hi < kw) {
                memset(col + v_lo * ic + n, zp, (size_t)((kw - v_hi) * ic));
            }
        }
        col += row_len;
    }
}

/* The int16 [kh][kw][ic] patch with the input offset added (0 at padding): the int8 patch in
 * the upper half of col's 2 * len bytes, then widened in place from the front. Element i is
 * written to bytes [2i, 2i+2) after source bytes up to len + i (+3 in a group of 4) are read,
 * and 2i + 7 < len + i + 4 for every group (i + 4 <= len), so no unread byte is overwritten. */
static void conv_im2col(int16_t *col, const int8_t *in, const tmp_dims *d, int32_t iy0, int32_t ix0,
    int32_t kh, int32_t kw, int32_t len, int32_t in_off) {
    int8_t *b = (int8_t *)col + len;
    conv_im2col_s8(b, in, d, iy0, ix0, kh, kw, (int8_t)(-in_off));
    conv_copy_s16(col, b, len, in_off);
}

/* The patch-block path (see the file comment): blocks of nb output pixels in raster order. */
static tmp_status conv_blocks(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *in_dims, const int8_t *in, const tmp_filter_dims *f, const int8_t *weights,
    const int32_t *bias, const tmp_dims *out_dims, int8_t *out, int8_t *col, int32_t len,
    int32_t nb) {
    void *pws = col + conv_block_bytes(nb, len);
    /* the same requantisation and offsets; stride 1 and no padding over the patch map */
    const tmp_conv_params pp = { p->input_offset, p->output_offset, 1, 1, 0, 0, p->act_min,
        p->act_max };
    const int8_t zp = (int8_t)(-p->input_offset);
    const int32_t npix = out_dims->h * out_dims->w, oc = out_dims->c;
    int32_t y = 0, x = 0;
    for (int32_t n0 = 0; n0 < npix; n0 += nb) {
        const int32_t cnt = npix - n0 < nb ? npix - n0 : nb;
        int8_t *c = col;
        for (int32_t k = 0; k < cnt; k++) {
            conv_im2col_s8(c, in, in_dims, y * p->stride_h - p->pad_t, x * p->stride_w - p->pad_l,
                f->kh, f->kw, zp);
            c += len;
            if (++x == out_dims->w) {
                x = 0;
                y++;
            }
        }
        const tmp_dims bi = { 1, cnt, len }, bo = { 1, cnt, oc };
        const tmp_status s = tmp_pwconv_s8(&pp, q, &bi, col, weights, bias, &bo,
            out + (size_t)n0 * (size_t)oc, pws);
        if (s != TMP_OK) {
            return s;
        }
    }
    return TMP_OK;
}

#if TMP_DSP
/* Reorder every whole group of 4 patch values (p0,p1,p2,p3) to the words (p0,p2), (p1,p3). */
static void conv_dsp_reorder(int16_t *col, int32_t len) {
    uint32_t *w = (uint32_t *)(void *)col;
    for (int32_t g = len >> 2; g > 0; g--) {
        const uint32_t a = w[0]; /* (p0, p1) */
        const uint32_t b = w[1]; /* (p2, p3) */
        w[0] = (a & 0xFFFFu) | (b << 16);
        w[1] = (b & 0xFFFF0000u) | (a >> 16);
        w += 2;
    }
}

/* All output channels of one pixel from its reordered patch, 2 channels per pass. */
static void conv_dsp_pixel(const int16_t *col, int32_t len, const int8_t *weights,
    const int32_t *bias, const tmp_per_channel_quant *q, int32_t oc, int32_t out_off, uint32_t lo4,
    uint32_t hi4, int8_t *dst) {
    const int32_t ng = len >> 2;
    const int32_t tail = len & 3;
    const int16_t *xt = col + 4 * ng;
    for (int32_t o = 0; o < oc; o += 2) {
        const int32_t o1 = o + 1 < oc ? o + 1 : o;
        const int8_t *w0 = weights + (size_t)o * (size_t)len;
        const int8_t *w1 = weights + (size_t)o1 * (size_t)len;
        int32_t a0 = 0, a1 = 0;
        if (bias != NULL) {
            a0 = bias[o];
            a1 = bias[o1];
        }
        const int32_t *x = (const int32_t *)(const void *)col;
        for (int32_t g = ng; g > 0; g--) {
            int32_t x02, x13;
            x = tmp_ld2w(x, &x02, &x13);
            const int32_t wa = tmp_ld4(w0);
            const int32_t wb = tmp_ld4(w1);
            w0 += 4;
            w1 += 4;
            a0 = tmp_smlad(x02, tmp_sxtb16(wa), a0);
            a0 = tmp_smlad(x13, tmp_sxtb16_ror8(wa), a0);
            a1 = tmp_smlad(x02, tmp_sxtb16(wb), a1);
            a1 = tmp_smlad(x13, tmp_sxtb16_ror8(wb), a1);
        }
        if (tail > 0) {
            a0 = tmp_smlabb(xt[0], w0[0], a0);
            a1 = tmp_smlabb(xt[0], w1[0], a1);
            if (tail > 1) {
                a0 = tmp_smlabb(xt[1], w0[1], a0);
                a1 = tmp_smlabb(xt[1], w1[1], a1);
                if (tail > 2) {
                    a0 = tmp_smlabb(xt[2], w0[2], a0);
                    a1 = tmp_smlabb(xt[2], w1[2], a1);
                }
            }
        }
        const int32_t s0 = q->shift[o];
        const int32_t s1 = q->shift[o1];
        int32_t t0, t1;
        if (s0 <= -1 && s1 <= -1) { /* the usual case: one 64-bit step each */
            int32_t klo, khi, sh;
            tmp_rq_prep_neg(s0, &klo, &khi, &sh);
            t0 = tmp_rq_neg(a0, q->multiplier[o], klo, khi, sh);
            tmp_rq_prep_neg(s1, &klo, &khi, &sh);
            t1 = tmp_rq_neg(a1, q->multiplier[o1], klo, khi, sh);
        } else {
            t0 = tmp_rq_apply(a0, tmp_rq_prep(q->multiplier[o], s0));
            t1 = tmp_rq_apply(a1, tmp_rq_prep(q->multiplier[o1], s1));
        }
        const int32_t r0 = tmp_ssat8(tmp_qadd(t0, out_off));
        const int32_t r1 = tmp_ssat8(tmp_qadd(t1, out_off));
        const uint32_t v2 = tmp_clamp8x4(tmp_pack4(r0, r1, 0, 0), lo4, hi4);
        if (o1 != o) {
            const uint16_t h = (uint16_t)v2;
            memcpy(dst + o, &h, 2);
        } else {
            dst[o] = (int8_t)v2;
        }
    }
}
#endif

tmp_status tmp_conv_s8(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *in_dims, const int8_t *in,
    const tmp_filter_dims *f, const int8_t *weights, const int32_t *bias,
    const tmp_dims *out_dims, int8_t *out, void *scratch) {
    if (p == NULL || q == NULL || q->multiplier == NULL || q->shift == NULL || in_dims == NULL ||
        in == NULL || f == NULL || weights == NULL || out_dims == NULL || out == NULL ||
        scratch == NULL || ((uintptr_t)scratch & 3u) != 0) {
        return TMP_ERR_ARG;
    }
    if (!tmp_dims_ok(in_dims) || !tmp_dims_ok(out_dims) ||
        !tmp_conv_axis_ok(in_dims->h, out_dims->h, f->kh, p->stride_h, p->pad_t) ||
        !tmp_conv_axis_ok(in_dims->w, out_dims->w, f->kw, p->stride_w, p->pad_l) ||
        p->input_offset < -127 || p->input_offset > 128 ||
        p->output_offset < -128 || p->output_offset > 127 ||
        p->act_min < -128 || p->act_max > 127 || p->act_min > p->act_max) {
        return TMP_ERR_ARG;
    }
    const int32_t patch_len = conv_patch_len(in_dims, f);
    if (patch_len < 0 || !tmp_quant_ok(q, out_dims->c)) {
        return TMP_ERR_ARG;
    }

    const int32_t nb = conv_block_pixels(patch_len, in_dims, out_dims);
    if (nb > 0) {
        return conv_blocks(p, q, in_dims, in, f, weights, bias, out_dims, out, (int8_t *)scratch,
            patch_len, nb);
    }
    const int32_t oc = out_dims->c;
    const int32_t *mult = q->multiplier;
    const int32_t *shift = q->shift;
    int16_t *col = (int16_t *)scratch;
    int8_t *dst = out;

    for (int32_t y = 0; y < out_dims->h; y++) {
        const int32_t iy0 = y * p->stride_h - p->pad_t;
        for (int32_t x = 0; x < out_dims->w; x++) {
            const int32_t ix0 = x * p->stride_w - p->pad_l;
            conv_im2col(col, in, in_dims, iy0, ix0, f->kh, f->kw, patch_len, p->input_offset);
#if TMP_DSP
            conv_dsp_reorder(col, patch_len);
            conv_dsp_pixel(col, patch_len, weights, bias, q, oc, p->output_offset,
                tmp_pack8x4(p->act_min), tmp_pack8x4(p->act_max), dst);
            (void)mult;
            (void)shift;
#else
            const int8_t *w = weights;
            for (int32_t o = 0; o < oc; o++) {
                int32_t acc = conv_dot_s16_s8(col, w, patch_len);
                if (bias != NULL) {
                    acc += bias[o];
                }
                dst[o] = tmp_clamp_out(tmp_requant(acc, mult[o], shift[o]), p->output_offset,
                    p->act_min, p->act_max);
                w += patch_len;
            }
#endif
            dst += oc;
        }
    }
    return TMP_OK;
}
