"""Verified, atomic downloads of small data files (e.g. tinyshakespeare).

Why this module exists:

* **Verification.** Every file is pinned to a sha256 digest. A download that is truncated,
  served by a captive portal, or silently changed upstream is rejected instead of being
  trained on; an existing file with the wrong digest is reported, never overwritten.
* **Atomic writes.** The body is streamed into a temporary file in the destination directory
  (attn_lightning/atomic.py) and only takes the final name after the length and checksum
  check out. An interrupted run therefore never leaves a half-written file at the
  path later runs trust, and failed attempts clean up after themselves.
* **Actionable errors.** Every failure raises :class:`DatasetUnavailableError` whose message
  names the URL, the reason, the expected path and how to supply the file by hand (offline
  machines, firewalls).

Only the standard library is used (``urllib.request``), so no extra dependency is needed.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from attn_lightning.atomic import atomic_write
from attn_lightning.errors import UserError

__all__ = ["DatasetUnavailableError", "fetch_verified", "sha256_of"]

logger = logging.getLogger(__name__)

_CHUNK_SIZE = 1 << 16
DATA_DIR_ENV = "ATTN_LIGHTNING_DATA_DIR"


class DatasetUnavailableError(UserError, RuntimeError):
    """A data file could not be found, downloaded or verified; the message says how to fix it."""


def sha256_of(path: Path) -> str:
    """Return the hex sha256 digest of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _remedy(dest: Path) -> str:
    """How to provide ``dest`` by hand, for inclusion in error messages."""
    return (
        f"To supply the file by hand, do one of:\n"
        f"  - download it yourself and save it to exactly {dest}\n"
        f"  - pass data.path=/path/to/{dest.name} on the command line\n"
        f"  - set the environment variable {DATA_DIR_ENV} to a directory that contains "
        f"{dest.name}"
    )


def _describe(exc: BaseException) -> str:
    """Turn a download exception into a short human-readable reason."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}".strip()
    if isinstance(exc, http.client.IncompleteRead):
        received = len(exc.partial)
        if exc.expected is not None:
            return f"truncated body: got {received} of {received + exc.expected} bytes"
        return f"truncated body: got {received} bytes"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return "timed out"
        return f"could not reach host ({reason})"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"{type(exc).__name__}: {exc}"


class _DownloadFailed(Exception):
    """Internal: a failure whose reason has already been worded."""


def _download_to(url: str, fh: IO[bytes], timeout: float) -> str:
    """Stream ``url`` into the open binary file ``fh``; return the sha256 hex digest."""
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length_header = response.headers.get("Content-Length")
        expected = int(length_header) if length_header and length_header.isdigit() else None
        while True:
            chunk = response.read(_CHUNK_SIZE)
            if not chunk:
                break
            fh.write(chunk)
            digest.update(chunk)
            received += len(chunk)
    if expected is not None and received != expected:
        raise _DownloadFailed(f"truncated body: got {received} of {expected} bytes")
    return digest.hexdigest()


def fetch_verified(url: str, dest: Path, sha256: str, timeout: float = 30.0) -> Path:
    """Return ``dest`` if it already exists with the right checksum; otherwise download ``url``.

    The download goes to a temporary file next to ``dest``, is checked against the
    Content-Length and the expected ``sha256``, and is then atomically moved onto ``dest``.
    An existing ``dest`` with a different checksum is never overwritten.

    Raises:
        DatasetUnavailableError: on any failure, with a message saying how to fix it.
    """
    dest = Path(dest)
    expected_digest = sha256.lower()

    if dest.exists():
        actual = sha256_of(dest)
        if actual == expected_digest:
            return dest
        raise DatasetUnavailableError(
            f"The file at {dest} is corrupt or was modified: sha256 mismatch: expected "
            f"{expected_digest}, got {actual}. It was left untouched. Delete it to re-download "
            f"it from {url}, or replace it with the correct file.\n{_remedy(dest)}"
        )

    logger.info("downloading %s -> %s", url, dest)
    try:
        # the file takes its final name only once the whole download matched its digest
        with atomic_write(dest) as fh:
            actual = _download_to(url, fh, timeout)
            if actual != expected_digest:
                raise _DownloadFailed(f"sha256 mismatch: expected {expected_digest}, got {actual}")
    except _DownloadFailed as exc:
        raise DatasetUnavailableError(_failure_message(url, dest, str(exc))) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise DatasetUnavailableError(_failure_message(url, dest, _describe(exc))) from exc
    return dest


def _failure_message(url: str, dest: Path, reason: str) -> str:
    """Build the user-facing message for a failed download."""
    return f"Could not download {url} ({reason}). The file was expected at {dest}.\n{_remedy(dest)}"
