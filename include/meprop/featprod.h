/* The parser's first layer in training, computed once per distinct id.
 *
 * The first hidden layer's pre-activation of a configuration is a sum over
 * its nq feature positions q of W_q e_q, where W_q = W[:, q*d:(q+1)*d] is the
 * position's block of the weight and e_q the embedding of the id at q. In a
 * batch of B configurations a position sees far fewer distinct ids than B
 * (at the parser's batch of 1,000 about 4,200 of the 48,000 (example,
 * position) pairs are distinct: the POS and label positions have a few dozen
 * ids, the children positions are mostly NULL), so each W_q e is computed
 * once per distinct id (the table T) and every example adds up its rows of
 * T (those of its positions' most used ids, two thirds of them, are folded
 * into one base row first). The backward runs the same way round: the
 * output gradient rows of the examples are summed per distinct id (G), and
 * the input gradient of a distinct embedding row is G_q W_q, the weight
 * gradient of block q G_q^T A_q (A: the distinct embedding rows). The same
 * sums as the plain products,
 * grouped differently: equal to float rounding. It is Chen & Manning's
 * pre-computation, made per batch so that it holds while the weights change.
 *
 * Determinism: every per-position product runs on one thread with the
 * library's dense kernels, every output row is summed by one thread in a
 * fixed order (positions ascending for y, examples ascending for G), so the
 * bits do not depend on the thread count. */
#ifndef MEPROP_FEATPROD_H
#define MEPROP_FEATPROD_H

#include <stdint.h>
#include <string.h>
#include "parallel.h"
#include "dense.h"

#define MP_FEAT_MAXQ 64

typedef struct {
    int64_t nq;                       /* feature positions (48 for the parser) */
    int64_t d;                        /* embedding width */
    int64_t H;                        /* the layer's outputs */
    const float *emb[MP_FEAT_MAXQ];   /* position q's embedding table (vocab[q], d) */
    int64_t vocab[MP_FEAT_MAXQ];      /* its rows */
} mp_feat_layout;

/* The distinct ids of every position, in order of first use: position q's
 * are uniq[uoff[q] .. uoff[q+1]), and inv[e*nq + q] is the row of uniq holding
 * example e's id at q; mode[q] is the row of position q's most used id (the
 * first of the most used in order of first use). X (B, nq). mark: int32
 * scratch with at least max(vocab) entries, all -1 on entry and again on
 * return; cnt: int32 scratch of B * nq entries. Returns U = uoff[nq], or -1
 * when an id lies outside [0, vocab[q]) (the outputs are then not valid). */
static int64_t mp_feat_distinct(const mp_feat_layout *L, const int32_t *X, int64_t B,
                                int32_t *mark, int32_t *cnt, int32_t *uniq, int64_t *uoff,
                                int32_t *inv, int32_t *mode) {
    const int64_t nq = L->nq;
    int64_t U = 0;
    for (int64_t q = 0; q < nq; q++) {
        const uint64_t V = (uint64_t)L->vocab[q];
        int bad = 0;
        uoff[q] = U;
        for (int64_t e = 0; e < B; e++) {
            const int32_t v = X[e * nq + q];
            if (v < 0 || (uint64_t)v >= V) {
                bad = 1;
                break;
            }
            int32_t r = mark[v];
            if (r < 0) {
                r = (int32_t)U;
                mark[v] = r;
                cnt[U] = 0;
                uniq[U++] = v;
            }
            cnt[r]++;
            inv[e * nq + q] = r;
        }
        int32_t best = (int32_t)uoff[q];
        for (int64_t r = uoff[q]; r < U; r++) {
            mark[uniq[r]] = -1;
            if (cnt[r] > cnt[best]) best = (int32_t)r;
        }
        mode[q] = best;
        if (bad) return -1;
    }
    uoff[nq] = U;
    return U;
}

/* Wp (nq, H, d): the weight W (H, nq*d) with each position's block made
 * contiguous (to = 1), or back (to = 0: W from Wp). */
static void mp_feat_regroup(float *W, int64_t H, int64_t nq, int64_t d, float *Wp, int to,
                            int nthreads) {
    const int team = mp_team_size(nthreads, H * nq * d, H);
    #pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
    for (int64_t j = 0; j < H; j++) {
        for (int64_t q = 0; q < nq; q++) {
            float *blk = Wp + (q * H + j) * d, *row = W + j * nq * d + q * d;
            if (to) memcpy(blk, row, (size_t)d * sizeof(float));
            else memcpy(row, blk, (size_t)d * sizeof(float));
        }
    }
}

