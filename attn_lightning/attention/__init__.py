"""Attention variants. `base.py` holds what they share; each other file is one variant."""

from attn_lightning.attention.base import CausalSelfAttention

__all__ = ["CausalSelfAttention"]
