"""The arc-standard transition system with labels, its static oracle and
Chen & Manning's 48 features.

Transitions (2L + 1 for L labels): ``0`` SHIFT, ``1 + l`` LEFT-ARC(l) (the
stack's top s1 becomes the head of s2, which is popped), ``1 + L + l``
RIGHT-ARC(l) (s2 becomes the head of s1, which is popped). The stack starts
as [ROOT] and the buffer holds words 1..n; a sentence of n words takes 2n
transitions. Legal moves: SHIFT while the buffer is not empty, LEFT-ARC when
s2 is a word (not ROOT), RIGHT-ARC when the stack holds two items and, if
s2 is ROOT, the buffer is empty (one word attaches to ROOT, as in Chen &
Manning's parser).

Features (Chen & Manning 2014), in this order: words of s1, s2, s3, b1, b2,
b3, then for s1 and for s2 the words of lc1, rc1, lc2, rc2, lc1(lc1), rc1(rc1)
(lc1 / lc2: leftmost / second leftmost child to the left, rc1 / rc2:
rightmost / second rightmost child to the right) - 18 words; the same 18
positions' POS tags; the arc labels of the 12 child positions. Missing items
take the NULL id, the artificial root the ROOT id, words and tags not in the
vocabulary UNK.
"""
import json

import numpy as np

from .conllu import check_tree

__all__ = ["Vocab", "NULL", "UNK", "ROOT", "N_WORD_FEATS", "N_POS_FEATS", "N_LABEL_FEATS",
           "N_FEATURES", "Configuration", "legal_moves", "apply", "oracle", "oracle_sequence",
           "features", "is_projective", "make_examples", "encode", "n_transitions",
           "transition_name", "greedy_parse_reference"]

NULL, UNK, ROOT = 0, 1, 2             # reserved ids in the word and POS vocabularies
N_WORD_FEATS, N_POS_FEATS, N_LABEL_FEATS = 18, 18, 12
N_FEATURES = N_WORD_FEATS + N_POS_FEATS + N_LABEL_FEATS   # 48
SHIFT = 0


class Vocab:
    """Word, POS and label vocabularies built from training sentences.

    Word and POS ids 0, 1, 2 are NULL, UNK and ROOT. Label feature ids are
    0 for NULL and 1 + label index; transitions use the label index.
    ``lowercase``: words are lowercased; ``min_count``: training words seen
    fewer times map to UNK (so UNK's embedding is trained); ``pos_field``:
    "xpos" (XPOS, UPOS where XPOS is ``_``) or "upos"."""

    SPECIAL = ("<NULL>", "<UNK>", "<ROOT>")

    def __init__(self, words, tags, labels, lowercase=True, pos_field="xpos"):
        self.words = list(words)
        self.tags = list(tags)
        self.labels = list(labels)
        if self.words[:3] != list(self.SPECIAL) or self.tags[:3] != list(self.SPECIAL):
            raise ValueError("Vocab: words and tags must start with <NULL>, <UNK>, <ROOT>")
        if not self.labels:
            raise ValueError("Vocab: no arc labels")
        if pos_field not in ("xpos", "upos"):
            raise ValueError(f"Vocab: pos_field must be 'xpos' or 'upos', got {pos_field!r}")
        self.lowercase = bool(lowercase)
        self.pos_field = pos_field
        self.word_index = {w: i for i, w in enumerate(self.words)}
        self.tag_index = {t: i for i, t in enumerate(self.tags)}
        self.label_index = {lab: i for i, lab in enumerate(self.labels)}

    @classmethod
    def build(cls, sentences, min_count=2, lowercase=True, pos_field="xpos"):
        counts, tags, labels = {}, {}, {}
        for s in sentences:
            for i in range(1, len(s) + 1):
                w = s.forms[i].lower() if lowercase else s.forms[i]
                counts[w] = counts.get(w, 0) + 1
            for t in s.pos(pos_field)[1:]:
                tags[t] = None
            for lab in s.deprels[1:]:
                labels[lab] = None
        # most frequent first: the parser pre-computes the first layer for the lowest ids
        words = [w for w, c in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))
                 if c >= min_count]
        return cls(list(cls.SPECIAL) + words, list(cls.SPECIAL) + sorted(tags), sorted(labels),
                   lowercase, pos_field)

    @property
    def n_labels(self):
        return len(self.labels)

    def encode_sentence(self, s):
        """(word ids, POS ids) int32 arrays of length n + 1 (index 0: ROOT)."""
        lc = self.lowercase
        wi, ti = self.word_index, self.tag_index
        w = [ROOT] + [wi.get(f.lower() if lc else f, UNK) for f in s.forms[1:]]
        p = [ROOT] + [ti.get(t, UNK) for t in s.pos(self.pos_field)[1:]]
        return np.array(w, np.int32), np.array(p, np.int32)

    def to_json(self):
        return json.dumps({"words": self.words, "tags": self.tags, "labels": self.labels,
                           "lowercase": self.lowercase, "pos_field": self.pos_field})

    @classmethod
    def from_json(cls, text):
        d = json.loads(text)
        return cls(d["words"], d["tags"], d["labels"], d.get("lowercase", True),
                   d.get("pos_field", "xpos"))


