"""Property-based tests (hypothesis) of the kernels that test_topk.py and
test_sparse_linear.py do not already cover this way, each against a naive
reference over generated shapes, index sets and values (zeros, ties, signed
zeros, subnormals, tiny and huge magnitudes):

* the optimizer row kernels (SGD, momentum, AdaGrad, Adam; clip, weight decay;
  row-sparse and dense updates) against float32 numpy in the kernel's order:
  bit for bit, rows outside the gradient untouched, 1 and 2 threads equal;
* the dense products of meprop_cpu._core (forward with bias / ReLU, A @ B,
  A.T @ B) against float64 numpy within the float32 summation bound, on every
  SIMD path, 1 and 2 threads bit-identical;
* unified and dense backward against the float64 references of reference.py;
* random-k: row b depends only on (seed, b), for any batch size;
* Linear.backward in every mode against the masked dense reference.
About 3,800 cases; the file runs in well under a minute (about 10 s).
"""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import meprop_cpu as mp
from meprop_cpu import _core, kernels as K, nn, optim
from meprop_cpu.kernels import RowGrad

from reference import assert_close_sum, ref_dense_backward, ref_topk_rows

FAST = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOWER = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KINDS = ("normal", "ties", "zeros", "signed_zero", "subnormal", "tiny", "huge", "mixed")


def values(rng, shape, kind, huge=1e17):
    """float32 values of a kind; ``huge`` bounds the large magnitudes so that
    products of two of them and their sums stay finite in float32."""
    if kind == "normal":
        a = rng.standard_normal(shape)
    elif kind == "ties":
        a = rng.integers(-2, 3, size=shape).astype(np.float64)
    elif kind == "zeros":
        a = rng.standard_normal(shape) * (rng.random(shape) < 0.3)
    elif kind == "signed_zero":
        a = rng.choice(np.array([0.0, -0.0, 1.0, -1.0]), size=shape)
    elif kind == "subnormal":
        a = rng.choice(np.array([0.0, -0.0, 1e-40, -1e-40, 3e-41, 1e-45, 1.0]), size=shape)
    elif kind == "tiny":
        a = rng.standard_normal(shape) * 1e-30
    elif kind == "huge":
        a = rng.standard_normal(shape) * huge
    else:   # mixed: magnitudes spread over 1e-45 .. huge
        a = rng.choice([-1.0, 1.0], size=shape) * 10.0 ** rng.uniform(-45, np.log10(huge),
                                                                      size=shape)
    return np.ascontiguousarray(a, dtype=np.float32)


def with_threads(n, f, *args):
    old = mp.get_num_threads()
    mp.set_num_threads(n)
    try:
        return f(*args)
    finally:
        mp.set_num_threads(old)


# ------------------------------------------------------------------ optimizers

F = np.float32


TINY = np.finfo(np.float32).tiny


def fz(a):
    """Flush subnormals to (signed) zero: the optimizer kernels run with FTZ + DAZ
    (include/meprop/parallel.h, mp_ftz_begin), so every operation sees its
    subnormal inputs as 0 and rounds its subnormal results to 0."""
    a = np.asarray(a, F)
    return np.where(np.abs(a) < TINY, a * F(0), a).astype(F)


def _add(a, b):
    return fz(fz(a) + fz(b))


def _sub(a, b):
    return fz(fz(a) - fz(b))


def _mul(a, b):
    return fz(fz(a) * fz(b))


def _div(a, b):
    return fz(fz(a) / fz(b))


def _sqrt(a):
    return fz(np.sqrt(fz(a)))


def ref_prep(g, w, clip, wd):
    if clip > 0:   # a select: the bits of g pass through (a subnormal g stays one here)
        g = np.where(fz(g) > clip, clip, np.where(fz(g) < -clip, -clip, g)).astype(F)
    return _add(g, _mul(F(wd), w))


