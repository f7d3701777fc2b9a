"""Experiment configs: YAML files under `configs/<corpus>/<name>.yaml`, checked before any work.

A config names the data (manifest or corpus folder, label set, features, alignment), the
model (a registry name plus its settings), the optimiser, the trainer, the fold protocol and
the seed. Any key can be overridden as a dotted `key=value` (`trainer.max_epochs=1
model.dropout=0.4 run_dir=/tmp/x`); values are coerced to the type the schema declares.

Everything that can be checked without data is checked in `load_config`: an unknown
section, key, model name, model setting, label set, optimiser or protocol is a ConfigError
that lists the valid choices. `to_dict` gives the resolved config that the run directory
keeps as `config.yaml`. See configs/README.md for the schema with every default.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from emofuse.errors import ConfigError
from emofuse.features.normalise import Normalisation
from emofuse.models.refitted_output import KINDS
from emofuse.io import atomic_write_text
from emofuse.corpora.labels import is_label_set_file

OPTIMISERS = ("adam", "adamw", "sgd")
ALIGN_SOURCES = ("auto", "corpus", "forced", "asr", "proportional", "text", "written", "none")
# What `make_folds` understands (emofuse.training.splits); kept here so a typo fails before
# any data is read even when the splits module is missing.
MONITORS = ("val_ua", "val_wa", "val_macro_f1", "val_weighted_f1", "val_loss")
PROTOCOLS = ("speaker-kfold", "loso-session", "loso-speaker", "aguilar", "official", "cross-corpus")


@dataclass
class DataConfig:
    manifest: str | None = None  # JSONL manifest written by `emofuse prepare` (relative: to the cwd)
    corpus: str | None = None  # corpus kind for load_corpus (ravdess, meld, iemocap, ...) without a manifest
    path: str | None = None  # that corpus's folder
    # classes and their order; original labels are mapped through it: a built-in name, auto (the
    # classes of the training data with >= min_class_count utterances, sorted), or a YAML file
    # {name, classes, map}; with data.classes, this set's name (corpora/labels.py)
    label_set: str | None = "ravdess4"
    classes: list[str] | None = None  # inline label set: the classes, in order
    label_map: dict | None = None  # with data.classes: {original label: class or null (left out)}
    min_class_count: int = 10  # label_set auto: rarer classes are dropped (and reported)
    # protocol cross-corpus: the test corpus (a manifest), mapped through the same label set, and
    # its feature store (default features/<its corpus name>)
    test_manifest: str | None = None
    test_store: str | None = None
    store: str | None = None  # feature store root; default features/<corpus name>
    acoustic: str | None = "compare_lld"  # frame feature, or null for text-only models
    words: str | None = None  # word vectors (minilm, glove50, ...), or null for acoustic-only models
    align: str = "auto"  # word times from: auto, corpus, forced, asr, proportional; text (words, no times); none
    # the recogniser of align asr (and auto without a transcript): whisper (the packaged tiny.en),
    # whisper:PATH (a CTranslate2 Whisper folder), either with #language=CODE, or sphinx
    asr: str = "whisper"
    # z-normalise acoustic frames: fold (= true; the training part's statistics, the papers'),
    # speaker (each speaker's own; see features.normalise), utterance (each its own), none (= false)
    normalise: bool | str = True
    max_frames: int | None = None  # truncate longer utterances (the papers: 700); null = never
    max_words: int | None = None  # truncate longer transcripts (the papers: 30); null = never
    # keep only the speech span (first to last speech frame: the words' span when word times
    # exist, else energy VAD) plus this many seconds either side; null = every frame
    trim: float | None = None
    workers: int = 1  # feature extraction processes
    device: str = "auto"  # where hf: encoders extract: auto (the GPU when there is one), cpu, cuda, cuda:N
    loader_workers: int = 0  # DataLoader worker processes


@dataclass
class OptimConfig:
    name: str = "adam"  # adam, adamw or sgd
    lr: float = 1e-4
    weight_decay: float = 1e-5  # L2 (adam, sgd) or decoupled decay (adamw)
    momentum: float = 0.9  # sgd only
    grad_clip: float | None = 5.0  # gradient-norm clip; null = off
    class_weights: bool = False  # weight the cross-entropy by inverse training-class frequency


@dataclass
class TrainerConfig:
    max_epochs: int = 30
    min_epochs: int = 1
    batch_size: int = 64
    eval_batch_size: int | None = None  # default: batch_size
    monitor: str = "val_ua"  # model selection + early stopping: val_ua, val_wa, val_macro_f1, val_weighted_f1, val_loss
    patience: int | None = 10  # early stopping on the monitor; null = train all max_epochs
    bucket_chunk: int = 50  # length bucketing: sort by length inside shuffled chunks of this many batches
    accelerator: str = "auto"  # cpu, gpu, auto
    devices: int | str = 1  # processes per node (DDP when > 1), or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto, ddp, ...
    precision: str = "32-true"
    threads: int = 0  # torch.set_num_threads per process; 0 = leave the default
    deterministic: bool = True  # seed everything; warn on non-deterministic kernels
    progress: bool = True  # Rich progress bar
    log_every_n_steps: int = 10
    # ema: decay of an exponential moving average of the weights, updated after every optimiser
    # step (Lightning's EMAWeightAveraging); validation, the checkpoints, the test pass and export
    # all use the averaged weights. null = off (the papers' setting)
    ema: float | None = None


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")  # Lightning's names
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "32", "16", "bf16", "64")
BACKENDS = KINDS  # protocol.backend (models/backend.py, fitted by training/backend.py)


@dataclass
class ProtocolConfig:
    """How `emofuse.training.splits.make_folds` cuts the corpus (its keyword arguments)."""

    name: str = "speaker-kfold"  # speaker-kfold, loso-session, loso-speaker, aguilar, official
    k: int = 5  # folds for speaker-kfold
    val_fraction: float | None = 0.1  # validation speakers carved from the training speakers
    val_speakers: int | None = None  # or this many validation speakers (overrides val_fraction)
    # refit: choose the number of epochs on the validation speakers, then train a fresh network on
    # training + validation speakers for that many epochs and test it (training/loop.train_fold)
    refit: bool = False
    # backend: refit the output layer as a logistic regression on the trained network's utterance
    # vectors, "lr" or "speaker-lr" (z-scored per speaker); C chosen on the validation speakers
    # (training/backend.py); null = the network's own classifier
    backend: str | None = None


@dataclass
class AugmentConfig:
    """Training-time masking of the normalised acoustic frames, SpecAugment-style (Park et al.
    2019): spans of frames and bands of feature dimensions set to 0, the normalised mean.
    Off by default, as in the papers; validation, test and prediction never see it."""

    time_masks: int = 0  # spans of frames masked per training utterance
    time_width: int = 20  # each span 0..time_width frames (at most a fifth of the utterance)
    feature_masks: int = 0  # bands of feature dimensions masked per training utterance
    feature_width: int = 10  # each band 0..feature_width dimensions

    @property
    def active(self) -> bool:
        return (self.time_masks > 0 and self.time_width > 0) or (self.feature_masks > 0 and self.feature_width > 0)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    corpus: str = "corpus"  # names the run folder runs/<corpus>/<name>; defaults to the config's folder
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=dict)  # {"name": registry name, **settings of its config dataclass}
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    fold: int | None = None  # run only this fold
    run_dir: str | None = None  # default runs/<corpus>/<name>

    @property
    def model_name(self) -> str:
        return self.model["name"]

    @property
    def model_settings(self) -> dict:
        return {k: v for k, v in self.model.items() if k != "name"}

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.corpus / self.name

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


SECTIONS = {"data": DataConfig, "optim": OptimConfig, "trainer": TrainerConfig, "protocol": ProtocolConfig,
            "augment": AugmentConfig}
TOP_LEVEL = {"name", "corpus", "seed", "fold", "run_dir", "model", *SECTIONS}
# Path values may name environment variables: ${EMOFUSE_DATA:-../shared/data}/ravdess.
PATH_KEYS = ("manifest", "path", "store", "test_manifest", "test_store")
# Keys a resumed run may change: they decide where and how fast it runs, not what it computes.
RESUMABLE_KEYS = {
    "fold", "run_dir", "data.manifest", "data.path", "data.store", "data.workers", "data.device", "data.loader_workers",
    "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.threads",
    "trainer.progress", "trainer.log_every_n_steps", "trainer.eval_batch_size",
}


# ---------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), *, raw: dict | None = None
                ) -> ExperimentConfig:
    """Read a YAML config (or `raw`), apply dotted overrides, validate everything checkable.

    `name` defaults to the file's stem and `corpus` to its folder's name, so
    `configs/ravdess4/b-aco-1.yaml` runs in `runs/ravdess4/b-aco-1` unless told otherwise.
    """
    if raw is None:
        if path is None:
            raise ConfigError("no config file given")
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a config is a mapping of sections, got {type(raw).__name__}")
        raw = {"name": path.stem, "corpus": path.parent.name, **raw}
    raw = _deep_copy(raw)
    for item in overrides:
        apply_override(raw, item)
    return build_config(raw, source=str(path) if path else "<config>")


def apply_override(raw: dict, item: str) -> None:
    """Set `section.key=value` (or `key=value`) in a raw config dict; the value stays a string
    until `build_config` coerces it to the schema's type."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. trainer.max_epochs=1)")
    key, value = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"override {item!r}: empty key")
    if parts[0] not in TOP_LEVEL:
        raise ConfigError(f"unknown config key {parts[0]!r} in override {item!r}; valid: {', '.join(sorted(TOP_LEVEL))}")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = _Override(value)


