"""The dependency parser: CoNLL-U, transition system and oracle, features,
the pre-computed C parser against the plain network and a Python reference,
attachment scores, loaders, training, the command line. Only the last test
touches the network (the real Turkish treebank)."""
import json
import os

import numpy as np
import pytest

import meprop_cpu as mp
from meprop_cpu import cli as mpcli, data as datasets
from meprop_cpu.parsing import conllu, data, transition as tr
from meprop_cpu.parsing.model import Parser, ParserNet, PrecomputedNet, load_parser
from meprop_cpu.parsing.train import ParserTrainer
from meprop_cpu.train import build_optimizer

HAND = """# sent_id = 1
# text = The cat sat .
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tcat\tcat\tNOUN\tNN\t_\t3\tnsubj\t_\t_
3-4\tsat.\t_\t_\t_\t_\t_\t_\t_\t_
3\tsat\tsit\tVERB\tVBD\t_\t0\troot\t_\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

1\tDogs\tdog\tNOUN\tNNS\t_\t2\tnsubj\t_\t_
2\tbark\tbark\tVERB\tVBP\t_\t0\troot\t_\t_
2.1\tloudly\t_\tADV\tRB\t_\t_\t_\t_\t_
3\t!\t!\tPUNCT\t.\t_\t2\tpunct\t_\t_
"""


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ------------------------------------------------------------------ CoNLL-U

def test_read_skips_ranges_and_empty_nodes_and_writes_back(tmp_path):
    sents = conllu.read_conllu(_write(tmp_path, "a.conllu", HAND))
    assert len(sents) == 2
    s = sents[0]
    assert s.forms[1:] == ["The", "cat", "sat", "."]
    assert s.heads[1:] == [2, 3, 0, 3]
    assert s.deprels[1:] == ["det", "nsubj", "root", "punct"]
    assert s.pos()[1:] == ["DT", "NN", "VBD", "."]
    assert s.pos("upos")[1:] == ["DET", "NOUN", "VERB", "PUNCT"]
    assert [s.is_punct(i) for i in range(1, 5)] == [False, False, False, True]
    assert sents[1].forms[1:] == ["Dogs", "bark", "!"]
    # unchanged output reproduces the input; predicted heads / labels replace columns 7 and 8
    assert conllu.format_conllu(sents).strip() == HAND.strip()
    out = conllu.format_conllu(sents, [[3, 3, 0, 3], [2, 0, 1]],
                               [["a", "b", "root", "c"], ["x", "root", "y"]])
    back = conllu.parse_conllu(out.splitlines(), "out")
    assert back[0].heads[1:] == [3, 3, 0, 3] and back[1].deprels[1:] == ["x", "root", "y"]
    assert "3-4\tsat." in out and "2.1\tloudly" in out and "# text = The cat sat ." in out


@pytest.mark.parametrize("bad, match", [
    ("1\tA\ta\tX\tX\t_\t0\troot\t_\n", r"bad\.conllu:1: expected 10 tab-separated fields, got 9"),
    ("1\tA\ta\tX\tX\t_\t0\troot\t_\t_\n3\tB\tb\tX\tX\t_\t1\tdep\t_\t_\n",
     r"bad\.conllu:2: ID '3' out of sequence"),
    ("1\tA\ta\tX\tX\t_\t0\troot\t_\t_\n2\tB\tb\tX\tX\t_\t7\tdep\t_\t_\n",
     r"word 2 has HEAD 7, outside \[0, 2\]"),
    ("1\tA\ta\tX\tX\t_\t0\troot\t_\t_\n2\tB\tb\tX\tX\t_\t2\tdep\t_\t_\n", r"HEAD 2 \(itself\)"),
    ("1\tA\ta\tX\tX\t_\t2\tdep\t_\t_\n2\tB\tb\tX\tX\t_\t3\tdep\t_\t_\n"
     "3\tC\tc\tX\tX\t_\t1\tdep\t_\t_\n", r"cycle through words"),
    ("1\tA\ta\tX\tX\t_\t_\troot\t_\t_\n", r"HEAD is '_'"),
    ("1\tA\ta\tX\tX\t_\tx\troot\t_\t_\n", r"HEAD 'x' is not a non-negative integer"),
    ("1\tA\ta\tX\tX\t_\t0\t_\t_\t_\n", r"DEPREL is empty"),
    ("x\tA\ta\tX\tX\t_\t0\troot\t_\t_\n", r"ID 'x' out of sequence"),
    ("1-x\tA\ta\tX\tX\t_\t0\troot\t_\t_\n", r"bad ID '1-x'"),
    ("# only a comment\n", r"no word lines"),
    ("\n\n", r"no sentences"),
])
def test_malformed_conllu_is_a_clear_error(tmp_path, bad, match):
    with pytest.raises(conllu.CoNLLUError, match=match):
        conllu.read_conllu(_write(tmp_path, "bad.conllu", bad))


