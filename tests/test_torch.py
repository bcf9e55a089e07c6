"""meprop_cpu.torch: MePropLinear, its optimizers and convert / revert, against PyTorch.

Skipped when torch is not installed (the core library does not need it)."""
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from reference import ref_topk_batch, ref_topk_rows, ref_topk_unified  # noqa: E402

import meprop_cpu  # noqa: E402
from meprop_cpu import nn as mp_nn  # noqa: E402
from meprop_cpu.torch import (DEFAULT_MODE, MePropLinear, convert, optim,  # noqa: E402
                              revert)


def _pair(n_in, n_out, seed=0, **kw):
    """An nn.Linear and a MePropLinear with the same weights."""
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out)
    torch.manual_seed(seed)
    mp = MePropLinear(n_in, n_out, **kw)
    return lin, mp


def _run(layer, x, dy):
    """(dx, dW dense, db) of one forward + backward of layer at x with output gradient dy."""
    x = x.clone().requires_grad_(True)
    layer.zero_grad()
    layer(x).backward(dy)
    gw = layer.weight.grad
    gw = gw.to_dense() if gw.is_sparse else gw
    return x.grad, gw, layer.bias.grad


def _data(B, n_in, n_out, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, n_in, generator=g), torch.randn(B, n_out, generator=g)


def _masked_ref(lin, x, dy, mask):
    """Float64 dense reference of the backward on dy * mask: (dx, dW, db = dy.sum(0))."""
    dyS = (dy * mask).double()
    return dyS @ lin.weight.double(), dyS.T @ x.double(), dy.double().sum(0)


def _close(a, b, rtol=1e-5, atol=1e-5):
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


def test_default_mode_is_the_mlp_default():
    assert DEFAULT_MODE == mp_nn.DEFAULT_MODE == "batch_dw"
    assert MePropLinear(4, 3, k=2).mode == DEFAULT_MODE
    assert mp_nn.MLP([4, 5, 3], k=2).linears[0].mode == DEFAULT_MODE


@pytest.mark.parametrize("k", [2, 5])   # 2: gather kernels, 5: masked (k > n_out / 4)
@pytest.mark.parametrize("sparse_grad", [True, False])
def test_topk_dw_is_topk_weight_grad_and_exact_dx(k, sparse_grad):
    """Mode topk_dw: the weight gradient of mode topk, bit for bit, and the input
    gradient of nn.Linear (to float rounding); the same as the library's Linear."""
    lin, a = _pair(11, 16, k=k, mode="topk_dw", sparse_grad=sparse_grad)
    _, b = _pair(11, 16, k=k, mode="topk", sparse_grad=sparse_grad)
    x, dy = _data(7, 11, 16)
    dxa, gwa, dba = _run(a, x, dy)
    dxb, gwb, dbb = _run(b, x, dy)
    dxl, _, _ = _run(lin, x, dy)
    assert torch.equal(gwa, gwb) and torch.equal(dba, dbb)
    _close(dxa, dxl)
    assert a.mode == "topk_dw"
    _assert_is_library_linear(a, k, x, dy, dxa, gwa)


@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.parametrize("sparse_grad", [True, False])
def test_batch_dw_is_the_library_linear(k, sparse_grad):
    """Mode batch_dw: the exact input gradient of nn.Linear (to float rounding),
    the batch top-k weight gradient of the library's Linear bit for bit, and the
    masked dense reference."""
    lin, a = _pair(11, 16, k=k, mode="batch_dw", sparse_grad=sparse_grad)
    x, dy = _data(7, 11, 16)
    dxa, gwa, dba = _run(a, x, dy)
    dxl, _, dbl = _run(lin, x, dy)
    _close(dxa, dxl)
    ex, idx, _ = ref_topk_batch(dy.numpy(), k)
    mask = torch.zeros(7, 16)
    mask[torch.from_numpy(ex).long(), torch.from_numpy(idx).long()] = 1.0
    _, rgw, _ = _masked_ref(a, x, dy, mask)
    _close(gwa, rgw)
    _assert_is_library_linear(a, k, x, dy, dxa, gwa)


def _assert_is_library_linear(a, k, x, dy, dxa, gwa):
    """MePropLinear a's input and weight gradients (dxa, gwa) equal, bit for bit,
    those of the library's own Linear with the same weights, k and mode."""
    ref = mp_nn.Linear(a.in_features, a.out_features, k=k, mode=a.mode)
    ref.W.data = a.weight.detach().numpy().copy()
    ref.b.data = a.bias.detach().numpy().copy()
    ref.forward(x.numpy())
    rdx = ref.backward(dy.numpy())
    assert np.array_equal(rdx, dxa.numpy())
    assert np.array_equal(ref.W.grad.to_dense(a.out_features), gwa.numpy())


