/* One LSTM layer over one sequence, with meProp's per-step top-k backward.
 *
 * Layout: the 4 gates are stacked in the order i (input), f (forget), g (cell
 * candidate), o (output), each h wide, so W (4h, n_in), U (4h, h) and b (4h)
 * hold gate q's rows at q*h .. q*h + h - 1 (PyTorch's order).
 *
 *   z_t = W x_t + b + U h_{t-1}
 *   i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
 *   c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)
 *
 * Forward: the caller forms xp = X W^T + b for the whole sequence as one
 * product (mp_linear_forward); mp_lstm_forward runs the recurrence, one
 * matrix-vector product U h_{t-1} per step (mp_linear_forward at batch 1, xp[t]
 * as its bias) and the elementwise cell.
 *
 * Backward through time (mp_lstm_backward): per step, from the gradient of
 * h_t (from above plus the recurrent one) and the carried cell gradient, the
 * pre-activation gradients dz_t (4h) are formed. With k (1 <= k < h) set,
 * meProp keeps, in each gate's h entries, the k of largest |dz| (ties: the
 * lower index; zeros never preferred), so 4k entries per step, shared by the
 * input product W x_t and the recurrent product U h_{t-1}:
 *   dh_{t-1} = sum over the 4k selected rows r of dz_t[r] * U[r, :]
 * and the selections (idx, val) are what the weight gradients dW = dZ_S^T X,
 * dU = dZ_S^T H_prev and the input gradient dX = dZ_S W are formed from (by
 * the sparse linear kernels: factored row gradients for the row-sparse
 * optimizer). The cell-state path (dc_{t-1} = dc_t * f) is elementwise and
 * stays exact. The full dz_t is returned as well (the bias gradient is the
 * sum of the full dz over the steps, as the MLP's bias uses the full dy).
 * Dense backward (k <= 0 or k >= h): dh_{t-1} = U^T dz_t.
 *
 * Determinism: the recurrence is sequential; the matrix-vector products of a
 * step (mp_linear_forward; mp_lstm_gemv_t) split rows or columns over the
 * threads with a fixed order of operations per output, the sparse dh sum runs serially
 * in the selection's order, so the results are bit-identical for any thread
 * count. */
#ifndef MEPROP_LSTM_H
#define MEPROP_LSTM_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include "parallel.h"
#include "dense.h"
#include "topk.h"

/* e^x, branch-free so the cell's loops vectorise (libm's expf / tanhf do not,
 * and were a third of a step's forward at h = 500): x = n ln2 + r with n
 * rounded by the 1.5 * 2^23 trick, a degree-6 polynomial for e^r on
 * [-ln2/2, ln2/2] (Cephes' coefficients), 2^n put into the exponent bits.
 * Relative error below 2e-7 on [-87, 88] (clamped outside); NaN stays NaN.
 * The integer n is read from the bits of n + 1.5 * 2^23 (its low mantissa
 * bits, exact for |n| < 2^22) rather than by a float -> int conversion, and
 * the exponent is shifted as unsigned: with x = NaN neither is undefined
 * behaviour (the result is NaN through p). */
static inline float mp_lstm_exp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float big = 12582912.0f;   /* 1.5 * 2^23: adding it rounds to an integer */
    union { float f; int32_t i; } nb;
    nb.f = x * 1.44269504088896341f + big;
    float n = nb.f - big;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { uint32_t u; float f; } s;
    s.u = (uint32_t)(nb.i - 0x4B400000 + 127) << 23;   /* 0x4B400000: the bits of big */
    return p * s.f;
}

static inline float mp_lstm_sigmoid(float x) { return 1.0f / (1.0f + mp_lstm_exp(-x)); }

/* tanh(x) = sign(x) (1 - e^{-2|x|}) / (1 + e^{-2|x|}); absolute error < 2e-7 */
static inline float mp_lstm_tanh(float x) {
    float e = mp_lstm_exp(-2.0f * fabsf(x));
    return copysignf((1.0f - e) / (1.0f + e), x);
}

