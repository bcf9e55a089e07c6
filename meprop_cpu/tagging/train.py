"""The training loop of the POS tagger (one sentence per step, or minibatches of
sentences with ``batch_size``).

Same protocol, log fields and checkpoint safety as :class:`meprop_cpu.train.Trainer`:
dev accuracy after every epoch, test (and the out-of-domain WSJ sample, when
given) measured whenever dev improves, the reported score being test at the
best dev; JSON-lines records with ``LOG_KEYS`` (accuracies in percent,
``time_epoch`` = the epoch's training wall time, evaluation excluded, and
its forward / backward / update parts, plus ``tokens_per_s``); checkpoints
written atomically after every epoch that resume bit-identically (same seed;
any thread count). When the thread count is automatic (no ``OMP_NUM_THREADS``,
no ``--threads`` / ``set_num_threads(n)``), the steps are timed at a few
thread counts and the fastest is kept, re-checked as training goes (see
:mod:`meprop_cpu._thread_tuner`): a meSimp tagger that shrinks to ~60 units
moves to one thread, where its small products run fastest.

Timings: ``time_forward`` = embedding gather, LSTM forward, output layer and
loss; ``time_backward`` = the backward passes (output layer, BPTT with the
per-step top-k, dX, the embedding row gradients); ``time_update`` = the
optimizer step. Under meProp the rows of dW / dU are formed inside the
update (factored RowGrads, as for the MLP), so that work counts there.
"""
import json
import math
import os
import sys
import time

import numpy as np

from .._config import _use_threads, get_num_threads
from .._thread_tuner import auto_tuner, restore_auto
from .._io import atomic_savez
from ..train import LOG_KEYS
from ..train.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, _from_json, _to_json,
                                read_checkpoint)

__all__ = ["PosTrainer"]

# checkpoint names of the tagger's LSTMs (PosTagger.lstms order)
_LSTM_NAMES = ("lstm", "lstm_b")


