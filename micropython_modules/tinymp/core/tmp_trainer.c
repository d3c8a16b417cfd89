/*
 * tinymp core: the trainer (docs/TRAINING.md sections 2, 3, 6).
 *
 * One step: the forward pass over every layer with the planned arena, saving what the backward
 * pass needs for the layers of the backward region (window sums or input channels of the trained
 * layers, clamp masks; the selection pass also saves patch sums of every output); softmax
 * cross-entropy on the dequantised logits; the backward pass from the last layer down to the
 * first layer of the region, with each trained layer's bias and weights updated as soon as their
 * gradient exists (weights one output channel at a time, through a slice buffer that is reused).
 * Every pointer comes from the plan's buffer offsets; nothing outside [arena, arena +
 * plan->arena_bytes) is written.
 */
#include <math.h>
#include <string.h>

#include "tmp_infer.h"
#include "tmp_plan.h"
#include "tmp_train.h"
#include "train/tmp_train_kernels.h"

#define LBN TMP_LB_COUNT

static const tmp_buf *lbuf(const tmp_trainer *t, int b, int32_t i) {
    return tmp_train_plan_buf(t->p, b * t->p->num_layers + i);
}

static void *lb_ptr(const tmp_trainer *t, int b, int32_t i) {
    const tmp_buf *bb = lbuf(t, b, i);
    return bb->size ? (void *)(t->arena + bb->offset) : NULL;
}

static float *grad_ptr(const tmp_trainer *t, int32_t tensor) {
    const tmp_buf *bb = tmp_train_plan_buf(t->p, LBN * t->p->num_layers + t->p->num_tensors + tensor);
    return bb->size ? (float *)(void *)(t->arena + bb->offset) : NULL;
}

static int8_t *act_ptr(const tmp_trainer *t, int32_t tensor, const int8_t *x) {
    return tensor == 0 ? (int8_t *)(uintptr_t)x : (int8_t *)(t->arena + t->p->act_offset[tensor]);
}

static uint32_t now(const tmp_trainer *t) {
    return t->clock != NULL ? t->clock(t->clock_ctx) : 0u;
}

static uint32_t cin_of(const tmp_layer *l, const tmp_tensor *tin) {
    return l->type == TMP_LAYER_FC ? (uint32_t)(tin->dims.h * tin->dims.w * tin->dims.c) : (uint32_t)tin->dims.c;
}

static uint32_t weights_of(const tmp_layer *l, uint32_t cin, uint32_t cout) {
    switch (l->type) {
        case TMP_LAYER_CONV:
            return cout * l->kh * l->kw * cin;
        case TMP_LAYER_DWCONV:
            return (uint32_t)l->kh * l->kw * cin;
        default:
            return cout * cin;
    }
}

/* |bias| bound that keeps the int32 accumulator safe (as tmp_model.c validates). */
static int32_t bias_limit(const tmp_layer *l, uint32_t cin) {
    uint32_t red = l->type == TMP_LAYER_CONV ? (uint32_t)l->kh * l->kw * cin
        : l->type == TMP_LAYER_DWCONV ? (uint32_t)l->kh * l->kw : cin;
    int64_t lim = (int64_t)INT32_MAX - (int64_t)32640 * red;
    return lim < 0 ? 0 : (int32_t)lim;
}

static void clamp_bias(int32_t *b, uint32_t n, int32_t lim) {
    for (uint32_t o = 0; o < n; o++) {
        if (b[o] > lim) {
            b[o] = lim;
        } else if (b[o] < -lim) {
            b[o] = -lim;
        }
    }
}

/* APU state inside the SEL buffer: channels u16[k] | ibar f32[C] | iacc f32[C] | age u16[C] |
 * excl u8[C], each part 4-byte aligned. */
typedef struct {
    uint16_t *ch;
    float *ibar, *iacc;
    uint16_t *age;
    uint8_t *excl;
} sel_t;

/* A transient mark in an APU channel's age (saved ages stay below it): "taken" while
 * end_period chooses, "to be measured" while a probe runs. */
#define APU_PENDING 0x8000u

static size_t al4(size_t n) {
    return (n + 3u) & ~(size_t)3u;
}

static sel_t sel_of(const tmp_trainer *t, int32_t i, uint32_t cin) {
    sel_t s;
    memset(&s, 0, sizeof s);
    uint8_t *q = (uint8_t *)lb_ptr(t, TMP_LB_SEL, i);
    if (q == NULL) {
        return s;
    }
    s.ch = (uint16_t *)(void *)q;
    if (t->p->flags[i] & TMP_TL_APU) {
        q += al4(2u * t->p->k[i]);
        s.ibar = (float *)(void *)q;
        q += 4u * cin;
        s.iacc = (float *)(void *)q;
        q += 4u * cin;
        s.age = (uint16_t *)(void *)q;
        q += al4(2u * cin);
        s.excl = q;
    }
    return s;
}

/* APU window m = ceil(1 / ratio). */
static uint32_t apu_window(float ratio) {
    float m = ceilf(1.0f / ratio - 1e-4f);
    return m < 1.0f ? 1u : (uint32_t)m;
}

/* The largest exclusion count a saved selection may hold: m - 1 (at most 255), what engines
 * before session 42 wrote (they excluded a selection for the next m - 1 periods). */
static uint8_t excl_max_of(const tmp_train_plan *p) {
    const uint32_t m = apu_window(p->ratio);
    return (uint8_t)(m > 1 ? (m - 1 > 255 ? 255 : m - 1) : 0);
}

/* The exclusion count of a channel just selected: it sits out the next period (ratio < 1). */
static uint8_t excl_next(const tmp_train_plan *p) {
    return apu_window(p->ratio) > 1 ? 1u : 0u;
}

static uint32_t tables_crc(const tmp_model *m) {
    uint32_t c = tmp_crc32(0, m->data + m->tensor_table_off, (size_t)m->num_tensors * TMP_TENSOR_RECORD_SIZE);
    return tmp_crc32(c, m->data + m->layer_table_off, (size_t)m->num_layers * TMP_LAYER_RECORD_SIZE);
}

/* ---------------------------------------------------------------- set-up */

/* The training state as a new run starts it: zero momentum; each selection the plan's, with no
 * importances or ages and the selected channels excluded for the next period; a new period. The
 * parameters, the Fisher sums, the step counters and the rounding generator are left alone. */
static tmp_status reset_state(tmp_trainer *t) {
    const tmp_train_plan *p = t->p;
    for (int32_t i = 0; i < p->num_layers; i++) {
        static const uint8_t mom[2] = { TMP_LB_VW, TMP_LB_VB };
        for (int q = 0; q < 2; q++) {
            const tmp_buf *bb = lbuf(t, mom[q], i);
            if (bb->size != 0) {
                memset(t->arena + bb->offset, 0, bb->size);
            }
        }
        const tmp_buf *sb = lbuf(t, TMP_LB_SEL, i);
        if (sb->size == 0) {
            continue;
        }
        tmp_layer l;
        tmp_tensor tin;
        if (tmp_model_layer(t->m, i, &l, NULL) != TMP_OK || tmp_model_tensor(t->m, l.in0, &tin, NULL) != TMP_OK) {
            return TMP_ERR_FORMAT;
        }
        const uint32_t cin = cin_of(&l, &tin), k = p->k[i];
        sel_t s = sel_of(t, i, cin);
        /* padding included, so a saved selection's bytes are defined (zero) */
        memset(t->arena + sb->offset, 0, sb->size);
        memcpy(s.ch, p->channels + p->chan_off[i], 2u * k);
        if (s.excl != NULL) {
            const uint8_t next = excl_next(p);
            for (uint32_t j = 0; j < k; j++) {
                s.excl[s.ch[j]] = next;
            }
        }
    }
    t->period_steps = 0;
    return TMP_OK;
}

tmp_status tmp_trainer_reset(tmp_trainer *t) {
    if (t == NULL || t->p == NULL) {
        return TMP_ERR_ARG;
    }
    if (tmp_trainer_usable(t, 1) != TMP_OK) {
        return TMP_ERR_BUSY;
    }
    t->last_pred = -1;
    const tmp_train_plan *p = t->p;
    tmp_layer l;
    tmp_tensor tin, tout;
    for (int32_t i = 0; i < p->num_layers; i++) {
        const uint8_t f = p->flags[i];
        if (!(f & (TMP_TL_W | TMP_TL_B | TMP_TL_REGION))) {
            continue;
        }
        if (tmp_model_layer(t->m, i, &l, NULL) != TMP_OK || tmp_model_tensor(t->m, l.in0, &tin, NULL) != TMP_OK ||
            tmp_model_tensor(t->m, l.out, &tout, NULL) != TMP_OK) {
            return TMP_ERR_FORMAT;
        }
        const uint32_t cin = cin_of(&l, &tin), cout = (uint32_t)tout.dims.c;
        if (f & TMP_TL_W) {
            const uint32_t wc = weights_of(&l, cin, cout);
            int8_t *w = (int8_t *)lb_ptr(t, TMP_LB_W, i);
            memcpy(w, l.weights, wc);
            float *wm = (float *)lb_ptr(t, TMP_LB_WM, i);
            if (wm != NULL) {
                const uint32_t per_o = wc / (l.type == TMP_LAYER_DWCONV ? 1u : cout);
                for (uint32_t e = 0; e < wc; e++) {
                    float s = l.type == TMP_LAYER_DWCONV ? l.wscale[e % cin] : l.wscale[e / per_o];
                    wm[e] = (float)w[e] * s;
                }
            }
        }
        if (f & TMP_TL_B) {
            int32_t *b = (int32_t *)lb_ptr(t, TMP_LB_B, i);
            memcpy(b, l.bias, 4u * cout);
            float *bm = (float *)lb_ptr(t, TMP_LB_BM, i);
            if (bm != NULL) {
                for (uint32_t o = 0; o < cout; o++) {
                    bm[o] = (float)b[o] * tin.scale * l.wscale[o];
                }
            }
        }
        float *fish = (float *)lb_ptr(t, TMP_LB_FISH, i);
        if (fish != NULL) {
            memset(fish, 0, 4u * cout);
        }
    }
    tmp_status st = reset_state(t);
    if (st != TMP_OK) {
        return st;
    }
    t->rng = t->seed != 0 ? t->seed : 0x9E3779B9u;
    t->fisher_samples = 0; /* the Fisher sums were zeroed above */
    return TMP_OK;
}

tmp_status tmp_trainer_init(tmp_trainer *t, const tmp_model *m, const tmp_train_plan *p, void *arena,
    size_t arena_size, float lr, uint32_t seed) {
    if (t == NULL || m == NULL || p == NULL || arena == NULL || ((uintptr_t)arena & 3u) != 0 ||
        !(lr >= 0.0f) || !isfinite(lr)) {
        return TMP_ERR_ARG;
    }
    if (p->model_crc != m->crc || p->num_layers != (int32_t)m->num_layers ||
        p->num_tensors != (int32_t)m->num_tensors) {
        return TMP_ERR_ARG;
    }
    if (arena_size < p->arena_bytes) {
        return TMP_ERR_SIZE;
    }
    memset(t, 0, sizeof *t);
    t->m = m;
    t->p = p;
    t->arena = (uint8_t *)arena;
    t->lr = lr;
    t->beta = 0.9f;
    t->tau = 0.1f;
    t->seed = seed;
    t->tables_crc = tables_crc(m);
    memset(t->arena, TMP_ARENA_PAINT, p->arena_bytes);
    return tmp_trainer_reset(t);
}

