"""Every GPU check in one command, sized for one short device run.

    python -m attn_lightning.bench gpu [--parts model,attention,fla] [--output-dir DIR]
        [--device cpu --smoke] [overrides for the model part]

1. model: the baby GPT (`experiment=shakespeare_baby`, bf16) eager and `compile=true`, in
   alternating blocks (bench compile's measurement): tokens/s, MFU against the device's
   datasheet peak (analysis/flops.py), compilation seconds;
2. attention: the attention cores on CUDA in bf16 at doubling lengths up to T = 65536 (bench
   attention's sweep: time, memory, agreement with softmax; a length past the time limit or the
   memory estimate is skipped, not run);
3. fla: with flash-linear-attention installed (the `gpu` extra), its Triton kernels on the
   inputs of our linear-family variants and FoX (_fla_kernels.py), each core on the shapes its
   `attend` takes: output cosine with our PyTorch path (the check that both compute one
   function) and fwd+bwd time, ours / theirs.

Each part prints its own table and its seconds; a part that fails prints its error and the
others still run (a device run is too scarce to lose to one broken part). Without a CUDA device
it stops in one line, unless `--device cpu --smoke`: the same code at toy sizes, to test the
script before device time is spent on it.

The model part reads TinyShakespeare; on a device machine without internet, put the text in an
ignored folder of the checkout (outputs/data/tinyshakespeare.txt), carry it with the run and set
ATTN_LIGHTNING_DATA_DIR=outputs/data. attn_lightning/bench/README.md keeps the figures.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from attn_lightning.analysis.flops import known_peak_flops, mfu
from attn_lightning.attention.registry import build_attention
from attn_lightning.bench import compile as compile_bench
from attn_lightning.bench._fla_kernels import FLA_VARIANTS, fla_core
from attn_lightning.bench.attention.cli import main as attention_main
from attn_lightning.bench.attention.sweep import row_cosine
from attn_lightning.bench.attention.timing import time_calls
from attn_lightning.errors import UserError, exit_on_user_error, find_user_error

PARTS = ("model", "attention", "fla")
ATTENTION_VARIANTS = (
    "vanilla,sliding_window,linear,performer,based,retention,gla,deltanet,gated_deltanet"
)
SMOKE_MODEL = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "data.block_size=32",
    "data.batch_size=4",
]


def model_part(args: argparse.Namespace) -> None:
    """Baby GPT tokens/s and MFU, eager against compile=true."""
    if args.smoke:
        overrides, steps, block, warmup = [*SMOKE_MODEL, "trainer=cpu"], 8, 2, 1
    else:
        overrides, steps, block, warmup = ["experiment=shakespeare_baby"], 300, 20, 2
    result = compile_bench.measure([*overrides, *args.overrides], steps, block, warmup)
    device = result["device"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = known_peak_flops(name, result["precision"])
    print(f"model: {' '.join(overrides + args.overrides)} on {name}, {result['precision']}")
    print("| loop | tokens/s | MFU | first step (s) | final loss |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for loop in compile_bench.LOOPS:
        r = result[loop]
        use = mfu(r["tokens_per_sec"], result["flops_per_token"], peak) if peak else None
        print(
            f"| {loop} | {r['tokens_per_sec']:,.0f} | "
            f"{f'{100 * use:.1f}%' if use is not None else 'no peak known'} | "
            f"{r['first_step_sec']:.1f} | {r['final_loss']:.4f} |"
        )
    print(
        compile_bench.ratio_line(
            "compiled/eager tokens/s",
            result["compiled"]["tokens_per_sec"] / result["eager"]["tokens_per_sec"],
            result["pair_ratios"],
        )
    )


def attention_part(args: argparse.Namespace) -> None:
    """The attention sweep on the device in bf16 up to T = 65536."""
    out = str(args.output_dir / "attention")
    if args.smoke:
        sweep = ["--variants", "vanilla,linear", "--lengths", "16,32", "--dtype", "float32"]
    else:
        sweep = ["--variants", ATTENTION_VARIANTS, "--max-length", "65536", "--dtype", "bfloat16"]
    attention_main(
        [
            *sweep,
            "--device",
            args.device,
            "--repeats",
            "3",
            "--time-limit",
            "20",
            "--output-dir",
            out,
        ]
    )


def _fwd_bwd_ms(call: Callable[[], torch.Tensor], leaves: Sequence[torch.Tensor], device) -> float:
    """Median ms of a forward + backward after one untimed call (where Triton compiles)."""

    def step() -> None:
        for leaf in leaves:
            leaf.grad = None
        call().float().square().mean().backward()

    return 1000 * statistics.median(time_calls(step, 1, 5, math.inf, device))


FLA_SHAPE = (8, 4, 4096, 64)  # B, H, T, head dim
FLA_DTYPE = torch.bfloat16  # the inputs and autocast dtype of both timed calls


def fla_row(name: str, device: torch.device) -> str:
    """One variant's table row: ours and fla's fwd+bwd ms in bf16, and the output cosine of
    fla (bf16) with ours (fp32) on the same inputs and gates."""
    B, H, T, D = FLA_SHAPE
    torch.manual_seed(0)
    module = build_attention(name, n_embd=H * D, n_head=H, block_size=T).to(device)
    theirs = fla_core(name, module)
    x = torch.randn(B, T, H * D, device=device)
    with torch.no_grad():  # what `attend` takes: (B, H, T, D), gated_deltaproduct's sub-steps
        shapes = [t.shape for t in module.core_inputs(*module.split_heads(x))]
    q, k, v = (torch.randn(shape, device=device) for shape in shapes)
    leaves = [t.to(FLA_DTYPE).requires_grad_() for t in (q, k, v)]
    x_low = x.to(FLA_DTYPE)

    def ours() -> torch.Tensor:
        with torch.autocast(device.type, FLA_DTYPE):
            return module.attend(*leaves, module.gates(x_low))

    def fla() -> torch.Tensor:
        with torch.autocast(device.type, FLA_DTYPE):
            return theirs(*leaves, module.gates(x_low))

    with torch.no_grad():
        reference = module.attend(q, k, v, module.gates(x)).float()  # ours in fp32
        cosine = row_cosine(reference, fla())
    ours_ms, fla_ms = _fwd_bwd_ms(ours, leaves, device), _fwd_bwd_ms(fla, leaves, device)
    return f"| {name} | {ours_ms:,.2f} | {fla_ms:,.2f} | {ours_ms / fla_ms:.2f} | {cosine:.5f} |"


def fla_part(args: argparse.Namespace) -> None:
    """fla's Triton kernels against our PyTorch path, same inputs, bf16."""
    device = torch.device(args.device)
    if device.type != "cuda":
        print("fla: skipped (its Triton kernels need CUDA)")
        return
    B, H, T, D = FLA_SHAPE
    print(f"fla: fwd + bwd, B={B}, H={H}, T={T}, head dim {D}, bfloat16, median of 5")
    print("| variant | ours (ms) | fla (ms) | ours / fla | output cosine (ours in fp32) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in FLA_VARIANTS:
        try:
            print(fla_row(name, device), flush=True)
        except Exception as error:  # not installed, or a kernel that does not run: say so
            print(f"| {name} | failed: {type(error).__name__}: {str(error)[:200]} | | | |")


RUNNERS = {"model": model_part, "attention": attention_part, "fla": fla_part}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m attn_lightning.bench gpu",
        description="Every GPU check (model tokens/s and MFU eager vs compiled, the attention "
        "sweep to T = 65536 in bf16, fla's Triton kernels against ours) in one run.",
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="(default %(default)s)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, to test the script")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench_gpu"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the model part")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown or not args.parts:
        raise UserError(
            f"--parts: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(PARTS)}"
        )
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "bench gpu needs a CUDA device (torch.cuda.is_available() is False); "
            "to test the script here: --device cpu --smoke"
        )
    if torch.device(args.device).type == "cpu" and not args.smoke:
        raise UserError("--device cpu runs only with --smoke (toy sizes): the figures are GPU ones")
    return args


@exit_on_user_error
def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    failed = []
    for part in args.parts:
        start = time.perf_counter()
        print(f"\n## {part}\n", flush=True)
        try:
            RUNNERS[part](args)
        except (Exception, SystemExit) as error:  # one broken part must not lose the others
            failed.append(part)
            user_error = find_user_error(error) if isinstance(error, Exception) else None
            print(f"{part}: failed: {user_error or f'{type(error).__name__}: {error}'}")
            if user_error is None:
                traceback.print_exc(file=sys.stderr)
        print(f"({part}: {time.perf_counter() - start:.0f} s)", flush=True)
    if failed:
        raise UserError(f"bench gpu: part(s) failed: {', '.join(failed)} (their errors above)")
