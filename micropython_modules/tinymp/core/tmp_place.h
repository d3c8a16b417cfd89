/*
 * tinymp core (internal): greedy-by-size placement of buffers with lifetimes in one arena, shared
 * by the inference planner (tmp_plan.c) and the training planner (tmp_train_plan.c).
 */
#ifndef TMP_PLACE_H
#define TMP_PLACE_H

#include "tmp_common.h"

/* A buffer to place: alive over the steps [first, last], size a multiple of 4 (0 = no buffer). */
typedef struct {
    uint32_t size;
    uint32_t offset;
    int32_t first;
    int32_t last;
} tmp_buf;

/**
 * Place the n buffers: in decreasing size (then earlier first, then lower index), each at the
 * lowest offset where it overlaps no already-placed buffer alive at the same time. Fills every
 * bufs[i].offset; `order` and `placed` are workspaces of n entries each. Returns the arena size,
 * or UINT64_MAX when an offset would exceed 32 bits.
 */
uint64_t tmp_place(tmp_buf *bufs, int32_t n, uint16_t *order, uint16_t *placed);

#endif /* TMP_PLACE_H */
