/*
 * tinymp core: running one inference over a planned arena.
 */
#ifndef TMP_INFER_H
#define TMP_INFER_H

#include "tmp_plan.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Run layers 0 .. last_layer (last_layer < 0: all) on `input` (int8, H*W*C of tensor 0, read in
 * place, never written) using `arena` (4-byte aligned, at least plan->arena_bytes). On success
 * `*out` points at the int8 output tensor of `last_layer` inside the arena.
 */
tmp_status tmp_infer(const tmp_model *m, const tmp_plan *plan, const int8_t *input,
    void *arena, size_t arena_size, int32_t last_layer, const int8_t **out);

/**
 * Run one decoded layer `l` (its weights/bias pointers may point at RAM copies) on int8 inputs
 * `in` (and `in1` for add) into `out`, with the kernel scratch `scratch`
 * (tmp_plan_layer_scratch() bytes for the chosen in-place mode). Used by tmp_infer() and the
 * trainer.
 */
tmp_status tmp_layer_forward(const tmp_model *m, const tmp_layer *l, const int8_t *in,
    const int8_t *in1, int8_t *out, void *scratch);

/** Dequantise the model output `q` (num_classes int8) into `logits`. */
void tmp_dequantize_output(const tmp_model *m, const int8_t *q, float *logits);

/** Index of the largest of `n` int8 values, the first on ties. */
int32_t tmp_argmax_s8(const int8_t *q, int32_t n);

#ifdef __cplusplus
}
#endif

#endif /* TMP_INFER_H */
