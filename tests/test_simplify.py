"""meSimp: activeness records, the pruning rule, physical compaction (same function
as masking, optimizer state kept), schedules, Trainer integration, checkpoint
resume after shrinking, model export and the CLI. Synthetic data only."""
import json
from pathlib import Path

import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import cli, nn, optim, train
from meprop_cpu.kernels import RowGrad
from meprop_cpu.nn import MLP, Linear
from meprop_cpu.simplify import (CycleSchedule, EveryN, Simplifier, compact, hidden_layers,
                                 select_keep)
from meprop_cpu.train import Trainer, build_optimizer, read_checkpoint
from toydata import blobs

N_IN, N_CLASSES = 12, 3


def make_data(n_train=60, n_dev=20, n_test=20, seed=0):
    return blobs(N_IN, N_CLASSES, n_train, n_dev, n_test, seed)


def read_log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def int_grad(rng, shape, lo=-2, hi=3):
    """Small integers as float32: many exact ties and zeros, exact column sums."""
    return rng.integers(lo, hi, size=shape).astype(np.float32)


# ------------------------------------------------------------------ records

def naive_selected(dy, k, mode):
    """The (b, j) pairs a layer selects, by plain Python sorting (ties: lower j)."""
    B, n = dy.shape
    if mode == "dense" or k is None or k >= n:
        return [(b, j) for b in range(B) for j in range(n)]
    if mode == "unified":
        score = [sum(abs(float(dy[b, j])) for b in range(B)) for j in range(n)]
        S = sorted(range(n), key=lambda j: (-score[j], j))[:k]
        return [(b, j) for b in range(B) for j in S]
    out = []
    for b in range(B):
        order = sorted(range(n), key=lambda j: (-abs(float(dy[b, j])), j))
        out += [(b, j) for j in order[:k]]
    return out


def naive_hits(dys, k, mode, n):
    hits, seen = np.zeros(n, dtype=np.int64), 0
    for dy in dys:
        for b, j in naive_selected(dy, k, mode):
            if dy[b, j] != 0:
                hits[j] += 1
        seen += dy.shape[0]
    return hits, seen


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode, k, n_out", [
    ("topk", 4, 13), ("topk", 1, 13), ("topk", 13, 13), ("topk", 20, 13),
    ("unified", 5, 13), ("dense", None, 13), ("topk", 7, 300)])
def test_records_count_what_a_naive_reference_counts(mode, k, n_out, threads):
    rng = np.random.default_rng(n_out + (k or 0))
    lin = Linear(7, n_out, k=k, mode=mode, seed=1)
    lin.track_hits = True
    dys = [int_grad(rng, (B, n_out)) for B in (5, 1, 9)]
    dys[0][2] = 0.0                               # an all-zero example
    prev = mp.get_num_threads()
    mp.set_num_threads(threads)
    try:
        for dy in dys:
            lin.forward(rng.normal(size=(dy.shape[0], 7)).astype(np.float32))
            lin.backward(dy)
    finally:
        mp.set_num_threads(prev)
    hits, seen = naive_hits(dys, k, mode, n_out)
    np.testing.assert_array_equal(lin.hits, hits)
    assert lin.seen == seen == 15


def test_records_are_off_by_default_and_reset_to_the_width():
    lin = Linear(4, 6, k=2, seed=0)
    lin.forward(np.ones((3, 4), np.float32))
    lin.backward(np.ones((3, 6), np.float32))
    assert lin.seen == 0 and not lin.hits.any()
    lin.track_hits = True
    lin.backward(np.ones((3, 6), np.float32))
    assert lin.seen == 3 and lin.hits.sum() == 6
    compact(nn.Sequential(lin, nn.ReLU(), Linear(6, 2, seed=1)), 0, np.array([1, 2, 5]))
    assert lin.hits.shape == (3,) and lin.seen == 0 and lin.track_hits


def test_simplifier_tracks_hidden_layers_only():
    model = MLP([N_IN, 10, 8, N_CLASSES], k=3, seed=0)
    Simplifier(model, schedule=EveryN(5))
    assert [m.track_hits for m in model.linears] == [True, True, False]


# ------------------------------------------------------------------ the rule

