"""Tests of the kernels in meprop_cpu.kernels against the naive references in
tests/reference.py: random shapes (odd sizes, B = 1, k = 1, k = n, ties, zeros,
huge / tiny / subnormal magnitudes), bit-identical results for 1 and N threads,
no writes outside the workspace buffers, and argument validation."""
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import meprop_cpu as mp
from meprop_cpu import kernels as K
from meprop_cpu.nn import Linear

from reference import (assert_close_sum, ref_abs_colsum, ref_dense_backward, ref_hits,
                       ref_scatter, ref_sparse_backward, ref_topk_rows, ref_topk_unified)

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


def check_topk_rows(g, k, threads):
    hits0 = np.arange(g.shape[1], dtype=np.int64) % 3     # hits accumulate onto this
    hits = hits0.copy()
    g_before = g.copy()
    idx, val = K.topk_rows(g, k, hits=hits, threads=threads)
    ridx, rval = ref_topk_rows(g, k)
    assert idx.dtype == np.int32 and val.dtype == np.float32
    assert idx.shape == val.shape == (g.shape[0], k)
    np.testing.assert_array_equal(idx, ridx)
    assert_bit_equal(val, rval, "val must be g[b, idx] bit for bit")
    np.testing.assert_array_equal(hits, ref_hits(ridx, rval, g.shape[1], hits0))
    assert_bit_equal(g, g_before, "g must not be modified")
    return idx, val


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


# ------------------------------------------------------------- top-k rows

@pytest.mark.parametrize("seed", range(60))
def test_topk_rows_random(seed):
    rng = np.random.default_rng(seed)
    B, n, k = random_shape(rng)
    g = make_values(rng, (B, n), KINDS[seed % len(KINDS)])
    check_topk_rows(g, k, threads=1 + seed % 2)


@pytest.mark.parametrize("kind", KINDS)
def test_topk_rows_large_parallel(kind):
    """A shape large enough for the parallel path (B n 2 >= parallel_min_work)."""
    rng = np.random.default_rng(1)
    g = make_values(rng, (256, 1029), kind)
    assert 256 * 1029 * 2 >= MIN_WORK
    for k in (1, 40, 1029):
        idx1, val1 = check_topk_rows(g, k, threads=1)
        hits1, hits2 = np.zeros(1029, np.int64), np.zeros(1029, np.int64)
        K.topk_rows(g, k, hits=hits1, threads=1)
        idx2, val2 = K.topk_rows(g, k, hits=hits2, threads=2)
        assert_bit_equal(idx1, idx2)
        assert_bit_equal(val1, val2)
        assert_bit_equal(hits1, hits2)


