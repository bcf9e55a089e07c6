"""Command-line pieces of the parser: ``meprop-cpu train --task parse`` and
``meprop-cpu parse MODEL FILE.conllu``.

    meprop-cpu train --task parse --dataset turkish-web --k 20 --optimizer adagrad \\
        --epochs 20 --log-json parse.jsonl --checkpoint parse.ckpt.npz --save-model parser.npz
    meprop-cpu train --task parse --dataset conllu --train a.conllu --dev b.conllu --test c.conllu
    meprop-cpu parse parser.npz input.conllu > parsed.conllu
"""
import os
import sys

__all__ = ["add_parse_train_options", "check_no_parse_options", "run_train_parse",
           "add_parse_parser", "run_parse"]

_PARSE_ONLY = ("train", "dev", "test", "hidden", "activation", "embed_dim", "min_count",
               "pos_field", "precompute_words", "plain_first_layer")
_DEFAULTS = {"hidden": [500, 500], "activation": "cube", "embed_dim": 50, "min_count": 2,
             "pos_field": "xpos", "precompute_words": 1000}


def _hidden(text):
    import argparse
    try:
        sizes = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 500,500, "
                                         f"got {text!r}") from None
    if not 1 <= len(sizes) <= 7 or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected 1 to 7 widths >= 1, got {text!r}")
    return sizes


def add_parse_train_options(p):
    from ..cli import _positive_int
    g = p.add_argument_group("dependency parsing (--task parse)")
    g.add_argument("--train", default=None, metavar="FILE", help="training CoNLL-U (--dataset "
                   "conllu)")
    g.add_argument("--dev", default=None, metavar="FILE", help="dev CoNLL-U (--dataset conllu)")
    g.add_argument("--test", default=None, metavar="FILE",
                   help="test CoNLL-U (--dataset conllu; optional)")
    g.add_argument("--hidden", type=_hidden, default=None, metavar="H,H",
                   help="hidden widths (parse: default 500,500; --task pos: the LSTM's "
                        "one width, default 500)")
    g.add_argument("--activation", choices=("cube", "relu", "tanh"), default=None,
                   help="hidden activation (default cube, as Chen & Manning)")
    g.add_argument("--embed-dim", type=_positive_int, default=None, metavar="D",
                   help="embedding width of words, POS tags and labels (default 50)")
    g.add_argument("--min-count", type=_positive_int, default=None, metavar="N",
                   help="training words seen fewer than N times map to UNK (default 2)")
    g.add_argument("--pos-field", choices=("xpos", "upos"), default=None,
                   help="POS column the parser reads (default xpos, upos where it is '_')")
    g.add_argument("--precompute-words", type=int, default=None, metavar="N",
                   help="pre-compute the first layer for the N most frequent words per "
                        "position when parsing (default 1000; 0: none)")
    g.add_argument("--plain-first-layer", action="store_const", const=True, default=None,
                   help="train the first hidden layer as plain products over the 2,400 "
                        "embedding inputs instead of once per distinct id of each feature "
                        "position in the batch (the same results to float rounding, slower; "
                        "for comparison)")


def check_no_parse_options(args, CliError):
    given = [f"--{k.replace('_', '-')}" for k in _PARSE_ONLY if getattr(args, k, None) is not None]
    if given:
        raise CliError(f"{', '.join(given)} apply to --task parse only")


def _opt(args, key):
    v = getattr(args, key)
    return _DEFAULTS[key] if v is None else v


def _load_treebank(args, CliError):
    from ..data import DataError
    from . import data
    if args.dataset == "conllu":
        if args.train is None or args.dev is None:
            raise CliError("--dataset conllu needs --train FILE and --dev FILE (--test optional)")
        return data.conllu_files(args.train, args.dev, args.test)
    if args.train is not None or args.dev is not None or args.test is not None:
        raise CliError("--train / --dev / --test need --dataset conllu")
    d = args.data_dir
    if d is not None and all(os.path.isfile(os.path.join(d, n)) for n in data.TURKISH_FILES):
        return data.turkish_web(d)
    try:
        return data.turkish_web(cache_dir=d)
    except DataError:
        raise


