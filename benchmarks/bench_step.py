"""One MNIST training step: the fused C step against the module path.

Times a whole training step (batch gather, forward, loss, backward, Adam
update) of the MNIST MLP 784-500-500-10 on real MNIST batches, three ways,
interleaved with the harness's ``meprop_cpu.bench.interleave``:

* ``modules``: ``model.forward`` / ``loss`` / ``model.backward`` /
  ``opt.step`` (what the Trainer did before the fused step),
* ``fused``: ``FusedStep.step_rows`` (what the Trainer does now),
* ``torch``: the same model in PyTorch (dense backprop, torch.optim.Adam,
  fused where available: the harness's ``bench._torch_mlp`` / ``_torch_adam``),

for meProp k = 20 (and k = 160, meSimp's setting) at batch 10 and 100 with
1 and 2 threads. Each variant trains its own copy of the model on the same
batch sequence. One timed call is a block of consecutive steps (20 at batch
10, 5 at batch 100), so a model's weights and optimizer state stay in the
caches as in real training while the variants still alternate; 5 warm-up
rounds, then 40 timed rounds; the medians per step are printed as a
markdown table.

    python benchmarks/bench_step.py > benchmarks/results/step.md
"""
import datetime
import os
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

import meprop_cpu as mp  # noqa: E402
from meprop_cpu import bench, data as mpdata, fused, nn, optim  # noqa: E402
from meprop_cpu.steps import make_step  # noqa: E402


def _block(step, n):
    def run():
        for _ in range(n):
            step()
    return run


def _batches(n, B):
    """A callable returning the next batch's row indices of a fixed shuffle of n rows."""
    perm = np.random.default_rng(0).permutation(n)
    pos = [0]

    def next_idx():
        i = pos[0] % (n // B)
        pos[0] += 1
        return perm[i * B:(i + 1) * B]
    return next_idx


def _ours(X, y, B, k, use_fused):
    model = nn.MLP([784, 500, 500, 10], k=k, seed=0)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss = nn.SoftmaxCrossEntropy()
    stepper = make_step(model, opt, loss, B, use_fused)
    assert isinstance(stepper, fused.FusedStep) == use_fused
    next_idx = _batches(X.shape[0], B)

    def step():
        stepper.step_rows(X, y, next_idx())
    return step


def _torch(torch, X, y, B):
    # the model and Adam (fused where torch has it) of `meprop-cpu bench`'s PyTorch runs
    model = bench._torch_mlp(torch, (784, 500, 500, 10), 0.0)
    opt = bench._torch_adam(torch, model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    yt = torch.from_numpy(y)
    next_idx = _batches(X.shape[0], B)

    def step():
        idx = next_idx()
        out = model(torch.from_numpy(X[idx]))
        loss = loss_fn(out, yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main():
    X, y = mpdata.mnist()["train"]
    try:
        import torch
    except ImportError:
        torch = None
    rows = []
    for B, inner in ((10, 20), (100, 5)):
        for T in (1, 2):
            mp.set_num_threads(T)
            if torch is not None:
                torch.set_num_threads(T)
            fns = {}
            for k in (20, 160):
                fns[f"modules k={k}"] = _block(_ours(X, y, B, k, False), inner)
                fns[f"fused k={k}"] = _block(_ours(X, y, B, k, True), inner)
            if torch is not None:
                fns["torch dense"] = _block(_torch(torch, X, y, B), inner)
            med = {name: bench.summarize(ts)["median_s"] * 1e6 / inner
                   for name, ts in bench.interleave(fns, repeats=40, warmup=5).items()}
            rows.append((B, T, med))
    print("# One training step: fused C step vs module path vs PyTorch\n")
    print(f"`python benchmarks/bench_step.py`, "
          f"{datetime.datetime.now().isoformat(timespec='seconds')}, load average "
          f"{os.getloadavg()[0]:.2f}, {mp.show_config()['simd']}, torch "
          f"{getattr(torch, '__version__', 'absent')}. MNIST 784-500-500-10, Adam; median "
          f"microseconds per step (batch gather included), in blocks of consecutive "
          f"steps, the variants interleaved. Each block starts with caches that the other "
          f"variants have refilled, so these per-step times sit above a plain epoch's "
          f"(`meprop-cpu bench` gives the end-to-end ratios); the point here is fused vs "
          f"modules on the same footing.\n")
    print("| batch | threads | k | modules | fused | fused speed-up | torch dense | "
          "fused vs torch |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for B, T, med in rows:
        t = med.get("torch dense")
        for k in (20, 160):
            a, b = med[f"modules k={k}"], med[f"fused k={k}"]
            vs = f"{t / b:.2f}x" if t else "n/a"
            print(f"| {B} | {T} | {k} | {a:.1f} | {b:.1f} | {a / b:.2f}x | "
                  f"{t:.1f} | {vs} |" if t else
                  f"| {B} | {T} | {k} | {a:.1f} | {b:.1f} | {a / b:.2f}x | n/a | n/a |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
