"""The reports: the tables of a benchmark document (:func:`layer_rows`,
:func:`headline`, :func:`reproduction_rows`), its markdown
(:func:`render_markdown`), the results directory's README.md
(:func:`render_readme`), and writing result files."""
import json
import os
import re

from .environment import BUSY_SHARE, _busy_note, _share
from .profiles import HEADLINE_LAYER, PAPER
from .timing import speedup

SCHEMA = "meprop_cpu.bench/1"


def _fmt_t(s):
    if s is None:
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _fmt_share(sh):
    if sh is None:
        return "n/a"
    return f"{100 * sh:.0f}%" + (" (!)" if sh >= BUSY_SHARE else "")


def _fmt_x(r):
    return "" if r is None else f"{r:.2f}x"


def _fmt_acc(v):
    return "n/a" if v is None else f"{v:.2f}"


def _med(summary):
    return None if not summary else summary["median_s"]


def _cell(summary):
    if not summary:
        return ""
    return (f"{_fmt_t(summary['median_s'])} [{_fmt_t(summary['min_s'])}–"
            f"{_fmt_t(summary['max_s'])}]")


def _index(group):
    return {(r["variant"], r["k"], r["op"]): r for r in group["results"]}


def layer_rows(group):
    """Table rows of one layer group: one per (variant, k) with forward /
    backward / step summaries and speed-ups (baseline median / this median)."""
    idx = _index(group)

    def get(v, k, op):
        return idx.get((v, k, op))

    base = {b: {op: _med(get(b, None, op)) for op in ("forward", "backward", "step")}
            for b in ("torch", "numpy", "dense")}
    pairs = [(v, None) for v in ("torch", "numpy", "dense")]
    ks = sorted({r["k"] for r in group["results"] if r["k"] is not None})
    pairs += [(v, k) for k in ks for v in ("topk", "unified")]
    rows = []
    for v, k in pairs:
        if get(v, k, "backward") is None:
            continue
        fwd = get(v, k, "forward") or get("dense", None, "forward")
        bwd, stp = get(v, k, "backward"), get(v, k, "step")
        rows.append({"variant": v, "k": k, "forward": fwd, "forward_shared": v in ("topk",
                                                                                     "unified"),
                     "backward": bwd, "step": stp,
                     "bwd_vs_torch": speedup(base["torch"]["backward"], _med(bwd)),
                     "bwd_vs_numpy": speedup(base["numpy"]["backward"], _med(bwd)),
                     "bwd_vs_dense": speedup(base["dense"]["backward"], _med(bwd)),
                     "step_vs_torch": speedup(base["torch"]["step"], _med(stp)),
                     "step_vs_dense": speedup(base["dense"]["step"], _med(stp))})
    return rows


def _shapes(groups):
    """The layer shapes of ``groups``, in order of first appearance."""
    shapes = []
    for g in groups:
        if g["shape"] not in shapes:
            shapes.append(g["shape"])
    return shapes


def _find_group(doc, shape, threads):
    for g in doc.get("layer") or []:
        if list(g["shape"]) == list(shape) and g["threads"] == threads:
            return g
    return None


def _e2e_find(doc, batch, threads, impl, mode, k=None, dropout=0.0):
    for r in doc.get("e2e") or []:
        if (r["batch"] == batch and r["threads"] == threads and r["impl"] == impl
                and r["mode"] == mode and (k is None or r["k"] == k)
                and float(r.get("dropout") or 0.0) == float(dropout)):
            return r
    return None


