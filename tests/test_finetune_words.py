"""B-LEX with a fine-tuned MiniLM word encoder (model.finetune_words)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emofuse.features.batch import UtteranceFeatures, collate
from emofuse.features.words import MiniLMWords
from emofuse.models.base import InputSpec, get_model
from emofuse.training.module import EmotionModule

SENTENCES = [["I", "can't", "believe", "it"], ["Kids", "are", "talking", "by", "the", "door"], ["No"]]


def batch_of(sentences, vectors):
    items = [UtteranceFeatures(id=f"u{i}", words=list(s), word_vectors=v) for i, (s, v) in enumerate(zip(sentences, vectors))]
    return collate(items, [0, 1, 2][: len(items)])


@pytest.fixture(scope="module")
def stored_vectors():
    return [v for v, _ in MiniLMWords().encode(SENTENCES)]


def build(**settings):
    torch.manual_seed(0)
    return get_model("B-LEX").build(InputSpec(num_classes=3, word_dim=384), hidden=8, layers=1, dropout=0.0, **settings)


def test_untrained_it_computes_the_stores_minilm_word_vectors(stored_vectors):
    model = build(finetune_words=True)
    batch = batch_of(SENTENCES, stored_vectors)
    with torch.no_grad():
        live = model.lexical.vectors(batch.word_strings, batch.word_mask.shape[1])
    for i, v in enumerate(stored_vectors):
        np.testing.assert_allclose(live[i, : len(v)].numpy(), v, atol=2e-5)
        assert torch.all(live[i, len(v):] == 0)  # padding slots
    frozen = build(finetune_words=False).eval()
    missing, unexpected = model.load_state_dict(frozen.state_dict(), strict=False)  # the same BLSTM and classifier
    assert not unexpected and all(k.startswith("lexical.vectors.") for k in missing)
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(model(batch).logits.numpy(), frozen(batch).logits.numpy(), atol=1e-5)


def test_the_encoder_trains_at_its_own_rate_and_moves(stored_vectors):
    module = EmotionModule("B-LEX", {"hidden": 8, "layers": 1, "dropout": 0.0, "finetune_words": True,
                                     "encoder_lr": 1e-4},
                           {"num_classes": 3, "acoustic_dim": 0, "word_dim": 384, "vocab_size": 0},
                           {"name": "adam", "lr": 1e-2, "weight_decay": 0.0}, ["a", "b", "c"])
    optimiser = module.configure_optimizers()
    rates = sorted(g["lr"] for g in optimiser.param_groups)
    assert rates == [1e-4, 1e-2]
    n_encoder = sum(p.numel() for p in module.model.lexical.vectors.parameters())
    assert sum(p.numel() for g in optimiser.param_groups if g["lr"] == 1e-4 for p in g["params"]) == n_encoder
    before = module.model.lexical.vectors.encoder.word.weight.detach().clone()
    batch = batch_of(SENTENCES, stored_vectors)
    module.loss(module.model(batch), batch).backward()
    optimiser.step()
    assert not torch.equal(before, module.model.lexical.vectors.encoder.word.weight)


def test_it_refuses_word_vectors_of_another_size():
    with pytest.raises(ValueError, match="set data.words=minilm"):
        get_model("B-LEX").build(InputSpec(num_classes=3, word_dim=50), hidden=8, layers=1, finetune_words=True)


def test_a_batch_without_its_words_is_refused(stored_vectors):
    model = build(finetune_words=True)
    batch = batch_of(SENTENCES, stored_vectors)
    batch.word_strings = None
    with pytest.raises(ValueError, match="needs the words"):
        model(batch)


# ------------------------------------------------------------- an hf: text encoder (issue 21, item 2)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    pytest.importorskip("transformers")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from hf_tiny import save_bert

    words = tuple(w.lower() for s in SENTENCES for w in s)
    return save_bert(tmp_path_factory.mktemp("bert"), extra_words=words)


def _hf_module(folder):
    torch.manual_seed(0)
    return EmotionModule("B-LEX", {"hidden": 8, "layers": 1, "dropout": 0.0, "finetune_words": True,
                                   "encoder_lr": 1e-3},
                         {"num_classes": 3, "acoustic_dim": 0, "word_dim": 32, "vocab_size": 0,
                          "word_encoder": f"hf:{folder}"},
                         {"name": "adam", "lr": 1e-2, "weight_decay": 0.0}, ["a", "b", "c"])


def test_an_hf_text_encoder_starts_from_the_stores_vectors_and_trains(tiny_bert):
    from emofuse.features.hf import HFWordEncoder

    stored = [v for v, _ in HFWordEncoder(f"hf:{tiny_bert}").encode(SENTENCES)]
    module = _hf_module(tiny_bert)
    batch = batch_of(SENTENCES, stored)
    module.model.eval()
    with torch.no_grad():
        live = module.model.lexical.vectors(batch.word_strings, batch.word_mask.shape[1])
    for i, v in enumerate(stored):
        np.testing.assert_allclose(live[i, : len(v)].numpy(), v, atol=1e-5)
        assert torch.all(live[i, len(v):] == 0)
    module.model.train()
    optimiser = module.configure_optimizers()
    assert sorted(g["lr"] for g in optimiser.param_groups) == [1e-3, 1e-2]
    weight = module.model.lexical.vectors.encoder.embeddings.word_embeddings.weight
    before = weight.detach().clone()
    module.loss(module.model(batch), batch).backward()
    optimiser.step()
    assert not torch.equal(before, weight)  # one step moved the encoder's own weights


def test_an_exported_fine_tuned_hf_encoder_predicts_with_its_trained_weights(tiny_bert, tmp_path):
    from emofuse.features.hf import HFWordEncoder
    from emofuse.inference.predictor import Predictor
    from emofuse.inference.text import predict_texts
    from emofuse.models.modeldir import ModelInfo, load_model_dir, write_model_dir

    module = _hf_module(tiny_bert)
    stored = [v for v, _ in HFWordEncoder(f"hf:{tiny_bert}").encode(SENTENCES)]
    batch = batch_of(SENTENCES, stored)
    optimiser = module.configure_optimizers()
    module.loss(module.model(batch), batch).backward()
    optimiser.step()
    model = module.model.eval()
    info = ModelInfo(name="B-LEX", settings={"hidden": 8, "layers": 1, "dropout": 0.0, "finetune_words": True},
                     spec={"num_classes": 3, "word_dim": 32, "word_encoder": f"hf:{tiny_bert}"},
                     needs=["words"], classes=["a", "b", "c"], words=f"hf:{tiny_bert}", align="written")
    out = write_model_dir(tmp_path / "model", model, info)
    loaded = load_model_dir(out).model
    trained = model.lexical.vectors.encoder.embeddings.word_embeddings.weight
    assert torch.equal(loaded.lexical.vectors.encoder.embeddings.word_embeddings.weight, trained)
    with torch.no_grad():
        expected = torch.softmax(model(batch_of(SENTENCES[:1], stored[:1])).logits, -1)[0]
    (prediction,) = predict_texts(Predictor(out, warm=False), [("u0", " ".join(SENTENCES[0]))], strict=True)
    assert prediction.label in ("a", "b", "c")
    assert [prediction.probabilities[c] for c in ("a", "b", "c")] == pytest.approx(expected.tolist(), abs=1e-4)
