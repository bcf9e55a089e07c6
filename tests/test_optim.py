"""Optimizers: row-sparse updates against dense numpy references (Adam:
ref_adam in tests/reference.py)."""
import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import optim
from meprop_cpu.kernels import RowGrad
from meprop_cpu.nn import Parameter

from reference import ref_adam


def _param(shape, seed=0):
    return Parameter(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), "W")


def _rowgrad(n_rows, n_cols, rows, seed=1):
    rows = np.array(sorted(rows), dtype=np.int32)
    vals = np.random.default_rng(seed).standard_normal((len(rows), n_cols)).astype(np.float32)
    return RowGrad(rows, vals)


@pytest.mark.parametrize("opt_cls, kw", [(optim.SGD, dict(lr=0.1)),
                                         (optim.SGD, dict(lr=0.1, momentum=0.9)),
                                         (optim.AdaGrad, dict(lr=0.1)),
                                         (optim.Adam, dict(lr=1e-3))])
def test_sparse_update_touches_only_the_given_rows(opt_cls, kw):
    p = _param((37, 19))
    before = p.data.copy()
    opt = opt_cls([p], **kw)
    touched = [0, 5, 6, 36]
    for s in range(3):
        p.grad = _rowgrad(37, 19, touched, seed=s)
        opt.step()
    untouched = np.setdiff1d(np.arange(37), touched)
    assert np.array_equal(p.data[untouched], before[untouched])
    assert not np.any(p.data[touched] == before[touched])
    for arr in opt.state[id(p)]["arrays"]:
        assert not np.any(arr[untouched])


def test_sparse_adam_equals_dense_adam_when_every_row_is_touched():
    p_sparse, p_dense = _param((23, 17)), _param((23, 17))
    o_sparse, o_dense = optim.Adam([p_sparse]), optim.Adam([p_dense])
    for s in range(5):
        g = _rowgrad(23, 17, range(23), seed=s)
        p_sparse.grad = g
        p_dense.grad = g.values.copy()
        o_sparse.step()
        o_dense.step()
    assert np.array_equal(p_sparse.data, p_dense.data)


