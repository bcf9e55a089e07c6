"""Time to accuracy: the measure this library is judged by.

A faster epoch is worth only the accuracy it buys. :func:`run` trains each
variant of a profile from the same initial weights and the same data order
(one seeded permutation per epoch, as :class:`~meprop_cpu.train.Trainer`
draws them), evaluates the dev set at evenly spaced steps, and records dev
accuracy against the *cumulative training wall time* (evaluation excluded).
From those curves it reports, per variant and seed:

* ``time_to_target``: the training seconds at the first evaluation whose dev
  accuracy reaches the target (an upper bound at the evaluation spacing;
  ``None`` when the run never reaches it);
* ``best_dev`` and ``test_at_best_dev`` (the papers' protocol);
* the median seconds per epoch.

and, per variant, the medians over the seeds (a variant that misses the
target on more than half its seeds has no median time). The speed-ups at equal
accuracy are ratios of those medians, every variant having run at the same
thread count in the same process.

Variants: ``torch`` (the same MLP in PyTorch: ``nn.Linear`` + ReLU
(+ ``nn.Dropout``), ``torch.optim.Adam`` fused when available, the same
initial weights copied in), ``dense`` (this library's dense backprop), and
this library's meProp variants by ``mode`` (``None`` = the library's default,
see :data:`meprop_cpu.nn.DEFAULT_MODE`), ``k``, ``dropout``, and ``mesimp``
(meSimp with mode "topk", as ``meprop-cpu train --mesimp`` runs it, and the
paper's cycle schedule).

``meprop-cpu bench --tta`` runs it from the command line; results go to
``benchmarks/results/tta_<profile>.{json,md,png}``.
"""
import json
import math
import os
import statistics
import sys
import time

import numpy as np

from .end_to_end import _torch_accuracy, _torch_adam, _torch_adam_impl, _torch_mlp_like_ours
from .environment import (ENV_COMMAND, ThreadSetting, _import_torch, command_line,
                          default_thread_controls, machine_info)
from .profiles import _nproc
from .report import _atomic_write, _default_out

__all__ = ["SCHEMA", "TTA_PROFILES", "tta_profile", "time_to_target", "run_variant",
           "run", "render_markdown", "make_plot", "run_cli"]

SCHEMA = "meprop_cpu.tta/1"
_PC = time.perf_counter

TARGETS = {"mnist": 98.0, "fashion": 88.5}
# lower targets reported beside the main one (where the fast epochs pay off)
LOWER = {"mnist": [97.0, 97.5], "fashion": [87.0, 88.0]}
SIZES = [784, 500, 500, 10]


def _v(name, impl, mode=None, k=None, dropout=0.0, mesimp=False, prune_rate=0.1):
    return {"name": name, "impl": impl, "mode": mode, "k": k, "dropout": float(dropout),
            "mesimp": bool(mesimp), "prune_rate": prune_rate}


def _variants(batch, k, mesimp_k, extra=True):
    """The variants of a profile; extra: also per-example topk_dw and dense with
    dropout (left out of the quick profile to keep it under 15 minutes)."""
    from ..nn import DEFAULT_MODE
    out = [_v("PyTorch dense", "torch", "dense"),
           _v("meprop_cpu dense", "meprop_cpu", "dense"),
           _v(f"meProp k={k} (default: {DEFAULT_MODE})", "meprop_cpu", None, k),
           _v(f"meProp k={k} topk_dw", "meprop_cpu", "topk_dw", k),
           _v(f"meProp k={k} paper (topk)", "meprop_cpu", "topk", k),
           _v(f"meProp k={k} unified", "meprop_cpu", "unified", k),
           _v("meprop_cpu dense, dropout 0.2", "meprop_cpu", "dense", None, 0.2),
           _v(f"meProp k={k} {DEFAULT_MODE}, dropout 0.2", "meprop_cpu", None, k, 0.2),
           _v(f"meProp k={k} paper (topk), dropout 0.2", "meprop_cpu", "topk", k, 0.2)]
    if not extra:
        out = [v for v in out if v["mode"] != "topk_dw"
               and not (v["mode"] == "dense" and v["dropout"])]
    if mesimp_k:
        out.append(_v(f"meSimp k={mesimp_k}", "meprop_cpu", "topk", mesimp_k, mesimp=True))
    return out


