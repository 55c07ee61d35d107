"""Training throughput in tokens per second, measured over windows of steps, and model FLOPs
utilisation where the device's peak is known or configured."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from attn_lightning.analysis.flops import flops_per_token, known_peak_flops, mfu


class TokenThroughput(L.Callback):
    """Logs `train/tokens_per_sec` (all ranks together), `train/tokens_seen` and `train/mfu`.

    Timing spans `every_n_steps` optimizer steps with no per-step device sync, so the
    measurement itself does not slow training down. Validation time is excluded.

    MFU = tokens/s x model FLOPs per token / (peak FLOP/s x devices), with the dense count of
    analysis/flops.py. `peak_flops` is one device's peak; null looks the GPU up in a small table
    of datasheet bf16 peaks (H100, H200, A100 under 16-bit precision) and logs no MFU elsewhere.
    """

    def __init__(self, every_n_steps: int = 50, peak_flops: float | None = None) -> None:
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        if peak_flops is not None and peak_flops <= 0:
            raise ValueError(f"peak_flops must be positive or null, got {peak_flops}")
        self.every_n_steps = every_n_steps
        self.peak_flops = peak_flops
        self._peak_total: float | None = None  # all devices
        self.tokens_seen = 0
        self._window_tokens = 0
        self._window_start: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        peak = self.peak_flops
        if peak is None and pl_module.device.type == "cuda":
            name = torch.cuda.get_device_name(pl_module.device)
            peak = known_peak_flops(name, str(trainer.precision))
        self._peak_total = None if peak is None else peak * trainer.world_size

    def model_flops_per_token(self, pl_module: L.LightningModule, seq_len: int) -> float:
        model = pl_module.model
        n_embd = model.tok_emb.embedding_dim
        return flops_per_token(model.num_params(), len(model.blocks), n_embd, seq_len)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self._window_start is None:
            self._window_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        tokens = batch[0].numel() * trainer.world_size
        self.tokens_seen += tokens
        self._window_tokens += tokens
        if trainer.global_step % self.every_n_steps == 0 and self._window_start is not None:
            elapsed = time.perf_counter() - self._window_start
            metrics = {
                "train/tokens_per_sec": self._window_tokens / elapsed,
                "train/tokens_seen": float(self.tokens_seen),
            }
            if self._peak_total is not None:
                per_token = self.model_flops_per_token(pl_module, batch[0].size(1))
                metrics["train/mfu"] = mfu(
                    metrics["train/tokens_per_sec"], per_token, self._peak_total
                )
            pl_module.log_dict(
                metrics, on_step=True, on_epoch=False, prog_bar=True, rank_zero_only=True
            )
            self._window_tokens, self._window_start = 0, None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._window_tokens, self._window_start = 0, None  # do not count evaluation time

    def state_dict(self) -> dict[str, Any]:
        return {"tokens_seen": self.tokens_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tokens_seen = state_dict["tokens_seen"]
