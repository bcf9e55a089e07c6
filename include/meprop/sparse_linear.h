/* The sparse meProp backward of a linear layer y = x W^T + b.
 *
 * Given per-example index sets idx (B, k) and the kept gradient values
 * val (B, k):
 *   dx[b]      = sum_t val[b, t] * W[idx[b, t]]             (parallel over b)
 *   values[r]  = sum over pairs (b, t) with idx[b, t] == rows[r]
 *                of val[b, t] * x[b]                         (parallel over r)
 * Both are sums of contiguous rows (W rows of n_in floats, x rows of n_in
 * floats). With AVX-512 the output row is built chunk by chunk in registers
 * (one FMA per loaded vector); otherwise four source rows are added per pass
 * over the output row. Each output row is owned by one thread
 * and summed in a fixed order, so results are bit-identical for any thread
 * count. Pairs with a zero value carry no gradient and are skipped (a dead
 * ReLU or dropped unit does not make its weight row "touched"). */
#ifndef MEPROP_SPARSE_LINEAR_H
#define MEPROP_SPARSE_LINEAR_H

#include <string.h>
#include "parallel.h"

/* y += a0*r0 + a1*r1 + a2*r2 + a3*r3 over n floats */
MP_SIMD_CLONES
static void mp_axpy4(float *MP_RESTRICT y, int64_t n,
                     const float *MP_RESTRICT r0, const float *MP_RESTRICT r1,
                     const float *MP_RESTRICT r2, const float *MP_RESTRICT r3,
                     float a0, float a1, float a2, float a3) {
    for (int64_t i = 0; i < n; i++)
        y[i] += a0 * r0[i] + a1 * r1[i] + a2 * r2[i] + a3 * r3[i];
}

MP_SIMD_CLONES
static void mp_axpy1(float *MP_RESTRICT y, int64_t n, const float *MP_RESTRICT r0, float a0) {
    for (int64_t i = 0; i < n; i++) y[i] += a0 * r0[i];
}

MP_SIMD_CLONES
static void mp_zero(float *MP_RESTRICT y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = 0.0f;
}

/* y = sum_p coef[p] * src[sel[p]] for p in [0, np), rows of n floats.
 * Pairs are consumed in order, four at a time. */
static inline void mp_gather_sum_generic(float *y, int64_t n, const float *src, const int32_t *sel,
                                         const float *coef, int64_t np) {
    mp_zero(y, n);
    int64_t p = 0;
    for (; p + 4 <= np; p += 4)
        mp_axpy4(y, n, src + (int64_t)sel[p] * n, src + (int64_t)sel[p + 1] * n,
                 src + (int64_t)sel[p + 2] * n, src + (int64_t)sel[p + 3] * n,
                 coef[p], coef[p + 1], coef[p + 2], coef[p + 3]);
    for (; p < np; p++) mp_axpy1(y, n, src + (int64_t)sel[p] * n, coef[p]);
}

#if MP_HAVE_AVX512_INTRIN
/* The same sum with the output chunk held in registers: for each chunk of
 * 128 floats, eight accumulators take one FMA per loaded source vector, so y
 * is written once instead of once per group of source rows. The summation
 * order per element (p ascending) is fixed, so results do not depend on the
 * thread count. */
