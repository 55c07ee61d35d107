"""Errors a user can fix. The entry points print their message (no traceback) and exit 2;
any other exception is a bug and keeps its traceback."""

from __future__ import annotations


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
