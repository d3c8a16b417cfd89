/*
 * tinymp core: greedy-by-size placement (see tmp_place.h and docs/PLANNER.md).
 */
#include "tmp_place.h"

#include <string.h>

static int live_together(const tmp_buf *a, const tmp_buf *b) {
    return a->first <= b->last && b->first <= a->last;
}

/* The placement order: larger first, then earlier first, then lower index (a total order). */
static int goes_before(const tmp_buf *bufs, uint16_t a, uint16_t b) {
    const tmp_buf *p = &bufs[a], *q = &bufs[b];
    if (p->size != q->size) {
        return p->size > q->size;
    }
    if (p->first != q->first) {
        return p->first < q->first;
    }
    return a < b;
}

/* Sort order[0..n) by goes_before(): a bottom-up merge sort through tmp[0..n) (the planner calls
 * this for every placement it tries, so not the quadratic insertion sort). */
static void sort_order(const tmp_buf *bufs, uint16_t *order, uint16_t *tmp, int32_t n) {
    uint16_t *src = order, *dst = tmp;
    for (int32_t w = 1; w < n; w *= 2) {
        for (int32_t lo = 0; lo < n; lo += 2 * w) {
            const int32_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            int32_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                dst[k++] = goes_before(bufs, src[j], src[i]) ? src[j++] : src[i++];
            }
            while (i < mid) {
                dst[k++] = src[i++];
            }
            while (j < hi) {
                dst[k++] = src[j++];
            }
        }
        uint16_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != order) {
        memcpy(order, src, (size_t)n * sizeof *order);
    }
}

uint64_t tmp_place(tmp_buf *bufs, int32_t nbufs, uint16_t *order, uint16_t *placed) {
    int32_t n = 0;
    for (int32_t i = 0; i < nbufs; i++) {
        bufs[i].offset = 0;
        if (bufs[i].size != 0) {
            order[n++] = (uint16_t)i;
        }
    }
    sort_order(bufs, order, placed, n);
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
