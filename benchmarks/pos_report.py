"""Summarise the POS tagger results in benchmarks/results/pos/ into README.md (+ plots).

Reads the training logs ``<variant>_n<N>_s<seed>.jsonl`` written by
benchmarks/pos_accuracy.sh (this library: ``meprop-cpu train --task pos``;
PyTorch: ``bench_pos.py train-torch``), the speed file ``speed.json``
(``bench_pos.py speed``) and, if present, ``tag_speed.json``
(``bench_pos.py tag-speed``).

    python benchmarks/pos_report.py [--dir benchmarks/results/pos] [--no-plots]
"""
import argparse
import glob
import json
import os
import re


def read_log(path):
    recs = [json.loads(x) for x in open(path) if x.strip()]
    epochs = {}
    for r in recs:
        if r.get("event") == "epoch":
            epochs[r["epoch"]] = r   # a resumed epoch replaces an earlier record
    return [epochs[e] for e in sorted(epochs)], [r for r in recs if r.get("event") == "simplify"]


def accuracy_table(d):
    rows = []
    for path in sorted(glob.glob(os.path.join(d, "*_n*_s*.jsonl"))):
        m = re.match(r"(.+)_n(\d+)_s(\d+)\.jsonl", os.path.basename(path))
        variant, n, seed = m.group(1), int(m.group(2)), int(m.group(3))
        epochs, simp = read_log(path)
        if not epochs:
            continue
        best = max(epochs, key=lambda r: (r["dev_acc"], -r["epoch"]))
        rows.append({"variant": variant, "n": n, "seed": seed, "epochs": len(epochs),
                     "best_epoch": best["epoch"], "dev": best["dev_acc"],
                     "test": best["test_acc"], "wsj": best.get("wsj_acc"),
                     "hidden": best["hidden_sizes"], "curve": [r["dev_acc"] for r in epochs],
                     "widths": [r["hidden_sizes"][0] for r in epochs]})
    return rows


def summary_table(acc):
    """Mean ± sd over seeds per (variant, training sentences)."""
    import statistics as st
    groups = {}
    for r in acc:
        groups.setdefault((r["variant"], r["n"]), []).append(r)

    def ms(xs):
        xs = [x for x in xs if x is not None]
        if not xs:
            return "-"
        return f"{st.mean(xs):.2f}" + (f" ± {st.stdev(xs):.2f}" if len(xs) > 1 else "")
    out = []
    for (v, n), rs in sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        out.append({"variant": v, "n": n, "seeds": [r["seed"] for r in rs],
                    "epochs": max(r["epochs"] for r in rs),
                    "dev": ms([r["dev"] for r in rs]), "test": ms([r["test"] for r in rs]),
                    "wsj": ms([r["wsj"] for r in rs]),
                    "test_mean": st.mean(r["test"] for r in rs),
                    "hidden": "; ".join(str(r["hidden"]) for r in rs),
                    "best_epochs": ", ".join(str(r["best_epoch"]) for r in rs)})
    return out


PAPER_ROWS = [
    ("paper (ICML Table 1, C#, 1 thread), AdaGrad", "baseline h=500", "17,534", "", "96.93"),
    ("paper (ICML Table 1, C#, 1 thread), AdaGrad", "meProp k=5", "253", "69.2x", "97.25"),
    ("paper (ICML Table 1, C#, 1 thread), Adam", "baseline h=500", "16,167", "", "97.07"),
    ("paper (ICML Table 1, C#, 1 thread), Adam", "meProp k=5", "247", "65.4x", "97.12"),
    ("paper (TKDE), Adam", "meProp k=10", "", "37.1x", ""),
    ("paper (TKDE), Adam", "meSimp (width ~60)", "", "", "97.25 (baseline 97.22)"),
]


def speed_file(d, ext=".json"):
    """speed.json (timed under the exclusive lock), else speed_shared_lock.json."""
    for name in ("speed", "speed_1thread", "speed_shared_lock"):
        p = os.path.join(d, name + ext)
        if os.path.exists(p):
            return p
    return None


