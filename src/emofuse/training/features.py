"""The thin adapter between an experiment config and the corpus + feature store stages.

`load_labelled(cfg)`: read the corpus (an `emofuse prepare` manifest, or a corpus folder
through `emofuse.corpora.registry.load_corpus`), keep the utterances the label set uses,
extract the configured features into the store when they are missing (a no-op when
cached; progress on stderr) and load them, in corpus order, as a `LabelledData`.
Utterances whose features could not be computed are left out and reported, never silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from emofuse.corpora.base import Corpus
from emofuse.corpora.labels import get_label_set
from emofuse.errors import DataError
from emofuse.training.config import ExperimentConfig
from emofuse.training.data import LabelledData, map_labels


def read_corpus(cfg: ExperimentConfig, log: Callable[[str], None] = print) -> Corpus:
    d = cfg.data
    if d.manifest:
        corpus = Corpus.read(d.manifest)
    else:
        from emofuse.corpora.registry import load_corpus

        corpus = load_corpus(d.corpus, d.path, d.label_set)
        if corpus.skipped:
            first = corpus.skipped[0]
            log(f"{len(corpus.skipped)} file(s) skipped while reading {d.path} (first: {first.path}: {first.reason})")
    return corpus


def store_root(cfg: ExperimentConfig, corpus: Corpus) -> Path:
    return Path(cfg.data.store) if cfg.data.store else Path("features") / corpus.name


def load_labelled(cfg: ExperimentConfig, log: Callable[[str], None] = print, progress: bool | None = None) -> LabelledData:
    from emofuse.features.store import FeatureStore

    d = cfg.data
    label_set = get_label_set(d.label_set)
    corpus, labels = map_labels(read_corpus(cfg, log), label_set)
    store = FeatureStore(store_root(cfg, corpus))
    wanted = [f for f in (d.acoustic, d.words) if f]
    if not wanted:
        raise DataError(None, "the config names no features (data.acoustic and data.words are both null)")
    report = store.extract(corpus, wanted, align=d.align, workers=d.workers,
                           progress=True if progress is None else progress)
    if report.computed:
        log(f"features: {report.computed} utterance(s) extracted into {store.root} "
            f"({report.wall_seconds:.0f} s), {report.cached} cached")
    items = store.load(corpus, acoustic=d.acoustic, words=d.words, align=d.align, missing="skip")
    if len(items) < len(corpus):
        have = {it.id for it in items}
        lost = [u.id for u in corpus if u.id not in have]
        reasons = {f.id: f"{f.stage}: {f.reason}" for f in report.failures}
        first = lost[0]
        log(f"{len(lost)} of {len(corpus)} utterance(s) have no features and are left out "
            f"(first: {first}: {reasons.get(first, 'not in the store')})")
        if not items:
            raise DataError(store.root, f"no utterance of {corpus.name!r} has features {', '.join(wanted)}")
        keep = [i for i, u in enumerate(corpus) if u.id in have]
        corpus, labels = corpus.subset(keep), labels[keep]
    if d.trim is not None:
        from emofuse.features.spans import trim

        items = [trim(it, d.trim) for it in items]
    return LabelledData(corpus, items, labels, label_set.classes)
