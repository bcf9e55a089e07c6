"""The benchmark harness behind ``meprop-cpu bench`` and ``benchmarks/*.py``.

Two levels are measured, with one protocol:

**Layer level** (:func:`run_layer`) - one linear layer ``y = x W^T + b`` with
``x`` (B, n_in) and ``W`` (n_out, n_in), standard-normal ``x`` and ``dy``:

==========  ===============================================================
forward     ``y = x W^T + b``
backward    the layer's backward for a given ``dy``: ``dx``, ``dW`` and ``db``;
            for meProp this includes the top-k selection
step        forward + backward + the optimizer update (Adam, lr 1e-3)
==========  ===============================================================

for the variants

* ``topk``    - meProp, per-example top-k: ``nn.Linear(mode="topk")`` with
  row-sparse Adam (``optim.Adam(sparse=True)``, the project's fast choice);
* ``unified`` - meProp, one top-k set per batch (``mode="unified"``), same Adam;
* ``dense``   - this project's dense path (``mode="dense"``: its own OpenMP
  products), Adam over the dense gradient;
* ``numpy``   - ``x @ W.T + b``, ``dy @ W``, ``dy.T @ x``, ``dy.sum(0)`` through
  numpy's BLAS, and a numpy Adam (PyTorch's formula, in place);
* ``torch``   - ``torch.nn.Linear`` with autograd (forward builds the graph;
  backward is ``torch.autograd.grad`` of the output w.r.t. input, weight and
  bias) and ``torch.optim.Adam`` for the step (``fused=True``, torch's fastest
  CPU Adam, when this torch supports it).

The forward pass is the same dense kernel in every mode of this project, so it
is timed once (variant ``dense``). Variants share ``W``, ``b`` and (for this
project) the optimizer state, to save memory at large shapes: the values do
not change what is computed per call, hence not the timing. Before timing,
each variant's gradients are checked against a numpy reference.

**End to end** (:func:`run_e2e`) - the MNIST MLP 784-500-500-10 trained for a
fixed number of epochs with :class:`~meprop_cpu.train.Trainer` (dense, meProp
top-k, unified, optionally dropout, meSimp when :mod:`meprop_cpu.simplify` is
usable) and the same MLP in PyTorch (same initial weights, copied; Adam lr
1e-3; same batch size, epochs, threads and data order from the same seeded
permutations; the papers' protocol: dev after every epoch, test at the best
dev). Per epoch: forward / backward / update / epoch wall time and, for this
project, the time spent in ``Linear.backward`` of the hidden layers (a timer
wrapped around each hidden layer's ``backward`` method: top-k selection,
``dx`` - the first layer computes none -, the row-sparse ``dW`` and ``db``).
That is the papers' "backprop time" and feeds the reproduction table.

Protocol
    * the same thread count T for every variant: ``meprop_cpu.set_num_threads``,
      ``torch.set_num_threads`` and ``threadpoolctl.threadpool_limits(T)`` (numpy's
      BLAS and every OpenMP runtime) are applied once per group, recorded, and
      checked again after the group (:class:`ThreadSetting`);
    * warm-up calls, then interleaved repeats: every repeat runs each variant
      once, the starting variant rotating (A B C, B C A, C A B, ...), so slow
      drifts of the machine hit every variant alike (:func:`interleave`);
    * medians with min, max and quartiles of single-call times (:func:`summarize`);
      speed-up of X over Y = median(Y) / median(X) (:func:`speedup`);
    * before measuring, wait (bounded) until the 1-minute load average is
      below a threshold (:func:`wait_for_quiet`); before each measurement, wait
      (bounded) for a 1-second window in which other processes use < 5% of the
      CPUs (:class:`Settler`); during each measurement, record the share of the
      machine's CPU time other processes used (:class:`CpuMonitor`, from
      /proc/stat) and measure again (``--retries``) when it is >= 5%, keeping
      the quietest attempt; the reports flag busy measurements with (!). With
      as many threads as CPUs an OpenMP team is badly slowed by any other
      process (a thread descheduled at a barrier stalls the team), so those
      flags matter most there;
    * machine description (:func:`machine_info`): CPU model, cores, SIMD path,
      BLAS library and threads, numpy / torch versions, environment, git state.

numpy's OpenBLAS threads spin after each call and steal the cores from the
next OpenMP call (measured on 2 cores), so ``OPENBLAS_THREAD_TIMEOUT=4`` must
be in the environment when numpy loads OpenBLAS. ``meprop-cpu bench`` starts
the measuring process again with it set when it was not in the process's
initial environment; scripts set it before importing numpy. Whether it took
effect is recorded (``machine["openblas_thread_timeout"]``).

Output: ``<out>/<name>.json`` (schema :data:`SCHEMA`), ``<name>.md``, PNG plots
when matplotlib is importable, and ``<out>/README.md`` regenerated from every
JSON file there (:func:`render_readme`).
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import numpy as np

__all__ = ["SCHEMA", "PROFILES", "PAPER", "profile", "interleave", "summarize", "speedup",
           "wait_for_quiet", "CpuMonitor", "Settler", "ThreadSetting",
           "default_thread_controls", "machine_info",
           "openblas_timeout_status", "layer_variants", "check_layer_variants",
           "run_layer_group", "run_layer", "e2e_runs", "run_e2e", "train_meprop",
           "train_torch", "HiddenBackwardTimer", "mesimp_available", "layer_rows",
           "headline", "reproduction_rows", "render_markdown", "render_readme",
           "make_plots", "write_outputs", "build_doc", "add_arguments", "add_parser",
           "run_cli", "main"]

SCHEMA = "meprop_cpu.bench/1"
SEED = 1234
ENV_TIMEOUT = "OPENBLAS_THREAD_TIMEOUT"
ENV_RELAUNCHED = "MEPROP_BENCH_RELAUNCHED"
ENV_COMMAND = "MEPROP_BENCH_COMMAND"

_PC = time.perf_counter

# --------------------------------------------------------------------- profiles

ALL_KS = (5, 10, 20, 40, 80, 160)
ALL_SHAPES = ((10, 784, 500), (100, 784, 500), (100, 500, 500), (256, 1024, 4096),
              (128, 2048, 20000))


def _nproc():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _run(impl, mode, k, batch, dropout=0.0, prune_rate=None):
    r = {"impl": impl, "mode": mode, "k": k, "batch": batch, "dropout": dropout}
    if prune_rate is not None:
        r["prune_rate"] = prune_rate
    return r


def e2e_runs(name):
    """The end-to-end runs of a profile, in the order they are run."""
    if name == "quick":
        b10 = [_run("meprop_cpu", "dense", None, 10), _run("meprop_cpu", "topk", 20, 10),
               _run("meprop_cpu", "unified", 20, 10),
               _run("meprop_cpu", "topk", 20, 10, dropout=0.2), _run("torch", "dense", None, 10)]
        b100 = [_run("meprop_cpu", "dense", None, 100), _run("meprop_cpu", "topk", 20, 100),
                _run("meprop_cpu", "unified", 20, 100), _run("meprop_cpu", "topk", 160, 100),
                _run("meprop_cpu", "mesimp", 160, 100), _run("torch", "dense", None, 100)]
        return b10 + b100
    if name == "full":
        b10 = ([_run("meprop_cpu", "dense", None, 10)]
               + [_run("meprop_cpu", "topk", k, 10) for k in ALL_KS]
               + [_run("meprop_cpu", "unified", k, 10) for k in (20, 80)]
               + [_run("meprop_cpu", "random", 20, 10),
                  _run("meprop_cpu", "topk", 20, 10, dropout=0.2),
                  _run("torch", "dense", None, 10)])
        b100 = ([_run("meprop_cpu", "dense", None, 100)]
                + [_run("meprop_cpu", "topk", k, 100) for k in (20, 80, 160)]
                + [_run("meprop_cpu", "unified", k, 100) for k in (20, 160)]
                + [_run("meprop_cpu", "mesimp", 160, 100), _run("torch", "dense", None, 100)])
        return b10 + b100
    if name == "mesimp":
        return [_run("meprop_cpu", "dense", None, 100), _run("meprop_cpu", "mesimp", 160, 100),
                _run("meprop_cpu", "mesimp", 160, 100, prune_rate=0.03),
                _run("torch", "dense", None, 100)]
    raise ValueError(f"unknown profile {name!r}; expected 'quick', 'full' or 'mesimp'")


def profile(name, nproc=None):
    """The settings of profile ``name`` ("quick" | "full") as a dict."""
    n = _nproc() if nproc is None else int(nproc)
    if name == "quick":
        return {"name": "quick", "ks": [20, 40, 80],
                "shapes": [[10, 784, 500], [100, 784, 500], [256, 1024, 4096]],
                "threads": sorted({1, n}), "e2e_threads": sorted({1, n}), "warmup": 3,
                "repeats": 15,
                "epochs": 1, "max_train": None, "e2e_repeats": 1, "e2e_warmup_steps": 50,
                "e2e_runs": e2e_runs("quick")}
    if name == "full":
        return {"name": "full", "ks": list(ALL_KS), "shapes": [list(s) for s in ALL_SHAPES],
                "threads": list(range(1, n + 1)), "e2e_threads": sorted({1, n}), "warmup": 3,
                "repeats": 21, "epochs": 3, "max_train": None, "e2e_repeats": 1,
                "e2e_warmup_steps": 50, "e2e_runs": e2e_runs("full")}
    if name == "mesimp":   # whole trainings (the papers' 20 epochs) at batch 100, no layer sweep
        return {"name": "mesimp", "ks": [], "shapes": [], "threads": [n], "e2e_threads": [n],
                "warmup": 3, "repeats": 1, "epochs": 20, "max_train": None, "e2e_repeats": 3,
                "e2e_warmup_steps": 50, "e2e_runs": e2e_runs("mesimp"), "skip_layer": True}
    raise ValueError(f"unknown profile {name!r}; expected 'quick', 'full' or 'mesimp'")


PROFILES = ("quick", "full", "mesimp")

# The papers' MNIST numbers (PAPER.md section 3): ICML 2017 Table 1 / 2 (Adam,
# batch 10, single-threaded C#) and TKDE 2018 (meSimp, batch 100).
PAPER = {
    "icml_mnist_adam": {"batch": 10, "k": 20,
                        "baseline": {"backprop_s": 169.5, "fwd_bwd_s": 240.0, "test": 97.82},
                        "meprop": {"backprop_s": 7.9, "backprop_speedup": 21.4,
                                   "fwd_bwd_s": 77.0, "test": 98.01}},
    "icml_mnist_adagrad": {"batch": 10, "k": 10,
                           "baseline": {"backprop_s": 171.0, "test": 97.52},
                           "meprop": {"backprop_s": 4.1, "backprop_speedup": 41.7,
                                      "test": 98.00}},
    "tkde_mnist": {"batch": 100, "meprop_k": 80, "meprop_backprop_speedup": 5.9,
                   "mesimp_k": 160, "mesimp_width": 154, "mesimp_test": 98.31,
                   "baseline_test": 98.20},
}

# the layer-level ratios the headline reports: (B, n_in, n_out, k)
HEADLINE_LAYER = ((100, 784, 500, 20), (256, 1024, 4096, 40))

# --------------------------------------------------------------------- environment


def _read_start_environ(path="/proc/self/environ"):
    """The environment the process started with (Linux), or None."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            key, _, val = item.partition(b"=")
            env[key.decode("utf-8", "replace")] = val.decode("utf-8", "replace")
    return env


