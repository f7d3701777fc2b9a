"""Multi-view models through the real training engine: the loss hook, and a teacher read from a trained fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emofuse.corpora.base import Corpus, Utterance
from emofuse.features.batch import UtteranceFeatures
from emofuse.training.config import load_config
from emofuse.training.data import LabelledData
from emofuse.training.run import run_folds
from emofuse.training.splits import make_folds

CLASSES = ("angry", "happy", "neutral", "sad")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def synthetic_words(speakers: int = 6, per_class: int = 2, seed: int = 0) -> LabelledData:
    """Frames and word vectors that both carry the class; three words with silence around them."""
    rng = np.random.default_rng(seed)
    utterances, items, labels = [], [], []
    for s in range(speakers):
        for c, name in enumerate(CLASSES):
            for r in range(per_class):
                uid = f"s{s}_{name}_{r}"
                frames = rng.normal(0.0, 1.0, (40, 6)).astype(np.float32)
                frames[:, c] += 2.0
                vectors = rng.normal(0.0, 1.0, (3, 5)).astype(np.float32)
                vectors[:, c] += 2.0
                utterances.append(Utterance(id=uid, audio=None, speaker=f"spk{s}", label=name, original_label=name))
                items.append(UtteranceFeatures(
                    id=uid, acoustic=frames, acoustic_hop=0.01, words=["a", "b", "c"],
                    word_times=np.array([[0.03, 0.12], [0.14, 0.22], [0.25, 0.36]]), word_vectors=vectors,
                ))
                labels.append(c)
    return LabelledData(Corpus(utterances, name="synthetic"), items, np.asarray(labels), CLASSES)


def config(run_dir: Path, model: dict):
    raw = {
        "name": "tiny", "corpus": "synthetic", "fold": 0, "run_dir": str(run_dir),
        "data": {"manifest": "unused.jsonl", "label_set": "ravdess4", "acoustic": "compare_lld",
                 "words": "minilm", "align": "auto"},
        "model": {"hidden": 8, "layers": 1, "dropout": 0.0, **model},
        "optim": {"name": "adam", "lr": 0.02, "weight_decay": 0.0},
        "trainer": {"max_epochs": 2, "batch_size": 8, "patience": 10, "progress": False, "accelerator": "cpu"},
        "protocol": {"name": "speaker-kfold", "k": 3, "val_speakers": 1},
    }
    return load_config(None, raw=raw)


def best_state(fold_dir: Path) -> dict:
    best = json.loads((fold_dir / "trained.json").read_text())["best_checkpoint"]
    return torch.load(fold_dir / best, map_location="cpu", weights_only=True)["state_dict"]


def test_teacher_student_trains_through_the_engine_from_a_trained_h_mm_4_fold(tmp_path):
    data = synthetic_words()
    teacher_cfg = config(tmp_path / "h-mm-4", {"name": "H-MM-4", "word_layers": 1})
    folds = make_folds(data.corpus, "speaker-kfold", k=3, seed=0, val_speakers=1)
    run_folds(teacher_cfg, data, folds, log=lambda s: None)
    teacher_fold = tmp_path / "h-mm-4" / "fold-0"

    student_cfg = config(tmp_path / "ts", {"name": "teacher-student", "view_m_settings": {"word_layers": 1},
                                           "teacher_checkpoint": str(teacher_fold)})
    run = run_folds(student_cfg, data, folds, log=lambda s: None)
    assert run["folds_done"] == 1

    teacher = best_state(teacher_fold)
    student = best_state(tmp_path / "ts" / "fold-0")
    frozen = {k[len("model.view_m."):]: v for k, v in student.items() if k.startswith("model.view_m.")}
    assert frozen and all(torch.equal(v, teacher["model." + k]) for k, v in frozen.items())


def test_joint_multiview_trains_through_the_engines_loss_hook(tmp_path):
    data = synthetic_words()
    cfg = config(tmp_path / "mv", {"name": "MV-B-ACO-1+H-MM-4", "view_m_settings": {"word_layers": 1}})
    folds = make_folds(data.corpus, "speaker-kfold", k=3, seed=0, val_speakers=1)
    run = run_folds(cfg, data, folds, log=lambda s: None)
    assert run["folds_done"] == 1
    rows = (tmp_path / "mv" / "fold-0" / "predictions.csv").read_text().splitlines()
    assert len(rows) - 1 == len(folds[0].test)
