"""Every option of every config group composes, and the model, data and trainer instantiate."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import use_data_dir
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from attn_lightning.config import CONFIG_DIR
from attn_lightning.training.builders import build_module, build_trainer, plain
from attn_lightning.training.optim import warmup_cosine

GROUPS = [
    "model",
    "attention",
    "optim",
    "data",
    "trainer",
    "logger",
    "callbacks",
    "experiment",
    "debug",
]
OPTIONS = [
    (group, path.stem)
    for group in GROUPS
    for path in sorted((Path(CONFIG_DIR) / group).glob("*.yaml"))
]


def compose_train(overrides: list[str], tmp_path: Path):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *overrides])


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group, option, data_dir, tmp_path, monkeypatch):
    if group == "logger" and option in ("mlflow", "wandb"):
        pytest.importorskip(option, reason=f"logger={option} needs the loggers extra")
    use_data_dir(monkeypatch, data_dir)
    cfg = compose_train([f"{group}={option}"], tmp_path)
    dm = instantiate(cfg.data)
    module = build_module(cfg, dm.tokenizer.state_dict())
    assert module.model.block_size == cfg.model.block_size == dm.block_size
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        # GPU presets still build on a CPU machine apart from the device itself.
        cfg.trainer.accelerator = "cpu"
    trainer = build_trainer(cfg)
    assert isinstance(trainer, L.Trainer)
    assert trainer.max_steps == cfg.trainer.max_steps


def parameters_in_millions(cfg) -> float:
    """The GPT a config builds, counted as nanoGPT prints it (position embeddings excluded)."""
    model = instantiate(plain(cfg.model), vocab_size=65, attention=instantiate(cfg.attention))
    return round(model.num_params() / 1e6, 2)


def test_presets_build_nanogpts_models(tmp_path):
    # nanoGPT's own figures for TinyShakespeare characters (65 tokens): the CPU recipe prints
    # "number of parameters: 0.80M", the baby GPT 10.65M
    assert parameters_in_millions(compose_train([], tmp_path)) == 0.80
    baby = compose_train(["experiment=shakespeare_baby"], tmp_path)
    assert parameters_in_millions(baby) == 10.65
    assert baby.model.block_size == baby.data.block_size  # the model follows the data


def test_the_schedule_and_the_model_follow_what_they_depend_on(tmp_path):
    cfg = compose_train(["trainer.max_steps=300", "data.block_size=48"], tmp_path)
    assert cfg.schedule.decay_steps == 300
    assert cfg.model.block_size == 48


def test_schedule_warms_up_then_decays_to_min_lr():
    lrs = [warmup_cosine(s, 1e-3, 1e-4, warmup_steps=100, decay_steps=2000) for s in range(2100)]
    assert lrs[0] == pytest.approx(1e-3 / 101)
    assert all(a < b for a, b in pairwise(lrs[:101]))
    assert lrs[100] == pytest.approx(1e-3)
    assert all(a >= b for a, b in pairwise(lrs[100:]))
    assert lrs[2000] == lrs[2099] == pytest.approx(1e-4)


def test_weight_decay_applies_to_matrices_only(data_dir, tmp_path, monkeypatch):
    use_data_dir(monkeypatch, data_dir)
    cfg = compose_train(["model.bias=true"], tmp_path)
    dm = instantiate(cfg.data)
    module = build_module(cfg, dm.tokenizer.state_dict())
    groups = {g["name"]: g for g in module.configure_optimizers()["optimizer"].param_groups}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in groups["decay"]["params"])
    assert all(p.dim() == 1 for p in groups["no_decay"]["params"])
    n_grouped = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n_grouped == sum(p.numel() for p in module.model.parameters())
