"""Public implementations of the linear-attention family that `bench kernels` races ours
against, when they are installed (the `bench` extra): each is a function of (q, k, v) in our
(B, H, T, D) layout, or None with the reason it is missing.

- performer-pytorch's `FastAttention(causal=True)`: without fast-transformers' CUDA extension
  it runs its plain-PyTorch `causal_linear_attention_noncuda` (T / 128-position chunks whose
  (chunk, M, D) prefix states are materialised).
- linear-attention-transformer's `causal_linear_attn`: bucketed, it skips the attention inside
  a bucket, so it is not exact; timed only.
- fla (flash-linear-attention)'s plain-PyTorch references, `fla/ops/*/naive.py`: fla's package
  imports Triton, which has no CPU build, so the naive files are loaded by path (they need
  only torch and einops); where even that fails the reference is skipped and says why.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

Kernel = Callable[..., Tensor]


def fla_naive(op: str) -> ModuleType:
    """fla/ops/<op>/naive.py as a module, without importing fla (and Triton)."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("flash-linear-attention (fla) is not installed")
    path = Path(next(iter(spec.submodule_search_locations)), "ops", op, "naive.py")
    if not path.is_file():
        raise ImportError(f"{path} not found (fla-core is not installed)")
    module_spec = importlib.util.spec_from_file_location(f"_fla_naive_{op}", path)
    module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def performer_pytorch(head_dim: int, nb_features: int, seed: int) -> tuple[Kernel, Tensor]:
    """performer-pytorch's causal FastAttention and its projection matrix (M, head_dim)."""
    import contextlib
    import io

    from performer_pytorch import FastAttention

    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints that it has no CUDA kernel
        attention = FastAttention(head_dim, nb_features=nb_features, causal=True)
    return attention, attention.projection_matrix


def performer_pytorch_without_stabiliser(projection: Tensor) -> Kernel:
    """performer-pytorch's causal FAVOR+ with its feature stabiliser eps = 1e-4 set to 0 (its
    softmax_kernel and causal_linear_attention_noncuda, as FastAttention composes them): the
    function ours computes, up to constant factors that cancel in the normalisation. With
    the stabiliser, key features far below 1e-4 (their global max subtracted) are swamped."""
    from performer_pytorch.performer_pytorch import (
        causal_linear_attention_noncuda,
        softmax_kernel,
    )

    def call(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = softmax_kernel(q, projection_matrix=projection, is_query=True, eps=0.0)
        k = softmax_kernel(k, projection_matrix=projection, is_query=False, eps=0.0)
        return causal_linear_attention_noncuda(q, k, v)

    return call


def linear_attention_transformer() -> Kernel:
    from linear_attention_transformer.linear_attention_transformer import causal_linear_attn

    return causal_linear_attn


def _bthd(x: Tensor) -> Tensor:
    return x.transpose(1, 2)


def fla_linear() -> Kernel:
    """fla's naive_chunk_linear_attn, normalised: q, k are features (B, H, T, M)."""
    naive = fla_naive("linear_attn").naive_chunk_linear_attn

    def call(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return _bthd(naive(_bthd(q), _bthd(k), _bthd(v), normalize=True))

    return call


def fla_delta_rule() -> Kernel:
    """fla's delta_rule_chunkwise (B, H, T, D), chunk 32; beta (B, H, T)."""
    return fla_naive("delta_rule").delta_rule_chunkwise


def fla_gated_delta_rule() -> Kernel:
    """fla's naive_chunk_gated_delta_rule; g = log α and beta (B, H, T)."""
    naive = fla_naive("gated_delta_rule").naive_chunk_gated_delta_rule

    def call(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor) -> Tensor:
        o, _ = naive(_bthd(q), _bthd(k), _bthd(v), _bthd(g), _bthd(beta))
        return _bthd(o)

    return call


def fla_simple_gla() -> Kernel:
    """fla's naive_chunk_simple_gla (a scalar decay per head and token: retention's form);
    g = log α (B, H, T)."""
    naive = fla_naive("simple_gla").naive_chunk_simple_gla

    def call(q: Tensor, k: Tensor, v: Tensor, g: Tensor) -> Tensor:
        o, _ = naive(_bthd(q), _bthd(k), _bthd(v), _bthd(g))
        return _bthd(o)

    return call