MP_TARGET_AVX512
static void mp_gather_sum_avx512(float *y, int64_t n, const float *src, const int32_t *sel,
                                 const float *coef, int64_t np) {
    int64_t i0 = 0;
    /* 256-float chunks: sixteen accumulators, and each source row is read as
     * a run of 16 consecutive cache lines (kind to the hardware prefetcher);
     * the next pair's row is prefetched while the current one is summed */
    for (; i0 + 256 <= n; i0 += 256) {
        __m512 a[16];
        for (int q = 0; q < 16; q++) a[q] = _mm512_setzero_ps();
        for (int64_t p = 0; p < np; p++) {
            const float *r = src + (int64_t)sel[p] * n + i0;
            if (p + 1 < np) {
                const char *nx = (const char *)(src + (int64_t)sel[p + 1] * n + i0);
                _mm_prefetch(nx, _MM_HINT_T0);
                _mm_prefetch(nx + 256, _MM_HINT_T0);
                _mm_prefetch(nx + 512, _MM_HINT_T0);
                _mm_prefetch(nx + 768, _MM_HINT_T0);
            }
            __m512 c = _mm512_set1_ps(coef[p]);
            for (int q = 0; q < 16; q++)
                a[q] = _mm512_fmadd_ps(c, _mm512_loadu_ps(r + 16 * q), a[q]);
        }
        for (int q = 0; q < 16; q++) _mm512_storeu_ps(y + i0 + 16 * q, a[q]);
    }
    for (; i0 + 128 <= n; i0 += 128) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m512 a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int64_t p = 0; p < np; p++) {
            const float *r = src + (int64_t)sel[p] * n + i0;
            __m512 c = _mm512_set1_ps(coef[p]);
            a0 = _mm512_fmadd_ps(c, _mm512_loadu_ps(r), a0);
            a1 = _mm512_fmadd_ps(c, _mm512_loadu_ps(r + 16), a1);
            a2 = _mm512_fmadd_ps(c, _mm512_loadu_ps(r + 32), a2);
            a3 = _mm512_fmadd_ps(c, _mm512_loadu_ps(r + 48), a3);
            a4 = _mm512_fmadd_ps(c, _mm512_loadu_ps(r + 64), a4);
            a5 = _mm512_fmadd_ps(c, _mm512_loadu_ps(r + 80), a5);
            a6 = _mm512_fmadd_ps(c, _mm512_loadu_ps(r + 96), a6);
            a7 = _mm512_fmadd_ps(c, _mm512_loadu_ps(r + 112), a7);
        }
        _mm512_storeu_ps(y + i0, a0);
        _mm512_storeu_ps(y + i0 + 16, a1);
        _mm512_storeu_ps(y + i0 + 32, a2);
        _mm512_storeu_ps(y + i0 + 48, a3);
        _mm512_storeu_ps(y + i0 + 64, a4);
        _mm512_storeu_ps(y + i0 + 80, a5);
        _mm512_storeu_ps(y + i0 + 96, a6);
        _mm512_storeu_ps(y + i0 + 112, a7);
    }
    for (; i0 < n; i0 += 16) {
        __mmask16 live = n - i0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i0)) - 1u);
        __m512 a = _mm512_setzero_ps();
        for (int64_t p = 0; p < np; p++) {
            const float *r = src + (int64_t)sel[p] * n + i0;
            a = _mm512_fmadd_ps(_mm512_set1_ps(coef[p]), _mm512_maskz_loadu_ps(live, r), a);
        }
        _mm512_mask_storeu_ps(y + i0, live, a);
    }
}
#endif

static inline void mp_gather_sum(float *y, int64_t n, const float *src, const int32_t *sel,
                                 const float *coef, int64_t np, int avx512) {
#if MP_HAVE_AVX512_INTRIN
    if (avx512) {
        mp_gather_sum_avx512(y, n, src, sel, coef, np);
        return;
    }
#endif
    (void)avx512;
    mp_gather_sum_generic(y, n, src, sel, coef, np);
}

/* dx (B, n_in) from W (n_out, n_in) and the pairs (idx, val) (B, k).
 * sel_ws / coef_ws: nthreads * mp_thread_stride(k) scratch entries for the
 * non-zero pairs. */
static void mp_sparse_dx(const float *W, int64_t n_in, const int32_t *idx, const float *val,
                         int64_t B, int64_t k, float *dx, int32_t *sel_ws, float *coef_ws,
                         int nthreads) {
    int team = mp_team_size(nthreads, B * k * n_in, B);
    const int avx512 = mp_cpu_avx512();
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        int32_t *sel = sel_ws + (int64_t)mp_omp_thread_num() * mp_thread_stride(k);
        float *coef = coef_ws + (int64_t)mp_omp_thread_num() * mp_thread_stride(k);
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            int64_t np = 0;
            for (int64_t t = 0; t < k; t++) {
                float v = val[b * k + t];
                if (v != 0.0f) { sel[np] = idx[b * k + t]; coef[np] = v; np++; }
            }
            mp_gather_sum(dx + b * n_in, n_in, W, sel, coef, np, avx512);
        }
    }
}

