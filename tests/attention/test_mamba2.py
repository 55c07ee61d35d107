"""Mamba-2's SSD layer: its core equals the recurrence S_t = α_t S_{t-1} + dt_t B_t^T x_t,
y_t = C_t S_t + D x_t written out here (float64), and fla's scalar-decay GLA reference (loaded
by path; skipped without fla) given q = C, k = dt B, v = x, g = log α, in float64 and float32;
the layer takes dt and α from x with Mamba2's parametrisation and init; prefill + decoding,
over several chunks, equal the forward pass; the matrix shown includes the skip."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from attn_lightning.attention.mamba2 import Mamba2
from attn_lightning.errors import ConfigError

B, H, D = 2, 4, 8
SHAPE = {"n_embd": H * D, "n_head": H, "block_size": 64}


def inputs(T: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """C, B, x (B, H, T, D), dt > 0 and A < 0 per head (as Mamba2's init draws them), float64."""
    g = torch.Generator().manual_seed(seed)
    C, B_, x = (torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3))
    dt = torch.exp(torch.empty(B, H, T, dtype=torch.float64).uniform_(-7, -1, generator=g))
    A = -torch.empty(H, dtype=torch.float64).uniform_(1, 16, generator=g)
    return C, B_, x, dt, A


def paper_recurrence(
    C: Tensor, B_: Tensor, x: Tensor, dt: Tensor, A: Tensor, D_skip: Tensor
) -> Tensor:
    """S_t = exp(A dt_t) S_{t-1} + dt_t B_t^T x_t, y_t = C_t S_t + D x_t, per head and token."""
    S = C.new_zeros(B, H, D, D)
    outputs = []
    for t in range(C.size(2)):
        alpha = (A[:, None, None] * dt[:, :, t, None, None]).exp()  # (B, H, 1, 1)
        write = dt[:, :, t, None, None] * B_[:, :, t, :, None] * x[:, :, t, None, :]
        S = alpha * S + write  # (B, H, N, P)
        y = (C[:, :, t, None, :] @ S).squeeze(-2) + D_skip[:, None] * x[:, :, t]
        outputs.append(y)
    return torch.stack(outputs, dim=2)


def layer(**options) -> Mamba2:
    torch.manual_seed(0)
    attn = Mamba2(**{**SHAPE, "chunk_size": 8, **options}).double().eval()
    with torch.no_grad():
        attn.D.uniform_(0.5, 1.5)  # a skip that differs by head
    return attn


def gates_of(dt: Tensor, A: Tensor) -> Tensor:
    """[log α, dt] (B, H, T, 2), the layer's gates for given dt and A."""
    return torch.stack((A[:, None] * dt, dt), dim=-1)


@pytest.mark.parametrize("T", [16, 37])  # a multiple of the chunk size 8, and not
@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_core_equals_the_paper(T: int, chunk_size: int) -> None:
    attn = layer(chunk_size=chunk_size)
    C, B_, x, dt, A = inputs(T)
    expected = paper_recurrence(C, B_, x, dt, A, attn.D.detach())
    torch.testing.assert_close(attn.attend(C, B_, x, gates_of(dt, A)), expected)
    matrix = attn.attention_matrix(C, B_, gates_of(dt, A))
    torch.testing.assert_close(matrix @ x, expected)
    diagonal = (C * B_).sum(-1) * dt + attn.D.detach()[:, None]  # C_i · B_i dt_i + D
    torch.testing.assert_close(matrix.diagonal(dim1=-2, dim2=-1), diagonal)


def test_core_decays_strongly_as_mamba2_may() -> None:
    """Decays past e^-40 within a chunk (A dt up to -16 per token): decay_kernel's exact
    fallback, still the recurrence, and finite gradients."""
    attn = layer(chunk_size=16)
    C, B_, x, dt, A = inputs(37)
    dt = dt * 1000  # dt up to 368: α_t = e^{A dt} as small as e^-5900
    expected = paper_recurrence(C, B_, x, dt, A, attn.D.detach())
    leaves = [t.clone().requires_grad_() for t in (C, B_, x, dt)]
    out = attn.attend(*leaves[:3], gates_of(leaves[3], A))
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


@pytest.fixture(scope="module")
def simple_gla():
    """fla's plain-PyTorch scalar-decay GLA (fla/ops/simple_gla/naive.py, by path)."""
    if importlib.util.find_spec("fla") is None:
        pytest.skip("needs flash-linear-attention (the bench extra)")
    from attn_lightning.bench._kernel_references import fla_naive

    return fla_naive("simple_gla")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_core_agrees_with_fla_simple_gla(simple_gla, dtype: torch.dtype) -> None:
    """SSD is scalar-decay GLA on q = C, k = dt B, v = x, g = A dt, q unscaled, plus D x.
    fla's naive functions compute in float32 whatever the input dtype."""
    attn = layer(chunk_size=16).to(dtype)
    C, B_, x, dt, A = (t.to(dtype) for t in inputs(100))
    ours = attn.attend(C, B_, x, gates_of(dt, A))
    fla_layout = [t.transpose(1, 2) for t in (C, dt[..., None] * B_, x, A[:, None] * dt)]
    skip = attn.D.detach()[:, None, None] * x
    recurrent, _ = simple_gla.naive_recurrent_simple_gla(*fla_layout, scale=1.0)
    chunk, _ = simple_gla.naive_chunk_simple_gla(*fla_layout, chunk_size=16, scale=1.0)
    for reference in (recurrent, chunk):
        theirs = reference.transpose(1, 2).to(dtype) + skip
        error = (ours - theirs).abs().max() / theirs.abs().max()
        assert error < 1e-5, f"max |ours - fla| / max |fla| = {error:.2e}"