def tta_profile(name):
    """The settings of a time-to-accuracy profile ("quick" | "full" | "fashion")."""
    def p(dataset, batch, epochs, evals_per_epoch, mesimp_k=None, extra=True):
        return {"name": name, "dataset": dataset, "batch": batch, "epochs": epochs,
                "evals_per_epoch": evals_per_epoch, "seeds": [1, 2, 3],
                "target": TARGETS[dataset], "lower": LOWER[dataset],
                "variants": _variants(batch, 20, mesimp_k, extra)}
    if name == "quick":
        # 7 variants x 3 seeds x 7 epochs: ~13 minutes on 2 cores (every variant
        # that reaches 98 % in the 8-epoch runs did so by epoch 6.6)
        return p("mnist", 10, 7, 5, extra=False)
    if name == "full":
        return p("mnist", 10, 20, 10)
    if name == "batch100":
        return p("mnist", 100, 20, 4, mesimp_k=160)
    if name == "fashion":
        return p("fashion", 10, 20, 5)
    raise ValueError(f"unknown time-to-accuracy profile {name!r}; expected one of "
                     f"{TTA_PROFILES}")


TTA_PROFILES = ("quick", "full", "batch100", "fashion")


def time_to_target(curve, target):
    """The training seconds of the first point of ``curve`` ([seconds, dev, ...])
    whose dev accuracy is >= ``target``; None if none is."""
    for p in curve:
        if p[1] >= target:
            return float(p[0])
    return None


# ------------------------------------------------------------------ one run

def _run_meprop(v, data, batch, epochs, seed, evals, optimizer="adam", lr=None):
    from ..nn import MLP
    from ..train import Trainer, build_optimizer
    dense = v["mode"] == "dense"
    model = MLP(SIZES, k=None if dense else v["k"], mode="dense" if dense else v["mode"],
                dropout=v["dropout"], seed=seed)
    opt = build_optimizer(optimizer, model.parameters(), lr=lr, sparse=True)
    callbacks = []
    if v["mesimp"]:
        from ..simplify import CycleSchedule, Simplifier
        callbacks.append(Simplifier(model, opt, prune_rate=v["prune_rate"],
                                    schedule=CycleSchedule(cycle_epochs=5, steps_per_epoch=8)))
    tr = Trainer(model, opt, data, batch_size=batch, epochs=epochs, evals_per_epoch=evals,
                 seed=seed, progress=False, callbacks=callbacks)
    tr.fit()
    curve, done, epoch_times = [], 0.0, []
    spe = tr.steps_per_epoch
    for r in tr.history:
        t = done + r["time_epoch"]
        curve.append([t, r["dev_acc"], r["epoch"] - 1 + r["step"] / spe, r["train_loss"]])
        if r["event"] == "epoch":
            done = t
            epoch_times.append(r["time_epoch"])
    return {"curve": curve, "best_dev": tr.best_dev, "test_at_best_dev": tr.test_at_best_dev,
            "epoch_times": epoch_times, "hidden_sizes": model.hidden_sizes,
            "step_path": tr.step_path, "mode": model.config["mode"]}


