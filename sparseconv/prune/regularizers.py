"""Training-time sparsity: penalties added to the loss and learned channel gates.

* :func:`group_lasso_penalty`: ``strength * sum_layers sum_filters ||filter||_2`` (Wen et al.
  2016, structured sparsity learning): the L2 norm of each output-channel group, summed, drives
  whole filters to zero together, which channel pruning then removes.
* L0 gates (Louizos et al. 2018): a hard-concrete gate ``z`` per channel after every batch norm
  (:func:`add_l0_gates`), trained with the expected-L0 penalty :func:`l0_penalty`;
  :func:`prune_closed_gates` folds the deterministic gates into the norms and removes every
  channel whose gate is closed (``z = 0``).

(``bn_l1_penalty``, network slimming's term, lives with its criterion in ``importance``.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparseconv.prune.graph import PRODUCER_TYPES, DependencyGraph
from sparseconv.prune.importance import filters
from sparseconv.prune.shrink import remove_channels

# hard-concrete stretch (gamma, zeta) and temperature beta, the paper's values
GAMMA, ZETA, BETA = -0.1, 1.1, 2 / 3
_GATE = "l0_log_alpha"


def group_lasso_penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """``strength * sum of the L2 norms of every output-channel group`` of Conv3d and Linear."""
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    terms = [filters(m).norm(dim=1).sum() for m in model.modules() if isinstance(m, PRODUCER_TYPES)]
    return strength * torch.stack(terms).sum() if terms else torch.zeros(())


def add_l0_gates(model: nn.Module, init_keep: float = 0.9) -> list[str]:
    """Give every ``BatchNorm1d`` a per-channel hard-concrete gate on its output (a parameter
    ``l0_log_alpha`` and a forward hook); ``init_keep`` is each gate's initial probability of
    being open. Returns the gated layer names."""
    if not 0 < init_keep < 1:
        raise ValueError(f"init_keep must be in (0, 1), got {init_keep}")
    gated = []
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm1d) and not hasattr(module, _GATE):
            start = math.log(init_keep / (1 - init_keep))
            module.register_parameter(_GATE, nn.Parameter(torch.full((module.num_features,),
                                                                     start)))  # fmt: skip
            module._sc_l0_hook = module.register_forward_hook(_apply_gate)
            gated.append(name)
    if not gated:
        raise ValueError("the model has no BatchNorm1d to gate")
    return gated


def gate_values(module: nn.Module, training: bool | None = None) -> torch.Tensor:
    """``z`` of a gated norm: sampled in training, deterministic (``clamp(sigmoid(log_alpha)
    (zeta - gamma) + gamma, 0, 1)``) in evaluation."""
    log_alpha = getattr(module, _GATE)
    training = module.training if training is None else training
    if training:
        u = torch.rand_like(log_alpha).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha) / BETA)
    else:
        s = torch.sigmoid(log_alpha)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def _apply_gate(module: nn.Module, args, output):
    z = gate_values(module).to(_features(output).dtype)
    if isinstance(output, torch.Tensor):
        return output * z
    return output.replace_feats(output.feats * z)


def _features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.feats


def l0_penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """``strength * expected number of open gates``: ``sum sigmoid(log_alpha - beta *
    log(-gamma / zeta))``, the differentiable L0 term."""
    shift = BETA * math.log(-GAMMA / ZETA)
    terms = [torch.sigmoid(getattr(m, _GATE) - shift).sum()
             for m in model.modules() if hasattr(m, _GATE)]  # fmt: skip
    if not terms:
        raise ValueError("the model has no L0 gates: call add_l0_gates first")
    return strength * torch.stack(terms).sum()


def prune_closed_gates(model: nn.Module, example) -> tuple[nn.Module, int]:
    """Fold each deterministic gate into its norm's affine terms, remove the gates, and remove
    the channels whose gate is closed in every norm of their class (each group keeps at least
    one channel). Returns the model (changed in place) and the number of channels removed."""
    gated = {n: m for n, m in model.named_modules() if hasattr(m, _GATE)}
    if not gated:
        raise ValueError("the model has no L0 gates: call add_l0_gates first")
    closed: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, m in gated.items():
            z = gate_values(m, training=False)
            closed[name] = z == 0
            m.weight.mul_(z)
            m.bias.mul_(z)
            m._sc_l0_hook.remove()
            del m._sc_l0_hook
            del m._parameters[_GATE]
    graph = DependencyGraph(model, example)
    open_classes: set[int] = set()
    for name, classes in graph.layer_classes["norms"].items():
        if name in closed:
            open_classes |= {c for c, shut in zip(classes, closed[name].tolist()) if not shut}
        else:
            open_classes |= set(classes)
    removed: set[int] = set()
    for group in graph.prunable_groups():
        shut = [c for c in group.classes if c not in open_classes]
        removed |= set(shut[: len(group.classes) - 1])
    remove_channels(graph, removed)
    return model, len(removed)


__all__ = [
    "add_l0_gates",
    "gate_values",
    "group_lasso_penalty",
    "l0_penalty",
    "prune_closed_gates",
]
