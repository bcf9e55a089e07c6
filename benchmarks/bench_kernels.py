"""Backward-pass kernel benchmark: meProp vs dense numpy vs dense PyTorch.

For a linear layer ``y = x W^T + b`` (x: (B, n_in), W: (n_out, n_in)) it times
one backward pass with

  meprop          per-example top-k of dy + sparse dx + row-sparse dW
                  (``topk_rows_into`` then ``sparse_backward_into``)
  meprop_unified  one top-k index set for the batch + two small dense GEMMs
                  (``topk_unified_into`` then ``unified_backward_into``)
  numpy_dense     ``dy @ W`` and ``dy.T @ x`` through numpy's BLAS
  torch_dense     ``torch.autograd.grad`` of an ``nn.Linear`` output
                  (dx, dW and db; the forward is done once, outside the timing)

and, separately, top-k selection alone (meprop vs ``torch.topk`` vs
``np.argpartition``).

Protocol (DESIGN.md, "Tests and benchmarks"): for each thread count T, every
variant gets T threads (meprop kernels, torch, and numpy's BLAS through
threadpoolctl); each variant is warmed up, then repeats are interleaved
(A B C, B C A, C A B, ...: the order rotates so no variant always follows
the same one) and the median of single-call times is reported, with min/max.
Timings on a shared machine are noisy: trust the medians, look at min/max.

Usage::

    python benchmarks/bench_kernels.py                  # threads 1,N
    python benchmarks/bench_kernels.py --threads 1 --quick

Writes JSON (``--out``, default benchmarks/results/kernels.json) and a
markdown table next to it (same name, ``.md``).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

# numpy's OpenBLAS threads spin for a long time after each call and then
# steal the cores from the next OpenMP call (ours or PyTorch's): with 2 cores
# that made interleaved timings meaningless. A short spin timeout (OpenBLAS's
# own knob, read when the library loads, hence before numpy is imported)
# keeps the interleaved protocol fair; it is recorded in the JSON.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

try:
    import threadpoolctl
except ImportError:                      # numpy's BLAS threads then stay as they are
    threadpoolctl = None

try:
    import torch
except ImportError:
    torch = None

import meprop_cpu
from meprop_cpu import kernels
from meprop_cpu.bench import _nproc as ncpus   # CPUs this process may use  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = [(10, 784, 500, 20), (100, 784, 500, 20), (256, 1024, 4096, 40)]
TOPK_SHAPE = (256, 4096, 40)
SEED = 1234
BLOCKED_SETTLE_S = 0.3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default=f"1,{ncpus()}" if ncpus() > 1 else "1",
                   help="comma-separated thread counts (default: 1,<number of CPUs>)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per variant first")
    p.add_argument("--out", default=os.path.join(HERE, "results", "kernels.json"),
                   help="JSON output path (a .md table is written beside it)")
    p.add_argument("--order", choices=("interleaved", "blocked"), default="interleaved",
                   help="interleaved (default): A B C, B C A, ...; blocked: all repeats of "
                        "A, then of B, ..., each after >= 0.3 s of warm-up (shows the "
                        "cost of switching between thread pools)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 5 repeats, 1 warm-up")
    a = p.parse_args(argv)
    a.threads = [int(t) for t in a.threads.split(",") if t.strip()]
    if not a.threads or min(a.threads) < 1:
        p.error("--threads needs positive integers")
    if a.quick:
        a.repeats, a.warmup = min(a.repeats, 5), min(a.warmup, 1)
    if a.repeats < 1 or a.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return a


# ------------------------------------------------------------------ threads

class Threads:
    """Context: the same thread count for meprop, torch and numpy's BLAS."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self._meprop = meprop_cpu.get_num_threads()
        meprop_cpu.set_num_threads(self.n)
        if torch is not None:
            self._torch = torch.get_num_threads()
            torch.set_num_threads(self.n)
        # limits every BLAS and OpenMP runtime threadpoolctl finds (numpy's OpenBLAS,
        # the libgomp shared by meprop and torch).
        self._tp = threadpoolctl.threadpool_limits(self.n) if threadpoolctl else None
        return self

    def __exit__(self, *exc):
        if self._tp is not None:
            self._tp.restore_original_limits()
        if torch is not None:
            torch.set_num_threads(self._torch)
        meprop_cpu.set_num_threads(self._meprop)


# ------------------------------------------------------------------- timing

