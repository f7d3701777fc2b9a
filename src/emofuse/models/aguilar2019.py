"""Aguilar, Rozgić, Wang, Wang: "Multimodal and Multi-view Models for Emotion Recognition", ACL 2019.

Reproduces the rows of Table 2 (baselines B-ACO-1, B-ACO-2, B-LEX, B-MM-1, B-MM-2 and the
hierarchical models) with the settings of §4.2 and appendix B: two BLSTM layers of 256,
average pooling, a softmax layer; dropout 0.4-0.5; Adam 1e-4 with L2 1e-5 (in the config).

Inputs: `batch.acoustic` are frame features (ComParE 2016 LLD + deltas, 130-d, 10 ms);
`batch.words` are word vectors (ELMo in the paper, MiniLM here by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from emofuse.features.batch import Batch
from emofuse.models.base import InputSpec, Output, register
from emofuse.models.layers import BLSTM, Classifier, compact, masked_mean


@dataclass
class BaselineConfig:
    hidden: int = 256  # per direction of each BLSTM layer
    layers: int = 2
    dropout: float = 0.4
    speech_only: bool = False  # B-*-2: drop frames outside words (silence) before the BLSTM
    use_acoustic: bool = True
    use_lexical: bool = False


class AcousticEncoder(nn.Module):
    """BLSTM x2 over frames, mean-pooled (the acoustic half of B-ACO and B-MM)."""

    def __init__(self, acoustic_dim: int, cfg: BaselineConfig):
        super().__init__()
        self.speech_only = cfg.speech_only
        self.blstm = BLSTM(acoustic_dim, cfg.hidden, cfg.layers, cfg.dropout)
        self.output_size = self.blstm.output_size

    def frames(self, batch: Batch) -> tuple[Tensor, Tensor]:
        x, mask = batch.acoustic, batch.acoustic_mask  # (B, T, D), (B, T)
        if self.speech_only:
            if batch.speech_mask is None:
                raise ValueError("speech_only needs a speech mask (word times or energy-based)")
            # An utterance with no detected speech keeps all its frames rather than none.
            keep = batch.speech_mask & mask
            keep = torch.where(keep.any(1, keepdim=True), keep, mask)
            x, mask = compact(x, keep)  # (B, T', D)
        return x, mask

    def forward(self, batch: Batch) -> Tensor:
        x, mask = self.frames(batch)
        return masked_mean(self.blstm(x, mask), mask)  # (B, 2H)


class LexicalEncoder(nn.Module):
    """BLSTM x2 over word vectors, mean-pooled (B-LEX)."""

    def __init__(self, word_dim: int, cfg: BaselineConfig):
        super().__init__()
        self.blstm = BLSTM(word_dim, cfg.hidden, cfg.layers, cfg.dropout)
        self.output_size = self.blstm.output_size

    def forward(self, batch: Batch) -> Tensor:
        return masked_mean(self.blstm(batch.words, batch.word_mask), batch.word_mask)  # (B, 2H)


class Baseline(nn.Module):
    """B-ACO, B-LEX and B-MM: per-modality BLSTM encoders, concatenated at utterance level."""

    def __init__(self, spec: InputSpec, cfg: BaselineConfig):
        super().__init__()
        self.cfg = cfg
        self.acoustic = AcousticEncoder(spec.acoustic_dim, cfg) if cfg.use_acoustic else None
        self.lexical = LexicalEncoder(spec.word_dim, cfg) if cfg.use_lexical else None
        size = sum(e.output_size for e in (self.acoustic, self.lexical) if e is not None)
        self.classifier = Classifier(size, spec.num_classes, cfg.dropout)

    def forward(self, batch: Batch) -> Output:
        parts = []
        if self.acoustic is not None:
            parts.append(self.acoustic(batch))
        if self.lexical is not None:
            parts.append(self.lexical(batch))
        u = torch.cat(parts, dim=-1)  # (B, 2H or 4H)
        return Output(self.classifier(u), u)


register("B-ACO-1", BaselineConfig, needs=("acoustic",),
         summary="Aguilar 2019: BLSTMx2 over all frames, mean-pool")(Baseline)
register("B-ACO-2", BaselineConfig, needs=("acoustic", "word_frames"),
         summary="Aguilar 2019: BLSTMx2 over speech frames only, mean-pool", speech_only=True)(Baseline)
register("B-LEX", BaselineConfig, needs=("words",),
         summary="Aguilar 2019: BLSTMx2 over word vectors, mean-pool", use_acoustic=False, use_lexical=True)(Baseline)
register("B-MM-1", BaselineConfig, needs=("acoustic", "words"),
         summary="Aguilar 2019: B-ACO-1 + B-LEX concatenated", use_lexical=True)(Baseline)
register("B-MM-2", BaselineConfig, needs=("acoustic", "words", "word_frames"),
         summary="Aguilar 2019: B-ACO-2 + B-LEX concatenated", use_lexical=True, speech_only=True)(Baseline)
