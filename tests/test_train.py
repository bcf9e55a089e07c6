"""Trainer: seeded shuffling, protocol, timings, logs, checkpoints, resume."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import optim, train
from meprop_cpu.nn import MLP
from meprop_cpu.train import LOG_KEYS, Trainer, build_optimizer, read_checkpoint
from toydata import blobs

N_IN, N_CLASSES = 12, 3


def make_data(n_train=50, n_dev=20, n_test=20, seed=0, with_test=True):
    """Tiny separable problem; column 0 of train holds the row index (to trace batches)."""
    out = blobs(N_IN, N_CLASSES, n_train, n_dev, n_test, seed)
    X, y = out["train"]
    X[:, 0] = np.arange(n_train, dtype=np.float32) / n_train
    if not with_test:
        del out["test"]
    return out


def make_run(sizes=(N_IN, 16, 16, N_CLASSES), k=4, mode="topk", dropout=0.2, opt="adam",
             sparse=True, seed=0, **kw):
    model = MLP(list(sizes), k=k, mode=mode, dropout=dropout, seed=seed)
    o = build_optimizer(opt, model.parameters(), sparse=sparse)
    return model, o


def read_log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def trace_batches(model):
    """Record the row ids (column 0) of every training batch the model sees."""
    seen, orig = [], model.forward

    def forward(x):
        if model.training:
            seen.append(np.rint(x[:, 0] * 50).astype(int).tolist())
        return orig(x)

    model.forward = forward
    return seen


# ------------------------------------------------------------------ shuffling

def test_shuffling_is_seeded_and_covers_every_example_once_per_epoch():
    data = make_data()
    runs = {}
    for seed in (0, 0, 1):
        model, opt = make_run()
        seen = trace_batches(model)
        Trainer(model, opt, data, batch_size=8, epochs=2, seed=seed, progress=False).fit()
        runs.setdefault(seed, []).append((seen, [p.data.copy() for p in model.parameters()]))
    (a, wa), (b, wb) = runs[0]
    (c, _), = runs[1]
    assert a == b
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))
    assert a != c
    # 50 examples, batch 8: 7 batches per epoch, the last partial one (2) kept
    assert [len(batch) for batch in a] == [8] * 6 + [2] + [8] * 6 + [2]
    for epoch in (a[:7], a[7:]):
        assert sorted(i for batch in epoch for i in batch) == list(range(50))
    assert a[:7] != a[7:]  # a fresh permutation each epoch


def test_permutation_comes_from_a_generator_seeded_by_seed():
    data = make_data()
    model, opt = make_run()
    seen = trace_batches(model)
    Trainer(model, opt, data, batch_size=50, epochs=2, seed=7, progress=False).fit()
    rng = np.random.default_rng(7)
    assert seen == [rng.permutation(50).tolist(), rng.permutation(50).tolist()]


# ------------------------------------------------------------------ logs, timings

def test_log_schema_timings_and_eval_steps(tmp_path):
    log = tmp_path / "run.jsonl"
    model, opt = make_run()
    t = Trainer(model, opt, make_data(), batch_size=5, epochs=2, evals_per_epoch=3,
                log_json=log, progress=False)
    summary = t.fit()
    lines = read_log(log)
    for rec in lines:
        missing = set(LOG_KEYS) - set(rec)
        assert not missing, (rec, missing)
    assert [r["event"] for r in lines] == ["eval", "eval", "epoch"] * 2 + ["summary"]
    assert t.eval_steps == [3, 6, 10] and [r["step"] for r in lines[:3]] == [3, 6, 10]
    assert [r["global_step"] for r in lines[:6]] == [3, 6, 10, 13, 16, 20]
    for rec in lines[:-1]:
        assert rec["hidden_sizes"] == [16, 16] and rec["k"] == 4 and rec["mode"] == "topk"
        assert rec["threads"] == mp.get_num_threads()
        assert 0 <= rec["dev_acc"] <= 100 and 0 <= rec["test_acc"] <= 100
        assert np.isfinite(rec["train_loss"]) and rec["train_loss"] > 0
        times = [rec[k] for k in ("time_epoch", "time_forward", "time_backward", "time_update")]
        assert all(isinstance(v, float) and v >= 0 for v in times)
        assert rec["time_forward"] + rec["time_backward"] + rec["time_update"] \
            <= rec["time_epoch"] + 1e-6
    # timings accumulate within an epoch
    assert lines[0]["time_epoch"] <= lines[1]["time_epoch"] <= lines[2]["time_epoch"]
    s = lines[-1]
    assert s == json.loads(json.dumps(summary))
    assert s["epochs_completed"] == 2 and s["best_dev"] == max(r["dev_acc"] for r in lines[:-1])
    assert s["mean_time_epoch"] == pytest.approx((lines[2]["time_epoch"]
                                                  + lines[5]["time_epoch"]) / 2)


def test_dense_model_logs_mode_dense(tmp_path):
    model, opt = make_run(k=None, dropout=0.0)
    t = Trainer(model, opt, make_data(), batch_size=10, epochs=1, log_json=tmp_path / "l",
                progress=False)
    t.fit()
    rec = read_log(tmp_path / "l")[0]
    assert rec["k"] is None and rec["mode"] == "dense"


def test_test_at_best_dev_on_a_crafted_sequence(tmp_path):
    model, opt = make_run()
    t = Trainer(model, opt, make_data(), batch_size=10, epochs=3, evals_per_epoch=2,
                log_json=tmp_path / "l", progress=False)
    devs = iter([50.0, 60.0, 55.0, 60.0, 70.0, 65.0])
    tests = iter([40.0, 45.0, 48.0])
    calls = []

    def fake(split):
        calls.append(split)
        return next(devs) if split == "dev" else next(tests)

    t.evaluate = fake
    s = t.fit()
    # test is evaluated only when dev strictly improves (50, 60, 70)
    assert calls == ["dev", "test", "dev", "test", "dev", "dev", "dev", "test", "dev"]
    recs = read_log(tmp_path / "l")[:-1]
    assert [r["dev_acc"] for r in recs] == [50, 60, 55, 60, 70, 65]
    assert [r["test_acc"] for r in recs] == [40, 45, 45, 45, 48, 48]
    assert s["best_dev"] == 70 and s["test_at_best_dev"] == 48
    assert (s["best_epoch"], s["best_step"]) == (3, 2)   # eval steps 2 and 5


def test_without_a_test_split_test_acc_is_null(tmp_path):
    model, opt = make_run()
    s = Trainer(model, opt, make_data(with_test=False), batch_size=10, epochs=1,
                log_json=tmp_path / "l", progress=False).fit()
    assert s["test_at_best_dev"] is None
    assert all(r["test_acc"] is None for r in read_log(tmp_path / "l"))


def test_progress_line_on_request(capsys):
    model, opt = make_run()
    Trainer(model, opt, make_data(), batch_size=10, epochs=1, progress=True).fit()
    err = capsys.readouterr().err
    assert "\r" in err and "steps/s" in err and "loss" in err
    model, opt = make_run()
    Trainer(model, opt, make_data(), batch_size=10, epochs=1, progress=None).fit()
    assert capsys.readouterr().err == ""   # stderr is not a terminal under pytest


def test_on_epoch_hook_and_callbacks_are_called():
    model, opt = make_run()
    calls, epochs = [], []
    t = Trainer(model, opt, make_data(), batch_size=10, epochs=2, progress=False,
                callbacks=[lambda tr, e, s: calls.append((e, s, tr.global_step))],
                on_epoch=lambda tr, rec: epochs.append(rec["epoch"]))
    t.fit()
    assert calls == [(e, s, 5 * (e - 1) + s) for e in (1, 2) for s in range(1, 6)]
    assert epochs == [1, 2]


def test_callback_may_shrink_the_model_between_steps(tmp_path):
    """meSimp-style physical removal of hidden neurons inside a callback."""
    model, opt = make_run(dropout=0.0)

    def drop_three_neurons(tr, epoch, step):
        if (epoch, step) != (1, 2):
            return
        lin, nxt = tr.model.linears[0], tr.model.linears[1]
        keep = np.arange(lin.n_out - 3)
        for p in (lin.W, lin.b):
            p.data = np.ascontiguousarray(p.data[keep])
            tr.optimizer.remap_state(p, p, keep_rows=keep)
        nxt.W.data = np.ascontiguousarray(nxt.W.data[:, keep])
        tr.optimizer.remap_state(nxt.W, nxt.W, keep_cols=keep)

    ckpt = tmp_path / "c.npz"
    t = Trainer(model, opt, make_data(), batch_size=10, epochs=2, progress=False,
                checkpoint=ckpt, log_json=tmp_path / "l", callbacks=[drop_three_neurons])
    t.fit()
    assert model.hidden_sizes == [13, 16]
    assert all(r["hidden_sizes"] == [13, 16] for r in read_log(tmp_path / "l"))
    meta, _ = read_checkpoint(ckpt)
    assert meta["model"]["sizes"] == [N_IN, 13, 16, N_CLASSES]
    # the original architecture does not fit any more; the shrunk one does
    m2, o2 = make_run(dropout=0.0)
    with pytest.raises(ValueError, match="sizes"):
        Trainer(m2, o2, make_data(), batch_size=10, epochs=3, progress=False).load_checkpoint(ckpt)
    m3 = train.model_from_checkpoint(ckpt)
    assert m3.hidden_sizes == [13, 16]
    for p, q in zip(m3.parameters(), model.parameters()):
        assert np.array_equal(p.data, q.data)
    o3 = build_optimizer("adam", m3.parameters())
    t3 = Trainer(m3, o3, make_data(), batch_size=10, epochs=3, progress=False)
    s = t3.fit(resume=ckpt)
    assert s["epochs_completed"] == 3


# ------------------------------------------------------------------ NaN stop

def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_checkpoint(tmp_path):
    ckpt = tmp_path / "c.npz"
    model, opt = make_run()

    def poison(tr, epoch, step):
        if (epoch, step) == (2, 3):
            tr.model.linears[0].W.data[...] = np.nan

    t = Trainer(model, opt, make_data(), batch_size=10, epochs=3, checkpoint=ckpt,
                log_json=tmp_path / "l", progress=False, callbacks=[poison])
    with np.errstate(all="ignore"):
        with pytest.raises(FloatingPointError, match=r"epoch 2, step 4\b") as ei:
            t.fit()
    assert "loss" in str(ei.value) and str(ckpt) in str(ei.value)
    meta, arrays = read_checkpoint(ckpt)
    assert meta["trainer"]["epoch"] == 1
    assert all(np.isfinite(a).all() for n, a in arrays.items() if n.startswith("param:"))
    last = read_log(tmp_path / "l")[-1]
    assert last["event"] == "error" and "epoch 2, step 4" in last["message"]


def test_floating_point_error_from_backward_names_epoch_and_step(tmp_path):
    model, opt = make_run()
    orig = model.backward
    count = {"n": 0}

    def backward(dy):
        count["n"] += 1
        if count["n"] == 8:   # epoch 2 (5 steps per epoch), step 3
            raise FloatingPointError("Linear.backward: dy contains 1 NaN/Inf value(s)")
        return orig(dy)

    model.backward = backward
    t = Trainer(model, opt, make_data(), batch_size=10, epochs=2, progress=False)
    with pytest.raises(FloatingPointError, match=r"epoch 2, step 3\b.*NaN/Inf"):
        t.fit()


def test_nan_weights_at_epoch_end_are_not_checkpointed(tmp_path):
    ckpt = tmp_path / "c.npz"
    model, opt = make_run()

    def poison(tr, epoch, step):
        if (epoch, step) == (2, 5):   # the last step: no further forward sees it
            tr.model.linears[-1].b.data[0] = np.inf

    t = Trainer(model, opt, make_data(), batch_size=10, epochs=2, checkpoint=ckpt,
                progress=False, callbacks=[poison])
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="epoch 2"):
        t.fit()
    assert read_checkpoint(ckpt)[0]["trainer"]["epoch"] == 1


# ------------------------------------------------------------------ checkpoints

def test_checkpoint_contents_and_no_pickle(tmp_path):
    ckpt = tmp_path / "c.npz"
    model, opt = make_run()
    t = Trainer(model, opt, make_data(), batch_size=10, epochs=1, checkpoint=ckpt,
                progress=False)
    t.fit()
    with np.load(ckpt, allow_pickle=False) as z:
        names = set(z.files)
        assert all(z[n].dtype != object for n in names)
    assert {"param:0.W", "param:0.b", "param:3.W", "param:3.b", "param:6.W", "meta"} <= names
    meta, arrays = read_checkpoint(ckpt)
    assert meta["format"] == train.CHECKPOINT_FORMAT and meta["version"] == 1
    assert meta["model"]["config"] == model.config
    assert meta["optimizer"]["kind"] == "Adam" and meta["optimizer"]["steps"] == 5
    assert meta["trainer"]["epoch"] == 1 and len(meta["trainer"]["history"]) == 1
    assert len(meta["rng"]["dropout"]) == 2
    assert meta["rng"]["shuffle"] == t._rng.bit_generator.state
    for name, p in model.state_dict().items():
        assert np.array_equal(arrays["param:" + name], p)


def _fail_halfway(f, **arrays):
    f.write(b"PK\x03\x04 partial garbage" * 10)
    raise OSError("disk full (simulated)")


def test_failing_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    ckpt = tmp_path / "c.npz"
    model, opt = make_run()
    t = Trainer(model, opt, make_data(), batch_size=10, epochs=2, checkpoint=ckpt,
                progress=False)
    t.epochs = 1
    t.fit()
    good = ckpt.read_bytes()
    t.epochs = 2
    monkeypatch.setattr(np, "savez", _fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        t.fit()
    monkeypatch.undo()
    assert ckpt.read_bytes() == good
    assert read_checkpoint(ckpt)[0]["trainer"]["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]   # no temp file left behind


def test_interrupted_save_keeps_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "c.npz"
    model, opt = make_run()
    t = Trainer(model, opt, make_data(), batch_size=10, epochs=1, checkpoint=ckpt,
                progress=False)
    t.fit()
    good = ckpt.read_bytes()

    def interrupted(f, **arrays):
        f.write(b"x" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        t.save_checkpoint()
    assert ckpt.read_bytes() == good and os.listdir(tmp_path) == ["c.npz"]


def _trained_checkpoint(tmp_path, **kw):
    ckpt = tmp_path / "c.npz"
    model, opt = make_run(**kw)
    Trainer(model, opt, make_data(), batch_size=10, epochs=1, checkpoint=ckpt,
            progress=False).fit()
    return ckpt


def test_architecture_mismatch_raises_value_error_naming_the_file(tmp_path):
    ckpt = _trained_checkpoint(tmp_path)
    for sizes in ((N_IN, 8, 16, N_CLASSES), (N_IN, 16, N_CLASSES)):
        model, opt = make_run(sizes=sizes)
        t = Trainer(model, opt, make_data(), batch_size=10, epochs=2, progress=False)
        before = [p.data.copy() for p in model.parameters()]
        with pytest.raises(ValueError, match=str(ckpt)):
            t.fit(resume=ckpt)
        assert all(np.array_equal(a, p.data) for a, p in zip(before, model.parameters()))
    model, opt = make_run(opt="sgd")
    with pytest.raises(ValueError, match=r"Adam.*SGD|SGD.*Adam"):
        Trainer(model, opt, make_data(), batch_size=10, epochs=2,
                progress=False).load_checkpoint(ckpt)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "no_meta", "bad_json"])
def test_corrupt_checkpoint_raises_value_error_naming_the_file(tmp_path, damage):
    ckpt = _trained_checkpoint(tmp_path)
    raw = ckpt.read_bytes()
    if damage == "truncate":
        ckpt.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        ckpt.write_bytes(b"\x00garbage" * 50)
    elif damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "no_meta":
        np.savez(ckpt.open("wb"), w=np.zeros(3, np.float32))
    else:
        np.savez(ckpt.open("wb"), meta=np.frombuffer(b"{not json", dtype=np.uint8))
    model, opt = make_run()
    t = Trainer(model, opt, make_data(), batch_size=10, epochs=2, progress=False)
    with pytest.raises(ValueError, match=str(ckpt)):
        t.load_checkpoint(ckpt)


def test_missing_checkpoint_raises_file_not_found(tmp_path):
    model, opt = make_run()
    t = Trainer(model, opt, make_data(), batch_size=10, epochs=2, progress=False)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        t.fit(resume=tmp_path / "nope.npz")


# ------------------------------------------------------------------ resume

def _state(model, opt):
    sd = opt.state_dict()
    return ([p.data.copy() for p in model.parameters()],
            [[a.copy() for a in st["arrays"]] if st else None for st in sd["params"]],
            [st["step"] if st else None for st in sd["params"]], sd["steps"])


@pytest.mark.parametrize("mode, opt_name, sparse", [("topk", "adam", True),
                                                    ("topk", "adam", False),
                                                    ("random", "adagrad", True),
                                                    ("unified", "sgd", True)])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, mode, opt_name, sparse):
    data = make_data(n_train=64)
    kw = dict(mode=mode, opt=opt_name, sparse=sparse, k=4, dropout=0.25)

    model_a, opt_a = make_run(**kw)
    ta = Trainer(model_a, opt_a, data, batch_size=6, epochs=3, evals_per_epoch=2, seed=3,
                 progress=False)
    sa = ta.fit()

    ckpt = tmp_path / "c.npz"
    model_b, opt_b = make_run(**kw)
    Trainer(model_b, opt_b, data, batch_size=6, epochs=2, evals_per_epoch=2, seed=3,
            checkpoint=ckpt, progress=False).fit()

    model_c, opt_c = make_run(**kw)   # a fresh process would build these from scratch
    tc = Trainer(model_c, opt_c, data, batch_size=6, epochs=3, evals_per_epoch=2, seed=3,
                 checkpoint=ckpt, progress=False)
    sc = tc.fit(resume=ckpt)

    wa, st_a, steps_a, n_a = _state(model_a, opt_a)
    wc, st_c, steps_c, n_c = _state(model_c, opt_c)
    assert all(np.array_equal(x, y) for x, y in zip(wa, wc))
    assert steps_a == steps_c and n_a == n_c == 3 * 11
    for x, y in zip(st_a, st_c):
        assert (x is None) == (y is None)
        if x is not None:
            assert all(np.array_equal(u, v) for u, v in zip(x, y))
    assert [d.rng_state() for d in model_a.modules if hasattr(d, "rng_state")] == \
        [d.rng_state() for d in model_c.modules if hasattr(d, "rng_state")]
    assert ta._rng.bit_generator.state == tc._rng.bit_generator.state
    assert ta.global_step == tc.global_step
    hist = lambda t: [(r["epoch"], r["step"], r["dev_acc"], r["test_acc"], r["train_loss"])
                      for r in t.history]
    assert hist(ta) == hist(tc) and len(hist(tc)) == 6
    assert (sa["best_dev"], sa["test_at_best_dev"]) == (sc["best_dev"], sc["test_at_best_dev"])
    assert read_checkpoint(ckpt)[0]["trainer"]["epoch"] == 3


def test_resume_when_already_finished_trains_nothing(tmp_path):
    ckpt = _trained_checkpoint(tmp_path)
    model, opt = make_run()
    t = Trainer(model, opt, make_data(), batch_size=10, epochs=1, progress=False)
    s = t.fit(resume=ckpt)
    assert s["epochs_completed"] == 1 and t.global_step == 5


def test_resume_appends_to_the_log(tmp_path):
    log, ckpt = tmp_path / "l", tmp_path / "c.npz"
    model, opt = make_run()
    Trainer(model, opt, make_data(), batch_size=10, epochs=1, checkpoint=ckpt, log_json=log,
            progress=False).fit()
    model, opt = make_run()
    Trainer(model, opt, make_data(), batch_size=10, epochs=2, checkpoint=ckpt, log_json=log,
            progress=False).fit(resume=ckpt)
    assert [(r["event"], r["epoch"]) for r in read_log(log)] == \
        [("epoch", 1), ("summary", 1), ("epoch", 2), ("summary", 2)]


# ------------------------------------------------------------------ helpers, validation

def test_build_optimizer_defaults():
    model = MLP([4, 5, 2])
    for name, cls, lr in (("adam", optim.Adam, 1e-3), ("adagrad", optim.AdaGrad, 0.01),
                          ("sgd", optim.SGD, 0.1)):
        o = build_optimizer(name, model.parameters())
        assert type(o) is cls and o.lr == lr and o.sparse
    o = build_optimizer("Adam", model.parameters(), lr=0.5, sparse=False, clip=5.0,
                        weight_decay=1e-4)
    assert (o.lr, o.sparse, o.clip, o.weight_decay) == (0.5, False, 5.0, 1e-4)
    with pytest.raises(ValueError, match="rmsprop"):
        build_optimizer("rmsprop", model.parameters())


@pytest.mark.parametrize("kw, exc, match", [
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(epochs=0), ValueError, "epochs"),
    (dict(evals_per_epoch=0), ValueError, "evals_per_epoch"),
    (dict(batch_size=2.5), TypeError, "batch_size"),
    (dict(callbacks=[1]), TypeError, "callbacks"),
])
def test_trainer_argument_errors(kw, exc, match):
    model, opt = make_run()
    args = dict(batch_size=10, epochs=1)
    args.update(kw)
    with pytest.raises(exc, match=match):
        Trainer(model, opt, make_data(), **args)


def test_trainer_data_errors():
    model, opt = make_run()
    data = make_data()
    with pytest.raises(ValueError, match="'dev'"):
        Trainer(model, opt, {"train": data["train"]}, batch_size=10, epochs=1)
    bad = dict(data, train=(data["train"][0].astype(np.float64), data["train"][1]))
    with pytest.raises(TypeError, match="float32"):
        Trainer(model, opt, bad, batch_size=10, epochs=1)
    bad = dict(data, dev=(data["dev"][0], data["dev"][1][:-1]))
    with pytest.raises(ValueError, match="labels"):
        Trainer(model, opt, bad, batch_size=10, epochs=1)


def test_evals_per_epoch_is_capped_at_the_steps():
    model, opt = make_run()
    t = Trainer(model, opt, make_data(n_train=20), batch_size=10, epochs=1, evals_per_epoch=5,
                progress=False)
    assert t.eval_steps == [1, 2]


# ------------------------------------------------------------------ real MNIST

def _mnist_available():
    from meprop_cpu import datasets
    return datasets.mnist_cache_path().is_file() or os.environ.get("MEPROP_TEST_NETWORK") == "1"


@pytest.mark.network
@pytest.mark.skipif(not _mnist_available(),
                    reason="MNIST not cached and MEPROP_TEST_NETWORK != 1")
def test_meprop_reaches_90_percent_on_real_mnist():
    from meprop_cpu import datasets
    data = datasets.mnist()
    X, y = data["train"]
    data = dict(data, train=(np.ascontiguousarray(X[:20000]), np.ascontiguousarray(y[:20000])))
    model = MLP([784, 128, 10], k=20, seed=0)
    opt = build_optimizer("adam", model.parameters())
    # Results are bit-identical for any kernel thread count; one thread keeps this test
    # fast where the OpenMP team and OpenBLAS's threads would compete for few cores.
    threads = mp.get_num_threads()
    mp.set_num_threads(1)
    try:
        s = Trainer(model, opt, data, batch_size=32, epochs=2, seed=0, progress=False).fit()
    finally:
        mp.set_num_threads(threads)
    assert s["test_at_best_dev"] >= 90.0, s   # 92.2 with this seed
