"""meProp inside PyTorch: MePropLinear + meprop_cpu.torch.optim.Adam against nn.Linear +
torch.optim.Adam, at the same thread count for every variant.

1. MNIST MLP 784-500-500-10 written in PyTorch (ReLU, dropout), batch 10, Adam
   lr 1e-3: the model with nn.Linear and torch.optim.Adam (fused=True, PyTorch's
   fastest Adam on the CPU), and the same model
   (same initial weights, same data order) converted with
   ``meprop_cpu.torch.convert(model, k)`` (all layers but the output one)
   trained with ``meprop_cpu.torch.optim.Adam``, and converted with
   ``convert(model, k, fuse=True)`` (the Sequential's MePropLinear -> ReLU ->
   Dropout runs through one autograd node). Epochs alternate between the
   variants; the training time of every epoch (evaluation excluded) is kept and
   the median compared. Dev / test accuracy after each epoch. For the accuracy
   behaviour, this library's own MLP (``nn.MLP`` + ``optim.Adam`` through
   ``train.Trainer``) at the same k, mode, dropout and epochs.
   ``--flush-denormal`` runs the whole process with subnormals flushed
   (``torch.set_flush_denormal(True)`` before PyTorch starts its threads, so
   they inherit it): this library's update kernels flush them anyway, while
   PyTorch's default mode keeps them, and Adam's decaying moments then slow
   PyTorch's update as the epochs go on. Run it both ways.
2. Where a converted step's time goes: forward, backward (of which inside
   MePropLinear's kernels), optimizer step, zero_grad, per step at batch 10;
   the same split for the nn.Linear baseline; and the converted model with
   torch.optim.Adam on dense gradients (sparse_grad=False).
3. One wide layer, batch 256, 1024 -> 4096, k = 40: forward + backward (input
   gradient included) of nn.Linear and of MePropLinear with PyTorch's forward
   and with this library's dense forward; forward and backward alone. Variants
   alternate within every repetition; medians after warm-up.

    python benchmarks/bench_torch.py                      # everything, 2 threads
    python benchmarks/bench_torch.py --epochs 1 --train-subset 5000 --no-save   # smoke

Writes benchmarks/results/torch/<name>.json and .md.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import meprop_cpu  # noqa: E402
from meprop_cpu import data as mpdata  # noqa: E402
from meprop_cpu import nn as mp_nn  # noqa: E402
from meprop_cpu import optim as mp_optim  # noqa: E402
from meprop_cpu import train as mp_train  # noqa: E402
from meprop_cpu.torch import DEFAULT_MODE, MePropLinear, convert  # noqa: E402
from meprop_cpu.torch import optim as tmp_optim  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------ helpers

def torch_mlp(seed, dropout):
    """The MLP in PyTorch, with the initial weights of this library's nn.MLP(seed)
    (Glorot uniform, zero biases), so that every variant starts from the same point."""
    torch.manual_seed(seed)
    layers = [nn.Linear(784, 500), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(500, 500), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(500, 10))
    model = nn.Sequential(*layers)
    ref = mp_nn.MLP([784, 500, 500, 10], k=None, mode="dense", seed=seed)
    with torch.no_grad():
        for t, m in zip([m for m in model if isinstance(m, nn.Linear)], ref.linears):
            t.weight.copy_(torch.from_numpy(m.W.data))
            t.bias.copy_(torch.from_numpy(m.b.data))
    return model


def torch_adam(params, lr):
    """torch.optim.Adam(fused=True): one kernel for all parameters, PyTorch's fastest
    Adam on the CPU (the baseline; the default implementation is in the step profile)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def accuracy(model, X, y):
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(X[i:i + 2000]).argmax(1) for i in range(0, X.shape[0], 2000)])
    model.train()
    return 100.0 * float((pred == y).float().mean())


class Timed:
    """Accumulates the seconds spent in MePropLinear._backward (our kernels + the
    Python around them) while installed."""

    def __init__(self):
        self.seconds = 0.0
        self._orig = MePropLinear._backward

    def __enter__(self):
        orig, acc = self._orig, self
        depth = [0]

        def wrapped(layer, *a):
            # only the outermost call counts: a _backward that calls itself (as
            # mode topk_dw once did) must not be timed twice
            depth[0] += 1
            t = time.perf_counter()
            try:
                return orig(layer, *a)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    acc.seconds += time.perf_counter() - t
        MePropLinear._backward = wrapped
        return self

    def __exit__(self, *exc):
        MePropLinear._backward = self._orig


def loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def git_rev():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------ 1. MNIST


