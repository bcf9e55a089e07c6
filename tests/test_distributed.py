"""Data-parallel training over MPI (meprop_cpu.distributed).

The 2-rank tests launch ``mpiexec -n 2 python -m mpi4py tests/mpi_worker.py``
with a timeout and read what rank 0 wrote; they are skipped when mpi4py (or an
``mpiexec``) is not installed. The rest runs everywhere.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from meprop_cpu import cli
from meprop_cpu.distributed import exchange_bytes, merge_rows, share

HERE = os.path.dirname(os.path.abspath(__file__))


def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
    return exe


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="mpi4py / mpiexec not installed "
                               "(pip install 'meprop_cpu[distributed]' mpich)")


def _launch(args, cwd, timeout=120, n=2):
    """Run ``python -m mpi4py ARGS`` on n ranks in ``cwd`` (not the source tree, whose
    meprop_cpu/ lacks the compiled extensions)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "mpi4py"] + list(args)
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    return p, time.monotonic() - t0


# ------------------------------------------------------------ without MPI

def test_share_covers_the_batch_in_rank_order():
    for n in (1, 7, 10, 200):
        for size in (1, 2, 3, 8):
            parts = [share(n, size, r) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(parts[r][1] == parts[r + 1][0] for r in range(size - 1))
            lens = [b - a for a, b in parts]
            assert max(lens) - min(lens) <= 1


def test_merge_rows_against_dense_sum():
    rng = np.random.default_rng(0)
    n_out, n_in = 30, 7
    parts, dense = [], np.zeros((n_out, n_in), np.float32)
    for r in range(4):
        rows = np.sort(rng.choice(n_out, size=rng.integers(0, 12), replace=False)).astype(np.int32)
        vals = rng.normal(size=(rows.size, n_in)).astype(np.float32)
        parts.append((rows, vals))
        dense[rows] += vals       # rank order, as the exchange sums
    u, v = merge_rows(parts, n_in)
    assert np.all(np.diff(u) > 0)
    full = np.zeros_like(dense)
    full[u] = v
    np.testing.assert_array_equal(full, dense)
    assert set(u.tolist()) == set(np.concatenate([p[0] for p in parts]).tolist())


def test_exchange_bytes_mnist_mlp_k20():
    # the MNIST MLP's first layer, batch 10 per rank, 2 ranks
    d = exchange_bytes("dense", 2, 500, 784)
    f = exchange_bytes("factors", 2, 500, 784, batch=20, k=20)
    assert d == 500 * 784 * 4 and f == 10 * (784 + 40) * 4
    with pytest.raises(ValueError, match="kind"):
        exchange_bytes("ring", 2, 1, 1)


def test_exchange_bytes_of_batch_candidates():
    # mode batch_dw, MNIST MLP, batch 100 per rank, 2 ranks, k = 20: a rank
    # sends its 2,000 examples' x (not for the first layer) and min(B k, B_r n)
    # = 4,000 candidates of 8 bytes, against x and its whole dy
    c1 = exchange_bytes("cand", 2, 500, 784, batch=200, k=20, with_input=False)
    c2 = exchange_bytes("cand", 2, 500, 500, batch=200, k=20)
    d2 = exchange_bytes("dy", 2, 500, 500, batch=200, k=20)
    assert c1 == 4000 * 8 and c2 == 100 * 500 * 4 + 4000 * 8 and d2 == 100 * 1000 * 4
    # tiny shares: every entry is a candidate
    assert exchange_bytes("cand", 4, 10, 3, batch=4, k=5, with_input=False) == 3 * 10 * 8


@pytest.mark.parametrize("shares", [[7], [3, 4], [1, 0, 6], [2, 2, 3]])
@pytest.mark.parametrize("k", [1, 3, 9])
def test_batch_candidates_give_the_global_selection_bit_for_bit(shares, k):
    """Each share's B k largest |dy| (ties and zeros included) merged in share
    order give the gradient of the B k largest of the whole batch's dy: the
    one Linear.weight_grad forms on the concatenated batch, bit for bit."""
    from meprop_cpu import _core
    from meprop_cpu.distributed import _candidates, _n_cand, _select_candidates
    from meprop_cpu.kernels import Workspace
    from meprop_cpu.nn import Linear
    rng = np.random.default_rng(k + len(shares))
    B, n_out, n_in = sum(shares), 40, 5
    assert not _core.backward_masked(k, n_out)   # candidates serve the factored form only
    # coarse values: many exact ties in magnitude, and a third zeros
    dy = (rng.integers(-4, 5, size=(B, n_out)) * 0.25).astype(np.float32)
    dy[rng.random((B, n_out)) < 0.33] = 0.0
    x = rng.standard_normal((B, n_in)).astype(np.float32)
    lin = Linear(n_in, n_out, k=k, mode="batch_dw", seed=0)
    ref = lin.weight_grad(x, dy)
    parts, start = [], 0
    for b in shares:
        m = _n_cand(B, k, b, n_out)
        ci, cv = _candidates(dy[start:start + b], b, n_out, m, Workspace())
        assert ci.shape == cv.shape == (m,)
        parts.append((None, ci.copy(), cv.copy(), b))
        start += b
    got = _select_candidates(parts, x, n_out, k, Workspace(), 1)
    assert np.array_equal(got.rows, ref.rows)
    assert np.array_equal(got.values, ref.values)


def test_distributed_without_mpi4py_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)    # import mpi4py -> ImportError
    rc = cli.main(["train", "--dataset", "synthetic", "--distributed", "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--distributed" in err and "meprop_cpu[distributed]" in err and "mpi4py" in err


def test_exchange_needs_distributed(capsys):
    assert cli.main(["train", "--dataset", "synthetic", "--exchange", "rows"]) == 2
    assert "--exchange needs --distributed" in capsys.readouterr().err


def test_trainer_rejects_a_bad_distributed():
    from meprop_cpu.nn import MLP
    from meprop_cpu.train import Trainer, build_optimizer
    from toydata import blobs
    m = MLP([4, 6, 3], k=2)
    with pytest.raises(TypeError, match="distributed"):
        Trainer(m, build_optimizer("sgd", m.parameters()), blobs(4, 3), 4, 1,
                distributed="mpi")


# ------------------------------------------------------------ 2 ranks

@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    if MPIEXEC is None:
        pytest.skip("mpi4py / mpiexec not installed")
    out = tmp_path_factory.mktemp("mpi")
    p, _ = _launch([os.path.join(HERE, "mpi_worker.py"), "checks", str(out)], out)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    with open(out / "checks.json") as f:
        return json.load(f)


ALL_CONFIGS = ["topk", "topk_dw", "batch_dw", "batch_dw_masked", "unified", "masked", "dense"]


@needs_mpi
@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_ranks_bit_identical_after_training(checks, name):
    run = checks["runs"][name]
    assert checks["size"] == 2
    assert run["steps"] == 2 * 13          # 2 epochs of ceil(200 / 16) global steps
    assert run["digests"][0] == run["digests"][1]


FUSED_CONFIGS = ["topk", "topk_dw", "batch_dw", "batch_dw_masked", "dense"]


@needs_mpi
@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_fused_forward_backward_gives_the_module_path_bits(checks, name):
    """Where every gradient travels as factors, (x, dy) or dense, each rank runs
    its forward and backward as one C call (the fused step without its
    update); the weights and optimizer state equal the module path's bit for
    bit. The row exchanges (unified, masked top-k) keep the module path."""
    run = checks["runs"][name]
    assert run["path"] == ("fused" if name in FUSED_CONFIGS else "modules")
    assert run["module_path"] == "modules"
    assert run["digests"] == run["module_digests"]


@needs_mpi
def test_a_model_that_stops_qualifying_takes_the_module_path(checks):
    s = checks["same_sums"]
    assert s["swap/paths"] == ["modules", "modules"]
    assert s["swap/True"] == s["swap/False"]
    assert s["swap/True"][0] == s["swap/True"][1]


@needs_mpi
def test_exchange_methods_chosen(checks):
    assert checks["runs"]["topk"]["methods"].get("factors") == 2      # both hidden layers
    assert checks["runs"]["topk_dw"]["methods"].get("factors") == 2
    assert checks["runs"]["batch_dw"]["methods"].get("cand") == 2       # both hidden layers
    assert checks["runs"]["batch_dw_masked"]["methods"].get("dy", 0) >= 1
    assert checks["runs"]["unified"]["methods"].get("rows", 0) >= 1
    assert checks["runs"]["masked"]["methods"].get("rows", 0) + \
        checks["runs"]["masked"]["methods"].get("dense", 0) == 6
    assert set(checks["runs"]["dense"]["methods"]) == {"dense"}


@needs_mpi
@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_equal_to_single_process_up_to_rounding(checks, name):
    run = checks["runs"][name]
    assert run["ref_steps"] == run["steps"]
    # unified top-k picks one row set per rank's share, not per global batch:
    # a different (still exact) gradient, so only the other modes match closely
    tol = 5e-2 if name == "unified" else 1e-4
    assert run["max_abs_diff"] < tol, run["max_abs_diff"]


@needs_mpi
def test_sparse_exchange_against_naive_dense_sum(checks):
    for key, r in checks["exchange"].items():
        if key == "global_batch":
            continue
        if key.startswith("owner=="):
            assert r is True, key       # reduce-scatter by ownership == gather, bit for bit
            continue
        assert r["max_abs_err"] <= 1e-6 * max(1.0, r["scale"]), (key, r)
        assert r["digests"][0] == r["digests"][1], key
    f = checks["exchange"]["factors/topk"]
    assert f["methods"].get("factors") == 2 and f["recv"] < f["dense_recv"]
    assert checks["exchange"]["rows/unified"]["methods"].get("rows") == 2
    assert checks["exchange"]["dense/topk"]["methods"] == {"dense": 4, "dense_rows": 2}
    assert checks["exchange"]["owner/topk"]["methods"].get("owner") == 2


@needs_mpi
@pytest.mark.parametrize("name", ["batch_dw", "batch_dw_masked"])
def test_batch_dw_selects_over_the_global_batch(checks, name):
    """Every rank sends its x and dy; every rank forms the gradient of the B*k
    largest |dy| of the whole global batch (the single process's selection)."""
    r = checks["exchange"]["global_batch"][name]
    assert r["rel_err"] and max(r["rel_err"]) < 1e-5, r
    assert r["digests"][0] == r["digests"][1]
    # below the masked threshold each rank sends its B*k largest |dy| (candidates),
    # above it the whole dy; either way the gradient of whole (x, dy), bit for bit
    assert r["methods"].get("cand" if name == "batch_dw" else "dy", 0) >= 1
    assert r["dy_methods"].get("dy", 0) >= 1
    assert r["same_as_dy"] is True


@needs_mpi
@pytest.mark.parametrize("name", ["batch_dw", "batch_dw_masked"])
def test_batch_candidates_train_to_the_bits_of_the_whole_dy(checks, name):
    run = checks["runs"][name]
    assert run["dy_methods"].get("dy") == 2
    assert run["digests"] == run["dy_digests"]


@needs_mpi
def test_row_exchanges_agree_bit_for_bit(checks):
    # gather + rank-order sum, reduce-scatter by ownership and the dense Allreduce
    # with a touched-row mask all compute a + b per touched row
    s = checks["same_sums"]
    assert s["rows"][0] == s["rows"][1] == s["owner"][0] == s["dense"][0] == s["dense"][1]


@needs_mpi
@pytest.mark.parametrize("name", ["topk", "unified", "masked", "batch_dw", "batch_dw_masked"])
def test_one_rank_equals_the_module_path_bit_for_bit(checks, name):
    a, b = checks["same_sums"][f"one_rank/{name}"]
    assert a == b


@needs_mpi
def test_mesimp_prunes_the_same_neurons_on_every_rank(checks):
    m = checks["mesimp"]
    assert m["widths"][0] == m["widths"][1]
    assert m["digests"][0] == m["digests"][1]
    assert m["widths"][0] != [64, 48]          # something was pruned
    assert m["widths"][0] == m["ref_widths"]   # as the single process on the global batches


@needs_mpi
def test_resume_with_the_same_ranks_is_bit_identical(checks):
    r = checks["resume"]
    assert r["epochs"] == 3
    assert r["full"][0] == r["full"][1] == r["resumed"][0] == r["resumed"][1]
    assert not [f for f in r["files"] if ".tmp" in f]


@needs_mpi
def test_three_ranks_with_uneven_shares(tmp_path):
    p, _ = _launch([os.path.join(HERE, "mpi_worker.py"), "three", str(tmp_path)], tmp_path, n=3)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "three.json").read_text())
    for name in ("topk", "unified"):
        r = res[name]
        assert len(set(r["digests"])) == 1 and len(r["digests"]) == 3, name
        assert r["steps"] == 26
    assert res["topk"]["max_abs_diff"] < 1e-4, res["topk"]
    # Ctrl-C on rank 1 only: all three stop after the same step, rank 0 saves
    where = res["interrupt"]["where"]
    assert where[0] is not None and where[0] == where[1] == where[2], where
    assert where[0][:2] == [1, 6] and res["interrupt"]["saved"]


