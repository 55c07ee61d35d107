"""The progress bar counts every step but reads its metrics only at logging steps, and at most as
often as it is drawn."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import attn_lightning.callbacks.progress_bar as progress_bar
from attn_lightning.callbacks.progress_bar import ProgressBar

STEPS = 12


class StepLogger(L.LightningModule):
    """Logs its step number on the progress bar at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.log("step", float(self.global_step), prog_bar=True)
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Watch(L.Callback):
    """Records, after the bar's own hook, the bar's count and how often it read metrics."""

    def __init__(self, bar: ProgressBar) -> None:
        self.bar = bar
        self.counts: list[int] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.counts.append(int(self.bar.train_progress_bar.completed))


def fit(
    monkeypatch: pytest.MonkeyPatch, seconds_per_step: float, log_every_n_steps: int = 1
) -> tuple[ProgressBar, Watch]:
    clock = iter(seconds_per_step * i for i in range(10_000))
    monkeypatch.setattr(progress_bar.time, "monotonic", lambda: next(clock))
    bar = ProgressBar(refresh_rate=10)  # a read every 0.1 s at most
    reads = []
    original = bar.get_metrics
    monkeypatch.setattr(bar, "get_metrics", lambda *a: reads.append(1) or original(*a))
    bar.reads = reads  # type: ignore[attr-defined]
    watch = Watch(bar)
    data = DataLoader(TensorDataset(torch.randn(STEPS, 2)), batch_size=1)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar, watch],
        log_every_n_steps=log_every_n_steps,
    )
    trainer.fit(StepLogger(), data)
    return bar, watch


def test_a_fast_loop_reads_metrics_once_per_draw_interval_and_counts_every_step(monkeypatch):
    bar, watch = fit(monkeypatch, seconds_per_step=0.03)  # 3-4 steps per 0.1 s
    assert watch.counts == list(range(1, STEPS + 1))
    # 12 steps 0.03 s apart: reads at 0, 0.12, 0.24 s (steps 1, 5, 9), and the
    # one at the epoch's end, which shows the last logged value.
    assert len(bar.reads) == 4
    assert bar._metric_component._metrics["step"] == STEPS - 1


def test_a_slow_loop_logging_every_step_reads_metrics_every_step(monkeypatch):
    bar, watch = fit(monkeypatch, seconds_per_step=0.5)
    assert watch.counts == list(range(1, STEPS + 1))
    assert len(bar.reads) == STEPS + 1  # every step and the epoch's end


@pytest.mark.parametrize("seconds_per_step", [0.03, 0.5])
def test_metrics_are_read_only_at_the_steps_the_loggers_write(monkeypatch, seconds_per_step):
    bar, watch = fit(monkeypatch, seconds_per_step, log_every_n_steps=5)
    assert watch.counts == list(range(1, STEPS + 1))
    # logging steps 5 and 10 (0.15 s apart even in the fast loop), and the epoch's end
    assert len(bar.reads) == 3
    assert bar._metric_component._metrics["step"] == STEPS - 1


def test_without_logging_the_draw_interval_alone_limits_the_reads(monkeypatch):
    bar, watch = fit(monkeypatch, seconds_per_step=0.5, log_every_n_steps=0)
    assert watch.counts == list(range(1, STEPS + 1))
    assert len(bar.reads) == STEPS + 1
