"""Memory use: CUDA peak allocated on GPU, process peak RSS on CPU."""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
import torch

MIB = 2**20


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (0 where the OS does not report it)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak * 1024 / MIB  # bytes vs KiB


class MemoryMonitor(L.Callback):
    """Logs `memory/cuda_peak_allocated_mib` (GPU) or `memory/rss_peak_mib` (CPU)."""

    def __init__(self, every_n_steps: int = 50) -> None:
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        self.every_n_steps = every_n_steps

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if trainer.global_step % self.every_n_steps != 0:
            return
        device = pl_module.device
        if device.type == "cuda":
            metrics = {
                "memory/cuda_peak_allocated_mib": torch.cuda.max_memory_allocated(device) / MIB
            }
        else:
            metrics = {"memory/rss_peak_mib": peak_rss_mib()}
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
