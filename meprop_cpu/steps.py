"""One training step behind one interface, two ways.

``step_rows(X, y, idx) -> (loss, t_forward, t_backward, t_update)`` trains on
the batch ``X[idx], y[idx]`` (seconds per phase). A non-finite loss is
returned with nothing changed, for the caller to report; a NaN / Inf met by a
top-k raises FloatingPointError.

* :class:`ModuleStep`: the module path (``model.forward``, the loss,
  ``model.backward``, ``optimizer.step``): any model, loss and optimizer;
* :class:`~meprop_cpu.fused.FusedStep`: the same step in one C call for an
  MLP that qualifies (:func:`~meprop_cpu.fused.unsupported`), bit-identical
  to the module path (each layer's backward is the same C entry point,
  ``mp_layer_backward``). Its ``step_rows`` returns None, with nothing done,
  once a callback has made the model unfit for it.

:func:`make_step` picks one; the Trainer and the benchmarks use them.
"""
import math
import time

from . import fused

__all__ = ["ModuleStep", "make_step"]


class ModuleStep:
    """The module path of one training step (see the module docstring)."""

    def __init__(self, model, optimizer, loss):
        self.model, self.optimizer, self.loss = model, optimizer, loss

    def step(self, xb, yb):
        """One step on the batch (xb, yb)."""
        pc = time.perf_counter
        t0 = pc()
        loss = self.loss.forward(self.model.forward(xb), yb)
        t1 = pc()
        if not math.isfinite(loss):
            return loss, t1 - t0, 0.0, 0.0
        self.model.backward(self.loss.backward())
        t2 = pc()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss, t1 - t0, t2 - t1, pc() - t2

    def step_rows(self, X, y, idx):
        return self.step(X[idx], y[idx])


def make_step(model, optimizer, loss, max_batch, use_fused=True):
    """A FusedStep when ``use_fused`` and the model, optimizer and loss qualify,
    else a ModuleStep."""
    if use_fused and fused.unsupported(model, optimizer, loss) is None:
        return fused.FusedStep(model, optimizer, max_batch)
    return ModuleStep(model, optimizer, loss)