def test_text_to_parse_may_lack_heads(tmp_path):
    text = "1\tA\ta\tX\tX\t_\t_\t_\t_\t_\n2\tB\tb\tX\tX\t_\t_\t_\t_\t_\n"
    s = conllu.read_conllu(_write(tmp_path, "raw.conllu", text), gold=False)
    assert s[0].heads[1:] == [-1, -1]
    with pytest.raises(conllu.CoNLLUError, match="cycle"):   # given heads are still checked
        conllu.read_conllu(_write(tmp_path, "c.conllu", text.replace("\t_\t_\t_\t_\n", "\t2\tx\t_\t_\n", 1)
                                  .replace("\t_\t_\t_\t_\n", "\t1\tx\t_\t_\n", 1)), gold=False)


# ------------------------------------------------------------------ oracle

def random_projective(rng, n):
    """Heads of a random projective tree over words 1..n with one word on ROOT."""
    heads = [0] * (n + 1)
    heads[0] = -1

    def span(lo, hi, head):          # attach words lo..hi (a contiguous span) under head
        if lo > hi:
            return
        r = int(rng.integers(lo, hi + 1))
        heads[r] = head
        # the left and right parts hang from r, split into a random number of subspans
        for a, b in ((lo, r - 1), (r + 1, hi)):
            cuts = sorted(rng.choice(np.arange(a, b + 1), size=min(b - a + 1,
                          int(rng.integers(0, 3))), replace=False).tolist()) if b >= a else []
            edges = [a] + [c + 1 for c in cuts if c < b] + [b + 1]
            for x, y in zip(edges[:-1], edges[1:]):
                span(x, y - 1, r)
    span(1, n, 0)
    return heads


def _sentence(heads, labels=None, rng=None):
    n = len(heads) - 1
    labels = labels or [["a", "b", "c"][i % 3] for i in range(n)]
    labels = [("root" if heads[i + 1] == 0 else labels[i]) for i in range(n)]
    words = [f"w{int(rng.integers(0, 6))}" if rng is not None else f"w{i}" for i in range(n)]
    tags = [f"T{int(w[1:]) % 3}" for w in words]
    return conllu.Sentence(words, tags, tags, heads[1:], labels)


def test_oracle_rebuilds_every_projective_tree():
    rng = np.random.default_rng(0)
    sents = [_sentence(random_projective(rng, int(rng.integers(1, 15))), rng=rng)
             for _ in range(300)]
    vocab = tr.Vocab.build(sents, min_count=1)
    L = vocab.n_labels
    for s in sents:
        assert tr.is_projective(s.heads)
        lab = [-1] + [vocab.label_index[r] for r in s.deprels[1:]]
        seq = tr.oracle_sequence(s.heads, lab, L)
        assert seq is not None and len(seq) == 2 * len(s)
        c = tr.Configuration(len(s))
        for t in seq:
            sh, le, ri = tr.legal_moves(c)
            assert (sh if t == 0 else le if t <= L else ri), "the oracle chose an illegal move"
            tr.apply(c, t, L)
        assert c.terminal()
        assert c.heads[1:] == s.heads[1:] and c.labels[1:] == lab[1:]
    X, y, st = tr.make_examples(sents, vocab)
    assert st == {"sentences": 300, "used": 300, "non_projective": 0, "unreachable": 0,
                  "examples": 2 * sum(len(s) for s in sents)}
    assert X.shape == (y.shape[0], 48) and X.dtype == np.int32