uint32_t tmp_trainer_high_water(const tmp_trainer *t) {
    if (t == NULL || t->p == NULL) {
        return 0;
    }
    uint32_t n = t->p->arena_bytes;
    while (n > 0 && t->arena[n - 1] == TMP_ARENA_PAINT) {
        n--;
    }
    return n;
}

int32_t tmp_trainer_channels(const tmp_trainer *t, int32_t layer, const uint16_t **channels) {
    if (t == NULL || layer < 0 || layer >= t->p->num_layers || !(t->p->flags[layer] & TMP_TL_W)) {
        return 0;
    }
    *channels = (const uint16_t *)lb_ptr(t, TMP_LB_SEL, layer);
    return t->p->k[layer];
}

const float *tmp_trainer_fisher(const tmp_trainer *t, int32_t layer, int32_t *n, float *scale) {
    if (t == NULL || t->p == NULL || layer < 0 || layer >= t->p->num_layers || t->fisher_samples == 0) {
        return NULL;
    }
    const float *d = (const float *)lb_ptr(t, TMP_LB_FISH, layer);
    if (d == NULL) {
        return NULL;
    }
    *n = (int32_t)(lbuf(t, TMP_LB_FISH, layer)->size / 4u);
    *scale = 1.0f / (2.0f * (float)t->fisher_samples);
    return d;
}

/* ---------------------------------------------------------------- forward */

static tmp_status save_for_backward(tmp_trainer *t, int32_t i, const tmp_layer *l, const tmp_tensor *tin,
    const tmp_tensor *tout, const int8_t *in) {
    const tmp_train_plan *p = t->p;
    const uint32_t k = p->k[i];
    const uint16_t *ch = (const uint16_t *)lb_ptr(t, TMP_LB_SEL, i);
    void *saved = lb_ptr(t, TMP_LB_SAVED, i);
    if (l->type == TMP_LAYER_FC) {
        tmp_dims d = { 1, 1, tin->dims.h * tin->dims.w * tin->dims.c };
        return tmp_save_channels_s8(&d, in, ch, (int32_t)k, (int8_t *)saved);
    }
    if (p->r == 1) {
        return tmp_save_channels_s8(&tin->dims, in, ch, (int32_t)k, (int8_t *)saved);
    }
    tmp_grad_conv_params gp = { p->r, l->stride_h, l->stride_w, l->pad_t, l->pad_l };
    return tmp_gc_sums_s8(&gp, &tin->dims, in, -tin->zero_point, &tout->dims, ch, (int32_t)k,
        tmp_gc_xs_type(p->r, l->stride_h, l->stride_w), saved);
}

/* Layers [from, to) of the forward pass. */
static tmp_status forward_range(tmp_trainer *t, const int8_t *x, int save, int32_t from, int32_t to) {
    const tmp_train_plan *p = t->p;
    tmp_layer l;
    tmp_tensor tin, tout;
    for (int32_t i = from; i < to; i++) {
        if (tmp_model_layer(t->m, i, &l, NULL) != TMP_OK || tmp_model_tensor(t->m, l.in0, &tin, NULL) != TMP_OK ||
            tmp_model_tensor(t->m, l.out, &tout, NULL) != TMP_OK) {
            return TMP_ERR_FORMAT;
        }
        const uint8_t f = p->flags[i];
        const int8_t *in0 = act_ptr(t, l.in0, x);
        const int8_t *in1 = l.type == TMP_LAYER_ADD ? act_ptr(t, l.in1, x) : NULL;
        int8_t *out = act_ptr(t, l.out, x);
        if (p->in_place[i]) {
            /* the output shares its victim's buffer: same offset by construction */
            out = (int8_t *)(uintptr_t)(p->in_place[i] == 2 ? in1 : in0);
        }
        tmp_status s;
        if (save && (f & TMP_TL_W)) {
            s = save_for_backward(t, i, &l, &tin, &tout, in0);
            if (s != TMP_OK) {
                return s;
            }
        }
        if (f & TMP_TL_W) {
            l.weights = (const int8_t *)lb_ptr(t, TMP_LB_W, i);
        }
        if (f & TMP_TL_B) {
            l.bias = (const int32_t *)lb_ptr(t, TMP_LB_B, i);
        }
        s = tmp_layer_forward(t->m, &l, in0, in1, out, lb_ptr(t, TMP_LB_FSCRATCH, i));
        if (s != TMP_OK) {
            return s;
        }
        if (save && (f & TMP_TL_REGION)) {
            s = tmp_mask_s8(&tout.dims, out, l.act_min, l.act_max, p->r, tmp_mask_kind_for(p->r),
                (uint8_t *)lb_ptr(t, TMP_LB_MASK, i));
            if (s != TMP_OK) {
                return s;
            }
            void *asum = lb_ptr(t, TMP_LB_ASUM, i);
            if (asum != NULL) {
                tmp_grad_conv_params gp = { p->r, 1, 1, 0, 0 };
                s = tmp_gc_sums_s8(&gp, &tout.dims, out, -tout.zero_point, &tout.dims, NULL, tout.dims.c,
                    tmp_gc_xs_type(p->r, 1, 1), asum);
                if (s != TMP_OK) {
                    return s;
                }
            }
        }
    }
    return TMP_OK;
}

static tmp_status forward(tmp_trainer *t, const int8_t *x, int save) {
    return forward_range(t, x, save, 0, t->p->num_layers);
}

/* ---------------------------------------------------------------- feature cache */

/* How a step uses the cache: where one sample's entry is (memory, or the caller's io). */
enum { CACHE_NONE = 0, CACHE_FILL, CACHE_FROM };

typedef struct {
    int mode;
    int8_t *mem;          /* the entry in memory, or NULL: through io */
    const tmp_fit_io *io;
    uint32_t index;       /* sample index for io */
    int failed;           /* CACHE_FILL through io: a store failed */
} cache_op;

/* Copy the boundary tensors between their arena slots and the cache entry. */
static tmp_status cache_move(const tmp_trainer *t, cache_op *op) {
    const tmp_train_plan *p = t->p;
    uint32_t off = 0;
    tmp_tensor tt;
    for (int32_t k = 1; k <= p->first && k < p->num_tensors; k++) {
        if (!p->cache_t[k]) {
            continue;
        }
        if (tmp_model_tensor(t->m, k, &tt, NULL) != TMP_OK) {
            return TMP_ERR_FORMAT;
        }
        const uint32_t n = (uint32_t)(tt.dims.h * tt.dims.w * tt.dims.c);
        int8_t *slot = (int8_t *)(t->arena + p->act_offset[k]);
        if (op->mode == CACHE_FILL) {
            if (op->mem != NULL) {
                memcpy(op->mem + off, slot, n);
            } else if (!op->failed && op->io->cache_store(op->io->ctx, op->index, off, slot, n) != 0) {
                op->failed = 1;
            }
        } else if (op->mem != NULL) {
            memcpy(slot, op->mem + off, n);
        } else if (op->io->cache_load(op->io->ctx, op->index, off, slot, n) != 0) {
            return TMP_ERR_ARG;
        }
        off += n;
    }
    return TMP_OK;
}

static uint64_t prefix_macs(const tmp_train_plan *p) {
    uint64_t s = 0;
    for (int32_t i = 0; i < p->first && i < p->num_layers; i++) {
        s += p->fwd_macs[i];
    }
    return s;
}

/* ---------------------------------------------------------------- backward */

static uint32_t grid_n(tmp_dims d, int32_t r) {
    return (uint32_t)((d.h + r - 1) / r) * (uint32_t)((d.w + r - 1) / r) * (uint32_t)d.c;
}

/* The gradient map of tensor `ti` for writing by layer i: zeroed when i writes it first. */
static float *dx_for(tmp_trainer *t, int32_t i, int32_t ti, int *zeroed) {
    float *dx = grad_ptr(t, ti);
    if (dx != NULL && t->p->grad_birth[ti] == i && !*zeroed) {
        tmp_tensor tt;
        tmp_model_tensor(t->m, ti, &tt, NULL);
        memset(dx, 0, 4u * grid_n(tt.dims, t->p->r));
        *zeroed = 1;
    }
    return dx;
}

static int needs_grad(const tmp_trainer *t, int32_t ti) {
    return ti >= 1 && ti - 1 >= t->p->first;
}

/* Weight element index of slice element e. */
typedef struct {
    int type;
    uint32_t kh, kw, cin, k;
    const uint16_t *ch;
} slice_geom;

static uint32_t slice_index(const slice_geom *g, uint32_t o, uint32_t e) {
    switch (g->type) {
        case TMP_LAYER_CONV: {
            uint32_t j = e % g->k, uv = e / g->k;
            return (o * g->kh * g->kw + uv) * g->cin + (g->ch != NULL ? g->ch[j] : j);
        }
        case TMP_LAYER_DWCONV: /* o is the channel, e the tap */
            return e * g->cin + o;
        default:
            return o * g->cin + (g->ch != NULL ? g->ch[e] : e);
    }
}

/* Gather (to_slice != 0) or scatter the slice of output channel o between the layer's array
 * `a` of `size`-byte elements and the contiguous `buf`. The common geometries get their own
 * loops: this runs for every trained weight of every step. */
static void move_slice(const slice_geom *g, uint32_t o, uint32_t n, void *a, void *buf, uint32_t size,
    int to_slice) {
    uint8_t *A = (uint8_t *)a, *B = (uint8_t *)buf;
    if (g->type != TMP_LAYER_CONV && g->type != TMP_LAYER_DWCONV && size == 1u) {
        /* pointwise / fc int8: row o, input channels ch[e] (or e) */
        uint8_t *row = A + (size_t)o * g->cin;
        if (g->ch == NULL) {
            if (to_slice) {
                memcpy(B, row, n);
            } else {
                memcpy(row, B, n);
            }
        } else if (to_slice) {
            for (uint32_t e = 0; e < n; e++) {
                B[e] = row[g->ch[e]];
            }
        } else {
            for (uint32_t e = 0; e < n; e++) {
                row[g->ch[e]] = B[e];
            }
        }
        return;
    }
    if (g->type == TMP_LAYER_DWCONV && size == 1u) {
        /* depthwise int8: channel o of every tap */
        for (uint32_t e = 0; e < n; e++) {
            if (to_slice) {
                B[e] = A[(size_t)e * g->cin + o];
            } else {
                A[(size_t)e * g->cin + o] = B[e];
            }
        }
        return;
    }
    for (uint32_t e = 0; e < n; e++) {
        size_t x = (size_t)slice_index(g, o, e) * size;
        if (to_slice) {
            memcpy(B + (size_t)e * size, A + x, size);
        } else {
            memcpy(A + x, B + (size_t)e * size, size);
        }
    }
}

