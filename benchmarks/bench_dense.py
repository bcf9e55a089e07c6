"""Dense-product benchmark: meprop_cpu's OpenMP kernels vs numpy (OpenBLAS) and
PyTorch, for the forward of a linear layer y = x W^T + b (x: (B, n_in),
W: (n_out, n_in)) and, with --backward, the dense backward products
dx = dy @ W (matmul_nn) and dW = dy^T @ x (matmul_tn).

Variants (same thread count T for all):
  meprop  ``_core.linear_forward`` into a preallocated y (nthreads=T)
  numpy   ``x @ W.T + b``          (threadpoolctl.threadpool_limits(T))
  torch   ``torch.nn.functional.linear(x, W, b)`` (torch.set_num_threads(T))

Measurement protocol (this matters on a 2-core machine, where OpenBLAS's
threads keep spinning after each call and slow down the next OpenMP call):
  * OPENBLAS_THREAD_TIMEOUT=4 is put in the environment before numpy is
    imported, so idle OpenBLAS threads go to sleep quickly;
  * the variants are timed in blocks, never interleaved: for each (shape, T)
    a variant gets a warm-up (>= 5 calls and >= 0.1 s), a 0.2 s pause, then all
    its repeats back to back; the median single-call time is reported (with
    min / max). GFLOP/s = 2 * B * n_in * n_out / median;
  * on a shared machine another process taking a CPU shows as medians of
    several ms (scheduler time slices): such a case is measured again
    (--retries), optionally after waiting for idle CPUs (--wait-idle).

Usage::

    python benchmarks/bench_dense.py                 # T = 1 and 2
    python benchmarks/bench_dense.py --threads 1 --quick
    python benchmarks/bench_dense.py --backward

Writes JSON (``--out``, default benchmarks/results/dense.json) and prints a
markdown table.
"""
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # before numpy is imported

import argparse              # noqa: E402
import datetime              # noqa: E402
import json                  # noqa: E402
import platform              # noqa: E402
import statistics            # noqa: E402
import sys                   # noqa: E402
import time                  # noqa: E402

import numpy as np           # noqa: E402

try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None

try:
    import torch
except ImportError:
    torch = None

from meprop_cpu import _core   # noqa: E402
from meprop_cpu.bench import _nproc as ncpus   # CPUs this process may use  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = [(10, 784, 500), (100, 784, 500), (10, 500, 500), (100, 500, 500), (100, 500, 10),
          (1024, 784, 500), (256, 1024, 4096)]
QUICK_SHAPES = [(10, 784, 500), (100, 784, 500), (1024, 784, 500)]
SEED = 1234
SETTLE_S = 0.2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2" if ncpus() >= 2 else "1",
                   help="comma-separated thread counts (default 1,2)")
    p.add_argument("--min-time", type=float, default=0.4,
                   help="timed seconds per variant and case (repeats adapt, 15..400)")
    p.add_argument("--quick", action="store_true", help="three shapes, shorter timing")
    p.add_argument("--backward", action="store_true",
                   help="also time dx = dy @ W (nn) and dW = dy^T @ x (tn)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each case wait up to S seconds for the other processes to "
                        "leave the CPUs idle (the 1-minute load average is recorded per case)")
    p.add_argument("--retries", type=int, default=3,
                   help="measure a case again (up to this many times) when a variant's "
                        "median exceeds 2.5x its minimum, the mark of another process "
                        "taking a CPU during the block")
    p.add_argument("--out", default=os.path.join(HERE, "results", "dense.json"))
    return p.parse_args(argv)