_START_ENV = _read_start_environ()


def openblas_timeout_status(start_env=None, environ=None, set_before_numpy=False):
    """Whether ``OPENBLAS_THREAD_TIMEOUT`` was set when numpy loaded OpenBLAS.

    OpenBLAS reads it once, when the library loads. It is known to be in
    effect when it is in the process's initial environment (``start_env``,
    from /proc/self/environ) or when a script set it before numpy was
    imported (``set_before_numpy``).
    """
    start_env = _START_ENV if start_env is None else start_env
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_TIMEOUT)
    if start_env is not None and ENV_TIMEOUT in start_env:
        how, effective = "in the process environment at start", True
    elif value is not None and set_before_numpy:
        how, effective = "set by the script before numpy was imported", True
    elif value is not None:
        how, effective = "set after numpy was imported: not in effect", False
    else:
        how, effective = "not set: OpenBLAS threads spin after each call", False
    if start_env is None and not set_before_numpy and value is not None:
        how, effective = "set; whether before numpy loaded is unknown", None
    return {"value": value, "effective": effective, "how": how}


def needs_relaunch(start_env=None, environ=None, set_before_numpy=False):
    """True when the measuring process must be started again so that
    OPENBLAS_THREAD_TIMEOUT is in effect (and that was not already tried)."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_RELAUNCHED):
        return False
    st = openblas_timeout_status(start_env, environ, set_before_numpy)
    return st["effective"] is False


def _env_subset(environ):
    keys = ("OMP_", "OPENBLAS_", "MKL_", "GOMP_", "KMP_", "MEPROP_", "GOTO", "BLIS_",
            "VECLIB_", "NUMEXPR_", "TORCH_")
    return {k: v for k, v in sorted(environ.items()) if k.startswith(keys)}


def _loadavg(getter=None):
    try:
        return [round(v, 2) for v in (getter or os.getloadavg)()]
    except (OSError, AttributeError):
        return None


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _git_state():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isdir(os.path.join(here, ".git")):
        return None
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head or None, "modified_files": len(dirty.splitlines()) if dirty else 0}


def _cpu_info(path="/proc/cpuinfo"):
    info = {"model": platform.processor() or None, "flags_simd": [], "physical_cores": None,
            "mhz": None}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return info

    def first(key):
        return next((ln.split(":", 1)[1].strip() for ln in lines
                     if ln.split(":", 1)[0].strip() == key), None)

    info["model"] = first("model name") or info["model"]
    flags = (first("flags") or "").split()
    info["flags_simd"] = sorted(f for f in flags if f.startswith(("avx", "fma", "sse4")))
    cores = first("cpu cores")
    ids = {(ln.split(":", 1)[1].strip()) for ln in lines if ln.startswith("physical id")}
    if cores is not None:
        try:
            info["physical_cores"] = int(cores) * max(1, len(ids))
        except ValueError:
            pass
    mhz = first("cpu MHz")
    try:
        info["mhz"] = float(mhz) if mhz is not None else None
    except ValueError:
        pass
    return info


def _import_torch(enabled=True):
    if not enabled:
        return None
    try:
        import torch
    except Exception:   # ImportError, or a broken install
        return None
    return torch


def _threadpoolctl():
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl


def machine_info(torch_mod=None, set_before_numpy=False, command=None):
    """A JSON-able description of the machine, libraries and environment."""
    import meprop_cpu
    cpu = _cpu_info()
    info = {"date": _now(),
            "command": command or os.environ.get(ENV_COMMAND) or " ".join(
                [os.path.basename(sys.executable)] + sys.argv),
            "relaunched": bool(os.environ.get(ENV_RELAUNCHED)),
            "hostname": platform.node(), "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_model": cpu["model"], "cpu_mhz": cpu["mhz"], "cpu_simd_flags": cpu["flags_simd"],
            "physical_cores": cpu["physical_cores"], "nproc": _nproc(),
            "os_cpu_count": os.cpu_count(), "loadavg": _loadavg(),
            "env": _env_subset(os.environ),
            "openblas_thread_timeout": openblas_timeout_status(set_before_numpy=set_before_numpy),
            "meprop_cpu": meprop_cpu.show_config(), "numpy": np.__version__,
            "git": _git_state()}
    info["simd"] = info["meprop_cpu"].get("simd")
    info["blas"] = info["meprop_cpu"].get("blas")
    tpc = _threadpoolctl()
    if tpc is not None:
        pools = tpc.threadpool_info()
        info["threadpoolctl"] = {"version": tpc.__version__,
                                 "pools": [{k: p.get(k) for k in (
                                     "user_api", "internal_api", "version", "num_threads",
                                     "threading_layer", "architecture", "filepath")}
                                     for p in pools]}
    else:
        info["threadpoolctl"] = None
    if torch_mod is not None:
        info["torch"] = {"version": torch_mod.__version__,
                         "num_threads": torch_mod.get_num_threads(),
                         "mkl": bool(torch_mod.backends.mkl.is_available()),
                         "mkldnn": bool(torch_mod.backends.mkldnn.is_available()),
                         "parallel_info": [ln.strip() for ln in
                                           torch_mod.__config__.parallel_info().splitlines()
                                           if ln.strip()][:12]}
    else:
        info["torch"] = None
    return info


# --------------------------------------------------------------------- load

def wait_for_quiet(threshold=0.5, max_wait=300.0, poll=5.0, *, loadavg=None, clock=None,
                   sleep=None, log=None):
    """Wait until the 1-minute load average is below ``threshold``, at most
    ``max_wait`` seconds. Returns a record: ``quiet`` (the load went below the
    threshold), ``timed_out``, ``waited_s`` and the load averages seen first
    and last. Clock, sleep and loadavg are injectable (tests)."""
    loadavg = os.getloadavg if loadavg is None else loadavg
    clock = time.monotonic if clock is None else clock
    sleep = time.sleep if sleep is None else sleep
    t0 = clock()
    first = _loadavg(loadavg)
    last = first
    announced = False
    while True:
        last = _loadavg(loadavg)
        waited = clock() - t0
        if last is None or last[0] < threshold:
            return {"threshold": threshold, "max_wait_s": max_wait, "waited_s": waited,
                    "quiet": last is not None, "timed_out": False, "load_first": first,
                    "load_last": last}
        if waited >= max_wait:
            if log is not None:
                log(f"load average still {last[0]:.2f} after {waited:.0f} s: measuring anyway "
                    "(the load is recorded in the results)")
            return {"threshold": threshold, "max_wait_s": max_wait, "waited_s": waited,
                    "quiet": False, "timed_out": True, "load_first": first, "load_last": last}
        if log is not None and not announced:
            log(f"1-minute load average {last[0]:.2f} >= {threshold}: waiting up to "
                f"{max_wait:.0f} s for the machine to quieten")
            announced = True
        sleep(min(poll, max(max_wait - waited, 0.0)))


def _read_proc_stat(path="/proc/stat"):
    """(busy, steal) CPU seconds of the whole machine since boot (Linux), or None."""
    try:
        with open(path) as f:
            parts = f.readline().split()
        vals = [int(v) for v in parts[1:9]] + [0] * 8
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = vals[:8]
    tick = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _own_cpu():
    t = os.times()
    return t.user + t.system


class CpuMonitor:
    """How much CPU other processes used while something was measured.

    ``start()`` / ``stop()`` read the machine's busy CPU time (/proc/stat) and
    this process's own CPU time (all its threads); the difference is what
    other processes (and the hypervisor: steal) took. ``stop()`` returns
    {"wall_s", "own_cpu_s", "other_cpu_s", "steal_s", "other_share"}, where
    other_share = (other + steal) / (wall * CPUs): 0 on a quiet machine, 0.5
    when another process kept one of two CPUs busy. None values where the
    machine does not tell (no /proc/stat). Readers are injectable (tests).
    """

    def __init__(self, read_stat=None, read_own=None, clock=None, ncpu=None):
        self.read_stat = _read_proc_stat if read_stat is None else read_stat
        self.read_own = _own_cpu if read_own is None else read_own
        self.clock = time.monotonic if clock is None else clock
        self.ncpu = _nproc() if ncpu is None else ncpu
        self._start = None

    def start(self):
        self._start = (self.clock(), self.read_stat(), self.read_own())
        return self

    def stop(self):
        t0, st0, own0 = self._start
        wall, st1, own = self.clock() - t0, self.read_stat(), self.read_own() - own0
        out = {"wall_s": wall, "own_cpu_s": own, "other_cpu_s": None, "steal_s": None,
               "other_share": None}
        if st0 is not None and st1 is not None:
            other = max(0.0, (st1[0] - st0[0]) - own)
            steal = max(0.0, st1[1] - st0[1])
            out.update(other_cpu_s=other, steal_s=steal,
                       other_share=(other + steal) / (wall * self.ncpu) if wall > 0 else None)
        return out


class Settler:
    """Before each measurement, wait (bounded) for a quiet moment.

    ``settle()`` samples ``window`` seconds with a :class:`CpuMonitor` until
    other processes used less than ``share`` of the CPUs in one window, for
    at most ``per_call`` seconds per call and ``budget`` seconds over all
    calls. Returns the seconds waited. ``waited_s`` totals them. The load
    average reacts in minutes; this reacts in a second, which is what a
    2-thread timing on a 2-CPU machine needs.
    """

    def __init__(self, per_call=10.0, budget=120.0, window=1.0, share=0.05, monitor=None,
                 sleep=None, clock=None):
        self.per_call, self.budget, self.window, self.share = per_call, budget, window, share
        self.monitor = CpuMonitor if monitor is None else monitor
        self.sleep = time.sleep if sleep is None else sleep
        self.clock = time.monotonic if clock is None else clock
        self.waited_s = 0.0
        self.calls = 0
        self.gave_up = 0

    def settle(self):
        self.calls += 1
        t0 = self.clock()
        while True:
            left = min(self.per_call - (self.clock() - t0), self.budget - self.waited_s
                       - (self.clock() - t0))
            if left < self.window:
                self.gave_up += 1
                break
            mon = self.monitor().start()
            self.sleep(self.window)
            sh = mon.stop()["other_share"]
            if sh is None or sh < self.share:
                break
        waited = self.clock() - t0
        self.waited_s += waited
        return waited

    def record(self):
        return {"per_call_s": self.per_call, "budget_s": self.budget, "window_s": self.window,
                "share": self.share, "calls": self.calls, "waited_s": self.waited_s,
                "gave_up": self.gave_up}


# --------------------------------------------------------------------- threads

class _Control:
    """One thread pool: ``get()`` its size, ``set(n)`` returns a restore callable."""

    def __init__(self, name, get, set_):
        self.name, self.get, self._set = name, get, set_

    def set(self, n):
        return self._set(n)


def default_thread_controls(torch_mod=None):
    """The thread pools a benchmark variant may use: meprop_cpu's kernels,
    torch's intra-op pool, and everything threadpoolctl finds (numpy's BLAS,
    the OpenMP runtimes)."""
    import meprop_cpu

    def set_mp(n):
        old = meprop_cpu.get_num_threads()
        meprop_cpu.set_num_threads(n)
        return lambda: meprop_cpu.set_num_threads(old)

    # without OpenMP the kernels are serial whatever is asked: nothing to check
    get_mp = meprop_cpu.get_num_threads if meprop_cpu.openmp_enabled() else (lambda: None)
    controls = [_Control("meprop_cpu", get_mp, set_mp)]
    if torch_mod is not None:
        def set_torch(n):
            old = torch_mod.get_num_threads()
            torch_mod.set_num_threads(n)
            return lambda: torch_mod.set_num_threads(old)
        controls.append(_Control("torch", torch_mod.get_num_threads, set_torch))
    tpc = _threadpoolctl()
    if tpc is not None:
        def pool_threads(api):
            def get():
                ns = [p["num_threads"] for p in tpc.threadpool_info() if p["user_api"] == api]
                return max(ns) if ns else None
            return get

        def set_pools(n):
            lim = tpc.threadpool_limits(limits=n)
            return lim.restore_original_limits
        controls.append(_Control("blas", pool_threads("blas"), set_pools))
        # the OpenMP runtimes are limited by the same threadpool_limits call
        controls.append(_Control("openmp", pool_threads("openmp"), lambda n: (lambda: None)))
    return controls


class ThreadSetting:
    """Context manager: ``n`` threads for every control; ``applied()`` reads them back.

    On entry it sets every control, on exit it restores them in reverse order.
    ``check()`` raises RuntimeError if a pool does not hold ``n`` threads
    (meprop_cpu without OpenMP holds 1: reported, not an error).
    """

    def __init__(self, n, controls):
        self.n = int(n)
        self.controls = list(controls)
        self._restore = []

    def __enter__(self):
        for c in self.controls:
            self._restore.append(c.set(self.n))
        return self

    def __exit__(self, *exc):
        while self._restore:
            r = self._restore.pop()
            if r is not None:
                r()
        return False

    def applied(self):
        return {c.name: c.get() for c in self.controls}

    def check(self, applied=None):
        applied = self.applied() if applied is None else applied
        bad = {k: v for k, v in applied.items() if v is not None and v != self.n}
        if bad:
            raise RuntimeError(f"thread pools do not hold {self.n} threads: {bad}")
        return applied


# --------------------------------------------------------------------- timing

def interleave(fns, repeats, warmup=1, clock=None, trace=None):
    """Time zero-argument callables, interleaved.

    fns: {name: callable}. First ``warmup`` untimed rounds (every variant once
    per round, in order), then ``repeats`` timed rounds; round r starts at
    variant ``r % len(fns)`` and wraps around (A B C, B C A, C A B, ...).
    Returns {name: [seconds per call]} (``repeats`` entries each). ``trace``,
    if a list, receives ("warmup" | "timed", name) in call order.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"interleave: repeats must be >= 1 and warmup >= 0, got {repeats}, "
                         f"{warmup}")
    clock = _PC if clock is None else clock
    names = list(fns)
    times = {name: [] for name in names}
    for _ in range(warmup):
        for name in names:
            if trace is not None:
                trace.append(("warmup", name))
            fns[name]()
    for r in range(repeats):
        s = r % len(names) if names else 0
        for name in names[s:] + names[:s]:
            f = fns[name]
            if trace is not None:
                trace.append(("timed", name))
            t0 = clock()
            f()
            times[name].append(clock() - t0)
    return times