def test_adam_matches_reference_over_steps():
    p = _param((8, 9))
    w = p.data.astype(np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    opt = optim.Adam([p], lr=0.01)
    for t in range(1, 8):
        g = np.random.default_rng(t).standard_normal((8, 9)).astype(np.float32)
        p.grad = g
        opt.step()
        ref_adam(w, g.astype(np.float64), m, v, t, lr=0.01)
    np.testing.assert_allclose(p.data, w, rtol=1e-5, atol=1e-6)


def test_sparse_adam_uses_lazy_semantics_and_dense_update_reproduces_paper():
    """sparse=True freezes rows without gradient; sparse=False decays every moment."""
    n = 6
    lazy, dense = _param((n, 4)), _param((n, 4))
    o_lazy = optim.Adam([lazy], lr=0.01)
    o_dense = optim.Adam([dense], lr=0.01, sparse=False)
    w = dense.data.astype(np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, rows in enumerate([[0, 1, 2, 3, 4, 5], [1], [2, 4]], start=1):
        g = _rowgrad(n, 4, rows, seed=t)
        lazy.grad = g
        dense.grad = g
        before = lazy.data.copy()
        o_lazy.step()
        o_dense.step()
        ref_adam(w, g.to_dense(n).astype(np.float64), m, v, t, lr=0.01)
        others = np.setdiff1d(np.arange(n), rows)
        assert np.array_equal(lazy.data[others], before[others])
    np.testing.assert_allclose(dense.data, w, rtol=1e-5, atol=1e-6)
    # dense Adam kept moving row 0 on momentum after step 1
    assert not np.allclose(dense.data[0], lazy.data[0])


def test_adagrad_and_sgd_match_references():
    p1, p2, p3 = _param((5, 7)), _param((5, 7)), _param((5, 7))
    w1, w2, w3 = (p.data.astype(np.float64) for p in (p1, p2, p3))
    acc = np.zeros_like(w1)
    buf = np.zeros_like(w3)
    o1 = optim.AdaGrad([p1], lr=0.1, eps=1e-6)
    o2 = optim.SGD([p2], lr=0.05)
    o3 = optim.SGD([p3], lr=0.05, momentum=0.9)
    for t in range(4):
        g = np.random.default_rng(t).standard_normal((5, 7)).astype(np.float32)
        for p in (p1, p2, p3):
            p.grad = g
        for o in (o1, o2, o3):
            o.step()
        g = g.astype(np.float64)
        acc += g * g
        w1 -= 0.1 * g / (np.sqrt(acc) + 1e-6)
        w2 -= 0.05 * g
        buf = 0.9 * buf + g
        w3 -= 0.05 * buf
    np.testing.assert_allclose(p1.data, w1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p2.data, w2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p3.data, w3, rtol=1e-5, atol=1e-6)


def test_clip_and_weight_decay():
    p = Parameter(np.full((2, 3), 2.0, np.float32))
    opt = optim.SGD([p], lr=1.0, clip=5.0, weight_decay=0.5)
    p.grad = np.array([[100, -100, 1], [0, 4, -6]], np.float32)
    opt.step()
    # g = clip(g, 5) + 0.5 * w
    expected = 2.0 - (np.clip(p.grad, -5, 5) + 1.0)
    np.testing.assert_array_equal(p.data, expected.astype(np.float32))


def test_bias_vectors_update_densely():
    b = Parameter(np.zeros(5, np.float32), "b")
    opt = optim.Adam([b], lr=0.1)
    b.grad = np.array([1, -1, 0, 2, 0], np.float32)
    opt.step()
    assert b.data[0] < 0 < b.data[1] and b.data[2] == 0


def test_one_and_two_threads_bit_identical():
    res = []
    for nt in (1, 2):
        old = mp.get_num_threads()
        mp.set_num_threads(nt)
        try:
            p = _param((600, 700))
            opt = optim.Adam([p])
            for s in range(3):
                p.grad = _rowgrad(600, 700, range(0, 600, 2), seed=s)
                opt.step()
            res.append(p.data)
        finally:
            mp.set_num_threads(old)
    assert np.array_equal(res[0], res[1])


def test_state_dict_roundtrip_and_reset():
    p, q = _param((4, 3)), _param((4, 3))
    o1 = optim.Adam([p], lr=0.01)
    for s in range(3):
        p.grad = _rowgrad(4, 3, [1, 2], seed=s)
        o1.step()
    q.data = p.data.copy()
    o2 = optim.Adam([q], lr=0.5)
    o2.load_state_dict(o1.state_dict())
    assert o2.lr == 0.01
    g = _rowgrad(4, 3, [0, 2], seed=9)
    p.grad = q.grad = g
    o1.step()
    o2.step()
    assert np.array_equal(p.data, q.data)
    o1.reset_state()
    assert o1.state == {}
    with pytest.raises(ValueError, match="SGD"):
        optim.SGD([p]).load_state_dict(o1.state_dict())


def test_zero_grad_and_none_grads_are_skipped():
    p = _param((3, 3))
    opt = optim.SGD([p], lr=1.0)
    before = p.data.copy()
    opt.step()
    assert np.array_equal(p.data, before)
    p.grad = np.ones((3, 3), np.float32)
    opt.zero_grad()
    assert p.grad is None


@pytest.mark.parametrize("make, match", [
    (lambda p: optim.Adam([p], lr=0), "lr"),
    (lambda p: optim.Adam([p], lr=-1), "lr"),
    (lambda p: optim.Adam([p], lr=float("nan")), "lr"),
    (lambda p: optim.Adam([p], betas=(0.9,)), "betas"),
    (lambda p: optim.Adam([p], betas=(1.0, 0.9)), "betas"),
    (lambda p: optim.Adam([p], eps=0), "eps"),
    (lambda p: optim.AdaGrad([p], eps=-1), "eps"),
    (lambda p: optim.SGD([p], momentum=-0.1), "momentum"),
    (lambda p: optim.SGD([p], clip=-1), "clip"),
    (lambda p: optim.SGD([]), "params"),
    (lambda p: optim.SGD([np.zeros(3)]), "Parameter"),
])
def test_bad_hyper_parameters(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make(_param((2, 2)))


def test_gradient_of_wrong_shape():
    p = _param((3, 4))
    opt = optim.SGD([p])
    p.grad = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="shape"):
        opt.step()


# ------------------------------------- the factored gradient of the meProp backward

def _factored_grad(seed, B=13, n_in=37, n_out=29, k=5):
    """A factored RowGrad from the library's sparse backward, and its eager twin."""
    from meprop_cpu import kernels
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, n_in)).astype(np.float32)
    W = rng.standard_normal((n_out, n_in)).astype(np.float32)
    dy = rng.standard_normal((B, n_out)).astype(np.float32)
    dy[rng.random(dy.shape) < 0.3] = 0.0          # zero pairs are left out of the rows
    idx, val = kernels.topk_rows(dy, k)
    _, lazy = kernels.sparse_backward_into(x, W, idx, val, kernels.Workspace(), 1,
                                           need_dx=False, factored=True)
    _, eager = kernels.sparse_backward_into(x, W, idx, val, kernels.Workspace(), 1,
                                            need_dx=False)
    return lazy, eager, (n_out, n_in)


