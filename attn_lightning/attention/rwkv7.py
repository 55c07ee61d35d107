"""RWKV-7 "Goose" time mixing (Peng et al. 2025, "RWKV-7 "Goose" with Expressive Dynamic State
Evolution"), causal: the generalised delta rule with a diagonal-plus-low-rank transition.

With the paper's row/column convention (S is D_v x D_k, k and v row vectors),

    S_t = S_{t-1} (Diag(w_t) - κ̂_t^T (a_t ⊙ κ̂_t)) + v_t^T k̃_t,   o_t = S_t r_t^T
    w_t = exp(-e^{-0.5} σ(w_0 + tanh(x_t W_1) W_2))         decay per channel, in (0.545, 1)
    a_t = σ(a_0 + x_t A_1 A_2)                               in-context learning rate, in (0, 1)
    κ̂_t = normalise(k_t ⊙ ξ)   (per head)                   removal key
    k̃_t = k_t ⊙ (1 + (a_t - 1) ⊙ α)                          replacement key

The state forgets per channel (w_t), removes a fraction a_t of its answer to the unit key κ̂_t
(the delta rule's removal, channel by channel), and writes v_t under k̃_t (α = 1: under
k_t ⊙ a_t, so with k_t = κ̂_t and one rate a_t in every channel this is the delta rule with
β_t = a_t; α = 0: under the whole k_t). The
receptance r_t is the base's query q, k_t and v_t its keys and values; w_t and a_t come from
the layer input x_t through rank-r projections (`decay_rank`, `icl_rank`), as GLA's gate does:
`gates` gives their logits. The core is fla's DPLR recurrence with a = -κ̂ and b = κ̂ ⊙ a_t
(dplr_kernel.py: chunked for training, recurrent for decoding, O(1) state per token); the
chunked form forms w, a_t, κ̂ and k̃ itself, a slab of chunks at a time (chunked_rwkv7), so
none of them is ever a full-size tensor. q is not scaled (RWKV-7's scale 1).
Each head's output is group-normalised (RWKV-7's `ln_x`: a LayerNorm per head, a gain and bias
per channel) inside the output projection, after the matrix (`return_attn`'s matrix @ v and
the fast path share it).

Included and not, exactly:
- token shift (RWKV's x_t^□ = lerp(x_t, x_{t-1}, μ_□) before each projection of r, w, k, v,
  a): not computed here. The base's `short_conv` of kernel 2 (on in conf/attention/rwkv7.yaml)
  gives r, k and v a learned mix of two consecutive tokens: each projected channel as
  c_0 W x_t + c_1 W x_{t-1} (per output channel, then SiLU, as fla's convolution), where the
  lerp mixes per input channel before W. w_t and a_t read x_t alone: the gate hook sees only
  the new tokens when decoding, so a shift there would need x_{t-1} in a cache it cannot reach;
- the bonus term (r_t · (ρ ⊙ k̃_t)) v_t, which RWKV-7 adds after the GroupNorm: left out (a
  term after the norm has no place in the matrix @ v that `return_attn` shows);
- the output gate σ(x G_1) G_2: left to the base's `output_gate` (swish(x W_g), after the
  norm as RWKV-7 places its gate);
- the value residual (v mixed with the first layer's v, "v-first"): left out, it crosses
  layers and a layer here sees only its own input;
- the channel-mixing block (RWKV's FFN): the model's MLP is used unchanged;
- the initialisations tied to the layer's depth (w_0's schedule, ln_x's gain): w_0 is spread
  evenly over the channels within `decay_init_range`, the gain starts at 1.

With grouped-query heads, w, a, ξ and α belong to the k/v heads and serve their query heads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.attention.dplr_kernel import (
    FACTOR_BOUND,
    DPLRState,
    chunked_rwkv7,
    dplr_matrix,
    recurrent_dplr,
)
from attn_lightning.errors import ConfigError

DECAY_SCALE = math.exp(-0.5)  # -log w_t = e^{-0.5} σ(·) < e^{-0.5}: w_t > exp(-e^{-0.5})


class GroupNormProjection(nn.Linear):
    """The output projection W_o after RWKV-7's GroupNorm (one group per head, a gain and a
    bias per channel): (B, T, H * D) -> (B, T, C). The base's output gate, when on,
    multiplies after the norm."""

    gate_after_norm = True  # the base passes `gate` here rather than multiplying y by it

    def __init__(self, n_head: int, head_dim: int, bias: bool, eps: float) -> None:
        super().__init__(n_head * head_dim, n_head * head_dim, bias=bias)
        self.n_head = n_head
        self.eps = eps
        self.norm_weight = nn.Parameter(torch.ones(n_head * head_dim))
        self.norm_bias = nn.Parameter(torch.zeros(n_head * head_dim))

    def forward(self, y: Tensor, gate: Tensor | None = None) -> Tensor:
        shape = y.shape  # F.group_norm normalises dim 1 of (N, C) in n_head groups
        flat = y.reshape(-1, shape[-1])
        y = F.group_norm(flat, self.n_head, self.norm_weight, self.norm_bias, self.eps).view(shape)
        return super().forward(y if gate is None else y * gate)


class RWKV7Attention(CausalSelfAttention):
    """RWKV-7's time mixing on the shared base: r, k, v from its projection, w and a from x."""

    def __init__(
        self,
        *args: Any,
        chunk_size: int = 16,
        decay_rank: int = 16,
        icl_rank: int = 16,
        decay_init_range: Sequence[float] = (-6.5, -1.5),
        removal_key_init: float = 0.85,
        replacement_init: float = 1.0,
        eps: float = 1e-12,
        norm_eps: float = 6.4e-4,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        most = int(FACTOR_BOUND / DECAY_SCALE)  # chunks whose decay stays above e^-40
        if not 1 <= chunk_size <= most:
            raise ConfigError(
                f"attention.chunk_size={chunk_size} must be between 1 and {most}: the chunked "
                "form divides by the decay within a chunk"
            )
        for key, rank in (("decay_rank", decay_rank), ("icl_rank", icl_rank)):
            if rank < 1:
                raise ConfigError(f"attention.{key}={rank} must be >= 1")
        if len(decay_init_range) != 2:
            raise ConfigError(
                f"attention.decay_init_range={list(decay_init_range)} must be [low, high]"
            )
        self.chunk_size = chunk_size
        self.eps = eps
        C, KD = self.n_embd, self.n_kv_head * self.head_dim  # channels of the k/v heads
        self.decay_down = nn.Linear(C, decay_rank, bias=False)  # W_1
        self.decay_up = nn.Linear(decay_rank, KD, bias=False)  # W_2
        low, high = decay_init_range
        self.decay_bias = nn.Parameter(torch.linspace(low, high, KD))  # w_0
        self.icl_down = nn.Linear(C, icl_rank, bias=False)  # A_1
        self.icl_up = nn.Linear(icl_rank, KD, bias=False)  # A_2
        self.icl_bias = nn.Parameter(torch.zeros(KD))  # a_0
        self.removal_key = nn.Parameter(torch.full((KD,), removal_key_init))  # ξ
        self.replacement = nn.Parameter(torch.full((KD,), replacement_init))  # α
        self.attn_dropout = nn.Identity()  # no dropout on an implicit matrix
        bias = self.proj.bias is not None
        self.proj = GroupNormProjection(self.n_head, self.head_dim, bias, norm_eps)

    def gates(self, x: Tensor) -> Tensor:
        """(B, T, C) -> the logits [z_w, z_a] (B, H, T, 2 D) of w = exp(-e^-0.5 σ(z_w)) and
        a = σ(z_a); the core applies the sigmoids (in its slabs, chunked_rwkv7).

        Both projections run as one pair of products, their weights side by side (W_1 | A_1)
        and block-diagonal (W_2, A_2 per k/v head), so that the logits land in the head-major
        layout the core reads, without a copy of the full (B, T, 2 H_kv D) tensor."""
        B, T, _ = x.shape
        H_kv, D, r_w = self.n_kv_head, self.head_dim, self.decay_down.out_features
        hidden = F.linear(x, torch.cat((self.decay_down.weight, self.icl_down.weight)))
        hidden = torch.cat((torch.tanh(hidden[..., :r_w]), hidden[..., r_w:]), -1)  # (B, T, r)
        up = hidden.new_zeros(H_kv, 2, D, hidden.size(-1))  # rows: (head, z_w | z_a, channel)
        up[:, 0, :, :r_w] = self.decay_up.weight.view(H_kv, D, r_w)
        up[:, 1, :, r_w:] = self.icl_up.weight.view(H_kv, D, -1)
        bias = torch.stack((self.decay_bias.view(H_kv, D), self.icl_bias.view(H_kv, D)), 1)
        z = F.linear(hidden, up.flatten(0, 2), bias.flatten())  # (B, T, H_kv 2 D)
        return self._repeat_kv(z.view(B, T, H_kv, 2 * D).transpose(1, 2))

    def decay_and_rate(self, g: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """The gate logits (B, H, T, 2 D) -> log w and a (B, H, T, D), in like's dtype."""
        z_w, z_a = _logits(g).to(like.dtype).chunk(2, dim=-1)
        return -DECAY_SCALE * torch.sigmoid(z_w), torch.sigmoid(z_a)

    def per_channel(self) -> tuple[Tensor, Tensor]:
        """ξ and α (H, D), the k/v heads' repeated for their query heads."""
        heads = self.n_head // self.n_kv_head
        xi, alpha = (p.view(self.n_kv_head, -1) for p in (self.removal_key, self.replacement))
        return xi.repeat_interleave(heads, 0), alpha.repeat_interleave(heads, 0)

    def dplr_inputs(self, k: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Keys k (B, H, T, D) and gates -> the DPLR core's k̃, a = -κ̂, b = κ̂ ⊙ a_t and log w
        (what chunked_rwkv7 forms inside, slab by slab), for the matrix and decoding."""
        log_w, icl = self.decay_and_rate(g, k)
        xi, alpha = (p[:, None] for p in self.per_channel())  # (H, 1, D)
        removal = F.normalize(k * xi, dim=-1, eps=self.eps)  # κ̂
        key = k * (1 + (icl - 1) * alpha)  # k̃
        return key, -removal, removal * icl, log_w

    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        xi, alpha = self.per_channel()
        return chunked_rwkv7(q, k, v, _logits(g), xi, alpha, self.chunk_size, self.eps, DECAY_SCALE)

    def attention_matrix(self, q: Tensor, k: Tensor, g: Tensor | None = None) -> Tensor:
        key, a, b, log_w = self.dplr_inputs(k, g)
        return dplr_matrix(q, key, a, b, log_w, self.chunk_size)

    def _new_core_cache(self) -> DPLRState:
        return DPLRState()

    def decode(
        self, q: Tensor, k: Tensor, v: Tensor, cache: DPLRState, g: Tensor | None = None
    ) -> Tensor:
        k, v = self._repeat_kv(k), self._repeat_kv(v)
        if q.size(2) > 1:  # a prefill: the chunked form, from and to the cache's state
            xi, alpha = self.per_channel()
            return chunked_rwkv7(
                q, k, v, _logits(g), xi, alpha, self.chunk_size, self.eps, DECAY_SCALE, cache
            )
        key, a, b, log_w = self.dplr_inputs(k, g)
        return recurrent_dplr(q, key, v, a, b, log_w, cache)


def _logits(g: Tensor | None) -> Tensor:
    """The gates of rwkv7, [z_w, z_a] (B, H, T, 2 D), or the error that names them."""
    if g is None:
        raise ValueError("rwkv7 needs its gates [z_w, z_a]: pass g = module.gates(x)")
    return g
