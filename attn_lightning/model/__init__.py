"""The network. Knows nothing of Lightning or Hydra: its attention is injected as a factory."""

from attn_lightning.model.gpt import GPT, GPTOutput

__all__ = ["GPT", "GPTOutput"]