def headline(doc):
    """The ratios a reader looks for first: layer backward of meProp vs
    PyTorch dense at HEADLINE_LAYER shapes (most threads measured), and the
    end-to-end epoch time (vs torch's at the same batch and threads) and
    accuracy of every run at every thread count."""
    out = {"layer": [], "e2e": []}
    layer = doc.get("layer") or []
    if layer:
        tmax = max(g["threads"] for g in layer)
        for B, n_in, n_out, k in HEADLINE_LAYER:
            g = _find_group(doc, (B, n_in, n_out), tmax)
            if g is None:
                continue
            idx = _index(g)
            t_torch = _med(idx.get(("torch", None, "backward")))
            t_dense = _med(idx.get(("dense", None, "backward")))
            for v in ("topk", "unified"):
                r = idx.get((v, k, "backward"))
                if r is None:
                    continue
                out["layer"].append({"shape": [B, n_in, n_out], "k": k, "threads": tmax,
                                     "other_share": _share(g),
                                     "variant": v, "backward_s": r["median_s"],
                                     "torch_backward_s": t_torch, "dense_backward_s": t_dense,
                                     "vs_torch": speedup(t_torch, r["median_s"]),
                                     "vs_dense": speedup(t_dense, r["median_s"])})
    e2e = doc.get("e2e") or []
    for T in sorted({r["threads"] for r in e2e}):
        for batch in sorted({r["batch"] for r in e2e}):
            tr = _e2e_find(doc, batch, T, "torch", "dense")
            t_torch = _med(tr["summary"]["time_epoch"]) if tr else None
            for r in e2e:
                if r["batch"] != batch or r["threads"] != T:
                    continue
                t = _med(r["summary"]["time_epoch"])
                out["e2e"].append({"label": r["label"], "batch": batch, "threads": T,
                                   "epoch_s": t, "vs_torch": speedup(t_torch, t),
                                   "dev": r["best_dev"], "test": r["test_at_best_dev"],
                                   "epochs": r["epochs"], "other_share": _share(r)})
    return out


def reproduction_rows(doc):
    """The paper's layout (ICML Table 1/2, TKDE): per batch size, the paper's
    rows next to ours. backprop = hidden layers' Linear.backward per epoch;
    fwd+bwd = forward + backward of the whole step per epoch (Table 2's
    "overall"); epoch = training wall time per epoch, update included."""
    e2e = doc.get("e2e") or []
    if not e2e:
        return []
    tmin = min(r["threads"] for r in e2e)
    rows = []
    P = PAPER["icml_mnist_adam"]
    T = PAPER["tkde_mnist"]
    for batch in sorted({r["batch"] for r in e2e}):
        base = _e2e_find(doc, batch, tmin, "meprop_cpu", "dense")
        tb = _med(base["summary"]["time_hidden_backward"]) if base else None
        tfb = _med(base["summary"]["time_fwd_bwd"]) if base else None
        tep = _med(base["summary"]["time_epoch"]) if base else None
        if batch == P["batch"]:
            rows.append({"batch": batch, "source": "paper (ICML Table 1/2, C#, 1 thread)",
                         "run": "baseline h=500", "backprop_s": P["baseline"]["backprop_s"],
                         "fwd_bwd_s": P["baseline"]["fwd_bwd_s"], "test": P["baseline"]["test"]})
            rows.append({"batch": batch, "source": "paper (ICML Table 1/2, C#, 1 thread)",
                         "run": f"meProp k={P['k']}", "backprop_s": P["meprop"]["backprop_s"],
                         "backprop_speedup": P["meprop"]["backprop_speedup"],
                         "fwd_bwd_s": P["meprop"]["fwd_bwd_s"],
                         "fwd_bwd_speedup": P["baseline"]["fwd_bwd_s"] / P["meprop"]["fwd_bwd_s"],
                         "test": P["meprop"]["test"]})
        if batch == T["batch"]:
            rows.append({"batch": batch, "source": "paper (TKDE)", "run": "baseline h=500",
                         "test": T["baseline_test"]})
            rows.append({"batch": batch, "source": "paper (TKDE)",
                         "run": f"meProp k={T['meprop_k']}",
                         "backprop_speedup": T["meprop_backprop_speedup"]})
            rows.append({"batch": batch, "source": "paper (TKDE)",
                         "run": f"meSimp k={T['mesimp_k']} (width {T['mesimp_width']})",
                         "test": T["mesimp_test"]})
        for r in e2e:
            if r["batch"] != batch or r["threads"] != tmin:
                continue
            s = r["summary"]
            hb = _med(s["time_hidden_backward"])
            rows.append({"batch": batch, "source": f"this ({r['threads']} thread"
                         f"{'s' if r['threads'] > 1 else ''}, {r['epochs']} epoch"
                         f"{'s' if r['epochs'] > 1 else ''})", "run": r["label"],
                         "backprop_s": hb, "backprop_speedup": speedup(tb, hb),
                         "fwd_bwd_s": _med(s["time_fwd_bwd"]),
                         "fwd_bwd_speedup": speedup(tfb, _med(s["time_fwd_bwd"])),
                         "epoch_s": _med(s["time_epoch"]),
                         "epoch_speedup": speedup(tep, _med(s["time_epoch"])),
                         "dev": r["best_dev"], "test": r["test_at_best_dev"],
                         "hidden": r.get("final_hidden_sizes"), "other_share": _share(r)})
    return rows


