"""`python -m attn_lightning.check attention=<option>`: the attention contract on one variant.

Also for a class of your own: `attention._target_=my_attention.MyAttention`, a
`CausalSelfAttention` subclass importable from the current directory. And for any other
sequence mixer, a torch module mapping (B, T, C) -> (B, T, C):

    python -m attn_lightning.check mixer._target_=x_transformers.Attention +mixer.causal=true

its keyword arguments as `+mixer.<name>=<value>`, sizes.n_embd given to the argument
`mixer.dim_key` names (default `dim`); causality is checked, decoding too when `mixer.step`
names its recurrent step (the protocol: attn_lightning/analysis/mixer_contract.py), and the
checks that need our API say "not applicable". Prints one row per check; exits 0 when every
check passes, 1 when one fails (the check and its worst position named), 2 for bad input (an
unknown option, a `_target_` that does not import, is not a `CausalSelfAttention` or not a
module, a mixer that cannot be built from its arguments).
"""

from __future__ import annotations

import importlib
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
from torch import nn

from attn_lightning.analysis.contract import (
    TIMING,
    AttentionFactory,
    CheckResult,
    ContractSizes,
    not_applicable,
    run_contract,
    table,
)
from attn_lightning.analysis.mixer_contract import (
    MixerFactory,
    MixerUnderTest,
    describe_output,
    mixer_factory,
    run_mixer_contract,
)
from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.attention.registry import attention_factory, variant_config, variant_names
from attn_lightning.bench.attention.contract_timing import (
    ModuleFactory,
    TimingSizes,
    check_timing,
)
from attn_lightning.config.entry_point import hydra_entry_point
from attn_lightning.errors import ConfigError, UserError, exit_on_user_error

BASE = f"{CausalSelfAttention.__module__}.{CausalSelfAttention.__qualname__}"
DEFAULT_ATTENTION = "vanilla"  # conf/check.yaml's default option


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


def first_line(error: BaseException) -> str:
    """An error as one line: its type and the first line of its message."""
    cause = error.__cause__ if isinstance(error, InstantiationException) else None
    error = cause or error
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"


def locate(target: str) -> Any:
    """The object a dotted path names (module.Class, module.function, module.Outer.Inner):
    the longest prefix that imports as a module, then attributes."""
    parts = target.split(".")
    missing: ModuleNotFoundError | None = None
    for split in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:split])
        try:
            found: Any = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name is None or not (module + ".").startswith(error.name + "."):
                raise  # the module exists but an import inside it fails
            missing = missing or error
            continue
        for name in parts[split:]:
            found = getattr(found, name)
        return found
    raise missing or ImportError(f"{target!r} names no module")


def mixer_under_test(mixer: DictConfig, n_embd: int) -> tuple[str, MixerFactory]:
    """A label and the factory of the user's sequence mixer: `mixer._target_` with the
    other keys of `mixer` as keyword arguments and n_embd given to `mixer.dim_key`; built
    once here, so an import, a constructor or a step method that fails is bad input."""
    options = OmegaConf.to_container(mixer, resolve=True)
    dim_key, step = options.pop("dim_key", None), options.pop("step", None)
    target = options["_target_"]
    if dim_key is not None and dim_key in options:
        raise ConfigError(
            f"mixer.{dim_key} is set by sizes.n_embd (mixer.dim_key={dim_key}): drop "
            f"+mixer.{dim_key}, or set sizes.n_embd"
        )
    try:
        locate(target)
    except Exception as error:
        raise ConfigError(
            f"mixer._target_={target} does not import ({first_line(error)}): name a "
            f"module.Class whose module is importable from the current directory ({os.getcwd()})"
        ) from None
    arguments = {k: v for k, v in options.items() if not k.startswith("_")}

    def make(size: int) -> nn.Module:
        return instantiate(options, **({} if dim_key is None else {dim_key: size}))

    label = ", ".join(f"{k}={v!r}" for k, v in {dim_key: n_embd, **arguments}.items() if k)
    label = f"mixer {target}({label})"
    try:
        module = make(n_embd)
    except Exception as error:
        raise ConfigError(
            f"{label} cannot be built ({first_line(error)}): its keyword arguments are "
            "+mixer.<name>=<value>, and mixer.dim_key names the one that gets sizes.n_embd"
        ) from None
    if isinstance(module, CausalSelfAttention):
        raise ConfigError(
            f"mixer._target_={target} is a CausalSelfAttention: check it with "
            f"attention._target_={target}, the whole contract"
        )
    if not isinstance(module, nn.Module):
        raise ConfigError(f"mixer._target_={target} built a {type(module).__name__}, not a module")
    try:
        MixerUnderTest(module, step)
    except ValueError as error:
        raise ConfigError(f"mixer.step={step}: {error}") from None
    return label, mixer_factory(make, step)


def refuse_attention_with_mixer(attention: DictConfig) -> None:
    """`mixer._target_` checks the mixer alone: an attention option or key given as well
    would be silently ignored, so it is bad input."""
    choice = HydraConfig.get().runtime.choices.get("attention")
    composed = OmegaConf.to_container(attention, resolve=True)
    untouched = OmegaConf.to_container(variant_config(DEFAULT_ATTENTION), resolve=True)
    if choice != DEFAULT_ATTENTION or composed != untouched:
        raise ConfigError(
            "mixer._target_ checks the mixer alone: drop the attention=... or attention.* "
            "overrides (or mixer._target_, to check the attention)"
        )


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
    mixer = cfg.get("mixer")
    if mixer is not None and mixer.get("_target_") is not None:
        return check_mixer(mixer, cfg.attention, sizes, timing)
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
    return report(run_contract(factory, sizes), factory, timing)


def check_mixer(
    mixer: DictConfig, attention: DictConfig, sizes: ContractSizes, timing: TimingSizes | None
) -> bool:
    """The contract's rows for the user's sequence mixer (`mixer` in conf/check.yaml)."""
    refuse_attention_with_mixer(attention)
    label, factory = mixer_under_test(mixer, sizes.n_embd)
    print(f"contract of {label}: batch {sizes.batch_size}, T {sizes.length}")
    print(describe_output(factory(sizes.n_embd), sizes))
    results = run_mixer_contract(factory, sizes)
    if timing is not None and mixer.get("dim_key") is None:  # its width is not ours to set
        results.append(not_applicable(TIMING, "mixer.dim_key is null: the width is fixed"))
        timing = None
    return report(results, factory, timing)


def report(results: list[CheckResult], factory: ModuleFactory, timing: TimingSizes | None) -> bool:
    """Add the timing row, print the table and the failures; True when every check passed
    (a check that does not apply counts as passed)."""
    if timing is not None:
        results.append(check_timing(factory, timing))
    print("\n".join(table(results)))
    failed = [r for r in results if not r.passed]
    for result in failed:
        print(f"FAILED {result.failure}")
    skipped = sum(not r.applicable for r in results)
    if not failed and skipped:
        print(f"all {len(results) - skipped} applicable checks passed ({skipped} not applicable)")
    elif not failed:
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