def test_gates_follow_mamba2s_parametrisation() -> None:
    """dt = softplus(x W_dt + dt_bias), log α = -exp(A_log) dt; at init exp(A_log) in
    [1, 16] and softplus(dt_bias) in [1e-3, 1e-1]; D = 1."""
    torch.manual_seed(0)
    attn = Mamba2(n_embd=64, n_head=64, block_size=32)  # 64 heads: 64 draws of each init
    rates, steps = attn.A_log.exp(), F.softplus(attn.dt_bias)
    assert (rates >= 1).all() and (rates <= 16).all() and rates.std() > 1
    assert (steps >= 1e-3 * (1 - 1e-6)).all() and (steps <= 0.1 * (1 + 1e-6)).all()
    assert steps.log().std() > 0.5  # log-uniform: spread over the orders of magnitude
    torch.testing.assert_close(attn.D.detach(), torch.ones(64))
    x = torch.randn(2, 32, 64)
    g = attn.gates(x)
    assert g.shape == (2, 64, 32, 2)
    dt = F.softplus(x @ attn.dt_proj.weight.T + attn.dt_bias).transpose(1, 2)
    torch.testing.assert_close(g[..., 1], dt)
    torch.testing.assert_close(g[..., 0], -attn.A_log.exp()[:, None] * dt)
    assert (g[..., 0] < 0).all() and g[..., 0].std() > 0


def mamba2_by_hand(attn: Mamba2, x: Tensor) -> Tensor:
    """Mamba2's layer written out from the module's weights: C, B, x from the (short-convolved)
    projections, dt from the input, the paper's recurrence, then the gated per-head RMSNorm
    RMSNorm(y ⊙ silu(x W_z)) (no gate without `output_gate`), then W_o."""
    C, B_, values = attn.split_heads(x)
    dt = F.softplus(x @ attn.dt_proj.weight.T + attn.dt_bias).transpose(1, 2)  # (B, H, T)
    y = paper_recurrence(C, B_, values, dt, -attn.A_log.exp(), attn.D).transpose(1, 2)
    if attn.g_proj is not None:  # z = x W_z, per head
        y = y * F.silu(x @ attn.g_proj.weight.T).unflatten(-1, (H, D))
    rms = (y.square().mean(-1, keepdim=True) + attn.proj.eps).sqrt()
    return (y / rms * attn.proj.norm_weight).flatten(-2) @ attn.proj.weight.T


@pytest.mark.parametrize("output_gate", [False, True])
def test_layer_is_mamba2_on_its_projections(output_gate: bool) -> None:
    """forward(x) is Mamba2's layer written out, its z gate (the base's `output_gate`) before
    the norm, as Mamba2 orders it; the return_attn path gives the same output."""
    attn = layer(short_conv=4, output_gate=output_gate)
    with torch.no_grad():
        attn.proj.norm_weight.uniform_(0.5, 1.5)  # a gain in the wrong place shows
    x = torch.randn(B, 29, H * D, dtype=torch.float64)
    expected = mamba2_by_hand(attn, x)
    torch.testing.assert_close(attn(x)[0], expected)
    torch.testing.assert_close(attn(x, return_attn=True)[0], expected)


@pytest.mark.parametrize("prefill", [11, 19])  # within the second chunk of 8; in the third
def test_layer_decodes_what_it_computes(prefill: int) -> None:
    """Prefill (chunked, over several chunks) then token by token, grouped B/x heads and the
    short convolution on: the forward pass, from an O(1) state."""
    attn = layer(n_kv_head=2, short_conv=4)
    x = torch.randn(B, 37, H * D, dtype=torch.float64)
    full, _ = attn(x)
    cache = attn.new_cache()
    steps = [attn(x[:, :prefill], cache=cache)[0]]
    steps += [attn(x[:, t : t + 1], cache=cache)[0] for t in range(prefill, 37)]
    torch.testing.assert_close(torch.cat(steps, 1), full)
    assert cache.core.S.shape == (B, H, D, D) and cache.length == 37


def test_return_attn_shows_the_whole_mixer() -> None:
    attn = layer()
    x = torch.randn(B, 21, H * D, dtype=torch.float64)
    fast, _ = attn(x)
    shown, matrix = attn(x, return_attn=True)
    torch.testing.assert_close(shown, fast)
    assert matrix.shape == (B, H, 21, 21) and matrix.triu(1).abs().max() == 0


def test_the_core_refuses_to_run_without_its_gates() -> None:
    attn = layer()
    C, B_, x, _, _ = inputs(8)
    with pytest.raises(ValueError, match="needs its gates"):
        attn.attend(C, B_, x)


@pytest.mark.parametrize(
    ("option", "value"),
    [("a_init_range", [0.0, 16.0]), ("dt_init_range", [0.1, 0.001]), ("chunk_size", 0)],
)
def test_bad_options_are_refused_by_name(option: str, value) -> None:
    with pytest.raises(ConfigError, match=f"attention.{option}"):
        Mamba2(**SHAPE, **{option: value})


@pytest.mark.parametrize(("A_log", "dt_bias"), [(-20.0, -20.0), (math.log(16), 20.0)])
def test_layer_with_extreme_decay_is_finite(A_log: float, dt_bias: float) -> None:
    """α ~ 1 (no forgetting) and α ~ e^-320 (the state wiped every token), float32."""
    torch.manual_seed(0)
    attn = Mamba2(**SHAPE, chunk_size=8, short_conv=4)
    with torch.no_grad():
        attn.A_log.fill_(A_log)
        attn.dt_bias.fill_(dt_bias)
    x = torch.randn(2, 29, H * D, requires_grad=True)
    y, _ = attn(x)
    y.square().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters() if p.grad is not None)
