/* meSimp's activeness records: how often each neuron's gradient was among
 * the selected (non-zero) entries of a step. */
#ifndef MEPROP_HITS_H
#define MEPROP_HITS_H

#include <stdint.h>
#include "parallel.h"

/* For a masked gradient m (B, n): cnt[j] = the rows b with m[b, j] != 0, and
 * rows[0:r] = the columns j with cnt[j] > 0, ascending (the rows of W a
 * row-sparse update touches: those mp_scatter_pairs finds). Returns r. */
MP_SIMD_CLONES
static int64_t mp_mask_columns(const float *MP_RESTRICT m, int64_t B, int64_t n,
                               int32_t *MP_RESTRICT cnt, int32_t *MP_RESTRICT rows) {
    for (int64_t j = 0; j < n; j++) cnt[j] = 0;
    for (int64_t b = 0; b < B; b++) {
        const float *row = m + b * n;
        for (int64_t j = 0; j < n; j++) cnt[j] += (row[j] != 0.0f);
    }
    int64_t r = 0;
    for (int64_t j = 0; j < n; j++) {
        rows[r] = (int32_t)j;
        r += (cnt[j] > 0);
    }
    return r;
}

/* hits[j] += 1 for every selected (b, j) whose value is non-zero (serial:
 * B*k increments, and a shared counter array must not be raced on). */
static void mp_count_hits(const int32_t *idx, const float *val, int64_t npairs, int64_t *hits) {
    for (int64_t p = 0; p < npairs; p++)
        if (val[p] != 0.0f) hits[idx[p]] += 1;
}

#endif
