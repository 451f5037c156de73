"""Pruning a trained run: load it, prune with one method, fine-tune at 1/10 of its learning
rate, score it. Shared by ``sparseconv prune``, ``sparseconv bench prune`` and the demo.

The pruning module itself knows nothing of training (it takes callables); this is the glue that
knows where a run keeps its model and data.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sparseconv import datasets, prune
from sparseconv.models import SPVCNN
from sparseconv.train.checkpoint import load_latest
from sparseconv.train.config import TrainConfig, load_config
from sparseconv.train.trainer import Trainer, build_datasets, build_model, evaluate, pick_device

METHODS = ("dense", "channel", "nm", "fine", "offset", "voxel", "combined")


@dataclass
class PruneSpec:
    """One pruning recipe: ``method`` in METHODS plus its settings."""

    method: str = "channel"
    ratio: float = 0.3  # channel: fraction of channels removed per group
    importance: str = "l2"
    global_ranking: bool = False
    round_to: int = 1
    n: int = 2
    m: int = 4
    keep_ends: bool = False  # nm: first and last prunable layers stay dense
    sparsity: float = 0.5  # fine-grained
    pattern: str | None = None  # offset: a fixed pattern (cross, shell19) instead of a ratio
    strides: tuple[int, ...] | None = None  # offset: only the convs at these tensor strides
    keep: float = 0.7  # voxel: fraction of cells every strided conv keeps
    granularity: str = "cell"  # voxel: whole output cells, or single voxels ("voxel")
    score: str = "magnitude"  # voxel: magnitude, learned or random (the baseline)
    parts: list = field(default_factory=list)  # combined: specs applied in order
    label: str = field(default="")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not self.label:
            self.label = {
                "dense": "dense",
                "channel": f"channel {self.importance} {self.ratio:g}"
                + (f" round {self.round_to}" if self.round_to > 1 else ""),
                "nm": f"{self.n}:{self.m} {self.importance}"
                + (" ends dense" if self.keep_ends else ""),
                "fine": f"fine {self.importance} {self.sparsity:g}",
                "offset": (
                    f"offset {self.pattern}"
                    if self.pattern
                    else f"offset {self.importance} {self.ratio:.2g}"
                )
                + (f" at stride {','.join(map(str, self.strides))}" if self.strides else ""),
                "voxel": f"voxel keep {self.keep:g}"
                + (f" {self.score}" if self.score != "magnitude" else "")
                + (" single voxels" if self.granularity == "voxel" else ""),
                "combined": " + ".join(p.label for p in self.parts),
            }[self.method]


@dataclass
class LoadedRun:
    cfg: TrainConfig
    model: nn.Module
    train_set: datasets.ScanDataset
    val_set: datasets.ScanDataset
    device: torch.device


def load_run(run_dir: str | Path, overrides: list[str] | None = None) -> LoadedRun:
    """The trained model of a run folder (its last good checkpoint) with its config and data."""
    run_dir = Path(run_dir)
    found = load_latest(run_dir / "checkpoints", map_location="cpu")
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir / 'checkpoints'}: train a model first")
    state, _ = found
    cfg = load_config(None, list(overrides or []), base=state["config"])
    if cfg.data_root is None:  # synthetic data lives in the run folder, wherever it moved
        cfg.data_root = str(run_dir / "data")
    train_set, val_set = build_datasets(cfg, progress=False)
    model = build_model(cfg, train_set.num_classes)
    model.load_state_dict(state["model"])
    return LoadedRun(cfg, model, train_set, val_set, pick_device(cfg.device))


def example_input(model: nn.Module, batch: datasets.Batch, voxel_size: float):
    """What ``model.forward`` takes for ``batch``: the voxels, plus the points for SPVCNN."""
    if isinstance(model, SPVCNN):
        return (batch.x, batch.points, voxel_size)
    return batch.x


def apply(spec: PruneSpec, model: nn.Module, example) -> tuple[nn.Module, dict]:
    """A pruned copy of ``model`` and what was done to it."""
    model = copy.deepcopy(model)
    info: dict = {"label": spec.label, "method": spec.method}
    if spec.method == "combined":
        for part in spec.parts:
            model, _ = apply(part, model, example)
    elif spec.method == "offset":
        model, report = prune.offset_prune(model, example, spec.ratio, spec.importance,
                                           pattern=spec.pattern, inplace=True,
                                           strides=spec.strides)  # fmt: skip
        info["pair_ratio"] = report.pair_ratio
    elif spec.method == "voxel":
        model = prune.voxel_prune(model, spec.keep, score=spec.score, inplace=True,
                                  granularity=spec.granularity)  # fmt: skip
        counts = prune.voxel_counts(model, example)
        info["voxels_kept"] = sum(k for _, k in counts.values()) / max(
            1, sum(n for n, _ in counts.values())
        )
    elif spec.method == "channel":
        model = prune.channel_prune(
            model, example, spec.ratio, spec.importance, global_ranking=spec.global_ranking,
            round_to=spec.round_to, inplace=True,
        )  # fmt: skip
    elif spec.method == "nm":
        report = prune.nm_prune(model, spec.n, spec.m, spec.importance, keep_ends=spec.keep_ends)
        info["skipped"] = report.skipped
    elif spec.method == "fine":
        prune.fine_grained_prune(model, spec.sparsity, spec.importance)
    info["params"] = sum(p.numel() for p in model.parameters())
    info["nonzero_weights"] = sum(
        int((w != 0).sum()) for w in prune.importance.prunable_weights(model).values()
    )
    info["macs"] = prune.count_macs(model, example)["total"]
    info["voxels_per_stride"] = prune.stride_counts(model, example)
    return model, info


def finetune(
    model: nn.Module, cfg: TrainConfig, steps: int, out: Path, progress: bool = True
) -> dict:
    """Fine-tune ``model`` in place for ``steps`` at a tenth of the run's learning rate; score it."""
    ft = copy.deepcopy(cfg)
    ft.lr = prune.finetune_lr(cfg.lr)
    ft.steps, ft.warmup_steps, ft.out = steps, 0, str(out)
    ft.checkpoint_every, ft.eval_every = 0, 0
    ft.validate()
    return Trainer(ft, progress=progress, model=model).fit()


