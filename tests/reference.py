"""Deliberately naive numpy references for the kernels in meprop_cpu.kernels.

Each function here is written to be obviously correct, not fast: plain loops
over examples and pairs, stable sorts, float64 accumulation where the kernel's
result is compared with a tolerance, and float32 accumulation in the kernel's
own order where the result must match exactly (the unified top-k ranking).

Groups: top-k selection and meSimp counts (test_topk.py, test_hits.py, ...),
the sparse / dense backward (test_sparse_linear.py, ...), the dense products
of include/meprop/dense.h (test_dense.py), the optimizers (test_optim.py),
and the float32 error bound the float64 references are compared with.
"""
import numpy as np

# unit roundoff of float32 and the spacing of its subnormals
U32 = 2.0 ** -24
SUBNORMAL_ULP = 2.0 ** -149


# ---- top-k selection and meSimp counts ----------------------------------------

def ref_row_order(row):
    """Indices of a 1-D row ranked as the kernels rank them: larger |g| first,
    equal magnitudes by lower index (a stable sort of -|g|; -0.0 == 0.0)."""
    mag = np.abs(row.astype(np.float64))      # exact: every float32 fits in float64
    return np.argsort(-mag, kind="stable")


def ref_topk_rows(g, k):
    """Per-row top-k: idx (B, k) int32 ascending per row, val = g[b, idx]."""
    B, n = g.shape
    idx = np.empty((B, k), dtype=np.int32)
    val = np.empty((B, k), dtype=np.float32)
    for b in range(B):
        chosen = np.sort(ref_row_order(g[b])[:k])
        idx[b] = chosen
        val[b] = g[b, chosen]
    return idx, val


