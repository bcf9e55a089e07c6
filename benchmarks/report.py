"""Regenerate the reports from the JSON results, measuring nothing.

Rewrites ``<name>.md`` and the PNG plots (when matplotlib is importable) of every
``meprop-cpu bench`` JSON document in the results directory, and README.md,
an index of every JSON file there with the headline and reproduction tables.

    python benchmarks/report.py                      # benchmarks/results
    python benchmarks/report.py --out DIR --no-plots
"""
import os
import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    from meprop_cpu import bench
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")]
    return bench.main(["--report-only"] + argv)


if __name__ == "__main__":
    sys.exit(main())
