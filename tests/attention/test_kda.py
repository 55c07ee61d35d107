"""Kimi Delta Attention: the delta rule with a decay per key channel. Equal channels are Gated
DeltaNet; a closed channel forgets only its own memory; the layer's core agrees with fla's
naive_recurrent_kda and naive_chunk_kda (loaded by path, skipped without fla) in float64 and
float32, from a carried state too; strong decays (the chunk size halved, α below e^-40 taken as
0) stay finite and exact. The forms' agreement with the recurrence written out, for every kind
of decay, and the layer's decoding: test_delta_rule_family.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import ATTENTION_SHAPE as SHAPE
from helpers import (
    DELTA_RULE_SIZES,
    delta_rule_inputs,
    delta_rule_recurrence,
    fla_naive_in,
    small_attention,
)

from attn_lightning.attention.chunked_channel_delta_rule import FACTOR_BOUND
from attn_lightning.attention.delta_rule import (
    DeltaRuleState,
    _channel_chunk_size,
    chunked_delta_rule,
)
from attn_lightning.attention.kda import KimiDeltaAttention
from attn_lightning.errors import ConfigError

B, H, DK, DV = DELTA_RULE_SIZES


def test_equal_channels_are_gated_deltanet() -> None:
    """The same decay in every channel is Gated DeltaNet's scalar decay; channels that differ
    are not."""
    q, k, v, beta, log_alpha = delta_rule_inputs(21, "channel")
    scalar = log_alpha[..., 0]
    same = scalar[..., None].expand(-1, -1, -1, DK)
    expected = chunked_delta_rule(q, k, v, beta, scalar, 8)
    torch.testing.assert_close(chunked_delta_rule(q, k, v, beta, same, 8), expected)
    assert not torch.allclose(chunked_delta_rule(q, k, v, beta, log_alpha, 8), expected)


def test_a_closed_channel_forgets_only_its_own_memory() -> None:
    """α = 0 in channel 0 from position 13 on: the state's row 0 holds only what was written
    from 13 on; the other rows still remember."""
    q, k, v, beta, log_alpha = delta_rule_inputs(37, "channel")
    log_alpha = 0.05 * log_alpha  # long memories ...
    log_alpha[:, :, 13, 0] = -300.0  # ... but channel 0's closes: e^-300 is 0 next to 1
    state = DeltaRuleState()
    chunked_delta_rule(q, k, v, beta, log_alpha, 8, state)
    _, S = delta_rule_recurrence(q, k, v, beta, log_alpha)
    torch.testing.assert_close(state.S, S)
    head = [x[:, :, :13] for x in (q, k, v, beta, log_alpha)]
    tail = [x[:, :, 13:] for x in (q, k, v, beta, log_alpha)]
    for forget, equal in ((slice(0, 1), True), (slice(None), False)):
        later = DeltaRuleState()
        chunked_delta_rule(*head, 8, later)
        later.S[:, :, forget] = 0.0  # row 0 only; every row
        chunked_delta_rule(*tail, 8, later)
        assert torch.allclose(later.S, S) == equal


@pytest.mark.parametrize(
    ("log_alpha_value", "chunk_size"),
    [(-1e-7, 16), (-2.0, 16), (-4.0, 8), (-30.0, 2), (-200.0, 1)],
)  # α near 1; up to the bound; halved chunks; α near 0 (below e^-FACTOR_BOUND: taken as 0)
def test_strong_decays_stay_finite_and_exact(log_alpha_value: float, chunk_size: int) -> None:
    """float32 outputs and gradients finite, and equal to the float64 recurrence: past
    e^-FACTOR_BOUND within a chunk the chunk size is halved (to `chunk_size`)."""
    q, k, v, beta, _ = (x.float() for x in delta_rule_inputs(37, "channel"))
    g = torch.Generator().manual_seed(3)
    log_alpha = log_alpha_value * (0.5 + 0.5 * torch.rand(B, H, 37, DK, generator=g))
    log_alpha[..., 0] = log_alpha_value  # the strongest channel sets the chunk size
    assert _channel_chunk_size(log_alpha, 16) == chunk_size
    leaves = [x.requires_grad_() for x in (q, k, v, beta, log_alpha)]
    out = chunked_delta_rule(*leaves, 16)
    out.square().sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(x.grad).all() for x in leaves)
    doubles = [x.detach().double().requires_grad_() for x in leaves]
    expected, _ = delta_rule_recurrence(*doubles)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)
    expected_grads = torch.autograd.grad(expected.square().sum(), doubles)
    names = ["q", "k", "v", "beta", "log_alpha"]
    for name, x, e in zip(names, leaves, expected_grads, strict=True):
        scale = e.abs().max().clamp_min(1.0)
        error = (x.grad.double() - e).abs().max() / scale
        assert error < 1e-4, f"{name}: {error:.2e}"


def test_the_chunk_size_bound_is_the_factor_bound() -> None:
    """A chunk may decay by e^-FACTOR_BOUND after its first position, not more."""
    log_alpha = torch.zeros(1, 1, 16, 2)
    log_alpha[0, 0, 1:5, 1] = -FACTOR_BOUND / 4  # positions 2..5 of the first chunk of 8
    assert _channel_chunk_size(log_alpha, 8) == 8
    log_alpha[0, 0, 1, 1] -= 0.01
    assert _channel_chunk_size(log_alpha, 8) == 4  # position 5 starts the second chunk of 4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("form", ["naive_recurrent_kda", "naive_chunk_kda"])
def test_agrees_with_fla(dtype: torch.dtype, form: str) -> None:
    """The layer's core on raw q, k (φ inside) against fla's reference on φ(q), φ(k) with
    scale 1 (fla takes (B, T, H, D), g = log α per channel), from a carried state too:
    max |ours - fla| / max |fla|."""
    T, split = 48, 16  # fla's chunked reference wants multiples of its chunk size
    g = torch.Generator().manual_seed(5)
    raw_q, raw_k = (torch.randn(B, H, T, DK, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, H, T, DV, generator=g, dtype=dtype)
    beta = torch.rand(B, H, T, generator=g, dtype=dtype)
    log_alpha = -2 * torch.rand(B, H, T, DK, generator=g, dtype=dtype)
    attn = KimiDeltaAttention(n_embd=H * DK, n_head=H, block_size=T, chunk_size=8)
    gates = torch.cat((beta[..., None], log_alpha), -1)
    ours = attn.attend(raw_q, raw_k, v, gates)
    state = DeltaRuleState()  # the same from a prefill of `split` tokens (decode's path)
    head, tail = (gates[:, :, :split], gates[:, :, split:])
    attn.decode(raw_q[:, :, :split], raw_k[:, :, :split], v[:, :, :split], state, head)
    continued = attn.decode(raw_q[:, :, split:], raw_k[:, :, split:], v[:, :, split:], state, tail)

    q, k = (F.normalize(F.silu(x), dim=-1) for x in (raw_q, raw_k))
    tb = lambda x: x.transpose(1, 2)  # noqa: E731  (B, H, T, ...) -> (B, T, H, ...)
    extra = {"chunk_size": 16} if form == "naive_chunk_kda" else {}
    with fla_naive_in("kda", dtype) as fla_kda:
        theirs, S = getattr(fla_kda, form)(
            tb(q),
            tb(k),
            tb(v),
            tb(log_alpha),
            tb(beta),
            scale=1.0,
            output_final_state=True,
            **extra,
        )
    theirs = tb(theirs)
    assert theirs.dtype == S.dtype == dtype
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for got, expected in ((ours, theirs), (continued, theirs[:, :, split:]), (state.S, S)):
        error = ((got - expected).abs().max() / expected.abs().max()).item()
        assert error < tolerance, f"max |ours - fla| / max |fla| = {error:.2e}"


def test_gates_are_in_range_and_per_channel() -> None:
    """β in (0, 1) per head and token, α = exp(log α) in (0, 1] per head, token and channel."""
    torch.manual_seed(0)
    attn = small_attention("kda")(**SHAPE)
    g = attn.gates(3 * torch.randn(2, 32, SHAPE["n_embd"]))
    D = SHAPE["n_embd"] // SHAPE["n_head"]
    assert g.shape == (2, SHAPE["n_head"], 32, 1 + D)
    beta, alpha = g[..., 0], g[..., 1:].exp()
    assert (beta > 0).all() and (beta < 1).all() and beta.std() > 0
    assert (alpha > 0).all() and (alpha <= 1).all()
    assert alpha.std(dim=-1).min() > 0  # the channels differ
    assert attn.A_log.shape == (SHAPE["n_head"],) and attn.dt_bias.shape == (SHAPE["n_embd"],)
    assert attn.gate_down.out_features == D  # gate_rank null: the head dim
    negative = small_attention("kda", allow_neg_eigval=True)(**SHAPE)
    assert (negative.gates(3 * torch.randn(2, 32, SHAPE["n_embd"]))[..., 0] > 1).any()


@pytest.mark.parametrize(
    ("key", "value"),
    [("gate_rank", 0), ("gate_rank", 2.5), ("a_init_range", [4.0, 1.0]), ("dt_init_range", [0.0])],
)
def test_bad_options_are_config_errors(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"attention\.{key}"):
        small_attention("kda", **{key: value})(**SHAPE)
