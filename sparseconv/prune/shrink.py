"""Physical channel removal: every layer of the removed channel classes gets smaller tensors.

Conv weights ``[K, Cin, Cout]`` lose output channels on the last axis and input channels on the
middle one; ``Linear`` weights ``[out, in]`` on the first and second; norms lose parameters and
running statistics. Masks registered by N:M or fine-grained pruning (``weight_mask`` buffers)
are sliced with their weights, so a channel-pruned N:M model stays consistent.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from sparseconv import nn as snn
from sparseconv.prune.graph import DependencyGraph


def _keep(classes: list[int], removed: set[int], device) -> torch.Tensor:
    return torch.tensor([i for i, c in enumerate(classes) if c not in removed], device=device)


def _slice_param(module: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    p = getattr(module, name, None)
    if p is None:
        return
    new = p.data.index_select(dim, keep.to(p.device)).clone()
    if isinstance(p, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=p.requires_grad))
    else:
        setattr(module, name, new)


def _weight_axes(module: nn.Module) -> tuple[int, int]:
    """(output-channel axis, input-channel axis) of the module's weight."""
    return (2, 1) if isinstance(module, snn.Conv3d) else (0, 1)


def shrink_outputs(module: nn.Module, keep: torch.Tensor) -> None:
    out_axis, _ = _weight_axes(module)
    for name in ("weight", "weight_mask"):
        _slice_param(module, name, out_axis, keep)
    _slice_param(module, "bias", 0, keep)
    if isinstance(module, snn.Conv3d):
        module.out_channels = len(keep)
    else:
        module.out_features = len(keep)


def shrink_inputs(module: nn.Module, keep: torch.Tensor) -> None:
    _, in_axis = _weight_axes(module)
    for name in ("weight", "weight_mask"):
        _slice_param(module, name, in_axis, keep)
    if isinstance(module, snn.Conv3d):
        module.in_channels = len(keep)
    else:
        module.in_features = len(keep)


def shrink_norm(module: nn.BatchNorm1d, keep: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        _slice_param(module, name, 0, keep)
    module.num_features = len(keep)


def remove_channels(graph: DependencyGraph, removed: Iterable[int]) -> None:
    """Remove the given channel classes (indices into ``graph.classes``) from the model in place."""
    removed = set(removed)
    bad = [i for i in removed if graph.classes[i].blocked]
    if bad:
        raise ValueError(f"channel classes {bad[:5]} are blocked (not prunable)")
    if not removed:
        return
    mods = graph.modules
    plan = []
    for kind, fn in (
        ("producers", shrink_outputs),
        ("norms", shrink_norm),
        ("consumers", shrink_inputs),
    ):
        for name, classes in graph.layer_classes[kind].items():
            if any(c in removed for c in classes):
                keep = _keep(classes, removed, "cpu")
                if len(keep) == 0:
                    raise ValueError(
                        f"removing these channels would leave {name} with no {kind[:-1]} channel"
                    )
                plan.append((fn, mods[name], keep))
    for fn, module, keep in plan:  # validated above: apply all or nothing
        fn(module, keep)
