"""Accuracy of meProp's modes against dense backprop: the study behind the
default mode (docs/stability.md).

For one data set, batch size and optimizer, trains the MNIST-shaped MLP
784-500-500-10 with each variant for N epochs and several seeds (same initial
weights and data order per seed) and records dev accuracy per epoch, the
training loss, and test accuracy at the best dev. Accuracy only: run it at one
thread (results are bit-identical for any thread count), timings are not its
point (``meprop-cpu bench --tta`` measures time to accuracy).

    python benchmarks/stability.py --dataset mnist --batch 10 --optimizer adam
    python benchmarks/stability.py --dataset fashion --batch 10
    python benchmarks/stability.py --dataset mnist --batch 100
    python benchmarks/stability.py --dataset mnist --batch 10 --optimizer adagrad

Variants (--variants): dense, a mode name (topk_dw, topk, unified, random),
optionally with ":dropout" (e.g. topk:0.2), or unified_dw: the unified top-k for
the weight gradient with the exact input gradient (an experiment, not a library
mode: it makes every "unified" layer of this process pass the exact dx, so it
cannot share a run with "unified"). Writes
benchmarks/results/stability/<dataset>_b<batch>_<optimizer>.{json,md}.
"""
import argparse
import functools
import json
import os
import statistics
import sys
import time

import meprop_cpu as mp
from meprop_cpu.bench import tta

HERE = os.path.dirname(os.path.abspath(__file__))


def _variant(text, k):
    mode, _, drop = text.partition(":")
    if mode == "unified_dw":
        from meprop_cpu import nn
        # mp_layer_backward already takes unified with exact_dx; the library offers
        # the pair as no mode, so the experiment turns it on for this process
        nn.Linear.exact_dx = property(lambda self: self.mode in ("topk_dw", "unified"))
        v = _variant("unified" + (":" + drop if drop else ""), k)
        v["name"] = "unified_dw" + v["name"][len("unified"):]
        return v
    dropout = float(drop) if drop else 0.0
    name = mode if not dropout else f"{mode} dropout {dropout:g}"
    return tta._v(name, "meprop_cpu", mode, None if mode == "dense" else k, dropout)


def _one(task, data, batch, epochs, optimizer, lr, threads):
    seed, v = task
    mp.set_num_threads(threads)
    r = tta.run_variant(v, data, batch, epochs, seed, 1, optimizer=optimizer, lr=lr)
    r["seed"] = seed
    print(f"seed {seed} {v['name']:20s} dev by epoch "
          f"{[round(c[1], 2) for c in r['curve']]} test at best dev "
          f"{r['test_at_best_dev']:.2f}", flush=True)
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=("mnist", "fashion"), default="mnist")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--optimizer", choices=("adam", "adagrad", "sgd"), default="adam")
    p.add_argument("--lr", type=float, default=None, help="default: the optimizer's (train.py)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--tag", default="", help="appended to the output file names")
    p.add_argument("--variants", default="dense,topk_dw,topk")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(HERE, "results", "stability"))
    p.add_argument("--jobs", type=int, default=1,
                   help="train this many (seed, variant) runs at once in worker processes "
                        "(accuracy is unaffected: every run is deterministic)")
    a = p.parse_args(argv)
    mp.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    names = a.variants.split(",")
    if "unified_dw" in [n.partition(":")[0] for n in names] and \
            "unified" in [n.partition(":")[0] for n in names]:
        p.error("--variants: unified_dw and unified cannot share a run")
    variants = [_variant(t, a.k) for t in names]
    data = tta._load(a.dataset, None)
    lr = a.lr if a.lr is not None else (0.1 if a.optimizer == "adagrad" else None)
    name = f"{a.dataset}_b{a.batch}_{a.optimizer}" + (f"_lr{a.lr:g}" if a.lr else "") + \
        (f"_{a.tag}" if a.tag else "")
    os.makedirs(a.out, exist_ok=True)
    runs = {v["name"]: [] for v in variants}
    t0 = time.time()
    tasks = [(seed, v) for seed in seeds for v in variants]
    job = functools.partial(_one, data=data, batch=a.batch, epochs=a.epochs,
                            optimizer=a.optimizer, lr=lr, threads=a.threads)
    if a.jobs > 1:
        import multiprocessing as mpr
        with mpr.get_context("fork").Pool(a.jobs) as pool:
            results = pool.map(job, tasks, chunksize=1)
    else:
        results = [job(t) for t in tasks]
    for (seed, v), r in zip(tasks, results):
        runs[v["name"]].append(r)
    rows = []
    for v in variants:
        rs = runs[v["name"]]
        tests = [r["test_at_best_dev"] for r in rs]
        ep2 = [r["curve"][1][1] if len(r["curve"]) > 1 else None for r in rs]
        loss1 = [r["curve"][0][3] for r in rs]
        rows.append({"variant": v["name"], "test_seeds": tests,
                     "test_mean": statistics.mean(tests),
                     "dev_after_2_epochs": ep2, "train_loss_epoch_1": loss1})
    doc = {"command": "python benchmarks/" + os.path.basename(__file__) + " " + " ".join(
               sys.argv[1:] if argv is None else argv),
           "dataset": a.dataset, "batch": a.batch, "optimizer": a.optimizer, "lr": lr,
           "k": a.k, "epochs": a.epochs, "seeds": seeds, "rows": rows, "runs": runs,
           "wall_s": time.time() - t0}
    with open(os.path.join(a.out, name + ".json"), "w") as f:
        json.dump(doc, f, indent=1)
    dense = next((r for r in rows if r["variant"] == "dense"), None)
    lines = [f"# {a.dataset.upper()}, batch {a.batch}, {a.optimizer}"
             f"{' lr %g' % lr if lr else ''}, k = {a.k}, {a.epochs} epochs", "",
             f"Command: `{doc['command']}`", "",
             "Test accuracy at the best dev epoch; dev accuracy after 2 epochs; training "
             "loss over the first epoch. One value per seed " + str(seeds) + ".", "",
             "| variant | test % mean | vs dense | test % per seed | dev % after 2 epochs | "
             "train loss, epoch 1 |", "|---|---:|---:|---|---|---|"]
    for r in rows:
        d = r["test_mean"] - dense["test_mean"] if dense else None
        lines.append(f"| {r['variant']} | {r['test_mean']:.2f} | "
                     f"{'' if d is None else f'{d:+.2f}'} | "
                     f"{', '.join(f'{x:.2f}' for x in r['test_seeds'])} | "
                     f"{', '.join('-' if x is None else f'{x:.2f}' for x in r['dev_after_2_epochs'])} | "
                     f"{', '.join(f'{x:.3f}' for x in r['train_loss_epoch_1'])} |")
    with open(os.path.join(a.out, name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
