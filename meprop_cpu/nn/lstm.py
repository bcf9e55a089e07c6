"""An LSTM layer with meProp backward through time (C kernels in include/meprop/lstm.h).

One layer over one sequence ``X`` (T, n_in) at a time, or over B sequences
side by side (``forward(X, lengths)``: minibatches of sentences, one (B, h) x
(h, 4h) product per step; see :meth:`LSTM.forward`). Gates are stacked in
PyTorch's order i, f, g, o: ``W`` (4h, n_in), ``U`` (4h, h), one bias ``b``
(4h)::

    z_t = W x_t + b + U h_{t-1};  i, f, o = sigmoid(.), g = tanh(.)
    c_t = f c_{t-1} + i g;  h_t = o tanh(c_t);  h_0 = c_0 = 0

Forward: ``X W^T + b`` for the whole sequence is one product, then the
recurrence runs in C (one ``U h_{t-1}`` product per step).

meProp (``k`` set, ``1 <= k < h``, mode "topk"): at every time step the
gradient of the pre-activations ``dz_t`` is sparsified **per gate**: in each
of the four h-wide gate blocks only the k entries of largest magnitude are
kept (4k of 4h per step). The same selection feeds both products of the
step: the recurrent gradient ``dh_{t-1}`` is formed from the k selected rows
of ``U`` per gate, and the weight gradients ``dW = dZ_S^T X`` and ``dU =
dZ_S^T H_prev`` have only the selected rows, handed to the optimizer as
factored :class:`~meprop_cpu.kernels.RowGrad` s (a row-sparse optimizer then
reads and writes only those rows of ``W``, ``U`` and their state). The input
gradient ``dX = dZ_S W`` uses the same selection. The cell-state path
``dc_{t-1} = f dc_t`` is elementwise and stays exact, and the bias gradient
is the sum of the full ``dz_t`` (as the MLP's bias uses the full ``dy``).
The paper's text says top-k is applied to the LSTM's matrix products without
fixing how; per step and per gate, shared by both products, is this
library's reading. ``k=None`` or ``k >= h`` gives the exact dense backward.
"""
import numbers

import numpy as np

from .. import _core, kernels
from .._config import get_num_threads
from ..kernels import RowGrad, Workspace
from .layers import Module, Parameter

__all__ = ["LSTM", "LSTM_MODES", "DEFAULT_LSTM_MODE"]

LSTM_MODES = ("topk", "dense")
# the one place the LSTM's default meProp selection is named
DEFAULT_LSTM_MODE = "topk"


def _check_dim(v, name, who):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{who}: {name} must be an int, got {type(v).__name__} ({v!r})")
    if int(v) < 1:
        raise ValueError(f"{who}: {name} must be >= 1, got {v}")
    return int(v)