def paper_table(d, acc):
    """The papers' POS rows beside this library's (Penn Treebank WSJ in the papers,
    CoNLL-2003's automatic tags here: the accuracies are not comparable across sources)."""
    lines = ["## The papers' POS layout\n",
             "backprop = the LSTM's backward per epoch (paper: the linear transformations' "
             "backprop incl. top-k, per epoch of the WSJ training set, single-threaded C#; here: "
             "the LSTM layer's backward through time on the speed block, scaled to one CoNLL-2003 "
             "epoch of 203,621 tokens, 1 thread); test = test accuracy at the best dev. The papers "
             "trained on the Penn Treebank WSJ; here CoNLL-2003 with its automatic tags, so only "
             "the differences between rows of the same source compare.\n",
             "| source | run | backprop s / epoch | speed-up | test % |",
             "|---|---|---:|---:|---:|"]
    for src, run, bp, spd, test in PAPER_ROWS:
        lines.append(f"| {src} | {run} | {bp} | {spd} | {test} |")
    sp = speed_file(d)
    if sp:
        s = json.load(open(sp))
        tok = {r["variant"]: r["tokens"] for r in s["results"]}
        best = {}     # per variant: the runs on the most training sentences, mean over seeds
        for r in summary_table(acc):
            if r["variant"] not in best or r["n"] > best[r["variant"]]["n"]:
                best[r["variant"]] = dict(r, test=r["test_mean"], epochs=r["epochs"])
        names = {"pytorch": "torch", "dense": "dense", "k=5": "k5", "k=10": "k10", "k=20": "k20"}
        base = {r["threads"]: r["lstm_backward_s"] for r in s.get("lstm_backward", [])
                if r["variant"] == "pytorch"}
        for r in s.get("lstm_backward", []):
            if r["threads"] != 1:
                continue
            per_epoch = r["lstm_backward_s"] * 203621 / tok[r["variant"]]
            a = best.get(names.get(r["variant"]))
            who = "PyTorch" if r["variant"] == "pytorch" else "this library"
            lines.append(f"| {who} (1 thread; CoNLL-2003, {a['n'] if a else '-'} train "
                         f"sentences, {a['epochs'] if a else '-'} epochs) | {r['variant']} | "
                         f"{per_epoch:.1f} | {base[1] / r['lstm_backward_s']:.1f}x vs PyTorch | "
                         f"{fmt(a['test']) if a else '-'} |")
    return lines + [""]


TTA_TARGETS = (93.9, 94.3)
CONTINUED = ("dense", "k10")   # their -e8 logs continue the same runs
SPEED_VARIANT = {"torch": "pytorch", "dense": "dense", "dense-e8": "dense", "k5": "k=5",
                 "k10": "k=10", "k10-e8": "k=10", "k20": "k=20"}
# exploratory meSimp settings: in the tables, not in dev_accuracy.png
PLOT_SKIP = ("mesimp10spe2", "mesimp10w100", "mesimpk10")
# meSimp variants timed by their own 2-thread runs: train_time_<stem>_<threads>threads_*.jsonl
MESIMP_TIMING = {"mesimp10p": "mesimp10p", "mesimp10": "mesimp", "mesimp10-e8": "mesimp"}


def epoch_seconds(d, variant, threads=2):
    """Training seconds per epoch of a variant at ``threads``: [s] (every epoch
    alike) projected from the speed file's per-sentence time, or, for meSimp,
    [epoch 1, epoch 2] measured in train_time_<stem>_<threads>threads_*.jsonl
    (MESIMP_TIMING; median over the runs; later epochs cost what epoch 2 did).
    None if unknown."""
    import statistics as st
    sv = SPEED_VARIANT.get(variant)
    if sv is not None and speed_file(d):
        for r in json.load(open(speed_file(d)))["results"]:
            if r["variant"] == sv and r["threads"] == threads and r.get("batch", 1) == 1:
                return [r["epoch_s_projected"]]
    stem = MESIMP_TIMING.get(variant)
    if stem is not None:
        runs = [read_log(f)[0] for f in
                sorted(glob.glob(os.path.join(d, f"train_time_{stem}_{threads}threads_*.jsonl")))]
        runs = [r for r in runs if len(r) >= 2]
        if runs:
            return [st.median(r[0]["time_epoch"] for r in runs),
                    st.median(r[1]["time_epoch"] for r in runs)]
    return None


def mean_curve(acc, variant, n):
    """The dev accuracy per epoch, averaged over a variant's seeds (as many
    epochs as its shortest run) on n training sentences."""
    curves = [r["curve"] for r in acc if r["variant"] == variant and r["n"] == n]
    m = min(len(c) for c in curves)
    return [sum(c[e] for c in curves) / len(curves) for e in range(m)], len(curves)


def cumulative(secs, epochs):
    """Seconds after each of ``epochs`` epochs (the last per-epoch figure repeats)."""
    out, t = [], 0.0
    for e in range(epochs):
        t += secs[min(e, len(secs) - 1)]
        out.append(t)
    return out


