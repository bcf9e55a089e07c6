# Thin wrappers around the LSTM kernels in include/meprop/lstm.h.
#
# Arguments are assumed valid (meprop_cpu.lstm checks them first); every
# wrapper releases the GIL around the C call.
#


def lstm_topk_ws_entries(int64_t k):
    return mp_lstm_topk_ws_entries(k)


def lstm_forward(const float[:, ::1] X, const float[:, ::1] W, const float[::1] b,
                 const float[:, ::1] U, float[:, ::1] XP, float[:, ::1] Z, float[:, ::1] H,
                 float[:, ::1] C, float[:, ::1] TC, int nthreads):
    """XP = X W^T + b (one product), then the recurrence (see lstm.h).
    H and C: (T+1, h) with row 0 the initial state."""
    cdef int64_t T = X.shape[0], n_in = X.shape[1], h = U.shape[1]
    with nogil:
        mp_linear_forward(&X[0, 0], &W[0, 0], &b[0], &XP[0, 0], T, n_in, 4 * h, 0, nthreads)
        mp_lstm_forward(&XP[0, 0], &U[0, 0], T, h, &Z[0, 0], &H[0, 0], &C[0, 0], &TC[0, 0],
                        nthreads)


def lstm_backward(const float[:, ::1] Z, const float[:, ::1] C, const float[:, ::1] TC,
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
