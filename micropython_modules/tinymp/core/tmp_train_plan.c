/*
 * tinymp core: the training planner (docs/TRAINING.md sections 1, 4, 5, 6).
 *
 * A configuration is the per-layer table (flags, channel counts) plus r, storage and momentum.
 * evaluate() derives every buffer of one training step from it -- sizes from the kernels'
 * size functions, lifetimes on the timeline fwd(i) = i, bwd(i) = 2L-1-i -- places them with the
 * greedy placement shared with inference (tmp_place), trying depthwise/add layers in place, and
 * measures the breakdown at the peak step. The methods fill the table; budget fitting walks
 * settings (fewer layers, lower ratios, larger r) and keeps the first that fits. A table whose
 * live bytes at some step already exceed the budget (arena_lower_bound) is turned down before
 * any placement.
 */
#include <math.h>
#include <string.h>

#include "tmp_plan.h"
#include "tmp_train.h"
#include "train/tmp_train_kernels.h"

#define LBN TMP_LB_COUNT
#define MAX_RATIO_STEPS 4

/* Workspace views besides the plan's own arrays. */
typedef struct {
    const tmp_model *m;
    tmp_train_plan *p;
    int32_t L, T, NB;
    uint16_t *order, *placed;
    int32_t *last_use;
    uint16_t *owner;
    uint8_t *save_flags;
    uint16_t *save_k;
    float *tmpf;      /* [maxC] */
    uint8_t *mark;    /* [maxC] */
    uint16_t *rank;   /* [L] */
    uint32_t max_c;
    uint32_t sum_c;
    const tmp_train_options *o;
    uint32_t step_live[TMP_CAT_COUNT];
    int unplaced; /* the last evaluate() stopped at its limit, before placing */
} ctx_t;

/* The budget at which evaluate() may stop before placing a table that cannot fit. Plans are the
 * same with and without it (tests/plan_bound_check.c defines it to compare the two); it only
 * saves the placements. */
#ifndef TMP_PLAN_LIMIT
#define TMP_PLAN_LIMIT(budget) (budget)
#endif

static size_t align4(size_t n) {
    return (n + 3u) & ~(size_t)3u;
}

static int is_weighted(int t) {
    return t == TMP_LAYER_CONV || t == TMP_LAYER_DWCONV || t == TMP_LAYER_PWCONV || t == TMP_LAYER_FC;
}

static int is_conv_like(int t) {
    return t == TMP_LAYER_CONV || t == TMP_LAYER_DWCONV || t == TMP_LAYER_PWCONV;
}

/* Names by switch, not pointer tables: no relocated data (the natmod build has no .data). */
const char *tmp_method_name(int32_t method) {
    switch (method) {
        case TMP_METHOD_NONE:
            return "none";
        case TMP_METHOD_LAST:
            return "last";
        case TMP_METHOD_BIAS:
            return "bias";
        case TMP_METHOD_SPARSE:
            return "sparse";
        case TMP_METHOD_TINYTRAIN:
            return "tinytrain";
        case TMP_METHOD_FULL:
            return "full";
        case TMP_METHOD_TINYMP:
            return "tinymp";
        case TMP_METHOD_FISHER:
            return "fisher";
        default:
            return "unknown";
    }
}

const char *tmp_category_name(int32_t cat) {
    switch (cat) {
        case TMP_CAT_ACTIVATIONS:
            return "activations";
        case TMP_CAT_SAVED:
            return "saved";
        case TMP_CAT_MASKS:
            return "masks";
        case TMP_CAT_GRADIENTS:
            return "gradients";
        case TMP_CAT_PARAMS:
            return "params";
        case TMP_CAT_OPTIMIZER:
            return "optimizer";
        case TMP_CAT_SCRATCH:
            return "scratch";
        case TMP_CAT_CACHE:
            return "cache";
        default:
            return "unknown";
    }
}

int32_t tmp_method_from_name(const char *name) {
    if (name == NULL) {
        return -1;
    }
    for (int32_t i = 0; i < TMP_METHOD_FISHER; i++) {
        if (strcmp(name, tmp_method_name(i)) == 0) {
            return i;
        }
    }
    return -1;
}

/* The experiment's validated rates (tinymp experiment on the demo model, experiments/RESULTS.md
 * "Learning-rate choice"): training every weight diverges at the rate the classifier and
 * tinymp's few channels want. Methods that update nothing keep tinymp's rate. */
float tmp_method_lr(int32_t method) {
    switch (method) {
        case TMP_METHOD_BIAS:
        case TMP_METHOD_SPARSE:
        case TMP_METHOD_TINYTRAIN:
            return 0.005f;
        case TMP_METHOD_FULL:
            return 0.002f;
        default:
            return 0.01f;
    }
}

tmp_train_options tmp_train_options_default(int32_t method) {
    tmp_train_options o;
    memset(&o, 0, sizeof o);
    o.method = method;
    o.storage = TMP_STORAGE_INT8;
    o.n_bias = -2;
    return o;
}

/* ---------------------------------------------------------------- model facts */

static tmp_dims tensor_dims(const tmp_model *m, int32_t t) {
    tmp_tensor tt;
    tmp_dims z = { 0, 0, 0 };
    return tmp_model_tensor(m, t, &tt, NULL) == TMP_OK ? tt.dims : z;
}

static uint32_t dims_count(tmp_dims d) {
    return (uint32_t)d.h * (uint32_t)d.w * (uint32_t)d.c;
}

/* Input channels a weight-gradient selection slices (fc: its n inputs). */
static uint32_t layer_cin(const tmp_model *m, const tmp_layer *l) {
    tmp_dims in = tensor_dims(m, l->in0);
    return l->type == TMP_LAYER_FC ? dims_count(in) : (uint32_t)in.c;
}

static uint32_t layer_cout(const tmp_model *m, const tmp_layer *l) {
    return (uint32_t)tensor_dims(m, l->out).c;
}

static uint32_t weight_count(const tmp_model *m, const tmp_layer *l) {
    const uint32_t cin = layer_cin(m, l), cout = layer_cout(m, l);
    switch (l->type) {
        case TMP_LAYER_CONV:
            return cout * l->kh * l->kw * cin;
        case TMP_LAYER_DWCONV:
            return (uint32_t)l->kh * l->kw * cin;
        case TMP_LAYER_PWCONV:
        case TMP_LAYER_FC:
            return cout * cin;
        default:
            return 0;
    }
}

/* Elements of one weight-gradient slice (one output channel; depthwise: one channel). */
static uint32_t slice_count(const tmp_layer *l, uint32_t k) {
    switch (l->type) {
        case TMP_LAYER_CONV:
            return (uint32_t)l->kh * l->kw * k;
        case TMP_LAYER_DWCONV:
            return (uint32_t)l->kh * l->kw;
        default:
            return k;
    }
}

static uint32_t grid_count(tmp_dims d, int32_t r) {
    return (uint32_t)((d.h + r - 1) / r) * (uint32_t)((d.w + r - 1) / r) * (uint32_t)d.c;
}

static uint32_t k_of(float ratio, uint32_t c) {
    float f = ceilf(ratio * (float)c - 1e-4f);
    uint32_t k = f < 1.0f ? 1u : (uint32_t)f;
    return k > c ? c : k;
}

static uint32_t fwd_macs(const tmp_model *m, const tmp_layer *l) {
    tmp_dims out = tensor_dims(m, l->out);
    const uint32_t hw = (uint32_t)out.h * (uint32_t)out.w;
    return l->type == TMP_LAYER_FC ? weight_count(m, l) : (is_weighted(l->type) ? hw * weight_count(m, l) : 0u);
}

/* Backward MACs of layer l: dx (if propagated) and dW (if trained) at patch size r. */
static uint32_t bwd_macs(const tmp_model *m, const tmp_layer *l, uint8_t flags, uint32_t k, int32_t r) {
    const tmp_dims out = tensor_dims(m, l->out);
    const uint64_t P = (uint64_t)((out.h + r - 1) / r) * (uint64_t)((out.w + r - 1) / r);
    const uint64_t HW = (uint64_t)out.h * out.w;
    const uint64_t cin = layer_cin(m, l), cout = (uint64_t)out.c, taps = (uint64_t)l->kh * l->kw;
    uint64_t dx = 0, dw = 0;
    switch (l->type) {
        case TMP_LAYER_CONV:
            dx = r == 1 ? HW * cout * taps * cin : cout * taps * cin + P * cout * cin;
            dw = r == 1 ? HW * taps * k * cout : P * k * cout;
            break;
        case TMP_LAYER_DWCONV:
            dx = r == 1 ? HW * cin * taps : cin * taps + P * cin;
            dw = r == 1 ? HW * taps * k : P * k;
            break;
        case TMP_LAYER_PWCONV:
            dx = P * cout * cin;
            dw = P * k * cout;
            break;
        case TMP_LAYER_FC:
            dx = cin * cout;
            dw = k * cout;
            break;
        default:
            break;
    }
    uint64_t t = ((flags & TMP_TL_DX) ? dx : 0) + ((flags & TMP_TL_W) ? dw : 0);
    return t > UINT32_MAX ? UINT32_MAX : (uint32_t)t;
}

