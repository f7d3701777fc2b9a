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
- a recording without speech is `NoSpeech`, whatever the transcript says and whatever the
  model reads: silence by its energy (`align.vad`), noise because the Silero VAD finds no frame
  of speech in it (`align.segments.SILERO_FLOOR`; a model that reads only acoustics answered
  six seconds of random u-law noise "angry 0.997"). The check scores frames until the first
  speech frame, on the detector a Whisper recogniser uses too, so a clip is scored once
  (`speech_check=False`, `--no-speech-check`, skips it);
- a transcript that forced alignment cannot fit to the audio is `TranscriptMismatch`: the
  words would drive the lexical side although nobody said them. Leave the transcript out to
  use the recogniser's words, or pass `force_transcript=True` (`--force-transcript`) to use
  it anyway, with the recogniser's times and a warning;
- a transcript too long for the audio is `TranscriptTooLong` at once, and one that is not
  what the recogniser hears is predicted with a warning (`inference.transcript_checks`;
  `check_transcript=False`, `--trust-transcript`, skips the second decode); a
  transcript with no readable word (only punctuation, or a script the aligner cannot
  pronounce) is replaced by the recogniser's words, with a warning that says so;
- clipped audio is predicted with a warning in `Prediction.warnings` (`inference.recording`);
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
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from emofuse.align import check_asr, make_recogniser
from emofuse.errors import DataError, NoSpeech, TranscriptMismatch, TranscriptTooLong, UnusableInput  # noqa: F401 -- callers catch them from here
from emofuse.features.batch import UtteranceFeatures, collate
from emofuse.features.normalise import Normalisation
from emofuse.features.spans import trim, truncate
from emofuse.inference.description import describe
from emofuse.inference.recording import SAMPLE_RATE, check_speech, checked_audio, clipping_warning, envelope
from emofuse.inference.results import (  # noqa: F401 -- callers import the result types from here
    Prediction, PredictionError, PreparedInput, WordExplanation, frame_maps, word_explanations,
)
from emofuse.inference.speaker import predict_one_speaker
from emofuse.inference.transcript_checks import (  # noqa: F401 -- callers read the limit here
    MAX_WORD_CHARS, check_transcript_size, compare_with_recogniser,
)
from emofuse.models.refitted_output import Backend
from emofuse.models.modeldir import ModelInfo, load_model_dir

DEFAULT_THREADS = 1  # torch threads of a Predictor (see its docstring)


# ------------------------------------------------------------------ openSMILE worker process
# pocketsphinx holds the GIL for a whole decode and openSMILE's sink calls back into Python
# per frame, so in one process the two run in turn (threads made it slower). A persistent
# worker process computes the frames while this process aligns and encodes the words.
FRAMES_TIMEOUT = 120.0  # seconds before a silent worker is given up (its frames are computed here)