class _Override(str):
    """A command-line value: parsed as YAML only where the schema does not want a string."""


def build_config(raw: dict, source: str = "<config>") -> ExperimentConfig:
    unknown = set(raw) - TOP_LEVEL
    if unknown:
        raise ConfigError(f"{source}: unknown config key(s) {sorted(unknown)}; valid: {', '.join(sorted(TOP_LEVEL))}")
    if "model" not in raw or not isinstance(raw["model"], dict) or "name" not in raw["model"]:
        raise ConfigError(f"{source}: the config needs a model section with a name (e.g. model: {{name: B-ACO-1}})")
    kwargs: dict[str, Any] = {}
    hints = typing.get_type_hints(ExperimentConfig)
    for key in ("name", "corpus", "seed", "fold", "run_dir"):
        if key in raw:
            kwargs[key] = coerce(key, raw[key], hints[key])
    for section, cls in SECTIONS.items():
        value = raw.get(section) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {section} must be a mapping, got {value!r}")
        kwargs[section] = _build_section(section, cls, value)
    for key in PATH_KEYS:
        value = getattr(kwargs["data"], key)
        if value is not None:
            setattr(kwargs["data"], key, expand_path(value))
    if is_label_set_file(kwargs["data"].label_set):
        kwargs["data"].label_set = expand_path(kwargs["data"].label_set)
    if kwargs["data"].classes is not None and "label_set" not in (raw.get("data") or {}):
        kwargs["data"].label_set = None  # the inline classes are the set; the default name would mislead
    kwargs["model"] = validate_model(raw["model"])
    cfg = ExperimentConfig(**kwargs)
    validate(cfg)
    return cfg


