"""Layers, activations and the loss, with explicit forward / backward.

Every module has ``forward(x)`` and ``backward(dy) -> dx``; a module with
weights exposes them as :class:`Parameter` objects whose ``grad`` the
backward pass sets (a :class:`~meprop_cpu.kernels.RowGrad` for weight
matrices, a dense array for biases). Arrays are float32 and C-contiguous.

meProp lives in :class:`Linear`: with ``k`` set, its backward keeps only the
top-k entries of each example's output gradient and runs the sparse kernels,
so the weight gradient touches only the selected rows of ``W``.
"""
import numbers

import numpy as np

from .. import _core, kernels
from .._config import get_num_threads
from ..kernels import RowGrad, Workspace

__all__ = ["Parameter", "Module", "Linear", "ReLU", "Tanh", "Cube", "Dropout", "Identity",
           "SoftmaxCrossEntropy", "MODES", "DEFAULT_MODE"]

MODES = ("batch_dw", "topk_dw", "topk", "unified", "random", "dense")

#: The meProp mode of a layer or model given ``k`` and no ``mode``. The B*k
#: largest output-gradient entries of the minibatch form the weight gradient
#: (so the update stays row-sparse) and the exact input gradient is passed
#: down: it trains as well as dense backprop, where the paper's "topk"
#: (which also sparsifies the input gradient) is unstable without dropout and
#: a per-example top-k for the weight gradient ("topk_dw") falls behind at
#: larger batches (docs/stability.md).
DEFAULT_MODE = "batch_dw"


def _check_mode(mode, who):
    if mode is None:
        return DEFAULT_MODE
    if mode not in MODES:
        raise ValueError(f"{who}: mode must be one of {MODES} or None (the default, "
                         f"{DEFAULT_MODE!r}), got {mode!r}")
    return mode


class Parameter:
    """A trainable array and its gradient (set by backward, cleared by zero_grad)."""

    __slots__ = ("data", "grad", "name")

    def __init__(self, data, name=""):
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.grad = None
        self.name = name

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={self.data.shape})"


class Module:
    training = True

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def parameters(self):
        return []

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)


def _check_input(x, n, who, name="x"):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{who}: {name} must be a numpy.ndarray of float32, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{who}: {name} must have dtype float32, got {x.dtype} "
                        f"(convert with {name}.astype(np.float32))")
    if x.ndim != 2:
        raise ValueError(f"{who}: {name} must be 2-D (batch, features), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{who}: {name} is an empty batch (shape {x.shape})")
    if n is not None and x.shape[1] != n:
        raise ValueError(f"{who}: {name} must have {n} columns, got shape {x.shape}")
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return x


def _check_k(k, n_out, who):
    if k is None:
        return None
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{who}: k must be an int or None, got {type(k).__name__} ({k!r})")
    k = int(k)
    if k < 1:
        raise ValueError(f"{who}: k must be >= 1 (or None for dense backprop), got {k}")
    return k


def _check_size(v, name, who):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{who}: {name} must be an int, got {type(v).__name__} ({v!r})")
    if int(v) < 1:
        raise ValueError(f"{who}: {name} must be >= 1, got {v}")
    return int(v)