/* Regroup the non-zero pairs by output row (a counting sort, stable in p).
 * IN  idx, val (npairs,) the pairs' rows and values; ex (npairs,) their
 *     examples, or NULL when pair p belongs to example p / k (the (B, k)
 *     layout of a per-example top-k); n_out
 * OUT rows[0:r] distinct rows ascending; offsets[0:r+1]; pair_b, pair_v in
 *     row order: the pairs of rows[q] are offsets[q] .. offsets[q+1]-1.
 * WS  cursor: n_out ints. Returns r, or -1 (nothing written past cursor) when a
 *     pair with a non-zero value names a row outside [0, n_out). Serial: O(npairs + n_out). */
static int64_t mp_group_pairs_ex(const int32_t *idx, const float *val, const int32_t *ex,
                                 int64_t npairs, int64_t k, int64_t n_out, int32_t *cursor,
                                 int32_t *rows, int32_t *offsets, int32_t *pair_b,
                                 float *pair_v) {
    memset(cursor, 0, (size_t)n_out * sizeof(int32_t));
    for (int64_t p = 0; p < npairs; p++)
        if (val[p] != 0.0f) {
            /* a row outside [0, n_out) (indices from elsewhere: MPI, a caller's
             * buffer) is refused before anything is written through it */
            if (idx[p] < 0 || (int64_t)idx[p] >= n_out) return -1;
            cursor[idx[p]]++;
        }
    int64_t r = 0;
    int32_t pos = 0;
    for (int64_t j = 0; j < n_out; j++) {
        int32_t c = cursor[j];
        if (c) {
            rows[r] = (int32_t)j;
            offsets[r] = pos;
            r++;
            cursor[j] = pos;
            pos += c;
        }
    }
    offsets[r] = pos;
    for (int64_t p = 0; p < npairs; p++) {
        float v = val[p];
        if (v != 0.0f) {
            int32_t q = cursor[idx[p]]++;
            pair_b[q] = ex ? ex[p] : (int32_t)(p / k);
            pair_v[q] = v;
        }
    }
    return r;
}

/* Group the uses of embedding rows by row (the gradient of a table lookup).
 * IN  ids (n,): the table row read at use p; n_rows; the use p's gradient is
 *     row (p / w) * stride + off + p % w of the caller's gradient matrix (the
 *     uses of one lookup of w ids per example, placed at column off of
 *     examples stride wide: w = stride = 1, off = 0 for one id per row)
 * OUT rows[0:r] the distinct ids ascending; offsets[0:r+1]; pair_b[0:n] the
 *     gradient rows of the uses in id order, stable in p (so the sums over a
 *     row run in the order of its uses), pair_v[0:n] = 1
 * WS  keys, tmp: n uint64 each. Returns r, or -1 (nothing written past the
 *     work space) when an id lies outside [0, n_rows). Serial; O(n log n) by
 *     insertion for short inputs, an LSD radix sort on the id's bytes (as
 *     many passes as n_rows - 1 has bytes) otherwise: never O(n_rows). */
static int64_t mp_group_ids(const int32_t *ids, int64_t n, int64_t n_rows, int64_t w,
                            int64_t stride, int64_t off, uint64_t *keys, uint64_t *tmp,
                            int32_t *rows, int32_t *offsets, int32_t *pair_b, float *pair_v) {
    for (int64_t p = 0; p < n; p++) {
        if (ids[p] < 0 || (int64_t)ids[p] >= n_rows) return -1;
        keys[p] = ((uint64_t)(uint32_t)ids[p] << 32) | (uint64_t)p;
    }
    if (n <= 64) {
        for (int64_t i = 1; i < n; i++) {           /* keys are distinct: stable */
            uint64_t v = keys[i];
            int64_t j = i - 1;
            while (j >= 0 && keys[j] > v) { keys[j + 1] = keys[j]; j--; }
            keys[j + 1] = v;
        }
    } else {
        int passes = 0;
        for (uint64_t m = (uint64_t)(n_rows > 1 ? n_rows - 1 : 0); m; m >>= 8) passes++;
        uint64_t *src = keys, *dst = tmp;
        for (int ps = 0; ps < passes; ps++) {
            int64_t count[257] = {0};
            int shift = 32 + 8 * ps;
            for (int64_t p = 0; p < n; p++) count[((src[p] >> shift) & 255) + 1]++;
            for (int d = 0; d < 256; d++) count[d + 1] += count[d];
            for (int64_t p = 0; p < n; p++) dst[count[(src[p] >> shift) & 255]++] = src[p];
            uint64_t *t = src; src = dst; dst = t;
        }
        if (src != keys) memcpy(keys, src, (size_t)n * sizeof(uint64_t));
    }
    int64_t r = 0;
    for (int64_t q = 0; q < n; q++) {
        int32_t id = (int32_t)(keys[q] >> 32);
        int64_t p = (int64_t)(keys[q] & 0xffffffffu);
        if (q == 0 || id != rows[r - 1]) { rows[r] = id; offsets[r] = (int32_t)q; r++; }
        pair_b[q] = (int32_t)((p / w) * stride + off + p % w);
        pair_v[q] = 1.0f;
    }
    offsets[r] = (int32_t)n;
    return r;
}

