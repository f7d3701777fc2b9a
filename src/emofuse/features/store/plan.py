"""What an extraction run must compute: a job per utterance with entries missing (`plan`), and
which utterances a run takes when several runs share one store (`--shard K/N`).

A job names the entry files to write; the engine (extract.py) runs jobs on workers, each of
which writes its entries atomically, so runs planned at the same time never clash.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from emofuse.align.vad import VAD_SETTINGS
from emofuse.corpora.base import Corpus, Utterance
from emofuse.errors import ConfigError, EmofuseError
from emofuse.features.store.layout import StoreLayout, align_mode_for, split_features, utterance_key
from emofuse.features.words import word_encoder_settings


@dataclass
class Failure:
    id: str
    stage: str
    reason: str


@dataclass
class Job:
    utt: dict
    align_mode: str | None
    align_path: str | None
    compute_align: bool
    frames: list  # [(feature name, entry path)]
    words: list  # [(encoder spec, entry path)]
    vad_path: str | None = None  # energy speech mask entry to compute
    device: str = "auto"  # where hf: encoders run (extract.py's docstring)
    asr: str = "whisper"  # the recogniser (align.make_recogniser)


def plan(
    layout: StoreLayout, corpus: Corpus | Sequence[Utterance], features: Sequence[str], align: str | None = "auto",
    force: bool = False, device: str = "auto",
) -> tuple[list[Job], int, list[Failure]]:
    """The jobs of missing entries, how many utterances are complete, and utterances that
    cannot be planned (e.g. `--align corpus` without corpus word times)."""
    frame_names, word_specs = split_features(features)
    frame_dirs = {name: layout.frames_dir(name) for name in frame_names}
    for name, folder in frame_dirs.items():
        layout.write_settings(folder, layout.frames_settings(name))
    vad_dir = layout.vad_dir() if frame_names else None
    if vad_dir is not None:
        layout.write_settings(vad_dir, dict(VAD_SETTINGS))
    jobs, complete, failures = [], 0, []
    align_dirs: dict[str, Path] = {}
    words_dirs: dict[tuple[str, str], Path] = {}
    for utt in corpus:
        try:
            mode = align_mode_for(utt, align, bool(word_specs))
        except EmofuseError as exc:
            failures.append(Failure(utt.id, "align", str(exc)))
            continue
        if mode is not None and mode not in align_dirs:
            align_dirs[mode] = layout.align_dir(mode)
            layout.write_settings(align_dirs[mode], layout.align_settings(mode))
        frame_key = utterance_key(utt, with_text=False)
        text_key = utterance_key(utt, with_text=True)
        todo_frames = [(n, str(frame_dirs[n] / f"{frame_key}.safetensors")) for n in frame_names]
        if not force:
            todo_frames = [(n, p) for n, p in todo_frames if not os.path.exists(p)]
        vad_path = None
        if vad_dir is not None:
            vad_path = str(vad_dir / f"{frame_key}.safetensors")
            if not force and os.path.exists(vad_path):
                vad_path = None
        if utt.audio is None:
            if todo_frames or vad_path:
                failures.append(Failure(utt.id, "audio", "utterance has no audio file"))
            todo_frames, vad_path = [], None
        align_path = compute_align = None
        todo_words = []
        if mode is not None:
            align_path = str(align_dirs[mode] / f"{text_key}.json")
            compute_align = force or not os.path.exists(align_path)
            for spec in word_specs:
                if (spec, mode) not in words_dirs:
                    words_dirs[(spec, mode)] = layout.words_dir(spec, mode)
                    settings = word_encoder_settings(spec)
                    layout.write_settings(words_dirs[(spec, mode)].parent, settings)
                    words_dirs[(spec, mode)].mkdir(parents=True, exist_ok=True)
                path = str(words_dirs[(spec, mode)] / f"{text_key}.safetensors")
                if force or compute_align or not os.path.exists(path):
                    todo_words.append((spec, path))
        if todo_frames or compute_align or todo_words or vad_path:
            jobs.append(Job(utt.to_json(), mode, align_path, bool(compute_align), todo_frames, todo_words, vad_path,
                            device, layout.asr))
        else:
            complete += 1
    for folder in [*frame_dirs.values(), *align_dirs.values(), *words_dirs.values(), *([vad_dir] if vad_dir else [])]:
        layout.clean_stale(folder)
    return jobs, complete, failures


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` (1 <= K <= N): part K of N, e.g. `--shard $SLURM_ARRAY_TASK_ID/8` with `--array=1-8`."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ConfigError(f"--shard {text!r} must be K/N with 1 <= K <= N, e.g. 2/8")
    return int(match[1]), int(match[2])


def shard_of(utterance_id: str, shards: int) -> int:
    """The 1-based shard of an utterance: a SHA-256 of its id, the same on every machine and
    run (Python's hash() of a string changes from one process to the next)."""
    digest = hashlib.sha256(utterance_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards + 1


def in_shard(utterances: Sequence[Utterance], shard: tuple[int, int] | None) -> list[Utterance]:
    """The utterances of shard K of N; N runs, one per shard, cover each utterance exactly once."""
    if shard is None:
        return list(utterances)
    k, n = shard
    return [utt for utt in utterances if shard_of(utt.id, n) == k]
