"""Head and layer ablation: the validation loss with one head's (or one layer's) attention
output zeroed.

A head's output is its slice of the concatenated head outputs that enter the output projection
`attn.proj` (B, T, H * D); a forward pre-hook on `attn.proj` zeroes that slice. The residual
stream, the other heads and every other layer run unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn


@contextmanager
def ablate(model: nn.Module, layer: int, heads: Sequence[int] | None = None) -> Iterator[None]:
    """Zero the outputs of `heads` (all heads when None) of block `layer` inside the context;
    the hook is removed on exit, leaving the model as it was."""
    attn = model.blocks[layer].attn
    n_head, head_dim = attn.n_head, attn.head_dim
    heads = range(n_head) if heads is None else heads
    for h in heads:
        if not 0 <= h < n_head:
            raise ValueError(f"layer {layer} has heads 0..{n_head - 1}, got head {h}")
    keep = torch.ones(n_head, head_dim)
    keep[list(heads)] = 0.0
    keep = keep.flatten()  # (H * D,)

    def zero_heads(_module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        y = args[0]  # (B, T, H * D): head h at [h * D, (h + 1) * D)
        return (y * keep.to(y), *args[1:])

    hook = attn.proj.register_forward_pre_hook(zero_heads)
    try:
        yield
    finally:
        hook.remove()


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Cross-entropy per target token over all batches (targets -100 skipped)."""
    total, count = 0.0, 0
    for x, y in batches:
        n = int((y != -100).sum())
        total += float(model(x, y).loss) * n
        count += n
    if count == 0:
        raise ValueError("no target tokens in the evaluation batches")
    return total / count


class Ablation(NamedTuple):
    base_loss: float  # nothing ablated
    head_loss: Tensor  # (L, H): loss with head h of layer l zeroed
    layer_loss: Tensor  # (L,): loss with every head of layer l zeroed

    def ranked_heads(self) -> list[tuple[int, int, float]]:
        """(layer, head, loss increase), most important (largest increase) first."""
        increase = self.head_loss - self.base_loss
        order = increase.flatten().argsort(descending=True).tolist()
        H = increase.size(1)
        return [(i // H, i % H, float(increase.flatten()[i])) for i in order]


@torch.no_grad()
def ablation_study(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]]) -> Ablation:
    """Loss with nothing ablated, each head ablated, and each whole layer ablated, in eval mode
    (restored after). Costs (L * H + L + 1) passes over `batches`."""
    was_training = model.training
    model.eval()
    try:
        base = mean_loss(model, batches)
        n_layer, n_head = len(model.blocks), model.blocks[0].attn.n_head
        head_loss = torch.zeros(n_layer, n_head)
        layer_loss = torch.zeros(n_layer)
        for layer in range(n_layer):
            for head in range(n_head):
                with ablate(model, layer, [head]):
                    head_loss[layer, head] = mean_loss(model, batches)
            with ablate(model, layer):
                layer_loss[layer] = mean_loss(model, batches)
    finally:
        model.train(was_training)
    return Ablation(base, head_loss, layer_loss)
