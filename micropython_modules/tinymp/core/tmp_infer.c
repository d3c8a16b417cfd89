/*
 * tinymp core: one inference over a planned arena.
 *
 * Each layer record is decoded (and re-validated) as it runs, its tensors are located through the
 * plan, and the matching kernel is called with the planned scratch. The input is read in place and
 * never written; nothing outside [arena, arena + plan->arena_bytes) is touched.
 */
#include "tmp_infer.h"
#include "tmp_kernels.h"

static int fits(const tmp_plan *plan, uint32_t off, uint64_t bytes) {
    return (uint64_t)off + bytes <= plan->arena_bytes;
}

/* Tensor `t` fits its planned place: the arena for t >= 1, the caller's input for t == 0. */
static int tensor_fits(const tmp_model *m, const tmp_plan *plan, uint16_t t) {
    tmp_tensor tt;
    if (tmp_model_tensor(m, t, &tt, NULL) != TMP_OK) {
        return 0;
    }
    const uint64_t bytes = (uint64_t)tt.dims.h * tt.dims.w * tt.dims.c;
    return t == 0 ? bytes == plan->input_bytes : fits(plan, plan->tensor_offset[t], bytes);
}

static tmp_status run_layer(const tmp_model *m, const tmp_plan *plan, int32_t i, const int8_t *input,
    int8_t *arena) {
    tmp_layer l;
    if (tmp_model_layer(m, i, &l, NULL) != TMP_OK) {
        return TMP_ERR_FORMAT;
    }
    /* The model buffer may have changed since planning (a bytearray the caller edits): every
     * tensor this layer touches must still fit where the plan put it, and the kernel's scratch
     * must still be what the plan reserved. */
    if (!tensor_fits(m, plan, l.in0) || !tensor_fits(m, plan, l.out) ||
        (l.type == TMP_LAYER_ADD && !tensor_fits(m, plan, l.in1)) ||
        tmp_plan_layer_scratch(m, &l, plan->in_place[i]) > plan->scratch_bytes[i] ||
        !fits(plan, plan->scratch_offset[i], plan->scratch_bytes[i])) {
        return TMP_ERR_SIZE;
    }
    const int8_t *in = l.in0 == 0 ? input : arena + plan->tensor_offset[l.in0];
    const int8_t *in1 = NULL;
    if (l.type == TMP_LAYER_ADD) {
        in1 = l.in1 == 0 ? input : arena + plan->tensor_offset[l.in1];
    }
    int8_t *out = arena + plan->tensor_offset[l.out];
    void *scratch = plan->scratch_bytes[i] ? (void *)(arena + plan->scratch_offset[i]) : NULL;
    return tmp_layer_forward(m, &l, in, in1, out, scratch);
}

tmp_status tmp_layer_forward(const tmp_model *m, const tmp_layer *lp, const int8_t *in,
    const int8_t *in1, int8_t *out, void *scratch) {
    const tmp_layer l = *lp;
    tmp_tensor tin, tin1, tout;
    if (tmp_model_tensor(m, l.in0, &tin, NULL) != TMP_OK || tmp_model_tensor(m, l.out, &tout, NULL) != TMP_OK) {
        return TMP_ERR_FORMAT;
    }
    tmp_per_channel_quant q = { l.mult, l.shift };
    tmp_filter_dims f = { l.kh, l.kw };

    switch (l.type) {
        case TMP_LAYER_CONV: {
            tmp_conv_params p = tmp_layer_conv_params(&l, &tin, &tout);
            return tmp_conv_s8(&p, &q, &tin.dims, in, &f, l.weights, l.bias, &tout.dims, out, scratch);
        }
        case TMP_LAYER_DWCONV: {
            tmp_conv_params p = tmp_layer_conv_params(&l, &tin, &tout);
            return tmp_dwconv_s8(&p, &q, &tin.dims, in, &f, l.weights, l.bias, &tout.dims, out, scratch);
        }
        case TMP_LAYER_PWCONV: {
            tmp_conv_params p = tmp_layer_conv_params(&l, &tin, &tout);
            return tmp_pwconv_s8(&p, &q, &tin.dims, in, l.weights, l.bias, &tout.dims, out, scratch);
        }
        case TMP_LAYER_FC: {
            tmp_fc_params p = { -tin.zero_point, tout.zero_point, l.act_min, l.act_max };
            return tmp_fc_s8(&p, &q, tin.dims.h * tin.dims.w * tin.dims.c, in, l.weights, l.bias,
                tout.dims.c, out, scratch);
        }
        case TMP_LAYER_ADD: {
            if (tmp_model_tensor(m, l.in1, &tin1, NULL) != TMP_OK) {
                return TMP_ERR_FORMAT;
            }
            tmp_add_params p;
            p.input0_offset = -tin.zero_point;
            p.input1_offset = -tin1.zero_point;
            p.input0_mult = l.params[0];
            p.input0_shift = l.params[1];
            p.input1_mult = l.params[2];
            p.input1_shift = l.params[3];
            p.output_mult = l.params[4];
            p.output_shift = l.params[5];
            p.output_offset = tout.zero_point;
            p.act_min = l.act_min;
            p.act_max = l.act_max;
            return tmp_add_s8(&p, tout.dims.h * tout.dims.w * tout.dims.c, in, in1, out, scratch);
        }
        case TMP_LAYER_AVGPOOL: {
            tmp_avgpool_params p = { -tin.zero_point, tout.zero_point, l.params[0], l.params[1], l.act_min,
                l.act_max };
            return tmp_avgpool_s8(&p, &tin.dims, in, out, scratch);
        }
        default:
            return TMP_ERR_FORMAT;
    }
}

tmp_status tmp_infer(const tmp_model *m, const tmp_plan *plan, const int8_t *input, void *arena,
    size_t arena_size, int32_t last_layer, const int8_t **out) {
    if (m == NULL || plan == NULL || input == NULL || arena == NULL || out == NULL ||
        ((uintptr_t)arena & 3u) != 0) {
        return TMP_ERR_ARG;
    }
    if (plan->num_layers != m->num_layers) {
        return TMP_ERR_ARG;
    }
    if (arena_size < plan->arena_bytes) {
        return TMP_ERR_SIZE;
    }
    if (last_layer < 0) {
        last_layer = (int32_t)m->num_layers - 1;
    }
    if (last_layer >= (int32_t)m->num_layers) {
        return TMP_ERR_ARG;
    }
    int8_t *a = (int8_t *)arena;
    for (int32_t i = 0; i <= last_layer; i++) {
        tmp_status s = run_layer(m, plan, i, input, a);
        if (s != TMP_OK) {
            return s;
        }
    }
    *out = a + plan->tensor_offset[last_layer + 1];
    return TMP_OK;
}

void tmp_dequantize_output(const tmp_model *m, const int8_t *q, float *logits) {
    tmp_tensor t;
    tmp_model_output(m, &t);
    for (int32_t k = 0; k < (int32_t)m->num_classes; k++) {
        logits[k] = (float)(q[k] - t.zero_point) * t.scale;
    }
}

int32_t tmp_argmax_s8(const int8_t *q, int32_t n) {
    int32_t best = 0;
    for (int32_t k = 1; k < n; k++) {
        if (q[k] > q[best]) {
            best = k;
        }
    }
    return best;
}
