/* Top-k selection for meProp.
 *
 * Order of entries: larger |g| first; among equal magnitudes the lower index
 * first. Under that order a zero is never preferred over a non-zero entry, and
 * the result is unique, so it cannot depend on the thread count. Selected
 * indices are written in ascending index order (a canonical form that also
 * keeps later gathers of W rows and x rows moving forward in memory).
 *
 * Selection is a threshold filter: entries above the current k-th best
 * magnitude are appended (branchless) to a small candidate buffer, which is
 * cut back to its k best by quickselect when it fills, raising the threshold.
 * Blocks of 16 entries are first tested with one vectorisable
 * compare-and-count, so once the threshold settles most blocks cost a single
 * SIMD pass: expected O(n) per row. The
 * same block loop detects NaN and Inf, so no separate pass is needed. */
#ifndef MEPROP_TOPK_H
#define MEPROP_TOPK_H

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "parallel.h"

typedef struct {
    float m;      /* magnitude |g| */
    int32_t i;    /* column index */
} mp_entry;

/* a ranks above b: larger magnitude, or equal magnitude and lower index */
static inline int mp_better(mp_entry a, mp_entry b) {
    return a.m > b.m || (a.m == b.m && a.i < b.i);
}

/* Reorder e[0:c] so that e[0:k] are the k best entries (in no order).
 * Quickselect with a median-of-three pivot; keys are unique (distinct
 * indices), so the partition always makes progress. */
static void mp_select_best(mp_entry *e, int64_t c, int64_t k) {
    int64_t lo = 0, hi = c - 1;
    while (hi > lo) {
        int64_t mid = lo + (hi - lo) / 2;
        mp_entry a = e[lo], b = e[mid], d = e[hi], p;
        if (mp_better(a, b)) { if (mp_better(b, d)) p = b; else p = mp_better(a, d) ? d : a; }
        else { if (mp_better(a, d)) p = a; else p = mp_better(b, d) ? d : b; }
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (mp_better(e[i], p)) i++;
            while (mp_better(p, e[j])) j--;
            if (i <= j) { mp_entry t = e[i]; e[i] = e[j]; e[j] = t; i++; j--; }
        }
        /* now e[lo..j] are better than or equal to p, e[i..hi] worse or equal */
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

/* the worst of e[0:k] */
static inline mp_entry mp_worst_of(const mp_entry *e, int64_t k) {
    mp_entry w = e[0];
    for (int64_t t = 1; t < k; t++)
        if (mp_better(w, e[t])) w = e[t];
    return w;
}

static int mp_cmp_int32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static inline void mp_sort_int32(int32_t *a, int64_t n) {
    if (n > 48) {
        qsort(a, (size_t)n, sizeof(int32_t), mp_cmp_int32);
        return;
    }
    for (int64_t i = 1; i < n; i++) {
        int32_t v = a[i];
        int64_t j = i - 1;
        while (j >= 0 && a[j] > v) { a[j + 1] = a[j]; j--; }
        a[j + 1] = v;
    }
}

#define MP_TOPK_BLOCK 16

/* Candidate entries one thread needs for a selection of k. */
static inline int64_t mp_topk_ws_entries(int64_t k) { return 3 * k + 4 * MP_TOPK_BLOCK; }

/* Count entries of g[0:len] with |g| > thr, and non-finite entries. */
MP_SIMD_CLONES
static int mp_block_scan(const float *MP_RESTRICT g, int64_t len, float thr, int *n_bad) {
    int above = 0, bad = 0;
    for (int64_t t = 0; t < len; t++) {
        float a = fabsf(g[t]);
        above += (a > thr);
        bad += !(a <= FLT_MAX);
    }
    *n_bad += bad;
    return above;
}

/* Select the k best entries of one row g[0:n] into out_idx (ascending).
 *
 * Entries pass a threshold filter into the candidate buffer cand (branchless
 * appends); whenever the buffer is nearly full it is cut back to its k best
 * and the threshold rises to the k-th best magnitude. A later entry can only
 * displace that k-th best with a strictly larger magnitude (on a tie the
 * earlier index wins), so "> threshold" is the exact admission test. Blocks
 * with no entry above the threshold are skipped after one SIMD count.
 * Returns the number of non-finite entries seen. */
static int64_t mp_topk_row(const float *g, int64_t n, int64_t k, mp_entry *cand, int32_t *out_idx) {
    const int64_t cap = mp_topk_ws_entries(k);
    int bad = 0;
    int64_t c = 0;
    float thr = -1.0f;          /* admits everything, zeros included, until k are held */
    for (int64_t j0 = 0; j0 < n; j0 += MP_TOPK_BLOCK) {
        int64_t len = n - j0 < MP_TOPK_BLOCK ? n - j0 : MP_TOPK_BLOCK;
        if (mp_block_scan(g + j0, len, thr, &bad) == 0) continue;
        if (c + len > cap) {
            mp_select_best(cand, c, k);
            c = k;
            thr = mp_worst_of(cand, k).m;
        }
        for (int64_t j = j0; j < j0 + len; j++) {
            float a = fabsf(g[j]);
            cand[c].m = a;
            cand[c].i = (int32_t)j;
            c += (a > thr);
        }
    }
    if (c > k) mp_select_best(cand, c, k);
    for (int64_t t = 0; t < k; t++) out_idx[t] = cand[t].i;
    mp_sort_int32(out_idx, k);
    return bad;
}

/* Per-example top-k of g (B, n) by |g|.
 * IN  g (B, n), k in [1, n], heap_ws: nthreads * mp_topk_ws_entries(k) entries
 * OUT idx (B, k) ascending per row, val (B, k) = g at idx
 * Returns the number of non-finite entries found (outputs then meaningless). */
static int64_t mp_topk_rows(const float *g, int64_t B, int64_t n, int64_t k,
                            int32_t *idx, float *val, mp_entry *heap_ws, int nthreads) {
    int64_t bad = 0;
    int team = mp_team_size(nthreads, B * n * 2, B);
    #pragma omp parallel num_threads(team) if (team > 1) reduction(+:bad)
    {
        mp_entry *heap = heap_ws + (int64_t)mp_omp_thread_num() * mp_topk_ws_entries(k);
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            const float *row = g + b * n;
            int32_t *oi = idx + b * k;
            float *ov = val + b * k;
            bad += mp_topk_row(row, n, k, heap, oi);
            for (int64_t t = 0; t < k; t++) ov[t] = row[oi[t]];
        }
    }
    return bad;
}

