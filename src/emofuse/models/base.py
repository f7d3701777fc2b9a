"""What every model shares: its output record, its input sizes and the name registry.

Every model is called the same way: `model(batch) -> Output`. A registry maps the names used
in configs and in the papers' tables ("B-ACO-1", "H-MM-4", "fgcme", "fgcme-no-excite") to a
model class and a config dataclass with that row's settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

from torch import Tensor, nn

from emofuse.errors import ConfigError


@dataclass
class Output:
    logits: Tensor  # (B, C)
    utterance_vector: Tensor  # (B, H) the vector the classifier reads
    # Per-word explanations where the model has them, e.g. "gate" (B, W) GMU acoustic share,
    # "attention" (B, W) context attention, "alignment" (B, W, T) text-to-audio attention.
    explain: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class InputSpec:
    """Sizes the data decides, filled in by the engine before the model is built."""

    num_classes: int
    acoustic_dim: int = 0
    word_dim: int = 0
    vocab_size: int = 0


@dataclass
class ModelEntry:
    name: str
    build: Callable[..., nn.Module]  # build(spec: InputSpec, **settings) -> nn.Module
    config_cls: type
    defaults: dict[str, Any]
    needs: tuple[str, ...]  # inputs it reads: "acoustic", "words", "word_frames", "token_ids"
    summary: str


REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, config_cls: type, needs: tuple[str, ...], summary: str, **defaults: Any):
    """Class decorator: `@register("B-ACO-1", BaselineConfig, needs=("acoustic",), ...)`."""

    def wrap(model_cls):
        def build(spec: InputSpec, **settings: Any) -> nn.Module:
            return model_cls(spec, make_config(name, config_cls, {**defaults, **settings}))

        REGISTRY[name.lower()] = ModelEntry(name, build, config_cls, dict(defaults), needs, summary)
        return model_cls

    return wrap


def make_config(name: str, config_cls: type, settings: dict[str, Any]):
    valid = {f.name for f in fields(config_cls)}
    unknown = set(settings) - valid
    if unknown:
        raise ConfigError(
            f"model {name!r}: unknown settings {sorted(unknown)}; valid: {', '.join(sorted(valid))}"
        )
    return config_cls(**settings)


def get_model(name: str) -> ModelEntry:
    _load_all()
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        known = ", ".join(sorted(e.name for e in REGISTRY.values()))
        raise ConfigError(f"unknown model {name!r}; known models: {known}") from None


def model_names() -> list[str]:
    _load_all()
    return sorted(e.name for e in REGISTRY.values())


def _load_all() -> None:
    """Import every paper's module so its @register lines run."""
    import importlib
    import pkgutil

    import emofuse.models as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in {"base", "layers"}:
            importlib.import_module(f"emofuse.models.{info.name}")
