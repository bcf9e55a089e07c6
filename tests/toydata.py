"""A tiny synthetic classification problem for trainer-level tests."""
import numpy as np


def blobs(n_in, n_classes, n_train=60, n_dev=20, n_test=20, seed=0):
    """{"train", "dev", "test": (X float32 (n, n_in), y int64 (n,))}: Gaussian
    blobs around one random prototype per class (well separable)."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(0, 1.5, size=(n_classes, n_in)).astype(np.float32)
    out = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        y = rng.integers(0, n_classes, size=n).astype(np.int64)
        X = (protos[y] + rng.normal(0, 0.5, size=(n, n_in))).astype(np.float32)
        out[split] = (X, y)
    return out
