"""MELD loader: CSVs (text-only) and mp4 clips decoded through PyAV; and the real CSVs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from emofuse.corpora import load_corpus
from emofuse.corpora.meld import parse_time
from emofuse.errors import DataError
from helpers import tone

HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
ROWS = {
    "train": [
        '1,"Oh my God, he’s lost it. He’s totally lost it.",Phoebe,sadness,negative,0,0,4,7,"00:20:57,256","00:21:00,049"',
        '2,What?,Monica,surprise,negative,0,1,4,7,"00:21:01,927","00:21:03,261"',
    ],
    "dev": ['1,“Fine.”,Ross,neutral,neutral,3,0,2,1,"00:01:02,500","00:01:03,000"'],
    "test": ['1,Yeah!,Phoebe,joy,positive,7,2,5,9,"00:10:00,000","00:10:01,500"'],
}


def tiny_meld(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in ROWS.items():
        (root / f"{split}_sent_emo.csv").write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    return root


def write_clip(path: Path, seconds: float = 0.5) -> Path:
    """A real mp4 with an AAC audio stream, like MELD.Raw's clips (video left out)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(tone(seconds)[None, :], format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def test_text_only_manifest_when_clips_are_absent(tmp_path):
    corpus = load_corpus("meld", tiny_meld(tmp_path))
    by_id = {u.id: u for u in corpus}
    assert set(by_id) == {"train_dia0_utt0", "train_dia0_utt1", "dev_dia3_utt0", "test_dia7_utt2"}
    u = by_id["train_dia0_utt0"]
    assert u.audio is None and u.speaker == "Phoebe" and u.label == "sadness"
    assert u.transcript == "Oh my God, he’s lost it. He’s totally lost it."  # typographic quotes kept
    assert u.meta["split"] == "train" and u.meta["dialogue"] == "train_dia0" and u.meta["sentiment"] == "negative"
    assert u.meta["episode_start"] == pytest.approx(20 * 60 + 57.256)
    assert by_id["dev_dia3_utt0"].transcript == "“Fine.”"
    assert not corpus.skipped


def test_one_csv_can_be_loaded_alone(tmp_path):
    corpus = load_corpus("meld", tiny_meld(tmp_path) / "dev_sent_emo.csv")
    assert [u.id for u in corpus] == ["dev_dia3_utt0"]


def test_clips_are_used_and_missing_or_broken_clips_skipped(tmp_path):
    root = tiny_meld(tmp_path)
    clip = write_clip(root / "train_splits" / "dia0_utt0.mp4")
    broken = root / "train_splits" / "dia0_utt1.mp4"
    broken.write_bytes(b"not an mp4 at all" * 20)
    write_clip(root / "test" / "output_repeated_splits_test" / "dia7_utt2.mp4")
    corpus = load_corpus("meld", root)
    by_id = {u.id: u for u in corpus}
    assert by_id["train_dia0_utt0"].audio == str(clip.resolve())
    assert by_id["test_dia7_utt2"].audio.endswith("output_repeated_splits_test/dia7_utt2.mp4")
    assert by_id["dev_dia3_utt0"].audio is None  # no dev clip folder: text only
    [skipped] = corpus.skipped
    assert skipped.path == str(broken) and "unreadable audio" in skipped.reason


def test_missing_clip_in_a_clip_folder_is_skipped(tmp_path):
    root = tiny_meld(tmp_path)
    write_clip(root / "train_splits" / "dia0_utt0.mp4")
    [skipped] = load_corpus("meld", root).skipped
    assert skipped.path.endswith("train_splits/dia0_utt1.mp4") and skipped.reason == "audio file not found"


def test_unknown_emotion_is_skipped_naming_the_row(tmp_path):
    root = tiny_meld(tmp_path)
    (root / "dev_sent_emo.csv").write_text(HEADER + '1,Hm.,Ross,boredom,neutral,3,0,2,1,"00:01:02,500","00:01:03,000"\n')
    corpus = load_corpus("meld", root)
    [skipped] = corpus.skipped
    assert skipped.path == f"{root / 'dev_sent_emo.csv'}:row 1" and "unknown label 'boredom'" in skipped.reason


def test_missing_column_is_an_error_naming_file_and_column(tmp_path):
    root = tiny_meld(tmp_path)
    (root / "test_sent_emo.csv").write_text("Sr No.,Utterance,Speaker\n1,Hi,Joey\n")
    with pytest.raises(DataError, match=r"test_sent_emo.csv: missing column\(s\) Emotion, Dialogue_ID"):
        load_corpus("meld", root)


def test_folder_without_csvs_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no MELD CSV files"):
        load_corpus("meld", tmp_path)


def test_parse_time_reads_subrip_times():
    assert parse_time("00:21:00,049") == pytest.approx(1260.049)
    assert parse_time("garbage") is None and parse_time(np.nan) is None


@pytest.mark.data
def test_real_meld_text_has_the_official_split_sizes(meld_root):
    corpus = load_corpus("meld", meld_root)
    assert not corpus.skipped
    assert Counter(u.meta["split"] for u in corpus) == {"train": 9989, "dev": 1109, "test": 2610}
    assert set(corpus.labels) == {"anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"}
    assert Counter(corpus.labels)["neutral"] == 4710 + 470 + 1256
    assert all(u.audio is None and u.transcript for u in corpus)
    assert any("’" in u.transcript for u in corpus)  # UTF-8 read as such, no mojibake
    assert not any("â€" in u.transcript for u in corpus)
