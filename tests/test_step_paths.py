"""One training step through the module path (Linear.backward + Optimizer.step)
and through the fused C step (FusedStep), compared layer by layer: the output
gradient dy, the input gradient dx, the bias gradient, the weight gradient's
rows and values, and every parameter's optimizer state after the update.
Both paths call mp_layer_backward (include/meprop/layer.h) for each layer, so
everything must agree bit for bit; a failure names the layer and the quantity."""
import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import _core, nn, optim
from meprop_cpu.fused import FusedStep
from meprop_cpu.steps import ModuleStep, make_step

from toydata import blobs

SIZES = [30, 48, 40, 6]


def _rows_values(g, n_in):
    """(rows or None, values) of a RowGrad without changing it: a factored one's
    rows are formed into a fresh array from its pairs (one thread)."""
    if g.factored:
        x, offsets, pair_b, pair_v, _ = g._factors
        values = np.empty((g.rows.shape[0], n_in), np.float32)
        _core.sparse_dw(x, g.rows.shape[0], offsets, pair_b, pair_v, values, 1)
        return np.array(g.rows), values
    return (None if g.rows is None else np.array(g.rows)), np.array(g.values)


class _Spy:
    """Records what each Linear's backward received and returned."""

    def __init__(self, model):
        self.seen = {}
        for i, lin in enumerate(model.linears):
            orig = lin.backward

            def backward(dy, lin=lin, orig=orig, i=i):
                dx = orig(dy)
                rows, values = _rows_values(lin.W.grad, lin.n_in)
                self.seen[i] = {"dy": dy.copy(), "dx": None if dx is None else dx.copy(),
                                "gb": lin.b.grad.copy(), "rows": rows, "values": values,
                                "x": lin._x.copy()}
                return dx
            lin.backward = backward


def _one_step(model_kw, opt_cls, opt_kw, batch, threads, seed=4):
    data = blobs(SIZES[0], SIZES[-1], n_train=batch, seed=seed)
    X, y = data["train"]
    idx = np.arange(batch, dtype=np.int64)
    out = []
    old = mp.get_num_threads()
    mp.set_num_threads(threads)
    try:
        for use_fused in (False, True):
            model = nn.MLP(SIZES, seed=seed, **model_kw)
            for lin in model.linears:
                lin.track_hits = True
            opt = opt_cls(model.parameters(), **opt_kw)
            for p in model.parameters():   # a non-trivial state before the step
                st = opt.state_for(p)
                st["step"] = 3
                for j, a in enumerate(st["arrays"]):
                    a[...] = np.random.default_rng(j).random(a.shape, dtype=np.float32) * 0.01
            loss = nn.SoftmaxCrossEntropy()
            if use_fused:
                step = make_step(model, opt, loss, batch)
                assert isinstance(step, FusedStep)
                res = step.step_rows(X, y, idx)
            else:
                spy = _Spy(model)
                res = ModuleStep(model, opt, loss).step_rows(X, y, idx)
            out.append((model, opt, res, spy.seen if not use_fused else step._plan))
    finally:
        mp.set_num_threads(old)
    return out


def _fused_layer(plan, i, lin, B, x):
    """Layer i's results in the fused step's buffers; a factored weight gradient's
    rows are formed from its pairs on the layer input x (the final weights, which
    the step formed on its own input, are compared separately)."""
    a = plan.layer(i)
    n_in, n_out = lin.n_in, lin.n_out
    got = {"dy": a["dy"][:B * n_out].reshape(B, n_out), "gb": a["gb"][:n_out]}
    got["dx"] = a["dx"][:B * n_in].reshape(B, n_in) if "dx" in a else None
    k = lin.k if lin.sparse else 0
    if k == 0:
        got["rows"], got["values"] = None, a["gw"][:n_out * n_in].reshape(n_out, n_in)
    elif lin.mode == "unified":
        got["rows"], got["values"] = a["idx"][:k], a["gw"][:k * n_in].reshape(k, n_in)
    elif a["masked"]:
        rows = a["rows"][:a["r"]]
        got["rows"], got["values"] = rows, a["gw"][:n_out * n_in].reshape(n_out, n_in)[rows]
    else:   # factored: form the rows from the pairs, as the update does
        r = a["r"]
        values = np.empty((r, n_in), np.float32)
        _core.sparse_dw(x, r, a["offsets"], a["pair_b"], a["pair_v"], values, 1)
        got["rows"], got["values"] = a["rows"][:r], values
    return got


@pytest.mark.parametrize("model_kw", [
    dict(k=None),
    dict(k=5),                              # topk_dw, per-example (below the masked rule)
    dict(k=5, mode="topk"),
    dict(k=20, mode="topk"),                # above n_out / 4: the masked form
    dict(k=20),                             # topk_dw, masked
    dict(k=7, mode="unified"),
    dict(k=5, mode="topk", dropout=0.3)],
    ids=["dense", "topk_dw", "topk", "topk_masked", "topk_dw_masked", "unified", "dropout"])
@pytest.mark.parametrize("opt_cls, opt_kw", [
    (optim.Adam, dict(lr=3e-3, clip=0.05, weight_decay=1e-3)),
    (optim.SGD, dict(lr=0.05, momentum=0.9)),
    (optim.AdaGrad, dict(lr=0.05))], ids=["adam", "sgd", "adagrad"])
@pytest.mark.parametrize("threads", [1, 2])
def test_one_step_layer_by_layer(model_kw, opt_cls, opt_kw, threads):
    B = 9
    (m_mod, o_mod, r_mod, seen), (m_fus, o_fus, r_fus, plan) = _one_step(
        model_kw, opt_cls, opt_kw, B, threads)
    assert r_mod[0] == r_fus[0], "loss"
    for i, lin in enumerate(m_fus.linears):
        want = seen[i]
        got = _fused_layer(plan, i, lin, B, want["x"])
        # with dropout below this layer the fused step scales dx in place after
        # mp_layer_backward (what Dropout.backward does); the layer below's dy checks it
        keys = ("dy", "gb", "rows", "values") + (() if model_kw.get("dropout") else ("dx",))
        for key in keys:
            a, b = want[key], got[key]
            if a is None or b is None:
                assert a is None and b is None, f"layer {i} {key}: one path has none"
                continue
            assert a.shape == b.shape and a.tobytes() == b.tobytes(), \
                f"layer {i}: {key} differs between the paths"
    for (pm, pf) in zip(m_mod.parameters(), m_fus.parameters()):
        assert pm.data.tobytes() == pf.data.tobytes(), f"parameter {pm.name} after the update"
        sm, sf = o_mod.state_for(pm), o_fus.state_for(pf)
        assert sm["step"] == sf["step"] == 4
        for j, (a, b) in enumerate(zip(sm["arrays"], sf["arrays"])):
            assert a.tobytes() == b.tobytes(), f"state {j} of {pm.name}"
    for lm, lf in zip(m_mod.linears, m_fus.linears):
        assert np.array_equal(lm.hits, lf.hits) and lm.seen == lf.seen
