"""meSimp: shrink an MLP while it trains, by physically removing inactive neurons.

Activeness records
    Every hidden :class:`~meprop_cpu.nn.Linear` counts, while its
    ``track_hits`` flag is on, ``hits[j]`` = how many examples had neuron ``j``
    in their top-k set with a non-zero gradient, and ``seen`` = how many
    examples it back-propagated (the kernels count them; dense backprop counts
    every non-zero gradient entry). The output layer is never tracked nor pruned.

Simplification step (:func:`select_keep`, :func:`compact`)
    Neuron ``j`` of a hidden layer is removed if
    ``hits[j] < floor(prune_rate * seen)``; then the counters restart at zero
    at the new width. A layer never drops below ``min_width`` neurons: if the
    rule would remove more, the ``min_width`` most-hit ones are kept (ties: the
    lower index). Removed neurons never come back.

    Removal is physical: row ``j`` of ``W_l``, entry ``j`` of ``b_l`` and
    column ``j`` of ``W_{l+1}`` are deleted, and so are the matching rows /
    columns of the optimizer's state (Adam moments, AdaGrad accumulators,
    momentum buffers). The :class:`~meprop_cpu.nn.Parameter` objects are kept
    (new C-contiguous float32 ``data``), so optimizer state keyed by ``id(p)``
    stays valid. The compacted network computes exactly the function of the
    network with those neurons masked (their output forced to zero), and the
    surviving weights and optimizer state are unchanged. Once a layer's width
    is ``<= k`` its backward is dense (``Linear.sparse`` turns False); the
    simplification log records it. (With a row-sparse optimizer that layer's
    whole weight matrix is then updated every step, as for any dense layer:
    rows whose gradient happens to be zero in a batch move on their Adam
    momentum, where the masked top-k layer would have left them alone. With
    the dense update, ``sparse=False``, the two stay equal step for step.)

Schedules
    :class:`CycleSchedule` (the authors' MNIST mechanism, the default):
    training is split into cycles of ``cycle_epochs`` epochs; in even cycles
    (0, 2, ...) a simplification step runs ``steps_per_epoch`` times per epoch,
    at evenly spaced minibatches (the last one at the epoch's end); odd cycles
    train normally (still with top-k backprop, counters off). The optimizer
    is reset at the end of every cycle: by default as the authors' code does
    it (moments zeroed, step counts kept, after each simplification point of
    the cycle's last epoch), or once with ``reset="paper"``.
    :class:`EveryN`: a simplification step after every ``n``-th minibatch
    (global count), counters always on, no optimizer reset (unless asked).

Use with the Trainer::

    simp = Simplifier(model, opt, prune_rate=0.1,
                      schedule=CycleSchedule(cycle_epochs=5, steps_per_epoch=8))
    Trainer(model, opt, data, batch_size=100, epochs=20, callbacks=[simp]).fit()
    simp.log        # one dict per simplification step: global_step, hidden_sizes, ...
    model.save("mesimp.npz")     # the shrunk model, loadable as a dense MLP

Each simplification step is also written to the trainer's JSON log as an
``"event": "simplify"`` line (with ``global_step``, ``hidden_sizes``,
``removed``, ``dense_layers``); the evaluation lines' ``hidden_sizes`` show the
shrinking as well.

Checkpoints and resume
    The schedule is stateless: whether a step simplifies, and whether the
    optimizer is reset after it, is a function of the trainer's epoch, step
    and ``steps_per_epoch`` only. The activeness counters (``hits``, ``seen``,
    ``track_hits``) and the shrunk weights and optimizer state are saved in the
    trainer's checkpoints. So resuming a shrunk run needs only a model at the
    checkpoint's sizes (``train.model_from_checkpoint(path)``), a fresh
    optimizer over its parameters and a fresh ``Simplifier`` with the same
    settings; ``fit(resume=path)`` then continues bit-identically. The only
    thing not in the checkpoint is the in-memory ``Simplifier.log`` of past
    steps: it is in the JSON log file (appended to when resuming), and
    ``state_dict()`` / ``load_state_dict()`` carry it (JSON-able) if wanted.
"""
import logging
import math
import numbers

import numpy as np