def summarize(ts):
    """Median, min, max, quartiles (seconds) and count of a list of times."""
    if not ts:
        raise ValueError("summarize: no times")
    a = np.asarray(ts, dtype=np.float64)
    return {"median_s": float(statistics.median(ts)), "min_s": float(a.min()),
            "max_s": float(a.max()), "q1_s": float(np.percentile(a, 25)),
            "q3_s": float(np.percentile(a, 75)), "n": int(a.size)}


def speedup(baseline, t):
    """How many times faster ``t`` is than ``baseline`` (= baseline / t); None if unknown."""
    if baseline is None or t is None or t <= 0 or baseline <= 0:
        return None
    return float(baseline) / float(t)


# --------------------------------------------------------------------- layer level

class _NumpyAdam:
    """Adam in numpy, PyTorch's formula, in place with preallocated scratch."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.params = params
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.tmp = [np.empty_like(p) for p in params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        b1, b2 = self.b1, self.b2
        step_size = self.lr / (1.0 - b1 ** self.t)
        inv_sqrt_bc2 = 1.0 / math.sqrt(1.0 - b2 ** self.t)
        for p, g, m, v, tmp in zip(self.params, grads, self.m, self.v, self.tmp):
            m *= b1
            np.multiply(g, 1.0 - b1, out=tmp)
            m += tmp
            v *= b2
            np.multiply(g, g, out=tmp)
            tmp *= 1.0 - b2
            v += tmp
            np.sqrt(v, out=tmp)
            tmp *= inv_sqrt_bc2
            tmp += self.eps
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp


def _layer_data(B, n_in, n_out, seed=SEED):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, n_in), dtype=np.float32)
    dy = rng.standard_normal((B, n_out), dtype=np.float32)
    a = np.sqrt(6.0 / (n_in + n_out))
    W = rng.uniform(-a, a, size=(n_out, n_in)).astype(np.float32)
    b = np.zeros(n_out, dtype=np.float32)
    return x, W, b, dy


def _key(variant, k, op):
    return f"{variant}/k={k}/{op}" if k is not None else f"{variant}/{op}"


def layer_variants(B, n_in, n_out, ks, torch_mod=None, seed=SEED, data=None):
    """The timed callables for one layer shape: {key: callable}, key
    ``"variant/op"`` or ``"variant/k=K/op"``. Buffers, layers, optimizers and
    the torch graph are built here, outside the timing."""
    from . import nn, optim
    x, W, b, dy = _layer_data(B, n_in, n_out, seed) if data is None else data
    fns = {}
    Wp, bp = nn.Parameter(W, "W"), nn.Parameter(b, "b")
    Wp.data, bp.data = W, b                    # share the arrays (Parameter copies otherwise)
    opt = optim.Adam([Wp, bp], lr=1e-3, sparse=True)

    def make_layer(mode, k):
        lin = nn.Linear(n_in, n_out, k=k, mode=mode, init="zeros")
        lin.W, lin.b = Wp, bp
        lin.forward(x)                          # sizes the workspace, stores x
        return lin

    def ops(name, lin, k=None):
        def backward():
            lin.backward(dy)
            # meProp's backward hands the weight gradient to the optimizer in factored
            # form (formed row by row inside the update); reading .values forms it here,
            # so "backward" is the whole backward: top-k, dx and dW
            lin.W.grad.values

        def step():
            lin.forward(x)
            lin.backward(dy)
            opt.step()
            opt.zero_grad()
        fns[_key(name, k, "backward")] = backward
        fns[_key(name, k, "step")] = step

    dense = make_layer("dense", None)
    fns[_key("dense", None, "forward")] = lambda: dense.forward(x)
    ops("dense", dense)

    y_np = np.empty((B, n_out), dtype=np.float32)
    dx_np = np.empty((B, n_in), dtype=np.float32)
    dW_np = np.empty((n_out, n_in), dtype=np.float32)
    db_np = np.empty(n_out, dtype=np.float32)
    WT, dyT = W.T, dy.T
    nadam = _NumpyAdam([W, b])

    def np_forward():
        np.matmul(x, WT, out=y_np)
        np.add(y_np, b, out=y_np)

    def np_backward():
        np.matmul(dy, W, out=dx_np)
        np.matmul(dyT, x, out=dW_np)
        np.sum(dy, axis=0, out=db_np)

    def np_step():
        np_forward()
        np_backward()
        nadam.step([dW_np, db_np])
    fns[_key("numpy", None, "forward")] = np_forward
    fns[_key("numpy", None, "backward")] = np_backward
    fns[_key("numpy", None, "step")] = np_step

    if torch_mod is not None:
        torch = torch_mod
        lin = torch.nn.Linear(n_in, n_out)
        lin.weight = torch.nn.Parameter(torch.from_numpy(W))     # shares W's memory
        lin.bias = torch.nn.Parameter(torch.from_numpy(b))
        xt = torch.from_numpy(x).requires_grad_(True)            # dx is computed, as for ours
        dyt = torch.from_numpy(dy)
        # the backward timing replays one graph, whose saved weight must not be
        # modified in place (torch's version check): a layer with its own copy
        lin_b = torch.nn.Linear(n_in, n_out)
        with torch.no_grad():
            lin_b.weight.copy_(lin.weight)
            lin_b.bias.copy_(lin.bias)
        y_graph = lin_b(xt)
        inputs = [xt, lin_b.weight, lin_b.bias]
        topt = _torch_adam(torch, lin.parameters())

        def t_step():
            topt.zero_grad(set_to_none=True)
            xt.grad = None
            y = lin(xt)
            y.backward(dyt)
            topt.step()
        fns[_key("torch", None, "forward")] = lambda: lin(xt)
        fns[_key("torch", None, "backward")] = lambda: torch.autograd.grad(
            y_graph, inputs, dyt, retain_graph=True)
        fns[_key("torch", None, "step")] = t_step

    for k in ks:
        if k >= n_out:
            continue
        ops("topk", make_layer("topk", k), k)
        ops("unified", make_layer("unified", k), k)
    return fns


def check_layer_variants(B, n_in, n_out, ks, torch_mod=None, seed=SEED):
    """Untimed: every variant's backward against a numpy (float64) reference.
    Returns a list of problems (empty when all agree)."""
    from . import nn
    x, W, b, dy = _layer_data(B, n_in, n_out, seed)
    x64, W64, dy64 = x.astype(np.float64), W.astype(np.float64), dy.astype(np.float64)
    problems = []

    def close(name, got, ref):
        scale = float(np.abs(ref).max()) or 1.0
        err = float(np.abs(np.asarray(got, dtype=np.float64) - ref).max()) / scale
        if not err <= 1e-3:
            problems.append(f"{name}: max relative error {err:.2e}")

    def check(name, dys, dx, dw):
        close(f"{name} dx", dx, dys @ W64)
        close(f"{name} dW", dw, dys.T @ x64)

    for mode, k in [("dense", None)] + [(m, k) for k in ks if k < n_out
                                       for m in ("topk", "unified")]:
        lin = nn.Linear(n_in, n_out, k=k, mode=mode, init="zeros")
        lin.W.data, lin.b.data = W.copy(), b.copy()
        lin.forward(x)
        lay_dx = np.array(lin.backward(dy))
        lay_dw = lin.W.grad.to_dense(n_out)
        close(f"{mode} k={k} db", lin.b.grad, dy64.sum(0))
        if mode == "dense":
            dys = dy64
        elif mode == "topk":
            order = np.argsort(-np.abs(dy64), axis=1, kind="stable")[:, :k]
            mask = np.zeros(dy.shape, dtype=bool)
            np.put_along_axis(mask, order, True, axis=1)
            dys = np.where(mask, dy64, 0.0)
        else:
            cols = np.argsort(-np.abs(dy64).sum(0), kind="stable")[:k]
            dys = np.zeros_like(dy64)
            dys[:, cols] = dy64[:, cols]
        check(f"{mode} k={k}", dys, lay_dx, lay_dw)
    check("numpy", dy64, dy @ W, dy.T @ x)
    if torch_mod is not None:
        lin = torch_mod.nn.Linear(n_in, n_out)
        with torch_mod.no_grad():
            lin.weight.copy_(torch_mod.from_numpy(W))
            lin.bias.zero_()
        xt = torch_mod.from_numpy(x.copy()).requires_grad_(True)
        gx, gw, gb = torch_mod.autograd.grad(lin(xt), [xt, lin.weight, lin.bias],
                                             torch_mod.from_numpy(dy.copy()))
        check("torch", dy64, gx.numpy(), gw.numpy())
        close("torch db", gb.numpy(), dy64.sum(0))
    return problems


def _parse_key(key):
    parts = key.split("/")
    variant, op = parts[0], parts[-1]
    k = int(parts[1][2:]) if len(parts) == 3 else None
    return variant, k, op


def run_layer_group(fns, threads, controls, repeats, warmup, clock=None):
    """Time ``fns`` interleaved with ``threads`` threads for every pool.

    Returns {"threads", "threads_applied" (read back before timing),
    "threads_after", "results": [{"variant", "k", "op", summary...}]}.
    """
    with ThreadSetting(threads, controls) as ts:
        before = ts.check()
        times = interleave(fns, repeats, warmup, clock=clock)
        after = ts.check()
    results = []
    for key, t in times.items():
        variant, k, op = _parse_key(key)
        results.append(dict({"variant": variant, "k": k, "op": op}, **summarize(t)))
    return {"threads": threads, "threads_applied": before, "threads_after": after,
            "results": results}


def _busy(rec):
    sh = _share(rec)
    return sh is not None and sh >= BUSY_SHARE


def _quieter(a, b):
    """The measurement (a or b) during which other processes used less CPU."""
    if a is None:
        return b
    return b if (_share(b) if _share(b) is not None else 1.0) < \
        (_share(a) if _share(a) is not None else 1.0) else a


def run_layer(shapes, ks, threads_list, repeats, warmup, torch_mod=None, controls=None,
              log=print, check=True, settler=None, retries=0, monitor=None):
    """The layer-level sweep: for every shape and thread count, one interleaved
    group of all variants and ks. Returns a list of group records."""
    controls = default_thread_controls(torch_mod) if controls is None else controls
    groups = []
    for shape in shapes:
        B, n_in, n_out = shape
        problems = None
        if check:
            problems = check_layer_variants(B, n_in, n_out, ks, torch_mod)
            if problems:
                log(f"  gradient check FAILED for {tuple(shape)}: {problems}")
        fns = layer_variants(B, n_in, n_out, ks, torch_mod)
        for T in threads_list:
            best = None
            for attempt in range(1 + retries):
                if settler is not None:
                    settler.settle()
                t0 = _PC()
                load0 = _loadavg()
                mon = (CpuMonitor if monitor is None else monitor)().start()
                g = run_layer_group(fns, T, controls, repeats, warmup)
                g.update({"shape": [B, n_in, n_out], "load_start": load0,
                          "load_end": _loadavg(), "cpu": mon.stop(),
                          "check": "skipped" if problems is None else (problems or "ok"),
                          "wall_s": _PC() - t0, "attempts": attempt + 1})
                log(f"  layer ({B}, {n_in}, {n_out}) threads {T}: {len(fns)} timings in "
                    f"{g['wall_s']:.1f} s{_busy_note(g['cpu'])}"
                    + ("; measuring again" if _busy(g) and attempt < retries else ""))
                best = _quieter(best, g)
                if not _busy(g):
                    break
            best["attempts"] = attempt + 1
            groups.append(best)
        del fns
    return groups


# --------------------------------------------------------------------- end to end

class HiddenBackwardTimer:
    """Wall time spent in ``Linear.backward`` of a model's hidden layers.

    Wraps the ``backward`` method of every Linear but the last (the hidden
    layers of an MLP) with a timer; ``take()`` returns the seconds accumulated
    since the last ``take()``; ``remove()`` unwraps.
    """

    def __init__(self, model, clock=None):
        self.clock = _PC if clock is None else clock
        self.total = 0.0
        self.calls = 0
        self.layers = list(model.linears[:-1])
        for lin in self.layers:
            lin.backward = self._wrap(lin.backward)

    def _wrap(self, fn):
        clock = self.clock

        def timed(dy):
            t0 = clock()
            out = fn(dy)
            self.total += clock() - t0
            self.calls += 1
            return out
        return timed

    def take(self):
        t, self.total = self.total, 0.0
        return t

    def remove(self):
        for lin in self.layers:
            lin.__dict__.pop("backward", None)


def mesimp_available():
    """(True, None) if meprop_cpu.simplify provides Simplifier and CycleSchedule,
    else (False, reason)."""
    try:
        from . import simplify
    except Exception as e:     # ImportError or an error inside the module
        return False, f"meprop_cpu.simplify does not import ({type(e).__name__}: {e})"
    missing = [n for n in ("Simplifier", "CycleSchedule") if not hasattr(simplify, n)]
    if missing:
        return False, f"meprop_cpu.simplify lacks {missing}"
    return True, None


def _label(run):
    if run["impl"] == "torch":
        return f"torch {run['mode']}"
    if run["mode"] == "dense":
        s = "meprop_cpu dense"
    elif run["mode"] == "mesimp":
        s = f"meSimp k={run['k']}"
        if run.get("prune_rate") is not None:
            s += f" prune {run['prune_rate']:g}"
    else:
        s = f"meProp {run['mode']} k={run['k']}"
    if run.get("dropout"):
        s += f" dropout {run['dropout']:g}"
    return s


def _warm_meprop(model_fn, data, batch, steps, seed):
    """A few untimed steps on a throwaway model (first-call costs, page faults)."""
    from .nn import SoftmaxCrossEntropy
    from .optim import Adam
    if steps <= 0:
        return
    model = model_fn()
    opt = Adam(model.parameters(), lr=1e-3)
    loss = SoftmaxCrossEntropy()
    X, y = data["train"]
    idx = np.random.default_rng(seed).permutation(X.shape[0])
    for s in range(steps):
        i = idx[(s * batch) % X.shape[0]:][:batch]
        logits = model.forward(X[i])
        loss.forward(logits, y[i])
        model.backward(loss.backward())
        opt.step()
        opt.zero_grad()


def train_meprop(run, data, epochs, seed=0, warmup_steps=50, sizes=(784, 500, 500, 10)):
    """One end-to-end run of this project (Trainer). Returns its record."""
    from .nn import MLP
    from . import fused
    from .train import Trainer, build_optimizer
    mode = run["mode"]
    k = None if mode == "dense" else run["k"]
    nn_mode = "topk" if mode == "mesimp" else mode

    def model_fn():
        return MLP(list(sizes), k=k, mode=nn_mode, dropout=run.get("dropout", 0.0), seed=seed)

    _warm_meprop(model_fn, data, run["batch"], warmup_steps, seed)
    model = model_fn()
    opt = build_optimizer("adam", model.parameters(), lr=1e-3, sparse=True)
    callbacks, simp = [], None
    if mode == "mesimp":
        from .simplify import CycleSchedule, Simplifier
        simp = Simplifier(model, opt, prune_rate=run.get("prune_rate", 0.1),
                          schedule=CycleSchedule(cycle_epochs=5, steps_per_epoch=8))
        callbacks.append(simp)
    # the fused step times its hidden layers' backward itself; wrapping
    # Linear.backward would send the Trainer down the module path
    fused_path = fused.unsupported(model, opt) is None
    timer = None if fused_path else HiddenBackwardTimer(model)
    hidden = []

    fused_seen = [0.0]

    def on_epoch(trainer, rec):
        # the module path's Linear.backward calls, or the fused step's own clock
        fs = trainer._fused_step
        fused_t = fs.time_hidden_backward if fs is not None else 0.0
        hidden.append((timer.take() if timer is not None else 0.0) + fused_t - fused_seen[0])
        fused_seen[0] = fused_t
    trainer = Trainer(model, opt, data, batch_size=run["batch"], epochs=epochs, seed=seed,
                      progress=False, callbacks=callbacks, on_epoch=on_epoch)
    t0 = _PC()
    summary = trainer.fit()
    wall = _PC() - t0
    if timer is not None:
        timer.remove()
    ends = [r for r in trainer.history if r["event"] == "epoch"]
    per_epoch = []
    for r, h in zip(ends, hidden):
        per_epoch.append({"epoch": r["epoch"], "time_epoch": r["time_epoch"],
                          "time_forward": r["time_forward"], "time_backward": r["time_backward"],
                          "time_update": r["time_update"], "time_hidden_backward": h,
                          "train_loss": r["train_loss"], "dev_acc": r["dev_acc"],
                          "test_acc": r.get("test_acc"), "hidden_sizes": r["hidden_sizes"]})
    out = {"best_dev": summary["best_dev"], "test_at_best_dev": summary["test_at_best_dev"],
           "best_epoch": summary["best_epoch"], "per_epoch": per_epoch, "wall_s": wall,
           "steps_per_epoch": trainer.steps_per_epoch, "final_hidden_sizes": model.hidden_sizes,
           "optimizer": "meprop_cpu.optim.Adam(lr=1e-3, sparse=True)",
           "step_path": trainer.step_path}
    if simp is not None:
        out["width_log"] = [[g, list(s)] for g, s in simp.sizes_log]
        out["optimizer_resets"] = list(simp.optimizer_resets)
    return out


def _torch_mlp(torch, sizes, dropout):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
            if dropout:
                layers.append(torch.nn.Dropout(dropout))
    return torch.nn.Sequential(*layers)


def _torch_accuracy(torch, model, X, y, batch=1024):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, X.shape[0], batch):
            pred = model(torch.from_numpy(X[i:i + batch])).argmax(1).numpy()
            correct += int((pred == y[i:i + batch]).sum())
    model.train()
    return 100.0 * correct / X.shape[0]


def train_torch(torch, run, data, epochs, seed=0, warmup_steps=50, sizes=(784, 500, 500, 10)):
    """The same MLP in PyTorch: initial weights copied from this project's
    MLP(seed) (Glorot uniform, zero biases), Adam lr 1e-3, the Trainer's data
    order (one ``default_rng(seed).permutation`` per epoch, last partial batch
    kept) and protocol (dev after each epoch, test when dev improves)."""
    from .nn import MLP
    sizes = list(sizes)
    ref = MLP(sizes, k=None, mode="dense", seed=seed)
    torch.manual_seed(seed)
    model = _torch_mlp(torch, sizes, run.get("dropout", 0.0))
    tl = [m for m in model if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for t, m in zip(tl, ref.linears):
            t.weight.copy_(torch.from_numpy(m.W.data))
            t.bias.copy_(torch.from_numpy(m.b.data))
    opt = _torch_adam(torch, model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    X, y = data["train"]
    Xd, yd = data["dev"]
    Xt, yt = data.get("test") or (None, None)
    ytr = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    B = run["batch"]
    n = X.shape[0]
    spe = -(-n // B)
    if warmup_steps > 0:        # on a throwaway copy
        wm = _torch_mlp(torch, sizes, run.get("dropout", 0.0))
        wo = _torch_adam(torch, wm.parameters())
        for s in range(warmup_steps):
            i = np.arange(s * B, (s + 1) * B) % n
            loss = loss_fn(wm(torch.from_numpy(X[i])), ytr[i])
            loss.backward()
            wo.step()
            wo.zero_grad(set_to_none=True)
        del wm, wo
    rng = np.random.default_rng(seed)
    per_epoch = []
    best_dev = test_at_best = best_epoch = None
    t_run = _PC()
    model.train()
    for epoch in range(1, epochs + 1):
        perm = rng.permutation(n)
        t_fwd = t_bwd = t_upd = 0.0
        loss_sum = 0.0
        t_start = _PC()
        for step in range(spe):
            idx = perm[step * B:(step + 1) * B]
            xb = torch.from_numpy(X[idx])
            yb = ytr[idx]
            t0 = _PC()
            loss = loss_fn(model(xb), yb)
            t1 = _PC()
            loss.backward()
            t2 = _PC()
            opt.step()
            opt.zero_grad(set_to_none=True)
            t3 = _PC()
            t_fwd += t1 - t0
            t_bwd += t2 - t1
            t_upd += t3 - t2
            loss_sum += float(loss.detach()) * idx.shape[0]
        t_epoch = _PC() - t_start
        dev = _torch_accuracy(torch, model, Xd, yd)
        if best_dev is None or dev > best_dev:
            best_dev, best_epoch = dev, epoch
            test_at_best = _torch_accuracy(torch, model, Xt, yt) if Xt is not None else None
        per_epoch.append({"epoch": epoch, "time_epoch": t_epoch, "time_forward": t_fwd,
                          "time_backward": t_bwd, "time_update": t_upd,
                          "time_hidden_backward": None, "train_loss": loss_sum / n,
                          "dev_acc": dev, "test_acc": test_at_best,
                          "hidden_sizes": sizes[1:-1]})
    return {"best_dev": best_dev, "test_at_best_dev": test_at_best, "best_epoch": best_epoch,
            "per_epoch": per_epoch, "wall_s": _PC() - t_run, "steps_per_epoch": spe,
            "final_hidden_sizes": sizes[1:-1],
            "optimizer": f"torch.optim.Adam(lr=1e-3, {_torch_adam_impl(opt)})"}


def _torch_adam(torch, params, lr=1e-3):
    """torch.optim.Adam, fused (one kernel for all parameters: the fastest on
    the CPU since torch 2.4) when this torch supports it, else the default."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (TypeError, RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def _torch_adam_impl(opt):
    d = opt.defaults
    return ", ".join(f"{k}={d.get(k)}" for k in ("foreach", "fused") if k in d)


