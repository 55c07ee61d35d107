"""Forgetting attention: the fast path and the matrix equal the paper's equation written out
here (float64), softmax_j(q_i k_j / sqrt(d) + Σ_{l=j+1}^{i} log f_l) v_j, and fla's reference
(loaded by path; skipped without fla) in float64 and float32, grouped k/v heads included; the
queries in blocks give the equation's outputs and gradients, with no (T, T) tensor; the
gate comes from x; prefill + decoding, in pieces, equal the forward pass; f = 1 is softmax
attention and f -> 0 forgets; a long, strongly forgetting sequence stays accurate in float32
and bfloat16."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same_function
from torch import Tensor

from attn_lightning.attention.fox import ForgettingAttention
from attn_lightning.attention.vanilla import VanillaAttention
from attn_lightning.bench.attention.memory_ledger import StorageLedger
from attn_lightning.errors import ConfigError

B, H, D = 2, 4, 8
SHAPE = {"n_embd": H * D, "n_head": H, "block_size": 64}


def inputs(T: int, h_kv: int = H, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q (B, H, T, D), k, v (B, h_kv, T, D), log f (B, H, T, 1) with f in (0.5, 1), float64."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, h_kv, T, D, generator=g, dtype=torch.float64) for _ in range(2))
    f = 0.5 + 0.5 * torch.rand(B, H, T, 1, generator=g, dtype=torch.float64)
    return q, k, v, f.log()


def paper_attention(q: Tensor, k: Tensor, v: Tensor, log_f: Tensor) -> Tensor:
    """o_i = Σ_{j<=i} softmax_j(q_i k_j / sqrt(d) + Σ_{l=j+1}^{i} log f_l) v_j, one query at a
    time, the span sums written out; k, v of one head per query head."""
    out = torch.zeros_like(q)
    for i in range(q.size(2)):
        spans = torch.stack([log_f[:, :, j + 1 : i + 1, 0].sum(-1) for j in range(i + 1)], -1)
        logits = (q[:, :, i, None, :] * k[:, :, : i + 1]).sum(-1) / math.sqrt(D) + spans
        out[:, :, i] = (logits.softmax(-1)[..., None] * v[:, :, : i + 1]).sum(2)
    return out


def layer(**options) -> ForgettingAttention:
    torch.manual_seed(0)
    return ForgettingAttention(**{**SHAPE, **options}).double().eval()


@pytest.mark.parametrize("T", [1, 16, 37])
def test_core_equals_the_paper(T: int) -> None:
    attn = layer()
    q, k, v, log_f = inputs(T)
    expected = paper_attention(q, k, v, log_f)
    torch.testing.assert_close(attn.attend(q, k, v, log_f), expected)
    torch.testing.assert_close(attn.attention_matrix(q, k, log_f) @ v, expected)


@pytest.fixture(scope="module")
def forgetting_attn():
    """fla's plain-PyTorch forgetting attention (fla/ops/forgetting_attn/naive.py, by path)."""
    if importlib.util.find_spec("fla") is None:
        pytest.skip("needs flash-linear-attention (the bench extra)")
    from attn_lightning.bench._kernel_references import fla_naive

    return fla_naive("forgetting_attn")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("h_kv", [H, 2])
def test_core_agrees_with_fla(forgetting_attn, dtype: torch.dtype, h_kv: int) -> None:
    """fla takes (B, T, heads, D) and k/v heads grouped as ours (query head h reads k/v head
    h // (H / h_kv)); it computes in float32 whatever the input dtype."""
    attn = layer(n_kv_head=h_kv).to(dtype)
    q, k, v, log_f = (t.to(dtype) for t in inputs(100, h_kv))
    ours = attn.attend(*attn.core_inputs(q, k, v), log_f)
    theirs = forgetting_attn.naive_forgetting_attn(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), log_f[..., 0].transpose(1, 2)
    )
    theirs = theirs.transpose(1, 2).to(dtype)
    error = (ours - theirs).abs().max() / theirs.abs().max()
    assert error < 1e-5, f"max |ours - fla| / max |fla| = {error:.2e}"


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, log_f: Tensor) -> Tensor:
    """The equation with every (i, j) bias c_i - c_j in one matrix, c = Σ log f, differentiable."""
    c = log_f.cumsum(2)
    T = q.size(2)
    scores = q @ k.mT / math.sqrt(q.size(-1)) + (c - c.mT)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, -math.inf).softmax(-1) @ v


@pytest.mark.parametrize("block", [1, 8, 16, 64])  # 37 = 4 x 8 + 5: a ragged last block
def test_queries_in_blocks_give_the_equations_outputs_and_gradients(block: int) -> None:
    attn = layer(query_block=block)
    q, k, v, log_f = inputs(37)
    torch.testing.assert_close(attn.attend(q, k, v, log_f), paper_attention(q, k, v, log_f))
    assert_same_function(attn.attend, explicit_attention, q, k, v, log_f)


