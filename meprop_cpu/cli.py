"""The ``meprop-cpu`` command line.

    meprop-cpu train --dataset mnist --sizes 784,500,500,10 --k 20 --epochs 20
    meprop-cpu data mnist [--data-dir DIR]
    meprop-cpu info

Exit codes: 0 success; 1 data or runtime error (one line on stderr); 2 bad
command line (one ``meprop-cpu CMD: error: ...`` line on stderr); 130
interrupted (Ctrl-C during ``train`` first finishes the step, saves a
checkpoint and prints the command that resumes it). See docs/errors.md.

Subcommands are built by ``add_<name>_parser(subparsers)`` functions listed in
``SUBCOMMANDS``; each sets ``func`` (``func(args, parser) -> int``) with
``set_defaults``. To add one, write such a function and append it to
``SUBCOMMANDS`` (or call ``register_subcommand(fn)`` before ``main``).

The data set ``synthetic`` is a small, fixed, well-separated 10-class problem
with 784 features built in-process (no files, no network): a smoke test for
the command line, not a benchmark.
"""
import argparse
import contextlib
import os
import sys

import numpy as np

from ._options import (CliError, _int_in, _nonneg_float, _Parser,
                       _positive_float, _positive_int, _probability, _sizes)
from .data.synthetic import DATASETS, N_CLASSES, N_FEATURES, load_dataset, synthetic_dataset
from .nn import DEFAULT_MODE, MODES

__all__ = ["main", "build_parser", "SUBCOMMANDS", "register_subcommand",
           "add_train_parser", "add_data_parser", "add_info_parser",
           "synthetic_dataset", "load_dataset", "DATASETS"]

PARSE_DATASETS = ("turkish-web", "conllu")   # --task parse (meprop_cpu.parsing.cli)
POS_DATASETS = ("conll2003",)   # --task pos


# ------------------------------------------------------------------ subcommands