def _one_e2e(run, data, epochs, torch_mod, seed, warmup_steps, settler):
    if settler is not None:
        settler.settle()
    load0 = _loadavg()
    mon = CpuMonitor().start()
    if run["impl"] == "torch":
        r = train_torch(torch_mod, run, data, epochs, seed, warmup_steps)
    else:
        r = train_meprop(run, data, epochs, seed, warmup_steps)
    r["load_start"], r["load_end"], r["cpu"] = load0, _loadavg(), mon.stop()
    r["other_share"] = r["cpu"]["other_share"]
    return r


def _e2e_summary(per_epoch):
    out = {}
    for key in ("time_epoch", "time_forward", "time_backward", "time_update",
                "time_hidden_backward"):
        vals = [r[key] for r in per_epoch if r.get(key) is not None]
        out[key] = summarize(vals) if vals else None
    fb = [r["time_forward"] + r["time_backward"] for r in per_epoch]
    out["time_fwd_bwd"] = summarize(fb) if fb else None
    return out


def run_e2e(runs, data, epochs, threads_list, torch_mod=None, controls=None, seed=0,
            warmup_steps=50, log=print, repeats=1, settler=None, retries=0):
    """Train every run of ``runs`` at every thread count; returns the records.

    With ``repeats`` > 1 the runs are repeated, the order rotating, and the
    per-epoch records of all repeats are summarized together (accuracies
    from the first repeat)."""
    controls = default_thread_controls(torch_mod) if controls is None else controls
    out = []
    ok, why = mesimp_available()
    for T in threads_list:
        todo = []
        for run in runs:
            if run["impl"] == "torch" and torch_mod is None:
                log(f"  skip {_label(run)}: torch is not importable (or --no-torch)")
                continue
            if run["mode"] == "mesimp" and not ok:
                log(f"  skip {_label(run)}: {why}")
                continue
            todo.append(run)
        recs = {i: None for i in range(len(todo))}
        with ThreadSetting(T, controls) as ts:
            applied = ts.check()
            for rep in range(repeats):
                order = list(range(len(todo)))
                s = rep % max(1, len(order))
                for i in order[s:] + order[:s]:
                    run = todo[i]
                    r = None
                    for attempt in range(1 + retries):
                        try:
                            r1 = _one_e2e(run, data, epochs, torch_mod, seed, warmup_steps,
                                          settler)
                        except Exception as e:        # keep the other runs' results
                            if run["mode"] != "mesimp":
                                raise
                            log(f"  meSimp run failed ({type(e).__name__}: {e}); skipped")
                            ok, why = False, f"the meSimp run failed: {type(e).__name__}: {e}"
                            break
                        r1["attempts"] = attempt + 1
                        if _busy(r1["cpu"]) and attempt < retries:
                            log(f"  e2e {_label(run)} batch {run['batch']} threads {T}"
                                f"{_busy_note(r1['cpu'])}; training again")
                        r = _quieter(r, r1) if r is not None else r1
                        if not _busy(r1["cpu"]):
                            break
                    if r is None:
                        continue
                    if recs[i] is None:
                        recs[i] = dict(run, label=_label(run), threads=T, epochs=epochs,
                                       n_train=int(data["train"][0].shape[0]),
                                       threads_applied=applied, repeats=[])
                    recs[i]["repeats"].append(r)
                    e = r["per_epoch"][-1]
                    log(f"  e2e {_label(run):32s} batch {run['batch']:3d} threads {T}: "
                        f"{np.median([p['time_epoch'] for p in r['per_epoch']]):.2f} s/epoch, "
                        f"dev {r['best_dev']:.2f} test {r['test_at_best_dev']:.2f} "
                        f"(last epoch: loss {e['train_loss']:.4f}){_busy_note(r['cpu'])}")
            ts.check()
        for i in range(len(todo)):
            rec = recs[i]
            if rec is None:
                continue
            first = rec["repeats"][0]
            all_epochs = [p for r in rec["repeats"] for p in r["per_epoch"]]
            shares = [r["other_share"] for r in rec["repeats"] if r["other_share"] is not None]
            rec["other_share"] = max(shares) if shares else None
            # the whole training: per repeat the sum of its epoch times; the
            # median over the repeats (which ran in rotated order)
            totals = [float(sum(p["time_epoch"] for p in r["per_epoch"]))
                      for r in rec["repeats"]]
            rec["total_time_train_repeats"] = totals
            rec["total_time_train"] = float(statistics.median(totals))
            rec.update({"best_dev": first["best_dev"], "test_at_best_dev":
                        first["test_at_best_dev"], "final_hidden_sizes":
                        first["final_hidden_sizes"], "optimizer": first["optimizer"],
                        "summary": _e2e_summary(all_epochs)})
            if "width_log" in first:
                rec["width_log"] = first["width_log"]
            out.append(rec)
    return out


