"""The fused training step (meprop_cpu.fused, include/meprop/step.h) against
the module path it replaces: bit-identical weights, optimizer state, step
counts, activeness counts and losses; the right fallbacks; clear errors."""
import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import _core, fused, nn, optim
from meprop_cpu.simplify import CycleSchedule, Simplifier
from meprop_cpu.train import Trainer

from toydata import blobs

SIZES = [24, 40, 32, 5]


def _train(use_fused, opt_cls=optim.Adam, kw=None, k=6, batch=7, epochs=2, threads=2,
           sizes=SIZES, mode="topk", dropout=0.0, callbacks=(), make_cb=None, seed=3, n_train=61):
    data = blobs(sizes[0], sizes[-1], n_train=n_train, seed=seed)
    old = mp.get_num_threads()
    mp.set_num_threads(threads)
    try:
        model = nn.MLP(sizes, k=k, mode=mode, dropout=dropout, seed=seed)
        opt = opt_cls(model.parameters(), **(kw or {}))
        cbs = list(callbacks)
        if make_cb is not None:
            cbs.append(make_cb(model, opt))
        tr = Trainer(model, opt, data, batch_size=batch, epochs=epochs, progress=False,
                     callbacks=cbs, fused=use_fused)
        tr.fit()
    finally:
        mp.set_num_threads(old)
    return tr


def _assert_same(a, b):
    """Two trainers ended in bit-identical states."""
    pa, pb = a.model.parameters(), b.model.parameters()
    assert [p.data.shape for p in pa] == [p.data.shape for p in pb]
    for p, q in zip(pa, pb):
        assert p.data.tobytes() == q.data.tobytes(), p.name
        sa, sb = a.optimizer.state[id(p)], b.optimizer.state[id(q)]
        assert sa["step"] == sb["step"]
        assert len(sa["arrays"]) == len(sb["arrays"])
        for x, y in zip(sa["arrays"], sb["arrays"]):
            assert x.tobytes() == y.tobytes()
    assert a.optimizer.steps == b.optimizer.steps
    for la, lb in zip(a.model.linears, b.model.linears):
        assert np.array_equal(la.hits, lb.hits) and la.seen == lb.seen
    losses = [(r["event"], r["train_loss"], r["dev_acc"]) for r in a.history]
    assert losses == [(r["event"], r["train_loss"], r["dev_acc"]) for r in b.history]


@pytest.mark.parametrize("opt_cls, kw", [
    (optim.Adam, {}),
    (optim.Adam, dict(lr=3e-3, clip=0.05, weight_decay=1e-3)),
    (optim.SGD, dict(lr=0.1)),
    (optim.SGD, dict(lr=0.05, momentum=0.9)),
    (optim.AdaGrad, dict(lr=0.05, clip=0.1, weight_decay=1e-3))])
@pytest.mark.parametrize("k", [6, 12, None])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", ["topk", "topk_dw"])
def test_fused_trainer_is_bit_identical_to_the_module_path(opt_cls, kw, k, threads, mode):
    """61 examples in batches of 7: the last batch has 5 rows. k=6 takes the
    gather backward in both hidden layers, k=12 the masked dense one (4 k > 40, 32)."""
    a = _train(True, opt_cls, kw, k=k, threads=threads, mode=mode)
    b = _train(False, opt_cls, kw, k=k, threads=threads, mode=mode)
    assert a.step_path == "fused" and b.step_path == "modules"
    assert a._fused_step.builds == 1
    _assert_same(a, b)


@pytest.mark.parametrize("opt_cls, kw", [(optim.Adam, {}), (optim.SGD, dict(lr=0.05, momentum=0.9)),
                                         (optim.AdaGrad, dict(lr=0.05, clip=0.1))])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fused_unified_topk_is_bit_identical(opt_cls, kw, threads, dropout):
    a = _train(True, opt_cls, kw, k=6, mode="unified", threads=threads, dropout=dropout)
    b = _train(False, opt_cls, kw, k=6, mode="unified", threads=threads, dropout=dropout)
    assert a.step_path == "fused"
    _assert_same(a, b)


