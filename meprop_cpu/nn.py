"""Layers, activations, loss and models with explicit forward / backward.

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

from . import _dense, _kernels, kernels
from ._io import atomic_savez, read_npz
from ._config import get_num_threads
from .kernels import RowGrad, Workspace

__all__ = ["Parameter", "Module", "Linear", "ReLU", "Tanh", "Cube", "Dropout", "Identity",
           "SoftmaxCrossEntropy", "Sequential", "MLP", "MODES", "DEFAULT_MODE"]

MODES = ("topk_dw", "topk", "unified", "random", "dense")

#: The meProp mode of a layer or model given ``k`` and no ``mode``. Per-example
#: top-k that sparsifies the weight gradient only and passes the exact input
#: gradient down: it trains as well as dense backprop, where the paper's
#: "topk" (which also sparsifies the input gradient) is unstable without
#: dropout (docs/stability.md).
DEFAULT_MODE = "topk_dw"


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

    mode: "topk_dw" (the default, :data:`DEFAULT_MODE`: per-example top-k
    for the weight gradient, the exact input gradient ``dx = dy W`` for the
    layer below), "topk" (the paper's meProp: the same top-k entries give
    both the weight and the input gradient), "unified" (one index set per
    batch, ranked by the column sums of |dy|), "random" (a fresh random
    k-subset per example: the paper's ablation) or "dense". ``k=None`` or
    ``k >= n_out`` gives exact dense backprop in every mode. ``None`` means
    :data:`DEFAULT_MODE`.

    After ``backward(dy)``: ``W.grad`` is a RowGrad holding only the touched
    rows, ``b.grad`` the dense bias gradient ``dy.sum(0)`` (from the full dy,
    as the authors' code does). ``dx`` and the RowGrad live in this layer's
    workspace: they stay valid until its next backward.

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
        (mode "topk_dw")."""
        return self.mode == "topk_dw"

    def parameters(self):
        return [self.W, self.b]

    def forward(self, x):
        x = _check_input(x, self.n_in, "Linear.forward")
        y = np.empty((x.shape[0], self.n_out), dtype=np.float32)
        _dense.linear_forward(x, self.W.data, self.b.data, y, False, get_num_threads())
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
        W = self.W.data
        self.b.grad = dy.sum(axis=0)
        nt = get_num_threads()
        dx = None
        ws = self._ws
        if not self.sparse:
            if self.needs_input_grad:
                dx = ws.get("dx", x.shape, np.float32)   # like the sparse paths: no allocation
                _dense.matmul_nn(dy, W, dx, nt)
            gw = ws.get("dense_gw", W.shape, np.float32)
            _dense.matmul_tn(dy, x, gw, nt)
            self.W.grad = RowGrad(None, gw)
            if self.track_hits:
                # every neuron with a non-zero gradient counts as selected
                self.hits += np.count_nonzero(dy, axis=0)
                self.seen += dy.shape[0]
            return dx
        k = self.k
        B = dy.shape[0]
        # mode "topk_dw": the top-k weight gradient of mode "topk" (same kernels,
        # same bits) and dx = dy W from the whole dy, as the fused step does it
        sel = "topk" if self.exact_dx else self.mode
        sparse_dx = self.needs_input_grad and not self.exact_dx
        if self.needs_input_grad and self.exact_dx:
            dx = ws.get("dx_exact", x.shape, np.float32)
            _dense.matmul_nn(dy, W, dx, nt)
        if sel == "unified":
            idx = ws.get("uidx", (k,), np.int32)
            bad = kernels.topk_unified_into(dy, k, idx, ws, nt)
            if bad:
                raise FloatingPointError(f"Linear.backward: dy contains {bad} NaN/Inf value(s)")
            dx, self.W.grad = kernels.unified_backward_into(x, W, idx, dy, ws, nt, sparse_dx)
            if self.track_hits:
                dyS = ws.get("dyS", (B, k), np.float32)   # the (B, k) block the kernel gathered
                self.hits[idx] += np.count_nonzero(dyS, axis=0)
                self.seen += B
            return dx
        if sel == "topk" and _kernels.backward_masked(k, self.n_out):
            # k > n_out / 4: dense products on the masked dy (see sparse_linear.h)
            bad, mdx, grad, counts = kernels.topk_masked_backward_into(
                x, W, dy, k, ws, nt, sparse_dx)
            if bad:
                raise FloatingPointError(f"Linear.backward: dy contains {bad} NaN/Inf value(s)")
            self.W.grad = grad
            if self.track_hits:
                self.hits += counts
                self.seen += B
            return mdx if sparse_dx else dx
        idx = ws.get("idx", (B, k), np.int32)
        val = ws.get("val", (B, k), np.float32)
        if sel == "topk":
            bad = kernels.topk_rows_into(dy, k, idx, val, ws, nt)
            if bad:
                raise FloatingPointError(f"Linear.backward: dy contains {bad} NaN/Inf value(s)")
        else:  # random
            seed = (self._rand_seed + self._rand_calls) % 2**64
            self._rand_calls += 1
            _kernels.randk_rows(B, self.n_out, k, seed, idx, nt)
            val[...] = np.take_along_axis(dy, idx, axis=1)
        if self.track_hits:
            _kernels.count_hits(idx, val, self.hits)
            self.seen += B
        # factored: the optimizer forms each gradient row as it applies it
        sdx, self.W.grad = kernels.sparse_backward_into(x, W, idx, val, ws, nt, sparse_dx,
                                                        factored=True)
        return sdx if sparse_dx else dx

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
        _kernels.relu_forward(x, y)
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
        _kernels.relu_backward(dy, y, dx)
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
    """x ** 3, the activation of Chen & Manning's parser."""

    def forward(self, x):
        if self.training:
            self._x = x
        return x * x * x

    def backward(self, dy):
        return dy * (3.0 * self._x * self._x)


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
        _kernels.uniform_f32(self._key, self._counter, out.reshape(-1))
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
        status, loss = _kernels.softmax_xent(logits, y, d)
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


