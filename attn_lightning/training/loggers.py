"""What each logger the configs offer needs and supports, in one place: the optional packages
behind `logger=mlflow` / `logger=wandb`, and text, images and parameters written the way each
one takes them (Lightning's Logger interface has metrics and hyperparameters only). Loggers
with no place for text or images (CSV) are skipped.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
from hydra.utils import get_class
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig

from attn_lightning.errors import ConfigError

# Lightning's classes import these lazily and fail at construction with a long message.
OPTIONAL_PACKAGES: dict[type[Logger], str] = {MLFlowLogger: "mlflow", WandbLogger: "wandb"}
MEDIA_LOGGERS = (TensorBoardLogger, MLFlowLogger, WandbLogger)
INSTALL = 'pip install -e ".[loggers]"'


def check_logger_packages(loggers: DictConfig) -> None:
    """A `logger=...` option whose package is missing fails before training, in one line."""
    for name, entry in loggers.items():
        if entry is None or "_target_" not in entry:
            continue
        cls = get_class(entry._target_)
        for logger_class, package in OPTIONAL_PACKAGES.items():
            if issubclass(cls, logger_class) and importlib.util.find_spec(package) is None:
                raise ConfigError(
                    f"logger.{name} ({cls.__name__}) needs the `{package}` package: {INSTALL}"
                )


def media_loggers(trainer: L.Trainer) -> list[Logger]:
    """The trainer's loggers that take text and images."""
    return [lg for lg in trainer.loggers if isinstance(lg, MEDIA_LOGGERS)]


def log_text(trainer: L.Trainer, tag: str, text: str, step: int, verbatim: bool = False) -> None:
    """`text` (markdown, or with `verbatim` plain text whose line breaks matter) under `tag`:
    TensorBoard's Text tab, an MLflow artifact `<tag>/step<step>.md|txt`, a W&B table."""
    for logger in media_loggers(trainer):
        if isinstance(logger, TensorBoardLogger):
            # TensorBoard renders markdown: four spaces of indent keep the line breaks
            body = "\n".join("    " + line for line in text.splitlines()) if verbatim else text
            logger.experiment.add_text(tag, body, step)
        elif isinstance(logger, MLFlowLogger):
            suffix = "txt" if verbatim else "md"
            logger.experiment.log_text(logger.run_id, text, f"{tag}/step{step:06d}.{suffix}")
        elif isinstance(logger, WandbLogger):
            logger.log_text(key=tag, columns=["step", "text"], data=[[step, text]], step=step)


def log_image(trainer: L.Trainer, tag: str, image: np.ndarray, step: int) -> None:
    """An (H, W, 3) uint8 image under `tag`: TensorBoard's Images tab, MLflow's step images,
    W&B media."""
    for logger in media_loggers(trainer):
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, step, dataformats="HWC")
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_image(logger.run_id, image, key=tag, step=step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[image], step=step)


def log_run_parameters(trainer: L.Trainer, params: Mapping[str, Any]) -> None:
    """Parameters beside the module's hyperparameters (which Lightning logs to every logger)
    into the loggers that keep parameters to filter runs by (MLflow params, W&B config);
    TensorBoard gets them in its HParams tab instead (callbacks/hparams.py)."""
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger | WandbLogger):
            logger.log_hyperparams(dict(params))
