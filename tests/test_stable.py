"""The default meProp mode "topk_dw": per-example top-k for the weight
gradient, the exact input gradient for the layer below. Checked against the
naive references (tests/reference.py), against the kernels of the modes it is
made of (the weight gradient and meSimp counts of mode "topk", the input
gradient of mode "dense", bit for bit), for 1 and 2 threads, on the AVX-512
and the portable kernels, and the fused step against the module path."""
import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import nn, optim
from meprop_cpu.train import Trainer

from reference import assert_close_sum, ref_hits, ref_sparse_backward, ref_topk_rows
from toydata import blobs


@pytest.fixture(autouse=True, scope="module", params=["native", "portable"])
def simd_path(request):
    from meprop_cpu import _core
    old = _core.set_simd_limit(0 if request.param == "portable" else 2)
    try:
        yield request.param
    finally:
        _core.set_simd_limit(old)


def _layer_pair(n_in, n_out, k, seed=1):
    """Layers of mode topk_dw, topk and dense with the same weights."""
    a = nn.Linear(n_in, n_out, k=k, mode="topk_dw", seed=seed)
    b = nn.Linear(n_in, n_out, k=k, mode="topk", seed=seed)
    c = nn.Linear(n_in, n_out, k=None, mode="dense", seed=seed)
    for lin in (a, b, c):
        lin.track_hits = True
    return a, b, c


def _dense_rows(g, n_out):
    return g.to_dense(n_out)


def test_default_mode_is_topk_dw():
    assert nn.DEFAULT_MODE == "topk_dw"
    assert nn.Linear(4, 8, k=2).mode == "topk_dw"
    m = nn.MLP([6, 8, 7, 3], k=2)
    assert m.config["mode"] == "topk_dw"
    assert [lin.mode for lin in m.linears] == ["topk_dw"] * 3
    assert nn.MLP([6, 8, 3], k=2, mode="topk").linears[0].mode == "topk"
    with pytest.raises(ValueError, match="mode must be one of"):
        nn.Linear(4, 8, k=2, mode="exact")


# (B, n_in, n_out, k): the gather backward (4 k <= n_out) and the masked one
SHAPES = [(7, 13, 40, 3), (1, 5, 9, 2), (10, 50, 40, 10), (6, 30, 40, 11), (32, 300, 500, 20),
          (64, 200, 300, 100)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["normal", "zeros", "ties"])
def test_topk_dw_against_the_reference_and_its_parts(shape, kind):
    B, n_in, n_out, k = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((B, n_in)).astype(np.float32)
    if kind == "normal":
        dy = rng.standard_normal((B, n_out))
    elif kind == "zeros":
        dy = rng.standard_normal((B, n_out)) * (rng.random((B, n_out)) < 0.3)
    else:
        dy = rng.integers(-2, 3, size=(B, n_out)).astype(np.float64)
    dy = dy.astype(np.float32)
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


@pytest.mark.parametrize("shape", [(64, 300, 500, 20), (128, 400, 300, 100), (3, 7, 11, 2)])
def test_topk_dw_is_thread_independent(shape):
    B, n_in, n_out, k = shape
    rng = np.random.default_rng(7)
    x = rng.standard_normal((B, n_in)).astype(np.float32)
    dy = rng.standard_normal((B, n_out)).astype(np.float32)
    got = []
    old = mp.get_num_threads()
    try:
        for t in (1, 2):
            mp.set_num_threads(t)
            lin = nn.Linear(n_in, n_out, k=k, mode="topk_dw", seed=2)
            lin.forward(x)
            dx = lin.backward(dy)
            got.append((dx.tobytes(), _dense_rows(lin.W.grad, n_out).tobytes()))
    finally:
        mp.set_num_threads(old)
    assert got[0] == got[1]


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
           sizes=(24, 40, 32, 5)):
    data = blobs(sizes[0], sizes[-1], n_train=61, seed=3)
    old = mp.get_num_threads()
    mp.set_num_threads(threads)
    try:
        model = nn.MLP(list(sizes), k=k, dropout=dropout, seed=3)
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


@pytest.mark.parametrize("k", [6, 12])
@pytest.mark.parametrize("opt_cls, kw", [(optim.Adam, {}), (optim.AdaGrad, dict(lr=0.05)),
                                         (optim.SGD, dict(lr=0.05, momentum=0.9))])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fused_topk_dw_is_bit_identical_to_the_module_path(k, opt_cls, kw, dropout):
    a = _train(True, k, opt_cls=opt_cls, kw=kw, dropout=dropout)
    b = _train(False, k, opt_cls=opt_cls, kw=kw, dropout=dropout)
    assert a.step_path == "fused" and b.step_path == "modules"
    assert a.model.config["mode"] == "topk_dw"
    assert _state(a) == _state(b)


def test_fused_topk_dw_thread_independent_and_differs_from_topk():
    a = _train(True, 6, threads=1)
    b = _train(True, 6, threads=2)
    assert _state(a) == _state(b)
    data = blobs(24, 5, n_train=61, seed=3)
    model = nn.MLP([24, 40, 32, 5], k=6, mode="topk", seed=3)
    tr = Trainer(model, optim.Adam(model.parameters()), data, batch_size=7, epochs=2,
                 progress=False)
    tr.fit()
    # the input gradient differs, so the first layer's weights do
    assert _state(tr)[0][0] != _state(a)[0][0]
