"""PNG plots of a benchmark document (:func:`make_plots`): speed-up against k
and against threads, accuracy against k, meSimp's hidden width."""
import os

import numpy as np

from .report import _find_group, _index, _load_json, _shapes, layer_rows


def make_plots(doc, outdir, prefix, results_dir=None):
    """PNG plots (speed-up vs k, speed-up vs threads, accuracy vs k, meSimp
    width over training). Returns the paths written; [] without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    paths = []

    def save(fig, name):
        p = os.path.join(outdir, f"{prefix}_{name}.png")
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)

    layer = doc.get("layer") or []
    shapes = _shapes(layer)
    if layer:
        tmax = max(g["threads"] for g in layer)
        fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 3.6), squeeze=False)
        for ax, shape in zip(axes[0], shapes):
            g = _find_group(doc, shape, tmax)
            if g is None:
                continue
            rows = layer_rows(g)
            for v, style in (("topk", "o-"), ("unified", "s-")):
                rs = [r for r in rows if r["variant"] == v]
                ks = [r["k"] for r in rs]
                for base, ls, name in (("torch", "-", "torch dense"),
                                       ("dense", "--", "meprop_cpu dense")):
                    ys = [r[f"bwd_vs_{base}"] for r in rs]
                    if any(y is not None for y in ys):
                        ax.plot(ks, [np.nan if y is None else y for y in ys], style[0] + ls,
                                label=f"{v} vs {name}")
            _k_axis(ax, {r["k"] for r in rows if r["k"] is not None})
            ax.axhline(1.0, color="gray", lw=0.8)
            ax.set_yscale("log")
            ax.set_xlabel("k")
            ax.set_title(f"backward {tuple(shape)}, {tmax} thr", fontsize=9)
        axes[0][0].set_ylabel("speed-up (x)")
        axes[0][0].legend(fontsize=7)
        save(fig, "speedup_vs_k")

        threads = sorted({g["threads"] for g in layer})
        if len(threads) > 1:
            fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 3.6),
                                     squeeze=False)
            for ax, shape in zip(axes[0], shapes):
                ks = sorted({r["k"] for g in layer if g["shape"] == shape
                             for r in g["results"] if r["k"] is not None})
                kk = 20 if 20 in ks else (ks[0] if ks else None)
                for v, k in (("torch", None), ("numpy", None), ("dense", None), ("topk", kk),
                             ("unified", kk)):
                    ts = []
                    for T in threads:
                        g = _find_group(doc, shape, T)
                        r = _index(g).get((v, k, "backward")) if g else None
                        ts.append(r["median_s"] if r else None)
                    if ts[0] is None:
                        continue
                    ax.plot(threads, [np.nan if t is None else ts[0] / t for t in ts], "o-",
                            label=f"{v}" + (f" k={k}" if k else ""))
                ax.plot(threads, threads, ":", color="gray", label="linear")
                ax.set_xticks(threads)
                ax.set_xlabel("threads")
                ax.set_title(f"backward scaling {tuple(shape)}", fontsize=9)
            axes[0][0].set_ylabel("time(1 thread) / time(T)")
            axes[0][0].legend(fontsize=7)
            save(fig, "speedup_vs_threads")

    e2e = doc.get("e2e") or []
    if e2e:
        tmax = max(r["threads"] for r in e2e)
        batches = sorted({r["batch"] for r in e2e})
        fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 3.6),
                                 squeeze=False)
        for ax, batch in zip(axes[0], batches):
            rs = [r for r in e2e if r["batch"] == batch and r["threads"] == tmax]
            for mode, style in (("topk", "o-"), ("unified", "s-"), ("random", "x")):
                pts = sorted((r["k"], r["test_at_best_dev"]) for r in rs
                             if r["mode"] == mode and not r.get("dropout"))
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=mode)
            for r in rs:
                if r["mode"] == "mesimp" or r.get("dropout"):
                    ax.plot([r["k"]], [r["test_at_best_dev"]], "*", ms=10, label=r["label"])
                if r["mode"] == "dense":
                    ax.axhline(r["test_at_best_dev"], ls="--" if r["impl"] == "torch" else "-",
                               color="gray", lw=0.9, label=r["label"])
            _k_axis(ax, {r["k"] for r in rs if r["k"] is not None})
            ax.set_xlabel("k")
            ax.set_ylabel("test accuracy at best dev (%)")
            ax.set_title(f"MNIST batch {batch}, {e2e[0]['epochs']} epoch(s)", fontsize=9)
            ax.legend(fontsize=7)
        save(fig, "accuracy_vs_k")

    widths, seen = [], set()
    for r in e2e:
        key = (r["label"], r["batch"])
        if r.get("width_log") and key not in seen:     # the same run at every thread count
            seen.add(key)
            widths.append((f"{r['label']} batch {r['batch']} ({r['epochs']} ep)", r["width_log"]))
    other = _load_json(os.path.join(results_dir, "mesimp_mnist.json")) if results_dir else None
    widths += _other_mesimp_logs(other)
    if widths:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for name, log in widths:
            steps = [g for g, _ in log]
            for li in range(len(log[0][1])):
                ax.step(steps, [s[li] for _, s in log], where="post",
                        label=f"{name}: hidden {li + 1}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("hidden width")
        ax.set_title("meSimp: hidden width during training", fontsize=9)
        ax.legend(fontsize=7)
        save(fig, "mesimp_width")
    return paths


def _k_axis(ax, ks):
    """A log2 x axis with a tick at each k (none when ``ks`` is empty)."""
    ks = sorted(ks)
    if ks:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()


def _other_mesimp_logs(doc, limit=3):
    """[(name, [[step, sizes], ...])] from benchmarks/mesimp_mnist.py's JSON
    (``runs`` a dict with a "mesimp" entry, or a list of per-seed dicts);
    [] for anything else."""
    if not isinstance(doc, dict):
        return []
    runs = doc.get("runs")
    runs = [runs] if isinstance(runs, dict) else runs if isinstance(runs, list) else []
    out = []
    for r in runs[:limit]:
        m = r.get("mesimp") if isinstance(r, dict) else None
        log = m.get("sizes_log") if isinstance(m, dict) else None
        if (isinstance(log, list) and log and all(isinstance(e, list) and len(e) == 2
                                                  and isinstance(e[1], list) for e in log)):
            seed = f", seed {r['seed']}" if "seed" in r else ""
            out.append((f"mesimp_mnist.json{seed}", log))
    return out
