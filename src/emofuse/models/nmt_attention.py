"""NMT-style multimodal attention (Cid Ornelas, "Multimodal Emotion Recognition using Lexico-Acoustic
Language Descriptions", slides: global and local attention, scores after Bahdanau et al. 2014).

The text is the main modality ("decoder"), the audio the auxiliary one ("encoder"): a GRU over
word vectors (GloVe) yields states h_i; a convolutional front end over the raw waveform and a
GRU yield audio states h_s; each word attends over the audio states with Luong et al.'s
scores (slide "global attention"):

    score(h_i, h_s) = h_i^T h_s  (dot) | h_i^T W_a h_s  (general) | v_a^T tanh(W_a [h_i; h_s])  (concat)
    a_i(s) = softmax_s score(h_i, h_s),   c_i = sum_s a_i(s) h_s,   h~_i = tanh(W_c [c_i; h_i])

and the mean of h~_i over the real words is classified. The slides report that the free
("global") alignment overfits IEMOCAP (audio 52.7 %, text 62.5 %, multimodal 61 %) and propose
the two restricted modes implemented here:
  - "nmt-global": every word may attend to every real audio state.
  - "nmt-local": a window of +-`window` audio states around a monotonic position
    p_i = (i + 1/2) * T_real / W_real - 1/2 (word i's proportional place in the audio, Luong's
    local-m with the two sequences' lengths), with Luong's Gaussian exp(-(s - p_i)^2 / 2 sigma^2),
    sigma = window / 2, folded into the softmax so each row still sums to 1.
  - "nmt-forced": each word attends only to the audio states whose centre lies inside its own
    forced-alignment span (`batch.word_frames`, mapped to samples), so the alignment
    is given, not learned.
Every mode takes every score (`score: dot | general | concat`).
The attention matrix (B, W, T') is returned in `explain["alignment"]`, with the seconds per
column in `explain["alignment_hop"]` and each word's expected time `explain["attention_center"]`.

Audio front end: `batch.acoustic` is the `waveform` feature at 16 kHz, (B, T, 160) frames of
160 samples (10 ms) each as `features/frames.py` stores it, flattened back to (B, T * 160)
samples here; (B, S, 1) with `acoustic_hop` = 1/16000 works the same. `batch.word_frames`
(forced mode) are on that frame grid and become sample spans. The first convolution is a
learned filterbank, 400 samples wide (25 ms) with stride 160 (10 ms), followed by
log(1 + |.|): it brings 16 kHz down to 100 states per second at the cost of one 400-tap filter
per channel per 10 ms, like an STFT. Further convolutions (kernel 3, ReLU) may stride again
(the default's second layer halves the rate to 50 Hz, 20 ms per audio state). All convolutions are "valid": an audio state is real only if
its whole receptive field lies in real samples, so padding never reaches a real state, and
sample spans map to states through the stack's stride S and receptive field R
(state j covers samples [j S, j S + R)). After the filterbank each channel is normalised over
real states only: by default with batch statistics (masked batch normalisation), which keeps
the loudness differences between utterances that per-utterance standardisation
(`filterbank_norm: utterance`, CMVN-like) would remove; the waveform itself is expected
z-normalised with training-fold statistics (`data.normalise: true`).

Frames in place of the waveform (`frontend: frames`): any frame feature (a pretrained speech
encoder's 20 ms states, `hf:PATH`, or fbank40) is projected by one linear layer + ReLU to
`conv_channels[-1]` channels and read by the audio GRU as its states, one per frame; forced
spans are the batch's own frame spans on the feature's grid (`acoustic_hop`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from emofuse.errors import ConfigError
from emofuse.features.batch import Batch
from emofuse.models.base import InputSpec, Output, register
from emofuse.models.layers import Classifier, MaskedBatchNorm1d, masked_mean, masked_softmax

MODES = ("global", "local", "forced")
SCORES = ("dot", "general", "concat")
FILTERBANK_NORMS = ("batch", "utterance", "none")
FRONTENDS = ("waveform", "frames")


@dataclass
class NMTConfig:
    mode: str = "global"  # global | local | forced
    score: str = "general"  # dot | general | concat (Luong et al. 2015)
    text_hidden: int = 64  # GRU units over the word vectors
    audio_hidden: int = 64  # GRU units over the audio states
    bidirectional: bool = False  # both GRUs (the slides use one direction)
    conv_channels: tuple[int, ...] = (64, 64)  # front end: filters per layer
    conv_kernels: tuple[int, ...] = (400, 3)  # samples, then audio states
    conv_strides: tuple[int, ...] = (160, 2)  # 16 kHz -> 100 Hz -> 50 Hz
    attention_size: int = 64  # hidden size of the concat score
    window: int = 10  # local mode: half-width D in audio states
    gaussian: bool = True  # local mode: Luong's Gaussian around p_i
    normalize_waveform: bool = False  # per-utterance zero mean, unit variance over real samples
    # After the filterbank's log magnitude: "batch" = masked batch normalisation (keeps the
    # loudness differences between utterances), "utterance" = per-utterance, per-channel
    # standardisation (CMVN-like; removes them), "none".
    filterbank_norm: str = "batch"
    dropout: float = 0.3
    frontend: str = "waveform"  # "waveform" (the CNN above) or "frames" (a projection of frame features)


# --- blocks -----------------------------------------------------------------------------------


class GRU(nn.Module):
    """GRU over packed sequences, so padding never enters the states. (B, T, D) -> (B, T, H); pads 0."""

    def __init__(self, input_size: int, hidden: int, bidirectional: bool = False):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden, batch_first=True, bidirectional=bidirectional)
        self.output_size = hidden * (2 if bidirectional else 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out * mask.unsqueeze(-1).to(out.dtype)


class WaveformFrontEnd(nn.Module):
    """Strided valid 1-D convolutions over the raw waveform. (B, S, 1), (B, S) -> (B, T', C), (B, T').

    Layer 0 is a learned filterbank with log(1 + |.|) compression; later layers use ReLU.
    """

    def __init__(self, cfg: NMTConfig):
        super().__init__()
        if not (len(cfg.conv_channels) == len(cfg.conv_kernels) == len(cfg.conv_strides) >= 1):
            raise ConfigError("nmt: conv_channels, conv_kernels and conv_strides need the same length (>= 1)")
        self.kernels = [int(k) for k in cfg.conv_kernels]
        self.strides = [int(s) for s in cfg.conv_strides]
        self.normalize = cfg.normalize_waveform
        if cfg.filterbank_norm not in FILTERBANK_NORMS:
            raise ConfigError(
                f"nmt: filterbank_norm must be one of {', '.join(FILTERBANK_NORMS)}, not {cfg.filterbank_norm!r}")
        self.filterbank_norm = cfg.filterbank_norm
        self.batch_norm = MaskedBatchNorm1d(cfg.conv_channels[0]) if cfg.filterbank_norm == "batch" else None
        sizes = [1, *cfg.conv_channels]
        self.convs = nn.ModuleList(
            nn.Conv1d(sizes[i], sizes[i + 1], k, stride=s) for i, (k, s) in enumerate(zip(self.kernels, self.strides))
        )
        self.output_size = sizes[-1]
        # State j of the whole stack reads samples [j * stride, j * stride + field).
        self.stride = math.prod(self.strides)
        self.field = self.kernels[0] + sum(
            (k - 1) * math.prod(self.strides[:i]) for i, k in enumerate(self.kernels) if i > 0
        )

    def states_of_samples(self, spans: Tensor, n_states: Tensor) -> Tensor:
        """Map [start, end) sample spans (B, W, 2) to [start, end) audio-state spans.

        A state belongs to a word when the centre of its receptive field lies in the span;
        every word keeps at least one real state (as `collate` does on frame grids).
        """
        offset = (self.field - 1) / 2.0
        j = torch.ceil((spans.to(torch.float64) - offset) / self.stride).long()  # (B, W, 2)
        last = (n_states - 1).view(-1, 1)  # (B, 1)
        start = torch.minimum(j[..., 0].clamp(min=0), last)
        end = torch.minimum(torch.maximum(j[..., 1], start + 1), last + 1)
        return torch.stack([start, end], dim=-1)

    def forward(self, wave: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """wave: (B, T, P) frames of P samples each (the `waveform` feature: P = 160 per 10 ms,
        or P = 1 for a plain sample sequence), mask (B, T) on frames."""
        b, t, per_frame = wave.shape
        x = wave.reshape(b, t * per_frame)  # (B, S) samples
        mask = mask.repeat_interleave(per_frame, dim=1)  # (B, S)
        keep = mask.to(x.dtype)
        if self.normalize:
            count = keep.sum(1, keepdim=True).clamp(min=1.0)
            mean = (x * keep).sum(1, keepdim=True) / count
            std = ((((x - mean) * keep) ** 2).sum(1, keepdim=True) / count).sqrt()
            x = (x - mean) / (std + 1e-5)
        x = x * keep
        if x.shape[1] < self.field:  # too short for one state: zero-pad (as padding would)
            x = F.pad(x, (0, self.field - x.shape[1]))
        lengths = mask.sum(1)  # (B,) real samples
        h = x.unsqueeze(1)  # (B, 1, S)
        for i, (conv, k, s) in enumerate(zip(self.convs, self.kernels, self.strides)):
            h = conv(h)  # (B, C, T_i)
            lengths = (torch.div(lengths - k, s, rounding_mode="floor") + 1).clamp(min=1)
            state_mask = self._mask(lengths, h.shape[2])  # (B, T_i)
            if i == 0:  # learned filterbank: log magnitude, then normalisation over real states
                h = torch.log1p(h.abs())
                if self.batch_norm is not None:
                    h = self.batch_norm(h.transpose(1, 2), state_mask).transpose(1, 2)
                elif self.filterbank_norm == "utterance":
                    h = self._standardize(h, state_mask)
                else:
                    h = h * state_mask.unsqueeze(1).to(h.dtype)
            else:
                h = F.relu(h) * state_mask.unsqueeze(1).to(h.dtype)
        return h.transpose(1, 2), state_mask  # (B, T', C), (B, T')

    @staticmethod
    def _mask(lengths: Tensor, size: int) -> Tensor:
        return torch.arange(size, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)

    @staticmethod
    def _standardize(h: Tensor, mask: Tensor) -> Tensor:
        """Per-utterance, per-channel zero mean and unit variance over real states; padding -> 0."""
        keep = mask.unsqueeze(1).to(h.dtype)  # (B, 1, T)
        count = keep.sum(2, keepdim=True).clamp(min=1.0)
        mean = (h * keep).sum(2, keepdim=True) / count
        std = ((((h - mean) * keep) ** 2).sum(2, keepdim=True) / count).sqrt()
        return (h - mean) / (std + 1e-5) * keep


class FrameFrontEnd(nn.Module):
    """Frame features as audio states: (B, T, D), (B, T) -> (B, T, C), (B, T) (module docstring)."""

    stride = 1  # one state per frame
    field = 1

    def __init__(self, input_size: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(input_size, channels)
        self.output_size = channels

    def forward(self, frames: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return F.relu(self.proj(frames)) * mask.unsqueeze(-1).to(frames.dtype), mask  # (B, T, C)


class LuongScore(nn.Module):
    """score(h_i, h_s): dot, general or concat (Luong et al. 2015, Eq. 8). (B, W, Hq), (B, T, Hk) -> (B, W, T)."""

    def __init__(self, kind: str, query_size: int, key_size: int, attention_size: int):
        super().__init__()
        if kind not in SCORES:
            raise ConfigError(f"nmt: score must be one of {', '.join(SCORES)}, not {kind!r}")
        if kind == "dot" and query_size != key_size:
            raise ConfigError(
                f"nmt: the dot score needs text and audio states of one size ({query_size} != {key_size}); "
                "set text_hidden = audio_hidden or use score: general"
            )
        self.kind = kind
        if kind == "general":
            self.w_a = nn.Linear(key_size, query_size, bias=False)
        elif kind == "concat":
            # W_a [h_i; h_s] split into its query and key halves, so no (W x T) concatenation is built.
            self.w_q = nn.Linear(query_size, attention_size, bias=False)
            self.w_k = nn.Linear(key_size, attention_size)
            self.v_a = nn.Linear(attention_size, 1, bias=False)

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        if self.kind == "dot":
            return torch.einsum("bwh,bth->bwt", q, k)
        if self.kind == "general":
            return torch.einsum("bwh,bth->bwt", q, self.w_a(k))
        hidden = torch.tanh(self.w_q(q).unsqueeze(2) + self.w_k(k).unsqueeze(1))  # (B, W, T, A)
        return self.v_a(hidden).squeeze(-1)


def local_window(word_mask: Tensor, state_mask: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """Local-m positions p_i = (i + 1/2) T_real / W_real - 1/2 and their distances.

    Returns allowed (B, W, T) = |s - p_i| <= window on real words and states, and the
    distances s - p_i (B, W, T) for the Gaussian.
    """
    n_words = word_mask.sum(1, keepdim=True).clamp(min=1).to(torch.float32)  # (B, 1)
    n_states = state_mask.sum(1, keepdim=True).to(torch.float32)  # (B, 1)
    i = torch.arange(word_mask.shape[1], device=word_mask.device).float().unsqueeze(0)  # (1, W)
    p = (i + 0.5) * n_states / n_words - 0.5  # (B, W)
    s = torch.arange(state_mask.shape[1], device=word_mask.device).float()  # (T,)
    distance = s.view(1, 1, -1) - p.unsqueeze(-1)  # (B, W, T)
    allowed = (distance.abs() <= window) & word_mask.unsqueeze(-1) & state_mask.unsqueeze(1)
    return allowed, distance


# --- the model --------------------------------------------------------------------------------


class NMTAttentionModel(nn.Module):
    """Text GRU states attend over waveform CNN + GRU states (global, local or forced)."""

    def __init__(self, spec: InputSpec, cfg: NMTConfig):
        super().__init__()
        if cfg.mode not in MODES:
            raise ConfigError(f"nmt: mode must be one of {', '.join(MODES)}, not {cfg.mode!r}")
        if cfg.mode == "local" and cfg.window < 1:
            raise ConfigError(f"nmt: local attention needs window >= 1 audio state, not {cfg.window}")
        if cfg.frontend not in FRONTENDS:
            raise ConfigError(f"nmt: frontend must be one of {', '.join(FRONTENDS)}, not {cfg.frontend!r}")
        self.cfg = cfg
        self.text_gru = GRU(spec.word_dim, cfg.text_hidden, cfg.bidirectional)
        self.frontend = (FrameFrontEnd(spec.acoustic_dim, cfg.conv_channels[-1]) if cfg.frontend == "frames"
                         else WaveformFrontEnd(cfg))
        self.audio_gru = GRU(self.frontend.output_size, cfg.audio_hidden, cfg.bidirectional)
        q, k = self.text_gru.output_size, self.audio_gru.output_size
        self.score = LuongScore(cfg.score, q, k, cfg.attention_size)
        self.w_c = nn.Linear(k + q, q, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = Classifier(q, spec.num_classes, cfg.dropout)

    def allowed(self, batch: Batch, word_mask: Tensor, state_mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """Which (word, audio state) pairs may get attention, and an additive score bias."""
        both = word_mask.unsqueeze(-1) & state_mask.unsqueeze(1)  # (B, W, T')
        if self.cfg.mode == "global":
            return both, None
        if self.cfg.mode == "local":
            allowed, distance = local_window(word_mask, state_mask, self.cfg.window)
            if not self.cfg.gaussian:
                return allowed, None
            sigma = self.cfg.window / 2.0
            return allowed, -(distance ** 2) / (2 * sigma ** 2)
        if batch.word_frames is None:
            raise ValueError("nmt-forced needs word times (batch.word_frames) on the waveform's frame grid")
        if self.cfg.frontend == "frames":  # one state per frame: the batch's spans already are state spans
            spans = batch.word_frames  # (B, W, 2)
        else:
            samples = batch.word_frames * batch.acoustic.shape[-1]  # frames of P samples -> samples
            spans = self.frontend.states_of_samples(samples, state_mask.sum(1))  # (B, W, 2)
        s = torch.arange(state_mask.shape[1], device=spans.device)
        inside = (s >= spans[..., 0:1]) & (s < spans[..., 1:2])  # (B, W, T')
        return inside & both, None

    def forward(self, batch: Batch) -> Output:
        if batch.acoustic is None or batch.words is None:
            raise ValueError("the NMT attention model needs a waveform (batch.acoustic) and word vectors")
        word_mask = batch.word_mask  # (B, W)
        h_text = self.text_gru(self.dropout(batch.words), word_mask)  # (B, W, Hq)
        frames, state_mask = self.frontend(batch.acoustic, batch.acoustic_mask)  # (B, T', C), (B, T')
        h_audio = self.audio_gru(self.dropout(frames), state_mask)  # (B, T', Hk)

        scores = self.score(h_text, h_audio)  # (B, W, T')
        allowed, bias = self.allowed(batch, word_mask, state_mask)
        if bias is not None:
            scores = scores + bias
        alignment = masked_softmax(scores, allowed)  # rows of real words sum to 1
        context = torch.einsum("bwt,bth->bwh", alignment, h_audio)  # (B, W, Hk)
        attentional = torch.tanh(self.w_c(torch.cat([context, h_text], dim=-1)))  # (B, W, Hq)
        u = masked_mean(attentional, word_mask)  # (B, Hq)

        if self.cfg.frontend == "frames":
            hop = batch.acoustic_hop  # seconds per frame = per audio state
            centre = (torch.arange(alignment.shape[-1], device=u.device) + 0.5) * hop  # (T',) seconds
        else:
            sample_hop = batch.acoustic_hop / batch.acoustic.shape[-1]  # seconds per sample
            hop = self.frontend.stride * sample_hop  # seconds per audio state
            centre = (torch.arange(alignment.shape[-1], device=u.device) * self.frontend.stride
                      + (self.frontend.field - 1) / 2.0) * sample_hop  # (T',) seconds
        return Output(self.classifier(u), u, {
            "alignment": alignment,  # (B, W, T') words x audio states
            "alignment_hop": torch.full((u.shape[0],), hop, device=u.device),
            "attention_center": alignment @ centre.to(alignment.dtype),  # (B, W) expected seconds
        })


_SUMMARY = "Cid Ornelas (slides): text GRU attends over raw-waveform CNN+GRU states"
register("nmt-global", NMTConfig, needs=("acoustic", "words"),
         summary=f"{_SUMMARY}, global attention", mode="global")(NMTAttentionModel)
register("nmt-local", NMTConfig, needs=("acoustic", "words"),
         summary=f"{_SUMMARY}, local window around a monotonic position", mode="local")(NMTAttentionModel)
register("nmt-forced", NMTConfig, needs=("acoustic", "words", "word_frames"),
         summary=f"{_SUMMARY}, each word attends to its own forced-aligned frames", mode="forced")(NMTAttentionModel)
