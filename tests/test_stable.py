"""The meProp modes that sparsify the weight gradient only and pass the exact
input gradient to the layer below: "batch_dw" (the default: the B*k largest
|dy| of the batch) and "topk_dw" (k per example). Checked against the naive
references (tests/reference.py), against the kernels of the modes they are
made of (topk_dw: the weight gradient and meSimp counts of mode "topk"; both:
the input gradient of mode "dense", bit for bit), for 1 and 2 threads, on the
AVX-512 and the portable kernels, and the fused step against the module
path."""
import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import nn, optim
from meprop_cpu.train import Trainer

from reference import (assert_close_sum, ref_hits, ref_sparse_backward, ref_topk_batch,
                       ref_topk_rows)
from toydata import blobs


@pytest.fixture(autouse=True, scope="module", params=["native", "portable"])
def simd_path(request):
    from meprop_cpu import _core
    old = _core.set_simd_limit(0 if request.param == "portable" else 2)
    try:
        yield request.param
    finally:
        _core.set_simd_limit(old)


EXACT_DX = ["batch_dw", "topk_dw"]


def _layer_pair(n_in, n_out, k, seed=1, mode="topk_dw"):
    """Layers of mode ``mode``, topk and dense with the same weights."""
    a = nn.Linear(n_in, n_out, k=k, mode=mode, seed=seed)
    b = nn.Linear(n_in, n_out, k=k, mode="topk", seed=seed)
    c = nn.Linear(n_in, n_out, k=None, mode="dense", seed=seed)
    for lin in (a, b, c):
        lin.track_hits = True
    return a, b, c


def _dense_rows(g, n_out):
    return g.to_dense(n_out)


def test_default_mode_is_batch_dw():
    assert nn.DEFAULT_MODE == "batch_dw"
    assert nn.Linear(4, 8, k=2).mode == "batch_dw"
    m = nn.MLP([6, 8, 7, 3], k=2)
    assert m.config["mode"] == "batch_dw"
    assert [lin.mode for lin in m.linears] == ["batch_dw"] * 3
    assert nn.MLP([6, 8, 3], k=2, mode="topk").linears[0].mode == "topk"
    with pytest.raises(ValueError, match="mode must be one of"):
        nn.Linear(4, 8, k=2, mode="exact")


# (B, n_in, n_out, k): the gather backward (4 k <= n_out) and the masked one
SHAPES = [(7, 13, 40, 3), (1, 5, 9, 2), (10, 50, 40, 10), (6, 30, 40, 11), (32, 300, 500, 20),
          (64, 200, 300, 100)]


def _case(shape, kind):
    B, n_in, n_out, k = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((B, n_in)).astype(np.float32)
    if kind == "normal":
        dy = rng.standard_normal((B, n_out))
    elif kind == "zeros":
        dy = rng.standard_normal((B, n_out)) * (rng.random((B, n_out)) < 0.3)
    elif kind == "ties":
        dy = rng.integers(-2, 3, size=(B, n_out)).astype(np.float64)
    else:   # "skewed": a few examples carry most of the gradient
        dy = rng.standard_normal((B, n_out)) * np.where(rng.random((B, 1)) < 0.2, 30.0, 0.1)
    return x, dy.astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["normal", "zeros", "ties", "skewed"])
def test_batch_dw_against_the_reference(shape, kind):
    B, n_in, n_out, k = shape
    x, dy = _case(shape, kind)
    a, _, c = _layer_pair(n_in, n_out, k, mode="batch_dw")
    outs = []
    for lin in (a, c):
        lin.forward(x)
        dx = lin.backward(dy)
        outs.append((dx.copy(), _dense_rows(lin.W.grad, n_out), lin.b.grad.copy(),
                     lin.hits.copy()))
    (dx_a, gw_a, gb_a, h_a), (dx_c, _, gb_c, _) = outs
    W = a.W.data.astype(np.float64)
    ref_dx = dy.astype(np.float64) @ W
    assert_close_sum(dx_a, ref_dx, np.abs(dy.astype(np.float64)) @ np.abs(W), n_out, "dx")
    assert dx_a.tobytes() == dx_c.tobytes()     # the exact input gradient, bit for bit
    assert gb_a.tobytes() == gb_c.tobytes()     # the bias from the whole dy
    ex, idx, val = ref_topk_batch(dy, k)
    assert len(idx) == B * k
    x64 = x.astype(np.float64)
    ref_gw = np.zeros((n_out, n_in))
    absgw = np.zeros((n_out, n_in))
    for e, j, v in zip(ex, idx, val):
        ref_gw[j] += float(v) * x64[e]
        absgw[j] += abs(float(v) * x64[e])
    assert_close_sum(gw_a, ref_gw, absgw, B, "dW")
    # the rows with a non-zero selected value are the ones the gradient holds
    assert set(np.flatnonzero(np.abs(gw_a).sum(1))) <= set(idx[val != 0].tolist())
    np.testing.assert_array_equal(h_a, ref_hits(idx.reshape(1, -1), val.reshape(1, -1), n_out))
    assert a.seen == B


