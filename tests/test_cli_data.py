"""`emofuse prepare` and `emofuse data summary`, on tiny folders and on the real RAVDESS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from emofuse.cli import app
from emofuse.corpora import Corpus
from emofuse.errors import DataError
from helpers import tone

WIDE = {"COLUMNS": "400"}  # keep Rich from folding long paths inside table cells
EMOFUSE = str(Path(sys.executable).with_name("emofuse"))


def tiny_ravdess(root: Path) -> Path:
    for actor in (1, 2):
        for emotion in ("01", "03", "05"):
            path = root / f"Actor_{actor:02d}" / f"03-01-{emotion}-01-01-01-{actor:02d}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, tone(0.3), 16000)
    return root


def run(*args: str):
    return CliRunner().invoke(app, list(args), env=WIDE)


def test_prepare_writes_a_manifest_and_lists_skipped_files(tmp_path):
    root = tiny_ravdess(tmp_path / "ravdess")
    corrupt = root / "Actor_02" / "03-01-05-01-01-01-02.flac"
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    out = tmp_path / "m.jsonl"
    result = run("prepare", "ravdess", str(root), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "5 utterances, 2 speakers, 3 labels" in result.output
    assert str(corrupt) in result.output and "corrupt audio" in result.output
    assert len(Corpus.read(out)) == 5


def test_prepare_reports_what_the_label_set_excluded(tmp_path):
    root = tiny_ravdess(tmp_path / "ravdess")
    sf.write(root / "Actor_01" / "03-01-02-01-01-01-01.flac", tone(0.3), 16000)  # calm
    result = run("prepare", "ravdess", str(root), "--out", str(tmp_path / "m.jsonl"), "--label-set", "ravdess4")
    assert result.exit_code == 0, result.output
    assert "excluded by the label rule: 1 (calm 1)" in result.output


def test_failed_prepare_leaves_an_existing_manifest_untouched(tmp_path):
    out = tmp_path / "m.jsonl"
    out.write_text("previous run\n")
    (tmp_path / "Actor_01").mkdir()
    (tmp_path / "Actor_01" / "03-01-01-01-01-01-01.flac").write_bytes(b"")
    result = run("prepare", "ravdess", str(tmp_path), "--out", str(out))
    assert isinstance(result.exception, DataError) and "no usable utterances" in str(result.exception)
    assert out.read_text() == "previous run\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.jsonl")] == []


def test_summary_counts_labels_speakers_and_sessions(tmp_path):
    rows = [
        (f"u{i}", "spk" + str(i % 3), ["angry", "sad"][i % 2], f"ses{i % 2}") for i in range(12)
    ]
    for uid, *_ in rows:
        sf.write(tmp_path / f"{uid}.wav", tone(0.2), 16000)
    (tmp_path / "m.csv").write_text(
        "path,label,speaker,session\n" + "".join(f"{u}.wav,{lab},{spk},{ses}\n" for u, spk, lab, ses in rows)
    )
    assert run("prepare", "manifest", str(tmp_path / "m.csv"), "-o", str(tmp_path / "m.jsonl")).exit_code == 0
    result = run("data", "summary", str(tmp_path / "m.jsonl"))
    assert result.exit_code == 0, result.output
    assert "12 utterances, 3 speakers, 2 labels, 2 sessions, 2.4 s of audio" in result.output
    lines = result.output.splitlines()
    assert any("spk0" in line and "angry:2, sad:2" in line for line in lines)
    assert any("ses0" in line and "angry:6" in line and "sad" not in line for line in lines)


def test_mosei_options_are_refused_for_other_corpora(tmp_path):
    result = run("prepare", "ravdess", str(tmp_path), "--out", str(tmp_path / "m.jsonl"), "--ties", "priority")
    assert "mosei corpus only" in str(result.exception)


def test_bad_input_exits_with_one_line_error_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    proc = subprocess.run(
        [EMOFUSE, "prepare", "ravdess", str(missing), "--out", str(tmp_path / "m.jsonl")],
        capture_output=True, text=True, env={**os.environ, **WIDE},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {missing}: RAVDESS folder not found"]


@pytest.mark.data
def test_done_when_real_ravdess_prepares_and_a_corrupt_copy_is_named(ravdess_root, tmp_path):
    manifest = tmp_path / "m.jsonl"
    proc = subprocess.run(
        [EMOFUSE, "prepare", "ravdess", str(ravdess_root), "--out", str(manifest)],
        capture_output=True, text=True, env={**os.environ, **WIDE},
    )
    assert proc.returncode == 0, proc.stderr
    summary = run("data", "summary", str(manifest))
    assert "1440 utterances, 24 speakers, 8 labels" in summary.output

    copy = tmp_path / "copy"
    for actor in ("Actor_01", "Actor_02"):
        shutil.copytree(ravdess_root / actor, copy / actor)
    os.chmod(copy / "Actor_02", 0o755)
    corrupt = copy / "Actor_02" / "03-01-04-02-01-01-02.flac"
    os.chmod(corrupt, 0o644)
    corrupt.write_bytes(corrupt.read_bytes()[:1000])
    result = run("prepare", "ravdess", str(copy), "--out", str(tmp_path / "copy.jsonl"))
    assert result.exit_code == 0, result.output
    assert "119 utterances, 2 speakers, 8 labels" in result.output
    assert str(corrupt) in result.output and "1 skipped" in result.output
