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
 * cut back to its k best when it fills (the k-th magnitude found by counting for
 * small buffers, by a radix select over the live value range for larger ones),
 * raising the threshold.
 * Blocks of 16 entries are first tested with one vectorisable
 * compare-and-count, so once the threshold settles most blocks cost a single
 * SIMD pass: expected O(n) per row. When k <= ~n/4 the threshold does not
 * start at zero but at a lower bound on the answer (the k-th largest of ~2k
 * block maxima, mp_topk_lower_bound_generic), so the buffer rarely fills. The
 * same block loop detects NaN and Inf, so no separate pass is needed.
 *
 * mp_topk_mask_rows is the same selection for the masked dense backward
 * (k > n_out / 4): it writes the gradient with the unselected entries zeroed
 * instead of an index list. */
#ifndef MEPROP_TOPK_H
#define MEPROP_TOPK_H

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "parallel.h"

/* scratch unit for the candidate buffers: callers allocate int64-sized entries */
typedef int64_t mp_entry;

/* The k-th largest of m[0:c] (with multiplicity), 1 <= k <= c.
 * Small c (<= 100): for each entry count the entries strictly above it - a branch-free,
 * vectorisable O(c^2) pass that beats a branchy selection for a few hundred
 * candidates; the answer is the smallest value with fewer than k above it.
 * Large c: a radix select on the float bits, using scratch (c entries). */
#ifndef MP_KTH_COUNT_MAX
#define MP_KTH_COUNT_MAX 100   /* measured: beyond ~100 candidates the radix select is faster */
#endif

/* The counting selection for c <= MP_KTH_COUNT_MAX */
MP_SIMD_CLONES
static float mp_kth_count(const float *MP_RESTRICT m, int64_t c, int64_t k) {
    /* the counts for all i advance together (inner loop over i: one
     * compare-and-add per 16 entries, no horizontal sums) */
    int32_t above[MP_KTH_COUNT_MAX];
    for (int64_t i = 0; i < c; i++) above[i] = 0;
    for (int64_t j = 0; j < c; j++) {
        const float mj = m[j];
        for (int64_t i = 0; i < c; i++) above[i] += (mj > m[i]);
    }
    /* the minimum over entries with fewer than k above, on the bit
     * patterns (non-negative floats order like them, and an integer
     * minimum vectorises); starts at +Inf: a row may hold k infinities */
    const uint32_t inf_bits = 0x7f800000u;
    uint32_t best = inf_bits;
    for (int64_t i = 0; i < c; i++) {
        uint32_t u;
        memcpy(&u, &m[i], sizeof(u));
        u = above[i] < k ? u : inf_bits;
        best = u < best ? u : best;
    }
    float r;
    memcpy(&r, &best, sizeof(r));
    return r;
}

/* Pieces of the radix select shared by its generic and AVX-512 forms. */
static inline float mp_bits_float(uint32_t u) {
    float r;
    memcpy(&r, &u, sizeof(r));
    return r;
}

/* the smallest shift s that fits span = hi - lo into 256 buckets */
static inline int mp_radix_shift(uint32_t span) {
    int s = 0;
    while ((span >> s) > 255u) s++;
    return s;
}

/* cnt[0:top+1] = histogram of the live entries' digits (u - lo) >> s, where
 * top = (hi - lo) >> s; returns top. Scalar: the increments are the chain. */
static inline int mp_radix_histogram(const uint32_t *u, int64_t live, uint32_t lo, uint32_t hi,
                                     int s, int32_t *cnt) {
    const int top = (int)((hi - lo) >> s);
    memset(cnt, 0, (size_t)(top + 1) * sizeof(int32_t));
    for (int64_t i = 0; i < live; i++) cnt[(u[i] - lo) >> s]++;
    return top;
}

/* From bucket d down, pass buckets while the entries above them stay below
 * rank want; returns the bucket holding that rank (*above: the entries in the
 * buckets passed, counting those passed before the call). */
static inline int mp_radix_walk(const int32_t *cnt, int d, int64_t want, int64_t *above) {
    for (; d > 0 && *above + cnt[d] < want; d--) *above += cnt[d];
    return d;
}

