"""torch.optim optimizers that update parameters in place with meprop_cpu's row kernels.

``Adam``, ``AdaGrad`` and ``SGD`` are ``torch.optim.Optimizer`` subclasses.
A parameter whose gradient is a row-sparse (hybrid sparse COO) tensor, as
:class:`~meprop_cpu.torch.MePropLinear` produces, is updated only on the rows
the gradient holds: those rows of the weight and of its state are read and
written, every other row is left bit-for-bit unchanged (the semantics of
``torch.optim.SparseAdam``; rows without gradient keep their moments and do
not move). A dense gradient updates every element (``torch.optim.Adam`` /
``Adagrad`` / ``SGD`` semantics). The state uses PyTorch's names
(``step``, ``exp_avg``, ``exp_avg_sq``, ``sum``, ``momentum_buffer``), and
``state_dict()`` / ``load_state_dict()`` round trip.

Parameters must be contiguous float32 CPU tensors; the update runs with
``torch.get_num_threads()`` threads and the GIL released. Per element (g the
gradient, after ``g += weight_decay * w``):

* SGD: ``buf = momentum * buf + g; w -= lr * buf`` (or ``w -= lr * g``);
* AdaGrad: ``sum += g^2; w -= lr * g / (sqrt(sum) + eps)``;
* Adam: ``m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
  w -= lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps)``, t the
  parameter's own step count (PyTorch's Adam formulation; SparseAdam's puts
  eps outside the bias correction, a difference of order eps).

The update runs with subnormal floats flushed to zero (see
:mod:`meprop_cpu.optim`): decaying moments do not slow it down, unlike
PyTorch's optimizers under PyTorch's default floating-point mode
(``torch.set_flush_denormal(True)``, called before PyTorch starts its threads so
they inherit it, switches that for PyTorch's own ops).
"""

import numpy as np
import torch

from .. import _core
from ..optim import _ADAGRAD, _ADAM, _SGD, _check_float

__all__ = ["Adam", "AdaGrad", "SGD"]


def _np(t):
    return t.detach().numpy()


_increment_version = getattr(torch.autograd.graph, "increment_version", None)
_F32, _STRIDED, _SPARSE_COO = torch.float32, torch.strided, torch.sparse_coo


