"""The Trainer: seeded shuffling, the papers' evaluation protocol, per-phase
timings, JSON-lines logs, Ctrl-C handling and checkpoints (see the package
docstring, :mod:`meprop_cpu.train`)."""
import json
import math
import os
import signal
import sys
import threading
import time
import warnings

import numpy as np

from .. import _config, fused
from .._config import get_num_threads
from .._io import atomic_savez
from .._thread_tuner import auto_tuner, restore_auto
from ..kernels import _check_int as check_int
from ..nn import SoftmaxCrossEntropy
from ..nn.models import dropouts as _dropouts, linears as _linears
from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, _check_partial, _from_json,
                         _to_json, read_checkpoint)
from ..steps import ModuleStep
from .progress import TrainingInterrupted, _isatty, _Progress

__all__ = ["Trainer", "LOG_KEYS"]

# keys present on every JSON log line (evaluations, epochs, summary, error)
LOG_KEYS = ("event", "epoch", "step", "global_step", "train_loss", "dev_acc", "test_acc",
            "time_epoch", "time_forward", "time_backward", "time_update", "hidden_sizes",
            "threads", "k", "mode")

_TIME_KEYS = ("time_epoch", "time_forward", "time_backward", "time_update")


# ------------------------------------------------------------------ helpers

def _check_split(data, split, required):
    if split not in data or data[split] is None:
        if required:
            raise ValueError(f"Trainer: data must have a {split!r} entry (X, y)")
        return None
    try:
        X, y = data[split]
    except (TypeError, ValueError):
        raise TypeError(f"Trainer: data[{split!r}] must be a pair (X, y)") from None
    if not isinstance(X, np.ndarray) or X.dtype != np.float32 or X.ndim != 2:
        raise TypeError(f"Trainer: data[{split!r}] X must be a 2-D float32 numpy array, got "
                        f"{getattr(X, 'dtype', type(X).__name__)} "
                        f"{getattr(X, 'shape', '')}")
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"Trainer: data[{split!r}] y must be a 1-D integer array, got "
                        f"{y.dtype} {y.shape}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"Trainer: data[{split!r}] has {X.shape[0]} rows in X but "
                         f"{y.shape[0]} labels")
    if X.shape[0] == 0:
        raise ValueError(f"Trainer: data[{split!r}] is empty")
    return np.ascontiguousarray(X), np.ascontiguousarray(y, dtype=np.int64)


def _check_data_fits(data, sizes):
    """Finite features, as many as the model takes, and labels in [0, classes)."""
    for split, xy in data.items():
        if xy is None:
            continue
        X, y = xy
        if sizes is not None and X.shape[1] != sizes[0]:
            raise ValueError(f"Trainer: data[{split!r}] has {X.shape[1]} features, the model "
                             f"takes {sizes[0]}")
        n_classes = sizes[-1] if sizes is not None else None
        if y.min() < 0 or (n_classes is not None and y.max() >= n_classes):
            raise ValueError(f"Trainer: data[{split!r}] labels must lie in [0, "
                             f"{n_classes if n_classes is not None else 'classes'}), got range "
                             f"[{y.min()}, {y.max()}]")
        if not np.isfinite(X.sum(dtype=np.float64)):   # no temporary; exact count if it fails
            bad = X.size - np.count_nonzero(np.isfinite(X))
            raise ValueError(f"Trainer: data[{split!r}] X contains {bad} NaN/Inf value(s)")


# ------------------------------------------------------------------ trainer

def _hidden_sizes(model):
    hs = getattr(model, "hidden_sizes", None)
    if hs is not None:
        return list(hs)
    lin = _linears(model)
    return [m.n_out for m in lin[:-1]]


def _model_sizes(model):
    lin = _linears(model)
    return [lin[0].n_in] + [m.n_out for m in lin] if lin else None


