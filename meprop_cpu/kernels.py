"""The public, validated face of the C kernels.

Every function checks its arguments (type, dtype, rank, shape, contiguity,
ranges, finiteness where values are selected) and raises ``TypeError`` or
``ValueError`` naming the argument *before* any kernel runs. Arrays must be
C-contiguous float32 (indices int32); non-contiguous input is refused rather
than silently copied, so no hidden copy lands on a hot path - pass
``np.ascontiguousarray(a, dtype=np.float32)`` if needed.

Hot callers (the layers in :mod:`meprop_cpu.nn`) validate once and then use the
``*_into`` variants with a :class:`Workspace`, which allocate nothing per call.
"""
import numbers

import numpy as np

from . import _core
from ._config import get_num_threads

__all__ = ["RowGrad", "Workspace", "topk_rows", "topk_unified", "randk_rows",
           "sparse_backward", "unified_backward", "dense_backward"]


class RowGrad:
    """A row-sparse weight gradient: ``values[q]`` is the gradient of row ``rows[q]``.

    ``rows`` is int32 (r,), strictly ascending; ``values`` float32 (r, n_in).
    ``rows is None`` marks a dense gradient (``values`` holds every row).
    Rows absent from ``rows`` have an exactly zero gradient.

    The per-example meProp backward hands out a *factored* RowGrad: it keeps
    the selected (example, value) pairs of every row and the layer input x,
    and forms ``values`` only when first read. The optimizers apply such a
    gradient directly (each row is summed into a small buffer and applied at
    once, so the (r, n_in) block never goes to memory); reading ``values``
    first gives bit-identical results. Like the eager form, it lives in the
    layer's workspace: valid until the layer's next backward, with the
    layer's input left unchanged.
    """

    __slots__ = ("rows", "_values", "_factors", "_n_in")

    def __init__(self, rows, values):
        values = np.asarray(values)
        if values.ndim != 2:
            raise ValueError(f"RowGrad: values must be 2-D (r, n_in), got shape {values.shape}")
        if rows is not None:
            rows = np.asarray(rows)
            if rows.ndim != 1 or rows.shape[0] != values.shape[0]:
                raise ValueError(f"RowGrad: rows must be 1-D with one entry per row of values "
                                 f"({values.shape[0]}), got shape {rows.shape}")
        self.rows = rows
        self._values = values
        self._factors = None
        self._n_in = values.shape[1]

    @classmethod
    def _factored(cls, rows, x, offsets, pair_b, pair_v, out):
        """Internal: the gradient of rows[q] = sum over p in offsets[q]:offsets[q+1] of
        pair_v[p] * x[pair_b[p]]; ``out`` (r, n_in) receives it when first read."""
        g = cls.__new__(cls)
        g.rows = rows
        g._values = None
        g._factors = (x, offsets, pair_b, pair_v, out)
        g._n_in = x.shape[1]
        return g

    @property
    def values(self):
        if self._values is None:
            x, offsets, pair_b, pair_v, out = self._factors
            _core.sparse_dw(x, self.rows.shape[0], offsets, pair_b, pair_v, out,
                               get_num_threads())
            self._values, self._factors = out, None
        return self._values

    @values.setter
    def values(self, v):
        self._values, self._factors = v, None

    @property
    def factored(self):
        """True while the values are not formed yet (see the class docstring)."""
        return self._factors is not None

    @property
    def dense(self):
        return self.rows is None

    @property
    def nnz_rows(self):
        return self.rows.shape[0] if self.rows is not None else self._values.shape[0]

    def to_dense(self, n_out):
        """The full (n_out, n_in) gradient as a new float32 array."""
        n_out = _check_int(n_out, "n_out", 1)
        if self.rows is None:
            if self.values.shape[0] != n_out:
                raise ValueError(f"RowGrad.to_dense: dense gradient has {self.values.shape[0]} "
                                 f"rows, n_out={n_out}")
            return np.array(self.values, dtype=np.float32)
        if len(self.rows) and (int(self.rows.min()) < 0 or int(self.rows.max()) >= n_out):
            raise ValueError(f"RowGrad.to_dense: rows must lie in [0, n_out={n_out}), got range "
                             f"[{int(self.rows.min())}, {int(self.rows.max())}]")
        out = np.zeros((n_out, self._n_in), dtype=np.float32)
        out[self.rows] = self.values
        return out

    def __repr__(self):
        r = "all" if self.rows is None else len(self.rows)
        return f"RowGrad(rows={r}, n_in={self._n_in})"


