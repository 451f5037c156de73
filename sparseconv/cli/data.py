"""``sparseconv data synth``: write synthetic LiDAR scans in SemanticKITTI's on-disk format."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparseconv.datasets import write_synthetic_dataset


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="raycast procedural street scenes into SemanticKITTI format")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--train", type=int, default=8, help="scans written as sequence 00")
    s.add_argument("--val", type=int, default=2, help="held-out scans written as sequence 08")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    out = write_synthetic_dataset(args.out, args.train, args.val, args.seed)
    print(
        f"{args.train + args.val} scans written under {out.resolve()}/sequences (00: train, 08: val)"
    )
    return 0
