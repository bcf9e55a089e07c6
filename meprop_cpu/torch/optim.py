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
"""

import numpy as np
import torch

from .. import _core
from ..optim import _ADAGRAD, _ADAM, _SGD, _check_float

__all__ = ["Adam", "AdaGrad", "SGD"]


def _np(t):
    return t.detach().numpy()


_increment_version = getattr(torch.autograd.graph, "increment_version", None)


class _RowOptimizer(torch.optim.Optimizer):
    _kind = None
    _state_names = ()

    def __init__(self, params, defaults):
        self._view_cache = {}      # param -> its state views (params outlive us: strong refs are fine)
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

    def _grad_parts(self, p, name):
        """(rows int32 numpy or None, values 2-D float32 numpy, r) of p.grad, checked."""
        who = type(self).__name__
        g = p.grad
        if g.layout == torch.sparse_coo:
            if p.dim() != 2 or g.sparse_dim() != 1 or g.dense_dim() != 1 \
                    or tuple(g.shape) != tuple(p.shape):
                raise ValueError(f"{who}.step: the sparse gradient of {name} must be row-sparse "
                                 f"(sparse_dim 1, dense_dim 1) of shape {tuple(p.shape)}, got "
                                 f"sparse_dim {g.sparse_dim()}, dense_dim {g.dense_dim()}, "
                                 f"shape {tuple(g.shape)}")
            if g.dtype != torch.float32:
                raise TypeError(f"{who}.step: the gradient of {name} has dtype {g.dtype}")
            rows64 = _np(g._indices()[0])
            n = p.shape[0]
            if rows64.shape[0] and (int(rows64.min()) < 0 or int(rows64.max()) >= n):
                raise ValueError(f"{who}.step: sparse gradient rows of {name} must lie in "
                                 f"[0, {n})")
            rows = rows64.astype(np.int32)
            if _core.check_rows(rows, n):   # not strictly ascending: sum duplicates, sort
                g = g.coalesce()
                rows = _np(g._indices()[0]).astype(np.int32)
            values = g._values().contiguous()
            r = rows.shape[0]
            return rows, _np(values).reshape(r, p.shape[1]) if r else None, r
        if g.layout != torch.strided:
            raise TypeError(f"{who}.step: the gradient of {name} has layout {g.layout}; "
                            "expected a dense or a sparse COO tensor")
        if g.dtype != torch.float32 or tuple(g.shape) != tuple(p.shape):
            raise ValueError(f"{who}.step: the gradient of {name} must be float32 of shape "
                             f"{tuple(p.shape)}, got {g.dtype} {tuple(g.shape)}")
        g2 = g.contiguous()
        g2 = g2 if g2.dim() == 2 else g2.view(1, -1)
        return None, _np(g2), g2.shape[0]

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

    def _views(self, p, st, group):
        """(s1, s2): the state tensors as the kernel's 2-D numpy views (None where
        absent), made once per state tensor and reused while it is the same."""
        names = self._names(group)
        key = tuple(st[n] for n in names)
        hit = self._view_cache.get(p)
        if hit is not None and len(hit[0]) == len(key) and all(
                a is b for a, b in zip(hit[0], key)) and all(
                t.data_ptr() == d for t, d in zip(key, hit[2])):
            return hit[1]
        out = []
        for n in names:
            t = st[n]
            if t.dtype != torch.float32 or not t.is_contiguous() or t.shape != p.shape \
                    or t.device.type != "cpu":
                t = st[n] = t.to(device="cpu", dtype=torch.float32).contiguous().reshape(p.shape)
            out.append(_np(t if t.dim() == 2 else t.view(1, -1)))
        out += [None] * (2 - len(out))
        key = tuple(st[n] for n in names)
        self._view_cache[p] = (key, tuple(out), tuple(t.data_ptr() for t in key))
        return tuple(out)

    def _param_view(self, p):
        """p as the kernel's 2-D numpy view (cached while p keeps its memory)."""
        hit = self._pview_cache.get(p)
        ptr = p.data_ptr()
        if hit is not None and hit[0] == ptr and hit[1] == p.shape:
            return hit[2]
        if not (p.is_cpu and p.dtype == torch.float32 and p.is_contiguous()
                and p.dim() in (1, 2)):
            raise ValueError(f"{type(self).__name__}.step: a parameter is no longer a "
                             "contiguous 1-D or 2-D float32 CPU tensor")
        v = _np(p if p.dim() == 2 else p.view(1, -1))
        self._pview_cache[p] = (ptr, p.shape, v)
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
                if p.grad is not None:
                    work.append((group, p, self._param_view(p))
                                + self._grad_parts(p, f"param_groups[{gi}]['params'][{i}]"))
        nt = torch.get_num_threads()
        for group, p, pv, rows, values, r in work:
            st = self._state_for(p, group)
            step = int(st["step"]) + 1
            st["step"] = step
            if r == 0:
                continue
            s1, s2 = self._views(p, st, group)
            lr, mom, eps, b1, b2, step_size, isb = self._args(group, step)
            _core.optim_rows(self._kind, pv, s1, s2, rows, values, r, lr,
                                mom, eps, b1, b2, group["weight_decay"], 0.0, step_size, isb, nt)
            if _increment_version is not None:   # autograd sees the in-place change
                _increment_version(p)
        return loss


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
