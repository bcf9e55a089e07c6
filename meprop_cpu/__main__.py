"""`python -m meprop_cpu` runs the meprop-cpu command line."""
from .cli import main

raise SystemExit(main())
