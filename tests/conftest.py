"""Shared fixtures. The TinyShakespeare text is never committed: tests read it from
$ATTN_LIGHTNING_TEST_SHAKESPEARE or ../shared/data/tinyshakespeare.txt next to the repo."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import cli_environment

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = Path(
    os.environ.get(
        "ATTN_LIGHTNING_TEST_SHAKESPEARE", REPO_ROOT.parent / "shared/data/tinyshakespeare.txt"
    )
)


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """Path of a local TinyShakespeare copy (tests that need it skip without one)."""
    if not SHAKESPEARE.is_file():
        pytest.skip(
            f"TinyShakespeare not found at {SHAKESPEARE}: set ATTN_LIGHTNING_TEST_SHAKESPEARE"
        )
    return SHAKESPEARE


@pytest.fixture(scope="session")
def data_dir(shakespeare_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable data dir holding the text, as if it had been downloaded there."""
    directory = tmp_path_factory.mktemp("data")
    shutil.copy(shakespeare_path, directory / "tinyshakespeare.txt")
    return directory


@pytest.fixture
def cli_env(data_dir: Path) -> dict[str, str]:
    """Environment for running `python -m attn_lightning` in a subprocess."""
    return cli_environment(data_dir)