def _md_table(header, rows, align=None):
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in r) + " |" for r in rows]
    return lines


def _la(v):
    return "n/a" if not v else " / ".join(f"{x:.2f}" for x in v)


def _machine_lines(doc):
    m = doc["machine"]
    torch_info = m.get("torch")
    ob = m.get("openblas_thread_timeout") or {}
    blas = m.get("blas") or {}
    lw = (doc.get("load") or {}).get("wait") or {}
    lines = [f"- date {m.get('date')}, command `{m.get('command')}`",
             f"- CPU {m.get('cpu_model')}: {m.get('nproc')} CPUs usable "
             f"({m.get('physical_cores')} physical cores reported), SIMD path "
             f"`{m.get('simd')}`",
             f"- meprop_cpu {m['meprop_cpu'].get('version')} (OpenMP "
             f"{m['meprop_cpu'].get('openmp')}), numpy {m.get('numpy')} with "
             f"{blas.get('library')} {blas.get('version')} ({blas.get('architecture')}), torch "
             + (f"{torch_info['version']} (MKL {torch_info['mkl']}, oneDNN {torch_info['mkldnn']})"
                if torch_info else "not used"),
             f"- OPENBLAS_THREAD_TIMEOUT={ob.get('value')}: {ob.get('how')}",
             f"- load average (1/5/15 min): before the wait {_la(lw.get('load_first'))}, "
             f"at start {_la(lw.get('load_last'))} (waited {lw.get('waited_s', 0):.0f} s of at "
             f"most {lw.get('max_wait_s', 0):.0f} s for < {lw.get('threshold')}"
             f"{'; TIMED OUT' if lw.get('timed_out') else ''}), at the end "
             f"{_la((doc.get('load') or {}).get('end'))}"]
    st = (doc.get("load") or {}).get("settle")
    if st:
        lines.append(f"- before each of {st['calls']} measurements: waited for a 1-s window with "
                     f"< {100 * st['share']:.0f}% CPU use by others (up to {st['per_call_s']:.0f} "
                     f"s each): {st['waited_s']:.0f} s in all, gave up {st['gave_up']} time(s)")
    git = m.get("git")
    if git:
        lines.append(f"- git {git.get('commit')}"
                     + (f" with {git['modified_files']} modified tracked file(s)"
                        if git.get("modified_files") else ""))
    return lines


def _layer_section(doc):
    cfg = doc["config"]
    lines = ["## Layer level", "",
             f"One linear layer `y = x W^T + b` (B, n_in, n_out); x and dy standard normal. "
             f"Median [min–max] of {cfg['repeats']} interleaved calls after {cfg['warmup']} "
             "warm-up rounds, every variant with the same thread count. backward = dx, dW, db "
             "(meProp: + top-k selection); step = forward + backward + Adam update "
             "(meProp: row-sparse Adam). The forward pass of topk / unified is the project's "
             "dense forward (the same kernel, timed once). speed-up vs X = median of X / median "
             "of the row.", ""]
    header = ["threads", "variant", "k", "forward", "backward", "step", "bwd vs torch",
              "bwd vs numpy", "bwd vs dense", "step vs torch", "step vs dense"]
    align = ["---:", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:",
             "---:"]
    shapes = _shapes(doc.get("layer") or [])
    for shape in shapes:
        groups = [g for g in doc["layer"] if g["shape"] == shape]
        lines += [f"### (B, n_in, n_out) = ({', '.join(map(str, shape))})", ""]
        rows = []
        for g in groups:
            for r in layer_rows(g):
                rows.append([g["threads"], r["variant"], "" if r["k"] is None else r["k"],
                             ("= dense" if r["forward_shared"] else _cell(r["forward"])),
                             _cell(r["backward"]), _cell(r["step"]),
                             _fmt_x(r["bwd_vs_torch"]), _fmt_x(r["bwd_vs_numpy"]),
                             _fmt_x(r["bwd_vs_dense"]), _fmt_x(r["step_vs_torch"]),
                             _fmt_x(r["step_vs_dense"])])
        lines += _md_table(header, rows, align)
        checks = {str(g["check"]) for g in groups}
        lines += ["", f"gradient check: {', '.join(sorted(checks))}; threads read back: "
                  + "; ".join(f"T={g['threads']}: {g['threads_applied']}" for g in groups)
                  + "; CPU time used by other processes while timing: "
                  + ", ".join(f"T={g['threads']}: {_fmt_share(_share(g))}" for g in groups), ""]
    return lines


