"""flash-linear-attention's Triton kernels (the `gpu` extra) on our linear-family variants'
inputs: for a variant, a function (q, k, v, gates) -> output in our (B, H, T, D) layout that
computes the variant's attention core with fla's chunked kernel, or an ImportError saying why
there is none.

Conventions mapped (fla: (B, T, H, ·) tensors, log-space decays, q scaled by `scale`): our
feature maps and gates are applied first, with the variant's own methods (linear attention's
elu + 1, the delta rule's unit SiLU features, β and log α, GLA's and retention's log decays and
D^-1/2 query scale), and fla gets scale = 1, so both compute the same function of the same
numbers; `bench gpu` checks that they do before it times them.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from attn_lightning.attention.base import CausalSelfAttention

Core = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]
FLA_VARIANTS = ("linear", "deltanet", "gated_deltanet", "gla", "retention")


def _bthd(x: Tensor) -> Tensor:
    """(B, H, T, ...) -> fla's (B, T, H, ...)."""
    return x.transpose(1, 2).contiguous()


def fla_core(name: str, module: CausalSelfAttention) -> Core:
    """fla's kernel for variant `name` as a core of (q, k, v, gates), all (B, H, T, ·)."""
    import fla.ops  # noqa: F401  needs Triton: no CPU build

    if name == "linear":
        from fla.ops.linear_attn import chunk_linear_attn

        def linear(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None) -> Tensor:
            fq, fk = module.features(q, True), module.features(k, False)  # type: ignore[operator]
            out = chunk_linear_attn(_bthd(fq), _bthd(fk), _bthd(v), scale=1.0, normalize=True)
            return out[0].transpose(1, 2)

        return linear
    if name in ("deltanet", "gated_deltanet"):
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        def delta(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None) -> Tensor:
            beta, log_alpha = module.write_and_decay(g, q)  # type: ignore[operator]
            fq, fk = module.features(q), module.features(k)  # type: ignore[operator]
            args = (_bthd(fq), _bthd(fk), _bthd(v))
            if log_alpha is None:
                out = chunk_delta_rule(*args, beta=_bthd(beta), scale=1.0)
            else:
                out = chunk_gated_delta_rule(*args, g=_bthd(log_alpha), beta=_bthd(beta), scale=1.0)
            return out[0].transpose(1, 2)

        return delta
    if name in ("gla", "retention"):
        from fla.ops.gla import chunk_gla
        from fla.ops.simple_gla import chunk_simple_gla

        def decay(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None) -> Tensor:
            log_decay = g.to(q.dtype)  # a decay core's gates are log α (B, H, T, 1 or D)
            args = (_bthd(module.scale(q)), _bthd(k), _bthd(v))  # type: ignore[operator]
            if log_decay.size(-1) == 1:  # a scalar decay per head and token
                out = chunk_simple_gla(*args, g=_bthd(log_decay.squeeze(-1)), scale=1.0)
            else:
                out = chunk_gla(*args, g=_bthd(log_decay), scale=1.0)
            return out[0].transpose(1, 2)

        return decay
    raise ImportError(f"no fla kernel is mapped for {name}")