def test_same_parameters_keys_and_init_as_nn_linear():
    lin, mp = _pair(7, 5, seed=3)
    assert list(lin.state_dict()) == list(mp.state_dict()) == ["weight", "bias"]
    for a, b in zip(lin.state_dict().values(), mp.state_dict().values()):
        assert torch.equal(a, b)
    assert [n for n, _ in mp.named_parameters()] == ["weight", "bias"]
    nb = MePropLinear(7, 5, bias=False, k=2)
    assert nb.bias is None and list(nb.state_dict()) == ["weight"]


@pytest.mark.parametrize("mode", ["topk", "unified", "random", "dense"])
@pytest.mark.parametrize("k", [None, 6, 50])
def test_k_at_least_n_out_equals_nn_linear(mode, k):
    lin, mp = _pair(9, 6, k=k, mode=mode)
    x, dy = _data(5, 9, 6)
    for impl in ("torch", "meprop"):
        mp.forward_impl = impl
        _close(mp(x), lin(x))
        for a, b in zip(_run(mp, x, dy), _run(lin, x, dy)):
            _close(a, b)


@pytest.mark.parametrize("k", [2, 5, 9])   # 2: gather kernels, 5 and 9: masked (k > n_out / 4)
@pytest.mark.parametrize("sparse_grad", [True, False])
def test_topk_equals_masked_dense_reference(k, sparse_grad):
    lin, mp = _pair(11, 16, k=k, mode="topk", sparse_grad=sparse_grad)
    x, dy = _data(7, 11, 16)
    idx, _ = ref_topk_rows(dy.numpy(), k)
    mask = torch.zeros_like(dy)
    mask.scatter_(1, torch.from_numpy(idx).long(), 1.0)
    dx, gw, db = _run(mp, x, dy)
    rdx, rgw, rdb = _masked_ref(lin, x, dy, mask)
    _close(dx, rdx)
    _close(gw, rgw)
    _close(db, rdb)
    if sparse_grad:
        g = mp.weight.grad
        assert g.is_sparse and g.sparse_dim() == 1 and g.dense_dim() == 1
        touched = torch.nonzero(mask.sum(0)).flatten()
        assert torch.equal(g._indices()[0], touched)   # exactly the selected rows
    else:
        assert mp.weight.grad.layout == torch.strided
        assert (mp.weight.grad[mask.sum(0) == 0] == 0).all()


def test_unified_equals_masked_dense_reference():
    lin, mp = _pair(8, 12, k=3, mode="unified")
    x, dy = _data(6, 8, 12)
    cols = torch.from_numpy(ref_topk_unified(dy.numpy(), 3)).long()
    mask = torch.zeros_like(dy)
    mask[:, cols] = 1.0
    for a, b in zip(_run(mp, x, dy), _masked_ref(lin, x, dy, mask)):
        _close(a, b)
    assert torch.equal(mp.weight.grad._indices()[0], cols)


@pytest.mark.parametrize("k", [2, 7])   # gather and masked kernels
def test_random_keeps_k_entries_per_example(k):
    # W = I, so dx = dy * mask reveals the random mask; dW must then be (dy * mask)^T x
    torch.manual_seed(0)
    mp = MePropLinear(10, 10, k=k, mode="random")
    with torch.no_grad():
        mp.weight.copy_(torch.eye(10))
    x, dy = _data(6, 10, 10)
    dx, gw, _ = _run(mp, x, dy)
    mask = (dx != 0).float()
    assert (mask.sum(1) == k).all()
    _close(dx, dy * mask)
    _close(gw, (dy * mask).T @ x)
    dx2, _, _ = _run(mp, x, dy)
    assert not torch.equal(dx2, dx)   # a fresh subset each call


@pytest.mark.parametrize("mode,k", [("topk", 3), ("topk", 8), ("unified", 3),
                                    ("random", 3), ("dense", None)])
def test_sparse_and_dense_gradient_forms_agree(mode, k):
    _, a = _pair(10, 14, k=k, mode=mode, sparse_grad=True)
    _, b = _pair(10, 14, k=k, mode=mode, sparse_grad=False)
    a._rand_seed = b._rand_seed = 123
    x, dy = _data(5, 10, 14)
    ra, rb = _run(a, x, dy), _run(b, x, dy)
    assert a.weight.grad.is_sparse and not b.weight.grad.is_sparse
    for u, v in zip(ra, rb):
        assert torch.equal(u, v)