def test_fused_unified_topk_with_hits_and_mesimp():
    def make_cb(model, opt):
        return Simplifier(model, opt, prune_rate=0.2, schedule=CycleSchedule(1, 3))
    kw = dict(sizes=[24, 60, 50, 5], k=10, mode="unified", batch=6, epochs=3, make_cb=make_cb)
    a = _train(True, **kw)
    b = _train(False, **kw)
    assert a.step_path == "fused" and a.model.hidden_sizes == b.model.hidden_sizes
    _assert_same(a, b)


def test_fused_step_is_bit_identical_on_the_portable_kernels():
    old = _core.set_simd_limit(0)
    try:
        a = _train(True, k=5)
        b = _train(False, k=5)
    finally:
        _core.set_simd_limit(old)
    _assert_same(a, b)


@pytest.mark.parametrize("k", [40, 100])
def test_fused_step_is_bit_identical_with_parallel_sized_layers(k):
    """Layers large enough that the kernels start an OpenMP team (k=100: the
    masked backward in the 300-wide layer, the gather one in the 400-wide)."""
    kw = dict(sizes=[300, 400, 300, 10], k=k, batch=64, n_train=200, epochs=1)
    a = _train(True, **kw)
    b = _train(False, **kw)
    _assert_same(a, b)


@pytest.mark.parametrize("k", [10, 20])
@pytest.mark.parametrize("mode", ["topk", "topk_dw"])
def test_fused_step_follows_mesimp_compaction_and_optimizer_resets(k, mode):
    """Hit counting, shrinking the layers and the authors' resets: the fused
    step rebuilds after each compaction and stays identical (k=10: gather
    backward until the layers shrink below 4 k; k=20: masked from the start,
    where the fused step counts hits by columns of the masked dy)."""
    def make_cb(model, opt):
        return Simplifier(model, opt, prune_rate=0.2, schedule=CycleSchedule(1, 3))
    kw = dict(sizes=[24, 60, 50, 5], k=k, batch=6, epochs=3, make_cb=make_cb, mode=mode)
    a = _train(True, **kw)
    b = _train(False, **kw)
    assert a.step_path == "fused"
    assert a.model.hidden_sizes == b.model.hidden_sizes
    assert a.model.hidden_sizes != [60, 50]           # it did shrink
    assert a._fused_step.builds > 1
    _assert_same(a, b)


def test_fused_step_picks_up_changes_between_steps():
    """A learning-rate schedule, a full optimizer reset and a thread-count
    change made by a callback reach the fused step."""
    def cb(trainer, epoch, step):
        opt = trainer.optimizer
        opt.lr *= 0.9
        if trainer.global_step == 5:
            opt.reset_state()
        if trainer.global_step == 7:
            mp.set_num_threads(1)
        if trainer.global_step == 11:
            mp.set_num_threads(2)
    a = _train(True, callbacks=[cb])
    b = _train(False, callbacks=[cb])
    assert a._fused_step.builds >= 2
    _assert_same(a, b)


@pytest.mark.parametrize("k", [5, None])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_step_with_dropout_is_bit_identical(k, threads):
    """Dropout draws from each Dropout's own generator in the same order, so
    masks, weights and the generators' states match the module path."""
    a = _train(True, k=k, dropout=0.3, threads=threads)
    b = _train(False, k=k, dropout=0.3, threads=threads)
    assert a.step_path == "fused"
    _assert_same(a, b)
    da = [m for m in a.model.modules if isinstance(m, nn.Dropout)]
    db = [m for m in b.model.modules if isinstance(m, nn.Dropout)]
    assert len(da) == 2 and [d.rng_state() for d in da] == [d.rng_state() for d in db]


