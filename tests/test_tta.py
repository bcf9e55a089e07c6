"""Time to accuracy (meprop_cpu.bench.tta, bench --tta) and the demo's equal-accuracy
comparison: curve bookkeeping, medians over seeds, the report, on toy data."""
import json

import numpy as np
import pytest

from meprop_cpu import bench, demo
from meprop_cpu.bench import tta

from toydata import blobs


def test_time_to_target_is_the_first_point_at_or_above():
    curve = [[1.0, 90.0], [2.0, 97.9], [3.5, 98.0], [4.0, 97.0], [5.0, 98.5]]
    assert tta.time_to_target(curve, 98.0) == 3.5
    assert tta.time_to_target(curve, 90.0) == 1.0
    assert tta.time_to_target(curve, 99.0) is None
    assert tta.time_to_target([], 50.0) is None


def test_equal_accuracy_takes_the_lower_best():
    dense = [(2.0, 96.0), (4.0, 97.2), (6.0, 97.5)]
    mep = [(0.5, 95.0), (1.0, 97.0), (1.5, 97.3), (2.0, 97.1)]
    assert demo.equal_accuracy(dense, mep) == (97.3, 6.0, 1.5)


def _runs(times):
    return [{"time_to_target": t, "best_dev": 98.0, "test_at_best_dev": 97.0 + i,
             "epoch_times": [1.0, 3.0], "hidden_sizes": [5]} for i, t in enumerate(times)]


def test_summary_medians_need_a_majority_of_seeds():
    v = {"name": "x"}
    assert tta._summarize(v, _runs([3.0, 1.0, 2.0]), 98.0)["time_to_target"] == 2.0
    s = tta._summarize(v, _runs([3.0, None, 1.0]), 98.0)
    assert s["reached"] == "2/3" and s["time_to_target"] == 3.0   # None counts as slowest
    assert tta._summarize(v, _runs([None, None, 1.0]), 98.0)["time_to_target"] is None
    assert s["test_at_best_dev"] == 98.0 and s["s_per_epoch"] == 2.0


def test_profiles():
    for name in tta.TTA_PROFILES:
        cfg = tta.tta_profile(name)
        assert cfg["seeds"] == [1, 2, 3] and cfg["variants"]
        names = [v["name"] for v in cfg["variants"]]
        assert len(set(names)) == len(names)
        assert "PyTorch dense" in names and "meprop_cpu dense" in names
        assert any(v["mode"] is None for v in cfg["variants"])       # the default meProp
        assert any(v["mode"] == "topk" and not v["dropout"] for v in cfg["variants"])
    quick, full = tta.tta_profile("quick"), tta.tta_profile("full")
    assert len(quick["variants"]) == 7 and len(full["variants"]) == 9
    with pytest.raises(ValueError, match="unknown time-to-accuracy profile"):
        tta.tta_profile("nope")


def test_run_on_toy_data_writes_json_markdown(tmp_path):
    data = blobs(784, 10, n_train=120, n_dev=40, n_test=40, seed=1)
    cfg = tta.tta_profile("quick")
    cfg.update(epochs=2, evals_per_epoch=3, seeds=[1, 2], target=50.0)
    cfg["variants"] = [v for v in cfg["variants"] if v["impl"] != "torch"][:3]
    doc = tta.run(cfg, threads=1, torch_mod=None, data=data, log=lambda *a: None)
    assert [s["name"] for s in doc["summary"]] == [v["name"] for v in cfg["variants"]]
    for name, runs in doc["runs"].items():
        assert len(runs) == 2
        for r in runs:
            c = np.array(r["curve"])
            assert c.shape == (6, 4)
            assert np.all(np.diff(c[:, 0]) > 0)          # cumulative training seconds
            np.testing.assert_allclose(c[:, 2], [1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2])
            assert r["time_to_target"] == tta.time_to_target(r["curve"], 50.0)
            assert len(r["epoch_times"]) == 2
    by = {s["name"]: s for s in doc["summary"]}
    dense = by["meprop_cpu dense"]
    assert dense["speedup_vs_torch"] is None            # no PyTorch in this run
    if dense["time_to_target"]:
        assert dense["speedup_vs_dense"] == pytest.approx(1.0)
    doc["command"] = "test"
    paths = tta.write(doc, str(tmp_path), "t")
    assert json.loads((tmp_path / "t.json").read_text())["schema"] == tta.SCHEMA
    md = (tmp_path / "t.md").read_text()
    assert "| meprop_cpu dense |" in md and "Command: `test`" in md
    assert str(tmp_path / "t.md") in paths


def test_same_seed_same_curve_accuracies():
    """Variants of a seed start from the same weights and data order: two runs
    of one variant give the same accuracies (the times differ)."""
    data = blobs(784, 10, n_train=60, n_dev=30, seed=2)
    v = tta._v("d", "meprop_cpu", "dense")
    a = tta.run_variant(v, data, 10, 1, 5, 2)
    b = tta.run_variant(v, data, 10, 1, 5, 2)
    assert [c[1] for c in a["curve"]] == [c[1] for c in b["curve"]]


def test_torch_variant_matches_the_data_order():
    torch = pytest.importorskip("torch")
    data = blobs(784, 10, n_train=50, n_dev=20, n_test=20, seed=3)
    v = tta._v("PyTorch dense", "torch", "dense")
    r = tta.run_variant(v, data, 10, 1, 1, 5, torch_mod=torch)
    assert len(r["curve"]) == 5 and r["best_dev"] is not None


def test_bench_cli_accepts_tta_options():
    import argparse
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    a = p.parse_args(["--tta", "quick", "--seeds", "4,5", "--epochs", "1"])
    assert a.tta == "quick" and a.seeds == [4, 5]
    with pytest.raises(SystemExit):
        p.parse_args(["--tta", "quick", "--seeds", "x"])
    with pytest.raises(SystemExit):
        p.parse_args(["--tta", "quick", "--mesimp"])
