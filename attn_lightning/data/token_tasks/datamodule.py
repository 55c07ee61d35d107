"""Any token task (attn_lightning/data/token_tasks/task.py) as a DataModule: training mixes several
settings, validation covers the training settings, and the test covers its own list, harder
ones included, each setting also reported under its own name.

- Training: each step's batch is one setting, drawn uniformly from `train_settings` by the
  step's generator, at that setting's length (no padding: every position computed is data).
  With `train_size` null the examples are fresh every step, rows whose split keys hash to val or
  test redrawn; with `train_size` N each training setting has a fixed training set of N distinct
  examples, drawn once from the training split with `seed`, and each step's batch is
  `batch_size` of them without replacement (MAD's fixed training sets).
- Validation: `val_size` fixed examples per training setting, logged together as `val/...`.
- Test: `test_size` fixed examples per test setting; the dataloader `test` holds all of them,
  then one dataloader per setting, `test_<setting name>` (`test_L64_kv4`, ...).

Evaluation examples are drawn from `eval_seed`, so they stay the same whatever the training seed
and whichever other settings are listed; examples within a fixed set differ in their split keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from attn_lightning.data.interface import SyntheticData
from attn_lightning.data.mqar_tokenizer import IntTokenizer
from attn_lightning.data.step_batches import StepBatches, step_loader, step_position
from attn_lightning.data.token_tasks.task import Setting, TokenExamples, TokenTask
from attn_lightning.errors import ConfigError

_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}


def settings_of(task: TokenTask, entries: Sequence[Mapping[str, Any]], key: str) -> list[Setting]:
    """A config list of settings -> the task's settings, each checked; `key` names the list."""
    if not entries:
        raise ConfigError(f"{key} is empty: list at least one setting")
    settings = [task.setting(entry, f"{key}[{i}]") for i, entry in enumerate(entries)]
    names = [s.name for s in settings]
    for i, name in enumerate(names):
        if "." in name or "/" in name:  # it becomes a metric prefix and a module key
            raise ConfigError(
                f"{key}[{i}] is named {name!r}: a setting name may not hold '.' or '/'; the "
                "task's `name` must spell numbers without them (e.g. noise20 for 0.2)"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"{key} lists a setting twice: {names}; give each setting once")
    return settings


class TokenTaskBatches(StepBatches):
    """Each batch: `batch_size` training examples of one training setting, fresh from the task
    or, given `train_sets` (one per setting, in order), sampled from the setting's fixed set."""

    def __init__(
        self,
        task: TokenTask,
        settings: Sequence[Setting],
        batch_size: int,
        eval_fraction: float,
        train_sets: Sequence[TokenExamples] | None = None,
        **position: int,
    ) -> None:
        super().__init__(**position)
        self.task = task
        self.settings = list(settings)
        self.batch_size = batch_size
        self.eval_fraction = eval_fraction
        self.train_sets = train_sets

    def batch(self, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        index = int(rng.integers(len(self.settings)))
        if self.train_sets is not None:
            fixed = self.train_sets[index]
            rows = rng.choice(len(fixed.inputs), self.batch_size, replace=False)
            return fixed.select(rows).tensors()
        setting = self.settings[index]
        kept: list[TokenExamples] = []
        needed = self.batch_size
        while needed > 0:
            drawn = self.task.draw(rng, setting, needed + needed // 4 + 1)
            train = [i for i, s in enumerate(drawn.splits(self.eval_fraction)) if s == "train"]
            kept.append(drawn.select(train[:needed]))
            needed -= len(kept[-1].inputs)
        inputs = np.concatenate([k.inputs for k in kept])
        targets = np.concatenate([k.targets for k in kept])
        return torch.from_numpy(inputs), torch.from_numpy(targets)


def fixed_examples(
    task: TokenTask, setting: Setting, split: str, count: int, seed: int, eval_fraction: float
) -> TokenExamples:
    """`count` examples of a setting in a split, distinct split keys, the same for a given seed
    whichever other settings are listed."""
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split], *task.seed_words(setting)])
    share = 1 - 2 * eval_fraction if split == "train" else eval_fraction
    chosen: dict[bytes, int] = {}  # split keys -> row of the pools, concatenated
    pools: list[TokenExamples] = []
    chunk = int(1.2 * count / share) + 16
    for _ in range(20):
        drawn = task.draw(rng, setting, chunk)
        pools.append(drawn)
        for row, (keys, s) in enumerate(
            zip(drawn.split_keys, drawn.splits(eval_fraction), strict=True)
        ):
            if s == split:
                chosen.setdefault(keys.tobytes(), (len(pools) - 1) * chunk + row)
                if len(chosen) == count:
                    inputs = np.concatenate([p.inputs for p in pools])
                    targets = np.concatenate([p.targets for p in pools])
                    keys_all = np.concatenate([p.split_keys for p in pools])
                    rows = list(chosen.values())
                    return TokenExamples(inputs[rows], targets[rows], keys_all[rows], setting)
    raise ConfigError(
        f"found only {len(chosen)} distinct {split} examples of {setting.name} of {count}: its "
        f"example space is too small; lower data.{split}_size, or raise data.vocab_size "
        "(or data.eval_fraction for val and test)"
    )


