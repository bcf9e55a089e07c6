"""An LSTM part-of-speech tagger trained with meProp (the papers' POS setting).

Each token's input (190 values) is the concatenation of

* a word embedding (50): the word lower-cased with every digit mapped to
  ``0``; words seen fewer than ``min_count`` (2) times in the training set
  share the unknown-word entry, so that entry is trained;
* 7 discrete features, each embedded in 20 dimensions (one shared table with
  a block of rows per feature): the lower-cased word's prefixes of length 1,
  2, 3 and suffixes of length 1, 2, 3 (the whole word when it is shorter),
  and its shape: capitalisation (all lower / Initial capital / ALL CAPS /
  mixed / no letters) x contains a digit x contains a hyphen (20 classes).
  Values not seen in training map to their feature's unknown entry.

followed by one LSTM layer (:class:`~meprop_cpu.nn.LSTM`, h = 500 by
default, meProp per step and gate) and a dense softmax output layer over the
tags (the output layer's backward is dense, as in the paper). The loss is the
mean cross-entropy over the sentence's tokens; one sentence per step.

Embedding tables are updated row-sparsely: a step's gradient holds only the
rows its tokens used (a RowGrad), so a row-sparse optimizer (``sparse=True``,
PyTorch's ``SparseAdam`` semantics) reads and writes only those rows.

:class:`PosTrainer` trains it with the papers' protocol (dev accuracy after
every epoch, test accuracy at the best dev; the gold WSJ sample as an extra,
out-of-domain test), JSON-lines logs with the MNIST trainer's fields,
atomic checkpoints that resume bit-identically, and per-phase timings.
"""
import json
import os
from collections import Counter

import numpy as np

from .. import kernels
from .._io import atomic_savez, read_npz
from ..nn import DEFAULT_LSTM_MODE, LSTM, Linear, Parameter, SoftmaxCrossEntropy

__all__ = ["Vocab", "PosTagger", "PosTrainer", "encode", "N_FEATURES", "WORD_DIM",
           "FEATURE_DIM", "load_tagger"]

N_FEATURES, WORD_DIM, FEATURE_DIM = 7, 50, 20
UNK = "<unk>"


def _norm_word(w):
    return "".join("0" if c.isdigit() else c for c in w.lower())


def _shape(w):
    letters = [c for c in w if c.isalpha()]
    if not letters:
        cap = 0
    elif all(c.islower() for c in letters):
        cap = 1
    elif all(c.isupper() for c in letters):
        cap = 3 if len(letters) > 1 else 2
    elif letters[0].isupper() and all(c.islower() for c in letters[1:]):
        cap = 2
    else:
        cap = 4
    return f"s{cap}{int(any(c.isdigit() for c in w))}{int('-' in w)}"


def token_features(w):
    """The 7 discrete feature values of token ``w`` (strings)."""
    lw = w.lower()
    return (["p1" + lw[:1], "p2" + lw[:2], "p3" + lw[:3],
             "s1" + lw[-1:], "s2" + lw[-2:], "s3" + lw[-3:], _shape(w)])


class Vocab:
    """Word, feature-value and tag vocabularies built from training sentences.

    words[0] and the first entry of every feature block are the unknown
    entries; ``feat_offsets[j]`` is where feature j's block starts in the
    shared feature table."""

    def __init__(self, words, feats, tags):
        self.words = list(words)
        self.feats = [list(f) for f in feats]
        self.tags = list(tags)
        self.word_index = {w: i for i, w in enumerate(self.words)}
        self.feat_index = [{v: i for i, v in enumerate(f)} for f in self.feats]
        self.tag_index = {t: i for i, t in enumerate(self.tags)}
        self.feat_offsets = np.cumsum([0] + [len(f) for f in self.feats[:-1]]).astype(np.int32)

    @classmethod
    def build(cls, sentences, min_count=2):
        wc = Counter(_norm_word(w) for ws, _ in sentences for w in ws)
        words = [UNK] + sorted(w for w, c in wc.items() if c >= min_count)
        fv = [set() for _ in range(N_FEATURES)]
        tags = set()
        for ws, ts in sentences:
            tags.update(ts)
            for w in ws:
                for j, v in enumerate(token_features(w)):
                    fv[j].add(v)
        return cls(words, [[UNK] + sorted(s) for s in fv], sorted(tags))

    @property
    def n_feat_rows(self):
        return int(sum(len(f) for f in self.feats))

    def to_json(self):
        return {"words": self.words, "feats": self.feats, "tags": self.tags}

    @classmethod
    def from_json(cls, d):
        return cls(d["words"], d["feats"], d["tags"])