def test_non_projective_and_multi_root_trees_are_skipped_and_counted():
    nonproj = _sentence([-1, 3, 4, 0, 3])          # 1->3 crosses 2->4
    assert not tr.is_projective(nonproj.heads)
    two_roots = _sentence([-1, 0, 0])
    ok = _sentence([-1, 2, 0])
    vocab = tr.Vocab.build([nonproj, two_roots, ok], min_count=1)
    X, y, st = tr.make_examples([nonproj, two_roots, ok], vocab)
    assert st["non_projective"] == 1 and st["unreachable"] == 1 and st["used"] == 1
    assert st["examples"] == 4 == X.shape[0]


def _children_by_scan(heads, k):
    """(lc1, lc2, rc1, rc2) of k from the arcs themselves (the definition)."""
    left = [i for i in range(1, k) if heads[i] == k]
    right = [i for i in range(len(heads) - 1, k, -1) if heads[i] == k]
    pick = lambda a, j: a[j] if len(a) > j else -1   # noqa: E731
    return pick(left, 0), pick(left, 1), pick(right, 0), pick(right, 1)


def test_incremental_children_match_their_definition():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        c = tr.Configuration(n)
        while not c.terminal():
            sh, le, ri = tr.legal_moves(c)
            moves = [t for t, ok in ((0, sh), (1, le), (3, ri)) if ok]
            tr.apply(c, moves[int(rng.integers(len(moves)))], 2)
            for k in range(n + 1):
                assert (c.lc1[k], c.lc2[k], c.rc1[k], c.rc2[k]) == _children_by_scan(c.heads, k)


def test_features_of_a_hand_made_configuration():
    # "a b c d e": ids w = 10 + i, p = 20 + i; labels: 0, 1
    w = [tr.ROOT] + [10 + i for i in range(1, 6)]
    p = [tr.ROOT] + [20 + i for i in range(1, 6)]
    c = tr.Configuration(5)
    L = 2
    for t in (0, 0, 1 + 0, 0, 1 + L + 1, 0):   # SH SH LEFT(0): 2->1; SH RIGHT(1): 2->3; SH
        tr.apply(c, t, L)
    # stack [0, 2, 4], buffer [5]; 2 has left child 1 (label 0) and right child 3 (label 1)
    assert c.stack == [0, 2, 4] and c.i == 5
    f = tr.features(c, w, p)
    N = tr.NULL
    words = [14, 12, tr.ROOT, 15, N, N,          # s1 s2 s3 b1 b2 b3
             N, N, N, N, N, N,                   # children of s1 = 4: none
             11, 13, N, N, N, N]                 # s2 = 2: lc1 1, rc1 3, lc2, rc2, lc1(lc1), rc1(rc1)
    tags = [24, 22, tr.ROOT, 25, N, N] + [N] * 6 + [21, 23, N, N, N, N]
    labels = [0] * 6 + [1, 2, 0, 0, 0, 0]        # label ids: 1 + label index, 0 = NULL
    assert f == words + tags + labels
    assert len(f) == tr.N_FEATURES == 48


# ------------------------------------------------------------------ network and C parser

def _tiny_treebank(n, seed):
    rng = np.random.default_rng(seed)
    return [_sentence(random_projective(rng, int(rng.integers(1, 12))), rng=rng)
            for _ in range(n)]


