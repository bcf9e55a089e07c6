"""MePropSequential: an nn.Sequential that trains its MePropLinear -> ReLU [-> Dropout]
runs through one autograd node.

In a plain ``nn.Sequential`` of converted layers every ``MePropLinear``,
``ReLU`` and ``Dropout`` is its own autograd node and its own PyTorch
operator; at small batches their dispatch, and PyTorch's Bernoulli draws for
the dropout masks (~85 µs per 10 x 500 mask on a 2-core Xeon), cost as much
as the products. Here a run of such groups is
one ``torch.autograd.Function``: the forward calls this library's product with
the ReLU fused into it and draws the dropout uniforms with its counter-based
generator; the backward applies the masks and calls each layer's own backward
(``MePropLinear._backward``, the C entry point the unfused layer calls), so
the gradients are the unfused model's (bit for bit without dropout).
"""

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules import module as _module

from .. import _core
from ._layer import MePropLinear, _np, _ok

__all__ = ["MePropSequential", "fuse", "unfuse"]


def _hooked(m):
    """m has hooks, or a forward of its own, that a fused run would skip."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None) or "forward" in vars(m))


def _global_hooks():
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks
                or _module._global_backward_hooks
                or getattr(_module, "_global_backward_pre_hooks", None))


def _params_ok(lin):
    w, b = lin.weight, lin.bias
    return _ok(w) and w.shape == (lin.out_features, lin.in_features) and \
        (b is None or (_ok(b) and b.shape == (lin.out_features,)))


def _run_at(mods, i):
    """The groups [(MePropLinear, dropout p)] of the fusable run starting at
    mods[i] (Linear -> ReLU [-> Dropout], repeated), and the index after it."""
    groups, n = [], len(mods)
    while i + 1 < n:
        lin, act = mods[i], mods[i + 1]
        if type(lin) is not MePropLinear or type(act) is not nn.ReLU \
                or lin.forward_impl != "meprop" or _hooked(lin) or _hooked(act) \
                or not _params_ok(lin) \
                or (groups and lin.in_features != groups[-1][0].out_features):
            break
        j, p = i + 2, 0.0
        if j < n and type(mods[j]) is nn.Dropout and not _hooked(mods[j]):
            drop = mods[j]
            p = float(drop.p) if drop.training else 0.0
            j += 1
        groups.append((lin, p))
        i = j
    return groups, i


class _Run:
    """One fused run's layers and the key of this call's dropout draws."""
    __slots__ = ("groups", "key")

    def __init__(self, groups, key):
        self.groups = groups
        self.key = key


class _RunFunction(torch.autograd.Function):
    """h_{i+1} = dropout(relu(h_i W_i^T + b_i)) over the run's groups."""

    @staticmethod
    def forward(ctx, x, run, *params):
        nt = torch.get_num_threads()
        acts, h, counter = [], x, 0
        for lin, p in run.groups:
            B, n_out = h.shape[0], lin.out_features
            y = torch.empty(B, n_out, dtype=torch.float32)
            b = lin.bias
            _core.linear_forward(_np(h), _np(lin.weight), None if b is None else _np(b),
                                 _np(y), True, nt)
            scale, out = None, y
            if p > 0.0:
                # unit e kept when its draw is >= p (as this library's Dropout); the
                # draws are replaced by the scales in place
                scale = np.empty(B * n_out, np.float32)
                _core.uniform_f32(run.key, counter, scale, nt)
                counter += B * n_out
                out = torch.empty(B, n_out, dtype=torch.float32)
                _core.dropout_forward(scale, p, 1.0 / (1.0 - p) if p < 1.0 else 0.0, _np(y),
                                      scale, _np(out))
            acts.append((h, y, scale))
            h = out
        ctx.run, ctx.acts = run, acts
        # the weights, so that autograd refuses a backward after they changed in place
        ctx.save_for_backward(*[lin.weight for lin, _ in run.groups])
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        ctx.saved_tensors   # raises if a weight was modified in place since the forward
        groups, acts, need = ctx.run.groups, ctx.acts, ctx.needs_input_grad
        if dout.dtype != torch.float32:
            raise TypeError(f"MePropSequential.backward: the output gradient has dtype "
                            f"{dout.dtype}, expected torch.float32")
        d = dout.contiguous()
        grads = [None] * (2 * len(groups))
        for i in range(len(groups) - 1, -1, -1):
            lin, _ = groups[i]
            h, y, scale = acts[i]
            dy = torch.empty(d.shape, dtype=torch.float32)
            _core.relu_dropout_backward(_np(d), scale, _np(y), _np(dy))
            need_dw, need_db = need[2 + 2 * i], need[3 + 2 * i] and lin.bias is not None
            d, grads[2 * i], grads[2 * i + 1] = lin._backward(
                h, lin.weight, dy, i > 0 or need[0], need_dw, need_db)
        return (d if need[0] else None, None, *grads)


