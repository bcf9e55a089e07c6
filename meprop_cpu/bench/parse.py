"""The dependency parser: this library (dense, meProp k = 10 / 20 / 40, meSimp)
against the same network in PyTorch, on the Turkish Web Treebank.

Same oracle examples (features of the training sentences' static-oracle
configurations), same initial weights (copied from this library's
ParserNet), same minibatch order (the Trainer's seeded permutation per
epoch), same optimizer semantics (Adam lr 0.001 on the Linear layers; the
embeddings row-sparse: PyTorch's SparseAdam on sparse embedding gradients),
same thread count for every variant. Dev / test UAS and LAS of every
variant, PyTorch's included, come from the same greedy parser (the weights
PyTorch trained are copied into a ParserNet and parsed with this library's
C parser): the parsing algorithm is the same, only who trained differs.

Two parts:
  --part train   (default) E epochs per variant and seed, dev UAS / LAS per
                 epoch, test at the best dev, per-epoch time split, time to
                 the dense model's best dev UAS (same seed).
  --part speed   per thread count: one training epoch of every variant
                 (rotated order, median over --repeats), and parsing speed
                 (sentences/s) of the dev + test sentences with and without
                 the pre-computation.
  --part parse   the parsing speed only, --repeats rounds over the thread
                 counts (a parse of the 970 sentences takes well under a
                 second, so one measurement says little on a shared machine).

    meprop-cpu bench --parse --part train --variants dense --seeds 1 --epochs 6 \
        --threads 2 --name train_dense_s1          # one file per variant and seed
    meprop-cpu bench --parse --part speed --threads 2 --repeats 1 --name speed_2t
    python benchmarks/report_parse.py --epochs 5   # -> results/parse/README.md

(``python benchmarks/bench_parse.py`` takes the same options.) Results:
<results>/parse/<name>.json, where <results> is benchmarks/results in a
checkout, else ./meprop_bench_results (--out to choose).
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

import meprop_cpu as mp
from meprop_cpu.parsing import data, transition as tr
from meprop_cpu.parsing.model import Parser
from meprop_cpu.parsing.train import ParserTrainer
from meprop_cpu.simplify import CycleSchedule, Simplifier
from meprop_cpu.train import build_optimizer

from .._options import _int_list, _positive_float, _positive_int, _probability
from .report import _default_out


def set_threads(n):
    mp.set_num_threads(n)
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=n, user_api="blas")
    except ImportError:
        pass


# ------------------------------------------------------------------ PyTorch

def torch_model(net):
    """The same network in PyTorch, initialised with ``net``'s weights."""
    import torch

    class TorchParser(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.ModuleList()
            for E in net.embedding.tables:
                e = torch.nn.Embedding(E.data.shape[0], E.data.shape[1], sparse=True)
                e.weight.data.copy_(torch.from_numpy(E.data))
                self.emb.append(e)
            self.lins = torch.nn.ModuleList()
            for m in net.linears:
                lin = torch.nn.Linear(m.n_in, m.n_out)
                lin.weight.data.copy_(torch.from_numpy(m.W.data))
                lin.bias.data.copy_(torch.from_numpy(m.b.data))
                self.lins.append(lin)
            self.act = net.config["activation"]

        def forward(self, X):
            B = X.shape[0]
            e = torch.cat([self.emb[0](X[:, :18]), self.emb[1](X[:, 18:36]),
                           self.emb[2](X[:, 36:])], dim=1).reshape(B, -1)
            h = e
            for i, lin in enumerate(self.lins):
                h = lin(h)
                if i < len(self.lins) - 1:
                    h = h * h * h if self.act == "cube" else torch.relu(h)
            return h
    return TorchParser()


def copy_back(tm, net):
    """Weights trained by PyTorch -> ``net`` (for parsing with the C parser)."""
    for E, e in zip(net.embedding.tables, tm.emb):
        E.data = np.ascontiguousarray(e.weight.detach().numpy(), dtype=np.float32)
    for m, lin in zip(net.linears, tm.lins):
        m.W.data = np.ascontiguousarray(lin.weight.detach().numpy(), dtype=np.float32)
        m.b.data = np.ascontiguousarray(lin.bias.detach().numpy(), dtype=np.float32)


def train_torch(parser, X, y, tb, epochs, batch, seed, lr, on_epoch=None):
    import torch
    tm = torch_model(parser.net)
    emb_params = list(tm.emb.parameters())
    opt_s = torch.optim.SparseAdam(emb_params, lr=lr)
    opt_d = torch.optim.Adam(list(tm.lins.parameters()), lr=lr)
    Xt = torch.from_numpy(X.astype(np.int64))
    yt = torch.from_numpy(y)
    rng = np.random.default_rng(seed)            # the Trainer's shuffle
    n = X.shape[0]
    hist = []
    for ep in range(1, epochs + 1):
        perm = torch.from_numpy(rng.permutation(n))
        tf = tb_ = tu = 0.0
        loss_sum = 0.0
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            a = time.perf_counter()
            out = tm(Xt[idx])
            loss = torch.nn.functional.cross_entropy(out, yt[idx])
            b = time.perf_counter()
            loss.backward()
            c = time.perf_counter()
            opt_s.step()
            opt_d.step()
            opt_s.zero_grad()
            opt_d.zero_grad()
            d = time.perf_counter()
            tf, tb_, tu = tf + b - a, tb_ + c - b, tu + d - c
            loss_sum += float(loss) * idx.shape[0]
        te = time.perf_counter() - t0
        copy_back(tm, parser.net)
        rec = {"epoch": ep, "train_loss": loss_sum / n, "time_epoch": te, "time_forward": tf,
               "time_backward": tb_, "time_update": tu, "time_backward_linear": None,
               "hidden_sizes": parser.net.hidden_sizes}
        if tb is not None:
            rec["dev"] = parser.evaluate(tb["dev"])
        hist.append(rec)
        if on_epoch:
            on_epoch(rec)
    return hist


# ------------------------------------------------------------------ this library

# k of each variant; its mode: the parser's default (topk_dw, parsing.model.DEFAULT_MODE;
# each file records its "modes") unless MODES says otherwise
VARIANTS = {"torch": None, "dense": None, "k10": 10, "k20": 20, "k40": 40, "mesimp": 20,
            "k20p": 20, "k20h": 20, "k20b": 20, "dense_plain": None, "k20_plain": 20}
# *_plain: the first hidden layer as plain products over the 2,400 embedding inputs
# (ParserNet(distinct=False)) instead of once per distinct id of each feature position
PLAIN = {"dense_plain", "k20_plain"}
MODES = {"k20p": "topk",      # the paper's meProp on every hidden layer
         "k20b": "batch_dw"}  # the MLP's default: batch-wide top-k, exact dx
# k20h: the paper's top-k on the first hidden layer (whose input gradient goes to the
# embeddings: sparse, cheap), the default mode above it (the exact input gradient for
# that layer)
FIRST_LAYER_MODE = {"k20h": "topk"}


def make_parser(vocab, variant, seed, hidden, dropout=0.0):
    k = VARIANTS[variant]
    p = Parser.create(vocab, hidden=hidden, k=k if variant != "torch" else None, seed=seed,
                      dropout=dropout, mode=MODES.get(variant), distinct=variant not in PLAIN)
    if variant in FIRST_LAYER_MODE:
        p.net.linears[0].mode = FIRST_LAYER_MODE[variant]
    return p


def train_ours(parser, variant, ex, tb, epochs, batch, seed, lr, cycle_epochs, on_epoch=None,
               prune_rate=0.1, reset="authors"):
    opt = build_optimizer("adam", parser.net.parameters(), lr=lr)
    cbs = []
    if variant == "mesimp":
        cbs.append(Simplifier(parser.net, opt, prune_rate=prune_rate,
                              schedule=CycleSchedule(cycle_epochs, 8, reset=reset)))
    hist = []

    def cb(trainer, rec):
        r = {k: rec[k] for k in ("epoch", "train_loss", "time_epoch", "time_forward",
                                 "time_backward", "time_update", "time_backward_linear",
                                 "hidden_sizes")}
        r["dev"] = rec["dev_scores"]
        hist.append(r)
        if on_epoch:
            on_epoch(r)
    t = ParserTrainer(parser, opt, {"train": tb["train"], "dev": tb["dev"]}, batch_size=batch,
                      epochs=epochs, seed=seed, progress=False, examples=ex, on_epoch=cb,
                      callbacks=cbs)
    t.fit()
    return hist


def run_variant(variant, vocab, ex, tb, epochs, batch, seed, lr, hidden, cycle_epochs,
                evaluate=True, log=print, dropout=0.0, prune_rate=0.1, reset="authors"):
    if dropout and variant == "torch":
        raise ValueError("--dropout: the PyTorch variant has no dropout")
    parser = make_parser(vocab, variant, seed, hidden, dropout)
    X, y, _ = ex
    best = {"dev_uas": -1.0}

    def on_epoch(rec):
        d = rec["dev"]
        if evaluate and d["uas"] > best["dev_uas"]:
            best.update(dev_uas=d["uas"], dev_las=d["las"], epoch=rec["epoch"],
                        test=parser.evaluate(tb["test"]))
            rec["test_at_new_best_dev"] = best["test"]
        log(f"  {variant} seed {seed} epoch {rec['epoch']}: loss {rec['train_loss']:.4f} dev UAS "
            f"{d['uas']:.2f} LAS {d['las']:.2f}  {rec['time_epoch']:.2f}s (fwd "
            f"{rec['time_forward']:.2f} bwd {rec['time_backward']:.2f} upd "
            f"{rec['time_update']:.2f})  hidden {rec['hidden_sizes']}")
    if variant == "torch":
        hist = train_torch(parser, X, y, tb, epochs, batch, seed, lr, on_epoch)
    else:
        hist = train_ours(parser, variant, ex, tb, epochs, batch, seed, lr, cycle_epochs,
                          on_epoch, prune_rate, reset)
    return {"variant": variant, "seed": seed, "history": hist, "best": best,
            "final_hidden": parser.net.hidden_sizes}, parser


def machine():
    info = {"python": platform.python_version(), "machine": platform.machine(),
            "numpy": np.__version__, "meprop_cpu": mp.__version__,
            "config": {k: str(v) for k, v in mp.show_config().items()},
            "note": "the 1, 5 and 15-minute load averages at the start are in 'loadavg'",
            "loadavg": os.getloadavg()}
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def part_train(args, vocab, ex, tb):
    res = {"part": "train", "argv": sys.argv, "machine": machine(), "runs": []}
    set_threads(args.threads[0])
    for seed in args.seeds:
        for v in args.variants:
            print(f"== {v} seed {seed}", flush=True)
            r, parser = run_variant(v, vocab, ex, tb, args.epochs, args.batch_size, seed,
                                    args.lr, args.hidden, args.cycle_epochs,
                                    dropout=args.dropout, prune_rate=args.prune_rate,
                                    reset=args.reset)
            r["threads"] = args.threads[0]
            r["dropout"] = args.dropout
            r["modes"] = [lin.mode for lin in parser.net.linears] if v != "torch" else None
            if v == "mesimp":
                r["prune_rate"] = args.prune_rate
                r["reset"] = args.reset
            res["runs"].append(r)
            save(args, res)
    return res


def part_speed(args, vocab, ex, tb):
    res = {"part": "speed", "argv": sys.argv, "machine": machine(), "epochs": [], "parse": []}
    sents = tb["dev"] + tb["test"]
    for nt in args.threads:
        set_threads(nt)
        for rep in range(args.repeats):
            order = args.variants[rep % len(args.variants):] + args.variants[:rep % len(args.variants)]
            for v in order:
                r, parser = run_variant(v, vocab, ex, tb, 1, args.batch_size, 1, args.lr,
                                        args.hidden, 1, evaluate=False,
                                        log=lambda s: print(f"[{nt}t rep {rep}]" + s, flush=True))
                h = r["history"][0]
                res["epochs"].append({"threads": nt, "variant": v, "repeat": rep,
                                      **{k: h[k] for k in ("time_epoch", "time_forward",
                                                           "time_backward", "time_update",
                                                           "time_backward_linear")},
                                      "dev_uas_after_1_epoch": h["dev"]["uas"],
                                      "modes": [lin.mode for lin in parser.net.linears]
                                      if v != "torch" else None})
                save(args, res)
        measure_parsing(args, vocab, sents, nt, res)
        save(args, res)
    return res


def measure_parsing(args, vocab, sents, nt, res, repeats=5):
    """Parsing speed on ``sents`` at nt threads into res["parse"]: a fresh dense
    model (every sentence takes 2n transitions whatever the weights, so the
    cost does not depend on training), pre-computed and plain first layer,
    median of ``repeats`` parses after a warm-up."""
    parser = make_parser(vocab, "dense", 1, args.hidden)
    for label, pre in (("precomputed", True), ("plain", False)):
        pc = parser.precomputed(pre)
        parser.parse(sents[:50], threads=nt, precomputed=pc)     # warm-up
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            parser.parse(sents, threads=nt, precomputed=pc)
            ts.append(time.perf_counter() - t0)
        t = float(np.median(ts))
        res["parse"].append({"threads": nt, "kind": label, "sentences": len(sents),
                             "words": sum(len(s) for s in sents), "seconds_median": t,
                             "seconds_all": ts, "sentences_per_s": len(sents) / t,
                             "precompute_words": parser.n_precompute})
        print(f"[{nt}t] parse {label}: {len(sents) / t:,.0f} sentences/s", flush=True)


def part_parse(args, vocab, ex, tb):
    """Parsing speed only (the speed part's last section), --repeats rounds of
    every thread count, alternating, each a median of 5 parses."""
    res = {"part": "parse", "argv": sys.argv, "machine": machine(), "parse": []}
    sents = tb["dev"] + tb["test"]
    for rep in range(args.repeats):
        for nt in args.threads:
            set_threads(nt)
            measure_parsing(args, vocab, sents, nt, res)
            res["parse"][-1]["repeat"] = res["parse"][-2]["repeat"] = rep
            save(args, res)
    return res


def save(args, res):
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, args.name + ".json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, path)


def _variant_list(text):
    vs = [t.strip() for t in text.split(",") if t.strip()]
    bad = [v for v in vs if v not in VARIANTS]
    if not vs or bad:
        raise argparse.ArgumentTypeError(
            f"unknown variant(s) {bad or text!r}; expected some of {', '.join(VARIANTS)}")
    return vs


def build_argparser():
    ap = argparse.ArgumentParser(prog="meprop-cpu bench --parse",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("train", "speed", "parse"), default="train",
                    help="train: accuracy runs; speed: one epoch per variant side by side, "
                         "then parsing speed; parse: parsing speed only")
    ap.add_argument("--variants", type=_variant_list, default="torch,dense,k10,k20,k40,mesimp",
                    help="some of " + ", ".join(VARIANTS) + " (k20: the parser's default "
                         "mode topk_dw, k20b: batch_dw, k20p: the paper's topk, k20h: topk "
                         "in the first hidden layer; *_plain: the first layer as plain "
                         "products, not once per distinct id; default "
                         "torch,dense,k10,k20,k40,mesimp)")
    ap.add_argument("--seeds", type=_int_list("--seeds", 0), default="1")
    ap.add_argument("--epochs", type=_positive_int, default=8)
    ap.add_argument("--threads", type=_int_list("--threads", 1), default="2")
    ap.add_argument("--repeats", type=_positive_int, default=3)
    ap.add_argument("--batch-size", type=_positive_int, default=1000)
    ap.add_argument("--lr", type=_positive_float, default=1e-3)
    ap.add_argument("--hidden", type=_int_list("--hidden", 1), default="500,500")
    ap.add_argument("--cycle-epochs", type=_positive_int, default=2,
                    help="meSimp: epochs per cycle (even cycles simplify)")
    ap.add_argument("--max-train", type=_positive_int, default=None,
                    help="the first N training sentences only")
    ap.add_argument("--prune-rate", type=_probability, default=0.1,
                    help="meSimp's (variant mesimp)")
    ap.add_argument("--reset", choices=CycleSchedule.RESETS, default="authors",
                    help="meSimp: how the optimizer is reset at a cycle's end (see "
                         "meprop_cpu.simplify.CycleSchedule)")
    ap.add_argument("--dropout", type=_probability, default=0.0,
                    help="part train: dropout after the hidden layers (not for torch)")
    ap.add_argument("--out", default=None,
                    help="results directory (default <results>/parse, see above)")
    ap.add_argument("--name", default=None, help="output file name (default: the part)")
    return ap


def main(argv=None):
    args = build_argparser().parse_args(argv)
    args.name = args.name or args.part
    args.out = args.out or os.path.join(_default_out(), "parse")
    tb = data.turkish_web()
    if args.max_train:
        tb = dict(tb, train=tb["train"][:args.max_train])
    vocab = tr.Vocab.build(tb["train"])
    ex = tr.make_examples(tb["train"], vocab)
    print(f"oracle: {ex[2]}", flush=True)
    part = {"train": part_train, "speed": part_speed, "parse": part_parse}[args.part]
    res = part(args, vocab, ex, tb)
    res["oracle"] = ex[2]
    save(args, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
