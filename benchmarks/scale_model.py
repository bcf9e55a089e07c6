"""A cost model of data-parallel meProp training on 2-64 nodes, built from the
measurements in benchmarks/results/distributed/ (bench_distributed.py).

    python benchmarks/scale_model.py [--results DIR]

writes DIR/scale_model.json, DIR/scale_model.md and DIR/scale_model.png.

Model (weak scaling: every node trains on ``batch`` examples per step, 1 thread
per node, as measured on this machine):

    T_step(N) = T_fb + T_comm(N) + T_apply(N)
    efficiency(N) = T_step(1) / T_step(N),   T_step(1) = T_fb + T_apply(1)

* T_fb: one node's forward + backward at batch 100 (measured, apply.json).
* T_apply(N): the work after the exchange, measured on one thread for the
  global batch N x 100 (apply.json): with the factors exchange every node
  forms the whole global gradient from the gathered (x, idx, val) and runs
  Adam on the touched rows ("factored"); with the dense Allreduce every node
  first forms its own rows (T_form = factored(1) - rows(1)) and then runs Adam
  on the union of touched rows ("rows"); values between the measured N are
  interpolated linearly.
* T_comm(N): the standard latency-bandwidth (Hockney) model of MPI's
  collective algorithms (Thakur, Rabenseifner & Gropp 2005), with link
  latency alpha, bandwidth beta, reduction cost ignored (memory bandwidth is
  >10x the links'):
  - Allreduce of n bytes: min(ring 2(N-1) alpha + 2 (N-1)/N n / beta,
    recursive doubling ceil(log2 N) (alpha + n / beta));
  - Allgatherv, G bytes in all: ceil(log2 N) alpha + (N-1)/N G / beta
    (recursive doubling / Bruck);
  - the sparse step: one Allgatherv of the factors (layer 0: idx + val,
    2k x 4 bytes per example, its input being every node's data; layer 1:
    x + idx + val, (500 + 2k) x 4 bytes) and one Allreduce of the dense rest
    (output layer, biases, loss: 6,013 floats); each layer takes factors or
    the dense Allreduce by the library's own rule (fewer bytes,
    meprop_cpu.distributed.exchange_bytes), so at many nodes a layer may fall
    back to dense;
  - the dense step: one Allreduce of every gradient (648,010 floats) plus the
    touched-row masks (1,000 floats).
* Links: 10, 25, 100 Gb/s at 90 % payload efficiency; alpha = 15 us for the
  10 / 25 Gb/s Ethernet links (MPI over TCP), 3 us for 100 Gb/s (RDMA-class).
* Not modelled: overlap of communication with the backward pass (none in the
  implementation), stragglers, network contention beyond the algorithms'
  own factors, NUMA, and more threads per node (faster nodes make the
  communication share larger, lowering efficiency).
"""
import argparse
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

NODES = [1, 2, 4, 8, 16, 32, 64]
LINKS = {"10 Gb/s": (10e9, 15e-6), "25 Gb/s": (25e9, 15e-6), "100 Gb/s": (100e9, 3e-6)}
EFF = 0.9
SIZES, K, BATCH = [784, 500, 500, 10], 20, 100


def exchange_bytes(kind, size, n_out, n_in, batch=0, k=0, with_input=True):
    """The library's rule (meprop_cpu.distributed.exchange_bytes), kept here so the
    model runs without the package; tests/test_distributed.py checks they agree."""
    f = (size - 1) / size
    if kind == "dense":
        return 2 * f * n_out * n_in * 4
    return f * batch * (n_in * bool(with_input) + 2 * k) * 4


def allreduce(n, N, beta, alpha):
    if N == 1:
        return 0.0
    ring = 2 * (N - 1) * alpha + 2 * (N - 1) / N * n / beta
    rd = math.ceil(math.log2(N)) * (alpha + n / beta)
    return min(ring, rd)


def allgatherv(G, N, beta, alpha):
    if N == 1:
        return 0.0
    return math.ceil(math.log2(N)) * alpha + (N - 1) / N * G / beta


def interp(nodes, values, N):
    return float(np.interp(N, nodes, values))


