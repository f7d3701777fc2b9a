"""WA, UA, F1 and confusion per fold, mean ± std over folds, and the report files."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from emofuse.training.metrics import classification_metrics, mean_std, summarise
from emofuse.training.report import compare_runs, confusion_png, report_markdown, run_summary, write_run_report

CLASSES = ("angry", "happy", "neutral", "sad")


def test_ua_is_mean_per_class_recall_and_differs_from_wa_on_imbalanced_data():
    y_true = [0] * 8 + [1] * 2
    y_pred = [0] * 8 + [0] * 2  # always 'angry'
    m = classification_metrics(y_true, y_pred, CLASSES[:2])
    assert m["wa"] == pytest.approx(0.8)
    assert m["ua"] == pytest.approx(0.5)  # recall 1.0 and 0.0
    assert m["ua"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_ua_ignores_classes_absent_from_the_reference_like_balanced_accuracy():
    y_true, y_pred = [0, 0, 1, 1, 2], [0, 1, 1, 1, 3]
    m = classification_metrics(y_true, y_pred, CLASSES)
    assert m["ua"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["per_class"]["sad"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_per_class_scores_and_confusion_rows_are_true_classes():
    y_true, y_pred = [0, 0, 1, 2, 3, 3], [0, 1, 1, 2, 3, 0]
    m = classification_metrics(y_true, y_pred, CLASSES)
    assert m["confusion"][0] == [1, 1, 0, 0] and m["confusion"][3] == [1, 0, 0, 1]
    assert m["per_class"]["angry"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["happy"]["recall"] == pytest.approx(1.0)
    assert m["macro_f1"] == pytest.approx(np.mean([v["f1"] for v in m["per_class"].values()]))
    assert m["n"] == 6


def test_summary_is_mean_and_sample_std_over_folds():
    folds = [classification_metrics([0, 1], p, CLASSES[:2]) for p in ([0, 1], [0, 0], [1, 0])]
    s = summarise(folds)
    assert s["wa"]["mean"] == pytest.approx(0.5)
    assert s["wa"]["std"] == pytest.approx(np.std([1.0, 0.5, 0.0], ddof=1))
    assert s["confusion"] == [[2, 1], [2, 1]]
    assert summarise(folds[:1])["ua"]["std"] is None
    assert mean_std(s["wa"]) == "50.0 ± 50.0"


def _run(model: str, preds) -> dict:
    folds = [{"fold": i, "name": f"f{i}", "test": classification_metrics([0, 1, 2, 3], p, CLASSES), "seconds": 1.0,
              "best_epoch": 0, "monitor": "val_ua", "val_score": 0.5} for i, p in enumerate(preds)]
    config = {"name": model.lower(), "corpus": "ravdess4", "model": {"name": model}, "protocol": {"name": "speaker-kfold"}}
    return run_summary(config, CLASSES, folds, total_folds=len(preds))


def test_run_report_has_the_table_and_a_confusion_png(tmp_path):
    run = _run("B-ACO-1", [[0, 1, 2, 3], [0, 1, 2, 2]])
    write_run_report(tmp_path, run)
    text = (tmp_path / "report.md").read_text()
    assert "| Model | WA | UA | macro-F1 | weighted-F1 | Folds |" in text
    assert "| B-ACO-1 | 87.5 ± 17.7 | 87.5 ± 17.7 |" in text
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sad" in report_markdown(run)


def test_compare_runs_lays_several_runs_side_by_side(tmp_path):
    for model, preds in (("B-ACO-1", [[0, 1, 2, 3]]), ("B-LEX", [[0, 0, 0, 0]])):
        write_run_report(tmp_path / model, _run(model, preds))
    rows, table = compare_runs([tmp_path / "B-ACO-1", tmp_path / "B-LEX"])
    assert [r["Model"] for r in rows] == ["B-ACO-1", "B-LEX"]
    assert rows[0]["UA"] == "100.0" and rows[1]["UA"] == "25.0"
    assert table.count("\n|") >= 3


def test_report_on_a_folder_without_results_says_so(tmp_path):
    from emofuse.errors import DataError

    with pytest.raises(DataError, match="no metrics.json"):
        compare_runs([tmp_path])
    with pytest.raises(DataError, match="run directory not found"):
        compare_runs([tmp_path / "missing"])


def test_confusion_png_is_written_atomically(tmp_path):
    path = confusion_png(tmp_path / "c.png", [[3, 1], [0, 4]], CLASSES[:2], "t")
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["c.png"]


def test_mean_std_formats_fold_values_in_percent_or_as_they_are():
    assert mean_std([0.78125, 0.75]) == "76.6 ± 2.2"
    assert mean_std([0.78125, 0.75], percent=False) == "0.766 ± 0.022"
    assert mean_std([0.6], percent=False) == "0.600"  # one fold: no spread to give
    assert mean_std([]) == "-"
    assert mean_std({"mean": 0.5, "std": 0.25}, percent=False, digits=2) == "0.50 ± 0.25"
