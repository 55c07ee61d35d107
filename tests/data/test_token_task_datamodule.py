"""TokenTaskDataModule, on a toy task whose split keys are plain to see: training never meets an
evaluation example, a fixed training set is exactly `train_size` examples reused step after
step, the test splits are named and sized per setting, and bad configs are one-line errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import pytest
import torch

from attn_lightning.data.tasks import split_of
from attn_lightning.data.token_tasks.datamodule import TokenTaskDataModule
from attn_lightning.data.token_tasks.task import TokenExamples, TokenTask, int_fields
from attn_lightning.errors import ConfigError

VOCAB = 16
EVAL_FRACTION = 0.1


@dataclass(frozen=True)
class Length:
    seq_len: int

    @property
    def name(self) -> str:
        return f"L{self.seq_len}"


class Successor(TokenTask):
    """Random ids, each target the next id mod V; an example's split keys are its first two
    tokens (V^2 = 256 of them), whatever its length."""

    teacher_forced_answers = True

    def setting(self, entry: Mapping[str, Any], key: str) -> Length:
        (seq_len,) = int_fields(entry, key, ("seq_len",))
        if seq_len < 2:
            raise ConfigError(f"{key}: seq_len must be >= 2, got {seq_len}")
        return Length(seq_len)

    def draw(self, rng: np.random.Generator, setting: Length, count: int) -> TokenExamples:
        inputs = rng.integers(0, self.vocab_size, size=(count, setting.seq_len), dtype=np.int64)
        return TokenExamples(inputs, (inputs + 1) % self.vocab_size, inputs[:, :2].copy(), setting)


def split_keys_in(split: str) -> set[tuple[int, int]]:
    """The two-token prefixes of one split, by the hash of their text."""
    return {
        k
        for k in product(range(VOCAB), repeat=2)
        if split_of(f"{k[0]} {k[1]}", EVAL_FRACTION) == split
    }


def datamodule(**overrides: Any) -> TokenTaskDataModule:
    options = {
        "task": Successor(VOCAB),
        "vocab_size": VOCAB,
        "block_size": 8,
        "train_settings": [{"seq_len": 4}, {"seq_len": 6}],
        "test_settings": [{"seq_len": 4}, {"seq_len": 8}],
        "batch_size": 8,
        "eval_batch_size": 7,
        "val_size": 10,
        "test_size": 12,
        "eval_fraction": EVAL_FRACTION,
        "seed": 5,
        "eval_seed": 0,
    }
    return TokenTaskDataModule(**{**options, **overrides})


def training_batches(
    dm: TokenTaskDataModule, count: int, first_batch: int = 0, rank: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = dm.training_batches(count, rank=rank, first_batch=first_batch)
    return [batches[i] for i in range(count)]


def prefixes(inputs: torch.Tensor) -> set[tuple[int, int]]:
    return {(a, b) for a, b in inputs[:, :2].tolist()}


@pytest.mark.parametrize("train_size", [None, 60])
def test_training_meets_every_training_example_and_no_evaluation_one(train_size: int | None):
    dm = datamodule(train_size=train_size)
    train = split_keys_in("train")
    seen = set()
    for inputs, targets in training_batches(dm, 400):
        assert torch.equal(targets, (inputs + 1) % VOCAB)  # the task's own examples
        seen |= prefixes(inputs)
    assert seen <= train  # nothing of val or test, by split keys
    if train_size is None:  # 3,200 fresh rows cover all ~205 training prefixes
        assert seen == train
    held_out = set()
    for setting in dm.train_settings:
        held_out |= prefixes(dm.examples("val", setting).tensors()[0])
    for setting in dm.test_settings:
        held_out |= prefixes(dm.examples("test", setting).tensors()[0])
    assert held_out and not held_out & train


def test_a_fixed_training_set_is_exactly_train_size_examples_reused_by_seed_and_step():
    dm = datamodule(train_size=30)
    batches = training_batches(dm, 300)
    rows: dict[int, set[tuple[int, ...]]] = {4: set(), 6: set()}
    for inputs, _ in batches:
        batch_rows = [tuple(r) for r in inputs.tolist()]
        assert len(set(batch_rows)) == dm.batch_size  # a batch: distinct examples of the set
        rows[inputs.shape[1]] |= set(batch_rows)
    for setting, fixed in zip(dm.train_settings, dm.train_sets, strict=True):
        assert len(rows[setting.seq_len]) == 30  # ~150 batches of 8: every example, no other
        assert rows[setting.seq_len] == {tuple(r) for r in fixed.inputs.tolist()}
        assert len(prefixes(torch.from_numpy(fixed.inputs))) == 30  # distinct split keys
    # the same seed gives the same sets and batches; a resumed run continues the sequence
    again = training_batches(datamodule(train_size=30), 300)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    resumed = training_batches(dm, 20, first_batch=280)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches[280:], resumed, strict=True))
    # another seed: another training set, the evaluation sets unchanged
    other = datamodule(train_size=30, seed=6)
    assert {tuple(r) for r in other.train_sets[0].inputs.tolist()} != rows[4]
    for split, setting in (("val", Length(4)), ("test", Length(8))):
        assert torch.equal(
            other.examples(split, setting).tensors()[0], dm.examples(split, setting).tensors()[0]
        )


def test_test_splits_are_named_and_sized_per_setting_and_the_overall_is_their_union():
    dm = datamodule()
    assert dm.test_splits == ("test", "test_L4", "test_L8")
    overall, *each = dm.test_dataloader()
    rows = lambda loader: sorted(tuple(x) for batch, _ in loader for x in batch.tolist())  # noqa: E731
    for loader, length in zip(each, (4, 8), strict=True):
        shapes = {tuple(batch.shape[1:]) for batch, _ in loader}
        assert shapes == {(length,)} and len(rows(loader)) == 12
        assert len({r[:2] for r in rows(loader)}) == 12  # distinct split keys
    assert rows(overall) == sorted(r for loader in each for r in rows(loader))
    val = [batch for batch, _ in dm.val_dataloader()]
    assert sorted(len(b) for b in val) == [3, 3, 7, 7]  # 10 per training setting, batches of 7
    assert {b.shape[1] for b in val} == {4, 6}
    # a setting's evaluation examples do not depend on the other settings listed
    alone = datamodule(test_settings=[{"seq_len": 8}])
    assert rows(alone.test_dataloader()[1]) == rows(each[1])
    assert dm.teacher_forced_answers and dm.tokenizer.vocab_size == VOCAB


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train_settings": [{"seq_len": 4}, {"length": 6}]}, "data.train_settings[1]"),
        ({"test_settings": [{"seq_len": "8"}]}, "data.test_settings[0]"),
        ({"test_settings": [{"seq_len": 1}]}, "data.test_settings[0]"),
        ({"train_settings": []}, "data.train_settings is empty"),
        ({"test_settings": [{"seq_len": 4}, {"seq_len": 4}]}, "data.test_settings lists"),
        ({"block_size": 6}, "data.block_size=8"),
        ({"vocab_size": 17}, "data.vocab_size=16"),
        ({"train_size": 4}, "data.train_size=4"),
        ({"val_size": 0}, "data.val_size"),
    ],
)
def test_a_bad_config_is_a_one_line_error_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        datamodule(**overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("size", "key"), [("train_size", "train"), ("val_size", "val")])
def test_a_set_larger_than_its_split_holds_is_a_one_line_error(size: str, key: str):
    # ~205 training prefixes and ~25 validation ones exist: 250 distinct ones cannot
    dm = datamodule(**{size: 250})
    with pytest.raises(ConfigError) as error:
        dm.train_sets if key == "train" else dm.val_dataloader()
    assert f"data.{key}_size" in str(error.value) and "\n" not in str(error.value)


@dataclass(frozen=True)
class Fraction:
    seq_len: int

    @property
    def name(self) -> str:
        return f"L{self.seq_len / 2}"  # e.g. L4.0: a dot would split the metric's path


class DottedSuccessor(Successor):
    def setting(self, entry: Mapping[str, Any], key: str) -> Fraction:
        return Fraction(super().setting(entry, key).seq_len)


def test_a_setting_name_with_a_dot_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError) as error:
        TokenTaskDataModule(
            DottedSuccessor(VOCAB), VOCAB, 8, [{"seq_len": 8}], [{"seq_len": 8}], batch_size=4
        )
    assert "data.train_settings[0] is named 'L4.0'" in str(error.value)
    assert "\n" not in str(error.value)
