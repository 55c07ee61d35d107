"""Kimi Delta Attention: the delta rule with a decay per key channel. The chunked form
(chunked_channel_delta_rule.py), the recurrent form and the materialised matrix equal the
paper's recurrence written out here (float64), at lengths that are and are not multiples of
the chunk size, from zero and from a carried state, gradients included; they agree with fla's
naive_recurrent_kda and naive_chunk_kda (loaded by path, skipped without fla) in float64 and
float32; strong decays (the chunk size halved, α below e^-40 taken as 0) stay finite and exact;
the layer decodes what it computes."""

from __future__ import annotations

import importlib.util
import types
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import ATTENTION_SHAPE as SHAPE
from helpers import small_attention
from torch import Tensor

from attn_lightning.analysis.contract import ContractSizes, run_contract
from attn_lightning.attention.chunked_channel_delta_rule import FACTOR_BOUND
from attn_lightning.attention.delta_rule import (
    DeltaRuleState,
    _channel_chunk_size,
    chunked_delta_rule,
    delta_rule_matrix,
    recurrent_delta_rule,
)
from attn_lightning.attention.kda import KimiDeltaAttention
from attn_lightning.errors import ConfigError

B, H, DK, DV = 2, 3, 5, 4


def inputs(T: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Unit q, k (B, H, T, DK), v (B, H, T, DV), β in (0, 1) (B, H, T) and log α in (-2, 0)
    per key channel (B, H, T, DK); float64."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, H, T, DK, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B, H, T, DK, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, H, T, DV, generator=g, dtype=torch.float64)
    beta = torch.rand(B, H, T, generator=g, dtype=torch.float64)
    log_alpha = -2 * torch.rand(B, H, T, DK, generator=g, dtype=torch.float64)
    return q, k, v, beta, log_alpha


def paper_recurrence(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_alpha: Tensor, S: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """S_t = (I - β_t k_t k_t^T) diag(α_t) S_{t-1} + β_t k_t v_t^T, o_t = S_t^T q_t, S (DK x DV)
    as in Kimi Linear; returns the outputs and the final S."""
    S = q.new_zeros(B, H, DK, DV) if S is None else S
    eye = torch.eye(DK, dtype=q.dtype)
    outputs = []
    for t in range(q.size(2)):
        k_t, v_t, b_t = k[:, :, t, :, None], v[:, :, t, :, None], beta[:, :, t, None, None]
        decay = torch.diag_embed(log_alpha[:, :, t].exp())  # (B, H, DK, DK)
        S = (eye - b_t * k_t @ k_t.mT) @ decay @ S + b_t * k_t @ v_t.mT
        outputs.append(S.mT @ q[:, :, t, :, None])
    return torch.cat(outputs, dim=-1).mT, S  # (B, H, T, DV), (B, H, DK, DV)


@pytest.mark.parametrize("T", [16, 37])  # a multiple of the chunk size 8, and not
@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_chunked_and_recurrent_equal_the_paper(T: int, chunk_size: int) -> None:
    q, k, v, beta, log_alpha = inputs(T)
    expected, S = paper_recurrence(q, k, v, beta, log_alpha)
    chunk_state, step_state = DeltaRuleState(), DeltaRuleState()
    chunked = chunked_delta_rule(q, k, v, beta, log_alpha, chunk_size, chunk_state)
    torch.testing.assert_close(chunked, expected)
    torch.testing.assert_close(recurrent_delta_rule(q, k, v, beta, log_alpha, step_state), expected)
    torch.testing.assert_close(chunk_state.S, S)
    torch.testing.assert_close(step_state.S, S)
    assert chunk_state.length == step_state.length == T


@pytest.mark.parametrize("chunk_size", [4, 8])  # 37 positions: the last chunk padded
def test_chunked_gradients_equal_the_papers(chunk_size: int) -> None:
    """Gradients of q, k, v, β and the per-channel log α through the chunked form's own
    backward equal autograd's through the paper's recurrence."""
    tensors = [x.requires_grad_() for x in inputs(37)]
    weight = torch.randn(B, H, 37, DV, dtype=torch.float64)
    expected = torch.autograd.grad((paper_recurrence(*tensors)[0] * weight).sum(), tensors)
    got = torch.autograd.grad((chunked_delta_rule(*tensors, chunk_size) * weight).sum(), tensors)
    for name, g, e in zip(["q", "k", "v", "beta", "log_alpha"], got, expected, strict=True):
        torch.testing.assert_close(g, e, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("split", [8, 13])
def test_continues_from_a_carried_state(split: int) -> None:
    """Prefill `split` tokens (chunked), then continue chunked or token by token."""
    tensors = inputs(37)
    expected, _ = paper_recurrence(*tensors)
    head = [x[:, :, :split] for x in tensors]
    rest = [x[:, :, split:] for x in tensors]
    _, S_split = paper_recurrence(*head)
    for continue_chunked in (True, False):
        state = DeltaRuleState()
        first = chunked_delta_rule(*head, 8, state)
        torch.testing.assert_close(state.S, S_split)
        if continue_chunked:
            second = chunked_delta_rule(*rest, 8, state)
        else:
            second = recurrent_delta_rule(*rest, state)
        torch.testing.assert_close(torch.cat((first, second), dim=2), expected)
        assert state.length == 37


@pytest.mark.parametrize("T", [16, 21])
def test_matrix_applied_to_v_is_the_fast_path(T: int) -> None:
    q, k, v, beta, log_alpha = inputs(T)
    matrix = delta_rule_matrix(q, k, beta, log_alpha)
    assert matrix.shape == (B, H, T, T) and matrix.triu(1).abs().max() == 0
    torch.testing.assert_close(matrix @ v, chunked_delta_rule(q, k, v, beta, log_alpha, 8))


def test_equal_channels_are_gated_deltanet() -> None:
    """The same decay in every channel is Gated DeltaNet's scalar decay; channels that differ
    are not."""
    q, k, v, beta, log_alpha = inputs(21)
    scalar = log_alpha[..., 0]
    same = scalar[..., None].expand(-1, -1, -1, DK)
    expected = chunked_delta_rule(q, k, v, beta, scalar, 8)
    torch.testing.assert_close(chunked_delta_rule(q, k, v, beta, same, 8), expected)
    assert not torch.allclose(chunked_delta_rule(q, k, v, beta, log_alpha, 8), expected)


def test_a_closed_channel_forgets_only_its_own_memory() -> None:
    """α = 0 in channel 0 from position 13 on: the state's row 0 holds only what was written
    from 13 on; the other rows still remember."""
    q, k, v, beta, log_alpha = inputs(37)
    log_alpha = 0.05 * log_alpha  # long memories ...
    log_alpha[:, :, 13, 0] = -300.0  # ... but channel 0's closes: e^-300 is 0 next to 1
    state = DeltaRuleState()
    chunked_delta_rule(q, k, v, beta, log_alpha, 8, state)
    _, S = paper_recurrence(q, k, v, beta, log_alpha)
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
    q, k, v, beta, _ = (x.float() for x in inputs(37))
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
    expected, _ = paper_recurrence(*doubles)
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


class _TorchAs(types.ModuleType):
    """torch, with `torch.float` standing for another dtype: fla's naive kda computes in
    `torch.float` (float32) whatever its inputs; given this, it computes in float64."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__("torch")
        self.float = dtype

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


@pytest.fixture
def fla_kda():
    """fla's plain-PyTorch KDA (fla/ops/kda/naive.py, by path)."""
    if importlib.util.find_spec("fla") is None:
        pytest.skip("needs flash-linear-attention (the bench extra)")
    from attn_lightning.bench._kernel_references import fla_naive

    return fla_naive("kda")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("form", ["naive_recurrent_kda", "naive_chunk_kda"])
def test_agrees_with_fla(fla_kda, dtype: torch.dtype, form: str) -> None:
    """The layer's core on raw q, k (φ inside) against fla's reference on φ(q), φ(k) with
    scale 1 (fla takes (B, T, H, D), g = log α per channel), from a carried state too:
    max |ours - fla| / max |fla|."""
    fla_kda.torch = _TorchAs(dtype)
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
    theirs, S = getattr(fla_kda, form)(
        tb(q), tb(k), tb(v), tb(log_alpha), tb(beta), scale=1.0, output_final_state=True, **extra
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


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_layer_decodes_what_it_computes(n_kv_head: int) -> None:
    """Chunked training path (29 tokens, chunks of 8) == prefill of 11 + token-by-token
    decoding with an O(1) state, grouped k/v heads too."""
    torch.manual_seed(0)
    attn = KimiDeltaAttention(**SHAPE, chunk_size=8, n_kv_head=n_kv_head).eval()
    x = torch.randn(2, 29, SHAPE["n_embd"])
    parallel, _ = attn(x)
    cache = attn.new_cache()
    steps = [attn(x[:, :11], cache=cache)[0]]
    steps += [attn(x[:, t : t + 1], cache=cache)[0] for t in range(11, 29)]
    torch.testing.assert_close(torch.cat(steps, 1), parallel)
    assert cache.S.shape == (2, SHAPE["n_head"], 8, 8) and cache.length == 29


def test_allow_neg_eigval_keeps_the_contract() -> None:
    sizes = ContractSizes(n_embd=SHAPE["n_embd"], n_head=SHAPE["n_head"], length=48)
    results = run_contract(small_attention("kda", allow_neg_eigval=True), sizes)
    assert [r.failure for r in results if not r.passed] == []


@pytest.mark.parametrize(
    ("key", "value"),
    [("gate_rank", 0), ("gate_rank", 2.5), ("a_init_range", [4.0, 1.0]), ("dt_init_range", [0.0])],
)
def test_bad_options_are_config_errors(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"attention\.{key}"):
        small_attention("kda", **{key: value})(**SHAPE)
