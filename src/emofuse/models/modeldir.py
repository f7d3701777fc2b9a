"""The model directory: a trained model packaged so that prediction needs nothing else.

It lives beside the models, not in training/, so that prediction and serving read it without
the training package (as Hugging Face keeps `save_pretrained` with its modelling code).

    MODEL_DIR/model.safetensors   the weights (tensors only: loading never unpickles code)
    MODEL_DIR/model.json          how to rebuild and feed the model (below)
    MODEL_DIR/config.yaml         the run's resolved config, for people (model.json holds it too)

model.json keeps the registry name and settings that rebuild the network
(`emofuse.models.base.get_model(name).build(InputSpec(**spec), **settings)`), the classes
and label set, the frame feature and its settings, the word-vector kind, the folder and
weights hash of each hf: encoder (checked on loading: a missing or changed folder is one
clear line naming it), the alignment
used at prediction time, the acoustic normaliser's statistics (fitted on the fold's
training part), the vocabulary of token-id models, the metrics the fold earned (validation
UA, test metrics) and the emofuse version that wrote it.

A run directory of `emofuse train` becomes a model directory through
`emofuse.training.export` (the best fold by validation UA, its Lightning checkpoint read once).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from emofuse.errors import DataError, EmofuseError
from emofuse.io import atomic_dir, read_json

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
    # the corpus labels the classes were made from ({original label: class or null}); None for a
    # built-in set or labels taken as given
    label_map: dict | None = None
    acoustic: str | None = None  # frame feature name (compare_lld, fbank40, ...)
    acoustic_settings: dict = field(default_factory=dict)
    hop: float = 0.01
    words: str | None = None  # word vectors (minilm, glove50, glove-file:PATH)
    # hf: encoders the model reads through, by role ("acoustic", "words"): {"spec", "folder",
    # "weights_sha256"}; filled in by write_model_dir, checked by load_model_dir
    encoders: dict = field(default_factory=dict)
    align: str = "none"  # "none" (acoustic only), "auto" (forced with a transcript, ASR without) or
    # "written" (the transcript as written, no times; ASR words without one)
    # the recogniser of words without a transcript (align.make_recogniser): whisper[:PATH], sphinx;
    # None for acoustic-only models (and read as sphinx for models exported before it was recorded)
    asr: str | None = None
    max_frames: int | None = None
    max_words: int | None = None
    trim: float | None = None  # seconds kept around the speech span (data.trim); None: every frame
    normaliser: dict | None = None  # emofuse.features.normalise.Normalisation.to_dict() (portable)
    vocabulary: dict | None = None
    # protocol.backend: the logistic regression that replaces the network's classifier on its
    # utterance vector (emofuse.models.refitted_output.Backend.to_dict()); None: the network's own
    backend: dict | None = None
    metrics: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)  # run dir, fold, checkpoint, trained model name
    config: dict = field(default_factory=dict)  # the run's resolved config
    emofuse_version: str = ""
    created: str = ""
    weights: dict = field(default_factory=dict)  # {"file", "sha256", "parameters"}: set by write_model_dir

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
        for key, value in body.items():
            kinds = FIELD_TYPES[key]
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
                raise DataError(source, f"{key} must be {wanted}, not {type(value).__name__} ({value!r:.60})")
        if not all(isinstance(n, str) for n in body["needs"]) or not set(body["needs"]) <= NEEDS:
            raise DataError(source, f"needs {body['needs']!r}: each must be one of {', '.join(sorted(NEEDS))}")
        classes = body["classes"]
        if not classes or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
            raise DataError(source, f"classes {classes!r} must be distinct, non-empty names")
        return cls(**body)


NEEDS = {"acoustic", "words", "word_frames", "token_ids"}
_NUMBER = (int, float)
# What each model.json key may hold (None: JSON null); checked on reading, so a hand-edited
# file is one line naming the key instead of a traceback from deep inside prediction.
FIELD_TYPES: dict[str, tuple] = {
    "name": (str,), "settings": (dict,), "spec": (dict,), "needs": (list,), "classes": (list,),
    "label_set": (str, type(None)), "label_map": (dict, type(None)), "acoustic": (str, type(None)), "acoustic_settings": (dict,),
    "hop": _NUMBER, "words": (str, type(None)), "encoders": (dict,), "align": (str,), "asr": (str, type(None)),
    "max_frames": (int, type(None)), "max_words": (int, type(None)), "trim": (*_NUMBER, type(None)),
    "normaliser": (dict, type(None)), "vocabulary": (dict, type(None)), "backend": (dict, type(None)),
    "metrics": (dict,), "source": (dict,), "config": (dict,), "emofuse_version": (str,), "created": (str,),
    "weights": (dict,),
}


@dataclass
class LoadedModel:
    info: ModelInfo
    model: nn.Module  # in eval mode, on CPU
    path: Path
    notes: list[str] = field(default_factory=list)  # what could not be checked (check_binding)


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
    info.encoders = info.encoders or encoder_records(info)
    info.created = info.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    def fill(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT, "model": info.name, **binding(info)})
        record = info.to_json()
        record["weights"] = {"file": WEIGHTS, "sha256": weights_sha256(tmp / WEIGHTS),
                             "parameters": int(sum(v.numel() for v in state.values()))}
        (tmp / MANIFEST).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if info.config:
            import yaml

            (tmp / "config.yaml").write_text(yaml.safe_dump(info.config, sort_keys=False), encoding="utf-8")

    return atomic_dir(Path(out_dir), fill)


def binding(info: ModelInfo) -> dict[str, str]:
    """What the weights were trained with, stored in their safetensors header: the class order
    of the output layer and the normalisation mode of the frames they read. model.json can be
    edited without touching the weights (their sha256 then still matches), so load_model_dir
    compares the two: reordered classes relabel every answer ("angry" read as "happy 0.996"),
    and frames the network never saw normalised (a null normaliser) give one confident class."""
    from emofuse.features.normalise import Normalisation

    return {"classes": json.dumps(list(info.classes), ensure_ascii=False),
            "normalisation": Normalisation.from_dict(info.normaliser).mode}


def check_binding(info: ModelInfo, metadata: dict | None, manifest: Path) -> list[str]:
    """model.json's classes and normaliser agree with what the weights were trained with
    (`binding`); otherwise one DataError naming model.json. Weights written before the binding
    existed carry none: they are accepted, and the returned note says nothing could be compared."""
    from emofuse.features.normalise import Normalisation

    metadata = metadata or {}
    if "classes" not in metadata or "normalisation" not in metadata:
        return [f"the model's {WEIGHTS} records no class order or normalisation (exported before "
                "emofuse bound them to the weights): model.json's classes and normaliser are taken on trust; "
                "export again to check them"]
    try:
        trained = json.loads(metadata["classes"])
    except ValueError:
        trained = None
    if trained != list(info.classes):
        raise DataError(manifest, f"classes {info.classes} are not the output layer's classes {trained} that the "
                                  "weights were trained with (model.json edited?); restore them or export again")
    mode = Normalisation.from_dict(info.normaliser, manifest).mode
    if mode != metadata["normalisation"]:
        found = "null (no normalisation)" if mode == "none" else f"mode {mode!r}"
        raise DataError(manifest, f"normaliser is {found}, but the weights were trained on frames normalised "
                                  f"with mode {metadata['normalisation']!r} (model.json edited?); restore it or "
                                  "export again")
    return []


def weights_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def best_checkpoint_of(marker: str | Path) -> Path:
    """The checkpoint a fold's record of `emofuse train` names (`fold-K/trained.json`, or
    `metrics.json` of a finished fold): its "best_checkpoint", relative to the fold folder.
    A record damaged or edited by hand is one DataError naming it.
    Read by the training loop, export and the teacher reader of models/multiview.py."""
    marker = Path(marker)
    record = read_json(marker)
    best = record.get("best_checkpoint") if isinstance(record, dict) else None
    if not isinstance(best, str) or not best.strip():
        found = "no such entry" if not isinstance(record, dict) or "best_checkpoint" not in record else repr(best)
        raise DataError(marker, f'"best_checkpoint" must name the fold\'s checkpoint file ({found}); the file is '
                                "damaged or was edited by hand: delete the fold folder and train it again")
    return Path(best) if Path(best).is_absolute() else marker.parent / best


def state_mismatch(expected: dict, state: dict) -> str:
    """Why the tensors of `state` do not fit a network whose state dict is `expected`, in one
    phrase ("" when they fit): the first tensor of another shape, the missing and extra names.
    Shared by every loader of weights, instead of torch's page of size mismatches."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    resized = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if resized:
        first = resized[0]
        problems.append(f"{len(resized)} tensor(s) of another shape (first: {first} is "
                        f"{tuple(state[first].shape)} in the file, {tuple(expected[first].shape)} in the model)")
    if missing:
        problems.append(f"{len(missing)} missing (first: {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} not in the model (first: {extra[0]})")
    return "; ".join(problems)


