"""Predict from text alone, with a model whose every input is words (B-LEX, lstm-attn-semantic).

Such a model was trained on transcripts (`data.acoustic: null`), so a sentence is all it
needs: its words are read as in training (`data.align: written` keeps case and punctuation,
any other alignment the spoken form of `align.text.transcript_words`), encoded by the model
directory's word encoder and classified. No audio is opened and no word has a time.

    texts ──► words (written or spoken form) ──► word vectors ──► model ──► Prediction

`predict_texts` returns one `Prediction` per text (duration 0, untimed words), or a
`PredictionError` in place of a text without words; `read_texts` reads `--texts FILE`: one
utterance per line, or a CSV/TSV with a `transcript` column (and an optional `id`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from emofuse.errors import ConfigError, DataError
from emofuse.features.batch import UtteranceFeatures
from emofuse.features.spans import truncate
from emofuse.inference.predictor import Prediction, PredictionError, Predictor, PreparedInput
from emofuse.models.modeldir import ModelInfo

AUDIO_NEEDS = ("acoustic", "word_frames")  # inputs that come from a recording


def is_text_only(info: ModelInfo) -> bool:
    """True when the model reads words and nothing taken from audio."""
    return not info.acoustic_only and not any(n in info.needs for n in AUDIO_NEEDS)


def require_text_only(info: ModelInfo) -> None:
    """ConfigError, in one line, for a model that needs a recording."""
    if not is_text_only(info):
        reads = ", ".join(n for n in info.needs if n in AUDIO_NEEDS) or "acoustic frames"
        raise ConfigError(f"model {info.name} needs audio (it reads {reads}): give a recording; --text and --texts "
                          "are for text-only models (e.g. B-LEX or lstm-attn-semantic trained with data.acoustic=null)")


def read_texts(path: str | Path) -> list[tuple[str, str]]:
    """(label, text) pairs from `--texts FILE`: a `.csv`/`.tsv` with a `transcript` column (its
    `id` column, when present, names each row), else one utterance per non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "texts file not found")
    if path.suffix.lower() in (".csv", ".tsv"):
        import pandas as pd

        try:
            table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str,
                                keep_default_na=False, encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except Exception as exc:  # pandas parser errors, an empty file
            raise DataError(path, f"unparsable CSV ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        table.columns = [str(c).strip().lower() for c in table.columns]
        if "transcript" not in table.columns:
            raise DataError(path, f"no transcript column (has: {', '.join(table.columns)})")
        ids = table["id"] if "id" in table.columns else [""] * len(table)
        texts = [(str(i).strip() or f"{path.name}:{n}", str(t))
                 for n, (i, t) in enumerate(zip(ids, table["transcript"]), start=2)]  # line 1 is the header
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        texts = [(f"{path.name}:{n}", line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not texts:
        raise DataError(path, "holds no text to predict")
    return texts


def _features(predictor: Predictor, text: str, label: str):
    """(item, alignment, truncated) for one text, its words read as the model was trained."""
    from emofuse.align import align_utterance
    from emofuse.corpora.base import Utterance

    utt = Utterance(id=label, audio=None, speaker="", label="", original_label="", transcript=text.strip() or None)
    alignment = align_utterance(utt, None, "written" if predictor.info.align == "written" else "text")
    if not alignment.words:
        raise DataError(label, f"no words in the text; model {predictor.info.name} reads words")
    item = UtteranceFeatures(id=label, align_source=alignment.source, words=alignment.texts)
    if predictor.encoder is not None:
        vectors, _oov = predictor.encoder.encode([alignment.texts])[0]  # (W, D_w)
        item.word_vectors = vectors.astype(np.float32)
    kept = truncate(item, None, predictor.info.max_words)
    return kept, alignment, len(kept.words or []) < len(alignment.words)


def predict_texts(predictor: Predictor, texts: Sequence[tuple[str, str]],
                  strict: bool = False) -> list[Prediction | PredictionError]:
    """(label, text) pairs -> one result per text, run through the model as one batch.

    strict: raise the first DataError; else a PredictionError stands in its place."""
    require_text_only(predictor.info)
    silence = np.zeros(0, dtype=np.float32)
    with predictor._lock:
        prepared: list = []
        for label, text in texts:
            t = time.perf_counter()
            try:
                item, alignment, truncated = _features(predictor, text, label)
            except DataError as exc:
                if strict:
                    raise
                prepared.append(PredictionError(label, str(exc)))
                continue
            prepared.append(PreparedInput(silence, text, label, item, alignment, truncated,
                                          {"words": time.perf_counter() - t}))
        results = predictor._predict_prepared(prepared, strict)
    return [r if isinstance(r, PredictionError) else replace(r, envelope=None) for r in results]
