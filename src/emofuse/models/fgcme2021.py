"""Li, Zhang, Cao, Ding, Liu, Lee, Wang: "Learning Fine-Grained Cross Modality Excitement for
Speech Emotion Recognition" (FG_CME), Interspeech 2021 (§3 for the model, §4.3 for its sizes).

Reproduces the "Ours" row of Table 1 and its ablation rows:

    fgcme                        the full model (both excitations, forced alignment)
    fgcme-no-acoustic-excite     "w/o Excite^a": the acoustic words are not re-scaled
    fgcme-no-semantic-excite     "w/o Excite^s": the semantic words are not re-scaled
    fgcme-no-excite              "w/o Excite^{a+s}": neither
    fgcme-ctc-align              "w/ CTC Align": word spans predicted by a CTC model (below)

Pipeline of one utterance (§3, §4.3):

    fbank40 (T, 40) --1-D CNN, kernels (5, 2, 2), filters (64, 128, 128), stride 1, valid-->
      X^a (T - 6, 128) --temporal alignment mean-max pooling (§3.2)--> Z^a (W, 256)
    word vectors (W, D_w) --linear W^s (§3.1.2)--> Z^s (W, 256)
    cross modality excitation (§3.3): E^a = σ(W_ea Z^s), Ẑ^a = E^a ⊙ Z^a;
                                      E^s = σ(W_es Z^a), Ẑ^s = E^s ⊙ Z^s
    g_i = [ẑ^a_i; ẑ^s_i] --BiLSTM--> h_i --max over words--> h --FCN (128, C)--> logits (Eq. 1)
    loss: cross-entropy (Eq. 2); Adam 5e-4 lives in the config.

Naming: "acoustic excitation" is E^a, the gate that re-scales the *acoustic* word vectors; it
is computed from the *semantic* word vector of the same word (and vice versa). Removing it
removes W_ea entirely, and then the acoustic words no longer depend on the words at all.

Alignment on the CNN's grid. The convolutions are valid (no padding), so output frame j
sees input frames j .. j+6 (receptive field R = 1 + Σ(k - 1) = 7) and the frame axis shrinks
by 6. Rule (`shrink_word_frames`): output frame j belongs to the word whose input span
[s, e) holds the centre j + 3 of its receptive field, i.e. the word's span on the output grid
is [s - 3, e - 3), clamped to the utterance's own output length T_i - 6; a word that would be
left with no frame (very short, or at the utterance's edge) keeps the nearest one, so every
word has ≥ 1 frame whenever the utterance has ≥ 7 frames. An utterance shorter than 7 frames
has no valid output frame: its acoustic words are 0.

Padding invariance: the CNN's input padding is zeroed and every output frame whose receptive
field reaches past the utterance's last real frame is masked, so an utterance alone and the
same utterance padded inside a batch give the same output (tests/test_fgcme2021.py).

Mean-max pooling: the paper writes meanpool/maxpool over {a_ij ⊙ x_i | i = 1..N}. Read
literally the mean would divide by all N frames of the utterance; we take the mean and the
max over the word's own frames (what "select relevant frames" in §3.2 describes). Because
the CNN ends with a ReLU (outputs ≥ 0), the max over the word's frames equals the literal
max of a_ij ⊙ x_i.

"w/ CTC Align" (§4.5, citing Graves et al. 2006). The paper gives no detail; what we do:
- A separate CTC aligner (`CTCAligner`: frame stacking by `ctc_subsample`, a local CNN
  (default) or a BiLSTM, a linear layer) predicts per-frame posteriors over the *word tokens* of the vocabulary plus
  a blank (token id 0, the padding id, is the blank; id 1 "unknown" is an ordinary label).
  Targets are the utterance's word-id sequence (`batch.token_ids`): characters would be the
  usual CTC unit, but the batch carries no word strings (see the report / a future
  `batch.transcripts` field).
- It is trained on the same training utterances, jointly with the classifier:
  `FGCMEWithCTCAlignment.loss` = cross-entropy + `ctc_weight` · CTC loss. No gradient flows from the
  classifier into the aligner (an alignment is discrete).
- Decoding: a Viterbi (best-path) alignment of the known word sequence through the CTC
  posteriors (`ctc_viterbi`), the CTC counterpart of forced alignment. CTC is peaky (a label
  fires on a frame or two, blank elsewhere), so `ctc_word_spans` turns the path into spans:
  word w owns the frames of its label; the blank gap between two words is cut where the
  blank-free posteriors of the two labels best separate it; leading and trailing blanks join
  the first/last word while its label is the most likely non-blank label, the rest is
  silence. Spans go back to the 10 ms grid (× subsample) and then through the same shrink
  rule as forced alignment. `batch.word_frames` is never read: at training, validation and
  test time the alignment comes from the CTC model only (it does read the word ids, as the
  semantic side reads the words).

Not in the paper: dropout (0.2 on the per-word vectors and in the FCN), and the
`crop_to_words` shortcut (frames no word can reach are not convolved; exact, tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emofuse.features.batch import Batch, alignment_matrix
from emofuse.models.base import InputSpec, Output, register
from emofuse.models.layers import BLSTM, masked_max

NEG_INF = float("-inf")


@dataclass
class FGCMEConfig:
    conv_kernels: tuple[int, ...] = (5, 2, 2)
    conv_filters: tuple[int, ...] = (64, 128, 128)
    semantic_size: int = 256  # W^s: word vector -> 256 (§4.3)
    lstm_hidden: int = 256  # per direction of the BiLSTM over words (§4.3, d_hid)
    fcn_hidden: int = 128  # FCN (128, classes)
    dropout: float = 0.2
    acoustic_excite: bool = True  # E^a = σ(W_ea Z^s) re-scales Z^a
    semantic_excite: bool = True  # E^s = σ(W_es Z^a) re-scales Z^s
    alignment: str = "forced"  # "forced" (batch.word_frames) or "ctc" (predicted, see module doc)
    ctc_encoder: str = "cnn"  # "cnn" (local context, see CTCAligner) or "blstm" (whole utterance)
    ctc_hidden: int = 128  # channels of the aligner's CNN, or per direction of its BiLSTM
    ctc_layers: int = 2
    ctc_kernel: int = 5  # CNN aligner: kernel of each "same" convolution (context 1 + layers x (k - 1) steps)
    ctc_subsample: int = 2  # frames stacked per CTC step (20 ms steps by default)
    ctc_weight: float = 1.0  # weight of the CTC loss next to cross-entropy


# ---------------------------------------------------------------- acoustic embedding (§3.1.1)


class MaskedConvStack(nn.Module):
    """1-D CNN over frames with valid convolutions, stride 1, ReLU after each layer (§4.3).

    Input padding is zeroed and outputs whose receptive field touches padding are masked, so
    padding never leaks. (B, T, D), (B, T) -> (B, T - shrink, C_last), (B, T - shrink).
    """

    def __init__(self, input_size: int, kernels: tuple[int, ...], filters: tuple[int, ...]):
        super().__init__()
        if len(kernels) != len(filters):
            raise ValueError(f"conv_kernels {kernels} and conv_filters {filters} differ in length")
        layers = []
        size = input_size
        for k, f in zip(kernels, filters):
            layers += [nn.Conv1d(size, f, k), nn.ReLU()]
            size = f
        self.net = nn.Sequential(*layers)
        self.output_size = size
        self.shrink = sum(k - 1 for k in kernels)  # receptive field - 1

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x = x * mask.unsqueeze(-1).to(x.dtype)  # (B, T, D), padding zeroed
        short = self.shrink + 1 - x.shape[1]
        if short > 0:  # keep at least one (masked) output frame
            x = F.pad(x, (0, 0, 0, short))
        out = self.net(x.transpose(1, 2)).transpose(1, 2)  # (B, T_out, C), T_out = T - shrink
        lengths = (mask.sum(1) - self.shrink).clamp(min=0)  # (B,) valid outputs per utterance
        out_mask = torch.arange(out.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        return out * out_mask.unsqueeze(-1).to(out.dtype), out_mask


def shrink_word_frames(word_frames: Tensor, shrink: int, out_lengths: Tensor, word_mask: Tensor) -> Tensor:
    """Map word spans [s, e) on the input grid to the valid-convolution output grid.

    Output frame j covers input frames j .. j + shrink; it belongs to the word holding its
    centre j + shrink // 2. So [s, e) -> [s - c, e - c) with c = shrink // 2, clamped to
    [0, L_i) with L_i the utterance's output length, and every word keeps ≥ 1 frame when
    L_i ≥ 1. word_frames: (B, W, 2) long, out_lengths: (B,) -> (B, W, 2) long.
    """
    c = shrink // 2
    last = (out_lengths - 1).clamp(min=0).view(-1, 1)  # (B, 1)
    start = torch.minimum((word_frames[..., 0] - c).clamp(min=0), last)  # (B, W)
    end = torch.minimum((word_frames[..., 1] - c).clamp(min=0), out_lengths.view(-1, 1))
    end = torch.maximum(end, start + 1)
    empty = (out_lengths <= 0).view(-1, 1) | ~word_mask  # no valid output frame at all
    start = start.masked_fill(empty, 0)
    end = end.masked_fill(empty, 0)
    return torch.stack([start, end], dim=-1)


# ---------------------------------------------------- temporal alignment mean-max pooling (§3.2)


def mean_max_pool(frames: Tensor, spans: Tensor) -> Tensor:
    """z_j = [mean_{i ∈ word j} x_i ; max_{i ∈ word j} x_i] (§3.2), the word's frames given as
    its row a_j of the binary alignment matrix A, here the span [s_j, e_j) that A is built from.

    frames: (B, T, C) with padding already 0; spans: (B, W, 2) long on the same grid
    -> (B, W, 2C). Words with an empty span get 0. The mean is A X / |a_j|; the max gathers
    each word's frames (the span padded by repeating its last frame, which leaves the max
    unchanged) instead of materialising a (B, W, T, C) tensor.
    """
    b, t, c = frames.shape
    a = alignment_matrix(spans, t).to(frames.dtype)  # (B, W, T)
    count = a.sum(-1, keepdim=True)  # (B, W, 1)
    mean = torch.bmm(a, frames) / count.clamp(min=1.0)  # (B, W, C)
    start, end = spans[..., 0], spans[..., 1]
    width = max(int((end - start).max().item()) if spans.numel() else 0, 1)
    offset = torch.arange(width, device=frames.device).view(1, 1, -1)
    index = torch.minimum(start.unsqueeze(-1) + offset, (end - 1).clamp(min=0).unsqueeze(-1))
    index = index.clamp(0, t - 1)  # (B, W, width)
    picked = torch.gather(frames, 1, index.flatten(1).unsqueeze(-1).expand(-1, -1, c))  # (B, W * width, C)
    top = picked.view(b, -1, width, c).amax(2)  # (B, W, C)
    top = top.masked_fill(count == 0, 0.0)
    return torch.cat([mean, top], dim=-1)  # (B, W, 2C)


# ------------------------------------------------------------ cross modality excitation (§3.3)


class Excitation(nn.Module):
    """One direction of the CME module: x̂ = σ(W · other) ⊙ x (a squeeze-excitation-like gate
    per dimension, computed from the same word's vector in the other modality).

    x: (B, W, D_x), other: (B, W, D_o), mask (B, W) -> x̂ (B, W, D_x), gate (B, W, D_x).
    """

    def __init__(self, other_size: int, size: int):
        super().__init__()
        self.proj = nn.Linear(other_size, size)

    def forward(self, x: Tensor, other: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        gate = torch.sigmoid(self.proj(other)) * mask.unsqueeze(-1).to(x.dtype)
        return gate * x, gate


# ----------------------------------------------------------------------- CTC alignment (§4.5)


def ctc_viterbi(log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
    """Best CTC path of the known label sequence (Graves et al. 2006, with max for sum).

    log_probs: (B, T, V) log posteriors with blank = 0; lengths (B,); targets (B, W) labels
    (padding ignored past target_lengths). Returns (B, T) long: for each frame the index of
    the target it emits, or -1 for blank and padding. An utterance too short for its labels
    (T_i < W_i + repeats) falls back to evenly split frames.
    """
    b, t_max, _ = log_probs.shape
    w_max = targets.shape[1]
    s_max = 2 * w_max + 1
    device = log_probs.device
    # Extended label sequence: blank, l_1, blank, l_2, ..., l_W, blank.  (B, S)
    ext = torch.zeros(b, s_max, dtype=torch.long, device=device)
    ext[:, 1::2] = targets
    s_len = 2 * target_lengths + 1  # (B,)
    states = torch.arange(s_max, device=device)
    valid_state = states.unsqueeze(0) < s_len.unsqueeze(1)  # (B, S)
    # A skip s-2 -> s is allowed into a label that differs from the label two states back.
    prev2 = torch.cat([torch.full((b, 2), -1, dtype=torch.long, device=device), ext[:, :-2]], dim=1)
    can_skip = (states % 2 == 1).unsqueeze(0) & (ext != prev2)  # (B, S)

    emit = torch.gather(log_probs, 2, ext.unsqueeze(1).expand(-1, t_max, -1))  # (B, T, S)
    alpha = torch.full((b, s_max), NEG_INF, device=device)
    alpha[:, 0] = emit[:, 0, 0]
    alpha[:, 1] = torch.where(s_len > 1, emit[:, 0, 1], torch.full_like(emit[:, 0, 1], NEG_INF))
    back = torch.zeros(b, t_max, s_max, dtype=torch.long, device=device)  # how far we came from
    for t in range(1, t_max):
        stay = alpha
        step = F.pad(alpha, (1, 0), value=NEG_INF)[:, :-1]
        skip = F.pad(alpha, (2, 0), value=NEG_INF)[:, :-2].masked_fill(~can_skip, NEG_INF)
        best, arg = torch.stack([stay, step, skip], dim=-1).max(-1)  # (B, S)
        new = (best + emit[:, t]).masked_fill(~valid_state, NEG_INF)
        live = (t < lengths).unsqueeze(1)  # frames past the utterance's end change nothing
        alpha = torch.where(live, new, alpha)
        back[:, t] = torch.where(live, arg, torch.zeros_like(arg))

    # Paths end in the last label or the final blank.
    last = (s_len - 1).unsqueeze(1)  # (B, 1)
    end_scores = torch.stack([alpha.gather(1, last).squeeze(1), alpha.gather(1, (last - 1).clamp(min=0)).squeeze(1)], 1)
    feasible = end_scores.max(1).values > NEG_INF  # (B,)
    s_cur = torch.where(end_scores[:, 0] >= end_scores[:, 1], last.squeeze(1), last.squeeze(1) - 1)
    path = torch.full((b, t_max), -1, dtype=torch.long, device=device)
    rows = torch.arange(b, device=device)
    for t in range(t_max - 1, -1, -1):
        live = t < lengths
        path[:, t] = torch.where(live, s_cur, path[:, t])
        if t > 0:
            s_cur = torch.where(live, s_cur - back[rows, t, s_cur], s_cur)
    word = torch.where(path % 2 == 1, (path - 1) // 2, torch.full_like(path, -1))  # (B, T)

    if not bool(feasible.all()):  # too few frames for the labels: split evenly instead
        frame = torch.arange(t_max, device=device).unsqueeze(0)
        even = (frame * target_lengths.unsqueeze(1)) // lengths.clamp(min=1).unsqueeze(1)
        even = torch.where(frame < lengths.unsqueeze(1), even, torch.full_like(even, -1))
        word = torch.where(feasible.unsqueeze(1), word, even)
    return word


def ctc_word_spans(log_probs: Tensor, word_of_frame: Tensor, targets: Tensor, lengths: Tensor) -> Tensor:
    """Word spans from a best CTC path and the posteriors behind it.

    A CTC model is "peaky": each word's label fires on a frame or two and blank fills the rest,
    so the path alone says little about where words start and end. The blank-free posterior
    q_t(l) = p_t(l) / (1 - p_t(blank)) still says which word a blank frame sounds like, so:
    - word w always owns the frames where the path emits its label, [f_w, g_w];
    - the blank gap between words w and w+1 is cut where it best separates them:
      b = argmax_b Σ_{g_w < t < b} log q_t(l_w) + Σ_{b <= t < f_{w+1}} log q_t(l_{w+1});
    - before the first and after the last word, a blank frame joins that word while its label
      is the most likely non-blank label there (a run from the word outwards); the other
      leading/trailing frames are silence and belong to no word.

    log_probs (B, T, V) with blank = 0; word_of_frame (B, T) long (-1 = blank or padding);
    targets (B, W); lengths (B,) -> (B, W, 2) long [start, end); absent words give [0, 0).
    """
    b, t = word_of_frame.shape
    w = targets.shape[1]
    device = word_of_frame.device
    frame = torch.arange(t, device=device)
    frames = frame.expand(b, -1)
    idx = word_of_frame.clamp(min=0)
    is_word = word_of_frame >= 0
    first = torch.full((b, w), t, dtype=torch.long, device=device)
    first = first.scatter_reduce(1, idx, torch.where(is_word, frames, t), "amin")  # f_w
    last = torch.full((b, w), -1, dtype=torch.long, device=device)
    last = last.scatter_reduce(1, idx, torch.where(is_word, frames, -1), "amax")  # g_w
    present = last >= 0  # (B, W)

    q = log_probs[..., 1:] - torch.logsumexp(log_probs[..., 1:], dim=-1, keepdim=True)  # (B, T, V-1)
    q_words = torch.gather(q, 2, (targets - 1).clamp(min=0).unsqueeze(1).expand(-1, t, -1))  # (B, T, W)
    cum = F.pad(q_words.cumsum(1), (0, 0, 1, 0))  # (B, T+1, W): cum[:, k] = Σ_{t<k}

    # Interior cuts between w and w+1 (for w < W-1): b in [g_w + 1, f_{w+1}].
    lo, hi = last[:, :-1] + 1, first[:, 1:]  # (B, W-1)
    cut = torch.arange(t + 1, device=device).view(1, 1, -1)  # candidate b
    left = cum[:, :, :-1].transpose(1, 2)  # (B, W-1, T+1): Σ_{t<b} log q(l_w)
    right = cum[:, :, 1:].transpose(1, 2)  # Σ_{t<b} log q(l_{w+1})
    score = left - right  # + constants that do not depend on b
    allowed = (cut >= lo.unsqueeze(-1)) & (cut <= hi.unsqueeze(-1))
    best_cut = score.masked_fill(~allowed, NEG_INF).argmax(-1)  # (B, W-1)
    both = present[:, :-1] & present[:, 1:]
    end = last + 1
    end[:, :-1] = torch.where(both, best_cut, end[:, :-1])
    start = first.clone()
    start[:, 1:] = torch.where(both, best_cut, start[:, 1:])

    # Edges: extend the first word back and the last word forward while its label leads q.
    n_words = present.sum(1)  # (B,)
    leader = q.argmax(-1) + 1  # (B, T) most likely non-blank label
    first_label = targets[:, 0:1]
    last_idx = (n_words - 1).clamp(min=0).unsqueeze(1)
    last_label = targets.gather(1, last_idx)
    f0, gl = first[:, 0:1], last.gather(1, last_idx)  # (B, 1)
    stop_before = (leader != first_label) & (frames < f0)
    new_start = ((frames + 1) * stop_before).amax(1, keepdim=True)  # after the last non-leading frame
    stop_after = ((leader != last_label) | (frames >= lengths.unsqueeze(1))) & (frames > gl)
    new_end = torch.where(stop_after, frames, torch.full_like(frames, t)).amin(1, keepdim=True)
    new_end = torch.minimum(new_end, lengths.unsqueeze(1))
    start[:, 0:1] = torch.where(present[:, 0:1], torch.minimum(new_start, f0), start[:, 0:1])
    end = end.scatter(1, last_idx, torch.where(n_words.unsqueeze(1) > 0, torch.maximum(new_end, gl + 1), end.gather(1, last_idx)))
    spans = torch.stack([start, end], dim=-1)
    return spans * present.unsqueeze(-1)


class MaskedSameConv(nn.Module):
    """Stacked "same" 1-D convolutions + ReLU over masked steps: padding is zeroed before every
    layer, exactly the zeros a lone utterance sees past its end. (B, T, D) -> (B, T, C)."""

    def __init__(self, input_size: int, channels: int, layers: int, kernel: int):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"ctc_kernel must be odd (a centred window), not {kernel}")
        sizes = [input_size] + [channels] * layers
        self.convs = nn.ModuleList(nn.Conv1d(a, b, kernel, padding=kernel // 2) for a, b in zip(sizes, sizes[1:]))
        self.output_size = channels

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        keep = mask.unsqueeze(-1).to(x.dtype)
        for conv in self.convs:
            x = torch.relu(conv((x * keep).transpose(1, 2))).transpose(1, 2)
        return x * keep


class CTCAligner(nn.Module):
    """Frame-level word-token posteriors trained with CTC; predicts word spans (see module doc).

    acoustic (B, T, D) -> log posteriors (B, ceil(T / s), V) over V = vocab_size labels,
    id 0 (padding) doubling as the CTC blank.

    Encoder "cnn" (default): "same" convolutions with a local receptive field (5 x 20 ms
    steps per layer by default: 180 ms for 2 layers), so a word's label can only fire where
    frames that sound like it are. Encoder "blstm": a BiLSTM sees the whole utterance and may
    fire a label anywhere; on RAVDESS (two statements) it learned to, giving spans that
    barely overlap the forced ones (benchmarks/fgcme.py).
    """

    def __init__(self, acoustic_dim: int, vocab_size: int, cfg: FGCMEConfig):
        super().__init__()
        if vocab_size < 2:
            raise ValueError("the CTC aligner needs a word vocabulary (InputSpec.vocab_size >= 2)")
        self.subsample = max(1, cfg.ctc_subsample)
        size = acoustic_dim * self.subsample
        if cfg.ctc_encoder == "cnn":
            self.encoder = MaskedSameConv(size, cfg.ctc_hidden, cfg.ctc_layers, cfg.ctc_kernel)
        elif cfg.ctc_encoder == "blstm":
            self.encoder = BLSTM(size, cfg.ctc_hidden, cfg.ctc_layers, cfg.dropout)
        else:
            raise ValueError(f"ctc_encoder must be 'cnn' or 'blstm', not {cfg.ctc_encoder!r}")
        self.out = nn.Linear(self.encoder.output_size, vocab_size)

    def stacked(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        s = self.subsample
        x = x * mask.unsqueeze(-1).to(x.dtype)
        pad = (-x.shape[1]) % s
        x = F.pad(x, (0, 0, 0, pad))  # (B, T + pad, D)
        b, t, d = x.shape
        lengths = (mask.sum(1) + s - 1) // s  # (B,) ceil
        steps = torch.arange(t // s, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        return x.reshape(b, t // s, s * d), steps  # (B, T/s, s*D)

    def forward(self, acoustic: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x, steps = self.stacked(acoustic, mask)
        logits = self.out(self.encoder(x, steps))  # (B, T/s, V)
        return F.log_softmax(logits, dim=-1), steps

    def loss(self, acoustic: Tensor, mask: Tensor, token_ids: Tensor, word_mask: Tensor) -> Tensor:
        log_probs, steps = self(acoustic, mask)
        return F.ctc_loss(
            log_probs.transpose(0, 1), token_ids, steps.sum(1), word_mask.sum(1),
            blank=0, reduction="mean", zero_infinity=True,
        )

    @torch.no_grad()
    def word_frames(self, acoustic: Tensor, mask: Tensor, token_ids: Tensor, word_mask: Tensor) -> Tensor:
        """(B, W, 2) long spans on the input (10 ms) grid, predicted by the CTC model."""
        log_probs, steps = self(acoustic, mask)
        targets, lengths = token_ids * word_mask, steps.sum(1)
        path = ctc_viterbi(log_probs.float(), lengths, targets, word_mask.sum(1))  # (B, T/s)
        spans = ctc_word_spans(log_probs.float(), path, targets, lengths) * self.subsample  # (B, W, 2)
        spans = torch.minimum(spans, mask.sum(1).view(-1, 1, 1))
        return spans * word_mask.unsqueeze(-1)


# ------------------------------------------------------------------------- the whole model


class FGCME(nn.Module):
    """FG_CME (Li et al. 2021, Fig. 1) and its ablations, chosen by the config switches."""

    def __init__(self, spec: InputSpec, cfg: FGCMEConfig):
        super().__init__()
        if cfg.alignment not in {"forced", "ctc"}:
            raise ValueError(f"alignment must be 'forced' or 'ctc', not {cfg.alignment!r}")
        if (cfg.alignment == "ctc") != isinstance(self, FGCMEWithCTCAlignment):
            raise ValueError("the CTC alignment is the model 'fgcme-ctc-align' (it trains its aligner); "
                             "the other fgcme rows use alignment: forced")
        self.cfg = cfg
        self.crop = True  # see crop_to_words; tests switch it off to compare
        self.cnn = MaskedConvStack(spec.acoustic_dim, tuple(cfg.conv_kernels), tuple(cfg.conv_filters))
        acoustic_size = 2 * self.cnn.output_size  # mean ⊕ max: 256
        self.semantic = nn.Linear(spec.word_dim, cfg.semantic_size)  # W^s
        # Each excitation exists only when switched on: an ablated path has no parameters.
        self.acoustic_excitation = Excitation(cfg.semantic_size, acoustic_size) if cfg.acoustic_excite else None
        self.semantic_excitation = Excitation(acoustic_size, cfg.semantic_size) if cfg.semantic_excite else None
        self.aligner = CTCAligner(spec.acoustic_dim, spec.vocab_size, cfg) if cfg.alignment == "ctc" else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.blstm = BLSTM(acoustic_size + cfg.semantic_size, cfg.lstm_hidden, layers=1)
        self.fcn = nn.Sequential(
            nn.Linear(self.blstm.output_size, cfg.fcn_hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.fcn_hidden, spec.num_classes),
        )

    def input_word_frames(self, batch: Batch) -> Tensor:
        """Word spans on the 10 ms input grid: forced alignment, or predicted by the CTC model."""
        if self.aligner is None:
            if batch.word_frames is None:
                raise ValueError("FG_CME needs word times (batch.word_frames) for its alignment matrix")
            return batch.word_frames
        if batch.token_ids is None:
            raise ValueError("fgcme-ctc-align needs word ids (batch.token_ids) as CTC targets")
        return self.aligner.word_frames(batch.acoustic, batch.acoustic_mask, batch.token_ids, batch.word_mask)

    def crop_to_words(self, acoustic: Tensor, acoustic_mask: Tensor, word_frames: Tensor, word_mask: Tensor
                      ) -> tuple[Tensor, Tensor, Tensor]:
        """Drop the batch's frames that no word's pool can reach; the output is exactly the same.

        An output frame reaches a word's pool only if its receptive-field centre lies in the
        word, so input frames before min(start) - c and after max(end) + shrink - c never
        matter (c = shrink // 2). On RAVDESS about 1 s of silence surrounds every statement:
        this halves the CNN's work. The crop is one range for the whole batch, so each
        utterance keeps its own length logic (tests check cropped == uncropped).
        """
        if not self.crop or not bool(word_mask.any()):
            return acoustic, acoustic_mask, word_frames
        c = self.cnn.shrink // 2
        lo = max(0, int(word_frames[..., 0][word_mask].min()) - c)
        hi = min(acoustic.shape[1], int(word_frames[..., 1][word_mask].max()) + self.cnn.shrink - c)
        shifted = (word_frames - lo) * word_mask.unsqueeze(-1)
        return acoustic[:, lo:hi], acoustic_mask[:, lo:hi], shifted

    def word_representations(self, batch: Batch) -> dict[str, Tensor]:
        """Ẑ^a, Ẑ^s and the gates, per word. Everything here is (B, W, ·) and 0 on padding."""
        mask = batch.word_mask  # (B, W)
        word_frames = self.input_word_frames(batch)  # (B, W, 2) on the 10 ms grid
        acoustic, acoustic_mask, cropped = self.crop_to_words(batch.acoustic, batch.acoustic_mask, word_frames, mask)
        frames, frame_mask = self.cnn(acoustic, acoustic_mask)  # (B, T' - 6, 128)
        spans = shrink_word_frames(cropped, self.cnn.shrink, frame_mask.sum(1), mask)
        z_a = mean_max_pool(frames, spans)  # (B, W, 256); spans lie inside each utterance's valid frames
        z_s = self.semantic(batch.words) * mask.unsqueeze(-1).to(z_a.dtype)  # (B, W, 256)
        out = {"z_a": z_a, "z_s": z_s, "word_frames": word_frames}
        # Both gates read the other modality before it is excited (§3.3).
        if self.acoustic_excitation is not None:
            out["z_a"], out["acoustic_gate"] = self.acoustic_excitation(z_a, z_s, mask)
        if self.semantic_excitation is not None:
            out["z_s"], out["semantic_gate"] = self.semantic_excitation(z_s, z_a, mask)
        return out

    def forward(self, batch: Batch) -> Output:
        mask = batch.word_mask
        words = self.word_representations(batch)
        g = self.dropout(torch.cat([words["z_a"], words["z_s"]], dim=-1))  # (B, W, 512)
        h = masked_max(self.blstm(g, mask), mask)  # (B, 2 * lstm_hidden)
        explain = {}
        for key in ("acoustic_gate", "semantic_gate"):
            if key in words:
                explain[key] = words[key].mean(-1)  # (B, W): mean over channels, 0 on padding
        if self.aligner is not None:
            explain["word_frames"] = words["word_frames"]  # (B, W, 2) predicted spans on the 10 ms grid
        return Output(self.fcn(h), h, explain)


class FGCMEWithCTCAlignment(FGCME):
    """"w/ CTC Align": FG_CME whose word spans come from its jointly trained CTC aligner.

    Only this variant defines `loss`; the other rows use the engine's cross-entropy.
    """

    def loss(self, output: Output, batch: Batch, class_weights: Tensor | None = None) -> Tensor:
        """Cross-entropy (Eq. 2, with the engine's optional class weights) + ctc_weight x the
        CTC aligner's loss."""
        ce = F.cross_entropy(output.logits, batch.labels, weight=class_weights)
        ctc = self.aligner.loss(batch.acoustic, batch.acoustic_mask, batch.token_ids, batch.word_mask)
        return ce + self.cfg.ctc_weight * ctc


_NEEDS = ("acoustic", "words", "word_frames")
register("fgcme", FGCMEConfig, needs=_NEEDS,
         summary="FG_CME 2021: CNN + alignment mean-max pooling + cross modality excitation")(FGCME)
register("fgcme-no-acoustic-excite", FGCMEConfig, needs=_NEEDS,
         summary="FG_CME w/o acoustic excitation", acoustic_excite=False)(FGCME)
register("fgcme-no-semantic-excite", FGCMEConfig, needs=_NEEDS,
         summary="FG_CME w/o semantic excitation", semantic_excite=False)(FGCME)
register("fgcme-no-excite", FGCMEConfig, needs=_NEEDS,
         summary="FG_CME w/o both excitations", acoustic_excite=False, semantic_excite=False)(FGCME)
register("fgcme-ctc-align", FGCMEConfig, needs=("acoustic", "words", "token_ids"),
         summary="FG_CME with word spans predicted by a CTC aligner", alignment="ctc")(FGCMEWithCTCAlignment)
