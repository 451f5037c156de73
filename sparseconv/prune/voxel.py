"""Voxel pruning of a network: a :class:`sparseconv.nn.VoxelPrune` in front of chosen convs.

``voxel_prune(model, keep_ratio=0.7)`` gives every strided (downsampling) conv a ``VoxelPrune``
child that filters its input (a forward pre-hook) by whole output cells of that conv, so every
coarser stride holds about ``keep_ratio`` of the cells it would have, with a kept cell in every
block of two cells' size (the decoder fills the dropped ones from it); the conv's own
parameters and state_dict keys do not change. ``granularity="voxel"`` drops single voxels
instead, by default before the first strided conv only (voxel-level pruning before every
strided conv compounds: 0.7 four times leaves a quarter at stride 16). ``layers=`` picks the
convs by name. Stride-1 convs can be chosen at voxel granularity: then the maps at that stride
are rebuilt on the kept voxels. A model whose decoder concatenates skips must put the upsampled
tensor back on the skip's voxels (:func:`sparseconv.nn.scatter_to`, or
:func:`sparseconv.nn.cat_skip` for the fill and the concatenation in one pass, which
sparseconv's models call).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from torch import nn

from sparseconv import nn as snn
from sparseconv.nn.voxel_prune import VoxelPrune

_CHILD = "voxel_prune"
GRANULARITIES = ("cell", "voxel")


def voxel_prune(
    model: nn.Module,
    keep_ratio: float | None = 0.7,
    threshold: float | None = None,
    score: str = "magnitude",
    layers: Iterable[str] | None = None,
    inplace: bool = False,
    granularity: str = "cell",
) -> nn.Module:
    """A copy of ``model`` (or ``model`` with ``inplace``) whose chosen convs see only the kept
    voxels of their input. Default layers: every strided, non-transposed Conv3d for cells, the
    first one for voxels."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    convs = {n: m for n, m in model.named_modules() if isinstance(m, snn.Conv3d)}
    if layers is None:
        strided = [n for n, m in convs.items() if m.stride != (1, 1, 1) and not m.transposed]
        chosen = strided if granularity == "cell" else strided[:1]
    else:
        chosen = list(layers)
        unknown = [n for n in chosen if n not in convs or convs[n].transposed]
        if unknown:
            raise ValueError(
                f"layers {unknown} are not (non-transposed) Conv3d layers of the model"
            )
    if not chosen:
        raise ValueError("the model has no strided Conv3d to prune voxels before (give layers=)")
    if granularity == "cell":
        flat = [n for n in chosen if convs[n].stride == (1, 1, 1)]
        if flat:
            raise ValueError(
                f"layers {flat} are submanifold (stride 1): cells need a strided conv; "
                "use granularity='voxel'"
            )
    already = [n for n in chosen if hasattr(convs[n], _CHILD)]
    if already:
        raise ValueError(f"layers {already} prune voxels already")
    # built (and so checked) before the model is touched: a refused call changes nothing
    pruners = {
        n: VoxelPrune(
            keep_ratio,
            threshold,
            score,
            convs[n].in_channels,
            cell=convs[n].stride if granularity == "cell" else None,
        )
        for n in chosen
    }
    if not inplace:
        model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    for name, pruner in pruners.items():
        conv = modules[name]
        conv.add_module(_CHILD, pruner)
        conv.register_forward_pre_hook(_prune_input)
    return model


def voxel_pruners(model: nn.Module) -> dict[str, dict]:
    """``conv name -> voxel_prune settings`` of every voxel-pruning conv (what ``prune.save``
    records, so that ``prune.load`` puts the same pruning layers back)."""
    return {
        name: {
            "keep_ratio": p.keep_ratio,
            "threshold": p.threshold,
            "score": p.score_kind,
            "granularity": "voxel" if p.cell is None else "cell",
        }
        for name, m in model.named_modules()
        if isinstance(m, snn.Conv3d) and isinstance(p := getattr(m, _CHILD, None), VoxelPrune)
    }


def _prune_input(conv: nn.Module, args):
    return (getattr(conv, _CHILD)(args[0]), *args[1:])


def voxel_counts(model: nn.Module, example) -> dict[str, tuple[int, int]]:
    """``name -> (voxels in, voxels kept)`` of every voxel-pruning conv on ``example``."""
    from sparseconv.prune.tracing import call_model, observed

    counts: dict[str, tuple[int, int]] = {}

    def recorder(name):
        def hook(module, args, output):
            counts[name] = (int(args[0].coords.shape[0]), int(output.coords.shape[0]))

        return hook

    handles = [getattr(m, _CHILD).register_forward_hook(recorder(n))
               for n, m in model.named_modules() if hasattr(m, _CHILD) and isinstance(m, snn.Conv3d)]  # fmt: skip
    with observed(model, handles):
        call_model(model, example)
    return counts


def stride_counts(model: nn.Module, example) -> dict[str, int]:
    """Voxels at each tensor stride (``"2x2x2" -> rows``) of one forward pass on ``example``:
    the output rows of the first non-transposed conv producing that stride."""
    from sparseconv.prune.tracing import call_model, observed

    counts: dict[str, int] = {}

    def hook(module, args, output):
        counts.setdefault("x".join(map(str, output.stride)), int(output.coords.shape[0]))

    handles = [m.register_forward_hook(hook)
               for m in model.modules() if isinstance(m, snn.Conv3d) and not m.transposed]  # fmt: skip
    with observed(model, handles):
        call_model(model, example)
    return counts
