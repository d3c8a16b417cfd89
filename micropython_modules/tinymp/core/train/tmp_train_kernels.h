/*
 * tinymp core: fp32 backward kernels of the training engine, CMSIS-NN style.
 *
 * The math is docs/TRAINING.md sections 3 and 4 (Gradient Condensing, GC, of
 * shared/design/ALGORITHMS.md section 1); the numpy oracle is host/tinymp/reference_train.py.
 * One public kernel per file in train/. Every kernel:
 *   - takes const pointers to small dims/params structs, the output last before the scratch;
 *   - never allocates: scratch comes from the caller, sized by the matching *_get_buffer_size()
 *     (in bytes, 4-byte aligned; kernels without one need no scratch);
 *   - returns TMP_OK, or TMP_ERR_ARG for arguments it does not support (nothing is written then);
 *   - keeps no state: the stochastic-rounding generator state is a caller-held uint32_t.
 *
 * Conventions
 * -----------
 * Activations are int8 [H][W][C]; `input_offset` is -(zero point), as in tmp_conv_params, so the
 * real value of an int8 x is (x + input_offset) * s_x. Weights are int8 (zero point 0) with one
 * real scale per output channel, `wscale` (W = q * wscale[o]); layouts as in the forward kernels:
 * conv [Cout][kh][kw][Cin], depthwise [kh][kw][C], pointwise and fc [Cout][Cin].
 *
 * GC geometry (fixed, reference_train decision 2). With patch size r >= 1 and the layer's
 * stride (sh, sw), the output [H'][W'] is tiled in r x r patches, PH = ceil(H'/r) by
 * PW = ceil(W'/r), patch p = py*PW + px (row-major), border patches partial. The input window
 * of patch (py, px) is input rows [py*r*sh, (py+1)*r*sh) and columns [px*r*sw, (px+1)*r*sw),
 * both intersected with the input (padding ignored; a window may be partial or empty).
 *
 * Gradient maps. The gradient of a tensor [H][W][C] is stored on the tensor's OWN r x r grid,
 * [ceil(H/r)][ceil(W/r)][C] fp32, one value per patch: the per-pixel gradient there (r = 1: the
 * full-resolution map). An input window of output patch (py, px) is exactly the union of the
 * input-grid patches (qy, qx) with qy in [py*sh, (py+1)*sh) and qx in [px*sw, (px+1)*sw),
 * clipped to the input grid. Kernels that produce an input gradient ADD into `dx` (several
 * consumers of a tensor accumulate); the caller zeroes it first.
 *
 * Channel selection: `channels` is a list of k distinct input-channel indices (uint16, the
 * engine keeps them ascending); saved tensors and weight gradients hold only those channels,
 * compacted (entry j belongs to channels[j]). channels == NULL means all channels in order
 * (then k must equal the channel count).
 */
#ifndef TMP_TRAIN_KERNELS_H
#define TMP_TRAIN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "../tmp_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Element type of the saved window sums xs; the value is the element size in bytes. */
typedef enum {
    TMP_XS_S16 = 2, /**< int16, allowed only when (r*sh)*(r*sw)*255 < 2^15 */
    TMP_XS_S32 = 4, /**< int32 */
} tmp_xs_type;

/** Kind of a saved clamp mask (TRAINING.md section 3). */
typedef enum {
    TMP_MASK_NONE = 0,   /**< no mask: the gradient passes everywhere (density 1) */
    TMP_MASK_BITS = 1,   /**< 1 bit per output element, full resolution */
    TMP_MASK_COUNTS = 2, /**< uint8 count of passing pixels per r x r patch and channel */
} tmp_mask_kind;

/** Backward geometry of a conv-like layer. */
typedef struct {
    int32_t r;        /**< GC patch size, >= 1; 1 = exact backprop */
    int32_t stride_h; /**< the layer's strides */
    int32_t stride_w;
    int32_t pad_t; /**< the layer's top/left padding (as in tmp_conv_params); the exact (r = 1) */
    int32_t pad_l; /**< kernels use it, the condensed ones only check the geometry with it */
} tmp_grad_conv_params;

/* ------------------------------------------------------------------------------------------ */
/* Forward-side savers                                                                         */
/* ------------------------------------------------------------------------------------------ */

/** The smallest xs element type allowed for (r, sh, sw): TMP_XS_S16 when
 *  (r*sh)*(r*sw)*255 < 32768, else TMP_XS_S32. */
