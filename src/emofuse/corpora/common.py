"""What every corpus loader shares: one `Scan` that maps labels, probes audio and builds records.

Each loader knows its corpus's layout and nothing else: for every candidate utterance it asks
its `Scan` for the class (`scan.label`), the audio's duration (`scan.duration`) and hands over
the record (`scan.add`); `scan.finish` builds the corpus. A loader never dies at the first bad file: it records each one as `Skipped(path, reason)`
and goes on, so `emofuse prepare` can list them all at the end. With `strict=True` the
first problem is raised instead, as a one-line `DataError` naming the file. Structural
problems (the corpus folder is missing or holds nothing of the expected layout) are
always raised. Nothing here imports torch.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

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

T = TypeVar("T")


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


def corpus_folders(
    path: str | Path, what: str, pattern: str, is_one: Callable[[Path], bool], missing: str
) -> tuple[Path, list[Path]]:
    """(root, its sub-folders matching `pattern`, e.g. one per actor or session); the root
    alone when the user pointed at one such folder (`is_one(root)`); `missing` says what is
    expected when there are none."""
    root = require_folder(path, what)
    folders = sorted(p for p in root.glob(pattern) if p.is_dir())
    if not folders and is_one(root):
        folders = [root]
    if not folders:
        raise DataError(root, missing)
    return root, folders


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


class Scan:
    """One loader's pass over a corpus: the steps every loader repeats, in one place.

    `label` maps a corpus label through the label set (excluded labels are counted, unknown
    ones skipped naming their source); `duration` probes an audio file once however many
    utterances cut it; `add` keeps a record unless its id was already taken; `finish` builds
    the corpus, or says why it is empty. `strict` raises at the first problem instead.
    """

    def __init__(self, label_set: LabelSet | None, strict: bool = False, progress: Progress | None = None):
        self.label_set = label_set
        self.problems = Problems(strict)
        self.excluded: Counter = Counter()
        self.progress = progress
        self.utterances: list[Utterance] = []
        self._ids: set[str] = set()
        self._durations: dict[Path, float | DataError] = {}

    def each(self, items: Sequence[T]) -> Iterator[T]:
        """The items in order, reporting progress(done, total) as each one starts."""
        for done, item in enumerate(items, start=1):
            if self.progress:
                self.progress(done, len(items))
            yield item

    def skip(self, path: str | Path, reason: str) -> None:
        self.problems.skip(path, reason)

    def exclude(self, why: str) -> None:
        """Count an utterance the task leaves out for a reason other than its label set."""
        self.excluded[why] += 1

    def label(self, original: str, source: str | Path) -> str | None:
        """The class for `original`, or None when the utterance is left out (see `map_label`)."""
        return map_label(self.label_set, original, source, self.problems, self.excluded)

    def duration(self, audio: str | Path, line: str | None = None) -> float | None:
        """Seconds of audio in `audio`, or None when it cannot be used (skipped with the reason).

        Each file is probed once. A bad file is reported once, naming the file; with `line`
        (where a table points at it) it is reported for every line that points at it.
        """
        audio = Path(audio)
        first = audio not in self._durations
        if first:
            try:
                self._durations[audio] = probe_audio(audio)
            except DataError as exc:
                self._durations[audio] = exc
        duration = self._durations[audio]
        if not isinstance(duration, DataError):
            return duration
        if line is not None:
            self.skip(duration.path, f"{duration.problem} ({line})")
        elif first:
            self.skip(duration.path, duration.problem)
        return None

    def add(self, source: str | Path, *, audio: str | Path | None, **fields) -> None:
        """Build the Utterance (`audio` made absolute; None for text-only corpora) from
        `fields` and keep it (see `keep`)."""
        self.keep(Utterance(audio=str(Path(audio).resolve()) if audio else None, **fields), source)

    def keep(self, utterance: Utterance, source: str | Path) -> None:
        """Keep `utterance`; a second record with the same id is skipped naming `source`."""
        if utterance.id in self._ids:
            self.skip(source, f"utterance id {utterance.id!r} appears twice")
            return
        self._ids.add(utterance.id)
        self.utterances.append(utterance)

    def finish(self, name: str, source: str | Path) -> PreparedCorpus:
        return finish(self.utterances, name, self.problems, self.excluded, self.label_set, source)
