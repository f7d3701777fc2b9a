"""Whisper through faster-whisper / CTranslate2, offline: the packaged tiny.en as a recogniser
(`align.whisper`: words, word times, silence, loops, weights checked by sha256) and as a frame
feature (`features.whisper`: the encoder's own output, chunks), and how the recogniser keys the
feature store and is spelled on the command line (`align.check_asr`, `with_language`).

The model is loaded once per module (`asr`); tests that read RAVDESS skip without the data.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import tone

from emofuse.align import whisper
from emofuse.errors import ConfigError, DataError

SR = 16000
DOGS = ("Actor_01/03-01-05-01-02-01-01.flac", ["dogs", "are", "sitting", "by", "the", "door"])
KIDS = ("Actor_01/03-01-01-01-01-01-01.flac", ["kids", "are", "talking", "by", "the", "door"])
SPAN_TOLERANCE = 0.3  # seconds a word may reach outside the energy VAD's speech span


@pytest.fixture(scope="module")
def asr():
    """The packaged tiny.en, loaded (and its sha256 checked) once for the module."""
    recogniser = whisper.WhisperASR()
    recogniser.model  # noqa: B018 - load now, not inside the first test's timing
    return recogniser


def ravdess_clip(root: Path, name: str) -> np.ndarray:
    from emofuse.features.audio import load_audio

    return load_audio(root / name, SR)


def speech_span(audio: np.ndarray) -> tuple[float, float]:
    from emofuse.align.vad import energy_speech_mask, speech_span

    return speech_span(energy_speech_mask(audio, SR))


def white_noise(seconds: float, dbfs: float) -> np.ndarray:
    rms = 10 ** (dbfs / 20)
    return (rms * np.random.default_rng(0).standard_normal(int(seconds * SR))).astype(np.float32)


# ------------------------------------------------------------------------ recognition


@pytest.mark.data
@pytest.mark.parametrize("name, words", [DOGS, KIDS], ids=["dogs", "kids"])
def test_packaged_model_writes_the_statement_a_ravdess_actor_said(asr, ravdess_root, name, words):
    hyp = asr.transcribe(ravdess_clip(ravdess_root, name))

    assert [w.text for w in hyp.words] == words
    assert hyp.warnings == []


@pytest.mark.data
@pytest.mark.parametrize("name, words", [DOGS, KIDS], ids=["dogs", "kids"])
def test_word_times_increase_within_the_clip_and_the_speech_span(asr, ravdess_root, name, words):
    """Within the energy VAD's speech span +- SPAN_TOLERANCE (0.3 s). Whisper's word times
    are coarse: decoding whole clips, tiny.en's first word started at 0.0 s on 15 of 40
    RAVDESS clips (actors 1-4); decoding Silero's speech span only, on none of them."""
    audio = ravdess_clip(ravdess_root, name)
    first, last = speech_span(audio)
    times = np.array([[w.start, w.end] for w in asr.transcribe(audio).words])  # (W, 2)

    assert len(times) == len(words)
    assert np.all(times >= 0.0) and np.all(times <= len(audio) / SR)
    assert np.all(times[:, 1] >= times[:, 0])
    assert np.all(times[1:, 0] >= times[:-1, 1] - 1e-9)  # each word starts where the last one ended, or later
    assert times[0, 0] >= first - SPAN_TOLERANCE
    assert times[-1, 1] <= last + SPAN_TOLERANCE


# Clips where, decoded whole, the last word was put with no length at the clip's end, long after
# the speech: 'door' at 3.58-3.58 s, 3.80-3.80 s and 3.74-3.74 s when speech ends near 2.8 s.
PINNED_AT_THE_END = ["Actor_02/03-01-01-01-02-01-02.flac", "Actor_02/03-01-02-01-02-01-02.flac",
                     "Actor_03/03-01-03-01-01-01-03.flac"]


@pytest.mark.data
def test_the_last_word_ends_with_the_speech_not_at_the_end_of_the_clip(asr, ravdess_root):
    """Three clips on which decoding the whole clip (silence included) pinned "door", zero-length,
    to the clip's end; decoding only Silero's speech span +- SPAN_PAD places it on the speech
    (on 40 RAVDESS clips: 9 late last words and 22 early first words before, 0 and 0 after)."""
    late = []
    for name in PINNED_AT_THE_END:
        audio = ravdess_clip(ravdess_root, name)
        last_word = asr.transcribe(audio).words[-1]
        if last_word.end > speech_span(audio)[1] + SPAN_TOLERANCE:
            late.append((name, last_word))

    assert late == []


