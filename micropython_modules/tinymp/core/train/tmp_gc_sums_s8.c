/**
 * @file tmp_gc_sums_s8.c
 * @brief Gradient Condensing forward-side saver: per-patch window sums of the selected input
 *        channels (TRAINING.md section 4, `xs`).
 *
 *     xs[p][j] = sum over the input window of patch p of (in[y][x][channels[j]] + input_offset)
 *
 * with the GC geometry of tmp_train_kernels.h: patch (py, px) of the OUTPUT r-grid
 * (P = ceil(H'/r) * ceil(W'/r), row-major) has the input window rows [py*r*sh, (py+1)*r*sh) and
 * columns [px*r*sw, (px+1)*r*sw), intersected with the input; an empty window gives 0.
 *
 * Layouts: in [in.h][in.w][in.c] int8, xs [P][k] int16 or int32. Each |term| <= 255 and a window
 * has at most (r*sh)*(r*sw) pixels, so int16 is exact when (r*sh)*(r*sw)*255 < 2^15
 * (tmp_gc_xs_type()); sums are accumulated in the output type, exactly (the zero-point term is
 * added once per patch). No scratch.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../tmp_common.h"
#include "tmp_train_internal.h"
#include "tmp_train_kernels.h"

/* Largest possible |xs| for a window of (r*sh) x (r*sw) pixels, in 64 bits (r, s < 2^15). */
static int64_t gc_sums_bound(int32_t r, int32_t sh, int32_t sw) {
    return (int64_t)r * sh * ((int64_t)r * sw) * 255;
}

tmp_xs_type tmp_gc_xs_type(int32_t r, int32_t stride_h, int32_t stride_w) {
    if (r < 1 || stride_h < 1 || stride_w < 1 || r > 0x7fff || stride_h > 0x7fff ||
        stride_w > 0x7fff) {
        return TMP_XS_S32;
    }
    return gc_sums_bound(r, stride_h, stride_w) < 32768 ? TMP_XS_S16 : TMP_XS_S32;
}

int32_t tmp_gc_sums_size(int32_t r, const tmp_dims *out_dims, int32_t k, tmp_xs_type type) {
    if (out_dims == NULL || !tmp_tr_r_ok(r) || out_dims->h < 1 || out_dims->w < 1 || k < 1 ||
        (type != TMP_XS_S16 && type != TMP_XS_S32)) {
        return -1;
    }
    int64_t n = (int64_t)tmp_tr_ceil_div(out_dims->h, r) * tmp_tr_ceil_div(out_dims->w, r) * k *
        (int64_t)type;
    return n > INT32_MAX ? -1 : (int32_t)n;
}

tmp_status tmp_gc_sums_s8(const tmp_grad_conv_params *p, const tmp_dims *in_dims, const int8_t *in,
    int32_t input_offset, const tmp_dims *out_dims, const uint16_t *channels, int32_t k,
    tmp_xs_type type, void *xs) {
    if (p == NULL || in == NULL || xs == NULL || !tmp_tr_dims_ok(in_dims) || out_dims == NULL ||
        !tmp_tr_r_ok(p->r) || p->stride_h < 1 || p->stride_w < 1 || p->stride_h > 0x7fff ||
        p->stride_w > 0x7fff || input_offset < -127 || input_offset > 128 ||
        !tmp_tr_channels_ok(channels, k, in_dims->c) ||
        tmp_gc_sums_size(p->r, out_dims, k, type) < 0) {
        return TMP_ERR_ARG;
    }
    const int64_t bound = gc_sums_bound(p->r, p->stride_h, p->stride_w);
    if ((type == TMP_XS_S16 && bound >= 32768) || bound > INT32_MAX) {
        return TMP_ERR_ARG;
    }
    const int32_t r = p->r;
    const int32_t ph = tmp_tr_ceil_div(out_dims->h, r);
    const int32_t pw = tmp_tr_ceil_div(out_dims->w, r);
    const int64_t wh = (int64_t)r * p->stride_h; /* window extent in input pixels */
    const int64_t ww = (int64_t)r * p->stride_w;
    const int32_t c = in_dims->c;
    int16_t *xs16 = (int16_t *)xs;
    int32_t *xs32 = (int32_t *)xs;
    for (int32_t py = 0; py < ph; py++) {
        const int64_t a = py * wh;
        const int32_t y0 = (int32_t)(a < in_dims->h ? a : in_dims->h);
        const int32_t y1 = (int32_t)(a + wh < in_dims->h ? a + wh : in_dims->h);
        for (int32_t px = 0; px < pw; px++) {
            const int64_t b = px * ww;
            const int32_t x0 = (int32_t)(b < in_dims->w ? b : in_dims->w);
            const int32_t x1 = (int32_t)(b + ww < in_dims->w ? b + ww : in_dims->w);
            const size_t row = ((size_t)py * (size_t)pw + (size_t)px) * (size_t)k;
            /* accumulate sum(in) in the output type, then add npix * input_offset: for int16,
             * npix <= 128, so |partial sums| <= 128 * 128 and the total is within the bound */
            if (type == TMP_XS_S32) {
                memset(xs32 + row, 0, (size_t)k * sizeof(int32_t));
            } else {
                memset(xs16 + row, 0, (size_t)k * sizeof(int16_t));
            }
            const int32_t npix = (y1 - y0) * (x1 - x0);
            for (int32_t y = y0; y < y1; y++) {
                for (int32_t x = x0; x < x1; x++) {
                    const int8_t *src = in + ((size_t)y * (size_t)in_dims->w + (size_t)x) * (size_t)c;
                    if (type == TMP_XS_S32) {
                        int32_t *dst = xs32 + row;
                        if (channels == NULL) {
                            for (int32_t j = 0; j < k; j++) {
                                dst[j] += src[j];
                            }
                        } else {
                            for (int32_t j = 0; j < k; j++) {
                                dst[j] += src[channels[j]];
                            }
                        }
                    } else {
                        int16_t *dst = xs16 + row;
                        if (channels == NULL) {
                            for (int32_t j = 0; j < k; j++) {
                                dst[j] = (int16_t)(dst[j] + src[j]);
                            }
                        } else {
                            for (int32_t j = 0; j < k; j++) {
                                dst[j] = (int16_t)(dst[j] + src[channels[j]]);
                            }
                        }
                    }
                }
            }
            /* the zero-point term: npix * input_offset per channel */
            if (npix > 0 && input_offset != 0) {
                const int32_t off = npix * input_offset;
                for (int32_t j = 0; j < k; j++) {
                    if (type == TMP_XS_S32) {
                        xs32[row + (size_t)j] += off;
                    } else {
                        xs16[row + (size_t)j] = (int16_t)(xs16[row + (size_t)j] + off);
                    }
                }
            }
        }
    }
    return TMP_OK;
}

