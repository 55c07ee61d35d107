"""Synthetic tasks as a DataModule: training examples drawn on the fly, fixed evaluation sets.

A batch is (inputs, targets), both (B, L-1), cut from padded `prompt = answer .` sequences of L
tokens exactly as language-model windows are (targets = inputs shifted by one), except that the
targets of the prompt and of the padding are -100: the loss counts the answer (its end token
included) and nothing else. Evaluation batches have the same form, so the answer of row b is
`targets[b][targets[b] != -100]` and its prompt is `inputs[b]` up to and including `=`.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from attn_lightning.data.char_tokenizer import CharTokenizer
from attn_lightning.data.interface import IGNORE, SyntheticData
from attn_lightning.data.step_batches import StepBatches, eval_loader, step_loader, step_position
from attn_lightning.data.tasks import EOS, SEP, Task, split_of
from attn_lightning.errors import ConfigError


def encode_examples(
    examples: list[tuple[str, str]], vocabulary: str, length: int
) -> tuple[Tensor, Tensor]:
    """(prompt, answer) pairs -> inputs, targets (N, length - 1): `prompt=answer.` padded with
    id 0 to `length` tokens, shifted by one; targets outside the answer (and its `.`) are -100."""
    stoi = {c: i for i, c in enumerate(vocabulary)}
    ids = np.zeros((len(examples), length), dtype=np.int64)  # (N, L), id 0 is padding
    answer = np.zeros((len(examples), length - 1), dtype=bool)  # (N, L-1): targets to keep
    for row, (prompt, ans) in enumerate(examples):
        seq = prompt + SEP + ans + EOS
        if len(seq) > length:
            raise ValueError(f"example {seq!r} is longer than {length} tokens")
        ids[row, : len(seq)] = [stoi[c] for c in seq]
        # target j predicts seq[j + 1]: the answer and EOS are seq[len(prompt)+1 : len(seq)]
        answer[row, len(prompt) : len(seq) - 1] = True
    inputs, targets = torch.from_numpy(ids[:, :-1]), torch.from_numpy(ids[:, 1:].copy())
    targets[~torch.from_numpy(answer)] = IGNORE
    return inputs, targets


class TaskBatches(StepBatches):
    """Each batch: `batch_size` training examples, rejecting prompts that belong to the
    validation or test split, so training data never repeats an evaluation example."""

    def __init__(self, task: Task, batch_size: int, eval_fraction: float, **position: int) -> None:
        super().__init__(**position)
        self.task = task
        self.batch_size = batch_size
        self.eval_fraction = eval_fraction
        self.length = task.max_sequence_length()

    def batch(self, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        examples: list[tuple[str, str]] = []
        while len(examples) < self.batch_size:
            prompt, answer = self.task.sample(rng)
            if split_of(prompt, self.eval_fraction) == "train":
                examples.append((prompt, answer))
        return encode_examples(examples, self.task.vocabulary, self.length)


_SPLIT_STREAM = {"val": 1, "test": 2, "test_long": 3}


def fixed_examples(
    task: Task, split: str, count: int, seed: int, eval_fraction: float
) -> list[tuple[str, str]]:
    """`count` distinct examples of a split ("val", "test" or "test_long"), the same for a given
    seed whatever the training seed. Val and test keep only prompts that hash to their split;
    test_long prompts are longer than any training prompt, so any of them is unseen."""
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
    long = split == "test_long"
    chosen: dict[str, str] = {}
    max_draws = int(50 * count / (1.0 if long else eval_fraction)) + 1000
    for _ in range(max_draws):
        prompt, answer = task.sample(rng, long=long)
        if long or split_of(prompt, eval_fraction) == split:
            chosen.setdefault(prompt, answer)
            if len(chosen) == count:
                return list(chosen.items())
    raise ConfigError(
        f"found only {len(chosen)} distinct {split} examples of {count} in {max_draws} draws: "
        f"the task's example space is too small; lower data.{split}_size or raise "
        "data.eval_fraction (or make the task longer)"
    )


class TaskDataModule(SyntheticData):
    """A synthetic task (`data.task`) served for training, validation, test and a
    length-generalisation test (`test_long`, reported under its own metric names).

    `block_size` must hold the longest input of every split, the length-generalisation one
    included (checked here); the model follows it (`model.block_size: ${data.block_size}`).
    What this means for position schemes: with
    learned position embeddings (`model.pos_embedding=learned`) the positions past the training
    length exist but are never trained, so that model cannot length-generalise by construction
    and its `test_long` score measures nothing but that; schemes without per-position parameters
    (`model.pos_embedding=none` with RoPE or ALiBi attention, or no positions at all) are the
    ones that `test_long` compares.
    """

    answer_metrics = True  # LitGPT logs answer accuracy and greedy exact match
    test_splits = ("test", "test_long")  # one test dataloader each, in this order

    def __init__(
        self,
        task: Task,
        vocab_size: int,
        block_size: int,
        batch_size: int,
        eval_batch_size: int = 250,
        val_size: int = 500,
        test_size: int = 1000,
        test_long_size: int = 500,
        eval_fraction: float = 0.05,
        seed: int = 1337,
        eval_seed: int = 0,
    ) -> None:
        super().__init__(
            vocab_size,
            block_size,
            batch_size,
            eval_batch_size,
            {"val": val_size, "test": test_size, "test_long": test_long_size},
            eval_fraction,
            seed,
            eval_seed,
        )
        if vocab_size != len(task.vocabulary):
            raise ConfigError(
                f"data.vocab_size={vocab_size}, but the task's vocabulary "
                f"{task.vocabulary!r} has {len(task.vocabulary)} tokens: set "
                f"data.vocab_size={len(task.vocabulary)}"
            )
        if block_size < self.required_block_size(task):
            raise ConfigError(
                f"data.block_size={block_size} is too small for this task: its longest input, "
                "in the length-generalisation split, has "
                f"{self.required_block_size(task)} tokens; set "
                f"data.block_size={self.required_block_size(task)}"
            )
        self.task = task

    @staticmethod
    def required_block_size(task: Task) -> int:
        """Tokens the model must attend over: the longest input (sequence minus its last token)
        of any split. Greedy decoding never feeds more: the final `.` is produced, not read."""
        return max(task.max_sequence_length(long) for long in (False, True)) - 1

    @cached_property
    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer(self.task.vocabulary)

    def examples(self, split: str) -> list[tuple[str, str]]:
        return self._examples[split]

    @cached_property
    def _examples(self) -> dict[str, list[tuple[str, str]]]:
        return {
            split: fixed_examples(self.task, split, size, self.eval_seed, self.eval_fraction)
            for split, size in self.sizes.items()
        }

    def eval_set(self, split: str) -> TensorDataset:
        """The fixed examples of a split, encoded: (inputs, targets) of the split's length."""
        length = self.task.max_sequence_length(long=split == "test_long")
        return TensorDataset(*encode_examples(self.examples(split), self.task.vocabulary, length))

    def train_dataloader(self) -> DataLoader:
        batches = TaskBatches(
            self.task,
            self.batch_size,
            eval_fraction=self.eval_fraction,
            seed=self.seed,
            **step_position(self.trainer),
        )
        return step_loader(batches)

    def _eval_loader(self, split: str) -> DataLoader:
        return eval_loader(self.eval_set(split), self.eval_batch_size, self.trainer)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(split) for split in self.test_splits]
