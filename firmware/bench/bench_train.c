/*
 * Bare-metal training bench (QEMU mps2-an500, -icount shift=0): one method on one model per run.
 *
 * Reads a .tmpm model and a sample file over semihosting and counts the instructions of: the
 * plan (tmp_train_plan_make, as a board's plan() runs it; with support samples also the selection
 * pass's plan), inference (the trainer's forward pass, nothing saved), training steps with
 * their phases (forward, backward, update), steps that fill and use the frozen-prefix feature
 * cache, the selection pass (tinytrain), APU period ends, and optionally a whole personalisation
 * run (tmp_trainer_fit). Prints one JSON object (the line starting with {"bench":) that
 * tinymp.bench (host/tinymp/bench.py) reads. Arguments (key=value on the semihosting command line,
 * or `@FILE` naming a file that holds them, since semihosting command lines are short):
 *
 *   model=PATH samples=PATH method=NAME [r=N] [ratio=F] [n_bias=N] [budget=BYTES]
 *   [layers=I,J,..] [ratios=F,G,..] [support=N] [storage=int8|fp32] [momentum=F] [macs=N]
 *   [steps=N] [cached=N] [run_samples=N] [run_epochs=N] [lr=F] [seed=N] [logits=N]
 *
 * (momentum and macs are the plan options of the same names: SGD momentum and the backward MAC
 * budget; the session's `tinymp report --m7` passes every plan option the board was given.)
 *
 * The sample file holds records of 1 label byte + H*W*C int8 input bytes.
 *
 * Phases are read from CMSDK timer 0 through the trainer's clock hook: 40 instructions per tick,
 * so each phase figure is within +-40 instructions per boundary (the step totals come from the
 * edge-synchronised harness, +-2). Everything is emulated instruction counts, not M7 cycles.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "tmp_model.h"
#include "tmp_train.h"

#define TIMER0_VALUE (*(volatile uint32_t *)0x40000004u)
#define INSNS_PER_TICK 40u
#define MAX_LIST 64
#define GUARD 64u

typedef struct {
    const char *model, *samples, *method, *storage;
    int32_t r, n_bias, n_layers, n_ratios;
    float ratio, lr, momentum;
    uint64_t macs;
    uint32_t budget, support, steps, cached, run_samples, run_epochs, seed, logits;
    uint16_t layers[MAX_LIST];
    float ratios[MAX_LIST];
} args_t;

static tmp_model g_model;
static tmp_trainer g_t;
static const uint8_t *g_samples;
static uint32_t g_n_samples, g_in_bytes;
static int8_t *g_cache;
static tmp_status g_status;
static float g_loss;

/* Big buffers (model, samples, arenas, caches) come from the 16 MiB PSRAM at 0x60000000 with a
 * bump allocator: newlib's heap lives after .bss in the 4 MiB SSRAM, too small for 100 samples of a
 * 128x128 model. The top 512 KiB stay for the stack (startup.S puts it at the top of PSRAM). */
#define PSRAM_BASE 0x60000000u
#define PSRAM_LIMIT (0x61000000u - 0x80000u)
static uintptr_t g_psram = PSRAM_BASE;

static void *big_alloc(size_t n) {
    uintptr_t p = (g_psram + 7u) & ~(uintptr_t)7u;
    if (n > PSRAM_LIMIT - p) {
        printf("error: out of emulated memory (%lu bytes wanted)\n", (unsigned long)n);
        return NULL;
    }
    g_psram = p + n;
    return (void *)p;
}

static uint32_t clock_ticks(void *ctx) {
    (void)ctx;
    return 0xFFFFFFFFu - TIMER0_VALUE;
}

static const int8_t *sample(uint32_t i, int32_t *label) {
    const uint8_t *rec = g_samples + (size_t)(i % g_n_samples) * (1u + g_in_bytes);
    *label = rec[0];
    return (const int8_t *)(rec + 1);
}

