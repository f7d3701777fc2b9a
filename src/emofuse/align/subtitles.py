"""Transcripts that carry timings: their cues become the speech segments of a recording.

Formats, by file suffix:

- ``.csv``: a header with ``start,end,text`` (seconds), one segment a row.
- ``.srt``: SubRip subtitles, parsed by the `srt` library.
- ``.vtt``: WebVTT subtitles, parsed by `webvtt-py` in strict mode (tags are dropped).

Cues must start before they end and must not overlap (after sorting nothing would say which
words belong where); any violation, and any time that does not parse, is a DataError naming
the file and the line. `alignment_spans` then gives each cue's (start, end, text), for forced
alignment of the text within its own stretch of audio.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path

from emofuse.align.segments import Segment, Segmentation
from emofuse.align.text import normalise_transcript
from emofuse.errors import DataError

FORMATS = (".csv", ".srt", ".vtt")


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, max(offset, 0)) + 1


def _timing_lines(text: str) -> list[int]:
    """1-based numbers of the lines holding a cue's times ("-->"), in order."""
    return [i + 1 for i, line in enumerate(text.splitlines()) if "-->" in line]


def _read_csv(path: Path) -> list[tuple[int, float, float, str]]:
    cues = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"start", "end", "text"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(path, f"line 1: the header needs start,end,text; missing {', '.join(sorted(missing))}")
        for row in reader:
            try:
                start, end = float(row["start"]), float(row["end"])
            except (TypeError, ValueError):
                raise DataError(path, f"line {reader.line_num}: start and end must be seconds, "
                                      f"got {row['start']!r}, {row['end']!r}") from None
            cues.append((reader.line_num, start, end, row["text"] or ""))
    return cues


def _read_srt(path: Path, text: str) -> list[tuple[int, float, float, str]]:
    import srt

    try:
        subtitles = list(srt.parse(text))
    except srt.SRTParseError as err:
        # Point at the cue's times when the unparsed block has them (the usual fault), else its start.
        block = err.unmatched_content.split("\n")
        at = next((i for i, l in enumerate(block) if "-->" in l), 0)
        line = _line_of(text, err.expected_start) + at
        raise DataError(path, f"line {line}: not a subtitle cue: {block[at].strip()!r}") from None
    lines = _timing_lines(text)
    lines = lines if len(lines) == len(subtitles) else [0] * len(subtitles)
    return [(line, s.start.total_seconds(), s.end.total_seconds(), s.content.replace("\n", " ").strip())
            for line, s in zip(lines, subtitles)]


def _read_vtt(path: Path, text: str) -> list[tuple[int, float, float, str]]:
    import webvtt
    from webvtt.errors import MalformedCaptionError, MalformedFileError

    try:
        captions = webvtt.read(str(path), strict=True).captions
    except MalformedFileError as err:
        raise DataError(path, f"line 1: not a WebVTT file ({err})") from None
    except MalformedCaptionError as err:
        # The message quotes the cue's lines; find the first of them in the file.
        block = err.args[0] if err.args else ""
        line = next((i + 1 for i, l in enumerate(text.splitlines()) if l.strip() and l.strip() in str(block)), 0)
        raise DataError(path, f"line {line}: not a valid WebVTT cue") from None

    def seconds(stamp) -> float:
        return stamp.hours * 3600 + stamp.minutes * 60 + stamp.seconds + stamp.milliseconds / 1000

    lines = _timing_lines(text)
    lines = lines if len(lines) == len(captions) else [0] * len(captions)
    return [(line, seconds(c.start_time), seconds(c.end_time), c.text.replace("\n", " ").strip())
            for line, c in zip(lines, captions)]


def read_timed_transcript(path: str | Path) -> list[Segment]:
    """The cues of a CSV, SRT or WebVTT file as segments with their texts (module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(path, f"unknown timed transcript format {suffix or '(no suffix)'!r}; known: {', '.join(FORMATS)}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read the transcript: {err}") from None
    if suffix == ".csv":
        cues = _read_csv(path)
    elif suffix == ".srt":
        cues = _read_srt(path, text)
    else:
        cues = _read_vtt(path, text)
    segments: list[Segment] = []
    for line, start, end, words in cues:
        where = f"line {line}" if line else f"cue {len(segments) + 1}"
        if start < 0 or end <= start:
            raise DataError(path, f"{where}: the cue ends ({end:g} s) before it starts ({start:g} s)")
        if segments and start < segments[-1].end:
            raise DataError(path, f"{where}: the cue starting at {start:g} s overlaps the one before, "
                                  f"which ends at {segments[-1].end:g} s")
        segments.append(Segment(start, end, words))
    return segments


def segment_transcript(path: str | Path) -> Segmentation:
    """The segments a timed transcript gives, recorded as coming from it (detector "transcript")."""
    segments = read_timed_transcript(path)
    return Segmentation(segments, "transcript", segments[-1].end if segments else 0.0)


def alignment_spans(segments: Iterable[Segment]) -> Iterator[tuple[float, float, str]]:
    """(start, end, text) of each segment whose text holds words: the stretch of audio to cut
    out and the transcript to force-align within it (times it yields are relative to start)."""
    for segment in segments:
        if segment.text and normalise_transcript(segment.text):
            yield segment.start, segment.end, segment.text
