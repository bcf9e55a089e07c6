"""How much of a minibatch's gradient each meProp selection keeps: the
measurement behind the default mode "batch_dw" (docs/stability.md).

Trains the MNIST MLP 784-500-500-10 densely with this library (Adam 1e-3,
batch 100, seed 1) and, at initialisation and after each epoch, takes fixed
minibatches of 10 and 100 training images and compares, for the two hidden
layers, the weight gradient formed from k = 20 entries per example of the
output gradient dy ("per-example": modes topk_dw / topk) and from the B*k
largest |dy| of the batch ("batch": mode batch_dw) with the exact one:

* dy mass: the share of sum(dy^2) the kept entries carry;
* cos: the cosine between the sparsified and the exact weight gradient;
* norm: the norm of the sparsified weight gradient over the exact one's.

Float64 numpy on the model's weights; no timing.

    python benchmarks/gradient_mass.py [--epochs 2] [--out benchmarks/results/stability]
"""
import argparse
import json
import os
import sys

import numpy as np

import meprop_cpu as mp
from meprop_cpu import data as datasets, nn
from meprop_cpu.train import Trainer, build_optimizer

HERE = os.path.dirname(os.path.abspath(__file__))
K = 20


def _gradients(model, X, y):
    """[(dy, x)] of the hidden layers (first layer first) for the batch X, y,
    in float64, mean cross-entropy over the batch."""
    Ws = [lin.W.data.astype(np.float64) for lin in model.linears]
    bs = [lin.b.data.astype(np.float64) for lin in model.linears]
    hs = [X.astype(np.float64)]
    for i in range(len(Ws)):
        z = hs[-1] @ Ws[i].T + bs[i]
        hs.append(np.maximum(z, 0) if i < len(Ws) - 1 else z)
    z = hs[-1] - hs[-1].max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    dy = p
    dy[np.arange(len(y)), y] -= 1
    dy /= len(y)
    out = []
    for i in range(len(Ws) - 1, -1, -1):
        if i < len(Ws) - 1:
            out.append((dy, hs[i]))
        if i > 0:
            dy = (dy @ Ws[i]) * (hs[i] > 0)
    return out[::-1]


def _masks(dy, k):
    a = np.abs(dy)
    B, n = dy.shape
    per = np.zeros(dy.shape, bool)
    np.put_along_axis(per, np.argpartition(-a, k - 1, axis=1)[:, :k], True, axis=1)
    batch = np.zeros(dy.shape, bool)
    batch.reshape(-1)[np.argpartition(-a.reshape(-1), B * k - 1)[:B * k]] = True
    return {"per_example": per, "batch_topk": batch}


def measure(model, X, y, k=K):
    rows = []
    for layer, (dy, x) in enumerate(_gradients(model, X, y), start=1):
        G = dy.T @ x
        row = {"layer": layer}
        for name, M in _masks(dy, k).items():
            Gm = (dy * M).T @ x
            row[name] = {"dy_mass": float(np.sum((dy * M) ** 2) / np.sum(dy ** 2)),
                         "cos": float(np.sum(Gm * G) / (np.linalg.norm(Gm) * np.linalg.norm(G))),
                         "norm": float(np.linalg.norm(Gm) / np.linalg.norm(G))}
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default=os.path.join(HERE, "results", "stability"))
    a = p.parse_args(argv)
    d = datasets.mnist()
    X, y = d["train"]
    pick = np.random.default_rng(99).permutation(len(X))
    batches = {B: (X[pick[:B]], y[pick[:B]]) for B in (10, 100)}
    model = nn.MLP([784, 500, 500, 10], k=None, mode="dense", seed=1)
    opt = build_optimizer("adam", model.parameters())
    points = []

    def snap(when):
        for B, (xb, yb) in batches.items():
            for r in measure(model, xb, yb):
                points.append(dict(r, when=when, batch_size=B))

    snap("initialisation")
    tr = Trainer(model, opt, d, batch_size=100, epochs=1, seed=1, progress=False)
    for e in range(1, a.epochs + 1):
        tr.epochs = e
        tr.fit()   # continues from the epochs done
        snap(f"after epoch {e} (dev {tr.history[-1]['dev_acc']:.2f} %)")
    cmd = "python benchmarks/gradient_mass.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["# How much of the minibatch gradient a top-k selection keeps", "",
             f"Command: `{cmd.strip()}`. MNIST MLP 784-500-500-10 trained densely (Adam, "
             "batch 100, seed 1); k = 20 per example. dy mass: share of sum(dy^2) in the kept "
             "entries; cos / norm: cosine and norm ratio of the sparsified weight gradient "
             "against the exact one.", "",
             "| model | batch | layer | per-example: dy mass | cos | norm | "
             "batch top-k: dy mass | cos | norm |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in points:
        pe, bt = r["per_example"], r["batch_topk"]
        lines.append(f"| {r['when']} | {r['batch_size']} | {r['layer']} | {pe['dy_mass']:.2f} | "
                     f"{pe['cos']:.2f} | {pe['norm']:.2f} | {bt['dy_mass']:.2f} | "
                     f"{bt['cos']:.2f} | {bt['norm']:.2f} |")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gradient_mass.json"), "w") as f:
        json.dump({"command": cmd.strip(), "k": K, "points": points}, f, indent=1)
    with open(os.path.join(a.out, "gradient_mass.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    mp.set_num_threads(1)
    main()
