"""Align stage: the words of an utterance with their times, and where those times came from.

Modes (`align_utterance(utt, audio, mode)`):

- ``corpus``: the word times the corpus gives (IEMOCAP ``.wdseg``), text normalised.
- ``forced``: pocketsphinx forced alignment of the normalised transcript.
- ``asr``: speech recognition; words and times from the hypothesis. The recogniser is
  `data.asr` / ``--asr``: ``whisper`` (the default: the packaged Whisper tiny.en,
  `align.whisper`), ``whisper:PATH`` (any CTranslate2 Whisper folder) or ``sphinx``
  (pocketsphinx, `align.sphinx`). Forced alignment is always pocketsphinx.
- ``proportional``: transcript words spread over the speech region in proportion to their
  length (a crude but honest last resort).
- ``auto``: corpus times when the corpus has them, else ``forced`` when there is a
  transcript, else ``asr``.
- ``text``: words of the transcript without times (no audio, or no alignment wanted).
- ``written``: the transcript as written (case and punctuation kept, `text.written_words`),
  without times: for text-only models, which never place words on the audio.

Audio without any speech (energy VAD) is not decoded: its words are spread proportionally.
A failed forced alignment never raises: it falls back to ASR, whose hypothesis times are
transferred onto the transcript's words by an edit-distance alignment (the words stay the
transcript's), then to proportional segmentation; each step taken is recorded in
`Alignment.fallbacks` and `Alignment.source` says which produced the times;
`Alignment.recogniser` names the recogniser whose hypothesis was read, and
`Alignment.warnings` carries what it flagged (a repetition loop, an unsure decode).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emofuse.align.text import normalise_transcript, normalise_word, written_words
from emofuse.align.vad import HOP, energy_speech_mask, speech_span
from emofuse.corpora.base import Utterance, Word
from emofuse.errors import ConfigError, DataError

MODES = ("auto", "corpus", "forced", "asr", "proportional", "text", "written", "none")
SOURCES = ("corpus", "forced", "asr", "proportional", "text", "written")
UNTIMED = ("text", "written")  # modes and sources whose words have no times (nothing is decoded)
SAMPLE_RATE = 16000
DEFAULT_ASR = "whisper"
ASR_NAMES = ("whisper", "whisper:PATH", "sphinx")


@dataclass
class Hypothesis:
    """A recogniser's best hypothesis: normalised words with times, and what it flagged."""

    words: list[Word]
    text: str = ""
    avg_logprob: float | None = None
    warnings: list[str] = field(default_factory=list)


def check_asr(spec: str | None) -> str:
    """`spec` when it names a recogniser (ASR_NAMES), else ConfigError; None is the default."""
    spec = spec or DEFAULT_ASR
    if spec == "sphinx":
        return spec
    model = spec.partition("#")[0]
    if model == "whisper" or model.startswith("whisper:"):
        from emofuse.align.whisper import split_spec

        split_spec(spec)  # its options
        return spec
    raise ConfigError(f"unknown recogniser {spec!r}; known: {', '.join(ASR_NAMES)} (whisper[:PATH]#language=CODE "
                      "sets the language)")


def with_language(spec: str | None, language: str | None) -> str:
    """The recogniser spec of `--asr SPEC --language CODE` (``whisper#language=CODE``)."""
    spec = check_asr(spec)
    if not language:
        return spec
    if spec == "sphinx":
        raise ConfigError("--language applies to Whisper only (pocketsphinx's model is US English)")
    if "#" in spec:
        raise ConfigError(f"--asr {spec!r} already names options: give the language in one place")
    return check_asr(f"{spec}#language={language}")


def make_recogniser(spec: str | None = None, language: str | None = None, detector=None):
    """An object with `transcribe(audio) -> Hypothesis`, `name` and `settings()` for `spec`.
    `detector`: a Silero detector Whisper shares with its caller (`align.whisper.WhisperASR`)."""
    spec = check_asr(spec)
    if spec == "sphinx":
        from emofuse.align.sphinx import Sphinx

        return Sphinx()
    from emofuse.align.whisper import WhisperASR

    return WhisperASR(spec, language=language, detector=detector)


def asr_settings(spec: str | None, language: str | None = None) -> dict:
    """What identifies a recogniser's output (store keys): its engine, weights and options."""
    spec = check_asr(spec)
    if spec == "sphinx":
        from emofuse.align.sphinx import Sphinx

        return Sphinx.settings()
    from emofuse.align.whisper import WhisperASR

    return WhisperASR(spec, language=language).settings()


