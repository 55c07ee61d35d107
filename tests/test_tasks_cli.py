"""Synthetic tasks from the command line: `data=` alone sets the model's vocabulary and block
size, a too-small model is refused before training, and a short run of each preset learns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from test_cli import REPO_ROOT, events, run_cli, run_dirs

from attn_lightning.config import CONFIG_DIR
from attn_lightning.lit_module import LitGPT
from attn_lightning.train import plain

TASKS = ["copy", "sorting", "arithmetic"]
SHORT = [  # fewer steps and evaluation examples than the presets, same model
    "trainer=cpu",
    "data.val_size=100",
    "data.test_size=200",
    "data.test_long_size=50",
    "trainer.log_every_n_steps=10",
    "~callbacks.attention_maps",
    "~callbacks.attention_stats",
    "~callbacks.run_report",
]
# Steps of a short run, and the answer token accuracy it must beat: guessing digits uniformly
# scores about 0.1 on the digits (and the final "." is easy), so these are far above chance.
SHORT_RUNS = {"copy": (200, 0.6), "sorting": (200, 0.6), "arithmetic": (300, 0.45)}


def compose_train(overrides: list[str]):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=.", *overrides])


@pytest.mark.parametrize("task", TASKS)
def test_data_option_alone_sets_vocabulary_and_block_size(task: str):
    cfg = compose_train([f"data={task}"])
    dm = instantiate(cfg.data)
    module = LitGPT(
        plain(cfg.model), plain(cfg.attention), plain(cfg.optim), dm.tokenizer.state_dict()
    )
    assert module.model.vocab_size == cfg.data.vocab_size == len(dm.task.vocabulary)
    assert module.model.block_size == cfg.data.block_size >= dm.required_block_size(dm.task)
    preset = compose_train([f"experiment={task}"])
    assert preset.model.block_size == cfg.model.block_size
    assert preset.data.task == cfg.data.task


def test_model_too_small_for_the_task_is_refused_before_training(tmp_path: Path):
    args = ["data=copy", "model.block_size=40", "trainer=cpu", "trainer.max_steps=5"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, "-m", "attn_lightning", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "model.block_size=40 cannot hold this task's sequences" in proc.stderr + proc.stdout
    assert "train/loss" not in proc.stdout  # refused before the first step


@pytest.mark.parametrize("task", TASKS)
def test_short_run_of_each_preset_learns_and_logs_answer_metrics(
    task: str, data_dir: Path, tmp_path: Path
):
    steps, threshold = SHORT_RUNS[task]
    args = [f"experiment={task}", *SHORT, f"trainer.max_steps={steps}"]
    run_cli("attn_lightning", [*args, f"trainer.val_check_interval={steps}"], tmp_path, data_dir)
    (run_dir,) = run_dirs(tmp_path / "outputs")
    acc = events(run_dir)
    scalars = set(acc.Tags()["scalars"])
    for split in ("val", "test", "test_long"):
        for name in ("loss", "bpc", "answer_token_acc", "exact_match"):
            assert f"{split}/{name}" in scalars, f"{split}/{name} missing from {sorted(scalars)}"
    test_acc = acc.Scalars("test/answer_token_acc")[-1].value
    assert test_acc > threshold, f"{task}: answer token accuracy {test_acc} after {steps} steps"
    table = acc.Tensors("samples/task_examples/text_summary")[-1].tensor_proto.string_val[0]
    assert "| prompt | expected | produced |" in table.decode()
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["hyper_parameters"]["tokenizer"]["chars"].startswith("\n=.")
