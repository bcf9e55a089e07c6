"""The LSTM POS tagger: this library (dense, meProp k) against PyTorch on the CPU.

Both taggers are the same model (meprop_cpu.tagger: word 50 + 7 features x 20
-> LSTM(h) -> dense softmax, one sentence per step), start from the same
weights (PyTorch's LSTM gets W, U and b as weight_ih, weight_hh and bias_ih,
with bias_hh = 0), see the same sentences in the same order and use the
same optimizers: PyTorch ``nn.Embedding(sparse=True)`` + ``SparseAdam`` for
the embeddings and ``Adam`` for the rest (its fastest honest setup); this
library's row-sparse Adam (SparseAdam's semantics) for the embeddings and,
under meProp, for the LSTM rows; dense Adam for the rest. Same thread count
for every variant (torch.set_num_threads / meprop_cpu.set_num_threads).

speed: training steps on a fixed set of CoNLL-2003 training sentences (the
first --sentences of a seeded permutation), the variants interleaved in
--rounds rounds after a warm-up block; per round and variant the block's
wall time and its forward / backward / update parts; reported: the median
over rounds, per sentence and per token, tokens/s and the projected
CoNLL-2003 epoch (203,621 tokens / tokens/s).

train-torch: trains the PyTorch tagger for --epochs on --max-train sentences
and reports dev and test accuracy at the best dev (the library's taggers are
trained with ``meprop-cpu train --task pos``), as JSON lines.

    meprop-cpu bench --pos speed --threads 1,2 --out benchmarks/results/pos/speed
    meprop-cpu bench --pos train-torch --max-train 2000 --epochs 3 \
        --log-json benchmarks/results/pos/torch_2000.jsonl

(``python benchmarks/bench_pos.py`` takes the same arguments.) Default
outputs: <results>/pos/speed.{json,md} and <results>/pos/torch_train.jsonl,
where <results> is benchmarks/results in a checkout, else
./meprop_bench_results.
"""
import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

import meprop_cpu as mp
from meprop_cpu import pos_data
from meprop_cpu.tagging.model import FEATURE_DIM, N_FEATURES, PosTagger, Vocab, encode
from meprop_cpu.train import build_optimizer

from .._options import _int_list, _nonneg_int, _positive_int
from .environment import command_line
from .report import _default_out

CONLL_TRAIN_TOKENS = 203621


def torch_tagger(ref):
    """A PyTorch copy of the PosTagger ``ref`` (same weights)."""
    import torch
    from torch import nn

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.ew = nn.Embedding(*ref.Ew.data.shape, sparse=True)
            self.ef = nn.Embedding(*ref.Ef.data.shape, sparse=True)
            h = ref.lstm.hidden
            self.lstm = nn.LSTM(ref.n_in, h)
            self.out = nn.Linear(h, ref.out.W.data.shape[0])

        def forward(self, wid, fid):
            T = wid.shape[0]
            x = torch.cat([self.ew(wid), self.ef(fid).reshape(T, N_FEATURES * FEATURE_DIM)], 1)
            H, _ = self.lstm(x.unsqueeze(1))
            return self.out(H.squeeze(1))

    m = Tagger()
    with torch.no_grad():
        m.ew.weight.copy_(torch.from_numpy(ref.Ew.data))
        m.ef.weight.copy_(torch.from_numpy(ref.Ef.data))
        m.lstm.weight_ih_l0.copy_(torch.from_numpy(ref.lstm.W.data))
        m.lstm.weight_hh_l0.copy_(torch.from_numpy(ref.lstm.U.data))
        m.lstm.bias_ih_l0.copy_(torch.from_numpy(ref.lstm.b.data))
        m.lstm.bias_hh_l0.zero_()
        m.out.weight.copy_(torch.from_numpy(ref.out.W.data))
        m.out.bias.copy_(torch.from_numpy(ref.out.b.data))
    sparse = torch.optim.SparseAdam([m.ew.weight, m.ef.weight], lr=1e-3)
    dense = torch.optim.Adam([p for n, p in m.named_parameters() if not n.startswith("e")],
                             lr=1e-3)
    return m, (sparse, dense)


