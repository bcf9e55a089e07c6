"""Synchronous data-parallel training over MPI (optional extra ``[distributed]``).

Each global minibatch of the :class:`~meprop_cpu.train.Trainer` is split into
contiguous shares, one per rank (rank 0 the first examples); every rank runs
forward and backward on its share, the gradients are combined, and every rank
applies the same update, so all ranks hold bit-identical weights after every
step. Launch with MPI::

    mpiexec -n 4 python -m mpi4py -m meprop_cpu train --distributed ...

(``python -m mpi4py`` makes an unhandled exception on any rank abort the whole
job; the Trainer also aborts the job itself when a rank fails on its own.)

How gradients are combined (one step)
    * **per-example top-k layers** (modes ``"topk_dw"``, ``"topk"`` below the masked
      threshold and ``"random"``): meProp's weight gradient is
      ``sum over selected (example b, row j) of dy[b, j] * x[b]``. Each rank
      sends its layer input ``x`` (B_r, n_in) and its selection ``(idx, val)``
      (B_r, k) - the *factors* of the gradient, not its rows - in one
      ``Allgatherv`` for all layers; every rank then concatenates them in rank
      order (= global example order) and forms the global gradient with the
      same kernels as a single process on the whole batch. Bytes per rank:
      ``B (n_in + 2k) * 4`` instead of ``n_out * n_in * 4``. The first layer's
      input is the training batch itself, which every rank holds: it is not
      sent (``B * 2k * 4`` bytes).
    * **batch top-k layers** (mode ``"batch_dw"``, the default): the selection
      is over the whole global batch, so no rank can make it alone. Each rank
      sends its layer input ``x`` and its *candidates*: the ``min(B k, B_r
      n_out)`` largest ``|dy|`` of its share as (index, value), in the same
      ``Allgatherv`` (method ``"cand"``). Every entry of the global batch's
      ``B k`` largest is among its rank's candidates (fewer than ``B k``
      entries of the whole batch precede it, so fewer than that of its
      share), so every rank selects the ``B k`` largest of all candidates,
      in the selection's order (magnitude, then global index), groups them by
      row and forms the gradient over the global ``x``: the single-process
      gradient bit for bit. Bytes per rank: ``B_r n_in * 4 + min(B k, B_r
      n_out) * 8`` (no ``x`` for the first layer). Above the masked threshold
      (k > n_out / 4, where the single process forms the gradient by dense
      products on the masked ``dy``), or where it moves fewer bytes, a rank
      sends its whole output gradient ``dy`` instead (method ``"dy"``, ``B_r
      (n_in + n_out) * 4`` bytes) and every rank runs ``Linear.weight_grad``
      on the concatenated batch. Where a dense Allreduce is cheaper (large global batches) the
      layer's own gradient goes that way, and the selection is then each
      rank's ``B_r k`` over its share. meSimp's activeness counts of these
      layers are each rank's own selections, summed.
    * **other row-sparse gradients** (unified top-k, the masked top-k form,
      any RowGrad of another model): ``(rows, values)`` of every rank are
      gathered (``Allgatherv``) and summed in rank order into the union of
      the rows.
    * **dense gradients** (biases, dense layers, the output layer) and any
      row-sparse gradient whose exchange would move more bytes than a dense
      ring Allreduce (``2 (N-1)/N n_out n_in`` floats per rank) are packed into
      one float32 buffer and summed with one ``Allreduce``. A row-sparse
      gradient sent this way carries a mask of its touched rows (n_out more
      floats), so the update stays row-sparse (the same rows and optimizer
      semantics whichever exchange carried it). The same buffer
      carries the loss, meSimp's activeness counts (per-step increments, exact
      small integers), a failure flag and the Ctrl-C flag.

    The choice of exchange depends only on shapes, k, the global batch and
    the row counts every rank sees, never on timing, so every rank takes the
    same decision. The dense sum relies on the MPI library returning the
    same Allreduce result on every rank (MPICH and Open MPI do: each element is
    reduced once, or in the same pairwise tree everywhere); the tests check
    the ranks' weights bit for bit, and :meth:`Distributed.check_identical`
    does it at run time.

How a rank computes its gradients
    Where the Trainer's ``fused`` is on (the default), the model qualifies
    for the fused one-call step (:mod:`meprop_cpu.fused`) and every gradient
    travels as factors, (x, candidates or dy) or in the dense Allreduce as it
    is, a rank's forward, loss and backward on its share run as that step's C
    call without its update (``FusedStep.forward_backward_rows``), the exchange reads the
    gradients from the step's buffers, and the optimizer applies the combined
    ones. Otherwise (row exchanges, ``Trainer(fused=False)``, models the fused
    step does not cover) the modules' forward and backward run. Both give the
    same bits.

What a single process on the same global batches gives
    The same result up to float rounding: the loss gradient is scaled by
    ``B_r / B`` on each rank (exact for equal power-of-two shares), the dense
    and bias gradients are summed in another order, and the update runs after
    the exchange instead of inside the one-call step. Dropout masks are those of
    the single process (each rank draws its share's slice of the counter-based
    stream). Random-k layers draw the same random sets on every rank.

Not covered: sharded data sets (every rank loads the whole training set and
takes its share of each batch), overlapping communication with the backward
pass, and elastic membership (resume needs the same number of ranks to be
bit-identical).
"""
import hashlib
import sys
import time

