"""The LSTM layer (meprop_cpu.nn.lstm, include/meprop/lstm.h) against the naive
float64 reference in tests/reference_lstm.py: forward, dense and meProp
backward through time, a finite-difference check of the dense gradients,
k >= h equal to dense, bit-identical results for 1 and 2 threads and for the
portable and vectorised dense products, the row-sparse update touching only
selected rows, and argument validation."""
import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import _core
from meprop_cpu.nn import LSTM
from meprop_cpu.optim import Adam

from reference_lstm import lstm_backward, lstm_forward


def _layer(n_in, h, k=None, seed=0, scale=1.0):
    layer = LSTM(n_in, h, k=k, seed=seed)
    if scale != 1.0:
        for p in (layer.W, layer.U):
            p.data *= scale
    layer.b.data[:] = np.random.default_rng(seed + 7).uniform(-0.5, 0.5, 4 * h)
    return layer


def _run(layer, X, dH):
    H = layer.forward(X).copy()
    dX = layer.backward(dH)
    dX = None if dX is None else dX.copy()
    gW = layer.W.grad.to_dense(layer.W.data.shape[0])
    gU = layer.U.grad.to_dense(layer.U.data.shape[0])
    return H, dX, gW, gU, layer.b.grad.copy()


def _data(T, n_in, h, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((T, n_in)).astype(np.float32)
    dH = rng.standard_normal((T, h)).astype(np.float32)
    return X, dH


@pytest.mark.parametrize("T,n_in,h", [(1, 3, 1), (5, 7, 4), (9, 13, 17), (4, 190, 33)])
@pytest.mark.parametrize("k", [None, 1, 3])
def test_matches_reference(T, n_in, h, k):
    X, dH = _data(T, n_in, h, seed=T * 100 + h)
    layer = _layer(n_in, h, k=k, seed=h)
    H, dX, gW, gU, gb = _run(layer, X, dH)
    Hr, cache = lstm_forward(X, layer.W.data, layer.U.data, layer.b.data)
    dXr, dWr, dUr, dbr, sel = lstm_backward(cache, dH, k)
    np.testing.assert_allclose(H, Hr, rtol=1e-4, atol=1e-5)
    tol = dict(rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(dX, dXr, **tol)
    np.testing.assert_allclose(gW, dWr, **tol)
    np.testing.assert_allclose(gU, dUr, **tol)
    np.testing.assert_allclose(gb, dbr, **tol)
    if layer.sparse:
        ws = layer._ws
        idx = ws.get("idx", (T, 4 * k), np.int32)
        for t in range(T):
            np.testing.assert_array_equal(np.sort(idx[t]), sel[t])
        # only the selected rows of dW / dU are non-zero
        rows = np.unique(idx)
        assert set(layer.W.grad.rows.tolist()) <= set(rows.tolist())
        untouched = np.setdiff1d(np.arange(4 * h), rows)
        assert not gW[untouched].any() and not gU[untouched].any()


def test_k_at_least_h_is_dense():
    X, dH = _data(6, 11, 8, seed=1)
    dense = _run(_layer(11, 8, k=None, seed=3), X, dH)
    for k in (8, 9, 100):
        other = _run(_layer(11, 8, k=k, seed=3), X, dH)
        for a, b in zip(dense, other):
            np.testing.assert_array_equal(a, b)


def test_topk_changes_gradient_and_k1_selects_four_rows():
    X, dH = _data(5, 6, 10, seed=2)
    dense = _run(_layer(6, 10, k=None, seed=4), X, dH)
    layer = _layer(6, 10, k=1, seed=4)
    sparse = _run(layer, X, dH)
    assert not np.array_equal(dense[2], sparse[2])
    idx = layer._ws.get("idx", (5, 4), np.int32)
    assert idx.shape == (5, 4)
    assert (idx // 10 == np.arange(4)).all()   # one row per gate block


def test_finite_differences_dense():
    """d/dtheta of L = sum(H * R) by central differences of the C forward."""
    T, n_in, h = 4, 5, 6
    X, R = _data(T, n_in, h, seed=9)
    layer = _layer(n_in, h, seed=5)
    _, dX, gW, gU, gb = _run(layer, X, R)

    def loss():
        return float((layer.forward(X).astype(np.float64) * R).sum())

    rng = np.random.default_rng(0)
    eps = 1e-2
    for p, g in ((layer.W, gW), (layer.U, gU), (layer.b, gb)):
        flat = p.data.reshape(-1)
        for i in rng.choice(flat.size, 12, replace=False):
            old = flat[i]
            flat[i] = old + eps
            lp = loss()
            flat[i] = old - eps
            lm = loss()
            flat[i] = old
            num = (lp - lm) / (2 * eps)
            assert abs(num - g.reshape(-1)[i]) <= 2e-3 + 2e-2 * abs(num), (p.name, i)
    for t, j in [(0, 0), (2, 3), (3, 4)]:
        old = X[t, j]
        X[t, j] = old + eps
        lp = loss()
        X[t, j] = old - eps
        lm = loss()
        X[t, j] = old
        num = (lp - lm) / (2 * eps)
        assert abs(num - dX[t, j]) <= 2e-3 + 2e-2 * abs(num)


@pytest.mark.parametrize("k", [None, 5])
def test_threads_and_simd_paths_bit_identical(k):
    # h = 256: the per-step products (1024 x 256) are above the parallel threshold
    assert 4 * 256 * 256 >= mp.show_config()["parallel_min_work"]
    X, dH = _data(7, 190, 256, seed=11)
    old = mp.get_num_threads()
    results = {}
    try:
        for level in (2, 0):
            prev = _core.set_simd_limit(level)
            try:
                for nt in (1, 2):
                    mp.set_num_threads(nt)
                    results[level, nt] = _run(_layer(190, 256, k=k, seed=1), X, dH)
            finally:
                _core.set_simd_limit(prev)
    finally:
        mp.set_num_threads(old)
    for level in (2, 0):
        for a, b in zip(results[level, 1], results[level, 2]):
            np.testing.assert_array_equal(a, b)
    # the portable and vectorised products agree to rounding
    for a, b in zip(results[2, 1], results[0, 1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_row_sparse_update_touches_selected_rows_only():
    X, dH = _data(6, 9, 12, seed=4)
    layer = _layer(9, 12, k=2, seed=2)
    opt = Adam(layer.parameters(), lr=0.01)
    W0, U0 = layer.W.data.copy(), layer.U.data.copy()
    layer.forward(X)
    layer.backward(dH)
    rows = np.unique(layer._ws.get("idx", (6, 8), np.int32))
    gW = layer.W.grad.to_dense(48)   # forms the values: same update either way
    opt.step()
    changed = np.flatnonzero((layer.W.data != W0).any(axis=1))
    assert set(changed.tolist()) <= set(rows.tolist()) and len(changed) > 0
    assert set(np.flatnonzero((layer.U.data != U0).any(axis=1)).tolist()) <= set(rows.tolist())
    assert np.array_equal(np.flatnonzero(gW.any(axis=1)), changed)


def test_factored_and_formed_updates_are_identical():
    X, dH = _data(5, 9, 12, seed=6)
    out = []
    for form in (False, True):
        layer = _layer(9, 12, k=3, seed=2)
        opt = Adam(layer.parameters(), lr=0.01)
        for _ in range(2):
            layer.forward(X)
            layer.backward(dH)
            if form:
                layer.W.grad.values, layer.U.grad.values
            opt.step()
        out.append((layer.W.data.copy(), layer.U.data.copy()))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_errors():
    with pytest.raises(ValueError, match="hidden"):
        LSTM(3, 0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        LSTM(3, 4, k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        LSTM(3, 4, k=2.5)
    with pytest.raises(ValueError, match="mode"):
        LSTM(3, 4, mode="random")
    layer = LSTM(3, 4)
    with pytest.raises(RuntimeError, match="without a forward"):
        layer.backward(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="float32"):
        layer.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"shape \(T >= 1, 3\)"):
        layer.forward(np.zeros((2, 5), np.float32))
    layer.forward(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="dH has 3 rows"):
        layer.backward(np.zeros((3, 4), np.float32))
    sparse = LSTM(3, 4, k=1)
    sparse.forward(np.ones((2, 3), np.float32))
    with pytest.raises(FloatingPointError, match="NaN"):
        sparse.backward(np.full((2, 4), np.nan, np.float32))


def test_hits_count_steps_with_a_selected_gate_row():
    X, dH = _data(6, 5, 10, seed=8)
    layer = _layer(5, 10, k=2, seed=1)
    layer.track_hits = True
    layer.forward(X)
    layer.backward(dH)
    idx = layer._ws.get("idx", (6, 8), np.int32)
    val = layer._ws.get("val", (6, 8), np.float32)
    want = np.zeros(10, np.int64)
    for t in range(6):
        want[np.unique(idx[t][val[t] != 0] % 10)] += 1
    np.testing.assert_array_equal(layer.hits, want)
    assert layer.seen == 6


# -- B sequences side by side (minibatches) -------------------------------------------

def _batch(lengths, n_in, h, seed):
    """Time-major padded X, dH (padding: garbage values, which must not matter) and
    the per-sequence pieces."""
    rng = np.random.default_rng(seed)
    B, T = len(lengths), max(lengths)
    X = rng.standard_normal((T * B, n_in)).astype(np.float32) * 3.0
    dH = rng.standard_normal((T * B, h)).astype(np.float32) * 5.0
    parts = [(X[np.arange(L) * B + b].copy(), dH[np.arange(L) * B + b].copy())
             for b, L in enumerate(lengths)]
    return X, dH, parts


@pytest.mark.parametrize("lengths,n_in,h", [([3], 5, 4), ([1, 4, 2], 7, 6),
                                            ([5, 5, 1, 3, 2], 13, 17), ([6, 2], 190, 33)])
@pytest.mark.parametrize("k", [None, 1, 3])
def test_batch_matches_the_sum_of_single_sequence_references(lengths, n_in, h, k):
    X, dH, parts = _batch(lengths, n_in, h, seed=len(lengths) * 31 + h)
    layer = _layer(n_in, h, k=k, seed=h)
    B, T = len(lengths), max(lengths)
    H = layer.forward(X, lengths).copy()
    dX = layer.backward(dH).copy()
    gW = layer.W.grad.to_dense(4 * h)
    gU = layer.U.grad.to_dense(4 * h)
    gb = layer.b.grad.copy()
    sums = [0.0, 0.0, 0.0]
    tol = dict(rtol=2e-3, atol=3e-4)
    for b, (L, (xb, dhb)) in enumerate(zip(lengths, parts)):
        rows = np.arange(L) * B + b
        Hr, cache = lstm_forward(xb, layer.W.data, layer.U.data, layer.b.data)
        dXr, dWr, dUr, dbr, sel = lstm_backward(cache, dhb, k)
        np.testing.assert_allclose(H[rows], Hr, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dX[rows], dXr, **tol)
        sums = [sums[0] + dWr, sums[1] + dUr, sums[2] + dbr]
        if layer.sparse:
            idx = layer._ws.get("idx", (T * B, 4 * k), np.int32)
            for t in range(L):
                np.testing.assert_array_equal(np.sort(idx[rows[t]]), sel[t])
    pad = np.setdiff1d(np.arange(T * B), np.concatenate(
        [np.arange(L) * B + b for b, L in enumerate(lengths)]))
    assert not dX[pad].any()                       # padding gets no gradient
    np.testing.assert_allclose(gW, sums[0], **tol)
    np.testing.assert_allclose(gU, sums[1], **tol)
    np.testing.assert_allclose(gb, sums[2], **tol)


@pytest.mark.parametrize("k", [None, 5])
def test_batch_threads_bit_identical_and_hits_count_real_steps(k):
    lengths = [7, 3, 5, 7]
    X, dH, _ = _batch(lengths, 190, 256, seed=3)
    old = mp.get_num_threads()
    res = {}
    try:
        for nt in (1, 2):
            mp.set_num_threads(nt)
            layer = _layer(190, 256, k=k, seed=2)
            layer.track_hits = True
            out = _run_batch(layer, X, dH, lengths)
            res[nt] = out + (layer.hits.copy(),)
            assert layer.seen == sum(lengths)
    finally:
        mp.set_num_threads(old)
    for a, b in zip(res[1], res[2]):
        np.testing.assert_array_equal(a, b)


def _run_batch(layer, X, dH, lengths):
    H = layer.forward(X, lengths).copy()
    dX = layer.backward(dH).copy()
    return (H, dX, layer.W.grad.to_dense(layer.W.data.shape[0]),
            layer.U.grad.to_dense(layer.U.data.shape[0]), layer.b.grad.copy())


def test_batch_errors():
    layer = LSTM(4, 3, k=1)
    X = np.zeros((6, 4), dtype=np.float32)
    for bad in ([], [0, 3], [[2, 3]], [2.0, 3.0]):
        with pytest.raises(ValueError, match="lengths must be"):
            layer.forward(X, bad)
    with pytest.raises(ValueError, match="max\\(lengths\\) \\* len\\(lengths\\) = 8 rows"):
        layer.forward(X, [4, 1])
    layer.forward(X, [3, 2])
    with pytest.raises(ValueError, match="forward batch had T\\*B = 6"):
        layer.backward(np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="rows are not T blocks"):
        _core.lstm_forward_batch(X, layer.W.data, layer.b.data, layer.U.data,
                                 *[np.zeros((8, 12), np.float32)] * 2,
                                 *[np.zeros((8, 3), np.float32)] * 3, 4, 1)
