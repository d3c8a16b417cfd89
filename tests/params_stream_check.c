/*
 * The saved-parameter blob written and read in pieces (tmp_trainer_params_write, and
 * tmp_trainer_params_begin / feed / end) against the one-buffer calls tmp_trainer_params_save
 * and tmp_trainer_params_load, whose results tests/test_trainer.py and tests/device/train_file.py
 * pin (tests/test_params_stream.py builds this with the whole core under the address and
 * undefined-behaviour sanitizers).
 *
 * The reference is an independent reading of the format (docs/TRAINING.md, "saved parameters"):
 * ref_blob() lays out a trainer's parameters and training state as the format says (version 2,
 * or the parameters alone as version 1), ref_verdict() applies the checks in their documented
 * order. For every configuration below a trainer takes a few steps with APU periods of two
 * steps, so its parameters and state differ from the model's and the plan's. Then:
 * - a second trainer that loads the blob and the saved one take the same five further steps:
 *   equal losses and equal blobs after (the uninterrupted run is the reference);
 * - a version-1 blob writes only its records (and their int8 copies) and keeps the counters;
 * - tmp_trainer_params_save writes ref_blob()'s bytes, and the writer, at every piece size
 *   tried, produces exactly those bytes and then nothing more;
 * - for each of many damaged copies of the blob (bit flips, bytes set, cuts, bytes appended,
 *   header and record fields edited, values set out of range or to NaN, a record left out or
 *   all of them twice, values in the momentum, selection and state records, damage to the
 *   version-1 blob, each also with its CRC made valid again; every padding byte of a
 *   selection), tmp_trainer_params_load on the whole buffer gives ref_verdict()'s status and
 *   message, and so does reading it in random pieces; the checking pass never changes the
 *   trainer, a failed load changes nothing, and a load that succeeds leaves the same arena and
 *   counters both ways.
 *
 * usage: params_stream_check MODEL.tmpm STEPS   one line per configuration, exit 0 when all
 * agree, 1 with "FAIL ..." otherwise.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tmp_model.h"
#include "tmp_train.h"

#include "check_common.h"

static tmp_model g_m;
static uint32_t g_seed = 2024u;

static uint32_t lcg(void) {
    g_seed = g_seed * 1664525u + 1013904223u;
    return g_seed >> 8;
}

static void put32(uint8_t *d, uint32_t v) {
    for (int i = 0; i < 4; i++) {
        d[i] = (uint8_t)(v >> (8 * i));
    }
}

/* the trailer made valid again for the bytes before it */
static void fix_crc(uint8_t *b, uint32_t n) {
    if (n >= 36u) {
        put32(b + n - 4u, tmp_crc32(0, b, n - 4u));
    }
}

/* ---------------------------------------------------------------- the reference */

typedef struct {
    int32_t layer;
    uint32_t kind, bytes, offset;
} ref_rec;

#define STATE_LAYER 0xFFFF

/* The records a blob of `version` holds, in order (docs/TRAINING.md): per layer, the arrays the
 * plan gives bytes among int8 weights (kind 1) and int32 biases (2), or with fp32 storage instead
 * their fp32 masters (3, 4); from version 2 also the momentum of weights (5) and biases (6), the
 * selection state of an APU layer (7); and last the trainer's state (kind 8, layer 0xFFFF, 20 B). */
static uint32_t ref_records(const tmp_trainer *t, uint32_t version, ref_rec *out) {
    const tmp_train_plan *p = t->p;
    static const int lb[7] = { TMP_LB_W, TMP_LB_B, TMP_LB_WM, TMP_LB_BM, TMP_LB_VW, TMP_LB_VB, TMP_LB_SEL };
    uint32_t n = 0;
    for (int32_t i = 0; i < p->num_layers; i++) {
        for (uint32_t kind = 1; kind <= (version >= 2u ? 7u : 4u); kind++) {
            if (p->storage == TMP_STORAGE_FP32 && kind <= 2u) {
                continue;
            }
            if (kind == 7u && !(p->flags[i] & TMP_TL_APU)) {
                continue;
            }
            const tmp_buf *bb = tmp_train_plan_buf(p, lb[kind - 1u] * p->num_layers + i);
            if (bb->size != 0) {
                out[n].layer = i;
                out[n].kind = kind;
                out[n].bytes = bb->size;
                out[n].offset = bb->offset;
                n++;
            }
        }
    }
    if (version >= 2u) {
        out[n].layer = STATE_LAYER;
        out[n].kind = 8u;
        out[n].bytes = 20u;
        out[n].offset = 0;
        n++;
    }
    return n;
}