@pytest.mark.parametrize("hits, seen, rate, min_width, keep", [
    (range(10), 25, 0.1, 1, range(2, 10)),          # floor(2.5) = 2: hits 2 survive
    (range(10), 29, 0.1, 1, range(2, 10)),          # floor(2.9) = 2
    (range(10), 30, 0.1, 1, range(3, 10)),          # floor(3.0) = 3: hits 2 are removed
    (range(10), 9, 0.1, 1, range(10)),              # floor(0.9) = 0: nothing removed
    (range(10), 0, 0.5, 1, range(10)),              # nothing seen: nothing removed
    (range(10), 1000, 0.0, 1, range(10)),           # rate 0: nothing removed
    ([3, 3, 3], 30, 0.1, 1, [0, 1, 2]),             # exactly at the threshold: kept
    ([5, 0, 0, 7, 0, 3], 100, 0.1, 1, [3]),         # all below: the most-hit one
    ([5, 0, 0, 7, 0, 3], 100, 0.1, 2, [0, 3]),      # min_width 2: the two most hit
    ([1, 4, 4, 0, 4], 100, 0.1, 2, [1, 2]),         # ties: lower index first
    ([0, 0, 0], 100, 0.1, 1, [0]),
    ([0, 0, 0], 100, 0.1, 5, [0, 1, 2]),            # min_width above the width: keep all
    ([50, 1, 60, 2], 100, 0.1, 2, [0, 2]),          # the rule already keeps min_width
    ([50, 1, 60, 2], 100, 0.1, 3, [0, 2, 3]),
])
def test_pruning_rule_on_hand_made_counters(hits, seen, rate, min_width, keep):
    got = select_keep(np.array(list(hits), dtype=np.int64), seen, rate, min_width)
    assert got.dtype == np.int64
    assert got.tolist() == list(keep)


def test_simplification_step_applies_the_rule_per_layer_and_resets_counters():
    model = MLP([N_IN, 6, 5, N_CLASSES], k=2, seed=0)
    simp = Simplifier(model, prune_rate=0.25, min_width=2, schedule=EveryN(1))
    l0, l1, out = model.linears
    W0, W1, W2 = (m.W.data.copy() for m in model.linears)
    l0.hits[:] = [10, 1, 2, 3, 9, 0]
    l0.seen = 12                                   # threshold floor(3.0) = 3
    l1.hits[:] = [0, 1, 0, 2, 0]
    l1.seen = 40                                   # threshold 10: min_width keeps j=1, 3
    rec = simp.simplify(global_step=7)
    assert model.sizes == [N_IN, 3, 2, N_CLASSES]
    assert rec["hidden_sizes"] == [3, 2] and rec["removed"] == [3, 3]
    np.testing.assert_array_equal(l0.W.data, W0[[0, 3, 4]])
    np.testing.assert_array_equal(l1.W.data, W1[[1, 3]][:, [0, 3, 4]])
    np.testing.assert_array_equal(out.W.data, W2[:, [1, 3]])
    assert [m.seen for m in (l0, l1)] == [0, 0] and l0.hits.shape == (3,)
    assert simp.sizes_log == [(7, [3, 2])]
    assert out.n_out == N_CLASSES                 # the output layer is never pruned


def test_removed_neurons_never_come_back_and_dense_switch_is_logged():
    model = MLP([N_IN, 8, 8, N_CLASSES], k=3, seed=0)
    simp = Simplifier(model, prune_rate=0.5, schedule=EveryN(1))
    l0, l1 = hidden_layers(model)
    l0.hits[:] = [9, 0, 9, 0, 9, 4, 0, 0]
    l0.seen = l1.seen = 10
    l1.hits[:] = 9
    simp.simplify(1)
    assert model.hidden_sizes == [3, 8] and l0.sparse is False and l1.sparse is True
    assert simp.log[-1]["became_dense"] == [0] and simp.log[-1]["dense_layers"] == [0]
    l0.hits[:] = 9
    l1.hits[:] = 9
    l0.seen = l1.seen = 10
    simp.simplify(2)
    assert model.hidden_sizes == [3, 8] and simp.log[-1]["became_dense"] == []


# ------------------------------------------------------------------ compaction

def train_steps(model, opt, data, steps, B=8, seed=0):
    X, y = data["train"]
    loss = nn.SoftmaxCrossEntropy()
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        i = rng.choice(X.shape[0], B, replace=False)
        loss.forward(model.forward(X[i]), y[i])
        model.backward(loss.backward())
        opt.step()
        opt.zero_grad()


