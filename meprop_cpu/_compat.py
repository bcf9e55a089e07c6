"""The package's earlier module names, kept importable: each old name is the
very module object at its new home (so ``from meprop_cpu.datasets import mnist``
and ``import meprop_cpu.tagger`` still work, and patching one patches both)."""
import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "meprop_cpu.datasets": "meprop_cpu.data.images",
    "meprop_cpu.pos_data": "meprop_cpu.data.pos",
    "meprop_cpu.lstm": "meprop_cpu.nn.lstm",
    "meprop_cpu.tagger": "meprop_cpu.tagging.model",
    "meprop_cpu.tagger_train": "meprop_cpu.tagging.train",
    "meprop_cpu.tagger_simplify": "meprop_cpu.tagging.simplify",
    "meprop_cpu.tta": "meprop_cpu.bench.tta",
    "meprop_cpu.bench_contention": "meprop_cpu.bench.contention",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass


def install():
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
