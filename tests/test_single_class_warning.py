"""Recipes check their assumptions (issue 19, item 4): per-speaker statistics warn when too many
training speakers are heard in one class only, on the skewed RAVDESS subset of
benchmarks/single_class_speakers.py, and stay silent on RAVDESS as recorded."""

from __future__ import annotations

import numpy as np
import pytest

from emofuse.training.checks import SINGLE_CLASS_LIMIT, single_class_share, single_class_warning
from helpers import folds_for, synthetic_data, tiny_config

SPEAKER = {"data": {"acoustic": "compare_lld", "normalise": "speaker"}, "protocol": {"backend": None}}
SPEAKER_LR = {"data": {"acoustic": "compare_lld", "normalise": True}, "protocol": {"backend": "speaker-lr"}}
FOLD = {"data": {"acoustic": "compare_lld", "normalise": True}, "protocol": {"backend": "lr"}}


@pytest.fixture(scope="module")
def ravdess4(ravdess_root):
    from emofuse.corpora import load_corpus

    corpus = load_corpus("ravdess", ravdess_root, "ravdess4")
    classes = ["angry", "happy", "neutral", "sad"]  # the benchmark's class indices
    return np.array(corpus.speakers), np.array([classes.index(label) for label in corpus.labels])


@pytest.mark.data
def test_the_warning_fires_on_the_skewed_subset_for_either_speaker_setting(ravdess4):
    from benchmarks.single_class_speakers import skewed_indices

    speakers, labels = ravdess4
    keep = skewed_indices(speakers, labels, 18)  # 18 of 24 actors keep one emotion
    assert single_class_share(speakers[keep], labels[keep])[:2] == (0.75, 18)
    for config in (SPEAKER, SPEAKER_LR):
        warning = single_class_warning(config, speakers[keep], labels[keep])
        assert warning and "18 of 24 training speakers" in warning
    assert single_class_warning(FOLD, speakers[keep], labels[keep]) is None  # fold statistics are not at risk


@pytest.mark.data
def test_the_warning_stays_silent_on_ravdess(ravdess4):
    speakers, labels = ravdess4
    assert single_class_share(speakers, labels)[0] == 0.0
    assert single_class_warning(SPEAKER, speakers, labels) is None
    assert single_class_warning(SPEAKER_LR, speakers, labels) is None


def test_the_limit_is_a_share_between_zero_and_one():
    assert 0.0 < SINGLE_CLASS_LIMIT < 1.0
    assert single_class_warning(SPEAKER, ["a", "b"], [0, 1]) is not None  # both single-class: 100%
    assert single_class_warning(SPEAKER, ["a", "a", "b", "b"], [0, 1, 0, 1]) is None


def test_the_warning_reaches_data_json_and_report_md_before_training(tmp_path):
    from emofuse.training.checks import write_data_checks
    from emofuse.training.report import write_run_report

    data = synthetic_data(speakers=8, per_class=2)
    keep = [i for i, u in enumerate(data.corpus) if u.speaker in ("spk0", "spk1") or data.labels[i] == 0]
    skewed = type(data)(data.corpus.subset(keep), [data.items[i] for i in keep], data.labels[keep], data.classes)
    cfg = tiny_config(tmp_path, "data.normalise=speaker")
    checks = write_data_checks(cfg.to_dict(), skewed, folds_for(skewed, cfg), tmp_path, log=lambda m: None)
    assert checks["single_class_speakers"]["share"] > SINGLE_CLASS_LIMIT and checks["warnings"]
    write_run_report(tmp_path, {"name": "tiny", "model": "B-ACO-1", "classes": list(data.classes), "folds": [],
                                "summary": {}}, cfg.to_dict())
    assert "> **Warning:**" in (tmp_path / "report.md").read_text()
    assert "in one class only" in (tmp_path / "report.md").read_text()
