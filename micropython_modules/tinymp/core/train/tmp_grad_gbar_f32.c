/**
 * @file tmp_grad_gbar_f32.c
 * @brief Gradient through a clamp mask, patch-averaged (TRAINING.md section 3, steps 1-2).
 *
 * With G the gradient map of a layer's output on its r x r grid (patch-constant), the patch mean
 * of G * mask is G * density, density = passing pixels / pixels of the patch:
 *
 *     gbar[p][o] = g[p][o] * cnt[p][o] / n_p          (no mask: cnt = n_p, gbar = g)
 *     db[o]     += sum_p g[p][o] * cnt[p][o]          (= sum_p n_p * gbar[p][o], exact)
 *
 * n_p is the number of output pixels of patch p (partial at the bottom/right border); cnt comes
 * from the mask (tmp_mask_s8 layouts): the bits of the patch's pixels, or the stored count.
 * At r = 1 with bits, gbar = g * bit.
 *
 * Layouts: g, gbar [ceil(H'/r)][ceil(W'/r)][C] fp32 (gbar may be g: in place), db [C] or NULL.
 * No scratch.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

/* Number of set bits of the pixels [y0, y1) x [x0, x1) of channel ch. */
static int32_t gbar_bit_count(const uint8_t *mask, const tmp_dims *d, int32_t y0, int32_t y1,
    int32_t x0, int32_t x1, int32_t ch) {
    int32_t cnt = 0;
    for (int32_t y = y0; y < y1; y++) {
        size_t e = ((size_t)y * (size_t)d->w + (size_t)x0) * (size_t)d->c + (size_t)ch;
        for (int32_t x = x0; x < x1; x++) {
            cnt += (mask[e >> 3] >> (e & 7u)) & 1;
            e += (size_t)d->c;
        }
    }
    return cnt;
}

tmp_status tmp_grad_gbar_f32(const tmp_dims *out_dims, int32_t r, const float *g,
    tmp_mask_kind kind, const uint8_t *mask, float *gbar, float *db) {
    if (g == NULL || gbar == NULL || !tmp_tr_dims_ok(out_dims) || !tmp_tr_r_ok(r) ||
        tmp_mask_s8_size(out_dims, r, kind) < 0 || (kind != TMP_MASK_NONE && mask == NULL)) {
        return TMP_ERR_ARG;
    }
    const int32_t c = out_dims->c;
    const int32_t ph = tmp_tr_ceil_div(out_dims->h, r);
    const int32_t pw = tmp_tr_ceil_div(out_dims->w, r);

    if (kind == TMP_MASK_BITS && r == 1) { /* the exact case: gbar = g * bit */
        const size_t n = (size_t)out_dims->h * (size_t)out_dims->w * (size_t)c;
        for (size_t e = 0; e < n; e++) {
            const float v = ((mask[e >> 3] >> (e & 7u)) & 1) ? g[e] : 0.0f;
            gbar[e] = v;
            if (db != NULL) {
                db[e % (size_t)c] += v;
            }
        }
        return TMP_OK;
    }

    for (int32_t py = 0; py < ph; py++) {
        const int32_t y0 = py * r;
        const int32_t y1 = y0 + r < out_dims->h ? y0 + r : out_dims->h;
        for (int32_t px = 0; px < pw; px++) {
            const int32_t x0 = px * r;
            const int32_t x1 = x0 + r < out_dims->w ? x0 + r : out_dims->w;
            const int32_t n_p = (y1 - y0) * (x1 - x0);
            const size_t base = ((size_t)py * (size_t)pw + (size_t)px) * (size_t)c;
            for (int32_t o = 0; o < c; o++) {
                const float gv = g[base + (size_t)o];
                int32_t cnt;
                if (kind == TMP_MASK_NONE) {
                    cnt = n_p;
                } else if (kind == TMP_MASK_COUNTS) {
                    cnt = mask[base + (size_t)o];
                } else {
                    cnt = gbar_bit_count(mask, out_dims, y0, y1, x0, x1, o);
                }
                gbar[base + (size_t)o] = cnt == n_p ? gv : gv * ((float)cnt / (float)n_p);
                if (db != NULL) {
                    db[o] += gv * (float)cnt;
                }
            }
        }
    }
    return TMP_OK;
}
