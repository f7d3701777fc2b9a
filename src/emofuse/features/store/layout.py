"""The store's folder layout: settings hashes, utterance keys, entry paths, atomic entries.

Layout under the store root (one folder per kind of entry and hash of its settings)::

    frames/<feature>-<settings hash>/<utterance key>.safetensors   features (T, D)
    vad/energy-<settings hash>/<utterance key>.safetensors        speech (T,) on the 10 ms grid
    align/<mode>-<settings hash>/<utterance key>.json              words, times, source, fallbacks
    words/<encoder>-<settings hash>/<align folder>/<utterance key>.safetensors   vectors (W, D)

Each folder holds `settings.json`, the settings its hash was made from (feature parameters and
`CODE_VERSION`): a changed setting is a new folder (recomputed), an unchanged one is found
and skipped. The utterance key is its id plus a hash of what the entry depends on: audio path
and start/end for frames; also the transcript and corpus word times for alignments and word
vectors. Word vectors live under the alignment they were computed from.

Entries are safetensors files (memory-mapped on load) and JSON, each written to a temporary
file in the same folder and moved into place with `os.replace`, so an interrupted run leaves
finished entries whole, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from emofuse.align import Alignment, resolve_mode
from emofuse.align.vad import VAD_SETTINGS
from emofuse.corpora.base import Utterance
from emofuse.errors import ConfigError, DataError
from emofuse.features.frames import frame_feature_names, get_frame_feature, is_frame_feature
from emofuse.features.words import is_word_feature, word_encoder_settings
from emofuse.io import atomic_open, atomic_path

CODE_VERSION = 1  # bump when a code change alters stored values
STALE_TMP_SECONDS = 600


def settings_hash(settings: dict) -> str:
    text = json.dumps({**settings, "code_version": CODE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def safe_name(name: str, limit: int = 80) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:limit]


def utterance_key(utt: Utterance, with_text: bool) -> str:
    """`<id>-<hash of what the entry depends on>` (module docstring)."""
    identity = {"id": utt.id, "audio": utt.audio, "start": utt.start, "end": utt.end}
    if with_text:
        identity["transcript"] = utt.transcript
        identity["words"] = [[w.text, w.start, w.end] for w in utt.words] if utt.words else None
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return f"{safe_name(utt.id)}-{digest}"


def split_features(features: Iterable[str]) -> tuple[list[str], list[str]]:
    """(frame features, word features) from one list of names; ConfigError for unknown names."""
    frames, words = [], []
    for name in features:
        name = name.strip()
        if not name:
            continue
        if is_frame_feature(name):  # a built-in name or an hf: speech encoder folder
            frames.append(name)
        elif is_word_feature(name):
            words.append(name)
        else:
            raise ConfigError(
                f"unknown feature {name!r}; frame features: {', '.join(frame_feature_names())}; "
                "hf:PATH (a local speech encoder); word features: minilm, glove50, glove-file:PATH, hf:PATH"
            )
    return list(dict.fromkeys(frames)), list(dict.fromkeys(words))


def align_mode_for(utt: Utterance, align: str | None, want_words: bool) -> str | None:
    """The resolved alignment mode of one utterance (align.resolve_mode); word vectors
    without an alignment use the transcript's words ("text")."""
    mode = resolve_mode(utt, align or "none")
    if mode is None and want_words:
        return "text"
    return mode



def write_json_entry(path: Path, record: dict) -> None:
    with atomic_open(path) as out:
        json.dump(record, out, ensure_ascii=False)


def write_tensors(path: Path, tensors: dict, metadata: dict) -> None:
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in metadata.items()})


def read_tensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise DataError(path, f"unreadable feature entry ({exc}); delete it and run extract again") from None


def read_alignment(path: Path) -> Alignment:
    try:
        return Alignment.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(path, f"unreadable alignment entry ({exc}); delete it and run extract again") from None


class StoreLayout:
    """Where each entry of the store under `root` lives (module docstring)."""

    def __init__(self, root: str | Path, asr: str | None = None):
        from emofuse.align import check_asr

        self.root = Path(root)
        self.asr = check_asr(asr)  # the recogniser of `asr` alignments and of forced alignment's fallback

    @staticmethod
    def frames_settings(name: str) -> dict:
        feature = get_frame_feature(name)
        return {"feature": name, "hop": feature.hop, "dim": feature.dim, **feature.settings}

    def align_settings(self, mode: str) -> dict:
        settings: dict = {"mode": mode}
        if mode in ("forced", "asr"):
            from emofuse.align import asr_settings
            from emofuse.align.sphinx import Sphinx

            settings["decoder"] = Sphinx.settings()
            if self.asr != "sphinx":  # pocketsphinx-only stores keep their keys
                settings["asr"] = asr_settings(self.asr)
        if mode in ("forced", "asr", "proportional"):
            settings["vad"] = dict(VAD_SETTINGS)  # silence gate and proportional spans use it
        return settings

    def vad_dir(self) -> Path:
        return self._folder("vad", "energy", dict(VAD_SETTINGS))

    def frames_dir(self, name: str) -> Path:
        return self._folder("frames", name, self.frames_settings(name))

    def align_dir(self, mode: str) -> Path:
        return self._folder("align", mode, self.align_settings(mode))

    def words_dir(self, spec: str, align_mode: str) -> Path:
        settings = word_encoder_settings(spec)
        folder = self._folder("words", settings["name"], settings)
        return folder / self.align_dir(align_mode).name

    def _folder(self, kind: str, name: str, settings: dict) -> Path:
        return self.root / kind / f"{safe_name(name, 40)}-{settings_hash(settings)}"

    def write_settings(self, folder: Path, settings: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "settings.json").exists():
            write_json_entry(folder / "settings.json", {**settings, "code_version": CODE_VERSION})

    def clean_stale(self, folder: Path) -> None:
        """Remove temporary files an interrupted run left behind (never read as entries)."""
        now = time.time()
        for tmp in folder.glob(".*.tmp"):
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    tmp.unlink()
            except OSError:
                pass