tmp_xs_type tmp_gc_xs_type(int32_t r, int32_t stride_h, int32_t stride_w);

/** Bytes of the xs tensor [P][k] of element type `type` (P from out_dims and r), or -1 when the
 *  arguments are invalid or the size exceeds INT32_MAX. */
int32_t tmp_gc_sums_size(int32_t r, const tmp_dims *out_dims, int32_t k, tmp_xs_type type);

/**
 * GC saver: xs[p][j] = sum over the input window of patch p of (in[y][x][channels[j]] +
 * input_offset), 0 for an empty window.
 * @param p         r and strides (pads are not used: windows ignore padding)
 * @param in        [in.h][in.w][in.c] int8
 * @param out_dims  the layer's OUTPUT dims (only h and w are used): P = ceil(h/r)*ceil(w/r)
 * @param channels  k selected input channels, or NULL = all (k == in.c)
 * @param type      TMP_XS_S16 (rejected with TMP_ERR_ARG unless tmp_gc_xs_type() allows it)
 *                  or TMP_XS_S32
 * @param xs        [P][k] int16 or int32 (aligned for its type)
 */
tmp_status tmp_gc_sums_s8(const tmp_grad_conv_params *p, const tmp_dims *in_dims, const int8_t *in,
    int32_t input_offset, const tmp_dims *out_dims, const uint16_t *channels, int32_t k,
    tmp_xs_type type, void *xs);

/**
 * xf[i] = (float)xs[i] for i < n: the window sums of tmp_gc_sums_s8 as floats, once per layer
 * and step, for tmp_conv_dw_gc_f32 (exact for every sum a window of up to 2^16 pixels can make).
 * @param xs [n] int16 or int32 (`type`); xf [n] fp32, must not overlap xs
 */
tmp_status tmp_gc_sums_f32(tmp_xs_type type, const void *xs, int32_t n, float *xf);

/**
 * Exact-mode saver: out[y][x][j] = in[y][x][channels[j]].
 * @param in   [in.h][in.w][in.c] int8
 * @param out  [in.h][in.w][k] int8; must not overlap `in`
 */
tmp_status tmp_save_channels_s8(const tmp_dims *in_dims, const int8_t *in,
    const uint16_t *channels, int32_t k, int8_t *out);

/**
 * The mask kind for patch size r: TMP_MASK_BITS for r <= 2, TMP_MASK_COUNTS for r >= 3 (fewer
 * bytes than r*r bits; TRAINING.md section 3). Never TMP_MASK_NONE: an int8 range of
 * [-128, 127] does not mean "no activation" (a ReLU whose output zero point is -128 has
 * act_min = -128), so the clamp is always masked, as reference_train decision 5 assumes.
 * Callers that know a layer has no activation may still pass TMP_MASK_NONE to the kernels.
 */
tmp_mask_kind tmp_mask_kind_for(int32_t r);

/** Bytes of a mask of `kind` for an output of dims d: BITS ceil(h*w*c/8), COUNTS
 *  ceil(h/r)*ceil(w/r)*c, NONE 0; -1 when invalid (COUNTS needs 1 <= r <= 15). */
int32_t tmp_mask_s8_size(const tmp_dims *d, int32_t r, tmp_mask_kind kind);

/**
 * Clamp mask of an int8 output: element e passes when act_min < out[e] < act_max (ties at the
 * limits are clamped).
 *  - TMP_MASK_BITS: bit e = ((y*w + x)*c + ch) (HWC element order) is bit (e & 7) of byte e >> 3
 *    (LSB first), 1 = passes; the unused high bits of the last byte are 0. r is ignored.
 *  - TMP_MASK_COUNTS: mask[py][px][ch] (uint8, on the output's r x r grid) = number of passing
 *    pixels of channel ch in patch (py, px); 1 <= r <= 15.
 * @param out  [d.h][d.w][d.c] int8
 * @param mask tmp_mask_s8_size(d, r, kind) bytes
 */
tmp_status tmp_mask_s8(const tmp_dims *d, const int8_t *out, int32_t act_min, int32_t act_max,
    int32_t r, tmp_mask_kind kind, uint8_t *mask);

