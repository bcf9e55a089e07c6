"""End to end: the MNIST MLP trained with this project's
:class:`~meprop_cpu.train.Trainer` (:func:`train_meprop`) and the same MLP in
PyTorch (:func:`train_torch`, and the PyTorch helpers the other benchmarks
share), every run at every thread count (:func:`run_e2e`)."""
import statistics

import numpy as np

from .environment import (CpuMonitor, ThreadSetting, _busy, _busy_note, _loadavg, _quieter,
                          default_thread_controls)
from .timing import _PC, summarize


class HiddenBackwardTimer:
    """Wall time spent in ``Linear.backward`` of a model's hidden layers.

    Wraps the ``backward`` method of every Linear but the last (the hidden
    layers of an MLP) with a timer; ``take()`` returns the seconds accumulated
    since the last ``take()``; ``remove()`` unwraps.
    """

    def __init__(self, model, clock=None):
        self.clock = _PC if clock is None else clock
        self.total = 0.0
        self.calls = 0
        self.layers = list(model.linears[:-1])
        for lin in self.layers:
            lin.backward = self._wrap(lin.backward)

    def _wrap(self, fn):
        clock = self.clock

        def timed(dy):
            t0 = clock()
            out = fn(dy)
            self.total += clock() - t0
            self.calls += 1
            return out
        return timed

    def take(self):
        t, self.total = self.total, 0.0
        return t

    def remove(self):
        for lin in self.layers:
            lin.__dict__.pop("backward", None)


def mesimp_available():
    """(True, None) if meprop_cpu.simplify provides Simplifier and CycleSchedule,
    else (False, reason)."""
    try:
        from .. import simplify
    except Exception as e:     # ImportError or an error inside the module
        return False, f"meprop_cpu.simplify does not import ({type(e).__name__}: {e})"
    missing = [n for n in ("Simplifier", "CycleSchedule") if not hasattr(simplify, n)]
    if missing:
        return False, f"meprop_cpu.simplify lacks {missing}"
    return True, None


def _label(run):
    if run["impl"] == "torch":
        return f"torch {run['mode']}"
    if run["mode"] == "dense":
        s = "meprop_cpu dense"
    elif run["mode"] == "mesimp":
        s = f"meSimp k={run['k']}"
        if run.get("prune_rate") is not None:
            s += f" prune {run['prune_rate']:g}"
    else:
        s = f"meProp {run['mode']} k={run['k']}"
    if run.get("dropout"):
        s += f" dropout {run['dropout']:g}"
    return s


def _warm_meprop(model_fn, data, batch, steps, seed):
    """A few untimed steps on a throwaway model (first-call costs, page faults)."""
    from ..nn import SoftmaxCrossEntropy
    from ..optim import Adam
    from ..steps import ModuleStep
    if steps <= 0:
        return
    model = model_fn()
    opt = Adam(model.parameters(), lr=1e-3)
    loss = SoftmaxCrossEntropy()
    X, y = data["train"]
    idx = np.random.default_rng(seed).permutation(X.shape[0])
    step = ModuleStep(model, opt, loss)
    for s in range(steps):
        step.step_rows(X, y, idx[(s * batch) % X.shape[0]:][:batch])


