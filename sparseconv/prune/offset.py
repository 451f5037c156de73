"""Kernel-offset pruning: remove whole kernel offsets of sparse convs.

The "kernel-level" granularity of the pruning literature, mapped to sparse convolution: a 3x3x3
conv keeps a subset of its 27 offsets, its weight becomes ``[K', Cin, Cout]`` and its kernel map
is restricted to those offsets (``Conv3d.keep_offsets``), so every dataflow gathers, multiplies
and stores less. The centre offset is always kept. Layers that share one map (all submanifold
convs of a stage) may keep different offsets: each filters the shared map.

Importance of offset ``k`` of a layer:

* ``"norm"``: ``||W[k]||_2``;
* ``"work"``: ``||W[k]||_2 * pairs(k)``, weight norm times the number of input/output pairs the
  offset has on the example (an offset that rarely finds a neighbour contributes little);
* ``"efficiency"``: ``||W[k]||_2 / sqrt(pairs(k))``, the output energy the offset contributes
  (about ``||W[k]||^2 * pairs(k)``, so its magnitude ``||W[k]|| * sqrt(pairs(k))``) per pair it
  costs: a latency-aware ranking that removes the busy offsets whose weights matter least, where
  ``"norm"`` mostly removes offsets that rarely find a neighbour (small weights, little work);
* ``"taylor"``: ``sum_batches |<W[k], dL/dW[k]>|``, first-order Taylor (needs ``batches``
  and ``loss_fn``);
* ``"random"``: seeded random scores, the baseline a ranking must beat (the same offsets on
  every call).

With ``symmetric`` (the default) offsets are removed in mirror pairs (``delta`` with
``-delta``, their scores summed), as many pairs as make at least ``ratio`` of the non-centre
offsets: a submanifold map of a mirror-symmetric subset is then *built* for the kept offsets
alone (half of them searched, the rest mirrored), instead of restricted from the full map, so
pruning also cuts map building when maps are built per scan.

``scope="layer"`` removes ``ratio`` of each layer's non-centre offsets (by default one subset
for all the layers on one map, ``share_maps``); ``"global"`` ranks every layer's non-centre
offsets together (scores divided by their layer's mean, so layers of
different scale compare), keeping at least the centre everywhere. ``pattern="cross"`` (centre +
6 face neighbours) or ``"shell19"`` (+ the 12 edge neighbours) keeps a fixed pattern instead.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from sparseconv import nn as snn
from sparseconv.maps.offsets import as_triple
from sparseconv.prune.importance import LossFn, Taylor
from sparseconv.prune.tracing import layer_inputs

IMPORTANCES = ("norm", "work", "efficiency", "taylor", "random")
RANDOM_SEED = 0  # "random": the baseline every ranking must beat, the same on every call
PATTERNS = ("cross", "shell19")


@dataclass
class OffsetReport:
    """What :func:`offset_prune` did: kept offsets and pair counts per layer."""

    kept: dict[str, list[int]] = field(default_factory=dict)
    volume: dict[str, int] = field(default_factory=dict)
    pairs_before: dict[str, int] = field(default_factory=dict)
    pairs_after: dict[str, int] = field(default_factory=dict)

    @property
    def pair_ratio(self) -> float:
        """Pairs left over pairs before, over every pruned layer (the gather/GEMM work)."""
        before = sum(self.pairs_before.values())
        return sum(self.pairs_after.values()) / before if before else 1.0


def prunable_offset_layers(model: nn.Module) -> dict[str, snn.Conv3d]:
    """Convs with a centre offset (every kernel dimension odd) and more than one offset."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, snn.Conv3d)
        and math.prod(m.kernel_size) > 1
        and all(k % 2 == 1 for k in m.kernel_size)
    }


