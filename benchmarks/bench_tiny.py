"""Tiny work with 1 vs 2 threads: does a second thread ever make it slower?

Times one linear layer's forward, backward and training step (forward +
backward + Adam) at (B, 784, 500) for B = 1 and 10, dense and meProp k = 20
(per-example and unified), with 1 and then 2 kernel threads, using the
callables and the interleaved timing of the benchmark harness
(``meprop_cpu.bench.layer_variants`` / ``interleave``). Three rounds alternate
the thread counts; in each, the variants of a batch size are timed
interleaved, 200 rounds after 20 warm-up rounds; each cell is the median over
the three rounds of the per-round medians. Prints a markdown table (ratio
2t/1t > 1 means the second thread slowed it down).

    python benchmarks/bench_tiny.py > benchmarks/results/tiny_threads.md
"""
import datetime
import os
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

import meprop_cpu as mp  # noqa: E402
from meprop_cpu import bench  # noqa: E402


def main():
    res = {}
    prefixes = ("topk/k=20", "dense/", "unified/k=20")
    for B in (1, 10):
        fns = bench.layer_variants(B, 784, 500, [20])
        fns = {k: f for k, f in fns.items() if k.startswith(prefixes)}
        for _ in range(3):
            for T in (1, 2):
                mp.set_num_threads(T)
                for k, ts in bench.interleave(fns, repeats=200, warmup=20).items():
                    res.setdefault((B, k, T), []).append(bench.summarize(ts)["median_s"] * 1e6)
    print("# Tiny work: 1 vs 2 threads\n")
    print(f"`python benchmarks/bench_tiny.py`, {datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"load average {os.getloadavg()[0]:.2f}, {mp.show_config()['simd']}\n")
    print("| B | layer (784 -> 500) op | 1 thread (us) | 2 threads (us) | 2t / 1t |")
    print("|---:|---|---:|---:|---:|")
    for (B, k, T), v in sorted(res.items()):
        if T == 1:
            a, b = float(np.median(v)), float(np.median(res[(B, k, 2)]))
            print(f"| {B} | {k} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