def _frames_worker_setup(name: str):
    """The openSMILE worker's setup (an `emofuse.pool` worker): the frame feature, warmed up."""
    from emofuse.features.frames import get_frame_feature

    frame = get_frame_feature(name)
    frame.extract((np.random.default_rng(0).standard_normal(SAMPLE_RATE // 2) * 1e-3).astype(np.float32))
    return frame


def _frames_worker_extract(frame, audio: np.ndarray, _progress) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    return frame.extract(audio, SAMPLE_RATE), time.perf_counter() - t


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
                 asr: str | None = None, check_transcript: bool = True, speech_check: bool = True):
        started = time.perf_counter()
        torch.set_num_threads(DEFAULT_THREADS if threads is None else threads)
        loaded = load_model_dir(model_dir, verify=verify)
        self.force_transcript = force_transcript  # default of the predict_* calls (module docstring)
        self.check_transcript = check_transcript  # compare a given transcript with the recogniser's words
        self._checker = None  # the Whisper recogniser of that check, when the model's is pocketsphinx
        self.load_timings: dict[str, float] = {"model": time.perf_counter() - started}
        self.silero = None  # the speech check's Silero detector (module docstring), shared with Whisper
        if speech_check:
            from emofuse.align.segments import SileroDetector

            t = time.perf_counter()
            self.silero = SileroDetector()
            self.load_timings["vad:silero"] = time.perf_counter() - t
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
            self.recogniser = make_recogniser(self.asr, detector=self.silero)
            self.load_timings[f"asr:{self.asr}"] = time.perf_counter() - t
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emofuse-frames")
        if frames_process is None:  # worth a process where frames are costly and a second core exists
            frames_process = (self.frame is not None and self.frame.name == "compare_lld" and self.needs_words
                              and (os.cpu_count() or 1) >= 2 and sys.platform.startswith("linux"))
        self._frames_proc = None
        if frames_process and self.frame is not None:
            from emofuse.pool import Pool

            # fork: the child starts at once with this process's modules (spawn re-imported
            # emofuse and torch: 4 s, past the load budget); it only runs openSMILE and numpy.
            # It loads while this process opens the other tools (wait=False; warm_up waits).
            self._frames_proc = Pool(_frames_worker_setup, _frames_worker_extract, (self.frame.name,),
                                     context="fork", job_timeout=FRAMES_TIMEOUT, name="openSMILE",
                                     start_timeout=FRAMES_TIMEOUT, wait=False)
            # Never replaced (a fork from the pool's thread, beside the service's threads, risks a
            # deadlock): after a death this Predictor computes frames itself (`features`).
            self._frames_proc.max_crashes = 0
            weakref.finalize(self, self._frames_proc.close)
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
        if self.silero is not None:
            steps.append(("vad:silero", lambda: self.silero.recording(quiet)))
        for name, step in steps:
            t = time.perf_counter()
            step()
            self.load_timings[name] = self.load_timings.get(name, 0.0) + time.perf_counter() - t
        if self._frames_proc is not None:  # it started with the other tools; wait for what is left
            t = time.perf_counter()
            try:
                self._frames_proc.started(FRAMES_TIMEOUT)
            except Exception:  # could not start (closed by `started`): frames are computed in this process
                self._frames_proc = None
                self.frame.extract(quiet, SAMPLE_RATE)
            self.load_timings["frames process (wait)"] = time.perf_counter() - t

    @property
    def name(self) -> str:
        return self.info.name

    def describe(self) -> dict:
        return describe(self)  # inference.description

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
            compare_with_recogniser(self._transcript_checker(), audio, alignment)
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
            self._checker = make_recogniser("whisper", detector=self.silero)
        return self._checker

    def features(self, audio: np.ndarray, transcript: str | None = None, label: str = "<audio>",
                 timings: dict | None = None, normalise: bool = True,
                 force_transcript: bool | None = None) -> tuple[UtteranceFeatures, object, bool]:
        """The model's input for one recording: (item, alignment, truncated); `normalise=False`
        leaves the frames as extracted (`predict_speaker` normalises a speaker's recordings together).
        No speech is `NoSpeech`; a transcript that does not fit is `TranscriptMismatch` unless
        `force_transcript` (default: the Predictor's)."""
        from emofuse.align.vad import energy_speech_mask
        from emofuse.features.frames import speech_mask

        timings = {} if timings is None else timings
        check_speech(audio, label, self.silero, timings)
        force_transcript = self.force_transcript if force_transcript is None else force_transcript
        clock = time.perf_counter
        frames = None
        if self._frames_proc is not None:
            frames = self._frames_proc.submit(audio, label)  # runs beside alignment
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
                acoustic, timings["frames"] = frames.result()  # (T, D); the pool's limit: FRAMES_TIMEOUT
            except Exception as exc:  # the worker died, hangs or was closed: compute here and stop using it
                if self._frames_proc is None or isinstance(exc, DataError):
                    raise
                self._frames_proc.close()
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
        (`predict_speaker`). A lone recording's speaker has no statistics: its own stand in
        (`description.NORMALISATION`)."""
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
        if self.backend is not None:  # alone: its speaker has no statistics here (description.BACKEND)
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
                    audio = checked_audio(audio, sr, label)
                    item, alignment, truncated = self.features(audio, transcript, label, timings,
                                                               force_transcript=force_transcript)
                    prepared.append(PreparedInput(audio, transcript, label, item, alignment, truncated, timings))
                except DataError as exc:
                    if strict:
                        raise
                    prepared.append(PredictionError(label, str(exc)))
            return self._predict_prepared(prepared, strict)

    def _predict_prepared(self, prepared: list, strict: bool) -> list[Prediction | PredictionError]:
        """Run the model once over the prepared inputs (`PreparedInput`) and build their
        predictions; a PredictionError stays in its place. The caller holds `self._lock`.
        strict: raise the first DataError."""
        items = [p.item for p in prepared if not isinstance(p, PredictionError)]
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
        statistics (given `models.refitted_output.MIN_UTTERANCES` or more recordings; fewer get the training
        speakers' mean statistics, as a lone recording does). Models normalised otherwise give what
        `predict_files` gives. The statistics assume the recordings span the speaker's emotions.
        An unreadable file gives a PredictionError in its place; none readable is a DataError."""
        return predict_one_speaker(self, jobs, batch_size)  # inference.speaker

    def _prediction(self, row, probs, explain, audio, transcript, label, item, alignment, truncated, timings):
        p = probs[row].tolist()
        if not all(math.isfinite(x) for x in p):  # never NaN in JSON, nor null next to a label
            raise UnusableInput(label, "the model gave non-finite probabilities (NaN or infinity) for this "
                                       "recording; its frames or the model directory's normaliser are broken")
        warnings = list(self.notes)  # what the model directory could not be checked for: every answer says so
        if any(f.startswith("forced->") for f in alignment.fallbacks):  # only with force_transcript
            warnings.append("the transcript could not be aligned to the audio; used anyway (--force-transcript) "
                            f"with {alignment.source} word times")
        warnings.extend(alignment.warnings)  # the recogniser's: a repetition loop, an unsure decode
        clipped = clipping_warning(audio)
        if clipped:
            warnings.append(clipped)
        n_used = len(item.words or [])
        n_frames = len(item.acoustic) if item.acoustic is not None else 0
        words = word_explanations(alignment.words, explain, row, n_used)
        return Prediction(
            file=label,
            label=self.classes[int(np.argmax(p))],
            probabilities={c: float(x) for c, x in zip(self.classes, p)},
            words=words,
            duration=len(audio) / SAMPLE_RATE,
            align_source=alignment.source,
            fallbacks=list(alignment.fallbacks),
            transcript=transcript,
            frame_maps=frame_maps(explain, row, n_frames, item.frame_offset),
            hop=item.acoustic_hop,
            truncated=truncated,
            timings=timings,
            envelope=envelope(audio),
            model=self.info.name,
            warnings=warnings,
            recogniser=alignment.recogniser,
        )
