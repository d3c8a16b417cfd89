/*
 * The saved-parameter blob written and read in pieces (tmp_trainer_params_write, and
 * tmp_trainer_params_begin / feed / end) against the one-buffer calls tmp_trainer_params_save
 * and tmp_trainer_params_load, whose results tests/test_trainer.py and tests/device/train_file.py
 * pin (tests/test_params_stream.py builds this with the whole core under the address and
 * undefined-behaviour sanitizers).
 *
 * The reference is an independent reading of the format (docs/TRAINING.md, "saved parameters"):
 * ref_blob() lays out a trainer's parameters as the format says, ref_verdict() applies the
 * checks in their documented order. For every configuration below a trainer takes a few steps,
 * so its parameters differ from the model's. Then:
 * - tmp_trainer_params_save writes ref_blob()'s bytes, and the writer, at every piece size
 *   tried, produces exactly those bytes and then nothing more;
 * - for each of many damaged copies of the blob (bit flips, bytes set, cuts, bytes appended,
 *   header and record fields edited, values set out of range or to NaN, a record left out or
 *   all of them twice, each also with its CRC
 *   made valid again), tmp_trainer_params_load on the whole buffer gives ref_verdict()'s status
 *   and message, and so does reading it in random pieces; the checking pass never changes the arena, a
 *   failed load changes nothing, and a load that succeeds leaves the same arena both ways.
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

/* The arrays a plan saves, in order: per layer int8 weights (kind 1), int32 biases (2), or with
 * fp32 storage only their fp32 masters (3, 4) -- the arrays the plan gives bytes. */
