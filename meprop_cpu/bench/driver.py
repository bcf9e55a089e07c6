"""The ``meprop-cpu bench`` command: its options (:func:`add_arguments`,
:func:`add_parser`), the relaunch that puts ``OPENBLAS_THREAD_TIMEOUT`` in
effect, and the run of a profile from measurement to the written results
(:func:`run_cli`, :func:`main`); ``--tta`` and ``--contention`` hand over to
:mod:`.tta` and :mod:`.contention`."""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

from .._options import _nonneg_float, _nonneg_int, _positive_int as _pos_int
from .end_to_end import mesimp_available, run_e2e
from .environment import (BUSY_SHARE, ENV_COMMAND, ENV_RELAUNCHED, ENV_TIMEOUT, Settler,
                          _import_torch, command_line, _loadavg, _share, _threadpoolctl,
                          default_thread_controls, machine_info, needs_relaunch,
                          wait_for_quiet)
from .layers import run_layer
from .plots import make_plots
from .profiles import SEED, PAPER, _nproc, profile
from .report import (SCHEMA, _atomic_write, _default_out, _headline_lines, _load_json,
                     render_markdown, render_readme)
from .timing import _PC


def build_doc(name, cfg, machine, layer, e2e, load, notes):
    """The JSON document (schema SCHEMA)."""
    return {"schema": SCHEMA, "name": name, "config": cfg, "machine": machine, "load": load,
            "notes": list(notes), "paper": PAPER, "layer": layer, "e2e": e2e}


def write_outputs(doc, outdir, plots=True):
    """Write <name>.json, the plots, <name>.md and README.md; returns the paths."""
    os.makedirs(outdir, exist_ok=True)
    base = os.path.join(outdir, doc["name"])
    _atomic_write(base + ".json", json.dumps(doc, indent=1, default=str) + "\n")
    pngs = make_plots(doc, outdir, doc["name"], results_dir=outdir) if plots else []
    _atomic_write(base + ".md", render_markdown(doc, pngs))
    readme = os.path.join(outdir, "README.md")
    _atomic_write(readme, render_readme(outdir))
    return [base + ".json", base + ".md"] + pngs + [readme]


def _threads_list(text):
    try:
        ts = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated thread counts like 1,2, got {text!r}") from None
    if not ts or ts[0] < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return ts


def _seeds(text):
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(x < 0 for x in seeds):
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds >= 0, got {text!r}")
    return seeds


