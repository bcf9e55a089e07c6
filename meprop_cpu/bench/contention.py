"""``meprop-cpu bench --contention``: training speed while other processes
compete for the cores.

One training configuration - the MNIST MLP 784-500-500-10, Adam (lr 1e-3),
batch 10, dropout 0.2: meProp top-k (k = 20) and this library's dense
backprop, and the same MLP in PyTorch - is timed at 1 thread, at all CPUs and
(this library) at the default thread choice, first on a quiet machine, then
while ``--load-procs`` child processes busy-loop on the CPUs. The children
are started and stopped by this process: each busy-loops for at most a fixed
time, exits as soon as its parent is gone, and is terminated (then killed)
when the measurement ends, fails or is interrupted (Ctrl-C).

Each cell is a fresh model trained from the same initial weights for
``--epochs`` epochs over the first ``--max-train`` training images; the time
is the median epoch time (evaluation excluded) over the cell's epochs and
repeats, beside the dev accuracy reached. The order of the cells rotates from
repeat to repeat. A PyTorch run that exceeds ``--torch-cap`` seconds is
stopped and its epoch time extrapolated from the steps it finished (marked).
This library's final weights are hashed: every thread setting, with and
without load, must end with the same bits.

Output: ``<out>/<name>.json`` (schema :data:`SCHEMA`) and ``<name>.md``.
"""
import hashlib
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from .end_to_end import _torch_accuracy, _torch_adam, _torch_mlp_like_ours
from .environment import CpuMonitor, _import_torch, machine_info
from .profiles import _nproc
from .report import _atomic_write, _default_out

__all__ = ["SCHEMA", "CompetingLoad", "run_contention", "render_markdown", "contention_cli"]

SCHEMA = "meprop_cpu.bench.contention/1"
_PC = time.perf_counter

# The competing process: busy-loops until its deadline, checking every ~10 ms
# that its parent still lives (exits when it is gone).
_BUSY = ("import os, sys, time\n"
         "end = time.monotonic() + float(sys.argv[1]); parent = int(sys.argv[2])\n"
         "while time.monotonic() < end and os.getppid() == parent:\n"
         "    for _ in range(20000):\n"
         "        pass\n")