class Workspace:
    """Reusable scratch buffers, grown to the largest request and never shrunk.

    Arrays handed out are views into the cached buffers: they stay valid only
    until the next call that uses the same workspace.
    """

    def __init__(self):
        self._bufs = {}
        self._views = {}

    def get(self, name, shape, dtype):
        hit = self._views.get(name)
        if hit is not None and hit[0] == shape and hit[1].dtype == dtype:
            return hit[1]                       # the common case: same shape as last time
        size = 1
        for s in shape:
            size *= int(s)
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dtype or buf.size < size:
            buf = np.empty(max(size, 1), dtype=dtype)
            self._bufs[name] = buf
        view = buf[:size].reshape(shape)
        self._views[name] = (tuple(shape), view)
        return view

    def nbytes(self):
        return sum(b.nbytes for b in self._bufs.values())


# ----------------------------------------------------------------- validation

def _check_int(v, name, lo=None, hi=None):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} ({v!r})")
    v = int(v)
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")
    return v


def _check_array(a, name, ndim, dtype=np.float32, writable=False):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of {np.dtype(dtype).name}, "
                        f"got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {a.dtype} "
                        f"(convert with {name}.astype(np.{np.dtype(dtype).name}))")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got {a.ndim}-D with shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray({name}))")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} must be writable, got a read-only array")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    return a


def _threads(threads):
    if threads is None:
        return get_num_threads()
    return _check_int(threads, "threads", 1, 4096)


def _check_finite(a, name):
    if not np.isfinite(a).all():
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")


# ---------------------------------------------------------------- selection

def topk_rows_into(g, k, idx, val, ws, nthreads):
    """Unchecked: per-row top-k of g into idx/val. Returns the non-finite count."""
    topk_ws = ws.get("topk_ws", (nthreads * _core.thread_stride(_core.topk_ws_entries(k)),),
                  np.int64)
    return _core.topk_rows(g, k, idx, val, topk_ws, nthreads)


def topk_rows(g, k, *, hits=None, threads=None):
    """Per-example top-k by magnitude.

    g: float32 (B, n). k: int in [1, n].
    Returns ``idx`` int32 (B, k), ascending in each row, and ``val`` float32
    (B, k) = ``g[b, idx[b]]``. Larger ``|g|`` wins; among equal magnitudes the
    lower index; zeros are chosen only when a row has fewer than k non-zeros.
    hits: optional int64 (n,) array; ``hits[j] += 1`` for every selected j
    with a non-zero value (meSimp's activeness record).
    Raises ValueError if g holds NaN or Inf.
    """
    _check_array(g, "g", 2)
    B, n = g.shape
    k = _check_int(k, "k", 1, n)
    if hits is not None:
        _check_array(hits, "hits", 1, np.int64, writable=True)
        if hits.shape[0] != n:
            raise ValueError(f"hits must have shape ({n},), got {hits.shape}")
    nt = _threads(threads)
    idx = np.empty((B, k), dtype=np.int32)
    val = np.empty((B, k), dtype=np.float32)
    bad = topk_rows_into(g, k, idx, val, Workspace(), nt)
    if bad:
        raise ValueError(f"g contains {bad} non-finite value(s) (NaN or Inf); "
                         "top-k selection needs finite gradients")
    if hits is not None:
        _core.count_hits(idx, val, hits)
    return idx, val


def topk_unified_into(g, k, idx, ws, nthreads):
    """Unchecked: unified top-k of g into idx (k,). Returns the non-finite count."""
    colsum = ws.get("colsum", (g.shape[1],), np.float32)
    topk_ws = ws.get("topk_ws", (_core.topk_ws_entries(k),), np.int64)
    return _core.topk_unified(g, k, idx, colsum, topk_ws, nthreads)


def topk_unified(g, k, *, threads=None):
    """One index set for the whole batch: the k columns with the largest
    ``sum_b |g[b, j]|`` (ties: lower index), as int32 (k,) ascending."""
    _check_array(g, "g", 2)
    k = _check_int(k, "k", 1, g.shape[1])
    idx = np.empty((k,), dtype=np.int32)
    bad = topk_unified_into(g, k, idx, Workspace(), _threads(threads))
    if bad:
        raise ValueError(f"g contains {bad} non-finite value(s) (NaN or Inf)")
    return idx


