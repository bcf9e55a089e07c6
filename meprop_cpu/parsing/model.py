"""The parser's network (Chen & Manning 2014) on the MLP machinery, and the
user-facing :class:`Parser`.

:class:`ParserNet` is a :class:`~meprop_cpu.nn.Sequential`:
``FeatureEmbedding -> Linear -> act (-> Dropout) -> ... -> Linear``. The
embedding maps the 48 feature ids of a configuration to 48 x d floats
(words, POS tags and arc labels have one table each) and its backward hands
the optimizer a row-sparse gradient (only the rows the batch used are read
and written). The hidden Linear layers are the library's meProp layers, so
``k`` / ``mode`` / meSimp work as for the MLP. Activation: cube (Chen &
Manning's), relu or tanh.

Training computes the first hidden layer once per distinct id of each
feature position in the batch (:class:`DistinctFirstLayer`, C kernels
``include/meprop/featprod.h``; ``ParserNet(distinct=False)``: the plain
products).

Inference (:class:`PrecomputedNet`, C kernel ``include/meprop/parse.h``):
greedy parsing of sentence batches with the first layer's products
pre-computed for the frequent ids of every feature position.
"""
import json
import os
import time

import numpy as np

from .. import _core
from .._config import get_num_threads
from .._io import atomic_savez, read_npz
from ..kernels import RowGrad, Workspace, _check_int, embedding_grad
from ..nn import Cube, Dropout, Linear, Module, MODES, Parameter, ReLU, Sequential, Tanh
from . import transition as tr
from .conllu import Sentence
from .evaluate import attachment_scores

__all__ = ["FeatureEmbedding", "DistinctFirstLayer", "ParserNet", "PrecomputedNet", "Parser",
           "load_parser", "ACTIVATIONS", "PARSER_FORMAT", "PARSER_VERSION"]

ACTIVATIONS = {"cube": Cube, "relu": ReLU, "tanh": Tanh}
# meProp's selection when none is given. Not the MLP's batch_dw: at the parser's
# batch of 1,000 transition examples, the batch-wide top-k (20,000 of 500,000
# gradient entries) leaves most examples without any weight-gradient row and
# trained worse over 3 seeds (test UAS 80.59 vs 81.57 for topk_dw, dense 82.14;
# benchmarks/results/parse, docs/parsing.md). Per-example top-k for the weight
# gradient with the exact input gradient is the parser's default.
DEFAULT_MODE = "topk_dw"
_ACT_CODE = {"cube": 0, "relu": 1, "tanh": 2}
PARSER_FORMAT, PARSER_VERSION = "meprop_cpu.parser", 1

# feature columns of each table: words 0..17, POS 18..35, labels 36..47
_SPANS = ((0, tr.N_WORD_FEATS), (tr.N_WORD_FEATS, tr.N_WORD_FEATS + tr.N_POS_FEATS),
          (tr.N_WORD_FEATS + tr.N_POS_FEATS, tr.N_FEATURES))