def ref_optim_rows(kind, w, s1, s2, rows, vals, h, t):
    """One update of the rows ``rows`` (all rows if None) in float32, in the
    order of include/meprop/optim.h, each operation under FTZ + DAZ. Mutates
    w, s1, s2."""
    idx = np.arange(w.shape[0]) if rows is None else rows
    for q, j in enumerate(idx):
        g = ref_prep(vals[q], w[j], F(h["clip"]), h["weight_decay"])
        if kind == "sgd":
            if s1 is not None:
                s1[j] = _add(_mul(F(h["momentum"]), s1[j]), g)
                w[j] = _sub(w[j], _mul(F(h["lr"]), s1[j]))
            else:
                w[j] = _sub(w[j], _mul(F(h["lr"]), g))
        elif kind == "adagrad":
            s1[j] = _add(s1[j], _mul(g, g))
            w[j] = _sub(w[j], _div(_mul(F(h["lr"]), g), _add(_sqrt(s1[j]), F(h["eps"]))))
        else:
            b1, b2 = h["betas"]
            step = F(h["lr"] / (1.0 - b1 ** t))
            isb = F(1.0 / np.sqrt(1.0 - b2 ** t))
            c1, c2 = F(1.0) - F(b1), F(1.0) - F(b2)
            s1[j] = _add(_mul(F(b1), s1[j]), _mul(c1, g))
            s2[j] = _add(_mul(F(b2), s2[j]), _mul(_mul(c2, g), g))
            w[j] = _sub(w[j], _div(_mul(step, s1[j]),
                                   _add(_mul(_sqrt(s2[j]), isb), F(h["eps"]))))


def make_optimizer(kind, p, h, sparse):
    common = dict(lr=h["lr"], clip=h["clip"], weight_decay=h["weight_decay"], sparse=sparse)
    if kind == "sgd":
        return optim.SGD([p], momentum=h["momentum"], **common)
    if kind == "adagrad":
        return optim.AdaGrad([p], eps=h["eps"], **common)
    return optim.Adam([p], betas=h["betas"], eps=h["eps"], **common)


@st.composite
def optim_case(draw):
    n_rows = draw(st.one_of(st.integers(1, 40), st.just(300)))
    n_cols = draw(st.one_of(st.integers(1, 70), st.sampled_from([1, 16, 17, 200])))
    kind = draw(st.sampled_from(["sgd", "adagrad", "adam"]))
    h = {"lr": draw(st.sampled_from([1e-3, 0.01, 0.1, 1.0])),
         "momentum": draw(st.sampled_from([0.0, 0.5, 0.9])),
         "eps": draw(st.sampled_from([1e-8, 1e-6, 1e-3])),
         "clip": draw(st.sampled_from([0.0, 0.0, 0.5, 5.0])),
         "weight_decay": draw(st.sampled_from([0.0, 0.0, 1e-4, 0.1])),
         "betas": draw(st.sampled_from([(0.9, 0.999), (0.5, 0.9), (0.0, 0.0)]))}
    n_steps = draw(st.integers(1, 3))
    sparse = draw(st.booleans())
    dense_grad = draw(st.integers(0, 4)) == 0       # a dense gradient (rows=None)
    kinds = [draw(st.sampled_from(KINDS)) for _ in range(n_steps)]
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return n_rows, n_cols, kind, h, n_steps, sparse, dense_grad, kinds, seed


def _run_optim(case, threads):
    n_rows, n_cols, kind, h, n_steps, sparse, dense_grad, kinds, seed = case
    rng = np.random.default_rng(seed)
    w0 = values(rng, (n_rows, n_cols), "normal")
    p = nn.Parameter(w0.copy(), "W")
    opt = make_optimizer(kind, p, h, sparse)
    w = w0.copy()
    s1 = np.zeros_like(w) if (kind != "sgd" or h["momentum"] > 0) else None
    s2 = np.zeros_like(w) if kind == "adam" else None
    touched = np.zeros(n_rows, dtype=bool)
    with np.errstate(all="ignore"):
        for t in range(1, n_steps + 1):
            vals_kind = kinds[t - 1]
            if dense_grad:
                rows = None
                vals = values(rng, (n_rows, n_cols), vals_kind)
            else:
                r = int(rng.integers(0, n_rows + 1))
                rows = np.sort(rng.choice(n_rows, size=r, replace=False)).astype(np.int32)
                vals = values(rng, (r, n_cols), vals_kind)
            p.grad = RowGrad(rows, vals)
            with_threads(threads, opt.step)
            if rows is not None and not sparse:      # the paper's dense update
                full = np.zeros((n_rows, n_cols), F)
                full[rows] = vals
                rows, vals = None, full
            ref_optim_rows(kind, w, s1, s2, rows, vals, h, t)
            touched[rows if rows is not None else slice(None)] = True
    return p, opt, w, s1, s2, touched, w0