MP_SIMD_CLONES
static float mp_kth_largest(const float *MP_RESTRICT m, int64_t c, int64_t k,
                            float *MP_RESTRICT scratch) {
    if (c <= MP_KTH_COUNT_MAX) return mp_kth_count(m, c, k);
    /* Radix select on the bit patterns: the magnitudes are >= 0 (or +Inf), and
     * non-negative floats order like their bits read as unsigned integers.
     * Each pass histograms the live entries on 8-bit digits of (u - lo) >> s,
     * with lo / hi the live minimum / maximum and s the smallest shift that
     * fits hi - lo in 256 buckets: the buckets span the values actually
     * present (a gradient row's magnitudes cover a dozen or so binades, so
     * one pass leaves a few entries), not fixed bytes of the bit pattern.
     * It keeps the bucket holding the answer and hands it to the counting
     * selection above once it is small: O(c) per pass, at most four passes,
     * no data-dependent branches to mispredict in the loops over entries. */
    uint32_t *u = (uint32_t *)scratch;
    int64_t live = c, want = k;
    for (int64_t i = 0; i < c; i++) memcpy(&u[i], &m[i], sizeof(uint32_t));
    for (;;) {
        uint32_t lo = 0xFFFFFFFFu, hi = 0;
        for (int64_t i = 0; i < live; i++) {
            lo = u[i] < lo ? u[i] : lo;
            hi = u[i] > hi ? u[i] : hi;
        }
        if (lo == hi) return mp_bits_float(lo);
        if (live <= MP_KTH_COUNT_MAX) return mp_kth_count(scratch, live, want);
        const int s = mp_radix_shift(hi - lo);
        int32_t cnt[256];
        int64_t above = 0;
        const int d = mp_radix_walk(cnt, mp_radix_histogram(u, live, lo, hi, s, cnt), want, &above);
        want -= above;                 /* rank of the answer among this bucket's entries */
        int64_t w = 0;
        for (int64_t i = 0; i < live; i++) {
            u[w] = u[i];
            w += (((u[i] - lo) >> s) == (uint32_t)d);
        }
        live = w;
    }
}

#if MP_HAVE_AVX512_INTRIN
/* mp_kth_largest with the radix passes in AVX-512: the live minimum / maximum,
 * the walk down the histogram (16 buckets at a time) and the compaction of
 * the chosen bucket (an in-register compress) run 16 entries per step; only
 * the histogram itself stays scalar. The same passes, buckets and answer.
 * scratch: c + 16 floats (m and scratch must not overlap). */
MP_TARGET_AVX512
static float mp_kth_largest_avx512(const float *m, int64_t c, int64_t k, float *scratch) {
    if (c <= MP_KTH_COUNT_MAX) return mp_kth_count(m, c, k);
    uint32_t *u = (uint32_t *)scratch;
    int64_t live = c, want = k;
    memcpy(u, m, (size_t)c * sizeof(uint32_t));
    int32_t cnt[256] __attribute__((aligned(64)));
    for (;;) {
        const int64_t nfull = live / 16, nvec = (live + 15) / 16;
        const __mmask16 tail = (__mmask16)((1u << (live & 15)) - 1u);
        __m512i vlo = _mm512_set1_epi32(-1), vhi = _mm512_setzero_si512();
        for (int64_t v = 0; v < nvec; v++) {
            const __mmask16 lv = v < nfull ? (__mmask16)0xFFFF : tail;
            __m512i x = _mm512_maskz_loadu_epi32(lv, u + 16 * v);
            vlo = _mm512_mask_min_epu32(vlo, lv, vlo, x);
            vhi = _mm512_mask_max_epu32(vhi, lv, vhi, x);
        }
        const uint32_t lo = _mm512_reduce_min_epu32(vlo), hi = _mm512_reduce_max_epu32(vhi);
        if (lo == hi) return mp_bits_float(lo);
        if (live <= MP_KTH_COUNT_MAX) return mp_kth_count(scratch, live, want);
        const int s = mp_radix_shift(hi - lo);
        int d = mp_radix_histogram(u, live, lo, hi, s, cnt);
        /* from the top bucket down: whole 16-bucket blocks while they stay
         * below the rank sought, then bucket by bucket (the generic walk) */
        int64_t above = 0;
        while (d >= 16) {
            int32_t blk = _mm512_reduce_add_epi32(_mm512_loadu_si512((const void *)(cnt + d - 15)));
            if (above + blk >= want) break;
            above += blk;
            d -= 16;
        }
        d = mp_radix_walk(cnt, d, want, &above);
        want -= above;
        const __m512i vlo1 = _mm512_set1_epi32((int)lo), vd = _mm512_set1_epi32(d);
        const __m128i sh = _mm_cvtsi32_si128(s);
        int64_t w = 0;
        for (int64_t v = 0; v < nvec; v++) {
            const __mmask16 lv = v < nfull ? (__mmask16)0xFFFF : tail;
            __m512i x = _mm512_maskz_loadu_epi32(lv, u + 16 * v);
            __m512i dig = _mm512_srl_epi32(_mm512_sub_epi32(x, vlo1), sh);
            __mmask16 hit = _mm512_mask_cmpeq_epi32_mask(lv, dig, vd);
            /* compress in a register, then one full store (16 entries of
             * slack): a compress straight to memory is slow on some cores */
            _mm512_storeu_si512((void *)(u + w), _mm512_maskz_compress_epi32(hit, x));
            w += __builtin_popcount(hit);
        }
        live = w;
    }
}
#endif

