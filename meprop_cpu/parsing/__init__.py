"""A transition-based dependency parser (Chen & Manning 2014) trained with
meProp / meSimp on the library's layers, optimizers and Trainer.

    from meprop_cpu.parsing import data, Vocab, Parser, ParserTrainer
    from meprop_cpu.train import build_optimizer
    tb = data.turkish_web()                       # {"train", "dev", "test"}: Sentence lists
    vocab = Vocab.build(tb["train"])
    parser = Parser.create(vocab, hidden=(500, 500), k=20, activation="cube")
    opt = build_optimizer("adagrad", parser.net.parameters())
    summary = ParserTrainer(parser, opt, tb, batch_size=1000, epochs=20).fit()
    heads, labels = parser.parse(tb["test"])      # greedy, pre-computed C parser
    parser.evaluate(tb["test"])                   # {"uas", "las", "uas_punct", "las_punct", ...}
    parser.save("parser.npz"); load_parser("parser.npz")

Modules: :mod:`.conllu` (read / write CoNLL-U), :mod:`.transition`
(arc-standard, oracle, features), :mod:`.model` (network, parser, C
inference), :mod:`.evaluate` (UAS / LAS), :mod:`.data` (treebanks),
:mod:`.train` (ParserTrainer).
"""
from . import conllu, data, evaluate, model, transition
from .conllu import CoNLLUError, Sentence, read_conllu, write_conllu
from .evaluate import attachment_scores
from .model import Parser, ParserNet, PrecomputedNet, load_parser
from .train import DEFAULT_BATCH_SIZE, ParserTrainer
from .transition import Vocab, make_examples

__all__ = ["conllu", "data", "evaluate", "model", "transition", "CoNLLUError", "Sentence",
           "read_conllu", "write_conllu", "attachment_scores", "Parser", "ParserNet",
           "PrecomputedNet", "load_parser", "ParserTrainer", "DEFAULT_BATCH_SIZE", "Vocab",
           "make_examples"]