def encode(sentences, vocab):
    """Sentences -> list of (word ids int32 (T,), feature rows int32 (T, 7) into the
    shared feature table, tag ids int64 (T,): -1 for a tag the vocabulary lacks,
    which then always counts as an error)."""
    out = []
    for ws, ts in sentences:
        wid = np.array([vocab.word_index.get(_norm_word(w), 0) for w in ws], dtype=np.int32)
        fid = np.array([[vocab.feat_index[j].get(v, 0) for j, v in enumerate(token_features(w))]
                        for w in ws], dtype=np.int32) + vocab.feat_offsets
        tid = np.array([vocab.tag_index.get(t, -1) for t in ts], dtype=np.int64)
        out.append((wid, np.ascontiguousarray(fid, dtype=np.int32), tid))
    return out


class PosTagger:
    """Embeddings (word 50 + 7 features x 20) -> LSTM(hidden, k) -> dense softmax.

    vocab: a :class:`Vocab`. k: per-gate top-k of the LSTM's backward (None:
    dense). seed: initial weights. bidirectional: a second LSTM of the same
    width and k reads the sentence right to left (``lstm_b``); the output
    layer sees both hidden states side by side (forward first), 2 * hidden
    wide. The forward direction's initial weights are those of the
    unidirectional tagger with the same seed."""

    def __init__(self, vocab, hidden=500, k=None, mode=DEFAULT_LSTM_MODE, seed=0,
                 bidirectional=False):
        if not isinstance(vocab, Vocab):
            raise TypeError(f"PosTagger: vocab must be a Vocab, got {type(vocab).__name__}")
        if seed is not None:
            seed = kernels._check_int(seed, "seed", 0, 2**63 - 1)
        if not isinstance(bidirectional, (bool, np.bool_)):
            raise TypeError(f"PosTagger: bidirectional must be True or False, got "
                            f"{bidirectional!r}")
        self.vocab = vocab
        ss = np.random.SeedSequence(seed)
        s = [int(x.generate_state(1, np.uint64)[0] >> 1) for x in ss.spawn(4)]
        rng = np.random.default_rng(s[0])
        self.Ew = Parameter(rng.uniform(-0.1, 0.1, (len(vocab.words), WORD_DIM)), "Ew")
        self.Ef = Parameter(rng.uniform(-0.1, 0.1, (vocab.n_feat_rows, FEATURE_DIM)), "Ef")
        n_in = WORD_DIM + N_FEATURES * FEATURE_DIM
        self.lstm = LSTM(n_in, hidden, k=k, mode=mode, seed=s[1])
        self.lstm_b = LSTM(n_in, hidden, k=k, mode=mode, seed=s[3]) if bidirectional else None
        n_out_in = hidden * (2 if bidirectional else 1)
        self.out = Linear(n_out_in, len(vocab.tags), k=None, mode="dense", seed=s[2])
        self.loss_fn = SoftmaxCrossEntropy()
        self.config = {"hidden": int(hidden), "k": k, "mode": mode, "seed": seed,
                       "bidirectional": bool(bidirectional)}
        self._X = {}
        self._ws = kernels.Workspace()   # the embeddings' gradient buffers
        self._batch = None

    @property
    def n_in(self):
        return self.lstm.n_in

    @property
    def bidirectional(self):
        return self.lstm_b is not None

    @property
    def lstms(self):
        """The LSTM layers: [forward] or [forward, backward direction]."""
        return [self.lstm] if self.lstm_b is None else [self.lstm, self.lstm_b]

    @property
    def hidden_sizes(self):
        return [lstm.hidden for lstm in self.lstms]

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_parameters(self):
        out = [("Ew", self.Ew), ("Ef", self.Ef)]
        for prefix, lstm in zip(("lstm.", "lstm_b."), self.lstms):
            out += [(prefix + p.name, p) for p in lstm.parameters()]
        return out + [("out." + p.name, p) for p in self.out.parameters()]

    def state_dict(self):
        return {n: p.data.copy() for n, p in self.named_parameters()}

    def load_state_dict(self, state):
        named = dict(self.named_parameters())
        if set(named) != set(state):
            raise ValueError(f"PosTagger.load_state_dict: keys {sorted(state)} do not match "
                             f"{sorted(named)}")
        for n, p in named.items():
            if np.shape(state[n]) != p.data.shape:
                raise ValueError(f"PosTagger.load_state_dict: {n} has shape "
                                 f"{np.shape(state[n])}, the model {p.data.shape}")
        for n, p in named.items():
            p.data = np.ascontiguousarray(state[n], dtype=np.float32).copy()
            p.grad = None

    def _inputs(self, wid, fid, X=None):
        """The LSTM input rows of word ids wid (n,) and feature rows fid (n, 7),
        into X (n, n_in); X None: a buffer kept per n (one sentence's length)."""
        n = wid.shape[0]
        if X is None:
            X = self._X.get(n)
            if X is None:
                X = self._X[n] = np.empty((n, self.n_in), dtype=np.float32)
        X[:, :WORD_DIM] = self.Ew.data[wid]
        X[:, WORD_DIM:] = self.Ef.data[fid].reshape(n, N_FEATURES * FEATURE_DIM)
        return X

    def _reversal(self, lengths):
        """The rows the right-to-left LSTM reads, as an index: one sentence
        reversed (lengths None) or every sentence of a batch within its length."""
        return slice(None, None, -1) if lengths is None else self._reverse_rows(lengths)

    def _hidden(self, X, lengths=None):
        """The LSTM states (rows of X, hidden or 2 * hidden) of the input rows X:
        one sentence, or a time-major batch with ``lengths``."""
        H = self.lstm.forward(X, lengths)
        if self.lstm_b is None:
            return H
        rev = self._reversal(lengths)
        Hb = self.lstm_b.forward(np.ascontiguousarray(X[rev]), lengths)
        return np.concatenate([H, Hb[rev]], axis=1)

    # -- minibatches of sentences -------------------------------------------------
    @staticmethod
    def _layout(sents):
        """Time-major padded layout of B encoded sentences: lengths (B,), word
        ids (T*B,), feature rows (T*B, 7), tag ids (T*B,) and the real rows
        (ascending indices of row t*B + b with t < length b)."""
        lengths = np.array([s[0].shape[0] for s in sents], dtype=np.int64)
        if lengths.size == 0 or lengths.min() < 1:
            raise ValueError("PosTagger: a minibatch needs sentences of at least one token")
        B, T = lengths.size, int(lengths.max())
        wid = np.zeros((T, B), dtype=np.int32)
        fid = np.zeros((T, B, N_FEATURES), dtype=np.int32)
        tid = np.zeros((T, B), dtype=np.int64)
        for b, (w, f, t) in enumerate(sents):
            L = w.shape[0]
            wid[:L, b], fid[:L, b], tid[:L, b] = w, f, t
        real = np.flatnonzero((np.arange(T)[:, None] < lengths[None, :]).ravel())
        return lengths, wid.ravel(), fid.reshape(T * B, N_FEATURES), tid.ravel(), real

    @staticmethod
    def _reverse_rows(lengths):
        """The row permutation (an involution) that reverses every sentence of a
        time-major padded batch within its own length; padded rows stay."""
        B, T = lengths.size, int(lengths.max())
        t = np.arange(T)[:, None]
        src = np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
        return (src * B + np.arange(B)[None, :]).ravel()

    def _batch_inputs(self, wid, fid):
        # a fresh array: padded batches come in many sizes, not worth a cache each
        return self._inputs(wid, fid, np.empty((wid.shape[0], self.n_in), dtype=np.float32))

    def logits_batch(self, sents):
        """Tag scores of B encoded sentences run side by side: a list of (T_b,
        n_tags) arrays (the same values as :meth:`logits` up to float rounding)."""
        lengths, wid, fid, _, real = self._layout(sents)
        H = self._hidden(self._batch_inputs(wid, fid), lengths)
        self.out.training = False
        try:
            L = self.out.forward(H[real])
        finally:
            self.out.training = True
        # real rows are time major: sentence b's tokens are every B-th row
        B = lengths.size
        order = np.argsort(real % B, kind="stable")
        starts = np.concatenate([[0], np.cumsum(lengths)])
        Ls = L[order]
        return [Ls[starts[b]:starts[b + 1]] for b in range(B)]

    def forward_loss_batch(self, sents):
        """Mean cross-entropy over every token of the B encoded sentences
        ``sents`` ((wid, fid, tid) each), run side by side through the LSTM;
        :meth:`backward` then sets the gradients of the batch."""
        lengths, wid, fid, tid, real = self._layout(sents)
        H = self._hidden(self._batch_inputs(wid, fid), lengths)
        logits = self.out.forward(H[real])
        self._ids = (wid[real], fid[real])
        self._batch = (lengths, real, H.shape)
        return self.loss_fn.forward(logits, tid[real])

    def logits(self, wid, fid):
        """Tag scores (T, n_tags) of one encoded sentence (no state kept for backward)."""
        H = self._hidden(self._inputs(wid, fid))
        self.out.training = False
        try:
            return self.out.forward(H)
        finally:
            self.out.training = True

    def predict(self, wid, fid):
        return self.logits(wid, fid).argmax(axis=1)

    def accuracy(self, encoded, batch_size=1):
        """Token accuracy (percent) over encoded sentences; batch_size > 1 runs
        that many sentences (of similar lengths) side by side."""
        batch_size = kernels._check_int(batch_size, "batch_size", 1, 2**31 - 1)
        right = total = 0
        if batch_size == 1:
            for wid, fid, tid in encoded:
                right += int(np.count_nonzero(self.predict(wid, fid) == tid))
                total += tid.shape[0]
        else:
            order = np.argsort([s[0].shape[0] for s in encoded], kind="stable")
            for i in range(0, len(order), batch_size):
                sents = [encoded[j] for j in order[i:i + batch_size]]
                for s, L in zip(sents, self.logits_batch(sents)):
                    right += int(np.count_nonzero(L.argmax(axis=1) == s[2]))
                    total += s[2].shape[0]
        return 100.0 * right / max(total, 1)

    # -- training: forward + loss, backward (sets every parameter's grad) -----------
    def forward_loss(self, wid, fid, tid):
        X = self._inputs(wid, fid)
        H = self._hidden(X)
        logits = self.out.forward(H)
        self._ids = (wid, fid)
        self._batch = None
        return self.loss_fn.forward(logits, tid)

    def backward(self):
        """The gradients of the last forward_loss / forward_loss_batch."""
        dH = self.out.backward(self.loss_fn.backward())
        lengths = None
        if self._batch is not None:       # a minibatch: the padded rows get zeros
            lengths, real, shape = self._batch
            dH, dH_real = np.zeros(shape, dtype=np.float32), dH
            dH[real] = dH_real
        if self.lstm_b is None:
            dX = self.lstm.backward(dH)
        else:
            h, rev = self.lstm.hidden, self._reversal(lengths)
            dX = self.lstm.backward(np.ascontiguousarray(dH[:, :h]))
            dX = dX + self.lstm_b.backward(np.ascontiguousarray(dH[rev, h:]))[rev]
        if self._batch is not None:
            dX = dX[real]
        wid, fid = self._ids
        T, ws = wid.shape[0], self._ws
        dw = np.ascontiguousarray(dX[:, :WORD_DIM])
        df = np.ascontiguousarray(dX[:, WORD_DIM:]).reshape(T * N_FEATURES, FEATURE_DIM)
        wi = np.ascontiguousarray(wid, dtype=np.int32)
        fi = np.ascontiguousarray(fid, dtype=np.int32).reshape(-1)
        self.Ew.grad = kernels.embedding_grad(wi, dw, self.Ew.data.shape[0], ws, "w")
        self.Ef.grad = kernels.embedding_grad(fi, df, self.Ef.data.shape[0], ws, "f")

    # -- export ------------------------------------------------------------------
    def save(self, path):
        """Weights and vocabulary in one .npz (atomic); read back with load_tagger."""
        arch = {"format": "meprop_cpu.tagger", "version": 1, "config": self.config,
                "vocab": self.vocab.to_json()}
        arrays = dict(self.state_dict())
        arrays["architecture"] = np.frombuffer(json.dumps(arch).encode("utf-8"), dtype=np.uint8)
        atomic_savez(os.fspath(path), arrays)
        return path


def load_tagger(path):
    """A PosTagger (dense backward) from a file written by PosTagger.save."""
    path = os.fspath(path)
    arrays = read_npz(path, "tagger file")
    raw = arrays.pop("architecture", None)
    try:
        arch = json.loads(raw.tobytes().decode("utf-8"))
        assert arch.get("format") == "meprop_cpu.tagger"
        vocab = Vocab.from_json(arch["vocab"])
        cfg = arch["config"]
    except Exception as e:
        raise ValueError(f"tagger file {path} is not a meprop_cpu tagger file ({e})") from e
    try:
        model = PosTagger(vocab, hidden=arrays["lstm.U"].shape[1], k=None, mode="dense",
                          seed=cfg.get("seed", 0), bidirectional=bool(cfg.get("bidirectional")))
        if model.bidirectional:          # meSimp may leave the directions at other widths
            from .simplify import compact_lstm
            compact_lstm(model, np.arange(arrays["lstm_b.U"].shape[1]), direction=1)
    except KeyError as e:
        raise ValueError(f"tagger file {path} lacks the array {e}") from None
    model.load_state_dict(arrays)
    return model


from .train import PosTrainer  # noqa: E402  (the trainer lives in its own module)
