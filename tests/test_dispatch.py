"""The portable kernels and the AVX-512 kernels give the same selections and
(to float rounding) the same products; both paths are run on this machine."""
import numpy as np
import pytest

from meprop_cpu import _core, kernels


@pytest.fixture(params=[False, True], ids=["native", "portable"])
def portable(request):
    old = _core.set_simd_limit(0 if request.param else 2)
    yield request.param
    _core.set_simd_limit(old)


def _naive_topk(g, k):
    return np.sort(np.argsort(-np.abs(g), axis=1, kind="stable")[:, :k], axis=1)


@pytest.mark.parametrize("seed", range(6))
def test_topk_and_backward_on_both_paths(portable, seed):
    rng = np.random.default_rng(seed)
    B, n_in, n_out = int(rng.integers(1, 40)), int(rng.integers(1, 300)), int(rng.integers(1, 300))
    k = int(rng.integers(1, n_out + 1))
    g = rng.integers(-3, 4, (B, n_out)).astype(np.float32) if seed % 2 else \
        rng.standard_normal((B, n_out)).astype(np.float32)
    idx, val = kernels.topk_rows(g, k)
    assert np.array_equal(idx, _naive_topk(g, k))
    x = rng.standard_normal((B, n_in)).astype(np.float32)
    W = rng.standard_normal((n_out, n_in)).astype(np.float32)
    dx, grad = kernels.sparse_backward(x, W, idx, val)
    dy = np.zeros((B, n_out), np.float32)
    np.put_along_axis(dy, idx, val, axis=1)
    np.testing.assert_allclose(dx, dy.astype(np.float64) @ W, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grad.to_dense(n_out), dy.T.astype(np.float64) @ x,
                               rtol=1e-4, atol=1e-4)


def test_paths_agree_closely():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((33, 257)).astype(np.float32)
    W = rng.standard_normal((190, 257)).astype(np.float32)
    g = rng.standard_normal((33, 190)).astype(np.float32)
    out = []
    for disabled in (False, True):
        old = _core.set_simd_limit(0 if disabled else 2)
        try:
            idx, val = kernels.topk_rows(g, 17)
            dx, grad = kernels.sparse_backward(x, W, idx, val)
            out.append((idx, dx, grad.to_dense(190)))
        finally:
            _core.set_simd_limit(old)
    assert np.array_equal(out[0][0], out[1][0])
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[0][2], out[1][2], rtol=1e-5, atol=1e-5)
