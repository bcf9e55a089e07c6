"""The dependency-parser benchmark: ``meprop-cpu bench --parse`` (the code is
meprop_cpu/bench/parse.py; its docstring lists the options). This script takes
the same options:

    python benchmarks/bench_parse.py --part speed --threads 2 --repeats 1 --name speed_2t
"""
import os
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # before numpy loads

from meprop_cpu.bench.parse import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
