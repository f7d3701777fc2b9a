"""The cross-corpus protocol (issue 19, item 3): train and validate on one corpus, test on another."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from emofuse.corpora.base import Corpus, Utterance
from emofuse.errors import ConfigError
from emofuse.features.batch import UtteranceFeatures
from emofuse.training.checks import data_checks
from emofuse.training.config import load_config
from emofuse.training.data import LabelledData
from emofuse.training.corpus import append_test_corpus
from emofuse.training.splits import make_folds

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("angry", "happy", "neutral", "sad")


def corpus_of(name: str, speakers: list[str], classes=CLASSES, per_class: int = 2):
    utterances, items, labels = [], [], []
    for s in speakers:
        for c, label in enumerate(classes):
            for r in range(per_class):
                uid = f"{s}_{label}_{r}"  # the same ids in both corpora: the prefix keeps them apart
                utterances.append(Utterance(uid, None, s, label, label))
                items.append(UtteranceFeatures(uid, acoustic=np.zeros((5, 3), np.float32)))
                labels.append(CLASSES.index(label))
    return Corpus(utterances, name=name), items, np.asarray(labels)


def joined(test_classes=CLASSES) -> LabelledData:
    train = corpus_of("train", [f"s{i}" for i in range(6)])
    test = corpus_of("other", ["s0", "s1"], test_classes)  # same speaker names as the training corpus
    corpus, items, labels = append_test_corpus(*train, *test)
    return LabelledData(corpus, items, labels, CLASSES, {"corpora": {"train": "train", "test": "other"}})


def test_no_test_corpus_utterance_is_in_training_or_validation():
    data = joined()
    folds = make_folds(data.corpus, "cross-corpus", val_speakers=2)
    assert len(folds) == 1
    fold = folds[0]
    is_test = np.array([u.meta.get("cross_corpus") == "test" for u in data.corpus])
    assert is_test[fold.test].all() and len(fold.test) == is_test.sum()
    assert not is_test[fold.train].any() and not is_test[fold.val].any()
    assert len(fold.val) > 0  # validation speakers, carved from the training corpus
    assert {data.corpus[int(i)].speaker for i in fold.test} == {"other/s0", "other/s1"}
    assert fold.name == "cross-corpus: train -> other"


def test_a_class_missing_from_the_test_corpus_is_reported():
    data = joined(test_classes=("angry", "sad"))
    folds = make_folds(data.corpus, "cross-corpus", val_speakers=1)
    checks = data_checks({"data": {}, "protocol": {}}, data, folds)
    assert checks["missing_in_test"] == ["happy", "neutral"]
    assert any("happy, neutral" in w and "'other'" in w for w in checks["warnings"])


def test_cross_corpus_needs_a_test_manifest_and_only_it_reads_one():
    base = ROOT / "configs" / "ravdess4" / "b-aco-1.yaml"
    with pytest.raises(ConfigError, match="data.test_manifest"):
        load_config(base, ["protocol.name=cross-corpus"])
    with pytest.raises(ConfigError, match="cross-corpus only"):
        load_config(base, ["data.test_manifest=x.jsonl"])


@pytest.mark.data
def test_ravdess_to_demo_runs_one_epoch_and_reports_train_to_test(ravdess_root, tmp_path):
    from typer.testing import CliRunner

    from emofuse.cli import app
    from emofuse.corpora import load_corpus

    corpus = load_corpus("ravdess", ravdess_root, "ravdess4")
    actors = {"Actor_01", "Actor_02", "Actor_03"}
    corpus.subset([i for i, u in enumerate(corpus) if u.speaker in actors]).write(tmp_path / "slice.jsonl")
    config = tmp_path / "cross" / "tiny.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({
        "data": {"manifest": str(tmp_path / "slice.jsonl"), "label_set": "ravdess4", "store": str(tmp_path / "store"),
                 "test_manifest": str(ROOT / "src" / "emofuse" / "demo" / "data" / "manifest.jsonl"),
                 "test_store": str(tmp_path / "demo-store"), "acoustic": "fbank40", "align": "none", "max_frames": 200},
        "model": {"name": "B-ACO-1", "hidden": 8, "layers": 1},
        "trainer": {"max_epochs": 1, "batch_size": 32, "accelerator": "cpu", "progress": False, "threads": 1},
        "protocol": {"name": "cross-corpus", "val_speakers": 1},
        "run_dir": str(tmp_path / "run"),
    }))
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["folds"][0]["n_test"] == 288  # the whole demo corpus
    split = json.loads((run / "fold-0" / "split.json").read_text())
    assert all(i.startswith("emofuse-demo/") for i in split["test"])
    assert not any(i.startswith("emofuse-demo/") for i in split["train"] + split["val"])
    assert "tested on corpus `emofuse-demo`" in (run / "report.md").read_text()
    table = tmp_path / "table.md"
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(table)])
    assert result.exit_code == 0 and "ravdess → emofuse-demo" in table.read_text()


def test_a_test_corpus_holding_training_recordings_is_refused(tmp_path):
    from emofuse.errors import DataError
    from emofuse.training.corpus import refuse_shared_recordings

    clip = tmp_path / "a.wav"
    clip.write_bytes(b"")
    train = Corpus([Utterance("t1", str(clip), "spk1", "happy", "happy")], name="train")
    same = Corpus([Utterance("x9", str(tmp_path / "." / "a.wav"), "other", "happy", "happy")], name="other")
    with pytest.raises(DataError, match=r"1 test recording\(s\) are also in the training corpus \(first: 'x9' = "
                                        r"training 't1'\)"):
        refuse_shared_recordings(train, same, "test.jsonl")
    elsewhere = Corpus([Utterance("x9", str(tmp_path / "b.wav"), "spk1", "happy", "happy")], name="other")
    refuse_shared_recordings(train, elsewhere, "test.jsonl")  # the same speaker name alone is fine
