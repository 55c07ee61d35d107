"""ckpt_path's names pick the file Lightning's own resolution picks (its
`_parse_ckpt_path`, called here as the reference), on fabricated checkpoint dirs: no training.
The killed-and-resumed runs are in test_faults.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import quiet_trainer
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf

from attn_lightning.errors import ConfigError
from attn_lightning.runs.resume import checkpoint_file, lightning_checkpoint_dir


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


def run_config(tmp_path: Path, loggers: dict) -> DictConfig:
    return OmegaConf.create({"trainer": {"default_root_dir": str(tmp_path)}, "logger": loggers})


TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"


@pytest.mark.parametrize(
    ("loggers", "where"),
    [
        ({"tb": {"_target_": TENSORBOARD, "save_dir": "{tmp}/logs", "name": "tb", "version": ""}},
         "logs/tb/checkpoints"),
        ({"tb": {"_target_": TENSORBOARD, "save_dir": "{tmp}/logs", "version": "run1"}},
         "logs/lightning_logs/run1/checkpoints"),  # the logger's default name
        ({"csv": {"_target_": "attn_lightning.training.csv_logger.ResumableCSVLogger",
                  "save_dir": "{tmp}/logs", "name": "csv", "version": 3}},
         "logs/csv/version_3/checkpoints"),
        ({}, "checkpoints"),  # no logger: the trainer's default_root_dir
    ],
)  # fmt: skip
def test_last_of_a_checkpoint_callback_without_dirpath_is_where_lightning_put_it(
    tmp_path: Path, loggers: dict, where: str
) -> None:
    """A user's ModelCheckpoint without dirpath writes under the first logger's dir: `last`
    finds its file there, as Lightning's own resolution does given the built loggers."""
    for cfg in loggers.values():
        cfg["save_dir"] = cfg["save_dir"].format(tmp=tmp_path)
    touch(tmp_path / where / "last.ckpt", 1_000)
    callbacks = [ModelCheckpoint(every_n_train_steps=10)]
    built = [instantiate(c) for c in loggers.values()] or False
    trainer = quiet_trainer(callbacks=callbacks, default_root_dir=tmp_path, logger=built)
    expected = Path(lightning_resolves(trainer, "last"))
    default_dir = lightning_checkpoint_dir(run_config(tmp_path, loggers))
    assert checkpoint_file("last", callbacks, tmp_path, (), default_dir) == expected
    assert expected == tmp_path / where / "last.ckpt"
    assert checkpoint_file("last", callbacks, tmp_path, ()) is None  # what was missed before


def test_an_unversioned_logger_resumes_from_its_newest_version(tmp_path: Path) -> None:
    """version=null: this attempt logs to the next version_<n>; the previous attempt's
    checkpoints are in the newest existing one (Lightning would look in the new, empty dir)."""
    for n in (0, 2, 10):
        touch(tmp_path / "tb" / f"version_{n}" / "checkpoints" / "last.ckpt", 1_000 + n)
    loggers = {"tb": {"_target_": TENSORBOARD, "save_dir": str(tmp_path), "name": "tb"}}
    default_dir = lightning_checkpoint_dir(run_config(tmp_path, loggers))
    assert default_dir == tmp_path / "tb" / "version_10" / "checkpoints"


def test_a_logger_whose_checkpoint_dir_is_unknown_before_it_runs_is_refused(
    tmp_path: Path,
) -> None:
    loggers = {"mlflow": {"_target_": "lightning.pytorch.loggers.MLFlowLogger"}}
    with pytest.raises(ConfigError, match=r"has no dirpath.*MLFlowLogger.*set the callback's"):
        lightning_checkpoint_dir(run_config(tmp_path, loggers))


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
