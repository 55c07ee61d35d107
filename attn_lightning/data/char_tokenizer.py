"""Character-level tokenizer: one id per distinct character of the corpus."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from attn_lightning.errors import ConfigError


class CharTokenizer:
    """Maps characters to ids by their sorted order in the corpus (as nanoGPT does).

    Its state is a plain dict, so it travels inside checkpoints loadable with
    `torch.load(..., weights_only=True)`.
    """

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars):
            raise ConfigError("CharTokenizer needs distinct characters")
        self.chars = chars
        self._stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        """str -> (len,) int64 ids; characters outside the vocabulary raise a clear error."""
        # Fast path for large texts: a lookup table indexed by code point.
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.full(max(max(map(ord, self.chars)), int(codes.max(initial=0))) + 1, -1)
        table[[ord(c) for c in self.chars]] = np.arange(len(self.chars))
        ids = table[codes]
        if (ids < 0).any():
            unknown = sorted({chr(c) for c in codes[ids < 0]})
            raise ConfigError(
                f"characters {unknown!r} are not in this tokenizer's vocabulary of "
                f"{self.vocab_size} characters; use only characters from the training text"
            )
        return torch.from_numpy(ids.astype(np.int64))

    def decode(self, ids: Tensor | list[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def state_dict(self) -> dict[str, str]:
        """Plain-dict state; `hydra.utils.instantiate(state)` rebuilds the tokenizer."""
        return {
            "_target_": f"{type(self).__module__}.{type(self).__qualname__}",
            "chars": self.chars,
        }
