"""Shared fixtures: where the real data lives, torch on one thread. What a test imports by
name (tiny audio, tiny corpora and runs, model directories) is in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("EMOFUSE_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set EMOFUSE_DATA); CI always has it")
    return root


@pytest.fixture(scope="session")
def ravdess_root(shared_data: Path) -> Path:
    path = shared_data / "ravdess"
    if not path.is_dir():
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture(scope="session")
def meld_root(shared_data: Path) -> Path:
    path = shared_data / "meld-text"
    if not path.is_dir():
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the CI box has 2 cores shared with other jobs, and
    results must not depend on the thread count. Opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch  # here, not at the top: the corpus and feature tests never import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
