/**
 * @file tmp_pwconv_dx_f32.c
 * @brief Input gradient of a pointwise (1x1, stride 1, no padding) convolution, any r,
 *        accumulated into dx.
 *
 * Input and output have the same h x w, hence the same r-grid, and each output patch's window
 * is the input patch at the same place, so for every grid patch p (exact at r = 1):
 *
 *     dx[p][i] += sum_o wscale[o] * w[o][i] * gbar[p][o]
 *
 * (Wsum = W for a 1x1 kernel.) Output channels whose gbar is 0 are skipped. No scratch.
 *
 * Layouts: weights [out.c][in.c] int8, wscale [out.c], gbar [ceil(h/r)][ceil(w/r)][out.c],
 * dx [ceil(h/r)][ceil(w/r)][in.c] fp32 (accumulated).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

tmp_status tmp_pwconv_dx_f32(int32_t r, const tmp_dims *in_dims, const int8_t *weights,
    const float *wscale, const tmp_dims *out_dims, const float *gbar, float *dx) {
    if (weights == NULL || wscale == NULL || gbar == NULL || dx == NULL || !tmp_tr_r_ok(r) ||
        !tmp_tr_dims_ok(in_dims) || !tmp_tr_dims_ok(out_dims) || in_dims->h != out_dims->h ||
        in_dims->w != out_dims->w || (int64_t)in_dims->c * out_dims->c > INT32_MAX) {
        return TMP_ERR_ARG;
    }
    const int32_t cin = in_dims->c;
    const int32_t cout = out_dims->c;
    const size_t np = (size_t)tmp_tr_ceil_div(in_dims->h, r) * (size_t)tmp_tr_ceil_div(in_dims->w, r);
    for (size_t q = 0; q < np; q++) {
        const float *gp = gbar + q * (size_t)cout;
        float *d = dx + q * (size_t)cin;
        for (int32_t o = 0; o < cout; o++) {
            if (gp[o] == 0.0f) {
                continue;
            }
            const float g = gp[o] * wscale[o];
            const int8_t *w = weights + (size_t)o * (size_t)cin;
            for (int32_t i = 0; i < cin; i++) {
                d[i] += g * (float)w[i];
            }
        }
    }
    return TMP_OK;
}