def ref_topk_batch(g, k):
    """Batch top-k: the B*k entries of g (B, n) with the largest |g| over the
    whole batch (ties as the per-row rule on the flattened g). Returns ex, idx,
    val (B*k,) in flat order: the examples, the columns, g there."""
    B, n = g.shape
    flat, _ = ref_topk_rows(g.reshape(1, B * n), B * k)
    flat = flat[0].astype(np.int64)
    return (flat // n).astype(np.int32), (flat % n).astype(np.int32), g.reshape(-1)[flat]


def ref_hits(idx, val, n, hits=None):
    """hits[j] += 1 for every selected (b, j) whose value is non-zero."""
    hits = np.zeros(n, dtype=np.int64) if hits is None else hits.copy()
    B, k = idx.shape
    for b in range(B):
        for t in range(k):
            if val[b, t] != 0:
                hits[idx[b, t]] += 1
    return hits


def ref_abs_colsum(g):
    """sum_b |g[b, j]| accumulated in float32, b ascending (the kernel's order)."""
    B, n = g.shape
    s = np.zeros(n, dtype=np.float32)
    with np.errstate(over="ignore"):
        for b in range(B):
            s = s + np.abs(g[b])               # float32 + float32 -> float32, elementwise
    return s


def ref_topk_unified(g, k):
    """The k columns with the largest float32 column sum of |g|, ties lower
    index, returned ascending as int32 (k,)."""
    s = ref_abs_colsum(g).astype(np.float64)   # inf stays inf
    order = np.argsort(-s, kind="stable")
    return np.sort(order[:k]).astype(np.int32)


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


# ---- sparse and dense backward (float64) ---------------------------------------

def ref_scatter(idx, val, n_out):
    """The dense (B, n_out) float64 gradient that the pairs (idx, val) stand for
    (repeated indices add up)."""
    B, k = idx.shape
    dy = np.zeros((B, n_out), dtype=np.float64)
    for b in range(B):
        for t in range(k):
            dy[b, idx[b, t]] += float(val[b, t])
    return dy


def ref_sparse_backward(x, W, idx, val):
    """Float64 reference of the sparse backward.

    Returns dx (B, n_in), rows (ascending distinct idx with a non-zero value),
    values (len(rows), n_in), and the matching sums of absolute terms
    (absdx, absvalues) that scale the float32 error bound.
    """
    B, n_in = x.shape
    k = idx.shape[1]
    x64, W64 = x.astype(np.float64), W.astype(np.float64)
    dx = np.zeros((B, n_in))
    absdx = np.zeros((B, n_in))
    per_row = {}
    for b in range(B):
        for t in range(k):
            j, v = int(idx[b, t]), float(val[b, t])
            dx[b] += v * W64[j]
            absdx[b] += abs(v) * np.abs(W64[j])
            if v != 0.0:
                per_row.setdefault(j, []).append((b, v))
    rows = np.array(sorted(per_row), dtype=np.int32)
    values = np.zeros((len(rows), n_in))
    absvalues = np.zeros((len(rows), n_in))
    for q, j in enumerate(rows):
        for b, v in per_row[int(j)]:
            values[q] += v * x64[b]
            absvalues[q] += abs(v) * np.abs(x64[b])
    return dx, rows, values, absdx, absvalues


def ref_dense_backward(x, W, dy, absdy=None):
    """Float64 dense backward: dx = dy @ W, dW = dy.T @ x, and the sums of
    absolute terms for the error bound. absdy: the sum of |terms| behind each
    entry of dy where dy itself is a sum (repeated indices may cancel)."""
    x64, W64, dy64 = (a.astype(np.float64) for a in (x, W, dy))
    absdy = np.abs(dy64) if absdy is None else np.asarray(absdy, dtype=np.float64)
    return (dy64 @ W64, dy64.T @ x64, absdy @ np.abs(W64), absdy.T @ np.abs(x64))


# ---- dense products (float64 result and sum of |terms|) -----------------------

def ref_linear(x, W, b, relu):
    x64, W64 = x.astype(np.float64), W.astype(np.float64)
    y = x64 @ W64.T
    absy = np.abs(x64) @ np.abs(W64).T
    if b is not None:
        y = y + b
        absy = absy + np.abs(b.astype(np.float64))
    if relu:
        y = np.maximum(y, 0.0)
    return y, absy


def ref_nn(A, Bm):
    A64, B64 = A.astype(np.float64), Bm.astype(np.float64)
    return A64 @ B64, np.abs(A64) @ np.abs(B64)


def ref_tn(A, Bm):
    A64, B64 = A.astype(np.float64), Bm.astype(np.float64)
    return A64.T @ B64, np.abs(A64).T @ np.abs(B64)


# ---- optimizers ----------------------------------------------------------------

def ref_adam(w, g, m, v, t, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """One Adam step with bias correction (t counts from 1), in place on w, m
    and v (float64 arrays): the update of Kingma & Ba, the dense reference of
    optim.Adam."""
    m[:] = b1 * m + (1 - b1) * g
    v[:] = b2 * v + (1 - b2) * g * g
    w -= (lr / (1 - b1 ** t)) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)


# ---- the float32 error bound ---------------------------------------------------

def float32_sum_tol(absref, nterms, slack=4.0):
    """A rigorous bound (times `slack`) on the error of a float32 sum of
    `nterms` products, in any order, against the exact result: gamma_{n+1} *
    sum|terms| for the normal range plus half a subnormal spacing per operation
    for underflow."""
    gamma = (nterms + 1) * U32 / (1.0 - (nterms + 1) * U32)
    return slack * (gamma * absref + (2 * nterms + 2) * SUBNORMAL_ULP) + 1e-5 * absref


def assert_close_sum(actual, ref, absref, nterms, what=""):
    """actual (float32) is ref (float64) up to float32 rounding of an nterms-sum."""
    actual = np.asarray(actual)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != {ref.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    err = np.abs(actual.astype(np.float64) - ref)
    tol = float32_sum_tol(absref, nterms)
    bad = err > tol
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{what}: {int(bad.sum())} entries off; first at {i}: "
                             f"got {actual[i]!r}, want {ref[i]!r}, tol {tol[i]!r}")