/* the AVX-512 select where the caller runs the AVX-512 paths */
static inline float mp_kth_select(const float *m, int64_t c, int64_t k, float *scratch,
                                  int avx512) {
#if MP_HAVE_AVX512_INTRIN
    if (avx512) return mp_kth_largest_avx512(m, c, k, scratch);
#endif
    (void)avx512;
    return mp_kth_largest(m, c, k, scratch);
}

/* Keep, in index order, the k best of the candidates (m, ix)[0:c] (which are
 * in ascending index order): every entry above T = the k-th largest
 * magnitude, then the earliest entries equal to T. Compacts in place (or
 * writes the indices to out_idx when it is not NULL). Returns T. */
static float mp_keep_best(float *m, int32_t *ix, int64_t c, int64_t k, float *scratch,
                          int32_t *out_idx, int avx512) {
    float T = mp_kth_select(m, c, k, scratch, avx512);
    int64_t above = 0;
    for (int64_t i = 0; i < c; i++) above += (m[i] > T);
    int64_t ties = k - above, w = 0;
    for (int64_t i = 0; i < c && w < k; i++) {
        int take = m[i] > T || (m[i] == T && ties > 0);
        if (!take) continue;
        ties -= (m[i] == T);
        if (out_idx) {
            out_idx[w++] = ix[i];
        } else {
            m[w] = m[i];
            ix[w] = ix[i];
            w++;
        }
    }
    return T;
}

#define MP_TOPK_BLOCK 16

/* Candidate capacity for a selection of k (the buffer holds cap floats and
 * cap int32s, plus scratch; callers size it via mp_topk_ws_entries). */
static inline int64_t mp_topk_cap(int64_t k) { return 2 * k + 4 * MP_TOPK_BLOCK; }
/* cap floats + cap int32 + cap floats of scratch, in 8-byte units */
static inline int64_t mp_topk_ws_entries(int64_t k) { return 2 * mp_topk_cap(k); }

/* The NaN / Inf entries of g[0:n] (counted exactly for the error message). */
static inline int64_t mp_count_nonfinite(const float *g, int64_t n) {
    int64_t bad = 0;
    for (int64_t j = 0; j < n; j++) bad += !(fabsf(g[j]) <= FLT_MAX);
    return bad;
}

/* Count entries of g[0:len] with |g| > thr, and non-finite entries. */
static inline int mp_block_scan(const float *MP_RESTRICT g, int64_t len, float thr, int *n_bad) {
    int above = 0, bad = 0;
    for (int64_t t = 0; t < len; t++) {
        float a = fabsf(g[t]);
        above += (a > thr);
        bad += !(a <= FLT_MAX);
    }
    *n_bad += bad;
    return above;
}

/* A lower bound L on the k-th largest |g| of a row, so the filter can start
 * at L instead of 0. The row is cut into 16 * groups blocks (block = one
 * lane of 16 across a run of consecutive 16-entry vectors; the masked tail
 * counts as zeros); the k largest block maxima are k distinct entries, so
 * their k-th is <= the k-th largest entry. With about 2k blocks only ~1.4k
 * entries (normal data) pass ">= L", so the buffer rarely needs cutting and
 * the final selection runs on few candidates: one cheap max pass replaces
 * the repeated selections a threshold rising from 0 would need. */