def _tiny_parser(activation="cube", hidden=(24, 16), seed=3, k=None):
    sents = _tiny_treebank(60, seed)
    vocab = tr.Vocab.build(sents, min_count=1)
    return Parser.create(vocab, hidden=hidden, dim=6, activation=activation, seed=seed,
                         k=k), sents


@pytest.mark.parametrize("activation", ["cube", "relu", "tanh"])
def test_precomputation_gives_the_plain_network_scores(activation):
    parser, sents = _tiny_parser(activation)
    X, _, _ = tr.make_examples(sents, parser.vocab)
    plain = parser.net.scores(X)
    for pc in (PrecomputedNet(parser.net, n_words=4), PrecomputedNet(parser.net, n_words=10**6),
               PrecomputedNet(parser.net, precompute=False)):
        got = pc.scores(X, threads=1)
        np.testing.assert_allclose(got, plain, rtol=1e-4, atol=1e-5 * np.abs(plain).max())
        np.testing.assert_array_equal(pc.scores(X, threads=2), got)   # thread count: bit-identical
    assert PrecomputedNet(parser.net, n_words=4).limits[:18].tolist() == [4] * 18


def test_c_parser_matches_the_python_reference():
    parser, sents = _tiny_parser("cube", seed=5)
    pc = parser.precomputed()
    ref_h, ref_l = tr.greedy_parse_reference(lambda X: pc.scores(X, threads=1), sents,
                                             parser.vocab)
    heads, labels = parser.parse(sents, threads=1)
    assert heads == ref_h
    assert labels == [[parser.vocab.labels[j] for j in lab] for lab in ref_l]
    assert parser.parse(sents, threads=2) == (heads, labels)
    # the plain network (numpy products) picks the same transitions up to rounding
    plain_h, _ = tr.greedy_parse_reference(parser.net.scores, sents, parser.vocab)
    same = np.mean([a == b for x, y in zip(plain_h, heads) for a, b in zip(x, y)])
    assert same > 0.99
    for s, h in zip(sents, heads):        # every output is a tree with one word on ROOT
        conllu.check_tree([-1] + h)
        assert h.count(0) == 1