@dataclass
class Alignment:
    words: list[Word]  # times in seconds from the utterance start; NaN for sources "text" and "written"
    source: str  # which method produced the times (SOURCES), "none" when there are no words
    mode: str  # the mode that was asked for after resolution (resolve_mode)
    fallbacks: list[str] = field(default_factory=list)  # "forced->asr: why", ...
    recogniser: str | None = None  # "whisper tiny.en", "pocketsphinx en-us": whose hypothesis was read
    warnings: list[str] = field(default_factory=list)  # what the recogniser flagged

    @property
    def texts(self) -> list[str]:
        return [w.text for w in self.words]

    def times(self) -> np.ndarray:
        """(W, 2) float seconds [start, end)."""
        return np.array([[w.start, w.end] for w in self.words], dtype=np.float64).reshape(-1, 2)

    def to_json(self) -> dict:
        return {
            "words": [[w.text, w.start, w.end] for w in self.words],
            "source": self.source,
            "mode": self.mode,
            "fallbacks": self.fallbacks,
            "recogniser": self.recogniser,
            "warnings": self.warnings,
        }

    @classmethod
    def from_json(cls, record: dict) -> "Alignment":
        words = [Word(str(t), float("nan") if s is None else s, float("nan") if e is None else e)
                 for t, s, e in record["words"]]
        return cls(words, record["source"], record["mode"], list(record.get("fallbacks", [])),
                   record.get("recogniser"), list(record.get("warnings") or []))


def transcript_words(utt: Utterance) -> list[str]:
    return normalise_transcript(utt.transcript)


def corpus_words(utt: Utterance) -> list[Word]:
    """The corpus's word times with normalised text; a token that becomes several words
    ("20" -> "twenty") shares its span evenly; fillers and silences are dropped."""
    out: list[Word] = []
    for w in utt.words or []:
        parts = normalise_word(w.text)
        step = (w.end - w.start) / max(len(parts), 1)
        out.extend(Word(p, w.start + i * step, w.start + (i + 1) * step) for i, p in enumerate(parts))
    return out


