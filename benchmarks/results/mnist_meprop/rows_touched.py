"""How many rows of W0 / W1 one batch-10, k = 20 step touches, with and without
dropout 0.2 (the rows the row-sparse Adam update reads and writes): the mean
over steps 7000-8000 of a run on the module path (seed 1, as the table's runs).

    python benchmarks/results/mnist_meprop/rows_touched.py
"""
import numpy as np

from meprop_cpu import data as mpdata
from meprop_cpu.nn import MLP, SoftmaxCrossEntropy
from meprop_cpu.train import build_optimizer

X, y = mpdata.mnist()["train"]
for dropout in (0.0, 0.2):
    m = MLP([784, 500, 500, 10], k=20, mode="topk", dropout=dropout, seed=1)
    opt = build_optimizer("adam", m.parameters(), lr=1e-3, sparse=True)
    loss = SoftmaxCrossEntropy()
    perm = np.random.default_rng(1).permutation(len(X))
    rows = []
    for s in range(8000):
        i0 = (s * 10) % (len(X) - 10)
        idx = perm[i0:i0 + 10]
        loss.forward(m.forward(X[idx]), y[idx])
        m.backward(loss.backward())
        if s >= 7000:
            rows.append([len(lin.W.grad.rows) for lin in m.linears[:2]])
        opt.step()
        opt.zero_grad()
    w0, w1 = np.mean(rows, axis=0)
    print(f"dropout {dropout}: rows touched per step W0 {w0:.1f}, W1 {w1:.1f} (of 500)")