static inline int64_t mp_topk_lb_groups(int64_t n, int64_t k) {
    int64_t nvec = (n + MP_TOPK_BLOCK - 1) / MP_TOPK_BLOCK;
    int64_t groups = (2 * k + MP_TOPK_BLOCK - 1) / MP_TOPK_BLOCK;
    /* blocks of fewer than ~2 entries bound nothing cheaply: k > ~n/4 */
    return nvec >= 2 * groups ? groups : 0;
}

/* L as a starting threshold for the strict "> thr" admission: the largest
 * float below L, so every entry >= L is admitted (zeros only when L is 0). */
static inline float mp_topk_start_thr(float L) { return L > 0.0f ? nextafterf(L, 0.0f) : 0.0f; }

/* mx: 16 * groups floats (overwritten); scratch for mp_kth_largest */
MP_SIMD_CLONES
static float mp_topk_lower_bound_generic(const float *MP_RESTRICT g, int64_t n, int64_t k,
                                         int64_t groups, float *MP_RESTRICT mx,
                                         float *MP_RESTRICT scratch) {
    const int64_t nvec = (n + MP_TOPK_BLOCK - 1) / MP_TOPK_BLOCK;
    for (int64_t q = 0; q < groups; q++) {
        int64_t v0 = q * nvec / groups, v1 = (q + 1) * nvec / groups;
        float *m = mx + MP_TOPK_BLOCK * q;
        for (int l = 0; l < MP_TOPK_BLOCK; l++) m[l] = 0.0f;
        for (int64_t v = v0; v < v1; v++) {
            int64_t j0 = v * MP_TOPK_BLOCK;
            int64_t len = n - j0 < MP_TOPK_BLOCK ? n - j0 : MP_TOPK_BLOCK;
            for (int64_t l = 0; l < len; l++) {
                float a = fabsf(g[j0 + l]);
                m[l] = a > m[l] ? a : m[l];   /* NaN never wins */
            }
        }
    }
    return mp_kth_largest(mx, MP_TOPK_BLOCK * groups, k, scratch);
}

/* The exact admission rule: once k candidates are held, a later (higher)
 * index can only displace the k-th best with a strictly larger magnitude, so
 * "> threshold" admits exactly the entries that may still matter. When the
 * buffer is nearly full it is cut back to its k best and the threshold rises
 * to the k-th best magnitude. Candidates stay in ascending index order.
 * Returns the candidate count c (>= k). */
MP_SIMD_CLONES
static int64_t mp_filter_row_generic(const float *g, int64_t n, int64_t k, float *cm,
                                     int32_t *ci, float *scratch, int *bad) {
    const int64_t cap = mp_topk_cap(k);
    int64_t c = 0;
    /* zeros carry no gradient: admitted only if a row has < k non-zeros */
    int64_t groups = mp_topk_lb_groups(n, k);
    float thr = groups ? mp_topk_start_thr(mp_topk_lower_bound_generic(g, n, k, groups, cm, scratch))
                       : 0.0f;
    for (int64_t j0 = 0; j0 < n; j0 += MP_TOPK_BLOCK) {
        int64_t len = n - j0 < MP_TOPK_BLOCK ? n - j0 : MP_TOPK_BLOCK;
        if (mp_block_scan(g + j0, len, thr, bad) == 0) continue;
        if (c + len > cap) {
            thr = mp_keep_best(cm, ci, c, k, scratch, NULL, 0);
            c = k;
        }
        for (int64_t j = j0; j < j0 + len; j++) {
            float a = fabsf(g[j]);
            cm[c] = a;
            ci[c] = (int32_t)j;
            c += (a > thr);
        }
    }
    return c;
}

#if MP_HAVE_AVX512_INTRIN
#define MP_HAVE_AVX512_FILTER 1
/* The same filter with AVX-512: 16 entries per compare, survivors packed by
 * an in-register compress and one full-width store (the buffer keeps 16
 * entries of slack; a compress straight to memory is slow on some cores).
 * Branch-free per vector: with the lower bound a fifth or so of the vectors
 * hold a survivor, at random, and a branch on that mispredicts more than
 * the compress costs. */
