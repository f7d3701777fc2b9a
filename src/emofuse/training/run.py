"""Run an experiment: every fold of the protocol (each one is training/fold.py), the finished
ones read back, the run's summary and report written as the folds finish.

Run directory:
    run_dir/config.yaml            resolved config
    run_dir/data.json              the data checks (training/checks.py)
    run_dir/fold-K/                one fold (training/fold.py)
    run_dir/metrics.json           every finished fold + mean ± std
    run_dir/report.md, confusion.png
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Collection

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from emofuse.errors import ConfigError
from emofuse.training.config import ExperimentConfig, save_config
from emofuse.training.data import LabelledData
from emofuse.training.fold import Log, barrier, train_fold
from emofuse.training.integrity import cached_measurement, check_fold_matches, tested_checkpoint
from emofuse.training.report import read_json, run_summary, write_json, write_run_report

# after_fold(cfg, data, fold, fold_dir, result) -> statistics of a finished fold (see run_folds)
AfterFold = Callable[[ExperimentConfig, LabelledData, Any, Path, dict], "dict | None"]


def run_folds(cfg: ExperimentConfig, data: LabelledData, folds: list, run_dir: Path | None = None,
              log: Log = print, extra_callbacks: tuple = (), *, only: Collection[int] | None = None,
              after_fold: AfterFold | None = None, after_fold_name: str = "explain", quiet: bool = False) -> dict:
    """Train and test every fold (or `cfg.fold`, or those in `only`), skipping finished ones;
    write the run report.

    - `{fold}` in a model setting (the teacher checkpoint of a teacher-student row,
      `model.teacher_checkpoint=runs/h-mm-4/fold-{fold}`) becomes the fold's index.
    - A finished fold (its `metrics.json` exists) is read, not retrained.
    - Every fold folder holding results must have been cut from the same utterances and
      classes as `data` and `folds` (`check_fold_matches`), else nothing runs.
    - `after_fold(cfg, data, fold, fold_dir, result)` measures something on a finished fold
      (a benchmark's gate or attention statistics); its dict is cached in
      `fold-K/<after_fold_name>.json`, read back instead of measured again unless the fold's
      tested checkpoint is another than it was measured on (`cached_measurement`),
      and merged into the fold's result under `after_fold_name`.
    - `quiet`: one line per fold trained (its test scores), nothing else.

    Returns the run summary over every finished fold of `run_dir` (`run_summary`, plus
    `run_dir`) and `selected`: the results of the folds asked for, in fold order.
    """
    run_dir = Path(run_dir) if run_dir else cfg.resolved_run_dir()
    # before anything in run_dir is written: a refused command leaves config.yaml as it was
    # (a fold=7 written there would make every later plain resume fail)
    if cfg.fold is not None and not 0 <= cfg.fold < len(folds):
        raise ConfigError(f"fold={cfg.fold}: the protocol gives folds 0..{len(folds) - 1}")
    for fold in folds:
        check_fold_matches(run_dir / f"fold-{fold.index}", data, fold)
    if rank_zero_only.rank == 0:
        save_config(cfg, run_dir)
        # the resolved label set, train -> test corpora and warnings (single-class speakers): data.json
        from emofuse.training.checks import write_data_checks

        write_data_checks(cfg.to_dict(), data, folds, run_dir, log)
    chosen = folds if cfg.fold is None else [folds[cfg.fold]]
    if only is not None:
        unknown = sorted(set(only) - {f.index for f in folds})
        if unknown:
            raise ConfigError(f"folds {unknown}: the protocol gives folds 0..{len(folds) - 1}")
        chosen = [f for f in chosen if f.index in only]
    extra = after_fold_name if after_fold is not None else None
    selected = []
    for fold in chosen:
        fold_dir = run_dir / f"fold-{fold.index}"
        fold_cfg = fold_config(cfg, fold.index)
        changed = False
        if (fold_dir / "metrics.json").is_file():
            if not quiet:
                log(f"fold {fold.index}: done before, skipped ({fold_dir / 'metrics.json'})")
        else:
            if not quiet:
                log(f"fold {fold.index} ({fold.name}): train {len(fold.train)}, val {len(fold.val)}, "
                    f"test {len(fold.test)}")
            result = train_fold(fold_cfg, data, fold, fold_dir, (lambda s: None) if quiet else log, extra_callbacks)
            t = result["test"]
            chosen_by = f"best epoch {result['best_epoch']}" if result["best_epoch"] is not None \
                else f"C {result['backend']['C']:g}, val UA {result['backend']['val_ua']:.3f}"  # a fitted model
            log(f"fold {fold.index}: test UA {t['ua']:.3f}  WA {t['wa']:.3f}  macro-F1 {t['macro_f1']:.3f} "
                f"({chosen_by}, {result['seconds']:.0f} s)")
            changed = True
        if after_fold is not None and not (not changed and cached_measurement(fold_dir, extra)):
            measured = after_fold(fold_cfg, data, fold, fold_dir, read_json(fold_dir / "metrics.json")) or {}
            if rank_zero_only.rank == 0:  # the measurement first: a kill between the two means measure again
                write_json(fold_dir / f"{extra}.json", measured)
                write_json(fold_dir / f"{extra}.checkpoint.json", tested_checkpoint(fold_dir))
            barrier()
            changed = True
        selected.append(read_fold(fold_dir, extra))
        if changed:
            write_run(cfg, data, folds, run_dir, extra)  # the report grows fold by fold
    run = write_run(cfg, data, folds, run_dir, extra)
    run["selected"] = selected
    return run


def fold_config(cfg: ExperimentConfig, index: int) -> ExperimentConfig:
    """`cfg` for fold `index`: `{fold}` in the model settings (paths to a fold of another run,
    such as a teacher checkpoint) replaced by the index."""

    def fill(value):
        if isinstance(value, str):
            return value.replace("{fold}", str(index))
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    out = copy.deepcopy(cfg)
    out.model = fill(out.model)
    return out


def read_fold(fold_dir: Path, extra: str | None = None) -> dict:
    """A finished fold's metrics.json, with its `<extra>.json` (an `after_fold` output) under `extra`."""
    result = read_json(fold_dir / "metrics.json")
    if extra and (fold_dir / f"{extra}.json").is_file():
        result[extra] = read_json(fold_dir / f"{extra}.json")
    return result


def write_run(cfg: ExperimentConfig, data: LabelledData, folds: list, run_dir: Path, extra: str | None = None) -> dict:
    """Summarise every finished fold of the run into metrics.json, report.md, confusion.png."""
    done = [read_fold(run_dir / f"fold-{f.index}", extra) for f in folds
            if (run_dir / f"fold-{f.index}" / "metrics.json").is_file()]
    run = run_summary(cfg.to_dict(), data.classes, done, len(folds))
    if rank_zero_only.rank == 0:
        write_run_report(run_dir, run, cfg.to_dict())
    barrier()
    run["run_dir"] = str(run_dir)
    return run


def run_experiment(cfg: ExperimentConfig, log: Log = print, progress=None) -> dict:
    """Read the corpus and its features (extracting what is missing), cut the folds, run them."""
    from emofuse.training.corpus import load_labelled

    run_dir = cfg.resolved_run_dir()
    if rank_zero_only.rank == 0:
        # fail early on a run_dir that holds another experiment; written by run_folds once the
        # finished folds are known to match the data (a refused resume leaves config.yaml as it was)
        save_config(cfg, run_dir, write=False)
    data = load_labelled(cfg, log=log, progress=progress)
    return run_folds(cfg, data, protocol_folds(cfg, data), run_dir, log)


def protocol_folds(cfg: ExperimentConfig, data: LabelledData) -> list:
    """The folds of `cfg.protocol` over the corpus of `data` (drawn with `cfg.seed`)."""
    from emofuse.training.splits import make_folds

    p = cfg.protocol
    return make_folds(data.corpus, p.name, k=p.k, seed=cfg.seed, val_fraction=p.val_fraction,
                      val_speakers=p.val_speakers)


def is_rank_zero() -> bool:
    return rank_zero_only.rank == 0


def quiet_lightning() -> None:
    """Lightning's info lines (GPU available, ...) add noise to a CLI run."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not sys.warnoptions:
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