def centre_index(kernel_size: tuple[int, int, int]) -> int:
    """The weight row of the kernel centre (x-major, z fastest)."""
    kx, ky, kz = kernel_size
    return (kx // 2) * ky * kz + (ky // 2) * kz + kz // 2


def pattern_offsets(kernel_size: tuple[int, int, int], pattern: str) -> list[int]:
    """Indices of a fixed pattern: ``"cross"`` (centre and the 6 face neighbours) or
    ``"shell19"`` (those and the 12 edge neighbours), for any odd kernel."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    limit = 1 if pattern == "cross" else 2
    centre = [k // 2 for k in kernel_size]
    kept = []
    for i, idx in enumerate(itertools.product(*(range(k) for k in kernel_size))):
        delta = [abs(a - c) for a, c in zip(idx, centre)]
        if max(delta) <= 1 and sum(delta) <= limit:
            kept.append(i)
    return kept


def offset_prune(
    model: nn.Module,
    example,
    ratio: float = 1 / 3,
    importance: str = "norm",
    scope: str = "layer",
    pattern: str | None = None,
    batches: Iterable | None = None,
    loss_fn: LossFn | None = None,
    layers: Iterable[str] | None = None,
    share_maps: bool = True,
    symmetric: bool = True,
    inplace: bool = False,
    strides: Iterable[int | tuple[int, int, int]] | None = None,
) -> tuple[nn.Module, OffsetReport]:
    """A copy of ``model`` (or ``model`` itself with ``inplace``) whose prunable convs keep
    ``1 - ratio`` of their non-centre offsets, and the report. ``share_maps`` keeps one subset
    for all layers on one kernel map (their scores summed): the restricted map is then derived
    once per map, not once per layer, which is what makes pruning pay when maps are built per
    scan; ``False`` lets each layer choose its own. ``symmetric`` removes mirror pairs (see the
    module docstring); ``False`` removes single offsets. ``strides`` keeps only the convs whose
    input has one of these tensor strides on ``example`` (``(1,)``: the full-resolution layers,
    the ones voxel pruning leaves whole; offset pruning of the coarse strides that voxel
    pruning thins leaves their layers too few neighbours, see docs/pruning.md). Checks
    everything before changing anything: a refused call leaves the model as it was."""
    targets = _targets(model, layers)
    _check_arguments(ratio, importance, scope, pattern, batches, loss_fn)
    inputs = layer_inputs(model, example, targets)
    if strides is not None:
        targets = _at_strides(targets, inputs, strides)
    pairs, map_of = _pairs_per_offset(targets, inputs)
    if pattern is not None:
        kept = {n: pattern_offsets(m.kernel_size, pattern) for n, m in targets.items()}
        kept = {n: [k for k in ks if k in _current(targets[n])] for n, ks in kept.items()}
    else:
        scores = _scores(model, targets, importance, pairs, batches, loss_fn)
        units: dict[int, list[str]] = {}
        for name in targets:
            units.setdefault(map_of[name] if share_maps else id(name), []).append(name)
        kept = _choose(targets, scores, ratio, scope, list(units.values()), symmetric)
    if not inplace:
        model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    report = OffsetReport()
    for name, keep in kept.items():
        layer = modules[name]
        before = _current(layer)
        report.pairs_before[name] = sum(pairs[name][before.index(k)] for k in before)
        report.pairs_after[name] = sum(pairs[name][before.index(k)] for k in keep)
        layer.keep_offsets(keep)
        report.kept[name] = list(keep)
        report.volume[name] = math.prod(layer.kernel_size)
    return model, report


def zero_offsets(model: nn.Module, kept: dict[str, list[int]]) -> None:
    """Zero the weight rows of the offsets :func:`offset_prune` would remove (for checks that
    removal is lossless), leaving shapes alone."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, keep in kept.items():
            layer = modules[name]
            for row, k in enumerate(_current(layer)):
                if k not in keep:
                    layer.weight[row].zero_()


def _current(layer: snn.Conv3d) -> list[int]:
    kept = layer.offsets()
    return list(range(math.prod(layer.kernel_size))) if kept is None else list(kept)


def _targets(model: nn.Module, layers) -> dict[str, snn.Conv3d]:
    targets = prunable_offset_layers(model)
    if layers is not None:
        layers = list(layers)
        unknown = [n for n in layers if n not in targets]
        if unknown:
            raise ValueError(
                f"layers {unknown} are not prunable convs (odd kernel, more than one offset); "
                f"prunable: {sorted(targets)[:8]}{' ...' if len(targets) > 8 else ''}"
            )
        targets = {n: targets[n] for n in layers}
    if not targets:
        raise ValueError("the model has no conv with a centre offset to prune (odd kernel > 1)")
    return targets


def _check_arguments(ratio, importance, scope, pattern, batches, loss_fn) -> None:
    if pattern is None:
        if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise ValueError(
                f"ratio must be in [0, 1): the fraction of non-centre offsets removed (1 would "
                f"leave only the centre, a 1x1x1 conv), got {ratio!r}"
            )
        if importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        if importance == "taylor" and (batches is None or loss_fn is None):
            raise ValueError("importance='taylor' needs batches and loss_fn")


def _at_strides(targets: dict[str, snn.Conv3d], inputs: dict, strides) -> dict[str, snn.Conv3d]:
    """The targets whose input on the example has one of the tensor ``strides``."""
    wanted = {as_triple(s, "strides") for s in strides}
    if not wanted:
        raise ValueError("strides must name at least one tensor stride (e.g. (1,))")
    found = {n: m for n, m in targets.items() if n in inputs and inputs[n].stride in wanted}
    if not found:
        seen = sorted({x.stride for x in inputs.values()})
        raise ValueError(
            f"no prunable conv runs at tensor strides {sorted(wanted)}; they run at {seen}"
        )
    return found


def _pairs_per_offset(targets, inputs) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Pairs of each kept offset of every target on its recorded input, and which map each
    layer uses (layers on the same cached map get the same id)."""
    pairs, map_of, maps = {}, {}, []
    for name, layer in targets.items():
        with torch.no_grad():
            kmap = layer.kernel_map(inputs[name])
        maps.append(kmap)  # held, so that no id is reused while grouping
        pairs[name] = [int(v) for v in (kmap.nbmap >= 0).sum(0).tolist()]
        map_of[name] = id(kmap)
    return pairs, map_of


def _scores(model, targets, importance, pairs, batches, loss_fn) -> dict[str, torch.Tensor]:
    norms = {n: m.weight.detach().double().flatten(1).norm(dim=1) for n, m in targets.items()}
    if importance == "norm":
        return norms
    if importance == "random":
        g = torch.Generator().manual_seed(RANDOM_SEED)
        return {n: torch.rand(len(v), generator=g, dtype=torch.float64) for n, v in norms.items()}
    if importance in ("work", "efficiency"):
        counts = {n: torch.tensor(pairs[n], dtype=torch.float64) for n in targets}
        if importance == "work":
            return {n: norms[n] * counts[n] for n in targets}
        return {n: norms[n] / counts[n].clamp(min=1).sqrt() for n in targets}
    taylor = Taylor(loss_fn, batches)
    taylor.ensure(model)  # sum over batches of g * w per weight, keyed by layer name
    return {n: taylor.stats[n].double().flatten(1).sum(1).abs() for n in targets}


def _choose(targets, scores, ratio: float, scope: str, units: list[list[str]], symmetric: bool):
    """Offsets removed per unit (a layer, or the layers sharing one map, which have the same
    kept offsets): each layer's scores divided by their mean, summed over the unit. A candidate
    is one offset, or with ``symmetric`` a mirror pair (``k`` and ``K - 1 - k``)."""
    candidates = []  # (score, unit index, offsets removed together)
    for u, names in enumerate(units):
        first = targets[names[0]]
        volume = math.prod(first.kernel_size)
        centre = centre_index(first.kernel_size)
        total: dict[int, float] = {}
        for name in names:
            s = scores[name]
            rest = [(float(s[row]), k) for row, k in enumerate(_current(targets[name]))
                    if k != centre]  # fmt: skip
            mean = sum(v for v, _ in rest) / len(rest) if rest else 1.0
            for v, k in rest:
                total[k] = total.get(k, 0.0) + v / (mean or 1.0) / len(names)
        if symmetric:
            grouped: dict[tuple[int, ...], float] = {}
            present = set(total)
            for k, v in total.items():
                group = tuple(sorted({k, volume - 1 - k} & present))
                grouped[group] = grouped.get(group, 0.0) + v
            candidates += [(v, u, g) for g, v in grouped.items()]
        else:
            candidates += [(v, u, (k,)) for k, v in total.items()]
    removed: set[tuple[int, int]] = set()
    if scope == "global":
        removed = _take(sorted(candidates), ratio)
    else:
        for u in range(len(units)):
            removed |= _take(sorted(c for c in candidates if c[1] == u), ratio)
    return {
        name: [k for k in _current(targets[name]) if (u, k) not in removed]
        for u, names in enumerate(units)
        for name in names
    }


def _take(ranked: list[tuple[float, int, tuple[int, ...]]], ratio: float) -> set[tuple[int, int]]:
    """The lowest-ranked candidates covering ``ratio`` of their offsets (single offsets: the
    nearest count; mirror pairs: enough pairs to reach at least ``ratio``)."""
    n = sum(len(g) for _, _, g in ranked)
    target = ratio * n
    if all(len(g) == 1 for _, _, g in ranked):
        target = int(round(target))
    removed, count = set(), 0
    for _, u, group in ranked:
        if count >= target - 1e-9:
            break
        removed |= {(u, k) for k in group}
        count += len(group)
    return removed


__all__ = [
    "IMPORTANCES",
    "PATTERNS",
    "OffsetReport",
    "centre_index",
    "offset_prune",
    "pattern_offsets",
    "prunable_offset_layers",
    "zero_offsets",
]
