/*
 * Suites "train-r4" and "train-r2": instructions per MAC of the fp32 Gradient-Condensing
 * backward kernels of the core (core/train) at patch size r = 4 and r = 2, on
 * MobileNetV2-w0.35@128-like layer shapes, and issue 7's target: fp32 condensed backward
 * <= 2.0 instructions per MAC.
 *
 * MACs are counted exactly as the planner counts them (bwd_macs() in core/tmp_train_plan.c),
 * with P = ceil(H'/r) * ceil(W'/r) patches of the layer's OUTPUT grid, k = selected input channels
 * (all of them here), taps = kh * kw:
 *     pwconv_dx  P * cout * cin               conv_dw_gc (pointwise)  P * k * cout
 *     dwconv_dx  cin * taps + P * cin         dwconv_dw_gc            P * k
 *     conv_dx    cout * taps * cin + P * cout * cin     conv_dw_gc (3x3)  P * k * cout
 * The weight-gradient kernels work on one output channel (depthwise: one selected channel) per
 * call; a case times the loop over all of a layer's channels, as the trainer's backward_layer()
 * runs it, so the per-call overhead (argument checks, patch count) is included.
 * gbar and gc_sums do no MACs: they are reported per element (gbar: gradient-map elements
 * P * C of the layer's output; gc_sums: input elements H * W * k summed into the window sums)
 * and are not part of the target. Nor is the int8 weight update (sgd_s8_at, per weight updated:
 * tmp_sgd_s8_stochastic_at as the trainer calls it, one row of k selected input channels per
 * output channel by index, or one strided depthwise channel, with APU's importance sums).
 *
 * Data: gradients uniform in (-1, 1) with no zeros (the kernels skip zero gradients: this is the
 * full work), int8 weights and activations uniform, wscale in [0.002, 0.02), window sums int16
 * (the type tmp_gc_xs_type() gives at r <= 4, strides <= 2), masks random (r = 4: counts, r = 2:
 * bits, as tmp_mask_kind_for() chooses), bias gradient on. Shapes: TensorFlow "same" padding.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "train/tmp_train_kernels.h"

enum { T_PW_DX, T_DW_GC, T_DW_DX, T_DWDW_GC, T_CONV_DX, T_GBAR, T_SUMS, T_SGD, T_KINDS };

static const char *const kind_name[T_KINDS] = {"pwconv_dx", "conv_dw_gc", "dwconv_dx",
    "dwconv_dw_gc", "conv_dx", "grad_gbar", "gc_sums", "sgd_s8_at"};

typedef struct {
    int kind;
    int32_t r;
    int32_t ih, iw, ic; /* input */
    int32_t oh, ow, oc; /* output */
    int32_t k, stride, pad; /* filter size, stride, pad_t = pad_l */
} tcase;

/* buffers of the current case (static: the program's RAM is 4 MiB) */
static int8_t g_in[49152] __attribute__((aligned(8)));
static int8_t g_w[40960] __attribute__((aligned(8)));
static float g_wscale[512];
static float g_gbar[16384];
static float g_dx[16384];
static int32_t g_xs[16384]; /* int16 [P][k] (or int32) */
static float g_dw[4096];
static uint8_t g_mask[16384];
static float g_db[512];
static float g_scratch[512];
static uint16_t g_idx[512];
static tmp_status g_status;

/* uniform in (-1, 1), never 0 */
static float rand_grad(void) {
    const int32_t v = (int32_t)bench_rand() >> 8; /* [-2^23, 2^23) */
    return (float)(v != 0 ? v : 1) * (1.0f / 8388608.0f);
}

static int32_t cdiv(int32_t a, int32_t b) {
    return (a + b - 1) / b;
}

static tmp_mask_kind mask_kind(int32_t r) {
    return tmp_mask_kind_for(r);
}