# ---------------------------------------------------------------------------------------
# Loading


def encoder_records(info: ModelInfo) -> dict:
    """The folder and weights hash of each pretrained encoder the model reads: hf: encoders
    (`features.hf`), and Whisper's encoder or recogniser (`align.whisper`, role "asr")."""
    from emofuse.align import whisper
    from emofuse.features.hf import is_hf, parse_spec, resolve_folder, weights_hash

    records = {}
    for role, spec in (("acoustic", info.acoustic), ("words", info.words), ("asr", info.asr)):
        if spec and is_hf(spec):
            folder = resolve_folder(parse_spec(spec).path)
            records[role] = {"spec": spec, "folder": str(folder), "weights_sha256": weights_hash(folder)}
        elif spec and whisper.is_whisper(spec):
            records[role] = {"spec": spec, "kind": "whisper", "folder": str(whisper.resolve_folder(spec)),
                             "weights_sha256": whisper.weights_sha256(spec)}
    return records


def check_encoders(info: ModelInfo, manifest: Path) -> None:
    """Each recorded encoder folder still exists and holds the weights the model was trained
    on; otherwise one DataError naming the folder."""
    if not info.encoders:
        return
    from emofuse.features.hf import resolve_folder, weights_hash
    from emofuse.features.hf_weights import require_safetensors

    for role, record in info.encoders.items():
        if not isinstance(record, dict) or not {"folder", "weights_sha256"} <= set(record):
            raise DataError(manifest, f"encoders.{role} needs folder and weights_sha256")
        if record.get("kind") == "whisper":  # found by its spec: the packaged model moves with the install
            from emofuse.align import whisper

            whisper.check_weights(str(record.get("spec")), expected=record["weights_sha256"])
            continue
        folder = Path(record["folder"])
        if not folder.is_dir():
            raise DataError(folder, f"{role} encoder folder not found (the model at {manifest.parent} was "
                                    "trained on it; restore the folder or retrain)")
        require_safetensors(resolve_folder(folder))  # a pickle checkpoint: one line, never transformers' page
        found = weights_hash(resolve_folder(folder))
        if found != record["weights_sha256"]:
            raise DataError(folder, f"{role} encoder weights changed since the model was trained (sha256 "
                                    f"{found[:12]}, model.json records {record['weights_sha256'][:12]}); "
                                    "restore the folder or retrain")


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


