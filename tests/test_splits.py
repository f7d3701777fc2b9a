"""Folds: speaker-exclusive, every utterance tested once, validation from training speakers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emofuse.corpora import Corpus, Utterance, load_corpus
from emofuse.errors import ConfigError
from emofuse.training.splits import (
    PROTOCOLS,
    Fold,
    aguilar_protocol,
    carve_validation,
    leave_one_group_out,
    make_folds,
    official_split,
    shared_speakers,
    speaker_kfold,
)

LABELS = ("angry", "happy", "neutral", "sad")


def build_corpus(layout: list[list[int]], seed: int = 0, genders: bool = True) -> Corpus:
    """layout[s][p] = number of utterances of speaker p in session s."""
    rng = np.random.default_rng(seed)
    utterances = []
    for s, speakers in enumerate(layout):
        for p, n in enumerate(speakers):
            speaker = f"S{s}P{p}"
            meta = {"gender": "female" if p % 2 == 0 else "male"} if genders else {}
            for i in range(n):
                utterances.append(
                    Utterance(
                        id=f"{speaker}_{i}", audio=None, speaker=speaker,
                        label=LABELS[int(rng.integers(len(LABELS)))], original_label="x",
                        session=f"Ses{s}", meta=dict(meta),
                    )
                )
    return Corpus(utterances, name="synthetic")


def iemocap_like() -> Corpus:
    return build_corpus([[12, 10]] * 5)


corpora = st.builds(
    build_corpus,
    st.lists(st.lists(st.integers(1, 6), min_size=2, max_size=4), min_size=2, max_size=5),
    st.integers(0, 10_000),
    st.booleans(),
)


def assert_speaker_exclusive_and_tested_once(corpus: Corpus, folds: list[Fold]) -> None:
    tested = Counter()
    for fold in folds:
        assert not shared_speakers(corpus, fold), fold.name
        assert len(fold.test) > 0 and len(fold.train) > 0
        parts = [set(fold.train.tolist()), set(fold.val.tolist()), set(fold.test.tolist())]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        tested.update(fold.test.tolist())
    assert tested == Counter(range(len(corpus)))  # every utterance tested exactly once


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora, st.sampled_from(["speaker-kfold", "loso-session", "loso-speaker", "aguilar"]), st.integers(0, 99))
def test_folds_never_share_a_speaker_and_test_every_utterance_once(corpus, protocol, seed):
    n_speakers = len(set(corpus.speakers))
    folds = make_folds(corpus, protocol, k=min(3, n_speakers), seed=seed, val_speakers=None, val_fraction=0.3)
    assert_speaker_exclusive_and_tested_once(corpus, folds)
    for fold in folds:
        assert len(fold.val) > 0  # validation always exists, so no test-set model selection
        covered = set(fold.train.tolist()) | set(fold.val.tolist()) | set(fold.test.tolist())
        if protocol != "aguilar":
            assert covered == set(range(len(corpus)))


@settings(max_examples=40, deadline=None)
@given(corpora, st.integers(0, 99), st.integers(1, 3))
def test_validation_is_carved_from_training_speakers_only(corpus, seed, n_val):
    fold = leave_one_group_out(corpus, by="session")[0]
    train_speakers = {corpus[i].speaker for i in fold.train}
    if n_val >= len(train_speakers):
        with pytest.raises(ConfigError, match="at least one must stay"):
            carve_validation(corpus, fold.train, n_speakers=n_val, seed=seed)
        return
    train, val = carve_validation(corpus, fold.train, n_speakers=n_val, seed=seed)
    val_speakers = {corpus[i].speaker for i in val}
    assert len(val_speakers) == n_val and val_speakers <= train_speakers
    assert not val_speakers & {corpus[i].speaker for i in train}
    assert sorted(train.tolist() + val.tolist()) == fold.train.tolist()


def test_aguilar_protocol_gives_ten_folds_on_iemocap_like_sessions():
    corpus = iemocap_like()
    folds = aguilar_protocol(corpus)
    assert len(folds) == 10
    first, second = folds[0], folds[1]
    speakers = lambda part: {corpus[i].speaker for i in part}  # noqa: E731
    assert speakers(first.val) == speakers(second.test) == {"S0P0"}
    assert speakers(first.test) == speakers(second.val) == {"S0P1"}
    assert {corpus[i].session for i in first.train} == {"Ses1", "Ses2", "Ses3", "Ses4"}
    assert_speaker_exclusive_and_tested_once(corpus, folds)


def test_validation_is_gender_balanced_when_genders_are_known():
    corpus = build_corpus([[5] * 10])  # one session, speakers alternate female / male
    fold = leave_one_group_out(corpus, by="speaker")[0]
    for seed in range(5):
        _, val = carve_validation(corpus, fold.train, n_speakers=2, seed=seed)
        assert sorted({corpus[i].meta["gender"] for i in val}) == ["female", "male"]


def test_speaker_kfold_is_label_stratified_when_speakers_allow():
    # 20 speakers with the same label mix: every test fold has every label.
    corpus = build_corpus([[8] * 20], seed=3)
    for fold in speaker_kfold(corpus, k=5, seed=0):
        assert {corpus[i].label for i in fold.test} == set(corpus.labels)


def test_loso_session_needs_sessions_and_speakers_inside_one_session():
    no_sessions = Corpus([Utterance(f"u{i}", None, f"s{i}", "sad", "sad") for i in range(4)])
    with pytest.raises(ConfigError, match="no session"):
        leave_one_group_out(no_sessions, by="session")
    crossing = Corpus([Utterance(f"u{i}", None, "same", "sad", "sad", session=f"d{i}") for i in range(3)])
    with pytest.raises(ConfigError, match="several sessions"):
        make_folds(crossing, "loso-session")


def test_too_many_folds_for_the_speakers_is_an_error():
    with pytest.raises(ConfigError, match="needs at least 9 speakers"):
        speaker_kfold(build_corpus([[2, 2, 2]]), k=9)


def test_unknown_protocol_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        make_folds(iemocap_like(), "random")
    assert all(name in str(info.value) for name in PROTOCOLS)


def test_official_split_reads_meta_split():
    utterances = [
        Utterance(f"{split}_{i}", None, f"char{i}", "joy", "joy", meta={"split": split})
        for split in ("train", "dev", "test") for i in range(3)
    ]
    [fold] = make_folds(Corpus(utterances), "official")
    assert fold.train.tolist() == [0, 1, 2] and fold.val.tolist() == [3, 4, 5] and fold.test.tolist() == [6, 7, 8]
    with pytest.raises(ConfigError, match="no official split"):
        official_split(iemocap_like())


def test_no_validation_when_asked_for_none():
    folds = make_folds(iemocap_like(), "loso-session", val_fraction=0)
    assert all(len(f.val) == 0 for f in folds)


def test_fold_to_json_lists_utterance_ids():
    corpus = iemocap_like()
    record = aguilar_protocol(corpus)[0].to_json(corpus)
    assert record["val"][0] == "S0P0_0" and len(record["train"]) == 4 * 22


@pytest.mark.data
def test_ravdess_five_folds_hold_four_or_five_actors_and_validate_on_training_actors(ravdess_root):
    corpus = load_corpus("ravdess", ravdess_root, "ravdess4")
    folds = make_folds(corpus, "speaker-kfold", k=5, seed=0)
    assert_speaker_exclusive_and_tested_once(corpus, folds)
    for fold in folds:
        test_actors = {corpus[i].speaker for i in fold.test}
        val_actors = {corpus[i].speaker for i in fold.val}
        assert len(test_actors) in (4, 5) and len(val_actors) == 2
        assert {corpus[i].meta["gender"] for i in fold.val} == {"female", "male"}