/* ---------------------------------------------------------------- workspace */

static void model_channel_sums(const tmp_model *m, uint32_t *sum_c, uint32_t *max_c) {
    tmp_layer l;
    *sum_c = 0;
    *max_c = 1;
    for (int32_t i = 0; i < (int32_t)m->num_layers; i++) {
        if (tmp_model_layer_shape(m, i, &l) != TMP_OK) {
            continue;
        }
        uint32_t c = layer_cin(m, &l), co = layer_cout(m, &l);
        if (is_weighted(l.type)) {
            *sum_c += c;
        }
        if (c > *max_c) {
            *max_c = c;
        }
        if (co > *max_c) {
            *max_c = co;
        }
    }
}

size_t tmp_train_workspace_size(const tmp_model *m) {
    const size_t L = m->num_layers, T = m->num_tensors, NB = LBN * L + 2 * T;
    uint32_t sum_c, max_c;
    model_channel_sums(m, &sum_c, &max_c);
    return align4(L) * 2 + align4(2 * L) + 4 * L + align4(2 * (size_t)sum_c) + 4 * L * 4 +
        sizeof(tmp_buf) * NB + align4(NB) + 4 * T + 4 * T + align4(T) +
        /* temporaries */
        align4(2 * NB) * 2 + 4 * T + align4(2 * T) + align4(L) + align4(2 * L) + 4 * (size_t)max_c +
        align4(max_c) + align4(2 * L);
}

static int carve(ctx_t *c, const tmp_model *m, void *ws, tmp_train_plan *p) {
    const size_t L = m->num_layers, T = m->num_tensors;
    uint8_t *q = (uint8_t *)ws;
    c->m = m;
    c->p = p;
    c->L = (int32_t)L;
    c->T = (int32_t)T;
    c->NB = (int32_t)(LBN * L + 2 * T);
    model_channel_sums(m, &c->sum_c, &c->max_c);
#define TAKE(ptr, type, bytes) \
    do { \
        ptr = (type)(void *)q; \
        q += (bytes); \
    } while (0)
    TAKE(p->flags, uint8_t *, align4(L));
    TAKE(p->in_place, uint8_t *, align4(L));
    TAKE(p->k, uint16_t *, align4(2 * L));
    TAKE(p->chan_off, uint32_t *, 4 * L);
    TAKE(p->channels, uint16_t *, align4(2 * (size_t)c->sum_c));
    TAKE(p->fwd_macs, uint32_t *, 4 * L);
    TAKE(p->bwd_macs, uint32_t *, 4 * L);
    TAKE(p->potential, float *, 4 * L);
    TAKE(p->score, float *, 4 * L);
    TAKE(p->bufs, tmp_buf *, sizeof(tmp_buf) * (size_t)c->NB);
    TAKE(p->cat, uint8_t *, align4((size_t)c->NB));
    TAKE(p->act_offset, uint32_t *, 4 * T);
    TAKE(p->grad_birth, int32_t *, 4 * T);
    TAKE(p->cache_t, uint8_t *, align4(T));
    TAKE(c->order, uint16_t *, align4(2 * (size_t)c->NB));
    TAKE(c->placed, uint16_t *, align4(2 * (size_t)c->NB));
    TAKE(c->last_use, int32_t *, 4 * T);
    TAKE(c->owner, uint16_t *, align4(2 * T));
    TAKE(c->save_flags, uint8_t *, align4(L));
    TAKE(c->save_k, uint16_t *, align4(2 * L));
    TAKE(c->tmpf, float *, 4 * (size_t)c->max_c);
    TAKE(c->mark, uint8_t *, align4(c->max_c));
    TAKE(c->rank, uint16_t *, align4(2 * L));
#undef TAKE
    return (size_t)(q - (uint8_t *)ws) <= tmp_train_workspace_size(m);
}

/* ---------------------------------------------------------------- buffers and placement */

static void set_buf(ctx_t *c, int32_t idx, size_t size, int32_t first, int32_t last, int cat) {
    tmp_buf *b = &c->p->bufs[idx];
    b->size = (uint32_t)align4(size);
    b->first = first;
    b->last = last;
    b->offset = 0;
    c->p->cat[idx] = (uint8_t)cat;
}

/* Region, DX flags and grad_birth from the W/B flags (or p->first for the selection pass). */
static void derive_region(ctx_t *c) {
    tmp_train_plan *p = c->p;
    const int32_t L = c->L;
    int32_t first = L;
    if (p->method == TMP_METHOD_FISHER) {
        first = p->first;
    } else {
        for (int32_t i = 0; i < L; i++) {
            if (p->flags[i] & (TMP_TL_W | TMP_TL_B)) {
                first = i;
                break;
            }
        }
    }
    p->first = first;
    for (int32_t t = 0; t < c->T; t++) {
        p->grad_birth[t] = -1;
    }
    tmp_layer l;
    for (int32_t i = 0; i < L; i++) {
        p->flags[i] &= (uint8_t)~(TMP_TL_REGION | TMP_TL_DX);
        if (i < first || tmp_model_layer_shape(c->m, i, &l) != TMP_OK) {
            continue;
        }
        p->flags[i] |= TMP_TL_REGION;
        int dx = (l.in0 >= 1 && l.in0 - 1 >= first) ||
            (l.type == TMP_LAYER_ADD && l.in1 >= 1 && l.in1 - 1 >= first);
        if (dx) {
            p->flags[i] |= TMP_TL_DX;
        }
        /* the consumer with the largest index writes a gradient first (backward order) */
        if (l.in0 >= 1 && l.in0 - 1 >= first && p->grad_birth[l.in0] < i) {
            p->grad_birth[l.in0] = i;
        }
        if (l.type == TMP_LAYER_ADD && l.in1 >= 1 && l.in1 - 1 >= first && p->grad_birth[l.in1] < i) {
            p->grad_birth[l.in1] = i;
        }
    }
    if (first < L) {
        p->grad_birth[c->T - 1] = L - 1; /* the loss writes the output's gradient */
    }
}

