"""Bad input to the kernels of meprop_cpu.kernels (and set_num_threads): the
BAD_CALLS table (dtype, rank, contiguity, empty, k, threads, NaN/Inf,
indices; every row must raise the given exception with a message naming the
argument and leave the thread count alone), NaN / Inf found anywhere in a
row, numpy integers accepted as integers, and the raw _core wrappers
refusing scratch buffers sized without the per-thread padding. The library's
wider bad-input table is tests/test_errors.py (docs/errors.md). Every test
runs on the native and the portable kernels."""
import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import kernels as K

from kernel_helpers import make_values
from kernel_helpers import simd_path  # noqa: F401  (autouse: native + portable)


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


def test_group_pairs_refuses_a_row_outside_the_layer():
    """Indices that come from elsewhere (another rank, a caller's buffer) are
    checked by the grouping itself: a ValueError, not a write past the buffers."""
    B, k, n_out = 4, 3, 8
    idx = np.zeros((B, k), np.int32)
    val = np.ones((B, k), np.float32)
    ws = K.Workspace()
    for bad in (n_out, -1, 2**30):
        idx[2, 1] = bad
        with pytest.raises(ValueError, match="outside"):
            K.group_pairs_into(n_out, idx, val, ws)
    val[2, 1] = 0.0   # a zero pair is skipped, whatever its index
    r, rows, *_ = K.group_pairs_into(n_out, idx, val, ws)
    assert r == 1 and rows[0] == 0