class MePropSequential(nn.Sequential):
    """An ``nn.Sequential`` whose runs of ``MePropLinear -> ReLU [-> Dropout]``
    train through one autograd node (see the module's docstring).

    Same children, parameters and state-dict keys as the ``nn.Sequential`` it
    replaces (:func:`fuse` switches the class of existing ones in place). A
    group joins a run when the ``MePropLinear`` uses ``forward_impl="meprop"``,
    is followed by an ``nn.ReLU`` (optionally then an ``nn.Dropout``), and none
    of them has hooks or a forward of its own; anything else runs module by
    module, as in ``nn.Sequential``. In eval mode, under ``torch.no_grad()``
    or with global module hooks installed the whole forward is
    ``nn.Sequential``'s.

    Dropout in a run draws its masks with this library's counter-based
    generator (elementwise.h), keyed per forward call by one draw from
    PyTorch's default generator: ``torch.manual_seed`` / ``torch.set_rng_state``
    govern the masks as they govern ``nn.Dropout``'s, but the masks are not the
    ones ``nn.Dropout`` would draw (same distribution: each unit dropped with
    probability p, the kept ones scaled by 1 / (1 - p)). Without dropout (or
    with p = 0) the outputs and gradients are those of the unfused model bit
    for bit.
    """

    def forward(self, input):
        if not (self.training and torch.is_grad_enabled()) or _global_hooks():
            return super().forward(input)
        mods = list(self._modules.values())
        x, i, n = input, 0, len(mods)
        while i < n:
            groups, j = _run_at(mods, i) if type(mods[i]) is MePropLinear else ([], i)
            y = None
            if groups and _ok(x) and x.dim() >= 2 and x.numel() \
                    and x.shape[-1] == groups[0][0].in_features:
                y = _apply_run(x, groups)
            if y is None:
                x = mods[i](x)
                i += 1
            else:
                x, i = y, j
        return x


def _apply_run(x, groups):
    """The run's output, or None when nothing in it needs a gradient (then the
    modules run one by one)."""
    params = []
    for lin, _ in groups:
        params += [lin.weight, lin.bias]
    if not (x.requires_grad or any(p is not None and p.requires_grad for p in params)):
        return None
    key = 0
    if any(p > 0.0 for _, p in groups):
        key = int(torch.randint(0, 2 ** 62, (1,), device="cpu").item())
    n_in, n_out = groups[0][0].in_features, groups[-1][0].out_features
    two_d = x.dim() == 2
    x2 = x if two_d else x.reshape(-1, n_in)   # a view: x is contiguous
    y = _RunFunction.apply(x2, _Run(groups, key), *params)
    return y if two_d else y.reshape(*x.shape[:-1], n_out)


def fuse(model):
    """Switch every ``nn.Sequential`` in ``model`` (``model`` itself included)
    to :class:`MePropSequential`, in place: the same objects, children,
    parameters, hooks and state-dict keys, only their class changes. Only
    exact ``nn.Sequential`` instances change (not subclasses). Returns
    ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse: model must be a torch.nn.Module, got {type(model).__name__}")
    for m in model.modules():
        if type(m) is nn.Sequential:
            m.__class__ = MePropSequential
    return model


def unfuse(model):
    """The reverse of :func:`fuse`: every :class:`MePropSequential` in ``model``
    becomes an ``nn.Sequential`` again, in place. Returns ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"unfuse: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    for m in model.modules():
        if type(m) is MePropSequential:
            m.__class__ = nn.Sequential
    return model
