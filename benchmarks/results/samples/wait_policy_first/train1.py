# usage: train1.py THREADS BATCH MAXTRAIN MODE(k20d|dense) EPOCHS
import sys, time, os, json
T, B, N, mode, E = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
import numpy as np
import meprop_cpu as mp
from meprop_cpu import datasets
from meprop_cpu.nn import MLP
from meprop_cpu.train import Trainer, build_optimizer
mp.set_num_threads(T)
d = datasets.mnist()
X, y = d["train"]
d = dict(d, train=(np.ascontiguousarray(X[:N]), np.ascontiguousarray(y[:N])))
k, dr = (20, 0.2) if mode == "k20d" else (None, 0.2 if mode == "densed" else 0.0)
m = MLP([784, 500, 500, 10], k=k, mode="dense" if k is None else "topk", dropout=dr, seed=0)
opt = build_optimizer("adam", m.parameters(), lr=1e-3, sparse=True)
tr = Trainer(m, opt, d, batch_size=B, epochs=E, seed=0, progress=False)
tr.fit()
ts = [r["time_epoch"] for r in tr.history if r["event"] == "epoch"]
cfg = mp.show_config()
print(json.dumps({"T": T, "B": B, "mode": mode, "epochs": ts, "dev": tr.best_dev,
                  "policy": cfg.get("wait_policy"), "path": tr.step_path}))
