"""The experiment schema: every key a config may set, its type, default and meaning, and the
checks of a whole config that need no data (`validate`: choices, ranges, what the model needs).

Pydantic dataclasses: `emofuse.training.config` validates a YAML mapping against them (lax
mode: "64" is an int, "1e-4" a float, "false" a bool; unknown keys are refused), and they stay
plain dataclasses for the code that reads them (`dataclasses.asdict(cfg.optim)`). The meanings
here are the rows of `configs/README.md`'s key tables (`update_readme`), so the two cannot drift.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from emofuse.errors import ConfigError
from emofuse.io import plain
from emofuse.features.normalise import Normalisation
from emofuse.models.refitted_output import KINDS
from emofuse.training.splits import PROTOCOLS

# lax types, but a number where a string belongs is its text (`name: 2024`), and no unknown key
SCHEMA = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
OPTIMISERS = ("adam", "adamw", "sgd")
MONITORS = ("val_ua", "val_wa", "val_macro_f1", "val_weighted_f1", "val_loss")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")  # Lightning's names
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "32", "16", "bf16", "64")


def setting(default: Any = None, meaning: str = "", *, shown: str | None = None, resumable: bool = False,
            **kwargs) -> Any:
    """A schema field. `shown`: the default as the README writes it where the value itself would
    mislead (`run_dir: null` means runs/<corpus>/<name>); `resumable`: a resumed run may change it
    (it decides where and how fast the run goes, not what it computes)."""
    return Field(default, description=meaning, json_schema_extra={"shown": shown, "resumable": resumable}, **kwargs)


@dataclass(config=SCHEMA)
class DataConfig:
    manifest: str | None = setting(None, "JSONL manifest written by `emofuse prepare` (relative: to the working "
                                   "directory)", resumable=True)
    corpus: str | None = setting(None, "or: a corpus kind (`ravdess`, `iemocap`, `mosei`, `meld`, `manifest`), "
                                 "read from `path`")
    path: str | None = setting(None, "that corpus's folder", resumable=True)
    label_set: str | None = setting("ravdess4", "classes and their order: a built-in set (`ravdess4`, `ravdess8`, "
                                    "`iemocap4`, `mosei6`, `meld7`), `auto`, or a YAML file (below); original labels "
                                    "are mapped through it, excluded ones dropped; with `classes`, only the set's name")
    classes: list[str] | None = setting(None, "an inline label set: the classes in order (below)")
    label_map: dict | None = setting(None, "with `classes`: `{original: class or null}` (below)")
    min_class_count: int = setting(10, "`label_set: auto`: classes with fewer utterances are dropped, and the run "
                                   "says which")
    test_manifest: str | None = setting(None, "`protocol.name: cross-corpus`: the test corpus (a manifest), mapped "
                                        "through the same label set")
    test_store: str | None = setting(None, "`protocol.name: cross-corpus`: the test corpus's feature store",
                                     shown="`null` (= `features/<its corpus name>`)")
    store: str | None = setting(None, "feature store root; missing features are extracted before training",
                                shown="`null` (= `features/<corpus>`)", resumable=True)
    acoustic: str | None = setting(
        "compare_lld", "frame feature (`compare_lld`, `fbank40`, `spectrogram8k`, `waveform`; `whisper`: Whisper "
        "tiny.en's encoder, 384-d on 20 ms frames, `whisper:PATH` any CTranslate2 Whisper folder, `#pad=30` to "
        "encode each clip padded to 30 s; `hf:PATH`) or `null`")
    words: str | None = setting(None, "word vectors (`minilm`, `glove50`, `glove-file:PATH`) or `null`")
    align: str = setting("auto", "word times: `auto`, `corpus`, `forced`, `asr`, `proportional`; `text` (the "
                         "spoken-form words, no times); `written` (the transcript as written, case and punctuation "
                         "kept, no times: for text-only models); `none`")
    asr: str = setting(
        "whisper", "the recogniser of `align: asr` (and of `auto`/`forced` when there is no transcript or it cannot "
        "be aligned): `whisper` (the packaged Whisper tiny.en, sha256-checked), `whisper:PATH` (a CTranslate2 "
        "Whisper folder, e.g. from `ct2-transformers-converter` or a faster-whisper hub snapshot), either with "
        "`#language=CODE`, or `sphinx` (pocketsphinx, the recogniser before Whisper; its stores keep their keys). "
        "Forced alignment of a transcript is always pocketsphinx")
    normalise: bool | str = setting(
        True, "z-normalise acoustic frames: `fold` (= `true`; statistics of the fold's training part only, as the "
        "papers do), `speaker` (each speaker with their own utterances' statistics, test speakers included, labels "
        "never read: the usual speaker normalisation of speaker-independent SER; a new recording at prediction time "
        "falls back to its own statistics and says so), `utterance` (each utterance with its own; identical at "
        "prediction time), `none` (= `false`)", union_mode="left_to_right")
    max_frames: int | None = setting(None, "truncate longer utterances (the papers: 700); `null` = never")
    max_words: int | None = setting(None, "truncate longer transcripts (the papers: 30); `null` = never")
    trim: float | None = setting(
        None, "keep only the speech span (first to last word with word times, else energy VAD) plus this many "
        "seconds either side; prediction trims new recordings the same way. RAVDESS files are ~46 % silence")
    workers: int = setting(1, "feature-extraction processes", resumable=True)
    device: str = setting("auto", "where `hf:` encoders extract: `auto` (the GPU when there is one), `cpu`, `cuda`, "
                          "`cuda:N`", resumable=True)
    loader_workers: int = setting(0, "DataLoader worker processes", resumable=True)


@dataclass(config=SCHEMA)
class OptimConfig:
    name: str = setting("adam", "`adam`, `adamw` or `sgd`")
    lr: float = setting(1e-4, "learning rate")
    weight_decay: float = setting(1e-5, "L2 (adam, sgd) or decoupled decay (adamw)")
    momentum: float = setting(0.9, "sgd only")
    grad_clip: float | None = setting(5.0, "gradient-norm clipping; `null` = off")
    class_weights: bool = setting(False, "cross-entropy weighted by inverse training-class frequency (n / (C n_c))")


@dataclass(config=SCHEMA)
class TrainerConfig:
    max_epochs: int = setting(30, "most epochs a fold trains")
    min_epochs: int = setting(1, "epochs before early stopping may end a fold")
    batch_size: int = setting(64, "training batch (length-bucketed: sorted by length inside shuffled chunks)")
    eval_batch_size: int | None = setting(None, "validation and test batch", shown="`null` (= `batch_size`)",
                                            resumable=True)
    monitor: str = setting("val_ua", "best epoch + early stopping on the validation part: `val_ua`, `val_wa`, "
                           "`val_macro_f1`, `val_weighted_f1`, `val_loss`")
    patience: int | None = setting(10, "early-stopping patience in epochs; `null` = run all epochs")
    bucket_chunk: int = setting(50, "batches per length-sorting chunk")
    accelerator: str = setting("auto", "`cpu`, `gpu`, `auto`", resumable=True)
    devices: int | str = setting(1, "processes per node (DDP when > 1) or `auto`", resumable=True,
                                 union_mode="left_to_right")
    num_nodes: int = setting(1, "machines (DDP)", resumable=True)
    strategy: str = setting("auto", "Lightning strategy (`ddp` for several devices)", resumable=True)
    precision: str = setting("32-true", "Lightning precision")
    threads: int = setting(0, "`torch.set_num_threads` per process; 0 = default", resumable=True)
    deterministic: bool = setting(True, "deterministic kernels where they exist (warn otherwise)")
    progress: bool = setting(True, "Rich progress bar", resumable=True)
    log_every_n_steps: int = setting(10, "CSV / TensorBoard logging interval", resumable=True)
    ema: float | None = setting(
        None, "decay of an exponential moving average of the weights, updated after every optimiser step (e.g. "
        "`0.99`, a time constant of ~100 steps); validation, early stopping, the checkpoints, the test pass and "
        "export all use the averaged weights (the raw ones stay in each checkpoint for resume). Off in the papers")


@dataclass(config=SCHEMA)
class ProtocolConfig:
    """How `emofuse.training.splits.make_folds` cuts the corpus (its keyword arguments)."""

    name: str = setting("speaker-kfold", "`speaker-kfold`, `loso-session`, `loso-speaker`, `aguilar` (IEMOCAP: per "
                        "session, val/test speaker halves, swapped), `official` (the corpus's train/dev/test, e.g. "
                        "MELD), `cross-corpus` (below)")
    k: int = setting(5, "folds for `speaker-kfold`")
    val_fraction: float | None = setting(0.1, "validation speakers carved from each training part (protocols "
                                         "without their own validation part)")
    val_speakers: int | None = setting(None, "or exactly this many validation speakers (gender-balanced when "
                                       "genders are known)")
    refit: bool = setting(False, "choose the number of epochs on the validation part, then train a fresh network "
                          "on training + validation parts for exactly that many epochs and test that one")
    backend: str | None = setting(None, "`lr` or `speaker-lr`: replace the trained network's output layer by a "
                                  "logistic regression on its utterance vectors (below)")


@dataclass(config=SCHEMA)
class AugmentConfig:
    """Training-time masking of the normalised acoustic frames, SpecAugment-style (Park et al.
    2019): spans of frames and bands of feature dimensions set to 0, the normalised mean.
    Off by default, as in the papers; validation, test and prediction never see it."""

    time_masks: int = setting(0, "spans of frames masked per training utterance")
    time_width: int = setting(20, "each span 0..`time_width` frames, never more than a fifth of the utterance")
    feature_masks: int = setting(0, "bands of feature dimensions masked per training utterance")
    feature_width: int = setting(10, "each band 0..`feature_width` dimensions")

    @property
    def active(self) -> bool:
        return (self.time_masks > 0 and self.time_width > 0) or (self.feature_masks > 0 and self.feature_width > 0)


@dataclass(config=SCHEMA)
class ExperimentConfig:
    name: str = setting("experiment", "experiment name (run folder)", shown="file name without `.yaml`")
    corpus: str = setting("corpus", "corpus label (run folder, reports)", shown="the config's folder name")
    seed: int = setting(0, "seeds everything (`lightning.seed_everything(seed, workers=True)`), folds and batch order")
    data: DataConfig = Field(default_factory=DataConfig)
    # {"name": registry name, **settings of its config dataclass}: checked against that dataclass
    model: dict = Field(default_factory=dict)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    fold: int | None = setting(None, "run only fold K (0-based)", resumable=True)
    run_dir: str | None = setting(None, "where everything is written", shown="`runs/<corpus>/<name>`", resumable=True)

    @property
    def model_name(self) -> str:
        return self.model["name"]

    @property
    def model_settings(self) -> dict:
        return {k: v for k, v in self.model.items() if k != "name"}

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.corpus / self.name

    def to_dict(self) -> dict:
        return plain(dataclasses.asdict(self))


SECTIONS = {"data": DataConfig, "optim": OptimConfig, "trainer": TrainerConfig, "protocol": ProtocolConfig,
            "augment": AugmentConfig}
TOP_LEVEL = tuple(f.name for f in dataclasses.fields(ExperimentConfig))


def schema_fields(cls: type) -> dict:
    """name -> pydantic FieldInfo (annotation resolved, description, extras), in declaration order."""
    return cls.__pydantic_fields__


def type_of(cls: type, key: str) -> Any:
    """The declared type of `key` in a dataclass (the schema's, or a model's config)."""
    return typing.get_type_hints(cls)[key]


# Keys a resumed run may change: they decide where and how fast it runs, not what it computes.
RESUMABLE_KEYS = frozenset(
    f"{prefix}{name}" for prefix, cls in (("", ExperimentConfig), *((f"{s}.", c) for s, c in SECTIONS.items()))
    for name, info in schema_fields(cls).items() if (info.json_schema_extra or {}).get("resumable"))



# ---------------------------------------------------------------------------------------
# Checks that need no data


def check_model_ranges(entry, settings: dict) -> None:
    """Numeric model settings in their range, so that `model.dropout=1.5` or `model.hidden=0`
    stops at load time (before any feature extraction), not as a traceback from a layer.

    Sizes and counts (ints, and tuples of them such as conv_filters) are >= 1, except where the
    model's default is 0, which there means "derived" (gmu_size, attention_size: 0 = hidden);
    dropouts are probabilities in [0, 1); other floats (loss weights, margins, rates) are finite
    and >= 0."""
    defaults = {f.name: f.default for f in dataclasses.fields(entry.config_cls)} | dict(entry.defaults)
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
    from emofuse.align import MODES as ALIGN_MODES, check_asr
    from emofuse.features.frames import frame_feature_names, is_frame_feature
    from emofuse.features.words import WORD_FEATURES, is_word_feature
    from emofuse.models.base import get_model

    d, o, t, p = cfg.data, cfg.optim, cfg.trainer, cfg.protocol
    validate_labels(d)
    if d.manifest is None and (d.corpus is None or d.path is None):
        raise ConfigError("data: give data.manifest, or data.corpus and data.path")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(d.device)):  # whether a GPU is there: checked at extraction
        raise ConfigError(f"data.device={d.device!r}; valid: auto, cpu, cuda, cuda:N")
    if d.align not in ALIGN_MODES:
        raise ConfigError(f"data.align={d.align!r}; valid: {', '.join(ALIGN_MODES)}")
    try:
        check_asr(d.asr)
    except ConfigError as exc:
        raise ConfigError(f"data.asr: {exc}") from None
    if d.acoustic is not None and not is_frame_feature(d.acoustic):
        raise ConfigError(f"data.acoustic={d.acoustic!r}; valid: {', '.join(frame_feature_names())}, or null")
    if d.words is not None and not is_word_feature(d.words):
        raise ConfigError(f"data.words={d.words!r}; valid: {', '.join(WORD_FEATURES)}, or null")
    Normalisation.mode_of(d.normalise)  # a ConfigError naming the valid modes
    if t.monitor not in MONITORS:
        raise ConfigError(f"trainer.monitor={t.monitor!r}; valid: {', '.join(MONITORS)}")
    if o.name not in OPTIMISERS:
        raise ConfigError(f"optim.name={o.name!r}; valid: {', '.join(OPTIMISERS)}")
    if p.name not in PROTOCOLS:
        raise ConfigError(f"protocol.name={p.name!r}; valid: {', '.join(PROTOCOLS)}")
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
    if p.backend is not None and p.backend not in KINDS:
        raise ConfigError(f"protocol.backend={p.backend!r}; valid: {', '.join(KINDS)}, or null")
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
    trainer.* and optim.* are not read at all (training.fold.fit_fold)."""
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



