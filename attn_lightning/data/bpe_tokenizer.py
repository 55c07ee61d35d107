"""Byte-level BPE (Hugging Face `tokenizers`), trained on the training split.

Byte level means every string encodes (no unknown token) and decodes back exactly. Its state is
the tokenizer's JSON string, plain data that travels inside checkpoints loadable with
`torch.load(..., weights_only=True)`; `hydra.utils.instantiate(state)` rebuilds it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor

from attn_lightning.atomic import write_text
from attn_lightning.errors import ConfigError


class BPETokenizer:
    """A trained byte-level BPE; `train` makes one, `BPETokenizer(tokenizer_json)` reloads it."""

    def __init__(self, tokenizer_json: str) -> None:
        self.tokenizer_json = tokenizer_json
        self._tokenizer = Tokenizer.from_str(tokenizer_json)

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """Learn merges on `text` until the vocabulary (256 bytes + merges) has vocab_size."""
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet):
            raise ConfigError(
                f"data.bpe_vocab_size={vocab_size} is below the {len(alphabet)} byte tokens "
                "of a byte-level BPE; raise it"
            )
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False
        )
        tokenizer.train_from_iterator([text], trainer)
        return cls(tokenizer.to_str())

    @classmethod
    def load_or_train(cls, text: str, vocab_size: int, cache: Path) -> BPETokenizer:
        """The tokenizer cached at `cache`, else trained on `text` and cached there (atomic
        write: a killed run never leaves a half-written file that later runs would trust)."""
        if cache.is_file():
            return cls(cache.read_text(encoding="utf-8"))
        tokenizer = cls.train(text, vocab_size)
        with contextlib.suppress(OSError):  # a read-only data dir only costs the cache
            write_text(cache, tokenizer.tokenizer_json)
        return tokenizer

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def encode(self, text: str) -> Tensor:
        """str -> (len,) int64 ids."""
        return torch.tensor(self._tokenizer.encode(text).ids, dtype=torch.long)

    def decode(self, ids: Tensor | list[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def state_dict(self) -> dict[str, str]:
        """Plain-dict state; `hydra.utils.instantiate(state)` rebuilds the tokenizer."""
        return {
            "_target_": f"{type(self).__module__}.{type(self).__qualname__}",
            # instantiate goes through OmegaConf, which would read "${" as an interpolation
            "tokenizer_json": self.tokenizer_json.replace("${", "\\${"),
        }
