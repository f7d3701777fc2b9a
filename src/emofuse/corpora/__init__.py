"""Corpus folders -> Utterance records. No torch here."""

from emofuse.corpora.base import Corpus, Skipped, Utterance, Word
from emofuse.corpora.common import PreparedCorpus, probe_audio
from emofuse.corpora.labels import LABEL_SETS, LabelSet, get_label_set
from emofuse.corpora.registry import CORPUS_KINDS, corpus_kinds, load_corpus

__all__ = [
    "Corpus", "Skipped", "Utterance", "Word", "LABEL_SETS", "LabelSet", "get_label_set",
    "PreparedCorpus", "probe_audio", "CORPUS_KINDS", "corpus_kinds", "load_corpus",
]
