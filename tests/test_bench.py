"""The benchmark harness's own logic (meprop_cpu.bench), on fake clocks, fake
thread pools and fake timings. Nothing here asserts a speed."""
import argparse
import json
import os
import sys

import numpy as np
import pytest

from meprop_cpu import bench, cli
from meprop_cpu.bench import driver, end_to_end, environment, layers, plots, report
from meprop_cpu.nn import MLP


# ------------------------------------------------------------------ fakes

class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def advance(self, dt):
        self.t += dt


class FakePools:
    """Thread pools as a dict; controls for bench.ThreadSetting."""

    def __init__(self, names=("meprop_cpu", "torch", "blas"), start=7):
        self.state = {n: start for n in names}

    def controls(self, broken=()):
        out = []
        for n in self.state:
            def set_(k, n=n):
                old = self.state[n]
                if n not in broken:
                    self.state[n] = k
                return lambda: self.state.__setitem__(n, old)
            out.append(environment._Control(n, lambda n=n: self.state[n], set_))
        return out


def fake_group(threads=2, shape=(100, 784, 500), times=None):
    """A layer group record as run_layer_group returns it, with given medians."""
    times = times or {("torch", None, "backward"): 10.0, ("numpy", None, "backward"): 8.0,
                      ("dense", None, "backward"): 4.0, ("topk", 20, "backward"): 2.0,
                      ("unified", 20, "backward"): 0.5, ("torch", None, "step"): 30.0,
                      ("dense", None, "step"): 12.0, ("topk", 20, "step"): 6.0,
                      ("unified", 20, "step"): 3.0, ("numpy", None, "step"): 20.0,
                      ("dense", None, "forward"): 1.0, ("torch", None, "forward"): 2.0,
                      ("numpy", None, "forward"): 1.5}
    results = [dict({"variant": v, "k": k, "op": op}, **bench.summarize([t, t * 0.9, t * 1.2]))
               for (v, k, op), t in times.items()]
    return {"threads": threads, "threads_applied": {"meprop_cpu": threads},
            "threads_after": {"meprop_cpu": threads}, "results": results,
            "shape": list(shape), "load_start": [0.1, 0.1, 0.1], "load_end": [0.2, 0.1, 0.1],
            "check": "ok", "wall_s": 1.0}


def fake_e2e(label, impl, mode, k, batch, epoch_s, hidden_s, fwd_s=1.0, bwd_s=2.0, threads=2,
             test=97.0, dropout=0.0):
    per = [{"epoch": 1, "time_epoch": epoch_s, "time_forward": fwd_s, "time_backward": bwd_s,
            "time_update": 0.5, "time_hidden_backward": hidden_s, "train_loss": 0.1,
            "dev_acc": test + 0.5, "test_acc": test, "hidden_sizes": [500, 500]}]
    return {"impl": impl, "mode": mode, "k": k, "batch": batch, "dropout": dropout,
            "label": label, "threads": threads, "epochs": 1, "n_train": 55000,
            "threads_applied": {"meprop_cpu": threads}, "repeats": [],
            "best_dev": test + 0.5, "test_at_best_dev": test, "final_hidden_sizes": [500, 500],
            "optimizer": "x", "summary": end_to_end._e2e_summary(per)}


