"""The data sets the MLP command line trains on, by name: MNIST, Fashion-MNIST
and ``synthetic`` (a small, seeded, well-separated 10-class problem with 784
features built in-process: no files, no network; a smoke test, not a benchmark)."""
import os

import numpy as np

from .images import IDX_FILES, MNIST_PKL_NAME, fashion_mnist, mnist

DATASETS = ("mnist", "fashion-mnist", "synthetic")
N_FEATURES, N_CLASSES = 784, 10


def synthetic_dataset(n_train=1000, n_dev=200, n_test=200, n_features=N_FEATURES,
                      n_classes=N_CLASSES, seed=0):
    """A seeded, well-separated classification problem shaped like MNIST.

    Each class has a random prototype in [0, 1]^n_features; examples are the
    prototype plus Gaussian noise. Returns the same dict as mnist().
    """
    rng = np.random.default_rng(seed)
    protos = rng.random((n_classes, n_features), dtype=np.float32)
    out = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        y = rng.integers(0, n_classes, size=n).astype(np.int64)
        X = protos[y] + rng.normal(0.0, 0.35, size=(n, n_features)).astype(np.float32)
        out[split] = (np.ascontiguousarray(X, dtype=np.float32), y)
    return out


def _has_mnist_files(d):
    return (os.path.isfile(d) or os.path.isfile(os.path.join(d, MNIST_PKL_NAME))
            or any(os.path.exists(os.path.join(d, n)) or os.path.exists(os.path.join(d, n + ".gz"))
                   for n in IDX_FILES.values()))


def load_dataset(name, data_dir=None):
    """{"train", "dev", "test"} for a data set name of DATASETS.

    mnist: ``data_dir`` holding the IDX files or mnist.pkl.gz is read
    directly; any other directory is used as the cache root (the file is
    fetched into ``DIR/mnist/`` if missing). fashion-mnist: ``data_dir`` holds
    the IDX files. Raises DataError.
    """
    if name == "synthetic":
        return synthetic_dataset()
    if name == "mnist":
        if data_dir is not None and _has_mnist_files(data_dir):
            return mnist(data_dir)
        return mnist(cache_dir=data_dir)
    if name == "fashion-mnist":
        return fashion_mnist(data_dir)
    raise ValueError(f"unknown data set {name!r}; expected one of {DATASETS}")
