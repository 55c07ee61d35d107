"""Gated linear attention: the chunked, recurrent and materialised forms equal the paper's
recurrence S_t = diag(α_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t (written out here in float64),
with and without a carried state; α_t = sigmoid(x W_1 W_2 + b)^(1/τ) lies in (0, 1); decays
near 0 and near 1, even side by side in one head, stay finite."""

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
from attn_lightning.attention.gla import GatedLinearAttention

B, H, T, D = 2, 3, 37, 5


def inputs(T: int = T) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q, k, v and log α (B, H, T, D), α in (0.5, 1) as a trained GLA gate would give."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64) for _ in range(3))
    alpha = 0.5 + 0.5 * torch.rand(B, H, T, D, dtype=torch.float64)
    return q, k, v, alpha.log()


def paper_recurrence(q: Tensor, k: Tensor, v: Tensor, alpha: Tensor, S: Tensor | None = None):
    """S_t = diag(α_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t, one head and one token at a time."""
    B, H, _, K = q.shape
    S = q.new_zeros(B, H, K, v.size(-1)) if S is None else S.clone()
    out = torch.zeros_like(v)
    for b in range(B):
        for h in range(H):
            for t in range(q.size(2)):
                S[b, h] = torch.diag(alpha[b, h, t]) @ S[b, h] + torch.outer(k[b, h, t], v[b, h, t])
                out[b, h, t] = q[b, h, t] @ S[b, h]
    return out, S


@pytest.mark.parametrize("T", [32, 37])  # a multiple of the chunk size 8, and not
def test_chunked_equals_recurrent_equals_paper(T: int) -> None:
    q, k, v, log_alpha = inputs(T)
    expected, _ = paper_recurrence(q, k, v, log_alpha.exp())
    chunked = chunked_decay_attention(q, k, v, log_alpha, 8, state=None)
    recurrent = recurrent_decay_attention(q, k, v, log_alpha, DecayState())
    torch.testing.assert_close(chunked, expected)
    torch.testing.assert_close(recurrent, expected)


@pytest.mark.parametrize("split", [16, 21])  # prefill ending on a chunk boundary, and not
def test_prefill_then_continue(split: int) -> None:
    q, k, v, log_alpha = inputs()
    expected, S_end = paper_recurrence(q, k, v, log_alpha.exp())
    head = [x[:, :, :split] for x in (q, k, v, log_alpha)]
    tail = [x[:, :, split:] for x in (q, k, v, log_alpha)]
    state = DecayState()
    first = chunked_decay_attention(*head, 8, state)
    second = chunked_decay_attention(*tail, 8, state)
    torch.testing.assert_close(torch.cat((first, second), 2), expected)
    torch.testing.assert_close(state.S, S_end)
    assert state.length == T
    state = DecayState()  # prefill, then token by token
    prefix = chunked_decay_attention(*head, 8, state)
    steps = recurrent_decay_attention(*tail, state)
    torch.testing.assert_close(torch.cat((prefix, steps), 2), expected)


def test_matrix_is_the_product_of_gates() -> None:
    """A_ij = Σ_d q_id k_jd Π_{j<s<=i} α_sd for j <= i, products taken as written."""
    q, k, v, log_alpha = inputs()
    alpha = log_alpha.exp()
    expected = torch.zeros(B, H, T, T, dtype=torch.float64)
    for i in range(T):
        for j in range(i + 1):
            decay = alpha[:, :, j + 1 : i + 1].prod(2)  # (B, H, D), ones for i == j
            expected[:, :, i, j] = (q[:, :, i] * decay * k[:, :, j]).sum(-1)
    matrix = decay_attention_matrix(q, k, log_alpha, 8)
    torch.testing.assert_close(matrix, expected)
    torch.testing.assert_close(matrix @ v, chunked_decay_attention(q, k, v, log_alpha, 8, None))


def layer(**options) -> GatedLinearAttention:
    torch.manual_seed(0)
    attn = GatedLinearAttention(n_embd=32, n_head=4, block_size=64, chunk_size=8, **options)
    for p in attn.parameters():  # GPT's init, with a non-zero gate bias
        torch.nn.init.normal_(p, std=0.3)
    return attn.eval()


def test_gates_are_the_papers_alpha() -> None:
    """α = sigmoid(x W_1 W_2 + b)^(1/τ) in (0, 1), one per key channel, from a rank-16 map."""
    attn = layer()
    x = torch.randn(2, 29, 32)
    log_alpha = attn.gates(x)
    assert log_alpha.shape == (2, 4, 29, 8)
    logits = x @ attn.gate_down.weight.T @ attn.gate_up.weight.T + attn.gate_up.bias
    alpha = torch.sigmoid(logits).view(2, 29, 4, 8).transpose(1, 2) ** (1 / 16)
    torch.testing.assert_close(log_alpha.exp(), alpha)
    assert ((alpha > 0) & (alpha < 1)).all()
    assert attn.gate_down.weight.shape == (16, 32)


def test_grouped_heads_share_their_kv_heads_gate() -> None:
    attn = layer(n_kv_head=2)
    log_alpha = attn.gates(torch.randn(2, 29, 32))  # (B, H, T, D), repeated from H_kv = 2
    torch.testing.assert_close(log_alpha[:, 0], log_alpha[:, 1])
    assert not torch.allclose(log_alpha[:, 1], log_alpha[:, 2])


