"""Data-parallel training over MPI: bytes and seconds of the gradient exchange,
and the step time of 2 ranks x 1 thread against 1 rank x 2 threads.

    # bytes and time of one exchange, per method (2 ranks, 1 thread each)
    mpiexec -n 2 python -m mpi4py benchmarks/bench_distributed.py exchange OUT.json
    # step times on MNIST, global batch 200, one epoch each
    python benchmarks/bench_distributed.py steps OUT.json --threads 2 [--no-fused]
    mpiexec -n 2 python -m mpi4py benchmarks/bench_distributed.py steps OUT.json \\
        --threads 1 --distributed [--exchange dense]
    # 2 x 1 against 1 x 2 inside one MPI job, alternating block by block
    mpiexec -n 2 python -m mpi4py benchmarks/bench_distributed.py paired OUT.json
    # the work after the exchange (forming and applying the global gradient) for
    # global batches of N x 100, N = 1..64 (one process, 1 thread): the scale model's input
    python benchmarks/bench_distributed.py apply OUT.json
    # the markdown summary of benchmarks/results/distributed/*.json
    python benchmarks/bench_distributed.py report DIR

benchmarks/run_distributed.sh runs them all (under the exclusive CPU lock).
Real MNIST batches (mpdata.mnist()) for the MNIST MLP; Gaussian inputs and
output gradients for the wide single layers (the kernel benchmarks' shapes).
"""
import argparse
import json
import statistics
import os
import platform
import sys
import time

import numpy as np

import meprop_cpu
from meprop_cpu import data as mpdata, kernels, nn, set_num_threads
from meprop_cpu.train import Trainer, build_optimizer

MACHINE = ("shared 2-core VM (other jobs run beside the measurement unless the project's "
           "exclusive CPU lock is held; run_distributed.sh takes it)")

# name, sizes, k, batch per rank
EXCHANGE_CONFIGS = [
    ("mnist_mlp_b10", [784, 500, 500, 10], 20, 10),
    ("mnist_mlp_b100", [784, 500, 500, 10], 20, 100),
    ("wide_1024x4096", [1024, 4096], 40, 128),
    ("wide_2048x20000", [2048, 20000], 40, 64),
]


def _env():
    return {"meprop_cpu": meprop_cpu.__version__ if hasattr(meprop_cpu, "__version__") else None,
            "config": meprop_cpu.show_config(), "python": platform.python_version(),
            "machine": MACHINE}


def _model(sizes, k, mode="topk"):
    if len(sizes) == 2:   # one wide layer, its input gradient not needed
        return nn.Sequential(nn.Linear(sizes[0], sizes[1], k=k, mode=mode, seed=0,
                                       needs_input_grad=False))
    return nn.MLP(sizes, k=k, mode=mode, seed=0)


