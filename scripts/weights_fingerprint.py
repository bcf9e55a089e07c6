"""A digest of the weights and optimizer state after fixed MNIST runs: dense,
topk_dw, batch_dw, topk, topk + dropout, unified, each on the module and the fused path
(2 threads), and meSimp with compaction. Prints one sha256 prefix per run as
JSON; run it before and after a change that must not change results, and diff:

    python scripts/weights_fingerprint.py > before.json   # (then after the change)
    python scripts/weights_fingerprint.py > after.json && diff before.json after.json

Run it from outside the source folder (or with the extension built in place).
Needs MNIST (fetched on first use)."""
import hashlib
import json
import sys

import meprop_cpu as mp
from meprop_cpu import nn, optim
from meprop_cpu.data import mnist
from meprop_cpu.simplify import CycleSchedule, Simplifier
from meprop_cpu.train import Trainer


def digest(model, opt=None):
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.data.tobytes())
        if opt is not None:
            st = opt.state.get(id(p))
            if st:
                h.update(str(st["step"]).encode())
                for a in st["arrays"]:
                    h.update(a.tobytes())
    return h.hexdigest()[:16]


data = mnist()
small = {}
for split in ("train", "dev", "test"):
    X, y = data[split]
    n = 3000 if split == "train" else 500
    small[split] = (X[:n], y[:n])
out = {}
mp.set_num_threads(2)
for name, kw in [("dense", dict(k=None)), ("topk_dw", dict(k=20, mode="topk_dw")),
                 ("batch_dw", dict(k=20, mode="batch_dw")), ("topk", dict(k=20, mode="topk")),
                 ("topk_drop", dict(k=20, mode="topk", dropout=0.2)), ("unified", dict(k=20, mode="unified"))]:
    for fused in (False, True):
        model = nn.MLP([784, 200, 200, 10], seed=1, **kw)
        opt = optim.Adam(model.parameters())
        tr = Trainer(model, opt, small, batch_size=10, epochs=1,
                     progress=False, fused=fused)
        tr.fit()
        out[f"{name}/{'fused' if fused else 'module'}"] = digest(model, opt)
for fused in (False, True):
    model = nn.MLP([784, 300, 10], k=30, mode="topk", seed=2)
    opt = optim.Adam(model.parameters())
    simp = Simplifier(model, opt, prune_rate=0.1, schedule=CycleSchedule(cycle_epochs=1, steps_per_epoch=100))
    tr = Trainer(model, opt, small, batch_size=10, epochs=2, progress=False, fused=fused, callbacks=[simp])
    tr.fit()
    out[f"mesimp/{'fused' if fused else 'module'}"] = digest(model, opt) + " " + str(model.sizes)
json.dump(out, sys.stdout, indent=1)