MP_TARGET_AVX512
static int64_t mp_filter_row_avx512(const float *g, int64_t n, int64_t k, float *cm,
                                    int32_t *ci, float *scratch, int *bad, const float *pf) {
    const int64_t cap = mp_topk_cap(k);
    const __m512 vmax = _mm512_set1_ps(FLT_MAX);
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const int64_t nfull = n / 16, nvec = (n + 15) / 16;
    const __mmask16 tail = (__mmask16)((1u << (n & 15)) - 1u);   /* live lanes of vector nfull */
    int64_t c = 0;
    float thr = 0.0f;
    const int64_t groups = mp_topk_lb_groups(n, k);
    if (groups) {   /* the lower bound of mp_topk_lower_bound_generic, vectorised */
        for (int64_t q = 0; q < groups; q++) {
            int64_t v0 = q * nvec / groups, v1 = (q + 1) * nvec / groups;
            int64_t f1 = v1 < nfull ? v1 : nfull;
            /* four independent chains (max is associative: same block maxima);
             * max_ps returns its second operand when either is NaN: NaN never wins */
            __m512 m0 = _mm512_setzero_ps(), m1 = m0, m2 = m0, m3 = m0;
            int64_t v = v0;
            for (; v + 4 <= f1; v += 4) {
                m0 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(g + 16 * v)), m0);
                m1 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(g + 16 * v + 16)), m1);
                m2 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(g + 16 * v + 32)), m2);
                m3 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(g + 16 * v + 48)), m3);
            }
            for (; v < f1; v++) m0 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(g + 16 * v)), m0);
            if (v1 > nfull)   /* the partial last vector */
                m0 = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(tail, g + 16 * nfull)), m0);
            m0 = _mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3));
            _mm512_storeu_ps(cm + 16 * q, m0);
        }
        thr = mp_topk_start_thr(mp_kth_largest_avx512(cm, 16 * groups, k, scratch));
    }
    __m512 vthr = _mm512_set1_ps(thr);
    __mmask16 anybad = 0;
    for (int64_t v = 0; v < nvec; v++) {
        const int64_t j0 = 16 * v;
        const __mmask16 live = v < nfull ? (__mmask16)0xFFFF : tail;
        /* this pass reads the row from L1 (the bound above brought it in):
         * meanwhile pull the next row towards L2 */
        if (pf) _mm_prefetch((const char *)(pf + j0), _MM_HINT_T1);
        __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(live, g + j0));
        anybad |= _mm512_mask_cmp_ps_mask(live, a, vmax, _CMP_NLE_UQ);
        __mmask16 m = _mm512_mask_cmp_ps_mask(live, a, vthr, _CMP_GT_OQ);
        if (MP_UNLIKELY(c + 16 > cap)) {
            thr = mp_keep_best(cm, ci, c, k, scratch, NULL, 1);
            c = k;
            vthr = _mm512_set1_ps(thr);
            m = _mm512_mask_cmp_ps_mask(live, a, vthr, _CMP_GT_OQ);
        }
        __m512i j = _mm512_add_epi32(_mm512_set1_epi32((int)j0), iota);
        _mm512_storeu_ps(cm + c, _mm512_maskz_compress_ps(m, a));
        _mm512_storeu_si512((void *)(ci + c), _mm512_maskz_compress_epi32(m, j));
        c += __builtin_popcount(m);
    }
    if (anybad) {   /* rare: count them exactly for the error message */
        *bad += (int)mp_count_nonfinite(g, n);
    }
    return c;
}

#else
#define MP_HAVE_AVX512_FILTER 0
#endif

/* Select the k best entries of one row g[0:n] into out_idx (ascending).
 * ws: mp_topk_ws_entries(k) 8-byte entries. Returns the non-finite count. */