def check_fits_registry(info: ModelInfo, manifest: Path) -> None:
    """model.json's needs and classes agree with the network its name and spec rebuild:
    a wrong needs list would feed the model the wrong inputs, and a class list shorter or
    longer than the output layer would drop or invent a class (probabilities not summing to 1)."""
    from emofuse.models.base import InputSpec, get_model

    try:
        entry = get_model(info.name)
        spec = InputSpec(**info.spec)
    except EmofuseError as exc:
        raise DataError(manifest, f"cannot rebuild model {info.name!r}: {exc}") from None
    except TypeError as exc:
        raise DataError(manifest, f"spec {info.spec!r} is not a valid input spec ({exc})") from None
    if set(info.needs) != set(entry.needs):
        raise DataError(manifest, f"needs {info.needs} but model {entry.name} reads {list(entry.needs)}")
    if spec.num_classes != len(info.classes):
        raise DataError(manifest, f"{len(info.classes)} class names {info.classes} for an output layer of "
                                  f"{spec.num_classes} classes (spec.num_classes)")
    if entry.fitted and info.backend is None:  # its network has no classifier of its own
        raise DataError(manifest, f"model {entry.name} answers through its fitted back-end, and model.json holds "
                                  "none (backend: null); export the run again")


def verify_weights(info: ModelInfo, weights: Path) -> None:
    """The weights file is the one model.json records (sha256); `--no-verify` skips this for
    weights edited on purpose."""
    recorded = info.weights.get("sha256")
    if not isinstance(recorded, str) or not recorded:
        raise DataError(weights.parent / MANIFEST, "records no weights sha256 to verify the weights against "
                                                   "(export again, or pass --no-verify)")
    found = weights_sha256(weights)
    if found != recorded:
        raise DataError(weights, f"weights do not match model.json (sha256 {found[:12]}, recorded "
                                 f"{recorded[:12]}): changed or corrupted since export; export again, or "
                                 "pass --no-verify if you edited them on purpose")


def load_model_dir(model_dir: str | Path, verify: bool = True) -> LoadedModel:
    """Rebuild the network from the registry and load its safetensors weights (no pickle);
    `verify`: check the weights' sha256 against model.json first."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(model_dir)
    info = read_info(path)
    check_encoders(info, path / MANIFEST)
    check_fits_registry(info, path / MANIFEST)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise DataError(weights, "weights file not found")
    try:
        state = load_file(str(weights))
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata()
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(weights, f"unreadable weights ({exc})") from None
    if verify:  # after reading, so a truncated file is called unreadable, not changed
        verify_weights(info, weights)
    notes = check_binding(info, metadata, path / MANIFEST)
    try:
        model = build_model(info)
    except EmofuseError as exc:
        raise DataError(path / MANIFEST, f"cannot rebuild model {info.name!r}: {exc}") from None
    except (TypeError, ValueError) as exc:  # a hand-edited setting of the wrong type
        raise DataError(path / MANIFEST, f"cannot rebuild model {info.name!r} from its settings ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        why = state_mismatch(model.state_dict(), state) or " ".join(str(exc).split())[:300]
        raise DataError(weights, f"weights do not fit model {info.name!r} ({why})") from None
    model.eval()
    return LoadedModel(info, model, path, notes)
