"""One Normalisation object: decided from data.normalise, fitted per fold, saved, read back the same."""

from __future__ import annotations

import numpy as np
import pytest

from emofuse.errors import ConfigError, DataError
from emofuse.features.batch import UtteranceFeatures
from emofuse.features.normalise import Normalisation


def _items(offsets):
    rng = np.random.default_rng(0)
    return [UtteranceFeatures(id=str(i), acoustic=(rng.normal(0, 1, (6, 2)) + o).astype(np.float32))
            for i, o in enumerate(offsets)]


@pytest.mark.parametrize("value, mode", [(True, "fold"), (False, "none"), (None, "none"), ("fold", "fold"),
                                         ("speaker", "speaker"), ("utterance", "utterance"), ("none", "none")])
def test_a_config_value_names_one_mode(value, mode):
    assert Normalisation.mode_of(value) == mode


def test_an_unknown_mode_is_a_config_error_naming_the_valid_ones():
    with pytest.raises(ConfigError, match="data.normalise='global'.*fold, speaker, utterance, none"):
        Normalisation.mode_of("global")


def test_fold_statistics_come_from_the_training_part_only():
    items = _items([0, 0, 100])
    fitted = Normalisation.fit(True, items, ["a", "a", "b"], train_idx=[0, 1])
    frames = np.concatenate([it.acoustic for it in items[:2]])
    np.testing.assert_allclose(fitted.statistics.mean, frames.mean(0), rtol=1e-5)
    assert fitted.fitted_on("the training part") == "the training part"


def test_speaker_statistics_follow_each_items_speaker_in_training():
    items = _items([0, 0, 50, 50])
    fitted = Normalisation.fit("speaker", items, ["a", "a", "b", "b"], train_idx=[0])
    frames = np.concatenate([fitted.apply(items[i].acoustic, index=i) for i in (2, 3)])
    np.testing.assert_allclose(frames.mean(0), 0.0, atol=1e-4)
    assert set(fitted.to_dict()["speakers"]) == {"a", "b"}


def test_saved_records_keep_their_format_and_read_back_the_same():
    items = _items([0, 3])
    fold = Normalisation.fit("fold", items, ["a", "b"], [0, 1]).to_dict()
    assert set(fold) == {"mean", "std", "count"}  # no "mode" key: the format of existing model directories
    for record in (fold, {"mode": "utterance"}, {"mode": "speaker"}, None):
        assert Normalisation.from_dict(record).to_dict() == record
    assert Normalisation.from_dict(None).mode == "none"


def test_a_model_directory_keeps_no_corpus_speakers_statistics():
    fitted = Normalisation.fit("speaker", _items([0, 5]), ["a", "b"], [0])
    assert fitted.portable().to_dict() == {"mode": "speaker"}


def test_a_lone_recording_uses_its_own_statistics_and_a_speakers_recordings_their_joint_ones():
    items = _items([10, 20])
    speaker = Normalisation.from_dict({"mode": "speaker"})
    alone = speaker.apply(items[0].acoustic)
    np.testing.assert_allclose(alone.mean(0), 0.0, atol=1e-5)
    joint = speaker.for_one_speaker(it.acoustic for it in items)
    both = np.concatenate([joint.apply(it.acoustic) for it in items])
    np.testing.assert_allclose(both.mean(0), 0.0, atol=1e-4)
    assert joint.apply(items[0].acoustic).mean() < -0.5  # the quieter recording sits below the speaker's mean


def test_only_fixed_statistics_fit_inside_a_graph():
    assert Normalisation.from_dict(None).fixed and Normalisation.from_dict({"mean": [0.0], "std": [1.0]}).fixed
    assert not Normalisation.from_dict({"mode": "utterance"}).fixed
    assert not Normalisation.from_dict({"mode": "speaker"}).fixed


def test_items_without_frames_save_nothing():
    text_only = [UtteranceFeatures(id="w")]
    assert Normalisation.fit("fold", text_only, ["a"], [0]).to_dict() is None


def test_a_broken_record_names_its_file():
    with pytest.raises(DataError, match="model.json.*lacks 'std'"):
        Normalisation.from_dict({"mean": [0.0]}, "model.json")
