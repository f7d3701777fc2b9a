"""RAVDESS speech (Livingstone & Russo 2018, PLoS ONE 13(5): e0196391).

Layout: the original release, `ROOT/Actor_01/ ... ROOT/Actor_24/`, one file per utterance,
`.wav` (the 48 kHz release) or `.flac` (the converted copy in `$EMOFUSE_DATA/ravdess`).
Everything is in the file name, seven two-digit fields:

    03-01-05-01-02-01-12.flac
    modality - vocal channel - emotion - intensity - statement - repetition - actor

modality 01 AV / 02 video / 03 audio; vocal channel 01 speech / 02 song (song files are
skipped: this is the speech loader); emotion 01 neutral, 02 calm, 03 happy, 04 sad,
05 angry, 06 fearful, 07 disgust, 08 surprised; intensity 01 normal / 02 strong; statement
01 "Kids are talking by the door" / 02 "Dogs are sitting by the door"; actor 01-24, odd
male, even female.

speaker = "Actor_XX" (also the fold group: RAVDESS has no sessions). The transcript is the
statement; there are no word timings in the corpus (the align stage provides them).
"""

from __future__ import annotations

import re
from pathlib import Path

from emofuse.corpora.common import PreparedCorpus, Scan, corpus_folders
from emofuse.errors import DataError

EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}
INTENSITIES = {"01": "normal", "02": "strong"}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
MODALITIES = {"01": "audio-video", "02": "video-only", "03": "audio-only"}
AUDIO_SUFFIXES = (".wav", ".flac")

_CODE = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")


def parse_name(stem: str) -> dict:
    """The seven fields of a RAVDESS file name, checked; raises ValueError saying what is wrong."""
    match = _CODE.match(stem)
    if not match:
        raise ValueError(
            "file name is not a RAVDESS code (expected seven two-digit fields like 03-01-05-01-02-01-12)"
        )
    modality, channel, emotion, intensity, statement, repetition, actor = match.groups()
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality code {modality!r} (known: {', '.join(MODALITIES)})")
    if channel != "01":
        kind = "song" if channel == "02" else f"unknown vocal channel {channel!r}"
        raise ValueError(f"{kind}: this loader reads the speech part (vocal channel 01)")
    if emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion code {emotion!r} (known: {', '.join(EMOTIONS)})")
    if intensity not in INTENSITIES:
        raise ValueError(f"unknown intensity code {intensity!r} (known: 01, 02)")
    if statement not in STATEMENTS:
        raise ValueError(f"unknown statement code {statement!r} (known: 01, 02)")
    if repetition not in ("01", "02"):
        raise ValueError(f"unknown repetition code {repetition!r} (known: 01, 02)")
    actor_number = int(actor)
    if not 1 <= actor_number <= 99:
        raise ValueError(f"actor code {actor!r} out of range")
    return {
        "modality": MODALITIES[modality],
        "emotion_code": emotion,
        "emotion": EMOTIONS[emotion],
        "intensity": INTENSITIES[intensity],
        "statement": statement,
        "repetition": int(repetition),
        "actor": actor_number,
        "gender": "male" if actor_number % 2 == 1 else "female",
    }


def load_ravdess(path: str | Path, scan: Scan) -> PreparedCorpus:
    root, folders = corpus_folders(
        path, "RAVDESS", "Actor_*", lambda one: re.fullmatch(r"Actor_\d+", one.name) is not None,
        "no Actor_XX folders: expected the RAVDESS release layout ROOT/Actor_01/...",
    )
    files = sorted(
        f for folder in folders for f in folder.iterdir()
        if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES
    )
    if not files:
        raise DataError(root, "the Actor_XX folders hold no .wav or .flac files")

    seen: dict[str, Path] = {}  # the same recording as .wav and .flac: keep the first
    for file in scan.each(files):
        if file.stem in seen:
            scan.skip(file, f"same utterance as {seen[file.stem]} (kept that one)")
            continue
        try:
            code = parse_name(file.stem)
        except ValueError as exc:
            scan.skip(file, str(exc))
            continue
        folder_actor = re.fullmatch(r"Actor_(\d+)", file.parent.name)
        if folder_actor and int(folder_actor.group(1)) != code["actor"]:
            scan.skip(file, f"actor {code['actor']:02d} in the file name but the file is in {file.parent.name}")
            continue
        label = scan.label(code["emotion"], file)
        if label is None:
            continue
        duration = scan.duration(file)
        if duration is None:
            continue
        seen[file.stem] = file
        scan.add(
            file, id=file.stem, audio=file, speaker=f"Actor_{code['actor']:02d}",
            label=label, original_label=code["emotion"], transcript=STATEMENTS[code["statement"]],
            meta={**code, "duration": round(duration, 4)},
        )
    return scan.finish("ravdess", root)