class Linear(Module):
    """``y = x W^T + b`` with ``W`` (n_out, n_in), meProp backward when ``k`` is set.

    mode: "batch_dw" (the default, :data:`DEFAULT_MODE`: the ``B*k``
    largest ``|dy|`` entries of the batch of B rows, however they fall on
    the examples, form the weight gradient; the exact input gradient
    ``dx = dy W`` goes to the layer below), "topk_dw" (the same with k
    entries per example), "topk" (the paper's meProp: the same top-k entries give
    both the weight and the input gradient), "unified" (one index set per
    batch, ranked by the column sums of |dy|), "random" (a fresh random
    k-subset per example: the paper's ablation) or "dense". ``k=None`` or
    ``k >= n_out`` gives exact dense backprop in every mode. ``None`` means
    :data:`DEFAULT_MODE`.

    After ``backward(dy)``: ``W.grad`` is a RowGrad holding only the touched
    rows, ``b.grad`` the dense bias gradient: the full dy (as the authors'
    code has it) summed over the batch one row after the other, on every
    path. ``dx`` and the RowGrad live in this layer's workspace: they stay
    valid until its next backward.

    ``hits`` (int64 (n_out,)) and ``seen`` count, when ``track_hits`` is on,
    how many examples had each neuron in their top-k set with a non-zero
    gradient: meSimp's activeness record.
    """

    def __init__(self, n_in, n_out, k=None, mode=None, seed=None, init="glorot",
                 needs_input_grad=True):
        who = "Linear"
        n_in = _check_size(n_in, "n_in", who)
        n_out = _check_size(n_out, "n_out", who)
        mode = _check_mode(mode, who)
        self.k = _check_k(k, n_out, who)
        self.mode = mode
        if seed is not None:
            seed = kernels._check_int(seed, "seed", 0, 2**63 - 1)
        rng = np.random.default_rng(seed)
        if init == "glorot":
            a = np.sqrt(6.0 / (n_in + n_out))
            w = rng.uniform(-a, a, size=(n_out, n_in))
        elif init == "zeros":
            w = np.zeros((n_out, n_in))
        else:
            raise ValueError(f"{who}: init must be 'glorot' or 'zeros', got {init!r}")
        self.W = Parameter(w, "W")
        self.b = Parameter(np.zeros(n_out), "b")
        self.needs_input_grad = bool(needs_input_grad)
        self._rand_seed = int(rng.integers(0, 2**63 - 1)) if seed is not None else 0
        self._rand_calls = 0
        self._x = None
        self._ws = Workspace()
        self._plans = {}        # _core.LinearBackward by shape and mode
        self._plan = None       # the one the last backward used
        self._dy = None         # mode batch_dw: the last backward's dy
        self.track_hits = False
        self.hits = np.zeros(n_out, dtype=np.int64)
        self.seen = 0

    @property
    def n_in(self):
        return self.W.data.shape[1]

    @property
    def n_out(self):
        return self.W.data.shape[0]

    @property
    def sparse(self):
        """True when backward takes the meProp path at the current width."""
        return self.mode != "dense" and self.k is not None and self.k < self.n_out

    @property
    def exact_dx(self):
        """True when a sparse backward still passes the exact input gradient
        (modes "batch_dw" and "topk_dw")."""
        return self.mode in kernels.EXACT_DX_MODES

    def parameters(self):
        return [self.W, self.b]

    def forward(self, x):
        x = _check_input(x, self.n_in, "Linear.forward")
        y = np.empty((x.shape[0], self.n_out), dtype=np.float32)
        _core.linear_forward(x, self.W.data, self.b.data, y, False, get_num_threads())
        if self.training:
            self._x = x
        return y

    def backward(self, dy):
        if self._x is None:
            raise RuntimeError("Linear.backward called without a forward pass in training mode")
        x = self._x
        dy = _check_input(dy, self.n_out, "Linear.backward", "dy")
        if dy.shape[0] != x.shape[0]:
            raise ValueError(f"Linear.backward: dy has {dy.shape[0]} rows, the forward batch "
                             f"had {x.shape[0]}")
        B, n_in, n_out = dy.shape[0], self.n_in, self.n_out
        nt = get_num_threads()
        if self.sparse and self.mode == "random":
            return self._random_backward(x, dy, nt)
        # every other mode: mp_layer_backward (layer.h), the entry point the fused
        # step calls for each layer, so both paths compute the same bits
        lb = self._plan = kernels.linear_backward_for(
            self._plans, self.n_in, self.n_out, self.k if self.sparse else 0, self.mode,
            self.needs_input_grad, self.track_hits, B, nt)
        bad = lb.run(x, self.W.data, dy, self.hits if self.track_hits else None, nt)
        if bad:
            raise FloatingPointError(f"Linear.backward: dy contains {bad} NaN/Inf value(s)")
        if self.track_hits:
            self.seen += B
        # mode batch_dw: a data-parallel step forms the weight gradient again from
        # every rank's dy (meprop_cpu.distributed); valid until the next backward
        self._dy = dy if self.mode == "batch_dw" else None
        self.b.grad = lb.arrays["gb"][:n_out].copy()
        self._weight_grad_from(lb, x)
        a = lb.arrays
        return a["dx"][:B * n_in].reshape(B, n_in) if self.needs_input_grad else None

    def weight_grad(self, x, dy):
        """Set ``W.grad`` from the batch ``x`` (B, n_in), ``dy`` (B, n_out) as
        backward does (same kernels, same bits), without the input gradient,
        the bias gradient or the activeness counts: what a data-parallel step
        calls on the global batch gathered from every rank, where mode
        "batch_dw" selects over the whole batch."""
        x = _check_input(x, self.n_in, "Linear.weight_grad")
        dy = _check_input(dy, self.n_out, "Linear.weight_grad", "dy")
        if dy.shape[0] != x.shape[0]:
            raise ValueError(f"Linear.weight_grad: dy has {dy.shape[0]} rows, x has "
                             f"{x.shape[0]}")
        if self.sparse and self.mode == "random":
            raise ValueError("Linear.weight_grad: mode 'random' draws its selection in "
                             "backward")
        nt = get_num_threads()
        lb = kernels.linear_backward_for(
            self._plans, self.n_in, self.n_out, self.k if self.sparse else 0, self.mode,
            False, False, x.shape[0], nt)
        bad = lb.run(x, self.W.data, dy, None, nt)
        if bad:
            raise FloatingPointError(f"Linear.weight_grad: dy contains {bad} NaN/Inf value(s)")
        self._weight_grad_from(lb, x)
        return self.W.grad

    def _weight_grad_from(self, lb, x):
        """W.grad from the buffers mp_layer_backward left in plan lb (input x)."""
        n_in, n_out = self.n_in, self.n_out
        a = lb.arrays
        if not self.sparse:
            self.W.grad = RowGrad(None, a["gw"][:n_out * n_in].reshape(n_out, n_in))
        elif self.mode == "unified":
            k = self.k
            self.W.grad = RowGrad(a["idx"][:k], a["gw"][:k * n_in].reshape(k, n_in))
        elif lb.masked:   # k > n_out / 4: the products ran dense on the masked dy
            rows = a["rows"][:lb.r]
            values = self._ws.get("values", (lb.r, n_in), np.float32)
            np.take(a["gw"][:n_out * n_in].reshape(n_out, n_in), rows, axis=0, out=values)
            self.W.grad = RowGrad(rows, values)
        else:   # factored: the optimizer forms each gradient row as it applies it
            values = self._ws.get("values", (lb.r, n_in), np.float32)
            self.W.grad = RowGrad._factored(a["rows"][:lb.r], x, a["offsets"], a["pair_b"],
                                            a["pair_v"], values)

    def __getstate__(self):
        """Copies and pickles leave out the backward's C buffers (rebuilt on the
        next backward): the layer copies like the plain arrays it holds."""
        state = self.__dict__.copy()
        state["_plans"], state["_plan"], state["_dy"] = {}, None, None
        return state

    def selection(self, B):
        """(idx, val) int32 / float32 (B, k): the per-example top-k (or random-k)
        entries of dy that the last backward of B rows kept (not for the
        unified, batch, masked or dense backward)."""
        k = self.k
        if self.mode in ("batch_dw", "unified", "dense"):
            raise ValueError(f"Linear.selection: mode {self.mode!r} keeps no per-example "
                             f"selection")
        if self.mode == "random":
            return self._ws.get("idx", (B, k), np.int32), self._ws.get("val", (B, k), np.float32)
        a = self._plan.arrays
        return a["idx"][:B * k].reshape(B, k), a["val"][:B * k].reshape(B, k)

    def _random_backward(self, x, dy, nt):
        """Mode "random" (the paper's ablation): a fresh random k-subset per example."""
        B, k = dy.shape[0], self.k
        ws = self._ws
        self.b.grad = np.empty(self.n_out, np.float32)
        _core.colsum_rows(dy, self.b.grad)
        idx = ws.get("idx", (B, k), np.int32)
        val = ws.get("val", (B, k), np.float32)
        seed = (self._rand_seed + self._rand_calls) % 2**64
        self._rand_calls += 1
        _core.randk_rows(B, self.n_out, k, seed, idx, nt)
        val[...] = np.take_along_axis(dy, idx, axis=1)
        if self.track_hits:
            _core.count_hits(idx, val, self.hits)
            self.seen += B
        dx, self.W.grad = kernels.sparse_backward_into(x, self.W.data, idx, val, ws, nt,
                                                       self.needs_input_grad, factored=True)
        return dx

    def reset_hits(self):
        self.hits = np.zeros(self.n_out, dtype=np.int64)
        self.seen = 0

    def __repr__(self):
        return f"Linear({self.n_in}, {self.n_out}, k={self.k}, mode={self.mode!r})"


