"""Token tasks from the command line: `data=` alone sets the model's vocabulary and block size,
MQAR runs recorded with the flat keys rebuild the same data, and a short run logs every test
setting to TensorBoard and to the run record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers import events, run_cli, run_dirs
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from attn_lightning.config import CONFIG_DIR
from attn_lightning.runs.data_config import data_config
from attn_lightning.runs.record import read_record
from attn_lightning.training.builders import build_module

TOKEN_TASKS = ["mqar", "mqar_forgetting", "mqar_multipass"]


def compose_train(overrides: list[str]):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=.", *overrides])


@pytest.mark.parametrize("data", TOKEN_TASKS)
def test_data_option_alone_sets_vocabulary_and_block_size(data: str):
    cfg = compose_train([f"data={data}", "data.vocab_size=64"])
    dm = instantiate(cfg.data)
    assert dm.task.vocab_size == dm.tokenizer.vocab_size == 64  # the task follows data.vocab_size
    module = build_module(cfg, dm.tokenizer.state_dict())
    assert module.model.vocab_size == 64
    longest = max(s.seq_len for s in dm.train_settings + dm.test_settings)
    assert module.model.block_size == cfg.data.block_size == longest


def batches(loaders) -> list[torch.Tensor]:
    return [x for loader in loaders for batch in loader for x in batch]


def test_a_run_recorded_with_the_flat_mqar_keys_rebuilds_the_same_data(tmp_path: Path):
    """The data section as MQAR runs recorded it (`MQARDataModule`, power_alpha and
    random_non_queries beside the data's keys), read back as eval and analyze read it."""
    settings = [{"seq_len": 16, "num_kv_pairs": 2}, {"seq_len": 24, "num_kv_pairs": 4}]
    recorded = {
        "_target_": "attn_lightning.data.mqar_datamodule.MQARDataModule",
        "vocab_size": 64,
        "block_size": 24,
        "train_settings": settings,
        "test_settings": settings,
        "power_alpha": 0.5,
        "random_non_queries": True,
        "batch_size": 8,
        "eval_batch_size": 16,
        "val_size": 20,
        "test_size": 30,
        "eval_fraction": 0.05,
        "seed": 1337,
        "eval_seed": 0,
    }
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": recorded}))
    data_cfg, source = data_config(OmegaConf.create({}), tmp_path, block_size=24)
    assert source.endswith("config.yaml")
    old = instantiate(data_cfg)
    old.setup("validate")
    cfg = compose_train(
        [
            "data=mqar",
            "data.vocab_size=64",
            "data.block_size=24",
            f"data.train_settings={settings}".replace("'", ""),
            f"data.test_settings={settings}".replace("'", ""),
            "data.task.power_alpha=0.5",
            "data.task.random_non_queries=true",
            "data.eval_batch_size=16",
            "data.val_size=20",
            "data.test_size=30",
        ]
    )
    new = instantiate(cfg.data)
    assert old.test_splits == new.test_splits == ("test", "test_L16_kv2", "test_L24_kv4")
    assert old.tokenizer.state_dict() == new.tokenizer.state_dict()
    for a, b in [
        (batches([old.val_dataloader()]), batches([new.val_dataloader()])),
        (batches(old.test_dataloader()), batches(new.test_dataloader())),
    ]:
        assert len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.slow  # ~20 s: a training run in its own process
def test_a_short_run_logs_every_test_setting(data_dir: Path, tmp_path: Path):
    args = [
        "data=mqar_forgetting",
        "trainer=cpu",
        "model.n_layer=1",
        "model.n_head=1",
        "model.n_embd=16",
        "data.vocab_size=32",
        "data.block_size=32",
        "data.train_settings=[{seq_len:16,num_kv_pairs:2,num_updates:1}]",
        "data.test_settings=[{seq_len:16,num_kv_pairs:2,num_updates:1},"
        "{seq_len:32,num_kv_pairs:4,num_updates:4}]",
        "data.batch_size=8",
        "data.train_size=64",
        "data.val_size=20",
        "data.test_size=20",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=3",
        "~callbacks.attention_maps",
        "~callbacks.attention_stats",
        "~callbacks.run_report",
    ]
    run_cli("attn_lightning", args, tmp_path, data_dir)
    (run_dir,) = run_dirs(tmp_path / "outputs")
    scalars = set(events(run_dir).Tags()["scalars"])
    record = read_record(run_dir)
    for split in ("val", "test", "test_L16_kv2_u1", "test_L32_kv4_u4"):
        for name in ("loss", "answer_token_acc", "exact_match"):
            assert f"{split}/{name}" in scalars, f"{split}/{name} not in {sorted(scalars)}"
            if split != "val":
                assert f"{split}/{name}" in record.metrics