def test_module_is_the_recurrence_and_decodes_like_its_forward() -> None:
    attn = layer().double()
    x = torch.randn(2, 29, 32, dtype=torch.float64)
    q, k, v = attn.core_inputs(*attn.split_heads(x))
    log_alpha = attn.gates(x)
    expected, _ = paper_recurrence(q * 8**-0.5, k, v, log_alpha.exp())
    torch.testing.assert_close(attn.attend(q, k, v, log_alpha), expected)
    parallel, _ = attn(x)
    cache = attn.new_cache()
    prefill, _ = attn(x[:, :11], cache=cache)
    steps = [attn(x[:, t : t + 1], cache=cache)[0] for t in range(11, 29)]
    torch.testing.assert_close(torch.cat((prefill, *steps), 1), parallel)
    assert cache.S.shape == (2, 4, 8, 8)  # O(1) state: (B, H, D, D)


@pytest.mark.parametrize("log_alpha", [-1e-8, -80.0, "mixed"])  # α near 1, near 0, both
def test_extreme_decays_stay_finite(log_alpha: float | str) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, 300, D, requires_grad=True) for _ in range(3))
    if log_alpha == "mixed":  # channel 0 keeps everything, the others forget at once
        decay = torch.full((B, H, 300, D), -80.0)
        decay[..., 0] = -1e-8
    else:
        decay = torch.full((B, H, 300, D), log_alpha)
    decay.requires_grad_(True)
    out = chunked_decay_attention(q, k, v, decay, 16, None)
    out.square().sum().backward()
    for x in (out, q.grad, k.grad, v.grad, decay.grad):
        assert torch.isfinite(x).all()
    expected = recurrent_decay_attention(
        q.detach(), k.detach(), v.detach(), decay.detach(), DecayState()
    )
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-3)
    if log_alpha == -80.0:  # only the token itself survives: o_t = (q_t · k_t) v_t
        torch.testing.assert_close(out, (q * k).sum(-1, keepdim=True) * v)


def test_extreme_gate_logits_stay_finite() -> None:
    """Huge inputs saturate the sigmoid both ways; outputs and gradients stay finite."""
    attn = layer().train()
    x = (1e3 * torch.randn(2, 29, 32)).requires_grad_(True)
    log_alpha = attn.gates(x)
    assert (log_alpha.exp() <= 1).all() and torch.isfinite(log_alpha).all()
    y, _ = attn(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_factorised_within_chunk_form_has_the_exact_forms_gradients(monkeypatch) -> None:
    """The per-channel chunk product factorised around the chunk's first position (the fast
    path for decays up to e^-40 within a chunk) equals the exact (C, C, K) form, gradients
    too."""
    import attn_lightning.attention.decay_kernel as decay_kernel

    q, k, v, log_alpha = (x.requires_grad_() for x in inputs())
    results = []
    for bound in (decay_kernel.FACTOR_BOUND, -1.0):  # -1: never factorised
        monkeypatch.setattr(decay_kernel, "FACTOR_BOUND", bound)
        out = chunked_decay_attention(q, k, v, log_alpha, 16, None)
        results.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v, log_alpha))))
    for fast, exact in zip(*results, strict=True):
        torch.testing.assert_close(fast, exact)


@pytest.mark.parametrize("T", [16, 21])  # whole chunks, and a padded last chunk
def test_fast_path_gradients_are_the_recurrences(T: int) -> None:
    """The factorised form's hand-written backward (chunked_channel_decay.py) against autograd
    through the paper's recurrence, float64: q (scaled in the kernel), k, v, log α and the
    carried state, with decays strong enough that every position's gradient differs."""
    q, k, v, log_alpha = inputs(T)
    log_alpha = 2 * log_alpha  # α in (0.25, 1): about e^-2.5 within a chunk of 8
    S0 = torch.randn(B, H, D, D, dtype=torch.float64)
    leaves = [x.clone().requires_grad_() for x in (q, k, v, log_alpha, S0)]
    grad = torch.randn(B, H, T, D, dtype=torch.float64)
    state = DecayState()
    state.S = leaves[4]
    out = chunked_decay_attention(*leaves[:4], 8, state, scale=0.5)
    fast = torch.autograd.grad((out * grad).sum(), leaves)
    expected, _ = paper_recurrence(q * 0.5, k, v, log_alpha.exp(), S0)
    torch.testing.assert_close(out, expected)
    q_l, k_l, v_l, log_alpha_l, S = leaves  # the recurrence out of place, all heads at once
    outputs = []
    for t in range(T):
        S = log_alpha_l[:, :, t, :, None].exp() * S + k_l[:, :, t, :, None] * v_l[:, :, t, None]
        outputs.append(0.5 * q_l[:, :, t, None] @ S)
    reference = torch.autograd.grad((torch.cat(outputs, 2) * grad).sum(), leaves)
    for got, want in zip(fast, reference, strict=True):
        torch.testing.assert_close(got, want)


def test_fast_path_passes_gradcheck() -> None:
    """Finite differences of the Function itself, including the final state's value."""
    from attn_lightning.attention.chunked_channel_decay import ChunkedChannelDecay

    torch.manual_seed(0)
    X, C, K, V, rows = 6, 4, 3, 2, 2
    q, k = torch.randn(X, C, K, dtype=torch.float64), torch.randn(X, C, K, dtype=torch.float64)
    v, S0 = torch.randn(X, C, V, dtype=torch.float64), torch.randn(rows, K, V, dtype=torch.float64)
    log_alpha = -torch.rand(X, C, K, dtype=torch.float64)
    leaves = [x.requires_grad_() for x in (q, k, v, log_alpha, S0)]
    out = lambda *xs: ChunkedChannelDecay.apply(*xs, rows, 0.7)[0]  # noqa: E731
    assert torch.autograd.gradcheck(out, leaves)
