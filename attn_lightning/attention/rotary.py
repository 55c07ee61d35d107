"""RoPE attention (Su et al. 2021): softmax attention on rotated queries and keys.

    score(m, n) = <R_m q_m, R_n k_n> / sqrt(d) = <q_m, R_{n-m} k_n> / sqrt(d)

R_p rotates channel pairs by p·θ_i (rope.py), so scores depend on relative position only.
The rotation is a base option (`rope=True`) any variant may switch on; this variant is softmax
attention with it on by default, usually with `model.pos_embedding=none`. Decodes with a KV
cache of already-rotated keys.
"""

from __future__ import annotations

from typing import Any

from attn_lightning.attention.vanilla import VanillaAttention
from attn_lightning.errors import ConfigError


class RotaryAttention(VanillaAttention):
    """Causal softmax attention with rotary position embedding on q and k."""

    def __init__(self, *args: Any, rope: bool = True, **kwargs: Any) -> None:
        if not rope:
            raise ConfigError("rotary attention always applies RoPE: use attention=vanilla")
        super().__init__(*args, rope=True, **kwargs)