def randk_rows(B, n, k, seed, *, threads=None):
    """A uniformly random k-subset of range(n) per row, int32 (B, k) ascending.

    Row b depends only on (seed, b): the same for any thread count.
    """
    B = _check_int(B, "B", 1)
    n = _check_int(n, "n", 1, 2**31 - 1)
    k = _check_int(k, "k", 1, n)
    seed = _check_int(seed, "seed", 0, 2**64 - 1)
    idx = np.empty((B, k), dtype=np.int32)
    _core.randk_rows(B, n, k, seed, idx, _threads(threads))
    return idx


# ---------------------------------------------------------------- backward

def sparse_backward_into(x, W, idx, val, ws, nthreads, need_dx=True, factored=False,
                         method=None):
    """Unchecked sparse backward. dx (None unless need_dx) and the RowGrad live in ``ws``;
    ``factored``: the RowGrad forms its values only when read (see RowGrad).
    method: "gather" (sums of the selected rows), "masked" (dense products on
    dy with the unselected entries zeroed: faster once k > n_out / 4, see
    sparse_linear.h; the RowGrad is then formed at once) or None (that rule)."""
    B, k = idx.shape
    n_out = W.shape[0]
    if method is None:
        method = "masked" if _core.backward_masked(k, n_out) else "gather"
    if method == "masked":
        return _masked_backward_into(x, W, idx, val, ws, nthreads, need_dx)
    dx = None
    if need_dx:
        dx = ws.get("dx", (B, W.shape[1]), np.float32)
        sel = ws.get("sel", (nthreads * _core.thread_stride(k),), np.int32)
        coef = ws.get("coef", (nthreads * _core.thread_stride(k),), np.float32)
        _core.sparse_dx(W, idx, val, dx, sel, coef, nthreads)
    return dx, sparse_dw_into(x, W.shape[0], idx, val, ws, nthreads, factored)


def _masked_backward_into(x, W, idx, val, ws, nthreads, need_dx):
    """The sparse backward as two dense products on the masked gradient."""
    B, k = idx.shape
    n_out = W.shape[0]
    dyS = ws.get("dyS_masked", (B, n_out), np.float32)
    flag = ws.get("cursor", (n_out,), np.int32)
    rows = ws.get("rows", (min(n_out, B * k),), np.int32)
    r = _core.scatter_pairs(idx, val, dyS, flag, rows)
    return _masked_products_into(x, W, dyS, rows[:r], ws, nthreads, need_dx)


def _masked_products_into(x, W, dyS, rows, ws, nthreads, need_dx):
    """dx = dyS W (None unless need_dx) and the RowGrad of dyS^T x on ``rows``."""
    B, n_in = x.shape
    dx = None
    if need_dx:
        dx = ws.get("dx", (B, n_in), np.float32)
        _core.matmul_nn(dyS, W, dx, nthreads)
    full = ws.get("values_full", W.shape, np.float32)
    _core.matmul_tn(dyS, x, full, nthreads)
    values = ws.get("values", (rows.shape[0], n_in), np.float32)
    np.take(full, rows, axis=0, out=values)
    return dx, RowGrad(rows, values)


def topk_masked_backward_into(x, W, dy, k, ws, nthreads, need_dx=True):
    """Unchecked per-example top-k backward in the masked form (for k > n_out / 4,
    ``_core.backward_masked``): dy keeps each row's top-k entries, the rest
    is zeroed, and the two products run dense; no index list is made.
    Returns (bad, dx, RowGrad, counts): bad = the non-finite count of dy (the
    rest None when it is not 0); counts int32 (n_out,) = the examples whose
    selection holds neuron j with a non-zero value (what count_hits adds)."""
    B, n_out = dy.shape
    dyS = ws.get("dyS_masked", (B, n_out), np.float32)
    mws = ws.get("mask_ws", (nthreads * _core.thread_stride(
        _core.topk_mask_ws_floats(n_out)),), np.float32)
    bad = _core.topk_mask_rows(dy, k, dyS, mws, nthreads)
    if bad:
        return bad, None, None, None
    counts = ws.get("mask_counts", (n_out,), np.int32)
    rows = ws.get("mask_rows", (n_out,), np.int32)
    r = _core.mask_columns(dyS, counts, rows)
    dx, grad = _masked_products_into(x, W, dyS, rows[:r], ws, nthreads, need_dx)
    return 0, dx, grad, counts


