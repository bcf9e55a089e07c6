"""The benchmark harness behind ``meprop-cpu bench`` and ``benchmarks/*.py``.

Two levels are measured, with one protocol:

**Layer level** (:func:`run_layer`) - one linear layer ``y = x W^T + b`` with
``x`` (B, n_in) and ``W`` (n_out, n_in), standard-normal ``x`` and ``dy``:

==========  ===============================================================
forward     ``y = x W^T + b``
backward    the layer's backward for a given ``dy``: ``dx``, ``dW`` and ``db``;
            for meProp this includes the top-k selection
step        forward + backward + the optimizer update (Adam, lr 1e-3)
==========  ===============================================================

for the variants

* ``topk``    - meProp, per-example top-k: ``nn.Linear(mode="topk")`` with
  row-sparse Adam (``optim.Adam(sparse=True)``, the project's fast choice);
* ``unified`` - meProp, one top-k set per batch (``mode="unified"``), same Adam;
* ``dense``   - this project's dense path (``mode="dense"``: its own OpenMP
  products), Adam over the dense gradient;
* ``numpy``   - ``x @ W.T + b``, ``dy @ W``, ``dy.T @ x``, ``dy.sum(0)`` through
  numpy's BLAS, and a numpy Adam (PyTorch's formula, in place);
* ``torch``   - ``torch.nn.Linear`` with autograd (forward builds the graph;
  backward is ``torch.autograd.grad`` of the output w.r.t. input, weight and
  bias) and ``torch.optim.Adam`` for the step (``fused=True``, torch's fastest
  CPU Adam, when this torch supports it).

The forward pass is the same dense kernel in every mode of this project, so it
is timed once (variant ``dense``). Variants share ``W``, ``b`` and (for this
project) the optimizer state, to save memory at large shapes: the values do
not change what is computed per call, hence not the timing. Before timing,
each variant's gradients are checked against a numpy reference.

**End to end** (:func:`run_e2e`) - the MNIST MLP 784-500-500-10 trained for a
fixed number of epochs with :class:`~meprop_cpu.train.Trainer` (dense, meProp
top-k, unified, optionally dropout, meSimp when :mod:`meprop_cpu.simplify` is
usable) and the same MLP in PyTorch (same initial weights, copied; Adam lr
1e-3; same batch size, epochs, threads and data order from the same seeded
permutations; the papers' protocol: dev after every epoch, test at the best
dev). Per epoch: forward / backward / update / epoch wall time and, for this
project, the time spent in ``Linear.backward`` of the hidden layers (a timer
wrapped around each hidden layer's ``backward`` method: top-k selection,
``dx`` - the first layer computes none -, the row-sparse ``dW`` and ``db``).
That is the papers' "backprop time" and feeds the reproduction table.

Protocol
    * the same thread count T for every variant: ``meprop_cpu.set_num_threads``,
      ``torch.set_num_threads`` and ``threadpoolctl.threadpool_limits(T)`` (numpy's
      BLAS and every OpenMP runtime) are applied once per group, recorded, and
      checked again after the group (:class:`ThreadSetting`);
    * warm-up calls, then interleaved repeats: every repeat runs each variant
      once, the starting variant rotating (A B C, B C A, C A B, ...), so slow
      drifts of the machine hit every variant alike (:func:`interleave`);
    * medians with min, max and quartiles of single-call times (:func:`summarize`);
      speed-up of X over Y = median(Y) / median(X) (:func:`speedup`);
    * before measuring, wait (bounded) until the 1-minute load average is
      below a threshold (:func:`wait_for_quiet`); before each measurement, wait
      (bounded) for a 1-second window in which other processes use < 5% of the
      CPUs (:class:`Settler`); during each measurement, record the share of the
      machine's CPU time other processes used (:class:`CpuMonitor`, from
      /proc/stat) and measure again (``--retries``) when it is >= 5%, keeping
      the quietest attempt; the reports flag busy measurements with (!). With
      as many threads as CPUs an OpenMP team is badly slowed by any other
      process (a thread descheduled at a barrier stalls the team), so those
      flags matter most there;
    * machine description (:func:`machine_info`): CPU model, cores, SIMD path,
      BLAS library and threads, numpy / torch versions, environment, git state.

numpy's OpenBLAS threads spin after each call and steal the cores from the
next OpenMP call (measured on 2 cores), so ``OPENBLAS_THREAD_TIMEOUT=4`` must
be in the environment when numpy loads OpenBLAS. ``meprop-cpu bench`` starts
the measuring process again with it set when it was not in the process's
initial environment; scripts set it before importing numpy. Whether it took
effect is recorded (``machine["openblas_thread_timeout"]``).

Output: ``<out>/<name>.json`` (schema :data:`SCHEMA`), ``<name>.md``, PNG plots
when matplotlib is importable, and ``<out>/README.md`` regenerated from every
JSON file there (:func:`render_readme`).

Modules
    * :mod:`.profiles` - what each profile measures (shapes, ks, threads, the
      end-to-end runs) and the papers' numbers (:data:`PAPER`);
    * :mod:`.environment` - the machine description, OPENBLAS_THREAD_TIMEOUT,
      the load (:func:`wait_for_quiet`, :class:`CpuMonitor`, :class:`Settler`)
      and the thread pools (:class:`ThreadSetting`);
    * :mod:`.timing` - :func:`interleave`, :func:`summarize`, :func:`speedup`;
    * :mod:`.layers` - the layer level (:func:`layer_variants`, :func:`run_layer`);
    * :mod:`.end_to_end` - the MNIST trainings, this project's and PyTorch's
      (:func:`train_meprop`, :func:`train_torch`, :func:`run_e2e`);
    * :mod:`.report` - tables, markdown and README.md of the results, and
      writing result files;
    * :mod:`.plots` - the PNG plots (:func:`make_plots`);
    * :mod:`.driver` - the ``meprop-cpu bench`` command line (:func:`add_parser`,
      :func:`run_cli`, :func:`main`);
    * :mod:`.tta` - ``bench --tta``: time to accuracy;
    * :mod:`.contention` - ``bench --contention``: training while other
      processes compete for the CPUs.

The names below are re-exported here; a test or script that replaces a
function must patch it in the module that uses it.
"""
from .driver import add_arguments, add_parser, build_doc, main, run_cli, write_outputs
from .end_to_end import (HiddenBackwardTimer, mesimp_available, run_e2e, train_meprop,
                         train_torch)
