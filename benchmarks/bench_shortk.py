"""The AVX2 dense products' two orders for a short K, side by side in one process.

For a short K (one K block) into a large C, the AVX2 nn / tn products run
their row tiles outer over once-packed panels, writing C row after row
(``_core.set_dense_short_k(1)``, the default); ``set_dense_short_k(0)`` keeps
the column-outer order, which writes 16-column strips. Both give the same
bits. This script alternates the two in blocks (the order of the pair
flipping every round, 2 warm-up rounds) and prints medians:

* the LSTM tagger's fused training step, dense, h = 500, one CoNLL-2003
  sentence per step (dW = dZ^T X and dU = dZ^T H over the sentence's tokens);
* the MNIST MLP 784-500-500-10's fused training step, dense, batch 10, Adam,
  dropout 0.2 (dW over 10 examples);
* those products alone (``matmul_tn``, 50 calls per block).

    python benchmarks/bench_shortk.py [--threads 1,2] [--rounds 12]

It needs CoNLL-2003 and MNIST (fetched by the library's loaders) and an
AVX2 CPU; elsewhere both settings run the same code.
"""
import argparse
import os
import statistics
import time

import numpy as np

import meprop_cpu as mp
from meprop_cpu import _core, nn
from meprop_cpu import data as mpdata
from meprop_cpu.bench.pos import MepropRunner
from meprop_cpu.data import pos as pos_data
from meprop_cpu.tagging import PosTagger, Vocab, encode
from meprop_cpu.steps import make_step
from meprop_cpu.train import build_optimizer

BLOCK = 40        # tagger steps per block
MLP_BLOCK = 200   # MLP steps per block


def alternate(rounds, n, one, scale):
    """Times per call of ``one(on)`` (n calls per block, times ``scale``) for
    on = 0 and 1, the two alternating, the first 2 rounds dropped."""
    res = {0: [], 1: []}
    for rnd in range(rounds):
        for on in ((0, 1) if rnd % 2 else (1, 0)):
            _core.set_dense_short_k(on)
            t0 = time.perf_counter()
            for _ in range(n):
                one(on)
            if rnd >= 2:
                res[on].append(scale * (time.perf_counter() - t0) / n)
    return res


def tagger_blocks(rounds):
    d = pos_data.conll2003()
    vocab = Vocab.build(d["train"])
    sents = encode(d["train"][:2000], vocab)
    ml = max(len(s[0]) for s in sents)
    runs = {on: MepropRunner(PosTagger(vocab, hidden=500, k=None, seed=0), fused=True,
                             max_len=ml) for on in (0, 1)}
    pos = {0: 0, 1: 0}

    def one(on):
        runs[on].step(*sents[pos[on] % len(sents)])
        pos[on] += 1
    return alternate(rounds, BLOCK, one, 1e3)


def mlp_blocks(rounds):
    X, y = mpdata.mnist()["train"]
    X, y = np.ascontiguousarray(X[:20000]), np.ascontiguousarray(y[:20000])
    steps = {}
    for on in (0, 1):
        m = nn.MLP([784, 500, 500, 10], dropout=0.2, seed=0)
        steps[on] = make_step(m, build_optimizer("adam", m.parameters()),
                              nn.SoftmaxCrossEntropy(), 10)
    order = np.random.default_rng(0).permutation(X.shape[0])
    pos = {0: 0, 1: 0}

    def one(on):
        b = pos[on] % (X.shape[0] // 10)
        steps[on].step_rows(X, y, order[10 * b:10 * b + 10])
        pos[on] += 1
    return alternate(rounds, MLP_BLOCK, one, 1e6)


def product_blocks(M, K, N, rounds):
    """matmul_tn C (M, N) = A^T B with A (K, M): 50 calls per block."""
    rng = np.random.default_rng(0)
    A, B = rng.random((K, M), dtype=np.float32), rng.random((K, N), dtype=np.float32)
    C = np.empty((M, N), np.float32)
    nt = mp.get_num_threads()
    return alternate(rounds, 50, lambda on: _core.matmul_tn(A, B, C, nt), 1e6)


PRODUCTS = (("dW of the tagger's U: tn 2000 x 14 x 500, µs", (2000, 14, 500)),
            ("dW of the tagger's W: tn 2000 x 14 x 190, µs", (2000, 14, 190)),
            ("dW of the MLP's first layer: tn 500 x 10 x 784, µs", (500, 10, 784)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args(argv)
    print(f"dense level {_core.dense_level()} (1 = AVX2), load average "
          f"{[round(x, 2) for x in os.getloadavg()]}")
    print("| threads | workload | column-outer | row-outer | ratio |")
    print("|---:|---|---:|---:|---:|")
    old = _core.set_dense_short_k(1)
    try:
        for nt in (int(t) for t in args.threads.split(",")):
            mp.set_num_threads(nt)
            work = [("tagger dense step, ms / sentence", tagger_blocks),
                    ("MNIST MLP dense step (batch 10), µs", mlp_blocks)]
            work += [(name, lambda r, shape=shape: product_blocks(*shape, r))
                     for name, shape in PRODUCTS]
            for name, fn in work:
                r = fn(args.rounds)
                a, b = statistics.median(r[0]), statistics.median(r[1])
                print(f"| {nt} | {name} | {a:.3f} | {b:.3f} | {a / b:.2f}x |", flush=True)
    finally:
        _core.set_dense_short_k(old)


if __name__ == "__main__":
    main()
