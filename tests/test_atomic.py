"""The one atomic write: a file is either the old one or the new one, never a torn mix."""

from __future__ import annotations

import os

import pytest

from attn_lightning.atomic import atomic_write, write_bytes, write_text


def test_a_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "sub" / "report.md"
    write_text(path, "old\n")
    write_text(path, "new\r\n")  # newlines kept as given (CSV writers choose their own)
    assert path.read_bytes() == b"new\r\n"
    assert [p.name for p in path.parent.iterdir()] == ["report.md"]


def test_an_error_inside_the_block_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.ckpt"
    write_bytes(path, b"previous")
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as f:
        f.write(b"half a fi")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_failed_first_write_creates_no_file(tmp_path):
    path = tmp_path / "data.pt"
    with pytest.raises(ValueError), atomic_write(path) as f:
        f.write(b"partial")
        raise ValueError("digest mismatch")
    assert list(tmp_path.iterdir()) == []


def test_the_data_is_on_disk_before_the_rename(tmp_path, monkeypatch):
    """fsync comes before os.replace: a power cut after the rename cannot leave an empty file
    under the final name."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1]
    )
    write_text(tmp_path / "x.txt", "x")
    assert events == ["fsync", "replace"]
