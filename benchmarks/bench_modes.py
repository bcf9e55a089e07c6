"""What each meProp mode costs per training step: the fused C step of the
MNIST MLP 784-500-500-10 (Adam) at k = 20 in modes batch_dw (the default),
topk_dw and topk (the paper's), and dense backprop, at batch 10 and 100 and 1
and 2 threads. The variants train their own copies of the model on the same
batch sequence, interleaved (``meprop_cpu.bench.interleave``, blocks of 20
steps at batch 10 and 5 at batch 100, 5 warm-up rounds, 40 timed rounds);
median microseconds per step. Accuracy of the same modes:
docs/stability.md.

    python benchmarks/bench_modes.py > benchmarks/results/stability/step_modes.md
"""
import datetime
import os
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import meprop_cpu as mp  # noqa: E402
from meprop_cpu import bench, data as mpdata, nn, optim  # noqa: E402
from meprop_cpu.steps import make_step  # noqa: E402

from bench_step import _batches, _block  # noqa: E402

MODES = ("dense", "batch_dw", "topk_dw", "topk")


def _fused(X, y, B, mode):
    model = nn.MLP([784, 500, 500, 10], k=None if mode == "dense" else 20,
                   mode=mode, seed=0)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    stepper = make_step(model, opt, nn.SoftmaxCrossEntropy(), B, True)
    next_idx = _batches(X.shape[0], B)

    def step():
        stepper.step_rows(X, y, next_idx())
    return step


def main():
    X, y = mpdata.mnist()["train"]
    rows = []
    for B, inner in ((10, 20), (100, 5)):
        for T in (1, 2):
            mp.set_num_threads(T)
            fns = {m: _block(_fused(X, y, B, m), inner) for m in MODES}
            med = {m: bench.summarize(ts)["median_s"] * 1e6 / inner
                   for m, ts in bench.interleave(fns, repeats=40, warmup=5).items()}
            rows.append((B, T, med))
    print("# One training step per meProp mode (fused C step)\n")
    print(f"`python benchmarks/bench_modes.py`, "
          f"{datetime.datetime.now().isoformat(timespec='seconds')}, load average "
          f"{os.getloadavg()[0]:.2f}, {mp.show_config()['simd']}. MNIST 784-500-500-10, "
          f"Adam, k = 20; median microseconds per step (batch gather included), blocks of "
          f"consecutive steps, the modes interleaved.\n")
    print("| batch | threads | " + " | ".join(MODES) + " | batch_dw vs topk_dw | "
          "batch_dw vs dense |")
    print("|---:|---:|" + "---:|" * (len(MODES) + 2))
    for B, T, med in rows:
        print(f"| {B} | {T} | " + " | ".join(f"{med[m]:.0f}" for m in MODES) +
              f" | {med['topk_dw'] / med['batch_dw']:.2f}x | "
              f"{med['dense'] / med['batch_dw']:.2f}x |")


if __name__ == "__main__":
    main()