def fake_doc(name="bench_test"):
    e2e = [fake_e2e("meprop_cpu dense", "meprop_cpu", "dense", None, 10, 4.0, 2.0),
           fake_e2e("meProp topk k=20", "meprop_cpu", "topk", 20, 10, 1.0, 0.25, test=96.0),
           fake_e2e("torch dense", "torch", "dense", None, 10, 8.0, None),
           fake_e2e("meprop_cpu dense", "meprop_cpu", "dense", None, 100, 2.0, 1.0)]
    cfg = dict(bench.profile("quick", nproc=2), seed=0)
    machine = {"date": "2026-01-01T00:00:00+00:00", "command": "meprop-cpu bench --quick",
               "cpu_model": "Fake CPU", "nproc": 2, "physical_cores": 2, "simd": "avx2",
               "meprop_cpu": {"version": "0", "openmp": True}, "numpy": "2",
               "blas": {"library": "openblas"}, "torch": None,
               "openblas_thread_timeout": {"value": "4", "effective": True, "how": "test"},
               "git": None}
    load = {"wait": {"threshold": 0.5, "max_wait_s": 300, "waited_s": 0.0, "quiet": True,
                     "timed_out": False, "load_first": [0.1, 0.2, 0.3],
                     "load_last": [0.1, 0.2, 0.3]}, "end": [0.5, 0.4, 0.3]}
    layer = [fake_group(1, (100, 784, 500)), fake_group(2, (100, 784, 500))]
    return bench.build_doc(name, cfg, machine, layer, e2e, load, ["a note"])


# ------------------------------------------------------------------ timing

def test_summarize_median_min_max_quartiles():
    s = bench.summarize([3.0, 1.0, 2.0, 10.0])
    assert s["median_s"] == 2.5 and s["min_s"] == 1.0 and s["max_s"] == 10.0 and s["n"] == 4
    assert s["q1_s"] == pytest.approx(1.75) and s["q3_s"] == pytest.approx(4.75)
    s = bench.summarize([5.0, 1.0, 4.0])
    assert s["median_s"] == 4.0 and s["min_s"] == 1.0 and s["max_s"] == 5.0
    with pytest.raises(ValueError):
        bench.summarize([])


def test_interleave_warms_up_then_rotates_the_order():
    calls, trace = [], []
    fns = {n: (lambda n=n: calls.append(n)) for n in "ABC"}
    bench.interleave(fns, repeats=4, warmup=2, trace=trace)
    assert [n for kind, n in trace if kind == "warmup"] == list("ABCABC")
    assert [n for kind, n in trace if kind == "timed"] == list("ABC" "BCA" "CAB" "ABC")
    assert calls == list("ABCABC" "ABCBCACABABC")
    # every variant is timed exactly `repeats` times
    assert {n: calls.count(n) for n in "ABC"} == {"A": 6, "B": 6, "C": 6}


def test_interleave_two_variants_alternate():
    trace = []
    bench.interleave({"A": lambda: None, "B": lambda: None}, repeats=4, warmup=0, trace=trace)
    assert [n for _, n in trace] == list("ABBAABBA")


def test_interleave_times_each_call_with_the_given_clock():
    clock = FakeClock()
    durations = {"A": iter([1.0, 3.0, 2.0]), "B": iter([10.0, 10.0, 40.0])}
    fns = {n: (lambda n=n: clock.advance(next(durations[n]))) for n in "AB"}
    times = bench.interleave(fns, repeats=3, warmup=0, clock=clock)
    assert times == {"A": [1.0, 3.0, 2.0], "B": [10.0, 10.0, 40.0]}
    s = {n: bench.summarize(t) for n, t in times.items()}
    assert (s["A"]["median_s"], s["A"]["min_s"], s["A"]["max_s"]) == (2.0, 1.0, 3.0)
    assert (s["B"]["median_s"], s["B"]["min_s"], s["B"]["max_s"]) == (10.0, 10.0, 40.0)
    assert bench.speedup(s["B"]["median_s"], s["A"]["median_s"]) == 5.0


def test_interleave_rejects_bad_counts():
    with pytest.raises(ValueError):
        bench.interleave({"A": lambda: None}, repeats=0)
    with pytest.raises(ValueError):
        bench.interleave({"A": lambda: None}, repeats=1, warmup=-1)


def test_speedup_arithmetic():
    assert bench.speedup(10.0, 2.0) == 5.0
    assert bench.speedup(1.0, 4.0) == 0.25
    assert bench.speedup(None, 1.0) is None and bench.speedup(1.0, None) is None
    assert bench.speedup(1.0, 0.0) is None and bench.speedup(0.0, 1.0) is None


# ------------------------------------------------------------------ threads