static tmp_status build(ctx_t *c) {
    tmp_train_plan *p = c->p;
    const tmp_model *m = c->m;
    const int32_t L = c->L, T = c->T, END = 2 * L - 1;
    const int32_t r = p->r;
    const int fisher = p->method == TMP_METHOD_FISHER;
    const int fp32 = p->storage == TMP_STORAGE_FP32;
    const int mom = p->momentum > 0.0f;
    for (int32_t i = 0; i < c->NB; i++) {
        set_buf(c, i, 0, 0, 0, TMP_CAT_SCRATCH);
    }
    /* activations, with the in-place aliases of tmp_plan */
    const int32_t A = LBN * L, G = LBN * L + T;
    for (int32_t t = 0; t < T; t++) {
        c->owner[t] = (uint16_t)t;
        int32_t last = c->last_use[t];
        if (t == T - 1 && p->first < L) {
            last = L; /* the loss reads the output at bwd(L-1) */
        }
        set_buf(c, A + t, t == 0 ? 0 : dims_count(tensor_dims(m, t)), t - 1, last, TMP_CAT_ACTIVATIONS);
    }
    tmp_layer l;
    for (int32_t i = 0; i < L; i++) {
        if (tmp_model_layer_shape(m, i, &l) != TMP_OK) {
            return TMP_ERR_FORMAT;
        }
        const int32_t bw = END - i;
        set_buf(c, i, tmp_plan_layer_scratch(m, &l, p->in_place[i]), i, i, TMP_CAT_SCRATCH);
        if (p->in_place[i]) {
            uint16_t victim = p->in_place[i] == 2 ? l.in1 : l.in0;
            uint16_t root = c->owner[victim];
            tmp_buf *rb = &p->bufs[A + root], *ob = &p->bufs[A + l.out];
            c->owner[l.out] = root;
            if (ob->size > rb->size) {
                rb->size = ob->size;
            }
            rb->last = ob->last;
            ob->size = 0;
        }
        const uint8_t f = p->flags[i];
        if (!(f & TMP_TL_REGION)) {
            continue;
        }
        const tmp_dims in = tensor_dims(m, l.in0), out = tensor_dims(m, l.out);
        const uint32_t cout = (uint32_t)out.c, cin = layer_cin(m, &l), k = p->k[i];
        if (l.type == TMP_LAYER_FC && (f & TMP_TL_DX) && r > 1 && (in.h != 1 || in.w != 1)) {
            return TMP_ERR_ARG; /* an fc on a spatial input breaks condensed maps */
        }
        int32_t mb = tmp_mask_s8_size(&out, r, tmp_mask_kind_for(r));
        set_buf(c, TMP_LB_MASK * L + i, mb > 0 ? (size_t)mb : 0, i, bw, TMP_CAT_MASKS);
        size_t bscratch = 0;
        if (f & TMP_TL_DX) {
            tmp_grad_conv_params gp = { r, l.stride_h, l.stride_w, l.pad_t, l.pad_l };
            tmp_filter_dims fd = { l.kh, l.kw };
            if (l.type == TMP_LAYER_CONV) {
                bscratch += align4((size_t)tmp_conv_dx_f32_get_buffer_size(&gp, &in, &fd, &out));
            } else if (l.type == TMP_LAYER_DWCONV) {
                bscratch += align4((size_t)tmp_dwconv_dx_f32_get_buffer_size(&gp, &in, &fd, &out));
            }
        }
        if ((f & TMP_TL_W) && r > 1 && (l.type == TMP_LAYER_CONV || l.type == TMP_LAYER_PWCONV)) {
            /* the window sums as floats [P][k] for the condensed dW, after dx: they share the
             * start of the scratch with the dx kernel's */
            int32_t nb = tmp_gc_sums_size(r, &out, (int32_t)k, TMP_XS_S32);
            if (nb < 0) {
                return TMP_ERR_SIZE; /* [P][k] floats beyond 2 GiB */
            }
            if ((size_t)nb > bscratch) {
                bscratch = (size_t)nb;
            }
        }
        if (fisher) {
            tmp_xs_type at = tmp_gc_xs_type(r, 1, 1);
            int32_t ab = tmp_gc_sums_size(r, &out, out.c, at);
            set_buf(c, TMP_LB_ASUM * L + i, ab > 0 ? (size_t)ab : 0, i, bw, TMP_CAT_SAVED);
            set_buf(c, TMP_LB_FISH * L + i, 4u * cout, 0, END, TMP_CAT_PARAMS);
            bscratch += 4u * cout;
        }
        if (f & TMP_TL_W) {
            size_t saved;
            if (l.type == TMP_LAYER_FC) {
                saved = k;
            } else if (r == 1) {
                saved = (size_t)in.h * in.w * k;
            } else {
                tmp_xs_type xt = tmp_gc_xs_type(r, l.stride_h, l.stride_w);
                int32_t sb = tmp_gc_sums_size(r, &out, (int32_t)k, xt);
                saved = sb > 0 ? (size_t)sb : 0;
            }
            set_buf(c, TMP_LB_SAVED * L + i, saved, i, bw, TMP_CAT_SAVED);
            const uint32_t sl = slice_count(&l, k), wc = weight_count(m, &l);
            set_buf(c, TMP_LB_DW * L + i, 4u * sl, bw, bw, TMP_CAT_GRADIENTS);
            set_buf(c, TMP_LB_W * L + i, wc, 0, END, TMP_CAT_PARAMS);
            if (fp32) {
                set_buf(c, TMP_LB_WM * L + i, 4u * wc, 0, END, TMP_CAT_PARAMS);
            }
            if (mom) {
                set_buf(c, TMP_LB_VW * L + i, 4u * wc, 0, END, TMP_CAT_OPTIMIZER);
            }
            /* the channel list; none when every channel is selected for good */
            size_t sel = (k < cin || (f & TMP_TL_APU)) ? align4(2u * k) : 0u;
            if (f & TMP_TL_APU) {
                sel += 4u * cin * 2u + align4(2u * cin) + align4(cin);
            }
            set_buf(c, TMP_LB_SEL * L + i, sel, 0, END, TMP_CAT_PARAMS);
            if (!tmp_train_update_in_place(l.type, fp32, mom)) { /* the gathered slice */
                bscratch += align4(sl) + (fp32 ? 4u * sl : 0u) + (mom ? 4u * sl : 0u);
            }
        }
        if (f & TMP_TL_B) {
            set_buf(c, TMP_LB_DB * L + i, 4u * cout, bw, bw, TMP_CAT_GRADIENTS);
            set_buf(c, TMP_LB_B * L + i, 4u * cout, 0, END, TMP_CAT_PARAMS);
            if (fp32) {
                set_buf(c, TMP_LB_BM * L + i, 4u * cout, 0, END, TMP_CAT_PARAMS);
            }
            if (mom) {
                set_buf(c, TMP_LB_VB * L + i, 4u * cout, 0, END, TMP_CAT_OPTIMIZER);
            }
        }
        set_buf(c, TMP_LB_BSCRATCH * L + i, bscratch, bw, bw, TMP_CAT_SCRATCH);
    }
    /* gradient maps on the r-grid of their tensor */
    for (int32_t t = 1; t < T; t++) {
        if (p->grad_birth[t] < 0) {
            continue;
        }
        set_buf(c, G + t, 4u * grid_count(tensor_dims(m, t), r), END - p->grad_birth[t], END - (t - 1),
            TMP_CAT_GRADIENTS);
    }
    return TMP_OK;
}

/* Build and place for the current in-place choices; *arena = placed size. */
static tmp_status place_built(ctx_t *c, uint64_t *arena) {
    *arena = tmp_place(c->p->bufs, c->NB, c->order, c->placed);
    return *arena == UINT64_MAX ? TMP_ERR_SIZE : TMP_OK;
}

static tmp_status place_once(ctx_t *c, uint64_t *arena) {
    tmp_status s = build(c);
    return s != TMP_OK ? s : place_built(c, arena);
}

/* MACs per layer and of the step, from the table and the region (derive_region); no placement. */
static void count_macs(ctx_t *c) {
    tmp_train_plan *p = c->p;
    p->forward_macs = 0;
    p->backward_macs = 0;
    p->step_macs = 0;
    tmp_layer l;
    for (int32_t i = 0; i < c->L; i++) {
        tmp_model_layer_shape(c->m, i, &l);
        p->fwd_macs[i] = fwd_macs(c->m, &l);
        p->bwd_macs[i] = (p->flags[i] & TMP_TL_REGION) ? bwd_macs(c->m, &l, p->flags[i], p->k[i], p->r) : 0;
        p->forward_macs += p->fwd_macs[i];
        p->backward_macs += p->bwd_macs[i];
        if (p->flags[i] & TMP_TL_REGION) {
            p->step_macs += (uint64_t)p->fwd_macs[i] + p->bwd_macs[i];
        }
    }
}

/* Live bytes per category at the peak step; MACs. */
static void measure(ctx_t *c, uint64_t arena) {
    tmp_train_plan *p = c->p;
    const int32_t steps = 2 * c->L;
    /* the buffers that exist (most of the table is empty), listed once in the placement's
     * workspace, which is free until the next placement */
    uint16_t *nz = c->order;
    int32_t n = 0;
    for (int32_t i = 0; i < c->NB; i++) {
        if (p->bufs[i].size) {
            nz[n++] = (uint16_t)i;
        }
    }
    uint64_t best = 0;
    int32_t best_step = 0;
    memset(p->breakdown, 0, sizeof p->breakdown);
    memset(p->category_peak, 0, sizeof p->category_peak);
    for (int32_t s = 0; s < steps; s++) {
        uint64_t tot = 0;
        uint32_t live[TMP_CAT_COUNT];
        memset(live, 0, sizeof live);
        for (int32_t j = 0; j < n; j++) {
            const tmp_buf *b = &p->bufs[nz[j]];
            if (b->first <= s && s <= b->last) {
                tot += b->size;
                live[p->cat[nz[j]]] += b->size;
            }
        }
        if (tot > best) {
            best = tot;
            best_step = s;
        }
        for (int32_t k = 0; k < TMP_CAT_COUNT; k++) {
            p->category_peak[k] = live[k] > p->category_peak[k] ? live[k] : p->category_peak[k];
        }
    }
    for (int32_t j = 0; j < n; j++) {
        const tmp_buf *b = &p->bufs[nz[j]];
        if (b->first <= best_step && best_step <= b->last) {
            p->breakdown[p->cat[nz[j]]] += b->size;
        }
    }
    p->arena_bytes = (uint32_t)arena;
    p->peak_live_bytes = (uint32_t)best;
    p->peak_step = best_step;
    count_macs(c);
    for (int32_t t = 0; t < c->T; t++) {
        p->act_offset[t] = t == 0 ? 0u : p->bufs[LBN * c->L + c->owner[t]].offset;
    }
}

/* The in-place choice evaluate() tries for layer l (index i): 1 (the output overwrites in0),
 * 2 (in1) or 0 (none: the input is read later, or is the caller's input). */
static uint8_t in_place_choice(const ctx_t *c, const tmp_layer *l, int32_t i) {
    if (l->type == TMP_LAYER_DWCONV && l->in0 != 0 && c->last_use[l->in0] == i) {
        return 1;
    }
    if (l->type == TMP_LAYER_ADD) {
        if (l->in1 != 0 && l->in1 != l->in0 && c->last_use[l->in1] == i) {
            return 2;
        }
        if (l->in0 != 0 && l->in0 != l->in1 && c->last_use[l->in0] == i) {
            return 1;
        }
    }
    return 0;
}

