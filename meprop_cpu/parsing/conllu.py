"""CoNLL-U reading and writing for the dependency parser.

A sentence keeps its syntactic words (integer IDs 1..n) with FORM, UPOS,
XPOS, HEAD and DEPREL, plus every other line (comments, multi-word token
ranges ``3-4``, empty nodes ``5.1``) so that a parsed file can be written back
with only HEAD and DEPREL of the words replaced. Multi-word ranges and empty
nodes are skipped by the parser: it sees the syntactic words only.

Errors: a malformed file raises :class:`CoNLLUError` (a ``ValueError``)
naming the file, the line and what was wrong: a line without 10
tab-separated fields, a bad ID, IDs that do not run 1..n, a HEAD that is
not an integer in [0, n] or points at the word itself, and (for gold trees)
a cycle or a missing HEAD.
"""
import io
import os

__all__ = ["Sentence", "CoNLLUError", "read_conllu", "parse_conllu", "write_conllu",
           "format_conllu", "check_tree", "PUNCT_UPOS"]

PUNCT_UPOS = ("PUNCT",)


class CoNLLUError(ValueError):
    """A malformed CoNLL-U file (the message names the file and line)."""


class Sentence:
    """One sentence: words 1..n (index 0 of every list is the artificial ROOT).

    forms, upos, xpos, deprels: lists of str; heads: list of int (-1 where the
    file has ``_``, e.g. text still to be parsed). ``lines`` keeps the file's
    lines in order (comment and range / empty-node lines as str, word lines as
    lists of 10 fields) for :func:`write_conllu`."""

    __slots__ = ("forms", "upos", "xpos", "heads", "deprels", "lines", "where")

    def __init__(self, forms, upos, xpos, heads, deprels, lines=None, where=""):
        self.forms = ["<ROOT>"] + list(forms)
        self.upos = ["<ROOT>"] + list(upos)
        self.xpos = ["<ROOT>"] + list(xpos)
        self.heads = [-1] + [int(h) for h in heads]
        self.deprels = ["<ROOT>"] + list(deprels)
        n = len(self.forms) - 1
        if not (len(self.upos) == len(self.xpos) == len(self.heads) == len(self.deprels) == n + 1):
            raise ValueError("Sentence: forms, upos, xpos, heads and deprels must have the "
                             "same length")
        if lines is None:
            lines = [[str(i), forms[i - 1], "_", upos[i - 1], xpos[i - 1], "_",
                      str(heads[i - 1]) if heads[i - 1] >= 0 else "_", deprels[i - 1], "_", "_"]
                     for i in range(1, n + 1)]
        self.lines = lines
        self.where = where

    def __len__(self):
        return len(self.forms) - 1

    def pos(self, field="xpos"):
        """The POS tags the parser reads: XPOS where given, else UPOS ("upos": UPOS only)."""
        if field == "upos":
            return self.upos
        return [x if x != "_" else u for x, u in zip(self.xpos, self.upos)]

    def is_punct(self, i):
        return self.upos[i] in PUNCT_UPOS

    def __repr__(self):
        return f"Sentence({' '.join(self.forms[1:])!r})"


def check_tree(heads, where="sentence"):
    """Raise CoNLLUError if ``heads`` (index 0 unused, words 1..n) is not a tree
    rooted at 0: a head out of [0, n], a word that is its own head, or a cycle."""
    n = len(heads) - 1
    for i in range(1, n + 1):
        h = heads[i]
        if not 0 <= h <= n:
            raise CoNLLUError(f"{where}: word {i} has HEAD {h}, outside [0, {n}]")
        if h == i:
            raise CoNLLUError(f"{where}: word {i} is its own HEAD")
    state = [0] * (n + 1)   # 0 unvisited, 1 on the current path, 2 reaches the root
    state[0] = 2
    for i in range(1, n + 1):
        path = []
        j = i
        while state[j] == 0:
            state[j] = 1
            path.append(j)
            j = heads[j]
        if state[j] == 1:
            cyc = path[path.index(j):]
            raise CoNLLUError(f"{where}: the HEADs form a cycle through words "
                              f"{' -> '.join(map(str, cyc + [j]))}")
        for p in path:
            state[p] = 2


def _fail(where, msg):
    raise CoNLLUError(f"{where}: {msg}")


