"""The checkpoint format: reading and validating a checkpoint, building the MLP
it holds, and the JSON encoding of RNG states (the writer is Trainer.save).

Format (``CHECKPOINT_VERSION`` 1): one ``.npz`` (``np.savez``, read back with
``allow_pickle=False``) holding

* ``param:<name>`` - every model parameter (``model.state_dict()`` names,
  e.g. ``param:0.W``), float32 at its current (possibly simplified) shape;
* ``opt:<i>:<j>`` - state array ``j`` of the optimizer's parameter ``i``;
* ``hits:<i>`` - the activeness counters of the ``i``-th Linear layer;
* ``meta`` - a uint8 array holding UTF-8 JSON: format name and version, the
  model class, config and current sizes, the optimizer kind, hyper-parameters,
  sparse flag and step counts, the trainer's epoch / step counters, best dev,
  test at best dev and history, and the RNG states (shuffle generator and
  every Dropout, as JSON dicts with big integers).

It is written to a temporary file in the same directory, flushed, fsync'd and
``os.replace``'d over the target, so an interrupted save leaves the previous
checkpoint intact.
"""
import json
import os

import numpy as np

from .._io import read_npz
from ..nn.models import MLP

__all__ = ["read_checkpoint", "model_from_checkpoint", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"]

CHECKPOINT_FORMAT = "meprop_cpu.checkpoint"
CHECKPOINT_VERSION = 1


def _to_json(obj):
    """RNG states etc. as JSON-able values (ndarrays tagged, big ints kept)."""
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _from_json(obj):
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


def read_checkpoint(path):
    """Read and validate a checkpoint: returns ``(meta, arrays)``.

    Raises FileNotFoundError if it does not exist and ValueError naming the
    file if it is truncated, corrupt or not a meprop_cpu checkpoint.
    """
    path = os.fspath(path)
    arrays = read_npz(path, "checkpoint")
    raw = arrays.pop("meta", None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"checkpoint {path} has no 'meta' entry: not a meprop_cpu checkpoint")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"checkpoint {path}: its meta entry is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} is not a meprop_cpu checkpoint "
                         f"(format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path} has format version {meta.get('version')!r}; "
                         f"this meprop_cpu reads version {CHECKPOINT_VERSION}")
    for key in ("model", "optimizer", "trainer", "rng"):
        if not isinstance(meta.get(key), dict):
            raise ValueError(f"checkpoint {path}: meta lacks the {key!r} section")
    for name, shape in meta["model"].get("params", []):
        a = arrays.get("param:" + name)
        if a is None or list(a.shape) != list(shape) or a.dtype != np.float32:
            raise ValueError(f"checkpoint {path}: parameter {name} is missing or malformed")
    return meta, arrays


def model_from_checkpoint(path):
    """Build an MLP with the checkpoint's config at its *current* sizes (after
    any meSimp shrinking) and load its weights; returns the model."""
    meta, arrays = read_checkpoint(path)
    m = meta["model"]
    if m.get("class") != "MLP" or not m.get("config"):
        raise ValueError(f"checkpoint {path} holds a {m.get('class')}, not an MLP with a config")
    cfg = dict(m["config"])
    cfg["sizes"] = m["sizes"]
    model = MLP(**cfg)
    model.load_state_dict({name[6:]: a for name, a in arrays.items() if name.startswith("param:")})
    return model


def _check_partial(tm, path, trainer):
    """Validate the mid-epoch position of a checkpoint written on Ctrl-C."""
    part = tm.get("partial")
    if part is None:
        return None
    if tm.get("batch_size") != trainer.batch_size or tm.get("n_train") != trainer.n_train:
        raise ValueError(f"checkpoint {path} was saved in the middle of an epoch with "
                         f"batch_size {tm.get('batch_size')} on {tm.get('n_train')} examples; "
                         f"it resumes only with the same (got {trainer.batch_size} on "
                         f"{trainer.n_train})")
    keys = ("epoch", "step", "loss_sum", "seen", "time_train", "time_forward",
            "time_backward", "time_update", "time_eval")
    if (not isinstance(part, dict) or any(k not in part for k in keys)
            or not isinstance(part["step"], int) or not isinstance(part["seen"], int)
            or part["epoch"] != tm.get("epoch", -1) + 1
            or not 0 <= part["step"] < trainer.steps_per_epoch):
        raise ValueError(f"checkpoint {path}: malformed mid-epoch position {part!r}")
    return dict(part)
