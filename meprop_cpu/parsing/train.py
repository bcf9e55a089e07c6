"""Training the parser with the library's Trainer (same loop, logs,
checkpoints, Ctrl-C handling and meSimp callbacks as the MLP).

The training set is the static oracle's transition examples: int32 feature
rows (N, 48) and transition labels. Dev and test are gold sentences: an
evaluation parses them greedily (the pre-computed C parser) and scores the
trees. ``dev_acc`` / ``test_acc`` in the log are UAS in percent
(punctuation excluded, as Chen & Manning report it); the records also carry
``dev_las`` / ``test_las`` and, for the evaluation just made, every score
(``dev_scores``: UAS / LAS with and without punctuation). ``test_acc`` and
``test_las`` are the test scores at the best dev UAS (the papers' protocol).
``time_backward_linear`` is the part of ``time_backward`` spent in the
Linear layers (the papers' "backprop time"; the rest is the embeddings'
gradient bookkeeping).
"""
import numpy as np

from ..train import Trainer
from .conllu import Sentence
from .model import Parser
from .transition import N_FEATURES, make_examples, n_transitions

__all__ = ["ParserTrainer", "DEFAULT_BATCH_SIZE"]

# Chen & Manning used 10,000 examples per step on the 40k-sentence PTB (~1.9M
# examples, ~190 steps an epoch). The Turkish training set is ~3,900 sentences
# (~125k examples): 1,000 gives a comparable ~125 updates per epoch, and
# large enough batches to keep the dense products efficient.
DEFAULT_BATCH_SIZE = 1000


class ParserTrainer(Trainer):
    """Train ``parser`` (a :class:`~meprop_cpu.parsing.model.Parser`) on a
    treebank ``{"train": [Sentence], "dev": [...], "test": [...] or None}``.

    Other arguments as :class:`~meprop_cpu.train.Trainer`. ``examples``: the
    oracle's (X, y, stats) if already computed. ``oracle_stats`` says how many
    training sentences were skipped as non-projective."""

    def __init__(self, parser, optimizer, treebank, batch_size=DEFAULT_BATCH_SIZE, epochs=20,
                 examples=None, **kw):
        if not isinstance(parser, Parser):
            raise TypeError(f"ParserTrainer: parser must be a Parser, got "
                            f"{type(parser).__name__}")
        if not isinstance(treebank, dict) or "train" not in treebank or "dev" not in treebank:
            raise TypeError("ParserTrainer: treebank must be a dict with 'train' and 'dev' "
                            "sentence lists (and optionally 'test')")
        self.parser = parser
        if examples is None:
            examples = make_examples(treebank["train"], parser.vocab)
        X, y, self.oracle_stats = examples
        self.last_scores = {}
        self.dev_scores_at_best = None
        self.test_scores_at_best = None
        self._tbl_start = 0.0
        data = {"train": (X, y), "dev": treebank["dev"], "test": treebank.get("test")}
        super().__init__(parser.net, optimizer, data, batch_size, epochs, **kw)

    def _check_data(self, data):
        X, y = data["train"]
        if not isinstance(X, np.ndarray) or X.ndim != 2 or X.shape[1] != N_FEATURES \
                or X.dtype != np.int32:
            raise TypeError(f"ParserTrainer: training features must be int32 (N, {N_FEATURES}), "
                            f"got {getattr(X, 'dtype', type(X).__name__)} "
                            f"{getattr(X, 'shape', '')}")
        if X.shape[0] == 0:
            raise ValueError("ParserTrainer: no training examples (every training sentence "
                             "was skipped as non-projective?)")
        y = np.ascontiguousarray(y, dtype=np.int64)
        T = n_transitions(self.parser.vocab.n_labels)
        if y.shape != (X.shape[0],) or y.min() < 0 or y.max() >= T:
            raise ValueError(f"ParserTrainer: transition labels must be (N,) in [0, {T})")
        out = {"train": (np.ascontiguousarray(X), y)}
        for split in ("dev", "test"):
            s = data.get(split)
            if s is None and split == "test":
                out[split] = None
                continue
            if not isinstance(s, (list, tuple)) or not s \
                    or not all(isinstance(x, Sentence) for x in s):
                raise TypeError(f"ParserTrainer: treebank[{split!r}] must be a non-empty list "
                                "of Sentence")
            out[split] = list(s)
        return out

    def evaluate(self, split):
        """UAS (percent, punctuation excluded) on data[split]; every score of it
        goes to ``last_scores[split]``."""
        sc = self.parser.evaluate(self.data[split])
        self.last_scores[split] = sc
        return sc["uas"]

    def _evaluate_protocol(self, epoch, step):
        before = self.best_dev
        dev = super()._evaluate_protocol(epoch, step)
        if before is None or dev > before:
            self.dev_scores_at_best = self.last_scores["dev"]
            self.test_scores_at_best = self.last_scores.get("test") \
                if self.data["test"] is not None else None
        return dev

    def _run_epoch(self, epoch, progress):
        self._tbl_start = self.model.time_backward_linear
        return super()._run_epoch(epoch, progress)

    def _record(self, event, epoch, step, train_loss, dev_acc, times, **extra):
        rec = super()._record(event, epoch, step, train_loss, dev_acc, times, **extra)
        ts = self.test_scores_at_best
        rec["test_las"] = ts["las"] if ts else None
        if event in ("eval", "epoch"):
            rec["dev_las"] = self.last_scores["dev"]["las"]
            rec["dev_scores"] = self.last_scores["dev"]
            rec["test_scores"] = ts
            rec["time_backward_linear"] = self.model.time_backward_linear - self._tbl_start
        else:
            rec["dev_las"] = None
        return rec

    def summary(self):
        out = super().summary()
        ends = [r for r in self.history if r["event"] == "epoch"]
        out["mean_time_backward_linear"] = (
            float(np.mean([r.get("time_backward_linear") or 0.0 for r in ends]))
            if ends else None)
        ds, ts = self.dev_scores_at_best, self.test_scores_at_best
        out["dev_las_at_best_dev"] = ds["las"] if ds else None
        out["test_las_at_best_dev"] = ts["las"] if ts else None
        out["dev_scores_at_best_dev"] = ds
        out["test_scores_at_best_dev"] = ts
        out["oracle"] = self.oracle_stats
        return out

    def load_checkpoint(self, path):
        meta = super().load_checkpoint(path)
        best = [r for r in self.history if r.get("event") in ("eval", "epoch")
                and r.get("dev_scores") is not None and r.get("dev_acc") == self.best_dev]
        if best:
            self.dev_scores_at_best = best[0]["dev_scores"]
            self.test_scores_at_best = best[0].get("test_scores")
        return meta