def train_meprop(run, data, epochs, seed=0, warmup_steps=50, sizes=(784, 500, 500, 10)):
    """One end-to-end run of this project (Trainer). Returns its record."""
    from .. import fused
    from ..nn import MLP
    from ..train import Trainer, build_optimizer
    mode = run["mode"]
    k = None if mode == "dense" else run["k"]
    nn_mode = "topk" if mode == "mesimp" else mode

    def model_fn():
        return MLP(list(sizes), k=k, mode=nn_mode, dropout=run.get("dropout", 0.0), seed=seed)

    _warm_meprop(model_fn, data, run["batch"], warmup_steps, seed)
    model = model_fn()
    opt = build_optimizer("adam", model.parameters(), lr=1e-3, sparse=True)
    callbacks, simp = [], None
    if mode == "mesimp":
        from ..simplify import CycleSchedule, Simplifier
        simp = Simplifier(model, opt, prune_rate=run.get("prune_rate", 0.1),
                          schedule=CycleSchedule(cycle_epochs=5, steps_per_epoch=8))
        callbacks.append(simp)
    # the fused step times its hidden layers' backward itself; wrapping
    # Linear.backward would send the Trainer down the module path
    fused_path = fused.unsupported(model, opt) is None
    timer = None if fused_path else HiddenBackwardTimer(model)
    hidden = []

    fused_seen = [0.0]

    def on_epoch(trainer, rec):
        # the module path's Linear.backward calls, or the fused step's own clock
        fs = trainer._fused_step
        fused_t = fs.time_hidden_backward if fs is not None else 0.0
        hidden.append((timer.take() if timer is not None else 0.0) + fused_t - fused_seen[0])
        fused_seen[0] = fused_t
    trainer = Trainer(model, opt, data, batch_size=run["batch"], epochs=epochs, seed=seed,
                      progress=False, callbacks=callbacks, on_epoch=on_epoch)
    t0 = _PC()
    summary = trainer.fit()
    wall = _PC() - t0
    if timer is not None:
        timer.remove()
    ends = [r for r in trainer.history if r["event"] == "epoch"]
    per_epoch = []
    for r, h in zip(ends, hidden):
        per_epoch.append({"epoch": r["epoch"], "time_epoch": r["time_epoch"],
                          "time_forward": r["time_forward"], "time_backward": r["time_backward"],
                          "time_update": r["time_update"], "time_hidden_backward": h,
                          "train_loss": r["train_loss"], "dev_acc": r["dev_acc"],
                          "test_acc": r.get("test_acc"), "hidden_sizes": r["hidden_sizes"]})
    out = {"best_dev": summary["best_dev"], "test_at_best_dev": summary["test_at_best_dev"],
           "best_epoch": summary["best_epoch"], "per_epoch": per_epoch, "wall_s": wall,
           "steps_per_epoch": trainer.steps_per_epoch, "final_hidden_sizes": model.hidden_sizes,
           "optimizer": "meprop_cpu.optim.Adam(lr=1e-3, sparse=True)",
           "step_path": trainer.step_path}
    if simp is not None:
        out["width_log"] = [[g, list(s)] for g, s in simp.sizes_log]
        out["optimizer_resets"] = list(simp.optimizer_resets)
    return out


def _torch_mlp(torch, sizes, dropout):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
            if dropout:
                layers.append(torch.nn.Dropout(dropout))
    return torch.nn.Sequential(*layers)


def _torch_mlp_like_ours(torch, sizes, dropout, seed):
    """:func:`_torch_mlp` with the initial weights of this project's
    ``MLP(sizes, seed=seed)`` copied in (Glorot uniform, zero biases)."""
    from ..nn import MLP
    ref = MLP(list(sizes), k=None, mode="dense", seed=seed)
    torch.manual_seed(seed)
    model = _torch_mlp(torch, sizes, dropout)
    with torch.no_grad():
        for t, m in zip([m for m in model if isinstance(m, torch.nn.Linear)], ref.linears):
            t.weight.copy_(torch.from_numpy(m.W.data))
            t.bias.copy_(torch.from_numpy(m.b.data))
    return model


def _torch_accuracy(torch, model, X, y, batch=1024):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, X.shape[0], batch):
            pred = model(torch.from_numpy(X[i:i + batch])).argmax(1).numpy()
            correct += int((pred == y[i:i + batch]).sum())
    model.train()
    return 100.0 * correct / X.shape[0]


