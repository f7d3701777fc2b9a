"""The Table 1 baselines of FG_CME: shapes, padding invariance, and that each reads only its modalities."""

import numpy as np
import pytest
import torch

from emofuse.features.batch import collate
from emofuse.models.base import InputSpec, get_model
from emofuse.models.fgcme_baselines import attend, final_states
from helpers import tiny_utterance

SPEC = InputSpec(num_classes=4, acoustic_dim=6, word_dim=5)
SMALL = dict(hidden=4, fcn_hidden=6, conv_filters=(4, 5, 5), heads=2, dropout=0.0)
NAMES = ["cnn-lstm", "lstm-attn-acoustic", "lstm-attn-semantic", "uttconcat", "attnfusion", "mha"]
READS = {
    "cnn-lstm": {"acoustic"}, "lstm-attn-acoustic": {"acoustic"}, "lstm-attn-semantic": {"words"},
    "uttconcat": {"acoustic", "words"}, "attnfusion": {"acoustic", "words"}, "mha": {"acoustic", "words"},
}


def build(name: str, **settings):
    return get_model(name).build(SPEC, **{**SMALL, **settings}).eval()


def test_final_states_take_forward_last_real_step_and_backward_first_step():
    out = torch.arange(2 * 4 * 2, dtype=torch.float).view(2, 4, 2)  # H = 1 per direction
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    assert final_states(out, mask).tolist() == [[4.0, 1.0], [14.0, 9.0]]


def test_attend_ignores_padded_keys():
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [50.0, 50.0]]])
    context, weights = attend(torch.tensor([[1.0, 1.0]]), keys, torch.tensor([[True, True, False]]))
    assert weights[0, 2] == 0 and torch.allclose(weights.sum(-1), torch.ones(1))
    assert torch.allclose(context, torch.tensor([[0.5, 0.5]]))


@pytest.mark.parametrize("name", NAMES)
def test_baseline_output_shapes(name):
    rng = np.random.default_rng(0)
    out = build(name)(collate([tiny_utterance("a", 40, 4, rng), tiny_utterance("b", 25, 3, rng)], [0, 1]))
    assert out.logits.shape == (2, 4)
    assert out.utterance_vector.shape[0] == 2


@pytest.mark.parametrize("name", NAMES)
def test_baseline_is_the_same_alone_or_padded_in_a_batch(name):
    rng = np.random.default_rng(1)
    short, long = tiny_utterance("s", 23, 3, rng), tiny_utterance("l", 61, 7, rng)
    model = build(name)
    alone = model(collate([short], [0]))
    together = model(collate([long, short], [0, 0]))
    assert torch.allclose(alone.logits[0], together.logits[1], atol=1e-5)
    for key, value in alone.explain.items():
        cut = together.explain[key][1][tuple(slice(0, n) for n in value.shape[1:])]
        assert torch.allclose(value[0], cut, atol=1e-5), key


@pytest.mark.parametrize("name", NAMES)
def test_baseline_reads_only_its_modalities(name):
    rng = np.random.default_rng(2)
    batch = collate([tiny_utterance("a", 30, 3, rng)], [0])
    model = build(name)
    reference = model(batch).logits
    for modality in ("acoustic", "words"):
        changed = collate([tiny_utterance("a", 30, 3, rng)], [0])
        other = "words" if modality == "acoustic" else "acoustic"
        setattr(changed, other, getattr(batch, other))  # only `modality` differs
        moved = not torch.allclose(model(changed).logits, reference)
        assert moved == (modality in READS[name]), modality


def test_mha_hops_alternate_between_words_and_frames():
    rng = np.random.default_rng(3)
    batch = collate([tiny_utterance("a", 30, 3, rng)], [0])
    one, three = build("mha", hops=1), build("mha", hops=3)
    assert one(batch).utterance_vector.shape == three(batch).utterance_vector.shape == (1, 16)
    with pytest.raises(ValueError, match="hops"):
        build("mha", hops=0)


TABLE1 = NAMES + ["fgcme", "fgcme-no-acoustic-excite", "fgcme-no-semantic-excite", "fgcme-no-excite", "fgcme-ctc-align"]


@pytest.mark.parametrize("corpus", ["ravdess4", "iemocap4"])
def test_every_table1_row_has_a_config_that_loads_and_builds(corpus):
    from pathlib import Path

    from emofuse.training.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs" / corpus
    for row in TABLE1:
        cfg = load_config(root / f"{row}.yaml")
        assert cfg.model_name == row
        spec = InputSpec(num_classes=4, acoustic_dim=40, word_dim=50, vocab_size=20)
        model = get_model(row).build(spec, **cfg.model_settings)
        assert sum(p.numel() for p in model.parameters()) > 0
