"""Checkpoints naming a `_target_` outside attn_lightning.* load only when the reader trusts
it: a training run trusts its own config's targets, anything else must say so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import quiet_trainer

from attn_lightning.runs.checkpoint import (
    AtomicCheckpointIO,
    CheckpointError,
    config_targets,
    read_checkpoint,
    trust_in_run,
)

OWN = "my_attention.MyAttention"


def saved(tmp_path: Path, target: str) -> Path:
    path = tmp_path / "user.ckpt"
    attention = {"_target_": target, "_partial_": True}
    model = {"_target_": "attn_lightning.model.gpt.GPT"}
    torch.save(
        {"state_dict": {}, "hyper_parameters": {"model": model, "attention": attention}}, path
    )
    return path


def test_an_untrusted_target_is_refused_saying_how_to_trust_it(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"trust_targets=\[my_attention\]"):
        read_checkpoint(saved(tmp_path, OWN))


@pytest.mark.parametrize("trusted", [["my_attention"], [OWN], ["my_attention."]])
def test_a_trusted_module_or_target_loads(tmp_path: Path, trusted: list[str]) -> None:
    checkpoint = read_checkpoint(saved(tmp_path, OWN), trusted=trusted)
    assert checkpoint["hyper_parameters"]["attention"]["_target_"] == OWN


@pytest.mark.parametrize("target", ["my_attention_evil.MyAttention", "os.system"])
def test_trust_is_by_module_boundary_not_by_string_prefix(tmp_path: Path, target: str) -> None:
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(saved(tmp_path, target), trusted=["my_attention"])


def test_a_run_trusts_exactly_the_foreign_targets_of_its_own_config(tmp_path: Path) -> None:
    attention = {"_target_": OWN, "_partial_": True}
    hybrid = {"layers": [{"_target_": "pkg.layers.Other"}, {"_target_": OWN}]}
    model = {"_target_": "attn_lightning.model.gpt.GPT"}
    assert config_targets(model, attention, hybrid) == (OWN, "pkg.layers.Other")
    trainer = quiet_trainer(plugins=[AtomicCheckpointIO()])
    trust_in_run(trainer, config_targets(attention))
    loaded = trainer.strategy.checkpoint_io.load_checkpoint(saved(tmp_path, OWN))
    assert loaded["hyper_parameters"]["attention"]["_target_"] == OWN
    with pytest.raises(CheckpointError):
        AtomicCheckpointIO().load_checkpoint(saved(tmp_path, OWN))


@pytest.mark.parametrize(
    "overrides",
    [
        ["attention._target_=my_attention.MyAttention"],
        ["+attention@layer_attention.1=vanilla", "layer_attention.1._target_=" + OWN],
    ],
)
def test_a_training_config_trusts_its_own_class_wherever_it_names_it(overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    from attn_lightning.config import CONFIG_DIR
    from attn_lightning.train import own_targets

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        assert own_targets(compose("train", overrides=overrides)) == (OWN,)
        assert own_targets(compose("train")) == ()