@pytest.mark.parametrize("n", [64, 100, 257, 500, 1024, 4099])
@pytest.mark.parametrize("kind", KINDS)
def test_topk_rows_lower_bound_regime(n, kind):
    """k <= n/4: the filter starts from the k-th largest block maximum (a
    lower bound on the answer) instead of zero; it must stay exact."""
    rng = np.random.default_rng(n)
    g = make_values(rng, (9, n), kind)
    for k in sorted({1, 2, 5, 17, max(1, n // 8), max(1, n // 4)}):
        check_topk_rows(g, k, threads=1 + (k % 2))


@pytest.mark.parametrize("n", [5, 64, 100, 101, 500, 1000])
@pytest.mark.parametrize("kind", KINDS)
def test_topk_rows_without_lower_bound(n, kind):
    """k > n/4: no useful block-maximum bound, the filter starts from zero and
    cuts its candidate buffer back several times; still exact, per row and
    unified."""
    rng = np.random.default_rng(n + 7)
    g = make_values(rng, (9, n), kind)
    for k in sorted({n // 4 + 1, n // 3 + 1, n // 2, n - 1, n} - {0}):
        check_topk_rows(g, k, threads=1 + (k % 2))
        np.testing.assert_array_equal(K.topk_unified(g, k), ref_topk_unified(g, k))


def test_topk_rows_lower_bound_equals_answer_with_ties():
    """Rows built so that the k-th largest block maximum is the k-th largest
    entry, repeated within and across blocks: every tie must still go to the
    lowest indices, and entries equal to the bound must not be skipped."""
    n, k = 512, 8
    g = np.full((4, n), 0.25, dtype=np.float32)
    g[0, ::16] = 1.0                  # 32 equal maxima, one per lane-block
    g[1, :] = 1.0                     # everything ties
    g[2, 300:] = -1.0                 # ties only late in the row
    g[3, ::37] = np.finfo(np.float32).max   # more than k entries at the top of the range
    for threads in (1, 2):
        check_topk_rows(g, k, threads)
    np.testing.assert_array_equal(K.topk_rows(g, k)[0][3], np.arange(0, 37 * k, 37))
    # column sums that overflow to Inf (more than k of them) rank first, lowest index first
    big = np.zeros((2, n), dtype=np.float32)
    big[:, ::37] = np.finfo(np.float32).max
    np.testing.assert_array_equal(K.topk_unified(big, k), np.arange(0, 37 * k, 37))


def test_topk_rows_tie_breaks_by_lower_index():
    g = np.array([[1, -3, 3, 2, -3, 0, 3]], dtype=np.float32)
    idx, val = K.topk_rows(g, 2)
    np.testing.assert_array_equal(idx, [[1, 2]])
    np.testing.assert_array_equal(val, [[-3, 3]])
    idx, _ = K.topk_rows(g, 4)
    np.testing.assert_array_equal(idx, [[1, 2, 4, 6]])


def test_topk_rows_zero_never_beats_nonzero():
    n = 100
    g = np.zeros((3, n), dtype=np.float32)
    g[0, 97] = 1e-45                  # the smallest subnormal still beats a zero
    g[1, [5, 50, 99]] = [-1e-40, 2.0, -0.0]
    g[2, :] = -0.0                    # only (signed) zeros: the lowest indices
    idx, val = K.topk_rows(g, 3)
    np.testing.assert_array_equal(idx[0], [0, 1, 97])
    np.testing.assert_array_equal(idx[1], [0, 5, 50])
    np.testing.assert_array_equal(idx[2], [0, 1, 2])
    assert np.all(np.signbit(val[2]))   # val is g[b, idx], -0.0 kept


def test_topk_rows_late_winner_after_threshold_settles():
    """A large entry far down a long row, after many blocks were skipped,
    and equal magnitudes spread across blocks."""
    n = 5000
    g = np.full((2, n), 0.5, dtype=np.float32)
    g[0, 4999] = -7.0
    g[0, 17] = 7.0
    g[1, ::97] = 2.0
    idx, _ = K.topk_rows(g, 2)
    np.testing.assert_array_equal(idx[0], [17, 4999])
    np.testing.assert_array_equal(idx[1], [0, 97])
    idx, _ = K.topk_rows(g, 60)
    np.testing.assert_array_equal(idx[1], ref_topk_rows(g[1:], 60)[0][0])


def test_topk_rows_k_equals_n_and_single_entry():
    g = np.array([[0.0, -2.0, 1.0]], dtype=np.float32)
    idx, val = K.topk_rows(g, 3)
    np.testing.assert_array_equal(idx, [[0, 1, 2]])
    assert_bit_equal(val, g)
    idx, val = K.topk_rows(np.array([[-0.0]], dtype=np.float32), 1)
    assert idx.tolist() == [[0]] and np.signbit(val[0, 0])


def test_topk_rows_hits_accumulate_and_skip_zeros():
    g = np.array([[3, 0, -0.0, 1],
                  [0, 2, -0.0, 0],
                  [0, 0, 0, 0]], dtype=np.float32)
    hits = np.zeros(4, dtype=np.int64)
    K.topk_rows(g, 2, hits=hits)
    np.testing.assert_array_equal(hits, [1, 1, 0, 1])
    K.topk_rows(g, 2, hits=hits)
    np.testing.assert_array_equal(hits, [2, 2, 0, 2])
    K.topk_rows(g, 4, hits=hits)       # zeros selected but never counted
    np.testing.assert_array_equal(hits, [3, 3, 0, 3])


def test_topk_rows_hits_untouched_on_error():
    g = np.ones((2, 5), dtype=np.float32)
    g[1, 3] = np.nan
    hits = np.zeros(5, dtype=np.int64)
    with pytest.raises(ValueError, match="g"):
        K.topk_rows(g, 2, hits=hits)
    assert not hits.any()


# ----------------------------------------------------------- unified top-k

@pytest.mark.parametrize("seed", range(40))
def test_topk_unified_random(seed):
    rng = np.random.default_rng(1000 + seed)
    B, n, k = random_shape(rng)
    g = make_values(rng, (B, n), KINDS[seed % len(KINDS)])
    g_before = g.copy()
    idx = K.topk_unified(g, k, threads=1 + seed % 2)
    assert idx.dtype == np.int32 and idx.shape == (k,)
    np.testing.assert_array_equal(idx, ref_topk_unified(g, k))
    assert_bit_equal(g, g_before)


def test_topk_unified_sums_in_float32_b_ascending():
    # column 0: 2**24 + 0 + 0 = 2**24; column 1: 2**24 + 1 + 1 rounds to 2**24 in
    # float32 (b ascending): a tie, so the lower index wins
    g = np.array([[2.0 ** 24, 2.0 ** 24], [0, 1], [0, 1]], dtype=np.float32)
    assert ref_abs_colsum(g)[0] == ref_abs_colsum(g)[1]
    assert K.topk_unified(g, 1).tolist() == [0]
    # with the large entry last, 1 + 1 + 2**24 = 2**24 + 2 exactly: column 1 wins
    g = np.array([[0, 1], [0, 1], [2.0 ** 24, 2.0 ** 24]], dtype=np.float32)
    assert K.topk_unified(g, 1).tolist() == [1]


def test_topk_unified_ties_and_zero_columns():
    g = np.array([[1, -2, 0, 2, 0, 1],
                  [1, 0, 0, 0, -0.0, -1]], dtype=np.float32)
    # sums: 2, 2, 0, 2, 0, 2
    assert K.topk_unified(g, 2).tolist() == [0, 1]
    assert K.topk_unified(g, 5).tolist() == [0, 1, 2, 3, 5]
    assert K.topk_unified(np.zeros((3, 7), np.float32), 3).tolist() == [0, 1, 2]


def test_topk_unified_overflowing_column_sums_rank_first():
    """Finite inputs whose column sums overflow to inf are not an error; inf
    ranks above every finite sum, ties by lower index."""
    g = np.ones((4, 9), dtype=np.float32)
    g[:, 6] = 3e38
    g[:, 2] = -3e38
    g[0, 4] = 3e38
    idx = K.topk_unified(g, 3)
    np.testing.assert_array_equal(idx, ref_topk_unified(g, 3))
    assert idx.tolist() == [2, 4, 6]


@pytest.mark.parametrize("kind", ("normal", "ties", "zeros", "huge"))
def test_topk_unified_large_parallel(kind):
    rng = np.random.default_rng(2)
    g = make_values(rng, (256, 1100), kind)
    assert 256 * 1100 >= MIN_WORK
    for k in (1, 37, 1100):
        i1 = K.topk_unified(g, k, threads=1)
        np.testing.assert_array_equal(i1, ref_topk_unified(g, k))
        for t in (2, 3):
            assert_bit_equal(i1, K.topk_unified(g, k, threads=t))


# ------------------------------------------------------------------ random-k

def check_randk_rows(idx, B, n, k):
    assert idx.dtype == np.int32 and idx.shape == (B, k)
    assert idx.min() >= 0 and idx.max() < n
    assert np.all(np.diff(idx, axis=1) > 0)        # distinct and sorted


@pytest.mark.parametrize("B,n,k", [(1, 1, 1), (1, 5, 5), (3, 10, 1), (7, 33, 17),
                                   (50, 1000, 999), (256, 1024, 40), (64, 4097, 4097)])
def test_randk_rows_valid_and_thread_independent(B, n, k):
    idx = K.randk_rows(B, n, k, seed=123, threads=1)
    check_randk_rows(idx, B, n, k)
    if k == n:
        np.testing.assert_array_equal(idx, np.tile(np.arange(n), (B, 1)))
    for t in (2, 3, 8):
        assert_bit_equal(idx, K.randk_rows(B, n, k, seed=123, threads=t))
    assert_bit_equal(idx, K.randk_rows(B, n, k, 123))


def test_randk_rows_seeds_and_rows_differ():
    seeds = [0, 1, 2, 12345, 2 ** 63, 2 ** 64 - 1]
    outs = [K.randk_rows(20, 1000, 10, s) for s in seeds]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not np.array_equal(outs[i], outs[j]), (seeds[i], seeds[j])
    rows = {tuple(r) for r in outs[0]}
    assert len(rows) == 20                 # rows are not copies of one another


def test_randk_rows_row_depends_only_on_seed_and_row():
    a = K.randk_rows(10, 300, 7, 99)
    b = K.randk_rows(40, 300, 7, 99, threads=2)
    np.testing.assert_array_equal(a, b[:10])


def test_randk_rows_marginals_uniform():
    B, n, k = 20000, 50, 5
    idx = K.randk_rows(B, n, k, seed=7, threads=2)
    counts = np.bincount(idx.ravel(), minlength=n)
    expected = B * k / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 200, chi2                # 49 degrees of freedom: mean 49, sd ~10


def test_randk_rows_subsets_uniform():
    """Every 2-subset of range(5) about equally often (not just the marginals)."""
    B = 20000
    idx = K.randk_rows(B, 5, 2, seed=2024)
    codes = idx[:, 0] * 5 + idx[:, 1]
    counts = np.array([np.count_nonzero(codes == a * 5 + b)
                       for a in range(5) for b in range(a + 1, 5)])
    expected = B / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 80, (chi2, counts)       # 9 degrees of freedom


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


def test_linear_backward_uses_the_masked_form_above_a_quarter():
    rng = np.random.default_rng(0)
    x = make_values(rng, (8, 30), "normal")
    for k, factored in ((10, True), (11, False)):       # n_out = 40: the rule is 4 k > 40
        lin = Linear(30, 40, k=k, mode="topk", seed=1)
        lin.track_hits = True
        lin.forward(x)
        dy = make_values(rng, (8, 40), "zeros")
        dx = lin.backward(dy)
        assert lin.W.grad.factored is factored and dx.shape == (8, 30)
        # either form: the gradient and the meSimp counts of the selected pairs
        idx, val = ref_topk_rows(dy, k)
        np.testing.assert_array_equal(lin.hits, ref_hits(idx, val, 40))
        assert lin.seen == 8
        rdx, rows, rvalues, absdx, absvalues = ref_sparse_backward(x, lin.W.data, idx, val)
        np.testing.assert_array_equal(lin.W.grad.rows, rows)
        assert_close_sum(lin.W.grad.values, rvalues, absvalues, 8, "dW values")
        assert_close_sum(dx, rdx, absdx, k, "dx")


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


@pytest.mark.parametrize("B,n,k", [(2, 10, 2), (3, 40, 1), (2, 300, 5), (300, 20, 3),
                                   (2, 600, 200)])
def test_topk_unified_overflowing_sums_stay_in_idx(B, n, k):
    """More than k column sums overflow to inf (valid, finite input): the
    result is the first k of them, and nothing is written past idx (k,)."""
    g = np.full((B, n), 3e38, dtype=np.float32)
    g[:, 0] = 1.0                          # one finite column
    want = np.arange(1, k + 1, dtype=np.int32)
    idx, check = guarded_array((k,), np.int32)
    assert K.topk_unified_into(g, k, idx, K.Workspace(), 1) == 0
    check()
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_array_equal(K.topk_unified(g, k), want)


@pytest.mark.parametrize("nthreads", [1, 2])
def test_topk_rows_with_inf_reports_and_stays_in_idx(nthreads):
    """Rows holding more than k infinities are reported (non-zero count) without
    writing past the idx / val outputs."""
    B, n, k = 3, 50, 2
    g = np.ones((B, n), dtype=np.float32)
    g[B - 1, :] = np.inf
    idx, check_idx = guarded_array((B, k), np.int32)
    val, check_val = guarded_array((B, k), np.float32)
    assert K.topk_rows_into(g, k, idx, val, GuardedWorkspace(), nthreads) > 0
    check_idx()
    check_val()


@pytest.mark.parametrize("B,n,k,nthreads", [(1, 1, 1, 1), (4, 1000, 3, 1), (3, 200, 50, 1),
                                            (256, 1024, 40, 2), (256, 1024, 1, 2),
                                            (64, 4096, 8, 2)])
def test_topk_rows_into_stays_in_workspace(B, n, k, nthreads):
    g = make_values(np.random.default_rng(0), (B, n), "normal")
    idx = np.empty((B, k), np.int32)
    val = np.empty((B, k), np.float32)
    ws = GuardedWorkspace()
    assert K.topk_rows_into(g, k, idx, val, ws, nthreads) == 0
    ws.check()
    np.testing.assert_array_equal(idx, ref_topk_rows(g, k)[0])


@pytest.mark.parametrize("B,n,k,nthreads", [(1, 1, 1, 1), (4, 1000, 3, 1), (256, 1024, 40, 2),
                                            (8, 5000, 2, 2)])
def test_topk_unified_into_stays_in_workspace(B, n, k, nthreads):
    g = make_values(np.random.default_rng(0), (B, n), "normal")
    idx = np.empty((k,), np.int32)
    ws = GuardedWorkspace()
    assert K.topk_unified_into(g, k, idx, ws, nthreads) == 0
    ws.check()
    np.testing.assert_array_equal(idx, ref_topk_unified(g, k))


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

@st.composite
def selection_case(draw, max_b=24, max_n=90):
    B = draw(st.integers(1, max_b))
    n = draw(st.integers(1, max_n))
    k = draw(st.one_of(st.just(1), st.just(n), st.integers(1, n)))
    kind = draw(st.sampled_from(KINDS))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return make_values(np.random.default_rng(seed), (B, n), kind), k, draw(st.sampled_from([1, 2]))


finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)


@PROPERTY
@given(selection_case())
def test_property_topk_rows(case):
    g, k, threads = case
    check_topk_rows(g, k, threads)


@PROPERTY
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
                  elements=finite_f32), st.data())
def test_property_topk_rows_arbitrary_floats(g, data):
    k = data.draw(st.integers(1, g.shape[1]))
    check_topk_rows(np.ascontiguousarray(g), k, threads=data.draw(st.sampled_from([1, 2])))


@PROPERTY
@given(selection_case())
def test_property_topk_unified(case):
    g, k, threads = case
    idx = K.topk_unified(g, k, threads=threads)
    np.testing.assert_array_equal(idx, ref_topk_unified(g, k))


@PROPERTY
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=30),
                  elements=finite_f32), st.data())
