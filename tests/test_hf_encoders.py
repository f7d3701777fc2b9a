"""hf: encoders from a local folder: tiny random-weight models built from configs in tmp_path.

Every model here has 2 layers and hidden size 32; the references are transformers' own
feature extractors, tokenizers and forward passes on the same folders.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from emofuse.errors import ConfigError, DataError, EmofuseError
from emofuse.features import hf
from emofuse.models.layer_weights import LayerWeightedSum

transformers = pytest.importorskip("transformers")

from hf_tiny import save_bert  # noqa: E402 - after the importorskip

SR = 16000
SPEECH = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper")
WORDS = "the actor said kids are talking by the door unbelievable".split()


def _audio(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _speech_model(kind: str):
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=8)
    if kind == "wav2vec2":
        return transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**small, feat_extract_norm="layer",
                                                                      do_stable_layer_norm=True))
    if kind == "hubert":  # group norm over time in the first conv: batched only at equal lengths
        return transformers.HubertModel(transformers.HubertConfig(**small, feat_extract_norm="group"))
    if kind == "wavlm":
        return transformers.WavLMModel(transformers.WavLMConfig(**small, feat_extract_norm="layer", num_buckets=16,
                                                                max_bucket_distance=64))
    if kind == "data2vec-audio":
        small.update(num_conv_pos_embeddings=5)
        return transformers.Data2VecAudioModel(transformers.Data2VecAudioConfig(**small))
    config = transformers.WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                        num_mel_bins=16, max_source_positions=50, max_target_positions=8,
                                        vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                        decoder_start_token_id=1, suppress_tokens=None,
                                        begin_suppress_tokens=None)  # a 1 s window: 50 frames of 20 ms
    return transformers.WhisperModel(config)


@pytest.fixture(scope="module")
def speech_folders(tmp_path_factory):
    torch.manual_seed(0)
    folders = {}
    for kind in SPEECH:
        folder = tmp_path_factory.mktemp(kind.replace("-", "_"))
        _speech_model(kind).save_pretrained(folder)
        if kind == "whisper":
            transformers.WhisperFeatureExtractor(feature_size=16, chunk_length=1).save_pretrained(folder)
        else:
            transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
        folders[kind] = folder
    return folders


def _reference_speech(folder, kind: str, y: np.ndarray) -> tuple:
    """transformers' own feature extractor and forward on one utterance: the hidden states."""
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
    with torch.inference_mode():
        if kind == "whisper":
            model = transformers.WhisperModel.from_pretrained(folder, local_files_only=True).encoder.eval()
            feats = extractor(y, sampling_rate=SR, return_tensors="pt").input_features
            return model(feats, output_hidden_states=True).hidden_states
        model = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()
        values = extractor(y, sampling_rate=SR, return_tensors="pt").input_values
        return model(values, output_hidden_states=True).hidden_states


# ----------------------------------------------------------------------------- speech


@pytest.mark.parametrize("kind", SPEECH)
def test_speech_hidden_states_equal_transformers_forward(speech_folders, kind):
    y = _audio(0.73)
    reference = _reference_speech(speech_folders[kind], kind, y)
    encoder = hf.HFSpeechEncoder(f"hf:{speech_folders[kind]}#layer=1")
    got = encoder.encode(y)  # (T, 32)
    t = encoder.num_frames(len(y))
    assert got.shape == (t, 32)
    np.testing.assert_allclose(got, reference[1][0, :t].numpy(), atol=1e-5)
    if kind != "whisper":
        assert reference[1].shape[1] == t  # the conv formula gives the model's own frame count
    else:
        assert t == 37  # ceil(73 mel frames / 2): the frames of real audio, not the 1 s window's 50


def test_layer_options_select_the_right_hidden_states(speech_folders):
    y = _audio(0.5)
    folder = speech_folders["wav2vec2"]
    reference = [h[0].numpy() for h in _reference_speech(folder, "wav2vec2", y)]  # 3 x (T, 32)
    every = hf.HFSpeechEncoder(f"hf:{folder}#layers=all").encode(y)  # (T, 3, 32)
    assert every.shape == (len(reference[0]), 3, 32)
    for layer, want in enumerate(reference):
        np.testing.assert_allclose(every[:, layer], want, atol=1e-5)
        np.testing.assert_allclose(hf.HFSpeechEncoder(f"hf:{folder}#layer={layer}").encode(y), want, atol=1e-5)
    np.testing.assert_allclose(hf.HFSpeechEncoder(f"hf:{folder}").encode(y), reference[-1], atol=1e-5)
    np.testing.assert_allclose(hf.HFSpeechEncoder(f"hf:{folder}#layers=last").encode(y), reference[-1], atol=1e-5)


