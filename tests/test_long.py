"""Long recordings predicted per speech segment: boundaries, outputs, the timeline, timed transcripts."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from emofuse.align.segments import Segment, SegmentSettings
from emofuse.align.subtitles import read_timed_transcript
from emofuse.cli import app
from emofuse.inference.long import TRUNCATED, predict_long, segment_result, segment_rows
from emofuse.inference.predictor import Prediction, PredictionError, Predictor, WordExplanation
from emofuse.inference.timeline import render_timeline_html
from helpers import CLASSES, STATEMENT_2, joined_speech, ravdess_files, registry_model_dir

SR = 16000
PAUSES = [1.0, 0.8, 1.5, 1.2, 0.9]  # seconds of silence before each clip
runner = CliRunner()
pytestmark = [pytest.mark.data, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def joined(ravdess_root, tmp_path_factory):
    """Five RAVDESS utterances of statement 2 (four emotions, two actors), each cut to its
    speech span, joined with known pauses and a second of silence at the end: (path, truth).
    Statement 2 starts with a voiced /d/ on which the detectors agree (tests/test_segments.py);
    the /k/ burst of statement 1 opens Silero's segments up to 0.2 s late."""
    clips = ravdess_files(ravdess_root, actors=[1, 2], statement="02")[: len(PAUSES)]
    if len(clips) < len(PAUSES):
        pytest.skip(f"RAVDESS under {ravdess_root} lacks the statement-2 clips of actors 1 and 2")
    audio, truth = joined_speech(clips, PAUSES)
    path = tmp_path_factory.mktemp("long") / "joined.flac"
    sf.write(path, audio, SR)
    return path, truth


@pytest.fixture(scope="module")
def acoustic_dir(tmp_path_factory):
    return registry_model_dir(tmp_path_factory.mktemp("aco") / "model", "B-ACO-1+attn", words=None)


@pytest.fixture(scope="module")
def hmm4_dir(tmp_path_factory):
    return registry_model_dir(tmp_path_factory.mktemp("hmm4") / "model", "H-MM-4", word_layers=1)


@pytest.fixture(scope="module")
def acoustic(acoustic_dir):
    return Predictor(acoustic_dir, warm=False)


