"""Tiny random-weight Hugging Face encoders saved to a folder, for tests that need an hf: feature.

Every model has 2 layers and hidden size 32 (issue 21, item 5); nothing is downloaded: each is
built from a config, and the BERT tokenizer from a vocabulary written here.
"""

from __future__ import annotations

from pathlib import Path

WORDS = "the actor said kids are talking by the door unbelievable".split()
SMALL_SPEECH = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=8)


def save_wav2vec2(folder: Path, seed: int = 0) -> Path:
    """A 2-layer wav2vec2 (layer-norm conv stack, 20 ms frames) with its feature extractor."""
    import torch
    import transformers

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    config = transformers.Wav2Vec2Config(**SMALL_SPEECH, feat_extract_norm="layer", do_stable_layer_norm=True)
    transformers.Wav2Vec2Model(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return folder


def save_bert(folder: Path, extra_words: tuple[str, ...] = (), seed: int = 0) -> Path:
    """A 2-layer BERT whose vocabulary holds WORDS (and `extra_words`) plus a few word pieces."""
    import torch
    import transformers

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    words = {w.lower() for w in (*WORDS, *extra_words)} - {"unbelievable"}
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words), "un", "##believ", "##able", "##s", "kid"]
    (folder / "vocab.txt").write_text("\n".join(pieces) + "\n")
    transformers.BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)  # positional: v4 and v5 names differ
    config = transformers.BertConfig(vocab_size=len(pieces), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    return folder
