"""Align stage: transcript normalisation, pronunciations, forced alignment, ASR, fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emofuse.align import (
    Alignment,
    align_utterance,
    corpus_words,
    proportional_words,
    resolve_mode,
    transfer_times,
    word_frame_matrix,
)
from emofuse.align.g2p import letters_to_phones, pronounce
from emofuse.align.text import normalise_transcript, number_to_words, ordinal_to_words, written_words
from emofuse.align.vad import energy_speech_mask, speech_span
from emofuse.corpora.base import Utterance, Word
from emofuse.errors import ConfigError, DataError
from emofuse.features.batch import UtteranceFeatures, alignment_matrix, collate
from helpers import tone

STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
ARPABET = set(
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH".split()
)


def ravdess_utt(root, name: str, transcript: str | None = None) -> Utterance:
    actor = name.split("-")[-1]
    path = root / f"Actor_{actor}" / f"{name}.flac"
    text = STATEMENTS[name.split("-")[4]] if transcript is None else transcript
    return Utterance(id=name, audio=str(path), speaker=f"Actor_{actor}", label="angry", original_label="angry",
                     transcript=text)


@pytest.fixture(scope="module")
def sphinx():
    from emofuse.align.sphinx import Sphinx

    return Sphinx()


@pytest.fixture(scope="module")
def kids_audio(ravdess_root):
    from emofuse.features.audio import load_audio

    utt = ravdess_utt(ravdess_root, "03-01-05-01-01-01-01")
    return utt, load_audio(utt, 16000)


# ------------------------------------------------------------------- text


def test_money_and_punctuation_are_spelled_out_as_spoken():
    assert normalise_transcript("I paid $20!") == ["i", "paid", "twenty", "dollars"]
    assert normalise_transcript("It's $3.50, OK?") == ["it's", "three", "dollars", "fifty", "cents", "ok"]
    assert normalise_transcript("$1") == ["one", "dollar"]
    assert normalise_transcript("$5 million") == ["five", "million", "dollars"]


def test_numbers_ordinals_years_percent_and_times_are_spelled_out():
    assert normalise_transcript("2,500 people") == ["two", "thousand", "five", "hundred", "people"]
    assert normalise_transcript("the 21st") == ["the", "twenty", "first"]
    assert normalise_transcript("in 1999") == ["in", "nineteen", "ninety", "nine"]
    assert normalise_transcript("100% at 10:30") == ["one", "hundred", "percent", "at", "ten", "thirty"]
    assert normalise_transcript("3.14") == ["three", "point", "one", "four"]
    assert normalise_transcript("the 1990s") == ["the", "nineteen", "nineties"]
    assert number_to_words(1_000_017) == ["one", "million", "seventeen"]
    assert ordinal_to_words(12) == ["twelfth"]


def test_typographic_quotes_case_hyphens_and_accents_are_normalised():
    assert normalise_transcript("She\u2019s WELL-known \u2014 at the Caf\u00e9.") == ["she's", "well", "known", "at", "the", "cafe"]


def test_empty_or_punctuation_only_transcript_has_no_words():
    assert normalise_transcript("") == []
    assert normalise_transcript(None) == []
    assert normalise_transcript(" ... !? ") == []


# -------------------------------------------------------------- pronunciations


def test_rule_pronunciation_uses_only_arpabet_phones():
    for word in ("zyxquibble", "kidz", "schmoo", "phthalate", "a", "y"):
        phones = letters_to_phones(word).split()
        assert phones and set(phones) <= ARPABET, (word, phones)


def test_compound_of_dictionary_words_is_preferred_to_letter_rules():
    lexicon = {"sun": "S AH N", "room": "R UW M"}
    phones, how = pronounce("sunroom", lexicon.get)
    assert (phones, how) == ("S AH N R UW M", "compound")
    assert pronounce("sun's", lexicon.get) == ("S AH N Z", "possessive")
    assert pronounce("blorf", lexicon.get)[1] == "rules"


# -------------------------------------------------------------------- modes


def test_auto_prefers_corpus_times_then_forced_then_asr():
    base = dict(audio="a.wav", speaker="s", label="x", original_label="x")
    assert resolve_mode(Utterance(id="1", words=[Word("hi", 0, 1)], transcript="hi", **base), "auto") == "corpus"
    assert resolve_mode(Utterance(id="2", transcript="hi there", **base), "auto") == "forced"
    assert resolve_mode(Utterance(id="3", transcript="", **base), "auto") == "asr"
    assert resolve_mode(Utterance(id="4", transcript="...", **base), "forced") == "asr"
    assert resolve_mode(Utterance(id="5", transcript="hi", **base), "none") is None
    assert resolve_mode(Utterance(id="6", audio=None, speaker="s", label="x", original_label="x", transcript="hi"), "auto") == "text"
    with pytest.raises(DataError, match="no word times from the corpus"):
        resolve_mode(Utterance(id="7", transcript="hi", **base), "corpus")
    with pytest.raises(ConfigError, match="unknown alignment mode"):
        resolve_mode(Utterance(id="8", **base), "magic")


def test_written_words_keep_case_and_punctuation_as_tokens():
    assert written_words("My duties?  All right.") == ["My", "duties", "?", "All", "right", "."]
    assert written_words("You must\u2019ve had $20!!") == ["You", "must've", "had", "$", "20", "!", "!"]
    assert written_words("") == [] and written_words(None) == []


def test_written_mode_gives_the_transcript_as_written_without_times_or_audio():
    utt = Utterance(id="w", audio="a.wav", speaker="s", label="x", original_label="x", transcript="What?! No way...")
    assert resolve_mode(utt, "written") == "written"
    alignment = align_utterance(utt, None, "written")  # never reads the audio
    assert alignment.texts == ["What", "?", "!", "No", "way", ".", ".", "."]
    assert alignment.source == "written" and np.isnan(alignment.times()).all()
    empty = Utterance(id="e", audio=None, speaker="s", label="x", original_label="x", transcript=" ")
    assert align_utterance(empty, None, "written").source == "none"


def test_corpus_words_are_normalised_and_fillers_dropped():
    utt = Utterance(id="u", audio=None, speaker="s", label="x", original_label="x",
                    words=[Word("<s>", 0.0, 0.2), Word("HELLO(2)", 0.2, 0.6), Word("++LAUGHTER++", 0.6, 0.8),
                           Word("20", 0.8, 1.2)])
    words = corpus_words(utt)
    assert [w.text for w in words] == ["hello", "twenty"]
    assert words[0] == Word("hello", 0.2, 0.6)
    alignment = align_utterance(utt, None, "auto")
    assert alignment.source == "corpus" and alignment.texts == ["hello", "twenty"]


def test_proportional_words_cover_the_speech_region_in_order():
    y = np.concatenate([np.zeros(8000, np.float32), tone(1.0), np.zeros(8000, np.float32)])
    words = proportional_words(["a", "longer", "sentence"], y)
    assert words[0].start == pytest.approx(0.5, abs=0.03) and words[-1].end == pytest.approx(1.5, abs=0.03)
    assert all(a.end == pytest.approx(b.start) for a, b in zip(words, words[1:]))
    assert words[1].end - words[1].start > words[0].end - words[0].start


def test_times_transfer_from_a_hypothesis_keeps_the_transcript_words():
    hyp = [Word("kids", 1.0, 1.4), Word("art", 1.4, 1.6), Word("the", 2.0, 2.1), Word("door", 2.1, 2.5)]
    words = transfer_times(["kids", "are", "talking", "by", "the", "door"], hyp, duration=3.0)
    assert [w.text for w in words] == ["kids", "are", "talking", "by", "the", "door"]
    assert words[0] == Word("kids", 1.0, 1.4) and words[-1] == Word("door", 2.1, 2.5)
    starts = [w.start for w in words]
    assert starts == sorted(starts) and all(w.end > w.start for w in words)
    assert 1.6 <= words[2].start < words[3].end <= 2.0 + 1e-9  # missed words share the gap


def test_word_frame_matrix_matches_the_batch_alignment_matrix():
    times = np.array([[0.0, 0.05], [0.05, 0.2], [0.2, 0.201]], dtype=np.float32)
    a = word_frame_matrix(times, num_frames=25)
    item = UtteranceFeatures("u", acoustic=np.zeros((25, 3), np.float32), word_times=times)
    batch = collate([item], [0])
    expected = alignment_matrix(batch.word_frames, 25, batch.word_mask)[0].numpy().astype(bool)
    np.testing.assert_array_equal(a, expected)
    assert a.sum(axis=1).tolist() == [5, 15, 1]


def test_energy_mask_finds_a_tone_between_silences():
    y = np.concatenate([np.zeros(16000, np.float32), tone(1.0), np.zeros(16000, np.float32)])
    mask = energy_speech_mask(y, 16000)
    assert len(mask) == 300
    assert speech_span(mask) == pytest.approx((1.0, 2.0), abs=0.03)
    assert not energy_speech_mask(np.zeros(16000, np.float32), 16000).any()


def test_energy_mask_finds_quiet_speech_above_a_quieter_room():
    # A take recorded 45 dB down (peak about -50 dBFS) over room noise near -85 dBFS, as in
    # the quietest RAVDESS files: still speech, the room still not.
    rng = np.random.default_rng(0)
    y = np.concatenate([np.zeros(16000, np.float32), tone(1.0) * 0.0075, np.zeros(16000, np.float32)])
    y += (rng.standard_normal(len(y)) * 10 ** (-85 / 20)).astype(np.float32)
    assert speech_span(energy_speech_mask(y, 16000)) == pytest.approx((1.0, 2.0), abs=0.03)


def test_alignment_survives_a_json_round_trip():
    a = Alignment([Word("hi", 0.1, 0.3)], "forced", "forced", ["x"])
    assert Alignment.from_json(a.to_json()) == a


# ------------------------------------------------------- pocketsphinx on real speech


def test_forced_alignment_gives_the_six_words_in_order(kids_audio, sphinx):
    utt, audio = kids_audio
    alignment = align_utterance(utt, audio, "forced", sphinx=sphinx)
    assert alignment.source == "forced" and alignment.fallbacks == []
    assert alignment.texts == ["kids", "are", "talking", "by", "the", "door"]
    times = alignment.times()
    assert np.all(times[:, 1] > times[:, 0])
    assert np.all(np.diff(times[:, 0]) > 0) and np.all(times[1:, 0] >= times[:-1, 1] - 1e-9)
    duration = len(audio) / 16000
    assert 0 <= times[0, 0] and times[-1, 1] <= duration
    # The words lie where the energy says someone speaks.
    first, last = speech_span(energy_speech_mask(audio, 16000))
    assert times[0, 0] == pytest.approx(first, abs=0.3) and times[-1, 1] == pytest.approx(last, abs=0.3)


def test_out_of_dictionary_word_gets_a_pronunciation_and_aligns(kids_audio, sphinx):
    utt, audio = kids_audio
    odd = Utterance(**{**utt.to_json(), "words": None, "transcript": "Kidz are talking by the door"})
    alignment = align_utterance(odd, audio, "forced", sphinx=sphinx)
    assert sphinx.added.get("kidz") == "rules"
    assert alignment.source == "forced" and alignment.texts[0] == "kidz"


def test_transcript_that_does_not_match_falls_back_without_crashing(kids_audio, sphinx):
    utt, audio = kids_audio
    wrong = Utterance(**{**utt.to_json(), "words": None, "transcript": "The stock market fell sharply today"})
    alignment = align_utterance(wrong, audio, "forced", sphinx=sphinx)
    assert alignment.source in ("asr", "proportional")
    assert alignment.fallbacks and alignment.fallbacks[0].startswith("forced->asr")
    assert alignment.texts == ["the", "stock", "market", "fell", "sharply", "today"]  # still the transcript's words
    assert np.all(alignment.times()[:, 1] > alignment.times()[:, 0])


def test_empty_transcript_is_recognised_instead(kids_audio, sphinx):
    utt, audio = kids_audio
    empty = Utterance(**{**utt.to_json(), "words": None, "transcript": ""})
    alignment = align_utterance(empty, audio, "auto", sphinx=sphinx)
    assert alignment.mode == "asr" and alignment.source == "asr"
    assert "door" in alignment.texts  # the recogniser hears at least the last word
    assert np.all(np.diff(alignment.times()[:, 0]) > 0)


def test_silence_and_very_short_audio_align_to_nothing_without_crashing(sphinx):
    utt = Utterance(id="s", audio="x.wav", speaker="s", label="x", original_label="x", transcript="hello there")
    for audio in (np.zeros(16000, np.float32), tone(0.02)):
        alignment = align_utterance(utt, audio, "forced", sphinx=sphinx)
        assert alignment.source == "proportional" and alignment.fallbacks
        assert alignment.texts == ["hello", "there"]
        assert np.all(alignment.times()[:, 1] > alignment.times()[:, 0])
    nothing = Utterance(**{**utt.to_json(), "transcript": None})
    assert align_utterance(nothing, np.zeros(16000, np.float32), "auto", sphinx=sphinx).words == []


def test_alignment_and_collate_give_one_frame_span_per_word(kids_audio, sphinx):
    utt, audio = kids_audio
    alignment = align_utterance(utt, audio, "forced", sphinx=sphinx)
    num_frames = len(audio) // 160
    item = UtteranceFeatures(utt.id, acoustic=np.zeros((num_frames, 2), np.float32),
                             word_times=alignment.times().astype(np.float32))
    batch = collate([item], [0])
    a = alignment_matrix(batch.word_frames, num_frames, batch.word_mask)
    assert a.shape == (1, 6, num_frames) and torch.all(a.sum(-1) >= 1)
    np.testing.assert_array_equal(a[0].numpy().astype(bool), word_frame_matrix(alignment.times(), num_frames))


def test_speech_segments_split_at_long_pauses_only():
    from emofuse.align.sphinx import SEGMENT_PAD, speech_segments

    silence = np.zeros
    one = np.concatenate([silence(8000, np.float32), tone(0.5), silence(3200, np.float32), tone(0.5),
                          silence(8000, np.float32)])  # a 0.2 s pause: one segment
    two = np.concatenate([silence(8000, np.float32), tone(0.5), silence(16000, np.float32), tone(0.5),
                          silence(8000, np.float32)])  # a 1 s pause: two segments
    assert len(speech_segments(one)) == 1
    segments = speech_segments(two)
    assert len(segments) == 2
    (s0, e0), (s1, e1) = segments
    assert s0 == pytest.approx(8000 - SEGMENT_PAD * 16000, abs=400)
    assert s1 == pytest.approx(8000 + 8000 + 16000 - SEGMENT_PAD * 16000, abs=400)
    assert e0 < s1 and e1 <= len(two)
    assert speech_segments(silence(16000, np.float32)) == []


def test_asr_dictionary_holds_the_most_probable_lm_words_and_is_cached(tmp_path):
    from emofuse.align.sphinx import asr_dictionary

    path = asr_dictionary(500, cache_dir=tmp_path)
    words = {line.split(" ", 1)[0].split("(")[0] for line in path.read_text().splitlines()}
    assert len(words) == 500
    assert {"the", "and", "you", "door"} & words == {"the", "and", "you"}  # "door" is rarer than the top 500
    mtime = path.stat().st_mtime_ns
    assert asr_dictionary(500, cache_dir=tmp_path) == path and path.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob("*.tmp"))


def test_recognised_word_times_follow_the_recording_clock(kids_audio, sphinx):
    _, audio = kids_audio
    shifted = np.concatenate([np.zeros(2 * 16000, np.float32), audio])
    plain, late = sphinx.recognize(audio), sphinx.recognize(shifted)
    assert [w.text for w in late] == [w.text for w in plain] and "door" in [w.text for w in late]
    for a, b in zip(plain, late):
        assert b.start - a.start == pytest.approx(2.0, abs=0.02)


def test_forced_word_times_follow_the_recording_clock(kids_audio, sphinx):
    _, audio = kids_audio
    words = ["kids", "are", "talking", "by", "the", "door"]
    shifted = np.concatenate([np.zeros(2 * 16000, np.float32), audio, np.zeros(16000, np.float32)])
    plain, late = sphinx.align(audio, words), sphinx.align(shifted, words)
    assert [w.text for w in late] == words
    for a, b in zip(plain, late):
        assert b.start - a.start == pytest.approx(2.0, abs=0.02)


def test_alignment_does_not_depend_on_what_was_decoded_before(kids_audio, ravdess_root):
    from emofuse.align.sphinx import Sphinx
    from emofuse.features.audio import load_audio

    _, audio = kids_audio
    words = ["kids", "are", "talking", "by", "the", "door"]
    other = load_audio(ravdess_utt(ravdess_root, "03-01-04-02-02-02-01"), 16000)
    fresh = Sphinx()
    first = fresh.align(audio, words)
    used = Sphinx()
    used.align(other, ["dogs", "are", "sitting", "by", "the", "door"])
    used.recognize(other)
    assert used.align(audio, words) == first == fresh.align(audio, words)
    assert used.recognize(audio) == fresh.recognize(audio)