def test_property_topk_unified_arbitrary_floats(g, data):
    k = data.draw(st.integers(1, g.shape[1]))
    g = np.ascontiguousarray(g)
    np.testing.assert_array_equal(K.topk_unified(g, k), ref_topk_unified(g, k))


@PROPERTY
@given(st.integers(1, 40), st.integers(1, 300), st.data(), st.integers(0, 2 ** 64 - 1))
def test_property_randk_rows(B, n, data, seed):
    k = data.draw(st.integers(1, n))
    idx = K.randk_rows(B, n, k, seed, threads=1)
    check_randk_rows(idx, B, n, k)
    assert_bit_equal(idx, K.randk_rows(B, n, k, seed, threads=2))


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


# ---------------------------------------------------- masked top-k rows

def ref_topk_mask(g, k):
    """The masked form of the per-row top-k: g on the selected non-zero entries,
    +0.0 everywhere else."""
    ridx, rval = ref_topk_rows(g, k)
    out = np.zeros(g.shape, dtype=np.float32)
    for b in range(g.shape[0]):
        for j, v in zip(ridx[b], rval[b]):
            if v != 0:
                out[b, j] = v
    return out


def mask_ws(n, threads):
    return np.zeros(threads * K._core.thread_stride(K._core.topk_mask_ws_floats(n)),
                    np.float32)


