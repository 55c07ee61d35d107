"""MQAR (attn_lightning/data/mqar.py) as a DataModule: training mixes several (length, pairs)
settings, validation covers the training settings, and the test covers its own list, harder
ones included, each setting also reported under its own name.

- Training: each step's batch is one setting, drawn uniformly from `train_settings` by the
  step's generator, at that setting's length (no padding: every position computed is data).
  Rows whose context hashes to val or test are redrawn.
- Validation: `val_size` fixed examples per training setting, logged together as `val/...`.
- Test: `test_size` fixed examples per test setting; the dataloader `test` holds all of them
  (the overall accuracy, as Zoology's `valid/accuracy`), then one dataloader per setting,
  `test_L64_kv4`, ... (as Zoology's slices by length and number of pairs).

The metric is `answer_token_acc`, the share of queries answered with their value (Zoology's
accuracy), and `exact_match`, the share of examples with every query right; both read the
teacher-forced predictions, which here are the greedy ones (no answer is ever an input).
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
from attn_lightning.data.mqar import MQARExamples, MQARSetting, draw_examples
from attn_lightning.data.mqar_tokenizer import IntTokenizer
from attn_lightning.data.step_batches import StepBatches, step_loader, step_position
from attn_lightning.errors import ConfigError

_SPLIT_STREAM = {"val": 1, "test": 2}


def settings_of(
    entries: Sequence[Mapping[str, Any]], key: str, vocab_size: int
) -> list[MQARSetting]:
    """`[{seq_len: 64, num_kv_pairs: 4}, ...]` -> settings, each checked; `key` names the list."""
    if not entries:
        raise ConfigError(f"{key} is empty: list at least one {{seq_len, num_kv_pairs}}")
    settings = []
    for i, entry in enumerate(entries):
        if set(entry) != {"seq_len", "num_kv_pairs"}:
            raise ConfigError(f"{key}[{i}] = {dict(entry)}: give exactly seq_len and num_kv_pairs")
        setting = MQARSetting(int(entry["seq_len"]), int(entry["num_kv_pairs"]))
        setting.check(vocab_size, f"{key}[{i}]")
        settings.append(setting)
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise ConfigError(f"{key} lists a setting twice: {names}")
    return settings


class MQARBatches(StepBatches):
    """Each batch: `batch_size` training examples of one training setting."""

    def __init__(
        self,
        settings: Sequence[MQARSetting],
        batch_size: int,
        draw: dict[str, Any],
        eval_fraction: float,
        **position: int,
    ) -> None:
        super().__init__(**position)
        self.settings = list(settings)
        self.batch_size = batch_size
        self.draw = draw  # vocab_size, alpha, random_non_queries
        self.eval_fraction = eval_fraction

    def batch(self, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        setting = self.settings[int(rng.integers(len(self.settings)))]
        kept: list[MQARExamples] = []
        needed = self.batch_size
        while needed > 0:
            drawn = draw_examples(rng, setting, needed + needed // 4 + 1, **self.draw)
            train = [i for i, s in enumerate(drawn.splits(self.eval_fraction)) if s == "train"]
            kept.append(drawn.select(train[:needed]))
            needed -= len(kept[-1].inputs)
        inputs = np.concatenate([k.inputs for k in kept])
        targets = np.concatenate([k.targets for k in kept])
        return MQARExamples(inputs, targets, setting).tensors()


def fixed_examples(
    setting: MQARSetting,
    split: str,
    count: int,
    seed: int,
    eval_fraction: float,
    draw: dict[str, Any],
) -> MQARExamples:
    """`count` examples of a setting in a split (val or test), distinct contexts, the same for a
    given seed whatever the training seed and whichever other settings are listed."""
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split], setting.seq_len, setting.num_kv_pairs])
    chosen: dict[bytes, int] = {}  # context -> row of `pool`
    pools: list[MQARExamples] = []
    chunk = int(1.2 * count / eval_fraction) + 16
    for _ in range(20):
        drawn = draw_examples(rng, setting, chunk, **draw)
        pools.append(drawn)
        for row, (context, s) in enumerate(
            zip(drawn.contexts, drawn.splits(eval_fraction), strict=True)
        ):
            if s == split:
                chosen.setdefault(context.tobytes(), (len(pools) - 1) * chunk + row)
                if len(chosen) == count:
                    inputs = np.concatenate([p.inputs for p in pools])
                    targets = np.concatenate([p.targets for p in pools])
                    rows = list(chosen.values())
                    return MQARExamples(inputs[rows], targets[rows], setting)
    raise ConfigError(
        f"found only {len(chosen)} distinct {split} examples of {setting.name} of {count}: its "
        f"example space is too small; lower data.{split}_size, raise data.eval_fraction or "
        "data.vocab_size"
    )


class BatchList(Dataset):
    """Fixed evaluation batches, each (inputs, targets) of one setting's length."""

    def __init__(self, batches: list[tuple[Tensor, Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.batches[i]


class MQARDataModule(SyntheticData):
    """Multi-query associative recall over integer tokens (see the module docstring).

    `block_size` must hold the longest setting of training and test (checked here); the model
    follows it (`model.block_size: ${data.block_size}`). With learned position embeddings a
    test setting longer than every training one meets untrained positions: its score then
    measures length generalisation as much as recall.
    """

    answer_metrics = True  # LitGPT logs answer accuracy and exact match
    teacher_forced_answers = True  # no answer is an input: argmax of one forward pass

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        train_settings: Sequence[Mapping[str, Any]],
        test_settings: Sequence[Mapping[str, Any]],
        batch_size: int,
        eval_batch_size: int = 250,
        val_size: int = 500,
        test_size: int = 1000,
        power_alpha: float = 0.01,
        random_non_queries: bool = False,
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
        if power_alpha <= 0:
            raise ConfigError(f"data.power_alpha must be > 0 (1 = uniform), got {power_alpha}")
        self.train_settings = settings_of(train_settings, "data.train_settings", vocab_size)
        self.test_settings = settings_of(test_settings, "data.test_settings", vocab_size)
        longest = max(s.seq_len for s in self.train_settings + self.test_settings)
        if block_size < longest:
            raise ConfigError(
                f"data.block_size={block_size} is shorter than the longest setting "
                f"(seq_len {longest}); set data.block_size={longest}"
            )
        self.draw = {
            "vocab_size": vocab_size,
            "alpha": power_alpha,
            "random_non_queries": random_non_queries,
        }
        # test: every test setting; then each setting alone (an instance attribute: the
        # names come from the config)
        self.test_splits = ("test", *(f"test_{s.name}" for s in self.test_settings))

    @cached_property
    def tokenizer(self) -> IntTokenizer:
        return IntTokenizer(self.vocab_size)

    def examples(self, split: str, setting: MQARSetting) -> MQARExamples:
        """The fixed examples of a setting in `val` or `test`."""
        return self._examples[split, setting]

    @cached_property
    def _examples(self) -> dict[tuple[str, MQARSetting], MQARExamples]:
        pairs = [("val", s) for s in self.train_settings] + [
            ("test", s) for s in self.test_settings
        ]
        return {
            (split, s): fixed_examples(
                s, split, self.sizes[split], self.eval_seed, self.eval_fraction, self.draw
            )
            for split, s in pairs
        }

    def eval_set(self, split: str) -> TensorDataset:
        """The first training setting's validation examples (the task-examples callback's)."""
        if split != "val":
            raise ValueError(f"eval_set serves 'val' only, got {split!r}")
        return TensorDataset(*self.examples("val", self.train_settings[0]).tensors())

    def _batches(self, split: str, settings: Sequence[MQARSetting]) -> BatchList:
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

    def train_dataloader(self) -> DataLoader:
        batches = MQARBatches(
            self.train_settings,
            self.batch_size,
            draw=self.draw,
            eval_fraction=self.eval_fraction,
            seed=self.seed,
            **step_position(self.trainer),
        )
        return step_loader(batches)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._batches("val", self.train_settings))

    def test_dataloader(self) -> list[DataLoader]:
        overall = self._loader(self._batches("test", self.test_settings))
        return [overall] + [self._loader(self._batches("test", [s])) for s in self.test_settings]
