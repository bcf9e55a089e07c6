"""The OpenMP wait policy the library sets (and leaves alone when the user set
one), the automatic thread choice of the Trainer, and the bounded competing
load of `meprop-cpu bench --contention`."""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import _config, _omp_env
from meprop_cpu._thread_tuner import ThreadTuner, candidates
from meprop_cpu.bench.contention import CompetingLoad


def _child(env_extra, code):
    """Run ``code`` in a fresh interpreter (outside the source tree) with the
    OpenMP variables removed from the environment, then env_extra added.
    libgomp prints its settings at start-up with OMP_DISPLAY_ENV=verbose."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env.update(env_extra)
    env["OMP_DISPLAY_ENV"] = "verbose"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, cwd=tempfile.gettempdir())
    assert p.returncode == 0, p.stderr
    spin = [ln.split("=", 1)[1].strip().strip("'") for ln in p.stderr.splitlines()
            if ln.strip().startswith("GOMP_SPINCOUNT")]
    return json.loads(p.stdout.strip().splitlines()[-1]), spin


CODE = ("import json, os\n"
        "import meprop_cpu as mp\n"
        "c = mp.show_config()\n"
        "print(json.dumps({'policy': c['omp_wait_policy'], 'choice': c['thread_choice'],"
        " 'env': {k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}}))\n")

needs_gomp = pytest.mark.skipif(not mp.openmp_enabled(), reason="built without OpenMP")


def _libgomp():
    try:
        with open("/proc/self/maps") as f:
            return "libgomp" in f.read()
    except OSError:
        return False


@needs_gomp
def test_default_policy_reaches_the_runtime():
    out, spin = _child({}, CODE)
    assert out["policy"]["source"] == "meprop_cpu"
    assert out["policy"]["env"] == _omp_env.POLICY
    if _libgomp():   # libgomp prints its spin count (passive: none at all)
        want = _omp_env.POLICY.get("GOMP_SPINCOUNT",
                                   "0" if _omp_env.POLICY.get("OMP_WAIT_POLICY") == "passive"
                                   else None)
        assert spin == [want], spin
    # removed again after the runtime read it: not inherited by children or other runtimes
    assert out["env"] == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}
    assert out["choice"].startswith("auto")


@needs_gomp
@pytest.mark.parametrize("env,want_spin", [({"OMP_WAIT_POLICY": "active"}, "30000000000"),
                                           ({"GOMP_SPINCOUNT": "1234"}, "1234")])
def test_user_policy_is_honoured(env, want_spin):
    out, spin = _child(env, CODE)
    assert out["policy"]["source"] == "user"
    assert out["policy"]["env"] == env
    assert out["env"] == {k: env.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if _libgomp():
        assert spin == [want_spin], spin


def test_omp_num_threads_fixes_the_count():
    out, _ = _child({"OMP_NUM_THREADS": "1"}, CODE)
    assert out["choice"].startswith("fixed")


def test_apply_on_a_fake_environment(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00 r-xp /usr/lib/libc.so.6\n")
    env = {}
    added = _omp_env.apply(env, maps=str(maps))
    assert env == _omp_env.POLICY and added == list(_omp_env.POLICY)
    assert _omp_env.status()["source"] == "meprop_cpu"
    _omp_env.restore(added, env)
    assert env == {}
    env = {"GOMP_SPINCOUNT": "5"}
    assert _omp_env.apply(env, maps=str(maps)) == [] and env == {"GOMP_SPINCOUNT": "5"}
    assert _omp_env.status()["source"] == "user"
    # the runtime is already loaded (another module): setting it would change nothing
    maps.write_text("7f00 r-xp /usr/lib/x86_64-linux-gnu/libgomp.so.1\n")
    env = {}
    assert _omp_env.apply(env, maps=str(maps)) == [] and env == {}
    st = _omp_env.status()
    assert st["source"] == "not applied" and "libgomp" in st["note"]


def test_set_num_threads_auto_and_fixed(thread_state):
    mp.set_num_threads(1)
    assert _config._auto_threads() is None
    assert mp.show_config()["thread_choice"].startswith("fixed")
    mp.set_num_threads("auto")
    if mp.openmp_enabled():
        assert _config._auto_threads() == len(os.sched_getaffinity(0))
        assert mp.get_num_threads() == len(os.sched_getaffinity(0))
        assert mp.show_config()["thread_choice"].startswith("auto")
    with pytest.raises(TypeError, match=r"\bn\b.*'auto'"):
        mp.set_num_threads("fast")


def test_candidates():
    assert candidates(1) == [1]
    assert candidates(2) == [2, 1]
    assert candidates(16) == [16, 8, 1]


def _drive(tuner, cost, steps):
    """Run ``steps`` steps whose time at t threads is cost(t, step)."""
    used = []
    for s in range(steps):
        t = tuner.threads()
        used.append(t)
        tuner.record(cost(t, s))
    return used


def test_tuner_keeps_the_faster_count_and_probes_little():
    tuner = ThreadTuner([2, 1], probe_steps=4, probe_s=0.0, hold=10.0, hold_steps=50)
    used = _drive(tuner, lambda t, s: 1e-3 if t == 2 else 1.5e-3, 2000)
    assert tuner.choice == 2 and tuner.probes > 5
    assert used.count(1) / len(used) < 0.1       # probes at the slower count
    tuner = ThreadTuner([2, 1], probe_steps=4, probe_s=0.0, hold=10.0, hold_steps=50)
    _drive(tuner, lambda t, s: 5e-3 if t == 2 else 1e-3, 500)
    assert tuner.choice == 1


def test_tuner_reprobes_when_steps_get_slower():
    # quiet for 300 steps (2 threads best), then 2 threads become 6x slower
    def cost(t, s):
        if s < 300:
            return 1e-3 if t == 2 else 1.6e-3
        return 6e-3 if t == 2 else 1.7e-3
    tuner = ThreadTuner([2, 1], probe_steps=4, probe_s=0.0, hold=1000.0, hold_steps=10**6)
    used = _drive(tuner, cost, 400)
    assert tuner.choice == 1 and tuner.switches == 1
    assert used[300:].count(2) < 20     # noticed within a window or two


def _train(threads, data, epochs=2):
    from meprop_cpu.nn import MLP
    from meprop_cpu.train import Trainer, build_optimizer
    mp.set_num_threads(threads)
    model = MLP([data["train"][0].shape[1], 200, 200, 3], k=5, mode="topk", dropout=0.2, seed=3)
    opt = build_optimizer("adam", model.parameters(), lr=1e-3, sparse=True)
    tr = Trainer(model, opt, data, batch_size=8, epochs=epochs, seed=1, progress=False)
    return tr, model


def test_trainer_auto_threads_bit_identical(thread_state, monkeypatch):
    """The automatic choice switches the count during training (probes at
    short intervals here); the weights equal those of fixed 1 and 2 threads."""
    import meprop_cpu._thread_tuner as tt
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 600)).astype(np.float32)  # large enough for 2-thread teams
    y = rng.integers(0, 3, 400)
    data = {"train": (X, y), "dev": (X[:50], y[:50])}
    ref = []
    for t in (1, 2):
        tr, model = _train(t, data)
        tr.fit()
        ref.append([p.data.copy() for p in model.parameters()])
    monkeypatch.setattr(tt.ThreadTuner.__init__, "__defaults__", (2, 0.0, 0.0, 5, 1.5))
    monkeypatch.setattr(_config, "_default_threads_cpus", lambda: 2)
    tr, model = _train("auto", data)
    tr.fit()
    assert tr.thread_tuner is not None and tr.thread_tuner.probes >= 5
    assert "thread_tuner" in tr.history[-1]
    assert mp.get_num_threads() == 2        # back to the automatic default after fit
    got = [p.data for p in model.parameters()]
    for a, b, c in zip(ref[0], ref[1], got):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_competing_load_is_bounded_and_stopped():
    t0 = time.monotonic()
    with CompetingLoad(2, 30.0) as cl:
        time.sleep(0.2)
        assert cl.running() == 2
        procs = list(cl.procs)
    assert all(p.poll() is not None for p in procs)
    assert time.monotonic() - t0 < 10
    cl = CompetingLoad(1, 0.3).start()      # ends by itself at its deadline
    p = cl.procs[0]
    p.wait(timeout=10)
    cl.stop()
    with pytest.raises(KeyboardInterrupt):  # stopped on Ctrl-C too
        with CompetingLoad(1, 30.0) as cl:
            procs = list(cl.procs)
            raise KeyboardInterrupt
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(ValueError, match="seconds"):
        CompetingLoad(1, 0)


def test_contention_summary_and_report():
    import argparse

    from meprop_cpu import bench
    from meprop_cpu.bench.contention import render_markdown, summary
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    a = p.parse_args(["--contention", "--load-procs", "2", "--max-train", "500"])
    assert a.profile == "contention" and a.load_procs == 2 and a.torch_cap == 20.0

    def rec(impl, mode, t, load, s, w="ab"):
        return {"load": load, "cell": {"impl": impl, "mode": mode, "threads": t},
                "runs": [{"epoch_s": [s], "dev_acc": 90.0, "capped": False,
                          "weights": w if impl == "meprop_cpu" else None}],
                "other_share": [0.5 * load], "median_epoch_s": s, "dev_acc": 90.0,
                "capped": False}
    res = [rec("meprop_cpu", "topk", 1, 0, 1.0), rec("meprop_cpu", "topk", 2, 0, 0.8),
           rec("meprop_cpu", "topk", "default", 0, 0.82),
           rec("meprop_cpu", "topk", 1, 1, 1.1), rec("meprop_cpu", "topk", 2, 1, 5.0),
           rec("meprop_cpu", "topk", "default", 1, 1.2, w="cd"),
           rec("torch", "dense", 1, 1, 2.0), rec("torch", "dense", 2, 1, 8.0)]
    s = summary(res)
    rows = {(r["impl"], r["load"]): r for r in s["rows"]}
    assert rows[("meprop_cpu", 0)]["best_fixed"] == 2
    assert rows[("meprop_cpu", 0)]["default_over_best"] == pytest.approx(0.82 / 0.8)
    assert rows[("meprop_cpu", 1)]["default_over_best"] == pytest.approx(1.2 / 1.1)
    assert rows[("torch", 1)]["default_over_best"] == pytest.approx(4.0)   # torch: all CPUs
    assert s["weights_identical"] == {"topk": False}
    doc = {"machine": {"date": "d", "command": "c", "cpu_model": "m", "nproc": 2,
                       "loadavg": [0, 0, 0], "numpy": "n", "torch": None, "simd": "s",
                       "meprop_cpu": {"version": "v"}},
           "config": {"batch": 10, "max_train": 500, "epochs": 1, "repeats": 1,
                      "load_procs": 1}, "results": res, "summary": s, "notes": []}
    md = render_markdown(doc)
    assert "DIFFERENT" in md and "1.09x" in md and "4.00x" in md


def test_tagger_trainer_auto_threads_bit_identical(thread_state, monkeypatch):
    """PosTrainer tunes the thread count as Trainer does (a meSimp tagger that
    shrinks to a few dozen units is fastest on one thread); the weights equal
    those of fixed 1 and 2 threads, and fit leaves the automatic default."""
    import meprop_cpu._thread_tuner as tt
    from meprop_cpu.tagging import PosTagger, PosTrainer, Vocab, encode
    from meprop_cpu.train import build_optimizer
    words = "the a cat dog sat ran on to mat park . fast".split()
    rng = np.random.default_rng(1)
    sents = [([words[i] for i in rng.integers(0, len(words), int(n))],
              ["NN"] * int(n)) for n in rng.integers(3, 12, 24)]
    for s in sents:
        s[1][0] = "DT"
    vocab = Vocab.build(sents, min_count=1)
    data = {"train": encode(sents, vocab), "dev": encode(sents[:4], vocab)}

    def run(threads):
        mp.set_num_threads(threads)
        m = PosTagger(vocab, hidden=200, k=7, seed=2)   # products wide enough for 2-thread teams
        opt = build_optimizer("adam", m.parameters(), lr=1e-3)
        tr = PosTrainer(m, opt, data, epochs=2, seed=1)
        tr.fit()
        return tr, [p.data.copy() for p in m.parameters()]

    ref = [run(t)[1] for t in (1, 2)]
    monkeypatch.setattr(tt.ThreadTuner.__init__, "__defaults__", (2, 0.0, 0.0, 5, 1.5))
    monkeypatch.setattr(_config, "_default_threads_cpus", lambda: 2)
    tr, got = run("auto")
    assert tr.thread_tuner is not None and tr.thread_tuner.probes >= 3
    assert "thread_tuner" in tr.history[-1]
    assert mp.get_num_threads() == 2
    for a, b, c in zip(ref[0], ref[1], got):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    mp.set_num_threads(1)
    tr, _ = run(1)
    assert tr.thread_tuner is None and "thread_tuner" not in tr.history[-1]
