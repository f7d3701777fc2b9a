"""The model directory: a trained model packaged so that prediction needs nothing else.

    MODEL_DIR/model.safetensors   the weights (tensors only: loading never unpickles code)
    MODEL_DIR/model.json          how to rebuild and feed the model (below)
    MODEL_DIR/config.yaml         the run's resolved config, for people (model.json holds it too)

model.json keeps the registry name and settings that rebuild the network
(`emofuse.models.base.get_model(name).build(InputSpec(**spec), **settings)`), the classes
and label set, the frame feature and its settings, the word-vector kind, the alignment
used at prediction time, the acoustic normaliser's statistics (fitted on the fold's
training part), the vocabulary of token-id models, the metrics the fold earned (validation
UA, test metrics) and the emofuse version that wrote it.

`export_run` picks the fold with the best *validation* UA (never test: choosing on test
would report an optimistic number, the pitfall GUIDE §2.2 warns of), reads its best
Lightning checkpoint once (`torch.load(weights_only=True)`) and writes the directory.
Multi-view models (Aguilar et al. 2019, Table 3) export their acoustic view alone
(`MultiView.deployable()`): that model directory needs no transcript and no alignment.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emofuse.errors import ConfigError, DataError, EmofuseError
from emofuse.io import atomic_dir

FORMAT = "emofuse-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "model.json"


@dataclass
class ModelInfo:
    """The contents of model.json (module docstring)."""

    name: str  # registry name of the network stored in the weights
    settings: dict  # its config settings
    spec: dict  # InputSpec fields
    needs: list[str]  # what the network reads: acoustic, words, word_frames, token_ids
    classes: list[str]
    label_set: str | None = None
    acoustic: str | None = None  # frame feature name (compare_lld, fbank40, ...)
    acoustic_settings: dict = field(default_factory=dict)
    hop: float = 0.01
    words: str | None = None  # word vectors (minilm, glove50, glove-file:PATH)
    align: str = "none"  # "none" (acoustic only), "auto" (forced with a transcript, ASR without) or
    # "written" (the transcript as written, no times; ASR words without one)
    max_frames: int | None = None
    max_words: int | None = None
    trim: float | None = None  # seconds kept around the speech span (data.trim); None: every frame
    normaliser: dict | None = None  # {"mean": [...], "std": [...]} of the training part
    vocabulary: dict | None = None
    # protocol.backend: the logistic regression that replaces the network's classifier on its
    # utterance vector (emofuse.training.backend.Backend.to_dict()); None: the network's own
    backend: dict | None = None
    metrics: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)  # run dir, fold, checkpoint, trained model name
    config: dict = field(default_factory=dict)  # the run's resolved config
    emofuse_version: str = ""
    created: str = ""

    @property
    def acoustic_only(self) -> bool:
        return not any(n in self.needs for n in ("words", "word_frames", "token_ids"))

    def to_json(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, record: dict, source: Path) -> "ModelInfo":
        if record.get("format") != FORMAT:
            raise DataError(source, f"not an emofuse model description (format {record.get('format')!r})")
        if int(record.get("format_version", 0)) > FORMAT_VERSION:
            raise DataError(source, f"written by a newer emofuse (format {record['format_version']}); upgrade emofuse")
        known = set(cls.__dataclass_fields__)
        body = {k: v for k, v in record.items() if k in known}
        missing = {"name", "settings", "spec", "needs", "classes"} - set(body)
        if missing:
            raise DataError(source, f"missing keys {sorted(missing)}")
        return cls(**body)


@dataclass
class LoadedModel:
    info: ModelInfo
    model: nn.Module  # in eval mode, on CPU
    path: Path


# ---------------------------------------------------------------------------------------
# Writing


def _version() -> str:
    from emofuse import __version__

    return __version__


def write_model_dir(out_dir: str | Path, model: nn.Module, info: ModelInfo) -> Path:
    """Write `model`'s weights and `info` as a model directory (atomically)."""
    from safetensors.torch import save_file

    # safetensors refuses shared or strided storage: give it plain contiguous copies.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    info.emofuse_version = info.emofuse_version or _version()
    info.created = info.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    def fill(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT, "model": info.name})
        record = info.to_json()
        record["weights"] = {"file": WEIGHTS, "sha256": _sha256(tmp / WEIGHTS),
                             "parameters": int(sum(v.numel() for v in state.values()))}
        (tmp / MANIFEST).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if info.config:
            import yaml

            (tmp / "config.yaml").write_text(yaml.safe_dump(info.config, sort_keys=False), encoding="utf-8")

    return atomic_dir(Path(out_dir), fill)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Loading


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_info(model_dir: str | Path) -> ModelInfo:
    path = Path(model_dir)
    manifest = path / MANIFEST
    if not path.is_dir():
        raise DataError(path, "model directory not found")
    if not manifest.is_file():
        hint = " (this looks like a run directory: run `emofuse export RUN_DIR --out MODEL_DIR` first)" \
            if (path / "config.yaml").is_file() else ""
        raise DataError(path, f"not a model directory: no {MANIFEST}{hint}")
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(manifest, f"not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(record, dict):
        raise DataError(manifest, "must hold a JSON object")
    return ModelInfo.from_json(record, manifest)


def build_model(info: ModelInfo) -> nn.Module:
    from emofuse.models.base import InputSpec, get_model

    return get_model(info.name).build(InputSpec(**info.spec), **info.settings)


def load_model_dir(model_dir: str | Path) -> LoadedModel:
    """Rebuild the network from the registry and load its safetensors weights (no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(model_dir)
    info = read_info(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise DataError(weights, "weights file not found")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(weights, f"unreadable weights ({exc})") from None
    try:
        model = build_model(info)
    except EmofuseError as exc:
        raise DataError(path / MANIFEST, f"cannot rebuild model {info.name!r}: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise DataError(weights, f"weights do not fit model {info.name!r} ({first})") from None
    model.eval()
    return LoadedModel(info, model, path)


# ---------------------------------------------------------------------------------------
# Export from a run directory of `emofuse train`


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg})") from None


def fold_dirs(run_dir: Path) -> list[Path]:
    return sorted((p for p in run_dir.glob("fold-*") if p.is_dir() and p.name[5:].isdigit()),
                  key=lambda p: int(p.name[5:]))


def _exported_normaliser(record: dict | None) -> dict | None:
    if record and record.get("mode") == "speaker":
        return {"mode": "speaker"}
    return record


def validation_score(fold_dir: Path) -> tuple[str, float | None]:
    """(monitor, best validation score) of a finished fold, as the engine recorded it.

    The engine selects each fold's best epoch on a validation monitor (val UA by default);
    older run directories record `val_ua` directly. With `protocol.backend` the back-end predicts,
    so its validation UA (the one its C was chosen on) is the fold's score.
    """
    metrics = _read_json(fold_dir / "metrics.json")
    if "backend" in metrics:  # protocol.backend: the refitted output layer is what predicts
        return "backend_val_ua", metrics["backend"].get("val_ua")
    if "val_score" in metrics or "monitor" in metrics:
        return str(metrics.get("monitor") or "val_ua"), metrics.get("val_score")
    if "val_ua" in metrics:
        return "val_ua", metrics["val_ua"]
    marker = fold_dir / "trained.json"
    if marker.is_file():
        trained = _read_json(marker)
        return str(trained.get("monitor", "val_ua")), trained.get("best_score", trained.get("best_val_ua"))
    return "val_ua", None


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


def _checkpoint_state(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of a Lightning checkpoint, read with weights_only=True when it allows."""
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    how = "weights_only"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_exc:  # noqa: BLE001 - an older checkpoint may hold non-tensor objects
        try:
            # The user's own run directory, at export time only; the model directory that
            # comes out holds tensors only and is what prediction loads.
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            how = f"full unpickling (weights_only refused: {type(safe_exc).__name__})"
        except Exception as exc:  # noqa: BLE001
            raise DataError(path, f"cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(path, "not a checkpoint with a state dict of tensors")
    return state, how


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
    fitted = _read_json(fold_dir / "normaliser.json")
    metrics = _read_json(fold_dir / "metrics.json") if (fold_dir / "metrics.json").is_file() else {}
    trained_path = fold_dir / "trained.json"
    if trained_path.is_file():
        best = Path(_read_json(trained_path)["best_checkpoint"])
        checkpoint = best if best.is_absolute() else fold_dir / best
    else:
        found = sorted((fold_dir / "checkpoints").glob("best-*.ckpt"))
        if not found:
            raise DataError(fold_dir, "no trained.json and no checkpoints/best-*.ckpt: the fold has not finished training")
        checkpoint = found[-1]
    state, how = _checkpoint_state(checkpoint)
    state = _strip_prefix(state, "model.")  # EmotionModule keeps the network as `self.model`

    model_section = dict(fitted.get("model") or run_config.get("model") or {})
    if "name" not in model_section:
        raise DataError(fold_dir / "normaliser.json", "no model name recorded")
    trained_name = model_section.pop("name")
    spec = dict(fitted["spec"])
    network = _build_trained(trained_name, model_section, spec)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DataError(checkpoint, f"checkpoint does not fit model {trained_name!r} "
                                    f"({' '.join(str(exc).split())[:300]})") from None
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
    run_metrics = _read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
    info = ModelInfo(
        name=name,
        settings=_plain(settings),
        spec=spec,
        needs=needs,
        classes=list(fitted["classes"]),
        label_set=fitted.get("label_set"),
        acoustic=acoustic,
        acoustic_settings=dict(frame.settings) if frame else {},
        hop=frame.hop if frame else 0.01,
        words=words,
        # text-only models trained on the written transcript read it the same way at prediction time
        align=("written" if features.get("align") == "written" else "auto") if reads_words else "none",
        max_frames=features.get("max_frames"),
        max_words=features.get("max_words"),
        trim=features.get("trim"),
        # per-speaker statistics describe the training corpus's speakers, not a new one: keep the mode only
        normaliser=_exported_normaliser(fitted.get("normaliser")) if acoustic else None,
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
            "checkpoint": os.path.relpath(checkpoint, fold_dir),
            "checkpoint_read_with": how,
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
    from emofuse.training.backend import Backend

    backend = Backend.from_dict(_read_json(path), source=path)
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


def _plain(value: Any) -> Any:
    """JSON-ready copy (tuples become lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
