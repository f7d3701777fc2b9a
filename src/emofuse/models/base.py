"""What every model shares: its output record, its input sizes and the name registry.

Every model is called the same way: `model(batch) -> Output`. A registry maps the names used
in configs and in the papers' tables ("B-ACO-1", "H-MM-4", "fgcme", "fgcme-no-excite") to a
model class and a config dataclass with that row's settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
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
    # Hidden states stacked in each acoustic frame (an hf:PATH#layers=all encoder: acoustic_dim
    # = acoustic_layers x D); 0 or 1: plain frames. See `LayerWeighted`.
    acoustic_layers: int = 0
    # The hf:PATH text encoder (data.words) that `model.finetune_words` trains with the model;
    # None: MiniLM. See `models.aguilar2019.LexicalEncoder`.
    word_encoder: str | None = None


@dataclass
class ModelEntry:
    name: str
    build: Callable[..., nn.Module]  # build(spec: InputSpec, **settings) -> nn.Module
    config_cls: type
    defaults: dict[str, Any]
    needs: tuple[str, ...]  # inputs it reads: "acoustic", "words", "word_frames", "token_ids"
    summary: str
    # Fitted, not trained: the network has no trained weights and its output layer is a
    # logistic back-end fitted on its utterance vectors (`models.refitted_output.Backend`), so the fold
    # runner fits it instead of running Lightning (`training.fold.fit_fold`; models/linear_probe.py).
    fitted: bool = False


REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, config_cls: type, needs: tuple[str, ...], summary: str, *, fitted: bool = False,
             **defaults: Any):
    """Class decorator: `@register("B-ACO-1", BaselineConfig, needs=("acoustic",), ...)`;
    `fitted`: see `ModelEntry.fitted`."""

    def wrap(model_cls):
        def build(spec: InputSpec, **settings: Any) -> nn.Module:
            config = make_config(name, config_cls, {**defaults, **settings})
            # every trained model reads (B, T, D): the learned layer sum comes first. A fitted
            # model learns nothing by gradient, so it reads the stacked layers as they are.
            if spec.acoustic_layers > 1 and not fitted:
                if spec.acoustic_dim % spec.acoustic_layers:
                    raise ConfigError(f"model {name!r}: acoustic_dim {spec.acoustic_dim} is not "
                                      f"{spec.acoustic_layers} layers of equal size")
                inner = replace(spec, acoustic_dim=spec.acoustic_dim // spec.acoustic_layers, acoustic_layers=0)
                return LayerWeighted(model_cls(inner, config), spec.acoustic_layers, inner.acoustic_dim)
            return model_cls(spec, config)

        REGISTRY[name.lower()] = ModelEntry(name, build, config_cls, dict(defaults), needs, summary, fitted)
        return model_cls

    return wrap


class LayerWeighted(nn.Module):
    """Any model behind a learned softmax-weighted sum over its input's encoder layers.

    An hf:PATH#layers=all feature stores frames of (L x D) hidden states; the sum (SUPERB, Yang
    et al. 2021; `models.layer_weights`) turns `batch.acoustic` (B, T, L * D) into (B, T, D)
    before the model sees it, so every paper's model takes such features unchanged. Its weights
    train with the model; `layer_weights()` reads them (report.md prints them). Other
    attributes (`on_epoch_start`, `cfg`, ...) are the wrapped model's.
    """

    def __init__(self, model: nn.Module, num_layers: int, layer_dim: int):
        super().__init__()
        from emofuse.models.layer_weights import LayerWeightedSum

        self.layer_sum = LayerWeightedSum(num_layers, layer_dim)
        self.model = model
        if callable(getattr(model, "loss", None)):  # its objective reads the summed frames too
            self.loss = self._loss
        if callable(getattr(model, "deployable", None)):  # multi-view: the exported view keeps the sum
            self.deployable = self._deployable

    def summed(self, batch):
        if batch.acoustic is None or batch.acoustic.shape[-1] == self.layer_sum.layer_dim:
            return batch  # already summed (a batch handed on by the wrapper itself)
        return replace(batch, acoustic=self.layer_sum(batch.acoustic))  # (B, T, L * D) -> (B, T, D)

    def forward(self, batch) -> Output:
        return self.model(self.summed(batch))

    def _loss(self, output: Output, batch, class_weights: Tensor | None = None) -> Tensor:
        return self.model.loss(output, self.summed(batch), class_weights=class_weights)

    def _deployable(self) -> nn.Module:
        """The wrapped model's deployable view behind this same layer sum (shared weights), so
        it rebuilds from `deployable_config()` and the spec as any layer-summed model does."""
        view = LayerWeighted(self.model.deployable(), self.layer_sum.num_layers, self.layer_sum.layer_dim)
        view.layer_sum = self.layer_sum
        return view

    def layer_weights(self) -> list[float]:
        return [float(w) for w in self.layer_sum.weights().detach().cpu()]

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)


def layer_weights_of(model: nn.Module) -> list[float] | None:
    """The learned layer shares of a model built on hf:...#layers=all frames, else None."""
    for module in model.modules():
        if isinstance(module, LayerWeighted):
            return module.layer_weights()
    return None


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
