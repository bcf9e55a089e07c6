"""meSimp on MNIST: the TKDE paper's configuration, measured.

Runs, with the same data order, optimizer (Adam, lr 1e-3) and thread count:

1. meSimp: MLP 784-500-500-10, top-k backprop with k = 160, minibatch 100,
   20 epochs, prune rate 0.1, cycles of 5 epochs (even cycles simplify 8 times
   an epoch, odd cycles train normally; the optimizer reset at cycle ends as
   the authors' code does it, or with --reset paper as the paper describes).
2. dense-w: a plain dense MLP 784-w-w-10 trained from scratch with ordinary
   backprop, w = the meSimp model's final hidden width averaged and rounded.
3. dense-500: the original dense 784-500-500-10 trained with ordinary backprop
   (the paper's 98.20 baseline; skip with --skip-dense500, then the inference
   comparison uses the same architecture at its initial weights, which times
   the same).

Each of the three is run for every seed of --seeds (default 0,1,2); the
tables give every run and the mean ± std over seeds. Then, on the first
seed's models, interleaved and with medians over repeats:
* inference on the 10,000 test images (``predict``, batch 1024): the shrunk
  model loaded from its exported file (``nn.load``: a plain dense MLP) vs the
  original 500-wide model;
* training time per step (forward + backward + update, minibatch 100) at the
  500-wide and at the shrunk sizes, with meProp k=160 (whose backward turns
  dense once a layer is no wider than k) and with dense backprop, scaled to an
  epoch of 550 steps.
The meSimp run's own per-epoch training times come from its JSON log.

Results: benchmarks/results/mesimp_mnist.json and .md (plus the run logs
mesimp_mnist_*.jsonl). Use --threads 1 on a shared machine.

    python benchmarks/mesimp_mnist.py --threads 1
"""
import argparse
import os
import sys


