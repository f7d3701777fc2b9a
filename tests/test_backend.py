"""The refitted linear back-end (`protocol.backend`): z-scoring, choice of C, probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from emofuse.errors import ConfigError, DataError
from emofuse.models.refitted_output import MIN_UTTERANCES, Backend, zscore_by_speaker
from emofuse.training.refit_output import CS, fit_backend
from emofuse.training.config import load_config

CLASSES = ["angry", "happy", "neutral", "sad"]


def speaker_problem(speakers: int = 6, per_class: int = 5, dim: int = 4, seed: int = 0):
    """Vectors whose class signal is small next to a per-speaker offset and scale."""
    rng = np.random.default_rng(seed)
    x, y, who = [], [], []
    for s in range(speakers):
        offset, scale = rng.normal(0, 5, dim), rng.uniform(0.5, 3.0, dim)
        for c in range(len(CLASSES)):
            for _ in range(per_class):
                v = rng.normal(0, 1, dim)
                v[c % dim] += 1.5
                x.append(offset + scale * v)
                y.append(c)
                who.append(f"spk{s}")
    return np.asarray(x), np.asarray(y), who


def parts(who):
    rows = np.arange(len(who))
    speaker = np.asarray(who)
    return (rows[np.isin(speaker, ["spk0", "spk1", "spk2"])], rows[speaker == "spk3"],
            rows[np.isin(speaker, ["spk4", "spk5"])])


def test_zscore_by_speaker_uses_each_speakers_own_statistics():
    x = np.array([[1.0, 10.0], [3.0, 30.0], [100.0, 0.0], [300.0, 2.0]])
    z = zscore_by_speaker(x, ["a", "a", "b", "b"])
    np.testing.assert_allclose(z, [[-1, -1], [1, 1], [-1, -1], [1, 1]], atol=1e-5)


def test_backend_probabilities_equal_scikit_learns_for_the_chosen_c():
    x, y, who = speaker_problem()
    train, val, test = parts(who)
    backend = fit_backend("speaker-lr", x, y, who, train, val, CLASSES)
    assert backend.C in CS
    z = zscore_by_speaker(x, who)
    clf = LogisticRegression(C=backend.C, max_iter=5000, class_weight="balanced").fit(z[train], y[train])
    np.testing.assert_allclose(backend.probabilities(x, who), clf.predict_proba(z), atol=1e-6)
    np.testing.assert_allclose(backend.probabilities(x, who).sum(1), 1.0)


def test_speaker_backend_beats_the_plain_one_when_speakers_differ_in_offset_and_scale():
    x, y, who = speaker_problem(speakers=10, seed=1)
    rows, speaker = np.arange(len(who)), np.asarray(who)
    train = rows[np.isin(speaker, [f"spk{s}" for s in range(6)])]
    val, test = rows[np.isin(speaker, ["spk6", "spk7"])], rows[np.isin(speaker, ["spk8", "spk9"])]
    accuracy = {kind: float((fit_backend(kind, x, y, who, train, val, CLASSES).probabilities(x, who)[test].argmax(1)
                             == y[test]).mean()) for kind in ("lr", "speaker-lr")}
    assert accuracy["speaker-lr"] > accuracy["lr"] + 0.1, accuracy


def test_backend_never_reads_test_labels():
    x, y, who = speaker_problem()
    train, val, test = parts(who)
    scrambled = y.copy()
    scrambled[test] = np.random.default_rng(3).permutation(y[test])
    a = fit_backend("speaker-lr", x, y, who, train, val, CLASSES)
    b = fit_backend("speaker-lr", x, scrambled, who, train, val, CLASSES)
    np.testing.assert_array_equal(a.coef, b.coef)
    assert a.C == b.C and a.val_ua == b.val_ua


def test_c_is_the_grid_value_with_the_best_validation_ua():
    from sklearn.metrics import balanced_accuracy_score

    x, y, who = speaker_problem(seed=2)
    train, val, _ = parts(who)
    z = zscore_by_speaker(x, who)
    scores = [balanced_accuracy_score(y[val], LogisticRegression(C=c, max_iter=5000, class_weight="balanced")
                                      .fit(z[train], y[train]).predict(z[val])) for c in CS]
    assert len(set(scores)) > 1  # the choice matters on this problem
    backend = fit_backend("speaker-lr", x, y, who, train, val, CLASSES)
    assert backend.C == CS[int(np.argmax(scores))] and backend.val_ua == pytest.approx(max(scores))


def test_a_speaker_with_too_few_utterances_gets_the_reference_statistics():
    x, y, who = speaker_problem()
    train, val, _ = parts(who)
    backend = fit_backend("speaker-lr", x, y, who, train, val, CLASSES)
    few = x[:MIN_UTTERANCES - 1]
    z = (few - backend.reference_mean) / (backend.reference_std + 1e-6)
    np.testing.assert_allclose(backend.probabilities(few, own_statistics=True),
                               _softmax(z @ backend.coef.T + backend.intercept))
    enough = x[:MIN_UTTERANCES]
    np.testing.assert_allclose(backend.normalise(enough, own_statistics=True).mean(0), 0.0, atol=1e-9)


def test_a_training_part_of_one_class_is_a_clear_error():
    from emofuse.errors import EmofuseError

    x, y, who = speaker_problem()
    train, val, _ = parts(who)
    with pytest.raises(EmofuseError, match="single class"):
        fit_backend("lr", x, np.zeros_like(y), who, train, val, CLASSES)


def test_binary_problem_gives_the_same_probabilities_as_scikit_learn():
    x, y, who = speaker_problem()
    keep = y < 2
    x, y, who = x[keep], y[keep], [w for w, k in zip(who, keep) if k]
    train, val, _ = parts(who)
    backend = fit_backend("lr", x, y, who, train, val, CLASSES[:2])
    z = (x - backend.reference_mean) / (backend.reference_std + 1e-6)
    clf = LogisticRegression(C=backend.C, max_iter=5000, class_weight="balanced").fit(z[train], y[train])
    np.testing.assert_allclose(backend.probabilities(x), clf.predict_proba(z), atol=1e-6)


def test_a_class_absent_from_training_is_never_predicted():
    x, y, who = speaker_problem()
    train, val, _ = parts(who)
    train = train[y[train] != 3]
    probs = fit_backend("lr", x, y, who, train, val, CLASSES).probabilities(x)
    assert probs.shape == (len(x), 4) and probs[:, 3].max() < 1e-6


def test_one_speakers_recordings_together_use_their_own_statistics():
    x, y, who = speaker_problem()
    train, val, test = parts(who)
    backend = fit_backend("speaker-lr", x, y, who, train, val, CLASSES)
    mine = np.asarray(who) == "spk5"
    np.testing.assert_allclose(backend.probabilities(x[mine], own_statistics=True), backend.probabilities(x, who)[mine])
    # one recording alone: the training speakers' mean statistics stand in
    z = (x[mine][:1] - backend.reference_mean) / (backend.reference_std + 1e-6)
    np.testing.assert_allclose(backend.probabilities(x[mine][:1]), _softmax(z @ backend.coef.T + backend.intercept))


def _softmax(s):
    e = np.exp(s - s.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_backend_record_round_trips_and_a_broken_one_names_the_file(tmp_path):
    x, y, who = speaker_problem()
    train, val, _ = parts(who)
    backend = fit_backend("speaker-lr", x, y, who, train, val, CLASSES)
    again = Backend.from_dict(backend.to_dict())
    np.testing.assert_allclose(again.probabilities(x, who), backend.probabilities(x, who))
    record = backend.to_dict()
    record["coef"] = record["coef"][:2]
    with pytest.raises(DataError, match="model.json"):
        Backend.from_dict(record, source=tmp_path / "model.json")
    with pytest.raises(DataError, match="not a back-end record"):
        Backend.from_dict({"kind": "lr"}, source=tmp_path / "model.json")


def test_config_rejects_an_unknown_backend_and_one_with_refit():
    raw = {"data": {"manifest": "m.jsonl"}, "model": {"name": "B-ACO-1"}}
    with pytest.raises(ConfigError, match="protocol.backend='svm'"):
        load_config(None, ["protocol.backend=svm"], raw=raw)
    with pytest.raises(ConfigError, match="refit"):
        load_config(None, ["protocol.backend=speaker-lr", "protocol.refit=true"], raw=raw)
    assert load_config(None, ["protocol.backend=speaker-lr"], raw=raw).protocol.backend == "speaker-lr"
