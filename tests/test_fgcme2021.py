"""FG_CME (Li et al. 2021): mean-max pooling, the shrunk alignment, excitation gates, ablation
switches, the CTC aligner, and padding invariance."""

import itertools

import numpy as np
import pytest
import torch

from emofuse.features.batch import alignment_matrix, collate
from emofuse.models.base import InputSpec, get_model
from emofuse.models.fgcme2021 import (
    FGCME, FGCMEConfig, FGCMEWithCTCAlignment, MaskedConvStack, ctc_viterbi, ctc_word_spans, mean_max_pool,
    shrink_word_frames,
)
from helpers import tiny_utterance

torch.manual_seed(0)
SPEC = InputSpec(num_classes=4, acoustic_dim=6, word_dim=5, vocab_size=12)
SMALL = dict(conv_filters=(4, 6, 6), semantic_size=8, lstm_hidden=5, fcn_hidden=7, ctc_hidden=4, dropout=0.0)
NAMES = ["fgcme", "fgcme-no-acoustic-excite", "fgcme-no-semantic-excite", "fgcme-no-excite", "fgcme-ctc-align"]


def ids(words: int, offset: int = 2) -> list[int]:
    return [offset + i for i in range(words)]


def build(name: str, **settings) -> FGCME:
    return get_model(name).build(SPEC, **{**SMALL, **settings}).eval()


def test_mean_max_pool_equals_hand_computation():
    frames = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [2.0, 5.0], [4.0, 1.0], [9.0, 9.0]]])  # (1, 5, 2)
    spans = torch.tensor([[[0, 2], [2, 4], [0, 0]]])  # A = [[1 1 0 0 0], [0 0 1 1 0], [0 0 0 0 0]]
    z = mean_max_pool(frames, spans)  # (1, 3, 4): [mean; max]
    assert z[0].tolist() == [[2.0, 1.0, 3.0, 2.0], [3.0, 3.0, 4.0, 5.0], [0.0, 0.0, 0.0, 0.0]]


def test_mean_max_pool_matches_the_dense_alignment_formula():
    frames = torch.relu(torch.randn(2, 12, 3))  # CNN outputs are >= 0
    spans = torch.tensor([[[0, 3], [3, 4], [4, 11]], [[2, 5], [5, 6], [0, 0]]])
    a = alignment_matrix(spans, 12)  # (2, 3, 12)
    inside = a.bool().unsqueeze(-1)  # (B, W, T, 1)
    dense_max = frames.unsqueeze(1).masked_fill(~inside, float("-inf")).amax(2).nan_to_num(0.0, neginf=0.0)
    dense_mean = torch.bmm(a, frames) / a.sum(-1, keepdim=True).clamp(min=1)
    assert torch.allclose(mean_max_pool(frames, spans), torch.cat([dense_mean, dense_max], -1))


def test_conv_stack_shrinks_by_six_and_masks_frames_that_see_padding():
    cnn = MaskedConvStack(6, (5, 2, 2), (4, 6, 6))
    x = torch.randn(2, 20, 6)
    mask = torch.tensor([[True] * 20, [True] * 12 + [False] * 8])
    out, out_mask = cnn(x, mask)
    assert out.shape == (2, 14, 6) and out_mask.sum(1).tolist() == [14, 6]
    alone, _ = cnn(x[1:, :12], mask[1:, :12])
    assert torch.allclose(alone[0], out[1, :6], atol=1e-6)
    assert torch.all(out[1, 6:] == 0)


def test_word_spans_shift_by_the_receptive_field_centre_and_keep_a_frame():
    spans = torch.tensor([[[0, 2], [2, 10], [10, 20]]])
    out = shrink_word_frames(spans, 6, torch.tensor([14]), torch.ones(1, 3, dtype=torch.bool))
    # [s-3, e-3) clamped to [0, 14): the first word keeps frame 0, the last loses its tail.
    assert out[0].tolist() == [[0, 1], [0, 7], [7, 14]]
    none = shrink_word_frames(spans, 6, torch.tensor([0]), torch.ones(1, 3, dtype=torch.bool))
    assert torch.all(none == 0)


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(name):
    rng = np.random.default_rng(0)
    batch = collate([tiny_utterance("a", 40, 4, rng), tiny_utterance("b", 25, 3, rng)], [0, 1], [ids(4), ids(3)])
    out = build(name)(batch)
    assert out.logits.shape == (2, 4)
    assert out.utterance_vector.shape == (2, 10)  # 2 x lstm_hidden
    for key in ("acoustic_gate", "semantic_gate"):
        if key in out.explain:
            assert out.explain[key].shape == (2, 4)


