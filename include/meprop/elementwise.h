/* Small per-step kernels of the training loop: ReLU, softmax cross-entropy,
 * and the validation of a row-sparse gradient's row indices.
 *
 * Each replaces several numpy calls (every one of which costs a microsecond
 * or two of dispatch on a batch of 10) by one pass. Serial: the arrays are
 * B x n activations or B x C logits, far below the threshold where an OpenMP
 * team pays. */
#ifndef MEPROP_ELEMENTWISE_H
#define MEPROP_ELEMENTWISE_H

#include <math.h>
#include <stdint.h>
#include "parallel.h"
#include "rng.h"

/* Uniform floats for dropout from a counter-based generator: out[e] is draw
 * number counter + e of the splitmix64 sequence keyed by key (the 64-bit
 * finaliser of key + (counter + e + 1) * golden), its top 24 bits scaled
 * to [0, 1). Each draw depends only on (key, its position), so a generator's
 * whole state is (key, counter), any stretch of draws can be made
 * independently (the loop vectorises) and results cannot depend on how many
 * threads drew them. splitmix64 passes BigCrush; dropout needs far less. */
MP_SIMD_CLONES
static void mp_uniform_f32_range(uint64_t key, uint64_t counter, int64_t e0, int64_t e1,
                                 float *MP_RESTRICT out) {
    for (int64_t e = e0; e < e1; e++)
        out[e] = (float)(mp_splitmix_at(key, counter + (uint64_t)e) >> 40) * (1.0f / 16777216.0f);
}

/* The draws split into contiguous ranges over the team above ~20,000 of them
 * (a draw costs about as much as ten multiply-adds: the 64-bit products are
 * emulated on AVX2); each draw is its position's, so the bits do not depend
 * on the split. */
static void mp_uniform_f32(uint64_t key, uint64_t counter, int64_t n, float *MP_RESTRICT out,
                           int nthreads) {
    const int64_t chunk = 4096;
    const int64_t nchunks = (n + chunk - 1) / chunk;
    const int team = mp_team_size(nthreads, n * 10, nchunks);
    #pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
    for (int64_t c = 0; c < nchunks; c++)
        mp_uniform_f32_range(key, counter, c * chunk, c + 1 < nchunks ? (c + 1) * chunk : n, out);
}

/* y = max(x, 0) (a NaN input gives NaN, as numpy's maximum does) */
MP_SIMD_CLONES
static void mp_relu_forward(const float *MP_RESTRICT x, float *MP_RESTRICT y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : (x[i] != x[i] ? x[i] : 0.0f);
}

/* dx = dy where y > 0, else 0 (y: the forward's output) */
MP_SIMD_CLONES
static void mp_relu_backward(const float *MP_RESTRICT dy, const float *MP_RESTRICT y,
                             float *MP_RESTRICT dx, int64_t n) {
    for (int64_t i = 0; i < n; i++) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

/* Dropout after a ReLU: scale[e] = s where u[e] >= p, else 0, and out[e] =
 * h[e] * scale[e] (u: uniforms in [0, 1); u and scale may be one array, the
 * draws then replaced by the scales). The fused MLP step and the PyTorch
 * bridge's fused runs both call it. */
MP_SIMD_CLONES
static void mp_dropout_forward(const float *u, float p, float s, const float *MP_RESTRICT h,
                               float *scale, float *MP_RESTRICT out, int64_t n) {
    for (int64_t e = 0; e < n; e++) {
        const float m = u[e] >= p ? s : 0.0f;
        scale[e] = m;
        out[e] = h[e] * m;
    }
}

/* The backward of ReLU -> dropout: dx[e] = dy[e] * scale[e] where y[e] > 0,
 * else 0 (y: the ReLU's output; scale NULL: no dropout, dx = dy there). */
MP_SIMD_CLONES
static void mp_relu_dropout_backward(const float *MP_RESTRICT dy, const float *MP_RESTRICT scale,
                                     const float *MP_RESTRICT y, float *MP_RESTRICT dx,
                                     int64_t n) {
    if (scale == NULL) {
        mp_relu_backward(dy, y, dx, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) dx[i] = y[i] > 0.0f ? dy[i] * scale[i] : 0.0f;
}

/* The parser's cube activation, y = x^3, and its backward dx = dy * 3 x^2,
 * in one pass each with the products in numpy's order ((x * x) * x and
 * dy * ((3 * x) * x)), so the bits equal the numpy expressions. Rows split
 * over the threads above MP_PARALLEL_MIN_WORK elements (a 1,000 x 500 batch:
 * the numpy expressions took 0.2-0.3 ms each, two passes over temporaries). */
static void mp_cube_forward(const float *MP_RESTRICT x, float *MP_RESTRICT y, int64_t B,
                            int64_t n, int nthreads) {
    const int team = mp_team_size(nthreads, B * n, B);
    #pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
    for (int64_t r = 0; r < B; r++) {
        const float *MP_RESTRICT xr = x + r * n;
        float *MP_RESTRICT yr = y + r * n;
        for (int64_t j = 0; j < n; j++) {
            const float t = xr[j] * xr[j];
            yr[j] = t * xr[j];
        }
    }
}

static void mp_cube_backward(const float *MP_RESTRICT dy, const float *MP_RESTRICT x,
                             float *MP_RESTRICT dx, int64_t B, int64_t n, int nthreads) {
    const int team = mp_team_size(nthreads, B * n, B);
    #pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
    for (int64_t r = 0; r < B; r++) {
        const float *MP_RESTRICT xr = x + r * n, *MP_RESTRICT gr = dy + r * n;
        float *MP_RESTRICT dr = dx + r * n;
        for (int64_t j = 0; j < n; j++) {
            const float t = 3.0f * xr[j];
            dr[j] = gr[j] * (t * xr[j]);
        }
    }
}

/* Mean softmax cross-entropy of logits (B, C) against labels y (B,), and its
 * gradient d (B, C) = (softmax(logits) - onehot(y)) / B.
 * Writes the loss to *loss and returns 0; returns 1 + b if label y[b] is
 * outside [0, C) (nothing is written then). A non-finite logit gives a
 * non-finite loss. */
static int64_t mp_softmax_xent(const float *logits, const int64_t *y, int64_t B, int64_t C,
                               float *d, double *loss) {
    for (int64_t b = 0; b < B; b++)
        if (y[b] < 0 || y[b] >= C) return 1 + b;
    double total = 0.0;
    const float inv_b = 1.0f / (float)B;
    for (int64_t b = 0; b < B; b++) {
        const float *z = logits + b * C;
        float *db = d + b * C;
        float mx = z[0];
        for (int64_t c = 1; c < C; c++) mx = z[c] > mx ? z[c] : mx;
        float s = 0.0f;
        for (int64_t c = 0; c < C; c++) {
            db[c] = expf(z[c] - mx);
            s += db[c];
        }
        const float inv_s = 1.0f / s;
        for (int64_t c = 0; c < C; c++) db[c] = db[c] * inv_s * inv_b;
        db[y[b]] -= inv_b;
        total += (double)logf(s) - (double)(z[y[b]] - mx);
    }
    *loss = total / (double)B;
    return 0;
}

/* 0 if rows[0:r] is strictly ascending within [0, n), else 1 + the first bad
 * position. Checked before an optimizer writes any row. */
static int64_t mp_check_rows(const int32_t *rows, int64_t r, int64_t n) {
    for (int64_t q = 0; q < r; q++) {
        if (rows[q] < 0 || rows[q] >= n) return q + 1;
        if (q > 0 && rows[q] <= rows[q - 1]) return q + 1;
    }
    return 0;
}

#endif