def _early_threads(argv):
    """--threads must reach OpenMP / OpenBLAS before numpy is imported."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return None


_T = _early_threads(sys.argv[1:])
if _T is not None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = _T
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import datetime      # noqa: E402
import json          # noqa: E402
import platform      # noqa: E402
import shlex         # noqa: E402
import statistics    # noqa: E402
import tempfile      # noqa: E402
import time          # noqa: E402

import numpy as np   # noqa: E402

import meprop_cpu as mp                                       # noqa: E402
from meprop_cpu import data as mpdata, nn                           # noqa: E402
from meprop_cpu.steps import ModuleStep                           # noqa: E402
from meprop_cpu.simplify import CycleSchedule, Simplifier     # noqa: E402
from meprop_cpu.train import Trainer, build_optimizer         # noqa: E402

try:
    from threadpoolctl import threadpool_info, threadpool_limits
except ImportError:
    threadpool_info = threadpool_limits = None

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
PAPER = {"mesimp_width": 154, "mesimp_test": 98.31, "dense500_test": 98.20}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--k", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--prune-rate", type=float, default=0.1)
    p.add_argument("--cycle-epochs", type=int, default=5)
    p.add_argument("--steps-per-epoch", type=int, default=8)
    p.add_argument("--reset", choices=("authors", "paper"), default="authors",
                   help="optimizer reset at cycle ends (CycleSchedule's reset)")
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--seeds", default="0,1,2",
                   help="comma-separated seeds; every run is repeated per seed (default 0,1,2)")
    p.add_argument("--evals-per-epoch", type=int, default=8,
                   help="dev evaluations per epoch (the authors' code: after every 1/8 epoch)")
    p.add_argument("--dense-update", action="store_true",
                   help="dense Adam update (the papers); default: row-sparse (lazy) Adam")
    p.add_argument("--skip-dense500", action="store_true",
                   help="do not train the dense 500-wide baseline")
    p.add_argument("--max-train", type=int, default=None, help="smoke tests only")
    p.add_argument("--repeats", type=int, default=21, help="timing repeats (median)")
    p.add_argument("--out", default=os.path.join(RESULTS, "mesimp_mnist.json"))
    p.add_argument("--save-model", default=None,
                   help="keep the exported shrunk model here (default: a temporary file)")
    return p.parse_args(argv)


def _on_epoch(name):
    def f(trainer, rec):
        print(f"  [{name}] epoch {rec['epoch']:2d}: loss {rec['train_loss']:.4f}  "
              f"dev {rec['dev_acc']:.2f}  test@best {rec['test_acc']:.2f}  "
              f"{rec['time_epoch']:.2f}s  hidden {rec['hidden_sizes']}", flush=True)
    return f


_RESET_TEXT = {
    "authors": "as the authors' code does it, moments zeroed with the step counts kept (no "
               "new bias correction) after each simplification point of every cycle's last "
               "epoch",
    "paper": "the whole state (moments and step counts) once, after every cycle's last "
             "minibatch"}


def train_run(name, model, data, args, log, simplify=False):
    opt = build_optimizer("adam", model.parameters(), sparse=not args.dense_update)
    callbacks, simp = [], None
    if simplify:
        simp = Simplifier(model, opt, prune_rate=args.prune_rate,
                          schedule=CycleSchedule(args.cycle_epochs, args.steps_per_epoch,
                                                 reset=args.reset),
                          verbose=True)
        callbacks.append(simp)
    tr = Trainer(model, opt, data, batch_size=args.batch_size, epochs=args.epochs,
                 seed=args.seed, log_json=log, progress=False, callbacks=callbacks,
                 evals_per_epoch=args.evals_per_epoch,
                 on_epoch=_on_epoch(name))
    t0 = time.perf_counter()
    s = tr.fit()
    wall = time.perf_counter() - t0
    epochs = [r for r in tr.history if r["event"] == "epoch"]
    out = {"name": name, "sizes": model.sizes, "k": model.config["k"],
           "mode": model.config["mode"], "best_dev": s["best_dev"],
           "test_at_best_dev": s["test_at_best_dev"], "best_epoch": s["best_epoch"],
           "final_test": float(model.accuracy(*data["test"])),
           "time_epoch": [r["time_epoch"] for r in epochs],
           "time_forward": [r["time_forward"] for r in epochs],
           "time_backward": [r["time_backward"] for r in epochs],
           "time_update": [r["time_update"] for r in epochs],
           "hidden_sizes_per_epoch": [r["hidden_sizes"] for r in epochs],
           "dev_per_epoch": [r["dev_acc"] for r in epochs],
           "total_train_time": s["total_time_train"], "wall_time": wall,
           "log": os.path.relpath(log, os.path.dirname(HERE))}
    if simp is not None:
        out["simplification_steps"] = len(simp.log)
        out["optimizer_resets"] = simp.optimizer_resets
        out["sizes_log"] = simp.sizes_log
        out["became_dense"] = [(r["global_step"], r["became_dense"]) for r in simp.log
                               if r["became_dense"]]
    return out


def interleaved(fns, repeats, warmup=3):
    """Median seconds per call of each fn, the variants alternated call by call."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {n: [] for n in fns}
    for _ in range(repeats):
        for n, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[n].append(time.perf_counter() - t0)
    return {n: {"median": statistics.median(t), "min": min(t), "max": max(t), "repeats": len(t)}
            for n, t in times.items()}


def step_fn(model, data, batch, seed):
    """One training step (forward, top-k/dense backward, Adam update) on a fixed
    stream of minibatches."""
    X, y = data["train"]
    opt = build_optimizer("adam", model.parameters())
    loss = nn.SoftmaxCrossEntropy()
    rng = np.random.default_rng(seed)
    batches = [rng.choice(X.shape[0], batch, replace=False) for _ in range(64)]
    state = {"i": 0}

    stepper = ModuleStep(model, opt, loss)

    def f():
        i = batches[state["i"] % len(batches)]
        state["i"] += 1
        stepper.step_rows(X, y, i)
    return f


def steps_block(f, n):
    def g():
        for _ in range(n):
            f()
    return g


