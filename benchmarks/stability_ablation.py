"""Ablation behind the default meProp mode (docs/stability.md): which part of
the paper's top-k makes per-example meProp unstable without dropout?

Each hidden Linear keeps two selections apart: ``--kw`` entries of each
example's output gradient form the weight gradient (this library's kernels,
the row-sparse RowGrad), and ``--xmode`` / ``--kx`` decide which entries form
the input gradient passed to the layer below, computed here in numpy:

    same          the paper: the same top-kw entries for both
    dense         the whole dy (what mode "topk_dw" does, in C)
    topk          the top-kx entries (kx may differ from kw)
    topk_scaled   top-kx, rescaled to keep each row's L1 norm
    l2scaled      top-kx, rescaled to keep each row's L2 norm
    unbiased      top-kx plus r random others scaled by (n - kx) / r

MNIST 784-500-500-10, Adam, batch 10, module path, one thread. One JSON
line per run on stdout, e.g.

    python benchmarks/stability_ablation.py --epochs 2 --xmode same
    python benchmarks/stability_ablation.py --epochs 2 --kw 500 --xmode topk --kx 20
"""
import json, time, argparse
import numpy as np
import meprop_cpu as mp
from meprop_cpu import data as mpdata, nn, train

class ProtoLinear(nn.Linear):
    def backward(self, dy):
        kw, kx, xmode = self.kw, self.kx, self.xmode
        W = self.W.data
        dx = None
        if self.needs_input_grad:
            if xmode == "same":
                dyx = None
            elif xmode == "dense" or kx is None:
                dyx = dy
            else:
                a = np.abs(dy)
                B, n = dy.shape
                part = np.argpartition(-a, kx - 1, axis=1)[:, :kx]
                m = np.zeros_like(dy)
                np.put_along_axis(m, part, np.take_along_axis(dy, part, 1), 1)
                if xmode == "topk":
                    dyx = m
                elif xmode == "topk_scaled":   # rescale to keep the L1 norm
                    s = a.sum(1, keepdims=True) / np.maximum(np.abs(m).sum(1, keepdims=True), 1e-30)
                    dyx = m * s
                elif xmode == "unbiased":      # top-kx + r random of the rest, scaled
                    r = self.r
                    rest = np.ones_like(dy, dtype=bool)
                    np.put_along_axis(rest, part, False, 1)
                    dyx = m.copy()
                    for b in range(B):
                        cand = np.flatnonzero(rest[b])
                        pick = self.rng.choice(cand, size=min(r, len(cand)), replace=False)
                        dyx[b, pick] = dy[b, pick] * (len(cand) / len(pick))
                elif xmode == "l2scaled":
                    s = np.linalg.norm(dy, axis=1, keepdims=True) / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-30)
                    dyx = m * s
            if dyx is not None:
                dx = (dyx @ W).astype(np.float32)
        k0, g0 = self.k, self.needs_input_grad
        self.k = kw
        if xmode != "same":
            self.needs_input_grad = False
        try:
            r = super().backward(dy)
        finally:
            self.k, self.needs_input_grad = k0, g0
        return r if xmode == "same" else dx

def build(sizes, kw, kx, xmode, seed, dropout, r=20, wmode="topk"):
    m = nn.MLP(sizes, k=kw, mode=wmode, dropout=dropout, seed=seed)
    lins = m.linears
    for i, l in enumerate(lins[:-1]):
        l.__class__ = ProtoLinear
        l.kw, l.kx, l.xmode, l.r = kw, kx, xmode, r
        l.rng = np.random.default_rng(seed + 100 + i)
    return m

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--kw", type=int, default=20)
    ap.add_argument("--kx", type=int, default=None)
    ap.add_argument("--xmode", default="same")
    ap.add_argument("--r", type=int, default=20)
    ap.add_argument("--opt", default="adam")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--dense", action="store_true")
    ap.add_argument("--tag", default="")
    ap.add_argument("--wmode", default="topk", choices=("topk", "unified"),
                    help="the selection that forms the weight gradient (default per-example)")
    ap.add_argument("--dense-update", action="store_true",
                    help="the optimizer updates every row (sparse=False)")
    a = ap.parse_args()
    mp.set_num_threads(1)
    data = mpdata.mnist() if a.dataset == "mnist" else mpdata.fashion_mnist()
    sizes = [784, 500, 500, 10]
    if a.dense:
        model = nn.MLP(sizes, k=None, mode="dense", dropout=a.dropout, seed=a.seed)
    else:
        model = build(sizes, a.kw, a.kx, a.xmode, a.seed, a.dropout, a.r, a.wmode)
    opt = train.build_optimizer(a.opt, model.parameters(), lr=a.lr,
                                sparse=not a.dense_update)
    tr = train.Trainer(model, opt, data, batch_size=a.batch, epochs=a.epochs, seed=a.seed,
                       fused=False, progress=False)
    t = time.time()
    tr.fit()
    out = {"args": vars(a), "dev": [round(r["dev_acc"], 2) for r in tr.history],
           "loss": [round(r["train_loss"], 3) for r in tr.history],
           "test_at_best": tr.test_at_best_dev, "wall": round(time.time() - t, 1)}
    print(json.dumps(out), flush=True)
