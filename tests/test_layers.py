"""The shared blocks never let padding leak: same utterance alone or padded gives the same output."""

import numpy as np
import pytest
import torch

from emofuse.features.batch import UtteranceFeatures, alignment_matrix, collate
from emofuse.models.base import InputSpec, get_model, model_names
from emofuse.models.layers import (
    BLSTM, GMU, ContextAttention, compact, masked_max, masked_mean, masked_softmax,
)

torch.manual_seed(0)


def test_masked_mean_and_max_ignore_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert masked_max(x, mask).item() == pytest.approx(3.0)


def test_masked_softmax_puts_no_mass_on_padding_and_sums_to_one():
    scores = torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    w = masked_softmax(scores, mask)
    assert torch.all(w[~mask] == 0)
    assert torch.allclose(w.sum(-1), torch.ones(3))


def test_compact_moves_kept_frames_to_front_in_order():
    x = torch.arange(6.0).view(1, 6, 1)
    keep = torch.tensor([[False, True, False, True, True, False]])
    out, mask = compact(x, keep)
    assert out[0, :, 0].tolist() == [1.0, 3.0, 4.0]
    assert mask.tolist() == [[True, True, True]]


def test_blstm_output_is_the_same_alone_or_padded():
    blstm = BLSTM(4, 3).eval()
    x = torch.randn(1, 5, 4)
    alone = blstm(x, torch.ones(1, 5, dtype=torch.bool))
    padded = torch.cat([x, torch.randn(1, 4, 4)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 4])
    out = blstm(padded, mask)
    assert torch.allclose(alone, out[:, :5], atol=1e-6)
    assert torch.all(out[:, 5:] == 0)


def test_context_attention_sums_to_one_over_real_words_and_is_zero_on_padding():
    att = ContextAttention(6)
    h = torch.randn(2, 4, 6)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    u, a = att(h, mask)
    assert torch.allclose(a.sum(-1), torch.ones(2))
    assert torch.all(a[~mask] == 0)
    u_alone, _ = att(h[:1, :2], mask[:1, :2])
    assert torch.allclose(u[:1], u_alone, atol=1e-6)


def test_gmu_gate_is_between_zero_and_one_and_zero_on_padding():
    gmu = GMU(5, 7, 4)
    mask = torch.tensor([[True, True, True, False]])
    h, z = gmu(torch.randn(1, 4, 5) * 10, torch.randn(1, 4, 7) * 10, mask)
    real = z[mask]
    assert torch.all((real > 0) & (real < 1))
    assert torch.all(z[~mask] == 0) and torch.all(h[~mask] == 0)


def test_gmu_is_padding_invariant_in_eval_mode():
    gmu = GMU(5, 7, 4).eval()
    xa, xl = torch.randn(1, 3, 5), torch.randn(1, 3, 7)
    h1, z1 = gmu(xa, xl, torch.ones(1, 3, dtype=torch.bool))
    pad = lambda t: torch.cat([t, torch.randn(1, 2, t.shape[-1])], 1)
    h2, z2 = gmu(pad(xa), pad(xl), torch.tensor([[True] * 3 + [False] * 2]))
    assert torch.allclose(h1, h2[:, :3], atol=1e-6) and torch.allclose(z1, z2[:, :3], atol=1e-6)


def test_alignment_matrix_marks_each_words_frames():
    frames = torch.tensor([[[0, 2], [2, 5], [0, 0]]])
    a = alignment_matrix(frames, 6, torch.tensor([[True, True, False]]))
    assert a[0].tolist() == [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]]


def _utterance(uid: str, frames: int, words: int, rng) -> UtteranceFeatures:
    times = np.linspace(0, frames * 0.01, words + 1)
    return UtteranceFeatures(
        uid,
        acoustic=rng.standard_normal((frames, 6)).astype(np.float32),
        speech_mask=np.r_[np.zeros(2, bool), np.ones(frames - 2, bool)],
        words=[f"w{i}" for i in range(words)],
        word_times=np.stack([times[:-1], times[1:]], 1),
        word_vectors=rng.standard_normal((words, 5)).astype(np.float32),
    )


def test_collate_pads_and_masks():
    rng = np.random.default_rng(0)
    b = collate([_utterance("a", 10, 3, rng), _utterance("b", 7, 2, rng)], [0, 1])
    assert b.acoustic.shape == (2, 10, 6) and b.words.shape == (2, 3, 5)
    assert b.acoustic_mask.sum(1).tolist() == [10, 7]
    assert b.word_mask.sum(1).tolist() == [3, 2]
    assert b.word_frames[0].tolist() == [[0, 4], [3, 7], [6, 10]]


@pytest.mark.parametrize("name", ["B-ACO-1", "B-ACO-2", "B-LEX", "B-MM-1", "B-MM-2"])
def test_baseline_is_the_same_alone_or_padded_in_a_batch(name):
    rng = np.random.default_rng(1)
    short, long = _utterance("s", 12, 3, rng), _utterance("l", 30, 6, rng)
    model = get_model(name).build(InputSpec(num_classes=4, acoustic_dim=6, word_dim=5), hidden=8).eval()
    alone = model(collate([short], [0])).logits
    together = model(collate([long, short], [0, 0])).logits
    assert torch.allclose(alone[0], together[1], atol=1e-5)


def test_registry_lists_papers_names_and_rejects_unknown():
    assert {"B-ACO-1", "B-LEX", "B-MM-2"} <= set(model_names())
    from emofuse.errors import ConfigError
    with pytest.raises(ConfigError, match="known models"):
        get_model("no-such-model")
    with pytest.raises(ConfigError, match="valid"):
        get_model("B-ACO-1").build(InputSpec(num_classes=2, acoustic_dim=3), hiddn=4)


def test_blstm_unpacked_path_equals_the_packed_one():
    torch.manual_seed(3)
    blstm = BLSTM(4, 5, layers=2).eval()
    x = torch.randn(3, 7, 4)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] * 1 + [False] * 6])
    assert torch.allclose(blstm.forward_unpacked(x, mask), blstm.forward_packed(x, mask), atol=1e-5)
    # gradients flow through the unpacked path too
    x.requires_grad_(True)
    blstm.train().forward_unpacked(x, mask).sum().backward()
    assert x.grad[1, 4:].abs().sum() == 0 and x.grad[1, :4].abs().sum() > 0