MP_SIMD_CLONES
static void mp_lstm_cell_gates(float *MP_RESTRICT zi, float *MP_RESTRICT zf,
                               float *MP_RESTRICT zg, float *MP_RESTRICT zo,
                               const float *MP_RESTRICT c_prev, float *MP_RESTRICT c,
                               float *MP_RESTRICT hn, float *MP_RESTRICT tc, int64_t h) {
    for (int64_t j = 0; j < h; j++) {
        float i = mp_lstm_sigmoid(zi[j]), f = mp_lstm_sigmoid(zf[j]);
        float g = mp_lstm_tanh(zg[j]), o = mp_lstm_sigmoid(zo[j]);
        float cj = f * c_prev[j] + i * g;
        float t = mp_lstm_tanh(cj);
        zi[j] = i; zf[j] = f; zg[j] = g; zo[j] = o;
        c[j] = cj; tc[j] = t; hn[j] = o * t;
    }
}

/* The cell of one step: z (4h) holds the pre-activations on entry and the
 * activated gates on exit; c_prev -> c, h, tc = tanh(c). (The four gate
 * blocks go in as separate restrict pointers so the loop vectorises.) */
static void mp_lstm_cell(float *z, const float *c_prev, float *c, float *hn, float *tc,
                         int64_t h) {
    mp_lstm_cell_gates(z, z + h, z + 2 * h, z + 3 * h, c_prev, c, hn, tc, h);
}

/* The dense backward's dh_{t-1} = U^T dz_t at batch 1 streams U (4h x h: 4 MB
 * at h = 500) once per step. y[c] sums z[r] U[r, c] over r ascending, eight
 * rows per pass over a block of columns (y[c] stays in a register across the
 * eight), column blocks split over the team: the order of operations per
 * output does not depend on the split, so the bits do not depend on the
 * thread count. */
MP_SIMD_CLONES
static void mp_lstm_gemv_t_cols(const float *MP_RESTRICT U, const float *MP_RESTRICT z,
                                float *MP_RESTRICT y, int64_t m, int64_t n, int64_t c0,
                                int64_t c1) {
    for (int64_t c = c0; c < c1; c++) y[c] = 0.0f;
    int64_t r = 0;
    for (; r + 8 <= m; r += 8) {
        const float *u = U + r * n;
        const float v0 = z[r], v1 = z[r + 1], v2 = z[r + 2], v3 = z[r + 3];
        const float v4 = z[r + 4], v5 = z[r + 5], v6 = z[r + 6], v7 = z[r + 7];
        for (int64_t c = c0; c < c1; c++) {
            float a = y[c];
            a += v0 * u[c];
            a += v1 * u[n + c];
            a += v2 * u[2 * n + c];
            a += v3 * u[3 * n + c];
            a += v4 * u[4 * n + c];
            a += v5 * u[5 * n + c];
            a += v6 * u[6 * n + c];
            a += v7 * u[7 * n + c];
            y[c] = a;
        }
    }
    for (; r < m; r++) {
        const float v = z[r], *ur = U + r * n;
        for (int64_t c = c0; c < c1; c++) y[c] += v * ur[c];
    }
}

/* y (n) = U^T z with U (m, n). */
static void mp_lstm_gemv_t(const float *U, const float *z, float *y, int64_t m, int64_t n,
                           int nthreads) {
    int team = mp_team_size(nthreads, m * n, n / 64);
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        int u = mp_omp_thread_num(), parts = team > 1 ? team : 1;
        int64_t q = (n / 16 + parts) / parts * 16;
        int64_t c0 = (int64_t)u * q, c1 = c0 + q < n ? c0 + q : n;
        if (c0 < c1) mp_lstm_gemv_t_cols(U, z, y, m, n, c0, c1);
    }
}

