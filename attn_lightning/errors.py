"""Errors a user can fix. The entry points print their message (no traceback) and exit 2;
any other exception is a bug and keeps its traceback.

In a Hydra multirun, an exit would end the whole sweep at the first bad job (Hydra's job
runner catches exceptions, not SystemExit): there the message is logged and the error raised,
so Hydra records the job as failed, runs the remaining jobs, and reports the failure at the end.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class UserError(Exception):
    """A problem with the user's input: config, data, or checkpoint. Its message says what to
    change."""


class ConfigError(UserError, ValueError):
    """An invalid configuration value (also a ValueError, for callers of the Python API)."""


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, corrupted, or unsafe to load."""


def find_user_error(error: BaseException) -> UserError | None:
    """The UserError behind `error` (Hydra's instantiate wraps constructor errors), if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (`-m`)."""
    # imported here: the pure analysis code imports this module and needs no Hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def exit_on_user_error(entry_point: Callable[..., T]) -> Callable[..., T]:
    """Wrap an entry point: a UserError prints `error: <message>` and exits 2 (in a multirun:
    logs it and raises it, failing this job only); anything else propagates with its
    traceback."""

    @functools.wraps(entry_point)
    def wrapper(*args, **kwargs) -> T:
        try:
            return entry_point(*args, **kwargs)
        except Exception as error:
            user_error = find_user_error(error)
            if user_error is None:
                raise
            if in_multirun():
                log.error("error: %s", user_error)
                raise user_error from None
            print(f"error: {user_error}", file=sys.stderr)
            sys.exit(2)

    return wrapper
