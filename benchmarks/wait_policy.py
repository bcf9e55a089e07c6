"""How the OpenMP wait policy and the thread choice behave quiet and under load.

The OpenMP runtime reads its wait policy when it loads, so every variant runs
in a fresh process with its own environment:

  libgomp default   GOMP_SPINCOUNT=300000 (what libgomp does when nothing is
                    set: spin ~300,000 times before sleeping; this library's
                    behaviour before 0.3)
  passive           OMP_WAIT_POLICY=passive (sleep at once; the library's default)
  spin 10k / 1k     GOMP_SPINCOUNT=10000 / 1000

each with the thread count fixed (OMP_NUM_THREADS=1 / 2) or automatic (no
OMP_NUM_THREADS: the Trainer picks it from measured step times).

  python benchmarks/wait_policy.py contention   # 5000 images, batch 10, quiet and 1 busy process
  python benchmarks/wait_policy.py quiet        # full MNIST epochs (batch 10, 100) and one
                                                # layer's backward (100, 784, 500), quiet

Writes benchmarks/results/wait_policy_<part>.json and .md. Run it alone on the
machine (e.g. under `flock -x /tmp/meprop-cpu.lock`): it times things.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
POLICIES = {"libgomp default": {"GOMP_SPINCOUNT": "300000"},
            "passive": {"OMP_WAIT_POLICY": "passive"},
            "spin 10k": {"GOMP_SPINCOUNT": "10000"},
            "spin 1k": {"GOMP_SPINCOUNT": "1000"}}


def worker(spec):
    """In the child: train / time as spec says, print one JSON line."""
    import numpy as np
    import meprop_cpu as mp
    import meprop_cpu.nn
    from meprop_cpu import data as mpdata
    from meprop_cpu.bench.contention import _meprop_cell
    out = {"policy": mp.show_config()["omp_wait_policy"],
           "thread_choice": mp.show_config()["thread_choice"],
           "num_threads": mp.get_num_threads()}
    if spec["what"] == "train":
        d = mpdata.mnist()
        X, y = d["train"]
        n = spec["max_train"] or X.shape[0]
        d = dict(d, train=(np.ascontiguousarray(X[:n]), np.ascontiguousarray(y[:n])))
        warm = dict(d, train=(X[:500], y[:500]))
        _meprop_cell(spec["mode"], warm, spec["batch"], 1, "default", 0)
        out.update(_meprop_cell(spec["mode"], d, spec["batch"], spec["epochs"], "default", 0))
    else:   # one layer's backward, meProp top-k (per example) at (B, n_in, n_out)
        B, n_in, n_out = spec["shape"]
        lin = mp.nn.Linear(n_in, n_out, k=spec["k"], mode="topk", seed=0)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((B, n_in), dtype=np.float32)
        dy = rng.standard_normal((B, n_out), dtype=np.float32)
        lin.forward(x)
        for _ in range(50):
            lin.backward(dy)
        ts = []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            lin.backward(dy)
            ts.append(time.perf_counter() - t0)
        out.update({"call_s": statistics.median(ts), "epoch_s": [statistics.median(ts)]})
    print(json.dumps(out))


def run_child(spec, env_extra, threads):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMP_", "GOMP_", "KMP_"))}
    env.update(env_extra)
    env["OPENBLAS_THREAD_TIMEOUT"] = "4"
    if threads != "auto":
        env["OMP_NUM_THREADS"] = str(threads)
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                       env=env, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"worker failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure(variants, specs, repeats, load, log):
    """variants: [(label, env, threads)]; specs: [(name, spec)]. Rotated order."""
    from meprop_cpu.bench.contention import CompetingLoad
    from meprop_cpu.bench import CpuMonitor
    res = {}
    cells = [(v, s) for s in specs for v in variants]
    with CompetingLoad(load, 1200.0) as cl:
        for rep in range(repeats):
            k = rep % len(cells)
            for (label, env, threads), (sname, spec) in cells[k:] + cells[:k]:
                mon = CpuMonitor().start()
                r = run_child(spec, env, threads)
                share = mon.stop()["other_share"]
                if load and cl.running() < load:
                    raise RuntimeError("a competing process ended early")
                key = f"{sname} | {label} | threads {threads}"
                e = res.setdefault(key, {"spec": sname, "policy": label, "threads": threads,
                                         "load": load, "times": [], "other_share": [],
                                         "dev_acc": r.get("dev_acc"), "weights": set(),
                                         "in_force": r["policy"], "tuner": []})
                e["times"] += r["epoch_s"]
                e["other_share"].append(share)
                if r.get("weights"):
                    e["weights"].add(r["weights"])
                if r.get("thread_tuner"):
                    e["tuner"].append(r["thread_tuner"])
                log(f"  load {load} {key}: {statistics.median(r['epoch_s']):.4f} s"
                    + (f" tuner {r['thread_tuner']}" if r.get("thread_tuner") else ""))
    for e in res.values():
        e["median_s"] = statistics.median(e["times"])
        e["weights"] = sorted(e["weights"])
    return list(res.values())


def _acc(v):
    return "" if v is None else f"{v:.2f}"


def render(doc):
    lines = [f"# OpenMP wait policy and thread choice: {doc['part']} ({doc['date']})", "",
             f"Command: `{doc['command']}`", "",
             f"Machine: {doc['machine']} (a shared 2-core VM; other users' jobs may run too).",
             "", doc["what"], "",
             "| measurement | policy | threads | load | median s | all s | dev % | other CPU |",
             "|---|---|---|---:|---:|---|---:|---:|"]
    for e in doc["results"]:
        sh = [s for s in e["other_share"] if s is not None]
        lines.append(f"| {e['spec']} | {e['policy']} | {e['threads']} | {e['load']} | "
                     f"{e['median_s']:.4g} | {', '.join(f'{t:.4g}' for t in e['times'])} | "
                     f"{_acc(e['dev_acc'])} | {max(sh) if sh else float('nan'):.2f} |")
    lines += ["", "Final-weight hashes per measurement (identical = bit-identical training): "
              + "; ".join(f"{s}: {len(h)} distinct" for s, h in doc["hashes"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", nargs="?", choices=["contention", "quiet"])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    a = ap.parse_args(argv)
    if a.worker:
        return worker(json.loads(a.worker))
    log = lambda s: print(s, flush=True)   # noqa: E731
    t0 = time.time()
    if a.part == "contention":
        spec = {"what": "train", "mode": "topk", "batch": 10, "epochs": 2, "max_train": 5000}
        variants = [(p, env, t) for p, env in POLICIES.items() for t in (1, 2, "auto")]
        results = []
        for load in (0, 1):
            results += measure(variants, [("batch 10 k=20 dropout 0.2, 5000 images, "
                                           "s/epoch", spec)], a.repeats, load, log)
        what = ("meProp k=20, dropout 0.2, MNIST MLP 784-500-500-10, Adam, batch 10, first "
                "5000 images, 2 epochs per run (after a 50-step warm-up run); seconds per "
                "epoch. load 1: one child process busy-looping for the whole half.")
    else:
        variants = [("libgomp default", POLICIES["libgomp default"], 2),
                    ("passive", POLICIES["passive"], "auto"),
                    ("passive", POLICIES["passive"], 2),
                    ("spin 10k", POLICIES["spin 10k"], "auto")]
        specs = [("MNIST epoch, batch 10, k=20 dropout 0.2, s",
                  {"what": "train", "mode": "topk", "batch": 10, "epochs": 1,
                   "max_train": None}),
                 ("MNIST epoch, batch 100, k=20 dropout 0.2, s",
                  {"what": "train", "mode": "topk", "batch": 100, "epochs": 1,
                   "max_train": None}),
                 ("layer backward (100, 784, 500) k=20, s/call",
                  {"what": "layer", "shape": [100, 784, 500], "k": 20, "repeats": 400})]
        results = measure(variants, specs, a.repeats, 0, log)
        what = ("Quiet machine. 'libgomp default' with 2 threads is this library before "
                "0.3 (libgomp's spin-then-sleep, all CPUs); 'passive, auto' is its default "
                "now. MNIST epochs: the full 60,000 training images, 1 epoch per run (after "
                "a 50-step warm-up run). Layer: median of 400 calls of Linear.backward after "
                "50 warm-up calls.")
    hashes = {}
    for e in results:
        hashes.setdefault(e["spec"], set()).update(e["weights"])
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                     "?")
    doc = {"part": a.part, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)),
           "command": "python benchmarks/wait_policy.py " + " ".join(argv or sys.argv[1:]),
           "machine": f"{model}, {os.cpu_count()} CPUs", "what": what,
           "wall_s": time.time() - t0, "results": results,
           "hashes": {s: sorted(h) for s, h in hashes.items()}}
    os.makedirs(a.out, exist_ok=True)
    base = os.path.join(a.out, f"wait_policy_{a.part}")
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(render(doc))
    log(f"wrote {base}.json, {base}.md ({doc['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