def mask(model, layer, removed):
    """The authors' way: the removed neurons' outputs are forced to zero."""
    lin, nxt = model.linears[layer], model.linears[layer + 1]
    lin.W.data[removed] = 0.0
    lin.b.data[removed] = 0.0
    nxt.W.data[:, removed] = 0.0


def dense_grad(p):
    g = p.grad
    if isinstance(g, RowGrad):
        return g.values if g.rows is None else g.to_dense(p.data.shape[0])
    return g


@pytest.mark.parametrize("sparse_update, keep1", [
    (True, [1, 2, 4, 6, 7, 8]), (False, [1, 2, 4, 6, 7, 8]), (False, [1, 2, 4, 7, 8])])
def test_compacted_network_equals_masked_network(sparse_update, keep1):
    """Outputs, gradients and the next Adam step (with state) of the compacted
    network equal those of the masked one on the surviving neurons. With
    keep1 of length 5 = k the second hidden layer's backward turns dense; then
    only the dense (paper) update matches the masked twin step for step: a
    row-sparse update of a dense layer also moves rows whose gradient is zero
    in this batch, as it does for any dense layer (see simplify.py)."""
    data = make_data()
    sizes, k = [N_IN, 14, 10, N_CLASSES], 5
    keep = [np.array([0, 2, 3, 5, 6, 7, 9, 10, 12]), np.array(keep1)]
    removed = [np.setdiff1d(np.arange(n), kp) for n, kp in zip(sizes[1:3], keep)]
    models, opts = [], []
    for _ in range(2):
        m = MLP(sizes, k=k, seed=3)
        o = optim.Adam(m.parameters(), sparse=sparse_update)
        train_steps(m, o, data, 4)                 # Adam state is non-trivial
        models.append(m)
        opts.append(o)
    cm, co = models[0], opts[0]
    mm, mo = models[1], opts[1]
    for i in (0, 1):
        compact(cm, i, keep[i], co)
        mask(mm, i, removed[i])
    assert cm.hidden_sizes == [9, len(keep1)] and mm.hidden_sizes == [14, 10]
    assert cm.linears[1].sparse is (len(keep1) > k) and mm.linears[1].sparse is True

    # which entries of each parameter survive, in the masked network's indexing
    sel = [np.ix_(keep[0]), np.ix_(keep[0]), np.ix_(keep[1], keep[0]), np.ix_(keep[1]),
           np.ix_(np.arange(N_CLASSES), keep[1]), np.ix_(np.arange(N_CLASSES))]
    X, y = data["dev"]
    np.testing.assert_allclose(cm.logits(X), mm.logits(X), rtol=1e-6, atol=1e-6)

    loss = nn.SoftmaxCrossEntropy()
    Xb, yb = data["train"][0][:16], data["train"][1][:16]
    for m in (cm, mm):
        m.train()
        loss.forward(m.forward(Xb), yb)
        m.backward(loss.backward())
    for pc, pm, s in zip(cm.parameters(), mm.parameters(), sel):
        gc, gm = dense_grad(pc), dense_grad(pm)
        assert gc.shape == pc.data.shape
        np.testing.assert_allclose(gc, gm[s], rtol=1e-5, atol=1e-7)
    # the masked neurons got no gradient at all
    assert not dense_grad(mm.linears[0].W)[removed[0]].any()
    assert not dense_grad(mm.linears[1].b)[removed[1]].any()

    co.step()
    mo.step()
    for pc, pm, s in zip(cm.parameters(), mm.parameters(), sel):
        np.testing.assert_allclose(pc.data, pm.data[s], rtol=1e-5, atol=1e-6)
        sc, sm = co.state[id(pc)], mo.state[id(pm)]
        assert sc["step"] == sm["step"] == 5
        for a, b in zip(sc["arrays"], sm["arrays"]):
            np.testing.assert_allclose(a, b[s], rtol=1e-5, atol=1e-9)
    for i in (0, 1):                               # keep the masked twin masked
        mask(mm, i, removed[i])
    np.testing.assert_allclose(cm.logits(X), mm.logits(X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.Adam(ps), lambda ps: optim.AdaGrad(ps, lr=0.1),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), lambda ps: optim.SGD(ps, lr=0.1)])
