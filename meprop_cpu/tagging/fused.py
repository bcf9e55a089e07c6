"""The tagger's fused training step: forward, loss, backward through time and
the update of all seven parameters for one sentence in one C call
(include/meprop/tagger.h).

The module path (``PosTagger.forward_loss``, ``backward``,
``Optimizer.step``) makes about 40 kernel calls per sentence, each wrapped in
Python: on a tagger narrowed by meSimp to ~60 units that dispatch is most of
the step. The fused step calls the same C entry points in the same order on
the same data (the LSTM's, ``mp_layer_backward`` for the output layer, the
pair and row grouping, the row-sparse updates), so the weights, optimizer
state, step counts and meSimp counts it leaves are bit-identical to the
module path's (``tests/test_tagger.py`` compares them after training in every
supported configuration).

:class:`~meprop_cpu.tagging.PosTrainer` uses it (``fused=True``, the
default) for one sentence per step when :func:`unsupported` returns None:

* a unidirectional :class:`~meprop_cpu.tagging.PosTagger` (not a subclass;
  no forward / backward replaced on the instance) whose LSTM is top-k (mode
  ``"topk"``, k < hidden) or dense, with its input gradient on;
* an :class:`~meprop_cpu.optim.SGD`, ``AdaGrad`` or ``Adam`` over exactly the
  tagger's parameters, row-sparse (``sparse=True``).

Anything else (bidirectional, minibatches, a dense optimizer) takes the
module path. Before every step it checks that the parameter arrays, the
optimizer's state dicts, the LSTM's k and hit tracking and the thread count
are the ones it was built for and rebuilds itself when not (meSimp's
compaction and ``load_state_dict`` replace them). It leaves ``p.grad`` as it
was and does not refresh the modules' cached forward state, which only a
following ``backward`` would read.
"""
from .. import _core
from ..fused import PlanStep, optimizer_problem
from ..nn import Linear, LSTM
from ..nn.layers import _label_range_error
from .model import N_FEATURES, PosTagger

__all__ = ["TaggerFusedStep", "unsupported"]


def unsupported(model, optimizer):
    """None if (model, optimizer) can take the fused tagger step, else the reason."""
    if type(model) is not PosTagger:
        return f"the model is a {type(model).__name__}, not a PosTagger"
    if model.lstm_b is not None:
        return "the tagger is bidirectional"
    lstm, out = model.lstm, model.out
    if type(lstm) is not LSTM or type(out) is not Linear:
        return "the tagger's LSTM or output layer is a subclass"
    for obj in (model, lstm, out):
        if any(n in vars(obj) for n in ("forward", "backward", "forward_loss")):
            return f"{type(obj).__name__} has its own forward / backward attribute"
    if lstm.sparse and lstm.mode != "topk":
        return f"the LSTM uses mode {lstm.mode!r}"
    if not lstm.needs_input_grad:
        return "the LSTM does not compute its input gradient"
    if out.sparse:
        return "the output layer is top-k"
    if not out.training:
        return "the output layer is in eval mode"
    # a unidirectional tagger's parameters come in the C step's order:
    # Ew, Ef, lstm.W, lstm.U, lstm.b, out.W, out.b (_core._TAGGER_PARAMS)
    why = optimizer_problem(optimizer, model.parameters(), "tagger")
    if why is None and not optimizer.sparse:
        why = "the optimizer is dense (sparse=False)"
    return why


class TaggerFusedStep(PlanStep):
    """One training step of a tagger on one sentence in a single C call.

    ``step(wid, fid, tid)`` -> ``(loss, t_forward, t_backward, t_update)``
    (seconds, measured in C), or None with nothing done when the tagger or
    optimizer no longer qualifies (the reason is then in ``.unsupported``).
    Raises ValueError for a tag outside the tag set or rows outside the
    tables and FloatingPointError when the top-k meets a NaN / Inf gradient
    (nothing changes then); a non-finite loss is returned with nothing changed.
    """

    _size_attr = "max_len"

    def __init__(self, model, optimizer, max_len=1):
        why = unsupported(model, optimizer)
        if why is not None:
            raise ValueError(f"TaggerFusedStep: {why}")
        self.model, self.optimizer = model, optimizer
        self.max_len = max(1, int(max_len))   # the longest sentence the plan takes
        self._plan = self._key = None
        self.unsupported = None
        self.builds = 0

    def _current_key(self):
        st, lstm = self.optimizer.state, self.model.lstm
        key = [type(self.optimizer), self.optimizer.sparse, self.optimizer.n_state,
               self.model.lstm_b, lstm.k, lstm.mode, lstm.sparse,
               lstm.hits if lstm.track_hits else None]
        for p in self.model.parameters():
            key += (p.data, st.get(id(p)))
        return key

    def _why(self):
        return unsupported(self.model, self.optimizer)

    def _build(self, nthreads):
        opt, lstm = self.optimizer, self.model.lstm
        params = self.model.parameters()
        self._states = [opt.state_for(p) for p in params]
        names = _core._TAGGER_PARAMS
        self._plan = _core.TaggerStep(
            {n: p.data for n, p in zip(names, params)},
            {n: s["arrays"] for n, s in zip(names, self._states)},
            lstm.hits if lstm.track_hits else None, lstm.k if lstm.sparse else 0, N_FEATURES,
            self.max_len, self._plan_threads(nthreads))

    def step(self, wid, fid, tid):
        T = wid.shape[0]
        nt = self._refresh(T)
        if nt is None:
            return None
        counts = [s["step"] for s in self._states]
        st, loss, bad, tf, tb, tu = self._plan.run(
            wid, fid, tid, counts, nt, *self.optimizer.kernel_args())
        if st == 1:
            raise _label_range_error(tid, len(self.model.vocab.tags))
        if st == 3:
            raise FloatingPointError(f"LSTM.backward: the gradient holds {bad} NaN/Inf "
                                     f"value(s)")
        if st == 0:
            self._count_step()
            lstm = self.model.lstm
            if lstm.track_hits:
                lstm.seen += T
        return loss, tf, tb, tu
