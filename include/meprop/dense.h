/* Dense matrix products for the forward pass and the dense backward.
 *
 *   mp_linear_forward  y = x W^T (+ b) (then ReLU if asked)
 *                      x (B, n_in), W (n_out, n_in), b (n_out) or NULL, y (B, n_out)
 *   mp_matmul_nn       C = A Bm       A (M, K), Bm (K, N), C (M, N)   (dx = dy W)
 *   mp_matmul_tn       C = A^T Bm     A (K, M), Bm (K, N), C (M, N)   (dW = dy^T x)
 *
 * All arrays are float32, C-contiguous, and must not overlap the output.
 *
 * Forward: every y[b, j] is the dot product of two contiguous rows (x row b,
 * W row j), so W is neither packed nor transposed. A register tile of 4 x
 * rows by 4 W rows keeps 16 vector accumulators (one per output) running
 * along n_in - 8 loads feed 16 FMAs - and a transposing tree folds the 16
 * accumulators into one vector of the 16 dot products at the end of the tile
 * (x row q, W row m in lane 4q + m), to which the bias and ReLU are applied
 * before four 4-wide stores. (Small batches use 5- and 6-row tiles too.) The
 * loops run W tile outer, x tile inner over a chunk of x rows that stays in
 * L2, so the 4 W rows of a tile come from memory once per chunk and then
 * from L1. x is copied to a 64-byte-aligned buffer when it is misaligned
 * (numpy's large arrays are): loads straddling cache lines cost ~20%.
 *
 * nn / tn: outer-product register tiles of MR rows of C by 16*NV columns:
 * per k, NV vectors of the Bm row segment and MR broadcast A entries feed
 * MR*NV FMAs (AVX-512: 6 x 64 for nn, 8 x 48 for tn). The Bm panel (KC x
 * 16*NV) is copied to a contiguous, zero-padded stack buffer when several row
 * tiles reuse it (a power-of-two row stride then cannot alias it in L1); K
 * goes in fixed KC blocks, C being reloaded for every block after the first.
 * The AVX-512 tn drops the k whose Bm row segment is zero in the panel (the
 * input pixels of MNIST: ~30% of the work of dW for the first layer). With
 * AVX2 a short K (one K block, panels of at most 64k floats: dW over one
 * sentence's tokens or a batch of 10) into a C block of at least 64k floats
 * packs every panel once and runs the row tiles outer, so C is written row
 * after row, and the threads split C by whole rows (the same bits;
 * benchmarks/results/shortk.md; dense_avx2.h).
 *
 * Code paths, picked at run time (mp_dense_level): AVX-512 intrinsics, AVX2 +
 * FMA intrinsics (the same schemes with 8-float vectors: 3 x 4 forward tiles,
 * 6 x 16 nn / tn tiles), and portable C written for GCC's vectoriser
 * (MP_SIMD_CLONES). No -march flag is needed.
 *
 * Determinism: the tiling, the K blocks and the reduction trees depend on
 * the shapes alone and every output element is produced by exactly one thread
 * with a fixed order of operations (which does not depend on the tile the
 * element falls in, nor on the alignment of the inputs), so results are
 * bit-identical for any thread count. The code paths differ in the last bits.
 *
 * Parallelism: blocks of W rows / C columns go to the threads when there are
 * enough of them, otherwise blocks of x / A rows; products below
 * MP_DENSE_MIN_WORK multiply-adds stay serial, so no OpenMP team is started
 * for them. */
#ifndef MEPROP_DENSE_H
#define MEPROP_DENSE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "parallel.h"

#if defined(__GNUC__)
#define MP_DENSE_AI static inline __attribute__((always_inline))
#else
#define MP_DENSE_AI static inline
#endif

/* Products below this many multiply-adds (131k, ~1.5 us on one core) run
 * serially. Measured on 2 cores, y = x W^T at 1 -> 2 threads: (1, 500, 500)
 * 10.4 -> 5.5 us, (10, 784, 500) 39 -> 20 us; (1, 100, 500) stays serial:
 * waking a team costs about a microsecond. */
