"""Run token ids through a GPT and collect, per layer, the attention matrix the variant applied
and exact softmax attention computed from the same q and k."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from attn_lightning.analysis.stats import exact_softmax


class LayerAttention(NamedTuple):
    applied: Tensor  # (B, H, T, T): the matrix the variant applied to v
    exact: Tensor  # (B, H, T, T): causal softmax(q k^T / sqrt(d)) with the same q, k


@torch.no_grad()
def probe(model: nn.Module, idx: Tensor) -> list[LayerAttention]:
    """One forward pass of idx (B, T) with `return_attn=True`, in eval mode (restored after).

    The input of each block's attention is caught by a forward pre-hook; `split_heads` and
    `core_inputs` turn it into the very q and k the variant used (RoPE included). A core with
    several key sub-steps per token (DeltaProduct's n_h keys, (B, H, n_h T, D)) is compared
    with softmax over each token's last sub-step key, the one its query reads at.
    """
    inputs: list[Tensor] = []
    hooks = [
        block.attn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
        for block in model.blocks
    ]
    was_training = model.training
    try:
        model.eval()
        attentions = model(idx, return_attn=True).attentions
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    layers = []
    for block, x, applied in zip(model.blocks, inputs, attentions, strict=True):
        q, k, _ = block.attn.core_inputs(*block.attn.split_heads(x))  # (B, H, T, D)
        substeps = k.size(2) // q.size(2)  # 1, or n_h keys per token in order (t, j)
        k = k[:, :, substeps - 1 :: substeps]  # (B, H, T, D)
        layers.append(LayerAttention(applied, exact_softmax(q, k)))
    return layers
