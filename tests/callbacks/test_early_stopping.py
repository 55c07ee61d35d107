"""The early_stopping options (conf/callbacks/early_stopping/) stop a run once its metric
reaches the threshold set from the command line, and not before."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import quiet_trainer, tiny_lit_gpt, tiny_text_datamodule
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from attn_lightning.config import CONFIG_DIR
from attn_lightning.training.metrics import METRICS


def early_stopping_config(option: str, overrides: list[str], tmp_path: Path):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"paths.output_dir={tmp_path}", f"+callbacks/early_stopping={option}"]
            + [f"callbacks.early_stopping.{o}" for o in overrides],
        )
    return cfg.callbacks.early_stopping


def steps_trained(early_stopping_cfg, tmp_path: Path) -> int:
    dm = tiny_text_datamodule(tmp_path)
    torch.manual_seed(0)
    trainer = quiet_trainer(
        max_steps=12,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        callbacks=[instantiate(early_stopping_cfg)],
    )
    trainer.fit(tiny_lit_gpt(dm.tokenizer.state_dict(), block_size=16), datamodule=dm)
    return trainer.global_step


def test_a_met_threshold_stops_at_that_validation_and_an_unmet_one_does_not(tmp_path: Path):
    # an untrained model's loss is a few nats: under 100 at once, never under 1e-6
    met = early_stopping_config("val_loss", ["stopping_threshold=100"], tmp_path)
    assert steps_trained(met, tmp_path) == 3  # the first validation
    unmet = early_stopping_config("val_loss", ["stopping_threshold=1e-6"], tmp_path)
    assert steps_trained(unmet, tmp_path) == 12


def test_the_task_option_watches_the_exact_match_the_module_logs(tmp_path: Path):
    cfg = early_stopping_config("exact_match", ["stopping_threshold=0.95"], tmp_path)
    assert cfg.monitor == "val/exact_match" and cfg.mode == "max"
    assert cfg.stopping_threshold == 0.95
    assert cfg.monitor.removeprefix("val/") in METRICS  # what LitGPT logs as val/<name>
