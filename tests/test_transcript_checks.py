"""A given transcript is checked before it is believed: one longer than its audio could hold is
refused at once (aligning it would take a worker for minutes), one the recogniser does not hear
is answered with a warning quoting what it heard, one without a readable word falls back to the
recogniser's words and says so. The RAVDESS statements themselves pass without a warning."""

from __future__ import annotations

import numpy as np
import pytest

from emofuse.inference.predictor import MAX_WORD_CHARS, TranscriptTooLong, check_transcript_size
from emofuse.serving.app import http_status
from helpers import STATEMENT_1, STATEMENT_2, ravdess_files, registry_model_dir

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_transcript_is_bounded_by_the_length_of_its_audio():
    check_transcript_size(STATEMENT_1, 3.0, "clip.wav")  # 6 words in 3 s
    check_transcript_size("word " * 40, 3.0, "clip.wav")  # 10 a second + 10
    with pytest.raises(TranscriptTooLong, match="41 words: more than 3.0 s"):
        check_transcript_size("word " * 41, 3.0, "clip.wav")
    with pytest.raises(TranscriptTooLong, match="a word of 51 characters"):
        check_transcript_size("a" * (MAX_WORD_CHARS + 1), 3.0, "clip.wav")
    with pytest.raises(TranscriptTooLong, match="300000 characters"):  # refused before it is split
        check_transcript_size("banana" * 50_000, 3.0, "clip.wav")


def test_the_refusal_names_the_file_and_is_a_422():
    with pytest.raises(TranscriptTooLong) as info:
        check_transcript_size("x " * 1000, 1.0, "meeting.wav")
    assert str(info.value).startswith("meeting.wav: ") and http_status(info.value) == 422


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from emofuse.inference.predictor import Predictor

    return Predictor(registry_model_dir(tmp_path_factory.mktemp("hmm4") / "model", "H-MM-4", word_layers=1))


@pytest.fixture(scope="module")
def sad_clip(ravdess_root):
    clips = [p for p in ravdess_files(ravdess_root, actors=[3], statement="02") if p.stem.split("-")[2] == "04"]
    if not clips:
        pytest.skip(f"RAVDESS under {ravdess_root} lacks Actor_03's sad statement-2 clip")
    return clips[0]


@pytest.mark.data
def test_the_true_statement_passes_without_a_warning(predictor, sad_clip):
    prediction = predictor.predict_file(sad_clip, transcript=STATEMENT_2)
    assert prediction.warnings == [] and prediction.align_source == "forced"


@pytest.mark.data
@pytest.mark.parametrize("transcript", ["I am so happy today this is wonderful", "banana",
                                        "Dogs are sitting by the window sill now"])
def test_a_fluent_transcript_of_other_words_is_answered_with_a_warning(predictor, sad_clip, transcript):
    from emofuse.inference.predictor import TranscriptMismatch

    try:
        prediction = predictor.predict_file(sad_clip, transcript=transcript)
    except TranscriptMismatch:  # forced alignment could not fit it at all: refused, also fine
        return
    assert any("likely not what was said" in w and "dogs are sitting by the door" in w
               for w in prediction.warnings), prediction.warnings


@pytest.mark.data
def test_the_other_statement_two_words_away_passes_the_check(predictor, sad_clip):
    """WER 2/6 against Whisper's words, under TRANSCRIPT_WER_LIMIT: the check is for transcripts
    that are far from the audio, not near misses (a limit low enough for those false-alarms on
    4.8 % of true RAVDESS transcripts)."""
    prediction = predictor.predict_file(sad_clip, transcript=STATEMENT_1)
    assert not any("likely not what was said" in w for w in prediction.warnings)


@pytest.mark.data
def test_trust_transcript_skips_the_check(tmp_path, sad_clip):
    from emofuse.inference.predictor import Predictor

    trusting = Predictor(registry_model_dir(tmp_path / "hmm4", "H-MM-4", word_layers=1), check_transcript=False)
    prediction = trusting.predict_file(sad_clip, transcript="banana")
    assert not any("likely not what was said" in w for w in prediction.warnings)


@pytest.mark.data
@pytest.mark.parametrize("transcript", ["?!...", "你好世界 😀"])
def test_a_transcript_without_readable_words_falls_back_to_the_recogniser_and_says_so(predictor, sad_clip,
                                                                                         transcript):
    prediction = predictor.predict_file(sad_clip, transcript=transcript)
    assert prediction.align_source == "asr" and prediction.recogniser == "whisper tiny.en"
    assert [w.text for w in prediction.words] == STATEMENT_2.lower().split()
    assert any("no word that can be read" in w for w in prediction.warnings), prediction.warnings


@pytest.mark.data
def test_a_long_transcript_is_refused_before_alignment(predictor, sad_clip):
    import time

    start = time.perf_counter()
    with pytest.raises(TranscriptTooLong):
        predictor.predict_file(sad_clip, transcript="banana " * 300_000)
    assert time.perf_counter() - start < 30  # a refusal, not minutes of alignment (generous: a loaded machine)


def test_random_noise_gets_no_words_from_whisper():
    from emofuse.align import make_recogniser

    noise = (np.random.default_rng(0).uniform(-0.5, 0.5, 6 * 16000)).astype(np.float32)
    assert make_recogniser("whisper").transcribe(noise).words == []


@pytest.mark.data
def test_a_model_reading_pocketsphinx_words_checks_transcripts_with_whisper(tmp_path, sad_clip):
    """The limit was measured on Whisper's errors; pocketsphinx mishears 41 % of true RAVDESS
    transcripts by more than it, so the check never uses pocketsphinx."""
    from emofuse.inference.predictor import Predictor

    sphinx_model = Predictor(registry_model_dir(tmp_path / "hmm4", "H-MM-4", word_layers=1), asr="sphinx")
    assert sphinx_model.predict_file(sad_clip, transcript=STATEMENT_2).warnings == []
    warned = sphinx_model.predict_file(sad_clip, transcript="banana").warnings
    assert any("whisper tiny.en heard" in w for w in warned), warned


@pytest.mark.data
def test_a_prediction_checks_for_silence_once(predictor, sad_clip, monkeypatch):
    """The Predictor refuses silence (NoSpeech) before it aligns; the aligner, told so, does not
    look again. Extraction, which aligns without the Predictor, still checks there."""
    import emofuse.align
    import emofuse.align.vad

    spans = []
    speech_span = emofuse.align.vad.speech_span

    def counted(mask, *args, **kwargs):
        spans.append(len(mask))
        return speech_span(mask, *args, **kwargs)

    monkeypatch.setattr(emofuse.align.vad, "speech_span", counted)  # the Predictor imports it when it runs
    monkeypatch.setattr(emofuse.align, "speech_span", counted)  # the aligner's own name for it
    prediction = predictor.predict_file(sad_clip, transcript=STATEMENT_2)
    assert prediction.align_source == "forced" and len(spans) == 1, spans
    spans.clear()
    from emofuse.align import align_utterance
    from emofuse.corpora.base import Utterance

    silence = np.zeros(16000, np.float32)
    utt = Utterance(id="s", audio="s.wav", speaker="", label="", original_label="", transcript=STATEMENT_2)
    assert align_utterance(utt, silence, "forced").source == "proportional" and len(spans) >= 1