# --------------------------------------------------------------------- report

def _fmt_t(s):
    if s is None:
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


BUSY_SHARE = 0.05     # flag measurements during which others used more of the CPUs


def _share(rec):
    """other_share of a layer group or an e2e record (None if unknown)."""
    if rec is None:
        return None
    if "other_share" in rec:
        return rec["other_share"]
    return (rec.get("cpu") or {}).get("other_share")


def _busy_note(cpu):
    sh = (cpu or {}).get("other_share")
    if sh is None or sh < BUSY_SHARE:
        return ""
    return f"  [other processes used {100 * sh:.0f}% of the CPUs meanwhile]"


def _fmt_share(sh):
    if sh is None:
        return "n/a"
    return f"{100 * sh:.0f}%" + (" (!)" if sh >= BUSY_SHARE else "")


def _fmt_x(r):
    return "" if r is None else f"{r:.2f}x"


def _fmt_acc(v):
    return "n/a" if v is None else f"{v:.2f}"


def _med(summary):
    return None if not summary else summary["median_s"]


def _cell(summary):
    if not summary:
        return ""
    return (f"{_fmt_t(summary['median_s'])} [{_fmt_t(summary['min_s'])}–"
            f"{_fmt_t(summary['max_s'])}]")


def _index(group):
    return {(r["variant"], r["k"], r["op"]): r for r in group["results"]}