#ifndef MP_DENSE_MIN_WORK
#define MP_DENSE_MIN_WORK (INT64_C(1) << 17)
#endif

static inline int mp_dense_team(int nthreads, int64_t work, int64_t units) {
    return work < MP_DENSE_MIN_WORK ? 1 : mp_team_size(nthreads, work, units);
}

static inline int64_t mp_dense_min(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t mp_dense_max(int64_t a, int64_t b) { return a > b ? a : b; }

/* part u of n units split into `parts` contiguous ranges (multiples of `align`) */
static inline void mp_dense_part(int64_t n, int64_t align, int parts, int u, int64_t *lo,
                                 int64_t *hi) {
    int64_t blocks = (n + align - 1) / align;
    *lo = mp_dense_min(n, blocks * u / parts * align);
    *hi = mp_dense_min(n, blocks * (u + 1) / parts * align);
}

/* ------------------------------------------------------------------------ */
/* Forward blocking shared by all paths.                                     */

#define MP_FWD_TILE 4                  /* x rows and W rows per register tile */
#ifndef MP_FWD_CHUNK_FLOATS
#define MP_FWD_CHUNK_FLOATS 65536
#endif
/* x rows per cache chunk: about 256 KiB of x, a multiple of the tile */
static inline int64_t mp_fwd_chunk_rows(int64_t n_in) {
    int64_t r = (int64_t)MP_FWD_CHUNK_FLOATS / (n_in > 0 ? n_in : 1);
    r = r / MP_FWD_TILE * MP_FWD_TILE;
    return r < 4 * MP_FWD_TILE ? 4 * MP_FWD_TILE : r;
}

static inline float mp_dense_relu(float v) { return v < 0.0f ? 0.0f : v; }   /* keeps NaN */

/* rows src + r*lds (r < nrows, ncols floats each) -> dst + r*ldd, zero-padded
 * to ldd floats */
static void mp_dense_copy_rows(float *dst, int64_t ldd, const float *src, int64_t lds,
                               int64_t nrows, int64_t ncols) {
    for (int64_t r = 0; r < nrows; r++) {
        memcpy(dst + r * ldd, src + r * lds, (size_t)ncols * sizeof(float));
        memset(dst + r * ldd + ncols, 0, (size_t)(ldd - ncols) * sizeof(float));
    }
}

/* The x rows of a chunk are copied to an aligned heap buffer (row stride
 * rounded up to 16 floats) when x is not 64-byte aligned row by row and the
 * copy is reused by at least MP_FWD_COPY_MIN_ROWS W rows: vector loads that
 * straddle cache lines cost about a fifth of the speed. (Copying W tiles as
 * well measured no faster.) The copy changes no arithmetic. Returns the
 * malloc'd block (NULL: use x in place) and the aligned buffer in *xbuf. */
#ifndef MP_FWD_COPY_MIN_ROWS
#define MP_FWD_COPY_MIN_ROWS 32
#endif
static void *mp_fwd_xbuf(const float *x, int64_t K, int64_t rows, int64_t wrows, float **xbuf) {
    *xbuf = NULL;
    if ((((uintptr_t)x & 63) == 0 && (K & 15) == 0) || wrows < MP_FWD_COPY_MIN_ROWS)
        return NULL;
    int64_t Kp = (K + 15) / 16 * 16;
    void *mem = malloc((size_t)(rows * Kp) * sizeof(float) + 64);
    if (mem) *xbuf = (float *)(((uintptr_t)mem + 63) & ~(uintptr_t)63);
    return mem;
}

/* ------------------------------------------------------------------------ */
/* Run-time choice of the code path: 2 AVX-512 intrinsics, 1 AVX2+FMA
 * intrinsics, 0 portable C (its SIMD clones). parallel.h's mp_simd_limit
 * caps it (tests use it to cover every path on one machine). */
#if MP_HAVE_AVX512_INTRIN
#define MP_DENSE_HAVE_AVX2 1
#ifndef MP_TARGET_AVX2
#define MP_TARGET_AVX2 __attribute__((target("avx2,fma")))
#endif
static inline int mp_dense_cpu_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
#define MP_DENSE_HAVE_AVX2 0
static inline int mp_dense_cpu_avx2(void) { return 0; }
#endif

static inline int mp_dense_level(void) {
    if (mp_cpu_avx512()) return 2;
    if (mp_simd_limit >= 1 && mp_dense_cpu_avx2()) return 1;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Portable paths. Plain C written so GCC vectorises each SIMD clone; FMA
 * contraction is allowed here so the AVX2 / AVX-512 clones use it. */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")

/* 16-lane partial sums folded with the same tree as the AVX-512 path */
static inline float mp_dense_hsum16(const float *a) {
    float s8[8], s4[4];
    for (int l = 0; l < 8; l++) s8[l] = a[l] + a[l + 8];
    for (int l = 0; l < 4; l++) s4[l] = s8[l] + s8[l + 4];
    return (s4[0] + s4[1]) + (s4[2] + s4[3]);
}

/* y rows [i0, i1) x W rows [j0, j1) of the forward */
MP_SIMD_CLONES
static void mp_fwd_range_generic(const float *MP_RESTRICT x, const float *MP_RESTRICT W,
                                 const float *MP_RESTRICT b, float *MP_RESTRICT y, int64_t K,
                                 int64_t N, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                                 int relu) {
    const int64_t chunk = mp_fwd_chunk_rows(K);
    const int64_t kfull = K / 16 * 16;
    for (int64_t ic = i0; ic < i1; ic += chunk) {
        int64_t ie = mp_dense_min(i1, ic + chunk);
        for (int64_t j = j0; j < j1; j += 4) {
            int nr = (int)mp_dense_min(4, j1 - j);
            const float *w0 = W + j * K;
            const float *w1 = W + (j + (nr > 1 ? 1 : 0)) * K;
            const float *w2 = W + (j + (nr > 2 ? 2 : 0)) * K;
            const float *w3 = W + (j + (nr > 3 ? 3 : 0)) * K;
            for (int64_t i = ic; i < ie; i++) {
                const float *xr = x + i * K;
                float a0[16], a1[16], a2[16], a3[16];
                for (int l = 0; l < 16; l++) a0[l] = a1[l] = a2[l] = a3[l] = 0.0f;
                for (int64_t k = 0; k < kfull; k += 16)
                    for (int l = 0; l < 16; l++) {
                        float xv = xr[k + l];
                        a0[l] += xv * w0[k + l];
                        a1[l] += xv * w1[k + l];
                        a2[l] += xv * w2[k + l];
                        a3[l] += xv * w3[k + l];
                    }
                for (int64_t k = kfull; k < K; k++) {
                    int l = (int)(k - kfull);
                    float xv = xr[k];
                    a0[l] += xv * w0[k];
                    a1[l] += xv * w1[k];
                    a2[l] += xv * w2[k];
                    a3[l] += xv * w3[k];
                }
                float s[4] = {mp_dense_hsum16(a0), mp_dense_hsum16(a1), mp_dense_hsum16(a2),
                              mp_dense_hsum16(a3)};
                for (int t = 0; t < nr; t++) {
                    float v = s[t] + (b ? b[j + t] : 0.0f);
                    y[i * N + j + t] = relu ? mp_dense_relu(v) : v;
                }
            }
        }
    }
}

/* C[i0:i1, j0:j1] = sum_k A(i, k) Bm[k, :], A(i, k) = A[i*a_rs + k*a_cs] */
MP_SIMD_CLONES
static void mp_op_range_generic(const float *MP_RESTRICT A, int64_t a_rs, int64_t a_cs,
                                const float *MP_RESTRICT Bm, float *MP_RESTRICT C, int64_t K,
                                int64_t N, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; j += 16) {
        int64_t nr = mp_dense_min(16, j1 - j);
        for (int64_t i = i0; i < i1; i += 4) {
            int64_t mr = mp_dense_min(4, i1 - i);
            const float *r0 = A + i * a_rs;
            const float *r1 = A + (i + (mr > 1 ? 1 : 0)) * a_rs;
            const float *r2 = A + (i + (mr > 2 ? 2 : 0)) * a_rs;
            const float *r3 = A + (i + (mr > 3 ? 3 : 0)) * a_rs;
            float c0[16], c1[16], c2[16], c3[16];
            for (int l = 0; l < 16; l++) c0[l] = c1[l] = c2[l] = c3[l] = 0.0f;
            if (nr == 16) {
                for (int64_t k = 0; k < K; k++) {
                    const float *br = Bm + k * N + j;
                    float e0 = r0[k * a_cs], e1 = r1[k * a_cs], e2 = r2[k * a_cs],
                          e3 = r3[k * a_cs];
                    for (int l = 0; l < 16; l++) {
                        c0[l] += e0 * br[l];
                        c1[l] += e1 * br[l];
                        c2[l] += e2 * br[l];
                        c3[l] += e3 * br[l];
                    }
                }
            } else {
                for (int64_t k = 0; k < K; k++) {
                    const float *br = Bm + k * N + j;
                    float e0 = r0[k * a_cs], e1 = r1[k * a_cs], e2 = r2[k * a_cs],
                          e3 = r3[k * a_cs];
                    for (int64_t l = 0; l < nr; l++) {
                        c0[l] += e0 * br[l];
                        c1[l] += e1 * br[l];
                        c2[l] += e2 * br[l];
                        c3[l] += e3 * br[l];
                    }
                }
            }
            float *cr = C + i * N + j;
            for (int64_t l = 0; l < nr; l++) cr[l] = c0[l];
            if (mr > 1) for (int64_t l = 0; l < nr; l++) cr[N + l] = c1[l];
            if (mr > 2) for (int64_t l = 0; l < nr; l++) cr[2 * N + l] = c2[l];
            if (mr > 3) for (int64_t l = 0; l < nr; l++) cr[3 * N + l] = c3[l];
        }
    }
}

#pragma GCC pop_options


/* 1: the AVX2 nn / tn products take the row-outer order for short K
 * (dense_avx2.h, mp_op_shortk_avx2), 0: always the column-outer one. Both
 * give the same bits; the switch is for tests and benchmarks. */
static int mp_dense_shortk = 1;

#include "dense_avx2.h"
#include "dense_avx512.h"


/* ------------------------------------------------------------------------ */
/* Entry points.                                                             */

/* y (B, n_out) = x (B, n_in) W^T + b (b may be NULL), then max(y, 0) if relu. */
static void mp_linear_forward(const float *x, const float *W, const float *b, float *y,
                              int64_t B, int64_t n_in, int64_t n_out, int relu, int nthreads) {
    if (B <= 0 || n_out <= 0) return;
    const int64_t work = B * n_in * n_out;
    const int64_t wq = (n_out + MP_FWD_TILE - 1) / MP_FWD_TILE;   /* W row tiles */
    const int64_t xq = (B + MP_FWD_TILE - 1) / MP_FWD_TILE;       /* x row tiles */
    int team = mp_dense_team(nthreads, work, mp_dense_max(wq, xq));
    /* split the W rows unless there are too few tiles of them to share well */
    const int split_w = wq >= 4 * team || wq >= xq;
    const int level = mp_dense_level();
    #pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int u = 0; u < team; u++) {
        int64_t i0 = 0, i1 = B, j0 = 0, j1 = n_out;
        if (split_w) mp_dense_part(n_out, MP_FWD_TILE, team, u, &j0, &j1);
        else mp_dense_part(B, 12, team, u, &i0, &i1);
        if (i0 >= i1 || j0 >= j1) continue;
#if MP_HAVE_AVX512_INTRIN
        if (level == 2) {
            mp_fwd_range_avx512(x, W, b, y, n_in, n_out, i0, i1, j0, j1, relu);
            continue;
        }
#endif
#if MP_DENSE_HAVE_AVX2
        if (level == 1) {
            mp_fwd_range_avx2(x, W, b, y, n_in, n_out, i0, i1, j0, j1, relu);
            continue;
        }
#endif
        (void)level;
        mp_fwd_range_generic(x, W, b, y, n_in, n_out, i0, i1, j0, j1, relu);
    }
}