def mnist_part(args, data):
    Xtr, ytr = (torch.from_numpy(a) for a in data["train"])
    Xdev, ydev = (torch.from_numpy(a) for a in data["dev"])
    Xte, yte = (torch.from_numpy(a) for a in data["test"])
    if args.train_subset:
        Xtr, ytr = Xtr[:args.train_subset], ytr[:args.train_subset]
    n, B = Xtr.shape[0], args.batch
    variants = {
        "torch nn.Linear + torch.optim.Adam": (torch_mlp(args.seed, args.dropout), None),
        f"MePropLinear k={args.k} ({args.mode}) + meprop_cpu.torch.optim.Adam":
            (convert(torch_mlp(args.seed, args.dropout), k=args.k, mode=args.mode), None),
        f"MePropSequential k={args.k} ({args.mode}; convert(fuse=True)) + "
        "meprop_cpu.torch.optim.Adam":
            (convert(torch_mlp(args.seed, args.dropout), k=args.k, mode=args.mode, fuse=True),
             None),
    }
    opts = {}
    for name, (model, _) in variants.items():
        opts[name] = (torch_adam(model.parameters(), args.lr) if name.startswith("torch")
                      else tmp_optim.Adam(model.parameters(), lr=args.lr))
    rows = {name: {"epoch_s": [], "epoch_cpu_s": [], "dev": [], "test": []}
            for name in variants}
    perm_rng = np.random.default_rng(args.seed)
    perms = [torch.from_numpy(perm_rng.permutation(n)) for _ in range(args.epochs)]
    loss_fn = nn.CrossEntropyLoss()
    for ep in range(args.epochs):
        order = list(variants) if ep % 2 == 0 else list(reversed(list(variants)))
        for name in order:
            model, opt = variants[name][0], opts[name]
            Xp, yp = Xtr[perms[ep]], ytr[perms[ep]]
            torch.manual_seed(args.seed + ep)     # the same dropout draws in both variants
            c0, t0 = time.process_time(), time.perf_counter()
            for i in range(0, n, B):
                opt.zero_grad()
                loss_fn(model(Xp[i:i + B]), yp[i:i + B]).backward()
                opt.step()
            dt = time.perf_counter() - t0
            r = rows[name]
            r["epoch_s"].append(dt)
            r["epoch_cpu_s"].append(time.process_time() - c0)
            r["dev"].append(accuracy(model, Xdev, ydev))
            r["test"].append(accuracy(model, Xte, yte))
            print(f"  epoch {ep + 1} {name}: {dt:.2f} s, dev {r['dev'][-1]:.2f} "
                  f"test {r['test'][-1]:.2f}", flush=True)
    # this library's own MLP, same k / mode / dropout / epochs / batch (its fused C step)
    sub = {"train": (data["train"][0][:n], data["train"][1][:n]), "dev": data["dev"],
           "test": data["test"]}
    own = mp_nn.MLP([784, 500, 500, 10], k=args.k, mode=args.mode, dropout=args.dropout,
                    seed=args.seed)
    tr = mp_train.Trainer(own, mp_optim.Adam(own.parameters(), lr=args.lr), sub,
                          batch_size=B, epochs=args.epochs, seed=args.seed, progress=False)
    tr.fit()
    evals = [h for h in tr.history]
    rows[f"meprop_cpu nn.MLP k={args.k} ({args.mode}) + optim.Adam (Trainer)"] = {
        "epoch_s": [h["time_epoch"] for h in evals],
        "dev": [h["dev_acc"] for h in evals],
        "test": [h.get("test_acc") for h in evals], "step_path": tr.step_path}
    for name, r in rows.items():
        r["median_epoch_s"] = statistics.median(r["epoch_s"])
        if r.get("epoch_cpu_s"):
            r["median_epoch_cpu_s"] = statistics.median(r["epoch_cpu_s"])
    base_row = rows["torch nn.Linear + torch.optim.Adam"]
    for r in rows.values():
        r["speedup_vs_torch"] = base_row["median_epoch_s"] / r["median_epoch_s"]
        if "median_epoch_cpu_s" in r:
            r["cpu_speedup_vs_torch"] = base_row["median_epoch_cpu_s"] / r["median_epoch_cpu_s"]
    return {"train_examples": n, "batch": B, "epochs": args.epochs, "k": args.k,
            "mode": args.mode, "dropout": args.dropout, "lr": args.lr, "rows": rows}


# ------------------------------------------------------------- 2. step profile