/*
 * A lower bound of the arena evaluate() would place for the current table, whatever in-place
 * choices it keeps, without placing anything: from the buffers build() made with no in-place
 * choice (as evaluate's first placement finds them). Buffers live at the same step never
 * share bytes, so any placement needs at least the live bytes of every step. An in-place choice
 * at layer i changes only step i's sum: its input and output become one buffer of the larger
 * size (later steps hold that size, never less than before), and a depthwise layer's scratch may
 * change. So step i counts the smaller of the two tensors and the smaller scratch off.
 * O(steps x buffers), less than one placement; it returns as soon as a step's bound is above
 * `limit` (the steps from the forward/backward turn on, where every saved tensor is live).
 */
static uint64_t arena_lower_bound(ctx_t *c, uint64_t limit) {
    tmp_train_plan *p = c->p;
    const int32_t L = c->L, A = LBN * L, steps = 2 * L;
    uint16_t *nz = c->order; /* free until the next placement, as in measure() */
    int32_t n = 0;
    for (int32_t i = 0; i < c->NB; i++) {
        if (p->bufs[i].size) {
            nz[n++] = (uint16_t)i;
        }
    }
    uint64_t best = 0;
    tmp_layer l;
    /* from the turn of the step (every saved tensor live) on, stopping above `limit` */
    for (int32_t k = 0; k < steps && best <= limit; k++) {
        const int32_t st = (L - 1 + k) % steps;
        uint64_t tot = 0;
        for (int32_t j = 0; j < n; j++) {
            const tmp_buf *b = &p->bufs[nz[j]];
            if (b->first <= st && st <= b->last) {
                tot += b->size;
            }
        }
        if (st < L && tmp_model_layer_shape(c->m, st, &l) == TMP_OK) {
            const uint8_t choice = in_place_choice(c, &l, st);
            if (choice != 0) {
                const uint32_t v = p->bufs[A + (choice == 2 ? l.in1 : l.in0)].size;
                const uint32_t o = p->bufs[A + l.out].size;
                tot -= v < o ? v : o;
                const uint32_t s0 = p->bufs[st].size, s1 = (uint32_t)align4(tmp_plan_layer_scratch(c->m, &l, choice));
                tot -= s1 < s0 ? s0 - s1 : 0u;
            }
        }
        best = tot > best ? tot : best;
    }
    return best;
}

/* Plan the current table: region, in-place choices (greedy, kept when the arena shrinks),
 * placement, breakdown. With `limit` (0: none), a table whose arena_lower_bound() is above it
 * is not placed: TMP_ERR_SIZE with c->unplaced set, *arena_out = that bound, and nothing of the
 * plan is measured. */
static tmp_status evaluate(ctx_t *c, uint64_t *arena_out, uint64_t limit) {
    tmp_train_plan *p = c->p;
    derive_region(c);
    memset(p->in_place, 0, (size_t)(uint32_t)c->L);
    uint64_t best;
    c->unplaced = 0;
    tmp_status s = build(c);
    if (s != TMP_OK) {
        return s;
    }
    if (limit != 0 && (best = arena_lower_bound(c, limit)) > limit) {
        *arena_out = best;
        c->unplaced = 1;
        return TMP_ERR_SIZE;
    }
    s = place_built(c, &best);
    if (s != TMP_OK) {
        return s;
    }
    tmp_layer l;
    for (int32_t i = 0; i < c->L; i++) {
        tmp_model_layer_shape(c->m, i, &l);
        const uint8_t choice = in_place_choice(c, &l, i);
        if (choice == 0) {
            continue;
        }
        p->in_place[i] = choice;
        uint64_t a = UINT64_MAX;
        if (place_once(c, &a) == TMP_OK && a < best) {
            best = a;
        } else {
            p->in_place[i] = 0;
        }
    }
    s = place_once(c, &best);
    if (s != TMP_OK) {
        return s;
    }
    if (best > INT32_MAX) {
        return TMP_ERR_SIZE;
    }
    measure(c, best);
    *arena_out = best;
    return TMP_OK;
}

/* The frozen-prefix feature cache: the boundary tensors (produced before `first`, read at or
 * after it) and a region of the arena for as many samples' copies as the budget leaves room for.
 * No cache when the input itself is read inside the region (the step reads it from the caller). */
static void add_cache(ctx_t *c) {
    tmp_train_plan *p = c->p;
    p->cache_bytes = 0;
    p->cache_samples = 0;
    p->cache_offset = p->arena_bytes;
    memset(p->cache_t, 0, (size_t)(uint32_t)c->T);
    if (p->method == TMP_METHOD_FISHER || p->first <= 0 || p->first >= c->L) {
        return;
    }
    uint64_t sum = 0;
    for (int32_t t = 0; t <= p->first && t < c->T; t++) {
        if (c->last_use[t] >= p->first) {
            if (t == 0) {
                memset(p->cache_t, 0, (size_t)(uint32_t)c->T);
                return;
            }
            p->cache_t[t] = 1;
            sum += dims_count(tensor_dims(c->m, t));
        }
    }
    if (sum == 0 || sum > INT32_MAX) {
        memset(p->cache_t, 0, (size_t)(uint32_t)c->T);
        return;
    }
    p->cache_bytes = (uint32_t)align4((size_t)sum);
    uint64_t n = c->o->cache_samples;
    const uint64_t base = align4(p->arena_bytes);
    if (c->o->budget != 0) {
        uint64_t room = c->o->budget > base ? c->o->budget - base : 0;
        n = n < room / p->cache_bytes ? n : room / p->cache_bytes;
    }
    if (base < INT32_MAX) { /* as many as an arena of at most 2^31 - 1 bytes holds */
        const uint64_t most = (INT32_MAX - base) / p->cache_bytes;
        n = n < most ? n : most;
    } else {
        n = 0;
    }
    if (n == 0) {
        return;
    }
    const uint32_t bytes = (uint32_t)(n * p->cache_bytes);
    p->cache_samples = (uint32_t)n;
    p->cache_offset = (uint32_t)base;
    p->arena_bytes = (uint32_t)base + bytes;
    p->breakdown[TMP_CAT_CACHE] += bytes;
    p->category_peak[TMP_CAT_CACHE] = bytes;
    p->peak_live_bytes += bytes;
}

/* ---------------------------------------------------------------- methods */

static int32_t classifier(ctx_t *c) {
    tmp_layer l;
    for (int32_t i = c->L - 1; i >= 0; i--) {
        if (tmp_model_layer_shape(c->m, i, &l) == TMP_OK && is_weighted(l.type)) {
            return i;
        }
    }
    return -1;
}

static void set_w(ctx_t *c, int32_t i, float ratio, int apu) {
    tmp_layer l;
    tmp_model_layer_shape(c->m, i, &l);
    uint32_t cin = layer_cin(c->m, &l), k = k_of(ratio, cin);
    c->p->flags[i] |= TMP_TL_W;
    c->p->k[i] = (uint16_t)k;
    if (apu && k < cin) {
        c->p->flags[i] |= TMP_TL_APU;
    }
}

/* The fixed part of a method's table at a given ratio (no candidates). */
static tmp_status base_table(ctx_t *c, float ratio) {
    tmp_train_plan *p = c->p;
    const tmp_train_options *o = c->o;
    const int32_t L = c->L, cls = classifier(c);
    memset(p->flags, 0, (size_t)(uint32_t)L);
    memset(p->k, 0, 2u * (size_t)(uint32_t)L);
    if (p->method == TMP_METHOD_NONE || p->method == TMP_METHOD_FISHER || cls < 0) {
        return TMP_OK;
    }
    tmp_layer l;
    if (p->method == TMP_METHOD_FULL) {
        for (int32_t i = 0; i < L; i++) {
            tmp_model_layer_shape(c->m, i, &l);
            if (is_weighted(l.type)) {
                set_w(c, i, 1.0f, 0);
                p->flags[i] |= TMP_TL_B;
            }
        }
        return TMP_OK;
    }
    set_w(c, cls, 1.0f, 0);
    p->flags[cls] |= TMP_TL_B;
    /* biases of the last n_bias conv-like layers */
    int32_t nb = p->n_bias;
    for (int32_t i = L - 1; i >= 0 && nb != 0; i--) {
        tmp_model_layer_shape(c->m, i, &l);
        if (is_conv_like(l.type)) {
            p->flags[i] |= TMP_TL_B;
            if (nb > 0) {
                nb--;
            }
        }
    }
    if (p->method == TMP_METHOD_SPARSE) {
        for (int32_t j = 0; j < o->n_layers; j++) {
            int32_t i = o->layers[j];
            float rj = o->ratios != NULL ? o->ratios[j] : 1.0f;
            /* ratio < 1 passed by budget fitting scales every layer's ratio */
            set_w(c, i, rj * ratio, 0);
        }
    }
    return TMP_OK;
}

