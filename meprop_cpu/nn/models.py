"""Models: :class:`Sequential` (a chain of modules) and :class:`MLP` (Linear
layers with an activation and optional dropout between them), and :func:`load`."""
import numpy as np

from .. import kernels
from .._io import atomic_savez, read_npz
from .layers import (Cube, Dropout, Linear, Module, ReLU, Tanh, _check_input,
                     _check_k, _check_mode, _check_size)

__all__ = ["Sequential", "MLP", "load", "linears", "dropouts"]


def linears(model):
    """The Linear layers of a model built from ``modules`` (empty for other models)."""
    return [m for m in getattr(model, "modules", []) if isinstance(m, Linear)]


def dropouts(model):
    """The Dropout layers of a model built from ``modules``."""
    return [m for m in getattr(model, "modules", []) if isinstance(m, Dropout)]


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
