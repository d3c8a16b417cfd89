/*
 * tinymp core: greedy-by-size placement (see tmp_place.h and docs/PLANNER.md).
 */
#include "tmp_place.h"

static int live_together(const tmp_buf *a, const tmp_buf *b) {
    return a->first <= b->last && b->first <= a->last;
}

uint64_t tmp_place(tmp_buf *bufs, int32_t nbufs, uint16_t *order, uint16_t *placed) {
    int32_t n = 0;
    for (int32_t i = 0; i < nbufs; i++) {
        bufs[i].offset = 0;
        if (bufs[i].size == 0) {
            continue;
        }
        /* insertion sort: larger first, then earlier first, then lower index */
        int32_t j = n++;
        while (j > 0) {
            const tmp_buf *p = &bufs[order[j - 1]];
            const tmp_buf *q = &bufs[i];
            if (p->size > q->size || (p->size == q->size && p->first <= q->first)) {
                break;
            }
            order[j] = order[j - 1];
            j--;
        }
        order[j] = (uint16_t)i;
    }
    uint64_t arena = 0;
    int32_t np = 0;
    for (int32_t k = 0; k < n; k++) {
        tmp_buf *b = &bufs[order[k]];
        uint64_t cand = 0;
        for (int32_t j = 0; j < np; j++) {
            const tmp_buf *p = &bufs[placed[j]];
            if (!live_together(p, b)) {
                continue;
            }
            if ((uint64_t)p->offset >= cand + b->size) {
                break; /* the gap below p holds b */
            }
            if ((uint64_t)p->offset + p->size > cand) {
                cand = (uint64_t)p->offset + p->size;
            }
        }
        if (cand > UINT32_MAX) {
            return UINT64_MAX;
        }
        b->offset = (uint32_t)cand;
        if (cand + b->size > arena) {
            arena = cand + b->size;
        }
        /* keep `placed` sorted by offset */
        int32_t j = np++;
        while (j > 0 && bufs[placed[j - 1]].offset > b->offset) {
            placed[j] = placed[j - 1];
            j--;
        }
        placed[j] = order[k];
    }
    return arena;
}