import numpy as np

from . import _core, kernels
from . import fused as _fused
from ._config import get_num_threads
from .kernels import RowGrad, Workspace
from .nn import Dropout, Linear

__all__ = ["Distributed", "MPI_MISSING", "require_mpi", "share", "exchange_bytes",
           "merge_rows", "CollectiveError"]

MPI_MISSING = ("distributed training needs mpi4py and an MPI library: install the extra with "
               "pip install 'meprop_cpu[distributed]' (mpi4py>=4) and, where the machine has no "
               "MPI, the MPICH wheel: pip install mpich")

EXCHANGES = ("auto", "factors", "rows", "owner", "dense")


class CollectiveError(RuntimeError):
    """Raised on every rank at once (a decision all ranks took together)."""


def require_mpi():
    """The ``mpi4py.MPI`` module, or ImportError naming the extra to install."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"{MPI_MISSING} ({e})") from None
    return MPI


def share(n, size, rank):
    """(start, stop) of ``rank``'s contiguous share of a batch of ``n`` examples
    split over ``size`` ranks (the first ``n % size`` ranks take one more)."""
    q, r = divmod(int(n), int(size))
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


def merge_rows(parts, n_in):
    """Sum row-sparse gradients given as ``[(rows int32 ascending, values (r, n_in))]``
    in list order (rank order): returns ``(union rows int32, values float32)``."""
    all_rows = [np.asarray(r, dtype=np.int32) for r, _ in parts]
    union = np.unique(np.concatenate(all_rows)) if all_rows else np.zeros(0, np.int32)
    union = union.astype(np.int32)
    values = np.zeros((union.shape[0], n_in), np.float32)
    for rows, vals in parts:
        if len(rows):
            values[np.searchsorted(union, rows)] += vals
    return union, values


def exchange_bytes(kind, size, n_out, n_in, batch=0, k=0, rows=0, with_input=True):
    """Bytes a rank receives in one exchange of one weight gradient over ``size``
    ranks (the bandwidth term of the cost model; MPI's ring algorithms):

    * ``"dense"``: ring Allreduce of n_out x n_in floats, 2 (N-1)/N of them;
    * ``"factors"``: Allgatherv of the other ranks' x, idx, val for a global
      batch of ``batch`` examples: (N-1)/N * batch * (n_in + 2k) * 4 (without
      x, ``with_input=False``, for the first layer, whose input every rank has);
    * ``"rows"``: Allgatherv of the other ranks' rows: ``rows`` = the total
      count over all ranks, (N-1)/N * rows * (n_in + 1) * 4;
    * ``"dy"``: Allgatherv of the other ranks' x and output gradient dy (mode
      batch_dw): (N-1)/N * batch * (n_in + n_out) * 4 (without x as for
      "factors");
    * ``"cand"``: Allgatherv of the other ranks' x and selection candidates
      (mode batch_dw): each rank's min(batch k, B_r n_out) largest |dy| as
      (index, value), 8 bytes each, with B_r = batch / N:
      (N-1)/N * batch * n_in * 4 + (N-1) * min(batch k, B_r n_out) * 8.
    """
    f = (size - 1) / size
    if kind == "dense":
        return 2 * f * n_out * n_in * 4
    if kind == "factors":
        return f * batch * (n_in * bool(with_input) + 2 * k) * 4
    if kind == "rows":
        return f * rows * (n_in + 1) * 4
    if kind == "dy":
        return f * batch * (n_in * bool(with_input) + n_out) * 4
    if kind == "cand":
        m = min(batch * k, batch / size * n_out)
        return f * batch * n_in * bool(with_input) * 4 + (size - 1) * m * 8
    raise ValueError(f"exchange_bytes: kind must be 'dense', 'factors', 'dy', 'cand' or 'rows', "
                     f"got {kind!r}")


def _factored_layer(lin):
    """Whether lin's backward leaves its selection in (idx, val) (per-example top-k /
    random-k below the masked threshold): the gradient travels as factors."""
    return (lin.sparse and lin.mode in ("topk_dw", "topk", "random")
            and not _core.backward_masked(lin.k, lin.n_out))


def _batch_layer(lin):
    """Whether lin selects over the whole batch (mode batch_dw): its gradient
    travels as x and selection candidates (or x and dy), and every rank
    selects over the global batch."""
    return lin.sparse and lin.mode == "batch_dw"


class Distributed:
    """One data-parallel job: the communicator and the per-step exchange.

    comm: an mpi4py communicator (default ``MPI.COMM_WORLD``).
    exchange: "auto" (per weight gradient, the cheapest of factors / rows /
    dense in bytes; for mode batch_dw, candidates / dy / dense), or force
    "factors" (factors, or a batch_dw layer's candidates / dy, where
    possible, else rows), "rows",
    "owner" (a reduce-scatter by row ownership: row j is summed by rank
    j % N, then the sums are gathered; never chosen by "auto", it measured
    slower here) or "dense" for every row-sparse gradient.

    After every step ``last`` holds the exchange's statistics: the bytes this
    rank contributed (``payload``) and received (``recv``: every other rank's
    part of an Allgatherv, 2 (N-1)/N of an Allreduce's buffer, as MPI's ring
    algorithms move them), the bytes a dense Allreduce of all the gradients
    would have received (``dense_recv``), the MPI calls, the methods chosen and
    the seconds spent (``seconds``).
    """

    def __init__(self, comm=None, exchange="auto"):
        MPI = require_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        if exchange not in EXCHANGES:
            raise ValueError(f"Distributed: exchange must be one of {EXCHANGES}, got {exchange!r}")
        self.exchange = exchange
        self.stop = False          # the Ctrl-C flag as all ranks agreed on it
        self.last = {}
        self.time_exchange = 0.0   # seconds, summed over steps
        self._ws = {}
        self._skip_x = set()
        self._fstep = None        # the FusedStep of the fused path (see _fused_for)
        self._batch_exchange = None   # tests: force "dy" or "cand" for batch_dw layers
        self.path = None          # "fused" or "modules": how the last step ran

    def __repr__(self):
        return f"Distributed(rank={self.rank}, size={self.size}, exchange={self.exchange!r})"

    # -- helpers ---------------------------------------------------------------
    def share(self, n):
        return share(n, self.size, self.rank)

    def abort(self, message, code=1):
        """Print ``message`` (naming this rank) to stderr and abort every rank."""
        sys.stderr.write(f"meprop_cpu.distributed: rank {self.rank} of {self.size}: {message}; "
                         "aborting the job\n")
        sys.stderr.flush()
        self.comm.Abort(code)

    def digest(self, arrays):
        """A SHA-256 of the arrays' bytes (weights, optimizer state)."""
        h = hashlib.sha256()
        for a in arrays:
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def check_identical(self, arrays):
        """True when every rank holds bit-identical ``arrays`` (one allgather)."""
        return len(set(self.comm.allgather(self.digest(arrays)))) == 1

    def bcast_state(self, model):
        """Copy rank 0's parameters to every rank (for models not built from the
        same seed on every rank)."""
        for p in model.parameters():
            self.comm.Bcast(p.data, root=0)

    # -- one training step (the Trainer calls this) ----------------------------
    def train_step(self, trainer, epoch, step, idx):
        """Forward / backward on this rank's share of the global batch ``idx``,
        the exchange, and the update. Returns ``(loss, t_forward, t_backward,
        t_update)``; the loss is the global batch's mean. Raises (through the
        trainer, on every rank together) FloatingPointError when the loss or a
        gradient is not finite on any rank."""
        model, opt, loss_fn = trainer.model, trainer.optimizer, trainer.loss
        X, y = trainer.data["train"]
        B = idx.shape[0]
        start, stop = self.share(B)
        nb = stop - start
        pc = time.perf_counter
        lins = _linears_of(model)
        tracked = [(m, m.hits.copy(), m.seen) for m in lins if m.track_hits]
        drops = _dropout_widths(model)
        t0 = pc()
        first_input = lambda: X[idx]   # noqa: E731  (every rank holds the training set)
        self._skip_x = set()
        plan = self._plan(model, opt, lins, B, first_input)
        fstep = self._fused_for(trainer, plan, nb)
        counters = [d._counter for d, _ in drops]
        for (d, w), c in zip(drops, counters):   # this share's slice of the global stream
            d._counter = c + start * w
        loss_local, bad, message = 0.0, 0, ""
        t1 = t2 = t0
        src = _ModuleGrads()
        ran = None
        if nb > 0 and fstep is not None:
            src = _FusedGrads(fstep, lins)
            try:
                ran = fstep.forward_backward_rows(X, y, idx[start:stop], nb / B)
                if ran is not None:
                    loss_local, tf, _ = ran
                    if not np.isfinite(loss_local):   # no backward ran: nothing to send
                        bad, message, src.failed = 1, f"the training loss is {loss_local}", True
            except FloatingPointError as e:
                ran, tf = True, pc() - t0
                bad, message, src.failed = 1, str(e), True
            if ran is not None:
                t1 = t0 + tf
                t2 = pc()
            else:   # the model no longer qualifies (nothing was run): the module path
                src = _ModuleGrads()
        if nb > 0 and ran is None:
            local = idx[start:stop]
            xb, yb = X[local], y[local]
            logits = model.forward(xb)
            loss_local = float(loss_fn.forward(logits, yb))
            t1 = pc()
            dy = loss_fn.backward()
            if nb != B:
                dy *= np.float32(nb / B)
            try:
                model.backward(dy)
            except FloatingPointError as e:
                bad, message = 1, str(e)
                opt.zero_grad()
            t2 = pc()
        self.path = "fused" if isinstance(src, _FusedGrads) else "modules"
        for (d, w), c in zip(drops, counters):
            d._counter = c + B * w
        g = self._exchange(model, opt, lins, tracked, B, nb, loss_local * nb, bad,
                           bool(trainer._stop), first_input=first_input, plan=plan, src=src)
        t3 = pc()
        self.time_exchange += t3 - t2
        self.stop = g["stop"]
        if g["bad"]:
            opt.zero_grad()
            why = message or "a gradient held NaN/Inf on another rank"
            trainer._diverged(epoch, step, f"the backward pass failed on {g['bad']} rank(s): "
                                           f"{why}")
        loss = g["loss"] / B
        if not np.isfinite(loss):
            opt.zero_grad()
            trainer._diverged(epoch, step, f"the training loss is {loss}")
        opt.step()
        opt.zero_grad()
        t4 = pc()
        return loss, t1 - t0, t3 - t1, t4 - t3

    def _fused_for(self, trainer, plan, nb):
        """The FusedStep that runs this rank's forward and backward in one C call
        (without the update), or None for the module path: the Trainer's
        ``fused`` is on, the model and optimizer qualify for the fused step,
        this rank has examples, and every gradient travels as factors,
        (x, candidates or dy) or in the dense Allreduce as it is (no row-sparse
        gradient sent as rows or densely: those read the modules' gradients)."""
        model, opt = trainer.model, trainer.optimizer
        if not trainer.fused or nb < 1:
            return None
        for p, m, lin in plan:
            if m not in ("factors", "dy", "cand", "dense") or (m == "dense" and lin is not None
                                                       and lin.sparse):
                return None
        fs = self._fstep
        if fs is None or fs.model is not model or fs.optimizer is not opt:
            if _fused.unsupported(model, opt, trainer.loss) is not None:
                return None
            fs = self._fstep = _fused.FusedStep(model, opt, trainer.batch_size)
        return fs   # it returns None from forward_backward_rows once the model changed

    # -- the exchange ------------------------------------------------------------
    def _plan(self, model, opt, lins, B, first_input=None):
        """[(param, method, info)] in optimizer order; method "factors" | "rows" |
        "dense" | "rows?" (rows or dense, decided once the row counts are known)."""
        owner = {id(m.W): m for m in lins}
        N = self.size
        plan = []
        for p in opt.params:
            lin = owner.get(id(p))
            shape = p.data.shape
            if lin is not None:
                if not lin.sparse:
                    plan.append((p, "dense", lin))
                elif ((_factored_layer(lin) or _batch_layer(lin))
                      and self.exchange in ("auto", "factors")):
                    first = first_input is not None and lin is model.modules[0]
                    if first:
                        self._skip_x.add(id(lin))
                    kind = "factors"
                    if _batch_layer(lin):
                        kind = self._batch_kind(lin, N, B, first)
                    f = exchange_bytes(kind, N, lin.n_out, lin.n_in, B, lin.k,
                                       with_input=not first)
                    d = exchange_bytes("dense", N, lin.n_out, lin.n_in)
                    plan.append((p, kind if self.exchange == "factors" or f <= d
                                 else "dense_rows", lin))
                else:
                    plan.append((p, self._sparse_method(), lin))
            elif len(shape) == 2 and isinstance(p.grad, RowGrad) and p.grad.rows is not None:
                plan.append((p, self._sparse_method(), None))
            else:
                plan.append((p, "dense", None))
        return plan

    def _batch_kind(self, lin, N, B, first):
        """How a batch-selection layer (mode batch_dw) sends its share: "cand"
        (its top B k candidates) where its backward groups factored pairs
        (not the masked form) and that moves fewer bytes than "dy" (its whole
        output gradient), else "dy"."""
        if self._batch_exchange is not None:
            return self._batch_exchange
        if _core.backward_masked(lin.k, lin.n_out):
            return "dy"
        c = exchange_bytes("cand", N, lin.n_out, lin.n_in, B, lin.k, with_input=not first)
        d = exchange_bytes("dy", N, lin.n_out, lin.n_in, B, lin.k, with_input=not first)
        return "cand" if c < d else "dy"

    def _sparse_method(self):
        return {"dense": "dense_rows", "owner": "owner"}.get(self.exchange, "rows?")

    def _exchange(self, model, opt, lins, tracked, B, nb, loss_sum, bad, stop,
                  first_input=None, plan=None, src=None):
        """Combine this rank's gradients with every other rank's (see the module
        docstring). first_input: None, or a callable giving the model input of
        the whole global batch (B, n_in), which every rank can form from the
        training set: the first layer's factors then travel without it.
        plan: the _plan made before the step (else made here); src: where this
        rank's gradients are read (_ModuleGrads: the modules' ``grad`` and
        caches; _FusedGrads: the fused step's buffers)."""
        MPI, comm, N = self.MPI, self.comm, self.size
        t0 = time.perf_counter()
        if plan is None:
            self._skip_x = set()
            plan = self._plan(model, opt, lins, B, first_input)
        src = _ModuleGrads() if src is None else src
        shares = [share(B, N, r) for r in range(N)]
        sizes = [b - a for a, b in shares]
        stats = {"payload": 0, "recv": 0, "calls": 0, "methods": {}}

        # row counts of the "rows?" gradients (one small Allgather, only if any)
        rows_q = [i for i, (_, m, _) in enumerate(plan) if m == "rows?"]
        counts = None
        if rows_q:
            mine = np.array([_nrows(plan[i][0]) for i in rows_q], np.int64)
            counts = np.empty((N, len(rows_q)), np.int64)
            comm.Allgather(mine, counts)
            stats["calls"] += 1
            stats["payload"] += mine.nbytes
            stats["recv"] += mine.nbytes * (N - 1)
            for j, i in enumerate(rows_q):
                p, _, lin = plan[i]
                n_out, n_in = p.data.shape
                r = exchange_bytes("rows", N, n_out, n_in, rows=int(counts[:, j].sum()))
                d = exchange_bytes("dense", N, n_out, n_in)
                plan[i] = (p, "rows" if (self.exchange == "rows" or r <= d) else "dense_rows",
                           lin)

        # the sparse payload: one Allgatherv of bytes
        send_parts, recv_sizes = [], np.zeros(N, np.int64)
        row_j = {i: j for j, i in enumerate(rows_q)}
        for i, (p, m, lin) in enumerate(plan):
            if m == "factors":
                k, n_in = lin.k, lin.n_in * (id(lin) not in self._skip_x)
                recv_sizes += np.array(sizes, np.int64) * (n_in + 2 * k) * 4
                send_parts += src.factor_parts(lin, nb, with_input=n_in > 0)
            elif m == "dy":
                n_in = lin.n_in * (id(lin) not in self._skip_x)
                recv_sizes += np.array(sizes, np.int64) * (n_in + lin.n_out) * 4
                send_parts += src.dy_parts(lin, nb, with_input=n_in > 0)
            elif m == "cand":
                n_in = lin.n_in * (id(lin) not in self._skip_x)
                cands = np.array([_n_cand(B, lin.k, b, lin.n_out) for b in sizes], np.int64)
                recv_sizes += np.array(sizes, np.int64) * n_in * 4 + cands * 8
                parts = src.dy_parts(lin, nb, with_input=n_in > 0)
                cws = self._ws.setdefault(("cand", id(lin)), Workspace())
                send_parts += parts[:-1] + list(_candidates(parts[-1], nb, lin.n_out,
                                                            int(cands[self.rank]), cws))
            elif m == "rows":
                n_in = p.data.shape[1]
                recv_sizes += counts[:, row_j[i]] * (n_in + 1) * 4
                send_parts += _row_parts(p, nb)
        if recv_sizes.sum():
            sendbuf = np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.uint8)
                                      for a in send_parts]) if send_parts else np.zeros(0, np.uint8)
            if sendbuf.nbytes != recv_sizes[self.rank]:
                raise RuntimeError(f"Distributed: payload of {sendbuf.nbytes} bytes, "
                                   f"expected {recv_sizes[self.rank]}")
            recvbuf = self._buffer("payload", int(recv_sizes.sum()), np.uint8)
            displs = np.concatenate([[0], np.cumsum(recv_sizes)[:-1]])
            comm.Allgatherv([sendbuf, MPI.BYTE],
                            [recvbuf, (recv_sizes.tolist(), displs.tolist()), MPI.BYTE])
            stats["calls"] += 1
            stats["payload"] += sendbuf.nbytes
            stats["recv"] += int(recv_sizes.sum() - sendbuf.nbytes)   # every other rank's part
            self._unpack(plan, recvbuf, displs, sizes, counts, row_j, N, first_input)

        for p, m, _ in plan:   # reduce-scatter by row ownership (measured, not auto)
            if m == "owner":
                self._owner_exchange(p, stats)

        # the dense buffer: dense gradients, counts, loss, flags (one Allreduce)
        # (a row-sparse gradient sent densely, "dense_rows", carries a touched-row
        # mask, so that the update stays row-sparse: the same rows as the other
        # exchanges, the optimizer's sparse semantics unchanged)
        dense = [(p, m == "dense_rows") for p, m, lin in plan if m in ("dense", "dense_rows")]
        n = (sum(p.data.size + (p.data.shape[0] if rs else 0) for p, rs in dense)
             + sum(m.n_out + 1 for m, _, _ in tracked) + 3)
        buf = self._buffer("dense", n, np.float32)
        o = 0
        for p, rs in dense:
            sz = p.data.size
            src.dense_grad_into(p, buf[o:o + sz])
            o += sz
            if rs:
                n_out = p.data.shape[0]
                buf[o:o + n_out] = 0.0
                g = p.grad
                if g is not None and getattr(g, "rows", None) is None:
                    buf[o:o + n_out] = 1.0
                elif g is not None:
                    buf[o + np.asarray(g.rows)] = 1.0
                o += n_out
        for m, base, seen in tracked:
            buf[o:o + m.n_out] = m.hits - base
            buf[o + m.n_out] = m.seen - seen
            o += m.n_out + 1
        buf[o:o + 3] = (loss_sum, bad, 1.0 if stop else 0.0)
        comm.Allreduce(MPI.IN_PLACE, [buf, MPI.FLOAT], op=MPI.SUM)
        stats["calls"] += 1
        stats["payload"] += buf.nbytes
        stats["recv"] += int(2 * (N - 1) / N * buf.nbytes)   # a ring Allreduce
        o = 0
        for p, rs in dense:
            sz = p.data.size
            g = buf[o:o + sz].reshape(p.data.shape)
            o += sz
            if rs:
                n_out = p.data.shape[0]
                rows = np.flatnonzero(buf[o:o + n_out]).astype(np.int32)
                o += n_out
                g = RowGrad(rows, g[rows])
            p.grad = g
        for m, base, seen in tracked:   # in place: the fused step holds the array
            np.add(base, buf[o:o + m.n_out].astype(np.int64), out=m.hits)
            m.seen = seen + int(buf[o + m.n_out])
            o += m.n_out + 1
        loss_g, bad_g, stop_g = (float(v) for v in buf[o:o + 3])
        for p, m, _ in plan:
            stats["methods"][m] = stats["methods"].get(m, 0) + 1
        stats["dense_recv"] = int(sum(2 * (N - 1) / N * p.data.size * 4 for p in opt.params))
        stats["seconds"] = time.perf_counter() - t0
        self.last = stats
        return {"loss": loss_g, "bad": int(round(bad_g)), "stop": stop_g > 0}

    def _owner_exchange(self, p, stats):
        """Row j belongs to rank j % N: every rank sends each owner its rows (one
        Alltoallv), the owner sums them in rank order, and the owners' sums are
        gathered (one Allgatherv); p.grad <- the summed RowGrad."""
        MPI, comm, N = self.MPI, self.comm, self.size
        n_in = p.data.shape[1]
        g = p.grad
        rows = (np.zeros(0, np.int32) if g is None
                else np.ascontiguousarray(g.rows, dtype=np.int32))
        vals = (np.zeros((0, n_in), np.float32) if g is None
                else np.ascontiguousarray(g.values, dtype=np.float32))
        order = np.argsort(rows % N, kind="stable")      # grouped by owner, ascending within
        rows, vals = rows[order], vals[order]
        cnt = np.bincount(rows % N, minlength=N).astype(np.int64)
        rcnt = np.empty(N, np.int64)
        comm.Alltoall(cnt, rcnt)
        row_item = (n_in + 1) * 4
        send = np.empty(rows.shape[0] * row_item, np.uint8)
        sv = send.view(np.float32).reshape(-1, n_in + 1) if rows.shape[0] else None
        if sv is not None:
            sv[:, 0] = rows.view(np.float32)
            sv[:, 1:] = vals
        sc, rc = cnt * row_item, rcnt * row_item
        sd = np.concatenate([[0], np.cumsum(sc)[:-1]])
        rd = np.concatenate([[0], np.cumsum(rc)[:-1]])
        recv = np.empty(int(rc.sum()), np.uint8)
        comm.Alltoallv([send, (sc.tolist(), sd.tolist()), MPI.BYTE],
                       [recv, (rc.tolist(), rd.tolist()), MPI.BYTE])
        rv = recv.view(np.float32).reshape(-1, n_in + 1)
        parts, o = [], 0
        for r in range(N):          # rank order
            c = int(rcnt[r])
            parts.append((np.ascontiguousarray(rv[o:o + c, 0]).view(np.int32),
                          rv[o:o + c, 1:]))
            o += c
        own_rows, own_vals = merge_rows(parts, n_in)
        mine = np.empty((own_rows.shape[0], n_in + 1), np.float32)
        mine[:, 0] = own_rows.view(np.float32)
        mine[:, 1:] = own_vals
        counts = np.array(comm.allgather(int(own_rows.shape[0])), np.int64) * row_item
        allb = np.empty(int(counts.sum()), np.uint8)
        comm.Allgatherv([mine.view(np.uint8).reshape(-1), MPI.BYTE],
                        [allb, (counts.tolist(),
                                np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()),
                         MPI.BYTE])
        av = allb.view(np.float32).reshape(-1, n_in + 1)
        urows = np.ascontiguousarray(av[:, 0]).view(np.int32)
        srt = np.argsort(urows, kind="stable")
        p.grad = RowGrad(urows[srt], np.ascontiguousarray(av[srt, 1:]))
        stats["calls"] += 4
        stats["payload"] += send.nbytes
        stats["recv"] += int(rc.sum() - rc[self.rank]) + int(counts.sum() - counts[self.rank]) \
            + 8 * 2 * (N - 1)

    def _buffer(self, name, n, dtype):
        ws = self._ws.setdefault("_buffers", Workspace())
        return ws.get(name, (n,), dtype)

    def _unpack(self, plan, recvbuf, displs, sizes, counts, row_j, N, first_input):
        """Rebuild each exchanged gradient from every rank's part, in rank order."""
        pos = [int(d) for d in displs]
        factors, rows, dys, cands = {}, {}, {}, {}
        for i, (p, m, lin) in enumerate(plan):
            for r in range(N):
                if m == "cand":
                    n_in, b = lin.n_in, sizes[r]
                    c = _n_cand(sum(sizes), lin.k, b, lin.n_out)
                    x = (None if id(lin) in self._skip_x else
                         _take(recvbuf, pos, r, b * n_in, np.float32).reshape(b, n_in))
                    ci = _take(recvbuf, pos, r, c, np.int32)
                    cv = _take(recvbuf, pos, r, c, np.float32)
                    cands.setdefault(i, []).append((x, ci, cv, b))
                elif m == "dy":
                    n_in, b = lin.n_in, sizes[r]
                    x = (None if id(lin) in self._skip_x else
                         _take(recvbuf, pos, r, b * n_in, np.float32).reshape(b, n_in))
                    d = _take(recvbuf, pos, r, b * lin.n_out, np.float32).reshape(b, lin.n_out)
                    dys.setdefault(i, []).append((x, d))
                elif m == "factors":
                    k, n_in, b = lin.k, lin.n_in, sizes[r]
                    x = (None if id(lin) in self._skip_x else
                         _take(recvbuf, pos, r, b * n_in, np.float32).reshape(b, n_in))
                    ix = _take(recvbuf, pos, r, b * k, np.int32).reshape(b, k)
                    v = _take(recvbuf, pos, r, b * k, np.float32).reshape(b, k)
                    factors.setdefault(i, []).append((x, ix, v))
                elif m == "rows":
                    c, n_in = int(counts[r, row_j[i]]), p.data.shape[1]
                    rr = _take(recvbuf, pos, r, c, np.int32)
                    vv = _take(recvbuf, pos, r, c * n_in, np.float32).reshape(c, n_in)
                    rows.setdefault(i, []).append((rr, vv))
        nt = get_num_threads()
        for i, parts in factors.items():
            p, _, lin = plan[i]
            ws = self._ws.setdefault(id(lin), Workspace())
            Bg = sum(a.shape[0] for _, a, _ in parts)
            X = ws.get("x", (Bg, lin.n_in), np.float32)
            idx = ws.get("idx", (Bg, lin.k), np.int32)
            val = ws.get("val", (Bg, lin.k), np.float32)
            if id(lin) in self._skip_x:
                X[...] = first_input()
            else:
                np.concatenate([x for x, _, _ in parts], out=X)
            np.concatenate([a for _, a, _ in parts], out=idx)
            np.concatenate([v for _, _, v in parts], out=val)
            if idx.size and (idx.min() < 0 or idx.max() >= lin.n_out):
                raise RuntimeError("Distributed: a rank sent row indices out of range")
            p.grad = kernels.sparse_dw_into(X, lin.n_out, idx, val, ws, nt, factored=True)
        for i, parts in dys.items():   # mode batch_dw: select over the global batch
            p, _, lin = plan[i]
            ws = self._ws.setdefault(id(lin), Workspace())
            Bg = sum(d.shape[0] for _, d in parts)
            X = ws.get("x", (Bg, lin.n_in), np.float32)
            DY = ws.get("dy", (Bg, lin.n_out), np.float32)
            if id(lin) in self._skip_x:
                X[...] = first_input()
            else:
                np.concatenate([x for x, _ in parts], out=X)
            np.concatenate([d for _, d in parts], out=DY)
            p.grad = lin.weight_grad(X, DY)
        for i, parts in cands.items():   # mode batch_dw from every rank's candidates
            p, _, lin = plan[i]
            ws = self._ws.setdefault(id(lin), Workspace())
            Bg = sum(b for _, _, _, b in parts)
            X = ws.get("x", (Bg, lin.n_in), np.float32)
            if id(lin) in self._skip_x:
                X[...] = first_input()
            else:
                np.concatenate([x for x, _, _, _ in parts], out=X)
            p.grad = _select_candidates(parts, X, lin.n_out, lin.k, ws, nt)
        for i, parts in rows.items():
            p = plan[i][0]
            u, vals = merge_rows(parts, p.data.shape[1])
            p.grad = RowGrad(u, vals)