def seed_runs(seed, data, args, base, full):
    """meSimp, dense at its final width and (optionally) dense 500 for one seed."""
    a = argparse.Namespace(**vars(args))
    a.seed = seed
    tag = "" if seed == args.seeds[0] else f"_seed{seed}"
    print(f"[seed {seed}] meSimp: {full}, k={a.k}, batch {a.batch_size}, {a.epochs} epochs",
          flush=True)
    mes_model = nn.MLP(full, k=a.k, mode="topk", seed=seed)
    mes = train_run("mesimp", mes_model, data, a, base + f"_mesimp{tag}.jsonl", simplify=True)
    final_hidden = mes_model.hidden_sizes
    width = int(round(float(np.mean(final_hidden))))
    mes["final_hidden_sizes"] = final_hidden
    mes["average_final_width"] = float(np.mean(final_hidden))
    print(f"[seed {seed}] meSimp final hidden sizes {final_hidden} (average "
          f"{np.mean(final_hidden):.1f}); test at best dev {mes['test_at_best_dev']:.2f}",
          flush=True)
    print(f"[seed {seed}] dense {[784, width, width, 10]} from scratch", flush=True)
    dw = train_run(f"dense-{width}", nn.MLP([784, width, width, 10], k=None, mode="dense",
                                            seed=seed), data, a, base + f"_dense_w{tag}.jsonl")
    orig = nn.MLP(full, k=None, mode="dense", seed=seed)
    d500 = None
    if not args.skip_dense500:
        print(f"[seed {seed}] dense {full}", flush=True)
        d500 = train_run(f"dense-{full[1]}", orig, data, a, base + f"_dense500{tag}.jsonl")
    return {"seed": seed, "mesimp": mes, "dense_w": dw, "dense_500": d500}, mes_model, orig


