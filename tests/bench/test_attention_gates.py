"""The attention benchmark passes a gated variant its gates: `attend(*core_inputs(q, k, v), g)`
with g = gates(x) for a random x, inside the timed call, so the gates' backward is timed too."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from attn_lightning.attention.vanilla import VanillaAttention
from attn_lightning.bench.attention import sweep
from attn_lightning.bench.attention.settings import Settings


class GatedStub(VanillaAttention):
    """Softmax attention on values scaled per token by g = sigmoid(x w) (B, H, T, 1); without
    gates its core refuses to run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = nn.Linear(self.n_embd, self.n_head)
        self.gate_calls = 0
        self.gate_backwards = 0
        self.gate.weight.register_hook(self.count_backward)

    def count_backward(self, grad: Tensor) -> None:
        self.gate_backwards += 1

    def gates(self, x: Tensor) -> Tensor:
        self.gate_calls += 1
        return torch.sigmoid(self.gate(x)).transpose(1, 2)[..., None]  # (B, H, T, 1)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        assert g is not None, "the benchmark gave a gated variant no gates"
        return super().attend(q, k, v * g)

    def attention_matrix(self, q: Tensor, k: Tensor, g: Tensor | None = None) -> Tensor:
        assert g is not None, "the benchmark gave a gated variant no gates"
        return super().attention_matrix(q, k)


def test_a_gated_variant_is_timed_with_its_gates(monkeypatch) -> None:
    settings = Settings(
        variants=("vanilla",), lengths=(16,), batch_size=1, heads=2, head_dim=8, repeats=2, warmup=1
    )
    built: list[GatedStub] = []

    def build(name: str, settings: Settings, length: int) -> GatedStub:
        built.append(GatedStub(settings.heads * settings.head_dim, settings.heads, length).train())
        return built[-1]

    monkeypatch.setattr(sweep, "build_variant", build)
    inputs = sweep.random_inputs(settings, 16)
    result = sweep.measure("gated", 16, inputs, settings, [], lambda line: None)
    assert result.ok, result.status
    assert math.isfinite(result.time_ms) and math.isfinite(result.output_cosine)
    (module,) = built
    calls = settings.warmup + settings.repeats + 1  # the timed calls and the memory call
    assert module.gate_calls == calls + 1  # and the quality comparison
    assert module.gate_backwards == calls  # the gates' backward ran inside each call
