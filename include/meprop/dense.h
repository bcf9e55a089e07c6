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
 * input pixels of MNIST: ~30% of the work of dW for the first layer).
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

/* ------------------------------------------------------------------------ */
/* AVX2 + FMA paths: the same schemes with 8-float vectors and 16 registers.  */
#if MP_DENSE_HAVE_AVX2

/* [sum a0, sum a1, sum a2, sum a3], each over its 8 lanes as
 * ((l0+l1) + (l2+l3)) + ((l4+l5) + (l6+l7)) */
MP_TARGET_AVX2 MP_DENSE_AI __m128 mp_dense_hsum4_avx2(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* forward tile: x rows xr + q*ldx (q < mr <= 3, compile-time) by the W rows
 * w0..w3; 12 accumulators + 3 x vectors + 1 W vector = 16 registers */
MP_TARGET_AVX2 MP_DENSE_AI void
mp_fwd_tile_avx2(const float *xr, int64_t ldx, const float *w0, const float *w1,
                 const float *w2, const float *w3, int64_t K, int mr, float *yr, int64_t ldy,
                 __m128 bias, int nr, int relu) {
    __m256 acc[3][4];
    const float *wr[4] = {w0, w1, w2, w3};
    for (int q = 0; q < 3; q++)
        for (int m = 0; m < 4; m++) acc[q][m] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 xv[3];
        for (int q = 0; q < mr; q++) {
            xv[q] = _mm256_loadu_ps(xr + q * ldx + k);
            __asm__("" : "+x"(xv[q]));
        }
        for (int m = 0; m < 4; m++) {
            __m256 wv = _mm256_loadu_ps(wr[m] + k);
            __asm__("" : "+x"(wv));
            for (int q = 0; q < mr; q++) acc[q][m] = _mm256_fmadd_ps(xv[q], wv, acc[q][m]);
        }
    }
    if (k < K) {
        __m256i km = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(K - k)),
                                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256 xv[3];
        for (int q = 0; q < mr; q++) xv[q] = _mm256_maskload_ps(xr + q * ldx + k, km);
        for (int m = 0; m < 4; m++) {
            __m256 wv = _mm256_maskload_ps(wr[m] + k, km);
            for (int q = 0; q < mr; q++) acc[q][m] = _mm256_fmadd_ps(xv[q], wv, acc[q][m]);
        }
    }
    const __m128i nm = _mm_cmpgt_epi32(_mm_set1_epi32(nr), _mm_setr_epi32(0, 1, 2, 3));
    for (int q = 0; q < mr; q++) {
        __m128 t = mp_dense_hsum4_avx2(acc[q][0], acc[q][1], acc[q][2], acc[q][3]);
        t = _mm_add_ps(t, bias);
        if (relu) t = _mm_max_ps(_mm_setzero_ps(), t);   /* NaN in t passes through */
        if (nr == 4) _mm_storeu_ps(yr + q * ldy, t);
        else _mm_maskstore_ps(yr + q * ldy, nm, t);
    }
}