class PosTrainer:
    """Train a :class:`~meprop_cpu.tagger.PosTagger`.

    data: ``{"train", "dev"[, "test"][, "wsj"]}`` -> encoded sentences
    (:func:`meprop_cpu.tagger.encode`). epochs: total epochs (also when
    resuming). seed: the shuffle generator (one permutation of the training
    sentences per epoch). log_json, checkpoint: paths (see the module
    docstring). on_epoch: ``f(trainer, record)`` after each epoch. callbacks:
    ``cb(trainer, epoch, step)`` after every optimizer step. batch_size:
    sentences per step (1, the default and the papers' setting: one sentence
    at a time). Larger minibatches run side by side through the LSTM; each
    epoch's permutation is cut into windows of 20 batches, sorted by length
    within a window (so the sentences of a batch have similar lengths and
    little padding), cut into batches, and the batches are shuffled;
    evaluation runs in batches too. fused: at one sentence per step, run
    each step as one C call (:mod:`meprop_cpu.tagging.fused`; the same bits
    as the module path, 1.2-2.8x faster per sentence) when the tagger and
    optimizer qualify; ``step_path`` ("fused" / "modules") says which path
    the last step took, and each epoch record has it."""

    def __init__(self, model, optimizer, data, epochs, seed=0, log_json=None, checkpoint=None,
                 on_epoch=None, callbacks=(), batch_size=1, fused=True):
        if not isinstance(data, dict) or not data.get("train") or not data.get("dev"):
            raise ValueError("PosTrainer: data must be a dict with non-empty 'train' and 'dev' "
                             "lists of encoded sentences")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"PosTrainer: epochs must be an int >= 1, got {epochs!r}")
        n_tags = len(model.vocab.tags)
        for wid, fid, tid in data["train"]:
            if tid.shape[0] == 0 or tid.min() < 0 or tid.max() >= n_tags:
                raise ValueError("PosTrainer: a training sentence is empty or has a tag outside "
                                 "the model's tag set")
        self.model, self.optimizer, self.data = model, optimizer, data
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"PosTrainer: batch_size must be an int >= 1, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.epochs, self.seed = epochs, int(seed)
        self.log_json = None if log_json is None else os.fspath(log_json)
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.on_epoch, self.callbacks = on_epoch, list(callbacks)
        self.n_train = len(data["train"])
        self.n_tokens = int(sum(s[2].shape[0] for s in data["train"]))
        self.steps_per_epoch = -(-self.n_train // self.batch_size)
        self._rng = np.random.default_rng(self.seed)
        self.epoch = self.global_step = 0
        self.best_dev = self.test_at_best_dev = self.wsj_at_best_dev = self.best_epoch = None
        self.history = []
        self._log = None
        self.thread_tuner = None   # a ThreadTuner while the thread count is automatic
        self.fused = bool(fused)
        self._fused_step = None
        self.step_path = None

    # -- protocol ---------------------------------------------------------------------
    def _record(self, event, epoch, loss, dev, times, **extra):
        lstm = self.model.lstm
        rec = {"event": event, "epoch": epoch, "step": self.n_train,
               "global_step": self.global_step, "train_loss": loss, "dev_acc": dev,
               "test_acc": self.test_at_best_dev, "hidden_sizes": self.model.hidden_sizes,
               "threads": get_num_threads(), "k": lstm.k if lstm.sparse else None,
               "mode": lstm.mode if lstm.sparse else "dense", **times}
        rec.update(extra)
        assert all(k in rec for k in LOG_KEYS)
        return rec

    def _write(self, rec):
        if self._log is not None:
            self._log.write(json.dumps(rec) + "\n")
            self._log.flush()

    def fit(self, resume=None):
        """Train up to ``epochs`` epochs; returns the summary record."""
        if resume is not None:
            self.load_checkpoint(resume)
        if self.log_json is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self.log_json)), exist_ok=True)
            fresh = resume is None and self.epoch == 0
            self._log = open(self.log_json, "w" if fresh else "a", encoding="utf-8")
        try:
            for epoch in range(self.epoch + 1, self.epochs + 1):
                rec = self._run_epoch(epoch)
                self.epoch = epoch
                if self.checkpoint is not None:
                    self.save_checkpoint(self.checkpoint)
                if self.on_epoch is not None:
                    self.on_epoch(self, rec)
            s = self.summary()
            self._write(s)
            return s
        finally:
            restore_auto(self.thread_tuner)
            if self._log is not None:
                self._log.close()
                self._log = None

    def _run_epoch(self, epoch):
        model, opt = self.model, self.optimizer
        train = self.data["train"]
        perm = self._rng.permutation(self.n_train)
        steps = perm if self.batch_size == 1 else self._batches(perm)
        pc = time.perf_counter
        t_f = t_b = t_u = 0.0
        loss_sum = 0.0
        # automatic thread count: timed per step (a meSimp tagger that shrinks
        # from 500 to ~60 units runs fastest on fewer threads once narrow)
        tuner = self.thread_tuner = auto_tuner(self.thread_tuner)
        fs = self._fused()
        t0 = pc()
        for step, s in enumerate(steps, 1):
            if tuner is not None:
                _use_threads(tuner.threads())
            a = pc()
            out = fs.step(*train[s]) if fs is not None else None
            if out is not None:
                loss, dt_f, dt_b, dt_u = out
                self.step_path = "fused"
                if not math.isfinite(loss):
                    self._diverged(epoch, step, loss)
            else:
                if fs is not None:   # a callback made the model unfit for the fused step
                    fs = self._fused_step = None
                self.step_path = "modules"
                if self.batch_size == 1:
                    loss = model.forward_loss(*train[s])
                else:
                    loss = model.forward_loss_batch([train[i] for i in s])
                b = pc()
                if not math.isfinite(loss):
                    self._diverged(epoch, step, loss)
                model.backward()
                c = pc()
                opt.step()
                opt.zero_grad()
                dt_f, dt_b, dt_u = b - a, c - b, pc() - c
            if tuner is not None:
                tuner.record(pc() - a)
            t_f += dt_f
            t_b += dt_b
            t_u += dt_u
            loss_sum += loss * (1 if self.batch_size == 1 else len(s))
            self.global_step += 1
            for cb in self.callbacks:
                cb(self, epoch, step)
        t_epoch = pc() - t0
        for i, p in enumerate(model.parameters()):
            if not np.isfinite(p.data).all():
                raise FloatingPointError(f"training diverged in epoch {epoch}: parameter "
                                         f"{p.name} holds NaN/Inf")
        te = pc()
        eb = self.batch_size
        dev = model.accuracy(self.data["dev"], eb)
        extra = {}
        if self.best_dev is None or dev > self.best_dev:
            self.best_dev, self.best_epoch = dev, epoch
            if self.data.get("test"):
                self.test_at_best_dev = model.accuracy(self.data["test"], eb)
            if self.data.get("wsj"):
                self.wsj_at_best_dev = model.accuracy(self.data["wsj"], eb)
        times = {"time_epoch": t_epoch, "time_forward": t_f, "time_backward": t_b,
                 "time_update": t_u}
        if tuner is not None:
            extra["thread_tuner"] = tuner.state()
        extra["step_path"] = self.step_path
        rec = self._record("epoch", epoch, loss_sum / self.n_train, dev, times,
                           time_eval=pc() - te, tokens_per_s=self.n_tokens / t_epoch,
                           wsj_acc=self.wsj_at_best_dev, **extra)
        self.history.append(rec)
        self._write(rec)
        return rec

    def _diverged(self, epoch, step, loss):
        raise FloatingPointError(f"training diverged at epoch {epoch}, step {step}: the loss "
                                 f"is {loss}. Try a smaller learning rate.")

    def _fused(self):
        """The fused step for this epoch, or None (minibatches, fused=False, or a
        tagger / optimizer it does not take)."""
        if not self.fused or self.batch_size != 1:
            return None
        from .fused import TaggerFusedStep, unsupported
        fs = self._fused_step
        if fs is not None and fs.model is self.model and fs.optimizer is self.optimizer:
            return fs
        if unsupported(self.model, self.optimizer) is not None:
            return None
        longest = max(s[0].shape[0] for s in self.data["train"])
        fs = self._fused_step = TaggerFusedStep(self.model, self.optimizer, longest)
        return fs

    def _batches(self, perm):
        """The minibatches of one epoch from its permutation (see the class
        docstring); draws the batch order from the trainer's generator."""
        B, train = self.batch_size, self.data["train"]
        out = []
        for w in range(0, len(perm), 20 * B):
            win = perm[w:w + 20 * B]
            win = win[np.argsort([train[i][0].shape[0] for i in win], kind="stable")]
            out += [win[i:i + B] for i in range(0, len(win), B)]
        return [out[i] for i in self._rng.permutation(len(out))]

    def summary(self):
        ends = [r for r in self.history if r["event"] == "epoch"]
        keys = ("time_epoch", "time_forward", "time_backward", "time_update")
        means = {k: (float(np.mean([r[k] for r in ends])) if ends else None) for k in keys}
        out = self._record("summary", self.epoch, ends[-1]["train_loss"] if ends else None,
                           self.best_dev, means)
        out.update({"best_dev": self.best_dev, "test_at_best_dev": self.test_at_best_dev,
                    "wsj_at_best_dev": self.wsj_at_best_dev, "best_epoch": self.best_epoch,
                    "epochs_completed": self.epoch,
                    "total_time_train": float(sum(r["time_epoch"] for r in ends)),
                    "mean_time_epoch": means["time_epoch"],
                    "mean_time_forward": means["time_forward"],
                    "mean_time_backward": means["time_backward"],
                    "mean_time_update": means["time_update"],
                    "batch_size": self.batch_size, "steps_per_epoch": self.steps_per_epoch,
                    "train_tokens": self.n_tokens})
        return out

    # -- checkpoints ------------------------------------------------------------------
    def save_checkpoint(self, path):
        """Everything needed to resume bit-identically, written atomically."""
        osd = self.optimizer.state_dict()
        lstms = self.model.lstms
        meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "saved_at": time.time(),
                "model": {"class": "PosTagger", "config": _to_json(self.model.config),
                          "sizes": None,
                          "params": [(n, list(p.data.shape))
                                     for n, p in self.model.named_parameters()],
                          "vocab_sizes": [len(self.model.vocab.words),
                                          self.model.vocab.n_feat_rows,
                                          len(self.model.vocab.tags)]},
                "optimizer": {"kind": osd["kind"], "hyper": _to_json(osd["hyper"]),
                              "sparse": bool(self.optimizer.sparse), "steps": osd["steps"],
                              "param_steps": [None if st is None else int(st["step"])
                                              for st in osd["params"]]},
                "trainer": {"epoch": self.epoch, "global_step": self.global_step,
                            "epochs": self.epochs, "seed": self.seed, "n_train": self.n_train,
                            "batch_size": self.batch_size,
                            "best_dev": self.best_dev, "test_at_best_dev": self.test_at_best_dev,
                            "wsj_at_best_dev": self.wsj_at_best_dev,
                            "best_epoch": self.best_epoch, "history": self.history},
                "rng": {"shuffle": _to_json(self._rng.bit_generator.state),
                        **{f"{n}_seen": int(x.seen) for n, x in zip(_LSTM_NAMES, lstms)}}}
        arrays = {"param:" + n: a for n, a in self.model.state_dict().items()}
        for i, st in enumerate(osd["params"]):
            if st is not None:
                for j, a in enumerate(st["arrays"]):
                    arrays[f"opt:{i}:{j}"] = a
        for n, x in zip(_LSTM_NAMES, lstms):
            arrays["hits:" + n] = x.hits
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        atomic_savez(path, arrays)
        return path

    def load_checkpoint(self, path):
        """Restore the state saved by save_checkpoint (validated before anything changes)."""
        path = os.fspath(path)
        meta, arrays = read_checkpoint(path)
        mm, om, tm = meta["model"], meta["optimizer"], meta["trainer"]
        if mm.get("class") != "PosTagger":
            raise ValueError(f"checkpoint {path} holds a {mm.get('class')}, not a PosTagger")
        v = self.model.vocab
        if mm.get("vocab_sizes") != [len(v.words), v.n_feat_rows, len(v.tags)]:
            raise ValueError(f"checkpoint {path} was trained with vocabulary sizes "
                             f"{mm.get('vocab_sizes')}, this data gives "
                             f"{[len(v.words), v.n_feat_rows, len(v.tags)]} (another training "
                             "set or --max-train?)")
        if tm.get("n_train") != self.n_train:
            raise ValueError(f"checkpoint {path} was trained on {tm.get('n_train')} sentences, "
                             f"this run has {self.n_train}")
        if tm.get("batch_size", 1) != self.batch_size:
            raise ValueError(f"checkpoint {path} was trained with batch size "
                             f"{tm.get('batch_size', 1)}, this run has {self.batch_size} "
                             "(resume with the same --batch-size)")
        if om.get("kind") != type(self.optimizer).__name__:
            raise ValueError(f"checkpoint {path} holds {om.get('kind')} state, the optimizer "
                             f"is {type(self.optimizer).__name__}")
        saved = {n[6:]: a for n, a in arrays.items() if n.startswith("param:")}
        params_sd = []
        for i, (p, st) in enumerate(zip(self.optimizer.params, om["param_steps"])):
            if st is None:
                params_sd.append(None)
                continue
            arrs = [arrays.get(f"opt:{i}:{j}") for j in range(self.optimizer.n_state)]
            if any(a is None or a.shape != p.data.shape for a in arrs):
                raise ValueError(f"checkpoint {path}: optimizer state {i} is missing or does not "
                                 f"match its parameter")
            params_sd.append({"step": st, "arrays": arrs})
        self.model.load_state_dict(saved)
        hyper = {k: (tuple(x) if isinstance(x, list) else x)
                 for k, x in _from_json(om.get("hyper", {})).items()}
        self.optimizer.load_state_dict({"kind": om["kind"], "hyper": hyper,
                                        "steps": om.get("steps", 0), "params": params_sd})
        for n, x in zip(_LSTM_NAMES, self.model.lstms):
            if "hits:" + n in arrays and arrays["hits:" + n].shape == x.hits.shape:
                x.hits = np.array(arrays["hits:" + n], dtype=np.int64)
            x.seen = int(meta["rng"].get(n + "_seen", 0))
        self._rng.bit_generator.state = _from_json(meta["rng"]["shuffle"])
        self.epoch, self.global_step = int(tm["epoch"]), int(tm["global_step"])
        self.best_dev, self.test_at_best_dev = tm.get("best_dev"), tm.get("test_at_best_dev")
        self.wsj_at_best_dev, self.best_epoch = tm.get("wsj_at_best_dev"), tm.get("best_epoch")
        self.history = list(tm.get("history", []))
        return meta