def model(apply_rows, t_fb, N, link):
    bits, alpha = LINKS[link]
    beta = bits / 8 * EFF
    nodes = [r["nodes"] for r in apply_rows]
    fac = interp(nodes, [r["apply_factored_ms"] for r in apply_rows], N) * 1e-3
    rws = interp(nodes, [r["apply_rows_ms"] for r in apply_rows], N) * 1e-3
    form = (apply_rows[0]["apply_factored_ms"] - apply_rows[0]["apply_rows_ms"]) * 1e-3
    Bg = BATCH * N
    rest = (SIZES[-1] * SIZES[-2] + sum(SIZES[1:]) + 3) * 4    # output layer, biases, flags
    # sparse: per hidden layer, factors or dense by the library's rule
    G, dense_n, layers = 0.0, rest, []
    for i in range(len(SIZES) - 2):
        n_in, n_out = SIZES[i], SIZES[i + 1]
        first = i == 0
        f = exchange_bytes("factors", max(N, 2), n_out, n_in, Bg, K, with_input=not first)
        d = exchange_bytes("dense", max(N, 2), n_out, n_in)
        if f <= d:
            G += Bg * ((0 if first else n_in) + 2 * K) * 4
            layers.append("factors")
        else:
            dense_n += (n_out * n_in + n_out) * 4
            layers.append("dense")
    t_sparse_comm = allgatherv(G, N, beta, alpha) + allreduce(dense_n, N, beta, alpha)
    # the share of the post-exchange work of layers that fell back to dense
    n_fac = layers.count("factors")
    t_sparse_apply = fac if n_fac == len(layers) else (
        fac * n_fac / len(layers) + (rws + form) * (len(layers) - n_fac) / len(layers))
    all_n = (sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:])) + sum(SIZES[1:])
             + sum(SIZES[1:-1])) * 4
    t_dense_comm = allreduce(all_n, N, beta, alpha)
    sparse = t_fb + t_sparse_comm + t_sparse_apply
    dense = t_fb + form + t_dense_comm + rws
    return {"nodes": N, "link": link, "sparse_step_ms": 1e3 * sparse,
            "sparse_comm_ms": 1e3 * t_sparse_comm, "sparse_apply_ms": 1e3 * t_sparse_apply,
            "sparse_layers": layers, "sparse_bytes_gathered": G, "sparse_bytes_allreduced":
            dense_n, "dense_step_ms": 1e3 * dense, "dense_comm_ms": 1e3 * t_dense_comm,
            "dense_bytes_allreduced": all_n}


