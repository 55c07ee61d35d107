"""Which (query, key) pairs an attention layer can connect, read from its code by gradients.

Query i is connected to key j when the layer's output at position i depends on its input at
position j: d y_i / d x_j != 0 for random inputs and weights. This runs the variant's own fast
path (`attend`, chunks and segments included), so the mask shows what the code does, not what a
docstring claims.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def connectivity(attn: nn.Module, T: int, n_embd: int, seed: int = 0) -> Tensor:
    """(T, T) bool: True where output position i (row) depends on input position j (column)."""
    return dependence(attn, T, n_embd, seed) > 0


def dependence(attn: nn.Module, T: int, n_embd: int, seed: int = 0) -> Tensor:
    """(T, T) float: |d y_i / d x_j| summed over channels, output position i (row), input
    position j (column); the contract check reads how much a query reads a later key here.

    One backward pass: a batch of T copies of one random sequence, copy i's gradient taken from
    its output at position i alone."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, T, n_embd, generator=generator).repeat(T, 1, 1).requires_grad_(True)
    was_training = attn.training
    attn.eval()
    try:
        y, _ = attn(x)  # (T, T, C): copy b, position t
        rows = torch.arange(T)
        (grad,) = torch.autograd.grad(y[rows, rows].sum(), x)  # copy i: d y_i / d x
    finally:
        attn.train(was_training)
    return grad.abs().sum(-1)  # (T, T): row i from copy i
