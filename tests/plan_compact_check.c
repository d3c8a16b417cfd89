/*
 * tmp_train_plan_compact() against the plan it was made from (tests/test_plan_compact.py builds
 * this with the whole core, under the address and undefined-behaviour sanitizers).
 *
 * For every configuration below, the planner's own (dense) plan is the reference: the compact
 * plan must read the same through tmp_train_plan_buf() for every table index, hold the same
 * per-layer and per-tensor arrays and channel selections, describe() the same text, and train
 * to the same bytes: two trainers, one on each plan, run the same steps (plain, APU period ends,
 * and fill / cached steps when the plan caches), and their losses and whole arenas must be equal
 * bit for bit. The planning workspace is poisoned before the compact plan's trainer runs, so a
 * compact plan that still read it would fail. The selection pass (method fisher) is checked the
 * same way, through its Fisher sums.
 *
 * usage: plan_compact_check MODEL.tmpm STEPS   prints one line per configuration, exit 0 when all
 * agree, 1 with "FAIL ..." otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tmp_model.h"
#include "tmp_train.h"

#include "check_common.h"

static tmp_model g_m;
static int8_t *g_x;      /* samples, in_bytes each */
static int32_t *g_y;
static uint32_t g_in_bytes, g_n;

static uint32_t lcg(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

static void *aligned(size_t n) {
    /* malloc is 8-byte aligned; +1 keeps zero-size requests valid */
    return calloc(1, n + 8u);
}

static int same_buf(const tmp_buf *a, const tmp_buf *b) {
    return a->size == b->size && a->offset == b->offset && a->first == b->first && a->last == b->last;
}

/* every field a reader of the plan sees */
static int compare_plans(const tmp_train_plan *d, const tmp_train_plan *c) {
    const int32_t L = d->num_layers, T = d->num_tensors, NB = TMP_LB_COUNT * L + 2 * T;
    CHECK(d->buf_bits == NULL && c->buf_bits != NULL && c->cat == NULL, "forms");
    CHECK(c->arena_bytes == d->arena_bytes && c->peak_live_bytes == d->peak_live_bytes &&
        c->peak_step == d->peak_step && c->first == d->first && c->num_layers == L && c->num_tensors == T &&
        c->num_channels == d->num_channels && c->forward_macs == d->forward_macs &&
        c->backward_macs == d->backward_macs && c->step_macs == d->step_macs && c->cache_bytes == d->cache_bytes &&
        c->cache_samples == d->cache_samples && c->cache_offset == d->cache_offset && c->r == d->r &&
        c->method == d->method && c->model_crc == d->model_crc, "scalars");
    CHECK(memcmp(c->breakdown, d->breakdown, sizeof d->breakdown) == 0 &&
        memcmp(c->category_peak, d->category_peak, sizeof d->category_peak) == 0, "breakdown");
    CHECK(memcmp(c->flags, d->flags, (size_t)L) == 0 && memcmp(c->in_place, d->in_place, (size_t)L) == 0 &&
        memcmp(c->k, d->k, 2u * (size_t)L) == 0 && memcmp(c->fwd_macs, d->fwd_macs, 4u * (size_t)L) == 0 &&
        memcmp(c->bwd_macs, d->bwd_macs, 4u * (size_t)L) == 0 &&
        memcmp(c->potential, d->potential, 4u * (size_t)L) == 0 && memcmp(c->score, d->score, 4u * (size_t)L) == 0,
        "layer arrays");
    CHECK(memcmp(c->act_offset, d->act_offset, 4u * (size_t)T) == 0 &&
        memcmp(c->grad_birth, d->grad_birth, 4u * (size_t)T) == 0 && memcmp(c->cache_t, d->cache_t, (size_t)T) == 0,
        "tensor arrays");
    for (int32_t i = 0; i < L; i++) {
        if (d->flags[i] & TMP_TL_W) {
            CHECK(memcmp(c->channels + c->chan_off[i], d->channels + d->chan_off[i], 2u * d->k[i]) == 0,
                "channels of layer %d", (int)i);
        }
    }
    int32_t present = 0;
    for (int32_t j = -2; j < NB + 2; j++) {
        const tmp_buf *a = tmp_train_plan_buf(d, j), *b = tmp_train_plan_buf(c, j);
        CHECK(same_buf(a, b), "entry %d: %lu@%lu [%d, %d] vs %lu@%lu [%d, %d]", (int)j, (unsigned long)a->size,
            (unsigned long)a->offset, (int)a->first, (int)a->last, (unsigned long)b->size, (unsigned long)b->offset,
            (int)b->first, (int)b->last);
        if (j >= 0 && j < NB) {
            /* the dense table itself: an entry exists exactly when it has bytes */
            CHECK(d->bufs[j].size ? same_buf(a, &d->bufs[j]) : (a->size == 0 && a->first == -1), "dense %d", (int)j);
            present += a->size != 0;
        } else {
            CHECK(a->size == 0 && a->first == -1 && a->last == -1, "outside %d", (int)j);
        }
    }
    CHECK(c->table_bytes == tmp_train_plan_compact_size(d) && c->table_bytes >= sizeof(tmp_buf) * (size_t)present,
        "table bytes");
    static char da[1 << 16], ca[1 << 16];
    size_t nd = tmp_train_plan_describe(&g_m, d, da, sizeof da), nc = tmp_train_plan_describe(&g_m, c, ca, sizeof ca);
    CHECK(nd == nc && strcmp(da, ca) == 0, "describe differs");
    return 0;
}

/* Train two trainers, one per plan, the same way; compare losses and arenas bit for bit. */
static int compare_training(const tmp_train_plan *d, const tmp_train_plan *c, void *dense_ws, size_t wsz,
    uint32_t steps) {
    uint8_t *a1 = aligned(d->arena_bytes), *a2 = aligned(c->arena_bytes);
    int8_t *cache1 = aligned((size_t)d->cache_bytes * g_n), *cache2 = aligned((size_t)c->cache_bytes * g_n);
    float l1[64], l2[64];
    tmp_trainer t1, t2;
    CHECK(steps <= 32, "steps");
    int fisher = d->method == TMP_METHOD_FISHER;
    float lr = fisher ? 0.0f : 0.01f;
    for (int pass = 0; pass < 2; pass++) {
        tmp_trainer *t = pass == 0 ? &t1 : &t2;
        float *l = pass == 0 ? l1 : l2;
        int8_t *cache = pass == 0 ? cache1 : cache2;
        if (pass == 1 && dense_ws != NULL) {
            memset(dense_ws, 0xA5, wsz); /* the compact plan must not need the workspace */
        }
        CHECK(tmp_trainer_init(t, &g_m, pass == 0 ? d : c, pass == 0 ? a1 : a2, d->arena_bytes, lr, 7u) == TMP_OK,
            "trainer init");
        uint32_t k = 0;
        for (uint32_t s = 0; s < steps; s++) {
            uint32_t i = s % g_n;
            const int8_t *x = g_x + (size_t)i * g_in_bytes;
            tmp_status st;
            if (d->cache_bytes && !fisher && s < g_n) {
                st = tmp_trainer_step_fill(t, x, g_y[i], cache + (size_t)i * d->cache_bytes, &l[k++]);
            } else if (d->cache_bytes && !fisher) {
                st = tmp_trainer_step_cached(t, cache + (size_t)i * d->cache_bytes, g_y[i], &l[k++]);
            } else {
                st = tmp_trainer_step(t, x, g_y[i], &l[k++]);
            }
            CHECK(st == TMP_OK, "step %u: %d", (unsigned)s, (int)st);
            if (!fisher && s % 3 == 2) {
                CHECK(tmp_trainer_end_period(t) == TMP_OK, "end period");
            }
        }
    }
    CHECK(memcmp(l1, l2, sizeof(float) * steps) == 0, "losses differ");
    CHECK(memcmp(a1, a2, d->arena_bytes) == 0, "arenas differ");
    CHECK(tmp_trainer_high_water(&t1) == tmp_trainer_high_water(&t2), "high water");
    if (fisher) {
        for (int32_t i = 0; i < d->num_layers; i++) {
            int32_t n1 = 0, n2 = 0;
            float s1 = 0, s2 = 0;
            const float *f1 = tmp_trainer_fisher(&t1, i, &n1, &s1), *f2 = tmp_trainer_fisher(&t2, i, &n2, &s2);
            CHECK((f1 == NULL) == (f2 == NULL) && n1 == n2 && s1 == s2 &&
                (f1 == NULL || memcmp(f1, f2, 4u * (size_t)n1) == 0), "fisher of layer %d", (int)i);
        }
    }
    free(a1);
    free(a2);
    free(cache1);
    free(cache2);
    return 0;
}

/* Plan `o`, compact, and compare; with `support`, the selection pass first (and compared too). */
static int check(const char *name, tmp_train_options o, int support, uint32_t steps) {
    const size_t wsz = tmp_train_workspace_size(&g_m);
    uint8_t *ws = aligned(wsz), *tables = aligned(wsz), *fws = NULL, *ftables = NULL, *farena = NULL;
    tmp_train_error err;
    tmp_train_plan d, c, fd, fc;
    tmp_trainer fisher;
    if (support) {
        tmp_train_options fo = tmp_train_selection_options(&o);
        fws = aligned(wsz);
        ftables = aligned(wsz);
        CHECK(tmp_train_plan_make(&g_m, &fo, fws, wsz, &fd, &err) == TMP_OK, "%s: selection plan", name);
        fc = fd;
        CHECK(tmp_train_plan_compact(&fc, ftables, tmp_train_plan_compact_size(&fd)) == TMP_OK, "compact");
        /* (the dense selection plan stays in use below: its workspace is not poisoned) */
        if (compare_plans(&fd, &fc) || compare_training(&fd, &fc, NULL, 0, g_n)) {
            printf("  in %s (selection pass)\n", name);
            return 1;
        }
        /* the selection pass over every sample, on the dense plan (as the bindings run it) */
        farena = aligned(fd.arena_bytes);
        CHECK(tmp_trainer_init(&fisher, &g_m, &fd, farena, fd.arena_bytes, 0.0f, 1u) == TMP_OK, "fisher");
        for (uint32_t i = 0; i < g_n; i++) {
            float loss;
            CHECK(tmp_trainer_step(&fisher, g_x + (size_t)i * g_in_bytes, g_y[i], &loss) == TMP_OK, "fisher step");
        }
        o.fisher = &fisher;
    }
    tmp_status st = tmp_train_plan_make(&g_m, &o, ws, wsz, &d, &err);
    if (st != TMP_OK) {
        printf("%-28s skipped: %s\n", name, err.msg != NULL ? err.msg : "does not fit");
        return 0;
    }
    const size_t need = tmp_train_plan_compact_size(&d);
    CHECK(need > 0 && need <= wsz, "%s: compact size %lu of %lu", name, (unsigned long)need, (unsigned long)wsz);
    /* bad arguments leave the plan as it was */
    c = d;
    CHECK(tmp_train_plan_compact(&c, tables, need - 1) == TMP_ERR_SIZE && memcmp(&c, &d, sizeof c) == 0, "short");
    CHECK(tmp_train_plan_compact(&c, tables + 2, need) == TMP_ERR_ARG && memcmp(&c, &d, sizeof c) == 0, "align");
    CHECK(tmp_train_plan_compact(NULL, tables, need) == TMP_ERR_ARG, "null plan");
    CHECK(tmp_train_plan_compact(&c, NULL, need) == TMP_ERR_ARG, "null dst");
    CHECK(tmp_train_plan_compact(&c, tables, need) == TMP_OK, "compact");
    if (compare_plans(&d, &c)) {
        printf("  in %s\n", name);
        return 1;
    }
    /* compacting a compact plan again gives the same tables */
    uint8_t *again = aligned(need);
    tmp_train_plan c2 = c;
    CHECK(tmp_train_plan_compact_size(&c) == need && tmp_train_plan_compact(&c2, again, need) == TMP_OK &&
        memcmp(again, tables, need) == 0 && c2.table_bytes == need, "%s: compact twice", name);
    free(again);
    if (compare_training(&d, &c, ws, wsz, steps)) {
        printf("  in %s\n", name);
        return 1;
    }
    printf("%-28s ok: workspace %lu B, tables %lu B, arena %lu B, first %d\n", name, (unsigned long)wsz,
        (unsigned long)c.table_bytes, (unsigned long)c.arena_bytes, (int)c.first);
    free(ws);
    free(tables);
    free(fws);
    free(ftables);
    free(farena);
    return 0;
}

int main(int argc, char **argv) {
    uint8_t *data = NULL;
    uint32_t steps = 0;
    const int rc = load_model_args(argc, argv, &g_m, &data, &steps);
    if (rc >= 0) {
        return rc;
    }
    tmp_tensor in;
    tmp_model_input(&g_m, &in);
    g_in_bytes = (uint32_t)in.dims.h * in.dims.w * in.dims.c;
    g_n = 6;
    g_x = malloc((size_t)g_in_bytes * g_n);
    g_y = malloc(sizeof(int32_t) * g_n);
    uint32_t seed = 12345u;
    for (size_t j = 0; j < (size_t)g_in_bytes * g_n; j++) {
        g_x[j] = (int8_t)(lcg(&seed) & 0xFF);
    }
    for (uint32_t i = 0; i < g_n; i++) {
        g_y[i] = (int32_t)(i % g_m.num_classes);
    }
    /* sparse: the last two weighted layers, half their channels */
    uint16_t layers[2];
    float ratios[2] = { 0.5f, 1.0f };
    int32_t nl = 0;
    for (int32_t i = (int32_t)g_m.num_layers - 1; i >= 0 && nl < 2; i--) {
        tmp_layer l;
        if (tmp_model_layer_shape(&g_m, i, &l) == TMP_OK &&
            (l.type == TMP_LAYER_CONV || l.type == TMP_LAYER_PWCONV || l.type == TMP_LAYER_FC)) {
            layers[nl++] = (uint16_t)i;
        }
    }
    struct {
        const char *name;
        int32_t method, r;
        int support, fp32, cache, momentum, sparse;
    } cfg[] = {
        { "last", TMP_METHOD_LAST, 0, 0, 0, 0, 0, 0 },
        { "bias", TMP_METHOD_BIAS, 0, 0, 0, 0, 0, 0 },
        { "sparse", TMP_METHOD_SPARSE, 0, 0, 0, 0, 0, 1 },
        { "full", TMP_METHOD_FULL, 0, 0, 0, 0, 0, 0 },
        { "tinymp r=1", TMP_METHOD_TINYMP, 1, 0, 0, 0, 0, 0 },
        { "tinymp r=2 fp32 momentum", TMP_METHOD_TINYMP, 2, 0, 1, 0, 1, 0 },
        { "tinymp r=4 cache", TMP_METHOD_TINYMP, 4, 0, 0, 1, 0, 0 },
        { "tinymp r=4 support", TMP_METHOD_TINYMP, 4, 1, 0, 0, 0, 0 },
        { "tinytrain", TMP_METHOD_TINYTRAIN, 0, 1, 0, 0, 0, 0 },
    };
    for (size_t j = 0; j < sizeof cfg / sizeof cfg[0]; j++) {
        tmp_train_options o = tmp_train_options_default(cfg[j].method);
        o.r = cfg[j].r;
        o.storage = cfg[j].fp32 ? TMP_STORAGE_FP32 : TMP_STORAGE_INT8;
        o.momentum = cfg[j].momentum ? 0.9f : 0.0f;
        o.cache_samples = cfg[j].cache ? g_n : 0u;
        if (cfg[j].sparse) {
            o.n_layers = nl;
            o.layers = layers;
            o.ratios = ratios;
        }
        /* full backprop over a large model is slow under the sanitizers: plan checks only */
        uint32_t s = cfg[j].method == TMP_METHOD_FULL && g_in_bytes > 4096u ? 0u : steps;
        if (check(cfg[j].name, o, cfg[j].support, s)) {
            break;
        }
    }
    free(g_x);
    free(g_y);
    free(data);
    return g_fail;
}
