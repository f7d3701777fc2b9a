"""Predict the emotion of a recording, with the per-word reasons the model can give.

One `Predictor` per process: it loads the model directory once (safetensors weights rebuilt
from the registry, see `models.modeldir`) and the tools its inputs need, once: the frame
feature (openSMILE for ComParE LLDs), the word encoder (MiniLM / GloVe) and the pocketsphinx
decoders. For one recording it runs the same stages as training, in the same way:

    audio (16 kHz mono) ──► words with times ──► frame features ──► z-normalised with the
      (align.align_utterance:  forced alignment     training fold's statistics ──┐
       with a transcript, ASR without, none for an                            ├──► collate ──► model
       acoustic-only model)                    word vectors of those words ───┘

and returns a `Prediction`: the label, the class probabilities and, per word, its time span
and the model's per-word explanations (`Output.explain`): "gate" is the GMU's z of
Aguilar et al. 2019 Eq. 1 averaged over channels, the acoustic share of the word (1 - gate
is the lexical share); "attention" the context attention weight (§3.3); FG_CME gives its
two excitation gates "acoustic_gate" and "semantic_gate" (Li et al. 2021 §3.3); the
NMT-style model the expected time of each word's audio attention ("attention_center").

The pipeline is guarded by a lock, so one Predictor may serve several threads (the HTTP
service): requests run one at a time and never see each other's state.

Broken inputs get an error or a plain warning, never a silent confident answer:
- loading refuses weights whose sha256 differs from model.json (`verify=False` skips it),
  a class list that does not fit the output layer, and a normaliser of the wrong length or
  with a zero std (`models.modeldir`, `features.normalise`);
- a recording without speech is `NoSpeech`, whatever the transcript says;
- a transcript that forced alignment cannot fit to the audio is `TranscriptMismatch`: the
  words would drive the lexical side although nobody said them. Leave the transcript out to
  use the recogniser's words, or pass `force_transcript=True` (`--force-transcript`) to use
  it anyway, with the recogniser's times and a warning;
- a transcript longer than the audio could hold (over MAX_WORDS_PER_SECOND words a second
  plus MAX_WORDS_EXTRA, or a word over MAX_WORD_CHARS characters) is `TranscriptTooLong` at
  once: aligning it would take a worker for minutes (alignment time grows with its square);
- a transcript that aligns but is not what the recogniser hears (word error rate over
  TRANSCRIPT_WER_LIMIT against its hypothesis) is predicted with a warning that quotes what
  was heard (`check_transcript=False`, `--trust-transcript`, skips the second decode); a
  transcript with no readable word (only punctuation, or a script the aligner cannot
  pronounce) is replaced by the recogniser's words, with a warning that says so;
- clipped audio (over `CLIPPED_SHARE` of its samples at full scale) is predicted with a
  warning in `Prediction.warnings`;
- probabilities that are not finite are an error, never NaN or null in the output.
Both are `UnusableInput` errors (`emofuse.errors`).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from emofuse.align import check_asr, make_recogniser
from emofuse.errors import DataError, NoSpeech, TranscriptMismatch, TranscriptTooLong, UnusableInput  # noqa: F401 -- callers catch them from here
from emofuse.features.batch import UtteranceFeatures, collate
from emofuse.features.normalise import Normalisation
from emofuse.features.spans import trim, truncate
from emofuse.models.backend import Backend
from emofuse.models.modeldir import ModelInfo, load_model_dir

SAMPLE_RATE = 16000
CLIPPED_SHARE = 0.01  # more than this share of samples at full scale: a clipping warning
FULL_SCALE = 0.99  # |sample| at or above this counts as full scale (resampling rings around 1.0)
DEFAULT_THREADS = 1  # torch threads of a Predictor (see its docstring)
# Per-word maps a model may put in Output.explain, with what they mean.
WORD_MAPS = {
    "gate": "acoustic share of the word (GMU z, Aguilar et al. 2019 Eq. 1); 1 - gate is the lexical share",
    "attention": "context attention weight over words (Aguilar et al. 2019 §3.3)",
    "acoustic_gate": "FG_CME acoustic excitation E^a (Li et al. 2021 §3.3), mean over channels",
    "semantic_gate": "FG_CME semantic excitation E^s (Li et al. 2021 §3.3), mean over channels",
    "attention_center": "expected time (s) of the word's attention over the audio (NMT-style attention)",
}
# How a recording's frames are normalised, per the model's training mode (data.normalise).
NORMALISATION = {
    "fold": "z-scored with the training part's statistics, as in training",
    "utterance": "z-scored with the recording's own statistics, as in training",
    "speaker": "z-scored with the recording's own statistics: the model was trained with per-speaker "
               "statistics, which a lone recording's speaker does not have (expect lower accuracy than "
               "the cross-validation figures; `predict_speaker` / `--one-speaker` uses the joint statistics "
               "of one speaker's recordings)",
    "none": "not normalised, as in training",
}
# The refitted output layer of a model trained with protocol.backend (models/backend.py).
BACKEND = {
    "lr": "a logistic regression on the network's utterance vector, z-scored with the training part's statistics",
    "speaker-lr": "a logistic regression on the network's utterance vector, trained on vectors z-scored per "
                  "speaker; a lone recording's speaker has no statistics, so the training speakers' mean "
                  "statistics stand in (expect lower accuracy than the cross-validation figures; "
                  "`predict_speaker` / `--one-speaker` uses one speaker's recordings' own statistics)",
}
# Per-frame maps (B, T) on the acoustic grid.
FRAME_MAPS = {"frame_attention": "attention over frames (B-ACO-1 + attention, Aguilar et al. 2019 Table 3)"}


# ------------------------------------------------------------------ openSMILE worker process
# pocketsphinx holds the GIL for a whole decode and openSMILE's sink calls back into Python
# per frame, so in one process the two run in turn (threads made it slower). A persistent
# worker process computes the frames while this process aligns and encodes the words.
_WORKER_FRAME = None
FRAMES_TIMEOUT = 120.0  # seconds before a silent worker is given up (its frames are computed here)


MAX_WORDS_PER_SECOND = 10  # fast speech is ~4-5 words a second; twice that and more is not a transcript of it
MAX_WORDS_EXTRA = 10  # and a short clip's transcript may hold a few more
MAX_WORD_CHARS = 50  # longer than any English word a person says
# Word error rate of a given transcript against the recogniser's hypothesis above which the
# answer warns that the transcript is likely not what was said (over a third of its words).
# On RAVDESS's true statements, Whisper tiny.en's clips over it are false alarms: 1.46 % of all
# 1440 (over 0.2: 5.6 %; over 0.5: 0.97 %), benchmarks/results/asr_full.md.
# A transcript two words of six away from what was said (the other RAVDESS statement) passes.
TRANSCRIPT_WER_LIMIT = 0.34


def check_transcript_size(transcript: str, seconds: float, label: str) -> None:
    """TranscriptTooLong unless `transcript` fits `seconds` of audio (module docstring); checked
    on the raw text before anything costly reads it."""
    limit = int(MAX_WORDS_PER_SECOND * seconds) + MAX_WORDS_EXTRA
    if len(transcript) > limit * (MAX_WORD_CHARS + 1):
        raise TranscriptTooLong(label, f"the transcript has {len(transcript)} characters: more than {seconds:.1f} s "
                                       f"of audio could hold (at most {limit} words of {MAX_WORD_CHARS} characters)")
    words = transcript.split()
    if len(words) > limit:
        raise TranscriptTooLong(label, f"the transcript has {len(words)} words: more than {seconds:.1f} s of audio "
                                       f"could hold (at most {MAX_WORDS_PER_SECOND} a second + {MAX_WORDS_EXTRA} = {limit})")
    longest = max(words, key=len, default="")
    if len(longest) > MAX_WORD_CHARS:
        raise TranscriptTooLong(label, f"the transcript has a word of {len(longest)} characters "
                                       f"('{longest[:20]}...'); at most {MAX_WORD_CHARS} are accepted")


def clipping_warning(audio: np.ndarray) -> str | None:
    """A warning when more than CLIPPED_SHARE of the samples sit at full scale."""
    if audio.size == 0:
        return None
    share = float(np.mean(np.abs(audio) >= FULL_SCALE))
    if share <= CLIPPED_SHARE:
        return None
    return (f"clipped audio: {100 * share:.1f}% of samples at full scale; the acoustic features are "
            "distorted (record at a lower gain)")


def _frames_worker_init(name: str) -> None:
    global _WORKER_FRAME
    from emofuse.features.frames import get_frame_feature

    _WORKER_FRAME = get_frame_feature(name)
    _WORKER_FRAME.extract((np.random.default_rng(0).standard_normal(SAMPLE_RATE // 2) * 1e-3).astype(np.float32))


def _frames_worker_ready() -> bool:
    return _WORKER_FRAME is not None


def _frames_worker_extract(audio: np.ndarray) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    return _WORKER_FRAME.extract(audio, SAMPLE_RATE), time.perf_counter() - t


@dataclass
class WordExplanation:
    text: str
    start: float  # seconds from the start of the recording
    end: float
    values: dict[str, float] = field(default_factory=dict)  # WORD_MAPS keys the model gives
    used: bool = True  # False: beyond the model's max_words / max_frames, not seen by the model

    @property
    def timed(self) -> bool:
        """False for words without times (a text-only model reading the written transcript)."""
        return not (math.isnan(self.start) or math.isnan(self.end))

    def span(self, unit: str = "") -> str:
        return f"{self.start:.2f}–{self.end:.2f}{unit}" if self.timed else "-"

    def to_json(self) -> dict:
        timed = self.timed
        return {"text": self.text, "start": round(self.start, 3) if timed else None,
                "end": round(self.end, 3) if timed else None,
                **{k: round(v, 6) for k, v in self.values.items()},
                **({} if self.used else {"used": False})}


@dataclass
class Prediction:
    file: str
    label: str
    probabilities: dict[str, float]
    words: list[WordExplanation]
    duration: float  # seconds of audio
    align_source: str  # forced, asr, proportional, none
    fallbacks: list[str] = field(default_factory=list)
    transcript: str | None = None
    frame_maps: dict[str, list[float]] = field(default_factory=dict)  # FRAME_MAPS, one value per frame
    hop: float = 0.01
    truncated: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    envelope: np.ndarray | None = None  # (N, 2) min/max of the waveform per 10 ms, for the pictures
    model: str = ""
    warnings: list[str] = field(default_factory=list)  # what makes this answer less trustworthy
    recogniser: str | None = None  # whose hypothesis gave the words or their times ("whisper tiny.en")

    @property
    def word_source(self) -> str:
        """How the words got their times, for people: "asr (whisper tiny.en)", "forced", ..."""
        return f"{self.align_source} ({self.recogniser})" if self.recogniser else self.align_source

    def to_json(self) -> dict:
        """What `emofuse predict --json` prints and `POST /predict` returns."""
        record = {
            "file": self.file,
            "label": self.label,
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "words": [w.to_json() for w in self.words],
            "duration": round(self.duration, 3),
            "align_source": self.align_source,
            "recogniser": self.recogniser,  # null unless a recogniser's hypothesis was read
            "model": self.model,
            "warnings": list(self.warnings),  # always present: an empty list when all is well
        }
        if self.fallbacks:
            record["fallbacks"] = self.fallbacks
        if self.truncated:
            record["truncated"] = True
        return record


@dataclass
class PredictionError:
    """A file of a folder that could not be predicted, and why."""

    file: str
    error: str

    def to_json(self) -> dict:
        return {"file": self.file, "error": self.error}


def envelope(audio: np.ndarray, sr: int = SAMPLE_RATE, hop: float = 0.01) -> np.ndarray:
    """(N, 2) float32 min and max of each `hop` of audio: enough to draw the waveform."""
    step = max(1, int(round(hop * sr)))
    n = max(1, int(np.ceil(len(audio) / step)))
    padded = np.pad(np.asarray(audio, dtype=np.float32), (0, n * step - len(audio)))
    blocks = padded.reshape(n, step)
    return np.stack([blocks.min(1), blocks.max(1)], axis=1).astype(np.float32)


def _checked_audio(audio: np.ndarray, sr: int, label: str) -> np.ndarray:
    """Mono float32 samples at 16 kHz; empty or non-finite audio is a DataError naming `label`."""
    from emofuse.features.audio import resample

    audio = resample(np.asarray(audio, dtype=np.float32).reshape(-1), sr, SAMPLE_RATE)
    if audio.size == 0:
        raise DataError(label, "audio is empty (0 samples)")
    if not np.all(np.isfinite(audio)):
        raise DataError(label, "audio holds NaN or infinite samples")
    return audio


class Predictor:
    """A loaded model directory plus its feature tools (module docstring).

    warm=True also opens every tool now (openSMILE, MiniLM, the pocketsphinx decoders) so the
    first prediction is as fast as the next; `load_seconds` says how long loading took.
    threads: torch's intra-op threads for this process (default DEFAULT_THREADS = 1). Two
    threads halve the paper-size BLSTM alone (2 x 256 over 3.3 s of frames: 32 ms vs 60 ms on
    an idle 2-core machine), but torch's idle OpenMP workers then compete with the
    single-threaded alignment and openSMILE stages that follow: a whole 3 s prediction went
    from 0.17 s to 0.22 s, and on cores other jobs keep busy 2 threads were 6x slower. A
    folder run parallelises over files with worker processes instead (`inference.folder`).
    """

    def __init__(self, model_dir: str | Path, warm: bool = True, threads: int | None = None,
                 frames_process: bool | None = None, verify: bool = True, force_transcript: bool = False,
                 asr: str | None = None, check_transcript: bool = True):
        started = time.perf_counter()
        torch.set_num_threads(DEFAULT_THREADS if threads is None else threads)
        loaded = load_model_dir(model_dir, verify=verify)
        self.force_transcript = force_transcript  # default of the predict_* calls (module docstring)
        self.check_transcript = check_transcript  # compare a given transcript with the recogniser's words
        self._checker = None  # the Whisper recogniser of that check, when the model's is pocketsphinx
        self.load_timings: dict[str, float] = {"model": time.perf_counter() - started}
        self.info: ModelInfo = loaded.info
        self.model = loaded.model
        self.model_dir = loaded.path
        self.notes = loaded.notes  # what the model directory could not be checked for (modeldir.check_binding)
        info = self.info
        self.classes = list(info.classes)
        self.needs_words = not info.acoustic_only
        self.frame = None
        if "acoustic" in info.needs:
            from emofuse.features.frames import get_frame_feature

            self.frame = get_frame_feature(info.acoustic)
        self.normalisation = Normalisation.from_dict(info.normaliser, self.model_dir / "model.json")
        if "acoustic" in info.needs:
            self.normalisation.check_dimensions(int(info.spec.get("acoustic_dim") or 0), self.model_dir / "model.json")
        self.backend = None
        if info.backend is not None:  # protocol.backend: a logistic regression on the utterance vector
            self.backend = Backend.from_dict(info.backend, source=self.model_dir / "model.json")
            if self.backend.classes != self.classes:
                raise DataError(self.model_dir / "model.json", f"back-end classes {self.backend.classes} differ "
                                                               f"from the model's {self.classes}")
        self.vocab = None
        if info.vocabulary is not None:
            from emofuse.features.vocab import Vocabulary

            self.vocab = Vocabulary.from_dict(info.vocabulary)
        self.encoder = None
        if info.words:
            from emofuse.features.words import get_word_encoder

            t = time.perf_counter()
            self.encoder = get_word_encoder(info.words)  # GloVe tables load here, MiniLM in warm_up
            self.load_timings[f"words:{info.words}"] = time.perf_counter() - t
        self.sphinx = None
        self.recogniser = None
        # words without a transcript: `asr`, else the recogniser the model was trained with, else Whisper
        self.asr = check_asr(asr or info.asr) if self.needs_words else None
        if self.needs_words:
            from emofuse.align.sphinx import Sphinx

            self.sphinx = Sphinx()  # forced alignment of a given transcript
            t = time.perf_counter()
            self.recogniser = make_recogniser(self.asr)
            self.load_timings[f"asr:{self.asr}"] = time.perf_counter() - t
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emofuse-frames")
        if frames_process is None:  # worth a process where frames are costly and a second core exists
            frames_process = (self.frame is not None and self.frame.name == "compare_lld" and self.needs_words
                              and (os.cpu_count() or 1) >= 2 and sys.platform.startswith("linux"))
        self._frames_proc = None
        self._frames_started = None
        if frames_process and self.frame is not None:
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context

            # fork: the child starts at once with this process's modules (spawn re-imported
            # emofuse and torch: 4 s, past the load budget); it only runs openSMILE and numpy.
            self._frames_proc = ProcessPoolExecutor(max_workers=1, mp_context=get_context("fork"),
                                                    initializer=_frames_worker_init, initargs=(self.frame.name,))
            self._frames_started = self._frames_proc.submit(_frames_worker_ready)
            weakref.finalize(self, self._frames_proc.shutdown, wait=False, cancel_futures=True)
        if warm:
            self.warm_up()
        self.load_seconds = time.perf_counter() - started
        self.load_timings["imports and rest"] = self.load_seconds - sum(self.load_timings.values())

    # ------------------------------------------------------------------------------ set-up
    def warm_up(self) -> None:
        """Open every tool once (the first openSMILE call writes its config and starts up)."""
        quiet = (np.random.default_rng(0).standard_normal(SAMPLE_RATE // 2) * 1e-3).astype(np.float32)
        steps = []
        if self.frame is not None and self._frames_proc is None:
            steps.append((f"frames:{self.frame.name}", lambda: self.frame.extract(quiet, SAMPLE_RATE)))
        if self.encoder is not None and hasattr(self.encoder, "_load"):
            steps.append((f"words:{self.info.words}", self.encoder._load))
        if self.sphinx is not None:
            steps.append(("sphinx:aligner", lambda: self.sphinx.aligner))
        if self.recogniser is not None:
            steps.append((f"asr:{self.asr}", self.recogniser.warm))
        for name, step in steps:
            t = time.perf_counter()
            step()
            self.load_timings[name] = self.load_timings.get(name, 0.0) + time.perf_counter() - t
        if self._frames_started is not None:  # it started with the other tools; wait for what is left
            t = time.perf_counter()
            try:
                self._frames_started.result(timeout=FRAMES_TIMEOUT)
            except Exception:  # could not start: frames are computed in this process
                self._frames_proc = None
                self.frame.extract(quiet, SAMPLE_RATE)
            self.load_timings["frames process (wait)"] = time.perf_counter() - t

    @property
    def name(self) -> str:
        return self.info.name

    def describe(self) -> dict:
        info = self.info
        return {
            "model": info.name, "classes": self.classes, "label_set": info.label_set,
            "acoustic": info.acoustic, "words": info.words,
            "alignment": "none (acoustic only)" if not self.needs_words
            else "the transcript as written (trained so); ASR words without one" if info.align == "written"
            else "forced with a transcript, ASR without",
            "recogniser": self.recogniser.name if self.recogniser is not None else None,
            "needs_transcript": False,
            "normalisation": NORMALISATION[self.normalisation.mode] if self.frame is not None else None,
            "output_layer": BACKEND[self.backend.kind] if self.backend is not None else "the network's own classifier",
            "metrics": {
                **{k: info.metrics.get(k) for k in ("fold", "monitor", "val_score", "val_ua", "best_epoch")},
                "test": {k: v for k, v in (info.metrics.get("test") or {}).items()
                         if k in ("ua", "wa", "macro_f1", "weighted_f1")},
                "cross_validation": {k: v for k, v in (info.metrics.get("run_summary") or {}).items()
                                     if k in ("ua", "wa", "macro_f1", "weighted_f1")},
            },
            "emofuse_version": info.emofuse_version,
        }

    # ------------------------------------------------------------------------------ stages
    def _align(self, audio: np.ndarray, transcript: str | None, label: str, force_transcript: bool = False):
        from emofuse.align import Alignment, align_utterance, transcript_words
        from emofuse.corpora.base import Utterance

        if not self.needs_words:
            return Alignment([], "none", "none")
        if transcript:
            check_transcript_size(transcript, len(audio) / SAMPLE_RATE, label)
        utt = Utterance(id=label, audio=label or "<audio>", speaker="", label="", original_label="",
                        transcript=transcript or None)
        # A text-only model trained on written transcripts (punctuation kept) reads them so.
        mode = ("written" if self.info.align == "written" else "forced") if transcript_words(utt) else "asr"
        # speech=True: `features`, the only caller, has refused silence (NoSpeech) already
        alignment = align_utterance(utt, audio, mode, sphinx=self.sphinx, recogniser=self.recogniser, speech=True)
        if mode == "forced" and alignment.source != "forced" and not force_transcript:
            raise TranscriptMismatch(label, "the transcript could not be aligned to the audio: it is likely not "
                                            "what was said. Check it, leave it out to use speech recognition, or "
                                            "force it (--force-transcript)")
        if transcript and transcript.strip() and mode == "asr":
            who = alignment.recogniser or "the recogniser"
            alignment.warnings.append("the transcript has no word that can be read (only punctuation, or a script "
                                      f"the aligner cannot pronounce): the words {who} heard were used instead")
        elif mode == "forced" and alignment.source == "forced" and self.check_transcript:
            self._compare_with_recogniser(audio, alignment)
        if not alignment.words:
            why = "the recogniser found no words in it" if mode == "asr" else "no words could be aligned"
            raise DataError(label, f"{why}; model {self.info.name} reads words: give a transcript "
                                   "(--transcript / --transcripts, or the form field `transcript`)")
        return alignment

    def _transcript_checker(self):
        """The recogniser a given transcript is compared with: Whisper, whose error rate the
        limit was measured on (the packaged tiny.en when the model reads pocketsphinx's words:
        pocketsphinx mishears 41 % of true RAVDESS transcripts by more than the limit)."""
        if getattr(self.recogniser, "spec", "").startswith("whisper"):
            return self.recogniser
        if self._checker is None:
            self._checker = make_recogniser("whisper")
        return self._checker

    def _compare_with_recogniser(self, audio: np.ndarray, alignment) -> None:
        """Warn (in `alignment.warnings`) when the transcript is far from what the recogniser hears."""
        from emofuse.align.text import word_error_rate

        checker = self._transcript_checker()
        heard = checker.transcribe(audio)
        said = [w.text for w in alignment.words]
        wer = word_error_rate(said, [w.text for w in heard.words])
        if wer > TRANSCRIPT_WER_LIMIT:
            quoted = " ".join(w.text for w in heard.words[:12]) + (" ..." if len(heard.words) > 12 else "")
            alignment.warnings.append(
                f"the transcript is likely not what was said: {checker.name} heard "
                f"{repr(quoted) if heard.words else 'no words'} (word error rate {wer:.2f} > {TRANSCRIPT_WER_LIMIT}); "
                "check it, or leave it out to use the recogniser's words (--trust-transcript skips this check)")

    def features(self, audio: np.ndarray, transcript: str | None = None, label: str = "<audio>",
                 timings: dict | None = None, normalise: bool = True,
                 force_transcript: bool | None = None) -> tuple[UtteranceFeatures, object, bool]:
        """The model's input for one recording: (item, alignment, truncated); `normalise=False`
        leaves the frames as extracted (`predict_speaker` normalises a speaker's recordings together).
        No speech is `NoSpeech`; a transcript that does not fit is `TranscriptMismatch` unless
        `force_transcript` (default: the Predictor's)."""
        from emofuse.features.frames import speech_mask
        from emofuse.align.vad import energy_speech_mask, speech_span

        if speech_span(energy_speech_mask(audio, SAMPLE_RATE)) is None:
            raise NoSpeech(label, f"no speech in the audio ({len(audio) / SAMPLE_RATE:.1f} s of silence or "
                                  "near-silence): there is nothing to recognise an emotion in")
        force_transcript = self.force_transcript if force_transcript is None else force_transcript
        timings = {} if timings is None else timings
        clock = time.perf_counter
        frames = None
        if self._frames_proc is not None:
            try:
                frames = self._frames_proc.submit(_frames_worker_extract, audio)  # runs beside alignment
            except Exception:  # the worker is gone (BrokenProcessPool): compute frames here from now on
                self._frames_proc = None
        t = clock()
        try:
            alignment = self._align(audio, transcript, label, force_transcript)
        except BaseException:
            if frames is not None:
                frames.cancel()
            raise
        timings["align"] = clock() - t
        item = UtteranceFeatures(id=label, acoustic_hop=self.frame.hop if self.frame else 0.01,
                                 acoustic_centre_offset=getattr(self.frame, "centre_offset", 0.0),
                                 align_source=alignment.source)
        times = alignment.times().astype(np.float32) if alignment.words else None  # (W, 2)
        if frames is None and self.frame is not None:
            # openSMILE computes outside the GIL: its frames run in a thread while the word
            # encoder runs here (a 3 s prediction: 0.91x the time of running them in turn).
            frames = self._pool.submit(self._timed, self.frame.extract, audio, SAMPLE_RATE)
        if self.needs_words:
            item.words = alignment.texts
            item.word_times = times
            if self.encoder is not None:
                t = clock()
                try:
                    vectors, _oov = self.encoder.encode([alignment.texts])[0]  # (W, D_w)
                except BaseException:
                    if frames is not None:
                        frames.result()
                    raise
                item.word_vectors = vectors.astype(np.float32)
                timings["words"] = clock() - t
        if frames is not None:
            try:
                acoustic, timings["frames"] = frames.result(timeout=FRAMES_TIMEOUT)  # (T, D)
            except Exception as exc:  # the worker died or hangs: compute here and stop using it
                if self._frames_proc is None or isinstance(exc, DataError):
                    raise
                self._frames_proc = None
                acoustic, timings["frames"] = self._timed(self.frame.extract, audio, SAMPLE_RATE)
            if times is not None and len(times):
                item.speech_mask = speech_mask(len(acoustic), self.frame.hop, times - item.acoustic_centre_offset)  # (T,)
            else:
                item.speech_mask = energy_speech_mask(audio, SAMPLE_RATE, self.frame.hop, len(acoustic))
            item.acoustic = acoustic
        full_words = len(item.words or [])
        item = trim(item, self.info.trim)  # the speech span, as in training (data.trim)
        full_frames = len(item.acoustic) if item.acoustic is not None else 0
        item = truncate(item, self.info.max_frames, self.info.max_words)
        truncated = len(item.words or []) < full_words or (
            item.acoustic is not None and len(item.acoustic) < full_frames)
        return (self._normalised(item) if normalise else item), alignment, truncated

    def _normalised(self, item: UtteranceFeatures, normalisation: Normalisation | None = None) -> UtteranceFeatures:
        """Frames normalised as in training; `normalisation`: one speaker's recordings' joint one
        (`predict_speaker`). A lone recording's speaker has no statistics: its own stand in (NORMALISATION)."""
        if item.acoustic is None:
            return item
        return replace(item, acoustic=(normalisation or self.normalisation).apply(item.acoustic))

    @staticmethod
    def _timed(fn, *args):
        t = time.perf_counter()
        return fn(*args), time.perf_counter() - t

    @torch.inference_mode()
    def _forward(self, items: Sequence[UtteranceFeatures]):
        token_ids = None
        if self.vocab is not None:
            token_ids = [self.vocab.encode(list(it.words or [])) for it in items]
        return self.model(collate(items, [0] * len(items), token_ids=token_ids))

    def _run(self, items: Sequence[UtteranceFeatures]):
        out = self._forward(items)
        if self.backend is not None:  # each recording alone: its speaker has no statistics here (BACKEND)
            probs = torch.from_numpy(self.backend.probabilities(out.utterance_vector.float().numpy())).float()
        else:
            probs = torch.softmax(out.logits.float(), -1)  # (B, C)
        return probs, out.explain

    # ------------------------------------------------------------------------------ public
    def predict_audio(self, audio: np.ndarray, transcript: str | None = None, label: str = "<audio>",
                      sr: int = SAMPLE_RATE, force_transcript: bool | None = None) -> Prediction:
        """One recording given as samples (any rate; resampled to 16 kHz mono float32)."""
        return self.predict_batch([(audio, transcript, label)], sr=sr, strict=True,
                                  force_transcript=force_transcript)[0]

    def predict_file(self, path: str | Path, transcript: str | None = None,
                     force_transcript: bool | None = None) -> Prediction:
        from emofuse.features.audio import load_audio

        t = time.perf_counter()
        audio = load_audio(path, SAMPLE_RATE)
        seconds = time.perf_counter() - t
        result = self.predict_batch([(audio, transcript, str(path))], strict=True, force_transcript=force_transcript)[0]
        result.timings = {"audio": seconds, **result.timings}
        return result

    def predict_files(self, jobs: Sequence[tuple[str | Path, str | None]]) -> list[Prediction | PredictionError]:
        """Several files in one model batch; a file that fails gives a PredictionError."""
        from emofuse.features.audio import load_audio

        inputs, errors = [], {}
        for i, (path, transcript) in enumerate(jobs):
            try:
                inputs.append((load_audio(path, SAMPLE_RATE), transcript, str(path)))
            except DataError as exc:
                errors[i] = PredictionError(str(path), str(exc))
                inputs.append(None)
        ready = [x for x in inputs if x is not None]
        done = iter(self.predict_batch(ready, strict=False)) if ready else iter(())
        return [errors[i] if x is None else next(done) for i, x in enumerate(inputs)]

    def predict_batch(self, inputs: Sequence[tuple[np.ndarray, str | None, str]], sr: int = SAMPLE_RATE,
                      strict: bool = True, force_transcript: bool | None = None) -> list[Prediction | PredictionError]:
        """(audio, transcript, label) triples -> predictions, run through the model as one batch.

        strict: raise the first DataError (one file); else return PredictionError in its place.
        force_transcript: use transcripts that cannot be aligned (default: the Predictor's).
        """
        with self._lock:
            prepared: list = []
            for audio, transcript, label in inputs:
                timings: dict[str, float] = {}
                try:
                    audio = _checked_audio(audio, sr, label)
                    item, alignment, truncated = self.features(audio, transcript, label, timings,
                                                               force_transcript=force_transcript)
                    prepared.append((audio, transcript, label, item, alignment, truncated, timings))
                except DataError as exc:
                    if strict:
                        raise
                    prepared.append(PredictionError(label, str(exc)))
            return self._predict_prepared(prepared, strict)

    def _predict_prepared(self, prepared: list, strict: bool) -> list[Prediction | PredictionError]:
        """Run the model once over the prepared inputs, (audio, transcript, label, item, alignment,
        truncated, timings) each, and build their predictions; a PredictionError stays in its
        place. The caller holds `self._lock`. strict: raise the first DataError."""
        items = [p[3] for p in prepared if not isinstance(p, PredictionError)]
        results: list = []
        if items:
            t = time.perf_counter()
            probs, explain = self._run(items)
            model_seconds = (time.perf_counter() - t) / len(items)
        row = 0
        for p in prepared:
            if isinstance(p, PredictionError):
                results.append(p)
                continue
            audio, transcript, label, item, alignment, truncated, timings = p
            timings["model"] = model_seconds
            try:
                results.append(self._prediction(row, probs, explain, audio, transcript, label, item,
                                                alignment, truncated, timings))
            except DataError as exc:
                if strict:
                    raise
                results.append(PredictionError(label, str(exc)))
            row += 1
        return results

    def predict_speaker(self, jobs: Sequence[tuple[str | Path, str | None]],
                        batch_size: int = 8) -> list[Prediction | PredictionError]:
        """Recordings of ONE speaker (file, transcript), predicted together as the model was
        cross-validated: with `data.normalise=speaker` their frames are z-scored with the statistics
        of all of them, and a `speaker-lr` back-end z-scores their utterance vectors with their own
        statistics (given `models.backend.MIN_UTTERANCES` or more recordings; fewer get the training
        speakers' mean statistics, as a lone recording does). Models normalised otherwise give what
        `predict_files` gives. The statistics assume the recordings span the speaker's emotions.
        An unreadable file gives a PredictionError in its place; none readable is a DataError."""
        from emofuse.features.audio import load_audio

        batch_size = max(1, int(batch_size))
        with self._lock:
            prepared: list = []
            for path, transcript in jobs:
                timings: dict[str, float] = {}
                try:
                    t = time.perf_counter()
                    audio = _checked_audio(load_audio(path, SAMPLE_RATE), SAMPLE_RATE, str(path))
                    timings["audio"] = time.perf_counter() - t
                    item, alignment, truncated = self.features(audio, transcript, str(path), timings, normalise=False)
                    prepared.append((audio, transcript, str(path), item, alignment, truncated, timings))
                except DataError as exc:
                    prepared.append(PredictionError(str(path), str(exc)))
            good = [p for p in prepared if not isinstance(p, PredictionError)]
            if not good:
                raise DataError(None, f"none of the {len(prepared)} recording(s) could be read")
            speaker = self.normalisation.for_one_speaker(p[3].acoustic for p in good)
            items = [self._normalised(p[3], speaker) for p in good]
            outputs, seconds = [], []
            for start in range(0, len(items), batch_size):
                t = time.perf_counter()
                outputs.append(self._forward(items[start:start + batch_size]))
                seconds.append((time.perf_counter() - t) / len(outputs[-1].logits))
            if self.backend is not None:
                vectors = torch.cat([out.utterance_vector.float() for out in outputs]).numpy()
                probs = torch.from_numpy(self.backend.probabilities(vectors, own_statistics=True)).float()
            else:
                probs = torch.cat([torch.softmax(out.logits.float(), -1) for out in outputs])  # (N, C)
            results = []
            readable = iter(range(len(good)))
            for p in prepared:
                if isinstance(p, PredictionError):
                    results.append(p)
                    continue
                row = next(readable)
                chunk, within = divmod(row, batch_size)
                audio, transcript, label, _, alignment, truncated, timings = p
                timings["model"] = seconds[chunk]
                rows = probs[chunk * batch_size:(chunk + 1) * batch_size]
                try:
                    results.append(self._prediction(within, rows, outputs[chunk].explain, audio, transcript,
                                                    label, items[row], alignment, truncated, timings))
                except DataError as exc:
                    results.append(PredictionError(label, str(exc)))
            return results

    def _prediction(self, row, probs, explain, audio, transcript, label, item, alignment, truncated, timings):
        p = probs[row].tolist()
        if not all(math.isfinite(x) for x in p):  # never NaN in JSON, nor null next to a label
            raise UnusableInput(label, "the model gave non-finite probabilities (NaN or infinity) for this "
                                       "recording; its frames or the model directory's normaliser are broken")
        warnings = []
        if any(f.startswith("forced->") for f in alignment.fallbacks):  # only with force_transcript
            warnings.append("the transcript could not be aligned to the audio; used anyway (--force-transcript) "
                            f"with {alignment.source} word times")
        warnings.extend(alignment.warnings)  # the recogniser's: a repetition loop, an unsure decode
        clipped = clipping_warning(audio)
        if clipped:
            warnings.append(clipped)
        n_used = len(item.words or [])
        n_frames = len(item.acoustic) if item.acoustic is not None else 0
        words = []
        for w_index, word in enumerate(alignment.words):
            values: dict[str, float] = {}
            used = w_index < n_used
            if used:
                for key in WORD_MAPS:
                    v = explain.get(key)
                    if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[1] > w_index:
                        values[key] = float(v[row, w_index])
            words.append(WordExplanation(word.text, float(word.start), float(word.end), values, used))
        frame_maps = {}
        for key in FRAME_MAPS:
            v = explain.get(key)
            if isinstance(v, torch.Tensor) and v.dim() == 2 and n_frames:
                # frames trimmed off the start (data.trim) get 0: the map stays on the recording's grid
                frame_maps[key] = [0.0] * item.frame_offset + [round(float(x), 6) for x in v[row, :n_frames]]
        return Prediction(
            file=label,
            label=self.classes[int(np.argmax(p))],
            probabilities={c: float(x) for c, x in zip(self.classes, p)},
            words=words,
            duration=len(audio) / SAMPLE_RATE,
            align_source=alignment.source,
            fallbacks=list(alignment.fallbacks),
            transcript=transcript,
            frame_maps=frame_maps,
            hop=item.acoustic_hop,
            truncated=truncated,
            timings=timings,
            envelope=envelope(audio),
            model=self.info.name,
            warnings=warnings,
            recogniser=alignment.recogniser,
        )
