"""Shared fixtures: where the real data lives, and tiny audio written on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
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


def tone(seconds: float = 0.5, sr: int = 16000, freq: float = 220.0, channels: int = 1) -> np.ndarray:
    """A voiced-like signal: a harmonic tone with a little noise (real audio, not zeros)."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(0)
    y = 0.3 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(2 * np.pi * 2 * freq * t)
    y = (y + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    if channels > 1:
        y = np.stack([y] * channels, axis=1)
    return y


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