def check_topk_mask_rows(g, k, threads):
    B, n = g.shape
    g_before = g.copy()
    out = np.full((B, n), np.nan, dtype=np.float32)
    assert K._core.topk_mask_rows(g, k, out, mask_ws(n, threads), threads) == 0
    want = ref_topk_mask(g, k)
    assert_bit_equal(out, want, "masked top-k")
    assert_bit_equal(g, g_before, "g must not be modified")
    cnt = np.full(n, -1, np.int32)
    rows = np.full(n, -1, np.int32)
    r = K._core.mask_columns(out, cnt, rows)
    np.testing.assert_array_equal(cnt, np.count_nonzero(want, axis=0))
    np.testing.assert_array_equal(rows[:r], np.flatnonzero(np.any(want != 0, axis=0)))
    ridx, rval = ref_topk_rows(g, k)
    np.testing.assert_array_equal(cnt, ref_hits(ridx, rval, n))
    return out


@pytest.mark.parametrize("n", [1, 5, 64, 100, 101, 313, 474, 1000])
@pytest.mark.parametrize("kind", KINDS)
def test_topk_mask_rows_matches_the_reference(n, kind):
    """The masked top-k of the dense-product backward (k > n/4) keeps exactly the
    non-zero entries the per-row top-k selects, bit for bit: rows with fewer
    than k non-zeros, ties at the k-th magnitude, and more than 100 candidates
    (the radix select) included."""
    rng = np.random.default_rng(n + 11)
    g = make_values(rng, (9, n), kind)
    for k in sorted({1, n // 4 + 1, n // 3 + 1, n // 2, n - 1, n} - {0}):
        check_topk_mask_rows(g, k, threads=1 + (k % 2))


@pytest.mark.parametrize("values", [
    [3.0],                                   # every entry equal: the answer is a tie
    [1.0, 2.0],                              # two values, many ties at the k-th
    [1.0, 1.0000001],                        # adjacent floats
    [1e-45, 1.0, 3e38],                      # the whole finite range in one row
    [1e-40, 2e-40, 3e-40],                   # subnormals only
])
@pytest.mark.parametrize("n,k", [(300, 101), (300, 150), (500, 160), (1000, 999)])
def test_topk_mask_rows_and_topk_rows_on_degenerate_value_sets(values, n, k):
    """Rows with far more than 100 non-zero candidates drawn from a handful of
    magnitudes: the radix select must find the k-th even when its buckets
    cannot split the values, and the ties go to the lowest indices."""
    rng = np.random.default_rng(len(values) + n)
    g = (rng.choice(np.array(values, np.float32), size=(4, n))
         * rng.choice(np.array([-1, 1], np.float32), size=(4, n)))
    g = np.ascontiguousarray(g, dtype=np.float32)
    check_topk_mask_rows(g, k, threads=1)
    check_topk_rows(g, k, threads=1)


@pytest.mark.parametrize("kind", KINDS)
def test_topk_mask_rows_large_parallel_is_thread_independent(kind):
    rng = np.random.default_rng(5)
    g = make_values(rng, (256, 1029), kind)
    assert 256 * 1029 * 8 >= MIN_WORK
    out1 = check_topk_mask_rows(g, 400, threads=1)
    out2 = check_topk_mask_rows(g, 400, threads=2)
    assert_bit_equal(out1, out2)


@pytest.mark.parametrize("threads", [1, 2])
def test_topk_mask_rows_counts_non_finite_like_topk_rows(threads):
    rng = np.random.default_rng(2)
    g = make_values(rng, (40, 300), "normal")
    g[3, 7] = np.nan
    g[3, 9] = np.inf
    g[20, 0] = -np.inf
    idx = np.empty((40, 200), np.int32)
    val = np.empty((40, 200), np.float32)
    assert K.topk_rows_into(g, 200, idx, val, K.Workspace(), threads) == 3
    out = np.empty_like(g)
    assert K._core.topk_mask_rows(g, 200, out, mask_ws(300, threads), threads) == 3


def test_topk_mask_rows_checks_its_buffers():
    g = np.ones((4, 50), np.float32)
    out = np.empty((4, 50), np.float32)
    with pytest.raises(ValueError, match="ws"):
        K._core.topk_mask_rows(g, 20, out, mask_ws(50, 1)[:100 - 1], 1)
    with pytest.raises(ValueError, match="out"):
        K._core.topk_mask_rows(g, 20, np.empty((4, 49), np.float32), mask_ws(50, 1), 1)
    with pytest.raises(ValueError, match="cnt"):
        K._core.mask_columns(out, np.empty(49, np.int32), np.empty(50, np.int32))
    for k in (0, 51):
        with pytest.raises(ValueError, match="k"):
            K._core.topk_mask_rows(g, k, out, mask_ws(50, 1), 1)
    with pytest.raises(ValueError, match="shape"):
        K._core.topk_mask_rows(np.ones((0, 50), np.float32), 20,
                                  np.empty((0, 50), np.float32), mask_ws(50, 1), 1)


@PROPERTY
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
                  elements=finite_f32), st.data())