@FAST
@given(optim_case())
def test_property_optimizer_rows_match_float32_reference(case):
    p, opt, w, s1, s2, touched, w0 = _run_optim(case, threads=1)
    assert np.array_equal(p.data, w, equal_nan=True)
    assert np.array_equal(p.data[~touched].view(np.uint32), w0[~touched].view(np.uint32))
    st_ = opt.state.get(id(p))
    for mine, ref in zip(st_["arrays"] if st_ else [], [s1, s2]):
        assert np.array_equal(mine, ref, equal_nan=True)
    if case[0] * case[1] >= 50_000:       # big enough for a team of threads
        p2 = _run_optim(case, threads=2)[0]
        assert np.array_equal(p.data.view(np.uint32), p2.data.view(np.uint32))


# ------------------------------------------------------------------ dense products

@st.composite
def dense_case(draw):
    M = draw(st.one_of(st.integers(1, 40), st.sampled_from([1, 4, 12, 13, 64])))
    K_ = draw(st.one_of(st.integers(1, 80), st.sampled_from([1, 16, 17, 255, 256, 257])))
    N = draw(st.one_of(st.integers(1, 80), st.sampled_from([1, 15, 16, 32, 33])))
    kinds = (draw(st.sampled_from(KINDS)), draw(st.sampled_from(KINDS)))
    level = draw(st.sampled_from([0, 1, 2]))
    return M, K_, N, kinds, level, draw(st.integers(0, 2 ** 32 - 1))


def _on_path(level, f, *args):
    old = _core.set_simd_limit(level)
    try:
        return f(*args)
    finally:
        _core.set_simd_limit(old)


def _forward(x, W, b, relu, nt):
    y = np.full((x.shape[0], W.shape[0]), np.nan, np.float32)
    _core.linear_forward(x, W, b, y, relu, nt)
    return y


def _nn(A, Bm, nt):
    C = np.full((A.shape[0], Bm.shape[1]), np.nan, np.float32)
    _core.matmul_nn(A, Bm, C, nt)
    return C


def _tn(A, Bm, nt):
    C = np.full((A.shape[1], Bm.shape[1]), np.nan, np.float32)
    _core.matmul_tn(A, Bm, C, nt)
    return C


@FAST
@given(dense_case(), st.booleans(), st.booleans())
def test_property_linear_forward(case, bias, relu):
    B, n_in, n_out, (kx, kw), level, seed = case
    rng = np.random.default_rng(seed)
    x, W = values(rng, (B, n_in), kx), values(rng, (n_out, n_in), kw)
    b = values(rng, (n_out,), "normal") if bias else None
    y = _on_path(level, _forward, x, W, b, relu, 1)
    x64, W64 = x.astype(np.float64), W.astype(np.float64)
    ref, absref = x64 @ W64.T, np.abs(x64) @ np.abs(W64).T
    if b is not None:
        ref, absref = ref + b, absref + np.abs(b.astype(np.float64))
    if relu:
        ref = np.maximum(ref, 0.0)
        assert np.all(y >= 0)
    assert_close_sum(y, ref, absref, n_in + 1, "linear_forward")
    assert np.array_equal(y.view(np.uint32), _on_path(level, _forward, x, W, b, relu, 2)
                          .view(np.uint32))


@FAST
@given(dense_case())
def test_property_matmul_nn(case):
    M, K_, N, (ka, kb), level, seed = case
    rng = np.random.default_rng(seed)
    A, Bm = values(rng, (M, K_), ka), values(rng, (K_, N), kb)
    C = _on_path(level, _nn, A, Bm, 1)
    A64, B64 = A.astype(np.float64), Bm.astype(np.float64)
    assert_close_sum(C, A64 @ B64, np.abs(A64) @ np.abs(B64), K_, "matmul_nn")
    assert np.array_equal(C.view(np.uint32), _on_path(level, _nn, A, Bm, 2).view(np.uint32))


@FAST
@given(dense_case())
def test_property_matmul_tn(case):
    K_, M, N, (ka, kb), level, seed = case
    rng = np.random.default_rng(seed)
    A, Bm = values(rng, (K_, M), ka), values(rng, (K_, N), kb)
    C = _on_path(level, _tn, A, Bm, 1)
    A64, B64 = A.astype(np.float64), Bm.astype(np.float64)
    assert_close_sum(C, A64.T @ B64, np.abs(A64).T @ np.abs(B64), K_, "matmul_tn")
    assert np.array_equal(C.view(np.uint32), _on_path(level, _tn, A, Bm, 2).view(np.uint32))


# ------------------------------------------------------------------ backward products

