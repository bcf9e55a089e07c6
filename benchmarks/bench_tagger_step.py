"""The POS tagger's training step on its two paths: the module path
(PosTagger.forward_loss, backward, Optimizer.step: about 40 kernel calls per
sentence, each behind Python) against the fused one-call C step
(meprop_cpu.tagging.fused, what PosTrainer runs at one sentence per step;
the same bits). CoNLL-2003 training sentences, Adam; h = 60 (the width meSimp
shrinks the tagger to) and h = 500 at k = 5 and dense; 1 and 2 threads. Each
variant trains its own tagger (same initial weights) on the same sentences,
the two paths interleaved in blocks of 50 sentences (``bench.interleave``, 2
warm-up rounds, 8 timed); median microseconds per sentence.

    python benchmarks/bench_tagger_step.py > benchmarks/results/pos/step_paths.md
"""
import datetime
import os
import statistics
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import meprop_cpu as mp  # noqa: E402
from meprop_cpu import bench  # noqa: E402
from meprop_cpu.bench.environment import command_line  # noqa: E402
from meprop_cpu.data import pos as pos_data  # noqa: E402
from meprop_cpu.bench.pos import MepropRunner  # noqa: E402
from meprop_cpu.tagging import PosTagger, Vocab, encode  # noqa: E402

BLOCK = 50
CONFIGS = ((60, 5), (500, 5), (500, None))


def _runner(vocab, sents, h, k, fused, max_len):
    """A block of BLOCK training steps of a fresh tagger (bench --pos speed's runner)."""
    r = MepropRunner(PosTagger(vocab, hidden=h, k=k, seed=0), fused=fused, max_len=max_len)
    pos = [0]

    def block():
        for _ in range(BLOCK):
            r.step(*sents[pos[0] % len(sents)])
            pos[0] += 1
    return block


def main():
    raw = pos_data.conll2003()
    vocab = Vocab.build(raw["train"])
    sents = encode(raw["train"][:2000], vocab)
    max_len = max(s[0].shape[0] for s in sents)
    rows = []
    for h, k in CONFIGS:
        for T in (1, 2):
            mp.set_num_threads(T)
            fns = {p: _runner(vocab, sents, h, k, p == "fused", max_len)
                   for p in ("modules", "fused")}
            times = bench.interleave(fns, repeats=8, warmup=2)
            med = {p: statistics.median(ts) * 1e6 / BLOCK for p, ts in times.items()}
            rows.append((h, k, T, med))
            print(f"h {h} k {k} threads {T}: {med}", file=sys.stderr, flush=True)
    print("# The tagger's training step: module path against the fused C step\n")
    print(f"`{command_line()}`, {datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"load average {os.getloadavg()[0]:.2f}, {mp.show_config()['simd']}. CoNLL-2003 "
          f"training sentences (mean 14.5 tokens), Adam lr 0.001, one sentence per step; "
          f"median microseconds per sentence over blocks of {BLOCK}, the paths interleaved. "
          f"Both paths leave bit-identical weights (tests/test_tagger.py).\n")
    print("| hidden | k | threads | module path µs | fused µs | fused speed-up |")
    print("|---:|---|---:|---:|---:|---:|")
    for h, k, T, med in rows:
        print(f"| {h} | {'dense' if k is None else k} | {T} | {med['modules']:.0f} | "
              f"{med['fused']:.0f} | {med['modules'] / med['fused']:.2f}x |")


if __name__ == "__main__":
    main()