def add_train_parser(subparsers):
    p = subparsers.add_parser(
        "train", help="train an MLP with meProp (or dense backprop)",
        description="Train an MLP classifier with meProp top-k backprop (paper protocol: "
                    "dev evaluated during training, test reported at the best dev).")
    p.add_argument("--task", choices=("classify", "parse", "pos"), default=None,
                   help="classify (an MLP; the default), parse (the dependency parser; the "
                        "default for --dataset turkish-web / conllu) or pos (the LSTM "
                        "part-of-speech tagger; the default for --dataset conll2003)")
    p.add_argument("--dataset", choices=DATASETS + PARSE_DATASETS + POS_DATASETS, default=None,
                   help="mnist | fashion-mnist | synthetic (a tiny in-process smoke test); "
                        "parse: turkish-web | conllu (with --train/--dev/--test); "
                        "pos: conll2003")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="directory with the data files (mnist: else used as the cache root)")
    p.add_argument("--sizes", type=_sizes, default=[784, 500, 500, 10], metavar="N,H,...,C",
                   help="layer widths, input first (default 784,500,500,10)")
    p.add_argument("--k", type=_positive_int, default=20,
                   help="top-k per hidden layer (default 20)")
    p.add_argument("--mode", choices=MODES, default=None,
                   help=f"backward of the hidden layers (default {DEFAULT_MODE}: the "
                        "batch-size x k largest output-gradient entries of the minibatch form "
                        "the weight gradient, the exact input gradient is passed down; "
                        "topk_dw: the same with k per example; topk: the paper's meProp, "
                        "top-k for both; unified: one top-k set per batch; random: random-k; "
                        "dense)")
    p.add_argument("--paper", action="store_true",
                   help="the paper's exact meProp semantics (same as --mode topk)")
    p.add_argument("--dense", action="store_true",
                   help="ordinary backprop (ignores --k and --mode)")
    p.add_argument("--topk-output", action="store_true",
                   help="also sparsify the output layer's backprop")
    p.add_argument("--dropout", type=_probability, default=0.0, metavar="P",
                   help="dropout after each hidden layer, P in [0, 1) (default 0)")
    p.add_argument("--optimizer", choices=("adam", "adagrad", "sgd"), default="adam")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: adam 0.001, adagrad 0.01, sgd 0.1)")
    p.add_argument("--clip", type=_nonneg_float, default=0.0,
                   help="clip each gradient element to [-C, C] (0 = off)")
    p.add_argument("--dense-update", action="store_true",
                   help="update every weight each step (optimizer sparse=False, as the papers)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="minibatch (default 10; parse: 1000 transition examples; pos: 1 "
                        "sentence, more run side by side through the LSTM)")
    p.add_argument("--epochs", type=_positive_int, default=20)
    p.add_argument("--evals-per-epoch", type=_positive_int, default=1)
    p.add_argument("--threads", type=_int_in(1, 4096), default=None,
                   help="kernel and BLAS threads (default: the current setting, normally "
                        "automatic: all CPUs, fewer while other processes compete for them)")
    p.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=0)
    p.add_argument("--max-train", type=_positive_int, default=None, metavar="N",
                   help="use only the first N training examples")
    p.add_argument("--log-json", default=None, metavar="FILE", help="JSON-lines log")
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="checkpoint written (atomically) after every epoch")
    p.add_argument("--resume", default=None, metavar="FILE",
                   help="continue from this checkpoint (checkpoints then go to --checkpoint, "
                        "else to FILE)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="the updating progress line on stderr (auto: when it is a terminal)")
    p.add_argument("--no-fused", action="store_true",
                   help="take the module path (forward / backward / optimizer.step as "
                        "separate calls) even where the fused one-call C step applies; "
                        "the results are bit-identical, the fused step is faster")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training over MPI: launch N copies with "
                        "`mpiexec -n N python -m mpi4py -m meprop_cpu train --distributed ...`; "
                        "--batch-size is the global batch, split across the ranks "
                        "(needs the [distributed] extra: mpi4py)")
    p.add_argument("--exchange", choices=("auto", "factors", "rows", "owner", "dense"), default="auto",
                   help="with --distributed: how row-sparse weight gradients travel (auto: "
                        "the fewest bytes per layer; see meprop_cpu.distributed)")
    _add_mesimp_options(p)
    from .parsing.cli import add_parse_train_options
    add_parse_train_options(p)
    g = p.add_argument_group("POS tagging (--task pos)")
    g.add_argument("--bidirectional", action="store_true",
                   help="a second LSTM reads each sentence right to left; the output layer "
                        "sees both states (default: one left-to-right LSTM, the paper's)")
    p.set_defaults(func=run_train)
    return p


def add_data_parser(subparsers):
    p = subparsers.add_parser("data", help="fetch / verify a data set and print its shapes",
                              description="Fetch (MNIST only) and verify a data set, then "
                                          "print the shapes of its splits.")
    p.add_argument("name", choices=DATASETS)
    p.add_argument("--data-dir", default=None, metavar="DIR")
    p.set_defaults(func=run_data)
    return p


def add_info_parser(subparsers):
    p = subparsers.add_parser("info", help="print the build and threading configuration",
                              description="Print meprop_cpu.show_config().")
    p.set_defaults(func=run_info)
    return p


def add_demo_parser(subparsers):
    p = subparsers.add_parser("demo", help="train MNIST with dense backprop and meProp, print "
                                           "the speed-up (what `make demo` runs)",
                              description="Run meprop_cpu.demo; options after `demo` go to it "
                                          "(see `meprop-cpu demo --help`).", add_help=False)
    p.set_defaults(func=run_demo, passthrough=True)
    return p


def run_demo(args, parser):
    from . import demo
    try:
        return demo.main(args.passthrough_args)
    except SystemExit as e:   # its argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


