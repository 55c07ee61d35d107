"""Shared fixtures. Every test runs on a fresh clone with no data and no network: the corpus of
the CLI and datamodule tests is a generated play (tests/corpus.py) with TinyShakespeare's 65
characters, served as the project serves any local text (`ATTN_LIGHTNING_TEXT`, i.e.
`data.path`).

The few tests that measure TinyShakespeare itself take the `shakespeare_path` fixture and are
marked `shakespeare` (automatically, below). They find the text where the project itself
looks (conf/paths/default.yaml): $ATTN_LIGHTNING_TEST_SHAKESPEARE (a file), else
tinyshakespeare.txt in $ATTN_LIGHTNING_DATA_DIR, else in the download cache
$XDG_CACHE_HOME/attn_lightning (~/.cache/attn_lightning); without it they skip, saying so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from corpus import write_generated_play
from helpers import GENERATED_TEXT, cli_environment

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that read the real corpus form the `shakespeare` group (`-m "not shakespeare"`
    leaves them out; they skip by themselves where the text is missing)."""
    for item in items:
        if "shakespeare_path" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shakespeare)


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
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable data dir holding the generated corpus (helpers.GENERATED_TEXT), which
    `cli_environment(data_dir)` and `use_data_dir` make the text every run trains on."""
    directory = tmp_path_factory.mktemp("data")
    write_generated_play(directory / GENERATED_TEXT)
    return directory


@pytest.fixture
def cli_env(data_dir: Path) -> dict[str, str]:
    """Environment for running `python -m attn_lightning` in a subprocess."""
    return cli_environment(data_dir)
