"""Choosing per-layer ratios: sensitivity scan and latency-driven search (NetAdapt).

Both take ``evaluate(model) -> metric`` (higher is better, e.g. mIoU on a validation split) so
the pruning module needs no trainer; NetAdapt also takes ``latency(model) -> seconds``, e.g.
 a function that times the model on a scan with :mod:`sparseconv.utils.timing`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from sparseconv.prune.channel import channel_prune, check_ratio
from sparseconv.prune.graph import DependencyGraph
from sparseconv.utils.optional import pyplot
from sparseconv.utils.progress import progress_bar

Evaluate = Callable[[nn.Module], float]
DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class Sensitivity:
    """Metric after pruning each group alone at each ratio (``curves[group][i]`` at ``ratios[i]``)."""

    baseline: float
    ratios: tuple[float, ...]
    curves: dict[str, list[float]] = field(default_factory=dict)

    def pick(self, max_drop: float) -> dict[str, float]:
        """Per group, the largest ratio whose metric stays within ``max_drop`` of the baseline
        (and every smaller ratio does too). Pass the result as ``ratios=`` to ``channel_prune``."""
        out = {}
        for name, values in self.curves.items():
            best = 0.0
            for r, v in zip(self.ratios, values):
                if self.baseline - v > max_drop:
                    break
                best = r
            out[name] = best
        return out

    def plot(self, path: str | Path) -> Path:
        plt = pyplot("the sensitivity plot")

        fig, ax = plt.subplots(figsize=(8, 5))
        for name, values in self.curves.items():
            ax.plot(self.ratios, values, marker=".", label=name)
        ax.axhline(self.baseline, color="k", ls="--", lw=1, label="unpruned")
        ax.set_xlabel("fraction of the group's channels removed")
        ax.set_ylabel("metric")
        ax.set_title("per-layer pruning sensitivity")
        if len(self.curves) <= 12:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return Path(path)


def sensitivity_scan(
    model: nn.Module,
    example,
    evaluate: Evaluate,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    importance="l2",
    groups: Sequence[str] | None = None,
    progress: bool = True,
) -> Sensitivity:
    """Prune one group at a time (named by its first producer layer) at every ratio, evaluate."""
    for r in ratios:
        check_ratio(r)
    graph = DependencyGraph(model, example)
    names = [g.producers[0] for g in graph.prunable_groups()]
    if groups is not None:
        unknown = set(groups) - set(names)
        if unknown:
            raise ValueError(f"unknown or unprunable groups {sorted(unknown)}; prunable: {names}")
        names = list(groups)
    result = Sensitivity(evaluate(model), tuple(ratios))
    bar = progress_bar(total=len(names) * len(ratios), desc="sensitivity", disable=not progress)
    for name in names:
        result.curves[name] = []
        for r in ratios:
            pruned = channel_prune(model, example, 0.0, importance, ratios={name: r})
            result.curves[name].append(evaluate(pruned))
            bar.update()
    bar.close()
    return result


@dataclass
class NetAdaptStep:
    group: str
    ratio: float
    latency: float
    metric: float


def netadapt(
    model: nn.Module,
    example,
    evaluate: Evaluate,
    latency: Callable[[nn.Module], float],
    target: float,
    step_cut: float = 0.1,
    ratios: Sequence[float] = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75),
    importance="l2",
    finetune: Callable[[nn.Module], None] | None = None,
    max_steps: int = 20,
    progress: bool = True,
) -> tuple[nn.Module, list[NetAdaptStep]]:
    """NetAdapt (Yang et al. 2018): until ``latency <= target * initial``, cut ``step_cut`` of the
    current latency per step: for each group find the smallest ratio that reaches the cut, keep
    the candidate with the best metric (after the optional short ``finetune``)."""
    if not 0 < target < 1:
        raise ValueError(
            f"target (fraction of the initial latency) must be in (0, 1), got {target}"
        )
    goal = latency(model) * target
    history: list[NetAdaptStep] = []
    current, lat = model, latency(model)
    for _ in progress_bar(range(max_steps), desc="netadapt", disable=not progress):
        if lat <= goal:
            break
        want = lat * (1 - step_cut)
        best = None
        for g in DependencyGraph(current, example).prunable_groups():
            name = g.producers[0]
            for r in ratios:
                if len(g) - int(len(g) * r) < 1:
                    break
                cand = channel_prune(current, example, 0.0, importance, ratios={name: r})
                cl = latency(cand)
                if cl <= want:
                    if finetune is not None:
                        finetune(cand)
                    m = evaluate(cand)
                    if best is None or m > best[0]:
                        best = (m, cand, NetAdaptStep(name, r, cl, m))
                    break
        if best is None:
            break
        current, lat = best[1], best[2].latency
        history.append(best[2])
    return current, history
