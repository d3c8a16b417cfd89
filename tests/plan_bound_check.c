/*
 * The planner's arena lower bound (arena_lower_bound() in tmp_train_plan.c), which lets it turn
 * down a table without placing it. tests/test_plan_bound.py builds this with the core under the
 * address and undefined-behaviour sanitizers; the planner's source is included here (not linked)
 * so its static functions can be called and TMP_PLAN_LIMIT switched at run time.
 *
 * 1. The bound is a bound: for random tables (layers, channel counts, biases, r, storage,
 *    momentum, the selection pass) and random subsets of the in-place choices evaluate() may
 *    keep, the bound never exceeds the placed arena, nor that table's peak of live bytes.
 * 2. It changes no plan: every method over a sweep of budgets (including ones that do not fit,
 *    the smallest one that does, and budgets equal to the arenas it places) gives the same
 *    status, error, and plan field for field with the bound as without it. The bound makes the
 *    planner skip placements; it must not change what it chooses.
 *
 * usage: plan_bound_check MODEL.tmpm TABLES   prints a summary line per part, exit 0 when every
 * check holds, 1 with "FAIL ..." otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tmp_place.h"

static int g_bound = 1;     /* 0: the planner places every table, as before the bound */
static long g_placements[2]; /* placements the planner made without [0] and with [1] the bound */
#define TMP_PLAN_LIMIT(budget) (g_bound ? (uint64_t)(budget) : 0u)

static uint64_t counted_place(tmp_buf *bufs, int32_t nbufs, uint16_t *order, uint16_t *placed) {
    g_placements[g_bound]++;
    return tmp_place(bufs, nbufs, order, placed);
}
#define tmp_place counted_place

#include "tmp_train_plan.c"

#include "check_common.h"

static tmp_model g_m;