static int fits(ctx_t *c, uint64_t arena) {
    const tmp_train_options *o = c->o;
    if (o->budget != 0 && arena > o->budget) {
        return 0;
    }
    if (o->mac_budget != 0 && c->p->backward_macs > o->mac_budget) {
        return 0;
    }
    return 1;
}

/* The region limit of the selection (tinymp by default): a candidate that moves the backward region earlier than
 * `kept_first` must keep a step from the feature cache within step_share of an inference. Every
 * layer the region gains is run forward in every cached epoch and carries the gradient back, so
 * a small layer far from the others can cost more time than all the others together. */
static int too_slow(ctx_t *c, int32_t kept_first) {
    const tmp_train_plan *p = c->p;
    return p->first < kept_first && p->step_share > 0.0f &&
        (double)p->step_macs > (double)p->step_share * (double)p->forward_macs;
}

/* Candidate order for tinytrain / tinymp: by score (descending, ties lower index) when
 * there are scores, else deepest first. Returns the count. */
static int32_t candidates(ctx_t *c) {
    tmp_train_plan *p = c->p;
    const int32_t cls = classifier(c);
    int32_t n = 0;
    tmp_layer l;
    for (int32_t i = c->L - 1; i >= 0; i--) {
        if (i == cls || tmp_model_layer_shape(c->m, i, &l) != TMP_OK || !is_conv_like(l.type)) {
            continue;
        }
        if (c->o->fisher != NULL && !(p->score[i] > 0.0f) && p->method == TMP_METHOD_TINYTRAIN) {
            continue; /* outside the selection pass */
        }
        c->rank[n++] = (uint16_t)i;
    }
    if (c->o->fisher != NULL) {
        /* insertion sort by descending score, ties lower index */
        for (int32_t a = 1; a < n; a++) {
            uint16_t v = c->rank[a];
            int32_t b = a;
            while (b > 0) {
                uint16_t u = c->rank[b - 1];
                if (p->score[u] > p->score[v] || (p->score[u] == p->score[v] && u < v)) {
                    break;
                }
                c->rank[b] = u;
                b--;
            }
            c->rank[b] = v;
        }
    }
    return n;
}

/* One setting (ratio, r): the base table plus every candidate that still fits. On success
 * *arena is the placed size of the resulting table. */
static tmp_status table_for(ctx_t *c, float ratio, uint64_t *arena) {
    tmp_train_plan *p = c->p;
    tmp_status s = base_table(c, ratio);
    if (s != TMP_OK) {
        return s;
    }
    s = evaluate(c, arena, 0);
    if (s != TMP_OK) {
        return s;
    }
    const int greedy = p->method == TMP_METHOD_TINYTRAIN || p->method == TMP_METHOD_TINYMP;
    const int bias_fit = p->method == TMP_METHOD_BIAS && c->o->budget != 0;
    if (bias_fit && !fits(c, *arena)) {
        /* drop the earliest biases: keep the classifier, add biases back deepest first */
        tmp_layer l;
        for (int32_t i = 0; i < c->L; i++) {
            tmp_model_layer_shape(c->m, i, &l);
            if (is_conv_like(l.type)) {
                p->flags[i] &= (uint8_t)~TMP_TL_B;
            }
        }
        uint64_t a;
        s = evaluate(c, &a, 0);
        if (s != TMP_OK || !fits(c, a)) {
            *arena = a;
            return s;
        }
        int32_t nb = p->n_bias;
        for (int32_t i = c->L - 1; i >= 0 && nb != 0; i--) {
            tmp_model_layer_shape(c->m, i, &l);
            if (!is_conv_like(l.type)) {
                continue;
            }
            if (nb > 0) {
                nb--;
            }
            p->flags[i] |= TMP_TL_B;
            if (evaluate(c, &a, 0) != TMP_OK || !fits(c, a)) {
                p->flags[i] &= (uint8_t)~TMP_TL_B;
                break; /* an earlier bias extends the backward region: it costs more */
            }
        }
        return evaluate(c, arena, 0);
    }
    if (!greedy || !fits(c, *arena)) {
        return TMP_OK; /* fixed table, or the base does not fit: the caller tries the next setting */
    }
    const int32_t n = candidates(c);
    const int unbounded = c->o->budget == 0 && c->o->mac_budget == 0 && p->step_share == 0.0f;
    int32_t kept_first = p->first;
    for (int32_t j = 0; j < n; j++) {
        const int32_t i = c->rank[j];
        const uint8_t old_f = p->flags[i];
        const uint16_t old_k = p->k[i];
        set_w(c, i, ratio, p->method == TMP_METHOD_TINYMP);
        p->flags[i] |= TMP_TL_CANDIDATE;
        if (unbounded) {
            continue;
        }
        /* The region limit and the MAC budget depend on the table alone (derive_region,
         * count_macs): a candidate that breaks either is rejected before any placement; one
         * whose arena cannot fit the budget (arena_lower_bound) too. */
        derive_region(c);
        count_macs(c);
        uint64_t a;
        if (too_slow(c, kept_first) || (c->o->mac_budget != 0 && p->backward_macs > c->o->mac_budget) ||
            evaluate(c, &a, TMP_PLAN_LIMIT(c->o->budget)) != TMP_OK || !fits(c, a)) {
            p->flags[i] = old_f;
            p->k[i] = old_k;
        } else {
            kept_first = p->first;
        }
    }
    return evaluate(c, arena, 0);
}

/* ---------------------------------------------------------------- channels */

/* Top-k of c->tmpf[0..n) (ties lower index) into out[0..k), ascending. */
static void topk(ctx_t *c, uint32_t n, uint32_t k, uint16_t *out) {
    memset(c->mark, 0, n);
    for (uint32_t j = 0; j < k; j++) {
        int32_t best = -1;
        for (uint32_t i = 0; i < n; i++) {
            if (!c->mark[i] && (best < 0 || c->tmpf[i] > c->tmpf[best])) {
                best = (int32_t)i;
            }
        }
        c->mark[best] = 1;
    }
    uint32_t w = 0;
    for (uint32_t i = 0; i < n && w < k; i++) {
        if (c->mark[i]) {
            out[w++] = (uint16_t)i;
        }
    }
}

/* ||W[:, i]||^2 in real units per input channel into c->tmpf. */
static void weight_norms(ctx_t *c, const tmp_layer *l) {
    const tmp_model *m = c->m;
    const uint32_t cin = layer_cin(m, l), cout = layer_cout(m, l);
    for (uint32_t i = 0; i < cin; i++) {
        c->tmpf[i] = 0.0f;
    }
    if (l->type == TMP_LAYER_DWCONV) {
        const uint32_t taps = (uint32_t)l->kh * l->kw;
        for (uint32_t t = 0; t < taps; t++) {
            for (uint32_t ch = 0; ch < cin; ch++) {
                float w = (float)l->weights[t * cin + ch] * l->wscale[ch];
                c->tmpf[ch] += w * w;
            }
        }
        return;
    }
    const uint32_t per_o = weight_count(m, l) / cout;
    for (uint32_t o = 0; o < cout; o++) {
        const int8_t *row = l->weights + (size_t)o * per_o;
        const float s = l->wscale[o];
        for (uint32_t e = 0; e < per_o; e++) {
            float w = (float)row[e] * s;
            c->tmpf[e % cin] += w * w;
        }
    }
}

static void choose_channels(ctx_t *c) {
    tmp_train_plan *p = c->p;
    const tmp_trainer *fisher = c->o->fisher;
    uint32_t off = 0;
    tmp_layer l;
    for (int32_t i = 0; i < c->L; i++) {
        p->chan_off[i] = off;
        if (!(p->flags[i] & TMP_TL_W) || tmp_model_layer(c->m, i, &l, NULL) != TMP_OK) {
            continue;
        }
        const uint32_t cin = layer_cin(c->m, &l), k = p->k[i];
        uint16_t *out = p->channels + off;
        off += k;
        if (k >= cin) {
            for (uint32_t j = 0; j < cin; j++) {
                out[j] = (uint16_t)j;
            }
            continue;
        }
        int32_t n = 0;
        float sc = 0.0f;
        const float *delta = NULL;
        if (fisher != NULL && l.in0 >= 1 && l.type != TMP_LAYER_FC) {
            delta = tmp_trainer_fisher(fisher, l.in0 - 1, &n, &sc);
        }
        if (delta != NULL && (uint32_t)n == cin) {
            for (uint32_t j = 0; j < cin; j++) {
                c->tmpf[j] = delta[j];
            }
        } else {
            weight_norms(c, &l);
        }
        topk(c, cin, k, out);
    }
    p->num_channels = off;
}

