"""Any other corpus (EmoDB, CREMA-D, call-centre recordings, ...) through a table.

A CSV (`.csv`, `.tsv`) or JSON Lines (`.jsonl`, `.json`) file, one utterance per row:

    path,label,speaker[,transcript,start,end,session,id]

`path` is the audio file, relative to the manifest's folder or absolute; `start`/`end`
(seconds) cut a segment out of a longer file; `id` defaults to the path relative to the
manifest's folder without its suffix (plus `@start` for segments).

A row with an empty `path` (or a table without a `path` column) but with a `transcript` is a
text-only utterance (`audio` None): lexical models train on it, models that read audio refuse
it before any work (`training.corpus.check_audio`). Its `id` defaults to
`{manifest file stem}-{line}`. Other columns go to
`meta`. JSON Lines rows may also carry `words` as [{"text", "start", "end"}, ...] with
times relative to the utterance. Labels are kept as given unless a label set is chosen.
A manifest written by `emofuse prepare` (it starts with an `__emofuse_manifest__` line)
is read back as it is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from emofuse.corpora.base import Corpus, Word
from emofuse.corpora.common import PreparedCorpus, Problems, Scan, one_line
from emofuse.errors import DataError

REQUIRED = ("path", "label", "speaker")
OPTIONAL = ("transcript", "start", "end", "session", "id", "words")
NEEDED = ("label", "speaker")  # `path` may be empty where a transcript stands in (text only)
_SLACK = 0.05  # seconds a segment's end may pass the file's end (rounding in hand-made tables)


def _rows_csv(path: Path) -> list[dict]:
    import pandas as pd

    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except Exception as exc:
        raise DataError(path, f"unparsable CSV ({one_line(exc)})") from exc
    table.columns = [str(c).strip().lower() for c in table.columns]
    _check_columns(path, set(table.columns), ", ".join(table.columns))
    return [{k: (v.strip() if isinstance(v, str) else v) for k, v in r.items()} for r in table.to_dict("records")]


def _rows_jsonl(path: Path, problems: Problems) -> list[dict | None]:
    rows: list[dict | None] = []
    seen_keys: set[str] = set()
    with path.open(encoding="utf-8", errors="strict") as lines:
        try:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    rows.append(None)
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    problems.skip(f"{path}:{number}", f"not valid JSON ({exc.msg})")
                    rows.append(None)
                    continue
                if not isinstance(record, dict):
                    problems.skip(f"{path}:{number}", "a row must be a JSON object")
                    rows.append(None)
                    continue
                record = {str(k).lower(): v for k, v in record.items()}
                seen_keys |= set(record)
                rows.append(record)
        except UnicodeDecodeError as exc:
            raise DataError(path, f"not UTF-8 text ({exc.reason})") from exc
    if seen_keys:
        _check_columns(path, seen_keys, ", ".join(sorted(seen_keys)))
    return rows


def _check_columns(path: Path, columns: set[str], has: str) -> None:
    """label and speaker always; path unless a transcript column makes the rows text-only."""
    missing = [c for c in NEEDED if c not in columns]
    if "path" not in columns and "transcript" not in columns:
        missing.insert(0, "path (or transcript, for text-only rows)")
    if missing:
        raise DataError(path, f"missing required column(s) {', '.join(missing)} (has: {has})")


def _is_emofuse_manifest(path: Path) -> bool:
    with path.open(encoding="utf-8", errors="replace") as lines:
        first = lines.readline()
    return "__emofuse_manifest__" in first


def _seconds(value, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return number


def load_manifest(path: str | Path, scan: Scan) -> PreparedCorpus:
    path = Path(path)
    if not path.exists():
        raise DataError(path, "manifest not found")
    if not path.is_file():
        raise DataError(path, "expected a manifest file (.csv, .tsv or .jsonl), found a folder")
    if path.stat().st_size == 0:
        raise DataError(path, "empty manifest (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json") and _is_emofuse_manifest(path):
        corpus = Corpus.read(path)
        for u in corpus:
            label = scan.label(u.original_label, f"{path} ({u.id})")
            if label is not None:
                u.label = label
                scan.keep(u, f"{path} ({u.id})")
        return scan.finish(corpus.name, path)

    if suffix in (".csv", ".tsv"):
        rows: list[dict | None] = _rows_csv(path)
        line_of = lambda i: i + 2  # noqa: E731  header is line 1
    elif suffix in (".jsonl", ".json"):
        rows = _rows_jsonl(path, scan.problems)
        line_of = lambda i: i + 1  # noqa: E731
    else:
        raise DataError(path, f"unknown manifest format {suffix!r}: use .csv, .tsv or .jsonl")

    base = path.parent
    for index, row in enumerate(scan.each(rows)):
        if row is None:
            continue
        source = f"{path}:{line_of(index)}"
        missing = [c for c in NEEDED if not str(row.get(c) or "").strip()]
        transcript = str(row.get("transcript") or "").strip() or None
        if not str(row.get("path") or "").strip():
            if transcript is not None and not missing:
                _add_text_only(scan, source, row, transcript, f"{path.stem}-{line_of(index)}")
                continue
            if transcript is None:
                missing.insert(0, "path (and no transcript)")
        if missing:
            scan.skip(source, f"empty {', '.join(missing)}")
            continue
        audio = Path(str(row["path"]))
        audio = audio if audio.is_absolute() else base / audio
        try:
            start, end = _seconds(row.get("start"), "start"), _seconds(row.get("end"), "end")
        except ValueError as exc:
            scan.skip(source, str(exc))
            continue
        if start is not None and end is not None and end <= start:
            scan.skip(source, f"end {end} is not after start {start}")
            continue
        original = str(row["label"]).strip()
        label = scan.label(original, source)
        if label is None:
            continue
        duration = scan.duration(audio, line=f"manifest line {line_of(index)}")
        if duration is None:
            continue
        if (start or 0.0) >= duration or (end is not None and end > duration + _SLACK):
            scan.skip(source, f"segment {start}-{end} s lies outside {audio} ({duration:.2f} s)")
            continue
        words = None
        if row.get("words") not in (None, ""):
            try:
                words = [Word(str(w["text"]), float(w["start"]), float(w["end"])) for w in row["words"]]
            except (KeyError, TypeError, ValueError) as exc:
                scan.skip(source, f"words must be a list of objects with text, start, end ({one_line(exc)})")
                continue
        uid = str(row.get("id") or "").strip()
        if not uid:
            try:
                uid = audio.relative_to(base).with_suffix("").as_posix()
            except ValueError:
                uid = audio.with_suffix("").as_posix().lstrip("/")
            if start is not None:
                uid = f"{uid}@{start:.3f}"
        session = str(row.get("session") or "").strip() or None
        meta = {k: v for k, v in row.items() if k not in REQUIRED + OPTIONAL and v not in (None, "")}
        meta["duration"] = round((end if end is not None else duration) - (start or 0.0), 4)
        scan.add(
            source, id=uid, audio=audio, speaker=str(row["speaker"]).strip(), label=label,
            original_label=original, session=session, start=start, end=end,
            transcript=transcript, words=words, meta=meta,
        )
    return scan.finish(path.stem, path)


def _add_text_only(scan: Scan, source: str, row: dict, transcript: str, default_id: str) -> None:
    """A row without audio: its transcript is the utterance (no times, no duration)."""
    if any(str(row.get(c) or "").strip() for c in ("start", "end", "words")):
        scan.skip(source, "start, end and words need audio: a text-only row (empty path) cannot have them")
        return
    original = str(row["label"]).strip()
    label = scan.label(original, source)
    if label is None:
        return
    meta = {k: v for k, v in row.items() if k not in REQUIRED + OPTIONAL and v not in (None, "")}
    scan.add(
        source, id=str(row.get("id") or "").strip() or default_id, audio=None, speaker=str(row["speaker"]).strip(),
        label=label, original_label=original, session=str(row.get("session") or "").strip() or None,
        transcript=transcript, meta=meta,
    )
