"""The meprop-cpu command line, driven through main(argv) on the synthetic data set."""
import json

import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import cli
from meprop_cpu.train import LOG_KEYS, read_checkpoint

# tiny runs: 1000 synthetic examples, batch 100 -> 10 steps an epoch
BASE = ["train", "--dataset", "synthetic", "--sizes", "784,24,10", "--k", "5",
        "--batch-size", "100", "--threads", "1", "--progress", "off"]


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_synthetic_prints_epochs_and_summary(capsys, tmp_path):
    log = tmp_path / "run.jsonl"
    threads = mp.get_num_threads()
    rc, out, err = run(capsys, *BASE, "--epochs", "2", "--log-json", str(log))
    assert rc == 0, err
    assert err == ""
    lines = out.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert "epoch   1/2" in out and "epoch   2/2" in out
    assert "best dev" in out and "test at best dev" in out
    assert "mean time per epoch" in out and "forward" in out and "backward" in out \
        and "update" in out
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["event"] for r in recs] == ["epoch", "epoch", "summary"]
    assert all(set(LOG_KEYS) <= set(r) for r in recs)
    assert recs[0]["threads"] == 1 and recs[0]["k"] == 5 and recs[0]["hidden_sizes"] == [24]
    assert recs[-1]["test_at_best_dev"] > 80.0     # the synthetic problem is easy
    assert mp.get_num_threads() == threads         # restored after main()


@pytest.mark.parametrize("extra, mode, k", [
    ([], "batch_dw", 5),
    (["--mode", "topk_dw"], "topk_dw", 5),
    (["--paper"], "topk", 5),
    (["--mode", "topk"], "topk", 5),
    (["--mesimp"], "topk", 5),
    (["--mesimp", "--mode", "topk_dw"], "topk_dw", 5),
    (["--dense"], "dense", None),
    (["--mode", "dense"], "dense", None),
    (["--mode", "unified", "--dropout", "0.1", "--optimizer", "adagrad"], "unified", 5),
    (["--mode", "random", "--dense-update", "--optimizer", "sgd", "--lr", "0.05",
      "--clip", "5", "--evals-per-epoch", "2", "--max-train", "300"], "random", 5),
])
def test_train_variants(capsys, tmp_path, extra, mode, k):
    log = tmp_path / "l.jsonl"
    rc, out, err = run(capsys, *BASE, "--epochs", "1", "--log-json", str(log), *extra)
    assert rc == 0, err
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert recs[0]["mode"] == mode and recs[0]["k"] == k
    if "--max-train" in extra:
        assert "300 train" in out and recs[-1]["steps_per_epoch"] == 3
        assert [r["event"] for r in recs] == ["eval", "epoch", "summary"]


def test_train_fused_and_no_fused_end_in_the_same_weights(capsys, tmp_path):
    """The default run takes the fused step (and says so); --no-fused the
    module path; both write bit-identical checkpoints (weights and optimizer state)."""
    weights = []
    for extra, path in (([], "fused"), (["--no-fused"], "modules")):
        log, ck = tmp_path / f"{path}.jsonl", tmp_path / f"{path}.npz"
        rc, out, err = run(capsys, *BASE, "--epochs", "1", "--log-json", str(log),
                           "--checkpoint", str(ck), *extra)
        assert rc == 0, err
        assert ("fused step" in out) == (path == "fused")
        recs = [json.loads(line) for line in log.read_text().splitlines()]
        assert recs[0]["step_path"] == path
        meta, arrays = read_checkpoint(ck)
        weights.append({k: v for k, v in arrays.items() if k.startswith(("param:", "opt:"))})
    assert weights[0].keys() == weights[1].keys() and weights[0]
    assert all(weights[0][k].tobytes() == weights[1][k].tobytes() for k in weights[0])


def test_checkpoint_and_resume_match_a_straight_run(capsys, tmp_path):
    straight, part = tmp_path / "a.npz", tmp_path / "b.npz"
    common = [*BASE, "--dropout", "0.2", "--seed", "4"]
    assert run(capsys, *common, "--epochs", "2", "--checkpoint", str(straight))[0] == 0
    assert run(capsys, *common, "--epochs", "1", "--checkpoint", str(part))[0] == 0
    rc, out, err = run(capsys, *common, "--epochs", "2", "--resume", str(part))
    assert rc == 0, err
    assert "epoch   2/2" in out and "epoch   1/2" not in out
    (_, a), (mb, b) = read_checkpoint(straight), read_checkpoint(part)
    assert mb["trainer"]["epoch"] == 2          # --resume alone keeps writing to that file
    assert set(a) == set(b) and all(np.array_equal(a[n], b[n]) for n in a)


def test_resume_keeps_the_checkpoints_mode(capsys, tmp_path):
    """A run started with --paper (or an 0.2 checkpoint, trained with the then
    default topk) continues in mode topk when resumed without --mode."""
    straight, part = tmp_path / "a.npz", tmp_path / "b.npz"
    common = [*BASE, "--paper", "--seed", "5"]
    assert run(capsys, *common, "--epochs", "2", "--checkpoint", str(straight))[0] == 0
    assert run(capsys, *common, "--epochs", "1", "--checkpoint", str(part))[0] == 0
    rc, out, err = run(capsys, *BASE, "--seed", "5", "--epochs", "2", "--resume", str(part))
    assert rc == 0, err
    assert "(topk)" in out and "warn" not in err.lower()
    (_, a), (_, b) = read_checkpoint(straight), read_checkpoint(part)
    assert all(np.array_equal(a[n], b[n]) for n in a)