def profile_part(args, data):
    X = torch.from_numpy(data["train"][0][:args.profile_steps * args.batch])
    y = torch.from_numpy(data["train"][1][:args.profile_steps * args.batch])
    B = args.batch
    out = {}
    configs = [
        ("torch nn.Linear + torch.optim.Adam", lambda: torch_mlp(args.seed, args.dropout),
         lambda ps, lr: torch_adam(ps, lr)),
        ("torch nn.Linear + torch.optim.Adam (default for-loop implementation)",
         lambda: torch_mlp(args.seed, args.dropout), torch.optim.Adam),
        (f"MePropLinear k={args.k} + meprop_cpu.torch.optim.Adam",
         lambda: convert(torch_mlp(args.seed, args.dropout), k=args.k, mode=args.mode),
         tmp_optim.Adam),
        (f"MePropSequential k={args.k} (convert(fuse=True)) + meprop_cpu.torch.optim.Adam",
         lambda: convert(torch_mlp(args.seed, args.dropout), k=args.k, mode=args.mode,
                         fuse=True), tmp_optim.Adam),
        (f"MePropLinear k={args.k} sparse_grad=False + torch.optim.Adam",
         lambda: convert(torch_mlp(args.seed, args.dropout), k=args.k, mode=args.mode,
                         sparse_grad=False), torch.optim.Adam),
        (f"MePropLinear k={args.k} forward_impl=torch + meprop_cpu.torch.optim.Adam",
         lambda: convert(torch_mlp(args.seed, args.dropout), k=args.k, mode=args.mode,
                         forward_impl="torch"), tmp_optim.Adam),
    ]
    loss_fn = nn.CrossEntropyLoss()
    models = [(name, make(), ocls) for name, make, ocls in configs]
    models = [(name, m, ocls(list(m.parameters()), lr=args.lr)) for name, m, ocls in models]
    acc = {name: {"forward": [], "backward": [], "in_meprop_backward": [], "step": [],
                  "zero_grad": [], "total": [], "cpu": []} for name, _, _ in models}
    steps = X.shape[0] // B
    for rep in range(args.profile_reps + 1):           # rep 0: warm-up
        for name, model, opt in (models if rep % 2 else list(reversed(models))):
            tf = tb = ts = tz = 0.0
            c0 = time.process_time()
            with Timed() as inner:
                for s in range(steps):
                    xb, yb = X[s * B:(s + 1) * B], y[s * B:(s + 1) * B]
                    t0 = time.perf_counter()
                    opt.zero_grad()
                    t1 = time.perf_counter()
                    loss = loss_fn(model(xb), yb)
                    t2 = time.perf_counter()
                    loss.backward()
                    t3 = time.perf_counter()
                    opt.step()
                    t4 = time.perf_counter()
                    tz += t1 - t0
                    tf += t2 - t1
                    tb += t3 - t2
                    ts += t4 - t3
            cpu = time.process_time() - c0
            if rep == 0:
                continue
            a = acc[name]
            for key, v in (("forward", tf), ("backward", tb), ("step", ts), ("zero_grad", tz),
                           ("cpu", cpu),
                           ("in_meprop_backward", inner.seconds),
                           ("total", tf + tb + ts + tz)):
                a[key].append(1e6 * v / steps)
    for name, a in acc.items():
        out[name] = {key: statistics.median(v) for key, v in a.items()}
        out[name]["backward_outside_meprop"] = (out[name]["backward"]
                                                - out[name]["in_meprop_backward"])
    # this library's own step for the same MLP (module path and fused C step)
    own = mp_nn.MLP([784, 500, 500, 10], k=args.k, mode=args.mode, dropout=args.dropout,
                    seed=args.seed)
    sub = {"train": (data["train"][0][:steps * B], data["train"][1][:steps * B]),
           "dev": (data["dev"][0][:100], data["dev"][1][:100])}
    times = []
    for rep in range(args.profile_reps + 1):
        tr = mp_train.Trainer(own, mp_optim.Adam(own.parameters(), lr=args.lr), sub,
                              batch_size=B, epochs=1, seed=args.seed, progress=False)
        tr.fit()
        if rep:
            times.append(1e6 * tr.history[-1]["time_epoch"] / steps)
    out["meprop_cpu nn.MLP + optim.Adam (Trainer, fused step)"] = {
        "total": statistics.median(times), "step_path": tr.step_path}
    return {"batch": B, "steps": steps, "reps": args.profile_reps, "us_per_step": out}


# ------------------------------------------------------------ 3. wide layer

