"""`attention.output_gate` and `attention.qk_norm`, base options of every variant: each changes
the output as its equation says (computed here by hand from the module's weights), decoding
still equals full recomputation with them on, and off (the default) they add nothing: the
same parameters, by name and count, as a layer built without them."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import ATTENTION_SHAPE as SHAPE
from helpers import small_attention
from torch import Tensor

from attn_lightning.analysis.contract import ContractSizes, decode_sequence, run_contract
from attn_lightning.attention.base import QK_NORM_EPS, CausalSelfAttention
from attn_lightning.attention.registry import variant_options
from attn_lightning.errors import ConfigError
from attn_lightning.model.decoding import one_token_logits
from attn_lightning.model.gpt import GPT

C, H, T = SHAPE["n_embd"], SHAPE["n_head"], SHAPE["block_size"]
D = C // H
BOTH = {"output_gate": True, "qk_norm": True}
SIZES = ContractSizes(n_embd=C, n_head=H, length=T)


def layer(variant: str, **overrides: object) -> CausalSelfAttention:
    """The variant at the test shape, float64, eval, its norm gains away from 1 (so a gain
    applied in the wrong place shows)."""
    torch.manual_seed(0)
    attn = small_attention(variant, **overrides)(**SHAPE).double().eval()
    with torch.no_grad():
        for name, p in attn.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_weight"):
                p.uniform_(0.5, 1.5)
    return attn


def rms_norm(x: Tensor, gain: Tensor) -> Tensor:
    """x / sqrt(mean(x²) + eps) * gain over the last dimension."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + QK_NORM_EPS) * gain


def softmax_attention_by_hand(attn: CausalSelfAttention, x: Tensor) -> tuple[Tensor, Tensor]:
    """Vanilla attention's o (B, T, C), heads merged, before any gate or projection, written
    from the weights: q, k, v = x W_qkv, optionally RMSNorm on each q and k head then RoPE,
    softmax(q k^T / sqrt(D)) causal; also the (B, H, T, T) weights."""
    B = x.size(0)
    q, k, v = (x @ attn.qkv.weight.T).split(C, dim=-1)  # (B, T, C) each
    q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    if attn.q_norm is not None:
        q, k = rms_norm(q, attn.q_norm.weight), rms_norm(k, attn.k_norm.weight)
    if attn.rope is not None:
        positions = torch.arange(T)
        q, k = attn.rope(q, positions), attn.rope(k, positions)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)  # (B, H, T, T)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    weights = scores.softmax(-1)
    return (weights @ v).transpose(1, 2).reshape(B, T, C), weights


def silu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def test_output_gate_multiplies_before_the_projection() -> None:
    """y = (o ⊙ swish(x W_g)) W_o, and the return_attn path gives the same output."""
    attn = layer("vanilla", output_gate=True)
    x = torch.randn(2, T, C, dtype=torch.float64)
    o, weights = softmax_attention_by_hand(attn, x)
    expected = (o * silu(x @ attn.g_proj.weight.T)) @ attn.proj.weight.T
    with torch.no_grad():
        y, _ = attn(x)
        shown, att = attn(x, return_attn=True)
        ungated = attn.proj(o)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(shown, expected)
    torch.testing.assert_close(att, weights)  # the gate leaves the matrix alone
    assert (y - ungated).abs().max() > 0.1 * ungated.abs().max()


def test_output_gate_comes_after_the_head_norm_of_a_normalising_projection() -> None:
    """GLA's published order: (RMSNorm(o) ⊙ swish(x W_g)) W_o, the norm per head."""
    attn = layer("gla", output_gate=True)
    x = torch.randn(2, T, C, dtype=torch.float64)
    with torch.no_grad():
        core = attn.attend(*attn.core_inputs(*attn.split_heads(x)), attn.gates(x))  # (B,H,T,D)
        y, _ = attn(x)
        shown, _ = attn(x, return_attn=True)
    heads = core.transpose(1, 2)  # (B, T, H, D)
    normed = heads / torch.sqrt(heads.pow(2).mean(-1, keepdim=True) + attn.proj.eps)
    normed = (normed * attn.proj.norm_weight).reshape(2, T, C)
    expected = (normed * silu(x @ attn.g_proj.weight.T)) @ attn.proj.weight.T
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(shown, expected)


@pytest.mark.parametrize("rope", [False, True])
def test_qk_norm_normalises_each_head_before_rope(rope: bool) -> None:
    """q_h, k_h <- RMSNorm(q_h), RMSNorm(k_h) with their learned gains, then RoPE: the
    weights and output from the hand computation (with non-unit gains the order with RoPE
    matters: a rotation does not commute with a per-channel gain)."""
    attn = layer("vanilla", qk_norm=True, rope=rope)
    x = 3 * torch.randn(2, T, C, dtype=torch.float64)
    o, weights = softmax_attention_by_hand(attn, x)
    with torch.no_grad():
        y, _ = attn(x)
        shown, att = attn(x, return_attn=True)
        q, k, _ = attn.split_heads(x)
    torch.testing.assert_close(y, o @ attn.proj.weight.T)
    torch.testing.assert_close(shown, y)
    torch.testing.assert_close(att, weights)
    gain = attn.q_norm.weight
    rms = (q / gain).pow(2).mean(-1)  # 1 up to eps
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=0, atol=1e-5)
    assert k.shape == (2, H, T, D)


