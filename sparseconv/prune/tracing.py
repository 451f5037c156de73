"""Running a model to observe it: the example's calling convention, hooks in eval mode, names.

Every pruning step that looks inside a network (the dependency graph, activation statistics,
reconstruction Gram matrices, MAC counts, per-layer timing) runs it the same way: hooks on some
modules, eval mode, no autograd, and everything restored afterwards even when the forward fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def call_model(model: nn.Module, example: Any) -> Any:
    """``model(example)``; a tuple is positional arguments, a dict keyword arguments (SPVCNN
    takes ``(x, points, voxel_size)``)."""
    if isinstance(example, dict):
        return model(**example)
    if isinstance(example, tuple):
        return model(*example)
    return model(example)


@contextmanager
def observed(model: nn.Module, handles: Iterable[RemovableHandle]) -> Iterator[None]:
    """Run the block with ``model`` in eval mode without autograd; then remove ``handles`` and
    restore the model's training mode, whatever happened."""
    handles = list(handles)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether layer ``name`` is one of ``patterns`` or inside one (``"enc"`` matches ``"enc.0"``)."""
    return any(name == p or name.startswith(p + ".") for p in patterns)


def layer_inputs(model: nn.Module, example: Any, layers: dict[str, nn.Module]) -> dict[str, Any]:
    """The first positional input each of ``layers`` receives in one forward pass of ``example``
    (a ``SparseTensor`` keeps its kernel-map cache, so the maps are reused afterwards)."""
    seen: dict[str, Any] = {}

    def recorder(name: str):
        return lambda module, args: seen.setdefault(name, args[0])

    hooks = [m.register_forward_pre_hook(recorder(n)) for n, m in layers.items()]
    with observed(model, hooks):
        call_model(model, example)
    return seen


def run_batches(
    model: nn.Module,
    handles: Iterable[RemovableHandle],
    batches: Iterable[Any],
    max_batches: int | None = None,
) -> None:
    """Feed ``batches`` (at most ``max_batches``) through ``model`` under :func:`observed`."""
    with observed(model, handles):
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            call_model(model, batch)


def check_patterns(patterns: Iterable[str], names: Iterable[str], argument: str) -> None:
    """ValueError naming every entry of ``patterns`` that matches none of ``names`` (a typo in
    ``ignore=`` or ``ratios=`` would otherwise prune what the caller meant to protect)."""
    names = list(names)
    missing = [p for p in patterns if not any(name_matches(n, [p]) for n in names)]
    if missing:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(f"{argument} names no layer of the model: {missing} (layers: {shown})")
