"""Top-k selection kernels of meprop_cpu.kernels against the naive references
in tests/reference.py: per-row top-k (topk_rows), unified top-k over the batch
(topk_unified), random-k rows (randk_rows) and the masked per-row top-k of the
dense-product backward (_core.topk_mask_rows, _core.mask_columns). Random
shapes (odd sizes, B = 1, k = 1, k = n, ties, zeros, huge / tiny / subnormal
magnitudes), bit-identical results for 1 and N threads, no writes outside the
workspace buffers, and hypothesis properties. Every test runs on the native
and the portable kernels (the `simd_path` fixture)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from meprop_cpu import kernels as K

from kernel_helpers import (KINDS, MIN_WORK, PROPERTY, GuardedWorkspace, assert_bit_equal,
                            guarded_array, make_values, random_shape)
from kernel_helpers import simd_path  # noqa: F401  (autouse: native + portable)
from reference import (ref_abs_colsum, ref_hits, ref_topk_mask, ref_topk_rows,
                       ref_topk_unified)


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


# ------------------------------------- no writes outside the workspace buffers

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


# ---------------------------------------------------- masked top-k rows

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
