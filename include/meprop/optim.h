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
 * which is PyTorch's formulation. Rows are independent, so the parallel loop
 * over rows is race-free and bit-identical for any thread count. */
#ifndef MEPROP_OPTIM_H
#define MEPROP_OPTIM_H

#include <math.h>
#include "parallel.h"

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

/* One update of parameter w (n_rows, n_cols) from the row gradient.
 * s1, s2: state arrays shaped like w (s1 may be NULL for plain SGD). */
static void mp_optim_rows(int kind, float *w, float *s1, float *s2, const int32_t *rows,
                          const float *values, int64_t r, int64_t n_cols, mp_optim_args a,
                          int nthreads) {
    int team = mp_team_size(nthreads, r * n_cols * 4, r);
    #pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
    for (int64_t q = 0; q < r; q++) {
        int64_t j = rows ? (int64_t)rows[q] : q;
        float *wr = w + j * n_cols;
        const float *g = values + q * n_cols;
        if (kind == MP_OPT_SGD)
            mp_sgd_row(wr, s1 ? s1 + j * n_cols : NULL, g, n_cols, a);
        else if (kind == MP_OPT_ADAGRAD)
            mp_adagrad_row(wr, s1 + j * n_cols, g, n_cols, a);
        else
            mp_adam_row(wr, s1 + j * n_cols, s2 + j * n_cols, g, n_cols, a);
    }
}

#endif
