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
 * Scratch: 2 * kh * kw * in.c bytes (4-byte aligned): the im2col patch of one output pixel as
 * int16 in the weights' [kh][kw][in.c] order, with the input offset already added and 0 at
 * padding positions, so that each output channel is one plain int16 x int8 dot product
 * (conv_dot_s16_s8(), the place where an optimised inner loop goes).
 *
 * Preconditions not checked (guaranteed by the model format): |bias[o]| <= 2^31 - 1 - 32640*L
 * with L = kh*kw*in.c, so the int32 accumulator cannot overflow.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "../tmp_kernels.h"

/* One axis of the geometry: exactly the shapes out = (in + pad + pad_end - k) / stride + 1
 * (floor) for some 0 <= pad, pad_end < k, as docs/FORMAT.md allows. */
static int conv_axis_ok(int32_t in, int32_t out, int32_t k, int32_t stride, int32_t pad) {
    if (in < 1 || out < 1 || k < 1 || stride < 1 || pad < 0 || pad >= k ||
        (int64_t)in + k > INT32_MAX) {
        return 0;
    }
    /* the last window starts inside the input ... */
    if ((int64_t)(out - 1) * stride - pad > (int64_t)in - 1) {
        return 0;
    }
    /* ... and one more window would need padding at the end (no whole window left out) */
    if ((int64_t)out * stride - pad + k - 1 < (int64_t)in) {
        return 0;
    }
    return 1;
}

static int conv_dims_size_ok(const tmp_dims *d) {
    return d->h >= 1 && d->w >= 1 && d->c >= 1 && (int64_t)d->h * d->w * d->c <= INT32_MAX;
}

static int conv_quant_ok(const tmp_per_channel_quant *q, int32_t n) {
    for (int32_t o = 0; o < n; o++) {
        if (q->multiplier[o] < 0 || q->shift[o] < -31 || q->shift[o] > 30) {
            return 0;
        }
    }
    return 1;
}

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

int32_t tmp_conv_s8_get_buffer_size(const tmp_dims *in, const tmp_filter_dims *f, const tmp_dims *out) {
    (void)out;
    if (in == NULL || f == NULL) {
        return 0;
    }
    int32_t len = conv_patch_len(in, f);
    return len < 0 ? 0 : len * (int32_t)sizeof(int16_t);
}

/* sum a[i] * b[i], i < n. Swap point for an optimised (SIMD) inner loop. */
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

/* Fill `col` with the [kh][kw][ic] patch whose top-left input position is (iy0, ix0). */
static void conv_im2col(int16_t *col, const int8_t *in, const tmp_dims *d, int32_t iy0, int32_t ix0,
    int32_t kh, int32_t kw, int32_t in_off) {
    const int32_t ic = d->c;
    const int32_t v_lo = ix0 < 0 ? -ix0 : 0;
    const int32_t v_hi = ix0 + kw > d->w ? d->w - ix0 : kw;
    const int32_t row_len = kw * ic;
    for (int32_t u = 0; u < kh; u++) {
        const int32_t iy = iy0 + u;
        if (iy < 0 || iy >= d->h || v_lo >= v_hi) {
            memset(col, 0, (size_t)row_len * sizeof(int16_t));
        } else {
            /* columns v_lo .. v_hi-1 are one contiguous run of the input row */
            const int8_t *src = in + ((size_t)iy * (size_t)d->w + (size_t)(ix0 + v_lo)) * (size_t)ic;
            const int32_t n = (v_hi - v_lo) * ic;
            int16_t *dst = col + v_lo * ic;
            if (v_lo > 0) {
                memset(col, 0, (size_t)(v_lo * ic) * sizeof(int16_t));
            }
            for (int32_t i = 0; i < n; i++) {
                dst[i] = (int16_t)(src[i] + in_off);
            }
            if (v_hi < kw) {
                memset(dst + n, 0, (size_t)((kw - v_hi) * ic) * sizeof(int16_t));
            }
        }
        col += row_len;
    }
}

tmp_status tmp_conv_s8(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *in_dims, const int8_t *in,
    const tmp_filter_dims *f, const int8_t *weights, const int32_t *bias,
    const tmp_dims *out_dims, int8_t *out, void *scratch) {
    if (p == NULL || q == NULL || q->multiplier == NULL || q->shift == NULL || in_dims == NULL ||
        in == NULL || f == NULL || weights == NULL || out_dims == NULL || out == NULL ||
        scratch == NULL || ((uintptr_t)scratch & 3u) != 0) {
        return TMP_ERR_ARG;
    }
    if (!conv_dims_size_ok(in_dims) || !conv_dims_size_ok(out_dims) ||
        !conv_axis_ok(in_dims->h, out_dims->h, f->kh, p->stride_h, p->pad_t) ||
        !conv_axis_ok(in_dims->w, out_dims->w, f->kw, p->stride_w, p->pad_l) ||
        p->input_offset < -127 || p->input_offset > 128 ||
        p->output_offset < -128 || p->output_offset > 127 ||
        p->act_min < -128 || p->act_max > 127 || p->act_min > p->act_max) {
        return TMP_ERR_ARG;
    }
    const int32_t patch_len = conv_patch_len(in_dims, f);
    if (patch_len < 0 || !conv_quant_ok(q, out_dims->c)) {
        return TMP_ERR_ARG;
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
            conv_im2col(col, in, in_dims, iy0, ix0, f->kh, f->kw, p->input_offset);
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
            dst += oc;
        }
    }
    return TMP_OK;
}