class BatchList(Dataset):
    """Fixed evaluation batches, each (inputs, targets) of one setting's length."""

    def __init__(self, batches: list[tuple[Tensor, Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.batches[i]


class TokenTaskDataModule(SyntheticData):
    """A token task (`data.task`) over integer tokens (see the module docstring).

    `block_size` must hold the longest setting of training and test (checked here); the model
    follows it (`model.block_size: ${data.block_size}`). With learned position embeddings a
    test setting longer than every training one meets untrained positions: its score then
    measures length generalisation as much as the task.
    """

    answer_metrics = True  # LitGPT logs answer accuracy and exact match

    def __init__(
        self,
        task: TokenTask,
        vocab_size: int,
        block_size: int,
        train_settings: Sequence[Mapping[str, Any]],
        test_settings: Sequence[Mapping[str, Any]],
        batch_size: int,
        eval_batch_size: int = 250,
        train_size: int | None = None,
        val_size: int = 500,
        test_size: int = 1000,
        eval_fraction: float = 0.05,
        seed: int = 1337,
        eval_seed: int = 0,
    ) -> None:
        if val_size <= 0 or test_size <= 0:
            raise ConfigError("data.val_size and data.test_size must be positive")
        super().__init__(
            vocab_size,
            block_size,
            batch_size,
            eval_batch_size,
            {"val": val_size, "test": test_size},
            eval_fraction,
            seed,
            eval_seed,
        )
        if task.vocab_size != vocab_size:
            raise ConfigError(
                f"data.vocab_size={vocab_size}, but the task has {task.vocab_size} tokens: set "
                f"data.vocab_size={task.vocab_size}"
            )
        if train_size is not None and train_size < batch_size:
            raise ConfigError(
                f"data.train_size={train_size} is smaller than data.batch_size={batch_size} (a "
                "batch holds distinct examples of the fixed training set): raise data.train_size, "
                "lower data.batch_size, or set data.train_size=null for fresh examples"
            )
        self.task = task
        self.teacher_forced_answers = task.teacher_forced_answers
        self.train_size = train_size
        self.train_settings = settings_of(task, train_settings, "data.train_settings")
        self.test_settings = settings_of(task, test_settings, "data.test_settings")
        longest = max(s.seq_len for s in self.train_settings + self.test_settings)
        if block_size < longest:
            raise ConfigError(
                f"data.block_size={block_size} is shorter than the longest setting "
                f"(seq_len {longest}); set data.block_size={longest}"
            )
        # test: every test setting; then each setting alone (an instance attribute: the
        # names come from the config)
        self.test_splits = ("test", *(f"test_{s.name}" for s in self.test_settings))

    @cached_property
    def tokenizer(self) -> IntTokenizer:
        return IntTokenizer(self.vocab_size)

    def examples(self, split: str, setting: Setting) -> TokenExamples:
        """The fixed examples of a setting in `val` or `test`."""
        return self._examples[split, setting]

    @cached_property
    def _examples(self) -> dict[tuple[str, Setting], TokenExamples]:
        pairs = [("val", s) for s in self.train_settings] + [
            ("test", s) for s in self.test_settings
        ]
        return {
            (split, s): fixed_examples(
                self.task, s, split, self.sizes[split], self.eval_seed, self.eval_fraction
            )
            for split, s in pairs
        }

    @cached_property
    def train_sets(self) -> list[TokenExamples] | None:
        """Each training setting's fixed training set (`train_size` examples), or None."""
        if self.train_size is None:
            return None
        return [
            fixed_examples(self.task, s, "train", self.train_size, self.seed, self.eval_fraction)
            for s in self.train_settings
        ]

    def eval_set(self, split: str) -> TensorDataset:
        """The first training setting's validation examples (the task-examples callback's)."""
        if split != "val":
            raise ValueError(f"eval_set serves 'val' only, got {split!r}")
        return TensorDataset(*self.examples("val", self.train_settings[0]).tensors())

    def _batches(self, split: str, settings: Sequence[Setting]) -> BatchList:
        batches = []
        for setting in settings:
            inputs, targets = self.examples(split, setting).tensors()
            for start in range(0, len(inputs), self.eval_batch_size):
                end = start + self.eval_batch_size
                batches.append((inputs[start:end], targets[start:end]))
        return BatchList(batches)

    def _loader(self, data: BatchList) -> DataLoader:
        """Whole batches, shared out across DDP ranks (each batch evaluated once)."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        shard = Subset(data, range(rank, len(data), world))
        return DataLoader(shard, batch_size=None, shuffle=False, generator=torch.Generator())

    def training_batches(
        self, num_batches: int, rank: int = 0, first_batch: int = 0
    ) -> TokenTaskBatches:
        """The training batches of steps first_batch, first_batch + 1, ... at a rank: what
        `train_dataloader` serves, and what a test can read without a trainer."""
        return TokenTaskBatches(
            self.task,
            self.train_settings,
            self.batch_size,
            eval_fraction=self.eval_fraction,
            train_sets=self.train_sets,
            num_batches=num_batches,
            seed=self.seed,
            rank=rank,
            first_batch=first_batch,
        )

    def train_dataloader(self) -> DataLoader:
        return step_loader(self.training_batches(**step_position(self.trainer)))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._batches("val", self.train_settings))

    def test_dataloader(self) -> list[DataLoader]:
        overall = self._loader(self._batches("test", self.test_settings))
        return [overall] + [self._loader(self._batches("test", [s])) for s in self.test_settings]
