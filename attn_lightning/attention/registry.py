"""Attention variants by name: the variant `<name>` is conf/attention/<name>.yaml.

Training composes that file through Hydra (`attention=<name>`); everything else that builds a
variant by name (the benchmarks, `analyze`'s masks, the tests) goes through here, so a new YAML
file is a new option everywhere. The configs are found through `attn_lightning.config`, so an
installed wheel works too. (Here, not in attention/: the layers know nothing of Hydra.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.config import CONFIG_DIR
from attn_lightning.errors import ConfigError

AttentionFactory = Callable[..., CausalSelfAttention]


def variant_names() -> list[str]:
    """Every variant, sorted: the names of conf/attention/*.yaml."""
    return sorted(path.stem for path in (Path(CONFIG_DIR) / "attention").glob("*.yaml"))


def variant_config(name: str) -> DictConfig:
    """conf/attention/<name>.yaml as written (`_target_`, `_partial_` and hyperparameters)."""
    path = Path(CONFIG_DIR) / "attention" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown attention variant {name!r}: choose from {', '.join(variant_names())}"
        )
    return OmegaConf.load(path)


def variant_options(name: str) -> dict[str, Any]:
    """The hyperparameters the variant's YAML sets, with their values."""
    cfg = OmegaConf.to_container(variant_config(name))
    return {key: value for key, value in cfg.items() if not key.startswith("_")}


def attention_factory(name: str, **overrides: Any) -> AttentionFactory:
    """The variant's partial (what `GPT(attention=...)` takes): its YAML with `overrides`, each
    one of its hyperparameters; the sizes (n_embd, n_head, block_size) come at the call."""
    cfg = variant_config(name)
    options = [key for key in cfg if not str(key).startswith("_")]
    for key, value in overrides.items():
        if key not in options:
            raise ConfigError(
                f"attention variant {name} has no option {key}: its options are "
                f"{', '.join(options)}"
            )
        cfg[key] = value
    return instantiate(cfg)


def build_attention(
    name: str, n_embd: int, n_head: int, block_size: int, **overrides: Any
) -> CausalSelfAttention:
    """One layer of the variant at the given sizes (seed the global RNG first for
    reproducible weights)."""
    return attention_factory(name, **overrides)(n_embd=n_embd, n_head=n_head, block_size=block_size)


def _kind(value: Any) -> str | None:
    """The YAML type a hyperparameter's value has, for the type check (None: not checked)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return "a string" if isinstance(value, str) else None


def check_option_types(name: str, chosen: Mapping[str, Any], key: str = "attention") -> None:
    """Each hyperparameter in `chosen` of the type the variant's YAML gives it: the attention
    configs have no schema (each variant has its own keys), so `attention.chunk_size=abc` is
    refused here, by name, rather than as a TypeError deep inside the layer."""
    for option, default in variant_options(name).items():
        value = chosen.get(option)
        expected, given = _kind(default), _kind(value)
        if value is None or expected is None or given == expected:
            continue
        if expected == "a number" and given == "an integer":
            continue
        raise ConfigError(
            f"{key}.{option}={value!r} is not {expected} (conf/attention/{name}.yaml sets "
            f"{default!r})"
        )