/* C (M, N) = A(i, k) Bm[k, :] summed over k < K; tn picks A's layout. */
static void mp_matmul_impl(const float *A, int tn, const float *Bm, float *C, int64_t M,
                           int64_t K, int64_t N, int nthreads) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        memset(C, 0, (size_t)(M * N) * sizeof(float));
        return;
    }
    const int64_t lda = tn ? M : K;
    const int64_t work = M * K * N;
    const int level = mp_dense_level();
    int64_t nalign = 16, malign = 4;
    (void)level;
#if MP_HAVE_AVX512_INTRIN
    if (level == 2) {
        nalign = 16 * (tn ? MP_TN_NV : MP_NN_NV);
        malign = tn ? MP_TN_MR : MP_NN_MR;
    }
#endif
#if MP_DENSE_HAVE_AVX2
    if (level == 1) malign = MP_OP_MR_AVX2;
#endif
    const int64_t nb = (N + nalign - 1) / nalign, mb = (M + malign - 1) / malign;
    int team = mp_dense_team(nthreads, work, mp_dense_max(nb, mb));
    int split_n = nb >= 4 * team || nb >= mb;
#if MP_DENSE_HAVE_AVX2
    /* the AVX2 short-K order writes C row after row: give each thread whole
     * rows (a band per thread) when every band is still large enough for it */
    if (level == 1 && mp_op_shortk_fits(K, N, (M / team) * N) && mb >= 2 * team) split_n = 0;