static tmp_status apply_slice(tmp_trainer *t, int32_t i, const slice_geom *g, uint32_t o, uint32_t n,
    const float *dw, float wscale, uint8_t *gather) {
    const float mom = t->p->momentum;
    int8_t *w = (int8_t *)lb_ptr(t, TMP_LB_W, i);
    float *wm = (float *)lb_ptr(t, TMP_LB_WM, i);
    float *vw = (float *)lb_ptr(t, TMP_LB_VW, i);
    int8_t *g8 = (int8_t *)gather;
    float *gm = (float *)(void *)(gather + al4(n));
    float *gv = gm + (wm != NULL ? n : 0u);
    move_slice(g, o, n, w, g8, 1u, 1);
    if (wm != NULL) {
        move_slice(g, o, n, wm, gm, 4u, 1);
    }
    if (vw != NULL) {
        move_slice(g, o, n, vw, gv, 4u, 1);
    }
    tmp_status s;
    if (wm != NULL) {
        s = tmp_sgd_f32((int32_t)n, gm, dw, t->lr, mom, vw != NULL ? gv : NULL);
        if (s == TMP_OK) {
            s = tmp_requant_s8_f32((int32_t)n, gm, wscale, g8);
        }
    } else {
        s = tmp_sgd_s8_stochastic((int32_t)n, g8, dw, t->lr, wscale, mom, vw != NULL ? gv : NULL, &t->rng);
    }
    if (s != TMP_OK) {
        return s;
    }
    move_slice(g, o, n, w, g8, 1u, 0);
    if (wm != NULL) {
        move_slice(g, o, n, wm, gm, 4u, 0);
    }
    if (vw != NULL) {
        move_slice(g, o, n, vw, gv, 4u, 0);
    }
    return TMP_OK;
}

/* The backward pass of layer i. A probe pass (probe != 0) updates nothing: it computes only the
 * weight gradients of APU layers and adds their input channels' squared sums to iacc, for the
 * channels marked pending (APU_PENDING in their age); every other layer passes its gradient on. */
static tmp_status backward_layer(tmp_trainer *t, int32_t i, uint32_t *upd, int probe) {
    const tmp_train_plan *p = t->p;
    const int32_t r = p->r;
    const uint8_t f = p->flags[i];
    tmp_layer l;
    tmp_tensor tin, tout;
    if (tmp_model_layer(t->m, i, &l, NULL) != TMP_OK || tmp_model_tensor(t->m, l.in0, &tin, NULL) != TMP_OK ||
        tmp_model_tensor(t->m, l.out, &tout, NULL) != TMP_OK) {
        return TMP_ERR_FORMAT;
    }
    float *G = grad_ptr(t, l.out);
    if (G == NULL) {
        return TMP_ERR_SIZE;
    }
    const tmp_mask_kind kind = tmp_mask_kind_for(r);
    const uint8_t *mask = (const uint8_t *)lb_ptr(t, TMP_LB_MASK, i);
    const uint32_t cout = (uint32_t)tout.dims.c, cin = cin_of(&l, &tin);
    uint8_t *bscratch = (uint8_t *)lb_ptr(t, TMP_LB_BSCRATCH, i);
    tmp_status s;

    /* selection pass: Fisher sums of the output, from g = dL/da before the clamp mask */
    float *fish = probe ? NULL : (float *)lb_ptr(t, TMP_LB_FISH, i);
    if (fish != NULL) {
        const void *asum = lb_ptr(t, TMP_LB_ASUM, i);
        const tmp_xs_type at = tmp_gc_xs_type(r, 1, 1);
        const uint32_t P = grid_n(tout.dims, r) / cout;
        float *acc = (float *)(void *)(bscratch + lbuf(t, TMP_LB_BSCRATCH, i)->size - 4u * cout);
        for (uint32_t o = 0; o < cout; o++) {
            acc[o] = 0.0f;
        }
        for (uint32_t q = 0; q < P; q++) {
            for (uint32_t o = 0; o < cout; o++) {
                float a = at == TMP_XS_S16 ? (float)((const int16_t *)asum)[q * cout + o]
                                           : (float)((const int32_t *)asum)[q * cout + o];
                acc[o] += G[q * cout + o] * a;
            }
        }
        for (uint32_t o = 0; o < cout; o++) {
            float v = acc[o] * tout.scale;
            fish[o] += v * v;
        }
    }

    float *db = (float *)lb_ptr(t, TMP_LB_DB, i);
    if (db != NULL) {
        memset(db, 0, 4u * cout);
    }
    s = tmp_grad_gbar_f32(&tout.dims, r, G, mask != NULL ? kind : TMP_MASK_NONE, mask, G, db);
    if (s != TMP_OK) {
        return s;
    }
    int zeroed0 = 0, zeroed1 = 0;
    if (l.type == TMP_LAYER_ADD) {
        const uint32_t n = grid_n(tout.dims, r);
        if (needs_grad(t, l.in0)) {
            float *dx = dx_for(t, i, l.in0, &zeroed0);
            for (uint32_t e = 0; e < n; e++) {
                dx[e] += G[e];
            }
        }
        if (needs_grad(t, l.in1)) {
            float *dx = l.in1 == l.in0 ? grad_ptr(t, l.in1) : dx_for(t, i, l.in1, &zeroed1);
            for (uint32_t e = 0; e < n; e++) {
                dx[e] += G[e];
            }
        }
        return TMP_OK;
    }
    if (l.type == TMP_LAYER_AVGPOOL) {
        if (needs_grad(t, l.in0)) {
            s = tmp_avgpool_dx_f32(&tin.dims, r, G, dx_for(t, i, l.in0, &zeroed0));
        }
        return s;
    }
    const int8_t *w = (f & TMP_TL_W) ? (const int8_t *)lb_ptr(t, TMP_LB_W, i) : l.weights;
    tmp_grad_conv_params gp = { r, l.stride_h, l.stride_w, l.pad_t, l.pad_l };
    tmp_filter_dims fd = { l.kh, l.kw };
    if (f & TMP_TL_DX) {
        float *dx = dx_for(t, i, l.in0, &zeroed0);
        switch (l.type) {
            case TMP_LAYER_CONV:
                s = tmp_conv_dx_f32(&gp, &tin.dims, &fd, w, l.wscale, &tout.dims, G, dx, bscratch);
                break;
            case TMP_LAYER_DWCONV:
                s = tmp_dwconv_dx_f32(&gp, &tin.dims, &fd, w, l.wscale, &tout.dims, G, dx, bscratch);
                break;
            case TMP_LAYER_PWCONV:
                s = tmp_pwconv_dx_f32(r, &tin.dims, w, l.wscale, &tout.dims, G, dx);
                break;
            default:
                s = tmp_fc_dx_f32((int32_t)cin, (int32_t)cout, w, l.wscale, G, dx);
                break;
        }
        if (s != TMP_OK) {
            return s;
        }
    }
    uint32_t t0 = now(t);
    if ((f & TMP_TL_B) && !probe) {
        int32_t *b = (int32_t *)lb_ptr(t, TMP_LB_B, i);
        float *bm = (float *)lb_ptr(t, TMP_LB_BM, i);
        float *vb = (float *)lb_ptr(t, TMP_LB_VB, i);
        if (t->hook != NULL) {
            t->hook(t->hook_ctx, i, -1, NULL, 0, db, (int32_t)cout);
        }
        if (bm != NULL) {
            s = tmp_sgd_f32((int32_t)cout, bm, db, t->lr, p->momentum, vb);
            if (s == TMP_OK) {
                s = tmp_requant_s32_f32((int32_t)cout, bm, tin.scale, l.wscale, b);
            }
        } else {
            s = tmp_sgd_s32_stochastic((int32_t)cout, b, db, t->lr, tin.scale, l.wscale, p->momentum, vb, &t->rng);
        }
        if (s != TMP_OK) {
            return s;
        }
        clamp_bias(b, cout, bias_limit(&l, cin));
    }
    *upd += (uint32_t)(now(t) - t0);
    if (!(f & TMP_TL_W) || (probe && !(f & TMP_TL_APU))) {
        return TMP_OK;
    }
    const uint32_t k = p->k[i];
    sel_t sel = sel_of(t, i, cin);
    if (probe) { /* nothing of this layer is measured in this pass */
        uint32_t j = 0;
        while (j < k && !(sel.age[sel.ch[j]] & APU_PENDING)) {
            j++;
        }
        if (j == k) {
            return TMP_OK;
        }
    }
    const void *saved = lb_ptr(t, TMP_LB_SAVED, i);
    float *dw = (float *)lb_ptr(t, TMP_LB_DW, i);
    const uint32_t n = l.type == TMP_LAYER_CONV ? (uint32_t)l.kh * l.kw * k
        : l.type == TMP_LAYER_DWCONV ? (uint32_t)l.kh * l.kw : k;
    /* the gathers sit at the end of the backward scratch: int8 slice, fp32 master, momentum */
    const uint32_t gather_bytes = (uint32_t)al4(n) + (lb_ptr(t, TMP_LB_WM, i) != NULL ? 4u * n : 0u) +
        (lb_ptr(t, TMP_LB_VW, i) != NULL ? 4u * n : 0u);
    const int in_place = tmp_train_update_in_place(l.type, p->storage == TMP_STORAGE_FP32, p->momentum > 0.0f);
    uint8_t *gather = in_place ? NULL : bscratch + (lbuf(t, TMP_LB_BSCRATCH, i)->size - gather_bytes);
    const float s_x = tin.scale;
    const int32_t in_off = -tin.zero_point;
    const tmp_xs_type xt = tmp_gc_xs_type(r, l.stride_h, l.stride_w);
    slice_geom g = { l.type, (uint32_t)l.kh, (uint32_t)l.kw, cin, k, sel.ch };
    const uint32_t outer = l.type == TMP_LAYER_DWCONV ? k : cout;
    int8_t *w8 = (int8_t *)lb_ptr(t, TMP_LB_W, i);
    /* condensed conv / pointwise: the window sums as floats once for all output channels, at
     * the start of the backward scratch (the dx kernel's scratch there is done with) */
    const float *xf = NULL;
    if (r > 1 && (l.type == TMP_LAYER_CONV || l.type == TMP_LAYER_PWCONV)) {
        const int32_t nx = tmp_gc_sums_size(r, &tout.dims, (int32_t)k, xt) / (int32_t)xt;
        s = tmp_gc_sums_f32(xt, saved, nx, (float *)(void *)bscratch);
        if (s != TMP_OK) {
            return s;
        }
        xf = (const float *)(const void *)bscratch;
    }
    for (uint32_t oo = 0; oo < outer; oo++) {
        const uint32_t o = l.type == TMP_LAYER_DWCONV ? (sel.ch != NULL ? sel.ch[oo] : oo) : oo;
        if (probe && l.type == TMP_LAYER_DWCONV && !(sel.age[o] & APU_PENDING)) {
            continue;
        }
        switch (l.type) {
            case TMP_LAYER_CONV:
            case TMP_LAYER_PWCONV:
                if (l.type == TMP_LAYER_PWCONV) {
                    gp.stride_h = gp.stride_w = 1;
                    gp.pad_t = gp.pad_l = 0;
                }
                s = r == 1 ? tmp_conv_dw_f32(&gp, &tin.dims, (const int8_t *)saved, (int32_t)k, in_off, s_x, &fd,
                                 &tout.dims, G, (int32_t)o, dw)
                           : tmp_conv_dw_gc_f32(&gp, &tout.dims, G, (int32_t)o, xf, (int32_t)k, s_x, &fd, dw);
                break;
            case TMP_LAYER_DWCONV:
                s = r == 1 ? tmp_dwconv_dw_f32(&gp, &tin.dims, (const int8_t *)saved, (int32_t)k, (int32_t)oo, in_off,
                                 s_x, &fd, &tout.dims, G, (int32_t)o, dw)
                           : tmp_dwconv_dw_gc_f32(&gp, &tout.dims, G, (int32_t)o, xt, saved, (int32_t)k, (int32_t)oo, s_x,
                                 &fd, dw);
                break;
            default:
                s = tmp_fc_dw_f32((int32_t)k, (const int8_t *)saved, in_off, s_x, NULL, (int32_t)k, G[o], dw);
                break;
        }
        if (s != TMP_OK) {
            return s;
        }
        if (probe) { /* the pending channels' importance; the weights stay */
            for (uint32_t e = 0; e < n; e++) {
                uint32_t c = l.type == TMP_LAYER_DWCONV ? o : sel.ch[l.type == TMP_LAYER_CONV ? e % k : e];
                if (sel.age[c] & APU_PENDING) {
                    sel.iacc[c] += dw[e] * dw[e];
                }
            }
            continue;
        }
        if (t->hook != NULL) {
            t->hook(t->hook_ctx, i, (int32_t)o, dw, (int32_t)n, NULL, 0);
        }
        uint32_t u0 = now(t);
        if (in_place) {
            /* int8 weights without momentum (the default): the step where the weights are, no
             * gather and scatter, and the APU importance sum_o dw^2 of each input channel on the
             * way; the same draws and sums in the same order as the general path below */
            if (l.type == TMP_LAYER_DWCONV) {
                s = tmp_sgd_s8_stochastic_at((int32_t)n, w8 + o, NULL, (int32_t)cin, dw, t->lr, l.wscale[o],
                    sel.iacc != NULL ? sel.iacc + o : NULL, &t->rng);
            } else {
                s = tmp_sgd_s8_stochastic_at((int32_t)n, w8 + (size_t)o * cin, g.ch, 1, dw, t->lr, l.wscale[o],
                    sel.iacc, &t->rng);
            }
        } else {
            if (sel.iacc != NULL) { /* APU importance of each input channel */
                for (uint32_t e = 0; e < n; e++) {
                    uint32_t c = l.type == TMP_LAYER_DWCONV ? o : sel.ch[l.type == TMP_LAYER_CONV ? e % k : e];
                    sel.iacc[c] += dw[e] * dw[e];
                }
            }
            s = apply_slice(t, i, &g, o, n, dw, l.wscale[o], gather);
        }
        *upd += (uint32_t)(now(t) - u0);
        if (s != TMP_OK) {
            return s;
        }
    }
    return TMP_OK;
}