@pytest.mark.parametrize("seed", range(4))
def test_factored_rowgrad_forms_the_eager_values(seed):
    lazy, eager, (n_out, _) = _factored_grad(seed)
    assert lazy.factored and not eager.factored
    np.testing.assert_array_equal(lazy.rows, eager.rows)
    assert lazy.nnz_rows == eager.nnz_rows
    assert np.array_equal(lazy.to_dense(n_out), eager.to_dense(n_out))   # reads the values
    assert not lazy.factored
    assert lazy.values.tobytes() == eager.values.tobytes()


@pytest.mark.parametrize("opt_cls, kw", [(optim.SGD, dict(lr=0.1)),
                                         (optim.SGD, dict(lr=0.1, momentum=0.9, clip=0.5)),
                                         (optim.AdaGrad, dict(lr=0.1, weight_decay=0.01)),
                                         (optim.Adam, dict(lr=1e-3)),
                                         (optim.Adam, dict(lr=1e-2, clip=0.3, weight_decay=0.1)),
                                         (optim.Adam, dict(lr=1e-3, sparse=False))])
@pytest.mark.parametrize("threads,big", [(1, False), (2, False), (2, True)])
def test_optimizer_applies_factored_gradient_like_the_eager_one(opt_cls, kw, threads, big):
    """The fused path (rows summed and applied in one kernel) is bit-identical
    to forming the gradient first, over several steps, on both SIMD paths
    (big: enough work for the parallel loop)."""
    shape = dict(B=100, n_in=300, n_out=200, k=20) if big else {}
    from meprop_cpu import _core
    old_threads = mp.get_num_threads()
    for portable in (False, True):
        old = _core.set_simd_limit(0 if portable else 2)
        mp.set_num_threads(threads)
        try:
            results = []
            for fused in (True, False):
                _, _, wshape = _factored_grad(0, **shape)
                p = _param(wshape, seed=5)
                opt = opt_cls([p], **kw)
                for step in range(3):
                    lazy, eager, _ = _factored_grad(step, **shape)
                    p.grad = lazy if fused else eager
                    opt.step()
                    if fused and opt.sparse:
                        assert lazy.factored      # applied without forming the values
                results.append((p.data.copy(), [a.copy() for st in opt.state.values()
                                                for a in st["arrays"]]))
            assert results[0][0].tobytes() == results[1][0].tobytes()
            for a, b in zip(results[0][1], results[1][1]):
                assert a.tobytes() == b.tobytes()
        finally:
            _core.set_simd_limit(old)
            mp.set_num_threads(old_threads)


def test_reset_state_keeping_step_counts_continues_the_bias_correction():
    """keep_steps=True (meSimp's authors' reset): moments zeroed, step counts kept,
    so the next Adam step uses the bias correction of step t+1, not of step 1."""
    p, q = _param((3, 4)), _param((3, 4))
    g = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    a, b = optim.Adam([p], lr=1e-2), optim.Adam([q], lr=1e-2)
    for _ in range(5):
        p.grad = q.grad = g
        a.step()
        b.step()
    a.reset_state(keep_steps=True)
    b.reset_state()
    st = a.state[id(p)]
    assert st["step"] == 5 and not any(x.any() for x in st["arrays"])
    assert b.state == {}
    w, m, v = p.data.astype(np.float64), np.zeros((3, 4)), np.zeros((3, 4))
    p.grad = q.grad = g
    a.step()
    b.step()
    ref_adam(w, g, m, v, t=6, lr=1e-2)
    np.testing.assert_allclose(p.data, w, rtol=1e-5, atol=1e-6)
    # the restart without bias correction takes a larger step than the fresh one
    assert np.abs(p.data - q.data).max() > 0


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_updates_flush_subnormals_and_restore_the_callers_mode(kind):
    from meprop_cpu import _core
    tiny = np.float32(np.finfo(np.float32).tiny)
    states = {}
    for flush in (1, 0):
        old = _core.set_flush_subnormals(flush)
        try:
            p = Parameter(np.ones((3, 4), np.float32), "W")
            opt = optim.Adam([p], lr=1e-3) if kind == "adam" else \
                optim.SGD([p], lr=1e-3, momentum=0.5)
            p.grad = np.full((3, 4), tiny / np.float32(64), np.float32)   # subnormal
            opt.step()
            states[flush] = opt.state[id(p)]["arrays"][0].copy()
        finally:
            _core.set_flush_subnormals(old)
    # FTZ + DAZ: the subnormal gradient counts as 0, so does the moment it would make
    assert np.all(states[1] == 0)
    assert np.all((states[0] != 0) & (np.abs(states[0]) < tiny))
    # the caller's own mode (numpy here) is what it was: subnormals still come out
    assert np.float32(tiny) / np.float32(4) != 0
    with pytest.raises(ValueError, match="on must be 0 or 1"):
        _core.set_flush_subnormals(2)