@st.composite
def backward_case(draw, max_b=30, max_out=60, max_in=50):
    B = draw(st.integers(1, max_b))
    n_out = draw(st.integers(1, max_out))
    n_in = draw(st.integers(1, max_in))
    k = draw(st.one_of(st.just(1), st.just(n_out), st.integers(1, n_out)))
    kind = draw(st.sampled_from(KINDS))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    x = values(rng, (B, n_in), "normal")
    W = values(rng, (n_out, n_in), "normal")
    dy = values(rng, (B, n_out), kind, huge=1e15)
    return x, W, dy, k


@FAST
@given(backward_case())
def test_property_unified_backward(case):
    x, W, dy, k = case
    idx = K.topk_unified(dy, k)
    dx, grad = K.unified_backward(x, W, idx, dy)
    mask = np.zeros(dy.shape, np.float32)
    mask[:, idx] = 1
    rdx, rdw, absdx, absdw = ref_dense_backward(x, W, dy * mask)
    assert_close_sum(dx, rdx, absdx, k, "unified dx")
    assert np.array_equal(grad.rows, idx)
    assert_close_sum(grad.values, rdw[idx], absdw[idx], x.shape[0], "unified dW")


@FAST
@given(backward_case(), st.sampled_from([1, 2]))
def test_property_dense_backward(case, threads):
    x, W, dy, _ = case
    dx, grad = K.dense_backward(x, W, dy, threads=threads)
    rdx, rdw, absdx, absdw = ref_dense_backward(x, W, dy)
    assert grad.dense
    assert_close_sum(dx, rdx, absdx, W.shape[0], "dense dx")
    assert_close_sum(grad.values, rdw, absdw, x.shape[0], "dense dW")


@SLOWER
@given(backward_case(max_b=20, max_out=40, max_in=30),
       st.sampled_from(["topk", "unified", "random", "dense"]), st.booleans())
def test_property_linear_backward_matches_masked_reference(case, mode, first_layer):
    """Linear.backward keeps exactly the selected entries of dy (per mode) and
    equals the dense backward of the masked dy; a first layer (no input
    gradient) gives the same weight gradient."""
    x, W, dy, k = case
    n_out, n_in = W.shape
    lin = nn.Linear(n_in, n_out, k=k, mode=mode, seed=3, needs_input_grad=not first_layer)
    lin.W.data = W.copy()
    lin.forward(x)
    dx = lin.backward(dy)
    mask = np.zeros(dy.shape, np.float32)
    if not lin.sparse:
        mask[:] = 1
    elif mode == "topk":
        idx, _ = ref_topk_rows(dy, k)
        np.put_along_axis(mask, idx.astype(np.int64), 1, axis=1)
    elif mode == "unified":
        mask[:, K.topk_unified(dy, k)] = 1
    else:   # random: the layer's own draw, reproduced from its seed
        seed = (lin._rand_seed + lin._rand_calls - 1) % 2 ** 64
        idx = K.randk_rows(dy.shape[0], n_out, k, seed)
        np.put_along_axis(mask, idx.astype(np.int64), 1, axis=1)
    rdx, rdw, absdx, absdw = ref_dense_backward(x, W, dy * mask)
    if first_layer:
        assert dx is None
    else:
        assert_close_sum(dx, rdx, absdx, n_out, "Linear dx")
    assert_close_sum(lin.W.grad.to_dense(n_out), rdw, absdw, x.shape[0], "Linear dW")
    # the bias gradient: dy's rows added one after the other in float32 (numpy's
    # dy.sum(axis=0) takes another order when dy is one column wide)
    want = dy[0].copy()
    for row in dy[1:]:
        want += row
    assert np.array_equal(lin.b.grad, want)


# ------------------------------------------------------------------ random-k

@FAST
@given(st.integers(1, 30), st.integers(1, 30), st.integers(1, 400), st.data(),
       st.integers(0, 2 ** 64 - 1), st.sampled_from([1, 2]))
def test_property_randk_row_depends_only_on_seed_and_row(B1, B2, n, data, seed, threads):
    k = data.draw(st.integers(1, n))
    a = K.randk_rows(B1, n, k, seed, threads=threads)
    b = K.randk_rows(B2, n, k, seed, threads=3 - threads)
    m = min(B1, B2)
    assert np.array_equal(a[:m], b[:m])
    assert a.dtype == np.int32 and a.shape == (B1, k)
    assert np.all(np.diff(a, axis=1) > 0) and a.min() >= 0 and a.max() < n
