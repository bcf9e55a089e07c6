"""SGD, AdaGrad and Adam over dense and row-sparse gradients.

With ``sparse=True`` (the default) a weight whose gradient is a
:class:`~meprop_cpu.kernels.RowGrad` is updated only on ``grad.rows``: those
rows of the weight and of its optimizer state are read and written, every
other row is left bit-for-bit unchanged. This is the semantics of PyTorch's
``SparseAdam``; it differs from dense Adam in that rows without gradient keep
their moments frozen instead of decaying them, and do not move (dense Adam
keeps moving a weight on its old momentum even when its gradient is zero).
Adam's bias correction uses the parameter's step count, as both PyTorch
optimizers do.

``sparse=False`` reproduces the papers: the row gradient is expanded to a
dense one and every weight and every moment is updated each step.

Bias vectors (dense gradients) are always updated densely. The updates are C
kernels (include/meprop/optim.h), parallel over rows when the work pays, run
with subnormal floats flushed to zero (FTZ + DAZ, set around the update only):
a moment that keeps decaying, as those of weights whose input is always zero
do, otherwise reaches the subnormal range within ~800 updates, where x86
cores slow every operation on it by a microcode assist (an MNIST MLP's epoch
ran 2-3x slower by its second epoch on an Intel Xeon). Only values below
1.2e-38 differ (they become 0).
"""
import numbers

import numpy as np

from . import _core
from ._config import get_num_threads
from .kernels import RowGrad, Workspace

__all__ = ["Optimizer", "SGD", "AdaGrad", "Adam"]

_SGD, _ADAGRAD, _ADAM = 0, 1, 2


def _check_float(v, name, who, lo=0.0, lo_open=False, hi=None):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{who}: {name} must be a number, got {type(v).__name__} ({v!r})")
    v = float(v)
    if not np.isfinite(v) or (v <= lo if lo_open else v < lo) or (hi is not None and v >= hi):
        rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'})"
        raise ValueError(f"{who}: {name} must be finite and in {rng}, got {v}")
    return v