MP_TARGET_AVX2
static void mp_fwd_range_avx2(const float *x, const float *W, const float *b, float *y,
                              int64_t K, int64_t N, int64_t i0, int64_t i1, int64_t j0,
                              int64_t j1, int relu) {
    const int64_t chunk = mp_fwd_chunk_rows(K);
    const int64_t Kp = (K + 15) / 16 * 16;
    float *xbuf;
    void *xmem = mp_fwd_xbuf(x, K, mp_dense_min(chunk, i1 - i0), j1 - j0, &xbuf);
    for (int64_t ic = i0; ic < i1; ic += chunk) {
        int64_t ie = mp_dense_min(i1, ic + chunk);
        const float *xs = x + ic * K;
        int64_t ldx = K;
        if (xbuf) {
            mp_dense_copy_rows(xbuf, Kp, xs, K, ie - ic, K);
            xs = xbuf;
            ldx = Kp;
        }
        for (int64_t j = j0; j < j1; j += 4) {
            int nr = (int)mp_dense_min(4, j1 - j);
            const float *w0 = W + j * K;
            const float *w1 = W + (j + (nr > 1 ? 1 : 0)) * K;
            const float *w2 = W + (j + (nr > 2 ? 2 : 0)) * K;
            const float *w3 = W + (j + (nr > 3 ? 3 : 0)) * K;
            __m128 bias = _mm_setzero_ps();
            if (b)
                bias = _mm_maskload_ps(b + j, _mm_cmpgt_epi32(_mm_set1_epi32(nr),
                                                              _mm_setr_epi32(0, 1, 2, 3)));
            int64_t i = ic;
            const float *xt = xs;
            for (; i + 3 <= ie; i += 3, xt += 3 * ldx)
                mp_fwd_tile_avx2(xt, ldx, w0, w1, w2, w3, K, 3, y + i * N + j, N, bias, nr,
                                 relu);
            if (ie - i == 2)
                mp_fwd_tile_avx2(xt, ldx, w0, w1, w2, w3, K, 2, y + i * N + j, N, bias, nr,
                                 relu);
            else if (ie - i == 1)
                mp_fwd_tile_avx2(xt, ldx, w0, w1, w2, w3, K, 1, y + i * N + j, N, bias, nr,
                                 relu);
        }
    }
    free(xmem);
}

/* nn / tn tiles: MR_AVX2 rows of C by 16 columns (2 vectors), K blocks of
 * KC_AVX2; the Bm panel is always read from a packed, zero-padded copy when
 * it is partial, so B loads are never masked. */
#define MP_OP_MR_AVX2 6
#define MP_OP_KC_AVX2 256

MP_TARGET_AVX2 MP_DENSE_AI void
mp_op_tile_avx2(const float *a, int64_t a_rs, int64_t a_cs, int mr, const float *b, int64_t ldb,
                int cfull, __m256i cm0, __m256i cm1, int64_t kc, float *c, int64_t ldc,
                int load_c) {
    __m256 acc[MP_OP_MR_AVX2][2];
    const float *ar[MP_OP_MR_AVX2];
    for (int i = 0; i < mr; i++) ar[i] = a + i * a_rs;
    for (int i = 0; i < mr; i++) {
        if (!load_c) {
            acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        } else if (cfull) {
            acc[i][0] = _mm256_loadu_ps(c + i * ldc);
            acc[i][1] = _mm256_loadu_ps(c + i * ldc + 8);
        } else {
            acc[i][0] = _mm256_maskload_ps(c + i * ldc, cm0);
            acc[i][1] = _mm256_maskload_ps(c + i * ldc + 8, cm1);
        }
    }
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(b + k * ldb), b1 = _mm256_loadu_ps(b + k * ldb + 8);
        __asm__("" : "+x"(b0), "+x"(b1));
        for (int i = 0; i < mr; i++) {
            __m256 e = _mm256_broadcast_ss(ar[i] + k * a_cs);
            acc[i][0] = _mm256_fmadd_ps(e, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(e, b1, acc[i][1]);
        }
    }
    for (int i = 0; i < mr; i++) {
        if (cfull) {
            _mm256_storeu_ps(c + i * ldc, acc[i][0]);
            _mm256_storeu_ps(c + i * ldc + 8, acc[i][1]);
        } else {
            _mm256_maskstore_ps(c + i * ldc, cm0, acc[i][0]);
            _mm256_maskstore_ps(c + i * ldc + 8, cm1, acc[i][1]);
        }
    }
}

#define MP_OP_TILE_CASE_AVX2(R) \
    case R: \
        if (cfull) \
            mp_op_tile_avx2(a, tn ? 1 : lda, tn ? lda : 1, R, bp, ldb, 1, cm0, cm1, kc, cp, N, \
                            load_c); \
        else \
            mp_op_tile_avx2(a, tn ? 1 : lda, tn ? lda : 1, R, bp, ldb, 0, cm0, cm1, kc, cp, N, \
                            load_c); \
        break;