class FeatureEmbedding(Module):
    """48 feature ids -> 48 x dim floats, from three tables (words, POS, labels).

    forward(X int32 (B, 48)) -> float32 (B, 48 * dim). backward(dx) sets each
    table's ``grad`` to a row-sparse :class:`~meprop_cpu.kernels.RowGrad`
    over the ids the batch used (in factored form: the optimizer sums each
    row's slices of dx as it applies it) and returns None."""

    def __init__(self, n_words, n_tags, n_label_ids, dim=50, init=0.5, seed=0):
        who = "FeatureEmbedding"
        sizes = [_check_int(v, f"{who}: {name}", 1)
                 for v, name in ((n_words, "n_words"), (n_tags, "n_tags"),
                                 (n_label_ids, "n_label_ids"))]
        self.dim = _check_int(dim, f"{who}: dim", 1)
        rng = np.random.default_rng(seed)
        self.tables = [Parameter(rng.uniform(-init, init, size=(n, self.dim)), name)
                       for n, name in zip(sizes, ("E_word", "E_pos", "E_label"))]
        self._X = None
        self._ws = Workspace()

    def parameters(self):
        return list(self.tables)

    def _check(self, X):
        if not isinstance(X, np.ndarray) or X.ndim != 2 or X.shape[1] != tr.N_FEATURES \
                or X.dtype.kind not in "iu":
            raise TypeError(f"FeatureEmbedding.forward: X must be an integer array of shape "
                            f"(B, {tr.N_FEATURES}), got {getattr(X, 'dtype', type(X).__name__)} "
                            f"{getattr(X, 'shape', '')}")
        if X.shape[0] == 0:
            raise ValueError("FeatureEmbedding.forward: X is an empty batch")
        X = np.ascontiguousarray(X, dtype=np.int32)
        for (a, b), E in zip(_SPANS, self.tables):
            part = X[:, a:b]
            lo, hi = int(part.min()), int(part.max())
            if lo < 0 or hi >= E.data.shape[0]:
                raise ValueError(f"FeatureEmbedding.forward: ids of {E.name} must lie in "
                                 f"[0, {E.data.shape[0]}), got [{lo}, {hi}]")
        return X

    def forward(self, X):
        X = self._check(X)
        B, d = X.shape[0], self.dim
        out = np.empty((B, tr.N_FEATURES, d), np.float32)
        for (a, b), E in zip(_SPANS, self.tables):
            out[:, a:b] = E.data[X[:, a:b]]
        if self.training:
            self._X = X
        return out.reshape(B, tr.N_FEATURES * d)

    def backward(self, dx):
        X = self._X
        if X is None:
            raise RuntimeError("FeatureEmbedding.backward called without a forward pass in "
                               "training mode")
        B, d, nf = X.shape[0], self.dim, tr.N_FEATURES
        if dx.shape != (B, nf * d) or dx.dtype != np.float32:
            raise ValueError(f"FeatureEmbedding.backward: dx must be float32 ({B}, {nf * d}), "
                             f"got {dx.dtype} {dx.shape}")
        x2 = np.ascontiguousarray(dx).reshape(B * nf, d)
        for t, ((a, b), E) in enumerate(zip(_SPANS, self.tables)):
            # use (example e, column c) of this table reads row e * 48 + a + c of x2
            E.grad = embedding_grad(np.ascontiguousarray(X[:, a:b]).reshape(-1), x2,
                                    E.data.shape[0], self._ws, f"t{t}", w=b - a, stride=nf,
                                    off=a)
        return None