def busy_cpus():
    """CPU time other processes used over the last 0.25 s, in CPUs (Linux only)."""
    def snap():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        with open(f"/proc/{os.getpid()}/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
        return sum(fields[:3]) + sum(fields[5:8]), int(own[11]) + int(own[12])
    try:
        (t0, o0), start = snap(), time.perf_counter()
        time.sleep(0.25)
        (t1, o1), dt = snap(), time.perf_counter() - start
    except OSError:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return max(0.0, ((t1 - t0) - (o1 - o0)) / tick / dt)


def wait_idle(limit_s):
    t_end = time.perf_counter() + limit_s
    while time.perf_counter() < t_end and busy_cpus() > 0.3:
        time.sleep(1.0)


class Threads:
    """Set T threads for numpy's BLAS and torch for the duration of a block."""

    def __init__(self, T):
        self.T = T
        self.limiter = None

    def __enter__(self):
        if threadpoolctl is not None:
            self.limiter = threadpoolctl.threadpool_limits(self.T)
        if torch is not None:
            torch.set_num_threads(self.T)
        return self

    def __exit__(self, *exc):
        if self.limiter is not None:
            self.limiter.restore_original_limits()


def time_block(fn, min_time):
    """Warm up, settle, then time repeats back to back; returns seconds per call."""
    t_end = time.perf_counter() + 0.1
    n = 0
    while n < 5 or time.perf_counter() < t_end:
        fn()
        n += 1
    t0 = time.perf_counter()
    fn()
    est = max(time.perf_counter() - t0, 1e-7)
    repeats = int(min(400, max(15, min_time / est)))
    time.sleep(SETTLE_S)
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summarize(times, flops):
    med = statistics.median(times)
    return {"median_us": med * 1e6, "min_us": min(times) * 1e6, "max_us": max(times) * 1e6,
            "gflops": flops / med / 1e9, "repeats": len(times)}


def forward_variants(B, n_in, n_out, T, rng):
    x = rng.standard_normal((B, n_in)).astype(np.float32)
    W = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    y = np.empty((B, n_out), np.float32)
    v = {"meprop": lambda: _core.linear_forward(x, W, b, y, False, T),
         "numpy": lambda: x @ W.T + b}
    if torch is not None:
        xt, Wt, bt = torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(b)
        v["torch"] = lambda: torch.nn.functional.linear(xt, Wt, bt)
    # correctness guard: all variants agree
    _core.linear_forward(x, W, b, y, False, T)
    np.testing.assert_allclose(y, x @ W.T + b, rtol=1e-3, atol=1e-3)
    return v


def backward_variants(kind, B, n_in, n_out, T, rng):
    x = rng.standard_normal((B, n_in)).astype(np.float32)
    W = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
    dy = rng.standard_normal((B, n_out)).astype(np.float32)
    if kind == "dx":                               # (B, n_out) @ (n_out, n_in)
        out = np.empty((B, n_in), np.float32)
        v = {"meprop": lambda: _core.matmul_nn(dy, W, out, T), "numpy": lambda: dy @ W}
        if torch is not None:
            dyt, Wt = torch.from_numpy(dy), torch.from_numpy(W)
            v["torch"] = lambda: torch.mm(dyt, Wt)
        _core.matmul_nn(dy, W, out, T)
        np.testing.assert_allclose(out, dy @ W, rtol=1e-3, atol=1e-3)
    else:                                          # (n_out, B) @ (B, n_in)
        out = np.empty((n_out, n_in), np.float32)
        v = {"meprop": lambda: _core.matmul_tn(dy, x, out, T), "numpy": lambda: dy.T @ x}
        if torch is not None:
            dyt, xt = torch.from_numpy(dy), torch.from_numpy(x)
            v["torch"] = lambda: torch.mm(dyt.t(), xt)
        _core.matmul_tn(dy, x, out, T)
        np.testing.assert_allclose(out, dy.T @ x, rtol=1e-3, atol=1e-3)
    return v


def main(argv=None):
    args = parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    shapes = QUICK_SHAPES if args.quick else SHAPES
    min_time = args.min_time / 2 if args.quick else args.min_time
    kinds = ["forward"] + (["dx", "dW"] if args.backward else [])
    rng = np.random.default_rng(SEED)
    results = []
    for kind in kinds:
        for (B, n_in, n_out) in shapes:
            flops = 2.0 * B * n_in * n_out
            for T in threads:
                for attempt in range(args.retries + 1):
                    if args.wait_idle > 0:
                        wait_idle(args.wait_idle)
                    with Threads(T):
                        if kind == "forward":
                            variants = forward_variants(B, n_in, n_out, T, rng)
                        else:
                            variants = backward_variants(kind, B, n_in, n_out, T, rng)
                        row = {"op": kind, "B": B, "n_in": n_in, "n_out": n_out, "threads": T,
                               "loadavg_1min": os.getloadavg()[0]
                               if hasattr(os, "getloadavg") else None,
                               "attempt": attempt}
                        for name, fn in variants.items():
                            row[name] = summarize(time_block(fn, min_time), flops)
                    # another process taking a CPU mid-block shows as medians far above
                    # the minimum (time slices of several ms): measure the case again
                    if all(row[n]["median_us"] <= 2.5 * row[n]["min_us"] for n in variants):
                        break
                    print(f"  (disturbed, measuring again: {fmt_row(row)})", flush=True)
                results.append(row)
                print(fmt_row(row), flush=True)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.machine(), "processor": platform.processor(), "cpus": ncpus(),
        "python": sys.version.split()[0], "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "threadpoolctl": threadpoolctl is not None,
        "simd": "avx512" if (_core.dense_level() == 2) else "portable",
        "protocol": "blocked (each variant: warm-up >= 5 calls and 0.1 s, 0.2 s pause, "
                    "repeats back to back); OPENBLAS_THREAD_TIMEOUT="
                    + os.environ.get("OPENBLAS_THREAD_TIMEOUT", "")
                    + f"; a case is measured again (up to {args.retries} times) when a "
                    "variant's median exceeds 2.5x its minimum; --wait-idle "
                    + str(args.wait_idle),
        "flops": "2 * B * n_in * n_out per call",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    print()
    print(markdown(results))
    print(f"\nwrote {args.out}")


def fmt_row(row):
    parts = [f"{row['op']:7s} B={row['B']:5d} n_in={row['n_in']:5d} n_out={row['n_out']:5d} "
             f"T={row['threads']}"]
    for name in ("meprop", "numpy", "torch"):
        if name in row:
            parts.append(f"{name} {row[name]['median_us']:9.1f} us "
                         f"({row[name]['gflops']:6.1f} GF/s)")
    return " | ".join(parts)


def markdown(results):
    lines = ["| op | B | n_in | n_out | T | meprop us (GF/s) | numpy us (GF/s) | "
             "torch us (GF/s) | numpy/meprop | torch/meprop |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cells = []
        for name in ("meprop", "numpy", "torch"):
            v = r.get(name)
            cells.append(f"{v['median_us']:.1f} ({v['gflops']:.0f})" if v else "-")
        m = r["meprop"]["median_us"]
        ratios = [f"{r[n]['median_us'] / m:.2f}" if n in r else "-" for n in ("numpy", "torch")]
        lines.append(f"| {r['op']} | {r['B']} | {r['n_in']} | {r['n_out']} | {r['threads']} | "
                     + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