static void *read_file(const char *path, uint32_t *size) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        printf("error: cannot open %s\n", path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = n > 0 ? (uint8_t *)big_alloc((size_t)n + 8u) : NULL;
    if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        printf("error: cannot read %s (%ld bytes)\n", path, n);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *size = (uint32_t)n;
    return buf;
}

static int parse_list(const char *s, int floats, args_t *a) {
    int n = 0;
    while (*s && n < MAX_LIST) {
        char *end;
        if (floats) {
            a->ratios[n] = strtof(s, &end);
        } else {
            a->layers[n] = (uint16_t)strtoul(s, &end, 10);
        }
        if (end == s) {
            return -1;
        }
        n++;
        s = *end == ',' ? end + 1 : end;
    }
    if (floats) {
        a->n_ratios = n;
    } else {
        a->n_layers = n;
    }
    return 0;
}

/* Arguments from a file (semihosting command lines are short): whitespace-separated tokens. */
static char g_argbuf[4096];
static char *g_argv[96];

static int args_from_file(const char *path, int *argc, char ***argv) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        printf("error: cannot open the argument file %s\n", path);
        return -1;
    }
    size_t n = fread(g_argbuf, 1, sizeof g_argbuf - 1, f);
    fclose(f);
    g_argbuf[n] = 0;
    int c = 1;
    g_argv[0] = "bench_train";
    char *p = g_argbuf;
    while (*p && c < (int)(sizeof g_argv / sizeof g_argv[0])) {
        while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') {
            *p++ = 0;
        }
        if (*p == 0) {
            break;
        }
        g_argv[c++] = p;
        while (*p && *p != ' ' && *p != '\n' && *p != '\t' && *p != '\r') {
            p++;
        }
    }
    *argc = c;
    *argv = g_argv;
    return 0;
}

static int parse_args(int argc, char **argv, args_t *a) {
    memset(a, 0, sizeof *a);
    a->method = "tinymp";
    a->storage = "int8";
    a->n_bias = -2;
    a->lr = 0.002f;
    a->seed = 1;
    a->steps = 3;
    a->cached = 2;
    a->logits = 4;
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (eq == NULL) {
            printf("error: argument '%s' is not key=value\n", argv[i]);
            return -1;
        }
        *eq = 0;
        const char *k = argv[i], *v = eq + 1;
        if (!strcmp(k, "model")) a->model = v;
        else if (!strcmp(k, "samples")) a->samples = v;
        else if (!strcmp(k, "method")) a->method = v;
        else if (!strcmp(k, "storage")) a->storage = v;
        else if (!strcmp(k, "r")) a->r = atoi(v);
        else if (!strcmp(k, "n_bias")) a->n_bias = atoi(v);
        else if (!strcmp(k, "ratio")) a->ratio = strtof(v, NULL);
        else if (!strcmp(k, "lr")) a->lr = strtof(v, NULL);
        else if (!strcmp(k, "momentum")) a->momentum = strtof(v, NULL);
        else if (!strcmp(k, "macs")) a->macs = strtoull(v, NULL, 10);
        else if (!strcmp(k, "budget")) a->budget = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(k, "support")) a->support = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(k, "steps")) a->steps = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(k, "cached")) a->cached = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(k, "run_samples")) a->run_samples = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(k, "run_epochs")) a->run_epochs = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(k, "seed")) a->seed = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(k, "logits")) a->logits = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(k, "layers")) {
            if (parse_list(v, 0, a) < 0) return -1;
        } else if (!strcmp(k, "ratios")) {
            if (parse_list(v, 1, a) < 0) return -1;
        } else {
            printf("error: unknown argument '%s'\n", k);
            return -1;
        }
    }
    if (a->model == NULL || a->samples == NULL) {
        printf("error: model=PATH and samples=PATH are required\n");
        return -1;
    }
    return 0;
}

/* ---- the counted calls */

static void run_forward(const void *arg) {
    const int8_t *out;
    int32_t label;
    g_status = tmp_trainer_forward(&g_t, sample(*(const uint32_t *)arg, &label), &out);
}

