# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Thin wrappers around the LSTM kernels in include/meprop/lstm.h.

Arguments are assumed valid (meprop_cpu.lstm checks them first); every
wrapper releases the GIL around the C call.
"""
from libc.stdint cimport int32_t, int64_t

cdef extern from "meprop/dense.h":
    int mp_dense_simd_limit
    void mp_linear_forward(const float *x, const float *W, const float *b, float *y,
                           int64_t B, int64_t n_in, int64_t n_out, int relu,
                           int nthreads) nogil

cdef extern from "meprop/lstm.h":
    void mp_lstm_forward(const float *xp, const float *U, int64_t T, int64_t h, float *Z,
                         float *H, float *C, float *TC, int nthreads) nogil
    int64_t mp_lstm_backward(const float *Z, const float *C, const float *TC, const float *U,
                             const float *dH, int64_t T, int64_t h, int64_t k, float *dZ,
                             int32_t *idx, float *val, float *dh, float *dc, void *ws,
                             int nthreads) nogil
    int64_t mp_lstm_topk_ws_entries(int64_t k) nogil


def set_simd_limit(int level):
    """Cap the dense products' code path inside this module (0 portable, 1 AVX2,
    2 AVX-512; for tests); returns the previous cap."""
    global mp_dense_simd_limit
    old = mp_dense_simd_limit
    mp_dense_simd_limit = level
    return old


def topk_ws_entries(int64_t k):
    return mp_lstm_topk_ws_entries(k)


def forward(const float[:, ::1] X, const float[:, ::1] W, const float[::1] b,
            const float[:, ::1] U, float[:, ::1] XP, float[:, ::1] Z, float[:, ::1] H,
            float[:, ::1] C, float[:, ::1] TC, int nthreads):
    """XP = X W^T + b (one product), then the recurrence (see lstm.h).
    H and C: (T+1, h) with row 0 the initial state."""
    cdef int64_t T = X.shape[0], n_in = X.shape[1], h = U.shape[1]
    with nogil:
        mp_linear_forward(&X[0, 0], &W[0, 0], &b[0], &XP[0, 0], T, n_in, 4 * h, 0, nthreads)
        mp_lstm_forward(&XP[0, 0], &U[0, 0], T, h, &Z[0, 0], &H[0, 0], &C[0, 0], &TC[0, 0],
                        nthreads)


def backward(const float[:, ::1] Z, const float[:, ::1] C, const float[:, ::1] TC,
             const float[:, ::1] U, const float[:, ::1] dH, int64_t k, float[:, ::1] dZ,
             int32_t[:, ::1] idx, float[:, ::1] val, float[::1] dh, float[::1] dc,
             int64_t[::1] ws, int nthreads):
    """Backward through time (see lstm.h). idx / val / ws are used only when
    1 <= k < h (pass 1-element dummies otherwise). dh, dc: in the gradients
    from beyond the sequence (zeros), out those of the initial state.
    Returns the non-finite count met by the selection."""
    cdef int64_t T = Z.shape[0], h = U.shape[1], bad
    cdef int32_t *pi = &idx[0, 0]
    cdef float *pv = &val[0, 0]
    cdef void *pw = <void *>&ws[0]
    with nogil:
        bad = mp_lstm_backward(&Z[0, 0], &C[0, 0], &TC[0, 0], &U[0, 0], &dH[0, 0], T, h, k,
                               &dZ[0, 0], pi, pv, &dh[0], &dc[0], pw, nthreads)
    return bad
