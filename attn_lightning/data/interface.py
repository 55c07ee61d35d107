"""What the LightningModule and the callbacks rely on from a datamodule, stated once.

Batches are (inputs, targets) of token ids, (B, T) each; a target equal to `IGNORE` is not
scored (padding, and the prompts of synthetic tasks). Every datamodule of this project
subclasses `LanguageModelData`, so these attributes are always there to read.
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L

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
    teacher_forced_answers: ClassVar[bool] = False
    test_splits: tuple[str, ...] = ("test",)  # a class constant, or set per instance
    tokenizer: Any  # encode(str) -> Tensor, decode(ids) -> str, vocab_size, state_dict()
    block_size: int  # tokens per input sequence; the model must hold at least this many
