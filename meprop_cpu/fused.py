"""The fused training step: a whole MLP step (forward, loss, meProp backward,
optimizer update) in one C call (include/meprop/step.h).

The module path (``model.forward``, ``loss``, ``model.backward``,
``optimizer.step``) makes about 25 kernel calls per step, each wrapped in
Python; on a batch of 10 that dispatch is about a third of the step. Each
layer's backward is the C entry point nn.Linear.backward calls too
(mp_layer_backward, include/meprop/layer.h), and the rest runs the same
kernels in the same order on the same data, so the weights, optimizer state,
step counts and meSimp activeness counts it leaves behind are bit-identical
to the module path's (tests/test_step_paths.py: one step, layer by layer;
tests/test_fused.py: whole runs). It shares ``step_rows`` with
:class:`~meprop_cpu.steps.ModuleStep`.

:class:`FusedStep` is what :class:`~meprop_cpu.train.Trainer` uses when the
model qualifies (``Trainer(..., fused=True)``, the default); anything else
takes the module path. A model qualifies when :func:`unsupported` returns None:

* ``model`` is a :class:`~meprop_cpu.nn.Sequential` or
  :class:`~meprop_cpu.nn.MLP` (not a subclass) of ``Linear, ReLU[, Dropout],
  ..., Linear`` (no other activation; no subclasses, no forward / backward
  replaced on an instance), in training mode; dropout draws its uniforms
  from each Dropout's own generator (:meth:`~meprop_cpu.nn.Dropout.draw`),
  as Dropout.forward does;
* each Linear backpropagates a batch, per-example or unified top-k (mode
  ``"batch_dw"``, ``"topk_dw"``, ``"topk"`` or ``"unified"``) or densely (``k=None``, ``k >= n_out`` or mode
  ``"dense"``), and every layer but the first computes its input gradient;
* the optimizer is :class:`~meprop_cpu.optim.SGD`, ``AdaGrad`` or ``Adam``
  over exactly the model's parameters, row-sparse (``sparse=True``) when a
  layer is top-k;
* the loss is :class:`~meprop_cpu.nn.SoftmaxCrossEntropy`.

The step keeps pointers to the parameters and optimizer state; before every
step it checks that the model's parameter arrays, the optimizer's state
dicts, each layer's k / mode / hit tracking and the thread count are the
ones it was built for, and rebuilds itself when not (meSimp's compaction,
``load_state_dict``, ``reset_state`` all replace those objects). What it
does not do: it leaves ``p.grad`` as it was (None in the Trainer, which
clears gradients after every step) and does not refresh the layers' cached
forward inputs (``Linear._x``, ``ReLU._y``), which only a following
``model.backward`` would read.
"""
import numpy as np

from . import _core, nn, optim
from ._config import get_num_threads

__all__ = ["FusedStep", "PlanStep", "unsupported", "optimizer_problem", "same_key"]

_OPTIMIZERS = (optim.SGD, optim.AdaGrad, optim.Adam)   # their _kind: the C step's kind


def _layers(mods):
    """[(Linear, Dropout or None)] for Linear, ReLU[, Dropout], ..., Linear, else
    the reason (a str) the module list does not have that form."""
    form = "Linear, ReLU[, Dropout], ..., Linear"
    out, i, n = [], 0, len(mods)
    while i < n:
        if type(mods[i]) is not nn.Linear:
            return f"module {i} is a {type(mods[i]).__name__}, the fused step takes {form}"
        lin, i = mods[i], i + 1
        if i == n:
            out.append((lin, None))
            return out
        if type(mods[i]) is not nn.ReLU:
            return f"module {i} is a {type(mods[i]).__name__}, the fused step takes {form}"
        i += 1
        drop = None
        if i < n and type(mods[i]) is nn.Dropout:
            drop, i = mods[i], i + 1
        out.append((lin, drop))
    return f"the model ends in an activation; the fused step takes {form}"


def unsupported(model, optimizer, loss=None):
    """None if (model, optimizer, loss) can take the fused step, else the reason (a str)."""
    if type(loss) is not nn.SoftmaxCrossEntropy and loss is not None:
        return f"the loss is {type(loss).__name__}, not SoftmaxCrossEntropy"
    if type(model) not in (nn.Sequential, nn.MLP):
        return f"the model is a {type(model).__name__}, not a Sequential / MLP"
    mods = model.modules
    for obj in [model] + list(mods):
        if "forward" in vars(obj) or "backward" in vars(obj):
            return f"{type(obj).__name__} has its own forward / backward attribute"
    layers = _layers(mods)
    if isinstance(layers, str):
        return layers
    if not model.training:
        return "the model is in eval mode"
    why = optimizer_problem(optimizer, model.parameters(), "model")
    if why is not None:
        return why
    for i, (lin, _) in enumerate(layers):
        if lin.sparse and lin.mode not in ("batch_dw", "topk_dw", "topk", "unified"):
            return (f"layer {i} uses mode {lin.mode!r} (the fused step does batch_dw, "
                    f"topk_dw, topk, unified and dense)")
        if lin.sparse and not optimizer.sparse:
            return "the optimizer is dense (sparse=False) and a layer is top-k"
        if i > 0 and not lin.needs_input_grad:
            return f"layer {i} does not compute its input gradient"
    return None