class DistinctFirstLayer:
    """The first hidden layer of a :class:`ParserNet` computed once per distinct
    id of each feature position in the batch (C kernels of
    ``include/meprop/featprod.h``): at the parser's batch of 1,000 about 4,200 of
    the 48,000 (example, position) pairs are distinct, so the forward product,
    the input gradient into the embeddings and (dense backprop) the weight
    gradient take about a tenth of the plain products' multiply-adds (with
    k = 20 on 1 thread the layer's forward + backward took 30 ms per batch
    against 88 for the plain layer and its embeddings:
    benchmarks/results/parse/step.md). The same sums grouped
    differently: equal to float rounding, and the bits do not depend on the
    thread count.

    Paths by the layer's backward: dense (no meProp at this width, no
    activeness counts) -- everything through the distinct rows; "topk_dw" /
    "batch_dw" / "topk" -- the layer's own meProp backward forms the weight
    gradient, the bias gradient and meSimp's counts (same kernels as the
    plain path) and the input gradient runs through the distinct rows (the full
    output gradient, or for "topk" its selected pairs); other modes ("unified",
    "random", "topk" in its masked form) -- the plain backward."""

    def __init__(self, emb, lin):
        self.emb, self.lin = emb, lin
        self._ws = Workspace()
        self._fp = None
        self._fp_tables = None
        self._mark = None           # distinct-id scratch: all -1 between calls
        self._state = None          # what forward left for backward

    def _products(self):
        tabs = tuple(E.data for E in self.emb.tables)
        if self._fp is None or any(a is not b for a, b in zip(tabs, self._fp_tables)):
            per_pos = [tabs[t] for t, (a, b) in enumerate(_SPANS) for _ in range(a, b)]
            self._fp = _core.FeatProducts(per_pos)
            self._fp_tables = tabs
            self._mark = np.full(self._fp.max_vocab, -1, np.int32)
        return self._fp

    def _path(self):
        lin = self.lin
        if not lin.sparse:
            return "dense" if not lin.track_hits else "exact"
        if lin.mode in ("topk_dw", "batch_dw"):
            return "exact"
        if lin.mode == "topk" and not _core.backward_masked(lin.k, lin.n_out):
            return "pairs"
        return "plain"

    def forward(self, X, training):
        """h (B, H): the layer's pre-activation for int32 feature rows X (B, 48)."""
        emb, lin, ws = self.emb, self.lin, self._ws
        X = emb._check(X)
        B, nq, d = X.shape[0], tr.N_FEATURES, emb.dim
        H = lin.n_out
        if lin.n_in != nq * d:
            raise ValueError(f"DistinctFirstLayer: the layer takes {lin.n_in} inputs, the "
                             f"embeddings give {nq * d}")
        if B * nq >= 2**31:
            raise ValueError(f"DistinctFirstLayer.forward: a batch of {B} rows is too large "
                             f"(at most {(2**31 - 1) // nq})")
        fp = self._products()
        nt = get_num_threads()
        uniq = ws.get("uniq", (B * nq,), np.int32)
        uoff = ws.get("uoff", (nq + 1,), np.int64)
        inv = ws.get("inv", (B, nq), np.int32)
        mode = ws.get("mode", (nq,), np.int32)
        cnt = ws.get("cnt", (B * nq,), np.int32)
        U = fp.distinct(X, self._mark, cnt, uniq, uoff, inv, mode)
        if U < 0:          # emb._check has ruled this out; kept as a guard
            raise ValueError("DistinctFirstLayer.forward: a feature id is out of range")
        Wp = ws.get("Wp", (nq, H, d), np.float32)
        _core.feat_regroup(lin.W.data, Wp, True, nt)
        A = ws.get("A", (U, d), np.float32)
        T = ws.get("T", (U, H), np.float32)
        h = np.empty((B, H), np.float32)
        fp.forward(uniq, uoff, inv, mode, Wp, lin.b.data, A, ws.get("Ad", (U, d), np.float32), T,
                   ws.get("base", (H,), np.float32), h, nt)
        path = self._path() if training else None
        if training and path != "dense":     # the meProp weight gradient reads the inputs
            lin._x = np.empty((B, nq * d), np.float32)
            _core.feat_gather(A, inv, lin._x, nt)
        else:
            lin._x = None
        if training:
            emb._X = X
        # the distinct ids and rows the backward reuses (workspace views: valid
        # until the next forward)
        self._state = (path, fp, uniq, uoff, inv, mode, A, Wp) if training else None
        return h

    def backward(self, dh):
        """Set the gradients of the layer's W and b and of the three embedding
        tables from dh (B, H), the gradient of the pre-activation. Returns
        the time.perf_counter() at which the embeddings' part began."""
        if self._state is None:
            raise RuntimeError("DistinctFirstLayer.backward called without a forward pass in "
                               "training mode")
        path, fp, uniq, uoff, inv, mode, A, Wp = self._state
        self._state = None
        B, U = inv.shape[0], A.shape[0]
        emb, lin, ws = self.emb, self.lin, self._ws
        if path == "plain":
            dx = lin.backward(dh)
            t_emb = time.perf_counter()
            emb.backward(dx)
            return t_emb
        H, nq, d = lin.n_out, tr.N_FEATURES, emb.dim
        if dh.dtype != np.float32 or dh.shape != (B, H):
            raise ValueError(f"DistinctFirstLayer.backward: dh must be float32 ({B}, {H}), "
                             f"got {dh.dtype} {dh.shape}")
        dh = np.ascontiguousarray(dh)
        nt = get_num_threads()
        S = ws.get("S", (H,), np.float32)
        G = ws.get("G", (U, H), np.float32)
        dA = ws.get("dA", (U, d), np.float32)
        if path == "dense":
            gb = np.empty(H, np.float32)
            _core.colsum_rows(dh, gb)
            # a NaN / Inf entry leaves its column's sum non-finite: count only then
            if not np.isfinite(gb).all():
                bad = int(np.count_nonzero(~np.isfinite(dh)))
                if bad:
                    raise FloatingPointError(f"Linear.backward: dy contains {bad} NaN/Inf "
                                             "value(s)")
            lin.b.grad = gb
            fp.scatter(dh, None, None, uoff, inv, mode, S, G, nt)
            gwp = ws.get("gwp", (nq, H, d), np.float32)
            fp.backward(uoff, G, Wp, A, dA, gwp, nt)
            gw = np.empty((H, nq * d), np.float32)
            _core.feat_regroup(gw, gwp, False, nt)
            lin.W.grad = RowGrad(None, gw)
        else:
            need = lin.needs_input_grad
            lin.needs_input_grad = False
            try:
                lin.backward(dh)        # W.grad, b.grad, meSimp's counts
            finally:
                lin.needs_input_grad = need
            if path == "pairs":
                idx, val = lin.selection(B)
                fp.scatter(None, idx, val, uoff, inv, mode, S, G, nt)
            else:
                fp.scatter(dh, None, None, uoff, inv, mode, S, G, nt)
            fp.backward(uoff, G, Wp, A, dA, None, nt)
        t_emb = time.perf_counter()
        for t, ((a, b), E) in enumerate(zip(_SPANS, emb.tables)):
            lo, hi = int(uoff[a]), int(uoff[b])
            # use p (< hi - lo) of this table reads row lo + p of dA
            E.grad = embedding_grad(uniq[lo:hi], dA, E.data.shape[0], emb._ws, f"t{t}",
                                    w=hi - lo, stride=U, off=lo)
        return t_emb


