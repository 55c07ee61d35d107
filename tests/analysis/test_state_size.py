"""Decoding-state bytes per sequence: every variant's count equals a hand formula read off its
cache class (softmax KV, sliding window, kernel and delta-rule states, the fallback's q/k/v,
short convolution), and equals the caches the model's incremental decoder builds."""

from __future__ import annotations

import math

import pytest
import torch

from attn_lightning.analysis.state_size import cache_bytes, decoding_state_bytes
from attn_lightning.attention.registry import attention_factory, variant_names, variant_options
from attn_lightning.model.decoding import IncrementalDecoder
from attn_lightning.model.gpt import GPT

N_LAYER, H, C, BLOCK = 2, 4, 32, 32
D = C // H  # head dim 8
F32 = 4  # bytes
T = 20  # above the default sliding window (16), below the block


def kv_heads(options: dict) -> int:
    return options.get("n_kv_head") or H


def softmax_kv(options: dict, t: int) -> int:
    """KVCache: k and v of the n_kv_head heads, every position."""
    return 2 * kv_heads(options) * t * D * F32


def sliding_kv(options: dict, t: int) -> int:
    """KVCache cropped to the window."""
    return 2 * kv_heads(options) * min(t, options["window"]) * D * F32


def kernel_state(features: int) -> int:
    """LinearAttentionState: S (H, M, D) and the normaliser z (H, M), M feature dims."""
    return (H * features * D + H * features) * F32


def matrix_state(options: dict, t: int) -> int:
    """DecayState / DeltaRuleState: S (H, D_k, D_v), with k/v heads repeated to H."""
    return H * D * D * F32


def fallback_qkv(options: dict, t: int) -> int:
    """The base's QKVCache: q of the H heads, k and v of the k/v heads, every position."""
    return (H + 2 * kv_heads(options)) * t * D * F32


def short_conv_window(options: dict) -> int:
    """ShortConvCache: the last K-1 inputs of the q, k, v projection, for a YAML that sets K."""
    channels = (H + 2 * kv_heads(options)) * D
    return channels * (options["short_conv"] - 1) * F32


def performer_features(options: dict) -> int:
    return options["nb_features"] or round(D * math.log(D))  # ~ d ln d


def based_features(options: dict) -> int:
    F = options["feature_dim"]
    return 1 + F + F * (F + 1) // 2  # 2nd-order Taylor: constant, linear, pairs i <= j


PER_LAYER = {
    "vanilla": softmax_kv,
    "alibi": softmax_kv,
    "rotary": softmax_kv,
    "sparse": softmax_kv,
    "gqa": softmax_kv,
    "mqa": softmax_kv,
    "sliding_window": sliding_kv,
    "linear": lambda o, t: kernel_state(D),  # elu + 1 keeps the head dim
    "performer": lambda o, t: kernel_state(performer_features(o)),
    "based": lambda o, t: kernel_state(based_features(o)),
    "retention": matrix_state,
    "gla": matrix_state,
    "deltanet": matrix_state,
    "gated_deltanet": matrix_state,
    "kda": matrix_state,
    "gated_deltaproduct": matrix_state,
    "linformer": fallback_qkv,
    "nystrom": fallback_qkv,
    "mamba2": lambda o, t: matrix_state(o, t) + short_conv_window(o),
    "rwkv7": lambda o, t: matrix_state(o, t) + short_conv_window(o),
    "fox": lambda o, t: softmax_kv(o, t) + H * t * F32,  # and c_j (H, t, 1) of every key
}


def by_hand(name: str, t: int, **overrides) -> int:
    return PER_LAYER[name](variant_options(name) | overrides, t)


def model(name: str, n_layer: int = N_LAYER, layer_attention=None, **overrides) -> GPT:
    torch.manual_seed(0)
    factory = attention_factory(name, **overrides)
    return GPT(13, n_layer, H, C, BLOCK, factory, layer_attention=layer_attention).eval()


def test_every_variant_has_a_hand_formula():
    assert set(PER_LAYER) == set(variant_names())


@pytest.mark.parametrize("name", variant_names())
def test_state_bytes_are_the_hand_count_per_sequence(name: str):
    """Counted on 3 sequences (the decoder test below on 1: together, linear in the batch)."""
    assert decoding_state_bytes(model(name), T, batch_size=3) == N_LAYER * by_hand(name, T)


@pytest.mark.parametrize("name", variant_names())
def test_state_bytes_are_those_of_the_caches_the_decoder_builds(name: str):
    """The decoder's own caches (2 sequences) after a prompt of 14 tokens, then one token at
    a time up to T (past the sliding window of 16)."""
    gpt = model(name)
    decoder = IncrementalDecoder(gpt)
    idx = torch.randint(13, (2, 14), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        while True:
            next_id = decoder(idx).argmax(-1, keepdim=True)
            if idx.size(1) == T:
                break
            idx = torch.cat((idx, next_id), dim=1)
    assert decoder.caches and decoder.caches[0].length == T
    assert cache_bytes(decoder.caches) == 2 * decoding_state_bytes(gpt, T)


@pytest.mark.parametrize("name", ["vanilla", "gqa", "sliding_window", "deltanet", "linformer"])
def test_short_conv_adds_its_window_of_projected_inputs(name: str):
    """ShortConvCache: the last K-1 inputs of the q, k, v projection, (H + 2 H_kv) D channels."""
    K = 4
    channels = (H + 2 * kv_heads(variant_options(name))) * D
    expected = N_LAYER * (by_hand(name, T) + channels * (K - 1) * F32)
    assert decoding_state_bytes(model(name, short_conv=K), T) == expected


def test_hybrid_stack_counts_each_layer_its_own_kind():
    linear_at_1 = {1: attention_factory("linear")}
    gpt = model("vanilla", n_layer=3, layer_attention=linear_at_1)
    expected = 2 * by_hand("vanilla", T) + by_hand("linear", T)
    assert decoding_state_bytes(gpt, T) == expected


def test_a_kv_cache_grows_with_the_context_and_a_recurrent_state_does_not():
    assert decoding_state_bytes(model("vanilla"), BLOCK) == N_LAYER * softmax_kv({}, BLOCK)
    assert decoding_state_bytes(model("vanilla"), 8) == N_LAYER * softmax_kv({}, 8)
    assert decoding_state_bytes(model("linear"), 8) == decoding_state_bytes(model("linear"), BLOCK)


def test_a_single_layer_is_counted_from_its_own_cache():
    torch.manual_seed(0)
    layer = attention_factory("gqa")(n_embd=C, n_head=H, block_size=BLOCK)
    assert decoding_state_bytes(layer, T) == by_hand("gqa", T)


def test_counted_in_the_dtype_the_cache_holds():
    gpt = model("vanilla").to(torch.bfloat16)
    assert decoding_state_bytes(gpt, T) == N_LAYER * softmax_kv({}, T) // 2  # 2-byte elements


def test_context_beyond_the_block_is_refused():
    with pytest.raises(ValueError, match="block_size=32"):
        decoding_state_bytes(model("vanilla"), BLOCK + 1)
