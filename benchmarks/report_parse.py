"""Summarise benchmarks/results/parse/*.json (written by bench_parse.py) into
benchmarks/results/parse/README.md, with plots when matplotlib is installed.

    python benchmarks/report_parse.py [--dir benchmarks/results/parse]
"""
import argparse
import glob
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ["torch", "dense_plain", "dense", "k10", "k20_plain", "k20", "k20b", "k20h", "k20p",
         "k40", "mesimp"]
NAMES = {"torch": "PyTorch dense", "dense": "meprop_cpu dense", "k10": "meProp k = 10",
         "dense_plain": "meprop_cpu dense, plain first layer",
         "k20_plain": "meProp k = 20 (topk_dw), plain first layer",
         "k20": "meProp k = 20 (topk_dw)", "k20b": "meProp k = 20 (batch_dw)",
         "k20h": "meProp k = 20 (topk first layer, topk_dw above)",
         "k20p": "meProp k = 20 (paper topk)", "k40": "meProp k = 40",
         "mesimp": "meSimp (k = 20, prune 0.1)"}


def _ms(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{np.mean(xs):.2f} ± {np.std(xs, ddof=1):.2f}"


def _variant_of(entry):
    """The variant key of a run or speed entry: "k20" runs record the modes they
    trained with; those that ran batch_dw (the MLP's default, tried on the
    parser) are "k20b"; the parser's default, topk_dw, is "k20"."""
    v, modes = entry["variant"], entry.get("modes")
    if v == "k20" and modes and "batch_dw" in modes:
        return "k20b"
    return v


def load(d):
    """(train runs, the speed part's entries, the parse part's files)."""
    train, speed, parse = [], None, []
    for f in sorted(glob.glob(os.path.join(d, "*.json"))):
        with open(f) as fh:
            r = json.load(fh)
        if r.get("part") == "train":
            for run in r["runs"]:
                run["variant"] = _variant_of(run)
                run["file"] = os.path.basename(f)
                run["machine"] = r["machine"]
                train.append(run)
        elif r.get("part") == "speed":      # several files (one per thread count) merge
            if speed is None:
                speed = {"epochs": [], "parse": [], "argv": [], "files": []}
            speed["epochs"] += [dict(e, variant=_variant_of(e)) for e in r["epochs"]]
            speed["parse"] += r["parse"]
            speed["argv"].append(" ".join(r["argv"]))
            speed["files"].append(os.path.basename(f))
        elif r.get("part") == "parse":
            parse.append(dict(r, file=os.path.basename(f)))
    return train, speed, parse


def parse_part_table(parse):
    """Every --part parse file: sentences/s per round, and the median over rounds."""
    lines = []
    for r in parse:
        lines += [f"`{' '.join(r['argv'])}` (1-minute load average at the start: "
                  f"{r['machine']['loadavg'][0]:.1f}):", "",
                  "| threads | parser | sentences / s, each round | median |",
                  "|---:|---|---|---:|"]
        for nt in sorted({p["threads"] for p in r["parse"]}):
            for kind in ("precomputed", "plain"):
                v = [p["sentences_per_s"] for p in r["parse"]
                     if p["threads"] == nt and p["kind"] == kind]
                if v:
                    lines.append(f"| {nt} | {kind} | {', '.join(f'{x:,.0f}' for x in v)} | "
                                 f"{np.median(v):,.0f} |")
        lines.append("")
    return lines


def truncate(run, E):
    """``run`` as if it had stopped after E epochs (its best dev and the test
    score at that best), or None if that test score was not recorded."""
    if E is None or len(run["history"]) <= E:
        return run
    hist = run["history"][:E]
    i = int(np.argmax([h["dev"]["uas"] for h in hist]))   # first epoch of the best
    test = hist[i].get("test_at_new_best_dev")
    if test is None and run["best"].get("epoch") == i + 1:
        test = run["best"]["test"]
    if test is None:
        return None
    best = {"dev_uas": hist[i]["dev"]["uas"], "dev_las": hist[i]["dev"]["las"], "epoch": i + 1,
            "test": test}
    return dict(run, history=hist, best=best,
                final_hidden=hist[-1]["hidden_sizes"])


def _loads(train):
    """The 1-minute load averages the train files recorded at their start."""
    seen = {}
    for r in train:
        la = r["machine"].get("loadavg")
        if la:
            seen[r["file"]] = la[0]
    return ", ".join(f"{v:.1f}" for v in seen.values()) or "not recorded"


def _name(key):
    """The table name of a variant key such as "mesimp+prune0.05", "k20+dropout0.2"
    or "mesimp+prune0.05+batch_dw"."""
    base, *extra = key.split("+")
    name = NAMES[base]
    for e in extra:
        if e.startswith("prune"):
            name = name.replace("prune 0.1", "prune " + e[5:])
        elif e.startswith("dropout"):
            name += ", dropout " + e[7:]
        elif e == "batch_dw":
            name = name[:-1] + ", batch_dw)"
    return name


def train_table(train):
    by = {}
    for r in train:
        key = r["variant"] + (f"+dropout{r['dropout']:g}" if r.get("dropout") else "")
        if r.get("prune_rate", 0.1) != 0.1:
            key += f"+prune{r['prune_rate']:g}"
        if r["variant"] == "mesimp" and "batch_dw" in (r.get("modes") or ()):
            key += "+batch_dw"
        by.setdefault(key, []).append(r)
    dense_best = {r["seed"]: r["best"]["dev_uas"] for r in by.get("dense", [])}
    lines = ["| variant | seeds | epochs | best dev UAS | dev LAS | test UAS at best dev | "
             "test LAS | s / epoch (fwd / bwd / upd) | linear-layer backprop s / epoch | "
             "final hidden | time to dense's best dev UAS |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    summary = {}
    for v in ORDER + sorted(k for k in by if k not in ORDER):
        runs = by.get(v)
        if not runs:
            continue
        eps = [h for r in runs for h in r["history"]]
        reach = []
        for r in runs:
            target = dense_best.get(r["seed"])
            t, got = 0.0, None
            for h in r["history"]:
                t += h["time_epoch"]
                if target is not None and h["dev"]["uas"] >= target and got is None:
                    got = t
            reach.append(got)
        reach_s = ", ".join("not reached" if x is None else f"{x:.0f} s" for x in reach)
        row = {"dev_uas": [r["best"]["dev_uas"] for r in runs],
               "test_uas": [r["best"]["test"]["uas"] for r in runs],
               "test_las": [r["best"]["test"]["las"] for r in runs],
               "epoch": float(np.median([h["time_epoch"] for h in eps]))}
        summary[v] = row
        lines.append(
            f"| {_name(v)} | {len(runs)} | {len(runs[0]['history'])} | {_ms(row['dev_uas'])} | "
            f"{_ms([r['best']['dev_las'] for r in runs])} | {_ms(row['test_uas'])} | "
            f"{_ms(row['test_las'])} | {np.median([h['time_epoch'] for h in eps]):.1f} "
            f"({np.median([h['time_forward'] for h in eps]):.1f} / "
            f"{np.median([h['time_backward'] for h in eps]):.1f} / "
            f"{np.median([h['time_update'] for h in eps]):.1f}) | "
            + (f"{np.median([h['time_backward_linear'] for h in eps]):.2f}"
               if eps[0].get("time_backward_linear") is not None else "n/a") +
            f" | {runs[0]['final_hidden']} | {reach_s} |")
    return lines, summary


def paper_rows(train):
    """The ICML Table 1 layout: backprop time of the linear layers per epoch
    (this library's backward of the Linear layers, top-k included) and test
    UAS at the best dev, baseline vs meProp."""
    def med(v, key):
        hs = [h[key] for r in train if r["variant"] == v for h in r["history"]
              if h.get(key) is not None]
        return float(np.median(hs)) if hs else None

    def test(v):
        xs = [r["best"]["test"]["uas"] for r in train if r["variant"] == v]
        return f"{np.mean(xs):.2f}" if xs else "-"
    base = med("dense", "time_backward_linear")
    if base is None:
        return []
    out = ["Paper layout (ICML Table 1, parsing with Adam; paper: baseline 9,078 s / 89.84, "
           "k = 20 489 s (18.6x) / 90.01, single-threaded C# against naive dense loops). Here: "
           "backward of the Linear layers per epoch (median), test UAS at the best dev "
           "(mean over seeds), same threads for both:", "",
           "| task (optimizer) | baseline h=500: backprop s / test UAS | meProp: k, backprop s "
           "(speed-up) / test UAS |", "|---|---|---|"]
    for v, k in (("k10", 10), ("k20", 20), ("k40", 40)):
        t = med(v, "time_backward_linear")
        if t is not None:
            out.append(f"| Parsing, Turkish (Adam) | {base:.2f} / {test('dense')} | k={k}: "
                       f"{t:.2f} ({base / t:.1f}x) / {test(v)} |")
    return out + [""]


def speed_table(speed):
    lines = ["| threads | variant | s / epoch, median [min-max] | forward | backward | "
             "update | speed-up over PyTorch | dev UAS after the epoch |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    out = {}
    for nt in sorted({e["threads"] for e in speed["epochs"]}):
        rows = [e for e in speed["epochs"] if e["threads"] == nt]
        med = {}
        for v in ORDER:
            es = [e for e in rows if e["variant"] == v]
            if es:
                med[v] = float(np.median([e["time_epoch"] for e in es]))
        for v in ORDER:
            es = [e for e in rows if e["variant"] == v]
            if not es:
                continue
            t = [e["time_epoch"] for e in es]
            sp = f"{med['torch'] / med[v]:.2f}x" if "torch" in med else "-"
            lines.append(f"| {nt} | {NAMES[v]} | {np.median(t):.2f} [{min(t):.2f}-{max(t):.2f}] | "
                         f"{np.median([e['time_forward'] for e in es]):.2f} | "
                         f"{np.median([e['time_backward'] for e in es]):.2f} | "
                         f"{np.median([e['time_update'] for e in es]):.2f} | {sp} | "
                         f"{np.median([e['dev_uas_after_1_epoch'] for e in es]):.2f} |")
        out[nt] = med
    lines += ["", "| threads | parser | sentences | median s | sentences / s |",
              "|---:|---|---:|---:|---:|"]
    for p in speed["parse"]:
        lines.append(f"| {p['threads']} | {p['kind']} | {p['sentences']} | "
                     f"{p['seconds_median']:.3f} | {p['sentences_per_s']:,.0f} |")
    return lines, out


def plots(train, d):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in ORDER:
        runs = [r for r in train if r["variant"] == v and r["seed"] == 1]
        if not runs:
            continue
        h = runs[0]["history"]
        t = np.cumsum([x["time_epoch"] for x in h])
        ax.plot(t, [x["dev"]["uas"] for x in h], "o-", label=NAMES[v])
    ax.set_xlabel("training time, s (evaluation excluded)")
    ax.set_ylabel("dev UAS, %")
    ax.set_title("Turkish Web Treebank, seed 1")
    ax.grid(alpha=0.3)
    ax.legend()
    path = os.path.join(d, "dev_uas_vs_time.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return [path]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=os.path.join(HERE, "results", "parse"))
    ap.add_argument("--epochs", type=int, default=None,
                    help="compare the runs over their first E epochs only")
    ap.add_argument("--out", default="README.md", help="markdown file written in --dir")
    args = ap.parse_args(argv)
    train, speed, parse = load(args.dir)
    if args.epochs is not None:
        train = [t for t in (truncate(r, args.epochs) for r in train) if t is not None]
    md = ["# Dependency parsing: meprop_cpu vs PyTorch (Turkish Web Treebank)", "",
          "Generated by `python benchmarks/report_parse.py` from the JSON files here "
          "(written by `benchmarks/bench_parse.py`; each file records its command line, "
          "the machine and its load). The machine is a shared 2-core VM: ratios measured "
          "in one run are what to compare.", ""]
    if train:
        m = train[0]["machine"]
        md += ["## Accuracy and training time (`--part train`)", "",
               f"Threads {train[0].get('threads')}; cube, hidden 500-500, Adam lr 0.001, "
               "batch 1,000 transition examples, same initial weights and batch order per "
               f"seed. Machine: {m.get('cpu', '?')}, SIMD "
               f"{m.get('config', {}).get('simd', '?')}, torch {m.get('torch', '-')}. UAS / "
               "LAS in %, punctuation excluded; mean ± sd over seeds where there are several. "
               "The runs of this part ran one after the other (1-minute load average at the "
               f"start of each file: {_loads(train)}); the speed part below compares epoch "
               "times side by side.",
               ""]
        lines, _ = train_table(train)
        md += lines + [""]
        md += paper_rows(train)
        for p in plots(train, args.dir):
            md += [f"![dev UAS vs time]({os.path.basename(p)})", ""]
    if speed:
        md += ["## Epoch time and parsing speed (`--part speed`)", "",
               f"`{'`, `'.join(speed['argv'])}`: one epoch per variant and repeat, variants in "
               "rotated order, medians over the repeats; parsing: the dev + test sentences "
               "greedily, median of 5.", ""]
        lines, _ = speed_table(speed)
        md += lines + [""]
    if parse:
        md += ["## Parsing speed alone (`--part parse`)", "",
               "The dev + test sentences parsed greedily with a fresh 500-500 model, "
               "each entry the median of 5 parses; rounds alternate the thread counts. "
               "Every sentence takes 2n transitions whatever the weights, so the speed "
               "does not depend on training; the accuracy of trained parsers, parsed by "
               "the same code, is in the tables above.", ""]
        md += parse_part_table(parse)
    notes = os.path.join(args.dir, "notes.md")
    if os.path.isfile(notes):
        with open(notes) as f:
            md += [f.read()]
    with open(os.path.join(args.dir, args.out), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