class TorchRunner:
    def __init__(self, ref):
        import torch
        self.torch = torch
        self.m, self.opts = torch_tagger(ref)

    def step(self, wid, fid, tid):
        torch, pc = self.torch, time.perf_counter
        a = pc()
        logits = self.m(torch.from_numpy(wid.astype(np.int64)),
                        torch.from_numpy(fid.astype(np.int64)))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(tid))
        return self._backward_update(loss, a)

    def _backward_update(self, loss, a):
        """Backward and optimizer steps after a forward that began at ``a``:
        the (forward, backward, update) seconds."""
        pc = time.perf_counter
        b = pc()
        for o in self.opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        c = pc()
        for o in self.opts:
            o.step()
        d = pc()
        return b - a, c - b, d - c

    def step_batch(self, sents):
        """One step on B sentences: padded (T, B) input, packed through nn.LSTM
        (pack_padded_sequence), the loss over the real tokens only."""
        torch, pc = self.torch, time.perf_counter
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
        a = pc()
        # the same time-major padded layout this library's tagger builds
        lengths, wid, fid, tid, real = PosTagger._layout(sents)
        B, T = lengths.size, int(lengths.max())
        tgt = np.full(T * B, -100, dtype=np.int64)     # padding: ignored by the loss
        tgt[real] = tid[real]
        m = self.m
        x = torch.cat([m.ew(torch.from_numpy(wid.astype(np.int64)).reshape(T, B)),
                       m.ef(torch.from_numpy(fid.astype(np.int64))).reshape(
                           T, B, N_FEATURES * FEATURE_DIM)], 2)
        packed = pack_padded_sequence(x, torch.from_numpy(lengths), enforce_sorted=False)
        H, _ = pad_packed_sequence(m.lstm(packed)[0], total_length=T)
        logits = m.out(H.reshape(T * B, -1))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(tgt),
                                                 ignore_index=-100)
        return self._backward_update(loss, a)

    def accuracy(self, enc):
        torch = self.torch
        right = total = 0
        with torch.no_grad():
            for wid, fid, tid in enc:
                p = self.m(torch.from_numpy(wid.astype(np.int64)),
                           torch.from_numpy(fid.astype(np.int64))).argmax(1).numpy()
                right += int((p == tid).sum())
                total += tid.shape[0]
        return 100.0 * right / total


class MepropRunner:
    """Our tagger's training step as PosTrainer runs it: one sentence per step
    through the fused one-call step (fused=True, PosTrainer's default) or the
    module path; minibatches through the module path."""

    def __init__(self, model, fused=True, max_len=1):
        self.m = model
        self.opt = build_optimizer("adam", model.parameters())
        self.fused = None
        if fused:
            from ..tagging.fused import TaggerFusedStep
            self.fused = TaggerFusedStep(model, self.opt, max_len)

    def step(self, wid, fid, tid):
        if self.fused is not None:
            return self.fused.step(wid, fid, tid)[1:]
        return self._timed(self.m.forward_loss, wid, fid, tid)

    def step_batch(self, sents):
        return self._timed(self.m.forward_loss_batch, sents)

    def _timed(self, forward_loss, *args):
        """One training step: the (forward, backward, update) seconds."""
        pc = time.perf_counter
        a = pc()
        forward_loss(*args)
        b = pc()
        self.m.backward()
        c = pc()
        self.opt.step()
        self.opt.zero_grad()
        d = pc()
        return b - a, c - b, d - c


def _batches(sents, B):
    """The block's sentences in minibatches of B similar lengths (as PosTrainer
    forms them within a window): sorted by length, cut into batches."""
    order = np.argsort([s[0].shape[0] for s in sents], kind="stable")
    srt = [sents[i] for i in order]
    return [srt[i:i + B] for i in range(0, len(srt), B)]


def load(max_train=None):
    raw = pos_data.conll2003()
    train = raw["train"][:max_train] if max_train else raw["train"]
    vocab = Vocab.build(train)
    return vocab, {"train": encode(train, vocab), "dev": encode(raw["dev"], vocab),
                   "test": encode(raw["test"], vocab)}


