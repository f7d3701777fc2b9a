"""Multi-view training (Aguilar, Rozgić, Wang, Wang, ACL 2019, §3.4, Algorithm 1, Table 3).

Two views of one utterance: V_a, an acoustic model on frames (B-ACO-1, or B-ACO-1 with
attention), and V_m, a multimodal model (H-MM-4, or B-LEX for Table 3's second row). Their
utterance vectors h_a, h_m are pulled together across views by a contrastive loss (Eq. 2)
with d(v, w) = 1 - cos(v, w) and margin m, against negatives of another class. At test time
only V_a runs: the artefact is an acoustic-only model that needs no transcript
(`MultiView.deployable()`).

Loss variants (Table 3), chosen by `mode`:
  "joint"            L = L_c + β_a L_a + β_m L_m, both views trained (Eqs. 2, 3, 4)
  "frozen"           L = L_c + β_a L_a, V_m loaded from a trained checkpoint and frozen
  "teacher-student"  L = L_c + KL(p(V_m) ‖ p(V_a)), V_m a trained, frozen teacher (Eqs. 2, 5)

Plumbing with the training engine: `forward(batch)` returns V_a's Output (its logits are
what the metrics and model selection see); the engine calls `loss(output, batch)` instead of
plain cross-entropy, and `on_epoch_start(epoch)` for the optional β schedule of appendix B.
Negatives are drawn inside the batch (see `NegativeSampler`), so V_a and V_m run once per
batch instead of once more on separately drawn negative inputs as in Algorithm 1.

The one file this module reads is the frozen view's weights (`load_view_state`), at build time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emofuse.errors import ConfigError, DataError
from emofuse.features.batch import Batch
from emofuse.models.base import InputSpec, Output, get_model, register
from emofuse.models.modeldir import best_checkpoint_of, state_mismatch

MODES = ("joint", "frozen", "teacher-student")
STRATEGIES = ("random", "similar")


@dataclass
class MultiViewConfig:
    mode: str = "joint"  # "joint" | "frozen" | "teacher-student" (see module docstring)
    view_a: str = "B-ACO-1"  # the acoustic view: any registered model that needs only "acoustic"
    view_m: str = "H-MM-4"  # the second view: "H-MM-4" (or "B-LEX", Table 3 row 2)
    beta_a: float = 1.0  # weight of V_a's cross-entropy (Eq. 3)
    beta_m: float = 0.3  # weight of V_m's cross-entropy (Eq. 4), "joint" only
    beta_decay: float = 0.0  # ρ of appendix B: β = β_0 / (1 + ρ · epoch) for β_a and β_m
    contrastive_weight: float = 1.0  # weight of L_c (1 in the paper; 0 switches it off)
    margin: float = 0.5  # m of Eq. 2
    negatives: str = "similar"  # "random" (any other class) | "similar" (the acoustically similar class)
    # Class names in the order of the label set's class indices (iemocap4 and ravdess4 order),
    # and the acoustically similar pairs of appendix B, used by negatives="similar".
    classes: tuple[str, ...] = ("angry", "happy", "neutral", "sad")
    similar: tuple[tuple[str, str], ...] = (("angry", "happy"), ("neutral", "sad"))
    teacher_checkpoint: str = ""  # V_m's trained weights, needed by "frozen" and "teacher-student"
    hidden: int = 256  # per direction, both views (h_a and h_m must have the same size)
    layers: int = 2
    dropout: float = 0.4
    view_a_settings: dict[str, Any] = field(default_factory=dict)  # extra settings for V_a
    view_m_settings: dict[str, Any] = field(default_factory=dict)  # extra settings for V_m


# ---------------------------------------------------------------------------------------------
# Loss pieces


def cosine_distance(v: Tensor, w: Tensor) -> Tensor:
    """d(v, w) = 1 - cos(v, w) of Eq. 2. (N, H), (N, H) -> (N,)."""
    return 1.0 - F.cosine_similarity(v, w, dim=-1, eps=1e-8)


def contrastive_loss(h_a: Tensor, h_m: Tensor, negatives: Tensor, margin: float = 0.5) -> Tensor:
    """Cross-view contrastive loss, Eq. 2 of Aguilar et al. 2019.

    L_c = 1/(2N) Σ_i max(0, m + d(h_a_i, h_m_i) - d(h_a_i, h_m_j))
        + 1/(2N) Σ_i max(0, m + d(h_m_i, h_a_i) - d(h_m_i, h_a_j)),   j = negatives[i].

    The positive of each anchor is the other view of the same utterance; the negative is the
    other view of utterance j (another class). Anchors without a negative (negatives[i] = -1)
    are left out, and N counts the anchors that have one; with none at all the loss is 0.
    h_a, h_m: (B, H); negatives: (B,) long -> scalar.
    """
    anchors = (negatives >= 0).nonzero().squeeze(1)  # (N,)
    if anchors.numel() == 0:
        return (h_a.sum() + h_m.sum()) * 0.0  # keeps the graph; no pair to learn from
    j = negatives[anchors]
    a, m = h_a[anchors], h_m[anchors]  # (N, H)
    a_neg, m_neg = h_a[j], h_m[j]  # (N, H)
    from_a = torch.relu(margin + cosine_distance(a, m) - cosine_distance(a, m_neg))  # (N,)
    from_m = torch.relu(margin + cosine_distance(m, a) - cosine_distance(m, a_neg))  # (N,)
    return (from_a.sum() + from_m.sum()) / (2 * anchors.numel())


def distillation_loss(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """KL(p_teacher ‖ p_student) averaged over the batch, Eq. 5 of Aguilar et al. 2019. (B, C) x2 -> scalar."""
    return F.kl_div(
        F.log_softmax(student_logits, dim=-1), F.log_softmax(teacher_logits, dim=-1),
        log_target=True, reduction="batchmean",
    )


class NegativeSampler:
    """Picks, for each utterance of a batch, another utterance of the batch to serve as its negative.

    "random":  uniformly among the batch's utterances of a different class (Algorithm 1, option 1).
    "similar": uniformly among the batch's utterances of a class acoustically similar to the
               anchor's (appendix B: anger↔happiness, neutral↔sadness). Fallback: when the
               batch holds no utterance of a similar class (or the anchor's class has no
               similar class), a random utterance of any different class, as in "random".
    When the batch holds no utterance of another class at all the anchor gets -1 (no negative)
    and the contrastive loss leaves it out. The anchor's own class is never returned.
    """

    def __init__(self, strategy: str = "random", similar: Tensor | None = None):
        if strategy not in STRATEGIES:
            raise ConfigError(f"negatives must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        if strategy == "similar" and similar is None:
            raise ConfigError("negatives='similar' needs a class similarity map")
        self.strategy = strategy
        self.similar = similar  # (C, C) bool, True where two classes are acoustically similar

    @staticmethod
    def similarity_map(classes: tuple[str, ...], pairs: tuple[tuple[str, str], ...]) -> Tensor:
        """(C, C) bool matrix from pairs of class names; symmetric, False on the diagonal."""
        index = {name: i for i, name in enumerate(classes)}
        table = torch.zeros(len(classes), len(classes), dtype=torch.bool)
        for pair in pairs:
            if len(pair) != 2 or any(name not in index for name in pair) or pair[0] == pair[1]:
                raise ConfigError(
                    f"similar pair {list(pair)!r} must name two different classes among {list(classes)}"
                )
            a, b = index[pair[0]], index[pair[1]]
            table[a, b] = table[b, a] = True
        return table

    def __call__(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """labels: (B,) long -> (B,) long index of each anchor's negative in the batch, or -1."""
        other = labels.unsqueeze(0) != labels.unsqueeze(1)  # (B, B) [i, j]: j has another class
        candidates = other
        if self.strategy == "similar":
            table = self.similar.to(labels.device)
            if int(labels.max()) >= table.shape[0]:
                raise ConfigError(
                    f"label index {int(labels.max())} outside the {table.shape[0]} classes of the similarity map"
                )
            similar = table[labels][:, labels] & other  # (B, B)
            candidates = torch.where(similar.any(1, keepdim=True), similar, other)
        draw = torch.rand(candidates.shape, generator=generator, device=labels.device)
        pick = draw.masked_fill(~candidates, -1.0).argmax(1)  # (B,) uniform among candidates
        return torch.where(candidates.any(1), pick, torch.full_like(pick, -1))