# ---------------------------------------------------------------------------------------
# configs/README.md's key tables, generated from the fields above


def key_table(cls: type) -> str:
    """The Markdown table of one section: key, default, meaning (*resumable* where it is)."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name, info in schema_fields(cls).items():
        if name in SECTIONS or name == "model":
            continue
        extra = info.json_schema_extra or {}
        default = extra.get("shown") or f"`{_yaml_scalar(info.default)}`"
        meaning = "; ".join(filter(None, (info.description, "*resumable*" if extra.get("resumable") else "")))
        rows.append(f"| `{name}` | {default} | {meaning} |")
    return "\n".join(rows)


def _yaml_scalar(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float) and 0 < abs(value) < 1e-3:  # 1e-4, as configs write it, not 0.0001
        return re.sub(r"\.?0*e-0*", "e-", f"{value:e}")
    return str(value)


TABLES = {"top level": ExperimentConfig, **SECTIONS}
_TABLE = re.compile(r"(<!-- keys: ([a-z ]+) \(generated.*?-->\n)(.*?)(\n<!-- end keys -->)", re.S)


def update_readme(text: str) -> str:
    """`text` (configs/README.md) with each table between `<!-- keys: SECTION (generated ...) -->`
    and `<!-- end keys -->` replaced by the schema's."""
    return _TABLE.sub(lambda m: m.group(1) + key_table(TABLES[m.group(2)]) + m.group(4), text)
