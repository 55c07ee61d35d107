"""Lightning's training loop against a plain PyTorch loop: same model, same batches.

    python -m attn_lightning.bench throughput [--steps N] [--block N] [--warmup-blocks N]
        [overrides]

Overrides are Hydra overrides of the training config (default: the CPU preset). Both loops
start from the same initial weights and see the same batches, so their final losses must be
identical on CPU: the benchmark checks that before it prints the ratio. Lightning runs with the
configured callbacks and loggers, as a user's run does; validation and the periodic
checkpoint writes (file I/O, not loop overhead) are left out of both.

The loops alternate in blocks of `--block` steps inside one process (the plain loop runs from
a callback between the Trainer's blocks), so both are timed in the same seconds: on a shared
machine the speed drifts from one minute to the next, and back-to-back whole runs cannot
separate that drift from the loops' difference. Interleaving needs a model without dropout (the
default presets), since both loops would draw from the one global RNG.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import Tensor

from attn_lightning.config import CONFIG_DIR
from attn_lightning.data.step_batches import step_loader
from attn_lightning.data.windows import RandomWindowBatches
from attn_lightning.training.builders import build_module, build_trainer, plain
from attn_lightning.training.lit_module import LitGPT


def build(cfg: Any) -> tuple[LitGPT, RandomWindowBatches]:
    """The module (seeded init) and the step-indexed batches a training run would see."""
    L.seed_everything(cfg.seed, verbose=False)
    dm = instantiate(plain(cfg.data))
    module = build_module(cfg, dm.tokenizer.state_dict())
    batches = RandomWindowBatches(
        dm.splits[0], dm.block_size, dm.batch_size, num_batches=cfg.trainer.max_steps, seed=cfg.seed
    )
    return module, batches


class PlainLoop:
    """A hand-written loop doing the same optimisation as the Trainer: the optimizer and
    schedule from the module (its training forward, compiled when compile=true), gradient
    clipping from the trainer config, the trainer's device and bf16 autocast when its precision
    asks for it."""

    def __init__(self, cfg: Any) -> None:
        module, batches = build(cfg)  # compile=true: its training forward is compiled
        use_cuda = cfg.trainer.accelerator in ("gpu", "cuda") or (
            cfg.trainer.accelerator == "auto" and torch.cuda.is_available()
        )
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.module = module
        self.model = module.model.to(self.device).train()
        config = module.configure_optimizers()
        self.optimizer = config["optimizer"]
        self.scheduler = config["lr_scheduler"]["scheduler"]
        # the parameters in Lightning's order, for an identical clipping sum
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.clip = cfg.trainer.gradient_clip_val
        self.autocast = torch.autocast(
            self.device.type, torch.bfloat16, enabled="bf16" in str(cfg.trainer.precision)
        )
        self.batches = iter(step_loader(batches))

    def step(self) -> Tensor:
        x, y = next(self.batches)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with self.autocast:
            loss = self.module.training_forward(x, y).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss


class Interleaved(L.Callback):
    """Runs the plain loop in blocks between blocks of the Trainer's steps, so both loops are
    timed in the same seconds of a shared, drifting machine. A Lightning block is the wall time
    from the end of the previous plain block to the end of its own last step: everything the
    Trainer does per step (data, hooks, logging) is in it, the plain blocks are not."""

    def __init__(self, plain: PlainLoop, block: int, warmup_blocks: int) -> None:
        self.plain = plain
        self.block = block
        self.warmup_blocks = warmup_blocks
        self.times: dict[str, list[float]] = {"lightning": [], "plain": []}
        self.last_loss = {"lightning": float("nan"), "plain": float("nan")}
        self.mark = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.mark = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, *_: Any):
        if trainer.global_step % self.block:
            return
        _sync(pl_module.device)
        timed = trainer.global_step // self.block > self.warmup_blocks
        self._record("lightning", time.perf_counter() - self.mark, timed, outputs["loss"])
        start = time.perf_counter()
        for _ in range(self.block):
            loss = self.plain.step()
        _sync(self.plain.device)
        self._record("plain", time.perf_counter() - start, timed, loss)
        self.mark = time.perf_counter()

    def _record(self, loop: str, seconds: float, timed: bool, loss: Tensor) -> None:
        if timed:
            self.times[loop].append(seconds)
        self.last_loss[loop] = float(loss)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def block_figures(seconds: list[float], tokens_per_block: int, block: int) -> dict[str, float]:
    """tokens/s and ms/step of one loop over its timed blocks of `block` steps."""
    total = sum(seconds)
    return {
        "tokens_per_sec": tokens_per_block * len(seconds) / total,
        "ms_per_step": 1000 * total / (block * len(seconds)),
    }


def ratio_line(name: str, overall: float, ratios: list[float]) -> str:
    """The ratio over all timed blocks, and its median and quartiles over adjacent pairs."""
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return (
        f"{name} = {overall:.3f} over all timed blocks; per adjacent block pair: median "
        f"{statistics.median(ratios):.3f}, quartiles {quartiles[0]:.3f}..{quartiles[2]:.3f}"
        f" ({len(ratios)} pairs)"
    )


def measure(overrides: list[str], steps: int, block: int, warmup_blocks: int) -> dict[str, Any]:
    """Per loop: tokens/s over the timed blocks and the final loss; and the Lightning/plain
    tokens/s ratio of each pair of adjacent blocks."""
    if steps % block or not 0 <= warmup_blocks < steps // block:
        raise ValueError("need steps a multiple of block, and fewer warm-up blocks than blocks")
    with (
        tempfile.TemporaryDirectory() as out,
        initialize_config_dir(CONFIG_DIR, version_base="1.3"),
    ):
        cfg = compose(
            "train",
            overrides=[
                f"trainer.max_steps={steps}",
                "++trainer.limit_val_batches=0",
                "trainer.num_sanity_val_steps=0",
                # Checkpoint I/O is not loop overhead, and the plain loop writes none.
                "~callbacks.periodic_checkpoint",
                f"paths.output_dir={out}",
                *overrides,
            ],
        )
        interleaved = Interleaved(PlainLoop(cfg), block, warmup_blocks)
        module, batches = build(cfg)
        trainer = build_trainer(cfg)
        trainer.callbacks.append(interleaved)
        trainer.fit(module, train_dataloaders=step_loader(batches))
    tokens = block * cfg.data.batch_size * cfg.model.block_size  # per block
    times = interleaved.times
    return {
        "pair_ratios": sorted(
            p / lit for p, lit in zip(times["plain"], times["lightning"], strict=True)
        ),
        **{
            loop: block_figures(t, tokens, block) | {"final_loss": interleaved.last_loss[loop]}
            for loop, t in times.items()
        },
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m attn_lightning.bench throughput")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per loop")
    parser.add_argument("--block", type=int, default=20, help="steps per alternating block")
    parser.add_argument("--warmup-blocks", type=int, default=2, help="untimed blocks per loop")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer=gpu")
    args = parser.parse_args(argv)
    if (
        args.block <= 0
        or args.steps % args.block
        or not 0 <= args.warmup_blocks < (args.steps // args.block)
    ):
        parser.error("need --steps a multiple of --block, and --warmup-blocks < steps/block")
    result = measure(args.overrides, args.steps, args.block, args.warmup_blocks)
    ratios = result["pair_ratios"]
    print(
        f"\nthroughput: {args.steps} steps per loop in alternating blocks of {args.block} "
        f"({args.warmup_blocks} untimed blocks each)"
    )
    print("| loop | tokens/s | ms/step | final train loss |")
    print("| --- | ---: | ---: | ---: |")
    for name in ("plain", "lightning"):
        r = result[name]
        cells = f"{r['tokens_per_sec']:,.0f} | {r['ms_per_step']:.2f} | {r['final_loss']:.6f}"
        print(f"| {name} | {cells} |")
    overall = result["lightning"]["tokens_per_sec"] / result["plain"]["tokens_per_sec"]
    print(ratio_line("lightning/plain", overall, ratios))
    same = result["plain"]["final_loss"] == result["lightning"]["final_loss"]
    print(
        f"identical losses (same model, same batches): {'yes' if same else 'no'}"
        " (must be yes on CPU; GPU kernels may differ in the last digits)"
    )