def test_every_variant_runs_with_the_same_thread_count():
    pools = FakePools()
    seen = {}
    clock = FakeClock()

    def variant(name):
        def f():
            seen.setdefault(name, []).append(dict(pools.state))
            clock.advance(1.0)
        return f
    fns = {layers._key("torch", None, "backward"): variant("torch"),
           layers._key("dense", None, "backward"): variant("dense"),
           layers._key("topk", 20, "backward"): variant("topk")}
    g = bench.run_layer_group(fns, 3, pools.controls(), repeats=5, warmup=2, clock=clock)
    assert set(seen) == {"torch", "dense", "topk"}
    for states in seen.values():
        assert len(states) == 7
        assert all(st == {"meprop_cpu": 3, "torch": 3, "blas": 3} for st in states)
    assert g["threads"] == 3
    assert g["threads_applied"] == g["threads_after"] == {"meprop_cpu": 3, "torch": 3, "blas": 3}
    assert pools.state == {"meprop_cpu": 7, "torch": 7, "blas": 7}     # restored
    got = {(r["variant"], r["k"], r["op"]): r for r in g["results"]}
    assert set(got) == {("torch", None, "backward"), ("dense", None, "backward"),
                        ("topk", 20, "backward")}
    assert all(r["median_s"] == 1.0 and r["n"] == 5 for r in got.values())


def test_thread_setting_detects_a_pool_that_ignores_the_limit():
    pools = FakePools()
    with pytest.raises(RuntimeError, match="torch"):
        bench.run_layer_group({"a/backward": lambda: None}, 2, pools.controls(broken=("torch",)),
                              repeats=1, warmup=0)
    assert pools.state == {"meprop_cpu": 7, "torch": 7, "blas": 7}


def test_thread_setting_restores_after_an_error():
    pools = FakePools()
    with pytest.raises(ZeroDivisionError):
        with bench.ThreadSetting(2, pools.controls()):
            assert pools.state["blas"] == 2
            1 / 0
    assert pools.state == {"meprop_cpu": 7, "torch": 7, "blas": 7}


def test_default_controls_set_and_restore_meprop_threads():
    import meprop_cpu
    before = meprop_cpu.get_num_threads()
    controls = bench.default_thread_controls(None)
    with bench.ThreadSetting(1, controls) as ts:
        applied = ts.check()
        assert meprop_cpu.get_num_threads() == 1
        assert applied["meprop_cpu"] in (1, None)
    assert meprop_cpu.get_num_threads() == before


# ------------------------------------------------------------------ load

def test_wait_for_quiet_times_out_on_a_busy_machine():
    clock = FakeClock()
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        clock.advance(s)
    logs = []
    r = bench.wait_for_quiet(0.5, max_wait=300.0, poll=5.0, loadavg=lambda: (2.0, 1.5, 1.0),
                             clock=clock, sleep=sleep, log=logs.append)
    assert r["timed_out"] and not r["quiet"]
    assert r["waited_s"] == pytest.approx(300.0)
    assert sum(sleeps) == pytest.approx(300.0) and len(sleeps) == 60
    assert r["load_last"] == [2.0, 1.5, 1.0]
    assert len(logs) == 2 and "measuring anyway" in logs[-1]


def test_wait_for_quiet_returns_once_the_load_drops():
    clock = FakeClock()
    loads = iter([(3.0,) * 3, (3.0,) * 3, (1.0,) * 3, (0.2, 0.5, 0.9)])
    r = bench.wait_for_quiet(0.5, max_wait=300.0, poll=5.0, loadavg=lambda: next(loads),
                             clock=clock, sleep=clock.advance)
    assert r["quiet"] and not r["timed_out"]
    assert r["waited_s"] == pytest.approx(10.0)
    assert r["load_first"] == [3.0, 3.0, 3.0] and r["load_last"] == [0.2, 0.5, 0.9]


def test_wait_for_quiet_with_no_wait_allowed():
    clock = FakeClock()
    r = bench.wait_for_quiet(0.5, max_wait=0.0, loadavg=lambda: (9.0, 9.0, 9.0), clock=clock,
                             sleep=lambda s: pytest.fail("must not sleep"))
    assert r["timed_out"] and r["waited_s"] == 0.0