def optimizer_problem(optimizer, params, what):
    """Why a fused step cannot update ``params`` with ``optimizer`` (a str), or
    None: it must be SGD / AdaGrad / Adam over exactly those parameters, each
    a writable C-contiguous float32 array. what: "model", "tagger", ..."""
    if type(optimizer) not in _OPTIMIZERS:
        return f"the optimizer is a {type(optimizer).__name__}, not SGD / AdaGrad / Adam"
    if len(optimizer.params) != len(params) or \
            {id(p) for p in optimizer.params} != {id(p) for p in params}:
        return f"the optimizer does not hold exactly the {what}'s parameters"
    for p in params:
        d = p.data
        if not (isinstance(d, np.ndarray) and d.dtype == np.float32 and d.flags.c_contiguous
                and d.flags.writeable):
            return f"parameter {p.name} is not a writable C-contiguous float32 array"
    return None


def same_key(old, key):
    """Whether a fused step's plan, built when its inputs were ``old``, still
    fits ``key``: arrays and dicts by identity, ints, floats and strings by value."""
    if old is None or len(old) != len(key):
        return False
    for a, b in zip(old, key):
        if a is not b and not (type(a) in (int, str, float, bool) and a == b):
            return False
    return True


class PlanStep:
    """What the fused steps (this module's and the tagger's) share: a C plan
    built for the current parameter and state arrays, thread count and the
    largest input seen (the attribute named by ``_size_attr``), rebuilt when
    any of them changes. Subclasses give ``_current_key``, ``_why`` (the
    reason the model no longer qualifies, or None) and ``_build(nthreads)``,
    which sets ``_plan`` and ``_states`` (the optimizer state dicts)."""

    _size_attr = "max_batch"

    def _refresh(self, size):
        """The thread count to run at after rebuilding what changed, or None
        (the reason in ``.unsupported``) when the model no longer qualifies."""
        nt = get_num_threads()
        if not same_key(self._key, self._current_key()) or nt > self._plan.threads \
                or size > getattr(self, self._size_attr):
            self.unsupported = self._why()
            if self.unsupported is not None:
                self._plan = self._key = None
                return None
            setattr(self, self._size_attr, max(getattr(self, self._size_attr), size))
            self._build(nt)
            self._key = self._current_key()
            self.builds += 1
        return nt

    def _plan_threads(self, nthreads):
        """A new plan serves at least as many threads as the one it replaces."""
        return max(nthreads, self._plan.threads if self._plan is not None else 1)

    def _count_step(self):
        """After a step the plan applied: the optimizer's step counts go up."""
        self.optimizer.steps += 1
        for s in self._states:
            s["step"] += 1