class Identity(Module):
    def forward(self, x):
        return x

    def backward(self, dy):
        return dy


class ReLU(Module):
    """max(x, 0). Keeps its output for the backward (dx = dy where y > 0)."""

    def forward(self, x):
        x = _check_input(x, None, "ReLU.forward")
        y = np.empty_like(x)
        _core.relu_forward(x, y)
        self._y = y if self.training else None
        return y

    def backward(self, dy):
        y = getattr(self, "_y", None)
        if y is None:
            raise RuntimeError("ReLU.backward called without a forward pass in training mode")
        dy = _check_input(dy, y.shape[1], "ReLU.backward", "dy")
        if dy.shape != y.shape:
            raise ValueError(f"ReLU.backward: dy has shape {dy.shape}, the forward output "
                             f"{y.shape}")
        dx = np.empty_like(dy)
        _core.relu_backward(dy, y, dx)
        return dx


class Tanh(Module):
    def forward(self, x):
        y = np.tanh(x)
        if self.training:
            self._y = y
        return y

    def backward(self, dy):
        return dy * (1.0 - self._y * self._y)


class Cube(Module):
    """x ** 3, the activation of Chen & Manning's parser. One C pass each way
    (elementwise.h) for float32 2-D C-contiguous arrays, with the same bits as
    the numpy expressions ``x * x * x`` and ``dy * (3.0 * x * x)``, which
    other inputs take."""

    @staticmethod
    def _fast(*arrays):
        return all(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 2
                   and a.flags.c_contiguous and a.size for a in arrays)

    def forward(self, x):
        if self.training:
            self._x = x
        if not self._fast(x):
            return x * x * x
        y = np.empty_like(x)
        _core.cube_forward(x, y, get_num_threads())
        return y

    def backward(self, dy):
        x = self._x
        if not (self._fast(dy, x) and dy.shape == x.shape):
            return dy * (3.0 * x * x)
        dx = np.empty_like(dy)
        _core.cube_backward(dy, x, dx, get_num_threads())
        return dx


