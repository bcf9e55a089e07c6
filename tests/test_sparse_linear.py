"""The backward kernels of meprop_cpu.kernels against the float64 references in
tests/reference.py: the sparse backward (sparse_backward, sparse_backward_into:
dx and the row-sparse dW, by the gather and the masked formulation, repeated
and zero-valued pairs, against the dense products of the scattered
gradient), the unified and the dense backward, RowGrad, bit-identical results
for 1 and N threads, no writes outside the workspace buffers, and a
hypothesis property. Every test runs on the native and the portable kernels
(the `simd_path` fixture)."""
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import meprop_cpu as mp
from meprop_cpu import kernels as K

from kernel_helpers import (PROPERTY, GuardedWorkspace, assert_bit_equal, make_values,
                            random_shape)
from kernel_helpers import simd_path  # noqa: F401  (autouse: native + portable)
from reference import (assert_close_sum, ref_dense_backward, ref_scatter,
                       ref_sparse_backward)


def check_sparse_backward(x, W, idx, val, threads, method=None):
    if method is None:
        dx, grad = K.sparse_backward(x, W, idx, val, threads=threads)
    else:   # force the gather or the masked dense formulation
        dx, grad = K.sparse_backward_into(x, W, idx, val, K.Workspace(), threads, method=method)
    rdx, rows, rvalues, absdx, absvalues = ref_sparse_backward(x, W, idx, val)
    B, k = idx.shape
    n_out = W.shape[0]
    assert dx.dtype == np.float32 and dx.shape == x.shape
    assert_close_sum(dx, rdx, absdx, k, "dx")
    assert isinstance(grad, K.RowGrad) and not grad.dense
    assert grad.rows.dtype == np.int32 and grad.values.dtype == np.float32
    np.testing.assert_array_equal(grad.rows, rows)
    assert_close_sum(grad.values, rvalues, absvalues, B, "dW values")
    # against the dense products of the scattered sparse gradient
    dy = ref_scatter(idx, val, n_out)
    absdy = ref_scatter(idx, np.abs(val), n_out)
    ddx, ddw, absddx, absddw = ref_dense_backward(x, W, dy, absdy)
    assert_close_sum(dx, ddx, absddx, n_out, "dx vs dy @ W")
    assert_close_sum(grad.to_dense(n_out), ddw, absddw, B, "to_dense vs dy.T @ x")
    return dx, grad


# ------------------------------------------------------------ sparse backward

def random_backward_case(rng, max_b=60, max_out=200, max_in=130):
    B, n_out, k = random_shape(rng, max_b, max_out)
    n_in = int(rng.choice([1, 2, 15, 16, 17, 31, 33, int(rng.integers(1, max_in + 1))]))
    x = make_values(rng, (B, n_in), "normal")
    W = make_values(rng, (n_out, n_in), "normal")
    kind = rng.choice(["normal", "ties", "zeros", "signed_zero", "huge", "tiny", "subnormal"])
    if rng.random() < 0.5:                 # index sets from a top-k selection
        dy = make_values(rng, (B, n_out), kind)
        idx, val = K.topk_rows(dy, k)
    else:                                  # arbitrary index sets, repeats allowed
        idx = rng.integers(0, n_out, size=(B, k)).astype(np.int32)
        val = make_values(rng, (B, k), kind)
    return x, W, idx, val


@pytest.mark.parametrize("seed", range(60))
def test_sparse_backward_random(seed):
    rng = np.random.default_rng(5000 + seed)
    x, W, idx, val = random_backward_case(rng)
    before = [a.copy() for a in (x, W, idx, val)]
    check_sparse_backward(x, W, idx, val, threads=1 + seed % 2)
    for a, b in zip((x, W, idx, val), before):
        assert_bit_equal(a, b, "inputs must not be modified")


