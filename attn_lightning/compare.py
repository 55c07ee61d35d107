"""`python -m attn_lightning.compare <sweep dir> [<sweep dir> ...] [--output-dir D]`: the
comparison a sweep writes at its end (comparison.md, comparison.csv, protocol.md, figures; for
token tasks the suite's leaderboard, suite.md), rebuilt from the saved runs: after a crash, with
another sweep's runs, or with single run dirs.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from attn_lightning.comparison.report import compare_runs
from attn_lightning.errors import UserError, exit_on_user_error

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m attn_lightning.compare",
        description="Compare the runs of one or more sweeps (or run dirs) in one table.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep dirs (or run dirs)")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where the report goes (default: the sweep dir, when there is one)",
    )
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    output_dir = args.output_dir
    if output_dir is None:
        if len(args.dirs) > 1:
            raise UserError(
                "several dirs are compared: pass --output-dir for the combined report "
                "(it would otherwise overwrite one sweep's own comparison)"
            )
        output_dir = args.dirs[0]
    files = compare_runs(args.dirs, output_dir)
    for path in files:
        print(path)
    return files


def cli() -> None:
    """The `attn-compare` console script: main() for its side effects (a script's return
    value would become its exit status)."""
    main()


if __name__ == "__main__":
    cli()
