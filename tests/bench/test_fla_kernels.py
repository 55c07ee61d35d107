"""`bench gpu`'s map of our variants onto fla's Triton kernels (_fla_kernels.py), checked on CPU:
fla's kernels need Triton, so each kernel is stood in for by fla's own plain-PyTorch reference
of the same function (its naive.py, loaded by path), called with the kernel's argument names,
layouts and defaults. Our core and the mapped call must then compute the same output: the
layouts, scales, feature maps and gates are carried over correctly; and `bench gpu`'s row runs
each variant on the shapes its `attend` takes."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.attention.registry import build_attention
from attn_lightning.bench import _kernel_references as refs
from attn_lightning.bench import gpu
from attn_lightning.bench._fla_kernels import FLA_VARIANTS, fla_core

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("fla") is None, reason="needs flash-linear-attention (the gpu extra)"
)


@pytest.fixture
def fla_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """fake `fla.ops.*` modules whose kernels run fla's naive references, with the kernels'
    argument names, layouts ((B, T, H, ·)) and defaults (scale None: K^-1/2)."""
    linear, delta, gla, simple, kda, product, dplr, forgetting = (
        refs.fla_naive(op)
        for op in (
            "linear_attn",
            "gated_delta_rule",
            "gla",
            "simple_gla",
            "kda",
            "gated_delta_product",
            "generalized_delta_rule/dplr",
            "forgetting_attn",
        )
    )

    def chunk_linear_attn(q, k, v, scale=None, normalize=True):
        return linear.naive_recurrent_linear_attn(q, k, v, scale=scale, normalize=normalize)

    def chunk_gated_delta_rule(q, k, v, g, beta, scale=None):
        return delta.naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=scale)

    def chunk_delta_rule(q, k, v, beta, scale=None):
        return chunk_gated_delta_rule(q, k, v, torch.zeros_like(beta), beta, scale=scale)

    def chunk_kda(q, k, v, g, beta, scale=None):  # g: log α (B, T, H, K), post-activation
        return kda.naive_recurrent_kda(q, k, v, g, beta, scale=scale)

    def chunk_gla(q, k, v, g, scale=None):  # the reference scales q by K^-1/2 itself
        return gla.naive_recurrent_gla(q * (scale * q.size(-1) ** 0.5), k, v, g)

    def chunk_simple_gla(q, k, v, g, scale=None):
        return simple.naive_parallel_simple_gla(q, k, v, g, scale=scale)  # (o, the matrix)

    def chunk_gated_delta_product(q, k, v, g, beta, num_householder, scale=None):
        scale = k.size(-1) ** -0.5 if scale is None else scale
        return product.naive_recurrent_gated_delta_product(
            q, k, v, g, beta, scale, num_householder=num_householder
        )

    def chunk_rwkv7(r, w, k, v, a, b, scale=1.0):  # the reference: head-first, q by K^-1/2
        head_first = (x.transpose(1, 2) for x in (r * (scale * r.size(-1) ** 0.5), k, v, a, b, w))
        o, state = dplr.dplr_recurrence(*head_first)
        return o.transpose(1, 2), state

    def parallel_forgetting_attn(q, k, v, g, scale=None, window_size=None):
        return forgetting.naive_forgetting_attn(q, k, v, g, scale, window_size).to(v.dtype)

    kernels = {
        "linear_attn": {"chunk_linear_attn": chunk_linear_attn},
        "delta_rule": {"chunk_delta_rule": chunk_delta_rule},
        "gated_delta_rule": {"chunk_gated_delta_rule": chunk_gated_delta_rule},
        "kda": {"chunk_kda": chunk_kda},
        "gla": {"chunk_gla": chunk_gla},
        "simple_gla": {"chunk_simple_gla": chunk_simple_gla},
        "gated_delta_product": {"chunk_gated_delta_product": chunk_gated_delta_product},
        "rwkv7": {"chunk_rwkv7": chunk_rwkv7},
        "forgetting_attn": {"parallel_forgetting_attn": parallel_forgetting_attn},
    }
    monkeypatch.setitem(sys.modules, "fla", types.ModuleType("fla"))
    monkeypatch.setitem(sys.modules, "fla.ops", types.ModuleType("fla.ops"))
    for op, functions in kernels.items():
        module = types.ModuleType(f"fla.ops.{op}")
        module.__dict__.update(functions)
        monkeypatch.setitem(sys.modules, f"fla.ops.{op}", module)


def core_inputs(module: CausalSelfAttention, x: torch.Tensor) -> list[torch.Tensor]:
    """Standard normal q, k, v of the shapes `attend` takes: (B, H, T, D), or for
    gated_deltaproduct k and v of its n_h T sub-steps."""
    with torch.no_grad():
        shapes = [t.shape for t in module.core_inputs(*module.split_heads(x))]
    return [torch.randn(shape) for shape in shapes]


@pytest.mark.parametrize("name", FLA_VARIANTS)
def test_the_mapped_fla_call_computes_our_core(name: str, fla_on_cpu: None) -> None:
    B, H, T, D = 2, 2, 24, 8
    torch.manual_seed(0)
    module = build_attention(name, n_embd=H * D, n_head=H, block_size=T)
    x = torch.randn(B, T, H * D)
    q, k, v = core_inputs(module, x)
    gates = module.gates(x)
    with torch.no_grad():
        ours = module.attend(q, k, v, gates)
        theirs = fla_core(name, module)(q, k, v, gates)
    assert ours.shape == q.shape
    torch.testing.assert_close(theirs.float(), ours, rtol=1e-4, atol=1e-4)
    last_values = v.unflatten(2, (T, -1))[:, :, :, -1]  # v, or each token's last sub-step's
    assert not torch.allclose(ours, last_values, atol=1e-2)  # attention mixed the values


@pytest.mark.filterwarnings("ignore:In CPU autocast")
def test_bench_gpu_rows_agree_on_each_cores_own_shapes(
    fla_on_cpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bench gpu`'s row, at toy sizes on CPU in float32 (autocast off): every mapped variant
    runs forward and backward on the inputs its `attend` takes (gated_deltaproduct's sub-steps
    included), and fla's output has cosine 1 with ours."""
    monkeypatch.setattr(gpu, "FLA_SHAPE", (1, 2, 16, 8))
    monkeypatch.setattr(gpu, "FLA_DTYPE", torch.float32)
    for name in FLA_VARIANTS:
        cells = [c.strip() for c in gpu.fla_row(name, torch.device("cpu")).strip("|").split("|")]
        assert cells[0] == name and float(cells[-1]) > 0.9999, cells