class Dropout(Module):
    """Inverted dropout: in training, zero each unit with probability p and
    scale the rest by 1/(1-p); identity in eval mode. Seeded.

    The uniforms come from a counter-based generator in C (splitmix64 keyed
    by the seed, elementwise.h): the state is (key, draws so far), and a
    draw costs ~0.2 ns instead of the ~1.3 ns of numpy's Generator.random
    (5,000 draws: 1.1 vs 6.9 us). The fused training step draws the same
    numbers in the same order (:meth:`draw`)."""

    def __init__(self, p=0.5, seed=None):
        if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0.0 <= float(p) < 1.0:
            raise ValueError(f"Dropout: p must be a float in [0, 1), got {p!r}")
        self.p = float(p)
        self._key = int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])
        self._counter = 0
        self._legacy = None   # a numpy Generator: a state saved before meprop_cpu 0.2.0

    def draw(self, out):
        """Fill the C-contiguous float32 array ``out`` with the next ``out.size``
        uniforms in [0, 1) (unit e is kept when its draw is >= p)."""
        if self._legacy is not None:
            self._legacy.random(dtype=np.float32, out=out)
            return
        _core.uniform_f32(self._key, self._counter, out.reshape(-1), get_num_threads())
        self._counter += out.size

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._scale = None
            return x
        u = np.empty(x.shape, np.float32)
        self.draw(u)
        self._scale = (u >= self.p).astype(np.float32) * np.float32(1.0 / (1.0 - self.p))
        return x * self._scale

    def backward(self, dy):
        return dy if self._scale is None else dy * self._scale

    def rng_state(self):
        """The generator's state, a JSON-able dict (checkpoints store it)."""
        if self._legacy is not None:
            return self._legacy.bit_generator.state
        return {"counter_rng": "splitmix64", "key": self._key, "counter": self._counter}

    def set_rng_state(self, state):
        """Restore :meth:`rng_state`. A numpy bit-generator state (what
        checkpoints written before meprop_cpu 0.2.0 hold) is taken too: this Dropout then
        keeps drawing from that numpy generator, so the run resumes exactly."""
        if not isinstance(state, dict):
            raise TypeError(f"Dropout.set_rng_state: state must be a dict, got "
                            f"{type(state).__name__}")
        if state.get("counter_rng") == "splitmix64":
            key, counter = state.get("key"), state.get("counter")
            if not (isinstance(key, numbers.Integral) and isinstance(counter, numbers.Integral)
                    and 0 <= key < 2 ** 64 and 0 <= counter < 2 ** 64):
                raise ValueError("Dropout.set_rng_state: key and counter must be integers "
                                 f"in [0, 2**64), got {key!r}, {counter!r}")
            self._key, self._counter, self._legacy = int(key), int(counter), None
            return
        name = state.get("bit_generator")
        bitgen = getattr(np.random, name, None) if isinstance(name, str) else None
        if bitgen is None or not isinstance(bitgen, type) \
                or not issubclass(bitgen, np.random.BitGenerator):
            raise ValueError("Dropout.set_rng_state: not a Dropout state (expected the dict "
                             "of rng_state(), or a numpy bit-generator state)")
        gen = np.random.Generator(bitgen())
        gen.bit_generator.state = state
        self._legacy = gen


