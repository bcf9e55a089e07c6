"""The machine and the conditions of a measurement.

* environment: the machine description (:func:`machine_info`), whether
  ``OPENBLAS_THREAD_TIMEOUT`` is in effect (:func:`openblas_timeout_status`,
  :func:`needs_relaunch`), the optional imports (torch, threadpoolctl);
* load: waiting for a quiet machine (:func:`wait_for_quiet`, :class:`Settler`),
  the CPU time other processes took during a measurement (:class:`CpuMonitor`)
  and what counts as a busy measurement (:data:`BUSY_SHARE`);
* threads: the same thread count for every pool (:class:`ThreadSetting`,
  :func:`default_thread_controls`).
"""
import datetime
import os
import platform
import subprocess
import sys
import time

import numpy as np

from .profiles import _nproc

ENV_TIMEOUT = "OPENBLAS_THREAD_TIMEOUT"
ENV_RELAUNCHED = "MEPROP_BENCH_RELAUNCHED"
ENV_COMMAND = "MEPROP_BENCH_COMMAND"


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
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def command_line():
    """How this process was started, as a user would type it: ``meprop-cpu ...``
    for the console script, ``python -m meprop_cpu ...`` for the module,
    ``python SCRIPT ...`` otherwise."""
    argv0 = sys.argv[0] if sys.argv else ""
    rest = sys.argv[1:]
    if os.path.basename(argv0).startswith("meprop-cpu"):
        return " ".join(["meprop-cpu"] + rest)
    if argv0.replace(os.sep, "/").endswith("meprop_cpu/__main__.py"):
        return " ".join(["python -m meprop_cpu"] + rest)
    return " ".join(["python", argv0] + rest)


def machine_info(torch_mod=None, set_before_numpy=False, command=None):
    """A JSON-able description of the machine, libraries and environment."""
    import meprop_cpu
    cpu = _cpu_info()
    info = {"date": _now(),
            "command": command or os.environ.get(ENV_COMMAND) or command_line(),
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


def _busy(rec):
    sh = _share(rec)
    return sh is not None and sh >= BUSY_SHARE


def _quieter(a, b):
    """The measurement (a or b) during which other processes used less CPU."""
    if a is None:
        return b
    return b if (_share(b) if _share(b) is not None else 1.0) < \
        (_share(a) if _share(a) is not None else 1.0) else a


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
