"""The LightningModule that trains any registered model on `Batch`es.

Loss: cross-entropy on the logits (optionally weighted by inverse training-class frequency),
unless the model defines `loss(output, batch) -> Tensor` (the multi-view models of Aguilar
et al. 2019, Table 3, add a contrastive term), which is then used instead. A model that
defines `on_epoch_start(epoch)` hears of each epoch (e.g. to freeze a view).

A non-finite training loss stops the fold at once with a `NonFiniteLoss` naming the epoch
and step (checked with `torch.isfinite`, much cheaper than anomaly detection).

Validation gathers the predictions of the whole validation part and logs `val_ua` (the
default model-selection metric), `val_wa`, `val_macro_f1`, `val_weighted_f1` and `val_loss`. Under DDP every rank evaluates the whole
validation part (it is not sharded), so the numbers are exact and identical on all ranks.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from emofuse.errors import EmofuseError
from emofuse.features.batch import Batch
from emofuse.models.base import InputSpec, Output, get_model
from emofuse.training.metrics import classification_metrics


class NonFiniteLoss(EmofuseError):
    """The training loss became NaN or infinite."""


class EmotionModule(L.LightningModule):
    def __init__(self, model_name: str, model_settings: dict, spec: dict, optim: dict,
                 classes: list[str], class_weights: list[float] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.classes = list(classes)
        self.optim = dict(optim)
        self.model = get_model(model_name).build(InputSpec(**spec), **model_settings)
        weights = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=True)
        self._val_preds: list[Tensor] = []
        self._val_labels: list[Tensor] = []
        self._val_loss: list[tuple[float, int]] = []

    def forward(self, batch: Batch) -> Output:
        return self.model(batch)

    def loss(self, out: Output, batch: Batch) -> Tensor:
        custom = getattr(self.model, "loss", None)
        if callable(custom):  # a model's own objective weights its cross-entropy terms the same way
            return custom(out, batch, class_weights=self.class_weights)
        return F.cross_entropy(out.logits, batch.labels, weight=self.class_weights)

    def on_train_epoch_start(self) -> None:
        hook = getattr(self.model, "on_epoch_start", None)
        if callable(hook):
            hook(self.current_epoch)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        out = self.model(batch)
        loss = self.loss(out, batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteLoss(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step} "
                f"(batch {batch_idx}, utterances {', '.join(batch.ids[:3])}{'...' if len(batch) > 3 else ''}); "
                "the fold was stopped: try a lower optim.lr, gradient clipping (optim.grad_clip) "
                "or check the features for NaN/inf"
            )
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_preds, self._val_labels, self._val_loss = [], [], []

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        out = self.model(batch)
        loss = self.loss(out, batch)
        self._val_preds.append(out.logits.argmax(-1).cpu())
        self._val_labels.append(batch.labels.cpu())
        self._val_loss.append((float(loss), len(batch)))

    def on_validation_epoch_end(self) -> None:
        if not self._val_preds:
            return
        preds = torch.cat(self._val_preds).numpy()
        labels = torch.cat(self._val_labels).numpy()
        m = classification_metrics(labels, preds, self.classes)
        total = sum(n for _, n in self._val_loss)
        val_loss = sum(loss * n for loss, n in self._val_loss) / max(total, 1)
        # Identical on every rank (each saw the whole validation part): no reduction needed.
        self.log_dict({"val_ua": m["ua"], "val_wa": m["wa"], "val_macro_f1": m["macro_f1"],
                       "val_weighted_f1": m["weighted_f1"], "val_loss": val_loss},
                      prog_bar=True, sync_dist=False, rank_zero_only=False)

    def configure_optimizers(self):
        name, lr, wd = self.optim["name"], self.optim["lr"], self.optim["weight_decay"]
        groups = getattr(self.model, "param_groups", None)  # a model with per-part learning rates
        params = groups(lr) if groups is not None else [p for p in self.parameters() if p.requires_grad]
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=wd)
        if name == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=self.optim.get("momentum", 0.0))
        raise EmofuseError(f"unknown optimiser {name!r}; valid: adam, adamw, sgd")


@torch.no_grad()
def predict(model: torch.nn.Module, loader, device: torch.device | str = "cpu") -> tuple[list[str], np.ndarray, np.ndarray]:
    """Plain single-process pass: (ids, labels (N,), probabilities (N, C)) in loader order."""
    was_training = model.training
    model.eval()
    ids: list[str] = []
    labels, probs = [], []
    for batch in loader:
        batch = batch.to(device)
        out = model(batch)
        ids += batch.ids
        labels.append(batch.labels.cpu())
        probs.append(torch.softmax(out.logits.float(), -1).cpu())
    model.train(was_training)
    return ids, torch.cat(labels).numpy(), torch.cat(probs).numpy()