@pytest.mark.parametrize(
    ("variant", "overrides"),
    [
        ("vanilla", {}),
        ("rotary", {}),
        ("gqa", {"short_conv": 3}),
        ("gla", {}),
        ("retention", {"short_conv": 3}),
        ("deltanet", {}),
        ("gated_deltanet", {}),
        ("linear", {}),
        ("performer", {}),
        ("sliding_window", {}),
    ],
)
def test_decoding_equals_full_recomputation_with_both_on(variant: str, overrides: dict) -> None:
    """A prefill of 5, then one token at a time, through T not a multiple of the chunk size:
    the gate and the norms apply in `step` as in `forward`."""
    attn = layer(variant, **BOTH, **overrides)
    x = torch.randn(2, T - 3, C, dtype=torch.float64)
    with torch.no_grad():
        full, _ = attn(x)
        decoded = decode_sequence(attn, x, prefill=5)
    torch.testing.assert_close(decoded, full, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("variant", ["vanilla", "rotary", "linear"])
def test_static_cache_decoding_with_both_on(variant: str) -> None:
    """The one-token step of compiled decoding (positions as a tensor), run eagerly."""
    torch.manual_seed(0)
    model = GPT(65, 2, H, C, T, small_attention(variant, **BOTH)).eval()
    sequence = torch.randint(65, (2, T - 2))
    with torch.inference_mode():
        full = model(sequence).logits
        caches, slots = model.new_caches(static=True), torch.arange(T)
        model(sequence[:, :4], caches=caches)
        for t in range(4, T - 2):
            logits = one_token_logits(model, sequence[:, t : t + 1].clone(), caches, slots[: t + 1])
            torch.testing.assert_close(logits, full[:, t], rtol=1e-4, atol=1e-5)


def test_every_option_keeps_the_contract_with_both_on(variant: str) -> None:
    results = run_contract(small_attention(variant, **BOTH), SIZES)
    assert [r.failure for r in results if not r.passed] == []


def test_off_by_default_adds_no_parameter(variant: str) -> None:
    """The YAML's defaults and the explicit `false` build the parameters a layer without the
    options has: no g_proj, q_norm or k_norm, the same names and count. On, exactly those
    are added: C² (+ C with bias) for W_g, 2 D for the two gains."""
    options = variant_options(variant)
    for key in ("output_gate", "qk_norm"):  # listed with the other base options, off
        assert options.get(key) is False, f"conf/attention/{variant}.yaml: add `{key}: false`"

    def params(**overrides: object) -> dict[str, int]:
        torch.manual_seed(0)
        attn = small_attention(variant, **overrides)(**SHAPE)
        return {name: p.numel() for name, p in attn.named_parameters()}

    default = params()
    assert params(output_gate=False, qk_norm=False) == default
    assert not any(n.startswith(("g_proj.", "q_norm.", "k_norm.")) for n in default)
    gated = params(output_gate=True)
    assert gated == {**default, "g_proj.weight": C * C}
    assert params(qk_norm=True) == {**default, "q_norm.weight": D, "k_norm.weight": D}


def test_vanilla_parameters_are_the_published_four() -> None:
    """Off, vanilla attention holds W_qkv and W_o only (nanoGPT's names and shapes)."""
    attn = small_attention("vanilla")(**SHAPE)
    shapes = {name: tuple(p.shape) for name, p in attn.named_parameters()}
    assert shapes == {"qkv.weight": (3 * C, C), "proj.weight": (C, C)}


def test_output_gate_has_a_bias_only_with_the_layers_bias() -> None:
    attn = small_attention("vanilla", output_gate=True)(**SHAPE, bias=True)
    assert attn.g_proj.bias is not None and attn.g_proj.bias.shape == (C,)


def test_default_model_output_gate_parameter_cost() -> None:
    """n_embd 128, 4 layers: C² per layer, 65,536 in all."""
    sizes = {"vocab_size": 65, "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64}
    plain = GPT(**sizes, attention=small_attention("vanilla")).num_params()
    gated = GPT(**sizes, attention=small_attention("vanilla", output_gate=True)).num_params()
    normed = GPT(**sizes, attention=small_attention("vanilla", qk_norm=True)).num_params()
    assert gated - plain == 4 * 128 * 128 == 65_536
    assert normed - plain == 4 * 2 * 32


@pytest.mark.parametrize("key", ["output_gate", "qk_norm"])
def test_a_non_boolean_is_a_config_error_naming_the_key(key: str) -> None:
    with pytest.raises(ConfigError, match=f"attention.{key}=1 must be true or false"):
        small_attention("vanilla", **{key: 1})(**SHAPE)