class ParserNet(Sequential):
    """Chen & Manning's network: embeddings of the 48 features -> hidden layers
    -> scores of the 2L + 1 transitions.

    n_words, n_tags: vocabulary sizes (with the 3 reserved ids); n_labels: L.
    hidden: hidden widths (default two of 500); k, mode: meProp on the hidden
    layers (as :class:`~meprop_cpu.nn.MLP`; mode None: this module's DEFAULT_MODE,
    topk_dw); activation: "cube" | "relu" | "tanh"; dropout: after each hidden
    activation; topk_output: meProp on the output layer too. embed_init: the
    embeddings start uniform in [-embed_init, embed_init] (0.3: with two cube layers, Adam at lr 0.001
    trains from there; AdaGrad at lr 0.01 overshoots in its first steps and
    the cube amplifies it: use relu or a smaller lr with AdaGrad). distinct:
    compute the first hidden layer once per distinct id of each feature
    position in the batch (:class:`DistinctFirstLayer`; the same function and
    gradients to float rounding, several times faster); False: the plain
    products over the 2,400 embedding inputs."""

    def __init__(self, n_words, n_tags, n_labels, hidden=(500, 500), dim=50, k=None,
                 mode=None, activation="cube", dropout=0.0, topk_output=False, seed=0,
                 embed_init=0.3, distinct=True):
        who = "ParserNet"
        if mode is None:
            mode = DEFAULT_MODE
        if activation not in ACTIVATIONS:
            raise ValueError(f"{who}: activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {activation!r}")
        if mode not in MODES:
            raise ValueError(f"{who}: mode must be one of {MODES}, got {mode!r}")
        hidden = [_check_int(h, f"{who}: hidden[{i}]", 1) for i, h in enumerate(hidden)]
        if not 1 <= len(hidden) <= 7:
            raise ValueError(f"{who}: hidden must list 1 to 7 widths, got {hidden}")
        n_labels = _check_int(n_labels, f"{who}: n_labels", 1)
        seed = _check_int(seed, f"{who}: seed", 0, 2**63 - 1)
        ss = np.random.SeedSequence(seed)
        seeds = [int(s.generate_state(1, np.uint64)[0] >> 1) for s in ss.spawn(2 * len(hidden) + 3)]
        emb = FeatureEmbedding(n_words, n_tags, n_labels + 1, dim, embed_init, seeds[-1])
        sizes = [tr.N_FEATURES * emb.dim] + hidden + [tr.n_transitions(n_labels)]
        mods = [emb]
        for i in range(len(sizes) - 1):
            last = i == len(sizes) - 2
            mods.append(Linear(sizes[i], sizes[i + 1], k=k if (not last or topk_output) else None,
                               mode=mode, seed=seeds[i], needs_input_grad=True))
            if not last:
                mods.append(ACTIVATIONS[activation]())
                if dropout:
                    mods.append(Dropout(dropout, seed=seeds[len(sizes) + i]))
        super().__init__(*mods)
        self.embedding = emb
        self.config = {"n_words": int(n_words), "n_tags": int(n_tags), "n_labels": n_labels,
                       "hidden": hidden, "dim": emb.dim, "k": k, "mode": mode,
                       "activation": activation, "dropout": float(dropout),
                       "topk_output": bool(topk_output), "seed": seed,
                       "embed_init": float(embed_init), "distinct": bool(distinct)}
        self.first = DistinctFirstLayer(emb, mods[1]) if distinct else None
        self.time_backward_linear = 0.0   # seconds in the Linear layers' backward

    @property
    def input_width(self):
        return tr.N_FEATURES

    def forward(self, X):
        if self.first is None:
            return super().forward(X)
        x = self.first.forward(X, self.training)
        for m in self.modules[2:]:
            x = m.forward(x)
        return x

    def backward(self, dy):
        t0 = time.perf_counter()
        if self.first is None:
            for m in reversed(self.modules[1:]):
                dy = m.backward(dy)
            t1 = time.perf_counter()
            self.time_backward_linear += t1 - t0
            return self.modules[0].backward(dy)
        for m in reversed(self.modules[2:]):
            dy = m.backward(dy)
        t1 = self.first.backward(dy)
        self.time_backward_linear += t1 - t0
        return None

    def scores(self, X, batch_size=4096):
        """Transition scores of feature rows X (plain forward, eval mode)."""
        was = self.training
        self.eval()
        try:
            return np.concatenate([self.forward(X[i:i + batch_size])
                                   for i in range(0, X.shape[0], batch_size)])
        finally:
            self.train(was)


