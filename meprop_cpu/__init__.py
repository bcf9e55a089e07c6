"""meprop_cpu: meProp (top-k sparsified backprop) and meSimp on multicore CPUs."""
__version__ = "0.5.0"

from . import _omp_env

# the OpenMP runtime reads its wait policy when the kernels load (see _omp_env)
_added = _omp_env.apply()
try:
    from ._config import get_num_threads, openmp_enabled, set_num_threads, show_config
finally:
    _omp_env.restore(_added)
    del _added
from . import _compat, kernels
from .kernels import RowGrad

_compat.install()

__all__ = ["__version__", "show_config", "set_num_threads", "get_num_threads",
           "openmp_enabled", "kernels", "RowGrad"]
