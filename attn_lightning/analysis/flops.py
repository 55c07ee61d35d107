"""Model FLOPs and model FLOPs utilisation (MFU), as in PaLM (Chowdhery et al. 2022, app. B)
and nanoGPT's `estimate_mfu`.

Training FLOPs per token = 6 N + 12 L C T: 6 per parameter (forward 2, backward 4) for the N
non-embedding parameters, plus the attention scores and weighted sum of exact softmax attention
over a context of T (L layers, width C). Every variant is charged the same dense count, so MFU
compares variants by the useful work of the model they stand in for: a cheaper approximation
shows up as more tokens per second at the same model FLOPs per token.
"""

from __future__ import annotations

# Dense peak FLOP/s per device for bf16/fp16 tensor-core math (vendor datasheets). Matched
# against the CUDA device name; anything else needs `peak_flops` configured.
PEAK_FLOPS_16BIT = {
    "H200": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,  # SXM
    "A100": 312.0e12,
}


def flops_per_token(n_params: int, n_layer: int, n_embd: int, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token: 6 N + 12 L C T."""
    return 6.0 * n_params + 12.0 * n_layer * n_embd * seq_len


def known_peak_flops(device_name: str, precision: str) -> float | None:
    """Datasheet peak FLOP/s for a CUDA device name under a Lightning precision string, or None
    when unknown (CPUs, fp32, unlisted GPUs)."""
    if not any(p in str(precision) for p in ("bf16", "16-mixed", "16-true")):
        return None
    for name, peak in PEAK_FLOPS_16BIT.items():  # specific names before general ones
        if name in device_name:
            return peak
    return None


def mfu(tokens_per_sec: float, flops_per_token: float, peak_flops: float) -> float:
    """Achieved model FLOP/s over peak FLOP/s (peak of all devices together)."""
    return tokens_per_sec * flops_per_token / peak_flops