class PrecomputedNet:
    """The C inference view of a :class:`ParserNet`: the first layer's products
    for ids below ``limits`` of each feature position pre-computed (Chen &
    Manning's trick), the rest of the network as it is. Rebuild it after the
    weights change. ``n_words``: how many of the most frequent word ids
    (vocabulary ids are ordered by frequency) to pre-compute per position;
    every POS and label id is pre-computed. ``n_words=0`` and
    ``precompute=False`` (nothing pre-computed) give the plain computation."""

    def __init__(self, net, n_words=1000, precompute=True):
        if net.config["activation"] not in _ACT_CODE:
            raise ValueError(f"PrecomputedNet: activation {net.config['activation']!r}")
        lins = net.linears
        if len(lins) - 1 > _core.MAX_LAYERS:
            raise ValueError("PrecomputedNet: at most 8 layers after the first")
        emb = net.embedding
        d = emb.dim
        W0 = lins[0].W.data
        H = W0.shape[0]
        self.W0T = np.ascontiguousarray(W0.T)
        tabs = [E.data for E in emb.tables]
        feat_table = [0] * tr.N_WORD_FEATS + [1] * tr.N_POS_FEATS + [2] * tr.N_LABEL_FEATS
        limits = np.zeros(tr.N_FEATURES, np.int64)
        if precompute:
            for q, t in enumerate(feat_table):
                limits[q] = min(int(n_words), tabs[0].shape[0]) if t == 0 else tabs[t].shape[0]
        base = np.concatenate(([0], np.cumsum(limits)[:-1])).astype(np.int64)
        rows = int(limits.sum())
        table = np.empty((max(rows, 1), H), np.float32)
        for q, t in enumerate(feat_table):
            if limits[q]:
                E = tabs[t][:limits[q]]
                table[base[q]:base[q] + limits[q]] = E @ self.W0T[q * d:(q + 1) * d]
        # fold the NULL id's product (most features of a configuration are NULL) into
        # the bias: rows hold differences to it, and NULL features are skipped in C
        b0 = lins[0].b.data.astype(np.float64)
        fold = bool(precompute)
        if fold:
            for q, t in enumerate(feat_table):
                if limits[q]:
                    null = table[base[q]].copy()
                    table[base[q]:base[q] + limits[q]] -= null
                else:
                    null = tabs[t][0] @ self.W0T[q * d:(q + 1) * d]
                b0 += null
        self.b0 = np.ascontiguousarray(b0, dtype=np.float32)
        self.table = table
        self.limits, self.base = limits, base
        self.emb = [tabs[t] for t in feat_table]
        Ws = [m.W.data for m in lins[1:]]
        bs = [m.b.data for m in lins[1:]]
        self.view = _core.NetView(self.emb, table, base, limits, self.W0T, self.b0,
                                   _ACT_CODE[net.config["activation"]], Ws, bs, fold)
        self.n_labels = net.config["n_labels"]
        self.vocab_sizes = [t.shape[0] for t in tabs]

    def scores(self, X, threads=None):
        """Transition scores (B, 2L + 1) of int32 feature rows X (B, 48)."""
        X = np.ascontiguousarray(X, dtype=np.int32)
        if X.ndim != 2 or X.shape[1] != tr.N_FEATURES or X.shape[0] == 0:
            raise ValueError(f"PrecomputedNet.scores: X must have shape (B, 48), got {X.shape}")
        for (a, b), n in zip(_SPANS, self.vocab_sizes):
            part = X[:, a:b]
            if part.min() < 0 or part.max() >= n:
                raise ValueError(f"PrecomputedNet.scores: feature ids in columns {a}..{b - 1} "
                                 f"must lie in [0, {n})")
        nt = get_num_threads() if threads is None else _check_int(threads, "threads", 1)
        B = X.shape[0]
        buf = np.empty(2 * B * self.view.max_width, np.float32)
        out = np.empty((B, self.view.n_out), np.float32)
        self.view.forward(X, buf, out, nt)
        return out

    def parse_encoded(self, words, tags, threads=None):
        """Greedy parse of encoded sentences (lists of int32 arrays with ROOT at 0):
        per sentence (heads int32 (n,), label indices int32 (n,))."""
        lens = np.array([len(w) for w in words], np.int64)
        off = np.concatenate(([0], np.cumsum(lens))).astype(np.int64)
        w = np.ascontiguousarray(np.concatenate(words), dtype=np.int32) if words else \
            np.zeros(1, np.int32)
        p = np.ascontiguousarray(np.concatenate(tags), dtype=np.int32) if tags else \
            np.zeros(1, np.int32)
        for arr, n, name in ((w, self.vocab_sizes[0], "word"), (p, self.vocab_sizes[1], "tag")):
            if arr.size and (arr.min() < 0 or arr.max() >= n):
                raise ValueError(f"PrecomputedNet.parse_encoded: {name} ids must lie in [0, {n})")
        heads = np.empty(max(int(off[-1]), 1), np.int32)
        labels = np.empty_like(heads)
        nt = get_num_threads() if threads is None else _check_int(threads, "threads", 1)
        if len(words) and self.view.parse(off, w, p, self.n_labels, heads, labels, nt) != 0:
            raise MemoryError("PrecomputedNet.parse_encoded: out of memory")
        return [(heads[off[i] + 1:off[i + 1]], labels[off[i] + 1:off[i + 1]])
                for i in range(len(words))]


