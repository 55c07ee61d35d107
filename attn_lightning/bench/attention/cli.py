"""`python -m attn_lightning.bench attention`: the command line of the attention benchmark
(`--help` lists every option with its default; attn_lightning/bench/README.md says what the
figures mean)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from attn_lightning.attention.registry import variant_names
from attn_lightning.bench.attention.report import write_outputs
from attn_lightning.bench.attention.settings import (
    BASELINE,
    CPU_MEMORY_FRACTION,
    DTYPES,
    MAX_LENGTH,
    MIN_LENGTH,
    GiB,
    MiB,
    Settings,
)
from attn_lightning.bench.attention.sweep import run
from attn_lightning.errors import UserError, exit_on_user_error


def available_memory() -> float:
    """Bytes of RAM available now (MemAvailable; free pages where /proc is absent)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None


def _options(assignments: Sequence[str]) -> dict[str, dict[str, Any]]:
    """["performer.nb_features=256", ...] -> {"performer": {"nb_features": 256}} (YAML values)."""
    options: dict[str, dict[str, Any]] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        variant, dot, option = key.partition(".")
        if not (sep and dot and variant and option):
            raise UserError(f"--set expects variant.option=value, got {assignment!r}")
        options.setdefault(variant, {})[option] = yaml.safe_load(value)
    return options


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Resolve the defaults that depend on the machine (device, lengths, memory budget)."""
    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        try:
            device = str(torch.device(args.device))
        except RuntimeError as error:
            raise UserError(f"unknown --device {args.device!r}: {error}") from None
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but torch sees no CUDA GPU: use --device cpu")
    if args.lengths is not None:
        lengths = _int_list(args.lengths, "--lengths")
    else:
        low = args.min_length
        high = args.max_length or MAX_LENGTH[torch.device(device).type]
        if low <= 0 or high < low:
            raise UserError(f"need 0 < --min-length <= --max-length, got {low} and {high}")
        lengths = tuple(low * 2**i for i in range(int(math.log2(high / low)) + 1))
    if args.max_memory is not None:
        max_memory = args.max_memory * GiB if args.max_memory > 0 else None
    else:
        max_memory = CPU_MEMORY_FRACTION * available_memory() if device == "cpu" else None
    variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else None
    if variants is None:
        names = variant_names()
        variants = tuple(sorted(names, key=lambda name: name != BASELINE))  # baseline first
    settings = Settings(
        variants=variants,
        lengths=lengths,
        batch_size=args.batch_size,
        heads=args.heads,
        head_dim=args.head_dim,
        repeats=args.repeats,
        warmup=args.warmup,
        device=device,
        dtype=args.dtype,
        time_limit=args.time_limit,
        max_memory=max_memory,
        matrix_limit=args.matrix_limit * MiB,
        options=_options(args.set),
        seed=args.seed,
    )
    settings.validate()
    return settings


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options; their defaults are Settings' and settings.py's (`--help` shows them)."""
    defaults = {f.name: f.default for f in fields(Settings)}
    max_length = ", ".join(f"{n} on {device}" for device, n in MAX_LENGTH.items())
    parser = argparse.ArgumentParser(
        prog="python -m attn_lightning.bench attention",
        description="Time, memory and accuracy of the attention cores against sequence length: "
        "forward + backward of each variant's core (RoPE, k/v heads repeated, attend), "
        "peak memory of one call, and cosine similarity to exact causal softmax. "
        "Writes results.csv, results.md (also printed), time.png and memory.png.",
    )
    add = parser.add_argument
    add("--variants", help="comma-separated config names (default: all of conf/attention)")
    add("--lengths", help="comma-separated sequence lengths, e.g. 128,256,512")
    add(
        "--min-length",
        type=int,
        default=MIN_LENGTH,
        help="first of the doubling lengths (default %(default)s)",
    )
    add("--max-length", type=int, help=f"last of the doubling lengths (default {max_length})")
    add("--batch-size", type=int, default=defaults["batch_size"], help="(default %(default)s)")
    add("--heads", type=int, default=defaults["heads"], help="(default %(default)s)")
    add("--head-dim", type=int, default=defaults["head_dim"], help="(default %(default)s)")
    add(
        "--repeats",
        type=int,
        default=defaults["repeats"],
        help="timed calls, their median reported (default %(default)s)",
    )
    add(
        "--warmup",
        type=int,
        default=defaults["warmup"],
        help="untimed calls first (default %(default)s)",
    )
    add("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    add("--dtype", default=defaults["dtype"], choices=sorted(DTYPES), help="(default %(default)s)")
    add(
        "--time-limit",
        type=float,
        default=defaults["time_limit"],
        help="seconds per variant and length, warm-up and repeats; past it: timeout, and the "
        "variant's longer lengths are skipped (default %(default)s)",
    )
    add(
        "--max-memory",
        type=float,
        help=f"GiB a call may need, by estimate (default on CPU: {CPU_MEMORY_FRACTION:g} of the "
        "available RAM; on GPU none: out-of-memory errors are caught); 0 turns the estimate off",
    )
    add(
        "--matrix-limit",
        type=float,
        default=defaults["matrix_limit"] / MiB,
        help="MiB of B*H*T*T float32 values up to which attention matrices are compared "
        "(default %(default)g)",
    )
    add(
        "--set",
        action="append",
        default=[],
        metavar="VARIANT.KEY=VALUE",
        help="a variant's hyperparameter (a YAML value), repeatable; default: its conf/attention",
    )
    add("--seed", type=int, default=defaults["seed"], help="(default %(default)s)")
    add("--output-dir", help="default: outputs/bench/attention/<timestamp>")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_from_args(args)
    output_dir = args.output_dir or Path(
        "outputs", "bench", "attention", datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    )
    results = run(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    paths = write_outputs(settings, results, output_dir)
    print(paths["markdown"].read_text(encoding="utf-8"), end="")
    print(f"\nwritten: {', '.join(str(p) for p in paths.values())}")