static int64_t mp_topk_row(const float *g, int64_t n, int64_t k, void *ws, int32_t *out_idx,
                           int use_avx512, const float *prefetch) {
    const int64_t cap = mp_topk_cap(k);
    float *cm = (float *)ws;
    int32_t *ci = (int32_t *)(cm + cap);
    float *scratch = (float *)(ci + cap);
    int bad = 0;
    int64_t c;
#if MP_HAVE_AVX512_FILTER
    if (use_avx512)
        c = mp_filter_row_avx512(g, n, k, cm, ci, scratch, &bad, prefetch);
    else
#endif
        c = mp_filter_row_generic(g, n, k, cm, ci, scratch, &bad);
    (void)use_avx512;
    (void)prefetch;
    /* candidates are in index order, so the result comes out ascending */
    if (c > k) {
        (void)mp_keep_best(cm, ci, c, k, scratch, out_idx, use_avx512);
    } else if (c == k) {
        for (int64_t t = 0; t < k; t++) out_idx[t] = ci[t];
    } else {
        /* fewer than k non-zeros: merge them with the lowest-index zeros */
        int64_t zeros = k - c, w = 0, p = 0;
        for (int64_t j = 0; j < n && w < k; j++) {
            if (p < c && ci[p] == j) {
                out_idx[w++] = (int32_t)j;
                p++;
            } else if (zeros > 0 && g[j] == 0.0f) {
                out_idx[w++] = (int32_t)j;
                zeros--;
            }
        }
        for (; w < k; w++) out_idx[w] = (int32_t)w;   /* only with NaN (reported as bad) */
    }
    return bad;
}

static inline int mp_topk_use_avx512(void) {
#if MP_HAVE_AVX512_FILTER
    return mp_cpu_avx512();
#else
    return 0;
#endif
}

/* Per-example top-k of g (B, n) by |g|.
 * IN  g (B, n), k in [1, n], topk_ws: nthreads * mp_thread_stride(mp_topk_ws_entries(k))
 *     entries
 * OUT idx (B, k) ascending per row, val (B, k) = g at idx
 * Returns the number of non-finite entries found (outputs then meaningless). */
static int64_t mp_topk_rows(const float *g, int64_t B, int64_t n, int64_t k,
                            int32_t *idx, float *val, mp_entry *topk_ws, int nthreads) {
    int64_t bad = 0;
    int team = mp_team_size(nthreads, B * n * 8, B);   /* ~8 multiply-adds' worth per entry */
    const int avx512 = mp_topk_use_avx512();
    #pragma omp parallel num_threads(team) if (team > 1) reduction(+:bad)
    {
        mp_entry *ws = topk_ws
            + (int64_t)mp_omp_thread_num() * mp_thread_stride(mp_topk_ws_entries(k));
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            const float *row = g + b * n;
            int32_t *oi = idx + b * k;
            float *ov = val + b * k;
            /* the next row this thread takes (static schedule: b + 1 unless
             * b ends this thread's chunk, when the prefetch is merely wasted) */
            const float *next = b + 1 < B && n >= 1024 ? row + n : NULL;
            int64_t rb = mp_topk_row(row, n, k, ws, oi, avx512, next);
            if (rb) {
                /* NaN is never admitted, so fewer than k candidates may exist:
                 * keep the indices valid; the caller reports the error */
                for (int64_t t = 0; t < k; t++) oi[t] = (int32_t)t;
                bad += rb;
            }
            for (int64_t t = 0; t < k; t++) ov[t] = row[oi[t]];
        }
    }
    return bad;
}

/* Batch top-k: the B k entries of g (B, n) with the largest |g| over the whole
 * batch, however they fall on the examples (one selection over the B n
 * entries, on one thread, so the result does not depend on the thread count).
 * IN  g (B, n) with B n < 2^31, k in [1, n], ws: mp_topk_ws_entries(B k) entries
 * OUT idx (B k) the columns, ex (B k) the examples (rows of g), val = g there,
 *     in flat order (example ascending, then column ascending)
 * Returns the number of non-finite entries found (outputs then meaningless). */