class Parser:
    """A dependency parser: a :class:`~meprop_cpu.parsing.transition.Vocab` and a
    :class:`ParserNet`.

    ``parse(sentences)`` -> (heads, labels) per sentence (labels as DEPREL
    strings); ``evaluate(sentences)`` -> attachment scores (percent);
    ``save(path)`` / :func:`load_parser`."""

    def __init__(self, vocab, net, n_precompute=1000):
        self.vocab = vocab
        self.net = net
        self.n_precompute = int(n_precompute)
        if net.config["n_labels"] != vocab.n_labels:
            raise ValueError(f"Parser: the network has {net.config['n_labels']} labels, the "
                             f"vocabulary {vocab.n_labels}")

    @classmethod
    def create(cls, vocab, **net_options):
        """A fresh parser for ``vocab``; options go to :class:`ParserNet`."""
        net = ParserNet(len(vocab.words), len(vocab.tags), vocab.n_labels, **net_options)
        return cls(vocab, net)

    def precomputed(self, precompute=True):
        return PrecomputedNet(self.net, self.n_precompute, precompute)

    def parse(self, sentences, threads=None, batch_size=2048, precomputed=None):
        """Greedy parses of ``sentences`` (:class:`Sentence` list): (heads, labels),
        one list of n ints / n DEPREL strings per sentence."""
        for i, s in enumerate(sentences):
            if not isinstance(s, Sentence):
                raise TypeError(f"Parser.parse: sentences[{i}] is a {type(s).__name__}, "
                                "not a Sentence")
        pc = precomputed if precomputed is not None else self.precomputed()
        names = self.vocab.labels
        heads, labels = [], []
        for lo in range(0, len(sentences), batch_size):
            enc = [self.vocab.encode_sentence(s) for s in sentences[lo:lo + batch_size]]
            for h, lab in pc.parse_encoded([e[0] for e in enc], [e[1] for e in enc], threads):
                heads.append(h.tolist())
                labels.append([names[j] for j in lab])
        return heads, labels

    def evaluate(self, sentences, threads=None):
        """UAS / LAS (percent, with and without punctuation) on gold sentences."""
        heads, labels = self.parse(sentences, threads)
        return attachment_scores(sentences, heads, labels)

    def save(self, path):
        """Write vocabulary, configuration and weights to ``path`` (.npz, no pickle,
        atomic). :func:`load_parser` reads it back."""
        arch = {"format": PARSER_FORMAT, "version": PARSER_VERSION, "class": "Parser",
                "config": self.net.config, "sizes": self.net.sizes,
                "n_precompute": self.n_precompute}
        arrays = {"param:" + n: a for n, a in self.net.state_dict().items()}
        arrays["architecture"] = np.frombuffer(json.dumps(arch).encode("utf-8"), np.uint8)
        arrays["vocab"] = np.frombuffer(self.vocab.to_json().encode("utf-8"), np.uint8)
        path = os.fspath(path)
        atomic_savez(path, arrays)
        return path