/* a case whose data would not fit the buffers above runs nothing and reports an error */
static int fits(const tcase *c) {
    if (c->kind == T_SGD) {
        return (uint32_t)(c->ic * (c->stride == 0 ? c->oc : 9)) <= sizeof g_w && c->k <= c->ic &&
            c->k <= 512 && c->oc <= 512;
    }
    const uint32_t P = (uint32_t)(cdiv(c->oh, c->r) * cdiv(c->ow, c->r));
    const uint32_t Q = (uint32_t)(cdiv(c->ih, c->r) * cdiv(c->iw, c->r));
    const uint32_t taps = (uint32_t)(c->k * c->k);
    const uint32_t nw = c->kind == T_PW_DX ? (uint32_t)(c->ic * c->oc)
        : c->kind == T_DW_DX ? taps * (uint32_t)c->ic
        : c->kind == T_CONV_DX ? taps * (uint32_t)(c->ic * c->oc) : 0u;
    return (c->kind != T_SUMS || (uint32_t)(c->ih * c->iw * c->ic) <= sizeof g_in) &&
        nw <= sizeof g_w && (uint32_t)c->oc <= 512u &&
        (uint32_t)c->ic <= 512u && P * (uint32_t)c->oc <= 16384u && Q * (uint32_t)c->ic <= 16384u &&
        P * (uint32_t)c->ic <= 16384u && taps * (uint32_t)c->ic <= 4096u &&
        P * (uint32_t)c->oc <= sizeof g_mask &&
        (c->kind != T_SGD || ((uint32_t)(c->ic * c->oc) <= sizeof g_w && c->k <= c->ic));
}

static void setup(const void *arg) {
    const tcase *c = (const tcase *)arg;
    g_status = TMP_OK;
    if (!fits(c)) {
        return;
    }
    bench_seed(0xBAC4u + (uint32_t)c->kind * 977u + (uint32_t)(c->ic * 31 + c->oc) +
        (uint32_t)c->r * 7919u);
    const int32_t P = cdiv(c->oh, c->r) * cdiv(c->ow, c->r);
    if (c->kind == T_SUMS) {
        bench_fill_s8(g_in, (uint32_t)(c->ih * c->iw * c->ic));
    }
    bench_fill_s8(g_w, (uint32_t)sizeof g_w);
    for (int32_t i = 0; i < 512; i++) {
        g_wscale[i] = 0.002f + 0.018f * (float)(bench_rand() >> 8) * (1.0f / 16777216.0f);
        g_db[i] = 0.0f;
    }
    for (int32_t i = 0; i < P * c->oc; i++) {
        g_gbar[i] = rand_grad();
    }
    memset(g_dx, 0, sizeof g_dx);
    memset(g_dw, 0, sizeof g_dw);
    if (c->kind == T_SGD) { /* gradients of the k selected channels, every 4th channel selected */
        for (int32_t i = 0; i < c->k; i++) {
            g_dw[i] = rand_grad();
            g_idx[i] = (uint16_t)((i * 4) % c->ic);
        }
    }
    /* window sums: int16 in +-4000 (a 4x4 window of int8 + offset is within +-4080) */
    int16_t *xs = (int16_t *)(void *)g_xs;
    const int32_t nxs = P * c->ic;
    for (int32_t i = 0; i < nxs; i++) {
        xs[i] = (int16_t)((int32_t)(bench_rand() % 8001u) - 4000);
    }
    if (mask_kind(c->r) == TMP_MASK_COUNTS) {
        /* counts in [0, r*r] (border patches are full in these shapes: h, w multiples of r) */
        for (int32_t i = 0; i < P * c->oc; i++) {
            g_mask[i] = (uint8_t)(bench_rand() % (uint32_t)(c->r * c->r + 1));
        }
    } else {
        for (uint32_t i = 0; i < sizeof g_mask; i++) {
            g_mask[i] = (uint8_t)(bench_rand() >> 24);
        }
    }
}

