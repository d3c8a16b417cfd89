/*
 * tinymp core: the inference planner (docs/PLANNER.md).
 *
 * From a validated model it computes, without allocating, where every activation tensor and every
 * layer's kernel scratch lives in one arena, reusing bytes across tensor lifetimes, and running a
 * depthwise layer in place where that lowers the arena. The arena size it reports is exactly the
 * size tmp_infer() needs.
 */
#ifndef TMP_PLAN_H
#define TMP_PLAN_H

#include "tmp_model.h"

#ifdef __cplusplus
extern "C" {
#endif

/** The plan; its arrays live in the caller's workspace, which must outlive the plan. */
typedef struct {
    uint32_t arena_bytes;      /**< exact arena size for one inference */
    uint32_t input_bytes;      /**< bytes of the input (tensor 0) the plan was made for */
    uint32_t peak_live_bytes;  /**< lower bound: largest sum of simultaneously live bytes */
    uint32_t activation_bytes; /**< arena bytes used by activations alone (no scratch) */
    uint16_t num_layers;
    uint32_t *tensor_offset;   /**< [num_tensors] offset in the arena (tensor 0 is external: 0) */
    uint32_t *scratch_offset;  /**< [num_layers] offset of each layer's kernel scratch */
    uint32_t *scratch_bytes;   /**< [num_layers] bytes of each layer's kernel scratch */
    uint8_t *in_place;         /**< [num_layers] 0, or 1/2: the output is written over in0/in1 */
} tmp_plan;

/** Kernel scratch bytes layer `l` needs (in_place: 0 or the plan's in-place choice). */
uint32_t tmp_plan_layer_scratch(const tmp_model *m, const tmp_layer *l, int in_place);

/** Bytes of workspace tmp_plan_inference() needs for this model (4-byte aligned buffer). */
size_t tmp_plan_workspace_size(const tmp_model *m);

/** Plan one inference. `ws` must be 4-byte aligned and hold tmp_plan_workspace_size() bytes. */
tmp_status tmp_plan_inference(const tmp_model *m, void *ws, size_t ws_size, tmp_plan *plan);

#ifdef __cplusplus
}
#endif

#endif /* TMP_PLAN_H */
