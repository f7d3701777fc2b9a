"""`emofuse export`, `emofuse predict` end to end on a run trained by the real engine."""

from __future__ import annotations

import csv
import json
import sys

import pytest
from typer.testing import CliRunner

from emofuse.cli import app, main
from helpers import CLASSES, STATEMENT_1, STATEMENT_2, ravdess_files, trained_runs

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(ravdess_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    result = runner.invoke(app, ["export", str(trained_runs(str(ravdess_root))["H-MM-4"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "validation UA" in result.output
    return out


@pytest.fixture(scope="module")
def folder(ravdess_root, tmp_path_factory):
    """Three RAVDESS recordings (links) and a transcripts CSV naming them by file name."""
    root = tmp_path_factory.mktemp("recordings")
    (root / "sub").mkdir()
    files = ravdess_files(ravdess_root)[:2] + ravdess_files(ravdess_root, actors=[2], statement="02")[:1]
    targets = [root / files[0].name, root / files[1].name, root / "sub" / files[2].name]
    for src, dst in zip(files, targets):
        dst.symlink_to(src)
    with open(root / "transcripts.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "transcript"])
        writer.writerow([targets[0].name, STATEMENT_1])
        writer.writerow([targets[1].stem, STATEMENT_1])
        writer.writerow([f"sub/{targets[2].name}", STATEMENT_2])
    return root


def test_predict_one_file_prints_label_probabilities_and_words(model_dir, ravdess_root, tmp_path):
    path = ravdess_files(ravdess_root)[0]
    result = runner.invoke(app, ["predict", str(model_dir), str(path), "--transcript", STATEMENT_1,
                                 "--html", str(tmp_path / "x.html"), "--png", str(tmp_path / "x.png")],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert path.name in result.output and "acoustic share" in result.output and "attention" in result.output
    assert all(w in result.output for w in ("kids", "talking", "door"))
    assert "word times: forced" in result.output
    page = (tmp_path / "x.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_a_folder_with_two_workers_gives_one_json_object_per_file(model_dir, folder, tmp_path):
    result = runner.invoke(app, ["predict", str(model_dir), str(folder), "--transcripts", str(folder / "transcripts.csv"),
                                 "--json", "--workers", "2", "--batch-size", "1",
                                 "--out", str(tmp_path / "results.csv"), "--html", str(tmp_path / "all.html")])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 3
    for record in lines:
        assert {"label", "probabilities", "words"} <= set(record)
        assert record["label"] in CLASSES and record["align_source"] == "forced"
    words = {json.dumps([w["text"] for w in r["words"]]) for r in lines}
    assert words == {json.dumps(["kids", "are", "talking", "by", "the", "door"]),
                     json.dumps(["dogs", "are", "sitting", "by", "the", "door"])}
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows)  # input order, not finish order
    assert {r["file"]: r["label"] for r in rows} == {r["file"]: r["label"] for r in lines}
    assert (tmp_path / "all.html").read_text().count('class="emofuse-explanation"') == 3


def test_predict_jsonl_output_and_a_bad_file_in_a_folder(model_dir, folder, tmp_path):
    bad = tmp_path / "mixed"
    bad.mkdir()
    (bad / "broken.wav").write_bytes(b"RIFF....WAVEnot really")
    (bad / "good.flac").symlink_to(next(folder.glob("*.flac")).resolve())
    result = runner.invoke(app, ["predict", str(model_dir), str(bad), "--out", str(tmp_path / "r.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert "cannot decode audio" in records[0]["error"] and records[1]["label"] in CLASSES
    assert records[1]["align_source"] == "asr"  # no transcript: speech recognition


def test_export_cli_refuses_word_level_onnx_with_the_reason(model_dir, tmp_path):
    result = runner.invoke(app, ["export", str(model_dir), "--onnx", str(tmp_path / "m.onnx")])
    assert result.exit_code != 0
    assert "only acoustic-only models export to ONNX" in str(result.exception)


def test_export_cli_writes_the_multiview_student_and_its_onnx(ravdess_root, tmp_path):
    run = trained_runs(str(ravdess_root))["MV"]
    result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "mv"), "--onnx", str(tmp_path / "mv.onnx")],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "acoustic only" in result.output and "onnxruntime vs PyTorch" in result.output
    assert (tmp_path / "mv.onnx").stat().st_size > 0


def test_a_wrong_model_directory_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["emofuse", "predict", str(tmp_path), str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a model directory" in err


def test_transcript_for_a_folder_is_refused(model_dir, folder):
    result = runner.invoke(app, ["predict", str(model_dir), str(folder), "--transcript", "hello"])
    assert result.exit_code != 0 and "--transcripts CSV" in str(result.exception)


def test_one_speaker_folder_is_predicted_together_and_a_single_file_is_refused(model_dir, folder, ravdess_root, tmp_path):
    result = runner.invoke(app, ["predict", str(model_dir), str(folder), "--transcripts", str(folder / "transcripts.csv"),
                                 "--one-speaker", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 3 and all(r["label"] in CLASSES for r in lines)
    single = runner.invoke(app, ["predict", str(model_dir), str(ravdess_files(ravdess_root)[0]), "--one-speaker"])
    assert single.exit_code != 0 and "give a folder" in str(single.exception)