from . import kernels
from .nn import Linear
from .nn.models import linears

__all__ = ["Simplifier", "Schedule", "CycleSchedule", "EveryN", "select_keep", "compact",
           "hidden_layers"]

_logger = logging.getLogger("meprop_cpu.simplify")


# ------------------------------------------------------------------ validation

def _check_int(v, name, who, lo=1):
    return kernels._check_int(v, f"{who}: {name}", lo)


def _check_rate(v, who):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{who}: prune_rate must be a number in [0, 1), "
                        f"got {type(v).__name__} ({v!r})")
    v = float(v)
    if not (0.0 <= v < 1.0):
        raise ValueError(f"{who}: prune_rate must be in [0, 1), got {v}")
    return v


# ------------------------------------------------------------------ the rule

def select_keep(hits, seen, prune_rate=0.1, min_width=1):
    """Indices (sorted, int64) of the neurons that survive a simplification step.

    hits: per-neuron counts (1-D, non-negative integers); seen: examples
    counted. Neuron ``j`` is removed if ``hits[j] < floor(prune_rate * seen)``.
    At least ``min(min_width, len(hits))`` neurons are kept: if the rule keeps
    fewer, the most-hit ones are kept instead (ties: the lower index).
    """
    who = "select_keep"
    hits = np.asarray(hits)
    if hits.ndim != 1 or not (np.issubdtype(hits.dtype, np.integer) or hits.size == 0):
        raise ValueError(f"{who}: hits must be a 1-D integer array, got {hits.dtype} {hits.shape}")
    if hits.size and hits.min() < 0:
        raise ValueError(f"{who}: hits must be >= 0, got a minimum of {hits.min()}")
    seen = _check_int(seen, "seen", who, lo=0)
    prune_rate = _check_rate(prune_rate, who)
    min_width = _check_int(min_width, "min_width", who)
    n = hits.shape[0]
    # floor(prune_rate * seen), with the product rounded once in float64 as the
    # authors' code does; a tiny epsilon would change the rule, so none is added
    threshold = math.floor(prune_rate * seen)
    keep = np.flatnonzero(hits >= threshold)
    want = min(min_width, n)
    if keep.shape[0] < want:
        order = np.argsort(-hits.astype(np.int64), kind="stable")   # most hits first, low j first
        keep = np.sort(order[:want])
    return keep.astype(np.int64)


def hidden_layers(model):
    """The model's Linear layers that may be pruned: all but the last one."""
    lin = [m for m in getattr(model, "modules", []) if isinstance(m, Linear)]
    return lin[:-1]


def compact(model, layer, keep, optimizer=None):
    """Physically keep only neurons ``keep`` of hidden Linear number ``layer``.

    Deletes the other rows of its ``W`` and entries of its ``b``, the other
    columns of the next Linear's ``W``, and the matching optimizer state. The
    Parameter objects stay the same (new ``data`` arrays). The layer's
    activeness counters restart at zero at the new width. Returns the number of
    neurons removed.

    Only valid for a model whose Linear layers are chained directly (through
    element-wise activations and dropout), as in :class:`~meprop_cpu.nn.MLP`.
    """
    lins = linears(model)
    if not 0 <= layer < len(lins) - 1:
        raise ValueError(f"compact: layer must index a hidden Linear layer in "
                         f"[0, {len(lins) - 1}), got {layer}")
    lin, nxt = lins[layer], lins[layer + 1]
    n = lin.n_out
    keep = np.asarray(keep)
    if keep.ndim != 1 or not np.issubdtype(keep.dtype, np.integer):
        raise ValueError(f"compact: keep must be a 1-D integer array, got {keep.dtype} {keep.shape}")
    keep = keep.astype(np.int64)
    if keep.size == 0:
        raise ValueError("compact: keep is empty (a layer must keep at least one neuron)")
    if keep.min() < 0 or keep.max() >= n or np.any(np.diff(keep) <= 0):
        raise ValueError(f"compact: keep must be strictly increasing indices in [0, {n})")
    removed = n - keep.shape[0]
    if removed == 0:
        lin.reset_hits()
        return 0
    if nxt.n_in != n:
        raise ValueError(f"compact: layer {layer + 1} takes {nxt.n_in} inputs, layer {layer} "
                         f"gives {n}; compaction needs directly chained Linear layers")
    for p in (lin.W, lin.b):
        p.data = np.ascontiguousarray(p.data[keep], dtype=np.float32)
        p.grad = None
        if optimizer is not None:
            optimizer.remap_state(p, p, keep_rows=keep)
    nxt.W.data = np.ascontiguousarray(nxt.W.data[:, keep], dtype=np.float32)
    nxt.W.grad = None
    if optimizer is not None:
        optimizer.remap_state(nxt.W, nxt.W, keep_cols=keep)
    # cached forward inputs have the old width: a backward now must fail loudly
    lin._x = None
    nxt._x = None
    lin.reset_hits()
    return removed


