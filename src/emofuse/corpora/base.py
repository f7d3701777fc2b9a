"""The data model every later stage reads: `Utterance` records and a `Corpus` of them.

A corpus loader turns a corpus folder into Utterances; a `Corpus` writes and reads them as
a JSONL manifest (one JSON object per line). Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator

from emofuse.errors import DataError
from emofuse.io import atomic_open


@dataclass(frozen=True)
class Word:
    """One word with its time span in seconds, relative to the utterance's start."""

    text: str
    start: float
    end: float


@dataclass
class Utterance:
    """One labelled stretch of speech.

    `start`/`end` (seconds) cut the utterance out of a longer file (one file per dialogue
    or video); both None means the whole file. `label` is the class after the label set's
    mapping, `original_label` what the corpus said.
    """

    id: str
    audio: str | None
    speaker: str
    label: str
    original_label: str
    session: str | None = None
    start: float | None = None
    end: float | None = None
    transcript: str | None = None
    words: list[Word] | None = None
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        record = asdict(self)
        if self.words is None:
            record["words"] = None
        return record

    @classmethod
    def from_json(cls, record: dict, source: str | Path = "<record>") -> "Utterance":
        known = {f.name for f in fields(cls)}
        unknown = set(record) - known
        if unknown:
            raise DataError(source, f"unknown keys {sorted(unknown)}; known: {sorted(known)}")
        missing = {"id", "speaker", "label"} - set(record)
        if missing:
            raise DataError(source, f"missing keys {sorted(missing)}")
        record = dict(record)
        record.setdefault("audio", None)
        record.setdefault("original_label", record["label"])
        words = record.get("words")
        if words is not None:
            try:
                record["words"] = [
                    w if isinstance(w, Word) else Word(str(w["text"]), float(w["start"]), float(w["end"]))
                    for w in words
                ]
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(source, f"words must be objects with text, start, end ({exc})") from exc
        return cls(**record)

    @property
    def group(self) -> str:
        """The session if the corpus has one, else the speaker: what folds keep apart."""
        return self.session if self.session is not None else self.speaker


@dataclass
class Skipped:
    """A file a loader could not use, and why."""

    path: str
    reason: str


class Corpus:
    """An ordered collection of Utterances with the files a loader skipped."""

    def __init__(self, utterances: Iterable[Utterance], name: str = "corpus", skipped: list[Skipped] | None = None):
        self.utterances = list(utterances)
        self.name = name
        self.skipped = list(skipped or [])
        ids = Counter(u.id for u in self.utterances)
        dupes = [i for i, n in ids.items() if n > 1]
        if dupes:
            raise DataError(None, f"corpus {name!r} has duplicate utterance ids, e.g. {dupes[:3]}")

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances)

    def __getitem__(self, index: int) -> Utterance:
        return self.utterances[index]

    @property
    def labels(self) -> list[str]:
        return [u.label for u in self.utterances]

    @property
    def speakers(self) -> list[str]:
        return [u.speaker for u in self.utterances]

    def subset(self, indices: Iterable[int]) -> "Corpus":
        return Corpus([self.utterances[i] for i in indices], name=self.name)

    def write(self, path: str | Path) -> Path:
        """Write the manifest atomically: a crash never leaves a half-written file."""
        path = Path(path)
        header = {"__emofuse_manifest__": 1, "name": self.name}
        with atomic_open(path) as out:
            out.write(json.dumps(header) + "\n")
            for u in self.utterances:
                out.write(json.dumps(u.to_json(), ensure_ascii=False) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> "Corpus":
        """Read a manifest written by `write`; relative audio paths resolve against its folder."""
        path = Path(path)
        if path.is_dir():
            raise DataError(path, "is a folder, not a manifest: run `emofuse prepare <corpus> FOLDER --out "
                                  "manifest.jsonl` first and give the .jsonl")
        if not path.is_file():
            raise DataError(path, "manifest not found")
        if path.suffix.lower() in (".csv", ".tsv"):
            raise DataError(path, f"is a {path.suffix[1:].upper()} table, not a manifest: run `emofuse prepare "
                                  f"manifest {path.name} --out manifest.jsonl` first and give the .jsonl")
        name = path.stem
        utterances = []
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    if number == 1 and "," in line and not line.startswith(("{", "[")):  # a CSV under another name
                        raise DataError(path, "looks like a CSV table, not a JSONL manifest: run `emofuse prepare "
                                              f"manifest {path.name} --out manifest.jsonl` first") from None
                    raise DataError(f"{path}:{number}", f"not valid JSON ({exc.msg})") from exc
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{number}", f"a manifest line must be a JSON object, "
                                                        f"not {type(record).__name__}")
                if "__emofuse_manifest__" in record:
                    name = record.get("name", name)
                    continue
                utt = Utterance.from_json(record, source=f"{path}:{number}")
                if utt.audio and not os.path.isabs(utt.audio):
                    utt.audio = str((path.parent / utt.audio).resolve())
                utterances.append(utt)
        if not utterances:
            raise DataError(path, "manifest holds no utterances")
        return cls(utterances, name=name)