def test_compaction_keeps_surviving_parameters_and_optimizer_state_unchanged(make_opt):
    data = make_data()
    model = MLP([N_IN, 9, 7, N_CLASSES], k=3, seed=1)
    opt = make_opt(model.parameters())
    train_steps(model, opt, data, 3)
    params = model.parameters()
    ids = [id(p) for p in params]
    before = {id(p): (p.data.copy(), None if id(p) not in opt.state else
                      (opt.state[id(p)]["step"], [a.copy() for a in opt.state[id(p)]["arrays"]]))
              for p in params}
    k0, k1 = np.array([0, 3, 4, 8]), np.array([2, 3, 6])
    assert compact(model, 0, k0, opt) == 5
    assert compact(model, 1, k1, opt) == 4
    assert [id(p) for p in model.parameters()] == ids          # the same Parameter objects
    sel = [np.ix_(k0), np.ix_(k0), np.ix_(k1, k0), np.ix_(k1),
           np.ix_(np.arange(N_CLASSES), k1), np.ix_(np.arange(N_CLASSES))]
    for p, s in zip(params, sel):
        data0, st0 = before[id(p)]
        assert p.data.dtype == np.float32 and p.data.flags.c_contiguous
        np.testing.assert_array_equal(p.data, data0[s])
        if st0 is None:
            assert id(p) not in opt.state
            continue
        st = opt.state[id(p)]
        assert st["step"] == st0[0] and len(st["arrays"]) == len(st0[1])
        for a, a0 in zip(st["arrays"], st0[1]):
            assert a.shape == p.data.shape and a.flags.c_contiguous and a.dtype == np.float32
            np.testing.assert_array_equal(a, a0[s])
    state_arrays = [a for st in opt.state.values() for a in st["arrays"]]
    train_steps(model, opt, data, 2)               # and training goes on at the new sizes
    for p in params:
        if id(p) in opt.state:
            assert opt.state[id(p)]["step"] == before[id(p)][1][0] + 2
    # the state was updated in place, not silently re-created (which would lose it)
    assert all(any(a is b for st in opt.state.values() for b in st["arrays"])
               for a in state_arrays)


def test_compact_rejects_bad_keep():
    model = MLP([N_IN, 6, N_CLASSES], k=2, seed=0)
    for keep in (np.array([], np.int64), np.array([0, 6]), np.array([3, 1]), np.array([1, 1]),
                 np.array([[0, 1]])):
        with pytest.raises(ValueError, match="keep"):
            compact(model, 0, keep)
    with pytest.raises(ValueError, match="layer"):
        compact(model, 1, np.array([0]))
    assert model.hidden_sizes == [6]


# ------------------------------------------------------------------ schedules

def test_cycle_schedule_fires_on_exactly_the_expected_steps():
    sch = CycleSchedule(cycle_epochs=2, steps_per_epoch=3)
    spe = 7                                        # fire after minibatches 2, 4, 7
    assert sch.steps_in_epoch(spe) == [2, 4, 7]
    expected = [(e - 1) * spe + s for e in (1, 2, 5, 6) for s in (2, 4, 7)]
    assert sch.firing_steps(8, spe) == expected
    assert [sch.tracking(e) for e in range(1, 9)] == [True, True, False, False] * 2
    def ends(sch):
        return [(e, s) for e in range(1, 9) for s in range(1, spe + 1)
                if sch.cycle_end(e, s, spe, (e - 1) * spe + s)]
    # the authors' reset (default): at each simplification point of a cycle's last epoch
    assert ends(sch) == [(e, s) for e in (2, 4, 6, 8) for s in (2, 4, 7)] and sch.keep_steps
    paper = CycleSchedule(cycle_epochs=2, steps_per_epoch=3, reset="paper")
    assert ends(paper) == [(2, 7), (4, 7), (6, 7), (8, 7)] and not paper.keep_steps
    assert ends(CycleSchedule(2, 3, reset_optimizer=False)) == []
    # more steps asked than minibatches: every minibatch
    assert CycleSchedule(1, 8).steps_in_epoch(5) == [1, 2, 3, 4, 5]
    assert CycleSchedule(1, 8).firing_steps(3, 5) == [1, 2, 3, 4, 5, 11, 12, 13, 14, 15]
    assert CycleSchedule(5, 8).steps_in_epoch(550) == [68, 137, 206, 275, 343, 412, 481, 550]