def _mean_std(v):
    v = [x for x in v if x is not None]
    if not v:
        return None
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "n": len(v)}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.seeds = [int(x) for x in str(args.seeds).split(",")]
    mp.set_num_threads(args.threads)
    limits = threadpool_limits(args.threads) if threadpool_limits is not None else None
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    base = os.path.splitext(os.path.abspath(args.out))[0]
    data = mpdata.mnist()
    if args.max_train is not None:
        X, y = data["train"]
        data = dict(data, train=(np.ascontiguousarray(X[:args.max_train]), y[:args.max_train]))
    H = args.hidden
    full = [784, H, H, 10]
    print(f"threads {mp.get_num_threads()}, config {mp.show_config()}", flush=True)

    per_seed, first = [], None
    for seed in args.seeds:
        runs, mes_model, orig = seed_runs(seed, data, args, base, full)
        per_seed.append(runs)
        if first is None:
            first = (mes_model, orig)
    mes_model, orig = first
    model_path = args.save_model or os.path.join(tempfile.mkdtemp(), "mesimp_mnist_model.npz")
    mes_model.save(model_path)

    # inference: exported shrunk model (first seed) vs the original architecture
    Xt, yt = data["test"]
    shrunk = nn.load(model_path)
    assert shrunk.sizes == mes_model.sizes
    pred_equal = bool(np.array_equal(shrunk.predict(Xt), mes_model.predict(Xt)))
    inf = interleaved({"original": lambda: orig.predict(Xt),
                       "shrunk": lambda: shrunk.predict(Xt)}, args.repeats)
    inf_speedup = inf["original"]["median"] / inf["shrunk"]["median"]
    print(f"inference on {Xt.shape[0]} images: original {inf['original']['median']*1e3:.1f} ms, "
          f"shrunk {inf['shrunk']['median']*1e3:.1f} ms -> {inf_speedup:.2f}x", flush=True)

    # training step time at the original and the shrunk sizes, meProp (same k) and dense
    n_steps = 20
    variants = {}
    for name, sizes in (("original", full), ("shrunk", mes_model.sizes)):
        for bp, k in (("topk", args.k), ("dense", None)):
            m = nn.MLP(sizes, k=k, mode="topk" if k else "dense", seed=args.seeds[0] + 1)
            variants[f"{name}/{bp}"] = steps_block(step_fn(m, data, args.batch_size, 1), n_steps)
    tt = interleaved(variants, max(5, args.repeats // 3), warmup=1)
    spe = -(-data["train"][0].shape[0] // args.batch_size)
    train_step = {n: {"per_step_ms": v["median"] / n_steps * 1e3,
                      "per_epoch_s": v["median"] / n_steps * spe} for n, v in tt.items()}
    train_speedup = tt["original/topk"]["median"] / tt["shrunk/topk"]["median"]

    n_params = {"original": sum(p.data.size for p in orig.parameters()),
                "shrunk": sum(p.data.size for p in shrunk.parameters())}
    if limits is not None:
        limits.restore_original_limits()
    cfg = mp.show_config()
    summary = {
        "mesimp_test": _mean_std([r["mesimp"]["test_at_best_dev"] for r in per_seed]),
        "mesimp_width": _mean_std([r["mesimp"]["average_final_width"] for r in per_seed]),
        "dense_w_test": _mean_std([r["dense_w"]["test_at_best_dev"] for r in per_seed]),
        "dense_500_test": _mean_std([r["dense_500"]["test_at_best_dev"] for r in per_seed
                                     if r["dense_500"] is not None])}
    result = {
        "benchmark": "mesimp_mnist",
        "command": "python benchmarks/mesimp_mnist.py " + " ".join(shlex.quote(a) for a in argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "config": cfg,
                    "note": "2-core machine shared with other work; all timings with "
                            f"{args.threads} thread(s) for kernels and BLAS"},
        "config": {"sizes": full, "k": args.k, "batch_size": args.batch_size,
                   "epochs": args.epochs, "optimizer": "adam", "lr": 1e-3,
                   "optimizer_update": "dense" if args.dense_update else "row-sparse (lazy)",
                   "prune_rate": args.prune_rate, "cycle_epochs": args.cycle_epochs,
                   "steps_per_epoch": args.steps_per_epoch, "reset": args.reset,
                   "seeds": args.seeds,
                   "threads": args.threads, "evals_per_epoch": args.evals_per_epoch,
                   "n_train": int(data["train"][0].shape[0])},
        "paper": PAPER,
        "runs": per_seed,
        "summary": summary,
        "inference": {"images": int(Xt.shape[0]), "batch": 1024, "times_s": inf,
                      "speedup": inf_speedup, "original_sizes": orig.sizes,
                      "shrunk_sizes": shrunk.sizes, "parameters": n_params,
                      "exported_predictions_equal": pred_equal, "seed": args.seeds[0],
                      "original_weights": ("trained dense-500" if not args.skip_dense500
                                           else "initial")},
        "train_step": {"steps_per_block": n_steps, "batch": args.batch_size,
                       "times": train_step, "speedup_topk": train_speedup,
                       "original_sizes": full, "shrunk_sizes": mes_model.sizes},
        "targets": {
            "average_width_le_160": summary["mesimp_width"]["mean"] <= 160,
            "test_ge_98_2": summary["mesimp_test"]["mean"] >= 98.2,
            "beats_dense_same_width": (summary["mesimp_test"]["mean"]
                                       > summary["dense_w_test"]["mean"]),
            "inference_ge_3x": inf_speedup >= 3.0},
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    md = markdown(result)
    with open(base + ".md", "w") as f:
        f.write(md)
    print(md)
    return 0


def _pct(v):
    return "-" if v is None else f"{v:.2f}"


def _ms(v, fmt="%.2f"):
    if v is None:
        return "-"
    return (fmt % v["mean"]) + (" ± " + fmt % v["std"] if v["n"] > 1 else "")


def markdown(r):
    c, inf, ts, sm = r["config"], r["inference"], r["train_step"], r["summary"]
    runs = r["runs"]
    L = ["# meSimp on MNIST (784-500-500-10, k = %d, batch %d, %d epochs)" %
         (c["k"], c["batch_size"], c["epochs"]), "",
         "Command: `%s`  " % r["command"],
         "Date: %s; %s; threads: %d (kernels and BLAS); BLAS: %s.  " % (
             r["date"], r["machine"]["platform"], c["threads"],
             r["machine"]["config"].get("blas", {}).get("library")),
         "Note: %s." % r["machine"]["note"], "",
         "Adam lr 1e-3 (%s update), prune rate %g, cycles of %d epochs (even cycles run %d "
         "simplification steps per epoch, odd cycles train normally; optimizer reset at "
         "cycle ends: %s); seeds %s. Test accuracy is reported at the best dev accuracy (dev "
         "evaluated %d times per epoch)." % (
             c["optimizer_update"], c["prune_rate"], c["cycle_epochs"], c["steps_per_epoch"],
             _RESET_TEXT[c.get("reset", "paper")], c["seeds"], c["evals_per_epoch"]),
         "", "## Accuracy and size", "",
         "| seed | model | hidden sizes | backprop | test at best dev (%) | best dev (%) | "
         "mean epoch time (s) |", "|---|---|---|---|---|---|---|"]

    def row(seed, run, backprop):
        return "| %d | %s | %s | %s | %s | %s | %.2f |" % (
            seed, run["name"], run["sizes"][1:-1], backprop, _pct(run["test_at_best_dev"]),
            _pct(run["best_dev"]), float(np.mean(run["time_epoch"])))
    for rs in runs:
        L.append(row(rs["seed"], rs["mesimp"], f"top-{c['k']} + meSimp"))
        L.append(row(rs["seed"], rs["dense_w"], "dense"))
        if rs["dense_500"] is not None:
            L.append(row(rs["seed"], rs["dense_500"], "dense"))
    L += ["", "| summary over seeds (mean ± std) | this run | paper |", "|---|---|---|",
          "| meSimp average final hidden width | %s | 154 |" % _ms(sm["mesimp_width"], "%.1f"),
          "| meSimp test at best dev (%%) | %s | 98.31 |" % _ms(sm["mesimp_test"]),
          "| dense at meSimp's final width, test (%%) | %s | - |" % _ms(sm["dense_w_test"]),
          "| dense 500-500, test (%%) | %s | 98.20 |" % _ms(sm["dense_500_test"])]
    mes = runs[0]["mesimp"]
    if mes.get("became_dense"):
        L += ["", "Seed %d: layers whose width fell to k or below (backward dense from then on), "
              "(global step, layers): %s." % (runs[0]["seed"], mes["became_dense"])]
    L += ["", "Seed %d: hidden sizes and training time per epoch of the meSimp run (from its "
          "log; the epoch's training only, evaluation excluded; %d simplification steps):" % (
              runs[0]["seed"], mes["simplification_steps"]), "",
          "| epoch | hidden sizes at epoch end | time (s) | fwd | bwd | upd | dev (%) |",
          "|---|---|---|---|---|---|---|"]
    for i, (h, t, f, b, u, d) in enumerate(zip(mes["hidden_sizes_per_epoch"], mes["time_epoch"],
                                               mes["time_forward"], mes["time_backward"],
                                               mes["time_update"], mes["dev_per_epoch"])):
        L.append("| %d | %s | %.2f | %.2f | %.2f | %.2f | %.2f |" % (i + 1, h, t, f, b, u, d))
    o, s = inf["times_s"]["original"], inf["times_s"]["shrunk"]
    t = ts["times"]
    L += ["", "## Speed (interleaved repeats, median; %d thread(s); seed %d's model)" % (
              c["threads"], inf["seed"]), "",
          "| measurement | original %s | shrunk %s | speed-up |" % (
              inf["original_sizes"][1:-1], inf["shrunk_sizes"][1:-1]),
          "|---|---|---|---|",
          "| inference, %d test images (ms) | %.1f | %.1f | %.2fx |" % (
              inf["images"], o["median"] * 1e3, s["median"] * 1e3, inf["speedup"]),
          "| training step, batch %d, top-%d backprop (ms) | %.2f | %.2f | %.2fx |" % (
              ts["batch"], c["k"], t["original/topk"]["per_step_ms"],
              t["shrunk/topk"]["per_step_ms"], ts["speedup_topk"]),
          "| = training time per epoch, top-%d (s) | %.2f | %.2f | |" % (
              c["k"], t["original/topk"]["per_epoch_s"], t["shrunk/topk"]["per_epoch_s"]),
          "| training step, batch %d, dense backprop (ms) | %.2f | %.2f | %.2fx |" % (
              ts["batch"], t["original/dense"]["per_step_ms"], t["shrunk/dense"]["per_step_ms"],
              t["original/dense"]["per_step_ms"] / t["shrunk/dense"]["per_step_ms"]),
          "| parameters | %s | %s | %.2fx fewer |" % (
              f"{inf['parameters']['original']:,}", f"{inf['parameters']['shrunk']:,}",
              inf["parameters"]["original"] / inf["parameters"]["shrunk"]),
          "", "Inference: `predict` (batch 1024) of the exported model loaded with "
          "`meprop_cpu.nn.load` (a plain dense MLP; predictions identical to the trained "
          "model: %s) vs the original architecture (%s weights). Training step: forward, "
          "backward and Adam update at the original and the shrunk sizes, with top-%d "
          "backprop (a layer no wider than k backpropagates densely) and with dense "
          "backprop, %d steps per timed block, the four variants interleaved." % (
              inf["exported_predictions_equal"], inf["original_weights"], c["k"],
              ts["steps_per_block"]),
          "", "## Targets (from the issue; means over seeds)", ""]
    for k, v in r["targets"].items():
        L.append("- %s: %s" % (k, "yes" if v else "**no**"))
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
