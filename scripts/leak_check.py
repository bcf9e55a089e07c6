#!/usr/bin/env python3
"""Memory-leak check: train 20,000 steps and compare resident memory.

    python scripts/leak_check.py                 # 20,000 steps, synthetic data
    python scripts/leak_check.py --mnist         # on MNIST (if it is cached)
    python scripts/leak_check.py --steps 5000 --threads 2 --mode unified

A small MLP (784-100-100-10, meProp k=10, dropout 0.2, Adam) trains with
batch 10 through the Trainer, with a checkpoint written every epoch and the
dev set evaluated every epoch. Resident memory (VmRSS from
/proc/self/status) is read after a warm-up epoch and at the end. Afterwards
a few thousand calls that fail validation (NaN gradients, bad shapes) check
that error paths leak nothing either. Exits 1 if VmRSS grew by 5 MB or more,
0 otherwise; prints the numbers (and writes them as JSON with --json FILE).

Every epoch appends a small record to the trainer's history (an expected,
bounded growth of about 1 KB per epoch); everything else that a step
allocates must be released or reused.
"""
import argparse
import gc
import json
import os
import sys
import tempfile
import time

import numpy as np

import meprop_cpu as mp
from meprop_cpu import kernels as K
from meprop_cpu import nn
from meprop_cpu.train import Trainer, build_optimizer

LIMIT_MB = 5.0


def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def synthetic(n_train=1000, n_dev=200, n_features=784, n_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    protos = rng.random((n_classes, n_features), dtype=np.float32)
    out = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        y = rng.integers(0, n_classes, size=n).astype(np.int64)
        X = protos[y] + rng.normal(0.0, 0.35, size=(n, n_features)).astype(np.float32)
        out[split] = (np.ascontiguousarray(X, dtype=np.float32), y)
    return out


def mnist_subset(n_train=1000):
    from meprop_cpu import data as mpdata
    d = mpdata.mnist(fetch=False)
    X, y = d["train"]
    Xd, yd = d["dev"]
    return {"train": (np.ascontiguousarray(X[:n_train]), y[:n_train].copy()),
            "dev": (np.ascontiguousarray(Xd[:200]), yd[:200].copy())}


def error_paths(n):
    """Calls that fail validation after buffers are allocated."""
    g = np.ones((10, 100), np.float32)
    g[3, 7] = np.nan
    lin = nn.Linear(100, 50, k=5)
    x = np.ones((10, 100), np.float32)
    for i in range(n):
        try:
            K.topk_rows(g, 5)
        except ValueError:
            pass
        lin.forward(x)
        try:
            lin.backward(np.full((10, 50), np.nan, np.float32))
        except FloatingPointError:
            pass
        try:
            lin.forward(np.ones((10, 99), np.float32))
        except ValueError:
            pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mode", default="topk", choices=nn.MODES)
    ap.add_argument("--mnist", action="store_true", help="use cached MNIST (1,000 examples)")
    ap.add_argument("--limit-mb", type=float, default=LIMIT_MB)
    ap.add_argument("--json", default=None, metavar="FILE")
    args = ap.parse_args(argv)

    mp.set_num_threads(args.threads)
    data = mnist_subset() if args.mnist else synthetic()
    n_train = data["train"][0].shape[0]
    spe = -(-n_train // args.batch_size)
    epochs = max(2, -(-args.steps // spe))
    model = nn.MLP([784, 100, 100, 10], k=10, mode=args.mode, dropout=0.2, seed=0)
    opt = build_optimizer("adam", model.parameters())
    marks = {}

    def on_epoch(trainer, rec):
        if trainer.epoch == 1:                 # warm-up done: workspaces at full size
            gc.collect()
            marks["start"] = (rss_kb(), trainer.global_step, time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="meprop_leak_") as tmp:
        trainer = Trainer(model, opt, data, batch_size=args.batch_size, epochs=epochs, seed=0,
                          checkpoint=os.path.join(tmp, "ckpt.npz"), progress=False,
                          on_epoch=on_epoch)
        trainer.fit()
    gc.collect()
    end_train = rss_kb()
    error_paths(3000)
    gc.collect()
    end = rss_kb()

    start_kb, start_step, t0 = marks["start"]
    steps = trainer.global_step - start_step
    growth_mb = (end - start_kb) / 1024.0
    result = {"steps_total": trainer.global_step, "steps_measured": steps,
              "epochs": trainer.epoch, "batch_size": args.batch_size, "threads": args.threads,
              "mode": args.mode, "data": "mnist" if args.mnist else "synthetic",
              "rss_start_kb": start_kb, "rss_after_training_kb": end_train,
              "rss_end_kb": end, "growth_mb": round(growth_mb, 3),
              "growth_bytes_per_step": round((end_train - start_kb) * 1024.0 / max(steps, 1), 2),
              "history_records": len(trainer.history),
              "history_json_kb": round(len(json.dumps(trainer.history)) / 1024.0, 1),
              "seconds": round(time.perf_counter() - t0, 1), "limit_mb": args.limit_mb,
              "ok": growth_mb < args.limit_mb}
    print(f"leak check: {trainer.global_step} steps (batch {args.batch_size}, "
          f"{args.threads} thread(s), {args.mode}, {result['data']}), "
          f"checkpoint every epoch, then 3000 failing calls")
    print(f"  VmRSS after warm-up ({start_step} steps): {start_kb / 1024:.2f} MB")
    print(f"  VmRSS after training ({steps} more steps): {end_train / 1024:.2f} MB")
    print(f"  VmRSS at the end: {end / 1024:.2f} MB")
    print(f"  (expected growth: trainer.history holds {result['history_records']} records, "
          f"{result['history_json_kb']} KB as JSON)")
    print(f"  growth: {growth_mb:+.3f} MB ({result['growth_bytes_per_step']:+.1f} bytes/step); "
          f"limit {args.limit_mb} MB -> {'OK' if result['ok'] else 'LEAK'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
