"""Run under MPI by tests/test_distributed.py:

    mpiexec -n 2 python -m mpi4py tests/mpi_worker.py SCENARIO OUT_DIR

SCENARIO "checks": trains small MLPs data-parallel and writes, from rank 0,
OUT_DIR/checks.json with what the tests assert (digests of every rank's
weights and optimizer state, the distance to a single-process run on the
same global batches, the exchanged gradients against a naive dense sum, meSimp
widths and kept neurons on every rank, a resumed run against an uninterrupted
one). SCENARIO "fail": rank 1 raises in the middle of training (the job must
end at once, not hang).
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toydata import blobs  # noqa: E402

from mpi4py import MPI  # noqa: E402

from meprop_cpu import set_num_threads  # noqa: E402
from meprop_cpu.distributed import Distributed  # noqa: E402
from meprop_cpu.nn import MLP  # noqa: E402
from meprop_cpu.simplify import EveryN, Simplifier  # noqa: E402
from meprop_cpu.train import Trainer, build_optimizer  # noqa: E402

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def state_arrays(model, opt):
    out = [p.data for p in model.parameters()]
    for p in opt.params:
        st = opt.state.get(id(p))
        if st is not None:
            out += st["arrays"]
    out += [m.hits for m in model.linears]
    return out


def train(cfg, data, dist, epochs=2, batch=16, **kw):
    model = MLP(cfg["sizes"], k=cfg["k"], mode=cfg["mode"], dropout=cfg.get("dropout", 0.0),
                seed=3)
    opt = build_optimizer(cfg.get("opt", "adam"), model.parameters(), lr=cfg.get("lr"))
    callbacks = kw.pop("callbacks_for", lambda m, o: [])(model, opt)
    resume = kw.pop("resume", None)
    tr = Trainer(model, opt, data, batch_size=batch, epochs=epochs, seed=5, progress=False,
                 distributed=dist, callbacks=callbacks, **kw)
    tr.fit(resume=resume)
    return model, opt, tr


CONFIGS = {
    # per-example top-k: factors exchange (k << n_out), dropout on
    "topk": {"sizes": [40, 64, 48, 5], "k": 4, "mode": "topk", "dropout": 0.2},
    # the same weight-gradient factors, the exact input gradient
    "topk_dw": {"sizes": [40, 64, 48, 5], "k": 4, "mode": "topk_dw", "dropout": 0.2},
    # the default mode: (x, dy) exchange, the selection over the global batch
    "batch_dw": {"sizes": [40, 64, 48, 5], "k": 4, "mode": "batch_dw", "dropout": 0.2},
    # the same above the masked threshold
    "batch_dw_masked": {"sizes": [40, 32, 24, 5], "k": 12, "mode": "batch_dw", "opt": "sgd"},
    # unified top-k: (rows, values) exchange
    "unified": {"sizes": [40, 64, 48, 5], "k": 6, "mode": "unified"},
    # per-example top-k above the masked threshold: rows exchange
    "masked": {"sizes": [40, 32, 24, 5], "k": 12, "mode": "topk", "opt": "sgd"},
    # dense backprop: everything in the Allreduce
    "dense": {"sizes": [40, 32, 5], "k": None, "mode": "dense", "opt": "adagrad"},
}


def checks(out_dir):
    data = blobs(40, 5, n_train=200, n_dev=40, n_test=40, seed=1)
    res = {"size": size, "runs": {}}
    for name, cfg in CONFIGS.items():
        dist = Distributed()
        model, opt, tr = train(cfg, data, dist)
        digests = comm.allgather(dist.digest(state_arrays(model, opt)))
        row = {"digests": digests, "methods": dist.last["methods"],
               "steps": tr.global_step, "best_dev": tr.best_dev, "path": dist.path}
        # the module path on every rank (Trainer(fused=False)): the same bits
        mdist = Distributed()
        mmodel, mopt, _ = train(cfg, data, mdist, fused=False)
        row["module_digests"] = comm.allgather(mdist.digest(state_arrays(mmodel, mopt)))
        row["module_path"] = mdist.path
        if cfg["mode"] == "batch_dw":   # whole (x, dy) instead of candidates: the same bits
            ddist = Distributed()
            ddist._batch_exchange = "dy"
            dmodel, dopt, _ = train(cfg, data, ddist)
            row["dy_digests"] = comm.allgather(ddist.digest(state_arrays(dmodel, dopt)))
            row["dy_methods"] = ddist.last["methods"]
        if rank == 0:   # the same global batches in one process
            ref, _, rtr = train(cfg, data, None)
            row["max_abs_diff"] = max(float(np.max(np.abs(a.data - b.data)))
                                      for a, b in zip(model.parameters(), ref.parameters()))
            row["ref_steps"] = rtr.global_step
        res["runs"][name] = row
    res["same_sums"] = same_sums_check(data)
    res["exchange"] = exchange_check(data)
    res["mesimp"] = mesimp_check(data)
    res["resume"] = resume_check(data, out_dir)
    if rank == 0:
        with open(os.path.join(out_dir, "checks.json"), "w") as f:
            json.dump(res, f)


def same_sums_check(data):
    """rows, owner and dense exchanges sum each touched row in rank order (a + b):
    training with either gives the same bits; one rank (COMM_SELF) gives the
    module path's bits."""
    cfg = CONFIGS["topk"]
    out = {}
    for exchange in ("rows", "owner", "dense"):
        model, opt, _ = train(cfg, data, Distributed(exchange=exchange))
        out[exchange] = comm.allgather(Distributed().digest(state_arrays(model, opt)))
    # a callback swaps a ReLU for a Tanh after step 5: the fused step no longer
    # applies (its forward_backward_rows returns None) and the rank takes the
    # module path from then on, with the bits of a run on the module path
    from meprop_cpu.nn import ReLU, Tanh

    def swap(model, opt):
        def cb(trainer, epoch, step):
            if trainer.global_step == 5:
                i = next(j for j, m in enumerate(model.modules) if isinstance(m, ReLU))
                model.modules[i] = Tanh()
        return [cb]
    paths = []
    for use_fused in (True, False):
        dist = Distributed()
        model, opt, _ = train(cfg, data, dist, callbacks_for=swap, fused=use_fused)
        paths.append(dist.path)
        out[f"swap/{use_fused}"] = comm.allgather(dist.digest(state_arrays(model, opt)))
    out["swap/paths"] = paths
    if rank == 0:
        for name in ("topk", "unified", "masked", "batch_dw", "batch_dw_masked"):
            a, oa, _ = train(CONFIGS[name], data, Distributed(comm=MPI.COMM_SELF))
            b, ob, _ = train(CONFIGS[name], data, None, fused=False)
            d = Distributed(comm=MPI.COMM_SELF)
            out[f"one_rank/{name}"] = [d.digest(state_arrays(a, oa)),
                                       d.digest(state_arrays(b, ob))]
    return out