def layer_rows(group):
    """Table rows of one layer group: one per (variant, k) with forward /
    backward / step summaries and speed-ups (baseline median / this median)."""
    idx = _index(group)

    def get(v, k, op):
        return idx.get((v, k, op))

    base = {b: {op: _med(get(b, None, op)) for op in ("forward", "backward", "step")}
            for b in ("torch", "numpy", "dense")}
    pairs = [(v, None) for v in ("torch", "numpy", "dense")]
    ks = sorted({r["k"] for r in group["results"] if r["k"] is not None})
    pairs += [(v, k) for k in ks for v in ("topk", "unified")]
    rows = []
    for v, k in pairs:
        if get(v, k, "backward") is None:
            continue
        fwd = get(v, k, "forward") or get("dense", None, "forward")
        bwd, stp = get(v, k, "backward"), get(v, k, "step")
        rows.append({"variant": v, "k": k, "forward": fwd, "forward_shared": v in ("topk",
                                                                                     "unified"),
                     "backward": bwd, "step": stp,
                     "bwd_vs_torch": speedup(base["torch"]["backward"], _med(bwd)),
                     "bwd_vs_numpy": speedup(base["numpy"]["backward"], _med(bwd)),
                     "bwd_vs_dense": speedup(base["dense"]["backward"], _med(bwd)),
                     "step_vs_torch": speedup(base["torch"]["step"], _med(stp)),
                     "step_vs_dense": speedup(base["dense"]["step"], _med(stp))})
    return rows


def _find_group(doc, shape, threads):
    for g in doc.get("layer") or []:
        if list(g["shape"]) == list(shape) and g["threads"] == threads:
            return g
    return None


def _e2e_find(doc, batch, threads, impl, mode, k=None, dropout=0.0):
    for r in doc.get("e2e") or []:
        if (r["batch"] == batch and r["threads"] == threads and r["impl"] == impl
                and r["mode"] == mode and (k is None or r["k"] == k)
                and float(r.get("dropout") or 0.0) == float(dropout)):
            return r
    return None


def headline(doc):
    """The ratios a reader looks for first: layer backward of meProp vs
    PyTorch dense at HEADLINE_LAYER shapes (most threads measured), and the
    end-to-end epoch time (vs torch's at the same batch and threads) and
    accuracy of every run at every thread count."""
    out = {"layer": [], "e2e": []}
    layer = doc.get("layer") or []
    if layer:
        tmax = max(g["threads"] for g in layer)
        for B, n_in, n_out, k in HEADLINE_LAYER:
            g = _find_group(doc, (B, n_in, n_out), tmax)
            if g is None:
                continue
            idx = _index(g)
            t_torch = _med(idx.get(("torch", None, "backward")))
            t_dense = _med(idx.get(("dense", None, "backward")))
            for v in ("topk", "unified"):
                r = idx.get((v, k, "backward"))
                if r is None:
                    continue
                out["layer"].append({"shape": [B, n_in, n_out], "k": k, "threads": tmax,
                                     "other_share": _share(g),
                                     "variant": v, "backward_s": r["median_s"],
                                     "torch_backward_s": t_torch, "dense_backward_s": t_dense,
                                     "vs_torch": speedup(t_torch, r["median_s"]),
                                     "vs_dense": speedup(t_dense, r["median_s"])})
    e2e = doc.get("e2e") or []
    for T in sorted({r["threads"] for r in e2e}):
        for batch in sorted({r["batch"] for r in e2e}):
            tr = _e2e_find(doc, batch, T, "torch", "dense")
            t_torch = _med(tr["summary"]["time_epoch"]) if tr else None
            for r in e2e:
                if r["batch"] != batch or r["threads"] != T:
                    continue
                t = _med(r["summary"]["time_epoch"])
                out["e2e"].append({"label": r["label"], "batch": batch, "threads": T,
                                   "epoch_s": t, "vs_torch": speedup(t_torch, t),
                                   "dev": r["best_dev"], "test": r["test_at_best_dev"],
                                   "epochs": r["epochs"], "other_share": _share(r)})
    return out


def reproduction_rows(doc):
    """The paper's layout (ICML Table 1/2, TKDE): per batch size, the paper's
    rows next to ours. backprop = hidden layers' Linear.backward per epoch;
    fwd+bwd = forward + backward of the whole step per epoch (Table 2's
    "overall"); epoch = training wall time per epoch, update included."""
    e2e = doc.get("e2e") or []
    if not e2e:
        return []
    tmin = min(r["threads"] for r in e2e)
    rows = []
    P = PAPER["icml_mnist_adam"]
    T = PAPER["tkde_mnist"]
    for batch in sorted({r["batch"] for r in e2e}):
        base = _e2e_find(doc, batch, tmin, "meprop_cpu", "dense")
        tb = _med(base["summary"]["time_hidden_backward"]) if base else None
        tfb = _med(base["summary"]["time_fwd_bwd"]) if base else None
        tep = _med(base["summary"]["time_epoch"]) if base else None
        if batch == P["batch"]:
            rows.append({"batch": batch, "source": "paper (ICML Table 1/2, C#, 1 thread)",
                         "run": "baseline h=500", "backprop_s": P["baseline"]["backprop_s"],
                         "fwd_bwd_s": P["baseline"]["fwd_bwd_s"], "test": P["baseline"]["test"]})
            rows.append({"batch": batch, "source": "paper (ICML Table 1/2, C#, 1 thread)",
                         "run": f"meProp k={P['k']}", "backprop_s": P["meprop"]["backprop_s"],
                         "backprop_speedup": P["meprop"]["backprop_speedup"],
                         "fwd_bwd_s": P["meprop"]["fwd_bwd_s"],
                         "fwd_bwd_speedup": P["baseline"]["fwd_bwd_s"] / P["meprop"]["fwd_bwd_s"],
                         "test": P["meprop"]["test"]})
        if batch == T["batch"]:
            rows.append({"batch": batch, "source": "paper (TKDE)", "run": "baseline h=500",
                         "test": T["baseline_test"]})
            rows.append({"batch": batch, "source": "paper (TKDE)",
                         "run": f"meProp k={T['meprop_k']}",
                         "backprop_speedup": T["meprop_backprop_speedup"]})
            rows.append({"batch": batch, "source": "paper (TKDE)",
                         "run": f"meSimp k={T['mesimp_k']} (width {T['mesimp_width']})",
                         "test": T["mesimp_test"]})
        for r in e2e:
            if r["batch"] != batch or r["threads"] != tmin:
                continue
            s = r["summary"]
            hb = _med(s["time_hidden_backward"])
            rows.append({"batch": batch, "source": f"this ({r['threads']} thread"
                         f"{'s' if r['threads'] > 1 else ''}, {r['epochs']} epoch"
                         f"{'s' if r['epochs'] > 1 else ''})", "run": r["label"],
                         "backprop_s": hb, "backprop_speedup": speedup(tb, hb),
                         "fwd_bwd_s": _med(s["time_fwd_bwd"]),
                         "fwd_bwd_speedup": speedup(tfb, _med(s["time_fwd_bwd"])),
                         "epoch_s": _med(s["time_epoch"]),
                         "epoch_speedup": speedup(tep, _med(s["time_epoch"])),
                         "dev": r["best_dev"], "test": r["test_at_best_dev"],
                         "hidden": r.get("final_hidden_sizes"), "other_share": _share(r)})
    return rows


def _md_table(header, rows, align=None):
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in r) + " |" for r in rows]
    return lines


def _la(v):
    return "n/a" if not v else " / ".join(f"{x:.2f}" for x in v)


def _machine_lines(doc):
    m = doc["machine"]
    torch_info = m.get("torch")
    ob = m.get("openblas_thread_timeout") or {}
    blas = m.get("blas") or {}
    lw = (doc.get("load") or {}).get("wait") or {}
    lines = [f"- date {m.get('date')}, command `{m.get('command')}`",
             f"- CPU {m.get('cpu_model')}: {m.get('nproc')} CPUs usable "
             f"({m.get('physical_cores')} physical cores reported), SIMD path "
             f"`{m.get('simd')}`",
             f"- meprop_cpu {m['meprop_cpu'].get('version')} (OpenMP "
             f"{m['meprop_cpu'].get('openmp')}), numpy {m.get('numpy')} with "
             f"{blas.get('library')} {blas.get('version')} ({blas.get('architecture')}), torch "
             + (f"{torch_info['version']} (MKL {torch_info['mkl']}, oneDNN {torch_info['mkldnn']})"
                if torch_info else "not used"),
             f"- OPENBLAS_THREAD_TIMEOUT={ob.get('value')}: {ob.get('how')}",
             f"- load average (1/5/15 min): before the wait {_la(lw.get('load_first'))}, "
             f"at start {_la(lw.get('load_last'))} (waited {lw.get('waited_s', 0):.0f} s of at "
             f"most {lw.get('max_wait_s', 0):.0f} s for < {lw.get('threshold')}"
             f"{'; TIMED OUT' if lw.get('timed_out') else ''}), at the end "
             f"{_la((doc.get('load') or {}).get('end'))}"]
    st = (doc.get("load") or {}).get("settle")
    if st:
        lines.append(f"- before each of {st['calls']} measurements: waited for a 1-s window with "
                     f"< {100 * st['share']:.0f}% CPU use by others (up to {st['per_call_s']:.0f} "
                     f"s each): {st['waited_s']:.0f} s in all, gave up {st['gave_up']} time(s)")
    git = m.get("git")
    if git:
        lines.append(f"- git {git.get('commit')}"
                     + (f" with {git['modified_files']} modified tracked file(s)"
                        if git.get("modified_files") else ""))
    return lines