/* mp_group_pairs_ex for the (B, k) pairs of a per-example top-k. */
static inline int64_t mp_group_pairs(const int32_t *idx, const float *val, int64_t B,
                                     int64_t k, int64_t n_out, int32_t *cursor, int32_t *rows,
                                     int32_t *offsets, int32_t *pair_b, float *pair_v) {
    return mp_group_pairs_ex(idx, val, NULL, B * k, k, n_out, cursor, rows, offsets, pair_b,
                             pair_v);
}

/* Dense products win over the row gathers once a good share of the output
 * gradient is kept: on (100, 784, 500), one thread, a masked dense dW takes
 * 296 us for 39M multiply-adds against 347 us for the 12.5M of the gathers at
 * k = 160 (dx: 320 vs ~420 us), so the crossover is near k / n_out = 1/4.
 * Above it the meProp backward zeroes the unselected entries of dy (the same
 * pairs, the same result up to float rounding: the sums run in another
 * order) and calls the dense products. The rule depends on k and n_out only,
 * never on the thread count, so results stay thread-count independent. */
#ifndef MP_MASKED_DIV
#define MP_MASKED_DIV 4
#endif
static inline int mp_backward_masked(int64_t k, int64_t n_out) {
    return k * MP_MASKED_DIV > n_out;
}

/* dyS (B, n_out) = 0 except dyS[b, idx[b, t]] += val[b, t] for the non-zero
 * pairs (t ascending); rows[0:r] = the distinct output rows with a non-zero
 * pair, ascending (the rows mp_group_pairs finds). flag_ws: n_out ints.
 * Returns r. Serial: O(B n_out) for the zeroing, O(B k + n_out) otherwise. */
static int64_t mp_scatter_pairs(const int32_t *idx, const float *val, int64_t B, int64_t k,
                                int64_t n_out, float *dyS, int32_t *flag_ws, int32_t *rows) {
    memset(dyS, 0, (size_t)(B * n_out) * sizeof(float));
    memset(flag_ws, 0, (size_t)n_out * sizeof(int32_t));
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < k; t++) {
            float v = val[b * k + t];
            if (v != 0.0f) {
                int32_t j = idx[b * k + t];
                dyS[b * n_out + j] += v;
                flag_ws[j] = 1;
            }
        }
    int64_t r = 0;
    for (int64_t j = 0; j < n_out; j++)
        if (flag_ws[j]) rows[r++] = (int32_t)j;
    return r;
}

/* values (r, n_in): values[q] = sum of pair_v * x[pair_b] over row q's pairs */
static void mp_sparse_dw(const float *x, int64_t n_in, int64_t r, const int32_t *offsets,
                         const int32_t *pair_b, const float *pair_v, float *values,
                         int nthreads) {
    int64_t npairs = offsets[r];
    int team = mp_team_size(nthreads, npairs * n_in, r);
    const int avx512 = mp_cpu_avx512();
    #pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t q = 0; q < r; q++) {
        int64_t p0 = offsets[q];
        mp_gather_sum(values + q * n_in, n_in, x, pair_b + p0, pair_v + p0, offsets[q + 1] - p0,
                      avx512);
    }
}

#endif
