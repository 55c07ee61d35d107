"""Every YAML in conf/attention/ is a variant: tests parametrised over `variant` pick up a new
file automatically. Tiny shapes; hyperparameters shrunk so chunk/segment/block boundaries
(every 8 positions) fall inside the 32-token test sequences."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf" / "attention"
VARIANTS = sorted(p.stem for p in CONF.glob("*.yaml"))
SMALL = {"chunk_size": 8, "k": 4, "num_landmarks": 4, "block": 8, "window": 8}
SHAPE = {"n_embd": 32, "n_head": 4, "block_size": 32}


def attention_factory(variant: str, **overrides: Any) -> Callable[..., Any]:
    """The Hydra partial of conf/attention/<variant>.yaml, with test-sized hyperparameters."""
    cfg = OmegaConf.load(CONF / f"{variant}.yaml")
    for key, value in SMALL.items():
        if key in cfg:
            cfg[key] = value
    for key, value in overrides.items():
        cfg[key] = value
    return instantiate(cfg)
