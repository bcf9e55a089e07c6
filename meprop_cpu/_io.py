"""File helpers shared by checkpoints, model files and the data cache."""
import os
import tempfile
import zipfile

import numpy as np

__all__ = ["atomic_write", "atomic_savez", "read_npz"]


def atomic_write(path, write):
    """Call ``write(f)`` on a temporary file beside ``path``, flush and fsync it,
    then rename it over ``path``: an interrupted write never leaves a partial
    file under ``path`` and never destroys the previous one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable; not possible everywhere
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def atomic_savez(path, arrays):
    """``np.savez`` of ``arrays`` to ``path`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def read_npz(path, what):
    """All arrays of an ``.npz`` file (no pickle). ``what`` names the file in
    errors ("checkpoint", "model file"): FileNotFoundError if it is missing,
    ValueError naming it if it is truncated, corrupt or not an archive."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with open(path, "rb") as f:   # else np.load would call a non-zip file a pickle
            head = f.read(4)
        if head != b"PK\x03\x04":
            raise ValueError(f"not an .npz archive: it starts with {head!r}, not PK\\x03\\x04")
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("it is a single .npy array, not an .npz archive")
            return {name: z[name] for name in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError) as e:
        raise ValueError(f"{what} {path} is truncated or corrupt ({type(e).__name__}: {e})") \
            from e