class Optimizer:
    """Base class: holds parameters, per-parameter state and hyper-parameters."""

    _kind = None
    _n_state = 0

    def __init__(self, params, lr, *, clip=0.0, weight_decay=0.0, sparse=True):
        who = type(self).__name__
        params = list(params)
        if not params:
            raise ValueError(f"{who}: params is empty (pass model.parameters())")
        for i, p in enumerate(params):
            if not hasattr(p, "data") or not hasattr(p, "grad"):
                raise TypeError(f"{who}: params[{i}] is a {type(p).__name__}, not a Parameter")
        self.params = params
        self.lr = _check_float(lr, "lr", who, 0.0, lo_open=True)
        self.clip = _check_float(clip, "clip", who)
        self.weight_decay = _check_float(weight_decay, "weight_decay", who)
        self.sparse = bool(sparse)
        self.state = {}
        self.steps = 0
        self._scratch = Workspace()

    # -- what the fused step reads ---------------------------------------------
    @property
    def kind(self):
        """The update rule's number in the C kernels (MP_OPT_SGD / ADAGRAD / ADAM)."""
        return self._kind

    @property
    def n_state(self):
        """State arrays per parameter (0-2), each shaped like the parameter."""
        return self._n_state

    def kernel_args(self):
        """(kind, lr, momentum, eps, beta1, beta2, weight_decay, clip): the update's
        arguments that do not depend on the step count (the C step derives the
        step-dependent ones with mp_step_args, as _args does here)."""
        mom, eps, b1, b2 = self._args(1)[:4]
        return (self._kind, self.lr, mom, eps, b1, b2, self.weight_decay, self.clip)

    # -- state -------------------------------------------------------------
    def state_for(self, p):
        """The state dict {"step", "arrays"} of parameter p, made (zeroed) on first
        use or when p's shape changed."""
        st = self.state.get(id(p))
        if st is None or st["arrays"] and st["arrays"][0].shape != p.data.shape:
            st = {"step": 0, "arrays": [np.zeros_like(p.data) for _ in range(self._n_state)]}
            self.state[id(p)] = st
        return st

    @staticmethod
    def _state_views(st):
        """The state arrays as the kernel's (s1, s2) 2-D views, made once per state
        dict (every path that replaces the arrays makes a new dict; resets that keep
        the step counts zero the arrays in place)."""
        v = st.get("views")
        if v is None:
            arrs = [a if a.ndim == 2 else a.reshape(1, -1) for a in st["arrays"]]
            v = st["views"] = (arrs[0] if len(arrs) > 0 else None,
                               arrs[1] if len(arrs) > 1 else None)
        return v

    def reset_state(self, keep_steps=False):
        """Forget all moments / accumulators and step counts (meSimp does this per cycle).

        keep_steps=True zeroes the moments / accumulators in place but keeps each
        parameter's step count, so Adam's bias correction goes on from where it
        was (what the meSimp authors' code does; see CycleSchedule)."""
        if not keep_steps:
            self.state = {}
            return
        for st in self.state.values():
            for a in st["arrays"]:
                a[...] = 0.0

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def state_dict(self):
        out = {"kind": type(self).__name__, "hyper": self._hyper(), "steps": self.steps,
               "params": []}
        for p in self.params:
            st = self.state.get(id(p))
            out["params"].append(None if st is None else
                                 {"step": st["step"], "arrays": [a.copy() for a in st["arrays"]]})
        return out

    def load_state_dict(self, sd):
        who = type(self).__name__
        if sd.get("kind") != who:
            raise ValueError(f"{who}.load_state_dict: state is for {sd.get('kind')!r}")
        if len(sd["params"]) != len(self.params):
            raise ValueError(f"{who}.load_state_dict: state has {len(sd['params'])} parameters, "
                             f"the optimizer {len(self.params)}")
        new = {}
        for i, (p, st) in enumerate(zip(self.params, sd["params"])):
            if st is None:
                continue
            arrays = [np.ascontiguousarray(a, dtype=np.float32).copy() for a in st["arrays"]]
            if len(arrays) != self._n_state or any(a.shape != p.data.shape for a in arrays):
                raise ValueError(f"{who}.load_state_dict: state of parameter {i} does not match "
                                 f"its shape {p.data.shape}")
            new[id(p)] = {"step": int(st["step"]), "arrays": arrays}
        self.state = new
        self.steps = int(sd.get("steps", 0))
        for key, val in sd.get("hyper", {}).items():
            setattr(self, key, val)

    def _hyper(self):
        return {"lr": self.lr, "clip": self.clip, "weight_decay": self.weight_decay}

    def remap_state(self, old, new, keep_rows=None, keep_cols=None):
        """Move ``old``'s state to parameter ``new`` keeping the given rows / columns
        (meSimp's physical compaction). Used together with swapping p.data."""
        st = self.state.pop(id(old), None)
        if st is None:
            return
        arrays = []
        for a in st["arrays"]:
            if keep_rows is not None:
                a = a[keep_rows]
            if keep_cols is not None:
                a = a[:, keep_cols]
            arrays.append(np.ascontiguousarray(a))
        self.state[id(new)] = {"step": st["step"], "arrays": arrays}

    # -- update --------------------------------------------------------------
    def _args(self, step):
        """(momentum, eps, beta1, beta2, step_size, inv_sqrt_bc2) for the kernel."""
        raise NotImplementedError

    def step(self):
        """Apply one update from every parameter's current ``grad`` (None: skipped).

        Every gradient is checked (shape, row indices in range and strictly
        ascending) before any parameter changes, so a bad gradient raises
        ValueError / TypeError and leaves weights, state and step counts as
        they were. Gradient values are not scanned for NaN/Inf (that would cost
        a pass over them every step): the Trainer detects divergence."""
        nt = get_num_threads()
        work = [(p,) + self._prepare(p) for p in self.params if p.grad is not None]
        self.steps += 1
        for p, w2, rows, v2, r in work:
            st = self.state_for(p)
            st["step"] += 1
            mom, eps, b1, b2, step_size, isb = self._args(st["step"])
            s1, s2 = self._state_views(st)
            if isinstance(v2, RowGrad):   # factored: gradient rows formed in the kernel
                x, offsets, pair_b, pair_v, _ = v2._factors
                gbuf = self._scratch.get("gbuf", (nt * _core.thread_stride(w2.shape[1]),),
                                         np.float32)
                _core.optim_rows_factored(self._kind, w2, s1, s2, rows, r, x, offsets,
                                             pair_b, pair_v, gbuf, self.lr, mom, eps, b1, b2,
                                             self.weight_decay, self.clip, step_size, isb, nt)
                continue
            _core.optim_rows(self._kind, w2, s1, s2, rows, v2, r, self.lr, mom, eps, b1, b2,
                                self.weight_decay, self.clip, step_size, isb, nt)

    def _prepare(self, p):
        """Validate ``p.data`` and ``p.grad``: (w2, rows or None, values, r) for the kernel.
        A bad row index would make the kernel write outside the parameter."""
        who, name = type(self).__name__, p.name or "param"
        w, g = p.data, p.grad
        if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim not in (1, 2):
            raise TypeError(f"{who}.step: parameter {name} must be a 1-D or 2-D float32 array, "
                            f"got {getattr(w, 'dtype', type(w).__name__)} "
                            f"{getattr(w, 'shape', '')}")
        if not w.flags.c_contiguous or not w.flags.writeable:
            raise ValueError(f"{who}.step: parameter {name} must be C-contiguous and writable")
        w2 = w if w.ndim == 2 else w.reshape(1, -1)
        if (type(g) is np.ndarray and g.dtype == np.float32 and g.shape == w.shape
                and g.flags.c_contiguous):   # the common dense case (biases, dense layers)
            g2 = g if g.ndim == 2 else g.reshape(1, -1)
            return w2, None, g2, g2.shape[0]
        rows, values = None, g
        if isinstance(g, RowGrad):
            if g.factored and self.sparse and g._n_in == w2.shape[1]:
                # a meProp backward's gradient: applied without forming its values
                n = w2.shape[0]
                if _core.check_rows(g.rows, n):
                    raise ValueError(f"{who}.step: RowGrad rows of {name} must be strictly "
                                     f"ascending row indices in [0, {n})")
                return w2, g.rows, g, g.rows.shape[0]
            values = np.asarray(g.values)
            if g.rows is not None:
                rows, r, n = np.asarray(g.rows), g.values.shape[0], w2.shape[0]
                if rows.dtype.kind not in "iu":
                    raise TypeError(f"{who}.step: RowGrad rows of {name} must be integers, "
                                    f"got {rows.dtype}")
                if rows.dtype == np.int32 and rows.ndim == 1 and rows.flags.c_contiguous:
                    bad = _core.check_rows(rows, n)   # one C pass (the common case)
                else:   # checked before any narrowing to int32 could wrap a value
                    bad = r and (rows[0] < 0 or rows[-1] >= n
                                 or (r > 1 and not (rows[1:] > rows[:-1]).all()))
                if bad:
                    raise ValueError(f"{who}.step: RowGrad rows of {name} must be strictly "
                                     f"ascending row indices in [0, {n})")
                if values.shape != (r, w2.shape[1]):
                    raise ValueError(f"{who}.step: RowGrad values of {name} have shape "
                                     f"{values.shape}, expected ({r}, {w2.shape[1]})")
                if self.sparse:
                    rows = np.ascontiguousarray(rows, dtype=np.int32)
                else:
                    values, rows = g.to_dense(n), None
        values = np.asarray(values)
        if rows is None and values.shape != w.shape and values.shape != w2.shape:
            raise ValueError(f"{who}.step: gradient of {name} has shape {values.shape}, "
                             f"parameter {w.shape}")
        v2 = values if values.ndim == 2 else values.reshape(1, -1)
        v2 = np.ascontiguousarray(v2, dtype=np.float32)
        return w2, rows, v2, v2.shape[0] if rows is None else rows.shape[0]