/* ------------------------------------------------------------------------------------------ */
/* Backward                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/**
 * Gradient through the clamp, patch-averaged: gbar[p][o] = g[p][o] * density[p][o], density =
 * passing pixels / pixels of the (possibly partial) patch p (1 without a mask). At r = 1 with
 * bits this is g * bit. When db != NULL also db[o] += sum_p n_p * gbar[p][o] (n_p = pixels of
 * patch p), the exact bias gradient.
 * @param out_dims the layer's output dims [H'][W'][C]
 * @param g        [ceil(H'/r)][ceil(W'/r)][C] fp32: the gradient map of the output
 * @param mask     per `kind` (tmp_mask_s8 layouts; BITS works at any r, COUNTS needs r <= 15)
 * @param gbar     same layout as g; may be the same pointer as g (in place)
 * @param db       [C] accumulated, or NULL
 */
tmp_status tmp_grad_gbar_f32(const tmp_dims *out_dims, int32_t r, const float *g,
    tmp_mask_kind kind, const uint8_t *mask, float *gbar, float *db);

/**
 * Input gradient of a standard convolution, added into dx.
 *  - r = 1 (exact): the transposed convolution,
 *    dx[iy][ix][i] += sum_{y,x,o,u,v} gbar[y][x][o] * wscale[o] * w[o][u][v][i] with
 *    iy = y*sh - pad_t + u, ix = x*sw - pad_l + v inside the input; gbar is full resolution.
 *  - r >= 2 (condensed): for every output patch p and every input-grid patch q of its window,
 *    dx[q][i] += sum_o Wsum[o][i] * gbar[p][o] / (sh*sw), Wsum[o][i] = wscale[o] *
 *    sum_{u,v} w[o][u][v][i], computed one output channel at a time into the scratch.
 * The output geometry must be the forward one for some bottom/right padding < k.
 * @param weights [out.c][kh][kw][in.c] int8, wscale [out.c]
 * @param gbar    [ceil(H'/r)][ceil(W'/r)][out.c]
 * @param dx      [ceil(H/r)][ceil(W/r)][in.c], accumulated
 * @param scratch tmp_conv_dx_f32_get_buffer_size() bytes: in.c floats at r >= 2, none at r = 1
 */
int32_t tmp_conv_dx_f32_get_buffer_size(const tmp_grad_conv_params *p, const tmp_dims *in_dims,
    const tmp_filter_dims *f, const tmp_dims *out_dims);
tmp_status tmp_conv_dx_f32(const tmp_grad_conv_params *p, const tmp_dims *in_dims,
    const tmp_filter_dims *f, const int8_t *weights, const float *wscale,
    const tmp_dims *out_dims, const float *gbar, float *dx, void *scratch);

/**
 * Input gradient of a depthwise convolution (channel multiplier 1), added into dx.
 *  - r = 1: dx[iy][ix][c] += sum_{y,x,u,v} gbar[y][x][c] * wscale[c] * w[u][v][c].
 *  - r >= 2: dx[q][c] += Wsum[c] * gbar[p][c] / (sh*sw) for q in the window of p,
 *    Wsum[c] = wscale[c] * sum_{u,v} w[u][v][c].
 * @param weights [kh][kw][c] int8, wscale [c]; out.c == in.c
 * @param scratch tmp_dwconv_dx_f32_get_buffer_size() bytes: c floats at r >= 2, none at r = 1
 */
int32_t tmp_dwconv_dx_f32_get_buffer_size(const tmp_grad_conv_params *p, const tmp_dims *in_dims,
    const tmp_filter_dims *f, const tmp_dims *out_dims);
tmp_status tmp_dwconv_dx_f32(const tmp_grad_conv_params *p, const tmp_dims *in_dims,
    const tmp_filter_dims *f, const int8_t *weights, const float *wscale,
    const tmp_dims *out_dims, const float *gbar, float *dx, void *scratch);

/**
 * Input gradient of a pointwise (1x1, stride 1) convolution, any r (exact at r = 1): input and
 * output share the grid, dx[p][i] += sum_o wscale[o] * w[o][i] * gbar[p][o]. No scratch.
 * @param weights [out.c][in.c] int8, wscale [out.c]; in.h == out.h, in.w == out.w
 * @param gbar    [ceil(H/r)][ceil(W/r)][out.c]; dx [ceil(H/r)][ceil(W/r)][in.c], accumulated
 */
tmp_status tmp_pwconv_dx_f32(int32_t r, const tmp_dims *in_dims, const int8_t *weights,
    const float *wscale, const tmp_dims *out_dims, const float *gbar, float *dx);

