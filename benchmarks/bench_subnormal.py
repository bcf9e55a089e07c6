"""What flushing subnormals in the optimizer update is worth: the MNIST MLP
trained by train.Trainer with the update kernels under FTZ + DAZ (the
default) and in the caller's floating-point mode (``_core.set_flush_subnormals(0)``),
runs alternating, same seed, same thread count.

Adam's moments of weights whose input is always zero (MNIST's border pixels)
decay by beta1 at every update of their row and reach the subnormal range
after ~800 updates; x86 cores then take a microcode assist on every
operation that reads or writes one.

    python benchmarks/bench_subnormal.py                 # 784-500-500-10, batch 10, k 20, 3 epochs
    python benchmarks/bench_subnormal.py --epochs 2 --repeats 1 --no-save

Writes benchmarks/results/subnormal.json and .md.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

import meprop_cpu  # noqa: E402
from meprop_cpu import _core, data, nn, optim, train  # noqa: E402
from meprop_cpu.bench.environment import _cpu_info  # noqa: E402


def cpu_name():
    return _cpu_info()["model"] or platform.processor()


def run(d, args, flush):
    old = _core.set_flush_subnormals(1 if flush else 0)
    try:
        m = nn.MLP([784, args.width, args.width, 10], k=args.k, dropout=args.dropout,
                   seed=args.seed)
        opt = optim.Adam(m.parameters(), lr=args.lr)
        tr = train.Trainer(m, opt, d, batch_size=args.batch, epochs=args.epochs,
                           seed=args.seed, progress=False)
        tr.fit()
        sub = sum(int(np.count_nonzero((a != 0) & (np.abs(a) < np.finfo(np.float32).tiny)))
                  for arrs in opt.state.values() for a in arrs.get("arrays", []))
    finally:
        _core.set_flush_subnormals(old)
    return {"epoch_s": [h["time_epoch"] for h in tr.history],
            "dev": [h["dev_acc"] for h in tr.history], "subnormal_state_entries": sub,
            "step_path": tr.step_path}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--train-subset", type=int, default=0, help="0: all 55,000")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default="subnormal")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    meprop_cpu.set_num_threads(args.threads)
    d = data.mnist()
    if args.train_subset:
        d = dict(d, train=(d["train"][0][:args.train_subset], d["train"][1][:args.train_subset]))
    runs = {"flush": [], "no flush": []}
    for rep in range(args.repeats):
        for name in (("flush", "no flush") if rep % 2 == 0 else ("no flush", "flush")):
            r = run(d, args, name == "flush")
            runs[name].append(r)
            print(f"rep {rep} {name}: epochs {[round(t, 2) for t in r['epoch_s']]} s, dev "
                  f"{r['dev']}, subnormal state entries {r['subnormal_state_entries']}",
                  flush=True)
    summary = {}
    for name, rs in runs.items():
        per_epoch = [statistics.median(r["epoch_s"][e] for r in rs) for e in range(args.epochs)]
        summary[name] = {"median_epoch_s": per_epoch, "total_s": sum(per_epoch),
                         "dev": rs[0]["dev"],
                         "subnormal_state_entries": [r["subnormal_state_entries"] for r in rs]}
    ratio = summary["no flush"]["total_s"] / summary["flush"]["total_s"]
    cmd = "python benchmarks/bench_subnormal.py " + " ".join(argv if argv is not None
                                                             else sys.argv[1:])
    res = {"command": cmd.strip(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "cpu": cpu_name(), "threads": args.threads, "args": vars(args), "runs": runs,
           "summary": summary, "speedup_of_flush": ratio,
           "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
           "meprop_cpu": meprop_cpu.__version__}
    lines = [f"# Optimizer updates with and without flushing subnormals: `{args.name}`", "",
             f"`{res['command']}` on {res['date']}; CPU: {res['cpu']}; {args.threads} "
             f"thread(s); MNIST MLP 784-{args.width}-{args.width}-10, batch {args.batch}, "
             f"k = {args.k}, dropout {args.dropout}, Adam lr {args.lr}, seed {args.seed}; "
             f"{args.repeats} run(s) each, alternating; medians per epoch.", "",
             "| update kernels | s per epoch (median over runs) | total s | dev % after each "
             "epoch | subnormal Adam state entries at the end |", "|---|---|---:|---|---|"]
    for name, sm in summary.items():
        lines.append(f"| {name} | {', '.join(f'{t:.2f}' for t in sm['median_epoch_s'])} | "
                     f"{sm['total_s']:.2f} | {', '.join(f'{a:.2f}' for a in sm['dev'])} | "
                     f"{', '.join(str(c) for c in sm['subnormal_state_entries'])} |")
    lines += ["", f"Flushing: {ratio:.2f}x less training time.", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_save:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, args.name + ".json"), "w") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(args.out, args.name + ".md"), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