def _build_section(section: str, cls: type, value: dict):
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    unknown = set(value) - set(valid)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(f'{section}.{k}' for k in sorted(unknown))}; "
                          f"valid {section} keys: {', '.join(valid)}")
    return cls(**{k: coerce(f"{section}.{k}", v, hints[k]) for k, v in value.items()})


def validate_model(section: dict) -> dict:
    """The model section: a registered name and settings its config dataclass accepts."""
    from emofuse.models.base import get_model  # the registry lists the known models in its error

    name = _parse_loose(section["name"])
    entry = get_model(str(name))
    cls = entry.config_cls
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    settings = {k: v for k, v in section.items() if k != "name"}
    unknown = set(settings) - set(valid)
    if unknown:
        raise ConfigError(f"model {entry.name!r}: unknown setting(s) {', '.join(f'model.{k}' for k in sorted(unknown))}; "
                          f"valid: {', '.join(valid)}")
    resolved = {"name": entry.name}
    resolved.update({k: coerce(f"model.{k}", v, hints[k]) for k, v in settings.items()})
    _check_model_ranges(entry, resolved)
    try:
        cls(**{**entry.defaults, **{k: v for k, v in resolved.items() if k != "name"}})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {entry.name!r}: invalid settings ({exc})") from exc
    return resolved


