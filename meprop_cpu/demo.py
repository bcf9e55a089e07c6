"""``meprop-cpu demo`` (or ``python -m meprop_cpu.demo``): train the paper's MNIST MLP with dense
backprop and with meProp side by side, and show what meProp gains at equal
accuracy. ``make demo`` runs it with the defaults below.

Both runs use the same initial weights, data order, optimizer (Adam, lr 1e-3)
and thread count; they differ only in the backward pass (dense vs meProp's
default mode, top-k weight gradients) and the optimizer update (dense vs
row-sparse). The dev set is evaluated several times per epoch; the demo
prints dev accuracy against training seconds (evaluation excluded) for both,
the seconds each run needed to first reach the same accuracy (the lower of
the two runs' best dev accuracies), and the speed-up at that accuracy.
"""
import argparse
import sys
import time

from . import _config, data as datasets, nn, train

__all__ = ["main", "equal_accuracy"]


def _limit_blas(threads):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(threads)


def _run(name, data, args, k, mode, sparse):
    model = nn.MLP([784] + args.hidden * [args.width] + [10], k=k, mode=mode,
                   dropout=args.dropout, seed=args.seed)
    opt = train.build_optimizer("adam", model.parameters(), sparse=sparse)
    curve = []
    done = [0.0]

    def on_epoch(trainer, rec):
        print(f"  [{name}] epoch {rec['epoch']}: loss {rec['train_loss']:.4f}  "
              f"dev {rec['dev_acc']:.2f}%  {rec['time_epoch']:.1f}s "
              f"(fwd {rec['time_forward']:.1f} / bwd {rec['time_backward']:.1f} / "
              f"upd {rec['time_update']:.1f})", flush=True)

    tr = train.Trainer(model, opt, data, batch_size=args.batch_size, epochs=args.epochs,
                       seed=args.seed, on_epoch=on_epoch, evals_per_epoch=args.evals)
    summary = tr.fit()
    for r in tr.history:
        curve.append((done[0] + r["time_epoch"], r["dev_acc"]))
        if r["event"] == "epoch":
            done[0] += r["time_epoch"]
    summary["curve"] = curve
    summary["mode"] = model.config["mode"]
    return summary


def equal_accuracy(curve_a, curve_b):
    """(target, seconds of a, seconds of b): the lower of the two curves' best
    dev accuracies and the first training time at which each reaches it.
    Curves are lists of (seconds, dev %)."""
    target = min(max(d for _, d in curve_a), max(d for _, d in curve_b))
    ta = next(t for t, d in curve_a if d >= target)
    tb = next(t for t, d in curve_b if d >= target)
    return target, ta, tb


def _plot(path, curves):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: matplotlib is not installed; pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in curves:
        ax.plot([t for t, _ in c], [d for _, d in c], marker="o", ms=3, label=name)
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel("dev accuracy %")
    lo = min(d for _, c in curves for _, d in c)
    ax.set_ylim(max(lo, 90.0), 100.0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="meprop-cpu demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=20, help="top-k per hidden layer (default 20)")
    p.add_argument("--mode", choices=[m for m in nn.MODES if m != "dense"], default=None,
                   help=f"meProp mode (default {nn.DEFAULT_MODE}; topk: the paper's)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    p.add_argument("--evals", type=int, default=5,
                   help="dev evaluations per epoch (default 5)")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout after each hidden layer, both runs (default 0)")
    p.add_argument("--batch-size", type=int, default=10, help="minibatch (paper: 10)")
    p.add_argument("--width", type=int, default=500, help="hidden width (default 500)")
    p.add_argument("--hidden", type=int, default=2, help="hidden layers (default 2)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data-dir", default=None, help="directory with MNIST (else cache/fetch)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw dev accuracy against seconds (needs matplotlib)")
    args = p.parse_args(argv)
    for name in ("k", "epochs", "batch_size", "width", "hidden", "evals"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be >= 1")
        _config.set_num_threads(args.threads)
    threads = _config.get_num_threads()
    limiter = _limit_blas(threads)

    cfg = _config.show_config()
    print(f"meprop_cpu {cfg['version']}: OpenMP {cfg['openmp']}, {threads} thread(s), "
          f"SIMD {cfg['simd']}, BLAS {cfg['blas'].get('library')}")
    t = time.perf_counter()
    try:
        data = datasets.mnist(args.data_dir)
    except datasets.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"MNIST: {len(data['train'][1])} train / {len(data['dev'][1])} dev / "
          f"{len(data['test'][1])} test ({time.perf_counter() - t:.1f}s to load)")
    arch = "-".join(str(s) for s in [784] + args.hidden * [args.width] + [10])
    print(f"MLP {arch}, Adam lr 1e-3, batch {args.batch_size}, dropout {args.dropout}, "
          f"{args.epochs} epoch(s) per run, dev evaluated {args.evals}x per epoch\n")

    print("dense backprop (dense Adam):")
    dense = _run("dense", data, args, None, "dense", sparse=False)
    mode = args.mode or nn.DEFAULT_MODE
    name = f"meProp k={args.k} {mode}"
    print(f"{name} (row-sparse Adam):")
    mep = _run(name, data, args, args.k, mode, sparse=True)

    print("\ndev accuracy against training seconds:")
    print(f"  {'dense':>22s}   {name:>24s}")
    for i in range(max(len(dense["curve"]), len(mep["curve"]))):
        cells = []
        for c in (dense["curve"], mep["curve"]):
            cells.append(f"{c[i][0]:7.1f}s {c[i][1]:6.2f}%" if i < len(c) else "")
        print(f"  {cells[0]:>22s}   {cells[1]:>24s}")

    target, t_dense, t_mep = equal_accuracy(dense["curve"], mep["curve"])
    print()
    print(f"{'':28s}{'dense':>10s}{'meProp':>10s}")
    print(f"{'best dev acc (%)':28s}{dense['best_dev']:10.2f}{mep['best_dev']:10.2f}")
    print(f"{'test acc at best dev (%)':28s}{dense['test_at_best_dev']:10.2f}"
          f"{mep['test_at_best_dev']:10.2f}")
    print(f"{'time / epoch (s)':28s}{dense['mean_time_epoch']:10.2f}{mep['mean_time_epoch']:10.2f}")
    print(f"{f'seconds to {target:.2f}% dev':28s}{t_dense:10.1f}{t_mep:10.1f}")
    print(f"\nAt equal accuracy ({target:.2f}% dev, the lower of the two best) meProp got there "
          f"{t_dense / t_mep:.1f}x sooner than dense backprop on {threads} thread(s) "
          f"(per epoch {dense['mean_time_epoch'] / mep['mean_time_epoch']:.1f}x).")
    if args.plot:
        _plot(args.plot, [("dense", dense["curve"]), (name, mep["curve"])])
    if limiter is not None:
        limiter.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main())
