"""`python -m attn_lightning.check attention=<option>`: the attention contract on one variant.

Also for a class of your own: `attention._target_=my_attention.MyAttention`, a
`CausalSelfAttention` subclass importable from the current directory. Prints one row per check
(attn_lightning/analysis/contract.py); exits 0 when every check passes, 1 when one fails (the
check and its worst position named), 2 for bad input (an unknown option, a `_target_` that does
not import or is not a `CausalSelfAttention`).
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import fields
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from attn_lightning.analysis.contract import (
    AttentionFactory,
    ContractSizes,
    TimingSizes,
    run_contract,
    table,
)
from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.config import CONFIG_DIR
from attn_lightning.errors import ConfigError, exit_on_user_error
from attn_lightning.variants import attention_factory, variant_config, variant_names

BASE = f"{CausalSelfAttention.__module__}.{CausalSelfAttention.__qualname__}"


def dataclass_from(cls: type, cfg: DictConfig) -> Any:
    """`cls` from the config keys that are its fields (lists become tuples)."""
    values = OmegaConf.to_container(cfg, resolve=True)
    names = {f.name for f in fields(cls)}
    return cls(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
    )


def user_factory(attention: DictConfig) -> AttentionFactory:
    """The user's own class from the composed `attention` config, through Hydra instantiate;
    a ConfigError when it does not import or is not a concrete CausalSelfAttention."""
    target = attention.get("_target_")
    try:
        factory = instantiate(attention)
    except InstantiationException as error:
        cause = error.__cause__ or error
        reason = (str(cause).splitlines() or [type(cause).__name__])[0]
        raise ConfigError(
            f"attention._target_={target} does not import ({reason}): name a module.Class "
            f"whose module is importable from the current directory ({os.getcwd()})"
        ) from None
    cls = getattr(factory, "func", factory)
    if not (isinstance(cls, type) and issubclass(cls, CausalSelfAttention)):
        raise ConfigError(f"attention._target_={target} is not a subclass of {BASE}")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ConfigError(f"attention._target_={target} does not implement {missing}")
    return factory


def attention_under_test(attention: DictConfig) -> tuple[str, AttentionFactory]:
    """A label and the factory: a conf/attention option through the variant registry (with
    the composed hyperparameters, so `attention.chunk_size=16` applies), a changed
    `_target_` through Hydra instantiate."""
    choice = HydraConfig.get().runtime.choices.get("attention")
    target = attention.get("_target_")
    if choice in variant_names() and target == variant_config(choice).get("_target_"):
        options = OmegaConf.to_container(attention, resolve=True)
        hyperparameters = {k: v for k, v in options.items() if not str(k).startswith("_")}
        return f"attention={choice} ({target})", attention_factory(choice, **hyperparameters)
    return f"attention._target_={target}", user_factory(attention)


def check_attention_option(args: list[str]) -> None:
    """An unknown `attention=<option>` as a one-line user error (Hydra's own composition
    error is several lines and exit 1)."""
    try:
        overrides = OverridesParser.create().parse_overrides(
            [a for a in args if not a.startswith("-")]
        )
    except HydraException:
        return  # Hydra reports malformed overrides itself
    for override in overrides:
        value = override.value()
        known = variant_names()
        if override.key_or_group == "attention" and isinstance(value, str) and value not in known:
            raise ConfigError(
                f"unknown attention option {value!r}: choose from {', '.join(known)}, or "
                "attention._target_=module.Class for your own"
            )


def check(cfg: DictConfig) -> bool:
    """Run and print the contract; True when every check passed."""
    label, factory = attention_under_test(cfg.attention)
    sizes = dataclass_from(ContractSizes, cfg.sizes)
    timing = dataclass_from(TimingSizes, cfg.timing) if cfg.timing.enabled else None
    print(
        f"contract of {label}: batch {sizes.batch_size}, n_embd {sizes.n_embd}, "
        f"n_head {sizes.n_head}, T {sizes.length}"
    )
    results = run_contract(factory, sizes, timing)
    print("\n".join(table(results)))
    failed = [r for r in results if not r.passed]
    for result in failed:
        print(f"FAILED {result.failure}")
    if not failed:
        print(f"all {len(results)} checks passed")
    return not failed


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="check")
@exit_on_user_error
def hydra_main(cfg: DictConfig) -> None:
    if not check(cfg):
        sys.exit(1)


@exit_on_user_error
def main() -> None:
    check_attention_option(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