@pytest.mark.parametrize("name", NAMES + ["fgcme-ctc-align/blstm"])
def test_utterance_alone_or_padded_in_a_batch_gives_the_same_output(name):
    rng = np.random.default_rng(1)
    short, long = tiny_utterance("s", 23, 3, rng), tiny_utterance("l", 61, 7, rng)
    model = build("fgcme-ctc-align", ctc_encoder="blstm") if name.endswith("/blstm") else build(name)
    alone = model(collate([short], [0], [ids(3)]))
    together = model(collate([long, short], [0, 0], [ids(7, 4), ids(3)]))
    assert torch.allclose(alone.logits[0], together.logits[1], atol=1e-5)
    for key, value in alone.explain.items():
        assert torch.allclose(value[0], together.explain[key][1, : value.shape[1]], atol=1e-5), key


@pytest.mark.parametrize("name", ["fgcme", "fgcme-ctc-align"])
def test_cropping_the_frames_no_word_reaches_changes_nothing(name):
    rng = np.random.default_rng(6)
    items = [tiny_utterance("a", 61, 3, rng), tiny_utterance("b", 40, 2, rng), tiny_utterance("c", 52, 4, rng)]
    # Words well inside, near the start and at the very end of their utterances.
    items[0].word_times = np.array([[0.20, 0.25], [0.25, 0.31], [0.31, 0.33]])
    items[1].word_times = np.array([[0.06, 0.08], [0.36, 0.40]])
    items[2].word_times = np.array([[0.10, 0.20], [0.20, 0.30], [0.30, 0.48], [0.48, 0.52]])
    batch = collate(items, [0, 1, 2], [ids(3), ids(2), ids(4)])
    model = build(name)
    acoustic, _, _ = model.crop_to_words(batch.acoustic, batch.acoustic_mask, batch.word_frames, batch.word_mask)
    assert acoustic.shape[1] == 55 - 3 if name == "fgcme" else acoustic.shape[1] < 61  # frames 3 .. 54
    cropped = model(batch)
    model.crop = False
    full = model(batch)
    assert torch.allclose(cropped.logits, full.logits, atol=1e-5)


def test_excitation_gates_lie_in_zero_one_and_are_zero_on_padding():
    rng = np.random.default_rng(2)
    batch = collate([tiny_utterance("a", 50, 5, rng), tiny_utterance("b", 30, 2, rng)], [0, 1])
    batch.words = batch.words * 3  # large inputs, still short of float32 saturation
    words = build("fgcme").word_representations(batch)
    for key in ("acoustic_gate", "semantic_gate"):
        gate = words[key]
        real = gate[batch.word_mask]
        assert torch.all((real > 0) & (real < 1)), key
        assert torch.all(gate[~batch.word_mask] == 0), key


def _parameter_names(model) -> set[str]:
    return {n.split(".")[0] for n, _ in model.named_parameters()}


def test_ablation_switches_remove_the_excitation_parameters():
    assert {"acoustic_excitation", "semantic_excitation"} <= _parameter_names(build("fgcme"))
    no_a = _parameter_names(build("fgcme-no-acoustic-excite"))
    assert "acoustic_excitation" not in no_a and "semantic_excitation" in no_a
    no_s = _parameter_names(build("fgcme-no-semantic-excite"))
    assert "semantic_excitation" not in no_s and "acoustic_excitation" in no_s
    none = _parameter_names(build("fgcme-no-excite"))
    assert not {"acoustic_excitation", "semantic_excitation"} & none
    assert "aligner" not in none and "aligner" in _parameter_names(build("fgcme-ctc-align"))