def test_float32_finite_differences_dense_mode():
    # the kernels are float32 only: central differences of the layer's own forward
    # (linear in W and x, so exact up to float32 rounding) against its backward
    torch.manual_seed(4)
    mp = MePropLinear(6, 4, mode="dense")
    x, c = _data(3, 6, 4, seed=5)
    x = x.requires_grad_(True)
    (mp(x) * c).sum().backward()
    gw, gx = mp.weight.grad.to_dense(), x.grad
    h = 1e-2

    def f():
        with torch.no_grad():
            return float((mp(x) * c).double().sum())
    for t, g in ((mp.weight, gw), (x, gx)):
        flat = t.data.view(-1)
        for i in range(0, flat.numel(), 5):
            old = flat[i].item()
            flat[i] = old + h
            up = f()
            flat[i] = old - h
            down = f()
            flat[i] = old
            assert abs((up - down) / (2 * h) - g.view(-1)[i].item()) < 2e-3


def test_three_d_input_and_no_input_grad():
    lin, mp = _pair(5, 8, k=2)
    x = torch.randn(2, 3, 5)
    y = mp(x)
    assert y.shape == (2, 3, 8)
    _close(y, lin(x))
    y.sum().backward()              # x needs no gradient: only the parameters get one
    assert mp.weight.grad is not None and mp.bias.grad is not None


def test_no_grad_and_inference_mode():
    lin, mp = _pair(5, 4, k=2)
    x = torch.randn(3, 5)
    with torch.no_grad():
        y = mp(x)
    assert not y.requires_grad and y.grad_fn is None
    _close(y, lin(x))
    with torch.inference_mode():
        y2 = mp(x)
    assert y2.is_inference()
    _close(y2, lin(x).detach())