static void run(const void *arg) {
    const tcase *c = (const tcase *)arg;
    const tmp_dims id = {c->ih, c->iw, c->ic};
    const tmp_dims od = {c->oh, c->ow, c->oc};
    const tmp_filter_dims fd = {c->k, c->k};
    const tmp_grad_conv_params gp = {c->r, c->stride, c->stride, c->pad, c->pad};
    tmp_status s = TMP_OK;
    if (!fits(c)) {
        g_status = TMP_ERR_SIZE;
        return;
    }
    switch (c->kind) {
    case T_PW_DX:
        s = tmp_pwconv_dx_f32(c->r, &id, g_w, g_wscale, &od, g_gbar, g_dx);
        break;
    case T_DW_GC: /* conv / pointwise weight gradient: the sums as floats once (in g_dx, unused
                   * here), then one call per output channel, as backward_layer() does */
        s = tmp_gc_sums_f32(TMP_XS_S16, g_xs,
            cdiv(c->oh, c->r) * cdiv(c->ow, c->r) * c->ic, g_dx);
        for (int32_t o = 0; o < c->oc && s == TMP_OK; o++) {
            s = tmp_conv_dw_gc_f32(&gp, &od, g_gbar, o, g_dx, c->ic, 0.05f, &fd, g_dw);
        }
        break;
    case T_DW_DX:
        s = tmp_dwconv_dx_f32(&gp, &id, &fd, g_w, g_wscale, &od, g_gbar, g_dx, g_scratch);
        break;
    case T_DWDW_GC: /* depthwise weight gradient: one call per selected channel */
        for (int32_t j = 0; j < c->ic && s == TMP_OK; j++) {
            s = tmp_dwconv_dw_gc_f32(&gp, &od, g_gbar, j, TMP_XS_S16, g_xs, c->ic, j, 0.05f, &fd,
                g_dw);
        }
        break;
    case T_CONV_DX:
        s = tmp_conv_dx_f32(&gp, &id, &fd, g_w, g_wscale, &od, g_gbar, g_dx, g_scratch);
        break;
    case T_GBAR: /* in place, with the bias gradient, as the trainer calls it */
        s = tmp_grad_gbar_f32(&od, c->r, g_gbar, mask_kind(c->r), g_mask, g_gbar, g_db);
        break;
    case T_SUMS:
        s = tmp_gc_sums_s8(&gp, &id, g_in, 5, &od, NULL, c->ic, TMP_XS_S16, g_xs);
        break;
    case T_SGD: { /* as backward_layer() updates a layer in place; lr 0.01 */
        uint32_t state = 0x9E3779B9u;
        if (c->stride == 0) { /* pointwise: one row of k selected input channels per output */
            for (int32_t o = 0; o < c->oc && s == TMP_OK; o++) {
                s = tmp_sgd_s8_stochastic_at(c->k, g_w + o * c->ic, g_idx, 1, g_dw, 0.01f,
                    g_wscale[o], g_dx, &state);
            }
        } else { /* depthwise: the taps of each of k channels, strided by the channel count */
            for (int32_t j = 0; j < c->k && s == TMP_OK; j++) {
                const int32_t ch = g_idx[j];
                s = tmp_sgd_s8_stochastic_at(c->oc, g_w + ch, NULL, c->ic, g_dw, 0.01f,
                    g_wscale[ch], g_dx + ch, &state);
            }
        }
        break;
    }
    default:
        s = TMP_ERR_ARG;
        break;
    }
    g_status = s;
}

static int last_error(void) {
    return g_status != TMP_OK;
}

#define STR_(x) #x
#define STR(x) STR_(x)
#define PG(h, w, r) ((uint32_t)(((h) + (r) - 1) / (r)) * (uint32_t)(((w) + (r) - 1) / (r)))
#define SO(h, s) (((h) + (s) - 1) / (s)) /* "same" output size */
#define SPAD(h, s) ((((SO(h, s) - 1) * (s) + 3 - (h)) > 0 ? ((SO(h, s) - 1) * (s) + 3 - (h)) : 0) / 2)
#define TGT 200, 200 /* the target, 2.00 instructions per MAC */
#define NOREF -1, -1

/* pointwise h x w x ci -> co: input gradient and weight gradient (all ci selected) */
#define PW_DX(h, w, ci, co, r)                                                                    \
    {"pwconv_dx", "1x1 " STR(h) "x" STR(w) "x" STR(ci) "->" STR(co), "MAC",                     \
        PG(h, w, r) * (co) * (ci), TGT, setup, run,                                             \
        &(const tcase){T_PW_DX, r, h, w, ci, h, w, co, 1, 1, 0}}
#define PW_DW(h, w, ci, co, r)                                                                    \
    {"conv_dw_gc", "1x1 " STR(h) "x" STR(w) "x" STR(ci) "->" STR(co), "MAC",                    \
        PG(h, w, r) * (ci) * (co), TGT, setup, run,                                             \
        &(const tcase){T_DW_GC, r, h, w, ci, h, w, co, 1, 1, 0}}
/* depthwise 3x3, stride s, on h x w x c */
#define DW_DX(h, w, c, s, r)                                                                      \
    {"dwconv_dx", "3x3 " STR(h) "x" STR(w) "x" STR(c) " s" STR(s), "MAC",                       \
        (c) * 9u + PG(SO(h, s), SO(w, s), r) * (c), TGT, setup, run,                            \
        &(const tcase){T_DW_DX, r, h, w, c, SO(h, s), SO(w, s), c, 3, s, SPAD(h, s)}}