tmp_status tmp_gc_sums_f32(tmp_xs_type type, const void *xs, int32_t n, float *xf) {
    if (xs == NULL || xf == NULL || n < 0 || (type != TMP_XS_S16 && type != TMP_XS_S32)) {
        return TMP_ERR_ARG;
    }
    if (type == TMP_XS_S16) {
        const int16_t *x = (const int16_t *)xs;
        int32_t i = 0;
#if TMP_TR_VMLA && defined(__GNUC__)
        /* M7: 8 sums per iteration from two LDRD (4-byte aligned sums), each word split by SXTH
         * and ASR, moved to the FPU in pairs and converted by VCVT: exact, as the C below */
        if (((uintptr_t)x & 3u) == 0 && n >= 8) {
            const int16_t *xp = x;
            float *fp = xf;
            int32_t left = n / 8;
            uint32_t a, b, c, d, t;
            __asm__ volatile(
                "1:\n\t"
                "ldrd     %[a], %[b], [%[x]], #8\n\t"
                "ldrd     %[c], %[d], [%[x]], #8\n\t"
                "sxth     %[t], %[a]\n\t"
                "asr      %[a], %[a], #16\n\t"
                "vmov     s0, s1, %[t], %[a]\n\t"
                "sxth     %[t], %[b]\n\t"
                "asr      %[b], %[b], #16\n\t"
                "vmov     s2, s3, %[t], %[b]\n\t"
                "sxth     %[t], %[c]\n\t"
                "asr      %[c], %[c], #16\n\t"
                "vmov     s4, s5, %[t], %[c]\n\t"
                "sxth     %[t], %[d]\n\t"
                "asr      %[d], %[d], #16\n\t"
                "vmov     s6, s7, %[t], %[d]\n\t"
                "vcvt.f32.s32 s0, s0\n\t"
                "vcvt.f32.s32 s1, s1\n\t"
                "vcvt.f32.s32 s2, s2\n\t"
                "vcvt.f32.s32 s3, s3\n\t"
                "vcvt.f32.s32 s4, s4\n\t"
                "vcvt.f32.s32 s5, s5\n\t"
                "vcvt.f32.s32 s6, s6\n\t"
                "vcvt.f32.s32 s7, s7\n\t"
                "vstmia   %[f]!, {s0-s7}\n\t"
                "subs     %[n], %[n], #1\n\t"
                "bne      1b"
                : [x] "+r"(xp), [f] "+r"(fp), [n] "+r"(left), [a] "=&r"(a), [b] "=&r"(b),
                  [c] "=&r"(c), [d] "=&r"(d), [t] "=&r"(t)
                :
                : "cc", "memory", "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7");
            i = n & ~(int32_t)7;
        }
#endif
        for (; i < n; i++) {
            xf[i] = (float)x[i];
        }
    } else {
        const int32_t *x = (const int32_t *)xs;
        for (int32_t i = 0; i < n; i++) {
            xf[i] = (float)x[i];
        }
    }
    return TMP_OK;
}