def test_sparse_backward_zero_values_touch_no_rows():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    W = np.ones((5, 3), dtype=np.float32)
    idx = np.array([[1, 3, 4], [0, 3, 4]], dtype=np.int32)
    val = np.array([[0.0, 2.0, -0.0], [0.0, -1.0, 0.0]], dtype=np.float32)
    dx, grad = K.sparse_backward(x, W, idx, val)
    assert grad.rows.tolist() == [3]
    np.testing.assert_array_equal(grad.values, [2 * x[0] - x[1]])
    np.testing.assert_array_equal(dx, [[2, 2, 2], [-1, -1, -1]])
    # every value zero: no rows at all, dx zero
    dx, grad = K.sparse_backward(x, W, idx, np.zeros_like(val))
    assert grad.rows.shape == (0,) and grad.values.shape == (0, 3)
    assert not dx.any()
    np.testing.assert_array_equal(grad.to_dense(5), np.zeros((5, 3)))


def test_sparse_backward_repeated_index_adds_up():
    x = np.array([[1, 2], [3, 4]], dtype=np.float32)
    W = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    idx = np.array([[2, 2, 0], [1, 2, 1]], dtype=np.int32)
    val = np.array([[1, 2, 4], [1, 1, 1]], dtype=np.float32)
    dx, grad = K.sparse_backward(x, W, idx, val)
    np.testing.assert_array_equal(dx, [[7, 3], [1, 3]])
    assert grad.rows.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(grad.values, [[4, 8], [6, 8], [6, 10]])


@pytest.mark.parametrize("seed", range(6))
def test_sparse_backward_k_equals_n_is_dense(seed):
    rng = np.random.default_rng(seed)
    B, n_in, n_out = [(1, 1, 1), (3, 17, 5), (10, 33, 64), (31, 100, 47), (64, 7, 129),
                      (256, 1024, 64)][seed]
    x = make_values(rng, (B, n_in), "normal")
    W = make_values(rng, (n_out, n_in), "normal")
    dy = make_values(rng, (B, n_out), "zeros" if seed % 2 else "normal")
    idx, val = K.topk_rows(dy, n_out)
    dx, grad = K.sparse_backward(x, W, idx, val, threads=2)
    ddx, dgrad = K.dense_backward(x, W, dy)
    assert dgrad.dense
    rdx, rdw, absdx, absdw = ref_dense_backward(x, W, dy)
    # both are float32 roundings of the same exact products
    assert_close_sum(dx, rdx, absdx, n_out, "sparse dx")
    assert_close_sum(ddx, rdx, absdx, n_out, "dense dx")
    assert_close_sum(grad.to_dense(n_out), rdw, absdw, B, "sparse dW")
    assert_close_sum(dgrad.to_dense(n_out), rdw, absdw, B, "dense dW")
    np.testing.assert_array_equal(grad.rows, np.flatnonzero(np.any(dy != 0, axis=0)))


@pytest.mark.parametrize("method", ["gather", "masked"])
@pytest.mark.parametrize("shape", [(1, 5, 8, 2), (7, 33, 40, 9), (10, 784, 500, 20),
                                   (100, 300, 200, 49), (100, 300, 200, 51), (64, 130, 129, 129)])
def test_sparse_backward_both_methods_match_the_reference(method, shape):
    """Each formulation on both sides of the k > n_out / 4 rule, with zero
    values, repeated indices and 1 or 2 threads."""
    B, n_in, n_out, k = shape
    rng = np.random.default_rng(B + k)
    x = make_values(rng, (B, n_in), "normal")
    W = make_values(rng, (n_out, n_in), "normal")
    idx = rng.integers(0, n_out, size=(B, k)).astype(np.int32)
    val = make_values(rng, (B, k), "normal")
    val[rng.random((B, k)) < 0.2] = 0.0
    for threads in (1, 2):
        dx, grad = check_sparse_backward(x, W, idx, val, threads, method)
        assert grad.factored is False
    # the rule picks by shape only
    dx0, g0 = K.sparse_backward(x, W, idx, val, threads=1)
    auto = "masked" if 4 * k > n_out else "gather"
    assert K._core.backward_masked(k, n_out) == (auto == "masked")
    dx1, g1 = K.sparse_backward_into(x, W, idx, val, K.Workspace(), 2, method=auto)
    assert_bit_equal(dx0, dx1, "auto and explicit method")
    assert_bit_equal(g0.values, g1.values, "auto and explicit method")