# ---------------------------------------------------------------------------------------------
# The frozen view's weights: the only file this module opens.


def load_view_state(path: str | Path) -> dict[str, Tensor]:
    """Read a trained model's weights from a safetensors file or a torch state-dict file.

    Accepts `*.safetensors`, torch files holding a state dict or a dict with a "state_dict"
    entry (Lightning checkpoints), and a trained fold's directory of `emofuse train`
    (`fold-K/`, whose `trained.json` names its best checkpoint). Tensors only (weights_only).
    A cross-validation config writes `fold-{fold}`; the engine puts in the fold's index so
    that each fold's student learns from the teacher trained on the same training speakers.
    """
    if "{fold}" in str(path):
        raise DataError(path, "teacher_checkpoint still holds {fold}: the cross-validation engine fills "
                              "in each fold's index; outside it, give one fold's path")
    path = Path(path)
    if path.is_dir():
        marker = path / "trained.json"
        if not marker.is_file():
            raise DataError(path, "a directory given as teacher_checkpoint must be a trained fold (no trained.json)")
        path = best_checkpoint_of(marker)
    if not path.is_file():
        raise DataError(path, "teacher checkpoint not found: train the second view (e.g. H-MM-4) first "
                              "and point teacher_checkpoint at its saved weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is a data problem the user can act on
        raise DataError(path, f"cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(path, "not a state dict of tensors")
    return state


def match_state(module: nn.Module, state: dict[str, Tensor], source: str | Path) -> dict[str, Tensor]:
    """The entries of `state` that fit `module`, allowing one key prefix (e.g. "model.", "view_m.")."""
    expected = module.state_dict()
    first = next(iter(expected))
    prefixes = [""] + sorted({k[: -len(first)] for k in state if k.endswith(first) and k != first})
    for prefix in prefixes:
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if set(expected) <= set(picked):
            fitting = {k: picked[k] for k in expected}
            if why := state_mismatch(expected, fitting):
                raise DataError(source, f"weights do not fit the model: {why} (train the teacher with the same "
                                        "hidden size and features)")
            return fitting
    raise DataError(source, f"weights do not fit the model: {state_mismatch(expected, state)}")


# ---------------------------------------------------------------------------------------------
# The multi-view model


class MultiView(nn.Module):
    """V_a and V_m in one module; forward is V_a alone, `loss` adds V_m and the multi-view terms."""

    def __init__(self, spec: InputSpec, cfg: MultiViewConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {cfg.mode!r}")
        entry_a = get_model(cfg.view_a)
        if tuple(entry_a.needs) != ("acoustic",):
            raise ConfigError(f"view_a {cfg.view_a!r} must need only acoustic frames, it needs {entry_a.needs}")
        shared = {"hidden": cfg.hidden, "layers": cfg.layers, "dropout": cfg.dropout}
        self.view_a_settings = {**shared, **cfg.view_a_settings}
        view_m_settings = {**shared, **cfg.view_m_settings}
        if self.view_a_settings["hidden"] != view_m_settings["hidden"]:
            raise ConfigError("view_a and view_m need the same hidden size: the contrastive loss compares "
                              f"their utterance vectors ({self.view_a_settings['hidden']} vs {view_m_settings['hidden']})")
        self.view_a = entry_a.build(spec, **self.view_a_settings)
        self.view_m = get_model(cfg.view_m).build(spec, **view_m_settings)

        similar = None
        if cfg.negatives == "similar":
            classes = tuple(cfg.classes)
            if len(classes) != spec.num_classes:
                raise ConfigError(f"negatives='similar' needs the {spec.num_classes} class names in "
                                  f"`classes`, got {list(classes)}")
            similar = NegativeSampler.similarity_map(classes, tuple(tuple(p) for p in cfg.similar))
        self.sampler = NegativeSampler(cfg.negatives, similar)

        self.frozen = cfg.mode in ("frozen", "teacher-student")
        if self.frozen:
            if not cfg.teacher_checkpoint:
                raise ConfigError(f"mode {cfg.mode!r} needs teacher_checkpoint: the trained {cfg.view_m} weights")
            state = load_view_state(cfg.teacher_checkpoint)
            self.view_m.load_state_dict(match_state(self.view_m, state, cfg.teacher_checkpoint))
            self.view_m.requires_grad_(False)
            self.view_m.eval()
        self.epoch = 0
        self.last_terms: dict[str, float] = {}  # the loss terms of the last `loss` call, for logging

    def train(self, mode: bool = True) -> "MultiView":
        super().train(mode)
        if self.frozen:  # a frozen view keeps its dropout off and its batch-norm statistics fixed
            self.view_m.eval()
        return self

    def forward(self, batch: Batch) -> Output:
        return self.view_a(batch)  # only the acoustic view: no words needed

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def loss(self, output: Output, batch: Batch, class_weights: Tensor | None = None) -> Tensor:
        """The multi-view objective for `output` = V_a's output on `batch` (see module docstring);
        the engine's optional class weights weight its cross-entropy terms."""
        cfg = self.cfg
        if self.frozen:
            with torch.no_grad():
                view_m = self.view_m(batch)
        else:
            view_m = self.view_m(batch)
        negatives = self.sampler(batch.labels)
        l_c = contrastive_loss(output.utterance_vector, view_m.utterance_vector, negatives, cfg.margin)
        decay = 1.0 / (1.0 + cfg.beta_decay * self.epoch)
        total = cfg.contrastive_weight * l_c
        terms = {"contrastive": float(l_c.detach())}
        if cfg.mode == "teacher-student":
            l_kl = distillation_loss(view_m.logits, output.logits)
            total = total + l_kl
            terms["kl"] = float(l_kl.detach())
        else:
            l_a = F.cross_entropy(output.logits, batch.labels, weight=class_weights)
            total = total + decay * cfg.beta_a * l_a
            terms["ce_a"] = float(l_a.detach())
            if cfg.mode == "joint":
                l_m = F.cross_entropy(view_m.logits, batch.labels, weight=class_weights)
                total = total + decay * cfg.beta_m * l_m
                terms["ce_m"] = float(l_m.detach())
        self.last_terms = terms
        return total

    def deployable(self) -> nn.Module:
        """The acoustic view alone: `forward(batch) -> Output` reading only `batch.acoustic`.

        This is what a multi-view run saves and exports. Its weights are `self.view_a`'s (the
        same module, not a copy); rebuild it with `deployable_config()`.
        """
        return self.view_a

    def deployable_config(self) -> tuple[str, dict[str, Any]]:
        """Registry name and settings that rebuild `deployable()`: get_model(name).build(spec, **settings)."""
        return self.cfg.view_a, dict(self.view_a_settings)


_NEEDS = ("acoustic", "words", "word_frames")
register("MV-B-ACO-1+H-MM-4", MultiViewConfig, needs=_NEEDS,
         summary="Aguilar 2019 Table 3: B-ACO-1 + H-MM-4, L_c + β_a L_a + β_m L_m, both trained")(MultiView)
register("MV-B-ACO-1+B-LEX", MultiViewConfig, needs=("acoustic", "words"),
         summary="Aguilar 2019 Table 3: B-ACO-1 + B-LEX, L_c + β_a L_a + β_m L_m, both trained",
         view_m="B-LEX")(MultiView)
register("MV-frozen", MultiViewConfig, needs=_NEEDS,
         summary="Aguilar 2019 Table 3: B-ACO-1 + trained, frozen H-MM-4, L_c + L_a", mode="frozen")(MultiView)
register("teacher-student", MultiViewConfig, needs=_NEEDS,
         summary="Aguilar 2019 Table 3: B-ACO-1 student, trained H-MM-4 teacher, L_c + KL",
         mode="teacher-student")(MultiView)
register("teacher-student+attn", MultiViewConfig, needs=_NEEDS,
         summary="Aguilar 2019 Table 3: B-ACO-1 + attention student, trained H-MM-4 teacher, L_c + KL",
         mode="teacher-student", view_a="B-ACO-1+attn")(MultiView)
