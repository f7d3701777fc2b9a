"""Training data: labelled UtteranceFeatures, length-bucketed batches, fold-local normalisation.

The engine works on a `LabelledData` (features + class indices + the corpus records) and
never on files, so tests can hand it synthetic features. `load_labelled` is the thin
adapter that reads a corpus (manifest or folder), maps its labels through the config's label
set and asks the feature store for the configured features (extracting them first when they
are not cached).

Per fold, the acoustic normalisation (`emofuse.features.normalise.Normalisation`) is fitted
as `data.normalise` says (the papers' way: on the training part only) and applied
lazily in `Collator`, so the stored features are never copied. Batches are length-bucketed: indices are shuffled, cut into
chunks of `bucket_chunk` batches, sorted by length inside each chunk and cut into batches
whose order is shuffled again, so padding stays small without a fixed batch order. Nothing
is truncated unless `data.max_frames` / `data.max_words` say so (the papers: 700 / 30).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset, Sampler

from emofuse.corpora.base import Corpus, Utterance
from emofuse.errors import DataError, LabelError
from emofuse.features.batch import Batch, UtteranceFeatures, collate
from emofuse.features.normalise import Normalisation
from emofuse.features.spans import truncate, word_count


@dataclass
class LabelledData:
    """Features aligned one-to-one with the corpus's utterances, labels as class indices."""

    corpus: Corpus
    items: list[UtteranceFeatures]
    labels: np.ndarray  # (N,) int64 indices into `classes`
    classes: tuple[str, ...]
    # what the run directory keeps about the labels (training/checks.py): the resolved set
    # {name, classes, map}, the corpora read ({"train": name, "test": name}) and notes such as
    # the classes `auto` dropped
    label_info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.corpus) == len(self.items) == len(self.labels)):
            raise DataError(None, f"{len(self.corpus)} utterances, {len(self.items)} feature items and "
                                  f"{len(self.labels)} labels: they must match one to one")
        for u, it in zip(self.corpus, self.items):
            if u.id != it.id:
                raise DataError(None, f"feature item {it.id!r} is out of step with utterance {u.id!r}")

    def __len__(self) -> int:
        return len(self.items)

    def class_counts(self, indices: Sequence[int]) -> np.ndarray:
        return np.bincount(self.labels[np.asarray(indices, dtype=np.int64)], minlength=len(self.classes))


def map_labels(corpus: Corpus, label_set, source=None) -> tuple[Corpus, np.ndarray]:
    """Keep the utterances whose label the set uses; return them and their class indices.

    The original corpus label is mapped through the set when the set names it (so a ravdess8
    manifest serves a ravdess4 experiment, and `label_map: {exc: null}` leaves out the excited
    utterances a prepared iemocap4 manifest already calls happy); a label that the set does not
    name but that is one of its classes is kept as it is.
    An unknown label is a DataError naming `source` (the manifest or folder), the utterance,
    the label and the labels the set knows.
    """
    kept: list[Utterance] = []
    labels: list[int] = []
    for u in corpus:
        original = str(u.original_label if u.original_label is not None else "").strip().lower()
        if original in label_set.mapping:
            label = label_set.mapping[original]
        elif u.label in label_set.classes:
            label = u.label
        else:
            try:
                label = label_set.map(u.original_label)
            except LabelError as exc:
                raise DataError(source, f"corpus {corpus.name!r}, utterance {u.id!r}: {exc}") from None
        if label is None:
            continue
        kept.append(u)
        labels.append(label_set.index(label))
    if not kept:
        raise DataError(source, f"corpus {corpus.name!r}: no utterance has a label of set {label_set.name!r} "
                              f"({', '.join(label_set.classes)})")
    return Corpus(kept, name=corpus.name), np.asarray(labels, dtype=np.int64)


# ---------------------------------------------------------------------------------------
# Per-item preparation


def item_length(item: UtteranceFeatures) -> int:
    """What padding is paid for: frames when there is audio, else words."""
    if item.acoustic is not None:
        return len(item.acoustic)
    return word_count(item)


# ---------------------------------------------------------------------------------------
# Batching


class IndexDataset(Dataset):
    """Yields indices; the Collator builds the padded Batch from the items they name."""

    def __init__(self, indices: Sequence[int]):
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> int:
        return int(self.indices[i])


class Collator:
    """Indices -> Batch: truncation, fold normalisation and padding (emofuse.features.batch.collate)."""

    def __init__(self, data: LabelledData, normaliser: Normalisation | None = None, max_frames: int | None = None,
                 max_words: int | None = None, vocab=None, augment=None):
        self.data = data
        self.normaliser = normaliser
        self.max_frames = max_frames
        self.max_words = max_words
        self.vocab = vocab
        self.augment = augment  # training only: a callable on the normalised (T, D) frames

    def with_augment(self, augment) -> "Collator":
        """The same collator, masking frames with `augment` (emofuse.training.augment)."""
        return Collator(self.data, self.normaliser, self.max_frames, self.max_words, self.vocab, augment)

    def item(self, index: int) -> UtteranceFeatures:
        it = truncate(self.data.items[index], self.max_frames, self.max_words)
        if self.normaliser is not None and it.acoustic is not None:
            it = replace(it, acoustic=self.normaliser.apply(it.acoustic, index=index))
        if self.augment is not None and it.acoustic is not None:
            it = replace(it, acoustic=self.augment(it.acoustic))
        return it

    def __call__(self, indices: Sequence[int]) -> Batch:
        items = [self.item(int(i)) for i in indices]
        labels = self.data.labels[np.asarray(indices, dtype=np.int64)].tolist()
        token_ids = None
        if self.vocab is not None:
            token_ids = [self.vocab.encode(list(it.words or [])) for it in items]
        return collate(items, labels, token_ids=token_ids)


class BucketBatchSampler(Sampler[list[int]]):
    """Length-bucketed batches of positions 0..N-1 (into the dataset), optionally sharded for DDP.

    shuffle=True: a fresh permutation each epoch (seed + epoch, the same on every rank), cut
    into chunks of `chunk` batches, each chunk sorted by length and cut into batches, then the
    batch order is shuffled. shuffle=False: sorted by length, longest first (evaluation).
    With `num_replicas` > 1 every rank gets the same number of batches (the list is padded by
    repeating its first batches), rank r taking batches r, r + R, ...
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0,
                 chunk: int = 50, num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.chunk = max(1, chunk)
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at each epoch start, so a resumed run replays the same order."""
        self.epoch = epoch

    def all_batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if n == 0:
            return []
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            return [order[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)
        size = self.batch_size * self.chunk
        batches: list[list[int]] = []
        for start in range(0, n, size):
            chunk = order[start:start + size]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.all_batches()
        if self.num_replicas > 1 and batches:
            per_rank = math.ceil(len(batches) / self.num_replicas)
            batches = (batches * self.num_replicas)[: per_rank * self.num_replicas]
            batches = batches[self.rank::self.num_replicas]
        return iter(batches)

    def __len__(self) -> int:
        total = math.ceil(len(self.lengths) / self.batch_size) if len(self.lengths) else 0
        return math.ceil(total / self.num_replicas) if self.num_replicas > 1 else total


def lengths_of(data: LabelledData, indices: Sequence[int], max_frames: int | None, max_words: int | None) -> np.ndarray:
    out = []
    for i in indices:
        item = data.items[int(i)]
        n = item_length(item)
        cap = max_frames if item.acoustic is not None else max_words
        out.append(min(n, cap) if cap else n)
    return np.asarray(out, dtype=np.int64)


def class_weights(counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights n / (C * n_c), as sklearn's 'balanced'; absent classes get 0."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)