class Trainer:
    """Train ``model`` with ``optimizer`` on ``data`` (the papers' protocol).

    data: ``{"train": (X, y), "dev": (X, y), "test": (X, y)}``; X float32
    (N, n_in), y integer (N,); "test" is optional.
    batch_size, epochs: ints >= 1; ``epochs`` is the total number of epochs
    (also when resuming). The last partial batch of an epoch is kept.
    evals_per_epoch: dev evaluations per epoch at evenly spaced steps (capped
    at the number of steps), the last at the epoch's end.
    seed: seeds the shuffle generator (one permutation per epoch).
    log_json: path of a JSON-lines log (truncated by a fresh fit, appended to
    when resuming or continuing).
    checkpoint: path written (atomically) at the end of every epoch, and on Ctrl-C.
    interrupt_checkpoint: where Ctrl-C saves when ``checkpoint`` is None.
    progress: True / False / None (auto: when stderr is a terminal).
    callbacks: callables ``cb(trainer, epoch, step)`` run after every
    optimizer step (epoch and step are 1-based; ``trainer.global_step``
    counts all steps). They may reshape the model's parameters (meSimp): the
    fused step notices replaced parameter or state arrays and rebuilds.
    loss: the loss object (default SoftmaxCrossEntropy()).
    on_epoch: optional ``f(trainer, record)`` called after each epoch with its
    log record (the CLI prints its per-epoch line from it).
    distributed: None, True (MPI's COMM_WORLD) or a
    :class:`meprop_cpu.distributed.Distributed`: synchronous data parallelism
    over MPI (``batch_size`` is then the global batch, split across the ranks;
    every rank holds the same weights after every step; rank 0 alone writes
    the log, the progress line and the checkpoints; the module path is taken
    and ``time_backward`` includes the gradient exchange). See
    :mod:`meprop_cpu.distributed`.
    fused: take the whole step (forward, loss, backward, update) in one C
    call when the model, optimizer and loss allow it (an MLP of Linear +
    ReLU (+ Dropout) with topk, unified or dense layers, SGD / AdaGrad /
    Adam; see
    :mod:`meprop_cpu.fused`), bit-identical to the module path and faster on
    small batches. ``trainer.step_path`` says which path the last step took
    ("fused" or "modules"); False always takes the module path.

    Timings: ``time_forward`` covers forward and loss, ``time_backward`` the
    backward pass, ``time_update`` the optimizer step. With a row-sparse
    optimizer the weight-gradient rows of a per-example top-k (or random-k)
    layer are formed inside the update, fused with it (see RowGrad), so that
    work is counted in ``time_update``, not in ``time_backward``. On the
    fused path the three are measured inside the C step (the remaining
    Python work of a step is in ``time_epoch`` only).

    After ``fit()``: ``best_dev``, ``test_at_best_dev``, ``history`` (every
    evaluation record) and ``epoch`` (epochs completed).
    """

    def __init__(self, model, optimizer, data, batch_size, epochs, evals_per_epoch=1, seed=0,
                 log_json=None, checkpoint=None, progress=None, callbacks=(), *, loss=None,
                 on_epoch=None, eval_batch_size=1024, interrupt_checkpoint=None, fused=True,
                 distributed=None):
        self.model = model
        self.optimizer = optimizer
        if not isinstance(data, dict):
            raise TypeError(f"Trainer: data must be a dict with 'train', 'dev' (and optionally "
                            f"'test') entries, got {type(data).__name__}")
        self.data = self._check_data(data)
        self.batch_size = check_int(batch_size, "Trainer: batch_size", 1)
        self.epochs = check_int(epochs, "Trainer: epochs", 1)
        self.evals_per_epoch = check_int(evals_per_epoch, "Trainer: evals_per_epoch", 1)
        if seed is not None:
            seed = check_int(seed, "Trainer: seed", 0)
        self.seed = seed
        self.log_json = None if log_json is None else os.fspath(log_json)
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.interrupt_checkpoint = (None if interrupt_checkpoint is None
                                     else os.fspath(interrupt_checkpoint))
        self.progress = progress
        callbacks = list(callbacks or ())
        for i, cb in enumerate(callbacks):
            if not callable(cb):
                raise TypeError(f"Trainer: callbacks[{i}] is not callable")
        self.callbacks = callbacks
        if on_epoch is not None and not callable(on_epoch):
            raise TypeError("Trainer: on_epoch must be callable or None")
        self.on_epoch = on_epoch
        self.loss = SoftmaxCrossEntropy() if loss is None else loss
        self.eval_batch_size = check_int(eval_batch_size, "Trainer: eval_batch_size", 1)
        if not isinstance(fused, (bool, np.bool_)):
            raise TypeError(f"Trainer: fused must be True or False, got {fused!r}")
        self.fused = bool(fused)
        self._fused_step = None
        self.step_path = None
        self.thread_tuner = None  # a ThreadTuner while the thread count is automatic
        self.distributed = _distributed(distributed)
        self.is_root = self.distributed is None or self.distributed.rank == 0

        n = self.data["train"][0].shape[0]
        self.n_train = n
        self.steps_per_epoch = -(-n // self.batch_size)
        e = min(self.evals_per_epoch, self.steps_per_epoch)
        # evenly spaced, distinct (spe/e >= 1), the last one == steps_per_epoch
        self.eval_steps = [self.steps_per_epoch * (i + 1) // e for i in range(e)]

        self._rng = np.random.default_rng(seed)
        self.epoch = 0            # epochs completed
        self.global_step = 0      # optimizer steps taken
        self.best_dev = None
        self.test_at_best_dev = None
        self.best_epoch = None
        self.best_step = None
        self.history = []         # one record per evaluation
        self.partial = None       # position inside an interrupted epoch (see fit)
        self._stop = False
        self._log = None

    def _check_data(self, data):
        """The validated data dict (subclasses with other inputs override it)."""
        out = {"train": _check_split(data, "train", True),
               "dev": _check_split(data, "dev", True),
               "test": _check_split(data, "test", False)}
        _check_data_fits(out, _model_sizes(self.model))
        return out

    # -- evaluation ----------------------------------------------------------
    def evaluate(self, split):
        """Accuracy (percent) of the model on data[split] ("dev" / "test")."""
        X, y = self.data[split]
        acc = getattr(self.model, "accuracy", None)
        if acc is not None:
            return float(acc(X, y, self.eval_batch_size))
        was = getattr(self.model, "training", True)
        self.model.eval()
        try:
            pred = np.concatenate([self.model.forward(X[i:i + self.eval_batch_size]).argmax(1)
                                   for i in range(0, X.shape[0], self.eval_batch_size)])
        finally:
            self.model.train(was)
        return 100.0 * float(np.mean(pred == y))

    def _evaluate_protocol(self, epoch, step):
        dev = self.evaluate("dev")
        if self.best_dev is None or dev > self.best_dev:
            self.best_dev = dev
            self.best_epoch, self.best_step = epoch, step
            self.test_at_best_dev = (self.evaluate("test") if self.data["test"] is not None
                                     else None)
        return dev

    # -- logging -------------------------------------------------------------
    def _model_k_mode(self):
        cfg = getattr(self.model, "config", None) or {}
        k, mode = cfg.get("k"), cfg.get("mode")
        if k is None or mode == "dense":
            return None, "dense"
        return k, mode

    def _record(self, event, epoch, step, train_loss, dev_acc, times, **extra):
        k, mode = self._model_k_mode()
        rec = {"event": event, "epoch": epoch, "step": step, "global_step": self.global_step,
               "train_loss": train_loss, "dev_acc": dev_acc, "test_acc": self.test_at_best_dev,
               "best_dev": self.best_dev}
        rec.update(times)
        rec.update({"hidden_sizes": _hidden_sizes(self.model), "threads": get_num_threads(),
                    "k": k, "mode": mode})
        if self.thread_tuner is not None:
            rec["thread_tuner"] = self.thread_tuner.state()
        rec.update(extra)
        return rec

    def _write_log(self, rec):
        if self._log is not None:
            self._log.write(json.dumps(rec) + "\n")
            self._log.flush()

    # -- the loop ------------------------------------------------------------
    def fit(self, resume=None):
        """Train until ``epochs`` epochs are completed; returns ``summary()``.

        resume: path of a checkpoint to continue from (see load_checkpoint).
        Raises FloatingPointError naming the epoch and step if the loss or the
        gradients become NaN/Inf (the last good checkpoint is kept), and
        TrainingInterrupted after Ctrl-C (see the module docstring).
        """
        if resume is not None:
            self.load_checkpoint(resume)
        self._stop = False
        if self.distributed is not None:
            self.distributed.stop = False
        show = self.progress if self.progress is not None else _isatty(sys.stderr)
        progress = _Progress(sys.stderr) if show and self.is_root else None
        if self.log_json is not None and self.is_root:
            d = os.path.dirname(os.path.abspath(self.log_json))
            os.makedirs(d, exist_ok=True)
            # a fresh run starts a new log; a resumed or continued one appends
            fresh = resume is None and self.epoch == 0
            self._log = open(self.log_json, "w" if fresh else "a", encoding="utf-8")
        restore_sigint = self._catch_sigint()
        try:
            if self.distributed is not None:
                return self._fit_distributed(progress)
            return self._epochs(progress)
        finally:
            restore_sigint()
            restore_auto(self.thread_tuner)
            if progress is not None:
                progress.clear()
            if self._log is not None:
                self._log.close()
                self._log = None

    def _fit_distributed(self, progress):
        """fit's epoch loop under ``distributed``: collective failures (divergence,
        Ctrl-C, both decided by all ranks together) raise on every rank; any other
        exception is this rank's alone and aborts the whole job (no rank waits
        for it forever)."""
        try:
            return self._epochs(progress)
        except (FloatingPointError, TrainingInterrupted):
            raise
        except BaseException as e:
            if self.distributed.size > 1:
                self.distributed.abort(f"{type(e).__name__}: {e}")
            raise

    def _epochs(self, progress):
        """The epoch loop of fit: train, checkpoint (rank 0; every rank waits until
        it is on disk), report; returns summary()."""
        for epoch in range(self.epoch + 1, self.epochs + 1):
            rec = self._run_epoch(epoch, progress)
            if rec is None:
                self._interrupted(epoch)
            self.epoch = epoch
            if self.checkpoint is not None:
                self._check_finite(epoch)
                if self.is_root:
                    self.save_checkpoint(self.checkpoint)
                if self.distributed is not None:
                    self.distributed.comm.Barrier()   # on disk before any rank reads it
            if self.on_epoch is not None:
                self.on_epoch(self, rec)
        summary = self.summary()
        self._write_log(summary)
        return summary

    def _run_epoch(self, epoch, progress):
        model, opt, loss_fn = self.model, self.optimizer, self.loss
        X, y = self.data["train"]
        B, spe = self.batch_size, self.steps_per_epoch
        evals = set(self.eval_steps)
        epoch_start_rng = self._rng.bit_generator.state
        perm = self._rng.permutation(self.n_train)
        model.train()
        pc = time.perf_counter
        t_fwd = t_bwd = t_upd = t_eval = 0.0
        loss_sum, seen = 0.0, 0
        rec = None
        t_start = pc()
        part, self.partial = self.partial, None
        first = 1
        if part is not None and part["epoch"] == epoch:   # resume inside this epoch
            first = part["step"] + 1
            loss_sum, seen = part["loss_sum"], part["seen"]
            t_fwd, t_bwd, t_upd = part["time_forward"], part["time_backward"], part["time_update"]
            t_eval = part["time_eval"]
            t_start -= part["time_train"] + t_eval
        dist = self.distributed
        stepper = self._stepper(loss_fn) if dist is None else None
        if dist is not None:
            self.step_path = "distributed"
        tuner = self._thread_tuner()
        for step in range(first, spe + 1):
            if self._stop if dist is None else dist.stop:   # Ctrl-C: stop between steps, rewind to the epoch's permutation
                self._rng.bit_generator.state = epoch_start_rng
                self.partial = {"epoch": epoch, "step": step - 1, "loss_sum": loss_sum,
                                "seen": seen, "time_train": pc() - t_start - t_eval,
                                "time_forward": t_fwd, "time_backward": t_bwd,
                                "time_update": t_upd, "time_eval": t_eval}
                if progress is not None:
                    progress.clear()
                return None
            idx = perm[(step - 1) * B: step * B]
            if tuner is not None:
                _config._use_threads(tuner.threads())
                t_step = pc()
            if dist is not None:
                loss, dt_f, dt_b, dt_u = dist.train_step(self, epoch, step, idx)
            else:
                try:
                    out = stepper.step_rows(X, y, idx)
                    if out is None:   # a callback made the model unfit for the fused step
                        stepper = ModuleStep(model, opt, loss_fn)
                        self.step_path = "modules"
                        out = stepper.step_rows(X, y, idx)
                except FloatingPointError as e:
                    self._diverged(epoch, step, f"the backward pass failed: {e}", e)
                loss, dt_f, dt_b, dt_u = out
                if not math.isfinite(loss):
                    self._diverged(epoch, step, f"the training loss is {loss}")
            t_fwd += dt_f
            t_bwd += dt_b
            t_upd += dt_u
            if tuner is not None:
                tuner.record(pc() - t_step)
            self.global_step += 1
            nb = idx.shape[0]
            loss_sum += loss * nb
            seen += nb
            for cb in self.callbacks:
                cb(self, epoch, step)
            if progress is not None:
                progress.update(epoch, self.epochs, step, spe, loss_sum / seen,
                                pc() - t_start - t_eval, force=step == spe)
            if step in evals:
                te = pc()
                times = {"time_epoch": te - t_start - t_eval, "time_forward": t_fwd,
                         "time_backward": t_bwd, "time_update": t_upd}
                dev = self._evaluate_protocol(epoch, step)
                t_eval += pc() - te
                event = "epoch" if step == spe else "eval"
                rec = self._record(event, epoch, step, loss_sum / seen, dev, times,
                                   time_eval=t_eval, step_path=self.step_path,
                                   **({} if dist is None else {"ranks": dist.size}))
                self.history.append(rec)
                self._write_log(rec)
        if progress is not None:
            progress.clear()
        return rec

    def _stepper(self, loss_fn):
        """The step for this epoch: the Trainer's FusedStep when the model qualifies
        (kept across epochs), else a ModuleStep (see meprop_cpu.steps)."""
        if not self.fused or fused.unsupported(self.model, self.optimizer, loss_fn) is not None:
            self.step_path = "modules"
            return ModuleStep(self.model, self.optimizer, loss_fn)
        fs = self._fused_step
        if fs is None or fs.model is not self.model or fs.optimizer is not self.optimizer:
            fs = self._fused_step = fused.FusedStep(self.model, self.optimizer, self.batch_size)
        self.step_path = "fused"
        return fs

    def _thread_tuner(self):
        """The ThreadTuner of this Trainer when the thread count is automatic
        (see meprop_cpu.set_num_threads), else None."""
        self.thread_tuner = auto_tuner(self.thread_tuner)
        return self.thread_tuner

    def request_stop(self):
        """Ask a running ``fit`` to stop after the current step, as Ctrl-C does."""
        self._stop = True

    def _catch_sigint(self):
        """Turn the first Ctrl-C into request_stop() while fit runs (main thread,
        default handler only); a second one raises KeyboardInterrupt at once.
        Returns the function that puts the previous handler back."""
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            return lambda: None

        def handler(signum, frame):
            if self._stop:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            self._stop = True

        signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, signal.default_int_handler)

    def _interrupted(self, epoch):
        """Save the state at the step boundary where fit stopped, then raise."""
        step = self.partial["step"]
        path = self.checkpoint if self.checkpoint is not None else self.interrupt_checkpoint
        where = f"epoch {epoch}, after step {step} of {self.steps_per_epoch}"
        if path is not None and all(np.isfinite(p.data).all() for p in self.model.parameters()):
            if self.is_root:
                self.save_checkpoint(path)
            msg = f"training interrupted at {where}; checkpoint saved to {path}"
        else:
            why = "no checkpoint path set" if path is None else "the weights hold NaN/Inf"
            msg = f"training interrupted at {where}; no checkpoint saved ({why})"
            path = None
        self._write_log(self._record("interrupted", epoch, step, None, None,
                                     dict.fromkeys(_TIME_KEYS), message=msg))
        raise TrainingInterrupted(msg, path, epoch, step)

    def _diverged(self, epoch, step, why, cause=None, step_done=False):
        gs = self.global_step if step_done else self.global_step + 1
        where = f"epoch {epoch}, step {step} (global step {gs})"
        kept = (f"; the last good checkpoint {self.checkpoint} was kept"
                if self.checkpoint is not None and os.path.exists(self.checkpoint) else "")
        msg = (f"training diverged at {where}: {why}{kept}. "
               "Try a smaller learning rate or gradient clipping.")
        self._write_log(self._record("error", epoch, step, None, None,
                                     dict.fromkeys(_TIME_KEYS), message=msg))
        raise FloatingPointError(msg) from cause

    def _check_finite(self, epoch):
        for i, p in enumerate(self.model.parameters()):
            if not np.isfinite(p.data).all():
                self._diverged(epoch, self.steps_per_epoch,
                               f"parameter {i} ({p.name}) holds NaN/Inf after the epoch",
                               step_done=True)

    # -- summary -------------------------------------------------------------
    def summary(self):
        """The summary record (also the log's last line): best dev, test at best
        dev, where the best dev was seen, mean per-epoch timings. The full
        record of every evaluation is ``self.history``."""
        ends = [r for r in self.history if r["event"] == "epoch"]
        means = {k: (float(np.mean([r[k] for r in ends])) if ends else None) for k in _TIME_KEYS}
        last = ends[-1] if ends else {}
        out = self._record("summary", self.epoch, last.get("step"), last.get("train_loss"),
                           self.best_dev, means)
        out.update({"best_dev": self.best_dev, "test_at_best_dev": self.test_at_best_dev,
                    "best_epoch": self.best_epoch, "best_step": self.best_step,
                    "epochs_completed": self.epoch, "total_time_train":
                    float(sum(r["time_epoch"] for r in ends)),
                    "mean_time_epoch": means["time_epoch"],
                    "mean_time_forward": means["time_forward"],
                    "mean_time_backward": means["time_backward"],
                    "mean_time_update": means["time_update"],
                    "batch_size": self.batch_size, "steps_per_epoch": self.steps_per_epoch})
        return out

    # -- checkpoints ---------------------------------------------------------
    def _meta(self):
        model, opt = self.model, self.optimizer
        names = [(n, list(a.shape)) for n, a in model.state_dict().items()]
        osd = opt.state_dict()
        rng = {"shuffle": _to_json(self._rng.bit_generator.state),
               "dropout": [_to_json(d.rng_state()) for d in _dropouts(model)],
               "linear": [{"rand_calls": int(getattr(m, "_rand_calls", 0)), "seen": int(m.seen),
                           "track_hits": bool(m.track_hits)} for m in _linears(model)]}
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "saved_at": time.time(),
            "model": {"class": type(model).__name__,
                      "config": _to_json(getattr(model, "config", None)),
                      "sizes": _model_sizes(model), "params": names},
            "optimizer": {"kind": osd["kind"], "hyper": _to_json(osd["hyper"]),
                          "sparse": bool(opt.sparse), "steps": int(osd["steps"]),
                          "param_steps": [None if st is None else int(st["step"])
                                          for st in osd["params"]],
                          "n_arrays": [None if st is None else len(st["arrays"])
                                       for st in osd["params"]]},
            "trainer": {"epoch": self.epoch, "global_step": self.global_step,
                        "epochs": self.epochs, "batch_size": self.batch_size,
                        "evals_per_epoch": self.evals_per_epoch, "seed": self.seed,
                        "n_train": self.n_train, "best_dev": self.best_dev,
                        "world_size": 1 if self.distributed is None else self.distributed.size,
                        "test_at_best_dev": self.test_at_best_dev,
                        "best_epoch": self.best_epoch, "best_step": self.best_step,
                        "history": self.history, "partial": self.partial},
            "rng": rng,
        }, osd

    def save_checkpoint(self, path=None):
        """Write the full training state to ``path`` (default: the
        ``checkpoint`` given at construction) atomically."""
        path = self.checkpoint if path is None else os.fspath(path)
        if path is None:
            raise ValueError("Trainer.save_checkpoint: no path given and no checkpoint set")
        meta, osd = self._meta()
        arrays = {"param:" + n: a for n, a in self.model.state_dict().items()}
        for i, st in enumerate(osd["params"]):
            if st is not None:
                for j, a in enumerate(st["arrays"]):
                    arrays[f"opt:{i}:{j}"] = a
        for i, m in enumerate(_linears(self.model)):
            arrays[f"hits:{i}"] = m.hits
        blob = json.dumps(meta, allow_nan=True).encode("utf-8")
        arrays["meta"] = np.frombuffer(blob, dtype=np.uint8)
        atomic_savez(path, arrays)
        return path

    def load_checkpoint(self, path):
        """Restore model, optimizer, RNGs and trainer counters from ``path``.

        Everything is validated before anything is changed. Raises
        FileNotFoundError, or ValueError naming the file for a corrupt or
        truncated file, another architecture or another optimizer.
        """
        path = os.fspath(path)
        meta, arrays = read_checkpoint(path)
        model, opt = self.model, self.optimizer
        mm, om, tm, rm = meta["model"], meta["optimizer"], meta["trainer"], meta["rng"]

        # the model: same architecture (at its current sizes), same parameter names
        current = model.state_dict()
        saved = {n[6:]: a for n, a in arrays.items() if n.startswith("param:")}
        want = _model_sizes(model)
        if mm.get("sizes") is not None and want is not None and mm["sizes"] != want:
            raise ValueError(f"checkpoint {path} is for a model with sizes {mm['sizes']}, "
                             f"this model has sizes {want}")
        if set(saved) != set(current):
            raise ValueError(f"checkpoint {path} has parameters {sorted(saved)}, "
                             f"the model {sorted(current)}")
        for n, a in current.items():
            if saved[n].shape != a.shape:
                raise ValueError(f"checkpoint {path}: parameter {n} has shape {saved[n].shape}, "
                                 f"the model expects {a.shape} (another architecture?)")
        cfg = getattr(model, "config", None)
        if cfg is not None and mm.get("config") is not None:
            diff = {k for k in set(cfg) | set(mm["config"])
                    if k != "sizes" and _to_json(cfg.get(k)) != mm["config"].get(k)}
            if diff:
                warnings.warn(f"checkpoint {path}: model settings {sorted(diff)} differ from the "
                              "checkpoint's; the resumed run will not match the original",
                              RuntimeWarning, stacklevel=2)

        # the optimizer: same kind, state arrays matching the parameters' shapes
        if om.get("kind") != type(opt).__name__:
            raise ValueError(f"checkpoint {path} holds {om.get('kind')} state, the optimizer "
                             f"is {type(opt).__name__}")
        steps, n_arrays = om.get("param_steps", []), om.get("n_arrays", [])
        if len(steps) != len(opt.params) or len(n_arrays) != len(opt.params):
            raise ValueError(f"checkpoint {path} holds state for {len(steps)} parameters, "
                             f"the optimizer has {len(opt.params)}")
        name_of = {id(p): n for n, p in model.named_parameters()}
        params_sd = []
        for i, (p, st, na) in enumerate(zip(opt.params, steps, n_arrays)):
            if st is None:
                params_sd.append(None)
                continue
            shape = saved[name_of[id(p)]].shape if id(p) in name_of else p.data.shape
            arrs = []
            for j in range(na):
                a = arrays.get(f"opt:{i}:{j}")
                if a is None or a.shape != shape:
                    raise ValueError(f"checkpoint {path}: optimizer state {i}:{j} is missing or "
                                     f"does not match its parameter's shape {shape}")
                arrs.append(a)
            params_sd.append({"step": st, "arrays": arrs})
        if len(rm.get("dropout", [])) != len(_dropouts(model)):
            raise ValueError(f"checkpoint {path} has {len(rm.get('dropout', []))} dropout "
                             f"layers, the model {len(_dropouts(model))}")
        lins = _linears(model)
        if len(rm.get("linear", [])) != len(lins):
            raise ValueError(f"checkpoint {path} has {len(rm.get('linear', []))} Linear layers, "
                             f"the model {len(lins)}")
        hyper = {k: (tuple(v) if isinstance(v, list) else v)
                 for k, v in _from_json(om.get("hyper", {})).items()}
        partial = _check_partial(tm, path, self)

        # apply
        model.load_state_dict(saved)
        opt.load_state_dict({"kind": om["kind"], "hyper": hyper, "steps": om.get("steps", 0),
                             "params": params_sd})
        opt.sparse = bool(om.get("sparse", opt.sparse))
        for d, st in zip(_dropouts(model), rm["dropout"]):
            d.set_rng_state(_from_json(st))
        for i, (m, st) in enumerate(zip(lins, rm["linear"])):
            if hasattr(m, "_rand_calls"):
                m._rand_calls = int(st.get("rand_calls", 0))
            hits = arrays.get(f"hits:{i}")
            if hits is not None and hits.shape == (m.n_out,):
                m.hits = np.array(hits, dtype=np.int64)
            m.seen = int(st.get("seen", 0))
            m.track_hits = bool(st.get("track_hits", m.track_hits))
        self._rng.bit_generator.state = _from_json(rm["shuffle"])
        self.epoch = int(tm["epoch"])
        self.global_step = int(tm["global_step"])
        self.best_dev = tm.get("best_dev")
        self.test_at_best_dev = tm.get("test_at_best_dev")
        self.best_epoch = tm.get("best_epoch")
        self.best_step = tm.get("best_step")
        self.history = list(tm.get("history", []))
        self.partial = partial
        world = 1 if self.distributed is None else self.distributed.size
        if tm.get("world_size", 1) != world:
            warnings.warn(f"checkpoint {path} was written by a run over {tm.get('world_size', 1)} "
                          f"process(es), resuming over {world}: the run continues, but not "
                          "bit-identically", RuntimeWarning, stacklevel=2)
        if tm.get("batch_size") != self.batch_size or tm.get("n_train") != self.n_train:
            warnings.warn(f"checkpoint {path} was trained with batch_size {tm.get('batch_size')} "
                          f"on {tm.get('n_train')} examples; resuming with {self.batch_size} on "
                          f"{self.n_train}: the run will not match the original",
                          RuntimeWarning, stacklevel=2)
        return meta


def _distributed(value):
    """Trainer(distributed=...): None / False, True (MPI.COMM_WORLD) or a
    meprop_cpu.distributed.Distributed."""
    if value is None or value is False:
        return None
    from .. import distributed
    if value is True:
        return distributed.Distributed()
    if not isinstance(value, distributed.Distributed):
        raise TypeError(f"Trainer: distributed must be None, True or a "
                        f"meprop_cpu.distributed.Distributed, got {type(value).__name__}")
    return value
