"""The ``sparseconv`` command line: ``demo``, ``train``, ``eval``, ``prune``, ``data synth``,
``bench {maps,conv,prune}``."""

from __future__ import annotations

import argparse
import sys

from sparseconv.cli import bench as bench_cmd
from sparseconv.cli import data as data_cmd
from sparseconv.cli import demo as demo_cmd
from sparseconv.cli import prune as prune_cmd
from sparseconv.cli import train as train_cmd
from sparseconv.train.checkpoint import CheckpointError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparseconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo_cmd.add_parser(sub)
    train_cmd.add_parsers(sub)
    prune_cmd.add_parser(sub)
    data_cmd.add_parser(sub)
    bench_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; errors propagate (for callers and tests). See :func:`console`."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


# what a user's mistake raises (a bad argument, a missing or foreign file, a missing extra): one
# line, no trace; any other error is a fault and keeps its traceback
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, CheckpointError, ImportError)


def console(argv: list[str] | None = None) -> int:
    """The ``sparseconv`` command: :func:`main`, with user errors printed as one line (exit 2)."""
    try:
        return main(argv)
    except USER_ERRORS as err:
        print(f"sparseconv: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(console())
