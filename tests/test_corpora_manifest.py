"""Generic manifest loader: CSV / JSONL tables for any other corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from emofuse.corpora import Corpus, load_corpus
from emofuse.errors import DataError
from helpers import tone


def audio_folder(root: Path) -> Path:
    (root / "wav" / "spk1").mkdir(parents=True)
    sf.write(root / "wav" / "spk1" / "a.wav", tone(1.0), 16000)
    sf.write(root / "wav" / "spk1" / "b.flac", tone(0.5), 16000)
    sf.write(root / "call.wav", tone(4.0), 16000)
    return root


def test_csv_paths_resolve_against_the_manifest_folder(tmp_path):
    root = audio_folder(tmp_path / "corpus")
    (root / "m.csv").write_text(
        "path,label,speaker,transcript,gender\n"
        "wav/spk1/a.wav,angry,spk1,I said no,f\n"
        "wav/spk1/b.flac,neutral,spk1,,f\n"
    )
    corpus = load_corpus("manifest", root / "m.csv")
    a, b = corpus
    assert a.audio == str((root / "wav/spk1/a.wav").resolve()) and a.id == "wav/spk1/a"
    assert a.label == "angry" and a.original_label == "angry" and a.transcript == "I said no"
    assert b.transcript is None and a.meta == {"gender": "f", "duration": 1.0}
    assert corpus.name == "m" and not corpus.skipped


def test_segments_of_a_long_recording_with_sessions(tmp_path):
    root = audio_folder(tmp_path)
    (root / "calls.csv").write_text(
        "path,label,speaker,start,end,session\n"
        "call.wav,angry,agent7,0.0,1.5,day1\n"
        "call.wav,neutral,caller3,1.5,3.9,day1\n"
        "call.wav,neutral,caller3,3.0,9.0,day1\n"  # past the end of the 4 s file
    )
    corpus = load_corpus("manifest", root / "calls.csv")
    assert [u.id for u in corpus] == ["call@0.000", "call@1.500"]
    assert corpus[1].start == 1.5 and corpus[1].end == 3.9 and corpus[1].session == "day1"
    [skipped] = corpus.skipped
    assert skipped.path == f"{root / 'calls.csv'}:4" and "lies outside" in skipped.reason


def test_jsonl_rows_may_carry_word_timings(tmp_path):
    root = audio_folder(tmp_path)
    rows = [
        {"path": "wav/spk1/a.wav", "label": "happy", "speaker": "s1", "id": "u1",
         "words": [{"text": "hello", "start": 0.1, "end": 0.4}]},
        {"path": str((root / "call.wav").resolve()), "label": "sad", "speaker": "s2", "id": "u2"},
    ]
    (root / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    corpus = load_corpus("manifest", root / "m.jsonl")
    assert [u.id for u in corpus] == ["u1", "u2"]
    assert corpus[0].words[0].text == "hello" and corpus[1].words is None
    [skipped] = corpus.skipped
    assert skipped.path == f"{root / 'm.jsonl'}:3" and "not valid JSON" in skipped.reason


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_missing_required_column_names_file_and_column(tmp_path, suffix):
    path = tmp_path / f"m.{suffix}"
    if suffix == "csv":
        path.write_text("path,label\na.wav,angry\n")
    else:
        path.write_text(json.dumps({"path": "a.wav", "label": "angry"}) + "\n")
    with pytest.raises(DataError) as info:
        load_corpus("manifest", path)
    assert str(path) in str(info.value) and "missing required column(s) speaker" in str(info.value)


def test_bad_rows_are_skipped_with_line_numbers(tmp_path):
    root = audio_folder(tmp_path)
    (root / "empty.wav").write_bytes(b"")
    (root / "m.csv").write_text(
        "path,label,speaker\n"
        "wav/spk1/a.wav,angry,spk1\n"
        "missing.wav,angry,spk1\n"
        "empty.wav,angry,spk1\n"
        "wav/spk1/b.flac,,spk1\n"
    )
    corpus = load_corpus("manifest", root / "m.csv")
    assert len(corpus) == 1
    reasons = [(Path(s.path.split(":")[0]).name, s.reason) for s in corpus.skipped]
    assert reasons == [
        ("missing.wav", "audio file not found (manifest line 3)"),
        ("empty.wav", "zero-length audio file (0 bytes) (manifest line 4)"),
        ("m.csv", "empty label"),
    ]


def test_label_set_maps_and_unknown_labels_are_reported(tmp_path):
    root = audio_folder(tmp_path)
    (root / "m.csv").write_text(
        "path,label,speaker\nwav/spk1/a.wav,ang,s1\nwav/spk1/b.flac,fru,s1\ncall.wav,bored,s2\n"
    )
    corpus = load_corpus("manifest", root / "m.csv", "iemocap4")
    assert [(u.label, u.original_label) for u in corpus] == [("angry", "ang")]
    assert corpus.excluded == {"fru": 1}
    assert "unknown label 'bored'" in corpus.skipped[0].reason


def test_prepared_manifest_reads_back_and_can_be_remapped(tmp_path):
    root = audio_folder(tmp_path)
    (root / "m.csv").write_text("path,label,speaker\nwav/spk1/a.wav,calm,s1\ncall.wav,sad,s2\n")
    written = load_corpus("manifest", root / "m.csv").write(tmp_path / "out" / "m.jsonl")
    again = load_corpus("manifest", written)
    assert [u.id for u in again] == ["wav/spk1/a", "call"]
    four = load_corpus("manifest", written, "ravdess4")
    assert [u.label for u in four] == ["sad"] and four.excluded == {"calm": 1}
    assert len(Corpus.read(written)) == 2


def test_missing_empty_and_unknown_format_manifests_raise(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        load_corpus("manifest", tmp_path / "none.csv")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="empty manifest"):
        load_corpus("manifest", tmp_path / "e.csv")
    (tmp_path / "m.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown manifest format"):
        load_corpus("manifest", tmp_path / "m.xlsx")