def _check_labels(y, B):
    """Class labels y for a batch of B: a contiguous int64 (B,) array (converted
    if needed); ValueError / TypeError naming y. (The range is checked in C.)"""
    if type(y) is np.ndarray and y.dtype == np.int64 and y.ndim == 1 and y.shape[0] == B \
            and y.flags.c_contiguous:
        return y
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != B:
        raise ValueError(f"SoftmaxCrossEntropy: y must be 1-D with {B} labels, "
                         f"got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"SoftmaxCrossEntropy: y must hold integer labels, got {y.dtype}")
    return np.ascontiguousarray(y, dtype=np.int64)


def _label_range_error(y, C):
    return ValueError(f"SoftmaxCrossEntropy: labels y must lie in [0, {C}), "
                      f"got range [{y.min()}, {y.max()}]")


class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy over the batch; ``backward()`` returns d loss / d logits."""

    def forward(self, logits, y):
        logits = _check_input(logits, None, "SoftmaxCrossEntropy", "logits")
        y = _check_labels(y, logits.shape[0])
        d = np.empty_like(logits)
        status, loss = _core.softmax_xent(logits, y, d)
        if status:
            raise _label_range_error(y, logits.shape[1])
        self._d = d
        return loss

    __call__ = forward

    def backward(self):
        """d loss / d logits of the last forward: (softmax - onehot(y)) / B, a new array."""
        d = getattr(self, "_d", None)
        if d is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        return d.copy()