def test_cpu_monitor_reports_what_other_processes_used():
    clock = FakeClock()
    stat = iter([(100.0, 1.0), (110.0, 1.5)])       # machine busy / steal CPU seconds
    own = iter([3.0, 7.0])                           # this process's CPU seconds
    mon = bench.CpuMonitor(lambda: next(stat), lambda: next(own), clock, ncpu=2).start()
    clock.advance(5.0)
    r = mon.stop()
    assert r["wall_s"] == 5.0 and r["own_cpu_s"] == 4.0
    assert r["other_cpu_s"] == pytest.approx(6.0) and r["steal_s"] == pytest.approx(0.5)
    assert r["other_share"] == pytest.approx(6.5 / 10.0)
    r = bench.CpuMonitor(lambda: None, lambda: 0.0, clock, ncpu=2).start().stop()
    assert r["other_share"] is None


def test_settler_waits_for_a_quiet_window_and_respects_its_bounds():
    clock = FakeClock()
    shares = iter([0.5, 0.3, 0.01])

    class Mon:
        def start(self):
            return self

        def stop(self):
            return {"other_share": next(shares)}
    st = bench.Settler(per_call=10.0, budget=100.0, window=1.0, monitor=Mon, sleep=clock.advance,
                       clock=clock)
    assert st.settle() == 3.0 and st.gave_up == 0
    # always busy: gives up after per_call seconds, then the budget caps the total
    shares = iter([0.9] * 1000)
    st = bench.Settler(per_call=10.0, budget=15.0, window=1.0, monitor=Mon, sleep=clock.advance,
                       clock=clock)
    assert st.settle() == 10.0
    assert st.settle() == 5.0
    assert st.settle() == 0.0
    assert st.gave_up == 3 and st.waited_s == 15.0
    assert st.record()["calls"] == 3


@pytest.mark.parametrize("retries, attempts, kept", [(0, 1, 0.5), (1, 2, 0.2), (2, 3, 0.01),
                                                     (5, 3, 0.01)])
def test_busy_layer_groups_are_measured_again(retries, attempts, kept):
    shares = iter([0.5, 0.2, 0.01, 0.3])

    class Mon:
        def start(self):
            return self

        def stop(self):
            return {"other_share": next(shares)}
    pools = FakePools(("meprop_cpu",))
    groups = bench.run_layer([(4, 16, 12)], [3], [1], repeats=1, warmup=0,
                             controls=pools.controls(), log=lambda *a: None, check=False,
                             retries=retries, monitor=Mon)
    assert len(groups) == 1
    assert groups[0]["attempts"] == attempts
    assert groups[0]["cpu"]["other_share"] == kept


def test_busy_measurements_are_flagged_in_the_report():
    doc = fake_doc()
    doc["e2e"][1]["other_share"] = 0.4
    doc["layer"][1]["cpu"] = {"other_share": 0.02}
    md = bench.render_markdown(doc)
    assert "| 40% (!) |" in md and "T=2: 2%" in md
    assert "| 10 | meProp topk k=20 | 1 (8.00x) (!) |" in md


# ------------------------------------------------------------------ environment

def test_openblas_timeout_status_and_relaunch_decision():
    started = {bench.ENV_TIMEOUT: "4"}
    st = bench.openblas_timeout_status(started, {bench.ENV_TIMEOUT: "4"})
    assert st["effective"] is True
    assert not bench.needs_relaunch(started, {bench.ENV_TIMEOUT: "4"})
    # set by a script before numpy was imported
    st = bench.openblas_timeout_status({}, {bench.ENV_TIMEOUT: "4"}, set_before_numpy=True)
    assert st["effective"] is True
    # set too late, or not at all: restart, unless that was already done
    assert bench.openblas_timeout_status({}, {bench.ENV_TIMEOUT: "4"})["effective"] is False
    assert bench.needs_relaunch({}, {bench.ENV_TIMEOUT: "4"})
    assert bench.needs_relaunch({}, {})
    assert not bench.needs_relaunch({}, {bench.ENV_RELAUNCHED: "1"})


