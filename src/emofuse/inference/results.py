"""What a prediction returns: a `Prediction` per recording (its label, class probabilities
and per-word explanations, `WordExplanation`), or a `PredictionError` for a file that could not
be predicted; the per-word and per-frame maps a model may put in `Output.explain`, with what
they mean (module docstring of `inference.predictor`); and `PreparedInput`, one recording's
model input with what its Prediction reports besides the model's output."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from emofuse.features.batch import UtteranceFeatures

# Per-word maps a model may put in Output.explain, with what they mean.
WORD_MAPS = {
    "gate": "acoustic share of the word (GMU z, Aguilar et al. 2019 Eq. 1); 1 - gate is the lexical share",
    "attention": "context attention weight over words (Aguilar et al. 2019 §3.3)",
    "acoustic_gate": "FG_CME acoustic excitation E^a (Li et al. 2021 §3.3), mean over channels",
    "semantic_gate": "FG_CME semantic excitation E^s (Li et al. 2021 §3.3), mean over channels",
    "attention_center": "expected time (s) of the word's attention over the audio (NMT-style attention)",
}
# Per-frame maps (B, T) on the acoustic grid.
FRAME_MAPS = {"frame_attention": "attention over frames (B-ACO-1 + attention, Aguilar et al. 2019 Table 3)"}


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


class PreparedInput(NamedTuple):
    """One recording (or text) ready for the model, which `_predict_prepared` turns into a Prediction."""

    audio: np.ndarray  # 16 kHz mono samples (empty for a text)
    transcript: str | None
    label: str
    item: UtteranceFeatures  # the model's input: frames, words, word vectors
    alignment: object  # align.Alignment
    truncated: bool  # beyond the model's max_words / max_frames
    timings: dict[str, float]  # seconds per stage


def word_explanations(words, explain: dict, row: int, n_used: int) -> list[WordExplanation]:
    """Each aligned word with its WORD_MAPS values from row `row` of `explain`; the words past
    the `n_used` the model read are kept, marked unused, without values."""
    result = []
    for w_index, word in enumerate(words):
        values: dict[str, float] = {}
        used = w_index < n_used
        if used:
            for key in WORD_MAPS:
                v = explain.get(key)
                if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[1] > w_index:
                    values[key] = float(v[row, w_index])
        result.append(WordExplanation(word.text, float(word.start), float(word.end), values, used))
    return result


def frame_maps(explain: dict, row: int, n_frames: int, frame_offset: int) -> dict[str, list[float]]:
    """The FRAME_MAPS of row `row` of `explain`, on the recording's frame grid."""
    maps = {}
    for key in FRAME_MAPS:
        v = explain.get(key)
        if isinstance(v, torch.Tensor) and v.dim() == 2 and n_frames:
            # frames trimmed off the start (data.trim) get 0: the map stays on the recording's grid
            maps[key] = [0.0] * frame_offset + [round(float(x), 6) for x in v[row, :n_frames]]
    return maps
