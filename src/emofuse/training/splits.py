"""Cross-validation folds that keep speakers apart (pure numpy / scikit-learn, no torch).

Protocols (`make_folds(corpus, protocol)`):
  - "speaker-kfold": k folds grouped by speaker, label-stratified where the speakers allow
    (scikit-learn's StratifiedGroupKFold); the 5-fold CV of the FG_CME paper (Li et al. 2021).
  - "loso-session" / "loso-speaker": leave one session (or speaker) out.
  - "aguilar": Aguilar et al. (2019): for each session, its speakers are split into two
    halves A and B; one fold validates on A and tests on B, the next swaps them; training
    is the other sessions. 10 folds on IEMOCAP (5 sessions x 2 speakers).
  - "official": the corpus's own split in `meta["split"]` (train / dev / test), e.g. MELD.
    MELD's characters recur across its splits, so this one protocol is not speaker-exclusive.
  - "cross-corpus": one fold: train and validate on the training corpus, test on another
    corpus (the utterances `training.corpus` marked `meta["cross_corpus"] = "test"`);
    validation speakers come from the training corpus only.

Model selection never sees test speakers: where a protocol has no validation part of its
own, `carve_validation` draws whole speakers from the training part (gender-balanced when
every training utterance has `meta["gender"]`). This avoids the pitfall of the FG_CME
public code, which picked the best epoch on the test fold.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from emofuse.corpora.base import Utterance
from emofuse.errors import ConfigError

PROTOCOLS = ("speaker-kfold", "loso-session", "loso-speaker", "aguilar", "official", "cross-corpus")
_SPLIT_NAMES = {"train": "train", "dev": "dev", "valid": "dev", "validation": "dev", "val": "dev", "test": "test"}


@dataclass(frozen=True)
class Fold:
    """Index arrays into the corpus (int64, sorted) for one train / validation / test split."""

    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    name: str

    def to_json(self, corpus: Sequence[Utterance]) -> dict:
        """The fold as utterance ids, for a run directory."""
        ids = lambda part: [corpus[int(i)].id for i in part]  # noqa: E731
        return {"index": self.index, "name": self.name, "train": ids(self.train), "val": ids(self.val), "test": ids(self.test)}


def _idx(values) -> np.ndarray:
    return np.array(sorted(int(v) for v in values), dtype=np.int64)


def _utterances(corpus) -> list[Utterance]:
    utterances = list(corpus)
    if not utterances:
        raise ConfigError("cannot split an empty corpus")
    return utterances


def _speakers_in_one_session(utterances: list[Utterance]) -> None:
    sessions_of: dict[str, set] = defaultdict(set)
    for u in utterances:
        sessions_of[u.speaker].add(u.session)
    crossing = sorted(s for s, sessions in sessions_of.items() if len(sessions) > 1)
    if crossing:
        raise ConfigError(
            f"speakers {crossing[:5]} appear in several sessions, so session folds would share speakers; "
            "use 'loso-speaker' or 'speaker-kfold'"
        )


def _groups(utterances: list[Utterance], by: str) -> list[str]:
    if by == "speaker":
        return [u.speaker for u in utterances]
    if by == "session":
        missing = [u.id for u in utterances if u.session is None]
        if missing:
            raise ConfigError(
                f"{len(missing)} utterance(s) have no session (e.g. {missing[0]!r}); "
                "use 'loso-speaker' or 'speaker-kfold' for this corpus"
            )
        _speakers_in_one_session(utterances)
        return [u.session for u in utterances]
    raise ConfigError(f"leave-one-out by {by!r}: choose 'session' or 'speaker'")


def leave_one_group_out(corpus, by: str = "session") -> list[Fold]:
    """One fold per session (or speaker): it is the test part, the rest is training."""
    utterances = _utterances(corpus)
    groups = np.array(_groups(utterances, by))
    names = sorted(set(groups.tolist()))
    if len(names) < 2:
        raise ConfigError(f"leave-one-{by}-out needs at least 2 {by}s, the corpus has {len(names)}")
    folds = []
    for i, name in enumerate(names):
        test = np.flatnonzero(groups == name)
        train = np.flatnonzero(groups != name)
        folds.append(Fold(i, _idx(train), _idx([]), _idx(test), f"{by} {name} out"))
    return folds


def speaker_kfold(corpus, k: int = 5, seed: int = 0) -> list[Fold]:
    """k speaker-exclusive folds, label-stratified where the speakers allow."""
    from sklearn.model_selection import StratifiedGroupKFold

    utterances = _utterances(corpus)
    speakers = np.array([u.speaker for u in utterances])
    n_speakers = len(set(speakers.tolist()))
    if k < 2:
        raise ConfigError(f"speaker k-fold needs k >= 2, got {k}")
    if k > n_speakers:
        raise ConfigError(f"speaker k-fold with k={k} needs at least {k} speakers, the corpus has {n_speakers}")
    labels = np.array([u.label for u in utterances])
    if max(np.unique(labels, return_counts=True)[1]) < k:
        # No class has k members, so stratifying is impossible: plain grouped folds.
        labels = np.zeros(len(labels), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = []
    with warnings.catch_warnings():
        # "The least populated class has only n members": stratification is best effort.
        warnings.simplefilter("ignore", UserWarning)
        for i, (train, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups=speakers)):
            held_out = sorted(set(speakers[test].tolist()))
            folds.append(Fold(i, _idx(train), _idx([]), _idx(test), f"fold {i + 1}/{k}: test {', '.join(held_out)}"))
    return folds


def aguilar_protocol(corpus) -> list[Fold]:
    """Two folds per session: its speakers halved into A and B, (val=A, test=B) and (val=B, test=A).

    Aguilar et al. (2019), Sec. 4: train on four IEMOCAP sessions, split the fifth by
    speaker into validation and test, swap, and average.
    """
    utterances = _utterances(corpus)
    sessions = np.array(_groups(utterances, "session"))
    speakers = np.array([u.speaker for u in utterances])
    folds: list[Fold] = []
    for session in sorted(set(sessions.tolist())):
        in_session = sessions == session
        members = sorted(set(speakers[in_session].tolist()))
        if len(members) < 2:
            raise ConfigError(f"the Aguilar protocol splits each session by speaker; session {session!r} has only {members}")
        half = len(members) // 2
        first, second = members[:half], members[half:]
        train = np.flatnonzero(~in_session)
        for val_speakers, test_speakers in ((first, second), (second, first)):
            val = np.flatnonzero(np.isin(speakers, val_speakers))
            test = np.flatnonzero(np.isin(speakers, test_speakers))
            name = f"session {session}: val {', '.join(val_speakers)} / test {', '.join(test_speakers)}"
            folds.append(Fold(len(folds), _idx(train), _idx(val), _idx(test), name))
    return folds


def official_split(corpus) -> list[Fold]:
    """The corpus's own train / dev / test split from `meta["split"]` (MELD, MOSEI folds)."""
    utterances = _utterances(corpus)
    parts: dict[str, list[int]] = {"train": [], "dev": [], "test": []}
    for i, u in enumerate(utterances):
        split = str(u.meta.get("split", "")).strip().lower()
        if split not in _SPLIT_NAMES:
            raise ConfigError(
                f"utterance {u.id!r} has no official split (meta['split'] = {u.meta.get('split')!r}); "
                "this corpus needs another protocol, e.g. 'speaker-kfold'"
            )
        parts[_SPLIT_NAMES[split]].append(i)
    if not parts["train"] or not parts["test"]:
        raise ConfigError("the official split needs both train and test utterances")
    return [Fold(0, _idx(parts["train"]), _idx(parts["dev"]), _idx(parts["test"]), "official train/dev/test")]


