"""`python -m attn_lightning.sample ckpt_path=... prompt=...`: text from a trained checkpoint.

Sampling is model/sampling.py's (temperature, top-k, top-p, min-p). The prompt is `prompt` or
the contents of `prompt_file`; `num_samples` continuations are drawn in one batch; `stop` ends
a sample where that string first appears in its generated text (the string itself is left
out); `stream` prints the one sample as its tokens arrive; `compile` decodes with the compiled
one-token step (model/decoding.py, IncrementalDecoder).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from attn_lightning.config.device import resolve_device
from attn_lightning.config.entry_point import hydra_entry_point
from attn_lightning.config.schema import SampleConfig
from attn_lightning.errors import ConfigError, UserError
from attn_lightning.model.sampling import Sampler
from attn_lightning.runs.checkpoint import load_checkpoint

SEPARATOR = "\n----\n"  # between samples when num_samples > 1


def prompt_text(cfg: DictConfig) -> str:
    """`prompt`, or the text of `prompt_file` when one is given."""
    if not cfg.prompt_file:
        return cfg.prompt
    path = Path(cfg.prompt_file).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompt_file={path} does not exist: give a text file") from None
    except (UnicodeDecodeError, IsADirectoryError) as error:
        raise UserError(f"prompt_file={path} is not a UTF-8 text file ({error})") from None


def stable_text(text: str, stop: str | None) -> str:
    """What of a sample's text so far can be shown for good: not a trailing partial character
    (a byte-level BPE token may end mid-character) nor a tail that may begin the stop string."""
    text = text.rstrip("\ufffd")
    if stop:
        for keep in range(len(stop) - 1, 0, -1):
            if text.endswith(stop[:keep]):
                return text[:-keep]
    return text


def check_request(max_new_tokens: int, num_samples: int, stop: str | None) -> None:
    """The request's own values, before any work."""
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    if stop == "":
        raise ConfigError("stop must be a non-empty string (null = no stop string)")


def generate_text(
    module: Any,
    prompt: str,
    max_new_tokens: int,
    sampler: Sampler,
    num_samples: int = 1,
    stop: str | None = None,
    generator: torch.Generator | None = None,
    on_text: Callable[[str], None] | None = None,
    compile: bool = False,
) -> list[str]:
    """`num_samples` continuations of `prompt` (each without the prompt), cut before `stop`;
    `on_text` receives sample 0's new text as it becomes final (streaming)."""
    check_request(max_new_tokens, num_samples, stop)
    try:
        idx = module.tokenizer.encode(prompt)
    except ValueError as error:
        raise ConfigError(f"prompt: {error}") from None
    if idx.numel() == 0:
        raise ConfigError("prompt is empty: give at least one token (the default is a newline)")
    device = next(module.model.parameters()).device
    idx = idx[None].to(device).expand(num_samples, -1)
    generated: list[list[int]] = [[] for _ in range(num_samples)]
    texts = [""] * num_samples
    done = [False] * num_samples
    shown = 0
    stream = module.model.stream(idx, max_new_tokens, sampler, generator, compile=compile)
    for next_id in stream:
        for row, token in enumerate(next_id[:, 0].tolist()):
            if done[row]:
                continue
            generated[row].append(token)
            texts[row] = module.tokenizer.decode(generated[row])
            if stop and stop in texts[row]:
                texts[row], done[row] = texts[row][: texts[row].index(stop)], True
        if on_text is not None:
            final = texts[0] if done[0] else stable_text(texts[0], stop)
            if len(final) > shown:
                on_text(final[shown:])
                shown = len(final)
        if all(done):
            break
    if on_text is not None and len(texts[0]) > shown:
        on_text(texts[0][shown:])
    return texts


def sample(cfg: DictConfig, on_text: Callable[[str], None] | None = None) -> str:
    """The prompt followed by each sample's generated text; `on_text` (streaming) gets the
    prompt, then sample 0's text as it arrives."""
    if cfg.stream and cfg.num_samples != 1:
        raise ConfigError("stream=true prints one sample as it is drawn: set num_samples=1")
    check_request(cfg.max_new_tokens, cfg.num_samples, cfg.stop)
    sampler = Sampler(cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p)
    prompt = prompt_text(cfg)
    device = resolve_device(cfg.device)
    module = load_checkpoint(cfg.ckpt_path, map_location=device, trusted=cfg.trust_targets)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    if on_text is not None:
        on_text(prompt)
    texts = generate_text(
        module,
        prompt,
        cfg.max_new_tokens,
        sampler,
        cfg.num_samples,
        cfg.stop,
        generator,
        on_text,
        cfg.compile,
    )
    return SEPARATOR.join(prompt + text for text in texts)


def _print_now(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@hydra_entry_point("sample", schema=SampleConfig)
def main(cfg: DictConfig) -> None:
    if cfg.stream:
        sample(cfg, on_text=_print_now)
        _print_now("\n")
    else:
        print(sample(cfg))


if __name__ == "__main__":
    main()
