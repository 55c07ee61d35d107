"""A text sample from a fixed prompt at each validation, logged as text (TensorBoard's Text tab,
an MLflow artifact, a W&B table: training/loggers.py)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from attn_lightning.errors import ConfigError
from attn_lightning.model.sampling import Sampler
from attn_lightning.training.loggers import log_text, media_loggers


class TextSample(L.Callback):
    """Generates `max_new_tokens` after `prompt` with a fixed seed, so samples from different
    steps (and different attention variants) differ only by what the model learned."""

    def __init__(
        self,
        prompt: str = "\n",
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = 200,
        seed: int = 1337,
    ) -> None:
        Sampler(temperature=temperature, top_k=top_k)  # bad values fail now, not at validation
        if max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.seed = seed

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not media_loggers(trainer):
            return
        tokenizer = pl_module.tokenizer
        idx = tokenizer.encode(self.prompt)[None].to(pl_module.device)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        out = pl_module.model.generate(
            idx, self.max_new_tokens, self.temperature, self.top_k, generator=generator
        )
        text = tokenizer.decode(out[0].tolist())
        log_text(trainer, "samples/text", text, trainer.global_step, verbatim=True)
