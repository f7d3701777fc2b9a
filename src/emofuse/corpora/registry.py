"""`load_corpus(kind, path)`: the one entry point the CLI and experiments use for corpora."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from emofuse.corpora.common import PreparedCorpus, Progress, Scan
from emofuse.corpora.iemocap import load_iemocap
from emofuse.corpora.labels import get_label_set
from emofuse.corpora.manifest import load_manifest
from emofuse.corpora.meld import load_meld
from emofuse.corpora.mosei import load_mosei
from emofuse.corpora.ravdess import load_ravdess
from emofuse.errors import ConfigError


@dataclass(frozen=True)
class CorpusKind:
    loader: Callable[..., PreparedCorpus]  # loader(path, scan, **options)
    default_label_set: str | None  # None: labels as given
    summary: str


CORPUS_KINDS: dict[str, CorpusKind] = {
    "ravdess": CorpusKind(load_ravdess, "ravdess8", "RAVDESS speech: ROOT/Actor_XX/*.wav|flac, labels from file names"),
    "iemocap": CorpusKind(load_iemocap, "iemocap4", "IEMOCAP release: SessionN/{dialog,sentences}, word timings from .wdseg"),
    "mosei": CorpusKind(load_mosei, "mosei6", "CMU-MOSEI raw: WAV_16000 per video, segmented transcripts, label CSV/.csd"),
    "meld": CorpusKind(load_meld, "meld7", "MELD CSVs (+ dia{D}_utt{U}.mp4 clips when present)"),
    "manifest": CorpusKind(load_manifest, None, "CSV/JSONL with path,label,speaker[,transcript,start,end,session]"),
}


def corpus_kinds() -> list[str]:
    return list(CORPUS_KINDS)


def load_corpus(
    kind: str,
    path: str | Path,
    label_set: str | None = None,
    *,
    strict: bool = False,
    progress: Progress | None = None,
    **options,
) -> PreparedCorpus:
    """Load a corpus folder (or manifest file) into Utterances.

    `label_set` names a set from `corpora.labels` (default: the corpus's own, see
    CORPUS_KINDS). Files that cannot be used are listed in `.skipped`; labels the set
    excludes are counted in `.excluded`. `strict` raises at the first problem instead.
    `options` go to the loader (e.g. mosei: labels=..., ties="drop"|"priority").
    """
    try:
        entry = CORPUS_KINDS[kind]
    except KeyError:
        raise ConfigError(f"unknown corpus {kind!r}; known: {', '.join(CORPUS_KINDS)}") from None
    name = label_set or entry.default_label_set
    labels = get_label_set(name) if name else None
    return entry.loader(path, Scan(labels, strict, progress), **options)
