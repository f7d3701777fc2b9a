"""The NMT-style model (Cid Ornelas, slides): text states attend over raw-waveform audio states,
globally, in a local window, or only over each word's forced-aligned frames."""

from pathlib import Path

import numpy as np
import pytest
import torch

from emofuse.errors import ConfigError
from emofuse.features.batch import UtteranceFeatures, collate
from emofuse.models.base import InputSpec, get_model
from emofuse.models.nmt_attention import WaveformFrontEnd, local_window
from helpers import fit_losses, model_from_config, two_class_batch

torch.manual_seed(0)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SR, WORD_DIM = 16000, 5
MODES = ["nmt-global", "nmt-local", "nmt-forced"]
SCORES = ["dot", "general", "concat"]
# 16 kHz -> 100 Hz -> 50 Hz states, as the default; small layers for speed.
SMALL = dict(text_hidden=8, audio_hidden=8, conv_channels=(8, 8), attention_size=8, window=3, dropout=0.0)


def _frames(wave: np.ndarray) -> np.ndarray:
    """The `waveform` feature's layout: (T, 160) frames of 10 ms."""
    n = len(wave) // 160
    return wave[: n * 160].reshape(n, 160).astype(np.float32)


def _utterance(uid: str, seconds: float, words: int, rng, start: float = 0.0) -> UtteranceFeatures:
    samples = int(seconds * SR)
    t = np.arange(samples) / SR
    wave = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(samples)
    times = np.linspace(start, seconds, words + 1)
    return UtteranceFeatures(
        uid,
        acoustic=_frames(wave),  # (T, 160)
        acoustic_hop=0.01,
        words=[f"w{i}" for i in range(words)],
        word_times=np.stack([times[:-1], times[1:]], 1),
        word_vectors=rng.standard_normal((words, WORD_DIM)).astype(np.float32),
    )


def _model(name: str, **settings):
    spec = InputSpec(num_classes=3, acoustic_dim=1, word_dim=WORD_DIM)
    return get_model(name).build(spec, **{**SMALL, **settings}).eval()


def _pair(rng):
    return collate([_utterance("short", 0.6, 3, rng, start=0.1), _utterance("long", 1.3, 6, rng)], [0, 1])


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("name", MODES)
def test_nmt_attention_rows_sum_to_one_and_padding_gets_no_mass(name, score):
    batch = _pair(np.random.default_rng(0))
    model = _model(name, score=score)
    a = model(batch).explain["alignment"]  # (B, W, T')
    _, state_mask = model.frontend(batch.acoustic, batch.acoustic_mask)
    assert a.shape[:2] == (2, 6) and a.shape[2] == state_mask.shape[1]
    real = batch.word_mask
    assert torch.allclose(a.sum(-1)[real], torch.ones(int(real.sum())), atol=1e-5)
    assert torch.all(a[~real] == 0)  # padded words
    assert torch.all(a.masked_select(~state_mask.unsqueeze(1).expand_as(a)) == 0)  # padded audio states
    assert state_mask[0].sum() < state_mask[1].sum()


@pytest.mark.parametrize("name", MODES)
def test_nmt_is_the_same_alone_or_padded_in_a_batch(name):
    rng = np.random.default_rng(1)
    short, long = _utterance("s", 0.7, 3, rng, start=0.05), _utterance("l", 1.9, 8, rng)
    model = _model(name)
    alone = model(collate([short], [0]))
    together = model(collate([long, short], [0, 0]))
    assert torch.allclose(alone.logits[0], together.logits[1], atol=1e-5)
    t = alone.explain["alignment"].shape[-1]
    assert torch.allclose(alone.explain["alignment"][0], together.explain["alignment"][1, :3, :t], atol=1e-6)


@pytest.mark.parametrize("name", MODES)
def test_nmt_never_reads_the_samples_in_padding(name):
    batch = _pair(np.random.default_rng(2))
    model = _model(name)
    before = model(batch).logits
    batch.acoustic[0, ~batch.acoustic_mask[0]] = 50.0  # garbage where the mask says padding
    batch.words[0, ~batch.word_mask[0]] = -50.0
    assert torch.allclose(before, model(batch).logits, atol=1e-5)


def test_local_attention_puts_no_mass_outside_its_window():
    batch = _pair(np.random.default_rng(3))
    model = _model("nmt-local", window=2)
    with torch.no_grad():
        a = model(batch).explain["alignment"]
    _, state_mask = model.frontend(batch.acoustic, batch.acoustic_mask)
    for b in range(2):
        n_words, n_states = int(batch.word_mask[b].sum()), int(state_mask[b].sum())
        for i in range(n_words):
            centre = (i + 0.5) * n_states / n_words - 0.5  # the monotonic position of word i
            s = torch.arange(a.shape[-1]).float()
            outside = (s - centre).abs() > 2
            assert torch.all(a[b, i, outside] == 0)
            assert a[b, i, ~outside].sum() == pytest.approx(1.0, abs=1e-5)
    # Without the Gaussian the hard window still holds.
    with torch.no_grad():
        a = _model("nmt-local", window=2, gaussian=False)(batch).explain["alignment"]
    allowed, _ = local_window(batch.word_mask, state_mask, 2)
    assert torch.all(a[~allowed] == 0)