@pytest.mark.parametrize("shape", [(1, 5, 9, 2), (1, 30, 40, 11), (1, 300, 500, 20)])
def test_batch_dw_of_one_example_is_topk_dw(shape):
    """With one example the batch selection is that example's top-k."""
    B, n_in, n_out, k = shape
    x, dy = _case(shape, "normal")
    got = []
    for mode in EXACT_DX:
        lin = nn.Linear(n_in, n_out, k=k, mode=mode, seed=5)
        lin.forward(x)
        dx = lin.backward(dy)
        got.append((dx.tobytes(), _dense_rows(lin.W.grad, n_out).tobytes()))
    assert got[0] == got[1]


def test_batch_dw_keeps_the_batch_budget_where_the_gradient_is():
    """An example whose output gradient is tiny gets no row; a large one gets
    more than k (what sets it apart from topk_dw)."""
    rng = np.random.default_rng(11)
    B, n_in, n_out, k = 4, 6, 40, 5
    x = rng.standard_normal((B, n_in)).astype(np.float32)
    dy = rng.standard_normal((B, n_out)).astype(np.float32)
    dy[0] *= 1e-3
    dy[1] *= 1e3
    lin = nn.Linear(n_in, n_out, k=k, mode="batch_dw", seed=1)
    lin.forward(x)
    lin.backward(dy)
    ex, idx, val = ref_topk_batch(dy, k)
    counts = np.bincount(ex, minlength=B)
    assert counts[0] == 0 and counts[1] > k and counts.sum() == B * k
    a = lin._plan.arrays
    np.testing.assert_array_equal(a["pair_e"][:B * k], ex)
    np.testing.assert_array_equal(a["idx"][:B * k], idx)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["normal", "zeros", "ties"])
def test_topk_dw_against_the_reference_and_its_parts(shape, kind):
    B, n_in, n_out, k = shape
    x, dy = _case(shape, kind)
    a, b, c = _layer_pair(n_in, n_out, k)
    outs = []
    for lin in (a, b, c):
        lin.forward(x)
        dx = lin.backward(dy)
        outs.append((dx.copy(), _dense_rows(lin.W.grad, n_out), lin.b.grad.copy(),
                     lin.hits.copy()))
    (dx_a, gw_a, gb_a, h_a), (dx_b, gw_b, gb_b, h_b), (dx_c, _, _, _) = outs
    # the naive references: dx = dy W over the whole dy; dW from the per-example top-k
    W = a.W.data.astype(np.float64)
    ref_dx = dy.astype(np.float64) @ W
    assert_close_sum(dx_a, ref_dx, np.abs(dy.astype(np.float64)) @ np.abs(W), n_out, "dx")
    idx, val = ref_topk_rows(dy, k)
    _, rows, rvalues, _, absvalues = ref_sparse_backward(x, a.W.data, idx, val)
    ref_gw = np.zeros((n_out, n_in))
    ref_gw[rows] = rvalues
    absgw = np.zeros((n_out, n_in))
    absgw[rows] = absvalues
    assert_close_sum(gw_a, ref_gw, absgw, B, "dW")
    np.testing.assert_array_equal(h_a, ref_hits(idx, val, n_out))
    # and bit for bit the kernels of the modes it is made of
    assert dx_a.tobytes() == dx_c.tobytes()
    assert gw_a.tobytes() == gw_b.tobytes()
    assert gb_a.tobytes() == gb_b.tobytes()
    np.testing.assert_array_equal(h_a, h_b)
    assert a.seen == b.seen == B


@pytest.mark.parametrize("mode", EXACT_DX)
@pytest.mark.parametrize("shape", [(64, 300, 500, 20), (128, 400, 300, 100), (3, 7, 11, 2)])
def test_exact_dx_modes_are_thread_independent(shape, mode):
    B, n_in, n_out, k = shape
    rng = np.random.default_rng(7)
    x = rng.standard_normal((B, n_in)).astype(np.float32)
    dy = rng.standard_normal((B, n_out)).astype(np.float32)
    got = []
    old = mp.get_num_threads()
    try:
        for t in (1, 2):
            mp.set_num_threads(t)
            lin = nn.Linear(n_in, n_out, k=k, mode=mode, seed=2)
            lin.forward(x)
            dx = lin.backward(dy)
            got.append((dx.tobytes(), _dense_rows(lin.W.grad, n_out).tobytes()))
    finally:
        mp.set_num_threads(old)
    assert got[0] == got[1]


