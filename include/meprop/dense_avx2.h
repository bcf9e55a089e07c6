/* The AVX2 + FMA paths of the dense products (dense.h includes this file
 * where it needs them; not a header to include on its own). */
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

/* Short K (at most MP_OP_SHORTK_AVX2 floats of packed panels: the tagger's
 * dW = dZ^T X over one sentence's tokens, an MLP's dW at batch 10): every
 * column block's panel is packed once, then the row tiles run outer and the
 * column blocks inner, so C is written row after row, each cache line once.
 * The column-outer order below writes a (rows x 16) strip per block, whose
 * lines straddle two blocks when N is not a multiple of 16 and are fetched
 * twice once the strip outgrows L2 (benchmarks/results/shortk.md;
 * mp_matmul_impl gives each thread a band of whole rows for this order).
 * Each element still gets the same operations in the same order (the
 * tile's k loop from zero), so the result is the column-outer order's, bit
 * for bit. Returns 0 when it did not run (a block of part of the columns, K
 * too long, C small, or no memory): the caller takes the column-outer order. */
#ifndef MP_OP_SHORTK_AVX2
#define MP_OP_SHORTK_AVX2 (64 * 1024)
#endif
/* a C block smaller than this (floats; 256 KB, half of a core's L2) stays in
 * L2 whatever the order, and the column-outer order skips the packing */
#ifndef MP_OP_SHORTK_MIN_C
#define MP_OP_SHORTK_MIN_C (64 * 1024)
#endif
/* whether a block of c floats of C, n columns wide, at this K takes the
 * short-K order (the switch, K, the panels' size, the block's size) */
static inline int mp_op_shortk_fits(int64_t K, int64_t n, int64_t c) {
    return mp_dense_shortk && K <= MP_OP_KC_AVX2 && K * ((n + 15) / 16) * 16 <= MP_OP_SHORTK_AVX2
           && c >= MP_OP_SHORTK_MIN_C;
}

MP_TARGET_AVX2 MP_DENSE_AI int
mp_op_shortk_avx2(const float *A, int64_t lda, const int tn, const float *Bm, float *C,
                  int64_t K, int64_t N, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const int64_t nb = (j1 - j0 + 15) / 16;
    /* whole rows only (one thread, or mp_matmul_impl's row bands): two threads
     * sharing rows would write the cache line at their column boundary in step */
    if (j0 != 0 || j1 != N || !mp_op_shortk_fits(K, N, (i1 - i0) * N)
        || i1 - i0 < 2 * MP_OP_MR_AVX2)
        return 0;
    void *mem = malloc((size_t)(K * nb * 16) * sizeof(float) + 64);
    if (!mem) return 0;
    float *pack = (float *)(((uintptr_t)mem + 63) & ~(uintptr_t)63);
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t q = 0; q < nb; q++) {          /* panel q: K x 16, zero-padded */
        const int64_t j = j0 + 16 * q, nr = mp_dense_min(16, j1 - j);
        const __m256i cm0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr), iota);
        const __m256i cm1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr - 8), iota);
        for (int64_t k = 0; k < K; k++) {
            const float *src = Bm + k * N + j;
            _mm256_store_ps(pack + (q * K + k) * 16, _mm256_maskload_ps(src, cm0));
            _mm256_store_ps(pack + (q * K + k) * 16 + 8, _mm256_maskload_ps(src + 8, cm1));
        }
    }
    const int MR = MP_OP_MR_AVX2;
    for (int64_t i = i0, r; i < i1; i += r) {   /* the column-outer order's row tiles */
        int64_t tiles = (i1 - i + MR - 1) / MR;
        r = (i1 - i + tiles - 1) / tiles;
        const float *a = tn ? A + i : A + i * lda;
        for (int64_t q = 0; q < nb; q++) {
            const int64_t j = j0 + 16 * q, nr = mp_dense_min(16, j1 - j);
            const int cfull = nr == 16;
            const __m256i cm0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr), iota);
            const __m256i cm1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr - 8), iota);
            const float *bp = pack + q * K * 16;
            const int64_t ldb = 16, kc = K;
            const int load_c = 0;
            float *cp = C + i * N + j;
            switch ((int)r) {
                MP_OP_TILE_CASE_AVX2(1) MP_OP_TILE_CASE_AVX2(2) MP_OP_TILE_CASE_AVX2(3)
                MP_OP_TILE_CASE_AVX2(4) MP_OP_TILE_CASE_AVX2(5) MP_OP_TILE_CASE_AVX2(6)
                default: break;
            }
        }
    }
    free(mem);
    return 1;
}

MP_TARGET_AVX2 MP_DENSE_AI void
mp_op_range_tmpl_avx2(const float *A, int64_t lda, const int tn, const float *Bm, float *C,
                      int64_t K, int64_t N, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    if (mp_op_shortk_avx2(A, lda, tn, Bm, C, K, N, i0, i1, j0, j1)) return;
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
