/**
 * @file tmp_save_channels_s8.c
 * @brief Exact-mode (r = 1) saver: the selected input channels of an int8 tensor.
 *
 *     out[y][x][j] = in[y][x][channels[j]],  j < k   (channels NULL: all, a plain copy)
 *
 * Layouts: in [in.h][in.w][in.c], out [in.h][in.w][k], both int8; no overlap. No scratch.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

tmp_status tmp_save_channels_s8(const tmp_dims *in_dims, const int8_t *in,
    const uint16_t *channels, int32_t k, int8_t *out) {
    if (in == NULL || out == NULL || !tmp_tr_dims_ok(in_dims) ||
        !tmp_tr_channels_ok(channels, k, in_dims->c)) {
        return TMP_ERR_ARG;
    }
    const size_t npix = (size_t)in_dims->h * (size_t)in_dims->w;
    const size_t c = (size_t)in_dims->c;
    if (channels == NULL) {
        memcpy(out, in, npix * c);
        return TMP_OK;
    }
    for (size_t i = 0; i < npix; i++) {
        const int8_t *src = in + i * c;
        int8_t *dst = out + i * (size_t)k;
        for (int32_t j = 0; j < k; j++) {
            dst[j] = src[channels[j]];
        }
    }
    return TMP_OK;
}
