"""Per-step cost of the fused training step at the widths a meSimp run passes
through (MNIST 784-h1-h2-10, k = 160, batch 100, Adam, activeness counting on),
next to a dense step of the same widths and the dense 500-500 model.

Real MNIST batches; 300 steps per model, the median of the last 250 (the
step's own forward / backward / update clocks, and the whole call).

    python benchmarks/bench_widths.py [threads]

To compare two builds side by side, run it once per build in turn, e.g. an
older commit built in place in a second checkout:
``git worktree add /tmp/old <commit> && (cd /tmp/old && python setup.py
build_ext --inplace) && PYTHONPATH=/tmp/old python benchmarks/bench_widths.py``.
"""
import sys
import time

import numpy as np

import meprop_cpu
from meprop_cpu import data as mpdata, fused, nn, optim
from meprop_cpu._config import set_num_threads

WIDTHS = [(500, 500, None), (474, 313, 160), (474, 313, None), (185, 243, 160), (131, 112, 160)]


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    set_num_threads(threads)
    X, y = mpdata.mnist()["train"]
    print(f"{meprop_cpu.__file__}, {threads} thread(s); microseconds per step (median)")
    print("| hidden | k | step | forward | backward | update |")
    print("|---|---:|---:|---:|---:|---:|")
    for h1, h2, k in WIDTHS:
        m = nn.MLP([784, h1, h2, 10], k=k, mode="topk", seed=0)
        for lin in m.linears[:-1]:
            lin.track_hits = k is not None
        fs = fused.FusedStep(m, optim.Adam(m.parameters(), lr=1e-3), 100)
        rng = np.random.default_rng(0)
        t = []
        for _ in range(300):
            idx = rng.integers(0, len(X), 100).astype(np.int64)
            t0 = time.perf_counter()
            _, tf, tb, tu = fs.step_rows(X, y, idx)
            t.append((time.perf_counter() - t0, tf, tb, tu))
        med = np.median(np.array(t[50:]), axis=0) * 1e6
        print(f"| {h1}, {h2} | {k or 'dense'} | " + " | ".join(f"{v:.0f}" for v in med) + " |")


if __name__ == "__main__":
    main()