/**
 * Condensed weight gradient of ONE output channel o of a conv or pointwise layer (a pointwise
 * layer is the 1x1 case, stride 1), for the k selected input channels:
 *     dw[u][v][j] = sum_p (gbar[p][o] * s_x / (sh*sw)) * xf[p][j]   (the same for every (u, v)),
 * the scaled gradient first, then the products summed over p ascending (each product and sum
 * rounded to float). Any r >= 1 (the formula; at r = 1 exact for a 1x1 stride-1 layer only).
 * @param gbar [ceil(H'/r)][ceil(W'/r)][out.c]
 * @param xf   [P][k] fp32: the window sums of tmp_gc_sums_s8 as floats (tmp_gc_sums_f32),
 *             converted once for all output channels
 * @param dw   [kh][kw][k] fp32, overwritten; must not overlap xf
 */
tmp_status tmp_conv_dw_gc_f32(const tmp_grad_conv_params *p, const tmp_dims *out_dims,
    const float *gbar, int32_t o, const float *xf, int32_t k, float s_x,
    const tmp_filter_dims *f, float *dw);

/**
 * Exact (r = 1; p->r must be 1) weight gradient of ONE output channel o of a conv or pointwise
 * layer from the saved input channels (tmp_save_channels_s8):
 *     dw[u][v][j] = s_x * sum_{y,x} gbar[y][x][o] * (saved[iy][ix][j] + input_offset)
 * over the (iy, ix) = (y*sh - pad_t + u, x*sw - pad_l + v) inside the input.
 * @param in_dims the layer's input dims (in.c >= k); saved [in.h][in.w][k] int8
 * @param gbar    [H'][W'][out.c] full resolution
 * @param dw      [kh][kw][k] fp32, overwritten
 */
tmp_status tmp_conv_dw_f32(const tmp_grad_conv_params *p, const tmp_dims *in_dims,
    const int8_t *saved, int32_t k, int32_t input_offset, float s_x, const tmp_filter_dims *f,
    const tmp_dims *out_dims, const float *gbar, int32_t o, float *dw);

/**
 * Condensed weight gradient of ONE depthwise channel c, stored as the selected entry j
 * (channels[j] == c) of xs:  dw[u][v] = s_x / (sh*sw) * sum_p gbar[p][c] * xs[p][j].
 * @param gbar [ceil(H'/r)][ceil(W'/r)][out.c]; xs [P][k] of `type`
 * @param dw   [kh][kw] fp32, overwritten
 */
tmp_status tmp_dwconv_dw_gc_f32(const tmp_grad_conv_params *p, const tmp_dims *out_dims,
    const float *gbar, int32_t c, tmp_xs_type type, const void *xs, int32_t k, int32_t j,
    float s_x, const tmp_filter_dims *f, float *dw);

/**
 * Exact (p->r == 1) weight gradient of ONE depthwise channel c saved as entry j:
 *     dw[u][v] = s_x * sum_{y,x} gbar[y][x][c] * (saved[iy][ix][j] + input_offset).
 * @param saved [in.h][in.w][k] int8; gbar [H'][W'][out.c]; dw [kh][kw] fp32, overwritten
 */
tmp_status tmp_dwconv_dw_f32(const tmp_grad_conv_params *p, const tmp_dims *in_dims,
    const int8_t *saved, int32_t k, int32_t j, int32_t input_offset, float s_x,
    const tmp_filter_dims *f, const tmp_dims *out_dims, const float *gbar, int32_t c, float *dw);

/**
 * Fully connected input gradient, added into dx: dx[i] += sum_o wscale[o] * w[o][i] * dy[o].
 * (The bias gradient of fc is dy itself.) dx is full resolution (n values in the input's
 * memory order); it is a patch-constant map only for a 1 x 1 x n input.
 * @param weights [out_features][n] int8, wscale [out_features], dy [out_features], dx [n]
 */
tmp_status tmp_fc_dx_f32(int32_t n, int32_t out_features, const int8_t *weights,
    const float *wscale, const float *dy, float *dx);

/**
 * Fully connected weight gradient of ONE output o: dw[j] = dy_o * (in[channels[j]] +
 * input_offset) * s_x, j < k (channels NULL = all, k == n).
 * @param in [n] int8 (the saved fc input); dw [k] fp32, overwritten
 */
tmp_status tmp_fc_dw_f32(int32_t n, const int8_t *in, int32_t input_offset, float s_x,
    const uint16_t *channels, int32_t k, float dy_o, float *dw);