def test_training_allocates_no_t_by_t_tensor() -> None:
    """Forward and backward at T = 512 in float32 peak below a quarter of one (B, H, T, T)
    bias, the tensor the additive-mask form would build (the explicit softmax two more)."""
    T = 512
    attn = layer(query_block=64).float()
    q, k, v, log_f = (t.float().requires_grad_() for t in inputs(T))
    with StorageLedger() as ledger:
        attn.attend(q, k, v, log_f).sum().backward()
    assert ledger.peak < B * H * T * T * 4 / 4, f"peak {ledger.peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("block", [0, -1, 2.5, True])
def test_a_query_block_below_one_is_refused(block) -> None:
    with pytest.raises(ConfigError, match=r"attention\.query_block"):
        layer(query_block=block)


def test_the_gate_is_a_sigmoid_of_x_per_head() -> None:
    attn = layer()
    x = torch.randn(B, 21, H * D, dtype=torch.float64)
    g = attn.gates(x)
    assert g.shape == (B, H, 21, 1) and (g < 0).all() and g.std() > 0
    expected = F.logsigmoid(x @ attn.forget_gate.weight.T + attn.forget_gate.bias)
    torch.testing.assert_close(g[..., 0], expected.transpose(1, 2))


def test_no_forgetting_is_softmax_attention() -> None:
    """f = 1 (b_f large, w_f = 0): the layer is vanilla attention with the same weights."""
    attn = layer()
    with torch.no_grad():
        attn.forget_gate.weight.zero_()
        attn.forget_gate.bias.fill_(100.0)  # log f = -e^-100
    vanilla = VanillaAttention(**SHAPE).double().eval()
    vanilla.load_state_dict(attn.state_dict(), strict=False)
    x = torch.randn(B, 29, H * D, dtype=torch.float64)
    torch.testing.assert_close(attn(x)[0], vanilla(x)[0])


def test_a_closed_gate_forgets_the_past() -> None:
    """f_t -> 0: from t on, a query weighs keys before t by e^-1000, nothing."""
    attn = layer()
    q, k, v, log_f = inputs(37)
    log_f[:, :, 13] = -1000.0
    whole = attn.attend(q, k, v, log_f)
    alone = attn.attend(*(t[:, :, 13:] for t in (q, k, v, log_f)))
    torch.testing.assert_close(whole[:, :, 13:], alone)
    assert not torch.allclose(whole[:, :, 12], alone[:, :, 0])


@pytest.mark.parametrize("pieces", [[11], [5, 9, 1]])  # one prefill; prefills in pieces
def test_layer_decodes_what_it_computes(pieces: list[int]) -> None:
    """Prefills then token by token, grouped k/v heads, RoPE and the short convolution on: the
    forward pass (the cached c_j carry the gates' sum across calls)."""
    attn = layer(n_kv_head=2, rope=True, short_conv=4)
    x = torch.randn(B, 37, H * D, dtype=torch.float64)
    full, _ = attn(x)
    cache, start, outputs = attn.new_cache(), 0, []
    for size in [*pieces, *[1] * (37 - sum(pieces))]:
        outputs.append(attn(x[:, start : start + size], cache=cache)[0])
        start += size
    torch.testing.assert_close(torch.cat(outputs, 1), full)
    assert cache.core.k.shape == (B, 2, 37, D) and cache.core.c.shape == (B, H, 37, 1)


def test_the_core_refuses_to_run_without_its_gates() -> None:
    q, k, v, _ = inputs(8)
    with pytest.raises(ValueError, match="needs its gates"):
        layer().attend(q, k, v)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_long_strong_forgetting_stays_accurate(dtype: torch.dtype, tolerance: float) -> None:
    """1024 tokens, f mostly 0.1 (c down to -1600): the bias is formed from c in float32 and
    only then cast, so its near-diagonal entries keep their precision (a bfloat16 sum of the
    gates would be off by whole units); outputs and gradients finite."""
    attn = layer().to(dtype)
    q, k, v, _ = inputs(1024)
    log_f = torch.full((B, H, 1024, 1), math.log(0.1), dtype=torch.float64)
    log_f[:, :, ::3] = math.log(0.9)  # not constant: the differences of c matter
    expected = (q * D**-0.5 @ k.mT + (log_f.cumsum(2) - log_f.cumsum(2).mT)).tril()
    expected = expected.masked_fill(torch.ones(1024, 1024).triu(1).bool(), -math.inf)
    expected = expected.softmax(-1) @ v
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = attn.attend(*leaves, log_f.float())
    out.float().square().sum().backward()
    error = (out.double() - expected).abs().max() / expected.abs().max()
    assert error < tolerance, f"{dtype}: max relative error {error:.2e}"
    assert all(torch.isfinite(t.grad).all() for t in leaves)
