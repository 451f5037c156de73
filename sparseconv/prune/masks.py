"""Weight masks: N:M semi-structured and fine-grained (unstructured) pruning.

A mask is a ``weight_mask`` buffer on the layer (so it is in the ``state_dict``) plus a forward
pre-hook that multiplies the weight by it in place and a gradient hook that masks the gradient:
pruned weights stay exactly zero through fine-tuning with any optimizer (their gradients, and
so their momenta, are zero; decoupled weight decay keeps zero at zero).

N:M follows the NVIDIA/PyTorch convention: ``n`` weights are **kept** in every group of ``m``
consecutive weights (2:4 keeps 2 of 4; some lecture notes count the pruned ones instead). Groups
run along the input-channel axis -- ``Cin`` of ``[K, Cin, Cout]``, ``in_features`` of
``Linear`` -- which is the reduction axis of the GEMM, as sparse tensor cores require.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from sparseconv.prune.importance import Importance, prunable_weights
from sparseconv.prune.tracing import check_patterns, name_matches


def _module_of(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def nm_mask(scores: torch.Tensor, n: int, m: int, axis: int = 1) -> torch.Tensor:
    """Boolean mask keeping the ``n`` highest scores of every ``m`` consecutive entries on ``axis``."""
    s = scores.movedim(axis, -1)
    groups = s.reshape(*s.shape[:-1], s.shape[-1] // m, m)
    top = groups.topk(n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(s.shape).movedim(-1, axis)


def _mask_grad(module: nn.Module):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * module.weight_mask.to(grad.dtype)

    return hook


def _apply_mask_hook(module: nn.Module, args) -> None:
    w = module.weight
    with torch.no_grad():
        w.mul_(module.weight_mask.to(w.dtype))
    if getattr(module, "_sc_mask_param_id", None) != id(w):  # new Parameter: shrunk or copied
        w.register_hook(_mask_grad(module))
        module._sc_mask_param_id = id(w)


def set_mask(module: nn.Module, mask: torch.Tensor, kind: str) -> None:
    """Attach (or replace) the mask of ``module.weight``; ``kind`` is stored for export/load."""
    if mask.shape != module.weight.shape:
        raise ValueError(
            f"mask shape {list(mask.shape)} != weight shape {list(module.weight.shape)}"
        )
    if hasattr(module, "weight_mask"):
        module.weight_mask = mask.to(module.weight.device, torch.bool)
    else:
        module.register_buffer("weight_mask", mask.to(module.weight.device, torch.bool))
        module._sc_mask_handle = module.register_forward_pre_hook(_apply_mask_hook)
    module._sc_mask_kind = kind
    _apply_mask_hook(module, ())


def remove_mask(module: nn.Module) -> None:
    """Make the pruning permanent: weights stay zero, the mask and hooks go."""
    if not hasattr(module, "weight_mask"):
        return
    _apply_mask_hook(module, ())
    module._sc_mask_handle.remove()
    del module.weight_mask, module._sc_mask_handle, module._sc_mask_kind
    module.__dict__.pop("_sc_mask_param_id", None)


def masked_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if hasattr(m, "weight_mask")}


@dataclass
class NMReport:
    """Which layers were N:M-pruned and which were skipped, and why."""

    n: int
    m: int
    pruned: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"{self.n}:{self.m} pruning: {len(self.pruned)} layers pruned, {len(self.skipped)} skipped"
        ]
        lines += [f"  skipped {k}: {v}" for k, v in self.skipped.items()]
        return "\n".join(lines)


def _selected(model: nn.Module, ignore: tuple[str, ...]) -> dict[str, nn.Parameter]:
    weights = prunable_weights(model)
    check_patterns(ignore, weights, "ignore")
    return {n: w for n, w in weights.items() if not name_matches(n, ignore)}


def _weight_scores(model: nn.Module, importance) -> dict[str, torch.Tensor]:
    from sparseconv.prune.channel import resolve_importance

    imp: Importance = resolve_importance(importance)
    if not imp.per_weight:
        raise ValueError(f"importance {imp.name!r} scores channels, not single weights")
    return imp.weight_scores(model)


def nm_prune(
    model: nn.Module,
    n: int = 2,
    m: int = 4,
    importance: str | Importance = "l1",
    ignore: tuple[str, ...] = (),
    keep_ends: bool = False,
) -> NMReport:
    """Keep ``n`` of every ``m`` consecutive input-channel weights of each Conv3d/Linear, in place.

    Layers whose input channels are not a multiple of ``m`` are skipped; the returned report
    lists them with the reason, and a warning says how many were skipped. ``keep_ends`` leaves
    the first and last prunable layers (in registration order: a MinkUNet's stem conv and its
    classifier) dense, as NVIDIA's ASP recipe does: a 4-feature input layer keeping 2 of its 4
    inputs per filter loses half of what the network sees.
    """
    if not (isinstance(n, int) and isinstance(m, int)) or n < 1 or m < 1:
        raise ValueError(f"n and m must be positive ints, got n={n!r}, m={m!r}")
    if n >= m:
        raise ValueError(f"n (weights kept per group) must be < m, got n={n}, m={m}")
    report = NMReport(n, m)
    weights = _selected(model, tuple(ignore))
    if keep_ends and weights:
        names = list(prunable_weights(model))
        for end in {names[0], names[-1]} & weights.keys():
            report.skipped[end] = "kept dense (keep_ends: first or last layer)"
            del weights[end]
    scores = _weight_scores(model, importance)
    unfit = {}
    for name, w in weights.items():
        cin = w.shape[1]
        if cin % m:
            unfit[name] = f"input channels {cin} not a multiple of {m}"
            continue
        module = _module_of(model, name)
        set_mask(module, nm_mask(scores[name].to(w.device), n, m, axis=1), f"nm:{n}:{m}")
        report.pruned.append(name)
    report.skipped.update(unfit)
    if unfit:
        warnings.warn(f"{n}:{m} pruning skipped {len(unfit)} layers: {unfit}", stacklevel=2)
    return report


def fine_grained_prune(
    model: nn.Module,
    sparsity: float,
    importance: str | Importance = "l1",
    scope: str = "layer",
    ignore: tuple[str, ...] = (),
) -> dict[str, float]:
    """Zero the fraction ``sparsity`` of lowest-scoring weights, per layer or network-wide.

    ``scope="global"`` ranks all weights together (layers end up with different sparsities).
    Returns the sparsity reached per layer.
    """
    from sparseconv.prune.channel import check_ratio

    check_ratio(sparsity, "sparsity")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    weights = _selected(model, tuple(ignore))
    scores = _weight_scores(model, importance)
    if scope == "global":
        flat = torch.cat([scores[n].flatten().float().cpu() for n in weights])
        k = int(flat.numel() * sparsity)
        threshold = flat.kthvalue(k).values if k else -torch.inf
    out = {}
    for name, w in weights.items():
        s = scores[name].to(w.device).float()
        if scope == "layer":
            k = int(s.numel() * sparsity)
            mask = torch.ones_like(s, dtype=torch.bool)
            if k:
                mask.view(-1)[s.flatten().argsort()[:k]] = False
        else:
            mask = s > threshold
        set_mask(_module_of(model, name), mask, "fine")
        out[name] = 1.0 - mask.float().mean().item()
    return out


def check_nm(model: nn.Module) -> dict[str, bool]:
    """For each N:M-masked layer: does every group of m input channels hold at most n non-zeros?"""
    result = {}
    for name, mod in masked_layers(model).items():
        kind = mod._sc_mask_kind
        if not kind.startswith("nm:"):
            continue
        _, n, m = kind.split(":")
        w = mod.weight.detach().movedim(1, -1)
        nz = (w.reshape(*w.shape[:-1], -1, int(m)) != 0).sum(-1)
        result[name] = bool((nz <= int(n)).all())
    return result


def export_nm(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Compressed N:M form per layer: ``values`` (only the kept weights, ``n/m`` of Cin) and
    ``indices`` (uint8 position of each kept weight inside its group), the layout of NVIDIA's
    compressed 2:4 matrices; :func:`decompress_nm` rebuilds the dense weight."""
    out = {}
    for name, mod in masked_layers(model).items():
        if not mod._sc_mask_kind.startswith("nm:"):
            continue
        _, n, m = mod._sc_mask_kind.split(":")
        n, m = int(n), int(m)
        w = (mod.weight.detach() * mod.weight_mask).movedim(1, -1)
        mask = mod.weight_mask.movedim(1, -1)
        g = w.reshape(*w.shape[:-1], -1, m)
        gm = mask.reshape(*mask.shape[:-1], -1, m)
        idx = (
            gm.to(torch.int8).argsort(dim=-1, descending=True, stable=True)[..., :n].sort(-1).values
        )
        vals = g.gather(-1, idx)
        out[name] = {
            "values": vals.reshape(*w.shape[:-1], -1).movedim(-1, 1).contiguous(),
            "indices": idx.to(torch.uint8).reshape(*w.shape[:-1], -1).movedim(-1, 1).contiguous(),
            "n": torch.tensor(n),
            "m": torch.tensor(m),
        }
    return out


def decompress_nm(values: torch.Tensor, indices: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Dense weight from :func:`export_nm`'s compressed form (kept weights scattered back)."""
    if values.shape != indices.shape:
        raise ValueError(
            f"values {list(values.shape)} and indices {list(indices.shape)} differ in shape"
        )
    v = values.movedim(1, -1)
    i = indices.long().movedim(1, -1)
    vg = v.reshape(*v.shape[:-1], -1, n)
    dense = v.new_zeros(*vg.shape[:-1], m).scatter_(-1, i.reshape(vg.shape), vg)
    return dense.reshape(*v.shape[:-1], -1).movedim(-1, 1)