def speed(args):
    import torch
    vocab, data = load()
    order = np.random.default_rng(args.seed).permutation(len(data["train"]))
    warm = [data["train"][i] for i in order[:args.warmup]]
    block = [data["train"][i] for i in order[args.warmup:args.warmup + args.sentences]]
    tokens = sum(s[2].shape[0] for s in block)
    max_len = max(s[0].shape[0] for s in warm + block)
    variants = ["pytorch", "dense"] + [f"k={k}" for k in args.k]
    results = []
    for nt in args.threads:
        mp.set_num_threads(nt)
        torch.set_num_threads(nt)
        runners = {}
        for v in variants:
            ref = PosTagger(vocab, hidden=args.hidden, k=None if v in ("pytorch", "dense")
                            else int(v[2:]), seed=args.seed)
            runners[v] = TorchRunner(ref) if v == "pytorch" else MepropRunner(
                ref, fused=not args.no_fused, max_len=max_len)
        if args.batch == 1:
            steps, warm_steps = block, warm
            run = lambda r, s: r.step(*s)            # noqa: E731
        else:
            steps, warm_steps = _batches(block, args.batch), _batches(warm, args.batch)
            run = lambda r, s: r.step_batch(s)       # noqa: E731
        for r in runners.values():
            for s in warm_steps:
                run(r, s)
        times = {v: [] for v in variants}
        for rnd in range(args.rounds):
            vs = variants[rnd % len(variants):] + variants[:rnd % len(variants)]   # rotate
            for v in vs:
                r, t0 = runners[v], time.perf_counter()
                parts = np.zeros(3)
                for s in steps:
                    parts += run(r, s)
                times[v].append([time.perf_counter() - t0, *parts])
        for v in variants:
            t = np.median(np.array(times[v]), axis=0)
            path = "pytorch" if v == "pytorch" else (
                "fused" if args.batch == 1 and not args.no_fused else "modules")
            rec = {"variant": v, "threads": nt, "hidden": args.hidden, "batch": args.batch,
                   "step_path": path,
                   "sentences": len(block), "tokens": tokens, "rounds": args.rounds,
                   "block_s": float(t[0]), "forward_s": float(t[1]), "backward_s": float(t[2]),
                   "update_s": float(t[3]),
                   "ms_per_sentence": 1e3 * t[0] / len(block), "tokens_per_s": tokens / t[0],
                   "epoch_s_projected": CONLL_TRAIN_TOKENS * t[0] / tokens,
                   "block_s_all_rounds": [float(x[0]) for x in times[v]]}
            results.append(rec)
            print(json.dumps({k: (round(x, 4) if isinstance(x, float) else x)
                              for k, x in rec.items() if k != "block_s_all_rounds"}), flush=True)
    # the per-sentence sections: the LSTM backward alone and the forward's bound
    backprop = lstm_backward_times(args, vocab, block, variants) if args.batch == 1 else None
    bound = forward_bound(args, vocab, block) if args.batch == 1 else None
    meta = {"command": command_line(), "date":
            datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(),
            "load_average": os.getloadavg(), "config": mp.show_config(),
            "torch": torch.__version__, "torch_config": torch.__config__.parallel_info()}
    out = {"meta": meta, "results": results, "lstm_backward": backprop, "forward_bound": bound}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(out, f, indent=1, default=str)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(out))
    print(markdown(out))