def _e2e_section(doc):
    cfg = doc["config"]
    lines = ["## End to end: MNIST MLP 784-500-500-10", "",
             f"{cfg['epochs']} epoch(s) on {_n_train(doc)} training images, Adam lr 1e-3, seed "
             f"{cfg.get('seed', 0)}; the same data order, initial weights and threads for every "
             "run; dev after every epoch, test at the best dev (percent). Times are the median "
             "[min–max] over epochs of the per-epoch totals; epoch = training wall time "
             "(evaluation excluded); hidden bwd = time in the backward of the two hidden "
             "layers (Linear.backward, or the same work timed inside the fused C step; not "
             "measurable inside torch's autograd: n/a); forward / backward / update of a "
             "fused-step run are timed inside the C step, its Python share is in epoch only. "
             f"{cfg['e2e_warmup_steps']} untimed warm-up steps on a throwaway model first. "
             "others' CPU = share of the machine's CPU time used by other processes during "
             f"the run ((!) from {100 * BUSY_SHARE:.0f}%: the timing is not trustworthy, "
             "most of all with as many threads as CPUs). total = the whole training (the sum of "
             "its epoch times)" + (f"; each run was repeated {cfg['e2e_repeats']} times in "
                                   "rotated order: total is the median [min–max] over the "
                                   "repeats, accuracies are the first repeat's (the runs are "
                                   "deterministic)" if cfg.get("e2e_repeats", 1) > 1 else "")
             + ".", ""]
    header = ["batch", "threads", "run", "epoch", "forward", "backward", "hidden bwd", "update",
              "epoch vs torch", "epoch vs dense", "total", "total vs torch", "dev", "test",
              "hidden sizes", "others' CPU"]
    rows = []
    for r in doc.get("e2e") or []:
        s = r["summary"]
        tr = _e2e_find(doc, r["batch"], r["threads"], "torch", "dense")
        de = _e2e_find(doc, r["batch"], r["threads"], "meprop_cpu", "dense")
        t = _med(s["time_epoch"])
        rows.append([r["batch"], r["threads"], r["label"], _cell(s["time_epoch"]),
                     _fmt_t(_med(s["time_forward"])), _fmt_t(_med(s["time_backward"])),
                     _fmt_t(_med(s["time_hidden_backward"])), _fmt_t(_med(s["time_update"])),
                     _fmt_x(speedup(_med(tr["summary"]["time_epoch"]), t) if tr else None),
                     _fmt_x(speedup(_med(de["summary"]["time_epoch"]), t) if de else None),
                     _total_cell(r),
                     _fmt_x(speedup(tr.get("total_time_train"), r.get("total_time_train"))
                            if tr and r.get("total_time_train") else None),
                     _fmt_acc(r["best_dev"]), _fmt_acc(r["test_at_best_dev"]),
                     r.get("final_hidden_sizes"), _fmt_share(_share(r))])
    lines += _md_table(header, rows, ["---:", "---:", "---"] + ["---:"] * 11 + ["---", "---:"])
    return lines + [""]


def _total_cell(r):
    """The whole-training time: one run's, or median [min–max] over repeats."""
    totals = r.get("total_time_train_repeats") or []
    if len(totals) < 2:
        return _fmt_t(r.get("total_time_train"))
    return f"{_fmt_t(r['total_time_train'])} [{_fmt_t(min(totals))}–{_fmt_t(max(totals))}]"


def _n_train(doc):
    e2e = doc.get("e2e") or []
    return e2e[0]["n_train"] if e2e else "n/a"


