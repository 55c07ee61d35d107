"""What every attention variant shares: projections, heads, RoPE, short convolution,
dropout, the decoding cache. Bring your own attention by subclassing `CausalSelfAttention`.

A variant implements its core on (B, H, T, D) tensors whose k/v heads are repeated to H:

- `attend(q, k, v, g)`: the output (B, H, T, D), the fast path;
- `attention_matrix(q, k, g)`: the equivalent (B, H, T, T) matrix it applies to v, formed only
  when a caller asks for weights: `forward(x, return_attn=True)` computes its output as
  `attention_matrix(q, k, g) @ v`, so the weights shown are the ones that made the output;
- optionally `gates(x)`: per-token gates g (B, H, T, G) from the layer input x (B, T, C), for a
  core whose decay or write strength depends on the token (DeltaNet's β_t; a decay core's
  log α_t, which GLA and retention give as `log_decay(x)`, decay_kernel.py); the default is
  None, and every hook then gets g = None;
- optionally `_new_core_cache()` and `decode(q, k, v, cache, g)`: incremental decoding, where
  decode gets the new tokens' q (B, H, T, D), k and v (B, H_kv, T, D: `_repeat_kv` repeats
  them), RoPE applied, and its own cache, and returns their outputs. The default keeps q, k, v
  of the window and recomputes `attend` over it (exact for any causal core without gates, and
  it still saves every projection and MLP of the past tokens); the softmax family keeps a KV
  cache, the kernel family a recurrent state;
- optionally `_new_static_core_cache()`: a cache of fixed shapes for compiled decoding
  (default None: the variant decodes eagerly).

Callers use `forward`, `new_cache()` and `new_static_cache()` (the hooks' caches, with the short
convolution's state added where the layer has one), `step(x, cache)` (decoding; `Block.step`
calls it directly: a one-token step is dispatch-bound, and `forward` goes through `__call__`),
and, to read or time the core, `split_heads(x)` and `core_inputs(q, k, v)`:

    forward(x) = proj(attend(*core_inputs(*split_heads(x)), gates(x)))   (heads merged)

Options every variant gets (conf/attention/gqa.yaml, mqa.yaml and rotary.yaml are vanilla
attention with one of them set):
- `n_kv_head`: grouped-query attention (Ainslie et al. 2023; H_kv = 1 is multi-query attention,
  Shazeer 2019). Head h uses the keys/values of group g(h) = h // (H / H_kv); only H_kv k/v
  heads are projected and cached (the cache shrinks by H / H_kv), repeated for the core.
- `rope`: rotary position embedding on q and k (rope.py), cached already rotated.
- `short_conv`: kernel size K of a depthwise causal convolution (+ SiLU) on the projected q, k
  and v, before heads are split and RoPE (short_conv.py; 0 = off). Its decoding state, the
  layer's last K-1 projected inputs, rides next to the core's cache in a `ShortConvCache`;
  `decode` sees only the core's own.
- `output_gate`: o <- o ⊙ swish(x W_g) on the merged heads before the output projection
  (W_g: C x C, a bias only with the layer's `bias`), the output gate of GLA (Yang et al. 2024),
  Gated DeltaNet and FoX; C^2 parameters per layer. A projection that normalises the heads
  first (`HeadNormProjection`: GLA, retention) takes the gate after its norm, as those papers
  order it: (RMSNorm(o) ⊙ swish(x W_g)) W_o.
- `qk_norm`: RMSNorm of each q and k head (one learned gain of head_dim for q, one for k, shared
  by the heads; eps QK_NORM_EPS), after the projection and short convolution, before RoPE, as
  OLMo-2, Qwen3 and FoX-Pro normalise them: bounded logits for softmax, bounded features for
  the kernel family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, final

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attn_lightning.attention.kv_cache import QKVCache
from attn_lightning.attention.rope import RotaryEmbedding
from attn_lightning.attention.short_conv import ShortConvCache, ShortConvolution
from attn_lightning.errors import ConfigError

QK_NORM_EPS = 1e-6  # RMSNorm eps of `qk_norm` (OLMo-2's and Qwen3's)


class CausalSelfAttention(nn.Module, ABC):
    """Multi-head causal self-attention with a pluggable core."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        block_size: int,
        dropout: float = 0.0,
        bias: bool = False,
        n_kv_head: int | None = None,
        rope: bool = False,
        rope_base: float = 10000.0,
        short_conv: int = 0,
        output_gate: bool = False,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        if n_embd % n_head != 0:
            nearest_multiple = n_head * max(1, n_embd // n_head)
            raise ConfigError(
                f"model.n_embd={n_embd} is not divisible by model.n_head={n_head}: choose "
                f"model.n_embd as a multiple of model.n_head (e.g. {nearest_multiple})"
            )
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_kv_head <= 0 or n_head % n_kv_head != 0:
            raise ConfigError(
                f"attention.n_kv_head={n_kv_head} must be positive and divide model.n_head={n_head}"
            )
        if isinstance(short_conv, bool) or not isinstance(short_conv, int) or short_conv < 0:
            raise ConfigError(
                f"attention.short_conv={short_conv!r} must be a kernel size >= 1, or 0 (off)"
            )
        for key, value in (("output_gate", output_gate), ("qk_norm", qk_norm)):
            if not isinstance(value, bool):
                raise ConfigError(f"attention.{key}={value!r} must be true or false")
        self.n_embd = n_embd
        self.n_head = n_head
        self.n_kv_head = n_kv_head
        self.head_dim = n_embd // n_head
        self.block_size = block_size
        self.dropout = dropout
        self.qkv = nn.Linear(n_embd, (n_head + 2 * n_kv_head) * self.head_dim, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)  # residual projection (scaled init)
        self.rope = RotaryEmbedding(self.head_dim, block_size, rope_base) if rope else None
        self.short_conv = short_conv
        channels = (n_head + 2 * n_kv_head) * self.head_dim  # q, k and v side by side
        self.qkv_conv = ShortConvolution(channels, short_conv) if short_conv else None
        # off: no module at all, so parameter names and counts are those without the option
        self.g_proj = nn.Linear(n_embd, n_embd, bias=bias) if output_gate else None  # W_g
        self.q_norm = nn.RMSNorm(self.head_dim, eps=QK_NORM_EPS) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=QK_NORM_EPS) if qk_norm else None
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, return_attn: bool = False, cache: Any = None
    ) -> tuple[Tensor, Tensor | None]:
        """(B, T, C) -> (B, T, C), plus the (B, H, T, T) weights when `return_attn`.

        With a `cache` (from `new_cache`), x holds only the new tokens, which continue the
        sequence the cache has seen; no weights are returned then (`step` does the work).
        """
        if cache is not None:
            return self.step(x, cache), None
        B, T, C = x.shape
        if self.block_size < T:
            raise ValueError(f"positions up to {T} exceed block_size {self.block_size}")
        q, k, v = self.split_heads(x)
        g = self.gates(x)  # (B, H, T, G) or None
        q, k, v = self.core_inputs(q, k, v)  # (B, H, T, D)
        att = None
        if return_attn:
            att = self.attention_matrix(q, k, g)  # (B, H, T, T)
            y = self.attn_dropout(att) @ v
        else:
            y = self.attend(q, k, v, g)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self._project(y, x)), att

    def step(self, x: Tensor, cache: Any, positions: Tensor | None = None) -> Tensor:
        """Decoding: new tokens x (B, T, C) continuing the sequence `cache` has seen ->
        outputs (B, T, C), output projection included; advances the cache. `positions` (T,):
        the tokens' positions as a tensor, from compiled decoding (which checks them), for a
        cache from `new_static_cache`; default: the cache's length onwards.

        Bare functional ops and submodules' `forward` (no `__call__`, so no hooks of `qkv` or
        `proj` run): a one-token step is a few dozen tiny ops whose dispatch is its cost."""
        B, T, C = x.shape
        start: int | Tensor
        if positions is None:
            start = cache.length
            if start + T > self.block_size:
                raise ValueError(f"positions up to {start + T} exceed block_size {self.block_size}")
        else:
            start = positions
        conv_cache = None
        if isinstance(cache, ShortConvCache):  # the variant's decode sees only its own cache
            conv_cache, cache = cache, cache.core
        elif self.qkv_conv is not None:
            raise ValueError("a layer with short_conv decodes from its own new_cache()")
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias)  # (B, T, (H + 2 H_kv) D)
        q, k, v = self._split_qkv(qkv, conv_cache)
        q, k = self._apply_rope(q, k, start)
        y = self.decode(q, k, v, cache, self.gates(x))  # (B, H, T, D)
        # (B, H, T, D) -> (B, T, C); for one token the same order of elements as it stands
        y = y.reshape(B, T, C) if T == 1 else y.transpose(1, 2).reshape(B, T, C)
        y = self._project(y, x, hooks=False)
        return self.resid_dropout(y) if self.training else y

    def split_heads(
        self, x: Tensor, conv_cache: ShortConvCache | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, C) -> projected (short-convolved, with qk_norm normalised) q (B, H, T, D),
        k and v (B, H_kv, T, D), before RoPE. With `conv_cache`, x continues the inputs it
        holds and the cache advances; without, x starts the sequence."""
        return self._split_qkv(self.qkv(x), conv_cache)

    def core_inputs(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Projected q (B, H, T, D), k, v (B, H_kv, T, D) at positions 0.. -> what `attend`
        sees: RoPE on q and k, k/v heads repeated to H, all (B, H, T, D)."""
        q, k = self._apply_rope(q, k)
        return q, self._repeat_kv(k), self._repeat_kv(v)

    @final
    def new_cache(self) -> Any:
        """An empty decoding cache for this layer: the variant's (`_new_core_cache`), inside a
        `ShortConvCache` with the convolution's state when the layer has short_conv."""
        cache = self._new_core_cache()
        return cache if self.qkv_conv is None else ShortConvCache(cache)

    @final
    def new_static_cache(self) -> Any | None:
        """A cache of fixed shapes whose count is a tensor (kv_cache.TensorLength), for
        compiled decoding, or None: this layer decodes eagerly only (a variant without one,
        or short_conv, whose state is not kept in fixed shapes)."""
        return self._new_static_core_cache() if self.qkv_conv is None else None

    # the hooks a variant implements (module docstring)

    @abstractmethod
    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        """Causal attention output (B, H, T, D) from q, k, v (B, H, T, D) and the gates."""

    @abstractmethod
    def attention_matrix(self, q: Tensor, k: Tensor, g: Tensor | None = None) -> Tensor:
        """The (B, H, T, T) matrix this variant applies to v."""

    def gates(self, x: Tensor) -> Tensor | None:
        """Per-token gates (B, H, T, G) from the layer input x (B, T, C), or None: the core
        has no data-dependent gates (the default)."""
        return None

    def _new_core_cache(self) -> Any:
        """The variant's empty decoding cache (default: q, k, v of the window, for `decode`'s
        recomputation). Callers use `new_cache`."""
        return QKVCache(self.block_size)

    def _new_static_core_cache(self) -> Any | None:
        """The variant's fixed-shape cache for compiled decoding, or None (the default).
        Callers use `new_static_cache`."""
        return None

    def decode(
        self, q: Tensor, k: Tensor, v: Tensor, cache: Any, g: Tensor | None = None
    ) -> Tensor:
        """Outputs (B, H, T_new, D) of new tokens given the cache (k/v heads not repeated,
        RoPE applied; g: the new tokens' gates); updates the cache.

        Default: recompute the core over the cached window (exact for any causal core without
        gates; a gated variant supplies its own recurrent decode)."""
        T = q.size(2)
        q_all = cache.update_q(q)
        k_all, v_all = cache.update(k, v)
        return self.attend(q_all, self._repeat_kv(k_all), self._repeat_kv(v_all))[:, :, -T:]

    # helpers for the pipeline and for variants

    def _project(self, y: Tensor, x: Tensor, hooks: bool = True) -> Tensor:
        """Merged heads y (B, T, C) -> the output projection, through the output gate
        swish(x W_g) when the layer has one (x: the layer input (B, T, C)). `hooks=False`
        (decoding) calls the modules' `forward`, a variant's own projection's too."""
        proj = self.proj if hooks else self.proj.forward
        if self.g_proj is None:
            return proj(y)
        gate = F.silu(F.linear(x, self.g_proj.weight, self.g_proj.bias))  # (B, T, C)
        if getattr(self.proj, "gate_after_norm", False):  # (RMSNorm(y) ⊙ gate) W_o
            return proj(y, gate)
        return proj(y * gate)

    def _split_qkv(
        self,
        qkv: Tensor,
        conv_cache: ShortConvCache | None = None,
        kv_heads: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`split_heads` after the projection: qkv (B, T, (H + 2 H_kv) D) -> q, k, v, with
        `kv_heads` k and v heads each (H_kv unless given: a variant with more k/v heads than
        H_kv passes its own)."""
        B, T, _ = qkv.shape
        kv_heads = self.n_kv_head if kv_heads is None else kv_heads
        if self.qkv_conv is not None:
            qkv, state = self.qkv_conv(qkv, None if conv_cache is None else conv_cache.conv)
            if conv_cache is not None:
                conv_cache.conv = state
        # the q, k and v heads side by side (B, H + 2 H_kv, T, D), split once; one token's
        # (B, 1, (H + 2 H_kv) D) is that layout already: a view, no transpose
        heads = (
            qkv.view(B, -1, 1, self.head_dim)
            if T == 1
            else qkv.view(B, T, -1, self.head_dim).transpose(1, 2)
        )
        q, k, v = heads.split_with_sizes([self.n_head, kv_heads, kv_heads], dim=1)
        if self.q_norm is not None and self.k_norm is not None:  # RMSNorm per head
            q = F.rms_norm(q, (self.head_dim,), self.q_norm.weight, self.q_norm.eps)
            k = F.rms_norm(k, (self.head_dim,), self.k_norm.weight, self.k_norm.eps)
        return q, k, v

    def _apply_rope(self, q: Tensor, k: Tensor, start: int | Tensor = 0) -> tuple[Tensor, Tensor]:
        """RoPE on q and k of the positions start.. , or of the positions a (T,) tensor `start`
        holds (unchanged without `rope`)."""
        if self.rope is None:
            return q, k
        if isinstance(start, Tensor):
            positions = start
        else:
            positions = torch.arange(start, start + q.size(2), device=q.device)
        return self.rope(q, positions), self.rope(k, positions)

    def _repeat_kv(self, x: Tensor) -> Tensor:
        """(B, H_kv, T, D) -> (B, H, T, D): each k/v head serves n_head // n_kv_head queries."""
        groups = self.n_head // self.n_kv_head
        return x if groups == 1 else x.repeat_interleave(groups, dim=1)

    def _decodes_as(self, owner: type) -> bool:
        """Whether this class decodes with `owner`'s cache and decode, unchanged: what the
        fixed-shape cache of `owner._new_static_core_cache` is exact for."""
        cls = type(self)
        return cls._new_core_cache is owner._new_core_cache and cls.decode is owner.decode

    @property
    def dropout_p(self) -> float:
        """Attention dropout probability for the fast path (zero in eval mode)."""
        return self.dropout if self.training else 0.0
