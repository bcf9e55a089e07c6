"""Side experiment: the runs of the table with the authors' C#
initialisation (GlorotNormalInit: N(0, sqrt(6 / (fan_in + fan_out))), i.e. a
normal whose standard deviation is the uniform Glorot bound) instead of this
project's Glorot-uniform. Same protocol otherwise (Adam 1e-3, batch 10, 20
epochs, 1 thread, test at best dev). Run from the repository root:

    python benchmarks/results/mnist_meprop/normal_init_run.py 1 k20_normalinit 20
    python benchmarks/results/mnist_meprop/normal_init_run.py 1 dense_normalinit dense

(writes /tmp/<tag>.jsonl; the copies here are those logs.)
"""
import os, sys, json
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
import numpy as np
import meprop_cpu as mp
from meprop_cpu import nn, data as mpdata
from meprop_cpu.train import Trainer, build_optimizer
mp.set_num_threads(1)
seed = int(sys.argv[1]); tag = sys.argv[2]; k = None if sys.argv[3] == "dense" else int(sys.argv[3])
d = mpdata.mnist()
m = nn.MLP([784,500,500,10], k=k, mode="topk" if k else "dense", seed=seed)
rng = np.random.default_rng(seed + 99)
for L in m.linears:
    n_out, n_in = L.W.data.shape
    L.W.data[...] = rng.normal(0, np.sqrt(6.0 / (n_in + n_out)), size=(n_out, n_in))
opt = build_optimizer("adam", m.parameters())
tr = Trainer(m, opt, d, batch_size=10, epochs=20, seed=seed, progress=False, log_json=f"/tmp/{tag}.jsonl")
s = tr.fit()
print(json.dumps({"tag": tag, "best_dev": s["best_dev"], "test": s["test_at_best_dev"], "epoch": s["best_epoch"]}))
