"""A word vocabulary for models that learn their own embeddings (token ids).

Index 0 is padding and 1 the unknown word, as `features.batch.Batch.token_ids` expects.
Build it from the *training* transcripts only, so validation and test words the model never
saw map to unknown, as they would for a new speaker.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable

from emofuse.errors import DataError
from emofuse.io import write_json

PAD, UNK = "<pad>", "<unk>"


class Vocabulary:
    def __init__(self, tokens: Iterable[str]):
        self.tokens = [PAD, UNK] + [t for t in tokens if t not in (PAD, UNK)]
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")

    @classmethod
    def build(cls, sentences: Iterable[Iterable[str]], min_count: int = 1, max_size: int | None = None) -> "Vocabulary":
        """From word lists (e.g. `UtteranceFeatures.words` of training items); most frequent
        first, ties alphabetical, so the same data always gives the same ids."""
        counts = Counter(w.lower() for words in sentences for w in (words or []))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(ranked[:max_size] if max_size else ranked)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, word: str) -> bool:
        return word.lower() in self.index

    def encode(self, words: Iterable[str]) -> list[int]:
        return [self.index.get(w.lower(), 1) for w in words]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[i] for i in ids]

    def to_dict(self) -> dict:
        return {"tokens": self.tokens[2:]}

    @classmethod
    def from_dict(cls, record: dict) -> "Vocabulary":
        return cls(record["tokens"])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_json(path, self.to_dict(), indent=None)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise DataError(path, "vocabulary file not found") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(path, f"not a vocabulary file ({exc})") from None