def add_arguments(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="profile", action="store_const", const="quick",
                   help="a subset (k 20,40,80; 3 shapes; threads 1 and all; 1 epoch): "
                        "< 10 min on 2 cores (the default)")
    g.add_argument("--full", dest="profile", action="store_const", const="full",
                   help="every k (5..160), shape and thread count; 3 epochs end to end")
    g.add_argument("--mesimp", dest="profile", action="store_const", const="mesimp",
                   help="whole trainings only: 20 epochs at batch 100 on all threads, PyTorch "
                        "dense vs this project's dense and meSimp k=160 (prune 0.1 and 0.03), "
                        "each run 3 times in rotated order (~3 min on 2 cores)")
    g.add_argument("--tta", metavar="PROFILE", default=None,
                   choices=("quick", "full", "batch100", "fashion"),
                   help="time to accuracy instead: dev accuracy against training seconds for "
                        "PyTorch, this library's dense, default meProp, the paper's meProp "
                        "(with and without dropout) and unified, 3 seeds; quick: MNIST batch 10, "
                        "8 epochs (~12 min on 2 cores); full: 20 epochs; batch100: batch 100 "
                        "with meSimp; fashion: Fashion-MNIST (see meprop_cpu.bench.tta)")
    g.add_argument("--parse", action="store_true",
                   help="the dependency-parser benchmark instead (Turkish Web Treebank, this "
                        "library vs PyTorch); it has its own options, so --parse must come "
                        "first: meprop-cpu bench --parse --help")
    g.add_argument("--pos", action="store_true",
                   help="the LSTM POS-tagger benchmark instead (CoNLL-2003, this library vs "
                        "PyTorch); its own options, --pos first: meprop-cpu bench --pos --help")
    g.add_argument("--contention", dest="profile", action="store_const", const="contention",
                   help="MNIST training (batch 10, meProp k=20 and dense, dropout 0.2; PyTorch) "
                        "at 1 thread, all threads and the default, quiet and while child "
                        "processes busy-loop on the CPUs (--load-procs); ~3 min on 2 cores")
    p.add_argument("--load-procs", type=_nonneg_int, default=1, metavar="N",
                   help="--contention: competing busy processes (default 1)")
    p.add_argument("--torch-cap", type=_nonneg_float, default=20.0, metavar="S",
                   help="--contention: stop a PyTorch run after S seconds and extrapolate its "
                        "epoch time (default 20)")
    p.set_defaults(profile="quick")
    p.add_argument("--seeds", type=_seeds, default=None, metavar="S,S",
                   help="--tta: the seeds (default 1,2,3)")
    p.add_argument("--threads", type=_threads_list, default=None, metavar="T,T",
                   help="thread counts for the layer sweep (default: profile); end to end "
                        "runs at the smallest and largest (quick) or at each (full)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="results directory (default benchmarks/results in a checkout, else "
                        "./meprop_bench_results)")
    p.add_argument("--name", default=None,
                   help="base name of the output files (default bench_<profile>)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch variants")
    p.add_argument("--skip-layer", action="store_true", help="skip the layer-level sweep")
    p.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end training")
    p.add_argument("--epochs", type=_pos_int, default=None,
                   help="end-to-end epochs (default: quick 1, full 3)")
    p.add_argument("--max-train", type=_pos_int, default=None, metavar="N",
                   help="train end to end on the first N training images only")
    p.add_argument("--repeats", type=_pos_int, default=None,
                   help="timed calls per layer-level timing (default: quick 15, full 21)")
    p.add_argument("--warmup", type=_pos_int, default=None, help="warm-up rounds (default 3)")
    p.add_argument("--load-threshold", type=_nonneg_float, default=0.5, metavar="L",
                   help="wait until the 1-minute load average is below L (default 0.5)")
    p.add_argument("--max-wait", type=_nonneg_float, default=300.0, metavar="S",
                   help="wait at most S seconds for that (default 300; 0: do not wait)")
    p.add_argument("--settle", type=_nonneg_float, default=10.0, metavar="S",
                   help="before each measurement wait up to S seconds for a 1-second window "
                        "in which other processes use < 5%% of the CPUs (default 10; 0: off)")
    p.add_argument("--settle-budget", type=_nonneg_float, default=120.0, metavar="S",
                   help="at most S seconds of such waiting in all (default 120)")
    p.add_argument("--retries", type=_nonneg_int, default=1, metavar="N",
                   help="measure a layer group or training run again, up to N times, when "
                        "other processes used >= 5%% of the CPUs meanwhile; the quietest "
                        "attempt is kept (default 1)")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: regenerate README.md (and the plots and .md of "
                        "every harness JSON) in the results directory")
    p.add_argument("--no-relaunch", action="store_true",
                   help="do not restart the process to put OPENBLAS_THREAD_TIMEOUT in effect")
    p.add_argument("--flush-denormal", action="store_true",
                   help="run the whole process with subnormal floats flushed to zero "
                        "(torch.set_flush_denormal(True) before any thread starts; needs "
                        "torch). This library's update kernels flush them anyway; PyTorch's "
                        "default mode keeps them, and its Adam then slows as moments decay")
    return p


def add_parser(subparsers):
    """The ``meprop-cpu bench`` subcommand (see cli.SUBCOMMANDS)."""
    p = subparsers.add_parser(
        "bench", help="benchmark meProp against dense backprop (numpy, PyTorch)",
        description="Benchmark a linear layer (forward, backward, training step) and MNIST "
                    "MLP training end to end: meProp top-k / unified vs this project's dense "
                    "path, numpy and PyTorch, with the same thread count for every variant. "
                    "Writes JSON, markdown and (with matplotlib) PNG plots.")
    add_arguments(p)
    p.set_defaults(func=run_cli)
    return p


def _argv_from_args(parser, args):
    """The command-line options that reproduce ``args`` (for the relaunch)."""
    out = []
    for a in parser._actions:
        if not a.option_strings or a.dest == "help":
            continue
        v = getattr(args, a.dest, a.default)
        opt = max(a.option_strings, key=len)
        if isinstance(a, argparse._StoreConstAction):     # also store_true
            if v == a.const and v != a.default:
                out.append(opt)
        elif v is None or v == a.default or v is False:
            continue
        elif isinstance(v, list):
            out += [opt, ",".join(map(str, v))]
        else:
            out += [opt, str(v)]
    return out


def report_only(outdir, plots=True, log=print):
    """Regenerate the .md (and plots) of every harness JSON in ``outdir`` and README.md."""
    for n in sorted(os.listdir(outdir)):
        if not n.endswith(".json"):
            continue
        d = _load_json(os.path.join(outdir, n))
        if isinstance(d, dict) and d.get("schema") == SCHEMA:
            pngs = make_plots(d, outdir, d["name"], results_dir=outdir) if plots else []
            _atomic_write(os.path.join(outdir, d["name"] + ".md"), render_markdown(d, pngs))
            log(f"regenerated {d['name']}.md" + (f" and {len(pngs)} plot(s)" if pngs else ""))
    _atomic_write(os.path.join(outdir, "README.md"), render_readme(outdir))
    log(f"wrote {os.path.join(outdir, 'README.md')}")
    return 0


#: The benchmarks with options of their own: ``bench --parse ...`` hands the rest of
#: the command line to the module's main().
HANDOVER = {"--parse": "parse", "--pos": "pos"}


def handover(argv):
    """If ``argv`` (the arguments after ``bench``) starts with a HANDOVER option, run
    that benchmark on the rest and return its exit code; else None."""
    if not argv or argv[0] not in HANDOVER:
        return None
    import importlib
    mod = importlib.import_module(f"{__package__}.{HANDOVER[argv[0]]}")
    try:
        return int(mod.main(list(argv[1:])) or 0)
    except SystemExit as e:   # --help, or a usage error argparse reported
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


def run_cli(args, parser=None, set_before_numpy=False, log=print):
    """Run the benchmark described by parsed ``args``; returns the exit code."""
    if getattr(args, "parse", False) or getattr(args, "pos", False):
        opt = "--parse" if args.parse else "--pos"
        print(f"bench: error: {opt} takes its own options, so it must come first "
              f"(meprop-cpu bench {opt} --help)", file=sys.stderr)
        return 2
    outdir = args.out or _default_out()
    if args.report_only:
        if not os.path.isdir(outdir):
            print(f"bench: error: results directory {outdir} does not exist", file=sys.stderr)
            return 1
        return report_only(outdir, plots=not args.no_plots, log=log)
    if (parser is not None and not args.no_relaunch
            and needs_relaunch(set_before_numpy=set_before_numpy)):
        env = dict(os.environ)
        env[ENV_TIMEOUT] = env.get(ENV_TIMEOUT, "4")
        env[ENV_RELAUNCHED] = "1"
        env[ENV_COMMAND] = command_line()
        cmd = [sys.executable, "-m", "meprop_cpu", "bench"] + _argv_from_args(parser, args)
        log(f"restarting with {ENV_TIMEOUT}={env[ENV_TIMEOUT]} (numpy's OpenBLAS reads it "
            "when it loads): " + " ".join(cmd[2:]))
        sys.stdout.flush()
        sys.stderr.flush()
        return subprocess.call(cmd, env=env)

    if getattr(args, "flush_denormal", False):
        try:
            import torch
        except ImportError:
            print("bench: error: --flush-denormal needs torch (pip install torch==2.13.0)",
                  file=sys.stderr)
            return 2
        if not torch.set_flush_denormal(True):
            print("bench: error: --flush-denormal: this CPU does not support it",
                  file=sys.stderr)
            return 2
        log("subnormal floats flushed to zero in the whole process (--flush-denormal)")
    if args.tta:
        from . import tta
        return tta.run_cli(args, log=log)
    if args.profile == "contention":
        from .contention import contention_cli
        return contention_cli(args, set_before_numpy=set_before_numpy, log=log)
    name = args.name or f"bench_{args.profile}"
    if os.sep in name or name.startswith(".") or not name:
        print(f"bench: error: --name must be a plain file name, got {name!r}", file=sys.stderr)
        return 2
    target = os.path.join(outdir, name + ".json")
    old = _load_json(target) if os.path.exists(target) else None
    if os.path.exists(target) and not (isinstance(old, dict) and old.get("schema") == SCHEMA):
        print(f"bench: error: {target} exists and was not written by this harness; choose "
              "another --name or --out", file=sys.stderr)
        return 2

    cfg = profile(args.profile)
    if cfg.get("skip_layer"):
        args.skip_layer = True
    if args.threads is not None:
        cfg["threads"] = args.threads
        cfg["e2e_threads"] = (sorted({min(args.threads), max(args.threads)})
                              if args.profile == "quick" else args.threads)
    for key in ("epochs", "max_train", "repeats", "warmup"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["seed"] = 0
    cfg["layer_seed"] = SEED
    cfg["retries"] = args.retries
    cfg["optimizers"] = {
        "meprop_cpu": "meprop_cpu.optim.Adam(lr=1e-3, sparse=True): row-sparse update for "
                      "meProp's RowGrad, dense for the dense path",
        "numpy": "in-place numpy Adam, PyTorch's formula (layer level only)",
        "torch": "torch.optim.Adam(lr=1e-3, fused=True when supported)"}
    torch_mod = _import_torch(not args.no_torch)
    notes = []
    if torch_mod is None:
        notes.append("PyTorch variants skipped (" + ("--no-torch" if args.no_torch
                                                      else "torch is not importable") + ")")
    if _threadpoolctl() is None:
        notes.append("threadpoolctl is not importable: numpy's BLAS threads were not limited")
    nproc = _nproc()
    if max(cfg["threads"]) > nproc:
        notes.append(f"thread count {max(cfg['threads'])} exceeds the {nproc} usable CPUs")
    ok, why = mesimp_available()
    if not ok and not args.skip_e2e:
        notes.append(f"meSimp run skipped: {why}")

    machine = machine_info(torch_mod, set_before_numpy=set_before_numpy)
    if not machine["openblas_thread_timeout"]["effective"]:
        notes.append(f"{ENV_TIMEOUT}: {machine['openblas_thread_timeout']['how']}; numpy-BLAS "
                     "timings may steal cores from the next OpenMP call")
    log(f"meprop-cpu bench ({args.profile}): {machine['cpu_model']}, {nproc} CPUs, SIMD "
        f"{machine['simd']}, BLAS {(machine['blas'] or {}).get('library')}, torch "
        f"{torch_mod.__version__ if torch_mod else 'skipped'}")
    load = {"wait": wait_for_quiet(args.load_threshold, args.max_wait, log=log)}
    if load["wait"]["timed_out"]:
        notes.append(f"the 1-minute load average was {load['wait']['load_last'][0]:.2f} "
                     f"(>= {args.load_threshold}) after waiting {args.max_wait:.0f} s: other "
                     "processes shared the CPUs during the measurements")
    controls = default_thread_controls(torch_mod)
    settler = Settler(per_call=args.settle, budget=args.settle_budget) if args.settle > 0 else None
    layer = e2e = None
    t0 = _PC()
    if not args.skip_layer:
        log(f"layer level: shapes {cfg['shapes']}, k {cfg['ks']}, threads {cfg['threads']}, "
            f"{cfg['repeats']} repeats")
        layer = run_layer(cfg["shapes"], cfg["ks"], cfg["threads"], cfg["repeats"],
                          cfg["warmup"], torch_mod, controls, log=log, settler=settler,
                          retries=args.retries)
        bad = sorted({str(g["check"]) for g in layer if g["check"] != "ok"})
        if bad:
            notes.append(f"gradient check of the layer variants failed: {bad}")
    load["after_layer"] = _loadavg()
    if not args.skip_e2e:
        from .. import data as datasets
        data = datasets.mnist()
        if cfg["max_train"] is not None:
            X, y = data["train"]
            data = dict(data, train=(np.ascontiguousarray(X[:cfg["max_train"]]),
                                     np.ascontiguousarray(y[:cfg["max_train"]])))
            notes.append(f"end to end on the first {cfg['max_train']} training images only")
        log(f"end to end: MNIST 784-500-500-10, {cfg['epochs']} epoch(s), threads "
            f"{cfg['e2e_threads']}, {len(cfg['e2e_runs'])} runs per thread count")
        e2e = run_e2e(cfg["e2e_runs"], data, cfg["epochs"], cfg["e2e_threads"], torch_mod,
                      controls, seed=cfg["seed"], warmup_steps=cfg["e2e_warmup_steps"], log=log,
                      repeats=cfg["e2e_repeats"], settler=settler, retries=args.retries)
    load["end"] = _loadavg()
    load["settle"] = settler.record() if settler is not None else None
    cfg["wall_s"] = _PC() - t0
    measured = list(layer or []) + list(e2e or [])
    busy = [m for m in measured if (_share(m) or 0.0) >= BUSY_SHARE]
    if busy:
        notes.append(f"other processes used >= {100 * BUSY_SHARE:.0f}% of the CPUs during "
                     f"{len(busy)} of {len(measured)} measurements (marked (!)); their timings, "
                     "most of all with as many threads as CPUs, are not trustworthy")
    doc = build_doc(name, cfg, machine, layer, e2e, load, notes)
    paths = write_outputs(doc, outdir, plots=not args.no_plots)
    for line in _headline_lines(doc):
        log(line)
    log("wrote " + ", ".join(paths))
    return 0


def main(argv=None, set_before_numpy=False):
    """``python -m meprop_cpu.bench`` / scripts: parse ``argv`` and run."""
    code = handover(sys.argv[1:] if argv is None else list(argv))
    if code is not None:
        return code
    doc = sys.modules[__package__].__doc__      # the package's: this module's says less
    p = argparse.ArgumentParser(prog="meprop-cpu bench", description=doc.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    return run_cli(args, p, set_before_numpy=set_before_numpy)


if __name__ == "__main__":
    sys.exit(main())