def score(model: nn.Module, run: LoadedRun, progress: bool = False) -> float:
    conf, _ = evaluate(model.to(run.device), run.val_set, run.device, progress)
    return 100 * conf.miou()


def first_batch(dataset: datasets.ScanDataset, device: torch.device) -> datasets.Batch:
    return datasets.collate([dataset[0]]).to(device)


def parse_spec(text: str) -> PruneSpec:
    """``dense``, ``channel:<importance>:<ratio>[:<round_to>]``, ``nm:<n>:<m>[:ends]``,
    ``fine:<importance>:<sparsity>``, ``offset:<importance>:<ratio>`` or
    ``offset:pattern:<cross|shell19>`` (either with ``:s<stride>[,<stride>...]``: only the convs
    at those tensor strides, e.g. ``:s1`` beside voxel pruning),
    ``voxel:<keep>[:learned|:random][:voxel]`` (the fraction of its output cells each strided
    conv keeps, by feature norm, a learned score or seeded random scores; ``:voxel``: of single
    voxels, before the first strided conv only), and ``+`` between specs to apply several in order
    (``ends``: first and last layers stay dense; ``round_to``: kept widths are multiples of
    it, e.g. 8 for whole SIMD vectors of float32)."""
    if "+" in text:
        parts = [parse_spec(p) for p in text.split("+")]
        if any(p.method in ("dense", "combined") for p in parts):
            raise ValueError(f"bad variant {text!r}: combine pruning methods, not dense")
        return PruneSpec("combined", parts=parts)
    parts = text.split(":")
    try:
        if parts[0] == "voxel" and len(parts) >= 2:
            return _voxel_spec(parts[1:])
        if parts[0] == "offset" and len(parts) in (3, 4):
            return _offset_spec(parts[1:])
        if parts[0] == "dense" and len(parts) == 1:
            return PruneSpec("dense")
        if parts[0] == "channel" and len(parts) in (3, 4):
            round_to = int(parts[3]) if len(parts) == 4 else 1
            if round_to < 1:
                raise ValueError
            return PruneSpec(
                "channel", ratio=float(parts[2]), importance=parts[1], round_to=round_to
            )
        if parts[0] == "nm" and (len(parts) == 3 or (len(parts) == 4 and parts[3] == "ends")):
            n, m = int(parts[1]), int(parts[2])
            return PruneSpec("nm", n=n, m=m, importance="l1", keep_ends=len(parts) == 4)
        if parts[0] == "fine" and len(parts) == 3:
            return PruneSpec("fine", sparsity=float(parts[2]), importance=parts[1])
    except ValueError:
        pass
    raise ValueError(
        f"bad variant {text!r}: use dense, channel:<importance>:<ratio>[:<round_to>], "
        "nm:<n>:<m>[:ends], fine:<importance>:<sparsity>, "
        "offset:<importance>:<ratio>[:s<strides>], offset:pattern:<cross|shell19>[:s<strides>], "
        "voxel:<keep>[:learned|:random][:voxel], or several joined by +"
    )


def _offset_spec(parts: list[str]) -> PruneSpec:
    """``<importance>:<ratio>`` or ``pattern:<name>``, then optionally ``:s<stride>[,...]``
    (a ValueError for anything else)."""
    strides = None
    if len(parts) == 3:
        if not parts[2].startswith("s"):
            raise ValueError
        strides = tuple(int(v) for v in parts[2][1:].split(","))
        if any(v < 1 for v in strides):
            raise ValueError
    if parts[0] == "pattern":
        return PruneSpec("offset", pattern=parts[1], strides=strides)
    return PruneSpec("offset", ratio=float(parts[1]), importance=parts[0], strides=strides)


def _voxel_spec(parts: list[str]) -> PruneSpec:
    """``<keep>[:learned|:random][:voxel]`` (a ValueError for anything else)."""
    keep, flags = float(parts[0]), parts[1:]
    score = flags.pop(0) if flags and flags[0] in ("learned", "random") else "magnitude"
    if not 0 < keep <= 1 or flags not in ([], ["voxel"]):
        raise ValueError
    return PruneSpec("voxel", keep=keep, score=score, granularity="voxel" if flags else "cell")