@pytest.mark.parametrize("audio", [np.zeros(2 * SR, np.float32), white_noise(2.0, -60.0)],
                         ids=["digital-silence", "white-noise-at-minus-60-dBFS"])
def test_silence_and_faint_noise_give_no_words(asr, audio):
    hyp = asr.transcribe(audio)

    assert hyp.words == [] and hyp.text == ""


@pytest.mark.parametrize("audio, why", [
    (np.zeros(2 * SR, np.float32), "asr: no speech in the audio"),  # the energy gate, before any recogniser
    (white_noise(2.0, -60.0), "asr: whisper tiny.en heard no speech"),  # loud enough for the gate, not for Silero
], ids=["digital-silence", "white-noise-at-minus-60-dBFS"])
def test_asr_alignment_of_silence_has_no_words_and_says_why(asr, audio, why):
    from emofuse.align import align_utterance
    from emofuse.corpora.base import Utterance

    utt = Utterance(id="quiet", audio="quiet.wav", speaker="s", label="x", original_label="x", transcript="")
    alignment = align_utterance(utt, audio, mode="asr", recogniser=asr)

    assert alignment.words == [] and alignment.source == "none"
    assert alignment.fallbacks == [why]


def test_a_word_or_phrase_said_more_than_three_times_in_a_row_is_a_repetition():
    door = ["by", "the", "door"]

    assert whisper.repetition(["the"] * 4) == ("the", 4)
    assert whisper.repetition(["kids", "are"] + door * 5 + ["now"]) == ("by the door", 5)
    assert whisper.repetition(["the"] * 3) is None  # REPEAT_LIMIT times is still speech
    assert whisper.repetition(door * 3) is None
    assert whisper.repetition(["a", "b", "c", "d", "e"] * 4) is None  # phrases of up to four words
    assert whisper.repetition(["kids", "are", "talking", "by", "the", "door"]) is None


def fake_segments(words: list[str], avg_logprob: float = -0.3):
    """What `WhisperModel.generate_segments` yields, for a hypothesis of `words` 0.2 s each."""
    from faster_whisper.transcribe import Segment, Word

    timed = [Word(start=0.2 * i, end=0.2 * (i + 1), word=" " + w, probability=0.9) for i, w in enumerate(words)]

    def generate_segments(*args, **kwargs):
        yield Segment(id=1, seek=0, start=0.0, end=0.2 * len(words), text=" " + " ".join(words),
                      tokens=list(range(2 * len(words))), avg_logprob=avg_logprob, compression_ratio=1.0,
                      no_speech_prob=0.0, words=timed, temperature=0.0)

    return generate_segments


def test_transcribe_flags_a_repetition_loop_in_the_hypothesis(asr, monkeypatch):
    """The decoder's segments are faked (Whisper does not loop on demand); all else is real:
    the mel, the encoder window and the words read off the segments. No VAD: the audio is a tone."""
    monkeypatch.setattr(asr.model, "generate_segments", fake_segments(["kids", "are"] + ["by", "the", "door"] * 4))
    hyp = whisper.WhisperASR(vad=False).transcribe(tone(3.0))

    assert len(hyp.words) == 14
    assert len(hyp.warnings) == 1
    assert "repeated 'by the door' 4 times in a row" in hyp.warnings[0]


def test_transcribe_flags_an_unsure_hypothesis(asr, monkeypatch):
    """Faked segments as above, with an average log-probability under MIN_AVG_LOGPROB (-1)."""
    monkeypatch.setattr(asr.model, "generate_segments", fake_segments(["kids", "are", "talking"], avg_logprob=-1.4))
    hyp = whisper.WhisperASR(vad=False).transcribe(tone(3.0))

    assert hyp.avg_logprob == pytest.approx(-1.4)
    assert len(hyp.warnings) == 1 and "unsure" in hyp.warnings[0] and "-1.40" in hyp.warnings[0]


def test_an_english_only_model_refuses_another_language(asr):
    with pytest.raises(ConfigError, match="English-only"):
        whisper.WhisperASR("whisper#language=de", vad=False).transcribe(tone(1.0))