MP_TARGET_AVX2 MP_DENSE_AI void
mp_op_range_tmpl_avx2(const float *A, int64_t lda, const int tn, const float *Bm, float *C,
                      int64_t K, int64_t N, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    float pack[MP_OP_KC_AVX2 * 16] __attribute__((aligned(64)));
    const int MR = MP_OP_MR_AVX2;
    const int packed = i1 - i0 >= 3 * MR;
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t j = j0; j < j1; j += 16) {
        int64_t nr = mp_dense_min(16, j1 - j);
        const int cfull = nr == 16;
        const __m256i cm0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr), iota);
        const __m256i cm1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr - 8), iota);
        for (int64_t k0 = 0; k0 < K; k0 += MP_OP_KC_AVX2) {
            int64_t kc = mp_dense_min(MP_OP_KC_AVX2, K - k0);
            const float *bp = Bm + k0 * N + j;
            int64_t ldb = N;
            if (packed || !cfull) {
                for (int64_t k = 0; k < kc; k++) {
                    const float *src = Bm + (k0 + k) * N + j;
                    _mm256_store_ps(pack + k * 16, _mm256_maskload_ps(src, cm0));
                    _mm256_store_ps(pack + k * 16 + 8, _mm256_maskload_ps(src + 8, cm1));
                }
                bp = pack;
                ldb = 16;
            }
            const int load_c = k0 > 0;
            for (int64_t i = i0, r; i < i1; i += r) {
                int64_t tiles = (i1 - i + MR - 1) / MR;
                r = (i1 - i + tiles - 1) / tiles;
                const float *a = tn ? A + k0 * lda + i : A + i * lda + k0;
                float *cp = C + i * N + j;
                switch ((int)r) {
                    MP_OP_TILE_CASE_AVX2(1) MP_OP_TILE_CASE_AVX2(2) MP_OP_TILE_CASE_AVX2(3)
                    MP_OP_TILE_CASE_AVX2(4) MP_OP_TILE_CASE_AVX2(5) MP_OP_TILE_CASE_AVX2(6)
                    default: break;
                }
            }
        }
    }
}

MP_TARGET_AVX2
static void mp_op_range_nn_avx2(const float *A, const float *Bm, float *C, int64_t K, int64_t N,
                                int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    mp_op_range_tmpl_avx2(A, K, 0, Bm, C, K, N, i0, i1, j0, j1);
}

MP_TARGET_AVX2
static void mp_op_range_tn_avx2(const float *A, int64_t M, const float *Bm, float *C, int64_t K,
                                int64_t N, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    mp_op_range_tmpl_avx2(A, M, 1, Bm, C, K, N, i0, i1, j0, j1);
}

#endif /* MP_DENSE_HAVE_AVX2 */

/* ------------------------------------------------------------------------ */
/* AVX-512 paths.                                                            */
#if MP_HAVE_AVX512_INTRIN

/* Pairwise folds used by the 16-accumulator reduction. */
MP_TARGET_AVX512 MP_DENSE_AI __m512 mp_dense_fold_half(__m512 a, __m512 b) {
    /* lanes 0-7: a[l] + a[l+8]; lanes 8-15: b[l] + b[l+8] */
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
}
MP_TARGET_AVX512 MP_DENSE_AI __m512 mp_dense_fold_quarter(__m512 a, __m512 b) {
    /* 128-bit lane q: [a.q0 + a.q1, b.q0 + b.q1, a.q2 + a.q3, b.q2 + b.q3][q] */
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
}
MP_TARGET_AVX512 MP_DENSE_AI __m512 mp_dense_fold_pair(__m512 a, __m512 b) {
    /* per 128-bit lane: [a0 + a1, a2 + a3, b0 + b1, b2 + b3] */
    return _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x88), _mm512_shuffle_ps(a, b, 0xDD));
}
/* r[4q + m] = horizontal sum of v[4m + q]; every sum uses the same tree as
 * mp_dense_hsum16: ((l + l+8) + (l+4 + l+12)), lanes 0..3 folded (0+1) + (2+3). */