def tta_table(d, acc):
    """Time to a dev accuracy: epochs from the logs x seconds per epoch at 2 threads."""
    import statistics as st
    n_max = max(r["n"] for r in acc)
    variants = sorted({r["variant"] for r in acc if r["n"] == n_max and "b16" not in r["variant"]})
    # a run continued to 8 epochs stands for its first 4 (the same epochs)
    variants = [v for v in variants if f"{v}-e8" not in variants or v not in CONTINUED]
    lines = ["## Time to accuracy (2 threads)\n",
             "Epochs to a dev accuracy come from the accuracy logs above (each seed's first "
             "epoch at or above the target); seconds per epoch at 2 threads from the speed "
             "file (`epoch_s_projected`: the per-sentence time of `bench --pos speed` times "
             "CoNLL-2003's tokens, training only) or, for meSimp, the median of its measured "
             "2-thread training runs (`train_time_mesimp_2threads_*.jsonl`, "
             "`train_time_mesimp10p_2threads_*.jsonl`: epoch 1, which "
             "shrinks the model, then epoch 2 for every later epoch). So these are "
             "projections from two measurements, not one timed run; `dev_vs_time.png` plots "
             "them. `-`: a seed did not reach the target within its epochs (PyTorch's "
             "tagger was trained for 2).\n",
             "| variant | s / epoch | " + " | ".join(
                 f"epochs to dev {t:.1f} (per seed) | s to dev {t:.1f} (mean) | vs PyTorch | "
                 f"vs dense" for t in TTA_TARGETS) + " |",
             "|---|---:|" + "---|---:|---:|---:|" * len(TTA_TARGETS)]
    base, dense = {}, {}
    rows = []
    for v in variants:
        secs = epoch_seconds(d, v)
        if secs is None:
            continue
        runs = [r for r in acc if r["variant"] == v and r["n"] == n_max]
        cells = []
        for t in TTA_TARGETS:
            eps = [next((e + 1 for e, x in enumerate(r["curve"]) if x >= t), None) for r in runs]
            got = [cumulative(secs, e)[-1] for e in eps if e is not None]
            mean = st.mean(got) if len(got) == len(eps) else None
            if v == "torch":
                base[t] = mean
            if v in ("dense", "dense-e8"):
                dense[t] = mean
            cells.append((eps, mean))
        rows.append((v, secs, cells))
    for v, secs, cells in rows:
        out = f"| {v} | {' / '.join(f'{x:.1f}' for x in secs)} |"
        for t, (eps, mean) in zip(TTA_TARGETS, cells):
            ratio = ["-" if mean is None or ref.get(t) is None else f"{ref[t] / mean:.1f}x"
                     for ref in (base, dense)]
            out += (f" {', '.join('-' if e is None else str(e) for e in eps)} | "
                    f"{'-' if mean is None else f'{mean:.0f}'} | {ratio[0]} | {ratio[1]} |")
        lines.append(out)
    lines.append("")
    return lines, rows


