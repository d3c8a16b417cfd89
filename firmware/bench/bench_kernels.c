/*
 * Suite "kernels": instructions per MAC (per element for add and avgpool) of every int8 forward
 * kernel of the core on MobileNetV2-like shapes, including the reference shapes for which
 * CMSIS-NN figures were measured the same way (GCC 12 -O2, QEMU mps2-an500, instructions inside
 * the call; see README.md).
 *
 * Work counts: conv/dwconv/pwconv MACs = out.h * out.w * out.c * (kh * kw * in.c per output, in.c
 * = 1 for dwconv), padding taps included (as CMSIS-NN's figures count them); fc = n * out; add and
 * avgpool count input elements.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "kernels/tmp_dsp.h"
#include "tmp_kernels.h"

#if TMP_DSP
#define PATH_NAME "DSP path (SMLAD, SXTB16; the default M7 build)"
#else
#define PATH_NAME "portable C path (-DTMP_NO_DSP)"
#endif

enum { K_CONV, K_DW, K_PW, K_FC, K_ADD, K_AVG };

typedef struct {
    int kind;
    int32_t ih, iw, ic; /* input */
    int32_t oh, ow, oc; /* output (fc: oc = out features, n = ih * iw * ic) */
    int32_t k, stride, pad_t, pad_l;
    int in_place; /* dwconv only */
} kcase;

/* data of the current case (static: the programs' RAM is 4 MiB) */
static int8_t g_in[196608] __attribute__((aligned(8)));
static int8_t g_in2[16384] __attribute__((aligned(8)));
static int8_t g_w[147456] __attribute__((aligned(8))); /* up to 112 x 1280 */
static int8_t g_out[196608] __attribute__((aligned(8)));
static int32_t g_bias[2048];
static int32_t g_mult[2048];
static int32_t g_shift[2048];
static int32_t g_scratch[4096];

static tmp_conv_params g_cp;
static tmp_fc_params g_fp;
static tmp_add_params g_ap;
static tmp_avgpool_params g_pp;
static tmp_per_channel_quant g_q;
static tmp_dims g_id, g_od;
static tmp_filter_dims g_fd;
static tmp_status g_status;

static int32_t rand_range(int32_t lo, int32_t hi) {
    return lo + (int32_t)(bench_rand() % (uint32_t)(hi - lo + 1));
}

/* realistic requantisation: multipliers in [2^30, 2^31), shifts making m ~ 2^-7 .. 2^-10 */
static void fill_quant(int32_t n, int32_t bias_abs) {
    for (int32_t i = 0; i < n; i++) {
        g_bias[i] = rand_range(-bias_abs, bias_abs);
        g_mult[i] = (int32_t)(0x40000000u | (bench_rand() >> 2));
        g_shift[i] = rand_range(-10, -7);
    }
    g_q.multiplier = g_mult;
    g_q.shift = g_shift;
}

static void setup(const void *arg) {
    const kcase *c = (const kcase *)arg;
    bench_seed(0xC0FFEEu + (uint32_t)c->kind * 977u + (uint32_t)(c->ic * 31 + c->oc));
    g_id.h = c->ih;
    g_id.w = c->iw;
    g_id.c = c->ic;
    g_od.h = c->oh;
    g_od.w = c->ow;
    g_od.c = c->oc;
    g_fd.kh = c->k;
    g_fd.kw = c->k;
    const uint32_t n_in = (uint32_t)(c->ih * c->iw * c->ic);
    if (n_in > sizeof g_in || (uint32_t)(c->oh * c->ow * c->oc) > sizeof g_out) {
        printf("error: the case %dx%dx%d->%dx%dx%d outgrows g_in or g_out\n", (int)c->ih,
            (int)c->iw, (int)c->ic, (int)c->oh, (int)c->ow, (int)c->oc);
        exit(1);
    }
    bench_fill_s8(g_in, n_in);
    bench_fill_s8(g_in2, (uint32_t)sizeof g_in2);
    bench_fill_s8(g_w, (uint32_t)sizeof g_w);
    memset(g_out, 0, sizeof g_out);
    g_cp.input_offset = 7;
    g_cp.output_offset = -5;
    g_cp.stride_h = c->stride;
    g_cp.stride_w = c->stride;
    g_cp.pad_t = c->pad_t;
    g_cp.pad_l = c->pad_l;
    g_cp.act_min = -128;
    g_cp.act_max = 127;
    g_fp.input_offset = 7;
    g_fp.output_offset = -5;
    g_fp.act_min = -128;
    g_fp.act_max = 127;
    fill_quant(c->oc > 0 ? c->oc : c->ic, 20000);
    if (c->kind == K_PW && tmp_pwconv_s8_get_buffer_size(&g_id, &g_od) > (int32_t)sizeof g_scratch) {
        printf("error: the pwconv scratch of %dx%dx%d->%d outgrows g_scratch\n", (int)c->ih,
            (int)c->iw, (int)c->ic, (int)c->oc);
        exit(1);
    }
    if (c->kind == K_DW && c->in_place) {
        memcpy(g_out, g_in, n_in); /* in place: the input lives in the output buffer */
    }
    g_ap.input0_offset = 3;
    g_ap.input1_offset = -9;
    g_ap.input0_mult = 0x4CCCCCCD;
    g_ap.input0_shift = -1;
    g_ap.input1_mult = 0x7FFFFFFF;
    g_ap.input1_shift = -1;
    g_ap.output_mult = 0x5A827999;
    g_ap.output_shift = -18;
    g_ap.output_offset = 4;
    g_ap.act_min = -128;
    g_ap.act_max = 127;
    g_pp.input_offset = 6;
    g_pp.output_offset = -2;
    g_pp.mult = 0x40000000;
    g_pp.shift = -3; /* 1/16 */
    g_pp.act_min = -128;
    g_pp.act_max = 127;
}

