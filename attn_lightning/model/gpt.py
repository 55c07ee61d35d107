"""A GPT whose attention is injected: token (+ learned position) embeddings, pre-LayerNorm
blocks with a GELU MLP (or, `mlp=False`, attention alone: Zoology's Figure-2 blocks), tied output
head, GPT-2 initialisation.

The model never imports a concrete attention variant. It receives `attention`, a factory
(a class or a `functools.partial`) called once per layer as
`attention(n_embd=..., n_head=..., block_size=..., dropout=..., bias=...)`. A hybrid stack
names the exceptions in `layer_attention`, {layer index: factory}: those layers call their own
factory, the others `attention`.

Generation decodes incrementally, one layer cache each (model/decoding.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.errors import ConfigError
from attn_lightning.model.decoding import IncrementalDecoder, StaticCacheError
from attn_lightning.model.sampling import Sampler

AttentionFactory = Callable[..., CausalSelfAttention]
POS_EMBEDDINGS = ("learned", "none")


def layer_factories(
    attention: AttentionFactory,
    layer_attention: Mapping[int | str, AttentionFactory] | None,
    n_layer: int,
) -> list[AttentionFactory]:
    """The factory of each layer: `attention`, except the layers `layer_attention` names (keys
    are layer indices, as ints or as the strings a config holds)."""
    factories = [attention] * n_layer
    for key, factory in (layer_attention or {}).items():
        index = key if isinstance(key, int) else int(key) if str(key).isdigit() else -1
        if isinstance(key, bool) or not 0 <= index < n_layer:
            raise ConfigError(
                f"layer_attention.{key}: no such layer in a model of model.n_layer={n_layer}; "
                f"name a layer index 0..{n_layer - 1}"
            )
        factories[index] = factory
    return factories


def layer_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """`norm(x)` without the module call (decoding's bare-op path)."""
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class GPTOutput(NamedTuple):
    logits: Tensor  # (B, T, vocab_size)
    loss: Tensor | None  # mean cross-entropy over targets != ignore_index
    attentions: list[Tensor] | None  # one (B, H, T, T) per layer, when asked


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.proj = nn.Linear(4 * n_embd, n_embd, bias=bias)  # residual projection (scaled init)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))

    def step(self, x: Tensor) -> Tensor:
        """`forward` in bare functional ops, for decoding (see `Block.step`)."""
        h = F.gelu(F.linear(x, self.fc.weight, self.fc.bias))  # (B, T, 4C)
        y = F.linear(h, self.proj.weight, self.proj.bias)
        return self.dropout(y) if self.training else y


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)); with
    `mlp=False` the first half alone (no MLP and no second norm)."""

    def __init__(
        self,
        attention: CausalSelfAttention,
        n_embd: int,
        dropout: float,
        bias: bool,
        mlp: bool = True,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = attention
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias) if mlp else None
        self.mlp = MLP(n_embd, dropout, bias) if mlp else None

    def forward(self, x: Tensor, return_attn: bool = False) -> tuple[Tensor, Tensor | None]:
        a, att = self.attn(self.ln_1(x), return_attn=return_attn)
        x = x + a
        if self.mlp is None:
            return x, att
        return x + self.mlp(self.ln_2(x)), att

    def step(self, x: Tensor, cache: Any, positions: Tensor | None = None) -> Tensor:
        """Decoding: `forward` of new tokens x (B, T, C) continuing `cache`, in bare
        functional ops. Decoding one token of a small model is op-dispatch bound (each op
        costs microseconds of overhead, its arithmetic far less), so this path calls no
        submodule (no `__call__`, no hooks) and creates no tensor it does not need."""
        x = x + self.attn.step(layer_norm(self.ln_1, x), cache, positions)
        if self.mlp is None:
            return x
        return x + self.mlp.step(layer_norm(self.ln_2, x))


class GPT(nn.Module):
    """Decoder-only transformer language model."""

    def __init__(
        self,
        vocab_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        block_size: int,
        attention: AttentionFactory,
        dropout: float = 0.0,
        bias: bool = False,
        pos_embedding: str = "learned",
        layer_attention: Mapping[int | str, AttentionFactory] | None = None,
        mlp: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("n_layer", n_layer),
            ("n_head", n_head),
            ("n_embd", n_embd),
            ("block_size", block_size),
        ):
            if value <= 0:
                raise ConfigError(f"model.{name} must be positive, got {value}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {dropout}")
        if pos_embedding not in POS_EMBEDDINGS:
            raise ConfigError(
                f"model.pos_embedding={pos_embedding!r} is unknown; choose one of {POS_EMBEDDINGS}"
            )
        factories = layer_factories(attention, layer_attention, n_layer)
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd) if pos_embedding == "learned" else None
        self.drop = nn.Dropout(dropout)
        sizes = dict(
            n_embd=n_embd, n_head=n_head, block_size=block_size, dropout=dropout, bias=bias
        )
        self.blocks = nn.ModuleList(
            Block(f(**sizes), n_embd, dropout, bias, mlp) for f in factories
        )
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying (Press & Wolf 2017)
        self._init_weights(n_layer)

    def _init_weights(self, n_layer: int) -> None:
        """GPT-2 init: N(0, 0.02); residual projections scaled by 1/sqrt(2 * n_layer)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for block in self.blocks:
            residuals = [block.attn.proj] + ([block.mlp.proj] if block.mlp is not None else [])
            for residual in residuals:
                nn.init.normal_(residual.weight, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings excluded by default (as nanoGPT reports)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.pos_emb is not None:
            n -= self.pos_emb.weight.numel()
        return n

    def new_caches(self, static: bool = False) -> list[Any]:
        """Empty decoding caches, one per layer, for `extend` (or `forward(..., caches=...)`).
        `static=True`: the fixed-shape caches of compiled decoding (`new_static_cache`); a
        layer without one raises `StaticCacheError` naming its variant."""
        if not static:
            return [block.attn.new_cache() for block in self.blocks]
        caches = []
        for index, block in enumerate(self.blocks):
            cache = block.attn.new_static_cache()
            if cache is None:
                raise StaticCacheError(
                    f"layer {index} ({type(block.attn).__name__}"
                    f"{', short_conv' if block.attn.short_conv else ''}) has no fixed-shape "
                    "decoding cache; compiled decoding supports softmax attention with a full "
                    "KV cache (vanilla, gqa, mqa, rotary, alibi, sparse) and the kernel family "
                    "(linear, performer, based)"
                )
            caches.append(cache)
        return caches

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        return_attn: bool = False,
        caches: list[Any] | None = None,
    ) -> GPTOutput:
        """idx (B, T) token ids -> logits (B, T, V); loss when `targets` (B, T) is given.

        Targets equal to -100 are ignored by the loss (padding, prompts of synthetic tasks).
        With `caches` (from `new_caches`), idx continues the sequence the caches have seen and
        holds only the new tokens: positions start at the caches' length.
        """
        if caches is not None:
            logits = F.linear(self.extend(idx, caches), self.lm_head.weight)
            attentions = [None] * len(self.blocks) if return_attn else None
        else:
            logits, attentions = self._full_forward(idx, return_attn)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return GPTOutput(logits, loss, attentions)

    def _full_forward(self, idx: Tensor, return_attn: bool) -> tuple[Tensor, list[Tensor] | None]:
        """Logits (B, T, V) of a sequence from its start, and the per-layer weights if asked."""
        T = idx.size(1)
        if self.block_size < T:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}")
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[:T]  # rows 0..T-1: no index tensor
        x = self.drop(x)
        attentions = [] if return_attn else None
        for block in self.blocks:
            x, att = block(x, return_attn=return_attn)
            if attentions is not None:
                attentions.append(att)
        return self.lm_head(self.ln_f(x)), attentions

    def extend(self, idx: Tensor, caches: list[Any], positions: Tensor | None = None) -> Tensor:
        """Decoding: new tokens idx (B, T) continuing the sequence the caches have seen (their
        positions start at the caches' length) -> final hidden states (B, T, C), after ln_f;
        advances the caches. `Block.step` all the way (bare functional ops). `positions` (T,):
        the positions as a tensor, for the compiled step (`new_caches(static=True)`; its caller
        checks them against block_size)."""
        T = idx.size(1)
        rows: slice | Tensor
        if positions is None:
            start = caches[0].length
            if self.block_size < start + T:
                raise ValueError(
                    f"sequence length {start + T} exceeds block_size {self.block_size}"
                )
            rows = slice(start, start + T)  # rows start..: no index tensor
        else:
            rows = positions
        x = F.embedding(idx, self.tok_emb.weight)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[rows]
        if self.training:
            x = self.drop(x)
        for block, cache in zip(self.blocks, caches, strict=True):
            x = block.step(x, cache, positions)
        return layer_norm(self.ln_f, x)

    @torch.inference_mode()  # no autograd bookkeeping per op, which decoding is made of
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        incremental: bool = True,
        top_p: float | None = None,
        min_p: float | None = None,
        compile: bool = False,
    ) -> Tensor:
        """Append `max_new_tokens` sampled tokens to idx (B, T) (model/sampling.py says how:
        temperature 0 is greedy); the context is cropped to the last `block_size` tokens.
        `incremental=False` recomputes the whole cropped context for every token (the
        reference); `compile=True` runs each one-token step compiled (`IncrementalDecoder`)."""
        sampler = Sampler(temperature, top_k, top_p, min_p)
        new = list(self.stream(idx, max_new_tokens, sampler, generator, incremental, compile))
        return torch.cat([idx, *new], dim=1)

    @torch.inference_mode()
    def stream(
        self,
        idx: Tensor,
        max_new_tokens: int,
        sampler: Sampler,
        generator: torch.Generator | None = None,
        incremental: bool = True,
        compile: bool = False,
    ) -> Iterator[Tensor]:
        """The next tokens (B, 1), one at a time as they are drawn: for printing as they come
        and for stopping early (the caller simply stops iterating)."""
        if max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        next_logits = IncrementalDecoder(self, compile) if incremental else self.full_logits
        for _ in range(max_new_tokens):
            next_id = sampler(next_logits(idx), generator)  # (B, 1)
            idx = torch.cat((idx, next_id), dim=1)
            yield next_id

    def full_logits(self, idx: Tensor) -> Tensor:
        """Next-token logits (B, V) by full recomputation of the cropped context."""
        return self(idx[:, -self.block_size :]).logits[:, -1, :]