class LSTM(Module):
    """One LSTM layer, one sequence per call, meProp backward through time.

    n_in, hidden: widths. k: per-gate top-k of each step's pre-activation
    gradient (None: dense). mode: "topk" or "dense". seed: initial weights,
    uniform in [-1/sqrt(hidden), 1/sqrt(hidden)] (PyTorch's init), bias 0.
    needs_input_grad: whether backward returns dX.

    forward(X) -> H (T, hidden): X float32 (T, n_in). The returned array and
    the saved activations live in the layer's workspace (valid until the next
    forward). backward(dH) -> dX (T, n_in) or None; sets W.grad, U.grad
    (RowGrads: factored and row-sparse under meProp, dense otherwise) and
    b.grad. ``hits`` / ``seen``: with ``track_hits`` on, how many steps had
    each hidden unit in some gate's top-k with a non-zero gradient
    (activeness for meSimp)."""

    def __init__(self, n_in, hidden, k=None, mode=DEFAULT_LSTM_MODE, seed=0,
                 needs_input_grad=True):
        who = "LSTM"
        n_in = _check_dim(n_in, "n_in", who)
        hidden = _check_dim(hidden, "hidden", who)
        if mode not in LSTM_MODES:
            raise ValueError(f"{who}: mode must be one of {LSTM_MODES}, got {mode!r}")
        if k is not None:
            k = _check_dim(k, "k", who)
        self.k, self.mode = k, mode
        rng = np.random.default_rng(seed)
        a = 1.0 / np.sqrt(hidden)
        self.W = Parameter(rng.uniform(-a, a, (4 * hidden, n_in)), "W")
        self.U = Parameter(rng.uniform(-a, a, (4 * hidden, hidden)), "U")
        self.b = Parameter(np.zeros(4 * hidden), "b")
        self.needs_input_grad = bool(needs_input_grad)
        self._ws = Workspace()
        self._wsW = Workspace()
        self._wsU = Workspace()
        self._T = None
        self._B, self._pad, self._n_real = 1, None, 0
        self.track_hits = False
        self.hits = np.zeros(hidden, dtype=np.int64)
        self.seen = 0

    @property
    def n_in(self):
        return self.W.data.shape[1]

    @property
    def hidden(self):
        return self.U.data.shape[1]

    @property
    def sparse(self):
        return self.mode != "dense" and self.k is not None and self.k < self.hidden

    def parameters(self):
        return [self.W, self.U, self.b]

    def _check_x(self, X, name, n, who):
        if not isinstance(X, np.ndarray) or X.dtype != np.float32:
            raise TypeError(f"{who}: {name} must be a float32 numpy array, got "
                            f"{getattr(X, 'dtype', type(X).__name__)}")
        if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] != n:
            raise ValueError(f"{who}: {name} must have shape (T >= 1, {n}), got {X.shape}")
        return np.ascontiguousarray(X)

    def forward(self, X, lengths=None):
        """H (T, hidden) of one sequence X (T, n_in); or, with ``lengths`` (B
        ints >= 1), of B sequences side by side: X (T*B, n_in) time major (row
        t*B + b = step t of sequence b, T = max(lengths), the rows past a
        sequence's length are padding, any values) -> H (T*B, hidden) in the
        same layout (padded rows meaningless). One step of the B sequences is
        one (B, h) x (h, 4h) product."""
        if lengths is None:
            X = self._check_x(X, "X", self.n_in, "LSTM.forward")
            T, B = X.shape[0], 1
        else:
            lengths = self._check_lengths(lengths)
            B, T = lengths.shape[0], int(lengths.max())
            X = self._check_x(X, "X", self.n_in, "LSTM.forward")
            if X.shape[0] != T * B:
                raise ValueError(f"LSTM.forward: X must have max(lengths) * len(lengths) = "
                                 f"{T * B} rows (time major), got {X.shape[0]}")
        h, n = self.hidden, T * B
        ws = self._ws
        XP = ws.get("XP", (n, 4 * h), np.float32)
        Z = ws.get("Z", (n, 4 * h), np.float32)
        H = ws.get("H", (n + B, h), np.float32)
        C = ws.get("C", (n + B, h), np.float32)
        TC = ws.get("TC", (n, h), np.float32)
        H[:B] = 0.0
        C[:B] = 0.0
        if lengths is None:
            _core.lstm_forward(X, self.W.data, self.b.data, self.U.data, XP, Z, H, C, TC,
                               get_num_threads())
            self._pad = None
        else:
            _core.lstm_forward_batch(X, self.W.data, self.b.data, self.U.data, XP, Z, H, C, TC,
                                     B, get_num_threads())
            steps = np.arange(T)[:, None]
            pad = np.flatnonzero((steps >= lengths[None, :]).ravel())
            self._pad = pad if pad.size else None
        self._X, self._T, self._B = X, T, B
        self._n_real = n if lengths is None else int(lengths.sum())
        return H[B:]

    @staticmethod
    def _check_lengths(lengths):
        a = np.asarray(lengths)
        if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iu" or (a < 1).any():
            raise ValueError(f"LSTM.forward: lengths must be a non-empty 1-D sequence of ints "
                             f">= 1, got {lengths!r}")
        return a.astype(np.int64)

    def backward(self, dH):
        if self._T is None:
            raise RuntimeError("LSTM.backward called without a forward pass")
        T, B, h = self._T, self._B, self.hidden
        n = T * B
        dH = self._check_x(dH, "dH", h, "LSTM.backward")
        if dH.shape[0] != n:
            raise ValueError(f"LSTM.backward: dH has {dH.shape[0]} rows, the forward "
                             f"{'sequence had' if B == 1 else 'batch had T*B ='} {n}")
        if self._pad is not None and dH[self._pad].any():   # padding gets no gradient
            dH = dH.copy()                  # (a caller that zeroes it, as PosTagger does,
            dH[self._pad] = 0.0             # is not copied)
        ws, nt = self._ws, get_num_threads()
        Z, H, C, TC = ws.get("Z", (n, 4 * h), np.float32), ws.get("H", (n + B, h), np.float32), \
            ws.get("C", (n + B, h), np.float32), ws.get("TC", (n, h), np.float32)
        dZ = ws.get("dZ", (n, 4 * h), np.float32)
        dh = ws.get("dh", (B, h), np.float32)
        dc = ws.get("dc", (B, h), np.float32)
        dh[...] = 0.0
        dc[...] = 0.0
        X, Hprev = self._X, H[:n]
        if not self.sparse:
            one_i = ws.get("one_i", (1, 1), np.int32)
            one_f = ws.get("one_f", (1, 1), np.float32)
            one_w = ws.get("one_w", (1,), np.int64)
            if B == 1:
                _core.lstm_backward(Z, C, TC, self.U.data, dH, 0, dZ, one_i, one_f, dh[0], dc[0],
                                    one_w, nt)
            else:
                _core.lstm_backward_batch(Z, C, TC, self.U.data, dH, B, 0, dZ, one_i, one_f, dh,
                                          dc, one_w, ws.get("dzs", (B, h), np.float32), nt)
            self.b.grad = dZ.sum(axis=0)
            gW = self._wsW.get("gW", self.W.data.shape, np.float32)
            gU = self._wsU.get("gU", self.U.data.shape, np.float32)
            _core.matmul_tn(dZ, X, gW, nt)
            _core.matmul_tn(dZ, Hprev, gU, nt)
            self.W.grad, self.U.grad = RowGrad(None, gW), RowGrad(None, gU)
            dX = None
            if self.needs_input_grad:
                dX = ws.get("dX", (n, self.n_in), np.float32)
                _core.matmul_nn(dZ, self.W.data, dX, nt)
            if self.track_hits:
                g = np.abs(dZ).reshape(n, 4, h).max(axis=1)
                self.hits += np.count_nonzero(g, axis=0)
                self.seen += self._n_real
            return dX
        k = self.k
        idx = ws.get("idx", (n, 4 * k), np.int32)
        val = ws.get("val", (n, 4 * k), np.float32)
        if B == 1:
            heap = ws.get("heap", (_core.lstm_topk_ws_entries(k),), np.int64)
            bad = _core.lstm_backward(Z, C, TC, self.U.data, dH, k, dZ, idx, val, dh[0], dc[0],
                                      heap, nt)
        else:
            heap = ws.get("heap_b", (nt * _core.thread_stride(_core.lstm_topk_ws_entries(k)),),
                          np.int64)
            one_f = ws.get("one_f", (1, 1), np.float32)
            bad = _core.lstm_backward_batch(Z, C, TC, self.U.data, dH, B, k, dZ, idx, val, dh,
                                            dc, heap, one_f, nt)
        if bad:
            raise FloatingPointError(f"LSTM.backward: the gradient holds {bad} NaN/Inf value(s)")
        self.b.grad = dZ.sum(axis=0)
        if self.track_hits:
            hit = np.zeros((n, h), dtype=bool)   # unit j selected in some gate at step t
            sel = val.ravel() != 0.0
            hit[np.repeat(np.arange(n), 4 * k)[sel], (idx.ravel() % h)[sel]] = True
            self.hits += hit.sum(axis=0)
            self.seen += self._n_real
        dX, self.W.grad = kernels.sparse_backward_into(X, self.W.data, idx, val, self._wsW, nt,
                                                       self.needs_input_grad, factored=True)
        # H[:n] (the leading rows of H) is contiguous: the factored dU reads it in place
        _, self.U.grad = kernels.sparse_backward_into(Hprev, self.U.data, idx, val, self._wsU, nt,
                                                      False, factored=True)
        return dX

    def reset_hits(self):
        self.hits = np.zeros(self.hidden, dtype=np.int64)
        self.seen = 0

    def __repr__(self):
        return f"LSTM({self.n_in}, {self.hidden}, k={self.k}, mode={self.mode!r})"
