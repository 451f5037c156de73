"""Channel pruning: rank channel classes, pick how many each group loses, remove them.

``ratio`` is the fraction of a group's channels removed (Torch-Pruning's ``pruning_ratio``); a
conv between two pruned groups loses about ``1 - (1 - ratio)^2`` of its MACs. Per-layer ranking
prunes every prunable group by its ratio; global ranking normalises scores by each group's mean
(so groups with large weights do not win by scale) and removes the lowest across the network,
never leaving a group below ``min_width``.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from sparseconv.prune.graph import DependencyGraph, Group
from sparseconv.prune.importance import FPGM, BNScale, Importance, Magnitude, Random, Uniform
from sparseconv.prune.shrink import remove_channels
from sparseconv.prune.tracing import check_patterns, name_matches

_BY_NAME = {
    "l1": lambda: Magnitude(1.0),
    "l2": lambda: Magnitude(2.0),
    "bn_scale": BNScale,
    "fpgm": FPGM,
    "random": Random,
    "uniform": Uniform,
}


def resolve_importance(importance: str | Importance) -> Importance:
    """An :class:`Importance`; names ``l1``, ``l2``, ``lp`` (e.g. ``l3``), ``bn_scale``, ``fpgm``,
    ``random``, ``uniform``. Data-driven criteria (Taylor, Hessian, SNIP, APoZ, Reconstruction) are passed as
    objects because they need calibration batches."""
    if isinstance(importance, Importance):
        return importance
    if importance in _BY_NAME:
        return _BY_NAME[importance]()
    if isinstance(importance, str) and importance.startswith("l"):
        try:
            return Magnitude(float(importance[1:]))
        except ValueError:
            pass
    raise ValueError(
        f"importance must be one of {sorted(_BY_NAME)}, 'l<p>' or an Importance object, got {importance!r}"
    )


def check_ratio(ratio: float, name: str = "ratio") -> None:
    if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {ratio!r}")


def kept_width(n: int, ratio: float, round_to: int) -> int:
    """Channels kept of ``n`` at ``ratio``, rounded up to a multiple of ``round_to`` (at most n)."""
    kept = n - math.floor(n * ratio + 1e-9)
    return min(n, math.ceil(kept / round_to) * round_to)


def group_ratio(group: Group, ratio: float, ratios: dict[str, float] | None) -> float:
    for name in group.producers:
        for key, r in (ratios or {}).items():
            if name_matches(name, [key]):
                return r
    return ratio


def plan_per_group(groups, scores, ratio, ratios, round_to, min_width) -> set[int]:
    removed: set[int] = set()
    for g in groups:
        r = group_ratio(g, ratio, ratios)
        check_ratio(r, f"ratio for {g.producers[0]}")
        kept = kept_width(len(g), r, round_to)
        if kept < min(min_width, len(g)):
            raise ValueError(
                f"pruning {', '.join(g.producers)} at ratio {r} keeps {kept} of {len(g)} channels, "
                f"below min_width={min_width}"
            )
        order = torch.argsort(scores[g.classes], stable=True)
        removed.update(g.classes[i] for i in order[: len(g) - kept].tolist())
    return removed


def plan_global(groups, scores, ratio, round_to, min_width) -> set[int]:
    """Lowest normalised scores across all groups, each group keeping >= min_width channels."""
    entries = []
    for gi, g in enumerate(groups):
        s = scores[g.classes]
        s = s / s.abs().mean().clamp(min=1e-12)
        entries += [(float(v), gi, c) for v, c in zip(s, g.classes)]
    entries.sort()
    total = sum(len(g) for g in groups)
    budget = math.floor(total * ratio + 1e-9)
    taken = [0] * len(groups)
    chosen: list[list[int]] = [[] for _ in groups]
    for _, gi, c in entries:
        if budget == 0:
            break
        if len(groups[gi]) - taken[gi] - 1 < min_width:
            continue
        taken[gi] += 1
        chosen[gi].append(c)
        budget -= 1
    removed: set[int] = set()
    for gi, g in enumerate(groups):
        kept = min(len(g), math.ceil((len(g) - taken[gi]) / round_to) * round_to)
        removed.update(chosen[gi][: len(g) - kept])  # chosen is in ascending score order
    return removed


def channel_prune(
    model: nn.Module,
    example_input,
    ratio: float = 0.5,
    importance: str | Importance = "l2",
    *,
    global_ranking: bool = False,
    ratios: dict[str, float] | None = None,
    round_to: int = 1,
    min_width: int = 1,
    ignore: tuple[str, ...] = (),
    refit: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """Physically remove channels from ``model``; returns the pruned model.

    ``example_input`` is what ``model.forward`` takes (a ``SparseTensor``, or a tuple/dict of
    arguments). ``ratios`` maps layer names (or module prefixes) to their own ratio; ``ignore``
    lists layers whose output channels stay. With a :class:`Reconstruction` importance and
    ``refit=True`` the next layers' weights are refitted by least squares (ThiNet). The original
    model is left untouched unless ``inplace=True``; all checks run before any layer changes, so
    a failing call never leaves a half-pruned model.
    """
    check_ratio(ratio)
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive int, got {round_to!r}")
    if not isinstance(min_width, int) or min_width < 1:
        raise ValueError(f"min_width must be a positive int, got {min_width!r}")
    imp = resolve_importance(importance)
    target = model if inplace else copy.deepcopy(model)
    graph = DependencyGraph(target, example_input)
    layer_names = [n for n, _ in target.named_modules() if n]
    check_patterns(ignore, layer_names, "ignore")
    check_patterns(ratios or {}, layer_names, "ratios")
    graph.ignore = tuple(ignore)
    groups = graph.prunable_groups()
    scores = imp.channel_scores(graph)
    if global_ranking:
        removed = plan_global(groups, scores, ratio, round_to, min_width)
    else:
        removed = plan_per_group(groups, scores, ratio, ratios, round_to, min_width)
    if refit and hasattr(imp, "refit"):
        imp.refit(graph, removed)
    remove_channels(graph, removed)
    return target


def zero_channels(graph: DependencyGraph, classes: set[int], norms: bool = True) -> None:
    """Zero the weights and (unless ``norms=False``) norm parameters of channel classes without
    removing them.

    With the producers' outputs and biases and the norms' gamma and beta zeroed, the channels
    carry exactly zero, so removing them afterwards must not change the network's output: the
    lossless-removal check of the tests and a way to inspect a pruning before committing to it.
    """
    with torch.no_grad():
        for name, cl in graph.layer_classes["producers"].items():
            m = graph.modules[name]
            idx = torch.tensor([i for i, c in enumerate(cl) if c in classes], dtype=torch.long)
            if len(idx):
                axis = 2 if m.weight.dim() == 3 else 0
                m.weight.index_fill_(axis, idx, 0.0)
                if m.bias is not None:
                    m.bias.index_fill_(0, idx, 0.0)
        for name, cl in graph.layer_classes["norms"].items() if norms else ():
            m = graph.modules[name]
            idx = torch.tensor([i for i, c in enumerate(cl) if c in classes], dtype=torch.long)
            if len(idx):
                m.weight.index_fill_(0, idx, 0.0)
                m.bias.index_fill_(0, idx, 0.0)
