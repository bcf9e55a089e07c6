"""The LSTM part-of-speech tagger of the papers' POS experiment.

* :mod:`.model`: features, vocabularies, the tagger network (:class:`PosTagger`);
* :mod:`.train`: :class:`PosTrainer` and ``meprop-cpu train --task pos``;
* :mod:`.fused`: the one-call training step on one sentence (what PosTrainer
  runs by default; bit-identical to the module path);
* :mod:`.simplify`: meSimp for the LSTM (activeness, compaction of the gates).
"""
from .model import (FEATURE_DIM, N_FEATURES, PosTagger, PosTrainer, Vocab, encode, load_tagger,
                    token_features)

__all__ = ["PosTagger", "PosTrainer", "Vocab", "encode", "load_tagger", "token_features",
           "FEATURE_DIM", "N_FEATURES"]
