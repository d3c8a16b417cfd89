/*
 * The contract of tmp_trainer_fit's caller-side cache (tmp_fit_io), checked on the engine itself
 * (tests/test_fit_io.py builds this with the whole core under the address and undefined-behaviour
 * sanitizers). The bindings reach only some of these cases, because they clear the callbacks when
 * they have no room; a C caller of the core reaches all of them.
 *
 * A tinymp plan whose arena caches the features of 2 samples trains N_SAMPLES samples for EPOCHS
 * epochs. The reference is the same fit without any cache (TMP_FIT_NO_CACHE). Against it, fits
 * with the callbacks set and cache_end = 0, a few samples, all samples, and with a store that
 * fails part way must give the same losses and the same trained logits on every sample, and the
 * callbacks may touch only samples cache_samples <= i < cache_end: store each of them once in
 * the first epoch (until a store fails), load them in later epochs, never anything else.
 *
 * Callbacks that call the trainer they run in (a binding's user code does that): between steps
 * (progress, a sample) a call that only reads it (forward, save) works and a call that changes it
 * (a step, fit, a period end, reset, load) is refused with TMP_ERR_BUSY; inside a step (the cache
 * callbacks) or an APU probe (its samples) every call is refused. The run ends as the same run
 * without those calls does, and the trainer is usable after it.
 *
 * usage: fit_io_check MODEL.tmpm EPOCHS   prints one line per case, exit 0 when all hold,
 * 1 with "FAIL ..." otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tmp_model.h"
#include "tmp_train.h"

#include "check_common.h"

#define N_SAMPLES 8u
#define MAX_EPOCHS 4u

static tmp_model g_m;
static int8_t *g_x;
static int32_t g_y[N_SAMPLES];
static uint32_t g_in_bytes;

typedef struct {
    int8_t *cache;           /* N_SAMPLES entries of cache_bytes */
    uint32_t cache_bytes;
    uint32_t stores[N_SAMPLES], loads[N_SAMPLES]; /* whole entries, counted at offset 0 */
    uint32_t bad;            /* a callback touched bytes outside an entry */
    int fail_after;          /* stores of entries that succeed before one fails; -1: never */
    float losses[N_SAMPLES * MAX_EPOCHS];
    uint32_t n_losses;
    uint32_t probe;          /* tmp_fit_io.probe of the run */
    int pokes;               /* the callbacks call the trainer (the re-entry case) */
    tmp_trainer *poke;       /* that trainer, while its fit runs */
    uint32_t calls[4];       /* callbacks called: sample, store, load, progress */
    uint32_t read_ok, read_busy, change_ok, change_busy; /* what the calls on the trainer returned */
} io_ctx;

static uint8_t g_blob[1u << 16];
static tmp_params_reader g_reader; /* a copying load begun before the fit (the re-entry case) */

static const int8_t *sample(void *ctx, uint32_t i, int32_t *label);

/* Callback `which` (an index of calls[]) runs: with c->poke, it calls the trainer, three calls
 * that only read it and eleven that would change it, and counts what they return. */
static void poke(io_ctx *c, int which) {
    if (c == NULL) {
        return;
    }
    c->calls[which]++;
    tmp_trainer *t = c->poke;
    if (t == NULL) {
        return;
    }
    const int8_t *out = NULL;
    const uint32_t size = tmp_trainer_params_size(t);
    const tmp_status reads[3] = {
        tmp_trainer_forward(t, g_x, &out),
        size <= sizeof g_blob ? tmp_trainer_params_save(t, g_blob, size) : TMP_ERR_SIZE,
        tmp_trainer_check_state(t),
    };
    for (int j = 0; j < 3; j++) {
        c->read_ok += reads[j] == TMP_OK;
        c->read_busy += reads[j] == TMP_ERR_BUSY;
    }
    int8_t cache[1u << 12];
    tmp_params_reader r;
    tmp_fit_stats st;
    tmp_fit_io io = { sample, NULL, NULL, NULL, NULL, 0, 0 }; /* a whole io: only the guard refuses */
    const char *msg = NULL;
    const tmp_status ch[11] = {
        tmp_trainer_step(t, g_x, g_y[0], NULL),
        t->p->cache_bytes <= sizeof cache ? tmp_trainer_step_fill(t, g_x, g_y[0], cache, NULL) : TMP_ERR_BUSY,
        t->p->cache_bytes <= sizeof cache ? tmp_trainer_step_cached(t, cache, g_y[0], NULL) : TMP_ERR_BUSY,
        tmp_trainer_end_period(t),
        tmp_trainer_end_period_probe(t, &io, 1u, 1u),
        tmp_trainer_reset(t),
        size <= sizeof g_blob ? tmp_trainer_params_load(t, g_blob, size, &msg, NULL) : TMP_ERR_BUSY,
        tmp_trainer_params_begin(t, &r, 1),
        tmp_trainer_fit(t, 1u, 2u, 0u, &io, &st),
        tmp_trainer_params_feed(t, &g_reader, g_blob, 1u),
        tmp_trainer_params_end(t, &g_reader, &msg),
    };
    for (int j = 0; j < 11; j++) {
        c->change_ok += ch[j] == TMP_OK;
        c->change_busy += ch[j] == TMP_ERR_BUSY;
    }
}

