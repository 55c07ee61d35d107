"""RWKV-7's time mixing: the DPLR core (dplr_kernel.py) in its chunked, recurrent and
materialised forms equals the paper's state update written out here (float64, S in the paper's
D_v x D_k layout), at lengths that are and are not multiples of the chunk size, from zero and
from a carried state, gradients included; it agrees with fla's dplr_recurrence and
dplr_chunkwise (loaded by path, skipped without fla) in float64 and float32; the layer's w, a,
κ̂ and k̃ are the paper's functions of x and k; the layer decodes what it computes."""

from __future__ import annotations

import importlib.util
import math
import types

import pytest
import torch
import torch.nn.functional as F
from helpers import ATTENTION_SHAPE as SHAPE
from helpers import small_attention
from torch import Tensor

import attn_lightning.attention.dplr_kernel as dplr_kernel
from attn_lightning.attention.dplr_kernel import (
    DPLRState,
    chunked_dplr,
    dplr_matrix,
    recurrent_dplr,
)
from attn_lightning.attention.dplr_terms import ChunkConstants
from attn_lightning.attention.rwkv7 import RWKV7Attention
from attn_lightning.errors import ConfigError

B, H, DK, DV = 2, 3, 5, 4


def inputs(T: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """RWKV-7's per-token quantities (B, H, T, ·): receptance r, key k, value v, decay w in
    (exp(-e^-0.5), 1), in-context learning rate a in (0, 1), unit removal key κ̂ and the
    replacement key k̃ = k ⊙ (1 + (a - 1) α)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype)

    k = randn(B, H, T, DK)
    a = torch.rand(B, H, T, DK, generator=g, dtype=dtype)
    alpha = torch.rand(DK, generator=g, dtype=dtype)
    return {
        "r": randn(B, H, T, DK),
        "v": randn(B, H, T, DV),
        "w": torch.exp(-math.exp(-0.5) * torch.rand(B, H, T, DK, generator=g, dtype=dtype)),
        "a": a,
        "kappa": F.normalize(k * torch.rand(DK, generator=g, dtype=dtype), dim=-1),
        "k_tilde": k * (1 + (a - 1) * alpha),
    }


def row(y: Tensor, t: int) -> Tensor:
    """Position t of y (B, H, T, D) as a row vector (B, H, 1, D)."""
    return y[:, :, t, None, :]


def paper_recurrence(x: dict[str, Tensor], S: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """S_t = S_{t-1} (Diag(w_t) - κ̂_t^T (a_t ⊙ κ̂_t)) + v_t^T k̃_t, o_t = S_t r_t^T (rows:
    k, v, r as row vectors; S is D_v x D_k), one token at a time. -> o (B, H, T, DV), S."""
    r, v, w, a, kappa, k_tilde = (x[n] for n in ("r", "v", "w", "a", "kappa", "k_tilde"))
    S = r.new_zeros(*r.shape[:2], v.size(-1), r.size(-1)) if S is None else S
    outputs = []
    for t in range(r.size(2)):
        transition = torch.diag_embed(w[:, :, t]) - row(kappa, t).mT @ (row(a, t) * row(kappa, t))
        S = S @ transition + row(v, t).mT @ row(k_tilde, t)
        outputs.append(S @ row(r, t).mT)  # (B, H, DV, 1)
    return torch.cat(outputs, dim=-1).mT, S


def core(x: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The DPLR core's arguments (q, k, v, a, b, log w): a = -κ̂, b = κ̂ ⊙ a."""
    return x["r"], x["k_tilde"], x["v"], -x["kappa"], x["kappa"] * x["a"], x["w"].log()


def split(x: dict[str, Tensor], at: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    return {n: t[:, :, :at] for n, t in x.items()}, {n: t[:, :, at:] for n, t in x.items()}


@pytest.mark.parametrize("T", [16, 37])  # a multiple of the chunk size 8, and not
@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_chunked_and_recurrent_equal_the_paper(T: int, chunk_size: int) -> None:
    x = inputs(T)
    expected, S = paper_recurrence(x)
    chunk_state, step_state = DPLRState(), DPLRState()
    torch.testing.assert_close(chunked_dplr(*core(x), chunk_size, chunk_state), expected)
    torch.testing.assert_close(recurrent_dplr(*core(x), step_state), expected)
    torch.testing.assert_close(chunk_state.S, S.mT)  # our state is the paper's S transposed
    torch.testing.assert_close(step_state.S, S.mT)
    assert chunk_state.length == step_state.length == T


def general_recurrence(
    q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, log_w: Tensor
) -> Tensor:
    """The DPLR update in the paper's layout, S_t = S_{t-1} (Diag(w_t) + a_t^T b_t) + v_t^T k_t,
    o_t = S_t q_t^T (RWKV-7's is a = -κ̂, b = κ̂ ⊙ a_t, k = k̃, q = r)."""
    S = q.new_zeros(*q.shape[:2], v.size(-1), q.size(-1))
    outputs = []
    for t in range(q.size(2)):
        transition = torch.diag_embed(log_w[:, :, t].exp()) + row(a, t).mT @ row(b, t)
        S = S @ transition + row(v, t).mT @ row(k, t)
        outputs.append(S @ row(q, t).mT)
    return torch.cat(outputs, dim=-1).mT


@pytest.mark.parametrize("slab_chunks", [1, 12, dplr_kernel.SLAB_CHUNKS])
def test_chunked_gradients_equal_the_papers(
    slab_chunks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gradients to q, k, v, a, b and log w through the chunked form's own backward equal
    autograd's through the recurrence: one slab of chunks, and several (the reverse scan
    carried from slab to slab)."""
    monkeypatch.setattr(dplr_kernel, "SLAB_CHUNKS", slab_chunks)
    leaves = [t.clone().requires_grad_() for t in core(inputs(37))]
    weight = torch.randn(B, H, 37, DV, dtype=torch.float64)
    expected = torch.autograd.grad((general_recurrence(*leaves) * weight).sum(), leaves)
    got = torch.autograd.grad((chunked_dplr(*leaves, 8) * weight).sum(), leaves)
    for name, g, e in zip(["q", "k", "v", "a", "b", "log_w"], got, expected, strict=True):
        torch.testing.assert_close(g, e, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("slab_chunks", [1, 12, dplr_kernel.SLAB_CHUNKS])
def test_rwkv7_inputs_formed_inside_the_core(
    slab_chunks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chunked_rwkv7 forms log w, κ̂, k̃, a and b from r, k, v, the gate logits, ξ and α in
    its slabs, with its own backward: outputs and gradients equal autograd's through the
    paper's formulas and recurrence (a key of zeros included: κ̂ = 0, at F.normalize's eps),
    at a length that pads the last chunk: in one slab, one chunk per slab, and slabs of two
    steps with a shorter last one."""
    monkeypatch.setattr(dplr_kernel, "SLAB_CHUNKS", slab_chunks)
    g = torch.Generator().manual_seed(3)
    T = 37
    r, k, v = (torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for D in (DK, DK, DV))
    k[0, 1, 5] = 0.0
    z = 2 * torch.randn(B, H, T, 2 * DK, generator=g, dtype=torch.float64)
    xi, alpha = (torch.rand(H, DK, generator=g, dtype=torch.float64) for _ in range(2))
    leaves = [t.requires_grad_() for t in (r, k, v, z, xi, alpha)]
    scale = math.exp(-0.5)

    def by_the_paper(r, k, v, z, xi, alpha) -> Tensor:
        log_w = -scale * torch.sigmoid(z[..., :DK])
        rate = torch.sigmoid(z[..., DK:])
        kappa = F.normalize(k * xi[:, None], dim=-1, eps=1e-12)
        key = k * (1 + (rate - 1) * alpha[:, None])
        return general_recurrence(r, key, v, -kappa, kappa * rate, log_w)

    weight = torch.randn(B, H, T, DV, generator=g, dtype=torch.float64)
    expected = by_the_paper(*leaves)
    got = dplr_kernel.chunked_rwkv7(*leaves, 8, 1e-12, scale)
    torch.testing.assert_close(got, expected)
    want = torch.autograd.grad((expected * weight).sum(), leaves)
    have = torch.autograd.grad((got * weight).sum(), leaves)
    for name, h, w in zip(["r", "k", "v", "z", "xi", "alpha"], have, want, strict=True):
        torch.testing.assert_close(h, w, msg=lambda m, name=name: f"{name}: {m}")


def test_cumulative_log_decays_as_products() -> None:
    """The chunked core's cumulative sums, written as sums here: c_i = scale Σ_{s<=i} x_s, and
    back, d x_m = scale (Σ_{j>=m} dc_j + Σ_{j>m} de_j) (e_i = c_{i-1})."""
    C, scale = 5, -0.7
    shared = ChunkConstants(C, scale, torch.zeros((), dtype=torch.float64))
    x, dc, de = (torch.randn(3, C, 4, dtype=torch.float64) for _ in range(3))
    c = torch.stack([scale * sum(x[:, s] for s in range(i + 1)) for i in range(C)], 1)
    back = [
        scale * (sum(dc[:, j] for j in range(m, C)) + sum(de[:, j] for j in range(m + 1, C)))
        for m in range(C)
    ]
    torch.testing.assert_close(shared.cumsum @ x, c)
    torch.testing.assert_close(shared.reverse @ torch.cat((dc, de), 1), torch.stack(back, 1))


def test_the_backward_keeps_memory_linear_in_the_length() -> None:
    """What the chunked core keeps for its backward (its inputs, the states entering the
    chunks, each chunk's T̂ and readings U) grows linearly with T: equal steps in T add equal
    sizes, less than twice the inputs': nothing of size T^2, nor the T prefix states."""
    kept = []
    for T in (64, 128, 192):
        leaves = [t.requires_grad_() for t in core(inputs(T))]
        node = chunked_dplr(*leaves, 8).grad_fn
        while not hasattr(node, "saved_tensors"):
            node = node.next_functions[0][0]
        kept.append(sum(t.numel() for t in node.saved_tensors))
    assert kept[2] - kept[1] == kept[1] - kept[0] > 0
    inputs_per_step = sum(t.numel() for t in core(inputs(64)))
    assert kept[1] - kept[0] < 2 * inputs_per_step  # less than the inputs again, per step


@pytest.mark.parametrize("at", [8, 13])  # prefill ending on a chunk boundary, and not
def test_continues_from_a_carried_state(at: int) -> None:
    """Prefill `at` tokens (chunked), then continue chunked or token by token."""
    x = inputs(37)
    expected, _ = paper_recurrence(x)
    head, rest = split(x, at)
    _, S_head = paper_recurrence(head)
    for continue_chunked in (True, False):
        state = DPLRState()
        first = chunked_dplr(*core(head), 8, state)
        torch.testing.assert_close(state.S, S_head.mT)
        if continue_chunked:
            second = chunked_dplr(*core(rest), 8, state)
        else:
            second = recurrent_dplr(*core(rest), state)
        torch.testing.assert_close(torch.cat((first, second), dim=2), expected)
        assert state.length == 37


@pytest.mark.parametrize("T", [16, 21])
def test_matrix_applied_to_v_is_the_fast_path(T: int) -> None:
    x = inputs(T)
    q, k, v, a, b, log_w = core(x)
    matrix = dplr_matrix(q, k, a, b, log_w, 8)
    assert matrix.shape == (B, H, T, T) and matrix.triu(1).abs().max() == 0
    torch.testing.assert_close(matrix @ v, chunked_dplr(q, k, v, a, b, log_w, 8))


def test_a_decay_beyond_the_bound_says_so() -> None:
    q, k, v, a, b, log_w = core(inputs(16))
    with pytest.raises(ValueError, match="shorter chunks"):
        chunked_dplr(q, k, v, a, b, log_w - 5.0, 16)  # Σ log w over 16 positions < -40


@pytest.fixture(scope="module")
def fla_dplr() -> types.ModuleType:
    """fla's generalized_delta_rule/dplr/naive.py, loaded by path."""
    if importlib.util.find_spec("fla") is None:
        pytest.skip("needs flash-linear-attention (the bench extra)")
    from attn_lightning.bench._kernel_references import fla_naive

    return fla_naive("generalized_delta_rule/dplr")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_core_agrees_with_fla_dplr(fla_dplr: types.ModuleType, dtype: torch.dtype) -> None:
    """fla's S_t = Diag(exp(gk_t)) S_{t-1} + β_t α_t^T S_{t-1} + k_t v_t^T (S: D_k x D_v),
    o_t = S_t^T q_t / sqrt(D_k): our core with alpha = a, beta = b, gk = log w and q scaled
    by sqrt(D_k) for theirs. fla computes in float32 whatever the input dtype, so in float64
    the two agree to float32's rounding."""
    x = inputs(32, dtype=dtype)
    q, k, v, a, b, log_w = core(x)
    ours = chunked_dplr(q, k, v, a, b, log_w, 8)
    theirs_in = [t.float() for t in (q * DK**0.5, k, v, a, b, log_w)]
    recurrent, S = fla_dplr.dplr_recurrence(*theirs_in)
    chunkwise, _ = fla_dplr.dplr_chunkwise(*theirs_in, chunk_size=8)
    for theirs in (recurrent, chunkwise):
        error = (ours - theirs.to(dtype)).abs().max() / theirs.abs().max()
        assert error < 1e-5, f"max |ours - fla| / max |fla| = {error:.2e}"
    state = DPLRState()
    chunked_dplr(q, k, v, a, b, log_w, 8, state)
    torch.testing.assert_close(state.S.float(), S, atol=1e-5, rtol=1e-5)


def layer(**overrides: object) -> RWKV7Attention:
    return small_attention("rwkv7", **overrides)(**SHAPE).double().eval()


def test_layer_inputs_are_the_papers() -> None:
    """w_t = exp(-e^-0.5 σ(w_0 + tanh(x W_1) W_2)), a_t = σ(a_0 + x A_1 A_2), κ̂ = the unit
    k ⊙ ξ per head, k̃ = k ⊙ (1 + (a - 1) α), each k/v head's serving its query heads; the
    layer's output is the paper's recurrence on them."""
    attn = RWKV7Attention(**SHAPE, n_kv_head=2, chunk_size=8).double().eval()  # not in the YAML
    torch.manual_seed(1)
    with torch.no_grad():
        for p in (attn.decay_bias, attn.icl_bias, attn.removal_key, attn.replacement):
            p.uniform_(-1.0, 1.0)
    x = torch.randn(2, 11, SHAPE["n_embd"], dtype=torch.float64)
    D, H_kv = attn.head_dim, attn.n_kv_head

    def heads(t: Tensor) -> Tensor:  # (B, T, H_kv D) -> (B, H, T, D), k/v heads repeated
        return t.view(2, 11, H_kv, D).transpose(1, 2).repeat_interleave(2, dim=1)

    w1, w2 = attn.decay_down.weight, attn.decay_up.weight
    w = torch.exp(-math.exp(-0.5) * torch.sigmoid(attn.decay_bias + torch.tanh(x @ w1.T) @ w2.T))
    a = torch.sigmoid(attn.icl_bias + x @ attn.icl_down.weight.T @ attn.icl_up.weight.T)
    q, k, v = attn.core_inputs(*attn.split_heads(x))
    xi, alpha = (heads(p.expand(2, 11, -1)) for p in (attn.removal_key, attn.replacement))
    w, a = heads(w), heads(a)
    kappa = k * xi / (k * xi).norm(dim=-1, keepdim=True)
    expected, _ = paper_recurrence(
        {"r": q, "v": v, "w": w, "a": a, "kappa": kappa, "k_tilde": k * (1 + (a - 1) * alpha)}
    )
    g = attn.gates(x)
    log_w, rate = attn.decay_and_rate(g, q)
    torch.testing.assert_close(log_w, w.log())
    torch.testing.assert_close(rate, a)
    torch.testing.assert_close(attn.attend(q, k, v, g), expected)
    assert (w > math.exp(-math.exp(-0.5))).all() and (w < 1).all()


@pytest.mark.parametrize("short_conv", [0, 2])
def test_decoding_equals_the_full_pass(short_conv: int) -> None:
    """Prefill 21 tokens (chunks of 8: not a multiple), then 5 at once (chunked, from the
    carried state), then one at a time: the outputs of a full forward pass."""
    attn = layer(short_conv=short_conv)
    x = torch.randn(2, 30, SHAPE["n_embd"], dtype=torch.float64)
    with torch.no_grad():
        full, _ = attn(x)
        cache = attn.new_cache()
        parts = [attn(x[:, :21], cache=cache)[0], attn(x[:, 21:26], cache=cache)[0]]
        parts += [attn(x[:, t : t + 1], cache=cache)[0] for t in range(26, 30)]
    torch.testing.assert_close(torch.cat(parts, 1), full)
    assert cache.length == 30


def test_the_matrix_is_the_layers() -> None:
    attn = layer()
    x = torch.randn(2, 19, SHAPE["n_embd"], dtype=torch.float64)
    with torch.no_grad():
        y, matrix = attn(x, return_attn=True)
        torch.testing.assert_close(y, attn(x)[0])
    assert matrix.shape == (2, SHAPE["n_head"], 19, 19) and matrix.triu(1).abs().max() == 0


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": 66}, "chunk_size"),
        ({"decay_rank": 0}, "decay_rank"),
        ({"icl_rank": 0}, "icl_rank"),
        ({"decay_init_range": [-6.5]}, "decay_init_range"),
    ],
)
def test_bad_options_name_their_key(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=f"attention.{key}"):
        small_attention("rwkv7", **overrides)(**SHAPE)