def test_argv_round_trip_for_the_relaunch():
    p = bench.add_arguments(argparse.ArgumentParser())
    for argv in (["--full", "--threads", "1,2", "--no-torch", "--max-wait", "0.0"],
                 ["--quick", "--epochs", "2", "--max-train", "500", "--out", "/tmp/x"],
                 ["--tta", "quick", "--seeds", "1,2", "--epochs", "3"],
                 []):
        a = p.parse_args(argv)
        b = p.parse_args(driver._argv_from_args(p, a))
        assert vars(a) == vars(b)


def test_profiles():
    q, f = bench.profile("quick", nproc=2), bench.profile("full", nproc=2)
    assert set(q["ks"]) <= set(f["ks"]) and f["ks"] == [5, 10, 20, 40, 80, 160]
    assert all(s in f["shapes"] for s in q["shapes"])
    assert q["threads"] == [1, 2] and f["threads"] == [1, 2]
    assert q["e2e_threads"] == [1, 2] and q["epochs"] == 1
    assert bench.profile("quick", nproc=1)["threads"] == [1]
    assert {r["batch"] for r in q["e2e_runs"]} == {10, 100}
    assert any(r["impl"] == "torch" for r in q["e2e_runs"])
    with pytest.raises(ValueError):
        bench.profile("medium")
    m = bench.profile("mesimp", nproc=2)
    assert m["skip_layer"] and m["epochs"] == 20 and m["e2e_threads"] == [2]
    runs = m["e2e_runs"]
    assert {r["batch"] for r in runs} == {100} and any(r["impl"] == "torch" for r in runs)
    assert [r.get("prune_rate") for r in runs if r["mode"] == "mesimp"] == [None, 0.03]
    assert [end_to_end._label(r) for r in runs if r["mode"] == "mesimp"] == [
        "meSimp k=160", "meSimp k=160 prune 0.03"]


# ------------------------------------------------------------------ tables

def test_layer_rows_speedups():
    rows = {(r["variant"], r["k"]): r for r in bench.layer_rows(fake_group())}
    topk = rows[("topk", 20)]
    assert topk["bwd_vs_torch"] == pytest.approx(5.0)       # 10 / 2
    assert topk["bwd_vs_numpy"] == pytest.approx(4.0)       # 8 / 2
    assert topk["bwd_vs_dense"] == pytest.approx(2.0)       # 4 / 2
    assert topk["step_vs_torch"] == pytest.approx(5.0)      # 30 / 6
    assert topk["step_vs_dense"] == pytest.approx(2.0)      # 12 / 6
    assert topk["forward_shared"] and topk["forward"]["median_s"] == 1.0
    assert rows[("unified", 20)]["bwd_vs_torch"] == pytest.approx(20.0)
    assert rows[("torch", None)]["bwd_vs_torch"] == pytest.approx(1.0)
    assert [r["variant"] for r in bench.layer_rows(fake_group())] == [
        "torch", "numpy", "dense", "topk", "unified"]