def test_embedding_gradient_is_row_sparse_and_exact():
    parser, sents = _tiny_parser("relu", seed=2)
    net = parser.net
    X, y, _ = tr.make_examples(sents[:5], parser.vocab)
    emb = net.embedding
    out = emb.forward(X)
    dx = np.random.default_rng(0).standard_normal(out.shape).astype(np.float32)
    emb.backward(dx)
    d = emb.dim
    for (a, b), E in zip(((0, 18), (18, 36), (36, 48)), emb.tables):
        want = np.zeros(E.data.shape, np.float64)
        np.add.at(want, X[:, a:b], dx.reshape(-1, 48, d)[:, a:b].astype(np.float64))
        rows = np.unique(X[:, a:b])
        assert E.grad.rows.tolist() == rows.tolist()
        np.testing.assert_allclose(E.grad.to_dense(E.data.shape[0]), want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ scores

def test_attachment_scores_on_a_hand_made_file(tmp_path):
    gold = conllu.read_conllu(_write(tmp_path, "g.conllu", HAND))
    # sentence 1: heads right for The, cat, sat; '.' wrong; labels: cat wrong
    # sentence 2: Dogs head wrong; bark right (label right); '!' right, label wrong
    heads = [[2, 3, 0, 2], [3, 0, 2]]
    labels = [["det", "dobj", "root", "punct"], ["nsubj", "root", "p"]]
    sc = mp.parsing.attachment_scores(gold, heads, labels)
    assert sc["words"] == 7 and sc["words_no_punct"] == 5
    assert sc["uas"] == pytest.approx(100 * 4 / 5)        # The cat sat bark / 5
    assert sc["las"] == pytest.approx(100 * 3 / 5)        # The sat bark
    assert sc["uas_punct"] == pytest.approx(100 * 5 / 7)  # + '!'
    assert sc["las_punct"] == pytest.approx(100 * 3 / 7)
    with pytest.raises(ValueError, match="has 4 words"):
        mp.parsing.attachment_scores(gold, [[1], [1, 0, 2]], [["x"], ["a", "b", "c"]])


# ------------------------------------------------------------------ loaders

def _treebank_text(n, seed):
    return conllu.format_conllu(_tiny_treebank(n, seed))


def test_turkish_loader_reads_a_directory_and_splits_by_index(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_TURKISH, raising=False)
    _write(tmp_path, "web.conllu", _treebank_text(25, 1))
    _write(tmp_path, "wiki.conllu", _treebank_text(12, 2))
    tb = data.turkish_web(tmp_path)
    # per file: i % 10 < 8 train, 8 dev, 9 test -> web 25: 19/3/3? (i=8,18 dev; 9,19 test)
    assert (len(tb["train"]), len(tb["dev"]), len(tb["test"])) == (21 + 10, 2 + 1, 2 + 1)
    web = conllu.read_conllu(tmp_path / "web.conllu")
    assert tb["dev"][0].forms == web[8].forms and tb["test"][1].forms == web[19].forms
    monkeypatch.setenv(data.ENV_TURKISH, str(tmp_path))
    assert len(data.turkish_web()["train"]) == 31
    (tmp_path / "wiki.conllu").unlink()
    with pytest.raises(datasets.DataError, match="missing wiki.conllu"):
        data.turkish_web()


def test_turkish_cache_is_checksummed(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_TURKISH, raising=False)
    with pytest.raises(datasets.DataError, match="fetch=False"):
        data.turkish_web(cache_dir=tmp_path, fetch=False)
    d = data.turkish_cache_dir(tmp_path)
    d.mkdir(parents=True)
    for name in data.TURKISH_FILES:
        _write(d, name, _treebank_text(5, 3))
    with pytest.raises(datasets.ChecksumError, match="expected d6f92b12"):
        data.turkish_web(cache_dir=tmp_path, fetch=False)


def test_conllu_files_loader(tmp_path):
    a = _write(tmp_path, "a.conllu", _treebank_text(10, 4))
    b = _write(tmp_path, "b.conllu", HAND)
    tb = data.conllu_files(a, b)
    assert len(tb["train"]) == 10 and len(tb["dev"]) == 2 and tb["test"] is None
    with pytest.raises(datasets.DataError, match="does not exist"):
        data.conllu_files(a, tmp_path / "nope.conllu")


# ------------------------------------------------------------------ training

def _train(tb, epochs, tmp_path, resume=None, k=8, **kw):
    vocab = tr.Vocab.build(tb["train"], min_count=1)
    p = Parser.create(vocab, hidden=(32, 32), dim=8, k=k, seed=1, **kw)
    opt = build_optimizer("adam", p.net.parameters(), lr=0.01)
    t = ParserTrainer(p, opt, tb, batch_size=64, epochs=epochs, seed=2, progress=False,
                      checkpoint=tmp_path / "ck.npz", log_json=tmp_path / "log.jsonl")
    return p, t, t.fit(resume=resume)


def test_training_learns_logs_and_resumes_bit_identically(tmp_path):
    # a learnable toy language: every tree is a chain to the right of a fixed word class
    sents = _tiny_treebank(120, 7)
    tb = {"train": sents[:100], "dev": sents[100:110], "test": sents[110:]}
    p, t, s = _train(tb, 4, tmp_path)
    losses = [r["train_loss"] for r in t.history]
    assert losses[-1] < losses[0]
    assert s["best_dev"] is not None and 0 <= s["best_dev"] <= 100
    log = [json.loads(x) for x in open(tmp_path / "log.jsonl")]
    ep = [r for r in log if r["event"] == "epoch"]
    assert len(ep) == 4
    for key in ("dev_acc", "test_acc", "dev_las", "test_las", "time_epoch", "time_forward",
                "time_backward", "time_update", "time_backward_linear", "hidden_sizes"):
        assert key in ep[-1]
    assert ep[-1]["dev_scores"]["uas"] == ep[-1]["dev_acc"]
    assert log[-1]["event"] == "summary" and log[-1]["test_acc"] == s["test_at_best_dev"]
    assert s["oracle"]["used"] == 100
    final = {n: a.copy() for n, a in p.net.state_dict().items()}
    # 2 epochs, then resume to 4: the same weights bit for bit
    p2, t2, _ = _train(tb, 2, tmp_path)
    p3, t3, s3 = _train(tb, 4, tmp_path, resume=tmp_path / "ck.npz")
    for n, a in p3.net.state_dict().items():
        np.testing.assert_array_equal(a, final[n], err_msg=n)
    assert s3["best_dev"] == s["best_dev"] and s3["test_las_at_best_dev"] == \
        s["test_las_at_best_dev"]
    # save / load: the same parses
    p.save(tmp_path / "parser.npz")
    q = load_parser(tmp_path / "parser.npz")
    assert q.parse(tb["test"]) == p.parse(tb["test"])


def test_mesimp_shrinks_the_parser(tmp_path):
    from meprop_cpu.simplify import EveryN, Simplifier
    sents = _tiny_treebank(80, 8)
    tb = {"train": sents[:70], "dev": sents[70:]}
    vocab = tr.Vocab.build(tb["train"], min_count=1)
    p = Parser.create(vocab, hidden=(40, 40), dim=8, k=4, seed=1)
    opt = build_optimizer("adam", p.net.parameters())
    simp = Simplifier(p.net, opt, prune_rate=0.05, schedule=EveryN(5))
    ParserTrainer(p, opt, tb, batch_size=64, epochs=2, progress=False, callbacks=[simp]).fit()
    assert all(h < 40 for h in p.net.hidden_sizes)
    heads, _ = p.parse(tb["dev"])                  # the shrunk model still parses
    assert len(heads) == 10
    p.save(tmp_path / "small.npz")
    assert load_parser(tmp_path / "small.npz").net.hidden_sizes == p.net.hidden_sizes


def test_bad_parser_arguments():
    with pytest.raises(ValueError, match="activation"):
        ParserNet(10, 5, 3, activation="sigmoid")
    with pytest.raises(ValueError, match="hidden"):
        ParserNet(10, 5, 3, hidden=[])
    parser, sents = _tiny_parser()
    with pytest.raises(ValueError, match="ids of E_word must lie in"):
        parser.net.forward(np.full((2, 48), 10**6, np.int32))
    with pytest.raises(TypeError, match="integer array of shape"):
        parser.net.forward(np.zeros((2, 48), np.float32))
    with pytest.raises(TypeError, match="not a Sentence"):
        parser.parse(["a b c"])
    with pytest.raises(ValueError, match=r"shape \(B, 48\)"):
        parser.precomputed().scores(np.zeros((2, 5), np.int32))


# ------------------------------------------------------------------ command line

def _cli(*args):
    return mpcli.main([str(a) for a in args])


def test_cli_train_save_and_parse(tmp_path, capsys):
    a = _write(tmp_path, "train.conllu", _treebank_text(80, 9))
    b = _write(tmp_path, "dev.conllu", _treebank_text(10, 10))
    model = tmp_path / "p.npz"
    rc = _cli("train", "--task", "parse", "--dataset", "conllu", "--train", a, "--dev", b,
              "--test", b, "--hidden", "16,16", "--embed-dim", "8", "--epochs", "2",
              "--batch-size", "50", "--k", "4", "--progress", "off", "--min-count", "1",
              "--save-model", model, "--log-json", tmp_path / "l.jsonl", "--threads", "1")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "best dev UAS" in out and "transition examples" in out
    assert "k 4 (topk_dw)" in out                      # the parser's default mode
    rc = _cli("parse", model, b, "--output", tmp_path / "out.conllu", "--eval")
    err = capsys.readouterr().err
    assert rc == 0 and "UAS" in err and "sentences/s" in err
    parsed = conllu.read_conllu(tmp_path / "out.conllu")
    assert len(parsed) == 10
    # to stdout
    assert _cli("parse", model, b) == 0
    assert capsys.readouterr().out.count("\n\n") == 10


def test_cli_plain_first_layer_trains_the_same_model(tmp_path, capsys):
    """--plain-first-layer: the first layer as plain products; the same losses to
    float rounding as the default (once per distinct id), and the flag is saved."""
    a = _write(tmp_path, "train.conllu", _treebank_text(60, 3))
    b = _write(tmp_path, "dev.conllu", _treebank_text(8, 4))
    losses = {}
    for flag in ([], ["--plain-first-layer"]):
        model = tmp_path / f"p{len(flag)}.npz"
        log = tmp_path / f"l{len(flag)}.jsonl"
        rc = _cli("train", "--task", "parse", "--dataset", "conllu", "--train", a, "--dev", b,
                  "--hidden", "16,16", "--embed-dim", "8", "--epochs", "2", "--batch-size", "40",
                  "--dense", "--progress", "off", "--min-count", "1", "--save-model", model,
                  "--log-json", log, "--threads", "1", *flag)
        assert rc == 0, capsys.readouterr().out
        recs = [json.loads(line) for line in open(log)]
        losses[len(flag)] = [r["train_loss"] for r in recs if r["event"] == "epoch"]
        assert load_parser(model).net.config["distinct"] is (not flag)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)