class FusedStep(PlanStep):
    """One training step of ``model`` with ``optimizer`` in a single C call.

    ``step(x, y)`` -> ``(loss, t_forward, t_backward, t_update)`` (seconds,
    measured inside the C step), or None, with nothing done, when the model
    or optimizer has changed so that it no longer qualifies (the reason is
    then in ``.unsupported``; take the module path). Raises ValueError for a label outside the
    classes (nothing changes), FloatingPointError if a top-k meets a NaN / Inf
    gradient (nothing changes); a non-finite loss is returned with nothing
    changed, for the caller to report. Build it only when
    ``unsupported(model, optimizer, loss)`` is None.
    """

    def __init__(self, model, optimizer, max_batch):
        why = unsupported(model, optimizer)
        if why is not None:
            raise ValueError(f"FusedStep: {why}")
        self.model, self.optimizer = model, optimizer
        self.max_batch = int(max_batch)
        self._plan = None
        self._key = None
        self._lins, self._drops = [], []
        self.unsupported = None
        self._last_batch = None
        self.builds = 0           # how many times the buffers were (re)built
        self.time_hidden_backward = 0.0   # seconds, summed over steps (see step.h)

    def _current_key(self):
        """Everything the built plan depends on, compared by identity / value."""
        st = self.optimizer.state
        key = [type(self.optimizer), self.optimizer.sparse, self.optimizer.n_state,
               len(self.model.modules)]
        key += self.model.modules
        for lin in self._lins:
            key += (lin.W.data, lin.b.data, st.get(id(lin.W)), st.get(id(lin.b)),
                    lin.k, lin.mode, lin.hits if lin.track_hits else None)
        for d in self._drops:
            key.append(d.p)
        return key

    def _build(self, nthreads):
        opt = self.optimizer
        groups = _layers(self.model.modules)
        lins = [lin for lin, _ in groups]
        layers = []
        self._draws = []
        self._states = []
        for i, (lin, drop) in enumerate(groups):
            stW, stb = opt.state_for(lin.W), opt.state_for(lin.b)
            self._states += (stW, stb)
            layers.append({"W": lin.W.data, "b": lin.b.data,
                           "sW": stW["arrays"], "sb": stb["arrays"],
                           "hits": lin.hits if lin.track_hits else None,
                           "k": lin.k if lin.sparse else 0,
                           "unified": lin.mode == "unified",
                           "exact_dx": lin.exact_dx,
                           "batch_sel": lin.mode == "batch_dw",
                           "relu": i < len(lins) - 1,
                           "need_dx": i > 0 or lin.needs_input_grad})
            if drop is not None and drop.p > 0.0:
                u = np.empty((self.max_batch, lin.n_out), np.float32)
                layers[-1].update(drop_u=u, drop_p=drop.p)
                self._draws.append((drop, u))
        self._plan = _core.MLPStep(layers, self.max_batch, self._plan_threads(nthreads))
        self._tracked = [lin for lin in lins if lin.track_hits]
        self._lins = lins
        self._drops = [d for _, d in groups if d is not None]

    def _why(self):
        return unsupported(self.model, self.optimizer)

    def _ready(self, B):
        """Rebuild if anything changed; the run() arguments after (x, y), or None
        when the model no longer qualifies."""
        nt = self._refresh(B)
        if nt is None:
            return None
        for drop, u in self._draws:   # the same draws, in the same order, as Dropout.forward
            drop.draw(u[:B])
        # the step-dependent Adam corrections are computed per parameter in C
        return ([s["step"] for s in self._states], nt) + self.optimizer.kernel_args()

    def _finish(self, out, B, y, idx=None, update=True):
        st, loss, bad, layer, tf, tb, tu, th = out
        if st == 1:
            raise nn.layers._label_range_error(y if idx is None else y[idx], self._plan.n_classes)
        if st == 3:
            raise FloatingPointError(f"Linear.backward: dy contains {bad} NaN/Inf value(s) "
                                     f"(layer {layer})")
        if st == 0:
            if update:
                self._count_step()
            for lin in self._tracked:
                lin.seen += B
            self.time_hidden_backward += th
        return loss, tf, tb, tu

    def step(self, x, y):
        x = nn.layers._check_input(x, self.model.modules[0].n_in, "FusedStep", "x")
        B = x.shape[0]
        y = nn.layers._check_labels(y, B)
        args = self._ready(B)
        if args is None:
            return None
        return self._finish(self._plan.run(x, y, *args), B, y)

    def step_rows(self, X, y, idx):
        """``step(X[idx], y[idx])`` without the two numpy gathers: the rows are
        copied straight into the step's buffers. X float32 (N, n_in) and y
        int64 (N,) C-contiguous (the Trainer's training split), idx int64 (B,)."""
        B = idx.shape[0]
        args = self._ready(B)
        if args is None:
            return None
        return self._finish(self._plan.run_rows(X, y, idx, *args), B, y, idx)

    def forward_backward_rows(self, X, y, idx, dy_scale=1.0):
        """Forward, loss and backward on ``X[idx], y[idx]`` in one C call,
        without the update (what a data-parallel step runs on a rank's share
        before the exchange): ``(loss, t_forward, t_backward)``, or None when
        the model no longer qualifies. The loss gradient is multiplied by
        ``dy_scale`` (float32, as ``dy *= np.float32(dy_scale)`` would), so the
        gradients left are the module path's ``model.backward`` of the scaled
        gradient, bit for bit; they stay in the step's buffers
        (:meth:`gradients`) until the next step. The optimizer's step counts do
        not move; meSimp's activeness counts and ``seen`` do. A non-finite
        loss is returned with no backward run; label and NaN / Inf errors raise
        as :meth:`step` does."""
        B = idx.shape[0]
        args = self._ready(B)
        if args is None:
            return None
        out = self._plan.forward_backward_rows(X, y, idx, float(np.float32(dy_scale)), args[1])
        st, loss, bad, layer, tf, tb, th = out
        self._last_batch = B if st == 0 else None
        return self._finish((st, loss, bad, layer, tf, tb, 0.0, th), B, y, idx,
                            update=False)[:3]

    def gradients(self, i):
        """Layer i's share of the last :meth:`forward_backward_rows` (B rows):
        a dict with ``x`` (B, n_in) its input, ``dy`` (B, n_out) the gradient
        of its output, ``gb`` (n_out,) the bias gradient, and, as its mode
        has them, ``gw`` (n_out, n_in) the dense weight gradient (a dense
        layer) or ``idx`` / ``val`` (B, k) the per-example top-k selection.
        Views of the step's buffers: valid until the next step."""
        B = self._last_batch
        if B is None:
            raise RuntimeError("FusedStep.gradients: no successful forward_backward_rows yet")
        lin = self._lins[i]
        a = self._plan.layer(i)
        n_in, n_out = lin.n_in, lin.n_out
        out = {"x": self._plan.inputs(B)[i], "dy": a["dy"][:B * n_out].reshape(B, n_out),
               "gb": a["gb"][:n_out]}
        if "gw" in a and not lin.sparse:
            out["gw"] = a["gw"][:n_out * n_in].reshape(n_out, n_in)
        if (lin.sparse and lin.mode in ("topk", "topk_dw")
                and not _core.backward_masked(lin.k, n_out)):
            k = lin.k
            out["idx"] = a["idx"][:B * k].reshape(B, k)
            out["val"] = a["val"][:B * k].reshape(B, k)
        return out

