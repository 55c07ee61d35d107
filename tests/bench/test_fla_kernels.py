"""`bench gpu`'s map of our variants onto fla's Triton kernels (_fla_kernels.py), checked on CPU:
fla's kernels need Triton, so each chunk kernel is stood in for by fla's own plain-PyTorch
reference of the same function (its naive.py, loaded by path), called with the kernel's
arguments. Our core and the mapped call must then compute the same output: the layouts, scales,
feature maps and gates are carried over correctly."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

from attn_lightning.attention.registry import build_attention
from attn_lightning.bench import _kernel_references as refs
from attn_lightning.bench._fla_kernels import FLA_VARIANTS, fla_core

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("fla") is None, reason="needs flash-linear-attention (the gpu extra)"
)


@pytest.fixture
def fla_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """fake `fla.ops.*` modules whose chunk kernels run fla's naive references."""
    linear, delta, gla, simple = (
        refs.fla_naive(op) for op in ("linear_attn", "gated_delta_rule", "gla", "simple_gla")
    )

    def chunk_linear_attn(q, k, v, scale=None, normalize=True):
        return linear.naive_recurrent_linear_attn(q, k, v, scale=scale, normalize=normalize)

    def chunk_gated_delta_rule(q, k, v, g, beta, scale=None):
        return delta.naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=scale)

    def chunk_delta_rule(q, k, v, beta, scale=None):
        return chunk_gated_delta_rule(q, k, v, torch.zeros_like(beta), beta, scale=scale)

    def chunk_gla(q, k, v, g, scale=None):  # the reference scales q by K^-1/2 itself
        return gla.naive_recurrent_gla(q * (scale * q.size(-1) ** 0.5), k, v, g)

    def chunk_simple_gla(q, k, v, g, scale=None):
        return simple.naive_parallel_simple_gla(q, k, v, g, scale=scale)  # (o, the matrix)

    kernels = {
        "linear_attn": {"chunk_linear_attn": chunk_linear_attn},
        "delta_rule": {"chunk_delta_rule": chunk_delta_rule},
        "gated_delta_rule": {"chunk_gated_delta_rule": chunk_gated_delta_rule},
        "gla": {"chunk_gla": chunk_gla},
        "simple_gla": {"chunk_simple_gla": chunk_simple_gla},
    }
    monkeypatch.setitem(sys.modules, "fla", types.ModuleType("fla"))
    monkeypatch.setitem(sys.modules, "fla.ops", types.ModuleType("fla.ops"))
    for op, functions in kernels.items():
        module = types.ModuleType(f"fla.ops.{op}")
        module.__dict__.update(functions)
        monkeypatch.setitem(sys.modules, f"fla.ops.{op}", module)


@pytest.mark.parametrize("name", FLA_VARIANTS)
def test_the_mapped_fla_call_computes_our_core(name: str, fla_on_cpu: None) -> None:
    B, H, T, D = 2, 2, 24, 8
    torch.manual_seed(0)
    module = build_attention(name, n_embd=H * D, n_head=H, block_size=T)
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    gates = module.gates(torch.randn(B, T, H * D))
    with torch.no_grad():
        ours = module.attend(q, k, v, gates)
        theirs = fla_core(name, module)(q, k, v, gates)
    torch.testing.assert_close(theirs.float(), ours, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, v, atol=1e-2)  # attention mixed the values
