"""Dispatch `python -m attn_lightning.bench <name> ...` to `attn_lightning.bench.<name>.main`."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import attn_lightning.bench as bench_package


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench_package.__path__) if m.name[0] != "_")


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] not in names:
        print(
            f"usage: python -m attn_lightning.bench {{{','.join(names)}}} [args]", file=sys.stderr
        )
        return 2
    importlib.import_module(f"attn_lightning.bench.{argv[0]}").main(argv[1:])
    return 0


def cli() -> None:
    """The `attn-bench` console script."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    cli()