def test_layer_beyond_the_model_is_a_config_error(speech_folders):
    with pytest.raises(ConfigError, match="layers 0..2"):
        hf.HFSpeechEncoder(f"hf:{speech_folders['wavlm']}#layer=3")


def test_wav2vec2_frames_sit_on_a_20_ms_hop_with_a_25_ms_field(speech_folders):
    encoder = hf.HFSpeechEncoder(f"hf:{speech_folders['wav2vec2']}")
    assert encoder.hop == pytest.approx(0.02)
    assert encoder.geometry.receptive_field == pytest.approx(0.025)  # 400 samples, from the conv kernels
    starts, ends = encoder.frame_times(4)
    np.testing.assert_allclose(starts, [0.0, 0.02, 0.04, 0.06])
    np.testing.assert_allclose(ends, starts + 0.025)
    assert encoder.geometry.centre_offset == pytest.approx(0.0025)
    assert encoder.settings["hop"] == pytest.approx(0.02)


def test_geometry_follows_the_config_not_an_assumed_hop(tmp_path):
    config = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, conv_dim=(16, 16), conv_kernel=(8, 4),
                                         conv_stride=(4, 4), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2)
    transformers.Wav2Vec2Model(config).save_pretrained(tmp_path)
    encoder = hf.HFSpeechEncoder(f"hf:{tmp_path}")
    assert encoder.geometry.hop == 16 and encoder.geometry.width == 8 + 3 * 4  # 1 ms hop, 20-sample field
    y = _audio(0.1)
    with torch.inference_mode():
        model = transformers.AutoModel.from_pretrained(tmp_path, local_files_only=True)
        assert model(torch.from_numpy(y)[None]).last_hidden_state.shape[1] == encoder.num_frames(len(y))


def test_whisper_frames_are_centred_on_multiples_of_20_ms(speech_folders):
    encoder = hf.HFSpeechEncoder(f"hf:{speech_folders['whisper']}")
    starts, ends = encoder.frame_times(3)
    np.testing.assert_allclose((starts + ends) / 2, [0.0, 0.02, 0.04])
    np.testing.assert_allclose(ends - starts, 0.065)  # 5 mel frames of 25 ms, 10 ms apart
    assert encoder.geometry.centre_offset == pytest.approx(-0.01)


def test_words_map_to_the_right_20_ms_frames(speech_folders):
    from emofuse.align import word_frame_matrix

    encoder = hf.HFSpeechEncoder(f"hf:{speech_folders['wav2vec2']}")
    frames = encoder.num_frames(SR)  # 1 s: 49 frames of 20 ms
    matrix = word_frame_matrix(np.array([[0.10, 0.20], [0.50, 0.53]]), frames, encoder.hop)  # (2, 49)
    assert np.flatnonzero(matrix[0]).tolist() == [5, 6, 7, 8, 9]
    assert np.flatnonzero(matrix[1]).tolist() == [25, 26]
    starts, ends = encoder.frame_times(frames)
    assert starts[5] == pytest.approx(0.10) and ends[9] <= 0.20 + encoder.geometry.centre_offset * 2 + 1e-9


@pytest.mark.parametrize("kind", ["whisper", "wav2vec2"])
def test_words_map_to_the_frames_whose_real_centres_they_cover(speech_folders, kind):
    """Frame t stands for hop seconds around its real centre (Whisper: t * 20 ms, 10 ms before
    the 20 ms grid's; wav2vec2: 2.5 ms after), in the matrix and in the batch's word spans."""
    from emofuse.align import word_frame_matrix
    from emofuse.features.batch import UtteranceFeatures, collate

    encoder = hf.HFSpeechEncoder(f"hf:{speech_folders[kind]}")
    offset, hop = encoder.geometry.centre_offset, encoder.hop
    starts, ends = encoder.frame_times(50)
    centres = (starts + ends) / 2
    times = np.array([[0.035, 0.055], [0.10, 0.20], [0.301, 0.309]])
    matrix = word_frame_matrix(times, 50, hop, offset)  # (3, 50)
    for (start, end), row in zip(times, matrix):
        overlapping = np.flatnonzero((centres - hop / 2 < end) & (centres + hop / 2 > start))
        assert np.flatnonzero(row).tolist() == overlapping.tolist()
    if kind == "whisper":
        assert np.flatnonzero(matrix[0]).tolist() == [2, 3]  # centres 40 and 60 ms; the 20 ms grid said 1, 2
        assert np.flatnonzero(word_frame_matrix(times, 50, hop)[0]).tolist() == [1, 2]
    item = UtteranceFeatures(id="u", acoustic=np.zeros((50, 4), np.float32), acoustic_hop=hop,
                             acoustic_centre_offset=offset, word_times=times.astype(np.float32))
    spans = collate([item], [0]).word_frames[0].numpy()  # (3, 2)
    for (first, last), row in zip(spans, matrix):
        assert (first, last) == (np.flatnonzero(row)[0], np.flatnonzero(row)[-1] + 1)