def train_torch(torch, run, data, epochs, seed=0, warmup_steps=50, sizes=(784, 500, 500, 10)):
    """The same MLP in PyTorch: initial weights copied from this project's
    MLP(seed) (Glorot uniform, zero biases), Adam lr 1e-3, the Trainer's data
    order (one ``default_rng(seed).permutation`` per epoch, last partial batch
    kept) and protocol (dev after each epoch, test when dev improves)."""
    sizes = list(sizes)
    model = _torch_mlp_like_ours(torch, sizes, run.get("dropout", 0.0), seed)
    opt = _torch_adam(torch, model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    X, y = data["train"]
    Xd, yd = data["dev"]
    Xt, yt = data.get("test") or (None, None)
    ytr = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    B = run["batch"]
    n = X.shape[0]
    spe = -(-n // B)
    if warmup_steps > 0:        # on a throwaway copy
        wm = _torch_mlp(torch, sizes, run.get("dropout", 0.0))
        wo = _torch_adam(torch, wm.parameters())
        for s in range(warmup_steps):
            i = np.arange(s * B, (s + 1) * B) % n
            loss = loss_fn(wm(torch.from_numpy(X[i])), ytr[i])
            loss.backward()
            wo.step()
            wo.zero_grad(set_to_none=True)
        del wm, wo
    rng = np.random.default_rng(seed)
    per_epoch = []
    best_dev = test_at_best = best_epoch = None
    t_run = _PC()
    model.train()
    for epoch in range(1, epochs + 1):
        perm = rng.permutation(n)
        t_fwd = t_bwd = t_upd = 0.0
        loss_sum = 0.0
        t_start = _PC()
        for step in range(spe):
            idx = perm[step * B:(step + 1) * B]
            xb = torch.from_numpy(X[idx])
            yb = ytr[idx]
            t0 = _PC()
            loss = loss_fn(model(xb), yb)
            t1 = _PC()
            loss.backward()
            t2 = _PC()
            opt.step()
            opt.zero_grad(set_to_none=True)
            t3 = _PC()
            t_fwd += t1 - t0
            t_bwd += t2 - t1
            t_upd += t3 - t2
            loss_sum += float(loss.detach()) * idx.shape[0]
        t_epoch = _PC() - t_start
        dev = _torch_accuracy(torch, model, Xd, yd)
        if best_dev is None or dev > best_dev:
            best_dev, best_epoch = dev, epoch
            test_at_best = _torch_accuracy(torch, model, Xt, yt) if Xt is not None else None
        per_epoch.append({"epoch": epoch, "time_epoch": t_epoch, "time_forward": t_fwd,
                          "time_backward": t_bwd, "time_update": t_upd,
                          "time_hidden_backward": None, "train_loss": loss_sum / n,
                          "dev_acc": dev, "test_acc": test_at_best,
                          "hidden_sizes": sizes[1:-1]})
    return {"best_dev": best_dev, "test_at_best_dev": test_at_best, "best_epoch": best_epoch,
            "per_epoch": per_epoch, "wall_s": _PC() - t_run, "steps_per_epoch": spe,
            "final_hidden_sizes": sizes[1:-1],
            "optimizer": f"torch.optim.Adam(lr=1e-3, {_torch_adam_impl(opt)})"}


def _torch_adam(torch, params, lr=1e-3):
    """torch.optim.Adam, fused (one kernel for all parameters: the fastest on
    the CPU since torch 2.4) when this torch supports it, else the default."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (TypeError, RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def _torch_adam_impl(opt):
    d = opt.defaults
    return ", ".join(f"{k}={d.get(k)}" for k in ("foreach", "fused") if k in d)


def _one_e2e(run, data, epochs, torch_mod, seed, warmup_steps, settler):
    if settler is not None:
        settler.settle()
    load0 = _loadavg()
    mon = CpuMonitor().start()
    if run["impl"] == "torch":
        r = train_torch(torch_mod, run, data, epochs, seed, warmup_steps)
    else:
        r = train_meprop(run, data, epochs, seed, warmup_steps)
    r["load_start"], r["load_end"], r["cpu"] = load0, _loadavg(), mon.stop()
    r["other_share"] = r["cpu"]["other_share"]
    return r


def _e2e_summary(per_epoch):
    out = {}
    for key in ("time_epoch", "time_forward", "time_backward", "time_update",
                "time_hidden_backward"):
        vals = [r[key] for r in per_epoch if r.get(key) is not None]
        out[key] = summarize(vals) if vals else None
    fb = [r["time_forward"] + r["time_backward"] for r in per_epoch]
    out["time_fwd_bwd"] = summarize(fb) if fb else None
    return out


def run_e2e(runs, data, epochs, threads_list, torch_mod=None, controls=None, seed=0,
            warmup_steps=50, log=print, repeats=1, settler=None, retries=0):
    """Train every run of ``runs`` at every thread count; returns the records.

    With ``repeats`` > 1 the runs are repeated, the order rotating, and the
    per-epoch records of all repeats are summarized together (accuracies
    from the first repeat)."""
    controls = default_thread_controls(torch_mod) if controls is None else controls
    out = []
    ok, why = mesimp_available()
    for T in threads_list:
        todo = []
        for run in runs:
            if run["impl"] == "torch" and torch_mod is None:
                log(f"  skip {_label(run)}: torch is not importable (or --no-torch)")
                continue
            if run["mode"] == "mesimp" and not ok:
                log(f"  skip {_label(run)}: {why}")
                continue
            todo.append(run)
        recs = {i: None for i in range(len(todo))}
        with ThreadSetting(T, controls) as ts:
            applied = ts.check()
            for rep in range(repeats):
                order = list(range(len(todo)))
                s = rep % max(1, len(order))
                for i in order[s:] + order[:s]:
                    run = todo[i]
                    r = None
                    for attempt in range(1 + retries):
                        try:
                            r1 = _one_e2e(run, data, epochs, torch_mod, seed, warmup_steps,
                                          settler)
                        except Exception as e:        # keep the other runs' results
                            if run["mode"] != "mesimp":
                                raise
                            log(f"  meSimp run failed ({type(e).__name__}: {e}); skipped")
                            ok, why = False, f"the meSimp run failed: {type(e).__name__}: {e}"
                            break
                        r1["attempts"] = attempt + 1
                        if _busy(r1["cpu"]) and attempt < retries:
                            log(f"  e2e {_label(run)} batch {run['batch']} threads {T}"
                                f"{_busy_note(r1['cpu'])}; training again")
                        r = _quieter(r, r1) if r is not None else r1
                        if not _busy(r1["cpu"]):
                            break
                    if r is None:
                        continue
                    if recs[i] is None:
                        recs[i] = dict(run, label=_label(run), threads=T, epochs=epochs,
                                       n_train=int(data["train"][0].shape[0]),
                                       threads_applied=applied, repeats=[])
                    recs[i]["repeats"].append(r)
                    e = r["per_epoch"][-1]
                    log(f"  e2e {_label(run):32s} batch {run['batch']:3d} threads {T}: "
                        f"{np.median([p['time_epoch'] for p in r['per_epoch']]):.2f} s/epoch, "
                        f"dev {r['best_dev']:.2f} test {r['test_at_best_dev']:.2f} "
                        f"(last epoch: loss {e['train_loss']:.4f}){_busy_note(r['cpu'])}")
            ts.check()
        for i in range(len(todo)):
            rec = recs[i]
            if rec is None:
                continue
            first = rec["repeats"][0]
            all_epochs = [p for r in rec["repeats"] for p in r["per_epoch"]]
            shares = [r["other_share"] for r in rec["repeats"] if r["other_share"] is not None]
            rec["other_share"] = max(shares) if shares else None
            # the whole training: per repeat the sum of its epoch times; the
            # median over the repeats (which ran in rotated order)
            totals = [float(sum(p["time_epoch"] for p in r["per_epoch"]))
                      for r in rec["repeats"]]
            rec["total_time_train_repeats"] = totals
            rec["total_time_train"] = float(statistics.median(totals))
            rec.update({"best_dev": first["best_dev"], "test_at_best_dev":
                        first["test_at_best_dev"], "final_hidden_sizes":
                        first["final_hidden_sizes"], "optimizer": first["optimizer"],
                        "summary": _e2e_summary(all_epochs)})
            if "width_log" in first:
                rec["width_log"] = first["width_log"]
            out.append(rec)
    return out