def test_forced_attention_puts_no_mass_outside_each_words_frames():
    batch = _pair(np.random.default_rng(4))
    model = _model("nmt-forced")
    with torch.no_grad():
        out = model(batch)
    a = out.explain["alignment"]
    front = model.frontend
    _, state_mask = front(batch.acoustic, batch.acoustic_mask)
    centres = torch.arange(a.shape[-1]) * front.stride + (front.field - 1) / 2  # samples
    assert out.explain["alignment_hop"].tolist() == pytest.approx([front.stride / SR] * 2)
    for b in range(2):
        for i in range(int(batch.word_mask[b].sum())):
            start, end = (batch.word_frames[b, i] * 160).tolist()  # samples [start, end)
            inside = (centres >= start) & (centres < end)
            assert inside.any()  # every word here spans several 20 ms states
            assert torch.all(a[b, i, ~inside] == 0)
            assert a[b, i, inside].sum() == pytest.approx(1.0, abs=1e-5)
            # The per-word summary: where (in seconds) the word listened lies inside the word.
            centre_s = out.explain["attention_center"][b, i].item()
            assert start / SR <= centre_s <= end / SR
    # The first word of "short" starts at 0.1 s: no state before it may get its attention.
    assert torch.all(a[0, 0, centres < 0.1 * SR] == 0)


def test_forced_attention_gives_a_word_shorter_than_a_state_one_state():
    front = WaveformFrontEnd(get_model("nmt-forced").config_cls(**SMALL))
    spans = torch.tensor([[[1000, 1010], [99999, 100000]]])  # a 10-sample word; one past the end
    states = front.states_of_samples(spans, torch.tensor([20]))
    assert states[0].tolist() == [[states[0, 0, 0].item(), states[0, 0, 0].item() + 1], [19, 20]]


def test_front_end_counts_real_states_like_the_unpadded_convolution():
    cfg = get_model("nmt-global").config_cls(**SMALL)
    front = WaveformFrontEnd(cfg)
    assert front.stride == 320 and front.field == 400 + 2 * 160  # 20 ms states, 45 ms receptive field
    wave = torch.randn(1, 9000, 1)
    h_alone, m_alone = front(wave, torch.ones(1, 9000, dtype=torch.bool))
    assert m_alone.all() and h_alone.shape[1] == (((9000 - 400) // 160 + 1) - 3) // 2 + 1
    padded = torch.cat([wave, torch.randn(1, 5000, 1)], 1)
    h_pad, m_pad = front(padded, torch.tensor([[True] * 9000 + [False] * 5000]))
    assert int(m_pad.sum()) == h_alone.shape[1]
    assert torch.allclose(h_pad[:, : h_alone.shape[1]], h_alone, atol=1e-5)
    # The store's (T, 160) frames are the same samples: the same states.
    h_frames, m_frames = front(wave[:, :8960].reshape(1, 56, 160), torch.ones(1, 56, dtype=torch.bool))
    h_flat, _ = front(wave[:, :8960], torch.ones(1, 8960, dtype=torch.bool))
    assert m_frames.all() and torch.allclose(h_frames, h_flat, atol=1e-6)


def test_nmt_rejects_bad_settings_and_missing_word_times():
    with pytest.raises(ConfigError, match="dot"):
        _model("nmt-global", score="dot", text_hidden=8, audio_hidden=16)
    with pytest.raises(ConfigError, match="mode"):
        _model("nmt-global", mode="sideways")
    with pytest.raises(ConfigError, match="score"):
        _model("nmt-global", score="cosine")
    with pytest.raises(ConfigError, match="window"):
        _model("nmt-local", window=0)
    batch = _pair(np.random.default_rng(5))
    batch.word_frames = None
    with pytest.raises(ValueError, match="word_frames"):
        _model("nmt-forced")(batch)


@pytest.mark.parametrize("name", MODES)
def test_nmt_learns_a_class_carried_by_the_audio(name):
    """A few Adam steps on a toy task whose label is the pitch lower the loss for every mode."""
    torch.manual_seed(0)
    rng = np.random.default_rng(6)

    def toy(i: int, label: int) -> UtteranceFeatures:
        seconds = float(rng.uniform(0.3, 0.5))
        t = np.arange(int(seconds * SR)) / SR
        wave = 0.3 * np.sin(2 * np.pi * (150 if label else 600) * t) + 0.01 * rng.standard_normal(t.size)
        u = _utterance(f"u{i}", seconds, int(rng.integers(2, 5)), rng)
        u.acoustic = _frames(wave)  # the class is the pitch
        return u

    batch = two_class_batch(8, toy)
    model = _model(name).train()
    losses = fit_losses(model, batch, steps=20)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("path", sorted(str(p) for p in CONFIGS.glob("*/nmt*.yaml")))
def test_nmt_configs_load_and_build_their_model(path):
    cfg, model = model_from_config(path, InputSpec(num_classes=4, acoustic_dim=160, word_dim=50))
    assert cfg.data.acoustic == "waveform"
    assert model.cfg.mode == cfg.model_name.split("-")[1]
    assert model.frontend.stride * 1000 // SR == 20  # 50 audio states per second