/* Forward recurrence over T steps.
 * IN  xp (T, 4h) = X W^T + b;  U (4h, h);  H row 0 = h_0;  C row 0 = c_0
 * OUT Z (T, 4h) activated gates;  H (T+1, h) rows 1..T = h_t;
 *     C (T+1, h) rows 1..T = c_t;  TC (T, h) = tanh(c_t) */
static void mp_lstm_forward(const float *xp, const float *U, int64_t T, int64_t h, float *Z,
                            float *H, float *C, float *TC, int nthreads) {
    const int64_t G = 4 * h;
    for (int64_t t = 0; t < T; t++) {
        float *z = Z + t * G;
        mp_linear_forward(H + t * h, U, xp + t * G, z, 1, h, G, 0, nthreads);
        mp_lstm_cell(z, C + t * h, C + (t + 1) * h, H + (t + 1) * h, TC + t * h, h);
    }
}

/* dz (4h) of one step from dh = dL/dh_t (total) and dc (in: dL/dc_t carried
 * from step t+1; out: dL/dc_{t-1}). */
MP_SIMD_CLONES
static void mp_lstm_cell_backward_gates(const float *MP_RESTRICT zi, const float *MP_RESTRICT zf,
                                        const float *MP_RESTRICT zg, const float *MP_RESTRICT zo,
                                        const float *MP_RESTRICT c_prev,
                                        const float *MP_RESTRICT tc, const float *MP_RESTRICT dh,
                                        float *MP_RESTRICT dc, float *MP_RESTRICT di,
                                        float *MP_RESTRICT df, float *MP_RESTRICT dg,
                                        float *MP_RESTRICT dout, int64_t h) {
    for (int64_t j = 0; j < h; j++) {
        float i = zi[j], f = zf[j], g = zg[j], o = zo[j], t = tc[j], d = dh[j];
        float dcj = dc[j] + d * o * (1.0f - t * t);
        di[j] = dcj * g * i * (1.0f - i);
        df[j] = dcj * c_prev[j] * f * (1.0f - f);
        dg[j] = dcj * i * (1.0f - g * g);
        dout[j] = d * t * o * (1.0f - o);
        dc[j] = dcj * f;
    }
}

static void mp_lstm_cell_backward(const float *z, const float *c_prev, const float *tc,
                                  const float *dh, float *dc, float *dz, int64_t h) {
    mp_lstm_cell_backward_gates(z, z + h, z + 2 * h, z + 3 * h, c_prev, tc, dh, dc, dz,
                                dz + h, dz + 2 * h, dz + 3 * h, h);
}

MP_SIMD_CLONES
static void mp_lstm_axpy(float *MP_RESTRICT y, const float *MP_RESTRICT x, float a, int64_t n) {
    for (int64_t j = 0; j < n; j++) y[j] += a * x[j];
}

/* Scratch of mp_lstm_backward's selection, in 8-byte entries. */
static inline int64_t mp_lstm_topk_ws_entries(int64_t k) { return mp_topk_ws_entries(k); }

/* meProp's part of one step of the sparse backward: in each gate's h entries
 * of dz (4h) the k of largest |dz| -> ii (4k rows of the 4h, gate q's at
 * q*k.., ascending overall) and vv = dz there; dh (h) = the sum over them of
 * dz[r] U[r, :], in the selection's order. ws: mp_lstm_topk_ws_entries(k).
 * Returns the number of non-finite entries met (the indices stay in range). */
