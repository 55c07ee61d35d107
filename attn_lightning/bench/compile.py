"""Eager against `compile=true` (torch.compile of the GPT's training forward): same model,
same batches, same updates, in one run.

    python -m attn_lightning.bench compile [--steps N] [--block N] [--warmup-blocks N]
        [overrides]

Overrides are Hydra overrides of the training config (default: the CPU preset). Two copies of
the module start from the same weights; one has `compile=true`. Both train with the plain loop
of the `throughput` benchmark (the Trainer's overhead is the same for both and is measured
there) in alternating blocks of `--block` steps, so both are timed in the same seconds of a
shared, drifting machine. Compilation happens in the compiled loop's first step: its seconds
are reported apart, and the untimed warm-up blocks keep it out of the steady-state tokens/s.
The final losses agree to float tolerance, not bit for bit: the compiled kernels fuse and
reorder the arithmetic.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from attn_lightning.analysis.flops import flops_per_token
from attn_lightning.bench.throughput import PlainLoop, _sync, block_figures, ratio_line
from attn_lightning.config import CONFIG_DIR

LOOPS = ("eager", "compiled")


def measure(overrides: list[str], steps: int, block: int, warmup_blocks: int) -> dict[str, Any]:
    """Per loop: the first step's seconds (compilation, for the compiled loop), tokens/s and
    ms/step over the timed blocks, the final loss; the compiled/eager tokens/s ratio of each
    pair of adjacent blocks; and for MFU the model's training FLOPs per token, the precision
    and the device."""
    if block <= 0 or steps % block or not 0 <= warmup_blocks < steps // block:
        raise ValueError("need steps a multiple of block, and fewer warm-up blocks than blocks")
    with (
        tempfile.TemporaryDirectory() as out,
        initialize_config_dir(CONFIG_DIR, version_base="1.3"),
    ):
        cfg = compose(
            "train", overrides=[f"trainer.max_steps={steps}", f"paths.output_dir={out}", *overrides]
        )
    loops = {}
    for name in LOOPS:
        with open_dict(cfg):
            cfg.compile = name == "compiled"
        loops[name] = PlainLoop(cfg)
    times: dict[str, list[float]] = {name: [] for name in LOOPS}
    first_step: dict[str, float] = {}
    last_loss: dict[str, float] = {}
    for index in range(steps // block):
        for name, loop in loops.items():
            start = time.perf_counter()
            for step in range(block):
                loss = loop.step()
                if index == 0 and step == 0:
                    _sync(loop.device)
                    first_step[name] = time.perf_counter() - start
            _sync(loop.device)
            if index >= warmup_blocks:
                times[name].append(time.perf_counter() - start)
            last_loss[name] = float(loss.detach())
    tokens = block * cfg.data.batch_size * cfg.model.block_size  # per block
    model = loops["eager"].model
    return {
        "flops_per_token": flops_per_token(
            model.num_params(), cfg.model.n_layer, cfg.model.n_embd, cfg.model.block_size
        ),
        "precision": str(cfg.trainer.precision),
        "device": loops["eager"].device,
        "pair_ratios": sorted(
            e / c for e, c in zip(times["eager"], times["compiled"], strict=True)
        ),
        **{
            name: {"first_step_sec": first_step[name], "final_loss": last_loss[name]}
            | block_figures(t, tokens, block)
            for name, t in times.items()
        },
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m attn_lightning.bench compile")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per loop")
    parser.add_argument("--block", type=int, default=20, help="steps per alternating block")
    parser.add_argument("--warmup-blocks", type=int, default=2, help="untimed blocks per loop")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.n_layer=6")
    args = parser.parse_args(argv)
    try:
        result = measure(args.overrides, args.steps, args.block, args.warmup_blocks)
    except ValueError as error:
        parser.error(str(error))
    print(
        f"\ncompile: {args.steps} steps per loop in alternating blocks of {args.block} "
        f"({args.warmup_blocks} untimed blocks each)"
    )
    print("| loop | first step (s) | tokens/s | ms/step | final train loss |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in LOOPS:
        r = result[name]
        print(
            f"| {name} | {r['first_step_sec']:.1f} | {r['tokens_per_sec']:,.0f} | "
            f"{r['ms_per_step']:.2f} | {r['final_loss']:.6f} |"
        )
    ratios = result["pair_ratios"]
    overall = result["compiled"]["tokens_per_sec"] / result["eager"]["tokens_per_sec"]
    print(ratio_line("compiled/eager tokens/s", overall, ratios))
    compile_sec = result["compiled"]["first_step_sec"] - result["eager"]["ms_per_step"] / 1000
    print(f"compilation: about {compile_sec:.0f} s, paid once per run (the first step)")