# ------------------------------------------------------------------------ the weights


@pytest.fixture(scope="module")
def tampered_copy(tmp_path_factory) -> Path:
    """The packaged folder copied, with the last byte of model.bin flipped."""
    copy = tmp_path_factory.mktemp("whisper") / "tiny.en"
    shutil.copytree(whisper._packaged_folder(), copy)
    with open(copy / "model.bin", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    return copy


def test_a_changed_model_bin_is_refused_where_its_sha256_was_recorded(tampered_copy):
    spec = f"whisper:{tampered_copy}"
    digest = whisper.check_weights(spec)  # a folder has no pinned hash of its own

    assert digest != whisper.PACKAGED_SHA256
    with pytest.raises(DataError) as refused:
        whisper.check_weights(spec, expected=whisper.PACKAGED_SHA256)
    assert refused.value.path == str(tampered_copy / "model.bin")
    assert "sha256" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("use", [
    lambda: whisper.load_model("whisper"),
    lambda: whisper.check_weights("whisper#language=en"),  # options do not skip the pinned hash
    lambda: whisper.WhisperASR(vad=False).transcribe(tone(1.0)),
], ids=["load_model", "check_weights-with-options", "transcribe"])
def test_a_changed_packaged_model_is_refused_before_it_is_loaded(tampered_copy, monkeypatch, use):
    loaded = []
    monkeypatch.setattr(whisper, "_packaged_folder", lambda: tampered_copy)
    monkeypatch.setattr(whisper, "_load", lambda *args: loaded.append(args))

    with pytest.raises(DataError) as refused:
        use()
    assert refused.value.path == str(tampered_copy / "model.bin")
    assert f"not that of the packaged Whisper {whisper.PACKAGED_NAME}" in str(refused.value)
    assert "sha256" in str(refused.value) and "\n" not in str(refused.value)
    assert loaded == []


# ------------------------------------------------------------------------ encoder frames


def test_pad30_frames_are_faster_whispers_own_encoding_of_the_clip(asr):
    """faster-whisper's pieces: its feature extractor, the content frames `generate_segments`
    reads (all but the last), padded to 30 s by its `pad_or_trim`, through `WhisperModel.encode`."""
    from faster_whisper.audio import pad_or_trim

    from emofuse.features.whisper import WhisperEncoder

    audio = tone(3.31)  # 331 mel frames: odd
    features = asr.model.feature_extractor(audio)
    own = np.asarray(asr.model.encode(pad_or_trim(features[:, :-1])))[0]  # (1500, 384)
    frames = WhisperEncoder("whisper#pad=30").encode(audio)  # (T, 384)

    assert frames.shape == (math.ceil(331 / 2), 384)
    np.testing.assert_allclose(frames, own[: len(frames)], rtol=0, atol=1e-5)


def test_clip_length_frames_are_the_encoder_over_the_clips_even_length_mel(asr):
    import ctranslate2

    from emofuse.features.whisper import WhisperEncoder

    audio = tone(3.31)
    mel = asr.model.feature_extractor(audio)[:, :331]
    even = np.concatenate([mel, np.zeros((mel.shape[0], 1), np.float32)], axis=1)  # (80, 332)
    own = np.asarray(asr.model.model.encode(ctranslate2.StorageView.from_array(even[None])))[0]
    frames = WhisperEncoder("whisper").encode(audio)

    assert frames.shape == own.shape == (166, 384)
    np.testing.assert_allclose(frames, own, rtol=0, atol=1e-5)


def test_whisper_frames_are_20_ms_apart_and_centred_10_ms_early(asr):
    from emofuse.features.whisper import WhisperFrameFeature

    feature = WhisperFrameFeature("whisper")

    assert (feature.dim, feature.hop, feature.centre_offset) == (384, 0.02, -0.01)
    assert feature.num_frames(len(tone(3.31))) == 166


@pytest.fixture(scope="module")
def twenty_seconds(ravdess_root) -> np.ndarray:
    """20 s of speech: six RAVDESS clips of actor 1 end to end."""
    names = [f"Actor_01/03-01-{e}-01-{s}-01-01.flac" for e in ("01", "02", "03") for s in ("01", "02")]
    return np.concatenate([ravdess_clip(ravdess_root, name) for name in names])[: 20 * SR]


def relative_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


@pytest.mark.data
def test_chunked_frames_stay_within_chunk_tolerance_of_unchunked(asr, twenty_seconds):
    """Measured: 0.60 (0.10-0.14 in the first chunk, 0.75-0.88 in the later ones, which the
    encoder sees at other positions in its window); CHUNK_TOLERANCE is 0.65."""
    from emofuse.features.whisper import CHUNK_TOLERANCE, WhisperEncoder

    whole = WhisperEncoder("whisper").encode(twenty_seconds)  # one chunk: 1000 frames
    chunked = WhisperEncoder("whisper", chunk_seconds=10, overlap_seconds=2).encode(twenty_seconds)

    assert chunked.shape == whole.shape == (1000, 384)
    assert relative_rms(chunked, whole) < CHUNK_TOLERANCE


@pytest.mark.data
def test_each_chunk_gives_the_frames_of_its_own_stretch_of_the_recording(asr, twenty_seconds):
    """10 s chunks overlapping by 2 s over one log-mel of the whole recording (2000 mel frames):
    frames 0-449 are the first chunk's (mel 0-999) own frames 0-449, frames 850-999 the last
    chunk's (mel 1600-1999) own frames 50-199."""
    from emofuse.features.whisper import WhisperEncoder

    mel = whisper.log_mel(asr.model, twenty_seconds)  # (80, 2000)
    chunked = WhisperEncoder("whisper", chunk_seconds=10, overlap_seconds=2).encode(twenty_seconds)  # (1000, 384)
    first = np.asarray(whisper.encode_window(asr.model, mel[:, :1000], 1000))[0]  # (500, 384)
    last = np.asarray(whisper.encode_window(asr.model, mel[:, 1600:], 400))[0]  # (200, 384)

    np.testing.assert_allclose(chunked[:450], first[:450], rtol=0, atol=1e-5)
    np.testing.assert_allclose(chunked[850:], last[50:], rtol=0, atol=1e-5)
    assert not np.allclose(chunked[450:500], first[450:], atol=1e-2)  # the overlap's second half: the next chunk's


# ------------------------------------------------------------------------ store keys and spelling


def test_store_key_of_recognised_words_names_the_recogniser(tmp_path):
    from emofuse.features.store import FeatureStore

    by_whisper = FeatureStore(tmp_path, asr="whisper")
    by_sphinx = FeatureStore(tmp_path, asr="sphinx")

    for mode in ("asr", "forced"):  # forced alignment falls back to the recogniser
        assert by_whisper.align_settings(mode) != by_sphinx.align_settings(mode)
        assert by_whisper.align_dir(mode) != by_sphinx.align_dir(mode)
    assert by_whisper.align_settings("asr")["asr"]["weights_sha256"] == whisper.PACKAGED_SHA256
    assert by_whisper.align_dir("proportional") == by_sphinx.align_dir("proportional")


def test_sphinx_store_keeps_the_pocketsphinx_only_key(tmp_path):
    from emofuse.align.sphinx import Sphinx
    from emofuse.align.vad import VAD_SETTINGS
    from emofuse.features.store import FeatureStore

    store = FeatureStore(tmp_path, asr="sphinx")

    for mode in ("asr", "forced"):
        assert store.align_settings(mode) == {"mode": mode, "decoder": Sphinx.settings(), "vad": VAD_SETTINGS}


@pytest.mark.parametrize("spec", ["vosk", "whisper-large", "whisper#lang=en", "whisper#language=e1"])
def test_an_unknown_recogniser_is_refused_in_one_line(spec):
    from emofuse.align import check_asr

    with pytest.raises(ConfigError) as refused:
        check_asr(spec)
    assert repr(spec) in str(refused.value) and "\n" not in str(refused.value)


def test_language_is_for_whisper_only_and_given_once():
    from emofuse.align import check_asr, with_language

    assert check_asr(None) == "whisper"
    assert with_language(None, None) == "whisper"
    assert with_language("whisper", "de") == "whisper#language=de"
    with pytest.raises(ConfigError, match="^--language applies to Whisper only") as refused:
        with_language("sphinx", "de")
    assert "\n" not in str(refused.value)
    with pytest.raises(ConfigError, match="give the language in one place"):
        with_language("whisper#language=en", "de")
