"""How the kernels' OpenMP threads wait between parallel regions.

GCC's OpenMP runtime (libgomp) reads ``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT``
once, when it loads, which happens when meprop_cpu imports its compiled
kernels. Unless the user set either variable, this module sets
:data:`POLICY` in the environment just before that import and removes it
again right after, so the setting reaches this library's runtime only (not
PyTorch's own copy of libgomp, not child processes).

Why a short spin: a training step at batch 10 is a dozen short parallel
regions, each ending at a barrier that waits for the slowest thread. With
libgomp's default (spin ~300,000 times, a few milliseconds, before sleeping)
the waiting threads burn their time slices, and when another process
competes for the cores, the thread the scheduler took away stalls every
region for a scheduler quantum: 2-thread training on 2 busy cores ran 3-10x
slower than 1-thread training. Sleeping at once (``OMP_WAIT_POLICY=passive``)
avoids that but pays a wake-up per region on a quiet machine. A spin of
10,000 iterations (~tens of microseconds) covers the gaps between the
regions of one step and then sleeps. Measured on the 2-core VM
(benchmarks/results/wait_policy_quiet.md, wait_policy_contention.md, with
the Trainer's automatic thread count): quiet, spin 10k was 0.99x / 0.88x /
0.96x the time of libgomp's default at 2 threads (MNIST epoch at batch 10 /
batch 100 / one layer's backward) where passive was 1.24x / 1.14x / 1.25x;
with one busy process, spin 10k took 1.23x the best fixed thread count
(passive 1.31x, libgomp's default at 2 threads 3.4x). First measurements:
benchmarks/results/samples/wait_policy_first/README.md; to compare the
policies on a machine: ``python benchmarks/wait_policy.py contention`` and
``... quiet``, and ``meprop-cpu bench --contention``.

Override: set ``OMP_WAIT_POLICY`` (``active`` / ``passive``) or
``GOMP_SPINCOUNT`` yourself before importing meprop_cpu; then nothing is
changed. ``meprop_cpu.show_config()["omp_wait_policy"]`` says what is in force.
"""
import os

__all__ = ["POLICY", "USER_KEYS", "apply", "restore", "status"]

#: what the library sets when the user set none of USER_KEYS
POLICY = {"GOMP_SPINCOUNT": "10000"}
#: variables through which the user controls the wait policy (any one set: hands off)
USER_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

_status = {"source": None, "env": {}, "note": None}


def _runtime_loaded(maps="/proc/self/maps"):
    """True / False when /proc says whether libgomp is already mapped, else None."""
    try:
        with open(maps, "r", encoding="utf-8", errors="replace") as f:
            return any("libgomp" in line for line in f)
    except OSError:
        return None


def apply(environ=None, maps="/proc/self/maps"):
    """Put POLICY into ``environ`` (default os.environ) unless the user set a
    wait variable. Returns the keys it added (pass them to :func:`restore`)."""
    environ = os.environ if environ is None else environ
    user = {k: environ[k] for k in USER_KEYS if environ.get(k, "").strip()}
    if user:
        _status.update(source="user", env=user,
                       note="set by the user's environment; the library changed nothing")
        return []
    _status.update(source="meprop_cpu", env=dict(POLICY), note=None)
    if _runtime_loaded(maps):
        _status.update(note="libgomp was loaded before meprop_cpu (by another module), so it "
                            "runs with its own defaults; set OMP_WAIT_POLICY=passive before "
                            "starting Python to apply the policy")
        _status["source"] = "not applied"
        return []
    added = [k for k in POLICY if k not in environ]
    for k in added:
        environ[k] = POLICY[k]
    return added


def restore(added, environ=None):
    """Remove the keys :func:`apply` added (after the runtime has read them)."""
    environ = os.environ if environ is None else environ
    for k in added:
        environ.pop(k, None)


def status():
    """{"source": "meprop_cpu" | "user" | "not applied", "env": {...}, "note": ...}."""
    return {"source": _status["source"], "env": dict(_status["env"]), "note": _status["note"]}