def test_bad_inputs_raise_clear_errors():
    mp = MePropLinear(6, 4, k=2)
    with pytest.raises(ValueError, match="x must be contiguous"):
        mp(torch.randn(6, 3).T)
    with pytest.raises(TypeError, match=r"x must have dtype torch.float32.*x.float\(\)"):
        mp(torch.randn(3, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="6 features"):
        mp(torch.randn(3, 5))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        mp(np.zeros((3, 6), np.float32))
    # a tensor on another device (meta here: this build may have no CUDA) is refused by name
    with pytest.raises(ValueError, match="x is on device meta"):
        mp(torch.empty(3, 6, device="meta"))
    with pytest.raises(ValueError, match="mode must be one of"):
        MePropLinear(6, 4, k=2, mode="top")
    with pytest.raises(ValueError, match="k must be >= 1"):
        MePropLinear(6, 4, k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        MePropLinear(6, 4, k=2.5)
    with pytest.raises(ValueError, match="forward_impl"):
        MePropLinear(6, 4, forward_impl="mkl")
    with pytest.raises(ValueError, match="device must be the CPU"):
        MePropLinear(6, 4, device="meta")
    with pytest.raises(TypeError, match="dtype must be torch.float32"):
        MePropLinear(6, 4, dtype=torch.float64)
    mp2 = MePropLinear(6, 4, k=2)
    mp2.double()
    with pytest.raises(TypeError, match="weight must have dtype torch.float32"):
        mp2(torch.randn(3, 6))


def test_nonfinite_output_gradient_raises():
    mp = MePropLinear(6, 8, k=2)
    x = torch.randn(3, 6, requires_grad=True)
    dy = torch.randn(3, 8)
    dy[1, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN/Inf"):
        mp(x).backward(dy)


def test_non_contiguous_output_gradient_is_accepted():
    lin, mp = _pair(5, 8, k=8)
    x = torch.randn(4, 5, requires_grad=True)
    mp(x).sum().backward()        # autograd hands an expanded (stride-0) gradient
    x2 = x.detach().clone().requires_grad_(True)
    lin(x2).sum().backward()
    _close(x.grad, x2.grad)
    _close(mp.weight.grad.to_dense(), lin.weight.grad)


def test_threads_bit_identical():
    x, dy = _data(32, 64, 128)
    old = torch.get_num_threads()
    outs = []
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            for mode, k in (("topk", 5), ("topk", 60), ("unified", 5)):
                _, mp = _pair(64, 128, k=k, mode=mode)
                outs.append((nt, mode, k, _run(mp, x, dy)))
    finally:
        torch.set_num_threads(old)
    half = len(outs) // 2
    for (_, m, k, a), (_, _, _, b) in zip(outs[:half], outs[half:]):
        for u, v in zip(a, b):
            assert torch.equal(u, v), (m, k)


@pytest.mark.parametrize("mode", ["topk_dw", "batch_dw"])
def test_track_hits_counts_selected_neurons(mode):
    _, mp = _pair(5, 12, k=2, mode=mode)
    mp.track_hits = True
    x, dy = _data(4, 5, 12)
    _run(mp, x, dy)
    if mode == "topk_dw":
        idx, val = ref_topk_rows(dy.numpy(), 2)
    else:
        _, idx, val = ref_topk_batch(dy.numpy(), 2)
    expect = np.bincount(idx[val != 0], minlength=12)
    assert np.array_equal(mp.hits, expect) and mp.seen == 4


def test_grad_accumulates_over_two_backwards():
    lin, mp = _pair(6, 10, k=3)
    x, dy = _data(4, 6, 10)
    x2, dy2 = _data(4, 6, 10, seed=9)
    mp(x).backward(dy)
    g1 = mp.weight.grad.to_dense().clone()
    mp(x2).backward(dy2)        # the first gradient is not overwritten by the second backward
    mp.zero_grad()
    mp(x2).backward(dy2)
    g2 = mp.weight.grad.to_dense()
    mp.zero_grad()
    mp(x).backward(dy)
    mp(x2).backward(dy2)
    _close(mp.weight.grad.to_dense(), g1 + g2)


# ------------------------------------------------------------------ convert

def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                         nn.Linear(12, 3))


def test_convert_keeps_weights_and_state_dict_loads_into_original():
    model = _mlp()
    ref = _mlp()
    params = list(model.parameters())
    convert(model, k=4)
    assert [type(m).__name__ for m in model] == ["MePropLinear", "ReLU", "MePropLinear",
                                                  "ReLU", "Linear"]
    assert all(a is b for a, b in zip(model.parameters(), params))   # same Parameter objects
    assert model[0].k == 4 and model[0].mode == DEFAULT_MODE
    sd = model.state_dict()
    assert list(sd) == list(ref.state_dict())
    fresh = _mlp(seed=7)
    fresh.load_state_dict(sd)
    x = torch.randn(5, 8)
    _close(fresh(x), model(x))
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    model2 = convert(_mlp(seed=7), k=4)
    model2.load_state_dict(torch.load(buf))
    _close(model2(x), ref(x))
    revert(model)
    assert all(type(m) is nn.Linear for m in model if not isinstance(m, nn.ReLU))
    assert all(a is b for a, b in zip(model.parameters(), params))


def test_convert_options():
    model = convert(_mlp(), k=3, mode="unified", skip_last=False, sparse_grad=False)
    assert all(isinstance(m, MePropLinear) for m in model[::2])
    assert model[4].mode == "unified" and model[4].sparse_grad is False
    model = convert(_mlp(), k=3, include=lambda name, m: name == "2")
    assert [type(m).__name__ for m in model[::2]] == ["Linear", "MePropLinear", "Linear"]
    single = convert(nn.Linear(4, 5), k=2)
    assert isinstance(single, MePropLinear) and type(revert(single)) is nn.Linear
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        convert("model", k=2)
    with pytest.raises(ValueError, match=r"0.weight is torch.float64"):
        convert(_mlp().double(), k=2)


def test_converted_step_equals_nn_linear_step_when_k_covers_width():
    # k >= every converted width: one SGD step equals the nn.Linear model's torch.optim.SGD step
    model = convert(_mlp(), k=16)      # k >= width: exactly nn.Linear's gradients
    ref = _mlp()
    x, y = torch.randn(6, 8), torch.randint(0, 3, (6,))
    for m, opt in ((model, optim.SGD(model.parameters(), lr=0.1)),
                   (ref, torch.optim.SGD(ref.parameters(), lr=0.1))):
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        _close(a, b)


# ---------------------------------------------------------------- optimizers

def _sparse_grad(n_out, n_in, rows, seed):
    g = torch.Generator().manual_seed(seed)
    rows = torch.tensor(rows, dtype=torch.int64)
    return torch.sparse_coo_tensor(rows.unsqueeze(0), torch.randn(len(rows), n_in, generator=g),
                                   (n_out, n_in), check_invariants=True).coalesce()


def test_adam_row_sparse_step_equals_sparse_adam():
    torch.manual_seed(0)
    w0 = torch.randn(10, 6)
    a, b = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    ours = optim.Adam([a], lr=0.01)
    ref = torch.optim.SparseAdam([b], lr=0.01)
    for step, rows in enumerate([[0, 3, 4], [3, 9], [1, 3, 4, 8]]):
        g = _sparse_grad(10, 6, rows, step)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        _close(a, b, rtol=1e-5, atol=1e-6)
    untouched = [2, 5, 6, 7]
    assert torch.equal(a.data[untouched], w0[untouched])   # bit-for-bit unchanged
    for name in ("exp_avg", "exp_avg_sq"):
        _close(ours.state[a][name], ref.state[b][name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ours_cls,ref_cls,kw", [
    (optim.Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.1)),
    (optim.AdaGrad, torch.optim.Adagrad, dict(lr=0.05)),
    (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    (optim.SGD, torch.optim.SGD, dict(lr=0.05)),
])
def test_dense_steps_equal_torch(ours_cls, ref_cls, kw):
    torch.manual_seed(1)
    w0, b0 = torch.randn(7, 5), torch.randn(7)
    pa = [nn.Parameter(w0.clone()), nn.Parameter(b0.clone())]
    pb = [nn.Parameter(w0.clone()), nn.Parameter(b0.clone())]
    ours, ref = ours_cls(pa, **kw), ref_cls(pb, **kw)
    for step in range(4):
        g = torch.Generator().manual_seed(step)
        gs = [torch.randn(7, 5, generator=g), torch.randn(7, generator=g)]
        for p, q, gg in zip(pa, pb, gs):
            p.grad, q.grad = gg.clone(), gg.clone()
        ours.step()
        ref.step()
    for p, q in zip(pa, pb):
        _close(p, q, rtol=1e-5, atol=1e-6)


def test_adagrad_and_sgd_sparse_steps_equal_torch():
    for ours_cls, ref_cls, kw in ((optim.AdaGrad, torch.optim.Adagrad, dict(lr=0.05)),
                                  (optim.SGD, torch.optim.SGD, dict(lr=0.05))):
        torch.manual_seed(2)
        w0 = torch.randn(9, 4)
        a, b = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
        ours, ref = ours_cls([a], **kw), ref_cls([b], **kw)
        for step, rows in enumerate([[1, 2], [2, 7, 8]]):
            g = _sparse_grad(9, 4, rows, step)
            a.grad, b.grad = g.clone(), g.clone()
            ours.step()
            ref.step()
        _close(a, b, rtol=1e-5, atol=1e-6)


def test_uncoalesced_sparse_gradient_is_summed():
    w = nn.Parameter(torch.zeros(5, 3))
    opt = optim.SGD([w], lr=1.0)
    w.grad = torch.sparse_coo_tensor(torch.tensor([[3, 1, 3]]), torch.ones(3, 3), (5, 3),
                                     check_invariants=True)
    opt.step()
    assert torch.equal(w.data[3], -2 * torch.ones(3)) and torch.equal(w.data[1], -torch.ones(3))
    assert (w.data[[0, 2, 4]] == 0).all()


def test_sgd_momentum_switched_on_between_steps():
    # the optimizer's cached state views follow the group's state names
    w = nn.Parameter(torch.zeros(4, 3))
    ref = nn.Parameter(torch.zeros(4, 3))
    ours, theirs = optim.SGD([w], lr=0.1), torch.optim.SGD([ref], lr=0.1)
    for step in range(4):
        if step == 2:
            ours.param_groups[0]["momentum"] = theirs.param_groups[0]["momentum"] = 0.9
        g = torch.full((4, 3), float(step + 1))
        w.grad, ref.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        _close(w, ref, rtol=1e-6, atol=1e-7)
    assert "momentum_buffer" in ours.state[w]


def test_optimizer_state_dict_round_trip():
    torch.manual_seed(3)
    model = convert(_mlp(), k=3)
    opt = optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))

    def step(m, o):
        o.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        o.step()
    for _ in range(3):
        step(model, opt)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    model2 = convert(_mlp(seed=5), k=3)
    model2.load_state_dict(saved["model"])
    opt2 = optim.Adam(model2.parameters(), lr=0.5)
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[0]["lr"] == 0.01
    step(model, opt)
    step(model2, opt2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_torch_sparse_adam_accepts_the_gradient():
    _, mp = _pair(6, 20, k=2)
    opt = torch.optim.SparseAdam([mp.weight], lr=0.01)
    w0 = mp.weight.detach().clone()
    x, dy = _data(3, 6, 20)
    mp(x).backward(dy)
    rows = mp.weight.grad._indices()[0]
    opt.step()
    changed = (mp.weight.detach() != w0).any(1).nonzero().flatten()
    assert torch.equal(changed, rows)


def test_optimizer_bad_input():
    with pytest.raises(TypeError, match="dtype torch.float64"):
        optim.Adam([nn.Parameter(torch.zeros(3, dtype=torch.float64))])
    with pytest.raises(ValueError, match="lr must be finite"):
        optim.Adam([nn.Parameter(torch.zeros(3))], lr=-1.0)
    w = nn.Parameter(torch.zeros(4, 3))
    v = nn.Parameter(torch.zeros(4, 3))
    opt = optim.Adam([w, v])
    w.grad = torch.ones(4, 3)
    v.grad = torch.sparse_coo_tensor(torch.tensor([[7]]), torch.ones(1, 3), (4, 3),
                                     check_invariants=False)
    with pytest.raises(ValueError, match=r"\['params'\]\[1\] must lie in \[0, 4\)"):
        opt.step()
    assert (w.data == 0).all() and not opt.state     # a failed step changes nothing
    v.grad = torch.ones(3, 4).T                      # a non-contiguous dense gradient is fine
    opt.step()
    assert (w.data < 0).all() and (v.data < 0).all()


def test_converted_model_learns_separable_data():
    # 40 steps of a converted 32-64-4 model on synthetic separable data
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 32, generator=g) * 2
    y = torch.randint(0, 4, (400,), generator=g)
    X = centers[y] + torch.randn(400, 32, generator=g)
    model = convert(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)), k=8)
    opt = optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        loss0 = float(nn.functional.cross_entropy(model(X), y))
    for i in range(0, 400, 10):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X[i:i + 10]), y[i:i + 10]).backward()
        opt.step()
    with torch.no_grad():
        acc = float((model(X).argmax(1) == y).float().mean())
        loss1 = float(nn.functional.cross_entropy(model(X), y))
    assert loss1 < loss0 / 3 and acc > 0.9


