"""The parser's first layer computed once per distinct id (include/meprop/featprod.h,
meprop_cpu.parsing.model.DistinctFirstLayer) against naive references."""
import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import _core
from meprop_cpu.parsing import transition as tr
from meprop_cpu.parsing.model import ParserNet

N_WORDS, N_TAGS, N_LABELS = 300, 20, 10


def _batch(B, seed=0, null_heavy=True):
    """Feature rows with the shape of real ones: many repeats, NULL-heavy children."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.integers(0, N_WORDS, (B, 18)), rng.integers(0, N_TAGS, (B, 18)),
                        rng.integers(0, N_LABELS + 1, (B, 12))], 1).astype(np.int32)
    if null_heavy:
        X[:, 6:18] = np.where(rng.random((B, 12)) < 0.7, 0, X[:, 6:18])
        X[:, 40:48] = np.where(rng.random((B, 8)) < 0.7, 0, X[:, 40:48])
    return X


def _net(k=None, mode=None, distinct=True, hidden=(64, 32), dim=8, seed=3):
    return ParserNet(N_WORDS, N_TAGS, N_LABELS, hidden=hidden, dim=dim, k=k, mode=mode,
                     seed=seed, distinct=distinct)


def _reference_first_layer(net, X, dh):
    """float64: pre-activation h = b + x W^T, and the gradients dW = dh^T x,
    db = sum dh, dx = dh W scattered into the three tables."""
    emb, lin = net.embedding, net.linears[0]
    d = emb.dim
    parts = []
    for (a, b), E in zip(((0, 18), (18, 36), (36, 48)), emb.tables):
        parts.append(E.data.astype(np.float64)[X[:, a:b]])
    x = np.concatenate(parts, 1).reshape(X.shape[0], 48 * d)
    W = lin.W.data.astype(np.float64)
    h = x @ W.T + lin.b.data
    dh = dh.astype(np.float64)
    dx = (dh @ W).reshape(X.shape[0], 48, d)
    demb = []
    for (a, b), E in zip(((0, 18), (18, 36), (36, 48)), emb.tables):
        g = np.zeros(E.data.shape)
        np.add.at(g, X[:, a:b], dx[:, a:b])
        demb.append(g)
    return h, dh.T @ x, dh.sum(0), demb


def _close(got, want, tol=2e-5):
    scale = max(np.abs(want).max(), 1e-30)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale)


def _first_layer_run(net, X, dh):
    h = net.first.forward(X, True)
    net.first.backward(dh)
    return h


def test_distinct_ids_kernel_matches_numpy():
    X = _batch(200, seed=1)
    net = _net()
    first = net.first
    fp = first._products()
    B, nq = X.shape
    uniq, uoff = np.empty(B * nq, np.int32), np.empty(nq + 1, np.int64)
    inv, mode, cnt = np.empty((B, nq), np.int32), np.empty(nq, np.int32), np.empty(B * nq, np.int32)
    U = fp.distinct(X, first._mark, cnt, uniq, uoff, inv, mode)
    assert U == uoff[-1] == sum(len(np.unique(X[:, q])) for q in range(nq))
    assert (first._mark == -1).all()                      # scratch restored
    for q in range(nq):
        ids = uniq[uoff[q]:uoff[q + 1]]
        _, first_use = np.unique(X[:, q], return_index=True)
        assert ids.tolist() == X[np.sort(first_use), q].tolist()     # order of first use
        np.testing.assert_array_equal(uniq[inv[:, q]], X[:, q])
        counts = np.array([(X[:, q] == v).sum() for v in ids])
        assert mode[q] == uoff[q] + int(np.argmax(counts))            # first most used
    bad = X.copy()
    bad[7, 20] = N_TAGS                                   # a POS id out of range
    assert fp.distinct(bad, first._mark, cnt, uniq, uoff, inv, mode) == -1
    assert (first._mark == -1).all()


@pytest.mark.parametrize("B", [1, 3, 257])
def test_dense_first_layer_matches_the_reference(B):
    net = _net()
    X = _batch(B, seed=B)
    dh = np.random.default_rng(B).standard_normal((B, 64)).astype(np.float32)
    h = _first_layer_run(net, X, dh)
    rh, rdw, rdb, rdemb = _reference_first_layer(net, X, dh)
    _close(h, rh)
    lin = net.linears[0]
    _close(lin.W.grad.to_dense(lin.n_out), rdw)
    _close(lin.b.grad, rdb)
    for (a, b), E, want in zip(((0, 18), (18, 36), (36, 48)), net.embedding.tables, rdemb):
        assert E.grad.rows.tolist() == np.unique(X[:, a:b]).tolist()    # row-sparse
        _close(E.grad.to_dense(E.data.shape[0]), want)


@pytest.mark.parametrize("mode", ["topk_dw", "batch_dw", "topk", "unified", "random"])
def test_meprop_first_layer_matches_the_plain_one(mode):
    """Every mode: the same forward, weight / bias gradients, counts and embedding
    gradients as the plain layer (distinct=False) to float rounding."""
    X = _batch(120, seed=4)
    dh = np.random.default_rng(5).standard_normal((120, 64)).astype(np.float32)
    nets = [_net(k=6, mode=mode, distinct=d) for d in (True, False)]
    for n in nets:
        n.linears[0].track_hits = True
    h_d = _first_layer_run(nets[0], X, dh)
    h_p = nets[1].modules[1].forward(nets[1].embedding.forward(X))
    nets[1].embedding.backward(nets[1].modules[1].backward(dh))
    _close(h_d, h_p)
    a, b = nets[0].linears[0], nets[1].linears[0]
    _close(a.W.grad.to_dense(a.n_out), b.W.grad.to_dense(b.n_out))
    _close(a.b.grad, b.b.grad)
    assert a.hits.tolist() == b.hits.tolist() and a.seen == b.seen == 120
    for Ea, Eb in zip(nets[0].embedding.tables, nets[1].embedding.tables):
        _close(Ea.grad.to_dense(Ea.data.shape[0]), Eb.grad.to_dense(Eb.data.shape[0]))
    path = nets[0].first._path()
    assert path == {"topk_dw": "exact", "batch_dw": "exact", "topk": "pairs"}.get(mode, "plain")


def test_topk_input_gradient_uses_only_the_selected_pairs():
    net = _net(k=5, mode="topk")
    X = _batch(50, seed=6)
    dh = np.random.default_rng(6).standard_normal((50, 64)).astype(np.float32)
    _first_layer_run(net, X, dh)
    idx, val = net.linears[0].selection(50)
    masked = np.zeros_like(dh)
    np.put_along_axis(masked, idx, val, axis=1)
    *_, rdemb = _reference_first_layer(net, X, masked)
    for E, want in zip(net.embedding.tables, rdemb):
        _close(E.grad.to_dense(E.data.shape[0]), want)


@pytest.mark.parametrize("k, mode", [(None, None), (6, "topk_dw"), (6, "topk")])
def test_whole_network_bits_do_not_depend_on_threads(k, mode):
    X = _batch(300, seed=7)
    dy = np.random.default_rng(7).standard_normal((300, tr.n_transitions(N_LABELS)))
    dy = dy.astype(np.float32)
    results = []
    old = mp.get_num_threads()
    try:
        for nt in (1, 2, 3):
            mp.set_num_threads(nt)
            net = _net(k=k, mode=mode)
            out = net.forward(X)
            net.backward(dy)
            grads = [p.grad.to_dense(p.data.shape[0]) if hasattr(p.grad, "to_dense") else p.grad
                     for p in net.parameters()]
            results.append([out] + grads)
    finally:
        mp.set_num_threads(old)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_network_scores_match_the_plain_network_and_follow_new_weights():
    X = _batch(80, seed=8)
    a, b = _net(), _net(distinct=False)
    _close(a.scores(X), b.scores(X), 1e-4)
    # replaced arrays (load_state_dict, meSimp) are picked up on the next call
    c = _net(seed=11)
    a.load_state_dict(c.state_dict())
    b.load_state_dict(c.state_dict())
    _close(a.scores(X), b.scores(X), 1e-4)
    assert a.config["distinct"] is True and b.config["distinct"] is False


def test_bad_input_and_misuse_are_clear_errors():
    net = _net()
    with pytest.raises(RuntimeError, match="without a forward"):
        net.first.backward(np.zeros((2, 64), np.float32))
    X = _batch(4)
    X[1, 40] = N_LABELS + 1                      # a label id out of range
    with pytest.raises(ValueError, match="E_label"):
        net.forward(X)
    net.forward(_batch(4))
    with pytest.raises(ValueError, match="dh must be float32"):
        net.first.backward(np.zeros((3, 64), np.float32))
    net.forward(_batch(4))
    dy = np.zeros((4, tr.n_transitions(N_LABELS)), np.float32)
    dy[0, 0] = np.nan
    with pytest.raises(FloatingPointError, match="NaN"):
        net.backward(dy)


def test_mesimp_shrinks_through_the_distinct_layer():
    X = _batch(60, seed=9)
    net = _net(k=6, mode="topk_dw")
    lin = net.linears[0]
    keep = np.arange(0, 64, 2)
    net_plain = _net(k=6, mode="topk_dw", distinct=False)
    for n in (net, net_plain):
        l0, l1 = n.linears[0], n.linears[1]
        l0.W.data = np.ascontiguousarray(l0.W.data[keep])
        l0.b.data = np.ascontiguousarray(l0.b.data[keep])
        l1.W.data = np.ascontiguousarray(l1.W.data[:, keep])
    assert lin.n_out == 32
    _close(net.forward(X), net_plain.forward(X), 1e-4)


def test_regroup_round_trip():
    W = np.random.default_rng(0).standard_normal((7, 5 * 3)).astype(np.float32)
    Wp = np.empty((5, 7, 3), np.float32)
    _core.feat_regroup(W, Wp, True, 2)
    np.testing.assert_array_equal(Wp, W.reshape(7, 5, 3).transpose(1, 0, 2))
    back = np.zeros_like(W)
    _core.feat_regroup(back, Wp, False, 2)
    np.testing.assert_array_equal(back, W)
