"""Errors a user can act on: each names the file (when there is one) and the problem."""

from __future__ import annotations

from pathlib import Path


class EmofuseError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class DataError(EmofuseError):
    """A corpus file, manifest or audio file that cannot be used as it is."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class LabelError(EmofuseError):
    """A label that the chosen label set does not know."""


class ConfigError(EmofuseError):
    """An experiment config key or value that is not valid."""