def test_sparse_backward_results_do_not_alias_between_calls():
    rng = np.random.default_rng(3)
    x, W = make_values(rng, (4, 9), "normal"), make_values(rng, (11, 9), "normal")
    idx, val = K.topk_rows(make_values(rng, (4, 11), "normal"), 3)
    dx1, g1 = K.sparse_backward(x, W, idx, val)
    keep = dx1.copy(), g1.rows.copy(), g1.values.copy()
    K.sparse_backward(x * 2, W * 3, idx, val * 5)
    assert_bit_equal(dx1, keep[0])
    assert_bit_equal(g1.rows, keep[1])
    assert_bit_equal(g1.values, keep[2])


@pytest.mark.parametrize("shape", [(256, 1024, 512, 40), (300, 77, 513, 1), (8, 4099, 257, 257),
                                   (2, 33, 17, 3), (1, 1, 1, 1)])
def test_sparse_backward_thread_independent(shape):
    B, n_in, n_out, k = shape
    rng = np.random.default_rng(sum(shape))
    x = make_values(rng, (B, n_in), "normal")
    W = make_values(rng, (n_out, n_in), "normal")
    dy = make_values(rng, (B, n_out), "zeros")
    idx, val = K.topk_rows(dy, k)
    dx1, g1 = check_sparse_backward(x, W, idx, val, threads=1)
    for t in (2, 3, 8):
        dx2, g2 = K.sparse_backward(x, W, idx, val, threads=t)
        assert_bit_equal(dx1, dx2, f"dx threads=1 vs {t}")
        assert_bit_equal(g1.rows, g2.rows)
        assert_bit_equal(g1.values, g2.values, f"dW threads=1 vs {t}")


def test_default_thread_count_is_used_and_results_match():
    rng = np.random.default_rng(11)
    g = make_values(rng, (256, 1024), "ties")
    x, W = make_values(rng, (256, 700), "normal"), make_values(rng, (1024, 700), "normal")
    old = mp.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            mp.set_num_threads(t)
            idx, val = K.topk_rows(g, 40)
            dx, grad = K.sparse_backward(x, W, idx, val)
            outs.append((idx, val, K.topk_unified(g, 40), K.randk_rows(256, 1024, 40, 5),
                         dx, grad.rows, grad.values))
        for a, b in zip(*outs):
            assert_bit_equal(a, b)
    finally:
        mp.set_num_threads(old)
    assert mp.get_num_threads() == old


# ------------------------------------------------ unified and dense backward

@pytest.mark.parametrize("seed", range(20))
def test_unified_backward_random(seed):
    rng = np.random.default_rng(9000 + seed)
    B, n_out, k = random_shape(rng, 50, 150)
    n_in = int(rng.integers(1, 90))
    x = make_values(rng, (B, n_in), "normal")
    W = make_values(rng, (n_out, n_in), "normal")
    dy = make_values(rng, (B, n_out), ["normal", "zeros", "ties"][seed % 3])
    idx = K.topk_unified(dy, k)
    dx, grad = K.unified_backward(x, W, idx, dy)
    mask = np.zeros((B, n_out), dtype=np.float32)
    mask[:, idx] = 1
    rdx, rdw, absdx, absdw = ref_dense_backward(x, W, dy * mask)
    assert dx.dtype == np.float32 and grad.values.dtype == np.float32
    assert_close_sum(dx, rdx, absdx, k, "unified dx")
    np.testing.assert_array_equal(grad.rows, idx)
    assert_close_sum(grad.values, rdw[idx], absdw[idx], B, "unified dW")
    assert_close_sum(grad.to_dense(n_out), rdw, absdw, B, "unified to_dense")


@pytest.mark.parametrize("seed", range(8))
def test_dense_backward_random(seed):
    rng = np.random.default_rng(seed)
    B, n_in, n_out = (int(v) for v in rng.integers(1, 80, size=3))
    x = make_values(rng, (B, n_in), "normal")
    W = make_values(rng, (n_out, n_in), "normal")
    dy = make_values(rng, (B, n_out), "normal")
    dx, grad = K.dense_backward(x, W, dy)
    rdx, rdw, absdx, absdw = ref_dense_backward(x, W, dy)
    assert grad.dense and grad.rows is None
    assert_close_sum(dx, rdx, absdx, n_out, "dense dx")
    assert_close_sum(grad.to_dense(n_out), rdw, absdw, B, "dense dW")


