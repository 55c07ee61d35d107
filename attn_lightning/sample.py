"""`python -m attn_lightning.sample ckpt_path=... prompt=...`: text from a trained checkpoint."""

from __future__ import annotations

import hydra
import torch
from omegaconf import DictConfig

from attn_lightning.checkpoint import load_checkpoint
from attn_lightning.config import CONFIG_DIR
from attn_lightning.errors import exit_on_user_error


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sample(cfg: DictConfig) -> str:
    """The prompt followed by `max_new_tokens` generated tokens."""
    device = resolve_device(cfg.device)
    module = load_checkpoint(cfg.ckpt_path, map_location=device, trusted=cfg.trust_targets)
    idx = module.tokenizer.encode(cfg.prompt)[None].to(device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    out = module.model.generate(
        idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k, generator=generator
    )
    return module.tokenizer.decode(out[0].tolist())


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sample")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    print(sample(cfg))


if __name__ == "__main__":
    main()
