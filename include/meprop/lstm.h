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
 * matrix-vector product U h_{t-1} per step (mp_lstm_gemv, added onto xp[t])
 * and the elementwise cell.
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
 * step split rows (forward) or columns (dense backward) over the threads with
 * a fixed order of operations per output, and the sparse dh sum runs serially
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

static inline float mp_lstm_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* The cell of one step: z (4h) holds the pre-activations on entry and the
 * activated gates on exit; c_prev -> c, h, tc = tanh(c). */
static void mp_lstm_cell(float *MP_RESTRICT z, const float *MP_RESTRICT c_prev,
                         float *MP_RESTRICT c, float *MP_RESTRICT hn, float *MP_RESTRICT tc,
                         int64_t h) {
    float *zi = z, *zf = z + h, *zg = z + 2 * h, *zo = z + 3 * h;
    for (int64_t j = 0; j < h; j++) {
        float i = mp_lstm_sigmoid(zi[j]), f = mp_lstm_sigmoid(zf[j]);
        float g = tanhf(zg[j]), o = mp_lstm_sigmoid(zo[j]);
        float cj = f * c_prev[j] + i * g;
        float t = tanhf(cj);
        zi[j] = i; zf[j] = f; zg[j] = g; zo[j] = o;
        c[j] = cj; tc[j] = t; hn[j] = o * t;
    }
}

/* The per-step products at batch 1 stream U (4h x h: 4 MB at h = 500) once
 * per token and are bound by the cache bandwidth; dedicated matrix-vector
 * loops beat the batch-oriented tiles of dense.h there.
 *
 * y[r] = b[r] + dot(U[r], x) for r in [r0, r1): each dot product runs in 16
 * lanes (lane l sums the entries l, l + 16, ...), folded by a fixed tree,
 * then the tail; four rows share each load of x. A row's arithmetic does not
 * depend on which group it falls in, so any split of the rows over threads
 * gives the same bits. */
static inline float mp_lstm_fold16(const float *a) {
    float s[8];
    for (int l = 0; l < 8; l++) s[l] = a[l] + a[l + 8];
    for (int l = 0; l < 4; l++) s[l] += s[l + 4];
    return (s[0] + s[2]) + (s[1] + s[3]);
}

MP_SIMD_CLONES
static void mp_lstm_gemv_rows(const float *MP_RESTRICT U, const float *MP_RESTRICT x,
                              const float *MP_RESTRICT b, float *MP_RESTRICT y, int64_t r0,
                              int64_t r1, int64_t n) {
    const int64_t n16 = n / 16 * 16;
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const float *u0 = U + r * n, *u1 = u0 + n, *u2 = u1 + n, *u3 = u2 + n;
        float a0[16] = {0}, a1[16] = {0}, a2[16] = {0}, a3[16] = {0};
        for (int64_t i = 0; i < n16; i += 16)
            for (int l = 0; l < 16; l++) {
                const float xv = x[i + l];
                a0[l] += u0[i + l] * xv;
                a1[l] += u1[i + l] * xv;
                a2[l] += u2[i + l] * xv;
                a3[l] += u3[i + l] * xv;
            }
        float s0 = mp_lstm_fold16(a0), s1 = mp_lstm_fold16(a1);
        float s2 = mp_lstm_fold16(a2), s3 = mp_lstm_fold16(a3);
        for (int64_t i = n16; i < n; i++) {
            s0 += u0[i] * x[i];
            s1 += u1[i] * x[i];
            s2 += u2[i] * x[i];
            s3 += u3[i] * x[i];
        }
        y[r] = b[r] + s0;
        y[r + 1] = b[r + 1] + s1;
        y[r + 2] = b[r + 2] + s2;
        y[r + 3] = b[r + 3] + s3;
    }
    for (; r < r1; r++) {
        const float *u0 = U + r * n;
        float a0[16] = {0};
        for (int64_t i = 0; i < n16; i += 16)
            for (int l = 0; l < 16; l++) a0[l] += u0[i + l] * x[i + l];
        float s0 = mp_lstm_fold16(a0);
        for (int64_t i = n16; i < n; i++) s0 += u0[i] * x[i];
        y[r] = b[r] + s0;
    }
}

/* y (m) = b + U x with U (m, n); rows split over the team in blocks of 4. */
static void mp_lstm_gemv(const float *U, const float *x, const float *b, float *y, int64_t m,
                         int64_t n, int nthreads) {
    int team = mp_team_size(nthreads, m * n, m / 64);
    #pragma omp parallel num_threads(team) if (team > 1)
    {
        int u = mp_omp_thread_num(), parts = team > 1 ? team : 1;
        int64_t q = (m / 4 + parts - 1) / parts * 4;
        int64_t r0 = (int64_t)u * q, r1 = r0 + q < m ? r0 + q : m;
        if (r0 < r1) mp_lstm_gemv_rows(U, x, b, y, r0, r1, n);
    }
}

MP_SIMD_CLONES
static void mp_lstm_gemv_t_cols(const float *MP_RESTRICT U, const float *MP_RESTRICT z,
                                float *MP_RESTRICT y, int64_t m, int64_t n, int64_t c0,
                                int64_t c1) {
    for (int64_t c = c0; c < c1; c++) y[c] = 0.0f;
    for (int64_t r = 0; r < m; r++) {
        const float v = z[r];
        if (v == 0.0f) continue;
        const float *ur = U + r * n;
        for (int64_t c = c0; c < c1; c++) y[c] += v * ur[c];
    }
}

/* y (n) = U^T z with U (m, n): y[c] sums z[r] U[r, c] over r ascending (rows
 * with z[r] == 0 skipped), column blocks split over the team, so the bits do
 * not depend on the thread count. */
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
        mp_lstm_gemv(U, H + t * h, xp + t * G, z, G, h, nthreads);
        mp_lstm_cell(z, C + t * h, C + (t + 1) * h, H + (t + 1) * h, TC + t * h, h);
    }
}

/* dz (4h) of one step from dh = dL/dh_t (total) and dc (in: dL/dc_t carried
 * from step t+1; out: dL/dc_{t-1}). */
static void mp_lstm_cell_backward(const float *MP_RESTRICT z, const float *MP_RESTRICT c_prev,
                                  const float *MP_RESTRICT tc, const float *MP_RESTRICT dh,
                                  float *MP_RESTRICT dc, float *MP_RESTRICT dz, int64_t h) {
    const float *zi = z, *zf = z + h, *zg = z + 2 * h, *zo = z + 3 * h;
    for (int64_t j = 0; j < h; j++) {
        float i = zi[j], f = zf[j], g = zg[j], o = zo[j], t = tc[j], d = dh[j];
        float dcj = dc[j] + d * o * (1.0f - t * t);
        dz[j] = dcj * g * i * (1.0f - i);
        dz[h + j] = dcj * c_prev[j] * f * (1.0f - f);
        dz[2 * h + j] = dcj * i * (1.0f - g * g);
        dz[3 * h + j] = d * t * o * (1.0f - o);
        dc[j] = dcj * f;
    }
}

MP_SIMD_CLONES
static void mp_lstm_axpy(float *MP_RESTRICT y, const float *MP_RESTRICT x, float a, int64_t n) {
    for (int64_t j = 0; j < n; j++) y[j] += a * x[j];
}

/* Scratch of mp_lstm_backward's selection, in 8-byte entries. */
static inline int64_t mp_lstm_topk_ws_entries(int64_t k) { return mp_topk_ws_entries(k); }

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
        int32_t *ii = idx + t * 4 * k;
        float *vv = val + t * 4 * k;
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
    }
    return bad;
}

#endif
