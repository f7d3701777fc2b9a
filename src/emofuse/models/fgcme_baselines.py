"""The baselines of Table 1 of Li et al. 2021 (FG_CME, Interspeech 2021, §4.2), re-implemented from
the descriptions there and in the papers it cites. Every model reads the same inputs as FG_CME
(fbank40 frames at 10 ms, word vectors) and ends with the same FCN (128, classes), so the rows
differ only in how they encode and fuse.

    cnn-lstm             Acoustic CNN+LSTM (Satt et al. 2017): FG_CME's 1-D CNN (5, 2, 2 /
                         64, 128, 128) over frames, a BiLSTM, max over time.
    lstm-attn-acoustic   Acoustic LSTM+Attn (Mirsamadi et al. 2017): BiLSTM over frames,
                         additive attention pooling.
    lstm-attn-semantic   Semantic LSTM+Attn: the same over word vectors.
    uttconcat            UttConcat (Yoon et al. 2018, MDRE): one BiLSTM per modality, each
                         summarised by its final states, concatenated at utterance level.
    attnfusion           AttnFusion (Xu et al. 2019): each word's BiLSTM state queries the
                         frames' BiLSTM states with multi-head attention; the attended
                         acoustics and the word state are concatenated per word, a BiLSTM
                         runs over words, max over words.
    mha                  MHA (Yoon et al. 2019, multi-hop attention): the audio summary
                         attends over the words, that result attends over the frames, and so
                         on for `hops` hops; the last two hop vectors are concatenated.

Every block masks padding (tests/test_fgcme_baselines.py checks alone vs padded). The BiLSTMs
are `layers.BLSTM` (padding invariant without packed sequences on CPU, far faster there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from emofuse.features.batch import Batch
from emofuse.models.base import InputSpec, Output, register
from emofuse.models.fgcme2021 import MaskedConvStack
from emofuse.models.layers import BLSTM, ContextAttention, masked_max, masked_softmax


@dataclass
class FGCMEBaselineConfig:
    hidden: int = 128  # per direction of each BiLSTM (frame BiLSTMs are the costly part)
    layers: int = 1
    fcn_hidden: int = 128  # FCN (128, classes), as FG_CME
    dropout: float = 0.2
    conv_kernels: tuple[int, ...] = (5, 2, 2)  # cnn-lstm only
    conv_filters: tuple[int, ...] = (64, 128, 128)
    heads: int = 4  # attnfusion: attention heads
    hops: int = 3  # mha: number of attention hops (MHA-3)


def fcn(size: int, cfg: FGCMEBaselineConfig, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Dropout(cfg.dropout), nn.Linear(size, cfg.fcn_hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
        nn.Linear(cfg.fcn_hidden, num_classes),
    )


def final_states(out: Tensor, mask: Tensor) -> Tensor:
    """[forward state at the last real step; backward state at the first step] of a BLSTM.

    out: (B, T, 2H) from a BLSTM, mask (B, T) -> (B, 2H).
    """
    half = out.shape[-1] // 2
    last = (mask.sum(1) - 1).clamp(min=0)  # (B,)
    forward = out[torch.arange(out.shape[0], device=out.device), last, :half]  # (B, H)
    return torch.cat([forward, out[:, 0, half:]], dim=-1)


def attend(query: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Dot-product attention of one query per utterance over masked keys.

    query (B, H), keys (B, T, H), mask (B, T) -> context (B, H), weights (B, T).
    """
    weights = masked_softmax(torch.einsum("bh,bth->bt", query, keys), mask)
    return torch.einsum("bt,bth->bh", weights, keys), weights


# ------------------------------------------------------------------------------ acoustic only


class CNNLSTM(nn.Module):
    """Acoustic CNN+LSTM (Satt et al. 2017 as described in §4.2 of FG_CME)."""

    def __init__(self, spec: InputSpec, cfg: FGCMEBaselineConfig):
        super().__init__()
        self.cnn = MaskedConvStack(spec.acoustic_dim, tuple(cfg.conv_kernels), tuple(cfg.conv_filters))
        self.blstm = BLSTM(self.cnn.output_size, cfg.hidden, cfg.layers, cfg.dropout)
        self.fcn = fcn(self.blstm.output_size, cfg, spec.num_classes)

    def forward(self, batch: Batch) -> Output:
        x, mask = self.cnn(batch.acoustic, batch.acoustic_mask)  # (B, T - 6, 128)
        h = masked_max(self.blstm(x, mask), mask)  # (B, 2H)
        return Output(self.fcn(h), h)


class LSTMAttention(nn.Module):
    """BiLSTM + additive attention pooling (Mirsamadi et al. 2017), over frames or words."""

    def __init__(self, spec: InputSpec, cfg: FGCMEBaselineConfig, modality: str):
        super().__init__()
        self.modality = modality
        size = spec.acoustic_dim if modality == "acoustic" else spec.word_dim
        self.blstm = BLSTM(size, cfg.hidden, cfg.layers, cfg.dropout)
        self.attention = ContextAttention(self.blstm.output_size)
        self.fcn = fcn(self.blstm.output_size, cfg, spec.num_classes)

    def forward(self, batch: Batch) -> Output:
        if self.modality == "acoustic":
            x, mask = batch.acoustic, batch.acoustic_mask  # (B, T, 40)
        else:
            x, mask = batch.words, batch.word_mask  # (B, W, D_w)
        u, weights = self.attention(self.blstm(x, mask), mask)  # (B, 2H), (B, T or W)
        key = "frame_attention" if self.modality == "acoustic" else "attention"
        return Output(self.fcn(u), u, {key: weights})