def exchange_check(data):
    """The exchanged gradient of every parameter against a naive reference: each
    rank's local gradient made dense, gathered, summed in rank order."""
    out = {}
    grads = {}
    for exchange in ("factors", "rows", "owner", "dense"):
        for name in ("topk", "unified"):
            cfg = CONFIGS[name]
            model = MLP(cfg["sizes"], k=cfg["k"], mode=cfg["mode"], seed=3)
            opt = build_optimizer("sgd", model.parameters())
            dist = Distributed(exchange=exchange)
            X, y = data["train"]
            idx = np.arange(32)
            a, b = dist.share(32)
            loss_fn = __import__("meprop_cpu").nn.SoftmaxCrossEntropy()
            loss_fn.forward(model.forward(X[idx[a:b]]), y[idx[a:b]])
            model.backward(loss_fn.backward() * np.float32((b - a) / 32))
            local = [_dense(p) for p in opt.params]
            naive = [sum(parts[1:], parts[0].copy()) for parts in
                     zip(*comm.allgather(local))]
            lins = [m for m in model.modules if hasattr(m, "track_hits")]
            dist._exchange(model, opt, lins, [], 32, b - a, 0.0, 0, False)
            got = [_dense(p) for p in opt.params]
            grads[exchange, name] = got
            err = max(float(np.max(np.abs(g - n))) for g, n in zip(got, naive))
            scale = max(float(np.max(np.abs(n))) for n in naive)
            out[f"{exchange}/{name}"] = {"max_abs_err": err, "scale": scale,
                                         "methods": dist.last["methods"],
                                         "recv": dist.last["recv"],
                                         "dense_recv": dist.last["dense_recv"],
                                         "digests": comm.allgather(dist.digest(got))}
    for name in ("topk", "unified"):   # both sum each row in rank order: the same bits
        out[f"owner==rows/{name}"] = all(np.array_equal(a, b) for a, b in
                                         zip(grads["owner", name], grads["rows", name]))
    out["global_batch"] = batch_selection_check(data)
    return out