def wide_part(args):
    B, n_in, n_out, k = 256, 1024, 4096, args.wide_k
    torch.manual_seed(args.seed)
    lin = nn.Linear(n_in, n_out)
    variants = {"nn.Linear": lin}
    for impl in ("torch", "meprop"):
        m = MePropLinear(n_in, n_out, k=k, mode=args.mode, forward_impl=impl)
        m.load_state_dict(lin.state_dict())
        variants[f"MePropLinear k={k} forward_impl={impl}"] = m
    m = MePropLinear(n_in, n_out, k=k, mode=args.mode, sparse_grad=False)
    m.load_state_dict(lin.state_dict())
    variants[f"MePropLinear k={k} sparse_grad=False"] = m
    if args.mode != "topk":
        # the paper's per-example top-k: the input gradient is sparse too, the
        # only mode whose backward is no dense product (batch_dw's dx = dy W is)
        m = MePropLinear(n_in, n_out, k=k, mode="topk")
        m.load_state_dict(lin.state_dict())
        variants[f"MePropLinear k={k} mode=topk"] = m
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(B, n_in, generator=g).requires_grad_(True)
    dy = torch.randn(B, n_out, generator=g)
    res = {name: {"fwd_bwd": [], "forward": [], "backward": [], "fwd_bwd_cpu": []}
           for name in variants}
    for rep in range(args.wide_reps + 2):                # 2 warm-up repetitions
        names = list(variants) if rep % 2 else list(reversed(list(variants)))
        for name in names:
            layer = variants[name]
            layer.zero_grad()
            x.grad = None
            c0, t0 = time.process_time(), time.perf_counter()
            y = layer(x)
            t1 = time.perf_counter()
            y.backward(dy)
            t2 = time.perf_counter()
            c2 = time.process_time()
            if rep >= 2:
                res[name]["fwd_bwd_cpu"].append(1e3 * (c2 - c0))
                res[name]["fwd_bwd"].append(1e3 * (t2 - t0))
                res[name]["forward"].append(1e3 * (t1 - t0))
                res[name]["backward"].append(1e3 * (t2 - t1))
    out = {}
    for name, r in res.items():
        out[name] = {key + "_ms": statistics.median(v) for key, v in r.items()}
    base = out["nn.Linear"]["fwd_bwd_ms"]
    for r in out.values():
        r["fwd_bwd_speedup"] = base / r["fwd_bwd_ms"]
    return {"batch": B, "n_in": n_in, "n_out": n_out, "k": k, "reps": args.wide_reps,
            "ms": out}


# ------------------------------------------------------------------ report