static uint32_t ref_records(const tmp_trainer *t, ref_rec *out) {
    const tmp_train_plan *p = t->p;
    static const int lb[4] = { TMP_LB_W, TMP_LB_B, TMP_LB_WM, TMP_LB_BM };
    uint32_t n = 0;
    for (int32_t i = 0; i < p->num_layers; i++) {
        for (uint32_t kind = 1; kind <= 4u; kind++) {
            if (p->storage == TMP_STORAGE_FP32 && kind <= 2u) {
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
    return n;
}

static uint32_t get32(const uint8_t *d) {
    return (uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 | (uint32_t)d[3] << 24;
}

/* Header (magic TMPP, version 1 (u16), storage (u8), 0, model CRC, records, payload bytes, 12
 * zero bytes), the records (layer u16, kind u8, 0, bytes u32, data), CRC-32 of all that. */
static uint32_t ref_blob(const tmp_trainer *t, const ref_rec *rec, uint32_t nrec, uint8_t *out) {
    uint32_t off = 32u;
    memset(out, 0, 32);
    memcpy(out, "TMPP", 4);
    out[4] = 1;
    out[6] = (uint8_t)t->p->storage;
    put32(out + 8, t->m->crc);
    put32(out + 12, nrec);
    for (uint32_t j = 0; j < nrec; j++) {
        out[off] = (uint8_t)rec[j].layer;
        out[off + 1] = (uint8_t)(rec[j].layer >> 8);
        out[off + 2] = (uint8_t)rec[j].kind;
        out[off + 3] = 0;
        put32(out + off + 4, rec[j].bytes);
        memcpy(out + off + 8, t->arena + rec[j].offset, rec[j].bytes);
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

#define PLAN_MSG "the parameters were saved with another plan (other trainable layers)"

/* The verdict on n bytes, the checks in the documented order. */
static tmp_status ref_verdict(const tmp_trainer *t, const ref_rec *rec, uint32_t nrec, const uint8_t *b, uint32_t n,
    const char **msg) {
    if (n < 36u || memcmp(b, "TMPP", 4) != 0) {
        *msg = "not a tinymp parameters file";
    } else if ((b[4] | b[5] << 8) != 1) {
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
        const uint32_t end = n - 4u;
        uint32_t off = 32u;
        for (uint32_t j = 0; j < nrec; j++) {
            if (off + 8u > end || (uint32_t)(b[off] | b[off + 1] << 8) != (uint32_t)rec[j].layer ||
                b[off + 2] != rec[j].kind || get32(b + off + 4) != rec[j].bytes || off + 8u + rec[j].bytes > end) {
                *msg = PLAN_MSG;
                return TMP_ERR_FORMAT;
            }
            const uint8_t *d = b + off + 8u;
            tmp_layer l;
            tmp_model_layer(&g_m, rec[j].layer, &l, NULL);
            for (uint32_t e = 0; rec[j].kind != 1u && e < rec[j].bytes / 4u; e++) {
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

static ref_rec g_rec[4 * 256];
static uint32_t g_nrec;

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

/* One damaged blob: the pieces must agree with the one-buffer load. */
static int check_blob(tmp_trainer *t, const uint8_t *b, uint32_t n, const uint8_t *orig_arena, uint8_t *want,
    size_t arena_bytes, const char *what, const char *expect, uint32_t *loaded) {
    /* the reference: the whole buffer */
    memcpy(t->arena, orig_arena, arena_bytes);
    const char *m0 = NULL;
    tmp_status s0 = tmp_trainer_params_load(t, b, n, &m0);
    const char *mr = NULL;
    tmp_status sr = ref_verdict(t, g_rec, g_nrec, b, n, &mr);
    CHECK(s0 == sr && strcmp(text(m0), text(mr)) == 0, "%s: %d '%s', the format says %d '%s'", what, (int)s0,
        text(m0), (int)sr, text(mr));
    CHECK(expect == NULL || (s0 == TMP_ERR_FORMAT && strcmp(text(m0), expect) == 0), "%s: '%s', not '%s'", what,
        text(m0), expect);
    if (s0 != TMP_OK) {
        CHECK(memcmp(t->arena, orig_arena, arena_bytes) == 0, "%s: a failed load changed the arena", what);
    }
    memcpy(want, t->arena, arena_bytes);
    memcpy(t->arena, orig_arena, arena_bytes);
    /* pieces: a checking pass, at a random piece size (sometimes byte by byte) */
    const uint32_t maxpiece = lcg() % 8u == 0u ? 0u : 1u + lcg() % 97u;
    const char *m1 = NULL;
    tmp_status s1 = read_pieces(t, b, n, 0, maxpiece, &m1);
    CHECK(s1 == s0 && strcmp(text(m1), text(m0)) == 0, "%s (pieces of up to %u): %d '%s' against %d '%s'", what,
        (unsigned)maxpiece, (int)s1, text(m1), (int)s0, text(m0));
    CHECK(memcmp(t->arena, orig_arena, arena_bytes) == 0, "%s: the checking pass changed the arena", what);
    if (s0 == TMP_OK) {
        /* then the copying pass, in other pieces */
        const char *m2 = NULL;
        CHECK(read_pieces(t, b, n, 1, 1u + lcg() % 500u, &m2) == TMP_OK, "%s: copying pass: %s", what, text(m2));
        CHECK(memcmp(t->arena, want, arena_bytes) == 0, "%s: the pieces loaded other bytes", what);
        (*loaded)++;
    }
    return 0;
}

static int check(const char *name, tmp_train_options o, uint32_t steps, uint32_t mutants) {
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
    tmp_tensor in;
    tmp_model_input(&g_m, &in);
    const uint32_t in_bytes = (uint32_t)in.dims.h * in.dims.w * in.dims.c;
    int8_t *x = malloc(in_bytes);
    for (uint32_t s = 0; s < steps; s++) {
        for (uint32_t j = 0; j < in_bytes; j++) {
            x[j] = (int8_t)(lcg() & 0xFF);
        }
        float loss;
        CHECK(tmp_trainer_step(&t, x, (int32_t)(s % g_m.num_classes), &loss) == TMP_OK, "%s: step", name);
    }
    free(x);
    memcpy(orig, arena, p.arena_bytes);

    /* the writer against the one-buffer save */
    const uint32_t size = tmp_trainer_params_size(&t);
    uint8_t *whole = malloc(size + 64u), *out = malloc(size + 64u), *b = malloc(2u * size + 64u);
    CHECK(size > 36u && tmp_trainer_params_save(&t, whole, size) == TMP_OK, "%s: save", name);
    CHECK(p.num_layers <= 256, "layers");
    g_nrec = ref_records(&t, g_rec);
    CHECK(ref_blob(&t, g_rec, g_nrec, b) == size && memcmp(b, whole, size) == 0, "%s: the saved bytes are not "
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

    /* the blob itself, then damaged copies; the reference loads start from a fresh trainer's
     * parameters, so a successful load changes something */
    CHECK(tmp_trainer_reset(&t) == TMP_OK, "reset");
    memcpy(orig, arena, p.arena_bytes);
    uint32_t loaded = 0, tried = 0;
    char what[96];
    CHECK(check_blob(&t, whole, size, orig, want, p.arena_bytes, "the blob", NULL, &loaded) == 0 && loaded == 1 &&
        memcmp(want, orig, p.arena_bytes) != 0, "%s: the blob itself", name);
    for (uint32_t i = 0; i < mutants; i++) {
        uint32_t n = size;
        memcpy(b, whole, size);
        const uint32_t kind = lcg() % 10u, at = lcg() % size;
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
            default: /* the payload's records twice */
                memcpy(b + size - 4u, whole + 32u, size - 36u);
                n = 2u * size - 36u;
                put32(b + 16, n - 36u);
                break;
        }
        if (kind >= 4u || lcg() % 2u) {
            fix_crc(b, n); /* reach the checks behind the CRC */
        }
        snprintf(what, sizeof what, "%s, damage %u at %u, %u bytes", name, (unsigned)kind, (unsigned)at, (unsigned)n);
        /* a record left out or repeated, the header made to agree: never this plan's records */
        const char *expect = kind >= 8u ? "the parameters were saved with another plan (other trainable layers)" : NULL;
        if (check_blob(&t, b, n, orig, want, p.arena_bytes, what, expect, &loaded)) {
            return 1;
        }
        tried++;
    }
    /* nothing fed at all */
    const char *m = NULL;
    CHECK(read_pieces(&t, b, 0, 0, 1, &m) == TMP_ERR_FORMAT && strcmp(text(m), "not a tinymp parameters file") == 0,
        "%s: empty", name);
    printf("%-24s ok: blob %u B, %u damaged copies, %u of them loaded\n", name, (unsigned)size, (unsigned)tried,
        (unsigned)(loaded - 1u));
    free(whole);
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
    } cfg[] = {
        { "last", TMP_METHOD_LAST, 0, 0, 0 },
        { "bias", TMP_METHOD_BIAS, 0, 0, 0 },
        { "tinymp r=4", TMP_METHOD_TINYMP, 4, 0, 0 },
        { "full", TMP_METHOD_FULL, 0, 0, 0 },
        { "full fp32", TMP_METHOD_FULL, 0, 1, 0 },
        { "tinymp r=2 fp32 momentum", TMP_METHOD_TINYMP, 2, 1, 1 },
    };
    for (size_t j = 0; j < sizeof cfg / sizeof cfg[0]; j++) {
        tmp_train_options o = tmp_train_options_default(cfg[j].method);
        o.r = cfg[j].r;
        o.storage = cfg[j].fp32 ? TMP_STORAGE_FP32 : TMP_STORAGE_INT8;
        o.momentum = cfg[j].momentum ? 0.9f : 0.0f;
        if (check(cfg[j].name, o, steps, 1500u)) {
            break;
        }
    }
    free(data);
    return g_fail;
}
