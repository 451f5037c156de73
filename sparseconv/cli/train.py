"""``sparseconv train`` and ``sparseconv eval``.

``train --config run.yaml key=value ...`` trains into the config's ``out`` folder;
``--resume`` continues the run found there (same data order and schedule). ``eval --checkpoint``
rebuilds the model from the checkpoint's own config and scores a split at point level.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparseconv.train import Trainer, build_model, evaluate, load_checkpoint, load_config
from sparseconv.train.report import write_json
from sparseconv.train.trainer import build_datasets, pick_device


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "train", help="train a segmentation network (config file + key=value overrides)"
    )
    p.add_argument(
        "--config", type=Path, help="YAML config (keys: see sparseconv.train.TrainConfig)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in the config's out folder"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint (point-level mIoU)")
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--split", default=None, help="split to score (default: the config's val_split)")
    e.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write eval.json (default: next to the checkpoint's run)",
    )
    e.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. data_root=/data/kitti device=cuda"
    )
    e.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg)
    if args.resume and not trainer.resume():
        raise SystemExit(f"--resume: no checkpoint in {Path(cfg.out) / 'checkpoints'}")
    summary = trainer.fit()
    if trainer.rank == 0:
        print((Path(cfg.out) / "per_class_iou.txt").read_text())
        print(f"run folder: {Path(cfg.out).resolve()}  (mIoU {summary['miou_percent']:.1f} %)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    state = load_checkpoint(args.checkpoint)
    overrides = list(args.overrides) + ([f"val_split={args.split}"] if args.split else [])
    cfg = load_config(None, overrides, base=state["config"])
    _, val = build_datasets(cfg, progress=True)
    model = build_model(cfg, val.num_classes).to(pick_device(cfg.device))
    model.load_state_dict(state["model"])
    conf, _ = evaluate(model, val, pick_device(cfg.device))
    out = args.out or Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", {"checkpoint": str(args.checkpoint), "split": cfg.val_split,
                                   "miou_percent": 100 * conf.miou(),
                                   "per_class_iou_percent": conf.per_class(val.class_names)})  # fmt: skip
    print(conf.table(val.class_names))
    print(f"written {out.resolve() / 'eval.json'}")
    return 0
