"""Memory use: CUDA peak allocated on GPU, peak RSS on CPU, each since this run's fit began.

Peaks are process-wide counters, and a sweep runs many jobs in one process (Hydra's basic
launcher), so they are reset when fit starts: CUDA's peak statistics, and on Linux the
kernel's RSS high-water mark (`/proc/self/clear_refs`). Where the RSS peak cannot be reset
(macOS, Windows) it covers the whole process, and the run's record says so
(`peak_memory_scope: process`) for the sweep comparison to mark.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from attn_lightning.runs.record import update_record

MIB = 2**20
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def peak_rss_mib() -> float:
    """Peak resident set size in MiB: since the last reset on Linux, of the process elsewhere
    (0 where the OS does not report it)."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MIB  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak * 1024 / MIB  # bytes vs KiB


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux); False where not possible."""
    try:
        PROC_CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class MemoryMonitor(L.Callback):
    """Logs `memory/cuda_peak_allocated_mib` (GPU) or `memory/rss_peak_mib` (CPU)."""

    def __init__(self, every_n_steps: int = 50) -> None:
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        self.every_n_steps = every_n_steps

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
            per_run = True
        else:
            per_run = reset_peak_rss()
        if trainer.is_global_zero:
            scope = "run" if per_run else "process"
            update_record(trainer.default_root_dir, peak_memory_scope=scope)

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
