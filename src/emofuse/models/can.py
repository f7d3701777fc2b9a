"""Lee, Song, Jeong, Choi: "Convolutional Attention Networks for Multimodal Emotion Recognition
from Speech and Text Data" (orbis.ai, 2018; §2 and Figure 1 for the model, §3.2 for the input).

Reproduces the two models of Tables 1-2 (CMU-MOSEI, 6 emotions):
  - "can": the attention network of Figure 1. A spectrogram CNN and a word CNN (32 kernels of
    3, max-pool 2) each end in a 1x1 convolution; the attention matrix is the softmax of the
    dot products between word latent vectors e_i and spectrogram latent vectors f_t (Eq. 1);
    the attention of the words is broadcast back to the spectrogram's size (x 2^P for P
    pooling layers) and multiplied with the input spectrogram (Eq. 2); a third CNN with dense
    layers 1024, 512, 128 (dropout 0.1 on the last hidden layer) classifies.
  - "can-shallow": the baseline of Figure 4: the same two unimodal CNNs (the very same
    classes), their feature vectors concatenated, the same dense head.

Inputs: `batch.acoustic` is the `spectrogram8k` feature (8 kHz, Hamming window 800, log dB;
`features/frames.py`: 10 ms hop, 200 bins of 20 Hz over 0-4 kHz), (B, T, F); `batch.words`
are GloVe vectors (300-d in the paper, 50-d with the packaged GloVe here). The paper feeds a
fixed 200 x 400 spectrogram (read here as 200 bins x 400 frames = 4 s) and 40 words: each
utterance is cropped (from its start) or padded to `time_frames` x `freq_bins` and
`max_words` here, and every padded time position and word is masked out of the attention
softmax (the fix the paper's §5 asks for: "loss masking on the padding").

Choices the paper leaves open, made here and named in the config:
  - Spectrogram positions are time positions: the pooled CNN map (B, C, T', F') is read as
    T' vectors of C x F' features, and the 1x1 convolution runs over that time axis, so
    Figure 2's attention matrix has time on one axis and words on the other and its values are
    broadcast over the whole frequency width ("applied to the entire width").
  - Eq. 2 sums the attention over words; here the sum is divided by the number of real words
    and multiplied by the number of real time positions, so uniform attention leaves the
    spectrogram unchanged and the scale does not depend on sentence length.
  - The word CNN does not pool by default (`word_pool: false`), so each row of the attention
    matrix is one word (what the explanation shows); `word_pool: true` pools as the paper does
    and each word then reports its pooled group's row.
  - Dot products are divided by sqrt(latent) (`scaled_scores`) to keep the softmax from
    saturating at initialisation; `scaled_scores: false` is Eq. 1 as printed.
  - The spectrogram is standardised per utterance over its real cells (`normalize_input`),
    so SGD at 1e-3 sees inputs of unit scale rather than raw decibels; padding is then 0.
    With the engine's fold-level z-normalisation (`data.normalise: true`) configs turn it off,
    which keeps the loudness differences between utterances.
  - `freq_downsample` averages adjacent frequency bins before everything else: a CPU budget
    knob (1 = the paper's full resolution).

CMU-MOSEI labels are six intensities per segment, not one class: `emofuse.corpora.mosei`
(`mosei_class`) turns them into the single class this model predicts (the strongest emotion
if > 0; all-zero segments excluded; ties dropped by default), which is how a 6-way softmax
with per-class precision, recall, F1 and a confusion matrix (Tables 1-2) is defined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emofuse.errors import ConfigError
from emofuse.features.batch import Batch
from emofuse.models.base import InputSpec, Output, register
from emofuse.models.layers import masked_softmax


@dataclass
class CANConfig:
    time_frames: int = 400  # fixed spectrogram length (paper: 200 x 400; 4 s of 10 ms frames)
    freq_bins: int = 200  # fixed number of frequency bins kept (lowest first)
    freq_downsample: int = 1  # average this many adjacent bins first (CPU budget; 1 = paper)
    max_words: int = 40  # paper: 40 words of 300-d GloVe
    channels: int = 32  # kernels per convolution (paper: 32)
    kernel: int = 3  # paper: 3
    spec_layers: int = 3  # P conv + max-pool(2) blocks in the spectrogram CNN
    word_layers: int = 2  # conv blocks in the word CNN
    word_pool: bool = False  # max-pool 2 in the word CNN too (paper) or one latent per word
    latent: int = 64  # size of e_i and f_t after the 1x1 convolutions
    classifier_layers: int = 3  # conv + max-pool(2) blocks of the classifier CNN
    dense: tuple[int, ...] = (1024, 512, 128)  # paper: 1024, 512, 128
    dropout: float = 0.1  # on the last hidden layer (paper: 0.1)
    scaled_scores: bool = True  # e_i . f_t / sqrt(latent)
    normalize_input: bool = True  # per-utterance standardisation of the log spectrogram
    attention: bool = True  # False = the shallow concatenation baseline


# --- fixed-size inputs ---------------------------------------------------------------------


def fixed_spectrogram(batch: Batch, cfg: CANConfig) -> tuple[Tensor, Tensor]:
    """Crop/pad the spectrogram to (B, time_frames, freq_bins // freq_downsample) plus a time mask.

    Padded cells are 0 after the optional per-utterance standardisation over real cells.
    """
    if batch.acoustic is None:
        raise ValueError("the convolutional attention network needs a spectrogram in batch.acoustic")
    x = batch.acoustic  # (B, T, F)
    mask = batch.acoustic_mask
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    x, mask = x[:, : cfg.time_frames], mask[:, : cfg.time_frames]
    x = x[:, :, : cfg.freq_bins]
    if x.shape[1] < cfg.time_frames:
        x = F.pad(x, (0, 0, 0, cfg.time_frames - x.shape[1]))
        mask = F.pad(mask, (0, cfg.time_frames - mask.shape[1]), value=False)
    if x.shape[2] < cfg.freq_bins:
        x = F.pad(x, (0, cfg.freq_bins - x.shape[2]))  # bins the feature lacks: 0 (the same for every utterance)
    if cfg.freq_downsample > 1:
        x = F.avg_pool1d(x, cfg.freq_downsample)  # pools the last (frequency) axis
    keep = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    if cfg.normalize_input:
        count = (keep.sum((1, 2)) * x.shape[2]).clamp(min=1.0)  # real cells per utterance
        mean = (x * keep).sum((1, 2)) / count  # (B,)
        var = (((x - mean[:, None, None]) * keep) ** 2).sum((1, 2)) / count
        x = (x - mean[:, None, None]) / (var.sqrt()[:, None, None] + 1e-5)
    return x * keep, mask  # (B, T, F'), (B, T)


def fixed_words(batch: Batch, cfg: CANConfig) -> tuple[Tensor, Tensor]:
    """Crop/pad the word vectors to (B, max_words, D_w) plus a word mask; padding is 0."""
    if batch.words is None:
        raise ValueError("the convolutional attention network needs word vectors in batch.words")
    w, mask = batch.words[:, : cfg.max_words], batch.word_mask[:, : cfg.max_words]
    if w.shape[1] < cfg.max_words:
        w = F.pad(w, (0, 0, 0, cfg.max_words - w.shape[1]))
        mask = F.pad(mask, (0, cfg.max_words - mask.shape[1]), value=False)
    return w * mask.unsqueeze(-1).to(w.dtype), mask  # (B, L, D_w), (B, L)


def pool_mask(mask: Tensor) -> Tensor:
    """Mask after a max-pool of 2 along its last axis: a pooled position is real if any input is."""
    return F.max_pool1d(mask.unsqueeze(1).float(), 2).squeeze(1) > 0


# --- unimodal encoders (shared by "can" and "can-shallow") ------------------------------------


class SpectrogramCNN(nn.Module):
    """P blocks of conv 3x3 (32 kernels) + ReLU + max-pool 2 over the (time, frequency) image.

    (B, T, F), (B, T) -> (B, C, T / 2^P, F / 2^P), (B, T / 2^P). Padded time rows are zeroed
    after every block so real positions never read padding produced by a bias.
    """

    def __init__(self, cfg: CANConfig, layers: int):
        super().__init__()
        self.layers = layers
        self.convs = nn.ModuleList(
            nn.Conv2d(1 if i == 0 else cfg.channels, cfg.channels, cfg.kernel, padding=cfg.kernel // 2)
            for i in range(layers)
        )

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h = x.unsqueeze(1)  # (B, 1, T, F)
        for conv in self.convs:
            h = F.max_pool2d(F.relu(conv(h)), 2)  # (B, C, T/2, F/2)
            mask = pool_mask(mask)[:, : h.shape[2]]
            h = h * mask[:, None, :, None].to(h.dtype)
        return h, mask


class WordCNN(nn.Module):
    """Blocks of 1-D conv 3 (32 kernels) + ReLU (+ max-pool 2) over the word sequence.

    (B, L, D_w), (B, L) -> (B, C, L'), (B, L') with L' = L or L / 2^layers when pooling.
    """

    def __init__(self, word_dim: int, cfg: CANConfig):
        super().__init__()
        self.pool = cfg.word_pool
        self.convs = nn.ModuleList(
            nn.Conv1d(word_dim if i == 0 else cfg.channels, cfg.channels, cfg.kernel, padding=cfg.kernel // 2)
            for i in range(cfg.word_layers)
        )

    def forward(self, w: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h = w.transpose(1, 2)  # (B, D_w, L)
        for conv in self.convs:
            h = F.relu(conv(h))  # (B, C, L)
            if self.pool:
                h = F.max_pool1d(h, 2)  # (B, C, L/2)
                mask = pool_mask(mask)[:, : h.shape[2]]
            h = h * mask.unsqueeze(1).to(h.dtype)
        return h, mask


class DenseHead(nn.Module):
    """Dense 1024 -> 512 -> 128 with ReLU, dropout on the last hidden layer, then the softmax layer.

    (B, D) -> logits (B, C), last hidden layer (B, 128) = the utterance vector.
    """

    def __init__(self, size: int, widths: tuple[int, ...], num_classes: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.hidden = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(size, num_classes)
        self.output_size = size

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u = self.hidden(x)
        return self.out(self.dropout(u)), u


def _pooled(size: int, times: int) -> int:
    for _ in range(times):
        size //= 2
    return size


def _check_sizes(cfg: CANConfig) -> int:
    """The frequency width after downsampling; refuses sizes the pooling would reduce to zero."""
    width = cfg.freq_bins // max(cfg.freq_downsample, 1)
    layers = max(cfg.spec_layers, cfg.classifier_layers)
    if _pooled(cfg.time_frames, layers) < 1 or _pooled(width, layers) < 1:
        raise ConfigError(
            f"CAN: a {cfg.time_frames} x {width} spectrogram cannot go through {layers} "
            f"max-pool(2) layers; raise time_frames/freq_bins or lower the layer counts"
        )
    if cfg.word_pool and _pooled(cfg.max_words, cfg.word_layers) < 1:
        raise ConfigError(f"CAN: {cfg.max_words} words cannot go through {cfg.word_layers} max-pool(2) layers")
    return width


# --- the models ------------------------------------------------------------------------------


class WordSpectrogramAttention(nn.Module):
    """1x1 convolutions to latent vectors, then Eq. 1 of Lee et al.: a_it = softmax_t(e_i . f_t).

    spec (B, C, T', F'), words (B, C, L') -> alignment (B, L', T') whose rows over real words
    sum to 1 over the real time positions, and are 0 on padded words.
    """

    def __init__(self, spec_features: int, word_features: int, cfg: CANConfig):
        super().__init__()
        self.spec_1x1 = nn.Conv1d(spec_features, cfg.latent, 1)
        self.word_1x1 = nn.Conv1d(word_features, cfg.latent, 1)
        self.scale = 1.0 / math.sqrt(cfg.latent) if cfg.scaled_scores else 1.0

    def forward(self, spec: Tensor, time_mask: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        b, c, t, f = spec.shape
        by_time = spec.permute(0, 1, 3, 2).reshape(b, c * f, t)  # (B, C*F', T')
        f_t = self.spec_1x1(by_time).transpose(1, 2)  # (B, T', latent)
        e_i = self.word_1x1(words).transpose(1, 2)  # (B, L', latent)
        scores = torch.einsum("bld,btd->blt", e_i, f_t) * self.scale  # (B, L', T')
        allowed = word_mask.unsqueeze(-1) & time_mask.unsqueeze(1)  # (B, L', T')
        return masked_softmax(scores, allowed)


class ConvolutionalAttentionNetwork(nn.Module):
    """Figure 1 ("can") or, with `attention: false`, the shallow model of Figure 4 ("can-shallow")."""

    def __init__(self, spec: InputSpec, cfg: CANConfig):
        super().__init__()
        self.cfg = cfg
        width = _check_sizes(cfg)
        self.spectrogram_cnn = SpectrogramCNN(cfg, cfg.spec_layers)
        self.word_cnn = WordCNN(spec.word_dim, cfg)
        t_enc, f_enc = _pooled(cfg.time_frames, cfg.spec_layers), _pooled(width, cfg.spec_layers)
        words_enc = _pooled(cfg.max_words, cfg.word_layers) if cfg.word_pool else cfg.max_words
        if cfg.attention:
            self.attention = WordSpectrogramAttention(cfg.channels * f_enc, cfg.channels, cfg)
            self.classifier_cnn = SpectrogramCNN(cfg, cfg.classifier_layers)
            t_cls, f_cls = _pooled(cfg.time_frames, cfg.classifier_layers), _pooled(width, cfg.classifier_layers)
            head_in = cfg.channels * t_cls * f_cls
        else:
            head_in = cfg.channels * t_enc * f_enc + cfg.channels * words_enc
        self.head = DenseHead(head_in, tuple(cfg.dense), spec.num_classes, cfg.dropout)

    def forward(self, batch: Batch) -> Output:
        x, time_mask = fixed_spectrogram(batch, self.cfg)  # (B, T, F'), (B, T)
        w, word_mask = fixed_words(batch, self.cfg)  # (B, L, D_w), (B, L)
        spec_h, spec_mask = self.spectrogram_cnn(x, time_mask)  # (B, C, T', F''), (B, T')
        word_h, word_h_mask = self.word_cnn(w, word_mask)  # (B, C, L'), (B, L')
        if not self.cfg.attention:
            joint = torch.cat([spec_h.flatten(1), word_h.flatten(1)], dim=1)  # (B, C*T'*F'' + C*L')
            logits, u = self.head(joint)
            return Output(logits, u)

        alignment = self.attention(spec_h, spec_mask, word_h, word_h_mask)  # (B, L', T')
        weight = self.time_weight(alignment, word_h_mask, spec_mask)  # (B, T')
        factor = 2 ** self.cfg.spec_layers
        full = weight.repeat_interleave(factor, dim=1)[:, : x.shape[1]]  # (B, <= T)
        if full.shape[1] < x.shape[1]:  # frames the floor of the pooling dropped keep the last weight
            full = torch.cat([full, full[:, -1:].expand(-1, x.shape[1] - full.shape[1])], dim=1)
        attended = x * (full * time_mask.to(full.dtype)).unsqueeze(-1)  # Eq. 2 on the input, (B, T, F')
        cls_h, _ = self.classifier_cnn(attended, time_mask)  # (B, C, T'', F''')
        logits, u = self.head(cls_h.flatten(1))

        per_word = alignment
        if self.cfg.word_pool:  # each word reports the row of its pooled group
            per_word = alignment.repeat_interleave(2 ** self.cfg.word_layers, dim=1)[:, : w.shape[1]]
            per_word = per_word * word_mask.unsqueeze(-1).to(per_word.dtype)
        n_words = batch.words.shape[1]  # back to the batch's word axis, (B, W, T')
        per_word = F.pad(per_word[:, :n_words], (0, 0, 0, max(0, n_words - per_word.shape[1])))
        hop = batch.acoustic_hop * factor
        return Output(logits, u, {
            "alignment": per_word,  # (B, W, T') words x pooled spectrogram positions
            "alignment_hop": torch.full((x.shape[0],), hop, device=x.device),  # seconds per column
            "time_weight": weight,  # (B, T') what multiplies the spectrogram
        })

    @staticmethod
    def time_weight(alignment: Tensor, word_mask: Tensor, time_mask: Tensor) -> Tensor:
        """Eq. 2's sum over words, as a mean over real words times the real length: uniform -> 1."""
        n_words = word_mask.sum(1, keepdim=True).to(alignment.dtype)  # (B, 1)
        n_times = time_mask.sum(1, keepdim=True).to(alignment.dtype)  # (B, 1)
        weight = alignment.sum(1) / n_words.clamp(min=1.0) * n_times  # (B, T')
        # No words at all (empty transcript): leave the spectrogram as it is.
        weight = torch.where(n_words > 0, weight, torch.ones_like(weight))
        return weight * time_mask.to(weight.dtype)


register("can", CANConfig, needs=("acoustic", "words"),
         summary="Lee et al. 2018: spectrogram CNN x word CNN attention matrix applied to the spectrogram, "
                 "CNN classifier")(ConvolutionalAttentionNetwork)
register("can-shallow", CANConfig, needs=("acoustic", "words"),
         summary="Lee et al. 2018 baseline: spectrogram CNN and word CNN feature vectors concatenated",
         attention=False)(ConvolutionalAttentionNetwork)