static int64_t mp_topk_batch(const float *g, int64_t B, int64_t n, int64_t k, int32_t *idx,
                             int32_t *ex, float *val, mp_entry *ws) {
    const int64_t kk = B * k;
    int64_t bad = mp_topk_row(g, B * n, kk, ws, idx, mp_topk_use_avx512(), NULL);
    for (int64_t p = 0; p < kk; p++) {
        int64_t f = bad ? 0 : idx[p];   /* keep the indices valid; the caller reports */
        ex[p] = (int32_t)(f / n);
        idx[p] = (int32_t)(f - (int64_t)ex[p] * n);
        val[p] = g[f];
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
 * IN  g (B, n), k in [1, n]; colsum_ws n floats; topk_ws mp_topk_ws_entries(k) entries
 * OUT idx (k,) ascending. Returns the number of non-finite entries. */
static int64_t mp_topk_unified(const float *g, int64_t B, int64_t n, int64_t k, int32_t *idx,
                               float *colsum_ws, mp_entry *topk_ws, int nthreads) {
    int64_t bad = 0;
    const int64_t chunk = 512;
    int64_t nchunks = (n + chunk - 1) / chunk;
    int team = mp_team_size(nthreads, B * n, nchunks);
    #pragma omp parallel for num_threads(team) if (team > 1) schedule(static) reduction(+:bad)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t j0 = c * chunk, j1 = j0 + chunk < n ? j0 + chunk : n;
        bad += mp_abs_colsum_block(g, B, n, j0, j1, colsum_ws);
    }
    if (bad) {
        for (int64_t t = 0; t < k; t++) idx[t] = (int32_t)t;   /* valid, never used */
        return bad;
    }
    /* huge finite inputs can overflow a column sum to Inf; the selector counts
     * that as non-finite, but Inf still ranks above every finite sum, so the
     * result is meaningful and the count is ignored here */
    (void)mp_topk_row(colsum_ws, n, k, topk_ws, idx, mp_topk_use_avx512(), NULL);
    return 0;
}

/* out[0:n] = g where |g| > T and at the first `ties` entries with |g| == T,
 * 0 elsewhere: the masked row when more entries equal T than places are left. */
static void mp_mask_keep_earliest_ties(const float *g, int64_t n, float T, int64_t ties,
                                       float *out) {
    for (int64_t j = 0; j < n; j++) {
        float a = fabsf(g[j]);
        int take = a > T || (a == T && ties > 0);
        ties -= (a == T);
        out[j] = take ? g[j] : 0.0f;
    }
}

/* The per-example top-k in the masked form the dense-product backward wants
 * (k > n_out / 4, sparse_linear.h): out[0:n] = g on the row's top-k, as
 * mp_topk_row selects it, and 0 elsewhere. Only non-zero entries can matter
 * there (a selected zero adds nothing), so no index list is made: a row with
 * at most k non-zeros is kept whole; otherwise T = the k-th largest non-zero
 * magnitude, and the row keeps every entry above T and the earliest entries
 * equal to T (the tie rule of mp_keep_best). The same non-zero entries as
 * mp_topk_row + mp_scatter_pairs, bit for bit (tests/test_topk.py).
 * ws: mp_topk_mask_ws_floats(n). Returns the row's non-finite count (out is then
 * not written). */
MP_SIMD_CLONES
static int64_t mp_topk_mask_row(const float *MP_RESTRICT g, int64_t n, int64_t k,
                                float *MP_RESTRICT out, float *MP_RESTRICT ws) {
    int64_t nz = 0, bad = 0;
    for (int64_t j = 0; j < n; j++) {
        float a = fabsf(g[j]);
        nz += (a > 0.0f);
        bad += !(a <= FLT_MAX);
    }
    if (bad) return bad;
    if (nz <= k) {   /* every non-zero is selected; a zero (of either sign) is written as +0 */
        for (int64_t j = 0; j < n; j++) out[j] = fabsf(g[j]) > 0.0f ? g[j] : 0.0f;
        return 0;
    }
    int64_t c = 0;
    for (int64_t j = 0; j < n; j++) {   /* the non-zero magnitudes, branch-free */
        float a = fabsf(g[j]);
        ws[c] = a;
        c += (a > 0.0f);
    }
    const float T = mp_kth_largest(ws, c, k, ws + n + 16);   /* > 0: c > k */
    int64_t above = 0, eq = 0;
    for (int64_t j = 0; j < n; j++) {
        float a = fabsf(g[j]);
        above += (a > T);
        eq += (a == T);
    }
    int64_t ties = k - above;   /* 1 <= ties <= eq */
    if (ties == eq)
        for (int64_t j = 0; j < n; j++) out[j] = fabsf(g[j]) >= T ? g[j] : 0.0f;
    else   /* more entries equal T than places left: the earliest win */
        mp_mask_keep_earliest_ties(g, n, T, ties, out);
    return 0;
}

#if MP_HAVE_AVX512_FILTER
/* The same with AVX-512: the non-zero magnitudes are packed by an in-register
 * compress (16 entries per step instead of one), and one pass both counts the
 * entries above / at T and writes the row. */
MP_TARGET_AVX512
static int64_t mp_topk_mask_row_avx512(const float *g, int64_t n, int64_t k, float *out,
                                       float *ws) {
    const int64_t nfull = n / 16, nvec = (n + 15) / 16;
    const __mmask16 tail = (__mmask16)((1u << (n & 15)) - 1u);
    const __m512 vmax = _mm512_set1_ps(FLT_MAX), zero = _mm512_setzero_ps();
    __mmask16 anybad = 0;
    int64_t c = 0;
    for (int64_t v = 0; v < nvec; v++) {
        const __mmask16 live = v < nfull ? (__mmask16)0xFFFF : tail;
        __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(live, g + 16 * v));
        anybad |= _mm512_mask_cmp_ps_mask(live, a, vmax, _CMP_NLE_UQ);
        __mmask16 nz = _mm512_mask_cmp_ps_mask(live, a, zero, _CMP_GT_OQ);
        _mm512_storeu_ps(ws + c, _mm512_maskz_compress_ps(nz, a));   /* 16 floats of slack */
        c += __builtin_popcount(nz);
    }
    if (anybad) return mp_count_nonfinite(g, n);   /* rare: count them exactly */
    if (c <= k) {
        for (int64_t v = 0; v < nvec; v++) {
            const __mmask16 live = v < nfull ? (__mmask16)0xFFFF : tail;
            __m512 x = _mm512_maskz_loadu_ps(live, g + 16 * v);
            __mmask16 nz = _mm512_cmp_ps_mask(_mm512_abs_ps(x), zero, _CMP_GT_OQ);
            _mm512_mask_storeu_ps(out + 16 * v, live, _mm512_maskz_mov_ps(nz, x));
        }
        return 0;
    }
    const float T = mp_kth_largest_avx512(ws, c, k, ws + n + 16);   /* > 0: c > k */
    const __m512 vT = _mm512_set1_ps(T);
    int64_t above = 0, eq = 0;
    for (int64_t v = 0; v < nvec; v++) {
        const __mmask16 live = v < nfull ? (__mmask16)0xFFFF : tail;
        __m512 x = _mm512_maskz_loadu_ps(live, g + 16 * v);
        __m512 a = _mm512_abs_ps(x);
        __mmask16 gt = _mm512_mask_cmp_ps_mask(live, a, vT, _CMP_GT_OQ);
        __mmask16 at = _mm512_mask_cmp_ps_mask(live, a, vT, _CMP_EQ_OQ);
        above += __builtin_popcount(gt);
        eq += __builtin_popcount(at);
        _mm512_mask_storeu_ps(out + 16 * v, live, _mm512_maskz_mov_ps(gt | at, x));
    }
    if (k - above != eq)   /* more entries equal T than places left: the earliest win */
        mp_mask_keep_earliest_ties(g, n, T, k - above, out);
    return 0;
}
#endif

