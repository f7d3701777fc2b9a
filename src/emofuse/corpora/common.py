"""What every corpus loader shares: cheap audio checks, problem collection, label mapping.

A loader never dies at the first bad file: it records each one as `Skipped(path, reason)`
and goes on, so `emofuse prepare` can list them all at the end. With `strict=True` the
first problem is raised instead, as a one-line `DataError` naming the file. Structural
problems (the corpus folder is missing or holds nothing of the expected layout) are
always raised. Nothing here imports torch.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import soundfile as sf

from emofuse.corpora.base import Corpus, Skipped, Utterance
from emofuse.corpora.labels import LabelSet
from emofuse.errors import DataError, LabelError

# Called as progress(done, total) while a loader scans its files.
Progress = Callable[[int, int], None]

# Formats libsndfile reads; anything else (mp4, m4a, mp3 in old libsndfile) goes through PyAV.
SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".w64"}

# Frames decoded at each end of a file: enough to catch a truncated or garbled stream
# without decoding the whole file (a full RAVDESS scan takes under a second).
_PROBE_FRAMES = 512


class PreparedCorpus(Corpus):
    """A Corpus as a loader built it: also what the label set excluded, by original label."""

    def __init__(
        self,
        utterances: Iterable[Utterance],
        name: str = "corpus",
        skipped: list[Skipped] | None = None,
        excluded: Counter | None = None,
        label_set: str | None = None,
    ):
        super().__init__(utterances, name=name, skipped=skipped)
        self.excluded: Counter = Counter(excluded or {})
        self.label_set = label_set


class Problems:
    """Collects files a loader skips; raises at once when `strict`."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.skipped: list[Skipped] = []

    def skip(self, path: str | Path, reason: str) -> None:
        if self.strict:
            raise DataError(path, reason)
        self.skipped.append(Skipped(str(path), reason))

    def __len__(self) -> int:
        return len(self.skipped)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (libsndfile and FFmpeg messages span several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def probe_audio(path: str | Path) -> float:
    """Check cheaply that `path` is readable, non-empty audio; return its duration in seconds.

    WAV/FLAC/OGG: header through soundfile, then one block decoded at each end (catches
    truncation and garbage after a valid header). Other containers (mp4, m4a, ...): PyAV
    opens the file, needs an audio stream and decodes its first frame. Raises DataError
    naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "audio file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "zero-length audio file (0 bytes)")
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        return _probe_soundfile(path)
    return _probe_av(path)


def _probe_soundfile(path: Path) -> float:
    # libsndfile raises its own error types (RuntimeError in old versions): catch broadly,
    # say which step failed.
    try:
        audio = sf.SoundFile(str(path))
    except Exception as exc:
        raise DataError(path, f"unreadable audio ({one_line(exc)})") from exc
    with audio:
        frames, rate = audio.frames, audio.samplerate
        if frames <= 0:
            raise DataError(path, "audio holds no samples (zero duration)")
        try:
            head = audio.read(min(_PROBE_FRAMES, frames))
        except Exception as exc:
            raise DataError(path, f"corrupt audio: its first samples do not decode ({one_line(exc)})") from exc
        try:
            audio.seek(max(0, frames - _PROBE_FRAMES))
            tail = audio.read()
        except Exception as exc:
            raise DataError(path, f"truncated or corrupt audio: its last samples do not decode ({one_line(exc)})") from exc
    if len(head) == 0 or len(tail) == 0:
        raise DataError(path, "truncated audio: the header promises samples the file does not hold")
    return frames / rate


def _probe_av(path: Path) -> float:
    import av  # PyAV is only needed for containers libsndfile cannot read

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise DataError(path, "no audio stream in the file")
            stream = container.streams.audio[0]
            first = next(container.decode(stream), None)
            if first is None or first.samples == 0:
                raise DataError(path, "audio stream holds no samples")
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000  # av.time_base is microseconds
            else:
                duration = first.samples / first.sample_rate
    except DataError:
        raise
    except Exception as exc:  # FFmpeg errors (InvalidDataError, ...) and a bad first packet
        raise DataError(path, f"unreadable audio ({one_line(exc)})") from exc
    if duration <= 0:
        raise DataError(path, "audio has zero duration")
    return duration


def map_label(
    label_set: LabelSet | None,
    original: str,
    source: str | Path,
    problems: Problems,
    excluded: Counter,
) -> str | None:
    """The class for `original`, or None when the set excludes it (counted) or does not know it
    (skipped with the reason naming `source`)."""
    if label_set is None:
        return original
    try:
        label = label_set.map(original)
    except LabelError as exc:
        problems.skip(source, str(exc))
        return None
    if label is None:
        excluded[str(original).strip().lower()] += 1
    return label


def require_folder(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(path, f"{what} folder not found")
    if not path.is_dir():
        raise DataError(path, f"expected the {what} folder, found a file")
    return path


def finish(
    utterances: list[Utterance],
    name: str,
    problems: Problems,
    excluded: Counter,
    label_set: LabelSet | None,
    source: str | Path,
) -> PreparedCorpus:
    """Build the corpus; an empty result is an error that says why."""
    if not utterances:
        if problems.skipped:
            first = problems.skipped[0]
            raise DataError(
                source,
                f"no usable utterances: all {len(problems.skipped)} candidate file(s) were skipped, "
                f"first: {first.path}: {first.reason}",
            )
        if excluded:
            raise DataError(
                source,
                f"no utterances left: label set {label_set.name if label_set else None!r} "
                f"excludes every label found ({', '.join(sorted(excluded))})",
            )
        raise DataError(source, "no utterances found")
    return PreparedCorpus(
        utterances,
        name=name,
        skipped=problems.skipped,
        excluded=excluded,
        label_set=label_set.name if label_set else None,
    )
