"""CMU-MOSEI (Zadeh et al. 2018), from the raw release, for the 6-emotion task of
Lee, Song, Jeong, Choi 2018 ("Convolutional Attention Networks ...", §3.1).

Expected layout (ROOT may also hold these under `Raw/`):

    ROOT/Audio/Full/WAV_16000/<video>.wav                16 kHz WAV, one per video
    ROOT/Transcript/Segmented/Combined/<video>.txt       <video>___<segment>___<start>___<end>___<text>
    ROOT/mosei_labels.csv   or   ROOT/CMU_MOSEI_Labels.csd

Labels, either
  - a CSV with columns `video`, `segment` or `start`,`end` (seconds in the video), the six
    intensities `happy, sad, anger, surprise, disgust, fear` (0..3), and optionally
    `split` (train / valid|dev / test, e.g. the SDK's standard folds), or
  - the SDK's `CMU_MOSEI_Labels.csd` (HDF5, read with h5py, no SDK needed):
    `<root>/data/<video>/features` (N, 7) = sentiment, happy, sad, anger, surprise,
    disgust, fear and `<root>/data/<video>/intervals` (N, 2) in seconds.
`labels=` points at another file.

Class rule (`mosei_class`): the emotion with the strongest intensity, if that intensity is
> 0. A segment whose six intensities are all zero carries no emotion and is excluded
(counted as "no emotion"). A tie for the maximum is ambiguous: by default (`ties="drop"`)
the segment is excluded and counted as "tie"; `ties="priority"` keeps it and breaks the
tie in the fixed order happy > sad > angry > surprise > disgust > fear (the SDK's column
order). Class names follow the `mosei6` label set (the intensity column `anger` is class
`angry`).

Utterances are segments of the video's WAV: `start`/`end` are offsets in that file
(negative starts in the labels are clamped to 0, ends past the audio to its duration).
speaker = the video id: MOSEI does not identify speakers across videos, so
speaker-exclusive folds are video-exclusive (one YouTube speaker per video).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emofuse.corpora.common import PreparedCorpus, Problems, Scan, one_line, require_folder
from emofuse.errors import DataError

INTENSITY_COLUMNS = ("happy", "sad", "anger", "surprise", "disgust", "fear")
CLASS_OF_COLUMN = {"happy": "happy", "sad": "sad", "anger": "angry", "surprise": "surprise",
                   "disgust": "disgust", "fear": "fear"}
NO_EMOTION, TIE = "no emotion (all six intensities 0)", "tie for the strongest emotion"
_SPLITS = {"train": "train", "valid": "dev", "validation": "dev", "dev": "dev", "test": "test"}
_TIME_TOLERANCE = 0.5  # seconds: how far a label interval may sit from its transcript segment


def mosei_class(intensities: dict[str, float], ties: str = "drop") -> tuple[str | None, str | None]:
    """(class, None) for the strongest emotion > 0, else (None, why excluded)."""
    if ties not in ("drop", "priority"):
        raise ValueError(f"ties must be 'drop' or 'priority', not {ties!r}")
    values = [float(intensities[c]) for c in INTENSITY_COLUMNS]
    top = max(values)
    if top <= 0:
        return None, NO_EMOTION
    winners = [c for c, v in zip(INTENSITY_COLUMNS, values) if abs(v - top) < 1e-6]
    if len(winners) > 1 and ties == "drop":
        return None, TIE
    return CLASS_OF_COLUMN[winners[0]], None


@dataclass
class _Segment:
    video: str
    segment: str | None
    start: float | None
    end: float | None
    intensities: dict[str, float]
    source: str
    split: str | None = None
    sentiment: float | None = None


def _first_dir(root: Path, candidates: tuple[str, ...]) -> Path | None:
    for rel in candidates:
        for base in (root, root / "Raw"):
            if (base / rel).is_dir():
                return base / rel
    return None


def _find_labels(root: Path) -> Path | None:
    for base in (root, root / "Raw", root / "Labels", root / "Raw" / "Labels"):
        for name in ("mosei_labels.csv", "CMU_MOSEI_Labels.csv", "labels.csv", "CMU_MOSEI_Labels.csd"):
            if (base / name).is_file():
                return base / name
    return None


def read_label_csv(path: Path, problems: Problems) -> list[_Segment]:
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype={"video": str, "segment": str, "split": str})
    except Exception as exc:  # pandas' parser errors, encoding errors
        raise DataError(path, f"unparsable label CSV ({one_line(exc)})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    lower = {c.lower(): c for c in table.columns}
    need = ["video", *INTENSITY_COLUMNS]
    missing = [c for c in need if c not in lower]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)} (has: {', '.join(table.columns)})")
    has_segment = "segment" in lower
    has_times = "start" in lower and "end" in lower
    if not (has_segment or has_times):
        raise DataError(path, "needs a 'segment' column or 'start' and 'end' columns")
    segments = []
    for row_number, row in enumerate(table.to_dict("records"), start=2):
        source = f"{path}:{row_number}"
        get = lambda name: row[lower[name]]  # noqa: E731
        try:
            intensities = {c: float(get(c)) for c in INTENSITY_COLUMNS}
            start = float(get("start")) if has_times else None
            end = float(get("end")) if has_times else None
        except (TypeError, ValueError):
            problems.skip(source, "non-numeric intensity or time")
            continue
        if any(v != v or v < 0 for v in intensities.values()):  # NaN or negative
            problems.skip(source, "intensities must be numbers >= 0")
            continue
        if has_times and not (start == start and end == end and end > start):
            problems.skip(source, f"segment end {end} is not after its start {start}")
            continue
        split = None
        if "split" in lower and isinstance(get("split"), str):
            split = _SPLITS.get(get("split").strip().lower())
            if split is None:
                problems.skip(source, f"unknown split {get('split')!r} (known: {', '.join(_SPLITS)})")
                continue
        segment = str(get("segment")).strip() if has_segment and get("segment") == get("segment") else None
        segments.append(_Segment(str(get("video")).strip(), segment, start, end, intensities, source, split))
    return segments


def read_label_csd(path: Path) -> list[_Segment]:
    """Labels from the SDK's computational-sequence file (HDF5)."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(path, f"not an HDF5 .csd file ({one_line(exc)})") from exc
    segments = []
    with handle:
        if len(handle.keys()) != 1 or "data" not in handle[next(iter(handle.keys()))]:
            raise DataError(path, "expected one root group holding 'data/<video>/{features,intervals}'")
        root_name = next(iter(handle.keys()))
        data = handle[root_name]["data"]
        for video in sorted(data.keys()):
            try:
                features = data[video]["features"][()]
                intervals = data[video]["intervals"][()]
            except KeyError:
                raise DataError(path, f"video {video!r} lacks 'features' or 'intervals'") from None
            if features.ndim != 2 or features.shape[1] != 7 or len(intervals) != len(features):
                raise DataError(
                    path, f"video {video!r}: features {features.shape} / intervals {intervals.shape}; "
                    "expected (N, 7) sentiment + six emotions and (N, 2)"
                )
            for i, (row, (start, end)) in enumerate(zip(features, intervals)):
                segments.append(
                    _Segment(
                        video=video, segment=None, start=float(start), end=float(end),
                        intensities={c: float(v) for c, v in zip(INTENSITY_COLUMNS, row[1:])},
                        source=f"{path}:{root_name}/data/{video}[{i}]", sentiment=float(row[0]),
                    )
                )
    return segments