# ------------------------------------------------------------------ RowGrad

def test_rowgrad_to_dense():
    g = K.RowGrad(np.array([1, 3], dtype=np.int32), np.array([[1, 2], [3, 4]], np.float32))
    assert g.nnz_rows == 2 and not g.dense
    np.testing.assert_array_equal(g.to_dense(4), [[0, 0], [1, 2], [0, 0], [3, 4]])
    assert g.to_dense(4).dtype == np.float32
    with pytest.raises(ValueError, match="n_out"):
        g.to_dense(3)
    with pytest.raises(ValueError, match="n_out"):
        g.to_dense(0)
    with pytest.raises(TypeError, match="n_out"):
        g.to_dense(4.0)
    d = K.RowGrad(None, np.ones((2, 3), np.float32))
    assert d.dense
    out = d.to_dense(2)
    out[0, 0] = 7                           # a copy, not a view
    assert d.values[0, 0] == 1
    with pytest.raises(ValueError, match="n_out"):
        d.to_dense(3)
    with pytest.raises(ValueError, match="values"):
        K.RowGrad(None, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="rows"):
        K.RowGrad(np.array([0], np.int32), np.ones((2, 3), np.float32))


# ------------------------------------- no writes outside the workspace buffers

@pytest.mark.parametrize("B,n_in,n_out,k,nthreads", [(1, 1, 1, 1, 1), (5, 33, 70, 9, 1),
                                                     (256, 1024, 512, 40, 2),
                                                     (300, 77, 513, 513, 2)])
def test_sparse_backward_into_stays_in_workspace(B, n_in, n_out, k, nthreads):
    rng = np.random.default_rng(0)
    x = make_values(rng, (B, n_in), "normal")
    W = make_values(rng, (n_out, n_in), "normal")
    idx = rng.integers(0, n_out, size=(B, k)).astype(np.int32)
    val = make_values(rng, (B, k), "zeros")
    ws = GuardedWorkspace()
    dx, grad = K.sparse_backward_into(x, W, idx, val, ws, nthreads)
    ws.check()
    rdx, rows, _, absdx, _ = ref_sparse_backward(x, W, idx, val)
    assert_close_sum(dx, rdx, absdx, k, "dx")
    np.testing.assert_array_equal(grad.rows, rows)


# --------------------------------------------------- property-based tests

@PROPERTY
@given(st.integers(0, 2 ** 32 - 1))
@example(701)          # repeated indices whose values cancel
def test_property_sparse_backward(seed):
    rng = np.random.default_rng(seed)
    x, W, idx, val = random_backward_case(rng, max_b=20, max_out=60, max_in=40)
    dx1, g1 = check_sparse_backward(x, W, idx, val, threads=1)
    dx2, g2 = K.sparse_backward(x, W, idx, val, threads=2)
    assert_bit_equal(dx1, dx2)
    assert_bit_equal(g1.rows, g2.rows)
    assert_bit_equal(g1.values, g2.values)


# ---------------------------------------------------------------- embedding gradients