/* scratch of one row: n + 16 floats of candidates and n + 16 for the radix
 * select (16 of slack each for the compress stores) */
static inline int64_t mp_topk_mask_ws_floats(int64_t n) { return 2 * n + 32; }

/* mp_topk_mask_row for every row of g (B, n) into out (B, n), parallel over
 * rows when it pays. ws: nthreads * mp_thread_stride(mp_topk_mask_ws_floats(n))
 * floats. Returns the non-finite count of g (out then meaningless). */
static int64_t mp_topk_mask_rows(const float *g, int64_t B, int64_t n, int64_t k, float *out,
                                 float *ws, int nthreads) {
    int64_t bad = 0;
    int team = mp_team_size(nthreads, B * n * 8, B);   /* as mp_topk_rows */
    const int avx512 = mp_topk_use_avx512();
    #pragma omp parallel num_threads(team) if (team > 1) reduction(+:bad)
    {
        float *w = ws + (int64_t)mp_omp_thread_num() * mp_thread_stride(mp_topk_mask_ws_floats(n));
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
#if MP_HAVE_AVX512_FILTER
            if (avx512) {
                bad += mp_topk_mask_row_avx512(g + b * n, n, k, out + b * n, w);
                continue;
            }
#endif
            bad += mp_topk_mask_row(g + b * n, n, k, out + b * n, w);
        }
    }
    (void)avx512;
    return bad;
}

#endif