static const int8_t *sample(void *ctx, uint32_t i, int32_t *label) {
    poke((io_ctx *)ctx, 0);
    if (i >= N_SAMPLES) {
        return NULL;
    }
    *label = g_y[i];
    return g_x + (size_t)i * g_in_bytes;
}

static int store(void *ctx, uint32_t i, uint32_t off, const int8_t *src, uint32_t n) {
    io_ctx *c = (io_ctx *)ctx;
    poke(c, 1);
    if (i >= N_SAMPLES || off + n > c->cache_bytes || off + n < off) {
        c->bad++;
        return 1;
    }
    if (off == 0) {
        if (c->fail_after == 0) {
            return 1;
        }
        if (c->fail_after > 0) {
            c->fail_after--;
        }
        c->stores[i]++;
    }
    memcpy(c->cache + (size_t)i * c->cache_bytes + off, src, n);
    return 0;
}

static int load(void *ctx, uint32_t i, uint32_t off, int8_t *dst, uint32_t n) {
    io_ctx *c = (io_ctx *)ctx;
    poke(c, 2);
    if (i >= N_SAMPLES || off + n > c->cache_bytes || off + n < off) {
        c->bad++;
        return 1;
    }
    if (off == 0) {
        c->loads[i]++;
    }
    memcpy(dst, c->cache + (size_t)i * c->cache_bytes + off, n);
    return 0;
}

static int progress(void *ctx, uint32_t epoch, uint32_t done, float loss, int correct) {
    io_ctx *c = (io_ctx *)ctx;
    (void)epoch;
    (void)done;
    (void)correct;
    poke(c, 3);
    if (c->n_losses < N_SAMPLES * MAX_EPOCHS) {
        c->losses[c->n_losses++] = loss;
    }
    return 0;
}

/* One fit on a fresh trainer; the trained logits of every sample into logits (N_SAMPLES x C). */
static int run(const tmp_train_plan *p, uint32_t epochs, uint32_t flags, int callbacks, uint32_t cache_end,
    io_ctx *c, tmp_fit_stats *st, int8_t *logits) {
    uint8_t *arena = calloc(1, p->arena_bytes + 8u);
    CHECK(arena != NULL, "arena");
    static tmp_trainer t; /* a poking callback's calls see it */
    CHECK(tmp_trainer_init(&t, &g_m, p, arena, p->arena_bytes, 0.02f, 7u) == TMP_OK, "trainer init");
    tmp_fit_io io = { sample, callbacks ? store : NULL, callbacks ? load : NULL, progress, c, cache_end, c->probe };
    c->poke = c->pokes ? &t : NULL;
    CHECK(tmp_trainer_params_begin(&t, &g_reader, 1) == TMP_OK, "a load begun before the fit");
    CHECK(tmp_trainer_fit(&t, N_SAMPLES, epochs, flags, &io, st) == TMP_OK, "fit");
    c->poke = NULL;
    const uint32_t nc = (uint32_t)g_m.num_classes;
    for (uint32_t i = 0; i < N_SAMPLES; i++) {
        const int8_t *out = NULL;
        CHECK(tmp_trainer_forward(&t, g_x + (size_t)i * g_in_bytes, &out) == TMP_OK, "forward");
        memcpy(logits + (size_t)i * nc, out, nc);
    }
    CHECK(tmp_trainer_step(&t, g_x, g_y[0], NULL) == TMP_OK, "a step after the fit");
    free(arena);
    return 0;
}

