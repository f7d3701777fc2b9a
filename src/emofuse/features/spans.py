"""Which frames and words of an utterance a model reads: the speech span (`trim`, data.trim)
and the first frames and words (`truncate`, data.max_frames / data.max_words). Training
(`training.data.Collator`, `training.corpus`) and prediction (`inference.predictor`) cut
an utterance with these same functions, so both feed a model the same span.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from emofuse.features.batch import UtteranceFeatures


def truncate(item: UtteranceFeatures, max_frames: int | None, max_words: int | None) -> UtteranceFeatures:
    """The first `max_frames` frames and `max_words` words of an utterance (None = all).

    Words that start after the kept frames are dropped with them, so word spans stay on the
    acoustic grid.
    """
    changes: dict = {}
    n_words = word_count(item)
    keep_words = n_words if max_words is None else min(n_words, max_words)
    if max_frames is not None and item.acoustic is not None and len(item.acoustic) > max_frames:
        changes["acoustic"] = item.acoustic[:max_frames]
        if item.speech_mask is not None:
            changes["speech_mask"] = item.speech_mask[:max_frames]
        if item.word_times is not None and n_words:
            cut = max_frames * item.acoustic_hop
            starts = np.asarray(item.word_times, dtype=np.float64).reshape(-1, 2)[:, 0]
            keep_words = min(keep_words, int(np.sum(starts < cut - 1e-9)))
    if keep_words < n_words:
        for name in ("word_times", "word_vectors"):
            value = getattr(item, name)
            if value is not None:
                changes[name] = value[:keep_words]
        if item.words is not None:
            changes["words"] = item.words[:keep_words]
    return replace(item, **changes) if changes else item


def trim(item: UtteranceFeatures, margin: float | None) -> UtteranceFeatures:
    """The utterance cut to its speech span plus `margin` seconds either side (None: as is).

    The span runs from the first to the last frame of `speech_mask` (frames inside words when
    word times exist, else energy VAD). Word times are shifted to count from the new first
    frame, and `frame_offset` says how many frames were cut from the start (prediction maps
    frame-level explanations back onto the recording with it). An utterance without frames, a
    speech mask or any speech frame is returned as is.
    """
    if margin is None or item.acoustic is None or item.speech_mask is None:
        return item
    speech = np.flatnonzero(np.asarray(item.speech_mask, dtype=bool))
    if not len(speech):
        return item
    pad = int(round(margin / item.acoustic_hop))
    start = max(0, int(speech[0]) - pad)
    end = min(len(item.acoustic), int(speech[-1]) + 1 + pad)
    if start == 0 and end == len(item.acoustic):
        return item
    changes: dict = {"acoustic": item.acoustic[start:end], "speech_mask": item.speech_mask[start:end],
                     "frame_offset": item.frame_offset + start}
    if item.word_times is not None and start:
        shifted = np.asarray(item.word_times, dtype=np.float64) - start * item.acoustic_hop
        changes["word_times"] = np.clip(shifted, 0.0, None).astype(np.asarray(item.word_times).dtype)
    return replace(item, **changes)


def word_count(item: UtteranceFeatures) -> int:
    for value in (item.word_vectors, item.word_times, item.words):
        if value is not None:
            return len(value)
    return 0
