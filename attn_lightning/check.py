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

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from attn_lightning.analysis.contract import (
    AttentionFactory,
    ContractSizes,
    run_contract,
    table,
)
from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.attention.registry import attention_factory, variant_config, variant_names
from attn_lightning.bench.attention.contract_timing import TimingSizes, check_timing
from attn_lightning.config.entry_point import hydra_entry_point
from attn_lightning.errors import ConfigError, UserError, exit_on_user_error

BASE = f"{CausalSelfAttention.__module__}.{CausalSelfAttention.__qualname__}"


# Settings that may be 0 (conf/check.yaml); every other one must be positive.
LEAST = {"prefill": 0, "warmup": 0, "seed": 0, "output_atol": 0.0, "atol": 0.0, "rtol": 0.0}


def dataclass_from(cls: type, cfg: DictConfig, prefix: str) -> Any:
    """`cls` from the config keys that are its fields (lists become tuples), each checked
    against its default's type and its least value: a bad size is bad input (exit 2), not a
    failed check."""
    values = OmegaConf.to_container(cfg, resolve=True)
    chosen = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        value, default = values[f.name], f.default
        items = value if isinstance(default, tuple) else [value]
        if isinstance(default, tuple) and not (isinstance(value, list) and value):
            raise ConfigError(f"{prefix}.{f.name}={value} must be a non-empty list, e.g. [256]")
        kind = type(default[0]) if isinstance(default, tuple) else type(default)
        for item in items:
            number = isinstance(item, int | float) and not isinstance(item, bool)
            if not number or (kind is int and not isinstance(item, int)):
                raise ConfigError(f"{prefix}.{f.name}={item!r} is not {kind.__name__}")
            least = LEAST.get(f.name)
            if least is not None and item < least:
                raise ConfigError(f"{prefix}.{f.name} must be >= {least}, got {item}")
            if least is None and not item > 0:
                raise ConfigError(f"{prefix}.{f.name} must be positive, got {item}")
        chosen[f.name] = tuple(value) if isinstance(default, tuple) else value
    return cls(**chosen)


def check_sizes(sizes: ContractSizes) -> None:
    """What the sizes must share: whole heads and a prefill inside the sequence."""
    if sizes.n_embd % sizes.n_head:
        raise ConfigError(
            f"sizes.n_embd={sizes.n_embd} is not divisible by sizes.n_head={sizes.n_head}"
        )
    if sizes.prefill >= sizes.length:
        raise ConfigError(
            f"sizes.prefill={sizes.prefill} must be below sizes.length={sizes.length}"
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
    sizes = dataclass_from(ContractSizes, cfg.sizes, "sizes")
    check_sizes(sizes)
    if not isinstance(cfg.timing.enabled, bool):
        raise ConfigError(f"timing.enabled={cfg.timing.enabled!r} is not true or false")
    timing = dataclass_from(TimingSizes, cfg.timing, "timing") if cfg.timing.enabled else None
    label, factory = attention_under_test(cfg.attention)
    try:  # hyperparameters the variant refuses are bad input (exit 2), not a failed check
        factory(n_embd=sizes.n_embd, n_head=sizes.n_head, block_size=sizes.length)
    except UserError:
        raise
    except Exception:  # any other construction failure: the contract reports it as a row
        pass
    print(
        f"contract of {label}: batch {sizes.batch_size}, n_embd {sizes.n_embd}, "
        f"n_head {sizes.n_head}, T {sizes.length}"
    )
    results = run_contract(factory, sizes)
    if timing is not None:
        results.append(check_timing(factory, timing))
    print("\n".join(table(results)))
    failed = [r for r in results if not r.passed]
    for result in failed:
        print(f"FAILED {result.failure}")
    if not failed:
        print(f"all {len(results)} checks passed")
    return not failed


@hydra_entry_point("check")
def hydra_main(cfg: DictConfig) -> None:
    if not check(cfg):
        sys.exit(1)


@exit_on_user_error
def main() -> None:
    check_attention_option(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