def is_test_corpus(u: Utterance) -> bool:
    """An utterance of the cross-corpus protocol's test corpus (training.corpus marks them)."""
    return u.meta.get("cross_corpus") == "test"


def cross_corpus_split(corpus) -> list[Fold]:
    """One fold: the training corpus is the training part, the test corpus the test part."""
    utterances = _utterances(corpus)
    test = [i for i, u in enumerate(utterances) if is_test_corpus(u)]
    train = [i for i, u in enumerate(utterances) if not is_test_corpus(u)]
    if not test:
        raise ConfigError("protocol cross-corpus: no test-corpus utterance (set data.test_manifest)")
    if not train:
        raise ConfigError("protocol cross-corpus: no training-corpus utterance")
    shared = {utterances[i].speaker for i in train} & {utterances[i].speaker for i in test}
    if shared:
        raise ConfigError(f"protocol cross-corpus: speakers {sorted(shared)[:3]} are in both corpora")
    test_name = utterances[test[0]].id.split("/", 1)[0]
    return [Fold(0, _idx(train), _idx([]), _idx(test), f"cross-corpus: {corpus.name} -> {test_name}")]


def carve_validation(
    corpus,
    train_idx,
    fraction: float | None = 0.1,
    n_speakers: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split a training part into (train, val) by whole speakers drawn from it only.

    `n_speakers` speakers, or round(fraction x training speakers), at least 1, always
    leaving one for training. When every training utterance has `meta["gender"]`, the
    speakers are drawn alternately from each gender (RAVDESS, IEMOCAP).
    """
    utterances = list(corpus)
    train_idx = np.asarray(train_idx, dtype=np.int64)
    speakers = sorted({utterances[i].speaker for i in train_idx})
    if n_speakers is None:
        if fraction is None or not 0 < fraction < 1:
            raise ConfigError(f"validation fraction must be between 0 and 1, got {fraction}")
        n_speakers = max(1, int(round(fraction * len(speakers))))
    if not 1 <= n_speakers < len(speakers):
        raise ConfigError(
            f"cannot take {n_speakers} validation speaker(s) from {len(speakers)} training speaker(s): "
            "at least one must stay for training"
        )
    rng = np.random.default_rng(seed)
    gender_of = {}
    for i in train_idx:
        u = utterances[i]
        gender_of.setdefault(u.speaker, set()).add(u.meta.get("gender"))
    if all(len(g) == 1 and None not in g for g in gender_of.values()):
        pools: dict[str, list[str]] = defaultdict(list)
        for speaker in speakers:
            pools[next(iter(gender_of[speaker]))].append(speaker)
        order = sorted(pools)
        for pool in pools.values():
            rng.shuffle(pool)
        start = int(rng.integers(len(order)))
        chosen: list[str] = []
        turn = start
        while len(chosen) < n_speakers:
            pool = pools[order[turn % len(order)]]
            if pool:
                chosen.append(pool.pop())
            turn += 1
    else:
        chosen = list(rng.choice(np.array(speakers, dtype=object), size=n_speakers, replace=False))
    chosen_set = set(chosen)
    is_val = np.array([utterances[i].speaker in chosen_set for i in train_idx], dtype=bool)
    return _idx(train_idx[~is_val]), _idx(train_idx[is_val])


def make_folds(
    corpus,
    protocol: str,
    *,
    k: int = 5,
    seed: int = 0,
    val_fraction: float | None = 0.1,
    val_speakers: int | None = None,
) -> list[Fold]:
    """Folds for a named protocol; protocols without their own validation part get one carved
    from the training speakers (`val_fraction=0` and no `val_speakers`: no validation)."""
    if protocol == "speaker-kfold":
        folds = speaker_kfold(corpus, k=k, seed=seed)
    elif protocol in ("loso-session", "loso-speaker"):
        folds = leave_one_group_out(corpus, by=protocol.split("-", 1)[1])
    elif protocol == "aguilar":
        return aguilar_protocol(corpus)
    elif protocol == "official":
        return official_split(corpus)
    elif protocol == "cross-corpus":
        folds = cross_corpus_split(corpus)  # validation is carved below from the training corpus
    else:
        raise ConfigError(f"unknown split protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if not val_speakers and not val_fraction:
        return folds
    carved = []
    for fold in folds:
        train, val = carve_validation(corpus, fold.train, val_fraction, val_speakers, seed=seed + fold.index)
        carved.append(Fold(fold.index, train, val, fold.test, fold.name))
    return carved


def shared_speakers(corpus, fold: Fold) -> set[str]:
    """Speakers found in more than one part of `fold` (empty for every protocol but 'official')."""
    utterances = list(corpus)
    parts = [{utterances[i].speaker for i in part} for part in (fold.train, fold.val, fold.test)]
    return (parts[0] & parts[1]) | (parts[0] & parts[2]) | (parts[1] & parts[2])