@pytest.mark.parametrize("mode", ["topk", "unified"])
def test_training_matches_the_library_mlp(mode):
    # the library's own MLP + row-sparse Adam and the same MLP in PyTorch, converted,
    # with meprop_cpu.torch.optim.Adam: same weights after 15 steps on the same batches
    sizes = [20, 16, 12, 3]
    own = mp_nn.MLP(sizes, k=4, mode=mode, seed=3)
    own_opt = meprop_cpu.optim.Adam(own.parameters(), lr=0.01)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                          nn.Linear(12, 3))
    with torch.no_grad():
        for t, m in zip(model[::2], own.linears):
            t.weight.copy_(torch.from_numpy(m.W.data))
            t.bias.copy_(torch.from_numpy(m.b.data))
    convert(model, k=4, mode=mode)
    opt = optim.Adam(model.parameters(), lr=0.01)
    loss = mp_nn.SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    for _ in range(15):
        X = rng.standard_normal((8, 20)).astype(np.float32)
        y = rng.integers(0, 3, 8)
        loss(own.forward(X), y)
        own.backward(loss.backward())
        own_opt.step()
        own_opt.zero_grad()
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.from_numpy(X)), torch.from_numpy(y)).backward()
        opt.step()
    for t, m in zip(model[::2], own.linears):
        _close(t.weight, torch.from_numpy(m.W.data), rtol=1e-4, atol=1e-5)
        _close(t.bias, torch.from_numpy(m.b.data), rtol=1e-4, atol=1e-5)