int main(int argc, char **argv) {
    uint8_t *data = NULL;
    uint32_t epochs = 0;
    const int rc = load_model_args(argc, argv, &g_m, &data, &epochs);
    if (rc >= 0) {
        return rc;
    }
    if (epochs < 2 || epochs > MAX_EPOCHS) {
        printf("FAIL: EPOCHS must be 2..%u\n", MAX_EPOCHS);
        return 2;
    }
    tmp_tensor in;
    tmp_model_input(&g_m, &in);
    g_in_bytes = (uint32_t)in.dims.h * in.dims.w * in.dims.c;
    g_x = malloc((size_t)g_in_bytes * N_SAMPLES);
    uint32_t seed = 2024u;
    for (size_t j = 0; j < (size_t)g_in_bytes * N_SAMPLES; j++) {
        seed = seed * 1664525u + 1013904223u;
        g_x[j] = (int8_t)((seed >> 8) & 0xFF);
    }
    for (uint32_t i = 0; i < N_SAMPLES; i++) {
        g_y[i] = (int32_t)(i % (uint32_t)g_m.num_classes);
    }

    const size_t wsz = tmp_train_workspace_size(&g_m);
    uint8_t *ws = calloc(1, wsz + 8u);
    tmp_train_options o = tmp_train_options_default(TMP_METHOD_TINYMP);
    o.cache_samples = 2u;
    tmp_train_plan p;
    tmp_train_error err;
    if (tmp_train_plan_make(&g_m, &o, ws, wsz, &p, &err) != TMP_OK || p.cache_bytes == 0 || p.cache_samples != 2u) {
        printf("FAIL: no plan with a feature cache of 2 samples\n");
        return 1;
    }
    const uint32_t nc = (uint32_t)g_m.num_classes, k = p.cache_samples;
    int8_t *ref_logits = malloc((size_t)N_SAMPLES * nc), *logits = malloc((size_t)N_SAMPLES * nc);
    io_ctx ref, c;
    memset(&ref, 0, sizeof ref);
    ref.fail_after = -1;
    tmp_fit_stats rst, st;
    if (run(&p, epochs, TMP_FIT_NO_CACHE, 0, 0, &ref, &rst, ref_logits)) {
        return 1;
    }
    if (rst.cached_steps != 0 || rst.steps != N_SAMPLES * epochs || ref.n_losses != rst.steps) {
        printf("FAIL: the reference fit ran %u steps, %u cached\n", (unsigned)rst.steps, (unsigned)rst.cached_steps);
        return 1;
    }

    /* cache_end, stores that fail after this many entries (-1: never), what must be cached */
    const struct {
        const char *name;
        int callbacks;
        uint32_t cache_end;
        int fail_after;
    } cases[] = {
        { "arena only (no callbacks)", 0, 0, -1 },
        { "callbacks, cache_end 0", 1, 0, -1 },
        { "callbacks, cache_end 5", 1, 5, -1 },
        { "callbacks, cache_end n", 1, N_SAMPLES, -1 },
        { "callbacks, cache_end past n", 1, 1000u, -1 },
        { "callbacks, third store fails", 1, N_SAMPLES, 2 },
    };
    for (size_t j = 0; j < sizeof cases / sizeof cases[0] && !g_fail; j++) {
        memset(&c, 0, sizeof c);
        c.cache_bytes = p.cache_bytes;
        c.cache = calloc(N_SAMPLES, p.cache_bytes);
        c.fail_after = cases[j].fail_after;
        if (run(&p, epochs, 0u, cases[j].callbacks, cases[j].cache_end, &c, &st, logits)) {
            break;
        }
        const uint32_t end = cases[j].callbacks ? (cases[j].cache_end < N_SAMPLES ? cases[j].cache_end : N_SAMPLES) : 0u;
        const uint32_t held = end > k ? end - k : 0u; /* samples the caller's cache may hold */
        const uint32_t stored = cases[j].fail_after >= 0 && (uint32_t)cases[j].fail_after < held
            ? (uint32_t)cases[j].fail_after : held;
        uint32_t touched_outside = 0, stores = 0, loads = 0;
        for (uint32_t i = 0; i < N_SAMPLES; i++) {
            if ((c.stores[i] || c.loads[i]) && (i < k || i >= end)) {
                touched_outside++;
            }
            stores += c.stores[i];
            loads += c.loads[i];
        }
        /* after a failed store the caller's cache is left for the rest of the run */
        const uint32_t want_loads = cases[j].fail_after >= 0 && stored < held ? 0u : stored * (epochs - 1u);
        CHECK(c.bad == 0 && touched_outside == 0, "%s: the callbacks touched samples outside [%u, %u)",
            cases[j].name, (unsigned)k, (unsigned)end);
        CHECK(stores == stored && loads == want_loads, "%s: %u stores, %u loads (want %u, %u)", cases[j].name,
            (unsigned)stores, (unsigned)loads, (unsigned)stored, (unsigned)want_loads);
        CHECK(st.in_arena == k && st.cached_steps == k * (epochs - 1u) + want_loads, "%s: %u in the arena, %u cached steps",
            cases[j].name, (unsigned)st.in_arena, (unsigned)st.cached_steps);
        CHECK(c.n_losses == ref.n_losses && memcmp(c.losses, ref.losses, sizeof(float) * ref.n_losses) == 0,
            "%s: the losses differ from the fit without a cache", cases[j].name);
        CHECK(memcmp(logits, ref_logits, (size_t)N_SAMPLES * nc) == 0,
            "%s: the trained logits differ from the fit without a cache", cases[j].name);
        printf("%-32s ok: %u stores, %u loads, %u cached steps, outside %u\n", cases[j].name, (unsigned)stores,
            (unsigned)loads, (unsigned)st.cached_steps, (unsigned)st.outside);
        free(c.cache);
    }

    /* re-entry: every callback calls the trainer; with and without APU's probe (whose samples
     * are fetched inside it: twice per probed sample, once checked, once used) */
    for (uint32_t probe = 0; probe <= 2u && !g_fail; probe += 2u) {
        io_ctx pref;
        memset(&pref, 0, sizeof pref);
        pref.fail_after = -1;
        pref.probe = probe;
        int8_t *want = ref_logits;
        const io_ctx *wantc = &ref;
        if (probe != 0) {
            want = malloc((size_t)N_SAMPLES * nc);
            if (run(&p, epochs, TMP_FIT_NO_CACHE, 0, 0, &pref, &rst, want)) {
                break;
            }
            wantc = &pref;
        }
        memset(&c, 0, sizeof c);
        c.cache_bytes = p.cache_bytes;
        c.cache = calloc(N_SAMPLES, p.cache_bytes);
        c.fail_after = -1;
        c.probe = probe;
        c.pokes = 1;
        if (run(&p, epochs, 0u, 1, N_SAMPLES, &c, &st, logits)) {
            break;
        }
        const uint32_t steps = N_SAMPLES * epochs, probed = epochs * 2u * probe;
        const uint32_t all = c.calls[0] + c.calls[1] + c.calls[2] + c.calls[3];
        CHECK(c.calls[0] == steps + probed && c.calls[3] == steps && c.calls[1] != 0 && c.calls[2] != 0,
            "re-entry, probe %u: %u sample, %u store, %u load, %u progress calls", (unsigned)probe,
            (unsigned)c.calls[0], (unsigned)c.calls[1], (unsigned)c.calls[2], (unsigned)c.calls[3]);
        /* between steps (progress, fit's own samples) the reads work; in a step or probe not */
        CHECK(c.read_ok == 3u * (steps + c.calls[3]) && c.read_busy == 3u * (c.calls[1] + c.calls[2] + probed),
            "re-entry, probe %u: reads %u worked, %u refused", (unsigned)probe, (unsigned)c.read_ok,
            (unsigned)c.read_busy);
        CHECK(c.change_ok == 0 && c.change_busy == 11u * all, "re-entry, probe %u: changes %u worked, %u refused of %u",
            (unsigned)probe, (unsigned)c.change_ok, (unsigned)c.change_busy, (unsigned)(11u * all));
        CHECK(c.n_losses == wantc->n_losses && memcmp(c.losses, wantc->losses, sizeof(float) * wantc->n_losses) == 0 &&
            memcmp(logits, want, (size_t)N_SAMPLES * nc) == 0,
            "re-entry, probe %u: the run differs from the same run without the calls", (unsigned)probe);
        printf("%-32s ok: probe %u, %u calls in callbacks, %u refused\n", "callbacks call the trainer",
            (unsigned)probe, (unsigned)(14u * all), (unsigned)(c.read_busy + c.change_busy));
        free(c.cache);
        if (want != ref_logits) {
            free(want);
        }
    }
    free(ref_logits);
    free(logits);
    free(ws);
    free(g_x);
    free(data);
    return g_fail;
}