# ------------------------------------------------------------------ schedules

class Schedule:
    """When to simplify. Stateless: everything is a function of the trainer's
    position, so a resumed run behaves as an uninterrupted one.

    epoch and step are 1-based (as the Trainer passes them), steps_per_epoch
    is the number of minibatches per epoch, global_step counts all steps.
    """

    def tracking(self, epoch):
        """Whether the activeness counters run during ``epoch``."""
        return True

    def fires(self, epoch, step, steps_per_epoch, global_step):
        """Whether a simplification step runs after this minibatch."""
        raise NotImplementedError

    #: reset the optimizer's moments but keep its step counts (see CycleSchedule)
    keep_steps = False

    def cycle_end(self, epoch, step, steps_per_epoch, global_step):
        """Whether the optimizer state is reset after this minibatch."""
        return False

    def firing_steps(self, epochs, steps_per_epoch):
        """Global steps (1-based) at which a simplification step runs in a run of
        ``epochs`` epochs of ``steps_per_epoch`` minibatches."""
        out = []
        for e in range(1, epochs + 1):
            for s in range(1, steps_per_epoch + 1):
                g = (e - 1) * steps_per_epoch + s
                if self.fires(e, s, steps_per_epoch, g):
                    out.append(g)
        return out


class CycleSchedule(Schedule):
    """The authors' cycle mechanism.

    cycle_epochs: epochs per cycle (default 5). Even cycles (0, 2, ...) run a
    simplification step ``steps_per_epoch`` times per epoch (default 8), after
    minibatches ``spe * i // m`` for i = 1..m with m = min(steps_per_epoch,
    spe); odd cycles do not simplify. ``reset_optimizer`` (default True):
    reset the optimizer at the end of every cycle, in one of two ways (``reset``):

    ``"authors"`` (default): what the authors' C# code does. After each of
        those ``steps_per_epoch`` minibatches of every cycle's *last* epoch,
        the moments / accumulators are zeroed but the step counts are kept,
        so Adam's bias correction does not restart: the first updates after
        a reset are several times larger than ``lr`` (about 3x on the first
        step). In a simplifying cycle's last epoch those large steps quiet
        many neurons just before they are counted, which is what shrinks the
        model: on MNIST (the paper's config) hidden widths end near 60-100
        instead of near 200-280 with ``"paper"``, at the same test accuracy
        (benchmarks/results/mesimp_mnist.md).
    ``"paper"``: the paper's description: the whole state (moments and step
        counts) is reset once, after the last minibatch of every cycle.
    """

    RESETS = ("authors", "paper")

    def __init__(self, cycle_epochs=5, steps_per_epoch=8, reset_optimizer=True, reset="authors"):
        who = "CycleSchedule"
        self.cycle_epochs = _check_int(cycle_epochs, "cycle_epochs", who)
        self.steps_per_epoch = _check_int(steps_per_epoch, "steps_per_epoch", who)
        self.reset_optimizer = bool(reset_optimizer)
        if reset not in self.RESETS:
            raise ValueError(f"{who}: reset must be one of {self.RESETS}, got {reset!r}")
        self.reset = reset
        self.keep_steps = reset == "authors"

    def cycle(self, epoch):
        """0-based cycle index of (1-based) ``epoch``."""
        return (epoch - 1) // self.cycle_epochs

    def simplifying(self, epoch):
        return self.cycle(epoch) % 2 == 0

    tracking = simplifying

    def steps_in_epoch(self, steps_per_epoch):
        """The 1-based minibatches of a simplifying epoch after which a step runs."""
        m = min(self.steps_per_epoch, steps_per_epoch)
        return [steps_per_epoch * i // m for i in range(1, m + 1)]

    def fires(self, epoch, step, steps_per_epoch, global_step):
        if not self.simplifying(epoch):
            return False
        return step in self.steps_in_epoch(steps_per_epoch)

    def cycle_end(self, epoch, step, steps_per_epoch, global_step):
        if not self.reset_optimizer or epoch % self.cycle_epochs != 0:
            return False
        if self.reset == "paper":
            return step == steps_per_epoch
        return step in self.steps_in_epoch(steps_per_epoch)

    def __repr__(self):
        return (f"CycleSchedule(cycle_epochs={self.cycle_epochs}, "
                f"steps_per_epoch={self.steps_per_epoch}, "
                f"reset_optimizer={self.reset_optimizer}, reset={self.reset!r})")


class EveryN(Schedule):
    """A simplification step after every ``n``-th minibatch (``global_step % n
    == 0``); counters always on. ``reset_optimizer=True`` also resets the
    optimizer state after each simplification step (default False)."""

    def __init__(self, n, reset_optimizer=False):
        self.n = _check_int(n, "n", "EveryN")
        self.reset_optimizer = bool(reset_optimizer)

    def fires(self, epoch, step, steps_per_epoch, global_step):
        return global_step % self.n == 0

    def cycle_end(self, epoch, step, steps_per_epoch, global_step):
        return self.reset_optimizer and global_step % self.n == 0

    def __repr__(self):
        return f"EveryN({self.n}, reset_optimizer={self.reset_optimizer})"


# ------------------------------------------------------------------ the callback

class Simplifier:
    """meSimp for an MLP: activeness records, schedule and physical compaction.

    model: an :class:`~meprop_cpu.nn.MLP` (or a Sequential of Linear layers
    chained through element-wise modules). optimizer: the optimizer training
    it (its state is compacted with the weights and reset at cycle ends), or
    None. prune_rate in [0, 1) (default 0.1); min_width >= 1 (default 1);
    schedule: a :class:`Schedule` (default ``CycleSchedule(5, 8)``); verbose:
    print a line for every layer whose backward turns dense.

    Call it as a Trainer callback ``simp(trainer, epoch, step)``, or from your
    own loop with :meth:`after_step`; :meth:`simplify` runs one step now.

    Constructing it switches the hidden layers' counters on or off as the
    schedule wants for epoch 1 and zeroes them; ``Trainer.fit(resume=...)``,
    which runs afterwards, restores the checkpoint's counters and flags.
    Counting follows the kernels: only selected entries with a non-zero
    gradient are hits (the authors' code also counted zero entries that filled
    an example's top-k set, which can only keep more neurons).
    """

    def __init__(self, model, optimizer=None, prune_rate=0.1, min_width=1, schedule=None,
                 verbose=False):
        who = "Simplifier"
        self.prune_rate = _check_rate(prune_rate, who)
        self.min_width = _check_int(min_width, "min_width", who)
        if schedule is None:
            schedule = CycleSchedule()
        if not isinstance(schedule, Schedule):
            raise ValueError(f"{who}: schedule must be a Schedule (CycleSchedule(...) or "
                             f"EveryN(n)), got {type(schedule).__name__}")
        self.schedule = schedule
        lins = linears(model)
        if len(lins) < 2:
            raise ValueError(f"{who}: model must have at least one hidden Linear layer "
                             f"(found {len(lins)} Linear layers)")
        for i in range(len(lins) - 1):
            if lins[i + 1].n_in != lins[i].n_out:
                raise ValueError(f"{who}: model Linear layers {i} and {i + 1} are not directly "
                                 f"chained ({lins[i].n_out} outputs, {lins[i + 1].n_in} inputs)")
        if optimizer is not None:
            owned = {id(p) for p in getattr(optimizer, "params", ())}
            missing = [p for m in lins for p in m.parameters() if id(p) not in owned]
            if not hasattr(optimizer, "remap_state") or missing:
                raise ValueError(f"{who}: optimizer must be the optimizer over "
                                 f"model.parameters() (it lacks {len(missing)} of them)")
        self.model = model
        self.optimizer = optimizer
        self.verbose = bool(verbose)
        self.log = []                 # one dict per simplification step
        self.optimizer_resets = []    # global steps after which the optimizer was reset
        self._set_tracking(self.schedule.tracking(1))

    # -- public helpers ------------------------------------------------------
    @property
    def layers(self):
        return hidden_layers(self.model)

    @property
    def hidden_sizes(self):
        return [m.n_out for m in self.layers]

    @property
    def sizes_log(self):
        """[(global_step, hidden_sizes)] after each simplification step."""
        return [(r["global_step"], list(r["hidden_sizes"])) for r in self.log]

    def state_dict(self):
        """JSON-able: the settings and the log (the schedule itself is stateless)."""
        return {"prune_rate": self.prune_rate, "min_width": self.min_width,
                "schedule": repr(self.schedule), "log": [dict(r) for r in self.log],
                "optimizer_resets": list(self.optimizer_resets)}

    def load_state_dict(self, state):
        self.log = [dict(r) for r in state.get("log", [])]
        self.optimizer_resets = [int(g) for g in state.get("optimizer_resets", [])]

    # -- the step ------------------------------------------------------------
    def simplify(self, global_step=None, epoch=None, step=None):
        """One simplification step on every hidden layer; returns its log record."""
        removed, dense_now = [], []
        for i, lin in enumerate(self.layers):
            was_sparse = lin.sparse
            keep = select_keep(lin.hits, lin.seen, self.prune_rate, self.min_width)
            removed.append(compact(self.model, i, keep, self.optimizer))
            if was_sparse and not lin.sparse:
                dense_now.append(i)
                msg = (f"meSimp: hidden layer {i} has width {lin.n_out} <= k={lin.k}: its "
                       f"backward is dense from now on")
                _logger.info(msg)
                if self.verbose:
                    print(msg, flush=True)
        rec = {"global_step": global_step, "epoch": epoch, "step": step,
               "hidden_sizes": self.hidden_sizes, "removed": removed,
               "dense_layers": [i for i, m in enumerate(self.layers) if not m.sparse],
               "became_dense": dense_now}
        self.log.append(rec)
        return rec

    def after_step(self, epoch, step, steps_per_epoch, global_step, trainer=None):
        """Run the schedule after minibatch ``step`` (1-based) of ``epoch``.

        Returns the simplification record if a step ran, else None.
        """
        sch = self.schedule
        rec = None
        if sch.fires(epoch, step, steps_per_epoch, global_step):
            rec = self.simplify(global_step, epoch, step)
            if trainer is not None:
                _log_event(trainer, rec)
        if sch.cycle_end(epoch, step, steps_per_epoch, global_step):
            if self.optimizer is not None:
                self.optimizer.reset_state(keep_steps=sch.keep_steps)
            self.optimizer_resets.append(global_step)
        if step == steps_per_epoch and sch.tracking(epoch + 1) != sch.tracking(epoch):
            # the counters run only in epochs that simplify; each such stretch starts clean
            self._set_tracking(sch.tracking(epoch + 1))
        return rec

    def __call__(self, trainer, epoch, step):
        return self.after_step(epoch, step, trainer.steps_per_epoch, trainer.global_step,
                               trainer)

    def _set_tracking(self, on):
        for m in self.layers:
            m.reset_hits()
            m.track_hits = on

    def __repr__(self):
        return (f"Simplifier(prune_rate={self.prune_rate}, min_width={self.min_width}, "
                f"schedule={self.schedule!r}, hidden_sizes={self.hidden_sizes})")


def _log_event(trainer, rec):
    """Write an ``"event": "simplify"`` line to the trainer's JSON log."""
    record = getattr(trainer, "_record", None)
    write = getattr(trainer, "_write_log", None)
    if record is None or write is None:
        return
    times = dict.fromkeys(("time_epoch", "time_forward", "time_backward", "time_update"))
    line = record("simplify", rec["epoch"], rec["step"], None, None, times,
                  removed=rec["removed"], dense_layers=rec["dense_layers"],
                  became_dense=rec["became_dense"])
    write(line)
