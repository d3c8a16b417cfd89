/**
 * @file tmp_mask_s8.c
 * @brief Clamp (ReLU / ReLU6) mask of an int8 layer output, as bits or per-patch counts
 *        (TRAINING.md section 3).
 *
 * Element e = (y*w + x)*c + ch of the output [h][w][c] passes when act_min < out[e] < act_max
 * (an output equal to a limit counts as clamped: reference_train decision 1).
 *
 * Layouts:
 *  - TMP_MASK_BITS: ceil(h*w*c / 8) bytes; bit e is bit (e & 7) (LSB first) of byte e >> 3,
 *    1 = passes; the unused high bits of the last byte are 0 (numpy:
 *    np.packbits(pass.reshape(-1), bitorder="little")).
 *  - TMP_MASK_COUNTS: uint8 [ceil(h/r)][ceil(w/r)][c] on the output's r x r grid: the number of
 *    passing pixels of each channel in each (possibly partial) patch; 1 <= r <= 15 so that a
 *    count fits in a byte.
 *  - TMP_MASK_NONE: nothing is written (size 0).
 * No scratch.
 *
 * On cores with the DSP extension (TMP_DSP, kernels/tmp_dsp.h) four outputs are tested at once:
 * SSUB8/SEL give a 0/1 byte per lane for act_min < q < act_max; counts add those bytes with
 * UADD8 (a count stays below 256), bits gather them with one multiply (lane i lands on bit 24 + i
 * of v * 0x01020408). The result is the portable loop's, bit for bit (firmware/bench/kernel_check.c).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "../kernels/tmp_dsp.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

#if TMP_DSP
/* The int8 values that pass, act_min < q < act_max, as the packed closed range [lo, hi]; 0 when
 * there are none. */
static int mask_limits(int32_t act_min, int32_t act_max, uint32_t *lo4, uint32_t *hi4) {
    const int32_t lo = act_min < -128 ? -128 : act_min >= 127 ? 128 : act_min + 1;
    const int32_t hi = act_max > 127 ? 127 : act_max <= -128 ? -129 : act_max - 1;
    if (lo > hi) {
        return 0;
    }
    *lo4 = tmp_pack8x4(lo);
    *hi4 = tmp_pack8x4(hi);
    return 1;
}
#endif

tmp_mask_kind tmp_mask_kind_for(int32_t r) {
    return r <= 2 ? TMP_MASK_BITS : TMP_MASK_COUNTS;
}

int32_t tmp_mask_s8_size(const tmp_dims *d, int32_t r, tmp_mask_kind kind) {
    if (!tmp_tr_dims_ok(d)) {
        return -1;
    }
    switch (kind) {
    case TMP_MASK_NONE:
        return 0;
    case TMP_MASK_BITS:
        return (int32_t)(((int64_t)d->h * d->w * d->c + 7) / 8);
    case TMP_MASK_COUNTS:
        if (r < 1 || r > TMP_TRAIN_MAX_COUNT_R) {
            return -1;
        }
        return (int32_t)((int64_t)tmp_tr_ceil_div(d->h, r) * tmp_tr_ceil_div(d->w, r) * d->c);
    default:
        return -1;
    }
}

tmp_status tmp_mask_s8(const tmp_dims *d, const int8_t *out, int32_t act_min, int32_t act_max,
    int32_t r, tmp_mask_kind kind, uint8_t *mask) {
    const int32_t size = tmp_mask_s8_size(d, r, kind);
    if (out == NULL || size < 0 || (size > 0 && mask == NULL) || act_min > act_max) {
        return TMP_ERR_ARG;
    }
    if (kind == TMP_MASK_NONE) {
        return TMP_OK;
    }
    if (kind == TMP_MASK_BITS) {
        const size_t n = (size_t)d->h * (size_t)d->w * (size_t)d->c;
        memset(mask, 0, (size_t)size);
        size_t e = 0;
#if TMP_DSP
        uint32_t lo4, hi4;
        if (!mask_limits(act_min, act_max, &lo4, &hi4)) {
            return TMP_OK;
        }
        for (; e + 8 <= n; e += 8) {
            const uint32_t a = tmp_inside8x4((uint32_t)tmp_ld4(out + e), lo4, hi4);
            const uint32_t b = tmp_inside8x4((uint32_t)tmp_ld4(out + e + 4), lo4, hi4);
            mask[e >> 3] = (uint8_t)(((a * 0x01020408u) >> 24) | (((b * 0x01020408u) >> 20) & 0xF0u));
        }
#endif
        for (; e < n; e++) {
            const int32_t q = out[e];
            if (q > act_min && q < act_max) {
                mask[e >> 3] = (uint8_t)(mask[e >> 3] | (1u << (e & 7u)));
            }
        }
        return TMP_OK;
    }
    /* counts on the r x r grid */
    const int32_t pw = tmp_tr_ceil_div(d->w, r);
    const size_t c = (size_t)d->c;
    memset(mask, 0, (size_t)size);
#if TMP_DSP
    uint32_t lo4, hi4;
    if (!mask_limits(act_min, act_max, &lo4, &hi4)) {
        return TMP_OK;
    }
#endif
    for (int32_t y = 0; y < d->h; y++) {
        uint8_t *grid_row = mask + (size_t)(y / r) * (size_t)pw * c;
        const int8_t *src = out + (size_t)y * (size_t)d->w * c;
        for (int32_t x = 0; x < d->w; x++) {
            uint8_t *cnt = grid_row + (size_t)(x / r) * c;
            size_t ch = 0;
#if TMP_DSP
            for (; ch + 4 <= c; ch += 4) {
                const uint32_t in = tmp_inside8x4((uint32_t)tmp_ld4(src + ch), lo4, hi4);
                tmp_st4(cnt + ch, (int32_t)tmp_uadd8((uint32_t)tmp_ld4(cnt + ch), in));
            }
#endif
            for (; ch < c; ch++) {
                const int32_t q = src[ch];
                cnt[ch] = (uint8_t)(cnt[ch] + ((q > act_min && q < act_max) ? 1u : 0u));
            }
            src += c;
        }
    }
    return TMP_OK;
}
