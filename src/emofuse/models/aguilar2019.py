"""Aguilar, Rozgić, Wang, Wang: "Multimodal and Multi-view Models for Emotion Recognition", ACL 2019.

Reproduces the rows of Table 2 (baselines B-ACO-1, B-ACO-2, B-LEX, B-MM-1, B-MM-2 and the
hierarchical models H-ACO, H-MM-1..4) with the settings of §4.2 and appendix B: two BLSTM
layers of 256, average pooling, a softmax layer; dropout 0.4-0.5; Adam 1e-4 with L2 1e-5
(in the config). "B-ACO-1+attn" is the attentive acoustic view of Table 3 (last row).
The multi-view training of Table 3 lives in `models/multiview.py`.

Inputs: `batch.acoustic` are frame features (ComParE 2016 LLD + deltas, 130-d, 10 ms);
`batch.words` are word vectors (ELMo in the paper, MiniLM here by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from emofuse.features.batch import Batch, alignment_matrix
from emofuse.models.base import InputSpec, Output, register
from emofuse.models.layers import BLSTM, GMU, Classifier, ContextAttention, compact, masked_mean


@dataclass
class BaselineConfig:
    hidden: int = 256  # per direction of each BLSTM layer
    layers: int = 2
    dropout: float = 0.4
    speech_only: bool = False  # B-*-2: drop frames outside words (silence) before the BLSTM
    use_acoustic: bool = True
    use_lexical: bool = False
    # Fine-tune the word encoder with the model (data.words: minilm, or hf:PATH a local text
    # encoder): word vectors are recomputed from the words in every batch, the encoder training
    # at `encoder_lr`.
    finetune_words: bool = False
    encoder_lr: float = 3.0e-5


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
    """BLSTM x2 over word vectors, mean-pooled (B-LEX); with `finetune_words` the word
    vectors are computed here, by an encoder that trains with the model: MiniLM, or the hf:
    text encoder named by `word_encoder` (the data's `data.words`)."""

    def __init__(self, word_dim: int, cfg: BaselineConfig, word_encoder: str | None = None):
        super().__init__()
        self.vectors = None
        if cfg.finetune_words and word_encoder and word_encoder.startswith("hf:"):
            from emofuse.features.hf_trainable import HFTrainableWordVectors

            self.vectors = HFTrainableWordVectors(word_encoder)
            if word_dim != self.vectors.dim:
                raise ValueError(f"finetune_words fine-tunes {word_encoder} ({self.vectors.dim}-d word vectors), "
                                 f"but the data's word vectors are {word_dim}-d")
        elif cfg.finetune_words:
            from emofuse.features.minilm import TrainableWordVectors

            self.vectors = TrainableWordVectors()
            if word_dim != self.vectors.dim:
                raise ValueError(f"finetune_words fine-tunes MiniLM ({self.vectors.dim}-d word vectors), "
                                 f"but the data's word vectors are {word_dim}-d: set data.words=minilm")
        self.blstm = BLSTM(word_dim, cfg.hidden, cfg.layers, cfg.dropout)
        self.output_size = self.blstm.output_size

    def forward(self, batch: Batch) -> Tensor:
        words = batch.words
        if self.vectors is not None:
            if batch.word_strings is None:
                raise ValueError("finetune_words needs the words of every utterance in the batch")
            words = self.vectors(batch.word_strings, batch.word_mask.shape[1])
        return masked_mean(self.blstm(words, batch.word_mask), batch.word_mask)  # (B, 2H)


class Baseline(nn.Module):
    """B-ACO, B-LEX and B-MM: per-modality BLSTM encoders, concatenated at utterance level."""

    def __init__(self, spec: InputSpec, cfg: BaselineConfig):
        super().__init__()
        self.cfg = cfg
        self.acoustic = AcousticEncoder(spec.acoustic_dim, cfg) if cfg.use_acoustic else None
        self.lexical = LexicalEncoder(spec.word_dim, cfg, spec.word_encoder) if cfg.use_lexical else None
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

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser groups: a fine-tuned word encoder trains at its own (smaller) rate."""
        vectors = self.lexical.vectors if self.lexical is not None else None
        if vectors is None:
            return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]
        inner = {id(p) for p in vectors.parameters()}
        return [{"params": [p for p in vectors.parameters() if p.requires_grad], "lr": self.cfg.encoder_lr},
                {"params": [p for p in self.parameters() if p.requires_grad and id(p) not in inner], "lr": lr}]


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


# ---------------------------------------------------------------------------------------------
# Table 3, last row: the acoustic view with attention over frames ("B-ACO-1 + Attention").


class AttentiveAcoustic(nn.Module):
    """BLSTM x2 over frames, then context attention (Eq. 2 of §3.3) over frames instead of the mean.

    The richer student of Table 3's last row; needs no words. `explain["frame_attention"]` (B, T).
    """

    def __init__(self, spec: InputSpec, cfg: BaselineConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = AcousticEncoder(spec.acoustic_dim, cfg)
        self.attention = ContextAttention(self.encoder.output_size)
        self.classifier = Classifier(self.encoder.output_size, spec.num_classes, cfg.dropout)

    def forward(self, batch: Batch) -> Output:
        x, mask = self.encoder.frames(batch)
        states = self.encoder.blstm(x, mask)  # (B, T, 2H)
        u, weights = self.attention(states, mask)  # (B, 2H), (B, T)
        return Output(self.classifier(u), u, {"frame_attention": weights})


register("B-ACO-1+attn", BaselineConfig, needs=("acoustic",),
         summary="Aguilar 2019 Table 3: BLSTMx2 over all frames + context attention")(AttentiveAcoustic)


# ---------------------------------------------------------------------------------------------
# Table 2, hierarchical rows: acoustic words (§3.2), GMU (Eq. 1), context attention (§3.3).


@dataclass
class HierarchicalConfig:
    hidden: int = 256  # per direction, for the frame BLSTM (acoustic words) and the word BLSTM
    layers: int = 2  # frame-level BLSTM layers that produce the acoustic words
    word_layers: int = 2  # word-level BLSTM layers over the fused words (H-MM-*)
    dropout: float = 0.4
    use_lexical: bool = True  # False: H-ACO (acoustic words, mean-pooled)
    gmu: bool = False  # H-MM-2, H-MM-4: fuse each word with a GMU instead of concatenating
    attention: bool = False  # H-MM-3, H-MM-4: context attention instead of the mean over words
    gmu_size: int = 0  # GMU output size; 0 = hidden
    attention_size: int = 0  # d_a of the context attention; 0 = size of the word states


def word_spans(batch: Batch) -> tuple[Tensor, Tensor]:
    """Each word's frames [start, end), clamped to its own utterance's real frames.

    `collate` clamps spans to the padded batch length; clamping again to the utterance's own
    length gives exactly the spans a batch of one would have, so padding never changes them.
    Returns start, end: (B, W) long, both 0 on padded words.
    """
    if batch.word_frames is None or batch.word_mask is None or batch.acoustic_mask is None:
        raise ValueError("hierarchical models need frames and word times (batch.word_frames)")
    length = batch.acoustic_mask.sum(1, keepdim=True)  # (B, 1)
    start = torch.minimum(batch.word_frames[..., 0], (length - 1).clamp(min=0))  # (B, W)
    end = torch.minimum(torch.maximum(batch.word_frames[..., 1], start + 1), length)
    real = batch.word_mask.long()
    return start * real, end * real


class AcousticWords(nn.Module):
    """Acoustic word representations (Aguilar et al. 2019, §3.2, Figure 1).

    Frames outside every word (silence, other speakers) are dropped first; a BLSTM runs over
    the remaining frames; word w is the forward state at its last frame concatenated with the
    backward state at its first frame. Word spans are remapped onto the compacted frame grid
    with the cumulative count of kept frames.
    (B, T, D) frames + (B, W, 2) spans -> (B, W, 2H); padded words are 0.
    """

    def __init__(self, acoustic_dim: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.hidden = hidden
        self.blstm = BLSTM(acoustic_dim, hidden, layers, dropout)
        self.output_size = self.blstm.output_size

    def forward(self, batch: Batch) -> Tensor:
        x, frame_mask = batch.acoustic, batch.acoustic_mask  # (B, T, D), (B, T)
        word_mask = batch.word_mask  # (B, W)
        start, end = word_spans(batch)  # (B, W)
        in_words = alignment_matrix(torch.stack([start, end], -1), x.shape[1], word_mask).amax(1) > 0
        keep = in_words & frame_mask  # (B, T)
        # An utterance without words keeps its frames (its words are all masked anyway).
        keep = torch.where(keep.any(1, keepdim=True), keep, frame_mask)
        kept_upto = keep.long().cumsum(1)  # (B, T) kept frames up to and including t
        kept_before = kept_upto - keep.long()  # (B, T) kept frames strictly before t
        first = torch.gather(kept_before, 1, start)  # (B, W) first frame on the compacted grid
        last = torch.gather(kept_upto, 1, (end - 1).clamp(min=0)) - 1  # (B, W) last frame
        first, last = first.clamp(min=0), last.clamp(min=0)

        frames, mask = compact(x, keep)  # (B, T', D)
        states = self.blstm(frames, mask)  # (B, T', 2H): forward half first, backward half last
        h = self.hidden
        forward = torch.gather(states[..., :h], 1, last.unsqueeze(-1).expand(-1, -1, h))  # (B, W, H)
        backward = torch.gather(states[..., h:], 1, first.unsqueeze(-1).expand(-1, -1, h))  # (B, W, H)
        words = torch.cat([forward, backward], dim=-1)  # (B, W, 2H)
        return words * word_mask.unsqueeze(-1).to(words.dtype)


class Hierarchical(nn.Module):
    """H-ACO and H-MM-1..4 (Aguilar et al. 2019, §3.3 and §4.2, Table 2).

    H-ACO: acoustic words, mean over words, softmax layer.
    H-MM:  per word, acoustic word and lexical word vector are concatenated (H-MM-1, H-MM-3)
           or fused by a GMU with batch-normalised inputs (Eq. 1; H-MM-2, H-MM-4), then a
           BLSTM x2 over words, then mean pooling (H-MM-1, H-MM-2) or context attention
           (Eq. 2 of §3.3; H-MM-3, H-MM-4), then a softmax layer.
    explain: "gate" (B, W) = mean over channels of the GMU z (the acoustic share; 0 on padding),
             "attention" (B, W) = context attention weights (sum to 1 over real words).
    """

    def __init__(self, spec: InputSpec, cfg: HierarchicalConfig):
        super().__init__()
        self.cfg = cfg
        self.acoustic_words = AcousticWords(spec.acoustic_dim, cfg.hidden, cfg.layers, cfg.dropout)
        size = self.acoustic_words.output_size
        self.gmu = self.word_blstm = self.attention = None
        if cfg.use_lexical:
            if cfg.gmu:
                self.gmu = GMU(size, spec.word_dim, cfg.gmu_size or cfg.hidden)
                fused = cfg.gmu_size or cfg.hidden
            else:
                fused = size + spec.word_dim
            self.fused_dropout = nn.Dropout(cfg.dropout)
            self.word_blstm = BLSTM(fused, cfg.hidden, cfg.word_layers, cfg.dropout)
            size = self.word_blstm.output_size
        if cfg.attention:
            self.attention = ContextAttention(size, cfg.attention_size or None)
        self.classifier = Classifier(size, spec.num_classes, cfg.dropout)

    def forward(self, batch: Batch) -> Output:
        mask = batch.word_mask  # (B, W)
        words = self.acoustic_words(batch)  # (B, W, 2H)
        explain: dict[str, Tensor] = {}
        if self.word_blstm is not None:
            if batch.words is None:
                raise ValueError("H-MM models need word vectors (batch.words)")
            if self.gmu is not None:
                fused, z = self.gmu(words, batch.words, mask)  # (B, W, G), (B, W, G)
                explain["gate"] = z.mean(-1)  # (B, W) acoustic share per word
            else:
                fused = torch.cat([words, batch.words], dim=-1)  # (B, W, 2H + D_w)
            words = self.word_blstm(self.fused_dropout(fused), mask)  # (B, W, 2H)
        if self.attention is not None:
            u, weights = self.attention(words, mask)  # (B, 2H), (B, W)
            explain["attention"] = weights
        else:
            u = masked_mean(words, mask)  # (B, 2H)
        return Output(self.classifier(u), u, explain)


_HIER_NEEDS = ("acoustic", "words", "word_frames")
register("H-ACO", HierarchicalConfig, needs=("acoustic", "word_frames"),
         summary="Aguilar 2019: acoustic words (BLSTMx2 over speech frames), mean-pool",
         use_lexical=False)(Hierarchical)
register("H-MM-1", HierarchicalConfig, needs=_HIER_NEEDS,
         summary="Aguilar 2019: acoustic words + word vectors concatenated, BLSTMx2, mean-pool")(Hierarchical)
register("H-MM-2", HierarchicalConfig, needs=_HIER_NEEDS,
         summary="Aguilar 2019: H-MM-1 with GMU fusion", gmu=True)(Hierarchical)
register("H-MM-3", HierarchicalConfig, needs=_HIER_NEEDS,
         summary="Aguilar 2019: H-MM-1 with context attention", attention=True)(Hierarchical)
register("H-MM-4", HierarchicalConfig, needs=_HIER_NEEDS,
         summary="Aguilar 2019: GMU fusion + context attention", gmu=True, attention=True)(Hierarchical)
