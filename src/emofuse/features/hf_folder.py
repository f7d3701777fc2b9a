"""An ``hf:`` spec and the local folder it names, read without importing transformers: the
layer choice, the folder's config.json, a hash of its files, whether it holds a speech or a
text encoder. The encoders themselves are `features.hf`.

Spelling (``data.acoustic`` or ``data.words``)::

    hf:PATH                 the last hidden state
    hf:PATH#layer=9         hidden_states[9] (0 = the input embeddings, N = the last layer)
    hf:PATH#layers=last     the same as no option
    hf:PATH#layers=all      every hidden state, (T, N + 1, D) flattened to (T, (N + 1) * D),
                            for a softmax-weighted sum over layers (`models.layer_weights`,
                            as in SUPERB, Yang et al. 2021)

PATH is a folder written by `save_pretrained` or a hub cache snapshot (``models--org--name``
itself is accepted: its ``refs/main`` snapshot is used); ``${VAR}`` and ``~`` are expanded.
Weights are never downloaded (``local_files_only=True``). The feature's settings carry a
sha256 of the folder's weight, config and tokenizer files, so a changed folder is a new store
key; the path itself is not part of the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from emofuse.errors import ConfigError, DataError

PREFIX = "hf:"
SPEECH_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper")
TEXT_TYPES = ("bert", "roberta", "deberta", "deberta-v2", "electra", "xlm-roberta", "distilbert")
_HASHED = re.compile(
    r"(config\.json|preprocessor_config\.json|.*\.safetensors|.*\.safetensors\.index\.json|.*\.bin|.*\.bin\.index\.json"
    r"|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|vocab\.txt|vocab\.json|merges\.txt|.*\.model)"
)


# ------------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class HFSpec:
    """A parsed ``hf:PATH[#layer=K | #layers=all | #layers=last]``; layer None = layers."""

    spec: str
    path: Path
    layers: str  # "last", "all" or "one"
    layer: int | None = None


def is_hf(spec: str) -> bool:
    return spec.startswith(PREFIX)


def parse_spec(spec: str) -> HFSpec:
    """The folder and layer choice of an hf: spec; ConfigError naming what is wrong."""
    if not is_hf(spec):
        raise ConfigError(f"{spec!r} is not an hf: feature (hf:PATH, hf:PATH#layer=9, hf:PATH#layers=all)")
    body = spec[len(PREFIX):]
    raw_path, _, options = body.partition("#")
    if not raw_path.strip():
        raise ConfigError(f"{spec!r}: hf: needs a folder, e.g. hf:/models/wavlm-base-plus#layer=9")
    for braced, bare in re.findall(r"\$\{(\w+)\}|\$(\w+)", raw_path):
        if (braced or bare) not in os.environ:
            raise ConfigError(f"{spec!r}: environment variable {braced or bare} is not set")
    path = Path(os.path.expanduser(os.path.expandvars(raw_path.strip())))
    layers, layer = "last", None
    if options:
        key, eq, value = options.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or "," in value or "#" in value:
            raise ConfigError(f"{spec!r}: one option after '#': layer=K, layers=all or layers=last")
        if key == "layer":
            if not value.isdigit():
                raise ConfigError(f"{spec!r}: layer must be a whole number >= 0, not {value!r}")
            layers, layer = "one", int(value)
        elif key == "layers":
            if value not in ("all", "last"):
                raise ConfigError(f"{spec!r}: layers must be 'all' or 'last', not {value!r}")
            layers = value
        else:
            raise ConfigError(f"{spec!r}: unknown option {key!r}; use layer=K, layers=all or layers=last")
    return HFSpec(spec, path, layers, layer)


# ------------------------------------------------------------------------------ the folder


def resolve_folder(path: str | Path) -> Path:
    """The folder holding config.json: PATH itself, or a hub cache repo's refs/main snapshot."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(path, "encoder folder not found (hf: reads a folder saved with save_pretrained)")
    if (path / "config.json").is_file():
        return path.resolve()
    snapshots = path / "snapshots"
    if snapshots.is_dir():
        ref = path / "refs" / "main"
        chosen = snapshots / ref.read_text().strip() if ref.is_file() else None
        if chosen is None or not chosen.is_dir():
            found = sorted(p for p in snapshots.iterdir() if p.is_dir())
            chosen = found[0] if len(found) == 1 else None
        if chosen is not None and (chosen / "config.json").is_file():
            return chosen.resolve()
    raise DataError(path, "no config.json: not a folder saved with save_pretrained or a hub cache snapshot")


def read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(folder / "config.json", f"unreadable: {exc}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise DataError(folder / "config.json", "no model_type: not a transformers config")
    return config


def weights_hash(folder: str | Path) -> str:
    """sha256 over the names and bytes of the folder's weight, config and tokenizer files."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and _HASHED.fullmatch(p.name))
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _hash_files(str(folder), stamp)


@lru_cache(maxsize=32)
def _hash_files(folder: str, stamp: tuple) -> str:
    digest = hashlib.sha256()
    for name, _, _ in stamp:
        digest.update(name.encode() + b"\0")
        with open(Path(folder) / name, "rb") as f:  # follows hub-cache symlinks to the blobs
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _layer_count(config: dict) -> int:
    return int(config.get("encoder_layers") if config["model_type"] == "whisper" else config["num_hidden_layers"])


def _hidden_size(config: dict) -> int:
    return int(config.get("d_model") if config["model_type"] == "whisper" else config["hidden_size"])


def _check_layer(spec: HFSpec, num_layers: int) -> None:
    if spec.layer is not None and not 0 <= spec.layer <= num_layers:
        raise ConfigError(f"{spec.spec!r}: layer {spec.layer} does not exist; this encoder has layers 0..{num_layers}")


def identity(spec: str) -> str | None:
    """The weights hash behind an hf: spec (None for other names): a long-lived process keys
    its opened encoders by it, so a folder changed in place is loaded again, not reused."""
    if not is_hf(spec):
        return None
    return weights_hash(resolve_folder(parse_spec(spec).path))


def stacked_layers(spec: str) -> int:
    """Hidden states stacked per frame or word by an hf: spec (N + 1 with layers=all, else 0);
    reads config.json only."""
    parsed = parse_spec(spec)
    if parsed.layers != "all":
        return 0
    return _layer_count(read_config(resolve_folder(parsed.path))) + 1


def is_text_encoder(spec: str) -> bool:
    """True when an hf: spec's folder holds a text encoder (reads config.json only)."""
    config = read_config(resolve_folder(parse_spec(spec).path))
    return config["model_type"] not in SPEECH_TYPES


def is_speech_encoder(spec: str) -> bool:
    config = read_config(resolve_folder(parse_spec(spec).path))
    return config["model_type"] in SPEECH_TYPES