def test_headline_and_reproduction_rows():
    doc = fake_doc()
    doc["layer"] = [fake_group(2, (100, 784, 500), {("torch", None, "backward"): 10.0,
                                                    ("dense", None, "backward"): 4.0,
                                                    ("topk", 20, "backward"): 2.0})]
    h = bench.headline(doc)
    assert len(h["layer"]) == 1
    assert h["layer"][0]["vs_torch"] == pytest.approx(5.0)
    assert h["layer"][0]["vs_dense"] == pytest.approx(2.0)
    e = {(r["batch"], r["label"]): r for r in h["e2e"]}
    assert e[(10, "meProp topk k=20")]["vs_torch"] == pytest.approx(8.0)
    assert e[(10, "meprop_cpu dense")]["vs_torch"] == pytest.approx(2.0)
    assert e[(100, "meprop_cpu dense")]["vs_torch"] is None       # no torch run at batch 100

    rows = bench.reproduction_rows(doc)
    ours = {r["run"]: r for r in rows if r["batch"] == 10 and r["source"].startswith("this")}
    assert ours["meProp topk k=20"]["backprop_speedup"] == pytest.approx(8.0)   # 2.0 / 0.25
    assert ours["meProp topk k=20"]["epoch_speedup"] == pytest.approx(4.0)      # 4.0 / 1.0
    assert ours["meProp topk k=20"]["fwd_bwd_s"] == pytest.approx(3.0)
    assert ours["torch dense"]["backprop_s"] is None
    paper = [r for r in rows if r["source"].startswith("paper (ICML")]
    assert paper[1]["backprop_speedup"] == 21.4 and paper[0]["backprop_s"] == 169.5
    assert any(r["source"] == "paper (TKDE)" and r["batch"] == 100 for r in rows)


def test_markdown_report_contains_the_tables():
    md = bench.render_markdown(fake_doc())
    assert md.startswith("# meprop_cpu benchmark: `bench_test`") and "\n\n\n" not in md
    assert "## Headline" in md and "## Layer level" in md and "## End to end" in md
    assert "## Reproduction table" in md
    assert "| 2 | topk | 20 | = dense | 2.00 s [1.80 s–2.40 s] |" in md
    assert "| 5.00x | 4.00x | 2.00x | 5.00x | 2.00x |" in md
    assert "**5.00x**" in md                          # headline vs torch
    assert "| 10 | meProp topk k=20 | 1 (8.00x) | 96.50 | 96.00 |" in md
    assert "note: a note" in md
    # every table row has as many cells as its header
    for block in md.split("\n\n"):
        rows = [ln for ln in block.splitlines() if ln.startswith("|")]
        if rows:
            assert len({ln.count("|") for ln in rows}) == 1, block


def test_headline_without_torch():
    doc = fake_doc()
    for g in doc["layer"]:
        g["results"] = [r for r in g["results"] if r["variant"] != "torch"]
    md = bench.render_markdown(doc)
    assert "vs this project's dense 4.00 s = **2.00x** (torch not measured)" in md
    assert "****" not in md


def test_json_schema_and_outputs(tmp_path):
    doc = fake_doc()
    paths = bench.write_outputs(doc, str(tmp_path), plots=False)
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["README.md", "bench_test.json", "bench_test.md"]
    d = json.loads((tmp_path / "bench_test.json").read_text())
    assert d["schema"] == bench.SCHEMA
    assert set(d) >= {"schema", "name", "config", "machine", "load", "notes", "paper",
                      "layer", "e2e"}
    for g in d["layer"]:
        assert set(g) >= {"shape", "threads", "threads_applied", "results", "check"}
        for r in g["results"]:
            assert set(r) >= {"variant", "k", "op", "median_s", "min_s", "max_s", "n"}
            assert r["min_s"] <= r["median_s"] <= r["max_s"]
    for r in d["e2e"]:
        assert set(r) >= {"impl", "mode", "k", "batch", "threads", "epochs", "best_dev",
                          "test_at_best_dev", "summary"}
        assert set(r["summary"]) >= {"time_epoch", "time_forward", "time_backward",
                                     "time_update", "time_hidden_backward", "time_fwd_bwd"}
    assert d["paper"]["icml_mnist_adam"]["meprop"]["backprop_speedup"] == 21.4


def test_readme_indexes_every_json(tmp_path):
    bench.write_outputs(fake_doc("bench_a"), str(tmp_path), plots=False)
    (tmp_path / "kernels.json").write_text(json.dumps({"benchmark": "bench_kernels",
                                                       "machine": {"date": "2026-01-02"}}))
    (tmp_path / "kernels.md").write_text("# k\n")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "sub").mkdir()
    text = bench.render_readme(str(tmp_path))
    assert ("| [kernels.json](kernels.json) | bench_kernels | 2026-01-02 | "
            "[kernels.md](kernels.md) |") in text
    assert "[broken.json](broken.json) | unreadable" in text
    assert "## bench_a (quick profile" in text and "### Headline" in text
    assert "[sub/](sub/)" in text


