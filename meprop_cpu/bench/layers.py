"""Layer level: one linear layer's forward, backward and training step for
every variant (meProp topk / unified, this project's dense path, numpy,
PyTorch), checked against a numpy reference, then timed interleaved
(:func:`layer_variants`, :func:`check_layer_variants`, :func:`run_layer`)."""
import math

import numpy as np

from .end_to_end import _torch_adam
from .environment import (CpuMonitor, ThreadSetting, _busy, _busy_note, _loadavg, _quieter,
                          default_thread_controls)
from .profiles import SEED
from .timing import _PC, interleave, summarize


class _NumpyAdam:
    """Adam in numpy, PyTorch's formula, in place with preallocated scratch."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.params = params
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.tmp = [np.empty_like(p) for p in params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        b1, b2 = self.b1, self.b2
        step_size = self.lr / (1.0 - b1 ** self.t)
        inv_sqrt_bc2 = 1.0 / math.sqrt(1.0 - b2 ** self.t)
        for p, g, m, v, tmp in zip(self.params, grads, self.m, self.v, self.tmp):
            m *= b1
            np.multiply(g, 1.0 - b1, out=tmp)
            m += tmp
            v *= b2
            np.multiply(g, g, out=tmp)
            tmp *= 1.0 - b2
            v += tmp
            np.sqrt(v, out=tmp)
            tmp *= inv_sqrt_bc2
            tmp += self.eps
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp


def _layer_data(B, n_in, n_out, seed=SEED):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, n_in), dtype=np.float32)
    dy = rng.standard_normal((B, n_out), dtype=np.float32)
    a = np.sqrt(6.0 / (n_in + n_out))
    W = rng.uniform(-a, a, size=(n_out, n_in)).astype(np.float32)
    b = np.zeros(n_out, dtype=np.float32)
    return x, W, b, dy


def _key(variant, k, op):
    return f"{variant}/k={k}/{op}" if k is not None else f"{variant}/{op}"


def layer_variants(B, n_in, n_out, ks, torch_mod=None, seed=SEED, data=None):
    """The timed callables for one layer shape: {key: callable}, key
    ``"variant/op"`` or ``"variant/k=K/op"``. Buffers, layers, optimizers and
    the torch graph are built here, outside the timing."""
    from .. import nn, optim
    x, W, b, dy = _layer_data(B, n_in, n_out, seed) if data is None else data
    fns = {}
    Wp, bp = nn.Parameter(W, "W"), nn.Parameter(b, "b")
    Wp.data, bp.data = W, b                    # share the arrays (Parameter copies otherwise)
    opt = optim.Adam([Wp, bp], lr=1e-3, sparse=True)

    def make_layer(mode, k):
        lin = nn.Linear(n_in, n_out, k=k, mode=mode, init="zeros")
        lin.W, lin.b = Wp, bp
        lin.forward(x)                          # sizes the workspace, stores x
        return lin

    def ops(name, lin, k=None):
        def backward():
            lin.backward(dy)
            # meProp's backward hands the weight gradient to the optimizer in factored
            # form (formed row by row inside the update); reading .values forms it here,
            # so "backward" is the whole backward: top-k, dx and dW
            lin.W.grad.values

        def step():
            lin.forward(x)
            lin.backward(dy)
            opt.step()
            opt.zero_grad()
        fns[_key(name, k, "backward")] = backward
        fns[_key(name, k, "step")] = step

    dense = make_layer("dense", None)
    fns[_key("dense", None, "forward")] = lambda: dense.forward(x)
    ops("dense", dense)

    y_np = np.empty((B, n_out), dtype=np.float32)
    dx_np = np.empty((B, n_in), dtype=np.float32)
    dW_np = np.empty((n_out, n_in), dtype=np.float32)
    db_np = np.empty(n_out, dtype=np.float32)
    WT, dyT = W.T, dy.T
    nadam = _NumpyAdam([W, b])

    def np_forward():
        np.matmul(x, WT, out=y_np)
        np.add(y_np, b, out=y_np)

    def np_backward():
        np.matmul(dy, W, out=dx_np)
        np.matmul(dyT, x, out=dW_np)
        np.sum(dy, axis=0, out=db_np)

    def np_step():
        np_forward()
        np_backward()
        nadam.step([dW_np, db_np])
    fns[_key("numpy", None, "forward")] = np_forward
    fns[_key("numpy", None, "backward")] = np_backward
    fns[_key("numpy", None, "step")] = np_step

    if torch_mod is not None:
        torch = torch_mod
        lin = torch.nn.Linear(n_in, n_out)
        lin.weight = torch.nn.Parameter(torch.from_numpy(W))     # shares W's memory
        lin.bias = torch.nn.Parameter(torch.from_numpy(b))
        xt = torch.from_numpy(x).requires_grad_(True)            # dx is computed, as for ours
        dyt = torch.from_numpy(dy)
        # the backward timing replays one graph, whose saved weight must not be
        # modified in place (torch's version check): a layer with its own copy
        lin_b = torch.nn.Linear(n_in, n_out)
        with torch.no_grad():
            lin_b.weight.copy_(lin.weight)
            lin_b.bias.copy_(lin.bias)
        y_graph = lin_b(xt)
        inputs = [xt, lin_b.weight, lin_b.bias]
        topt = _torch_adam(torch, lin.parameters())

        def t_step():
            topt.zero_grad(set_to_none=True)
            xt.grad = None
            y = lin(xt)
            y.backward(dyt)
            topt.step()
        fns[_key("torch", None, "forward")] = lambda: lin(xt)
        fns[_key("torch", None, "backward")] = lambda: torch.autograd.grad(
            y_graph, inputs, dyt, retain_graph=True)
        fns[_key("torch", None, "step")] = t_step

    for k in ks:
        if k >= n_out:
            continue
        ops("topk", make_layer("topk", k), k)
        ops("unified", make_layer("unified", k), k)
    return fns


def check_layer_variants(B, n_in, n_out, ks, torch_mod=None, seed=SEED):
    """Untimed: every variant's backward against a numpy (float64) reference.
    Returns a list of problems (empty when all agree)."""
    from .. import nn
    x, W, b, dy = _layer_data(B, n_in, n_out, seed)
    x64, W64, dy64 = x.astype(np.float64), W.astype(np.float64), dy.astype(np.float64)
    problems = []

    def close(name, got, ref):
        scale = float(np.abs(ref).max()) or 1.0
        err = float(np.abs(np.asarray(got, dtype=np.float64) - ref).max()) / scale
        if not err <= 1e-3:
            problems.append(f"{name}: max relative error {err:.2e}")

    def check(name, dys, dx, dw):
        close(f"{name} dx", dx, dys @ W64)
        close(f"{name} dW", dw, dys.T @ x64)

    for mode, k in [("dense", None)] + [(m, k) for k in ks if k < n_out
                                       for m in ("topk", "unified")]:
        lin = nn.Linear(n_in, n_out, k=k, mode=mode, init="zeros")
        lin.W.data, lin.b.data = W.copy(), b.copy()
        lin.forward(x)
        lay_dx = np.array(lin.backward(dy))
        lay_dw = lin.W.grad.to_dense(n_out)
        close(f"{mode} k={k} db", lin.b.grad, dy64.sum(0))
        if mode == "dense":
            dys = dy64
        elif mode == "topk":
            order = np.argsort(-np.abs(dy64), axis=1, kind="stable")[:, :k]
            mask = np.zeros(dy.shape, dtype=bool)
            np.put_along_axis(mask, order, True, axis=1)
            dys = np.where(mask, dy64, 0.0)
        else:
            cols = np.argsort(-np.abs(dy64).sum(0), kind="stable")[:k]
            dys = np.zeros_like(dy64)
            dys[:, cols] = dy64[:, cols]
        check(f"{mode} k={k}", dys, lay_dx, lay_dw)
    check("numpy", dy64, dy @ W, dy.T @ x)
    if torch_mod is not None:
        lin = torch_mod.nn.Linear(n_in, n_out)
        with torch_mod.no_grad():
            lin.weight.copy_(torch_mod.from_numpy(W))
            lin.bias.zero_()
        xt = torch_mod.from_numpy(x.copy()).requires_grad_(True)
        gx, gw, gb = torch_mod.autograd.grad(lin(xt), [xt, lin.weight, lin.bias],
                                             torch_mod.from_numpy(dy.copy()))
        check("torch", dy64, gx.numpy(), gw.numpy())
        close("torch db", gb.numpy(), dy64.sum(0))
    return problems


def _parse_key(key):
    parts = key.split("/")
    variant, op = parts[0], parts[-1]
    k = int(parts[1][2:]) if len(parts) == 3 else None
    return variant, k, op


def run_layer_group(fns, threads, controls, repeats, warmup, clock=None):
    """Time ``fns`` interleaved with ``threads`` threads for every pool.

    Returns {"threads", "threads_applied" (read back before timing),
    "threads_after", "results": [{"variant", "k", "op", summary...}]}.
    """
    with ThreadSetting(threads, controls) as ts:
        before = ts.check()
        times = interleave(fns, repeats, warmup, clock=clock)
        after = ts.check()
    results = []
    for key, t in times.items():
        variant, k, op = _parse_key(key)
        results.append(dict({"variant": variant, "k": k, "op": op}, **summarize(t)))
    return {"threads": threads, "threads_applied": before, "threads_after": after,
            "results": results}


def run_layer(shapes, ks, threads_list, repeats, warmup, torch_mod=None, controls=None,
              log=print, check=True, settler=None, retries=0, monitor=None):
    """The layer-level sweep: for every shape and thread count, one interleaved
    group of all variants and ks. Returns a list of group records."""
    controls = default_thread_controls(torch_mod) if controls is None else controls
    groups = []
    for shape in shapes:
        B, n_in, n_out = shape
        problems = None
        if check:
            problems = check_layer_variants(B, n_in, n_out, ks, torch_mod)
            if problems:
                log(f"  gradient check FAILED for {tuple(shape)}: {problems}")
        fns = layer_variants(B, n_in, n_out, ks, torch_mod)
        for T in threads_list:
            best = None
            for attempt in range(1 + retries):
                if settler is not None:
                    settler.settle()
                t0 = _PC()
                load0 = _loadavg()
                mon = (CpuMonitor if monitor is None else monitor)().start()
                g = run_layer_group(fns, T, controls, repeats, warmup)
                g.update({"shape": [B, n_in, n_out], "load_start": load0,
                          "load_end": _loadavg(), "cpu": mon.stop(),
                          "check": "skipped" if problems is None else (problems or "ok"),
                          "wall_s": _PC() - t0, "attempts": attempt + 1})
                log(f"  layer ({B}, {n_in}, {n_out}) threads {T}: {len(fns)} timings in "
                    f"{g['wall_s']:.1f} s{_busy_note(g['cpu'])}"
                    + ("; measuring again" if _busy(g) and attempt < retries else ""))
                best = _quieter(best, g)
                if not _busy(g):
                    break
            best["attempts"] = attempt + 1
            groups.append(best)
        del fns
    return groups