def group_pairs_into(n_out, idx, val, ws):
    """Unchecked: the non-zero (example, value) pairs of a per-example selection
    regrouped by output row (buffers in ``ws``). Returns (r, rows, offsets,
    pair_b, pair_v): rows[:r] ascending, row rows[i]'s pairs at
    offsets[i]:offsets[i+1]."""
    B, k = idx.shape
    npairs = B * k
    cursor = ws.get("cursor", (n_out,), np.int32)
    rows = ws.get("rows", (min(n_out, npairs),), np.int32)
    offsets = ws.get("offsets", (min(n_out, npairs) + 1,), np.int32)
    pair_b = ws.get("pair_b", (npairs,), np.int32)
    pair_v = ws.get("pair_v", (npairs,), np.float32)
    r = _core.group_pairs(idx, val, n_out, cursor, rows, offsets, pair_b, pair_v)
    return r, rows, offsets, pair_b, pair_v


def embedding_grad(ids, grad_rows, n_rows, ws, name, w=1, stride=1, off=0):
    """Unchecked: the gradient of a table lookup as a factored RowGrad (formed in
    the optimizer's kernel, never as a dense table). ids (n,) int32: the rows
    read; use p's gradient is row (p // w) * stride + off + p % w of grad_rows
    (N, dim) float32 C-contiguous (w = stride = 1: row p). Buffers in ``ws``
    under ``name``; the result stays valid until the next call with that name.
    Rows appearing several times sum their uses in the order of the uses."""
    n = ids.shape[0]
    keys = ws.get(name + "keys", (2 * n,), np.uint64)
    rows = ws.get(name + "rows", (n,), np.int32)
    offsets = ws.get(name + "offsets", (n + 1,), np.int32)
    pair_b = ws.get(name + "pair_b", (n,), np.int32)
    pair_v = ws.get(name + "pair_v", (n,), np.float32)
    r = _core.group_ids(ids, n_rows, w, stride, off, keys, rows, offsets, pair_b, pair_v)
    out = ws.get(name + "values", (r, grad_rows.shape[1]), np.float32)
    return RowGrad._factored(rows[:r], grad_rows, offsets, pair_b, pair_v, out)


def sparse_dw_into(x, n_out, idx, val, ws, nthreads, factored=False):
    """Unchecked weight gradient of the sparse backward as a RowGrad (in ``ws``):
    the non-zero pairs regrouped by output row, then one sum of x rows per row."""
    n_in = x.shape[1]
    r, rows, offsets, pair_b, pair_v = group_pairs_into(n_out, idx, val, ws)
    values = ws.get("values", (r, n_in), np.float32)
    if factored:
        return RowGrad._factored(rows[:r], x, offsets, pair_b, pair_v, values)
    _core.sparse_dw(x, r, offsets, pair_b, pair_v, values, nthreads)
    return RowGrad(rows[:r], values)


def _check_backward_args(x, W, idx, val):
    _check_array(x, "x", 2)
    _check_array(W, "W", 2)
    _check_array(idx, "idx", 2, np.int32)
    _check_array(val, "val", 2)
    B, n_in = x.shape
    n_out = W.shape[0]
    if W.shape[1] != n_in:
        raise ValueError(f"W must have shape (n_out, {n_in}) to match x {x.shape}, got {W.shape}")
    if idx.shape[0] != B:
        raise ValueError(f"idx must have {B} rows (one per example of x), got {idx.shape}")
    if val.shape != idx.shape:
        raise ValueError(f"val must have the shape of idx {idx.shape}, got {val.shape}")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n_out:
        raise ValueError(f"idx values must lie in [0, {n_out}) (rows of W), got range [{lo}, {hi}]")
    return B, n_in, n_out


def sparse_backward(x, W, idx, val, *, threads=None):
    """meProp backward of ``y = x W^T + b`` for the kept gradient entries.

    x float32 (B, n_in), W float32 (n_out, n_in), idx int32 (B, k) and val
    float32 (B, k) from :func:`topk_rows` (or any index sets; an index may
    repeat within a row, its values then add up).
    Returns ``dx`` (B, n_in) and a :class:`RowGrad` of dW whose rows are the
    distinct output rows hit by a non-zero value, ascending.
    """
    _check_backward_args(x, W, idx, val)
    nt = _threads(threads)
    dx, grad = sparse_backward_into(x, W, idx, val, Workspace(), nt)
    return dx, grad