#define DW_DW(h, w, c, s, r)                                                                      \
    {"dwconv_dw_gc", "3x3 " STR(h) "x" STR(w) "x" STR(c) " s" STR(s), "MAC",                    \
        PG(SO(h, s), SO(w, s), r) * (c), TGT, setup, run,                                       \
        &(const tcase){T_DWDW_GC, r, h, w, c, SO(h, s), SO(w, s), c, 3, s, SPAD(h, s)}}
/* full conv 3x3, stride s, h x w x ci -> co */
#define CV_DX(h, w, ci, co, s, r)                                                                 \
    {"conv_dx", "3x3 " STR(h) "x" STR(w) "x" STR(ci) "->" STR(co) " s" STR(s), "MAC",          \
        (co) * 9u * (ci) + PG(SO(h, s), SO(w, s), r) * (co) * (ci), TGT, setup, run,           \
        &(const tcase){T_CONV_DX, r, h, w, ci, SO(h, s), SO(w, s), co, 3, s, SPAD(h, s)}}
#define CV_DW(h, w, ci, co, s, r)                                                                 \
    {"conv_dw_gc", "3x3 " STR(h) "x" STR(w) "x" STR(ci) "->" STR(co) " s" STR(s), "MAC",       \
        PG(SO(h, s), SO(w, s), r) * (ci) * (co), TGT, setup, run,                               \
        &(const tcase){T_DW_GC, r, h, w, ci, SO(h, s), SO(w, s), co, 3, s, SPAD(h, s)}}
/* gbar on a layer output h x w x c; gc_sums of an h x w x c input of a 3x3 (1x1) stride-s layer */
#define GBAR(h, w, c, r)                                                                          \
    {"grad_gbar", "out " STR(h) "x" STR(w) "x" STR(c), "elem", PG(h, w, r) * (c), NOREF, setup,  \
        run, &(const tcase){T_GBAR, r, h, w, c, h, w, c, 1, 1, 0}}
#define SUMS(h, w, c, s, r)                                                                       \
    {"gc_sums", "in " STR(h) "x" STR(w) "x" STR(c) " s" STR(s), "elem",                           \
        (uint32_t)(h) * (w) * (c), NOREF, setup, run,                                           \
        &(const tcase){T_SUMS, r, h, w, c, SO(h, s), SO(w, s), c, 3, s, SPAD(h, s)}}

/* the update of a pointwise layer ci -> co with k input channels selected, and of a depthwise
 * 3x3 layer of c channels with k selected (ic = c, oc = 9 taps, stride != 0 marks it) */
#define SGD_PW(ci, co, k)                                                                         \
    {"sgd_s8_at", "1x1 " STR(ci) "->" STR(co) " k" STR(k), "weight", (uint32_t)(co) * (k), NOREF, \
        setup, run, &(const tcase){T_SGD, 1, 1, 1, ci, 1, 1, co, k, 0, 0}}
#define SGD_DW(c, k)                                                                              \
    {"sgd_s8_at", "3x3 dw " STR(c) " k" STR(k), "weight", 9u * (k), NOREF, setup, run,           \
        &(const tcase){T_SGD, 1, 1, 1, c, 1, 1, 9, k, 1, 0}}

/* MobileNetV2-w0.35@128-like layers (first conv, depthwise, pointwise expand and project) */
#define LAYERS(r)                                                                                 \
    PW_DX(32, 32, 8, 48, r), PW_DX(16, 16, 48, 16, r), PW_DX(16, 16, 16, 96, r),                  \
    PW_DX(8, 8, 144, 24, r), PW_DX(8, 8, 192, 32, r), PW_DX(4, 4, 336, 56, r),                    \
    PW_DX(4, 4, 336, 112, r),                                                                     \
    PW_DW(32, 32, 8, 48, r), PW_DW(16, 16, 48, 16, r), PW_DW(16, 16, 16, 96, r),                  \
    PW_DW(8, 8, 144, 24, r), PW_DW(8, 8, 192, 32, r), PW_DW(4, 4, 336, 56, r),                    \
    PW_DW(4, 4, 336, 112, r),                                                                     \
    DW_DX(32, 32, 48, 1, r), DW_DX(32, 32, 48, 2, r), DW_DX(16, 16, 96, 1, r),                    \
    DW_DX(8, 8, 192, 1, r), DW_DX(4, 4, 336, 1, r),                                               \
    DW_DW(32, 32, 48, 1, r), DW_DW(32, 32, 48, 2, r), DW_DW(16, 16, 96, 1, r),                    \
    DW_DW(8, 8, 192, 1, r), DW_DW(4, 4, 336, 1, r),                                               \
    CV_DX(128, 128, 3, 16, 2, r), CV_DW(128, 128, 3, 16, 2, r),                                   \
    GBAR(64, 64, 16, r), GBAR(32, 32, 48, r), GBAR(16, 16, 96, r), GBAR(4, 4, 112, r),            \
    SUMS(128, 128, 3, 2, r), SUMS(32, 32, 8, 1, r), SUMS(32, 32, 48, 2, r),                       \
    SUMS(8, 8, 192, 1, r),                                                                        \
    SGD_PW(336, 112, 84), SGD_PW(56, 336, 14), SGD_DW(336, 84)