def load_parser(path):
    """Read a parser written by :meth:`Parser.save` (eval mode, dense backward).
    Raises FileNotFoundError, or ValueError naming the file."""
    path = os.fspath(path)
    arrays = read_npz(path, "parser model file")
    try:
        arch = json.loads(arrays.pop("architecture").tobytes().decode("utf-8"))
        vocab = tr.Vocab.from_json(arrays.pop("vocab").tobytes().decode("utf-8"))
    except (KeyError, UnicodeDecodeError, ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a meprop_cpu parser model file ({e})") from None
    if not isinstance(arch, dict) or arch.get("format") != PARSER_FORMAT:
        raise ValueError(f"{path} is not a meprop_cpu parser model file")
    if arch.get("version") != PARSER_VERSION:
        raise ValueError(f"{path} has parser format version {arch.get('version')!r}; this "
                         f"meprop_cpu reads version {PARSER_VERSION}")
    cfg = dict(arch["config"])
    sizes = arch.get("sizes")
    if isinstance(sizes, list) and len(sizes) >= 3:
        cfg["hidden"] = sizes[1:-1]           # the (possibly meSimp-shrunk) widths
    cfg["k"], cfg["mode"], cfg["dropout"] = None, "dense", 0.0
    try:
        net = ParserNet(**cfg)
        net.load_state_dict({n[6:]: a for n, a in arrays.items() if n.startswith("param:")})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: parser model does not match its architecture ({e})") from None
    return Parser(vocab, net.eval(), arch.get("n_precompute", 1000))