SUBCOMMANDS = [add_train_parser, add_data_parser, add_info_parser, add_demo_parser]


def register_subcommand(add_parser):
    """Add a subcommand builder ``add_parser(subparsers) -> parser`` (it must
    ``set_defaults(func=...)``, ``func(args, parser) -> int``)."""
    if add_parser not in SUBCOMMANDS:
        SUBCOMMANDS.append(add_parser)
    return add_parser


def build_parser():
    parser = _Parser(prog="meprop-cpu",
                     description="meProp / meSimp training on multicore CPUs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in SUBCOMMANDS:
        add(sub)
    return parser


# ------------------------------------------------------------------ train

class _Threads:
    """Set kernel threads and BLAS threads (threadpoolctl, if installed) to n;
    ``restore()`` puts both back (main() may be called from Python)."""

    def __init__(self, n):
        from . import _config, set_num_threads
        self._previous = dict(_config._state)
        self._blas = None
        set_num_threads(n)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        self._blas = threadpool_limits(limits=n, user_api="blas")

    def restore(self):
        from . import _config
        _config._state.update(self._previous)
        if self._blas is not None:
            self._blas.restore_original_limits()


@contextlib.contextmanager
def threads_option(n):
    """``--threads N`` for the length of one command (None: leave the setting)."""
    threads = _Threads(n) if n is not None else None
    try:
        yield
    finally:
        if threads is not None:
            threads.restore()


def fit_from_cli(args, parser, trainer, dist=None):
    """``trainer.fit(resume=args.resume)`` for a ``train`` command of any task.
    Returns ``(exit code, summary)``: 0 and the summary; 130 after Ctrl-C (the
    command that resumes is printed); 1 for a bad run (NaN, unreadable file)."""
    from .train import TrainingInterrupted
    try:
        return 0, trainer.fit(resume=args.resume)
    except TrainingInterrupted as e:   # Ctrl-C: saved at a step boundary
        if e.checkpoint is None:
            print(f"{parser.prog}: {e}", file=sys.stderr)
        else:
            print(f"interrupted: checkpoint saved to {e.checkpoint}; resume with: "
                  f"{_resume_command(args, e.checkpoint, dist)}", file=sys.stderr)
        return 130, None
    except (ValueError, FloatingPointError, OSError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1, None


def _fmt_acc(v):
    return "  -  " if v is None else f"{v:5.2f}"


def _epoch_line(trainer, rec):
    return (f"epoch {rec['epoch']:3d}/{trainer.epochs}  loss {rec['train_loss']:.4f}  "
            f"dev {_fmt_acc(rec['dev_acc'])}  test@best-dev {_fmt_acc(rec['test_acc'])}  "
            f"time {rec['time_epoch']:.2f}s (fwd {rec['time_forward']:.2f} "
            f"bwd {rec['time_backward']:.2f} upd {rec['time_update']:.2f}"
            f"{', fused step' if rec.get('step_path') == 'fused' else ''})  "
            f"hidden {rec['hidden_sizes']}")


def _summary_lines(s):
    lines = [f"best dev {_fmt_acc(s['best_dev'])} (epoch {s['best_epoch']}, step "
             f"{s['best_step']})  test at best dev {_fmt_acc(s['test_at_best_dev'])}"]
    t = s["mean_time_epoch"]
    if t is not None:
        def part(name, v):
            share = f" ({100.0 * v / t:.0f}%)" if t > 0 else ""
            return f"{name} {v:.2f}s{share}"
        lines.append(f"mean time per epoch {t:.2f}s: " + ", ".join([
            part("forward", s["mean_time_forward"]), part("backward", s["mean_time_backward"]),
            part("update", s["mean_time_update"])]))
    lines.append(f"epochs {s['epochs_completed']}  threads {s['threads']}  k {s['k']}  "
                 f"mode {s['mode']}  hidden {s['hidden_sizes']}")
    return lines


def paper_mode(args):
    """--mode with --paper folded in (--paper is --mode topk); None when neither
    is given."""
    if args.paper:
        if args.mode not in (None, "topk"):
            raise CliError(f"--paper is --mode topk; it cannot be combined with --mode {args.mode}")
        return "topk"
    return args.mode


def _train_mode(args):
    """The --mode of a non-dense run (--paper is --mode topk). Without either,
    meSimp runs take "topk" (at its k = 160 of 500 it is stable, and it
    prunes further than topk_dw: docs/stability.md), other runs DEFAULT_MODE."""
    if args.paper:
        return paper_mode(args)
    if args.mode is None and args.resume is not None:
        # a run continues in the mode it was started in (checkpoints of 0.2
        # and earlier were trained with the then-default "topk")
        from .train import read_checkpoint
        try:
            mode = (read_checkpoint(args.resume)[0]["model"].get("config") or {}).get("mode")
        except (OSError, ValueError):
            mode = None     # reported by Trainer.fit with the usual message
        if mode in MODES and mode != "dense":
            return mode
    if args.mode is None and args.mesimp:
        return "topk"
    return args.mode


def run_train(args, parser):
    if args.resume is not None and not os.path.isfile(args.resume):
        raise CliError(f"--resume: checkpoint file {args.resume} does not exist")
    if args.task == "pos" or (args.task is None and args.dataset in POS_DATASETS):
        if args.hidden is not None and len(args.hidden) != 1:
            raise CliError(f"--hidden: the POS tagger has one LSTM layer; give one width, "
                           f"got {','.join(map(str, args.hidden))}")
        args.hidden = 500 if args.hidden is None else args.hidden[0]
        if args.dataset is None:
            args.dataset = "conll2003"
        from .tagging.train import run_pos_train
        return run_pos_train(args, parser, CliError)
    if args.dataset in POS_DATASETS:
        raise CliError(f"--dataset {args.dataset} is a POS corpus: use --task pos")
    if getattr(args, "bidirectional", False):
        raise CliError("--bidirectional applies to --task pos only")
    if args.task == "parse" or (args.task is None and args.dataset in PARSE_DATASETS):
        from .parsing.cli import run_train_parse
        return run_train_parse(args, parser, CliError)
    if args.dataset in PARSE_DATASETS:
        raise CliError(f"--dataset {args.dataset} is a treebank: use --task parse")
    from .parsing.cli import check_no_parse_options
    check_no_parse_options(args, CliError)
    if args.dataset is None:
        args.dataset = "mnist"
    if args.batch_size is None:
        args.batch_size = 10
    if args.sizes[0] != N_FEATURES:
        raise CliError(f"--sizes: the first size must be the input width {N_FEATURES} of "
                       f"{args.dataset}, got {args.sizes[0]}")
    if args.sizes[-1] != N_CLASSES:
        raise CliError(f"--sizes: the last size must be the {N_CLASSES} classes of "
                       f"{args.dataset}, got {args.sizes[-1]}")
    dist = _distributed(args, parser)
    if dist is not None and dist.rank != 0:   # rank 0 alone reports
        import contextlib
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            return _run_train(args, parser, dist)
    return _run_train(args, parser, dist)


def _distributed(args, parser):
    """The Distributed job for --distributed (None without it)."""
    if not args.distributed:
        if args.exchange != "auto":
            raise CliError("--exchange needs --distributed")
        return None
    from .distributed import Distributed
    try:
        return Distributed(exchange=args.exchange)
    except ImportError as e:
        raise CliError(f"--distributed: {e}") from None


def _run_train(args, parser, dist):
    from . import data as datasets
    from .nn import MLP
    from .train import Trainer, build_optimizer

    with threads_option(args.threads):
        try:
            data = load_dataset(args.dataset, args.data_dir)
        except datasets.DataError as e:
            print(f"{parser.prog}: data error: {e}", file=sys.stderr)
            return 1
        if args.max_train is not None:
            X, y = data["train"]
            data = dict(data, train=(np.ascontiguousarray(X[:args.max_train]),
                                     np.ascontiguousarray(y[:args.max_train])))
        dense = args.dense or args.mode == "dense"
        model = MLP(_resume_sizes(args), k=None if dense else args.k,
                    mode="dense" if dense else _train_mode(args), dropout=args.dropout,
                    topk_output=args.topk_output, seed=args.seed)
        opt = build_optimizer(args.optimizer, model.parameters(), lr=args.lr,
                              sparse=not args.dense_update, clip=args.clip)
        ckpt = args.checkpoint if args.checkpoint is not None else args.resume
        progress = {"auto": None, "on": True, "off": False}[args.progress]

        def on_epoch(trainer, rec):
            print(_epoch_line(trainer, rec), flush=True)

        trainer = Trainer(model, opt, data, batch_size=args.batch_size, epochs=args.epochs,
                          evals_per_epoch=args.evals_per_epoch, seed=args.seed,
                          log_json=args.log_json, checkpoint=ckpt, progress=progress,
                          on_epoch=on_epoch, callbacks=_mesimp_callbacks(args, model, opt),
                          interrupt_checkpoint=INTERRUPT_CHECKPOINT, fused=not args.no_fused,
                          distributed=dist)
        n_train = data["train"][0].shape[0]
        what = "dense backprop" if dense else f"k {args.k} ({model.config['mode']})"
        from ._config import get_num_threads
        print(f"train {args.dataset}: {n_train} train / {data['dev'][0].shape[0]} dev / "
              f"{data['test'][0].shape[0]} test, sizes {args.sizes}, "
              f"{what}, "
              f"{args.optimizer} lr {opt.lr:g}{' dense update' if args.dense_update else ''}, "
              f"batch {args.batch_size}, threads {get_num_threads()}"
              f"{f', {dist.size} ranks' if dist is not None else ''}", flush=True)
        rc, summary = fit_from_cli(args, parser, trainer, dist)
        if rc:
            return rc
        for line in _summary_lines(summary):
            print(line)
        if dist is None or dist.rank == 0:   # every rank holds the same weights
            _save_model(args, model)
        return 0


INTERRUPT_CHECKPOINT = "meprop-cpu-interrupted.npz"   # Ctrl-C without --checkpoint


def _resume_command(args, path, dist=None):
    """The command line that continues this run from ``path`` (under mpiexec with
    the same number of ranks for a --distributed run)."""
    import shlex
    argv, out, skip = list(getattr(args, "argv", None) or ["train"]), [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not a.startswith("--resume="):
            out.append(a)
    prog = ("meprop-cpu " if dist is None else
            f"mpiexec -n {dist.size} python -m mpi4py -m meprop_cpu ")
    return prog + shlex.join(out + ["--resume", path])


# ------------------------------------------------------------------ data / info

def run_data(args, parser):
    from . import data as datasets
    try:
        data = load_dataset(args.name, args.data_dir)
    except datasets.DataError as e:
        print(f"{parser.prog}: data error: {e}", file=sys.stderr)
        return 1
    print(f"{args.name}: ok")
    for split in ("train", "dev", "test"):
        X, y = data[split]
        print(f"  {split:5s} X {X.shape} {X.dtype}  y {y.shape} {y.dtype}  "
              f"classes {int(y.min())}..{int(y.max())}")
    return 0


def run_info(args, parser):
    from . import show_config
    show_config(print_out=True)
    return 0


# ------------------------------------------------------------------ meSimp

_MESIMP_DEFAULTS = {"prune_rate": 0.1, "cycle_epochs": 5, "steps_per_epoch": 8, "min_width": 1,
                    "reset": "authors"}


def _add_mesimp_options(p):
    g = p.add_argument_group("meSimp (shrink the hidden layers while training)")
    g.add_argument("--mesimp", action="store_true",
                   help="remove inactive hidden neurons during training (cycle schedule)")
    g.add_argument("--prune-rate", type=_probability, default=None, metavar="R",
                   help="remove neuron j if hits[j] < floor(R * examples seen), R in [0, 1) "
                        "(default 0.1)")
    g.add_argument("--cycle-epochs", type=_positive_int, default=None, metavar="C",
                   help="epochs per cycle; even cycles simplify, odd ones train normally, the "
                        "optimizer state is reset between cycles (default 5; 1 for --task pos)")
    g.add_argument("--steps-per-epoch", type=_positive_int, default=None, metavar="S",
                   help="simplification steps per epoch in simplifying cycles (default 8)")
    g.add_argument("--reset", choices=("authors", "paper"), default=None,
                   help="how the optimizer is reset at the end of a cycle: 'authors' (their "
                        "code: moments zeroed, step counts kept, at each simplification point "
                        "of the cycle's last epoch; shrinks the MLP far more) or 'paper' (the "
                        "whole state, once); default authors, paper for --task pos")
    g.add_argument("--min-width", type=_positive_int, default=None, metavar="W",
                   help="never shrink a hidden layer below W neurons (default 1)")
    g.add_argument("--save-model", default=None, metavar="FILE",
                   help="after training, write the (simplified) model to FILE (.npz, "
                        "see `meprop-cpu simplify`)")


def _resume_sizes(args):
    """The checkpoint's sizes when resuming a run whose hidden layers were shrunk
    by meSimp (same depth, input and output, no hidden layer wider), else --sizes."""
    if args.resume is None:
        return args.sizes
    from .train import read_checkpoint
    try:
        sizes = read_checkpoint(args.resume)[0]["model"].get("sizes")
    except (OSError, ValueError):
        return args.sizes   # reported by Trainer.fit with the usual message
    if (isinstance(sizes, list) and len(sizes) == len(args.sizes) and sizes != args.sizes
            and sizes[0] == args.sizes[0] and sizes[-1] == args.sizes[-1]
            and all(1 <= a <= b for a, b in zip(sizes, args.sizes))):
        print(f"resuming a simplified model: sizes {sizes}", flush=True)
        return sizes
    return args.sizes


def _mesimp_callbacks(args, model, opt):
    given = [f"--{k.replace('_', '-')}" for k in _MESIMP_DEFAULTS if getattr(args, k) is not None]
    if not args.mesimp:
        if given:
            raise CliError(f"{', '.join(given)} need --mesimp")
        return []
    from .simplify import CycleSchedule, Simplifier
    o = {k: (v if getattr(args, k) is None else getattr(args, k))
         for k, v in _MESIMP_DEFAULTS.items()}
    simp = Simplifier(model, opt, prune_rate=o["prune_rate"], min_width=o["min_width"],
                      schedule=CycleSchedule(o["cycle_epochs"], o["steps_per_epoch"],
                                             reset=o["reset"]),
                      verbose=True)
    print(f"meSimp: prune rate {o['prune_rate']:g}, cycles of {o['cycle_epochs']} epochs, "
          f"{o['steps_per_epoch']} simplification steps per epoch in even cycles, "
          f"min width {o['min_width']}, optimizer reset: {o['reset']}", flush=True)
    return [simp]


def _save_model(args, model):
    if args.save_model is not None:
        model.save(args.save_model)
        print(f"model saved to {args.save_model} (sizes {model.sizes})")


def _model_summary(model):
    W = sum(m.W.data.size for m in model.linears)
    b = sum(m.b.data.size for m in model.linears)
    return W, b


def add_simplify_parser(subparsers):
    p = subparsers.add_parser(
        "simplify", help="show a (simplified) model file's architecture and size",
        description="Print the architecture and parameter count of a model file written by "
                    "`train --save-model` (or of a training checkpoint), optionally its test "
                    "accuracy, and optionally export it as a model file.")
    p.add_argument("model", metavar="MODEL", help="model file (.npz) or training checkpoint")
    p.add_argument("--eval", action="store_true", help="also report the test accuracy")
    p.add_argument("--dataset", choices=DATASETS, default="mnist",
                   help="data set for --eval (default mnist)")
    p.add_argument("--data-dir", default=None, metavar="DIR")
    p.add_argument("--export", default=None, metavar="FILE",
                   help="write the model as a model file (from a checkpoint, say)")
    p.set_defaults(func=run_simplify)
    return p


def run_simplify(args, parser):
    from . import data as datasets, nn
    from .train import model_from_checkpoint
    if not os.path.isfile(args.model):
        print(f"{parser.prog}: error: model file {args.model} does not exist", file=sys.stderr)
        return 1
    try:
        try:
            model, kind = nn.load(args.model), "model file"
        except ValueError as e:
            try:
                model, kind = model_from_checkpoint(args.model), "training checkpoint"
            except ValueError:
                raise e from None
    except ValueError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    W, b = _model_summary(model)
    sizes = model.sizes
    print(f"{args.model}: {kind}")
    print(f"sizes {'-'.join(map(str, sizes))}  (hidden {model.hidden_sizes}, "
          f"activation {model.config['activation']})")
    print(f"parameters {W + b:,} (weights {W:,}, biases {b:,})")
    if args.export is not None:
        model.save(args.export)
        print(f"exported to {args.export}")
    if args.eval:
        try:
            data = load_dataset(args.dataset, args.data_dir)
        except datasets.DataError as e:
            print(f"{parser.prog}: data error: {e}", file=sys.stderr)
            return 1
        X, y = data["test"]
        if X.shape[1] != sizes[0] or int(y.max()) >= sizes[-1]:
            print(f"{parser.prog}: error: the model ({sizes[0]} inputs, {sizes[-1]} classes) "
                  f"does not fit {args.dataset}", file=sys.stderr)
            return 1
        print(f"test accuracy ({args.dataset}, {X.shape[0]} examples): "
              f"{model.accuracy(X, y):.2f}%")
    return 0


register_subcommand(add_simplify_parser)


def add_bench_parser(subparsers):
    """`meprop-cpu bench`: built and run by meprop_cpu.bench."""
    from .bench import add_parser
    return add_parser(subparsers)


register_subcommand(add_bench_parser)


def add_parse_parser(subparsers):
    """`meprop-cpu parse MODEL FILE.conllu`: meprop_cpu.parsing.cli."""
    from .parsing.cli import add_parse_parser as add
    return add(subparsers)


register_subcommand(add_parse_parser)


# ------------------------------------------------------------------ main

def main(argv=None):
    """Run the command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv[:1] == ["bench"]:   # `bench --parse ...` / `--pos ...`: their own options
        from .bench.driver import handover
        code = handover(argv[1:])
        if code is not None:
            return code
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        args.argv = argv
        sub = _subparser(parser, args.command)
        if getattr(args, "passthrough", False):   # `demo`: its own parser reads the rest
            args.passthrough_args, extra = extra, []
        if extra:  # reported by the subcommand's parser, which names the subcommand
            sub.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return int(args.func(args, sub) or 0)
    except CliError as e:
        print(f"{sub.prog}: error: {e} (see {sub.prog} --help)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{sub.prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError as e:
        print(f"{sub.prog}: error: out of memory ({e})", file=sys.stderr)
        return 1
    except (ValueError, OSError, RuntimeError, ArithmeticError) as e:
        # bad data, files or settings found while running: one line, no traceback
        print(f"{sub.prog}: error: {e}".splitlines()[0], file=sys.stderr)
        return 1


def _subparser(parser, name):
    for action in parser._subparsers._group_actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    return parser


if __name__ == "__main__":
    sys.exit(main())