def lstm_backward_times(args, vocab, block, variants):
    """The paper's "backprop time of the linear transformations", as close as it can be
    isolated: the LSTM layer's backward through time alone (given dL/dH), forming the
    gradients of W, U, b and of the input. PyTorch: H.backward(dH) through nn.LSTM with
    the input requiring grad; this library: LSTM.backward(dH) and the row values of the
    W / U gradients formed (which training would otherwise fuse into the update).
    Median over --rounds of the sum over the block's sentences; forward not timed."""
    import torch
    ref = PosTagger(vocab, hidden=args.hidden, k=None, seed=args.seed)
    xs = [np.ascontiguousarray(ref._inputs(w, f)) for w, f, _ in block]
    rng = np.random.default_rng(1)
    dhs = [rng.standard_normal((x.shape[0], args.hidden)).astype(np.float32) * 0.1 for x in xs]
    out = []
    for nt in args.threads:
        mp.set_num_threads(nt)
        torch.set_num_threads(nt)
        tl = torch_tagger(ref)[0].lstm
        layers = {v: PosTagger(vocab, hidden=args.hidden, k=None if v == "dense" else int(v[2:]),
                               seed=args.seed).lstm for v in variants if v != "pytorch"}

        def run_torch():
            t = 0.0
            for x, dh in zip(xs, dhs):
                xt = torch.from_numpy(x).unsqueeze(1).requires_grad_(True)
                H, _ = tl(xt)
                tl.zero_grad(set_to_none=True)
                a = time.perf_counter()
                H.backward(torch.from_numpy(dh).unsqueeze(1))
                t += time.perf_counter() - a
            return t

        def run_ours(layer):
            t = 0.0
            for x, dh in zip(xs, dhs):
                layer.forward(x)
                a = time.perf_counter()
                layer.backward(dh)
                layer.W.grad.values, layer.U.grad.values
                t += time.perf_counter() - a
            return t
        times = {v: [] for v in variants}
        for rnd in range(args.rounds + 1):
            for v in variants:
                t = run_torch() if v == "pytorch" else run_ours(layers[v])
                if rnd:   # round 0 is the warm-up
                    times[v].append(t)
        for v in variants:
            rec = {"variant": v, "threads": nt, "lstm_backward_s": float(np.median(times[v])),
                   "sentences": len(block), "all_s": times[v]}
            out.append(rec)
            print(json.dumps(rec), flush=True)
    return out


def forward_bound(args, vocab, block):
    """At one sentence per step the recurrence reads U (4h x h floats) once per token.
    Measures the LSTM forward alone on the block (1 thread) and the time to read a
    U-sized array (np.sum over a copy of U, a streaming read of the same bytes), so the
    forward's bandwidth floor per token can be set beside what the kernels reach."""
    mp.set_num_threads(1)
    lstm = PosTagger(vocab, hidden=args.hidden, k=None, seed=args.seed).lstm
    xs = [np.ascontiguousarray(PosTagger(vocab, hidden=8, seed=0)._inputs(w, f)) for w, f, _ in
          block]
    tokens = sum(x.shape[0] for x in xs)
    U = lstm.U.data
    fw, rd = [], []
    for _ in range(args.rounds + 1):
        t0 = time.perf_counter()
        for x in xs:
            lstm.forward(x)
        fw.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(tokens):
            U.sum(dtype=np.float32)
        rd.append(time.perf_counter() - t0)
    f, r = float(np.median(fw[1:])), float(np.median(rd[1:]))
    rec = {"tokens": tokens, "u_bytes": int(U.nbytes), "forward_us_per_token": 1e6 * f / tokens,
           "u_read_us_per_token": 1e6 * r / tokens,
           "forward_gb_per_s": U.nbytes * tokens / f / 1e9,
           "u_read_gb_per_s": U.nbytes * tokens / r / 1e9}
    print(json.dumps(rec), flush=True)
    return rec