MP_TARGET_AVX512 MP_DENSE_AI __m512 mp_dense_reduce16(const __m512 *v) {
    __m512 u[8], w[4];
    for (int t = 0; t < 8; t++) u[t] = mp_dense_fold_half(v[2 * t], v[2 * t + 1]);
    for (int t = 0; t < 4; t++) w[t] = mp_dense_fold_quarter(u[2 * t], u[2 * t + 1]);
    return mp_dense_fold_pair(mp_dense_fold_pair(w[0], w[1]), mp_dense_fold_pair(w[2], w[3]));
}

/* One forward tile: x rows xr + q*ldx, q < mr (1 <= mr <= 6, a
 * compile-time constant after inlining), by the W rows w0..w3 (rows past the
 * valid ones repeat a valid row; their results are not stored: nmask has the
 * live columns). Registers: 4*mr accumulators plus mr x vectors and 1 W
 * vector (mr <= 4), or 4 W vectors and 1 x vector (mr = 5, 6).
 * nblk >= 0: only the 16-float blocks blk[0:nblk] of the K / 16 full ones
 * are summed (the others are zero in every x row of the tile: MNIST pixels;
 * skipping a zero block leaves each accumulator lane exactly as it was, for
 * finite W); nblk < 0: all of them. The tail past K / 16 * 16 always runs. */
#define MP_FWD_BODY_AVX512(k)                                                       \
    if (mr <= 4) {                                                                   \
        __m512 xv[4];                                                                \
        for (int q = 0; q < mr; q++) {                                               \
            xv[q] = _mm512_loadu_ps(xr + q * ldx + (k));                             \
            __asm__("" : "+v"(xv[q]));                                               \
        }                                                                            \
        for (int m = 0; m < 4; m++) {                                                \
            __m512 wv = _mm512_loadu_ps(wr[m] + (k));                                \
            __asm__("" : "+v"(wv));                                                  \
            for (int q = 0; q < mr; q++) acc[q][m] = _mm512_fmadd_ps(xv[q], wv, acc[q][m]); \
        }                                                                            \
    } else {                                                                         \
        __m512 wv[4];                                                                \
        for (int m = 0; m < 4; m++) {                                                \
            wv[m] = _mm512_loadu_ps(wr[m] + (k));                                    \
            __asm__("" : "+v"(wv[m]));                                               \
        }                                                                            \
        for (int q = 0; q < mr; q++) {                                               \
            __m512 xv = _mm512_loadu_ps(xr + q * ldx + (k));                         \
            __asm__("" : "+v"(xv));                                                  \
            for (int m = 0; m < 4; m++) acc[q][m] = _mm512_fmadd_ps(xv, wv[m], acc[q][m]); \
        }                                                                            \
    }
MP_TARGET_AVX512 MP_DENSE_AI void
mp_fwd_tile_avx512(const float *xr, int64_t ldx, const float *w0, const float *w1,
                   const float *w2, const float *w3, int64_t K, int mr, float *yr, int64_t ldy,
                   __m128 bias, __mmask8 nmask, int relu, const int32_t *blk, int64_t nblk) {
    __m512 acc[8][4];
    const float *wr[4] = {w0, w1, w2, w3};
    for (int q = 0; q < 8; q++)
        for (int m = 0; m < 4; m++) acc[q][m] = _mm512_setzero_ps();
    /* the empty asm statements pin each loaded vector in a register, so GCC
     * does not fold (and so repeat) the loads into the FMAs; the operand
     * with fewer rows is held, the other streamed one vector at a time */
    const int64_t K16 = K / 16 * 16;
    if (nblk < 0) {
        for (int64_t k = 0; k < K16; k += 16) { MP_FWD_BODY_AVX512(k) }
    } else {
        for (int64_t t = 0; t < nblk; t++) {
            const int64_t k = (int64_t)blk[t] * 16;
            MP_FWD_BODY_AVX512(k)
        }
    }
    int64_t k = K16;
    if (k < K) {
        __mmask16 km = (__mmask16)((1u << (K - k)) - 1u);
        __m512 xv[6];
        for (int q = 0; q < mr; q++) xv[q] = _mm512_maskz_loadu_ps(km, xr + q * ldx + k);
        for (int m = 0; m < 4; m++) {
            __m512 wv = _mm512_maskz_loadu_ps(km, wr[m] + k);
            for (int q = 0; q < mr; q++) acc[q][m] = _mm512_fmadd_ps(xv[q], wv, acc[q][m]);
        }
    }
    const __m128 zero = _mm_setzero_ps();
    for (int g = 0; g < mr; g += 4) {          /* groups of 4 x rows */
        __m512 v[16];
        for (int m = 0; m < 4; m++)
            for (int q = 0; q < 4; q++) v[4 * m + q] = acc[g + q][m];
        __m512 r = mp_dense_reduce16(v);
        __m128 o[4];
        o[0] = _mm512_castps512_ps128(r);
        o[1] = _mm512_extractf32x4_ps(r, 1);
        o[2] = _mm512_extractf32x4_ps(r, 2);
        o[3] = _mm512_extractf32x4_ps(r, 3);
        for (int q = 0; q < 4 && g + q < mr; q++) {
            __m128 t = _mm_add_ps(o[q], bias);
            if (relu) t = _mm_max_ps(zero, t);     /* NaN in t passes through */
            _mm_mask_storeu_ps(yr + (g + q) * ldy, nmask, t);
        }
    }
}
#undef MP_FWD_BODY_AVX512