def _two_batches(change: str):
    rng = np.random.default_rng(3)
    batch = collate([tiny_utterance("a", 45, 4, rng), tiny_utterance("b", 33, 3, rng)], [0, 1], [ids(4), ids(3)])
    changed = collate([tiny_utterance("a", 45, 4, rng), tiny_utterance("b", 33, 3, rng)], [0, 1], [ids(4), ids(3)])
    if change == "words":
        changed.acoustic, changed.word_frames = batch.acoustic, batch.word_frames
    elif change == "acoustic":
        changed.words, changed.word_frames = batch.words, batch.word_frames
    elif change == "word_frames":
        changed.acoustic, changed.words = batch.acoustic, batch.words
        changed.word_frames = torch.flip(batch.word_frames, [1]) * batch.word_mask.unsqueeze(-1)
    return batch, changed


def test_without_acoustic_excitation_the_acoustic_words_ignore_the_word_vectors():
    batch, changed = _two_batches("words")
    for name, independent in [("fgcme-no-acoustic-excite", True), ("fgcme-no-excite", True), ("fgcme", False)]:
        model = build(name)
        same = torch.allclose(model.word_representations(batch)["z_a"], model.word_representations(changed)["z_a"])
        assert same == independent, name


def test_without_semantic_excitation_the_semantic_words_ignore_the_acoustics():
    batch, changed = _two_batches("acoustic")
    for name, independent in [("fgcme-no-semantic-excite", True), ("fgcme-no-excite", True), ("fgcme", False)]:
        model = build(name)
        same = torch.allclose(model.word_representations(batch)["z_s"], model.word_representations(changed)["z_s"])
        assert same == independent, name


def test_ctc_alignment_never_reads_the_forced_alignment():
    batch, changed = _two_batches("word_frames")
    assert not torch.equal(batch.word_frames, changed.word_frames)
    ctc = build("fgcme-ctc-align")
    assert torch.allclose(ctc(batch).logits, ctc(changed).logits)
    forced = build("fgcme")
    assert not torch.allclose(forced(batch).logits, forced(changed).logits)


def _best_ctc_score(log_probs, target):
    """Brute force: the best score over every frame labelling that collapses to `target`."""
    best = float("-inf")
    for labels in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        collapsed = [k for k, _ in itertools.groupby(labels) if k != 0]
        if collapsed == target:
            best = max(best, sum(log_probs[t, k].item() for t, k in enumerate(labels)))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_ctc_viterbi_finds_the_best_path(seed):
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.log_softmax(torch.randn(1, 6, 4, generator=g) * 2, -1)
    target = [2, 2, 3] if seed % 2 else [1, 3]
    word = ctc_viterbi(log_probs, torch.tensor([6]), torch.tensor([target]), torch.tensor([len(target)]))[0]
    # Rebuild the labels of the path: a frame of word w emits target[w]; blank otherwise.
    labels = [0 if w < 0 else target[w] for w in word.tolist()]
    score = sum(log_probs[0, t, k].item() for t, k in enumerate(labels))
    words_in_order = [k for k, _ in itertools.groupby(word.tolist()) if k >= 0]
    assert words_in_order == list(range(len(target)))
    assert score == pytest.approx(_best_ctc_score(log_probs[0], target), abs=1e-5)


def test_ctc_spans_cut_blank_gaps_by_the_blank_free_posteriors():
    # Blank dominates every frame but the two spikes (frames 2 and 6); the leading non-blank
    # label per frame is: 3, 1, [1], 1, 1, 2, [2], 2, 3, 2.
    leaders = [3, 1, 1, 1, 1, 2, 2, 2, 3, 2]
    logits = torch.zeros(1, 10, 4)
    logits[0, :, 0] = 5.0
    for t, k in enumerate(leaders):
        logits[0, t, k] = 2.0
    logits[0, 2, 1] = logits[0, 6, 2] = 9.0
    log_probs = torch.log_softmax(logits, -1)
    targets, lengths = torch.tensor([[1, 2]]), torch.tensor([10])
    path = ctc_viterbi(log_probs, lengths, targets, torch.tensor([2]))
    assert path[0].tolist() == [-1, -1, 0, -1, -1, -1, 1, -1, -1, -1]
    spans = ctc_word_spans(log_probs, path, targets, lengths)
    # Word 0 reaches back over frame 1 (its label leads), not frame 0 (silence); the gap
    # 3..5 is cut before frame 5; word 1 runs on over frame 7 and stops at frame 8.
    assert spans[0].tolist() == [[1, 5], [5, 8]]


