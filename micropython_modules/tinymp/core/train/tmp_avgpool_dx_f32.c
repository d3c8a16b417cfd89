/**
 * @file tmp_avgpool_dx_f32.c
 * @brief Global average pool backward on the input's r-grid (exact: the gradient is constant).
 *
 *     dx[q][c] += dy[c] / (h*w)    for every patch q of the [ceil(h/r)][ceil(w/r)] grid
 *
 * (every patch of a tensor's own grid holds at least one pixel).
 * Layouts: dy [c], dx [ceil(h/r)][ceil(w/r)][c] fp32 (accumulated). No scratch.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

tmp_status tmp_avgpool_dx_f32(const tmp_dims *in_dims, int32_t r, const float *dy, float *dx) {
    if (dy == NULL || dx == NULL || !tmp_tr_dims_ok(in_dims) || !tmp_tr_r_ok(r)) {
        return TMP_ERR_ARG;
    }
    const size_t np = (size_t)tmp_tr_ceil_div(in_dims->h, r) * (size_t)tmp_tr_ceil_div(in_dims->w, r);
    const size_t c = (size_t)in_dims->c;
    const float inv = 1.0f / ((float)in_dims->h * (float)in_dims->w);
    for (size_t q = 0; q < np; q++) {
        float *d = dx + q * c;
        for (size_t ch = 0; ch < c; ch++) {
            d[ch] += dy[ch] * inv;
        }
    }
    return TMP_OK;
}