def markdown(out):
    lines = ["# LSTM POS tagger: training speed, PyTorch vs this library\n",
             f"`{out['meta']['command']}` ({out['meta']['date']}, {out['meta']['machine']}, "
             f"load average {out['meta']['load_average'][0]:.2f}). Each cell: median over "
             "rounds of a block of CoNLL-2003 training sentences (same sentences, same order, "
             "same initial weights, Adam; the variants interleaved). Sentences per step: "
             f"{out['results'][0].get('batch', 1)}"
             + (" (minibatches of similar lengths; PyTorch packs its padded batch with "
                "pack_padded_sequence)" if out['results'][0].get('batch', 1) > 1 else "")
             + ". This library's step: "
             + ("the fused one-call step (what PosTrainer runs at one sentence per step)"
                if out['results'][-1].get('step_path') == "fused" else
                "the module path (forward_loss, backward, optimizer.step)") + ".\n",
             "| threads | variant | ms / sentence | tokens/s | forward s | backward s | "
             "update s | projected epoch s | speed-up vs PyTorch |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = {r["threads"]: r["block_s"] for r in out["results"] if r["variant"] == "pytorch"}
    for r in out["results"]:
        lines.append(f"| {r['threads']} | {r['variant']} | {r['ms_per_sentence']:.2f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['forward_s']:.3f} | {r['backward_s']:.3f} | "
                     f"{r['update_s']:.3f} | {r['epoch_s_projected']:.0f} | "
                     f"{base[r['threads']] / r['block_s']:.2f}x |")
    if out.get("lstm_backward"):
        lines += ["", "The LSTM layer's backward through time alone (the paper's \"backprop of the "
                  "linear transformations\", with the cell's elementwise part), given dL/dH, on "
                  "the same sentences; forward not timed:\n",
                  "| threads | variant | LSTM backward s (block) | speed-up vs PyTorch |",
                  "|---:|---|---:|---:|"]
        bb = {r["threads"]: r["lstm_backward_s"] for r in out["lstm_backward"]
              if r["variant"] == "pytorch"}
        for r in out["lstm_backward"]:
            lines.append(f"| {r['threads']} | {r['variant']} | {r['lstm_backward_s']:.3f} | "
                         f"{bb[r['threads']] / r['lstm_backward_s']:.1f}x |")
    b = out.get("forward_bound")
    if b:
        lines += ["", f"Forward bound (1 thread, h = {out['results'][0]['hidden']}): one sentence "
                  f"per step reads U ({b['u_bytes'] / 1e6:.1f} MB) once per token. The LSTM "
                  f"forward took {b['forward_us_per_token']:.0f} us per token "
                  f"({b['forward_gb_per_s']:.1f} GB/s of U); reading U once (np.sum) took "
                  f"{b['u_read_us_per_token']:.0f} us ({b['u_read_gb_per_s']:.1f} GB/s)."]
    return "\n".join(lines) + "\n"


def train_torch(args):
    import torch
    mp.set_num_threads(args.threads[0])
    torch.set_num_threads(args.threads[0])
    vocab, data = load(args.max_train)
    ref = PosTagger(vocab, hidden=args.hidden, k=None, seed=args.seed)
    r = TorchRunner(ref)
    rng = np.random.default_rng(args.seed)   # the same order as PosTrainer
    best, first = None, 1
    ckpt = args.log_json + ".ckpt.pt"
    if args.resume:   # continue a run (one command per epoch keeps each run short)
        st = torch.load(ckpt, weights_only=False)
        r.m.load_state_dict(st["model"])
        for o, so in zip(r.opts, st["opts"]):
            o.load_state_dict(so)
        rng.bit_generator.state, best, first = st["rng"], st["best"], st["epoch"] + 1
    os.makedirs(os.path.dirname(os.path.abspath(args.log_json)), exist_ok=True)
    with open(args.log_json, "a" if args.resume else "w") as log:
        for epoch in range(first, args.epochs + 1):
            perm = rng.permutation(len(data["train"]))
            t0 = time.perf_counter()
            parts = np.zeros(3)
            for i in perm:
                parts += r.step(*data["train"][i])
            t = time.perf_counter() - t0
            dev = r.accuracy(data["dev"])
            if best is None or dev > best[0]:
                best = (dev, r.accuracy(data["test"]), epoch)
            rec = {"event": "epoch", "epoch": epoch, "dev_acc": dev, "test_acc": best[1],
                   "time_epoch": t, "time_forward": parts[0], "time_backward": parts[1],
                   "time_update": parts[2], "hidden_sizes": [args.hidden],
                   "threads": args.threads[0], "variant": "pytorch",
                   "train_sentences": len(data["train"])}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
            torch.save({"model": r.m.state_dict(), "opts": [o.state_dict() for o in r.opts],
                        "rng": rng.bit_generator.state, "best": best, "epoch": epoch},
                       ckpt + ".tmp")
            os.replace(ckpt + ".tmp", ckpt)
        if first > args.epochs:
            return
        s = {"event": "summary", "best_dev": best[0], "test_at_best_dev": best[1],
             "best_epoch": best[2], "command": command_line()}
        log.write(json.dumps(s) + "\n")
        print(json.dumps(s))


def tag_speed(args):
    """Time tagging the CoNLL-2003 test set with saved taggers (--models, files written
    by `meprop-cpu train --task pos --save-model`), interleaved, median of --rounds;
    --batch sentences side by side (1: one at a time)."""
    from meprop_cpu.tagging import load_tagger
    raw = pos_data.conll2003()
    models = {os.path.basename(f): load_tagger(f) for f in args.models.split(",")}
    enc = {n: encode(raw["test"], m.vocab) for n, m in models.items()}
    tokens = sum(len(w) for w, _ in raw["test"])
    rows = []
    accs = {n: m.accuracy(enc[n]) for n, m in models.items()}
    for nt in args.threads:
        mp.set_num_threads(nt)
        times = {n: [] for n in models}
        for n, m in models.items():
            m.accuracy(enc[n][:50], args.batch)   # warm-up
        for _ in range(args.rounds):
            for n, m in models.items():
                t0 = time.perf_counter()
                m.accuracy(enc[n], args.batch)
                times[n].append(time.perf_counter() - t0)
        for n, m in models.items():
            rows.append({"model": n, "hidden": m.hidden_sizes, "threads": nt,
                         "batch": args.batch,
                         "test_acc": accs[n],
                         "tag_s": float(np.median(times[n])), "tokens": tokens,
                         "tokens_per_s": tokens / float(np.median(times[n])),
                         "all_s": times[n]})
            print(json.dumps(rows[-1]), flush=True)
    out = {"meta": {"command": command_line(),
                    "date": datetime.datetime.now().isoformat(timespec="seconds"),
                    "machine": platform.processor() or platform.machine(),
                    "load_average": os.getloadavg()}, "results": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(out, f, indent=1)


def build_argparser():
    p = argparse.ArgumentParser(prog="meprop-cpu bench --pos",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("speed", "train-torch", "tag-speed"),
                   help="speed: training steps per variant, interleaved; train-torch: the "
                        "PyTorch tagger's accuracy; tag-speed: tagging speed of saved models")
    p.add_argument("--models", default="", help="tag-speed: comma-separated tagger files")
    p.add_argument("--threads", type=_int_list("--threads", 1), default="1,2")
    p.add_argument("--hidden", type=_positive_int, default=500)
    p.add_argument("--k", type=_int_list("--k", 1), default="5,10,20")
    p.add_argument("--sentences", type=_positive_int, default=100)
    p.add_argument("--batch", type=_positive_int, default=1,
                   help="speed: sentences per step (1: one at a time, the papers'; more: "
                        "minibatches of similar lengths, PyTorch packing its padded batch)")
    p.add_argument("--warmup", type=_nonneg_int, default=10)
    p.add_argument("--rounds", type=_positive_int, default=3)
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--no-fused", action="store_true",
                   help="speed: time this library's module path (forward_loss, backward, "
                        "optimizer.step as separate calls) instead of the fused one-call step "
                        "PosTrainer takes at one sentence per step")
    p.add_argument("--max-train", type=_positive_int, default=None)
    p.add_argument("--epochs", type=_positive_int, default=1)
    p.add_argument("--log-json", default=None,
                   help="train-torch: the JSON-lines log (default <results>/pos/torch_train.jsonl)")
    p.add_argument("--out", default=None,
                   help="speed: output path without extension (default <results>/pos/speed)")
    p.add_argument("--resume", action="store_true",
                   help="train-torch: continue from the checkpoint beside --log-json")
    return p


def main(argv=None):
    args = build_argparser().parse_args(argv)
    res = os.path.join(_default_out(), "pos")
    args.log_json = args.log_json or os.path.join(res, "torch_train.jsonl")
    args.out = args.out or os.path.join(res, "speed")
    {"speed": speed, "train-torch": train_torch, "tag-speed": tag_speed}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
