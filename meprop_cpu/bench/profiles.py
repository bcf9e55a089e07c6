"""What each profile of ``meprop-cpu bench`` measures: the layer shapes, ks and
thread counts, the end-to-end runs (:func:`e2e_runs`, :func:`profile`), and the
papers' MNIST numbers the reports compare against (:data:`PAPER`)."""
import os

SEED = 1234

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
