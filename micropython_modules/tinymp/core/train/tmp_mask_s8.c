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
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

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
        for (size_t e = 0; e < n; e++) {
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
    for (int32_t y = 0; y < d->h; y++) {
        uint8_t *grid_row = mask + (size_t)(y / r) * (size_t)pw * c;
        const int8_t *src = out + (size_t)y * (size_t)d->w * c;
        for (int32_t x = 0; x < d->w; x++) {
            uint8_t *cnt = grid_row + (size_t)(x / r) * c;
            for (size_t ch = 0; ch < c; ch++) {
                const int32_t q = src[ch];
                cnt[ch] = (uint8_t)(cnt[ch] + ((q > act_min && q < act_max) ? 1u : 0u));
            }
            src += c;
        }
    }
    return TMP_OK;
}
