"""conf/data/mad_*.yaml: each composes into MAD's baseline datamodule, whose first training
batch has the setting's shape and scores the answers only; the splits share no example; and
every override its comments tell a user to type composes into a valid datamodule."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from helpers import first_training_batch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from attn_lightning.config import CONFIG_DIR
from attn_lightning.data.interface import IGNORE
from attn_lightning.data.token_tasks.datamodule import TokenTaskDataModule

# name: (task class, vocab, seq_len of the baseline, training examples)
BASELINES = {
    "in_context_recall": ("InContextRecall", 16, 128, 12800),
    "noisy_recall": ("NoisyRecall", 32, 128, 12800),
    "fuzzy_recall": ("FuzzyRecall", 16, 128, 12800),
    "selective_copying": ("SelectiveCopying", 16, 256, 12800),
    "compression": ("Compression", 16, 62, 12800),
    "memorization": ("Memorization", 256, 32, 256),
}
SMALL = ["data.train_size=256", "data.val_size=64", "data.test_size=64"]


def datamodule(name: str, overrides: list[str]) -> TokenTaskDataModule:
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=.", f"data=mad_{name}", *overrides])
    assert cfg.model.block_size == cfg.data.block_size
    return instantiate(cfg.data)


def answer_positions(name: str, inputs: list[int], vocab: int) -> list[int]:
    """Where a reader of the task expects an answer, from the inputs alone."""
    if name in ("in_context_recall", "noisy_recall"):  # a key seen in an earlier pair
        signal = vocab - (16 if name == "noisy_recall" else 0)
        seen, due = set(), []
        for t in range(0, len(inputs), 2):
            if inputs[t] < signal // 2:
                due += [t] if inputs[t] in seen else []
                seen.add(inputs[t])
        return due
    if name == "selective_copying":  # the blanks after the copy token
        return list(range(inputs.index(vocab - 1) + 1, len(inputs)))
    if name == "compression":  # every compression token
        return list(range(inputs.index(vocab - 1), len(inputs)))
    if name == "memorization":  # the insert tokens
        return [t for t, token in enumerate(inputs) if token == vocab - 1]
    raise AssertionError(name)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_each_preset_is_mad_s_baseline_and_its_first_batch_scores_answers_only(name):
    task_class, vocab, seq_len, train_size = BASELINES[name]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=.", f"data=mad_{name}"])
    assert cfg.data.task._target_.endswith(task_class)
    assert (cfg.data.vocab_size, cfg.data.train_size, cfg.data.test_size) == (
        vocab,
        train_size,
        1280,
    )
    assert cfg.data.batch_size == 128 and cfg.data.block_size == seq_len

    dm = datamodule(name, SMALL)
    inputs, targets = first_training_batch(dm)
    assert tuple(inputs.shape) == tuple(targets.shape) == (128, seq_len)
    assert dm.teacher_forced_answers
    for x, y in zip(inputs.tolist(), targets.tolist(), strict=True):
        scored = [t for t, target in enumerate(y) if target != IGNORE]
        if name == "fuzzy_recall":  # value tokens (7-14), each read at the next position
            assert all(y[t] == x[t + 1] for t in scored[:-1]) and scored[-1] == seq_len - 1
            assert all(7 <= y[t] < 15 for t in scored)
        else:
            due = answer_positions(name, x, vocab)
            assert scored == due and len(scored) >= 1


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_training_validation_and_test_examples_share_no_split_key(name):
    dm = datamodule(name, SMALL)
    sets = {
        "train": dm.train_sets[0],
        "val": dm.examples("val", dm.train_settings[0]),
        "test": dm.examples("test", dm.test_settings[0]),
    }
    keys = {split: {row.tobytes() for row in s.split_keys} for split, s in sets.items()}
    assert [len(k) for k in keys.values()] == [256, 64, 64]  # distinct within each split
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]


def documented_overrides(name: str) -> list[list[str]]:
    """The override lines of the preset's comments, a sweep (`-m key=a,b`) cut into its runs."""
    text = (Path(CONFIG_DIR) / "data" / f"mad_{name}.yaml").read_text()
    runs = []
    for line in text.splitlines():
        found = re.search(r"(-m )?'?data\.\w+=", line)
        if not line.startswith("#") or not found:
            continue
        command = re.sub(r"\s+\(.*\)$", "", line[found.start() :])  # a trailing (remark)
        words = [w for w in shlex.split(command) if w != "-m"]
        sweeps = [w for w in words if "[" not in w and "," in w]
        assert len(sweeps) <= 1, line
        if sweeps:
            key, values = sweeps[0].split("=")
            fixed = [w for w in words if w != sweeps[0]]
            runs += [[*fixed, f"{key}={value}"] for value in values.split(",")]
        else:
            runs.append(words)
    return runs


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_documented_variation_composes_into_a_valid_datamodule(name):
    runs = documented_overrides(name)
    assert len(runs) >= (5 if name == "memorization" else 8)
    for overrides in runs:
        dm = datamodule(name, overrides)  # the task checks each setting, the datamodule the length
        assert dm.block_size == max(s.seq_len for s in dm.train_settings + dm.test_settings)
        assert np.all(dm.task.draw(np.random.default_rng(0), dm.test_settings[0], 2).inputs >= 0)
