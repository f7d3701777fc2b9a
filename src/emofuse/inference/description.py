"""What a loaded model says about itself (`Predictor.describe`, shown by the HTTP service's
GET /health): its classes, inputs, how words are found, how a recording's frames are normalised
and which output layer classifies, and its cross-validation metrics."""

from __future__ import annotations

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
# The refitted output layer of a model trained with protocol.backend (models/refitted_output.py).
BACKEND = {
    "lr": "a logistic regression on the network's utterance vector, z-scored with the training part's statistics",
    "speaker-lr": "a logistic regression on the network's utterance vector, trained on vectors z-scored per "
                  "speaker; a lone recording's speaker has no statistics, so the training speakers' mean "
                  "statistics stand in (expect lower accuracy than the cross-validation figures; "
                  "`predict_speaker` / `--one-speaker` uses one speaker's recordings' own statistics)",
}


def describe(predictor) -> dict:
    """The description of a `Predictor` (module docstring)."""
    info = predictor.info
    return {
        "model": info.name, "classes": predictor.classes, "label_set": info.label_set,
        "acoustic": info.acoustic, "words": info.words,
        "alignment": "none (acoustic only)" if not predictor.needs_words
        else "the transcript as written (trained so); ASR words without one" if info.align == "written"
        else "forced with a transcript, ASR without",
        "recogniser": predictor.recogniser.name if predictor.recogniser is not None else None,
        "needs_transcript": False,
        "normalisation": NORMALISATION[predictor.normalisation.mode] if predictor.frame is not None else None,
        "output_layer": BACKEND[predictor.backend.kind] if predictor.backend is not None else "the network's own classifier",
        "metrics": {
            **{k: info.metrics.get(k) for k in ("fold", "monitor", "val_score", "val_ua", "best_epoch")},
            "test": {k: v for k, v in (info.metrics.get("test") or {}).items()
                     if k in ("ua", "wa", "macro_f1", "weighted_f1")},
            "cross_validation": {k: v for k, v in (info.metrics.get("run_summary") or {}).items()
                                 if k in ("ua", "wa", "macro_f1", "weighted_f1")},
        },
        "emofuse_version": info.emofuse_version,
    }