def run_pos_train(args, parser, CliError):
    """`meprop-cpu train --task pos`: the CLI front of PosTagger + PosTrainer."""
    from .. import cli
    from ..data import pos as pos_data
    from ..data import DataError
    from .model import PosTagger, Vocab, encode
    from ..train import build_optimizer

    dataset = args.dataset or "conll2003"
    if dataset != "conll2003":
        raise CliError(f"--dataset: --task pos trains on conll2003, got {dataset!r}")
    from ..nn import DEFAULT_LSTM_MODE, LSTM_MODES
    explicit = any(a == "--mode" or a.startswith("--mode=") for a in getattr(args, "argv", []))
    if explicit and args.mode not in LSTM_MODES:
        raise CliError(f"--mode: the POS tagger takes {' or '.join(LSTM_MODES)}, got "
                       f"{args.mode!r}")
    mode = args.mode if explicit else DEFAULT_LSTM_MODE
    if args.resume is not None and not os.path.isfile(args.resume):
        raise CliError(f"--resume: checkpoint file {args.resume} does not exist")
    dense = args.dense or mode == "dense"
    if not dense and args.k >= args.hidden:
        print(f"note: --k {args.k} >= --hidden {args.hidden}: dense backward", file=sys.stderr)
    with cli.threads_option(args.threads):
        try:
            raw = pos_data.conll2003(args.data_dir)
            try:
                raw["wsj"] = pos_data.wsj_sample()
            except DataError as e:
                print(f"note: the WSJ sample is not available ({str(e).splitlines()[0]}); "
                      "training without the out-of-domain test", file=sys.stderr)
        except DataError as e:
            print(f"{parser.prog}: data error: {e}", file=sys.stderr)
            return 1
        if args.max_train is not None:
            raw["train"] = raw["train"][:args.max_train]
        vocab = Vocab.build(raw["train"])
        data = {name: encode(sents, vocab) for name, sents in raw.items()}
        model = PosTagger(vocab, hidden=args.hidden, k=None if dense else args.k,
                          mode="dense" if dense else mode, seed=args.seed,
                          bidirectional=getattr(args, "bidirectional", False))
        if args.resume is not None:   # a meSimp run resumes at its shrunk width
            shapes = dict(read_checkpoint(args.resume)[0]["model"].get("params", []))
            from .simplify import compact_lstm
            for d, n in enumerate(_LSTM_NAMES[:len(model.lstms)]):
                shape = shapes.get(n + ".U")
                if shape and shape[1] < args.hidden:
                    compact_lstm(model, np.arange(shape[1]), direction=d)
            hs = model.hidden_sizes
            if hs != [args.hidden] * len(hs):
                print(f"resuming a simplified tagger: hidden {hs[0] if len(hs) == 1 else hs}",
                      flush=True)
        opt = build_optimizer(args.optimizer, model.parameters(), lr=args.lr,
                              sparse=not args.dense_update, clip=args.clip)
        ckpt = args.checkpoint if args.checkpoint is not None else args.resume
        callbacks = []
        if args.mesimp:
            from ..simplify import CycleSchedule
            from .simplify import TAGGER_PRUNE_RATE, TAGGER_RESET, TaggerSimplifier
            sch = CycleSchedule(args.cycle_epochs or 1, args.steps_per_epoch or 8,
                                reset=args.reset or TAGGER_RESET)
            rate = TAGGER_PRUNE_RATE if args.prune_rate is None else args.prune_rate
            callbacks.append(TaggerSimplifier(model, opt, prune_rate=rate,
                                              min_width=args.min_width or 1, schedule=sch,
                                              verbose=True))
            print(f"meSimp: prune rate {callbacks[0].prune_rate:g}, {sch!r}", flush=True)

        def on_epoch(trainer, rec):
            print(f"epoch {rec['epoch']:3d}/{trainer.epochs}  loss {rec['train_loss']:.4f}  "
                  f"dev {rec['dev_acc']:.2f}  test@best-dev {rec['test_acc']:.2f}  "
                  f"time {rec['time_epoch']:.1f}s (fwd {rec['time_forward']:.1f} bwd "
                  f"{rec['time_backward']:.1f} upd {rec['time_update']:.1f})  "
                  f"{rec['tokens_per_s']:,.0f} tokens/s  hidden {rec['hidden_sizes']}"
                  f"{', fused step' if rec.get('step_path') == 'fused' else ''}", flush=True)

        trainer = PosTrainer(model, opt, data, epochs=args.epochs, seed=args.seed,
                             log_json=args.log_json, checkpoint=ckpt, on_epoch=on_epoch,
                             callbacks=callbacks, batch_size=args.batch_size or 1,
                             fused=not getattr(args, "no_fused", False))
        print(f"train pos conll2003: {len(data['train'])} sentences ({trainer.n_tokens} tokens) "
              f"/ {len(data['dev'])} dev / {len(data['test'])} test"
              f"{' / %d wsj' % len(data['wsj']) if 'wsj' in data else ''}; vocab "
              f"{len(vocab.words)} words, {vocab.n_feat_rows} feature values, "
              f"{len(vocab.tags)} tags; {'bidirectional ' if model.bidirectional else ''}"
              f"LSTM {model.n_in}-{args.hidden}, "
              f"{'dense backprop' if dense else f'k {args.k} per gate'}, {args.optimizer} "
              f"lr {opt.lr:g}, {trainer.batch_size} sentence(s) per step, threads "
              f"{get_num_threads()}", flush=True)
        rc, s = cli.fit_from_cli(args, parser, trainer)
        if rc:
            return rc
        wsj = s["wsj_at_best_dev"]
        print(f"best dev {s['best_dev']:.2f} (epoch {s['best_epoch']})  test at best dev "
              f"{s['test_at_best_dev']:.2f}"
              f"{'' if wsj is None else f'  wsj sample at best dev {wsj:.2f}'}")
        print(f"mean time per epoch {s['mean_time_epoch']:.2f}s: forward "
              f"{s['mean_time_forward']:.2f}s, backward {s['mean_time_backward']:.2f}s, update "
              f"{s['mean_time_update']:.2f}s")
        if args.save_model is not None:
            model.save(args.save_model)
            print(f"model saved to {args.save_model}")
        return 0
