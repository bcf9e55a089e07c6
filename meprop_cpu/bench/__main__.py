"""``python -m meprop_cpu.bench``: the benchmark harness (see :func:`.driver.main`)."""
import sys

from .driver import main

sys.exit(main())
