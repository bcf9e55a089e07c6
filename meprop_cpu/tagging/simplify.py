"""meSimp for the LSTM tagger: remove hidden units seldom in the gates' top-k.

Activeness: while counting, the LSTM's backward adds 1 to ``hits[j]`` for
every time step at which unit j's row was among the selected rows of at
least one of its four gates (with a non-zero gradient), and ``seen`` counts
the time steps (dense backward: any non-zero gate gradient counts).

Removing unit j deletes rows j, h+j, 2h+j, 3h+j of ``W``, ``U`` and ``b``,
column j of ``U`` and column j of the output layer's ``W`` (of that
direction's block in a bidirectional tagger, whose two LSTMs are simplified
each by its own counts), with the matching optimizer state, so the
compacted tagger computes exactly the function of the tagger with that
unit's output and cell forced to zero. The rule and the schedule are those of the MLP (:mod:`meprop_cpu.simplify`): unit j goes if
``hits[j] < floor(prune_rate * seen)``, cycles of epochs alternate
simplifying and normal training, the optimizer is reset at cycle ends.
With k per gate the selection covers at most 4k of h units per step: at
k = 5 and the default prune rate 0.1 a unit stays when it is selected at
1 step in 10.
"""
import numpy as np

from ..simplify import CycleSchedule, Schedule, Simplifier, _check_int, _check_rate, select_keep

__all__ = ["compact_lstm", "TaggerSimplifier", "TAGGER_PRUNE_RATE", "TAGGER_RESET"]

#: How the tagger's meSimp resets the optimizer at a cycle's end (the
#: ``reset`` of :class:`~meprop_cpu.simplify.CycleSchedule`; the MLP's default
#: is ``"authors"``). With the authors' reset (moments zeroed, step counts
#: kept, after each simplification step of a simplifying epoch) Adam's first
#: steps after each of those resets are ~3x ``lr``; the tagger shrinks to ~60
#: units at its first simplification step either way, and with the paper's
#: reset (the whole state, once per cycle) it ends 4 epochs at the dense
#: tagger's accuracy instead of ~0.2 below (docs/pos_tagging.md).
TAGGER_RESET = "paper"
#: The tagger's default prune rate: at k = 5 per gate it leaves ~60 of 500
#: units (the papers' width); 0.01 leaves ~190.
TAGGER_PRUNE_RATE = 0.1


def compact_lstm(model, keep, optimizer=None, direction=0):
    """Keep only the hidden units ``keep`` (sorted indices) of one of the
    tagger's LSTMs (direction 0: the forward one, 1: the right-to-left one of
    a bidirectional tagger). Returns the number of units removed."""
    lstms = model.lstms
    if isinstance(direction, bool) or direction not in range(len(lstms)):
        raise ValueError(f"compact_lstm: direction must be "
                         f"{'0 or 1' if len(lstms) == 2 else '0'}, got {direction!r}")
    lstm = lstms[direction]
    h = lstm.hidden
    keep = np.asarray(keep, dtype=np.int64)
    if keep.ndim != 1 or keep.size == 0 or keep.min() < 0 or keep.max() >= h \
            or (np.diff(keep) <= 0).any():
        raise ValueError(f"compact_lstm: keep must be ascending unit indices in [0, {h}), "
                         f"non-empty")
    rows = np.concatenate([q * h + keep for q in range(4)])
    # the output layer's columns: the forward states first, then the backward ones
    start = sum(x.hidden for x in lstms[:direction])
    total = model.out.W.data.shape[1]
    out_cols = np.concatenate([np.arange(start), start + keep, np.arange(start + h, total)])
    for p, kr, kc in ((lstm.W, rows, None), (lstm.U, rows, keep), (lstm.b, rows, None),
                      (model.out.W, None, out_cols)):
        new = p.data if kr is None else p.data[kr]
        if kc is not None:
            new = new[:, kc]
        if optimizer is not None:
            optimizer.remap_state(p, p, keep_rows=kr, keep_cols=kc)
        p.data = np.ascontiguousarray(new, dtype=np.float32)
        p.grad = None
    lstm.hits = lstm.hits[keep].copy()
    return int(h - keep.size)


class TaggerSimplifier(Simplifier):
    """meSimp for a :class:`~meprop_cpu.tagger.PosTagger` trained by a
    :class:`~meprop_cpu.tagger.PosTrainer` (pass it in ``callbacks``). Same
    arguments as :class:`~meprop_cpu.simplify.Simplifier`; the schedule counts
    the trainer's steps (sentences, or minibatches of them). The default
    schedule is the CLI's for ``--task pos``: cycles of one epoch, 8
    simplification steps per simplifying epoch, the optimizer reset as
    :data:`TAGGER_RESET` says."""

    def __init__(self, model, optimizer=None, prune_rate=TAGGER_PRUNE_RATE, min_width=1,
                 schedule=None, verbose=False):
        self.model = model
        if schedule is None:
            schedule = CycleSchedule(cycle_epochs=1, reset=TAGGER_RESET)
        if not isinstance(schedule, Schedule):
            raise ValueError("TaggerSimplifier: schedule must be a Schedule")
        # Simplifier.__init__'s MLP checks do not apply: set what it would
        self.prune_rate = _check_rate(prune_rate, "TaggerSimplifier")
        self.min_width = _check_int(min_width, "min_width", "TaggerSimplifier")
        self.schedule, self.optimizer, self.verbose = schedule, optimizer, bool(verbose)
        self.log, self.optimizer_resets = [], []
        self._set_tracking(self.schedule.tracking(1))

    @property
    def layers(self):
        return self.model.lstms

    @property
    def hidden_sizes(self):
        return self.model.hidden_sizes

    def simplify(self, global_step=None, epoch=None, step=None):
        removed, dense = [], []
        for d, lstm in enumerate(self.model.lstms):
            keep = select_keep(lstm.hits, lstm.seen, self.prune_rate, self.min_width)
            removed.append(compact_lstm(self.model, keep, self.optimizer, direction=d))
            lstm.hits = np.zeros(lstm.hidden, dtype=np.int64)
            lstm.seen = 0
            if not lstm.sparse:
                dense.append(d)
        rec = {"global_step": global_step, "epoch": epoch, "step": step,
               "hidden_sizes": self.hidden_sizes, "removed": removed,
               "dense_layers": dense, "became_dense": []}
        self.log.append(rec)
        if self.verbose:
            print(f"meSimp: step {global_step}: hidden {self.hidden_sizes} (removed "
                  f"{', '.join(map(str, removed))})", flush=True)
        return rec

    def __call__(self, trainer, epoch, step):
        rec = self.after_step(epoch, step, trainer.steps_per_epoch, trainer.global_step)
        if rec is not None and hasattr(trainer, "_write"):
            trainer._write(trainer._record("simplify", epoch, None, None, dict.fromkeys(
                ("time_epoch", "time_forward", "time_backward", "time_update")),
                removed=rec["removed"]))
        return rec
