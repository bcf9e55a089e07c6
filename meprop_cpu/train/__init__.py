"""The training loop: seeded shuffling, the papers' evaluation protocol,
per-phase timings, JSON-lines logs and atomic, pickle-free checkpoints.

Typical use::

    model = MLP([784, 500, 500, 10], k=20)
    opt = build_optimizer("adam", model.parameters())
    trainer = Trainer(model, opt, data.mnist(), batch_size=10, epochs=20,
                      log_json="run.jsonl", checkpoint="run.ckpt.npz")
    summary = trainer.fit()                      # or trainer.fit(resume="run.ckpt.npz")

Protocol (as in the papers): dev accuracy is measured ``evals_per_epoch``
times per epoch at evenly spaced steps, the last one at the epoch's end;
whenever dev improves (strictly), test accuracy is measured too, and the
reported score is the test accuracy at the best dev accuracy. Accuracies are
percentages.

Resuming: ``fit(resume=path)`` restores weights, optimizer state, the shuffle
generator, every Dropout's generator, random-k counters and the trainer's
counters and history from a checkpoint written at the end of an epoch, then
trains up to ``epochs`` (the total, not additional ones). With the same seed
and thread count the result is bit-identical to an uninterrupted run.

Ctrl-C (SIGINT) during ``fit`` does not stop the process in the middle of an
update: the trainer finishes the current step (and evaluation, if one is due),
saves a checkpoint of that state to ``checkpoint`` (else
``interrupt_checkpoint``; not if the weights hold NaN/Inf) and raises
:class:`TrainingInterrupted` (a KeyboardInterrupt). Such a mid-epoch
checkpoint also records the position in the epoch (``trainer.partial``: the
step, the running loss and timings) with the shuffle generator rewound to the
epoch's start, so resuming from it redraws the same permutation, skips the
steps already done and ends bit-identical to an uninterrupted run. A second
Ctrl-C stops at once with a plain KeyboardInterrupt (the checkpoint on disk is
then the last one written). ``request_stop()`` does the same as one Ctrl-C.

Checkpoints: see :mod:`.checkpoint` for the format.

* :mod:`.trainer`: the Trainer;
* :mod:`.optimizers`: optimizers by name (``build_optimizer``);
* :mod:`.checkpoint`: the checkpoint format, ``read_checkpoint``, ``model_from_checkpoint``;
* :mod:`.progress`: the progress line and ``TrainingInterrupted``.
"""
from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, model_from_checkpoint,
                         read_checkpoint)
from .optimizers import DEFAULT_LR, OPTIMIZERS, build_optimizer
from .progress import TrainingInterrupted
from .trainer import LOG_KEYS, Trainer

__all__ = ["Trainer", "TrainingInterrupted", "build_optimizer", "OPTIMIZERS", "DEFAULT_LR",
           "read_checkpoint", "model_from_checkpoint", "LOG_KEYS", "CHECKPOINT_FORMAT",
           "CHECKPOINT_VERSION"]
