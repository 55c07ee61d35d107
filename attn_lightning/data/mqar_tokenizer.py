"""The tokenizer of integer-token tasks (MQAR): a token is its id, written as a decimal number,
tokens separated by spaces (`"3 9 2 12"`), so samples, task examples and attention-map labels
read as the sequences Zoology prints."""

from __future__ import annotations

import torch
from torch import Tensor

from attn_lightning.errors import ConfigError


class IntTokenizer:
    """Ids 0 .. vocab_size - 1, each written as its decimal number.

    Blank text encodes to the single id 0 (MQAR's filler), as a newline is the padding token of
    the character tasks: the callbacks' default prompt `"\\n"` is a valid prompt here too.
    """

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 1:
            raise ConfigError(f"data.vocab_size must be >= 1, got {vocab_size}")
        self._vocab_size = vocab_size

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> Tensor:
        """`"3 9 2"` -> tensor([3, 9, 2]); anything but ids of this vocabulary is an error."""
        fields = text.split()
        if not fields:
            return torch.zeros(1, dtype=torch.int64)
        try:
            ids = [int(f) for f in fields]
        except ValueError:
            raise ConfigError(
                f"{text!r} is not a sequence of integer tokens: write ids separated by spaces, "
                f"e.g. '3 9 2' (ids 0..{self.vocab_size - 1})"
            ) from None
        if not all(0 <= i < self.vocab_size for i in ids):
            raise ConfigError(
                f"token ids {[i for i in ids if not 0 <= i < self.vocab_size]} are outside "
                f"this tokenizer's vocabulary 0..{self.vocab_size - 1}"
            )
        return torch.tensor(ids, dtype=torch.int64)

    def decode(self, ids: Tensor | list[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    def state_dict(self) -> dict[str, str | int]:
        """Plain-dict state; `hydra.utils.instantiate(state)` rebuilds the tokenizer."""
        return {
            "_target_": f"{type(self).__module__}.{type(self).__qualname__}",
            "vocab_size": self.vocab_size,
        }