/* Forward. A (U, d): the distinct embedding rows; T (U, H): for position q's
 * mode row m, T[m] = Wp[q] A[m]; for its other rows r, T[r] = Wp[q] (A[r] -
 * A[m]), the difference to the mode's product (Ad (U, d): scratch for the
 * differences of the embeddings). y (B, H) = b + the mode rows (q ascending)
 * + the rows T[inv[e, q]] of the ids that are not their position's mode (q
 * ascending). About two thirds of a batch's (example, position) pairs hold
 * their position's mode (mostly NULL), so y reads a third of the rows.
 * b may be NULL (zero). base: H floats of scratch. */
static void mp_feat_forward(const mp_feat_layout *L, const int32_t *uniq, const int64_t *uoff,
                            const int32_t *inv, const int32_t *mode, int64_t B, const float *Wp,
                            const float *b, float *A, float *Ad, float *T, float *base, float *y,
                            int nthreads) {
    const int64_t nq = L->nq, d = L->d, H = L->H, U = uoff[nq];
    int team = mp_team_size(nthreads, U * d * H, nq);
    #pragma omp parallel for num_threads(team) schedule(dynamic, 1) if (team > 1)
    for (int64_t q = 0; q < nq; q++) {
        const int64_t r0 = uoff[q], n = uoff[q + 1] - r0;
        if (n == 0) continue;
        for (int64_t r = r0; r < r0 + n; r++)
            memcpy(A + r * d, L->emb[q] + (int64_t)uniq[r] * d, (size_t)d * sizeof(float));
        const float *am = A + (int64_t)mode[q] * d;
        for (int64_t r = r0; r < r0 + n; r++) {
            const float *ar = A + r * d;
            float *dr = Ad + r * d;
            if (r == mode[q]) memcpy(dr, ar, (size_t)d * sizeof(float));
            else for (int64_t c = 0; c < d; c++) dr[c] = ar[c] - am[c];
        }
        mp_linear_forward(Ad + r0 * d, Wp + q * H * d, NULL, T + r0 * H, n, d, H, 0, 1);
    }
    if (b) memcpy(base, b, (size_t)H * sizeof(float));
    else memset(base, 0, (size_t)H * sizeof(float));
    for (int64_t q = 0; q < nq; q++) {
        if (uoff[q + 1] == uoff[q]) continue;
        const float *MP_RESTRICT tm = T + (int64_t)mode[q] * H;
        for (int64_t j = 0; j < H; j++) base[j] += tm[j];
    }
    team = mp_team_size(nthreads, B * nq * H / 3, B);
    #pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
    for (int64_t e = 0; e < B; e++) {
        float *MP_RESTRICT ye = y + e * H;
        memcpy(ye, base, (size_t)H * sizeof(float));
        const int32_t *ie = inv + e * nq;
        for (int64_t q = 0; q < nq; q++) {
            if (ie[q] == mode[q]) continue;
            const float *MP_RESTRICT t = T + (int64_t)ie[q] * H;
            for (int64_t j = 0; j < H; j++) ye[j] += t[j];
        }
    }
}

/* x (B, nq * d): the layer's input, example e's block q = A[inv[e, q]] (the
 * embedding rows of the plain layer, for the meProp weight gradient). */
static void mp_feat_gather(const float *A, const int32_t *inv, int64_t B, int64_t nq, int64_t d,
                           float *x, int nthreads) {
    const int team = mp_team_size(nthreads, B * nq * d, B);
    #pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
    for (int64_t e = 0; e < B; e++) {
        float *xe = x + e * nq * d;
        for (int64_t q = 0; q < nq; q++)
            memcpy(xe + q * d, A + (int64_t)inv[e * nq + q] * d, (size_t)d * sizeof(float));
    }
}

/* The positions [q0, q1) of thread u of a team of `team`, balanced by their
 * distinct rows (the work of the scatters below is about rows + B each). */
static void mp_feat_span(const int64_t *uoff, int64_t nq, int64_t B, int team, int u,
                         int64_t *q0, int64_t *q1) {
    const int64_t total = uoff[nq] + nq * B;
    int64_t lo = 0;
    while (lo < nq && (uoff[lo] + lo * B) * team < total * u) lo++;
    int64_t hi = lo;
    while (hi < nq && (uoff[hi] + hi * B) * team < total * (u + 1)) hi++;
    *q0 = lo;
    *q1 = hi;
}

