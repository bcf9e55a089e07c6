"""End-to-end benchmark only: MNIST MLP 784-500-500-10 training, this project
(dense, meProp top-k / unified, dropout, meSimp when available) vs the same MLP
in PyTorch, same threads / data order / initial weights.

A thin wrapper over ``meprop_cpu.bench`` (``meprop-cpu bench --skip-layer``);
every option of ``meprop-cpu bench`` works. Results go to
``benchmarks/results/e2e_<profile>.json`` / ``.md`` (unless ``--name``), plots
beside them, and ``benchmarks/results/README.md`` is regenerated.

    python benchmarks/bench_e2e.py --quick                # 1 epoch
    python benchmarks/bench_e2e.py --full --epochs 20     # the papers' 20 epochs
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
        argv += ["--name", "e2e_full" if "--full" in argv else "e2e_quick"]
    return bench.main(["--skip-layer"] + argv, set_before_numpy=_SET_BEFORE_NUMPY)


if __name__ == "__main__":
    sys.exit(main())
