"""Treebanks for the parser: the Turkish Web Treebank and any CoNLL-U files.

``turkish_web(path=None, *, fetch=True, cache_dir=None)``
    The Turkish Web Treebank (Apache-2.0; the ``web`` and ``wiki`` files of
    the wheel ``turkish-treebanks==1.0.0``, 4,851 sentences, gold POS). Split
    per file by sentence index i (0-based, in file order): ``i % 10 < 8``
    train, ``== 8`` dev, ``== 9`` test. Lookup order: ``path`` (a directory
    holding ``web.conllu`` and ``wiki.conllu``), ``$MEPROP_TURKISH_TB``, the
    cache ``<cache>/turkish-treebanks/`` (``cache_dir``, else
    ``$MEPROP_DATA``, else ``~/.cache/meprop_cpu``), then ``pip download`` of
    the wheel (sha256 checked) into the cache. Cached files are sha256 checked.
``conllu_files(train, dev, test=None)``
    Any treebank given as CoNLL-U files.

Both return ``{"train": [Sentence], "dev": [...], "test": [...] or None}``.
Errors: :class:`~meprop_cpu.data.DataError` (not found / not fetched,
with how to provide the files by hand), ``ChecksumError``, and
:class:`~meprop_cpu.parsing.conllu.CoNLLUError` (a ValueError) for malformed
files.
"""
import hashlib
import os
import sys
import tempfile
import zipfile
from pathlib import Path

from .._io import atomic_write
from ..data.common import (ChecksumError, DataError, DataFormatError, cache_root, pip_download,
                           sha256_of)
from .conllu import read_conllu

__all__ = ["turkish_web", "conllu_files", "fetch_turkish", "turkish_cache_dir", "split_by_index",
           "TURKISH_WHEEL_SPEC", "TURKISH_WHEEL_SHA256", "TURKISH_FILES"]

TURKISH_WHEEL_SPEC = "turkish-treebanks==1.0.0"
TURKISH_WHEEL_SHA256 = "5a009c29a8e96e8f7e25059d59ac293c3baead6d746bf0fa4c9d3349b1e37ba0"
# file in the cache -> (member of the wheel, sha256)
TURKISH_FILES = {
    "web.conllu": ("data/web.conllu",
                   "d6f92b12b74f367a36e30dd3d644d7a0bb01a991584602e6e69f1191664f86bf"),
    "wiki.conllu": ("data/wiki.conllu",
                    "58f049fae8d0653ba0940a58168c17c7cebbc50f88cad2985d12d34ac1b9acde"),
}
ENV_TURKISH = "MEPROP_TURKISH_TB"


def turkish_cache_dir(cache_dir=None):
    return cache_root(cache_dir) / "turkish-treebanks"


def _help(target):
    return ("To provide the Turkish Web Treebank by hand:\n"
            f"  pip download --no-deps --only-binary :all: -d /tmp/twt {TURKISH_WHEEL_SPEC}\n"
            f"  unzip -j /tmp/twt/turkish_treebanks-1.0.0-*.whl data/web.conllu "
            f"data/wiki.conllu -d {target}\n"
            f"  (wheel sha256 {TURKISH_WHEEL_SHA256})\n"
            f"or pass path=<directory holding web.conllu and wiki.conllu> "
            f"(`--data-dir` on the command line) or set ${ENV_TURKISH} to it.")


def fetch_turkish(cache_dir=None):
    """Download the wheel, check its sha256, extract the two CoNLL-U files into
    the cache (sha256 checked, written atomically); returns the directory."""
    target = turkish_cache_dir(cache_dir)
    print(f"fetching the Turkish Web Treebank from the wheel {TURKISH_WHEEL_SPEC} into "
          f"{target} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="meprop_twt_") as tmp:
        wheel = pip_download(TURKISH_WHEEL_SPEC, tmp, help_text=_help(target))
        got = sha256_of(wheel)
        if got != TURKISH_WHEEL_SHA256:
            raise ChecksumError(f"downloaded wheel {wheel.name} has sha256 {got}, expected "
                                f"{TURKISH_WHEEL_SHA256}")
        payloads = {}
        try:
            with zipfile.ZipFile(wheel) as zf:
                for name, (member, sha) in TURKISH_FILES.items():
                    payloads[name] = zf.read(member)
        except (zipfile.BadZipFile, KeyError) as e:
            raise DataFormatError(f"{wheel.name}: cannot extract the treebank: {e}") from e
    for name, data in payloads.items():
        got = hashlib.sha256(data).hexdigest()
        if got != TURKISH_FILES[name][1]:
            raise ChecksumError(f"{TURKISH_FILES[name][0]} in {TURKISH_WHEEL_SPEC} has sha256 "
                                f"{got}, expected {TURKISH_FILES[name][1]}")
        atomic_write(target / name, lambda f, data=data: f.write(data))
    return target


def split_by_index(sentences):
    """The package's split: sentence i (0-based) goes to train if i % 10 < 8,
    dev if == 8, test if == 9."""
    out = {"train": [], "dev": [], "test": []}
    for i, s in enumerate(sentences):
        r = i % 10
        out["train" if r < 8 else ("dev" if r == 8 else "test")].append(s)
    return out


def turkish_web(path=None, *, fetch=True, cache_dir=None):
    """The Turkish Web Treebank with the package's split (see the module doc)."""
    target = turkish_cache_dir(cache_dir)
    if path is not None or os.environ.get(ENV_TURKISH, "").strip():
        origin = "path argument" if path is not None else f"${ENV_TURKISH}"
        src = Path(path if path is not None else os.environ[ENV_TURKISH].strip()).expanduser()
        missing = [n for n in TURKISH_FILES if not (src / n).is_file()]
        if missing:
            raise DataError(f"Turkish Web Treebank not found in {src} ({origin}): missing "
                            f"{', '.join(missing)}.\n" + _help(target))
        checked = False
    else:
        src = target
        if not all((src / n).is_file() for n in TURKISH_FILES):
            if not fetch:
                raise DataError(f"Turkish Web Treebank not found: path argument not given, "
                                f"${ENV_TURKISH} not set, cache {src} incomplete, and "
                                "fetch=False.\n" + _help(target))
            src = fetch_turkish(cache_dir)
        checked = True
    out = {"train": [], "dev": [], "test": []}
    for name, (_, sha) in TURKISH_FILES.items():
        f = src / name
        if checked:
            got = sha256_of(f)
            if got != sha:
                raise ChecksumError(f"cached file {f} has sha256 {got}, expected {sha}: delete "
                                    f"it (rm {f}) and run again to re-fetch")
        for split, sents in split_by_index(read_conllu(f)).items():
            out[split] += sents
    return out


def conllu_files(train, dev, test=None):
    """A treebank from CoNLL-U files (gold trees): {"train", "dev", "test"}."""
    out = {}
    for split, f in (("train", train), ("dev", dev), ("test", test)):
        if f is None:
            if split != "test":
                raise ValueError(f"conllu_files: the {split} file is required")
            out[split] = None
            continue
        if not os.path.isfile(f):
            raise DataError(f"{split} file {f} does not exist")
        out[split] = read_conllu(f)
    return out