def test_the_energy_mask_is_regridded_on_real_frame_times():
    from emofuse.features.store.load import regrid_mask

    mask = np.zeros(100, dtype=bool)  # 10 ms frames: speech in [40, 60) ms
    mask[4:6] = True
    assert np.flatnonzero(regrid_mask(mask, 0.02, 10)).tolist() == [2]
    assert np.flatnonzero(regrid_mask(mask, 0.02, 10, -0.01)).tolist() == [2, 3]  # Whisper: frames at 40, 60 ms


def test_chunked_equals_unchunked_within_tolerance(speech_folders):
    """Stated tolerance: conv features (layer 0) 1e-4; transformer layers lose the context
    beyond their chunk, so the last layer is compared by relative RMS: 0.0017 measured on
    this model with 1 s chunks, bound 0.01."""
    y = _audio(3.0, seed=3)
    folder = speech_folders["wav2vec2"]
    whole = hf.HFSpeechEncoder(f"hf:{folder}#layers=all", chunk_seconds=30.0).encode(y)  # (149, 3, 32)
    chunked = hf.HFSpeechEncoder(f"hf:{folder}#layers=all", chunk_seconds=1.0, overlap_seconds=0.4).encode(y)
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked[:, 0], whole[:, 0], atol=1e-4)
    error = np.sqrt(np.mean((chunked[:, -1] - whole[:, -1]) ** 2) / np.mean(whole[:, -1] ** 2))
    assert error < 0.01


def test_chunk_seams_take_each_frame_from_one_chunk(speech_folders):
    encoder = hf.HFSpeechEncoder(f"hf:{speech_folders['wav2vec2']}", chunk_seconds=1.0, overlap_seconds=0.4)
    total = encoder.num_frames(3 * SR)
    owned = [first + np.arange(lo, hi) for first, lo, hi, _, _ in encoder._chunks(total, 3 * SR)]
    np.testing.assert_array_equal(np.concatenate(owned), np.arange(total))


def test_whisper_longer_than_its_window_is_chunked_keeping_real_frames(speech_folders):
    folder = speech_folders["whisper"]
    y = _audio(2.5, seed=4)  # 2.5 windows of 1 s
    encoder = hf.HFSpeechEncoder(f"hf:{folder}#layer=2", overlap_seconds=0.2)
    got = encoder.encode(y)
    assert got.shape == (125, 32)
    first_window = _reference_speech(folder, "whisper", y[:SR])[2][0].numpy()  # (50, 32)
    np.testing.assert_allclose(got[:45], first_window[:45], atol=1e-5)  # up to the seam at 45 = 40 + 10 / 2
    with pytest.raises(ConfigError, match="window"):
        hf.HFSpeechEncoder(f"hf:{folder}", chunk_seconds=2.0)


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_batched_by_length_equals_one_at_a_time(speech_folders, kind):
    signals = [_audio(s, seed=i) for i, s in enumerate((0.4, 0.9, 0.4, 0.61))]
    encoder = hf.HFSpeechEncoder(f"hf:{speech_folders[kind]}", batch_size=4)
    batched = encoder.encode_many(signals)
    for y, got in zip(signals, batched):
        np.testing.assert_allclose(got, encoder.encode(y), atol=1e-5)


def test_short_audio_is_padded_to_one_frame(speech_folders):
    encoder = hf.HFSpeechEncoder(f"hf:{speech_folders['wav2vec2']}")
    assert encoder.encode(np.zeros(100, dtype=np.float32)).shape == (1, 32)


def test_weights_hash_changes_when_the_folder_changes(tmp_path, speech_folders):
    import shutil

    folder = shutil.copytree(speech_folders["hubert"], tmp_path / "copy")
    before = hf.HFSpeechEncoder(f"hf:{folder}").settings
    assert before == hf.HFSpeechEncoder(f"hf:{speech_folders['hubert']}").settings  # the path is not the key
    torch.manual_seed(1)
    _speech_model("hubert").save_pretrained(folder)
    after = hf.HFSpeechEncoder(f"hf:{folder}").settings
    assert after["weights_sha256"] != before["weights_sha256"]