def _repro_section(doc):
    rows = reproduction_rows(doc)
    if not rows:
        return []
    lines = ["## Reproduction table (the papers' MNIST layout)", "",
             "backprop = the hidden layers' backward per epoch (paper: the hidden linear "
             "layers' backward incl. top-k; here: time in the backward of both hidden "
             "layers, Linear.backward or its part of the fused step); fwd+bwd = forward + backward per epoch (ICML Table 2's overall time); "
             "epoch = training time per epoch incl. the optimizer update. Speed-ups are "
             "against the baseline of the same source (this project: its dense run at the same "
             "batch and threads). The paper trained 20 epochs single-threaded in C#; this "
             f"harness ran {doc['config']['epochs']} epoch(s), so accuracies are not final.", ""]
    header = ["batch", "source", "run", "backprop s/epoch", "backprop speed-up",
              "fwd+bwd s/epoch", "fwd+bwd speed-up", "epoch s", "epoch speed-up", "dev",
              "test", "hidden", "others' CPU"]

    def f(v, fmt):
        return "" if v is None else fmt.format(v)
    out = []
    for r in rows:
        out.append([r["batch"], r["source"], r["run"], f(r.get("backprop_s"), "{:.3g}"),
                    f(r.get("backprop_speedup"), "{:.1f}x"), f(r.get("fwd_bwd_s"), "{:.3g}"),
                    f(r.get("fwd_bwd_speedup"), "{:.1f}x"), f(r.get("epoch_s"), "{:.3g}"),
                    f(r.get("epoch_speedup"), "{:.2f}x"), f(r.get("dev"), "{:.2f}"),
                    f(r.get("test"), "{:.2f}"), r.get("hidden") or "",
                    _fmt_share(r["other_share"]) if "other_share" in r else ""])
    return lines + _md_table(header, out,
                             ["---:", "---", "---"] + ["---:"] * 8 + ["---", "---:"]) + [""]


def _threads_str(t):
    return f"{t} thread" + ("s" if t != 1 else "")


def _headline_lines(doc):
    h = headline(doc)
    lines = []
    for r in h["layer"]:
        B, n_in, n_out = r["shape"]
        head = (f"- layer backward ({B}, {n_in}, {n_out}), k={r['k']}, "
                f"{_threads_str(r['threads'])}: meProp {r['variant']} {_fmt_t(r['backward_s'])}")
        if r["vs_torch"] is not None:
            head += (f" vs torch dense {_fmt_t(r['torch_backward_s'])} = "
                     f"**{_fmt_x(r['vs_torch'])}** (vs this project's dense "
                     f"{_fmt_x(r['vs_dense'])})")
        else:
            head += (f" vs this project's dense {_fmt_t(r['dense_backward_s'])} = "
                     f"**{_fmt_x(r['vs_dense'])}** (torch not measured)")
        lines.append(head + _busy_note({"other_share": r["other_share"]}))
    if h["e2e"]:
        threads = sorted({r["threads"] for r in h["e2e"]})
        keys = []
        for r in h["e2e"]:
            if (r["batch"], r["label"]) not in keys:
                keys.append((r["batch"], r["label"]))
        keys.sort(key=lambda bk: bk[0])
        by = {(r["batch"], r["label"], r["threads"]): r for r in h["e2e"]}
        epochs = h["e2e"][0]["epochs"]
        lines += ["", f"MNIST 784-500-500-10, {epochs} epoch(s): training time per epoch "
                  "(speed-up over PyTorch at the same batch size and threads; (!) = other "
                  f"processes used >= {100 * BUSY_SHARE:.0f}% of the CPUs meanwhile), "
                  "dev and test accuracy (%, test at the best dev; from the first thread "
                  "count: this project's runs are bit-identical across thread counts, "
                  "PyTorch's may differ slightly)", ""]
        header = ["batch", "run"] + [f"{_threads_str(t)}: s/epoch (vs torch)" for t in threads] \
            + ["dev", "test"]
        rows = []
        for batch, label in keys:
            cells = []
            acc = None
            for t in threads:
                r = by.get((batch, label, t))
                if r is None:
                    cells.append("")
                    continue
                acc = acc or r
                vs = "" if label.startswith("torch") or r["vs_torch"] is None \
                    else f" ({_fmt_x(r['vs_torch'])})"
                busy = " (!)" if (r["other_share"] or 0.0) >= BUSY_SHARE else ""
                cells.append(f"{r['epoch_s']:.3g}{vs}{busy}")
            rows.append([batch, label] + cells + [_fmt_acc(acc["dev"]), _fmt_acc(acc["test"])])
        lines += _md_table(header, rows, ["---:", "---"] + ["---:"] * (len(threads) + 2))
    return lines


