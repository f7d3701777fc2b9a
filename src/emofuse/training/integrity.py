"""Refusals that keep a run's results from different data apart: a fold folder cut from other
utterances or classes than the current data (a manifest, label set or protocol changed since),
a teacher that trained on a student fold's test utterances, and an `after_fold` measurement
of another checkpoint than the one a fold is tested with.

Not with training/checks.py: those are warnings about the data itself (data.json); these
compare what is on disk with the current data and refuse to run.
"""

from __future__ import annotations

import os
from pathlib import Path

from emofuse.errors import ConfigError, DataError
from emofuse.models.modeldir import best_checkpoint_of, weights_sha256
from emofuse.training.config import ExperimentConfig
from emofuse.training.data import LabelledData
from emofuse.training.report import read_json


def cached_measurement(fold_dir: Path, extra: str) -> bool:
    """Whether `fold-K/<extra>.json` may be read instead of measured again: it exists and was
    measured on the checkpoint the fold is tested with now (`<extra>.checkpoint.json`). A
    cache from before that record existed, or whose checkpoint was deleted since (pruned to save
    space), is all there is and is read as it is."""
    if not (fold_dir / f"{extra}.json").is_file():
        return False
    measured_on = fold_dir / f"{extra}.checkpoint.json"
    if not measured_on.is_file() or not best_checkpoint_of(fold_dir / "metrics.json").is_file():
        return True
    return read_json(measured_on) == tested_checkpoint(fold_dir)


def tested_checkpoint(fold_dir: Path) -> dict:
    """The checkpoint a finished fold was tested with (named in its metrics.json) and its
    SHA-256: what an `after_fold` measurement is tied to, so that a fold trained again (a new
    checkpoint) is measured again."""
    path = best_checkpoint_of(fold_dir / "metrics.json")
    if not path.is_file():
        raise DataError(path, f"checkpoint not found (named in {fold_dir / 'metrics.json'})")
    digest = weights_sha256(path)
    return {"checkpoint": os.path.relpath(path, fold_dir), "sha256": digest}


def check_fold_matches(fold_dir: Path, data: LabelledData, fold) -> None:
    """Refuse a fold folder holding results (finished, or a checkpoint to resume from) that was
    cut from other utterances or classes than `fold` of `data`: resumed, its results would be
    merged with folds of another dataset (a manifest, label set or protocol changed since).

    Compares the stored `split.json` (train, val, test ids; classes, in runs that record them
    there, else `normaliser.json`'s) of the fold and of its refit selection stage with the
    current ones, as sets of ids; an older file is compared on the parts it holds."""
    stages = [d for d in (fold_dir, fold_dir / "selection")
              if (d / "trained.json").is_file() or (d / "checkpoints" / "last.ckpt").is_file()]
    if (fold_dir / "metrics.json").is_file() and fold_dir not in stages:
        stages.insert(0, fold_dir)
    hint = f"start a new run_dir or delete {fold_dir.name}"
    current = fold.to_json(data.corpus)
    for stage in stages:
        split_path, stored = stage / "split.json", {}
        if split_path.is_file():
            stored = read_json(split_path)
            if not isinstance(stored, dict):
                raise DataError(split_path, f"not a fold's split (a JSON object of train, val and test ids); {hint}")
            differing, first = [], None
            for part, name in (("test", "test"), ("val", "validation"), ("train", "training")):
                ids = stored.get(part)
                if ids is None:
                    continue
                if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                    raise DataError(split_path, f'"{part}" is not a list of utterance ids; {hint}')
                differ = set(ids) ^ set(current[part])
                if differ:
                    differing.append(f"{len(differ)} {name}")
                    if first is None:
                        uid = sorted(differ)[0]
                        first = f"{uid!r}, {'only in this file' if uid in set(ids) else 'only in the current data'}"
            if differing:
                raise DataError(split_path, f"{' and '.join(differing)} utterances differ from the current data "
                                            f"(first: {first}); {hint}")
        classes_path, record = split_path, stored
        if "classes" not in stored and (stage / "normaliser.json").is_file():  # runs before split.json held them
            classes_path, record = stage / "normaliser.json", read_json(stage / "normaliser.json")
        classes = record.get("classes") if isinstance(record, dict) else None
        if classes is not None and classes != list(data.classes):
            raise DataError(classes_path, f"classes {classes} differ from the current {list(data.classes)}; {hint}")


def check_teacher_split(cfg: ExperimentConfig, data: LabelledData, fold) -> None:
    """A teacher fold read through `model.teacher_checkpoint` must not have trained on this
    fold's test or validation utterances (a teacher run with another seed, k or refit cuts other
    folds): its `split.json` is compared with this fold before any training."""
    path = cfg.model.get("teacher_checkpoint") if isinstance(cfg.model, dict) else None
    if not isinstance(path, str) or not path:
        return
    here = Path(path)
    split = next((d / "split.json" for d in (here, here.parent, here.parent.parent) if (d / "split.json").is_file()),
                 None)
    if split is None:
        return
    teacher = read_json(split)
    trained_on = set(teacher.get("train", [])) | set(teacher.get("val", []))
    ids = lambda part: {data.corpus[int(i)].id for i in part}  # noqa: E731
    for part, name in ((fold.test, "test"), (fold.val, "validation")):
        seen = trained_on & ids(part) if name == "test" else set(teacher.get("train", [])) & ids(part)
        if seen:
            raise ConfigError(f"{split}: the teacher of fold {fold.index} trained on {len(seen)} of this fold's "
                              f"{name} utterances (first: {sorted(seen)[0]!r}); train the teacher with the same "
                              "seed and protocol as the student")
