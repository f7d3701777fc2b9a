"""RAVDESS loader: file-name code, layout, bad files; and the real corpus."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from emofuse.corpora import load_corpus
from emofuse.corpora.ravdess import parse_name
from emofuse.errors import DataError, LabelError
from helpers import tone



def write(path: Path, seconds: float = 0.3, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds), 16000, format=fmt)
    return path


def tiny_ravdess(root: Path) -> Path:
    """Two actors, a few emotions, both .wav and .flac (users hold either)."""
    for actor in (1, 2):
        folder = root / f"Actor_{actor:02d}"
        write(folder / f"03-01-01-01-01-01-{actor:02d}.wav")  # neutral
        write(folder / f"03-01-02-02-02-01-{actor:02d}.flac")  # calm, strong, statement 2
        write(folder / f"03-01-05-02-01-02-{actor:02d}.flac")  # angry, strong, repetition 2
    return root


def test_fields_come_from_the_file_name(tmp_path):
    corpus = load_corpus("ravdess", tiny_ravdess(tmp_path))
    by_id = {u.id: u for u in corpus}
    u = by_id["03-01-02-02-02-01-02"]
    assert u.label == "calm" and u.original_label == "calm"
    assert u.speaker == "Actor_02" and u.session is None and u.group == "Actor_02"
    assert u.transcript == "Dogs are sitting by the door"
    assert u.meta["intensity"] == "strong" and u.meta["repetition"] == 1 and u.meta["statement"] == "02"
    assert u.meta["gender"] == "female" and by_id["03-01-01-01-01-01-01"].meta["gender"] == "male"
    assert by_id["03-01-05-02-01-02-01"].meta["repetition"] == 2
    assert by_id["03-01-01-01-01-01-01"].transcript == "Kids are talking by the door"
    assert Path(u.audio).is_absolute() and Path(u.audio).is_file()
    assert u.meta["duration"] == pytest.approx(0.3, abs=1e-3)


def test_wav_and_flac_are_both_read(tmp_path):
    corpus = load_corpus("ravdess", tiny_ravdess(tmp_path))
    assert Counter(Path(u.audio).suffix for u in corpus) == {".wav": 2, ".flac": 4}
    assert not corpus.skipped


def test_label_set_excludes_calm_and_counts_it(tmp_path):
    corpus = load_corpus("ravdess", tiny_ravdess(tmp_path), "ravdess4")
    assert sorted(set(corpus.labels)) == ["angry", "neutral"]
    assert corpus.excluded == {"calm": 2}
    assert not corpus.skipped


def test_corrupt_zero_length_and_truncated_files_are_skipped_with_reasons(tmp_path):
    root = tiny_ravdess(tmp_path / "r")
    zero = root / "Actor_01" / "03-01-03-01-01-01-01.flac"
    zero.write_bytes(b"")
    good = write(tmp_path / "good.flac", seconds=1.0)
    truncated = root / "Actor_02" / "03-01-04-01-01-01-02.flac"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    garbage = root / "Actor_02" / "03-01-06-01-01-01-02.wav"
    garbage.write_bytes(b"this is not audio" * 50)

    corpus = load_corpus("ravdess", root)
    reasons = {Path(s.path).name: s.reason for s in corpus.skipped}
    assert len(corpus) == 6
    assert "zero-length" in reasons[zero.name]
    assert "truncated" in reasons[truncated.name]
    assert "unreadable audio" in reasons[garbage.name]


def test_strict_mode_raises_one_line_error_naming_the_file(tmp_path):
    root = tiny_ravdess(tmp_path)
    bad = root / "Actor_01" / "03-01-03-01-01-01-01.flac"
    bad.write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_corpus("ravdess", root, strict=True)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name, problem",
    [
        ("03-01-09-01-01-01-01", "unknown emotion code '09'"),
        ("03-02-01-01-01-01-01", "song"),
        ("03-01-01-03-01-01-01", "unknown intensity"),
        ("hello", "not a RAVDESS code"),
    ],
)
def test_bad_file_names_are_skipped_with_the_reason(tmp_path, name, problem):
    root = tiny_ravdess(tmp_path)
    write(root / "Actor_01" / f"{name}.wav")
    corpus = load_corpus("ravdess", root)
    assert len(corpus) == 6
    [skipped] = corpus.skipped
    assert skipped.path.endswith(f"{name}.wav") and problem in skipped.reason


def test_file_in_the_wrong_actor_folder_is_skipped(tmp_path):
    root = tiny_ravdess(tmp_path)
    write(root / "Actor_01" / "03-01-03-01-01-01-02.wav")
    [skipped] = load_corpus("ravdess", root).skipped
    assert "Actor_01" in skipped.reason


def test_same_utterance_as_wav_and_flac_is_kept_once(tmp_path):
    root = tiny_ravdess(tmp_path)
    write(root / "Actor_01" / "03-01-01-01-01-01-01.flac")
    corpus = load_corpus("ravdess", root)
    assert len(corpus) == 6 and len(corpus.skipped) == 1


def test_missing_and_empty_folders_raise_clear_errors(tmp_path):
    with pytest.raises(DataError, match="RAVDESS folder not found"):
        load_corpus("ravdess", tmp_path / "nope")
    with pytest.raises(DataError, match="no Actor_XX folders"):
        load_corpus("ravdess", tmp_path)
    (tmp_path / "Actor_01").mkdir()
    with pytest.raises(DataError, match="no .wav or .flac"):
        load_corpus("ravdess", tmp_path)


def test_all_files_unusable_is_an_error_naming_the_first(tmp_path):
    (tmp_path / "Actor_01").mkdir()
    (tmp_path / "Actor_01" / "03-01-01-01-01-01-01.wav").write_bytes(b"")
    with pytest.raises(DataError, match="no usable utterances.*zero-length"):
        load_corpus("ravdess", tmp_path)


def test_unknown_label_set_is_a_label_error(tmp_path):
    with pytest.raises(LabelError, match="unknown label set"):
        load_corpus("ravdess", tiny_ravdess(tmp_path), "ravdess5")


def test_parse_name_reads_all_seven_fields():
    code = parse_name("03-01-06-02-02-02-24")
    assert code == {
        "modality": "audio-only", "emotion_code": "06", "emotion": "fearful", "intensity": "strong",
        "statement": "02", "repetition": 2, "actor": 24, "gender": "female",
    }


def test_loader_does_not_import_torch(tmp_path):
    import subprocess

    code = (
        "import sys; from emofuse.corpora import load_corpus; "
        f"load_corpus('ravdess', {str(tiny_ravdess(tmp_path))!r}); "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.data
def test_real_ravdess_has_1440_utterances_24_speakers_672_in_four_classes(ravdess_root):
    corpus = load_corpus("ravdess", ravdess_root)
    assert len(corpus) == 1440 and not corpus.skipped
    assert len(set(corpus.speakers)) == 24
    assert Counter(corpus.labels)["neutral"] == 96 and len(set(corpus.labels)) == 8
    four = load_corpus("ravdess", ravdess_root, "ravdess4")
    assert len(four) == 672
    assert Counter(four.labels) == {"neutral": 96, "happy": 192, "sad": 192, "angry": 192}
    assert sum(four.excluded.values()) == 1440 - 672
