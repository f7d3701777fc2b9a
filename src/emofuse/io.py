"""Files written so that a reader never sees half of one: write beside, then move into place.

Every writer in the toolkit (manifests, feature-store entries, checkpoints, reports, model
directories, result files) goes through this module. A process killed mid-write leaves at
most a stray `.name.*.tmp` beside the target; the file the name pointed to before is intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

from emofuse.errors import DataError


def default_file_mode() -> int:
    """What open() would give a new file (0o666 less the umask); mkstemp's own is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside `path` for the block to write; moved onto `path` when the block
    succeeds, removed when it fails. For writers that want a file name (torch, safetensors,
    matplotlib, onnx)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, default_file_mode())
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """An open file beside `path`, flushed to disk and moved onto `path` when the block succeeds."""
    binary = "b" in mode
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({} if binary else {"encoding": "utf-8"})) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as out:
        out.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as out:
        out.write(data)


def write_json(path: str | Path, obj, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> dict:
    """A JSON file, or one clear error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, not a JSON file") from None
    except UnicodeDecodeError:
        raise DataError(path, "not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg})") from None


def atomic_dir(out_dir: str | Path, fill: Callable[[Path], None]) -> Path:
    """Fill a fresh temporary folder beside `out_dir`, then move it into place.

    A reader never sees a half-written folder: either the old one or the new one.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(out_dir, "exists and is not a directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    old = None
    try:
        fill(tmp)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.rmdir(old)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out_dir.exists():
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def file_in_the_way(folder: str | Path) -> Path | None:
    """The file at `folder` or above it that keeps it from being (or becoming) a folder, else None."""
    folder = Path(folder)
    for where in (folder, *folder.parents):
        if where.exists():
            return None if where.is_dir() else where
    return None


def plain(value):
    """A JSON-ready copy of nested dicts, lists and tuples (tuples become lists, keys strings)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