def render_markdown(doc, plots=()):
    """The markdown report of one benchmark JSON document."""
    lines = [f"# meprop_cpu benchmark: `{doc['name']}` ({doc['config']['name']} profile)", "",
             "Generated by `meprop_cpu.bench` from "
             f"`{doc['name']}.json`; do not edit by hand.", ""]
    lines += _machine_lines(doc) + [""]
    for note in doc.get("notes") or []:
        lines.append(f"- note: {note}")
    hl = _headline_lines(doc)
    if hl:
        lines += ["", "## Headline", ""] + hl
    lines.append("")
    lines += _repro_section(doc)
    if doc.get("e2e"):
        lines += _e2e_section(doc)
    if doc.get("layer"):
        lines += _layer_section(doc)
    if plots:
        lines += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                     for p in plots] + [""]
    return _tidy(lines)


def _tidy(lines):
    """Join markdown lines, at most one blank line in a row, one final newline."""
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n"


def _load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def render_readme(results_dir):
    """README.md for a results directory: an index of every JSON file there
    (with its date and report) and the headline and reproduction table of
    every harness document (schema SCHEMA). Returns the markdown text."""
    names = sorted(n for n in os.listdir(results_dir) if n.endswith(".json"))
    ours, index = [], []
    for n in names:
        d = _load_json(os.path.join(results_dir, n))
        base = n[:-5]
        md = base + ".md" if os.path.exists(os.path.join(results_dir, base + ".md")) else None
        if isinstance(d, dict) and d.get("schema") == SCHEMA:
            ours.append((n, d))
            what = f"`meprop-cpu bench` ({d['config']['name']} profile)"
            date = d["machine"].get("date")
        elif isinstance(d, dict):
            meta = d.get("meta") if isinstance(d.get("meta"), dict) else {}
            mach = d.get("machine") if isinstance(d.get("machine"), dict) else {}
            what = str(d.get("benchmark") or d.get("name") or meta.get("benchmark")
                       or f"other (keys: {', '.join(list(d)[:4])})")
            date = d.get("date") or mach.get("date") or meta.get("date")
        else:
            what, date = "unreadable", None
        index.append([f"[{n}]({n})", what, date or "", f"[{md}]({md})" if md else ""])
    subdirs = sorted(n for n in os.listdir(results_dir)
                     if os.path.isdir(os.path.join(results_dir, n)))
    lines = ["# Benchmark results", "",
             "Generated from the JSON files in this directory by "
             "`meprop_cpu.bench.render_readme` (run `python benchmarks/report.py` or "
             "`meprop-cpu bench`); do not edit by hand. Speed-up of A over B = median time "
             "of B / median time of A.", "", "## Files", ""]
    lines += _md_table(["file", "what", "date", "report"], index)
    if subdirs:
        lines += ["", "Directories: " + ", ".join(f"[{d}/]({d}/)" for d in subdirs)]
    for n, d in ours:
        base = n[:-5]
        lines += ["", f"## {base} ({d['config']['name']} profile, {d['machine'].get('date')})",
                  "", f"Full report: [{base}.md]({base}.md).", ""]
        lines += _machine_lines(d)
        hl = _headline_lines(d)
        if hl:
            lines += ["", "### Headline", ""] + hl
        rep = _repro_section(d)
        if rep:
            lines += [""] + ["#" + ln if ln.startswith("## ") else ln for ln in rep]
        pngs = sorted(p for p in os.listdir(results_dir)
                      if p.startswith(base + "_") and p.endswith(".png"))
        if pngs:
            lines += ["", "### Plots", ""] + [f"![{p}]({p})" for p in pngs]
    return _tidy(lines)


def _atomic_write(path, text):
    from .._io import atomic_write
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _default_out():
    if os.path.isdir("benchmarks"):
        return os.path.join("benchmarks", "results")
    return "meprop_bench_results"