def _iou(spans: torch.Tensor, truth: torch.Tensor) -> float:
    overlap = (torch.minimum(spans[..., 1], truth[..., 1]) - torch.maximum(spans[..., 0], truth[..., 0])).clamp(min=0)
    union = torch.maximum(spans[..., 1], truth[..., 1]) - torch.minimum(spans[..., 0], truth[..., 0])
    return (overlap / union).mean().item()


STEPS = 250


def test_ctc_aligner_learns_word_spans_on_a_synthetic_task():
    """Frames carry a one-hot of the word they belong to (plus noise); after training on such
    utterances the CTC aligner's spans must match the true ones far better than an even split."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cfg = FGCMEConfig(**{**SMALL, "alignment": "ctc", "ctc_hidden": 16, "ctc_subsample": 1})  # the CNN aligner
    aligner = FGCMEWithCTCAlignment(InputSpec(num_classes=2, acoustic_dim=6, word_dim=5, vocab_size=6), cfg).aligner
    optimizer = torch.optim.Adam(aligner.parameters(), lr=0.02)

    def make(n):
        acoustic = torch.randn(n, 30, 6, generator=g) * 0.1  # (n, 30 frames, 6)
        tokens = torch.stack([torch.randperm(4, generator=g)[:3] + 2 for _ in range(n)])  # distinct words
        cuts = torch.sort(torch.stack([torch.randperm(21, generator=g)[:2] + 6 for _ in range(n)]), 1).values
        bounds = torch.cat([torch.full((n, 1), 2), cuts, torch.full((n, 1), 28)], 1)  # silence 0-1, 28-29
        for i in range(n):
            for w in range(3):
                acoustic[i, bounds[i, w] : bounds[i, w + 1], tokens[i, w]] += 2.0
        return acoustic, tokens, torch.stack([bounds[:, :3], bounds[:, 1:]], -1)

    mask, word_mask = torch.ones(16, 30, dtype=torch.bool), torch.ones(16, 3, dtype=torch.bool)
    for _ in range(STEPS):
        acoustic, tokens, _ = make(16)
        loss = aligner.loss(acoustic, mask, tokens, word_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    aligner.eval()
    acoustic, tokens, truth = make(64)
    predicted = aligner.word_frames(acoustic, torch.ones(64, 30, dtype=torch.bool), tokens, torch.ones(64, 3, dtype=torch.bool))
    even = torch.tensor([[0, 10], [10, 20], [20, 30]]).expand(64, -1, -1)
    assert _iou(predicted, truth) > max(0.65, _iou(even, truth) + 0.15)


def test_ctc_loss_is_added_and_needs_token_ids():
    rng = np.random.default_rng(4)
    items = [tiny_utterance("a", 40, 3, rng)]
    model = build("fgcme-ctc-align").train()
    batch = collate(items, [1], [ids(3)])
    out = model(batch)
    total = model.loss(out, batch)
    ce = torch.nn.functional.cross_entropy(out.logits, batch.labels)
    assert total.item() > ce.item()
    total.backward()
    assert model.aligner.out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="token_ids"):
        model(collate(items, [1]))
    assert not hasattr(build("fgcme"), "loss")  # the forced rows keep the engine's (weighted) loss
    with pytest.raises(ValueError, match="fgcme-ctc-align"):
        build("fgcme", alignment="ctc")


def test_full_model_learns_a_separable_toy_task():
    """Class = which of two acoustic patterns the utterance carries: loss must fall."""
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    items, labels = [], []
    for i in range(16):
        u = tiny_utterance(f"u{i}", 30, 3, rng)
        label = i % 2
        u.acoustic[:, 0] += 3.0 * (1 if label else -1)
        items.append(u)
        labels.append(label)
    batch = collate(items, labels)
    model = get_model("fgcme").build(InputSpec(2, 6, 5), **{**SMALL, "dropout": 0.0})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(batch).logits, batch.labels)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first
