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
 *
 * DSP path (TMP_DSP, Cortex-M4/M7): channels in groups of 4, pixel-outer, summed with SXTAB16
 * into two registers of int16 lane pairs (exact for up to 256 pixels, then widened into int32
 * sums); no scratch is touched. The ch % 4 remaining channels are summed one by one.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "../tmp_kernels.h"
#include "tmp_dsp.h"

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
#if TMP_DSP
    const int32_t offset_sum = npix * p->input_offset;
    const tmp_rq r = tmp_rq_prep(p->mult, p->shift);
    const uint32_t lo4 = tmp_pack8x4(p->act_min);
    const uint32_t hi4 = tmp_pack8x4(p->act_max);
    const size_t cs = (size_t)ch;
    int32_t c = 0;
    for (; c + 4 <= ch; c += 4) {
        int32_t s0 = offset_sum, s1 = offset_sum, s2 = offset_sum, s3 = offset_sum;
        const int8_t *src = in + c;
        for (int32_t n0 = 0; n0 < npix; n0 += 256) {
            /* |sum of 256 int8| <= 32768: the int16 lanes cannot overflow within a block */
            const int32_t nb = npix - n0 < 256 ? npix - n0 : 256;
            int32_t p02 = 0, p13 = 0;
            for (int32_t k = 0; k < nb; k++) {
                const int32_t x4 = tmp_ld4(src);
                src += cs;
                p02 = tmp_sxtab16(p02, x4);
                p13 = tmp_sxtab16_ror8(p13, x4);
            }
            s0 += (int16_t)(uint16_t)p02;
            s2 += (int16_t)(uint16_t)((uint32_t)p02 >> 16);
            s1 += (int16_t)(uint16_t)p13;
            s3 += (int16_t)(uint16_t)((uint32_t)p13 >> 16);
        }
        const uint32_t v = tmp_pack4(tmp_rq_s8(s0, r, p->output_offset),
            tmp_rq_s8(s1, r, p->output_offset), tmp_rq_s8(s2, r, p->output_offset),
            tmp_rq_s8(s3, r, p->output_offset));
        tmp_st4(out + c, (int32_t)tmp_clamp8x4(v, lo4, hi4));
    }
    for (; c < ch; c++) {
        int32_t sum = offset_sum;
        const int8_t *src = in + c;
        for (int32_t k = 0; k < npix; k++) {
            sum += *src;
            src += cs;
        }
        out[c] = tmp_rq_out(sum, r, p->output_offset, p->act_min, p->act_max);
    }
    (void)scratch;
#else
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
#endif
    return TMP_OK;
}