def time_variants(fns, repeats, warmup, order="interleaved"):
    """fns: {name: zero-arg callable}. Returns {name: [seconds per call]}."""
    names = list(fns)
    times = {name: [] for name in names}
    pc = time.perf_counter
    if order == "blocked":
        for name in names:
            f = fns[name]
            # warm up for >= BLOCKED_SETTLE_S too, so that the previous variant's
            # thread pool (OpenBLAS spins ~0.1 s after a call) has gone to sleep
            t_end = pc() + BLOCKED_SETTLE_S
            n = 0
            while n < warmup or pc() < t_end:
                f()
                n += 1
            for _ in range(repeats):
                t0 = pc()
                f()
                times[name].append(pc() - t0)
        return times
    for name in names:
        for _ in range(warmup):
            fns[name]()
    for r in range(repeats):
        s = r % len(names)
        for name in names[s:] + names[:s]:
            f = fns[name]
            t0 = pc()
            f()
            times[name].append(pc() - t0)
    return times


def summarize(ts):
    us = [t * 1e6 for t in ts]
    return {"median_us": statistics.median(us), "min_us": min(us), "max_us": max(us),
            "q1_us": float(np.percentile(us, 25)), "q3_us": float(np.percentile(us, 75)),
            "n": len(us)}


# ------------------------------------------------------------------ variants

def make_data(B, n_in, n_out, seed=SEED):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, n_in), dtype=np.float32)
    W = (rng.standard_normal((n_out, n_in), dtype=np.float32) / np.sqrt(n_in)).astype(np.float32)
    dy = rng.standard_normal((B, n_out), dtype=np.float32)
    return x, W, dy


def backward_variants(x, W, dy, k, nthreads):
    """The timed callables for one layer shape. Buffers and graphs are built here,
    outside the timing; each callable is exactly one backward pass."""
    B, n_in = x.shape
    n_out = W.shape[0]
    fns = {}

    ws = kernels.Workspace()
    idx = np.empty((B, k), dtype=np.int32)
    val = np.empty((B, k), dtype=np.float32)

    def meprop():
        kernels.topk_rows_into(dy, k, idx, val, ws, nthreads)
        return kernels.sparse_backward_into(x, W, idx, val, ws, nthreads)
    fns["meprop"] = meprop

    ws_u = kernels.Workspace()
    uidx = np.empty((k,), dtype=np.int32)

    def meprop_unified():
        kernels.topk_unified_into(dy, k, uidx, ws_u, nthreads)
        return kernels.unified_backward_into(x, W, uidx, dy, ws_u, nthreads)
    fns["meprop_unified"] = meprop_unified

    dx_buf = np.empty((B, n_in), dtype=np.float32)
    dw_buf = np.empty((n_out, n_in), dtype=np.float32)
    dyT = dy.T

    def numpy_dense():
        np.matmul(dy, W, out=dx_buf)
        np.matmul(dyT, x, out=dw_buf)
        return dx_buf, dw_buf
    fns["numpy_dense"] = numpy_dense

    if torch is not None:
        lin = torch.nn.Linear(n_in, n_out)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        y = lin(xt)                               # forward: once, untimed
        dyt = torch.from_numpy(dy.copy())
        inputs = [xt, lin.weight, lin.bias]

        def torch_dense():
            # the layer's backward only: dx, dW, db, no .grad accumulation
            return torch.autograd.grad(y, inputs, dyt, retain_graph=True)
        fns["torch_dense"] = torch_dense
    return fns


