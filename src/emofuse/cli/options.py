"""Checks of command-line values that the option types cannot express: a path that must be a
file or a folder, a number within its range. Each refusal is a ConfigError naming the option,
printed by `emofuse.cli.main` as one line, before the command writes or decodes anything.
Also what the commands share: their consoles, and --asr/--language read into a Predictor option."""

from __future__ import annotations

import math
from pathlib import Path

from emofuse.errors import ConfigError
from emofuse.io import file_in_the_way


def output_file(option: str, path: Path | None) -> None:
    """`path` can become a file: not an existing folder, its parent not a file."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, not a folder")


def output_folder(option: str, path: Path | None) -> None:
    """`path` can become a folder: not an existing file, nor inside one."""
    if path is None:
        return
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise ConfigError(f"{option} {path}: {'is a file' if blocker == path else f'{blocker} is a file'}; "
                          "give a folder")


def in_range(option: str, value: float | int, low: float | None = None, high: float | None = None,
             above: bool = False) -> None:
    """`value` is finite and low <= value <= high (`above`: low < value)."""
    if not math.isfinite(value) or (low is not None and (value <= low if above else value < low)) \
            or (high is not None and value > high):
        bounds = ([f"> {low:g}" if above else f">= {low:g}"] if low is not None else []) \
            + ([f"<= {high:g}"] if high is not None else [])
        raise ConfigError(f"{option} {value:g}: must be {' and '.join(bounds) or 'a finite number'}")


def consoles():
    """(stdout, stderr) consoles for a command's output and its notes."""
    from rich.console import Console

    return Console(highlight=False), Console(stderr=True, highlight=False)


def asr_option(asr: str | None, language: str | None, info) -> dict:
    """The Predictor's `asr` for --asr/--language (checked now, before any file is read)."""
    if asr is None and language is None:
        return {}
    from emofuse.align import with_language

    return {"asr": with_language(asr or info.asr or "whisper", language)}
