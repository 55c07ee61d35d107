"""`python -m attn_lightning.bench kernels`: our linear-family cores raced against SDPA and the
public implementations (_kernel_references.py) at one shape, in one run.

Each entry is a forward + backward of the attention core only (ours:
`attend(*core_inputs(q, k, v), gates(x))`, gates included), timed in interleaved rounds after
warm-up so that machine drift hits all alike; the table gives medians, our time over theirs,
and, where both compute the same function, the mean row cosine of the two outputs on the same
inputs: our Performer given performer-pytorch's projection against its
`FastAttention(causal=True)` (the feature maps differ only by constant factors and
performer-pytorch's stabiliser, +1e-4 on every feature), and our linear attention against
fla's chunked reference on the same elu + 1 features.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.attention.registry import build_attention, variant_names
from attn_lightning.bench import _kernel_references as refs
from attn_lightning.bench._kernel_profile import breakdown_table, matmul_rates, profile_call
from attn_lightning.bench.attention.sweep import row_cosine
from attn_lightning.errors import UserError, exit_on_user_error

OURS = (
    "linear",
    "performer",
    "deltanet",
    "gated_deltanet",
    "gla",
    "retention",
    "mamba2",
    "kda",
    "gated_deltaproduct",
    "rwkv7",
)
PROFILED_CHUNK = 64  # the chunk size of the chunked kernels' configs, for the matmul rate


@dataclass
class Entry:
    """One timed call; `versus` names the ours-entry it is compared with."""

    label: str
    call: Callable[[], None]
    versus: str | None = None
    cosine: float | None = None
    note: str = ""
    seconds: list[float] | None = None

    @property
    def ms(self) -> float:
        return 1000 * statistics.median(self.seconds or [float("nan")])


def fwd_bwd(forward: Callable[[], Tensor], leaves: Sequence[Tensor], grad: Tensor):
    def call() -> None:
        for leaf in leaves:
            leaf.grad = None
        forward().backward(grad)

    return call


def core_leaves(
    module: CausalSelfAttention, x: Tensor, leaves: list[Tensor], seed: int
) -> list[Tensor]:
    """The shared q, k, v leaves (B, H, T, D), or, for a core whose `split_heads` shapes them
    otherwise (gated_deltaproduct's n_h keys and values per token, grouped k/v heads), leaves
    of the shapes it gives, standard normal too."""
    with torch.no_grad():
        shapes = [t.shape for t in module.split_heads(x)]
    if shapes == [leaf.shape for leaf in leaves]:
        return leaves
    generator = torch.Generator().manual_seed(seed + 1)
    return [torch.randn(shape, generator=generator).requires_grad_() for shape in shapes]


def build_entries(args: argparse.Namespace, log: Callable[[str], None]) -> list[Entry]:
    B, H, T, D = args.batch_size, args.heads, args.length, args.head_dim
    generator = torch.Generator().manual_seed(args.seed)
    q, k, v, grad = (torch.randn(B, H, T, D, generator=generator) for _ in range(4))
    x = torch.randn(B, T, H * D, generator=generator)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    entries = [
        Entry(
            "SDPA (is_causal)",
            fwd_bwd(lambda: F.scaled_dot_product_attention(*leaves, is_causal=True), leaves, grad),
        )
    ]
    modules = {}
    for name in args.variants:
        torch.manual_seed(args.seed)
        module = build_attention(name, n_embd=H * D, n_head=H, block_size=T).train()
        modules[name] = module
        params = list(module.parameters())
        own = core_leaves(module, x, leaves, args.seed)
        entries.append(
            Entry(
                f"ours: {name}",
                fwd_bwd(
                    lambda m=module, own=own: m.attend(*m.core_inputs(*own), m.gates(x)),
                    own + params,
                    grad,
                ),
            )
        )

    def reference(label: str, versus: str, make: Callable[[], Entry | None]) -> None:
        if versus not in modules:
            return
        try:
            entry = make()
            if entry is not None:
                entry.call()  # a reference that cannot run this shape fails here, not mid-race
        except Exception as error:  # not installed, or does not run here: say so, go on
            log(f"{label}: skipped ({type(error).__name__}: {error})")
            return
        if entry is not None:
            entry.versus = f"ours: {versus}"
            entries.append(entry)

    def performer() -> Entry:
        theirs, projection = refs.performer_pytorch(D, args.performer_features, args.seed)
        ours = build_attention(
            "performer", n_embd=H * D, n_head=H, block_size=T, nb_features=projection.size(0)
        )
        ours.projection.copy_(projection)
        same_function = refs.performer_pytorch_without_stabiliser(projection)
        with torch.no_grad():
            ours_out = ours.attend(q, k, v)
            as_published = row_cosine(ours_out, theirs(q, k, v))
            stabiliser_off = row_cosine(ours_out, same_function(q, k, v))
        log(
            f"performer-pytorch agreement (output cosine): {stabiliser_off:.5f} with its "
            f"feature stabiliser eps set to 0 (the same function), {as_published:.5f} as "
            "published (eps = 1e-4 added to every feature)"
        )
        return Entry(
            "performer-pytorch FastAttention(causal=True)",
            fwd_bwd(lambda: theirs(*leaves), leaves, grad),
            cosine=stabiliser_off,
            note=f"cosine with its eps = 0; {as_published:.3f} with its eps = 1e-4",
        )

    def linear_attention_transformer() -> Entry:
        attn = refs.linear_attention_transformer()
        return Entry(
            "linear-attention-transformer causal_linear_attn (bucketed: not exact)",
            fwd_bwd(lambda: attn(*leaves), leaves, grad),
        )

    def fla_linear() -> Entry:
        attn = refs.fla_linear()
        with torch.no_grad():
            cosine = row_cosine(
                modules["linear"].attend(q, k, v), attn(F.elu(q) + 1, F.elu(k) + 1, v)
            )
        return Entry(
            "fla naive_chunk_linear_attn (normalised, elu + 1 features)",
            fwd_bwd(
                lambda: attn(F.elu(leaves[0]) + 1, F.elu(leaves[1]) + 1, leaves[2]), leaves, grad
            ),
            cosine=cosine,
        )

    unit = lambda t: F.normalize(F.silu(t), dim=-1)  # noqa: E731  the delta rule's φ
    beta = torch.rand(B, H, T, generator=generator)
    log_alpha = -torch.rand(B, H, T, generator=generator) * 0.1

    def fla_delta_rule() -> Entry:
        attn = refs.fla_delta_rule()
        return Entry(
            "fla delta_rule_chunkwise",
            fwd_bwd(
                lambda: attn(unit(leaves[0]), unit(leaves[1]), leaves[2], beta)[0], leaves, grad
            ),
        )

    def fla_gated_delta_rule() -> Entry:
        attn = refs.fla_gated_delta_rule()
        call = lambda: attn(unit(leaves[0]), unit(leaves[1]), leaves[2], log_alpha, beta)  # noqa: E731
        return Entry("fla naive_chunk_gated_delta_rule", fwd_bwd(call, leaves, grad))

    def fla_simple_gla() -> Entry:
        attn = refs.fla_simple_gla()
        return Entry(
            "fla naive_chunk_simple_gla (scalar decay)",
            fwd_bwd(lambda: attn(*leaves, log_alpha), leaves, grad),
        )

    reference("performer-pytorch", "performer", performer)
    reference("linear-attention-transformer", "linear", linear_attention_transformer)
    reference("fla linear_attn", "linear", fla_linear)
    reference("fla delta_rule", "deltanet", fla_delta_rule)
    reference("fla gated_delta_rule", "gated_deltanet", fla_gated_delta_rule)
    reference("fla simple_gla", "retention", fla_simple_gla)
    return entries


def race(entries: Sequence[Entry], warmup: int, repeats: int) -> None:
    """Warm-up calls, then `repeats` rounds timing every entry once per round."""
    for entry in entries:
        for _ in range(warmup):
            entry.call()
        entry.seconds = []
    for _ in range(repeats):
        for entry in entries:
            begin = time.perf_counter()
            entry.call()
            entry.seconds.append(time.perf_counter() - begin)  # type: ignore[union-attr]


def table(entries: Sequence[Entry]) -> str:
    """Markdown, a row per entry: its median, its time over the first entry's (SDPA: a
    machine-independent figure) and, against the ours-entry it races, ours / theirs."""
    by_label = {e.label: e for e in entries}
    lines = [
        f"| core | ms | / {entries[0].label} | compared with | ours / theirs | output cosine "
        "| note |",
        "| --- | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for e in entries:
        ratio = f"{by_label[e.versus].ms / e.ms:.3g}" if e.versus else ""
        cosine = f"{e.cosine:.5f}" if e.cosine is not None else ""
        lines.append(
            f"| {e.label} | {e.ms:,.1f} | {e.ms / entries[0].ms:.3f} | {e.versus or ''} | "
            f"{ratio} | {cosine} | {e.note} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m attn_lightning.bench kernels",
        description="Forward + backward of our linear-family attention cores against SDPA and "
        "the public implementations installed (pip install -e '.[bench]'), in one run.",
    )
    add = parser.add_argument
    add("--variants", default=",".join(OURS), help="comma-separated (default %(default)s)")
    add("--batch-size", type=int, default=8, help="(default %(default)s)")
    add("--heads", type=int, default=4, help="(default %(default)s)")
    add("--length", type=int, default=4096, help="(default %(default)s)")
    add("--head-dim", type=int, default=32, help="(default %(default)s)")
    add("--performer-features", type=int, help="default: performer-pytorch's, d ln d")
    add("--warmup", type=int, default=1, help="untimed calls of each (default %(default)s)")
    add("--repeats", type=int, default=5, help="timed rounds (default %(default)s)")
    add("--seed", type=int, default=0, help="(default %(default)s)")
    add(
        "--profile",
        action="store_true",
        help="then profile each of our cores once: where its time goes, its matmul work and the "
        "time that work takes at the matmul rate measured in the same run",
    )
    args = parser.parse_args(argv)
    args.variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = [v for v in args.variants if v not in variant_names()]
    if unknown or not args.variants:
        raise UserError(
            f"--variants: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(variant_names())}"
        )
    for name in ("batch_size", "heads", "length", "head_dim", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        raise UserError("--warmup must be >= 0")
    return args


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    entries = build_entries(args, log)
    race(entries, args.warmup, args.repeats)
    shape = f"B={args.batch_size}, H={args.heads}, T={args.length}, head dim {args.head_dim}"
    print(
        f"forward + backward, {shape}, float32, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}\n"
    )
    print(table(entries))
    if args.profile:
        peak, chunked = matmul_rates(PROFILED_CHUNK, args.head_dim)
        print(
            f"\nmatmul rate in this run: {peak:.0f} GFLOP/s (1024 x 1024 x 1024), "
            f"{chunked:.0f} GFLOP/s (2048 products ({PROFILED_CHUNK} x {args.head_dim})"
            f"({args.head_dim} x {PROFILED_CHUNK}), a chunked kernel's shape); one profiled "
            "forward + backward each, shares of its op time:\n"
        )
        profiled = [e for e in entries if e.label.startswith("ours: ")]
        rows = [(e.label, e.ms, profile_call(e.call)) for e in profiled]
        print(breakdown_table(rows, peak, chunked))