static int64_t mp_lstm_select_step(const float *dz, const float *U, int64_t h, int64_t k,
                                   int32_t *ii, float *vv, float *dh, mp_entry *ws,
                                   int avx512) {
    int64_t bad = 0;
    for (int64_t q = 0; q < 4; q++) {
        int32_t *iq = ii + q * k;
        int64_t rb = mp_topk_row(dz + q * h, h, k, ws, iq, avx512, NULL);
        if (rb) {
            for (int64_t s = 0; s < k; s++) iq[s] = (int32_t)s;
            bad += rb;
        }
        for (int64_t s = 0; s < k; s++) iq[s] += (int32_t)(q * h);
    }
    memset(dh, 0, (size_t)h * sizeof(float));
    for (int64_t s = 0; s < 4 * k; s++) {
        float v = dz[ii[s]];
        vv[s] = v;
        if (v != 0.0f) mp_lstm_axpy(dh, U + (int64_t)ii[s] * h, v, h);
    }
    return bad;
}

/* Backward through time.
 * IN  Z, C, TC as mp_lstm_forward left them; U (4h, h); dH (T, h) = dL/dh_t
 *     from above (not through the recurrence); k: per-gate top-k (k <= 0 or
 *     k >= h: dense); dh, dc (h): dL/dh_T and dL/dc_T from beyond the
 *     sequence (zeros for a sequence that ends at T)
 * OUT dZ (T, 4h): the full pre-activation gradients;
 *     idx, val (T, 4k) (sparse only): per step the selected rows of the 4h
 *     (gate q's k at q*k.., ascending overall) and dz there;
 *     dh, dc: dL/dh_0, dL/dc_0
 * ws: mp_lstm_topk_ws_entries(k) entries (sparse only)
 * Returns the number of non-finite gradient entries met by the selection
 * (the outputs are then meaningless; the indices stay in range). */
static int64_t mp_lstm_backward(const float *Z, const float *C, const float *TC, const float *U,
                                const float *dH, int64_t T, int64_t h, int64_t k, float *dZ,
                                int32_t *idx, float *val, float *dh, float *dc, void *ws,
                                int nthreads) {
    const int64_t G = 4 * h;
    const int sparse = k > 0 && k < h;
    const int avx512 = mp_topk_use_avx512();
    int64_t bad = 0;
    for (int64_t t = T - 1; t >= 0; t--) {
        float *dz = dZ + t * G;
        const float *dht = dH + t * h;
        for (int64_t j = 0; j < h; j++) dh[j] += dht[j];
        mp_lstm_cell_backward(Z + t * G, C + t * h, TC + t * h, dh, dc, dz, h);
        if (!sparse) {
            mp_lstm_gemv_t(U, dz, dh, G, h, nthreads);   /* dh_{t-1} = U^T dz */
            continue;
        }
        bad += mp_lstm_select_step(dz, U, h, k, idx + t * 4 * k, val + t * 4 * k, dh,
                                   (mp_entry *)ws, avx512);
    }
    return bad;
}

/* ------------------------------------------------------------------------ */
/* B sequences side by side (minibatches of sentences).                      */
/*
 * The B sequences are right-padded to the longest, T steps, and stored time
 * major: row t*B + b of X, XP, Z, dZ, dH and of the (T, B, 4k) selections is
 * step t of sequence b; H and C hold T+1 blocks of B rows (block 0 = the
 * initial states). A step's recurrent product is one (B, h) x (h, 4h)
 * product, so U is read once per step for the whole batch instead of once
 * per token. Padding needs no mask: the padded steps of a sequence come after
 * its last real one, so they never feed a real step forward, and backward
 * they receive dH = 0 with dh = dc = 0 carried in from beyond the end, which
 * gives dz = 0 exactly (the selection then keeps zeros, which every consumer
 * skips). The caller zeroes dH on the padded rows. Per sequence, step and
 * gate, the selection is the one mp_lstm_backward makes for that sequence
 * alone, so the weight gradients are the sum of the single-sequence ones.
 * Determinism: each sequence's cell, selection and sparse dh sum run on one
 * thread in a fixed order, and the dense products are bit-identical for any
 * thread count, so the batch results are too. */