def _layer_section(doc):
    cfg = doc["config"]
    lines = ["## Layer level", "",
             f"One linear layer `y = x W^T + b` (B, n_in, n_out); x and dy standard normal. "
             f"Median [min–max] of {cfg['repeats']} interleaved calls after {cfg['warmup']} "
             "warm-up rounds, every variant with the same thread count. backward = dx, dW, db "
             "(meProp: + top-k selection); step = forward + backward + Adam update "
             "(meProp: row-sparse Adam). The forward pass of topk / unified is the project's "
             "dense forward (the same kernel, timed once). speed-up vs X = median of X / median "
             "of the row.", ""]
    header = ["threads", "variant", "k", "forward", "backward", "step", "bwd vs torch",
              "bwd vs numpy", "bwd vs dense", "step vs torch", "step vs dense"]
    align = ["---:", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:",
             "---:"]
    shapes = []
    for g in doc.get("layer") or []:
        if g["shape"] not in shapes:
            shapes.append(g["shape"])
    for shape in shapes:
        groups = [g for g in doc["layer"] if g["shape"] == shape]
        lines += [f"### (B, n_in, n_out) = ({', '.join(map(str, shape))})", ""]
        rows = []
        for g in groups:
            for r in layer_rows(g):
                rows.append([g["threads"], r["variant"], "" if r["k"] is None else r["k"],
                             ("= dense" if r["forward_shared"] else _cell(r["forward"])),
                             _cell(r["backward"]), _cell(r["step"]),
                             _fmt_x(r["bwd_vs_torch"]), _fmt_x(r["bwd_vs_numpy"]),
                             _fmt_x(r["bwd_vs_dense"]), _fmt_x(r["step_vs_torch"]),
                             _fmt_x(r["step_vs_dense"])])
        lines += _md_table(header, rows, align)
        checks = {str(g["check"]) for g in groups}
        lines += ["", f"gradient check: {', '.join(sorted(checks))}; threads read back: "
                  + "; ".join(f"T={g['threads']}: {g['threads_applied']}" for g in groups)
                  + "; CPU time used by other processes while timing: "
                  + ", ".join(f"T={g['threads']}: {_fmt_share(_share(g))}" for g in groups), ""]
    return lines


def _e2e_section(doc):
    cfg = doc["config"]
    lines = ["## End to end: MNIST MLP 784-500-500-10", "",
             f"{cfg['epochs']} epoch(s) on {_n_train(doc)} training images, Adam lr 1e-3, seed "
             f"{cfg.get('seed', 0)}; the same data order, initial weights and threads for every "
             "run; dev after every epoch, test at the best dev (percent). Times are the median "
             "[min–max] over epochs of the per-epoch totals; epoch = training wall time "
             "(evaluation excluded); hidden bwd = time in the backward of the two hidden "
             "layers (Linear.backward, or the same work timed inside the fused C step; not "
             "measurable inside torch's autograd: n/a); forward / backward / update of a "
             "fused-step run are timed inside the C step, its Python share is in epoch only. "
             f"{cfg['e2e_warmup_steps']} untimed warm-up steps on a throwaway model first. "
             "others' CPU = share of the machine's CPU time used by other processes during "
             f"the run ((!) from {100 * BUSY_SHARE:.0f}%: the timing is not trustworthy, "
             "most of all with as many threads as CPUs). total = the whole training (the sum of "
             "its epoch times)" + (f"; each run was repeated {cfg['e2e_repeats']} times in "
                                   "rotated order: total is the median [min–max] over the "
                                   "repeats, accuracies are the first repeat's (the runs are "
                                   "deterministic)" if cfg.get("e2e_repeats", 1) > 1 else "")
             + ".", ""]
    header = ["batch", "threads", "run", "epoch", "forward", "backward", "hidden bwd", "update",
              "epoch vs torch", "epoch vs dense", "total", "total vs torch", "dev", "test",
              "hidden sizes", "others' CPU"]
    rows = []
    for r in doc.get("e2e") or []:
        s = r["summary"]
        tr = _e2e_find(doc, r["batch"], r["threads"], "torch", "dense")
        de = _e2e_find(doc, r["batch"], r["threads"], "meprop_cpu", "dense")
        t = _med(s["time_epoch"])
        rows.append([r["batch"], r["threads"], r["label"], _cell(s["time_epoch"]),
                     _fmt_t(_med(s["time_forward"])), _fmt_t(_med(s["time_backward"])),
                     _fmt_t(_med(s["time_hidden_backward"])), _fmt_t(_med(s["time_update"])),
                     _fmt_x(speedup(_med(tr["summary"]["time_epoch"]), t) if tr else None),
                     _fmt_x(speedup(_med(de["summary"]["time_epoch"]), t) if de else None),
                     _total_cell(r),
                     _fmt_x(speedup(tr.get("total_time_train"), r.get("total_time_train"))
                            if tr and r.get("total_time_train") else None),
                     _fmt_acc(r["best_dev"]), _fmt_acc(r["test_at_best_dev"]),
                     r.get("final_hidden_sizes"), _fmt_share(_share(r))])
    lines += _md_table(header, rows, ["---:", "---:", "---"] + ["---:"] * 11 + ["---", "---:"])
    return lines + [""]


def _total_cell(r):
    """The whole-training time: one run's, or median [min–max] over repeats."""
    totals = r.get("total_time_train_repeats") or []
    if len(totals) < 2:
        return _fmt_t(r.get("total_time_train"))
    return f"{_fmt_t(r['total_time_train'])} [{_fmt_t(min(totals))}–{_fmt_t(max(totals))}]"


def _n_train(doc):
    e2e = doc.get("e2e") or []
    return e2e[0]["n_train"] if e2e else "n/a"


def _repro_section(doc):
    rows = reproduction_rows(doc)
    if not rows:
        return []
    lines = ["## Reproduction table (the papers' MNIST layout)", "",
             "backprop = the hidden layers' backward per epoch (paper: the hidden linear "
             "layers' backward incl. top-k; here: time in the backward of both hidden "
             "layers, Linear.backward or its part of the fused step); fwd+bwd = forward + backward per epoch (ICML Table 2's overall time); "
             "epoch = training time per epoch incl. the optimizer update. Speed-ups are "
             "against the baseline of the same source (this project: its dense run at the same "
             "batch and threads). The paper trained 20 epochs single-threaded in C#; this "
             f"harness ran {doc['config']['epochs']} epoch(s), so accuracies are not final.", ""]
    header = ["batch", "source", "run", "backprop s/epoch", "backprop speed-up",
              "fwd+bwd s/epoch", "fwd+bwd speed-up", "epoch s", "epoch speed-up", "dev",
              "test", "hidden", "others' CPU"]

    def f(v, fmt):
        return "" if v is None else fmt.format(v)
    out = []
    for r in rows:
        out.append([r["batch"], r["source"], r["run"], f(r.get("backprop_s"), "{:.3g}"),
                    f(r.get("backprop_speedup"), "{:.1f}x"), f(r.get("fwd_bwd_s"), "{:.3g}"),
                    f(r.get("fwd_bwd_speedup"), "{:.1f}x"), f(r.get("epoch_s"), "{:.3g}"),
                    f(r.get("epoch_speedup"), "{:.2f}x"), f(r.get("dev"), "{:.2f}"),
                    f(r.get("test"), "{:.2f}"), r.get("hidden") or "",
                    _fmt_share(r["other_share"]) if "other_share" in r else ""])
    return lines + _md_table(header, out,
                             ["---:", "---", "---"] + ["---:"] * 8 + ["---", "---:"]) + [""]


def _threads_str(t):
    return f"{t} thread" + ("s" if t != 1 else "")


def _headline_lines(doc):
    h = headline(doc)
    lines = []
    for r in h["layer"]:
        B, n_in, n_out = r["shape"]
        head = (f"- layer backward ({B}, {n_in}, {n_out}), k={r['k']}, "
                f"{_threads_str(r['threads'])}: meProp {r['variant']} {_fmt_t(r['backward_s'])}")
        if r["vs_torch"] is not None:
            head += (f" vs torch dense {_fmt_t(r['torch_backward_s'])} = "
                     f"**{_fmt_x(r['vs_torch'])}** (vs this project's dense "
                     f"{_fmt_x(r['vs_dense'])})")
        else:
            head += (f" vs this project's dense {_fmt_t(r['dense_backward_s'])} = "
                     f"**{_fmt_x(r['vs_dense'])}** (torch not measured)")
        lines.append(head + _busy_note({"other_share": r["other_share"]}))
    if h["e2e"]:
        threads = sorted({r["threads"] for r in h["e2e"]})
        keys = []
        for r in h["e2e"]:
            if (r["batch"], r["label"]) not in keys:
                keys.append((r["batch"], r["label"]))
        keys.sort(key=lambda bk: bk[0])
        by = {(r["batch"], r["label"], r["threads"]): r for r in h["e2e"]}
        epochs = h["e2e"][0]["epochs"]
        lines += ["", f"MNIST 784-500-500-10, {epochs} epoch(s): training time per epoch "
                  "(speed-up over PyTorch at the same batch size and threads; (!) = other "
                  f"processes used >= {100 * BUSY_SHARE:.0f}% of the CPUs meanwhile), "
                  "dev and test accuracy (%, test at the best dev; from the first thread "
                  "count: this project's runs are bit-identical across thread counts, "
                  "PyTorch's may differ slightly)", ""]
        header = ["batch", "run"] + [f"{_threads_str(t)}: s/epoch (vs torch)" for t in threads] \
            + ["dev", "test"]
        rows = []
        for batch, label in keys:
            cells = []
            acc = None
            for t in threads:
                r = by.get((batch, label, t))
                if r is None:
                    cells.append("")
                    continue
                acc = acc or r
                vs = "" if label.startswith("torch") or r["vs_torch"] is None \
                    else f" ({_fmt_x(r['vs_torch'])})"
                busy = " (!)" if (r["other_share"] or 0.0) >= BUSY_SHARE else ""
                cells.append(f"{r['epoch_s']:.3g}{vs}{busy}")
            rows.append([batch, label] + cells + [_fmt_acc(acc["dev"]), _fmt_acc(acc["test"])])
        lines += _md_table(header, rows, ["---:", "---"] + ["---:"] * (len(threads) + 2))
    return lines


def render_markdown(doc, plots=()):
    """The markdown report of one benchmark JSON document."""
    lines = [f"# meprop_cpu benchmark: `{doc['name']}` ({doc['config']['name']} profile)", "",
             "Generated by `meprop_cpu.bench` from "
             f"`{doc['name']}.json`; do not edit by hand.", ""]
    lines += _machine_lines(doc) + [""]
    for note in doc.get("notes") or []:
        lines.append(f"- note: {note}")
    hl = _headline_lines(doc)
    if hl:
        lines += ["", "## Headline", ""] + hl
    lines.append("")
    lines += _repro_section(doc)
    if doc.get("e2e"):
        lines += _e2e_section(doc)
    if doc.get("layer"):
        lines += _layer_section(doc)
    if plots:
        lines += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                     for p in plots] + [""]
    return _tidy(lines)