def _run_torch(torch, v, data, batch, epochs, seed, evals):
    """The MLP in PyTorch with the Trainer's data order and evaluation steps."""
    model = _torch_mlp_like_ours(torch, SIZES, v["dropout"], seed)
    opt = _torch_adam(torch, model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    X, y = data["train"]
    ytr = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    n = X.shape[0]
    spe = -(-n // batch)
    e = min(evals, spe)
    eval_steps = {spe * (i + 1) // e for i in range(e)}
    rng = np.random.default_rng(seed)
    curve, done, epoch_times = [], 0.0, []
    best_dev = test_at_best = None
    for epoch in range(1, epochs + 1):
        perm = rng.permutation(n)
        model.train()
        t_train, loss_sum, seen = 0.0, 0.0, 0
        t0 = _PC()
        for step in range(1, spe + 1):
            idx = perm[(step - 1) * batch: step * batch]
            loss = loss_fn(model(torch.from_numpy(X[idx])), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * idx.shape[0]
            seen += idx.shape[0]
            if step in eval_steps:
                t_train += _PC() - t0
                dev = _torch_accuracy(torch, model, *data["dev"])
                if best_dev is None or dev > best_dev:
                    best_dev = dev
                    if data.get("test") is not None:
                        test_at_best = _torch_accuracy(torch, model, *data["test"])
                curve.append([done + t_train, dev, epoch - 1 + step / spe, loss_sum / seen])
                t0 = _PC()
        done += t_train
        epoch_times.append(t_train)
    return {"curve": curve, "best_dev": best_dev, "test_at_best_dev": test_at_best,
            "epoch_times": epoch_times, "hidden_sizes": SIZES[1:-1], "step_path": "torch",
            "mode": "dense",
            "optimizer": f"torch.optim.Adam(lr=1e-3, {_torch_adam_impl(opt)})"}


def run_variant(v, data, batch, epochs, seed, evals_per_epoch, torch_mod=None,
                optimizer="adam", lr=None):
    """Train variant ``v`` once; returns its record (curve of [seconds, dev %,
    epochs, train loss], best dev, test at best dev, seconds per epoch).
    optimizer / lr: this library's variants only (the PyTorch one is Adam 1e-3)."""
    if v["impl"] == "torch":
        if torch_mod is None:
            raise RuntimeError("the PyTorch variant needs torch (pip install torch==2.13.0)")
        return _run_torch(torch_mod, v, data, batch, epochs, seed, evals_per_epoch)
    return _run_meprop(v, data, batch, epochs, seed, evals_per_epoch, optimizer, lr)


# ------------------------------------------------------------------ the study

def _median(xs):
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else None


def _summarize(v, runs, target, cfg_lower=()):
    tts = [r["time_to_target"] for r in runs]
    reached = [t for t in tts if t is not None]
    # a seed that never reached the target counts as the slowest: the median
    # exists only when more than half the seeds reached it
    med = statistics.median([math.inf if t is None else t for t in tts])
    tt = None if math.isinf(med) else float(med)
    lower = {}
    for t in cfg_lower:
        m = statistics.median([math.inf if x is None else x
                               for x in (time_to_target(r["curve"], t) for r in runs)])
        lower[f"{t:g}"] = None if math.isinf(m) else float(m)
    return {"name": v["name"], "reached": f"{len(reached)}/{len(tts)}",
            "time_to_target": tt, "time_to_lower": lower,
            "best_dev": _median([r["best_dev"] for r in runs]),
            "test_at_best_dev": _median([r["test_at_best_dev"] for r in runs]),
            "test_at_best_dev_seeds": [r["test_at_best_dev"] for r in runs],
            "s_per_epoch": _median([_median(r["epoch_times"]) for r in runs]),
            "final_hidden_sizes": runs[0]["hidden_sizes"]}


def _load(dataset, max_train):
    from .. import data as datasets
    data = datasets.mnist() if dataset == "mnist" else datasets.fashion_mnist()
    if max_train is not None:
        X, y = data["train"]
        data = dict(data, train=(np.ascontiguousarray(X[:max_train]),
                                 np.ascontiguousarray(y[:max_train])))
    return data


def run(cfg, threads, torch_mod=None, data=None, log=print):
    """Run the profile ``cfg`` (see :func:`tta_profile`) at ``threads`` threads
    for every variant; seeds in the outer loop, so a slow drift of the machine
    hits every variant alike. Returns the result document."""
    data = _load(cfg["dataset"], cfg.get("max_train")) if data is None else data
    controls = default_thread_controls(torch_mod)
    variants = [v for v in cfg["variants"] if v["impl"] != "torch" or torch_mod is not None]
    skipped = [v["name"] for v in cfg["variants"] if v not in variants]
    runs = {v["name"]: [] for v in variants}
    t_all = _PC()
    load_start = [round(x, 2) for x in os.getloadavg()]
    with ThreadSetting(threads, controls) as ts:
        applied = ts.check()
        for seed in cfg["seeds"]:
            for v in variants:
                r = run_variant(v, data, cfg["batch"], cfg["epochs"], seed,
                                cfg["evals_per_epoch"], torch_mod)
                r["seed"] = seed
                r["time_to_target"] = time_to_target(r["curve"], cfg["target"])
                runs[v["name"]].append(r)
                tt = r["time_to_target"]
                log(f"  seed {seed} {v['name']:42s} {_median(r['epoch_times']):6.2f} s/epoch, "
                    f"best dev {r['best_dev']:.2f}, test {r['test_at_best_dev']:.2f}, "
                    f"{cfg['target']:.1f}% dev after "
                    + (f"{tt:.1f} s" if tt is not None else "never"))
        ts.check()
    summary = [_summarize(v, runs[v["name"]], cfg["target"], cfg.get("lower", ()))
               for v in variants]
    doc = {"schema": SCHEMA, "benchmark": f"meprop-cpu bench --tta {cfg['name']} (time to accuracy)",
           "profile": cfg, "threads": threads, "threads_applied": applied,
           "n_train": int(data["train"][0].shape[0]), "summary": summary, "runs": runs,
           "skipped": skipped, "wall_s": _PC() - t_all,
           "load": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
           "machine": machine_info(torch_mod)}
    _add_ratios(doc)
    return doc


def _ratio(ref, t):
    return ref / t if (t and ref) else None


def _add_ratios(doc):
    by = {s["name"]: s for s in doc["summary"]}
    torch_s, dense_s = by.get("PyTorch dense", {}), by.get("meprop_cpu dense", {})
    for s in doc["summary"]:
        t = s["time_to_target"]
        s["speedup_vs_torch"] = _ratio(torch_s.get("time_to_target"), t)
        s["speedup_vs_dense"] = _ratio(dense_s.get("time_to_target"), t)
        s["speedup_lower"] = {
            k: [_ratio(torch_s.get("time_to_lower", {}).get(k), v),
                _ratio(dense_s.get("time_to_lower", {}).get(k), v)]
            for k, v in s.get("time_to_lower", {}).items()}


# ------------------------------------------------------------------ report

def _f(v, fmt, none="-"):
    return none if v is None else format(v, fmt)


def _torch_version(machine):
    t = machine.get("torch")
    if isinstance(t, dict):
        return t.get("version", "?")
    return t or "not installed"


def render_markdown(doc, plot=None):
    cfg = doc["profile"]
    m = doc["machine"]
    lines = [f"# Time to {cfg['target']:.1f} % dev accuracy: {cfg['dataset'].upper()}, "
             f"batch {cfg['batch']}, {doc['threads']} thread(s)", "",
             f"Command: `{doc.get('command', 'meprop-cpu bench --tta ' + cfg['name'])}`", "",
             f"MLP 784-500-500-10, Adam lr 1e-3, {cfg['epochs']} epochs on "
             f"{doc['n_train']:,} training images, dev evaluated {cfg['evals_per_epoch']} times "
             f"per epoch (evaluation time excluded), seeds {cfg['seeds']} (same initial weights "
             "and data order for every variant of a seed). Time to target: training seconds "
             "at the first evaluation at or above the target, median over the seeds (none "
             "when half or more of the seeds never reach it). Test: test accuracy at the best "
             "dev, median over seeds.", "",
             f"Machine: {m.get('cpu_model')}, {m.get('nproc', '?')} CPUs (a shared VM), "
             f"numpy {m.get('numpy')}, torch {_torch_version(m)}.", ""]
    lines += [f"Note: {n}" for n in doc.get("notes", [])] + ([""] if doc.get("notes") else [])
    lines += [
             "| variant | " + "".join(f"to {t:g} % | " for t in cfg.get("lower", ()))
             + f"to {cfg['target']:g} % (seeds) | vs PyTorch | vs own dense | s / epoch | "
             "best dev % | test % (median) | test % per seed |",
             "|---|" + "---:|" * len(cfg.get("lower", ())) + "---:|---:|---:|---:|---:|---:|---|"]
    for s in doc["summary"]:
        seeds = ", ".join(_f(x, ".2f") for x in s["test_at_best_dev_seeds"])
        low = "".join(f"{_f(s.get('time_to_lower', {}).get(f'{t:g}'), '.1f')} s | "
                      for t in cfg.get("lower", ()))
        lines.append(f"| {s['name']} | {low}{_f(s['time_to_target'], '.1f')} s ({s['reached']}) | "
                     f"{_f(s['speedup_vs_torch'], '.1f')}x | {_f(s['speedup_vs_dense'], '.1f')}x"
                     f" | {_f(s['s_per_epoch'], '.2f')} | {_f(s['best_dev'], '.2f')} | "
                     f"{_f(s['test_at_best_dev'], '.2f')} | {seeds} |")
    if cfg.get("lower"):
        lines += ["", "Speed-up at each target (median time of PyTorch dense / of this "
                  "library's dense, over the variant's median time):", "",
                  "| variant | " + "".join(f"at {t:g} % | " for t in cfg["lower"])
                  + f"at {cfg['target']:g} % |", "|---|" + "---:|" * (len(cfg["lower"]) + 1)]
        for s in doc["summary"]:
            cells = []
            for t in cfg["lower"]:
                a, b = s.get("speedup_lower", {}).get(f"{t:g}", [None, None])
                cells.append(f"{_f(a, '.1f')}x / {_f(b, '.1f')}x")
            cells.append(f"{_f(s['speedup_vs_torch'], '.1f')}x / "
                         f"{_f(s['speedup_vs_dense'], '.1f')}x")
            lines.append(f"| {s['name']} | " + " | ".join(cells) + " |")
    if doc.get("load"):
        lines += ["", "Load average (1, 5, 15 min) at the start "
                  f"{doc['load']['start']}, at the end {doc['load']['end']}."]
    if doc.get("skipped"):
        lines += ["", f"Skipped (torch not importable): {', '.join(doc['skipped'])}."]
    if plot:
        lines += ["", f"![dev accuracy against training seconds]({plot})"]
    lines += ["", f"Whole benchmark: {doc['wall_s'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def make_plot(doc, path):
    """Dev accuracy against cumulative training seconds (the first seed's curve
    of each variant); returns the path, or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cfg = doc["profile"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, runs in doc["runs"].items():
        c = np.array(runs[0]["curve"], dtype=float)
        ax.plot(c[:, 0], c[:, 1], marker=".", ms=3, lw=1.2, label=name)
    ax.axhline(cfg["target"], color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    lo = cfg["target"] - 3.0
    ax.set_ylim(lo, min(100.0, cfg["target"] + 1.5))
    ax.set_xlabel("training seconds (evaluation excluded), log scale")
    ax.set_ylabel("dev accuracy %")
    ax.set_title(f"{cfg['dataset'].upper()} batch {cfg['batch']}, {doc['threads']} thread(s), "
                 f"seed {cfg['seeds'][0]}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(doc, outdir, name):
    os.makedirs(outdir, exist_ok=True)
    jpath = os.path.join(outdir, name + ".json")
    png = make_plot(doc, os.path.join(outdir, name + ".png"))
    _atomic_write(jpath, json.dumps(doc, indent=1))
    mpath = os.path.join(outdir, name + ".md")
    _atomic_write(mpath, render_markdown(doc, os.path.basename(png) if png else None))
    return [p for p in (jpath, mpath, png) if p]


def run_cli(args, log=print):
    """``meprop-cpu bench --tta PROFILE``: returns the exit code."""
    try:
        cfg = tta_profile(args.tta)
    except ValueError as e:
        print(f"bench: error: --tta: {e}", file=sys.stderr)
        return 2
    if args.epochs is not None:
        cfg["epochs"] = args.epochs
    if args.max_train is not None:
        cfg["max_train"] = args.max_train
    if getattr(args, "seeds", None):
        cfg["seeds"] = args.seeds
    threads = max(args.threads) if args.threads else _nproc()
    torch_mod = _import_torch(not args.no_torch)
    log(f"time to accuracy ({cfg['name']}): {cfg['dataset']} batch {cfg['batch']}, "
        f"{cfg['epochs']} epochs, seeds {cfg['seeds']}, {threads} thread(s), target "
        f"{cfg['target']}% dev")
    doc = run(cfg, threads, torch_mod, log=log)
    doc["command"] = os.environ.get(ENV_COMMAND) or command_line()
    doc["flush_denormal"] = bool(getattr(args, "flush_denormal", False))
    if doc["flush_denormal"]:
        doc.setdefault("notes", []).append(
            "the whole process ran with subnormal floats flushed to zero (--flush-denormal), "
            "PyTorch included; in PyTorch's default mode its Adam slows as moments decay")
    name = args.name or f"tta_{cfg['name']}"
    paths = write(doc, args.out or _default_out(), name)
    for s in doc["summary"]:
        log(f"{s['name']:42s} {s['reached']} to {cfg['target']}%: "
            f"{_f(s['time_to_target'], '.1f')} s ({_f(s['speedup_vs_torch'], '.1f')}x PyTorch, "
            f"{_f(s['speedup_vs_dense'], '.1f')}x own dense), test {_f(s['test_at_best_dev'], '.2f')}")
    log("wrote " + ", ".join(paths))
    return 0
