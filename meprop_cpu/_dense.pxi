# Thin wrappers around the dense products in include/meprop/dense.h.
#
# Arguments are assumed valid (float32, C-contiguous, matching shapes, outputs
# not overlapping inputs); every wrapper releases the GIL around the C call.
#


def dense_min_work():
    """Multiply-adds below which a product runs on one thread."""
    return MP_DENSE_MIN_WORK


def linear_forward(const float[:, ::1] x, const float[:, ::1] W, const float[::1] b,
                   float[:, ::1] y, bint relu, int nthreads):
    """y (B, n_out) = x (B, n_in) @ W (n_out, n_in).T + b (n_out,) or None; ReLU if relu."""
    cdef const float *bp = NULL
    if b is not None:
        bp = &b[0]
    with nogil:
        mp_linear_forward(&x[0, 0], &W[0, 0], bp, &y[0, 0], x.shape[0], x.shape[1],
                          W.shape[0], relu, nthreads)


def matmul_nn(const float[:, ::1] A, const float[:, ::1] Bm, float[:, ::1] C, int nthreads):
    """C (M, N) = A (M, K) @ Bm (K, N)."""
    with nogil:
        mp_matmul_nn(&A[0, 0], &Bm[0, 0], &C[0, 0], A.shape[0], A.shape[1], Bm.shape[1],
                     nthreads)


def matmul_tn(const float[:, ::1] A, const float[:, ::1] Bm, float[:, ::1] C, int nthreads):
    """C (M, N) = A (K, M).T @ Bm (K, N)."""
    with nogil:
        mp_matmul_tn(&A[0, 0], &Bm[0, 0], &C[0, 0], A.shape[1], A.shape[0], Bm.shape[1],
                     nthreads)
