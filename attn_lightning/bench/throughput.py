"""Lightning's training loop against a plain PyTorch loop: same model, same batches.

    python -m attn_lightning.bench throughput [--steps N] [--warmup N] [--repeats N] [overrides]

Overrides are Hydra overrides of the training config (default: the CPU preset). Both loops
start from the same initial weights and see the same batches, so their final losses must be
identical on CPU: the benchmark checks that before it prints the ratio. Lightning runs with the
configured callbacks and loggers, as a user's run does; validation and the periodic
checkpoint writes (file I/O, ~1-3% at the default interval) are left out of both.
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

from attn_lightning.config import CONFIG_DIR
from attn_lightning.data.step_batches import step_loader
from attn_lightning.data.windows import RandomWindowBatches
from attn_lightning.lit_module import LitGPT
from attn_lightning.train import build_trainer, plain


class StepClock(L.Callback):
    """Wall time from the end of warm-up step `warmup` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0
        self.last_loss = float("nan")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, *_: Any):
        if trainer.global_step in (self.warmup, trainer.max_steps):
            _sync(pl_module.device)  # only at the two timestamps that count
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()
        self.last_loss = float(outputs["loss"])


def build(cfg: Any) -> tuple[LitGPT, RandomWindowBatches]:
    """The module (seeded init) and the step-indexed batches a training run would see."""
    L.seed_everything(cfg.seed, verbose=False)
    dm = instantiate(cfg.data)
    module = LitGPT(
        plain(cfg.model), plain(cfg.attention), plain(cfg.optim), dm.tokenizer.state_dict()
    )
    batches = RandomWindowBatches(
        dm.splits[0], dm.block_size, dm.batch_size, num_batches=cfg.trainer.max_steps, seed=cfg.seed
    )
    return module, batches


def run_lightning(cfg: Any, warmup: int) -> tuple[float, float]:
    """(seconds for the timed steps, final loss) with the Lightning Trainer."""
    module, batches = build(cfg)
    clock = StepClock(warmup)
    trainer = build_trainer(cfg)
    trainer.callbacks.append(clock)
    trainer.fit(module, train_dataloaders=step_loader(batches))
    return clock.end - clock.start, clock.last_loss


def run_plain(cfg: Any, warmup: int) -> tuple[float, float]:
    """(seconds for the timed steps, final loss) with a hand-written loop doing the same
    optimisation: AdamW + schedule from the module, gradient clipping from the trainer config,
    the trainer's device and bf16 autocast when its precision asks for it."""
    module, batches = build(cfg)
    use_cuda = cfg.trainer.accelerator in ("gpu", "cuda") or (
        cfg.trainer.accelerator == "auto" and torch.cuda.is_available()
    )
    device = torch.device("cuda" if use_cuda else "cpu")
    model = module.model.to(device).train()
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    params = [p for group in optimizer.param_groups for p in group["params"]]  # Lightning's order
    clip = cfg.trainer.gradient_clip_val
    autocast = torch.autocast(
        device.type, torch.bfloat16, enabled="bf16" in str(cfg.trainer.precision)
    )
    start = 0.0
    for step, (x, y) in enumerate(step_loader(batches), start=1):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            loss = model(x, y).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        scheduler.step()
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
    _sync(device)
    return time.perf_counter() - start, float(loss)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(overrides: list[str], steps: int, warmup: int, repeats: int) -> dict[str, dict]:
    """Per loop: median tokens/s over `repeats` runs and the set of final losses seen."""
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
        tokens = (steps - warmup) * cfg.data.batch_size * cfg.model.block_size
        runs: dict[str, list[tuple[float, float]]] = {"plain": [], "lightning": []}
        loops = {"plain": run_plain, "lightning": run_lightning}
        for repeat in range(repeats):  # pairs in alternating order (ABBA): drift hits both
            order = ("plain", "lightning") if repeat % 2 == 0 else ("lightning", "plain")
            for name in order:
                runs[name].append(loops[name](cfg, warmup))
    ratios = [p / lit for (p, _), (lit, _) in zip(runs["plain"], runs["lightning"], strict=True)]
    return {
        "pair_ratios": sorted(ratios),  # lightning/plain tokens/s of each back-to-back pair
        **{
            name: {
                "tokens_per_sec": tokens / statistics.median(t for t, _ in results),
                "ms_per_step": 1000 * statistics.median(t for t, _ in results) / (steps - warmup),
                "final_losses": {loss for _, loss in results},
            }
            for name, results in runs.items()
        },
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m attn_lightning.bench throughput")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps at the start")
    parser.add_argument("--repeats", type=int, default=6, help="pairs of runs (median ratio)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer=gpu")
    args = parser.parse_args(argv)
    if not 0 < args.warmup < args.steps:
        parser.error("need 0 < --warmup < --steps")
    result = measure(args.overrides, args.steps, args.warmup, args.repeats)
    print(f"\nthroughput: {args.steps} steps ({args.warmup} untimed), median of {args.repeats}")
    print("| loop | tokens/s | ms/step | final train loss |")
    print("| --- | ---: | ---: | ---: |")
    for name in ("plain", "lightning"):
        r = result[name]
        losses = ", ".join(f"{loss:.6f}" for loss in sorted(r["final_losses"]))
        print(f"| {name} | {r['tokens_per_sec']:,.0f} | {r['ms_per_step']:.2f} | {losses} |")
    ratios = result["pair_ratios"]
    same = result["plain"]["final_losses"] == result["lightning"]["final_losses"]
    print(
        f"lightning/plain = {statistics.median(ratios):.3f} (median of {len(ratios)} "
        f"back-to-back pairs; range {ratios[0]:.3f}..{ratios[-1]:.3f})"
    )
    print(
        f"identical losses (same model, same batches): {'yes' if same else 'no'}"
        " (must be yes on CPU; GPU kernels may differ in the last digits)"
    )