def n_transitions(n_labels):
    return 2 * n_labels + 1


def transition_name(t, labels):
    L = len(labels)
    if t == SHIFT:
        return "SHIFT"
    if t <= L:
        return f"LEFT-ARC({labels[t - 1]})"
    return f"RIGHT-ARC({labels[t - 1 - L]})"


class Configuration:
    """Stack, buffer position, the arcs built so far and each word's two
    leftmost / rightmost children (kept up to date by :func:`apply`)."""

    __slots__ = ("n", "stack", "i", "heads", "labels", "lc1", "lc2", "rc1", "rc2")

    def __init__(self, n):
        self.n = n
        self.stack = [0]
        self.i = 1
        self.heads = [-1] * (n + 1)
        self.labels = [-1] * (n + 1)
        self.lc1 = [-1] * (n + 1)
        self.lc2 = [-1] * (n + 1)
        self.rc1 = [-1] * (n + 1)
        self.rc2 = [-1] * (n + 1)

    def terminal(self):
        return self.i > self.n and len(self.stack) == 1


def legal_moves(c):
    """(shift, left, right) legality flags."""
    depth = len(c.stack)
    buf = c.i <= c.n
    return buf, depth > 2, depth >= 2 and (c.stack[-2] != 0 or not buf)


def apply(c, t, n_labels):
    """Apply transition ``t`` to ``c`` (no legality check)."""
    if t == SHIFT:
        c.stack.append(c.i)
        c.i += 1
        return
    s1 = c.stack.pop()
    s2 = c.stack[-1]
    if t <= n_labels:          # LEFT-ARC: s1 -> s2
        c.stack[-1] = s1
        c.heads[s2], c.labels[s2] = s1, t - 1
        c.lc2[s1], c.lc1[s1] = c.lc1[s1], s2
    else:                      # RIGHT-ARC: s2 -> s1
        c.heads[s1], c.labels[s1] = s2, t - 1 - n_labels
        c.rc2[s2], c.rc1[s2] = c.rc1[s2], s1


def oracle(c, gold_heads, gold_labels, pending):
    """The static oracle's transition for ``c`` (None: the gold tree cannot be
    reached). ``pending[k]``: gold children of k not attached yet."""
    st = c.stack
    n_labels_shift = None
    if len(st) >= 2:
        s1, s2 = st[-1], st[-2]
        if s2 != 0 and gold_heads[s2] == s1:
            return ("L", gold_labels[s2])
        if gold_heads[s1] == s2 and pending[s1] == 0 and (s2 != 0 or c.i > c.n):
            return ("R", gold_labels[s1])
    if c.i <= c.n:
        return ("S", n_labels_shift)
    return None


def encode(move, n_labels):
    kind, lab = move
    if kind == "S":
        return SHIFT
    return 1 + lab if kind == "L" else 1 + n_labels + lab


def is_projective(heads):
    """True if no two arcs cross (arcs from ROOT included); heads[0] unused."""
    h = np.asarray(heads[1:], dtype=np.int64)
    d = np.arange(1, h.shape[0] + 1)
    lo, hi = np.minimum(h, d), np.maximum(h, d)
    cross = (lo[:, None] < lo[None, :]) & (lo[None, :] < hi[:, None]) & (hi[:, None] < hi[None, :])
    return not bool(cross.any())