def batch_selection_check(data):
    """Mode batch_dw: the exchanged weight gradient of every hidden layer against
    a naive reference on the global batch: the B*k largest |dy| of every rank's
    dy together (ref_topk_batch), dW = (dy masked)^T x in float64."""
    from reference import ref_topk_batch
    out = {}
    for name in ("batch_dw", "batch_dw_masked"):
        cfg = CONFIGS[name]
        model = MLP(cfg["sizes"], k=cfg["k"], mode=cfg["mode"], seed=3)
        opt = build_optimizer("sgd", model.parameters())
        dist = Distributed()
        X, y = data["train"]
        a, b = dist.share(32)
        loss_fn = __import__("meprop_cpu").nn.SoftmaxCrossEntropy()
        loss_fn.forward(model.forward(X[a:b]), y[a:b])
        model.backward(loss_fn.backward() * np.float32((b - a) / 32))
        lins = [m for m in model.modules if hasattr(m, "track_hits")]
        parts = comm.allgather([(lin._x.copy(), lin._dy.copy()) for lin in lins])
        dist._exchange(model, opt, lins, [], 32, b - a, 0.0, 0, False)
        got_w = [_dense(lin.W) for lin in lins if lin.sparse]
        # the same local gradients sent whole (x, dy) instead of as candidates
        model.backward(loss_fn.backward() * np.float32((b - a) / 32))
        dist_dy = Distributed()
        dist_dy._batch_exchange = "dy"
        dist_dy._exchange(model, opt, lins, [], 32, b - a, 0.0, 0, False)
        same_as_dy = all(np.array_equal(g, _dense(lin.W))
                         for g, lin in zip(got_w, [m for m in lins if m.sparse]))
        errs, methods = [], dist.last["methods"]
        for i, lin in enumerate(lins):
            if not lin.sparse:
                continue
            x = np.concatenate([p[i][0] for p in parts]).astype(np.float64)
            dy = np.concatenate([p[i][1] for p in parts])
            ex, idx, val = ref_topk_batch(dy, lin.k)
            ref = np.zeros(lin.W.data.shape)
            np.add.at(ref, idx, val[:, None].astype(np.float64) * x[ex])
            got = _dense(lin.W)
            errs.append(float(np.max(np.abs(got - ref)) / max(1.0, np.max(np.abs(ref)))))
        out[name] = {"rel_err": errs, "methods": methods, "same_as_dy": same_as_dy,
                     "dy_methods": dist_dy.last["methods"],
                     "digests": comm.allgather(dist.digest([_dense(p) for p in opt.params]))}
    return out


def _dense(p):
    g = p.grad
    if hasattr(g, "to_dense"):
        return g.to_dense(p.data.shape[0])
    return np.array(g, dtype=np.float32).reshape(p.data.shape)