def unified_backward(x, W, idx, dy):
    """Backward with one index set ``idx`` (k,) for the batch (unified top-k):
    ``dx = dy[:, S] @ W[S]`` and ``dW[S] = dy[:, S].T @ x`` as small dense
    products (the library's OpenMP kernels). Returns ``dx`` and a :class:`RowGrad`."""
    _check_array(x, "x", 2)
    _check_array(W, "W", 2)
    _check_array(idx, "idx", 1, np.int32)
    _check_array(dy, "dy", 2)
    if W.shape[1] != x.shape[1]:
        raise ValueError(f"W must have shape (n_out, {x.shape[1]}) to match x, got {W.shape}")
    if dy.shape != (x.shape[0], W.shape[0]):
        raise ValueError(f"dy must have shape {(x.shape[0], W.shape[0])}, got {dy.shape}")
    if int(idx.min()) < 0 or int(idx.max()) >= W.shape[0]:
        raise ValueError(f"idx values must lie in [0, {W.shape[0]})")
    if np.any(np.diff(idx) <= 0):
        raise ValueError("idx must be strictly ascending (as topk_unified returns it)")
    return unified_backward_into(x, W, idx, dy, Workspace(), get_num_threads())


def unified_backward_into(x, W, idx, dy, ws, nthreads, need_dx=True):
    """Unchecked unified backward: dense (B, k) and (k, n_in) blocks through the
    library's own OpenMP products. Outputs live in ``ws``."""
    B, n_in = x.shape
    k = idx.shape[0]
    dyS = ws.get("dyS", (B, k), np.float32)
    np.take(dy, idx, axis=1, out=dyS)                 # (B, k) dense block of dy
    dx = None
    if need_dx:
        Wk = ws.get("Wk", (k, n_in), np.float32)
        np.take(W, idx, axis=0, out=Wk)               # the k selected rows of W
        dx = ws.get("dx", (B, n_in), np.float32)
        _core.matmul_nn(dyS, Wk, dx, nthreads)
    values = ws.get("values", (k, n_in), np.float32)
    _core.matmul_tn(dyS, x, values, nthreads)
    return dx, RowGrad(idx, values)


def dense_backward(x, W, dy, *, threads=None):
    """Exact dense backward ``dx = dy @ W``, ``dW = dy.T @ x`` with the
    library's OpenMP products (no BLAS thread pool involved)."""
    _check_array(x, "x", 2)
    _check_array(W, "W", 2)
    _check_array(dy, "dy", 2)
    if W.shape[1] != x.shape[1] or dy.shape != (x.shape[0], W.shape[0]):
        raise ValueError(f"shapes do not match: x {x.shape}, W {W.shape}, dy {dy.shape}")
    nt = _threads(threads)
    dx = np.empty_like(x)
    gw = np.empty_like(W)
    _core.matmul_nn(dy, W, dx, nt)
    _core.matmul_tn(dy, x, gw, nt)
    return dx, RowGrad(None, gw)


#: The meProp modes whose top-k sparsifies the weight gradient only: the layer
#: below gets the exact input gradient ``dx = dy W``.
EXACT_DX_MODES = ("topk_dw", "batch_dw")


def linear_backward_for(plans, n_in, n_out, k, mode, need_dx, count_hits, B, nthreads):
    """The ``_core.LinearBackward`` (mp_layer_backward with its buffers) of a
    layer (n_in, n_out) at k (0: dense) and mode, from the cache dict ``plans``:
    reused while it fits, else built for at least B rows and nthreads threads.
    Plans of another shape are dropped (meSimp's compaction changes the shape),
    so the cache holds only the layer's current width."""
    key = (n_in, n_out, k, mode, bool(need_dx), bool(count_hits))
    lb = plans.get(key)
    if lb is None or B > lb.max_batch or nthreads > lb.threads:
        for other in [q for q in plans if q[:2] != key[:2]]:
            del plans[other]
        lb = plans[key] = _core.LinearBackward(
            n_in, n_out, k, mode == "unified", mode in EXACT_DX_MODES, mode == "batch_dw",
            need_dx, count_hits,
            max(B, lb.max_batch if lb is not None else 0),
            max(nthreads, lb.threads if lb is not None else 0))
    return lb

