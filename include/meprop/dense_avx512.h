/* The AVX-512 paths of the dense products: register-tiled forward, A @ B and
 * A^T @ B kernels (dense.h includes this file where it needs them; not a
 * header to include on its own). */
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