def _check_model_ranges(entry, settings: dict) -> None:
    """Numeric model settings in their range, so that `model.dropout=1.5` or `model.hidden=0`
    stops at load time (before any feature extraction), not as a traceback from a layer.

    Sizes and counts (ints, and tuples of them such as conv_filters) are >= 1, except where the
    model's default is 0, which there means "derived" (gmu_size, attention_size: 0 = hidden);
    dropouts are probabilities in [0, 1); other floats (loss weights, margins, rates) are finite
    and >= 0."""
    defaults = {f.name: f.default for f in fields(entry.config_cls)} | dict(entry.defaults)
    for key, value in settings.items():
        if key == "name" or isinstance(value, bool):
            continue
        where = f"model.{key}={value!r}"
        if isinstance(value, int):
            low = 0 if defaults.get(key) == 0 else 1
            if value < low:
                raise ConfigError(f"{where} is out of range: must be >= {low}"
                                  + (" (0 = derived from the other sizes)" if low == 0 else ""))
        elif isinstance(value, float):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{where} is out of range: must be a finite number >= 0")
            if "dropout" in key and value >= 1:
                raise ConfigError(f"{where} is out of range: a dropout probability is in [0, 1)")
        elif isinstance(value, tuple) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            if min(value) < 1:
                raise ConfigError(f"{where} is out of range: every size must be >= 1")