static void run_step(const void *arg) {
    int32_t label;
    const int8_t *x = sample(*(const uint32_t *)arg, &label);
    g_status = tmp_trainer_step(&g_t, x, label, &g_loss);
}

static void run_step_fill(const void *arg) {
    uint32_t i = *(const uint32_t *)arg;
    int32_t label;
    const int8_t *x = sample(i, &label);
    g_status = tmp_trainer_step_fill(&g_t, x, label, g_cache + (size_t)i * g_t.p->cache_bytes, &g_loss);
}

static void run_step_cached(const void *arg) {
    uint32_t i = *(const uint32_t *)arg;
    int32_t label;
    (void)sample(i, &label);
    g_status = tmp_trainer_step_cached(&g_t, g_cache + (size_t)i * g_t.p->cache_bytes, label, &g_loss);
}

typedef struct {
    const tmp_train_options *o;
    void *ws;
    size_t wsz;
    tmp_train_plan *plan;
    tmp_train_error *err;
    void *tables;           /* wsz bytes for the compact tables, or NULL: keep the workspace */
} plan_arg;

static void run_plan(const void *arg) {
    const plan_arg *pa = (const plan_arg *)arg;
    g_status = tmp_train_plan_make(&g_model, pa->o, pa->ws, pa->wsz, pa->plan, pa->err);
    if (g_status == TMP_OK && pa->tables != NULL) {
        /* as the bindings do: keep the compact tables, free the workspace */
        g_status = tmp_train_plan_compact(pa->plan, pa->tables, pa->wsz);
    }
}

static void run_end_period(const void *arg) {
    (void)arg;
    g_status = tmp_trainer_end_period(&g_t);
}

static const int8_t *fit_sample(void *ctx, uint32_t i, int32_t *label) {
    (void)ctx;
    return sample(i, label);
}

static int fit_store(void *ctx, uint32_t i, uint32_t off, const int8_t *src, uint32_t n) {
    (void)ctx;
    memcpy(g_cache + (size_t)i * g_t.p->cache_bytes + off, src, n);
    return 0;
}

static int fit_load(void *ctx, uint32_t i, uint32_t off, int8_t *dst, uint32_t n) {
    (void)ctx;
    memcpy(dst, g_cache + (size_t)i * g_t.p->cache_bytes + off, n);
    return 0;
}

typedef struct {
    uint32_t n, epochs;
    tmp_fit_stats st;
} fit_arg;

static void run_fit(const void *arg) {
    fit_arg *f = (fit_arg *)(uintptr_t)arg;
    tmp_fit_io io = { fit_sample, g_cache != NULL ? fit_store : NULL, g_cache != NULL ? fit_load : NULL, NULL, NULL,
        g_cache != NULL ? f->n : 0u, 0u };
    g_status = tmp_trainer_fit(&g_t, f->n, f->epochs, 0u, &io, &f->st);
}

/* ---- helpers */

/* newlib-nano's printf has no %s and no floats: decimal strings by hand (4 rotating buffers) */
static const char *u64s(uint64_t v) {
    static char bufs[4][24];
    static int k;
    char *b = bufs[k++ & 3], tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v != 0);
    for (int i = 0; i < n; i++) {
        b[i] = tmp[n - 1 - i];
    }
    b[n] = 0;
    return b;
}

static uint32_t g_stack_peak;

static uint64_t measure(void (*fn)(const void *), const void *arg) {
    bench_result r = bench_measure(fn, arg);
    g_stack_peak = r.stack_bytes > g_stack_peak ? r.stack_bytes : g_stack_peak;
    return r.instructions64;
}

static void phases_now(uint64_t out[TMP_PHASE_COUNT]) {
    for (int k = 0; k < TMP_PHASE_COUNT; k++) {
        out[k] = g_t.ticks[k];
    }
}

