"""The convolutional attention network (Lee et al. 2018) and its shallow baseline: masking,
the attention matrix, fixed-size inputs and the shared unimodal encoders."""

from pathlib import Path

import numpy as np
import pytest
import torch

from emofuse.errors import ConfigError
from emofuse.features.batch import UtteranceFeatures, collate
from emofuse.models.base import InputSpec, get_model
from emofuse.models.can import SpectrogramCNN, WordCNN, fixed_spectrogram, fixed_words
from helpers import fit_losses, model_from_config, two_class_batch

torch.manual_seed(0)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BINS, WORD_DIM = 24, 5
# Small sizes with the paper's structure: 3 pooled spectrogram blocks, 2 word blocks, 3 dense layers.
SMALL = dict(time_frames=32, freq_bins=16, max_words=8, channels=4, latent=6, dense=(32, 16, 8))


def _utterance(uid: str, frames: int, words: int, rng, hop: float = 0.02) -> UtteranceFeatures:
    times = np.linspace(0, frames * hop, words + 1)
    return UtteranceFeatures(
        uid,
        acoustic=rng.standard_normal((frames, BINS)).astype(np.float32) * 10 - 40,  # dB-like
        acoustic_hop=hop,
        words=[f"w{i}" for i in range(words)],
        word_times=np.stack([times[:-1], times[1:]], 1),
        word_vectors=rng.standard_normal((words, WORD_DIM)).astype(np.float32),
    )


def _model(name: str = "can", **settings):
    spec = InputSpec(num_classes=4, acoustic_dim=BINS, word_dim=WORD_DIM)
    return get_model(name).build(spec, **{**SMALL, **settings}).eval()


def test_can_attention_puts_no_mass_on_padded_words_or_frames():
    rng = np.random.default_rng(0)
    batch = collate([_utterance("short", 12, 3, rng), _utterance("long", 20, 6, rng)], [0, 1])
    out = _model()(batch)
    a = out.explain["alignment"]  # (B, W, T') with T' = 32 / 2^3 = 4
    assert a.shape == (2, 6, 4)
    assert torch.all(a[0, 3:] == 0)  # padded words of the short utterance
    # 12 real frames of 32 -> pooled positions 0, 1, 2 hold real frames (2 holds frames 8..15).
    assert torch.all(a[0, :, 3:] == 0)
    assert torch.all(a[1, :, 3:] == 0)  # 20 real frames -> positions 0..2
    assert torch.all(out.explain["time_weight"][0, 3:] == 0)
    assert out.explain["alignment_hop"].tolist() == pytest.approx([0.02 * 8] * 2)  # one column = 2^3 frames


def test_can_attention_rows_of_real_words_sum_to_one():
    rng = np.random.default_rng(1)
    batch = collate([_utterance("a", 32, 5, rng), _utterance("b", 17, 2, rng)], [0, 1])
    a = _model()(batch).explain["alignment"]
    real = batch.word_mask
    assert torch.allclose(a.sum(-1)[real], torch.ones(int(real.sum())), atol=1e-5)
    assert torch.all(a.sum(-1)[~real] == 0)


def test_can_uniform_attention_leaves_the_spectrogram_unchanged_in_scale():
    rng = np.random.default_rng(2)
    batch = collate([_utterance("a", 32, 5, rng)], [0])
    weight = _model()(batch).explain["time_weight"]  # (1, 4), all positions real
    assert weight.mean().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", ["can", "can-shallow"])
def test_can_is_the_same_alone_or_padded_in_a_batch(name):
    rng = np.random.default_rng(3)
    short, long = _utterance("s", 11, 3, rng), _utterance("l", 29, 7, rng)
    model = _model(name)
    alone = model(collate([short], [0]))
    together = model(collate([long, short], [0, 0]))
    assert torch.allclose(alone.logits[0], together.logits[1], atol=1e-5)
    if name == "can":
        assert torch.allclose(alone.explain["alignment"][0], together.explain["alignment"][1, :3], atol=1e-6)


@pytest.mark.parametrize("name", ["can", "can-shallow"])
def test_can_never_reads_what_lies_in_padding(name):
    rng = np.random.default_rng(4)
    batch = collate([_utterance("l", 30, 7, rng), _utterance("s", 10, 2, rng)], [0, 0])
    model = _model(name)
    before = model(batch).logits
    batch.acoustic[1, 10:] = 1e4  # garbage where the mask says padding
    batch.words[1, 2:] = -1e4
    assert torch.allclose(before, model(batch).logits, atol=1e-5)


