"""hf: encoders downstream (issue 21, items 3 and 5): `emofuse train` on hf frames and words from
tiny random models saved in tmp_path, extracted, stored under the weights hash, loaded on their
own 20 ms grid, trained (H-MM-4 with a learned layer sum, FG_CME), exported and predicted; a
missing or changed encoder folder is one clear line naming it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from emofuse.errors import DataError

transformers = pytest.importorskip("transformers")

from hf_tiny import save_bert, save_wav2vec2  # noqa: E402 - after the importorskip

pytestmark = pytest.mark.usefixtures("one_thread")

SR = 16000
STATEMENT_1 = "Kids are talking by the door"
CLASSES = ["angry", "happy", "neutral", "sad"]


# ------------------------------------------------------------------- frames on a 20 ms grid


def test_words_map_to_the_right_20_ms_frames_in_a_batch():
    from emofuse.features.batch import UtteranceFeatures, collate

    item = UtteranceFeatures(id="u", acoustic=np.zeros((49, 4), np.float32), acoustic_hop=0.02,
                             word_times=np.array([[0.10, 0.20], [0.50, 0.53], [0.95, 1.2]], np.float32))
    batch = collate([item], [0])
    # 0.10-0.20 s: frames 5..9 of 20 ms (not 10..19 of the 10 ms grid); the last word is clamped.
    assert batch.word_frames[0].tolist() == [[5, 10], [25, 27], [47, 49]]


def test_the_stored_10_ms_speech_mask_moves_onto_the_20_ms_grid():
    from emofuse.features.store.load import regrid_mask

    mask = np.zeros(100, dtype=bool)  # 1 s on the 10 ms grid
    mask[21:40] = True  # speech from 0.21 s to 0.40 s
    on_20 = regrid_mask(mask, 0.02, 49)
    assert np.flatnonzero(on_20).tolist() == list(range(10, 20))  # frames covering 0.20..0.40 s
    assert regrid_mask(mask, 0.01, 120)[:100].tolist() == mask.tolist()
    assert not regrid_mask(mask, 0.01, 120)[100:].any()


# ------------------------------------------------------------- every model, the new sizes


def _encoder_batch():
    """Two utterances of 3 x 32-d stacked hidden states on 20 ms frames, 32-d word vectors."""
    from emofuse.features.batch import UtteranceFeatures, collate

    rng = np.random.default_rng(0)
    items = [UtteranceFeatures(id=str(i), acoustic=rng.standard_normal((n, 96)).astype(np.float32), acoustic_hop=0.02,
                               word_times=np.array([[0.1, 0.3], [0.3, 0.6], [0.6, n * 0.02]], np.float32),
                               word_vectors=rng.standard_normal((3, 32)).astype(np.float32), words=["a", "b", "c"],
                               speech_mask=np.ones(n, bool)) for i, n in enumerate((60, 45))]
    return collate(items, [0, 1], token_ids=[[1, 2, 3], [1, 2, 3]])


def _models():
    from emofuse.models.base import get_model, model_names

    return [n for n in model_names() if "acoustic" in get_model(n).needs
            and not get_model(n).fitted  # the linear probe: a logistic back-end, no network to train
            and n not in ("MV-frozen", "teacher-student", "teacher-student+attn")]  # these three need a teacher


@pytest.mark.parametrize("name", _models())
def test_every_model_reads_all_layers_of_encoder_frames_through_one_learned_sum(name):
    from emofuse.models.base import InputSpec, get_model, layer_weights_of

    settings = {"freq_bins": 32} if name.lower().startswith("can") else {}  # CAN: the encoder's dims as its "bins"
    if name.lower().startswith("nmt"):
        settings = {"frontend": "frames"}  # frames in place of the waveform CNN
    torch.manual_seed(0)
    model = get_model(name).build(InputSpec(num_classes=4, acoustic_dim=96, word_dim=32, vocab_size=10,
                                            acoustic_layers=3), **settings)
    out = model(_encoder_batch())
    assert out.logits.shape == (2, 4) and torch.isfinite(out.logits).all()
    assert layer_weights_of(model) == pytest.approx([1 / 3] * 3)
    out.logits.sum().backward()
    assert model.layer_sum.logits.grad is not None  # the layer weights train with the model


def test_nmt_forced_attention_on_frames_stays_inside_each_words_20_ms_frames():
    from emofuse.models.base import InputSpec, get_model

    batch = _encoder_batch()
    model = get_model("nmt-forced").build(InputSpec(num_classes=4, acoustic_dim=96, word_dim=32), frontend="frames")
    with torch.no_grad():
        alignment = model(batch).explain["alignment"]  # (B, W, T)
    spans = batch.word_frames
    for b in range(2):
        for w in range(3):
            inside = torch.zeros(alignment.shape[-1], dtype=torch.bool)
            inside[spans[b, w, 0]:spans[b, w, 1]] = True
            assert alignment[b, w, ~inside].sum() == 0 and alignment[b, w, inside].sum() == pytest.approx(1.0)
    assert model(batch).explain["alignment_hop"].tolist() == pytest.approx([0.02, 0.02])


# -------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    extra = tuple(STATEMENT_1.lower().split()) + ("dogs", "sitting")
    return {"speech": save_wav2vec2(root / "wav2vec2"), "text": save_bert(root / "bert", extra_words=extra)}


@pytest.fixture(scope="module")
def manifest(ravdess_root, tmp_path_factory):
    """16 RAVDESS files: 4 actors x 4 classes, statement 1, normal intensity, first repetition."""
    from emofuse.corpora import load_corpus

    corpus = load_corpus("ravdess", ravdess_root, "ravdess4")
    keep = [i for i, u in enumerate(corpus)
            if u.speaker in {"Actor_01", "Actor_02", "Actor_03", "Actor_04"} and Path(u.audio).stem.split("-")[3:6] == ["01", "01", "01"]]
    path = tmp_path_factory.mktemp("corpus") / "slice.jsonl"
    corpus.subset(keep).write(path)
    return path, corpus[keep[0]].audio


def _train(tmp: Path, manifest: tuple, acoustic: str, words: str, model: dict, store: Path) -> Path:
    from emofuse.cli import app

    config = tmp / "ravdess4" / f"{model['name']}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({
        "data": {"manifest": str(manifest[0]), "label_set": "ravdess4", "store": str(store),
                 "acoustic": acoustic, "words": words, "align": "forced"},
        "model": model,
        "optim": {"lr": 1e-3},
        "trainer": {"max_epochs": 1, "batch_size": 8, "accelerator": "cpu", "progress": False, "threads": 1},
        "protocol": {"name": "speaker-kfold", "k": 2, "val_speakers": 1},
        "run_dir": str(tmp / "run"),
    }))
    result = CliRunner().invoke(app, ["train", str(config), "fold=0"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return tmp / "run"


def _export_and_predict(run: Path, out: Path, audio: str) -> Path:
    from emofuse.cli import app
    from emofuse.inference.predictor import Predictor

    result = CliRunner().invoke(app, ["export", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    prediction = Predictor(out, warm=False).predict_file(audio, STATEMENT_1)
    assert prediction.label in CLASSES
    assert len(prediction.words) == len(STATEMENT_1.split())
    return out


@pytest.mark.data
def test_h_mm_4_trains_on_all_layers_of_hf_frames_and_hf_words_then_predicts(encoders, manifest, tmp_path):
    speech, text = encoders["speech"], encoders["text"]
    store = tmp_path / "store"
    run = _train(tmp_path, manifest, f"hf:{speech}#layers=all", f"hf:{text}",
                 {"name": "H-MM-4", "hidden": 8, "layers": 1, "word_layers": 1, "dropout": 0.0}, store)
    fold = json.loads((run / "fold-0" / "metrics.json").read_text())
    shares = fold["layer_weights"]  # the 3 hidden states of the 2-layer encoder, learned
    assert len(shares) == 3 and sum(shares) == pytest.approx(1.0, abs=1e-5)
    assert max(shares) - min(shares) > 1e-5  # moved from the equal start (1/3 each) by training
    assert "Encoder layer weights" in (run / "report.md").read_text()
    # The store keys the frames by the weights hash and keeps them on the 20 ms grid.
    (frames_dir,) = (store / "frames").iterdir()
    settings = json.loads((frames_dir / "settings.json").read_text())
    assert settings["hop"] == 0.02 and len(settings["weights_sha256"]) == 64

    audio = manifest[1]
    model_dir = _export_and_predict(run, tmp_path / "model", audio)
    info = json.loads((model_dir / "model.json").read_text())
    assert info["spec"]["acoustic_layers"] == 3 and info["hop"] == 0.02
    assert info["encoders"]["acoustic"]["folder"] == str(speech.resolve())
    assert info["encoders"]["words"]["weights_sha256"] == _weights_hash(text)


def _weights_hash(folder: Path) -> str:
    from emofuse.features.hf import weights_hash

    return weights_hash(folder.resolve())


@pytest.mark.data
def test_fgcme_trains_on_hf_frames_and_words_then_predicts(encoders, manifest, tmp_path):
    run = _train(tmp_path, manifest, f"hf:{encoders['speech']}#layer=1", f"hf:{encoders['text']}",
                 {"name": "fgcme", "conv_filters": [8, 8, 8], "semantic_size": 8, "lstm_hidden": 8,
                  "fcn_hidden": 8}, tmp_path / "store")
    audio = manifest[1]
    _export_and_predict(run, tmp_path / "model", audio)


@pytest.mark.data
def test_multi_view_on_all_layers_exports_its_acoustic_view_with_the_learned_layer_sum(encoders, manifest, tmp_path):
    from emofuse.cli import app
    from emofuse.inference.predictor import Predictor
    from emofuse.models.base import layer_weights_of
    from emofuse.models.modeldir import load_model_dir

    run = _train(tmp_path, manifest, f"hf:{encoders['speech']}#layers=all", f"hf:{encoders['text']}",
                 {"name": "MV-B-ACO-1+H-MM-4", "hidden": 8, "layers": 1, "dropout": 0.0,
                  "view_m_settings": {"word_layers": 1}}, tmp_path / "store")
    shares = json.loads((run / "fold-0" / "metrics.json").read_text())["layer_weights"]
    assert len(shares) == 3 and max(shares) - min(shares) > 1e-5
    model_dir = tmp_path / "model"
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(model_dir)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert Predictor(model_dir, warm=False).predict_file(manifest[1]).label in CLASSES  # no transcript needed
    info = json.loads((model_dir / "model.json").read_text())
    assert info["name"] == "B-ACO-1" and info["needs"] == ["acoustic"]  # the acoustic view alone
    assert info["spec"]["acoustic_layers"] == 3 and info["encoders"]["acoustic"]["weights_sha256"]
    assert "words" not in info["encoders"]  # the deployed view reads no words
    assert layer_weights_of(load_model_dir(model_dir).model) == pytest.approx(shares, abs=1e-5)


@pytest.mark.data
def test_b_lex_fine_tunes_an_hf_text_encoder_in_train_and_exports_it(encoders, manifest, tmp_path):
    from safetensors.torch import load_file

    text = encoders["text"]
    run = _train(tmp_path, manifest, None, f"hf:{text}",
                 {"name": "B-LEX", "hidden": 8, "layers": 1, "dropout": 0.0, "finetune_words": True,
                  "encoder_lr": 1e-3}, tmp_path / "store")
    model_dir = _export_and_predict(run, tmp_path / "model", manifest[1])
    info = json.loads((model_dir / "model.json").read_text())
    assert info["spec"]["word_encoder"] == f"hf:{text}" and info["encoders"]["words"]["weights_sha256"]
    exported = load_file(model_dir / "model.safetensors")["lexical.vectors.encoder.embeddings.word_embeddings.weight"]
    start = load_file(text / "model.safetensors")
    start = next(v for k, v in start.items() if k.endswith("embeddings.word_embeddings.weight"))
    assert exported.shape == start.shape and not torch.equal(exported, start)  # trained with the model


# --------------------------------------------------------------- device and batched extraction


def _clips(folder: Path, seconds=(0.4, 0.9, 0.4, 0.61)):
    """A corpus of tiny tones of different lengths."""
    import soundfile

    from emofuse.corpora.base import Corpus, Utterance

    utterances = []
    for i, length in enumerate(seconds):
        t = np.arange(int(length * SR)) / SR
        clip = folder / f"clip{i}.wav"
        soundfile.write(clip, (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32), SR)
        utterances.append(Utterance(id=f"u{i}", audio=str(clip), speaker="s", label="neutral",
                                    original_label="neutral", transcript="kids are talking"))
    return Corpus(utterances, name="clips")


def test_each_workers_chunk_is_encoded_in_one_call_equal_to_one_at_a_time(encoders, tmp_path, monkeypatch):
    """Stated tolerance: batched by length (padded with an attention mask) against one
    utterance alone, 1e-5."""
    from emofuse.features import hf
    from emofuse.features.audio import load_audio
    from emofuse.features.store import FeatureStore

    calls = []
    encode_many = hf.HFSpeechEncoder.encode_many

    def counted(self, signals):
        calls.append(len(signals))
        return encode_many(self, signals)

    monkeypatch.setattr(hf.HFSpeechEncoder, "encode_many", counted)
    corpus = _clips(tmp_path, seconds=(0.4, 0.9, 0.4, 0.61, 0.3, 0.5, 0.7, 0.45))
    name = f"hf:{encoders['speech']}#layers=all"
    store = FeatureStore(tmp_path / "store")
    report = store.extract(corpus, [name], align=None, workers=1, progress=False, chunk_size=2, device="cpu")
    assert report.computed == 8 and not report.failures
    assert calls == [2, 2, 2, 2]  # each chunk of 2 at once, not one call per utterance
    alone = hf.speech_frame_feature(name, device="cpu")
    for utt, item in zip(corpus, store.load(corpus, acoustic=name, align=None)):
        expected = alone.extract(load_audio(utt, SR))  # (T, 3 * 32)
        assert item.acoustic.shape == expected.shape
        np.testing.assert_allclose(item.acoustic, expected, atol=1e-5)
        assert item.acoustic_centre_offset == pytest.approx(0.0025)  # wav2vec2: the 25 ms field starts on the grid


def test_a_failed_batch_is_encoded_one_at_a_time_and_blames_only_its_utterance(encoders, tmp_path, monkeypatch):
    from emofuse.features import hf
    from emofuse.features.store import FeatureStore

    def broken(self, signals):
        if len(signals) > 1:
            raise RuntimeError("CUDA out of memory")  # what a too-large batch on a GPU says
        if len(signals[0]) < 0.35 * SR:
            raise RuntimeError("bad clip")
        return encode_many(self, signals)

    encode_many = hf.HFSpeechEncoder.encode_many
    monkeypatch.setattr(hf.HFSpeechEncoder, "encode_many", broken)
    corpus = _clips(tmp_path, seconds=(0.4, 0.3, 0.5, 0.6, 0.45, 0.55, 0.7, 0.8))  # chunks of 2
    name = f"hf:{encoders['speech']}"
    report = FeatureStore(tmp_path / "store").extract(corpus, [name], align=None, progress=False, chunk_size=2,
                                                      device="cpu")
    assert report.failed_ids == ["u1"] and "bad clip" in report.failures[0].reason
    items = FeatureStore(tmp_path / "store").load(corpus, acoustic=name, align=None, missing="skip")
    assert [it.id for it in items] == ["u0", *(f"u{i}" for i in range(2, 8))]


def test_the_device_reaches_the_speech_and_text_encoders(encoders, tmp_path, monkeypatch):
    """No GPU here: the plumbing is tested by recording the device each hf encoder is asked for."""
    from emofuse.features import hf
    from emofuse.features.store import FeatureStore

    asked = []

    def resolve(device):
        asked.append(device)
        return "cpu"

    monkeypatch.setattr(hf, "resolve_device", resolve)
    corpus = _clips(tmp_path, seconds=(0.5,))
    store = FeatureStore(tmp_path / "store")
    report = store.extract(corpus, [f"hf:{encoders['speech']}", f"hf:{encoders['text']}"], align="proportional",
                           workers=1, progress=False, device="cuda:1")
    assert not report.failures
    assert asked.count("cuda:1") == 3  # checked once up front, then the speech and the text encoder


def test_cuda_without_a_gpu_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from emofuse.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    manifest = tmp_path / "clips.jsonl"
    _clips(tmp_path, seconds=(0.3,)).write(manifest)
    for device, problem in (("cuda", "no CUDA device"), ("gpu", "unknown device 'gpu'")):
        monkeypatch.setattr(sys, "argv", ["emofuse", "extract", str(manifest), "--features", "fbank40", "--align",
                                          "none", "--device", device, "--out", str(tmp_path / "store")])
        with pytest.raises(SystemExit) as stop:
            main()
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert stop.value.code != 0 and len(err) == 1 and problem in err[0]
    assert not (tmp_path / "store" / "frames").exists()  # refused before any work


def test_train_passes_data_device_to_extraction(tmp_path):
    from emofuse.errors import ConfigError
    from emofuse.training.config import load_config
    from emofuse.training.corpus import load_features

    raw = {"data": {"manifest": str(tmp_path / "clips.jsonl"), "acoustic": "fbank40", "align": "none",
                    "device": "cuda"}, "model": {"name": "B-ACO-1"}}
    with pytest.raises(ConfigError, match="data.device='tpu'"):
        load_config(None, ["data.device=tpu"], raw=raw)
    cfg = load_config(None, raw=raw)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    corpus = _clips(tmp_path, seconds=(0.3,))
    with pytest.raises(ConfigError, match="no CUDA device"):
        load_features(cfg, corpus, np.zeros(1, int), tmp_path / "store", log=lambda _: None, progress=False)


# ----------------------------------------------------------------- missing or changed folders


@pytest.fixture
def exported(encoders, tmp_path):
    """A model directory over a copy of the tiny encoder (so the test may move or change it)."""
    from emofuse.models.base import InputSpec, get_model
    from emofuse.models.modeldir import ModelInfo, write_model_dir

    speech = shutil.copytree(encoders["speech"], tmp_path / "encoder")
    spec = {"num_classes": 4, "acoustic_dim": 32}
    model = get_model("B-ACO-1").build(InputSpec(**spec), hidden=4, layers=1)
    info = ModelInfo(name="B-ACO-1", settings={"hidden": 4, "layers": 1}, spec=spec, needs=["acoustic"],
                     classes=CLASSES, acoustic=f"hf:{speech}", hop=0.02)
    return write_model_dir(tmp_path / "model", model, info), speech


def test_a_missing_encoder_folder_is_one_line_naming_it(exported, monkeypatch, capsys, tmp_path):
    from emofuse.cli import main
    from emofuse.models.modeldir import load_model_dir

    model_dir, speech = exported
    load_model_dir(model_dir)  # fine while the folder is there
    shutil.rmtree(speech)
    with pytest.raises(DataError, match="acoustic encoder folder not found") as caught:
        load_model_dir(model_dir)
    assert str(speech) in str(caught.value)
    clip = tmp_path / "clip.wav"
    import soundfile

    soundfile.write(clip, np.zeros(SR, np.float32), SR)
    monkeypatch.setattr(sys, "argv", ["emofuse", "predict", str(model_dir), str(clip)])
    with pytest.raises(SystemExit) as stop:
        main()
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert stop.value.code != 0 and len(err) == 1 and str(speech) in err[0]


def test_a_changed_encoder_folder_is_refused_by_the_model(exported):
    from emofuse.models.modeldir import load_model_dir

    model_dir, speech = exported
    save_wav2vec2(speech, seed=1)  # other weights in the same folder
    with pytest.raises(DataError, match="weights changed since the model was trained"):
        load_model_dir(model_dir)


def test_a_changed_encoder_folder_is_recomputed_by_the_store(encoders, tmp_path):
    from emofuse.corpora.base import Corpus, Utterance
    from emofuse.features.store import FeatureStore
    import soundfile

    speech = shutil.copytree(encoders["speech"], tmp_path / "encoder")
    clip = tmp_path / "clip.wav"
    t = np.arange(SR // 2) / SR
    soundfile.write(clip, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR)
    corpus = Corpus([Utterance(id="u1", audio=str(clip), speaker="s", label="neutral", original_label="neutral")], name="one")
    store = FeatureStore(tmp_path / "store")
    name = f"hf:{speech}"
    store.extract(corpus, [name], align=None, workers=1, progress=False)
    before = store.load(corpus, acoustic=name, align=None)[0].acoustic  # (24, 32)
    save_wav2vec2(speech, seed=1)
    with pytest.raises(DataError, match="no stored"):  # a new key: the old entry is not read
        store.load(corpus, acoustic=name, align=None)
    store.extract(corpus, [name], align=None, workers=1, progress=False)
    after = store.load(corpus, acoustic=name, align=None)[0].acoustic
    assert before.shape == after.shape == (24, 32) and not np.allclose(before, after)
    assert len(list((tmp_path / "store" / "frames").iterdir())) == 2