def main():
    ap = argparse.ArgumentParser(description="the data-parallel scale model")
    ap.add_argument("--results", default=os.path.join(HERE, "results", "distributed"))
    ap.add_argument("--stat", choices=("min", "median"), default="min",
                    help="which of the measured times to use (min: the fastest repeat, "
                         "closest to an unloaded machine's time when the machine is shared)")
    args = ap.parse_args()
    with open(os.path.join(args.results, "apply.json")) as f:
        ap_ = json.load(f)
    rows = ap_["rows"]
    if args.stat == "min":
        rows = [dict(r, **{k + "_ms": v for k, v in r["min_ms"].items()}) for r in rows]
    t_fb = rows[0]["forward_backward_b100_ms"] * 1e-3
    out = []
    for link in LINKS:
        base = model(rows, t_fb, 1, link)
        for N in NODES[1:]:
            r = model(rows, t_fb, N, link)
            r["sparse_efficiency"] = base["sparse_step_ms"] / r["sparse_step_ms"]
            r["dense_efficiency"] = base["dense_step_ms"] / r["dense_step_ms"]
            out.append(r)
    res = {"inputs": {"stat": args.stat, "forward_backward_b100_ms": 1e3 * t_fb, "apply": rows,
                      "links": {k: {"bits_per_s": v[0], "alpha_s": v[1]} for k, v in
                                LINKS.items()}, "payload_efficiency": EFF,
                      "sizes": SIZES, "k": K, "batch_per_node": BATCH},
           "rows": out, "command": f"python benchmarks/scale_model.py --stat {args.stat}"}
    with open(os.path.join(args.results, "scale_model.json"), "w") as f:
        json.dump(res, f, indent=1)
    lines = ["# Scale model: data-parallel meProp on 2-64 nodes (MNIST MLP 784-500-500-10, "
             "k = 20, batch 100 per node, 1 thread per node)", "",
             f"`python benchmarks/scale_model.py --stat {args.stat}` from the measurements of this "
             f"machine (a shared 2-core VM; the {args.stat} of the repeats): one node's forward + "
             "backward at batch 100 "
             f"{1e3 * t_fb:.2f} ms; the post-exchange work per global batch from apply.json. "
             "Assumptions: see the script's docstring (Hockney alpha-beta model of MPI's ring / "
             "recursive-doubling algorithms; 90 % of the link rate; alpha 15 us at 10 / 25 Gb/s, "
             "3 us at 100 Gb/s; no overlap of communication and computation).", "",
             "Efficiency = step time on 1 node / step time on N nodes (weak scaling: each node "
             "keeps 100 examples per step).", "",
             "| link | nodes | sparse step ms (comm + apply) | layers (sparse) | sparse eff. | "
             "dense step ms (comm) | dense eff. |", "|---|---:|---:|---|---:|---:|---:|"]
    for r in out:
        lines.append(f"| {r['link']} | {r['nodes']} | {r['sparse_step_ms']:.2f} "
                     f"({r['sparse_comm_ms']:.2f} + {r['sparse_apply_ms']:.2f}) | "
                     f"{', '.join(r['sparse_layers'])} | {100 * r['sparse_efficiency']:.0f} % | "
                     f"{r['dense_step_ms']:.2f} ({r['dense_comm_ms']:.2f}) | "
                     f"{100 * r['dense_efficiency']:.0f} % |")
    r16 = next(r for r in out if r["nodes"] == 16 and r["link"] == "25 Gb/s")
    a1 = rows[0]["apply_factored_ms"]
    lines += ["", "Reading (16 nodes, 25 Gb/s, the target of 80 %): the sparse exchange reaches "
              f"{100 * r16['sparse_efficiency']:.0f} % and the dense Allreduce "
              f"{100 * r16['dense_efficiency']:.0f} %. What stops the sparse one is not the "
              f"network ({r16['sparse_comm_ms']:.2f} ms per step) but the work after it: every "
              "node forms the whole global gradient from the gathered factors, N x 100 x k "
              "selected rows of x per layer, the same work on every node, "
              f"{r16['sparse_apply_ms']:.2f} ms at 16 nodes against {a1:.2f} ms on one node "
              f"and {1e3 * t_fb:.2f} ms of forward + backward. Factors win while N is small; past a few nodes each node should form its own rows and "
              "exchange those (the rows exchange, whose bytes at batch 100 approach the dense "
              "Allreduce's because a batch's top-k rows cover most of a 500-row layer), or "
              "split the forming by row ownership - the library's automatic choice compares "
              "bytes only and does not see this cost. The dense Allreduce stays under 80 % at "
              "16 nodes on 25 Gb/s too: 2.6 MB per step against a 5-7 ms step on one thread.",
              "", "Inputs from distributed.md (apply.json, exchange.json, measured on the "
              "shared 2-core VM); the minimum of each set of repeats is used."]
    with open(os.path.join(args.results, "scale_model.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"10 Gb/s": "tab:red", "25 Gb/s": "tab:blue", "100 Gb/s": "tab:green"}
    for link in LINKS:
        rs = [r for r in out if r["link"] == link]
        n = [r["nodes"] for r in rs]
        for key, style, lab in (("sparse", "-o", "sparse"), ("dense", "--s", "dense")):
            axes[0].plot(n, [r[f"{key}_step_ms"] for r in rs], style, color=colors[link],
                         label=f"{lab}, {link}")
            axes[1].plot(n, [100 * r[f"{key}_efficiency"] for r in rs], style,
                         color=colors[link], label=f"{lab}, {link}")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("nodes")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("modelled step time (ms)")
    axes[1].set_ylabel("scaling efficiency (%)")
    axes[1].axhline(80, color="gray", lw=0.8)
    axes[1].legend(fontsize=7)
    fig.suptitle("MNIST MLP, k = 20, batch 100 per node, 1 thread per node: sparse (factors) "
                 "vs dense Allreduce", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(args.results, "scale_model.png"), dpi=110)
    print("plot:", os.path.join(args.results, "scale_model.png"))


if __name__ == "__main__":
    main()