static uint32_t lcg(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

/* ------------------------------------------------------------------ 1. the bound is a bound */

/* A random table on c's plan: some weighted layers trained (any k), some biases, r, the method's
 * buffers. Returns 0 when the table has no region. */
static int random_table(ctx_t *c, uint32_t *seed) {
    tmp_train_plan *p = c->p;
    const int32_t L = c->L;
    static const int32_t rs[] = { 1, 2, 4, 7 };
    p->r = rs[lcg(seed) % 4];
    p->method = lcg(seed) % 5 == 0 ? TMP_METHOD_FISHER : TMP_METHOD_TINYMP;
    p->storage = lcg(seed) % 3 == 0 ? TMP_STORAGE_FP32 : TMP_STORAGE_INT8;
    p->momentum = lcg(seed) % 3 == 0 ? 0.9f : 0.0f;
    memset(p->flags, 0, (size_t)L);
    memset(p->k, 0, 2u * (size_t)L);
    const int32_t start = (int32_t)(lcg(seed) % (uint32_t)L);
    p->first = start;
    if (p->method == TMP_METHOD_FISHER) {
        return 1;
    }
    tmp_layer l;
    int any = 0;
    for (int32_t i = start; i < L; i++) {
        if (tmp_model_layer_shape(c->m, i, &l) != TMP_OK || !is_weighted(l.type) || lcg(seed) % 3 != 0) {
            continue;
        }
        const uint32_t cin = layer_cin(c->m, &l);
        const uint32_t k = 1u + lcg(seed) % cin;
        p->flags[i] = TMP_TL_W | (lcg(seed) % 2 ? TMP_TL_B : 0);
        p->k[i] = (uint16_t)k;
        if (k < cin && lcg(seed) % 2) {
            p->flags[i] |= TMP_TL_APU;
        }
        any = 1;
    }
    return any;
}

static int check_bounds(uint32_t tables) {
    const size_t wsz = tmp_train_workspace_size(&g_m);
    uint8_t *ws = calloc(1, wsz + 8u);
    tmp_train_plan p;
    tmp_train_options o = tmp_train_options_default(TMP_METHOD_TINYMP);
    ctx_t c;
    memset(&c, 0, sizeof c);
    memset(&p, 0, sizeof p);
    CHECK(ws != NULL && carve(&c, &g_m, ws, &p), "workspace");
    c.o = &o;
    tmp_layer l;
    for (int32_t t = 0; t < c.T; t++) {
        c.last_use[t] = t - 1;
    }
    for (int32_t i = 0; i < c.L; i++) {
        CHECK(tmp_model_layer(&g_m, i, &l, NULL) == TMP_OK, "layer %d", (int)i);
        c.last_use[l.in0] = c.last_use[l.in0] < i ? i : c.last_use[l.in0];
        if (l.type == TMP_LAYER_ADD && c.last_use[l.in1] < i) {
            c.last_use[l.in1] = i;
        }
    }
    c.last_use[c.T - 1] = c.L - 1 > c.last_use[c.T - 1] ? c.L - 1 : c.last_use[c.T - 1];
    uint32_t seed = 2024u, n = 0, placements = 0;
    double tight = 0.0, loosest = 1.0;
    while (n < tables) {
        if (!random_table(&c, &seed)) {
            continue;
        }
        derive_region(&c);
        memset(p.in_place, 0, (size_t)c.L);
        if (build(&c) != TMP_OK) {
            continue; /* e.g. an fc on a spatial input inside a condensed region */
        }
        const uint64_t bound = arena_lower_bound(&c, UINT64_MAX);
        n++;
        /* several in-place subsets, the empty and the full one first */
        for (int v = 0; v < 6; v++) {
            for (int32_t i = 0; i < c.L; i++) {
                tmp_model_layer_shape(&g_m, i, &l);
                const uint8_t choice = in_place_choice(&c, &l, i);
                p.in_place[i] = v == 0 ? 0 : v == 1 ? choice : (lcg(&seed) % 2 ? choice : 0);
            }
            uint64_t a = 0;
            CHECK(place_once(&c, &a) == TMP_OK, "placement");
            CHECK(bound <= a, "table %u subset %d: bound %llu above the placed arena %llu", (unsigned)n, v,
                (unsigned long long)bound, (unsigned long long)a);
            placements++;
        }
        /* and the table evaluate() plans: the bound is at most its peak of live bytes */
        uint64_t a = 0;
        CHECK(evaluate(&c, &a, 0) == TMP_OK, "evaluate");
        CHECK(bound <= p.peak_live_bytes && p.peak_live_bytes <= a, "table %u: bound %llu, peak live %lu, arena %llu",
            (unsigned)n, (unsigned long long)bound, (unsigned long)p.peak_live_bytes, (unsigned long long)a);
        const double ratio = (double)bound / (double)a;
        tight += ratio;
        loosest = ratio < loosest ? ratio : loosest;
    }
    printf("bounds: %u tables, %u placements, bound/arena mean %.3f, lowest %.3f\n", (unsigned)n,
        (unsigned)placements, tight / n, loosest);
    free(ws);
    return 0;
}

/* ------------------------------------------------------------------ 2. the same plans */

static uint8_t *g_ws[2];
static size_t g_wsz;

static int same_plans(const char *what, const tmp_train_plan *a, const tmp_train_plan *b) {
    const int32_t L = a->num_layers, T = a->num_tensors, NB = TMP_LB_COUNT * L + 2 * T;
    CHECK(a->arena_bytes == b->arena_bytes && a->peak_live_bytes == b->peak_live_bytes &&
        a->peak_step == b->peak_step && a->first == b->first && a->num_channels == b->num_channels &&
        a->forward_macs == b->forward_macs && a->backward_macs == b->backward_macs &&
        a->step_macs == b->step_macs && a->cache_bytes == b->cache_bytes &&
        a->cache_samples == b->cache_samples && a->cache_offset == b->cache_offset && a->r == b->r &&
        a->ratio == b->ratio && a->method == b->method, "%s: scalars (arena %lu / %lu, first %d / %d)", what,
        (unsigned long)a->arena_bytes, (unsigned long)b->arena_bytes, (int)a->first, (int)b->first);
    CHECK(memcmp(a->breakdown, b->breakdown, sizeof a->breakdown) == 0 &&
        memcmp(a->category_peak, b->category_peak, sizeof a->category_peak) == 0, "%s: breakdown", what);
    CHECK(memcmp(a->flags, b->flags, (size_t)L) == 0 && memcmp(a->in_place, b->in_place, (size_t)L) == 0 &&
        memcmp(a->k, b->k, 2u * (size_t)L) == 0 && memcmp(a->fwd_macs, b->fwd_macs, 4u * (size_t)L) == 0 &&
        memcmp(a->bwd_macs, b->bwd_macs, 4u * (size_t)L) == 0 &&
        memcmp(a->score, b->score, 4u * (size_t)L) == 0, "%s: layer arrays", what);
    CHECK(memcmp(a->act_offset, b->act_offset, 4u * (size_t)T) == 0 &&
        memcmp(a->grad_birth, b->grad_birth, 4u * (size_t)T) == 0 && memcmp(a->cache_t, b->cache_t, (size_t)T) == 0,
        "%s: tensor arrays", what);
    for (int32_t j = 0; j < NB; j++) {
        const tmp_buf *x = &a->bufs[j], *y = &b->bufs[j];
        CHECK(x->size == y->size && (x->size == 0 || (x->offset == y->offset && x->first == y->first &&
            x->last == y->last)), "%s: buffer %d", what, (int)j);
    }
    for (int32_t i = 0; i < L; i++) {
        if (a->flags[i] & TMP_TL_W) {
            CHECK(memcmp(a->channels + a->chan_off[i], b->channels + b->chan_off[i], 2u * a->k[i]) == 0,
                "%s: channels of layer %d", what, (int)i);
        }
    }
    return 0;
}

/* Plan o with and without the bound; same status, error and plan. *st = the status, *min_budget
 * the error's smallest budget, *arena the plan's arena. */
static int same_both_ways(const char *name, const tmp_train_options *o, tmp_status *st, uint32_t *min_budget,
    uint32_t *arena) {
    tmp_train_plan p[2];
    tmp_train_error e[2];
    tmp_status s[2];
    for (int w = 0; w < 2; w++) {
        g_bound = w;
        memset(g_ws[w], 0x5A, g_wsz);
        memset(&e[w], 0, sizeof e[w]);
        s[w] = tmp_train_plan_make(&g_m, o, g_ws[w], g_wsz, &p[w], &e[w]);
    }
    char what[96];
    snprintf(what, sizeof what, "%s at budget %lu", name, (unsigned long)o->budget);
    CHECK(s[0] == s[1], "%s: status %d without the bound, %d with", what, (int)s[0], (int)s[1]);
    CHECK(e[0].msg == e[1].msg && e[0].min_budget == e[1].min_budget && e[0].largest_cat == e[1].largest_cat &&
        e[0].largest_bytes == e[1].largest_bytes && e[0].layer == e[1].layer, "%s: error", what);
    if (s[0] == TMP_OK || s[0] == TMP_ERR_SIZE) { /* a failed fit describes its smallest table too */
        if (same_plans(what, &p[0], &p[1])) {
            return 1;
        }
    }
    *st = s[0];
    *min_budget = e[0].min_budget;
    *arena = p[0].arena_bytes;
    return 0;
}

static int check_plans(void) {
    g_wsz = tmp_train_workspace_size(&g_m);
    g_ws[0] = calloc(1, g_wsz + 8u);
    g_ws[1] = calloc(1, g_wsz + 8u);
    CHECK(g_ws[0] != NULL && g_ws[1] != NULL, "workspaces");
    /* the selection pass's Fisher sums, over a few random samples, for tinytrain and support */
    tmp_tensor in;
    tmp_model_input(&g_m, &in);
    const uint32_t in_bytes = (uint32_t)in.dims.h * in.dims.w * in.dims.c, ns = 3;
    int8_t *x = malloc(in_bytes);
    uint8_t *fws = calloc(1, g_wsz + 8u);
    tmp_train_options so = tmp_train_selection_options(&(tmp_train_options){ .r = 4 });
    tmp_train_plan fp;
    tmp_train_error fe;
    CHECK(x != NULL && fws != NULL && tmp_train_plan_make(&g_m, &so, fws, g_wsz, &fp, &fe) == TMP_OK, "selection");
    uint8_t *farena = calloc(1, fp.arena_bytes + 8u);
    tmp_trainer fisher;
    CHECK(farena != NULL && tmp_trainer_init(&fisher, &g_m, &fp, farena, fp.arena_bytes, 0.0f, 1u) == TMP_OK, "init");
    uint32_t seed = 77u;
    for (uint32_t i = 0; i < ns; i++) {
        for (uint32_t j = 0; j < in_bytes; j++) {
            x[j] = (int8_t)(lcg(&seed) & 0xFF);
        }
        float loss;
        CHECK(tmp_trainer_step(&fisher, x, (int32_t)(i % g_m.num_classes), &loss) == TMP_OK, "fisher step");
    }
    /* sparse: the last two weighted layers, half their channels */
    uint16_t layers[2];
    float ratios[2] = { 0.5f, 1.0f };
    int32_t nl = 0;
    tmp_layer l;
    for (int32_t i = (int32_t)g_m.num_layers - 1; i >= 0 && nl < 2; i--) {
        if (tmp_model_layer_shape(&g_m, i, &l) == TMP_OK && l.type != TMP_LAYER_DWCONV && is_weighted(l.type)) {
            layers[nl++] = (uint16_t)i;
        }
    }
    struct {
        const char *name;
        int32_t method, r;
        int support, fisher_pass, fp32, momentum, cache;
        float ratio, share;
    } cfg[] = {
        { "tinymp", TMP_METHOD_TINYMP, 0, 0, 0, 0, 0, 0, 0.0f, -1.0f },
        { "tinymp r=1 no limit", TMP_METHOD_TINYMP, 1, 0, 0, 0, 0, 0, 0.0f, 0.0f },
        { "tinymp r=2 fp32 momentum", TMP_METHOD_TINYMP, 2, 0, 0, 1, 1, 0, 0.5f, -1.0f },
        { "tinymp cache=8", TMP_METHOD_TINYMP, 4, 0, 0, 0, 0, 8, 0.0f, -1.0f },
        { "tinymp support", TMP_METHOD_TINYMP, 4, 1, 0, 0, 0, 0, 0.0f, -1.0f },
        { "tinytrain", TMP_METHOD_TINYTRAIN, 0, 1, 0, 0, 0, 0, 0.0f, -1.0f },
        { "selection pass", TMP_METHOD_FISHER, 4, 0, 1, 0, 0, 0, 0.0f, -1.0f },
        { "sparse", TMP_METHOD_SPARSE, 0, 0, 0, 0, 0, 0, 0.0f, -1.0f },
        { "bias", TMP_METHOD_BIAS, 0, 0, 0, 0, 0, 0, 0.0f, -1.0f },
        { "last", TMP_METHOD_LAST, 0, 0, 0, 0, 0, 0, 0.0f, -1.0f },
    };
    long plans = 0, fitted = 0;
    g_placements[0] = g_placements[1] = 0; /* the selection pass's own plan is not counted */
    for (size_t j = 0; j < sizeof cfg / sizeof cfg[0]; j++) {
        tmp_train_options o = tmp_train_options_default(cfg[j].method);
        if (cfg[j].fisher_pass) {
            o = tmp_train_selection_options(&(tmp_train_options){ .r = cfg[j].r });
        } else {
            o.r = cfg[j].r != 0 ? cfg[j].r : o.r;
        }
        o.storage = cfg[j].fp32 ? TMP_STORAGE_FP32 : o.storage;
        o.momentum = cfg[j].momentum ? 0.9f : o.momentum;
        o.cache_samples = (uint32_t)cfg[j].cache;
        o.ratio = cfg[j].ratio > 0.0f ? cfg[j].ratio : o.ratio;
        o.step_share = cfg[j].share >= 0.0f ? cfg[j].share : o.step_share;
        o.fisher = cfg[j].support ? &fisher : NULL;
        if (cfg[j].method == TMP_METHOD_SPARSE) {
            o.n_layers = nl;
            o.layers = layers;
            o.ratios = ratios;
        }
        /* the smallest budget (a budget of 1 byte reports it), either side of it, then a sweep */
        tmp_status st;
        uint32_t least = 0, ignored, arena = 0;
        o.budget = 1;
        if (same_both_ways(cfg[j].name, &o, &st, &least, &arena)) {
            return 1;
        }
        plans++;
        CHECK(st == TMP_ERR_SIZE && least > 1, "%s: no smallest budget", cfg[j].name);
        const uint32_t edge[] = { least - 1, least, least + 1 };
        for (size_t e = 0; e < 3; e++) {
            o.budget = edge[e];
            if (same_both_ways(cfg[j].name, &o, &st, &ignored, &arena)) {
                return 1;
            }
            plans++;
            fitted += st == TMP_OK;
        }
        for (uint32_t b = least / 2 + 4u; b < 8u * least; b += b / 3u + 4u) {
            o.budget = b & ~3u;
            if (same_both_ways(cfg[j].name, &o, &st, &ignored, &arena)) {
                return 1;
            }
            plans++;
            fitted += st == TMP_OK;
            /* a budget equal to an arena the planner placed: a table that fits exactly */
            if (st == TMP_OK && arena != o.budget) {
                o.budget = arena;
                if (same_both_ways(cfg[j].name, &o, &st, &ignored, &arena)) {
                    return 1;
                }
                plans++;
                fitted += st == TMP_OK;
            }
        }
        o.budget = 0;
        if (same_both_ways(cfg[j].name, &o, &st, &ignored, &arena)) {
            return 1;
        }
        plans++;
    }
    printf("plans: %ld planned both ways (%ld fit their budget), all the same; placements %ld without the bound, "
        "%ld with it\n", plans, fitted, g_placements[0], g_placements[1]);
    free(x);
    free(fws);
    free(farena);
    free(g_ws[0]);
    free(g_ws[1]);
    return 0;
}

int main(int argc, char **argv) {
    uint8_t *data = NULL;
    uint32_t tables = 0;
    const int rc = load_model_args(argc, argv, &g_m, &data, &tables);
    if (rc >= 0) {
        return rc;
    }
    if (check_bounds(tables) == 0) {
        check_plans();
    }
    free(data);
    return g_fail;
}
