/**
 * @file tmp_avgpool_s8.c
 * @brief Global average pool, int8 [h][w][c] -> [c], as a requantised per-channel sum.
 *
 * For every channel c, over the P = h*w input pixels (docs/KERNELS.md, "Global average pool"):
 *
 *     acc = sum over p < P of (in[p][c] + input_offset)
 *     out[c] = clamp(requant(acc, mult, shift) + output_offset, act_min, act_max)
 *
 * where mult/shift encode s_in / (s_out * P). (Not TFLite's MEAN rounding; see the doc.)
 *
 * Layouts: in int8 [h][w][c], out int8 [c]. `out` must not overlap `in`.
 *
 * Scratch: 4 * c bytes (4-byte aligned): one int32 accumulator per channel, so that the input
 * is read once, in memory order. The sum of the raw inputs is accumulated and P * input_offset
 * added at the end (the same integer; no overflow since P * 255 <= INT32_MAX is checked).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "../tmp_kernels.h"

int32_t tmp_avgpool_s8_get_buffer_size(const tmp_dims *in) {
    if (in == NULL || in->c < 1 || in->c > INT32_MAX / (int32_t)sizeof(int32_t)) {
        return 0;
    }
    return in->c * (int32_t)sizeof(int32_t);
}

tmp_status tmp_avgpool_s8(const tmp_avgpool_params *p, const tmp_dims *in_dims, const int8_t *in,
    int8_t *out, void *scratch) {
    if (p == NULL || in_dims == NULL || in == NULL || out == NULL || scratch == NULL ||
        ((uintptr_t)scratch & 3u) != 0) {
        return TMP_ERR_ARG;
    }
    if (in_dims->h < 1 || in_dims->w < 1 || in_dims->c < 1 ||
        in_dims->c > INT32_MAX / (int32_t)sizeof(int32_t) ||
        /* |acc| <= 255 * P must fit in int32 */
        (int64_t)in_dims->h * in_dims->w > INT32_MAX / 255 ||
        (int64_t)in_dims->h * in_dims->w * in_dims->c > INT32_MAX ||
        p->input_offset < -127 || p->input_offset > 128 ||
        p->output_offset < -128 || p->output_offset > 127 ||
        p->act_min < -128 || p->act_max > 127 || p->act_min > p->act_max ||
        p->mult < 0 || p->shift < -31 || p->shift > 30) {
        return TMP_ERR_ARG;
    }
    const int32_t ch = in_dims->c;
    const int32_t npix = in_dims->h * in_dims->w;
    int32_t *acc = (int32_t *)scratch;
    memset(acc, 0, (size_t)ch * sizeof(int32_t));
    const int8_t *src = in;
    for (int32_t n = 0; n < npix; n++) {
        for (int32_t c = 0; c < ch; c++) {
            acc[c] += src[c];
        }
        src += ch;
    }
    const int32_t offset_sum = npix * p->input_offset;
    for (int32_t c = 0; c < ch; c++) {
        out[c] = tmp_clamp_out(tmp_requant(acc[c] + offset_sum, p->mult, p->shift), p->output_offset,
            p->act_min, p->act_max);
    }
    return TMP_OK;
}