class CompetingLoad:
    """``n`` child processes that each keep a CPU busy for at most ``seconds``.

    A context manager: entering starts them, leaving (normally, on an error
    or on KeyboardInterrupt) terminates and reaps them. ``n = 0`` does nothing.
    """

    def __init__(self, n, seconds):
        if n < 0:
            raise ValueError(f"CompetingLoad: n must be >= 0, got {n}")
        if not seconds > 0:
            raise ValueError(f"CompetingLoad: seconds must be > 0, got {seconds}")
        self.n, self.seconds = int(n), float(seconds)
        self.procs = []

    def start(self):
        for _ in range(self.n):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-c", _BUSY, repr(self.seconds), str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return self

    def running(self):
        """How many of the children are still running."""
        return sum(p.poll() is None for p in self.procs)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def _weights_hash(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _meprop_cell(mode, data, batch, epochs, threads, seed):
    """Train this library's MLP; threads: an int, or "default" (leave the
    thread choice as it is: automatic unless the user fixed it)."""
    from .. import _config
    from ..nn import MLP
    from ..train import Trainer, build_optimizer
    saved = dict(_config._state)
    try:
        if threads != "default":
            _config.set_num_threads(int(threads))
        model = MLP([784, 500, 500, 10], k=20 if mode == "topk" else None, mode=mode,
                    dropout=0.2, seed=seed)
        opt = build_optimizer("adam", model.parameters(), lr=1e-3, sparse=True)
        tr = Trainer(model, opt, data, batch_size=batch, epochs=epochs, seed=seed,
                     progress=False)
        tr.fit()
    finally:
        _config._state.update(saved)
    ends = [r for r in tr.history if r["event"] == "epoch"]
    out = {"epoch_s": [r["time_epoch"] for r in ends], "dev_acc": ends[-1]["dev_acc"],
           "steps": tr.global_step, "capped": False, "step_path": tr.step_path,
           "weights": _weights_hash([p.data for p in model.parameters()])}
    if tr.thread_tuner is not None:
        out["thread_tuner"] = tr.thread_tuner.state()
    return out


def _torch_cell(torch, data, batch, epochs, threads, seed, cap):
    """The same MLP in PyTorch (weights copied from this library's MLP(seed)),
    stopped after ``cap`` seconds of training (then the epoch time is
    extrapolated from the steps done)."""
    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        model = _torch_mlp_like_ours(torch, [784, 500, 500, 10], 0.2, seed)
        opt = _torch_adam(torch, model.parameters())
        loss_fn = torch.nn.CrossEntropyLoss()
        X, y = data["train"]
        yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
        n = X.shape[0]
        spe = -(-n // batch)
        rng = np.random.default_rng(seed)
        epoch_s, steps, capped, spent = [], 0, False, 0.0
        model.train()
        for _ in range(epochs):
            perm = rng.permutation(n)
            t0 = _PC()
            done = 0
            for s in range(spe):
                idx = perm[s * batch:(s + 1) * batch]
                loss = loss_fn(model(torch.from_numpy(X[idx])), yt[idx])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                done += 1
                if spent + _PC() - t0 > cap:
                    capped = True
                    break
            dt = _PC() - t0
            spent += dt
            steps += done
            epoch_s.append(dt * spe / done)
            if capped:
                break
        dev = _torch_accuracy(torch, model, *data["dev"])
    finally:
        torch.set_num_threads(old)
    return {"epoch_s": epoch_s, "dev_acc": dev, "steps": steps, "capped": capped,
            "step_path": None, "weights": None}


def _cells(nproc, torch_mod, modes):
    cells = []
    for mode in modes:
        for t in sorted({1, nproc}) + ["default"]:
            cells.append({"impl": "meprop_cpu", "mode": mode, "threads": t})
    if torch_mod is not None:
        for t in sorted({1, nproc}):
            cells.append({"impl": "torch", "mode": "dense", "threads": t})
    return cells


def _label(c):
    name = "meProp k=20" if c["mode"] == "topk" else "dense"
    return (f"{'meprop_cpu' if c['impl'] == 'meprop_cpu' else 'PyTorch'} {name}, "
            f"threads {c['threads']}")


def run_contention(data, load_procs=1, epochs=2, repeats=2, batch=10, torch_mod=None,
                   torch_cap=20.0, modes=("topk", "dense"), seed=0, nproc=None, log=print):
    """Measure every cell quiet, then under ``load_procs`` busy children.
    Returns a list of {"load", "cell", "runs": [...], "other_share": [...]}."""
    nproc = _nproc() if nproc is None else nproc
    cells = _cells(nproc, torch_mod, modes)
    warm = {k: v for k, v in data.items()}
    X, y = data["train"]
    warm["train"] = (X[:500], y[:500])
    out = []
    for load in (0, load_procs):
        # a bound on how long the children may live: generous, never unbounded
        budget = 60.0 + len(cells) * repeats * (epochs * 10.0 + torch_cap)
        with CompetingLoad(load, budget) as cl:
            if load:
                time.sleep(0.5)   # let the children get going
            log(f"{'quiet' if not load else f'{load} competing process(es)'}: "
                f"{len(cells)} cells x {repeats} repeats")
            for mode in modes:    # untimed warm-up of each path
                _meprop_cell(mode, warm, batch, 1, "default", seed)
            if torch_mod is not None:
                _torch_cell(torch_mod, warm, batch, 1, nproc, seed, torch_cap)
            recs = [{"load": load, "cell": c, "runs": [], "other_share": []} for c in cells]
            for rep in range(repeats):
                s = rep % len(cells)
                for i in list(range(s, len(cells))) + list(range(s)):
                    c = cells[i]
                    if load and cl.running() < load:
                        raise RuntimeError("a competing process ended early; rerun with a "
                                           "longer budget")
                    mon = CpuMonitor().start()
                    if c["impl"] == "torch":
                        r = _torch_cell(torch_mod, data, batch, epochs, c["threads"], seed,
                                        torch_cap)
                    else:
                        r = _meprop_cell(c["mode"], data, batch, epochs, c["threads"], seed)
                    cpu = mon.stop()
                    recs[i]["runs"].append(r)
                    recs[i]["other_share"].append(cpu["other_share"])
                    log(f"  load {load}  {_label(c):38s} "
                        f"{statistics.median(r['epoch_s']):7.3f} s/epoch  dev "
                        f"{r['dev_acc']:.2f}" + ("  (capped)" if r["capped"] else "")
                        + (f"  tuner {r['thread_tuner']}" if r.get("thread_tuner") else ""))
            out += recs
    for r in out:
        ts = [t for run in r["runs"] for t in run["epoch_s"]]
        r["median_epoch_s"] = float(statistics.median(ts))
        r["dev_acc"] = r["runs"][0]["dev_acc"]
        r["capped"] = any(run["capped"] for run in r["runs"])
    return out


def summary(results):
    """Per (impl, mode, load): the default setting's time over the best fixed
    count's, and whether this library's weights were identical everywhere."""
    rows = []
    keys = []
    for r in results:
        k = (r["cell"]["impl"], r["cell"]["mode"], r["load"])
        if k not in keys:
            keys.append(k)
    for impl, mode, load in keys:
        rs = {r["cell"]["threads"]: r for r in results
              if (r["cell"]["impl"], r["cell"]["mode"], r["load"]) == (impl, mode, load)}
        fixed = {t: r["median_epoch_s"] for t, r in rs.items() if t != "default"}
        best_t = min(fixed, key=fixed.get)
        default_t = "default" if "default" in rs else max(fixed)   # PyTorch: all CPUs
        rows.append({"impl": impl, "mode": mode, "load": load,
                     "times": {str(t): r["median_epoch_s"] for t, r in rs.items()},
                     "best_fixed": best_t,
                     "default_over_best": rs[default_t]["median_epoch_s"] / fixed[best_t]})
    hashes = {}
    for r in results:
        if r["cell"]["impl"] == "meprop_cpu":
            for run in r["runs"]:
                hashes.setdefault(r["cell"]["mode"], set()).add(run["weights"])
    identical = {m: len(h) == 1 for m, h in hashes.items()}
    return {"rows": rows, "weights_identical": identical}


def _f(v):
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def render_markdown(doc):
    m = doc["machine"]
    cfg = doc["config"]
    n = m["nproc"]
    lines = [f"# Training under CPU contention ({m['date']})", "",
             f"Command: `{m['command']}`", "",
             f"Machine: {m['cpu_model']}, {n} CPUs (a shared VM: other users' jobs may run "
             f"too; the load average at the start was {m['loadavg']}), numpy "
             f"{m['numpy']}, torch {(m.get('torch') or {}).get('version', 'not measured')}, "
             f"meprop_cpu {m['meprop_cpu']['version']} (SIMD {m['simd']}).",
             f"OpenMP wait policy in force: {m['meprop_cpu'].get('omp_wait_policy')}; thread "
             f"choice: {m['meprop_cpu'].get('thread_choice')}.", "",
             f"MNIST 784-500-500-10, Adam lr 1e-3, batch {cfg['batch']}, dropout 0.2, first "
             f"{cfg['max_train']} training images, {cfg['epochs']} epoch(s) per run, "
             f"{cfg['repeats']} runs per cell in rotated order; seconds per epoch (median of "
             f"the cell's epochs, evaluation excluded) and dev accuracy after the last epoch. "
             f"Load: {cfg['load_procs']} child process(es) busy-looping during the loaded "
             f"half. 'default' is this library with no thread setting (the Trainer "
             f"chooses the count from measured step times); PyTorch's default is {n} "
             f"threads. 'other CPU' is the share of the machine's CPU time that other "
             f"processes took during the cell (0.5 = one of two CPUs).", "",
             "| run | load | s/epoch | dev % | other CPU |", "|---|---:|---:|---:|---:|"]
    for r in doc["results"]:
        sh = [s for s in r["other_share"] if s is not None]
        lines.append(f"| {_label(r['cell'])} | {r['load']} | {_f(r['median_epoch_s'])}"
                     f"{' (capped)' if r['capped'] else ''} | {r['dev_acc']:.2f} | "
                     f"{(max(sh) if sh else float('nan')):.2f} |")
    s = doc["summary"]
    lines += ["", "Default thread setting against the fastest fixed count (1 or "
              f"{n}) in the same conditions:", "",
              "| implementation | load | s/epoch at 1 / " f"{n} / default | "
              "default / best |", "|---|---:|---|---:|"]
    for row in s["rows"]:
        t = row["times"]
        lines.append(f"| {row['impl']} {row['mode']} | {row['load']} | "
                     f"{_f(t.get('1'))} / {_f(t.get(str(n)))} / {_f(t.get('default'))} | "
                     f"{row['default_over_best']:.2f}x |")
    lines += ["", "This library's final weights, every thread setting with and without load: "
              + ", ".join(f"{m_}: {'bit-identical' if ok else 'DIFFERENT'}"
                          for m_, ok in s["weights_identical"].items()) + "."]
    if doc.get("notes"):
        lines += [""] + [f"- {x}" for x in doc["notes"]]
    return "\n".join(lines) + "\n"


def contention_cli(args, set_before_numpy=False, log=print):
    """``meprop-cpu bench --contention`` after option parsing (see driver.run_cli)."""
    import json
    from .. import data as datasets
    outdir = args.out or _default_out()
    name = args.name or "contention"
    if os.sep in name or name.startswith(".") or not name:
        print(f"bench: error: --name must be a plain file name, got {name!r}", file=sys.stderr)
        return 2
    torch_mod = _import_torch(not args.no_torch)
    notes = []
    if torch_mod is None:
        notes.append("PyTorch skipped (" + ("--no-torch" if args.no_torch
                                             else "torch is not importable") + ")")
    nproc = _nproc()
    if nproc < 2:
        notes.append("one usable CPU: 1 thread and all CPUs are the same setting")
    cfg = {"batch": 10, "epochs": args.epochs or 2, "repeats": args.repeats or 2,
           "max_train": args.max_train or 5000, "load_procs": args.load_procs,
           "torch_cap_s": args.torch_cap, "seed": 0}
    machine = machine_info(torch_mod, set_before_numpy=set_before_numpy)
    data = datasets.mnist()
    X, y = data["train"]
    n = cfg["max_train"]
    data = dict(data, train=(np.ascontiguousarray(X[:n]), np.ascontiguousarray(y[:n])))
    log(f"meprop-cpu bench --contention: {nproc} CPUs, {cfg['load_procs']} competing "
        f"process(es), {n} images, {cfg['epochs']} epoch(s) x {cfg['repeats']} runs per cell")
    t0 = _PC()
    results = run_contention(data, cfg["load_procs"], cfg["epochs"], cfg["repeats"],
                             cfg["batch"], torch_mod, cfg["torch_cap_s"], log=log)
    cfg["wall_s"] = _PC() - t0
    doc = {"schema": SCHEMA, "name": name, "config": cfg, "machine": machine,
           "results": results, "summary": summary(results), "notes": notes}
    os.makedirs(outdir, exist_ok=True)
    jp, mp_ = os.path.join(outdir, name + ".json"), os.path.join(outdir, name + ".md")
    _atomic_write(jp, json.dumps(doc, indent=1) + "\n")
    _atomic_write(mp_, render_markdown(doc))
    for row in doc["summary"]["rows"]:
        log(f"{row['impl']} {row['mode']} load {row['load']}: default / best fixed = "
            f"{row['default_over_best']:.2f}x")
    log(f"weights identical across settings: {doc['summary']['weights_identical']}")
    log(f"wrote {jp}, {mp_}")
    return 0