def test_optimizer_follows_replaced_parameter_memory():
    # the optimizer caches numpy views of parameters and state: replacing p.data or
    # loading a state dict must not leave it writing into the old memory
    w = nn.Parameter(torch.zeros(3, 2))
    opt = optim.SGD([w], lr=1.0, momentum=0.5)
    w.grad = torch.ones(3, 2)
    opt.step()
    old = w.data
    w.data = torch.full((3, 2), 10.0)
    opt.step()
    assert torch.equal(w.data, torch.full((3, 2), 10.0 - 1.5)) and (old == -1).all()
    opt.load_state_dict(opt.state_dict())
    opt.step()
    assert torch.equal(w.data, torch.full((3, 2), 8.5 - 1.75))


def test_a_used_layer_deep_copies_and_saves(tmp_path):
    """copy.deepcopy and torch.save work after a backward (the C buffers are
    left out and rebuilt), and the copy computes the same gradients."""
    import copy
    lin, mp = _pair(9, 6, k=2)
    x, dy = _data(5, 9, 6)
    _run(mp, x, dy)
    twin = copy.deepcopy(mp)
    torch.save(mp, tmp_path / "layer.pt")
    loaded = torch.load(tmp_path / "layer.pt", weights_only=False)
    for other in (twin, loaded):
        a, b = _run(mp, x, dy), _run(other, x, dy)
        for u, v in zip(a, b):
            assert torch.equal(u, v)