static const bench_case cases_r4[] = {LAYERS(4)};
static const bench_case cases_r2[] = {LAYERS(2)};

#define N_CASES ((int)(sizeof cases_r4 / sizeof cases_r4[0]))

static bench_result results_r4[N_CASES];
static bench_result results_r2[N_CASES];

static void print_ratio(uint64_t insns, uint64_t work) {
    const uint64_t x100 = (insns * 100u + work / 2u) / work;
    printf("%lu.%02lu", (unsigned long)(x100 / 100u), (unsigned long)(x100 % 100u));
}

/* issue 7's target: every MAC row, each kernel over its shapes (MAC-weighted: total instructions
 * / total MACs) and all MAC rows together (MAC-weighted) */
static void summary(const bench_suite *s) {
    const uint64_t target_x100 = 200u;
    uint64_t tot_i = 0, tot_w = 0;
    int rows = 0, pass_rows = 0;
    printf("TARGET (issue 7): fp32 condensed backward <= 2.00 instructions per MAC, r = %ld\n",
        (long)((const tcase *)s->cases[0].arg)->r);
    for (int kind = 0; kind < T_KINDS; kind++) {
        uint64_t ki = 0, kw = 0;
        int n = 0, npass = 0;
        for (int i = 0; i < s->count; i++) {
            const tcase *c = (const tcase *)s->cases[i].arg;
            if (c->kind != kind) {
                continue;
            }
            const uint64_t ins = s->results[i].instructions;
            const uint64_t w = s->cases[i].work;
            ki += ins;
            kw += w;
            n++;
            npass += ins * 100u <= target_x100 * w;
        }
        if (n == 0) {
            continue;
        }
        if (kind == T_GBAR || kind == T_SUMS || kind == T_SGD) {
            printf("  %-13s (no MACs)        %2d shapes, element-weighted ", kind_name[kind], n);
            print_ratio(ki, kw);
            printf(" instructions per %s: not part of the target\n",
                kind == T_SGD ? "weight" : "element");
            continue;
        }
        tot_i += ki;
        tot_w += kw;
        rows += n;
        pass_rows += npass;
        printf("  %-13s %2d of %2d shapes <= 2.00; MAC-weighted over its shapes ", kind_name[kind],
            npass, n);
        print_ratio(ki, kw);
        printf("  %s\n", ki * 100u <= target_x100 * kw ? "PASS" : "FAIL");
    }
    printf("  all MAC kernels: %d of %d rows <= 2.00 (%s per row); MAC-weighted over all rows ",
        pass_rows, rows, pass_rows == rows ? "PASS" : "FAIL");
    print_ratio(tot_i, tot_w);
    printf("  %s\n", tot_i * 100u <= target_x100 * tot_w ? "PASS" : "FAIL");
}

const bench_suite bench_suite_train_r4 = {
    "train-r4",
    "fp32 condensed backward kernels (core/train, GC r = 4): instructions per MAC as the planner "
    "counts them\n(gbar, gc_sums: per element; dw_gc rows: the loop over all channels, one call "
    "each)",
    cases_r4,
    N_CASES,
    last_error,
    "target",
    results_r4,
    summary,
};

const bench_suite bench_suite_train_r2 = {
    "train-r2",
    "fp32 condensed backward kernels (core/train, GC r = 2): instructions per MAC as the planner "
    "counts them\n(gbar, gc_sums: per element; dw_gc rows: the loop over all channels, one call "
    "each)",
    cases_r2,
    N_CASES,
    last_error,
    "target",
    results_r2,
    summary,
};