# -------------------------------------------------------------- module helpers

def _linears_of(model):
    return [m for m in getattr(model, "modules", []) if isinstance(m, Linear)]


def _dropout_widths(model):
    """[(Dropout, width)] for the Dropouts that draw in training (width: the
    features of their input, the preceding Linear's n_out)."""
    out, width = [], None
    for m in getattr(model, "modules", []):
        if isinstance(m, Linear):
            width = m.n_out
        elif isinstance(m, Dropout) and m.p > 0.0 and model.training:
            if m._legacy is not None or width is None:
                raise ValueError("Distributed: a Dropout with a numpy generator state (a "
                                 "checkpoint from before meprop_cpu 0.2.0) or without a "
                                 "preceding Linear cannot be split across ranks")
            out.append((m, width))
    return out


def _nrows(p):
    g = p.grad
    if g is None:
        return 0
    if isinstance(g, RowGrad) and g.rows is not None:
        return int(g.rows.shape[0])
    raise TypeError(f"Distributed: parameter {p.name} has a {type(g).__name__} gradient on "
                    "this rank and a row-sparse one on others")


class _ModuleGrads:
    """This rank's gradients as the module path left them (``p.grad``, the
    Linear layers' cached input, selection and output gradient)."""

    def factor_parts(self, lin, nb, with_input=True):
        return _factor_parts(lin, nb, with_input)

    def dy_parts(self, lin, nb, with_input=True):
        return _dy_parts(lin, nb, with_input)

    def dense_grad_into(self, p, out):
        _dense_grad_into(p, out)