def validate(cfg: ExperimentConfig) -> None:
    """Cross-field checks that need no data: choices, ranges, and what the model needs."""
    from emofuse.models.base import get_model

    d, o, t, p = cfg.data, cfg.optim, cfg.trainer, cfg.protocol
    validate_labels(d)
    if d.manifest is None and (d.corpus is None or d.path is None):
        raise ConfigError("data: give data.manifest, or data.corpus and data.path")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(d.device)):  # whether a GPU is there: checked at extraction
        raise ConfigError(f"data.device={d.device!r}; valid: auto, cpu, cuda, cuda:N")
    aligns = _known("emofuse.align", "MODES", ALIGN_SOURCES)
    if d.align not in aligns:
        raise ConfigError(f"data.align={d.align!r}; valid: {', '.join(aligns)}")
    try:
        from emofuse.align import check_asr

        check_asr(d.asr)
    except ConfigError as exc:
        raise ConfigError(f"data.asr: {exc}") from None
    frames = _known("emofuse.features.frames", "frame_feature_names", None)
    if d.acoustic is not None and frames is not None and not _is_frame_feature(d.acoustic):
        raise ConfigError(f"data.acoustic={d.acoustic!r}; valid: {', '.join(frames)}, or null")
    words = _known("emofuse.features.words", "WORD_FEATURES", None)
    if d.words is not None and words is not None:
        from emofuse.features.words import is_word_feature

        if not is_word_feature(d.words):
            raise ConfigError(f"data.words={d.words!r}; valid: {', '.join(words)}, or null")
    Normalisation.mode_of(d.normalise)  # a ConfigError naming the valid modes
    if t.monitor not in MONITORS:
        raise ConfigError(f"trainer.monitor={t.monitor!r}; valid: {', '.join(MONITORS)}")
    if o.name not in OPTIMISERS:
        raise ConfigError(f"optim.name={o.name!r}; valid: {', '.join(OPTIMISERS)}")
    protocols = _known("emofuse.training.splits", "PROTOCOLS", PROTOCOLS)
    if p.name not in protocols:
        raise ConfigError(f"protocol.name={p.name!r}; valid: {', '.join(protocols)}")
    for key, value, low in (
        ("optim.lr", o.lr, 0.0), ("trainer.max_epochs", t.max_epochs, 1), ("trainer.batch_size", t.batch_size, 1),
        ("trainer.num_nodes", t.num_nodes, 1), ("trainer.bucket_chunk", t.bucket_chunk, 1), ("protocol.k", p.k, 2),
    ):
        if value < low or (key == "optim.lr" and value <= 0):
            raise ConfigError(f"{key}={value} is out of range (must be {'> 0' if key == 'optim.lr' else f'>= {low}'})")
    for key, value in (("data.max_frames", d.max_frames), ("data.max_words", d.max_words),
                       ("trainer.patience", t.patience), ("trainer.eval_batch_size", t.eval_batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} must be >= 1 or null")
    if t.ema is not None and not 0.0 < t.ema < 1.0:
        raise ConfigError(f"trainer.ema={t.ema} must be a decay in (0, 1) (e.g. 0.99) or null")
    if d.trim is not None and not (isinstance(d.trim, (int, float)) and d.trim >= 0):
        raise ConfigError(f"data.trim={d.trim!r} must be seconds >= 0 or null")
    if p.name == "cross-corpus" and not d.test_manifest:
        raise ConfigError("protocol.name=cross-corpus tests on another corpus: set data.test_manifest "
                          "(a manifest written by `emofuse prepare`)")
    if d.test_manifest and p.name != "cross-corpus":
        raise ConfigError(f"data.test_manifest is read by protocol.name=cross-corpus only (protocol.name={p.name!r})")
    if p.backend is not None and p.backend not in BACKENDS:
        raise ConfigError(f"protocol.backend={p.backend!r}; valid: {', '.join(BACKENDS)}, or null")
    if p.backend and p.refit:
        raise ConfigError(f"protocol.backend={p.backend!r} with protocol.refit: the back-end's C is chosen on the "
                          "validation speakers, which a refitted network has been trained on; use one or the other")
    if p.val_fraction is not None and not 0 <= p.val_fraction < 1:
        raise ConfigError(f"protocol.val_fraction={p.val_fraction} must be in [0, 1) or null")
    if p.val_speakers is not None and p.val_speakers < 1:
        raise ConfigError(f"protocol.val_speakers={p.val_speakers} must be >= 1 or null")
    for key in ("time_masks", "time_width", "feature_masks", "feature_width"):
        if getattr(cfg.augment, key) < 0:
            raise ConfigError(f"augment.{key}={getattr(cfg.augment, key)} must be >= 0")
    if cfg.augment.active and d.acoustic is None:
        raise ConfigError("augment masks acoustic frames, but data.acoustic is null")
    if isinstance(t.devices, str) and t.devices != "auto":
        raise ConfigError(f"trainer.devices={t.devices!r}; give a number or auto")
    # Lightning checks these only when a fold starts, after config.yaml is written: check them here
    if t.accelerator not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={t.accelerator!r}; valid: {', '.join(ACCELERATORS)}")
    if str(t.precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={t.precision!r}; valid: {', '.join(PRECISIONS)}")
    if isinstance(t.devices, int) and t.devices < 1 and t.devices != -1:  # Lightning's -1: every device
        raise ConfigError(f"trainer.devices={t.devices} must be >= 1, -1 (every device) or auto")
    if cfg.fold is not None and cfg.fold < 0:
        raise ConfigError(f"fold={cfg.fold} must be >= 0")
    entry = get_model(cfg.model_name)
    if entry.fitted:
        validate_fitted(cfg, entry.name)
    needs = entry.needs
    if "acoustic" in needs and d.acoustic is None:
        raise ConfigError(f"model {cfg.model_name!r} reads acoustic frames: set data.acoustic (e.g. compare_lld)")
    if "words" in needs and d.words is None:
        raise ConfigError(f"model {cfg.model_name!r} reads word vectors: set data.words (e.g. minilm)")
    if "word_frames" in needs and (d.acoustic is None or d.align in ("none", "text", "written")):
        raise ConfigError(f"model {cfg.model_name!r} needs word times on the acoustic grid: "
                          "set data.acoustic and a data.align other than none, text or written")


def validate_fitted(cfg: ExperimentConfig, name: str) -> None:
    """A fitted model (the linear probe, `ModelEntry.fitted`) trains nothing by gradient: what
    would change a trained network's result but not its fit is refused here, not ignored.
    trainer.* and optim.* are not read at all (training.loop.fit_fold)."""
    mode = Normalisation.mode_of(cfg.data.normalise)
    if mode not in ("speaker", "fold"):
        raise ConfigError(f"model {name!r} z-scores its pooled vectors as data.normalise says: speaker or fold "
                          f"(true), not {mode!r} (each utterance's own statistics would erase its mean and std)")
    if cfg.protocol.backend:
        raise ConfigError(f"model {name!r} is itself a logistic back-end (fitted as data.normalise says); "
                          f"remove protocol.backend={cfg.protocol.backend!r}")
    if cfg.protocol.refit:
        raise ConfigError(f"model {name!r} chooses C on the validation speakers and trains no epochs; "
                          "protocol.refit does not apply")
    if cfg.augment.active:
        raise ConfigError(f"model {name!r} trains no network for augment to mask frames for; remove augment.*")
    if cfg.trainer.devices not in (1, "1") or cfg.trainer.num_nodes != 1:
        raise ConfigError(f"model {name!r} is fitted in one process (scikit-learn); trainer.devices and "
                          "trainer.num_nodes must be 1")


def validate_labels(d: DataConfig) -> None:
    """data.label_set / data.classes / data.label_map: one definition of the classes, checked.

    A label-set file is read here, so a missing file or a bad class fails before any work."""
    from emofuse.corpora.labels import LABEL_SETS, custom_label_set, get_label_set, is_label_set_file
    from emofuse.errors import LabelError

    if d.min_class_count < 1:
        raise ConfigError(f"data.min_class_count={d.min_class_count} must be >= 1")
    if d.classes is not None:
        if d.label_set == "auto" or d.label_set in LABEL_SETS or is_label_set_file(d.label_set):
            raise ConfigError(f"data.classes and data.label_set={d.label_set!r} both define the classes; give one "
                              "(with data.classes, data.label_set may only name the set)")
        try:
            custom_label_set(d.label_set or "custom", d.classes, d.label_map, source="data.classes/data.label_map")
        except LabelError as exc:
            raise ConfigError(f"{exc}") from None
        return
    if d.label_map is not None:
        raise ConfigError("data.label_map needs data.classes (the classes it maps to); a label-set file holds "
                          "its own map")
    if d.label_set is None:
        raise ConfigError(f"data.label_set is null: give a built-in name ({', '.join(LABEL_SETS)}), auto, "
                          "a YAML file {name, classes, map}, or data.classes")
    if d.label_set == "auto":
        return
    try:
        get_label_set(d.label_set)
    except LabelError as exc:
        raise ConfigError(f"data.label_set: {exc}") from None


def expand_path(value: str) -> str:
    """Expand ${VAR}, ${VAR:-default} and ~ in a path value; an unset ${VAR} without default is an error."""

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(3)
        if name in os.environ and os.environ[name] != "":
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{value!r}: environment variable {name} is not set (write ${{{name}:-default}})")

    return os.path.expanduser(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", substitute, value))


def _is_frame_feature(name: str) -> bool:
    """A built-in frame feature or an hf: speech encoder folder (features.frames)."""
    from emofuse.features.frames import is_frame_feature

    return is_frame_feature(name)


def _known(module: str, name: str, fallback):
    """A list of valid choices owned by another stage (its registry), or `fallback` when that
    stage is not installed."""
    import importlib

    try:
        value = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return fallback
    return tuple(value() if callable(value) else value)


# ---------------------------------------------------------------------------------------
# Type coercion


def coerce(key: str, value: Any, tp: Any) -> Any:
    """`value` as the schema type `tp` (str, int, float, bool, X | None, tuple/list, dict, Literal)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return _parse_loose(value)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and _is_null(value):
            return None
        for arg in args:  # first the types the raw value already has, then conversions
            if arg is not type(None) and _instance(value, arg):
                return value
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r}: expected {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}={value!r}; valid: {', '.join(map(str, args))}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())  # YAML 1.1 reads 1e-4 as a string: accept it
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r}: expected a number")
    if tp is str:
        if isinstance(value, str):
            return str(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r}: expected a string")
    if origin in (tuple, list) or tp in (tuple, list):
        value = _parse_loose(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list like [1, 2]")
        inner = args[0] if args else Any
        items = [coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        value = _parse_loose(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        return value
    return _parse_loose(value)


_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~", ""))


def _instance(value: Any, tp: Any) -> bool:
    if isinstance(value, _Override):
        return False  # a command-line string: always converted to the schema's type
    if tp is float:
        return isinstance(value, float)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(tp, type) and isinstance(value, tp) and typing.get_origin(tp) is None


def _parse_loose(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return str(value)
    return value


def _type_name(tp: Any) -> str:
    return " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a)) for a in typing.get_args(tp))


def _plain(value: Any) -> Any:
    if isinstance(value, _Override):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------
# The resolved config in the run directory


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(a: dict, b: dict) -> list[str]:
    """Keys (dotted) whose values differ between two resolved configs."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def save_config(cfg: ExperimentConfig, run_dir: Path, write: bool = True) -> Path:
    """Write `run_dir/config.yaml` atomically (`write=False`: only check, write nothing).
    A run directory that already holds a different config (other than where/how fast it runs)
    is refused: its folds would mix two experiments.
    A folder holding nothing but its config.yaml (a start that failed before any fold, e.g. on a
    missing feature) has no results to mix, so a corrected config replaces it."""
    path = run_dir / "config.yaml"
    check_run_dir(run_dir)
    resolved = cfg.to_dict()
    if path.is_file() and any(not _config_only(entry.name) for entry in run_dir.iterdir()):
        previous = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        # A key added to the schema after that run started (absent there) still at its default is no change.
        defaults, before = flatten(ExperimentConfig().to_dict()), flatten(previous)
        now = flatten(resolved)
        changed = [k for k in config_differences(previous, resolved) if k not in RESUMABLE_KEYS
                   and not (k not in before and k in defaults and now.get(k) == defaults[k])]
        if changed:
            raise ConfigError(
                f"{path}: this run directory holds a run with a different config "
                f"({', '.join(changed)}); use another run_dir=... or delete the folder"
            )
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, yaml.safe_dump(resolved, sort_keys=False))
    return path


def check_run_dir(run_dir: Path) -> None:
    """`run_dir` is a folder or can become one: a file there (or above it) is one ConfigError."""
    from emofuse.io import file_in_the_way

    blocker = file_in_the_way(run_dir)
    if blocker is not None:
        raise ConfigError(f"run_dir={run_dir}: {'is a file' if blocker == run_dir else f'{blocker} is a file'}, "
                          "not a run directory")


def _config_only(name: str) -> bool:
    """config.yaml itself, or a stray temporary file of an interrupted write of it (emofuse/io.py)."""
    return name == "config.yaml" or (name.startswith(".config.yaml.") and name.endswith(".tmp"))