/* Column sums of |g| over the batch: s[j] = sum_b |g[b, j]| (b ascending, so
 * the sum is the same for any thread count). Returns non-finite count. */
MP_SIMD_CLONES
static int64_t mp_abs_colsum_block(const float *MP_RESTRICT g, int64_t B, int64_t n,
                                   int64_t j0, int64_t j1, float *MP_RESTRICT s) {
    int64_t bad = 0;
    for (int64_t j = j0; j < j1; j++) s[j] = 0.0f;
    for (int64_t b = 0; b < B; b++) {
        const float *row = g + b * n;
        int nb = 0;
        for (int64_t j = j0; j < j1; j++) {
            float a = fabsf(row[j]);
            s[j] += a;
            nb += !(a <= FLT_MAX);
        }
        bad += nb;
    }
    return bad;
}

/* Unified top-k: one index set for the batch, ranked by sum_b |g[b, j]|.
 * IN  g (B, n), k in [1, n]; colsum_ws n floats; heap_ws mp_topk_ws_entries(k) entries
 * OUT idx (k,) ascending. Returns the number of non-finite entries. */
static int64_t mp_topk_unified(const float *g, int64_t B, int64_t n, int64_t k, int32_t *idx,
                               float *colsum_ws, mp_entry *heap_ws, int nthreads) {
    int64_t bad = 0;
    const int64_t chunk = 512;
    int64_t nchunks = (n + chunk - 1) / chunk;
    int team = mp_team_size(nthreads, B * n, nchunks);
    #pragma omp parallel for num_threads(team) if (team > 1) schedule(static) reduction(+:bad)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t j0 = c * chunk, j1 = j0 + chunk < n ? j0 + chunk : n;
        bad += mp_abs_colsum_block(g, B, n, j0, j1, colsum_ws);
    }
    if (bad) return bad;
    /* huge finite inputs can overflow a column sum to Inf; the selector counts
     * that as non-finite, but Inf still ranks above every finite sum, so the
     * result is meaningful and the count is ignored here */
    (void)mp_topk_row(colsum_ws, n, k, heap_ws, idx);
    return 0;
}

/* Per-row random k-subset of range(n), ascending, by selection sampling
 * (Knuth's algorithm S). Row b's stream depends only on (seed, b), so the
 * result is the same for any thread count. */
static inline uint64_t mp_splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void mp_randk_rows(int64_t B, int64_t n, int64_t k, uint64_t seed, int32_t *idx, int nthreads) {
    int team = mp_team_size(nthreads, B * n * 8, B);
    #pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        uint64_t s = seed ^ (0xD1B54A32D192ED03ULL * (uint64_t)(b + 1));
        (void)mp_splitmix64(&s);
        int32_t *out = idx + b * k;
        int64_t chosen = 0;
        for (int64_t j = 0; j < n && chosen < k; j++) {
            double u = (double)(mp_splitmix64(&s) >> 11) * (1.0 / 9007199254740992.0);
            if ((double)(n - j) * u < (double)(k - chosen)) out[chosen++] = (int32_t)j;
        }
    }
}

/* hits[j] += 1 for every selected (b, j) whose value is non-zero (serial:
 * B*k increments, and a shared counter array must not be raced on). */
static void mp_count_hits(const int32_t *idx, const float *val, int64_t npairs, int64_t *hits) {
    for (int64_t p = 0; p < npairs; p++)
        if (val[p] != 0.0f) hits[idx[p]] += 1;
}

#endif