def read_transcript(path: Path, problems: Problems) -> list[tuple[str, float, float, str]]:
    """(segment, start, end, text) rows of one video's segmented transcript."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("___", 4)
        try:
            _, segment, start, end, text = parts
            rows.append((segment.strip(), float(start), float(end), text.strip()))
        except ValueError:
            problems.skip(f"{path}:{number}", "unparsable transcript line (expected video___segment___start___end___text)")
    return rows


def _match(seg: _Segment, rows: list[tuple[str, float, float, str]]):
    if seg.segment is not None:
        return next((r for r in rows if r[0] == seg.segment), None)
    best = min(rows, key=lambda r: abs(r[1] - seg.start) + abs(r[2] - seg.end), default=None)
    if best and abs(best[1] - seg.start) <= _TIME_TOLERANCE and abs(best[2] - seg.end) <= _TIME_TOLERANCE:
        return best
    return None


def load_mosei(path: str | Path, scan: Scan, labels: str | Path | None = None, ties: str = "drop") -> PreparedCorpus:
    root = require_folder(path, "CMU-MOSEI")
    audio_dir = _first_dir(root, ("Audio/Full/WAV_16000", "Audio/WAV_16000", "WAV_16000"))
    if audio_dir is None:
        raise DataError(root, "no Audio/Full/WAV_16000 folder: expected the CMU-MOSEI raw release layout")
    transcript_dir = _first_dir(root, ("Transcript/Segmented/Combined", "Transcript/Combined"))
    label_file = Path(labels) if labels else _find_labels(root)
    if label_file is None or not label_file.is_file():
        raise DataError(label_file or root, "no MOSEI label file (mosei_labels.csv or CMU_MOSEI_Labels.csd)")

    if label_file.suffix.lower() == ".csd":
        segments = read_label_csd(label_file)
    else:
        segments = read_label_csv(label_file, scan.problems)
    if not segments and not scan.problems.skipped:
        raise DataError(label_file, "holds no labelled segments")

    transcripts: dict[str, list] = {}
    for seg in scan.each(segments):
        original, why = mosei_class(seg.intensities, ties)
        if original is None:
            scan.exclude(why)
            continue
        label = scan.label(original, seg.source)
        if label is None:
            continue

        wav = audio_dir / f"{seg.video}.wav"
        duration = scan.duration(wav)  # a bad video is reported once, not per segment
        if duration is None:
            continue

        if transcript_dir is not None and seg.video not in transcripts:
            tfile = transcript_dir / f"{seg.video}.txt"
            transcripts[seg.video] = read_transcript(tfile, scan.problems) if tfile.is_file() else []
        matched = _match(seg, transcripts.get(seg.video, []))
        start, end = seg.start, seg.end
        if start is None:  # labels by segment index: times come from the transcript
            if matched is None:
                scan.skip(seg.source, f"segment {seg.segment!r} of {seg.video} not in its transcript, so no times")
                continue
            start, end = matched[1], matched[2]
        if min(end, duration) <= max(0.0, start):
            scan.skip(seg.source, f"segment {start:.2f}-{end:.2f} s lies outside {wav} ({duration:.2f} s)")
            continue
        start, end = max(0.0, start), min(end, duration)
        segment = matched[0] if matched else seg.segment
        uid = f"{seg.video}_{segment}" if segment is not None else f"{seg.video}_t{start:.3f}"
        meta = {"video": seg.video, "segment": segment, "intensities": seg.intensities, "duration": round(end - start, 4)}
        if seg.split:
            meta["split"] = seg.split
        if seg.sentiment is not None:
            meta["sentiment"] = seg.sentiment
        scan.add(
            seg.source, id=uid, audio=wav, speaker=seg.video, label=label, original_label=original,
            start=round(start, 4), end=round(end, 4), transcript=matched[3] if matched else None, meta=meta,
        )
    return scan.finish("mosei", root)
