# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""The C kernels of include/meprop/ as one extension module.

Every wrapper takes arguments that its Python caller has checked (meprop_cpu.kernels,
nn, optim, fused, lstm, parsing) and releases the GIL around the C call. The
declarations live in _core.pxd; the wrappers, by concern, in the .pxi files
included below. One module, so one SIMD switch (set_simd_limit) governs every
kernel.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint64_t, uint8_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

cnp.import_array()


def set_simd_limit(int level):
    """Cap the code path of every kernel: 2 AVX-512 (where the CPU has it),
    1 AVX2+FMA, 0 portable C. For tests; returns the previous cap."""
    global mp_simd_limit
    if level not in (0, 1, 2):
        raise ValueError(f"set_simd_limit: level must be 0, 1 or 2, got {level}")
    old = mp_simd_limit
    mp_simd_limit = level
    return old


def set_flush_subnormals(int on):
    """1 (the default): the optimizer updates run with subnormal floats flushed
    to zero (FTZ + DAZ, include/meprop/parallel.h); 0: in the caller's mode.
    For benchmarks (benchmarks/bench_subnormal.py); returns the previous setting."""
    global mp_ftz_on
    if on not in (0, 1):
        raise ValueError(f"set_flush_subnormals: on must be 0 or 1, got {on}")
    old = mp_ftz_on
    mp_ftz_on = on
    return old


def set_dense_short_k(int on):
    """1: the AVX2 nn / tn products take their row-outer order when K is short
    (the default), 0: the column-outer order throughout. The two give the same
    bits. For tests and benchmarks; returns the previous setting."""
    global mp_dense_shortk
    if on not in (0, 1):
        raise ValueError(f"set_dense_short_k: on must be 0 or 1, got {on}")
    old = mp_dense_shortk
    mp_dense_shortk = on
    return old


def simd_name():
    """The instruction set the build dispatches to on this CPU (a description)."""
    return mp_simd_level().decode()


def dense_level():
    """The code path the dense products take now: 2 AVX-512, 1 AVX2+FMA, 0 portable C."""
    return mp_dense_level()


def avx512_paths():
    """True when the hand-written AVX-512 kernels are in use."""
    return bool(mp_cpu_avx512())


include "_kernels.pxi"
include "_dense.pxi"
include "_step.pxi"
include "_layer.pxi"
include "_lstm.pxi"
include "_tagger.pxi"
include "_parse.pxi"