/* The x-row tiles of a chunk of n rows, as row counts in order: 4-row tiles;
 * a remainder of 5 or 6 rows is one tile, 7 is 4 + 3, and a chunk of 9 to 12
 * rows starts with a 6-row tile (fewer passes over the W rows for small
 * batches). Returns the number of tiles (at most n / 4 + 2). */
static inline int64_t mp_fwd_tiles(int64_t n, int *mr) {
    int64_t t = 0, left = n;
    if (left >= 9 && left <= 12) { mr[t++] = 6; left -= 6; }
    for (; left >= 8 || left == 4; left -= 4) mr[t++] = 4;
    if (left == 7) { mr[t++] = 4; mr[t++] = 3; }
    else if (left > 0) mr[t++] = (int)left;
    return t;
}

/* The full 16-float blocks of K in which some of the mr rows xr + q*ldx has
 * a non-zero (NaN counts as non-zero) into blk; returns their count, or -1
 * when that is every block (then the tile runs its plain loop). */
MP_TARGET_AVX512
static int64_t mp_fwd_nonzero_blocks(const float *xr, int64_t ldx, int mr, int64_t K,
                                     int32_t *blk) {
    const int64_t nb = K / 16;
    const __m512 zero = _mm512_setzero_ps();
    int64_t c = 0;
    for (int64_t kb = 0; kb < nb; kb++) {
        __mmask16 any = 0;
        for (int q = 0; q < mr; q++)
            any |= _mm512_cmp_ps_mask(_mm512_loadu_ps(xr + q * ldx + kb * 16), zero, _CMP_NEQ_UQ);
        if (any) blk[c++] = (int32_t)kb;
    }
    return c == nb ? -1 : c;
}