def _resume_hidden(args, hidden):
    """The checkpoint's hidden widths when resuming a meSimp-shrunk run."""
    if args.resume is None:
        return hidden
    from ..train import read_checkpoint
    try:
        sizes = read_checkpoint(args.resume)[0]["model"].get("sizes")
    except (OSError, ValueError):
        return hidden
    if (isinstance(sizes, list) and len(sizes) == len(hidden) + 2
            and all(1 <= a <= b for a, b in zip(sizes[1:-1], hidden))
            and sizes[1:-1] != hidden):
        print(f"resuming a simplified model: hidden {sizes[1:-1]}", flush=True)
        return sizes[1:-1]
    return hidden


def _fmt(v):
    return "  -  " if v is None else f"{v:5.2f}"


def run_train_parse(args, parser, CliError):
    from .. import cli
    from .._config import get_num_threads
    from ..data import DataError
    from ..train import build_optimizer
    from .conllu import CoNLLUError
    from .model import DEFAULT_MODE, Parser
    from .train import DEFAULT_BATCH_SIZE, ParserTrainer
    from .transition import Vocab, make_examples

    if args.dataset is None:
        args.dataset = "conllu" if args.train is not None else "turkish-web"
    if args.dataset not in cli.PARSE_DATASETS:
        raise CliError(f"--task parse needs --dataset turkish-web or conllu, got {args.dataset}")
    if args.sizes != [784, 500, 500, 10]:
        raise CliError("--sizes is for the MLP; the parser's hidden widths are --hidden")
    if args.batch_size is None:
        args.batch_size = DEFAULT_BATCH_SIZE
    # --paper is topk; without a mode, the parser's default (topk_dw, not the MLP's)
    mode = cli.paper_mode(args)
    if args.dense or mode == "dense":
        mode = "dense"
    elif mode is None:
        mode = DEFAULT_MODE
    with cli.threads_option(args.threads):
        try:
            tb = _load_treebank(args, CliError)
        except (DataError, CoNLLUError) as e:
            print(f"{parser.prog}: data error: {e}", file=sys.stderr)
            return 1
        if args.max_train is not None:
            tb = dict(tb, train=tb["train"][:args.max_train])
        vocab = Vocab.build(tb["train"], min_count=_opt(args, "min_count"),
                            pos_field=_opt(args, "pos_field"))
        dense = mode == "dense"
        hidden = _resume_hidden(args, list(_opt(args, "hidden")))
        p = Parser.create(vocab, hidden=hidden, dim=_opt(args, "embed_dim"),
                          k=None if dense else args.k, mode=mode,
                          activation=_opt(args, "activation"), dropout=args.dropout,
                          topk_output=args.topk_output, seed=args.seed,
                          distinct=not args.plain_first_layer)
        p.n_precompute = max(0, int(_opt(args, "precompute_words")))
        opt = build_optimizer(args.optimizer, p.net.parameters(), lr=args.lr,
                              sparse=not args.dense_update, clip=args.clip)
        ckpt = args.checkpoint if args.checkpoint is not None else args.resume
        progress = {"auto": None, "on": True, "off": False}[args.progress]
        examples = make_examples(tb["train"], vocab)

        def on_epoch(trainer, rec):
            print(f"epoch {rec['epoch']:3d}/{trainer.epochs}  loss {rec['train_loss']:.4f}  "
                  f"dev UAS {_fmt(rec['dev_acc'])} LAS {_fmt(rec['dev_las'])}  test@best-dev "
                  f"UAS {_fmt(rec['test_acc'])} LAS {_fmt(rec['test_las'])}  time "
                  f"{rec['time_epoch']:.2f}s (fwd {rec['time_forward']:.2f} bwd "
                  f"{rec['time_backward']:.2f} [linear {rec['time_backward_linear']:.2f}] upd "
                  f"{rec['time_update']:.2f}) eval {rec['time_eval']:.2f}s  "
                  f"hidden {rec['hidden_sizes']}", flush=True)

        trainer = ParserTrainer(p, opt, tb, batch_size=args.batch_size, epochs=args.epochs,
                                examples=examples, evals_per_epoch=args.evals_per_epoch,
                                seed=args.seed, log_json=args.log_json, checkpoint=ckpt,
                                progress=progress, on_epoch=on_epoch,
                                callbacks=cli._mesimp_callbacks(args, p.net, opt),
                                interrupt_checkpoint=cli.INTERRUPT_CHECKPOINT)
        st = trainer.oracle_stats
        print(f"train parser on {args.dataset}: {len(tb['train'])} train sentences "
              f"({st['non_projective']} non-projective and {st['unreachable']} unreachable "
              f"skipped, {st['examples']} transition examples) / {len(tb['dev'])} dev / "
              f"{len(tb['test']) if tb.get('test') else 0} test; vocabulary "
              f"{len(vocab.words)} words, {len(vocab.tags)} tags, {vocab.n_labels} labels; "
              f"hidden {hidden} {_opt(args, 'activation')}, "
              f"{'dense backprop' if dense else f'k {args.k} ({mode})'}, "
              f"{args.optimizer} lr {opt.lr:g}, batch {args.batch_size}, "
              f"threads {get_num_threads()}", flush=True)
        rc, s = cli.fit_from_cli(args, parser, trainer)
        if rc:
            return rc
        print(f"best dev UAS {_fmt(s['best_dev'])} LAS {_fmt(s['dev_las_at_best_dev'])} (epoch "
              f"{s['best_epoch']})  test at best dev UAS {_fmt(s['test_at_best_dev'])} LAS "
              f"{_fmt(s['test_las_at_best_dev'])}")
        if s["mean_time_epoch"] is not None:
            print(f"mean time per epoch {s['mean_time_epoch']:.2f}s: forward "
                  f"{s['mean_time_forward']:.2f}s, backward {s['mean_time_backward']:.2f}s "
                  f"(linear layers {s['mean_time_backward_linear']:.2f}s), update "
                  f"{s['mean_time_update']:.2f}s")
        print(f"epochs {s['epochs_completed']}  threads {s['threads']}  k {s['k']}  mode "
              f"{s['mode']}  hidden {s['hidden_sizes']}")
        if args.save_model is not None:
            p.save(args.save_model)
            print(f"parser saved to {args.save_model} (hidden {p.net.hidden_sizes})")
        return 0