/* Forward recurrence of B sequences.
 * IN  xp (T*B, 4h) = X W^T + b (time major);  U (4h, h);  H, C block 0 (B, h)
 * OUT Z (T*B, 4h) activated gates;  H, C (T+1)*B rows;  TC (T*B, h) */
static void mp_lstm_forward_batch(const float *xp, const float *U, int64_t T, int64_t B,
                                  int64_t h, float *Z, float *H, float *C, float *TC,
                                  int nthreads) {
    const int64_t G = 4 * h;
    int team = mp_team_size(nthreads, B * G * 16, B);
    for (int64_t t = 0; t < T; t++) {
        float *z = Z + t * B * G;
        mp_linear_forward(H + t * B * h, U, NULL, z, B, h, G, 0, nthreads);
        #pragma omp parallel for num_threads(team) if (team > 1) schedule(static)
        for (int64_t b = 0; b < B; b++) {
            float *zb = z + b * G;
            const float *xb = xp + (t * B + b) * G;
            for (int64_t j = 0; j < G; j++) zb[j] += xb[j];
            mp_lstm_cell(zb, C + (t * B + b) * h, C + ((t + 1) * B + b) * h,
                         H + ((t + 1) * B + b) * h, TC + (t * B + b) * h, h);
        }
    }
}

/* Backward through time of B sequences.
 * IN  Z, C, TC as mp_lstm_forward_batch left them; U (4h, h); dH (T*B, h)
 *     (zero on padded rows); k (k <= 0 or k >= h: dense); dh, dc (B, h): the
 *     gradients from beyond the sequences (zeros)
 * OUT dZ (T*B, 4h); idx, val (T*B, 4k) (sparse only); dh, dc: those of the
 *     initial states
 * WS  ws: nthreads * mp_thread_stride(mp_lstm_topk_ws_entries(k)) entries
 *     (sparse only); dzs (B, h): scratch of the dense dh product
 * Returns the number of non-finite gradient entries met by the selection. */
static int64_t mp_lstm_backward_batch(const float *Z, const float *C, const float *TC,
                                      const float *U, const float *dH, int64_t T, int64_t B,
                                      int64_t h, int64_t k, float *dZ, int32_t *idx,
                                      float *val, float *dh, float *dc, mp_entry *ws,
                                      float *dzs, int nthreads) {
    const int64_t G = 4 * h;
    const int sparse = k > 0 && k < h;
    const int avx512 = mp_topk_use_avx512();
    int team = mp_team_size(nthreads, B * G * (sparse ? 4 * k : 16), B);
    int64_t bad = 0;
    for (int64_t t = T - 1; t >= 0; t--) {
        float *dz = dZ + t * B * G;
        int64_t bad_t = 0;
        #pragma omp parallel num_threads(team) if (team > 1) reduction(+:bad_t)
        {
            mp_entry *w = sparse ? ws + (int64_t)mp_omp_thread_num()
                                   * mp_thread_stride(mp_lstm_topk_ws_entries(k)) : NULL;
            #pragma omp for schedule(static)
            for (int64_t b = 0; b < B; b++) {
                const int64_t row = t * B + b;
                float *dhb = dh + b * h, *dzb = dz + b * G;
                const float *dht = dH + row * h;
                for (int64_t j = 0; j < h; j++) dhb[j] += dht[j];
                mp_lstm_cell_backward(Z + row * G, C + row * h, TC + row * h, dhb, dc + b * h,
                                      dzb, h);
                if (!sparse) continue;
                bad_t += mp_lstm_select_step(dzb, U, h, k, idx + row * 4 * k, val + row * 4 * k,
                                             dhb, w, avx512);
            }
        }
        bad += bad_t;
        if (!sparse) {   /* dh_{t-1} = dz_t U for the whole batch: U read once */
            mp_matmul_nn(dz, U, dzs, B, G, h, nthreads);
            memcpy(dh, dzs, (size_t)(B * h) * sizeof(float));
        }
    }
    return bad;
}

#endif
