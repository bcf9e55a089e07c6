/* Row-sparse optimizer updates.
 *
 * A weight gradient arrives as rows[0:r] (indices into a parameter of shape
 * (n_rows, n_cols)) and values (r, n_cols). Only those rows of the parameter
 * and of its optimizer state are read and written. rows == NULL means the
 * gradient is dense: row q of values belongs to row q of the parameter.
 *
 * Per element, with g the gradient:
 *   g = clamp(g, -clip, clip)  (clip > 0)   then   g += weight_decay * w
 *   SGD:     buf = momentum * buf + g  (momentum > 0);  w -= lr * buf  (or lr * g)
 *   AdaGrad: acc += g^2;  w -= lr * g / (sqrt(acc) + eps)
 *   Adam:    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 *            w -= step * m / (sqrt(v) * inv_sqrt_bc2 + eps),
 *            step = lr / (1 - b1^t), inv_sqrt_bc2 = 1 / sqrt(1 - b2^t)
 * which is PyTorch's formulation, except that subnormal results and inputs
 * count as 0 (mp_ftz_begin, parallel.h: a decaying moment would otherwise
 * slow every update that touches it several-fold). Rows are independent, so
 * the parallel loop over rows is race-free and bit-identical for any thread
 * count. */
#ifndef MEPROP_OPTIM_H
#define MEPROP_OPTIM_H

#include <math.h>
#include "parallel.h"
#include "sparse_linear.h"

typedef struct {
    float lr, momentum, eps, beta1, beta2, weight_decay, clip;
    float step, inv_sqrt_bc2;   /* Adam's bias corrections for this step */
} mp_optim_args;

static inline float mp_prep_grad(float g, float w, const mp_optim_args *a) {
    if (a->clip > 0.0f) g = g > a->clip ? a->clip : (g < -a->clip ? -a->clip : g);
    return g + a->weight_decay * w;
}

MP_SIMD_CLONES
static void mp_sgd_row(float *MP_RESTRICT w, float *MP_RESTRICT buf, const float *MP_RESTRICT g,
                       int64_t n, mp_optim_args a) {
    if (buf) {
        for (int64_t i = 0; i < n; i++) {
            float gi = mp_prep_grad(g[i], w[i], &a);
            buf[i] = a.momentum * buf[i] + gi;
            w[i] -= a.lr * buf[i];
        }
    } else {
        for (int64_t i = 0; i < n; i++) w[i] -= a.lr * mp_prep_grad(g[i], w[i], &a);
    }
}

MP_SIMD_CLONES
static void mp_adagrad_row(float *MP_RESTRICT w, float *MP_RESTRICT acc, const float *MP_RESTRICT g,
                           int64_t n, mp_optim_args a) {
    for (int64_t i = 0; i < n; i++) {
        float gi = mp_prep_grad(g[i], w[i], &a);
        acc[i] += gi * gi;
        w[i] -= a.lr * gi / (sqrtf(acc[i]) + a.eps);
    }
}

MP_SIMD_CLONES
static void mp_adam_row(float *MP_RESTRICT w, float *MP_RESTRICT m, float *MP_RESTRICT v,
                        const float *MP_RESTRICT g, int64_t n, mp_optim_args a) {
    const float c1 = 1.0f - a.beta1, c2 = 1.0f - a.beta2;
    for (int64_t i = 0; i < n; i++) {
        float gi = mp_prep_grad(g[i], w[i], &a);
        m[i] = a.beta1 * m[i] + c1 * gi;
        v[i] = a.beta2 * v[i] + c2 * gi * gi;
        w[i] -= a.step * m[i] / (sqrtf(v[i]) * a.inv_sqrt_bc2 + a.eps);
    }
}

enum { MP_OPT_SGD = 0, MP_OPT_ADAGRAD = 1, MP_OPT_ADAM = 2 };

static inline void mp_optim_row(int kind, float *w, float *s1, float *s2, int64_t j,
                                const float *g, int64_t n_cols, mp_optim_args a) {
    float *wr = w + j * n_cols;
    if (kind == MP_OPT_SGD)
        mp_sgd_row(wr, s1 ? s1 + j * n_cols : NULL, g, n_cols, a);
    else if (kind == MP_OPT_ADAGRAD)
        mp_adagrad_row(wr, s1 + j * n_cols, g, n_cols, a);
    else
        mp_adam_row(wr, s1 + j * n_cols, s2 + j * n_cols, g, n_cols, a);
}