def add_parse_parser(subparsers):
    from ..cli import _int_in
    p = subparsers.add_parser(
        "parse", help="parse a CoNLL-U file with a trained parser (writes CoNLL-U)",
        description="Parse FILE (CoNLL-U; HEAD / DEPREL may be '_') with the parser MODEL "
                    "written by `train --task parse --save-model`, and write it with the "
                    "predicted HEAD and DEPREL to standard output (or --output).")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("file", metavar="FILE.conllu")
    p.add_argument("--output", "-o", default=None, metavar="OUT",
                   help="write here instead of standard output")
    p.add_argument("--threads", type=_int_in(1, 4096), default=None)
    p.add_argument("--eval", action="store_true",
                   help="FILE has gold trees: print UAS / LAS to standard error")
    p.set_defaults(func=run_parse)
    return p


def run_parse(args, parser):
    import time
    from .._config import get_num_threads, set_num_threads
    from .conllu import CoNLLUError, read_conllu, write_conllu
    from .evaluate import attachment_scores
    from .model import load_parser
    for f, what in ((args.model, "model file"), (args.file, "input file")):
        if not os.path.isfile(f):
            print(f"{parser.prog}: error: {what} {f} does not exist", file=sys.stderr)
            return 1
    try:
        p = load_parser(args.model)
        sents = read_conllu(args.file, gold=args.eval)
    except (ValueError, CoNLLUError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    prev = get_num_threads()
    if args.threads is not None:
        set_num_threads(args.threads)
    try:
        t0 = time.perf_counter()
        heads, labels = p.parse(sents)
        dt = time.perf_counter() - t0
    finally:
        set_num_threads(prev)
    if args.output is not None:
        write_conllu(args.output, sents, heads, labels)
    else:
        write_conllu(sys.stdout, sents, heads, labels)
        sys.stdout.flush()
    print(f"parsed {len(sents)} sentences in {dt:.3f}s ({len(sents) / max(dt, 1e-9):,.0f} "
          f"sentences/s)", file=sys.stderr)
    if args.eval:
        sc = attachment_scores(sents, heads, labels)
        print(f"UAS {sc['uas']:.2f} LAS {sc['las']:.2f} (punctuation excluded); with "
              f"punctuation UAS {sc['uas_punct']:.2f} LAS {sc['las_punct']:.2f}",
              file=sys.stderr)
    return 0
