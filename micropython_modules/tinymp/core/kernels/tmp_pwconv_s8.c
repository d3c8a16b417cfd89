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
 * Scratch: 2 * in.c bytes (4-byte aligned): the current input pixel as int16 with the input
 * offset already added, so that each output channel is one plain int16 x int8 dot product
 * (pwconv_dot_s16_s8(), the place where an optimised inner loop goes).
 *
 * Preconditions not checked (guaranteed by the model format): |bias[o]| <= 2^31 - 1 - 32640*in.c,
 * so the int32 accumulator cannot overflow.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "../tmp_kernels.h"

static int pwconv_dims_size_ok(const tmp_dims *d) {
    return d->h >= 1 && d->w >= 1 && d->c >= 1 && (int64_t)d->h * d->w * d->c <= INT32_MAX;
}

int32_t tmp_pwconv_s8_get_buffer_size(const tmp_dims *in, const tmp_dims *out) {
    (void)out;
    if (in == NULL || in->c < 1 || in->c > INT32_MAX / (int32_t)sizeof(int16_t)) {
        return 0;
    }
    return in->c * (int32_t)sizeof(int16_t);
}

/* sum a[i] * b[i], i < n. Swap point for an optimised (SIMD) inner loop. */
static int32_t pwconv_dot_s16_s8(const int16_t *a, const int8_t *b, int32_t n) {
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

tmp_status tmp_pwconv_s8(const tmp_conv_params *p, const tmp_per_channel_quant *q,
    const tmp_dims *in_dims, const int8_t *in,
    const int8_t *weights, const int32_t *bias,
    const tmp_dims *out_dims, int8_t *out, void *scratch) {
    if (p == NULL || q == NULL || q->multiplier == NULL || q->shift == NULL || in_dims == NULL ||
        in == NULL || weights == NULL || out_dims == NULL || out == NULL || scratch == NULL ||
        ((uintptr_t)scratch & 3u) != 0) {
        return TMP_ERR_ARG;
    }
    if (!pwconv_dims_size_ok(in_dims) || !pwconv_dims_size_ok(out_dims) ||
        out_dims->h != in_dims->h || out_dims->w != in_dims->w ||
        in_dims->c > INT32_MAX / (int32_t)sizeof(int16_t) ||
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

    int16_t *px = (int16_t *)scratch;
    const int32_t npix = in_dims->h * in_dims->w;
    const int8_t *src = in;
    int8_t *dst = out;
    for (int32_t n = 0; n < npix; n++) {
        for (int32_t i = 0; i < ic; i++) {
            px[i] = (int16_t)(src[i] + p->input_offset);
        }
        const int8_t *w = weights;
        for (int32_t o = 0; o < oc; o++) {
            int32_t acc = pwconv_dot_s16_s8(px, w, ic);
            if (bias != NULL) {
                acc += bias[o];
            }
            dst[o] = tmp_clamp_out(tmp_requant(acc, mult[o], shift[o]), p->output_offset, p->act_min,
                p->act_max);
            w += ic;
        }
        src += ic;
        dst += oc;
    }
    return TMP_OK;
}