# ------------------------------------------------------------ MePropSequential

from meprop_cpu.torch import MePropSequential, fuse, unfuse  # noqa: E402


def _seq_mlp(drop=0.0, seed=0, widths=(24, 20, 16, 5)):
    torch.manual_seed(seed)
    mods = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            mods += [nn.ReLU(), nn.Dropout(drop)] if drop is not None else [nn.ReLU()]
    return nn.Sequential(*mods)


def _grads(model, x, dy):
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    out = model(x)
    out.backward(dy)
    gs = [p.grad.to_dense() if p.grad.is_sparse else p.grad for p in model.parameters()]
    return out.detach(), x.grad, gs


@pytest.mark.parametrize("mode", ["batch_dw", "topk_dw", "topk", "unified", "random", "dense"])
@pytest.mark.parametrize("sparse_grad", [True, False])
@pytest.mark.parametrize("drop", [None, 0.0])
def test_fused_run_gives_the_unfused_bits(mode, sparse_grad, drop):
    # without dropout the fused run is the same kernels on the same data: same bits
    ref = convert(_seq_mlp(drop), k=5, mode=mode, sparse_grad=sparse_grad)
    fused = convert(_seq_mlp(drop), k=5, mode=mode, sparse_grad=sparse_grad, fuse=True)
    assert type(fused) is MePropSequential and type(ref) is nn.Sequential
    x, dy = _data(7, 24, 5, seed=2)
    for step in range(2):   # the random mode's seeds: one torch draw per layer, alike
        torch.manual_seed(step)
        o1, dx1, g1 = _grads(ref, x, dy)
        torch.manual_seed(step)
        o2, dx2, g2 = _grads(fused, x, dy)
        assert torch.equal(o1, o2) and torch.equal(dx1, dx2)
        for a, b in zip(g1, g2):
            assert torch.equal(a, b)


def test_fused_run_is_one_autograd_node():
    model = convert(_seq_mlp(0.5), k=5, fuse=True)
    x = torch.randn(4, 24)
    out = model(x)
    # the last Linear (skip_last) is PyTorch's; below it one node for the whole run
    nodes = [f.__class__.__name__ for f, _ in out.grad_fn.next_functions if f is not None]
    assert any("RunFunction" in n for n in nodes), nodes


@pytest.mark.parametrize("p", [0.3, 1.0])
def test_fused_dropout_masks(p):
    # dense backprop through the fused run against float64 autograd on the masks the
    # run drew (read off its output: a kept unit is relu(y) / (1 - p), a dropped one 0)
    torch.manual_seed(5)
    lin1, lin2 = nn.Linear(30, 200), nn.Linear(200, 3)
    model = convert(fuse(nn.Sequential(lin1, nn.ReLU(), nn.Dropout(p), lin2)), k=None)
    x, dy = torch.randn(50, 30), torch.randn(50, 3)
    run = model[:3]   # a slice of a MePropSequential is one: the run alone
    assert type(run) is MePropSequential
    torch.manual_seed(9)
    h = run(x).detach().double()
    y = torch.relu(x.double() @ lin1.weight.double().T + lin1.bias.double()).detach()
    kept = h != 0
    if p == 1.0:
        assert not kept.any()
    else:
        live = y > 0
        frac = float((~kept & live).sum()) / float(live.sum())
        assert abs(frac - p) < 0.05, frac            # about p of the live units dropped
        _close(h[kept], (y / (1 - p))[kept])
    mask = kept.double() / (1 - p) if p < 1 else kept.double()
    # the same torch seed: the same key, so the same masks in this forward
    xg = x.clone().requires_grad_(True)
    torch.manual_seed(9)
    model(xg).backward(dy)
    xr = x.double().clone().requires_grad_(True)
    w1 = lin1.weight.double().detach().requires_grad_(True)
    b1 = lin1.bias.double().detach().requires_grad_(True)
    ref = (torch.relu(xr @ w1.T + b1) * mask) @ lin2.weight.double().detach().T
    ref.backward(dy.double())
    gw = lin1.weight.grad
    _close(xg.grad, xr.grad)
    _close(gw.to_dense() if gw.is_sparse else gw, w1.grad)
    _close(lin1.bias.grad, b1.grad)


