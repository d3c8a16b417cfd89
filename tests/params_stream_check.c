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
 * order. For every configuration below (and for two plans the TinyTrain selection pass chose
 * from six random samples: tinytrain's, and tinymp's with support samples) a trainer takes a
 * few steps with APU periods of two steps, so its parameters and state differ from the model's
 * and the plan's. Then:
 * - a second trainer that loads the blob and the saved one take the same five further steps:
 *   equal losses and equal blobs after (the uninterrupted run is the reference);
 * - a version-1 blob, loaded into that trainer, writes only its records (and their int8 copies)
 *   and gives it a fresh trainer's momentum and selections, its counters going on in a new
 *   period; so do blobs of the same method saved with other momentum or another ratio;
 * - tmp_trainer_params_save writes ref_blob()'s bytes, and the writer, at every piece size
 *   tried, produces exactly those bytes and then nothing more;
 * - for each of many damaged copies of the blob (bit flips, bytes set, cuts, bytes appended,
 *   header and record fields edited, reserved bytes set, values set out of range or to NaN, a
 *   record left out or all of them twice, values in the momentum, selection and state records,
 *   a momentum or selection record resized or repeated, a record of an unknown kind, damage to
 *   the version-1 blob, each also with its CRC made valid again; every padding byte of every
 *   selection record; a state record without a generator, and one with the counters a wrap
 *   past 2^32 leaves), tmp_trainer_params_load on the whole buffer gives ref_verdict()'s status and
 *   message, and so does reading it in random pieces; the checking pass never changes the
 *   trainer, a failed load changes nothing, and a load that succeeds writes what the format
 *   says (the records it takes, the training state or a fresh one, the counters) and the same
 *   arena and counters both ways.
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
 * exclusion counts (u8, at most min(ceil(1/ratio) - 1, 255)), padding; padding bytes are 0.
 * Returns -1 when the record is invalid for any plan (an importance, an age, the padding after
 * ages or exclusion counts), else 1 when it is another ratio's (the channels, their padding or an
 * exclusion count break this plan's rules), else 0. */
static int ref_sel(const tmp_trainer *t, int32_t layer, const uint8_t *d, uint32_t bytes) {
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
        return -1; /* (never: the reader compares the size first) */
    }
    for (uint32_t j = 0; j < 2u * cin; j++) {
        float f;
        memcpy(&f, d + imp + 4u * j, 4);
        if (!isfinite(f) || f < 0.0f) {
            return -1;
        }
    }
    for (uint32_t j = 0; j < cin; j++) {
        if (get16(d + age + 2u * j) >= 0x8000u) {
            return -1;
        }
    }
    for (uint32_t j = age + 2u * cin; j < excl; j++) {
        if (d[j] != 0) {
            return -1;
        }
    }
    for (uint32_t j = excl + cin; j < bytes; j++) {
        if (d[j] != 0) {
            return -1;
        }
    }
    for (uint32_t j = 0; j < k; j++) {
        const uint32_t c = get16(d + ch + 2u * j);
        if (c >= cin || (j > 0 && c <= get16(d + ch + 2u * j - 2u))) {
            return 1;
        }
    }
    for (uint32_t j = 2u * k; j < imp; j++) {
        if (d[j] != 0) {
            return 1;
        }
    }
    for (uint32_t j = 0; j < cin; j++) {
        if (d[excl + j] > emax) {
            return 1;
        }
    }
    return 0;
}

#define PLAN_MSG "the parameters were saved with another plan (other trainable layers)"
#define RESERVED_MSG "a reserved byte of the parameters file is not zero"

static ref_rec g_rec[8 * 256 + 1];

/* What a load that succeeds takes: the records whose bytes it copies (the data's blob offset,
 * kind, arena offset, bytes), and whether the training state comes with them (state: version
 * 2, and every momentum / selection record of the plan in the blob at the plan's size, none
 * else). */
typedef struct {
    uint32_t n;
    uint32_t from[8 * 256 + 1], kind[8 * 256 + 1], to[8 * 256 + 1], bytes[8 * 256 + 1];
    int state;
} ref_take;