def markdown(res):
    env = res["env"]
    L = [f"# meProp inside PyTorch: `{res['name']}`", "",
         f"Generated by `benchmarks/bench_torch.py` (`{res['command']}`) on {env['date']}.", "",
         f"- machine: {env['cpu']}, {env['cpus']} CPUs usable; a shared 2-core VM (other "
         "jobs may have run meanwhile; load averages below)",
         f"- threads: {env['threads']} for every variant (torch.set_num_threads, "
         "meprop_cpu.set_num_threads, BLAS via threadpoolctl)",
         f"- torch {env['torch']}, meprop_cpu {env['meprop_cpu']}, numpy {env['numpy']}, "
         f"SIMD {env['simd']}",
         f"- load average at start {env['load_start']}, at end {env['load_end']}",
         "- floating-point mode: " + ("subnormals flushed in the whole process "
                                      "(`--flush-denormal`: torch.set_flush_denormal(True) "
                                      "before any thread started)"
                                      if env.get("flush_denormal") else
                                      "PyTorch's default (subnormals kept; this library's "
                                      "update kernels flush them around the update only)"),
         f"- git {env['git']}", ""]
    if "mnist" in res:
        m = res["mnist"]
        L += [f"## MNIST MLP 784-500-500-10 in PyTorch, batch {m['batch']}, Adam lr {m['lr']}, "
              f"dropout {m['dropout']}", "",
              f"{m['train_examples']} training examples per epoch, {m['epochs']} epoch(s); "
              "training time per epoch (evaluation excluded; median over the epochs, the "
              "variants alternating epoch by epoch), dev / test accuracy (%) after each "
              "epoch.", "",
              "CPU s = the process's CPU time in the epoch (all threads), a check on the "
              "wall time when other jobs share the machine.", "",
              "| run | s/epoch (median) | vs torch | CPU s/epoch (vs torch) | every epoch (s) "
              "| dev | test |",
              "|---|---:|---:|---:|---|---|---|"]
        for name, r in m["rows"].items():
            cpu = (f"{r['median_epoch_cpu_s']:.2f} ({r['cpu_speedup_vs_torch']:.2f}x)"
                   if "median_epoch_cpu_s" in r else "")
            L.append(f"| {name} | {r['median_epoch_s']:.2f} | {r['speedup_vs_torch']:.2f}x | "
                     f"{cpu} | "
                     f"{', '.join(f'{v:.2f}' for v in r['epoch_s'])} | "
                     f"{', '.join(f'{v:.2f}' for v in r['dev'])} | "
                     f"{', '.join('-' if v is None else f'{v:.2f}' for v in r['test'])} |")
        L.append("")
    if "profile" in res:
        p = res["profile"]
        L += [f"## Where a step's time goes (batch {p['batch']}, µs per step, median of "
              f"{p['reps']} passes over {p['steps']} steps)", "",
              "backward = `loss.backward()`; of it, *in MePropLinear* = the layers' "
              "backward (this library's kernels and the Python around them), *outside* = "
              "autograd's engine and PyTorch's backward of the other ops (loss, ReLU, "
              "dropout, output layer).", "",
              "| run | forward+loss | backward | in MePropLinear | outside | optimizer step | "
              "zero_grad | total | CPU µs/step |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in p["us_per_step"].items():
            if "forward" not in r:
                L.append(f"| {name} |  |  |  |  |  |  | {r['total']:.0f} |  |")
                continue
            L.append(f"| {name} | {r['forward']:.0f} | {r['backward']:.0f} | "
                     f"{r['in_meprop_backward']:.0f} | {r['backward_outside_meprop']:.0f} | "
                     f"{r['step']:.0f} | {r['zero_grad']:.0f} | {r['total']:.0f} | "
                     f"{r['cpu']:.0f} |")
        L.append("")
    if "wide" in res:
        w = res["wide"]
        L += [f"## One wide layer: batch {w['batch']}, {w['n_in']} -> {w['n_out']}, "
              f"k = {w['k']} (ms, median of {w['reps']})", "",
              "forward + backward of `y = layer(x); y.backward(dy)` with the input "
              "gradient; the variants alternate within each repetition.", "",
              "| layer | forward+backward | vs nn.Linear | forward | backward | CPU ms "
              "fwd+bwd |",
              "|---|---:|---:|---:|---:|---:|"]
        for name, r in w["ms"].items():
            L.append(f"| {name} | {r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_speedup']:.2f}x | "
                     f"{r['forward_ms']:.2f} | {r['backward_ms']:.2f} | "
                     f"{r['fwd_bwd_cpu_ms']:.2f} |")
        L.append("")
    return "\n".join(L)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--mode", default=DEFAULT_MODE)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-subset", type=int, default=0, help="0: all 55,000")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile-steps", type=int, default=1000)
    ap.add_argument("--profile-reps", type=int, default=3)
    ap.add_argument("--wide-k", type=int, default=40)
    ap.add_argument("--wide-reps", type=int, default=15)
    ap.add_argument("--parts", default="mnist,profile,wide")
    ap.add_argument("--name", default="torch_bench")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "torch"))
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--flush-denormal", action="store_true",
                    help="flush subnormals in the whole process (every variant, every thread)")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))

    # first: the threads PyTorch and the OpenMP runtimes start later inherit the mode
    flushed = bool(args.flush_denormal and torch.set_flush_denormal(True))
    if args.flush_denormal and not flushed:
        raise SystemExit("--flush-denormal: torch.set_flush_denormal is not supported here")
    torch.set_num_threads(args.threads)
    meprop_cpu.set_num_threads(args.threads)
    limiter = None
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(args.threads, user_api="blas")
    except ImportError:
        pass
    res = {"name": args.name,
           "command": "python benchmarks/bench_torch.py " + " ".join(sys.argv[1:] if argv is None
                                                                    else argv),
           "env": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                       timespec="seconds"),
                   "cpu": cpu_name(), "cpus": len(os.sched_getaffinity(0)),
                   "threads": args.threads, "torch": torch.__version__,
                   "meprop_cpu": meprop_cpu.__version__, "numpy": np.__version__,
                   "simd": meprop_cpu.show_config()["simd"], "load_start": loadavg(),
                   "git": git_rev(), "machine_note": "shared 2-core VM",
                   "flush_denormal": flushed}}
    data = mpdata.mnist() if parts & {"mnist", "profile"} else None
    if "wide" in parts:
        print("wide layer ...", flush=True)
        res["wide"] = wide_part(args)
    if "profile" in parts:
        print("step profile ...", flush=True)
        res["profile"] = profile_part(args, data)
    if "mnist" in parts:
        print("MNIST epochs ...", flush=True)
        res["mnist"] = mnist_part(args, data)
    res["env"]["load_end"] = loadavg()
    if limiter is not None:
        limiter.restore_original_limits()
    md = markdown(res)
    print(md)
    if not args.no_save:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, args.name + ".json"), "w") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(args.out, args.name + ".md"), "w") as f:
            f.write(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
