"""Reading one settings entry of a MAD task (`{seq_len: 128, frac_noise: 0.2}`): the fields it
must and may hold, as a one-line ConfigError naming the entry unless it reads."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral
from typing import Any

from attn_lightning.errors import ConfigError


def entry_fields(
    entry: Mapping[str, Any],
    key: str,
    required: tuple[str, ...],
    optional: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """{field: value} of `entry`, optional fields filled with their defaults."""
    optional = dict(optional or {})
    given = set(entry)
    missing = [name for name in required if name not in given]
    unknown = sorted(given - set(required) - set(optional))
    if missing or unknown:
        allowed = ", ".join([*required, *(f"{name} (optional)" for name in optional)])
        raise ConfigError(
            f"{key} = {dict(entry)}: "
            + (f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}")
            + f"; give {allowed}"
        )
    return {**optional, **{name: entry[name] for name in given}}


def whole(value: Any, name: str, key: str, minimum: int) -> int:
    """`value` as an int >= minimum, else a ConfigError naming `key`.`name`."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{key}.{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