def test_cli_has_bench_and_report_only(tmp_path, capsys):
    bench.write_outputs(fake_doc("bench_a"), str(tmp_path), plots=False)
    (tmp_path / "README.md").unlink()
    rc = cli.main(["bench", "--report-only", "--no-plots", "--out", str(tmp_path)])
    assert rc == 0
    assert (tmp_path / "README.md").exists() and (tmp_path / "bench_a.md").exists()
    rc = cli.main(["bench", "--threads", "0"])
    assert rc == 2
    assert "bench" in capsys.readouterr().err


def test_refuses_to_overwrite_a_foreign_json(tmp_path, capsys):
    (tmp_path / "kernels.json").write_text(json.dumps({"benchmark": "bench_kernels"}))
    p = bench.add_arguments(argparse.ArgumentParser())
    args = p.parse_args(["--out", str(tmp_path), "--name", "kernels", "--max-wait", "0"])
    assert bench.run_cli(args, None, log=lambda *a: None) == 2
    assert "not written by this harness" in capsys.readouterr().err
    assert json.loads((tmp_path / "kernels.json").read_text()) == {"benchmark": "bench_kernels"}


def test_plots_are_skipped_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert bench.make_plots(fake_doc(), str(tmp_path), "x") == []
    assert os.listdir(tmp_path) == []


def test_other_mesimp_logs_are_read_in_both_layouts():
    log = [[10, [400, 300]], [20, [350, 280]]]
    assert plots._other_mesimp_logs({"runs": {"mesimp": {"sizes_log": log}}}) == [
        ("mesimp_mnist.json", log)]
    got = plots._other_mesimp_logs({"runs": [{"seed": 0, "mesimp": {"sizes_log": log}},
                                             {"seed": 1, "mesimp": {}}]})
    assert got == [("mesimp_mnist.json, seed 0", log)]
    assert plots._other_mesimp_logs({"runs": "x"}) == [] and plots._other_mesimp_logs(None) == []


def test_plots_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    doc = fake_doc()
    doc["e2e"][1]["width_log"] = [[10, [400, 300]], [20, [350, 280]]]
    paths = bench.make_plots(doc, str(tmp_path), "x", results_dir=str(tmp_path))
    assert sorted(os.path.basename(p) for p in paths) == [
        "x_accuracy_vs_k.png", "x_mesimp_width.png", "x_speedup_vs_k.png",
        "x_speedup_vs_threads.png"]
    assert all(os.path.getsize(p) > 0 for p in paths)


# ------------------------------------------------------------------ real pieces, tiny

def test_hidden_backward_timer_wraps_hidden_layers_only():
    model = MLP([6, 5, 4, 3], k=2, seed=0)
    clock = FakeClock()
    lins = model.linears
    work = lins[1].backward                # hidden layer 2's backward "takes" 0.25 s
    lins[1].backward = lambda dy: (clock.advance(0.25), work(dy))[1]
    out = lins[2].backward                 # the output layer's is not counted
    lins[2].backward = lambda dy: (clock.advance(100.0), out(dy))[1]
    timer = bench.HiddenBackwardTimer(model, clock)
    assert timer.layers == lins[:2]
    assert "backward" in vars(lins[0])
    x = np.ones((2, 6), np.float32)
    model.forward(x)
    model.backward(np.ones((2, 3), np.float32))
    assert timer.calls == 2 and timer.take() == pytest.approx(0.25)
    assert timer.take() == 0.0
    timer.remove()
    assert all("backward" not in vars(m) for m in lins[:2])


