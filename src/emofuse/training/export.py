"""Export from a run directory of `emofuse train`: one fold packaged as a model directory.

`export_run` picks the fold with the best *validation* score (never test: choosing on test
would report an optimistic number; Aguilar et al. 2019 select on held-out speakers), reads its
best Lightning checkpoint once (`torch.load(weights_only=True)`) and writes the directory with
`emofuse.models.modeldir.write_model_dir`. Multi-view models (Aguilar et al. 2019, Table 3)
export their acoustic view alone (`MultiView.deployable()`): that model directory needs no
transcript and no alignment. A fitted model (the linear probe, `ModelEntry.fitted`) has no
checkpoint: its network has no weights, and its fitted back-end (`fold-K/backend.json`) goes
into model.json. Prediction reads the result without this module.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from emofuse.errors import ConfigError, DataError
from emofuse.models.modeldir import best_checkpoint_of
from emofuse.training.checkpoints import checkpoint_state, load_weights
from emofuse.features.normalise import Normalisation
from emofuse.io import plain, read_json
from emofuse.models.modeldir import ModelInfo, write_model_dir

def fold_dirs(run_dir: Path) -> list[Path]:
    return sorted((p for p in run_dir.glob("fold-*") if p.is_dir() and p.name[5:].isdigit()),
                  key=lambda p: int(p.name[5:]))


def validation_score(fold_dir: Path) -> tuple[str, float | None]:
    """(monitor, best validation score) of a finished fold, as `training.fold` records it in
    metrics.json. With `protocol.backend` the back-end predicts, so its validation UA (the one
    its C was chosen on) is the fold's score."""
    metrics = read_json(fold_dir / "metrics.json")
    if "backend" in metrics:  # protocol.backend: the refitted output layer is what predicts
        return "backend_val_ua", metrics["backend"].get("val_ua")
    return str(metrics.get("monitor") or "val_ua"), metrics.get("val_score")


def best_fold(run_dir: str | Path) -> Path:
    """The finished fold with the best validation score (val UA unless the run chose another
    monitor; lowest for val_loss). Ties go to the lowest fold index. Test scores are never read."""
    run_dir = Path(run_dir)
    scored = []
    for fold in fold_dirs(run_dir):
        if not (fold / "metrics.json").is_file():
            continue
        monitor, value = validation_score(fold)
        sign = -1.0 if monitor == "val_loss" else 1.0
        scored.append((float("-inf") if value is None else sign * float(value), fold))
    if not scored:
        raise DataError(run_dir, "no finished fold (no fold-K/metrics.json): train it first with `emofuse train`")
    best = max(v for v, _ in scored)
    return next(fold for v, fold in scored if v == best)


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _build_trained(name: str, settings: dict, spec: dict) -> nn.Module:
    """The network as trained. A multi-view model in a frozen mode reads its teacher's file at
    build time; the teacher's weights are in the checkpoint anyway, so when that file has
    moved the structure is built in "joint" mode (same views, nothing read)."""
    from emofuse.models.base import InputSpec, get_model

    entry = get_model(name)
    try:
        return entry.build(InputSpec(**spec), **settings)
    except DataError:
        merged = {**entry.defaults, **settings}
        if "teacher_checkpoint" not in merged:
            raise
        return entry.build(InputSpec(**spec), **{**settings, "mode": "joint", "teacher_checkpoint": ""})


def _is_fitted(name: str | None) -> bool:
    """Whether registry model `name` is fitted, not trained (`ModelEntry.fitted`); an unknown
    name is left to the rebuild to report."""
    from emofuse.errors import EmofuseError
    from emofuse.models.base import get_model

    try:
        return name is not None and get_model(name).fitted
    except EmofuseError:
        return False


