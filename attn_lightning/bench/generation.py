"""Generation speed: incremental decoding (KV cache / recurrent state) against full
recomputation of the cropped context for every new token.

    python -m attn_lightning.bench generation [--attention vanilla linear performer]
        [--prompt-len 64] [--new-tokens 512] [--repeats 3] [--block-size N] [--compile]

Model sizes default to the training config (conf/model/gpt.yaml, block size from the data
config; random init, vocabulary 65). Both modes decode greedily from the same prompt; the table
says whether they produced the same tokens, and how many bytes per sequence the decoding state
holds at the full block size (analysis/state_size.py). `--compile` adds compiled incremental
decoding (`generate(..., compile=True)`: each one-token step one torch.compile'd call) as a
third mode in the same interleaved rounds: its tokens/s, its ratio to eager incremental, the
seconds its first call spent compiling (first call minus a timed one; not in the tokens/s), and
whether its tokens equal eager incremental decoding's. A variant without a fixed-shape cache
shows n/a there.

Note on the default regime: with block_size 64 and a 64-token prompt the context is cropped
from the first new token on. Full recomputation then sees a window that starts one token later
at every step, which moves every position (and every hidden state of a multi-layer model), so
an exact incremental decoder has nothing to reuse and computes the window in full, as full
recomputation does (ratio ~1 by construction). Pass a --block-size above prompt + new tokens
to measure what the caches save when the context fits.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import NamedTuple

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from attn_lightning.analysis.state_size import decoding_state_bytes
from attn_lightning.attention.registry import attention_factory
from attn_lightning.config import CONFIG_DIR
from attn_lightning.errors import exit_on_user_error
from attn_lightning.model.decoding import StaticCacheError
from attn_lightning.model.gpt import GPT
from attn_lightning.training.builders import plain

VOCAB_SIZE = 65


def build_model(attention: str, block_size: int | None, seed: int) -> GPT:
    """The training config's model (its block size: the data's, or `block_size`), seeded."""
    overrides = [] if block_size is None else [f"data.block_size={block_size}"]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = plain(compose("train", overrides=overrides).model)
    torch.manual_seed(seed)
    return instantiate(cfg, vocab_size=VOCAB_SIZE, attention=attention_factory(attention)).eval()


MODES = {
    "incremental": {"incremental": True},
    "full": {"incremental": False},
    "compiled": {"incremental": True, "compile": True},
}


class Timing(NamedTuple):
    seconds: float  # median of the timed rounds
    first_call: float  # the warm-up (for the compiled mode: compilation + one generation)
    tokens: torch.Tensor  # the warm-up's greedy output


def time_generation(
    model: GPT, prompt: torch.Tensor, new_tokens: int, repeats: int, modes: list[str]
) -> dict[str, Timing]:
    """Greedy generation in each of `modes` (MODES): one warm-up each, then the modes
    alternate round by round so that machine noise hits all alike; median seconds."""
    first: dict[str, tuple[float, torch.Tensor]] = {}
    for mode in modes:
        start = time.perf_counter()
        tokens = model.generate(prompt, new_tokens, temperature=0, **MODES[mode])
        first[mode] = time.perf_counter() - start, tokens
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode in modes:
            start = time.perf_counter()
            model.generate(prompt, new_tokens, temperature=0, **MODES[mode])
            seconds[mode].append(time.perf_counter() - start)
    return {mode: Timing(statistics.median(seconds[mode]), *first[mode]) for mode in modes}


def compiles(model: GPT) -> bool:
    """Whether every layer has a fixed-shape cache (else compiled decoding runs eagerly)."""
    try:
        model.new_caches(static=True)
    except StaticCacheError:
        return False
    return True


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m attn_lightning.bench generation")
    parser.add_argument("--attention", nargs="+", default=["vanilla", "linear", "performer"])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=None, help="default: model config")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument(
        "--compile", action="store_true", help="also time compiled incremental decoding"
    )
    args = parser.parse_args(argv)

    rows = []
    for name in args.attention:
        model = build_model(name, args.block_size, args.seed)
        generator = torch.Generator().manual_seed(args.seed)
        prompt = torch.randint(VOCAB_SIZE, (1, args.prompt_len), generator=generator)
        modes = ["incremental", "full"]
        compiled = args.compile and compiles(model)
        if compiled:
            modes.append("compiled")
        with torch.inference_mode():
            timings = time_generation(model, prompt, args.new_tokens, args.repeats, modes)
        fast, slow = timings["incremental"], timings["full"]
        same = torch.equal(fast.tokens, slow.tokens)
        state_kib = decoding_state_bytes(model, model.block_size) / 1024
        row = (
            f"| {name} | {args.new_tokens / fast.seconds:,.0f} | "
            f"{args.new_tokens / slow.seconds:,.0f} | {slow.seconds / fast.seconds:.2f}x | "
            f"{state_kib:,.1f} | {'yes' if same else 'NO'} |"
        )
        if compiled:
            timed = timings["compiled"]
            row += (
                f" {args.new_tokens / timed.seconds:,.0f} | {fast.seconds / timed.seconds:.2f}x "
                f"| {timed.first_call - timed.seconds:.1f} | "
                f"{'yes' if torch.equal(timed.tokens, fast.tokens) else 'NO'} |"
            )
        elif args.compile:
            row += " n/a: no fixed-shape cache, decodes eagerly | | | |"
        rows.append(row)
    print(
        f"Greedy generation of {args.new_tokens} tokens from a {args.prompt_len}-token prompt, "
        f"block_size {model.block_size}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}.\n"
    )
    header = (
        "| attention | incremental tokens/s | full recomputation tokens/s "
        "| speed-up | state KiB/seq @block_size | same tokens |"
    )
    rule = "|---|---:|---:|---:|---:|---|"
    if args.compile:
        header += (
            " compiled incremental tokens/s | compiled / incremental | compile s "
            "| compiled = incremental tokens |"
        )
        rule += "---:|---:|---:|---|"
    print(header)
    print(rule)
    print("\n".join(rows))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