static void run(const void *arg) {
    const kcase *c = (const kcase *)arg;
    switch (c->kind) {
    case K_CONV:
        g_status = tmp_conv_s8(&g_cp, &g_q, &g_id, g_in, &g_fd, g_w, g_bias, &g_od, g_out, g_scratch);
        break;
    case K_DW:
        if (c->in_place) {
            g_status = tmp_dwconv_s8(&g_cp, &g_q, &g_id, g_out, &g_fd, g_w, g_bias, &g_od, g_out,
                g_scratch);
        } else {
            g_status = tmp_dwconv_s8(&g_cp, &g_q, &g_id, g_in, &g_fd, g_w, g_bias, &g_od, g_out, NULL);
        }
        break;
    case K_PW:
        g_status = tmp_pwconv_s8(&g_cp, &g_q, &g_id, g_in, g_w, g_bias, &g_od, g_out, g_scratch);
        break;
    case K_FC:
        g_status = tmp_fc_s8(&g_fp, &g_q, c->ih * c->iw * c->ic, g_in, g_w, g_bias, c->oc, g_out, NULL);
        break;
    case K_ADD:
        g_status = tmp_add_s8(&g_ap, c->ih * c->iw * c->ic, g_in, g_in2, g_out, NULL);
        break;
    case K_AVG:
        g_status = tmp_avgpool_s8(&g_pp, &g_id, g_in, g_out, g_scratch);
        break;
    default:
        g_status = TMP_ERR_ARG;
        break;
    }
}

/* shapes: TensorFlow "same" padding (pad_t = pad_l = floor(total / 2)) */
static const kcase c_pw1 = {K_PW, 16, 16, 48, 16, 16, 16, 1, 1, 0, 0, 0};
static const kcase c_pw2 = {K_PW, 4, 4, 192, 4, 4, 56, 1, 1, 0, 0, 0};
static const kcase c_pw3 = {K_PW, 8, 8, 16, 8, 8, 96, 1, 1, 0, 0, 0};
static const kcase c_pw4 = {K_PW, 8, 8, 96, 8, 8, 24, 1, 1, 0, 0, 0};
/* MobileNetV2-w0.35@128's last expansion: the layer a cached training step spends most of its
 * forward pass in (the widened-input block path) */
static const kcase c_pw5 = {K_PW, 4, 4, 112, 4, 4, 1280, 1, 1, 0, 0, 0};
static const kcase c_pw6 = {K_PW, 64, 64, 8, 64, 64, 48, 1, 1, 0, 0, 0};
static const kcase c_pw7 = {K_PW, 64, 64, 16, 64, 64, 8, 1, 1, 0, 0, 0};
static const kcase c_dw1 = {K_DW, 16, 16, 48, 16, 16, 48, 3, 1, 1, 1, 0};
static const kcase c_dw2 = {K_DW, 16, 16, 48, 8, 8, 48, 3, 2, 0, 0, 0};
static const kcase c_dw3 = {K_DW, 8, 8, 96, 8, 8, 96, 3, 1, 1, 1, 0};
static const kcase c_dw4 = {K_DW, 16, 16, 48, 16, 16, 48, 3, 1, 1, 1, 1};
static const kcase c_dw5 = {K_DW, 8, 8, 96, 4, 4, 96, 3, 2, 0, 0, 1};
/* MobileNetV2-w0.35@128's layer 4, which its plan runs in place */
static const kcase c_dw6 = {K_DW, 64, 64, 48, 32, 32, 48, 3, 2, 0, 0, 1};
/* MCUNet@128's 7x7 and 5x5 depthwise layers 11, 21 and 25 */
static const kcase c_dw7 = {K_DW, 32, 32, 48, 16, 16, 48, 7, 2, 2, 2, 0};
static const kcase c_dw8 = {K_DW, 8, 8, 160, 8, 8, 160, 7, 1, 3, 3, 0};
static const kcase c_dw9 = {K_DW, 8, 8, 160, 8, 8, 160, 5, 1, 2, 2, 0};
static const kcase c_cv1 = {K_CONV, 64, 64, 3, 32, 32, 16, 3, 2, 0, 0, 0};
static const kcase c_cv2 = {K_CONV, 16, 16, 8, 16, 16, 16, 3, 1, 1, 1, 0};
static const kcase c_fc1 = {K_FC, 1, 1, 1280, 1, 1, 10, 1, 1, 0, 0, 0};
static const kcase c_fc2 = {K_FC, 1, 1, 256, 1, 1, 100, 1, 1, 0, 0, 0};
static const kcase c_ad1 = {K_ADD, 16, 16, 24, 16, 16, 24, 1, 1, 0, 0, 0};
static const kcase c_ad2 = {K_ADD, 4, 4, 96, 4, 4, 96, 1, 1, 0, 0, 0};
static const kcase c_av1 = {K_AVG, 4, 4, 1280, 1, 1, 1280, 1, 1, 0, 0, 0};
static const kcase c_av2 = {K_AVG, 8, 8, 96, 1, 1, 96, 1, 1, 0, 0, 0};