def test_fused_dropout_follows_torch_seed_and_threads():
    model = convert(_seq_mlp(0.4, widths=(24, 300, 300, 5)), k=10, fuse=True)
    x = torch.randn(6, 24)
    outs = {}
    old = torch.get_num_threads()
    try:
        for nt in (1, 2, 3):
            torch.set_num_threads(nt)
            torch.manual_seed(11)
            outs[nt] = (model(x).detach(), model(x).detach())
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[1][0], outs[2][0]) and torch.equal(outs[1][0], outs[3][0])
    assert torch.equal(outs[1][1], outs[3][1])
    assert not torch.equal(outs[1][0], outs[1][1])   # a new key per forward


def test_fused_sequential_falls_back_where_it_must():
    model = convert(_seq_mlp(0.0), k=5, fuse=True)
    ref = convert(_seq_mlp(0.0), k=5)
    x = torch.randn(3, 24)
    # eval mode, no_grad: the modules one by one (MePropLinear is F.linear there)
    model.eval(), ref.eval()
    assert torch.equal(model(x), ref(x))
    model.train(), ref.train()
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    # a hook on a child is honoured: that group runs module by module
    seen = []
    h = model[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        o = model(x)
        assert seen == [(3, 20)] and torch.equal(o, ref(x))
    finally:
        h.remove()
    # nothing needs a gradient: plain modules, same values
    for p in model.parameters():
        p.requires_grad_(False)
    assert torch.equal(model(x), ref(x))
    for p in model.parameters():
        p.requires_grad_(True)
    # 3-D input: reshaped through the run
    x3 = torch.randn(2, 3, 24)
    assert torch.equal(model(x3), ref(x3))
    # bad input: the unfused layer's clear error
    with pytest.raises(TypeError, match="float32"):
        model(x.double())
    with pytest.raises(ValueError, match="24 features"):
        model(torch.randn(3, 23))


def test_fuse_keeps_state_dict_and_reverts():
    base = _seq_mlp(0.1)
    keys = list(base.state_dict())
    inner = nn.Sequential(nn.Linear(5, 24), nn.Tanh())
    wrapped = nn.ModuleDict({"pre": inner, "body": base})
    convert(wrapped, k=5, fuse=True)
    assert type(wrapped["body"]) is MePropSequential and type(inner) is MePropSequential
    assert list(base.state_dict()) == keys
    plain = _seq_mlp(0.1, seed=4)
    plain.load_state_dict(base.state_dict())
    revert(wrapped)
    assert type(base) is nn.Sequential and type(inner) is nn.Sequential
    assert not any(isinstance(m, MePropLinear) for m in wrapped.modules())
    assert fuse(base) is base and type(base) is MePropSequential
    assert unfuse(base) is base and type(base) is nn.Sequential
    with pytest.raises(TypeError, match="fuse must be a bool"):
        convert(_seq_mlp(), k=5, fuse=1)
    with pytest.raises(TypeError, match="model"):
        fuse("model")


def test_fused_weight_changed_before_backward_is_refused():
    model = convert(_seq_mlp(0.0), k=5, fuse=True)
    out = model(torch.randn(3, 24))
    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_fused_model_trains_like_the_unfused_one():
    # 30 Adam steps without dropout: the same weights bit for bit
    torch.manual_seed(0)
    X, y = torch.randn(300, 24), torch.randint(0, 5, (300,))
    runs = []
    for fz in (False, True):
        model = convert(_seq_mlp(0.0), k=5, fuse=fz)
        opt = optim.Adam(model.parameters(), lr=3e-3)
        for i in range(0, 300, 10):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[i:i + 10]), y[i:i + 10]).backward()
            opt.step()
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("flags", [[], ["--no-fuse"], ["--dense"]])
def test_torch_mnist_example_runs(monkeypatch, tmp_path, capsys, flags):
    # examples/torch_mnist.py end to end on a small synthetic stand-in for MNIST
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "torch_mnist.py"
    spec = importlib.util.spec_from_file_location("torch_mnist_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    X = rng.random((60, 784), dtype=np.float32)
    y = rng.integers(0, 10, 60)
    monkeypatch.setattr(mod.mpdata, "mnist",
                        lambda: {"train": (X, y), "dev": (X[:20], y[:20]), "test": (X[:20], y[:20])})
    out = tmp_path / "m.pt"
    assert mod.main(["--epochs", "2", "--hidden", "32", "--save", str(out)] + flags) == 0
    text = capsys.readouterr().out
    assert "epoch 2:" in text and ("MePropSequential" in text) == (flags == [])
    plain = nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 32),
                          nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    plain.load_state_dict(torch.load(out))
