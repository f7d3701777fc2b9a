"""Word times from audio with pocketsphinx 5 (its packaged US-English model and CMUdict).

`Sphinx.align` is forced alignment: the decoder searches a grammar that accepts exactly the
transcript (optional silences between words) and its segmentation gives each word's frames.
`Sphinx.recognize` is speech recognition with the packaged n-gram LM, for utterances
without a transcript (and as a fallback when alignment fails).

Frames are pocketsphinx's 10 ms frames; a segment [start_frame, end_frame] is inclusive, so a
word spans [start_frame / 100, (end_frame + 1) / 100) seconds.

Known limit: forced alignment cannot tell a *near* miss (e.g. "dogs" for "kids") from the
truth; it only fails (and the caller falls back) when the transcript cannot be fitted within
the search beams, which is what happens for a transcript of a different sentence.
"""

from __future__ import annotations

import re

import numpy as np

from emofuse.align.g2p import pronounce
from emofuse.corpora.base import Word

FRAME_SECONDS = 0.01
SAMPLE_RATE = 16000
_ALT = re.compile(r"\(\d+\)$")  # "the(2)": the second pronunciation of "the"


def _pcm16(audio: np.ndarray) -> bytes:
    """float32 [-1, 1] -> little-endian int16 bytes; clipped input stays in range."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def _segments_to_words(segments) -> list[Word]:
    words = []
    for seg in segments or []:
        text = _ALT.sub("", seg.word)
        if not text or text[0] in "<[+":  # <s>, </s>, <sil>, [NOISE], +SPN+
            continue
        words.append(Word(text, seg.start_frame * FRAME_SECONDS, (seg.end_frame + 1) * FRAME_SECONDS))
    return words


class Sphinx:
    """Lazily built decoders (building one takes ~0.5 s); one instance per worker process."""

    def __init__(self) -> None:
        self._aligner = None
        self._recognizer = None
        self.added: dict[str, str] = {}  # word -> how its pronunciation was made (g2p.pronounce)

    @staticmethod
    def settings() -> dict:
        from importlib.metadata import version

        return {"engine": "pocketsphinx", "version": version("pocketsphinx"),
                "model": "en-us", "dict": "cmudict-en-us", "frame": FRAME_SECONDS}

    @property
    def aligner(self):
        if self._aligner is None:
            from pocketsphinx import Decoder

            self._aligner = Decoder(samprate=SAMPLE_RATE, bestpath=False, lm=None, loglevel="FATAL")
        return self._aligner

    @property
    def recognizer(self):
        if self._recognizer is None:
            from pocketsphinx import Decoder

            self._recognizer = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
        return self._recognizer

    def ensure_pronounceable(self, words: list[str]) -> None:
        """Add a fallback pronunciation (g2p.pronounce) for every out-of-dictionary word."""
        decoder = self.aligner
        for word in dict.fromkeys(words):
            if decoder.lookup_word(word):
                continue
            phones, how = pronounce(word, decoder.lookup_word)
            decoder.add_word(word, phones, True)
            self.added[word] = how

    def align(self, audio: np.ndarray, words: list[str]) -> list[Word] | None:
        """Forced alignment of `words` (normalised) to 16 kHz mono audio; None when it fails."""
        if not words or audio.size < SAMPLE_RATE * FRAME_SECONDS * 3:
            return None
        self.ensure_pronounceable(words)
        decoder = self.aligner
        try:
            decoder.set_align_text(" ".join(words))
            decoder.start_utt()
            decoder.process_raw(_pcm16(audio), full_utt=True)
            decoder.end_utt()
        except RuntimeError:
            return None
        aligned = _segments_to_words(decoder.seg())
        if [w.text for w in aligned] != list(words):
            return None  # empty segmentation: the grammar could not be fitted to the audio
        return aligned

    def recognize(self, audio: np.ndarray) -> list[Word]:
        """Words and times of the recogniser's best hypothesis (possibly none)."""
        if audio.size < SAMPLE_RATE * FRAME_SECONDS * 3:
            return []
        decoder = self.recognizer
        try:
            decoder.start_utt()
            decoder.process_raw(_pcm16(audio), full_utt=True)
            decoder.end_utt()
        except RuntimeError:
            return []
        if decoder.hyp() is None:
            return []
        return _segments_to_words(decoder.seg())
