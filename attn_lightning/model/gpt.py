"""A GPT whose attention is injected: token (+ learned position) embeddings, pre-LayerNorm
blocks with a GELU MLP, tied output head, GPT-2 initialisation.

The model never imports a concrete attention variant. It receives `attention`, a factory
(a class or a `functools.partial`) called once per layer as
`attention(n_embd=..., n_head=..., block_size=..., dropout=..., bias=...)`. A hybrid stack
names the exceptions in `layer_attention`, {layer index: factory}: those layers call their own
factory, the others `attention`.

Generation decodes incrementally: each layer keeps a cache of its own kind (keys/values for
the softmax family, a recurrent state for kernel attention; see attention/base.py) and
`IncrementalDecoder` feeds only the new token. Its logits equal full recomputation
(`model(idx[:, -block_size:])`) at every step. Past block_size, full recomputation crops the
context, which shifts every position (learned embeddings, RoPE phases, segment boundaries) and
changes every hidden state of a multi-layer model, so no cache survives the slide: once the
window is full the decoder computes the cropped window in full (one forward of block_size tokens
per new token, as full recomputation does, and no cache is built that the next slide would
discard). Incremental decoding pays off while the context fits in block_size.

`compile=True` (generate, stream, IncrementalDecoder) runs each one-token step as one
torch.compile'd call of that same step, on caches of fixed shapes (`new_caches(static=True)`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.errors import ConfigError
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
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, attention: CausalSelfAttention, n_embd: int, dropout: float, bias: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = attention
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: Tensor, return_attn: bool = False) -> tuple[Tensor, Tensor | None]:
        a, att = self.attn(self.ln_1(x), return_attn=return_attn)
        x = x + a
        return x + self.mlp(self.ln_2(x)), att

    def step(self, x: Tensor, cache: Any, positions: Tensor | None = None) -> Tensor:
        """Decoding: `forward` of new tokens x (B, T, C) continuing `cache`, in bare
        functional ops. Decoding one token of a small model is op-dispatch bound (each op
        costs microseconds of overhead, its arithmetic far less), so this path calls no
        submodule (no `__call__`, no hooks) and creates no tensor it does not need."""
        x = x + self.attn.step(layer_norm(self.ln_1, x), cache, positions)
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
        self.blocks = nn.ModuleList(
            Block(
                factory(
                    n_embd=n_embd, n_head=n_head, block_size=block_size, dropout=dropout, bias=bias
                ),
                n_embd,
                dropout,
                bias,
            )
            for factory in factories
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
            for residual in (block.attn.proj, block.mlp.proj):
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

    @torch.inference_mode()  # no autograd bookkeeping per op: ~12% faster decoding on CPU
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


class StaticCacheError(ConfigError):
    """A layer has no fixed-shape decoding cache, so its step cannot be compiled statically."""


def one_token_logits(model: GPT, idx: Tensor, caches: list[Any], slots: Tensor) -> Tensor:
    """The step compiled decoding compiles: one token idx (B, 1) continuing static caches
    (`new_caches(static=True)`, prefilled) -> next-token logits (B, V). `slots` (n,) are the
    positions 0..n-1 held after the token (its own is the last): the KV caches attend over n
    keys, n a dynamic size of the compiled step (one compilation for every n, and no read of
    the slots not yet written); every other tensor keeps its shape."""
    for cache in caches:
        cache.hold(slots)
    return F.linear(model.extend(idx, caches, slots[-1:])[:, -1], model.lm_head.weight)


@functools.cache
def compiled_one_token_logits() -> Callable[[GPT, Tensor, list[Any], Tensor], Tensor]:
    """`one_token_logits` through torch.compile, created once (compiled at its first call;
    another model or batch size compiles again, up to torch._dynamo's recompile limit).
    `dynamic=False`: only the size `IncrementalDecoder` marks dynamic (the slots held) varies.
    `cpp_wrapper`: inductor writes the code that calls the step's ~30 kernels and allocates its
    buffers in C++ rather than Python, which a one-token step of a small model is mostly made
    of (measured: ~1.3x the tokens/s of the Python wrapper; compiling takes longer once)."""
    options = {"cpp_wrapper": True}
    return torch.compile(one_token_logits, dynamic=False, fullgraph=True, options=options)


@functools.cache
def _skips_guard_eval() -> bool:
    """Whether this torch has `set_stance(skip_guard_eval_unsafe=...)` (2.7 on; the floor is
    2.4, where every step evaluates all its guards instead)."""
    stance = getattr(torch.compiler, "set_stance", None)
    return stance is not None and "skip_guard_eval_unsafe" in inspect.signature(stance).parameters


def differentiating_guards_only() -> contextlib.AbstractContextManager[Any]:
    """Dynamo checks only the guards that tell a function's compiled graphs apart, where torch
    can (IncrementalDecoder says when that is safe); else nothing changes."""
    if _skips_guard_eval():
        return torch.compiler.set_stance(skip_guard_eval_unsafe=True)
    return contextlib.nullcontext()


def recompile_limit_hit() -> Any:
    """torch's exception for a compiled function past its recompile limit, or () (catching
    nothing) where this torch has none; looked up only when an exception is raised, since
    importing torch._dynamo takes seconds, which every user of the model would pay."""
    return getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", ())


class IncrementalDecoder:
    """Next-token logits for a growing sequence, reusing per-layer caches.

    Call it with the whole sequence so far (B, T); it feeds the model only the tokens its caches
    have not seen. Equal to `model.full_logits(idx)` at every call: while the sequence is shorter
    than block_size the caches extend it; from then on the cropped window starts at a new token
    at every step and is recomputed in full (see the module docstring).

    `compile=True`: each one-token step runs `one_token_logits` compiled (one compiled call per
    token instead of ~90 dispatched ops), on fixed-shape caches (`new_caches(static=True)`: the
    KV cache preallocated to block_size, attended over the slots held, the kernel family's
    state as it is); the prefill and any several-token extension stay eager, on the same
    caches. The first step compiles (seconds). Variants without a fixed-shape cache (sliding
    window, QKV-cache variants, DeltaNet, GLA, retention, short_conv layers) decode eagerly,
    with a one-line warning naming the layer.

    Guards: the first compiled step on new caches runs all of dynamo's guards (which compile,
    or pick the graph made for this model, batch size and caches). Later steps on the same
    caches change nothing a guard checks but the number of slots, a dynamic size of the graph,
    so they run under `torch.compiler.set_stance(skip_guard_eval_unsafe=True)`, which checks
    only the guards that tell the compiled graphs apart (~0.2 ms less per token on this CPU).
    Not safe if the model is changed in place between steps of one sequence (a new dtype,
    train mode): start a new decoder then.
    """

    def __init__(self, model: GPT, compile: bool = False) -> None:
        self.model = model
        self.caches: list[Any] = []
        self.seen = 0  # tokens of idx covered by the caches (idx[:, :seen])
        self.compiled: Callable[[GPT, Tensor, list[Any], Tensor], Tensor] | None = None
        self.slots: Tensor | None = None  # 0..block_size-1, made with the caches (same mode)
        self.guards_checked = False
        if compile:
            try:
                model.new_caches(static=True)
            except StaticCacheError as error:
                warnings.warn(f"compile=True: {error}: decoding eagerly", stacklevel=2)
            else:
                self.compiled = compiled_one_token_logits()

    def __call__(self, idx: Tensor) -> Tensor:
        length = idx.size(1)
        # a full window slides at the next call: a cache built now would be discarded unused
        if length >= self.model.block_size:
            self.caches, self.seen = [], 0
            return self.model.full_logits(idx)
        if not 0 < self.seen < length:  # first call (or a sequence not continuing the last one)
            self.caches, self.seen = self.model.new_caches(static=self.compiled is not None), 0
            self.slots = torch.arange(self.model.block_size, device=idx.device)
            self.guards_checked = False  # new caches: the next compiled step checks its guards
        new = idx[:, self.seen :]
        if self.compiled is not None and self.seen > 0 and new.size(1) == 1:
            assert self.slots is not None
            self.seen = length
            # a fresh (B, 1): the view's strides grow with idx, and strides are guarded
            token = new.clone(memory_format=torch.contiguous_format)
            slots = self.slots[:length]
            try:
                if self.guards_checked:
                    with differentiating_guards_only():
                        return self.compiled(self.model, token, self.caches, slots)
                # a compile may follow: n is traced as a size (marking costs ~0.1 ms, so only
                # here: a graph compiled for every n takes any later slots unmarked)
                torch._dynamo.mark_dynamic(slots, 0)
                logits = self.compiled(self.model, token, self.caches, slots)
                self.guards_checked = True
                return logits
            except recompile_limit_hit():  # raised before the step ran
                warnings.warn(
                    "compile=True: torch._dynamo's recompile limit is reached (more model "
                    "shapes or batch sizes in this process than it compiles): decoding eagerly",
                    stacklevel=2,
                )
                self.compiled = None
        self.seen = length
        last = self.model.extend(new, self.caches)[:, -1]  # (B, C): only its logits are read
        return F.linear(last, self.model.lm_head.weight)
