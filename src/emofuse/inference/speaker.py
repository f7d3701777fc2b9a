"""Recordings of one speaker predicted together, as a model normalised per speaker was
cross-validated (`Predictor.predict_speaker`, `emofuse predict --one-speaker`): the frames of
all of them z-scored with their joint statistics, and a `speaker-lr` output layer z-scoring
their utterance vectors with their own statistics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

from emofuse.errors import DataError
from emofuse.inference.recording import SAMPLE_RATE, checked_audio
from emofuse.inference.results import Prediction, PredictionError, PreparedInput


def predict_one_speaker(predictor, jobs: Sequence[tuple[str | Path, str | None]],
                        batch_size: int = 8) -> list[Prediction | PredictionError]:
    """`Predictor.predict_speaker` (its docstring)."""
    from emofuse.features.audio import load_audio

    batch_size = max(1, int(batch_size))
    with predictor._lock:
        prepared: list = []
        for path, transcript in jobs:
            timings: dict[str, float] = {}
            try:
                t = time.perf_counter()
                audio = checked_audio(load_audio(path, SAMPLE_RATE), SAMPLE_RATE, str(path))
                timings["audio"] = time.perf_counter() - t
                item, alignment, truncated = predictor.features(audio, transcript, str(path), timings, normalise=False)
                prepared.append(PreparedInput(audio, transcript, str(path), item, alignment, truncated, timings))
            except DataError as exc:
                prepared.append(PredictionError(str(path), str(exc)))
        good = [p for p in prepared if not isinstance(p, PredictionError)]
        if not good:
            raise DataError(None, f"none of the {len(prepared)} recording(s) could be read")
        speaker = predictor.normalisation.for_one_speaker(p.item.acoustic for p in good)
        items = [predictor._normalised(p.item, speaker) for p in good]
        outputs, seconds = [], []
        for start in range(0, len(items), batch_size):
            t = time.perf_counter()
            outputs.append(predictor._forward(items[start:start + batch_size]))
            seconds.append((time.perf_counter() - t) / len(outputs[-1].logits))
        if predictor.backend is not None:
            vectors = torch.cat([out.utterance_vector.float() for out in outputs]).numpy()
            probs = torch.from_numpy(predictor.backend.probabilities(vectors, own_statistics=True)).float()
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
                results.append(predictor._prediction(within, rows, outputs[chunk].explain, audio, transcript,
                                                label, items[row], alignment, truncated, timings))
            except DataError as exc:
                results.append(PredictionError(label, str(exc)))
        return results