MP_TARGET_AVX512
static void mp_fwd_range_avx512(const float *x, const float *W, const float *b, float *y,
                                int64_t K, int64_t N, int64_t i0, int64_t i1, int64_t j0,
                                int64_t j1, int relu) {
    const int64_t chunk = mp_fwd_chunk_rows(K);
    const int64_t Kp = (K + 15) / 16 * 16;
    const int64_t max_tiles = chunk / 4 + 2, nb = K / 16;
    float *xbuf;
    void *xmem = mp_fwd_xbuf(x, K, mp_dense_min(chunk, i1 - i0), j1 - j0, &xbuf);
    /* per tile: its rows, its first row and the list of its non-zero blocks */
    int *tile_mr = (int *)malloc((size_t)(max_tiles + 1) * (sizeof(int) + sizeof(int64_t) * 2)
                                 + (size_t)(max_tiles * (nb + 1)) * sizeof(int32_t));
    if (!tile_mr) { free(xmem); return; }   /* not reached in practice: a few KiB */
    int64_t *tile_row = (int64_t *)(tile_mr + max_tiles + (max_tiles & 1));
    int64_t *tile_nblk = tile_row + max_tiles;
    int32_t *tile_blk = (int32_t *)(tile_nblk + max_tiles);
    for (int64_t ic = i0; ic < i1; ic += chunk) {
        int64_t ie = mp_dense_min(i1, ic + chunk);
        const float *xs = x + ic * K;
        int64_t ldx = K;
        if (xbuf) {
            mp_dense_copy_rows(xbuf, Kp, xs, K, ie - ic, K);
            xs = xbuf;
            ldx = Kp;
        }
        int64_t nt = mp_fwd_tiles(ie - ic, tile_mr), row = 0;
        for (int64_t t = 0; t < nt; t++) {
            tile_row[t] = row;
            tile_nblk[t] = mp_fwd_nonzero_blocks(xs + row * ldx, ldx, tile_mr[t], K,
                                                 tile_blk + t * nb);
            row += tile_mr[t];
        }
        for (int64_t j = j0; j < j1; j += 4) {
            int nr = (int)mp_dense_min(4, j1 - j);
            __mmask8 nmask = (__mmask8)((1u << nr) - 1u);
            const float *w0 = W + j * K;
            const float *w1 = W + (j + (nr > 1 ? 1 : 0)) * K;
            const float *w2 = W + (j + (nr > 2 ? 2 : 0)) * K;
            const float *w3 = W + (j + (nr > 3 ? 3 : 0)) * K;
            __m128 bias = b ? _mm_maskz_loadu_ps(nmask, b + j) : _mm_setzero_ps();
            for (int64_t t = 0; t < nt; t++) {
                const float *xt = xs + tile_row[t] * ldx;
                float *yt = y + (ic + tile_row[t]) * N + j;
                const int32_t *blk = tile_blk + t * nb;
                int64_t nblk = tile_nblk[t];
                switch (tile_mr[t]) {   /* constant row counts for the inlined tile */
                case 6: mp_fwd_tile_avx512(xt, ldx, w0, w1, w2, w3, K, 6, yt, N, bias, nmask,
                                           relu, blk, nblk); break;
                case 5: mp_fwd_tile_avx512(xt, ldx, w0, w1, w2, w3, K, 5, yt, N, bias, nmask,
                                           relu, blk, nblk); break;
                case 4: mp_fwd_tile_avx512(xt, ldx, w0, w1, w2, w3, K, 4, yt, N, bias, nmask,
                                           relu, blk, nblk); break;
                case 3: mp_fwd_tile_avx512(xt, ldx, w0, w1, w2, w3, K, 3, yt, N, bias, nmask,
                                           relu, blk, nblk); break;
                case 2: mp_fwd_tile_avx512(xt, ldx, w0, w1, w2, w3, K, 2, yt, N, bias, nmask,
                                           relu, blk, nblk); break;
                default: mp_fwd_tile_avx512(xt, ldx, w0, w1, w2, w3, K, 1, yt, N, bias, nmask,
                                            relu, blk, nblk); break;
                }
            }
        }
    }
    free(tile_mr);
    free(xmem);
}

/* Outer-product tiles for nn / tn: MR rows of C by NV 16-float vectors,
 * K in blocks of KC (the packed Bm panel, KC x 16*NV floats, is 32 KiB). */
#ifndef MP_NN_MR
#define MP_NN_MR 6
#endif
#ifndef MP_NN_NV
#define MP_NN_NV 4
#endif
#ifndef MP_NN_KC
#define MP_NN_KC 128
#endif
#ifndef MP_TN_MR
#define MP_TN_MR 8
#endif
#ifndef MP_TN_NV
#define MP_TN_NV 3
#endif
#ifndef MP_TN_KC
#define MP_TN_KC 160
#endif
/* the Bm panel is copied when at least this many row tiles reuse it */
#ifndef MP_OP_PACK_TILES
#define MP_OP_PACK_TILES 3
#endif
#define MP_OP_MAXR 12
#define MP_OP_MAXV 4

