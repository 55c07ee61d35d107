"""How every Hydra entry point meets its user: `@hydra_entry_point("train")` is `@hydra.main`
whose config errors end in one line and exit 2.

Hydra reports a config it cannot compose (an unknown key, a value of the wrong type, a missing
option, an override it cannot parse) in several lines and exits 1, the code a crash also gets;
a constructor that refuses its config values (`trainer.precision=17`, `model.dropout=1.5`)
reaches the user as "Error in call to target ..." over several lines, and a `???` value left
unset as a traceback. Here each becomes `error: <what is wrong, naming the key>` on one line
and exit 2, the project's code for bad input (errors.py). Anything else is a bug and keeps its
traceback. `HYDRA_FULL_ERROR=1` (Hydra's own switch) shows every error in full, as in Hydra.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

import hydra
from hydra.errors import HydraException, InstantiationException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from attn_lightning.config import CONFIG_DIR
from attn_lightning.errors import ConfigError, exit_on_user_error, find_user_error

FULL_ERROR = "HYDRA_FULL_ERROR"


@contextmanager
def errors_raised() -> Iterator[None]:
    """Hydra raises errors instead of printing them while this lasts (its HYDRA_FULL_ERROR)."""
    saved = os.environ.get(FULL_ERROR)
    os.environ[FULL_ERROR] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(FULL_ERROR, None)
        else:
            os.environ[FULL_ERROR] = saved


def one_line(text: str) -> str:
    """A Hydra/OmegaConf message on one line: option lists joined by commas, the type lines
    (`object_type=...`) and the config search path dropped."""
    parts: list[str] = []
    listing = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("object_type=", "provider=", "reference_type=")):
            continue
        if line.startswith("Config search path"):
            break
        if listing and raw.startswith(("\t", "  ")):
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
            continue
        listing = line.endswith(":")
        parts.append(line)
    return " ".join(parts)


def config_error_message(error: BaseException) -> str | None:
    """The one-line message of a config error, or None when `error` is not one (a bug)."""
    if isinstance(error, MissingMandatoryValue):
        key = error.full_key or "a key"
        return f"{key} is required (??? in the config): pass {key}=<value>"
    if isinstance(error, InstantiationException):
        cause = error.__cause__
        key = re.search(r"full_key: (\S+)", str(error))
        target = re.search(r"target '([^']+)'", str(error))
        built = target.group(1) if target else "a config"
        where = f"{key.group(1)} ({built})" if key else built
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(error)
        return f"{where} refused its config: {one_line(reason)}"
    if isinstance(error, OverrideParseException):
        return (
            f"{one_line(str(error))}; quote a value with spaces, commas or non-ASCII "
            "characters: key='\"the value\"'"
        )
    if isinstance(error, HydraException | OmegaConfBaseException):
        cause = error.__cause__
        text = str(error)
        if isinstance(cause, OmegaConfBaseException) and str(cause) not in text:
            text += "\n" + str(cause)
        return one_line(text)
    return None


def refuse_appended_keys(cfg: DictConfig, schema: type, config_name: str) -> None:
    """A top-level key that `+key=value` added to a typed config: Hydra accepts it, and
    nothing would ever read it (a misspelt `+max_step=10` would be a silent no-op)."""
    unknown = sorted(set(cfg.keys()) - {f.name for f in fields(schema)})
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"{key}: conf/{config_name}.yaml has no such key, so nothing would read it "
            f"(added with +{key}=...): drop it, or check its spelling"
        )


def hydra_entry_point(
    config_name: str, schema: type | None = None
) -> Callable[[Callable[..., Any]], Callable[[], Any]]:
    """`@hydra.main(config_name=...)` around `task` (whose UserErrors exit 2 already), with
    Hydra's and OmegaConf's config errors as one line and exit 2 (module docstring). `schema`:
    the config's dataclass, whose fields are the only top-level keys allowed."""

    def decorate(task: Callable[..., Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def checked_task(cfg: DictConfig) -> Any:
            try:
                if schema is not None:
                    refuse_appended_keys(cfg, schema, config_name)
                return task(cfg)
            except Exception as error:  # a constructor refusing its config, an unset ???
                user_error = find_user_error(error)
                key = re.search(r"full_key: (\S+)", str(error))
                if user_error and key and key.group(1) not in str(user_error):
                    # the key whose value the constructor refused, when its message lacks it
                    raise ConfigError(f"{key.group(1)}: {user_error}") from error
                message = None if user_error else config_error_message(error)
                if message is None:
                    raise
                raise ConfigError(message) from error

        hydra_main = hydra.main(
            version_base="1.3", config_path=CONFIG_DIR, config_name=config_name
        )(exit_on_user_error(checked_task))

        @functools.wraps(task)
        def main() -> Any:
            if os.environ.get(FULL_ERROR) == "1":
                return hydra_main()
            try:
                with errors_raised():
                    return hydra_main()
            except Exception as error:  # composing failed, or a multirun job (at its end)
                user_error = find_user_error(error)
                message = str(user_error) if user_error else config_error_message(error)
                if message is None:
                    raise
                print(f"error: {message}", file=sys.stderr)
                sys.exit(2)

        return main

    return decorate