def test_missing_folder_is_one_clear_data_error(tmp_path):
    with pytest.raises(DataError, match="encoder folder not found") as caught:
        hf.HFSpeechEncoder(f"hf:{tmp_path / 'nowhere'}")
    assert str(tmp_path / "nowhere") in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(DataError, match="no config.json"):
        hf.HFWordEncoder(f"hf:{tmp_path}")


@pytest.mark.parametrize("spec, problem", [
    ("hf:", "needs a folder"),
    ("hf:/m#layer=x", "whole number"),
    ("hf:/m#layers=some", "'all' or 'last'"),
    ("hf:/m#depth=3", "unknown option"),
    ("hf:/m#layer=1,layers=all", "one option"),
    ("hf:${EMOFUSE_SURELY_UNSET_VAR}/m", "EMOFUSE_SURELY_UNSET_VAR is not set"),
    ("wav2vec2", "not an hf: feature"),
])
def test_bad_specs_are_config_errors(spec, problem):
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(")):
        hf.parse_spec(spec)


def test_variables_and_home_are_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("EMOFUSE_MODELS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hf.parse_spec("hf:${EMOFUSE_MODELS}/wavlm#layer=9").path == tmp_path / "wavlm"
    assert hf.parse_spec("hf:~/wavlm").path == tmp_path / "wavlm"
    assert hf.parse_spec("hf:~/wavlm#layer=9").layer == 9


def test_a_hub_cache_repo_folder_resolves_to_its_main_snapshot(tmp_path, speech_folders):
    import shutil

    repo = tmp_path / "models--org--tiny"
    shutil.copytree(speech_folders["wavlm"], repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert hf.resolve_folder(repo) == (repo / "snapshots" / "abc123").resolve()
    assert hf.HFSpeechEncoder(f"hf:{repo}").model_type == "wavlm"


def test_a_text_folder_is_not_a_speech_encoder(text_folders):
    with pytest.raises(ConfigError, match="not a speech encoder"):
        hf.HFSpeechEncoder(f"hf:{text_folders['bert']}")


def test_missing_transformers_names_the_extra(monkeypatch, speech_folders):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(EmofuseError, match=r'pip install "emofuse\[hf\]"'):
        hf.HFSpeechEncoder(f"hf:{speech_folders['wav2vec2']}").warm()


# ------------------------------------------------------------------------------ words


def _bert(folder):
    save_bert(folder)  # tests/hf_tiny.py, shared with the end-to-end tests


def _roberta(folder):
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 20, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    tokenizer = transformers.RobertaTokenizerFast(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)
    config = transformers.RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=66,
                                        pad_token_id=1)
    transformers.RobertaModel(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def text_folders(tmp_path_factory):
    torch.manual_seed(0)
    folders = {"bert": tmp_path_factory.mktemp("bert"), "roberta": tmp_path_factory.mktemp("roberta")}
    _bert(folders["bert"])
    _roberta(folders["roberta"])
    return folders


def _reference_words(folder, kind, words, layer):
    """Mean of each word's piece hidden states, computed with transformers directly."""
    extra = {"add_prefix_space": True} if kind == "roberta" else {}
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()
    encoded = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**encoded, output_hidden_states=True).hidden_states[layer][0].numpy()  # (L, 32)
    word_ids = encoded.word_ids(0)
    return np.stack([hidden[[i for i, w in enumerate(word_ids) if w == k]].mean(0) for k in range(len(words))])


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_word_vectors_equal_transformers_forward(text_folders, kind):
    encoder = hf.HFWordEncoder(f"hf:{text_folders[kind]}#layer=1")
    (vectors, oov), = encoder.encode([WORDS])
    assert vectors.shape == (len(WORDS), 32) and oov == 0
    np.testing.assert_allclose(vectors, _reference_words(text_folders[kind], kind, WORDS, 1), atol=1e-5)


def test_word_pieces_average_back_to_one_vector_per_word(text_folders):
    encoder = hf.HFWordEncoder(f"hf:{text_folders['bert']}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(text_folders["bert"], local_files_only=True)
    assert tokenizer.tokenize("unbelievable") == ["un", "##believ", "##able"]  # one word, three pieces
    (vectors, _), (short, _) = encoder.encode([WORDS, ["kids"]])
    assert vectors.shape == (len(WORDS), 32) and short.shape == (1, 32)


def test_text_layers_all_stack_every_hidden_state(text_folders):
    folder = text_folders["roberta"]
    (every, _), = hf.HFWordEncoder(f"hf:{folder}#layers=all").encode([WORDS])
    assert every.shape == (len(WORDS), 3 * 32)
    for layer in range(3):
        np.testing.assert_allclose(every.reshape(len(WORDS), 3, 32)[:, layer],
                                   _reference_words(folder, "roberta", WORDS, layer), atol=1e-5)


def test_long_sentences_are_encoded_in_windows(text_folders):
    encoder = hf.HFWordEncoder(f"hf:{text_folders['bert']}", max_pieces=8)  # 6 pieces besides [CLS] [SEP]
    sentence = WORDS * 3  # 30 words, 36 pieces
    (vectors, oov), = encoder.encode([sentence])
    assert vectors.shape == (30, 32) and oov == 0 and np.all(np.abs(vectors).sum(1) > 0)
    (first_window, _), = encoder.encode([sentence[:6]])  # one piece each: exactly the first window
    np.testing.assert_allclose(vectors[:5], first_window[:5], atol=1e-5)  # word 6 may be cut: encoded again


def test_empty_sentence_gives_no_vectors(text_folders):
    (vectors, oov), = hf.HFWordEncoder(f"hf:{text_folders['bert']}").encode([[]])
    assert vectors.shape == (0, 32) and oov == 0


def test_text_settings_carry_the_weights_hash_without_loading(text_folders):
    settings = hf.text_settings(f"hf:{text_folders['bert']}#layer=2")
    assert settings["layers"] == 2 and len(settings["weights_sha256"]) == 64 and settings["model_type"] == "bert"


# ------------------------------------------------------------------------ layer weights


def test_layer_weighted_sum_weights_sum_to_one_and_train():
    torch.manual_seed(0)
    module = LayerWeightedSum(3, layer_dim=4)
    x = torch.randn(2, 5, 12)  # (B, T, L * D)
    out = module(x)  # (B, T, 4)
    assert out.shape == (2, 5, 4)
    torch.testing.assert_close(out, x.view(2, 5, 3, 4).mean(2))  # equal weights at the start
    out.pow(2).sum().backward()
    with torch.no_grad():
        module.logits -= module.logits.grad
    weights = module.weights()
    assert torch.all(weights > 0) and weights.sum().item() == pytest.approx(1.0)
    assert not torch.allclose(weights, torch.full((3,), 1 / 3))


def test_layer_weighted_sum_refuses_the_wrong_layer_count():
    with pytest.raises(ValueError, match="expected 3 layers"):
        LayerWeightedSum(3)(torch.randn(2, 4, 8))


# ------------------------------------------------------------------------- start-up cost


def test_builtin_features_and_the_cli_do_not_import_transformers():
    code = ("import sys, emofuse.features.frames, emofuse.features.words, emofuse.features.hf, emofuse.cli; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers')))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


# ----------------------------------------------------------- where the toolkit resolves names


def test_frames_resolves_an_hf_speech_folder_to_a_20_ms_frame_feature(speech_folders, text_folders):
    from emofuse.features.frames import get_frame_feature, is_frame_feature

    spec = f"hf:{speech_folders['wavlm']}#layers=all"
    assert is_frame_feature(spec) and not is_frame_feature(f"hf:{text_folders['bert']}")
    feature = get_frame_feature(spec)
    assert feature.hop == pytest.approx(0.02) and feature.dim == 3 * 32 and feature.layer_axis == 3
    assert len(feature.settings["weights_sha256"]) == 64
    y = _audio(0.5)
    values = feature.extract(y)  # (T, 3 * 32)
    assert values.shape == (feature.num_frames(len(y)), 96)
    stacked = hf.HFSpeechEncoder(spec).encode(y)  # (T, 3, 32)
    np.testing.assert_allclose(values.reshape(-1, 3, 32), stacked, atol=1e-6)
    summed = LayerWeightedSum(3, layer_dim=32)(torch.from_numpy(values))  # (T, 32)
    assert summed.shape == (len(values), 32)


def test_words_resolves_an_hf_text_folder(text_folders, speech_folders):
    from emofuse.features.words import get_word_encoder, is_word_feature, word_encoder_settings

    spec = f"hf:{text_folders['roberta']}"
    assert is_word_feature(spec) and not is_word_feature(f"hf:{speech_folders['hubert']}")
    (vectors, oov), = get_word_encoder(spec).encode([WORDS])
    assert vectors.shape == (len(WORDS), 32) and oov == 0
    assert word_encoder_settings(spec)["name"] == "hf-roberta"


def test_an_hf_name_with_a_missing_folder_fails_where_names_are_resolved(tmp_path):
    from emofuse.features.frames import is_frame_feature

    with pytest.raises(DataError, match="encoder folder not found"):
        is_frame_feature(f"hf:{tmp_path / 'gone'}")
