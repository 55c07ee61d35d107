"""TensorBoard's Custom Scalars tab as the run's health page: train and val loss on one chart,
tokens/s, memory and learning rate first; the attention statistics below, collapsed.

The Scalars and Time Series tabs group charts by the tag's first path component, in
alphabetical order, so `attn/*` (4 statistics per layer, more per head) comes before `train/*`
and `val/*`. The metric names stay (reports, sweeps and users' own plots read them); this
layout is the page to open instead: `http://localhost:6006/#custom_scalars`. Its charts take
regexes, so the layout is written once per run and, across the runs of a log dir, TensorBoard
merges the identical charts into one whose lines are the runs.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.custom_scalar import layout_pb2, metadata

from attn_lightning.callbacks.attention_stats import AttentionStatistics

log = logging.getLogger(__name__)

Charts = dict[str, list[str]]  # chart title -> regexes of the tags it plots, one line each

ATTENTION_STATISTICS = ("entropy", "distance", "local_ratio", "softmax_gap")  # analysis/stats.py


def health_charts(answer_metrics: bool) -> Charts:
    """What says whether a run is going well, each chart one quantity."""
    charts = {
        "loss (train, val)": [r"^train/loss$", r"^val/loss$"],
        "tokens per second": [r"^train/tokens_per_sec$"],
        "peak memory (MiB)": [r"^memory/"],
        "learning rate": [r"^train/lr"],
    }
    if answer_metrics:
        charts["answers (val)"] = [r"^val/exact_match$", r"^val/answer_token_acc$"]
    return charts


def layer_charts() -> Charts:
    """One chart per statistic, a line per layer (its mean over heads)."""
    return {name: [rf"^attn/\d+/{name}$"] for name in ATTENTION_STATISTICS}


def head_charts(n_layer: int, per_head: tuple[str, ...]) -> Charts:
    """One chart per layer and per-head statistic, a line per head."""
    return {
        f"layer {layer} {name}": [rf"^attn/{layer}/head\d+/{name}$"]
        for layer in range(n_layer)
        for name in per_head
    }


def layout(categories: list[tuple[str, Charts, bool]]) -> layout_pb2.Layout:
    """The layout proto of (title, charts, closed) categories."""
    return layout_pb2.Layout(
        category=[
            layout_pb2.Category(
                title=title,
                closed=closed,
                chart=[
                    layout_pb2.Chart(
                        title=name, multiline=layout_pb2.MultilineChartContent(tag=tags)
                    )
                    for name, tags in charts.items()
                ],
            )
            for title, charts, closed in categories
        ]
    )


def layout_summary(proto: layout_pb2.Layout) -> Summary:
    """The summary TensorBoard reads the layout from. Written here rather than with
    `SummaryWriter.add_custom_scalars`, whose dict form cannot mark a category closed."""
    tensor = TensorProto(
        dtype="DT_STRING",
        string_val=[proto.SerializeToString()],
        tensor_shape=TensorShapeProto(),
    )
    plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME)
    value = Summary.Value(
        tag=metadata.CONFIG_SUMMARY_TAG, tensor=tensor, metadata=SummaryMetadata(plugin_data=plugin)
    )
    return Summary(value=[value])


class ScalarsLayout(L.Callback):
    """Writes the Custom Scalars layout into every TensorBoard logger's run when training
    starts, on rank 0: "health" open, "attention" (per layer) and "attention heads" closed, the
    latter two only when the AttentionStatistics callback logs them. Without a TensorBoard
    logger it does nothing."""

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        categories = [("health", health_charts(getattr(pl_module, "answer_metrics", False)), False)]
        stats = [cb for cb in trainer.callbacks if isinstance(cb, AttentionStatistics)]
        if stats and stats[0].due.every_n > 0:
            categories.append(
                ("attention (mean over heads, a line per layer)", layer_charts(), True)
            )
            per_head = head_charts(len(pl_module.model.blocks), stats[0].per_head)
            if per_head:
                categories.append(("attention heads (a line per head)", per_head, True))
        summary = layout_summary(layout(categories))
        for logger in loggers:
            logger.experiment._get_file_writer().add_summary(summary)  # as hparams.py
            logger.experiment.flush()
            log.info(
                "TensorBoard: `tensorboard --logdir %s`, the run's health at "
                "http://localhost:6006/#custom_scalars",
                logger.root_dir,
            )