def test_can_crops_long_inputs_to_the_configured_size():
    rng = np.random.default_rng(5)
    long = _utterance("l", 80, 12, rng)
    cropped = UtteranceFeatures("c", acoustic=long.acoustic[:32], acoustic_hop=long.acoustic_hop,
                                words=long.words[:8], word_times=long.word_times[:8],
                                word_vectors=long.word_vectors[:8])
    model = _model()
    a = model(collate([long], [0]))
    b = model(collate([cropped], [0]))
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert a.explain["alignment"].shape == (1, 12, 4)  # back on the batch's word axis
    assert torch.all(a.explain["alignment"][0, 8:] == 0)  # words past max_words are not seen


def test_fixed_spectrogram_standardises_real_cells_and_zeroes_padding():
    rng = np.random.default_rng(6)
    batch = collate([_utterance("a", 20, 2, rng)], [0])
    cfg = get_model("can").config_cls(**SMALL)
    x, mask = fixed_spectrogram(batch, cfg)  # (1, 32, 16)
    assert x.shape == (1, 32, 16) and mask.sum().item() == 20
    real = x[0, :20]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert real.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)
    assert torch.all(x[0, 20:] == 0)
    w, wmask = fixed_words(batch, cfg)
    assert w.shape == (1, 8, WORD_DIM) and wmask.sum().item() == 2


def test_shallow_baseline_and_can_share_their_unimodal_encoders():
    can, shallow = _model("can"), _model("can-shallow")
    assert type(can.spectrogram_cnn) is type(shallow.spectrogram_cnn) is SpectrogramCNN
    assert type(can.word_cnn) is type(shallow.word_cnn) is WordCNN
    shallow.spectrogram_cnn.load_state_dict(can.spectrogram_cnn.state_dict())
    shallow.word_cnn.load_state_dict(can.word_cnn.state_dict())
    rng = np.random.default_rng(7)
    batch = collate([_utterance("a", 25, 4, rng)], [0])
    x, tmask = fixed_spectrogram(batch, can.cfg)
    w, wmask = fixed_words(batch, can.cfg)
    assert torch.equal(can.spectrogram_cnn(x, tmask)[0], shallow.spectrogram_cnn(x, tmask)[0])
    assert torch.equal(can.word_cnn(w, wmask)[0], shallow.word_cnn(w, wmask)[0])
    assert not hasattr(shallow, "attention") and "alignment" not in shallow(batch).explain


def test_pooled_word_cnn_gives_each_word_its_groups_row():
    rng = np.random.default_rng(8)
    batch = collate([_utterance("a", 32, 5, rng)], [0])
    a = _model(word_pool=True, word_layers=1)(batch).explain["alignment"]  # groups of 2 words
    assert a.shape == (1, 5, 4)
    assert torch.allclose(a[0, 0], a[0, 1]) and torch.allclose(a[0, 2], a[0, 3])
    assert torch.allclose(a.sum(-1), torch.ones(1, 5), atol=1e-5)


def test_can_refuses_a_spectrogram_too_small_for_its_pooling():
    with pytest.raises(ConfigError, match="max-pool"):
        _model(time_frames=4, spec_layers=3)


@pytest.mark.parametrize("name", ["can", "can-shallow"])
def test_can_learns_which_words_and_spectra_go_with_a_class(name):
    """A few SGD steps on a separable toy task lower the loss: the gradients reach every part."""
    torch.manual_seed(0)
    rng = np.random.default_rng(9)

    def toy(i: int, label: int) -> UtteranceFeatures:
        u = _utterance(f"u{i}", int(rng.integers(14, 32)), int(rng.integers(2, 8)), rng)
        u.acoustic[:, : BINS // 2] += 15.0 * label  # the class shows in the low bins
        return u

    batch = two_class_batch(16, toy)
    model = _model(name).train()
    model.head.dropout.p = 0.0
    losses = fit_losses(model, batch, steps=25)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("path", sorted(str(p) for p in CONFIGS.glob("*/can*.yaml")))
def test_can_configs_load_and_build_their_model(path):
    cfg, model = model_from_config(path, InputSpec(num_classes=6, acoustic_dim=200, word_dim=50))
    assert cfg.data.acoustic == "spectrogram8k"
    assert model.cfg.time_frames * model.cfg.freq_bins == 400 * 200  # the paper's fixed input
