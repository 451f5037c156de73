"""When and how much to prune: gradual (cubic) schedules, iterative channel pruning with
fine-tuning, soft filter pruning, and lottery-ticket rewinding.

Fine-tuning after pruning runs at a tenth of the training learning rate
(:data:`FINETUNE_LR_FACTOR`), the usual choice since Han et al. 2015: the pruned network starts
close to a good solution and a full learning rate would throw that away.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sparseconv.prune.channel import (
    channel_prune,
    check_ratio,
    plan_per_group,
    resolve_importance,
    zero_channels,
)
from sparseconv.prune.graph import DependencyGraph
from sparseconv.prune.masks import fine_grained_prune, masked_layers, set_mask
from sparseconv.prune.shrink import remove_channels

FINETUNE_LR_FACTOR = 0.1


def finetune_lr(train_lr: float) -> float:
    return train_lr * FINETUNE_LR_FACTOR


def cubic_sparsity(step: int, begin: int, end: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta 2017: ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3`` on [t0, t1].

    Prunes fast while many redundant weights remain and slowly near the final sparsity.
    """
    if end <= begin:
        raise ValueError(f"end ({end}) must be after begin ({begin})")
    check_ratio(final, "final")
    t = min(max(step, begin), end)
    return final + (initial - final) * (1.0 - (t - begin) / (end - begin)) ** 3


class GradualPruner:
    """Fine-grained magnitude pruning that follows :func:`cubic_sparsity` during training.

    Call ``step(i)`` once per training step (after ``optimizer.step()``); every ``frequency``
    steps between ``begin`` and ``end`` the masks are recomputed at the scheduled sparsity.
    Already-pruned weights are zero, so they score lowest and stay pruned: sparsity only grows.
    """

    def __init__(
        self, model: nn.Module, final_sparsity: float, begin: int, end: int, frequency: int = 10,
        importance="l1", scope: str = "layer", ignore: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        check_ratio(final_sparsity, "final_sparsity")
        self.model, self.final, self.begin, self.end = model, final_sparsity, begin, end
        self.frequency, self.importance, self.scope, self.ignore = (
            frequency,
            importance,
            scope,
            ignore,
        )
        self.current = 0.0

    def step(self, step: int) -> float | None:
        """Prune if this step is on the schedule; returns the new sparsity or ``None``."""
        if step < self.begin or step > self.end or (step - self.begin) % self.frequency:
            return None
        self.current = cubic_sparsity(step, self.begin, self.end, self.final)
        fine_grained_prune(self.model, self.current, self.importance, self.scope, self.ignore)
        return self.current


def iterative_channel_prune(
    model: nn.Module,
    example,
    ratio: float,
    steps: int,
    finetune: Callable[[nn.Module], None] | None = None,
    importance="l2",
    **kwargs,
) -> nn.Module:
    """Reach ``ratio`` (fraction of channels removed) in ``steps`` rounds of prune + fine-tune.

    Each round removes ``1 - (1 - ratio)^(1/steps)`` of the remaining channels, re-scoring them
    on the fine-tuned network (a geometric schedule: equal relative cuts per round).
    """
    check_ratio(ratio)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    per_step = 1.0 - (1.0 - ratio) ** (1.0 / steps)
    for _ in range(steps):
        model = channel_prune(model, example, per_step, importance, **kwargs)
        if finetune is not None:
            finetune(model)
    return model


class LotteryTicket:
    """Lottery-ticket rewinding (Frankle et al. 2019): find a mask by magnitude after training,
    then restart training from the weights of an early iteration ``k`` with that mask.

    Call ``observe(step)`` every training step; at step ``rewind_step`` the weights are copied.
    After training, ``prune_and_rewind(sparsity)`` sets magnitude masks from the trained weights
    and loads the step-``k`` weights under them (masks stay applied while retraining).
    """

    def __init__(self, model: nn.Module, rewind_step: int = 0) -> None:
        self.model = model
        self.rewind_step = rewind_step
        self.snapshot: dict[str, torch.Tensor] | None = None
        if rewind_step == 0:
            self.observe(0)

    def observe(self, step: int) -> None:
        if step == self.rewind_step:
            self.snapshot = {
                k: v.detach().clone()
                for k, v in self.model.state_dict().items()
                if not k.endswith("weight_mask")
            }

    def prune_and_rewind(
        self, sparsity: float, importance="l1", scope: str = "global"
    ) -> nn.Module:
        if self.snapshot is None:
            raise RuntimeError(
                f"no snapshot: observe() was never called at step {self.rewind_step}"
            )
        fine_grained_prune(self.model, sparsity, importance, scope)
        masks = {
            n: (m.weight_mask.clone(), m._sc_mask_kind)
            for n, m in masked_layers(self.model).items()
        }
        self.model.load_state_dict(self.snapshot, strict=False)
        for n, (mask, kind) in masks.items():
            set_mask(self.model.get_submodule(n), mask, kind)
        return self.model


class SoftFilterPruner:
    """Soft filter pruning (He et al. 2018): every ``step()`` (once per epoch in the paper)
    zeroes the ``ratio`` lowest-scoring channels of each group but leaves them in the network,
    so training may bring them back; :meth:`finalize` zeroes by the final scores and removes
    those channels for good.

    Zeroed channels score lowest at the next step unless training revived them, so the chosen
    set settles as training goes on.
    """

    def __init__(self, model: nn.Module, example, ratio: float, importance="l2") -> None:
        check_ratio(ratio)
        self.model, self.example, self.ratio = model, example, ratio
        self.importance = resolve_importance(importance)
        self.zeroed: set[int] = set()

    def _choose(self) -> tuple[DependencyGraph, set[int]]:
        graph = DependencyGraph(self.model, self.example)
        scores = self.importance.channel_scores(graph)
        return graph, plan_per_group(graph.prunable_groups(), scores, self.ratio, None, 1, 1)

    def step(self) -> set[int]:
        """Zero the currently lowest channels' filters (not their norms: a zero filter behind a
        live norm still gets gradients and may recover); returns their class indices."""
        graph, chosen = self._choose()
        zero_channels(graph, chosen, norms=False)
        self.zeroed = chosen
        return chosen

    def finalize(self) -> nn.Module:
        """Remove the channels the final scores choose (the model changes in place)."""
        graph, chosen = self._choose()
        zero_channels(graph, chosen)
        remove_channels(graph, chosen)
        return self.model
