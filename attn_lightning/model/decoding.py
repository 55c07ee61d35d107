"""Incremental decoding: next-token logits of a growing sequence from per-layer caches.

Each layer keeps a cache of its own kind (keys/values for the softmax family, a recurrent state
for kernel attention; see attention/base.py) and `IncrementalDecoder` feeds the model only the
new tokens. Its logits equal full recomputation (`model(idx[:, -block_size:])`) at every step.
Past block_size, full recomputation crops the context, which shifts every position (learned
embeddings, RoPE phases, segment boundaries) and changes every hidden state of a multi-layer
model, so no cache survives the slide: once the window is full the decoder computes the cropped
window in full (one forward of block_size tokens per new token, as full recomputation does, and
no cache is built that the next slide would discard). Incremental decoding pays off while the
context fits in block_size.

`compile=True` runs each one-token step as one torch.compile'd call of that same step
(`one_token_logits`), on caches of fixed shapes (`GPT.new_caches(static=True)`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attn_lightning.errors import ConfigError

if TYPE_CHECKING:  # gpt.py imports this module: the model is only a type here
    from attn_lightning.model.gpt import GPT


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
    `cpp_wrapper`: inductor writes the code that calls the step's kernels and allocates its
    buffers in C++ rather than Python, and that calling code is most of a one-token step of a
    small model (compiling takes longer, once)."""
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
    nothing) where this torch has none; looked up only when an exception is raised: importing
    torch._dynamo is slow, and every user of the model would pay for it."""
    return getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", ())


class IncrementalDecoder:
    """Next-token logits for a growing sequence, reusing per-layer caches.

    Call it with the whole sequence so far (B, T); it feeds the model only the tokens its caches
    have not seen. Equal to `model.full_logits(idx)` at every call: while the sequence is shorter
    than block_size the caches extend it; from then on the cropped window starts at a new token
    at every step and is recomputed in full (see the module docstring).

    `compile=True`: each one-token step runs `one_token_logits` compiled (one compiled call
    per token instead of dozens of dispatched ops), on fixed-shape caches
    (`new_caches(static=True)`: the KV cache preallocated to block_size, attended over the slots
    held, the kernel family's state as it is); the prefill and any several-token extension
    stay eager, on the same caches. The first step compiles. Variants without a fixed-shape
    cache (sliding window, QKV-cache variants, DeltaNet, GLA, retention, short_conv layers)
    decode eagerly, with a one-line warning naming the layer.

    Guards: the first compiled step on new caches runs all of dynamo's guards (which compile,
    or pick the graph made for this model, batch size and caches). Later steps on the same
    caches change nothing a guard checks but the number of slots, a dynamic size of the graph,
    so they run under `torch.compiler.set_stance(skip_guard_eval_unsafe=True)`, which checks
    only the guards that tell the compiled graphs apart.
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
                # a compile may follow: n is traced as a size (marking costs time per call, so
                # only here: a graph compiled for every n takes any later slots unmarked)
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
