"""What the LightningModule and the callbacks rely on from a datamodule, stated once.

Batches are (inputs, targets) of token ids, (B, T) each; a target equal to `IGNORE` is not
scored (padding, and the prompts of synthetic tasks). Every datamodule of this project
subclasses `LanguageModelData`, so these attributes are always there to read.
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L

from attn_lightning.errors import ConfigError

IGNORE = -100  # targets the loss and the metrics skip (PyTorch's cross_entropy default)


class LanguageModelData(L.LightningDataModule):
    """A datamodule serving next-token batches, with the tokenizer that made them.

    answer_metrics: the targets are task answers: LitGPT also logs answer accuracy and greedy
        exact match, and the task-examples callback decodes some.
    teacher_forced_answers: no answer token is ever an input (MQAR: each answer is one token,
        followed by filler), so the argmax of one teacher-forced forward pass is what greedy
        decoding would produce: exact match and the task examples read it instead of decoding.
    test_splits: the names of the test dataloaders, in order (e.g. `test`, `test_long`); their
        metrics are logged as `<split>/loss`, ...
    """

    answer_metrics: ClassVar[bool] = False
    teacher_forced_answers: bool = False  # a class constant, or set per instance
    test_splits: tuple[str, ...] = ("test",)  # a class constant, or set per instance
    tokenizer: Any  # encode(str) -> Tensor, decode(ids) -> str, vocab_size, state_dict()
    block_size: int  # tokens per input sequence; the model must hold at least this many


class SyntheticData(LanguageModelData):
    """What the synthetic datamodules share: generated training batches drawn afresh each step
    from `seed`, fixed evaluation examples drawn from `eval_seed` (the same whatever the training
    seed), and the fraction of the example space held out for them."""

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        batch_size: int,
        eval_batch_size: int,
        sizes: dict[str, int],
        eval_fraction: float,
        seed: int,
        eval_seed: int,
    ) -> None:
        super().__init__()
        if batch_size <= 0 or eval_batch_size <= 0:
            raise ConfigError("data.batch_size and data.eval_batch_size must be positive")
        if not 0.0 < eval_fraction < 0.5:
            raise ConfigError(f"data.eval_fraction must be in (0, 0.5), got {eval_fraction}")
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.sizes = sizes  # fixed examples per evaluation split
        self.eval_fraction = eval_fraction
        self.seed = seed
        self.eval_seed = eval_seed
