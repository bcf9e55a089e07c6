"""Layer-level benchmark only: forward, backward and a training step of one
linear layer for meProp (per-example and unified top-k), this project's dense
path, numpy and PyTorch, over k, shapes and thread counts.

A thin wrapper over ``meprop_cpu.bench`` (``meprop-cpu bench --skip-e2e``);
every option of ``meprop-cpu bench`` works. Results go to
``benchmarks/results/layer_<profile>.json`` / ``.md`` (unless ``--name``), plots
beside them, and ``benchmarks/results/README.md`` is regenerated.

    python benchmarks/bench_layer.py --quick
    python benchmarks/bench_layer.py --full --threads 1,2
"""
import os
import sys

# OpenBLAS reads this once, when numpy loads it: set it before numpy is imported
# (numpy's idle BLAS threads otherwise spin and steal cores from OpenMP calls).
_SET_BEFORE_NUMPY = "numpy" not in sys.modules
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    from meprop_cpu import bench
    if not any(a == "--name" or a.startswith("--name=") for a in argv):
        argv += ["--name", "layer_full" if "--full" in argv else "layer_quick"]
    return bench.main(["--skip-e2e"] + argv, set_before_numpy=_SET_BEFORE_NUMPY)


if __name__ == "__main__":
    sys.exit(main())