static void print_phases(const char *key, const uint64_t a[TMP_PHASE_COUNT], const uint64_t b[TMP_PHASE_COUNT],
    uint32_t count) {
    printf(",\"%s\":[", key);
    for (int k = 0; k < TMP_PHASE_COUNT; k++) {
        printf("%s%s", k ? "," : "", u64s(count ? (b[k] - a[k]) * INSNS_PER_TICK / count : 0u));
    }
    printf("]");
}

static int fail(const char *what, tmp_status s) {
    printf("error: %s failed (%s)\n", what, tmp_status_name(s));
    return 1;
}

int main(int argc, char **argv) {
    if (bench_init() != 0) {
        return 1;
    }
    args_t a;
    if (argc == 2 && argv[1][0] == '@' && args_from_file(argv[1] + 1, &argc, &argv) != 0) {
        return 1;
    }
    if (parse_args(argc, argv, &a) != 0) {
        return 1;
    }
    uint32_t model_size = 0, samples_size = 0;
    void *model_data = read_file(a.model, &model_size);
    g_samples = (const uint8_t *)read_file(a.samples, &samples_size);
    if (model_data == NULL || g_samples == NULL) {
        return 1;
    }
    tmp_error merr;
    tmp_status s = tmp_model_init(&g_model, model_data, model_size, &merr);
    if (s != TMP_OK) {
        return fail("model", s);
    }
    tmp_tensor tin;
    tmp_model_input(&g_model, &tin);
    g_in_bytes = (uint32_t)(tin.dims.h * tin.dims.w * tin.dims.c);
    g_n_samples = samples_size / (1u + g_in_bytes);
    if (g_n_samples == 0 || samples_size % (1u + g_in_bytes) != 0) {
        printf("error: the sample file does not hold records of 1 + %lu bytes\n", (unsigned long)g_in_bytes);
        return 1;
    }
    int32_t mi = tmp_method_from_name(a.method);
    if (mi < 0) {
        printf("error: unknown method %s\n", a.method);
        return 1;
    }
    tmp_train_options o = tmp_train_options_default(mi);
    o.r = a.r;
    o.ratio = a.ratio;
    o.n_bias = a.n_bias;
    o.budget = a.budget;
    o.momentum = a.momentum;
    o.mac_budget = a.macs;
    o.storage = strcmp(a.storage, "fp32") == 0 ? TMP_STORAGE_FP32 : TMP_STORAGE_INT8;
    o.n_layers = a.n_layers;
    o.layers = a.n_layers ? a.layers : NULL;
    o.ratios = a.n_ratios ? a.ratios : NULL;
    size_t wsz = tmp_train_workspace_size(&g_model);
    void *ws = big_alloc(wsz);
    if (ws == NULL) {
        return 1;
    }
    tmp_train_plan plan;
    tmp_train_error err;

    /* the TinyTrain selection pass over `support` samples, counted */
    uint64_t sel_insns = 0, sel_plan_insns = 0;
    uint32_t sel_arena = 0, sel_hw = 0;
    tmp_trainer fisher;
    tmp_train_plan fplan;
    if (a.support > 0) {
        tmp_train_options fo = tmp_train_selection_options(&o);
        void *fws = big_alloc(wsz);
        plan_arg fpa = { &fo, fws, wsz, &fplan, &err, NULL };
        sel_plan_insns = measure(run_plan, &fpa);
        s = g_status;
        if (s != TMP_OK) {
            return fail(err.msg != NULL ? err.msg : "selection plan", s);
        }
        uint8_t *fa = (uint8_t *)big_alloc(fplan.arena_bytes + 8u);
        if (fa == NULL) {
            return 1;
        }
        s = tmp_trainer_init(&fisher, &g_model, &fplan, fa, fplan.arena_bytes, 0.0f, 1u);
        if (s != TMP_OK) {
            return fail("selection trainer", s);
        }
        tmp_trainer keep = g_t;
        g_t = fisher;
        for (uint32_t i = 0; i < a.support; i++) {
            sel_insns += measure(run_step, &i);
            if (g_status != TMP_OK) {
                return fail("selection step", g_status);
            }
        }
        fisher = g_t;
        g_t = keep;
        sel_arena = fplan.arena_bytes;
        sel_hw = tmp_trainer_high_water(&fisher);
        o.fisher = &fisher;
    }
    void *tables = big_alloc(wsz);
    if (tables == NULL) {
        return 1;
    }
    plan_arg pa = { &o, ws, wsz, &plan, &err, tables };
    uint64_t plan_insns = measure(run_plan, &pa);
    s = g_status;
    if (s != TMP_OK) {
        printf("error: plan: %s (smallest %lu bytes)\n", err.msg != NULL ? err.msg : tmp_status_name(s),
            (unsigned long)err.min_budget);
        return 1;
    }
    uint8_t *arena = (uint8_t *)big_alloc(plan.arena_bytes + GUARD + 8u);
    if (arena == NULL || ws == NULL) {
        printf("error: out of memory\n");
        return 1;
    }
    memset(arena + plan.arena_bytes, 0x5A, GUARD);
    s = tmp_trainer_init(&g_t, &g_model, &plan, arena, plan.arena_bytes, a.lr, a.seed);
    if (s != TMP_OK) {
        return fail("trainer", s);
    }
    g_t.clock = clock_ticks;

    printf("{\"bench\":\"train\",\"method\":\"%s\",\"r\":%ld,\"ratio_x1e6\":%lu,\"storage\":\"%s\",\"budget\":%lu,"
           "\"arena_bytes\":%lu,\"first\":%ld,\"num_layers\":%ld,\"cache_bytes\":%lu,"
           "\"forward_macs\":%s,\"backward_macs\":%s,\"model_bytes\":%lu",
        tmp_method_name(plan.method), (long)plan.r, (unsigned long)(plan.ratio * 1e6f + 0.5f), a.storage, (unsigned long)plan.budget,
        (unsigned long)plan.arena_bytes, (long)plan.first, (long)plan.num_layers, (unsigned long)plan.cache_bytes,
        u64s(plan.forward_macs), u64s(plan.backward_macs), (unsigned long)model_size);
    printf(",\"plan_instructions\":%s,\"workspace_bytes\":%lu,\"table_bytes\":%lu", u64s(plan_insns),
        (unsigned long)wsz, (unsigned long)plan.table_bytes);
    if (a.support > 0) {
        printf(",\"selection\":{\"samples\":%lu,\"instructions\":%s,\"plan_instructions\":%s,"
               "\"arena_bytes\":%lu,\"high_water\":%lu}",
            (unsigned long)a.support, u64s(sel_insns), u64s(sel_plan_insns), (unsigned long)sel_arena,
            (unsigned long)sel_hw);
    }

    /* inference with the pretrained parameters */
    uint32_t i0 = 0;
    uint64_t inf = measure(run_forward, &i0);
    if (g_status != TMP_OK) {
        return fail("inference", g_status);
    }
    printf(",\"inference\":%s", u64s(inf));

    /* training steps */
    uint64_t p0[TMP_PHASE_COUNT], p1[TMP_PHASE_COUNT], total = 0, lo = UINT64_MAX, hi = 0;
    phases_now(p0);
    for (uint32_t i = 0; i < a.steps; i++) {
        uint64_t n = measure(run_step, &i);
        if (g_status != TMP_OK) {
            return fail("step", g_status);
        }
        total += n;
        lo = n < lo ? n : lo;
        hi = n > hi ? n : hi;
    }
    phases_now(p1);
    printf(",\"step\":{\"count\":%lu,\"mean\":%s,\"min\":%s,\"max\":%s", (unsigned long)a.steps,
        u64s(a.steps ? total / a.steps : 0), u64s(a.steps ? lo : 0),
        u64s(hi));
    print_phases("phases", p0, p1, a.steps);
    printf("}");

    /* the frozen-prefix cache: steps that fill it, then steps that start from it */
    if (plan.cache_bytes != 0 && a.cached > 0) {
        g_cache = (int8_t *)big_alloc((size_t)plan.cache_bytes * a.cached);
        if (g_cache == NULL) {
            return 1;
        }
        uint64_t fill = 0, from = 0;
        phases_now(p0);
        for (uint32_t i = 0; i < a.cached; i++) {
            fill += measure(run_step_fill, &i);
            if (g_status != TMP_OK) {
                return fail("cache fill step", g_status);
            }
        }
        phases_now(p1);
        printf(",\"fill_step\":{\"count\":%lu,\"mean\":%s", (unsigned long)a.cached,
            u64s(fill / a.cached));
        print_phases("phases", p0, p1, a.cached);
        printf("}");
        phases_now(p0);
        for (uint32_t i = 0; i < a.cached; i++) {
            from += measure(run_step_cached, &i);
            if (g_status != TMP_OK) {
                return fail("cached step", g_status);
            }
        }
        phases_now(p1);
        printf(",\"cached_step\":{\"count\":%lu,\"mean\":%s", (unsigned long)a.cached,
            u64s(from / a.cached));
        print_phases("phases", p0, p1, a.cached);
        printf("}");
        /* bump allocator: nothing to free */
        g_cache = NULL;
    }

    /* an APU period end (tinymp) */
    int apu = 0;
    for (int32_t i = 0; i < plan.num_layers; i++) {
        apu |= (plan.flags[i] & TMP_TL_APU) != 0;
    }
    if (apu) {
        uint64_t n = measure(run_end_period, NULL);
        if (g_status != TMP_OK) {
            return fail("end_period", g_status);
        }
        printf(",\"end_period\":%s", u64s(n));
    }

    /* a whole run, from the pretrained parameters */
    if (a.run_samples > 0 && a.run_epochs > 0) {
        s = tmp_trainer_reset(&g_t);
        if (s != TMP_OK) {
            return fail("reset", s);
        }
        fit_arg f = { a.run_samples, a.run_epochs, { 0, 0, 0, 0, 0, 0, 0 } };
        if (plan.cache_bytes != 0) {
            g_cache = (int8_t *)big_alloc((size_t)plan.cache_bytes * a.run_samples);
            if (g_cache == NULL) {
                return 1;
            }
        }
        uint64_t n = measure(run_fit, &f);
        if (g_status != TMP_OK) {
            return fail("fit", g_status);
        }
        printf(",\"run\":{\"samples\":%lu,\"epochs\":%lu,\"steps\":%lu,\"cached_steps\":%lu,\"instructions\":%s}",
            (unsigned long)a.run_samples, (unsigned long)a.run_epochs, (unsigned long)f.st.steps,
            (unsigned long)f.st.cached_steps, u64s(n));
    }

    /* the trained outputs (int8) for the host comparison, the high water and the stack */
    printf(",\"logits\":[");
    tmp_tensor tout;
    tmp_model_output(&g_model, &tout);
    for (uint32_t i = 0; i < a.logits && i < g_n_samples; i++) {
        const int8_t *out;
        int32_t label;
        s = tmp_trainer_forward(&g_t, sample(i, &label), &out);
        if (s != TMP_OK) {
            return fail("forward", s);
        }
        printf("%s[", i ? "," : "");
        for (int32_t c = 0; c < tout.dims.c; c++) {
            printf("%s%d", c ? "," : "", (int)out[c]);
        }
        printf("]");
    }
    int guard_ok = 1;
    for (uint32_t k = 0; k < GUARD; k++) {
        guard_ok &= arena[plan.arena_bytes + k] == 0x5A;
    }
    printf("],\"out_zero_point\":%ld,\"out_scale_e12\":%s", (long)tout.zero_point,
        u64s((uint64_t)((double)tout.scale * 1e12 + 0.5)));
    printf(",\"steps_total\":%lu,\"high_water\":%lu,\"stack_bytes\":%lu,\"guard_ok\":%s}\n",
        (unsigned long)g_t.steps, (unsigned long)tmp_trainer_high_water(&g_t), (unsigned long)g_stack_peak,
        guard_ok ? "true" : "false");
    fflush(stdout);
    return guard_ok ? 0 : 1;
}
