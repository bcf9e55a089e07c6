"""Same seed, same weights: training is bit-identical for 1 and 2 threads.

A few hundred steps of an MLP with meProp (k set) and dropout on synthetic
data, sized so that the forward products and the top-k / sparse backward
kernels cross their thresholds and really run on a team of 2 threads.
"""
import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import _core
from meprop_cpu.nn import MLP
from meprop_cpu.train import Trainer, build_optimizer

N_IN, N_CLASSES = 784, 10
BATCH, STEPS = 50, 240            # 3 epochs of 80 steps
# (mode, optimizer, sparse update, hidden sizes, k). The wide first layer makes
# the per-example top-k (B * n * 2 >= parallel_min_work) and the second layer's
# sparse dx run on 2 threads; the others run the dense products and the sparse
# dW on 2 threads.
CASES = [("topk", "adam", True, [2048, 256], 40),
         ("unified", "adagrad", False, [384, 384], 24),
         ("random", "sgd", True, [384, 384], 24)]


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    protos = rng.random((N_CLASSES, N_IN), dtype=np.float32)
    out = {}
    for split, n in (("train", BATCH * STEPS // 3), ("dev", 100)):
        y = rng.integers(0, N_CLASSES, size=n).astype(np.int64)
        X = (protos[y] + rng.normal(0, 0.4, size=(n, N_IN))).astype(np.float32)
        out[split] = (X, y)
    return out


def make_model(hidden, k, mode):
    return MLP([N_IN] + hidden + [N_CLASSES], k=k, mode=mode, dropout=0.3, seed=123)


def train_once(threads, mode, opt_name, sparse, hidden, k, data, epochs=3):
    old = mp.get_num_threads()
    mp.set_num_threads(threads)
    try:
        model = make_model(hidden, k, mode)
        opt = build_optimizer(opt_name, model.parameters(), sparse=sparse)
        t = Trainer(model, opt, data, batch_size=BATCH, epochs=epochs, seed=9, progress=False)
        t.fit()
        assert t.global_step == STEPS * epochs // 3
        return model, opt, t
    finally:
        mp.set_num_threads(old)


def test_the_work_is_large_enough_to_run_in_parallel():
    min_work = mp.show_config()["parallel_min_work"]
    assert BATCH * 2048 * 2 >= min_work                 # top-k rows of the 2048-wide layer
    assert BATCH * 40 * 2048 >= min_work                # sparse dx of the 256-wide layer
    assert BATCH * 24 * N_IN >= min_work                # sparse dW of the first layer
    assert BATCH * N_IN * 384 >= _core.dense_min_work()   # forward products


@pytest.mark.parametrize("mode, opt_name, sparse, hidden, k", CASES)
def test_same_seed_same_weights_for_one_and_two_threads(mode, opt_name, sparse, hidden, k):
    if not mp.openmp_enabled():
        pytest.skip("built without OpenMP: one thread only")
    data = make_data()
    m1, o1, t1 = train_once(1, mode, opt_name, sparse, hidden, k, data)
    m2, o2, t2 = train_once(2, mode, opt_name, sparse, hidden, k, data)
    for (name, a), (_, b) in zip(m1.named_parameters(), m2.named_parameters()):
        assert np.array_equal(a.data.view(np.uint32), b.data.view(np.uint32)), name
    s1, s2 = o1.state_dict(), o2.state_dict()
    for x, y in zip(s1["params"], s2["params"]):
        assert all(np.array_equal(u.view(np.uint32), v.view(np.uint32))
                   for u, v in zip(x["arrays"], y["arrays"]))
    assert [r["train_loss"] for r in t1.history] == [r["train_loss"] for r in t2.history]
    # the run is not trivially frozen: weights moved away from their initial values
    m0 = make_model(hidden, k, mode)
    assert not np.array_equal(m0.linears[1].W.data, m1.linears[1].W.data)


def test_same_seed_same_weights_run_to_run():
    data = make_data(1)
    a = train_once(2, "topk", "adam", True, [2048, 256], 40, data, epochs=1)[0]
    b = train_once(2, "topk", "adam", True, [2048, 256], 40, data, epochs=1)[0]
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert np.array_equal(x.data, y.data), name
