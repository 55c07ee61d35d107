"""The optimizer is a config group (conf/optim/): another torch optimizer is a YAML file, built
over nanoGPT's parameter groups under the same schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from attn_lightning.config import CONFIG_DIR
from attn_lightning.data.char_tokenizer import CharTokenizer
from attn_lightning.training.builders import build_module


def test_optim_sgd_builds_sgd_over_the_decay_groups_under_the_schedule(tmp_path: Path):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"paths.output_dir={tmp_path}", "optim=sgd", "optim.weight_decay=0.01"],
        )
    tokenizer = CharTokenizer("abcdefgh").state_dict()
    configured = build_module(cfg, tokenizer).configure_optimizers()
    optimizer = configured["optimizer"]
    assert type(optimizer) is torch.optim.SGD
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["decay"]["weight_decay"] == 0.01 and groups["no_decay"]["weight_decay"] == 0.0
    assert groups["decay"]["momentum"] == 0.9 and groups["decay"]["nesterov"] is True
    # the warm-up starts from optim.lr / (warmup_steps + 1): the schedule's peak is SGD's rate
    assert groups["decay"]["lr"] == pytest.approx(0.1 / (cfg.schedule.warmup_steps + 1))
