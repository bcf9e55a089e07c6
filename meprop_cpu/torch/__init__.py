"""meProp inside PyTorch models (needs the optional extra: ``pip install "meprop_cpu[torch]"``).

* :class:`MePropLinear` - a drop-in ``nn.Linear`` whose backward keeps the
  top-k entries of each example's output gradient and runs this library's
  kernels on the tensors' memory; its weight gradient is row-sparse.
* :mod:`meprop_cpu.torch.optim` - ``Adam`` / ``AdaGrad`` / ``SGD``
  (``torch.optim.Optimizer`` subclasses) that apply row-sparse gradients in
  place with this library's update kernels.
* :func:`convert` / :func:`revert` - swap the ``nn.Linear`` layers of an
  existing model for ``MePropLinear`` (keeping the weights) and back.
* :class:`MePropSequential` / :func:`fuse` / :func:`unfuse` - an
  ``nn.Sequential`` whose ``MePropLinear -> ReLU [-> Dropout]`` runs train
  through one autograd node (``convert(..., fuse=True)``): the small-batch path.
"""
try:
    import torch
except ImportError as e:   # pragma: no cover - exercised only without torch
    raise ImportError("meprop_cpu.torch needs PyTorch: pip install \"meprop_cpu[torch]\" "
                      "(or pip install torch==2.13.0)") from e
from torch import nn

from ._layer import DEFAULT_MODE, FORWARDS, MODES, MePropLinear
from ._sequential import MePropSequential, fuse, unfuse
from ._sequential import fuse as _fuse
from . import optim

__all__ = ["MePropLinear", "MePropSequential", "convert", "revert", "fuse", "unfuse", "optim",
           "DEFAULT_MODE", "MODES"]


def _linears(model, cls):
    """[(parent, attribute name, qualified name, module)] of the cls modules, in
    registration order (a module shared under several names counts once)."""
    out, seen = [], set()
    for pname, parent in model.named_modules():
        for name, child in parent.named_children():
            if type(child) is cls and id(child) not in seen:
                seen.add(id(child))
                out.append((parent, name, f"{pname}.{name}" if pname else name, child))
    return out


def _replace(parent, name, old, new):
    for pn, p in parent.named_children():   # the same module registered twice in one parent
        if p is old:
            setattr(parent, pn, new)


def convert(model, k, mode=None, *, skip_last=True, sparse_grad=True, forward_impl="meprop",
            include=None, fuse=False):
    """Replace ``model``'s ``nn.Linear`` modules by :class:`MePropLinear` in place,
    keeping their parameters (the same ``nn.Parameter`` objects, so an optimizer
    built on the model still holds them and the state-dict keys do not change).

    k, mode, sparse_grad, forward_impl: as for MePropLinear (mode None: the
    default, :data:`DEFAULT_MODE`). skip_last: leave the last ``nn.Linear`` (in
    registration order; usually the output layer, which backpropagates densely
    in the paper) as it is. include: a callable ``include(name, module) -> bool``
    choosing layers by their qualified name instead (skip_last is then ignored).
    fuse: also switch the model's ``nn.Sequential`` containers to
    :class:`MePropSequential` (:func:`fuse`), whose ``MePropLinear -> ReLU
    [-> Dropout]`` runs train through one autograd node instead of three per
    layer (less PyTorch dispatch per step at small batches; dropout masks
    from this library's generator instead of ``nn.Dropout``'s, see
    MePropSequential).
    Returns the model; ``model`` itself may be an ``nn.Linear`` (then a new
    module is returned). The parameters must be float32 on the CPU.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(fuse, bool):
        raise TypeError(f"convert: fuse must be a bool, got {type(fuse).__name__}")
    if include is not None and not callable(include):
        raise TypeError("convert: include must be a callable (name, module) -> bool")
    if type(model) is nn.Linear:
        return _to_meprop(model, "model", k, mode, sparse_grad, forward_impl)
    found = _linears(model, nn.Linear)
    if include is not None:
        found = [f for f in found if include(f[2], f[3])]
    elif skip_last:
        found = found[:-1]
    news = [(parent, name, lin, _to_meprop(lin, qual, k, mode, sparse_grad, forward_impl))
            for parent, name, qual, lin in found]   # every layer checked before any swap
    for parent, name, lin, new in news:
        _replace(parent, name, lin, new)
    if fuse:
        _fuse(model)
    return model


def _to_meprop(lin, qual, k, mode, sparse_grad, forward_impl):
    for pname, p in (("weight", lin.weight), ("bias", lin.bias)):
        if p is None:
            continue
        if p.device.type != "cpu" or p.dtype != torch.float32:
            raise ValueError(f"convert: {qual}.{pname} is {p.dtype} on {p.device}; "
                             "MePropLinear needs float32 CPU parameters")
        if not p.is_contiguous():
            raise ValueError(f"convert: {qual}.{pname} is not contiguous")
    with torch.device("meta"):   # no allocation or draws: the parameters are replaced below
        new = MePropLinear(lin.in_features, lin.out_features, bias=lin.bias is not None,
                           k=k, mode=mode, sparse_grad=sparse_grad, forward_impl=forward_impl)
    new.weight = lin.weight
    new.bias = lin.bias
    new.train(lin.training)
    return new


def revert(model):
    """The reverse of :func:`convert`: every :class:`MePropLinear` of ``model``
    becomes an ``nn.Linear`` holding the same parameters and every
    :class:`MePropSequential` an ``nn.Sequential`` again. Returns the model
    (a new ``nn.Linear`` when ``model`` is a MePropLinear itself)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"revert: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, MePropLinear):
        return _to_linear(model)
    for parent, name, _, m in _linears(model, MePropLinear):
        _replace(parent, name, m, _to_linear(m))
    return unfuse(model)


def _to_linear(m):
    with torch.device("meta"):
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    lin.weight = m.weight
    lin.bias = m.bias
    lin.train(m.training)
    return lin