class _FusedGrads:
    """This rank's gradients in the buffers of the fused step's forward and
    backward (FusedStep.gradients); zeros, as the module path sends for a
    gradient it dropped, when that step failed (``failed``)."""

    def __init__(self, fstep, lins):
        self.fstep = fstep
        self.layer = {id(m): i for i, m in enumerate(lins)}
        self.param = {}
        for i, m in enumerate(lins):
            self.param[id(m.W)] = (i, "gw")
            self.param[id(m.b)] = (i, "gb")
        self.failed = False
        self._got = {}

    def _layer_grads(self, i):
        g = self._got.get(i)
        if g is None:
            g = self._got[i] = self.fstep.gradients(i)
        return g

    def _grads(self, lin):
        return self._layer_grads(self.layer[id(lin)])

    def factor_parts(self, lin, nb, with_input=True):
        if self.failed:
            parts = [np.zeros(nb * lin.n_in, np.float32), np.zeros(nb * lin.k, np.int32),
                     np.zeros(nb * lin.k, np.float32)]
        else:
            g = self._grads(lin)
            parts = [g["x"], g["idx"], g["val"]]
        return parts if with_input else parts[1:]

    def dy_parts(self, lin, nb, with_input=True):
        if self.failed:
            parts = [np.zeros(nb * lin.n_in, np.float32), np.zeros(nb * lin.n_out, np.float32)]
        else:
            g = self._grads(lin)
            parts = [g["x"], g["dy"]]
        return parts if with_input else parts[1:]

    def dense_grad_into(self, p, out):
        if self.failed:
            out[...] = 0.0
            return
        i, key = self.param[id(p)]
        out[...] = self._layer_grads(i)[key].reshape(-1)


