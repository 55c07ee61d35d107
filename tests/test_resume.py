"""ckpt_path's names pick the file Lightning's own resolution picks (its
`_parse_ckpt_path`, called here as the reference), on fabricated checkpoint dirs: no training.
The killed-and-resumed runs are in test_faults.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from attn_lightning.resume import checkpoint_file


def lightning_resolves(trainer, ckpt_path: str | None) -> str | None:
    connector = trainer._checkpoint_connector
    return connector._parse_ckpt_path(
        TrainerFn.FITTING, ckpt_path, model_provided=True, model_connected=False
    )


def touch(path: Path, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))


def test_last_is_the_newest_last_checkpoint_of_any_checkpoint_callback(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "last.ckpt", 1_000)
    touch(tmp_path / "a" / "step000300.ckpt", 4_000)  # newer, but not a last checkpoint
    touch(tmp_path / "b" / "last-v1.ckpt", 3_000)  # the newest last, in the other dir
    touch(tmp_path / "b" / "last.ckpt", 2_000)
    callbacks = [
        ModelCheckpoint(dirpath=tmp_path / "a", monitor="val/loss"),
        ModelCheckpoint(dirpath=tmp_path / "b", every_n_train_steps=10),
    ]
    trainer = quiet_trainer(callbacks=callbacks, default_root_dir=tmp_path)
    expected = lightning_resolves(trainer, "last")
    assert Path(expected).name == "last-v1.ckpt"
    assert checkpoint_file("last", callbacks, tmp_path, ()) == Path(expected)


def test_last_without_one_starts_fresh_as_lightning_does(tmp_path: Path) -> None:
    callbacks = [ModelCheckpoint(dirpath=tmp_path / "none")]
    trainer = quiet_trainer(callbacks=callbacks, default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="no last checkpoint"):
        assert lightning_resolves(trainer, "last") is None
    assert checkpoint_file("last", callbacks, tmp_path, ()) is None


def test_hpc_is_lightnings_slurm_checkpoint_named_or_implied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in (2, 10, 9):
        touch(tmp_path / f"hpc_ckpt_{version}.ckpt", 1_000 + version)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)  # outside SLURM, even on a SLURM CI
    trainer = quiet_trainer(default_root_dir=tmp_path)
    expected = Path(lightning_resolves(trainer, "hpc"))
    assert checkpoint_file("hpc", [], tmp_path, ()) == expected
    assert checkpoint_file(None, [], tmp_path, ()) is None  # outside SLURM: a fresh start
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")  # a batch job (not an interactive one)
    assert Path(lightning_resolves(trainer, None)) == expected
    assert checkpoint_file(None, [], tmp_path, ()) == expected
