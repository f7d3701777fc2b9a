"""A linear back-end refitted on a trained network's utterance vectors (`protocol.backend`).

After a fold's network is trained, its classifier can be replaced by a class-balanced logistic
regression (scikit-learn) on the vector the classifier reads (`Output.utterance_vector`,
dropout off):

- ``lr``: the vectors z-scored with the statistics of the training part. A control: a
  re-estimated output layer, nothing else changes.
- ``speaker-lr``: every speaker's vectors z-scored with that speaker's own statistics, over all
  of the speaker's utterances in the experiment, test speakers' too. No label is read: the
  transductive speaker normalisation of `data.normalise=speaker`, applied to the utterance
  representation instead of the frames. A per-utterance network cannot learn this itself: it
  never sees the other utterances of its speaker.

C is chosen from `CS` on the UA of the validation speakers (never the test part); the tested
network must therefore not have seen them, so a back-end cannot be combined with
`protocol.refit`. The back-end's test predictions replace the network's in `metrics.json` and
`predictions.csv`; the network's own test metrics stay in `metrics.json` under `network_test`.

The fitted layer itself (`Backend`, with its z-scoring and what prediction does with a lone
recording) lives in `emofuse.models.refitted_output`, so that prediction reads it without this package.
"""

from __future__ import annotations

import numpy as np
import torch

from emofuse.errors import EmofuseError
from emofuse.models.refitted_output import EPS, KINDS, MIN_UTTERANCES, Backend, zscore_by_speaker

CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # inverse L2 strength, chosen on validation UA


@torch.no_grad()
def utterance_vectors(model: torch.nn.Module, loader, device: torch.device | str = "cpu") -> tuple[list[str], np.ndarray]:
    """(ids, vectors (N, H)): the vector each utterance's classifier reads, dropout off."""
    was_training = model.training
    model.eval()
    ids, vectors = [], []
    for batch in loader:
        batch = batch.to(device)
        ids += batch.ids
        vectors.append(model(batch).utterance_vector.float().cpu())
    model.train(was_training)
    return ids, torch.cat(vectors).numpy().astype(np.float64)


def fit_backend(kind: str, x: np.ndarray, y: np.ndarray, speakers: list[str], train_idx, val_idx,
                classes: list[str], cs: tuple[float, ...] = CS) -> Backend:
    """Fit on `train_idx`, choose C from `cs` on the UA of `val_idx` (rows of x, y and speakers)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    if kind not in KINDS:
        raise ValueError(f"back-end {kind!r}; valid: {', '.join(KINDS)}")
    train_idx, val_idx = np.asarray(train_idx), np.asarray(val_idx)
    speakers = np.asarray(speakers)
    if len(np.unique(y[train_idx])) < 2:
        raise EmofuseError(f"back-end {kind!r}: the training part holds a single class; nothing to separate")
    if kind == "speaker-lr":
        train_speakers = [s for s in np.unique(speakers[train_idx]) if (speakers == s).sum() >= MIN_UTTERANCES]
        if not train_speakers:
            raise EmofuseError(f"back-end {kind!r}: no training speaker has {MIN_UTTERANCES} or more utterances "
                               "to take statistics from; use protocol.backend=lr")
        reference_mean = np.mean([x[speakers == s].mean(0) for s in train_speakers], axis=0)
        reference_std = np.mean([x[speakers == s].std(0) for s in train_speakers], axis=0)
        z = zscore_by_speaker(x, speakers, (reference_mean, reference_std))
    else:
        reference_mean, reference_std = x[train_idx].mean(0), x[train_idx].std(0)
        z = (x - reference_mean) / (reference_std + EPS)
    best = None
    for c in sorted(cs):
        clf = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(z[train_idx], y[train_idx])
        score = float(balanced_accuracy_score(y[val_idx], clf.predict(z[val_idx])))
        if best is None or score > best[0]:  # first of equals: the strongest regularisation
            best = (score, c, clf)
    score, c, clf = best
    coef, intercept = clf.coef_, clf.intercept_
    full = np.zeros((len(classes), x.shape[1]))
    bias = np.full(len(classes), -1e4)  # a class absent from the training part is never predicted
    rows = [int(k) for k in clf.classes_]
    if len(rows) == 2:  # scikit-learn keeps one row for a binary problem: p(second) = sigmoid(w.x + b)
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    full[rows], bias[rows] = coef, intercept
    return Backend(kind, list(classes), float(c), full, bias, reference_mean, reference_std, score)
