"""Data sets, one module each, all returning ``{"train": (X, y), "dev": (X, y),
"test": (X, y)}`` (or sentences / treebanks for the POS tagger and the parser):

* :mod:`.images`: MNIST (fetched from the package registry, md5-checked) and Fashion-MNIST;
* :mod:`.pos`: the CoNLL-2003 POS corpus and the gold WSJ sample;
* :mod:`.synthetic`: the data sets of the MLP command line by name, and ``synthetic``;
* :mod:`.common`: the exception types and the cache root;
* the Turkish Web Treebank lives with the parser, in :mod:`meprop_cpu.parsing.data`.
"""
from .common import ChecksumError, DataError, DataFormatError, cache_root
from .images import fashion_mnist, fetch_mnist, mnist, mnist_cache_path, read_idx
from .synthetic import DATASETS, load_dataset, synthetic_dataset

__all__ = ["DataError", "DataFormatError", "ChecksumError", "cache_root", "mnist",
           "fashion_mnist", "fetch_mnist", "mnist_cache_path", "read_idx", "DATASETS",
           "load_dataset", "synthetic_dataset"]