/* C[0:mr, 0:16*nv] (+)= sum_{t<kn} A(i, ks[t]) B(t) with A(i, k) = a[i*a_rs + k*a_cs]
 * and B(t) = b + boff[t] (ks: the k of each step, ascending; boff: where
 * its B row segment starts); bmask[v] / cmask[v]: the lanes of vector v to
 * load from B / to load and store in C. mr, nv, a_rs or a_cs: compile-time
 * constants after inlining. Each C element is one FMA chain over k (started
 * from C when load_c), so its value does not depend on the tile it is in. */
MP_TARGET_AVX512 MP_DENSE_AI void
mp_op_tile_avx512(const float *a, int64_t a_rs, int64_t a_cs, int mr, int nv, const float *b,
                  const int32_t *ks, const int64_t *boff, const __mmask16 *bmask,
                  const __mmask16 *cmask, int64_t kn, float *c, int64_t ldc, int load_c) {
    __m512 acc[MP_OP_MAXR][MP_OP_MAXV];
    const float *ar[MP_OP_MAXR];
    for (int i = 0; i < mr; i++) ar[i] = a + i * a_rs;
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < nv; v++)
            acc[i][v] = load_c ? _mm512_maskz_loadu_ps(cmask[v], c + i * ldc + 16 * v)
                               : _mm512_setzero_ps();
    for (int64_t t = 0; t < kn; t++) {
        const int64_t k = ks[t];
        const float *bt = b + boff[t];
        __m512 bv[MP_OP_MAXV];
        for (int v = 0; v < nv; v++) {
            bv[v] = _mm512_maskz_loadu_ps(bmask[v], bt + 16 * v);
            __asm__("" : "+v"(bv[v]));     /* one load per vector (no folding) */
        }
        for (int i = 0; i < mr; i++) {
            __m512 e = _mm512_set1_ps(ar[i][k * a_cs]);
            for (int v = 0; v < nv; v++) acc[i][v] = _mm512_fmadd_ps(e, bv[v], acc[i][v]);
        }
    }
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < nv; v++)
            _mm512_mask_storeu_ps(c + i * ldc + 16 * v, cmask[v], acc[i][v]);
}

/* one call per row tile of the range; tails get their own instantiation */
#define MP_OP_TILE_CASE(R) \
    case R: \
        if (R <= MR) \
            mp_op_tile_avx512(a, tn ? 1 : lda, tn ? lda : 1, R, NV, bp, ks, boff, bm, live, \
                              kn, cp, N, load_c); \
        break;

/* C[i0:i1, j0:j1] = sum_k A(i, k) Bm[k, :] with MR x 16*NV tiles;
 * A(i, k) = A[k*lda + i] (tn) or A[i*lda + k] (nn).
 * tn (dW = dy^T x) skips the k whose Bm row segment in the panel is zero: Bm
 * is then a layer's input, and MNIST pixels leave ~30% of 48-float row
 * segments all zero. A skipped step would have added A(i, k) * 0 to each
 * sum, so the sums are the same for finite A (at most the sign of a zero
 * sum can differ). The steps kept depend on the panel alone (its columns and
 * K block, which do not depend on the thread split), so results stay
 * bit-identical for any thread count. */
