"""Generation speed: incremental decoding (KV cache / recurrent state) against full
recomputation of the cropped context for every new token.

    python -m attn_lightning.bench generation [--attention vanilla linear performer]
        [--prompt-len 64] [--new-tokens 512] [--repeats 3] [--block-size N]

Model sizes default to the training config (conf/model/gpt.yaml, block size from the data
config; random init, vocabulary 65). Both modes decode
greedily from the same prompt; the table says whether they produced the same tokens, and
how many bytes per sequence the decoding state holds at the full block size
(analysis/state_size.py).

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

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from attn_lightning.analysis.state_size import decoding_state_bytes
from attn_lightning.config import CONFIG_DIR
from attn_lightning.errors import exit_on_user_error
from attn_lightning.model.gpt import GPT
from attn_lightning.train import plain
from attn_lightning.variants import attention_factory

VOCAB_SIZE = 65


def build_model(attention: str, block_size: int | None, seed: int) -> GPT:
    """The training config's model (its block size: the data's, or `block_size`), seeded."""
    overrides = [] if block_size is None else [f"data.block_size={block_size}"]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = plain(compose("train", overrides=overrides).model)
    torch.manual_seed(seed)
    return instantiate(cfg, vocab_size=VOCAB_SIZE, attention=attention_factory(attention)).eval()


def time_generation(
    model: GPT, prompt: torch.Tensor, new_tokens: int, repeats: int
) -> tuple[float, float, bool]:
    """Median seconds of incremental and of full-recomputation greedy generation (one warm-up
    each, then the two modes alternate so that machine noise hits both), and whether the two
    produced the same tokens."""
    seconds: dict[bool, list[float]] = {True: [], False: []}
    outputs = {mode: model.generate(prompt, new_tokens, 0, incremental=mode) for mode in seconds}
    for _ in range(repeats):
        for mode in seconds:
            start = time.perf_counter()
            model.generate(prompt, new_tokens, temperature=0, incremental=mode)
            seconds[mode].append(time.perf_counter() - start)
    same = torch.equal(outputs[True], outputs[False])
    return statistics.median(seconds[True]), statistics.median(seconds[False]), same


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m attn_lightning.bench generation")
    parser.add_argument("--attention", nargs="+", default=["vanilla", "linear", "performer"])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=None, help="default: model config")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args(argv)

    rows = []
    for name in args.attention:
        model = build_model(name, args.block_size, args.seed)
        generator = torch.Generator().manual_seed(args.seed)
        prompt = torch.randint(VOCAB_SIZE, (1, args.prompt_len), generator=generator)
        with torch.inference_mode():
            fast, slow, same = time_generation(model, prompt, args.new_tokens, args.repeats)
        state_kib = decoding_state_bytes(model, model.block_size) / 1024
        rows.append(
            f"| {name} | {args.new_tokens / fast:,.0f} | {args.new_tokens / slow:,.0f} | "
            f"{slow / fast:.2f}x | {state_kib:,.1f} | {'yes' if same else 'NO'} |"
        )
    print(
        f"Greedy generation of {args.new_tokens} tokens from a {args.prompt_len}-token prompt, "
        f"block_size {model.block_size}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}.\n"
    )
    print(
        "| attention | incremental tokens/s | full recomputation tokens/s "
        "| speed-up | state KiB/seq @block_size | same tokens |"
    )
    print("|---|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
