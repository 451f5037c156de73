"""``sparseconv bench prune``: dense vs pruned variants of a trained run, in one interleaved run.

Every variant is scored (mIoU right after pruning and after fine-tuning at 1/10 of the run's
learning rate), counted (MACs over the kernel maps, non-zero weights) and timed on the same
held-out scan: ``cached`` reuses the scan's kernel maps (the network's compute alone),
``end-to-end`` builds them again each call (what one new scan costs). Latencies are interleaved
(dense, variant 1, variant 2, ... per round) and speed-ups are medians of per-round ratios.
Masks (N:M, fine-grained) make no dense CPU kernel faster: their latency is reported as measured.
The dense model gets the same fine-tuning steps, and every mIoU change is taken against that
tuned dense model: a short run is often still improving, and crediting those extra steps to the
pruning would flatter it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from sparseconv.bench.report import environment
from sparseconv.prune.tracing import call_model
from sparseconv.tensor import SparseTensor
from sparseconv.train import pruning
from sparseconv.utils.optional import pyplot
from sparseconv.utils.timing import interleaved, median, ratio

# each method's best-measured recipe with its baselines beside it (docs/benchmarks.md)
DEFAULT_SPECS = tuple(
    pruning.parse_spec(text)
    for text in (
        "dense",
        "channel:l2:0.3",
        "channel:uniform:0.3",
        "channel:random:0.3",
        # about half the MACs with SIMD-aligned widths (odd widths run slower per MAC on CPU)
        "channel:l2:0.4:8",
        "channel:uniform:0.4:8",
        "nm:2:4",
        "nm:2:4:ends",
        "fine:l1:0.5",
        "offset:efficiency:0.33",
        "offset:random:0.33",
        "offset:pattern:cross",
        "voxel:0.5",
        "voxel:0.5:random",
        "channel:l2:0.4:8+offset:efficiency:0.33",
        # offsets pruned where voxel pruning keeps every voxel: at every stride they combine badly
        "offset:efficiency:0.33:s1+voxel:0.5",
        "channel:l2:0.4:8+offset:efficiency:0.33:s1+voxel:0.5",
        # its baseline: the same amounts, chosen uniformly / at random
        "channel:uniform:0.4:8+offset:random:0.33:s1+voxel:0.5:random",
    )
)


def _fresh(example):
    """The same scan as a new tensor with an empty map cache (forces map building)."""

    def copy_x(x: SparseTensor) -> SparseTensor:
        return SparseTensor(x.feats, x.coords, x.stride, check=False)

    return (copy_x(example[0]), *example[1:]) if isinstance(example, tuple) else copy_x(example)


def _call(model, example):
    with torch.no_grad():
        return call_model(model, example)


def run(
    run_dir: str | Path,
    specs=DEFAULT_SPECS,
    finetune_steps: int = 100,
    rounds: int = 7,
    out_dir: str | Path | None = None,
    progress: bool = True,
    device: str | None = None,
) -> dict:
    """Score, count and time ``specs`` on the run's held-out scan; ``device`` overrides the run's
    own device setting (fine-tuning and timing both happen there)."""
    loaded = pruning.load_run(run_dir, [f"device={device}"] if device else None)
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "prune_bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    example = pruning.example_input(
        loaded.model, pruning.first_batch(loaded.val_set, loaded.device), loaded.cfg.voxel_size
    )
    dense_miou = pruning.score(loaded.model, loaded)
    rows, models = [], {}
    for spec in tqdm(specs, desc="prune variants", disable=not progress):
        model, info = pruning.apply(spec, loaded.model, example)
        info["miou_pruned"] = dense_miou if spec.method == "dense" else pruning.score(model, loaded)
        if finetune_steps:
            safe = spec.label.replace(" ", "_").replace(":", "-")
            pruning.finetune(model, loaded.cfg, finetune_steps, out_dir / safe, progress=False)
            info["miou_finetuned"] = pruning.score(model, loaded)
        else:
            info["miou_finetuned"] = info["miou_pruned"]
        model.eval()
        models[spec.label] = model
        rows.append(info)
    contenders = {}
    for label, model in models.items():
        contenders[f"{label}|cached"] = lambda m=model: _call(m, example)
        contenders[f"{label}|e2e"] = lambda m=model: _call(m, _fresh(example))
    times = interleaved(contenders, rounds=rounds, device=loaded.device.type)
    dense = rows[0]
    for info in rows:
        label = info["label"]
        info["macs_ratio"] = info["macs"] / dense["macs"]
        info["delta_miou"] = info["miou_finetuned"] - dense["miou_finetuned"]
        for kind in ("cached", "e2e"):
            info[f"{kind}_ms"] = 1e3 * median(times[f"{label}|{kind}"])
            info[f"{kind}_speedup"] = ratio(times, f"{label}|{kind}", f"{dense['label']}|{kind}")
    plot(rows, out_dir / "prune_tradeoff.png")
    return {
        "dense_miou": dense_miou,
        "dense_finetuned_miou": dense["miou_finetuned"],
        "finetune_steps": finetune_steps,
        "rows": rows,
        "out_dir": str(out_dir),
        "environment": environment(loaded.device.type),
    }


def _ms(value: float) -> str:
    """Three significant digits for GPU-scale times, whole milliseconds (never 1.2e+03) above."""
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def table_rows(rows: list[dict]) -> list[dict]:
    """The columns printed by the CLI."""
    return [
        {
            "variant": r["label"],
            "GMACs": f"{r['macs'] / 1e9:.2f}",
            "MACs": f"{100 * r['macs_ratio']:.0f}%",
            "nonzero w": r["nonzero_weights"],
            "mIoU pruned": f"{r['miou_pruned']:.1f}",
            "mIoU tuned": f"{r['miou_finetuned']:.1f}",
            "dmIoU": f"{r['delta_miou']:+.1f}",
            "ms cached": _ms(r["cached_ms"]),
            "x cached": f"{r['cached_speedup']:.2f}",
            "ms e2e": _ms(r["e2e_ms"]),
            "x e2e": f"{r['e2e_speedup']:.2f}",
        }
        for r in rows
    ]


def _pareto(ax, rows: list[dict], key: str) -> None:
    """The front of variants no other is both faster (or cheaper) and more accurate than."""
    scale = 1e9 if key == "macs" else 1.0
    points = sorted((r[key] / scale, r["miou_finetuned"]) for r in rows)
    front, best = [], float("-inf")
    for x, y in points:
        if y > best:
            front.append((x, y))
            best = y
    ax.plot(*zip(*front), color="0.6", lw=1, zorder=0, label="Pareto front")


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot("the pruning benchmark plot")

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, key, xlabel in (
        (axes[0], "macs", "GMACs per scan"),
        (axes[1], "cached_ms", "latency per scan, maps cached (ms)"),
        (axes[2], "e2e_ms", "latency per scan, maps built per call (ms)"),
    ):
        _pareto(ax, rows, key)
        for r in rows:
            x = r[key] / 1e9 if key == "macs" else r[key]
            ax.scatter(x, r["miou_finetuned"], s=30)
            ax.annotate(
                r["label"],
                (x, r["miou_finetuned"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mIoU after fine-tuning (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("pruned variants: accuracy vs cost (uniform and random channel baselines)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