def _ref_group_ids(ids, w, stride, off):
    """Distinct ids ascending, and each one's gradient rows in the order of its uses."""
    rows = sorted(set(ids.tolist()))
    uses = {r: [] for r in rows}
    for p, i in enumerate(ids.tolist()):
        uses[i].append((p // w) * stride + off + p % w)
    return rows, uses


@pytest.mark.parametrize("n, n_rows, w, stride, off", [
    (1, 1, 1, 1, 0), (14, 20000, 1, 1, 0), (64, 5, 1, 1, 0), (65, 5, 1, 1, 0),
    (98, 300, 7, 7, 0), (500, 256, 1, 1, 0), (500, 257, 1, 1, 0), (3000, 70000, 18, 48, 0),
    (1200, 40, 12, 48, 36), (2000, 2**31 - 1, 5, 9, 4)])
def test_group_ids_matches_the_reference(n, n_rows, w, stride, off):
    rng = np.random.default_rng(n + n_rows)
    hi = min(n_rows, 3 * n)          # repeats, and ids spread over the table's top byte too
    ids = rng.integers(0, hi, n).astype(np.int32)
    ids[rng.integers(0, n, max(1, n // 10))] = n_rows - 1
    keys = np.empty(2 * n, np.uint64)
    rows, offsets = np.empty(n, np.int32), np.empty(n + 1, np.int32)
    pair_b, pair_v = np.empty(n, np.int32), np.empty(n, np.float32)
    r = mp._core.group_ids(ids, n_rows, w, stride, off, keys, rows, offsets, pair_b, pair_v)
    want_rows, uses = _ref_group_ids(ids, w, stride, off)
    assert rows[:r].tolist() == want_rows
    assert offsets[0] == 0 and offsets[r] == n
    for q, row in enumerate(want_rows):
        assert pair_b[offsets[q]:offsets[q + 1]].tolist() == uses[row]
    assert (pair_v == 1.0).all()


def test_embedding_grad_sums_the_uses_of_each_row():
    rng = np.random.default_rng(3)
    B, width, off, stride, d, n_rows = 30, 7, 5, 12, 4, 40
    ids = rng.integers(0, n_rows, (B, width)).astype(np.int32)
    grads = rng.standard_normal((B * stride, d)).astype(np.float32)
    g = K.embedding_grad(ids.reshape(-1), grads, n_rows, K.Workspace(), "e", w=width,
                         stride=stride, off=off)
    want = np.zeros((n_rows, d))
    np.add.at(want, ids, grads.reshape(B, stride, d)[:, off:off + width].astype(np.float64))
    assert g.rows.tolist() == np.unique(ids).tolist()
    np.testing.assert_allclose(g.to_dense(n_rows), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ids, kw, match", [
    ([0, 5], {}, r"outside \[0, 5\)"), ([-1], {}, r"outside \[0, 5\)"),
    ([0, 1], {"w": 0}, "w=0"), ([0, 1], {"w": 2, "stride": 3, "off": 2}, "off=2"),
    ([0, 1], {"w": 3, "stride": 2}, "stride=2")])
def test_group_ids_refuses_bad_ids_and_layouts(ids, kw, match):
    ids = np.array(ids, np.int32)
    n = ids.shape[0]
    args = dict(w=1, stride=1, off=0)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        mp._core.group_ids(ids, 5, args["w"], args["stride"], args["off"],
                           np.empty(2 * n, np.uint64), np.empty(n, np.int32),
                           np.empty(n + 1, np.int32), np.empty(n, np.int32),
                           np.empty(n, np.float32))
    with pytest.raises(ValueError, match="keys"):
        mp._core.group_ids(np.zeros(3, np.int32), 5, 1, 1, 0, np.empty(5, np.uint64),
                           np.empty(3, np.int32), np.empty(4, np.int32), np.empty(3, np.int32),
                           np.empty(3, np.float32))


@pytest.mark.parametrize("rows, n, status", [
    ([], 4, 0), ([0, 2, 3], 4, 0), ([3], 4, 0),
    ([2, 1], 4, 1), ([1, 1], 4, 1), ([0, 3, 3, 2], 4, 1),
    ([0, 4], 4, 2), ([-1, 2], 4, 2), ([3, 2, 9], 4, 2), ([2**40], 4, 2)])
def test_rows_from_int64_against_reference(rows, n, status):
    r64 = np.array(rows, np.int64)
    out = np.full(len(rows), -7, np.int32)
    ref = 2 if any(v < 0 or v >= n for v in rows) else \
        (1 if any(b <= a for a, b in zip(rows, rows[1:])) else 0)
    assert ref == status
    assert mp._core.rows_from_int64(r64, n, out) == status
    if status != 2:
        assert out.tolist() == rows
    with pytest.raises(ValueError, match="out"):
        mp._core.rows_from_int64(np.arange(3, dtype=np.int64), 4, np.zeros(2, np.int32))