/* ---------------------------------------------------------------- step */

static tmp_status check_model(const tmp_trainer *t) {
    return tables_crc(t->m) == t->tables_crc ? TMP_OK : TMP_ERR_FORMAT;
}

static tmp_status end_period(tmp_trainer *t);

/* step_impl's modes */
#define PASS_PROBE 1       /* update nothing, count no step (backward_layer); MACs and time count */
#define PASS_NO_PERIOD 2   /* a step that leaves its period's end to the caller (fit with a probe) */

/* One step; op (may be NULL) fills or uses the sample's cache entry; *pred = argmax of the
 * forward pass's logits; mode: 0 or PASS_* above. */
static tmp_status step_body(tmp_trainer *t, const int8_t *x, int32_t label, float *loss, cache_op *op,
    int32_t *pred, int mode) {
    const int probe = (mode & PASS_PROBE) != 0;
    const int from_cache = op != NULL && op->mode == CACHE_FROM;
    if (t == NULL || t->p == NULL || (x == NULL && !from_cache)) {
        return TMP_ERR_ARG;
    }
    if (op != NULL && op->mode != CACHE_NONE && t->p->cache_bytes == 0) {
        return TMP_ERR_ARG;
    }
    if (label < 0 || label >= (int32_t)t->m->num_classes) {
        return TMP_ERR_ARG;
    }
    tmp_status s = check_model(t);
    if (s != TMP_OK) {
        return s;
    }
    const tmp_train_plan *p = t->p;
    const int32_t L = p->num_layers, T = p->num_tensors;
    uint32_t t0 = now(t);
    if (op == NULL || op->mode == CACHE_NONE) {
        s = forward(t, x, 1);
    } else if (from_cache) {
        s = cache_move(t, op);
        if (s == TMP_OK) {
            s = forward_range(t, NULL, 1, p->first, L);
        }
    } else {
        s = forward_range(t, x, 1, 0, p->first);
        if (s == TMP_OK) {
            s = cache_move(t, op);
        }
        if (s == TMP_OK) {
            s = forward_range(t, x, 1, p->first, L);
        }
    }
    if (s != TMP_OK) {
        return s;
    }
    tmp_tensor to;
    tmp_model_tensor(t->m, T - 1, &to, NULL);
    const int8_t *logits = act_ptr(t, T - 1, x);
    /* the class the parameters before this step predict: what predict() would have said */
    const int32_t best = tmp_argmax_s8(logits, to.dims.c);
    if (pred != NULL) {
        *pred = best;
    }
    float l = 0.0f;
    if (p->first < L) {
        s = tmp_softmax_xent_s8(to.dims.c, logits, to.zero_point, to.scale, label, &l, grad_ptr(t, T - 1));
    } else {
        /* nothing trainable: the loss only, into the forward scratch of nothing: compute directly */
        float mx = -INFINITY;
        for (int32_t c = 0; c < to.dims.c; c++) {
            float z = (float)(logits[c] - to.zero_point) * to.scale;
            mx = z > mx ? z : mx;
        }
        float sum = 0.0f;
        for (int32_t c = 0; c < to.dims.c; c++) {
            sum += expf((float)(logits[c] - to.zero_point) * to.scale - mx);
        }
        l = logf(sum) + mx - (float)(logits[label] - to.zero_point) * to.scale;
    }
    if (s != TMP_OK) {
        return s;
    }
    uint32_t t1 = now(t);
    t->ticks[TMP_PHASE_FORWARD] += (uint32_t)(t1 - t0);
    /* A stalled step: the loss has a gradient at the logits, but the last layer's clamp mask
     * (the logits' int8 limits) passes none of it, so nothing can train (too high a learning
     * rate drives logits there). Counted for the caller; the step is run as usual. */
    float *gl = p->first < L ? grad_ptr(t, T - 1) : NULL;
    const int32_t nl = to.dims.h * to.dims.w * to.dims.c;
    int wants = 0;
    for (int32_t c = 0; gl != NULL && c < nl; c++) {
        wants |= gl[c] != 0.0f;
    }
    for (int32_t i = L - 1; i >= p->first; i--) {
        uint32_t a = now(t), upd = 0;
        s = backward_layer(t, i, &upd, probe);
        uint32_t total = (uint32_t)(now(t) - a);
        t->ticks[TMP_PHASE_BACKWARD] += total - (upd < total ? upd : total);
        t->ticks[TMP_PHASE_UPDATE] += upd;
        if (s != TMP_OK) {
            return s;
        }
        if (i == L - 1 && wants && !probe) { /* the logits' gradient after the mask, before it is reused */
            int any = 0;
            for (int32_t c = 0; c < nl; c++) {
                any |= gl[c] != 0.0f;
            }
            t->stalled_steps += any == 0;
        }
    }
    t->macs[TMP_PHASE_FORWARD] += p->forward_macs - (from_cache ? prefix_macs(p) : 0u);
    t->macs[TMP_PHASE_BACKWARD] += p->backward_macs;
    if (probe) {
        return TMP_OK;
    }
    t->steps++;
    if (p->method == TMP_METHOD_FISHER) {
        t->fisher_samples++;
    }
    if (loss != NULL) {
        *loss = l;
    }
    t->last_pred = best;
    t->period_steps++;
    if (t->period != 0 && t->period_steps >= t->period && !(mode & PASS_NO_PERIOD)) {
        return end_period(t);
    }
    return TMP_OK;
}

/* step_body, the trainer marked busy while it runs (the caller's cache callbacks run inside) */
static tmp_status step_impl(tmp_trainer *t, const int8_t *x, int32_t label, float *loss, cache_op *op,
    int32_t *pred, int mode) {
    if (t == NULL) {
        return TMP_ERR_ARG;
    }
    const uint32_t was = t->busy;
    t->busy = TMP_BUSY_STEP;
    const tmp_status s = step_body(t, x, label, loss, op, pred, mode);
    t->busy = was;
    return s;
}

tmp_status tmp_trainer_step(tmp_trainer *t, const int8_t *x, int32_t label, float *loss) {
    if (tmp_trainer_usable(t, 1) != TMP_OK) {
        return TMP_ERR_BUSY;
    }
    return step_impl(t, x, label, loss, NULL, NULL, 0);
}

tmp_status tmp_trainer_step_fill(tmp_trainer *t, const int8_t *x, int32_t label, int8_t *cache, float *loss) {
    if (cache == NULL) {
        return TMP_ERR_ARG;
    }
    if (tmp_trainer_usable(t, 1) != TMP_OK) {
        return TMP_ERR_BUSY;
    }
    cache_op op = { CACHE_FILL, cache, NULL, 0, 0 };
    return step_impl(t, x, label, loss, &op, NULL, 0);
}

tmp_status tmp_trainer_step_cached(tmp_trainer *t, const int8_t *cache, int32_t label, float *loss) {
    if (cache == NULL) {
        return TMP_ERR_ARG;
    }
    if (tmp_trainer_usable(t, 1) != TMP_OK) {
        return TMP_ERR_BUSY;
    }
    cache_op op = { CACHE_FROM, (int8_t *)(uintptr_t)cache, NULL, 0, 0 };
    return step_impl(t, NULL, label, loss, &op, NULL, 0);
}

static uint32_t gcd_u32(uint32_t a, uint32_t b) {
    while (b != 0) {
        uint32_t r = a % b;
        a = b;
        b = r;
    }
    return a;
}