@pytest.mark.parametrize("argv, match, code", [
    (["train", "--task", "parse", "--dataset", "conllu"], "needs --train FILE and --dev FILE", 2),
    (["train", "--dataset", "mnist", "--hidden", "5"], "apply to --task parse only", 2),
    (["train", "--dataset", "mnist", "--plain-first-layer"], "apply to --task parse only", 2),
    (["train", "--task", "parse", "--sizes", "784,10"], "--sizes is for the MLP", 2),
    (["train", "--task", "parse", "--paper", "--mode", "batch_dw"], "--paper is --mode topk", 2),
    (["train", "--task", "classify", "--dataset", "conllu"], "is a treebank", 2),
    (["parse", "nope.npz", "x.conllu"], "does not exist", 1),
])
def test_cli_parse_errors(argv, match, code, capsys):
    assert _cli(*argv) == code
    assert match in capsys.readouterr().err


def test_cli_parse_rejects_a_non_parser_file(tmp_path, capsys):
    f = _write(tmp_path, "x.conllu", HAND)
    np.savez(tmp_path / "m.npz", a=np.zeros(3))
    assert _cli("parse", tmp_path / "m.npz", f) == 1
    assert "not a meprop_cpu parser model" in capsys.readouterr().err


# ------------------------------------------------------------------ real data

