"""Layers and models against naive numpy references."""
import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import nn
from meprop_cpu.kernels import RowGrad


def _data(B, n, seed=0, classes=5):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, n)).astype(np.float32),
            rng.integers(0, classes, B).astype(np.int64))


def _grads(model, x, y):
    loss = nn.SoftmaxCrossEntropy()
    out = model.forward(x)
    val = loss(out, y)
    model.backward(loss.backward())
    res = {}
    for name, p in model.named_parameters():
        g = p.grad
        res[name] = g.to_dense(p.shape[0]) if isinstance(g, RowGrad) else np.array(g)
    return val, res


def _topk_mask(dy, k):
    """Naive per-row mask of the k largest |dy| (ties: lower index)."""
    mask = np.zeros(dy.shape, dtype=bool)
    for b in range(dy.shape[0]):
        order = sorted(range(dy.shape[1]), key=lambda j: (-abs(float(dy[b, j])), j))
        mask[b, order[:k]] = True
    return mask


def _reference_grads(model, x, y, mask_fn):
    """Naive forward/backward of an MLP (Linear/ReLU/Tanh), masking each sparse
    layer's output gradient with mask_fn(dy, k) before the dense products."""
    acts = [x.astype(np.float64)]
    layers = model.modules
    for m in layers:
        a = acts[-1]
        if isinstance(m, nn.Linear):
            acts.append(a @ m.W.data.astype(np.float64).T + m.b.data)
        elif isinstance(m, nn.ReLU):
            acts.append(np.maximum(a, 0))
        elif isinstance(m, nn.Tanh):
            acts.append(np.tanh(a))
    z = acts[-1]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = p.copy()
    d[np.arange(len(y)), y] -= 1
    d /= len(y)
    grads = {}
    for i in reversed(range(len(layers))):
        m = layers[i]
        a_in = acts[i]
        if isinstance(m, nn.Linear):
            grads[f"{i}.b"] = d.sum(0)  # the bias always takes the full gradient
            if m.sparse:
                d = np.where(mask_fn(d.astype(np.float32), m.k), d, 0.0)
            grads[f"{i}.W"] = d.T @ a_in
            d = d @ m.W.data.astype(np.float64)
        elif isinstance(m, nn.ReLU):
            d = d * (a_in > 0)
        elif isinstance(m, nn.Tanh):
            d = d * (1 - np.tanh(a_in) ** 2)
    return grads


def test_finite_difference_dense_mlp():
    x, y = _data(6, 7, seed=1, classes=4)
    model = nn.MLP([7, 9, 8, 4], k=None, activation="tanh", seed=3)
    _, g = _grads(model, x, y)
    loss = nn.SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    for name, p in model.named_parameters():
        for _ in range(4):
            ix = tuple(rng.integers(0, s) for s in p.shape)
            old = p.data[ix]
            h = 1e-2
            p.data[ix] = old + h
            lp = loss(model.forward(x), y)
            p.data[ix] = old - h
            lm = loss(model.forward(x), y)
            p.data[ix] = old
            fd = (lp - lm) / (2 * h)
            assert abs(fd - g[name][ix]) <= 2e-3 + 2e-2 * abs(fd), (name, ix, fd, g[name][ix])