def test_each_joined_utterance_is_one_segment_with_its_boundaries(joined, acoustic):
    path, truth = joined
    result = predict_long(acoustic, path, SegmentSettings(pad=0.0), detector="silero")
    assert result.detector == "silero" and result.fallbacks == []
    assert len(result.segments) == len(truth)
    for segment, (start, end) in zip(result.segments, truth):
        assert abs(segment.start - start) <= 0.1 and abs(segment.end - end) <= 0.1, (segment.start, segment.end, start, end)
        assert segment.label in CLASSES and sum(segment.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert segment.words == [] and segment.warnings == []


def test_a_segment_is_predicted_from_its_own_stretch_of_audio_across_blocks(joined, acoustic):
    path, _ = joined
    whole, _ = sf.read(path, dtype="float32")
    result = predict_long(acoustic, path, detector="energy", block_seconds=1.3, batch_size=2)
    assert len(result.segments) == len(PAUSES)
    for segment in result.segments:
        alone = acoustic.predict_audio(whole[int(round(segment.start * SR)): int(round(segment.end * SR))])
        assert alone.probabilities == pytest.approx(segment.probabilities, abs=1e-5)


def _clipped_prediction() -> Prediction:
    words = [WordExplanation("dogs", 0.1, 0.4, {"gate": 0.25}), WordExplanation("door", float("nan"), float("nan"))]
    return Prediction("x.wav", "sad", {"sad": 0.7, "angry": 0.3}, words, 2.0, "asr",
                      fallbacks=["forced->asr: no transcript"], truncated=True,
                      warnings=["the recording clips: 3% of samples at full scale"])


def test_a_segment_keeps_its_predictions_fallbacks_warnings_and_truncation():
    record = segment_result(Segment(10.0, 12.0), _clipped_prediction(), ["the cue is cut"]).to_json()
    assert record["warnings"] == ["forced->asr: no transcript", "the recording clips: 3% of samples at full scale",
                                  TRUNCATED, "the cue is cut"]
    assert (record["start"], record["end"], record["label"]) == (10.0, 12.0, "sad")
    assert record["words"] == [{"text": "dogs", "start": 10.1, "end": 10.4, "gate": 0.25},
                               {"text": "door", "start": None, "end": None}]


def test_a_segment_reads_the_same_from_a_prediction_or_its_json_and_a_failure_keeps_its_times():
    prediction, segment = _clipped_prediction(), Segment(10.0, 12.0)
    assert segment_result(segment, prediction.to_json()).to_json() == segment_result(segment, prediction).to_json()
    failed = segment_result(segment, PredictionError("x.wav", "no words recognised")).to_json()
    assert failed == {"start": 10.0, "end": 12.0, "label": None, "probabilities": {}, "words": [],
                      "warnings": ["no words recognised"]}
    whole = segment_rows([prediction])[0]  # a file predicted whole is one segment from 0
    assert (whole["file"], whole["start"], whole["end"]) == ("x.wav", 0.0, 2.0)
    assert whole["warnings"][1] == "the recording clips: 3% of samples at full scale"


def test_the_summary_shares_speech_time_and_ranks_the_strongest_segments(joined, acoustic):
    result = predict_long(acoustic, joined[0], detector="energy")
    summary = result.summary(strongest=3)
    assert sum(summary["share"].values()) == pytest.approx(1.0, abs=1e-3)
    for label, share in summary["share"].items():
        seconds = sum(s.duration for s in result.segments if s.label == label)
        assert share == pytest.approx(seconds / summary["speech_seconds"], abs=1e-3)
    ranked = [s["probability"] for s in summary["strongest"]]
    assert len(ranked) == 3 and ranked == sorted(ranked, reverse=True)
    assert ranked[0] == pytest.approx(max(s.confidence for s in result.segments), abs=1e-6)
    envelope = result.envelope
    assert 0 < len(envelope) <= 4000 and np.all(envelope[:, 0] <= envelope[:, 1])


def test_a_subtitle_file_drives_the_segments_and_words_align_within_each(joined, hmm4_dir, tmp_path):
    path, truth = joined
    stamp = lambda t: f"00:00:{int(t):02d},{int(round((t % 1) * 1000)):03d}"  # noqa: E731
    cues = [(max(0.0, a - 0.05), b + 0.05) for a, b in truth[:3]]
    srt = tmp_path / "cues.srt"
    srt.write_text("".join(f"{i + 1}\n{stamp(a)} --> {stamp(b)}\n{STATEMENT_2}\n\n" for i, (a, b) in enumerate(cues)))
    result = predict_long(Predictor(hmm4_dir, warm=False), path, cues=read_timed_transcript(srt))
    assert result.detector == "transcript" and len(result.segments) == 3
    for segment, (start, end) in zip(result.segments, cues):
        assert (segment.start, segment.end) == pytest.approx((start, end), abs=1e-3)
        assert segment.text == STATEMENT_2 and segment.label in CLASSES
        assert [w.text for w in segment.words] == ["dogs", "are", "sitting", "by", "the", "door"]
        assert all(start - 1e-6 <= w.start <= w.end <= end + 1e-6 for w in segment.words)
        assert all({"gate", "attention"} <= set(w.values) for w in segment.words)


def test_cues_past_the_end_of_the_audio_are_cut_or_reported(joined, acoustic, tmp_path):
    path, truth = joined
    duration = sf.info(str(path)).duration
    table = tmp_path / "cues.csv"
    table.write_text(f"start,end,text\n{truth[0][0]},{truth[0][1]},one\n{truth[-1][0]},{duration + 2},two\n"
                     f"{duration + 3},{duration + 4},three\n")
    result = predict_long(acoustic, path, cues=read_timed_transcript(table))
    assert [s.text for s in result.segments] == ["one", "two", "three"]
    assert result.segments[1].end == pytest.approx(duration, abs=1e-3) and result.segments[1].label in CLASSES
    assert any("cut there" in w for w in result.segments[1].warnings)
    assert result.segments[2].label is None and "after the audio ends" in result.segments[2].warnings[0]
    assert result.summary()["failed_segments"] == 1


def test_predict_json_gives_one_object_per_file_with_its_segments(joined, acoustic_dir):
    path, truth = joined
    result = runner.invoke(app, ["predict", str(acoustic_dir), str(path), "--segments", "--json", "--vad", "silero"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 1
    record = records[0]
    assert record["file"] == str(path) and record["detector"] == "silero" and len(record["segments"]) == len(truth)
    assert {"start", "end", "label", "probabilities", "words", "warnings"} <= set(record["segments"][0])
    assert set(record["summary"]["share"]) == set(CLASSES)


def test_predict_out_writes_one_row_per_segment_as_csv_or_jsonl(joined, acoustic_dir, tmp_path):
    path, truth = joined
    for name in ("rows.csv", "rows.jsonl"):
        result = runner.invoke(app, ["predict", str(acoustic_dir), str(path), "--segments", "--vad", "energy",
                                     "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "rows.csv").open()))
    lines = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == len(lines) == len(truth)
    for row, line in zip(rows, lines):
        assert row["file"] == line["file"] == str(path) and row["label"] == line["label"] in CLASSES
        assert float(row["start"]) == pytest.approx(line["start"], abs=1e-3)
        assert float(row[f"p_{row['label']}"]) == pytest.approx(line["probabilities"][row["label"]], abs=1e-5)


def test_only_files_longer_than_segment_over_are_segmented(joined, acoustic_dir, ravdess_root, tmp_path):
    path, truth = joined
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "long.flac").symlink_to(path)
    (folder / "short.flac").symlink_to(ravdess_files(ravdess_root)[0])  # ~3.5 s
    result = runner.invoke(app, ["predict", str(acoustic_dir), str(folder), "--segment-over", "10", "--json",
                                 "--out", str(tmp_path / "rows.jsonl")])
    assert result.exit_code == 0, result.output
    records = {json.loads(l)["file"]: json.loads(l) for l in result.stdout.splitlines() if l.startswith("{")}
    assert len(records["" + str(folder / "long.flac")]["segments"]) == len(truth)
    assert "segments" not in records[str(folder / "short.flac")] and records[str(folder / "short.flac")]["label"] in CLASSES
    rows = [json.loads(l) for l in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == len(truth) + 1  # the short file is one segment from 0 to its end
    assert "2 of 2 file(s) predicted" in result.stderr


def test_the_timeline_page_holds_every_segment_and_fetches_nothing(joined, hmm4_dir, acoustic_dir, tmp_path):
    path, truth = joined
    page = tmp_path / "timeline.html"
    result = runner.invoke(app, ["predict", str(acoustic_dir), str(path), "--segments", "--vad", "energy",
                                 "--html", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert text.startswith("<!doctype html>") and "<svg" in text
    panels = set(re.findall(r'<div class="ef-detail ef-panel" id="(t0-s\d+)"', text))
    strips = set(re.findall(r'<rect class="ef-seg" data-panel="(t0-s\d+)"', text))
    assert len(panels) == len(truth) and strips == panels
    assert not re.search(r'(src|href)="(https?:)?//', text), "the page must not fetch anything"
    # With words: each segment's panel holds its word chips, as today's explanation does.
    table = tmp_path / "cues.csv"
    table.write_text("start,end,text\n" + "".join(f"{a - 0.05},{b + 0.05},{STATEMENT_2}\n" for a, b in truth))
    cues = read_timed_transcript(table)
    with_words = render_timeline_html([predict_long(Predictor(hmm4_dir, warm=False), path, cues=cues)])
    assert with_words.count('<div class="ef-w">door</div>') == len(truth)
    assert with_words.count("<style>") == 1, "the CSS is written once, not once per segment"


def test_segments_from_a_folder_or_a_bad_transcript_is_one_clear_line(joined, acoustic_dir, tmp_path):
    path, _ = joined
    result = runner.invoke(app, ["predict", str(acoustic_dir), str(path.parent), "--segments-from", str(path)])
    assert result.exit_code != 0 and "--segments-from" in str(result.exception or result.output)
    bad = tmp_path / "bad.csv"
    bad.write_text("start,end,text\n2.0,1.0,backwards\n")
    result = runner.invoke(app, ["predict", str(acoustic_dir), str(path), "--segments-from", str(bad)])
    assert result.exit_code != 0 and "bad.csv" in str(result.exception or result.output)


def test_read_ahead_ends_when_the_consumer_fails_with_the_queue_full():
    """The reader thread must not block forever on a full queue once the consumer has stopped
    (a model error mid-file, or Ctrl-C): closing the generator returns promptly."""
    import threading
    import time

    from emofuse.inference.long import _ahead

    def many():  # three items for a queue of two: after the consumer's first, the reader
        yield from range(3)  # has queued the other two and waits to hand over its end marker

    closed = threading.Event()

    def consume():
        reader = _ahead(many(), 2)
        next(reader)
        time.sleep(0.5)  # the reader fills the queue and waits to hand over its last items
        reader.close()  # what an exception in the consumer's loop does
        closed.set()

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    assert closed.wait(10), "the read-ahead thread blocked on a full queue after the consumer stopped"


def test_a_failed_segment_names_the_recording_as_given_and_its_time_span(joined, acoustic, tmp_path):
    """A cue over silence fails for real (no speech); with `name` (the service's upload name)
    the warning names it and the span, never the temporary copy's path."""
    path, truth = joined
    copy = tmp_path / "emofuse-upload-ab12cd.flac"
    copy.write_bytes(path.read_bytes())
    silent = (truth[0][1] + 0.2, truth[1][0] - 0.2)  # inside the pause after the first utterance
    table = tmp_path / "cues.csv"
    table.write_text(f"start,end,text\n{truth[0][0]},{truth[0][1]},one\n{silent[0]},{silent[1]},two\n")
    result = predict_long(acoustic, copy, cues=read_timed_transcript(table), name="meeting.flac")
    assert result.file == "meeting.flac" and result.segments[0].label in CLASSES
    failed = result.segments[1]
    assert failed.label is None
    (warning,) = failed.warnings
    assert warning.startswith(f"meeting.flac {silent[0]:.2f}-{silent[1]:.2f} s: no speech in the audio"), warning
    assert str(tmp_path) not in json.dumps(result.to_json())
    plain = predict_long(acoustic, copy, cues=read_timed_transcript(table))  # the CLI names its own file
    assert plain.file == str(copy) and plain.segments[1].warnings[0].startswith(f"{copy} {silent[0]:.2f}-")


def test_an_unreadable_upload_is_named_as_given_never_by_its_temporary_path(acoustic, tmp_path):
    from emofuse.errors import DataError

    copy = tmp_path / "emofuse-upload-ab12cd.flac"
    copy.write_bytes(b"fLaC" + b"\x00" * 200)  # a FLAC signature and no stream
    with pytest.raises(DataError) as info:
        predict_long(acoustic, copy, name="meeting.flac")
    assert str(info.value).startswith("meeting.flac: ") and str(tmp_path) not in str(info.value)
    assert "emofuse-upload" not in str(info.value)


def test_a_long_upload_answers_its_failed_segments_without_the_servers_temporary_path(joined, acoustic_dir,
                                                                                      monkeypatch):
    """POST /predict of a long recording whose second segment fails (a simulated alignment
    failure, raised where the real one is): the warning names the upload and the segment's span."""
    from fastapi.testclient import TestClient

    from emofuse.errors import DataError
    from emofuse.serving.app import ServeSettings, create_app

    path, truth = joined
    app = create_app(acoustic_dir, ServeSettings(workers=0, max_seconds=60.0, segment_over=5.0))
    predictor = app.state.predictor
    features, calls = predictor.features, []

    def second_fails(audio, transcript=None, label="<audio>", *args, **kwargs):
        calls.append(label)
        if len(calls) == 2:
            raise DataError(label, "no words could be aligned")
        return features(audio, transcript, label, *args, **kwargs)

    monkeypatch.setattr(predictor, "features", second_fails)
    with TestClient(app) as client:
        answer = client.post("/predict", files={"file": ("meeting.flac", path.read_bytes(), "audio/flac")})
    assert answer.status_code == 200, answer.text
    record = answer.json()
    assert record["file"] == "meeting.flac" and len(record["segments"]) == len(truth)
    second = record["segments"][1]
    assert second["label"] is None
    assert second["warnings"] == [f"meeting.flac {second['start']:.2f}-{second['end']:.2f} s: no words could be aligned"]
    assert "/tmp" not in answer.text and "emofuse-upload" not in answer.text


@pytest.mark.parametrize("text, expected", [
    ("cannot read /tmp/emofuse-upload-x1.flac here", "cannot read call.flac here"),  # the upload, by its name
    ("cannot read /srv/data/other.flac here", "cannot read other.flac here"),
    ("at /srv/models/", "at models"),
    ("file:///srv/models/x.onnx failed", "x.onnx failed"),
    ("in (/usr/lib/python3/x.so)", "in (x.so)"),
    ("'/a/b/c.wav': bad", "'c.wav': bad"),
    ("POST /predict, ratio 3/4, http://host/a/b", "POST /predict, ratio 3/4, http://host/a/b"),  # not paths
])
def test_without_paths_leaves_no_server_path(text, expected):
    from emofuse.inference.long import without_paths

    assert without_paths(text, "/tmp/emofuse-upload-x1.flac", "call.flac") == expected


def test_whether_a_recording_is_long_is_decided_from_its_header_in_one_place():
    from emofuse.features.audio import AudioHeader
    from emofuse.inference.long import is_long

    assert is_long(AudioHeader(16000, 1, 31.0, "soundfile"), 30.0)
    assert not is_long(AudioHeader(16000, 1, 30.0, "soundfile"), 30.0)
    assert not is_long(AudioHeader(16000, 1, 3600.0, "pyav"), 30.0)  # decoded whole: never per segment
    assert not is_long(AudioHeader(16000, 1, None, "soundfile"), 30.0)
    assert not is_long(AudioHeader(16000, 1, 3600.0, "soundfile"), None)


def test_the_cli_the_service_and_its_jobs_all_ask_is_long(ravdess_root, acoustic_dir, tmp_path, monkeypatch):
    """A short file that the one decision calls long is predicted per segment by every entry point."""
    from fastapi.testclient import TestClient

    from emofuse.inference import long
    from emofuse.serving.app import ServeSettings, create_app

    short = ravdess_files(ravdess_root)[0]  # ~3.5 s, under every --segment-over here
    asked = []
    monkeypatch.setattr(long, "is_long", lambda header, over: asked.append(header.duration) or True)
    result = runner.invoke(app, ["predict", str(acoustic_dir), str(short), "--json", "--vad", "energy"])
    assert result.exit_code == 0, result.output
    assert "segments" in json.loads(next(l for l in result.stdout.splitlines() if l.startswith("{")))
    with TestClient(create_app(acoustic_dir, ServeSettings(workers=0, segment_over=30.0))) as client:
        answer = client.post("/predict", files={"file": (short.name, short.read_bytes(), "audio/wav")})
    assert answer.status_code == 200, answer.text
    assert "segments" in answer.json()
    assert len(asked) == 2 and all(0 < d < 30 for d in asked)
