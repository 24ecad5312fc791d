"""Shared fixtures: where the MovieLens test data lives (never inside the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``$BAYESMF_DATA``, else ``<repo>/../shared/data``."""
    return Path(os.environ.get("BAYESMF_DATA") or REPO.parent / "shared" / "data").expanduser()


@pytest.fixture(scope="session")
def ml100k_dir(data_dir) -> Path:
    """The ml-100k directory; skips the test when ``u.data`` is not there."""
    directory = data_dir / "ml-100k"
    if not (directory / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not found at {directory} (set BAYESMF_DATA to the data directory)")
    return directory