def oracle_sequence(heads, label_ids, n_labels, on_config=None):
    """The oracle's transitions for a gold tree (``heads``, ``label_ids``: index 0
    unused), or None if the tree is not reachable (non-projective, or more
    than one word attached to ROOT). ``on_config(c)`` is called before each
    transition (feature extraction)."""
    n = len(heads) - 1
    pending = [0] * (n + 1)
    for d in range(1, n + 1):
        pending[heads[d]] += 1
    c = Configuration(n)
    seq = []
    while not c.terminal():
        mv = oracle(c, heads, label_ids, pending)
        if mv is None:
            return None
        t = encode(mv, n_labels)
        if on_config is not None:
            on_config(c, t)
        if t != SHIFT:
            dep = c.stack[-2] if t <= n_labels else c.stack[-1]
            pending[heads[dep]] -= 1
        apply(c, t, n_labels)
        seq.append(t)
    if c.heads[1:] != list(heads[1:]):
        return None
    return seq


def features(c, w, p, out=None):
    """Chen & Manning's 48 feature ids of configuration ``c`` for a sentence
    with word ids ``w`` and POS ids ``p`` (index 0: ROOT). Returns a list, or
    fills the int32 array ``out``."""
    st = c.stack
    d = len(st)
    pos = [st[-1] if d > 0 else -1, st[-2] if d > 1 else -1, st[-3] if d > 2 else -1]
    for k in range(3):
        b = c.i + k
        pos.append(b if b <= c.n else -1)
    lc1, lc2, rc1, rc2 = c.lc1, c.lc2, c.rc1, c.rc2
    kids = []
    for s in pos[:2]:
        if s < 0:
            kids += [-1] * 6
            continue
        a, b = lc1[s], rc1[s]
        kids += [a, b, lc2[s], rc2[s], lc1[a] if a >= 0 else -1, rc1[b] if b >= 0 else -1]
    allpos = pos + kids
    f = [w[k] if k >= 0 else NULL for k in allpos]
    f += [p[k] if k >= 0 else NULL for k in allpos]
    f += [c.labels[k] + 1 if k >= 0 else 0 for k in kids]
    if out is not None:
        out[:] = f
        return out
    return f


def make_examples(sentences, vocab):
    """Oracle training examples: (X int32 (N, 48), y int64 (N,), stats).

    Sentences whose gold tree the oracle cannot reach (non-projective ones)
    are skipped; ``stats`` counts them: {"sentences", "used", "non_projective",
    "unreachable", "examples"}."""
    L = vocab.n_labels
    feats, ys = [], []
    nonproj = unreach = used = 0
    for s in sentences:
        check_tree(s.heads, s.where or "sentence")
        heads = s.heads
        if not is_projective(heads):
            nonproj += 1
            continue
        lab = [-1] + [vocab.label_index[r] for r in s.deprels[1:]]
        w, p = vocab.encode_sentence(s)
        w, p = w.tolist(), p.tolist()
        mine_f, mine_y = [], []

        def grab(c, t):
            mine_f.append(features(c, w, p))
            mine_y.append(t)

        if oracle_sequence(heads, lab, L, grab) is None:
            unreach += 1
            continue
        used += 1
        feats += mine_f
        ys += mine_y
    X = np.array(feats, dtype=np.int32).reshape(-1, N_FEATURES)
    y = np.array(ys, dtype=np.int64)
    stats = {"sentences": len(sentences), "used": used, "non_projective": nonproj,
             "unreachable": unreach, "examples": int(y.shape[0])}
    return X, y, stats


def greedy_parse_reference(score_fn, sentences, vocab, batch_size=256):
    """Greedy parsing in Python (the reference for the C parser): ``score_fn(X)``
    maps int32 features (B, 48) to transition scores (B, 2L + 1). Returns
    (heads, labels): per sentence a list of n heads and n label indices."""
    L = vocab.n_labels
    heads_out, labels_out = [], []
    for lo in range(0, len(sentences), batch_size):
        batch = sentences[lo:lo + batch_size]
        enc = [vocab.encode_sentence(s) for s in batch]
        confs = [Configuration(len(s)) for s in batch]
        while True:
            active = [j for j, c in enumerate(confs) if not c.terminal()]
            if not active:
                break
            X = np.array([features(confs[j], enc[j][0], enc[j][1]) for j in active], np.int32)
            scores = np.asarray(score_fn(X), dtype=np.float32)
            for row, j in enumerate(active):
                c = confs[j]
                sh, le, ri = legal_moves(c)
                best, bt = None, None
                for t in range(2 * L + 1):
                    ok = sh if t == SHIFT else (le if t <= L else ri)
                    if ok and (best is None or scores[row, t] > best):
                        best, bt = scores[row, t], t
                apply(c, bt, L)
        for c in confs:
            heads_out.append(c.heads[1:])
            labels_out.append(c.labels[1:])
    return heads_out, labels_out
