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
 *  - out == in (in place): scratch of in.h * in.w bytes (any alignment). For each channel c, the
 *    channel's input plane is first gathered into the scratch, then output channel c is computed
 *    from it. Output channel c is written only to bytes whose index is c modulo the channel
 *    count, i.e. to channel-c input slots already copied, so no input still needed is ever
 *    overwritten, for any stride and padding.
 *
 * Preconditions not checked (guaranteed by the model format): |bias[c]| <= 2^31 - 1 - 32640*L
 * with L = kh*kw, so the int32 accumulator cannot overflow.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "../tmp_kernels.h"

/** Channels accumulated together per output pixel in the out-of-place path (stack: 4*DW_BLOCK). */
#define DW_BLOCK 32

/* One axis of the geometry: exactly the shapes out = (in + pad + pad_end - k) / stride + 1
 * (floor) for some 0 <= pad, pad_end < k, as docs/FORMAT.md allows. */
static int dwconv_axis_ok(int32_t in, int32_t out, int32_t k, int32_t stride, int32_t pad) {
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

static int dwconv_dims_size_ok(const tmp_dims *d) {
    return d->h >= 1 && d->w >= 1 && d->c >= 1 && (int64_t)d->h * d->w * d->c <= INT32_MAX;
}

static int dwconv_quant_ok(const tmp_per_channel_quant *q, int32_t n) {
    for (int32_t o = 0; o < n; o++) {
        if (q->multiplier[o] < 0 || q->shift[o] < -31 || q->shift[o] > 30) {
            return 0;
        }
    }
    return 1;
}

int32_t tmp_dwconv_s8_get_buffer_size(const tmp_dims *in, const tmp_filter_dims *f, const tmp_dims *out,
    int in_place) {
    (void)f;
    (void)out;
    if (!in_place || in == NULL || in->h < 1 || in->w < 1 || (int64_t)in->h * in->w > INT32_MAX) {
        return 0;
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

/* out != in: pixel by pixel, DW_BLOCK channels at a time. */
static void dwconv_out_of_place(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *id, const int8_t *in, const tmp_filter_dims *f, const int8_t *weights,
    const int32_t *bias, const tmp_dims *od, int8_t *out) {
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
            for (int32_t c0 = 0; c0 < ch; c0 += DW_BLOCK) {
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

/* out == in: channel by channel through one input plane in `plane` (in.h * in.w bytes). */
static void dwconv_in_place(const tmp_conv_params *p, const tmp_per_channel_quant *q,
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

tmp_status tmp_dwconv_s8(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *in_dims, const int8_t *in,
    const tmp_filter_dims *f, const int8_t *weights, const int32_t *bias,
    const tmp_dims *out_dims, int8_t *out, void *scratch) {
    if (p == NULL || q == NULL || q->multiplier == NULL || q->shift == NULL || in_dims == NULL ||
        in == NULL || f == NULL || weights == NULL || out_dims == NULL || out == NULL) {
        return TMP_ERR_ARG;
    }
    const int in_place = (const int8_t *)out == in;
    if ((in_place && scratch == NULL) || !dwconv_dims_size_ok(in_dims) ||
        !dwconv_dims_size_ok(out_dims) || out_dims->c != in_dims->c ||
        !dwconv_axis_ok(in_dims->h, out_dims->h, f->kh, p->stride_h, p->pad_t) ||
        !dwconv_axis_ok(in_dims->w, out_dims->w, f->kw, p->stride_w, p->pad_l) ||
        (int64_t)f->kh * f->kw * in_dims->c > INT32_MAX ||
        p->input_offset < -127 || p->input_offset > 128 ||
        p->output_offset < -128 || p->output_offset > 127 ||
        p->act_min < -128 || p->act_max > 127 || p->act_min > p->act_max ||
        !dwconv_quant_ok(q, in_dims->c)) {
        return TMP_ERR_ARG;
    }
    if (in_place) {
        dwconv_in_place(p, q, in_dims, in, f, weights, bias, out_dims, out, (int8_t *)scratch);
    } else {
        dwconv_out_of_place(p, q, in_dims, in, f, weights, bias, out_dims, out);
    }
    return TMP_OK;
}
