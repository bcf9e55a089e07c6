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


def lstm_forward_batch(const float[:, ::1] X, const float[:, ::1] W, const float[::1] b,
                       const float[:, ::1] U, float[:, ::1] XP, float[:, ::1] Z,
                       float[:, ::1] H, float[:, ::1] C, float[:, ::1] TC, int64_t B,
                       int nthreads):
    """B sequences side by side, time major (row t*B + b = step t of sequence
    b): XP = X W^T + b (one product), then the recurrence with one (B, h) x
    (h, 4h) product per step (see lstm.h). H and C: ((T+1) B, h), block 0
    the initial states."""
    cdef int64_t TB = X.shape[0], n_in = X.shape[1], h = U.shape[1]
    if B < 1 or TB % B:
        raise ValueError(f"lstm_forward_batch: {TB} rows are not T blocks of B = {B}")
    with nogil:
        mp_linear_forward(&X[0, 0], &W[0, 0], &b[0], &XP[0, 0], TB, n_in, 4 * h, 0, nthreads)
        mp_lstm_forward_batch(&XP[0, 0], &U[0, 0], TB // B, B, h, &Z[0, 0], &H[0, 0],
                              &C[0, 0], &TC[0, 0], nthreads)


def lstm_backward_batch(const float[:, ::1] Z, const float[:, ::1] C, const float[:, ::1] TC,
                        const float[:, ::1] U, const float[:, ::1] dH, int64_t B, int64_t k,
                        float[:, ::1] dZ, int32_t[:, ::1] idx, float[:, ::1] val,
                        float[:, ::1] dh, float[:, ::1] dc, int64_t[::1] ws,
                        float[:, ::1] dzs, int nthreads):
    """Backward through time of B sequences (see lstm.h). idx / val (T B, 4k)
    and ws (nthreads * thread stride of lstm_topk_ws_entries(k)) are used
    only when 1 <= k < h (pass 1-element dummies otherwise); dzs (B, h) only
    for the dense backward. dh, dc (B, h): in zeros, out the gradients of the
    initial states. Returns the non-finite count met by the selection."""
    cdef int64_t TB = Z.shape[0], h = U.shape[1], bad
    if B < 1 or TB % B:
        raise ValueError(f"lstm_backward_batch: {TB} rows are not T blocks of B = {B}")
    if 0 < k < h:
        _check_ws(ws.shape[0], nthreads * mp_thread_stride(mp_lstm_topk_ws_entries(k)), "ws")
    cdef int32_t *pi = &idx[0, 0]
    cdef float *pv = &val[0, 0]
    cdef mp_entry *pw = <mp_entry *>&ws[0]
    with nogil:
        bad = mp_lstm_backward_batch(&Z[0, 0], &C[0, 0], &TC[0, 0], &U[0, 0], &dH[0, 0],
                                     TB // B, B, h, k, &dZ[0, 0], pi, pv, &dh[0, 0], &dc[0, 0],
                                     pw, &dzs[0, 0], nthreads)
    return bad