@needs_mpi
def test_a_failing_rank_ends_the_job_quickly(tmp_path):
    p, dt = _launch([os.path.join(HERE, "mpi_worker.py"), "fail", str(tmp_path)], tmp_path,
                    timeout=60)
    assert p.returncode != 0
    assert dt < 30, dt
    err = p.stderr
    assert "rank 1 of 2" in err and "deliberate failure on rank 1" in err


@needs_mpi
def test_cli_distributed_train(tmp_path):
    log = tmp_path / "run.jsonl"
    ck = tmp_path / "run.npz"
    p, _ = _launch(["-m", "meprop_cpu", "train", "--dataset", "synthetic", "--distributed",
                    "--epochs", "2", "--batch-size", "20", "--k", "10", "--max-train", "400",
                    "--log-json", str(log), "--checkpoint", str(ck), "--progress", "off"],
                   tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("epoch   2/2") == 1          # rank 0 alone reports
    assert "2 ranks" in p.stdout
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert recs[-1]["event"] == "summary" and recs[-1]["best_dev"] > 80.0
    assert [r["ranks"] for r in recs if r["event"] == "epoch"] == [2, 2]
    assert ck.exists()


def test_scale_model_uses_the_library_rule():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "scale_model", os.path.join(HERE, "..", "benchmarks", "scale_model.py"))
    sm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sm)
    for N in (2, 3, 16, 64):
        for first in (True, False):
            assert sm.exchange_bytes("factors", N, 500, 784, 100 * N, 20, with_input=not first) \
                == exchange_bytes("factors", N, 500, 784, 100 * N, 20, with_input=not first)
        assert sm.exchange_bytes("dense", N, 500, 784) == exchange_bytes("dense", N, 500, 784)