def test_layer_variants_run_and_agree_with_numpy():
    torch = environment._import_torch()
    ks = [3, 20]                           # 20 >= n_out: skipped
    fns = bench.layer_variants(4, 16, 12, ks, torch)
    keys = set(fns)
    assert {"dense/forward", "dense/backward", "dense/step", "numpy/forward", "numpy/backward",
            "numpy/step", "topk/k=3/backward", "topk/k=3/step", "unified/k=3/backward",
            "unified/k=3/step"} <= keys
    assert not any("k=20" in k for k in keys)
    assert ("torch/backward" in keys) == (torch is not None)
    for f in fns.values():
        f()
    assert bench.check_layer_variants(4, 16, 12, ks, torch) == []
    assert layers._parse_key("topk/k=3/step") == ("topk", 3, "step")
    assert layers._parse_key("numpy/forward") == ("numpy", None, "forward")


def test_end_to_end_runs_on_a_tiny_problem():
    """The e2e drivers on synthetic data: the same data order and initial weights
    give this project's dense MLP and PyTorch's the same first-epoch loss."""
    data = cli.synthetic_dataset(n_train=120, n_dev=40, n_test=40)
    sizes = (784, 16, 12, 10)
    run = {"impl": "meprop_cpu", "mode": "dense", "k": None, "batch": 20, "dropout": 0.0}
    ours = bench.train_meprop(run, data, 2, seed=0, warmup_steps=2, sizes=sizes)
    assert len(ours["per_epoch"]) == 2 and ours["steps_per_epoch"] == 6
    assert all(p["time_hidden_backward"] > 0 for p in ours["per_epoch"])
    assert 0.0 <= ours["test_at_best_dev"] <= 100.0
    topk = bench.train_meprop(dict(run, mode="topk", k=4), data, 1, seed=0, warmup_steps=0,
                              sizes=sizes)
    assert topk["final_hidden_sizes"] == [16, 12]
    torch = environment._import_torch()
    if torch is None:
        return
    theirs = bench.train_torch(torch, dict(run, impl="torch"), data, 2, seed=0, warmup_steps=2,
                               sizes=sizes)
    assert theirs["per_epoch"][0]["train_loss"] == pytest.approx(
        ours["per_epoch"][0]["train_loss"], rel=1e-3)
    assert theirs["per_epoch"][0]["time_hidden_backward"] is None


def test_repeated_end_to_end_runs_report_the_median_total():
    """With e2e repeats the whole-training time is the median of the repeats'
    totals (each the sum of its epoch times), shown with its range."""
    data = cli.synthetic_dataset(n_train=60, n_dev=20, n_test=20)
    run = {"impl": "meprop_cpu", "mode": "dense", "k": None, "batch": 20, "dropout": 0.0}
    recs = bench.run_e2e([run], data, 2, [1], seed=0, warmup_steps=0, log=lambda *a: None,
                         repeats=3)
    (rec,) = recs
    totals = rec["total_time_train_repeats"]
    assert len(totals) == 3 and len(rec["repeats"]) == 3
    for t, r in zip(totals, rec["repeats"]):
        assert t == pytest.approx(sum(p["time_epoch"] for p in r["per_epoch"]))
    assert rec["total_time_train"] == sorted(totals)[1]
    cell = report._total_cell(rec)
    assert cell.startswith(report._fmt_t(sorted(totals)[1])) and "[" in cell
    assert report._total_cell({"total_time_train": 2.5}) == "2.50 s"
    assert bench.profile("mesimp", nproc=2)["e2e_repeats"] == 3


@pytest.mark.parametrize("argv, expected", [
    (["/usr/bin/meprop-cpu", "bench", "--tta", "quick"], "meprop-cpu bench --tta quick"),
    (["/x/site-packages/meprop_cpu/__main__.py", "bench", "--quick"],
     "python -m meprop_cpu bench --quick"),
    (["benchmarks/bench_parse.py", "--part", "train"], "python benchmarks/bench_parse.py --part train"),
])
def test_command_line_is_what_a_user_typed(monkeypatch, argv, expected):
    from meprop_cpu.bench.environment import command_line
    monkeypatch.setattr(sys, "argv", argv)
    assert command_line() == expected
