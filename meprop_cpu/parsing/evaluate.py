"""Attachment scores: UAS and LAS, with and without punctuation.

A word's head is correct when it equals the gold HEAD; its label when the
predicted DEPREL string equals the gold one (a gold label the parser never
saw in training can therefore never be right: it counts as a label error,
not as a failure). Punctuation: words whose gold UPOS is ``PUNCT``
(:data:`~meprop_cpu.parsing.conllu.PUNCT_UPOS`).
"""
__all__ = ["attachment_scores"]


def attachment_scores(gold, heads, labels):
    """Scores of predicted ``heads`` / ``labels`` (per sentence, n entries each;
    labels as DEPREL strings) against the gold sentences.

    Returns a dict of percentages ``uas``, ``las`` (punctuation excluded),
    ``uas_punct``, ``las_punct`` (every word), and the counts ``words``,
    ``words_no_punct``."""
    if len(heads) != len(gold) or len(labels) != len(gold):
        raise ValueError(f"attachment_scores: {len(gold)} gold sentences but {len(heads)} "
                         f"head lists and {len(labels)} label lists")
    tot = totp = uh = ul = uhp = ulp = 0
    for s, hs, ls in zip(gold, heads, labels):
        n = len(s)
        if len(hs) != n or len(ls) != n:
            raise ValueError(f"attachment_scores: {s.where or 'a sentence'} has {n} words, "
                             f"the prediction {len(hs)} heads / {len(ls)} labels")
        for i in range(1, n + 1):
            h_ok = int(hs[i - 1]) == s.heads[i]
            l_ok = h_ok and ls[i - 1] == s.deprels[i]
            totp += 1
            uhp += h_ok
            ulp += l_ok
            if not s.is_punct(i):
                tot += 1
                uh += h_ok
                ul += l_ok

    def pct(a, b):
        return 100.0 * a / b if b else 0.0
    return {"uas": pct(uh, tot), "las": pct(ul, tot), "uas_punct": pct(uhp, totp),
            "las_punct": pct(ulp, totp), "words": totp, "words_no_punct": tot}