def test_every_n_fires_on_exactly_the_expected_steps():
    assert EveryN(4).firing_steps(3, 7) == [4, 8, 12, 16, 20]
    assert EveryN(1).firing_steps(1, 3) == [1, 2, 3]
    assert all(EveryN(4).tracking(e) for e in range(1, 5))
    assert not EveryN(4).cycle_end(1, 4, 7, 4) and EveryN(4, reset_optimizer=True).cycle_end(
        1, 4, 7, 4)


class Recorder(Simplifier):
    def simplify(self, global_step=None, epoch=None, step=None):
        self.fired = getattr(self, "fired", []) + [global_step]
        self.tracks = getattr(self, "tracks", []) + [[m.track_hits for m in self.layers]]
        return super().simplify(global_step, epoch, step)


@pytest.mark.parametrize("schedule, resets", [
    (CycleSchedule(cycle_epochs=2, steps_per_epoch=3, reset="paper"), [14, 28, 42]),
    (CycleSchedule(cycle_epochs=2, steps_per_epoch=3),
     [(e - 1) * 7 + s for e in (2, 4, 6) for s in (2, 4, 7)]),
    (EveryN(5), []), (EveryN(5, reset_optimizer=True), list(range(5, 43, 5)))])
def test_schedules_fire_inside_the_trainer(schedule, resets):
    data = make_data(n_train=60)                   # batch 9: 7 steps per epoch
    model = MLP([N_IN, 16, 16, N_CLASSES], k=4, seed=0)
    opt = build_optimizer("adam", model.parameters())
    simp = Recorder(model, opt, prune_rate=0.0, schedule=schedule)
    tracking = []
    t = Trainer(model, opt, data, batch_size=9, epochs=6, progress=False,
                callbacks=[lambda tr, e, s: tracking.append(model.linears[0].track_hits),
                           simp])
    t.fit()
    assert simp.fired == schedule.firing_steps(6, 7)
    assert all(all(tr) for tr in simp.tracks)
    assert simp.optimizer_resets == resets
    if isinstance(schedule, CycleSchedule):
        assert tracking == [e in (1, 2, 5, 6) for e in range(1, 7) for _ in range(7)]
        if schedule.reset == "paper":
            assert opt.state == {}                 # reset after the last cycle's last step
        else:                                      # moments zeroed, step counts kept
            assert opt.state and all(st["step"] == 42 for st in opt.state.values())
            assert all(not a.any() for st in opt.state.values() for a in st["arrays"])
    else:
        assert all(tracking)


# ------------------------------------------------------------------ bad arguments