def fmt(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", default="benchmarks/results/pos")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args()
    d = args.dir
    lines = ["# LSTM POS tagger on CoNLL-2003: accuracy and speed\n",
             "Generated by `python benchmarks/pos_report.py` from the files in this folder. "
             "Machine: a shared 2-core VM. The accuracy logs were written while other jobs "
             "ran; each speed file records the load average at its start.\n"]
    acc = accuracy_table(d)
    if acc:
        lines += ["## Accuracy summary (mean ± sd over seeds, test at the best dev epoch)\n",
                  "`n` = training sentences (14,041 = all of CoNLL-2003 train). Variants: "
                  "`dense`, `k5`, `k10` (meProp k per gate), `mesimp10p` (meSimp, k = 5, prune "
                  "rate 0.1, the paper's optimizer reset: the tagger's default), `mesimp10` "
                  "(the same with the authors' reset: moments zeroed, step counts kept, at "
                  "each simplification step), `mesimp05` (authors' reset, prune rate 0.05), "
                  "`mesimp10spe2` (authors' reset, 2 simplification steps per epoch instead "
                  "of 8), `mesimp10w100` (authors' reset, `--min-width 100`), `mesimpk10` "
                  "(authors' reset, k = 10), `torch` (the PyTorch tagger, "
                  "`bench --pos train-torch`); Adam lr 0.001 unless the name ends in `ada` "
                  "(AdaGrad lr 0.01, the papers' other optimizer); a suffix `-e8` = 8 epochs "
                  "(dense and k10: their 4-epoch runs resumed from the checkpoints; meSimp: "
                  "new runs), `b16` = 16 sentences per step "
                  "(`--batch-size 16`), else one sentence per step.\n",
                  "| variant | n | seeds | epochs | dev | test | wsj | best epochs | hidden |",
                  "|---|---:|---|---:|---:|---:|---:|---|---|"]
        for r in summary_table(acc):
            lines.append(f"| {r['variant']} | {r['n']} | {', '.join(map(str, r['seeds']))} | "
                         f"{r['epochs']} | {r['dev']} | {r['test']} | {r['wsj']} | "
                         f"{r['best_epochs']} | {r['hidden']} |")
        lines.append("")
        lines += ["## Accuracy per run (test at the best dev epoch)\n",
                  "Training logs `<variant>_n<N>_s<seed>.jsonl` (`sh benchmarks/pos_accuracy.sh N "
                  "EPOCHS SEED VARIANTS`, or the `meprop-cpu train --task pos` command in the notes "
                  "below): the first N sentences of CoNLL-2003 train, vocabulary "
                  "from them, full dev (3,250) and test (3,453) sets, Adam lr 0.001, h = 500. `wsj` = the gold WSJ sample (out of domain) at the best "
                  "dev epoch. Timings in these logs were taken under load and are not speed "
                  "results (see below).\n",
                  "| variant | train sentences | seed | epochs | best epoch | dev | test | wsj | "
                  "hidden | dev per epoch |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in acc:
            lines.append(f"| {r['variant']} | {r['n']} | {r['seed']} | {r['epochs']} | "
                         f"{r['best_epoch']} | {fmt(r['dev'])} | {fmt(r['test'])} | "
                         f"{fmt(r['wsj'])} | {r['hidden']} | "
                         f"{', '.join(fmt(x) for x in r['curve'])} |")
        lines.append("")
    lines += paper_table(d, acc)
    tta_rows = []
    if acc:
        tta_lines, tta_rows = tta_table(d, acc)
        lines += tta_lines
    sp = speed_file(d, ".md")
    if sp:
        lines += [f"## Training speed (`{os.path.basename(sp)}`)\n",
                  open(sp).read().split("\n", 1)[1]]
    for sb in sorted(glob.glob(os.path.join(d, "speed_b*.md"))):
        lines += [f"## Training speed in minibatches (`{os.path.basename(sb)}`)\n",
                  open(sb).read().split("\n", 1)[1]]
    for ts in sorted(glob.glob(os.path.join(d, "tag_speed*.json"))):
        t = json.load(open(ts))
        lines += [f"## Tagging the test set (inference, `{os.path.basename(ts)}`)\n",
                  f"`{t['meta']['command']}` ({t['meta']['date']}, load average "
                  f"{t['meta']['load_average'][0]:.2f}); median of the rounds.\n",
                  "| model | hidden | threads | sentences at once | test acc | seconds | "
                  "tokens/s |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in t["results"]:
            lines.append(f"| {r['model']} | {r['hidden']} | {r['threads']} | "
                         f"{r.get('batch', 1)} | {fmt(r['test_acc'])} | {r['tag_s']:.2f} | "
                         f"{r['tokens_per_s']:,.0f} |")
        lines.append("")
    notes = os.path.join(d, "notes.md")
    if os.path.exists(notes):
        lines += [open(notes).read()]
    with open(os.path.join(d, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.no_plots or not acc:
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    n_max = max(r["n"] for r in acc)       # the runs on the most data, one line per variant
    for v in sorted({r["variant"] for r in acc if r["n"] == n_max} - set(PLOT_SKIP)):
        mean, seeds = mean_curve(acc, v, n_max)
        ax.plot(range(1, len(mean) + 1), mean, marker="o", label=f"{v} ({seeds} seeds)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("dev accuracy (%)")
    ax.set_title(f"LSTM POS tagger, CoNLL-2003 dev (n = {n_max}, mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(d, "dev_accuracy.png"), dpi=110)
    if speed_file(d):
        s = json.load(open(speed_file(d)))
        fig, ax = plt.subplots(figsize=(6, 4))
        for nt in sorted({r["threads"] for r in s["results"]}):
            rs = [r for r in s["results"] if r["threads"] == nt]
            ax.bar([f"{r['variant']}\n{nt}t" for r in rs], [r["ms_per_sentence"] for r in rs])
        ax.set_ylabel("ms per training sentence")
        ax.set_title("training step time (CoNLL-2003 sentences)")
        fig.tight_layout()
        fig.savefig(os.path.join(d, "step_time.png"), dpi=110)
    if tta_rows:
        n_max = max(r["n"] for r in acc)
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for v, secs, _ in tta_rows:
            mean, _ = mean_curve(acc, v, n_max)
            ax.plot(cumulative(secs, len(mean)), mean, marker="o", label=v)
        ax.set_xscale("log")
        ax.set_xlabel("training seconds at 2 threads (log scale; projected, see README)")
        ax.set_ylabel("dev accuracy (%), mean over seeds")
        ax.set_title("LSTM POS tagger: dev accuracy against training time")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(d, "dev_vs_time.png"), dpi=110)


if __name__ == "__main__":
    main()
