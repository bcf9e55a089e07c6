"""Shared pieces of the kernel test files (test_topk.py, test_hits.py,
test_sparse_linear.py, test_kernel_errors.py, test_nn_linear.py): the
`simd_path` fixture, the value generators, bit-for-bit comparison and
buffers guarded by sentinel bytes.

`simd_path` is autouse but lives here rather than in conftest.py, so that it
applies only to the modules that import it:

    from kernel_helpers import simd_path  # noqa: F401  (autouse: native + portable)

(tests/conftest.py registers this module for pytest's assertion rewriting.)
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import meprop_cpu as mp
from meprop_cpu import kernels as K

PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
KINDS = ("normal", "ties", "zeros", "signed_zero", "huge", "tiny", "subnormal", "mixed")
MIN_WORK = mp.show_config()["parallel_min_work"]


@pytest.fixture(autouse=True, scope="module", params=["native", "portable"])
def simd_path(request):
    """Run every test twice: on the kernels this CPU dispatches to (AVX-512
    where available) and with the portable kernels forced."""
    from meprop_cpu import _core
    old = _core.set_simd_limit(0 if request.param == "portable" else 2)
    try:
        yield request.param
    finally:
        _core.set_simd_limit(old)


# ------------------------------------------------------------------ helpers

def make_values(rng, shape, kind):
    """A float32 array of the given shape with a value distribution of `kind`."""
    if kind == "normal":
        a = rng.standard_normal(shape)
    elif kind == "ties":                      # a few integers: many exact ties, zeros
        a = rng.integers(-2, 3, size=shape).astype(np.float64)
    elif kind == "zeros":                     # sparse rows, some of them entirely zero
        a = rng.standard_normal(shape) * (rng.random(shape) < 0.3)
        if len(shape) == 2 and shape[0] > 1:
            a[rng.random(shape[0]) < 0.3] = 0.0
    elif kind == "signed_zero":               # 0.0 and -0.0 have the same magnitude
        a = rng.choice(np.array([0.0, -0.0, 1.0, -1.0, 0.0, -0.0]), size=shape)
    elif kind == "huge":
        a = rng.standard_normal(shape) * 1e30
    elif kind == "tiny":
        a = rng.standard_normal(shape) * 1e-30
    elif kind == "subnormal":                 # float32 subnormals (1e-40) and zeros
        a = rng.choice(np.array([0.0, -0.0, 1e-40, -1e-40, 3e-41, 1e-45]), size=shape)
    elif kind == "mixed":                     # magnitudes spread over 1e-45 .. 1e30
        a = rng.choice([-1.0, 1.0], size=shape) * 10.0 ** rng.uniform(-45, 30, size=shape)
    else:
        raise ValueError(kind)
    return np.ascontiguousarray(a, dtype=np.float32)


def random_shape(rng, max_b=70, max_n=300):
    """(B, n, k) with a bias towards the edge cases B = 1, k = 1, k = n."""
    B = 1 if rng.random() < 0.2 else int(rng.integers(1, max_b + 1))
    n = 1 if rng.random() < 0.05 else int(rng.integers(1, max_n + 1))
    r = rng.random()
    k = 1 if r < 0.2 else n if r < 0.4 else int(rng.integers(1, n + 1))
    return B, n, k


def bits(a):
    """The raw bit patterns, so that -0.0 != 0.0 and NaN payloads count."""
    a = np.ascontiguousarray(a)
    return a.view(np.uint8)


def assert_bit_equal(a, b, what=""):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert np.array_equal(bits(a), bits(b)), what


# ------------------------------------- no writes outside the workspace buffers

class GuardedWorkspace(K.Workspace):
    """Hands out views of buffers followed by a guard zone of sentinel bytes,
    so a kernel writing past the size it asked for is caught."""

    PAD = 4096
    SENTINEL = 0x5A

    def __init__(self):
        super().__init__()
        self.handed = []

    def get(self, name, shape, dtype):
        dtype = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64))
        raw = np.empty((size + self.PAD,), dtype=dtype)
        raw.view(np.uint8)[:] = self.SENTINEL
        self.handed.append((name, size, raw))
        return raw[:size].reshape(shape)

    def check(self):
        for name, size, raw in self.handed:
            tail = raw[size:].view(np.uint8)
            overrun = np.flatnonzero(tail != self.SENTINEL)
            assert overrun.size == 0, (
                f"kernel wrote {int(overrun[-1]) + 1} bytes past workspace buffer "
                f"{name!r} of {size} x {raw.dtype} elements")


def guarded_array(shape, dtype, pad=256):
    """An output array followed by sentinel bytes; returns (array, check)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64))
    raw = np.empty((size + pad,), dtype=dtype)
    raw.view(np.uint8)[:] = GuardedWorkspace.SENTINEL

    def check():
        tail = raw[size:].view(np.uint8)
        overrun = np.flatnonzero(tail != GuardedWorkspace.SENTINEL)
        assert overrun.size == 0, (f"kernel wrote {int(overrun[-1]) + 1} bytes past the end "
                                   f"of its {shape} {dtype} output")
    return raw[:size].reshape(shape), check