def test_fused_step_handles_a_hand_built_sequential():
    """Sequential with a dropout after one hidden layer only, and one of p=0."""
    def build():
        return nn.Sequential(nn.Linear(24, 30, k=5, seed=1, needs_input_grad=False), nn.ReLU(),
                             nn.Dropout(0.25, seed=2), nn.Linear(30, 20, k=4, seed=3),
                             nn.ReLU(), nn.Dropout(0.0), nn.Linear(20, 5, seed=4))
    data = blobs(24, 5, n_train=40)
    X, y = data["train"]
    results = []
    for use_fused in (True, False):
        model = build()
        opt = optim.Adam(model.parameters())
        assert fused.unsupported(model, opt) is None
        fs = fused.FusedStep(model, opt, 8)
        lf = nn.SoftmaxCrossEntropy()
        for s in range(5):
            xb, yb = X[8 * s:8 * s + 8], y[8 * s:8 * s + 8]
            if use_fused:
                fs.step(xb, yb)
            else:
                lf.forward(model.forward(xb), yb)
                model.backward(lf.backward())
                opt.step()
                opt.zero_grad()
        results.append([p.data.copy() for p in model.parameters()])
    assert all(a.tobytes() == b.tobytes() for a, b in zip(*results))


@pytest.mark.parametrize("kwargs, why", [
    (dict(mode="random"), "random"),
    (dict(opt_cls=optim.Adam, kw=dict(sparse=False)), "dense"),
])
def test_unsupported_models_take_the_module_path(kwargs, why):
    tr = _train(True, epochs=1, **kwargs)
    assert tr.step_path == "modules"
    assert why in fused.unsupported(tr.model, tr.optimizer)


def test_unsupported_reasons():
    model = nn.MLP(SIZES, k=4, activation="tanh")
    assert "Tanh" in fused.unsupported(model, optim.Adam(model.parameters()))
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    assert "ends in an activation" in fused.unsupported(seq, optim.Adam(seq.parameters()))
    seq = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 2))
    assert "Dropout" in fused.unsupported(seq, optim.Adam(seq.parameters()))
    model = nn.MLP(SIZES, k=4)
    opt = optim.Adam(model.parameters())
    assert fused.unsupported(model, opt) is None
    assert "optimizer" in fused.unsupported(model, optim.Adam(model.parameters()[:2]))
    assert "loss" in fused.unsupported(model, opt, loss=object())
    model.eval()
    assert "eval" in fused.unsupported(model, opt)
    model.train()
    model.linears[1].backward = lambda dy: dy      # an instance-level override
    assert "backward" in fused.unsupported(model, opt)
    with pytest.raises(ValueError, match="FusedStep"):
        fused.FusedStep(model, opt, 10)


def test_trainer_fused_flag():
    with pytest.raises(TypeError, match="fused"):
        Trainer(nn.MLP(SIZES), optim.Adam(nn.MLP(SIZES).parameters()),
                blobs(SIZES[0], SIZES[-1]), batch_size=5, epochs=1, fused="yes")


def test_fused_step_falls_back_when_a_callback_breaks_the_pattern():
    """A callback that swaps in a module the fused step cannot run: the next
    steps take the module path."""
    def cb(trainer, epoch, step):
        if trainer.global_step == 3:
            lin = trainer.model.linears[1]
            lin.mode = "random"
    tr = _train(True, callbacks=[cb], epochs=1)
    assert tr.step_path == "modules"
    assert "random" in tr._fused_step.unsupported


