"""Corpus folders -> Utterance records. No torch here."""

from emofuse.corpora.base import Corpus, Skipped, Utterance, Word
from emofuse.corpora.labels import LABEL_SETS, LabelSet, get_label_set

__all__ = ["Corpus", "Skipped", "Utterance", "Word", "LABEL_SETS", "LabelSet", "get_label_set"]