def test_resume_with_another_architecture_is_an_error(capsys, tmp_path):
    ckpt = tmp_path / "c.npz"
    assert run(capsys, *BASE, "--epochs", "1", "--checkpoint", str(ckpt))[0] == 0
    rc, out, err = run(capsys, *BASE, "--sizes", "784,16,10", "--epochs", "2",
                       "--resume", str(ckpt))
    assert rc == 1
    assert len(err.strip().splitlines()) == 1 and str(ckpt) in err and "Traceback" not in err


def test_corrupt_resume_file_is_an_error(capsys, tmp_path):
    ckpt = tmp_path / "c.npz"
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    rc, out, err = run(capsys, *BASE, "--epochs", "2", "--resume", str(ckpt))
    assert rc == 1 and str(ckpt) in err and "corrupt" in err


@pytest.mark.parametrize("bad, word", [
    (["--k", "0"], "--k"),
    (["--k", "-3"], "--k"),
    (["--k", "two"], "--k"),
    (["--sizes", "784,a,10"], "--sizes"),
    (["--sizes", "784.5,10"], "--sizes"),
    (["--sizes", "784"], "--sizes"),
    (["--sizes", "784,0,10"], "--sizes"),
    (["--sizes", "100,50,10"], "784"),
    (["--sizes", "784,50,7"], "10"),
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "0"], "--epochs"),
    (["--threads", "0"], "--threads"),
    (["--dropout", "1"], "--dropout"),
    (["--dropout", "-0.1"], "--dropout"),
    (["--lr", "0"], "--lr"),
    (["--evals-per-epoch", "0"], "--evals-per-epoch"),
    (["--max-train", "0"], "--max-train"),
    (["--optimizer", "rmsprop"], "--optimizer"),
    (["--mode", "fast"], "--mode"),
    (["--dataset", "cifar"], "--dataset"),
    (["--resume", "/nonexistent/run.npz"], "--resume"),
    (["--no-such-option"], "unrecognized"),
])
def test_bad_options_exit_2_with_one_line(capsys, bad, word):
    rc, out, err = run(capsys, *BASE, *bad)
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("meprop-cpu train: error:") and word in lines[0]


def test_missing_command_and_help(capsys):
    rc, out, err = run(capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    rc, out, err = run(capsys, "--help")
    assert rc == 0 and "train" in out and "data" in out and "info" in out
    rc, out, err = run(capsys, "train", "--help")
    assert rc == 0 and "--sizes" in out and "--resume" in out


def test_data_errors_exit_1_with_the_message(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, err = run(capsys, "train", "--dataset", "fashion-mnist", "--data-dir", str(empty),
                       "--epochs", "1")
    assert rc == 1 and "Fashion-MNIST not found" in err and "Traceback" not in err
    rc, out, err = run(capsys, "data", "fashion-mnist", "--data-dir", str(empty))
    assert rc == 1 and "Fashion-MNIST not found" in err


def test_data_and_info_commands(capsys):
    rc, out, err = run(capsys, "data", "synthetic")
    assert rc == 0 and "train" in out and "(1000, 784)" in out and "float32" in out
    rc, out, err = run(capsys, "info")
    assert rc == 0 and "openmp" in out and "num_threads" in out


def test_a_subcommand_can_be_added(capsys, monkeypatch):
    def add_hello_parser(subparsers):
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("--times", type=int, default=1)
        p.set_defaults(func=lambda args, parser: print("hello " * args.times) or 0)
        return p

    monkeypatch.setattr(cli, "SUBCOMMANDS", list(cli.SUBCOMMANDS))
    cli.register_subcommand(add_hello_parser)
    rc, out, err = run(capsys, "hello", "--times", "2")
    assert rc == 0 and out.strip() == "hello hello"
    rc, out, err = run(capsys, "hello", "--times", "x")
    assert rc == 2 and err.startswith("meprop-cpu hello: error:")


def test_synthetic_dataset_is_fixed_and_shaped_like_mnist():
    a, b = cli.synthetic_dataset(), cli.synthetic_dataset()
    for split in ("train", "dev", "test"):
        assert np.array_equal(a[split][0], b[split][0])
        assert a[split][0].dtype == np.float32 and a[split][0].shape[1] == 784
        assert a[split][1].dtype == np.int64 and set(a[split][1]) == set(range(10))


def test_demo_subcommand_passes_options_through(capsys):
    from meprop_cpu import cli
    assert cli.main(["demo", "--help"]) == 0
    assert "usage: meprop-cpu demo" in capsys.readouterr().out
    assert cli.main(["demo", "--k", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "meprop-cpu demo: error: --k must be >= 1"


def test_bench_handover_options(capsys):
    """`bench --parse` / `--pos` take their own options, so they come first."""
    from meprop_cpu import cli
    assert cli.main(["bench", "--parse", "--help"]) == 0
    assert "meprop-cpu bench --parse" in capsys.readouterr().out
    assert cli.main(["bench", "--pos", "--help"]) == 0
    assert "meprop-cpu bench --pos" in capsys.readouterr().out
    assert cli.main(["bench", "--parse", "--variants", "k99"]) == 2
    assert "unknown variant(s) ['k99']" in capsys.readouterr().err
    assert cli.main(["bench", "--pos", "speed", "--k", "0"]) == 2
    assert "--k" in capsys.readouterr().err
    assert cli.main(["bench", "--no-plots", "--parse"]) == 2
    assert "--parse takes its own options, so it must come first" in capsys.readouterr().err
    assert cli.main(["bench", "--parse", "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