def test_fused_step_label_errors_leave_everything_unchanged():
    model = nn.MLP(SIZES, k=4, seed=0)
    opt = optim.Adam(model.parameters())
    fs = fused.FusedStep(model, opt, 8)
    x = np.ones((8, SIZES[0]), np.float32)
    fs.step(x, np.zeros(8, np.int64))
    before = [p.data.copy() for p in model.parameters()]
    steps = [opt.state[id(p)]["step"] for p in model.parameters()]
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 5\)"):
        fs.step(x, np.full(8, 5))
    with pytest.raises(TypeError, match="integer labels"):
        fs.step(x, np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="1-D with 8 labels"):
        fs.step(x, np.zeros(7, np.int64))
    with pytest.raises(TypeError, match="float32"):
        fs.step(x.astype(np.float64), np.zeros(8, np.int64))
    with pytest.raises(ValueError, match="columns"):
        fs.step(np.ones((8, 3), np.float32), np.zeros(8, np.int64))
    assert all(np.array_equal(p.data, b) for p, b in zip(model.parameters(), before))
    assert [opt.state[id(p)]["step"] for p in model.parameters()] == steps
    # a non-finite loss is returned and nothing moves
    x[0, 0] = np.nan
    loss = fs.step(x, np.zeros(8, np.int64))[0]
    assert not np.isfinite(loss)
    assert all(np.array_equal(p.data, b) for p, b in zip(model.parameters(), before))
    assert [opt.state[id(p)]["step"] for p in model.parameters()] == steps
    # a larger batch than built for grows the buffers
    out = fs.step(np.ones((20, SIZES[0]), np.float32), np.zeros(20, np.int64))
    assert np.isfinite(out[0]) and fs.max_batch == 20


def test_step_rows_gathers_like_numpy_indexing():
    data = blobs(SIZES[0], SIZES[-1], n_train=50)
    X, y = data["train"]
    idx = np.array([3, 17, 0, 49, 3], np.int64)
    steps = []
    for by_rows in (True, False):
        model = nn.MLP(SIZES, k=4, seed=0)
        fs = fused.FusedStep(model, optim.Adam(model.parameters()), 5)
        out = fs.step_rows(X, y, idx) if by_rows else fs.step(X[idx], y[idx])
        steps.append((out[0], [p.data.copy() for p in model.parameters()]))
    assert steps[0][0] == steps[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(steps[0][1], steps[1][1]))
    with pytest.raises(ValueError, match=r"idx\[1\] = 50 is outside \[0, 50\)"):
        fs.step_rows(X, y, np.array([0, 50], np.int64))
    with pytest.raises(ValueError, match="idx must be"):
        fs.step_rows(X, y, idx.astype(np.int32))
    with pytest.raises(ValueError, match="X must be"):
        fs.step_rows(X.astype(np.float64), y, idx)
    bad = y.copy()
    bad[17] = 9
    with pytest.raises(ValueError, match=r"got range \[\d, 9\]"):
        fs.step_rows(X, bad, idx)


def test_trainer_reports_divergence_on_the_fused_path():
    """A learning rate that blows the weights up: both paths stop at the same
    step with the same message."""
    msgs = []
    for use_fused in (True, False):
        data = blobs(SIZES[0], SIZES[-1], n_train=40)
        model = nn.MLP(SIZES, k=4, seed=0)
        tr = Trainer(model, optim.SGD(model.parameters(), lr=1e30), data, batch_size=4,
                     epochs=2, progress=False, seed=1, fused=use_fused)
        with np.errstate(all="ignore"), pytest.raises(FloatingPointError) as e:
            tr.fit()
        msgs.append(str(e.value))
        assert tr.step_path == ("fused" if use_fused else "modules")
    assert "training diverged" in msgs[0] and msgs[0] == msgs[1]