_HAVE_TWT = all((data.turkish_cache_dir() / n).is_file() for n in data.TURKISH_FILES)


@pytest.mark.network
@pytest.mark.skipif(not (os.environ.get("MEPROP_TEST_NETWORK") == "1" or _HAVE_TWT),
                    reason="set MEPROP_TEST_NETWORK=1 (or have the treebank in the cache)")
def test_turkish_web_treebank_trains(tmp_path):
    tb = data.turkish_web()
    assert (len(tb["train"]), len(tb["dev"]), len(tb["test"])) == (3881, 485, 485)
    assert sum(len(s) for k in tb for s in tb[k]) == 81370
    small = {"train": tb["train"][:800], "dev": tb["dev"][:150]}
    vocab = tr.Vocab.build(small["train"])
    p = Parser.create(vocab, hidden=(200,), k=20, seed=0)
    opt = build_optimizer("adam", p.net.parameters())
    t = ParserTrainer(p, opt, small, batch_size=200, epochs=2, progress=False)
    s = t.fit()
    assert t.oracle_stats["non_projective"] > 0          # the treebank has some
    assert s["best_dev"] > 50.0, s["best_dev"]           # far above chance after 2 epochs


@pytest.mark.network
@pytest.mark.skipif(not (os.environ.get("MEPROP_TEST_NETWORK") == "1" or _HAVE_TWT),
                    reason="set MEPROP_TEST_NETWORK=1 (or have the treebank in the cache)")