#endif
    #pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int u = 0; u < team; u++) {
        int64_t i0 = 0, i1 = M, j0 = 0, j1 = N;
        if (split_n) mp_dense_part(N, nalign, team, u, &j0, &j1);
        else mp_dense_part(M, malign, team, u, &i0, &i1);
        if (i0 >= i1 || j0 >= j1) continue;
#if MP_HAVE_AVX512_INTRIN
        if (level == 2) {
            if (tn) mp_op_range_tn_avx512(A, M, Bm, C, K, N, i0, i1, j0, j1);
            else mp_op_range_nn_avx512(A, Bm, C, K, N, i0, i1, j0, j1);
            continue;
        }
#endif
#if MP_DENSE_HAVE_AVX2
        if (level == 1) {
            if (tn) mp_op_range_tn_avx2(A, M, Bm, C, K, N, i0, i1, j0, j1);
            else mp_op_range_nn_avx2(A, Bm, C, K, N, i0, i1, j0, j1);
            continue;
        }
#endif
        mp_op_range_generic(A, tn ? 1 : lda, tn ? lda : 1, Bm, C, K, N, i0, i1, j0, j1);
    }
}

/* C (M, N) = A (M, K) @ Bm (K, N) */
static void mp_matmul_nn(const float *A, const float *Bm, float *C, int64_t M, int64_t K,
                         int64_t N, int nthreads) {
    mp_matmul_impl(A, 0, Bm, C, M, K, N, nthreads);
}

/* C (M, N) = A^T @ Bm with A (K, M), Bm (K, N) */
static void mp_matmul_tn(const float *A, const float *Bm, float *C, int64_t M, int64_t K,
                         int64_t N, int nthreads) {
    mp_matmul_impl(A, 1, Bm, C, M, K, N, nthreads);
}

#endif
