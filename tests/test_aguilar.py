"""Hierarchical models of Aguilar et al. 2019 (H-ACO, H-MM-1..4): acoustic words, GMU, attention."""

import numpy as np
import pytest
import torch

from emofuse.features.batch import UtteranceFeatures, collate
from emofuse.models.aguilar2019 import AcousticWords, word_spans
from emofuse.models.base import InputSpec, get_model, model_names
from emofuse.models.layers import BLSTM, reverse_within

torch.set_num_threads(1)  # tiny tensors: threads only add contention on a shared machine

HIERARCHICAL = ["H-ACO", "H-MM-1", "H-MM-2", "H-MM-3", "H-MM-4"]
SPEC = InputSpec(num_classes=4, acoustic_dim=6, word_dim=5)


def utterance(uid, frames, words, rng, gap=0.03):
    """Words with silence before, between (a gap of `gap` seconds) and after them."""
    edges = np.linspace(0.05, frames * 0.01 - 0.05, words + 1)
    times = np.stack([edges[:-1], edges[1:] - gap], 1)
    return UtteranceFeatures(
        uid,
        acoustic=rng.standard_normal((frames, 6)).astype(np.float32),
        words=[f"w{i}" for i in range(words)],
        word_times=times,
        word_vectors=rng.standard_normal((words, 5)).astype(np.float32),
    )


def build(name, **settings):
    torch.manual_seed(0)
    return get_model(name).build(SPEC, hidden=8, **settings).eval()


def test_reverse_within_flips_only_the_real_steps():
    x = torch.arange(5.0).view(1, 5, 1).repeat(2, 1, 1)
    out = reverse_within(x, torch.tensor([3, 5]))
    assert out[:, :, 0].tolist() == [[2, 1, 0, 3, 4], [4, 3, 2, 1, 0]]