def parse_conllu(lines, source="<string>", gold=True):
    """Sentences from an iterable of CoNLL-U lines (see :func:`read_conllu`)."""
    sents = []
    block = []
    start = None
    for no, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if line.strip() == "":
            if block:
                sents.append(_sentence(block, source, start, gold))
                block = []
            continue
        if not block:
            start = no
        block.append((no, line))
    if block:
        sents.append(_sentence(block, source, start, gold))
    return sents


def _sentence(block, source, start, gold):
    forms, upos, xpos, heads, deprels, lines = [], [], [], [], [], []
    where_s = f"{source}: sentence at line {start}"
    for no, line in block:
        where = f"{source}:{no}"
        if line.startswith("#"):
            lines.append(line)
            continue
        fields = line.split("\t")
        if len(fields) != 10:
            _fail(where, f"expected 10 tab-separated fields, got {len(fields)}")
        tid = fields[0]
        if "-" in tid or "." in tid:   # multi-word token range / empty node: kept, not parsed
            parts = tid.replace("-", ".").split(".")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                _fail(where, f"bad ID {tid!r}")
            lines.append(line)
            continue
        if not tid.isdigit() or int(tid) != len(forms) + 1:
            _fail(where, f"ID {tid!r} out of sequence (expected {len(forms) + 1}: word IDs "
                         "must run 1, 2, ... within a sentence)")
        h = fields[6]
        if h == "_":
            if gold:
                _fail(where, "HEAD is '_' (a gold tree needs every HEAD)")
            heads.append(-1)
        else:
            if not h.isdigit():
                _fail(where, f"HEAD {h!r} is not a non-negative integer")
            heads.append(int(h))
        if gold and fields[7] in ("", "_"):
            _fail(where, "DEPREL is empty or '_' (a gold tree needs every DEPREL)")
        forms.append(fields[1])
        upos.append(fields[3])
        xpos.append(fields[4])
        deprels.append(fields[7])
        lines.append(fields)
    if not forms:
        _fail(where_s, "no word lines (only comments or ranges)")
    n = len(forms)
    for i, h in enumerate(heads, 1):
        if h > n or h == i:
            _fail(where_s, f"word {i} has HEAD {h}" + (" (itself)" if h == i else
                                                         f", outside [0, {n}]"))
    if gold or all(h >= 0 for h in heads):
        check_tree([-1] + heads, where_s)
    return Sentence(forms, upos, xpos, heads, deprels, lines, where_s)


def read_conllu(path, gold=True):
    """Read a CoNLL-U file: a list of :class:`Sentence`.

    gold: every word must have a HEAD and DEPREL and the heads must form a
    tree (training and evaluation data); ``gold=False`` accepts ``_`` (text to
    parse). Raises FileNotFoundError, or CoNLLUError naming file and line."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            sents = parse_conllu(f, path, gold)
    except UnicodeDecodeError as e:
        raise CoNLLUError(f"{path}: not UTF-8 text ({e})") from None
    if not sents:
        raise CoNLLUError(f"{path}: no sentences")
    return sents


def format_conllu(sentences, heads=None, labels=None):
    """The CoNLL-U text of ``sentences``; with ``heads`` / ``labels`` (one list per
    sentence, index 0 unused or length n) the words' HEAD / DEPREL are replaced."""
    out = io.StringIO()
    for si, s in enumerate(sentences):
        hs = None if heads is None else heads[si]
        ls = None if labels is None else labels[si]
        off = 0 if hs is None or len(hs) == len(s) else 1
        offl = 0 if ls is None or len(ls) == len(s) else 1
        for line in s.lines:
            if isinstance(line, str):
                out.write(line + "\n")
                continue
            f = list(line)
            i = int(f[0])
            if hs is not None:
                f[6] = str(int(hs[i - 1 + off]))
            if ls is not None:
                f[7] = str(ls[i - 1 + offl])
            out.write("\t".join(f) + "\n")
        out.write("\n")
    return out.getvalue()


def write_conllu(path_or_file, sentences, heads=None, labels=None):
    """Write :func:`format_conllu` to a path or an open text file."""
    text = format_conllu(sentences, heads, labels)
    if hasattr(path_or_file, "write"):
        path_or_file.write(text)
        return
    with open(os.fspath(path_or_file), "w", encoding="utf-8") as f:
        f.write(text)