#define MACS(oh, ow, oc, per) ((uint32_t)(oh) * (uint32_t)(ow) * (uint32_t)(oc) * (uint32_t)(per))

static const bench_case cases[] = {
    {"pwconv", "1x1 16x16x48->16", "MAC", MACS(16, 16, 16, 48), 225, 225, setup, run, &c_pw1},
    {"pwconv", "1x1 4x4x192->56", "MAC", MACS(4, 4, 56, 192), 180, 180, setup, run, &c_pw2},
    {"pwconv", "1x1 8x8x16->96", "MAC", MACS(8, 8, 96, 16), -1, -1, setup, run, &c_pw3},
    {"pwconv", "1x1 8x8x96->24", "MAC", MACS(8, 8, 24, 96), -1, -1, setup, run, &c_pw4},
    {"pwconv", "1x1 4x4x112->1280", "MAC", MACS(4, 4, 1280, 112), -1, -1, setup, run, &c_pw5},
    {"pwconv", "1x1 64x64x8->48", "MAC", MACS(64, 64, 48, 8), -1, -1, setup, run, &c_pw6},
    {"pwconv", "1x1 64x64x16->8", "MAC", MACS(64, 64, 8, 16), -1, -1, setup, run, &c_pw7},
    {"dwconv", "3x3 16x16x48 s1", "MAC", MACS(16, 16, 48, 9), 790, 810, setup, run, &c_dw1},
    {"dwconv", "3x3 16x16x48 s2", "MAC", MACS(8, 8, 48, 9), 790, 810, setup, run, &c_dw2},
    {"dwconv", "3x3 8x8x96 s1", "MAC", MACS(8, 8, 96, 9), 790, 810, setup, run, &c_dw3},
    {"dwconv", "3x3 16x16x48 s1 in-place", "MAC", MACS(16, 16, 48, 9), -1, -1, setup, run, &c_dw4},
    {"dwconv", "3x3 8x8x96 s2 in-place", "MAC", MACS(4, 4, 96, 9), -1, -1, setup, run, &c_dw5},
    {"dwconv", "3x3 64x64x48 s2 in-place", "MAC", MACS(32, 32, 48, 9), -1, -1, setup, run, &c_dw6},
    {"dwconv", "7x7 32x32x48 s2", "MAC", MACS(16, 16, 48, 49), -1, -1, setup, run, &c_dw7},
    {"dwconv", "7x7 8x8x160 s1", "MAC", MACS(8, 8, 160, 49), -1, -1, setup, run, &c_dw8},
    {"dwconv", "5x5 8x8x160 s1", "MAC", MACS(8, 8, 160, 25), -1, -1, setup, run, &c_dw9},
    {"conv", "3x3 64x64x3->16 s2", "MAC", MACS(32, 32, 16, 27), 488, 488, setup, run, &c_cv1},
    {"conv", "3x3 16x16x8->16 s1", "MAC", MACS(16, 16, 16, 72), -1, -1, setup, run, &c_cv2},
    {"fc", "1280->10", "MAC", 1280u * 10u, 190, 240, setup, run, &c_fc1},
    {"fc", "256->100", "MAC", 256u * 100u, 190, 240, setup, run, &c_fc2},
    {"add", "16x16x24", "elem", 16u * 16u * 24u, -1, -1, setup, run, &c_ad1},
    {"add", "4x4x96", "elem", 4u * 4u * 96u, -1, -1, setup, run, &c_ad2},
    {"avgpool", "4x4x1280", "elem", 4u * 4u * 1280u, -1, -1, setup, run, &c_av1},
    {"avgpool", "8x8x96", "elem", 8u * 8u * 96u, -1, -1, setup, run, &c_av2},
};

static int last_error(void) {
    return g_status != TMP_OK;
}

const bench_suite bench_suite_kernels = {
    "kernels",
    "int8 forward kernels, " PATH_NAME ": instructions per MAC (add, avgpool: per element)",
    cases,
    (int)(sizeof cases / sizeof cases[0]),
    last_error,
    NULL,
    NULL,
    NULL,
};