def cmd_exchange(args):
    from mpi4py import MPI
    from meprop_cpu.distributed import Distributed
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    set_num_threads(1)
    mn = mpdata.mnist()["train"]
    rows = []
    for name, sizes, k, b in EXCHANGE_CONFIGS:
        model = _model(sizes, k, args.mode)
        opt = build_optimizer("adam", model.parameters())
        rng = np.random.default_rng(100 + rank)
        first = None
        if sizes[0] == 784:   # one global batch, this rank's share (as the Trainer splits it)
            sel = np.random.default_rng(7).choice(mn[0].shape[0], size=b * size, replace=False)
            x, y = mn[0][sel[rank * b:(rank + 1) * b]], mn[1][sel[rank * b:(rank + 1) * b]]
            X_global = mn[0][sel]
            first = lambda: X_global   # noqa: E731  (every rank holds the training set)
        else:
            x = rng.normal(size=(b, sizes[0])).astype(np.float32)
            dy = rng.normal(size=(b, sizes[-1])).astype(np.float32)
        loss_fn = nn.SoftmaxCrossEntropy()
        lins = model.linears
        reps = args.reps if sizes[-1] < 10000 else max(2, args.reps // 5)
        variants = ["auto", "rows", "owner", "dense"]
        if args.mode == "batch_dw":   # the whole dy instead of the candidates, for comparison
            variants.insert(1, "auto_dy")
        for exchange in variants:
            dist = Distributed(exchange=exchange.split("_")[0])
            if exchange == "auto_dy":
                dist._batch_exchange = "dy"
            t = []
            for _ in range(reps):
                out = model.forward(x)
                if sizes[0] == 784:
                    loss_fn.forward(out, y)
                    model.backward(loss_fn.backward() * np.float32(1.0 / size))
                else:
                    model.backward(dy)
                comm.Barrier()
                t0 = time.perf_counter()
                dist._exchange(model, opt, lins, [], b * size, b, 0.0, 0, False,
                               first_input=first)
                t.append(time.perf_counter() - t0)
                opt.zero_grad()
            t = np.array(comm.allreduce(t[reps // 3:], op=MPI.SUM)).reshape(-1)
            st = dist.last
            rows.append({"config": name, "sizes": sizes, "k": k, "mode": args.mode,
                         "batch_per_rank": b,
                         "load_average": os.getloadavg(),
                         "ranks": size, "exchange": exchange, "methods": st["methods"],
                         "recv_bytes": st["recv"], "payload_bytes": st["payload"],
                         "dense_allreduce_recv_bytes": st["dense_recv"],
                         "calls": st["calls"], "median_ms": 1e3 * float(np.median(t)),
                         "reps": reps})
            if rank == 0:
                r = rows[-1]
                print(f"{name:18s} {exchange:7s} {r['methods']}  recv {r['recv_bytes']:>11,d} B "
                      f"(dense {r['dense_allreduce_recv_bytes']:,d}, "
                      f"{r['dense_allreduce_recv_bytes'] / r['recv_bytes']:.1f}x fewer)  "
                      f"{r['median_ms']:.3f} ms", flush=True)
    if rank == 0:
        _write(args.out, {"kind": "exchange", "env": _env(), "ranks": size,
                          "mpi": MPI.Get_library_version().splitlines()[0], "rows": rows,
                          "command": "mpiexec -n 2 python -m mpi4py "
                                     "benchmarks/bench_distributed.py exchange "
                                     f"--reps {args.reps} --mode {args.mode} " + args.out})


def cmd_steps(args):
    set_num_threads(args.threads)
    dist = None
    if args.distributed:
        from meprop_cpu.distributed import Distributed
        dist = Distributed(exchange=args.exchange)
    data = mpdata.mnist()
    if args.max_train:
        X, y = data["train"]
        data = dict(data, train=(np.ascontiguousarray(X[:args.max_train]),
                                 np.ascontiguousarray(y[:args.max_train])))
    model = nn.MLP([784, 500, 500, 10], k=args.k, mode=args.mode, dropout=args.dropout, seed=0)
    opt = build_optimizer("adam", model.parameters())
    stamps, exch = [], []

    def clock(trainer, epoch, step):
        stamps.append(time.perf_counter())
        if dist is not None:
            exch.append(dist.last["seconds"])

    tr = Trainer(model, opt, data, batch_size=args.batch, epochs=args.epochs, seed=0,
                 progress=False, callbacks=[clock], fused=not args.no_fused, distributed=dist)
    s = tr.fit()
    d = np.diff(np.array(stamps))
    spe = tr.steps_per_epoch
    # drop the first 20 steps and every step that follows an evaluation
    keep = [i for i in range(len(d)) if i >= 20 and (i + 1) % spe != 0]
    step_ms = 1e3 * float(np.median(d[keep]))
    out = {"kind": "steps", "env": _env(), "threads": args.threads,
           "ranks": 1 if dist is None else dist.size, "batch_global": args.batch, "k": args.k,
           "mode": args.mode,
           "path": tr.step_path if dist is None else f"distributed ({dist.path})",
           "exchange": None if dist is None else args.exchange,
           "dropout": args.dropout, "order": args.order,
           "epochs": args.epochs, "median_step_ms": step_ms,
           "median_exchange_ms": 1e3 * float(np.median(np.array(exch)[keep])) if exch else 0.0,
           "mean_time_epoch_s": s["mean_time_epoch"], "best_dev": s["best_dev"],
           "test_at_best_dev": s["test_at_best_dev"], "steps": len(stamps),
           "load_average_after": os.getloadavg(),
           "command": " ".join(sys.argv)}
    if dist is None or dist.rank == 0:
        print(f"{out['ranks']} rank(s) x {args.threads} thread(s), {out['path']}"
              f"{', ' + args.exchange if dist else ''}: {step_ms:.2f} ms/step "
              f"(exchange {out['median_exchange_ms']:.2f}), epoch {s['mean_time_epoch']:.2f} s, "
              f"dev {s['best_dev']:.2f} test {s['test_at_best_dev']:.2f}", flush=True)
        _write(args.out, out)


def _idle_barrier(comm, poll=0.02):
    """A barrier this rank waits at without spinning (Ibarrier polled every
    ``poll`` seconds), so an idle rank leaves the cores to the other one. A
    poll of 0.5 ms woke the idle rank 2,000 times a second, and those wake-ups
    slowed the other rank's 2-thread steps by 10-40 %."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(poll)


def cmd_paired(args):
    """2 ranks x 1 thread against 1 rank x 2 threads inside one MPI job, in
    alternating blocks of a few steps: for 1 x 2, rank 0 runs the fused step
    on the whole global batch with 2 threads while rank 1 sleeps at a
    non-spinning barrier; for 2 x 1 both ranks run Distributed.train_step
    (the Trainer's data-parallel step) with 1 thread each, once with each
    rank's forward and backward as the fused C call (the default) and once on
    the module path. Every step is timed on its own; the variants sample the
    same stretches of time, block by block (tenths of a second apart), so the
    shared VM's slow spells, which last seconds, hit them alike. Each variant
    trains its own copy of the model on the same batches."""
    from mpi4py import MPI
    from meprop_cpu.distributed import Distributed
    from meprop_cpu.fused import FusedStep
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size != 2:
        raise SystemExit("paired: run with mpiexec -n 2")
    data = mpdata.mnist()
    X, y = data["train"]
    X = np.ascontiguousarray(X[:args.max_train])
    y = np.ascontiguousarray(y[:args.max_train])
    data = dict(data, train=(X, y))
    B, S = args.batch, args.block
    spe = X.shape[0] // B
    rows = []
    for mode in args.modes.split(","):
        def build(fused):
            model = nn.MLP([784, 500, 500, 10], k=args.k, mode=mode, dropout=args.dropout,
                           seed=0)
            opt = build_optimizer("adam", model.parameters())
            tr = Trainer(model, opt, data, batch_size=B, epochs=1, seed=0, progress=False,
                         fused=fused, distributed=Distributed(comm=comm))
            return tr
        variants = {"2x1": build(True), "2x1_modules": build(False)}
        ref = nn.MLP([784, 500, 500, 10], k=args.k, mode=mode, dropout=args.dropout, seed=0)
        ref_opt = build_optimizer("adam", ref.parameters())
        ref_step = FusedStep(ref, ref_opt, B)
        perm = np.random.default_rng(0).permutation(X.shape[0])
        pos = {"1x2": 0, "2x1": 0, "2x1_modules": 0}
        times = {k: [] for k in pos}
        parts = {k: [] for k in pos}
        by_pos = {}
        paths = {}
        names = ["1x2", "2x1", "2x1_modules"]
        for blk in range(args.blocks):
            for name in names[blk % 3:] + names[:blk % 3]:   # rotate who goes first
                comm.Barrier()
                got = []
                if name == "1x2":
                    if rank == 0:
                        set_num_threads(2)
                        for _ in range(S):
                            i = pos[name] % spe
                            idx = np.ascontiguousarray(perm[i * B:(i + 1) * B])
                            t = time.perf_counter()
                            _, tf, tb, tu = ref_step.step_rows(X, y, idx)
                            got.append(time.perf_counter() - t)
                            parts[name].append((tf, tb, 0.0, tu))
                            pos[name] += 1
                    _idle_barrier(comm)
                else:
                    set_num_threads(1)
                    tr = variants[name]
                    for _ in range(S):
                        i = pos[name] % spe
                        idx = np.ascontiguousarray(perm[i * B:(i + 1) * B])
                        t = time.perf_counter()
                        _, tf, tbx, tu = tr.distributed.train_step(tr, 1, i + 1, idx)
                        got.append(time.perf_counter() - t)
                        ex = tr.distributed.last["seconds"]
                        parts[name].append((tf, tbx - ex, ex, tu))
                        pos[name] += 1
                    paths[name] = tr.distributed.path
                if blk >= args.warmup_blocks:
                    times[name] += got
                    by_pos.setdefault(name, []).append(got)
        if rank == 0:
            med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
            acc = {"1x2": ref.accuracy(*data["dev"])}
            for name, tr in variants.items():
                acc[name] = tr.model.accuracy(*data["dev"])
            row = {"mode": mode, "median_step_ms": med, "steps_timed": len(times["2x1"]),
                   "steps_each": pos["2x1"], "paths": paths, "dev_acc": acc,
                   "ratio": med["2x1"] / med["1x2"],
                   "ratio_modules": med["2x1_modules"] / med["1x2"],
                   "quartiles_ms": {k: [1e3 * float(q) for q in np.percentile(v, [25, 75])]
                                    for k, v in times.items()},
                   "load_average": os.getloadavg(),
                   "median_parts_ms": {
                       k: dict(zip(("forward", "backward", "exchange", "update"),
                                   (1e3 * float(x) for x in np.median(np.array(v), axis=0))))
                       for k, v in parts.items() if v},
                   "median_ms_by_position_in_block": {
                       k: [1e3 * float(np.median([b[j] for b in v if len(b) > j]))
                           for j in range(S)] for k, v in by_pos.items() if v}}
            rows.append(row)
            print(f"{mode}: 1x2 {med['1x2']:.2f} ms, 2x1 {med['2x1']:.2f} ms "
                  f"({row['ratio']:.2f}x), 2x1 module path {med['2x1_modules']:.2f} ms "
                  f"({row['ratio_modules']:.2f}x); dev {acc}", flush=True)
    if rank == 0:
        _write(args.out, {"kind": "paired", "env": _env(), "k": args.k, "batch_global": B,
                          "dropout": args.dropout, "max_train": args.max_train,
                          "block": S, "blocks": args.blocks, "warmup_blocks": args.warmup_blocks,
                          "rows": rows,
                          "command": "mpiexec -n 2 python -m mpi4py "
                                     "benchmarks/bench_distributed.py " + " ".join(sys.argv[1:])})


def cmd_apply(args):
    """Seconds to form + apply the global factored gradient of the MNIST MLP
    (group the gathered pairs, Adam on the touched rows), global batch N x 100."""
    set_num_threads(1)
    X, y = mpdata.mnist()["train"]
    rows = []
    for N in (1, 2, 4, 8, 16, 32, 64):
        B = 100 * N
        model = nn.MLP([784, 500, 500, 10], k=args.k, mode="topk", seed=0)
        opt = build_optimizer("adam", model.parameters())
        loss_fn = nn.SoftmaxCrossEntropy()
        lins = model.linears[:-1]
        rng = np.random.default_rng(0)
        t_apply, t_dense, t_rows, t_fb = [], [], [], []
        for rep in range(args.reps):
            sel = rng.choice(X.shape[0], size=B, replace=False)
            if N == 1:   # one node's own forward + backward (batch 100)
                tf = time.perf_counter()
            loss_fn.forward(model.forward(X[sel]), y[sel])
            model.backward(loss_fn.backward())
            if N == 1:
                t_fb.append(time.perf_counter() - tf)
            wss = [kernels.Workspace() for _ in lins]   # one per layer, as the exchange keeps
            t0 = time.perf_counter()
            for lin, ws in zip(lins, wss):   # what the exchange does with the gathered factors
                idx, val = lin.selection(B)
                lin.W.grad = kernels.sparse_dw_into(lin._x, lin.n_out, idx, val, ws, 1,
                                                    factored=True)
            opt.step()
            t1 = time.perf_counter()
            touched = [lin.W.grad.rows.shape[0] for lin in lins]
            # the same update from formed (rows, values): what the rows exchange applies
            for lin, ws in zip(lins, wss):
                lin.W.grad = kernels.sparse_dw_into(lin._x, lin.n_out,
                                                    *lin.selection(B), ws, 1,
                                                    factored=False)
            t_rows_0 = time.perf_counter()
            opt.step()
            t_rows.append(time.perf_counter() - t_rows_0)
            opt.zero_grad()
            # the dense alternative: Adam over every weight
            for p in opt.params:
                p.grad = np.zeros_like(p.data)
            t2 = time.perf_counter()
            opt.step()
            t_dense.append(time.perf_counter() - t2)
            opt.zero_grad()
            t_apply.append(t1 - t0)
        rows.append({"nodes": N, "batch_global": B,
                     "apply_factored_ms": 1e3 * float(np.median(t_apply[2:])),
                     "apply_rows_ms": 1e3 * float(np.median(t_rows[2:])),
                     "apply_dense_ms": 1e3 * float(np.median(t_dense[2:])),
                     "min_ms": {"apply_factored": 1e3 * min(t_apply[1:]),
                                "apply_rows": 1e3 * min(t_rows[1:]),
                                "apply_dense": 1e3 * min(t_dense[1:])},
                     "load_average": os.getloadavg(),
                     "touched_rows": [int(t) for t in touched]})
        if N == 1:
            rows[-1]["forward_backward_b100_ms"] = 1e3 * float(np.median(t_fb[2:]))
            rows[-1]["min_ms"]["forward_backward_b100"] = 1e3 * min(t_fb[1:])
        print(rows[-1], flush=True)
    _write(args.out, {"kind": "apply", "env": _env(), "k": args.k, "rows": rows,
                      "command": f"python benchmarks/bench_distributed.py apply --reps {args.reps} "
                                 + args.out})


def _write(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def _load(s):
    return s.get("load_average_after", [float("nan")])[0]


def _ratio_lines(steps):
    """2 x 1 (auto exchange) against 1 x 2 (fused), round by round (the runs with
    the same position in the rounds), per meProp mode."""
    out = []
    for mode in sorted({s.get("mode", "topk") for s in steps}):
        out += _ratio_line([s for s in steps if s.get("mode", "topk") == mode], mode)
    return out


def _ratio_line(steps, mode):
    fused = [s["median_step_ms"] for s in steps if s["ranks"] == 1 and s["path"] == "fused"]
    auto = [s["median_step_ms"] for s in steps if s["ranks"] == 2 and s["exchange"] == "auto"]
    n = min(len(fused), len(auto))
    if n == 0:
        return []
    ratios = [a / f for a, f in zip(auto[:n], fused[:n])]
    med = statistics.median
    return ["", f"Mode {mode}: 2 x 1 (auto exchange) / 1 x 2 (fused), per round: "
            f"{', '.join(f'{r:.2f}' for r in ratios)}; median of the rounds' ratios "
            f"{med(ratios):.2f}x; ratio of the medians {med(auto[:n]) / med(fused[:n]):.2f}x "
            f"({med(auto[:n]):.2f} / {med(fused[:n]):.2f} ms)."]


def _exchange_table(rows):
    out = ["| layers | k | batch/rank | exchange | methods | recv bytes | dense bytes | "
           "fewer | MPI calls | median ms |", "|---|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        meth = ", ".join(f"{k} {v}" for k, v in sorted(r["methods"].items()))
        out.append(f"| {r['config']} | {r['k']} | {r['batch_per_rank']} | {r['exchange']} | "
                   f"{meth} | {r['recv_bytes']:,} | {r['dense_allreduce_recv_bytes']:,} | "
                   f"{r['dense_allreduce_recv_bytes'] / r['recv_bytes']:.1f}x | {r['calls']} | "
                   f"{r['median_ms']:.3f} |")
    return out


def _paired_lines(pr):
    out = ["", "## 2 x 1 against 1 x 2 inside one MPI job, in alternating blocks of steps", "",
           f"`{pr['command']}`", "",
           f"Blocks of {pr['block']} steps (global batch {pr['batch_global']} of the first "
           f"{pr['max_train']:,} training examples, k = {pr['k']}, dropout {pr['dropout']}, "
           f"Adam), {pr['blocks']} per variant in rotating order, the first "
           f"{pr['warmup_blocks']} not timed: 1 x 2 = rank 0 runs the fused step on the whole "
           "batch with 2 threads while rank 1 sleeps at a barrier it polls every 20 ms; "
           "2 x 1 = both ranks run the Trainer's data-parallel step "
           "(`Distributed.train_step`, 1 thread each), with each rank's forward and backward "
           "as the fused step's C call (the default) or on the module path. Each step is "
           "timed alone (from the call to its return: forward, backward, exchange, update); "
           "the variants alternate every few tenths of a second, so slow spells of the "
           "shared VM, which last seconds, hit them alike. Each variant trains its own copy "
           "of the model on the same batches; dev accuracy after its steps is in the table "
           "(2 x 1 equals a single process up to float rounding, and the fused and module "
           "paths are bit-identical).", "",
           "| mode | 1 x 2 ms | 2 x 1 ms | 2 x 1 module path ms | 2 x 1 / 1 x 2 | module path / "
           "1 x 2 | quartiles ms (1 x 2; 2 x 1) | steps timed each | dev % (1 x 2 / 2 x 1) | "
           "load avg |", "|---|---:|---:|---:|---:|---:|---|---:|---|---:|"]
    for r in pr["rows"]:
        m, q = r["median_step_ms"], r["quartiles_ms"]
        out.append(f"| {r['mode']} | {m['1x2']:.2f} | {m['2x1']:.2f} | {m['2x1_modules']:.2f} | "
                   f"**{r['ratio']:.2f}x** | {r['ratio_modules']:.2f}x | "
                   f"{q['1x2'][0]:.2f}-{q['1x2'][1]:.2f}; {q['2x1'][0]:.2f}-{q['2x1'][1]:.2f} | "
                   f"{r['steps_timed']} | {r['dev_acc']['1x2']:.2f} / {r['dev_acc']['2x1']:.2f} | "
                   f"{r['load_average'][0]:.1f} |")
    return out


def cmd_report(args):
    d = args.dir
    ex = json.load(open(os.path.join(d, "exchange.json")))
    lines = ["# Data-parallel training over MPI: measurements", "",
             f"Machine: {MACHINE}. MPI: {ex['mpi']}. 2 ranks x 1 thread on one machine "
             "(shared memory transport, not a network).", "",
             "## Bytes and time of one gradient exchange (per rank, per step)", "",
             f"`{ex['command']}`", "",
             "recv = bytes a rank receives (Allgatherv: the other ranks' parts; Allreduce: "
             "2 (N-1)/N of the buffer, as ring algorithms move it); dense = a dense Allreduce "
             "of every gradient. The bytes are exact (they depend on the data and the "
             "shapes only). The milliseconds are not clean timings: this run held only the "
             "shared CPU lock on a machine with a load average of "
             f"{min(r['load_average'][0] for r in ex['rows']):.0f}-"
             f"{max(r['load_average'][0] for r in ex['rows']):.0f} (2 cores).", "",
             ] + _exchange_table(ex["rows"])
    bd = os.path.join(d, "exchange_batch_dw.json")
    if os.path.exists(bd):
        exb = json.load(open(bd))
        lines += ["", "### The default mode, batch_dw", "",
                  f"`{exb['command']}`: the selection is over the global batch, so every "
                  "rank sends its layer input and its B k largest output-gradient entries "
                  "(method `cand`: the candidates among which the global selection lies) "
                  "instead of its own selection.", ""] + _exchange_table(exb["rows"])
    steps = sorted((json.load(open(os.path.join(d, f))) for f in os.listdir(d)
                    if f.startswith("steps_") and f.endswith(".json")),
                   key=lambda s: (s.get("order", 0), s["command"]))
    if steps:
        lines += ["", "## Step time on MNIST, global batch 200, k = 20, dropout 0.2, Adam",
                  "", "One epoch over the first 20,000 training examples (100 steps); median "
                  "over the steps after the first 20 (wall clock between steps, the exchange "
                  "included); dev / test accuracy after those 100 steps (the same for every "
                  "variant). Run order: top to bottom.", "",
                  f"The 1-minute load average after each run was "
                  f"{min(_load(s) for s in steps):.1f}-{max(_load(s) for s in steps):.1f} "
                  "(2 cores; the runs themselves are the load). The variants alternate "
                  "round by round, so a slow spell of the shared VM hits every variant.", "",
                  "| mode | ranks x threads | path | exchange | median ms / step | "
                  "of which exchange | epoch s | dev % | test % at best dev | load avg after | "
                  "command |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for s in steps:
            lines.append(f"| {s.get('mode', 'topk')} | {s['ranks']} x {s['threads']} | {s['path']} | "
                         f"{s['exchange'] or '-'} | {s['median_step_ms']:.2f} | "
                         f"{s['median_exchange_ms']:.2f} | {s['mean_time_epoch_s']:.2f} | "
                         f"{s['best_dev']:.2f} | {s['test_at_best_dev']:.2f} | "
                         f"{s.get('load_average_after', [float('nan')])[0]:.1f} | "
                         f"`{s['command']}` |")
        lines += _ratio_lines(steps)
    for f in sorted(f for f in os.listdir(d) if f.startswith("paired") and f.endswith(".json")):
        lines += _paired_lines(json.load(open(os.path.join(d, f))))
    ap = os.path.join(d, "apply.json")
    if os.path.exists(ap):
        a = json.load(open(ap))
        lines += ["", "## Forming and applying the global gradient after the exchange", "",
                  f"`{a['command']}` (1 thread; group the gathered pairs and Adam on the touched "
                  "rows, against Adam over every weight)", "",
                  "| nodes | global batch | factored (group + Adam) ms | Adam on formed rows ms | "
                  "dense Adam ms | touched rows (W0, W1) |", "|---:|---:|---:|---:|---:|---|"]
        for r in a["rows"]:
            lines.append(f"| {r['nodes']} | {r['batch_global']} | {r['apply_factored_ms']:.3f} | "
                         f"{r['apply_rows_ms']:.3f} | {r['apply_dense_ms']:.3f} | "
                         f"{r['touched_rows']} |")
        lines += ["", f"One node's forward + backward at batch 100 (1 thread): "
                  f"{a['rows'][0]['forward_backward_b100_ms']:.3f} ms."]
    with open(os.path.join(d, "distributed.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("exchange")
    p.add_argument("out")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--mode", default="topk", choices=("topk", "topk_dw", "batch_dw"),
                   help="the meProp mode of the hidden layers (batch_dw, the library's "
                        "default, exchanges (x, dy): docs in meprop_cpu.distributed)")
    p = sub.add_parser("steps")
    p.add_argument("out")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--distributed", action="store_true")
    p.add_argument("--exchange", default="auto")
    p.add_argument("--no-fused", action="store_true")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--order", type=int, default=0, help="row order in the report")
    p.add_argument("--mode", default="topk", choices=("topk", "topk_dw", "batch_dw"),
                   help="the hidden layers' meProp mode (topk: the earlier runs' setting)")
    p.add_argument("--max-train", type=int, default=None, help="train on the first N examples")
    p = sub.add_parser("paired")
    p.add_argument("out")
    p.add_argument("--blocks", type=int, default=60, help="blocks per variant")
    p.add_argument("--block", type=int, default=10, help="steps per block")
    p.add_argument("--warmup-blocks", type=int, default=3)
    p.add_argument("--modes", default="topk,batch_dw")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--max-train", type=int, default=20000)
    p = sub.add_parser("apply")
    p.add_argument("out")
    p.add_argument("--reps", type=int, default=12)
    p.add_argument("--k", type=int, default=20)
    p = sub.add_parser("report")
    p.add_argument("dir")
    args = ap.parse_args()
    {"exchange": cmd_exchange, "steps": cmd_steps, "paired": cmd_paired, "apply": cmd_apply,
     "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
