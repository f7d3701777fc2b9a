"""The steps every corpus loader shares (`corpora.common.Scan`): label, probe, record, finish."""

from __future__ import annotations

import pytest
import soundfile as sf

from emofuse.corpora.common import Scan
from emofuse.corpora.labels import get_label_set
from emofuse.errors import DataError
from helpers import tone


def test_a_bad_file_is_reported_once_unless_each_line_is_named(tmp_path):
    missing = tmp_path / "gone.wav"
    scan = Scan(None)
    assert scan.duration(missing) is None and scan.duration(missing) is None
    assert [(s.path, s.reason) for s in scan.problems.skipped] == [(str(missing), "audio file not found")]
    scan = Scan(None)
    scan.duration(missing, line="manifest line 2")
    scan.duration(missing, line="manifest line 3")
    assert [s.reason for s in scan.problems.skipped] == [
        "audio file not found (manifest line 2)", "audio file not found (manifest line 3)",
    ]


def test_duration_is_the_audio_length(tmp_path):
    sf.write(tmp_path / "a.wav", tone(0.5), 16000)
    assert Scan(None).duration(tmp_path / "a.wav") == pytest.approx(0.5)


def test_a_second_record_with_the_same_id_is_skipped_naming_its_source(tmp_path):
    scan = Scan(None)
    for line in ("m.csv:2", "m.csv:3"):
        scan.add(line, id="u1", audio=tmp_path / "a.wav", speaker="s", label="angry", original_label="angry")
    [utterance] = scan.utterances
    assert utterance.audio == str((tmp_path / "a.wav").resolve())
    [skipped] = scan.problems.skipped
    assert skipped.path == "m.csv:3" and "'u1' appears twice" in skipped.reason


def test_labels_are_mapped_counted_or_skipped():
    scan = Scan(get_label_set("ravdess4"))
    assert scan.label("happy", "f1") == "happy"
    assert scan.label("calm", "f2") is None and scan.excluded == {"calm": 1}
    assert scan.label("bored", "f3") is None and scan.problems.skipped[0].path == "f3"


def test_strict_scan_raises_at_the_first_problem(tmp_path):
    with pytest.raises(DataError, match="gone.wav: audio file not found"):
        Scan(None, strict=True).duration(tmp_path / "gone.wav")


def test_progress_counts_every_item():
    seen = []
    scan = Scan(None, progress=lambda done, total: seen.append((done, total)))
    assert list(scan.each("abc")) == ["a", "b", "c"]
    assert seen == [(1, 3), (2, 3), (3, 3)]
