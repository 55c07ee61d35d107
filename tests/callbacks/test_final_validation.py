"""Every run ends with a validation at its last step, whatever val_check_interval is: in a
Trainer of its own (tiny model, generated text) and through train() as a sweeper calls it."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import quiet_trainer, tiny_lit_gpt
from hydra import compose, initialize_config_dir

from attn_lightning.callbacks.final_validation import ValidateAtLastStep
from attn_lightning.config import CONFIG_DIR
from attn_lightning.data.shakespeare import ShakespeareDataModule
from attn_lightning.train import train

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(300))


class ValidationSteps(L.Callback):
    """The global step of every validation outside the sanity check, and its val/loss."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.seen.append((trainer.global_step, float(trainer.callback_metrics["val/loss"])))


def text_datamodule(tmp_path: Path) -> ShakespeareDataModule:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return ShakespeareDataModule(
        data_dir=str(tmp_path),
        url="http://127.0.0.1:9/never-contacted",
        sha256="",
        path=str(path),
        block_size=16,
        batch_size=4,
        val_windows=8,
        eval_batch_size=8,
    )


def fit(tmp_path: Path, max_steps: int, interval: int, callbacks: list) -> list[tuple[int, float]]:
    dm = text_datamodule(tmp_path)
    dm.prepare_data()
    torch.manual_seed(0)
    module = tiny_lit_gpt(dm.tokenizer.state_dict(), block_size=16)
    seen = ValidationSteps()
    trainer = quiet_trainer(
        max_steps=max_steps,
        val_check_interval=interval,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[*callbacks, seen],
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == max_steps  # the stop request does not cut training short
    return seen.seen


def test_last_step_is_validated_when_it_is_not_a_multiple_of_the_interval(tmp_path: Path):
    assert [s for s, _ in fit(tmp_path, 7, 5, [])] == [5]  # Lightning alone: step 7 unvalidated
    assert [s for s, _ in fit(tmp_path, 7, 5, [ValidateAtLastStep()])] == [5, 7]


def test_no_second_validation_when_the_last_step_is_a_validation_step(tmp_path: Path):
    assert [s for s, _ in fit(tmp_path, 6, 3, [ValidateAtLastStep()])] == [3, 6]


def test_a_run_shorter_than_the_interval_returns_its_val_loss_and_tests_its_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A short Optuna trial's objective is train()'s val/loss: it must exist; the checkpoint of
    that validation is the "best" the test reloads."""
    monkeypatch.chdir(tmp_path)
    dm_dir = tmp_path / "data"
    dm_dir.mkdir()
    (dm_dir / "corpus.txt").write_text(TEXT)
    overrides = [
        "trainer=cpu",
        f"paths.output_dir={tmp_path / 'run'}",
        f"data.path={dm_dir / 'corpus.txt'}",
        f"data.data_dir={dm_dir}",
        "model.n_layer=1",
        "model.n_head=2",
        "model.n_embd=16",
        "data.block_size=16",
        "data.batch_size=4",
        "data.val_windows=8",
        "data.eval_batch_size=8",
        "trainer.max_steps=4",
        "trainer.val_check_interval=250",
        "trainer.num_sanity_val_steps=0",
        "+trainer.enable_progress_bar=false",
        "~callbacks.progress_bar",
        "~callbacks.model_summary",
        "~callbacks.text_sample",
        "~callbacks.run_report",
        "~callbacks.attention_maps",
        "~callbacks.attention_stats",
        "~logger.tensorboard",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    metrics = train(cfg)
    assert metrics.get("val/loss") is not None and metrics["val/loss"] > 0
    best = list((tmp_path / "run" / "checkpoints").glob("step000004-*.ckpt"))
    assert len(best) == 1, "the final validation's checkpoint is the best one"
    assert "test/loss" in metrics
