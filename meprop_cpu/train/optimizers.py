"""Optimizers by name, with the papers' default learning rates."""
from ..optim import SGD, AdaGrad, Adam

__all__ = ["build_optimizer", "OPTIMIZERS", "DEFAULT_LR"]

OPTIMIZERS = {"adam": Adam, "adagrad": AdaGrad, "sgd": SGD}
DEFAULT_LR = {"adam": 1e-3, "adagrad": 0.01, "sgd": 0.1}


def build_optimizer(name, params, lr=None, sparse=True, clip=0.0, weight_decay=0.0):
    """An optimizer by name: "adam" | "adagrad" | "sgd".

    ``lr=None`` takes the paper's default (adam 1e-3, adagrad 0.01, sgd 0.1).
    ``sparse=False`` updates every weight each step (the papers' setting);
    ``clip`` > 0 clips each gradient element to [-clip, clip].
    """
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"build_optimizer: name must be one of {sorted(OPTIMIZERS)}, "
                         f"got {name!r}")
    if lr is None:
        lr = DEFAULT_LR[key]
    return OPTIMIZERS[key](list(params), lr=lr, sparse=sparse, clip=clip,
                           weight_decay=weight_decay)