class LSTMAttentionAcoustic(LSTMAttention):
    def __init__(self, spec: InputSpec, cfg: FGCMEBaselineConfig):
        super().__init__(spec, cfg, "acoustic")


class LSTMAttentionSemantic(LSTMAttention):
    def __init__(self, spec: InputSpec, cfg: FGCMEBaselineConfig):
        super().__init__(spec, cfg, "semantic")


# ---------------------------------------------------------------------------- both modalities


class UttConcat(nn.Module):
    """Two BiLSTM encoders, final states concatenated at utterance level (Yoon et al. 2018)."""

    def __init__(self, spec: InputSpec, cfg: FGCMEBaselineConfig):
        super().__init__()
        self.audio = BLSTM(spec.acoustic_dim, cfg.hidden, cfg.layers, cfg.dropout)
        self.text = BLSTM(spec.word_dim, cfg.hidden, cfg.layers, cfg.dropout)
        self.fcn = fcn(4 * cfg.hidden, cfg, spec.num_classes)

    def forward(self, batch: Batch) -> Output:
        a = final_states(self.audio(batch.acoustic, batch.acoustic_mask), batch.acoustic_mask)  # (B, 2H)
        t = final_states(self.text(batch.words, batch.word_mask), batch.word_mask)  # (B, 2H)
        u = torch.cat([a, t], dim=-1)  # (B, 4H)
        return Output(self.fcn(u), u)


class AttnFusion(nn.Module):
    """Word-level fusion by multi-head attention from words to frames (Xu et al. 2019)."""

    def __init__(self, spec: InputSpec, cfg: FGCMEBaselineConfig):
        super().__init__()
        self.audio = BLSTM(spec.acoustic_dim, cfg.hidden, cfg.layers, cfg.dropout)
        self.text = BLSTM(spec.word_dim, cfg.hidden, cfg.layers, cfg.dropout)
        size = 2 * cfg.hidden
        self.attention = nn.MultiheadAttention(size, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.fusion = BLSTM(2 * size, cfg.hidden, 1)
        self.fcn = fcn(size, cfg, spec.num_classes)

    def forward(self, batch: Batch) -> Output:
        word_mask = batch.word_mask
        frames = self.audio(batch.acoustic, batch.acoustic_mask)  # (B, T, 2H)
        words = self.text(batch.words, word_mask)  # (B, W, 2H)
        aligned, weights = self.attention(
            words, frames, frames, key_padding_mask=~batch.acoustic_mask, need_weights=True,
        )  # (B, W, 2H), (B, W, T) averaged over heads
        keep = word_mask.unsqueeze(-1).to(aligned.dtype)
        fused = self.fusion(torch.cat([aligned, words], dim=-1) * keep, word_mask)  # (B, W, 2H)
        h = masked_max(fused, word_mask)  # (B, 2H)
        return Output(self.fcn(h), h, {"alignment": weights * keep})


class MultiHopAttention(nn.Module):
    """Multi-hop attention between modalities (Yoon et al. 2019, MHA-N).

    Hop 1: the audio summary a (final BiLSTM states) attends over the word states -> H1.
    Hop 2: H1 attends over the frame states -> H2. Hop 3: H2 over the words -> H3, ...
    The classifier reads [H_{N-1}; H_N] (for N = 1: [a; H1]).
    """

    def __init__(self, spec: InputSpec, cfg: FGCMEBaselineConfig):
        super().__init__()
        if cfg.hops < 1:
            raise ValueError(f"mha needs hops >= 1, not {cfg.hops}")
        self.hops = cfg.hops
        self.audio = BLSTM(spec.acoustic_dim, cfg.hidden, cfg.layers, cfg.dropout)
        self.text = BLSTM(spec.word_dim, cfg.hidden, cfg.layers, cfg.dropout)
        self.fcn = fcn(4 * cfg.hidden, cfg, spec.num_classes)

    def forward(self, batch: Batch) -> Output:
        frames = self.audio(batch.acoustic, batch.acoustic_mask)  # (B, T, 2H)
        words = self.text(batch.words, batch.word_mask)  # (B, W, 2H)
        vectors = [final_states(frames, batch.acoustic_mask)]  # audio summary (B, 2H)
        explain = {}
        for hop in range(1, self.hops + 1):
            if hop % 2 == 1:  # odd hops read the words
                context, weights = attend(vectors[-1], words, batch.word_mask)
                explain.setdefault("attention", weights)  # (B, W): the first hop's word weights
            else:
                context, weights = attend(vectors[-1], frames, batch.acoustic_mask)
            vectors.append(context)
        u = torch.cat(vectors[-2:], dim=-1)  # (B, 4H)
        return Output(self.fcn(u), u, explain)


register("cnn-lstm", FGCMEBaselineConfig, needs=("acoustic",),
         summary="FG_CME Table 1: acoustic CNN + BiLSTM")(CNNLSTM)
register("lstm-attn-acoustic", FGCMEBaselineConfig, needs=("acoustic",),
         summary="FG_CME Table 1: acoustic BiLSTM + attention")(LSTMAttentionAcoustic)
register("lstm-attn-semantic", FGCMEBaselineConfig, needs=("words",),
         summary="FG_CME Table 1: semantic BiLSTM + attention")(LSTMAttentionSemantic)
register("uttconcat", FGCMEBaselineConfig, needs=("acoustic", "words"),
         summary="FG_CME Table 1: two BiLSTMs concatenated at utterance level")(UttConcat)
register("attnfusion", FGCMEBaselineConfig, needs=("acoustic", "words"),
         summary="FG_CME Table 1: word-level multi-head attention fusion")(AttnFusion)
register("mha", FGCMEBaselineConfig, needs=("acoustic", "words"),
         summary="FG_CME Table 1: multi-hop attention between modalities")(MultiHopAttention)