class _RowOptimizer(torch.optim.Optimizer):
    _kind = None
    _state_names = ()

    def __init__(self, params, defaults):
        # id(param) -> its state views / its own view (the param_groups keep the
        # params alive, so an id is not reused while it is a key here)
        self._view_cache = {}
        self._pview_cache = {}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                self._check_param(p, i)

    def _check_param(self, p, i):
        who = type(self).__name__
        if p.device.type != "cpu":
            raise ValueError(f"{who}: params[{i}] is on device {p.device}; these optimizers "
                             "update CPU tensors in place")
        if p.dtype != torch.float32:
            raise TypeError(f"{who}: params[{i}] has dtype {p.dtype}, expected torch.float32")
        if not p.is_contiguous():
            raise ValueError(f"{who}: params[{i}] must be contiguous")
        if p.dim() not in (1, 2):
            raise ValueError(f"{who}: params[{i}] must be 1-D or 2-D, got shape "
                             f"{tuple(p.shape)}")

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        for i, p in enumerate(self.param_groups[-1]["params"]):
            self._check_param(p, i)

    def _grad_parts(self, p, g, gi, i):
        """(rows int32 numpy or None, values 2-D float32 numpy, r) of p's gradient g,
        checked (gi, i: p's place, for the error messages)."""
        if g.layout is _SPARSE_COO:
            if p.dim() != 2 or g.sparse_dim() != 1 or g.dense_dim() != 1 \
                    or g.shape != p.shape:
                raise ValueError(f"{self._who()}.step: the sparse gradient of {_place(gi, i)} "
                                 f"must be row-sparse (sparse_dim 1, dense_dim 1) of shape "
                                 f"{tuple(p.shape)}, got sparse_dim {g.sparse_dim()}, "
                                 f"dense_dim {g.dense_dim()}, shape {tuple(g.shape)}")
            if g.dtype is not _F32:
                raise TypeError(f"{self._who()}.step: the gradient of {_place(gi, i)} has "
                                f"dtype {g.dtype}")
            rows, r, status = _rows_of(g, p.shape[0])
            if status == 1:   # repeated or unsorted rows: sum the duplicates, sort
                g = g.coalesce()
                rows, r, status = _rows_of(g, p.shape[0])
            if status:
                raise ValueError(f"{self._who()}.step: sparse gradient rows of "
                                 f"{_place(gi, i)} must lie in [0, {p.shape[0]})")
            values = g._values()
            if not values.is_contiguous():
                values = values.contiguous()
            return rows, _np(values) if r else None, r
        if g.layout is not _STRIDED:
            raise TypeError(f"{self._who()}.step: the gradient of {_place(gi, i)} has layout "
                            f"{g.layout}; expected a dense or a sparse COO tensor")
        if g.dtype is not _F32 or g.shape != p.shape:
            raise ValueError(f"{self._who()}.step: the gradient of {_place(gi, i)} must be "
                             f"float32 of shape {tuple(p.shape)}, got {g.dtype} "
                             f"{tuple(g.shape)}")
        if not g.is_contiguous():
            g = g.contiguous()
        gn = _np(g)
        if gn.ndim != 2:
            gn = gn.reshape(1, -1)
        return None, gn, gn.shape[0]

    def _who(self):
        return type(self).__name__

    def _names(self, group):
        """The state tensors (shaped like the parameter) this group keeps."""
        return self._state_names

    def _state_for(self, p, group):
        st = self.state[p]
        if not st:
            st["step"] = 0
        for n in self._names(group):
            if n not in st:
                st[n] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        return st

    def _slot(self, p, group):
        """(state dict, s1, s2): p's state and its tensors as the kernel's 2-D numpy
        views (None where absent). The views are made once per state tensor and
        reused while the state holds the same tensors at the same addresses."""
        st = self.state.get(p)
        names = self._names(group)
        hit = self._view_cache.get(id(p))
        if hit is not None and hit[0] is st and hit[4] == names:
            ok = True
            for n, t, ptr in hit[1]:
                if st.get(n) is not t or t.data_ptr() != ptr:
                    ok = False
                    break
            if ok:
                return st, hit[2], hit[3]
        st = self._state_for(p, group)
        out, key = [], []
        for n in names:
            t = st[n]
            if t.dtype != torch.float32 or not t.is_contiguous() or t.shape != p.shape \
                    or t.device.type != "cpu":
                t = st[n] = t.to(device="cpu", dtype=torch.float32).contiguous().reshape(p.shape)
            out.append(_np(t if t.dim() == 2 else t.view(1, -1)))
            key.append((n, t, t.data_ptr()))
        out += [None] * (2 - len(out))
        self._view_cache[id(p)] = (st, tuple(key), out[0], out[1], names)
        return st, out[0], out[1]

    def _param_view(self, p):
        """p as the kernel's 2-D numpy view (cached while p keeps its memory)."""
        hit = self._pview_cache.get(id(p))
        ptr = p.data_ptr()
        if hit is not None and hit[0] == ptr and hit[1] == p.shape:
            return hit[2]
        if not (p.is_cpu and p.dtype == torch.float32 and p.is_contiguous()
                and p.dim() in (1, 2)):
            raise ValueError(f"{type(self).__name__}.step: a parameter is no longer a "
                             "contiguous 1-D or 2-D float32 CPU tensor")
        v = _np(p if p.dim() == 2 else p.view(1, -1))
        self._pview_cache[id(p)] = (ptr, p.shape, v)
        return v

    def zero_grad(self, set_to_none=True):
        """Clear every parameter's gradient (None, or zeros for dense gradients
        when set_to_none=False)."""
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if set_to_none or g.is_sparse:
                    p.grad = None
                else:
                    if g.grad_fn is not None:
                        g.detach_()
                    else:
                        g.requires_grad_(False)
                    g.zero_()

    def _args(self, group, step):
        """(lr, momentum, eps, beta1, beta2, step_size, inv_sqrt_bc2) for the kernel."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient. Every gradient is
        checked before any parameter changes."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for gi, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                g = p.grad
                if g is not None:
                    work.append((group, p, self._param_view(p), *self._grad_parts(p, g, gi, i)))
        nt = torch.get_num_threads()
        optim_rows, kind = _core.optim_rows, self._kind
        for group, p, pv, rows, values, r in work:
            st, s1, s2 = self._slot(p, group)
            step = int(st["step"]) + 1
            st["step"] = step
            if r == 0:
                continue
            lr, mom, eps, b1, b2, step_size, isb = self._args(group, step)
            optim_rows(kind, pv, s1, s2, rows, values, r, lr, mom, eps, b1, b2,
                       group["weight_decay"], 0.0, step_size, isb, nt)
            if _increment_version is not None:   # autograd sees the in-place change
                _increment_version(p)
        return loss


def _rows_of(g, n):
    """(rows int32, r, status of _core.rows_from_int64) of a sparse COO tensor."""
    rows64 = _np(g._indices())[0]
    r = rows64.shape[0]
    rows = np.empty(r, np.int32)
    status = _core.rows_from_int64(np.ascontiguousarray(rows64), n, rows) if r else 0
    return rows, r, status


def _place(gi, i):
    return f"param_groups[{gi}]['params'][{i}]"


class Adam(_RowOptimizer):
    """Adam with in-place row-sparse updates (see the module docstring)."""

    _kind = _ADAM
    _state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        who = "Adam"
        lr = _check_float(lr, "lr", who, lo_open=True)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{who}: betas must be a pair (beta1, beta2), got {betas!r}")
        betas = (_check_float(betas[0], "betas[0]", who, hi=1.0),
                 _check_float(betas[1], "betas[1]", who, hi=1.0))
        eps = _check_float(eps, "eps", who, lo_open=True)
        weight_decay = _check_float(weight_decay, "weight_decay", who)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _args(self, group, step):
        b1, b2 = group["betas"]
        return (group["lr"], 0.0, group["eps"], b1, b2,
                *_core.adam_corrections(group["lr"], b1, b2, step))


class AdaGrad(_RowOptimizer):
    """AdaGrad with in-place row-sparse updates (PyTorch's defaults; no lr_decay)."""

    _kind = _ADAGRAD
    _state_names = ("sum",)

    def __init__(self, params, lr=1e-2, eps=1e-10, weight_decay=0.0):
        who = "AdaGrad"
        super().__init__(params, dict(lr=_check_float(lr, "lr", who, lo_open=True),
                                      eps=_check_float(eps, "eps", who, lo_open=True),
                                      weight_decay=_check_float(weight_decay, "weight_decay",
                                                                who)))

    def _args(self, group, step):
        return group["lr"], 0.0, group["eps"], 0.0, 0.0, 0.0, 0.0


class SGD(_RowOptimizer):
    """SGD with optional heavy-ball momentum (PyTorch's, no dampening or Nesterov)."""

    _kind = _SGD

    def __init__(self, params, lr=1e-3, momentum=0.0, weight_decay=0.0):
        who = "SGD"
        super().__init__(params, dict(lr=_check_float(lr, "lr", who, lo_open=True),
                                      momentum=_check_float(momentum, "momentum", who, hi=1.0),
                                      weight_decay=_check_float(weight_decay, "weight_decay",
                                                                who)))

    def _names(self, group):
        return ("momentum_buffer",) if group["momentum"] > 0 else ()

    def _args(self, group, step):
        return group["lr"], group["momentum"], 0.0, 0.0, 0.0, 0.0, 0.0
