"""Shared fixtures. The TinyShakespeare text is never committed: the tests that need it find
it where the project itself looks (conf/paths/default.yaml): $ATTN_LIGHTNING_TEST_SHAKESPEARE
(a file), else tinyshakespeare.txt in $ATTN_LIGHTNING_DATA_DIR, else in the download cache
$XDG_CACHE_HOME/attn_lightning (~/.cache/attn_lightning). Without it they skip."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import cli_environment

FILE_NAME = "tinyshakespeare.txt"


def find_shakespeare() -> Path:
    """The first of the places the project reads the text from (the last one when none has it,
    for the skip message)."""
    if os.environ.get("ATTN_LIGHTNING_TEST_SHAKESPEARE"):
        return Path(os.environ["ATTN_LIGHTNING_TEST_SHAKESPEARE"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "attn_lightning"
    dirs = [os.environ.get("ATTN_LIGHTNING_DATA_DIR"), cache]
    candidates = [Path(d).expanduser() / FILE_NAME for d in dirs if d]
    return next((c for c in candidates if c.is_file()), candidates[-1])


SHAKESPEARE = find_shakespeare()


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """Path of a local TinyShakespeare copy (tests that need it skip without one)."""
    if not SHAKESPEARE.is_file():
        pytest.skip(
            f"TinyShakespeare not found at {SHAKESPEARE}: run `python -m attn_lightning` once "
            "(it downloads the text), or set ATTN_LIGHTNING_DATA_DIR"
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
