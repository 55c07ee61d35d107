"""How the next token is drawn from the model's logits z (B, V).

    temperature τ   p = softmax(z / τ); τ = 0 is greedy (argmax)
    top-k           keep the k largest logits
    top-p (nucleus) keep the smallest set of most likely tokens whose probability sums to
                    >= p (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration");
                    the most likely token is always kept, so p -> 0 is greedy
    min-p           keep the tokens with p_i >= min_p * max_j p_j (Nguyen et al. 2024, "Turning
                    Up the Heat: Min-p Sampling")

The filters apply in that order, after the temperature (as Hugging Face's logits processors
do), then one token is drawn from what is left. Written here rather than taken from
`transformers`: that library is not a dependency, and its processors work on its own
generation loop, not on our incremental decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attn_lightning.errors import ConfigError


@dataclass(frozen=True)
class Sampler:
    """The sampling rule; invalid settings are refused at construction, naming the key."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1 (null = no limit), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1] (null = off), got {self.top_p}")
        if self.min_p is not None and not 0 <= self.min_p < 1:
            raise ConfigError(f"min_p must be in [0, 1) (null = off), got {self.min_p}")

    def filter(self, logits: Tensor) -> Tensor:
        """Logits (B, V) after temperature and filters: removed tokens at -inf."""
        logits = logits / self.temperature
        removed = torch.zeros_like(logits, dtype=torch.bool)
        if self.top_k is not None:
            kth = torch.topk(logits, min(self.top_k, logits.size(-1))).values[:, [-1]]
            removed |= logits < kth
        if self.top_p is not None:
            probs = F.softmax(logits.masked_fill(removed, float("-inf")), dim=-1)
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the likelier tokens
            drop_sorted = before >= self.top_p  # the set already reached p without this token
            removed |= drop_sorted.scatter(-1, order, drop_sorted)
        if self.min_p is not None:
            probs = F.softmax(logits.masked_fill(removed, float("-inf")), dim=-1)
            removed |= probs < self.min_p * probs.amax(dim=-1, keepdim=True)
        return logits.masked_fill(removed, float("-inf"))

    def __call__(self, logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The next token ids (B, 1)."""
        if self.temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        probs = F.softmax(self.filter(logits), dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator)
