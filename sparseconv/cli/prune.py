"""``sparseconv prune``: prune a trained run, fine-tune it at 1/10 of its learning rate, save it.

``--variant`` takes any ``bench prune`` variant (``channel:<importance>:<ratio>[:<round_to>]``,
``nm:<n>:<m>[:ends]``, ``fine:<importance>:<sparsity>``, ``offset:...``, ``voxel:...``, several
joined by ``+``: :func:`sparseconv.train.pruning.parse_spec`). The result is written without
pickle (``pruned.npz``, loadable with ``sparseconv.prune.load``) with ``prune.json`` (MACs,
mIoU before and after fine-tuning).
``--sensitivity`` instead scans every prunable group at ratios 0.1..0.9 and plots the mIoU.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a trained run (channel, N:M, fine-grained, offsets, voxels) and fine-tune",
    )
    p.add_argument("--run", type=Path, required=True, help="run folder of `sparseconv train`/demo")
    p.add_argument("--variant", default="channel:l2:0.3", help="default channel:l2:0.3")
    p.add_argument("--finetune-steps", type=int, default=200, help="fine-tuning steps at lr/10")
    p.add_argument("--out", type=Path, default=None, help="default <run>/pruned")
    p.add_argument("--show-graph", action="store_true", help="print the channel dependency groups")
    p.add_argument(
        "--sensitivity", action="store_true", help="per-group sensitivity scan (PNG) instead"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. device=cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparseconv import prune
    from sparseconv.train import pruning
    from sparseconv.train.report import write_json

    spec = pruning.parse_spec(args.variant)
    loaded = pruning.load_run(args.run, args.overrides)
    out = args.out or args.run / "pruned"
    out.mkdir(parents=True, exist_ok=True)
    batch = pruning.first_batch(loaded.val_set, loaded.device)
    example = pruning.example_input(loaded.model, batch, loaded.cfg.voxel_size)
    if args.show_graph:
        print(prune.DependencyGraph(loaded.model, example))
    if args.sensitivity:
        sens = prune.sensitivity_scan(
            loaded.model, example, lambda m: pruning.score(m, loaded), importance=spec.importance
        )
        png = sens.plot(out / "sensitivity.png")
        write_json(out / "sensitivity.json", {"baseline": sens.baseline, "ratios": sens.ratios,
                                              "curves": sens.curves, "pick_1pt": sens.pick(1.0)})  # fmt: skip
        print(f"sensitivity plot: {png}; ratios within 1 mIoU point: {sens.pick(1.0)}")
        return 0
    dense = {
        "macs": prune.count_macs(loaded.model, example)["total"],
        "miou": pruning.score(loaded.model, loaded),
    }
    model, info = pruning.apply(spec, loaded.model, example)
    info["miou_pruned"] = pruning.score(model, loaded)
    if args.finetune_steps:
        pruning.finetune(model, loaded.cfg, args.finetune_steps, out / "finetune")
    info["miou_finetuned"] = pruning.score(model, loaded)
    prune.save(model, out / "pruned.npz")
    write_json(out / "prune.json", {"variant": args.variant, "dense": dense, "pruned": info})
    print(
        f"{spec.label}: MACs {info['macs'] / 1e9:.2f} G ({100 * info['macs'] / dense['macs']:.0f} % "
        f"of dense), mIoU {dense['miou']:.1f} -> {info['miou_pruned']:.1f} (pruned) -> "
        f"{info['miou_finetuned']:.1f} (after {args.finetune_steps} fine-tuning steps)\n"
        f"saved {out / 'pruned.npz'} and prune.json"
    )
    return 0
