"""TensorBoard's HParams tab: each run's hyperparameters next to the metrics they explain.

The tab reads, per run dir, a session start summary (the hyperparameters), an experiment
summary (the metric tags to show) and, for each of those tags, the last value of the run's own
scalars. So the summary names the real curves (`val/loss`, `test/loss`, ...) and logs no
values of its own: nothing is added to the curves, and the tab shows their final values.

TensorBoard keeps the first summary written under a tag, so each is written once: the
hyperparameters and metric tags when training starts (a killed run still shows, with its
latest values), the end status once the run is complete (after the test when it tests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from attn_lightning.analysis.report import flatten
from attn_lightning.runs.record import chosen_option, class_name
from attn_lightning.training.loggers import log_run_parameters
from attn_lightning.training.metrics import ANSWER_METRICS, METRICS

Scalar = bool | int | float | str


def scalar_leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`: the scalar leaves of a config, lists as text.

    Hydra's `_target_`/`_partial_` say how to build, not what was trained, and None (a
    default chosen in code) has no value to plot: both are left out."""
    return {
        name: value if isinstance(value, bool | int | float | str) else str(value)
        for name, value in flatten(tree, prefix).items()
        if value is not None and name.rsplit(".", 1)[-1] not in ("_target_", "_partial_")
    }


def metric_tags(pl_module: L.LightningModule, test: bool) -> list[str]:
    """The scalar tags whose final values explain a run: train loss, then every evaluation
    metric the module logs for validation and (when the run tests) each test split."""
    stages = ["val", *(getattr(pl_module, "test_splits", ("test",)) if test else ())]
    answers = getattr(pl_module, "answer_metrics", False)
    names = [m for m in METRICS if answers or m not in ANSWER_METRICS]
    return ["train/loss", *(f"{stage}/{name}" for stage in stages for name in names)]


def config_choices(groups: Sequence[str]) -> dict[str, str]:
    """The options this Hydra run picked for config groups (`attention=gqa`): names a reader
    knows, which the built classes do not always tell apart (gqa and mqa share one class)."""
    chosen = {group: chosen_option(group) for group in groups}
    return {group: option for group, option in chosen.items() if option is not None}


def session_end_summary(status: int) -> Summary:
    content = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status),
        version=metadata.PLUGIN_DATA_VERSION,
    )
    return Summary(
        value=[
            Summary.Value(
                tag=metadata.SESSION_END_INFO_TAG,
                metadata=metadata.create_summary_metadata(content),
            )
        ]
    )


class HParamsSummary(L.Callback):
    """Writes the HParams summaries into every TensorBoard logger's run, on rank 0; MLflow and
    W&B get the config choices and `hparams` as parameters (Lightning logs the module's own).

    Args:
        hparams: hyperparameters beside the module's own `model.*`, `attention.*`, `optim.*`
            and `schedule.*` (the config passes seed and max_steps).
        choices: config groups whose chosen option is a hyperparameter too (`attention`: the
            variant's name; outside a Hydra run, its class name).
        test: whether the run is tested after fit: its test metrics are listed, and the run is
            complete only after the test.
    """

    def __init__(
        self,
        hparams: Mapping[str, Any] | None = None,
        choices: Sequence[str] = ("attention", "data"),
        test: bool = True,
    ) -> None:
        self.extra = {**config_choices(choices), **(hparams or {})}
        self.test = test

    def hyperparameters(self, pl_module: L.LightningModule) -> dict[str, Scalar]:
        module_hparams = pl_module.hparams
        flat = scalar_leaves(self.extra)
        attention = module_hparams.get("attention", {}).get("_target_")
        if attention and "attention" not in flat:  # outside a Hydra run: no option name
            flat["attention"] = class_name(attention)
        for group in ("model", "attention", "optim", "schedule"):
            flat.update(scalar_leaves(module_hparams.get(group) or {}, f"{group}."))
        tokenizer = module_hparams.get("tokenizer", {}).get("_target_")
        if tokenizer:
            flat["tokenizer"] = class_name(tokenizer)
        return flat

    @staticmethod
    def _write(trainer: L.Trainer, *summaries: Summary) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                writer = logger.experiment._get_file_writer()  # as Lightning's log_hyperparams
                for summary in summaries:
                    writer.add_summary(summary)
                logger.experiment.flush()

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tags = metric_tags(pl_module, self.test)
        experiment, session_start, _ = hparams_summaries(
            self.hyperparameters(pl_module), dict.fromkeys(tags, 0.0)
        )
        self._write(trainer, experiment, session_start)
        log_run_parameters(trainer, scalar_leaves(self.extra))  # MLflow params, W&B config

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.test:
            self._write(trainer, session_end_summary(api_pb2.STATUS_SUCCESS))

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.test:
            self._write(trainer, session_end_summary(api_pb2.STATUS_SUCCESS))
