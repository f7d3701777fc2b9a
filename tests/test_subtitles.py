"""Timed transcripts (CSV, SRT, WebVTT) drive the segments; bad ones give one clear line."""

from __future__ import annotations

import pytest

from emofuse.align.segments import Segment
from emofuse.align.subtitles import alignment_spans, read_timed_transcript, segment_transcript
from emofuse.errors import DataError

EXPECTED = [
    Segment(1.0, 2.5, "Kids are talking by the door."),
    Segment(3.25, 5.0, "Dogs are sitting by the door."),
    Segment(6.0, 7.125, "[laughs]"),
]

SRT = """1
00:00:01,000 --> 00:00:02,500
Kids are talking
by the door.

2
00:00:03,250 --> 00:00:05,000
Dogs are sitting by the door.

3
00:00:06,000 --> 00:00:07,125
[laughs]
"""

VTT = """WEBVTT

intro
00:01.000 --> 00:02.500
<v Anna>Kids are talking</v>
by the door.

00:00:03.250 --> 00:00:05.000 align:start
Dogs are <b>sitting</b> by the door.

00:06.000 --> 00:07.125
[laughs]
"""

CSV = """start,end,text
1.0,2.5,Kids are talking by the door.
3.25,5,"Dogs are sitting by the door."
6,7.125,[laughs]
"""


@pytest.mark.parametrize("name, content", [("a.srt", SRT), ("a.vtt", VTT), ("a.csv", CSV)])
def test_a_timed_transcript_gives_the_segments_and_their_texts(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    assert read_timed_transcript(tmp_path / name) == EXPECTED
    result = segment_transcript(tmp_path / name)
    assert result.detector == "transcript" and result.duration == 7.125


def test_alignment_spans_skip_cues_without_words():
    cues = EXPECTED + [Segment(8.0, 9.0, " ... "), Segment(9.0, 10.0, None)]
    assert list(alignment_spans(cues)) == [(s.start, s.end, s.text) for s in EXPECTED]


@pytest.mark.parametrize("name, content, message", [
    ("bad.srt", SRT.replace("00:00:03,250 --> ", "00:00:0x,250 --> "), r"bad.srt: line 7: not a subtitle cue: .00:00:0x,250 --> 00:00:05,000."),
    ("back.srt", SRT.replace("00:00:07,125", "00:00:05,500"), r"back.srt: line 11: the cue ends \(5.5 s\) before it starts \(6 s\)"),
    ("over.srt", SRT.replace("00:00:03,250", "00:00:02,000"), r"over.srt: line 7: the cue starting at 2 s overlaps the one before, which ends at 2.5 s"),
    ("bad.vtt", VTT.replace("00:07.125", "00:0x.125"), r"bad.vtt: line 11: not a valid WebVTT cue"),
    ("nohead.vtt", VTT.replace("WEBVTT", "SUBTITLES"), r"nohead.vtt: line 1: not a WebVTT file"),
    ("over.vtt", VTT.replace("00:00:03.250", "00:00:02.000"), r"over.vtt: line 8: the cue starting at 2 s overlaps"),
    ("bad.csv", CSV.replace("3.25,5,", "3.25,five,"), r"bad.csv: line 3: start and end must be seconds"),
    ("back.csv", CSV.replace("6,7.125", "6,5.5"), r"back.csv: line 4: the cue ends \(5.5 s\) before it starts"),
    ("header.csv", CSV.replace("start,end,text", "begin,end,text"), r"header.csv: line 1: the header needs start,end,text; missing start"),
    ("a.txt", CSV, r"a.txt: unknown timed transcript format '.txt'"),
])
def test_a_bad_timed_transcript_gives_one_clear_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message) as err:
        read_timed_transcript(tmp_path / name)
    assert "\n" not in str(err.value)
