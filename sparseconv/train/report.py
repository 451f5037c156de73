"""Run-folder outputs: metrics JSON, per-class IoU table, training curves and a bird's-eye view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sparseconv.utils.optional import pyplot, require


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def plot_curves(path: Path, history: list[dict], evals: list[dict]) -> None:
    """Training loss and learning rate per logged step, and held-out mIoU per evaluation."""
    plt = pyplot("training plots")

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = [h["step"] for h in history]
    axes[0].plot(steps, [h["loss"] for h in history])
    axes[0].set(title="training loss", xlabel="step", yscale="log")
    axes[1].plot(steps, [h["lr"] for h in history])
    axes[1].set(title="learning rate", xlabel="step")
    axes[2].plot([e["step"] for e in evals], [e["miou"] for e in evals], "o-")
    axes[2].set(title="held-out mIoU (%)", xlabel="step", ylim=(0, 100))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def class_colors(n: int) -> np.ndarray:
    """A fixed palette (tab20) so a class keeps its colour across plots and runs."""
    matplotlib = require("matplotlib", "training plots")
    cmap = matplotlib.colormaps["tab20"]
    return np.array([cmap(i % 20)[:3] for i in range(n)])


def plot_bev(
    path: Path,
    xyz: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    names: tuple[str, ...],
    ignore: int,
) -> None:
    """Bird's-eye view of one scan: ground truth beside the prediction, coloured by class."""
    plt = pyplot("training plots")
    from matplotlib.patches import Patch

    colors = class_colors(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(14, 7), sharex=True, sharey=True)
    for ax, lab, title in ((axes[0], target, "ground truth"), (axes[1], pred, "prediction")):
        ok = lab != ignore
        ax.scatter(xyz[ok, 0], xyz[ok, 1], s=0.2, c=colors[lab[ok]], linewidths=0)
        ax.set(title=title, aspect="equal", xlabel="x (m)", ylabel="y (m)")
    present = sorted(set(np.unique(target[target != ignore])) | set(np.unique(pred)))
    handles = [Patch(color=colors[c], label=names[c]) for c in present if c < len(names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
