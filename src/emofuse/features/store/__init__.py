"""The on-disk feature store: extract once, in parallel and resumably; load as padded batches.

One job per module:

    layout.py   where entries live: settings hashes, utterance keys, entry paths, atomic entries
    plan.py     which entries are missing (a job per utterance), and which utterances a shard takes
    extract.py  the extraction engine: run the jobs on workers (`run_pool`; cluster.py: Ray),
                collect failures, progress and timings into an `ExtractReport`
    load.py     reading entries back into `UtteranceFeatures` and padded batches

`FeatureStore(root)` is the one object callers use: its folders come from the layout,
`.extract` and `.load` / `.batches` hand it to the engine and the reader.
"""

from __future__ import annotations

from emofuse.features.store import extract as _extract
from emofuse.features.store import load as _load
from emofuse.features.store import plan as _plan
from emofuse.features.store.extract import ExtractReport
from emofuse.features.store.plan import Failure
from emofuse.features.store.layout import (
    CODE_VERSION,
    STALE_TMP_SECONDS,
    StoreLayout,
    align_mode_for,
    settings_hash,
    split_features,
    utterance_key,
)

__all__ = [
    "CODE_VERSION", "STALE_TMP_SECONDS", "ExtractReport", "Failure", "FeatureStore", "StoreLayout",
    "align_mode_for", "settings_hash", "split_features", "utterance_key",
]


class FeatureStore(StoreLayout):
    """Feature entries under `root` (layout.py). `extract` fills it, `load` reads it.

    The methods are the engine's and the reader's functions, which take the layout as their
    first argument: `store.extract(corpus, ["fbank40"], workers=2)` is
    `extract.extract(store, corpus, ["fbank40"], workers=2)`.
    """

    plan = _plan.plan  # (corpus, features, align, force) -> (jobs, complete, failures)
    extract = _extract.extract  # (corpus, features, align, workers, ...) -> ExtractReport
    load = _load.load_features  # (corpus, acoustic, words, align, missing) -> [UtteranceFeatures]
    batches = _load.batches  # (corpus, classes, batch_size, ...) -> padded Batches