MP_TARGET_AVX512 MP_DENSE_AI void
mp_op_range_tmpl_avx512(const float *A, int64_t lda, const int tn, const int MR, const int NV,
                        const int KC, float *pack, int32_t *ks, int64_t *boff, const float *Bm,
                        float *C, int64_t K, int64_t N, int64_t i0, int64_t i1, int64_t j0,
                        int64_t j1) {
    const int NR = 16 * NV;
    __mmask16 ones[MP_OP_MAXV];
    for (int v = 0; v < NV; v++) ones[v] = (__mmask16)0xFFFF;
    const int packed = i1 - i0 >= (int64_t)MP_OP_PACK_TILES * MR;
    for (int64_t j = j0; j < j1; j += NR) {
        int64_t nr = mp_dense_min(NR, j1 - j);
        __mmask16 live[MP_OP_MAXV];
        for (int v = 0; v < NV; v++) {
            int64_t n = nr - 16 * v;
            live[v] = n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0
                                                           : (__mmask16)((1u << n) - 1u);
        }
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            int64_t kc = mp_dense_min(KC, K - k0);
            const float *bp;
            const __mmask16 *bm;
            int64_t kn = 0;
            /* the steps: every k (nn), or the k with a non-zero row segment (tn),
             * stored or packed in order */
            if (packed || tn) {
                for (int64_t k = 0; k < kc; k++) {
                    const float *row = Bm + (k0 + k) * N + j;
                    __mmask16 nz = 0;   /* NaN counts as non-zero: it must propagate */
                    for (int v = 0; v < NV; v++) {
                        __m512 r = _mm512_maskz_loadu_ps(live[v], row + 16 * v);
                        if (packed) _mm512_store_ps(pack + kn * NR + 16 * v, r);
                        nz |= _mm512_cmp_ps_mask(r, _mm512_setzero_ps(), _CMP_NEQ_UQ);
                    }
                    ks[kn] = (int32_t)k;
                    boff[kn] = packed ? kn * NR : k * N;
                    kn += !tn || nz != 0;
                }
            } else {
                for (int64_t k = 0; k < kc; k++) {
                    ks[k] = (int32_t)k;
                    boff[k] = k * N;
                }
                kn = kc;
            }
            if (packed) {
                bp = pack;
                bm = ones;
            } else {
                bp = Bm + k0 * N + j;
                bm = live;
            }
            const int load_c = k0 > 0;
            /* row tiles of near-equal heights (at most MR): 20 rows go as
             * 5+5+5+5, not 6+6+6+2 */
            for (int64_t i = i0, r; i < i1; i += r) {
                int64_t tiles = (i1 - i + MR - 1) / MR;
                r = (i1 - i + tiles - 1) / tiles;
                const float *a = tn ? A + k0 * lda + i : A + i * lda + k0;
                float *cp = C + i * N + j;
                switch ((int)r) {
                    MP_OP_TILE_CASE(1) MP_OP_TILE_CASE(2) MP_OP_TILE_CASE(3)
                    MP_OP_TILE_CASE(4) MP_OP_TILE_CASE(5) MP_OP_TILE_CASE(6)
                    MP_OP_TILE_CASE(7) MP_OP_TILE_CASE(8) MP_OP_TILE_CASE(9)
                    MP_OP_TILE_CASE(10) MP_OP_TILE_CASE(11) MP_OP_TILE_CASE(12)
                    default: break;
                }
            }
        }
    }
}

MP_TARGET_AVX512
static void mp_op_range_nn_avx512(const float *A, const float *Bm, float *C, int64_t K,
                                  int64_t N, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    float pack[MP_NN_KC * 16 * MP_NN_NV] __attribute__((aligned(64)));
    int32_t ks[MP_NN_KC];
    int64_t boff[MP_NN_KC];
    mp_op_range_tmpl_avx512(A, K, 0, MP_NN_MR, MP_NN_NV, MP_NN_KC, pack, ks, boff, Bm, C, K, N,
                            i0, i1, j0, j1);
}

MP_TARGET_AVX512
static void mp_op_range_tn_avx512(const float *A, int64_t M, const float *Bm, float *C,
                                  int64_t K, int64_t N, int64_t i0, int64_t i1, int64_t j0,
                                  int64_t j1) {
    float pack[MP_TN_KC * 16 * MP_TN_NV] __attribute__((aligned(64)));
    int32_t ks[MP_TN_KC];
    int64_t boff[MP_TN_KC];
    mp_op_range_tmpl_avx512(A, M, 1, MP_TN_MR, MP_TN_NV, MP_TN_KC, pack, ks, boff, Bm, C, K, N,
                            i0, i1, j0, j1);
}

#endif /* MP_HAVE_AVX512_INTRIN */

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
    const int split_n = nb >= 4 * team || nb >= mb;
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