def test_bench_parse_trains_and_writes_json(tmp_path, capsys):
    """`meprop-cpu bench --parse` end to end on a slice of the treebank."""
    from meprop_cpu import cli
    code = cli.main(["bench", "--parse", "--part", "train", "--variants", "dense,k20,k20b",
                     "--epochs", "1", "--max-train", "60", "--hidden", "40", "--threads", "1",
                     "--batch-size", "200", "--out", str(tmp_path), "--name", "t"])
    assert code == 0
    with open(tmp_path / "t.json") as f:
        doc = json.load(f)
    assert doc["part"] == "train" and [r["variant"] for r in doc["runs"]] == ["dense", "k20",
                                                                              "k20b"]
    for r in doc["runs"]:
        assert len(r["history"]) == 1 and 0.0 <= r["best"]["dev_uas"] <= 100.0
        assert 0.0 <= r["best"]["test"]["uas"] <= 100.0
    assert doc["runs"][1]["modes"][:2] == ["topk_dw", "topk_dw"]     # the parser's default
    assert doc["runs"][2]["modes"][:2] == ["batch_dw", "batch_dw"]
    # the plain first layer trains the same model (to float rounding)
    code = cli.main(["bench", "--parse", "--part", "train", "--variants", "dense_plain",
                     "--epochs", "1", "--max-train", "60", "--hidden", "40", "--threads", "1",
                     "--batch-size", "200", "--out", str(tmp_path), "--name", "p"])
    assert code == 0
    with open(tmp_path / "p.json") as f:
        plain = json.load(f)["runs"][0]
    assert abs(plain["history"][0]["train_loss"] - doc["runs"][0]["history"][0]["train_loss"]) \
        < 1e-4 * doc["runs"][0]["history"][0]["train_loss"]
    # --part parse: the parsing speed only, every round and thread count
    code = cli.main(["bench", "--parse", "--part", "parse", "--max-train", "60", "--hidden",
                     "40", "--threads", "1,2", "--repeats", "2", "--out", str(tmp_path),
                     "--name", "s"])
    assert code == 0
    with open(tmp_path / "s.json") as f:
        sp = json.load(f)
    assert sp["part"] == "parse"
    assert [(p["repeat"], p["threads"], p["kind"]) for p in sp["parse"]] == [
        (r, t, k) for r in (0, 1) for t in (1, 2) for k in ("precomputed", "plain")]
    assert all(p["sentences_per_s"] > 0 for p in sp["parse"])


@pytest.mark.network
@pytest.mark.skipif(not (os.environ.get("MEPROP_TEST_NETWORK") == "1" or _HAVE_TWT),
                    reason="set MEPROP_TEST_NETWORK=1 (or have the treebank in the cache)")
def test_bench_parse_mesimp_takes_the_reset(tmp_path):
    from meprop_cpu import cli
    code = cli.main(["bench", "--parse", "--part", "train", "--variants", "mesimp",
                     "--epochs", "1", "--max-train", "60", "--hidden", "40", "--threads", "1",
                     "--batch-size", "200", "--reset", "paper", "--out", str(tmp_path),
                     "--name", "m"])
    assert code == 0
    with open(tmp_path / "m.json") as f:
        run = json.load(f)["runs"][0]
    assert run["variant"] == "mesimp" and run["reset"] == "paper" and run["prune_rate"] == 0.1