def export_fold(fold_dir: str | Path, out_dir: str | Path, run_config: dict | None = None) -> Path:
    """Package one trained fold (`run_dir/fold-K`) as a model directory."""
    import yaml

    from emofuse.features.frames import get_frame_feature
    from emofuse.models.base import get_model

    fold_dir = Path(fold_dir)
    run_dir = fold_dir.parent
    if run_config is None:
        config_path = run_dir / "config.yaml"
        if not config_path.is_file():
            raise DataError(config_path, "run config not found (is this a run directory of `emofuse train`?)")
        run_config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    fitted = read_json(fold_dir / "normaliser.json")
    metrics = read_json(fold_dir / "metrics.json") if (fold_dir / "metrics.json").is_file() else {}
    model_section = dict(fitted.get("model") or run_config.get("model") or {})
    trained_name = model_section.pop("name", None)
    checkpoint = state = None
    if _is_fitted(trained_name):  # the linear probe: no weights; its back-end is the fitted part
        if "backend" not in metrics:
            raise DataError(fold_dir, "no metrics.json naming a fitted back-end: the fold has not finished "
                                      "(run `emofuse train` again)")
    else:
        trained_path = fold_dir / "trained.json"
        if not trained_path.is_file():  # a best-*.ckpt of an interrupted fold is a mid-training network
            raise DataError(fold_dir, "no trained.json: the fold has not finished training (resume it with "
                                      "`emofuse train`)")
        checkpoint = best_checkpoint_of(trained_path)
        state = checkpoint_state(checkpoint)  # tensors and plain values only: a crafted file is refused
        state = _strip_prefix(state, "model.")  # EmotionModule keeps the network as `self.model`
    if trained_name is None:
        raise DataError(fold_dir / "normaliser.json", "no model name recorded")
    spec = dict(fitted["spec"])
    network = _build_trained(trained_name, model_section, spec)
    if state is not None:
        load_weights(network, state, checkpoint, f"model {trained_name!r}")
    name, settings = trained_name, model_section
    deployable = getattr(network, "deployable", None)
    if callable(deployable):  # multi-view: the acoustic view alone is the product
        name, settings = network.deployable_config()
        network = deployable()
    needs = list(get_model(name).needs)

    features = dict(fitted.get("features") or {})
    acoustic = features.get("acoustic") if "acoustic" in needs else None
    words = features.get("words") if any(n in needs for n in ("words",)) else None
    reads_words = any(n in needs for n in ("words", "word_frames", "token_ids"))
    frame = get_frame_feature(acoustic) if acoustic else None
    fold_index = metrics.get("fold", int(fold_dir.name.split("-")[-1]) if fold_dir.name[5:].isdigit() else None)
    monitor, val_score = validation_score(fold_dir) if metrics else ("val_ua", None)
    run_metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
    # the run's resolved label set (training/checks.py): its mapping travels with the classes
    label_info = read_json(run_dir / "data.json").get("label_set") or {} if (run_dir / "data.json").is_file() else {}
    info = ModelInfo(
        name=name,
        settings=plain(settings),
        spec=spec,
        needs=needs,
        classes=list(fitted["classes"]),
        label_set=label_info.get("name") or fitted.get("label_set"),
        label_map=label_info.get("map") or None,
        acoustic=acoustic,
        acoustic_settings=dict(frame.settings) if frame else {},
        hop=frame.hop if frame else 0.01,
        words=words,
        # text-only models trained on the written transcript read it the same way at prediction time
        align=("written" if features.get("align") == "written" else "auto") if reads_words else "none",
        # the recogniser whose words the model was trained on (runs from before data.asr: pocketsphinx)
        asr=(features.get("asr") or "sphinx") if reads_words else None,
        max_frames=features.get("max_frames"),
        max_words=features.get("max_words"),
        trim=features.get("trim"),
        # per-speaker statistics describe the training corpus's speakers, not a new one: keep the mode only
        normaliser=Normalisation.from_dict(fitted.get("normaliser"), fold_dir / "normaliser.json").portable().to_dict()
        if acoustic else None,
        vocabulary=fitted.get("vocabulary") if "token_ids" in needs else None,
        backend=_fitted_backend(fold_dir / "backend.json", list(fitted["classes"])) if "backend" in metrics else None,
        metrics={
            "fold": fold_index,
            "monitor": monitor,
            "val_score": val_score,
            "val_ua": val_score if monitor in ("val_ua", "backend_val_ua") else metrics.get("val_ua"),
            "best_epoch": metrics.get("best_epoch"),
            "test": metrics.get("test"),
            "run_summary": run_metrics.get("summary"),
            "selected_by": f"validation {monitor} (best over folds; ties: lowest fold), never test",
        },
        source={
            "run_dir": str(run_dir.resolve()),
            "fold": fold_index,
            "checkpoint": os.path.relpath(checkpoint, fold_dir) if checkpoint else None,  # None: fitted, not trained
            "trained_model": trained_name,
            "training_align": features.get("align"),
        },
        config=run_config,
    )
    return write_model_dir(out_dir, network, info)


def _fitted_backend(path: Path, classes: list[str]) -> dict:
    """The fold's refitted output layer (`protocol.backend`: its metrics.json names one), checked."""
    if not path.is_file():
        raise DataError(path, "missing: the fold's metrics.json describes a back-end (protocol.backend), and the "
                              "network alone would not give the predictions those metrics describe")
    from emofuse.models.refitted_output import Backend

    backend = Backend.from_dict(read_json(path), source=path)
    if backend.classes != classes:
        raise DataError(path, f"back-end classes {backend.classes} differ from the fold's {classes}")
    return backend.to_dict()


def export_run(run_dir: str | Path, out_dir: str | Path, fold: int | None = None) -> Path:
    """Write the model directory of a run: fold `fold`, or the fold with the best validation UA.

    This is what `emofuse train` calls after its folds and `emofuse export RUN_DIR --out DIR` runs.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(run_dir, "run directory not found")
    if fold is None:
        chosen = best_fold(run_dir)
    else:
        chosen = run_dir / f"fold-{fold}"
        if not (chosen / "normaliser.json").is_file():
            done = ", ".join(p.name for p in fold_dirs(run_dir)) or "none"
            raise ConfigError(f"{run_dir}: fold {fold} has not been trained (folds present: {done})")
    return export_fold(chosen, out_dir)

