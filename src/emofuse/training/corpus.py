"""The thin adapter between an experiment config and the corpus + feature store stages.

`load_labelled(cfg)`: read the corpus (an `emofuse prepare` manifest, or a corpus folder
through `emofuse.corpora.registry.load_corpus`), keep the utterances the label set uses,
extract the configured features into the store when they are missing (a no-op when
cached; progress on stderr) and load them, in corpus order, as a `LabelledData`.
Utterances whose features could not be computed are left out and reported, never silently.

The label set is resolved here, where the data is (`resolve_label_set`): a built-in name, a
YAML file, `data.classes` (+ `data.label_map`) or `auto`, the classes of the training corpus.
With `data.test_manifest` (protocol cross-corpus) the test corpus is read, mapped through the
same set and appended, its ids and speakers prefixed with its name and marked
`meta["cross_corpus"] = "test"`, which `splits.cross_corpus_split` reads.
"""

from __future__ import annotations

import os

from pathlib import Path
from typing import Callable

from dataclasses import replace

import numpy as np

from emofuse.corpora.base import Corpus
from emofuse.corpora.labels import (
    LABEL_SETS, LabelSet, auto_label_set, custom_label_set, describe, get_label_set, is_label_set_file,
)
from emofuse.errors import DataError, LabelError
from emofuse.training.config import ExperimentConfig
from emofuse.training.data import LabelledData, map_labels


def read_corpus(cfg: ExperimentConfig, log: Callable[[str], None] = print) -> Corpus:
    d = cfg.data
    if d.manifest:
        corpus = Corpus.read(d.manifest)
    else:
        from emofuse.corpora.registry import load_corpus

        named = d.label_set if d.classes is None and (d.label_set in LABEL_SETS or is_label_set_file(d.label_set)) else None
        corpus = load_corpus(d.corpus, d.path, named)  # auto and inline classes: labels as given
        if corpus.skipped:
            first = corpus.skipped[0]
            log(f"{len(corpus.skipped)} file(s) skipped while reading {d.path} (first: {first.path}: {first.reason})")
    return corpus


def store_root(cfg: ExperimentConfig, corpus: Corpus) -> Path:
    return Path(cfg.data.store) if cfg.data.store else Path("features") / corpus.name


def resolve_label_set(cfg: ExperimentConfig, corpus: Corpus, log: Callable[[str], None] = print,
                      source=None) -> tuple[LabelSet, list[str]]:
    """The run's label set and notes on how it was decided (the classes `auto` dropped)."""
    d = cfg.data
    try:
        if d.classes is not None:
            return custom_label_set(d.label_set or "custom", d.classes, d.label_map, "data.classes"), []
        if d.label_set == "auto":
            auto = auto_label_set([u.label for u in corpus], d.min_class_count, source=str(source or corpus.name))
            notes = []
            if auto.dropped:
                notes.append(f"label set auto: dropped {len(auto.dropped)} class(es) with fewer than "
                             f"{d.min_class_count} utterances (data.min_class_count): "
                             + ", ".join(f"{c} ({n})" for c, n in auto.dropped.items()))
                log(notes[-1])
            return auto.label_set, notes
        return get_label_set(d.label_set), []
    except LabelError as exc:
        raise DataError(source, str(exc)) from None


def load_labelled(cfg: ExperimentConfig, log: Callable[[str], None] = print, progress: bool | None = None) -> LabelledData:
    d = cfg.data
    source = d.manifest or d.path
    corpus = read_corpus(cfg, log)
    check_audio(cfg, corpus, source)
    label_set, notes = resolve_label_set(cfg, corpus, log, source)
    corpus, labels = map_labels(corpus, label_set, source)
    corpus, items, labels = load_features(cfg, corpus, labels, store_root(cfg, corpus), log, progress)
    info = {"label_set": describe(label_set), "corpora": {"train": corpus.name}, "notes": notes}
    if d.test_manifest:
        test = Corpus.read(d.test_manifest)
        check_audio(cfg, test, d.test_manifest)
        refuse_shared_recordings(corpus, test, d.test_manifest)
        test, test_labels = map_labels(test, label_set, d.test_manifest)
        root = Path(d.test_store) if d.test_store else Path("features") / test.name
        test, test_items, test_labels = load_features(cfg, test, test_labels, root, log, progress)
        corpus, items, labels = append_test_corpus(corpus, items, labels, test, test_items, test_labels)
        info["corpora"]["test"] = test.name
    return LabelledData(corpus, items, labels, label_set.classes, info)


def check_audio(cfg: ExperimentConfig, corpus: Corpus, source=None) -> None:
    """A config that reads audio (data.acoustic) refuses text-only utterances before any work:
    how many lack audio, and the first of them."""
    if cfg.data.acoustic is None:
        return
    silent = [u.id for u in corpus if not u.audio]
    if silent:
        raise DataError(source, f"{len(silent)} of {len(corpus)} utterance(s) have no audio (text-only rows; "
                                f"first: {silent[0]}), but model {cfg.model_name!r} reads audio "
                                f"(data.acoustic={cfg.data.acoustic}): give them a path, or train a lexical model "
                                "(B-LEX, lstm-attn-semantic) with data.acoustic=null")


def refuse_shared_recordings(train: Corpus, test: Corpus, source) -> None:
    """A cross-corpus test must not hold recordings the training corpus holds (the same file and
    span): that would test on training data. Speaker names are not compared: two corpora may
    reuse ids like "spk1" for different people."""
    def key(u):
        return (os.path.realpath(u.audio), u.start, u.end) if u.audio else None

    seen = {key(u): u.id for u in train if u.audio}
    shared = [(u.id, seen[key(u)]) for u in test if u.audio and key(u) in seen]
    if shared:
        test_id, train_id = shared[0]
        raise DataError(source, f"{len(shared)} test recording(s) are also in the training corpus (first: "
                                f"{test_id!r} = training {train_id!r}); a cross-corpus test needs another corpus")


def append_test_corpus(corpus: Corpus, items: list, labels: np.ndarray, test: Corpus, test_items: list,
                       test_labels: np.ndarray) -> tuple[Corpus, list, np.ndarray]:
    """The training corpus followed by the test corpus, whose ids and speakers (and sessions) are
    prefixed with its name, so that neither can collide with the training corpus's."""
    prefix = f"{test.name}/"
    moved = [replace(u, id=prefix + u.id, speaker=prefix + u.speaker,
                     session=None if u.session is None else prefix + u.session,
                     meta={**u.meta, "cross_corpus": "test"}) for u in test]
    moved_items = [replace(it, id=prefix + it.id) for it in test_items]
    joined = Corpus([*corpus, *moved], name=corpus.name)
    return joined, [*items, *moved_items], np.concatenate([labels, test_labels]).astype(np.int64)


def load_features(cfg: ExperimentConfig, corpus: Corpus, labels: np.ndarray, root: Path,
                  log: Callable[[str], None] = print, progress: bool | None = None
                  ) -> tuple[Corpus, list, np.ndarray]:
    """Extract what is missing into the store at `root`, then load the features of `corpus`
    (in its order); utterances without features are left out, and said so."""
    from emofuse.features.store import FeatureStore

    d = cfg.data
    store = FeatureStore(root, asr=d.asr)
    wanted = [f for f in (d.acoustic, d.words) if f]
    if not wanted:
        raise DataError(None, "the config names no features (data.acoustic and data.words are both null)")
    report = store.extract(corpus, wanted, align=d.align, workers=d.workers, device=d.device,
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
    return corpus, items, labels
