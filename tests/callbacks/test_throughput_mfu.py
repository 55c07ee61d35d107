"""Model FLOPs utilisation: the FLOPs count, the peak table and what the callback logs."""

from __future__ import annotations

import pytest
import torch
from helpers import quiet_trainer, tiny_lit_gpt
from torch.utils.data import DataLoader

from attn_lightning.analysis.flops import flops_per_token, known_peak_flops, mfu
from attn_lightning.callbacks.throughput import TokenThroughput
from attn_lightning.training.lit_module import LitGPT

TOKENIZER = {"_target_": "attn_lightning.data.char_tokenizer.CharTokenizer", "chars": "abcdefgh"}


def test_flops_per_token_is_six_n_plus_attention() -> None:
    # nanoGPT's estimate_mfu: 6N + 12 L H Q T with H Q = C
    assert flops_per_token(1000, 2, 32, 16) == 6 * 1000 + 12 * 2 * 32 * 16
    assert mfu(1000.0, 2e9, 4e12) == pytest.approx(0.5)


def test_known_peaks_follow_the_devices_and_precisions() -> None:
    sxm, pcie = "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"
    h200, a100 = "NVIDIA H200", "NVIDIA A100-SXM4-40GB"
    # one 16-bit tensor-core peak per device, whichever 16-bit precision Lightning runs
    for name in (sxm, pcie, h200, a100):
        peaks = {known_peak_flops(name, p) for p in ("bf16-mixed", "bf16-true", "16-mixed")}
        assert len(peaks) == 1 and None not in peaks, name
    # datasheets: the PCIe H100 is clocked below the SXM part, the A100 a generation behind,
    # and the H200 has the H100 SXM's compute (more memory, same tensor cores)
    peak = {name: known_peak_flops(name, "bf16-mixed") for name in (sxm, pcie, h200, a100)}
    assert peak[sxm] > peak[pcie] > peak[a100]
    assert peak[h200] == peak[sxm]
    assert (
        known_peak_flops(sxm, "32-true") is None
    )  # no fp32 figure: no MFU rather than a wrong one
    assert known_peak_flops("NVIDIA GeForce RTX 3090", "bf16-mixed") is None


def run(peak_flops: float | None) -> tuple[dict[str, float], LitGPT]:
    torch.manual_seed(0)
    module = tiny_lit_gpt(
        TOKENIZER,
        n_layer=2,
        n_embd=32,
        block_size=16,
        warmup_steps=1,
        decay_steps=10,
        weight_decay=0.1,
    )
    batches = [(torch.randint(8, (4, 16)), torch.randint(8, (4, 16))) for _ in range(4)]
    trainer = quiet_trainer(
        max_steps=4,
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[TokenThroughput(every_n_steps=2, peak_flops=peak_flops)],
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return {k: float(v) for k, v in trainer.callback_metrics.items()}, module


def test_callback_logs_mfu_from_a_configured_peak() -> None:
    metrics, module = run(peak_flops=1e9)
    expected = flops_per_token(module.model.num_params(), 2, 32, 16)
    assert metrics["train/mfu"] == pytest.approx(
        metrics["train/tokens_per_sec"] * expected / 1e9, rel=1e-5
    )
    assert metrics["train/tokens_seen"] == 4 * 4 * 16


def test_no_mfu_without_a_peak_on_cpu() -> None:
    metrics, _ = run(peak_flops=None)
    assert "train/mfu" not in metrics and "train/tokens_per_sec" in metrics
    with pytest.raises(ValueError, match="peak_flops"):
        TokenThroughput(peak_flops=0)