class Sequential(Module):
    def __init__(self, *modules):
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: item {i} is a {type(m).__name__}, not a Module")
        self.modules = list(modules)

    def forward(self, x):
        for m in self.modules:
            x = m.forward(x)
        return x

    def backward(self, dy):
        for m in reversed(self.modules):
            dy = m.backward(dy)
            if dy is None:
                break
        return dy

    def parameters(self):
        return [p for m in self.modules for p in m.parameters()]

    def named_parameters(self):
        out = []
        for i, m in enumerate(self.modules):
            for p in m.parameters():
                out.append((f"{i}.{p.name}", p))
        return out

    def train(self, mode=True):
        self.training = bool(mode)
        for m in self.modules:
            m.train(mode)
        return self

    @property
    def linears(self):
        return [m for m in self.modules if isinstance(m, Linear)]

    @property
    def sizes(self):
        """The widths along the Linear layers: [first n_in, each n_out]."""
        lin = self.linears
        return [lin[0].n_in] + [m.n_out for m in lin]

    @property
    def hidden_sizes(self):
        return self.sizes[1:-1]

    def state_dict(self):
        """Name -> array copy for every parameter ("0.W", "0.b", "2.W", ...)."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state):
        named = dict(self.named_parameters())
        missing = sorted(set(named) - set(state))
        extra = sorted(set(state) - set(named))
        if missing or extra:
            raise ValueError(f"load_state_dict: keys do not match the model "
                             f"(missing {missing}, unexpected {extra})")
        for name, p in named.items():
            a = np.asarray(state[name])
            if a.shape != p.data.shape:
                raise ValueError(f"load_state_dict: {name} has shape {a.shape}, the model "
                                 f"expects {p.data.shape} (checkpoint from another architecture?)")
        for name, p in named.items():
            p.data = np.ascontiguousarray(state[name], dtype=np.float32).copy()
            p.grad = None

    def __repr__(self):
        inner = ",\n  ".join(repr(m) for m in self.modules)
        return f"{type(self).__name__}(\n  {inner}\n)"


_ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "cube": Cube}


class MLP(Sequential):
    """A multilayer perceptron for classification.

    sizes: [n_in, h1, ..., n_classes]. k and mode apply to every hidden layer
    (the same k for all, as in the paper; mode None is :data:`DEFAULT_MODE`,
    "topk" the paper's exact semantics, see :class:`Linear`); the output layer backpropagates
    densely unless ``topk_output=True``. The first layer never computes the
    gradient of the input. ``dropout`` > 0 inserts inverted dropout after each
    hidden activation.
    """

    def __init__(self, sizes, k=None, mode=None, dropout=0.0, activation="relu",
                 topk_output=False, seed=0):
        who = "MLP"
        if not isinstance(sizes, (list, tuple)) or len(sizes) < 2:
            raise ValueError(f"{who}: sizes must be a list of at least two layer widths, got {sizes!r}")
        sizes = [_check_size(s, f"sizes[{i}]", who) for i, s in enumerate(sizes)]
        if activation not in _ACTIVATIONS:
            raise ValueError(f"{who}: activation must be one of {sorted(_ACTIVATIONS)}, "
                             f"got {activation!r}")
        mode = _check_mode(mode, who)
        k = _check_k(k, None, who)
        if seed is not None:
            seed = kernels._check_int(seed, "seed", 0, 2**63 - 1)
        ss = np.random.SeedSequence(seed)
        seeds = [int(s.generate_state(1, np.uint64)[0] >> 1) for s in ss.spawn(2 * len(sizes))]
        mods = []
        n_layers = len(sizes) - 1
        for i in range(n_layers):
            last = i == n_layers - 1
            lk = k if (not last or topk_output) else None
            mods.append(Linear(sizes[i], sizes[i + 1], k=lk, mode=mode, seed=seeds[i],
                               needs_input_grad=i > 0))
            if not last:
                mods.append(_ACTIVATIONS[activation]())
                if dropout:
                    mods.append(Dropout(dropout, seed=seeds[n_layers + i]))
        super().__init__(*mods)
        self.config = {"sizes": sizes, "k": k, "mode": mode, "dropout": float(dropout),
                       "activation": activation, "topk_output": bool(topk_output), "seed": seed}

    def logits(self, x, batch_size=1024):
        """Forward in eval mode, in batches; restores the previous mode."""
        x = _check_input(x, self.sizes[0], "MLP.logits")
        was = self.training
        self.eval()
        try:
            out = [self.forward(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        finally:
            self.train(was)
        return np.concatenate(out, axis=0)

    def predict(self, x, batch_size=1024):
        """Predicted class for each row of x."""
        return self.logits(x, batch_size).argmax(axis=1)

    def accuracy(self, x, y, batch_size=1024):
        """Percentage of rows of x whose predicted class equals y."""
        return 100.0 * float(np.mean(self.predict(x, batch_size) == np.asarray(y)))

    # -- export (meSimp): weights + a JSON architecture header, no pickle -------
    def save(self, path):
        """Write the model, at its current (possibly simplified) sizes, to ``path``
        (an ``.npz``: ``W0, b0, W1, b1, ...`` float32 and ``architecture``, UTF-8
        JSON as uint8). Written to a temporary file and renamed (atomic).
        :func:`load` reads it back as a plain dense MLP for inference."""
        import json
        import os
        arch = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "class": "MLP",
                "sizes": self.sizes, "activation": self.config["activation"],
                "trained_with": {key: self.config[key] for key in
                                 ("k", "mode", "dropout", "topk_output")}}
        arrays = {}
        for i, m in enumerate(self.linears):
            arrays[f"W{i}"], arrays[f"b{i}"] = m.W.data, m.b.data
        arrays["architecture"] = np.frombuffer(json.dumps(arch).encode("utf-8"), dtype=np.uint8)
        path = os.fspath(path)
        atomic_savez(path, arrays)
        return path


MODEL_FORMAT, MODEL_VERSION = "meprop_cpu.model", 1
__all__ += ["load", "MODEL_FORMAT", "MODEL_VERSION"]


def load(path):
    """Read a model file written by :meth:`MLP.save`: a dense MLP (``k=None``, no
    dropout, eval mode) at the saved sizes, for inference (``predict``,
    ``accuracy``). Raises FileNotFoundError, or ValueError naming the file if
    it is corrupt or not a meprop_cpu model file."""
    import json
    import os
    path = os.fspath(path)
    arrays = read_npz(path, "model file")
    raw = arrays.pop("architecture", None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"model file {path} has no 'architecture' entry: not a meprop_cpu model "
                         "(a training checkpoint loads with train.model_from_checkpoint)")
    try:
        arch = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"model file {path}: its architecture entry is not valid JSON ({e})") \
            from e
    if not isinstance(arch, dict) or arch.get("format") != MODEL_FORMAT:
        raise ValueError(f"model file {path} is not a meprop_cpu model file")
    if arch.get("version") != MODEL_VERSION:
        raise ValueError(f"model file {path} has format version {arch.get('version')!r}; this "
                         f"meprop_cpu reads version {MODEL_VERSION}")
    sizes = arch.get("sizes")
    if (arch.get("class") != "MLP" or not isinstance(sizes, list) or len(sizes) < 2
            or not all(isinstance(s, int) and s >= 1 for s in sizes)
            or arch.get("activation", "relu") not in _ACTIVATIONS):
        raise ValueError(f"model file {path}: malformed architecture {arch!r}")
    n = len(sizes) - 1
    want = {}
    for i in range(n):
        want[f"W{i}"], want[f"b{i}"] = (sizes[i + 1], sizes[i]), (sizes[i + 1],)
    if set(arrays) != set(want):
        raise ValueError(f"model file {path}: arrays {sorted(arrays)} do not match the "
                         f"architecture {sizes}")
    for name, shape in want.items():
        a = arrays[name]
        if a.shape != shape or a.dtype != np.float32:
            raise ValueError(f"model file {path}: {name} has shape {a.shape} and dtype {a.dtype}, "
                             f"expected {shape} float32")
    model = MLP(sizes, k=None, mode="dense", activation=arch.get("activation", "relu"), seed=0)
    for i, m in enumerate(model.linears):
        m.W.data = np.ascontiguousarray(arrays[f"W{i}"])
        m.b.data = np.ascontiguousarray(arrays[f"b{i}"])
    return model.eval()