def check_backward(fns, x, W, dy, k):
    """Untimed sanity check that each variant computes what it claims."""
    B = x.shape[0]
    n_out = W.shape[0]
    tol = dict(rtol=1e-3, atol=1e-3)
    # per-example top-k reference (ties are measure-zero with normal data)
    order = np.argsort(-np.abs(dy), axis=1, kind="stable")[:, :k]
    mask = np.zeros_like(dy, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    dys = np.where(mask, dy, 0).astype(np.float32)
    dx, g = fns["meprop"]()
    assert np.allclose(dx, dys @ W, **tol), "meprop dx mismatch"
    assert np.allclose(g.to_dense(n_out), dys.T @ x, **tol), "meprop dW mismatch"
    # unified
    cols = np.sort(np.argsort(-np.abs(dy).sum(0), kind="stable")[:k])
    dyu = np.zeros_like(dy)
    dyu[:, cols] = dy[:, cols]
    dx, g = fns["meprop_unified"]()
    assert np.allclose(dx, dyu @ W, **tol), "unified dx mismatch"
    assert np.allclose(g.to_dense(n_out), dyu.T @ x, **tol), "unified dW mismatch"
    dx_ref, dw_ref = dy @ W, dy.T @ x
    dx, dw = fns["numpy_dense"]()
    assert np.allclose(dx, dx_ref, **tol) and np.allclose(dw, dw_ref, **tol), "numpy mismatch"
    if "torch_dense" in fns:
        gx, gw, gb = (t.numpy() for t in fns["torch_dense"]())
        assert np.allclose(gx, dx_ref, **tol), "torch dx mismatch"
        assert np.allclose(gw, dw_ref, **tol), "torch dW mismatch"
        assert np.allclose(gb, dy.sum(0), **tol), "torch db mismatch"
    del B


def topk_variants(g, k, nthreads):
    B, n = g.shape
    fns = {}
    ws = kernels.Workspace()
    idx = np.empty((B, k), dtype=np.int32)
    val = np.empty((B, k), dtype=np.float32)
    fns["meprop_topk"] = lambda: kernels.topk_rows_into(g, k, idx, val, ws, nthreads)
    if torch is not None:
        gt = torch.from_numpy(g.copy())
        fns["torch_topk"] = lambda: torch.topk(gt.abs(), k, dim=1)
    fns["numpy_argpartition"] = lambda: np.argpartition(np.abs(g), -k, axis=1)[:, -k:]
    return fns


# ---------------------------------------------------------------- machine

def machine_info():
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([sys.executable] + sys.argv),
            "python": platform.python_version(), "platform": platform.platform(),
            "nproc": ncpus(), "os_cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        model = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), None)
        flags = next((l.split(":", 1)[1].split() for l in lines if l.startswith("flags")), [])
        info["cpu_model"] = model
        info["cpu_avx512"] = sorted(f for f in flags if f.startswith("avx512"))
    except OSError:
        info["cpu_model"] = platform.processor()
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    info["env"] = {k: v for k, v in os.environ.items()
                   if k.startswith(("OMP_", "OPENBLAS_", "MKL_", "GOMP_", "KMP_"))}
    info["meprop"] = meprop_cpu.show_config()
    info["numpy"] = np.__version__
    if torch is not None:
        cfg = torch.__config__.show().splitlines()
        info["torch"] = {"version": torch.__version__,
                         "mkl_available": torch.backends.mkl.is_available(),
                         "mkldnn_available": torch.backends.mkldnn.is_available(),
                         "config": [l.strip() for l in cfg if l.strip()
                                    and not l.strip().startswith("- Build settings")][:10],
                         "parallel_info": torch.__config__.parallel_info().splitlines()}
    else:
        info["torch"] = None
    if threadpoolctl is not None:
        info["threadpoolctl"] = {"version": threadpoolctl.__version__,
                                 "info": threadpoolctl.threadpool_info()}
    else:
        info["threadpoolctl"] = None
    return info


# ------------------------------------------------------------------ report

def ratio(a, b):
    return a / b if a and b else None


def fmt_ratio(r):
    return "" if r is None else f"{r:.2f}x"


def table_rows(results):
    """Rows for the printed / markdown table."""
    rows = []
    for res in results:
        v = res["variants"]
        t_torch = v.get("torch_dense", {}).get("median_us")
        t_numpy = v.get("numpy_dense", {}).get("median_us")
        if res["kind"] == "topk":
            t_torch = v.get("torch_topk", {}).get("median_us")
            t_numpy = v.get("numpy_argpartition", {}).get("median_us")
        shape = res["shape_str"]
        for name, s in v.items():
            rows.append([shape, str(res["threads"]), name, f"{s['median_us']:.1f}",
                         f"{s['min_us']:.1f}", f"{s['max_us']:.1f}",
                         fmt_ratio(ratio(t_torch, s["median_us"])),
                         fmt_ratio(ratio(t_numpy, s["median_us"]))])
    return rows


HEADER = ["shape", "threads", "variant", "median us", "min us", "max us",
          "speed-up vs torch", "speed-up vs numpy"]


def text_table(rows):
    w = [max(len(str(r[i])) for r in rows + [HEADER]) for i in range(len(HEADER))]
    out = ["  ".join(h.ljust(w[i]) for i, h in enumerate(HEADER)),
           "  ".join("-" * w[i] for i in range(len(HEADER)))]
    prev = None
    for r in rows:
        if prev is not None and (r[0], r[1]) != prev:
            out.append("")
        prev = (r[0], r[1])
        out.append("  ".join(str(c).ljust(w[i]) if i < 3 else str(c).rjust(w[i])
                             for i, c in enumerate(r)))
    return "\n".join(out)


def _la(v):
    return "n/a" if v is None else " ".join(f"{x:.2f}" for x in v)


def markdown(doc, rows):
    m = doc["machine"]
    lines = ["# Kernel benchmark: meProp backward vs dense backward", "",
             f"- date: {m['date']}",
             f"- command: `{m['command']}`",
             f"- CPU: {m.get('cpu_model')}, {m['nproc']} CPUs available",
             f"- load average (1, 5, 15 min) at start {_la(m.get('loadavg_start'))}, "
             f"at end {_la(m.get('loadavg_end'))}: other processes on the machine skew timings",
             f"- meprop_cpu: {m['meprop']}",
             f"- numpy {m['numpy']}, BLAS: {m['meprop'].get('blas')}",
             "- torch: " + (f"{m['torch']['version']}, MKL available: {m['torch']['mkl_available']}"
                            if m["torch"] else "not installed (torch variants skipped)"),
             f"- repeats {doc['repeats']}, warm-up {doc['warmup']}; median of single-call "
             f"times, variants {doc['order']}; same thread count for every library",
             "- shape = (B, n_in, n_out, k) for the backward; (B, n, k) for top-k alone",
             "- speed-up vs X = median time of X's dense variant / median time of this row "
             "(for top-k: torch.topk / np.argpartition)",
             "- torch_dense also computes db (O(B n_out)); numpy_dense and meprop do not", ""]
    for note in doc["notes"]:
        lines.append(f"- note: {note}")
    lines += ["", "| " + " | ".join(HEADER) + " |",
              "|" + "|".join("---" if i < 3 else "---:" for i in range(len(HEADER))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    notes = []
    if torch is None:
        notes.append("torch is not importable: torch_dense and torch_topk skipped")
    if threadpoolctl is None:
        notes.append("threadpoolctl is not importable: numpy's BLAS threads were not limited")
    if max(args.threads) > ncpus():
        notes.append(f"thread count {max(args.threads)} exceeds the {ncpus()} CPUs available")
    machine = machine_info()
    tp = (machine.get("threadpoolctl") or {}).get("info", [])
    if (max(args.threads) > 1 and any(i.get("user_api") == "openmp" for i in tp)
            and any(i.get("threading_layer") == "pthreads" for i in tp)):
        notes.append("numpy's BLAS runs its own pthreads pool beside the OpenMP pool of "
                     "meprop (and torch); when T = number of cores, threads of one pool still "
                     "spinning after a call compete with the other pool's next call. "
                     "Compare with --order blocked.")
    print(f"CPU {machine.get('cpu_model')} x{machine['nproc']}, numpy {np.__version__}, "
          f"torch {torch.__version__ if torch else 'absent'}, meprop {meprop_cpu.__version__}")
    for n in notes:
        print("note:", n)

    results = []
    for T in args.threads:
        with Threads(T):
            for (B, n_in, n_out, k) in SHAPES:
                x, W, dy = make_data(B, n_in, n_out)
                fns = backward_variants(x, W, dy, k, T)
                check_backward(fns, x, W, dy, k)
                times = time_variants(fns, args.repeats, args.warmup, args.order)
                v = {name: summarize(ts) for name, ts in times.items()}
                rat = {}
                for d in ("numpy_dense", "torch_dense"):
                    for m in ("meprop", "meprop_unified"):
                        if d in v:
                            rat[f"{d}/{m}"] = ratio(v[d]["median_us"], v[m]["median_us"])
                results.append({"kind": "backward", "shape": [B, n_in, n_out, k],
                                "shape_str": f"({B},{n_in},{n_out},{k})", "threads": T,
                                "variants": v, "ratios": rat})
                print(f"  done backward {results[-1]['shape_str']} T={T}", flush=True)
            B, n, k = TOPK_SHAPE
            g = np.random.default_rng(SEED + 1).standard_normal((B, n), dtype=np.float32)
            fns = topk_variants(g, k, T)
            times = time_variants(fns, args.repeats, args.warmup, args.order)
            v = {name: summarize(ts) for name, ts in times.items()}
            rat = {f"{o}/meprop_topk": ratio(v[o]["median_us"], v["meprop_topk"]["median_us"])
                   for o in ("torch_topk", "numpy_argpartition") if o in v}
            results.append({"kind": "topk", "shape": [B, n, k], "shape_str": f"({B},{n},{k})",
                            "threads": T, "variants": v, "ratios": rat})
            print(f"  done top-k {results[-1]['shape_str']} T={T}", flush=True)

    try:
        machine["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    doc = {"benchmark": "bench_kernels", "order": args.order,
           "repeats": args.repeats, "warmup": args.warmup,
           "threads": args.threads, "quick": args.quick, "seed": SEED,
           "notes": notes, "machine": machine, "results": results}
    rows = table_rows(results)
    print()
    print(text_table(rows))

    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    md = os.path.splitext(out)[0] + ".md"
    with open(md, "w") as f:
        f.write(markdown(doc, rows))
    print(f"\nwrote {out}\nwrote {md}")


if __name__ == "__main__":
    main()
