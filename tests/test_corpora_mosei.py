"""CMU-MOSEI loader: the class rule, the raw layout, CSV and .csd labels."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf

from emofuse.corpora import load_corpus
from emofuse.corpora.mosei import NO_EMOTION, TIE, mosei_class
from emofuse.errors import DataError
from helpers import tone

COLUMNS = ("happy", "sad", "anger", "surprise", "disgust", "fear")


def intensities(*values):
    return dict(zip(COLUMNS, values))


def test_class_is_the_strongest_emotion():
    assert mosei_class(intensities(0.3, 0, 1.7, 0, 0.6, 0)) == ("angry", None)
    assert mosei_class(intensities(0, 0, 0, 0, 0, 0.1)) == ("fear", None)


def test_all_zero_intensities_carry_no_emotion():
    assert mosei_class(intensities(0, 0, 0, 0, 0, 0)) == (None, NO_EMOTION)


def test_ties_are_dropped_by_default_or_broken_by_fixed_priority():
    tied = intensities(0, 1.0, 0, 0, 1.0, 0)  # sad = disgust
    assert mosei_class(tied) == (None, TIE)
    assert mosei_class(tied, ties="priority") == ("sad", None)
    assert mosei_class(intensities(0.5, 0, 0, 0.5, 0, 0), ties="priority") == ("happy", None)
    with pytest.raises(ValueError):
        mosei_class(tied, ties="random")


# video -> (seconds of audio, [(segment, start, end, text, intensities)])
VIDEOS = {
    "vidA": (6.0, [
        ("0", 0.0, 2.0, "I loved this movie", intensities(2.0, 0, 0, 0.3, 0, 0)),
        ("1", 2.5, 4.0, "but the ending", intensities(0, 1.0, 0, 0, 1.0, 0)),  # tie
        ("2", 4.0, 6.5, "made me so mad", intensities(0, 0, 2.3, 0, 0.6, 0)),  # end past the audio
    ]),
    "vidB": (3.0, [
        ("0", -0.4, 1.5, "nothing special", intensities(0, 0, 0, 0, 0, 0)),  # no emotion
        ("1", 1.5, 3.0, "oh wow", intensities(0, 0, 0, 1.3, 0, 0)),
    ]),
}


def tiny_mosei(root: Path, labels: str = "csv") -> Path:
    audio = root / "Raw" / "Audio" / "Full" / "WAV_16000"
    text = root / "Raw" / "Transcript" / "Segmented" / "Combined"
    audio.mkdir(parents=True)
    text.mkdir(parents=True)
    rows = ["video,start,end," + ",".join(COLUMNS) + ",split"]
    for video, (seconds, segments) in VIDEOS.items():
        sf.write(audio / f"{video}.wav", tone(seconds), 16000)
        (text / f"{video}.txt").write_text(
            "".join(f"{video}___{seg}___{s}___{e}___{t}\n" for seg, s, e, t, _ in segments)
        )
        for _, s, e, _, values in segments:
            # label times differ a little from the transcript's, as the SDK's do
            rows.append(f"{video},{s + 0.01},{e - 0.01}," + ",".join(str(values[c]) for c in COLUMNS) + ",train")
    if labels == "csv":
        (root / "mosei_labels.csv").write_text("\n".join(rows) + "\n")
    else:
        with h5py.File(root / "CMU_MOSEI_Labels.csd", "w") as f:
            for video, (_, segments) in VIDEOS.items():
                group = f.create_group(f"All Labels/data/{video}")
                group["features"] = np.array([[0.5, *[v[c] for c in COLUMNS]] for *_, v in segments], dtype=np.float32)
                group["intervals"] = np.array([[s, e] for _, s, e, _, _ in segments])
            f.create_group("All Labels/metadata")
    return root


@pytest.mark.parametrize("labels", ["csv", "csd"])
def test_segments_of_the_video_audio_become_utterances(tmp_path, labels):
    corpus = load_corpus("mosei", tiny_mosei(tmp_path, labels))
    by_id = {u.id: u for u in corpus}
    assert set(by_id) == {"vidA_0", "vidA_2", "vidB_1"}
    assert corpus.excluded == {TIE: 1, NO_EMOTION: 1}
    a0 = by_id["vidA_0"]
    assert a0.label == "happy" and a0.speaker == "vidA" and a0.transcript == "I loved this movie"
    assert a0.start == pytest.approx(0.0, abs=0.02) and a0.end == pytest.approx(2.0, abs=0.02)
    assert by_id["vidA_2"].label == "angry" and by_id["vidA_2"].end == pytest.approx(6.0)  # clamped to the audio
    assert Path(a0.audio).name == "vidA.wav"
    assert a0.meta["intensities"]["happy"] == pytest.approx(2.0)
    assert not corpus.skipped


def test_split_column_goes_to_meta(tmp_path):
    corpus = load_corpus("mosei", tiny_mosei(tmp_path))
    assert {u.meta["split"] for u in corpus} == {"train"}


def test_priority_ties_keep_the_tied_segment(tmp_path):
    corpus = load_corpus("mosei", tiny_mosei(tmp_path), ties="priority")
    assert {u.id: u.label for u in corpus}["vidA_1"] == "sad"


def test_missing_video_audio_is_skipped_once(tmp_path):
    root = tiny_mosei(tmp_path)
    wav = root / "Raw/Audio/Full/WAV_16000/vidA.wav"
    wav.write_bytes(b"")
    corpus = load_corpus("mosei", root)
    assert [s.path for s in corpus.skipped] == [str(wav)]
    assert {u.id for u in corpus} == {"vidB_1"}


def test_label_csv_without_intensity_columns_is_an_error(tmp_path):
    root = tiny_mosei(tmp_path)
    (root / "mosei_labels.csv").write_text("video,start,end,happy\nvidA,0,1,1\n")
    with pytest.raises(DataError, match=r"mosei_labels.csv: missing column\(s\) sad, anger"):
        load_corpus("mosei", root)


def test_non_numeric_intensity_is_skipped_with_its_row(tmp_path):
    root = tiny_mosei(tmp_path)
    labels = root / "mosei_labels.csv"
    lines = labels.read_text().splitlines()
    lines[1] = lines[1].replace(",2.0,", ",lots,", 1)
    labels.write_text("\n".join(lines) + "\n")
    corpus = load_corpus("mosei", root)
    assert [(s.path, s.reason) for s in corpus.skipped] == [(f"{labels}:2", "non-numeric intensity or time")]


def test_missing_layout_raises(tmp_path):
    with pytest.raises(DataError, match="WAV_16000"):
        load_corpus("mosei", tmp_path)
    (tmp_path / "Audio/Full/WAV_16000").mkdir(parents=True)
    with pytest.raises(DataError, match="no MOSEI label file"):
        load_corpus("mosei", tmp_path)