static uint32_t xorshift(uint32_t *s) {
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static tmp_status end_period_probe(tmp_trainer *t, const tmp_fit_io *io, uint32_t n, uint32_t count,
    uint32_t in_arena);
static tmp_status fit_run(tmp_trainer *t, uint32_t n, uint32_t epochs, uint32_t flags, const tmp_fit_io *io,
    tmp_fit_stats *stats);

tmp_status tmp_trainer_fit(tmp_trainer *t, uint32_t n, uint32_t epochs, uint32_t flags, const tmp_fit_io *io,
    tmp_fit_stats *stats) {
    if (tmp_trainer_usable(t, 1) != TMP_OK) {
        if (stats != NULL) {
            memset(stats, 0, sizeof *stats);
        }
        return TMP_ERR_BUSY;
    }
    if (t == NULL) {
        return fit_run(t, n, epochs, flags, io, stats);
    }
    /* between steps its callbacks may read the trainer, not change it */
    t->busy = TMP_BUSY_FIT;
    const tmp_status s = fit_run(t, n, epochs, flags, io, stats);
    t->busy = 0u;
    return s;
}

static tmp_status fit_run(tmp_trainer *t, uint32_t n, uint32_t epochs, uint32_t flags, const tmp_fit_io *io,
    tmp_fit_stats *stats) {
    tmp_fit_stats st;
    memset(&st, 0, sizeof st);
    if (stats != NULL) {
        *stats = st;
    }
    if (t == NULL || t->p == NULL || io == NULL || io->sample == NULL) {
        return TMP_ERR_ARG;
    }
    const tmp_train_plan *p = t->p;
    /* the cache pays when a later epoch can skip a non-empty prefix */
    const int use = !(flags & TMP_FIT_NO_CACHE) && p->cache_bytes != 0 && epochs > 1 &&
        p->method != TMP_METHOD_FISHER;
    int ext = use && io->cache_store != NULL && io->cache_load != NULL;
    /* the probe variant: fit ends every period itself, step periods too (the probe needs the
     * samples); after the first epoch its probes start from the arena's cached features */
    const uint32_t probe = p->method == TMP_METHOD_FISHER ? 0u : io->probe < n ? io->probe : n;
    uint32_t probe_cached = 0; /* samples below it: their features are in the arena */
    tmp_status s = TMP_OK;
    const uint32_t stalled0 = t->stalled_steps;
    for (uint32_t e = 0; e < epochs && !st.stopped; e++) {
        uint32_t a = 1, b = 0;
        if (!(flags & TMP_FIT_NO_SHUFFLE) && n > 1) {
            /* the order follows from the seed and the steps taken so far, not from e: fits of a
             * few epochs each (or after a load) go on as one long fit would, never repeating
             * one epoch's order */
            uint32_t rs = (t->seed ^ 0x5EEDF17Du) * 2654435761u + (t->steps + 1u) * 0x9E3779B9u;
            rs = rs != 0 ? rs : 1u;
            a = 1u + xorshift(&rs) % (n - 1u);
            while (gcd_u32(a, n) != 1u) {
                a = a % (n - 1u) + 1u;
            }
            b = xorshift(&rs) % n;
        }
        uint32_t j = 0;
        for (; j < n; j++) {
            const uint32_t i = (uint32_t)(((uint64_t)a * j + b) % n);
            int32_t label = -1;
            const int8_t *x = io->sample(io->ctx, i, &label);
            if (x == NULL) {
                s = TMP_ERR_ARG;
                break;
            }
            cache_op op = { CACHE_NONE, NULL, io, i, 0 };
            const int in_arena = use && i < p->cache_samples;
            if (in_arena || (ext && i < io->cache_end)) {
                op.mode = e == 0 ? CACHE_FILL : CACHE_FROM;
                op.mem = in_arena ? (int8_t *)(t->arena + p->cache_offset + (size_t)i * p->cache_bytes) : NULL;
            }
            float loss = 0.0f;
            int32_t pred = -1;
            s = step_impl(t, x, label, &loss, &op, &pred, probe != 0 ? PASS_NO_PERIOD : 0);
            if (s != TMP_OK) {
                break;
            }
            if (op.failed) {
                ext = 0; /* the caller's cache refused a store: recompute from now on */
            }
            if (e == 0 && op.mode == CACHE_FILL && !op.failed) {
                if (in_arena) {
                    st.in_arena++;
                } else {
                    st.outside++;
                }
            }
            st.cached_steps += op.mode == CACHE_FROM;
            st.steps++;
            if (probe != 0 && t->period != 0 && t->period_steps >= t->period) {
                s = end_period_probe(t, io, n, probe, probe_cached);
                if (s != TMP_OK) {
                    break;
                }
            }
            if (io->progress != NULL && io->progress(io->ctx, e, j + 1u, loss, pred == label) != 0) {
                st.stopped = 1;
                j++; /* this step is done */
                break;
            }
        }
        if (s != TMP_OK) {
            break;
        }
        /* an epoch whose last step ran is complete, also when the run stops after that step: it
         * counts and ends its period, so a later fit goes on as one uninterrupted run would */
        if (j == n) {
            st.epochs++;
            probe_cached = use ? (p->cache_samples < n ? p->cache_samples : n) : 0u;
            /* every method counts its periods, as a step loop with end_period() after each epoch
             * does; only APU layers have anything to re-select */
            if (t->period == 0 && p->method != TMP_METHOD_FISHER) {
                s = probe != 0 ? end_period_probe(t, io, n, probe, probe_cached) : end_period(t);
                if (s != TMP_OK) {
                    break;
                }
            }
        }
    }
    st.stalled = t->stalled_steps - stalled0;
    if (stats != NULL) {
        *stats = st;
    }
    return s;
}

tmp_status tmp_trainer_forward(tmp_trainer *t, const int8_t *x, const int8_t **out) {
    if (t == NULL || t->p == NULL || x == NULL || out == NULL) {
        return TMP_ERR_ARG;
    }
    if (tmp_trainer_usable(t, 0) != TMP_OK) {
        return TMP_ERR_BUSY;
    }
    tmp_status s = check_model(t);
    if (s != TMP_OK) {
        return s;
    }
    s = forward(t, x, 0);
    if (s != TMP_OK) {
        return s;
    }
    *out = act_ptr(t, t->p->num_tensors - 1, x);
    return TMP_OK;
}

/* ---------------------------------------------------------------- APU */

/* Layer i's APU state, its selection checked: the selection lives in the caller's arena, and one
 * written over would index past the layer's scores (a step's forward refuses it in its
 * channel-saving kernels). */
static tmp_status apu_layer(const tmp_trainer *t, int32_t i, uint32_t *cin, sel_t *s) {
    tmp_layer l;
    tmp_tensor tin;
    if (tmp_model_layer(t->m, i, &l, NULL) != TMP_OK || tmp_model_tensor(t->m, l.in0, &tin, NULL) != TMP_OK) {
        return TMP_ERR_FORMAT;
    }
    *cin = cin_of(&l, &tin);
    *s = sel_of(t, i, *cin);
    for (uint32_t j = 0; j < t->p->k[i]; j++) {
        if (s->ch[j] >= *cin) {
            return TMP_ERR_ARG;
        }
    }
    return TMP_OK;
}

/* A measurement I of channel c goes into its smoothed importance. A channel's first measurement
 * is taken as it is (smoothing from 0 would rank channels by how often they were measured); a
 * measured 0 becomes float's smallest normal value, so that 0 keeps meaning "never measured". */
static void apu_measured(const tmp_trainer *t, sel_t *s, uint32_t c, float I) {
    float v = s->ibar[c] == 0.0f ? I : t->beta * s->ibar[c] + (1.0f - t->beta) * I;
    /* a sum that overflowed stays finite (a saved importance must be), a NaN counts as 0 */
    s->ibar[c] = v > 0.0f ? (v < 3.40282347e+38f ? v : 3.40282347e+38f) : 1.17549435e-38f;
}

/* The next selection of an APU layer: the channels never measured (ibar 0) first, lower index
 * first, then the best by ibar * (1 + tau * age), among those not selected in the previous period
 * (excl > 0); filled from the excluded ones by score when too few are eligible (ratio > 1/2).
 * Ages and exclusions move on; the importance sums start again. */
static void apu_choose(const tmp_trainer *t, sel_t *s, uint32_t cin, uint32_t k) {
    const uint8_t next = excl_next(t->p);
    uint32_t taken = 0;
    for (int pass = 0; pass < 2 && taken < k; pass++) {
        while (taken < k) {
            int32_t best = -1;
            float bs = 0.0f;
            for (uint32_t c = 0; c < cin; c++) {
                if ((s->age[c] & APU_PENDING) || (pass == 0 && s->excl[c] > 0)) {
                    continue; /* the mark: taken in this selection */
                }
                /* never measured: above every measured score, which stops at FLT_MAX (one that
                 * overflowed would tie with them and win by its lower index) */
                float sc = s->ibar[c] * (1.0f + t->tau * (float)s->age[c]);
                sc = s->ibar[c] == 0.0f ? INFINITY : sc < 3.40282347e+38f ? sc : 3.40282347e+38f;
                if (best < 0 || sc > bs) {
                    best = (int32_t)c;
                    bs = sc;
                }
            }
            if (best < 0) {
                break;
            }
            s->age[best] |= APU_PENDING;
            taken++;
        }
    }
    uint32_t w = 0;
    for (uint32_t c = 0; c < cin; c++) {
        /* k at most, whatever marks a caller left (end_period() called from inside a probe) */
        if ((s->age[c] & APU_PENDING) && w < k) {
            s->ch[w++] = (uint16_t)c;
            s->age[c] = 0;
            s->excl[c] = next;
        } else {
            s->age[c] &= (uint16_t)~APU_PENDING;
            if (s->age[c] < 0x7FFFu) {
                s->age[c]++;
            }
            if (s->excl[c] > 0) {
                s->excl[c]--;
            }
        }
        s->iacc[c] = 0.0f;
    }
}

tmp_status tmp_trainer_end_period(tmp_trainer *t) {
    if (t == NULL || t->p == NULL) {
        return TMP_ERR_ARG;
    }
    if (tmp_trainer_usable(t, 1) != TMP_OK) {
        return TMP_ERR_BUSY;
    }
    return end_period(t);
}

static tmp_status end_period(tmp_trainer *t) {
    const tmp_train_plan *p = t->p;
    int32_t apu = 0;
    for (int32_t i = 0; i < p->num_layers && !apu; i++) {
        apu = (p->flags[i] & TMP_TL_APU) != 0;
    }
    /* other tables: other channel counts, other offsets (a plan without APU layers touches none) */
    if (apu && check_model(t) != TMP_OK) {
        return TMP_ERR_FORMAT;
    }
    for (int32_t i = 0; i < p->num_layers; i++) {
        if (!(p->flags[i] & TMP_TL_APU)) {
            continue;
        }
        uint32_t cin;
        sel_t s;
        tmp_status st = apu_layer(t, i, &cin, &s);
        if (st != TMP_OK) {
            return st;
        }
        /* the channels updated this period: their summed importance; the others keep theirs */
        for (uint32_t j = 0; j < p->k[i]; j++) {
            apu_measured(t, &s, s.ch[j], s.iacc[s.ch[j]]);
        }
        apu_choose(t, &s, cin, p->k[i]);
    }
    t->periods++;
    t->period_steps = 0;
    return TMP_OK;
}

/* Probe sample j of count among samples 0..n-1: spread over the indices (a caller's samples often
 * come class by class). */
static uint32_t probe_index(uint32_t j, uint32_t n, uint32_t count) {
    return (uint32_t)(((uint64_t)j * n) / count);
}

/* Layer i's selection for probe pass g: its pending channels g*k .. g*k + k - 1 (ascending, the
 * pending ones in order), filled up to k with channels not pending (the k the period updated). */
static void probe_group(const tmp_trainer *t, int32_t i, uint32_t g) {
    uint32_t cin;
    sel_t s;
    if (apu_layer(t, i, &cin, &s) != TMP_OK) {
        return;
    }
    const uint32_t k = t->p->k[i], lo = g * k;
    uint32_t pending = 0;
    for (uint32_t c = 0; c < cin; c++) {
        pending += (s.age[c] & APU_PENDING) != 0;
    }
    const uint32_t mine = pending <= lo ? 0u : (pending - lo < k ? pending - lo : k);
    uint32_t seen = 0, filled = 0, w = 0;
    for (uint32_t c = 0; c < cin && w < k; c++) {
        if (s.age[c] & APU_PENDING) {
            if (seen >= lo && seen < lo + mine) {
                s.ch[w++] = (uint16_t)c;
            }
            seen++;
        } else if (filled < k - mine) {
            s.ch[w++] = (uint16_t)c;
            filled++;
        }
    }
}

/* The probe variant of a period end (docs/TRAINING.md section 6). `in_arena`: the samples below
 * it have their features in the arena's cache region (fit, after its first epoch; 0: none). */
static tmp_status probe_body(tmp_trainer *t, const tmp_fit_io *io, uint32_t n, uint32_t count,
    uint32_t in_arena) {
    const tmp_train_plan *p = t->p;
    if (io == NULL || io->sample == NULL || count > n) {
        return TMP_ERR_ARG;
    }
    if (check_model(t) != TMP_OK) {
        return TMP_ERR_FORMAT;
    }
    uint32_t passes = 0;
    for (int32_t i = 0; i < p->num_layers; i++) {
        if (!(p->flags[i] & TMP_TL_APU)) {
            continue;
        }
        uint32_t cin;
        sel_t s;
        tmp_status st = apu_layer(t, i, &cin, &s);
        if (st != TMP_OK) {
            return st;
        }
        const uint32_t k = p->k[i], g = (cin - k + k - 1u) / k;
        passes = g > passes ? g : passes;
    }
    if (count == 0 || passes == 0) {
        return end_period(t);
    }
    /* every probe sample can be had before anything is marked: one that cannot ends the period
     * as without the probe */
    for (uint32_t j = 0; j < count; j++) {
        int32_t label = -1;
        if (io->sample(io->ctx, probe_index(j, n, count), &label) == NULL || label < 0 ||
            label >= (int32_t)t->m->num_classes) {
            tmp_status st = end_period(t);
            return st != TMP_OK ? st : TMP_ERR_ARG;
        }
    }
    /* Python may have run: the tables must still be the ones the selections were made for */
    if (check_model(t) != TMP_OK) {
        return TMP_ERR_FORMAT;
    }
    /* the period's own measurements; every other channel is pending */
    for (int32_t i = 0; i < p->num_layers; i++) {
        uint32_t cin;
        sel_t s;
        if (!(p->flags[i] & TMP_TL_APU) || apu_layer(t, i, &cin, &s) != TMP_OK) {
            continue;
        }
        for (uint32_t c = 0; c < cin; c++) {
            s.age[c] |= APU_PENDING;
        }
        for (uint32_t j = 0; j < p->k[i]; j++) {
            const uint16_t c = s.ch[j];
            apu_measured(t, &s, c, s.iacc[c]);
            s.age[c] &= (uint16_t)~APU_PENDING;
        }
        for (uint32_t c = 0; c < cin; c++) {
            s.iacc[c] = 0.0f;
        }
    }
    /* each sample: one pass per group of k pending channels of every layer at once */
    tmp_status st = TMP_OK;
    for (uint32_t j = 0; j < count && st == TMP_OK; j++) {
        const uint32_t idx = probe_index(j, n, count);
        int32_t label = -1;
        const int8_t *x = io->sample(io->ctx, idx, &label);
        if (x == NULL || label < 0 || label >= (int32_t)t->m->num_classes) {
            st = TMP_ERR_ARG;
            break;
        }
        /* only the caller's code (io->sample) can change the tables: checked once it has run,
         * before probe_group reads them */
        st = check_model(t);
        for (uint32_t g = 0; g < passes && st == TMP_OK; g++) {
            for (int32_t i = 0; i < p->num_layers; i++) {
                if (p->flags[i] & TMP_TL_APU) {
                    probe_group(t, i, g);
                }
            }
            cache_op op = { CACHE_NONE, NULL, io, idx, 0 };
            if (idx < in_arena) {
                op.mode = CACHE_FROM;
                op.mem = (int8_t *)(t->arena + p->cache_offset + (size_t)idx * p->cache_bytes);
            }
            st = step_impl(t, x, label, NULL, &op, NULL, PASS_PROBE);
        }
    }
    if (check_model(t) != TMP_OK) {
        return TMP_ERR_FORMAT; /* other tables: the marks cannot be found again (nothing works) */
    }
    /* a probe's sum over `count` samples, on the scale of the period's sums over its steps; a
     * probe that failed measures nothing */
    const float scale = (float)(t->period_steps != 0 ? t->period_steps : 1u) / (float)count;
    for (int32_t i = 0; i < p->num_layers; i++) {
        uint32_t cin;
        sel_t s;
        if (!(p->flags[i] & TMP_TL_APU) || apu_layer(t, i, &cin, &s) != TMP_OK) {
            continue;
        }
        for (uint32_t c = 0; c < cin; c++) {
            if (s.age[c] & APU_PENDING) {
                if (st == TMP_OK) {
                    apu_measured(t, &s, c, s.iacc[c] * scale);
                }
                s.age[c] &= (uint16_t)~APU_PENDING;
            }
        }
        /* the period ends as without a probe, from the importances now known */
        apu_choose(t, &s, cin, p->k[i]);
    }
    t->periods++;
    t->period_steps = 0;
    return st;
}

/* probe_body, the trainer marked busy while it runs (io->sample runs inside, with marks set) */
static tmp_status end_period_probe(tmp_trainer *t, const tmp_fit_io *io, uint32_t n, uint32_t count,
    uint32_t in_arena) {
    const uint32_t was = t->busy;
    t->busy = TMP_BUSY_STEP;
    const tmp_status s = probe_body(t, io, n, count, in_arena);
    t->busy = was;
    return s;
}

tmp_status tmp_trainer_end_period_probe(tmp_trainer *t, const tmp_fit_io *io, uint32_t n, uint32_t count) {
    if (t == NULL || t->p == NULL) {
        return TMP_ERR_ARG;
    }
    if (tmp_trainer_usable(t, 1) != TMP_OK) {
        return TMP_ERR_BUSY;
    }
    tmp_status s = check_model(t);
    if (s != TMP_OK) {
        return s;
    }
    return end_period_probe(t, io, n, count, 0);
}

/* ---------------------------------------------------------------- saved parameters */

#define PARAMS_MAGIC "TMPP"
#define PARAMS_VERSION 2u /* written; version 1 (parameters only) still loads */
#define PARAMS_HEADER 32u
#define REC_W 1u
#define REC_B 2u
#define REC_WM 3u
#define REC_BM 4u
#define REC_VW 5u    /* v2: momentum of the weights */
#define REC_VB 6u    /* v2: momentum of the biases */
#define REC_SEL 7u   /* v2: an APU layer's selection and importances (the SEL buffer) */
#define REC_STATE 8u /* v2: last record, the trainer's counters (layer 0xFFFF) */
#define REC_KINDS 7
#define STATE_LAYER 0xFFFF
#define STATE_BYTES 20u /* rng, steps, stalled_steps, periods, period_steps: u32 each */
typedef char params_state_fits[sizeof(((tmp_params_reader *)0)->state) == STATE_BYTES ? 1 : -1];

static void wr16(uint8_t *d, uint32_t v) {
    d[0] = (uint8_t)v;
    d[1] = (uint8_t)(v >> 8);
}

static void wr32(uint8_t *d, uint32_t v) {
    d[0] = (uint8_t)v;
    d[1] = (uint8_t)(v >> 8);
    d[2] = (uint8_t)(v >> 16);
    d[3] = (uint8_t)(v >> 24);
}

static uint32_t rd32(const uint8_t *d) {
    return (uint32_t)d[0] | ((uint32_t)d[1] << 8) | ((uint32_t)d[2] << 16) | ((uint32_t)d[3] << 24);
}

static uint32_t rd16(const uint8_t *d) {
    return (uint32_t)d[0] | ((uint32_t)d[1] << 8);
}

/* The records a blob of `version` holds for this trainer's plan, in order: (layer, kind, buffer,
 * bytes); the state record has no buffer (data NULL). */
typedef struct {
    int32_t layer;
    uint32_t kind;
    uint8_t *data;
    uint32_t bytes;
} rec_t;

static int32_t next_record(const tmp_trainer *t, uint32_t version, int32_t pos, rec_t *r) {
    /* pos enumerates (layer, kind) pairs: layer = pos / REC_KINDS, kind = pos % REC_KINDS + 1,
     * then (v2) the state record at pos = REC_KINDS * layers */
    const tmp_train_plan *p = t->p;
    static const uint8_t lb[REC_KINDS] = { TMP_LB_W, TMP_LB_B, TMP_LB_WM, TMP_LB_BM, TMP_LB_VW, TMP_LB_VB, TMP_LB_SEL };
    for (; pos < REC_KINDS * p->num_layers; pos++) {
        int32_t i = pos / REC_KINDS;
        uint32_t kind = (uint32_t)(pos % REC_KINDS) + 1u;
        if (p->storage == TMP_STORAGE_FP32 && (kind == REC_W || kind == REC_B)) {
            continue; /* fp32 storage saves the masters; the int8 copies follow from them */
        }
        if (kind > REC_BM && (version < 2u || (kind == REC_SEL && !(p->flags[i] & TMP_TL_APU)))) {
            continue; /* v1 holds parameters only; a fixed selection is the plan's */
        }
        const tmp_buf *bb = lbuf(t, lb[kind - 1u], i);
        if (bb->size == 0) {
            continue;
        }
        r->layer = i;
        r->kind = kind;
        r->data = t->arena + bb->offset;
        r->bytes = bb->size;
        return pos + 1;
    }
    if (version >= 2u && pos == REC_KINDS * p->num_layers) {
        r->layer = STATE_LAYER;
        r->kind = REC_STATE;
        r->data = NULL;
        r->bytes = STATE_BYTES;
        return pos + 1;
    }
    return -1;
}

/* The state record's bytes. */
static void state_bytes(const tmp_trainer *t, uint8_t *d) {
    wr32(d, t->rng);
    wr32(d + 4, t->steps);
    wr32(d + 8, t->stalled_steps);
    wr32(d + 12, t->periods);
    wr32(d + 16, t->period_steps);
}

/* The header of this trainer's blob: records and payload bytes. */
static void params_header(const tmp_trainer *t, uint8_t *h, uint32_t *payload) {
    uint32_t n = 0, bytes = 0;
    rec_t r;
    for (int32_t pos = next_record(t, PARAMS_VERSION, 0, &r); pos >= 0; pos = next_record(t, PARAMS_VERSION, pos, &r)) {
        bytes += 8u + r.bytes;
        n++;
    }
    memset(h, 0, PARAMS_HEADER);
    memcpy(h, PARAMS_MAGIC, 4);
    wr16(h + 4, PARAMS_VERSION);
    h[6] = (uint8_t)t->p->storage;
    wr32(h + 8, t->m->crc);
    wr32(h + 12, n);
    wr32(h + 16, bytes);
    *payload = bytes;
}

uint32_t tmp_trainer_params_size(const tmp_trainer *t) {
    if (t == NULL || t->p == NULL) {
        return 0;
    }
    uint8_t h[PARAMS_HEADER];
    uint32_t payload;
    params_header(t, h, &payload);
    return PARAMS_HEADER + payload + 4u;
}

static tmp_status params_write(const tmp_trainer *t, tmp_params_writer *w, uint8_t *dst, uint32_t cap,
    uint32_t *n) {
    *n = 0;
    uint8_t h[PARAMS_HEADER];
    uint32_t payload;
    params_header(t, h, &payload);
    const uint32_t body = PARAMS_HEADER + payload, total = body + 4u;
    if (w->off > total) {
        return TMP_ERR_ARG;
    }
    while (*n < cap && w->off < total) {
        const uint32_t off = w->off;
        const uint8_t *src = NULL;
        uint32_t k = 0;
        uint8_t small[8], state[STATE_BYTES];
        if (off < PARAMS_HEADER) {
            src = h + off;
            k = PARAMS_HEADER - off;
        } else if (off < body) {
            /* the record (its 8-byte header, then its bytes in the arena) that holds off */
            uint32_t at = PARAMS_HEADER;
            rec_t r;
            for (int32_t pos = next_record(t, PARAMS_VERSION, 0, &r); pos >= 0;
                 pos = next_record(t, PARAMS_VERSION, pos, &r)) {
                if (off < at + 8u) {
                    wr16(small, (uint32_t)r.layer);
                    small[2] = (uint8_t)r.kind;
                    small[3] = 0;
                    wr32(small + 4, r.bytes);
                    src = small + (off - at);
                    k = at + 8u - off;
                    break;
                }
                if (off < at + 8u + r.bytes) {
                    if (r.data == NULL) { /* the state record */
                        state_bytes(t, state);
                        r.data = state;
                    }
                    src = r.data + (off - at - 8u);
                    k = at + 8u + r.bytes - off;
                    break;
                }
                at += 8u + r.bytes;
            }
            if (src == NULL) {
                return TMP_ERR_ARG; /* cannot happen: the records add up to the payload */
            }
        } else {
            wr32(small, w->crc);
            src = small + (off - body);
            k = total - off;
        }
        if (k > cap - *n) {
            k = cap - *n;
        }
        memcpy(dst + *n, src, k);
        if (off < body) {
            w->crc = tmp_crc32(w->crc, src, k);
        }
        w->off += k;
        *n += k;
    }
    return TMP_OK;
}

tmp_status tmp_trainer_params_write(const tmp_trainer *t, tmp_params_writer *w, uint8_t *dst,
    uint32_t cap, uint32_t *n) {
    if (t == NULL || t->p == NULL || w == NULL || n == NULL || (dst == NULL && cap > 0)) {
        return TMP_ERR_ARG;
    }
    if (tmp_trainer_usable(t, 0) != TMP_OK) {
        return TMP_ERR_BUSY;
    }
    if (w->off == 0u) { /* a new blob: only of a state a load would take back */
        *n = 0;
        tmp_status s = tmp_trainer_check_state(t);
        if (s != TMP_OK) {
            return s;
        }
    }
    return params_write(t, w, dst, cap, n);
}

tmp_status tmp_trainer_check_state(const tmp_trainer *t) {
    if (t == NULL || t->p == NULL) {
        return TMP_ERR_ARG;
    }
    if (tmp_trainer_usable(t, 0) != TMP_OK) {
        return TMP_ERR_BUSY;
    }
    tmp_status s = check_model(t);
    if (s != TMP_OK) {
        return s;
    }
    /* the blob of the arena's parameters and state, through a checking read (copy = 0: it
     * writes nothing into the trainer), in pieces of a small buffer */
    tmp_trainer *rt = (tmp_trainer *)(uintptr_t)t;
    tmp_params_reader r;
    tmp_params_writer w = { 0u, 0u };
    uint8_t piece[64];
    uint32_t k = 0;
    s = tmp_trainer_params_begin(t, &r, 0);
    while (s == TMP_OK && (s = params_write(t, &w, piece, sizeof piece, &k)) == TMP_OK && k != 0u) {
        s = tmp_trainer_params_feed(rt, &r, piece, k);
    }
    if (s != TMP_OK) {
        return s;
    }
    const char *msg = NULL;
    /* a state of its own that a load would refuse, or take for another plan's: not one this
     * trainer made (its arena was written to) */
    return tmp_trainer_params_end(rt, &r, &msg) == TMP_OK && r.state_loaded ? TMP_OK : TMP_ERR_ARG;
}

tmp_status tmp_trainer_params_save(const tmp_trainer *t, uint8_t *buf, uint32_t size) {
    const uint32_t need = tmp_trainer_params_size(t);
    if (buf == NULL || need == 0) {
        return TMP_ERR_ARG;
    }
    if (size < need) {
        return TMP_ERR_SIZE;
    }
    tmp_params_writer w = { 0u, 0u };
    uint32_t n = 0;
    tmp_status st = tmp_trainer_params_write(t, &w, buf, need, &n);
    return st != TMP_OK ? st : n == need ? TMP_OK : TMP_ERR_SIZE;
}

static int all_zero(const uint8_t *d, uint32_t n) {
    uint8_t o = 0;
    for (uint32_t i = 0; i < n; i++) {
        o |= d[i];
    }
    return o == 0;
}

static tmp_status bad(const char **msg, const char *why) {
    if (msg != NULL) {
        *msg = why;
    }
    return TMP_ERR_FORMAT;
}

static const char *const PARAMS_OTHER_PLAN = "the parameters were saved with another plan (other trainable layers)";

/* The first error found in the records wins; later bytes are only counted and CRC'd. */
static void reader_fail(tmp_params_reader *r, tmp_status st, const char *why) {
    if (r->err_st == TMP_OK) {
        r->err_st = st;
        r->err = why;
    }
}

static const char *const PARAMS_BAD_SEL = "the saved channel selection is invalid";
static const char *const PARAMS_RESERVED = "a reserved byte of the parameters file is not zero";

/* Expect the next record of the plan (r->pos) for the blob's version, or none. */
static void reader_next(const tmp_trainer *t, tmp_params_reader *r) {
    rec_t rec;
    r->pos = r->pos < 0 ? -1 : next_record(t, r->version, r->pos, &rec);
    if (r->pos >= 0) {
        r->layer = rec.layer;
        r->kind = rec.kind;
        r->bytes = rec.bytes;
        r->offset = rec.data != NULL ? (uint32_t)(rec.data - t->arena) : 0u;
    }
}

/* A record's order in a blob: by layer, then kind (the state record, layer 0xFFFF, last). */
static uint32_t rec_key(uint32_t layer, uint32_t kind) {
    return layer * 256u + kind;
}

static int is_state_kind(uint32_t kind) {
    return kind == REC_VW || kind == REC_VB || kind == REC_SEL;
}

/* A record's header is whole. Parameter records and the final state record must be the plan's;
 * a momentum or selection record the plan lacks, or has at another size (the blob was saved with
 * momentum switched on or off, or another ratio), is skipped, as is one of the plan's the blob
 * lacks: the parameters load and the training state starts afresh (r->fresh). */
static void reader_record_header(const tmp_trainer *t, tmp_params_reader *r, uint64_t at) {
    const uint32_t layer = rd16(r->rec), kind = r->rec[2], bytes = rd32(r->rec + 4), key = rec_key(layer, kind);
    r->rbytes = bytes;
    r->skip = 0;
    if (r->rec[3] != 0) {
        reader_fail(r, TMP_ERR_FORMAT, PARAMS_RESERVED);
        return;
    }
    if (key <= r->fkey || at + 8u + bytes > r->end) { /* out of order, repeated, or past the payload */
        reader_fail(r, TMP_ERR_FORMAT, PARAMS_OTHER_PLAN);
        return;
    }
    r->fkey = key;
    while (r->pos >= 0 && rec_key((uint32_t)r->layer, r->kind) < key && is_state_kind(r->kind)) {
        r->fresh = 1; /* a state record of the plan's that the blob does not hold */
        reader_next(t, r);
    }
    const int expected = r->pos >= 0 && rec_key((uint32_t)r->layer, r->kind) == key;
    if (!expected || bytes != r->bytes) {
        if (r->version >= 2u && is_state_kind(kind) && layer < (uint32_t)t->p->num_layers) {
            r->skip = 1; /* (the plan's record of that key, if any, is passed over at the next) */
            r->fresh = 1;
            return;
        }
        reader_fail(r, TMP_ERR_FORMAT, PARAMS_OTHER_PLAN);
        return;
    }
    if (r->kind == REC_B || r->kind == REC_SEL) {
        tmp_layer l;
        tmp_tensor tin;
        if (tmp_model_layer(t->m, r->layer, &l, NULL) != TMP_OK || tmp_model_tensor(t->m, l.in0, &tin, NULL) != TMP_OK) {
            reader_fail(r, TMP_ERR_FORMAT, NULL);
            return;
        }
        if (r->kind == REC_B) {
            r->limit = bias_limit(&l, cin_of(&l, &tin));
        } else {
            r->cin = cin_of(&l, &tin);
            r->k = t->p->k[r->layer];
            r->excl_max = excl_max_of(t->p);
            r->prev = -1;
        }
    }
}

/* One whole 4-byte value of an int32 bias, fp32 master or momentum record. */
static void reader_value(tmp_params_reader *r, const uint8_t *v) {
    if (r->kind == REC_B) {
        const int32_t x = (int32_t)rd32(v);
        if (x > r->limit || x < -r->limit) {
            reader_fail(r, TMP_ERR_FORMAT, "a saved bias is out of range");
        }
    } else {
        float x;
        memcpy(&x, v, 4);
        if (!isfinite(x)) {
            reader_fail(r, TMP_ERR_FORMAT, "a saved parameter is not finite");
        }
    }
}

/* Byte i of a selection record, laid out as the SEL buffer (sel_of): channels u16[k] | importances
 * f32[2 cin] finite and >= 0 | ages u16[cin] below 0x8000 | exclusion counts u8[cin]; each part
 * padded with zeros to 4 bytes. Importances, ages and the last two paddings are the same for any
 * ratio: a bad one is an error. The channels (k strictly ascending below cin, then zeros) and
 * the exclusion counts (at most excl_max) follow from the ratio: a record of the plan's size that
 * breaks them was saved with another ratio (its k differs by one, hidden in the padding, or its
 * window is longer), so it is another plan's training state and starts afresh (r->fresh). */
static void reader_sel_byte(tmp_params_reader *r, uint32_t i, uint8_t b) {
    const uint32_t k = r->k, cin = r->cin, a = (uint32_t)al4(2u * k), g = a + 8u * cin,
                   e = g + (uint32_t)al4(2u * cin);
    uint32_t start, size;
    if (i < 2u * k) {
        start = 0, size = 2;
    } else if (i >= a && i < g) {
        start = a, size = 4;
    } else if (i >= g && i < g + 2u * cin) {
        start = g, size = 2;
    } else if (i >= e && i < e + cin) {
        start = e, size = 1;
    } else { /* padding */
        if (b != 0 && i < a) {
            r->fresh = 1;
        } else if (b != 0) {
            reader_fail(r, TMP_ERR_FORMAT, PARAMS_BAD_SEL);
        }
        return;
    }
    const uint32_t j = (i - start) % size;
    r->word[j] = b;
    if (j != size - 1u) {
        return;
    }
    if (start == 0) {
        const uint32_t c = rd16(r->word);
        if (c >= cin || (int32_t)c <= r->prev) {
            r->fresh = 1;
        }
        r->prev = (int32_t)c;
    } else if (size == 1) {
        if (b > r->excl_max) {
            r->fresh = 1;
        }
    } else {
        float x;
        memcpy(&x, r->word, 4);
        if (size == 4 ? !(isfinite(x) && x >= 0.0f) : rd16(r->word) >= 0x8000u) {
            reader_fail(r, TMP_ERR_FORMAT, PARAMS_BAD_SEL);
        }
    }
}

/* The state record is whole. Only the generator state has a rule (xorshift32 stays at 0); the
 * counters wrap modulo 2^32 as the trainer counts them, so no order between them is required: a
 * period_steps at or past this plan's period ends the period at the next step, as a longer saved
 * period would. */
static void reader_state(tmp_params_reader *r) {
    if (rd32(r->state) == 0) {
        reader_fail(r, TMP_ERR_FORMAT, "the saved training state is invalid");
    }
}

/* n payload bytes (the header is whole and this format's): the record structure and values. */
static void reader_records(const tmp_trainer *t, tmp_params_reader *r, const uint8_t *d, uint32_t n) {
    uint64_t at = r->total; /* blob offset of d[0] */
    while (n > 0 && r->err_st == TMP_OK) {
        if (r->roff == 0 && r->pos < 0) {
            reader_fail(r, TMP_ERR_FORMAT, PARAMS_OTHER_PLAN); /* more payload than records */
            return;
        }
        uint32_t k;
        if (r->roff < 8u) {
            k = 8u - r->roff < n ? 8u - r->roff : n;
            memcpy(r->rec + r->roff, d, k);
            if (r->roff + k == 8u) {
                reader_record_header(t, r, at - r->roff);
            }
        } else {
            const uint32_t i = r->roff - 8u; /* offset in the record's data */
            k = r->rbytes - i < n ? r->rbytes - i : n;
            if (r->skip) {
                /* another plan's state: counted and CRC'd only */
            } else if (r->kind == REC_SEL) {
                for (uint32_t j = 0; j < k; j++) {
                    reader_sel_byte(r, i + j, d[j]);
                }
            } else if (r->kind == REC_STATE) {
                memcpy(r->state + i, d, k);
                if (i + k == STATE_BYTES) {
                    reader_state(r);
                }
            } else if (r->kind != REC_W) {
                uint32_t j = 0;
                for (; j < k && ((i + j) & 3u) != 0; j++) { /* finish a value split by a piece */
                    r->word[(i + j) & 3u] = d[j];
                    if (((i + j) & 3u) == 3u) {
                        reader_value(r, r->word);
                    }
                }
                for (; j + 4u <= k; j += 4u) {
                    reader_value(r, d + j);
                }
                for (; j < k; j++) { /* the start of a value the next piece finishes */
                    r->word[(i + j) & 3u] = d[j];
                }
            }
            if (r->copy && r->err_st == TMP_OK && !r->skip && r->kind != REC_STATE) {
                memcpy(t->arena + r->offset + i, d, k);
            }
        }
        r->roff += k;
        d += k;
        n -= k;
        at += k;
        if (r->err_st == TMP_OK && r->roff == 8u + r->rbytes) {
            r->nrec++;
            r->roff = 0;
            if (r->skip) {
                r->skip = 0; /* the plan's expected record is still to come */
            } else {
                reader_next(t, r);
            }
        }
    }
}

tmp_status tmp_trainer_params_begin(const tmp_trainer *t, tmp_params_reader *r, int copy) {
    if (t == NULL || t->p == NULL || r == NULL) {
        return TMP_ERR_ARG;
    }
    memset(r, 0, sizeof(*r));
    r->copy = copy != 0;
    r->err_st = TMP_OK;
    r->err = NULL;
    r->pos = 0;
    r->version = PARAMS_VERSION; /* until the header says */
    if (tmp_trainer_usable(t, r->copy) != TMP_OK) {
        return TMP_ERR_BUSY; /* feed and end refuse it too */
    }
    reader_next(t, r);
    return TMP_OK;
}

tmp_status tmp_trainer_params_feed(tmp_trainer *t, tmp_params_reader *r, const uint8_t *d, uint32_t n) {
    if (t == NULL || t->p == NULL || r == NULL || (d == NULL && n > 0)) {
        return TMP_ERR_ARG;
    }
    if (tmp_trainer_usable(t, r->copy) != TMP_OK) {
        return TMP_ERR_BUSY;
    }
    while (n > 0) {
        uint64_t k;
        if (r->total < PARAMS_HEADER) {
            k = PARAMS_HEADER - r->total < n ? PARAMS_HEADER - r->total : n;
            memcpy(r->head + r->total, d, (size_t)k);
            if (r->total + k == PARAMS_HEADER) {
                /* parse the records only under a header of a version this reader knows */
                r->version = rd16(r->head + 4);
                r->parse = memcmp(r->head, PARAMS_MAGIC, 4) == 0 && r->version >= 1u && r->version <= PARAMS_VERSION;
                r->end = PARAMS_HEADER + (uint64_t)rd32(r->head + 16);
                r->crc = tmp_crc32(0, r->head, PARAMS_HEADER);
                if (r->parse) {
                    r->pos = 0; /* the records of that version */
                    reader_next(t, r);
                }
            }
        } else if (r->parse && r->total < r->end) {
            k = r->end - r->total < n ? r->end - r->total : n;
            r->crc = tmp_crc32(r->crc, d, (size_t)k);
            reader_records(t, r, d, (uint32_t)k);
        } else if (r->parse && r->total < r->end + 4u) {
            k = r->end + 4u - r->total < n ? r->end + 4u - r->total : n;
            memcpy(r->tail + (r->total - r->end), d, (size_t)k);
        } else {
            k = n; /* bytes past the blob, or under a foreign header: counted only */
        }
        r->total += k;
        d += k;
        n -= (uint32_t)k;
    }
    return TMP_OK;
}

/* After a successful copy: the int8 copies of fp32 masters follow from them. */
static void params_requant(tmp_trainer *t) {
    rec_t r;
    tmp_layer l;
    tmp_tensor tin, tout;
    for (int32_t pos = next_record(t, 1u, 0, &r); pos >= 0; pos = next_record(t, 1u, pos, &r)) {
        if (r.kind != REC_WM && r.kind != REC_BM) {
            continue;
        }
        tmp_model_layer(t->m, r.layer, &l, NULL);
        tmp_model_tensor(t->m, l.in0, &tin, NULL);
        tmp_model_tensor(t->m, l.out, &tout, NULL);
        const uint32_t cin = cin_of(&l, &tin), cout = (uint32_t)tout.dims.c;
        const float *v = (const float *)(void *)r.data;
        if (r.kind == REC_BM) {
            int32_t *b = (int32_t *)lb_ptr(t, TMP_LB_B, r.layer);
            tmp_requant_s32_f32((int32_t)cout, v, tin.scale, l.wscale, b);
            clamp_bias(b, cout, bias_limit(&l, cin));
        } else {
            int8_t *w = (int8_t *)lb_ptr(t, TMP_LB_W, r.layer);
            const uint32_t wc = weights_of(&l, cin, cout);
            if (l.type == TMP_LAYER_DWCONV) {
                for (uint32_t e = 0; e < wc; e++) {
                    tmp_requant_s8_f32(1, v + e, l.wscale[e % cin], w + e);
                }
            } else {
                const uint32_t per_o = wc / cout;
                for (uint32_t o = 0; o < cout; o++) {
                    tmp_requant_s8_f32((int32_t)per_o, v + o * per_o, l.wscale[o], w + o * per_o);
                }
            }
        }
    }
}

tmp_status tmp_trainer_params_end(tmp_trainer *t, tmp_params_reader *r, const char **msg) {
    if (t == NULL || t->p == NULL || r == NULL) {
        return TMP_ERR_ARG;
    }
    if (tmp_trainer_usable(t, r->copy) != TMP_OK) {
        (void)bad(msg, "the trainer is busy (called from inside its own fit(), step or probe)");
        return TMP_ERR_BUSY;
    }
    /* the checks in this order, whatever order the bytes revealed them in */
    if (r->total < PARAMS_HEADER + 4u || memcmp(r->head, PARAMS_MAGIC, 4) != 0) {
        return bad(msg, "not a tinymp parameters file");
    }
    if (rd16(r->head + 4) < 1u || rd16(r->head + 4) > PARAMS_VERSION) {
        return bad(msg, "unsupported parameters file version");
    }
    if (r->end + 4u != r->total) {
        return bad(msg, "truncated or oversized parameters file");
    }
    if (r->crc != rd32(r->tail)) {
        return bad(msg, "CRC-32 mismatch: the parameters file is corrupted");
    }
    if (r->head[7] != 0 || !all_zero(r->head + 20, PARAMS_HEADER - 20u)) {
        return bad(msg, PARAMS_RESERVED);
    }
    if (rd32(r->head + 8) != t->m->crc) {
        return bad(msg, "the parameters were saved for another model");
    }
    if (r->head[6] != (uint8_t)t->p->storage) {
        return bad(msg, "the parameters were saved with another storage mode (int8 / fp32)");
    }
    if (r->err_st != TMP_OK) {
        return r->err != NULL ? bad(msg, r->err) : r->err_st;
    }
    /* every record of the plan came, and nothing else */
    if (r->pos >= 0 || r->nrec != rd32(r->head + 12)) {
        return bad(msg, PARAMS_OTHER_PLAN);
    }
    r->state_loaded = r->version >= 2u && !r->fresh;
    if (r->copy) {
        params_requant(t);
        t->last_pred = -1; /* other parameters: no step of theirs has predicted yet */
        if (r->state_loaded) { /* the counters: the run goes on where it was saved */
            t->rng = rd32(r->state);
            t->steps = rd32(r->state + 4);
            t->stalled_steps = rd32(r->state + 8);
            t->periods = rd32(r->state + 12);
            t->period_steps = rd32(r->state + 16);
            /* an older engine's exclusion counts (it excluded a selection for the next
             * ceil(1/ratio) - 1 periods, and every layer holds that count for the last period's
             * channels, above 1 when ratio < 1/2) say today's exactly: the last period's
             * channels sit out the next period end (1), the others none (0) */
            const uint8_t old = excl_max_of(t->p);
            for (int32_t i = 0; i < t->p->num_layers && old > 1u; i++) {
                uint32_t cin;
                sel_t s;
                if (!(t->p->flags[i] & TMP_TL_APU) || apu_layer(t, i, &cin, &s) != TMP_OK) {
                    continue;
                }
                uint8_t most = 0;
                for (uint32_t c = 0; c < cin; c++) {
                    most = s.excl[c] > most ? s.excl[c] : most;
                }
                for (uint32_t c = 0; c < cin && most > 1u; c++) {
                    s.excl[c] = s.excl[c] == old ? 1u : 0u;
                }
            }
        } else { /* parameters only: a new run's training state on them; the counters go on */
            tmp_status st = reset_state(t);
            if (st != TMP_OK) {
                return st;
            }
        }
    }
    return TMP_OK;
}

tmp_status tmp_trainer_params_load(tmp_trainer *t, const uint8_t *buf, uint32_t size, const char **msg,
    int *state_loaded) {
    if (t == NULL || t->p == NULL || buf == NULL) {
        return TMP_ERR_ARG;
    }
    if (tmp_trainer_usable(t, 1) != TMP_OK) {
        return TMP_ERR_BUSY;
    }
    /* all checked, then copied: nothing changes on an error */
    tmp_params_reader r;
    for (int copy = 0; copy <= 1; copy++) {
        tmp_trainer_params_begin(t, &r, copy);
        tmp_trainer_params_feed(t, &r, buf, size);
        tmp_status st = tmp_trainer_params_end(t, &r, msg);
        if (st != TMP_OK) {
            return st;
        }
    }
    if (state_loaded != NULL) {
        *state_loaded = r.state_loaded;
    }
    return TMP_OK;
}
