"""MePropLinear: an nn.Linear whose backward runs meprop_cpu's top-k and sparse kernels.

The tensors' memory is handed to the kernels through ``Tensor.numpy()`` views
(no copy): the layer's input and weight must be contiguous float32 CPU
tensors. The output gradient autograd passes in is made contiguous first
(``dy.contiguous()``, a copy only when autograd hands over a non-contiguous
one, e.g. the expanded gradient of ``y.sum()``). The gradients are written
into freshly allocated tensors, so they stay valid however autograd or the
optimizer keeps them.
"""

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .. import _core, kernels
from .. import nn as _mp_nn

__all__ = ["MePropLinear", "DEFAULT_MODE", "MODES", "FORWARDS"]

MODES = _mp_nn.MODES
# The meProp mode a MePropLinear gets when none is given: the default of this
# library's own MLP (one name to change, in nn.MLP, not here).
DEFAULT_MODE = _mp_nn.DEFAULT_MODE
FORWARDS = ("torch", "meprop")


def _check_tensor(t, name, who, n_cols=None):
    """A contiguous float32 CPU tensor, or TypeError / ValueError naming ``name``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{who}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{who}: {name} is on device {t.device}; meprop_cpu's kernels run "
                         f"on the CPU (move it with {name}.cpu(), or use nn.Linear on "
                         f"{t.device.type})")
    if t.layout != torch.strided:
        raise TypeError(f"{who}: {name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.dtype != torch.float32:
        raise TypeError(f"{who}: {name} must have dtype torch.float32, got {t.dtype} "
                        f"(convert with {name}.float())")
    if n_cols is not None and (t.dim() < 1 or t.shape[-1] != n_cols):
        raise ValueError(f"{who}: {name} must have {n_cols} features in its last dimension, "
                         f"got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{who}: {name} must be contiguous (the kernels read its memory "
                         f"in place; pass {name}.contiguous())")
    return t


_F32, _STRIDED = torch.float32, torch.strided


def _ok(t):
    """Fast check: a contiguous float32 CPU tensor (the kernels' input)."""
    return (type(t) is torch.Tensor or isinstance(t, torch.Tensor)) and t.is_cpu \
        and t.dtype is _F32 and t.layout is _STRIDED and t.is_contiguous()


def _np(t):
    """The tensor's memory as a numpy array (no copy)."""
    return t.detach().numpy()


class _MePropFunction(torch.autograd.Function):
    """y = x W^T + b; backward by the layer's meProp mode (see MePropLinear)."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        ctx.layer = layer
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return layer._forward_product(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        return ctx.layer._backward(x, weight, dy, need_dx, need_dw,
                                   need_db and ctx.has_bias) + (None,)


class MePropLinear(nn.Module):
    """A drop-in ``nn.Linear`` whose backward is meProp's.

    ``y = x W^T + b`` with ``weight`` (out_features, in_features) and ``bias``
    (out_features,): the parameters, state-dict keys and initialisation of
    ``nn.Linear``, so a state dict moves between the two either way.

    Backward keeps only ``k`` entries per example of the output gradient (on
    average over the batch, or exactly, by mode) and runs this library's sparse kernels on the tensors' memory with
    ``torch.get_num_threads()`` threads (the GIL released):

    * ``mode="batch_dw"`` (the library's default): the ``B*k`` largest
      ``|dy|`` entries of the batch of B rows form the weight gradient, the
      input gradient is the exact ``dy W``;
    * ``"topk_dw"``: the per-example top-k weight gradient of ``"topk"``, the
      exact input gradient;
    * ``"topk"``: per-example top-k by magnitude (the paper's meProp), for
      both gradients;
    * ``"unified"``: one index set for the batch (largest column sums of |dy|);
    * ``"random"``: a random k-subset per example (the paper's ablation);
    * ``"dense"``: exact backprop (so is any mode with ``k=None`` or
      ``k >= out_features``).

    The default ``mode`` is :data:`DEFAULT_MODE`, the default of the library's
    own ``nn.MLP``. The bias gradient is the full ``dy.sum(0)``.

    ``sparse_grad=True`` (the default): ``weight.grad`` is a hybrid sparse COO
    tensor (row indices x dense rows, as ``nn.Embedding(sparse=True)``
    produces) holding the rows the backward touched; ``torch.optim.SparseAdam``
    and ``SGD`` accept it, and :mod:`meprop_cpu.torch.optim` applies it in
    place. ``sparse_grad=False``: a dense gradient (zero in the rows not
    selected) for any optimizer.

    ``forward_impl``: ``"meprop"`` (this library's dense kernel, the default:
    faster than ``F.linear`` at small batches, see benchmarks/bench_torch.py)
    or ``"torch"`` (PyTorch's ``F.linear``); both give ``nn.Linear``'s result
    to float rounding. Under ``torch.no_grad()`` / ``inference_mode`` or when nothing
    needs a gradient the layer is plain ``F.linear``.

    Inputs: contiguous float32 CPU tensors of shape (*, in_features); anything
    else raises ``TypeError`` / ``ValueError`` naming the argument.

    ``track_hits=True`` counts, per output neuron, the examples whose kept
    gradient entries held it with a non-zero value (``hits``, int64, and
    ``seen``): meSimp's activeness record.
    """

    def __init__(self, in_features, out_features, bias=True, k=None, mode=None,
                 sparse_grad=True, forward_impl="meprop", device=None, dtype=None):
        super().__init__()
        who = "MePropLinear"
        self.in_features = _mp_nn.layers._check_size(in_features, "in_features", who)
        self.out_features = _mp_nn.layers._check_size(out_features, "out_features", who)
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"{who}: device must be the CPU, got {device!r}")
        if dtype is not None and dtype != torch.float32:
            raise TypeError(f"{who}: dtype must be torch.float32, got {dtype}")
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features,
                                               dtype=torch.float32))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, dtype=torch.float32))
        else:
            self.register_parameter("bias", None)
        self.k = k
        self.mode = mode
        self.sparse_grad = sparse_grad
        self.forward_impl = forward_impl
        self.track_hits = False
        self.hits = np.zeros(self.out_features, dtype=np.int64)
        self.seen = 0
        # random mode: the seed is drawn from torch's CPU generator at the first
        # random backward (torch.manual_seed governs it)
        self._rand_seed = None
        self._rand_calls = 0
        self._ws = kernels.Workspace()
        self._plans = {}
        self.reset_parameters()

    # ------------------------------------------------------------ settings
    def __setattr__(self, name, value):
        who = "MePropLinear"
        if name == "k":
            value = _mp_nn.layers._check_k(value, None, who)
        elif name == "mode":
            value = DEFAULT_MODE if value is None else value
            if value not in MODES:
                raise ValueError(f"{who}: mode must be one of {MODES}, got {value!r}")
        elif name == "forward_impl":
            if value not in FORWARDS:
                raise ValueError(f"{who}: forward_impl must be one of {FORWARDS}, got {value!r}")
        elif name in ("sparse_grad", "track_hits"):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{who}: {name} must be a bool, got {type(value).__name__}")
            value = bool(value)
        super().__setattr__(name, value)

    def reset_parameters(self):
        """nn.Linear's initialisation (same draws from torch's generator)."""
        nn.Linear.reset_parameters(self)

    @property
    def sparse(self):
        """True when backward takes the meProp path (a mode other than dense, k < out_features)."""
        return self.mode != "dense" and self.k is not None and self.k < self.out_features

    def reset_hits(self):
        self.hits = np.zeros(self.out_features, dtype=np.int64)
        self.seen = 0

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, k={self.k}, mode={self.mode!r}, "
                f"sparse_grad={self.sparse_grad}")

    # ------------------------------------------------------------ forward
    def forward(self, x):
        w, b = self.weight, self.bias
        n_in, n_out = self.in_features, self.out_features
        if not (_ok(x) and x.dim() >= 1 and x.shape[-1] == n_in and _ok(w)
                and w.shape == (n_out, n_in) and (b is None or (_ok(b) and b.shape == (n_out,)))):
            self._check_forward_args(x)
        two_d = x.dim() == 2
        x2 = x if two_d else x.reshape(-1, n_in)   # a view: x is contiguous
        if x2.shape[0] == 0 or not torch.is_grad_enabled() or not (
                x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)):
            y = self._forward_product(x2, w, b) if x2.shape[0] else \
                nn.functional.linear(x2, w, b)
        else:
            y = _MePropFunction.apply(x2, w, b, self)
        return y if two_d else y.reshape(*x.shape[:-1], n_out)

    def _check_forward_args(self, x):
        """The slow path of forward's checks: the error naming the argument."""
        who = "MePropLinear.forward"
        _check_tensor(x, "x", who, self.in_features)
        w = self.weight
        _check_tensor(w, "weight", who)
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ValueError(f"{who}: weight has shape {tuple(w.shape)}, expected "
                             f"({self.out_features}, {self.in_features})")
        b = self.bias
        if b is not None:
            _check_tensor(b, "bias", who)
            if tuple(b.shape) != (self.out_features,):
                raise ValueError(f"{who}: bias has shape {tuple(b.shape)}, expected "
                                 f"({self.out_features},)")

    def _forward_product(self, x, w, b):
        if self.forward_impl == "torch":
            return nn.functional.linear(x.detach(), w.detach(),
                                        None if b is None else b.detach())
        y = torch.empty(x.shape[0], self.out_features, dtype=torch.float32)
        _core.linear_forward(_np(x), _np(w), None if b is None else _np(b), _np(y), False,
                              torch.get_num_threads())
        return y

    # ------------------------------------------------------------ backward
    def _backward(self, x, w, dy, need_dx, need_dw, need_db):
        """(dx, dW, db) for autograd; the kernels run on the tensors' memory."""
        dy = dy.contiguous()
        if dy.dtype != torch.float32:
            raise TypeError(f"MePropLinear.backward: the output gradient has dtype {dy.dtype}, "
                            "expected torch.float32")
        nt = torch.get_num_threads()
        B = x.shape[0]
        n_out, n_in = self.out_features, self.in_features
        xn, wn, dyn = _np(x), _np(w), _np(dy)
        if self.sparse and self.mode == "random":
            return self._random_backward(xn, wn, dyn, dy, need_dx, need_dw, need_db, nt)
        # every other mode: mp_layer_backward (include/meprop/layer.h), the entry
        # point nn.Linear.backward and the fused step call: the same bits
        k = self.k if self.sparse else 0
        lb = kernels.linear_backward_for(self._plans, n_in, n_out, k, self.mode, need_dx,
                                         self.track_hits, B, nt)
        dx = torch.empty(B, n_in, dtype=torch.float32) if need_dx else None
        full = None
        if k == 0 or lb.masked:
            full = torch.empty(n_out, n_in, dtype=torch.float32)
        elif self.mode == "unified":
            full = torch.empty(k, n_in, dtype=torch.float32)
        _raise_nonfinite(lb.run(xn, wn, dyn, self.hits if self.track_hits else None, nt,
                                dx=None if dx is None else _np(dx),
                                gw=None if full is None else _np(full)))
        if self.track_hits:
            self.seen += B
        a = lb.arrays
        db = torch.from_numpy(a["gb"][:n_out].copy()) if need_db else None
        gw = None
        if not need_dw:
            pass
        elif k == 0:
            gw = self._weight_grad(None, full)
        elif self.mode == "unified":
            gw = self._weight_grad(a["idx"][:k].copy(), full)
        elif lb.masked:   # k > n_out / 4: the products ran dense on the masked dy
            rows = a["rows"][:lb.r].copy()
            gw = full if not self.sparse_grad else \
                self._weight_grad(rows, torch.from_numpy(np.take(_np(full), rows, axis=0)))
        else:   # the selected pairs grouped by row: form the touched rows
            r = lb.r
            rows = a["rows"][:r].copy()
            values = torch.empty(r, n_in, dtype=torch.float32)
            _core.sparse_dw(xn, r, a["offsets"], a["pair_b"], a["pair_v"], _np(values), nt)
            if self.sparse_grad:
                gw = self._weight_grad(rows, values)
            else:
                gw = torch.zeros(n_out, n_in, dtype=torch.float32)
                _np(gw)[rows] = _np(values)
        return dx, gw, db

    def __getstate__(self):
        """copy.deepcopy / torch.save leave out the backward's C buffers (rebuilt
        on the next backward)."""
        state = self.__dict__.copy()
        state["_plans"] = {}
        return state

    def _random_backward(self, xn, wn, dyn, dy, need_dx, need_dw, need_db, nt):
        """Mode "random" (the paper's ablation), which the C entry point does not take."""
        B, n_in = xn.shape
        n_out, k, ws = self.out_features, self.k, self._ws
        db = dy.sum(0) if need_db else None
        dx = torch.empty(B, n_in, dtype=torch.float32) if need_dx else None
        dxn = _np(dx) if need_dx else None
        masked = _core.backward_masked(k, n_out)
        idx = ws.get("idx", (B, k), np.int32)
        val = ws.get("val", (B, k), np.float32)
        if self._rand_seed is None:
            self._rand_seed = int(torch.randint(0, 2**62, (1,), device="cpu").item())
        seed = (self._rand_seed + self._rand_calls) % 2**64
        self._rand_calls += 1
        _core.randk_rows(B, n_out, k, seed, idx, nt)
        val[...] = np.take_along_axis(dyn, idx, axis=1)
        if self.track_hits:
            _core.count_hits(idx, val, self.hits)
            self.seen += B
        if masked:   # random mode, large k: scatter the pairs, then dense products
            dyS = ws.get("dyS_masked", (B, n_out), np.float32)
            flag = ws.get("cursor", (n_out,), np.int32)
            rows = ws.get("rows", (min(n_out, B * k),), np.int32)
            r = _core.scatter_pairs(idx, val, dyS, flag, rows)
            return self._masked_products(xn, wn, dyS, rows[:r], dx, need_dw, nt) + (db,)
        if need_dx:
            sel = ws.get("sel", (nt * _core.thread_stride(k),), np.int32)
            coef = ws.get("coef", (nt * _core.thread_stride(k),), np.float32)
            _core.sparse_dx(wn, idx, val, dxn, sel, coef, nt)
        gw = None
        if need_dw:
            r, rows, offsets, pair_b, pair_v = kernels.group_pairs_into(n_out, idx, val, ws)
            if self.sparse_grad:
                values = torch.empty(r, n_in, dtype=torch.float32)
                _core.sparse_dw(xn, r, offsets, pair_b, pair_v, _np(values), nt)
                gw = self._weight_grad(rows[:r], values)
            else:
                full = torch.zeros(n_out, n_in, dtype=torch.float32)
                values = ws.get("values", (r, n_in), np.float32)
                _core.sparse_dw(xn, r, offsets, pair_b, pair_v, values, nt)
                _np(full)[rows[:r]] = values
                gw = full
        return dx, gw, db

    def _masked_products(self, xn, wn, dyS, rows, dx, need_dw, nt):
        """dx = dyS W into ``dx`` (when given) and the weight gradient of dyS^T x on ``rows``."""
        if dx is not None:
            _core.matmul_nn(dyS, wn, _np(dx), nt)
        if not need_dw:
            return dx, None
        full = torch.empty(self.out_features, self.in_features, dtype=torch.float32)
        _core.matmul_tn(dyS, xn, _np(full), nt)
        if not self.sparse_grad:
            return dx, full          # rows outside ``rows`` are exact zeros
        values = torch.from_numpy(np.take(_np(full), rows, axis=0))
        return dx, self._weight_grad(rows, values)

    def _weight_grad(self, rows, values):
        """The weight gradient in the layer's form. rows: int32 ascending numpy (None:
        every row, ``values`` the full gradient)."""
        n_out = self.out_features
        if not self.sparse_grad:
            if rows is None:
                return values
            full = torch.zeros(n_out, self.in_features, dtype=torch.float32)
            _np(full)[rows] = _np(values)
            return full
        if rows is None:
            ind = torch.arange(n_out, dtype=torch.int64).unsqueeze(0)
        else:
            ind = torch.from_numpy(rows.astype(np.int64).reshape(1, -1))
        return torch.sparse_coo_tensor(ind, values, (n_out, self.in_features),
                                       is_coalesced=True, check_invariants=False)


def _raise_nonfinite(bad):
    if bad:
        raise FloatingPointError(f"MePropLinear.backward: the output gradient contains {bad} "
                                 "NaN/Inf value(s); top-k selection needs finite gradients")