static uint32_t get32(const uint8_t *d) {
    return (uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 | (uint32_t)d[3] << 24;
}

static uint32_t get16(const uint8_t *d) {
    return (uint32_t)d[0] | (uint32_t)d[1] << 8;
}

static void ref_state(const tmp_trainer *t, uint8_t *d) {
    put32(d, t->rng);
    put32(d + 4, t->steps);
    put32(d + 8, t->stalled_steps);
    put32(d + 12, t->periods);
    put32(d + 16, t->period_steps);
}

/* Header (magic TMPP, version (u16), storage (u8), 0, model CRC, records, payload bytes, 12
 * zero bytes), the records (layer u16, kind u8, 0, bytes u32, data), CRC-32 of all that. */
static uint32_t ref_blob(const tmp_trainer *t, uint32_t version, const ref_rec *rec, uint32_t nrec, uint8_t *out) {
    uint32_t off = 32u;
    memset(out, 0, 32);
    memcpy(out, "TMPP", 4);
    out[4] = (uint8_t)version;
    out[6] = (uint8_t)t->p->storage;
    put32(out + 8, t->m->crc);
    put32(out + 12, nrec);
    for (uint32_t j = 0; j < nrec; j++) {
        out[off] = (uint8_t)rec[j].layer;
        out[off + 1] = (uint8_t)(rec[j].layer >> 8);
        out[off + 2] = (uint8_t)rec[j].kind;
        out[off + 3] = 0;
        put32(out + off + 4, rec[j].bytes);
        if (rec[j].kind == 8u) {
            ref_state(t, out + off + 8);
        } else {
            memcpy(out + off + 8, t->arena + rec[j].offset, rec[j].bytes);
        }
        off += 8u + rec[j].bytes;
    }
    put32(out + 16, off - 32u);
    put32(out + off, tmp_crc32(0, out, off));
    return off + 4u;
}

/* The largest |bias| a layer may hold: its int32 accumulator must not overflow when every
 * product is at most 32640 (127 * 257) in magnitude (the bound the model loader applies). */
static int64_t ref_bias_limit(const tmp_layer *l) {
    tmp_tensor tin;
    tmp_model_tensor(&g_m, l->in0, &tin, NULL);
    const int64_t cin = l->type == TMP_LAYER_FC ? (int64_t)tin.dims.h * tin.dims.w * tin.dims.c : tin.dims.c;
    const int64_t red = l->type == TMP_LAYER_CONV ? (int64_t)l->kh * l->kw * cin
        : l->type == TMP_LAYER_DWCONV ? (int64_t)l->kh * l->kw : cin;
    const int64_t lim = (int64_t)INT32_MAX - 32640 * red;
    return lim < 0 ? 0 : lim;
}

static uint32_t up4(uint32_t n) {
    return (n + 3u) / 4u * 4u;
}

/* A selection record (docs/TRAINING.md): k channels (u16, strictly ascending, below cin), padding,
 * two importance arrays of cin floats (finite, >= 0), cin ages (u16 below 0x8000), padding, cin
 * exclusion counts (u8, at most min(ceil(1/ratio) - 1, 255)), padding; padding bytes are 0. */
static int ref_sel_ok(const tmp_trainer *t, int32_t layer, const uint8_t *d, uint32_t bytes) {
    tmp_layer l;
    tmp_tensor tin;
    tmp_model_layer(&g_m, layer, &l, NULL);
    tmp_model_tensor(&g_m, l.in0, &tin, NULL);
    const uint32_t cin = l.type == TMP_LAYER_FC ? (uint32_t)(tin.dims.h * tin.dims.w * tin.dims.c) : (uint32_t)tin.dims.c;
    const uint32_t k = t->p->k[layer];
    const uint32_t m = (uint32_t)ceilf(1.0f / t->p->ratio - 1e-4f);
    const uint32_t emax = m <= 1u ? 0u : m - 1u > 255u ? 255u : m - 1u;
    const uint32_t ch = 0, imp = up4(2u * k), age = imp + 8u * cin, excl = age + up4(2u * cin);
    if (bytes != excl + up4(cin)) {
        return 0;
    }
    for (uint32_t j = 0; j < k; j++) {
        const uint32_t c = get16(d + ch + 2u * j);
        if (c >= cin || (j > 0 && c <= get16(d + ch + 2u * j - 2u))) {
            return 0;
        }
    }
    for (uint32_t j = 0; j < 2u * cin; j++) {
        float f;
        memcpy(&f, d + imp + 4u * j, 4);
        if (!isfinite(f) || f < 0.0f) {
            return 0;
        }
    }
    for (uint32_t j = 0; j < cin; j++) {
        if (get16(d + age + 2u * j) >= 0x8000u || d[excl + j] > emax) {
            return 0;
        }
    }
    for (uint32_t j = 2u * k; j < imp; j++) {
        if (d[j] != 0) {
            return 0;
        }
    }
    for (uint32_t j = age + 2u * cin; j < excl; j++) {
        if (d[j] != 0) {
            return 0;
        }
    }
    for (uint32_t j = excl + cin; j < bytes; j++) {
        if (d[j] != 0) {
            return 0;
        }
    }
    return 1;
}

#define PLAN_MSG "the parameters were saved with another plan (other trainable layers)"

static ref_rec g_rec[8 * 256 + 1];

/* The verdict on n bytes, the checks in the documented order. */
static tmp_status ref_verdict(const tmp_trainer *t, const uint8_t *b, uint32_t n, const char **msg) {
    const uint32_t version = n >= 6u ? get16(b + 4) : 0u;
    if (n < 36u || memcmp(b, "TMPP", 4) != 0) {
        *msg = "not a tinymp parameters file";
    } else if (version != 1u && version != 2u) {
        *msg = "unsupported parameters file version";
    } else if ((uint64_t)get32(b + 16) + 36u != n) {
        *msg = "truncated or oversized parameters file";
    } else if (tmp_crc32(0, b, n - 4u) != get32(b + n - 4u)) {
        *msg = "CRC-32 mismatch: the parameters file is corrupted";
    } else if (get32(b + 8) != t->m->crc) {
        *msg = "the parameters were saved for another model";
    } else if (b[6] != (uint8_t)t->p->storage) {
        *msg = "the parameters were saved with another storage mode (int8 / fp32)";
    } else {
        const ref_rec *rec = g_rec;
        const uint32_t nrec = ref_records(t, version, g_rec);
        const uint32_t end = n - 4u;
        uint32_t off = 32u;
        for (uint32_t j = 0; j < nrec; j++) {
            if (off + 8u > end || get16(b + off) != (uint32_t)rec[j].layer ||
                b[off + 2] != rec[j].kind || get32(b + off + 4) != rec[j].bytes || off + 8u + rec[j].bytes > end) {
                *msg = PLAN_MSG;
                return TMP_ERR_FORMAT;
            }
            const uint8_t *d = b + off + 8u;
            if (rec[j].kind == 7u && !ref_sel_ok(t, rec[j].layer, d, rec[j].bytes)) {
                *msg = "the saved channel selection is invalid";
                return TMP_ERR_FORMAT;
            }
            if (rec[j].kind == 8u && (get32(d) == 0 || get32(d + 8) > get32(d + 4) || get32(d + 16) > get32(d + 4))) {
                *msg = "the saved training state is invalid";
                return TMP_ERR_FORMAT;
            }
            tmp_layer l;
            if (rec[j].kind <= 6u) {
                tmp_model_layer(&g_m, rec[j].layer, &l, NULL);
            }
            for (uint32_t e = 0; rec[j].kind >= 2u && rec[j].kind <= 6u && e < rec[j].bytes / 4u; e++) {
                const uint32_t v = get32(d + 4u * e);
                float f;
                memcpy(&f, &v, 4);
                if (rec[j].kind == 2u && llabs((long long)(int32_t)v) > ref_bias_limit(&l)) {
                    *msg = "a saved bias is out of range";
                    return TMP_ERR_FORMAT;
                }
                if (rec[j].kind >= 3u && !isfinite(f)) {
                    *msg = "a saved parameter is not finite";
                    return TMP_ERR_FORMAT;
                }
            }
            off += 8u + rec[j].bytes;
        }
        if (off != end || get32(b + 12) != nrec) {
            *msg = PLAN_MSG;
            return TMP_ERR_FORMAT;
        }
        *msg = NULL;
        return TMP_OK;
    }
    return TMP_ERR_FORMAT;
}

/* ---------------------------------------------------------------- the checks */


static const char *text(const char *msg) {
    return msg != NULL ? msg : "(none)";
}

/* Read `b` in pieces of 1..maxpiece bytes (0: byte by byte) through one pass. */
static tmp_status read_pieces(tmp_trainer *t, const uint8_t *b, uint32_t n, int copy, uint32_t maxpiece,
    const char **msg) {
    tmp_params_reader r;
    if (tmp_trainer_params_begin(t, &r, copy) != TMP_OK) {
        return TMP_ERR_ARG;
    }
    uint32_t at = 0;
    while (at < n) {
        uint32_t k = maxpiece == 0 ? 1u : 1u + lcg() % maxpiece;
        if (k > n - at) {
            k = n - at;
        }
        if (lcg() % 16u == 0u && tmp_trainer_params_feed(t, &r, b + at, 0) != TMP_OK) { /* empty pieces too */
            return TMP_ERR_ARG;
        }
        if (tmp_trainer_params_feed(t, &r, b + at, k) != TMP_OK) {
            return TMP_ERR_ARG;
        }
        at += k;
    }
    return tmp_trainer_params_end(t, &r, msg);
}

/* The trainer's counters (a version-2 blob's state record carries them). */
static int same_counters(const tmp_trainer *a, const tmp_trainer *b) {
    return a->rng == b->rng && a->steps == b->steps && a->stalled_steps == b->stalled_steps &&
        a->periods == b->periods && a->period_steps == b->period_steps;
}

/* One damaged blob: the pieces must agree with the one-buffer load and with the format. *t is
 * left as it came (arena orig_arena, its counters); *verdict = the message (NULL: loaded). */
static int check_blob(tmp_trainer *t, const uint8_t *b, uint32_t n, const uint8_t *orig_arena, uint8_t *want,
    size_t arena_bytes, const char *what, const char *expect, uint32_t *loaded, const char **verdict) {
    const tmp_trainer keep = *t;
    /* the reference: the whole buffer */
    memcpy(t->arena, orig_arena, arena_bytes);
    const char *m0 = NULL;
    tmp_status s0 = tmp_trainer_params_load(t, b, n, &m0);
    const char *mr = NULL;
    tmp_status sr = ref_verdict(t, b, n, &mr);
    *verdict = mr;
    CHECK(s0 == sr && strcmp(text(m0), text(mr)) == 0, "%s: %d '%s', the format says %d '%s'", what, (int)s0,
        text(m0), (int)sr, text(mr));
    CHECK(expect == NULL || (s0 == TMP_ERR_FORMAT && strcmp(text(m0), expect) == 0), "%s: '%s', not '%s'", what,
        text(m0), expect);
    if (s0 != TMP_OK) {
        CHECK(memcmp(t->arena, orig_arena, arena_bytes) == 0 && same_counters(t, &keep),
            "%s: a failed load changed the trainer", what);
    } else if (get16(b + 4) >= 2u) { /* the counters are the state record's (the last one) */
        uint8_t st[20];
        ref_state(t, st);
        CHECK(memcmp(st, b + n - 24u, 20) == 0, "%s: the counters are not the saved ones", what);
    } else {
        CHECK(same_counters(t, &keep), "%s: a version-1 load changed the counters", what);
    }
    const tmp_trainer after = *t;
    memcpy(want, t->arena, arena_bytes);
    *t = keep;
    memcpy(t->arena, orig_arena, arena_bytes);
    /* pieces: a checking pass, at a random piece size (sometimes byte by byte) */
    const uint32_t maxpiece = lcg() % 8u == 0u ? 0u : 1u + lcg() % 97u;
    const char *m1 = NULL;
    tmp_status s1 = read_pieces(t, b, n, 0, maxpiece, &m1);
    CHECK(s1 == s0 && strcmp(text(m1), text(m0)) == 0, "%s (pieces of up to %u): %d '%s' against %d '%s'", what,
        (unsigned)maxpiece, (int)s1, text(m1), (int)s0, text(m0));
    CHECK(memcmp(t->arena, orig_arena, arena_bytes) == 0 && same_counters(t, &keep),
        "%s: the checking pass changed the trainer", what);
    if (s0 == TMP_OK) {
        /* then the copying pass, in other pieces */
        const char *m2 = NULL;
        CHECK(read_pieces(t, b, n, 1, 1u + lcg() % 500u, &m2) == TMP_OK, "%s: copying pass: %s", what, text(m2));
        CHECK(memcmp(t->arena, want, arena_bytes) == 0 && same_counters(t, &after),
            "%s: the pieces loaded other bytes or counters", what);
        (*loaded)++;
    }
    *t = keep;
    memcpy(t->arena, orig_arena, arena_bytes);
    return 0;
}

/* Where a blob's records are: up to `max` (data offset, kind, bytes); returns how many. */
static uint32_t blob_records(const uint8_t *b, uint32_t size, uint32_t *off, uint32_t *kind, uint32_t *bytes,
    uint32_t max) {
    uint32_t n = 0, at = 32u;
    while (at + 8u <= size - 4u && n < max) {
        off[n] = at + 8u;
        kind[n] = b[at + 2];
        bytes[n] = get32(b + at + 4);
        at += 8u + bytes[n];
        n++;
    }
    return n;
}

/* n training steps on random inputs (the lcg's), the losses into loss[] (NULL: not kept). */
static int run_steps(tmp_trainer *t, uint32_t n, float *loss) {
    tmp_tensor in;
    tmp_model_input(&g_m, &in);
    const uint32_t in_bytes = (uint32_t)in.dims.h * in.dims.w * in.dims.c;
    int8_t *x = malloc(in_bytes);
    for (uint32_t s = 0; s < n; s++) {
        for (uint32_t j = 0; j < in_bytes; j++) {
            x[j] = (int8_t)(lcg() & 0xFF);
        }
        float l;
        const tmp_status st = tmp_trainer_step(t, x, (int32_t)(s % g_m.num_classes), &l);
        if (st != TMP_OK) {
            free(x);
            CHECK(0, "step: %d", (int)st);
        }
        if (loss != NULL) {
            loss[s] = l;
        }
    }
    free(x);
    return 0;
}

static int check(const char *name, tmp_train_options o, uint32_t steps, uint32_t period, uint32_t mutants) {
    tmp_train_plan p;
    tmp_train_error err;
    size_t wsz = tmp_train_workspace_size(&g_m);
    void *ws = calloc(1, wsz + 8u);
    if (tmp_train_plan_make(&g_m, &o, ws, wsz, &p, &err) != TMP_OK) {
        printf("%-24s skipped: %s\n", name, err.msg != NULL ? err.msg : "does not fit");
        free(ws);
        return 0;
    }
    uint8_t *arena = calloc(1, p.arena_bytes + 8u), *orig = malloc(p.arena_bytes + 1u), *want = malloc(p.arena_bytes + 1u);
    tmp_trainer t;
    CHECK(tmp_trainer_init(&t, &g_m, &p, arena, p.arena_bytes, 0.05f, 11u) == TMP_OK, "%s: init", name);
    t.period = period; /* APU re-selects now and then, so its state is not the initial one */
    if (run_steps(&t, steps, NULL)) {
        return 1;
    }
    memcpy(orig, arena, p.arena_bytes);

    /* the writer against the one-buffer save */
    const uint32_t size = tmp_trainer_params_size(&t);
    uint8_t *whole = malloc(size + 64u), *out = malloc(size + 64u), *b = malloc(2u * size + 64u);
    CHECK(size > 36u && tmp_trainer_params_save(&t, whole, size) == TMP_OK, "%s: save", name);
    CHECK(p.num_layers <= 256, "layers");
    const uint32_t nrec = ref_records(&t, 2u, g_rec);
    CHECK(ref_blob(&t, 2u, g_rec, nrec, b) == size && memcmp(b, whole, size) == 0, "%s: the saved bytes are not "
        "the format's", name);
    CHECK(tmp_trainer_params_save(&t, out, size - 1u) == TMP_ERR_SIZE, "%s: short save", name);
    const uint32_t caps[] = { 1, 2, 3, 4, 5, 7, 8, 9, 31, 32, 33, 35, 36, 37, 40, 63, 64, 65, 511, 512, 513, 4096, 0, 0 };
    for (size_t c = 0; c < sizeof caps / sizeof caps[0]; c++) {
        const uint32_t cap = c == sizeof caps / sizeof caps[0] - 2u ? size : caps[c] != 0u ? caps[c] : size + 64u;
        tmp_params_writer w = { 0u, 0u };
        uint32_t got = 0, k = 0, calls = 0;
        CHECK(tmp_trainer_params_write(&t, &w, out, 0, &k) == TMP_OK && k == 0 && w.off == 0, "%s: cap 0", name);
        do {
            CHECK(tmp_trainer_params_write(&t, &w, out + got, cap, &k) == TMP_OK && k <= cap, "%s: write", name);
            got += k;
            CHECK(got <= size && ++calls <= size + 1u, "%s: the writer runs past the blob", name);
        } while (k != 0);
        CHECK(got == size && memcmp(out, whole, size) == 0, "%s: pieces of %u: %u bytes, not the save's %u", name,
            (unsigned)cap, (unsigned)got, (unsigned)size);
        CHECK(tmp_trainer_params_write(&t, &w, out, cap, &k) == TMP_OK && k == 0, "%s: past the end", name);
    }
    tmp_params_writer wbad = { size + 1u, 0u }, wnull = { 0u, 0u };
    uint32_t k;
    CHECK(tmp_trainer_params_write(&t, &wbad, out, 8, &k) == TMP_ERR_ARG && tmp_trainer_params_write(NULL, &wbad, out, 8, &k) ==
        TMP_ERR_ARG && tmp_trainer_params_write(&t, NULL, out, 8, &k) == TMP_ERR_ARG &&
        tmp_trainer_params_write(&t, &wnull, NULL, 8, &k) == TMP_ERR_ARG && wnull.off == 0, "%s: writer arguments",
        name);
    tmp_params_reader rbad;
    CHECK(tmp_trainer_params_begin(NULL, &rbad, 0) == TMP_ERR_ARG && tmp_trainer_params_begin(&t, NULL, 0) == TMP_ERR_ARG &&
        tmp_trainer_params_begin(&t, &rbad, 0) == TMP_OK && tmp_trainer_params_feed(&t, &rbad, NULL, 1) == TMP_ERR_ARG,
        "%s: reader arguments", name);

    /* the run goes on from the blob exactly as it would have: the saved trainer takes 5 more
     * steps; a second trainer (own arena, another seed) loads the blob and takes the same 5:
     * equal losses, and equal blobs after (parameters, momentum, selections, counters) */
    uint8_t *v1 = malloc(size + 64u);
    const uint32_t nrec1 = ref_records(&t, 1u, g_rec);
    const uint32_t size1 = ref_blob(&t, 1u, g_rec, nrec1, v1); /* the same parameters as version 1 */
    const uint32_t seed0 = g_seed;
    float la[5], lb[5];
    if (run_steps(&t, 5, la)) {
        return 1;
    }
    uint8_t *arena2 = calloc(1, p.arena_bytes + 8u), *blob2 = malloc(size + 64u);
    tmp_trainer t2;
    const char *m = NULL;
    CHECK(tmp_trainer_init(&t2, &g_m, &p, arena2, p.arena_bytes, 0.05f, 99u) == TMP_OK, "%s: init 2", name);
    t2.period = period;
    CHECK(tmp_trainer_params_load(&t2, whole, size, &m) == TMP_OK, "%s: load: %s", name, text(m));
    g_seed = seed0;
    if (run_steps(&t2, 5, lb)) {
        return 1;
    }
    CHECK(memcmp(la, lb, sizeof la) == 0, "%s: the loaded trainer's losses differ from the saved one's", name);
    CHECK(tmp_trainer_params_save(&t, out, size) == TMP_OK && tmp_trainer_params_save(&t2, blob2, size) == TMP_OK &&
        memcmp(out, blob2, size) == 0, "%s: after 5 more steps the trainers differ", name);
    /* a version-1 blob (parameters only) loads its records and nothing else */
    CHECK(tmp_trainer_reset(&t2) == TMP_OK, "reset 2");
    memcpy(want, arena2, p.arena_bytes);
    const tmp_trainer before = t2;
    CHECK(tmp_trainer_params_load(&t2, v1, size1, &m) == TMP_OK, "%s: version 1: %s", name, text(m));
    CHECK(same_counters(&t2, &before), "%s: a version-1 load changed the counters", name);
    for (uint32_t j = 0; j < nrec1; j++) { /* the parameters: the saved trainer's */
        CHECK(memcmp(arena2 + g_rec[j].offset, orig + g_rec[j].offset, g_rec[j].bytes) == 0, "%s: v1 record %u",
            name, (unsigned)j);
        memcpy(want + g_rec[j].offset, orig + g_rec[j].offset, g_rec[j].bytes);
    }
    if (p.storage == TMP_STORAGE_FP32) { /* and their int8 copies, requantised */
        for (int32_t i = 0; i < p.num_layers; i++) {
            static const int lbs[2] = { TMP_LB_W, TMP_LB_B };
            for (int q = 0; q < 2; q++) {
                const tmp_buf *bb = tmp_train_plan_buf(&p, lbs[q] * p.num_layers + i);
                memcpy(want + bb->offset, arena2 + bb->offset, bb->size);
            }
        }
    }
    CHECK(memcmp(arena2, want, p.arena_bytes) == 0, "%s: a version-1 load wrote outside its records", name);
    free(arena2);
    free(blob2);

    /* the blob itself, then damaged copies; the reference loads start from a fresh trainer's
     * parameters, so a successful load changes something */
    CHECK(tmp_trainer_reset(&t) == TMP_OK, "reset");
    memcpy(orig, arena, p.arena_bytes);
    uint32_t loaded = 0, tried = 0, bad_sel = 0, bad_state = 0, n_sel = 0;
    char what[96];
    const char *verdict;
    CHECK(check_blob(&t, whole, size, orig, want, p.arena_bytes, "the blob", NULL, &loaded, &verdict) == 0 &&
        loaded == 1 && memcmp(want, orig, p.arena_bytes) != 0, "%s: the blob itself", name);
    CHECK(check_blob(&t, v1, size1, orig, want, p.arena_bytes, "the version-1 blob", NULL, &loaded, &verdict) == 0 &&
        loaded == 2, "%s: the version-1 blob", name);
    uint32_t roff[8 * 256 + 1], rkind[8 * 256 + 1], rbytes[8 * 256 + 1];
    const uint32_t nr = blob_records(whole, size, roff, rkind, rbytes, 8 * 256 + 1);
    uint32_t extra[8 * 256 + 1], nextra = 0;
    for (uint32_t j = 0; j < nr; j++) {
        if (rkind[j] >= 5u) {
            extra[nextra++] = j;
        }
        n_sel += rkind[j] == 7u;
    }
    for (uint32_t i = 0; i < mutants; i++) {
        uint32_t n = size;
        memcpy(b, whole, size);
        const uint32_t kind = lcg() % 13u, at = lcg() % size;
        switch (kind) {
            case 0: /* one bit */
                b[at] ^= (uint8_t)(1u << (lcg() % 8u));
                break;
            case 1: /* one byte set */
                b[at] = (uint8_t)lcg();
                break;
            case 2: /* cut short (often inside the header) */
                n = lcg() % 2u ? at : lcg() % 70u;
                break;
            case 3: /* bytes appended */
                n = size + 1u + lcg() % 40u;
                memset(b + size, (int)(lcg() & 0xFF), n - size);
                break;
            case 4: { /* a header field: version, storage, model CRC, record count, payload */
                static const uint8_t offs[] = { 4, 6, 8, 12, 16 };
                const uint32_t o = offs[lcg() % 5u];
                const uint32_t vals[] = { 0u, 1u, 2u, 0xFFFFFFFFu, size, size - 36u, size - 40u, lcg() };
                const uint32_t v = vals[lcg() % 8u];
                if (o == 4u) {
                    b[4] = (uint8_t)v;
                    b[5] = (uint8_t)(v >> 8);
                } else if (o == 6u) {
                    b[6] = (uint8_t)v;
                } else {
                    put32(b + o, v);
                }
                break;
            }
            case 5: /* the first record's header: layer, kind, bytes */
                b[32u + lcg() % 8u] ^= (uint8_t)(1u + lcg() % 255u);
                break;
            case 6: /* a 4-byte value: out of any bias range, or NaN / infinity as a float */
            {
                const uint32_t w = 32u + 4u * (lcg() % ((size - 36u) / 4u));
                const uint32_t vals[] = { 0x7FFFFFFFu, 0x80000001u, 0x7FC00000u, 0x7F800000u, 0xFF800000u };
                put32(b + w, vals[lcg() % 5u]);
                break;
            }
            case 7: /* a byte removed */
                memmove(b + at, b + at + 1u, size - at - 1u);
                n = size - 1u;
                break;
            case 8: { /* one whole record left out, the header's count and payload made to agree */
                uint32_t recs = 0, off = 32u;
                while (off + 8u <= size - 4u) {
                    recs++;
                    off += 8u + ((uint32_t)b[off + 4] | (uint32_t)b[off + 5] << 8 | (uint32_t)b[off + 6] << 16 |
                        (uint32_t)b[off + 7] << 24);
                }
                uint32_t drop = lcg() % recs, len = 0;
                off = 32u;
                for (uint32_t j = 0; j <= drop; j++) {
                    len = 8u + ((uint32_t)b[off + 4] | (uint32_t)b[off + 5] << 8 | (uint32_t)b[off + 6] << 16 |
                        (uint32_t)b[off + 7] << 24);
                    if (j < drop) {
                        off += len;
                    }
                }
                memmove(b + off, b + off + len, size - off - len);
                n = size - len;
                put32(b + 12, recs - 1u);
                put32(b + 16, n - 36u);
                break;
            }
            case 9: /* the payload's records twice */
                memcpy(b + size - 4u, whole + 32u, size - 36u);
                n = 2u * size - 36u;
                put32(b + 16, n - 36u);
                break;
            case 10:
            case 11: { /* a value in a momentum, selection or state record */
                const uint32_t j = extra[lcg() % nextra], len = rbytes[j];
                const uint32_t vals[] = { 0u, 1u, 2u, 3u, 4u, 5u, 0x7FFFu, 0x8000u, 0xFFFFu, 0x80000000u, 0xBF800000u,
                    0x7FC00000u, 0x7F800000u, lcg() };
                const uint32_t v = vals[lcg() % 14u], w = lcg() % 3u == 0u ? 1u : lcg() % 2u ? 2u : 4u;
                const uint32_t o = roff[j] + (len >= w ? (lcg() % (len - w + 1u)) / w * w : 0u);
                for (uint32_t q = 0; q < w && o + q < size - 4u; q++) {
                    b[o + q] = (uint8_t)(v >> (8u * q));
                }
                break;
            }
            default: /* damage to the version-1 blob */
                memcpy(b, v1, size1);
                n = size1;
                b[lcg() % (size1 - 4u)] ^= (uint8_t)(1u << (lcg() % 8u));
                break;
        }
        if (kind >= 4u || lcg() % 2u) {
            fix_crc(b, n); /* reach the checks behind the CRC */
        }
        snprintf(what, sizeof what, "%s, damage %u at %u, %u bytes", name, (unsigned)kind, (unsigned)at, (unsigned)n);
        /* a record left out or repeated, the header made to agree: never this plan's records */
        const char *expect = kind == 8u || kind == 9u ? PLAN_MSG : NULL;
        if (check_blob(&t, b, n, orig, want, p.arena_bytes, what, expect, &loaded, &verdict)) {
            return 1;
        }
        bad_sel += verdict != NULL && strcmp(verdict, "the saved channel selection is invalid") == 0;
        bad_state += verdict != NULL && strcmp(verdict, "the saved training state is invalid") == 0;
        tried++;
    }
    /* every padding byte of a selection record must be zero */
    const uint32_t nrec2 = ref_records(&t, 2u, g_rec);
    for (uint32_t j = 0, at = 32u; j < nrec2; at += 8u + g_rec[j].bytes, j++) {
        if (g_rec[j].kind != 7u) {
            continue;
        }
        tmp_layer l;
        tmp_tensor tin;
        tmp_model_layer(&g_m, g_rec[j].layer, &l, NULL);
        tmp_model_tensor(&g_m, l.in0, &tin, NULL);
        const uint32_t k = p.k[g_rec[j].layer], cin = (uint32_t)tin.dims.c, imp = up4(2u * k);
        const uint32_t pads[] = { 2u * k, 2u * k + 1u, imp + 10u * cin, imp + 10u * cin + 1u };
        for (uint32_t q = 0; q < 4; q++) {
            if (pads[q] < imp || (q >= 2 && pads[q] < imp + 8u * cin + up4(2u * cin))) {
                memcpy(b, whole, size);
                b[at + 8u + pads[q]] = 1;
                fix_crc(b, size);
                snprintf(what, sizeof what, "%s, layer %d padding byte %u", name, (int)g_rec[j].layer, (unsigned)pads[q]);
                if (check_blob(&t, b, size, orig, want, p.arena_bytes, what, "the saved channel selection is invalid",
                    &loaded, &verdict)) {
                    return 1;
                }
                bad_sel++;
            }
        }
    }
    /* the new records' checks were reached */
    CHECK(bad_state > 0 && (n_sel == 0 || bad_sel > 0), "%s: %u bad selections, %u bad states", name,
        (unsigned)bad_sel, (unsigned)bad_state);
    /* nothing fed at all */
    CHECK(read_pieces(&t, b, 0, 0, 1, &m) == TMP_ERR_FORMAT && strcmp(text(m), "not a tinymp parameters file") == 0,
        "%s: empty", name);
    printf("%-28s ok: blob %u B, %u selection records, %u damaged copies (%u bad selections, %u bad states), "
        "%u of them loaded\n", name, (unsigned)size, (unsigned)n_sel, (unsigned)tried, (unsigned)bad_sel,
        (unsigned)bad_state, (unsigned)(loaded - 2u));
    free(whole);
    free(v1);
    free(out);
    free(b);
    free(arena);
    free(orig);
    free(want);
    free(ws);
    return 0;
}

int main(int argc, char **argv) {
    uint8_t *data = NULL;
    uint32_t steps = 0;
    const int rc = load_model_args(argc, argv, &g_m, &data, &steps);
    if (rc >= 0) {
        return rc;
    }
    struct {
        const char *name;
        int32_t method, r;
        int fp32, momentum;
        float ratio;
    } cfg[] = {
        { "last", TMP_METHOD_LAST, 0, 0, 0, 0.0f },
        { "bias", TMP_METHOD_BIAS, 0, 0, 0, 0.0f },
        { "tinymp r=4", TMP_METHOD_TINYMP, 4, 0, 0, 0.0f },
        { "full", TMP_METHOD_FULL, 0, 0, 0, 0.0f },
        { "full fp32", TMP_METHOD_FULL, 0, 1, 0, 0.0f },
        { "tinymp r=2 fp32 momentum", TMP_METHOD_TINYMP, 2, 1, 1, 0.0f },
        { "tinymp r=4 momentum", TMP_METHOD_TINYMP, 4, 0, 1, 0.0f },
        { "last momentum", TMP_METHOD_LAST, 0, 0, 1, 0.0f },
        { "tinymp r=4 ratio 0.3", TMP_METHOD_TINYMP, 4, 0, 0, 0.3f }, /* odd k: a padded selection */
    };
    for (size_t j = 0; j < sizeof cfg / sizeof cfg[0]; j++) {
        tmp_train_options o = tmp_train_options_default(cfg[j].method);
        o.r = cfg[j].r;
        o.storage = cfg[j].fp32 ? TMP_STORAGE_FP32 : TMP_STORAGE_INT8;
        o.momentum = cfg[j].momentum ? 0.9f : 0.0f;
        o.ratio = cfg[j].ratio;
        if (check(cfg[j].name, o, steps, 2u, 1500u)) {
            break;
        }
    }
    free(data);
    return g_fail;
}
