"""Length-bucketed batches, truncation only when asked, label mapping, DDP sharding."""

from __future__ import annotations

import numpy as np
import pytest

from emofuse.corpora.base import Corpus, Utterance
from emofuse.corpora.labels import get_label_set
from emofuse.errors import DataError
from emofuse.features.batch import UtteranceFeatures
from emofuse.features.normalise import Normalisation, Normaliser
from emofuse.features.spans import trim, truncate
from emofuse.training.data import BucketBatchSampler, Collator, LabelledData, class_weights, map_labels


def test_bucketed_batches_cover_every_index_once_and_pad_less_than_random_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 700, 400)
    sampler = BucketBatchSampler(lengths, batch_size=16, shuffle=True, seed=1, chunk=10)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(400))
    assert len(batches) == len(sampler) == 25
    padding = sum(len(b) * lengths[b].max() - lengths[b].sum() for b in batches)
    random = [rng.permutation(400)[i:i + 16] for i in range(0, 400, 16)]
    random_padding = sum(len(b) * lengths[b].max() - lengths[b].sum() for b in random)
    assert padding < 0.3 * random_padding


def test_shuffle_depends_on_seed_and_epoch_and_is_reproducible():
    lengths = np.arange(100)
    a = BucketBatchSampler(lengths, 8, shuffle=True, seed=0, chunk=2)
    b = BucketBatchSampler(lengths, 8, shuffle=True, seed=0, chunk=2)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_evaluation_batches_are_sorted_and_not_shuffled():
    sampler = BucketBatchSampler([3, 9, 1, 7], 2, shuffle=False)
    assert list(sampler) == [[1, 3], [0, 2]]


def test_ddp_shards_have_equal_batch_counts_and_cover_every_batch():
    lengths = np.arange(50)
    shards = [list(BucketBatchSampler(lengths, 8, shuffle=True, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 4  # 7 batches padded to 8
    seen = {i for shard in shards for b in shard for i in b}
    assert seen == set(range(50))


def _item(uid, frames=10, words=4):
    return UtteranceFeatures(
        id=uid, acoustic=np.ones((frames, 3), np.float32), speech_mask=np.ones(frames, bool),
        words=[f"w{i}" for i in range(words)],
        word_times=np.array([[0.02 * i, 0.02 * i + 0.02] for i in range(words)]),
        word_vectors=np.ones((words, 5), np.float32),
    )


def test_nothing_is_truncated_unless_the_config_says_so():
    item = _item("a", frames=900, words=40)
    assert truncate(item, None, None) is item
    cut = truncate(item, 700, 30)
    assert cut.acoustic.shape == (700, 3) and cut.speech_mask.shape == (700,)
    assert len(cut.words) == cut.word_vectors.shape[0] == cut.word_times.shape[0] == 30


def test_words_after_the_kept_frames_are_dropped_with_them():
    item = _item("a", frames=10, words=8)  # words start every 2 frames
    cut = truncate(item, 5, None)
    assert len(cut.words) == 3  # starting at frames 0, 2, 4


def test_trim_keeps_the_speech_span_and_a_margin_and_moves_the_words_with_it():
    frames = 100
    item = UtteranceFeatures(
        id="a", acoustic=np.arange(frames * 2, dtype=np.float32).reshape(frames, 2), acoustic_hop=0.01,
        speech_mask=np.zeros(frames, bool), words=["hi", "there"],
        word_times=np.array([[0.30, 0.45], [0.45, 0.70]], np.float32), word_vectors=np.ones((2, 5), np.float32),
    )
    item.speech_mask[30:70] = True  # the words' frames
    assert trim(item, None) is item
    cut = trim(item, 0.05)  # 5 frames either side
    assert cut.frame_offset == 25 and cut.acoustic.shape == (50, 2) and cut.speech_mask.shape == (50,)
    np.testing.assert_array_equal(cut.acoustic, item.acoustic[25:75])
    np.testing.assert_allclose(cut.word_times, [[0.05, 0.20], [0.20, 0.45]], atol=1e-6)
    assert cut.speech_mask[:5].sum() == 0 and cut.speech_mask[5:45].all() and cut.words == item.words
    assert trim(item, 0.5).acoustic.shape == (100, 2)  # the margin never reaches past the recording
    silent = UtteranceFeatures(id="s", acoustic=np.ones((20, 2), np.float32), speech_mask=np.zeros(20, bool))
    assert trim(silent, 0.1) is silent  # no speech found: every frame stays


def test_collator_normalises_and_pads_with_masks():
    data = LabelledData(
        Corpus([Utterance(id=u, audio=None, speaker="s", label="sad", original_label="sad") for u in "ab"]),
        [_item("a", 4), _item("b", 6)], np.array([3, 3]), ("angry", "happy", "neutral", "sad"),
    )
    norm = Normalisation("fold", Normaliser(np.ones(3), np.full(3, 2.0)))
    batch = Collator(data, norm)([1, 0])
    assert batch.acoustic.shape == (2, 6, 3) and batch.acoustic_mask.sum().item() == 10
    assert float(batch.acoustic[1, :4].abs().max()) == 0.0  # (1 - 1) / 2
    assert batch.ids == ["b", "a"] and batch.labels.tolist() == [3, 3]


def test_labels_are_mapped_through_the_label_set_and_excluded_ones_dropped():
    corpus = Corpus([
        Utterance(id="1", audio=None, speaker="s", label="calm", original_label="calm"),
        Utterance(id="2", audio=None, speaker="s", label="angry", original_label="angry"),
        Utterance(id="3", audio=None, speaker="s", label="exc", original_label="exc"),
    ])
    with pytest.raises(DataError, match="utterance '3'.*unknown label 'exc'"):
        map_labels(corpus, get_label_set("ravdess4"))
    kept, labels = map_labels(corpus.subset([0, 1]), get_label_set("ravdess4"))
    assert [u.id for u in kept] == ["2"] and labels.tolist() == [0]
    kept, labels = map_labels(corpus.subset([1, 2]), get_label_set("iemocap4"))
    assert labels.tolist() == [0, 1]  # excited merged into happy


def test_class_weights_are_inverse_frequency_and_zero_for_absent_classes():
    assert np.allclose(class_weights(np.array([6, 2, 0, 4])), [12 / 18, 12 / 6, 0.0, 12 / 12])