from .environment import (CpuMonitor, Settler, ThreadSetting, default_thread_controls,
                          machine_info, openblas_timeout_status, wait_for_quiet)
from .layers import check_layer_variants, layer_variants, run_layer, run_layer_group
from .plots import make_plots
from .profiles import PAPER, PROFILES, e2e_runs, profile
from .report import (SCHEMA, headline, layer_rows, render_markdown, render_readme,
                     reproduction_rows)
from .timing import interleave, speedup, summarize

# also used by the tests and benchmarks/*.py
from .driver import report_only  # noqa: F401
from .end_to_end import _torch_adam, _torch_mlp  # noqa: F401
from .environment import (BUSY_SHARE, ENV_COMMAND, ENV_RELAUNCHED, ENV_TIMEOUT,  # noqa: F401
                          needs_relaunch)
from .profiles import SEED, _nproc  # noqa: F401

__all__ = ["SCHEMA", "PROFILES", "PAPER", "profile", "interleave", "summarize", "speedup",
           "wait_for_quiet", "CpuMonitor", "Settler", "ThreadSetting",
           "default_thread_controls", "machine_info",
           "openblas_timeout_status", "layer_variants", "check_layer_variants",
           "run_layer_group", "run_layer", "e2e_runs", "run_e2e", "train_meprop",
           "train_torch", "HiddenBackwardTimer", "mesimp_available", "layer_rows",
           "headline", "reproduction_rows", "render_markdown", "render_readme",
           "make_plots", "write_outputs", "build_doc", "add_arguments", "add_parser",
           "run_cli", "main"]