class SGD(Optimizer):
    """SGD with optional (heavy-ball, PyTorch-style) momentum."""

    _kind = _SGD

    def __init__(self, params, lr=0.1, momentum=0.0, **kw):
        super().__init__(params, lr, **kw)
        self.momentum = _check_float(momentum, "momentum", "SGD", hi=1.0)
        self._n_state = 1 if self.momentum > 0 else 0

    def _args(self, step):
        return self.momentum, 0.0, 0.0, 0.0, 0.0, 0.0

    def _hyper(self):
        return dict(super()._hyper(), momentum=self.momentum)


class AdaGrad(Optimizer):
    """AdaGrad: ``acc += g^2; w -= lr g / (sqrt(acc) + eps)``; paper: lr 0.01-0.1, eps 1e-6."""

    _kind = _ADAGRAD
    _n_state = 1

    def __init__(self, params, lr=0.01, eps=1e-6, **kw):
        super().__init__(params, lr, **kw)
        self.eps = _check_float(eps, "eps", "AdaGrad", lo_open=True)

    def _args(self, step):
        return 0.0, self.eps, 0.0, 0.0, 0.0, 0.0

    def _hyper(self):
        return dict(super()._hyper(), eps=self.eps)


class Adam(Optimizer):
    """Adam (PyTorch's formulation); the paper's setting is the default."""

    _kind = _ADAM
    _n_state = 2

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, **kw):
        super().__init__(params, lr, **kw)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_check_float(betas[0], "betas[0]", "Adam", hi=1.0),
                      _check_float(betas[1], "betas[1]", "Adam", hi=1.0))
        self.eps = _check_float(eps, "eps", "Adam", lo_open=True)

    def _args(self, step):
        b1, b2 = self.betas
        # the bias corrections of mp_step_args (layer.h), the fused step's own
        step_size, inv_sqrt_bc2 = _core.adam_corrections(self.lr, b1, b2, step)
        return 0.0, self.eps, b1, b2, step_size, inv_sqrt_bc2

    def _hyper(self):
        return dict(super()._hyper(), betas=tuple(self.betas), eps=self.eps)
