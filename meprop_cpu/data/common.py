"""What every data set loader shares: the exception types and the cache root."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

ENV_DATA = "MEPROP_DATA"


class DataError(RuntimeError):
    """Data could not be found, fetched or loaded (base class)."""


class DataFormatError(DataError, ValueError):
    """A data file exists but its content is malformed."""


class ChecksumError(DataFormatError):
    """A file's checksum differs from the expected one."""


def _file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$MEPROP_DATA``, else ``~/.cache/meprop_cpu``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = _env_path(ENV_DATA)
    if env is not None:
        return env
    return Path("~/.cache/meprop_cpu").expanduser()
