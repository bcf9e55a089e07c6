"""Where a training step of the parser spends its time, module by module.

    python benchmarks/bench_parse_step.py [--threads 2] [--k 20] [--steps 40]
        [--variants distinct,plain] [--json OUT]

One step = forward, loss, backward, Adam update on a batch of 1,000 oracle
examples of the Turkish Web Treebank (the library's loader), the network
500-500 with the cube activation. Each module's forward and backward is
timed by wrapping its methods (the wrappers cost ~1 µs a call); medians over
the steps after the first 5. The variants alternate step by step:
"distinct" is the default first layer (once per distinct id of each feature
position, include/meprop/featprod.h), "plain" the products over the 2,400
embedding inputs (ParserNet(distinct=False)); the same weights and batches.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import meprop_cpu as mp  # noqa: E402
from meprop_cpu.nn import SoftmaxCrossEntropy  # noqa: E402
from meprop_cpu.parsing import data, transition as tr  # noqa: E402
from meprop_cpu.parsing.model import ParserNet  # noqa: E402
from meprop_cpu.train import build_optimizer  # noqa: E402


class Timed:
    """Per-name lists of seconds; wrap(obj, attr, name) times obj.attr calls."""

    def __init__(self):
        self.t = {}

    def add(self, name, seconds):
        self.t.setdefault(name, []).append(seconds)

    def wrap(self, obj, attr, name):
        f = getattr(obj, attr)

        def timed(*a):
            t0 = time.perf_counter()
            r = f(*a)
            self.add(name, time.perf_counter() - t0)
            return r
        setattr(obj, attr, timed)


def build(variant, vocab, k, seed):
    net = ParserNet(len(vocab.words), len(vocab.tags), vocab.n_labels, k=k, seed=seed,
                    distinct=variant == "distinct")
    timer = Timed()
    if net.first is not None:
        timer.wrap(net.first, "forward", "first layer forward")
        timer.wrap(net.first, "backward", "first layer backward (+ embeddings)")
    else:
        timer.wrap(net.modules[0], "forward", "embedding forward")
        timer.wrap(net.modules[0], "backward", "embedding backward")
        timer.wrap(net.modules[1], "forward", "first layer forward")
        timer.wrap(net.modules[1], "backward", "first layer backward")
    for i, m in enumerate(net.modules[2:], 2):
        timer.wrap(m, "forward", f"{i} {type(m).__name__} forward")
        timer.wrap(m, "backward", f"{i} {type(m).__name__} backward")
    opt = build_optimizer("adam", net.parameters(), lr=1e-3)
    return net, opt, timer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=20, help="meProp k (0: dense)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--variants", default="distinct,plain")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    mp.set_num_threads(args.threads)
    tb = data.turkish_web()
    vocab = tr.Vocab.build(tb["train"])
    X, y, _ = tr.make_examples(tb["train"], vocab)
    perm = np.random.default_rng(0).permutation(X.shape[0])
    k = args.k or None
    variants = [v.strip() for v in args.variants.split(",")]
    runs = {v: build(v, vocab, k, 1) for v in variants}
    loss = SoftmaxCrossEntropy()
    for s in range(args.steps):
        sel = perm[(s * 1000) % (X.shape[0] - 1000):][:1000]
        xb, yb = np.ascontiguousarray(X[sel]), y[sel].astype(np.int64)
        for v in variants:
            net, opt, timer = runs[v]
            t0 = time.perf_counter()
            out = net.forward(xb)
            t1 = time.perf_counter()
            loss.forward(out, yb)
            d = loss.backward()
            t2 = time.perf_counter()
            net.backward(d)
            t3 = time.perf_counter()
            opt.step()
            t4 = time.perf_counter()
            for name, a, b in (("forward", t0, t1), ("loss", t1, t2), ("backward", t2, t3),
                               ("update", t3, t4), ("step", t0, t4)):
                timer.add("= " + name, b - a)
    res = {"argv": sys.argv, "threads": args.threads, "k": k, "steps": args.steps,
           "loadavg": os.getloadavg(), "simd": mp._core.simd_name(), "ms": {}}
    print(f"threads {args.threads}, k {k}, median ms per step of 1,000 examples over steps "
          f"6-{args.steps}")
    names = []
    for v in variants:
        for n in runs[v][2].t:
            if n not in names:
                names.append(n)
    print("| part | " + " | ".join(variants) + " |")
    print("|---|" + "---:|" * len(variants))
    for n in sorted(names, key=lambda n: (n.startswith("="), names.index(n))):
        row = []
        for v in variants:
            ts = runs[v][2].t.get(n)
            ms = 1e3 * float(np.median(ts[5:])) if ts and len(ts) > 5 else None
            res["ms"].setdefault(v, {})[n] = ms
            row.append("-" if ms is None else f"{ms:.2f}")
        print(f"| {n} | " + " | ".join(row) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
