"""Reading the store back: stored entries of a corpus as `UtteranceFeatures`, or padded batches."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from emofuse.align import UNTIMED
from emofuse.corpora.base import Corpus, Utterance
from emofuse.errors import ConfigError, DataError
from emofuse.features.frames import HOP, frame_feature_names, get_frame_feature, is_frame_feature, speech_mask
from emofuse.features.store.layout import (
    StoreLayout,
    align_mode_for,
    read_alignment,
    read_tensors,
    split_features,
    utterance_key,
)

if TYPE_CHECKING:
    from emofuse.features.batch import UtteranceFeatures


def load_features(
    layout: StoreLayout,
    corpus: Corpus | Sequence[Utterance],
    acoustic: str | None = None,
    words: str | None = None,
    align: str | None = "auto",
    missing: str = "error",
) -> list["UtteranceFeatures"]:
    """The stored features of `corpus`, in its order, for `features.batch.collate`.

    acoustic: a frame feature name or None; words: a word feature or None; align: the
    mode used at extraction (auto/forced/... or None for none). The speech mask comes
    from the word times when there are any, else from the stored energy mask.
    missing="error" raises a DataError saying what to extract; "skip" leaves such
    utterances out (compare ids with the corpus).
    """
    from emofuse.features.batch import UtteranceFeatures

    if missing not in ("error", "skip"):
        raise ConfigError(f"missing must be 'error' or 'skip', not {missing!r}")
    if acoustic is not None and not is_frame_feature(acoustic):
        raise ConfigError(f"unknown frame feature {acoustic!r}; known: {', '.join(frame_feature_names())}, hf:PATH")
    if words is not None:
        split_features([words])
    frames_dir = layout.frames_dir(acoustic) if acoustic else None
    vad_dir = layout.vad_dir() if acoustic else None
    frame = get_frame_feature(acoustic) if acoustic else None
    hop = frame.hop if frame else 0.01
    centre = centre_offset(frame)
    dims = {"frames": getattr(frame, "dim", None), "vectors": None}  # the first entry fixes what is unknown
    dirs: dict[str, tuple[Path, Path | None]] = {}
    out: list[UtteranceFeatures] = []
    absent: list[tuple[str, str]] = []
    for utt in corpus:
        mode = align_mode_for(utt, align, words is not None)
        item = UtteranceFeatures(id=utt.id, acoustic_hop=hop, acoustic_centre_offset=centre)
        lacking = None
        energy = None
        if frames_dir is not None:
            frame_key = utterance_key(utt, False)
            path = frames_dir / f"{frame_key}.safetensors"
            vad_path = vad_dir / f"{frame_key}.safetensors"
            if not path.is_file():
                lacking = acoustic
            elif not vad_path.is_file():
                lacking = "speech mask (vad)"
            else:
                item.acoustic = _checked_entry(read_tensors(path)["features"], path, "frames", dims)  # (T, D)
                energy = regrid_mask(read_tensors(vad_path)["speech"].astype(bool), hop, len(item.acoustic),
                                     centre)  # (T,)
        alignment = None
        if mode is not None and lacking is None:
            if mode not in dirs:
                dirs[mode] = (layout.align_dir(mode), layout.words_dir(words, mode) if words else None)
            text_key = utterance_key(utt, True)
            path = dirs[mode][0] / f"{text_key}.json"
            if path.is_file():
                alignment = read_alignment(path)
                item.words = alignment.texts
                item.align_source = alignment.source
                if alignment.source not in UNTIMED:
                    item.word_times = alignment.times().astype(np.float32)  # (W, 2)
                if words:
                    vpath = dirs[mode][1] / f"{text_key}.safetensors"
                    if vpath.is_file():
                        item.word_vectors = _checked_entry(read_tensors(vpath)["vectors"], vpath, "vectors", dims)  # (W, D_w)
                        if len(item.word_vectors) != len(item.words):
                            raise DataError(vpath, f"{len(item.word_vectors)} vectors for {len(item.words)} "
                                                   "aligned words; delete it and run extract again")
                    else:
                        lacking = words
            else:
                lacking = f"alignment ({mode})"
        if lacking is not None:
            absent.append((utt.id, lacking))
            continue
        if item.acoustic is not None:
            times = item.word_times if item.word_times is not None and len(item.word_times) else None
            # Frames are placed on word times by their real centres (`align.word_frame_matrix`).
            item.speech_mask = speech_mask(len(item.acoustic), hop, times - centre) if times is not None else energy
        out.append(item)
    if absent and missing == "error":
        kinds = ", ".join(sorted({k for _, k in absent}))
        wanted = ",".join(x for x in (acoustic, words) if x)
        raise DataError(
            layout.root,
            f"{len(absent)} of {len(out) + len(absent)} utterances have no stored {kinds} "
            f"(first: {absent[0][0]!r}); run: emofuse extract MANIFEST --features {wanted} "
            f"--align {align or 'none'} --out {layout.root}",
        )
    return out


def batches(
    layout: StoreLayout,
    corpus: Corpus | Sequence[Utterance],
    classes: Sequence[str],
    batch_size: int = 32,
    acoustic: str | None = None,
    words: str | None = None,
    align: str | None = "auto",
    vocab=None,
):
    """Padded `Batch`es with masks, in corpus order (labels are indices into `classes`;
    `vocab`, a `features.vocab.Vocabulary`, adds token ids). Training shuffles and
    normalises on its own; this is the plain path for evaluation and inspection."""
    from emofuse.errors import LabelError
    from emofuse.features.batch import collate

    utterances = list(corpus)
    items = load_features(layout, utterances, acoustic=acoustic, words=words, align=align)
    index = {c: i for i, c in enumerate(classes)}
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        try:
            labels = [index[u.label] for u in utterances[start : start + batch_size]]
        except KeyError as exc:
            raise LabelError(f"label {exc.args[0]!r} is not one of the classes {list(classes)}") from None
        tokens = [vocab.encode(it.words or []) for it in chunk] if vocab is not None else None
        yield collate(chunk, labels, token_ids=tokens)


def centre_offset(frame) -> float:
    """Seconds from a frame feature's hop-grid centre to its frames' real one (hf encoders;
    0 for the built-in 10 ms features)."""
    return float(getattr(frame, "centre_offset", 0.0) or 0.0)


def regrid_mask(mask: np.ndarray, hop: float, length: int, centre: float = 0.0) -> np.ndarray:
    """The stored 10 ms energy mask on a feature's grid of `length` frames of `hop` seconds:
    frame t is speech when any 10 ms frame in [t * hop, (t + 1) * hop) + `centre` seconds is
    (the rule of `align.word_frame_matrix`); frames past the stored mask are not speech."""
    ratio, shift = hop / HOP, centre / HOP
    if abs(ratio - 1.0) < 1e-6 and abs(shift) < 1e-6:  # the 10 ms grid itself: cut or pad
        out = np.zeros(length, dtype=bool)
        out[: min(length, len(mask))] = mask[:length]
        return out
    t = np.arange(length, dtype=np.float64)
    start = np.floor(t * ratio + shift + 1e-4).astype(np.int64)
    end = np.maximum(np.ceil((t + 1) * ratio + shift - 1e-4).astype(np.int64), start + 1)
    counts = np.concatenate([[0], np.cumsum(mask.astype(np.int64))])  # speech frames before each index
    return counts[end.clip(0, len(mask))] > counts[start.clip(0, len(mask))]


def _checked_entry(array: np.ndarray, path: Path, kind: str, dims: dict) -> np.ndarray:
    """A stored (rows, D) entry as training reads it; a wrong shape or a NaN is a DataError
    naming the file (left alone, it surfaces much later as a NaN loss)."""
    if array.ndim != 2:
        raise DataError(path, f"stored {kind} have shape {tuple(array.shape)}, expected (rows, D); "
                              "delete it and run extract again")
    if dims[kind] is None:
        dims[kind] = int(array.shape[1])
    if array.shape[1] != dims[kind]:
        raise DataError(path, f"stored {kind} have {array.shape[1]} dimensions where the feature has "
                              f"{dims[kind]}; delete it and run extract again")
    if not np.all(np.isfinite(array)):
        raise DataError(path, f"stored {kind} hold NaN or infinite values; delete it and run extract again")
    return array