/**
 * Global average pool backward: every patch of the input's r-grid gets dx[q][c] += dy[c] / (h*w).
 * @param in_dims the pool's input [h][w][c]; dy [c]; dx [ceil(h/r)][ceil(w/r)][c], accumulated
 */
tmp_status tmp_avgpool_dx_f32(const tmp_dims *in_dims, int32_t r, const float *dy, float *dx);

/**
 * Softmax cross-entropy of float logits z[n] (numerically stable):
 * loss = logsumexp(z) - z[label], dlogits = softmax(z) - onehot(label).
 * dlogits may be the same pointer as logits. loss may be NULL.
 */
tmp_status tmp_softmax_xent_f32(int32_t n, const float *logits, int32_t label, float *loss,
    float *dlogits);

/** The same from int8 logits: z[i] = (q[i] - zero_point) * scale (docs/KERNELS.md). */
tmp_status tmp_softmax_xent_s8(int32_t n, const int8_t *logits, int32_t zero_point, float scale,
    int32_t label, float *loss, float *dlogits);

/* ------------------------------------------------------------------------------------------ */
/* Updates                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/**
 * SGD on int8 weights in LSB units (QAS, TRAINING.md section 2), stochastic rounding:
 *     d = (v != NULL ? (v[i] = momentum*v[i] + g[i]) : g[i])
 *     w[i] <- clamp(w[i] + SR(-lr * d / scale), -127, 127)
 * SR(t) is floor(t) or floor(t) + 1, up with probability t - floor(t), in 2^-23 fixed point:
 * T = round-to-nearest(d * k), k = (-lr / scale) * 2^23 (0 when d * k is not finite), v = the
 * top 23 bits of one xorshift32 step (x ^= x << 13; x ^= x >> 17; x ^= x << 5) on *state per
 * element, and SR = floor((T + v) / 2^23); so the result is unbiased (E[SR(t)] = t up to 2^-24)
 * and deterministic for a given state. *state must be non-zero and is advanced. A non-finite
 * step moves nothing (the weight is only clamped). The exact rule: tmp_tr_sgd_s8_one.
 * @param w [n] int8 (one output channel's row: one scale), g [n], v [n] or NULL
 */
tmp_status tmp_sgd_s8_stochastic(int32_t n, int8_t *w, const float *g, float lr, float scale,
    float momentum, float *v, uint32_t *state);

/**
 * tmp_sgd_s8_stochastic without momentum on weights in place: element i is w[idx[i]]
 * (idx != NULL) or w[i * stride] (stride >= 1). The same draws in the same order, so the same
 * result as gathering the n elements, tmp_sgd_s8_stochastic on them, and scattering them back.
 * The elements must be distinct. sq (NULL: none) accumulates the squared gradients in element
 * order: sq[idx[i]] += g[i]^2 with idx, else sq[0] += g[i]^2 (one sum).
 * @param w int8 base, idx [n] or NULL, g [n]
 */
tmp_status tmp_sgd_s8_stochastic_at(int32_t n, int8_t *w, const uint16_t *idx, int32_t stride,
    const float *g, float lr, float scale, float *sq, uint32_t *state);

/**
 * The same for int32 biases in units of s_x * wscale[o]:
 *     b[o] <- sat32(b[o] + SR(-lr * d[o] / (s_x * wscale[o])))
 * @param b [n] int32, g [n], wscale [n], v [n] or NULL
 */
tmp_status tmp_sgd_s32_stochastic(int32_t n, int32_t *b, const float *g, float lr, float s_x,
    const float *wscale, float momentum, float *v, uint32_t *state);

/** Plain fp32 SGD on a master copy: d = g (or v = momentum*v + g when v != NULL), w -= lr*d. */
tmp_status tmp_sgd_f32(int32_t n, float *w, const float *g, float lr, float momentum, float *v);

/** Requantise an fp32 master row (real units) to int8: q[i] = clamp(round(w[i] / scale),
 *  -127, 127), round half away from zero; NaN gives 0. */
tmp_status tmp_requant_s8_f32(int32_t n, const float *w, float scale, int8_t *q);

/** Requantise fp32 master biases (real units) to int32: b[o] = sat32(round(bias[o] /
 *  (s_x * wscale[o]))), round half away from zero; NaN gives 0. */
tmp_status tmp_requant_s32_f32(int32_t n, const float *bias, float s_x, const float *wscale,
    int32_t *b);

#ifdef __cplusplus
}
#endif

#endif /* TMP_TRAIN_KERNELS_H */
