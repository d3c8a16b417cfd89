/*
 * tinymp core: the inference planner (docs/PLANNER.md).
 *
 * Buffers: one per activation tensor (tensor 0, the caller's input, is read in place and takes no
 * arena bytes) and one per layer for its kernel scratch. A buffer lives from the layer that writes
 * it to the last layer that reads it (the model output: to the end). A layer may write its output
 * over an input that dies at that layer ("in place": depthwise convolutions, via a one-plane
 * scratch, and residual adds, element-wise); then both tensors share one buffer.
 *
 * Placement is greedy by size: buffers in decreasing size, each at the lowest offset where it
 * overlaps no already-placed buffer that is live at the same time. In-place choices are made
 * greedily, layer by layer, keeping each one only if it lowers the arena. Everything is computed
 * in the caller's workspace; nothing is allocated.
 */
#include <string.h>

#include "tmp_kernels.h"
#include "tmp_plan.h"
#include "tmp_place.h"

typedef tmp_buf buf_t;

/* Views of the workspace. */
typedef struct {
    uint32_t *tensor_offset; /* [T] */
    uint32_t *scratch_offset; /* [L] */
    uint32_t *scratch_bytes;  /* [L] */
    uint8_t *in_place;        /* [L], padded to 4 */
    buf_t *bufs;              /* [T + L]: tensor t -> bufs[t], scratch of layer i -> bufs[T + i] */
    int32_t *last_use;        /* [T] */
    uint16_t *owner;          /* [T] buffer holding tensor t (itself, or an earlier tensor when aliased) */
    uint16_t *order;          /* [T + L] placement order */
    uint16_t *placed;         /* [T + L] placed buffers sorted by offset */
} ws_t;

static size_t align4(size_t n) {
    return (n + 3u) & ~(size_t)3u;
}

size_t tmp_plan_workspace_size(const tmp_model *m) {
    size_t T = m->num_tensors, L = m->num_layers, B = T + L;
    return 4u * T + 4u * L + 4u * L + align4(L) + sizeof(buf_t) * B + 4u * T + align4(2u * T) +
           align4(2u * B) + align4(2u * B);
}

static void carve(const tmp_model *m, void *ws, ws_t *w) {
    size_t T = m->num_tensors, L = m->num_layers, B = T + L;
    uint8_t *p = (uint8_t *)ws;
    w->tensor_offset = (uint32_t *)(void *)p;
    p += 4u * T;
    w->scratch_offset = (uint32_t *)(void *)p;
    p += 4u * L;
    w->scratch_bytes = (uint32_t *)(void *)p;
    p += 4u * L;
    w->in_place = p;
    p += align4(L);
    w->bufs = (buf_t *)(void *)p;
    p += sizeof(buf_t) * B;
    w->last_use = (int32_t *)(void *)p;
    p += 4u * T;
    w->owner = (uint16_t *)(void *)p;
    p += align4(2u * T);
    w->order = (uint16_t *)(void *)p;
    p += align4(2u * B);
    w->placed = (uint16_t *)(void *)p;
}

static uint32_t tensor_bytes(const tmp_model *m, int32_t t) {
    tmp_tensor tt;
    if (tmp_model_tensor(m, t, &tt, NULL) != TMP_OK) {
        return 0;
    }
    return (uint32_t)tt.dims.h * (uint32_t)tt.dims.w * (uint32_t)tt.dims.c;
}

uint32_t tmp_plan_layer_scratch(const tmp_model *m, const tmp_layer *l, int in_place) {
    tmp_tensor tin, tout;
    tmp_model_tensor(m, l->in0, &tin, NULL);
    tmp_model_tensor(m, l->out, &tout, NULL);
    tmp_filter_dims f = { l->kh, l->kw };
    int32_t s = 0;
    switch (l->type) {
        case TMP_LAYER_CONV:
            s = tmp_conv_s8_get_buffer_size(&tin.dims, &f, &tout.dims);
            break;
        case TMP_LAYER_DWCONV: {
            const tmp_conv_params p = tmp_layer_conv_params(l, &tin, &tout);
            s = tmp_dwconv_s8_get_buffer_size(&p, &tin.dims, &f, &tout.dims, in_place != 0);
            break;
        }
        case TMP_LAYER_PWCONV:
            s = tmp_pwconv_s8_get_buffer_size(&tin.dims, &tout.dims);
            break;
        case TMP_LAYER_FC:
            s = tmp_fc_s8_get_buffer_size(tin.dims.h * tin.dims.w * tin.dims.c, tout.dims.c);
            break;
        case TMP_LAYER_ADD:
            s = tmp_add_s8_get_buffer_size(tout.dims.h * tout.dims.w * tout.dims.c);
            break;
        case TMP_LAYER_AVGPOOL:
            s = tmp_avgpool_s8_get_buffer_size(&tin.dims);
            break;
        default:
            break;
    }
    return s > 0 ? (uint32_t)s : 0u;
}

