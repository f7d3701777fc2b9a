"""The on-disk feature store: extract once, in parallel and resumably; load as padded batches.

Three jobs, one module each:

    layout.py   where entries live: settings hashes, utterance keys, entry paths, atomic entries
    extract.py  the extraction engine: plan missing entries, run them on workers (`run_pool`),
                collect failures, progress and timings into an `ExtractReport`
    load.py     reading entries back into `UtteranceFeatures` and padded batches

`FeatureStore(root)` is the one object callers use: its folders come from the layout,
`.extract` and `.load` / `.batches` hand it to the engine and the reader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from emofuse.corpora.base import Corpus, Utterance
from emofuse.features.store import extract as _extract
from emofuse.features.store import load as _load
from emofuse.features.store.extract import ExtractReport, Failure, Job
from emofuse.features.store.layout import (
    CODE_VERSION,
    STALE_TMP_SECONDS,
    StoreLayout,
    align_mode_for,
    settings_hash,
    split_features,
    utterance_key,
)

if TYPE_CHECKING:
    from emofuse.features.batch import UtteranceFeatures

__all__ = [
    "CODE_VERSION", "STALE_TMP_SECONDS", "ExtractReport", "Failure", "FeatureStore", "StoreLayout",
    "align_mode_for", "settings_hash", "split_features", "utterance_key",
]


class FeatureStore(StoreLayout):
    """Feature entries under `root` (layout.py). `extract` fills it, `load` reads it."""

    def plan(
        self, corpus: Corpus | Sequence[Utterance], features: Sequence[str], align: str | None = "auto",
        force: bool = False,
    ) -> tuple[list[Job], int, list[Failure]]:
        return _extract.plan(self, corpus, features, align, force)

    def extract(
        self,
        corpus: Corpus | Sequence[Utterance],
        features: Sequence[str],
        align: str | None = "auto",
        workers: int = 1,
        progress: bool = True,
        force: bool = False,
        chunk_size: int = 16,
    ) -> ExtractReport:
        """Compute every missing entry (extract.extract); Ctrl-C keeps finished ones, a rerun resumes."""
        return _extract.extract(self, corpus, features, align, workers, progress, force, chunk_size)

    def load(
        self,
        corpus: Corpus | Sequence[Utterance],
        acoustic: str | None = None,
        words: str | None = None,
        align: str | None = "auto",
        missing: str = "error",
    ) -> list["UtteranceFeatures"]:
        """The stored features of `corpus`, in its order (load.load_features)."""
        return _load.load_features(self, corpus, acoustic, words, align, missing)

    def batches(
        self,
        corpus: Corpus | Sequence[Utterance],
        classes: Sequence[str],
        batch_size: int = 32,
        acoustic: str | None = None,
        words: str | None = None,
        align: str | None = "auto",
        vocab=None,
    ):
        """Padded `Batch`es in corpus order (load.batches)."""
        return _load.batches(self, corpus, classes, batch_size, acoustic, words, align, vocab)