def test_meprop_with_k_at_width_equals_dense_exactly():
    x, y = _data(12, 20)
    dense = nn.MLP([20, 15, 15, 5], k=None, seed=7)
    full_k = nn.MLP([20, 15, 15, 5], k=15, seed=7)
    big_k = nn.MLP([20, 15, 15, 5], k=1000, seed=7)
    _, gd = _grads(dense, x, y)
    for m in (full_k, big_k):
        assert not any(l.sparse for l in m.linears)
        _, g = _grads(m, x, y)
        for name in gd:
            assert np.array_equal(gd[name], g[name]), name


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("B", [1, 5, 16])
def test_topk_mlp_gradient_equals_masked_reference(k, B):
    x, y = _data(B, 13, seed=k + B)
    model = nn.MLP([13, 11, 9, 5], k=k, mode="topk", seed=k)
    _, g = _grads(model, x, y)
    ref = _reference_grads(model, x, y, _topk_mask)
    for name in ref:
        np.testing.assert_allclose(g[name], ref[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_topk_output_option_sparsifies_last_layer():
    model = nn.MLP([10, 8, 6], k=2, topk_output=True, seed=0)
    assert all(l.sparse for l in model.linears)
    model = nn.MLP([10, 8, 6], k=2, seed=0)
    assert [l.sparse for l in model.linears] == [True, False]


def test_unified_mlp_gradient_equals_reference():
    def unified_mask(dy, k):
        s = np.abs(dy).sum(0)
        order = sorted(range(dy.shape[1]), key=lambda j: (-float(s[j]), j))
        mask = np.zeros(dy.shape, dtype=bool)
        mask[:, order[:k]] = True
        return mask

    x, y = _data(9, 12, seed=5, classes=4)
    model = nn.MLP([12, 10, 10, 4], k=3, mode="unified", seed=2)
    _, g = _grads(model, x, y)
    ref = _reference_grads(model, x, y, unified_mask)
    for name in ref:
        np.testing.assert_allclose(g[name], ref[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_random_mode_keeps_k_entries_and_is_seeded():
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal((4, 10)).astype(np.float32)
    grads = []
    for _ in range(2):
        lin = nn.Linear(6, 10, k=3, mode="random", seed=11)
        lin.forward(x)
        dx = lin.backward(dy).copy()
        grads.append((dx, lin.W.grad.to_dense(10)))
        # each row of dW has one contribution per example that kept it
        assert lin.W.grad.rows.size <= 10
    assert np.array_equal(grads[0][0], grads[1][0])
    assert np.array_equal(grads[0][1], grads[1][1])
    # a second backward draws a fresh subset
    lin.forward(x)
    dx2 = lin.backward(dy)
    assert not np.array_equal(dx2, grads[0][0])


def test_first_layer_skips_input_gradient():
    model = nn.MLP([8, 6, 3], k=2, seed=0)
    x, y = _data(4, 8, classes=3)
    loss = nn.SoftmaxCrossEntropy()
    loss(model.forward(x), y)
    assert model.backward(loss.backward()) is None
    assert model.linears[0].W.grad is not None


def test_track_hits_counts_selected_nonzero_entries():
    lin = nn.Linear(5, 6, k=2, seed=0)
    lin.track_hits = True
    x = np.ones((3, 5), np.float32)
    lin.forward(x)
    dy = np.array([[0, 5, 0, 1, 0, 0], [0, 0, 0, 0, 0, 2], [3, 3, 0, 0, 0, 0]], np.float32)
    lin.backward(dy)
    # row 0: {1, 3}; row 1: {5} and a zero (not counted); row 2: {0, 1}
    assert lin.hits.tolist() == [1, 2, 0, 1, 0, 1]
    assert lin.seen == 3


def test_dropout_seeded_scaled_and_off_in_eval():
    x = np.ones((200, 50), np.float32)
    d1, d2 = nn.Dropout(0.25, seed=3), nn.Dropout(0.25, seed=3)
    y1, y2 = d1.forward(x), d2.forward(x)
    assert np.array_equal(y1, y2)
    assert set(np.unique(y1).tolist()) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y1 == 0).mean() - 0.25) < 0.03
    assert np.array_equal(d1.backward(x), y1)
    d1.eval()
    assert d1.forward(x) is x


def _splitmix_at(key, i):
    """Draw i of the generator keyed by key, in Python integers (the reference)."""
    m = 2 ** 64
    z = (key + (i + 1) * 0x9E3779B97F4A7C15) % m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % m
    return z ^ (z >> 31)


def test_dropout_uniforms_match_the_reference_generator():
    from meprop_cpu import _core
    for key, counter in ((0, 0), (12345, 7), (2 ** 64 - 1, 2 ** 40 + 3)):
        out = np.empty(37, np.float32)
        _core.uniform_f32(key, counter, out)
        want = [(_splitmix_at(key, (counter + e) % 2 ** 64) >> 40) / 2 ** 24 for e in range(37)]
        assert out.tolist() == want
    big = np.empty(200_000, np.float32)
    _core.uniform_f32(99, 0, big)
    assert big.min() >= 0.0 and big.max() < 1.0
    assert np.all(big * 2 ** 24 == np.floor(big * 2 ** 24))
    assert abs(big.mean() - 0.5) < 0.005 and abs((big < 0.2).mean() - 0.2) < 0.005
    # any split of a stretch of draws gives the same numbers
    parts = [np.empty(n, np.float32) for n in (5, 1000, 3)]
    c = 0
    for part in parts:
        _core.uniform_f32(99, c, part)
        c += part.size
    assert np.array_equal(np.concatenate(parts), big[:1008])
    # split over threads (ranges of 4,096 draws): the same bits
    for nt in (2, 3):
        again = np.empty(200_000 + 17, np.float32)
        _core.uniform_f32(99, 0, again, nt)
        assert np.array_equal(again[:200_000], big)
        tail = np.empty(17, np.float32)
        _core.uniform_f32(99, 200_000, tail)
        assert np.array_equal(again[200_000:], tail)
    with pytest.raises(ValueError, match="nthreads"):
        _core.uniform_f32(99, 0, big, 0)


def test_dropout_state_roundtrip_and_draw_order():
    d = nn.Dropout(0.3, seed=11)
    x = np.ones((7, 13), np.float32)
    d.forward(x)
    st = d.rng_state()
    assert st["counter_rng"] == "splitmix64" and st["counter"] == 7 * 13
    y1 = d.forward(x)
    e = nn.Dropout(0.3, seed=0)
    e.set_rng_state(st)
    assert np.array_equal(e.forward(x), y1) and e.rng_state() == d.rng_state()
    # draw() hands out the same numbers forward uses, in order
    f, g = nn.Dropout(0.3, seed=4), nn.Dropout(0.3, seed=4)
    u = np.empty((7, 13), np.float32)
    f.draw(u)
    assert np.array_equal(g.forward(x), (u >= 0.3) * np.float32(1 / 0.7))
    assert nn.Dropout(0.3, seed=4).rng_state() != nn.Dropout(0.3, seed=5).rng_state()


def test_dropout_resumes_a_numpy_generator_state():
    """Checkpoints written before meprop_cpu 0.2.0 hold a numpy PCG64 state per Dropout:
    it is taken as it is, and the draws continue that numpy stream."""
    old = np.random.default_rng(8)
    old.random(50, dtype=np.float32)
    d = nn.Dropout(0.25, seed=1)
    d.set_rng_state(old.bit_generator.state)
    x = np.ones((4, 9), np.float32)
    want = (old.random((4, 9), dtype=np.float32) >= 0.25) * np.float32(1 / 0.75)
    assert np.array_equal(d.forward(x), want)
    assert d.rng_state() == old.bit_generator.state
    for bad in ({"bit_generator": "Nope"}, {"counter_rng": "splitmix64", "key": -1, "counter": 0},
                {"counter_rng": "splitmix64", "key": 1, "counter": 2 ** 64}, {}):
        with pytest.raises(ValueError, match="Dropout.set_rng_state"):
            nn.Dropout(0.1).set_rng_state(bad)
    with pytest.raises(TypeError, match="Dropout.set_rng_state"):
        nn.Dropout(0.1).set_rng_state([1, 2])


def test_state_dict_roundtrip_and_mismatch():
    a = nn.MLP([6, 5, 3], seed=1)
    b = nn.MLP([6, 5, 3], seed=2)
    b.load_state_dict(a.state_dict())
    x, _ = _data(4, 6)
    assert np.array_equal(a.logits(x), b.logits(x))
    c = nn.MLP([6, 7, 3], seed=1)
    with pytest.raises(ValueError, match="another architecture"):
        c.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="keys"):
        nn.MLP([6, 5, 5, 3]).load_state_dict(a.state_dict())


def test_predict_and_accuracy():
    model = nn.MLP([4, 3], seed=0)
    x = np.eye(4, dtype=np.float32)
    pred = model.predict(x, batch_size=3)
    assert pred.shape == (4,)
    assert model.accuracy(x, pred) == 100.0
    assert model.training  # restored


def test_same_result_for_one_and_two_threads():
    x, y = _data(64, 300, seed=3)
    res = []
    for nt in (1, 2):
        old = mp.get_num_threads()
        mp.set_num_threads(nt)
        try:
            model = nn.MLP([300, 400, 400, 5], k=30, seed=4)
            res.append(_grads(model, x, y)[1])
        finally:
            mp.set_num_threads(old)
    for name in res[0]:
        assert np.array_equal(res[0][name], res[1][name]), name


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(n_in=0, n_out=3), ValueError, "n_in"),
    (dict(n_in=3, n_out=2.5), TypeError, "n_out"),
    (dict(n_in=3, n_out=4, k=0), ValueError, "k"),
    (dict(n_in=3, n_out=4, k=-2), ValueError, "k"),
    (dict(n_in=3, n_out=4, k=2.0), TypeError, "k"),
    (dict(n_in=3, n_out=4, k=True), TypeError, "k"),
    (dict(n_in=3, n_out=4, mode="fast"), ValueError, "mode"),
    (dict(n_in=3, n_out=4, init="he"), ValueError, "init"),
])
def test_linear_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        nn.Linear(**kwargs)