/* Sizes and lifetimes of every buffer for the current in-place choices. */
static tmp_status build_buffers(const tmp_model *m, ws_t *w) {
    const int32_t T = m->num_tensors, L = m->num_layers;
    for (int32_t t = 0; t < T; t++) {
        w->owner[t] = (uint16_t)t;
        w->bufs[t].size = t == 0 ? 0u : (uint32_t)align4(tensor_bytes(m, t));
        w->bufs[t].first = t - 1;
        w->bufs[t].last = w->last_use[t];
        w->bufs[t].offset = 0;
    }
    tmp_layer l;
    for (int32_t i = 0; i < L; i++) {
        if (tmp_model_layer(m, i, &l, NULL) != TMP_OK) {
            return TMP_ERR_FORMAT;
        }
        uint32_t sb = tmp_plan_layer_scratch(m, &l, w->in_place[i]);
        w->scratch_bytes[i] = sb;
        buf_t *b = &w->bufs[T + i];
        b->size = (uint32_t)align4(sb);
        b->first = b->last = i;
        b->offset = 0;
        if (w->in_place[i]) {
            /* The output shares the buffer of the input it overwrites; that input dies here. */
            uint16_t victim = w->in_place[i] == 2 ? l.in1 : l.in0;
            uint16_t root = w->owner[victim];
            w->owner[l.out] = root;
            if (w->bufs[l.out].size > w->bufs[root].size) {
                w->bufs[root].size = w->bufs[l.out].size;
            }
            w->bufs[root].last = w->bufs[l.out].last;
            w->bufs[l.out].size = 0;
        }
    }
    return TMP_OK;
}

/* Greedy-by-size placement; returns the arena size. */
static uint64_t place(const tmp_model *m, ws_t *w) {
    return tmp_place(w->bufs, (int32_t)m->num_tensors + (int32_t)m->num_layers, w->order, w->placed);
}

static tmp_status plan_once(const tmp_model *m, ws_t *w, uint64_t *arena) {
    tmp_status s = build_buffers(m, w);
    if (s != TMP_OK) {
        return s;
    }
    *arena = place(m, w);
    return TMP_OK;
}

tmp_status tmp_plan_inference(const tmp_model *m, void *ws, size_t ws_size, tmp_plan *plan) {
    if (m == NULL || ws == NULL || plan == NULL || ((uintptr_t)ws & 3u) != 0) {
        return TMP_ERR_ARG;
    }
    if (ws_size < tmp_plan_workspace_size(m)) {
        return TMP_ERR_SIZE;
    }
    ws_t w;
    carve(m, ws, &w);
    const int32_t T = m->num_tensors, L = m->num_layers;
    memset(w.in_place, 0, align4((size_t)L));

    /* Lifetimes: a tensor lives until its last reader; the model output to the end. */
    tmp_layer l;
    for (int32_t t = 0; t < T; t++) {
        w.last_use[t] = t - 1;
    }
    for (int32_t i = 0; i < L; i++) {
        if (tmp_model_layer(m, i, &l, NULL) != TMP_OK) {
            return TMP_ERR_FORMAT;
        }
        if (w.last_use[l.in0] < i) {
            w.last_use[l.in0] = i;
        }
        if (l.type == TMP_LAYER_ADD && w.last_use[l.in1] < i) {
            w.last_use[l.in1] = i;
        }
    }
    w.last_use[T - 1] = L;

    uint64_t best;
    tmp_status s = plan_once(m, &w, &best);
    if (s != TMP_OK) {
        return s;
    }
    /* Try each eligible layer in place; keep the choice only when the arena shrinks. */
    for (int32_t i = 0; i < L; i++) {
        tmp_model_layer(m, i, &l, NULL);
        uint8_t choice = 0;
        if (l.type == TMP_LAYER_DWCONV && l.in0 != 0 && w.last_use[l.in0] == i) {
            choice = 1;
        } else if (l.type == TMP_LAYER_ADD) {
            if (l.in1 != 0 && l.in1 != l.in0 && w.last_use[l.in1] == i) {
                choice = 2;
            } else if (l.in0 != 0 && l.in0 != l.in1 && w.last_use[l.in0] == i) {
                choice = 1;
            }
        }
        if (choice == 0) {
            continue;
        }
        w.in_place[i] = choice;
        uint64_t a = UINT64_MAX;
        if (plan_once(m, &w, &a) == TMP_OK && a < best) {
            best = a;
        } else {
            w.in_place[i] = 0;
        }
    }
    s = plan_once(m, &w, &best);
    if (s != TMP_OK) {
        return s;
    }
    if (best > INT32_MAX) {
        return TMP_ERR_SIZE;
    }

    /* Results: offsets, sizes, the lower bound and the activations-only extent. */
    uint64_t act = 0, peak = 0;
    for (int32_t t = 0; t < T; t++) {
        const buf_t *b = &w.bufs[w.owner[t]];
        w.tensor_offset[t] = t == 0 ? 0u : b->offset;
        if (t > 0 && (uint64_t)b->offset + b->size > act) {
            act = (uint64_t)b->offset + b->size;
        }
    }
    for (int32_t i = 0; i < L; i++) {
        w.scratch_offset[i] = w.bufs[T + i].offset;
        uint64_t live = 0;
        for (int32_t k = 0; k < T + L; k++) {
            const buf_t *b = &w.bufs[k];
            if (b->size != 0 && b->first <= i && i <= b->last) {
                live += b->size;
            }
        }
        if (live > peak) {
            peak = live;
        }
    }
    plan->arena_bytes = (uint32_t)best;
    plan->input_bytes = tensor_bytes(m, 0);
    plan->peak_live_bytes = (uint32_t)peak;
    plan->activation_bytes = (uint32_t)act;
    plan->num_layers = (uint16_t)L;
    plan->tensor_offset = w.tensor_offset;
    plan->scratch_offset = w.scratch_offset;
    plan->scratch_bytes = w.scratch_bytes;
    plan->in_place = w.in_place;
    return TMP_OK;
}
