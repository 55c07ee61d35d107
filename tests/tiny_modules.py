"""A tiny LitGPT and a quiet CPU Trainer, for tests of the Lightning pieces (not the CLI)."""

from __future__ import annotations

from typing import Any

import lightning as L

from attn_lightning.lit_module import LitGPT

VANILLA = {"_target_": "attn_lightning.attention.vanilla.VanillaAttention", "_partial_": True}


def tiny_lit_gpt(
    tokenizer: dict[str, Any],
    n_layer: int = 1,
    n_head: int = 2,
    n_embd: int = 16,
    block_size: int = 32,
    **optim: Any,
) -> LitGPT:
    """Vanilla attention, AdamW without warm-up unless `optim` says otherwise."""
    model = {
        "_target_": "attn_lightning.model.gpt.GPT",
        "n_layer": n_layer,
        "n_head": n_head,
        "n_embd": n_embd,
        "block_size": block_size,
    }
    defaults = {
        "lr": 1e-3,
        "min_lr": 1e-4,
        "warmup_steps": 0,
        "decay_steps": 1,
        "betas": [0.9, 0.99],
        "weight_decay": 0.0,
    }
    return LitGPT(model, dict(VANILLA), {**defaults, **optim}, tokenizer)


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """A CPU Trainer without logger, progress bar or model summary."""
    options = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**options, **kwargs})