def test_mlpstep_checks_its_arguments():
    W = np.zeros((4, 3), np.float32)
    b = np.zeros(4, np.float32)
    layer = dict(W=W, b=b, sW=[], sb=[], hits=None, k=0, relu=False, need_dx=False)
    with pytest.raises(ValueError, match="layers is empty"):
        _core.MLPStep([], 4, 1)
    with pytest.raises(ValueError, match="k must be in"):
        _core.MLPStep([dict(layer, k=4)], 4, 1)
    with pytest.raises(ValueError, match="last layer"):
        _core.MLPStep([dict(layer, relu=True)], 4, 1)
    with pytest.raises(ValueError, match="float32"):
        _core.MLPStep([dict(layer, W=W.astype(np.float64))], 4, 1)
    with pytest.raises(ValueError, match="sW"):
        _core.MLPStep([dict(layer, sW=[np.zeros(3, np.float32)], sb=[b])], 4, 1)
    with pytest.raises(TypeError, match="ndarray"):
        _core.MLPStep([dict(layer, b=[0.0] * 4)], 4, 1)
    s = _core.MLPStep([layer], 4, 1)
    x, y = np.zeros((2, 3), np.float32), np.zeros(2, np.int64)
    args = (0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert s.run(x, y, [0, 0], 1, *args)[0] == 0
    with pytest.raises(ValueError, match="batch of 5"):
        s.run(np.zeros((5, 3), np.float32), np.zeros(5, np.int64), [0, 0], 1, *args)
    with pytest.raises(ValueError, match="labels"):
        s.run(x, y.astype(np.int32), [0, 0], 1, *args)
    with pytest.raises(ValueError, match="nthreads"):
        s.run(x, y, [0, 0], 2, *args)
    with pytest.raises(ValueError, match="counts"):
        s.run(x, y, [0], 1, *args)
    with pytest.raises(ValueError, match="kind"):
        s.run(x, y, [0, 0], 1, 3, *args[1:])


@pytest.mark.parametrize("mode,k,dropout", [("topk", 6, 0.2), ("topk_dw", 6, 0.0),
                                            ("batch_dw", 6, 0.2), ("dense", None, 0.0)])
@pytest.mark.parametrize("threads", [1, 2])
def test_forward_backward_rows_leaves_the_module_paths_gradients(mode, k, dropout, threads):
    """The fused step without its update (what a data-parallel rank runs):
    the loss, each layer's input, output gradient, bias gradient, dense
    weight gradient and per-example selection equal the module path's
    backward of the scaled loss gradient, bit for bit; nothing is updated."""
    data = blobs(SIZES[0], SIZES[-1], n_train=40, seed=2)
    X, y = data["train"]
    idx = np.array([3, 17, 5, 30, 8, 11, 0], np.int64)
    old = mp.get_num_threads()
    mp.set_num_threads(threads)
    try:
        a = nn.MLP(SIZES, k=k, mode=mode, dropout=dropout, seed=4)
        b = nn.MLP(SIZES, k=k, mode=mode, dropout=dropout, seed=4)
        oa, ob = optim.Adam(a.parameters()), optim.Adam(b.parameters())
        fs = fused.FusedStep(a, oa, 16)
        with pytest.raises(RuntimeError, match="no successful"):
            fs.gradients(0)
        before = [p.data.copy() for p in a.parameters()]
        loss, tf, tb = fs.forward_backward_rows(X, y, idx, dy_scale=7 / 16)
        loss_fn = nn.SoftmaxCrossEntropy()
        ref = float(loss_fn.forward(b.forward(X[idx]), y[idx]))
        dy = loss_fn.backward()
        dy *= np.float32(7 / 16)
        b.backward(dy)
    finally:
        mp.set_num_threads(old)
    assert loss == ref and tf >= 0.0 and tb >= 0.0
    assert oa.steps == 0 and all(s["step"] == 0 for s in fs._states)
    for p, q in zip(a.parameters(), before):
        assert np.array_equal(p.data, q)
    for i, lin in enumerate(b.linears):
        g = fs.gradients(i)
        assert np.array_equal(g["x"], lin._x)
        if lin._dy is not None:   # kept by the module path for mode batch_dw only
            assert np.array_equal(g["dy"], lin._dy)
        assert g["dy"].shape == (len(idx), lin.n_out)
        assert np.array_equal(g["gb"], lin.b.grad)
        if not lin.sparse:
            assert np.array_equal(g["gw"], np.asarray(lin.W.grad.values))
        if lin.sparse and mode in ("topk", "topk_dw"):
            si, sv = lin.selection(len(idx))
            assert np.array_equal(g["idx"], si) and np.array_equal(g["val"], sv)
        else:
            assert "idx" not in g