def resolve_mode(utt: Utterance, mode: str) -> str | None:
    """The mode actually used for this utterance (None: no alignment at all).

    `auto` picks the best available; `forced` without a transcript becomes `asr`; any mode
    that needs audio becomes `text` when the utterance has none. Raises ConfigError for an
    unknown mode and DataError when `corpus` is asked for an utterance without word times.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown alignment mode {mode!r}; known: {', '.join(MODES)}")
    if mode == "none":
        return None
    if mode == "written":
        return "written"
    if mode in ("corpus", "auto") and utt.words:
        return "corpus"
    if mode == "corpus":
        raise DataError(utt.audio, f"utterance {utt.id!r} has no word times from the corpus (--align corpus)")
    if mode == "text" or not utt.audio:
        return "text"
    if mode == "auto":
        mode = "forced"
    if mode == "forced" and not transcript_words(utt):
        return "asr"
    return mode


def proportional_words(words: list[str], audio: np.ndarray, sr: int = SAMPLE_RATE) -> list[Word]:
    """Spread words over the speech region (energy VAD), each taking a share of the time
    proportional to its letters + 2; the whole utterance when nothing is voiced."""
    if not words:
        return []
    duration = max(len(audio) / sr, HOP)
    span = speech_span(energy_speech_mask(audio, sr)) or (0.0, duration)
    weights = np.array([len(w) + 2 for w in words], dtype=np.float64)
    edges = span[0] + (span[1] - span[0]) * np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
    return [Word(w, float(edges[i]), float(edges[i + 1])) for i, w in enumerate(words)]


def transfer_times(words: list[str], hypothesis: list[Word], duration: float) -> list[Word]:
    """Times for `words` from a recogniser's hypothesis (edit-distance alignment of texts).

    Substitutions cost 1 - (difflib similarity of the two spellings), so "art" is matched to
    "are" before "by". A word matched or substituted takes its hypothesis word's time; a run
    of words the recogniser missed shares the gap between its timed neighbours, and when
    that gap is shorter than 30 ms a word the run borrows the following timed words' span.
    """
    from difflib import SequenceMatcher

    def sub(a: str, b: str) -> float:
        return 0.0 if a == b else 1.0 - SequenceMatcher(None, a, b).ratio()

    n, m = len(words), len(hypothesis)
    cost = np.zeros((n + 1, m + 1))
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(cost[i - 1, j - 1] + sub(words[i - 1], hypothesis[j - 1].text),
                             cost[i - 1, j] + 1, cost[i, j - 1] + 1)
    timed: list[tuple[float, float] | None] = [None] * n
    i, j = n, m
    while i > 0 and j > 0:
        if np.isclose(cost[i, j], cost[i - 1, j - 1] + sub(words[i - 1], hypothesis[j - 1].text)):
            timed[i - 1] = (hypothesis[j - 1].start, hypothesis[j - 1].end)
            i, j = i - 1, j - 1
        elif np.isclose(cost[i, j], cost[i - 1, j] + 1):
            i -= 1
        else:
            j -= 1
    out: list[Word] = []
    k = 0
    while k < n:
        if timed[k] is not None:
            out.append(Word(words[k], *timed[k]))
            k += 1
            continue
        left = out[-1].end if out else 0.0
        run_end = k
        while run_end < n and timed[run_end] is None:
            run_end += 1
        right = timed[run_end][0] if run_end < n else max(duration, left + 0.03 * (run_end - k))
        while right - left < 0.03 * (run_end - k) and run_end < n:
            right = timed[run_end][1]  # too little room: take over the next timed word's span
            run_end += 1
            while run_end < n and timed[run_end] is None:
                run_end += 1
            if run_end < n and right - left >= 0.03 * (run_end - k):
                break
        right = max(right, left + 0.03 * (run_end - k))
        step = (right - left) / (run_end - k)
        out.extend(Word(words[k + r], left + r * step, left + (r + 1) * step) for r in range(run_end - k))
        k = run_end
    return out


def align_utterance(utt: Utterance, audio: np.ndarray | None, mode: str = "auto", sphinx=None,
                    recogniser=None, speech: bool | None = None) -> Alignment:
    """Words with times for one utterance (module docstring); never raises for bad audio or
    a transcript that does not fit: it falls back and says so in `fallbacks`.

    audio: 16 kHz mono float32 of the utterance (from `features.audio.load_audio`); may be
    None for modes that do not read it. `sphinx`: a reusable `align.sphinx.Sphinx` (forced
    alignment); `recogniser`: a reusable `make_recogniser(...)` (default: DEFAULT_ASR, built
    only when recognition is needed). `speech`: whether `audio` holds speech, when the caller
    has checked already (the Predictor refuses silence before it aligns); None: checked here.
    """
    resolved = resolve_mode(utt, mode)
    if resolved is None:
        return Alignment([], "none", "none")
    fallbacks: list[str] = []
    if mode == "forced" and resolved == "asr":
        fallbacks.append("forced->asr: no transcript")
    if resolved == "corpus":
        return Alignment(corpus_words(utt), "corpus", resolved)
    if resolved == "written":
        words = written_words(utt.transcript)
        return Alignment([Word(w, float("nan"), float("nan")) for w in words], "written" if words else "none", resolved)
    words = transcript_words(utt)
    if resolved == "text":
        return Alignment([Word(w, float("nan"), float("nan")) for w in words], "text" if words else "none", resolved)
    if audio is None:
        raise ValueError(f"alignment mode {resolved!r} needs the audio of {utt.id!r}")
    if resolved == "proportional":
        return Alignment(proportional_words(words, audio), "proportional" if words else "none", resolved)
    if sphinx is None:
        from emofuse.align.sphinx import Sphinx

        sphinx = Sphinx()
    duration = len(audio) / SAMPLE_RATE
    if speech is None:
        speech = speech_span(energy_speech_mask(audio, SAMPLE_RATE)) is not None
    if not speech:
        # Silence: the decoder would happily place any words on it; there is nothing to find.
        if resolved == "asr":
            return Alignment([], "none", resolved, fallbacks + ["asr: no speech in the audio"])
        fallbacks.append(f"{resolved}->proportional: no speech in the audio")
        return Alignment(proportional_words(words, audio), "proportional", resolved, fallbacks)
    if resolved == "forced":
        aligned = sphinx.align(audio, words)
        if aligned is not None:
            return Alignment(aligned, "forced", resolved)
        fallbacks.append("forced->asr: the transcript could not be aligned to the audio")
    if recogniser is None:
        recogniser = make_recogniser()
    hyp = recogniser.transcribe(audio)
    name = recogniser.name
    if resolved == "asr":
        if not hyp.words:
            fallbacks.append(f"asr: {name} heard no speech")
        return Alignment(hyp.words, "asr" if hyp.words else "none", resolved, fallbacks, name, hyp.warnings)
    if hyp.words:
        return Alignment(transfer_times(words, hyp.words, duration), "asr", resolved, fallbacks, name, hyp.warnings)
    fallbacks.append(f"asr->proportional: {name} found no words")
    return Alignment(proportional_words(words, audio), "proportional", resolved, fallbacks, name)


def word_frame_matrix(times: np.ndarray, num_frames: int, hop: float = HOP, centre_offset: float = 0.0) -> np.ndarray:
    """Binary words x frames matrix A (W, T): A[w, t] = 1 when frame t lies in word w.

    Frame t stands for [t * hop, (t + 1) * hop) shifted by `centre_offset` seconds: an
    encoder's real frame centre minus the hop grid's (`features.frame_grid.FrameGeometry`: +2.5 ms for
    wav2vec2, -10 ms for Whisper, 0 for the 10 ms features). The same rounding as
    `features.batch.collate` (floor start, ceil end, at least one frame per word), so A
    matches `features.batch.alignment_matrix` on the batch.
    """
    times = np.asarray(times, dtype=np.float64).reshape(-1, 2) - centre_offset
    start = np.floor(times[:, 0] / hop + 1e-4).astype(np.int64).clip(0, max(num_frames - 1, 0))
    end = np.ceil(times[:, 1] / hop - 1e-4).astype(np.int64).clip(0, num_frames)
    end = np.maximum(end, start + 1).clip(max=num_frames)
    t = np.arange(num_frames)
    return (t[None, :] >= start[:, None]) & (t[None, :] < end[:, None])


__all__ = [
    "ASR_NAMES", "Alignment", "DEFAULT_ASR", "Hypothesis", "MODES", "asr_settings", "check_asr", "make_recogniser", "with_language", "SOURCES", "UNTIMED", "align_utterance", "corpus_words", "proportional_words",
    "resolve_mode", "transcript_words", "transfer_times", "word_frame_matrix",
]
