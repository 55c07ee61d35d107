"""Retention: the chunked, recurrent and materialised forms equal the paper's recurrence
S_t = γ_h S_{t-1} + k_t^T v_t, o_t = q_t S_t (written out here in float64) and its parallel form
(Q K^T ⊙ D) V, D_nm = γ^(n-m); with and without a carried state; finite at γ near 0 and 1."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from attn_lightning.attention.decay_kernel import (
    DecayState,
    chunked_decay_attention,
    decay_attention_matrix,
    recurrent_decay_attention,
)
from attn_lightning.attention.retention import Retention

B, H, T, D = 2, 4, 37, 5


def inputs(T: int = T) -> tuple[Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    return tuple(torch.randn(B, H, T, D, dtype=torch.float64) for _ in range(3))


def paper_gammas(H: int = H) -> Tensor:
    return 1 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float64))  # γ_h = 1 - 2^(-5-h)


def log_decay(gamma: Tensor, T: int = T) -> Tensor:
    return gamma.log().view(1, -1, 1, 1).expand(B, -1, T, 1)


def paper_recurrence(q: Tensor, k: Tensor, v: Tensor, gamma: Tensor, S: Tensor | None = None):
    """S_t = γ S_{t-1} + k_t^T v_t, o_t = q_t S_t, one head and one token at a time."""
    B, H, _, K = q.shape
    S = q.new_zeros(B, H, K, v.size(-1)) if S is None else S.clone()
    out = torch.zeros_like(v)
    for b in range(B):
        for h in range(H):
            for t in range(q.size(2)):
                S[b, h] = gamma[h] * S[b, h] + torch.outer(k[b, h, t], v[b, h, t])
                out[b, h, t] = q[b, h, t] @ S[b, h]
    return out, S


@pytest.mark.parametrize("T", [32, 37])  # a multiple of the chunk size 8, and not
def test_chunked_equals_recurrent_equals_paper(T: int) -> None:
    q, k, v = inputs(T)
    gamma = paper_gammas()
    expected, _ = paper_recurrence(q, k, v, gamma)
    chunked = chunked_decay_attention(q, k, v, log_decay(gamma, T), 8, state=None)
    recurrent = recurrent_decay_attention(q, k, v, log_decay(gamma, T), DecayState())
    torch.testing.assert_close(chunked, expected)
    torch.testing.assert_close(recurrent, expected)


@pytest.mark.parametrize("split", [16, 21])  # prefill ending on a chunk boundary, and not
def test_prefill_then_continue(split: int) -> None:
    q, k, v = inputs()
    gamma = paper_gammas()
    expected, S_end = paper_recurrence(q, k, v, gamma)
    state = DecayState()
    first = chunked_decay_attention(
        *(x[:, :, :split] for x in (q, k, v)), log_decay(gamma, split), 8, state
    )
    rest = T - split
    second = chunked_decay_attention(
        *(x[:, :, split:] for x in (q, k, v)), log_decay(gamma, rest), 8, state
    )
    torch.testing.assert_close(torch.cat((first, second), 2), expected)
    torch.testing.assert_close(state.S, S_end)
    assert state.length == T
    state = DecayState()  # prefill, then token by token
    prefix = chunked_decay_attention(
        *(x[:, :, :split] for x in (q, k, v)), log_decay(gamma, split), 8, state
    )
    steps = recurrent_decay_attention(
        *(x[:, :, split:] for x in (q, k, v)), log_decay(gamma, rest), state
    )
    torch.testing.assert_close(torch.cat((prefix, steps), 2), expected)


def test_matrix_is_the_parallel_form() -> None:
    """(Q K^T ⊙ D) with D_nm = γ^(n-m), n >= m, as the paper writes it."""
    q, k, v = inputs()
    gamma = paper_gammas()
    n = torch.arange(T, dtype=torch.float64)
    exponent = (n[:, None] - n[None, :]).clamp_min(0)
    D_mask = gamma.view(H, 1, 1) ** exponent * (n[:, None] >= n[None, :])  # (H, T, T)
    expected = (q @ k.transpose(-2, -1)) * D_mask
    matrix = decay_attention_matrix(q, k, log_decay(gamma), 8)
    torch.testing.assert_close(matrix, expected)
    torch.testing.assert_close(
        matrix @ v, chunked_decay_attention(q, k, v, log_decay(gamma), 8, None)
    )


def test_module_uses_the_paper_decays_and_scale() -> None:
    """The layer's γ_h are the paper's, and its core is the recurrence on q D^-1/2 (fla)."""
    attn = Retention(n_embd=32, n_head=4, block_size=64, chunk_size=8).double()
    torch.testing.assert_close(attn.log_gamma.exp(), paper_gammas(), rtol=1e-7, atol=0)
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, 8, dtype=torch.float64) for _ in range(3))
    expected, _ = paper_recurrence(q * 8**-0.5, k, v, paper_gammas())
    g = attn.gates(torch.zeros(B, T, 32, dtype=torch.float64))  # log γ_h, whatever the input
    torch.testing.assert_close(attn.attend(q, k, v, g), expected)


def test_the_core_refuses_to_run_without_its_decay() -> None:
    attn = Retention(n_embd=32, n_head=4, block_size=64, chunk_size=8)
    q, k, v = (torch.randn(B, H, T, 8) for _ in range(3))
    with pytest.raises(ValueError, match="needs its gates"):
        attn.attend(q, k, v)


def test_module_decodes_like_its_forward() -> None:
    torch.manual_seed(0)
    attn = Retention(n_embd=32, n_head=4, block_size=64, chunk_size=8).eval()
    x = torch.randn(2, 29, 32)
    parallel, _ = attn(x)
    cache = attn.new_cache()
    prefill, _ = attn(x[:, :11], cache=cache)
    steps = [attn(x[:, t : t + 1], cache=cache)[0] for t in range(11, 29)]
    torch.testing.assert_close(torch.cat((prefill, *steps), 1), parallel, rtol=1e-5, atol=1e-5)
    assert cache.S.shape == (2, 4, 8, 8)  # O(1) state: (B, H, D, D)


@pytest.mark.parametrize("gamma", [1 - 1e-7, 1e-30])  # almost no decay; almost total
def test_extreme_decays_stay_finite(gamma: float) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, 300, D, requires_grad=True) for _ in range(3))
    decay = torch.full((B, H, 300, 1), gamma).log()
    out = chunked_decay_attention(q, k, v, decay, 64, None)
    out.square().sum().backward()
    for x in (out, q.grad, k.grad, v.grad):
        assert torch.isfinite(x).all()
    if gamma < 1e-20:  # only the token itself survives: o_t = (q_t · k_t) v_t
        torch.testing.assert_close(out, (q * k).sum(-1, keepdim=True) * v)


def test_each_heads_output_is_normalised() -> None:
    """The output projection sees each head's core output up to its scale (per-head RMSNorm):
    scaling one head's values changes nothing downstream."""
    torch.manual_seed(0)
    attn = Retention(n_embd=32, n_head=4, block_size=64, norm_eps=1e-12).eval()
    y = torch.randn(2, 29, 4, 8)
    scaled = y * torch.tensor([1.0, 10.0, 0.1, 3.0]).view(4, 1)
    torch.testing.assert_close(attn.proj(scaled.flatten(-2)), attn.proj(y.flatten(-2)))
    assert not torch.allclose(attn.proj((y + 1).flatten(-2)), attn.proj(y.flatten(-2)))


def test_scalar_decay_through_the_channel_function_has_the_scalar_forms_gradients(
    monkeypatch,
) -> None:
    """A scalar decay expanded to every key channel (the fast path, chunked_channel_decay.py)
    gives the scalar form's values and gradients, the decay's included (float64)."""
    import attn_lightning.attention.decay_kernel as decay_kernel

    q, k, v = (x.requires_grad_() for x in inputs())
    gamma_log = paper_gammas().log().requires_grad_()
    results = []
    for bound in (decay_kernel.FACTOR_BOUND, -1.0):  # -1: the scalar form
        monkeypatch.setattr(decay_kernel, "FACTOR_BOUND", bound)
        decay = gamma_log.view(1, -1, 1, 1).expand(B, -1, T, 1)
        out = chunked_decay_attention(q, k, v, decay, 8, None, scale=0.5)
        results.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v, gamma_log))))
    for fast, exact in zip(*results, strict=True):
        torch.testing.assert_close(fast, exact)