@pytest.mark.parametrize("make, name", [
    (lambda m: Simplifier(m, prune_rate=1.0), "prune_rate"),
    (lambda m: Simplifier(m, prune_rate=-0.1), "prune_rate"),
    (lambda m: Simplifier(m, prune_rate=float("nan")), "prune_rate"),
    (lambda m: Simplifier(m, min_width=0), "min_width"),
    (lambda m: Simplifier(m, schedule="cycle"), "schedule"),
    (lambda m: Simplifier(m, optimizer=optim.Adam(MLP([3, 4, 2]).parameters())), "optimizer"),
    (lambda m: Simplifier(MLP([N_IN, N_CLASSES])), "model"),
    (lambda m: CycleSchedule(cycle_epochs=0), "cycle_epochs"),
    (lambda m: CycleSchedule(steps_per_epoch=0), "steps_per_epoch"),
    (lambda m: CycleSchedule(reset="sometimes"), "reset"),
    (lambda m: EveryN(0), "n"),
    (lambda m: select_keep(np.array([1, 2]), 10, prune_rate=1.5), "prune_rate"),
    (lambda m: select_keep(np.array([1, 2]), -1), "seen"),
    (lambda m: select_keep(np.array([-1, 2]), 10), "hits"),
    (lambda m: select_keep(np.array([1.5, 2]), 10), "hits"),
    (lambda m: select_keep(np.array([1, 2]), 10, min_width=0), "min_width"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(make, name):
    model = MLP([N_IN, 6, N_CLASSES], k=2)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        make(model)


@pytest.mark.parametrize("make, name", [
    (lambda: Simplifier(MLP([3, 4, 2]), prune_rate="0.1"), "prune_rate"),
    (lambda: CycleSchedule(cycle_epochs=2.0), "cycle_epochs"),
    (lambda: EveryN(True), "n"),
])
def test_wrong_types_raise_type_error_naming_the_argument(make, name):
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        make()


# ------------------------------------------------------------------ trainer, checkpoints

def mesimp_run(tmp_path, epochs, resume=None, tag="a", **kw):
    data = make_data(n_train=60)
    if resume is None:
        model = MLP([N_IN, 24, 20, N_CLASSES], k=5, seed=0, dropout=0.1)
    else:
        model = train.model_from_checkpoint(resume)
    opt = build_optimizer("adam", model.parameters())
    simp = Simplifier(model, opt, prune_rate=0.25, min_width=2,
                      schedule=CycleSchedule(cycle_epochs=1, steps_per_epoch=2))
    t = Trainer(model, opt, data, batch_size=10, epochs=epochs, progress=False,
                log_json=tmp_path / f"{tag}.jsonl", checkpoint=tmp_path / f"{tag}.npz",
                callbacks=[simp], **kw)
    t.fit(resume=resume)
    return model, opt, simp, t


def test_trainer_log_shows_every_simplification_step(tmp_path):
    model, opt, simp, t = mesimp_run(tmp_path, 4)
    recs = read_log(tmp_path / "a.jsonl")
    simp_lines = [r for r in recs if r["event"] == "simplify"]
    assert [r["global_step"] for r in simp_lines] == [3, 6, 15, 18]   # 6 steps per epoch
    assert [r["global_step"] for r in simp_lines] == [g for g, _ in simp.sizes_log]
    assert [r["hidden_sizes"] for r in simp_lines] == [s for _, s in simp.sizes_log]
    assert all(set(train.LOG_KEYS) <= set(r) for r in recs)
    assert model.hidden_sizes != [24, 20]           # it did shrink
    sizes = [r["hidden_sizes"] for r in recs if r["event"] in ("simplify", "epoch")]
    assert all(all(a >= b for a, b in zip(s, s2)) for s, s2 in zip(sizes, sizes[1:]))
    assert recs[-1]["event"] == "summary" and recs[-1]["hidden_sizes"] == model.hidden_sizes
    epochs = [r for r in recs if r["event"] == "epoch"]
    assert epochs[0]["hidden_sizes"] == simp_lines[1]["hidden_sizes"]


def test_resume_of_a_shrunk_run_is_bit_identical(tmp_path):
    m1, o1, s1, _ = mesimp_run(tmp_path, 4, tag="straight")
    mesimp_run(tmp_path, 2, tag="part")
    meta, _ = read_checkpoint(tmp_path / "part.npz")
    assert meta["model"]["sizes"][1:3] != [24, 20]
    # the checkpoint of "part" continues into "part" again
    m2, o2, s2, t2 = mesimp_run(tmp_path, 4, resume=tmp_path / "part.npz", tag="part")
    assert m2.sizes == m1.sizes
    for p, q in zip(m1.parameters(), m2.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert s2.sizes_log == s1.sizes_log[-len(s2.sizes_log):]
    assert t2.global_step == 24
    straight = [r for r in read_log(tmp_path / "straight.jsonl") if r["event"] == "simplify"]
    part = [r for r in read_log(tmp_path / "part.jsonl") if r["event"] == "simplify"]
    key = ("global_step", "hidden_sizes", "removed")
    assert [[r[k] for k in key] for r in straight] == [[r[k] for k in key] for r in part]


def test_simplifier_state_dict_round_trips(tmp_path):
    _, _, simp, _ = mesimp_run(tmp_path, 2)
    sd = json.loads(json.dumps(simp.state_dict()))
    other = Simplifier(MLP([N_IN, 24, 20, N_CLASSES], k=5))
    other.load_state_dict(sd)
    assert other.sizes_log == simp.sizes_log and other.optimizer_resets == simp.optimizer_resets


# ------------------------------------------------------------------ export

def test_save_load_round_trip_of_a_shrunk_model(tmp_path):
    model, _, _, _ = mesimp_run(tmp_path, 2)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = nn.load(path)
    assert isinstance(loaded, MLP) and loaded.sizes == model.sizes
    assert all(m.k is None and m.mode == "dense" for m in loaded.linears)
    for p, q in zip(model.parameters(), loaded.parameters()):
        assert q.data.dtype == np.float32 and q.data.flags.c_contiguous
        np.testing.assert_array_equal(p.data, q.data)
    X = make_data()["test"][0]
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    np.testing.assert_array_equal(loaded.logits(X), model.logits(X))
    with np.load(path, allow_pickle=False) as z:       # no pickle anywhere
        arch = json.loads(z["architecture"].tobytes().decode())
        assert arch["sizes"] == model.sizes and arch["trained_with"]["k"] == 5
        assert sorted(z.files) == sorted(["architecture"] + [f"{c}{i}" for i in range(3)
                                                             for c in "Wb"])


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        nn.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="bad.npz"):
        nn.load(bad)
    np.savez(tmp_path / "plain.npz", W0=np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="architecture"):
        nn.load(tmp_path / "plain.npz")
    good = tmp_path / "good.npz"
    MLP([4, 3, 2]).save(good)
    with np.load(good) as z:
        arrays = dict(z)
    arrays["W1"] = np.zeros((2, 5), np.float32)
    np.savez(tmp_path / "shape.npz", **arrays)
    with pytest.raises(ValueError, match="W1"):
        nn.load(tmp_path / "shape.npz")


# ------------------------------------------------------------------ CLI

CLI = ["train", "--dataset", "synthetic", "--sizes", "784,40,30,10", "--k", "6",
       "--batch-size", "100", "--threads", "1", "--progress", "off", "--mesimp",
       "--prune-rate", "0.2", "--cycle-epochs", "1", "--steps-per-epoch", "2",
       "--min-width", "3"]


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_train_mesimp_save_model_and_simplify(capsys, tmp_path):
    log, model_file = tmp_path / "l.jsonl", tmp_path / "m.npz"
    rc, out, err = run(capsys, *CLI, "--epochs", "3", "--log-json", log,
                       "--save-model", model_file, "--checkpoint", tmp_path / "c.npz")
    assert rc == 0, err
    assert "meSimp: prune rate 0.2" in out and "model saved to" in out
    recs = read_log(log)
    simp_lines = [r for r in recs if r["event"] == "simplify"]
    assert [r["global_step"] for r in simp_lines] == [5, 10, 25, 30]
    final = recs[-1]["hidden_sizes"]
    assert final != [40, 30] and min(final) >= 3
    rc, out, err = run(capsys, "simplify", model_file, "--eval", "--dataset", "synthetic")
    assert rc == 0, err
    sizes = [784] + final + [10]
    n_params = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    assert "sizes " + "-".join(map(str, sizes)) in out
    assert f"parameters {n_params:,}" in out and "test accuracy (synthetic" in out
    # a checkpoint works too, and resumes at its shrunk sizes
    rc, out, err = run(capsys, "simplify", tmp_path / "c.npz", "--export", tmp_path / "e.npz")
    assert rc == 0 and "training checkpoint" in out and nn.load(tmp_path / "e.npz").sizes == sizes
    rc, out, err = run(capsys, *CLI, "--epochs", "4", "--resume", tmp_path / "c.npz",
                       "--log-json", log)
    assert rc == 0, err
    assert "resuming a simplified model" in out and "epoch   4/4" in out


def test_cli_errors(capsys, tmp_path):
    rc, out, err = run(capsys, "train", "--dataset", "synthetic", "--prune-rate", "0.2")
    assert rc == 2 and "--prune-rate" in err and "--mesimp" in err
    rc, out, err = run(capsys, *CLI[:-2], "--prune-rate", "1.5")
    assert rc == 2 and "--prune-rate" in err
    rc, out, err = run(capsys, *CLI, "--cycle-epochs", "0")
    assert rc == 2 and "--cycle-epochs" in err
    rc, out, err = run(capsys, "simplify", tmp_path / "nope.npz")
    assert rc == 1 and "does not exist" in err
    (tmp_path / "junk.npz").write_bytes(b"junk")
    rc, out, err = run(capsys, "simplify", tmp_path / "junk.npz")
    assert rc == 1 and "junk.npz" in err
