"""Frame features (shapes, hop, what they measure), speech mask, z-normalisation, vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emofuse.errors import ConfigError, DataError
from emofuse.features.batch import UtteranceFeatures
from emofuse.features.frames import frame_feature_names, get_frame_feature, speech_mask
from emofuse.features.normalise import Normaliser
from emofuse.features.vocab import Vocabulary
from helpers import tone

DIMS = {"compare_lld": 130, "fbank40": 40, "spectrogram8k": 200, "waveform": 160}


@pytest.mark.parametrize("name", sorted(DIMS))
def test_every_frame_feature_has_its_dimension_and_100_frames_per_second(name):
    feature = get_frame_feature(name)
    assert feature.dim == DIMS[name] and feature.hop == 0.01
    x = feature.extract(tone(2.5))
    assert x.shape == (250, DIMS[name]) and x.dtype == np.float32
    assert abs(len(feature.extract(tone(1.0))) - 100) <= 1


def test_registry_lists_the_four_features_and_rejects_others():
    assert set(frame_feature_names()) == set(DIMS)
    with pytest.raises(ConfigError, match="unknown frame feature 'mfcc'"):
        get_frame_feature("mfcc")


def test_compare_lld_one_pass_equals_the_stock_lld_and_delta_tables():
    import opensmile

    from emofuse.features.frames import _smile

    y = tone(1.2, freq=180.0)
    ours = _smile().process_signal(y, 16000).to_numpy()
    lld = opensmile.Smile(opensmile.FeatureSet.ComParE_2016, opensmile.FeatureLevel.LowLevelDescriptors)
    de = opensmile.Smile(opensmile.FeatureSet.ComParE_2016, opensmile.FeatureLevel.LowLevelDescriptors_Deltas)
    stock_lld = lld.process_signal(y, 16000).to_numpy()
    stock_de = de.process_signal(y, 16000).to_numpy()  # has extra rows at the end of stream
    n = len(stock_lld)
    assert ours.shape == (n, 130) and len(stock_de) >= n
    np.testing.assert_allclose(ours[:, :65], stock_lld, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ours[:, 65:], stock_de[:n], rtol=1e-5, atol=1e-4)


def test_compare_lld_direct_engine_run_equals_process_signal():
    from emofuse.features.frames import _run_smile, _smile

    y = tone(0.9, freq=150.0) * np.linspace(0.2, 1.0, 14400, dtype=np.float32)
    np.testing.assert_array_equal(_run_smile(y), _smile().process_signal(y, 16000).to_numpy(dtype=np.float32))


def test_compare_lld_pitch_follows_the_voice():
    x = get_frame_feature("compare_lld").extract(tone(1.0, freq=200.0))
    f0 = x[20:80, 0]  # F0final_sma, voiced middle frames
    assert np.median(f0) == pytest.approx(200.0, rel=0.05)


def test_fbank40_peaks_in_the_band_of_a_pure_tone():
    low = get_frame_feature("fbank40").extract(tone(0.5, freq=300.0)).mean(0)
    high = get_frame_feature("fbank40").extract(tone(0.5, freq=3000.0)).mean(0)
    assert np.argmax(low) < np.argmax(high)
    assert np.argmax(high) in range(20, 30)  # 3-6 kHz harmonics sit in the upper half of 40 HTK bands


def test_spectrogram8k_bins_are_20hz_wide_up_to_4khz():
    x = get_frame_feature("spectrogram8k").extract(tone(1.0, freq=1000.0))
    assert np.argmax(x[50]) == 50  # 1000 Hz / 20 Hz per bin
    top = get_frame_feature("spectrogram8k").extract(tone(1.0, freq=1500.0))
    assert np.argmax(top[50]) == 75


def test_waveform_frames_are_the_samples_in_order():
    y = tone(0.5)
    x = get_frame_feature("waveform").extract(y)
    np.testing.assert_array_equal(x.reshape(-1), y[: len(x) * 160])


def test_speech_mask_comes_from_word_times_when_there_are_words():
    y = np.concatenate([np.zeros(8000, np.float32), tone(0.5), np.zeros(8000, np.float32)])
    by_words = speech_mask(150, 0.01, np.array([[0.2, 0.4]]), y)
    assert by_words.sum() == 20 and by_words[20:40].all()
    by_energy = speech_mask(150, 0.01, np.zeros((0, 2)), y)
    assert by_energy[55:95].all() and not by_energy[:45].any() and not by_energy[105:].any()
    assert speech_mask(7).all()


def test_normaliser_uses_only_the_statistics_it_was_fitted_on():
    rng = np.random.default_rng(0)
    train = [rng.normal(5.0, 2.0, size=(200, 3)).astype(np.float32) for _ in range(5)]
    test = rng.normal(-5.0, 2.0, size=(100, 3)).astype(np.float32)
    norm = Normaliser.fit(train)
    z = np.concatenate([norm(a) for a in train])
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-3)
    assert norm(test).mean() == pytest.approx(-5.0, abs=0.3)  # test data not pulled to zero


def test_normaliser_travels_as_json_and_keeps_constant_dimensions_finite():
    a = np.array([[1.0, 7.0], [3.0, 7.0]], dtype=np.float32)
    norm = Normaliser.fit([a])
    again = Normaliser.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(again(a), norm(a))
    assert np.all(np.isfinite(norm(a))) and norm(a)[:, 1].tolist() == [0.0, 0.0]
    with pytest.raises(ConfigError, match="no frames"):
        Normaliser.fit([])


def test_normaliser_can_fit_on_speech_frames_of_training_items():
    item = UtteranceFeatures("u", acoustic=np.array([[0.0], [10.0], [10.0]], np.float32),
                             speech_mask=np.array([False, True, True]))
    assert Normaliser.fit_features([item], speech_only=True).mean.tolist() == [10.0]
    assert Normaliser.fit_features([item]).mean[0] == pytest.approx(20.0 / 3)


def test_vocabulary_from_training_words_maps_new_words_to_unknown(tmp_path):
    vocab = Vocabulary.build([["kids", "are", "talking"], ["dogs", "are"]])
    assert vocab.encode(["are", "kids", "cats"]) == [2, vocab.index["kids"], 1]
    assert vocab.tokens[:2] == ["<pad>", "<unk>"] and len(vocab) == 6
    again = Vocabulary.load(vocab.save(tmp_path / "vocab.json"))
    assert again.tokens == vocab.tokens
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(DataError, match="bad.json"):
        Vocabulary.load(tmp_path / "bad.json")


def test_vocabulary_min_count_and_max_size():
    vocab = Vocabulary.build([["a", "a", "b", "c", "c", "c"]], min_count=2)
    assert vocab.tokens[2:] == ["c", "a"]
    assert Vocabulary.build([["a", "a", "b"]], max_size=1).tokens[2:] == ["a"]