def test_forward_backward_bad_input():
    lin = nn.Linear(4, 3, k=2)
    with pytest.raises(TypeError, match="float32"):
        lin.forward(np.ones((2, 4)))
    with pytest.raises(ValueError, match="4 columns"):
        lin.forward(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        lin.forward(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="empty"):
        lin.forward(np.ones((0, 4), np.float32))
    with pytest.raises(RuntimeError, match="forward"):
        nn.Linear(4, 3).backward(np.ones((2, 3), np.float32))
    lin.forward(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="rows"):
        lin.backward(np.ones((3, 3), np.float32))
    bad = np.ones((2, 3), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(FloatingPointError, match="NaN"):
        lin.backward(bad)


def test_loss_bad_labels():
    loss = nn.SoftmaxCrossEntropy()
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="labels"):
        loss(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="y must be 1-D"):
        loss(logits, np.array([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        loss(logits, np.array([0.0, 1.0, 2.0]))


def test_mlp_bad_arguments():
    with pytest.raises(ValueError, match="sizes"):
        nn.MLP([10])
    with pytest.raises(ValueError, match="activation"):
        nn.MLP([3, 2], activation="gelu")
    with pytest.raises(ValueError, match="Dropout"):
        nn.MLP([3, 4, 2], dropout=1.0)
    with pytest.raises(ValueError, match="mode"):
        nn.MLP([3, 4, 2], mode="x")


# ------------------------------------------- ReLU and the loss against numpy

@pytest.mark.parametrize("B,C", [(1, 1), (1, 10), (10, 10), (7, 33), (100, 10)])
def test_softmax_cross_entropy_matches_numpy(B, C):
    rng = np.random.default_rng(B * 100 + C)
    logits = (rng.standard_normal((B, C)) * 30).astype(np.float32)   # large: the max shift matters
    y = rng.integers(0, C, B)
    loss_fn = nn.SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, y)
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    ref = float(np.mean(-np.log(p[np.arange(B), y])))
    assert loss == pytest.approx(ref, rel=1e-5, abs=1e-6)
    d = loss_fn.backward()
    p[np.arange(B), y] -= 1.0
    assert d.dtype == np.float32 and d.shape == (B, C)
    np.testing.assert_allclose(d, p / B, rtol=1e-5, atol=1e-7)
    assert not np.shares_memory(d, loss_fn.backward())   # a new array each time
    # int32 labels give the same result
    assert loss_fn.forward(logits, y.astype(np.int32)) == loss


def test_softmax_cross_entropy_non_finite_logit_gives_non_finite_loss():
    logits = np.zeros((2, 3), np.float32)
    logits[1, 2] = np.nan
    assert not np.isfinite(nn.SoftmaxCrossEntropy().forward(logits, np.array([0, 1])))


def test_relu_matches_numpy_and_keeps_nan():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((13, 37)).astype(np.float32)
    x[0, :3] = [np.nan, -0.0, 0.0]
    r = nn.ReLU()
    y = r.forward(x)
    ref = np.maximum(x, 0)
    assert np.isnan(y[0, 0]) and np.array_equal(y[1:], ref[1:]) and np.array_equal(y[0, 1:], ref[0, 1:])
    dy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(r.backward(dy), np.where(x > 0, dy, 0).astype(np.float32))
    with pytest.raises(ValueError, match="dy has shape"):
        r.backward(dy[:5])
    r.eval()
    r.forward(x)
    with pytest.raises(RuntimeError, match="without a forward pass in training mode"):
        r.backward(dy)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (1000, 500)])
def test_cube_matches_the_numpy_expressions_bit_for_bit(shape):
    """The C cube (forward and backward) gives numpy's bits, at any thread count,
    NaN and Inf included; other inputs take the numpy expressions."""
    rng = np.random.default_rng(shape[0])
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    x.flat[0] = np.nan
    if x.size > 2:
        x.flat[1], x.flat[2] = np.inf, -1e13          # overflow to -inf in the cube
    with np.errstate(over="ignore", invalid="ignore"):
        want_y, want_dx = x * x * x, dy * (3.0 * x * x)
    old = mp.get_num_threads()
    try:
        for nt in (1, 2, 3):
            mp.set_num_threads(nt)
            c = nn.Cube()
            np.testing.assert_array_equal(c.forward(x), want_y)
            np.testing.assert_array_equal(c.backward(dy), want_dx)
    finally:
        mp.set_num_threads(old)
    c = nn.Cube()
    with np.errstate(over="ignore", invalid="ignore"):
        xt = np.asfortranarray(x)                          # not C-contiguous: numpy path
        np.testing.assert_array_equal(c.forward(xt), want_y)
        np.testing.assert_array_equal(c.backward(dy), want_dx)
        assert c.forward(x.astype(np.float64)).dtype == np.float64


def test_a_trained_model_copies_and_pickles():
    """The backward's C buffers are left out of copies and pickles: a model that
    has run a backward deep-copies and round-trips through pickle, and the copy
    trains on (bit-identical to the original from there)."""
    import copy
    import pickle
    x = np.random.default_rng(0).random((6, 8), dtype=np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])

    def step(m):
        loss = nn.SoftmaxCrossEntropy()
        loss.forward(m.forward(x), y)
        m.backward(loss.backward())
        return [p.grad.to_dense(p.data.shape[0]) if hasattr(p.grad, "to_dense") else p.grad
                for p in m.parameters()]

    for kw in (dict(k=2), dict(k=2, mode="topk"), dict(k=None), dict(k=2, mode="unified")):
        m = nn.MLP([8, 6, 3], seed=1, **kw)
        step(m)
        for twin in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
            for a, b in zip(step(m), step(twin)):
                assert np.array_equal(a, b)
