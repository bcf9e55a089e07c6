"""meprop_cpu: meProp (top-k sparsified backprop) and meSimp on multicore CPUs."""
__version__ = "0.3.0"

from ._config import get_num_threads, openmp_enabled, set_num_threads, show_config
from . import kernels
from .kernels import RowGrad

__all__ = ["__version__", "show_config", "set_num_threads", "get_num_threads",
           "openmp_enabled", "kernels", "RowGrad"]