def test_property_topk_mask_rows_arbitrary_floats(g, data):
    k = data.draw(st.integers(1, g.shape[1]))
    check_topk_mask_rows(np.ascontiguousarray(g), k, threads=data.draw(st.sampled_from([1, 2])))


# ------------------------------------------------------------------ bad input

G = np.ones((4, 6), dtype=np.float32)
X = np.ones((3, 5), dtype=np.float32)
W_ = np.ones((7, 5), dtype=np.float32)
IDX = np.zeros((3, 2), dtype=np.int32)
VAL = np.ones((3, 2), dtype=np.float32)
DY = np.ones((3, 7), dtype=np.float32)
UIDX = np.array([1, 4], dtype=np.int32)


def _with(a, pos, v):
    a = a.copy()
    a[pos] = v
    return a


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


HITS = np.zeros(6, dtype=np.int64)

BAD_CALLS = {
    # topk_rows: g
    "topk g float64": (lambda: K.topk_rows(G.astype(np.float64), 2), TypeError, r"\bg\b"),
    "topk g int32": (lambda: K.topk_rows(G.astype(np.int32), 2), TypeError, r"\bg\b"),
    "topk g object": (lambda: K.topk_rows(G.astype(object), 2), TypeError, r"\bg\b"),
    "topk g list": (lambda: K.topk_rows(G.tolist(), 2), TypeError, r"\bg\b"),
    "topk g 1-D": (lambda: K.topk_rows(G[0].copy(), 2), ValueError, r"\bg\b"),
    "topk g 3-D": (lambda: K.topk_rows(G.reshape(2, 2, 6), 2), ValueError, r"\bg\b"),
    "topk g strided": (lambda: K.topk_rows(G[:, ::2], 2), ValueError, r"\bg\b"),
    "topk g fortran": (lambda: K.topk_rows(np.asfortranarray(G), 2), ValueError, r"\bg\b"),
    "topk g empty rows": (lambda: K.topk_rows(np.ones((0, 6), np.float32), 1), ValueError, r"\bg\b"),
    "topk g empty cols": (lambda: K.topk_rows(np.ones((4, 0), np.float32), 1), ValueError, r"\bg\b"),
    "topk g nan": (lambda: K.topk_rows(_with(G, (2, 3), np.nan), 2), ValueError, r"\bg\b"),
    "topk g inf": (lambda: K.topk_rows(_with(G, (0, 0), np.inf), 2), ValueError, r"\bg\b"),
    "topk g -inf": (lambda: K.topk_rows(_with(G, (3, 5), -np.inf), 6), ValueError, r"\bg\b"),
    # topk_rows: k
    "topk k 0": (lambda: K.topk_rows(G, 0), ValueError, r"\bk\b"),
    "topk k -1": (lambda: K.topk_rows(G, -1), ValueError, r"\bk\b"),
    "topk k > n": (lambda: K.topk_rows(G, 7), ValueError, r"\bk\b"),
    "topk k 2.5": (lambda: K.topk_rows(G, 2.5), TypeError, r"\bk\b"),
    "topk k True": (lambda: K.topk_rows(G, True), TypeError, r"\bk\b"),
    "topk k str": (lambda: K.topk_rows(G, "2"), TypeError, r"\bk\b"),
    "topk k None": (lambda: K.topk_rows(G, None), TypeError, r"\bk\b"),
    # topk_rows: hits
    "topk hits read-only": (lambda: K.topk_rows(G, 2, hits=_readonly(HITS)), ValueError, "hits"),
    "topk hits float": (lambda: K.topk_rows(G, 2, hits=np.zeros(6)), TypeError, "hits"),
    "topk hits int32": (lambda: K.topk_rows(G, 2, hits=np.zeros(6, np.int32)), TypeError, "hits"),
    "topk hits length": (lambda: K.topk_rows(G, 2, hits=np.zeros(5, np.int64)), ValueError, "hits"),
    "topk hits 2-D": (lambda: K.topk_rows(G, 2, hits=np.zeros((1, 6), np.int64)), ValueError, "hits"),
    "topk hits strided": (lambda: K.topk_rows(G, 2, hits=np.zeros(12, np.int64)[::2]),
                          ValueError, "hits"),
    "topk hits list": (lambda: K.topk_rows(G, 2, hits=[0] * 6), TypeError, "hits"),
    # threads
    "topk threads 0": (lambda: K.topk_rows(G, 2, threads=0), ValueError, "threads"),
    "topk threads -1": (lambda: K.topk_rows(G, 2, threads=-1), ValueError, "threads"),
    "topk threads 1.5": (lambda: K.topk_rows(G, 2, threads=1.5), TypeError, "threads"),
    "topk threads str": (lambda: K.topk_rows(G, 2, threads="2"), TypeError, "threads"),
    "topk threads True": (lambda: K.topk_rows(G, 2, threads=True), TypeError, "threads"),
    # topk_unified
    "unified g float64": (lambda: K.topk_unified(G.astype(np.float64), 2), TypeError, r"\bg\b"),
    "unified g int32": (lambda: K.topk_unified(G.astype(np.int32), 2), TypeError, r"\bg\b"),
    "unified g object": (lambda: K.topk_unified(G.astype(object), 2), TypeError, r"\bg\b"),
    "unified g 1-D": (lambda: K.topk_unified(G[0].copy(), 2), ValueError, r"\bg\b"),
    "unified g strided": (lambda: K.topk_unified(G[:, ::2], 2), ValueError, r"\bg\b"),
    "unified g empty": (lambda: K.topk_unified(np.ones((0, 6), np.float32), 1), ValueError, r"\bg\b"),
    "unified g nan": (lambda: K.topk_unified(_with(G, (1, 1), np.nan), 2), ValueError, r"\bg\b"),
    "unified g inf": (lambda: K.topk_unified(_with(G, (3, 5), np.inf), 2), ValueError, r"\bg\b"),
    "unified g -inf": (lambda: K.topk_unified(_with(G, (0, 2), -np.inf), 2), ValueError, r"\bg\b"),
    "unified k 0": (lambda: K.topk_unified(G, 0), ValueError, r"\bk\b"),
    "unified k -3": (lambda: K.topk_unified(G, -3), ValueError, r"\bk\b"),
    "unified k > n": (lambda: K.topk_unified(G, 7), ValueError, r"\bk\b"),
    "unified k 2.5": (lambda: K.topk_unified(G, 2.5), TypeError, r"\bk\b"),
    "unified k True": (lambda: K.topk_unified(G, True), TypeError, r"\bk\b"),
    "unified threads 0": (lambda: K.topk_unified(G, 2, threads=0), ValueError, "threads"),
    "unified threads -1": (lambda: K.topk_unified(G, 2, threads=-1), ValueError, "threads"),
    # randk_rows
    "randk B 0": (lambda: K.randk_rows(0, 5, 2, 0), ValueError, r"\bB\b"),
    "randk B 2.0": (lambda: K.randk_rows(2.0, 5, 2, 0), TypeError, r"\bB\b"),
    "randk n 0": (lambda: K.randk_rows(2, 0, 1, 0), ValueError, r"\bn\b"),
    "randk n -5": (lambda: K.randk_rows(2, -5, 1, 0), ValueError, r"\bn\b"),
    "randk k 0": (lambda: K.randk_rows(2, 5, 0, 0), ValueError, r"\bk\b"),
    "randk k -1": (lambda: K.randk_rows(2, 5, -1, 0), ValueError, r"\bk\b"),
    "randk k > n": (lambda: K.randk_rows(2, 5, 6, 0), ValueError, r"\bk\b"),
    "randk k 2.5": (lambda: K.randk_rows(2, 5, 2.5, 0), TypeError, r"\bk\b"),
    "randk k True": (lambda: K.randk_rows(2, 5, True, 0), TypeError, r"\bk\b"),
    "randk seed -1": (lambda: K.randk_rows(2, 5, 2, -1), ValueError, "seed"),
    "randk seed 2**64": (lambda: K.randk_rows(2, 5, 2, 2 ** 64), ValueError, "seed"),
    "randk seed 1.0": (lambda: K.randk_rows(2, 5, 2, 1.0), TypeError, "seed"),
    "randk threads 0": (lambda: K.randk_rows(2, 5, 2, 0, threads=0), ValueError, "threads"),
    "randk threads -1": (lambda: K.randk_rows(2, 5, 2, 0, threads=-1), ValueError, "threads"),
    # sparse_backward
    "sparse x float64": (lambda: K.sparse_backward(X.astype(np.float64), W_, IDX, VAL),
                         TypeError, r"\bx\b"),
    "sparse x object": (lambda: K.sparse_backward(X.astype(object), W_, IDX, VAL),
                        TypeError, r"\bx\b"),
    "sparse W int32": (lambda: K.sparse_backward(X, W_.astype(np.int32), IDX, VAL),
                       TypeError, r"\bW\b"),
    "sparse idx int64": (lambda: K.sparse_backward(X, W_, IDX.astype(np.int64), VAL),
                         TypeError, "idx"),
    "sparse idx float32": (lambda: K.sparse_backward(X, W_, IDX.astype(np.float32), VAL),
                           TypeError, "idx"),
    "sparse val float64": (lambda: K.sparse_backward(X, W_, IDX, VAL.astype(np.float64)),
                           TypeError, "val"),
    "sparse x 1-D": (lambda: K.sparse_backward(X[0].copy(), W_, IDX, VAL), ValueError, r"\bx\b"),
    "sparse idx 1-D": (lambda: K.sparse_backward(X, W_, IDX[0].copy(), VAL), ValueError, "idx"),
    "sparse x strided": (lambda: K.sparse_backward(np.ones((3, 10), np.float32)[:, ::2], W_,
                                                   IDX, VAL), ValueError, r"\bx\b"),
    "sparse W strided": (lambda: K.sparse_backward(X, np.ones((14, 5), np.float32)[::2],
                                                   IDX, VAL), ValueError, r"\bW\b"),
    "sparse W shape": (lambda: K.sparse_backward(X, np.ones((7, 4), np.float32), IDX, VAL),
                       ValueError, r"\bW\b"),
    "sparse idx rows": (lambda: K.sparse_backward(X, W_, np.zeros((2, 2), np.int32), VAL[:2]),
                        ValueError, "idx"),
    "sparse val shape": (lambda: K.sparse_backward(X, W_, IDX, np.ones((3, 3), np.float32)),
                         ValueError, "val"),
    "sparse idx -1": (lambda: K.sparse_backward(X, W_, _with(IDX, (1, 1), -1), VAL),
                      ValueError, "idx"),
    "sparse idx n_out": (lambda: K.sparse_backward(X, W_, _with(IDX, (2, 0), 7), VAL),
                         ValueError, "idx"),
    "sparse x empty": (lambda: K.sparse_backward(np.ones((0, 5), np.float32), W_,
                                                 np.zeros((0, 2), np.int32),
                                                 np.ones((0, 2), np.float32)), ValueError, r"\bx\b"),
    "sparse idx empty": (lambda: K.sparse_backward(X, W_, np.zeros((3, 0), np.int32),
                                                   np.ones((3, 0), np.float32)), ValueError, "idx"),
    "sparse threads 0": (lambda: K.sparse_backward(X, W_, IDX, VAL, threads=0),
                         ValueError, "threads"),
    "sparse threads -1": (lambda: K.sparse_backward(X, W_, IDX, VAL, threads=-1),
                          ValueError, "threads"),
    "sparse threads 2.0": (lambda: K.sparse_backward(X, W_, IDX, VAL, threads=2.0),
                           TypeError, "threads"),
    # unified_backward
    "ubw x float64": (lambda: K.unified_backward(X.astype(np.float64), W_, UIDX, DY),
                      TypeError, r"\bx\b"),
    "ubw idx int64": (lambda: K.unified_backward(X, W_, UIDX.astype(np.int64), DY),
                      TypeError, "idx"),
    "ubw idx 2-D": (lambda: K.unified_backward(X, W_, UIDX.reshape(1, 2), DY), ValueError, "idx"),
    "ubw idx unsorted": (lambda: K.unified_backward(X, W_, UIDX[::-1].copy(), DY),
                         ValueError, "idx"),
    "ubw idx repeated": (lambda: K.unified_backward(X, W_, np.array([2, 2], np.int32), DY),
                         ValueError, "idx"),
    "ubw idx range": (lambda: K.unified_backward(X, W_, np.array([1, 7], np.int32), DY),
                      ValueError, "idx"),
    "ubw idx negative": (lambda: K.unified_backward(X, W_, np.array([-1, 2], np.int32), DY),
                         ValueError, "idx"),
    "ubw dy shape": (lambda: K.unified_backward(X, W_, UIDX, DY[:, :6].copy()), ValueError, "dy"),
    "ubw dy strided": (lambda: K.unified_backward(X, W_, UIDX, np.ones((3, 14), np.float32)[:, ::2]),
                       ValueError, "dy"),
    "ubw W shape": (lambda: K.unified_backward(X, np.ones((7, 6), np.float32), UIDX, DY),
                    ValueError, r"\bW\b"),
    # dense_backward
    "dbw dy float64": (lambda: K.dense_backward(X, W_, DY.astype(np.float64)), TypeError, "dy"),
    "dbw x int32": (lambda: K.dense_backward(X.astype(np.int32), W_, DY), TypeError, r"\bx\b"),
    "dbw dy shape": (lambda: K.dense_backward(X, W_, DY[:2].copy()), ValueError, "dy"),
    "dbw W strided": (lambda: K.dense_backward(X, np.ones((7, 10), np.float32)[:, ::2], DY),
                      ValueError, r"\bW\b"),
    # set_num_threads
    "set_num_threads 0": (lambda: mp.set_num_threads(0), ValueError, r"\bn\b"),
    "set_num_threads -2": (lambda: mp.set_num_threads(-2), ValueError, r"\bn\b"),
    "set_num_threads str": (lambda: mp.set_num_threads("2"), TypeError, r"\bn\b"),
    "set_num_threads 2.0": (lambda: mp.set_num_threads(2.0), TypeError, r"\bn\b"),
    "set_num_threads True": (lambda: mp.set_num_threads(True), TypeError, r"\bn\b"),
    "set_num_threads None": (lambda: mp.set_num_threads(None), TypeError, r"\bn\b"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises_naming_the_argument(name):
    call, exc, match = BAD_CALLS[name]
    before = mp.get_num_threads()
    with pytest.raises(exc, match=match):
        call()
    assert mp.get_num_threads() == before


@pytest.mark.parametrize("where", [0, 15, 16, 17, 999, 1000, 1036])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_found_anywhere(where, bad):
    """NaN / Inf are found in any block, also in blocks the threshold would skip
    and in the tail of a row whose length is not a multiple of 16."""
    rng = np.random.default_rng(where)
    g = make_values(rng, (3, 1037), "normal")
    g[:, 0] = 100.0                        # settles the threshold early
    g[2, where] = bad
    with pytest.raises(ValueError, match=r"\bg\b"):
        K.topk_rows(g, 2)
    with pytest.raises(ValueError, match=r"\bg\b"):
        K.topk_rows(g, 2, threads=2)
    with pytest.raises(ValueError, match=r"\bg\b"):
        K.topk_unified(g, 2)
    with pytest.raises(ValueError, match=r"\bg\b"):
        K.topk_unified(g, 1037, threads=2)


def test_non_finite_in_large_parallel_input():
    g = make_values(np.random.default_rng(0), (256, 1024), "normal")
    g[200, 1023] = np.nan
    for t in (1, 2):
        with pytest.raises(ValueError, match=r"\bg\b"):
            K.topk_rows(g, 40, threads=t)
        with pytest.raises(ValueError, match=r"\bg\b"):
            K.topk_unified(g, 40, threads=t)


def test_numpy_integer_arguments_accepted():
    idx, _ = K.topk_rows(G, np.int64(2), threads=np.int32(2))
    assert idx.shape == (4, 2)
    assert K.topk_unified(G, np.int32(3)).shape == (3,)
    assert K.randk_rows(np.int64(2), np.int64(5), np.int16(2), np.uint64(7)).shape == (2, 2)


def test_per_thread_scratch_is_padded_and_checked():
    """Each thread's slice of a scratch buffer starts >= 64 bytes past the end
    of the previous one (no false sharing); the raw wrappers refuse a buffer
    sized without the padding instead of writing past its end."""
    from meprop_cpu import _core
    for n in (1, 15, 16, 17, 20, 784):
        s = _core.thread_stride(n)
        assert s % 16 == 0 and s >= n + 16
    rng = np.random.default_rng(0)
    W = make_values(rng, (50, 30), "normal")
    g = make_values(rng, (8, 50), "normal")
    idx, val = K.topk_rows(g, 5)
    dx = np.empty((8, 30), np.float32)
    short = np.empty(2 * 5, np.int32)
    with pytest.raises(ValueError, match="sel_ws has 10 entries"):
        _core.sparse_dx(W, idx, val, dx, short, np.empty(2 * 5, np.float32), 2)
    st = _core.thread_stride(5)
    with pytest.raises(ValueError, match="coef_ws"):
        _core.sparse_dx(W, idx, val, dx, np.empty(2 * st, np.int32),
                           np.empty(2 * 5, np.float32), 2)
    _core.sparse_dx(W, idx, val, dx, np.empty(2 * st, np.int32),
                       np.empty(2 * st, np.float32), 2)
    with pytest.raises(ValueError, match="topk_ws"):
        _core.topk_rows(g, 5, idx, val, np.empty(_core.topk_ws_entries(5), np.int64), 2)
    w = np.zeros((50, 30), np.float32)
    rows = np.array([1, 4], np.int32)
    offsets = np.array([0, 1, 2], np.int32)
    with pytest.raises(ValueError, match="gbuf"):
        _core.optim_rows_factored(0, w, None, None, rows, 2, dx, offsets,
                                     np.array([0, 1], np.int32), np.ones(2, np.float32),
                                     np.empty(2 * 30, np.float32), 0.1, 0.0, 0.0, 0.0, 0.0,
                                     0.0, 0.0, 0.0, 0.0, 2)