static ref_take g_take;

/* The fresh trainer's arena (tmp_trainer_init): its momentum and selection buffers are what a
 * load without the training state must leave. */
static const uint8_t *g_init;

/* Loads that took the parameters without the training state (all configurations so far). */
static uint32_t g_fresh;

static int ref_state_kind(uint32_t kind) {
    return kind == 5u || kind == 6u || kind == 7u;
}

/* The verdict on n bytes, the checks in the documented order: the header's, then the records in
 * the blob's order, the first error found winning; a record that is neither the plan's next
 * nor a skippable training-state record is "another plan". */
static tmp_status ref_verdict(const tmp_trainer *t, const uint8_t *b, uint32_t n, const char **msg, ref_take *take) {
    const uint32_t version = n >= 6u ? get16(b + 4) : 0u;
    take->n = 0;
    take->state = 0;
    if (n < 36u || memcmp(b, "TMPP", 4) != 0) {
        *msg = "not a tinymp parameters file";
    } else if (version != 1u && version != 2u) {
        *msg = "unsupported parameters file version";
    } else if ((uint64_t)get32(b + 16) + 36u != n) {
        *msg = "truncated or oversized parameters file";
    } else if (tmp_crc32(0, b, n - 4u) != get32(b + n - 4u)) {
        *msg = "CRC-32 mismatch: the parameters file is corrupted";
    } else if (b[7] != 0 || memcmp(b + 20, "\0\0\0\0\0\0\0\0\0\0\0\0", 12) != 0) {
        *msg = RESERVED_MSG;
    } else if (get32(b + 8) != t->m->crc) {
        *msg = "the parameters were saved for another model";
    } else if (b[6] != (uint8_t)t->p->storage) {
        *msg = "the parameters were saved with another storage mode (int8 / fp32)";
    } else {
        const ref_rec *rec = g_rec;
        const uint32_t nexp = ref_records(t, version, g_rec);
        const uint64_t end = n - 4u;
        uint64_t off = 32u;
        uint32_t c = 0, prev = 0, nfile = 0; /* c: the plan's first record not yet met */
        int fresh = 0;
        while (off < end) {
            if (c == nexp) { /* payload after the plan's last record */
                *msg = PLAN_MSG;
                return TMP_ERR_FORMAT;
            }
            if (off + 8u > end) {
                break;
            }
            const uint32_t layer = get16(b + off), kind = b[off + 2], bytes = get32(b + off + 4);
            const uint32_t key = layer * 256u + kind;
            if (b[off + 3] != 0) {
                *msg = RESERVED_MSG;
                return TMP_ERR_FORMAT;
            }
            if (key <= prev || off + 8u + bytes > end) {
                *msg = PLAN_MSG;
                return TMP_ERR_FORMAT;
            }
            prev = key;
            /* the plan's momentum and selection records the blob went past: not in it */
            while (c < nexp && (uint32_t)rec[c].layer * 256u + rec[c].kind < key && ref_state_kind(rec[c].kind)) {
                fresh = 1;
                c++;
            }
            const int same = c < nexp && (uint32_t)rec[c].layer * 256u + rec[c].kind == key;
            if (!same || rec[c].bytes != bytes) {
                if (version < 2u || !ref_state_kind(kind) || layer >= (uint32_t)t->p->num_layers) {
                    *msg = PLAN_MSG;
                    return TMP_ERR_FORMAT;
                }
                fresh = 1; /* another plan's training state: passed over */
                off += 8u + bytes;
                nfile++;
                continue;
            }
            const uint8_t *d = b + off + 8u;
            if (rec[c].kind == 7u) {
                const int sel = ref_sel(t, rec[c].layer, d, rec[c].bytes);
                if (sel < 0) {
                    *msg = "the saved channel selection is invalid";
                    return TMP_ERR_FORMAT;
                }
                fresh |= sel > 0;
            }
            if (rec[c].kind == 8u && get32(d) == 0) {
                *msg = "the saved training state is invalid";
                return TMP_ERR_FORMAT;
            }
            tmp_layer l;
            if (rec[c].kind <= 6u) {
                tmp_model_layer(&g_m, rec[c].layer, &l, NULL);
            }
            for (uint32_t e = 0; rec[c].kind >= 2u && rec[c].kind <= 6u && e < rec[c].bytes / 4u; e++) {
                const uint32_t v = get32(d + 4u * e);
                float f;
                memcpy(&f, &v, 4);
                if (rec[c].kind == 2u && llabs((long long)(int32_t)v) > ref_bias_limit(&l)) {
                    *msg = "a saved bias is out of range";
                    return TMP_ERR_FORMAT;
                }
                if (rec[c].kind >= 3u && !isfinite(f)) {
                    *msg = "a saved parameter is not finite";
                    return TMP_ERR_FORMAT;
                }
            }
            if (rec[c].kind != 8u) {
                take->from[take->n] = (uint32_t)off + 8u;
                take->kind[take->n] = rec[c].kind;
                take->to[take->n] = rec[c].offset;
                take->bytes[take->n] = rec[c].bytes;
                take->n++;
            }
            c++;
            off += 8u + bytes;
            nfile++;
        }
        if (off != end || c != nexp || get32(b + 12) != nfile) {
            *msg = PLAN_MSG;
            return TMP_ERR_FORMAT;
        }
        take->state = version >= 2u && !fresh;
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
    const char **msg, int *state_loaded) {
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
    const tmp_status st = tmp_trainer_params_end(t, &r, msg);
    if (st == TMP_OK && state_loaded != NULL) {
        *state_loaded = r.state_loaded;
    }
    return st;
}

/* The trainer's counters (a version-2 blob's state record carries them). */
static int same_counters(const tmp_trainer *a, const tmp_trainer *b) {
    return a->rng == b->rng && a->steps == b->steps && a->stalled_steps == b->stalled_steps &&
        a->periods == b->periods && a->period_steps == b->period_steps;
}

/* What a load that succeeds must leave, by the format: the arena `from` with the records the
 * reference takes (the state records only with the state), the fresh trainer's momentum and
 * selections when the state does not come, the int8 copies of fp32 masters as loaded (`got`:
 * test_trainer.py checks their values); and the counters: the state record's, or else the ones
 * before with a new period. */
static int check_loaded(const tmp_trainer *t, const tmp_trainer *before, const uint8_t *b, uint32_t n,
    const uint8_t *from, const uint8_t *got, uint8_t *want, size_t arena_bytes, const ref_take *take,
    int state_loaded, const char *what) {
    CHECK(state_loaded == take->state, "%s: the load says the state %s taken, the format says it %s", what,
        state_loaded ? "was" : "was not", take->state ? "is" : "is not");
    memcpy(want, from, arena_bytes);
    for (uint32_t j = 0; j < take->n; j++) {
        if (take->kind[j] <= 4u || take->state) {
            memcpy(want + take->to[j], b + take->from[j], take->bytes[j]);
        }
    }
    const tmp_train_plan *p = t->p;
    /* a loaded state's exclusion counts: an older engine's record (a count above 1) becomes
     * today's, 1 for the channels at its largest count m - 1 (m = ceil(1/ratio)), else 0 */
    const float mw = ceilf(1.0f / p->ratio - 1e-4f);
    const uint32_t emax_old = mw > 256.0f ? 255u : mw < 1.0f ? 0u : (uint32_t)mw - 1u;
    for (uint32_t j = 0; j < take->n && take->state; j++) {
        if (take->kind[j] != 7u) {
            continue;
        }
        for (int32_t i = 0; i < p->num_layers; i++) {
            const tmp_buf *bb = tmp_train_plan_buf(p, TMP_LB_SEL * p->num_layers + i);
            if (bb->offset != take->to[j] || !(p->flags[i] & TMP_TL_APU)) {
                continue;
            }
            tmp_layer l;
            tmp_tensor tin;
            tmp_model_layer(t->m, i, &l, NULL);
            tmp_model_tensor(t->m, l.in0, &tin, NULL);
            const uint32_t cin = l.type == TMP_LAYER_FC ? (uint32_t)(tin.dims.h * tin.dims.w * tin.dims.c)
                                                        : (uint32_t)tin.dims.c;
            const uint32_t imp = up4(2u * p->k[i]);
            uint8_t *e = want + take->to[j] + imp + 8u * cin + up4(2u * cin);
            uint32_t most = 0;
            for (uint32_t c = 0; c < cin; c++) {
                most = e[c] > most ? e[c] : most;
            }
            for (uint32_t c = 0; c < cin && most > 1u; c++) {
                e[c] = e[c] == emax_old ? 1u : 0u;
            }
        }
    }
    for (int32_t i = 0; i < p->num_layers; i++) {
        static const int st[3] = { TMP_LB_VW, TMP_LB_VB, TMP_LB_SEL }, cp[2] = { TMP_LB_W, TMP_LB_B };
        for (int q = 0; q < 3 && !take->state; q++) {
            const tmp_buf *bb = tmp_train_plan_buf(p, st[q] * p->num_layers + i);
            memcpy(want + bb->offset, g_init + bb->offset, bb->size);
        }
        for (int q = 0; q < 2 && p->storage == TMP_STORAGE_FP32; q++) {
            const tmp_buf *bb = tmp_train_plan_buf(p, cp[q] * p->num_layers + i);
            memcpy(want + bb->offset, got + bb->offset, bb->size);
        }
    }
    CHECK(memcmp(got, want, arena_bytes) == 0, "%s: the load wrote other bytes than the format's", what);
    if (take->state) {
        uint8_t sb[20];
        ref_state(t, sb);
        CHECK(memcmp(sb, b + n - 24u, 20) == 0, "%s: the counters are not the saved ones", what);
    } else {
        CHECK(t->rng == before->rng && t->steps == before->steps && t->stalled_steps == before->stalled_steps &&
            t->periods == before->periods && t->period_steps == 0, "%s: without the state the counters go on, "
            "in a new period", what);
    }
    return 0;
}

/* A damaged blob's expected outcome besides the format's verdict: this message, or LOADS_FRESH
 * (loads, without the training state), or NULL (no expectation). */
#define LOADS_FRESH "(loads the parameters only)"

/* One damaged blob: the pieces must agree with the one-buffer load and with the format. *t is
 * left as it came (arena orig_arena, its counters); *verdict = the message (NULL: loaded). */
static int check_blob(tmp_trainer *t, const uint8_t *b, uint32_t n, const uint8_t *orig_arena, uint8_t *want,
    size_t arena_bytes, const char *what, const char *expect, uint32_t *loaded, const char **verdict) {
    const tmp_trainer keep = *t;
    /* the reference: the whole buffer */
    memcpy(t->arena, orig_arena, arena_bytes);
    const char *m0 = NULL;
    int state0 = -1;
    tmp_status s0 = tmp_trainer_params_load(t, b, n, &m0, &state0);
    const char *mr = NULL;
    tmp_status sr = ref_verdict(t, b, n, &mr, &g_take);
    *verdict = mr;
    CHECK(s0 == sr && strcmp(text(m0), text(mr)) == 0, "%s: %d '%s', the format says %d '%s'", what, (int)s0,
        text(m0), (int)sr, text(mr));
    if (expect != NULL && strcmp(expect, LOADS_FRESH) == 0) {
        CHECK(s0 == TMP_OK && state0 == 0, "%s: '%s', state %d: the parameters should have loaded alone", what,
            text(m0), state0);
    } else {
        CHECK(expect == NULL || (s0 == TMP_ERR_FORMAT && strcmp(text(m0), expect) == 0), "%s: '%s', not '%s'", what,
            text(m0), expect);
    }
    uint8_t *got = malloc(arena_bytes + 1u);
    CHECK(got != NULL, "memory");
    memcpy(got, t->arena, arena_bytes);
    if (s0 != TMP_OK) {
        CHECK(memcmp(t->arena, orig_arena, arena_bytes) == 0 && same_counters(t, &keep) && state0 == -1,
            "%s: a failed load changed the trainer", what);
    } else if (check_loaded(t, &keep, b, n, orig_arena, got, want, arena_bytes, &g_take, state0, what)) {
        free(got);
        return 1;
    }
    const tmp_trainer after = *t;
    *t = keep;
    memcpy(t->arena, orig_arena, arena_bytes);
    /* pieces: a checking pass, at a random piece size (sometimes byte by byte) */
    const uint32_t maxpiece = lcg() % 8u == 0u ? 0u : 1u + lcg() % 97u;
    const char *m1 = NULL;
    tmp_status s1 = read_pieces(t, b, n, 0, maxpiece, &m1, NULL);
    CHECK(s1 == s0 && strcmp(text(m1), text(m0)) == 0, "%s (pieces of up to %u): %d '%s' against %d '%s'", what,
        (unsigned)maxpiece, (int)s1, text(m1), (int)s0, text(m0));
    CHECK(memcmp(t->arena, orig_arena, arena_bytes) == 0 && same_counters(t, &keep),
        "%s: the checking pass changed the trainer", what);
    if (s0 == TMP_OK) {
        /* then the copying pass, in other pieces */
        const char *m2 = NULL;
        int state2 = -1;
        CHECK(read_pieces(t, b, n, 1, 1u + lcg() % 500u, &m2, &state2) == TMP_OK, "%s: copying pass: %s", what,
            text(m2));
        CHECK(memcmp(t->arena, got, arena_bytes) == 0 && same_counters(t, &after) && state2 == state0,
            "%s: the pieces loaded other bytes or counters", what);
        (*loaded)++;
        g_fresh += state0 == 0;
    }
    free(got);
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
    uint8_t *init = malloc(p.arena_bytes + 1u);
    memcpy(init, arena, p.arena_bytes);
    g_init = init;
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
    int state = 0;
    CHECK(tmp_trainer_params_load(&t2, whole, size, &m, &state) == TMP_OK && state == 1, "%s: load: %s", name,
        text(m));
    g_seed = seed0;
    if (run_steps(&t2, 5, lb)) {
        return 1;
    }
    CHECK(memcmp(la, lb, sizeof la) == 0, "%s: the loaded trainer's losses differ from the saved one's", name);
    CHECK(tmp_trainer_params_save(&t, out, size) == TMP_OK && tmp_trainer_params_save(&t2, blob2, size) == TMP_OK &&
        memcmp(out, blob2, size) == 0, "%s: after 5 more steps the trainers differ", name);
    /* a version-1 blob (parameters only) into that trainer, its state now its own: the
     * parameters become the blob's, the training state a fresh trainer's */
    const tmp_trainer before = t2;
    memcpy(want, arena2, p.arena_bytes);
    uint8_t *prior = malloc(p.arena_bytes + 1u), *got = malloc(p.arena_bytes + 1u);
    memcpy(prior, arena2, p.arena_bytes);
    CHECK(tmp_trainer_params_load(&t2, v1, size1, &m, &state) == TMP_OK && state == 0, "%s: version 1: %s", name,
        text(m));
    const char *vv = NULL;
    CHECK(ref_verdict(&t2, v1, size1, &vv, &g_take) == TMP_OK && g_take.n == nrec1 && !g_take.state, "%s: v1 "
        "reference: %s", name, text(vv));
    memcpy(got, arena2, p.arena_bytes);
    if (check_loaded(&t2, &before, v1, size1, prior, got, want, p.arena_bytes, &g_take, state, "version 1")) {
        return 1;
    }
    free(prior);
    free(got);
    free(arena2);
    free(blob2);

    /* the blob itself, then damaged copies; the loads start from the trainer five steps on
     * (other parameters, momentum and selections than the blob's), so a load changes something */
    memcpy(orig, arena, p.arena_bytes);
    uint32_t loaded = 0, tried = 0, bad_sel = 0, bad_state = 0, n_sel = 0, pads = 0;
    const uint32_t fresh0 = g_fresh;
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
        const uint32_t kind = lcg() % 16u, at = lcg() % size;
        const char *expect = NULL;
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
            case 4: { /* a header field: version, storage, model CRC, record count, payload, or
                       * a reserved byte */
                static const uint8_t offs[] = { 4, 6, 8, 12, 16, 7, 20, 23, 27, 31 };
                const uint32_t o = offs[lcg() % 10u];
                const uint32_t vals[] = { 0u, 1u, 2u, 0xFFFFFFFFu, size, size - 36u, size - 40u, lcg() };
                const uint32_t v = vals[lcg() % 8u];
                if (o == 4u) {
                    b[4] = (uint8_t)v;
                    b[5] = (uint8_t)(v >> 8);
                } else if (o == 6u || o == 7u || o >= 20u) {
                    b[o] = (uint8_t)v;
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
                /* a momentum or selection record: the parameters load, the state is fresh */
                expect = b[off + 2] >= 5u && b[off + 2] <= 7u ? LOADS_FRESH : PLAN_MSG;
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
                expect = PLAN_MSG;
                break;
            case 12: { /* a momentum or selection record four bytes longer or shorter (another
                        * plan's size): skipped, the state fresh */
                const uint32_t j = extra[lcg() % nextra];
                if (rkind[j] == 8u) {
                    expect = PLAN_MSG; /* the state record's size is fixed */
                } else {
                    expect = LOADS_FRESH;
                }
                const int longer = lcg() % 2u == 0u || rbytes[j] < 4u;
                const uint32_t cut = roff[j] + rbytes[j]; /* where the record ends */
                if (longer) {
                    memmove(b + cut + 4u, b + cut, size - cut);
                    memset(b + cut, (int)(lcg() & 0xFF), 4);
                    n = size + 4u;
                } else {
                    memmove(b + cut - 4u, b + cut, size - cut);
                    n = size - 4u;
                }
                put32(b + roff[j] - 4u, longer ? rbytes[j] + 4u : rbytes[j] - 4u);
                put32(b + 16, n - 36u);
                break;
            }
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
            case 13: { /* a momentum, selection or state record twice in a row: records ascend */
                const uint32_t j = extra[lcg() % nextra], len = 8u + rbytes[j], cut = roff[j] + rbytes[j];
                memmove(b + cut + len, b + cut, size - cut);
                memcpy(b + cut, b + roff[j] - 8u, len);
                n = size + len;
                put32(b + 12, get32(b + 12) + 1u);
                put32(b + 16, n - 36u);
                expect = PLAN_MSG;
                break;
            }
            case 14: { /* a record of a kind the format does not have, or the state record's
                        * kind at a layer, placed in order before the state record */
                static const uint8_t kinds[] = { 8, 9, 16, 255 };
                const uint32_t cut = size - 32u; /* the state record (28 bytes), the CRC */
                memmove(b + cut + 12u, b + cut, 32u);
                put32(b + cut, (uint32_t)(g_m.num_layers - 1u) | (uint32_t)kinds[lcg() % 4u] << 16);
                put32(b + cut + 4u, 4u);
                put32(b + cut + 8u, 0u);
                n = size + 12u;
                put32(b + 12, get32(b + 12) + 1u);
                put32(b + 16, n - 36u);
                expect = PLAN_MSG;
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
        if (check_blob(&t, b, n, orig, want, p.arena_bytes, what, expect, &loaded, &verdict)) {
            return 1;
        }
        bad_sel += verdict != NULL && strcmp(verdict, "the saved channel selection is invalid") == 0;
        bad_state += verdict != NULL && strcmp(verdict, "the saved training state is invalid") == 0;
        tried++;
    }
    const uint32_t damaged_loaded = loaded - 2u;
    if (nextra > 1u) {
        /* version 1 holds parameters only: the version-2 blob, its state record cut, relabelled */
        memcpy(b, whole, size - 28u);
        b[4] = 1u;
        put32(b + 12, nr - 1u);
        put32(b + 16, size - 28u - 36u);
        fix_crc(b, size - 28u);
        if (check_blob(&t, b, size - 28u, orig, want, p.arena_bytes, "a version-1 blob with training state",
            PLAN_MSG, &loaded, &verdict)) {
            return 1;
        }
    }
    /* blobs of the same method saved with other momentum, or another ratio (other selection
     * sizes): the parameters load, the training state starts afresh */
    uint32_t foreign = 0;
    for (int other = 0; other < 3; other++) {
        tmp_train_options o2 = o;
        if (other > 0 && o.method != TMP_METHOD_TINYMP && o.method != TMP_METHOD_TINYTRAIN) {
            continue; /* the other methods train every channel: the planner takes no other ratio */
        }
        if (other == 0) {
            o2.momentum = o.momentum > 0.0f ? 0.0f : 0.9f;
        } else if (other == 1) {
            o2.ratio = o.ratio == 0.5f ? 0.3f : 0.5f;
        } else { /* near the default 0.25: selection records often of the same size */
            o2.ratio = o.ratio == 0.2f ? 0.24f : 0.2f;
        }
        tmp_train_plan p2;
        void *ws2 = calloc(1, wsz + 8u);
        CHECK(tmp_train_plan_make(&g_m, &o2, ws2, wsz, &p2, &err) == TMP_OK, "%s: other plan", name);
        uint8_t *arena3 = calloc(1, p2.arena_bytes + 8u);
        tmp_trainer t3;
        CHECK(tmp_trainer_init(&t3, &g_m, &p2, arena3, p2.arena_bytes, 0.05f, 5u) == TMP_OK, "%s: init 3", name);
        t3.period = period;
        if (run_steps(&t3, steps, NULL)) {
            return 1;
        }
        const uint32_t size3 = tmp_trainer_params_size(&t3);
        uint8_t *blob3 = malloc(size3 + 4u);
        CHECK(tmp_trainer_params_save(&t3, blob3, size3) == TMP_OK, "%s: save 3", name);
        /* another plan's state is another set of records, unless that option changes nothing */
        const int differs = size3 != size || memcmp(blob3, whole, 32) != 0 ||
            blob_records(blob3, size3, roff, rkind, rbytes, 8 * 256 + 1) != nr;
        snprintf(what, sizeof what, "%s, saved with %s", name, other == 0 ? "other momentum" : "another ratio");
        /* (a selection of the same size may fit this plan: then its state is taken) */
        if (check_blob(&t, blob3, size3, orig, want, p.arena_bytes, what, differs && other < 2 ? LOADS_FRESH : NULL,
            &loaded, &verdict)) {
            return 1;
        }
        CHECK(verdict == NULL, "%s: '%s'", what, verdict);
        foreign += differs && other < 2;
        free(blob3);
        free(arena3);
        free(ws2);
    }
    blob_records(whole, size, roff, rkind, rbytes, 8 * 256 + 1);
    CHECK(foreign >= 1, "%s: no other plan's blob", name);
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
        const uint32_t ages = imp + 8u * cin, excl = ages + up4(2u * cin);
        for (uint32_t o = 0; o < g_rec[j].bytes; o++) {
            if (!(o >= 2u * k && o < imp) && !(o >= ages + 2u * cin && o < excl) && !(o >= excl + cin)) {
                continue; /* not a padding byte */
            }
            memcpy(b, whole, size);
            b[at + 8u + o] = (uint8_t)(1u << (o % 8u));
            fix_crc(b, size);
            snprintf(what, sizeof what, "%s, layer %d padding byte %u", name, (int)g_rec[j].layer, (unsigned)o);
            /* after the channels: another ratio's channel list (a state started afresh); after
             * ages or exclusion counts: no plan's */
            if (check_blob(&t, b, size, orig, want, p.arena_bytes, what, o < imp ? LOADS_FRESH :
                "the saved channel selection is invalid", &loaded, &verdict)) {
                return 1;
            }
            bad_sel += o >= imp;
            pads++;
        }
    }
    /* the state record (the last one; its payload ends before the CRC): a generator at 0 is
     * invalid; counters as they stand after a wrap past 2^32 (more stalled steps, and steps into
     * the period, than steps) load as they are */
    for (int c = 0; c < 2; c++) {
        memcpy(b, whole, size);
        if (c == 0) {
            put32(b + size - 24u, 0u);
        } else {
            put32(b + size - 20u, 5u);
            put32(b + size - 16u, 0xFFFFFFFFu);
            put32(b + size - 8u, 0xFFFFFFF0u);
        }
        fix_crc(b, size);
        if (check_blob(&t, b, size, orig, want, p.arena_bytes, c == 0 ? "a state record without a generator" :
            "a state record with wrapped counters", c == 0 ? "the saved training state is invalid" : NULL,
            &loaded, &verdict)) {
            return 1;
        }
        CHECK(c == 0 || verdict == NULL, "%s: wrapped counters: '%s'", name, text(verdict));
        bad_state += c == 0;
    }
    /* the new records' checks were reached */
    CHECK(bad_state > 0 && (n_sel == 0 || bad_sel > 0), "%s: %u bad selections, %u bad states", name,
        (unsigned)bad_sel, (unsigned)bad_state);
    /* nothing fed at all */
    CHECK(read_pieces(&t, b, 0, 0, 1, &m, NULL) == TMP_ERR_FORMAT && strcmp(text(m), "not a tinymp parameters file") == 0,
        "%s: empty", name);
    /* loads without the state: other plans' blobs, and damaged copies without a momentum or
     * selection record or with one of another size (when the blob has any) */
    CHECK(g_fresh - fresh0 > foreign + (nextra > 1u ? 1u : 0u), "%s: %u loads without the state", name,
        (unsigned)(g_fresh - fresh0));
    printf("%-28s ok: blob %u B, %u selection records, %u padding bytes, %u damaged copies (%u bad selections, "
        "%u bad states), %u of them loaded, %u loads without the training state\n", name, (unsigned)size,
        (unsigned)n_sel, (unsigned)pads, (unsigned)tried, (unsigned)bad_sel, (unsigned)bad_state,
        (unsigned)damaged_loaded, (unsigned)(g_fresh - fresh0));
    free(whole);
    free(v1);
    free(out);
    free(b);
    free(arena);
    free(orig);
    free(want);
    free(init);
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
            free(data);
            return g_fail;
        }
    }
    /* plans chosen by the TinyTrain selection pass over a few samples: tinytrain's own, and
     * tinymp's initial selection from support samples */
    const int32_t fm[] = { TMP_METHOD_TINYTRAIN, TMP_METHOD_TINYMP };
    for (size_t j = 0; j < sizeof fm / sizeof fm[0] && g_fail == 0; j++) {
        tmp_train_options o = tmp_train_options_default(fm[j]);
        const tmp_train_options so = tmp_train_selection_options(&o);
        tmp_train_plan sp;
        tmp_train_error err;
        const size_t wsz = tmp_train_workspace_size(&g_m);
        void *ws = calloc(1, wsz + 8u);
        CHECK(ws != NULL && tmp_train_plan_make(&g_m, &so, ws, wsz, &sp, &err) == TMP_OK, "selection plan: %s",
            text(err.msg));
        uint8_t *sarena = calloc(1, sp.arena_bytes + 8u);
        tmp_trainer ft;
        CHECK(sarena != NULL && tmp_trainer_init(&ft, &g_m, &sp, sarena, sp.arena_bytes, 0.05f, 7u) == TMP_OK,
            "selection trainer");
        if (run_steps(&ft, 6u, NULL) == 0) {
            o.fisher = &ft;
            check(j == 0 ? "tinytrain" : "tinymp r=4 support", o, steps, 2u, 1500u);
        }
        free(sarena);
        free(ws);
    }
    free(data);
    return g_fail;
}
