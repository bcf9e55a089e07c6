"""Build and threading configuration: OpenMP status, thread count, show_config()."""
import os
import warnings

from . import _core, _omp_env

__all__ = ["show_config", "set_num_threads", "get_num_threads", "openmp_enabled"]


def _default_threads():
    """OMP_NUM_THREADS if set, else the CPUs this process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            n = int(env)
            if n >= 1:
                return n
        except ValueError:
            pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# auto: no OMP_NUM_THREADS and no set_num_threads(n); a Trainer then chooses
# its thread count from measured step times (see _thread_tuner)
_state = {"threads": _default_threads() if _core.openmp_enabled() else 1,
          "auto": not os.environ.get("OMP_NUM_THREADS", "").strip()}

if not _core.openmp_enabled():
    warnings.warn("meprop_cpu was built without OpenMP: kernels run on one thread. "
                  "Rebuild with a compiler that supports -fopenmp (and without "
                  "MEPROP_NO_OPENMP) to use every core.", RuntimeWarning, stacklevel=2)


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return _core.openmp_enabled()


def set_num_threads(n):
    """Set the number of threads the kernels use (an int >= 1), or "auto".

    A number fixes the count everywhere, training included. "auto" (the
    default unless OMP_NUM_THREADS is set) uses every CPU this process may
    run on, except that a Trainer times its steps at a few thread counts and
    keeps the fastest, re-checking as it goes, so training does not slow down
    when other processes compete for the cores (results are bit-identical
    for any thread count).

    Without OpenMP any n is accepted and the kernels stay serial. BLAS threads
    (numpy's matrix products in the forward pass) are not changed here; use
    threadpoolctl or OPENBLAS_NUM_THREADS / MKL_NUM_THREADS for those.
    """
    if isinstance(n, str) and n == "auto":
        _state["threads"] = _default_threads_cpus() if openmp_enabled() else 1
        _state["auto"] = True
        return
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads: n must be an int >= 1 or 'auto', "
                        f"got {type(n).__name__}")
    n = int(n.__index__())
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    if n > 4096:
        raise ValueError(f"set_num_threads: n={n} is absurd (at most 4096)")
    _state["threads"] = n if openmp_enabled() else 1
    _state["auto"] = False


def get_num_threads():
    """The number of threads the kernels use."""
    return _state["threads"]


def _default_threads_cpus():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _auto_threads():
    """The most threads an automatic choice may use, or None when the count is fixed."""
    if not _state["auto"] or not openmp_enabled():
        return None
    return _default_threads_cpus()


def _use_threads(n):
    """Set the count for the next kernel calls without fixing it (the Trainer's tuner)."""
    _state["threads"] = int(n) if openmp_enabled() else 1


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
        libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if libs:
            i = libs[0]
            return {"library": i.get("internal_api"), "version": i.get("version"),
                    "num_threads": i.get("num_threads"),
                    "architecture": i.get("architecture")}
    except Exception:
        pass
    try:
        import numpy as np
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        return {"library": blas.get("name"), "version": blas.get("version"),
                "num_threads": None, "architecture": None}
    except Exception:
        return {"library": "unknown", "version": None, "num_threads": None, "architecture": None}


def show_config(print_out=False):
    """Return (and optionally print) the build and runtime configuration."""
    from . import __version__
    cfg = {
        "version": __version__,
        "openmp": openmp_enabled(),
        "num_threads": get_num_threads(),
        "simd": _core.simd_name(),
        "blas": _blas_info(),
        "parallel_min_work": _core.parallel_min_work(),
        "thread_choice": ("auto: Trainer picks from measured step times" if _auto_threads()
                          else "fixed (set_num_threads / OMP_NUM_THREADS)"),
        "omp_wait_policy": _omp_env.status(),
    }
    if print_out:
        for key, val in cfg.items():
            print(f"{key:18s} {val}")
    return cfg
