"""Summarise `meprop-cpu train --log-json` runs into a markdown table.

    python benchmarks/summarize_runs.py benchmarks/results/mnist_meprop/*.jsonl \
        > benchmarks/results/mnist_meprop/summary.md

Every figure comes from the runs' own JSON logs (their final "summary" line
and the per-epoch lines); nothing is typed in by hand.
"""
import json
import os
import sys


def load(path):
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    summary = [r for r in lines if r.get("event") == "summary"]
    if not summary:
        raise SystemExit(f"{path}: no summary line (did the run finish?)")
    epochs = [r for r in lines if r.get("event") == "epoch"]
    return summary[-1], epochs


def main(paths):
    rows = []
    for p in paths:
        s, epochs = load(p)
        rows.append((os.path.splitext(os.path.basename(p))[0], s, epochs))
    print("| run | k | epochs | best dev % | test at best dev % | final train loss "
          "| s / epoch | forward | backward | update |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, s, epochs in rows:
        k = s.get("k") if s.get("mode") != "dense" and s.get("k") else "dense"
        print(f"| {name} | {k} | {s['epochs_completed']} | {s['best_dev']:.2f} | "
              f"{s['test_at_best_dev']:.2f} | {epochs[-1]['train_loss']:.4f} | "
              f"{s['mean_time_epoch']:.2f} | {s['mean_time_forward']:.2f} | "
              f"{s['mean_time_backward']:.2f} | {s['mean_time_update']:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