def _tidy(lines):
    """Join markdown lines, at most one blank line in a row, one final newline."""
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def _load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def render_readme(results_dir):
    """README.md for a results directory: an index of every JSON file there
    (with its date and report) and the headline and reproduction table of
    every harness document (schema SCHEMA). Returns the markdown text."""
    names = sorted(n for n in os.listdir(results_dir) if n.endswith(".json"))
    ours, index = [], []
    for n in names:
        d = _load_json(os.path.join(results_dir, n))
        base = n[:-5]
        md = base + ".md" if os.path.exists(os.path.join(results_dir, base + ".md")) else None
        if isinstance(d, dict) and d.get("schema") == SCHEMA:
            ours.append((n, d))
            what = f"`meprop-cpu bench` ({d['config']['name']} profile)"
            date = d["machine"].get("date")
        elif isinstance(d, dict):
            meta = d.get("meta") if isinstance(d.get("meta"), dict) else {}
            mach = d.get("machine") if isinstance(d.get("machine"), dict) else {}
            what = str(d.get("benchmark") or d.get("name") or meta.get("benchmark")
                       or f"other (keys: {', '.join(list(d)[:4])})")
            date = d.get("date") or mach.get("date") or meta.get("date")
        else:
            what, date = "unreadable", None
        index.append([f"[{n}]({n})", what, date or "", f"[{md}]({md})" if md else ""])
    subdirs = sorted(n for n in os.listdir(results_dir)
                     if os.path.isdir(os.path.join(results_dir, n)))
    lines = ["# Benchmark results", "",
             "Generated from the JSON files in this directory by "
             "`meprop_cpu.bench.render_readme` (run `python benchmarks/report.py` or "
             "`meprop-cpu bench`); do not edit by hand. Speed-up of A over B = median time "
             "of B / median time of A.", "", "## Files", ""]
    lines += _md_table(["file", "what", "date", "report"], index)
    if subdirs:
        lines += ["", "Directories: " + ", ".join(f"[{d}/]({d}/)" for d in subdirs)]
    for n, d in ours:
        base = n[:-5]
        lines += ["", f"## {base} ({d['config']['name']} profile, {d['machine'].get('date')})",
                  "", f"Full report: [{base}.md]({base}.md).", ""]
        lines += _machine_lines(d)
        hl = _headline_lines(d)
        if hl:
            lines += ["", "### Headline", ""] + hl
        rep = _repro_section(d)
        if rep:
            lines += [""] + ["#" + ln if ln.startswith("## ") else ln for ln in rep]
        pngs = sorted(p for p in os.listdir(results_dir)
                      if p.startswith(base + "_") and p.endswith(".png"))
        if pngs:
            lines += ["", "### Plots", ""] + [f"![{p}]({p})" for p in pngs]
    return _tidy(lines)


# --------------------------------------------------------------------- plots

def make_plots(doc, outdir, prefix, results_dir=None):
    """PNG plots (speed-up vs k, speed-up vs threads, accuracy vs k, meSimp
    width over training). Returns the paths written; [] without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    paths = []

    def save(fig, name):
        p = os.path.join(outdir, f"{prefix}_{name}.png")
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    layer = doc.get("layer") or []
    shapes = []
    for g in layer:
        if g["shape"] not in shapes:
            shapes.append(g["shape"])
    if layer:
        tmax = max(g["threads"] for g in layer)
        fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 3.6), squeeze=False)
        for ax, shape in zip(axes[0], shapes):
            g = _find_group(doc, shape, tmax)
            if g is None:
                continue
            rows = layer_rows(g)
            for v, style in (("topk", "o-"), ("unified", "s-")):
                rs = [r for r in rows if r["variant"] == v]
                ks = [r["k"] for r in rs]
                for base, ls, name in (("torch", "-", "torch dense"),
                                       ("dense", "--", "meprop_cpu dense")):
                    ys = [r[f"bwd_vs_{base}"] for r in rs]
                    if any(y is not None for y in ys):
                        ax.plot(ks, [np.nan if y is None else y for y in ys], style[0] + ls,
                                label=f"{v} vs {name}")
            all_ks = sorted({r["k"] for r in rows if r["k"] is not None})
            if all_ks:
                ax.set_xscale("log", base=2)
                ax.set_xticks(all_ks, [str(k) for k in all_ks])
                ax.minorticks_off()
            ax.axhline(1.0, color="gray", lw=0.8)
            ax.set_yscale("log")
            ax.set_xlabel("k")
            ax.set_title(f"backward {tuple(shape)}, {tmax} thr", fontsize=9)
        axes[0][0].set_ylabel("speed-up (x)")
        axes[0][0].legend(fontsize=7)
        save(fig, "speedup_vs_k")

        threads = sorted({g["threads"] for g in layer})
        if len(threads) > 1:
            fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 3.6),
                                     squeeze=False)
            for ax, shape in zip(axes[0], shapes):
                ks = sorted({r["k"] for g in layer if g["shape"] == shape
                             for r in g["results"] if r["k"] is not None})
                kk = 20 if 20 in ks else (ks[0] if ks else None)
                for v, k in (("torch", None), ("numpy", None), ("dense", None), ("topk", kk),
                             ("unified", kk)):
                    ts = []
                    for T in threads:
                        g = _find_group(doc, shape, T)
                        r = _index(g).get((v, k, "backward")) if g else None
                        ts.append(r["median_s"] if r else None)
                    if ts[0] is None:
                        continue
                    ax.plot(threads, [np.nan if t is None else ts[0] / t for t in ts], "o-",
                            label=f"{v}" + (f" k={k}" if k else ""))
                ax.plot(threads, threads, ":", color="gray", label="linear")
                ax.set_xticks(threads)
                ax.set_xlabel("threads")
                ax.set_title(f"backward scaling {tuple(shape)}", fontsize=9)
            axes[0][0].set_ylabel("time(1 thread) / time(T)")
            axes[0][0].legend(fontsize=7)
            save(fig, "speedup_vs_threads")

    e2e = doc.get("e2e") or []
    if e2e:
        tmax = max(r["threads"] for r in e2e)
        batches = sorted({r["batch"] for r in e2e})
        fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 3.6),
                                 squeeze=False)
        for ax, batch in zip(axes[0], batches):
            rs = [r for r in e2e if r["batch"] == batch and r["threads"] == tmax]
            for mode, style in (("topk", "o-"), ("unified", "s-"), ("random", "x")):
                pts = sorted((r["k"], r["test_at_best_dev"]) for r in rs
                             if r["mode"] == mode and not r.get("dropout"))
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=mode)
            for r in rs:
                if r["mode"] == "mesimp" or r.get("dropout"):
                    ax.plot([r["k"]], [r["test_at_best_dev"]], "*", ms=10, label=r["label"])
                if r["mode"] == "dense":
                    ax.axhline(r["test_at_best_dev"], ls="--" if r["impl"] == "torch" else "-",
                               color="gray", lw=0.9, label=r["label"])
            ks = sorted({r["k"] for r in rs if r["k"] is not None})
            if ks:
                ax.set_xscale("log", base=2)
                ax.set_xticks(ks, [str(k) for k in ks])
                ax.minorticks_off()
            ax.set_xlabel("k")
            ax.set_ylabel("test accuracy at best dev (%)")
            ax.set_title(f"MNIST batch {batch}, {e2e[0]['epochs']} epoch(s)", fontsize=9)
            ax.legend(fontsize=7)
        save(fig, "accuracy_vs_k")

    widths, seen = [], set()
    for r in e2e:
        key = (r["label"], r["batch"])
        if r.get("width_log") and key not in seen:     # the same run at every thread count
            seen.add(key)
            widths.append((f"{r['label']} batch {r['batch']} ({r['epochs']} ep)", r["width_log"]))
    other = _load_json(os.path.join(results_dir, "mesimp_mnist.json")) if results_dir else None
    widths += _other_mesimp_logs(other)
    if widths:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for name, log in widths:
            steps = [g for g, _ in log]
            for li in range(len(log[0][1])):
                ax.step(steps, [s[li] for _, s in log], where="post",
                        label=f"{name}: hidden {li + 1}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("hidden width")
        ax.set_title("meSimp: hidden width during training", fontsize=9)
        ax.legend(fontsize=7)
        save(fig, "mesimp_width")
    return paths


def _other_mesimp_logs(doc, limit=3):
    """[(name, [[step, sizes], ...])] from benchmarks/mesimp_mnist.py's JSON
    (``runs`` a dict with a "mesimp" entry, or a list of per-seed dicts);
    [] for anything else."""
    if not isinstance(doc, dict):
        return []
    runs = doc.get("runs")
    runs = [runs] if isinstance(runs, dict) else runs if isinstance(runs, list) else []
    out = []
    for r in runs[:limit]:
        m = r.get("mesimp") if isinstance(r, dict) else None
        log = m.get("sizes_log") if isinstance(m, dict) else None
        if (isinstance(log, list) and log and all(isinstance(e, list) and len(e) == 2
                                                  and isinstance(e[1], list) for e in log)):
            seed = f", seed {r['seed']}" if "seed" in r else ""
            out.append((f"mesimp_mnist.json{seed}", log))
    return out


# --------------------------------------------------------------------- driver

def _atomic_write(path, text):
    from ._io import atomic_write
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


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


def _default_out():
    if os.path.isdir("benchmarks"):
        return os.path.join("benchmarks", "results")
    return "meprop_bench_results"


def _threads_list(text):
    try:
        ts = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated thread counts like 1,2, got {text!r}") from None
    if not ts or ts[0] < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return ts


# the option types the rest of the command line uses
from .cli import _nonneg_float, _nonneg_int, _positive_int as _pos_int  # noqa: E402


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
                        "with meSimp; fashion: Fashion-MNIST (see meprop_cpu.tta)")
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


def run_cli(args, parser=None, set_before_numpy=False, log=print):
    """Run the benchmark described by parsed ``args``; returns the exit code."""
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
        env[ENV_COMMAND] = " ".join(["meprop-cpu"] + sys.argv[1:]) \
            if os.path.basename(sys.argv[0]).startswith("meprop-cpu") else " ".join(sys.argv)
        cmd = [sys.executable, "-m", "meprop_cpu", "bench"] + _argv_from_args(parser, args)
        log(f"restarting with {ENV_TIMEOUT}={env[ENV_TIMEOUT]} (numpy's OpenBLAS reads it "
            "when it loads): " + " ".join(cmd[2:]))
        sys.stdout.flush()
        sys.stderr.flush()
        return subprocess.call(cmd, env=env)

    if args.tta:
        from . import tta
        return tta.run_cli(args, log=log)
    if args.profile == "contention":
        from .bench_contention import contention_cli
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
        from . import datasets
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
    p = argparse.ArgumentParser(prog="meprop-cpu bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    return run_cli(args, p, set_before_numpy=set_before_numpy)


if __name__ == "__main__":
    sys.exit(main())