/* G (U, H): G[r] = sum of the rows g[e] (ascending e) of the examples whose id
 * at r's position is r's. Dense g (B, H): the mode row of every position is
 * formed as S - (the position's other rows, ascending), S (H, scratch) the
 * column sums of g (rows ascending), so only the pairs that do not hold the
 * mode are visited. Or, with idx != NULL, the k pairs (idx[e*k + j],
 * val[e*k + j]) of every example, all visited (g, mode and S unused).
 * Threads take ranges of positions (disjoint rows of G); each reads the
 * batch once. */
static void mp_feat_scatter(const float *g, const int32_t *idx, const float *val, int64_t k,
                            int64_t B, int64_t H, int64_t nq, const int32_t *inv,
                            const int64_t *uoff, const int32_t *mode, float *S, float *G,
                            int nthreads) {
    if (!idx) {
        memset(S, 0, (size_t)H * sizeof(float));
        for (int64_t e = 0; e < B; e++) {
            const float *MP_RESTRICT ge = g + e * H;
            for (int64_t j = 0; j < H; j++) S[j] += ge[j];
        }
    }
    int team = mp_team_size(nthreads, B * nq * (idx ? k : H / 3), nq);
    #pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
    for (int u = 0; u < team; u++) {
        int64_t q0, q1;
        mp_feat_span(uoff, nq, B, team, u, &q0, &q1);
        if (q0 >= q1) continue;
        memset(G + uoff[q0] * H, 0, (size_t)((uoff[q1] - uoff[q0]) * H) * sizeof(float));
        for (int64_t e = 0; e < B; e++) {
            const int32_t *ie = inv + e * nq;
            if (idx) {
                const int32_t *ix = idx + e * k;
                const float *vx = val + e * k;
                for (int64_t q = q0; q < q1; q++) {
                    float *MP_RESTRICT gr = G + (int64_t)ie[q] * H;
                    for (int64_t j = 0; j < k; j++) gr[ix[j]] += vx[j];
                }
            } else {
                const float *MP_RESTRICT ge = g + e * H;
                for (int64_t q = q0; q < q1; q++) {
                    if (ie[q] == mode[q]) continue;
                    float *MP_RESTRICT gr = G + (int64_t)ie[q] * H;
                    for (int64_t j = 0; j < H; j++) gr[j] += ge[j];
                }
            }
        }
        if (idx) continue;
        for (int64_t q = q0; q < q1; q++) {
            float *MP_RESTRICT gm = G + (int64_t)mode[q] * H;
            memcpy(gm, S, (size_t)H * sizeof(float));
            for (int64_t r = uoff[q]; r < uoff[q + 1]; r++) {
                if (r == mode[q]) continue;
                const float *MP_RESTRICT gr = G + r * H;
                for (int64_t j = 0; j < H; j++) gm[j] -= gr[j];
            }
        }
    }
}

/* Backward products per position q (rows r0..r0+n of position q):
 * dA (U, d): dA[r] = G[r] Wp[q] (the input gradient of each distinct
 * embedding row; NULL: skipped); gwp (nq, H, d): gwp[q] = G_q^T A_q (the
 * weight gradient of block q; NULL: skipped). */
static void mp_feat_backward(const mp_feat_layout *L, const int64_t *uoff, const float *G,
                             const float *Wp, const float *A, float *dA, float *gwp,
                             int nthreads) {
    const int64_t nq = L->nq, d = L->d, H = L->H, U = uoff[nq];
    const int team = mp_team_size(nthreads, U * d * H * ((dA != NULL) + (gwp != NULL)), nq);
    #pragma omp parallel for num_threads(team) schedule(dynamic, 1) if (team > 1)
    for (int64_t q = 0; q < nq; q++) {
        const int64_t r0 = uoff[q], n = uoff[q + 1] - r0;
        if (dA && n) mp_matmul_nn(G + r0 * H, Wp + q * H * d, dA + r0 * d, n, H, d, 1);
        if (gwp) {
            if (n) mp_matmul_tn(G + r0 * H, A + r0 * d, gwp + q * H * d, H, n, d, 1);
            else memset(gwp + q * H * d, 0, (size_t)(H * d) * sizeof(float));
        }
    }
}

#endif