/* TinyTrain scores from a selection pass: P_i = sum Delta of the layer's output,
 * s_i = P_i / ((|W_i| / max |W|) * (MAC_i / max MAC)) over the conv-like layers of the pass. */
static void fisher_scores(ctx_t *c) {
    tmp_train_plan *p = c->p;
    const int32_t cls = classifier(c);
    uint32_t max_w = 1, max_mac = 1;
    tmp_layer l;
    for (int32_t i = 0; i < c->L; i++) {
        p->potential[i] = 0.0f;
        p->score[i] = 0.0f;
    }
    if (c->o->fisher == NULL) {
        return;
    }
    for (int32_t pass = 0; pass < 2; pass++) {
        for (int32_t i = 0; i < c->L; i++) {
            int32_t n = 0;
            float sc;
            if (i == cls || tmp_model_layer_shape(c->m, i, &l) != TMP_OK || !is_conv_like(l.type)) {
                continue;
            }
            const float *d = tmp_trainer_fisher(c->o->fisher, i, &n, &sc);
            if (d == NULL) {
                continue;
            }
            uint32_t wc = weight_count(c->m, &l), mac = fwd_macs(c->m, &l);
            if (pass == 0) {
                max_w = wc > max_w ? wc : max_w;
                max_mac = mac > max_mac ? mac : max_mac;
                continue;
            }
            float P = 0.0f;
            for (int32_t o = 0; o < n; o++) {
                P += d[o];
            }
            P *= sc;
            p->potential[i] = P;
            float denom = ((float)wc / (float)max_w) * ((float)mac / (float)max_mac);
            /* a layer with a zero potential still ranks (last); 1e-30 keeps it a candidate */
            p->score[i] = denom > 0.0f ? P / denom + 1e-30f : 0.0f;
        }
    }
}

/* ---------------------------------------------------------------- entry point */

static tmp_status fail(tmp_train_error *err, const char *msg, int32_t layer) {
    if (err != NULL) {
        err->msg = msg;
        err->layer = layer;
    }
    return TMP_ERR_ARG;
}

static int32_t largest_cat(const tmp_train_plan *p) {
    int32_t best = 0;
    for (int32_t k = 1; k < TMP_CAT_COUNT; k++) {
        if (p->breakdown[k] > p->breakdown[best]) {
            best = k;
        }
    }
    return best;
}

tmp_status tmp_train_plan_make(const tmp_model *m, const tmp_train_options *o, void *ws,
    size_t ws_size, tmp_train_plan *p, tmp_train_error *err) {
    if (err != NULL) {
        memset(err, 0, sizeof *err);
        err->layer = -1;
        err->largest_cat = -1;
    }
    if (m == NULL || o == NULL || ws == NULL || p == NULL || ((uintptr_t)ws & 3u) != 0) {
        return fail(err, "invalid arguments", -1);
    }
    if (ws_size < tmp_train_workspace_size(m)) {
        return TMP_ERR_SIZE;
    }
    if (o->method < 0 || o->method >= TMP_METHOD_COUNT) {
        return fail(err, "unknown method", -1);
    }
    if (o->storage != TMP_STORAGE_INT8 && o->storage != TMP_STORAGE_FP32) {
        return fail(err, "storage must be 'int8' or 'fp32'", -1);
    }
    if (!(o->momentum >= 0.0f && o->momentum < 1.0f)) {
        return fail(err, "momentum must be in [0, 1)", -1);
    }
    if (o->r < 0 || o->r > TMP_MAX_R) {
        return fail(err, "r must be between 1 and 15", -1);
    }
    if (!(o->ratio >= 0.0f && o->ratio <= 1.0f)) {
        return fail(err, "ratio must be in (0, 1]", -1);
    }
    if (o->n_bias < -2) {
        return fail(err, "n_bias must be >= 0 or -1 (all)", -1);
    }
    if (!(o->step_share >= 0.0f)) {
        return fail(err, "step_share must be > 0", -1);
    }
    memset(p, 0, sizeof *p);
    ctx_t c;
    memset(&c, 0, sizeof c);
    c.o = o;
    if (!carve(&c, m, ws, p)) {
        return TMP_ERR_SIZE;
    }
    const int32_t L = c.L, T = c.T;
    p->table_bytes = (uint32_t)tmp_train_workspace_size(m);
    p->model_crc = m->crc;
    p->num_layers = L;
    p->num_tensors = T;
    p->method = o->method;
    p->storage = o->storage;
    p->momentum = o->momentum;
    p->budget = o->budget;
    p->r = o->r != 0 ? o->r : (o->method == TMP_METHOD_TINYMP ? 4 : 1);
    p->ratio = o->ratio != 0.0f ? o->ratio
        : ((o->method == TMP_METHOD_TINYMP || o->method == TMP_METHOD_TINYTRAIN) ? 0.25f : 1.0f);
    p->n_bias = o->n_bias != -2 ? o->n_bias
        : (o->method == TMP_METHOD_BIAS ? -1 : (o->method == TMP_METHOD_TINYMP ? 2 : 0));
    p->step_share = o->step_share != 0.0f ? (o->step_share >= 8.0f ? 0.0f : o->step_share)
        : (o->method == TMP_METHOD_TINYMP ? 0.25f : 0.0f);
    if (o->method == TMP_METHOD_FULL && p->r != 1) {
        return fail(err, "method 'full' is exact backprop: r must be 1", -1);
    }
    /* only tinymp and tinytrain pick channels by `ratio`; a ratio given to another method would be
     * reported as the plan's and change nothing (sparse scales its own `ratios` by ratio / the
     * given ratio when it shrinks to a budget, so the given one cancels out) */
    if (p->ratio != 1.0f && o->method != TMP_METHOD_TINYMP && o->method != TMP_METHOD_TINYTRAIN) {
        return fail(err, o->method == TMP_METHOD_SPARSE
            ? "method 'sparse' takes a ratio per listed layer (ratios): ratio must be 1"
            : "methods none, last, bias and full train every channel of their layers: ratio must be 1", -1);
    }
    /* the region limit bounds the layer selection, which only tinymp and tinytrain make: given to
     * another method it would be reported as the plan's and change nothing */
    if (o->step_share != 0.0f && o->method != TMP_METHOD_TINYMP && o->method != TMP_METHOD_TINYTRAIN) {
        return fail(err, "step_share limits the layer selection of methods tinymp and tinytrain; "
            "methods none, last, bias, sparse and full select no layers", -1);
    }
    if (o->method == TMP_METHOD_TINYTRAIN && o->fisher == NULL) {
        return fail(err, "method 'tinytrain' needs support samples for its selection pass", -1);
    }
    if (o->fisher != NULL && (o->fisher->p == NULL || o->fisher->m != m ||
        o->fisher->p->method != TMP_METHOD_FISHER || o->fisher->fisher_samples == 0)) {
        return fail(err, "the selection pass belongs to another model or saw no samples", -1);
    }

    /* validate the model's layers and the sparse list; lifetimes as inference */
    tmp_layer l;
    for (int32_t t = 0; t < T; t++) {
        c.last_use[t] = t - 1;
    }
    for (int32_t i = 0; i < L; i++) {
        if (tmp_model_layer(m, i, &l, NULL) != TMP_OK) {
            return TMP_ERR_FORMAT;
        }
        if (c.last_use[l.in0] < i) {
            c.last_use[l.in0] = i;
        }
        if (l.type == TMP_LAYER_ADD && c.last_use[l.in1] < i) {
            c.last_use[l.in1] = i;
        }
        if (is_weighted(l.type) && layer_cin(m, &l) > 0xFFFFu) {
            return fail(err, "a layer has more than 65535 input channels", i);
        }
    }
    c.last_use[T - 1] = L - 1 > c.last_use[T - 1] ? L - 1 : c.last_use[T - 1];
    if (o->method == TMP_METHOD_SPARSE) {
        if (o->n_layers < 0 || (o->n_layers > 0 && o->layers == NULL)) {
            return fail(err, "sparse: invalid layer list", -1);
        }
        for (int32_t j = 0; j < o->n_layers; j++) {
            int32_t i = o->layers[j];
            if (i >= L || tmp_model_layer(m, i, &l, NULL) != TMP_OK || !is_weighted(l.type)) {
                return fail(err, "sparse: a listed layer has no weights", i < L ? i : -1);
            }
            if (o->ratios != NULL && !(o->ratios[j] > 0.0f && o->ratios[j] <= 1.0f)) {
                return fail(err, "sparse: a ratio is outside (0, 1]", i);
            }
            for (int32_t k = 0; k < j; k++) {
                if (o->layers[k] == i) { /* which of its ratios would count? */
                    return fail(err, "sparse: a layer is listed twice", i);
                }
            }
        }
    }
    fisher_scores(&c);

    /* The selection pass: the earliest region start that fits the budget. Starts whose arena
     * cannot fit (arena_lower_bound) are not placed; when none fits, a second scan places every
     * start, for the smallest arena the error reports (as without the bound). */
    if (o->method == TMP_METHOD_FISHER) {
        memset(p->flags, 0, (size_t)(uint32_t)L);
        memset(p->k, 0, 2u * (size_t)(uint32_t)L);
        uint64_t a = 0, amin = UINT64_MAX;
        int32_t fmin = 0;
        for (int pass = o->budget != 0 ? 0 : 1; pass < 2; pass++) {
            int skipped = 0;
            amin = UINT64_MAX; /* the earliest start of the smallest arena, from this scan alone */
            fmin = 0;
            for (int32_t f = 0; f < L; f++) {
                p->first = f;
                tmp_status s = evaluate(&c, &a, pass == 0 ? TMP_PLAN_LIMIT(o->budget) : 0u);
                if (s == TMP_ERR_SIZE && c.unplaced) {
                    skipped = 1;
                    continue;
                }
                if (s == TMP_ERR_ARG) {
                    continue; /* e.g. an fc on a spatial input inside a condensed region */
                }
                if (s != TMP_OK) {
                    return s;
                }
                if (a < amin) {
                    amin = a;
                    fmin = f;
                }
                if (o->budget == 0 || a <= o->budget) {
                    choose_channels(&c);
                    return TMP_OK;
                }
            }
            if (!skipped) {
                break;
            }
        }
        p->first = fmin;
        evaluate(&c, &a, 0);
        choose_channels(&c);
        if (err != NULL) {
            err->msg = "the selection pass does not fit the budget";
            err->min_budget = (uint32_t)amin;
            err->largest_cat = largest_cat(p);
            err->largest_bytes = p->breakdown[err->largest_cat];
        }
        return TMP_ERR_SIZE;
    }

    /* Settings to try, in the order of docs/TRAINING.md section 5: the options first, then
     * lower ratios, then larger r (methods with a fixed definition try only their own). */
    const int shrink = o->budget != 0 && (o->method == TMP_METHOD_SPARSE ||
        o->method == TMP_METHOD_TINYTRAIN || o->method == TMP_METHOD_TINYMP);
    static const int32_t r_steps[] = { 1, 2, 4, 7 };
    uint64_t amin = UINT64_MAX;
    float best_ratio = p->ratio;
    int32_t best_r = p->r;
    const int32_t r0 = p->r;
    const float ratio0 = p->ratio;
    for (int32_t ri = -1; ri < 4; ri++) {
        int32_t r = ri < 0 ? r0 : r_steps[ri];
        if (ri >= 0 && (!shrink || r <= r0)) {
            continue;
        }
        float ratio = ratio0;
        for (int32_t q = 0; q < MAX_RATIO_STEPS; q++, ratio *= 0.5f) {
            if (q > 0 && (!shrink || ratio < 0.124f)) {
                break;
            }
            p->r = r;
            uint64_t a = 0;
            tmp_status s = table_for(&c, o->method == TMP_METHOD_SPARSE ? ratio / ratio0 : ratio, &a);
            if (s == TMP_ERR_ARG) {
                return fail(err, "an fc layer on a spatial input can be trained through only at r = 1", -1);
            }
            if (s != TMP_OK) {
                return s;
            }
            if (a < amin) {
                amin = a;
                best_ratio = ratio;
                best_r = r;
            }
            if (fits(&c, a)) {
                p->ratio = ratio;
                choose_channels(&c);
                add_cache(&c);
                return TMP_OK;
            }
        }
    }
    /* Nothing fits: describe the smallest setting and report it. */
    p->r = best_r;
    p->ratio = best_ratio;
    uint64_t a = 0;
    table_for(&c, o->method == TMP_METHOD_SPARSE ? best_ratio / ratio0 : best_ratio, &a);
    choose_channels(&c);
    if (err != NULL) {
        err->msg = o->budget != 0 && amin > o->budget ? "does not fit the budget"
                                                      : "exceeds the backward MAC budget";
        err->min_budget = (uint32_t)amin;
        err->largest_cat = largest_cat(p);
        err->largest_bytes = p->breakdown[err->largest_cat];
    }
    return TMP_ERR_SIZE;
}

