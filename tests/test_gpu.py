"""CUDA paths: bf16 training and CUDA memory logging. Skipped without a GPU (CI has none)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TINY, events, run_cli, run_dirs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_bf16_gpu_run_trains_and_logs_cuda_memory(data_dir, tmp_path):
    run_cli("attn_lightning", [*TINY[1:], "trainer=gpu", "test=false"], tmp_path, data_dir)
    (run_dir,) = run_dirs(tmp_path / "outputs")
    acc = events(run_dir)
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    peak = acc.Scalars("memory/cuda_peak_allocated_mib")[-1].value
    assert 0 < peak < torch.cuda.get_device_properties(0).total_memory / 2**20