def test_batch_dw_differs_from_topk_dw_in_training():
    a = _train(True, 6, mode="batch_dw")
    b = _train(True, 6, mode="topk_dw")
    assert _state(a)[0][0] != _state(b)[0][0]


def test_topk_dw_first_layer_is_topk():
    """A layer that computes no input gradient (an MLP's first) is mode topk."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 12)).astype(np.float32)
    dy = rng.standard_normal((5, 30)).astype(np.float32)
    a = nn.Linear(12, 30, k=4, mode="topk_dw", seed=4, needs_input_grad=False)
    b = nn.Linear(12, 30, k=4, mode="topk", seed=4, needs_input_grad=False)
    for lin in (a, b):
        lin.forward(x)
        assert lin.backward(dy) is None
    assert a.W.grad.to_dense(30).tobytes() == b.W.grad.to_dense(30).tobytes()


def _train(use_fused, k, threads=2, opt_cls=optim.Adam, kw=None, dropout=0.0, batch=7,
           sizes=(24, 40, 32, 5), mode=None):
    data = blobs(sizes[0], sizes[-1], n_train=61, seed=3)
    old = mp.get_num_threads()
    mp.set_num_threads(threads)
    try:
        model = nn.MLP(list(sizes), k=k, dropout=dropout, seed=3, mode=mode)
        opt = opt_cls(model.parameters(), **(kw or {}))
        tr = Trainer(model, opt, data, batch_size=batch, epochs=2, progress=False,
                     fused=use_fused)
        tr.fit()
    finally:
        mp.set_num_threads(old)
    return tr


def _state(tr):
    out = [p.data.tobytes() for p in tr.model.parameters()]
    for p in tr.model.parameters():
        out += [a.tobytes() for a in tr.optimizer.state[id(p)]["arrays"]]
    return out, [r["train_loss"] for r in tr.history]


@pytest.mark.parametrize("mode", EXACT_DX)
@pytest.mark.parametrize("k", [6, 12])
@pytest.mark.parametrize("opt_cls, kw", [(optim.Adam, {}), (optim.AdaGrad, dict(lr=0.05)),
                                         (optim.SGD, dict(lr=0.05, momentum=0.9))])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fused_exact_dx_modes_are_bit_identical_to_the_module_path(k, opt_cls, kw, dropout,
                                                                   mode):
    a = _train(True, k, opt_cls=opt_cls, kw=kw, dropout=dropout, mode=mode)
    b = _train(False, k, opt_cls=opt_cls, kw=kw, dropout=dropout, mode=mode)
    assert a.step_path == "fused" and b.step_path == "modules"
    assert a.model.config["mode"] == mode
    assert _state(a) == _state(b)


@pytest.mark.parametrize("mode", EXACT_DX)
def test_fused_exact_dx_modes_thread_independent_and_differ_from_topk(mode):
    a = _train(True, 6, threads=1, mode=mode)
    b = _train(True, 6, threads=2, mode=mode)
    assert _state(a) == _state(b)
    data = blobs(24, 5, n_train=61, seed=3)
    model = nn.MLP([24, 40, 32, 5], k=6, mode="topk", seed=3)
    tr = Trainer(model, optim.Adam(model.parameters()), data, batch_size=7, epochs=2,
                 progress=False)
    tr.fit()
    # the input gradient differs, so the first layer's weights do
    assert _state(tr)[0][0] != _state(a)[0][0]


def test_batch_selection_plan_errors():
    from meprop_cpu import _core
    with pytest.raises(ValueError, match="needs exact_dx"):
        _core.LinearBackward(4, 8, 2, False, False, True, True, False, 4, 1)
    with pytest.raises(ValueError, match="exclude each other"):
        _core.LinearBackward(4, 8, 2, True, True, True, True, False, 4, 1)
    with pytest.raises(ValueError, match="batch \\* n_out < 2\\^31"):   # checked before allocating
        _core.LinearBackward(4, 2**21, 1, False, True, True, True, False, 2**11, 1)
    lin = nn.Linear(6, 9, k=2, mode="batch_dw", seed=0)
    with pytest.raises(ValueError, match="keeps no per-example selection"):
        lin.selection(3)