def test_unpacked_blstm_gives_the_packed_blstms_outputs_and_gradients():
    torch.manual_seed(0)
    packed = BLSTM(6, 5, layers=2)
    unpacked = BLSTM(6, 5, layers=2)
    unpacked.load_state_dict(packed.state_dict())
    x = torch.randn(3, 9, 6)
    mask = torch.arange(9).unsqueeze(0) < torch.tensor([[9], [4], [6]])
    out_p, out_u = packed.forward_packed(x, mask), unpacked.forward_unpacked(x, mask)
    assert torch.allclose(out_p, out_u, atol=1e-6)
    out_p.pow(2).sum().backward()
    out_u.pow(2).sum().backward()
    for (name, p), q in zip(packed.named_parameters(), unpacked.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


def test_hierarchical_models_are_registered_under_the_papers_names():
    assert set(HIERARCHICAL) | {"B-ACO-1+attn"} <= set(model_names())


def test_acoustic_words_are_forward_state_at_last_frame_and_backward_state_at_first():
    rng = np.random.default_rng(0)
    item = utterance("a", 40, 3, rng)
    batch = collate([item], [0])
    torch.manual_seed(0)
    module = AcousticWords(6, hidden=4, layers=1, dropout=0.0).eval()
    words = module(batch)[0]  # (W, 8)

    # By hand: keep only the frames inside words, run the same LSTM, read the states.
    start, end = (t[0].tolist() for t in word_spans(batch))
    kept = [t for s, e in zip(start, end) for t in range(s, e)]
    assert len(kept) < 40  # there is silence to drop
    x = torch.as_tensor(item.acoustic[kept]).unsqueeze(0)
    states, _ = module.blstm.lstm(x)  # (1, T', 8)
    position = 0
    for w, (s, e) in enumerate(zip(start, end)):
        first, last = position, position + (e - s) - 1
        assert torch.allclose(words[w, :4], states[0, last, :4], atol=1e-6)
        assert torch.allclose(words[w, 4:], states[0, first, 4:], atol=1e-6)
        position += e - s


def test_acoustic_words_ignore_frames_outside_words():
    rng = np.random.default_rng(1)
    item = utterance("a", 40, 3, rng)
    module = AcousticWords(6, hidden=4, layers=2, dropout=0.0).eval()
    before = module(collate([item], [0]))
    inside = np.zeros(40, bool)
    start, end = (t[0].tolist() for t in word_spans(collate([item], [0])))
    for s, e in zip(start, end):
        inside[s:e] = True
    noisy = UtteranceFeatures(**{**item.__dict__})
    noisy.acoustic = item.acoustic.copy()
    noisy.acoustic[~inside] = 100.0
    after = module(collate([noisy], [0]))
    assert torch.allclose(before, after, atol=1e-6)


@pytest.mark.parametrize("name", HIERARCHICAL + ["B-ACO-1+attn"])
def test_model_is_the_same_alone_or_padded_in_a_batch(name):
    rng = np.random.default_rng(2)
    short, long = utterance("s", 25, 3, rng), utterance("l", 60, 7, rng)
    model = build(name)
    alone = model(collate([short], [0]))
    together = model(collate([long, short], [0, 0]))
    assert torch.allclose(alone.logits[0], together.logits[1], atol=1e-5)
    for key, value in alone.explain.items():
        length = value.shape[1]
        assert torch.allclose(value[0], together.explain[key][1, :length], atol=1e-5), key
        assert torch.all(together.explain[key][1, length:] == 0), key


def test_word_running_past_the_audio_end_is_the_same_alone_or_padded():
    rng = np.random.default_rng(3)
    short = utterance("s", 25, 3, rng)
    short.word_times[-1, 1] = 0.40  # transcript times beyond the 0.25 s of audio
    long = utterance("l", 60, 7, rng)
    model = build("H-MM-4")
    alone = model(collate([short], [0])).logits
    together = model(collate([long, short], [0, 0])).logits
    assert torch.allclose(alone[0], together[1], atol=1e-5)


def test_explanations_match_each_rows_mechanisms():
    rng = np.random.default_rng(4)
    batch = collate([utterance("a", 30, 4, rng)], [0])
    keys = {name: set(build(name)(batch).explain) for name in HIERARCHICAL}
    assert keys == {
        "H-ACO": set(), "H-MM-1": set(), "H-MM-2": {"gate"}, "H-MM-3": {"attention"},
        "H-MM-4": {"gate", "attention"},
    }


def test_attention_sums_to_one_over_real_words_and_is_zero_on_padding():
    rng = np.random.default_rng(5)
    batch = collate([utterance("a", 50, 6, rng), utterance("b", 30, 2, rng)], [0, 1])
    weights = build("H-MM-4")(batch).explain["attention"]  # (2, 6)
    assert torch.allclose(weights.sum(1), torch.ones(2), atol=1e-6)
    assert torch.all(weights[~batch.word_mask] == 0)
    assert torch.all(weights[batch.word_mask] > 0)


def test_gmu_gate_is_between_zero_and_one_on_real_words_and_zero_on_padding():
    rng = np.random.default_rng(6)
    batch = collate([utterance("a", 50, 6, rng), utterance("b", 30, 2, rng)], [0, 1])
    batch.words = batch.words * 50  # large inputs must still give a gate strictly inside (0, 1)
    model = build("H-MM-2").train()  # batch statistics, as in training
    gate = model(batch).explain["gate"]  # (2, 6)
    real = gate[batch.word_mask]
    assert torch.all((real > 0) & (real < 1))
    assert torch.all(gate[~batch.word_mask] == 0)


def test_hierarchical_models_refuse_a_batch_without_word_times():
    rng = np.random.default_rng(7)
    item = utterance("a", 30, 3, rng)
    item.word_times = None
    with pytest.raises(ValueError, match="word"):
        build("H-ACO")(collate([item], [0]))


def test_h_mm_4_learns_a_tiny_problem_carried_by_the_words():
    """Gradients reach every block: the class is readable from the word vectors alone."""
    rng = np.random.default_rng(8)
    items, labels = [], []
    for i in range(16):
        item = utterance(f"u{i}", 30, 3, rng)
        item.word_vectors[:, 0] = 3.0 if i % 2 else -3.0
        items.append(item)
        labels.append(i % 2)
    batch = collate(items, labels)
    torch.manual_seed(0)
    model = get_model("H-MM-4").build(InputSpec(2, 6, 5), hidden=8, dropout=0.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(batch).logits, batch.labels)
        first = first if first is not None else loss.item()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    assert loss.item() < 0.5 * first
    assert (model(batch).logits.argmax(1) == batch.labels).float().mean() == 1.0


def test_table_configs_load_and_name_the_papers_rows():
    from pathlib import Path

    from emofuse.training.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    expected = {
        "h-aco": "H-ACO", "h-mm-1": "H-MM-1", "h-mm-2": "H-MM-2", "h-mm-3": "H-MM-3", "h-mm-4": "H-MM-4",
        "multiview-b-lex": "MV-B-ACO-1+B-LEX", "multiview-h-mm-4": "MV-B-ACO-1+H-MM-4",
        "multiview-h-mm-4-random": "MV-B-ACO-1+H-MM-4", "multiview-frozen": "MV-frozen",
        "teacher-student": "teacher-student", "teacher-student-attn": "teacher-student+attn",
    }
    for corpus, protocol in (("ravdess4", "speaker-kfold"), ("iemocap4", "aguilar")):
        for stem, model in expected.items():
            cfg = load_config(root / corpus / f"{stem}.yaml")
            assert cfg.model_name == model and cfg.protocol.name == protocol, (corpus, stem)
            assert cfg.data.label_set == corpus
            if model in ("MV-frozen", "teacher-student", "teacher-student+attn"):
                # each fold's student learns from the teacher trained on that fold's training speakers
                assert cfg.model["teacher_checkpoint"] == f"runs/{corpus}/h-mm-4/fold-{{fold}}"
