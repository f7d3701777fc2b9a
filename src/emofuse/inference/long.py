"""Predict a long recording (a call, an interview, a meeting) one speech segment at a time.

A whole recording read as one utterance is neither what the models were trained on (a few
seconds of one speaker) nor affordable (a 10-minute file is one 872-word input). Here the
file is read in blocks (`align.segments.read_blocks`), its speech segments are found as the
audio streams by (`align.segments.Segmenter`, Silero VAD or the energy fallback) or taken
from a timed transcript (`align.subtitles`: CSV start,end,text / SRT / WebVTT, each cue's text
force-aligned within its own stretch of audio), and each segment is predicted by the
`Predictor` as a recording of its own:

    blocks ──► Segmenter ──► closed segments ──► audio cut from a short ring of blocks ──► Predictor
    └───────────── one thread, a few segments ahead ─────────────────┘        (this thread)

Memory stays flat whatever the length: only the audio an open segment may still need is kept.

Each `SegmentPrediction` carries start and end, label, probabilities, the words with their
gates and attention (times on the recording's clock) and the warnings of that segment; a
segment the model cannot read (the recogniser found no words) keeps its times and says why.
`LongPrediction.summary()` gives the share of speech time in each emotion and the strongest
segments; a min/max envelope of the waveform (`ENVELOPE_POINTS` bins whatever the length)
is kept for the timeline (`inference.timeline`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from emofuse.align.segments import SAMPLE_RATE, Segment, SegmentSettings, Segmenter, read_blocks
from emofuse.errors import DataError
from emofuse.features.audio import AudioHeader
from emofuse.inference.predictor import Prediction, PredictionError, Predictor, WordExplanation
from emofuse.io import atomic_write_text

ENVELOPE_POINTS = 4000  # waveform bins kept for the timeline: a one-hour file draws as a 10 kHz-free strip
STRONGEST = 5  # segments listed in the summary
BLOCK_SECONDS = 4.0
TRUNCATED = "truncated to the model's max_frames/max_words"


@dataclass
class SegmentPrediction:
    start: float  # seconds on the recording's clock
    end: float
    label: str | None  # None when the segment could not be predicted (see warnings)
    probabilities: dict[str, float]
    words: list[WordExplanation]  # times on the recording's clock
    warnings: list[str] = field(default_factory=list)
    text: str | None = None  # the cue's text, when a timed transcript gave the segment
    prediction: Prediction | None = None  # the segment's own prediction (times shifted), for the timeline
    recogniser: str | None = None  # whose hypothesis gave the words ("whisper tiny.en"), when one did

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def confidence(self) -> float:
        return self.probabilities.get(self.label, 0.0) if self.label else 0.0

    def to_json(self) -> dict:
        record = {"start": round(self.start, 3), "end": round(self.end, 3), "label": self.label,
                  "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
                  "words": [w.to_json() for w in self.words], "warnings": self.warnings}
        if self.text is not None:
            record["text"] = self.text
        if self.recogniser is not None:
            record["recogniser"] = self.recogniser
        return record


@dataclass
class LongPrediction:
    file: str
    duration: float  # seconds of audio read
    detector: str  # silero, energy or transcript
    segments: list[SegmentPrediction]
    classes: list[str]
    model: str = ""
    fallbacks: list[str] = field(default_factory=list)  # detector fallbacks ("silero->energy: why")
    envelope: np.ndarray | None = None  # (N, 2) min/max per bin of `envelope_hop` seconds
    envelope_hop: float = 0.01
    seconds: float = 0.0  # wall-clock seconds the prediction took

    def summary(self, strongest: int = STRONGEST) -> dict:
        """Share of predicted speech time in each emotion, and the segments the model is surest of."""
        done = [s for s in self.segments if s.label is not None]
        speech = sum(s.duration for s in done)
        share = {c: round(sum(s.duration for s in done if s.label == c) / speech, 4) if speech else 0.0
                 for c in self.classes}
        top = sorted(done, key=lambda s: -s.confidence)[:strongest]
        return {"speech_seconds": round(speech, 3), "segments": len(self.segments),
                "failed_segments": len(self.segments) - len(done), "share": share,
                "strongest": [{"start": round(s.start, 3), "end": round(s.end, 3), "label": s.label,
                               "probability": round(s.confidence, 6)} for s in top]}

    def to_json(self) -> dict:
        """What `emofuse predict --json` prints for a file predicted per segment."""
        record = {"file": self.file, "duration": round(self.duration, 3), "model": self.model,
                  "detector": self.detector, "summary": self.summary(),
                  "segments": [s.to_json() for s in self.segments]}
        if self.fallbacks:
            record["fallbacks"] = self.fallbacks
        return record

    def rows(self) -> list[dict]:
        """One flat record per segment, for CSV / JSONL results."""
        return [{"file": self.file, **s.to_json()} for s in self.segments]


class _Envelope:
    """Min/max of the waveform in `bins` bins over a known length, filled block by block."""

    def __init__(self, total_samples: int, bins: int = ENVELOPE_POINTS):
        self.step = max(160, math.ceil(max(total_samples, 1) / bins))  # at least 10 ms a bin
        self.values: list[np.ndarray] = []
        self._rest = np.zeros(0, dtype=np.float32)

    def push(self, block: np.ndarray, last: bool = False) -> None:
        y = np.concatenate([self._rest, block]) if len(self._rest) else block
        whole = len(y) // self.step * self.step
        if last and whole < len(y):
            y = np.pad(y, (0, self.step - (len(y) - whole)))
            whole = len(y)
        self._rest = y[whole:].copy()
        if whole:
            bins = y[:whole].reshape(-1, self.step)  # (n, step)
            self.values.append(np.stack([bins.min(1), bins.max(1)], axis=1).astype(np.float32))

    def result(self) -> np.ndarray:
        if len(self._rest):
            self.push(np.zeros(0, dtype=np.float32), last=True)
        return np.concatenate(self.values) if self.values else np.zeros((0, 2), dtype=np.float32)


class AudioRing:
    """The recent audio of a stream, in the blocks it came in: `cut` a segment out of it, `forget_before`
    a sample once no open segment can reach back that far (used here and by `serving.stream`)."""

    def __init__(self):
        self.blocks: list[tuple[int, np.ndarray]] = []  # (first sample, samples)
        self.end = 0  # samples pushed so far

    def push(self, block: np.ndarray) -> None:
        self.blocks.append((self.end, block))
        self.end += len(block)

    def cut(self, start: float, end: float) -> np.ndarray:
        a, b = int(round(start * SAMPLE_RATE)), min(int(round(end * SAMPLE_RATE)), self.end)
        parts = [y[max(0, a - s): max(0, b - s)] for s, y in self.blocks if s < b and s + len(y) > a]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def forget_before(self, sample: int) -> None:
        self.blocks = [(s, y) for s, y in self.blocks if s + len(y) > sample]


def _audio_samples(path: Path) -> int:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as err:
        raise DataError(path, f"cannot read audio: {err}") from err
    return int(round(info.frames * SAMPLE_RATE / info.samplerate))


def can_segment(header: AudioHeader) -> bool:
    """Whether a recording can be predicted per segment: read in blocks (`align.segments.read_blocks`,
    soundfile's containers: WAV, FLAC, OGG), so memory stays flat whatever its length. Others
    are decoded whole, so the service limits them to its segment length."""
    return header.reader == "soundfile"


def is_long(header: AudioHeader, over: float | None) -> bool:
    """Whether a recording is predicted per speech segment rather than whole: one that can be
    (`can_segment`) whose header declares more than `over` seconds (None: never). The one
    decision for `emofuse predict`, the service's uploads and its worker jobs."""
    return over is not None and can_segment(header) and header.duration is not None and header.duration > over


# An absolute path inside a message (a temporary file, a library's file in its error line),
# up to the quote, colon or space that ends it; the last group is its file name.
_PART = r"[^\s/'\"`:,;()\[\]]+"
# an absolute path of two parts or more (not "/predict"), also as a file:// URL: folders, then the last part
_ABSOLUTE_PATH = re.compile(rf"(?:file://|(?<![\w.:/]))/((?:{_PART}/)+)({_PART})?")


def _last_part(match: re.Match) -> str:
    return match.group(2) or match.group(1).rstrip("/").rsplit("/", 1)[-1]


def without_paths(text: str, path: str | Path | None = None, name: str | None = None) -> str:
    """`text` as a service's client may read it: `path` (the server's temporary copy of the
    client's file) written as `name`, the name the client knows, and any other absolute path
    of the server cut to its file name."""
    if path is not None and name is not None:
        text = text.replace(str(path), name)
    return _ABSOLUTE_PATH.sub(_last_part, text)


def segment_label(name: str, segment: Segment) -> str:
    """How a segment is named in its warnings: the recording and the segment's time span."""
    return f"{name} {segment.start:.2f}-{segment.end:.2f} s"


def _shifted(prediction: Prediction, offset: float) -> Prediction:
    words = [replace(w, start=w.start + offset, end=w.end + offset) for w in prediction.words]
    return replace(prediction, words=words, envelope=None)


def _word_from_json(record: dict, offset: float) -> WordExplanation:
    """A word of a prediction's JSON (`WordExplanation.to_json`), moved `offset` seconds on."""
    values = {k: v for k, v in record.items() if k not in ("text", "start", "end", "used")}
    start = math.nan if record["start"] is None else record["start"] + offset
    end = math.nan if record["end"] is None else record["end"] + offset
    return WordExplanation(record["text"], start, end, values, record.get("used", True))


def segment_result(segment: Segment, answer: Prediction | PredictionError | dict | str,
                   warnings: Sequence[str] = ()) -> SegmentPrediction:
    """One segment of a long recording from the answer for its audio alone: a `Prediction`, its
    JSON (`Prediction.to_json`, as the service's engine answers), or why it was not predicted (a
    `PredictionError` or a message). Word times move onto the recording's clock; the segment's
    warnings are the answer's fallbacks, warnings (clipping, ...) and truncation, then `warnings`.
    Long-recording prediction and the live stream (`serving.stream`) both build their segments
    here, so a segment reads the same in `--json`, `--out` and a `WS /stream` message."""
    if isinstance(answer, (PredictionError, str)):
        reason = answer.error if isinstance(answer, PredictionError) else answer
        return SegmentPrediction(segment.start, segment.end, None, {}, [], [reason, *warnings], segment.text)
    if isinstance(answer, Prediction):
        shifted = _shifted(answer, segment.start)
        label, probabilities, words = answer.label, dict(answer.probabilities), shifted.words
        said, truncated = [*answer.fallbacks, *answer.warnings], answer.truncated
        recogniser = answer.recogniser
    else:
        shifted = None
        label, probabilities = answer["label"], dict(answer["probabilities"])
        words = [_word_from_json(w, segment.start) for w in answer["words"]]
        said, truncated = [*answer.get("fallbacks", []), *answer.get("warnings", [])], answer.get("truncated", False)
        recogniser = answer.get("recogniser")
    if truncated:
        said.append(TRUNCATED)
    return SegmentPrediction(segment.start, segment.end, label, probabilities, words, [*said, *warnings],
                             segment.text, shifted, recogniser)


@dataclass
class _Stream:
    """What reading a recording found besides its segments: filled in by `_cut_segments`."""

    detector: str = "transcript"
    fallbacks: list[str] = field(default_factory=list)
    duration: float = 0.0
    envelope: _Envelope | None = None


def _cut_segments(path: Path, total: int, settings: SegmentSettings, detector: str, cues: Sequence[Segment] | None,
                  block_seconds: float, stream: _Stream):
    """Yield (segment, its audio or None, warnings) as segments close, reading `path` in blocks
    and keeping only the audio a segment still open (or a cue still to come) may need."""
    segmenter = None if cues is not None else Segmenter(settings, detector)
    if segmenter is not None:
        stream.detector, stream.fallbacks = segmenter.detector_name, list(segmenter.fallbacks)
    pending = sorted(cues or [], key=lambda c: c.start)
    # An open segment starts at most max_segment + min_pause (+ pad, + a block) before the newest sample.
    keep = int((settings.max_segment + settings.min_pause + settings.pad + block_seconds + 1.0) * SAMPLE_RATE)
    ring = AudioRing()
    stream.envelope = _Envelope(total)
    for block in read_blocks(path, block_seconds):
        ring.push(block)
        stream.envelope.push(block)
        stream.duration = ring.end / SAMPLE_RATE
        if segmenter is not None:
            closed = segmenter.push(block)
        else:
            closed = []
            while pending and pending[0].end <= stream.duration:
                closed.append(pending.pop(0))
        for segment in closed:
            yield segment, ring.cut(segment.start, segment.end), []
        ring.forget_before(min(ring.end - keep, int(pending[0].start * SAMPLE_RATE) if pending else ring.end))
    end = stream.duration
    for segment in segmenter.flush() if segmenter is not None else []:
        yield segment, ring.cut(segment.start, segment.end), []
    for cue in pending:  # cues running past the end are cut there; cues after it are reported
        if cue.start < end:
            yield (Segment(cue.start, end, cue.text), ring.cut(cue.start, end),
                   [f"the cue ends at {cue.end:g} s, after the audio ({end:.2f} s): cut there"])
        else:
            yield cue, None, [f"the cue starts after the audio ends ({end:.2f} s)"]


def _ahead(items, size: int):
    """Iterate `items` in a thread, at most `size` ahead of the consumer (memory stays bounded).
    Reading and the speech detector (onnxruntime) then overlap the model (torch), which both
    release the GIL for; an exception in the thread is raised here."""
    import queue
    import threading

    box: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def put(entry) -> bool:
        """Hand `entry` over unless the consumer has stopped (then nobody would take it)."""
        while not stop.is_set():
            try:
                box.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill():
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as err:  # handed to the consumer, raised there
            put((done, err))

    thread = threading.Thread(target=fill, name="emofuse-segments", daemon=True)
    thread.start()
    try:
        while True:
            item, err = box.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        thread.join()


def predict_long(predictor: Predictor, path: str | Path, settings: SegmentSettings | None = None,
                 detector: str = "auto", cues: Sequence[Segment] | None = None, batch_size: int = 4,
                 progress: Callable[[float, float], None] | None = None,
                 block_seconds: float = BLOCK_SECONDS, name: str | None = None) -> LongPrediction:
    """Predict `path` per speech segment (module docstring).

    cues: segments with texts from a timed transcript (`align.subtitles.read_timed_transcript`);
    without them the segmenter finds the segments. batch_size: segments per model batch.
    progress(seconds_done, seconds_total) is called after every batch of segments.
    name: the recording as the service's client knows it (its upload's file name), for a
    temporary copy at `path`: the result, its warnings and errors then name `name` and the
    segments' time spans, never a path of the server (`without_paths`). Default: `path` itself.
    """
    if name is None:
        return _predict_long(predictor, Path(path), str(path), settings, detector, cues, batch_size, progress,
                             block_seconds, lambda text: text)
    try:
        return _predict_long(predictor, Path(path), name, settings, detector, cues, batch_size, progress,
                             block_seconds, lambda text: without_paths(text, path, name))
    except DataError as exc:  # unreadable audio: libsndfile's line repeats the temporary path
        raise type(exc)(name, without_paths(exc.problem, path, name)) from None


def _predict_long(predictor: Predictor, path: Path, name: str, settings: SegmentSettings | None, detector: str,
                  cues: Sequence[Segment] | None, batch_size: int, progress: Callable[[float, float], None] | None,
                  block_seconds: float, public: Callable[[str], str]) -> LongPrediction:
    """`predict_long` for `path`, named `name`; `public` rewrites the lines the result repeats
    from errors (a segment's failure, a detector's fallback)."""
    started = time.perf_counter()
    total = _audio_samples(path)
    stream = _Stream()
    found = _cut_segments(path, total, settings or SegmentSettings(), detector, cues, block_seconds, stream)
    results: list[SegmentPrediction] = []
    batch: list = []

    def run() -> None:
        ready = [(s, a, w) for s, a, w in batch if a is not None]
        inputs = [(a, s.text, segment_label(name, s)) for s, a, _ in ready]
        outcomes = iter(predictor.predict_batch(inputs, strict=False) if inputs else [])
        for segment, audio, warnings in batch:
            if audio is None:
                results.append(SegmentPrediction(segment.start, segment.end, None, {}, [], warnings, segment.text))
                continue
            outcome = next(outcomes)
            if isinstance(outcome, PredictionError):  # "<name> <start>-<end> s: why", as the client can read it
                outcome = PredictionError(outcome.file, public(outcome.error))
            results.append(segment_result(segment, outcome, warnings))
        if progress is not None and batch:
            progress(min(batch[-1][0].end, total / SAMPLE_RATE), total / SAMPLE_RATE)
        batch.clear()

    for item in _ahead(found, 2 * batch_size):
        batch.append(item)
        if len(batch) >= batch_size:
            run()
    run()
    if progress is not None:
        progress(total / SAMPLE_RATE, total / SAMPLE_RATE)
    return LongPrediction(
        file=name, duration=stream.duration, detector=stream.detector, segments=results,
        classes=list(predictor.classes), model=predictor.info.name, fallbacks=[public(f) for f in stream.fallbacks],
        envelope=stream.envelope.result(), envelope_hop=stream.envelope.step / SAMPLE_RATE,
        seconds=time.perf_counter() - started)


def segment_rows(results: Sequence[LongPrediction | Prediction | PredictionError]) -> list[dict]:
    """One record per segment; a file predicted whole is one segment from 0 to its end."""
    rows = []
    for r in results:
        if isinstance(r, LongPrediction):
            rows += r.rows()
        elif isinstance(r, PredictionError):
            rows.append({"file": r.file, "start": None, "end": None, "label": None, "probabilities": {},
                         "words": [], "warnings": [r.error]})
        else:
            rows.append({"file": r.file, **segment_result(Segment(0.0, r.duration), r).to_json()})
    return rows


def write_segment_results(path: str | Path, results: Sequence[LongPrediction | Prediction | PredictionError],
                          classes: Sequence[str]) -> Path:
    """`.csv` or `.jsonl` with one row per segment (`segment_rows`), written atomically."""
    path = Path(path)
    rows = segment_rows(results)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    elif suffix == ".csv":
        buffer = io.StringIO()
        fields = ["file", "start", "end", "label", *[f"p_{c}" for c in classes], "words", "warnings"]
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            words = " ".join(f"{w['text']}@{w['start']:.2f}-{w['end']:.2f}" if w["start"] is not None else w["text"]
                             for w in r["words"])
            writer.writerow({"file": r["file"], "start": "" if r["start"] is None else f"{r['start']:.3f}",
                             "end": "" if r["end"] is None else f"{r['end']:.3f}", "label": r["label"] or "",
                             **{f"p_{c}": f"{r['probabilities'][c]:.6f}" if c in r["probabilities"] else ""
                                for c in classes},
                             "words": words, "warnings": "; ".join(r["warnings"])})
        text = buffer.getvalue()
    else:
        raise DataError(path, "results file must end in .csv or .jsonl")
    atomic_write_text(path, text)
    return path
