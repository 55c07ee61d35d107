"""The optimizer is a config group (conf/optim/): another torch optimizer is a YAML file, built
over nanoGPT's parameter groups under the same schedule; checkpoints written when `optim` was
one flat AdamW dict still load and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import quiet_trainer, tiny_lit_gpt, tiny_text_datamodule
from hydra import compose, initialize_config_dir

from attn_lightning.config import CONFIG_DIR
from attn_lightning.data.char_tokenizer import CharTokenizer
from attn_lightning.data.shakespeare import ShakespeareDataModule
from attn_lightning.runs.checkpoint import load_checkpoint
from attn_lightning.training.builders import build_module
from attn_lightning.training.lit_module import LitGPT

# `optim` as checkpoints before conf/optim/ saved it: AdamW's settings, schedule and policy.
FLAT_OPTIM = {
    "lr": 3e-3,
    "min_lr": 1e-4,
    "warmup_steps": 2,
    "decay_steps": 6,
    "betas": [0.9, 0.99],
    "weight_decay": 0.1,
    "on_nonfinite_loss": "stop",
    "max_nonfinite_skips": 3,
}


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


def fit(module: LitGPT, dm: ShakespeareDataModule, steps: int, ckpt_path: Path | None = None):
    trainer = quiet_trainer(
        max_steps=steps, limit_val_batches=0, enable_checkpointing=False, num_sanity_val_steps=0
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    return trainer


def weights(module: LitGPT) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.model.parameters()])


def test_a_flat_optim_checkpoint_loads_and_resumes_as_if_never_stopped(tmp_path: Path):
    dm = tiny_text_datamodule(tmp_path)
    tokenizer = dm.tokenizer.state_dict()
    model = {"_target_": "attn_lightning.model.gpt.GPT", "n_layer": 1, "n_head": 2}
    model |= {"n_embd": 16, "block_size": 16}
    attention = {"_target_": "attn_lightning.attention.vanilla.VanillaAttention"}
    attention |= {"_partial_": True}

    torch.manual_seed(0)
    uninterrupted = LitGPT(model, attention, dict(FLAT_OPTIM), tokenizer)
    fit(uninterrupted, dm, 6)

    torch.manual_seed(0)
    old = LitGPT(model, attention, dict(FLAT_OPTIM), tokenizer)
    old_path = tmp_path / "old.ckpt"
    fit(old, dm, 3).save_checkpoint(old_path)
    loaded = load_checkpoint(old_path)
    assert loaded.hparams["optim"] == FLAT_OPTIM  # the file holds the flat dict
    assert torch.equal(weights(loaded), weights(old))
    assert loaded.nonfinite.max_skips == 3

    schedule = {k: FLAT_OPTIM[k] for k in ("min_lr", "warmup_steps", "decay_steps")}
    resumed = tiny_lit_gpt(tokenizer, block_size=16, lr=3e-3, weight_decay=0.1, **schedule)
    trainer = fit(resumed, dm, 6, ckpt_path=old_path)
    assert trainer.global_step == 6
    assert torch.allclose(weights(resumed), weights(uninterrupted), rtol=0, atol=1e-7)
    assert not torch.equal(weights(resumed), weights(old))  # it did train on from step 3