def mesimp_check(data):
    cfg = {"sizes": [40, 64, 48, 5], "k": 4, "mode": "topk"}

    def simp(model, opt):
        s = Simplifier(model, opt, prune_rate=0.05, schedule=EveryN(5))
        return [s]

    dist = Distributed()
    model, opt, tr = train(cfg, data, dist, epochs=2, callbacks_for=simp)
    widths = comm.allgather(model.hidden_sizes)
    kept = comm.allgather(dist.digest([p.data for p in model.parameters()]))
    out = {"widths": widths, "digests": kept}
    if rank == 0:
        ref, _, _ = train(cfg, data, None, epochs=2, callbacks_for=simp)
        out["ref_widths"] = ref.hidden_sizes
    return out


def resume_check(data, out_dir):
    cfg = CONFIGS["topk"]
    ck_a = os.path.join(out_dir, "a.npz")
    ck_b = os.path.join(out_dir, "b.npz")
    model_a, opt_a, _ = train(cfg, data, Distributed(), epochs=3, checkpoint=ck_a)
    train(cfg, data, Distributed(), epochs=1, checkpoint=ck_b)
    model_c, opt_c, tr_c = train(cfg, data, Distributed(), epochs=3, checkpoint=ck_b,
                                 resume=ck_b)
    d = Distributed()
    return {"full": comm.allgather(d.digest(state_arrays(model_a, opt_a))),
            "resumed": comm.allgather(d.digest(state_arrays(model_c, opt_c))),
            "epochs": tr_c.epoch, "files": sorted(os.listdir(out_dir))}


def three(out_dir):
    """3 ranks: uneven shares (16 = 6 + 5 + 5; the last batch 8 = 3 + 3 + 2)."""
    data = blobs(40, 5, n_train=200, n_dev=40, n_test=40, seed=1)
    out = {}
    for name in ("topk", "unified"):
        model, opt, tr = train(CONFIGS[name], data, Distributed())
        out[name] = {"digests": comm.allgather(Distributed().digest(state_arrays(model, opt))),
                     "steps": tr.global_step}
        if rank == 0:
            ref, _, _ = train(CONFIGS[name], data, None)
            out[name]["max_abs_diff"] = max(float(np.max(np.abs(a.data - b.data)))
                                            for a, b in zip(model.parameters(),
                                                            ref.parameters()))
    out["interrupt"] = interrupt_check(data, out_dir)
    if rank == 0:
        with open(os.path.join(out_dir, "three.json"), "w") as f:
            json.dump(out, f)


def interrupt_check(data, out_dir):
    """Ctrl-C (request_stop) on rank 1 alone: every rank stops at the same step."""
    from meprop_cpu.train import TrainingInterrupted

    def stop(model, opt):
        def cb(trainer, epoch, step):
            if rank == 1 and trainer.global_step == 5:
                trainer.request_stop()
        return [cb]

    ck = os.path.join(out_dir, "int.npz")
    try:
        train(CONFIGS["topk"], data, Distributed(), epochs=2, checkpoint=ck, callbacks_for=stop)
        where = None
    except TrainingInterrupted as e:
        where = [e.epoch, e.step, e.checkpoint]
    return {"where": comm.allgather(where), "saved": os.path.exists(ck)}


def fail(out_dir):
    data = blobs(40, 5, n_train=400, n_dev=40, n_test=40, seed=1)

    def boom(trainer, epoch, step):
        if rank == 1 and trainer.global_step == 3:
            raise RuntimeError("deliberate failure on rank 1")

    model = MLP([40, 64, 5], k=4, seed=3)
    opt = build_optimizer("adam", model.parameters())
    Trainer(model, opt, data, batch_size=8, epochs=1000, progress=False,
            distributed=Distributed(), callbacks=[boom]).fit()


if __name__ == "__main__":
    set_num_threads(1)
    scenario, out_dir = sys.argv[1], sys.argv[2]
    {"checks": checks, "fail": fail, "three": three}[scenario](out_dir)