tmp_train_options tmp_train_selection_options(const tmp_train_options *o) {
    tmp_train_options fo = tmp_train_options_default(TMP_METHOD_FISHER);
    fo.r = o->r != 0 ? o->r : 4;
    fo.budget = o->budget;
    return fo;
}

tmp_status tmp_train_min_budget(const tmp_model *m, const tmp_train_options *o, int with_selection, void *ws,
    size_t ws_size, tmp_train_error *err) {
    if (m == NULL || o == NULL || err == NULL) {
        return TMP_ERR_ARG;
    }
    tmp_train_plan p;
    tmp_train_error e;
    /* the training table alone (a budget of 1 byte makes the planner report its smallest) */
    tmp_train_options t = *o;
    t.fisher = NULL;
    t.budget = 1;
    if (t.method == TMP_METHOD_TINYTRAIN) {
        /* its smallest table trains the last layer alone, every channel: the options of its
         * selection (ratio, step_share) mean nothing there, and `last` refuses them */
        t.method = TMP_METHOD_LAST;
        t.r = o->r != 0 ? o->r : 1;
        t.n_bias = o->n_bias != -2 ? o->n_bias : 0;
        t.ratio = 0.0f;
        t.step_share = 0.0f;
    }
    tmp_status st = tmp_train_plan_make(m, &t, ws, ws_size, &p, &e);
    if (st != TMP_ERR_SIZE) {
        if (err != NULL) {
            *err = e;
        }
        return st == TMP_OK ? TMP_ERR_ARG : st;
    }
    *err = e;
    if (with_selection) {
        tmp_train_options fo = tmp_train_selection_options(o);
        fo.budget = 1;
        st = tmp_train_plan_make(m, &fo, ws, ws_size, &p, &e);
        if (st != TMP_ERR_SIZE) {
            return st == TMP_OK ? TMP_ERR_ARG : st;
        }
        if (e.min_budget > err->min_budget) {
            err->min_budget = e.min_budget;
            err->largest_cat = e.largest_cat;
            err->largest_bytes = e.largest_bytes;
        }
    }
    return TMP_OK;
}

/* ---------------------------------------------------------------- describe */

typedef struct {
    char *buf;
    size_t size, len;
} out_t;

static void put(out_t *o, const char *s) {
    while (*s) {
        if (o->len + 1 < o->size) {
            o->buf[o->len] = *s;
        }
        o->len++;
        s++;
    }
}

/* Unsigned decimal with thousands separators, right-aligned in `width`. */
static void put_u(out_t *o, uint64_t v, int width, int sep) {
    char tmp[32];
    int n = 0, digits = 0;
    do {
        if (sep && digits > 0 && digits % 3 == 0) {
            tmp[n++] = ',';
        }
        tmp[n++] = (char)('0' + (int)(v % 10u));
        v /= 10u;
        digits++;
    } while (v != 0);
    for (int i = n; i < width; i++) {
        put(o, " ");
    }
    char one[2] = { 0, 0 };
    while (n > 0) {
        one[0] = tmp[--n];
        put(o, one);
    }
}

static void put_s(out_t *o, const char *s, int width) {
    size_t n = strlen(s);
    put(o, s);
    for (int i = (int)n; i < width; i++) {
        put(o, " ");
    }
}

/* ---------------------------------------------------------------- the compact tables */

static uint32_t bit_count(uint32_t v) {
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    return (((v + (v >> 4)) & 0x0F0F0F0Fu) * 0x01010101u) >> 24;
}

static size_t table_entries(const tmp_train_plan *p) {
    return (size_t)LBN * (size_t)p->num_layers + 2u * (size_t)p->num_tensors;
}

const tmp_buf *tmp_train_plan_buf(const tmp_train_plan *p, int32_t idx) {
    static const tmp_buf none = { 0u, 0u, -1, -1 };
    if (p == NULL || p->bufs == NULL || idx < 0 || (size_t)idx >= table_entries(p)) {
        return &none;
    }
    if (p->buf_bits == NULL) {
        return p->bufs[idx].size ? &p->bufs[idx] : &none;
    }
    const uint32_t w = (uint32_t)idx >> 5, bit = 1u << ((uint32_t)idx & 31u), word = p->buf_bits[w];
    return (word & bit) ? &p->bufs[p->buf_rank[w] + bit_count(word & (bit - 1u))] : &none;
}

/* The compact block, in this order: flags, in_place [L]; k [L]; chan_off, fwd_macs, bwd_macs,
 * potential, score [L]; act_offset, grad_birth [T]; cache_t [T]; buf_bits, buf_rank [words];
 * channels [num_channels]; bufs [entries that exist]. */
