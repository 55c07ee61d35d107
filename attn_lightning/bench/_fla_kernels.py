"""flash-linear-attention's Triton kernels (the `gpu` extra) on the inputs of our linear-family
variants and of FoX: for a variant, a function (q, k, v, gates) -> output in our (B, H, T, D)
layout that computes the variant's attention core (what its `attend` computes, on what `attend`
takes) with fla's kernel, or an ImportError saying why there is none.

Conventions mapped (fla: (B, T, H, ·) tensors, log-space decays, q scaled by `scale`): our
feature maps and gates are applied first, with the variant's own methods, and fla gets the
numbers they give with its in-kernel activations off (no `use_qk_l2norm_in_kernel`,
`use_gate_in_kernel`, `use_beta_sigmoid_in_kernel`) and scale = 1 where our core scales q
itself or not at all, so both compute the same function of the same numbers; `bench gpu` checks
that they do before it times them.

- linear: elu + 1 features, normalised (`chunk_linear_attn`);
- deltanet, gated_deltanet, kda: unit SiLU features, β, log α per head and token
  (`chunk_delta_rule`, `chunk_gated_delta_rule`) or per key channel (`chunk_kda`, g (B, T, H, D));
- gla, retention: the D^-1/2 query scale, log α per channel (`chunk_gla`) or per head
  (`chunk_simple_gla`);
- mamba2: SSD as scalar-decay GLA on q = C, k = dt B, v = x, g = log α = A dt
  (`chunk_simple_gla`; fla-core has no SSD op), plus the skip D x added outside it;
- gated_deltaproduct: `chunk_gated_delta_product` with num_householder = n_h: the sub-steps'
  keys, values and β (B, n_h T, H, ·) in order (t, j), as `core_inputs` gives them, one log α
  per token (B, T, H); fla's kernel refuses float32 (bf16 or fp16 only);
- rwkv7: `chunk_rwkv7` (fla's DPLR rule) on r = q, w = log w, k = k̃, a = -κ̂, b = κ̂ ⊙ a_t
  (`dplr_inputs`), q unscaled;
- fox: `parallel_forgetting_attn` with g = log f per head and token (it sums them itself) and
  the softmax scale D^-1/2; a head dim of at most 256 (one key block in fla's kernel).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from attn_lightning.attention.base import CausalSelfAttention

Core = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]
FLA_VARIANTS = (
    "linear",
    "deltanet",
    "gated_deltanet",
    "kda",
    "gla",
    "retention",
    "mamba2",
    "gated_deltaproduct",
    "rwkv7",
    "fox",
)


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
    if name in ("deltanet", "gated_deltanet", "kda"):
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        from fla.ops.kda import chunk_kda

        def delta(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None) -> Tensor:
            beta, log_alpha = module.write_and_decay(g, q)  # type: ignore[operator]
            fq, fk = module.features(q), module.features(k)  # type: ignore[operator]
            args = (_bthd(fq), _bthd(fk), _bthd(v))
            if log_alpha is None:
                out = chunk_delta_rule(*args, beta=_bthd(beta), scale=1.0)
            elif log_alpha.dim() == 4:  # kda: log α per key channel (B, H, T, D)
                out = chunk_kda(*args, g=_bthd(log_alpha), beta=_bthd(beta), scale=1.0)
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
    if name == "mamba2":
        from fla.ops.simple_gla import chunk_simple_gla

        def ssd(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None) -> Tensor:
            keys, log_alpha = module.ssd_keys(k, g)  # type: ignore[operator]  dt B, log α
            args = (_bthd(q), _bthd(keys), _bthd(v))  # C, dt B, x
            out = chunk_simple_gla(*args, g=_bthd(log_alpha.squeeze(-1)), scale=1.0)
            return out[0].transpose(1, 2) + module.skip(v)  # type: ignore[operator]

        return ssd
    if name == "gated_deltaproduct":
        from fla.ops.gated_delta_product import chunk_gated_delta_product

        def product(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None) -> Tensor:
            # q (B, H, T, D); k, v the sub-steps (B, H, n_h T, D) in order (t, j)
            n_h = module.num_householder
            beta, log_alpha = module._substep_gates(g, k)  # type: ignore[operator]  (B, H, n_h T)
            fq, fk = module.features(q), module.features(k)  # type: ignore[operator]
            out = chunk_gated_delta_product(
                _bthd(fq),
                _bthd(fk),
                _bthd(v),
                g=_bthd(log_alpha[..., ::n_h]),  # log α of each token, on its first sub-step
                beta=_bthd(beta),
                num_householder=n_h,
                scale=1.0,
            )
            return out[0].transpose(1, 2)

        return product
    if name == "rwkv7":
        from fla.ops.rwkv7 import chunk_rwkv7

        def dplr(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None) -> Tensor:
            inputs = module.dplr_inputs(k, g)  # type: ignore[operator]  k̃, -κ̂, κ̂ ⊙ a_t, log w
            key, a, b, log_w = (t.to(q.dtype) for t in inputs)  # one dtype, as fla's layer gives
            out = chunk_rwkv7(
                r=_bthd(q),
                w=_bthd(log_w),
                k=_bthd(key),
                v=_bthd(v),
                a=_bthd(a),
                b=_bthd(b),
                scale=1.0,
            )
            return out[0].transpose(1, 2)

        return dplr
    if name == "fox":
        from fla.ops.forgetting_attn import parallel_forgetting_attn

        def forgetting(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None) -> Tensor:
            log_f = _bthd(g[..., 0])  # log f (B, T, H): the kernel sums it
            out = parallel_forgetting_attn(
                _bthd(q), _bthd(k), _bthd(v), g=log_f, scale=q.size(-1) ** -0.5
            )
            return out.transpose(1, 2)

        return forgetting
    raise ImportError(f"no fla kernel is mapped for {name}")
