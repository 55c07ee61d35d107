"""What one attention benchmark sweeps and the limits of a measurement: the defaults, in one
place (the CLI's `--help` shows them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from attn_lightning.attention.registry import variant_names, variant_options
from attn_lightning.errors import UserError

MiB = 2**20
GiB = 2**30
BASELINE = "vanilla"  # the exact variant the crossover is measured against
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Defaults that depend on the machine, resolved by the CLI:
MIN_LENGTH = 128  # first of the doubling lengths
MAX_LENGTH = {"cpu": 8192, "cuda": 32768}  # last of the doubling lengths, per device type
CPU_MEMORY_FRACTION = 0.5  # of MemAvailable: headroom for the estimate's error and the system


@dataclass(frozen=True)
class Settings:
    """One sweep: which cores, which lengths, what shapes, and the limits of a measurement."""

    variants: tuple[str, ...]
    lengths: tuple[int, ...]
    batch_size: int = 1
    heads: int = 4
    head_dim: int = 32
    repeats: int = 5
    warmup: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    time_limit: float = 30.0  # seconds per (variant, length): warm-up and repeats
    max_memory: float | None = None  # bytes a call may need; None: no estimate, rely on errors
    matrix_limit: float = 64 * MiB  # B*H*T*T float32 bytes up to which matrices are compared
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per-variant keys
    seed: int = 0

    def validate(self) -> None:
        """Raise UserError saying what to change, before any measurement starts."""
        valid = variant_names()
        unknown = [v for v in self.variants if v not in valid]
        if unknown or not self.variants:
            raise UserError(
                f"unknown attention variant(s) {', '.join(unknown) or '(none given)'}: "
                f"choose from {', '.join(valid)}"
            )
        if not self.lengths or any(n <= 0 for n in self.lengths):
            raise UserError(f"sequence lengths must be positive integers, got {list(self.lengths)}")
        for name in ("batch_size", "heads", "head_dim", "repeats"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if self.warmup < 0 or self.time_limit < 0:
            raise UserError("--warmup and --time-limit must be >= 0")
        if self.dtype not in DTYPES:
            raise UserError(f"unknown --dtype {self.dtype}: choose from {', '.join(DTYPES)}")
        for variant, options in self.options.items():
            if variant not in valid:
                raise UserError(
                    f"--set names unknown variant {variant}: choose from {', '.join(valid)}"
                )
            keys = list(variant_options(variant))
            for key in options:
                if key not in keys:
                    raise UserError(
                        f"--set {variant}.{key}: {variant} has no option {key}; "
                        f"its options are {', '.join(keys)}"
                    )
