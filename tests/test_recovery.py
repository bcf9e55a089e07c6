"""No training state is ever lost.

* A child process is SIGKILLed again and again while it writes checkpoints
  (its disk is made slow so that the kill lands inside the write); after
  every kill the checkpoint on disk loads and never goes back in time, and
  the crash-restart-resume loop ends bit-identical to an uninterrupted run.
* Ctrl-C (SIGINT) stops training at a step boundary, saves a checkpoint and
  exits 130 with one line saying how to resume; resuming with that command
  ends bit-identical to an uninterrupted run (also from the middle of an epoch).
"""
import glob
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import cli
from meprop_cpu.nn import MLP
from meprop_cpu.train import Trainer, TrainingInterrupted, build_optimizer, read_checkpoint
from toydata import blobs


@pytest.fixture(autouse=True)
def _default_sigint():
    """Ctrl-C must behave as in a terminal even when the test runner itself was
    started with SIGINT ignored (a shell's background job, nohup, some CI
    runners): Python then keeps SIG_IGN, and so would every child process."""
    old = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _child_default_sigint():
    """preexec_fn for children: start with SIGINT at its default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

# The child's source: builds the run (the parent builds the same one in-process)
CHILD = r'''
import os, sys, time
import numpy as np
import meprop_cpu as mp
from meprop_cpu import train
from meprop_cpu.nn import MLP

N_IN, N_CLASSES = 48, 4


def build(checkpoint=None, epochs=60):
    rng = np.random.default_rng(11)
    protos = rng.normal(0, 1.0, size=(N_CLASSES, N_IN)).astype(np.float32)
    data = {}
    for split, n in (("train", 40), ("dev", 16)):
        y = rng.integers(0, N_CLASSES, size=n).astype(np.int64)
        X = (protos[y] + rng.normal(0, 0.8, size=(n, N_IN))).astype(np.float32)
        data[split] = (X, y)
    # wide hidden layers: a checkpoint (weights + Adam state) is about 2 MB
    model = MLP([N_IN, 384, 384, N_CLASSES], k=16, dropout=0.2, seed=5)
    opt = train.build_optimizer("adam", model.parameters())
    return train.Trainer(model, opt, data, batch_size=10, epochs=epochs, seed=7,
                         checkpoint=checkpoint, progress=False)


class SlowFile:
    """A file whose writes trickle out in 64 KiB pieces (a slow disk)."""

    def __init__(self, f):
        self._f = f

    def write(self, b):
        mv = memoryview(b).cast("B")
        for i in range(0, len(mv), 1 << 16):
            self._f.write(mv[i:i + (1 << 16)])
            time.sleep(0.002)
        return len(mv)

    def __getattr__(self, name):
        return getattr(self._f, name)


def main():
    ckpt, epochs, slow = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "slow"
    mp.set_num_threads(1)
    if slow:
        savez = np.savez

        def slow_savez(f, **arrays):
            print("W", flush=True)          # tells the parent a write starts now
            return savez(SlowFile(f), **arrays)

        np.savez = slow_savez
    t = build(ckpt, epochs)
    t.fit(resume=ckpt if os.path.exists(ckpt) else None)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
'''

N_KILLS = 16
EPOCHS = 60


def _child_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(
        os.path.abspath(mp.__file__))), env.get("PYTHONPATH")) if p)
    return env


def _params(arrays):
    return {n: a for n, a in arrays.items() if n.startswith("param:")}


def test_sigkill_during_checkpoint_writes_never_loses_state(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ns = {"__name__": "child"}
    exec(compile(CHILD, str(script), "exec"), ns)
    ckpt = tmp_path / "c.npz"
    rng = np.random.default_rng(2024)
    env = _child_env()
    last_epoch, mid_write = -1, 0
    for i in range(N_KILLS):
        temps_before = set(glob.glob(str(tmp_path / ".c.npz.*.tmp")))
        p = subprocess.Popen([sys.executable, str(script), str(ckpt), str(EPOCHS), "slow"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        try:
            for _ in range(int(rng.integers(1, 4))):    # the 1st, 2nd or 3rd save of this run
                line = p.stdout.readline()
                if line != "W\n":
                    p.kill()
                    pytest.fail(f"child ended early: {line!r} {p.stderr.read()}")
            time.sleep(rng.uniform(0.0, 0.08))         # a write takes ~0.1 s
        finally:
            p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()
        if set(glob.glob(str(tmp_path / ".c.npz.*.tmp"))) - temps_before:
            mid_write += 1                              # it died inside a write
        if not ckpt.exists():
            assert last_epoch == -1, "the checkpoint disappeared"
            continue
        meta, arrays = read_checkpoint(ckpt)            # loads, every time
        epoch = meta["trainer"]["epoch"]
        assert epoch >= max(last_epoch, 1) and epoch < EPOCHS
        assert all(np.isfinite(a).all() for a in _params(arrays).values())
        ns["build"](None, EPOCHS).load_checkpoint(ckpt)   # and restores into a trainer
        last_epoch = epoch
    assert last_epoch >= 1
    print(f"kills inside a write: {mid_write}/{N_KILLS}, last epoch {last_epoch}")
    assert mid_write >= N_KILLS // 2, f"only {mid_write} kills landed inside a write"

    # finish the crash-restart loop without kills: bit-identical to one straight run
    done = subprocess.run([sys.executable, str(script), str(ckpt), str(EPOCHS), "fast"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "DONE" in done.stdout, done.stderr
    meta, arrays = read_checkpoint(ckpt)
    assert meta["trainer"]["epoch"] == EPOCHS
    old = mp.get_num_threads()
    mp.set_num_threads(1)
    try:
        straight = ns["build"](None, EPOCHS)
        straight.fit()
    finally:
        mp.set_num_threads(old)
    for name, a in straight.model.state_dict().items():
        assert np.array_equal(arrays["param:" + name], a), name
    assert meta["trainer"]["global_step"] == straight.global_step


# ------------------------------------------------------------------ Ctrl-C in-process

N_IN, N_CLASSES = 12, 3


def make_data(n_train=60, seed=0):
    return blobs(N_IN, N_CLASSES, n_train, seed=seed)


def make_trainer(mode="topk", opt="adam", sparse=True, **kw):
    model = MLP([N_IN, 16, 16, N_CLASSES], k=4, mode=mode, dropout=0.25, seed=1)
    o = build_optimizer(opt, model.parameters(), sparse=sparse)
    kw.setdefault("progress", False)
    return Trainer(model, o, make_data(), batch_size=7, epochs=4, evals_per_epoch=3, seed=3,
                   **kw)


def _stop_at(epoch, step, how="request"):
    def cb(tr, e, s):
        if (e, s) == (epoch, step):
            if how == "request":
                tr.request_stop()
            else:
                os.kill(os.getpid(), signal.SIGINT)   # the real Ctrl-C path
    return cb


def _same_state(a, b):
    for x, y in zip(a.model.parameters(), b.model.parameters()):
        assert np.array_equal(x.data, y.data)
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["steps"] == sb["steps"]
    for x, y in zip(sa["params"], sb["params"]):
        assert x["step"] == y["step"]
        assert all(np.array_equal(u, v) for u, v in zip(x["arrays"], y["arrays"]))
    assert a._rng.bit_generator.state == b._rng.bit_generator.state
    key = lambda t: [(r["event"], r["epoch"], r["step"], r["train_loss"], r["dev_acc"],
                      r["test_acc"]) for r in t.history]
    assert key(a) == key(b)
    assert (a.best_dev, a.test_at_best_dev, a.global_step) == \
        (b.best_dev, b.test_at_best_dev, b.global_step)


@pytest.mark.parametrize("where", [(2, 4), (1, 1), (3, 9), (2, 3)])
@pytest.mark.parametrize("mode, opt, sparse", [("topk", "adam", True),
                                               ("random", "sgd", False),
                                               ("unified", "adagrad", True)])
def test_interrupt_mid_epoch_then_resume_is_bit_identical(tmp_path, where, mode, opt, sparse):
    """9 steps an epoch, 3 evaluations (after steps 3, 6, 9): stop after step 4
    of epoch 2, after the very first step, after the last step of an epoch and
    right after an evaluation."""
    straight = make_trainer(mode, opt, sparse)
    straight.fit()

    ckpt = tmp_path / "c.npz"
    first = make_trainer(mode, opt, sparse, checkpoint=ckpt, callbacks=[_stop_at(*where)])
    with pytest.raises(TrainingInterrupted) as ei:
        first.fit()
    e = ei.value
    assert isinstance(e, KeyboardInterrupt) and e.checkpoint == os.fspath(ckpt)
    epoch, step = where
    if step == 9:   # the epoch was complete: the stop comes before epoch + 1's first step
        epoch, step = epoch + 1, 0
    assert (e.epoch, e.step) == (epoch, step)
    assert f"epoch {epoch}, after step {step} of 9" in str(e) and str(ckpt) in str(e)
    meta, _ = read_checkpoint(ckpt)
    assert meta["trainer"]["epoch"] == epoch - 1
    assert meta["trainer"]["partial"]["step"] == step

    resumed = make_trainer(mode, opt, sparse, checkpoint=ckpt)   # a fresh process would
    resumed.fit(resume=ckpt)
    _same_state(straight, resumed)
    assert read_checkpoint(ckpt)[0]["trainer"]["partial"] is None

    # the interrupted trainer object itself may also simply go on
    first.callbacks = []
    first.fit()
    _same_state(straight, first)


def test_sigint_in_process_saves_and_restores_the_handler(tmp_path):
    ckpt = tmp_path / "c.npz"
    log = tmp_path / "log.jsonl"
    t = make_trainer(checkpoint=ckpt, log_json=log, callbacks=[_stop_at(2, 5, how="signal")])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(TrainingInterrupted, match=r"epoch 2, after step 5 of 9.*saved"):
        t.fit()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert read_checkpoint(ckpt)[0]["trainer"]["partial"]["step"] == 5
    last = [line for line in log.read_text().splitlines() if line][-1]
    assert '"event": "interrupted"' in last


def test_second_sigint_stops_at_once(tmp_path):
    ckpt = tmp_path / "c.npz"

    def twice(tr, e, s):
        if (e, s) == (1, 2):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    t = make_trainer(checkpoint=ckpt, callbacks=[twice])
    with pytest.raises(KeyboardInterrupt) as ei:
        t.fit()
    assert not isinstance(ei.value, TrainingInterrupted)
    assert not ckpt.exists()                    # nothing half-written either
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_interrupt_without_a_checkpoint_path_says_so():
    t = make_trainer(callbacks=[_stop_at(1, 2)])
    with pytest.raises(TrainingInterrupted, match="no checkpoint saved") as ei:
        t.fit()
    assert ei.value.checkpoint is None


def test_interrupt_checkpoint_is_used_without_a_checkpoint(tmp_path):
    path = tmp_path / "interrupted.npz"
    t = make_trainer(interrupt_checkpoint=path, callbacks=[_stop_at(1, 2)])
    with pytest.raises(TrainingInterrupted) as ei:
        t.fit()
    assert ei.value.checkpoint == os.fspath(path) and path.exists()


def test_interrupt_with_nan_weights_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "c.npz"

    def poison_then_stop(tr, e, s):
        if (e, s) == (2, 5):           # stop before any forward sees the NaN
            tr.model.linears[0].b.data[0] = np.nan
            tr.request_stop()

    t = make_trainer(checkpoint=ckpt, callbacks=[poison_then_stop])
    with pytest.raises(TrainingInterrupted, match="no checkpoint saved.*NaN") as ei:
        t.fit()
    assert ei.value.checkpoint is None
    meta, _ = read_checkpoint(ckpt)
    assert meta["trainer"]["epoch"] == 1 and meta["trainer"]["partial"] is None


def test_mid_epoch_checkpoint_needs_the_same_batch_size(tmp_path):
    ckpt = tmp_path / "c.npz"
    with pytest.raises(TrainingInterrupted):
        make_trainer(checkpoint=ckpt, callbacks=[_stop_at(1, 4)]).fit()
    other = make_trainer()
    other.batch_size = 5
    before = [p.data.copy() for p in other.model.parameters()]
    with pytest.raises(ValueError, match="same"):
        other.load_checkpoint(ckpt)
    assert all(np.array_equal(a, p.data) for a, p in zip(before, other.model.parameters()))


# ------------------------------------------------------------------ Ctrl-C on the CLI

CLI_ARGS = ["train", "--dataset", "synthetic", "--sizes", "784,32,10", "--k", "4",
            "--dropout", "0.1", "--batch-size", "10", "--epochs", "40", "--threads", "1",
            "--progress", "off"]


def test_cli_sigint_saves_and_prints_the_resume_command(tmp_path, capsys):
    """SIGINT a real `meprop-cpu train` process (no --checkpoint): exit 130, one
    line on stderr naming the saved checkpoint and the command to resume; that
    command finishes bit-identical to an uninterrupted run."""
    env = _child_env()
    p = subprocess.Popen([sys.executable, "-m", "meprop_cpu", *CLI_ARGS], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=_child_default_sigint)
    try:
        while True:                               # wait for the first epoch line
            line = p.stdout.readline()
            assert line, p.stderr.read()
            if line.startswith("epoch "):
                break
        time.sleep(0.03)                          # land somewhere inside a later epoch
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    saved = tmp_path / cli.INTERRUPT_CHECKPOINT
    prefix = f"interrupted: checkpoint saved to {cli.INTERRUPT_CHECKPOINT}; resume with: "
    assert lines[0].startswith(prefix), lines[0]
    command = shlex.split(lines[0][len(prefix):])
    assert command[0] == "meprop-cpu" and command[-2:] == ["--resume", cli.INTERRUPT_CHECKPOINT]
    meta, _ = read_checkpoint(saved)
    assert meta["trainer"]["epoch"] < 40

    # run the printed command (in-process, from the same directory)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert cli.main(command[1:]) == 0
        straight = tmp_path / "straight.npz"
        assert cli.main(CLI_ARGS + ["--checkpoint", str(straight)]) == 0
    finally:
        os.chdir(cwd)
        capsys.readouterr()
    _, a = read_checkpoint(saved)
    _, b = read_checkpoint(straight)
    assert meta["trainer"]["epoch"] < read_checkpoint(saved)[0]["trainer"]["epoch"] == 40
    for name in _params(b):
        assert np.array_equal(a[name], b[name]), name
