"""Predict a folder of recordings: files found recursively, transcripts from a CSV, batches
spread over worker processes (each loads the model directory once), results as CSV or JSONL.

Workers are spawned processes (`emofuse.pool.Pool`, one torch thread each) whose setup
builds the same `Predictor` as the single-process path; `kill -9` of the run leaves no worker
behind. Each task is a batch of files that goes through the model as one padded batch (padding
never changes a result: models/layers.py). A worker killed on a batch (the OOM killer) fails
that batch's files alone, each with a line naming the batch, and is replaced; every other
batch still finishes. Results come back as they finish, with their index, so a caller can
show progress and still write the output in the input order.
"""

from __future__ import annotations

import csv
import io
import json
import os
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path
from typing import Iterator, Sequence

from emofuse.errors import DataError, EmofuseError, JobFailed, first_line
from emofuse.inference.predictor import PredictionError, Predictor
from emofuse.io import atomic_write_text
from emofuse.pool import Pool

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".mp4", ".webm", ".aac",
                  ".aif", ".aiff", ".wma", ".mkv")
Job = tuple[str, "str | None"]  # (audio path, transcript or None)
Result = "Prediction | PredictionError"


def find_audio(path: str | Path) -> list[Path]:
    """A file as given, or the audio files under a folder (recursive, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise DataError(path, "no such file or folder")
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                   and not p.name.startswith("."))
    if not found:
        raise DataError(path, f"no audio files in the folder (looked for {', '.join(AUDIO_SUFFIXES)})")
    return found


_FILE_COLUMNS = ("file", "path", "audio", "name", "id")
_TEXT_COLUMNS = ("transcript", "text", "utterance")


def read_transcripts(csv_path: str | Path, files: Sequence[Path], root: Path | None = None) -> tuple[dict[Path, str], list[str]]:
    """Transcripts per file from a CSV with a file column (file/path/audio/name/id) and a text
    column (transcript/text/utterance). A row matches a file by its path relative to `root`,
    its name, or its name without suffix. Returns (transcripts, rows that matched no file)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(csv_path, "transcripts file not found")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(csv_path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    file_col = next((c for c in _FILE_COLUMNS if c in header), None)
    text_col = next((c for c in _TEXT_COLUMNS if c in header), None)
    if file_col is None or text_col is None:
        raise DataError(csv_path, f"needs a file column ({'/'.join(_FILE_COLUMNS)}) and a transcript column "
                                  f"({'/'.join(_TEXT_COLUMNS)}); found columns: {', '.join(header) or 'none'}")
    keys: dict[str, Path] = {}
    for f in files:
        for key in ((str(f.relative_to(root)) if root and f.is_relative_to(root) else None), f.name, f.stem):
            if key is not None:
                keys.setdefault(key, f)
    out: dict[Path, str] = {}
    unmatched: list[str] = []
    for row in reader:
        row = {(k or "").strip().lower(): (v or "") for k, v in row.items()}
        name, transcript = row[file_col].strip(), row[text_col].strip()
        target = keys.get(name) or keys.get(Path(name).name) or keys.get(Path(name).stem)
        if target is None:
            unmatched.append(name)
        elif transcript:
            out[target] = transcript
    return out, unmatched


# ------------------------------------------------------------------------------ workers

def _load_predictor(model_dir: str, options: dict) -> Predictor:
    """A worker's setup: the model loaded once; a model that does not load raises its
    EmofuseError in the caller (`Pool.started`), as it would in one process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return Predictor(model_dir, **options)


def _predict_batch(predictor: Predictor, chunk: list[tuple[int, Job]], _progress) -> list[tuple[int, Result]]:
    results = predictor.predict_files([job for _, job in chunk])
    return [(i, r) for (i, _), r in zip(chunk, results)]


def batch_name(chunk: list[tuple[int, Job]]) -> str:
    """A batch in a worker's error line: its files' names."""
    return ", ".join(Path(path).name for _, (path, _transcript) in chunk)


def predict_jobs(model_dir: str | Path, jobs: Sequence[Job], workers: int = 1, batch_size: int = 4,
                 predictor: Predictor | None = None, threads: int | None = None, verify: bool = True,
                 force_transcript: bool = False, asr: str | None = None,
                 check_transcript: bool = True, speech_check: bool = True) -> Iterator[tuple[int, Result]]:
    """(index, Prediction | PredictionError) for every job, in the order they finish.

    Every worker builds the Predictor the single-process path builds (`verify`,
    `force_transcript`, `asr`, `check_transcript`, `speech_check`), so a result does not depend on `workers`. threads: torch threads
    of each Predictor; default `predictor.DEFAULT_THREADS` in this process, 1 in each of
    several worker processes (together they fill the cores). A model that cannot be loaded
    raises its EmofuseError here, whether it was loaded here or in a worker.
    """
    options = {"verify": verify, "force_transcript": force_transcript, "asr": asr, "check_transcript": check_transcript,
               "speech_check": speech_check}
    indexed = list(enumerate(jobs))
    chunks = [indexed[i:i + batch_size] for i in range(0, len(indexed), max(1, batch_size))]
    if workers <= 1:
        predictor = predictor or Predictor(model_dir, threads=threads, **options)
        for chunk in chunks:
            yield from _predict_batch(predictor, chunk, None)
        return
    options |= {"threads": 1 if threads is None else threads, "frames_process": False}
    with Pool(_load_predictor, _predict_batch, (str(model_dir), options), workers, name="prediction",
              owner="the run") as pool:  # closed on Ctrl-C or an abandoned generator too
        pending = {pool.submit(chunk, batch_name(chunk)): chunk for chunk in chunks}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                chunk = pending.pop(future)
                try:
                    results = future.result()
                except JobFailed as exc:  # its worker died (memory) or the pool gave up: this batch alone
                    results = [(i, PredictionError(job[0], f"worker failed: {exc}")) for i, job in chunk]
                except EmofuseError:  # the model itself (its weights, its settings): every batch would fail
                    raise
                except Exception as exc:  # noqa: BLE001 -- raised in the batch (memory, torch): this batch alone
                    results = [(i, PredictionError(job[0], f"worker failed: {first_line(exc)}")) for i, job in chunk]
                yield from results


# ------------------------------------------------------------------------------ outputs


WARNING_SEPARATOR = "; "


def result_rows(results: Sequence[Result], classes: Sequence[str]) -> list[dict]:
    rows = []
    for r in results:
        if isinstance(r, PredictionError):
            rows.append({"file": r.file, "label": "", **{f"p_{c}": "" for c in classes}, "align_source": "", "recogniser": "",
                         "duration": "", "words": "", "warnings": "", "error": r.error})
            continue
        words = " ".join(f"{w.text}@{w.start:.2f}-{w.end:.2f}" if w.timed else w.text for w in r.words)
        rows.append({"file": r.file, "label": r.label, **{f"p_{c}": f"{r.probabilities[c]:.6f}" for c in classes},
                     "align_source": r.align_source, "recogniser": r.recogniser or "", "duration": f"{r.duration:.3f}", "words": words,
                     "warnings": WARNING_SEPARATOR.join(r.warnings), "error": ""})
    return rows


def _record(result: Result) -> dict:
    record = result.to_json()
    record.setdefault("warnings", [])  # a failed file has none, but the key is always there
    return record


def write_results(path: str | Path, results: Sequence[Result], classes: Sequence[str]) -> Path:
    """`.csv` (one row per file) or `.jsonl` (the --json objects), written atomically. Both
    always hold `warnings` (a list in JSONL, joined by "; " in CSV; empty for a failed file)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        text = "".join(json.dumps(_record(r), ensure_ascii=False) + "\n" for r in results)
    elif suffix == ".csv":
        buffer = io.StringIO()
        rows = result_rows(results, classes)
        fields = ["file", "label", *[f"p_{c}" for c in classes], "align_source", "recogniser", "duration", "words", "warnings",
                  "error"]
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    else:
        raise DataError(path, "results file must end in .csv or .jsonl")
    atomic_write_text(path, text)
    return path
