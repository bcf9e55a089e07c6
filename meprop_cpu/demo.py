"""``meprop-cpu demo`` (or ``python -m meprop_cpu.demo``): train the paper's MNIST MLP with dense
backprop and with meProp side by side, and print accuracy and the measured
speed-up. ``make demo`` runs it with the defaults below.

Both runs use the same initial weights, data order, optimizer (Adam, lr 1e-3)
and thread count; they differ only in the backward pass (dense vs top-k) and
the optimizer update (dense vs row-sparse).
"""
import argparse
import sys
import time

from . import _config, datasets, nn, train

__all__ = ["main"]


def _limit_blas(threads):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(threads)


def _run(name, data, args, k, sparse):
    model = nn.MLP([784] + args.hidden * [args.width] + [10], k=k, mode="topk",
                   dropout=args.dropout, seed=args.seed)
    opt = train.build_optimizer("adam", model.parameters(), sparse=sparse)

    def on_epoch(trainer, rec):
        print(f"  [{name}] epoch {rec['epoch']}: loss {rec['train_loss']:.4f}  "
              f"dev {rec['dev_acc']:.2f}%  {rec['time_epoch']:.1f}s "
              f"(fwd {rec['time_forward']:.1f} / bwd {rec['time_backward']:.1f} / "
              f"upd {rec['time_update']:.1f})", flush=True)

    tr = train.Trainer(model, opt, data, batch_size=args.batch_size, epochs=args.epochs,
                       seed=args.seed, on_epoch=on_epoch)
    return tr.fit()


def main(argv=None):
    p = argparse.ArgumentParser(prog="meprop-cpu demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=20, help="top-k per hidden layer (default 20)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    p.add_argument("--dropout", type=float, default=0.2,
                   help="dropout after each hidden layer, both runs (default 0.2: without it "
                        "meProp at k=20, batch 10 trains noticeably worse; see README)")
    p.add_argument("--batch-size", type=int, default=10, help="minibatch (paper: 10)")
    p.add_argument("--width", type=int, default=500, help="hidden width (default 500)")
    p.add_argument("--hidden", type=int, default=2, help="hidden layers (default 2)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data-dir", default=None, help="directory with MNIST (else cache/fetch)")
    args = p.parse_args(argv)
    for name in ("k", "epochs", "batch_size", "width", "hidden"):
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
          f"{args.epochs} epoch(s) per run\n")

    print("dense backprop (dense Adam):")
    dense = _run("dense", data, args, None, sparse=False)
    print(f"meProp k={args.k} (row-sparse Adam):")
    mep = _run(f"meProp k={args.k}", data, args, args.k, sparse=True)

    def ratio(key):
        a, b = dense[key], mep[key]
        return a / b if b else float("nan")

    print()
    print(f"{'':24s}{'dense':>12s}{'meProp':>12s}{'speed-up':>10s}")
    rows = [("time / epoch (s)", "mean_time_epoch"), ("  forward (s)", "mean_time_forward"),
            ("  backward (s)", "mean_time_backward"), ("  update (s)", "mean_time_update")]
    for label, key in rows:
        print(f"{label:24s}{dense[key]:12.2f}{mep[key]:12.2f}{ratio(key):9.1f}x")
    for label, key in (("best dev acc (%)", "best_dev"), ("test acc at best dev (%)",
                                                         "test_at_best_dev")):
        print(f"{label:24s}{dense[key]:12.2f}{mep[key]:12.2f}")
    print(f"\nmeProp trains {ratio('mean_time_epoch'):.1f}x faster per epoch "
          f"(backward {ratio('mean_time_backward'):.1f}x) on {threads} thread(s).")
    if limiter is not None:
        limiter.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main())