/* Rows of a row-sparse update are scattered over parameters of several MB
 * (L3 at best): while one row is updated, ask for the next row of w and of
 * its state, so its first cache lines are not each a full L3 round trip. */
static inline void mp_optim_prefetch_row(const float *w, const float *s1, const float *s2,
                                         int64_t j, int64_t n_cols) {
    const int64_t bytes = n_cols * (int64_t)sizeof(float);
    const char *pw = (const char *)(w + j * n_cols);
    const char *p1 = s1 ? (const char *)(s1 + j * n_cols) : NULL;
    const char *p2 = s2 ? (const char *)(s2 + j * n_cols) : NULL;
    for (int64_t o = 0; o < bytes; o += 64) {
        __builtin_prefetch(pw + o, 1, 3);
        if (p1) __builtin_prefetch(p1 + o, 1, 3);
        if (p2) __builtin_prefetch(p2 + o, 1, 3);
    }
}

/* The same update from the factored gradient of a sparse backward (the
 * output of mp_group_pairs): row q's gradient, the sum of pair_v * x[pair_b]
 * over its pairs, is formed in a per-thread buffer (gbuf: nthreads *
 * mp_thread_stride(n_cols)
 * floats; one row stays in L1) and applied at once, so the (r, n_cols)
 * gradient never goes to memory. Same arithmetic as mp_sparse_dw followed by
 * mp_optim_rows: bit-identical to it. */
static void mp_optim_rows_factored(int kind, float *w, float *s1, float *s2,
                                   const int32_t *rows, int64_t r, int64_t n_cols,
                                   const float *x, const int32_t *offsets, const int32_t *pair_b,
                                   const float *pair_v, float *gbuf, mp_optim_args a,
                                   int nthreads) {
    int team = mp_team_size(nthreads, (offsets[r] + 4 * r) * n_cols, r);
    const int avx512 = mp_cpu_avx512();
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        const unsigned fp = mp_ftz_begin();
        float *g = gbuf + (int64_t)mp_omp_thread_num() * mp_thread_stride(n_cols);
        #pragma omp for schedule(static)
        for (int64_t q = 0; q < r; q++) {
            int64_t p0 = offsets[q];
            if (q + 1 < r) mp_optim_prefetch_row(w, s1, s2, rows[q + 1], n_cols);
            mp_gather_sum(g, n_cols, x, pair_b + p0, pair_v + p0, offsets[q + 1] - p0, avx512);
            mp_optim_row(kind, w, s1, s2, rows[q], g, n_cols, a);
        }
        mp_ftz_end(fp);
    }
}

/* One update of parameter w (n_rows, n_cols) from the row gradient: row q of
 * values belongs to row rows[q] of w (rows NULL: row q). values_full: values
 * is instead a full (n_rows, n_cols) gradient of which only the listed rows
 * are applied (the masked dense meProp backward).
 * s1, s2: state arrays shaped like w (s1 may be NULL for plain SGD). */
static void mp_optim_rows_at(int kind, float *w, float *s1, float *s2, const int32_t *rows,
                             const float *values, int values_full, int64_t r, int64_t n_cols,
                             mp_optim_args a, int nthreads) {
    int team = mp_team_size(nthreads, r * n_cols * 4, r);
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        const unsigned fp = mp_ftz_begin();
        #pragma omp for schedule(static)
        for (int64_t q = 0; q < r; q++) {
            const int64_t j = rows ? (int64_t)rows[q] : q;
            /* scattered rows: fetch the next one ahead (consecutive rows stream) */
            if (rows && q + 1 < r && rows[q + 1] != j + 1)
                mp_optim_prefetch_row(w, s1, s2, rows[q + 1], n_cols);
            mp_optim_row(kind, w, s1, s2, j, values + (values_full ? j : q) * n_cols, n_cols,
                         a);
        }
        mp_ftz_end(fp);
    }
}

static inline void mp_optim_rows(int kind, float *w, float *s1, float *s2, const int32_t *rows,
                                 const float *values, int64_t r, int64_t n_cols,
                                 mp_optim_args a, int nthreads) {
    mp_optim_rows_at(kind, w, s1, s2, rows, values, 0, r, n_cols, a, nthreads);
}

#endif