def _factor_parts(lin, nb, with_input=True):
    """x (unless not with_input), idx, val of this rank's share (zeros when it has
    no gradient)."""
    k, n_in = lin.k, lin.n_in
    if nb == 0 or lin.W.grad is None:
        parts = [np.zeros(nb * n_in, np.float32), np.zeros(nb * k, np.int32),
                 np.zeros(nb * k, np.float32)]
    else:
        parts = [lin._x, *lin.selection(nb)]
    return parts if with_input else parts[1:]


def _dy_parts(lin, nb, with_input=True):
    """x (unless not with_input) and dy (nb, n_out) of this rank's share (zeros
    when it has no gradient)."""
    if nb == 0 or lin.W.grad is None or lin._dy is None:
        parts = [np.zeros(nb * lin.n_in, np.float32), np.zeros(nb * lin.n_out, np.float32)]
    else:
        parts = [lin._x, lin._dy]
    return parts if with_input else parts[1:]


def _n_cand(B, k, b, n_out):
    """Candidates a rank with b of the global batch's B examples sends for a
    batch-selection layer: min(B k, b n_out)."""
    return min(B * k, b * n_out)


def _candidates(dy, nb, n_out, m, ws):
    """(local flat indices int32 (m,), values float32 (m,)): the m largest |dy|
    of this rank's share under the selection's order (larger magnitude first,
    then the lower index), ascending by index. Every entry of the global
    batch's B k largest that lies in this share is among them: fewer than B k
    entries of the whole batch precede it, so fewer than m <= B k of this
    share do (or m is the whole share)."""
    g = np.ascontiguousarray(dy, dtype=np.float32).reshape(1, nb * n_out)
    if m == nb * n_out:
        return np.arange(m, dtype=np.int32), g.reshape(-1)
    idx = ws.get("cand_idx", (1, m), np.int32)
    val = ws.get("cand_val", (1, m), np.float32)
    kernels.topk_rows_into(g, m, idx, val, ws, 1)   # NaN / Inf: the backward reported it
    return idx.reshape(-1), val.reshape(-1)


