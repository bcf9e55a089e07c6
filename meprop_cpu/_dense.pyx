# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Thin wrappers around the dense products in include/meprop/dense.h.

Arguments are assumed valid (float32, C-contiguous, matching shapes, outputs
not overlapping inputs); every wrapper releases the GIL around the C call.
"""
from libc.stdint cimport int64_t

cdef extern from "meprop/parallel.h":
    int mp_avx512_disabled
    int mp_cpu_avx512() nogil

cdef extern from "meprop/dense.h":
    int64_t MP_DENSE_MIN_WORK
    int mp_dense_simd_limit
    int mp_dense_level() nogil
    void mp_linear_forward(const float *x, const float *W, const float *b, float *y,
                           int64_t B, int64_t n_in, int64_t n_out, int relu,
                           int nthreads) nogil
    void mp_matmul_nn(const float *A, const float *Bm, float *C, int64_t M, int64_t K,
                      int64_t N, int nthreads) nogil
    void mp_matmul_tn(const float *A, const float *Bm, float *C, int64_t M, int64_t K,
                      int64_t N, int nthreads) nogil


def set_avx512_disabled(bint disabled):
    """Force the portable dense kernels (for tests); returns the previous setting."""
    global mp_avx512_disabled
    old = bool(mp_avx512_disabled)
    mp_avx512_disabled = 1 if disabled else 0
    return old


def set_simd_limit(int level):
    """Cap the code path (2 AVX-512, 1 AVX2+FMA, 0 portable C; for tests);
    returns the previous cap."""
    global mp_dense_simd_limit
    old = mp_dense_simd_limit
    mp_dense_simd_limit = level
    return old


def simd_level():
    """The code path the dense kernels take now: 2 AVX-512, 1 AVX2+FMA, 0 portable C."""
    return mp_dense_level()


def uses_avx512():
    """Whether the hand-written AVX-512 kernels run (CPU support and not disabled)."""
    return mp_dense_level() == 2


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
