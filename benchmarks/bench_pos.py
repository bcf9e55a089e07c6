"""The LSTM POS-tagger benchmark: ``meprop-cpu bench --pos`` (the code is
meprop_cpu/bench/pos.py; its docstring lists the arguments). This script takes
the same arguments:

    python benchmarks/bench_pos.py speed --threads 1,2 --out benchmarks/results/pos/speed
"""
import os
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # before numpy loads

from meprop_cpu.bench.pos import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