def _select_candidates(parts, X, n_out, k, ws, nthreads):
    """The global batch's weight gradient of mode batch_dw from every rank's
    candidates (rank order = global example order): the B k largest of them
    by the selection's order are the B k largest of the whole batch's dy, in
    the same order, so grouping them by row gives the single-process gradient
    bit for bit (factored, over the global input X)."""
    B = X.shape[0]
    flat, vals, start = [], [], 0
    for _, ci, cv, b in parts:
        if ci.size and (ci.min() < 0 or ci.max() >= b * n_out):
            raise RuntimeError("Distributed: a rank sent candidate indices out of range")
        flat.append(ci.astype(np.int64) + start * n_out)
        vals.append(cv)
        start += b
    flat, vals = np.concatenate(flat), np.concatenate(vals)
    kk = B * k
    if vals.shape[0] > kk:
        sel = ws.get("sel_idx", (1, kk), np.int32)
        sv = ws.get("sel_val", (1, kk), np.float32)
        kernels.topk_rows_into(vals.reshape(1, -1), kk, sel, sv, ws, nthreads)
        flat, vals = flat[sel[0]], sv[0]
    ex = (flat // n_out).astype(np.int32)
    j = (flat - ex.astype(np.int64) * n_out).astype(np.int32)
    r, rows, offsets, pair_b, pair_v = kernels.group_pairs_into(
        n_out, j.reshape(-1, 1), np.ascontiguousarray(vals).reshape(-1, 1), ws)
    used = int(offsets[r])
    pair_b[:used] = ex[pair_b[:used]]        # pair index -> its example
    values = ws.get("values", (r, X.shape[1]), np.float32)
    return RowGrad._factored(rows[:r], X, offsets, pair_b, pair_v, values)


def _row_parts(p, nb):
    g = p.grad
    if g is None:
        return [np.zeros(0, np.int32), np.zeros(0, np.float32)]
    return [np.ascontiguousarray(g.rows, dtype=np.int32),
            np.ascontiguousarray(g.values, dtype=np.float32)]


def _dense_grad_into(p, out):
    g = p.grad
    if g is None:
        out[...] = 0.0
    elif isinstance(g, RowGrad):
        if g.rows is None:
            out[...] = np.asarray(g.values).reshape(-1)
        else:
            o2 = out.reshape(p.data.shape)
            o2[...] = 0.0
            o2[np.asarray(g.rows)] = g.values
    else:
        out[...] = np.asarray(g, dtype=np.float32).reshape(-1)


def _take(buf, pos, r, n, dtype):
    """The next n items of dtype from rank r's part of buf (advances pos[r])."""
    nbytes = n * np.dtype(dtype).itemsize
    a = buf[pos[r]:pos[r] + nbytes].view(dtype)
    pos[r] += nbytes
    return a