static size_t compact_layout(const tmp_train_plan *p) {
    const size_t L = (size_t)p->num_layers, T = (size_t)p->num_tensors, NB = table_entries(p);
    size_t n = 0;
    for (size_t i = 0; i < NB; i++) {
        n += tmp_train_plan_buf(p, (int32_t)i)->size != 0u;
    }
    return align4(L) * 2 + align4(2 * L) + 4 * L * 5 + 4 * T * 2 + align4(T) + 4 * ((NB + 31) / 32) * 2 +
        align4(2 * (size_t)p->num_channels) + sizeof(tmp_buf) * n;
}

size_t tmp_train_plan_compact_size(const tmp_train_plan *p) {
    return p == NULL || p->bufs == NULL ? 0u : compact_layout(p);
}

tmp_status tmp_train_plan_compact(tmp_train_plan *p, void *dst, size_t size) {
    if (p == NULL || p->bufs == NULL || dst == NULL || ((uintptr_t)dst & 3u) != 0) {
        return TMP_ERR_ARG;
    }
    const size_t need = compact_layout(p);
    if (size < need) {
        return TMP_ERR_SIZE;
    }
    const size_t L = (size_t)p->num_layers, T = (size_t)p->num_tensors, NB = table_entries(p);
    const size_t words = (NB + 31) / 32;
    uint8_t *q = (uint8_t *)dst;
    tmp_train_plan n = *p;
#define MOVE(field, type, count, bytes) \
    do { \
        n.field = (type)(void *)q; \
        memcpy(q, p->field, (count) * sizeof *p->field); \
        q += (bytes); \
    } while (0)
    MOVE(flags, uint8_t *, L, align4(L));
    MOVE(in_place, uint8_t *, L, align4(L));
    MOVE(k, uint16_t *, L, align4(2 * L));
    MOVE(chan_off, uint32_t *, L, 4 * L);
    MOVE(fwd_macs, uint32_t *, L, 4 * L);
    MOVE(bwd_macs, uint32_t *, L, 4 * L);
    MOVE(potential, float *, L, 4 * L);
    MOVE(score, float *, L, 4 * L);
    MOVE(act_offset, uint32_t *, T, 4 * T);
    MOVE(grad_birth, int32_t *, T, 4 * T);
    MOVE(cache_t, uint8_t *, T, align4(T));
#undef MOVE
    n.buf_bits = (uint32_t *)(void *)q;
    q += 4 * words;
    n.buf_rank = (uint32_t *)(void *)q;
    q += 4 * words;
    n.channels = (uint16_t *)(void *)q;
    memcpy(q, p->channels, 2u * (size_t)p->num_channels);
    q += align4(2 * (size_t)p->num_channels);
    n.bufs = (tmp_buf *)(void *)q;
    uint32_t kept = 0;
    for (size_t w = 0; w < words; w++) {
        uint32_t word = 0;
        for (size_t j = 0; j < 32 && w * 32 + j < NB; j++) {
            const tmp_buf *b = tmp_train_plan_buf(p, (int32_t)(w * 32 + j));
            if (b->size) {
                n.bufs[kept + bit_count(word)] = *b;
                word |= 1u << j;
            }
        }
        n.buf_bits[w] = word;
        n.buf_rank[w] = kept;
        kept += bit_count(word);
    }
    n.cat = NULL;
    n.table_bytes = (uint32_t)need;
    *p = n;
    return TMP_OK;
}

static uint32_t lb_size(const tmp_train_plan *p, int b, int32_t i) {
    return tmp_train_plan_buf(p, b * p->num_layers + i)->size;
}

size_t tmp_train_plan_describe(const tmp_model *m, const tmp_train_plan *p, char *buf, size_t size) {
    out_t o = { buf, size, 0 };
    if (m == NULL || p == NULL) {
        return 0;
    }
    put(&o, "method ");
    put(&o, tmp_method_name(p->method));
    put(&o, ", r ");
    put_u(&o, (uint64_t)p->r, 0, 0);
    put(&o, ", ratio 1/");
    put_u(&o, p->ratio > 0.0f ? (uint64_t)(1.0f / p->ratio + 0.5f) : 0u, 0, 0);
    put(&o, ", storage ");
    put(&o, p->storage == TMP_STORAGE_FP32 ? "fp32" : "int8");
    put(&o, "\n");
    put(&o, "layer type     output        train     k/Cin       saved   masks     grads"
            "    params     fwd MACs     bwd MACs\n");
    tmp_layer l;
    for (int32_t i = 0; i < p->num_layers; i++) {
        if (tmp_model_layer(m, i, &l, NULL) != TMP_OK) {
            continue;
        }
        const uint8_t f = p->flags[i];
        tmp_dims d = tensor_dims(m, l.out);
        put_u(&o, (uint64_t)i, 5, 0);
        put(&o, " ");
        put_s(&o, tmp_layer_type_name(l.type), 8);
        put(&o, " ");
        char shape[40];
        out_t so = { shape, sizeof shape, 0 };
        put_u(&so, (uint64_t)d.h, 0, 0);
        put(&so, "x");
        put_u(&so, (uint64_t)d.w, 0, 0);
        put(&so, "x");
        put_u(&so, (uint64_t)d.c, 0, 0);
        shape[so.len < sizeof shape ? so.len : sizeof shape - 1] = 0;
        put_s(&o, shape, 13);
        const char *tr = (f & TMP_TL_W) ? ((f & TMP_TL_B) ? "W+b" : "W")
            : ((f & TMP_TL_B) ? "b" : ((f & TMP_TL_REGION) ? "grad" : "-"));
        put(&o, " ");
        put_s(&o, tr, 4);
        put_s(&o, (f & TMP_TL_APU) ? " APU" : "    ", 4);
        if (f & TMP_TL_W) {
            put_u(&o, p->k[i], 6, 0);
            put(&o, "/");
            put_u(&o, layer_cin(m, &l), 0, 0);
            uint32_t cin = layer_cin(m, &l);
            int pad = cin >= 10000 ? 0 : cin >= 1000 ? 1 : cin >= 100 ? 2 : cin >= 10 ? 3 : 4;
            for (int s = 0; s < pad; s++) {
                put(&o, " ");
            }
        } else {
            put(&o, "           ");
        }
        uint32_t saved = lb_size(p, TMP_LB_SAVED, i) + lb_size(p, TMP_LB_ASUM, i);
        uint32_t grads = lb_size(p, TMP_LB_DW, i) + lb_size(p, TMP_LB_DB, i);
        if (p->grad_birth[l.out] >= 0) {
            grads += tmp_train_plan_buf(p, TMP_LB_COUNT * p->num_layers + p->num_tensors + l.out)->size;
        }
        uint32_t params = lb_size(p, TMP_LB_W, i) + lb_size(p, TMP_LB_B, i) + lb_size(p, TMP_LB_WM, i) +
            lb_size(p, TMP_LB_BM, i) + lb_size(p, TMP_LB_SEL, i) + lb_size(p, TMP_LB_VW, i) +
            lb_size(p, TMP_LB_VB, i) + lb_size(p, TMP_LB_FISH, i);
        put_u(&o, saved, 11, 1);
        put_u(&o, lb_size(p, TMP_LB_MASK, i), 8, 1);
        put_u(&o, grads, 10, 1);
        put_u(&o, params, 10, 1);
        put_u(&o, p->fwd_macs[i], 13, 1);
        put_u(&o, p->bwd_macs[i], 13, 1);
        put(&o, "\n");
    }
    put(&o, "arena ");
    put_u(&o, p->arena_bytes, 0, 1);
    put(&o, " bytes (peak of live buffers ");
    put_u(&o, p->peak_live_bytes, 0, 1);
    put(&o, " at step ");
    put_u(&o, (uint64_t)p->peak_step, 0, 0);
    put(&o, "):");
    for (int32_t k = 0; k < TMP_CAT_COUNT; k++) {
        put(&o, k ? ", " : " ");
        put(&o, tmp_category_name(k));
        put(&o, " ");
        put_u(&o, p->breakdown[k], 0, 1);
    }
    if (p->cache_bytes != 0) {
        put(&o, "\nfeature cache ");
        put_u(&o, p->cache_bytes, 0, 1);
        put(&o, " bytes per sample (frozen prefix: layers 0-");
        put_u(&o, (uint64_t)(p->first - 1), 0, 0);
        put(&o, "), ");
        put_u(&o, p->cache_samples, 0, 1);
        put(&o, " sample(s) in the arena");
    }
    put(&o, "\nforward MACs ");
    put_u(&o, p->forward_macs, 0, 1);
    put(&o, ", backward MACs ");
    put_u(&o, p->backward_macs, 0, 1);
    if (p->first < p->num_layers) {
        put(&o, ", a step from the feature cache ");
        put_u(&o, p->step_macs, 0, 1);
    }
    put(&o, "\n");
    if (size > 0) {
        buf[o.len < size ? o.len : size - 1] = 0;
    }
    return o.len;
}
